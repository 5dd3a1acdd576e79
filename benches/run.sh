#!/usr/bin/env bash
# venvimg benchmarks (issue #7): where venvimg stands against the alternatives, side by side.
#
#   bash benches/run.sh            # full run: every contender 3 times (about 15-20 min on 2 cores)
#   bash benches/run.sh --quick    # every contender once (about 6-8 min)
#   bash benches/run.sh -n 5 --only jobstart,hit     # more repetitions, some sections only
#
# Prints a markdown table (medians and ratios) and writes benches/results/latest.json and
# benches/results/latest.md. Needs what the tests need (root, podman, a loopback registry,
# the debootstrap base image: tests/support/testenv.sh sets them up) plus PyPI access for
# the cold-start and miss-path contenders. Not part of `cargo test` / `cargo nextest run`.
#
# State kept between runs (so a second run does not rebuild what has not changed):
#   ${VENVIMG_BENCH_DIR:-/var/tmp/venvimg-bench}   bench registry storage, work folders, the
#                                                  copy of the venvimg binary under test.
# VENVIMG_BENCH_BIN=PATH uses that venvimg binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
state=${VENVIMG_BENCH_DIR:-/var/tmp/venvimg-bench}

# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_testenv

# Tools the contenders use, besides podman/skopeo/docker-registry from testenv.sh deps.
missing=()
[[ -x /usr/bin/time ]] || missing+=(time)
command -v zstd >/dev/null || missing+=(zstd)
command -v gzip >/dev/null || missing+=(gzip)
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

bench_bin "$state/bin" >/dev/null

exec /usr/bin/python3 "$root/benches/bench.py" --venvimg "$state/bin/venvimg" --state "$state" "$@"
