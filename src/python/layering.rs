//! Which layers a venv becomes. `single`: the whole venv in one layer. `per-distribution`:
//! each installed distribution's files (from its `*.dist-info/RECORD`, plus the bytecode
//! compiled for them) go to a layer of their own when big, or to one of a fixed number of
//! buckets chosen by a stable hash of the name when small; everything no RECORD claims
//! (pyvenv.cfg, interpreter links, activation scripts, nox's files) is the skeleton layer.
//! A one-package bump then changes one layer, not the whole venv.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::python::locked::normalize;
use crate::python::venv::{self, dist_info_dirs, metadata_headers, read_in_venv, VenvError};
use crate::untrusted::{self, join_inside, Refusal, Refused};

/// A distribution at least this big (bytes on disk, bytecode included) gets its own layer.
pub const BIG_DISTRIBUTION: u64 = 4 << 20;
/// Small distributions share this many layers.
pub const BUCKETS: usize = 8;
/// Default cap on an image's layers, base included: below the ~127 overlay accepts, with
/// room for the all-sessions image of several sessions (each 2-17 layers).
pub const DEFAULT_MAX_LAYERS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `skeleton`, `dist-numpy`, `bucket-3`.
    pub label: String,
    /// Normalised names of the distributions whose files it holds.
    pub distributions: Vec<String>,
    /// Files (and symlinks) relative to the venv root. Empty for the skeleton, which
    /// holds whatever no other group claims.
    pub files: BTreeSet<PathBuf>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayeringError {
    /// `source` names what went wrong on its own (callers may show only it): a file of
    /// the build's output that venvimg refused is named relative to the venv there.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LayeringError {
    fn refused(venv: &Path, r: Refused) -> LayeringError {
        LayeringError::Io {
            path: venv.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{r}\n  {}", venv::UNTRUSTED_HINT),
            ),
        }
    }

    fn venv(venv: &Path, e: VenvError) -> LayeringError {
        match e {
            VenvError::Refused(r) => LayeringError::refused(venv, r),
            VenvError::Io { path, source } => LayeringError::Io { path, source },
            other => LayeringError::Io {
                path: venv.to_path_buf(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

struct Dist {
    name: String,
    files: BTreeSet<PathBuf>,
    bytes: u64,
}

/// Split `venv` into groups: skeleton first, then big distributions by name, then the
/// non-empty buckets by index. At most `max_session_layers` groups.
pub fn split(venv: &Path, max_session_layers: usize) -> Result<Vec<Group>, LayeringError> {
    let dists = distributions(venv)?;
    let slots = Slots::of(&dists, max_session_layers);
    Ok(groups_of(dists, &slots))
}

/// The venv's distributions in sorted dist-info order, each with the files it claims.
fn distributions(venv: &Path) -> Result<Vec<Dist>, LayeringError> {
    let mut dists: Vec<Dist> = Vec::new();
    let mut claimed: BTreeSet<PathBuf> = BTreeSet::new();
    // Sorted, relative to the venv; a symlinked dist-info or site-packages is refused.
    let infos = dist_info_dirs(venv).map_err(|e| LayeringError::venv(venv, e))?;
    for info in infos {
        let name = dist_name(venv, &info).map_err(|r| LayeringError::refused(venv, r))?;
        let mut files = dist_files(venv, &info)?;
        // First claim wins, in sorted dist-info order: deterministic for namespace
        // packages whose shared files two RECORDs list.
        let mut bytes = 0;
        files.retain(|f| {
            if claimed.contains(f) {
                return false;
            }
            match size_in_venv(venv, f) {
                Some(n) => {
                    bytes += n;
                    true
                }
                None => false,
            }
        });
        claimed.extend(files.iter().cloned());
        dists.push(Dist { name, files, bytes });
    }
    Ok(dists)
}

/// The files of the distribution whose dist-info folder is `info`: what its RECORD lists,
/// the folder itself, and their bytecode.
fn dist_files(venv: &Path, info: &Path) -> Result<BTreeSet<PathBuf>, LayeringError> {
    let refused = |r: Refused| LayeringError::refused(venv, r);
    let sp = info.parent().unwrap_or(Path::new(""));
    let mut files = BTreeSet::new();
    let record_rel = info.join("RECORD");
    let record = read_in_venv(venv, &record_rel, untrusted::DIST_RECORD)
        .map_err(refused)?
        .unwrap_or_default();
    for (i, line) in String::from_utf8_lossy(&record).lines().enumerate() {
        let Some(path) = first_csv_field(line) else {
            continue;
        };
        // Paths are relative to site-packages; `..` is how RECORD reaches bin/. One
        // that leaves the venv (or an absolute one) is not ours to look at.
        let rel = inside(sp, Path::new(&path)).ok_or_else(|| {
            refused(Refused {
                path: record_rel.clone(),
                reason: Refusal::Escapes {
                    line: i + 1,
                    target: path.clone(),
                    within: "venv",
                },
            })
        })?;
        files.insert(rel);
    }
    // The dist-info folder itself, whatever the installer added after RECORD.
    walk_files(venv, info, &mut files).map_err(|e| {
        // Callers may show only the error: it names the folder itself.
        let shown = untrusted::shown(&info.to_string_lossy());
        LayeringError::Io {
            path: venv.join(info),
            source: std::io::Error::new(e.kind(), format!("{shown}: {e}")),
        }
    })?;
    add_bytecode(venv, &mut files);
    Ok(files)
}

/// Where distributions go: which get a layer of their own (indexes into the list), and
/// how many buckets the rest share (0: everything in one layer).
struct Slots {
    own: BTreeSet<usize>,
    buckets: usize,
}

impl Slots {
    /// Big ones get their own layer, biggest first, as many as the cap allows besides the
    /// skeleton and the buckets; the rest go to buckets.
    fn of(dists: &[Dist], max_session_layers: usize) -> Slots {
        let own_slots = max_session_layers.saturating_sub(1 + BUCKETS);
        let mut by_size: Vec<usize> = (0..dists.len())
            .filter(|&i| dists[i].bytes >= BIG_DISTRIBUTION)
            .collect();
        by_size.sort_by(|&a, &b| {
            dists[b]
                .bytes
                .cmp(&dists[a].bytes)
                .then(dists[a].name.cmp(&dists[b].name))
        });
        let own: BTreeSet<usize> = by_size.into_iter().take(own_slots).collect();
        let buckets = if max_session_layers <= 1 {
            0
        } else {
            BUCKETS.min(max_session_layers - 1 - own.len()).max(1)
        };
        Slots { own, buckets }
    }
}

/// The groups `slots` makes of `dists`: skeleton, own layers by name, buckets by index.
fn groups_of(dists: Vec<Dist>, slots: &Slots) -> Vec<Group> {
    let Slots { own, buckets } = slots;
    let buckets = *buckets;
    let mut groups = vec![Group {
        label: "skeleton".into(),
        distributions: Vec::new(),
        files: BTreeSet::new(),
        bytes: 0,
    }];
    let mut own_groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut bucket_groups: BTreeMap<usize, Group> = BTreeMap::new();
    for (i, d) in dists.into_iter().enumerate() {
        let target = if own.contains(&i) {
            own_groups.entry(d.name.clone()).or_insert_with(|| Group {
                label: format!("dist-{}", d.name),
                distributions: Vec::new(),
                files: BTreeSet::new(),
                bytes: 0,
            })
        } else if buckets == 0 {
            &mut groups[0]
        } else {
            let b = bucket_of(&d.name, buckets);
            bucket_groups.entry(b).or_insert_with(|| Group {
                label: format!("bucket-{b}"),
                distributions: Vec::new(),
                files: BTreeSet::new(),
                bytes: 0,
            })
        };
        target.distributions.push(d.name);
        target.files.extend(d.files);
        target.bytes += d.bytes;
    }
    if buckets == 0 {
        // Everything in one layer: the skeleton keeps all files.
        groups[0].files.clear();
        return groups;
    }
    groups.extend(own_groups.into_values());
    groups.extend(bucket_groups.into_values());
    for g in &mut groups {
        g.distributions.sort();
    }
    groups
}

/// Stable across machines, runs and venvimg versions (the layer bytes depend on it).
pub fn bucket_of(name: &str, buckets: usize) -> usize {
    let h = Sha256::digest(name.as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (n % buckets as u64) as usize
}

/// Which files of the venv go into `group`, given every group (the skeleton takes what
/// the others do not).
pub fn keeps<'a>(group: &'a Group, all: &'a [Group]) -> impl Fn(&Path) -> bool + 'a {
    let claimed: BTreeSet<&Path> = all
        .iter()
        .filter(|g| g.label != "skeleton")
        .flat_map(|g| g.files.iter().map(PathBuf::as_path))
        .collect();
    let skeleton = group.label == "skeleton";
    move |rel: &Path| {
        if skeleton {
            !claimed.contains(rel)
        } else {
            group.files.contains(rel)
        }
    }
}

fn dist_name(venv: &Path, info: &Path) -> Result<String, Refused> {
    let name = metadata_headers(venv, info)?.name.unwrap_or_else(|| {
        info.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .unwrap_or("unknown")
            .to_string()
    });
    Ok(normalize(&name))
}

/// RECORD is CSV: the path is the first field, quoted when it holds a comma or quote.
fn first_csv_field(line: &str) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        return Some(out);
    }
    Some(line.split(',').next()?.to_string())
}

/// `path` from a RECORD (relative to `site_packages`, possibly with `..`, as RECORD
/// writes console scripts) as a path relative to the venv, if it stays inside it.
/// Lexical: nothing is looked at on disk.
fn inside(site_packages: &Path, path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in site_packages.components().chain(path.components()) {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Size of a file (or symlink) of the venv reached through real folders only; `None`
/// for a folder, a missing file, or one behind a symlinked folder (the packer never goes
/// there either).
fn size_in_venv(venv: &Path, rel: &Path) -> Option<u64> {
    let p = join_inside(venv, rel).ok()?;
    let m = fs_err::symlink_metadata(p).ok()?;
    (!m.is_dir()).then_some(m.len())
}

/// Every file under the folder `rel` of the venv, into `files`; symlinks are listed,
/// not followed.
fn walk_files(venv: &Path, rel: &Path, files: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
    for e in fs_err::read_dir(venv.join(rel))? {
        let e = e?;
        let p = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            walk_files(venv, &p, files)?;
        } else {
            files.insert(p);
        }
    }
    Ok(())
}

/// For every claimed `x/mod.py`, also claim `x/__pycache__/mod.*.pyc`.
fn add_bytecode(venv: &Path, files: &mut BTreeSet<PathBuf>) {
    let mut extra = Vec::new();
    let mut by_dir: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for f in files.iter() {
        if f.extension().is_some_and(|e| e == "py") {
            if let (Some(dir), Some(stem)) = (f.parent(), f.file_stem().and_then(|s| s.to_str())) {
                by_dir
                    .entry(dir.to_path_buf())
                    .or_default()
                    .push(stem.to_string());
            }
        }
    }
    for (dir, stems) in by_dir {
        let cache = dir.join("__pycache__");
        // Only a real folder reached through real folders: its names are all we read.
        let Ok(real) = join_inside(venv, &cache) else {
            continue;
        };
        if untrusted::check_dir(&real).is_err() {
            continue;
        }
        let Ok(rd) = fs_err::read_dir(&real) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".pyc") {
                continue;
            }
            let stem = name.split('.').next().unwrap_or("");
            if stems.iter().any(|s| s == stem) {
                extra.push(cache.join(&name));
            }
        }
    }
    files.extend(extra);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, bytes: usize) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![b'x'; bytes]).unwrap();
    }

    fn dist(venv: &Path, name: &str, version: &str, files: &[(&str, usize)]) {
        let sp = venv.join("lib/python3.11/site-packages");
        let info = sp.join(format!("{name}-{version}.dist-info"));
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(
            info.join("METADATA"),
            format!("Name: {name}\nVersion: {version}\n\n"),
        )
        .unwrap();
        let mut record = String::new();
        for (f, size) in files {
            write(&sp.join(f), *size);
            record.push_str(&format!("{f},sha256=x,{size}\n"));
        }
        record.push_str(&format!("{name}-{version}.dist-info/RECORD,,\n"));
        std::fs::write(info.join("RECORD"), record).unwrap();
    }

    #[test]
    fn splits_by_distribution_with_scripts_and_bytecode() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path();
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        dist(
            venv,
            "big",
            "1",
            &[("big/__init__.py", 5 << 20), ("../../../bin/big", 10)],
        );
        dist(venv, "small_one", "1", &[("small_one.py", 10)]);
        write(
            &venv.join("lib/python3.11/site-packages/__pycache__/small_one.cpython-311.pyc"),
            5,
        );
        write(
            &venv.join("lib/python3.11/site-packages/big/__pycache__/__init__.cpython-311.pyc"),
            5,
        );
        let groups = split(venv, 20).unwrap();
        assert_eq!(groups[0].label, "skeleton");
        let big = groups.iter().find(|g| g.label == "dist-big").unwrap();
        assert!(big.files.contains(Path::new("bin/big")), "{:?}", big.files);
        assert!(big.files.contains(Path::new(
            "lib/python3.11/site-packages/big/__pycache__/__init__.cpython-311.pyc"
        )));
        let bucket = groups
            .iter()
            .find(|g| g.distributions == vec!["small-one".to_string()])
            .unwrap();
        assert_eq!(
            bucket.label,
            format!("bucket-{}", bucket_of("small-one", BUCKETS))
        );
        assert!(bucket.files.contains(Path::new(
            "lib/python3.11/site-packages/__pycache__/small_one.cpython-311.pyc"
        )));
        // The skeleton keeps what nobody claims, and nothing claimed.
        let keep = keeps(&groups[0], &groups);
        assert!(keep(Path::new("pyvenv.cfg")));
        assert!(!keep(Path::new("bin/big")));
    }

    #[test]
    fn cap_sends_big_ones_to_buckets() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path();
        for i in 0..5 {
            dist(
                venv,
                &format!("big{i}"),
                "1",
                &[(&format!("big{i}.py"), 5 << 20)],
            );
        }
        let groups = split(venv, 1 + BUCKETS + 2).unwrap();
        assert!(groups.len() <= 1 + BUCKETS + 2);
        assert_eq!(
            groups
                .iter()
                .filter(|g| g.label.starts_with("dist-"))
                .count(),
            2
        );
        let all: usize = groups.iter().map(|g| g.distributions.len()).sum();
        assert_eq!(all, 5);
    }

    #[test]
    fn bucket_choice_is_stable() {
        assert_eq!(bucket_of("numpy", 8), bucket_of("numpy", 8));
        let spread: BTreeSet<usize> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
            .iter()
            .map(|n| bucket_of(n, 8))
            .collect();
        assert!(spread.len() > 3);
    }

    #[test]
    fn record_csv_quoting() {
        assert_eq!(
            first_csv_field("a/b.py,sha256=x,1").as_deref(),
            Some("a/b.py")
        );
        assert_eq!(
            first_csv_field("\"a,b.py\",sha256=x,1").as_deref(),
            Some("a,b.py")
        );
    }

    fn split_err(venv: &Path) -> String {
        match split(venv, 20).unwrap_err() {
            LayeringError::Io { source, .. } => source.to_string(),
        }
    }

    #[test]
    fn record_paths_stay_inside_the_venv() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path();
        dist(venv, "ok", "1", &[("ok.py", 10), ("../../../bin/ok", 10)]);
        assert!(split(venv, 20).is_ok());
        let record = venv.join("lib/python3.11/site-packages/ok-1.dist-info/RECORD");
        let good = std::fs::read_to_string(&record).unwrap();
        for bad in ["../../../../etc/hostname", "/etc/hostname"] {
            std::fs::write(&record, format!("{good}{bad},,\n")).unwrap();
            let err = split_err(venv);
            assert!(
                err.starts_with(&format!(
                    "lib/python3.11/site-packages/ok-1.dist-info/RECORD line 4 names `{bad}`, a path outside the venv; refusing it\n  hint:"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn nothing_is_read_through_a_symlink_or_from_a_fifo() {
        let t = tempfile::tempdir().unwrap();
        let venv = t.path();
        let sp = venv.join("lib/python3.11/site-packages");
        dist(venv, "ok", "1", &[("ok.py", 10)]);
        // A claimed path behind a symlinked folder is neither claimed nor measured.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("big.py"), vec![b'x'; 5 << 20]).unwrap();
        std::os::unix::fs::symlink(host.path(), sp.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(host.path(), sp.join("__pycache__")).unwrap();
        std::fs::write(
            sp.join("ok-1.dist-info/RECORD"),
            "ok.py,,\nelsewhere/big.py,,\n",
        )
        .unwrap();
        let groups = split(venv, 20).unwrap();
        let all: BTreeSet<&PathBuf> = groups.iter().flat_map(|g| &g.files).collect();
        assert!(
            !all.iter()
                .any(|f| f.starts_with("lib/python3.11/site-packages/elsewhere")),
            "{all:?}"
        );
        assert!(groups.iter().all(|g| g.bytes < 1 << 20), "{groups:?}");

        for (what, make) in [
            ("METADATA is a symlink", "symlink-metadata"),
            ("RECORD is a FIFO", "fifo-record"),
            ("ok-1.dist-info is a symlink", "symlink-info"),
        ] {
            let info = sp.join("ok-1.dist-info");
            match make {
                "symlink-metadata" => {
                    std::fs::remove_file(info.join("METADATA")).unwrap();
                    std::os::unix::fs::symlink("/etc/hostname", info.join("METADATA")).unwrap();
                }
                "fifo-record" => {
                    std::fs::remove_file(info.join("METADATA")).unwrap();
                    std::fs::write(info.join("METADATA"), "Name: ok\nVersion: 1\n").unwrap();
                    std::fs::remove_file(info.join("RECORD")).unwrap();
                    let made = std::process::Command::new("mkfifo")
                        .arg(info.join("RECORD"))
                        .status();
                    assert!(made.is_ok_and(|s| s.success()));
                }
                _ => {
                    std::fs::remove_dir_all(&info).unwrap();
                    std::os::unix::fs::symlink(host.path(), &info).unwrap();
                }
            }
            let err = split_err(venv);
            assert!(
                err.starts_with("lib/python3.11/site-packages/ok-1.dist-info")
                    && err.contains(what),
                "{what}: {err}"
            );
        }
    }
}
