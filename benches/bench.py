#!/usr/bin/env python3
"""venvimg benchmarks (issue #7); run through benches/run.sh, which sets up the test
environment and the binary. Python 3 standard library only.

Sections (each contender run N times, interleaved round by round so that the noise of a
shared machine falls on every contender alike; tables show medians):

  jobstart  podman run -> session passed, for tests/fixtures/sample and
            tests/fixtures/bigstack: cold (nox installs online in the base image), .nox
            restored from a tar.gz / tar.zst inside the container (the actions/cache
            pattern, extraction included), venvimg job image (podman rmi first, then
            podman pull + podman run offline).
  hit       venvimg build when every session hits, 1 / 5 / 20 sessions: wall time and
            the HTTP requests the registry saw (its access log).
  miss      venvimg build -v of bigstack into an empty registry, gzip and zstd: plan /
            builder / pack / push from the timestamps of its output lines, CPU and peak
            RSS sampled from /proc; tar|gzip -6, tar|zstd -3 on the same tree; skopeo copy
            of the same image (venvimg's --output oci:DIR) into an empty registry; layer
            sizes with and without bytecode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RESULTS = ROOT / "benches" / "results"
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
TAR_DET = "tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner"
ENVDIR = "/opt/nox"
# miss-path variants: venvimg's default layering (per-distribution) with gzip and zstd,
# and gzip in one layer
MISS_VARIANTS = ("gzip", "gzip_single", "zstd")
MISS_LABELS = {"gzip": "gzip, per-distribution layers (default)", "gzip_single": "gzip, `layers: single`",
               "zstd": "zstd, per-distribution layers (default)"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(1)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------
# running things


class Result:
    def __init__(self, cmd, rc, out, err, wall, cpu):
        self.cmd, self.rc, self.out, self.err, self.wall, self.cpu = cmd, rc, out, err, wall, cpu

    def tail(self, n=25):
        text = (self.out or "") + (self.err or "")
        return "\n".join(text.splitlines()[-n:])


def run(cmd, *, cwd=None, env=None, check=True, shell=False, timeout=1800) -> Result:
    """Run to completion; wall time and the CPU time (user+sys) of the reaped children."""
    argv = ["bash", "-o", "pipefail", "-c", cmd] if shell else [str(c) for c in cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r = Result(cmd, p.returncode, p.stdout, p.stderr, wall, cpu)
    if check and p.returncode != 0:
        die(f"command failed (exit {p.returncode}): {cmd if shell else ' '.join(argv)}\n{r.tail()}")
    return r


def proc_children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def proc_sample(pid: int):
    """(VmHWM bytes, VmRSS bytes, cpu seconds) of one process, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    hwm = rss = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return hwm, rss, cpu


