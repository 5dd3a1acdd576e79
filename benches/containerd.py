#!/usr/bin/env python3
"""A private containerd for the pull benchmarks (issue #36): Debian 12's containerd 1.6 and
its `ctr`, the engine under current Docker (which hashes while it unpacks, so it
decompresses each layer once). Used by benches/pull_layout.py and benches/shaped.py.
Python 3 standard library only.

Never the system's containerd (nor the one the test environment's dockerd runs): this one
has its own config in a folder of its own, root, state, gRPC/ttrpc/debug sockets and the
`opt` plugin's folder all under it, the CRI plugin disabled. `fresh()` gives a cold store:
it stops the daemon, unmounts what is mounted under the folder, removes root and state and
starts again. `stop()` does the same and removes the folder. Pulls go through
`ctr -n bench images pull --plain-http --snapshotter overlayfs REF`, which in 1.6 fetches
every blob (ctr downloads them and writes them into the daemon's content store over gRPC)
and then unpacks the host platform into the overlayfs snapshotter (the daemon
decompresses, checks the diff_id and writes the files). So a pull costs CPU in both
processes; `pull()` reports the daemon's (from /proc/PID/stat, reaped children included)
and ctr's (its rusage as our child) apart.

    python3 benches/containerd.py --cleanup DIR   # stop and remove what a killed run left in DIR
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMESPACE = "bench"
SNAPSHOTTER = "overlayfs"


def proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of PID, in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(prefix) or mnt == str(path):
            out.append(mnt)
    return out


def _pids_naming(path: Path) -> list[int]:
    """Processes whose command line names PATH (the daemon, and runc shims, which carry
    our socket's address): only ours, found by our own folder, never by a program name."""
    needle = str(path).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cleanup_dir(path: Path, remove=True):
    """Stop a private containerd rooted in PATH (its pid file, then any process naming
    PATH), unmount everything under PATH (deepest first) and remove PATH. Idempotent."""
    path = Path(path)
    if not path.exists():
        return
    pidfile = path / "containerd.pid"
    pids = []
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text())
            if str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except (OSError, ValueError):
            pass
    pids += [p for p in _pids_naming(path) if p not in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    if remove:
        shutil.rmtree(path, ignore_errors=True)


class Containerd:
    def __init__(self, parent: Path, ctr_env: dict | None = None):
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="containerd.", dir=parent))
        self.sock = self.dir / "containerd.sock"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            "# benches/containerd.py: a private containerd for the pull benchmarks\n"
            "version = 2\n"
            f'root = "{self.dir}/root"\n'
            f'state = "{self.dir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.sock}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{self.dir}/debug.sock"\n'
            "[plugins]\n"
            '  [plugins."io.containerd.internal.v1.opt"]\n'
            f'    path = "{self.dir}/opt"\n')
        self.proc: subprocess.Popen | None = None
        self.env = dict(ctr_env if ctr_env is not None else os.environ)
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            self.env.pop(k, None)  # loopback and the bench's namespace only
        self.version = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctr(self, *args) -> list[str]:
        return ["ctr", "-a", str(self.sock), "-n", NAMESPACE] + [str(a) for a in args]

    def start(self):
        log = open(self.dir / "containerd.log", "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True, env=self.env)
        log.close()
        (self.dir / "containerd.pid").write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.proc.returncode}); see {self.dir / 'containerd.log'}")
            if self.sock.exists():
                r = subprocess.run(self.ctr("version"), capture_output=True, text=True, env=self.env)
                if r.returncode == 0:
                    self.version = next((l.split(":", 1)[1].strip() for l in r.stdout.splitlines()[::-1]
                                         if l.strip().startswith("Version:")), "")
                    return
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not answer on {self.sock}; see {self.dir / 'containerd.log'}")

    def _halt(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # shims (after `ctr run`) and mounts left under the folder
        cleanup_dir(self.dir, remove=False)

    def fresh(self):
        """A cold store: stop, unmount, remove root and state, start again."""
        self._halt()
        for d in ("root", "state", "opt"):
            shutil.rmtree(self.dir / d, ignore_errors=True)
        self.start()

    def stop(self):
        """Stop the daemon, unmount what is under its folder and remove the folder."""
        self._halt()
        cleanup_dir(self.dir)

    def pull(self, ref: str, plain_http=True) -> dict:
        """`ctr images pull` of REF (fetch, then unpack into overlayfs), timed. Returns wall,
        the daemon's CPU during the pull, ctr's own CPU, and the committed snapshots."""
        argv = self.ctr("images", "pull", *(["--plain-http"] if plain_http else []), "--snapshotter", SNAPSHOTTER, ref)
        c0 = proc_cpu(self.pid)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=self.env)
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon = proc_cpu(self.pid) - c0
        if p.returncode != 0:
            raise RuntimeError(f"ctr images pull {ref} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
        ctr_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return {"wall": wall, "daemon_cpu": daemon, "ctr_cpu": ctr_cpu, "cpu": daemon + ctr_cpu,
                "snapshots": self.snapshots()}

    def snapshots(self) -> int:
        """Committed snapshots in the overlayfs snapshotter (an unpacked image has one per
        layer; layers shared with an image already there are not unpacked again)."""
        r = subprocess.run(self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls"), capture_output=True,
                           text=True, check=True, env=self.env)
        return sum(1 for l in r.stdout.splitlines()[1:] if l.split() and l.split()[-1] == "Committed")

    def image_config(self, ref: str) -> dict:
        """REF's image config, from the content store."""
        r = subprocess.run(self.ctr("images", "ls"), capture_output=True, text=True, check=True, env=self.env)
        digest = next(l.split()[2] for l in r.stdout.splitlines()[1:] if l.split() and l.split()[0] == ref)
        man = json.loads(self._content(digest))
        if "manifests" in man:  # an index: the linux/amd64 entry
            digest = next(d["digest"] for d in man["manifests"]
                          if d.get("platform", {}).get("architecture") in (None, "amd64"))
            man = json.loads(self._content(digest))
        return json.loads(self._content(man["config"]["digest"]))

    def _content(self, digest: str) -> bytes:
        return subprocess.run(self.ctr("content", "get", digest), capture_output=True, check=True,
                              env=self.env).stdout

    @contextlib.contextmanager
    def rootfs(self, ref: str, name: str):
        """REF's unpacked layers as a writable overlay mount, for `ctr run --rootfs`: what
        `ctr run IMAGE` prepares itself, done by hand because `ctr run IMAGE` copies the
        image config's labels onto the container and containerd refuses a container label
        over 4096 bytes (venvimg's `dev.venvimg.record` on bigstack is 11.5 KB). Yields
        (mount point, the image config's Env)."""
        cfg = self.image_config(ref)
        chain = None
        for diff in cfg["rootfs"]["diff_ids"]:
            chain = diff if chain is None else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
        key = f"bench-rootfs-{name}"
        target = self.dir / "rootfs" / name
        target.mkdir(parents=True)
        snap = ["snapshots", "--snapshotter", SNAPSHOTTER]
        subprocess.run(self.ctr(*snap, "prepare", key, chain), capture_output=True, check=True, env=self.env)
        mounted = False
        try:
            cmd = subprocess.run(self.ctr(*snap, "mounts", target, key), capture_output=True, text=True,
                                 check=True, env=self.env).stdout.strip()
            if not cmd.startswith("mount "):
                raise RuntimeError(f"ctr snapshots mounts printed {cmd!r}")
            subprocess.run(["sh", "-c", cmd], check=True)
            mounted = True
            yield target, (cfg.get("config") or {}).get("Env") or []
        finally:
            if mounted:
                subprocess.run(["umount", target], check=False)
            subprocess.run(self.ctr(*snap, "rm", key), capture_output=True, env=self.env)
            shutil.rmtree(target, ignore_errors=True)

    def rmi(self, ref: str):
        subprocess.run(self.ctr("images", "rm", "--sync", ref), capture_output=True, env=self.env)


def main_cleanup(root: Path):
    """Stop and remove every private containerd folder this module made under ROOT (or
    ROOT itself, if it is one)."""
    root = Path(root)
    if not root.exists():
        return
    dirs = [root] if (root / "config.toml").exists() else sorted(root.glob("containerd.*"))
    for d in dirs:
        if d.is_dir() and (d / "config.toml").exists():
            cleanup_dir(d)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--cleanup":
        return main_cleanup(Path(sys.argv[2]))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
