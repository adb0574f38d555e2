#!/bin/sh
# Installs what ounce needs on Debian 12, only when something is missing (so it is fast and
# harmless to run before every build). Needs root (or sudo) the first time.
set -e
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in build-essential libopenblas-openmp-dev liblapacke-dev libcjson-dev libpcre2-dev fortunes fortunes-min; do
    have_pkg "$p" || need="$need $p"
done
[ -z "$need" ] && exit 0
echo "installing:$need"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
