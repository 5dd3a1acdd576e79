#!/usr/bin/env bash
# Pull time against layer layout and compression (issue #17): see benches/pull_layout.py.
#
#   bash benches/pull_layout.sh [-n ROUNDS]    # default 3 rounds (about 40 min on 2 cores)
#   bash benches/pull_layout.sh -n 1 --engines containerd,podman --variants basic
#
# Engines: podman (a private store), docker (the test environment's dockerd, gzip only),
# containerd (a private containerd 1.6 under the work folder: benches/containerd.py).
# --variants: all (default), basic (gzip/zstd-3 x single/per-distribution) or
# COMP/LAYOUT,... ; a subset run is merged into the results (its cells replace the old).
#
# Builds the bigstack fixture's job image with venvimg (default per-distribution gzip
# layers) into the test environment's loopback registry (a hit when an earlier run pushed
# it), then derives and pulls the variants. Writes benches/results/pull-layout.md and .json.
# VENVIMG_BENCH_BIN=PATH uses that venvimg binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
rounds=3
engines=podman,docker,containerd
variants=all
usage="usage: bash benches/pull_layout.sh [-n ROUNDS] [--engines podman,docker,containerd] [--variants all|basic|COMP/LAYOUT,...]"
while (($#)); do
  case $1 in
    -n) rounds=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
if [[ ,$engines, == *,containerd,* ]]; then
  for c in containerd ctr; do
    command -v "$c" >/dev/null || { echo "bench: $c is missing: apt-get install containerd" >&2; exit 1; }
  done
fi

# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_testenv
command -v zstd >/dev/null || { echo "bench: zstd is missing: apt-get install zstd" >&2; exit 1; }
bin=$(bench_bin "")
work=$(mktemp -d /var/tmp/venvimg-bench-pull-layout.XXXXXX)
# The private containerd (if python was killed hard) is stopped by its pid file and its
# mounts are undone; podman's overlay store bind-mounts its own folder: unmount it before
# removing it.
trap 'python3 benches/containerd.py --cleanup "$work/containerd"
  { grep -o " $work/[^ ]*" /proc/mounts || true; } | sort -r | xargs -r umount; rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
proj=$work/bigstack
cp -r tests/fixtures/bigstack "$proj"
printf 'repository: %s/bench-pull-layout/bigstack\nbase: %s\nenvdir: /opt/nox\nworkdir: /src\nsessions: [tests]\n' \
  "$VENVIMG_TEST_REGISTRY" "$VENVIMG_TEST_BASE" >"$proj/venvimg.yaml"
(cd "$proj" && "$bin" build -q --json --build-ca "$VENVIMG_TEST_CA_FILE" >"$work/build.json")
image=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sessions"][0]["image"])' "$work/build.json")
echo "bench: $image" >&2
python3 benches/pull_layout.py --image "$image" --base "$VENVIMG_TEST_BASE" --work "$work" -n "$rounds" \
  --engines "$engines" --variants "$variants" \
  --dockerd-pid "$(cat "$VENVIMG_TESTENV_DIR/dockerd/pid")" --project "$root/tests/fixtures/bigstack" \
  --cache "${VENVIMG_BENCH_DIR:-/var/tmp/venvimg-bench}/pull-layout-cache"
