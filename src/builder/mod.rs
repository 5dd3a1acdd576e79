//! The build stage: for a resolved plan, each miss built (nox's installs in the builder) →
//! checked (the project's own code, drift) → packed into layers → composed on the base →
//! pushed with its SBOM; then the all-sessions image and the outputs asked for. Commands
//! call [`build`] (every platform of the config) or [`build_platform`] (one plan); `verify`
//! rebuilds hits with [`prepare`], [`build_all`] and [`compose_images`].
//!
//! The rooms: `pipeline` (one platform, start to end), `platforms` (several, and their
//! indexes), `workspace` (build folders, envdirs, the build environment), `session` (one
//! session's build and its checks), `scripts` (running them in the builder), `pack`
//! (layers), `compose` (images, hits' layers read back), `publish` (push, SBOM, records),
//! `diagnose` (what a failed build's output means).

mod compose;
mod diagnose;
mod pack;
mod pipeline;
mod platforms;
mod publish;
mod scripts;
mod session;
mod workspace;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{BuilderKind, Config};
use crate::engine::{self as builder};
use crate::error::{BuildError, Error};
use crate::image::LayerDescriptor;
use crate::model::{Digest, Platform, Tag, VenvName};
use crate::plan::record::SessionRecord;
use crate::plan::{CheckAnnotation, Plan, SessionPlan};
use crate::printer::Printer;
use crate::registry::Registry;
pub use compose::compose_images;
use pipeline::build_platform;
pub use session::Built;
use session::{build_all, BuildSetup};
pub use workspace::WorkDir;
use workspace::{parallel_jobs, prepare};

/// What a build is asked to do: the flags of `build` (and of what `run` and `verify`
/// build), without their parsing.
#[derive(Debug, Default, Clone)]
pub struct BuildOptions {
    /// Only these sessions (nox's names; a function name stands for its parametrizations).
    pub sessions: Vec<String>,
    /// Rebuild sessions whose image already exists.
    pub force: bool,
    /// Build and compose, but push nothing.
    pub no_push: bool,
    /// Also write the all-sessions image here (oci:DIR, oci-archive:FILE, docker-archive:FILE).
    pub output: Vec<String>,
    /// Load the all-sessions image into the engine's storage.
    pub load: bool,
    /// Refuse a stale uv.lock or a left-out session; fail on a `locked:` session's drift.
    pub strict: bool,
    /// Stop at the first session that fails to build.
    pub fail_fast: bool,
    /// Only these platforms of `platforms:` (`OS/ARCH`; default: all).
    pub platform: Vec<String>,
    /// podman or docker over the config's container builder.
    pub engine: Option<String>,
    /// Extra build environment: NAME=VALUE, or NAME to take it from this environment.
    pub build_env: Vec<String>,
    /// A CA bundle the builds trust for package downloads.
    pub build_ca: Option<std::path::PathBuf>,
    /// The build containers' network.
    pub build_network: Option<String>,
    /// How many sessions build at once.
    pub jobs: Option<u16>,
    /// Keep the build folders.
    pub keep: bool,
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// What `build` did over every platform built here: each session's result (with
/// `platforms:`, its index and each platform's image), the all-sessions image, the
/// sessions that failed.
pub struct BuildResult {
    /// The plan of this machine's platform (the first one built here).
    pub plan: Plan,
    pub results: Vec<SessionResult>,
    /// The all-sessions image (or index): reference and digest.
    pub all: Option<(String, Digest)>,
    /// (session, cause) of each failure.
    pub failed: Vec<(String, String)>,
    /// How many session images were asked for (sessions × platforms).
    pub total: usize,
}

impl BuildResult {
    /// The exit of a build: an error naming each session that failed.
    pub fn exit(self) -> Result<(), Error> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(Error::BuildsFailed {
                total: self.total,
                failed: self.failed,
            })
        }
    }
}

