#!/bin/sh
# Make (or refresh) the test venv with the pinned packages of a requirements file.
# Wheels come from PyPI through the user's pip cache, so a second machine-local
# run is offline-fast.
set -e
venv=$1
req=$2
py=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || $py -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
