#!/bin/sh
# Install the Debian packages ckpt builds and tests with, when they are missing.
set -e
need=""
for p in build-essential libzstd-dev libcjson-dev libssl-dev python3-venv; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
# python3-venv only matters when the python3 on PATH has no venv module.
case "$need" in *python3-venv*) python3 -c 'import venv, ensurepip' 2>/dev/null && need=$(echo "$need" | sed 's/python3-venv//');; esac
case "$need" in *build-essential*) command -v cc >/dev/null && command -v make >/dev/null && need=$(echo "$need" | sed 's/build-essential//');; esac
need=$(echo $need)
[ -z "$need" ] && exit 0
echo "ensure-deps: installing $need"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
