"""venvimg's window into nox: list every session, and record what a session's installs do.

venvimg runs this file with the Python interpreter that runs `nox` (in the base image for
container builders, on this machine for the local builder). It is the only project-facing
code venvimg runs, and what it writes is read back as untrusted data.

    python3 hook.py plan SPEC.json OUTDIR   list the sessions, then dry-run the wanted ones
    python3 hook.py list OUT.json -- NOX-ARGS
    python3 hook.py record OUT.jsonl [--exec] -- NOX-ARGS

`record` patches `nox.command.run`, the one function every session.install / run_install /
run and every venv creation goes through, and records each command (argv, working
directory, the environment nox adds). Without --exec nothing is executed: the dry run venvimg
plans with. With --exec the commands run: the real build, recorded the same way so venvimg
can check the plan foresaw it. An audit hook records what the noxfile itself does outside
nox's commands (files it opens, subprocesses, network requests).

Works with nox 2024.4.15 and later.
"""

import hashlib
import json
import stat as stat_mod
import os
import shutil
import subprocess
import sys
import tempfile

HOOK_VERSION = 1
# Files outside the project that a command names (a constraints file the noxfile wrote
# into the session's tmp dir): their content is recorded up to this size.
MAX_GENERATED = 256 * 1024

# `uv sync` / `uv run` options that select what is installed, and their `uv export`
# spelling: the lock entries a session installs are exported with the same selection.
SYNC_TO_EXPORT_FLAGS = {
    "--all-extras": "--all-extras",
    "--no-dev": "--no-dev",
    "--only-dev": "--only-dev",
    "--dev": "--dev",
    "--all-groups": "--all-groups",
    "--no-default-groups": "--no-default-groups",
    "--all-packages": "--all-packages",
    "--no-editable": "--no-editable",
    "--no-sources": "--no-sources",
    "--no-install-project": "--no-emit-project",
    "--no-install-workspace": "--no-emit-workspace",
    "--no-install-local": "--no-emit-local",
}
SYNC_TO_EXPORT_VALUES = {
    "--extra": "--extra",
    "--no-extra": "--no-extra",
    "--group": "--group",
    "--no-group": "--no-group",
    "--only-group": "--only-group",
    "--package": "--package",
    "--project": "--project",
    "--directory": "--directory",
    "--config-file": "--config-file",
    "--no-install-package": "--no-emit-package",
}
# Options of `uv sync` / `uv run` that take a value but do not change the selection.
UV_VALUE_OPTIONS = {
    "-p", "--python", "-i", "--index-url", "--index", "--default-index",
    "--extra-index-url", "-f", "--find-links", "--index-strategy", "--keyring-provider",
    "--resolution", "--prerelease", "--fork-strategy", "--exclude-newer",
    "--exclude-newer-package", "--no-build-package", "--no-binary-package",
    "--reinstall-package", "-P", "--upgrade-package", "--refresh-package", "--link-mode",
    "-C", "--config-setting", "--config-settings-package", "--cache-dir",
    "--python-preference", "--color", "--allow-insecure-host", "--script",
    "--output-format", "--python-platform", "--with", "--with-editable",
    "--with-requirements", "--env-file", "--index-url", "--extra-build-dependencies",
}


def _json_out(path):
    return open(path, "a", encoding="utf-8")


def _nox_main(argv):
    from nox.__main__ import main

    sys.argv = ["nox", *argv]
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


# --------------------------------------------------------------------------------------
# list: every session the noxfile defines, including default=False ones


def cmd_list(out_path, nox_args):
    import nox.tasks

    # What the noxfile reads, lists and checks while nox imports it: the listing depends
    # on those alone (a plan may reuse it while they are unchanged).
    rec = Recorder(out_path + ".events", execute=False)
    rec.watch_stats()
    sys.addaudithook(rec.audit)

    def listing(manifest, global_config):  # noqa: ARG001
        sessions = []
        for s, selected in manifest.list_all_sessions():
            sessions.append({
                "session": s.friendly_name,
                "name": s.name,
                "signatures": list(s.signatures),
                "description": s.description or "",
                "python": _plain(s.func.python),
                "tags": list(getattr(s, "tags", []) or []),
                "default": bool(getattr(s.func, "default", True)),
                "selected": bool(selected),
            })
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump({"hook": HOOK_VERSION, "nox": _nox_version(), "sessions": sessions}, f)
        return 0

    nox.tasks._produce_json_listing = listing
    return _nox_main([*nox_args, "--list", "--json"])


def _plain(v):
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


