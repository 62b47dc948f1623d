#!/usr/bin/env bash
# Every benchmark, one command (about 45 minutes on a 2-core machine); tables go to stdout and
# bench/results/. Run bench/setup.sh once first for the peers (borg, btrfs, dvc) and pandas.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
started=$SECONDS
for step in "run.py $*" workloads.py round_trip.py requests.py kernel_overhead.py variables.py peers.py retention.py; do
    begun=$SECONDS
    # shellcheck disable=SC2086  # the step carries its own arguments
    $py bench/$step
    echo; echo "(bench/${step%% *}: $((SECONDS - begun)) s)"; echo
done
echo "all benchmarks: $((SECONDS - started)) s"
