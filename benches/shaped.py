#!/usr/bin/env python3
"""venvimg shaped-link benchmark (issue #17); run through benches/shaped.sh, which sets up
the test environment and the binary. Python 3 standard library only.

The package index and the registry sit behind the SAME link: both are served from a
network namespace joined to the host by a veth pair (10.231.7.1/30 host side, .2 in the
namespace). The link is shaped per profile, on both ends of the veth:

  rate   `tc qdisc ... tbf` on vimgsh0 (host -> namespace) and on vimgsh1 inside the
         namespace (namespace -> host);
  delay  half the RTT each way, added by benches/delayline.py: iptables (mangle
         PREROUTING -i vimgsh0 / POSTROUTING -o vimgsh0) hands every packet crossing the
         veth to an NFQUEUE, and the delay line accepts it RTT/2 after it arrived. This
         kernel has no `tc netem` (CONFIG_NET_SCH_NETEM is not set), hence the user-space
         delay; the shaping is measured (TCP connect RTT, a 50 MB curl) before each
         profile and the measured numbers are in the report.

Contenders, per fixture (sample, bigstack), interleaved round by round (the order rotates):
  cold      base image, empty uv cache: nox creates the venv, uv sync installs from the
            index in the namespace (wheels + the editable project's build backend);
  warm      the same with a persistent uv cache mounted (a self-hosted runner's cache);
  tar_zst   the `.nox` venv as tar.zst downloaded over the link and extracted (streamed:
            download | zstd -d | tar -x, favouring it), then nox reuses it;
  venvimg*  `podman rmi`, `podman pull` from the registry in the namespace, `podman run
            --network none` (gzip / zstd, `layers: single` / `per-distribution`);
  ctr_*     the same images with containerd 1.6 (the engine under current Docker): a
            private containerd (benches/containerd.py) restarted on an empty root, the
            base pulled untimed from loopback, then `ctr images pull --plain-http` from
            the registry in the namespace (fetch + unpack into overlayfs) and `ctr run
            --rm --rootfs` (its own network namespace: no network) of the session on the
            image's snapshot, prepared and mounted by hand (`ctr run IMAGE` copies the
            image's labels onto the container, and containerd refuses venvimg's 11.5 KB
            dev.venvimg.record: containers.Labels over 4096 bytes);
  restore_* `venvimg restore --image` of the same images (issue #36): the venv layers
            fetched by venvimg itself, side by side, each checked and unpacked as it
            streams into a fresh envdir (no engine), then the session in the base image
            with that envdir mounted (`podman run --network none`); peak RSS from
            /usr/bin/time;
  present   the venvimg image already on the runner: `podman run` only;
  floor     the base image with the same venv bind-mounted from local disk: container
            start + the session's own run, nothing delivered.
Every contender's bytes that crossed the link come from the veth's counters.
--contenders picks groups (cold, warm, tar_zst, podman, containerd, restore, present, floor); a run
of a subset is merged into results/shaped.json (its cells replace the earlier ones, the
report lists the runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (its run/log/format helpers)
import containerd  # noqa: E402  (the private containerd)
from bench import die, fmt_mb, log, median, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RESULTS = ROOT / "benches" / "results"
NS = "venvimg-shaped"
VETH_HOST, VETH_NS = "vimgsh0", "vimgsh1"
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"
INDEX_PORT, REG_PORT = 8080, 5000
INDEX = f"http://{NS_IP}:{INDEX_PORT}/simple"
REG = f"{NS_IP}:{REG_PORT}"
QUEUES = (7101, 7102)  # NFQUEUE numbers: from the namespace, to the namespace
RULE_COMMENT = "venvimg-shaped-bench"
ENVDIR = "/opt/nox"
PROFILES = {
    "hosted": {"label": "hosted runner", "rate_mbit": 1000, "rtt_ms": 5.0},
    "modest": {"label": "modest self-hosted link", "rate_mbit": 100, "rtt_ms": 30.0},
}
# (key, compression, layers)
IMAGES = (("venvimg", "gzip", "single"), ("venvimg_zstd", "zstd", "single"),
          ("venvimg_split", "gzip", "per-distribution"), ("venvimg_split_zstd", "zstd", "per-distribution"))
IMAGE_LABELS = {"venvimg": "gzip, `layers: single`", "venvimg_zstd": "zstd, `layers: single`",
                "venvimg_split": "gzip, per-distribution", "venvimg_split_zstd": "zstd, per-distribution"}
FIXTURE_NAMES = ("sample", "bigstack")
# --contenders groups; "podman" and "containerd" are the venvimg images pulled + run by each
CONTENDERS = ("cold", "warm", "tar_zst", "podman", "containerd", "restore", "present", "floor")


def sh(cmd, check=True, **kw):
    return run(cmd, shell=True, check=check, **kw)


def link_counters() -> tuple[int, int]:
    """(bytes namespace -> host, bytes host -> namespace) on the host end of the veth."""
    base = Path(f"/sys/class/net/{VETH_HOST}/statistics")
    return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------------------
# the index server (run inside the namespace): a PEP 503 tree over HTTP/1.1 keep-alive


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real index (python -m http.server is 1.0)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s [%s] %s\n" % (self.address_string(), self.log_date_time_string(), fmt % args))


def serve(root: str, host: str, port: int):
    os.chdir(root)
    srv = http.server.ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv.serve_forever()


# --------------------------------------------------------------------------------------


class Shaped:
    def __init__(self, args):
        self.args = args
        self.n = args.n
        self.profiles = [p for p in args.profiles.split(",") if p]
        for p in self.profiles:
            if p not in PROFILES:
                die(f"unknown profile {p!r} ({', '.join(PROFILES)})")
        self.state = Path(args.state)
        self.work = self.state / "work"
        self.tmp = self.state / "tmp"
        self.venvimg = args.venvimg
        env = os.environ
        for k in ["VENVIMG_TEST_BASE", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF", "VENVIMG_TEST_CA_FILE"]:
            if not env.get(k):
                die(f"{k} is not set; run through benches/shaped.sh")
        self.src_base = env["VENVIMG_TEST_BASE"]
        self.ca = env["VENVIMG_TEST_CA_FILE"]
        self.env = dict(env, TMPDIR=str(self.tmp))
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            self.env.pop(k, None)  # only loopback and the namespace, never a proxy
        self.env["NO_PROXY"] = self.env["no_proxy"] = f"127.0.0.1,localhost,{NS_IP}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.results: dict = {"samples": {}, "notes": [], "link": {}, "inputs": {}}
        self.base = f"{REG}/base/python-nox:bookworm"
        self.contenders = [c for c in args.contenders.split(",") if c]
        for c in self.contenders:
            if c not in CONTENDERS:
                die(f"unknown contender {c!r} ({', '.join(CONTENDERS)})")
        self.ctrd: containerd.Containerd | None = None

    def sample(self, key, value):
        self.results["samples"].setdefault(key, []).append(value)

    # ---- the namespace, the link -------------------------------------------------------
    def netns_up(self):
        cleanup(self.state, quiet=True)  # what a killed earlier run may have left
        for c in (f"ip netns add {NS}",
                  f"ip link add {VETH_HOST} type veth peer name {VETH_NS}",
                  f"ip link set {VETH_NS} netns {NS}",
                  f"ip addr add {HOST_IP}/30 dev {VETH_HOST}",
                  f"ip link set {VETH_HOST} up",
                  f"ip -n {NS} addr add {NS_IP}/30 dev {VETH_NS}",
                  f"ip -n {NS} link set {VETH_NS} up",
                  f"ip -n {NS} link set lo up"):
            sh(c)
        log(f"namespace {NS}: {VETH_HOST} {HOST_IP}/30 <-> {VETH_NS} {NS_IP}/30")

    def spawn(self, name, argv, netns=True, stdout=None, extra_env=None):
        logf = open(self.state / "logs" / f"{name}.log", "ab")
        full = (["ip", "netns", "exec", NS] if netns else []) + [str(a) for a in argv]
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=stdout or logf, stderr=logf,
                             start_new_session=True, env=dict(self.env, **(extra_env or {})))
        logf.close()
        self.procs[name] = p
        (self.state / "pids").mkdir(exist_ok=True)
        (self.state / "pids" / name).write_text(str(p.pid))
        return p

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        (self.state / "pids" / name).unlink(missing_ok=True)

    def wait_http(self, url, what):
        for _ in range(300):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        die(f"{what} did not answer at {url}; see {self.state / 'logs'}")

    def shape(self, profile: str):
        p = PROFILES[profile]
        rate = p["rate_mbit"]
        one_way = p["rtt_ms"] / 2
        # tbf: burst of ~2 ms of line rate (at least 64 KiB, a GSO packet), a queue of
        # 50 ms: rate shaping without a large standing queue.
        burst = max(64 * 1024, int(rate * 1e6 / 8 * 0.002))
        for dev, pre in ((VETH_HOST, ""), (VETH_NS, f"ip netns exec {NS} ")):
            sh(f"{pre}tc qdisc replace dev {dev} root tbf rate {rate}mbit burst {burst} latency 50ms")
        dl = self.spawn("delayline", [sys.executable, ROOT / "benches" / "delayline.py",
                                      "--queue", QUEUES[0], "--queue", QUEUES[1], "--delay-ms", one_way],
                        netns=False, stdout=subprocess.PIPE)
        if dl.stdout.readline().strip() != b"ready":
            die(f"delayline did not start; see {self.state / 'logs' / 'delayline.log'}")
        for chain, io, q in (("PREROUTING", "-i", QUEUES[0]), ("POSTROUTING", "-o", QUEUES[1])):
            sh(f"iptables -t mangle -A {chain} {io} {VETH_HOST} -m comment --comment {RULE_COMMENT} "
               f"-j NFQUEUE --queue-num {q}")
        log(f"link shaped: {profile} ({rate} Mbit/s tbf both ways, {one_way} ms each way)")

    def unshape(self):
        drop_rules()
        self.stop("delayline")
        for dev, pre in ((VETH_HOST, ""), (VETH_NS, f"ip netns exec {NS} ")):
            sh(f"{pre}tc qdisc del dev {dev} root", check=False)

    def measure_link(self, profile: str) -> dict:
        """TCP connect times (one RTT each) and a 50 MB download, host -> namespace."""
        rtts = []
        for _ in range(20):
            s = socket.socket()
            t0 = time.perf_counter()
            s.connect((NS_IP, INDEX_PORT))
            rtts.append((time.perf_counter() - t0) * 1000)
            s.close()
            time.sleep(0.02)
        rates = []
        for _ in range(2):
            r = run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                     f"http://{NS_IP}:{INDEX_PORT}/probe/f50"], env=self.env)
            size, t = r.out.split()
            rates.append(int(size) * 8 / float(t) / 1e6)
        prev = self.results["link"].get(profile, {})
        rtts = prev.get("rtt_ms_all", []) + rtts
        rates = prev.get("download_mbit_all", []) + rates
        d = {"rtt_ms_median": statistics.median(rtts), "rtt_ms_min": min(rtts), "rtt_ms_max": max(rtts),
             "download_mbit": statistics.median(rates), "download_mbit_all": rates, "rtt_ms_all": rtts}
        log(f"{profile}: measured RTT {d['rtt_ms_median']:.1f} ms (min {d['rtt_ms_min']:.1f}, max "
            f"{d['rtt_ms_max']:.1f}), 50 MB download {d['download_mbit']:.0f} Mbit/s")
        self.results["link"][profile] = d
        return d

    # ---- the index ---------------------------------------------------------------------
    def fill_index(self):
        """Download the fixtures' locked wheels (and the projects' build backend) from PyPI,
        once: a marker keyed by the lock files skips this on later runs."""
        wheels = self.state / "index" / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(b"".join((FIXTURES / f / n).read_bytes() for f in FIXTURE_NAMES
                                      for n in ("uv.lock", "pyproject.toml"))).hexdigest()[:16]
        marker = self.state / "index" / f"filled-{key}"
        if marker.exists():
            log(f"index: {len(list(wheels.glob('*.whl')))} wheels already there (filled once from PyPI)")
            return
        env = dict(self.env)
        env.pop("PIP_FIND_LINKS", None)
        env.pop("NO_PROXY", None)
        env.pop("no_proxy", None)
        env.update({k: v for k, v in os.environ.items() if "proxy" in k.lower()})  # PyPI's way out
        for f in FIXTURE_NAMES:
            req = self.tmp / f"req-{f}.txt"
            r = run(["uv", "export", "--project", FIXTURES / f, "--frozen", "--all-groups", "--no-emit-project",
                     "--format", "requirements-txt", "-q"], env=env)
            req.write_text(r.out)
            log(f"index: pip download of {f}'s locked wheels from PyPI (once)")
            run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--no-deps",
                 "--require-hashes", "-r", req, "-d", wheels], env=env)
        # the editable project's build: its backend, and what hatchling asks for to build an
        # editable (get_requires_for_build_editable: editables)
        build_reqs = {re.search(r'requires = \["([^"]+)"\]', (FIXTURES / f / "pyproject.toml").read_text()).group(1)
                      for f in FIXTURE_NAMES} | {"editables"}
        for build_req in sorted(build_reqs):
            run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", build_req, "-d", wheels], env=env)
        marker.write_text("\n".join(sorted(p.name for p in wheels.glob("*.whl"))) + "\n")

    def index_tree(self) -> Path:
        """PEP 503: root/simple/NAME/index.html linking root/packages/FILE#sha256=..."""
        root = self.state / "index" / "root"
        if root.exists():
            shutil.rmtree(root)
        (root / "packages").mkdir(parents=True)
        (root / "cache").mkdir()
        (root / "probe").mkdir()
        projects: dict[str, list[str]] = {}
        for whl in sorted((self.state / "index" / "wheels").glob("*.whl")):
            os.link(whl, root / "packages" / whl.name)
            digest = hashlib.sha256(whl.read_bytes()).hexdigest()
            projects.setdefault(norm(whl.name.split("-")[0]), []).append(
                f'<a href="../../packages/{whl.name}#sha256={digest}">{whl.name}</a><br/>')
        (root / "simple").mkdir()
        (root / "simple" / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(f'<a href="{p}/">{p}</a><br/>' for p in sorted(projects))
            + "\n</body></html>\n")
        for p, links in projects.items():
            (root / "simple" / p).mkdir()
            (root / "simple" / p / "index.html").write_text(
                f"<!DOCTYPE html><html><body><h1>Links for {p}</h1>\n" + "\n".join(links) + "\n</body></html>\n")
        probe = self.state / "index" / "f50"
        if not probe.exists():
            with open(probe, "wb") as f:
                f.write(os.urandom(50_000_000))
        os.link(probe, root / "probe" / "f50")
        log(f"index: {len(projects)} projects in a PEP 503 tree")
        return root

    def servers_up(self, root: Path):
        self.spawn("index", [sys.executable, Path(__file__).resolve(), "--serve", root, NS_IP, INDEX_PORT])
        self.wait_http(f"http://{NS_IP}:{INDEX_PORT}/simple/", "the index")
        regdir = self.state / "registry"
        (regdir / "storage").mkdir(parents=True, exist_ok=True)
        cfg = regdir / "config.yml"
        cfg.write_text("version: 0.1\nlog: {level: error, formatter: text, accesslog: {disabled: false}}\n"
                       f"storage:\n  filesystem: {{rootdirectory: {regdir / 'storage'}}}\n  delete: {{enabled: true}}\n"
                       f"http:\n  addr: {REG}\n")
        self.spawn("registry", ["docker-registry", "serve", cfg], extra_env={"REGISTRY_HTTP_ADDR": REG})
        self.wait_http(f"http://{REG}/v2/", "the registry")
        log(f"index http://{NS_IP}:{INDEX_PORT}/simple and registry {REG} up in the namespace")

    # ---- inputs: projects locked against the index, images, tarballs, caches -----------
    def project(self, fixture: str) -> Path:
        """A copy of FIXTURE whose pyproject names the namespace index as its default index
        and whose uv.lock is re-locked against it (so `uv sync --frozen` and the editable
        build's backend come from the shaped link). Kept between runs."""
        src = FIXTURES / fixture
        key = hashlib.sha256((src / "uv.lock").read_bytes() + (src / "pyproject.toml").read_bytes()
                             + INDEX.encode()).hexdigest()[:16]
        dest = self.state / "src" / fixture
        marker = dest / ".shaped-key"
        if marker.exists() and marker.read_text() == key:
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", ".nox", ".venv"))
        extra = f'\n# added by benches/shaped.py: the index behind the shaped link\n'
        if "environments" not in (src / "pyproject.toml").read_text():
            # the index holds Linux x86_64 wheels only: resolve for the containers' platform
            # (a universal lock would also want Windows-only packages such as colorama)
            extra += "[tool.uv]\nenvironments = [\"sys_platform == 'linux' and platform_machine == 'x86_64'\"]\n"
        extra += f'[[tool.uv.index]]\nname = "shaped"\nurl = "{INDEX}"\ndefault = true\n'
        with open(dest / "pyproject.toml", "a") as f:
            f.write(extra)
        env = dict(self.env, UV_CACHE_DIR=str(self.state / "uvcache-host"))
        log(f"{fixture}: uv lock against {INDEX}")
        run(["uv", "lock", "--project", dest, "-q"], env=env)
        want = lock_versions(src / "uv.lock")
        got = lock_versions(dest / "uv.lock")
        changed = {k: (want.get(k), v) for k, v in got.items() if want.get(k) != v}
        if changed:
            die(f"{fixture}: re-locking changed the resolution: {changed}")
        dropped = sorted(set(want) - set(got))
        if dropped:
            log(f"{fixture}: not in the Linux x86_64 lock (other platforms only): {', '.join(dropped)}")
        if "files.pythonhosted.org" in (dest / "uv.lock").read_text():
            die(f"{fixture}: the re-locked uv.lock still points at files.pythonhosted.org")
        marker.write_text(key)
        return dest

    def fresh_src(self, fixture: str) -> Path:
        dst = self.work / "run-src"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(self.projects[fixture], dst, ignore=shutil.ignore_patterns(".shaped-key", "venvimg.yaml"))
        return dst

    def build_image(self, fixture: str, compression: str, layers: str) -> dict:
        proj = self.work / f"{fixture}-{compression}-{layers}"
        if proj.exists():
            shutil.rmtree(proj)
        shutil.copytree(self.projects[fixture], proj, ignore=shutil.ignore_patterns(".shaped-key"))
        (proj / "venvimg.yaml").write_text(
            f"repository: {REG}/bench/{fixture}\nbase: {self.base}\nenvdir: {ENVDIR}\nworkdir: /src\n"
            f"sessions: [tests]\ncompression: {compression}\nlayers: {layers}\n")
        t0 = time.monotonic()
        r = run([self.venvimg, "--insecure-registry", REG, "build", "--json", "-q"], cwd=proj, env=self.env)
        s = next(x for x in json.loads(r.out)["sessions"] if x["session"] == "tests")
        log(f"{fixture}: {compression} {layers}: {s['image']} ({s['outcome']} in {time.monotonic() - t0:.0f}s, "
            f"layers {s['layer_size'] / 1e6:.1f} MB)")
        return s

    def inputs(self, fixture: str) -> dict:
        inp = {}
        for key, comp, layers in IMAGES:
            s = self.build_image(fixture, comp, layers)
            inp[key] = {"image": s["image"], "layer_bytes": s["layer_size"], "outcome": s["outcome"],
                        "layers": len(bench.venv_layers(s["image"], self.base))}
        # the .nox venv, exactly the gzip single image's layer: for the tar.zst contender
        # (served by the index server, over the link) and the floor (bind-mounted)
        image = inp["venvimg"]["image"]
        floor = self.work / f"{fixture}-floor"
        if floor.exists():
            shutil.rmtree(floor)
        floor.mkdir()
        blob = self.work / "layer.blob"
        for layer in bench.venv_layers(image, self.base):
            bench.fetch_blob(image, layer["digest"], blob)
            run(["tar", "--zstd" if "zstd" in layer["mediaType"] else "-z", "-xf", blob, "-C", floor])
            blob.unlink()
        nox_dir = floor / ENVDIR.lstrip("/")
        tzst = self.index_root / "cache" / f"{fixture}-nox.tar.zst"
        run(f"tar -C {nox_dir} -cf - tests | zstd -q -T0 -3 > {tzst}", shell=True)
        inp["tar_zst_bytes"] = tzst.stat().st_size
        inp["floor_dir"] = str(nox_dir)
        log(f"{fixture}: .nox tar.zst {inp['tar_zst_bytes'] / 1e6:.1f} MB")
        return inp

    def warm_cache(self, fixture: str):
        """The persistent runner's disk: its uv cache and the envdir side by side in one
        folder, mounted once at /runner (so uv hard-links from the cache into the venv, as on
        a runner whose cache and workspace share a disk); the cache is filled by one untimed
        cold run (unshaped)."""
        runner = self.state / f"runner-{fixture}"
        if runner.exists():
            shutil.rmtree(runner)
        (runner / "uvcache").mkdir(parents=True)
        log(f"{fixture}: filling the persistent runner's uv cache (one untimed cold run)")
        self.session(fixture, "warm-up", self.cmd_cold(fixture, runner), expect_reuse=False)

    # ---- contenders --------------------------------------------------------------------
    def session(self, fixture, label, argv, expect_reuse):
        r = run(argv, check=False, env=self.env)
        text = r.out + r.err
        ok = r.rc == 0 and re.search(r"\d+ passed", text)
        if expect_reuse:
            ok = ok and "Reusing existing virtual environment" in text and "Creating virtual environment" not in text
        if not ok:
            die(f"{fixture} {label}: the session did not pass as expected (exit {r.rc})\n{r.tail(30)}")
        return r.wall

    def cmd_cold(self, fixture, runner=None):
        src = self.fresh_src(fixture)
        argv = ["podman", "run", "--rm", "--http-proxy=false", "-w", "/src", "-v", f"{src}:/src"]
        envdir = ENVDIR
        if runner is not None:  # persistent runner: warm cache, a fresh venv beside it
            shutil.rmtree(runner / "nox", ignore_errors=True)
            argv += ["-v", f"{runner}:/runner", "-e", "UV_CACHE_DIR=/runner/uvcache"]
            envdir = "/runner/nox"
        return argv + [self.base, "nox", "--envdir", envdir, "-s", "tests"]

    REUSE = ["nox", "--envdir", ENVDIR, "--reuse-venv=always", "--no-install", "-s", "tests"]

    def timed(self, profile, fixture, kind, fn):
        rx0, tx0 = link_counters()
        t = fn()
        rx1, tx1 = link_counters()
        p = f"{profile}.{fixture}.{kind}"
        self.sample(p, t)
        self.sample(p + "_down", rx1 - rx0)
        self.sample(p + "_up", tx1 - tx0)
        log(f"{profile} {fixture}: {kind} {t:.1f}s, {(rx1 - rx0) / 1e6:.1f} MB down, {(tx1 - tx0) / 1e6:.2f} MB up")
        return t

    def podman_forget(self, image):
        run(["podman", "rmi", "-f", image], check=False, env=self.env)

    def round(self, profile: str, fixture: str, inp: dict, rep: int):
        def cold():
            return self.session(fixture, "cold", self.cmd_cold(fixture), expect_reuse=False)

        def warm():
            return self.session(fixture, "warm", self.cmd_cold(fixture, self.state / f"runner-{fixture}"),
                                expect_reuse=False)

        def tar_zst():
            src = self.fresh_src(fixture)
            url = f"http://{NS_IP}:{INDEX_PORT}/cache/{fixture}-nox.tar.zst"
            script = (f"mkdir -p {ENVDIR} && python3 -c 'import shutil,sys,urllib.request; "
                      f"shutil.copyfileobj(urllib.request.urlopen(sys.argv[1]), sys.stdout.buffer, 1 << 20)' {url} "
                      f"| tar --zstd -x -f - -C {ENVDIR} && exec " + " ".join(self.REUSE))
            return self.session(fixture, "tar_zst", [
                "podman", "run", "--rm", "--http-proxy=false", "-w", "/src", "-e", "UV_OFFLINE=1",
                "-v", f"{src}:/src", "-v", "/usr/bin/zstd:/usr/local/bin/zstd:ro",
                self.base, "bash", "-o", "pipefail", "-ec", script], expect_reuse=True)

        def image_run(kind):
            image = inp[kind]["image"]
            self.podman_forget(image)
            off = self.registry_log_offset()
            rx0, tx0 = link_counters()
            pull = run(["podman", "pull", "-q", "--tls-verify=false", image], env=self.env)
            rx1, tx1 = link_counters()
            blobs = self.blob_bytes_since(off)
            if blobs < 0.9 * inp[kind]["layer_bytes"]:
                self.results["notes"].append(
                    f"{profile} {fixture} {kind}: podman pull fetched {blobs} bytes of blobs (layers "
                    f"{inp[kind]['layer_bytes']}): not a cold pull")
            src = self.fresh_src(fixture)
            t_run = self.session(fixture, kind, ["podman", "run", "--rm", "--network", "none", "-w", "/src",
                                                 "-e", "UV_OFFLINE=1", "-v", f"{src}:/src", image] + self.REUSE,
                                 expect_reuse=True)
            self.podman_forget(image)
            p = f"{profile}.{fixture}.{kind}"
            self.sample(p + "_pull", pull.wall)
            self.sample(p + "_pull_cpu", pull.cpu)
            self.sample(p + "_blob_bytes", blobs)
            self.sample(p + "_run", t_run)
            self.sample(p + "_down", rx1 - rx0)
            self.sample(p + "_up", tx1 - tx0)
            self.sample(p, pull.wall + t_run)
            log(f"{profile} {fixture}: {kind} pull {pull.wall:.1f}s ({(rx1 - rx0) / 1e6:.1f} MB down, CPU "
                f"{pull.cpu:.1f}s) + run {t_run:.1f}s")

        def ctr_image_run(kind):
            image = inp[kind]["image"]
            c = self.ctrd
            c.fresh()  # a cold store: an empty root
            c.pull(self.src_base)  # the base, on the runner for every contender (loopback, untimed)
            subprocess.run(["sync"])
            off = self.registry_log_offset()
            rx0, tx0 = link_counters()
            pull = c.pull(image)
            rx1, tx1 = link_counters()
            blobs = self.blob_bytes_since(off)
            if pull["snapshots"] < inp[kind]["layers"] + self.base_layers:
                die(f"{fixture} ctr_{kind}: {pull['snapshots']} snapshots after `ctr images pull`, the image has "
                    f"{inp[kind]['layers'] + self.base_layers} layers: not unpacked")
            if blobs < 0.9 * inp[kind]["layer_bytes"]:
                self.results["notes"].append(
                    f"{profile} {fixture} ctr_{kind}: ctr pull fetched {blobs} bytes of blobs (layers "
                    f"{inp[kind]['layer_bytes']}): not a cold pull")
            src = self.fresh_src(fixture)
            self.ctr_runs += 1
            name = f"bench-{self.ctr_runs}"
            # `ctr run IMAGE` would copy the image's labels onto the container, and
            # containerd refuses venvimg's 11.5 KB dev.venvimg.record label (its limit is
            # 4096 bytes): the snapshot is prepared and mounted as ctr run would, then
            # `ctr run --rootfs`; all of it is timed as the run.
            t0 = time.monotonic()
            with c.rootfs(image, name) as (rootfs, env):
                envs = [a for e in env + ["UV_OFFLINE=1"] for a in ("--env", e)]
                self.session(fixture, f"ctr_{kind}", c.ctr(
                    "run", "--rm", "--rootfs", "--cwd", "/src", *envs,
                    "--mount", f"type=bind,src={src},dst=/src,options=rbind:rw", rootfs, name) + self.REUSE,
                    expect_reuse=True)
            t_run = time.monotonic() - t0
            p = f"{profile}.{fixture}.ctr_{kind}"
            for k, v in (("_pull", pull["wall"]), ("_pull_cpu", pull["cpu"]), ("_pull_daemon_cpu", pull["daemon_cpu"]),
                         ("_pull_ctr_cpu", pull["ctr_cpu"]), ("_blob_bytes", blobs), ("_run", t_run),
                         ("_down", rx1 - rx0), ("_up", tx1 - tx0), ("", pull["wall"] + t_run)):
                self.sample(p + k, v)
            log(f"{profile} {fixture}: ctr_{kind} pull {pull['wall']:.1f}s ({(rx1 - rx0) / 1e6:.1f} MB down, CPU "
                f"{pull['cpu']:.1f}s: containerd {pull['daemon_cpu']:.1f}s + ctr {pull['ctr_cpu']:.1f}s) "
                f"+ run {t_run:.1f}s")

        def restore_run(kind, comp, layers):
            # `venvimg restore --image` (issue #36): the venv layers fetched by venvimg
            # itself into a fresh envdir (no engine), then the session in the base image
            # with that envdir mounted, nox reusing the venv. venvimg runs on the host here
            # (in a job it runs in the base container: the same bytes and files).
            image = inp[kind]["image"]
            proj = self.work / f"{fixture}-{comp}-{layers}"
            root = self.work / "restore-root"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            subprocess.run(["sync"])
            off = self.registry_log_offset()
            rx0, tx0 = link_counters()
            r = run(["/usr/bin/time", "-f", "maxrss_kb=%M", self.venvimg, "-q", "--insecure-registry", REG,
                     "restore", "--image", image, "--root", root], cwd=proj, env=self.env)
            rx1, tx1 = link_counters()
            blobs = self.blob_bytes_since(off)
            rss = int(re.findall(r"maxrss_kb=(\d+)", r.err)[-1]) * 1024
            src = self.fresh_src(fixture)
            t_run = self.session(fixture, f"restore_{kind}", [
                "podman", "run", "--rm", "--network", "none", "-w", "/src", "-e", "UV_OFFLINE=1",
                "-v", f"{src}:/src", "-v", f"{root}{ENVDIR}:{ENVDIR}", self.base] + self.REUSE, expect_reuse=True)
            shutil.rmtree(root)
            p = f"{profile}.{fixture}.restore_{kind}"
            for k, v in (("_restore", r.wall), ("_restore_cpu", r.cpu), ("_rss", rss), ("_blob_bytes", blobs),
                         ("_run", t_run), ("_down", rx1 - rx0), ("_up", tx1 - tx0), ("", r.wall + t_run)):
                self.sample(p + k, v)
            log(f"{profile} {fixture}: restore_{kind} {r.wall:.1f}s ({(rx1 - rx0) / 1e6:.1f} MB down, CPU "
                f"{r.cpu:.1f}s, peak RSS {rss / 2**20:.0f} MiB) + run {t_run:.1f}s")

        def present():
            image = inp["venvimg"]["image"]
            run(["podman", "pull", "-q", "--tls-verify=false", image], env=self.env)  # untimed
            src = self.fresh_src(fixture)
            t = self.timed(profile, fixture, "present", lambda: self.session(
                fixture, "present", ["podman", "run", "--rm", "--network", "none", "-w", "/src", "-e", "UV_OFFLINE=1",
                                     "-v", f"{src}:/src", image] + self.REUSE, expect_reuse=True))
            self.podman_forget(image)
            return t

        def floor():
            src = self.fresh_src(fixture)
            return self.session(fixture, "floor", [
                "podman", "run", "--rm", "--network", "none", "-w", "/src", "-e", "UV_OFFLINE=1",
                "-v", f"{src}:/src", "-v", f"{inp['floor_dir']}:{ENVDIR}", self.base] + self.REUSE, expect_reuse=True)

        want = self.contenders
        contenders = []
        for name, fn in (("cold", cold), ("warm", warm), ("tar_zst", tar_zst)):
            if name in want:
                contenders.append(lambda name=name, fn=fn: self.timed(profile, fixture, name, fn))
        if "podman" in want:
            contenders += [lambda k=k: image_run(k) for k, _, _ in IMAGES]
        if "containerd" in want:
            contenders += [lambda k=k: ctr_image_run(k) for k, _, _ in IMAGES]
        if "restore" in want:
            contenders += [lambda k=k, c=c, la=la: restore_run(k, c, la) for k, c, la in IMAGES]
        if "present" in want:
            contenders.append(present)
        if "floor" in want:
            contenders.append(lambda: self.timed(profile, fixture, "floor", floor))
        r = rep % len(contenders)
        for c in contenders[r:] + contenders[:r]:
            c()

    # registry access log: blob bytes served (a cold pull fetches the whole venv layer)
    def registry_log_offset(self) -> int:
        f = self.state / "logs" / "registry.log"
        return f.stat().st_size if f.exists() else 0

    def blob_bytes_since(self, off: int) -> int:
        time.sleep(0.3)
        with open(self.state / "logs" / "registry.log", "rb") as f:
            f.seek(off)
            text = f.read().decode("utf-8", "replace")
        return sum(int(m.group(1)) for m in re.finditer(r'"GET /v2/\S+/blobs/\S+ HTTP/[\d.]+" 200 (\d+)', text))

    # ---- main --------------------------------------------------------------------------
    def private_storage(self):
        conf = self.state / "podman" / "storage.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        driver = "overlay"
        shared = os.environ.get("CONTAINERS_STORAGE_CONF")
        if shared and "vfs" in Path(shared).read_text():
            driver = "vfs"
        conf.write_text(f'[storage]\ndriver = "{driver}"\ngraphroot = "{self.state / "podman" / "graph"}"\n'
                        f'runroot = "{self.state / "podman" / "run"}"\n')
        self.env["CONTAINERS_STORAGE_CONF"] = str(conf)
        regs = self.state / "podman" / "registries.conf"
        regs.write_text(Path(os.environ["CONTAINERS_REGISTRIES_CONF"]).read_text()
                        + f'\n# benches/shaped.py: the registry in the namespace speaks plain HTTP\n'
                          f'[[registry]]\nlocation = "{REG}"\ninsecure = true\n')
        self.env["CONTAINERS_REGISTRIES_CONF"] = str(regs)

    def main(self):
        t0 = time.monotonic()
        self.load_start = Path("/proc/loadavg").read_text().split()[:3]
        for d in (self.work, self.tmp):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        for f in (self.state / "logs").glob("*.log"):
            f.unlink()
        self.private_storage()
        try:
            self.netns_up()
            self.fill_index()
            self.index_root = self.index_tree()
            self.servers_up(self.index_root)
            run(["skopeo", "copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
                 f"docker://{self.src_base}", f"docker://{self.base}"])
            run(["podman", "pull", "-q", "--tls-verify=false", self.base], env=self.env)
            r = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], env=self.env)
            for name in r.out.split():
                if name.startswith(f"{REG}/bench/"):
                    run(["podman", "rmi", "-f", name], check=False, env=self.env)
            self.projects = {f: self.project(f) for f in FIXTURE_NAMES}
            inputs = {}
            for f in FIXTURE_NAMES:
                inputs[f] = self.inputs(f)
                if "warm" in self.contenders:
                    self.warm_cache(f)
            self.base_layers = len(bench.get_manifest(self.base)["layers"])
            self.ctr_runs = 0
            if "containerd" in self.contenders:
                self.ctrd = containerd.Containerd(self.state / "containerd", self.env)
            self.results["inputs"] = {f: {k: v for k, v in i.items() if k != "floor_dir"} for f, i in inputs.items()}
            self.results["index_wheel_bytes"] = sum(p.stat().st_size for p in (self.index_root / "packages").glob("*.whl"))
            # Profiles interleave too (the link is re-shaped for each), so that the shared
            # machine's load drifts over both alike.
            for rep in range(self.n):
                order = self.profiles[rep % len(self.profiles):] + self.profiles[:rep % len(self.profiles)]
                for profile in order:
                    self.shape(profile)
                    try:
                        self.measure_link(profile)
                        log(f"== {profile}: round {rep + 1}/{self.n}")
                        for f in FIXTURE_NAMES:
                            self.round(profile, f, inputs[f], rep + FIXTURE_NAMES.index(f))
                    finally:
                        self.unshape()
        finally:
            if self.ctrd is not None:
                self.results["containerd"] = self.ctrd.version
                self.ctrd.stop()
            for name in list(self.procs):
                self.stop(name)
            cleanup(self.state)
        self.results["machine"] = self.machine()
        self.results["profiles"] = self.profiles
        self.results["repetitions"] = self.n
        self.results["duration_s"] = round(time.monotonic() - t0, 1)
        self.results["contenders"] = self.contenders
        self.results = merge(RESULTS / "shaped.json", self.results)
        md = report(self.results)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "shaped.json").write_text(json.dumps(self.results, indent=2, sort_keys=True) + "\n")
        (RESULTS / "shaped.md").write_text(md)
        bench.rerender_latest()
        print(md)
        log(f"done in {self.results['duration_s']:.0f}s; wrote {RESULTS / 'shaped.md'} and shaped.json")

    def machine(self) -> dict:
        return bench.machine_facts(self.venvimg, self.load_start)


