//! Builders run the session's build script: in the base image (podman / docker, pulled by
//! digest, the project copied to `workdir`, a fresh host folder at `envdir`), or on this
//! machine at the real envdir path (`local`, for a CI job already running in the base).
//! The engine is the only code that starts a container; `script` is what runs in it.

pub mod script;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::{BuilderKind, Config};
use crate::error::{Error, UsageError};
use crate::image::BaseImage;
use crate::model::Platform;
use crate::printer::Reporter;
use crate::python::hook::{self, PlanOutput, PlanSpec};
use crate::python::nox::NoxError;

/// Environment every build gets, for byte-stable output.
pub fn reproducible_env(source_date_epoch: u64) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("SOURCE_DATE_EPOCH".into(), source_date_epoch.to_string());
    env.insert("PYTHONHASHSEED".into(), "0".into());
    // Not UV_NO_INSTALLER_METADATA: it also drops direct_url.json, which is how nox's
    // installs say what is editable (and how venvimg finds the project frozen in a venv).
    // The build script removes the one unstable file, uv_cache.json, instead.
    // nox's own default is to compile nothing with uv; our script compiles once, sorted.
    env.insert("UV_COMPILE_BYTECODE".into(), "0".into());
    env.insert("PIP_NO_COMPILE".into(), "1".into());
    env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
    env.insert("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into());
    env.insert("CI".into(), "1".into());
    // A Python uv downloads lives outside the image's interpreter paths: the job
    // container would not have it and nox would recreate the venv. Use the base's Pythons
    // only, so a missing one is an error, not a silent download.
    env.insert("UV_PYTHON_DOWNLOADS".into(), "never".into());
    env
}

/// One build: where things are and what to run.
pub struct BuildJob<'a> {
    pub kind: BuilderKind,
    /// The base image pinned by digest (container builders).
    pub image: &'a str,
    /// `--tls-verify=false` when pulling the base (loopback / insecure registries).
    pub insecure_pull: bool,
    pub platform: &'a Platform,
    /// Host folder holding the project copy (container builders), or the project itself
    /// (local builder, which must already be at `workdir`).
    pub project: &'a Path,
    pub workdir: &'a str,
    /// Host folder mounted at `envdir` (container builders); ignored by `local`.
    pub envdir_host: &'a Path,
    pub envdir: &'a str,
    /// The folder with the build scripts and venvimg's hook (mounted read-only).
    pub hook_dir: &'a Path,
    /// The script to run, a file in `hook_dir`.
    pub script: &'a str,
    /// Where the hook writes its record (mounted read-write).
    pub out_dir: &'a Path,
    /// The environment file handed to the engine: values never go on a command line
    /// another process can read.
    pub env_file: &'a Path,
    pub env: BTreeMap<String, String>,
    /// A CA bundle for package downloads, mounted read-only and named by SSL_CERT_FILE.
    pub ca_file: Option<&'a Path>,
    pub log: &'a Path,
    /// The container's name (container builders), so a cancel can stop it.
    pub name: &'a str,
    /// Values masked in every line of the build's output venvimg prints or keeps.
    pub secrets: &'a [String],
    /// The build container's network (`--network`): None for the engine's default.
    pub network: Option<&'a str>,
}

#[derive(Debug)]
pub struct BuildOutcome {
    pub success: bool,
    pub code: Option<i32>,
    /// The build's whole output (also in `log`), for diagnosing failures.
    pub output: String,
}

const CA_IN_CONTAINER: &str = "/etc/venvimg-ca/ca-certificates.crt";

impl BuildJob<'_> {
    /// Every variable of the build: the job's, where the hook and its output are, and the
    /// CA bundle's names.
    fn full_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        let (hook, out, ca) = match self.kind {
            BuilderKind::Local => (
                self.hook_dir.display().to_string(),
                self.out_dir.display().to_string(),
                self.ca_file.map(|c| c.display().to_string()),
            ),
            _ => (
                HOOK_DIR_IN_CONTAINER.to_string(),
                OUT_DIR_IN_CONTAINER.to_string(),
                self.ca_file.map(|_| CA_IN_CONTAINER.to_string()),
            ),
        };
        env.insert("VENVIMG_HOOK".into(), hook);
        env.insert("VENVIMG_OUT".into(), out);
        if let Some(ca) = ca {
            for k in ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"] {
                env.insert(k.into(), ca.clone());
            }
        }
        env
    }
}

