//! The plan: which sessions, the key of each (a hash of everything that decides its
//! layer's bytes), its tag, and whether the registry already has a image for it that
//! still matches the checkout.
//!
//! How a key is made: the noxfile is run by venvimg's hook in the base image (the local
//! builder: on this machine), network off, project read-only, with every command faked —
//! a dry run. What the sessions would run, and the project files those installs would
//! read (followed through nested requirement files and path installs), are hashed into
//! each session's key along with the settings. The image records what its build read; a
//! hit is accepted only while those files still hash the same.

pub mod explain;
pub mod findings;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BuildMode, Config, LockedSelection, ProjectMode, SessionConfig};
use crate::error::Error;
use crate::image::BaseImage;
use crate::layer::Compression;
use crate::model::{self, Key, Platform, Tag, VenvName};
use crate::python::dryrun::{self, DryRun};
use crate::python::hook::{ListedSession, PlanOutput, PlanSpec, SpecExport, SpecGroup};
use crate::python::inputs::{self, Derived, Discovered, InputFile};
use crate::python::{locked, nox};
use crate::registry::Registry;

/// Bumped whenever venvimg changes how it turns a venv into layer bytes or what a key
/// covers, so images made by an older venvimg are never taken for ours (4: gzip by
/// zlib-rs instead of miniz_oxide).
pub const LAYER_FORMAT_VERSION: u32 = 4;

/// The manifest annotation holding what a hit is checked against.
pub const CHECK_ANNOTATION: &str = "dev.venvimg.check";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputDigest {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedKey {
    pub groups: Vec<String>,
    pub only_groups: Vec<String>,
    pub extras: Vec<String>,
    /// Sorted `uv export` requirement lines.
    pub packages: Vec<String>,
}

/// The lock file a `locked:` session is keyed by in detail rather than by its bytes.
pub const LOCK_FILE: &str = "uv.lock";

/// `refresh:` for a floating session: the key holds the period, so the image is rebuilt
/// at most that often.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshKey {
    /// As configured (`7d`).
    pub every: String,
    /// Seconds since the epoch divided by the period's length.
    pub period: u64,
}

/// Everything that decides a session layer's bytes, in a fixed field order. Its JSON
/// serialisation is the canonical document the key hashes; it is also stored in the
/// image's record so `plan --explain` and `inspect` can show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
// Read back from images (explain, inspect) tolerantly; written whole.
#[serde(default)]
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
    /// sha256 of the posargs (a `build: run` session's arguments may hold secrets; the
    /// record is public to whoever can pull the image).
    #[serde(default)]
    pub posargs: String,
    /// Session environment: names, and the sha256 of each value.
    pub env: BTreeMap<String, String>,
    /// The noxfile and the files listed under `inputs:`, whole.
    pub inputs: Vec<InputDigest>,
    /// With `locked:`: the session's own resolved package set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub locked: Option<LockedKey>,
    /// With `project: keyed`: a digest of the project's own files.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project_files: Option<String>,
    /// sha256 of what the builder runs (the build script, the hook, its fixed
    /// environment), so a venvimg whose build recipe changed never reuses images made by
    /// the old one.
    #[serde(default)]
    pub recipe: String,
    /// What the dry run found the session's installs read and run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discovered: Option<Discovered>,
    /// Why the dry run could not run this session: it is keyed by its settings and the
    /// noxfile alone, and every hit is checked against what its build read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub opaque: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh: Option<RefreshKey>,
}

impl KeyDocument {
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key document serialises")
    }
    pub fn key(&self) -> Key {
        Key::of_document(&self.canonical())
    }
}

/// What an image carries so a plan can check a hit: its key, and every project file its
/// build read with the digest it had (in the manifest, so one GET decides a hit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckAnnotation {
    pub key: String,
    pub files: Vec<InputFile>,
}

fn locked_key(sel: &LockedSelection, packages: Vec<String>) -> LockedKey {
    LockedKey {
        groups: sel.groups.clone(),
        only_groups: sel.only_groups.clone(),
        extras: sel.extras.clone(),
        packages,
    }
}

/// The key's name of a compression: `gzip`, `zstd`, `zstd-19` (the level only when it is
/// not the default, so keys made before levels existed stay the same).
pub fn compression_name(c: Compression) -> String {
    match c {
        Compression::Gzip => "gzip".into(),
        Compression::Zstd { level } if level == crate::model::ZSTD_DEFAULT_LEVEL => "zstd".into(),
        Compression::Zstd { level } => format!("zstd-{level}"),
    }
}

