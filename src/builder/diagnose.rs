use std::path::{Path, PathBuf};

use crate::engine::{self as builder};
use crate::error::BuildError;

/// Where failed builds' logs are kept after venvimg removed its build folder.
pub fn logs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VENVIMG_LOG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("venvimg/logs");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/venvimg/logs"),
        None => std::env::temp_dir().join("venvimg-logs"),
    }
}

/// Copy a failed build's log where it outlives the build folder (0600: build output may
/// show index URLs); the path the error names. Falls back to the log where it is.
pub(super) fn keep_log(session: &str, log: &Path) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = logs_dir();
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let safe: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dest = dir.join(format!("{safe}-{stamp}.log"));
    let copied = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|_| fs_err::read(log))
        .and_then(|bytes| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)?;
            std::io::Write::write_all(&mut f, &bytes)
        });
    match copied {
        Ok(()) => dest,
        Err(_) => log.to_path_buf(),
    }
}

pub(super) fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turn a failed build's output into the error that names the cause.
pub(super) fn diagnose_failure(
    session: &str,
    base: &str,
    o: &builder::BuildOutcome,
    log: &Path,
) -> BuildError {
    let out = &o.output;
    if let Some(python) = missing_interpreter(out) {
        return BuildError::MissingInterpreter {
            session: session.into(),
            python,
            base: base.into(),
        };
    }
    if let Some(module) = crate::python::nox::missing_module(out) {
        return BuildError::MissingPlugin {
            session: session.into(),
            module,
            base: base.into(),
        };
    }
    if out.contains("Traceback (most recent call last)") && out.contains("noxfile.py") {
        return BuildError::InstallOnlyTraceback {
            session: session.into(),
            tail: tail(out, 12),
        };
    }
    // uv: "invalid peer certificate: UnknownIssuer"; pip: "CERTIFICATE_VERIFY_FAILED".
    if out.contains("invalid peer certificate") || out.contains("CERTIFICATE_VERIFY_FAILED") {
        return BuildError::UntrustedIndex {
            session: session.into(),
            tail: tail(out, 12),
            log: log.to_path_buf(),
        };
    }
    if no_network(out) {
        return BuildError::NoNetwork {
            session: session.into(),
            tail: tail(out, 12),
            log: log.to_path_buf(),
        };
    }
    BuildError::Failed {
        session: session.into(),
        code: o
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        tail: tail(out, 25),
        log: log.to_path_buf(),
    }
}

/// Name resolution failing (uv: "dns error: failed to lookup address information",
/// pip: "Temporary failure in name resolution" through its retries) or no route at all:
/// the build container has no network, rather than a flaky one.
pub(super) fn no_network(out: &str) -> bool {
    const SIGNS: &[&str] = &[
        "dns error",
        "failed to lookup address information",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
    ];
    SIGNS.iter().any(|s| out.contains(s))
}

/// A failure of the network under the installs (uv's and pip's wordings), not of the
/// project: worth one retry.
pub(super) fn network_failure(out: &str) -> bool {
    const SIGNS: &[&str] = &[
        "error sending request for url",
        "operation timed out",
        "Connection reset by peer",
        "ReadTimeoutError",
        "Temporary failure in name resolution",
        "NewConnectionError",
    ];
    SIGNS.iter().any(|s| out.contains(s))
}

/// nox: "Python interpreter 3.13 not found." / "Missing interpreters" lines.
pub(super) fn missing_interpreter(out: &str) -> Option<String> {
    for line in out.lines() {
        if let Some(i) = line.find("Python interpreter ") {
            let rest = &line[i + "Python interpreter ".len()..];
            if let Some(j) = rest.find(" not found") {
                return Some(rest[..j].trim().to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine as builder;
    use crate::error::Error;

    #[test]
    fn tells_network_failures_from_project_failures() {
        assert!(network_failure(
            "error: Request failed after 3 retries\n  cause: error sending request for url (https://pypi.org/simple/x/)"
        ));
        assert!(!network_failure("AssertionError: 3 != 2"));
    }

    #[test]
    fn a_build_without_network_names_build_network() {
        for output in [
            // uv
            "  × Failed to fetch: `https://pypi.org/simple/pyflakes/`\n  ╰─▶ dns error: failed to lookup address information: Temporary failure in name resolution",
            // pip, after its retries
            "WARNING: Retrying (Retry(total=4...)) after connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/pyflakes/\nERROR: No matching distribution found for pyflakes==3.2.0",
        ] {
            let o = builder::BuildOutcome {
                success: false,
                code: Some(1),
                output: output.into(),
            };
            let e = diagnose_failure("lint", "base", &o, Path::new("/tmp/log"));
            assert!(matches!(e, BuildError::NoNetwork { .. }), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("has no network"), "{text}");
            assert!(text.contains("--build-network host"), "{text}");
            assert!(Error::Build(e).summary().contains("--build-network"));
        }
        let o = builder::BuildOutcome {
            success: false,
            code: Some(1),
            output: "AssertionError: 3 != 2".into(),
        };
        assert!(matches!(
            diagnose_failure("lint", "base", &o, Path::new("/tmp/log")),
            BuildError::Failed { .. }
        ));
    }

    #[test]
    fn an_untrusted_index_certificate_points_at_build_ca() {
        let o = builder::BuildOutcome {
            success: false,
            code: Some(1),
            output: "error: Request failed after 3 retries\n  Caused by: invalid peer certificate: UnknownIssuer\n".into(),
        };
        let e = diagnose_failure("tests", "base@sha256:00", &o, Path::new("/tmp/log"));
        let text = e.to_string();
        assert!(text.contains("--build-ca"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
    }

    #[test]
    fn finds_missing_interpreter() {
        let out = "nox > Session tests-3.13 skipped: Python interpreter 3.13 not found.\n";
        assert_eq!(missing_interpreter(out).as_deref(), Some("3.13"));
        assert_eq!(missing_interpreter("all good"), None);
    }
}