def run_of(res: dict, key: str) -> int:
    """The index of the latest run in RES that measured KEY (0 for unmerged results)."""
    runs = res.get("runs") or []
    for i in range(len(runs) - 1, -1, -1):
        if key in runs[i].get("samples", {}):
            return i
    return 0


def run_command(res: dict) -> str:
    cmd = f"bash benches/shaped.sh --profiles {','.join(res['profiles'])} -n {res['repetitions']}"
    cont = res.get("contenders")
    if cont and set(cont) != set(CONTENDERS):
        cmd += f" --contenders {','.join(cont)}"
    return cmd


def merge(path: Path, new: dict) -> dict:
    """NEW (this run) merged into the results at PATH: its samples replace the earlier
    ones for the same cells, its link measurements those of its profiles; "runs" lists
    every run with its own samples (a replaced cell's earlier samples stay there), and the
    report says which contenders each measured. A run of every contender and profile
    replaces the file."""
    new = dict(new)
    new["medians"] = {k: median(v) for k, v in new["samples"].items()}
    this = {k: new.get(k) for k in ("profiles", "repetitions", "contenders", "duration_s")}
    this.update(date=new["machine"]["date"], command=run_command(new), loadavg_start=new["machine"]["loadavg_start"],
                loadavg_end=new["machine"]["loadavg_end"], samples=new["samples"], link=new["link"])
    full = set(new["contenders"]) == set(CONTENDERS) and set(new["profiles"]) == set(PROFILES)
    if full or not path.exists():
        new["runs"] = [this]
        return new
    old = json.loads(path.read_text())
    runs = old.get("runs") or [{"profiles": old["profiles"], "repetitions": old["repetitions"],
                                "contenders": list(old.get("contenders") or [c for c in CONTENDERS if c != "containerd"]),
                                "duration_s": old["duration_s"], "date": old["machine"]["date"],
                                "command": run_command(old), "loadavg_start": old["machine"]["loadavg_start"],
                                "loadavg_end": old["machine"]["loadavg_end"], "samples": old["samples"],
                                "link": old["link"]}]
    doc = dict(old)
    doc["samples"] = dict(old["samples"], **new["samples"])
    doc["link"] = dict(old["link"], **new["link"])
    doc["inputs"] = {f: dict(old.get("inputs", {}).get(f, {}), **i) for f, i in new["inputs"].items()}
    doc["notes"] = old.get("notes", []) + new.get("notes", [])
    doc["profiles"] = [p for p in PROFILES if p in old["profiles"] or p in new["profiles"]]
    doc["machine"] = new["machine"]
    for k in ("containerd", "index_wheel_bytes"):
        if new.get(k):
            doc[k] = new[k]
    doc["repetitions"] = new["repetitions"]
    doc["duration_s"] = new["duration_s"]
    doc["contenders"] = sorted(set(runs[0]["contenders"]) | set(new["contenders"]), key=CONTENDERS.index)
    doc["runs"] = runs + [this]
    doc["medians"] = {k: median(v) for k, v in doc["samples"].items()}
    return doc


