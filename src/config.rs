//! `venvimg.yaml`: parsing and validation into resolved, typed settings.
//!
//! Every error names the file, the field and what to do, because the person reading it
//! is usually looking at a CI log, not at our source.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde::Deserialize;
use serde_yaml::Value;

use crate::ci::{CiCheckout, Undetermined};
use crate::model::{Compression, Platform};

pub const DEFAULT_CONFIG_FILE: &str = "venvimg.yaml";
pub const DEFAULT_ENVDIR: &str = "/opt/nox";
pub const DEFAULT_WORKDIR: &str = "/src";
/// The noxfile: always an input of every session (it says what the sessions run).
pub const NOXFILE: &str = "noxfile.py";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {source}\n  hint: create one with `venvimg init`, or pass --config FILE")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: PathBuf,
        field: String,
        message: String,
    },
}

impl ConfigError {
    fn field(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            file: file.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The YAML document as written. Unknown fields are refused so a typo never silently
/// falls back to a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repository: Option<String>,
    trusted_repository: Option<String>,
    base: Option<String>,
    platform: Option<String>,
    platforms: Option<Vec<String>>,
    envdir: Option<String>,
    workdir: Option<String>,
    builder: Option<String>,
    inputs: Option<Vec<String>>,
    sessions: Option<Vec<Value>>,
    compression: Option<String>,
    compression_level: Option<i64>,
    owner: Option<String>,
    project: Option<String>,
    root: Option<String>,
    build: Option<String>,
    layers: Option<String>,
    max_layers: Option<usize>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    build_env: BTreeMap<String, String>,
    refresh: Option<String>,
    source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuilderKind {
    Podman,
    Docker,
    Local,
}

impl BuilderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderKind::Podman => "podman",
            BuilderKind::Docker => "docker",
            BuilderKind::Local => "local",
        }
    }

    /// The builder as keys see it. podman and docker run the same script in the same
    /// base image and give byte-identical layers (tested against both), so they share
    /// keys and images: a docker build is a hit for a podman-built image. The local
    /// builder runs this machine's nox and python, so it keys apart.
    pub fn key_name(self) -> &'static str {
        match self {
            BuilderKind::Podman | BuilderKind::Docker => "container",
            BuilderKind::Local => "local",
        }
    }
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a session's venv becomes layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerMode {
    /// The whole venv in one layer.
    Single,
    /// One layer per big installed distribution, small ones in hashed buckets, plus a
    /// skeleton layer (see `layering`). The default: measured on a 60-package data/web
    /// venv, podman pulls it 3× faster than one layer (layers decompress in parallel),
    /// and a one-package bump re-uploads and re-pulls one small layer.
    #[default]
    PerDistribution,
}

impl LayerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerMode::Single => "single",
            LayerMode::PerDistribution => "per-distribution",
        }
    }
}

/// What to do with the project's own code when the installs froze it non-editable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectMode {
    #[default]
    Refuse,
    Editable,
    Keyed,
}

impl ProjectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectMode::Refuse => "refuse",
            ProjectMode::Editable => "editable",
            ProjectMode::Keyed => "keyed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "refuse" => Some(ProjectMode::Refuse),
            "editable" => Some(ProjectMode::Editable),
            "keyed" => Some(ProjectMode::Keyed),
            _ => None,
        }
    }
}

/// How the builder produces the venv: nox's install phase only, or the whole session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMode {
    #[default]
    InstallOnly,
    Run,
}

impl BuildMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::InstallOnly => "install-only",
            BuildMode::Run => "run",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "install-only" => Some(BuildMode::InstallOnly),
            "run" => Some(BuildMode::Run),
            _ => None,
        }
    }
}

/// One session as configured. Every option here is part of the session's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub name: String,
    pub project: ProjectMode,
    pub build: BuildMode,
    pub posargs: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The session installs from `uv.lock` with these groups/extras: its key covers its
    /// own resolved package set instead of the whole lock file.
    pub locked: Option<LockedSelection>,
    /// How old a floating session's image may get (overrides the top-level `refresh`).
    pub refresh: Option<Refresh>,
}

/// `refresh: 7d`: a floating session's key holds the current period of this length, so
/// its image is rebuilt at most this often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    pub text: String,
    pub seconds: u64,
}

impl Refresh {
    /// A duration as people write it (humantime): `30m`, `12h`, `7d`, `2w`, `1h30m`,
    /// `90min`, `0s`. A bare number is not one (no unit).
    pub fn parse(s: &str) -> Option<Refresh> {
        let s = s.trim();
        let d = humantime::parse_duration(s).ok()?;
        Some(Refresh {
            text: s.to_string(),
            seconds: d.as_secs(),
        })
    }
}

fn parse_refresh(file: &Path, field: &str, s: &str) -> Result<Refresh, ConfigError> {
    match Refresh::parse(s) {
        Some(r) if r.seconds > 0 => Ok(r),
        Some(_) => Err(ConfigError::field(
            file,
            field,
            format!("`{s}` is no time at all; a refresh period is at least 1s, e.g. `7d`"),
        )),
        None => Err(ConfigError::field(
            file,
            field,
            format!("`{s}` is not a duration; write e.g. `7d`, `12h`, `1h30m` or `2w`"),
        )),
    }
}

/// Which part of `uv.lock` a session installs, as `uv export` selects it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LockedSelection {
    pub groups: Vec<String>,
    pub only_groups: Vec<String>,
    pub extras: Vec<String>,
}

