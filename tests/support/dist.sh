#!/usr/bin/env bash
# This checkout's dist/, as `.ci/release.sh` makes it (x86_64 and aarch64 static binaries,
# wheels, completions, man pages, SHA256SUMS), built once and then reused while the
# sources it is made from are unchanged. Prints the folder.
#
# The tests that read release files (release, wheel, images, the README's Install section)
# and `.ci/run` all come here: under one lock, so two of them never run release.sh at once
# in one target folder, and the aarch64 cross-build (minutes) happens once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
exec 9>"$target/dist.lock"
flock -w 3600 9 || { echo "dist.sh: timed out waiting for $target/dist.lock" >&2; exit 1; }

# What decides dist/'s bytes: the sources, the manifests, the release script, the toolchain.
stamp=$(
  {
    find src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock pyproject.toml .ci/release.sh
    rustc -vV
  } | sha256sum | cut -d' ' -f1
)
# Release files made from these very inputs before (by another clone: CI's runs), kept
# outside the checkout; VENVIMG_DIST_CACHE= (empty) keeps none.
cache=${VENVIMG_DIST_CACHE-/var/tmp/venvimg-ci/dist}
current() { [[ -f $1/SHA256SUMS ]] && (cd "$1" && sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1); }
if [[ $(cat "$target/dist.stamp" 2>/dev/null) == "$stamp" ]] && current dist; then
  echo "dist.sh: dist/ is current (stamp $stamp)" >&2
elif [[ -n $cache ]] && current "$cache/$stamp"; then
  rm -rf dist
  cp -a "$cache/$stamp" dist
  echo "$stamp" >"$target/dist.stamp"
  echo "dist.sh: dist/ copied from $cache/$stamp (made from the same sources)" >&2
else
  rm -f "$target/dist.stamp"
  start=$SECONDS
  echo "dist.sh: building dist/ with .ci/release.sh" >&2
  VENVIMG_DIST=dist bash .ci/release.sh </dev/null >&2
  echo "$stamp" >"$target/dist.stamp"
  echo "dist.sh: dist/ built in $((SECONDS - start))s" >&2
  if [[ -n $cache ]] && mkdir -p "$cache" 2>/dev/null; then
    # the newest few only: each is ~40 MB
    rm -rf "$cache/$stamp.tmp"
    cp -a dist "$cache/$stamp.tmp" && rm -rf "${cache:?}/$stamp" && mv -T "$cache/$stamp.tmp" "$cache/$stamp"
    ls -1dt "$cache"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
  fi
fi
echo "$PWD/dist"
