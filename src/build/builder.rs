//! Builders run the session's build script: in the base image (podman / docker, pulled by
//! digest, the project copied to `workdir`, a fresh host folder at `envdir`), or on this
//! machine at the real envdir path (`local`, for a CI job already running in the base).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::BuilderKind;
use crate::printer::Printer;

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
    pub platform: &'a str,
    /// Host folder holding the project copy (container builders), or the project itself
    /// (local builder, which must already be at `workdir`).
    pub project: &'a Path,
    pub workdir: &'a str,
    /// Host folder mounted at `envdir` (container builders); ignored by `local`.
    pub envdir_host: &'a Path,
    pub envdir: &'a str,
    pub script: &'a Path,
    pub env: BTreeMap<String, String>,
    /// A CA bundle for package downloads, mounted read-only and named by SSL_CERT_FILE.
    pub ca_file: Option<&'a Path>,
    pub log: &'a Path,
}

#[derive(Debug)]
pub struct BuildOutcome {
    pub success: bool,
    pub code: Option<i32>,
    /// The build's whole output (also in `log`), for diagnosing failures.
    pub output: String,
}

const CA_IN_CONTAINER: &str = "/etc/venvimg/ca-certificates.crt";
const SCRIPT_IN_CONTAINER: &str = "/etc/venvimg/build.sh";

/// The command line a builder runs. Pure, so the docker and podman shapes are unit-tested
/// without an engine.
pub fn command_line(job: &BuildJob) -> Vec<String> {
    let mut env = job.env.clone();
    match job.kind {
        BuilderKind::Podman | BuilderKind::Docker => {
            let engine = job.kind.as_str();
            let mut c = vec![
                engine.to_string(),
                "run".into(),
                "--rm".into(),
                "--pull=missing".into(),
                format!("--platform={}", job.platform),
                "-v".into(),
                format!("{}:{}", job.project.display(), job.workdir),
                "-v".into(),
                format!("{}:{}", job.envdir_host.display(), job.envdir),
                "-v".into(),
                format!("{}:{}:ro", job.script.display(), SCRIPT_IN_CONTAINER),
                "-w".into(),
                job.workdir.to_string(),
            ];
            if job.kind == BuilderKind::Podman && job.insecure_pull {
                c.push("--tls-verify=false".into());
            }
            if let Some(ca) = job.ca_file {
                c.push("-v".into());
                c.push(format!("{}:{}:ro", ca.display(), CA_IN_CONTAINER));
                for k in ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"] {
                    env.insert(k.into(), CA_IN_CONTAINER.into());
                }
            }
            for (k, v) in &env {
                c.push("-e".into());
                c.push(format!("{k}={v}"));
            }
            c.push(job.image.to_string());
            c.push("/bin/sh".into());
            c.push(SCRIPT_IN_CONTAINER.into());
            c
        }
        BuilderKind::Local => vec!["/bin/sh".into(), job.script.display().to_string()],
    }
}

/// Run the build, streaming its output to the log file (and to stderr with -v).
pub fn run(job: &BuildJob, printer: &Printer) -> std::io::Result<BuildOutcome> {
    let argv = command_line(job);
    printer.verbose(format!("$ {}", argv.join(" ")));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if job.kind == BuilderKind::Local {
        cmd.current_dir(job.project);
        for (k, v) in &job.env {
            cmd.env(k, v);
        }
        if let Some(ca) = job.ca_file {
            for k in ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"] {
                cmd.env(k, ca);
            }
        }
    }
    let mut child = cmd.spawn()?;
    let mut log = std::fs::File::create(job.log)?;
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

/// A command run in the base image with the project mounted read-only and no network:
/// how `nox --list` and `uv export` ask the image when this machine cannot answer.
pub fn in_base_image(
    engine: &str,
    image: &str,
    insecure: bool,
    project_dir: &Path,
    env: &[(&str, &str)],
    program: &str,
) -> Command {
    let abs = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
    let mut c = Command::new(engine);
    c.args(["run", "--rm", "--network", "none", "--pull=missing"]);
    if insecure && engine == "podman" {
        c.arg("--tls-verify=false");
    }
    c.arg("-v")
        .arg(format!("{}:/venvimg-project:ro", abs.display()))
        .args(["-w", "/venvimg-project"]);
    for (k, v) in env {
        c.arg("-e").arg(format!("{k}={v}"));
    }
    c.arg(image).arg(program);
    c
}

/// Is the engine there at all? Checked before planning builds so the error says what to
/// install rather than "No such file".
pub fn engine_available(kind: BuilderKind) -> bool {
    let program = match kind {
        BuilderKind::Local => "nox",
        other => other.as_str(),
    };
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Copy the project for a container build, so the user's tree is never modified. Skips
/// what is never part of a build (venvs, caches) but keeps `.git`: VCS-derived versions
/// need it.
pub fn copy_project(src: &Path, dst: &Path) -> std::io::Result<()> {
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
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let from = entry.path();
        let to: PathBuf = dst.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_project(&from, &to)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from)?;
            std::os::unix::fs::symlink(target, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_podman_command_shapes() {
        let job = |kind| BuildJob {
            kind,
            image: "reg.invalid/base@sha256:00",
            insecure_pull: true,
            platform: "linux/amd64",
            project: Path::new("/tmp/w/src"),
            workdir: "/src",
            envdir_host: Path::new("/tmp/w/envdir"),
            envdir: "/opt/nox",
            script: Path::new("/tmp/w/build.sh"),
            env: reproducible_env(1),
            ca_file: Some(Path::new("/etc/ssl/certs/ca-certificates.crt")),
            log: Path::new("/tmp/w/log"),
        };
        let p = command_line(&job(BuilderKind::Podman));
        assert_eq!(&p[..2], &["podman", "run"]);
        assert!(p.contains(&"/tmp/w/envdir:/opt/nox".to_string()));
        assert!(p.contains(&"/tmp/w/src:/src".to_string()));
        assert!(p.contains(&"--tls-verify=false".to_string()));
        assert!(p.contains(&"SOURCE_DATE_EPOCH=1".to_string()));
        assert!(p.contains(&format!("SSL_CERT_FILE={CA_IN_CONTAINER}")));
        let d = command_line(&job(BuilderKind::Docker));
        assert_eq!(&d[..2], &["docker", "run"]);
        // docker has no --tls-verify; insecure registries are daemon configuration.
        assert!(!d.iter().any(|a| a.starts_with("--tls-verify")));
        assert_eq!(d.last().map(String::as_str), Some(SCRIPT_IN_CONTAINER));
    }
}
