#!/usr/bin/env bash
# The main job, end to end, on the bundled sample project (tests/fixtures/sample):
# sets up a loopback registry and a Python+nox base image (tests/support/testenv.sh),
# builds and pushes every session's job image with venvimg, plans again (all hits), and
# runs one session offline in its image the way a CI job would.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

bash tests/support/testenv.sh deps </dev/null
envfile=$(bash tests/support/testenv.sh up </dev/null)
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a

cargo build --release --quiet
venvimg=$root/target/release/venvimg

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

echo "== venvimg plan"
"$venvimg" plan
echo "== venvimg build (package downloads trust $VENVIMG_TEST_CA_FILE)"
"$venvimg" build --build-ca "$VENVIMG_TEST_CA_FILE"
echo "== venvimg plan (now every session hits)"
"$venvimg" plan
image=$("$venvimg" plan --json -q | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"][0]["image"])')
echo "== the CI job: podman run --network none $image"
podman run --rm --network none -v "$work/project:/src" -w /src -e UV_OFFLINE=1 "$image" \
  nox --envdir /opt/nox --reuse-venv=always --no-install -s tests
echo "== done: project copy and venvimg.yaml in $work/project"