def run_monitored(cmd, *, cwd=None, env=None, child_of_time=True):
    """Run CMD (normally `/usr/bin/time -v venvimg ...`), timestamping each stderr line as
    it arrives and sampling venvimg's own VmHWM / CPU from /proc every 20 ms. Returns
    (rc, stdout, [(t, line, (hwm, rss, cpu))], final sample)."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    state = {"pid": None, "sample": (0, 0, 0.0), "done": False}
    lines = []
    out_chunks = []

    def poll():
        while not state["done"]:
            if state["pid"] is None:
                kids = proc_children(p.pid) if child_of_time else [p.pid]
                if kids:
                    state["pid"] = kids[0]
            if state["pid"] is not None:
                s = proc_sample(state["pid"])
                if s is not None and s[0] > 0:
                    state["sample"] = s
            time.sleep(0.02)

    def read_out():
        out_chunks.append(p.stdout.read())

    threads = [threading.Thread(target=poll, daemon=True), threading.Thread(target=read_out, daemon=True)]
    for t in threads:
        t.start()
    for line in p.stderr:
        lines.append((time.monotonic() - t0, line.rstrip("\n"), state["sample"]))
    rc = p.wait()
    end = time.monotonic() - t0
    state["done"] = True
    for t in threads:
        t.join(timeout=5)
    lines.append((end, "<exit>", state["sample"]))
    return rc, "".join(out_chunks), lines, state["sample"]


# --------------------------------------------------------------------------------------
# registries: our own docker-registry processes, access log on (to count requests)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Registry:
    def __init__(self, state: Path, name: str, fresh: bool):
        self.dir = state / "registries" / name
        self.fresh = fresh
        self.proc = None
        self.port = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def start(self) -> "Registry":
        if self.fresh and (self.dir / "storage").exists():
            shutil.rmtree(self.dir / "storage")
        (self.dir / "storage").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = self.dir / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log: {level: error, formatter: text, accesslog: {disabled: false}}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.dir / 'storage'}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        out = open(self.access_log, "ab")
        err = open(self.dir / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, start_new_session=True,
                                     env=dict(os.environ, REGISTRY_HTTP_ADDR=f"127.0.0.1:{self.port}"))
        out.close()
        err.close()
        for _ in range(200):
            if self.proc.poll() is not None:
                die(f"docker-registry exited at start; see {self.dir / 'registry.log'}")
            try:
                with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        die(f"docker-registry on {self.addr} did not answer; see {self.dir / 'registry.log'}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.fresh and (self.dir / "storage").exists():
            shutil.rmtree(self.dir / "storage", ignore_errors=True)

    def log_offset(self) -> int:
        return self.access_log.stat().st_size

    def requests_since(self, offset: int) -> dict:
        time.sleep(0.3)  # the access log line is written after the response
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        counts: dict[str, int] = {}
        for m in re.finditer(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP', text):
            method, path = m.group(1), m.group(2)
            kind = ("ping" if path == "/v2/" else "manifest" if "/manifests/" in path
                    else "blob" if "/blobs/" in path else "other")
            counts[f"{method} {kind}"] = counts.get(f"{method} {kind}", 0) + 1
        counts["total"] = sum(counts.values())
        return counts

    def blob_bytes_since(self, offset: int) -> int:
        """Bytes of blobs served (GET .../blobs/... 200) since OFFSET of the access log."""
        time.sleep(0.3)
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        return sum(int(m.group(1)) for m in re.finditer(r'"GET /v2/\S+/blobs/\S+ HTTP/[\d.]+" 200 (\d+)', text))

    def copy_base(self, src: str) -> str:
        dst = f"{self.addr}/base/python-nox:bookworm"
        run(["skopeo", "copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
             f"docker://{src}", f"docker://{dst}"])
        return dst


def http(url, method="GET", accept=None):
    req = urllib.request.Request(url, method=method)
    if accept:
        req.add_header("Accept", accept)
    return urllib.request.urlopen(req, timeout=60)


def manifest_digest(ref: str) -> str | None:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    try:
        with http(f"http://{host}/v2/{repo}/manifests/{tag}", "HEAD", MANIFEST_ACCEPT) as r:
            return r.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError:
        return None


def get_manifest(ref: str) -> dict:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    with http(f"http://{host}/v2/{repo}/manifests/{tag}", accept=MANIFEST_ACCEPT) as r:
        return json.load(r)


def venv_layers(ref: str, base_ref: str) -> list:
    """The layers IMAGE adds on top of its base (one, or one per distribution group)."""
    return get_manifest(ref)["layers"][len(get_manifest(base_ref)["layers"]):]


def fetch_blob(ref: str, digest: str, dest: Path):
    host, rest = ref.split("/", 1)
    repo = rest.rsplit(":", 1)[0]
    with http(f"http://{host}/v2/{repo}/blobs/{digest}") as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


# --------------------------------------------------------------------------------------
# the harness


class Bench:
    def __init__(self, args):
        self.args = args
        self.n = args.n if args.n else (1 if args.quick else 3)
        self.state = Path(args.state)
        self.work = self.state / "work"
        self.tmp = self.state / "tmp"
        self.venvimg = args.venvimg
        env = os.environ
        for k in ["VENVIMG_TEST_BASE", "VENVIMG_TEST_BASE_LOCAL", "VENVIMG_TEST_CA_FILE", "CONTAINERS_CONF"]:
            if not env.get(k):
                die(f"{k} is not set; run through benches/run.sh")
        self.src_base = env["VENVIMG_TEST_BASE"]
        self.base_local = env["VENVIMG_TEST_BASE_LOCAL"]
        self.ca = env["VENVIMG_TEST_CA_FILE"]
        self.env = dict(env, TMPDIR=str(self.tmp))
        # venvimg runs `nox --list`: use nox itself, not a pyenv shim (a CI runner has no
        # shim; the shim alone costs ~0.5 s per call here).
        self.nox_path = shutil.which("nox", path=self.env["PATH"])
        if shutil.which("pyenv"):
            r = run(["pyenv", "which", "nox"], check=False)
            if r.rc == 0 and r.out.strip():
                self.nox_path = r.out.strip()
                self.env["PATH"] = f"{Path(self.nox_path).parent}:{self.env['PATH']}"
        self.registries: list[Registry] = []
        self.results: dict = {"samples": {}, "notes": []}

    # ---- helpers
    def registry(self, name, fresh):
        r = Registry(self.state, name, fresh).start()
        self.registries.append(r)
        return r

    def stop_registry(self, r: Registry):
        r.stop()
        if r in self.registries:
            self.registries.remove(r)

    def sample(self, key, value):
        self.results["samples"].setdefault(key, []).append(value)

    def project(self, name: str, fixture: str, yaml: str) -> Path:
        dest = self.work / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(FIXTURES / fixture, dest, ignore=shutil.ignore_patterns("__pycache__", ".nox", ".venv"))
        (dest / "venvimg.yaml").write_text(yaml)
        return dest

    def venvimg_json(self, args, cwd) -> dict:
        r = run([self.venvimg, *args], cwd=cwd, env=self.env)
        return json.loads(r.out)

    def fresh_src(self, fixture: str) -> Path:
        src = self.work / "run-src"
        if src.exists():
            shutil.rmtree(src)
        shutil.copytree(FIXTURES / fixture, src, ignore=shutil.ignore_patterns("__pycache__", ".nox", ".venv"))
        return src

    # ---- main registry (persistent: job images and the hit-path images survive runs)
    def setup(self):
        for d in (self.work, self.tmp):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        self.private_storage()
        self.main = self.registry("main", fresh=False)
        self.main_base = self.main.copy_base(self.src_base)
        want = os.environ.get("VENVIMG_TEST_BASE_DIGEST")
        got = manifest_digest(self.main_base)
        if want and got != want:
            die(f"base copied with another digest ({got} != {want})")
        log(f"bench registry {self.main.addr} (storage {self.main.dir / 'storage'}), base {self.main_base}")
        # The base in the private store, pulled from the bench registry (as a runner that
        # runs this base would have it); cold and tarball contenders run it by this name.
        run(["podman", "pull", "-q", "--tls-verify=false", self.main_base], env=self.env)
        self.base_local = self.main_base
        r = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], env=self.env)
        for name in r.out.split():
            if re.match(r"^127\.0\.0\.1:\d+/bench/", name):
                run(["podman", "rmi", "-f", name], check=False, env=self.env)

    def private_storage(self):
        """podman storage of our own: the machine's store is shared with other users whose
        images may hold layers with our diff_ids (venvimg layers are reproducible), which
        turns a pull into a no-op; and its blob-info cache lives in the graph root."""
        conf = self.state / "podman" / "storage.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        driver = "overlay"
        shared = os.environ.get("CONTAINERS_STORAGE_CONF")
        if shared and "vfs" in Path(shared).read_text():
            driver = "vfs"
        conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{self.state / "podman" / "graph"}"\n'
                        f'runroot = "{self.state / "podman" / "run"}"\n')
        self.env["CONTAINERS_STORAGE_CONF"] = str(conf)

    def teardown(self):
        for r in list(self.registries):
            r.stop()
        self.registries.clear()

    # ---- 1. job start ------------------------------------------------------------------
    def jobstart_image(self, name: str, compression: str, layers: str = "single") -> dict:
        yaml = (f"repository: {self.main.addr}/bench/{name}\nbase: {self.main_base}\n"
                f"envdir: /opt/nox\nworkdir: /src\nsessions: [tests]\ncompression: {compression}\n"
                f"layers: {layers}\n")
        proj = self.project(f"{name}-jobimage-{compression}-{layers}", name, yaml)
        log(f"{name}: venvimg build, {compression} {layers} (a hit when a previous run pushed it)")
        res = self.venvimg_json(["build", "--build-ca", self.ca, "--json", "-q"], proj)
        s = next(x for x in res["sessions"] if x["session"] == "tests")
        log(f"{name}: {s['image']} ({s['outcome']}, layer {s['layer_size'] / 1e6:.1f} MB)")
        return s

    def jobstart_inputs(self, name: str) -> dict:
        s = self.jobstart_image(name, "gzip")
        image = s["image"]
        # The .nox tarballs hold exactly the venv of the job image (same bytes, bytecode
        # included): only the delivery differs.
        envroot = self.work / f"{name}-envroot"
        envroot.mkdir()
        blob = self.work / f"{name}-layer.blob"
        for layer in venv_layers(image, self.main_base):
            fetch_blob(image, layer["digest"], blob)
            zflag = "--zstd" if "zstd" in layer["mediaType"] else "-z"
            run(["tar", zflag, "-xf", blob, "-C", envroot])
            blob.unlink()
        nox_dir = envroot / ENVDIR.lstrip("/")
        tgz = self.work / f"{name}-nox.tar.gz"
        tzst = self.work / f"{name}-nox.tar.zst"
        run(f"tar -C {nox_dir} -cf - tests | gzip -6 > {tgz}", shell=True)
        run(f"tar -C {nox_dir} -cf - tests | zstd -q -T0 -3 > {tzst}", shell=True)
        shutil.rmtree(envroot)
        info = {"image": image, "outcome": s["outcome"], "layer_bytes": s["layer_size"],
                "tar_gz_bytes": tgz.stat().st_size, "tar_zst_bytes": tzst.stat().st_size,
                "tgz": str(tgz), "tzst": str(tzst)}
        log(f"{name}: image {image} ({s['outcome']}), layer {s['layer_size'] / 1e6:.1f} MB, "
            f"tar.gz {info['tar_gz_bytes'] / 1e6:.1f} MB, tar.zst {info['tar_zst_bytes'] / 1e6:.1f} MB")
        return info

    def podman_session(self, name, label, argv, expect_reuse):
        r = run(argv, check=False, env=self.env)
        text = r.out + r.err
        ok = r.rc == 0 and re.search(r"\d+ passed", text)
        if expect_reuse:
            ok = ok and "Reusing existing virtual environment" in text and "Creating virtual environment" not in text
        if not ok:
            die(f"{name} {label}: the session did not pass as expected (exit {r.rc})\n{r.tail(30)}")
        return r.wall

    def jobstart_round(self, name: str, inp: dict, rep: int):
        """One run of every contender; the order rotates with REP, so that no contender
        always follows the one that just deleted a 30 000-file tree (creating files right
        after a mass delete costs more on ext4: see benches/README.md)."""
        common = ["podman", "run", "--rm", "-w", "/src"]
        reuse = ["nox", "--envdir", ENVDIR, "--reuse-venv=always", "--no-install", "-s", "tests"]

        def cold():
            src = self.fresh_src(name)
            t = self.podman_session(name, "cold", common + [
                "-v", f"{src}:/src", "-v", f"{self.ca}:/etc/ssl/certs/ca-certificates.crt:ro",
                "-e", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                self.base_local, "nox", "--envdir", ENVDIR, "-s", "tests"], expect_reuse=False)
            self.sample(f"jobstart.{name}.cold", t)
            log(f"{name}: cold {t:.1f}s")

        def restore(kind, path, flag):
            src = self.fresh_src(name)
            script = (f"mkdir -p {ENVDIR} && tar {flag} -xf /cache/nox.tar -C {ENVDIR} && exec "
                      + " ".join(reuse))
            t = self.podman_session(name, kind, common + [
                "--network", "none", "-e", "UV_OFFLINE=1", "-v", f"{src}:/src",
                "-v", f"{path}:/cache/nox.tar:ro", "-v", "/usr/bin/zstd:/usr/local/bin/zstd:ro",
                self.base_local, "sh", "-ec", script], expect_reuse=True)
            self.sample(f"jobstart.{name}.{kind}", t)
            log(f"{name}: {kind} restore {t:.1f}s")

        def image_run(kind, image, want):
            self.podman_forget(image)
            off = self.main.log_offset()
            pull = run(["podman", "pull", "--tls-verify=false", image], env=self.env)
            pulled = self.main.blob_bytes_since(off)
            if pulled < 0.9 * want:
                self.results["notes"].append(
                    f"{name} {kind}: podman pull fetched only {pulled} bytes of blobs (layers {want}): the "
                    "image was still in local storage, so that pull was not cold")
            src = self.fresh_src(name)
            t_run = self.podman_session(name, kind, common + [
                "--network", "none", "-e", "UV_OFFLINE=1", "-v", f"{src}:/src", image] + reuse, expect_reuse=True)
            self.podman_forget(image)
            self.sample(f"jobstart.{name}.{kind}_pull", pull.wall)
            self.sample(f"jobstart.{name}.{kind}_pull_cpu", pull.cpu)  # podman pulls in-process
            self.sample(f"jobstart.{name}.{kind}_pull_bytes", pulled)
            self.sample(f"jobstart.{name}.{kind}_run", t_run)
            self.sample(f"jobstart.{name}.{kind}_total", pull.wall + t_run)
            log(f"{name}: {kind} pull {pull.wall:.1f}s ({pulled / 1e6:.1f} MB of blobs, podman CPU "
                f"{pull.cpu:.1f}s) + run {t_run:.1f}s")

        contenders = [cold, lambda: restore("tar_gz", inp["tgz"], "-z"),
                      lambda: restore("tar_zst", inp["tzst"], "--zstd")]
        for kind, ikey, lkey in (("venvimg", "image", "layer_bytes"), ("venvimg_zstd", "image_zstd", "layer_bytes_zstd"),
                                 ("venvimg_split", "image_split", "layer_bytes_split")):
            if inp.get(ikey):
                contenders.append(lambda k=kind, i=inp[ikey], w=inp[lkey]: image_run(k, i, w))
        r = rep % len(contenders)
        for c in contenders[r:] + contenders[:r]:
            c()

    def podman_forget(self, image: str):
        """Remove IMAGE from local storage, with the names earlier bench runs gave the same
        image (other ports of the bench registry), so that the pull really pulls."""
        r = run(["podman", "image", "inspect", "--format", "{{.Id}}", image], check=False, env=self.env)
        run(["podman", "rmi", "-f", image], check=False, env=self.env)
        if r.rc != 0:
            return
        image_id = r.out.strip()
        r = run(["podman", "image", "inspect", "--format", "{{json .RepoTags}}", image_id], check=False, env=self.env)
        if r.rc != 0:
            return
        for name in json.loads(r.out.strip() or "[]") or []:
            if re.match(r"^127\.0\.0\.1:\d+/bench/", name):
                run(["podman", "rmi", name], check=False, env=self.env)

    def section_jobstart(self):
        names = ["sample", "bigstack"]
        inputs = {n: self.jobstart_inputs(n) for n in names}
        z = self.jobstart_image("bigstack", "zstd")
        inputs["bigstack"]["image_zstd"] = z["image"]
        inputs["bigstack"]["layer_bytes_zstd"] = z["layer_size"]
        if not self.args.no_split:
            sp = self.jobstart_image("bigstack", "gzip", "per-distribution")
            inputs["bigstack"]["image_split"] = sp["image"]
            inputs["bigstack"]["layer_bytes_split"] = sp["layer_size"]
        self.results["jobstart_inputs"] = {n: {k: v for k, v in i.items() if k not in ("tgz", "tzst")}
                                           for n, i in inputs.items()}
        for rep in range(self.n):
            log(f"job start: round {rep + 1}/{self.n}")
            for n in names:
                self.jobstart_round(n, inputs[n], rep)

    # ---- 2. hit path -------------------------------------------------------------------
    def section_hit(self):
        proj = self.hitpath_project()
        counts = (1, 5, 20)
        for c in counts:
            names = ", ".join(f"s{i:02d}" for i in range(1, c + 1))
            (proj / f"venvimg-{c}.yaml").write_text(
                f"repository: {self.main.addr}/bench/hitpath\nbase: {self.main_base}\n"
                f"inputs: [noxfile.py]\nsessions: [{names}]\n")
        # Build once (a no-op when a previous run pushed them), then one untimed run per
        # config (pushes its all-sessions image the first time).
        log("hit path: building the 20 sessions (only the first time)")
        t0 = time.monotonic()
        res = self.venvimg_json(["--config", "venvimg-20.yaml", "build", "--build-ca", self.ca, "--json", "-q"], proj)
        built = sum(1 for s in res["sessions"] if s["outcome"] == "built")
        log(f"hit path: {built} built in {time.monotonic() - t0:.0f}s")
        for c in counts:
            self.venvimg_json(["--config", f"venvimg-{c}.yaml", "build", "--json", "-q"], proj)
        reqs = {}
        for rep in range(max(self.n, 3)):  # cheap: at least 3 rounds
            for c in counts:
                off = self.main.log_offset()
                r = run([self.venvimg, "--config", f"venvimg-{c}.yaml", "build", "--json", "-q"], cwd=proj, env=self.env)
                doc = json.loads(r.out)
                if any(s["outcome"] != "hit" for s in doc["sessions"]) or len(doc["sessions"]) != c:
                    die(f"hit path: expected {c} hits, got {[s['outcome'] for s in doc['sessions']]}")
                self.sample(f"hit.{c}.wall", r.wall)
                self.sample(f"hit.{c}.cpu", r.cpu)
                reqs[c] = self.main.requests_since(off)
            # what venvimg spawns to list the sessions, alone
            r = run([self.nox_path, "--list", "--json", "-k", ""], cwd=proj, env=self.env)
            self.sample("hit.nox_list.wall", r.wall)
            off = self.main.log_offset()
            r = run([self.venvimg, "--config", "venvimg-20.yaml", "plan", "--json", "-q"], cwd=proj, env=self.env)
            self.sample("hit.plan20.wall", r.wall)
            reqs["plan20"] = self.main.requests_since(off)
        self.results["hit_requests"] = {str(k): v for k, v in reqs.items()}
        log("hit path: " + ", ".join(f"{c}: {median(self.results['samples'][f'hit.{c}.wall']):.2f}s "
                                     f"{reqs[c]['total']} requests" for c in counts))

    def hitpath_project(self) -> Path:
        proj = self.work / "hitpath"
        if not proj.exists():
            proj.mkdir()
            (proj / "noxfile.py").write_text(hitpath_noxfile())
            names = ", ".join(f"s{i:02d}" for i in range(1, 21))
            (proj / "venvimg-20.yaml").write_text(
                f"repository: {self.main.addr}/bench/hitpath\nbase: {self.main_base}\n"
                f"inputs: [noxfile.py]\nsessions: [{names}]\n")
        return proj

    def section_parallel(self):
        """20 small misses (the hit path's sessions, --force, nothing pushed): one at a
        time (--jobs 1) against venvimg's default, side by side in each round."""
        proj = self.hitpath_project()
        for rep in range(self.n):
            log(f"parallel misses: round {rep + 1}/{self.n}")
            for label, extra in (("serial", ["--jobs", "1"]), ("auto", []), ("j4", ["--jobs", "4"])):
                busy0 = machine_busy()
                r = run([self.venvimg, "--config", "venvimg-20.yaml", "build", "--force", "--no-push",
                         "--build-ca", self.ca, "--json", "-q", *extra], cwd=proj, env=self.env)
                # The build containers' processes are not venvimg's children: only the
                # machine's counters see the CPU the builds really took.
                self.sample(f"parallel.{label}.machine_cpu", machine_busy() - busy0)
                doc = json.loads(r.out)
                if [s["outcome"] for s in doc["sessions"]] != ["built"] * 20:
                    die(f"parallel ({label}): expected 20 builds, got {[s['outcome'] for s in doc['sessions']]}")
                self.sample(f"parallel.{label}.wall", r.wall)
                self.sample(f"parallel.{label}.cpu", r.cpu)
        log("parallel misses: serial %.0fs, default %.0fs, 4 at a time %.0fs" % tuple(
            median(self.results["samples"][f"parallel.{k}.wall"]) for k in ("serial", "auto", "j4")))

    # ---- 3-5. miss path, pack, push, memory, sizes -------------------------------------
    def miss_run(self, rep: int, comp: str) -> dict:
        """COMP is a variant: gzip / zstd (venvimg's default layering) or gzip_single."""
        reg = self.registry(f"miss-{comp}", fresh=True)
        base = reg.copy_base(self.main_base)
        compression = comp.split("_")[0]
        layers = "layers: single\n" if comp.endswith("_single") else ""
        proj = self.project(f"bigstack-miss-{comp}", "bigstack",
                            f"repository: {reg.addr}/bench/bigstack\nbase: {base}\n"
                            f"envdir: /opt/nox\nworkdir: /src\nsessions: [tests]\ncompression: {compression}\n"
                            + layers)
        oci = self.work / f"oci-{comp}"
        extra = []
        if rep == 0:
            if oci.exists():
                shutil.rmtree(oci)
            extra = ["--output", f"oci:{oci}"]
        cmd = ["/usr/bin/time", "-v", self.venvimg, "build", "-v", "--keep", "--build-ca", self.ca, "--json", *extra]
        rc, out, lines, final = run_monitored(cmd, cwd=proj, env=self.env)
        if rc != 0:
            die(f"miss ({comp}): venvimg build failed (exit {rc})\n" + "\n".join(l for _, l, _ in lines[-30:]))
        self.stop_registry(reg)
        doc = json.loads(out)
        sess = doc["sessions"][0]

        def at(pattern):
            for t, line, smp in lines:
                text = re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line)
                m = re.search(pattern, text)
                if m:
                    return t, m, smp
            die(f"miss ({comp}): no line matching {pattern!r} in venvimg -v output")

        t_build, _, s_plan = at(r"^tests: building with")
        t_compile, _, _ = at(r"venvimg: compiling bytecode")
        t_py, _, _ = at(r"venvimg: python \d")
        t_built, m_built, s_built = at(r"^tests: venv built in ([\d.]+)s")
        t_packed, m_packed, s_packed = at(r"^tests: packed (\S+ \S+) → (\S+ \S+) (?:in (\d+) layer\(s\) )?in ([\d.]+)s$")
        t_pushed, _, s_pushed = at(r"^pushed \S+:tests-")
        t_upl, m_upl, s_upl = at(r"^uploaded (\d+) blob")
        t_end = lines[-1][0]
        keep = at(r"keeping build folders in (\S+)")[1].group(1)
        maxrss = None
        for _, line, _ in lines:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", line)
            if m:
                maxrss = int(m.group(1)) * 1024
        d = {
            "plan": t_build,
            "builder": t_built - t_build,
            "builder_install": t_compile - t_build,
            "builder_compile": t_py - t_compile,
            "pack": t_packed - t_built,
            "pack_reported": float(m_packed.group(4)),
            "layers": int(m_packed.group(3) or 1),
            "pack_cpu": s_packed[2] - s_built[2],
            "push": t_pushed - t_packed,
            "push_cpu": s_pushed[2] - s_packed[2],
            "push_all": t_upl - t_pushed,
            "to_pushed": t_upl,
            "total": t_end,
            "uncompressed_bytes": parse_human(m_packed.group(1)),
            "layer_bytes": sess["layer_size"],
            "rss_after_build": s_built[0],
            "rss_after_pack": s_packed[0],
            "rss_after_push": s_upl[0],
            "rss_peak": final[0],
            "time_v_maxrss": maxrss,
            "manifest_digest": doc["all"]["digest"],
        }
        for k, v in d.items():
            if isinstance(v, (int, float)) and k != "manifest_digest":
                self.sample(f"miss.{comp}.{k}", v)
        log(f"miss {comp}: builder {d['builder']:.1f}s, pack {d['pack']:.1f}s (cpu {d['pack_cpu']:.1f}s), "
            f"push {d['push']:.2f}s, total {d['total']:.1f}s, peak RSS {d['rss_peak'] / 2**20:.0f} MiB")
        d["keep"] = keep
        return d

    def skopeo_run(self, comp: str, want_digest: str):
        oci = self.work / f"oci-{comp}"
        reg = self.registry(f"skopeo-{comp}", fresh=True)
        reg.copy_base(self.main_base)  # the same starting state venvimg had: base present
        dst = f"{reg.addr}/bench/bigstack:skopeo"
        r = run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{oci}", f"docker://{dst}"])
        got = manifest_digest(dst)
        self.stop_registry(reg)
        self.sample(f"push.{comp}.skopeo", r.wall)
        self.sample(f"push.{comp}.skopeo_cpu", r.cpu)
        same = got == want_digest
        self.results.setdefault("skopeo_same_manifest", {})[comp] = same
        log(f"skopeo copy ({comp}): {r.wall:.2f}s, same manifest digest as venvimg: {same}")

    def pack_contenders(self, tree: Path):
        """tar | gzip -6, tar | zstd -3 (one thread), tar | zstd -3 -T0 on TREE/tests."""
        out = self.work / "packout"
        for label, comp in (("tar_gzip6", "gzip -6"), ("tar_zstd3", "zstd -q -3"), ("tar_zstd3_T0", "zstd -q -3 -T0")):
            r = run(f"cd {tree} && {TAR_DET} -cf - tests | {comp} > {out}", shell=True)
            self.sample(f"pack.{label}.wall", r.wall)
            self.sample(f"pack.{label}.cpu", r.cpu)
            self.results.setdefault("sizes", {})[f"{label}.with_pyc"] = out.stat().st_size
            log(f"{label}: {r.wall:.1f}s (cpu {r.cpu:.1f}s)")
        out.unlink()

    def sizes_without_bytecode(self, tree: Path):
        copy = self.work / "nopyc"
        if copy.exists():
            shutil.rmtree(copy)
        run(["cp", "-a", tree, copy])
        with_tar = int(run(f"cd {tree} && {TAR_DET} -cf - tests | wc -c", shell=True).out)
        run(["find", copy, "-name", "__pycache__", "-type", "d", "-prune", "-exec", "rm", "-rf", "{}", "+"])
        sizes = self.results.setdefault("sizes", {})
        sizes["tar.with_pyc"] = with_tar
        sizes["tar.without_pyc"] = int(run(f"cd {copy} && {TAR_DET} -cf - tests | wc -c", shell=True).out)
        sizes["tar_gzip6.without_pyc"] = int(run(f"cd {copy} && {TAR_DET} -cf - tests | gzip -6 | wc -c", shell=True).out)
        sizes["tar_zstd3.without_pyc"] = int(run(f"cd {copy} && {TAR_DET} -cf - tests | zstd -q -3 | wc -c", shell=True).out)
        shutil.rmtree(copy)

    def section_miss(self):
        tree = None
        digests = {}
        for rep in range(self.n):
            log(f"miss path: round {rep + 1}/{self.n}")
            for comp in MISS_VARIANTS:
                d = self.miss_run(rep, comp)
                keep = Path(d["keep"])
                if rep == 0:
                    digests[comp] = d["manifest_digest"]
                    self.results.setdefault("sizes", {})[f"venvimg_{comp}.with_pyc"] = d["layer_bytes"]
                    if comp == MISS_VARIANTS[0]:
                        tree = self.work / "bigstack-tree"
                        if tree.exists():
                            shutil.rmtree(tree)
                        shutil.move(str(keep / "tests" / "envdir"), tree)
                shutil.rmtree(keep, ignore_errors=True)
                self.skopeo_run(comp, digests[comp])
            self.pack_contenders(tree)
        self.sizes_without_bytecode(tree)
        shutil.rmtree(tree)

    # ---- machine, report ---------------------------------------------------------------
    def machine(self) -> dict:
        return machine_facts(self.venvimg, self.load_start, {
            "skopeo": "skopeo --version",
            "registry": "docker-registry --version",
            "nox": f"{self.nox_path} --version 2>&1 | tail -n1",
            "gzip": "gzip --version | head -n1",
            "zstd": "zstd --version",
        }) | {"repetitions": self.n}

    def main(self):
        self.load_start = Path("/proc/loadavg").read_text().split()[:3]
        sections = self.args.only.split(",") if self.args.only else ["jobstart", "hit", "parallel", "miss"]
        t0 = time.monotonic()
        try:
            self.setup()
            for s in sections:
                log(f"== {s}")
                getattr(self, f"section_{s}")()
        finally:
            self.teardown()
        self.results["machine"] = self.machine()
        self.results["sections"] = sections
        self.results["only"] = self.args.only
        self.results["duration_s"] = round(time.monotonic() - t0, 1)
        self.results["medians"] = {k: median(v) for k, v in self.results["samples"].items()}
        md = report(self.results)
        RESULTS.mkdir(parents=True, exist_ok=True)
        # A run of some sections does not replace the full report: it has its own files.
        stem = f"only-{'-'.join(sections)}" if self.args.only else "latest"
        (RESULTS / f"{stem}.json").write_text(json.dumps(self.results, indent=2, sort_keys=True) + "\n")
        (RESULTS / f"{stem}.md").write_text(md)
        print(md)
        log(f"done in {self.results['duration_s']:.0f}s; wrote {RESULTS / stem}.md and {stem}.json")


