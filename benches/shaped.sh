#!/usr/bin/env bash
# venvimg shaped-link benchmark (issue #17): the package index and the registry behind the
# same shaped link (a network namespace + veth, tc tbf rate, RTT/2 delay each way), every
# way of getting a session's venv into a CI job container side by side.
#
#   bash benches/shaped.sh                              # both profiles, one round (~12 min; ~20 the first time)
#   bash benches/shaped.sh --profiles hosted -n 2       # one profile, two rounds
#   bash benches/shaped.sh --profiles hosted --contenders podman,containerd   # the image pulls only
#   bash benches/shaped.sh --cleanup                    # remove what a killed run left
#   python3 benches/shaped.py --report-only             # re-render results/shaped.md
#
# Writes benches/results/shaped.md and shaped.json. Needs root (ip netns, tc, iptables),
# what the tests need (tests/support/testenv.sh: podman, the base image) and, the first
# time only, PyPI to fill the local index with the fixtures' locked wheels. Talks to
# loopback and to 10.231.7.0/30 (its own namespace) only; removes the namespace, the veth,
# the qdiscs, the NFQUEUE rules and its servers at the end, on error and on Ctrl-C.
# The containerd contenders run a private containerd (benches/containerd.py) under
# $state/containerd, stopped, unmounted and removed the same way.
#
# State kept between runs: ${VENVIMG_SHAPED_DIR:-/var/tmp/venvimg-bench-shaped} (the
# wheels, the re-locked fixture copies, the namespace registry's storage with the images).
# VENVIMG_BENCH_BIN=PATH uses that venvimg binary instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
state=${VENVIMG_SHAPED_DIR:-/var/tmp/venvimg-bench-shaped}
mkdir -p "$state/bin"

if [[ ${1:-} == --cleanup ]]; then
  exec /usr/bin/python3 "$root/benches/shaped.py" --state "$state" --cleanup
fi
[[ $(id -u) == 0 ]] || { echo "shaped.sh: needs root (ip netns, tc, iptables)" >&2; exit 1; }
for c in ip tc iptables curl zstd; do
  command -v "$c" >/dev/null || { echo "shaped.sh: $c is missing (apt-get install -y iproute2 iptables curl zstd)" >&2; exit 1; }
done
contenders=all
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --contenders ]] && contenders=${args[i + 1]:-}
  [[ ${args[i]} == --contenders=* ]] && contenders=${args[i]#--contenders=}
done
if [[ $contenders == all || ,$contenders, == *,containerd,* ]]; then
  for c in containerd ctr containerd-shim-runc-v2; do
    command -v "$c" >/dev/null || { echo "shaped.sh: $c is missing (apt-get install -y containerd)" >&2; exit 1; }
  done
fi

# shellcheck source=benches/lib.sh
. benches/lib.sh
bench_testenv

bench_bin "$state/bin" >/dev/null

# shaped.py cleans up in a finally block; this trap covers a python that was killed hard.
trap '/usr/bin/python3 "$root/benches/shaped.py" --state "$state" --cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
/usr/bin/python3 "$root/benches/shaped.py" --venvimg "$state/bin/venvimg" --state "$state" "$@"