impl LockedSelection {
    /// The `uv export` arguments selecting this part of the lock.
    pub fn export_args(&self) -> Vec<String> {
        let mut a = vec![
            "export".to_string(),
            "--frozen".into(),
            "--no-hashes".into(),
            "--no-header".into(),
            "--no-annotate".into(),
            "--format".into(),
            "requirements.txt".into(),
            "--no-default-groups".into(),
        ];
        for g in &self.groups {
            a.push("--group".into());
            a.push(g.clone());
        }
        for g in &self.only_groups {
            a.push("--only-group".into());
            a.push(g.clone());
        }
        for e in &self.extras {
            a.push("--extra".into());
            a.push(e.clone());
        }
        a
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

fn check_envdir_outside(f: &Path, envdir: &str, workdir: &str) -> Result<(), ConfigError> {
    if Path::new(envdir).starts_with(workdir) {
        return Err(ConfigError::field(
            f,
            "envdir",
            format!("`{envdir}` is inside workdir `{workdir}`; CI checkouts wipe the workspace, so keep the venvs outside it (default /opt/nox)"),
        ));
    }
    Ok(())
}

/// `venvimg init` writes these when it is not told the registry and base; every command
/// that would contact them refuses them first.
pub const PLACEHOLDER_REGISTRY: &str = "registry.example.com";
pub const REPOSITORY_PLACEHOLDER: &str = "registry.example.com/change-me/ci";
pub const BASE_PLACEHOLDER: &str = "registry.example.com/change-me/python-nox:3.12";

/// Where the `workdir` in use comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkdirOrigin {
    /// `workdir:` in the file.
    File,
    /// Not set: where this CI's session jobs check out.
    Ci,
    /// Not set, not in a CI venvimg knows: [`DEFAULT_WORKDIR`].
    Default,
}

/// The resolved configuration: defaults applied, paths checked, references parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// The project's root: where the noxfile, pyproject.toml and inputs are, and what a
    /// job mounts as the checkout. The config file's folder, unless `root:` (relative to
    /// that folder) or `--project` names another.
    pub project_dir: PathBuf,
    pub repository: Reference,
    /// Where hits may also come from, never written (`trusted_repository:`): a
    /// pull-request job pushes to its own `repository` and reuses the protected branch's
    /// images. See [`Config::trusted`].
    pub trusted_repository: Option<Reference>,
    pub base: Reference,
    /// The platform this run builds and runs: the host's when `platforms:` lists it, else
    /// the first listed. Commands that work on one platform read this.
    pub platform: Platform,
    /// Every platform the job images are for (`platforms:`; else `[platform]`). With more
    /// than one, each session tag is an image index (see `commands::platforms`).
    pub platforms: Vec<Platform>,
    pub envdir: String,
    pub workdir: String,
    /// Where `workdir` came from: the file, this CI's checkout path, or the default.
    pub workdir_origin: WorkdirOrigin,
    /// Where this CI's session jobs check out, when venvimg runs in a CI it knows
    /// ([`Config::with_ci`]); `Err` when it knows the CI but not the path.
    pub ci_checkout: Result<Option<CiCheckout>, Undetermined>,
    pub builder: BuilderKind,
    /// Files that key every session whole, besides the noxfile and what each session's
    /// installs are found to read (rarely needed).
    pub inputs: Vec<String>,
    /// `None` means: ask nox which sessions it would run.
    pub sessions: Option<Vec<SessionConfig>>,
    pub default_project: ProjectMode,
    pub default_build: BuildMode,
    pub compression: Compression,
    pub owner: Owner,
    pub layers: LayerMode,
    /// Cap on the number of layers of an image, base included.
    pub max_layers: usize,
    pub insecure_registries: Vec<String>,
    /// Extra environment for every build (package index URLs, certificates...). Not part
    /// of the key: it may hold secrets, and should not decide the venv's bytes.
    pub build_env: BTreeMap<String, String>,
    /// How old a floating session's image may get; `None`: no time in keys.
    pub refresh: Option<Refresh>,
    /// The project's public URL for `org.opencontainers.image.source` (`source:`, else
    /// the checkout's git remote `origin` made a clean web URL; `source: ""` or no clean
    /// URL: none). Not part of the key: a clone by ssh or https is the same project.
    pub source: Option<String>,
    /// Run the plan's dry run with this machine's nox even for a container builder: a job
    /// running in the base image itself, with no engine (`restore` there). Not part of
    /// the key: the dry run sees the same nox, paths and files as in a container of the
    /// base. Never read from the file.
    pub dry_run_here: bool,
}

impl Config {
    /// `repository` from `source` (an environment variable) instead of the file.
    /// `registry/name` of `repository:`, as reports show where the images go.
    pub fn repository_path(&self) -> String {
        format!(
            "{}/{}",
            self.repository.resolve_registry(),
            self.repository.repository()
        )
    }

    /// `trusted_repository`, when it is not `repository` itself (a protected-branch job
    /// reads and writes only its own repository).
    pub fn trusted(&self) -> Option<&Reference> {
        self.trusted_repository.as_ref().filter(|t| {
            (t.resolve_registry(), t.repository())
                != (
                    self.repository.resolve_registry(),
                    self.repository.repository(),
                )
        })
    }

    pub fn override_repository(&mut self, source: &str, value: &str) -> Result<(), ConfigError> {
        self.repository = parse_repository(Path::new(source), value)?;
        Ok(())
    }

