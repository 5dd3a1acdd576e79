//! A session's discovered inputs: from the commands the hook recorded, the project files
//! its installs read (followed through nested `-r` / `-c` lines and path installs' metadata),
//! the lock entries it takes from `uv.lock`, the files it made itself, a digest of the
//! commands, and the requirements nothing pins. What `plan` keys a session by, and what
//! an image records so a hit can be checked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hook::{Event, OutsideFile, SessionEvents};
use super::installs::{self, Install, ReqLine, Role};
use crate::{model, untrusted};

/// The digest recorded for a file an install names that does not exist (yet): if it
/// appears later, the key changes.
pub const ABSENT: &str = "absent";

/// Requirement files are small; a cap keeps a hostile one from exhausting memory.
const REQUIREMENTS_CAP: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct InputFile {
    /// Relative to the project for project files; absolute (in the builder) for files the
    /// session made itself.
    pub path: String,
    pub sha256: String,
    /// How the installs reach it (`uv pip install -r`, `-r in requirements/test.txt`...).
    #[serde(default)]
    pub via: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockInput {
    /// The lock file, relative to the project.
    pub lock: String,
    /// The selection (`--group test`, `--extra x`...) the install takes from it.
    pub selection: Vec<String>,
    /// sha256 of the entries it installs (name, version, source, hashes), sorted.
    pub sha256: String,
    /// `name==version` (or path / URL) of each entry, for `plan --explain`.
    pub packages: Vec<String>,
}

/// What a session's installs read and do, as far as its venv's bytes go. Part of the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Discovered {
    /// Files of the project the installs read.
    pub files: Vec<InputFile>,
    /// Files the session made itself and handed to an install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<InputFile>,
    /// Lock entries taken from a uv.lock (instead of the whole file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockInput>,
    /// sha256 of the session's commands (argv, working directory, the environment nox
    /// gives them): a noxfile change that changes what runs changes the key, one that
    /// does not (a comment, another session) does not.
    pub commands: String,
    /// Requirements no pin, constraint or lock covers: this session's venv may differ from
    /// day to day with the same files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floating: Vec<String>,
    /// Files the noxfile read, when it writes into the venv or downloads by itself: then
    /// what it read may end up in the venv by a way no command shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noxfile_reads: Vec<InputFile>,
}

impl Discovered {
    /// Every keyed file, with the digest it had: what a hit is checked against.
    pub fn checked_files(&self) -> impl Iterator<Item = &InputFile> {
        self.files.iter().chain(self.noxfile_reads.iter())
    }
}

/// One command as the image records it: values that may be secrets masked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedCommand {
    pub argv: Vec<String>,
    /// Relative to the project when inside it.
    pub cwd: String,
    /// Names only, with a short digest of each value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct Derived {
    pub discovered: Discovered,
    pub commands: Vec<RecordedCommand>,
    /// What venvimg saw but cannot key (printed with -v, kept in the record).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("session `{session}`: {via} reads {path}, outside the project ({workdir})\n  hint: venvimg keys a session by the files its installs read; keep them in the project (a file of the base image is covered by its digest only when the base image makes it: move it into the project or into the base image build)")]
    Outside {
        session: String,
        path: String,
        via: String,
        workdir: String,
    },
    #[error("session `{session}`: {path}: {source}")]
    Io {
        session: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where things are: the project on this machine, and the paths the builder sees.
pub struct Context<'a> {
    pub session: &'a str,
    pub project_dir: &'a Path,
    pub workdir: &'a str,
    pub envdir: &'a str,
    /// Values never to show in a record (build_env, session env).
    pub secrets: &'a [String],
}

enum Place {
    /// In the project: path relative to it, and on this machine.
    Project(String, PathBuf),
    Outside(String),
}

/// One install command followed through the files it names: where it runs, whether uv
/// (or pip) reads its requirement files, and the pins and requirements found so far.
struct InstallWalk<'w> {
    /// Where pip resolves path lines of requirement files.
    cwd: &'w str,
    uv: bool,
    pins: HashSet<String>,
    specs: Vec<(String, bool, String)>,
}

impl<'w> InstallWalk<'w> {
    fn new(cwd: &'w str, uv: bool) -> Self {
        InstallWalk {
            cwd,
            uv,
            pins: HashSet::new(),
            specs: Vec::new(),
        }
    }
}

struct State<'c, 'a> {
    ctx: &'c Context<'a>,
    project_real: PathBuf,
    files: BTreeMap<String, InputFile>,
    generated: BTreeMap<String, InputFile>,
    locks: Vec<LockInput>,
    floating: BTreeSet<String>,
    notes: Vec<String>,
    outside: HashMap<String, OutsideFile>,
    visited: HashSet<(String, Role)>,
}

/// Lexical `join` + `..` resolution of container paths (the builder's, which may not exist
/// here).
fn normalize(base: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        PathBuf::from(p)
    } else {
        Path::new(base).join(p)
    };
    let mut out: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    format!("/{}", out.join("/"))
}

