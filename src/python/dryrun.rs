//! Reusing a plan's dry run. Listing and dry-running the noxfile costs a container start
//! (and, on a fresh CI runner, pulling the base image); its result depends only on the
//! base image, the noxfile, what the plan asks, and the project files the noxfile reads,
//! lists or checks (and the lock files `uv export` reads). The hook records all of those,
//! so a saved dry run is reused while each of them is unchanged: on this machine (a cache
//! folder) and across CI runners (a small artifact in the repository, pushed by `build`).
//! A noxfile that runs programs or fetches URLs itself is never reused: what those return
//! cannot be checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hook::{Event, ExportResult, ListedSession, PlanOutput, PlanSpec, Records};
use super::inputs::sha256_hex;
use crate::untrusted;

pub const CACHE_VERSION: u32 = 1;
/// Media type of the artifact holding a dry run in a registry.
pub const MEDIA_TYPE: &str = "application/vnd.venvimg.dry-run.v1+json";
/// Tag prefix of those artifacts (`venvimg-dryrun-<32 hex>`).
pub const TAG_PREFIX: &str = "venvimg-dryrun-";
/// The largest saved dry run read back.
pub const MAX_SIZE: u64 = 32 << 20;

/// What a saved dry run depends on in the project, as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Check {
    /// A file's bytes (sha256, or `absent`).
    File { path: String, sha256: String },
    /// A folder's entry names (sha256 of the sorted names).
    Listing { path: String, sha256: String },
    /// What a path is: `file`, `dir`, `absent` or `other`.
    Stat { path: String, state: String },
}

/// A dry run as saved: what the hook reported, and what it depends on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRun {
    pub version: u32,
    pub key: String,
    pub nox_version: Option<String>,
    pub listing: Vec<ListedSession>,
    pub events: Vec<Event>,
    pub exports: Vec<ExportResult>,
    pub checks: Vec<Check>,
}

/// Everything a dry run's result depends on besides the project's files.
#[derive(Serialize)]
pub struct KeyParts<'a> {
    pub base: &'a str,
    pub platform: &'a str,
    pub workdir: &'a str,
    pub envdir: &'a str,
    pub spec: &'a PlanSpec,
    pub noxfile_sha256: &'a str,
}

pub fn cache_key(parts: &KeyParts) -> String {
    let doc = serde_json::json!({
        "version": CACHE_VERSION,
        "hook": sha256_hex(format!("{}{}", super::hook::SOURCE, super::hook::LAUNCHER).as_bytes()),
        "parts": parts,
    });
    sha256_hex(serde_json::to_string(&doc).expect("json").as_bytes())
}

/// The registry tag of a saved dry run.
pub fn tag(key: &str) -> String {
    format!("{TAG_PREFIX}{}", &key[..32])
}

/// The state of a project path now, as a check records it.
fn state_of(host: &Path) -> String {
    match fs_err::metadata(host) {
        Err(_) => "absent".into(),
        Ok(m) if m.is_dir() => "dir".into(),
        Ok(m) if m.is_file() => "file".into(),
        Ok(_) => "other".into(),
    }
}

fn file_digest(host: &Path) -> String {
    match fs_err::symlink_metadata(host) {
        Err(_) => super::inputs::ABSENT.into(),
        Ok(_) => fs_err::canonicalize(host)
            .ok()
            .and_then(|p| untrusted::sha256(&p).ok())
            .unwrap_or_else(|| "unreadable".into()),
    }
}

fn listing_digest(host: &Path) -> String {
    let mut names: Vec<String> = match fs_err::read_dir(host) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return super::inputs::ABSENT.into(),
    };
    names.sort();
    sha256_hex(names.join("\n").as_bytes())
}

impl Check {
    fn holds(&self, project_dir: &Path) -> bool {
        match self {
            Check::File { path, sha256 } => &file_digest(&project_dir.join(path)) == sha256,
            Check::Listing { path, sha256 } => &listing_digest(&project_dir.join(path)) == sha256,
            Check::Stat { path, state } => &state_of(&project_dir.join(path)) == state,
        }
    }
}

/// `/src/a/b` → `a/b` (`.` for the project itself); `None` outside it.
fn relative(workdir: &str, path: &str) -> Option<String> {
    let w = workdir.trim_end_matches('/');
    if path == w {
        return Some(".".into());
    }
    let rel = path.strip_prefix(&format!("{w}/"))?;
    (!rel.split('/').any(|c| c == "..")).then(|| rel.to_string())
}