def lock_versions(lock: Path) -> dict:
    text = lock.read_text()
    return dict(re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text))


def drop_rules():
    for chain, io, q in (("PREROUTING", "-i", QUEUES[0]), ("POSTROUTING", "-o", QUEUES[1])):
        for _ in range(10):
            r = subprocess.run(["iptables", "-t", "mangle", "-D", chain, io, VETH_HOST, "-m", "comment", "--comment",
                                RULE_COMMENT, "-j", "NFQUEUE", "--queue-num", str(q)], capture_output=True)
            if r.returncode != 0:
                break


def cleanup(state: Path, quiet=False):
    """Remove everything this benchmark sets up: iptables rules, the delay line and the
    servers (by the pids it recorded, and whatever still runs in its namespace), the
    qdiscs, the veth pair, the namespace. Idempotent; shaped.sh calls it from a trap."""
    drop_rules()
    containerd.main_cleanup(state / "containerd")
    piddir = state / "pids"
    if piddir.exists():
        for f in piddir.iterdir():
            try:
                pid = int(f.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if "delayline.py" in cmdline or "shaped.py" in cmdline or "docker-registry" in cmdline:
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass
            f.unlink(missing_ok=True)
    r = subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True)
    for pid in r.stdout.split():  # only processes inside our own namespace
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    if r.stdout.strip():
        time.sleep(1)
    subprocess.run(["tc", "qdisc", "del", "dev", VETH_HOST, "root"], capture_output=True)
    subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if NS in left.split():
        log(f"warning: namespace {NS} still there")
    elif not quiet:
        log(f"cleaned up: namespace {NS}, veth {VETH_HOST}/{VETH_NS}, qdiscs, NFQUEUE rules, servers")


