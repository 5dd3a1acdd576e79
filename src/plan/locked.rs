//! Finer keys: a session that installs from `uv.lock` is keyed by the packages *it*
//! installs (`uv export` of its groups/extras), so a lock change that does not touch them
//! keeps its image. And the guard that keeps this honest: packages installed but not
//! covered by that set are drift.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::build::venv::Package;
use crate::config::LockedSelection;

#[derive(Debug, thiserror::Error)]
pub enum LockedError {
    #[error("cannot run `uv export` for session `{session}` ({place}): {detail}\n  hint: install uv (pip install uv), or drop `locked:` from the session to key it by the whole uv.lock")]
    Spawn {
        session: String,
        place: String,
        detail: String,
    },
    #[error("`uv export` failed for session `{session}` ({place}):\n{stderr}\n  hint: check the groups/extras under `locked:` exist in pyproject.toml and that uv.lock is up to date (`uv lock`)")]
    Failed {
        session: String,
        place: String,
        stderr: String,
    },
}

/// Where `uv export` runs: this machine's uv, or the base image's.
pub enum ExportIn<'a> {
    Host,
    Image {
        engine: &'a str,
        image: &'a str,
        insecure: bool,
    },
}

/// The session's resolved requirement lines, sorted: what its key covers.
pub fn resolved_set(
    session: &str,
    selection: &LockedSelection,
    project_dir: &Path,
    place: &ExportIn,
) -> Result<Vec<String>, LockedError> {
    let args = selection.export_args();
    let (mut cmd, where_) = match place {
        ExportIn::Host => {
            let mut c = Command::new("uv");
            c.current_dir(project_dir).args(&args);
            (c, "uv on this machine".to_string())
        }
        ExportIn::Image {
            engine,
            image,
            insecure,
        } => {
            let mut c = crate::build::builder::in_base_image(
                engine,
                image,
                *insecure,
                project_dir,
                &[("UV_OFFLINE", "1")],
                "uv",
            );
            c.args(&args);
            (c, format!("base image {image}"))
        }
    };
    // uv must not touch the network or the lock: --frozen reads uv.lock as it is.
    cmd.env("UV_OFFLINE", "1");
    let out = cmd.output().map_err(|e| LockedError::Spawn {
        session: session.into(),
        place: where_.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LockedError::Failed {
            session: session.into(),
            place: where_,
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        });
    }
    Ok(parse_export(&String::from_utf8_lossy(&out.stdout)))
}

/// Requirement lines without comments, blank lines or continuation backslashes, sorted.
pub fn parse_export(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_end_matches('\\').trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// PEP 503 name normalisation.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `name==version ; marker` lines → normalised name → version.
pub fn pinned(lines: &[String]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for l in lines {
        let req = l.split(';').next().unwrap_or("").trim();
        if let Some((name, version)) = req.split_once("==") {
            let name = name.split('[').next().unwrap_or(name).trim();
            m.insert(normalize(name), version.trim().to_string());
        }
    }
    m
}

/// One package the key does not account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub package: String,
    pub installed: String,
    /// The version the key covers, if the package is in the set at all.
    pub keyed: Option<String>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.keyed {
            None => write!(
                f,
                "{} {} is installed but not in the session's locked set",
                self.package, self.installed
            ),
            Some(k) => write!(
                f,
                "{} {} is installed but the locked set has {}",
                self.package, self.installed, k
            ),
        }
    }
}

/// Packages that would change the venv without changing the key. The project's own
/// distributions (installed from a local path) are covered by the input files instead.
pub fn drift(installed: &[Package], resolved: &[String]) -> Vec<Drift> {
    let set = pinned(resolved);
    let mut out = Vec::new();
    for p in installed {
        if p.local_url.is_some() {
            continue;
        }
        let name = normalize(&p.name);
        match set.get(&name) {
            Some(v) if *v == p.version => {}
            other => out.push(Drift {
                package: p.name.clone(),
                installed: p.version.clone(),
                keyed: other.cloned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, local: bool) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            local_url: local.then(|| "file:///src".to_string()),
            editable: local,
        }
    }

    #[test]
    fn parse_and_pin() {
        let lines = parse_export(
            "# comment\n-e .\nzope.interface==6.0 ; python_version >= '3.8' \\\n    \nPyYAML==6.0.1\n",
        );
        assert_eq!(lines[0], "-e .");
        let p = pinned(&lines);
        assert_eq!(p.get("pyyaml").map(String::as_str), Some("6.0.1"));
        assert_eq!(p.get("zope-interface").map(String::as_str), Some("6.0"));
    }

    #[test]
    fn drift_finds_unkeyed_and_mismatched_packages() {
        let resolved = vec!["pyflakes==3.2.0".to_string(), "-e .".to_string()];
        let installed = vec![
            pkg("pyflakes", "3.2.0", false),
            pkg("iniconfig", "2.3.1", false),
            pkg("my-app", "0.1", true),
        ];
        let d = drift(&installed, &resolved);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].package, "iniconfig");
        let installed = vec![pkg("PyFlakes", "3.1.0", false)];
        let d = drift(&installed, &resolved);
        assert_eq!(d[0].keyed.as_deref(), Some("3.2.0"));
    }
}