impl DryRun {
    /// Save what the hook found, with what it depends on; `None` when it cannot be
    /// reused (the noxfile runs programs, fetches URLs or writes into the project).
    pub fn from_output(
        key: String,
        out: &PlanOutput,
        project_dir: &Path,
        workdir: &str,
        locked_exports: bool,
    ) -> Option<DryRun> {
        let mut checks: Vec<Check> = Vec::new();
        let mut file = |rel: String| {
            let sha = file_digest(&project_dir.join(&rel));
            checks.push(Check::File {
                path: rel,
                sha256: sha,
            });
        };
        let mut lock_dirs: Vec<String> = Vec::new();
        let mut listings = Vec::new();
        let mut stats = Vec::new();
        for ev in out.records.all() {
            match ev {
                Event::Subprocess { .. } | Event::Network { .. } => return None,
                Event::Write { path, .. } if relative(workdir, path).is_some() => return None,
                Event::Read { path, .. } => {
                    if let Some(rel) = relative(workdir, path) {
                        file(rel);
                    }
                }
                Event::Listing { path, .. } => {
                    if let Some(rel) = relative(workdir, path) {
                        listings.push(rel);
                    }
                }
                Event::Stat { path, .. } => {
                    if let Some(rel) = relative(workdir, path) {
                        stats.push(rel);
                    }
                }
                Event::Export { cwd, args, .. } => {
                    let mut dir = cwd.clone();
                    for w in args.windows(2) {
                        if w[0] == "--project" || w[0] == "--directory" {
                            dir = format!("{dir}/{}", w[1]);
                        }
                    }
                    if let Some(rel) = relative(workdir, &normalize(&dir)) {
                        lock_dirs.push(rel);
                    }
                }
                _ => {}
            }
        }
        if locked_exports {
            lock_dirs.push(".".into());
        }
        // `uv export` reads the project's pyproject.toml, uv.toml and the lock, found
        // upward, and the members it installs.
        for dir in lock_dirs {
            let mut d = dir;
            loop {
                for name in ["pyproject.toml", "uv.lock", "uv.toml", ".python-version"] {
                    file(join_rel(&d, name));
                }
                if d == "." {
                    break;
                }
                d = match d.rfind('/') {
                    Some(i) => d[..i].to_string(),
                    None => ".".into(),
                };
            }
        }
        for ev in out.records.all() {
            if let Event::Export {
                output: Some(text), ..
            } = ev
            {
                for entry in super::inputs::export_entries(text) {
                    let p = entry.strip_prefix("-e ").unwrap_or(&entry);
                    let p = p.split([' ', ';']).next().unwrap_or(p);
                    if p.starts_with("./") || p == "." {
                        file(join_rel(p.trim_start_matches("./"), "pyproject.toml"));
                    }
                }
            }
        }
        for rel in listings {
            let sha = listing_digest(&project_dir.join(&rel));
            checks.push(Check::Listing {
                path: rel,
                sha256: sha,
            });
        }
        for rel in stats {
            let state = state_of(&project_dir.join(&rel));
            checks.push(Check::Stat { path: rel, state });
        }
        checks.sort();
        checks.dedup();
        let events: Vec<Event> = out.records.all().cloned().collect();
        Some(DryRun {
            version: CACHE_VERSION,
            key,
            nox_version: out.nox_version.clone(),
            listing: out.listing.clone(),
            events,
            exports: out.exports.clone(),
            checks,
        })
    }

    /// Is every file, folder and path it depends on as it was?
    pub fn still_holds(&self, project_dir: &Path) -> bool {
        self.version == CACHE_VERSION && self.checks.iter().all(|c| c.holds(project_dir))
    }