/// The command line a builder runs. Pure, so the docker and podman shapes are unit-tested
/// without an engine. It names the environment file, never a value.
pub fn command_line(job: &BuildJob) -> Vec<String> {
    match job.kind {
        BuilderKind::Podman | BuilderKind::Docker => {
            let engine = job.kind.as_str();
            let mut c = vec![
                engine.to_string(),
                "run".into(),
                "--rm".into(),
                "--pull=missing".into(),
                format!("--name={}", job.name),
                format!("--platform={}", job.platform),
                "-v".into(),
                format!("{}:{}", job.project.display(), job.workdir),
                "-v".into(),
                format!("{}:{}", job.envdir_host.display(), job.envdir),
                "-v".into(),
                format!("{}:{HOOK_DIR_IN_CONTAINER}:ro", job.hook_dir.display()),
                "-v".into(),
                format!("{}:{OUT_DIR_IN_CONTAINER}", job.out_dir.display()),
                "-w".into(),
                job.workdir.to_string(),
                "--env-file".into(),
                job.env_file.display().to_string(),
            ];
            if job.kind == BuilderKind::Podman && job.insecure_pull {
                c.push("--tls-verify=false".into());
            }
            if let Some(n) = job.network {
                c.push(format!("--network={n}"));
            }
            if let Some(ca) = job.ca_file {
                c.push("-v".into());
                c.push(format!("{}:{}:ro", ca.display(), CA_IN_CONTAINER));
            }
            c.push(job.image.to_string());
            c.push("/bin/sh".into());
            c.push(format!("{HOOK_DIR_IN_CONTAINER}/{}", job.script));
            c
        }
        BuilderKind::Local => vec![
            "/bin/sh".into(),
            job.hook_dir.join(job.script).display().to_string(),
        ],
    }
}

/// `NAME=value` lines for `--env-file` (0600). A value with a newline cannot be written
/// there and is refused.
fn write_env_file(path: &Path, env: &BTreeMap<String, String>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (k, v) in env {
        if v.contains('\n') || k.contains('=') || k.contains('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the build variable {k} has a newline or `=` in its name or a newline in its value"),
            ));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Run the build, streaming its output to the log file (and to stderr with -v).
pub fn run(job: &BuildJob, printer: &dyn Reporter) -> std::io::Result<BuildOutcome> {
    let argv = command_line(job);
    let env = job.full_env();
    printer.verbose(format!(
        "$ {} (environment: {})",
        argv.join(" "),
        env.keys().cloned().collect::<Vec<_>>().join(" ")
    ));
    let mut cmd = crate::process::command(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if job.kind == BuilderKind::Local {
        // Project code runs here: it gets what tools need, never venvimg's credentials.
        cmd.current_dir(job.project)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| host_env_allowed(k)))
            .envs(&env);
    } else {
        write_env_file(job.env_file, &env)?;
    }
    // Registered while the container runs, so a cancel stops it.
    let _guard = (job.kind != BuilderKind::Local)
        .then(|| crate::cancel::ContainerGuard::named(job.kind.as_str(), job.name));
    let mut child = cmd.spawn()?;
    let mut log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(job.log)?
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    let t = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let t2 = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut output = String::new();
    for line in rx {
        // A noxfile or an installer may print a secret the build was given (an index URL
        // with a token): never into venvimg's output or its logs.
        let line = crate::python::inputs::mask(&line, job.secrets);
        let _ = writeln!(log, "{line}");
        printer.verbose(format!("  | {line}"));
        output.push_str(&line);
        output.push('\n');
    }
    let _ = t.join();
    let _ = t2.join();
    let status = child.wait()?;
    Ok(BuildOutcome {
        success: status.success(),
        code: status.code(),
        output,
    })
}

/// Where venvimg's nox hook runs for a plan: in the base image for container builders
/// (nothing of the project runs on this machine), on this machine for `builder: local`.
#[derive(Debug, Clone)]
pub struct HookPlace {
    pub kind: BuilderKind,
    /// The base image pinned by digest.
    pub image: String,
    pub insecure_pull: bool,
    pub platform: Platform,
    /// The fixed build environment, so the noxfile sees what it will see in the build.
    pub env: BTreeMap<String, String>,
}

