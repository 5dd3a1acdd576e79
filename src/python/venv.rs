//! Reading a built venv: is it one nox will reuse, what does it hold, and does it freeze
//! the project's own code.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::untrusted::{self, Refusal, Refused};

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

/// What to do when a build left something venvimg will not read.
pub const UNTRUSTED_HINT: &str = "hint: the session's noxfile or a package it installs put this in the venv; venvimg reads what a build leaves behind as untrusted data (regular files only, never through a symlink, bounded sizes): remove it from the session's installs, then build again";

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
    /// A file or folder of the venv that is a symlink, a FIFO, a device, too big...
    /// named relative to the venv.
    #[error("{0}\n  {UNTRUSTED_HINT}")]
    Refused(#[from] Refused),
}

fn refused(rel: &Path) -> impl FnOnce(Refusal) -> Refused + '_ {
    move |reason| Refused {
        path: rel.to_path_buf(),
        reason,
    }
}

/// The bytes of `rel` in the venv, or `None` when it does not exist; anything but a
/// regular file of at most `cap` bytes is refused.
pub(crate) fn read_in_venv(venv: &Path, rel: &Path, cap: u64) -> Result<Option<Vec<u8>>, Refused> {
    match untrusted::read_checked(&venv.join(rel), cap) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Refusal::Missing) => Ok(None),
        Err(reason) => Err(refused(rel)(reason)),
    }
}