# --------------------------------------------------------------------------------------
# report


def fmt_s(x):
    return bench.fmt_s(x)


def ratio(a, b, digits=2):
    return bench.ratio(a, b, digits)


def report(res: dict) -> str:
    m = res["medians"]
    get = m.get
    mach = res["machine"]
    ctrd = f", containerd {res['containerd']} (`ctr`, overlayfs)" if res.get("containerd") else ""
    runs = res.get("runs") or []
    if len(runs) > 1:
        out = [f"On {mach['os']}, kernel {mach['kernel']}, {mach['nproc']} cores ({mach['cpu']}), a shared machine; "
               f"{mach['venvimg']} ({mach['commit']}), {mach['podman']}{ctrd}, {mach['uv']}. Merged from "
               f"{len(runs)} runs, each cell from the latest run that measured it (contenders interleaved within a "
               "run, the order rotating; medians): "
               + "; ".join(f"{i + 1}. {r['date']}, load {' '.join(r['loadavg_start'])} → {' '.join(r['loadavg_end'])}, "
                           f"{r['repetitions']} round(s) of {', '.join(r['profiles'])}, contenders "
                           f"{', '.join(r['contenders'])}: `{r['command']}` ({r['duration_s'] / 60:.0f} min)"
                           for i, r in enumerate(runs))
               + ". Ratios between cells of different runs compare different days' load: read them with that in mind.",
               ""]
    else:
        out = [f"Measured {mach['date']} on {mach['os']}, kernel {mach['kernel']}, {mach['nproc']} cores ({mach['cpu']}); "
               f"load average {' '.join(mach['loadavg_start'])} at start, {' '.join(mach['loadavg_end'])} at end (a shared "
               f"machine). {mach['venvimg']} ({mach['commit']}), {mach['podman']}{ctrd}, {mach['uv']}. Medians of "
               f"{res['repetitions']} run(s), contenders interleaved (the order rotates); "
               f"`{run_command(res)}` reproduces it ({res['duration_s'] / 60:.0f} min with set-up).", ""]
    out.append("The package index (a PEP 503 tree of the fixtures' locked wheels and the build backend, "
               "HTTP/1.1 keep-alive) and the registry (distribution 2.8) are served from a network namespace "
               f"behind one veth pair ({HOST_IP}/30 ↔ {NS_IP}/30). Rate: `tc tbf` on both ends; delay: half the RTT "
               "each way, added by `benches/delayline.py` (an NFQUEUE delay line: this kernel has no `netem`). "
               "Containers reach the namespace through podman's default network (containerd's contenders pull "
               "with `ctr images pull --plain-http` and run with no network); the fixtures are re-locked "
               "against the namespace index, so `uv sync --frozen` fetches over the shaped link. "
               "Bytes: what crossed the veth (its counters), down (namespace → runner) / up.")
    out.append("")
    out.append("| profile | nominal | measured RTT (TCP connects from the host, 20 a round: median) | measured download (50 MB curl, 2 a round: median) |")
    out.append("|---|---|---|---|")
    for p in res["profiles"]:
        d = res["link"].get(p, {})
        pr = PROFILES[p]
        out.append(f"| {pr['label']} | {pr['rate_mbit']} Mbit/s, {pr['rtt_ms']:g} ms RTT | "
                   f"{d.get('rtt_ms_median', 0):.1f} ms (min {d.get('rtt_ms_min', 0):.1f}, max {d.get('rtt_ms_max', 0):.1f}) | "
                   f"{d.get('download_mbit', 0):.0f} Mbit/s |")
    out.append("")
    inp = res.get("inputs", {})
    out.append("Delivered artefacts: " + "; ".join(
        f"{f}: " + ", ".join(f"image {IMAGE_LABELS[k]} {fmt_mb(i[k]['layer_bytes'])}" for k, _, _ in IMAGES)
        + f", `.nox` tar.zst {fmt_mb(i.get('tar_zst_bytes'))}" for f, i in inp.items())
        + f"; all the index's wheels together {fmt_mb(res.get('index_wheel_bytes'))}.")
    out.append("")
    rows = [("cold: empty uv cache, nox creates the venv, uv installs over the link", "cold"),
            ("persistent runner: warm uv cache, nox creates the venv", "warm"),
            ("`.nox` tar.zst downloaded over the link + extracted (actions/cache pattern)", "tar_zst")]
    for k, _, _ in IMAGES:
        rows.append((f"**venvimg {IMAGE_LABELS[k]}: pull + run**", k))
        rows.append((f"  venvimg {IMAGE_LABELS[k]}: `podman pull`", k + "_pull"))
    if any(k.split(".", 2)[2].startswith("ctr_") for k in m if k.count(".") >= 2):
        for k, _, _ in IMAGES:
            rows.append((f"**venvimg {IMAGE_LABELS[k]}: containerd `ctr images pull` + `ctr run`**", "ctr_" + k))
            rows.append((f"  venvimg {IMAGE_LABELS[k]}: `ctr images pull`", "ctr_" + k + "_pull"))
    rows += [("venvimg image already on the runner: `podman run`", "present"),
             ("floor: container start + the session's own run (venv bind-mounted)", "floor")]
    targets = []
    for p in res["profiles"]:
        pr = PROFILES[p]
        out.append(f"**{pr['label']}** ({pr['rate_mbit']} Mbit/s, {pr['rtt_ms']:g} ms RTT) — from `podman run` "
                   "(or `podman pull`, `ctr images pull`) until the `tests` session passed; ÷ cold: this time over "
                   "the cold start's")
        out.append("")
        out.append("| contender | sample | ÷ cold | bytes down | bigstack | ÷ cold | bytes down / up |")
        out.append("|---|---|---|---|---|---|---|")
        for label, key in rows:
            s, b = get(f"{p}.sample.{key}"), get(f"{p}.bigstack.{key}")
            base_key = key[:-5] if key.endswith("_pull") else key
            sd, bd, bu = (get(f"{p}.sample.{base_key}_down"), get(f"{p}.bigstack.{base_key}_down"),
                          get(f"{p}.bigstack.{base_key}_up"))
            bytes_b = "" if key.endswith("_pull") else f"{fmt_mb(bd)} / {fmt_mb(bu)}"
            out.append(f"| {label} | {fmt_s(s)} | {ratio(s, get(f'{p}.sample.cold'))} | "
                       f"{'' if key.endswith('_pull') else fmt_mb(sd)} | {fmt_s(b)} | {ratio(b, get(f'{p}.bigstack.cold'))} | "
                       f"{bytes_b} |")
        out.append("")
        rate = res["link"].get(p, {}).get("download_mbit") or pr["rate_mbit"]
        out.append(f"Where a bigstack pull's time goes ({pr['label']}): the bytes at the measured link rate "
                   f"({rate:.0f} Mbit/s) against the pull's wall time and podman's CPU time (user + sys: "
                   "decompressing and writing the venv's files)")
        out.append("")
        out.append("| image | bytes down | at link rate | `podman pull` wall | podman CPU | then `podman run` |")
        out.append("|---|---|---|---|---|---|")
        for k, _, _ in IMAGES:
            bd = get(f"{p}.bigstack.{k}_down")
            out.append(f"| {IMAGE_LABELS[k]} | {fmt_mb(bd)} | {fmt_s(None if bd is None else bd * 8 / rate / 1e6)} | "
                       f"{fmt_s(get(f'{p}.bigstack.{k}_pull'))} | {fmt_s(get(f'{p}.bigstack.{k}_pull_cpu'))} | "
                       f"{fmt_s(get(f'{p}.bigstack.{k}_run'))} |")
        out.append("")
        if any(get(f"{p}.bigstack.ctr_{k}") is not None for k, _, _ in IMAGES):
            out.append(f"containerd against podman ({pr['label']}, bigstack): `ctr images pull` (fetch, then unpack "
                       "into overlayfs; a fresh containerd root each time, the base already there) and the session "
                       "run with `ctr run --rm --rootfs` on the image's snapshot (prepared and mounted by the bench, "
                       "timed with the run: `ctr run IMAGE` refuses venvimg's images, it copies their labels onto "
                       "the container and containerd rejects the 11.5 KB `dev.venvimg.record`, over its 4096-byte "
                       "limit for a container label), over podman's pull and run of the same image; containerd's "
                       "CPU is the daemon's during the pull + ctr's own (ctr downloads the blobs into the content "
                       "store)")
            out.append("")
            out.append("| image | bytes down | `ctr images pull` | ÷ `podman pull` | containerd CPU (daemon + ctr) | "
                       "÷ podman CPU | then `ctr run` | ÷ `podman run` | pull + run | ÷ podman's |")
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            for k, _, _ in IMAGES:
                c = f"{p}.bigstack.ctr_{k}"
                q = f"{p}.bigstack.{k}"
                dm, cx = get(c + "_pull_daemon_cpu"), get(c + "_pull_ctr_cpu")
                split = f" ({dm:.1f} + {cx:.1f})" if dm is not None and cx is not None else ""
                out.append(f"| {IMAGE_LABELS[k]} | {fmt_mb(get(c + '_down'))} | {fmt_s(get(c + '_pull'))} | "
                           f"{ratio(get(c + '_pull'), get(q + '_pull'))} | {fmt_s(get(c + '_pull_cpu'))}{split} | "
                           f"{ratio(get(c + '_pull_cpu'), get(q + '_pull_cpu'))} | {fmt_s(get(c + '_run'))} | "
                           f"{ratio(get(c + '_run'), get(q + '_run'))} | {fmt_s(get(c))} | {ratio(get(c), get(q))} |")
            out.append("")
        if any(get(f"{p}.bigstack.restore_{k}") is not None for k, _, _ in IMAGES):
            out.append(f"`venvimg restore --image` ({pr['label']}, bigstack): the image's venv layers fetched by "
                       "venvimg itself, several at once, each checked and unpacked as it streams into a fresh "
                       "envdir (no engine, no copy on disk), then the session in the base image with that envdir "
                       "mounted; beside podman's pull of the same image, containerd's, and the .nox tar.zst restore")
            out.append("")
            out.append("| image | bytes down | restore | ÷ `podman pull` | ÷ `ctr images pull` | CPU | peak RSS | "
                       "then run | restore + run | ÷ cold | ÷ tar.zst restore + run |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for k, _, _ in IMAGES:
                c = f"{p}.bigstack.restore_{k}"
                rss = get(c + "_rss")
                out.append(f"| {IMAGE_LABELS[k]} | {fmt_mb(get(c + '_down'))} | {fmt_s(get(c + '_restore'))} | "
                           f"{ratio(get(c + '_restore'), get(f'{p}.bigstack.{k}_pull'))} | "
                           f"{ratio(get(c + '_restore'), get(f'{p}.bigstack.ctr_{k}_pull'))} | "
                           f"{fmt_s(get(c + '_restore_cpu'))} | "
                           f"{'–' if rss is None else f'{rss / 2**20:.0f} MiB'} | {fmt_s(get(c + '_run'))} | "
                           f"{fmt_s(get(c))} | {ratio(get(c), get(f'{p}.bigstack.cold'))} | "
                           f"{ratio(get(c), get(f'{p}.bigstack.tar_zst'))} |")
            out.append("")
        b = f"{p}.bigstack."
        for k, _, _ in IMAGES:
            if get(b + "restore_" + k) is not None:
                targets.append((p, f"bigstack: restore {IMAGE_LABELS[k]} + run ÷ cold (#36)", 0.6,
                                b + "restore_" + k, b + "cold"))
                targets.append((p, f"bigstack: restore {IMAGE_LABELS[k]} + run ÷ tar.zst restore (#36)", 0.5,
                                b + "restore_" + k, b + "tar_zst"))
                targets.append((p, f"bigstack: restore {IMAGE_LABELS[k]} alone ÷ `podman pull` (#36)", 0.4,
                                b + "restore_" + k + "_restore", b + k + "_pull"))
        for k, _, _ in IMAGES:
            targets.append((p, f"bigstack: venvimg {IMAGE_LABELS[k]} pull + run ÷ cold", 0.5, b + k, b + "cold"))
            targets.append((p, f"bigstack: venvimg {IMAGE_LABELS[k]} pull + run ÷ tar.zst restore", 0.7, b + k,
                            b + "tar_zst"))
        for k, _, _ in IMAGES:
            if get(b + "ctr_" + k) is not None:
                targets.append((p, f"bigstack: venvimg {IMAGE_LABELS[k]} with containerd, pull + run ÷ cold", 0.5,
                                b + "ctr_" + k, b + "cold"))
        for f in FIXTURE_NAMES:
            targets.append((p, f"{f}: image on the runner ÷ the session's own run (floor)", 1.1,
                            f"{p}.{f}.present", f"{p}.{f}.floor"))
    out.append("**Why** (from the medians above) — " + " ".join(why(res, p) for p in res["profiles"]))
    out.append("")
    out.append("**Goals (issue #17)** — a missed goal says by how much; the reasons are in *Why* above")
    out.append("")
    out.append("| profile | goal | wanted | measured | |")
    out.append("|---|---|---|---|---|")
    for p, name, at_most, ka, kb in targets:
        a, bb = get(ka), get(kb)
        if a is None or not bb:
            verdict, got = "–", "–"
        else:
            r = a / bb
            got = f"{r:.2f}× ({a:.1f} s vs {bb:.1f} s)"
            verdict = "met" if r <= at_most else f"missed by {(r / at_most - 1) * 100:.0f}% ({a - at_most * bb:.1f} s too slow)"
            ra, rb = run_of(res, ka), run_of(res, kb)
            if ra != rb:
                verdict += f" — across runs {ra + 1} and {rb + 1}: compare with care"
        out.append(f"| {PROFILES[p]['label']} | {name} | ≤ {at_most}× | {got} | {verdict} |")
    for p in res["profiles"]:
        for k, _, _ in IMAGES:
            rss = get(f"{p}.bigstack.restore_{k}_rss")
            if rss is not None:
                mib = rss / 2**20
                out.append(f"| {PROFILES[p]['label']} | bigstack: restore {IMAGE_LABELS[k]}, peak RSS (#36) | "
                           f"< 150 MiB | {mib:.0f} MiB | {'met' if mib < 150 else 'missed'} |")
    out.append("")
    for note in res.get("notes", []):
        out.append(f"Note: {note}")
    return "\n".join(out).rstrip() + "\n"


def why(res: dict, p: str) -> str:
    """The facts behind the goals, in words: link time vs pull time vs podman CPU, the
    bytes cold moved against the image's, what the run after a pull costs."""
    get = res["medians"].get
    b = f"{p}.bigstack."
    rate = res["link"].get(p, {}).get("download_mbit") or PROFILES[p]["rate_mbit"]
    pulls = [(k, get(b + k + "_pull"), get(b + k + "_pull_cpu"), get(b + k + "_down"), get(b + k + "_run"))
             for k, _, _ in IMAGES if get(b + k) is not None]
    if not pulls or get(b + "cold") is None:
        return ""
    best = min(pulls, key=lambda x: x[1] + x[4])
    link_s = [d * 8 / rate / 1e6 for _, _, _, d, _ in pulls]
    parts = [
        f"*{PROFILES[p]['label']}*: the link carries a bigstack image in {min(link_s):.1f}–{max(link_s):.1f} s, "
        f"but `podman pull` takes {min(x[1] for x in pulls):.1f}–{max(x[1] for x in pulls):.1f} s with "
        f"{min(x[2] for x in pulls):.1f}–{max(x[2] for x in pulls):.1f} s of podman CPU: the pull is bound by "
        "decompressing and writing the venv's ~30 000 files on this shared 2-core machine, not by the link "
        "(gzip in one layer costs podman the most CPU, as on loopback in latest.md).",
        f"Cold moved {fmt_mb(get(b + 'cold_down'))} over the link against the image's "
        f"{fmt_mb(min(x[3] for x in pulls))}–{fmt_mb(max(x[3] for x in pulls))} (wheels are compressed and "
        "carry no bytecode; uv unpacks them in parallel and links them into the venv), and at "
        f"{res['link'].get(p, {}).get('rtt_ms_median', PROFILES[p]['rtt_ms']):.0f} ms RTT its few dozen "
        "requests, made 50 at a time, cost little: cold is "
        f"{get(b + 'cold'):.1f} s, so ≤ 0.5× asks for ≤ {get(b + 'cold') / 2:.1f} s; the best venvimg variant "
        f"({IMAGE_LABELS[best[0]]}) is {best[1]:.1f} s pull + {best[4]:.1f} s run.",
    ]
    if get(b + "tar_zst") is not None:
        parts.append(f"The tar.zst restore ({get(b + 'tar_zst'):.1f} s) moves the same venv as the zstd image "
                     "and extracts it while it downloads (`zstd -d | tar -x`), with no image store to write.")
    if get(b + "warm") is not None and get(b + "warm") > get(b + "cold"):
        parts.append(f"The persistent runner ({get(b + 'warm'):.1f} s) is no faster than cold here: it saves "
                     "the download, but still creates the venv and installs its 60 distributions (a 275 MB tree) file "
                     "by file, and the download was not what made cold slow.")
    return " ".join(parts)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venvimg", help="the venvimg binary under test (benches/shaped.sh passes it)")
    ap.add_argument("--state", help="state folder (benches/shaped.sh passes it)")
    ap.add_argument("--profiles", default="hosted,modest", help="comma-separated: hosted,modest")
    ap.add_argument("-n", type=int, default=1, help="rounds per profile (default 1)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help=f"comma-separated groups: {','.join(CONTENDERS)} (default all)")
    ap.add_argument("--cleanup", action="store_true", help="only remove what a killed run left behind")
    ap.add_argument("--report-only", action="store_true", help="re-render shaped.md from shaped.json")
    args = ap.parse_args()
    if args.report_only:
        md = report(json.loads((RESULTS / "shaped.json").read_text()))
        (RESULTS / "shaped.md").write_text(md)
        bench.rerender_latest()
        print(md)
        return
    if not args.state:
        die("--state is required; run through benches/shaped.sh")
    if args.cleanup:
        cleanup(Path(args.state))
        return
    if not args.venvimg:
        die("--venvimg is required; run through benches/shaped.sh")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Shaped(args).main()


if __name__ == "__main__":
    main()