impl HookPlace {
    pub fn for_config(config: &Config, base: &BaseImage) -> HookPlace {
        let base_registry = config.base.resolve_registry();
        HookPlace {
            kind: config.builder,
            image: base.pinned(),
            insecure_pull: crate::registry::is_loopback(base_registry)
                || config
                    .insecure_registries
                    .iter()
                    .any(|r| r == base_registry),
            platform: config.platform.clone(),
            env: reproducible_env(crate::layer::DEFAULT_SOURCE_DATE_EPOCH),
        }
    }

    fn describe(&self) -> String {
        match self.kind {
            BuilderKind::Local => "nox on this machine".into(),
            _ => format!("base image {}", self.image),
        }
    }
}

/// Where the hook mounts things in a container.
const HOOK_DIR_IN_CONTAINER: &str = "/etc/venvimg";
const OUT_DIR_IN_CONTAINER: &str = "/venvimg-out";

/// What the environment of a process running project code on this machine keeps (the
/// local builder): what tools need to find things, never venvimg's credentials.
pub fn host_env_allowed(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TZ",
        "TMPDIR",
        "TERM",
        "SHELL",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "CI",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ];
    const PREFIXES: &[&str] = &["LC_", "PIP_", "UV_", "PYENV_", "XDG_", "VIRTUALENV_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// List the noxfile's sessions and dry-run the wanted ones with venvimg's hook: in the
/// base image with the network off and the project read-only (container builders), or
/// on this machine with an environment cleared of credentials (local). Returns what the
/// hook found and the path the project had where it ran.
pub fn run_hook_plan(
    place: &HookPlace,
    project_dir: &Path,
    workdir: &str,
    envdir: &str,
    spec: &PlanSpec,
) -> Result<(PlanOutput, String), Error> {
    let noxfile = project_dir.join(crate::config::NOXFILE);
    let io = |context: &str, source: std::io::Error| NoxError::Spawn {
        noxfile: noxfile.clone(),
        source: std::io::Error::new(source.kind(), format!("{context}: {source}")),
    };
    let dirs = HookDirs::make(spec, &io)?;
    let abs = mountable_checkout(place.kind, project_dir)?;
    // Registered while the container runs, so a cancel stops it.
    let mut container: Option<crate::cancel::ContainerGuard> = None;
    let (mut cmd, seen_workdir) = match place.kind {
        BuilderKind::Local => (
            dirs.local_command(place, &abs, envdir),
            abs.display().to_string(),
        ),
        BuilderKind::Podman | BuilderKind::Docker => (
            dirs.container_command(place, &abs, workdir, envdir, &mut container),
            workdir.to_string(),
        ),
    };
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| io(&format!("running {}", place.kind), e))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = |code: i32| plan_failed(&noxfile, place, &output, code);
    if !out.status.success() {
        return Err(failed(out.status.code().unwrap_or(-1)));
    }
    match hook::read_plan(&dirs.out_dir) {
        Ok(p) => Ok((p, seen_workdir)),
        Err(hook::HookError::ListFailed { code }) => Err(failed(code as i32)),
        Err(e) => Err(NoxError::Hook(e).into()),
    }
}

/// The hook's folders for one plan run, in a temp folder removed when this is dropped:
/// the hook's files, and where it writes what it found.
struct HookDirs {
    _tmp: crate::cancel::TempDir,
    hook_dir: PathBuf,
    out_dir: PathBuf,
}

impl HookDirs {
    fn make(
        spec: &PlanSpec,
        io: &dyn Fn(&str, std::io::Error) -> NoxError,
    ) -> Result<HookDirs, NoxError> {
        let tmp = crate::cancel::tempdir("plan").map_err(|e| io("creating a temp folder", e))?;
        let hook_dir = tmp.path().join("hook");
        let out_dir = tmp.path().join("out");
        fs_err::create_dir(&hook_dir).map_err(|e| io("creating the hook folder", e))?;
        fs_err::create_dir(&out_dir).map_err(|e| io("creating the output folder", e))?;
        hook::write_files(&hook_dir, Some(spec)).map_err(|e| io("writing the hook", e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The container's user (root, or the image's USER) writes here; the 0700 temp
            // folder around it keeps everyone else out.
            fs_err::set_permissions(
                &out_dir,
                std::fs::Permissions::from_mode(crate::cancel::CONTAINER_OUT_MODE),
            )
            .map_err(|e| io("preparing the output folder", e))?;
        }
        Ok(HookDirs {
            _tmp: tmp,
            hook_dir,
            out_dir,
        })
    }

