//! The plan: which sessions, the key of each (a hash of everything that decides its
//! layer's bytes), its tag, and whether the registry already has it.

pub mod explain;
pub mod locked;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{BuildMode, Config, LockedSelection, ProjectMode, SessionConfig};
use crate::error::Error;
use crate::image::BaseImage;
use crate::layer::Compression;
use crate::nox;
use crate::registry::Registry;

/// Bumped whenever venvimg changes how it turns a venv into layer bytes, so images made
/// by an older venvimg are never taken for ours.
pub const LAYER_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct InputDigest {
    pub path: String,
    pub sha256: String,
}

/// Everything that decides a session layer's bytes, in a fixed field order. Its JSON
/// serialisation is the canonical document the key hashes; it is also stored in the
/// image's labels so `plan --explain` and `inspect` can show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LockedKey {
    pub groups: Vec<String>,
    pub only_groups: Vec<String>,
    pub extras: Vec<String>,
    /// Sorted `uv export` requirement lines.
    pub packages: Vec<String>,
}

/// The lock file a `locked:` session is keyed by in detail rather than by its bytes.
pub const LOCK_FILE: &str = "uv.lock";

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct KeyDocument {
    pub format: u32,
    pub base: String,
    pub platform: String,
    pub envdir: String,
    pub workdir: String,
    pub session: String,
    pub builder: String,
    pub compression: String,
    /// `single`, or `per-distribution/<max layers>` (the cap decides the grouping).
    #[serde(default)]
    pub layers: String,
    pub owner: String,
    pub project: String,
    pub build: String,
    pub posargs: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub inputs: Vec<InputDigest>,
    /// With `locked:`: the session's own resolved package set, which replaces uv.lock
    /// among the inputs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub locked: Option<LockedKey>,
    /// With `project: keyed`: a digest of the project's own files.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project_files: Option<String>,
    /// sha256 of what the builder runs (the build script and its fixed environment), so a
    /// venvimg whose build recipe changed never reuses images made by the old one.
    #[serde(default)]
    pub recipe: String,
}

impl KeyDocument {
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key document serialises")
    }
    pub fn key(&self) -> String {
        hex::encode(Sha256::digest(self.canonical()))
    }
}