def _nox_version():
    try:
        from importlib.metadata import version

        return version("nox")
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------------------
# record: every command of the sessions run, and what the noxfile does besides


class Recorder:
    def __init__(self, out_path, execute):
        self.out = _json_out(out_path)
        self.execute = execute
        self.workdir = os.path.realpath(os.environ.get("VENVIMG_WORKDIR") or os.getcwd())
        self.envdir = os.path.realpath(os.environ.get("VENVIMG_ENVDIR") or "/nonexistent")
        self.tmp = os.path.realpath(tempfile.gettempdir())
        self.base_env = dict(os.environ)
        self.session = None
        self.in_command = 0
        # The hook's own file-system calls (realpath in user_frame) must not be recorded,
        # nor recurse through the wrapped os.stat.
        self.busy = False

    def emit(self, rec):
        rec["session"] = self.session
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()

    # -- commands

    def env_added(self, env):
        """What nox adds to or changes in the environment of a command. PATH keeps only
        what nox put in front of the outer PATH (the venv's bin)."""
        if env is None:
            return {}
        added = {}
        for k, v in env.items():
            if v is None or self.base_env.get(k) == v:
                continue
            outer = self.base_env.get(k)
            if k == "PATH" and outer and isinstance(v, str) and v.endswith(outer):
                v = v[: -len(outer)] + "$PATH"
            added[k] = v
        return added

    def generated_files(self, argv, cwd):
        """Files outside the project that a command names: their digest and content."""
        found = []
        for tok in argv[1:]:
            for cand in (tok, tok.split("=", 1)[1] if tok.startswith("-") and "=" in tok else None):
                if not cand or cand.startswith("-"):
                    continue
                p = os.path.realpath(os.path.join(cwd, cand))
                # Only what the session itself made: files of the base image are keyed by
                # its digest, files of the project are hashed by venvimg.
                if not any(p.startswith(d + os.sep) for d in (self.envdir, self.tmp)):
                    continue
                if not os.path.isfile(p):
                    continue
                try:
                    with open(p, "rb") as f:
                        data = f.read(MAX_GENERATED + 1)
                except OSError:
                    continue
                rec = {"path": p, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                if len(data) <= MAX_GENERATED:
                    try:
                        rec["text"] = data.decode("utf-8")
                    except UnicodeDecodeError:
                        pass
                else:
                    rec["sha256"] = None
                found.append(rec)
        return found

    def run(self, orig, args, *, env=None, silent=False, paths=None, **kw):
        argv = [os.fspath(a) for a in args]
        cwd = os.getcwd()
        rec = {
            "kind": "command",
            "argv": argv,
            "cwd": cwd,
            "env": self.env_added(env),
            "venv_creation": paths is None and sys._getframe(2).f_code.co_name != "_run",
        }
        files = [] if rec["venv_creation"] else self.generated_files(argv, cwd)
        if files:
            rec["files"] = files
        self.emit(rec)
        export = uv_export_args(argv)
        if export is not None:
            self.in_command += 1
            try:
                self.export(argv, export, cwd, env)
            finally:
                self.in_command -= 1
        if not self.execute:
            return "" if silent else True
        self.in_command += 1
        try:
            return orig(args, env=env, silent=silent, paths=paths, **kw)
        finally:
            self.in_command -= 1

    def export(self, for_argv, export_args, cwd, env):
        """`uv export --frozen` with the selection of a `uv sync`: the lock entries this
        install takes from uv.lock (offline; reads the lock as it is)."""
        run_env = {k: v for k, v in (env or os.environ).items() if v is not None}
        run_env["UV_OFFLINE"] = "1"
        uv = shutil.which(for_argv[0], path=run_env.get("PATH")) or shutil.which("uv")
        rec = {"kind": "export", "for": for_argv, "args": export_args, "cwd": cwd}
        if uv is None:
            rec["error"] = "uv not found"
        else:
            try:
                p = subprocess.run(
                    [uv, *export_args], cwd=cwd, env=run_env, capture_output=True, text=True,
                    timeout=120,
                )
                if p.returncode == 0:
                    rec["output"] = p.stdout
                else:
                    rec["error"] = p.stderr.strip()[-2000:]
            except (OSError, subprocess.SubprocessError) as e:
                rec["error"] = str(e)
        self.emit(rec)

    # -- the noxfile's own doings

    def inside(self, path):
        return path == self.workdir or path.startswith(self.workdir + os.sep)

    def watch_stats(self):
        """`os.path.exists` and friends raise no audit event: wrap `os.stat` / `os.lstat`
        so what the noxfile checks in the project is known (a plan reused from cache must
        see the same)."""
        rec = self

        def wrap(orig, kind):
            def stat(path, *a, **kw):
                try:
                    result = orig(path, *a, **kw)
                except OSError:
                    result = None
                    raise_it = True
                else:
                    raise_it = False
                if not rec.busy and not rec.in_command and not isinstance(path, int):
                    rec.busy = True
                    try:
                        p = os.path.abspath(os.fspath(path))
                        if rec.inside(p) and rec.user_frame():
                            state = "absent" if result is None else (
                                "dir" if stat_mod.S_ISDIR(result.st_mode) else
                                "file" if stat_mod.S_ISREG(result.st_mode) else "other")
                            rec.emit({"kind": "stat", "path": p, "state": state, "call": kind})
                    except Exception:  # noqa: BLE001 - never break the noxfile
                        pass
                    finally:
                        rec.busy = False
                if raise_it:
                    return orig(path, *a, **kw)
                return result

            return stat

        os.stat = wrap(os.stat, "stat")
        os.lstat = wrap(os.lstat, "lstat")

    def user_frame(self):
        f = sys._getframe(1)
        while f is not None:
            fn = f.f_code.co_filename
            if not fn.startswith("<") and fn != __file__:
                fn = os.path.realpath(fn)
                if (fn.startswith(self.workdir + os.sep)) and "site-packages" not in fn:
                    return "%s:%d" % (os.path.relpath(fn, self.workdir), f.f_lineno)
            f = f.f_back
        return None

    def audit(self, event, args):
        if event not in AUDITED or self.in_command or self.busy:
            return
        self.busy = True
        try:
            self.audited(event, args)
        finally:
            self.busy = False

    def audited(self, event, args):
        if event == "open":
            if not args or isinstance(args[0], int):
                return
            where = self.user_frame()
            if where is None:
                return
            path = os.path.abspath(os.fspath(args[0]))
            if path.endswith(".pyc"):
                try:
                    import importlib.util

                    path = importlib.util.source_from_cache(path)
                except ValueError:
                    pass
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            write = bool(flags & (os.O_WRONLY | os.O_RDWR))
            self.emit({"kind": "write" if write else "read", "path": path, "from": where})
        elif event == "subprocess.Popen":
            where = self.user_frame()
            if where is None:
                return
            argv = args[1] if len(args) > 1 else None
            if isinstance(argv, (str, bytes, os.PathLike)):
                argv = [os.fsdecode(argv)]
            argv = [os.fsdecode(a) for a in argv] if argv else []
            self.emit({"kind": "subprocess", "argv": argv, "cwd": os.getcwd(), "from": where})
        elif event in ("os.listdir", "os.scandir"):
            if args and isinstance(args[0], int):
                return
            where = self.user_frame()
            if where is None:
                return
            path = os.path.abspath(os.fspath(args[0]) if args and args[0] is not None else ".")
            if self.inside(path):
                self.emit({"kind": "listing", "path": path, "from": where})
        elif event == "urllib.Request":
            where = self.user_frame()
            if where is None:
                return
            url = args[0] if args else ""
            self.emit({"kind": "network", "url": str(url)[:500], "from": where})


AUDITED = {"open", "subprocess.Popen", "urllib.Request", "os.listdir", "os.scandir"}


def uv_export_args(argv):
    """`uv export` arguments reproducing the selection of a `uv sync` / `uv run` command,
    or None when argv is not one."""
    if not argv or os.path.basename(argv[0]) not in ("uv", "uvx"):
        return None
    rest = list(argv[1:])
    # Global options may precede the subcommand.
    while rest and rest[0].startswith("-"):
        opt = rest.pop(0)
        if opt in UV_VALUE_OPTIONS and "=" not in opt and rest:
            rest.pop(0)
    if not rest or rest[0] not in ("sync", "run"):
        return None
    out = ["export", "--frozen", "--format", "requirements.txt", "--no-header", "--no-annotate"]
    rest = rest[1:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok == "--":
            break
        if not tok.startswith("-"):
            break  # `uv run CMD ...`: the command starts
        name, eq, value = tok.partition("=")
        if name in SYNC_TO_EXPORT_FLAGS:
            out.append(SYNC_TO_EXPORT_FLAGS[name])
        elif name in SYNC_TO_EXPORT_VALUES:
            if not eq:
                if i >= len(rest):
                    break
                value = rest[i]
                i += 1
            out += [SYNC_TO_EXPORT_VALUES[name], value]
        elif name in UV_VALUE_OPTIONS and not eq:
            i += 1
    return out


def cmd_record(out_path, execute, nox_args):
    import nox.command
    import nox.sessions

    rec = Recorder(out_path, execute)
    orig_run = nox.command.run

    def run(args, **kw):
        return rec.run(orig_run, args, **kw)

    nox.command.run = run
    orig_execute = nox.sessions.SessionRunner.execute

    def run_session(self, *a, **kw):
        rec.session = self.friendly_name
        result = orig_execute(self, *a, **kw)
        status = getattr(getattr(result, "status", None), "name", None)
        rec.emit({"kind": "result", "status": status, "reason": getattr(result, "reason", None)})
        rec.session = None
        return result

    nox.sessions.SessionRunner.execute = run_session
    rec.watch_stats()
    if not execute:
        # A dry run plans a fresh build: never reuse, and never delete, a venv already
        # at envdir (the local builder's envdir may hold venvs in use).
        import nox.virtualenv

        for cls in (getattr(nox.virtualenv, n, None) for n in ("VirtualEnv", "CondaEnv")):
            if cls is not None and hasattr(cls, "_clean_location"):
                cls._clean_location = lambda self: True
    sys.addaudithook(rec.audit)
    import nox

    if hasattr(getattr(nox, "options", None), "parallel"):
        # nox >= 2026.8 runs --parallel sessions in child processes the patches miss.
        nox_args = ["--parallel=1", *nox_args]
    return _nox_main(nox_args)


# --------------------------------------------------------------------------------------
# plan: one call per plan, so a container builder starts one container


def cmd_plan(spec_path, outdir):
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    me = [sys.executable, os.path.abspath(__file__)]
    envdir = spec["envdir"]
    result = {"hook": HOOK_VERSION, "groups": [], "exports": []}
    listing_path = os.path.join(outdir, "sessions.json")
    p = subprocess.run([*me, "list", listing_path, "--", "--envdir", envdir])
    if p.returncode != 0:
        result["error"] = "list"
        result["code"] = p.returncode
        _write_json(os.path.join(outdir, "plan.json"), result)
        return 0
    with open(listing_path, encoding="utf-8") as f:
        listed = json.load(f)["sessions"]
    result["list_events"] = "sessions.json.events"

    def matches(name, s):
        return name == s["session"] or name == s["name"] or name in s["signatures"]

    for gi, group in enumerate(spec["groups"]):
        wanted = group.get("sessions") or []
        chosen = []
        for s in listed:
            hit = (group.get("default") and s["selected"]) or any(matches(n, s) for n in wanted)
            if hit and s["session"] not in chosen:
                chosen.append(s["session"])
        entry = {"sessions": chosen, "records": None}
        if chosen:
            out = os.path.join(outdir, "group-%d.jsonl" % gi)
            args = ["--envdir", envdir, "--no-color", "--no-error-on-missing-interpreters", "-s", *chosen]
            if not group.get("run"):
                args.append("--install-only")
            elif group.get("posargs"):
                args += ["--", *group["posargs"]]
            env = dict(os.environ)
            env.update(group.get("env") or {})
            q = subprocess.run([*me, "record", out, "--", *args], env=env)
            entry["records"] = os.path.basename(out)
            entry["code"] = q.returncode
        result["groups"].append(entry)

    for ex in spec.get("exports", []):
        uv = shutil.which("uv")
        rec = {"id": ex["id"]}
        if uv is None:
            rec["error"] = "uv not found"
        else:
            env = dict(os.environ, UV_OFFLINE="1")
            q = subprocess.run([uv, *ex["args"]], capture_output=True, text=True, env=env)
            if q.returncode == 0:
                rec["output"] = q.stdout
            else:
                rec["error"] = q.stderr.strip()[-2000:]
        result["exports"].append(rec)
    _write_json(os.path.join(outdir, "plan.json"), result)
    return 0


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def main(argv):
    # PEP 723 script mode re-execs nox in a venv of its own, which escapes the patches.
    os.environ["NOX_SCRIPT_MODE"] = "none"
    if len(argv) >= 3 and argv[0] == "plan":
        return cmd_plan(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "list":
        rest = argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return cmd_list(argv[1], rest)
    if len(argv) >= 2 and argv[0] == "record":
        rest = argv[2:]
        execute = False
        if rest[:1] == ["--exec"]:
            execute = True
            rest = rest[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return cmd_record(argv[1], execute, rest)
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    # The hook's own folder must not shadow modules the noxfile imports.
    if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        sys.path.pop(0)
    sys.exit(main(sys.argv[1:]))