    /// The hook run on this machine, in the checkout `abs`, with only the allowed part of
    /// this environment.
    fn local_command(&self, place: &HookPlace, abs: &Path, envdir: &str) -> std::process::Command {
        let mut c = crate::process::command("/bin/sh");
        c.arg(self.hook_dir.join(hook::LAUNCHER_FILE))
            .arg("plan")
            .arg(self.hook_dir.join(hook::SPEC_FILE))
            .arg(&self.out_dir)
            .current_dir(abs)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| host_env_allowed(k)))
            .envs(&place.env)
            .env("VENVIMG_WORKDIR", abs)
            .env("VENVIMG_ENVDIR", envdir)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    }

    /// The hook run in the base image: no network, the checkout `abs` read-only at
    /// `workdir`, `envdir` a tmpfs. The container's guard goes into `container`.
    fn container_command(
        &self,
        place: &HookPlace,
        abs: &Path,
        workdir: &str,
        envdir: &str,
        container: &mut Option<crate::cancel::ContainerGuard>,
    ) -> std::process::Command {
        let mut c = crate::process::command(place.kind.as_str());
        c.args(["run", "--rm", "--network", "none", "--pull=missing"])
            .arg(format!(
                "--name={}",
                container
                    .insert(crate::cancel::ContainerGuard::new(place.kind.as_str()))
                    .name
            ))
            .arg(format!("--platform={}", place.platform));
        if place.insecure_pull && place.kind == BuilderKind::Podman {
            c.arg("--tls-verify=false");
        }
        c.arg("-v")
            .arg(format!("{}:{workdir}:ro", abs.display()))
            .arg("-v")
            .arg(format!(
                "{}:{HOOK_DIR_IN_CONTAINER}:ro",
                self.hook_dir.display()
            ))
            .arg("-v")
            .arg(format!("{}:{OUT_DIR_IN_CONTAINER}", self.out_dir.display()))
            .arg("--tmpfs")
            .arg(envdir)
            .args(["-w", workdir]);
        for (k, v) in place.env.iter().chain([
            (&"VENVIMG_WORKDIR".to_string(), &workdir.to_string()),
            (&"VENVIMG_ENVDIR".to_string(), &envdir.to_string()),
            (&"PYTHONDONTWRITEBYTECODE".to_string(), &"1".to_string()),
        ]) {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        c.arg(&place.image)
            .arg("/bin/sh")
            .arg(format!("{HOOK_DIR_IN_CONTAINER}/{}", hook::LAUNCHER_FILE))
            .arg("plan")
            .arg(format!("{HOOK_DIR_IN_CONTAINER}/{}", hook::SPEC_FILE))
            .arg(OUT_DIR_IN_CONTAINER);
        c
    }
}

