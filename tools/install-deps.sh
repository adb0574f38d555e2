#!/bin/sh
# Installs what ounce needs on Debian 12, only when something is missing (so it is fast and
# harmless to run before every build). Needs root (or sudo) the first time; without either, or
# without apt, it says what is missing and stops.
set -e
PKGS="build-essential libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev fortunes fortunes-min"
if ! command -v dpkg-query >/dev/null 2>&1; then
    # Not Debian: nothing to install with, so only check that the build's files and the test
    # corpus are there (tools/check-deps.sh names what is not, by its Debian package name).
    sh "$(dirname "$0")/check-deps.sh"
    [ -d /usr/share/games/fortunes ] && exit 0
    echo "missing: fortunes, fortunes-min (the test and demo corpus /usr/share/games/fortunes)" >&2
    exit 1
fi
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in $PKGS; do
    have_pkg "$p" || need="$need $p"
done
[ -z "$need" ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"
    else
        echo "missing:$need; run \`sh tools/install-deps.sh\` as root to install them" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing:$need; there is no apt-get here to install them with" >&2
    exit 1
fi
echo "installing:$need"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