    /// The fields that still hold `venvimg init`'s placeholders.
    pub fn placeholders(&self) -> Vec<&'static str> {
        let placeholder = |r: &Reference| {
            r.registry() == PLACEHOLDER_REGISTRY && r.repository().starts_with("change-me/")
        };
        let mut fields = Vec::new();
        if placeholder(&self.repository) {
            fields.push("repository");
        }
        if placeholder(&self.base) {
            fields.push("base");
        }
        fields
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::load_for(file, None)
    }

    /// The config file, for the project at `project` when given (`--project`), else at
    /// its `root:`, else in its own folder.
    pub fn load_for(file: &Path, project: Option<&Path>) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let config_dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::parse_at(&text, file, &config_dir, project)
    }

    pub fn parse(text: &str, file: &Path, config_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse_at(text, file, config_dir, None)
    }

    fn parse_at(
        text: &str,
        file: &Path,
        config_dir: &Path,
        project: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: syntax_message(&e),
        })?;
        let f = file;
        let project_dir = project_dir_of(f, config_dir, project, raw.root.as_deref())?;
        let project_dir = project_dir.as_path();

        let images = Images::of(f, &raw)?;

        let platforms = platforms_of(f, raw.platform, raw.platforms)?;
        let host = Platform::host();
        let platform = platforms
            .iter()
            .find(|p| **p == host)
            .unwrap_or(&platforms[0])
            .clone();

        let dirs = Dirs::of(f, raw.envdir, raw.workdir)?;

        let builder = builder_of(f, raw.builder.as_deref())?;
        let compression = compression_of(f, raw.compression.as_deref(), raw.compression_level)?;
        let owner = owner_of(f, raw.owner.as_deref())?;
        let (layers, max_layers) = layers_of(f, raw.layers.as_deref(), raw.max_layers)?;
        let default_project = project_mode_of(f, raw.project.as_deref())?;
        let default_build = build_mode_of(f, raw.build.as_deref())?;

        let inputs = raw.inputs.unwrap_or_default();
        let refresh = match raw.refresh.as_deref() {
            None => None,
            Some(s) => Some(parse_refresh(f, "refresh", s)?),
        };
        check_inputs(f, project_dir, &inputs)?;

        let sessions = raw
            .sessions
            .map(|list| sessions_of(f, list, default_project, default_build))
            .transpose()?;

        check_insecure_registries(f, &raw.insecure_registries)?;

        let source = source_of(f, raw.source.as_deref(), project_dir)?;

        Ok(Config {
            source,
            dry_run_here: false,
            file: file.to_path_buf(),
            project_dir: project_dir.to_path_buf(),
            repository: images.repository,
            trusted_repository: images.trusted_repository,
            base: images.base,
            platform,
            platforms,
            envdir: dirs.envdir,
            workdir: dirs.workdir,
            workdir_origin: dirs.workdir_origin,
            ci_checkout: Ok(None),
            builder,
            inputs,
            sessions,
            default_project,
            default_build,
            compression,
            owner,
            layers,
            max_layers,
            insecure_registries: raw.insecure_registries,
            build_env: raw.build_env,
            refresh,
        })
    }

    /// This config in the CI `detected` describes ([`crate::ci::detect`]): without
    /// `workdir:`, the session jobs' checkout path becomes `workdir`. A `workdir:` that
    /// differs is kept here and refused by [`Config::check_ci_workdir`] (plan, build).
    pub fn with_ci(
        mut self,
        detected: Result<Option<CiCheckout>, Undetermined>,
    ) -> Result<Config, ConfigError> {
        if let (WorkdirOrigin::Default, Ok(Some(found))) = (&self.workdir_origin, &detected) {
            let field = crate::ci::WORKDIR_VAR;
            check_abs_dir(Path::new(field), "value", &found.path)?;
            check_envdir_outside(&self.file, &self.envdir, &found.path)?;
            self.workdir = found.path.clone();
            self.workdir_origin = WorkdirOrigin::Ci;
        }
        self.ci_checkout = detected;
        Ok(self)
    }

    /// `workdir PATH (why)`: the line `plan` prints.
    pub fn workdir_line(&self) -> String {
        let change = format!("set workdir: or {} to change", crate::ci::WORKDIR_VAR);
        let why = match (&self.workdir_origin, &self.ci_checkout) {
            (WorkdirOrigin::File, _) => format!("workdir: in {}", self.file.display()),
            (WorkdirOrigin::Ci, Ok(Some(found))) => format!("{}; {change}", found.why),
            (_, Err(u)) => format!("the default: {}", u.message),
            _ => format!("the default outside CI; {change}"),
        };
        format!("workdir {} ({why})", self.workdir)
    }

    /// Before anything is built: a `workdir:` that this CI's session jobs will not check
    /// out into would give images nox cannot reuse there; a CI whose checkout path cannot
    /// be told, with no `workdir:`, would give images built for a guess.
    pub fn check_ci_workdir(&self) -> Result<(), ConfigError> {
        match (&self.workdir_origin, &self.ci_checkout) {
            (WorkdirOrigin::File, Ok(Some(found))) if found.path != self.workdir => {
                Err(ConfigError::field(
                    &self.file,
                    "workdir",
                    format!(
                        "`{}`, but this CI's session jobs check out into `{}` ({}); their venvs would point at a path those jobs do not have. Remove `workdir:` (venvimg then uses `{}`), set it to that path, or set {} for a runner configured otherwise",
                        self.workdir,
                        found.path,
                        found.why,
                        found.path,
                        crate::ci::WORKDIR_VAR
                    ),
                ))
            }
            (WorkdirOrigin::Default, Err(u)) => Err(ConfigError::field(
                &self.file,
                "workdir",
                format!("not set, and {}", u.message),
            )),
            _ => Ok(()),
        }
    }

    /// Builds for more than one platform: each session tag is an image index.
    pub fn multi_platform(&self) -> bool {
        self.platforms.len() > 1
    }

    /// This config narrowed to one of its platforms: what one platform's plan and build
    /// read (its base manifest, its keys and tags are the single-platform ones).
    pub fn for_platform(&self, platform: &Platform) -> Config {
        Config {
            platform: platform.clone(),
            platforms: vec![platform.clone()],
            ..self.clone()
        }
    }

    /// A session not listed in `sessions:` (discovered from nox) gets the defaults.
    pub fn default_session(&self, name: &str) -> SessionConfig {
        SessionConfig {
            name: name.to_string(),
            project: self.default_project,
            build: self.default_build,
            posargs: Vec::new(),
            env: BTreeMap::new(),
            locked: None,
            refresh: None,
        }
    }
}

