#!/usr/bin/env bash
# Pins the sha256 of the release binaries into venvimg's composite action, so that the
# action installs a release binary only with the digest of the file published for its
# version (a file replaced on the server, SHA256SUMS with it, is refused):
#
#   bash .ci/release.sh && bash .ci/pin-action.sh dist     # then commit, then tag
#   bash .ci/pin-action.sh --check dist                    # release.yml: the tag's pins
#                                                          # are the files it publishes
#
# Arguments: [--check] [DIST (default dist)] [ACTION (default the shipped action.yml)].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=0
if [[ ${1:-} == --check ]]; then
  check=1
  shift
fi
dist=${1:-dist}
action=${2:-.forgejo/actions/venvimg/action.yml}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || { echo "pin-action.sh: no version in Cargo.toml" >&2; exit 1; }
[[ -f $action ]] || { echo "pin-action.sh: no action file $action" >&2; exit 2; }

# name=value on a line of its own in the action's install script; the value quoted.
current() { sed -n "s/^ *$1=\"\([^\"]*\)\"\$/\1/p" "$action"; }
set_value() {
  local count
  count=$(grep -c "^ *$1=\"[^\"]*\"\$" "$action" || true)
  [[ $count == 1 ]] || { echo "pin-action.sh: $action has $count lines '$1=\"...\"', expected 1" >&2; exit 1; }
  sed -i "s/^\( *\)$1=\"[^\"]*\"\$/\1$1=\"$2\"/" "$action"
}

failed=0
pins=(pinned_version "$version")
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  file=$dist/venvimg-$version-$target
  [[ -f $file ]] || { echo "pin-action.sh: no $file: run bash .ci/release.sh first" >&2; exit 1; }
  sum=$(sha256sum "$file")
  pins+=("pinned_${target//-/_}" "${sum%% *}")
done
for ((i = 0; i < ${#pins[@]}; i += 2)); do
  name=${pins[i]}
  value=${pins[i + 1]}
  if [[ $check == 1 ]]; then
    have=$(current "$name")
    if [[ $have != "$value" ]]; then
      echo "pin-action.sh: $action pins $name=\"$have\", but $dist has \"$value\"" >&2
      failed=1
    fi
  else
    set_value "$name" "$value"
  fi
done
if [[ $check == 1 ]]; then
  if [[ $failed == 1 ]]; then
    echo "pin-action.sh: the action does not pin the files in $dist: run 'bash .ci/pin-action.sh $dist' on the files you publish and commit it before tagging" >&2
    exit 1
  fi
  echo "pin-action.sh: $action pins the binaries in $dist (venvimg $version)"
else
  echo "pin-action.sh: pinned venvimg $version's binaries in $action"
fi