/// The tag of a session's index: its venv dir and a hash of every platform's key.
pub fn index_tag(venv_dir: &VenvName, keys: &[(Platform, Key)]) -> Tag {
    let lines: Vec<(String, String)> = keys
        .iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect();
    Tag::hashed(venv_dir.as_str(), &hash_lines(&lines))
}

fn hash_lines(pairs: &[(String, String)]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort();
    let mut h = Sha256::new();
    for (platform, key) in sorted {
        h.update(format!("{platform} {key}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

/// The tag of the all-sessions images' index: a hash of every platform's all-sessions tag.
pub fn all_index_tag(tags: &[(Platform, Tag)]) -> Tag {
    let lines: Vec<(String, String)> = tags
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    Tag::hashed("all", &hash_lines(&lines))
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Status {
    Hit { digest: model::Digest },
    Miss,
}

/// Why the dry run says a session cannot be built as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// nox skipped it: the base image lacks the Python it asks for.
    MissingInterpreter { python: String },
}

#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub config: SessionConfig,
    pub venv_dir: VenvName,
    pub document: KeyDocument,
    pub key: Key,
    pub tag: Tag,
    pub image: Reference,
    pub status: Status,
    /// A hit's manifest as the lookup read it (its layer sizes, without a second request).
    pub hit_manifest: Option<bytes::Bytes>,
    /// What the dry run derived (None for an opaque session).
    pub derived: Option<Derived>,
    /// An image exists at the tag, but files its build read changed since (a miss).
    pub changed: Vec<String>,
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub base: BaseImage,
    pub inputs: Vec<InputDigest>,
    pub sessions: Vec<SessionPlan>,
    /// Every session the noxfile defines.
    pub listing: Vec<ListedSession>,
    pub nox_version: Option<String>,
    /// Where the dry run came from: `run`, `saved here`, `saved in the repository`.
    pub dry_run_source: &'static str,
    /// A dry run made by this plan that `build` saves in the repository for other runners.
    pub dry_run_to_share: Option<(Reference, DryRun)>,
    /// The sessions are exactly those of the config (no `--session` narrowed or widened
    /// them): only then is the combined image the all-sessions image.
    pub complete: bool,
    /// Whether uv.lock still answers pyproject.toml (`None`: no uv.lock).
    pub lock: Option<crate::python::lockcheck::LockState>,
}

impl Plan {
    /// The sessions whose image is not in the registry, in plan order.
    pub fn misses(&self) -> impl Iterator<Item = &SessionPlan> {
        self.sessions
            .iter()
            .filter(|s| matches!(s.status, Status::Miss))
    }

    /// The tag of the image holding every planned session's venv: a hash of their keys,
    /// `all-…` when they are the config's sessions, `sessions-…` for a `--session` pick.
    pub fn combined_tag(&self) -> Tag {
        let mut h = Sha256::new();
        let mut keys: Vec<&str> = self.sessions.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        for k in keys {
            h.update(k.as_bytes());
            h.update(b"\n");
        }
        let prefix = if self.complete { "all" } else { "sessions" };
        Tag::hashed(prefix, &hex::encode(h.finalize()))
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let digest = crate::model::Digest::of_reader(fs_err::File::open(path)?)?;
    Ok(digest.hex().to_string())
}

/// The noxfile and the files listed under `inputs:`, whole.
pub fn hash_inputs(config: &Config) -> Result<Vec<InputDigest>, Error> {
    let mut names: Vec<String> = vec![crate::config::NOXFILE.to_string()];
    names.extend(config.inputs.iter().cloned());
    let mut out = Vec::with_capacity(names.len());
    for input in &names {
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

fn matches(name: &str, s: &ListedSession) -> bool {
    name == s.session || name == s.name || s.signatures.iter().any(|g| g == name)
}

/// Sessions nox runs by default that `sessions:` in venvimg.yaml leaves out: they get no
/// image, and a CI job that expects one finds an empty output. None when the config
/// lists no sessions (then nox's own selection is followed).
pub fn left_out(config: &Config, listing: &[ListedSession]) -> Vec<String> {
    let Some(configured) = &config.sessions else {
        return Vec::new();
    };
    listing
        .iter()
        .filter(|l| l.selected && !configured.iter().any(|c| matches(&c.name, l)))
        .map(|l| l.session.clone())
        .collect()
}

/// Which sessions this run covers: those configured (checked against every session the
/// noxfile defines, `default=False` ones included; a function name stands for all its
/// signatures), or what nox selects by default; narrowed by `--session`.
pub fn select_sessions(
    config: &Config,
    only: &[String],
    listing: &[ListedSession],
) -> Result<Vec<SessionConfig>, Error> {
    // A name from `sessions:` is the config file's mistake; one from `--session` is
    // checked against the noxfile.
    let unknown = |name: &str, configured: bool| Error::UnknownSession {
        file: if configured {
            config.file.clone()
        } else {
            config.project_dir.join(crate::config::NOXFILE)
        },
        name: name.to_string(),
        available: listing.iter().map(|d| d.session.clone()).collect(),
        functions: {
            let mut f: Vec<String> = listing.iter().map(|d| d.name.clone()).collect();
            f.dedup();
            f
        },
    };
    let mut sessions: Vec<SessionConfig> = Vec::new();
    match &config.sessions {
        None => {
            for s in listing.iter().filter(|s| s.selected) {
                sessions.push(config.default_session(&s.session));
            }
        }
        Some(configured) => {
            for c in configured {
                let expanded: Vec<&ListedSession> =
                    listing.iter().filter(|d| matches(&c.name, d)).collect();
                if expanded.is_empty() {
                    return Err(unknown(&c.name, true));
                }
                for d in expanded {
                    let mut s = c.clone();
                    s.name = d.session.clone();
                    sessions.push(s);
                }
            }
        }
    }
    // `--session` may name a session the configuration leaves out (nox's `-s` runs
    // default=False sessions too); it gets the defaults.
    for o in only {
        let expanded: Vec<&ListedSession> = listing.iter().filter(|d| matches(o, d)).collect();
        if expanded.is_empty() {
            return Err(unknown(o, false));
        }
        for d in expanded {
            if !sessions.iter().any(|s| s.name == d.session) {
                sessions.push(config.default_session(&d.session));
            }
        }
    }
    if sessions.is_empty() {
        return Err(crate::error::UsageError::Path {
            path: config.project_dir.join(crate::config::NOXFILE),
            why:
                "nox selects no sessions; add sessions to noxfile.py or list them under `sessions:`"
                    .into(),
        }
        .into());
    }
    let mut selected: Vec<SessionConfig> = Vec::new();
    for s in sessions {
        let wanted = only.is_empty()
            || only
                .iter()
                .any(|o| listing.iter().any(|d| d.session == s.name && matches(o, d)));
        if wanted && !selected.iter().any(|x| x.name == s.name) {
            selected.push(s);
        }
    }
    Ok(selected)
}

/// What the hook's dry run covers: the configured sessions grouped by how they build,
/// plus any `--session` names; `locked:` exports.
pub fn plan_spec(config: &Config, only: &[String]) -> PlanSpec {
    let mut groups: Vec<SpecGroup> = Vec::new();
    let mut add = |default: bool, names: Vec<String>, s: Option<&SessionConfig>| {
        let run = s.map(|s| s.build).unwrap_or(config.default_build) == BuildMode::Run;
        let posargs = s.map(|s| s.posargs.clone()).unwrap_or_default();
        let env = s.map(|s| s.env.clone()).unwrap_or_default();
        if let Some(g) = groups
            .iter_mut()
            .find(|g| g.run == run && g.posargs == posargs && g.env == env)
        {
            g.default |= default;
            g.sessions.extend(names);
            return;
        }
        groups.push(SpecGroup {
            default,
            sessions: names,
            run,
            posargs,
            env,
        });
    };
    let configured: Vec<&str> = config
        .sessions
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    match &config.sessions {
        // nox's default selection, unless `--session` names what to plan.
        None => add(only.is_empty(), Vec::new(), None),
        Some(list) => {
            for s in list {
                add(false, vec![s.name.clone()], Some(s));
            }
        }
    }
    let extra: Vec<String> = only
        .iter()
        .filter(|o| !configured.contains(&o.as_str()))
        .cloned()
        .collect();
    if !extra.is_empty() {
        add(false, extra, None);
    }
    let exports = config
        .sessions
        .iter()
        .flatten()
        .filter_map(|s| {
            s.locked.as_ref().map(|l| SpecExport {
                id: s.name.clone(),
                args: l.export_args(),
            })
        })
        .collect();
    PlanSpec {
        envdir: config.envdir.clone(),
        groups,
        exports,
    }
}

fn hashed(value: &str) -> String {
    model::Digest::of(value.as_bytes()).into_string()
}

/// The parts of a key document that do not come from the dry run.
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
        builder: config.builder.key_name().to_string(),
        compression: compression_name(config.compression),
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
        posargs: if session.posargs.is_empty() {
            String::new()
        } else {
            hashed(&serde_json::to_string(&session.posargs).expect("json"))
        },
        env: session
            .env
            .iter()
            .map(|(k, v)| (k.clone(), hashed(v)))
            .collect(),
        inputs: inputs.to_vec(),
        locked,
        project_files,
        recipe: crate::engine::recipe_digest(config, session),
        discovered: None,
        opaque: None,
        refresh: None,
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
        let meta = match fs_err::symlink_metadata(&path) {
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
            let t = fs_err::read_link(&path).map_err(|source| Error::Io { path, source })?;
            h.update(b"link:");
            h.update(t.to_string_lossy().as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

fn git_tracked_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let out = crate::process::command("git")
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
    for entry in fs_err::read_dir(root.join(rel))? {
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

/// Values never to show in a record or an output: build_env, every session's env, the
/// registry password from the environment.
pub fn secret_values(config: &Config, extra: &BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = config
        .build_env
        .values()
        .chain(extra.values())
        .chain(
            config
                .sessions
                .iter()
                .flatten()
                .flat_map(|s| s.env.values()),
        )
        .filter(|s| s.len() >= 4)
        .cloned()
        .chain(
            std::env::var("VENVIMG_PASSWORD")
                .ok()
                .filter(|p| p.len() >= 4),
        )
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The period index of `refresh` now.
fn refresh_key(every: &crate::config::Refresh) -> RefreshKey {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    RefreshKey {
        every: every.text.clone(),
        period: now / every.seconds.max(1),
    }
}

/// Plan every selected session: resolve the base, dry-run the noxfile, compute keys, and
/// look each tag up (a hit only when the files its image's build read are unchanged).
pub async fn make_plan(
    config: &Config,
    registry: &Registry,
    only: &[String],
) -> Result<Plan, Error> {
    let explicit = hash_inputs(config)?;
    let base = registry
        .resolve_base(&config.base, &config.platform)
        .await?;
    let spec = plan_spec(config, only);
    let noxfile_sha = explicit
        .iter()
        .find(|i| i.path == crate::config::NOXFILE)
        .map(|i| i.sha256.clone())
        .unwrap_or_default();
    let (hook_out, seen_workdir, dry_run_source, dry_run_to_share) =
        dry_run(config, registry, &base, spec, &noxfile_sha).await?;
    crate::python::hook::check_listing(&hook_out.listing)
        .map_err(|e| Error::Nox(crate::python::nox::NoxError::Hook(e)))?;
    let selected = select_sessions(config, only, &hook_out.listing)?;
    let complete = only.is_empty()
        || select_sessions(config, &[], &hook_out.listing).is_ok_and(|all| {
            let names = |v: &[SessionConfig]| {
                let mut n: Vec<String> = v.iter().map(|s| s.name.clone()).collect();
                n.sort();
                n
            };
            names(&all) == names(&selected)
        });
    let secrets = secret_values(config, &BTreeMap::new());

    let mut sessions = Vec::with_capacity(selected.len());
    for session in selected {
        let venv_dir = nox::venv_dir_name(&config.envdir, &session.name);
        let resolved = match &session.locked {
            Some(_) => Some(locked::from_exports(&session.name, &hook_out.exports)?),
            None => None,
        };
        let mut document =
            key_document(config, base.digest.as_str(), &explicit, &session, resolved)?;
        let events = hook_out.records.sessions.get(&session.name);
        let mut problem = None;
        let mut derived = None;
        match events.and_then(|e| e.status.as_deref()) {
            Some("SUCCESS") => {
                let ctx = inputs::Context {
                    session: &session.name,
                    project_dir: &config.project_dir,
                    workdir: &seen_workdir,
                    envdir: &config.envdir,
                    secrets: &secrets,
                };
                let d = inputs::derive(&ctx, &hook_out.records.module, events.expect("status"))?;
                document.discovered = Some(d.discovered.clone());
                derived = Some(d);
            }
            Some("SKIPPED") => {
                let reason = events.and_then(|e| e.reason.clone()).unwrap_or_default();
                problem = Some(Problem::MissingInterpreter {
                    python: missing_python(&reason).unwrap_or(reason),
                });
                document.opaque = Some("skipped by nox in the dry run".into());
            }
            other => {
                let reason = events
                    .and_then(|e| e.reason.clone())
                    .unwrap_or_else(|| other.unwrap_or("not run").to_string());
                document.opaque = Some(format!("the dry run failed: {reason}"));
            }
        }
        let floating = document
            .discovered
            .as_ref()
            .is_some_and(|d| !d.floating.is_empty());
        if let Some(every) = session.refresh.as_ref().or(config.refresh.as_ref()) {
            if floating || document.opaque.is_some() {
                document.refresh = Some(refresh_key(every));
            }
        }
        let key = document.key();
        let tag = Tag::of_session(&venv_dir, &key);
        let image = crate::registry::at_tag(&config.repository, &tag);
        sessions.push(SessionPlan {
            config: session,
            venv_dir,
            document,
            key,
            tag,
            image,
            status: Status::Miss,
            hit_manifest: None,
            derived,
            changed: Vec::new(),
            problem,
        });
    }
    look_up(config, registry, &mut sessions).await?;
    Ok(Plan {
        base,
        inputs: explicit,
        sessions,
        listing: hook_out.listing,
        nox_version: hook_out.nox_version,
        dry_run_source,
        dry_run_to_share,
        complete,
        lock: crate::python::lockcheck::check(&config.project_dir),
    })
}

/// Each session's tag looked up (a hit only when the files its image's build read are
/// unchanged). Every tag at once: a hit costs one request, and 20 sessions should not
/// cost 20 round trips in sequence. GET, not HEAD: the manifest says what to check. With
/// `trusted_repository:` (a pull-request job), the protected branch's images first: a hit
/// there is used where it is, and only misses are built and pushed here.
async fn look_up(
    config: &Config,
    registry: &Registry,
    sessions: &mut [SessionPlan],
) -> Result<(), Error> {
    let trusted = config.trusted().map(|t| {
        sessions
            .iter()
            .map(|s| crate::registry::at_tag(t, &s.tag))
            .collect::<Vec<_>>()
    });
    if let Some(trusted) = &trusted {
        let lookups =
            futures_util::future::join_all(trusted.iter().map(|r| registry.manifest_if_exists(r)))
                .await;
        for ((s, found), at) in sessions.iter_mut().zip(lookups).zip(trusted) {
            let Some((bytes, digest)) = found? else {
                continue;
            };
            if check_hit(&bytes, &s.key, &config.project_dir).is_ok() {
                s.status = Status::Hit { digest };
                s.hit_manifest = Some(bytes);
                s.image = at.clone();
            }
        }
    }
    let lookups = futures_util::future::join_all(sessions.iter().map(|s| async move {
        match s.status {
            Status::Hit { .. } => Ok(None),
            Status::Miss => registry.manifest_if_exists(&s.image).await,
        }
    }))
    .await;
    for (s, found) in sessions.iter_mut().zip(lookups) {
        let Some((bytes, digest)) = found? else {
            continue;
        };
        match check_hit(&bytes, &s.key, &config.project_dir) {
            Ok(()) => {
                s.status = Status::Hit { digest };
                s.hit_manifest = Some(bytes);
            }
            Err(changed) => s.changed = changed,
        }
    }
    Ok(())
}

type DryRunResult = (
    PlanOutput,
    String,
    &'static str,
    Option<(Reference, DryRun)>,
);

/// The plan's dry run of the noxfile: one saved on this machine or in the repository
/// while everything it depends on is unchanged, else run now (in the base image; on this
/// machine for the local builder, which is never reused: its nox is this machine's).
async fn dry_run(
    config: &Config,
    registry: &Registry,
    base: &BaseImage,
    spec: PlanSpec,
    noxfile_sha: &str,
) -> Result<DryRunResult, Error> {
    let local = config.builder == crate::config::BuilderKind::Local;
    let platform = config.platform.to_string();
    let key = dryrun::cache_key(&dryrun::KeyParts {
        base: base.digest.as_str(),
        platform: &platform,
        workdir: &config.workdir,
        envdir: &config.envdir,
        spec: &spec,
        noxfile_sha256: noxfile_sha,
    });
    let shared = Reference::with_tag(
        config.repository.resolve_registry().to_string(),
        config.repository.repository().to_string(),
        dryrun::tag(&key),
    );
    if !local {
        if let Some(d) = dryrun::load_local(&key).filter(|d| d.still_holds(&config.project_dir)) {
            return Ok((d.output(), config.workdir.clone(), "saved here", None));
        }
        let saved = registry
            .pull_artifact(&shared, dryrun::MEDIA_TYPE, dryrun::MAX_SIZE)
            .await?;
        if let Some(d) = saved
            .and_then(|b| DryRun::from_bytes(&b, &key))
            .filter(|d| d.still_holds(&config.project_dir))
        {
            dryrun::save_local(&d);
            return Ok((
                d.output(),
                config.workdir.clone(),
                "saved in the repository",
                None,
            ));
        }
    }
    let mut place = crate::engine::HookPlace::for_config(config, base);
    if config.dry_run_here {
        place.kind = crate::config::BuilderKind::Local;
    }
    let project_dir = config.project_dir.clone();
    let workdir = config.workdir.clone();
    let envdir = config.envdir.clone();
    let locked = !spec.exports.is_empty();
    let (out, seen) = tokio::task::spawn_blocking(move || {
        crate::engine::blocking(|| {
            crate::engine::run_hook_plan(&place, &project_dir, &workdir, &envdir, &spec)
        })
    })
    .await
    .expect("the dry run thread does not panic")?;
    if local {
        return Ok((out, seen, "run", None));
    }
    let saved = DryRun::from_output(key, &out, &config.project_dir, &seen, locked);
    if let Some(d) = &saved {
        dryrun::save_local(d);
    }
    Ok((out, seen, "run", saved.map(|d| (shared, d))))
}

/// "Python interpreter 3.13 not found" → "3.13".
fn missing_python(reason: &str) -> Option<String> {
    let rest = reason.split("interpreter ").nth(1)?;
    Some(rest.split(" not found").next()?.trim().to_string())
}

/// Is the image at a session's tag one its plan can use? Its check annotation must carry
/// the same key, and every file its build read must hash as it did.
pub fn check_hit(manifest: &[u8], key: &Key, project_dir: &Path) -> Result<(), Vec<String>> {
    let check = parse_check(manifest).ok_or_else(|| {
        vec![
            "the image carries no check of what its build read (not made by this venvimg)"
                .to_string(),
        ]
    })?;
    if *key != check.key {
        return Err(vec![format!(
            "the image was made for key {}, not {}",
            Key::short_of(&check.key),
            key.short()
        )]);
    }
    let changed: Vec<String> = check
        .files
        .iter()
        .filter_map(|f| {
            inputs::changed(project_dir, f).map(|now| {
                if now == inputs::ABSENT {
                    format!("{} (gone)", f.path)
                } else if f.sha256 == inputs::ABSENT {
                    format!("{} (new)", f.path)
                } else {
                    format!("{} (changed)", f.path)
                }
            })
        })
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(changed)
    }
}

/// The check annotation of a manifest, if it has one that parses.
pub fn parse_check(manifest: &[u8]) -> Option<CheckAnnotation> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let raw = v.get("annotations")?.get(CHECK_ANNOTATION)?.as_str()?;
    serde_json::from_str(raw).ok()
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
            builder: "container".into(),
            compression: "gzip".into(),
            layers: "single".into(),
            owner: "0:0".into(),
            project: "refuse".into(),
            build: "install-only".into(),
            posargs: String::new(),
            env: BTreeMap::new(),
            inputs: vec![InputDigest {
                path: "noxfile.py".into(),
                sha256: "00".into(),
            }],
            locked: None,
            project_files: None,
            recipe: "r".into(),
            discovered: None,
            opaque: None,
            refresh: None,
        }
    }

    #[test]
    fn a_zstd_level_names_itself_in_the_key_and_the_default_keeps_old_keys() {
        assert_eq!(compression_name(Compression::Gzip), "gzip");
        // `zstd` at the default level keeps the name keys had before levels existed.
        assert_eq!(compression_name(Compression::ZSTD), "zstd");
        assert_eq!(compression_name(Compression::Zstd { level: 19 }), "zstd-19");
    }

    #[test]
    fn same_document_same_key() {
        assert_eq!(doc().key(), doc().key());
        assert_eq!(doc().key().as_str().len(), 64);
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = doc().key();
        type Mutation = Box<dyn Fn(&mut KeyDocument)>;
        let file = |sha: &str| InputFile {
            path: "req.txt".into(),
            sha256: sha.into(),
            via: "-r".into(),
        };
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
            Box::new(|d| d.posargs = hashed("[\"-x\"]")),
            Box::new(|d| {
                d.env.insert("A".into(), hashed("1"));
            }),
            Box::new(|d| d.inputs[0].sha256 = "01".into()),
            Box::new(|d| d.inputs[0].path = "other.py".into()),
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
            Box::new(move |d| {
                d.discovered = Some(Discovered {
                    files: vec![file("01")],
                    commands: "c".into(),
                    ..Discovered::default()
                })
            }),
            Box::new(move |d| {
                d.discovered = Some(Discovered {
                    files: vec![file("02")],
                    commands: "c".into(),
                    ..Discovered::default()
                })
            }),
            Box::new(|d| {
                d.discovered = Some(Discovered {
                    commands: "c2".into(),
                    ..Discovered::default()
                })
            }),
            Box::new(|d| d.opaque = Some("failed".into())),
            Box::new(|d| {
                d.refresh = Some(RefreshKey {
                    every: "7d".into(),
                    period: 3,
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
        let t = Tag::of_session(&VenvName::parse("tests-3-12").unwrap(), &k);
        assert_eq!(t, format!("tests-3-12-{}", &k.as_str()[..16]));
        assert_eq!(Tag::parse(t.as_str()), Ok(t.clone()));
    }

    /// Index tags are what runners on other platforms compute too: the formula is the
    /// contract (sorted `PLATFORM KEY` lines, sha256, 16 hex), whatever order they come in.
    #[test]
    fn index_tags_hash_sorted_platform_key_lines() {
        let (k1, k2) = (
            Key::parse(&"1".repeat(64)).unwrap(),
            Key::parse(&"2".repeat(64)).unwrap(),
        );
        let (amd, arm) = (
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
        );
        let venv = VenvName::parse("tests").unwrap();
        let lines = format!("linux/amd64 {k1}\nlinux/arm64 {k2}\n");
        let want = format!(
            "tests-{}",
            &hex::encode(Sha256::digest(lines.as_bytes()))[..16]
        );
        assert_eq!(
            index_tag(
                &venv,
                &[(arm.clone(), k2.clone()), (amd.clone(), k1.clone())]
            ),
            want
        );
        assert_eq!(
            index_tag(&venv, &[(amd.clone(), k1), (arm.clone(), k2)]),
            want
        );
        let (t1, t2) = (Tag::parse("all-a").unwrap(), Tag::parse("all-b").unwrap());
        let lines = "linux/amd64 all-a\nlinux/arm64 all-b\n";
        let want = format!(
            "all-{}",
            &hex::encode(Sha256::digest(lines.as_bytes()))[..16]
        );
        assert_eq!(all_index_tag(&[(arm, t2), (amd, t1)]), want);
    }

    #[test]
    fn hits_are_checked_against_what_the_build_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("req.txt"), "six==1\n").unwrap();
        let sha = inputs::sha256_hex(b"six==1\n");
        let key = Key::parse(&"ab".repeat(32)).unwrap();
        let manifest = |files: Vec<InputFile>| {
            let check = CheckAnnotation {
                key: key.to_string(),
                files,
            };
            serde_json::to_vec(&serde_json::json!({
                "annotations": {CHECK_ANNOTATION: serde_json::to_string(&check).unwrap()}
            }))
            .unwrap()
        };
        let f = |sha: &str| InputFile {
            path: "req.txt".into(),
            sha256: sha.into(),
            via: String::new(),
        };
        assert_eq!(check_hit(&manifest(vec![f(&sha)]), &key, d.path()), Ok(()));
        assert_eq!(
            check_hit(&manifest(vec![f("00")]), &key, d.path()),
            Err(vec!["req.txt (changed)".to_string()])
        );
        let other = Key::parse(&"cd".repeat(32)).unwrap();
        assert!(check_hit(&manifest(vec![]), &other, d.path()).is_err());
        assert!(check_hit(b"{}", &key, d.path()).is_err());
    }
}