    pub fn output(&self) -> PlanOutput {
        let mut records = Records::default();
        for ev in &self.events {
            records.add(ev.clone());
        }
        PlanOutput {
            nox_version: self.nox_version.clone(),
            listing: self.listing.clone(),
            records,
            exports: self.exports.clone(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("dry run serialises")
    }

    /// Parse a saved dry run (untrusted: another machine or job wrote it) made for `key`.
    pub fn from_bytes(bytes: &[u8], key: &str) -> Option<DryRun> {
        let d: DryRun = serde_json::from_slice(bytes).ok()?;
        // Every path it checks must be inside the project: relative, without `..`.
        let inside = |p: &str| {
            !p.is_empty()
                && !p.starts_with('/')
                && !p.contains('\0')
                && p.split('/').all(|c| c != "..")
        };
        let paths_inside = d.checks.iter().all(|c| match c {
            Check::File { path, .. } | Check::Listing { path, .. } | Check::Stat { path, .. } => {
                inside(path)
            }
        });
        (d.key == key && d.version == CACHE_VERSION && paths_inside).then_some(d)
    }
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir == "." || dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Where saved dry runs live on this machine.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("venvimg/dry-runs"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/venvimg/dry-runs"))
}

/// A dry run saved on this machine for `key`, if any.
pub fn load_local(key: &str) -> Option<DryRun> {
    let path = cache_dir()?.join(format!("{key}.json"));
    let bytes = untrusted::read(&path, MAX_SIZE).ok()?;
    DryRun::from_bytes(&bytes, key)
}

/// Save a dry run on this machine (best effort: a cache).
pub fn save_local(d: &DryRun) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = cache_dir() else { return };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_err()
    {
        return;
    }
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&dir) else {
        return;
    };
    if std::io::Write::write_all(&mut tmp, &d.to_bytes()).is_ok() {
        let _ = tmp.persist(dir.join(format!("{}.json", d.key)));
    }
}

/// Checks of the dry run by kind, for `-v`.
pub fn describe(d: &DryRun) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &d.checks {
        *counts
            .entry(match c {
                Check::File { .. } => "file(s)",
                Check::Listing { .. } => "folder listing(s)",
                Check::Stat { .. } => "path check(s)",
            })
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_with(events: &[&str]) -> PlanOutput {
        let mut records = Records::default();
        for e in events {
            records.add(serde_json::from_str(e).unwrap());
        }
        PlanOutput {
            nox_version: Some("2026.10.20".into()),
            listing: Vec::new(),
            records,
            exports: Vec::new(),
        }
    }

    #[test]
    fn reused_while_what_the_noxfile_saw_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pyproject.toml"), "[project]\n").unwrap();
        std::fs::create_dir(d.path().join("reqs")).unwrap();
        std::fs::write(d.path().join("reqs/a.txt"), "x\n").unwrap();
        let out = out_with(&[
            r#"{"kind":"read","session":null,"path":"/src/pyproject.toml"}"#,
            r#"{"kind":"listing","session":null,"path":"/src/reqs"}"#,
            r#"{"kind":"stat","session":"t","path":"/src/constraints.txt","state":"absent"}"#,
        ]);
        let run = DryRun::from_output("k".repeat(64), &out, d.path(), "/src", false).unwrap();
        assert_eq!(run.checks.len(), 3);
        assert!(run.still_holds(d.path()));
        let back = DryRun::from_bytes(&run.to_bytes(), &"k".repeat(64)).unwrap();
        assert!(back.still_holds(d.path()));
        assert!(DryRun::from_bytes(&run.to_bytes(), &"j".repeat(64)).is_none());

        std::fs::write(d.path().join("reqs/b.txt"), "y\n").unwrap();
        assert!(!run.still_holds(d.path()), "a new file in a listed folder");
        std::fs::remove_file(d.path().join("reqs/b.txt")).unwrap();
        std::fs::write(d.path().join("constraints.txt"), "").unwrap();
        assert!(!run.still_holds(d.path()), "a checked path appeared");
        std::fs::remove_file(d.path().join("constraints.txt")).unwrap();
        std::fs::write(d.path().join("pyproject.toml"), "[project]\nname='x'\n").unwrap();
        assert!(!run.still_holds(d.path()), "a read file changed");
    }

    #[test]
    fn programs_and_downloads_are_never_reused() {
        let d = tempfile::tempdir().unwrap();
        for e in [
            r#"{"kind":"subprocess","session":null,"argv":["git","describe"],"cwd":"/src"}"#,
            r#"{"kind":"network","session":"t","url":"https://example.invalid/x"}"#,
            r#"{"kind":"write","session":null,"path":"/src/generated.txt"}"#,
        ] {
            let out = out_with(&[e]);
            assert!(DryRun::from_output("k".repeat(64), &out, d.path(), "/src", false).is_none());
        }
    }

    #[test]
    fn a_shared_dry_run_checking_paths_outside_the_project_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pyproject.toml"), "[project]\n").unwrap();
        let out = out_with(&[r#"{"kind":"read","session":null,"path":"/src/pyproject.toml"}"#]);
        let run = DryRun::from_output("k".repeat(64), &out, d.path(), "/src", false).unwrap();
        let key = "k".repeat(64);
        assert!(DryRun::from_bytes(&run.to_bytes(), &key).is_some());
        // What another job (or whoever may push to the repository) could have saved.
        for bad in ["../outside", "/etc/hostname", "a/../../b", ""] {
            let mut forged = run.clone();
            forged.checks = vec![Check::Stat {
                path: bad.into(),
                state: "absent".into(),
            }];
            assert!(
                DryRun::from_bytes(&forged.to_bytes(), &key).is_none(),
                "{bad:?} accepted"
            );
        }
    }
}
