#!/usr/bin/env bash
# Build time native vs emulated (issue #22): what building a platform under qemu costs.
#
#   bash benches/platforms.sh [-n ROUNDS]     # default 3 rounds (about 5 min on 2 cores)
#
# The sample's three sessions are built for linux/amd64 (native here) and linux/arm64
# (under qemu-user-static, through binfmt_misc) from the two-platform base that
# tests/support/testenv.sh pushes, each into a fresh repository so every session misses;
# the platforms alternate round by round so the noise of a shared machine falls on both.
# Prints a markdown table (medians) and writes benches/results/platforms.md.
# VENVIMG_BENCH_BIN=PATH uses that venvimg binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=3
while (($#)); do
  case $1 in
    -n) rounds=$2; shift 2 ;;
    *) echo "usage: bash benches/platforms.sh [-n ROUNDS]" >&2; exit 2 ;;
  esac
done

# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_testenv
: "${VENVIMG_TEST_BASE_MULTI:?testenv.sh up did not push the two-platform base}"
bin=$(bench_bin "")
work=$(mktemp -d /var/tmp/venvimg-bench-platforms.XXXXXX)
trap 'rm -rf "$work"' EXIT
results=$work/results.tsv

for ((round = 1; round <= rounds; round++)); do
  order=(amd64 arm64)
  ((round % 2)) || order=(arm64 amd64)
  for arch in "${order[@]}"; do
    dir=$work/$arch-$round
    mkdir -p "$dir"
    cp -r tests/fixtures/sample/. "$dir/"
    printf 'repository: %s/bench-platforms/%s-%s-%s\nbase: %s\nplatform: linux/%s\n' \
      "$VENVIMG_TEST_REGISTRY" "$arch" "$round" "$$" "$VENVIMG_TEST_BASE_MULTI" "$arch" >"$dir/venvimg.yaml"
    start=$(date +%s.%N)
    (cd "$dir" && "$bin" build -q --json --build-ca "$VENVIMG_TEST_CA_FILE" >"$dir/build.json")
    end=$(date +%s.%N)
    python3 - "$dir/build.json" "$arch" "$start" "$end" >>"$results" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
built = [s for s in doc["sessions"] if s["outcome"] == "built"]
assert len(built) == len(doc["sessions"]) == 3, doc
print(f"{sys.argv[2]}\t{float(sys.argv[4]) - float(sys.argv[3]):.2f}\t{sum(s['seconds'] for s in built):.2f}")
PY
    echo "bench: round $round linux/$arch: $(tail -1 "$results" | cut -f2)s" >&2
  done
done

python3 - "$results" "$rounds" "$(git rev-parse --short HEAD)" "$("$bin" --version)" <<'PY' | tee benches/results/platforms.md
import statistics, sys, datetime, os
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
med = lambda arch, i: statistics.median(float(r[i]) for r in rows if r[0] == arch)
w = {a: med(a, 1) for a in ("amd64", "arm64")}
b = {a: med(a, 2) for a in ("amd64", "arm64")}
load = open("/proc/loadavg").read().split()[:3]
print(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {' '.join(load)} at the end; "
      f"{sys.argv[4]} ({sys.argv[3]}); medians of {sys.argv[2]} round(s), platforms alternating. "
      "`bash benches/platforms.sh -n N` reproduces it.\n")
print("The sample's three sessions (tests, lint, compat) built with `builder: podman` into an empty repository, "
      "from the two-platform base; linux/arm64 runs under qemu-user-static on this amd64 machine.\n")
print("| platform | how | `venvimg build` wall (plan, dry run, builds, push) | builds (sum of the sessions' build time) | ÷ native |")
print("|---|---|---|---|---|")
print(f"| linux/amd64 | native | {w['amd64']:.1f} s | {b['amd64']:.1f} s | 1.00× |")
print(f"| linux/arm64 | emulated (qemu) | {w['arm64']:.1f} s | {b['arm64']:.1f} s | {w['arm64'] / w['amd64']:.2f}× wall, {b['arm64'] / b['amd64']:.2f}× builds |")
PY
