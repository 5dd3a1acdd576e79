//! The error every command returns, and the exit code it maps to: 2 for usage and
//! configuration errors (the user must change something they wrote), 1 for failures.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::python::nox::NoxError;
use crate::registry::RegistryError;
pub use crate::usage::UsageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{file}: unknown session `{name}`{}; the noxfile defines: {}\n  hint: use a name from `nox --list`", did_you_mean(name, &[available.as_slice(), functions.as_slice()].concat()), if available.is_empty() { "(none)".to_string() } else { available.join(", ") })]
    UnknownSession {
        file: PathBuf,
        name: String,
        available: Vec<String>,
        /// The noxfile's function names (each stands for its sessions): suggested too.
        functions: Vec<String>,
    },
    #[error(transparent)]
    Nox(#[from] NoxError),
    /// Boxed: the registry's errors carry several strings and would make every
    /// `Result<_, Error>` as large as they are.
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Locked(#[from] crate::python::locked::LockedError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputError),
    #[error(transparent)]
    Inputs(#[from] crate::python::inputs::InputError),
    /// `venvimg verify`: images the rebuild did not reproduce (or could not rebuild).
    #[error("{} of {total} image(s) not reproduced: {}", images.len(), images.join(", "))]
    NotVerified { images: Vec<String>, total: usize },
    /// Sessions that ran and failed in their job images (`venvimg run`); the exit code is
    /// the first one's (nox's).
    #[error("failed in the job image: {}", failed.iter().map(|(s, c)| format!("session `{s}` (exit {c})")).collect::<Vec<_>>().join(", "))]
    SessionsFailed {
        failed: Vec<(String, i32)>,
        code: i32,
    },
    /// `venvimg inspect --sbom`: no SBOM refers to the image.
    #[error("{image}: no SBOM refers to this image ({looked})\n  hint: `venvimg build` pushes an SBOM with every session image it builds (not with the all-sessions image: each session image's SBOM covers its venv); for an image pushed before, `venvimg build --force -s SESSION` pushes it again with one")]
    NoSbom { image: String, looked: String },
    /// Sessions whose build failed (each reported when it failed); the others were built
    /// and pushed.
    #[error("{} of {total} session(s) failed to build: {}\n  hint: the error of each is above{}", failed.len(), failed.iter().map(|(s, why)| format!("`{s}` ({why})")).collect::<Vec<_>>().join("; "), if failed.len() < *total { "; the others were built (--fail-fast stops at the first failure)" } else { "" })]
    BuildsFailed {
        failed: Vec<(String, String)>,
        total: usize,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::Usage(_)
            | Error::UnknownSession { .. }
            | Error::Locked(crate::python::locked::LockedError::Failed { .. })
            | Error::Nox(crate::python::nox::NoxError::Hook(
                crate::python::hook::HookError::ControlCharacters { .. },
            )) => 2,
            Error::Output(e) => e.exit_code(),
            Error::SessionsFailed { code, .. } => *code,
            _ => 1,
        }
    }
}

impl Error {
    /// One line for a results table or a `--json` field: the first line of the message,
    /// without the log tail a build failure carries below it.
    pub fn summary(&self) -> String {
        match self {
            Error::Build(BuildError::Failed { session, code, .. }) => {
                format!("session `{session}`: the build failed (exit {code})")
            }
            Error::Build(BuildError::NoNetwork { session, .. }) => format!(
                "session `{session}`: the build container has no network (--build-network)"
            ),
            Error::Build(BuildError::UntrustedIndex { session, .. }) => format!(
                "session `{session}`: the build could not verify the package index's TLS certificate (--build-ca)"
            ),
            other => other
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_string(),
        }
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        Error::Registry(Box::new(e))
    }
}

/// Why building a session failed (engine, venv checks, the project's own code).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("builder `{builder}` is not available: `{program} --version` failed\n  hint: {hint}")]
    NoEngine {
        builder: &'static str,
        program: &'static str,
        hint: &'static str,
    },
    #[error("session `{session}`: nox asked for Python {python}, which base image {base} does not have\n  hint: use a base image with that interpreter, or build only sessions whose python it has (--session)")]
    MissingInterpreter {
        session: String,
        python: String,
        base: String,
    },
    #[error("session `{session}`: noxfile.py failed under `nox --install-only` (a traceback from the noxfile):\n{tail}\n  hint: a noxfile that uses a command's output while installing (e.g. `session.run(..., silent=True).strip()`) cannot run install-only; set `build: run` for this session in venvimg.yaml")]
    InstallOnlyTraceback { session: String, tail: String },
    #[error("session `{session}`: the noxfile imports `{module}`, which base image {base} lacks\n  hint: add it to the base image next to nox (see images/README.md)")]
    MissingPlugin {
        session: String,
        module: String,
        base: String,
    },
    #[error("session `{session}`: the build could not verify the package index's TLS certificate; last lines:\n{tail}\n  full log: {log}\n  hint: behind a TLS-inspecting proxy, give the build containers its CA: `--build-ca /etc/ssl/certs/ca-certificates.crt` (or a PEM file), or `build_env: {{SSL_CERT_FILE: ...}}` for a file already in the base image")]
    UntrustedIndex {
        session: String,
        tail: String,
        log: PathBuf,
    },
    #[error("session `{session}`: the build container has no network: its installs could not even resolve the package index's name; last lines:\n{tail}\n  full log: {log}\n  hint: the engine's default network reaches nothing here (e.g. a Docker daemon started with --bridge=none, as many CI hosts run it): give the build containers one with `--build-network host` (or another network of the engine)")]
    NoNetwork {
        session: String,
        tail: String,
        log: PathBuf,
    },
    #[error("session `{session}`: the build failed (exit {code}); last lines:\n{tail}\n  full log: {log}")]
    Failed {
        session: String,
        code: String,
        tail: String,
        log: PathBuf,
    },
    #[error("session `{session}`: {source}")]
    Venv {
        session: String,
        source: crate::python::venv::VenvError,
    },
    #[error("session `{session}`: pushed {image}, but not its SBOM: {detail}\n  hint: once the registry is fixed, `venvimg build --force -s {session}` pushes the same image again, with its SBOM")]
    Sbom {
        session: String,
        image: String,
        detail: String,
    },
    #[error("session `{session}`: the venv holds the project's own code installed non-editable ({dists}); a job would test that frozen copy, not the checkout\n  hint: set `project: editable` for this session (reinstalls it editable from {workdir}) or `project: keyed` (the key covers the project's files, so every source change rebuilds)")]
    FrozenProject {
        session: String,
        dists: String,
        workdir: String,
    },
    #[error("session `{session}`: installed packages are not covered by its key (locked: {selection}):\n{list}\n  hint: install them from uv.lock (add them to the session's dependency group), or drop `locked:` so the whole uv.lock keys the session")]
    Drift {
        session: String,
        selection: String,
        list: String,
    },
    #[error("local builder: {message}")]
    Local { message: String },
    #[error("session `{session}`: the build left no record of what nox ran ({path})\n  hint: the base image's nox must be importable by its own interpreter; run with -v to see the build")]
    NoRecord { session: String, path: PathBuf },
    #[error("session `{session}`: {files} changed on this machine while the session was built; the image would not match them\n  hint: run the build again")]
    InputsMoved { session: String, files: String },
    #[error(transparent)]
    Inputs(#[from] crate::python::inputs::InputError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Why restoring a session's venv failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("session `{session}`: no image for its current key ({image})\n  hint: build it with `venvimg build -s {session}`, or pass --build to build it first")]
    Miss { session: String, image: String },
    #[error("session `{session}`: {} holds {what}; not replacing it\n  hint: pass --force to replace it, or remove it", path.display())]
    Occupied {
        session: String,
        path: PathBuf,
        what: String,
    },
    #[error("layer {layer}: {detail}")]
    BadLayer { layer: usize, detail: String },
    #[error("{image}: {detail}")]
    BadImage { image: String, detail: String },
    #[error("layer {layer}: {detail}")]
    Fetch { layer: usize, detail: String },
    #[error("session `{session}`, {image}: {source}")]
    InImage {
        session: String,
        image: String,
        source: Box<RestoreError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl RestoreError {
    /// The error, naming the session and the image it was restored from.
    pub fn for_session(self, session: &str, image: &oci_client::Reference) -> RestoreError {
        RestoreError::InImage {
            session: session.to_string(),
            image: image.whole(),
            source: Box::new(self),
        }
    }
}

/// `; did you mean `tests`?` when one known name is close to `name` (a typo, a missing
/// or extra letter, a prefix), else nothing.
fn did_you_mean(name: &str, known: &[String]) -> String {
    let close = known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| {
            *d <= (name.chars().count().max(k.chars().count()) / 3).max(2)
                || (name.len() >= 3 && k.starts_with(name))
        })
        .min_by_key(|(d, _)| *d);
    match close {
        Some((_, k)) => format!("; did you mean `{k}`?"),
        None => String::new(),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_one_line_without_the_log_tail() {
        let e: Error = BuildError::Failed {
            session: "tests".into(),
            code: "1".into(),
            tail: "line one\nline two".into(),
            log: PathBuf::from("/tmp/log"),
        }
        .into();
        assert!(e.to_string().contains("line two"));
        assert_eq!(e.summary(), "session `tests`: the build failed (exit 1)");
        let flag = |why: &str| -> Error {
            UsageError::Flag {
                flag: "--strict",
                value: None,
                why: why.into(),
            }
            .into()
        };
        assert_eq!(flag("first: \nsecond").summary(), "--strict: first: ");
        assert_eq!(
            flag("no colon at the end:\nsecond").summary(),
            "--strict: no colon at the end"
        );
    }

    #[test]
    fn every_usage_error_exits_2() {
        let usage = || UsageError::Session {
            name: "tests".into(),
            why: "still a miss after its build".into(),
        };
        let e = Error::from(usage());
        assert_eq!(e.to_string(), usage().to_string());
        assert_eq!(e.exit_code(), 2);
        let e = Error::Output(crate::outputs::OutputError::Usage(usage()));
        assert_eq!(e.to_string(), usage().to_string());
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn suggests_the_closest_session() {
        let known: Vec<String> = ["tests", "lint", "tests-3.12", "docs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(did_you_mean("test", &known), "; did you mean `tests`?");
        assert_eq!(did_you_mean("lnit", &known), "; did you mean `lint`?");
        assert_eq!(did_you_mean("doc", &known), "; did you mean `docs`?");
        assert_eq!(did_you_mean("typing", &known), "");
        assert_eq!(did_you_mean("x", &[]), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
