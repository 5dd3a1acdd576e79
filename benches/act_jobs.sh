#!/usr/bin/env bash
# Per-job wall time of the example workflow under act (nektos/act, the runner Forgejo's
# is a fork of) on the test dockerd and registry, side by side:
#   venvimg   .forgejo/workflows/example-venvimg.yml as tests/it/runners.rs runs it (same
#             substitutions): the `images` job (all hits: one HEAD request per session),
#             then `tests` and `lint` in their job images, nox reusing the venv offline;
#   cold      the same two session jobs in the base image, `nox --envdir /opt/nox -s S`
#             creating the venv and downloading from the package index (host network).
# Each workflow runs N times (default 3; the venvimg one once more first, to build) and
# the report gives each job's median from act's own timestamps (`act --json`).
#
#   bash benches/act_jobs.sh [-n N]        (VENVIMG_BENCH_BIN: the venvimg to use)
#
# Writes benches/results/act_jobs.json and prints a markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=benches/lib.sh
. benches/lib.sh

runs=3
if [[ ${1:-} == -n ]]; then runs=$2; fi
command -v act >/dev/null || { echo "act is missing: bash tests/support/testenv.sh deps" >&2; exit 1; }

# Only the parts used here (not bench_testenv's `up all`: the arm64 base is minutes).
bash tests/support/testenv.sh deps </dev/null
set -a
for envfile in $(bash tests/support/testenv.sh up docker </dev/null); do
  # shellcheck disable=SC1090
  . "$envfile"
done
set +a
work=$(mktemp -d /tmp/venvimg-act-bench.XXXXXX)
[[ -n ${VENVIMG_BENCH_KEEP:-} ]] || trap 'rm -rf "$work"' EXIT
bin=$(bench_bin "$work/bin")

# The sample project as a user's checkout (runners.rs's Checkout): venvimg.yaml on the
# loopback registry, no workdir, the example workflow with the inputs this offline
# machine forces (from: the binary under test, the proxy's CA for the build).
checkout=$work/app
cp -r tests/fixtures/sample "$checkout"
repo="$VENVIMG_TEST_REGISTRY/bench/act-$(date +%s)"
printf 'repository: %s\nbase: %s\n' "$repo" "$VENVIMG_TEST_BASE" >"$checkout/venvimg.yaml"
mkdir -p "$checkout/.forgejo/workflows"
python3 - "$root/.forgejo/workflows/example-venvimg.yml" "$checkout/.forgejo/workflows/venvimg.yml" \
  "$bin" "$VENVIMG_TEST_CA_FILE" "$VENVIMG_TEST_BASE" "$checkout/.forgejo/workflows/cold.yml" <<'EOF'
import re, sys
src, dst, binary, ca, base, cold = sys.argv[1:]
text = open(src).read()
anchor = "        uses: OWNER/venvimg/.forgejo/actions/venvimg@v0.1.0\n"
at = text.index(anchor)
w = text.index("        with:\n", at) + len("        with:\n")
open(dst, "w").write(text[:w] + f"          from: {binary}\n          args: --build-ca {ca}\n" + text[w:])
jobs = ""
for s in ("tests", "lint"):
    jobs += f"""  {s}:
    name: nox -s {s}
    runs-on: ubuntu-latest
    container:
      image: {base}
      volumes:
        - {ca}:/etc/ssl/certs/ca-certificates.crt:ro
    steps:
      - uses: actions/checkout@v5
      - name: nox -s {s} (cold, creates the venv)
        env:
          SSL_CERT_FILE: /etc/ssl/certs/ca-certificates.crt
        run: nox --envdir /opt/nox -s {s}
"""
open(cold, "w").write(f"name: cold\non:\n  workflow_dispatch:\ndefaults:\n  run:\n    shell: bash\njobs:\n{jobs}")
EOF
git -C "$checkout" init -q -b main
git -C "$checkout" -c user.email=b@example.invalid -c user.name=b add -A
git -C "$checkout" -c user.email=b@example.invalid -c user.name=b commit -q -m init
git -C "$checkout" remote add origin https://forge.invalid/acme/app.git
action_repo=$work/action
mkdir -p "$action_repo/.forgejo/actions/venvimg"
cp .forgejo/actions/venvimg/action.yml "$action_repo/.forgejo/actions/venvimg/"

act_run() { # WORKFLOW NETWORK LOG
  (cd "$checkout" && ACT_DISABLE_VERSION_CHECK=1 XDG_CACHE_HOME=$work/cache \
    env -u GITHUB_ACTIONS -u CI -u FORGEJO_ACTIONS -u GITEA_ACTIONS -u GITLAB_CI \
    act workflow_dispatch -W ".forgejo/workflows/$1" --json \
      -P ubuntu-latest=-self-hosted \
      --local-repository "OWNER/venvimg@v0.1.0=$action_repo" \
      --env "VENVIMG_CI_WORKDIR=$checkout" \
      --action-offline-mode --pull=false --no-cache-server \
      --network "$2" --container-daemon-socket - \
      -s VENVIMG_USERNAME=bench -s VENVIMG_PASSWORD=bench \
      </dev/null >"$3" 2>&1) || { tail -n 40 "$3" >&2; echo "act failed: $3" >&2; exit 1; }
}

echo "bench: first run of the venvimg workflow (builds the job images)" >&2
act_run venvimg.yml none "$work/build.log"
for i in $(seq "$runs"); do
  echo "bench: run $i of $runs" >&2
  act_run venvimg.yml none "$work/venvimg-$i.log"
  act_run cold.yml host "$work/cold-$i.log"
done

python3 - "$work" "$runs" "$root/benches/results/act_jobs.json" <<'EOF'
import json, statistics, sys
from datetime import datetime
work, runs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def job_seconds(path):
    """Each job's span: its first to its last log line. act's timestamps have whole
    seconds: a span is +-1 s, which is why there are several runs."""
    spans = {}
    for line in open(path, errors="replace"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        # jobID: the job's key in the workflow (act pads `job`, the display name).
        job, t = rec.get("jobID"), rec.get("time")
        if not job or not t:
            continue
        t = datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        lo, hi = spans.get(job, (t, t))
        spans[job] = (min(lo, t), max(hi, t))
    return {j: hi - lo for j, (lo, hi) in spans.items()}

samples = {}
for kind in ("venvimg", "cold"):
    for i in range(1, runs + 1):
        for job, s in job_seconds(f"{work}/{kind}-{i}.log").items():
            samples.setdefault(f"{kind}: {job}", []).append(round(s, 2))
medians = {k: statistics.median(v) for k, v in samples.items()}
json.dump({"runs": runs, "samples": samples, "medians": medians}, open(out, "w"), indent=2)
print(f"| job (median of {runs}) | seconds | samples |")
print("| --- | ---: | --- |")
for k in sorted(samples):
    print(f"| {k} | {medians[k]:.1f} | {', '.join(f'{x:.1f}' for x in samples[k])} |")
for s in ("tests", "lint"):
    v, c = medians.get(f"venvimg: {s}"), medians.get(f"cold: {s}")
    if v and c:
        print(f"nox -s {s}: cold / venvimg image = {c / v:.2f}x")
EOF