fn locked_key(sel: &LockedSelection, packages: Vec<String>) -> LockedKey {
    LockedKey {
        groups: sel.groups.clone(),
        only_groups: sel.only_groups.clone(),
        extras: sel.extras.clone(),
        packages,
    }
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// `<venv-dir>-<first 16 hex of key>`.
pub fn tag_for(venv_dir: &str, key: &str) -> String {
    format!("{venv_dir}-{}", &key[..16])
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Status {
    Hit { digest: String },
    Miss,
}

#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub config: SessionConfig,
    pub venv_dir: String,
    pub document: KeyDocument,
    pub key: String,
    pub tag: String,
    pub image: Reference,
    pub status: Status,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub base: BaseImage,
    pub inputs: Vec<InputDigest>,
    pub sessions: Vec<SessionPlan>,
}

impl Plan {
    /// The tag of the all-sessions image: a hash of every session's key.
    pub fn all_sessions_tag(&self) -> String {
        let mut h = Sha256::new();
        let mut keys: Vec<&str> = self.sessions.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        for k in keys {
            h.update(k.as_bytes());
            h.update(b"\n");
        }
        format!("all-{}", &hex::encode(h.finalize())[..16])
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn hash_inputs(config: &Config) -> Result<Vec<InputDigest>, Error> {
    let mut out = Vec::with_capacity(config.inputs.len());
    for input in &config.inputs {
        let path = config.project_dir.join(input);
        let sha256 = sha256_file(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        out.push(InputDigest {
            path: input.clone(),
            sha256,
        });
    }
    // The order of `inputs:` in the YAML does not change what the layer holds.
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    Ok(out)
}

/// A session to plan, with the signature nox names its venv by.
#[derive(Debug, Clone)]
pub struct Selected {
    pub config: SessionConfig,
}

/// Which sessions this run covers: those configured (checked against what the noxfile
/// defines), or what `nox --list` selects; narrowed by `--session`.
pub fn select_sessions(
    config: &Config,
    only: &[String],
    list: &dyn Fn(bool) -> Result<Vec<nox::NoxSession>, nox::NoxError>,
) -> Result<Vec<Selected>, Error> {
    let sessions: Vec<SessionConfig> = match &config.sessions {
        None => list(false)?
            .into_iter()
            .map(|s| config.default_session(&s.session))
            .collect(),
        Some(configured) => {
            let defined = list(true)?;
            let mut out = Vec::new();
            for s in configured {
                if defined.iter().any(|d| d.session == s.name) {
                    out.push(s.clone());
                    continue;
                }
                // A function name stands for all its signatures (`tests` → tests-3.11,
                // tests-3.12), as `nox -s tests` does.
                let expanded: Vec<&nox::NoxSession> =
                    defined.iter().filter(|d| d.name == s.name).collect();
                if expanded.is_empty() {
                    return Err(Error::UnknownSession {
                        file: config.file.clone(),
                        name: s.name.clone(),
                        available: defined.iter().map(|d| d.session.clone()).collect(),
                    });
                }
                for d in expanded {
                    let mut c = s.clone();
                    c.name = d.session.clone();
                    out.push(c);
                }
            }
            out
        }
    };
    if sessions.is_empty() {
        return Err(Error::Usage(format!(
            "{}: nox lists no sessions; add sessions to noxfile.py or list them under `sessions:`",
            config.project_dir.join("noxfile.py").display()
        )));
    }
    let mut selected: Vec<Selected> = Vec::new();
    for s in sessions {
        if !only.is_empty() && !only.contains(&s.name) {
            continue;
        }
        if selected.iter().any(|x| x.config.name == s.name) {
            continue;
        }
        selected.push(Selected { config: s });
    }
    for o in only {
        if !selected.iter().any(|s| &s.config.name == o) {
            return Err(Error::UnknownSession {
                file: config.file.clone(),
                name: o.clone(),
                available: {
                    let mut all = Vec::new();
                    for s in config.sessions.iter().flatten() {
                        all.push(s.name.clone());
                    }
                    all
                },
            });
        }
    }
    Ok(selected)
}

pub fn key_document(
    config: &Config,
    base_digest: &str,
    inputs: &[InputDigest],
    session: &SessionConfig,
    resolved: Option<Vec<String>>,
) -> Result<KeyDocument, Error> {
    let locked = match (&session.locked, resolved) {
        (Some(sel), Some(packages)) => Some(locked_key(sel, packages)),
        _ => None,
    };
    // A locked session's packages stand for uv.lock; its other inputs still count whole.
    let inputs: Vec<InputDigest> = inputs
        .iter()
        .filter(|i| locked.is_none() || i.path != LOCK_FILE)
        .cloned()
        .collect();
    let project_files = match session.project {
        ProjectMode::Keyed => Some(project_files_digest(&config.project_dir)?),
        _ => None,
    };
    Ok(KeyDocument {
        format: LAYER_FORMAT_VERSION,
        base: base_digest.to_string(),
        platform: config.platform.to_string(),
        envdir: config.envdir.clone(),
        workdir: config.workdir.clone(),
        session: session.name.clone(),
        builder: config.builder.as_str().to_string(),
        compression: compression_name(config.compression).to_string(),
        layers: match config.layers {
            crate::config::LayerMode::Single => "single".into(),
            crate::config::LayerMode::PerDistribution => {
                format!("per-distribution/{}", config.max_layers)
            }
        },
        owner: config.owner.to_string(),
        project: session.project.as_str().to_string(),
        build: match session.build {
            BuildMode::InstallOnly => "install-only".into(),
            BuildMode::Run => "run".into(),
        },
        posargs: session.posargs.clone(),
        env: session.env.clone(),
        inputs,
        locked,
        project_files,
        recipe: crate::build::recipe_digest(config, session),
    })
}

/// A digest of the project's own files: git's tracked files when the project is a git
/// checkout (what CI checks out), otherwise every file outside folders that are never
/// source (.git, .nox, virtualenvs, caches).
pub fn project_files_digest(dir: &Path) -> Result<String, Error> {
    let mut files: Vec<PathBuf> = match git_tracked_files(dir) {
        Some(f) => f,
        None => {
            let mut v = Vec::new();
            walk_project(dir, Path::new(""), &mut v).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            v
        }
    };
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let path = dir.join(&rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Tracked but deleted in the work tree: that is a change too.
            Err(_) => {
                h.update(rel.to_string_lossy().as_bytes());
                h.update(b"\0deleted\n");
                continue;
            }
        };
        h.update(rel.to_string_lossy().as_bytes());
        h.update(b"\0");
        if meta.is_file() {
            let d = sha256_file(&path).map_err(|source| Error::Io { path, source })?;
            h.update(d.as_bytes());
        } else if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&path).map_err(|source| Error::Io { path, source })?;
            h.update(b"link:");
            h.update(t.to_string_lossy().as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

fn git_tracked_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        out.stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
            .collect(),
    )
}

const NEVER_SOURCE: &[&str] = &[
    ".git",
    ".nox",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    "node_modules",
    "build",
    "dist",
    ".eggs",
];

fn walk_project(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        let child = rel.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if NEVER_SOURCE.contains(&name_s.as_ref()) || name_s.ends_with(".egg-info") {
                continue;
            }
            walk_project(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Plan every selected session: resolve the base, compute keys, HEAD the tags.
pub async fn make_plan(
    config: &Config,
    registry: &Registry,
    only: &[String],
) -> Result<Plan, Error> {
    // Ask this machine's nox while the registry resolves the base: on the hit path the two
    // are most of the time a plan takes.
    let all = config.sessions.is_some();
    let project_dir = config.project_dir.clone();
    let host_list = tokio::task::spawn_blocking(move || nox::list_sessions(&project_dir, all));
    let inputs = hash_inputs(config)?;
    let base = registry
        .resolve_base(&config.base, &config.platform)
        .await?;
    let host_list = std::cell::RefCell::new(Some(
        host_list.await.expect("nox listing thread does not panic"),
    ));
    let pinned = base.pinned();
    let base_registry = config.base.resolve_registry();
    let insecure = crate::registry::is_loopback(base_registry)
        || config
            .insecure_registries
            .iter()
            .any(|r| r == base_registry);
    // nox on this machine is fastest; when it is missing or lacks a plugin the noxfile
    // imports, a container builder asks the base image's nox, where the build will run.
    let list = |all_wanted: bool| match host_list
        .borrow_mut()
        .take()
        .filter(|_| all_wanted == all)
        .unwrap_or_else(|| nox::list_sessions(&config.project_dir, all_wanted))
    {
        Err(nox::NoxError::Spawn { .. } | nox::NoxError::MissingModule { .. })
            if config.builder != crate::config::BuilderKind::Local =>
        {
            nox::list_sessions_in(
                &nox::ListIn::Image {
                    engine: config.builder.as_str(),
                    image: &pinned,
                    insecure,
                },
                &config.project_dir,
                all,
            )
        }
        other => other,
    };
    let selected = select_sessions(config, only, &list)?;
    // `uv export` for locked sessions: this machine's uv, else the base image's.
    let export = |name: &str, sel: &LockedSelection| match locked::resolved_set(
        name,
        sel,
        &config.project_dir,
        &locked::ExportIn::Host,
    ) {
        Err(locked::LockedError::Spawn { .. })
            if config.builder != crate::config::BuilderKind::Local =>
        {
            locked::resolved_set(
                name,
                sel,
                &config.project_dir,
                &locked::ExportIn::Image {
                    engine: config.builder.as_str(),
                    image: &pinned,
                    insecure,
                },
            )
        }
        other => other,
    };
    let mut sessions = Vec::with_capacity(selected.len());
    for sel in selected {
        let venv_dir = nox::venv_dir_name(&config.envdir, &sel.config.name);
        let resolved = match &sel.config.locked {
            Some(l) => Some(export(&sel.config.name, l)?),
            None => None,
        };
        let document = key_document(config, &base.digest, &inputs, &sel.config, resolved)?;
        let key = document.key();
        let tag = tag_for(&venv_dir, &key);
        let image = Reference::with_tag(
            config.repository.resolve_registry().to_string(),
            config.repository.repository().to_string(),
            tag.clone(),
        );
        sessions.push(SessionPlan {
            config: sel.config,
            venv_dir,
            document,
            key,
            tag,
            image,
            status: Status::Miss,
        });
    }
    // HEAD all tags concurrently: a hit costs one request, and 20 sessions should not
    // cost 20 round trips in sequence.
    let lookups =
        futures_util::future::join_all(sessions.iter().map(|s| registry.manifest_digest(&s.image)))
            .await;
    for (s, found) in sessions.iter_mut().zip(lookups) {
        s.status = match found? {
            Some(digest) => Status::Hit { digest },
            None => Status::Miss,
        };
    }
    Ok(Plan {
        base,
        inputs,
        sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> KeyDocument {
        KeyDocument {
            format: 1,
            base: "sha256:aa".into(),
            platform: "linux/amd64".into(),
            envdir: "/opt/nox".into(),
            workdir: "/src".into(),
            session: "tests".into(),
            builder: "podman".into(),
            compression: "gzip".into(),
            layers: "single".into(),
            owner: "0:0".into(),
            project: "refuse".into(),
            build: "install-only".into(),
            posargs: vec![],
            env: BTreeMap::new(),
            inputs: vec![InputDigest {
                path: "uv.lock".into(),
                sha256: "00".into(),
            }],
            locked: None,
            project_files: None,
            recipe: "r".into(),
        }
    }

    #[test]
    fn same_document_same_key() {
        assert_eq!(doc().key(), doc().key());
        assert_eq!(doc().key().len(), 64);
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = doc().key();
        type Mutation = Box<dyn Fn(&mut KeyDocument)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|d| d.format = 2),
            Box::new(|d| d.base = "sha256:bb".into()),
            Box::new(|d| d.platform = "linux/arm64".into()),
            Box::new(|d| d.envdir = "/opt/other".into()),
            Box::new(|d| d.workdir = "/w".into()),
            Box::new(|d| d.session = "lint".into()),
            Box::new(|d| d.builder = "local".into()),
            Box::new(|d| d.compression = "zstd".into()),
            Box::new(|d| d.layers = "per-distribution/64".into()),
            Box::new(|d| d.owner = "1000:1000".into()),
            Box::new(|d| d.project = "editable".into()),
            Box::new(|d| d.build = "run".into()),
            Box::new(|d| d.posargs = vec!["-x".into()]),
            Box::new(|d| {
                d.env.insert("A".into(), "1".into());
            }),
            Box::new(|d| d.inputs[0].sha256 = "01".into()),
            Box::new(|d| d.inputs[0].path = "other.lock".into()),
            Box::new(|d| d.project_files = Some("ff".into())),
            Box::new(|d| d.recipe = "r2".into()),
            Box::new(|d| {
                d.locked = Some(LockedKey {
                    groups: vec!["test".into()],
                    only_groups: vec![],
                    extras: vec![],
                    packages: vec!["a==1".into()],
                })
            }),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.clone());
        for m in mutations {
            let mut d = doc();
            m(&mut d);
            assert!(
                seen.insert(d.key()),
                "a mutation did not change the key: {d:?}"
            );
        }
    }

    #[test]
    fn tag_shape() {
        let k = doc().key();
        let t = tag_for("tests-3-12", &k);
        assert_eq!(t.len(), "tests-3-12-".len() + 16);
        assert!(t.starts_with("tests-3-12-"));
    }
}
