# shellcheck shell=bash
# Sourced by the benchmark scripts (from the repository root): the test environment and
# the venvimg binary under test, set up the same way for each.

# Install the test environment's packages, bring it up (registry, base images, dockerd)
# and export what it reports (VENVIMG_TEST_*, DOCKER_HOST, CONTAINERS_*).
bench_testenv() {
  bash tests/support/testenv.sh deps </dev/null
  local envfiles envfile
  envfiles=$(bash tests/support/testenv.sh up all </dev/null)
  set -a
  for envfile in $envfiles; do
    # shellcheck disable=SC1090
    . "$envfile"
  done
  set +a
}

# Print the path of the venvimg binary to measure: $VENVIMG_BENCH_BIN, else a fresh
# `cargo build --release`. With a folder argument, a private copy in it: others may
# rebuild target/release while the benchmark runs.
bench_bin() {
  local bin
  if [[ -n ${VENVIMG_BENCH_BIN:-} ]]; then
    bin=$VENVIMG_BENCH_BIN
  else
    echo "bench: cargo build --release" >&2
    cargo build --release --quiet
    bin=$PWD/target/release/venvimg
  fi
  if [[ -n ${1:-} ]]; then
    mkdir -p "$1"
    cp -f "$bin" "$1/venvimg.tmp"
    mv -f "$1/venvimg.tmp" "$1/venvimg"
    bin=$1/venvimg
  fi
  printf '%s\n' "$bin"
}
