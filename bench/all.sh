#!/usr/bin/env bash
# Every benchmark, one command (about 10 minutes on a 2-core machine); tables go to stdout and
# bench/results/. Run bench/setup.sh once first for the peers (borg, btrfs) and pandas.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
$py bench/run.py "$@"
echo
$py bench/kernel_overhead.py
echo
$py bench/peers.py
echo
$py bench/retention.py
