//! Reading a built venv: is it one nox will reuse, what does it hold, and does it freeze
//! the project's own code.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Installed from a local path, editable or not (`direct_url.json`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub local_url: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub editable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VenvFacts {
    /// `uv`, `virtualenv` or `venv`, from pyvenv.cfg: nox refuses to reuse a venv made
    /// by another backend.
    pub backend: String,
    pub python: String,
    /// Where bin/python points (the base image's interpreter).
    pub interpreter: String,
    pub packages: Vec<Package>,
}

#[derive(Debug, thiserror::Error)]
pub enum VenvError {
    #[error("{venv}: no pyvenv.cfg; nox did not leave a virtualenv there")]
    NoPyvenvCfg { venv: PathBuf },
    #[error("{venv}: bin/python is missing; nox would recreate this venv")]
    NoPython { venv: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn read_facts(venv: &Path) -> Result<VenvFacts, VenvError> {
    let cfg_path = venv.join("pyvenv.cfg");
    let cfg = std::fs::read_to_string(&cfg_path).map_err(|_| VenvError::NoPyvenvCfg {
        venv: venv.to_path_buf(),
    })?;
    let get = |k: &str| {
        cfg.lines().find_map(|l| {
            let (key, v) = l.split_once('=')?;
            (key.trim() == k).then(|| v.trim().to_string())
        })
    };
    let backend = if get("uv").is_some() {
        "uv"
    } else if get("virtualenv").is_some() {
        "virtualenv"
    } else {
        "venv"
    }
    .to_string();
    let python = get("version_info")
        .or_else(|| get("version"))
        .unwrap_or_default();
    let py = venv.join("bin/python");
    let interpreter = match std::fs::symlink_metadata(&py) {
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&py)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Ok(_) => "bin/python".into(),
        Err(_) => {
            return Err(VenvError::NoPython {
                venv: venv.to_path_buf(),
            })
        }
    };
    let packages = read_packages(venv)?;
    Ok(VenvFacts {
        backend,
        python,
        interpreter,
        packages,
    })
}

/// Every `*.dist-info` under `lib/python*/site-packages`, sorted by name.
pub fn read_packages(venv: &Path) -> Result<Vec<Package>, VenvError> {
    let mut out = Vec::new();
    for sp in site_packages_dirs(venv) {
        let entries = std::fs::read_dir(&sp).map_err(|source| VenvError::Io {
            path: sp.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".dist-info") {
                continue;
            }
            let dir = e.path();
            let meta = std::fs::read_to_string(dir.join("METADATA")).unwrap_or_default();
            let field = |k: &str| {
                meta.lines()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            let (Some(pname), Some(version)) = (field("Name:"), field("Version:")) else {
                continue;
            };
            let (local_url, editable) = read_direct_url(&dir.join("direct_url.json"));
            out.push(Package {
                name: pname,
                version,
                local_url,
                editable,
            });
        }
    }
    out.sort_by_key(|p| p.name.to_lowercase());
    Ok(out)
}

pub fn site_packages_dirs(venv: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(rd) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for e in rd.flatten() {
            // lib64 is usually a symlink to lib; skip it to avoid listing twice.
            if lib == "lib64"
                && std::fs::symlink_metadata(venv.join(lib))
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false)
            {
                continue;
            }
            let sp = e.path().join("site-packages");
            if sp.is_dir() {
                v.push(sp);
            }
        }
    }
    v.sort();
    v
}

#[derive(Deserialize)]
struct DirectUrl {
    url: String,
    #[serde(default)]
    dir_info: Option<DirInfo>,
}

#[derive(Deserialize)]
struct DirInfo {
    #[serde(default)]
    editable: bool,
}

fn read_direct_url(path: &Path) -> (Option<String>, bool) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, false);
    };
    let Ok(d) = serde_json::from_str::<DirectUrl>(&text) else {
        return (None, false);
    };
    if !d.url.starts_with("file://") {
        return (None, false);
    }
    (Some(d.url), d.dir_info.map(|i| i.editable).unwrap_or(false))
}

/// Distributions installed non-editable from `workdir` or below: the project's code frozen
/// at build time. A job running with `--no-install` would import this copy, not the
/// checkout.
pub fn frozen_project_code<'a>(facts: &'a VenvFacts, workdir: &str) -> Vec<&'a Package> {
    let root = format!("file://{}", workdir.trim_end_matches('/'));
    facts
        .packages
        .iter()
        .filter(|p| {
            !p.editable
                && p.local_url
                    .as_deref()
                    .is_some_and(|u| u == root || u.starts_with(&format!("{root}/")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, url: Option<&str>, editable: bool) -> Package {
        Package {
            name: name.into(),
            version: "1".into(),
            local_url: url.map(str::to_string),
            editable,
        }
    }

    #[test]
    fn frozen_detection() {
        let facts = VenvFacts {
            backend: "uv".into(),
            python: "3.11".into(),
            interpreter: "/usr/bin/python3".into(),
            packages: vec![
                pkg("app", Some("file:///src"), false),
                pkg("sub", Some("file:///src/packages/sub"), false),
                pkg("edit", Some("file:///src"), true),
                pkg("other", Some("file:///srcx"), false),
                pkg("pypi", None, false),
            ],
        };
        let names: Vec<&str> = frozen_project_code(&facts, "/src")
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, vec!["app", "sub"]);
    }
}