pub fn read_facts(venv: &Path) -> Result<VenvFacts, VenvError> {
    let cfg =
        read_in_venv(venv, Path::new("pyvenv.cfg"), untrusted::SMALL_FILE)?.ok_or_else(|| {
            VenvError::NoPyvenvCfg {
                venv: venv.to_path_buf(),
            }
        })?;
    let cfg = String::from_utf8_lossy(&cfg);
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
    // The link itself is read, never what it points at.
    let interpreter = match fs_err::symlink_metadata(&py) {
        Ok(m) if m.file_type().is_symlink() => fs_err::read_link(&py)
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

/// `Name:` and `Version:` from the headers of a distribution's `METADATA`.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    pub name: Option<String>,
    pub version: Option<String>,
}

/// The headers of `<dist_info>/METADATA` (none when the file is missing); `dist_info` is
/// relative to the venv.
pub(crate) fn metadata_headers(venv: &Path, dist_info: &Path) -> Result<Headers, Refused> {
    let rel = dist_info.join("METADATA");
    let Some(meta) = read_in_venv(venv, &rel, untrusted::DIST_METADATA)? else {
        return Ok(Headers::default());
    };
    let meta = String::from_utf8_lossy(&meta);
    let field = |k: &str| {
        meta.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    Ok(Headers {
        name: field("Name:"),
        version: field("Version:"),
    })
}

/// Every `*.dist-info` under `lib/python*/site-packages`, sorted by name.
pub fn read_packages(venv: &Path) -> Result<Vec<Package>, VenvError> {
    let mut out = Vec::new();
    for info in dist_info_dirs(venv)? {
        let Headers {
            name: Some(name),
            version: Some(version),
        } = metadata_headers(venv, &info)?
        else {
            continue;
        };
        let (local_url, editable) = read_direct_url(venv, &info.join("direct_url.json"))?;
        out.push(Package {
            name,
            version,
            local_url,
            editable,
        });
    }
    out.sort_by_key(|p| p.name.to_lowercase());
    Ok(out)
}

/// Every `*.dist-info` folder of the venv, relative to it, sorted. A dist-info that is a
/// symlink is refused (it could name any folder of this machine).
pub fn dist_info_dirs(venv: &Path) -> Result<Vec<PathBuf>, VenvError> {
    let mut out = Vec::new();
    for sp in site_packages_dirs(venv)? {
        let dir = venv.join(&sp);
        let entries = fs_err::read_dir(&dir).map_err(|source| VenvError::Io {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(".dist-info") {
                continue;
            }
            let rel = sp.join(&name);
            // The entry's own type: a symlink is not followed.
            match e.file_type() {
                Ok(t) if t.is_dir() => out.push(rel),
                Ok(t) if t.is_symlink() => return Err(refused(&rel)(Refusal::Symlink).into()),
                // A file that merely has the name: not a distribution, nothing to read.
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `lib/python*/site-packages` (and `lib64/...` when `lib64` is a folder of its own),
/// relative to the venv, sorted. Each step must be a real folder: a symlink there could
/// point anywhere on this machine.
pub fn site_packages_dirs(venv: &Path) -> Result<Vec<PathBuf>, Refused> {
    let mut v = Vec::new();
    for lib in ["lib", "lib64"] {
        let lib = Path::new(lib);
        match untrusted::check_dir(&venv.join(lib)) {
            Ok(()) => {}
            Err(Refusal::Missing) => continue,
            // lib64 is usually a symlink to lib: listed once, through lib.
            Err(Refusal::Symlink) if lib == Path::new("lib64") => continue,
            Err(reason) => return Err(refused(lib)(reason)),
        }
        let Ok(rd) = fs_err::read_dir(venv.join(lib)) else {
            continue;
        };
        for e in rd.flatten() {
            let py = lib.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() => {}
                Ok(t) if t.is_symlink() => return Err(refused(&py)(Refusal::Symlink)),
                _ => continue,
            }
            let sp = py.join("site-packages");
            match untrusted::check_dir(&venv.join(&sp)) {
                Ok(()) => v.push(sp),
                Err(Refusal::Missing) => {}
                Err(reason) => return Err(refused(&sp)(reason)),
            }
        }
    }
    v.sort();
    Ok(v)
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

fn read_direct_url(venv: &Path, rel: &Path) -> Result<(Option<String>, bool), Refused> {
    let Some(bytes) = read_in_venv(venv, rel, untrusted::SMALL_FILE)? else {
        return Ok((None, false));
    };
    let Ok(d) = serde_json::from_slice::<DirectUrl>(&bytes) else {
        return Ok((None, false));
    };
    if !d.url.starts_with("file://") {
        return Ok((None, false));
    }
    Ok((Some(d.url), d.dir_info.map(|i| i.editable).unwrap_or(false)))
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

    /// A venv with one good distribution, for the hostile cases to spoil.
    fn venv() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let v = t.path();
        std::fs::write(v.join("pyvenv.cfg"), "home = /usr/bin\nuv = 0.5\n").unwrap();
        std::fs::create_dir_all(v.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", v.join("bin/python")).unwrap();
        let info = v.join(SP).join("good-1.0.dist-info");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("METADATA"), "Name: good\nVersion: 1.0\n\n").unwrap();
        t
    }

    const SP: &str = "lib/python3.11/site-packages";

    fn err_of(v: &Path) -> String {
        read_facts(v).unwrap_err().to_string()
    }

    #[test]
    fn reads_a_plain_venv() {
        let t = venv();
        let facts = read_facts(t.path()).unwrap();
        assert_eq!(facts.backend, "uv");
        assert_eq!(facts.interpreter, "/usr/bin/python3");
        let names: Vec<(&str, &str)> = facts
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(names, [("good", "1.0")]);
    }

    #[test]
    fn a_symlinked_metadata_is_not_followed() {
        let t = venv();
        let info = t.path().join(SP).join("x-1.dist-info");
        std::fs::create_dir(&info).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", info.join("METADATA")).unwrap();
        let err = err_of(t.path());
        assert!(
            err.starts_with(&format!(
                "{SP}/x-1.dist-info/METADATA is a symlink; refusing to read it\n  hint:"
            )),
            "{err}"
        );
    }

    #[test]
    fn a_symlinked_dist_info_or_site_packages_is_not_followed() {
        let t = venv();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(
            host.path().join("METADATA"),
            "Name: host-secret\nVersion: 6\n\n",
        )
        .unwrap();
        let link = t.path().join(SP).join("y-1.dist-info");
        std::os::unix::fs::symlink(host.path(), &link).unwrap();
        let err = err_of(t.path());
        assert!(
            err.contains(&format!("{SP}/y-1.dist-info is a symlink")),
            "{err}"
        );
        assert!(!err.contains("host-secret"), "{err}");
        std::fs::remove_file(&link).unwrap();

        // The whole site-packages (or lib/python3.11) pointing elsewhere.
        let lib = t.path().join("lib/python3.11");
        std::fs::rename(lib.join("site-packages"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(host.path(), lib.join("site-packages")).unwrap();
        assert!(
            err_of(t.path()).contains(&format!("{SP} is a symlink")),
            "{}",
            err_of(t.path())
        );
        std::fs::remove_dir_all(t.path().join("lib")).unwrap();
        std::fs::create_dir(t.path().join("lib")).unwrap();
        std::os::unix::fs::symlink(host.path(), t.path().join("lib/python3.11")).unwrap();
        assert!(err_of(t.path()).contains("lib/python3.11 is a symlink"));
        // lib64 -> lib, as venvs make it, is fine.
        std::fs::remove_dir_all(t.path().join("lib")).unwrap();
        std::fs::create_dir_all(t.path().join(SP)).unwrap();
        std::os::unix::fs::symlink("lib", t.path().join("lib64")).unwrap();
        assert!(read_facts(t.path()).is_ok());
    }

    #[test]
    fn fifos_devices_and_huge_files_are_refused_without_reading() {
        let t = venv();
        let info = t.path().join(SP).join("z-1.dist-info");
        std::fs::create_dir(&info).unwrap();
        let meta = info.join("METADATA");
        let made = std::process::Command::new("mkfifo").arg(&meta).status();
        assert!(made.is_ok_and(|s| s.success()));
        let err = err_of(t.path());
        assert!(
            err.contains(&format!(
                "{SP}/z-1.dist-info/METADATA is a FIFO, not a regular file"
            )),
            "{err}"
        );
        std::fs::remove_file(&meta).unwrap();

        // 3 GiB, sparse: refused by its size, never read.
        let f = std::fs::File::create(&meta).unwrap();
        f.set_len(3 << 30).unwrap();
        let err = err_of(t.path());
        assert!(
            err.contains(&format!(
                "{SP}/z-1.dist-info/METADATA is 3221225472 bytes, more than the"
            )),
            "{err}"
        );
        std::fs::remove_file(&meta).unwrap();

        std::fs::write(&meta, "Name: z\nVersion: 1\n\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", info.join("direct_url.json")).unwrap();
        assert!(err_of(t.path()).contains("direct_url.json is a symlink"));
        std::fs::remove_file(info.join("direct_url.json")).unwrap();
        std::fs::remove_file(t.path().join("pyvenv.cfg")).unwrap();
        std::os::unix::fs::symlink("/etc/os-release", t.path().join("pyvenv.cfg")).unwrap();
        assert!(err_of(t.path()).starts_with("pyvenv.cfg is a symlink"));
    }
}
