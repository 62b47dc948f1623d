#!/usr/bin/env bash
# What the benchmarks need beyond the tests: the peers they compare with (borg, btrfs, git,
# dvc in a venv of its own so that its many dependencies stay out of cowfs's) and pandas for
# the CSV workload, scikit-learn for bench/variables.py. Run after scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq borgbackup btrfs-progs git >/dev/null
.venv/bin/python -m pip install -q pandas scikit-learn
[ -x .venv-dvc/bin/dvc ] || { python3 -m venv .venv-dvc && .venv-dvc/bin/python -m pip install -q dvc; }