def machine_facts(venvimg, load_start, extra: dict | None = None) -> dict:
    """What a report says of the machine and the tools (and EXTRA: name → shell command)."""
    def sh(cmd):
        r = run(cmd, shell=True, check=False)
        return (r.out or r.err).strip()

    commands = {
        "nproc": "nproc",
        "memory": "free -h | awk '/^Mem:/{print $2\" total, \"$7\" available\"}'",
        "free_h": "free -h",
        "kernel": "uname -sr",
        "os": ". /etc/os-release && echo $PRETTY_NAME",
        "venvimg": f"{venvimg} --version",
        "podman": "podman --version",
        "uv": "uv --version",
        **(extra or {}),
    }
    facts = {name: sh(cmd) for name, cmd in commands.items()}
    return facts | {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip(),
        "loadavg_start": load_start,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD") + (
            " (+ uncommitted changes)" if sh(f"git -C {ROOT} status --porcelain -- src Cargo.toml Cargo.lock") else ""),
    }


def machine_busy() -> float:
    """CPU seconds every process of the machine has used (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def hitpath_noxfile(n: int = 20) -> str:
    body = ['"""20 trivial sessions sharing one tiny install (generated by benches/bench.py)."""',
            "", "import nox", "", 'nox.options.default_venv_backend = "uv"', ""]
    for i in range(1, n + 1):
        body += ["", '@nox.session(python="3.11", venv_backend="uv")', f"def s{i:02d}(session):",
                 '    session.install("packaging==25.0")',
                 '    session.run("python", "-c", "import packaging")', ""]
    return "\n".join(body)


def parse_human(s: str) -> int:
    num, unit = s.split()
    mult = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
    return int(float(num) * mult)


# --------------------------------------------------------------------------------------
# report


def fmt_s(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f} s"


def fmt_mb(x):
    return "–" if x is None else f"{x / 1e6:.1f} MB"


def ratio(a, b, digits=1):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}×"


def report(res: dict) -> str:
    m = res["medians"]
    mach = res["machine"]
    get = m.get
    out = []
    out.append(f"Measured {mach['date']} on {mach['os']}, kernel {mach['kernel']}, {mach['nproc']} cores "
               f"({mach['cpu']}), {mach['memory']} memory; load average {' '.join(mach['loadavg_start'])} at "
               f"start, {' '.join(mach['loadavg_end'])} at end (a shared machine). {mach['venvimg']} "
               f"({mach['commit']}), {mach['podman']}, {mach['skopeo']}, {mach['uv']}, nox {mach['nox']}. "
               f"Medians of {mach['repetitions']} run(s), contenders interleaved round by round; "
               f"`bash benches/run.sh{'' if mach['repetitions'] == 3 else ' -n ' + str(mach['repetitions'])}"
               f"{' --only ' + res['only'] if res.get('only') else ''}` "
               f"reproduces it ({res['duration_s'] / 60:.0f} min).")
    out.append("")
    targets = []

    if "jobstart" in res["sections"]:
        out.append("**Job start** — from `podman run` until the `tests` session passed. The base image is on "
                   "the runner for every contender; the `.nox` tarball is on local disk (its download, "
                   "which actions/cache pays, is not counted); the venvimg image is removed first and pulled "
                   "from the loopback registry (only its venv layer travels: the base layer is reused). "
                   "×: how many times longer than venvimg's pull + run (gzip image)")
        out.append("")
        out.append("| contender | sample | × | bigstack | × | bigstack, before the tests can start¹ |")
        out.append("|---|---|---|---|---|---|")
        ref = {n: get(f"jobstart.{n}.venvimg_total") for n in ("sample", "bigstack")}
        floor = get("jobstart.bigstack.venvimg_run")
        rows = [
            ("cold: nox creates the venv, installs online", "cold"),
            ("`.nox` restored from tar.gz (extract + nox reuse)", "tar_gz"),
            ("`.nox` restored from tar.zst (extract + nox reuse)", "tar_zst"),
            ("venvimg image (gzip): `podman pull`", "venvimg_pull"),
            ("venvimg image (gzip): `podman run`, image cached", "venvimg_run"),
            ("**venvimg image (gzip): pull + run**", "venvimg_total"),
            ("venvimg image (zstd): `podman pull`", "venvimg_zstd_pull"),
            ("venvimg image (zstd): `podman run`, image cached", "venvimg_zstd_run"),
            ("**venvimg image (zstd): pull + run**", "venvimg_zstd_total"),
            ("venvimg image (gzip, `layers: per-distribution`): `podman pull`", "venvimg_split_pull"),
            ("venvimg image (gzip, `layers: per-distribution`): `podman run`, image cached", "venvimg_split_run"),
            ("**venvimg image (gzip, `layers: per-distribution`): pull + run**", "venvimg_split_total"),
        ]
        for label, key in rows:
            sv, bv = get(f"jobstart.sample.{key}"), get(f"jobstart.bigstack.{key}")
            if key.endswith("_pull"):
                setup = bv
            elif key.endswith("_run"):
                setup = 0.0 if bv is not None else None
            elif key.endswith("_total"):
                setup = get(f"jobstart.bigstack.{key[:-6]}_pull")
            else:
                setup = None if bv is None or floor is None else bv - floor
            out.append(f"| {label} | {fmt_s(sv)} | {ratio(sv, ref['sample'])} | {fmt_s(bv)} | "
                       f"{ratio(bv, ref['bigstack'])} | {fmt_s(setup)} |")
        inp = res.get("jobstart_inputs", {})
        out.append("")
        out.append("¹ the contender's time minus the same session run in a ready venvimg container "
                   f"({fmt_s(floor)}: container start, nox, the imports and the tests themselves, which no "
                   "contender can avoid). Delivered bytes: " + "; ".join(
            f"{n}: image layer {fmt_mb(i['layer_bytes'])}, tar.gz {fmt_mb(i['tar_gz_bytes'])}, "
            f"tar.zst {fmt_mb(i['tar_zst_bytes'])}" for n, i in inp.items())
            + "; bigstack pulls (blobs the registry served; podman's CPU, user + sys): " + ", ".join(
                f"{label} {fmt_mb(get(f'jobstart.bigstack.{k}_pull_bytes'))} in {fmt_s(get(f'jobstart.bigstack.{k}_pull'))}"
                f" (CPU {fmt_s(get(f'jobstart.bigstack.{k}_pull_cpu'))})"
                for label, k in (("gzip", "venvimg"), ("zstd", "venvimg_zstd"), ("per-distribution gzip", "venvimg_split"))
                if get(f"jobstart.bigstack.{k}_pull") is not None) + ".")
        out.append("")
        b = "jobstart.bigstack."
        for comp, key in (("gzip", "venvimg_total"), ("zstd", "venvimg_zstd_total"),
                          ("gzip per-distribution", "venvimg_split_total")):
            if get(b + key) is None:
                continue
            tot = get(b + key)
            targets.append((f"job start, bigstack: cold ÷ venvimg {comp} (pull + run)", "≥ 10×",
                            ratio(get(b + "cold"), tot), ok(get(b + "cold"), tot, 10)))
            for t in ("tar_zst", "tar_gz"):
                targets.append((f"job start, bigstack: {t.replace('_', '.')} restore ÷ venvimg {comp} (pull + run)",
                                "≥ 2×", ratio(get(b + t), tot), ok(get(b + t), tot, 2)))

    if "hit" in res["sections"]:
        rq = res.get("hit_requests", {})
        out.append("**Hit path** — `venvimg build` when every session hits (loopback registry; requests from its access log)")
        out.append("")
        out.append("| sessions | wall | CPU (venvimg + nox --list) | requests | of which |")
        out.append("|---|---|---|---|---|")
        for c in ("1", "5", "20"):
            r = rq.get(c, {})
            detail = ", ".join(f"{v} {k}" for k, v in sorted(r.items()) if k != "total")
            out.append(f"| {c} | {fmt_s(get(f'hit.{c}.wall'), 2)} | {fmt_s(get(f'hit.{c}.cpu'), 2)} | "
                       f"{r.get('total', '–')} | {detail} |")
        r = rq.get("plan20", {})
        out.append(f"| 20, `venvimg plan` | {fmt_s(get('hit.plan20.wall'), 2)} | | {r.get('total', '–')} | "
                   + ", ".join(f"{v} {k}" for k, v in sorted(r.items()) if k != "total") + " |")
        out.append(f"| `nox --list --json` alone (venvimg runs it once) | {fmt_s(get('hit.nox_list.wall'), 2)} | | | |")
        out.append("")
        targets.append(("hit path, 20 sessions", "< 0.5 s", fmt_s(get("hit.20.wall"), 2),
                        None if get("hit.20.wall") is None else get("hit.20.wall") < 0.5))

    if "parallel" in res.get("sections", []):
        ser, par = get("parallel.serial.wall"), get("parallel.auto.wall")
        out.append(f"**Parallel misses** — `venvimg build --force --no-push` of the hit path's 20 small sessions "
                   f"({res.get('machine', {}).get('nproc', '?')} cores)")
        out.append("")
        out.append("| sessions at a time | wall | CPU (venvimg + podman clients) | the machine's CPU (all processes) |")
        out.append("|---|---|---|---|")
        for label, key in (("1 (`--jobs 1`)", "serial"), ("default (two per core, as memory allows)", "auto"),
                           ("4 (`--jobs 4`)", "j4")):
            out.append(f"| {label} | {fmt_s(get(f'parallel.{key}.wall'))} | {fmt_s(get(f'parallel.{key}.cpu'))} | "
                       f"{fmt_s(get(f'parallel.{key}.machine_cpu'))} |")
        out.append("")
        mc = get("parallel.serial.machine_cpu")
        if mc is not None and ser:
            cores = res.get("machine", {}).get("nproc") or os.cpu_count()
            out.append(f"One at a time, the builds kept the machine busy for {mc:.1f} CPU-seconds in {ser:.1f} s: "
                       f"on {cores} cores no schedule finishes them in less than {mc / int(cores):.1f} s "
                       f"({mc / int(cores) / ser:.2f}× the serial wall). The machine's CPU includes its other "
                       "users' (a shared machine).")
            out.append("")
        targets.append(("20 small misses: default ÷ one at a time", "≤ 0.6×", ratio(par, ser, 2),
                        None if par is None or ser is None else par <= 0.6 * ser))

    if "miss" in res["sections"]:
        out.append("**Miss path** — `venvimg build` of bigstack into an empty registry (base already there), "
                   "phases from the arrival times of its `-v` lines")
        out.append("")
        out.append("| variant | layers | plan | builder (nox install + compileall) | pack | push | all-sessions tag | "
                   "total | compressed |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        variants = [v for v in MISS_VARIANTS if get(f"miss.{v}.total") is not None]
        for c in variants:
            p = f"miss.{c}."
            nl = get(p + "layers")
            out.append(f"| {MISS_LABELS[c]} | {'–' if nl is None else int(nl)} | {fmt_s(get(p + 'plan'))} | "
                       f"{fmt_s(get(p + 'builder'))} "
                       f"({fmt_s(get(p + 'builder_install'))} + {fmt_s(get(p + 'builder_compile'))}) | "
                       f"{fmt_s(get(p + 'pack'))} | {fmt_s(get(p + 'push'), 2)} | {fmt_s(get(p + 'push_all'), 2)} | "
                       f"{fmt_s(get(p + 'total'))} | {fmt_mb(get(p + 'layer_bytes'))} |")
        out.append("")
        unc = get("miss.gzip.uncompressed_bytes") or get("miss.gzip_single.uncompressed_bytes")
        tar_unc = res.get("sizes", {}).get("tar.with_pyc") or unc

        def thr(b, s):
            return "–" if b is None or not s else f"{b / 1e6 / s:.0f} MB/s"

        out.append(f"**Pack** — the bigstack venv ({fmt_mb(tar_unc)} uncompressed tar), wall and CPU (user + sys)")
        out.append("")
        out.append("| packer | wall | CPU | throughput (uncompressed) | output | wall ÷ tar \\| gzip -6 |")
        out.append("|---|---|---|---|---|---|")
        sz = res.get("sizes", {})
        g6 = get("pack.tar_gzip6.wall")
        rows = [(f"venvimg, {MISS_LABELS[c]}", get(f"miss.{c}.pack"), get(f"miss.{c}.pack_cpu"),
                 get(f"miss.{c}.uncompressed_bytes"), sz.get(f"venvimg_{c}.with_pyc")) for c in variants]
        rows += [
            ("`tar --sort=name … \\| gzip -6`", g6, get("pack.tar_gzip6.cpu"), tar_unc, sz.get("tar_gzip6.with_pyc")),
            ("`tar … \\| zstd -3`", get("pack.tar_zstd3.wall"), get("pack.tar_zstd3.cpu"), tar_unc, sz.get("tar_zstd3.with_pyc")),
            ("`tar … \\| zstd -3 -T0`", get("pack.tar_zstd3_T0.wall"), get("pack.tar_zstd3_T0.cpu"), tar_unc,
             sz.get("tar_zstd3_T0.with_pyc")),
        ]
        for label, w, cpu, b, size in rows:
            out.append(f"| {label} | {fmt_s(w)} | {fmt_s(cpu)} | {thr(b, w)} | {fmt_mb(size)} | {ratio(w, g6, 2)} |")
        out.append("")
        out.append("**Push** — the same image into an empty registry that already holds the base "
                   "(venvimg: from its packed files; skopeo: `skopeo copy oci:DIR docker://…` of venvimg's "
                   "`--output oci:DIR`)")
        out.append("")
        out.append("| variant | venvimg push | skopeo copy | venvimg ÷ skopeo | same manifest digest |")
        out.append("|---|---|---|---|---|")
        same = res.get("skopeo_same_manifest", {})
        for c in variants:
            out.append(f"| {MISS_LABELS[c]} | {fmt_s(get(f'miss.{c}.push'), 2)} | {fmt_s(get(f'push.{c}.skopeo'), 2)} | "
                       f"{ratio(get(f'miss.{c}.push'), get(f'push.{c}.skopeo'), 2)} | {same.get(c, '–')} |")
        out.append("")
        out.append("**Memory** — venvimg's own peak RSS (VmHWM sampled every 20 ms) at the end of each phase; "
                   "`/usr/bin/time -v` max RSS (venvimg or its largest child)")
        out.append("")
        out.append("| variant | after build | after pack | after push | peak | /usr/bin/time -v |")
        out.append("|---|---|---|---|---|---|")
        for c in variants:
            p = f"miss.{c}."
            out.append(f"| {MISS_LABELS[c]} | {fmt_mib(get(p + 'rss_after_build'))} | {fmt_mib(get(p + 'rss_after_pack'))} | "
                       f"{fmt_mib(get(p + 'rss_after_push'))} | {fmt_mib(get(p + 'rss_peak'))} | "
                       f"{fmt_mib(get(p + 'time_v_maxrss'))} |")
        out.append("")
        out.append("**Layer size** — bigstack venv (venvimg: all its venv layers together)")
        out.append("")
        out.append("| | uncompressed tar | venvimg gzip, per-distribution | venvimg gzip, single | venvimg zstd, "
                   "per-distribution | tar \\| gzip -6 | tar \\| zstd -3 |")
        out.append("|---|---|---|---|---|---|---|")
        out.append(f"| with bytecode (what venvimg ships) | {fmt_mb(sz.get('tar.with_pyc'))} | "
                   f"{fmt_mb(sz.get('venvimg_gzip.with_pyc'))} | {fmt_mb(sz.get('venvimg_gzip_single.with_pyc'))} | "
                   f"{fmt_mb(sz.get('venvimg_zstd.with_pyc'))} | "
                   f"{fmt_mb(sz.get('tar_gzip6.with_pyc'))} | {fmt_mb(sz.get('tar_zstd3.with_pyc'))} |")
        out.append(f"| without bytecode (`__pycache__` deleted) | {fmt_mb(sz.get('tar.without_pyc'))} | – | – | – | "
                   f"{fmt_mb(sz.get('tar_gzip6.without_pyc'))} | {fmt_mb(sz.get('tar_zstd3.without_pyc'))} |")
        out.append("")
        for c in [v for v in variants if not v.startswith("zstd")]:
            targets.append((f"pack ({MISS_LABELS[c]}): venvimg ÷ `tar | gzip -6`, wall", "≤ 0.6×",
                            ratio(get(f"miss.{c}.pack"), g6, 2), okle(get(f"miss.{c}.pack"), g6, 0.6)))
        for c in variants:
            targets.append((f"push ({MISS_LABELS[c]}): venvimg ÷ `skopeo copy`", "≤ 1.2×",
                            ratio(get(f"miss.{c}.push"), get(f"push.{c}.skopeo"), 2),
                            okle(get(f"miss.{c}.push"), get(f"push.{c}.skopeo"), 1.2)))

    if targets:
        out.append("**Targets (issues #7 and #17)**")
        out.append("")
        out.append("| target | wanted | measured | |")
        out.append("|---|---|---|---|")
        for name, want, got, good in targets:
            out.append(f"| {name} | {want} | {got} | {'met' if good else 'missed' if good is False else '–'} |")
        out.append("")
    for note in res.get("notes", []):
        out.append(f"Note: {note}")
    out += shaped_section()
    return "\n".join(out).rstrip() + "\n"


def shaped_section() -> list:
    """The shaped-link run's report (benches/shaped.sh writes results/shaped.md), carried
    into this one so one page holds every job-start number; shaped.sh re-renders this page
    after writing its own. Read as text: shaped.py imports this module, never the reverse."""
    path = RESULTS / "shaped.md"
    if not path.exists():
        return []
    return ["", "## Shaped link", "",
            "The same job-start contenders with the package index and the registry behind one rate-limited, "
            "delayed link, bytes that crossed it included (`bash benches/shaped.sh`; also "
            "[shaped.md](shaped.md)). It has its own run, so its date and commit are its own:", "",
            path.read_text().rstrip()]


def rerender_latest():
    """Re-render latest.md from latest.json (after shaped.sh wrote new shaped results)."""
    path = RESULTS / "latest.json"
    if path.exists():
        (RESULTS / "latest.md").write_text(report(json.loads(path.read_text())))


def fmt_mib(x):
    return "–" if x is None else f"{x / 2**20:.0f} MiB"


def ok(a, b, at_least):
    return None if a is None or b is None or b == 0 else a / b >= at_least


def okle(a, b, at_most):
    return None if a is None or b is None or b == 0 else a / b <= at_most


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venvimg", help="the venvimg binary under test (benches/run.sh passes it)")
    ap.add_argument("--state", help="state folder: registry storage, work folders (benches/run.sh passes it)")
    ap.add_argument("--quick", action="store_true", help="every contender once")
    ap.add_argument("-n", type=int, default=0, help="repetitions (default 3, --quick 1)")
    ap.add_argument("--only", default="", help="comma-separated sections: jobstart,hit,parallel,miss")
    ap.add_argument("--no-split", action="store_true",
                    help="skip the `layers: per-distribution` job image (for venvimg builds without it)")
    ap.add_argument("--report-only", action="store_true", help="re-render latest.md from latest.json")
    args = ap.parse_args()
    if args.report_only:
        res = json.loads((RESULTS / "latest.json").read_text())
        md = report(res)
        (RESULTS / "latest.md").write_text(md)
        print(md)
        return
    if not args.venvimg or not args.state:
        die("--venvimg and --state are required; run through benches/run.sh")
    for s in (args.only.split(",") if args.only else []):
        if s not in ("jobstart", "hit", "parallel", "miss"):
            die(f"--only: unknown section {s!r} (jobstart, hit, parallel, miss)")
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b.main()


if __name__ == "__main__":
    main()