/// Where images go and what they are built on: `repository:`, `trusted_repository:`,
/// `base:`.
struct Images {
    repository: Reference,
    trusted_repository: Option<Reference>,
    base: Reference,
}

impl Images {
    fn of(f: &Path, raw: &RawConfig) -> Result<Images, ConfigError> {
        let repository_s = raw.repository.as_deref().ok_or_else(|| {
            ConfigError::field(
                f,
                "repository",
                "missing; set it to where job images go, e.g. `repository: registry.example.com/acme/app/ci`",
            )
        })?;
        let repository = parse_repository(f, repository_s)?;
        let trusted_repository = raw
            .trusted_repository
            .as_deref()
            .map(|t| parse_repository_field(f, "trusted_repository", t))
            .transpose()?;
        let base_s = raw.base.as_deref().ok_or_else(|| {
            ConfigError::field(
                f,
                "base",
                "missing; set it to the image with python, uv and nox that jobs run in",
            )
        })?;
        let base = parse_reference(f, "base", base_s)?;
        Ok(Images {
            repository,
            trusted_repository,
            base,
        })
    }
}

/// The builder's paths: `envdir:`, and `workdir:` with where it came from.
struct Dirs {
    envdir: String,
    workdir: String,
    workdir_origin: WorkdirOrigin,
}

impl Dirs {
    fn of(f: &Path, envdir: Option<String>, workdir: Option<String>) -> Result<Dirs, ConfigError> {
        let envdir = envdir.unwrap_or_else(|| DEFAULT_ENVDIR.into());
        check_abs_dir(f, "envdir", &envdir)?;
        let workdir_origin = if workdir.is_some() {
            WorkdirOrigin::File
        } else {
            WorkdirOrigin::Default
        };
        let workdir = workdir.unwrap_or_else(|| DEFAULT_WORKDIR.into());
        check_abs_dir(f, "workdir", &workdir)?;
        check_envdir_outside(f, &envdir, &workdir)?;
        Ok(Dirs {
            envdir,
            workdir,
            workdir_origin,
        })
    }
}

/// `owner:`, else root.
fn owner_of(f: &Path, owner: Option<&str>) -> Result<Owner, ConfigError> {
    Ok(match owner {
        None => Owner { uid: 0, gid: 0 },
        Some(s) => parse_owner(s).ok_or_else(|| {
            ConfigError::field(
                f,
                "owner",
                format!("`{s}` is not UID:GID with numbers, e.g. \"0:0\" or \"1000:1000\""),
            )
        })?,
    })
}

/// `project:`, the sessions' default.
fn project_mode_of(f: &Path, project: Option<&str>) -> Result<ProjectMode, ConfigError> {
    Ok(match project {
        None => ProjectMode::default(),
        Some(s) => ProjectMode::parse(s).ok_or_else(|| {
            ConfigError::field(
                f,
                "project",
                format!("unknown value `{s}`; use refuse, editable or keyed"),
            )
        })?,
    })
}

/// `build:`, the sessions' default.
fn build_mode_of(f: &Path, build: Option<&str>) -> Result<BuildMode, ConfigError> {
    Ok(match build {
        None => BuildMode::default(),
        Some(s) => BuildMode::parse(s).ok_or_else(|| {
            ConfigError::field(
                f,
                "build",
                format!("unknown value `{s}`; use install-only or run"),
            )
        })?,
    })
}

/// Each of `insecure_registries:` is HOST or HOST:PORT.
fn check_insecure_registries(f: &Path, registries: &[String]) -> Result<(), ConfigError> {
    for (i, r) in registries.iter().enumerate() {
        if r.is_empty() || r.contains('/') {
            return Err(ConfigError::field(
                f,
                format!("insecure_registries[{i}]"),
                format!("`{r}` is not HOST or HOST:PORT"),
            ));
        }
    }
    Ok(())
}

/// The project's root: `--project`, else `root:` (relative to the file's folder, holding
/// the noxfile), else the file's folder.
fn project_dir_of(
    f: &Path,
    config_dir: &Path,
    project: Option<&Path>,
    root: Option<&str>,
) -> Result<PathBuf, ConfigError> {
    Ok(match (project, root) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(root)) => {
            let dir = config_dir.join(root);
            if !dir.join(NOXFILE).is_file() {
                return Err(ConfigError::field(
                    f,
                    "root",
                    format!(
                        "`{root}` (relative to the file's folder: {}) has no {NOXFILE}; name the project's root folder, the one with {NOXFILE} and pyproject.toml",
                        dir.display()
                    ),
                ));
            }
            dir
        }
        (None, None) => config_dir.to_path_buf(),
    })
}