/// The hook's run failed with `code`: a module the noxfile imports is missing where it
/// ran, or anything else (the end of its `output`).
fn plan_failed(noxfile: &Path, place: &HookPlace, output: &str, code: i32) -> Error {
    if let Some(module) = crate::python::nox::missing_module(output) {
        return NoxError::MissingModule {
            noxfile: noxfile.to_path_buf(),
            module,
            place: place.describe(),
        }
        .into();
    }
    NoxError::Failed {
        noxfile: noxfile.to_path_buf(),
        place: place.describe(),
        code,
        stderr: tail_lines(output, 30),
    }
    .into()
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Is the engine there at all? Checked before planning builds so the error says what to
/// install rather than "No such file".
pub fn engine_available(kind: BuilderKind) -> bool {
    let program = match kind {
        BuilderKind::Local => "nox",
        other => other.as_str(),
    };
    crate::process::command(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Copy the project for a container build, so the user's tree is never modified. Skips
/// what is never part of a build (venvs, caches) but keeps `.git`: VCS-derived versions
/// need it — without the credentials a CI checkout leaves in `.git/config`.
pub fn copy_project(src: &Path, dst: &Path) -> std::io::Result<()> {
    copy_tree(src, dst)?;
    let config = dst.join(".git/config");
    if fs_err::symlink_metadata(&config).is_ok_and(|m| m.is_file()) {
        let text = fs_err::read_to_string(&config)?;
        fs_err::write(&config, scrub_git_config(&text))?;
    }
    Ok(())
}

/// `.git/config` without what authenticates: actions/checkout's
/// `http.<url>.extraheader = AUTHORIZATION: basic ...`, `[credential]` sections, and the
/// user:token part of remote URLs. The build needs the history (VCS versions), never a
/// way to push.
pub fn scrub_git_config(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_credential = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(section) = t.strip_prefix('[') {
            in_credential = section
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("credential");
            if in_credential {
                continue;
            }
        } else if in_credential {
            continue;
        }
        let key = t
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if key == "extraheader" || key.ends_with(".extraheader") {
            continue;
        }
        if key == "url" || key == "pushurl" {
            out.push_str(&strip_userinfo(line));
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `scheme://user:token@host/...` → `scheme://host/...` (a bare `token@` is a secret too).
fn strip_userinfo(line: &str) -> String {
    let Some(i) = line.find("://") else {
        return line.to_string();
    };
    let (head, tail) = line.split_at(i + 3);
    let end = tail.find(['/', ' ', '"', '\'']).unwrap_or(tail.len());
    match tail[..end].rfind('@') {
        Some(at) => format!("{head}{}", &tail[at + 1..]),
        None => line.to_string(),
    }
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    const SKIP: &[&str] = &[
        ".nox",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".tox",
        "target",
        "node_modules",
    ];
    fs_err::create_dir_all(dst)?;
    for entry in fs_err::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let from = entry.path();
        let to: PathBuf = dst.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs_err::read_link(&from)?;
            fs_err::os::unix::fs::symlink(target, &to)?;
        } else if ft.is_file() {
            fs_err::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// A container from a session's job image with the checkout mounted: what `venvimg run`
/// and `venvimg shell` start.
pub struct JobRun<'a> {
    /// podman or docker.
    pub engine: BuilderKind,
    /// `name:tag@digest`.
    pub image: &'a str,
    pub platform: &'a Platform,
    /// The registry is plain HTTP or loopback (podman pulls with --tls-verify=false).
    pub insecure_pull: bool,
    pub checkout: &'a Path,
    pub workdir: &'a str,
    pub network: bool,
    /// Relabel the checkout mount for SELinux (`:z`).
    pub relabel: bool,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

/// The engine's command line for `job`. A terminal gets `-it`; a non-root caller keeps
/// its own uid in the container (podman `--userns=keep-id`, docker `--user`), so files a
/// session writes into the checkout are the caller's.
pub fn job_command_line(
    job: &JobRun,
    name: &str,
    interactive: bool,
    uid: u32,
    gid: u32,
) -> Vec<String> {
    let mut c = vec![
        job.engine.as_str().to_string(),
        "run".into(),
        "--rm".into(),
        "--pull=missing".into(),
        format!("--name={name}"),
        format!("--platform={}", job.platform),
    ];
    if interactive {
        c.push("-it".into());
    }
    if !job.network {
        c.push("--network=none".into());
    }
    if job.engine == BuilderKind::Podman && job.insecure_pull {
        c.push("--tls-verify=false".into());
    }
    if uid != 0 {
        match job.engine {
            BuilderKind::Podman => c.push("--userns=keep-id".into()),
            _ => c.push(format!("--user={uid}:{gid}")),
        }
    }
    let label = if job.relabel { ":z" } else { "" };
    c.push("-v".into());
    c.push(format!("{}:{}{label}", job.checkout.display(), job.workdir));
    c.push("-w".into());
    c.push(job.workdir.to_string());
    for (k, v) in &job.env {
        c.push("-e".into());
        c.push(format!("{k}={v}"));
    }
    c.push(job.image.to_string());
    c.extend(job.command.iter().cloned());
    c
}

/// Run `job` with this terminal (stdin, stdout, stderr inherited); the container's exit
/// code. Registered so a cancel removes it.
pub fn run_job(job: &JobRun, printer: &dyn Reporter) -> std::io::Result<i32> {
    use std::io::IsTerminal;
    let name = crate::cancel::container_name();
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let argv = job_command_line(job, &name, interactive, uid, gid);
    printer.verbose(format!("$ {}", argv.join(" ")));
    let _guard = crate::cancel::ContainerGuard::named(job.engine.as_str(), &name);
    let status = crate::process::command(&argv[0])
        .args(&argv[1..])
        .status()?;
    // A container killed by a signal has no code: the shell's convention, 128 + signal.
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    }))
}

/// The container engine installed here: podman if `podman --version` works, else docker
/// if `docker --version` does; None when neither runs.
pub fn installed_engine() -> Option<BuilderKind> {
    let works = |program: &str| {
        crate::process::command(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("podman") {
        Some(BuilderKind::Podman)
    } else if works("docker") {
        Some(BuilderKind::Docker)
    } else {
        None
    }
}

/// The checkout `dir`, resolved, that `engine` will bind-mount: a usage error (exit 2)
/// when it cannot (see [`unmountable`]), an I/O error naming the folder when it does not
/// resolve. Every command checks here before it plans or starts a container.
pub fn mountable_checkout(engine: BuilderKind, dir: &Path) -> Result<PathBuf, Error> {
    let abs = fs_err::canonicalize(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    match unmountable(engine, &abs) {
        Some(why) => Err(why.into()),
        None => Ok(abs),
    }
}

/// Why `engine` cannot bind-mount the checkout `path` into a container, or None when it
/// can. Both engines split `-v SRC:DST[:OPTS]` on `:` (and podman's `--mount` on `,`), so
/// such a path would mount the wrong folder or fail with a parse error naming neither;
/// and a Docker daemon reached over TCP or SSH mounts a folder of *its* host, so the
/// container would see an empty checkout.
pub fn unmountable(engine: BuilderKind, path: &Path) -> Option<UsageError> {
    if engine == BuilderKind::Local {
        return None;
    }
    let text = path.to_string_lossy();
    if let Some(c) = text.chars().find(|c| matches!(c, ':' | ',' | '\n')) {
        return Some(UsageError::Path {
            path: path.to_path_buf(),
            why: format!(
                "the checkout holds {c:?}, which {} cannot bind-mount (it splits volume specs on it)\n  hint: move or rename the checkout folder so its path has no {c:?}",
                engine.as_str()
            ),
        });
    }
    if engine == BuilderKind::Docker {
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            let scheme = host.split("://").next().unwrap_or_default();
            if !host.is_empty() && scheme != "unix" && scheme != "npipe" {
                // Only the scheme: the rest of DOCKER_HOST may carry a user name.
                return Some(UsageError::Env {
                    var: "DOCKER_HOST",
                    why: format!(
                        "names a {scheme}:// daemon, which would mount a folder of its own host, not the checkout {}\n  hint: run venvimg on the daemon's host, or use a local engine (unset DOCKER_HOST, or --engine podman)",
                        path.display()
                    ),
                });
            }
        }
    }
    None
}

/// The Docker daemon's version (`docker version`), as (major, minor); None when it does
/// not answer.
pub fn docker_server_version() -> Option<(u32, u32)> {
    let out = crate::process::command("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().split(['.', '+', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Run `f` (a container run, packing) where it does not hold up the runtime's other
/// tasks (registry transfers, the signal handler): `block_in_place` on a multi-thread
/// runtime, directly elsewhere (a current-thread runtime has nothing to hand over to).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// sha256 of everything the builder runs for `session` besides the inputs: the build
/// script, the editable-reinstall script shape, and the fixed build environment.
pub fn recipe_digest(
    config: &crate::config::Config,
    session: &crate::config::SessionConfig,
) -> String {
    use sha2::{Digest, Sha256};
    let venv_dir = crate::python::nox::venv_dir_name(&config.envdir, &session.name);
    let mut h = Sha256::new();
    h.update(script::render(&script::ScriptParams {
        session: &session.name,
        envdir: &config.envdir,
        venv_dir: &venv_dir,
        workdir: &config.workdir,
        build: session.build,
        posargs: &session.posargs,
    }));
    for backend in ["uv", "pip"] {
        h.update(script::render_editable(
            &config.envdir,
            &venv_dir,
            &config.workdir,
            backend,
            std::slice::from_ref(&config.workdir),
        ));
    }
    // The hook runs nox in every build: a change of it is a change of recipe.
    h.update(crate::python::hook::SOURCE);
    h.update(crate::python::hook::LAUNCHER);
    for (k, v) in reproducible_env(crate::layer::DEFAULT_SOURCE_DATE_EPOCH) {
        h.update(format!("{k}={v}\n"));
    }
    hex::encode(h.finalize())
}

/// The engine `--engine FLAG` names, checked; None when not given.
pub fn engine_flag(flag: Option<&str>) -> Result<Option<BuilderKind>, Error> {
    match flag {
        None => Ok(None),
        Some("podman") => Ok(Some(BuilderKind::Podman)),
        Some("docker") => Ok(Some(BuilderKind::Docker)),
        Some(other) => Err(UsageError::Flag {
            flag: "--engine",
            value: Some(other.to_string()),
            why: "use podman or docker".into(),
        }
        .into()),
    }
}

/// The container engine that runs job images (run, shell, `build --load`): `--engine`,
/// else the config's builder when it is an engine, else whichever is installed (podman
/// first); a usage error that says what to install when none is.
pub fn job_engine(builder: BuilderKind, flag: Option<&str>) -> Result<BuilderKind, Error> {
    if let Some(engine) = engine_flag(flag)? {
        return Ok(engine);
    }
    match builder {
        BuilderKind::Local => installed_engine().ok_or_else(|| {
            UsageError::Flag {
                flag: "--engine",
                value: None,
                why: "none given, and no container engine runs here to run the job image: neither podman nor docker\n  hint: install one (apt-get install podman) or pass --engine".into(),
            }
            .into()
        }),
        k => Ok(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_project_copy_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-project");
        let err = copy_project(&missing, &tmp.path().join("copy")).unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn docker_and_podman_command_shapes() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let job = |kind| BuildJob {
            kind,
            image: "reg.invalid/base@sha256:00",
            insecure_pull: true,
            platform: &amd64,
            project: Path::new("/tmp/w/src"),
            workdir: "/src",
            envdir_host: Path::new("/tmp/w/envdir"),
            envdir: "/opt/nox",
            hook_dir: Path::new("/tmp/w/hook"),
            script: "build.sh",
            out_dir: Path::new("/tmp/w/out"),
            env_file: Path::new("/tmp/w/env"),
            env: reproducible_env(1),
            ca_file: Some(Path::new("/etc/ssl/certs/ca-certificates.crt")),
            log: Path::new("/tmp/w/log"),
            name: "venvimg-1-0",
            secrets: &[],
            network: None,
        };
        let p = command_line(&job(BuilderKind::Podman));
        assert_eq!(&p[..2], &["podman", "run"]);
        assert!(p.contains(&"/tmp/w/envdir:/opt/nox".to_string()));
        assert!(p.contains(&"/tmp/w/src:/src".to_string()));
        assert!(p.contains(&"--tls-verify=false".to_string()));
        assert!(p.contains(&"/tmp/w/env".to_string()));
        // Values go through the environment file, never the command line.
        assert!(!p.iter().any(|a| a.contains("SOURCE_DATE_EPOCH")), "{p:?}");
        let env = job(BuilderKind::Podman).full_env();
        assert_eq!(env["SSL_CERT_FILE"], CA_IN_CONTAINER);
        assert_eq!(env["VENVIMG_HOOK"], HOOK_DIR_IN_CONTAINER);
        let d = command_line(&job(BuilderKind::Docker));
        assert_eq!(&d[..2], &["docker", "run"]);
        // docker has no --tls-verify; insecure registries are daemon configuration.
        assert!(!d.iter().any(|a| a.starts_with("--tls-verify")));
        assert_eq!(d.last().map(String::as_str), Some("/etc/venvimg/build.sh"));
    }

    #[test]
    fn git_config_loses_its_credentials() {
        let cfg = "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://x-access-token:SECRET1@example.invalid/o/r\n[http \"https://example.invalid/\"]\n\textraheader = AUTHORIZATION: basic SECRET2\n[credential]\n\thelper = store\n\tusername = SECRET3\n[branch \"main\"]\n\tremote = origin\n";
        let out = scrub_git_config(cfg);
        for s in ["SECRET1", "SECRET2", "SECRET3", "helper"] {
            assert!(!out.contains(s), "{s} left in:\n{out}");
        }
        assert!(out.contains("url = https://example.invalid/o/r"), "{out}");
        assert!(
            out.contains("[branch \"main\"]") && out.contains("bare = false"),
            "{out}"
        );
    }

    #[test]
    fn env_files_refuse_newlines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        write_env_file(&p, &env).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=1\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        env.insert("B".to_string(), "x\ny".to_string());
        assert!(write_env_file(&p, &env).is_err());
    }
}
