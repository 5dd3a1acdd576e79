#!/usr/bin/env bash
# venvimg's release artifacts, into dist/ (or $VENVIMG_DIST):
#   venvimg-VERSION-TARGET              static musl binaries (x86_64, aarch64)
#   venvimg-VERSION-py3-none-*.whl      the PyPI wheels of those binaries
#                                       (manylinux_2_17 + musllinux_1_2 tags: glibc and musl)
#   venvimg-VERSION-completions.tar.gz  bash, zsh, fish, elvish, powershell completions
#   venvimg-VERSION-man.tar.gz          man pages (venvimg.1, venvimg-COMMAND.1)
#   SHA256SUMS                          sha256 of every file above (`sha256sum -c`)
#
# x86_64 builds with Debian's musl-gcc (musl-tools), as `.ci/run`'s release build, whose
# artifacts it reuses; aarch64 cross-builds with zig as the C compiler and linker
# (`maturin --zig`; zig from PyPI's `ziglang`), so no cross gcc is needed.
#
#   VENVIMG_RELEASE_TARGETS="aarch64-unknown-linux-musl" bash .ci/release.sh   # one target
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${VENVIMG_DIST:-dist}
targets=${VENVIMG_RELEASE_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n $version ]] || { echo "release.sh: no version in Cargo.toml" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null || { echo "release.sh: $1 is missing: $2" >&2; exit 1; }
}
need maturin "python3 -m pip install 'maturin>=1.7,<2' (bash tests/support/testenv.sh deps)"
need sha256sum "apt-get install -y coreutils"

rm -rf "$out"
mkdir -p "$out"
host=$(uname -m)-unknown-linux-musl
for target in $targets; do
  if command -v rustup >/dev/null; then
    rustup target add "$target" >/dev/null
  fi
  zig=()
  if [[ $target != "$host" ]]; then
    # maturin finds zig through the ziglang module of the Python it runs on.
    python3 -m ziglang version >/dev/null 2>&1 || need zig "python3 -m pip install ziglang (bash tests/support/testenv.sh deps)"
    zig=(--zig)
  fi
  start=$SECONDS
  maturin build --release --locked --target "$target" "${zig[@]}" \
    --compatibility manylinux_2_17 musllinux_1_2 --out "$out" </dev/null
  install -m 0755 "${CARGO_TARGET_DIR:-target}/$target/release/venvimg" "$out/venvimg-$version-$target"
  echo "release.sh: $target built in $((SECONDS - start))s"
done

# Completions and man pages, written by a binary that runs here.
bin=$out/venvimg-$version-$host
[[ -x $bin ]] || { cargo build --release --locked </dev/null; bin=${CARGO_TARGET_DIR:-target}/release/venvimg; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/completions" "$work/man"
"$bin" completions bash >"$work/completions/venvimg.bash"
"$bin" completions zsh >"$work/completions/_venvimg"
"$bin" completions fish >"$work/completions/venvimg.fish"
"$bin" completions elvish >"$work/completions/venvimg.elv"
"$bin" completions powershell >"$work/completions/_venvimg.ps1"
"$bin" -q man --dir "$work/man"
# Same bytes for the same files: sorted, fixed owner and time, gzip without a timestamp.
for part in completions man; do
  tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - "$part" \
    | gzip -n -9 >"$out/venvimg-$version-$part.tar.gz"
done

(cd "$out" && find . -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | xargs sha256sum --) >"$work/SHA256SUMS"
mv "$work/SHA256SUMS" "$out/SHA256SUMS"
echo "release.sh: $out:"
(cd "$out" && ls -l && sha256sum --check --quiet SHA256SUMS)
