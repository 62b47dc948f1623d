#!/usr/bin/env bash
# Sets up everything cowfs and its tests need on a fresh Debian/Ubuntu machine (as root or via sudo):
# the FUSE 3 packages, the tools the tests drive (git, sqlite3, fio, stress-ng, Chromium for the JupyterLab panel's
# browser test), Node.js to build that panel, and a virtualenv in .venv with cowfs installed in it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(fuse3 libfuse3-dev pkg-config git sqlite3 gcc python3-dev python3-venv fio stress-ng chromium)
command -v npm >/dev/null || packages+=(nodejs npm)
python_ok=true
python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null || python_ok=false
if [ "$python_ok" = false ]; then packages+=(python3 python3-venv python3-dev); fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,notebook,remote,lab]"

# The Cell history panel, built with JupyterLab's own tooling from the venv just made. A wheel
# carries it (setup.py lists the built files as data files); an editable install does not
# install data files, so link them where Jupyter looks, as `jupyter labextension develop` does.
(cd cli/lab/panel && npm ci --no-audit --no-fund --loglevel=error && PATH="$PWD/../../../.venv/bin:$PATH" npm run --silent build >/dev/null)
mkdir -p .venv/share/jupyter/labextensions .venv/etc/jupyter/jupyter_server_config.d
ln -sfn "$PWD/cli/lab/labextension" .venv/share/jupyter/labextensions/cowfs-lab
cp cli/lab/jupyter-config/cowfs.json .venv/etc/jupyter/jupyter_server_config.d/cowfs.json
echo "cowfs installed in $(pwd)/.venv (run .venv/bin/cowfs --help)"
