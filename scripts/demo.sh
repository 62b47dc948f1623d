#!/usr/bin/env bash
# The main job, end to end: install, mount a workspace, run a real notebook in it with every cell
# snapshotted, and show the log. Everything lives under $COWFS_DEMO (default /tmp/cowfs-demo):
# the store, the mount, an IPython profile and the key that signs saved variables, so nothing of
# yours is touched. Safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/install.sh"
export PATH="$repo/.venv/bin:$PATH"

demo="${COWFS_DEMO:-/tmp/cowfs-demo}"
export COWFS_STORE="$demo/store" IPYTHONDIR="$demo/ipython" XDG_CONFIG_HOME="$demo/config"
mkdir -p "$demo/work"
if mountpoint -q "$demo/work"; then cowfs umount "$demo/work"; fi
[ -d "$COWFS_STORE/index.lmdb" ] || cowfs init
cowfs mount "$demo/work"
cowfs kernel install
cp "$repo/examples/analysis.ipynb" "$demo/work/"
(cd "$demo/work" && python "$repo/scripts/run_notebook.py" analysis.ipynb 2>/dev/null)
cowfs log --cells
cat <<MSG

The workspace is still mounted at $demo/work (store: $COWFS_STORE). Try:
  export COWFS_STORE=$COWFS_STORE XDG_CONFIG_HOME=$XDG_CONFIG_HOME PATH=$repo/.venv/bin:\$PATH
  cowfs diff @1 @12                       # what the notebook changed
  mkdir -p $demo/back && cowfs mount @11 $demo/back   # the workspace just before the last cell
  cowfs umount $demo/back; cowfs umount $demo/work
MSG
