//! Finer keys: a session that installs from `uv.lock` is keyed by the packages *it*
//! installs (`uv export` of its groups/extras), so a lock change that does not touch them
//! keeps its image. And the guard that keeps this honest: packages installed but not
//! covered by that set are drift.

use std::collections::BTreeMap;

use crate::python::venv::Package;

#[derive(Debug, thiserror::Error)]
pub enum LockedError {
    #[error("`uv export` failed for session `{session}` (locked: in venvimg.yaml):\n{stderr}\n  hint: check the groups/extras under `locked:` exist in pyproject.toml and that uv.lock is up to date (`uv lock`)")]
    Failed { session: String, stderr: String },
}

/// The session's resolved requirement lines, sorted: what its key covers. They come from
/// the `uv export` the plan's hook ran for it (in the base image, or here for the local
/// builder).
pub fn from_exports(
    session: &str,
    exports: &[crate::python::hook::ExportResult],
) -> Result<Vec<String>, LockedError> {
    let Some(e) = exports.iter().find(|e| e.id == session) else {
        return Err(LockedError::Failed {
            session: session.into(),
            stderr: "the plan's hook ran no export for it".into(),
        });
    };
    match (&e.output, &e.error) {
        (Some(out), _) => Ok(parse_export(out)),
        (None, err) => Err(LockedError::Failed {
            session: session.into(),
            stderr: err.clone().unwrap_or_default(),
        }),
    }
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

pub use crate::python::installs::normalize;

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
