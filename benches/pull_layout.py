#!/usr/bin/env python3
"""Pull time against layer layout and compression (issue #17); run through
benches/pull_layout.sh, which builds the bigstack job image with venvimg and passes it.

Engines decompress and apply layers themselves, so the question is what layout and what
compression make a cold `podman pull` / `docker pull` fastest for the same venv. From
venvimg's per-distribution gzip image (its default), this script derives variants of the
SAME files (the same tar members, so the same venv after extraction):

  single            every venv layer's members in one layer
  per-distribution  venvimg's own layers, as pushed
  parts <= N MB     every venv layer over N MB (uncompressed) cut into about equal parts
                    by ranges of its members (each part carries the folders above its files)
  zstd -L           the per-distribution layers recompressed with zstd at level L

pushes each as an image of its own to the loopback registry (the base's layers mounted),
then pulls them cold in rounds, the order rotating: podman with a private store (every
variant's layers removed first: variants share uncompressed layers, and a store holding a
layer with the same diff_id skips writing it), for gzip the Docker daemon of
tests/support/testenv.sh, and a private containerd 1.6 (`ctr images pull`, overlayfs;
benches/containerd.py), restarted on an empty root before every pull, the base pulled
untimed first. Reported: wall, the engine's CPU (podman: the process; Docker: dockerd's
CPU during the pull; containerd: the daemon's CPU during the pull plus ctr's own), the
bytes, the largest layer, and the CPU it takes to decompress all layers on one core
(`gzip -dc` / `zstd -dc`). Python 3 stdlib only.

--engines and --variants pick a subset; the results are then merged into
results/pull-layout.json: the cells this run measured replace the earlier ones, the report
names the run each cell comes from.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import io
import json
import os
import statistics
import subprocess
import signal
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# (compression, layout), in the report's order.
VARIANTS = [("gzip", "single"), ("gzip", "per-distribution"), ("gzip", "parts ≤ 24 MB"),
            ("gzip", "parts ≤ 12 MB"), ("gzip", "parts ≤ 6 MB"), ("zstd-3", "single"),
            ("zstd-3", "per-distribution"), ("zstd-3", "parts ≤ 12 MB"),
            ("zstd-9", "per-distribution"), ("zstd-19", "per-distribution"),
            ("gzip", "per-distribution, no bytecode"), ("zstd-3", "per-distribution, no bytecode")]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ENGINES = ("podman", "docker", "containerd")
# --variants basic: the four the issues compare (gzip/zstd × single/per-distribution)
BASIC = [("gzip", "single"), ("gzip", "per-distribution"), ("zstd-3", "single"), ("zstd-3", "per-distribution")]
MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def log(msg):
    print(f"[pull-layout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def http(url, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    with urllib.request.urlopen(req) as r:
        return r.read(), r.headers


class Registry:
    def __init__(self, host):
        self.host = host

    def manifest(self, repo, ref):
        body, _ = http(f"http://{self.host}/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        return json.loads(body)

    def blob(self, repo, digest):
        return http(f"http://{self.host}/v2/{repo}/blobs/{digest}")[0]

    def mount(self, repo, digest, source):
        http(f"http://{self.host}/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", "POST", b"")

    def put_blob(self, repo, data) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _, h = http(f"http://{self.host}/v2/{repo}/blobs/uploads/", "POST", b"")
        loc = h["Location"]
        loc = loc if loc.startswith("http") else f"http://{self.host}{loc}"
        sep = "&" if "?" in loc else "?"
        http(f"{loc}{sep}digest={digest}", "PUT", data, {"Content-Type": "application/octet-stream"})
        return digest

    def put_manifest(self, repo, tag, doc):
        http(f"http://{self.host}/v2/{repo}/manifests/{tag}", "PUT", json.dumps(doc).encode(),
             {"Content-Type": OCI_MANIFEST})


def decompress(data: bytes, media: str) -> bytes:
    if media.endswith("gzip"):
        return gzip.decompress(data)
    return subprocess.run(["zstd", "-q", "-dc"], input=data, capture_output=True, check=True).stdout


def compress(raw: bytes, comp: str) -> bytes:
    if comp == "gzip":
        return gzip.compress(raw, 6, mtime=0)
    level = comp.split("-")[1]
    return subprocess.run(["zstd", "-q", f"-{level}", "-c"] + (["--ultra"] if int(level) > 19 else []),
                          input=raw, capture_output=True, check=True).stdout


def cached_compress(raw: bytes, comp: str, cache: Path):
    """compress(), kept on disk between runs (zstd -19 of the venv takes minutes), with the
    seconds the first compression took."""
    key = hashlib.sha256(raw).hexdigest()[:32] + "-" + comp
    blob, secs = cache / key, cache / (key + ".seconds")
    if blob.exists() and secs.exists():
        return blob.read_bytes(), float(secs.read_text())
    t = time.monotonic()
    data = compress(raw, comp)
    took = time.monotonic() - t
    cache.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    secs.write_text(f"{took}\n")
    return data, took


def members(raw: bytes):
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
        for m in t.getmembers():
            yield m, (t.extractfile(m).read() if m.isreg() else None)


def write_tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as t:
        for m, data in entries:
            t.addfile(m, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def split_layer(raw: bytes, part: int) -> list[bytes]:
    """Cut one layer into parts of about `part` bytes of file data, in member order; each
    part repeats the folder entries above its files (as a layer venvimg writes would)."""
    ents = list(members(raw))
    total = sum(len(d) for _, d in ents if d is not None)
    k = max(1, -(-total // part))
    if k == 1:
        return [raw]
    target = -(-total // k)
    dirs = {}
    parts, cur, cur_bytes, emitted = [], [], 0, set()
    for m, d in ents:
        if m.isdir():
            dirs[m.name.rstrip("/")] = m
        n = len(d) if d is not None else 0
        if cur_bytes and cur_bytes + n // 2 > target and len(parts) + 1 < k:
            parts.append(cur)
            cur, cur_bytes, emitted = [], 0, set()
        # the folders above this entry, once per part
        anc, p = [], os.path.dirname(m.name.rstrip("/"))
        while p and p not in emitted:
            if p in dirs:
                anc.append(dirs[p])
            emitted.add(p)
            p = os.path.dirname(p)
        cur.extend((a, None) for a in reversed(anc))
        if m.isdir():
            emitted.add(m.name.rstrip("/"))
        cur.append((m, d))
        cur_bytes += n
    parts.append(cur)
    return [write_tar(p) for p in parts]


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")


def run(cmd, env=None, check=True):
    return subprocess.run(cmd, env=env, check=check, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report-only", action="store_true", help="re-render pull-layout.md from its json")
    ap.add_argument("--image", help="venvimg's per-distribution gzip image (HOST/REPO:TAG)")
    ap.add_argument("--base", help="its base image (HOST/REPO:TAG)")
    ap.add_argument("--work")
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--dockerd-pid", type=int)
    ap.add_argument("--cache", help="compressed layers kept between runs")
    ap.add_argument("--project", help="the bigstack fixture (mounted at /src to run its session)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    ap.add_argument("--variants", default="all",
                    help="all, basic (gzip/zstd-3 × single/per-distribution), or COMP/LAYOUT,... "
                         "(e.g. gzip/single,zstd-3/per-distribution)")
    args = ap.parse_args()
    if args.report_only:
        md = report(json.loads((RESULTS / "pull-layout.json").read_text()))
        (RESULTS / "pull-layout.md").write_text(md)
        print(md)
        return
    engines = [e for e in args.engines.split(",") if e]
    if not engines or any(e not in ENGINES for e in engines):
        sys.exit(f"--engines: pick from {', '.join(ENGINES)}")
    if args.variants == "all":
        variants = list(VARIANTS)
    elif args.variants == "basic":
        variants = list(BASIC)
    else:
        variants = [tuple(v.split("/", 1)) for v in args.variants.split(",") if v]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            sys.exit(f"--variants: unknown {unknown}; known: {', '.join(c + '/' + l for c, l in VARIANTS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    host, rest = args.image.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    reg = Registry(host)
    man = reg.manifest(repo, tag)
    base_host, base_rest = args.base.split("/", 1)
    base_repo, base_tag = base_rest.rsplit(":", 1)
    nbase = len(reg.manifest(base_repo, base_tag)["layers"])
    config = json.loads(reg.blob(repo, man["config"]["digest"]))
    base_layers = man["layers"][:nbase]
    venv_raw = [decompress(reg.blob(repo, l["digest"]), l["mediaType"]) for l in man["layers"][nbase:]]
    log(f"{args.image}: {len(venv_raw)} venv layers, {sum(map(len, venv_raw)) / 1e6:.1f} MB uncompressed")

    # One layer: every member once (the layers repeat the folders above their files, and
    # engines refuse a layer naming a path twice).
    seen, single = set(), []
    for raw in venv_raw:
        for m, d in members(raw):
            if m.name not in seen:
                seen.add(m.name)
                single.append((m, d))
    layouts = {"single": [write_tar(single)],
               "per-distribution": venv_raw}
    layouts["per-distribution, no bytecode"] = [
        write_tar([(m, d) for m, d in members(raw) if "__pycache__" not in m.name.split("/")]) for raw in venv_raw]
    for mb in (24, 12, 6):
        if not any(lay == f"parts ≤ {mb} MB" for _, lay in variants):
            continue
        layouts[f"parts ≤ {mb} MB"] = [p for raw in venv_raw for p in split_layer(raw, mb << 20)]
    images, info = {}, {}
    out_repo = f"{repo}-pull-layout"
    for comp, lay in variants:
        name = f"{comp} {lay}"
        blobs, pack = [], 0.0
        for raw in layouts[lay]:
            b, secs = cached_compress(raw, comp, Path(args.cache))
            blobs.append(b)
            pack += secs
        for l in base_layers:
            reg.mount(out_repo, l["digest"], base_repo)
        descs = [{"mediaType": MEDIA[comp.split("-")[0]], "digest": reg.put_blob(out_repo, b), "size": len(b)}
                 for b in blobs]
        cfg = dict(config)
        # Docker checks the history against the layers: the base's entries, then one per layer.
        base_hist, non_empty = [], 0
        for h in config.get("history", []):
            if non_empty == nbase and not h.get("empty_layer"):
                break
            base_hist.append(h)
            non_empty += 0 if h.get("empty_layer") else 1
        cfg["history"] = base_hist + [{"created_by": f"pull-layout bench: {name}, layer {i + 1}"}
                                      for i in range(len(blobs))]
        cfg["rootfs"] = {"type": "layers", "diff_ids": config["rootfs"]["diff_ids"][:nbase] +
                         ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in layouts[lay]]}
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
             "config": {"mediaType": man["config"]["mediaType"], "digest": reg.put_blob(out_repo, cfg_bytes),
                        "size": len(cfg_bytes)},
             "layers": base_layers + descs}
        vtag = "v-" + hashlib.sha256(name.encode()).hexdigest()[:12]
        reg.put_manifest(out_repo, vtag, m)
        images[name] = f"{host}/{out_repo}:{vtag}"
        dec = 0.0
        for b in blobs:
            cmd = ["gzip", "-dc"] if comp == "gzip" else ["zstd", "-q", "-dc"]
            t0 = time.monotonic()
            subprocess.run(cmd, input=b, stdout=subprocess.DEVNULL, check=True)
            dec += time.monotonic() - t0
        info[name] = {"layers": len(blobs), "bytes": sum(map(len, blobs)), "largest": max(map(len, blobs)),
                      "largest_raw": max(map(len, layouts[lay])), "compress_s": pack, "decompress_s": dec}
        log(f"{name}: {len(blobs)} layers, {info[name]['bytes'] / 1e6:.1f} MB, largest "
            f"{info[name]['largest'] / 1e6:.1f} MB, compressed in {pack:.1f} s (one core, when first made), "
            f"decompress {dec:.2f} s")

    work = Path(args.work)
    conf = work / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/graph"\nrunroot = "{work}/run"\n')
    penv = dict(os.environ, CONTAINERS_STORAGE_CONF=str(conf))
    if "podman" in engines:
        run(["podman", "pull", "-q", "--tls-verify=false", args.base], env=penv)
    if "docker" in engines:
        run(["docker", "pull", "-q", args.base])
    ctrd = None
    if "containerd" in engines:
        from containerd import Containerd  # benches/containerd.py, beside this script
        ctrd = Containerd(work / "containerd")
    try:
        samples, versions = measure(args, engines, images, info, nbase, penv, ctrd)
    finally:
        if ctrd is not None:
            ctrd.stop()
    versions["engines"] = engines
    new = {"image": args.image, "rounds": args.n, "info": info, "samples": samples,
           "machine": {"cores": os.cpu_count(), "load_end": os.getloadavg(), **versions},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "bash benches/pull_layout.sh" + (f" -n {args.n}" if args.n != 3 else "")
           + (f" --engines {args.engines}" if set(engines) != set(ENGINES) else "")
           + (f" --variants {args.variants}" if args.variants != "all" else "")}
    old = RESULTS / "pull-layout.json"
    doc = merge(json.loads(old.read_text()) if old.exists() else None, new)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pull-layout.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    md = report(doc)
    (RESULTS / "pull-layout.md").write_text(md)
    print(md)


def merge(old, new):
    """NEW's samples replace OLD's for the same cells; every run is listed in "runs" with
    its own samples (so a replaced cell's earlier samples are kept there), and "from_run"
    names the run (its index) each cell of the merged view comes from."""
    if old is None:
        doc = {"runs": [], "samples": {}, "info": {}, "from_run": {}}
    else:
        doc = copy.deepcopy(old)
        if "runs" not in doc:  # results written before runs were merged: one run
            doc["runs"] = [{"date": old["date"], "rounds": old["rounds"], "image": old["image"],
                            "machine": copy.deepcopy(old["machine"]), "command": "bash benches/pull_layout.sh"
                            + (f" -n {old['rounds']}" if old["rounds"] != 3 else ""),
                            "samples": copy.deepcopy(old["samples"])}]
            doc["machine"]["engines"] = ["podman", "docker"]
            doc["runs"][0]["machine"]["engines"] = ["podman", "docker"]
            doc["from_run"] = {k: 0 for k in old["samples"]}
    idx = len(doc["runs"])
    doc["runs"].append({k: new[k] for k in ("date", "rounds", "image", "machine", "command", "samples")})
    for k, v in new["samples"].items():
        doc["samples"][k] = v
        doc["from_run"][k] = idx
    doc["info"].update(new["info"])
    for k in ("date", "rounds", "image", "machine"):
        doc[k] = new[k]
    doc["medians"] = {k: statistics.median(v) for k, v in doc["samples"].items()}
    return doc


def measure(args, engines, images, info, nbase, penv, ctrd):
    samples = {}
    versions = {}
    if "podman" in engines:
        versions["podman"] = run(["podman", "--version"]).stdout.strip()
    if "docker" in engines:
        versions["docker"] = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).stdout.strip()
    work = Path(args.work)

    def forget():
        for img in images.values():
            if "podman" in engines:
                run(["podman", "rmi", "-f", img], env=penv, check=False)
            if "docker" in engines:
                run(["docker", "rmi", "-f", img], check=False)
        subprocess.run(["sync"])
        time.sleep(1)

    names = list(images)
    for r in range(args.n):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            img = images[name]
            line = f"round {r + 1}: {name}:"
            if "podman" in engines:
                forget()
                t0 = time.monotonic()
                res = subprocess.run(["/usr/bin/time", "-f", "%U %S", "podman", "pull", "-q", "--tls-verify=false",
                                      img], env=penv, capture_output=True, text=True, check=True)
                wall = time.monotonic() - t0
                u, s = map(float, res.stderr.strip().splitlines()[-1].split())
                samples.setdefault(f"{name}|podman", []).append(wall)
                samples.setdefault(f"{name}|podman_cpu", []).append(u + s)
                line += f" podman {wall:.2f} s (CPU {u + s:.1f} s)"
            if ctrd is not None:
                # a cold store: a fresh root, the base pulled first (untimed: it is on the
                # runner for every engine), then the variant
                ctrd.fresh()
                versions["containerd"] = ctrd.version
                ctrd.pull(args.base)
                subprocess.run(["sync"])
                time.sleep(1)
                p = ctrd.pull(img)
                if p["snapshots"] < nbase + info[name]["layers"]:
                    sys.exit(f"containerd unpacked {p['snapshots']} snapshots for {img}, which has "
                             f"{nbase + info[name]['layers']} layers: not unpacked")
                for k, v in (("", p["wall"]), ("_cpu", p["cpu"]), ("_daemon_cpu", p["daemon_cpu"]),
                             ("_ctr_cpu", p["ctr_cpu"])):
                    samples.setdefault(f"{name}|containerd{k}", []).append(v)
                line += (f", containerd {p['wall']:.2f} s (CPU {p['cpu']:.1f} s: daemon {p['daemon_cpu']:.1f}, "
                         f"ctr {p['ctr_cpu']:.1f}; {p['snapshots']} snapshots)")
            if name.startswith("gzip") and "docker" in engines:
                forget()
                c0 = proc_cpu(args.dockerd_pid) if args.dockerd_pid else 0.0
                t0 = time.monotonic()
                run(["docker", "pull", "-q", img])
                wall = time.monotonic() - t0
                cpu = proc_cpu(args.dockerd_pid) - c0 if args.dockerd_pid else 0.0
                samples.setdefault(f"{name}|docker", []).append(wall)
                samples.setdefault(f"{name}|docker_cpu", []).append(cpu)
                line += f", docker {wall:.2f} s (dockerd CPU {cpu:.1f} s)"
            log(line)
    # The session itself in the image with bytecode and in the one without (whose first
    # imports compile and write the .pyc into the container): what bytecode saves a job.
    pair = [("bytecode", "gzip per-distribution"), ("no bytecode", "gzip per-distribution, no bytecode")]
    for r in range(args.n if "podman" in engines and all(n in images for _, n in pair) else 0):
        for label, name in (pair if r % 2 == 0 else pair[::-1]):
            src = work / "src"
            subprocess.run(["rm", "-rf", str(src)], check=True)
            subprocess.run(["cp", "-r", args.project, str(src)], check=True)
            t0 = time.monotonic()
            res = run(["podman", "run", "--rm", "--network", "none", "-e", "UV_OFFLINE=1", "-v", f"{src}:/src",
                       "-w", "/src", images[name], "nox", "--envdir", "/opt/nox", "--reuse-venv=always",
                       "--no-install", "-s", "tests"], env=penv, check=False)
            wall = time.monotonic() - t0
            if res.returncode != 0 or "Reusing existing virtual environment" not in res.stdout + res.stderr:
                sys.exit(f"the tests session in {images[name]} did not pass reusing the venv:\n{res.stderr[-3000:]}")
            samples.setdefault(f"run|{label}", []).append(wall)
            log(f"round {r + 1}: session run, {label}: {wall:.2f} s")
    forget()
    return samples, versions


SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def report(doc) -> str:
    m, info, samples = doc["medians"], doc["info"], doc["samples"]
    runs = doc.get("runs") or [{"date": doc["date"], "rounds": doc["rounds"], "image": doc["image"],
                                "machine": doc["machine"], "command": "bash benches/pull_layout.sh"}]
    from_run = doc.get("from_run", {})
    multi = len(runs) > 1

    def mark(key):
        """The run a cell comes from, as a superscript, when the results merge runs."""
        return f" {str(from_run.get(key, 0) + 1).translate(SUP)}" if multi and key in samples else ""

    vers = {}
    for r in runs:
        for k in ("podman", "docker", "containerd"):
            if r["machine"].get(k):
                vers[k] = r["machine"][k]
    cores = doc["machine"]["cores"]
    tools = ", ".join(x for x in (vers.get("podman"), vers.get("docker") and f"Docker {vers['docker']}",
                                  vers.get("containerd") and f"containerd {vers['containerd']} (`ctr`, overlayfs)") if x)
    if multi:
        head = (f"Measured on {cores} cores, {tools}. Merged from {len(runs)} runs (a superscript in a cell names "
                "its run; the samples of cells a later run replaced stay in the json): "
                + "; ".join(f"{i + 1}. {r['date']}, {r['rounds']} round(s), "
                            f"{', '.join(r['machine'].get('engines', ['podman', 'docker']))}, image {r['image']}: "
                            f"`{r['command']}`" for i, r in enumerate(runs))
                + ". Medians, the order rotating. Each run derives its variants from the image it names (the "
                "tags differ when the test environment or venvimg changed).")
    else:
        head = (f"Measured {doc['date']}, {cores} cores, {tools}; medians of {doc['rounds']} round(s), the order "
                f"rotating; `{runs[0]['command']}` reproduces it.")
    out = [head + (" The bigstack venv" if multi else f" The bigstack venv ({doc['image']})") + " in different layouts and compressions, the same files in "
           "each; cold pulls from the loopback registry (the base already on the runner; containerd: a fresh root "
           "for every pull, the base pulled untimed first; its CPU is the daemon's during the pull plus ctr's own).",
           "",
           "| compression | layout | layers | bytes | largest layer | compress, one core | decompress, one core | "
           "`podman pull` | podman CPU | `docker pull` | dockerd CPU | `ctr images pull` | containerd CPU | "
           "at 1 Gbit/s | at 100 Mbit/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(key, digits):
        return f"{m[key]:.{digits}f} s{mark(key)}" if key in m else "–"

    for comp, lay in VARIANTS:
        name = f"{comp} {lay}"
        if name not in info:
            continue
        i = info[name]
        # A docker pull that cost dockerd no CPU found the layers in the daemon already
        # (its layer store outlives `docker rmi` when another image shares the chain):
        # not a cold pull, so not counted.
        cold = [w for w, c in zip(samples.get(f"{name}|docker", []), samples.get(f"{name}|docker_cpu", []))
                if c >= 0.5]
        d = statistics.median(cold) if cold else None
        dcpu = [c for c in samples.get(f"{name}|docker_cpu", []) if c >= 0.5]
        dn = len(samples.get(f"{name}|docker", []))
        dk = f"{name}|docker"
        out.append(f"| {comp} | {lay} | {i['layers']} | {i['bytes'] / 1e6:.1f} MB | {i['largest'] / 1e6:.1f} MB | "
                   f"{i['compress_s']:.1f} s | {i['decompress_s']:.2f} s | {cell(name + '|podman', 2)} | "
                   f"{cell(name + '|podman_cpu', 1)} | "
                   + (f"{d:.2f} s{'' if len(cold) == dn else f' ({len(cold)} of {dn} cold)'}{mark(dk)} | "
                      f"{statistics.median(dcpu):.1f} s" if d is not None
                      else ("not cold | –" if dn else "– | –"))
                   + f" | {cell(name + '|containerd', 2)} | {cell(name + '|containerd_cpu', 1)}"
                   + f" | {i['bytes'] * 8 / 1e9:.2f} s | {i['bytes'] * 8 / 1e8:.1f} s |")
    rows = [(comp, lay) for comp, lay in VARIANTS if f"{comp} {lay}|containerd" in m]
    if rows:
        out += ["", "Engines side by side: each engine's cold pull over podman's, wall and CPU (below 1× is faster "
                "or cheaper than podman); containerd's CPU split into the daemon's (content store writes, "
                "decompressing, checking the diff_id, writing the files) and ctr's (it downloads the blobs and "
                "streams them into the content store).", "",
                "| compression | layout | `podman pull` | podman CPU | `ctr images pull` | ÷ podman | containerd CPU "
                "(daemon + ctr) | ÷ podman | `docker pull` | ÷ podman | dockerd CPU | ÷ podman |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]

        crossed = []

        def ratio(a, b, ka, kb):
            if a is None or not b:
                return "–"
            cross = multi and from_run.get(ka, 0) != from_run.get(kb, 0)
            if cross:
                crossed.append(1)
            return f"{a / b:.2f}×" + (" †" if cross else "")

        for comp, lay in rows:
            name = f"{comp} {lay}"
            pw, pc = m.get(name + "|podman"), m.get(name + "|podman_cpu")
            cw, cc = m.get(name + "|containerd"), m.get(name + "|containerd_cpu")
            cd, cx = m.get(name + "|containerd_daemon_cpu"), m.get(name + "|containerd_ctr_cpu")
            cold = [(w, c) for w, c in zip(samples.get(f"{name}|docker", []), samples.get(f"{name}|docker_cpu", []))
                    if c >= 0.5]
            dw = statistics.median([w for w, _ in cold]) if cold else None
            dc = statistics.median([c for _, c in cold]) if cold else None
            split = f" ({cd:.1f} + {cx:.1f})" if cd is not None and cx is not None else ""
            pk, dk = name + "|podman", name + "|docker"
            out.append(f"| {comp} | {lay} | {cell(pk, 2)} | {cell(pk + '_cpu', 1)} | "
                       f"{cell(name + '|containerd', 2)} | {ratio(cw, pw, name + '|containerd', pk)} | "
                       f"{cc:.1f} s{split}{mark(name + '|containerd_cpu')} | "
                       f"{ratio(cc, pc, name + '|containerd_cpu', pk + '_cpu')} | "
                       f"{'–' if dw is None else f'{dw:.2f} s{mark(dk)}'} | {ratio(dw, pw, dk, pk)} | "
                       f"{'–' if dc is None else f'{dc:.1f} s{mark(dk)}'} | {ratio(dc, pc, dk + '_cpu', pk + '_cpu')} |")
        if crossed:
            out += ["", "† the two cells come from different runs (different load on a shared machine): compare "
                    "with care."]
    if "run|bytecode" in m:
        bc, nobc = m["run|bytecode"], m["run|no bytecode"]
        out += ["", "The `tests` session in a pulled image (`podman run`, offline, nox reusing the venv): "
                f"with bytecode {bc:.2f} s{mark('run|bytecode')}, without {nobc:.2f} s (its imports compile and write "
                f"the .pyc: {nobc - bc:+.2f} s a job)."]
    return "\n".join(out) + "\n"

if __name__ == "__main__":
    main()
