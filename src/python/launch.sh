#!/bin/sh
# Written by venvimg: run venvimg's nox hook with the interpreter that runs `nox`.
#   sh launch.sh HOOK-ARGS...
set -eu
hook="$(dirname "$0")/hook.py"
nox_path=$(command -v nox) || { echo "venvimg: no \`nox\` on PATH" >&2; exit 127; }
# The interpreter the entry point names: its shebang (pip, pipx, uv tool venvs), or the
# '''exec' trampoline of venvs at paths with spaces. A function, so `set --` leaves "$@".
from_entry_point() {
  l1=$(sed -n '1p' "$nox_path" 2>/dev/null || true)
  l2=$(sed -n '2p' "$nox_path" 2>/dev/null || true)
  case $l2 in
    "'''exec' "*) sh -c 'eval "set -- $1"; printf "%s" "$1"' sh "${l2#"'''exec'"}"; return ;;
  esac
  case $l1 in
    '#!'*) ;;
    *) return ;;
  esac
  set -f; set -- ${l1#'#!'}; set +f
  case ${1##*/} in
    env) shift
         while [ $# -gt 0 ] && case $1 in -*|*=*) true;; *) false;; esac; do shift; done
         command -v "${1:-python3}" || true ;;
    *) printf '%s' "$1" ;;
  esac
}
py=$(from_entry_point)
if [ -z "$py" ] || ! "$py" -c 'import nox' >/dev/null 2>&1; then
  # Shims and wrappers (pyenv): let nox itself say which interpreter runs it.
  probe=$(mktemp -d)
  printf '%s\n' 'import os, sys' 'open(os.environ["VENVIMG_PROBE"], "w").write(sys.executable)' >"$probe/noxfile.py"
  VENVIMG_PROBE="$probe/out" NOX_SCRIPT_MODE=none "$nox_path" -f "$probe/noxfile.py" --list </dev/null >/dev/null 2>&1 || true
  py=$(cat "$probe/out" 2>/dev/null || true)
  rm -rf "$probe"
fi
if [ -z "$py" ] || ! "$py" -c 'import nox' >/dev/null 2>&1; then
  echo "venvimg: cannot find the Python interpreter that runs $nox_path" >&2
  exit 127
fi
exec "$py" "$hook" "$@"
