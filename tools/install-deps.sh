#!/bin/sh
# Installs what ounce needs on Debian 12, only when something is missing (so it is fast and
# harmless to run before every build). Needs root (or sudo) the first time; without either, or
# without apt, it says what is missing and stops (for the fuzzing packages alone: a note, and on).
set -e
PKGS="build-essential libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev fortunes fortunes-min"
# The fuzz targets (make fuzz, and make test's fuzz line): clang with libFuzzer and OpenMP. Installed
# with the rest when it can be; where it cannot, the build goes on and the fuzz checks are skipped.
FUZZ_PKGS="clang libclang-rt-dev libomp-dev"
if ! command -v dpkg-query >/dev/null 2>&1; then
    # Not Debian: nothing to install with, so only check that the build's files and the test
    # corpus are there (tools/check-deps.sh names what is not, by its Debian package name).
    sh "$(dirname "$0")/check-deps.sh"
    [ -d /usr/share/games/fortunes ] && exit 0
    echo "missing: fortunes, fortunes-min (the test and demo corpus /usr/share/games/fortunes)" >&2
    exit 1
fi
need=""
optional=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in $PKGS; do
    have_pkg "$p" || need="$need $p"
done
for p in $FUZZ_PKGS; do
    have_pkg "$p" || optional="$optional $p"
done
[ -z "$need$optional" ] && exit 0
# cannot WHY: what is missing cannot be installed; only the optional packages missing is a note.
cannot() {
    if [ -z "$need" ]; then
        echo "note: fuzzing packages missing:$optional ($1); the fuzz targets will be skipped" >&2
        exit 0
    fi
    echo "missing:$need$optional; $1" >&2
    exit 1
}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"
    else cannot "run \`sh tools/install-deps.sh\` as root to install them"
    fi
fi
command -v apt-get >/dev/null 2>&1 || cannot "there is no apt-get here to install them with"
echo "installing:$need$optional"
$SUDO apt-get update -qq || cannot "apt-get update failed"
install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
[ -z "$need" ] || install $need
if [ -n "$optional" ] && ! install $optional; then
    need=""
    cannot "apt-get install failed"
fi