/// `platform:` (one) or `platforms:` (a list, each once), else the host's.
fn platforms_of(
    f: &Path,
    platform: Option<String>,
    platforms: Option<Vec<String>>,
) -> Result<Vec<Platform>, ConfigError> {
    Ok(match (platform, platforms) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::field(
                f,
                "platforms",
                "set either `platform:` (one) or `platforms:` (a list), not both",
            ))
        }
        (Some(p), None) => {
            vec![Platform::parse(&p).map_err(|m| ConfigError::field(f, "platform", m))?]
        }
        (None, Some(list)) => {
            let mut out: Vec<Platform> = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let field = format!("platforms[{i}]");
                let parsed = Platform::parse(p).map_err(|m| ConfigError::field(f, &field, m))?;
                if out.contains(&parsed) {
                    return Err(ConfigError::field(
                        f,
                        &field,
                        format!("{parsed} is listed twice; list each platform once"),
                    ));
                }
                out.push(parsed);
            }
            if out.is_empty() {
                return Err(ConfigError::field(
                    f,
                    "platforms",
                    "is empty; list at least one platform (e.g. [linux/amd64, linux/arm64]) or remove it for the host's",
                ));
            }
            out
        }
        (None, None) => vec![Platform::host()],
    })
}

fn builder_of(f: &Path, builder: Option<&str>) -> Result<BuilderKind, ConfigError> {
    Ok(match builder {
        None | Some("podman") => BuilderKind::Podman,
        Some("docker") => BuilderKind::Docker,
        Some("local") => BuilderKind::Local,
        Some(other) => {
            return Err(ConfigError::field(
                f,
                "builder",
                format!("unknown builder `{other}`; use podman, docker or local"),
            ))
        }
    })
}

/// `compression:` and, for zstd only, `compression_level:`.
fn compression_of(
    f: &Path,
    compression: Option<&str>,
    level: Option<i64>,
) -> Result<Compression, ConfigError> {
    let compression = match compression {
        None | Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::ZSTD,
        Some(other) => {
            return Err(ConfigError::field(
                f,
                "compression",
                format!("unknown compression `{other}`; use gzip or zstd"),
            ))
        }
    };
    // Builds are rare and pulls many: a higher zstd level trades build CPU for bytes.
    Ok(match (compression, level) {
        (c, None) => c,
        (Compression::Zstd { .. }, Some(level)) => {
            if !(1..=i64::from(crate::model::ZSTD_MAX_LEVEL)).contains(&level) {
                return Err(ConfigError::field(
                    f,
                    "compression_level",
                    format!(
                        "{level} is out of range; use 1 to {} (zstd's levels)",
                        crate::model::ZSTD_MAX_LEVEL
                    ),
                ));
            }
            Compression::Zstd {
                level: level as i32,
            }
        }
        (Compression::Gzip, Some(_)) => {
            return Err(ConfigError::field(
                f,
                "compression_level",
                "applies to `compression: zstd` only (gzip layers are always level 6); \
                 remove it or set `compression: zstd`"
                    .to_string(),
            ))
        }
    })
}

/// `layers:` and `max_layers:` (2 to 120).
fn layers_of(
    f: &Path,
    layers: Option<&str>,
    max_layers: Option<usize>,
) -> Result<(LayerMode, usize), ConfigError> {
    let layers = match layers {
        Some("single") => LayerMode::Single,
        None | Some("per-distribution") => LayerMode::PerDistribution,
        Some(other) => {
            return Err(ConfigError::field(
                f,
                "layers",
                format!("unknown value `{other}`; use single or per-distribution"),
            ))
        }
    };
    let max_layers = max_layers.unwrap_or(crate::python::layering::DEFAULT_MAX_LAYERS);
    if !(2..=120).contains(&max_layers) {
        return Err(ConfigError::field(
            f,
            "max_layers",
            format!("{max_layers} is out of range; use 2 to 120 (overlay filesystems accept about 127 layers)"),
        ));
    }
    Ok((layers, max_layers))
}