/// Build `sessions` of `plan` — hits too — `args.jobs` at a time, pushing nothing: what
/// `verify` compares with the registry. Each result in `sessions`' order (None: not
/// started after a `fail_fast` stop); the layers' files live as long as the [`WorkDir`].
pub fn build_sessions(
    config: &Config,
    plan: &Plan,
    sessions: &[&SessionPlan],
    args: &BuildOptions,
    printer: &Printer,
) -> Result<(WorkDir, Vec<Option<Built>>), Error> {
    let (work, build_env) = prepare(config, args, true, printer)?;
    let jobs = parallel_jobs(args.jobs, config.builder, sessions.len());
    let setup = BuildSetup {
        config,
        plan,
        work: &work.path,
        build_env: &build_env,
        args,
    };
    let built = builder::blocking(|| build_all(&setup, sessions, printer, jobs));
    Ok((work, built))
}

/// Build the config's sessions: plan each platform picked, build its misses, push the
/// images, their indexes and the all-sessions image, write the outputs asked for.
/// Failed sessions are in the result, not an error (unless `fail_fast`).
pub async fn build(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    printer: &Printer,
) -> Result<BuildResult, Error> {
    if config.multi_platform() {
        return platforms::build(config, registry, args, printer).await;
    }
    platforms::check_flag(config, &args.platform)?;
    let built = build_platform(config, registry, args, printer).await?;
    Ok(BuildResult {
        total: built.plan.sessions.len(),
        plan: built.plan,
        results: built.results,
        all: built.all,
        failed: built.failed,
    })
}

/// What happened to one session, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionResult {
    pub session: String,
    pub venv_dir: VenvName,
    pub tag: Tag,
    pub image: String,
    pub digest: Option<Digest>,
    /// "hit", "built" or "failed".
    pub outcome: &'static str,
    pub layer_size: Option<u64>,
    pub seconds: f64,
    /// Why it failed: the first line of the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `platforms:`, each platform's image (the session's `image` is then their
    /// index).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformResult>,
}

/// One platform's image of a session, under its own tag.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformResult {
    pub platform: Platform,
    pub tag: Tag,
    pub image: String,
    pub digest: Option<Digest>,
    /// "hit", "built", "failed", or "not built here" (another runner's `--platform`).
    pub outcome: &'static str,
}

/// A session's layers (one, or one per distribution group), wherever they are: packed
/// here, or already in the registry.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    pub(super) descriptors: Vec<LayerDescriptor>,
    /// digest → file, for layers packed here.
    pub files: Vec<(Digest, PathBuf)>,
    pub(super) record: SessionRecord,
    /// What a plan checks a hit of this session's image against.
    pub(super) check: CheckAnnotation,
    /// The venv's distributions, for its SBOM: read where the venv was built (None for a
    /// hit, whose SBOM is in the registry already).
    pub(super) distributions: Option<Vec<crate::sbom::Distribution>>,
}

impl SessionLayer {
    fn size(&self) -> u64 {
        self.descriptors.iter().map(|d| d.size).sum()
    }
}

/// What one platform's build did: its plan, each session's result, the all-sessions
/// image, the sessions that failed.
pub(super) struct PlatformBuild {
    pub(super) plan: Plan,
    pub(super) results: Vec<SessionResult>,
    /// The all-sessions image: reference and digest.
    pub(super) all: Option<(String, Digest)>,
    pub(super) failed: Vec<(String, String)>,
    /// digest → bytes of the manifests composed here (an index lists their sizes).
    pub(super) manifests: HashMap<Digest, Vec<u8>>,
}

/// `--engine` over the config's container builder (the local builder stays local).
pub fn with_engine<'c>(
    config: &'c Config,
    engine: Option<&str>,
) -> Result<std::borrow::Cow<'c, Config>, Error> {
    Ok(match crate::engine::engine_flag(engine)? {
        Some(engine) if config.builder != BuilderKind::Local && engine != config.builder => {
            std::borrow::Cow::Owned(Config {
                builder: engine,
                ..config.clone()
            })
        }
        _ => std::borrow::Cow::Borrowed(config),
    })
}

impl SessionResult {
    /// A session whose image was there: its digest and venv layers' size.
    fn hit(s: &SessionPlan, digest: &Digest, layer_size: u64, seconds: f64) -> SessionResult {
        SessionResult {
            session: s.config.name.clone(),
            venv_dir: s.venv_dir.clone(),
            tag: s.tag.clone(),
            image: s.image.whole(),
            digest: Some(digest.clone()),
            outcome: "hit",
            layer_size: Some(layer_size),
            seconds,
            error: None,
            platforms: Vec::new(),
        }
    }
}
