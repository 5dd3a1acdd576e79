#!/usr/bin/env bash
# Pull time against layer layout and compression (issue #17): see benches/pull_layout.py.
#
#   bash benches/pull_layout.sh [-n ROUNDS]    # default 3 rounds (about 10 min on 2 cores)
#
# Builds the bigstack fixture's job image with venvimg (default per-distribution gzip
# layers) into the test environment's loopback registry (a hit when an earlier run pushed
# it), then derives and pulls the variants. Writes benches/results/pull-layout.md and .json.
# VENVIMG_BENCH_BIN=PATH uses that venvimg binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
rounds=3
while (($#)); do
  case $1 in
    -n) rounds=$2; shift 2 ;;
    *) echo "usage: bash benches/pull_layout.sh [-n ROUNDS]" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_testenv
command -v zstd >/dev/null || { echo "bench: zstd is missing: apt-get install zstd" >&2; exit 1; }
bin=$(bench_bin "")
work=$(mktemp -d /var/tmp/venvimg-bench-pull-layout.XXXXXX)
# podman's overlay store bind-mounts its own folder: unmount it before removing it.
trap '{ grep -o " $work/[^ ]*" /proc/mounts || true; } | sort -r | xargs -r umount; rm -rf "$work"' EXIT
proj=$work/bigstack
cp -r tests/fixtures/bigstack "$proj"
printf 'repository: %s/bench-pull-layout/bigstack\nbase: %s\nenvdir: /opt/nox\nworkdir: /src\nsessions: [tests]\n' \
  "$VENVIMG_TEST_REGISTRY" "$VENVIMG_TEST_BASE" >"$proj/venvimg.yaml"
(cd "$proj" && "$bin" build -q --json --build-ca "$VENVIMG_TEST_CA_FILE" >"$work/build.json")
image=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sessions"][0]["image"])' "$work/build.json")
echo "bench: $image" >&2
python3 benches/pull_layout.py --image "$image" --base "$VENVIMG_TEST_BASE" --work "$work" -n "$rounds" \
  --dockerd-pid "$(cat "$VENVIMG_TESTENV_DIR/dockerd/pid")" --project "$root/tests/fixtures/bigstack" \
  --cache "${VENVIMG_BENCH_DIR:-/var/tmp/venvimg-bench}/pull-layout-cache"