/// `inputs:`: paths inside the project, of files that exist.
fn check_inputs(f: &Path, project_dir: &Path, inputs: &[String]) -> Result<(), ConfigError> {
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        if Path::new(input).is_absolute() || input.split('/').any(|c| c == "..") {
            return Err(ConfigError::field(
                f,
                field,
                format!("`{input}` must be a path relative to the project, inside it"),
            ));
        }
        let path = project_dir.join(input);
        if !path.is_file() {
            return Err(ConfigError::field(
                f,
                field,
                format!(
                    "input file `{}` does not exist; create it, or remove it from `inputs` (venvimg finds the files each session's installs read by itself)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `sessions:`, each named once, the list not empty.
fn sessions_of(
    f: &Path,
    list: Vec<Value>,
    default_project: ProjectMode,
    default_build: BuildMode,
) -> Result<Vec<SessionConfig>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let s = parse_session(f, i, v, default_project, default_build)?;
        if out.iter().any(|o: &SessionConfig| o.name == s.name) {
            return Err(ConfigError::field(
                f,
                format!("sessions[{i}]"),
                format!("session `{}` is listed twice", s.name),
            ));
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err(ConfigError::field(
            f,
            "sessions",
            "empty list; list session names, or remove the field to use what `nox --list` selects",
        ));
    }
    Ok(out)
}

/// `source:` (an http(s) URL without credentials; "" for none), else the checkout's git
/// remote `origin` made a clean web URL.
fn source_of(
    f: &Path,
    source: Option<&str>,
    project_dir: &Path,
) -> Result<Option<String>, ConfigError> {
    Ok(match source.map(str::trim) {
        Some("") => None,
        Some(url) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::field(
                    f,
                    "source",
                    "not an http(s) URL; give the project's web address (e.g. https://github.com/OWNER/REPO), or \"\" for none",
                ));
            }
            if crate::model::url_without_credentials(url) != url {
                // The value is not repeated: it holds a credential.
                return Err(ConfigError::field(
                    f,
                    "source",
                    "the URL holds a user name or password, which would be published in every image; remove the `user:password@` part",
                ));
            }
            Some(url.to_string())
        }
        None => git_origin(project_dir).and_then(|u| crate::model::public_source_url(&u)),
    })
}

/// The URL of the remote `origin` of the git checkout holding `project_dir` (its own
/// `.git`, or one in a folder above), read from git's config file: no git process. A
/// worktree's or submodule's `.git` file points at the real git folder.
fn git_origin(project_dir: &Path) -> Option<String> {
    let start = fs_err::canonicalize(project_dir).ok()?;
    let dot_git = start
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.exists())?;
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = crate::untrusted::read_text(&dot_git, crate::untrusted::SMALL_FILE).ok()?;
        let target = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        let target = dot_git.parent()?.join(target);
        // A worktree's folder names the shared one in `commondir`.
        match crate::untrusted::read_text(&target.join("commondir"), crate::untrusted::SMALL_FILE) {
            Ok(common) => target.join(common.trim()),
            Err(_) => target,
        }
    };
    let config =
        crate::untrusted::read_text(&git_dir.join("config"), crate::untrusted::SMALL_FILE).ok()?;
    remote_url(&config, "origin")
}