fn parent(p: &str) -> String {
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].to_string(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl<'c, 'a> State<'c, 'a> {
    fn place(&self, abs: &str) -> Place {
        let w = self.ctx.workdir.trim_end_matches('/');
        if abs == w {
            return Place::Project(".".into(), self.ctx.project_dir.to_path_buf());
        }
        match abs.strip_prefix(&format!("{w}/")) {
            Some(rel) => Place::Project(rel.to_string(), self.ctx.project_dir.join(rel)),
            None => Place::Outside(abs.to_string()),
        }
    }

    fn io(&self, path: &Path, source: std::io::Error) -> InputError {
        InputError::Io {
            session: self.ctx.session.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    fn outside_error(&self, path: &str, via: &str) -> InputError {
        InputError::Outside {
            session: self.ctx.session.to_string(),
            path: path.to_string(),
            via: via.to_string(),
            workdir: self.ctx.workdir.to_string(),
        }
    }

    /// A project file on this machine, refusing a symlink that leaves the project: its
    /// real path, or `None` when it does not exist (or is a folder).
    fn real_project_file(&self, rel: &str, host: &Path) -> Result<Option<PathBuf>, InputError> {
        match fs_err::symlink_metadata(host) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(host, e)),
        }
        let real = fs_err::canonicalize(host).map_err(|e| self.io(host, e))?;
        if !real.starts_with(&self.project_real) {
            return Err(
                self.outside_error(&real.display().to_string(), &format!("{rel} (a symlink)"))
            );
        }
        Ok((!real.is_dir()).then_some(real))
    }

    /// Key a project file by its digest; its bytes back when `text` (requirement files,
    /// pyproject.toml: small, capped).
    fn key_file_as(
        &mut self,
        rel: &str,
        host: &Path,
        via: &str,
        text: bool,
    ) -> Result<Option<Vec<u8>>, InputError> {
        let Some(real) = self.real_project_file(rel, host)? else {
            self.files.entry(rel.to_string()).or_insert(InputFile {
                path: rel.to_string(),
                sha256: ABSENT.into(),
                via: via.to_string(),
            });
            return Ok(None);
        };
        let (sha, bytes) = if text {
            let b = untrusted::read(&real, REQUIREMENTS_CAP).map_err(|e| self.io(host, e))?;
            (sha256_hex(&b), Some(b))
        } else {
            (
                untrusted::sha256(&real).map_err(|e| self.io(host, e))?,
                None,
            )
        };
        self.files.entry(rel.to_string()).or_insert(InputFile {
            path: rel.to_string(),
            sha256: sha,
            via: via.to_string(),
        });
        Ok(bytes)
    }

    fn key_file(
        &mut self,
        rel: &str,
        host: &Path,
        via: &str,
    ) -> Result<Option<Vec<u8>>, InputError> {
        self.key_file_as(rel, host, via, true)
    }

    fn key_if_present(
        &mut self,
        rel_dir: &str,
        name: &str,
        via: &str,
    ) -> Result<Option<Vec<u8>>, InputError> {
        let rel = join_rel(rel_dir, name);
        let host = self.ctx.project_dir.join(&rel);
        if fs_err::symlink_metadata(&host).is_err() {
            return Ok(None);
        }
        self.key_file(&rel, &host, via)
    }

    /// Follow one file an install names. `base` is where a relative path starts; the
    /// walk's `cwd` is where pip resolves path lines of requirement files.
    fn add(
        &mut self,
        path: &str,
        role: Role,
        base: &str,
        via: &str,
        walk: &mut InstallWalk<'_>,
    ) -> Result<(), InputError> {
        let path = path.strip_prefix("file://").unwrap_or(path);
        let path = path.strip_prefix("file:").unwrap_or(path);
        let abs = normalize(base, path);
        if !self.visited.insert((abs.clone(), role)) {
            return Ok(());
        }
        match self.place(&abs) {
            Place::Project(rel, host) => match role {
                Role::Requirements | Role::Constraints => {
                    let Some(bytes) = self.key_file(&rel, &host, via)? else {
                        return Ok(());
                    };
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    self.follow_lines(&text, &abs, &rel, role, walk)?;
                }
                Role::WholeFile => {
                    let is_metadata = rel.ends_with("pyproject.toml");
                    let bytes = self.key_file_as(&rel, &host, via, is_metadata)?;
                    if let (Some(b), true) = (bytes, rel.ends_with("pyproject.toml")) {
                        // `-r pyproject.toml`: its dependencies are the requirements.
                        for spec in project_dependencies(&String::from_utf8_lossy(&b), &[], true)
                            .unwrap_or_default()
                        {
                            walk.specs.push((spec, false, rel.clone()));
                        }
                    }
                }
                Role::Project => {
                    if host.is_file() {
                        self.key_file_as(&rel, &host, via, false)?;
                        return Ok(());
                    }
                    self.project_dir_inputs(&rel, via, &mut walk.specs)?;
                }
                Role::FindLinks => {
                    let Ok(rd) = fs_err::read_dir(&host) else {
                        self.key_file_as(&rel, &host, via, false)?;
                        return Ok(());
                    };
                    let mut names: Vec<String> = rd
                        .flatten()
                        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    for n in names {
                        let r = join_rel(&rel, &n);
                        let h = self.ctx.project_dir.join(&r);
                        self.key_file_as(&r, &h, &format!("--find-links {rel}"), false)?;
                    }
                }
            },
            Place::Outside(abs) => {
                if let Some(f) = self.outside.get(&abs).cloned() {
                    let Some(sha) = f.sha256.clone() else {
                        return Err(self.outside_error(&abs, &format!("{via} (too big to record)")));
                    };
                    self.generated.entry(abs.clone()).or_insert(InputFile {
                        path: abs.clone(),
                        sha256: sha,
                        via: via.to_string(),
                    });
                    if matches!(role, Role::Requirements | Role::Constraints) {
                        if let Some(text) = &f.text {
                            self.follow_lines(text, &abs, &abs, role, walk)?;
                        }
                    }
                } else if under(&abs, self.ctx.envdir) || under(&abs, "/tmp") {
                    // A folder or file the session made at build time that no command
                    // named as a file: what made it is keyed (its commands).
                    self.notes.push(format!(
                        "{via}: {abs} is made during the build; keyed by the commands that make it"
                    ));
                } else {
                    return Err(self.outside_error(&abs, via));
                }
            }
        }
        Ok(())
    }

    fn follow_lines(
        &mut self,
        text: &str,
        abs: &str,
        shown: &str,
        role: Role,
        walk: &mut InstallWalk<'_>,
    ) -> Result<(), InputError> {
        let dir = parent(abs);
        for line in installs::parse_requirements(text) {
            match line {
                ReqLine::Include { path, role: r } => {
                    let via = format!(
                        "{} in {shown}",
                        if r == Role::Constraints { "-c" } else { "-r" }
                    );
                    self.add(&path, r, &dir, &via, walk)?;
                }
                ReqLine::Path { path, role: r } => {
                    // uv resolves a path line against the file's folder, pip against the
                    // working directory.
                    let base = if walk.uv {
                        dir.clone()
                    } else {
                        walk.cwd.to_string()
                    };
                    self.add(&path, r, &base, &format!("path in {shown}"), walk)?;
                }
                ReqLine::FindLinks(p) => {
                    self.add(
                        &p,
                        Role::FindLinks,
                        &dir,
                        &format!("--find-links in {shown}"),
                        walk,
                    )?;
                }
                ReqLine::Requirement { spec, hashed } => {
                    if installs::is_pinned(&spec, hashed) {
                        if let Some(n) = installs::requirement_name(&spec) {
                            walk.pins.insert(n);
                        }
                    }
                    if role == Role::Requirements {
                        walk.specs.push((spec, hashed, shown.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// A project folder installed from its path: its metadata files, and the files its
    /// pyproject names as dynamic dependencies.
    fn project_dir_inputs(
        &mut self,
        rel: &str,
        via: &str,
        specs: &mut Vec<(String, bool, String)>,
    ) -> Result<(), InputError> {
        let shown = if rel == "." {
            "the project".to_string()
        } else {
            rel.to_string()
        };
        let via = format!("{via} ({shown} metadata)");
        let pyproject = self.key_if_present(rel, "pyproject.toml", &via)?;
        self.key_if_present(rel, "setup.cfg", &via)?;
        let setup_py = self.key_if_present(rel, "setup.py", &via)?;
        let text = pyproject.map(|b| String::from_utf8_lossy(&b).into_owned());
        let dynamic_files = text
            .as_deref()
            .map(dynamic_dependency_files)
            .unwrap_or_default();
        for f in &dynamic_files {
            let r = join_rel(rel, f);
            let h = self.ctx.project_dir.join(&r);
            if let Some(b) = self.key_file(&r, &h, &format!("dynamic dependencies of {shown}"))? {
                for line in installs::parse_requirements(&String::from_utf8_lossy(&b)) {
                    if let ReqLine::Requirement { spec, hashed } = line {
                        specs.push((spec, hashed, r.clone()));
                    }
                }
            }
        }
        match text
            .as_deref()
            .and_then(|t| project_dependencies(t, &[], false))
        {
            Some(deps) => specs.extend(
                deps.into_iter()
                    .map(|d| (d, false, format!("{shown}/pyproject.toml"))),
            ),
            None if dynamic_files.is_empty() && (setup_py.is_some() || text.is_some()) => {
                self.floating.insert(format!(
                    "the dependencies of {shown} (decided by its build backend)"
                ));
            }
            None => {}
        }
        Ok(())
    }

    fn handle_install(
        &mut self,
        inst: &Install,
        cwd: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), InputError> {
        let mut walk = InstallWalk::new(cwd, inst.uv);
        // Constraint files named in the environment nox gives the command.
        for var in [
            "PIP_CONSTRAINT",
            "UV_CONSTRAINT",
            "UV_OVERRIDE",
            "UV_BUILD_CONSTRAINT",
            "PIP_BUILD_CONSTRAINT",
        ] {
            if let Some(v) = env.get(var) {
                for p in v.split_whitespace() {
                    self.add(p, Role::Constraints, cwd, &format!("${var}"), &mut walk)?;
                }
            }
        }
        // Constraints first, so the pins they give cover the requirements.
        let mut files = inst.files.clone();
        files.sort_by_key(|f| f.role != Role::Constraints);
        for f in &files {
            let via = format!("{} {}", inst.tool, role_flag(f.role));
            self.add(&f.path, f.role, cwd, via.trim_end(), &mut walk)?;
        }
        for (pyproject, group) in &inst.groups {
            let abs = normalize(cwd, pyproject);
            if let Place::Project(rel, host) = self.place(&abs) {
                if let Some(b) =
                    self.key_file(&rel, &host, &format!("{} --group {group}", inst.tool))?
                {
                    for spec in dependency_group(&String::from_utf8_lossy(&b), group) {
                        walk.specs.push((
                            spec,
                            false,
                            format!("{rel} [dependency-groups] {group}"),
                        ));
                    }
                }
            } else {
                return Err(self.outside_error(&abs, &format!("{} --group", inst.tool)));
            }
        }
        for r in &inst.requirements {
            walk.specs
                .push((r.clone(), false, "the command line".into()));
        }
        if let Some(project) = &inst.lock_project {
            self.uv_project_inputs(inst, &normalize(cwd, project))?;
            // uv sync installs from the lock: exports key what it takes (Export events).
            return Ok(());
        }
        let InstallWalk { pins, specs, .. } = walk;
        for (spec, hashed, from) in specs {
            if installs::is_pinned(&spec, hashed) {
                continue;
            }
            let covered = installs::requirement_name(&spec).is_some_and(|n| pins.contains(&n));
            if !covered {
                self.floating
                    .insert(format!("{spec} (from {from}, {})", inst.tool));
            }
        }
        Ok(())
    }

    /// `uv sync` / `uv run` / `uv export` / `uv lock`: the project's pyproject (found upward
    /// as uv does), its uv.toml and .python-version; `uv export`/`lock` read the whole lock.
    fn uv_project_inputs(&mut self, inst: &Install, dir_abs: &str) -> Result<(), InputError> {
        let Place::Project(mut rel, _) = self.place(dir_abs) else {
            return Err(self.outside_error(dir_abs, &inst.tool));
        };
        // uv looks upward for the project, within the checkout.
        loop {
            if self
                .ctx
                .project_dir
                .join(&rel)
                .join("pyproject.toml")
                .exists()
                || rel == "."
            {
                break;
            }
            rel = parent_rel(&rel);
        }
        let via = inst.tool.clone();
        self.key_if_present(&rel, "pyproject.toml", &via)?;
        self.key_if_present(&rel, "uv.toml", &via)?;
        self.key_if_present(&rel, ".python-version", &via)?;
        if inst.reads_whole_lock {
            if let Some(lock) = self.find_lock(&rel) {
                let h = self.ctx.project_dir.join(&lock);
                self.key_file_as(&lock, &h, &via, false)?;
            }
        }
        Ok(())
    }

    /// The uv.lock of a project folder: there or in a folder above (a workspace root).
    fn find_lock(&self, rel: &str) -> Option<String> {
        let mut r = rel.to_string();
        loop {
            let cand = join_rel(&r, "uv.lock");
            if self.ctx.project_dir.join(&cand).is_file() {
                return Some(cand);
            }
            if r == "." {
                return None;
            }
            r = parent_rel(&r);
        }
    }

    fn handle_export(
        &mut self,
        args: &[String],
        cwd: &str,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), InputError> {
        let mut dir = cwd.to_string();
        let mut i = 0;
        while i < args.len() {
            if (args[i] == "--project" || args[i] == "--directory") && i + 1 < args.len() {
                dir = normalize(&dir, &args[i + 1]);
                i += 1;
            }
            i += 1;
        }
        let Place::Project(rel, _) = self.place(&dir) else {
            return Err(self.outside_error(&dir, "uv sync"));
        };
        let lock = self.find_lock(&rel);
        let selection: Vec<String> = args
            .iter()
            .skip_while(|a| a.as_str() != "--no-annotate")
            .skip(1)
            .cloned()
            .collect();
        match (output, &lock) {
            (Some(text), Some(lock)) => {
                let entries = export_entries(text);
                let sha = sha256_hex(entries.join("\n").as_bytes());
                let packages: Vec<String> = entries
                    .iter()
                    .map(|e| e.split(" --hash").next().unwrap_or(e).trim().to_string())
                    .collect();
                // Workspace members and path sources the lock installs: their metadata.
                let lock_dir = parent_rel_of_file(lock);
                for p in &packages {
                    let p = p.strip_prefix("-e ").unwrap_or(p).trim();
                    let p = p.split(';').next().unwrap_or(p).trim();
                    if installs::looks_like_path(p) && !p.contains("://") {
                        let base = normalize(self.ctx.workdir, &lock_dir);
                        // The requirements a source's metadata names are the lock's
                        // to pin: the walk's findings are not kept.
                        self.add(
                            p,
                            Role::Project,
                            &base,
                            &format!("uv.lock source of {}", selection.join(" ")),
                            &mut InstallWalk::new(&base, true),
                        )?;
                    }
                }
                self.locks.push(LockInput {
                    lock: lock.clone(),
                    selection,
                    sha256: sha,
                    packages,
                });
            }
            (_, Some(lock)) => {
                let h = self.ctx.project_dir.join(lock);
                self.key_file_as(
                    lock,
                    &h,
                    "uv sync (the whole lock: uv export failed)",
                    false,
                )?;
                self.notes.push(format!(
                    "uv export failed for `uv sync {}`, so the whole {lock} keys it: {}",
                    selection.join(" "),
                    error.unwrap_or("").lines().last().unwrap_or("")
                ));
            }
            (_, None) => {
                self.floating.insert(format!(
                    "uv sync {} with no uv.lock (it resolves anew)",
                    selection.join(" ")
                ));
            }
        }
        Ok(())
    }
}

fn under(p: &str, dir: &str) -> bool {
    let d = dir.trim_end_matches('/');
    p == d || p.starts_with(&format!("{d}/"))
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir == "." || dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_rel(rel: &str) -> String {
    match rel.rfind('/') {
        Some(i) => rel[..i].to_string(),
        None => ".".into(),
    }
}

fn parent_rel_of_file(rel: &str) -> String {
    parent_rel(rel)
}

fn role_flag(role: Role) -> &'static str {
    match role {
        Role::Requirements => "-r",
        Role::Constraints => "-c",
        Role::Project => "(path)",
        Role::WholeFile => "(file)",
        Role::FindLinks => "--find-links",
    }
}

/// `uv export` output as sorted entries, continuation lines joined, hashes sorted.
pub fn export_entries(text: &str) -> Vec<String> {
    let mut joined: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_suffix('\\') {
            cur.push_str(s.trim());
            cur.push(' ');
        } else {
            cur.push_str(l);
            joined.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        joined.push(cur);
    }
    let mut out: Vec<String> = joined
        .into_iter()
        .map(|e| {
            let mut parts: Vec<&str> = e.split_whitespace().collect();
            let first_hash = parts
                .iter()
                .position(|p| p.starts_with("--hash"))
                .unwrap_or(parts.len());
            let (head, hashes) = parts.split_at_mut(first_hash);
            hashes.sort_unstable();
            let mut s = head.join(" ");
            for h in hashes.iter() {
                s.push(' ');
                s.push_str(h);
            }
            s
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `[project] dependencies` (+ optional dependencies for `extras`, or all of them), or
/// `None` when they are dynamic or there is no `[project]` table.
pub fn project_dependencies(
    pyproject: &str,
    extras: &[String],
    all_extras: bool,
) -> Option<Vec<String>> {
    let v: toml::Table = toml::from_str(pyproject).ok()?;
    let project = v.get("project")?.as_table()?;
    let dynamic: Vec<&str> = project
        .get("dynamic")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if dynamic.contains(&"dependencies") {
        return None;
    }
    let mut out: Vec<String> = strings(project.get("dependencies"));
    if let Some(opt) = project
        .get("optional-dependencies")
        .and_then(|o| o.as_table())
    {
        for (name, list) in opt {
            if all_extras
                || extras
                    .iter()
                    .any(|e| installs::normalize(e) == installs::normalize(name))
            {
                out.extend(strings(Some(list)));
            }
        }
    }
    Some(out)
}

/// The strings of a TOML array (none when `v` is absent or not an array).
pub fn strings(v: Option<&toml::Value>) -> Vec<String> {
    v.and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The files setuptools reads dynamic dependencies from (`[tool.setuptools.dynamic]`).
pub fn dynamic_dependency_files(pyproject: &str) -> Vec<String> {
    let Ok(v) = toml::from_str::<toml::Table>(pyproject) else {
        return Vec::new();
    };
    let Some(dynamic) = v
        .get("tool")
        .and_then(|t| t.get("setuptools"))
        .and_then(|t| t.get("dynamic"))
        .and_then(|t| t.as_table())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut take = |entry: Option<&toml::Value>| match entry.and_then(|e| e.get("file")) {
        Some(toml::Value::String(s)) => out.push(s.clone()),
        Some(toml::Value::Array(a)) => {
            out.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string)))
        }
        _ => {}
    };
    take(dynamic.get("dependencies"));
    if let Some(opt) = dynamic
        .get("optional-dependencies")
        .and_then(|o| o.as_table())
    {
        for (_, e) in opt {
            take(Some(e));
        }
    }
    out
}

/// The requirement strings of a PEP 735 dependency group, `include-group`s expanded.
pub fn dependency_group(pyproject: &str, group: &str) -> Vec<String> {
    let Ok(v) = toml::from_str::<toml::Table>(pyproject) else {
        return Vec::new();
    };
    match v.get("dependency-groups").and_then(|g| g.as_table()) {
        Some(groups) => group_requirements(groups, group),
        None => Vec::new(),
    }
}

/// [`dependency_group`] on an already parsed `[dependency-groups]` table.
pub fn group_requirements(groups: &toml::Table, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    fn walk(groups: &toml::Table, g: &str, out: &mut Vec<String>, seen: &mut HashSet<String>) {
        let key = installs::normalize(g);
        if !seen.insert(key.clone()) {
            return;
        }
        let Some(list) = groups
            .iter()
            .find(|(k, _)| installs::normalize(k) == key)
            .and_then(|(_, v)| v.as_array())
        else {
            return;
        };
        for item in list {
            match item {
                toml::Value::String(s) => out.push(s.clone()),
                toml::Value::Table(t) => {
                    if let Some(inc) = t.get("include-group").and_then(|x| x.as_str()) {
                        walk(groups, inc, out, seen);
                    }
                }
                _ => {}
            }
        }
    }
    walk(groups, group, &mut out, &mut seen);
    out
}

/// Mask what may be a secret in a recorded string: known secret values, and the password
/// of a URL (`https://user:token@host`).
pub fn mask(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for v in secrets {
        if v.len() >= 4 && out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
    }
    // scheme://user:password@host → scheme://user:***@host
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let end = tail.find(['/', ' ', '"', '\'']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        result.push_str(&userinfo[..c]);
                        result.push_str(":***");
                    }
                    None => result.push_str("***"),
                }
                result.push_str(&authority[at..]);
            }
            None => result.push_str(authority),
        }
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

fn cwd_rel(ctx: &Context, cwd: &str) -> String {
    let w = ctx.workdir.trim_end_matches('/');
    if cwd == w {
        ".".into()
    } else {
        cwd.strip_prefix(&format!("{w}/"))
            .map(str::to_string)
            .unwrap_or_else(|| cwd.to_string())
    }
}

/// Derive a session's inputs from what the hook recorded (`module`: the noxfile's import,
/// shared by all sessions) and from the project on this machine.
pub fn derive(
    ctx: &Context,
    module: &[Event],
    session: &SessionEvents,
) -> Result<Derived, InputError> {
    let project_real = fs_err::canonicalize(ctx.project_dir).map_err(|source| InputError::Io {
        session: ctx.session.to_string(),
        path: ctx.project_dir.to_path_buf(),
        source,
    })?;
    let mut st = State {
        ctx,
        project_real,
        files: BTreeMap::new(),
        generated: BTreeMap::new(),
        locks: Vec::new(),
        floating: BTreeSet::new(),
        notes: Vec::new(),
        outside: HashMap::new(),
        visited: HashSet::new(),
    };
    for ev in &session.events {
        if let Event::Command { files, .. } = ev {
            for f in files {
                st.outside.insert(f.path.clone(), f.clone());
            }
        }
    }
    let walked = st.walk_session(session)?;
    let noxfile_reads = if walked.reads_matter {
        st.noxfile_reads(module, session)?
    } else {
        BTreeMap::new()
    };
    let commands = sha256_hex(
        serde_json::to_string(&walked.canonical)
            .expect("json")
            .as_bytes(),
    );
    let mut locks = std::mem::take(&mut st.locks);
    locks.sort();
    locks.dedup();
    Ok(Derived {
        discovered: Discovered {
            files: st.files.into_values().collect(),
            generated: st.generated.into_values().collect(),
            locks,
            commands,
            floating: st.floating.into_iter().collect(),
            noxfile_reads: noxfile_reads.into_values().collect(),
        },
        commands: walked.recorded,
        notes: st.notes,
    })
}

/// What [`State::walk_session`] gathers besides the state's inputs.
struct Walked {
    /// The canonical list of commands: what the key's `commands` digest covers.
    canonical: Vec<serde_json::Value>,
    /// The commands as the record shows them (secrets masked).
    recorded: Vec<RecordedCommand>,
    /// The noxfile fetches something or writes into the environment itself: then what
    /// it reads is an input too.
    reads_matter: bool,
}

impl State<'_, '_> {
    /// Each of the session's events in order: installs and exports into the state's
    /// inputs, what the noxfile does itself into notes.
    fn walk_session(&mut self, session: &SessionEvents) -> Result<Walked, InputError> {
        let ctx = self.ctx;
        let mut walked = Walked {
            canonical: Vec::new(),
            recorded: Vec::new(),
            reads_matter: false,
        };
        for ev in &session.events {
            match ev {
                Event::Command {
                    argv,
                    cwd,
                    env,
                    venv_creation,
                    ..
                } => {
                    let rel = cwd_rel(ctx, cwd);
                    walked
                        .canonical
                        .push(serde_json::json!({"argv": argv, "cwd": rel, "env": env}));
                    walked.recorded.push(recorded_command(ctx, argv, rel, env));
                    if *venv_creation {
                        continue;
                    }
                    if let Some(inst) = installs::parse(argv) {
                        self.handle_install(&inst, cwd, env)?;
                    }
                }
                Event::Export {
                    args,
                    cwd,
                    output,
                    error,
                    ..
                } => {
                    self.handle_export(args, cwd, output.as_deref(), error.as_deref())?;
                }
                Event::Subprocess {
                    argv, cwd, from, ..
                } => {
                    walked
                        .canonical
                        .push(serde_json::json!({"subprocess": argv, "cwd": cwd_rel(ctx, cwd)}));
                    let shown: Vec<String> =
                        argv.iter().take(4).map(|a| mask(a, ctx.secrets)).collect();
                    self.notes.push(format!(
                        "the noxfile runs `{}` itself ({from})",
                        shown.join(" ")
                    ));
                    if let Some(inst) = installs::parse(argv) {
                        self.handle_install(&inst, cwd, &BTreeMap::new())?;
                    }
                }
                Event::Network { url, from, .. } => {
                    walked.reads_matter = true;
                    self.notes.push(format!(
                        "the noxfile fetches {} itself ({from})",
                        mask(url, ctx.secrets)
                    ));
                }
                Event::Write { path, from, .. } => {
                    if under(path, ctx.envdir) && !path.contains("/tmp/") {
                        walked.reads_matter = true;
                        self.notes
                            .push(format!("the noxfile writes {path} itself ({from})"));
                    }
                }
                Event::Read { .. }
                | Event::Listing { .. }
                | Event::Stat { .. }
                | Event::Result { .. } => {}
            }
        }
        Ok(walked)
    }

    /// The project files the noxfile reads (on import or in the session), by path.
    fn noxfile_reads(
        &self,
        module: &[Event],
        session: &SessionEvents,
    ) -> Result<BTreeMap<String, InputFile>, InputError> {
        let mut noxfile_reads = BTreeMap::new();
        for ev in module.iter().chain(session.events.iter()) {
            if let Event::Read { path, from, .. } = ev {
                if let Place::Project(rel, host) = self.place(&normalize("/", path)) {
                    if let Some(real) = self.real_project_file(&rel, &host)? {
                        let sha = untrusted::sha256(&real).map_err(|e| self.io(&host, e))?;
                        noxfile_reads.entry(rel.clone()).or_insert(InputFile {
                            path: rel,
                            sha256: sha,
                            via: format!("read by the noxfile ({from})"),
                        });
                    }
                }
            }
        }
        Ok(noxfile_reads)
    }
}

/// A command as the record shows it: arguments masked, and of the environment only the
/// variables that say where things are shown (masked); the others by a short digest.
fn recorded_command(
    ctx: &Context,
    argv: &[String],
    cwd: String,
    env: &BTreeMap<String, String>,
) -> RecordedCommand {
    RecordedCommand {
        argv: argv.iter().map(|a| mask(a, ctx.secrets)).collect(),
        cwd,
        env: env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == "PATH"
                        || k == "VIRTUAL_ENV"
                        || k == "TMPDIR"
                        || k.starts_with("UV_PROJECT")
                        || k == "UV_PYTHON"
                        || k == "NOX_CURRENT_SESSION"
                    {
                        mask(v, ctx.secrets)
                    } else {
                        model::Digest::of(v.as_bytes()).short().to_string()
                    },
                )
            })
            .collect(),
    }
}

/// Hash a recorded project file again, as `plan` checks a hit: `None` when it still has
/// the recorded digest, else what it has now.
pub fn changed(project_dir: &Path, file: &InputFile) -> Option<String> {
    let host = project_dir.join(&file.path);
    let now = match fs_err::symlink_metadata(&host) {
        Err(_) => ABSENT.to_string(),
        Ok(_) => match fs_err::canonicalize(&host)
            .ok()
            .and_then(|p| untrusted::sha256(&p).ok())
        {
            Some(sha) => sha,
            None => "unreadable".to_string(),
        },
    };
    (now != file.sha256).then_some(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::hook::Records;

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("tests/requirements")).unwrap();
        std::fs::create_dir_all(p.join("testing")).unwrap();
        std::fs::create_dir_all(p.join("plugins/foo")).unwrap();
        std::fs::write(
            p.join("tests/requirements/test.txt"),
            "-r base.txt\npytest==8.3.5\n",
        )
        .unwrap();
        std::fs::write(
            p.join("tests/requirements/base.txt"),
            "-c ../../testing/constraints-3.11.txt\niniconfig\n",
        )
        .unwrap();
        std::fs::write(p.join("testing/constraints-3.11.txt"), "iniconfig==2.0.0\n").unwrap();
        std::fs::write(
            p.join("plugins/foo/pyproject.toml"),
            "[project]\nname='foo'\nversion='1'\ndependencies=['attrs>=20']\n",
        )
        .unwrap();
        std::fs::write(p.join("pyproject.toml"), "[project]\nname='x'\nversion='1'\ndependencies=['packaging==25.0']\n[dependency-groups]\ntest=['pytest==8.3.5', {include-group='cov'}]\ncov=['coverage']\n").unwrap();
        std::fs::write(p.join("uv.lock"), "version = 1\n").unwrap();
        d
    }

    fn events(lines: &[&str]) -> Records {
        let mut r = Records::default();
        for l in lines {
            r.add(serde_json::from_str(l).unwrap());
        }
        r
    }

    fn derive_for(dir: &Path, r: &Records, s: &str) -> Derived {
        let ctx = Context {
            session: s,
            project_dir: dir,
            workdir: "/src",
            envdir: "/opt/nox",
            secrets: &[],
        };
        derive(&ctx, &r.module, &r.sessions[s]).unwrap()
    }

    #[test]
    fn follows_nested_requirements_and_constraints() {
        let d = project();
        let r = events(&[
            r#"{"kind":"command","session":"t","argv":["uv","venv","-p","python3.11","/opt/nox/t"],"cwd":"/src","venv_creation":true}"#,
            r#"{"kind":"command","session":"t","argv":["uv","pip","install","-r","tests/requirements/test.txt","-e","./plugins/foo"],"cwd":"/src"}"#,
        ]);
        let got = derive_for(d.path(), &r, "t");
        let paths: Vec<&str> = got
            .discovered
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            paths,
            vec![
                "plugins/foo/pyproject.toml",
                "testing/constraints-3.11.txt",
                "tests/requirements/base.txt",
                "tests/requirements/test.txt"
            ]
        );
        // iniconfig is pinned by the nested constraints file; attrs>=20 is not.
        assert_eq!(
            got.discovered.floating.len(),
            1,
            "{:?}",
            got.discovered.floating
        );
        assert!(got.discovered.floating[0].starts_with("attrs>=20"));
    }

    #[test]
    fn groups_uv_sync_and_locks() {
        let d = project();
        let r = events(&[
            r#"{"kind":"command","session":"g","argv":["uv","pip","install","--group","test"],"cwd":"/src"}"#,
            r#"{"kind":"command","session":"u","argv":["uv","sync","--frozen","--group","test"],"cwd":"/src"}"#,
            r#"{"kind":"export","session":"u","for":["uv","sync"],"args":["export","--frozen","--format","requirements.txt","--no-header","--no-annotate","--group","test"],"cwd":"/src","output":"pytest==8.3.5 \\\n    --hash=sha256:bb \\\n    --hash=sha256:aa\n-e .\n"}"#,
        ]);
        let g = derive_for(d.path(), &r, "g");
        assert_eq!(g.discovered.files[0].path, "pyproject.toml");
        assert_eq!(
            g.discovered.floating.len(),
            1,
            "coverage floats: {:?}",
            g.discovered.floating
        );
        let u = derive_for(d.path(), &r, "u");
        assert_eq!(u.discovered.locks.len(), 1);
        let l = &u.discovered.locks[0];
        assert_eq!(l.lock, "uv.lock");
        assert_eq!(l.selection, vec!["--group", "test"]);
        assert_eq!(l.packages, vec!["-e .", "pytest==8.3.5"]);
        assert!(u.discovered.floating.is_empty());
        assert!(u
            .discovered
            .files
            .iter()
            .any(|f| f.path == "pyproject.toml"));
    }

    #[test]
    fn outside_files_are_errors_unless_generated() {
        let d = project();
        let r = events(&[
            r#"{"kind":"command","session":"t","argv":["pip","install","-c","/opt/nox/t/tmp/c.txt","-r","/etc/reqs.txt"],"cwd":"/src","files":[{"path":"/opt/nox/t/tmp/c.txt","sha256":"00","text":"six==1\n"}]}"#,
        ]);
        let ctx = Context {
            session: "t",
            project_dir: d.path(),
            workdir: "/src",
            envdir: "/opt/nox",
            secrets: &[],
        };
        let err = derive(&ctx, &r.module, &r.sessions["t"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/reqs.txt") && err.contains("outside the project"),
            "{err}"
        );
    }

    #[test]
    fn absent_files_are_keyed_as_absent() {
        let d = project();
        let r = events(&[
            r#"{"kind":"command","session":"t","argv":["pip","install","-r","missing.txt"],"cwd":"/src"}"#,
        ]);
        let got = derive_for(d.path(), &r, "t");
        assert_eq!(got.discovered.files[0].sha256, ABSENT);
    }

    #[test]
    fn masks_secrets() {
        assert_eq!(
            mask("--index-url https://u:tok@idx.invalid/simple", &[]),
            "--index-url https://u:***@idx.invalid/simple"
        );
        assert_eq!(mask("X=hunter22", &["hunter22".into()]), "X=***");
    }

    #[test]
    fn export_entries_are_canonical() {
        let a = export_entries("b==1 \\\n  --hash=sha256:2 \\\n  --hash=sha256:1\na==2\n");
        assert_eq!(a, vec!["a==2", "b==1 --hash=sha256:1 --hash=sha256:2"]);
    }
}
