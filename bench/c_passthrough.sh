#!/usr/bin/env bash
# Builds libfuse's own minimal low-level passthrough in C (example/passthrough_ll.c of the
# libfuse release installed here, fetched from Debian's source archive, never kept in this
# repository) and prints its path. With COWFS_BENCH_C_PASSTHROUGH set to that path,
# bench/run.py and bench/workloads.py add a column: what a FUSE filesystem written in C, with
# nothing of its own to do per request, gets on this machine and kernel.
set -euo pipefail
version=$(pkg-config --modversion fuse3)
out=${1:-/var/tmp/cowfs-bench-c-passthrough}
mkdir -p "$out"
if [ ! -x "$out/passthrough_ll" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    curl -fsSL "https://deb.debian.org/debian/pool/main/f/fuse3/fuse3_${version}.orig.tar.xz" | tar xJ -C "$work"
    gcc -O2 -o "$out/passthrough_ll" "$work/fuse-${version}/example/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
fi
echo "$out/passthrough_ll"