/// `[remote "NAME"] url = ...` of a git config file.
fn remote_url(config: &str, name: &str) -> Option<String> {
    let header = format!("[remote \"{name}\"]");
    let mut inside = false;
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim().eq_ignore_ascii_case("url") {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

fn syntax_message(e: &serde_yaml::Error) -> String {
    // serde_yaml puts "at line L column C" in its message already for most errors; make
    // sure it is there, and point at the fix for the common case of a misspelt field.
    let mut msg = e.to_string();
    if let Some(loc) = e.location() {
        if !msg.contains("line") {
            msg = format!("{msg} (line {} column {})", loc.line(), loc.column());
        }
    }
    if msg.contains("unknown field") {
        msg.push_str(
            "\n  hint: check the spelling against the configuration reference, docs/content/reference/config.md",
        );
    }
    msg
}

/// `repository`: a reference without a tag or digest (venvimg chooses the tags).
fn parse_repository(file: &Path, s: &str) -> Result<Reference, ConfigError> {
    parse_repository_field(file, "repository", s)
}

fn parse_repository_field(file: &Path, field: &str, s: &str) -> Result<Reference, ConfigError> {
    let repository = parse_reference(file, field, s)?;
    if s.contains('@') || s.rsplit('/').next().unwrap_or("").contains(':') {
        return Err(ConfigError::field(
            file,
            field,
            format!(
                "`{s}` names a tag or digest; give the repository only (venvimg chooses the tags)"
            ),
        ));
    }
    Ok(repository)
}

fn parse_reference(file: &Path, field: &str, s: &str) -> Result<Reference, ConfigError> {
    s.parse::<Reference>().map_err(|e| {
        ConfigError::field(
            file,
            field,
            format!("`{s}` is not a valid image reference ({e}); write HOST[:PORT]/PATH[:TAG], e.g. registry.example.com/acme/app"),
        )
    })
}

fn check_abs_dir(file: &Path, field: &str, value: &str) -> Result<(), ConfigError> {
    if !value.starts_with('/') {
        return Err(ConfigError::field(
            file,
            field,
            format!("`{value}` must be an absolute path (the same path at build time and in the job container), e.g. /opt/nox"),
        ));
    }
    if value.len() > 1 && value.ends_with('/')
        || value.contains("//")
        || value.split('/').any(|c| c == ".." || c == ".")
    {
        return Err(ConfigError::field(
            file,
            field,
            format!("`{value}` must be a normalised absolute path (no trailing slash, `.`, `..` or `//`): nox compares the string as written"),
        ));
    }
    if value == "/" {
        return Err(ConfigError::field(
            file,
            field,
            "`/` is not allowed; use a dedicated directory such as /opt/nox",
        ));
    }
    Ok(())
}

fn parse_owner(s: &str) -> Option<Owner> {
    let (u, g) = s.split_once(':')?;
    Some(Owner {
        uid: u.parse().ok()?,
        gid: g.parse().ok()?,
    })
}

fn parse_session(
    file: &Path,
    index: usize,
    value: Value,
    default_project: ProjectMode,
    default_build: BuildMode,
) -> Result<SessionConfig, ConfigError> {
    let at = format!("sessions[{index}]");
    let mut s = SessionConfig {
        name: String::new(),
        project: default_project,
        build: default_build,
        posargs: Vec::new(),
        env: BTreeMap::new(),
        locked: None,
        refresh: None,
    };
    match value {
        Value::String(name) => s.name = name,
        Value::Mapping(map) => {
            for (k, v) in map {
                let Value::String(key) = k else {
                    return Err(ConfigError::field(
                        file,
                        &at,
                        "option names must be strings",
                    ));
                };
                let field = format!("{at}.{key}");
                match key.as_str() {
                    "name" => s.name = yaml_string(file, &field, v)?,
                    "project" => {
                        let v = yaml_string(file, &field, v)?;
                        s.project = ProjectMode::parse(&v).ok_or_else(|| {
                            ConfigError::field(file, &field, format!("unknown value `{v}`; use refuse, editable or keyed"))
                        })?;
                    }
                    "build" => {
                        let v = yaml_string(file, &field, v)?;
                        s.build = BuildMode::parse(&v).ok_or_else(|| {
                            ConfigError::field(file, &field, format!("unknown value `{v}`; use install-only or run"))
                        })?;
                    }
                    "posargs" => {
                        let Value::Sequence(items) = v else {
                            return Err(ConfigError::field(file, &field, "must be a list of strings"));
                        };
                        for item in items {
                            s.posargs.push(yaml_string(file, &field, item)?);
                        }
                    }
                    "env" => {
                        let Value::Mapping(m) = v else {
                            return Err(ConfigError::field(file, &field, "must be a map of NAME: value"));
                        };
                        for (k, v) in m {
                            let k = yaml_string(file, &field, k)?;
                            let v = yaml_string(file, &format!("{field}.{k}"), v)?;
                            s.env.insert(k, v);
                        }
                    }
                    "locked" => s.locked = Some(parse_locked(file, &field, v)?),
                    "refresh" => {
                        let v = yaml_string(file, &field, v)?;
                        s.refresh = Some(parse_refresh(file, &field, &v)?);
                    }
                    other => {
                        return Err(ConfigError::field(
                            file,
                            &field,
                            format!("unknown session option `{other}`; use name, project, build, posargs, env, locked or refresh"),
                        ))
                    }
                }
            }
            if s.name.is_empty() {
                return Err(ConfigError::field(file, &at, "a session map needs `name:`"));
            }
        }
        _ => {
            return Err(ConfigError::field(
                file,
                &at,
                "must be a session name or a map with `name:` and options",
            ))
        }
    }
    if s.name.trim().is_empty() {
        return Err(ConfigError::field(file, &at, "empty session name"));
    }
    Ok(s)
}

fn parse_locked(file: &Path, field: &str, v: Value) -> Result<LockedSelection, ConfigError> {
    let Value::Mapping(m) = v else {
        return Err(ConfigError::field(
            file,
            field,
            "must be a map like {groups: [test]} or {only_groups: [lint]}",
        ));
    };
    let mut sel = LockedSelection::default();
    for (k, v) in m {
        let k = yaml_string(file, field, k)?;
        let sub = format!("{field}.{k}");
        let list = match v {
            Value::Sequence(items) => items
                .into_iter()
                .map(|i| yaml_string(file, &sub, i))
                .collect::<Result<Vec<_>, _>>()?,
            Value::String(one) => vec![one],
            _ => return Err(ConfigError::field(file, &sub, "must be a list of names")),
        };
        match k.as_str() {
            "groups" => sel.groups = list,
            "only_groups" => sel.only_groups = list,
            "extras" => sel.extras = list,
            other => {
                return Err(ConfigError::field(
                    file,
                    &sub,
                    format!("unknown option `{other}`; use groups, only_groups or extras"),
                ))
            }
        }
    }
    if !sel.only_groups.is_empty() && (!sel.groups.is_empty() || !sel.extras.is_empty()) {
        return Err(ConfigError::field(
            file,
            field,
            "only_groups installs the groups alone; it cannot be combined with groups or extras",
        ));
    }
    Ok(sel)
}

fn yaml_string(file: &Path, field: &str, v: Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s),
        // Users write `SETUPTOOLS_SCM_PRETEND_VERSION: 1.0` and mean the string.
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ConfigError::field(file, field, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        for f in ["pyproject.toml", "uv.lock", "noxfile.py"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        Config::parse(text, Path::new("venvimg.yaml"), dir.path())
    }

    const MIN: &str = "repository: 127.0.0.1:5000/acme/ci\nbase: 127.0.0.1:5000/base:1\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.envdir, "/opt/nox");
        assert_eq!(c.workdir, "/src");
        assert_eq!(c.builder, BuilderKind::Podman);
        assert_eq!(c.owner, Owner { uid: 0, gid: 0 });
        assert!(c.sessions.is_none());
        assert_eq!(c.repository.registry(), "127.0.0.1:5000");
    }

    #[test]
    fn compression_level_is_zstds_only_and_in_range() {
        assert_eq!(parse(MIN).unwrap().compression, Compression::Gzip);
        let c = parse(&format!("{MIN}compression: zstd\n")).unwrap();
        assert_eq!(c.compression, Compression::Zstd { level: 3 });
        let c = parse(&format!("{MIN}compression: zstd\ncompression_level: 19\n")).unwrap();
        assert_eq!(c.compression, Compression::Zstd { level: 19 });
        for bad in [
            "compression: zstd\ncompression_level: 0",
            "compression: zstd\ncompression_level: 20",
        ] {
            let e = parse(&format!("{MIN}{bad}\n")).unwrap_err().to_string();
            assert!(
                e.contains("compression_level") && e.contains("1 to 19"),
                "{e}"
            );
        }
        let e = parse(&format!("{MIN}compression_level: 9\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compression_level") && e.contains("`compression: zstd` only"),
            "{e}"
        );
    }

    #[test]
    fn platforms_list_in_order_and_this_machines_comes_first_to_run() {
        let c = parse(&format!(
            "{MIN}platforms: [linux/s390x, {}]\n",
            Platform::host()
        ))
        .unwrap();
        assert!(c.multi_platform());
        assert_eq!(c.platforms[0].architecture, "s390x");
        assert_eq!(c.platform, Platform::host(), "the host's, when listed");
        let one = c.for_platform(&c.platforms[0]);
        assert_eq!(one.platforms, vec![one.platform.clone()]);
        assert!(!one.multi_platform());
        let c = parse(&format!("{MIN}platforms: [linux/s390x, linux/riscv64]\n")).unwrap();
        assert_eq!(c.platform.architecture, "s390x", "else the first listed");
        let c = parse(MIN).unwrap();
        assert_eq!(c.platforms, vec![Platform::host()]);
    }

    #[test]
    fn sessions_as_names_and_maps() {
        let c = parse(&format!(
            "{MIN}project: editable\nsessions:\n  - tests-3.12\n  - name: docs\n    build: run\n    posargs: [--collect-only]\n    env: {{A: 1}}\n"
        ))
        .unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s[0].name, "tests-3.12");
        assert_eq!(s[0].project, ProjectMode::Editable);
        assert_eq!(s[1].build, BuildMode::Run);
        assert_eq!(s[1].posargs, vec!["--collect-only"]);
        assert_eq!(s[1].env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (format!("{MIN}envdir: opt/nox\n"), "envdir"),
            (format!("{MIN}envdir: /src/.nox\n"), "envdir"),
            (format!("{MIN}platform: windows/amd64\n"), "platform"),
            (format!("{MIN}platform: linux\n"), "platform"),
            (
                format!("{MIN}platforms: [linux/amd64, linux/s390]\n"),
                "platforms[1]",
            ),
            (
                format!("{MIN}platforms: [linux/arm64, linux/arm64]\n"),
                "platforms[1]",
            ),
            (format!("{MIN}platforms: []\n"), "platforms"),
            (
                format!("{MIN}platform: linux/amd64\nplatforms: [linux/amd64]\n"),
                "platforms",
            ),
            (format!("{MIN}builder: kaniko\n"), "builder"),
            (format!("{MIN}owner: root\n"), "owner"),
            (
                format!("{MIN}sessions:\n  - name: a\n    colour: red\n"),
                "sessions[0].colour",
            ),
            (format!("{MIN}inputs: [missing.txt]\n"), "inputs[0]"),
            (format!("{MIN}refresh: weekly\n"), "refresh"),
            (
                format!("{MIN}sessions:\n  - name: a\n    refresh: 0d\n"),
                "sessions[0].refresh",
            ),
            (
                "repository: 'UPPER CASE/x'\nbase: b\n".to_string(),
                "repository",
            ),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{text:?} → {err}");
        }
    }

    #[test]
    fn refresh_durations() {
        assert_eq!(Refresh::parse("7d").map(|r| r.seconds), Some(7 * 86_400));
        assert_eq!(Refresh::parse("12h").map(|r| r.seconds), Some(12 * 3600));
        assert_eq!(Refresh::parse("2w").map(|r| r.seconds), Some(14 * 86_400));
        assert_eq!(Refresh::parse("90m").map(|r| r.seconds), Some(5400));
        assert_eq!(Refresh::parse("1h30m").map(|r| r.seconds), Some(5400));
        assert_eq!(Refresh::parse("0s").map(|r| r.seconds), Some(0));
        assert_eq!(Refresh::parse(" 7d ").unwrap().text, "7d");
        assert!(Refresh::parse("7").is_none());
        assert!(Refresh::parse("d").is_none());
        assert!(Refresh::parse("-1d").is_none());
        let err = parse(&format!("{MIN}refresh: 0s\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1s"), "{err}");
        let err = parse(&format!("{MIN}refresh: soon\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`soon` is not a duration"), "{err}");
        let c = parse(&format!("{MIN}refresh: 1d\n")).unwrap();
        assert_eq!(c.refresh.map(|r| r.seconds), Some(86_400));
    }

    #[test]
    fn unknown_top_level_field_has_position() {
        let err = parse(&format!("{MIN}colour: red\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn source_from_the_field_or_the_git_remote_never_with_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("sub/project");
        std::fs::create_dir_all(&project).unwrap();
        for f in ["pyproject.toml", "uv.lock", "noxfile.py"] {
            std::fs::write(project.join(f), "x").unwrap();
        }
        let at = |text: &str| Config::parse(text, Path::new("venvimg.yaml"), &project);
        assert_eq!(at(MIN).unwrap().source, None);
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(
            dir.path().join(".git/config"),
            "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://other.example/x\n[remote \"origin\"]\n\turl = https://ci-token:SECRET@git.example/acme/app.git\n",
        )
        .unwrap();
        assert_eq!(
            at(MIN).unwrap().source.as_deref(),
            Some("https://git.example/acme/app")
        );
        let own = at(&format!("{MIN}source: https://forge.example/acme/app\n")).unwrap();
        assert_eq!(
            own.source.as_deref(),
            Some("https://forge.example/acme/app")
        );
        assert_eq!(at(&format!("{MIN}source: \"\"\n")).unwrap().source, None);
        let err = at(&format!(
            "{MIN}source: https://me:hunter2@forge.example/a\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("source") && !err.contains("hunter2"), "{err}");
    }
}
