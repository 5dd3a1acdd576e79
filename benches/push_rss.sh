#!/usr/bin/env bash
# Peak RSS of venvimg packing and pushing a 1 GiB layer to the loopback test registry.
#
#   bash benches/push_rss.sh                 monolithic upload (the default)
#   VENVIMG_RSS_CHUNK_MIB=4 bash benches/push_rss.sh   chunked upload (--chunk-size 4)
#   VENVIMG_RSS_BYTES=N, VENVIMG_RSS_DIR=DIR  other size / scratch directory (default /tmp)
#
# Builds tests/registry_rss.rs in release mode and runs its test, at 1 GiB (VENVIMG_RSS_BYTES), under
# /usr/bin/time -v. The test generates the data, packs it (gzip), pushes it (base layer
# copied from the shared test registry, the 1 GiB layer streamed from disk), checks its
# own VmHWM for each phase, and deletes everything it wrote. Fails when the peak of the
# whole process reaches 100 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -x /usr/bin/time ]] || { echo "push_rss: /usr/bin/time is missing (apt-get install -y time)" >&2; exit 2; }

exe=$(cargo test --release --test it --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])')
[[ -n $exe ]] || { echo "push_rss: could not build tests/it (registry_rss)" >&2; exit 2; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
VENVIMG_RSS_BYTES=${VENVIMG_RSS_BYTES:-$((1 << 30))} \
  /usr/bin/time -v "$exe" --exact --nocapture registry_rss::push_layer_under_100mib_rss 2>"$log" || status=$?
grep -E '^(generated|packed|pushed)|panicked|test result' "$log" || true
grep -E 'Maximum resident set size|Elapsed \(wall clock\)' "$log"
kib=$(awk -F': ' '/Maximum resident set size/{print $2}' "$log")
echo "peak RSS (whole process, /usr/bin/time -v): $((kib / 1024)) MiB ($kib KiB); limit 100 MiB"
if [[ $status != 0 ]]; then
  echo "push_rss: the test failed (exit $status)" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
((kib < 100 * 1024)) || { echo "push_rss: peak RSS reached 100 MiB" >&2; exit 1; }
