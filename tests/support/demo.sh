#!/usr/bin/env bash
# The main job, end to end, on the bundled sample project (tests/fixtures/sample):
# sets up what it uses and nothing else (a loopback registry and a Python+nox base image,
# tests/support/testenv.sh's core part), builds and pushes every session's job image with
# venvimg, plans again (all hits), and runs one session offline in its image the way a CI
# job would. Prints how long each step took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

T0=$SECONDS
STEP=""
STEP_T0=$SECONDS
TIMES=()
step() { # NAME: ends the step before (recording its seconds), starts NAME
  if [[ -n $STEP ]]; then TIMES+=("$(printf '%5ss  %s' $((SECONDS - STEP_T0)) "$STEP")"); fi
  STEP=$1
  STEP_T0=$SECONDS
  [[ -n $STEP ]] && printf '== %s (at %ss)\n' "$STEP" $((SECONDS - T0))
  return 0
}
work=""
envlog=""
up_pid=""
on_exit() {
  local rc=$?
  [[ -n $up_pid ]] && kill "$up_pid" 2>/dev/null
  [[ -n $envlog ]] && rm -f "$envlog" "$envlog.out"
  step ""
  echo "== steps"
  printf '%s\n' "${TIMES[@]}"
  printf '%5ss  total\n' $((SECONDS - T0))
  [[ $rc == 0 ]] || echo "== demo FAILED (exit $rc) in: ${TIMES[-1]##*  }" >&2
  exit "$rc"
}
trap on_exit EXIT

step "packages (testenv.sh deps core: podman, registry, debootstrap, uv and nox, if missing)"
bash tests/support/testenv.sh deps core </dev/null

# The registry and the base image (debootstrap, the first time) come up while venvimg
# compiles: the one mostly waits on the package mirror, the other on the CPU.
step "venvimg compiles (cargo build) while the registry and base image come up"
envlog=$(mktemp)
bash tests/support/testenv.sh up </dev/null >"$envlog.out" 2>"$envlog" &
up_pid=$!
cargo build --quiet
venvimg=$root/target/debug/venvimg

step "registry and base image (testenv.sh up)"
if ! wait "$up_pid"; then
  up_pid=""
  cat "$envlog" >&2
  echo "demo: tests/support/testenv.sh up failed; its log is above" >&2
  exit 1
fi
up_pid=""
grep -E 'debootstrap done|rootfs ready|registry started|up in' "$envlog" || true
envfile=$(tail -n 1 "$envlog.out")
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a

work=$(mktemp -d /tmp/venvimg-demo.XXXXXX)
cp -r tests/fixtures/sample "$work/project"
cat > "$work/project/venvimg.yaml" <<YAML
# Job images go to the loopback registry testenv.sh started.
repository: $VENVIMG_TEST_REGISTRY/demo/sample-ci
# Debian bookworm + python3.11 + nox + uv, built by testenv.sh with debootstrap.
base: $VENVIMG_TEST_BASE
envdir: /opt/nox
workdir: /src
builder: podman
YAML
cd "$work/project"

step "venvimg plan"
"$venvimg" plan
step "venvimg build (package downloads trust $VENVIMG_TEST_CA_FILE)"
"$venvimg" build --build-ca "$VENVIMG_TEST_CA_FILE"
step "venvimg plan (now every session hits)"
"$venvimg" plan
image=$("$venvimg" plan --json -q | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"][0]["image"])')
step "the CI job: podman run --network none $image"
podman run --rm --network none -v "$work/project:/src" -w /src -e UV_OFFLINE=1 "$image" \
  nox --envdir /opt/nox --reuse-venv=always --no-install -s tests
echo "== done: project copy and venvimg.yaml in $work/project"
