//! `venvimg build`: plan, then for each miss build → check → pack → compose → push; then
//! the all-sessions image; then the outputs asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_client::Reference;
use serde::Serialize;

use crate::config::{BuilderKind, Config, LayerMode, ProjectMode};
use crate::engine::{self as builder, script};
use crate::error::Error;
use crate::image::{self, BaseImage, ComposedImage, LayerDescriptor};
use crate::layer::{self, PackOptions};
use crate::plan::record::{ImageRecord, LayerRecord, SessionRecord, RECORD_VERSION};
use crate::plan::{CheckAnnotation, Plan, SessionPlan, Status, CHECK_ANNOTATION};
use crate::printer::{human_bytes, table, Printer, Reporter};
use crate::python::inputs::{self, Derived};
use crate::python::venv;
use crate::registry::{is_loopback, push, Registry};

#[derive(Debug, Default, Clone, clap::Args)]
pub struct BuildArgs {
    /// Only these sessions, as nox takes them: `-s tests lint`, repeatable; a function name
    /// stands for all its parametrizations. (NOXSESSION is not read.)
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1..)]
    pub sessions: Vec<String>,
    /// Rebuild sessions whose image already exists.
    #[arg(long)]
    pub force: bool,
    /// Build and compose, but push nothing.
    #[arg(long)]
    pub no_push: bool,
    /// Also write the all-sessions image: oci:DIR, oci-archive:FILE or docker-archive:FILE.
    #[arg(long, value_name = "DEST")]
    pub output: Vec<String>,
    /// Load the all-sessions image into local podman (or docker) storage.
    #[arg(long)]
    pub load: bool,
    #[command(flatten)]
    pub builder: BuilderArgs,
    /// For CI: refuse to build (exit 2) when uv.lock does not match pyproject.toml or
    /// `sessions:` leaves out a session nox runs by default, and fail (exit 1, push
    /// nothing) when a `locked:` session installs packages its key does not cover.
    #[arg(long)]
    pub strict: bool,
    /// Stop at the first session that fails to build (default: build the others, push
    /// them, report each failure, exit 1).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Append `name=value` lines with each session's image to $GITHUB_OUTPUT / $FORGEJO_OUTPUT.
    #[arg(long)]
    pub ci_output: bool,
    /// Only this platform of `platforms:` (repeatable; default: all, foreign ones under
    /// emulation): a runner of each architecture builds its own, and each session's
    /// index is written once every platform's image is in the registry.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Vec<String>,
}

/// How sessions build: shared by `build`, `verify` (and what `run` builds first).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct BuilderArgs {
    /// podman or docker: the engine of the build containers (for `builder: podman` or
    /// `docker`; both give the same bytes and tags) and of `build --load` (default: the
    /// builder; for `builder: local`, whichever is installed).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Extra environment for the builds (repeatable): NAME=VALUE, or NAME to take the
    /// value from venvimg's environment (keeps a secret off the command line).
    #[arg(long = "build-env", value_name = "NAME[=VALUE]")]
    pub build_env: Vec<String>,
    /// A CA bundle the builds trust for package downloads (mounted read-only).
    #[arg(long, value_name = "FILE")]
    pub build_ca: Option<PathBuf>,
    /// The build containers' network (podman/docker `--network`, e.g. `host` where the
    /// daemon has no bridge); default: the engine's own.
    #[arg(long, value_name = "MODE")]
    pub build_network: Option<String>,
    /// How many sessions build at once (default: two per core, as memory allows; 1 for
    /// `builder: local`, whose builds share the envdir). Each line then names its session.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Keep the build folders (venvs, layers, logs) for debugging.
    #[arg(long)]
    pub keep: bool,
}

pub use crate::error::BuildError;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// The environment builds get besides the fixed one, and the values never to print.
pub(super) struct BuildEnv {
    extra: BTreeMap<String, String>,
    secrets: Vec<String>,
}

/// What happened to one session, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionResult {
    pub session: String,
    pub venv_dir: String,
    pub tag: String,
    pub image: String,
    pub digest: Option<String>,
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
    pub platform: String,
    pub tag: String,
    pub image: String,
    pub digest: Option<String>,
    /// "hit", "built", "failed", or "not built here" (another runner's `--platform`).
    pub outcome: &'static str,
}

/// A session's layers (one, or one per distribution group), wherever they are: packed
/// here, or already in the registry.
#[derive(Debug, Clone)]
pub(super) struct SessionLayer {
    descriptors: Vec<LayerDescriptor>,
    /// digest → file, for layers packed here.
    pub(super) files: Vec<(String, PathBuf)>,
    record: SessionRecord,
    /// What a plan checks a hit of this session's image against.
    check: CheckAnnotation,
    /// The venv's distributions, for its SBOM: read where the venv was built (None for a
    /// hit, whose SBOM is in the registry already).
    pub(super) distributions: Option<Vec<crate::sbom::Distribution>>,
}

impl SessionLayer {
    fn size(&self) -> u64 {
        self.descriptors.iter().map(|d| d.size).sum()
    }
}

pub async fn run(
    config: &Config,
    registry: &Registry,
    args: &BuildArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let started = Instant::now();
    if args.ci_output {
        super::report::ci_output_file()?;
    }
    if config.multi_platform() {
        return super::platforms::build(config, registry, args, printer, started).await;
    }
    super::platforms::check_flag(config, &args.platform)?;
    let built = build_platform(config, registry, args, printer).await?;
    built.finish(started, args, registry, printer)
}

/// What one platform's build did: its plan, each session's result, the all-sessions
/// image, the sessions that failed.
pub(super) struct PlatformBuild {
    pub(super) plan: Plan,
    pub(super) results: Vec<SessionResult>,
    /// The all-sessions image: reference and digest.
    pub(super) all: Option<(String, String)>,
    pub(super) failed: Vec<(String, String)>,
    /// digest → bytes of the manifests composed here (an index lists their sizes).
    pub(super) manifests: HashMap<String, Vec<u8>>,
}

impl PlatformBuild {
    /// The report, and the exit: 1 when a session failed.
    fn finish(
        self,
        started: Instant,
        args: &BuildArgs,
        registry: &Registry,
        printer: &Printer,
    ) -> Result<(), Error> {
        let report = BuildReport {
            sessions: &self.results,
            all: self
                .all
                .as_ref()
                .map(|(image, digest)| AllImage::of(&self.plan, image.clone(), digest)),
            seconds: started.elapsed().as_secs_f64(),
            pushed: !args.no_push,
            push: registry.stats.snapshot(),
        };
        report.render(args, printer)?;
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(Error::BuildsFailed {
                total: self.plan.sessions.len(),
                failed: self.failed,
            })
        }
    }
}

/// Plan and build one platform's sessions (the config's `platform`), push them and the
/// all-sessions image, write `--output`/`--load`: everything but the report.
pub(super) async fn build_platform(
    config: &Config,
    registry: &Registry,
    args: &BuildArgs,
    printer: &Printer,
) -> Result<PlatformBuild, Error> {
    let config = &with_engine(config, args.builder.engine.as_deref())?;
    let plan = crate::plan::make_plan(config, registry, &args.sessions).await?;
    crate::commands::report::flush_warnings(registry, printer);
    crate::commands::report::report_plan_findings(&plan, printer);
    crate::commands::report::check_project(config, &plan, &args.sessions, args.strict, printer)?;
    printer.info(format!(
        "base {} · {} session(s)",
        plan.base.pinned(),
        plan.sessions.len()
    ));
    if config.builder == BuilderKind::Docker && config.compression.is_zstd() {
        if let Some((major, minor)) = builder::docker_server_version().filter(|v| v.0 < 23) {
            printer.warn(format!(
                "{}: `compression: zstd`, but this machine's Docker {major}.{minor} cannot pull zstd layers (Docker 23 and later can): its job images will not run under it; use `compression: gzip` or podman",
                config.file.display()
            ));
        }
    }

    let to_build: Vec<&SessionPlan> = plan
        .sessions
        .iter()
        .filter(|s| args.force || matches!(s.status, Status::Miss))
        .collect();
    let (work, build_env) = prepare(config, args, !to_build.is_empty(), printer)?;
    let work_path = work.path.clone();
    // Every session a hit and the all-sessions image already there: nothing to fetch,
    // compose or push (the common CI case, and the one that should cost no more than
    // listing the sessions).
    if let Some((results, all_image, all_digest)) =
        all_hit_and_composed(&plan, config, registry, args, printer).await?
    {
        if !args.no_push {
            share_dry_run(&plan, registry, printer).await;
        }
        return Ok(PlatformBuild {
            plan,
            results,
            all: Some((all_image, all_digest)),
            failed: Vec::new(),
            manifests: HashMap::new(),
        });
    }

    let mut results = Vec::new();
    let mut layers: Vec<(String, SessionLayer)> = Vec::new();
    let mut composed: Vec<(Reference, ComposedImage, &SessionPlan, SessionLayer)> = Vec::new();
    let mut local_files: HashMap<String, PathBuf> = HashMap::new();
    let mut remote: HashMap<String, Reference> = HashMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();

    // The hits' layers (for the all-sessions image and the report), fetched side by side
    // before anything is built: 20 hits should not cost 40 round trips in sequence, and a
    // hit that fails its checks stops the build before a miss's minutes are spent.
    let mut hit_layers: HashMap<String, (SessionLayer, f64)> = {
        use futures_util::{StreamExt, TryStreamExt};
        futures_util::stream::iter(plan.sessions.iter().filter_map(|s| match &s.status {
            Status::Hit { digest } if !args.force => Some((s, digest)),
            _ => None,
        }))
        .map(|(s, digest)| {
            let base = &plan.base;
            async move {
                let t0 = Instant::now();
                let layer = layer_from_registry(registry, base, s, digest).await?;
                Ok::<_, Error>((s.config.name.clone(), (layer, t0.elapsed().as_secs_f64())))
            }
        })
        .buffered(8)
        .try_collect()
        .await?
    };
    let jobs = parallel_jobs(args.builder.jobs, config.builder, to_build.len());
    if jobs > 1 {
        printer.info(format!(
            "building {} session(s), {jobs} at a time",
            to_build.len()
        ));
    }
    let mut built = builder::blocking(|| {
        build_all(
            config, &plan, &to_build, &work_path, &build_env, args, printer, jobs,
        )
    })
    .into_iter();

    for s in &plan.sessions {
        let rebuild = args.force || matches!(s.status, Status::Miss);
        if !rebuild {
            let Status::Hit { digest } = &s.status else {
                unreachable!()
            };
            printer.info(format!(
                "{}: hit {}@{digest}",
                s.config.name,
                s.image.whole()
            ));
            let (layer, seconds) = hit_layers
                .remove(&s.config.name)
                .expect("every hit's layer was fetched above");
            // Where the all-sessions image finds this hit's layers (another repository for
            // a hit in `trusted_repository`).
            for d in &layer.descriptors {
                remote.insert(d.digest.clone(), s.image.clone());
            }
            results.push(SessionResult::hit(s, digest, layer.size(), seconds));
            layers.push((s.venv_dir.clone(), layer));
            continue;
        }
        // Misses come back in plan order; none left means a --fail-fast stop before it.
        let Some(Some((outcome, seconds))) = built.next() else {
            continue;
        };
        let layer = match outcome {
            Ok(layer) => layer,
            Err(e) if args.fail_fast => return Err(e),
            // The other sessions still build and push, as nox runs every session.
            Err(e) => {
                printer.error(e.to_string());
                let cause = e.summary();
                failed.push((s.config.name.clone(), cause.clone()));
                results.push(SessionResult {
                    session: s.config.name.clone(),
                    venv_dir: s.venv_dir.clone(),
                    tag: s.tag.clone(),
                    image: s.image.whole(),
                    digest: None,
                    outcome: "failed",
                    layer_size: None,
                    seconds,
                    error: Some(cause),
                    platforms: Vec::new(),
                });
                continue;
            }
        };
        let img = compose_images(
            &plan.base,
            &[(s.venv_dir.clone(), layer.clone())],
            config,
            plan.complete,
        );
        for (digest, file) in &layer.files {
            local_files.insert(digest.clone(), file.clone());
        }
        results.push(SessionResult {
            session: s.config.name.clone(),
            venv_dir: s.venv_dir.clone(),
            tag: s.tag.clone(),
            image: s.image.whole(),
            digest: Some(img.manifest_digest.clone()),
            outcome: "built",
            layer_size: Some(layer.size()),
            seconds,
            error: None,
            platforms: Vec::new(),
        });
        composed.push((s.image.clone(), img, s, layer.clone()));
        layers.push((s.venv_dir.clone(), layer));
    }

    // The all-sessions image, for local use: every session's layer on one base.
    let all_tag = plan.combined_tag();
    let all_ref = Reference::with_tag(
        config.repository.resolve_registry().to_string(),
        config.repository.repository().to_string(),
        all_tag,
    );
    let all_image = compose_images(&plan.base, &layers, config, plan.complete);
    // Every session's layers on one base may exceed what overlay filesystems accept; the
    // per-session images are what CI needs, so the combined one is skipped, loudly.
    let all_fits = all_image.layers.len() <= config.max_layers;
    // Only an image of every selected session is the all-sessions image.
    let all_wanted = failed.is_empty();
    if !all_wanted {
        printer.warn(format!(
            "no all-sessions image: {} of {} session(s) failed",
            failed.len(),
            plan.sessions.len()
        ));
    } else if !all_fits {
        let msg = format!(
            "the all-sessions image would have {} layers, more than max_layers ({})",
            all_image.layers.len(),
            config.max_layers
        );
        if !args.output.is_empty() || args.load {
            return Err(Error::Usage(format!(
                "{msg}; --output/--load need it: build fewer sessions (--session) or raise max_layers"
            )));
        }
        printer.warn(format!("{msg}; not pushing it"));
    }

    if !args.no_push {
        share_dry_run(&plan, registry, printer).await;
        for (target, img, s, layer) in &composed {
            let p = printer.spinner(format!("pushing {}", target.whole()));
            push::push_image(registry, target, img, &plan.base, &local_files).await?;
            mark_pushed(
                registry,
                target,
                &img.manifest_digest,
                img.manifest.len(),
                printer,
            )
            .await;
            push_sbom(registry, config, target, img, s, layer, printer).await?;
            p.finish();
            printer.info(format!("pushed {}@{}", target.whole(), img.manifest_digest));
        }
        // A `--session` pick's combined image is for --output/--load only: pushing it
        // would leave a tag per pick (a CI matrix of single-session builds) that no plan
        // ever looks up.
        let all_exists = if all_fits && all_wanted && plan.complete {
            registry.manifest_digest(&all_ref).await?
        } else {
            Some(all_image.manifest_digest.clone())
        };
        if all_exists.as_deref() != Some(all_image.manifest_digest.as_str()) {
            push::push_image_from(
                registry,
                &all_ref,
                &all_image,
                &plan.base,
                &local_files,
                &remote,
            )
            .await?;
            mark_pushed(
                registry,
                &all_ref,
                &all_image.manifest_digest,
                all_image.manifest.len(),
                printer,
            )
            .await;
            printer.info(format!(
                "pushed the all-sessions image {}@{}",
                all_ref.whole(),
                all_image.manifest_digest
            ));
        }
        let st = registry.stats.snapshot();
        printer.info(format!(
            "uploaded {} blob(s), {}; {} already present ({}); {} mounted, {} copied from the base registry; {} retried request(s)",
            st.blobs_uploaded,
            human_bytes(st.bytes_uploaded),
            st.blobs_present,
            human_bytes(st.bytes_present),
            st.blobs_mounted,
            st.blobs_copied,
            crate::registry::RETRIES.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }

    // Outputs and --load carry the all-sessions image; blobs not packed here (base
    // layers, the layers of hits) are fetched from the registry.
    let sources = crate::outputs::BlobSources {
        local: &local_files,
        base: &plan.base.reference,
        repository: &all_ref,
        remote: &remote,
    };
    for dest in args.output.iter().filter(|_| all_wanted) {
        crate::outputs::write_output(registry, dest, &all_ref, &all_image, &sources, printer)
            .await?;
    }
    if args.load && all_wanted {
        crate::outputs::load(
            super::job_engine(config.builder, args.builder.engine.as_deref())?,
            registry,
            &all_ref,
            &all_image,
            &sources,
            &work_path,
            printer,
        )
        .await?;
    }

    let all =
        (all_wanted && plan.complete).then(|| (all_ref.whole(), all_image.manifest_digest.clone()));
    let mut manifests: HashMap<String, Vec<u8>> = composed
        .iter()
        .map(|(_, img, _, _)| (img.manifest_digest.clone(), img.manifest.clone()))
        .collect();
    manifests.insert(
        all_image.manifest_digest.clone(),
        all_image.manifest.clone(),
    );
    Ok(PlatformBuild {
        plan,
        results,
        all,
        failed,
        manifests,
    })
}

/// Compose `layers` on the base. A session's own image (one session) carries the check
/// annotation plans read; the all-sessions image does not need one.
/// The image's working directory is `workdir`, where the venvs expect the checkout: a
/// plain `docker run -v "$PWD:WORKDIR" IMAGE nox -s S` then runs at the right path.
/// Annotations: the base (name, digest), the title (the session's name; "all sessions"
/// for every session of the config, `complete`; else the names) and the project's
/// `source` when the config knows a clean one.
pub(super) fn compose_images(
    base: &BaseImage,
    layers: &[(String, SessionLayer)],
    config: &Config,
    complete: bool,
) -> ComposedImage {
    let descriptors: Vec<LayerDescriptor> = layers
        .iter()
        .flat_map(|(_, l)| l.descriptors.iter().cloned())
        .collect();
    let record = ImageRecord {
        version: RECORD_VERSION,
        sessions: layers.iter().map(|(_, l)| l.record.clone()).collect(),
    };
    let names: Vec<&str> = layers
        .iter()
        .map(|(_, l)| l.record.session.as_str())
        .collect();
    let mut labels = BTreeMap::new();
    labels.insert(image::SESSIONS_LABEL.to_string(), names.join(","));
    labels.insert(image::RECORD_LABEL.to_string(), record.to_label());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.base.name".to_string(),
        base.reference.whole(),
    );
    annotations.insert(
        "org.opencontainers.image.base.digest".to_string(),
        base.digest.clone(),
    );
    let title = match layers {
        [(_, only)] => only.record.session.clone(),
        _ if complete => "all sessions".to_string(),
        _ => format!("sessions {}", names.join(", ")),
    };
    annotations.insert(image::TITLE_ANNOTATION.to_string(), title);
    if let Some(source) = &config.source {
        annotations.insert(image::SOURCE_ANNOTATION.to_string(), source.clone());
    }
    if let [(_, only)] = layers {
        annotations.insert(
            CHECK_ANNOTATION.to_string(),
            serde_json::to_string(&only.check).expect("check serialises"),
        );
    }
    image::compose(
        base,
        &descriptors,
        &labels,
        &annotations,
        Some(&config.workdir),
    )
}

/// A hit's layer, read back from its image: the last layer, its diff_id and record.
async fn layer_from_registry(
    registry: &Registry,
    base: &BaseImage,
    s: &SessionPlan,
    digest: &str,
) -> Result<SessionLayer, Error> {
    // By the digest the plan checked, never the tag again: a tag moved since is not used.
    let pinned = s.image.clone_with_digest(digest.to_string());
    let (bytes, got) = registry.manifest_raw(&pinned).await?;
    if got != digest {
        return Err(crate::registry::RegistryError::BadManifest {
            reference: pinned.whole(),
            detail: format!("the registry served {got} for {digest}"),
        }
        .into());
    }
    let manifest = image::parse_manifest(&bytes).map_err(|detail| {
        crate::registry::RegistryError::BadManifest {
            reference: s.image.whole(),
            detail,
        }
    })?;
    let config_bytes = registry
        .blob_bytes(
            &s.image,
            manifest.config().digest().as_ref(),
            manifest.config().size(),
        )
        .await?;
    let bad = |detail: String| crate::registry::RegistryError::BadManifest {
        reference: s.image.whole(),
        detail,
    };
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(e.to_string()))?;
    let base_count = base.manifest.layers().len();
    let layers = manifest.layers();
    if layers.len() <= base_count {
        return Err(bad(format!(
            "expected the base's {base_count} layers and the venv's, found {}; was it made by venvimg?",
            layers.len()
        ))
        .into());
    }
    let record = ImageRecord::from_config(&config_bytes)
        .and_then(|r| r.sessions.into_iter().next())
        .ok_or_else(|| {
            bad(format!(
                "no {} label of this venvimg's format; was it made by venvimg?",
                image::RECORD_LABEL
            ))
        })?;
    let check = crate::plan::parse_check(&bytes)
        .ok_or_else(|| bad("no check annotation; was it made by this venvimg?".into()))?;
    // Compose only what the plan accepted: this session's key, on this base's layers.
    if record.key != s.key || check.key != s.key {
        return Err(bad(format!(
            "its record is for key {}, not {}",
            &record.key[..record.key.len().min(16)],
            &s.key[..16]
        ))
        .into());
    }
    let base_digests: Vec<String> = base
        .manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let image_base: Vec<String> = layers[..base_count]
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    if image_base != base_digests {
        return Err(bad(format!(
            "its first {base_count} layers are not the base image's ({})",
            base.pinned()
        ))
        .into());
    }
    let history: Vec<&serde_json::Value> = config["history"]
        .as_array()
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    let venv_layers = layers.len() - base_count;
    let mut descriptors = Vec::with_capacity(venv_layers);
    for (i, l) in layers.iter().enumerate().skip(base_count) {
        let diff_id = config["rootfs"]["diff_ids"][i]
            .as_str()
            .ok_or_else(|| bad(format!("config has no diff_id for layer {i}")))?
            .to_string();
        // Our history entries are the last ones, one per venv layer.
        let created_by = history
            .len()
            .checked_sub(layers.len() - i)
            .and_then(|h| history[h]["created_by"].as_str())
            .unwrap_or("venvimg")
            .to_string();
        descriptors.push(LayerDescriptor {
            media_type: l.media_type().to_string(),
            digest: l.digest().to_string(),
            size: l.size(),
            diff_id,
            created_by,
        });
    }
    Ok(SessionLayer {
        descriptors,
        files: Vec::new(),
        record,
        check,
        distributions: None,
    })
}

/// After `build` pushed `target` (manifest `digest`, `size` bytes): record when, for
/// `prune` (best effort: a failure is a warning, the image counts as old).
async fn mark_pushed(
    registry: &Registry,
    target: &Reference,
    digest: &str,
    size: usize,
    printer: &Printer,
) {
    match registry.mark_pushed(target, digest, size).await {
        Ok(true) => printer.verbose(format!(
            "recorded the push time of {} as {}",
            target.whole(),
            crate::registry::pushed::marker_tag(digest)
        )),
        Ok(false) => {}
        Err(e) => printer.warn(format!(
            "could not record when {} was pushed (`venvimg prune` will count it as old): {}",
            target.whole(),
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
}

/// After `build` pushed the session image `target`: its SBOM, as a referrer of it (the
/// registry's referrers API, else the `sha256-<hex>` referrers tag). An image pushed
/// without its SBOM is an error saying how to push it again: a plan would call the image
/// a hit and never push one.
async fn push_sbom(
    registry: &Registry,
    config: &Config,
    target: &Reference,
    img: &ComposedImage,
    s: &SessionPlan,
    layer: &SessionLayer,
    printer: &Printer,
) -> Result<(), Error> {
    let Some(dists) = &layer.distributions else {
        return Ok(());
    };
    let repository = format!("{}/{}", target.resolve_registry(), target.repository());
    let venv_path = format!("{}/{}", config.envdir, s.venv_dir);
    let doc = crate::sbom::document(
        &crate::sbom::Subject {
            repository: &repository,
            tag: &s.tag,
            session: &s.config.name,
            key: &s.key,
            python: &layer.record.python,
            venv_path: &venv_path,
        },
        dists,
    );
    let artifact = crate::registry::referrers::Artifact {
        artifact_type: crate::sbom::MEDIA_TYPE,
        data: &doc,
        annotations: [
            (
                crate::sbom::ANNOTATION.to_string(),
                format!("CycloneDX {}", crate::sbom::SPEC_VERSION),
            ),
            (
                image::TITLE_ANNOTATION.to_string(),
                format!("SBOM of {}", s.config.name),
            ),
        ]
        .into(),
        layer_annotations: [(
            image::TITLE_ANNOTATION.to_string(),
            crate::sbom::FILE_NAME.to_string(),
        )]
        .into(),
    };
    let pushed = registry
        .push_referrer(target, &img.manifest_digest, img.manifest.len(), &artifact)
        .await
        .map_err(|e| BuildError::Sbom {
            image: format!("{}@{}", target.whole(), img.manifest_digest),
            session: s.config.name.clone(),
            detail: e.to_string(),
        })?;
    printer.verbose(format!(
        "{}: SBOM {} ({} distributions) {}",
        s.config.name,
        pushed.digest,
        dists.len(),
        match &pushed.via {
            crate::registry::referrers::Via::Api => "listed by the referrers API".to_string(),
            crate::registry::referrers::Via::Tag(t) => format!("listed under the tag {t}"),
        }
    ));
    Ok(())
}

/// The plan's dry run, for the next plans on other runners (best effort).
async fn share_dry_run(plan: &Plan, registry: &Registry, printer: &Printer) {
    if let Some((target, d)) = &plan.dry_run_to_share {
        match registry
            .push_artifact(target, crate::python::dryrun::MEDIA_TYPE, d.to_bytes())
            .await
        {
            Ok(_) => printer.verbose(format!("saved the dry run as {}", target.whole())),
            Err(e) => printer.warn(format!("could not save the dry run for other runners: {e}")),
        }
    }
}

/// When every session hits and the all-sessions tag exists (the tag is a hash of the
/// sessions' keys, so it holds their images' layers), the report without fetching a
/// layer; None otherwise (`--output`/`--load` need the image's bytes; `--force` builds).
/// Returns the sessions' results, the all-sessions image and its digest.
async fn all_hit_and_composed(
    plan: &Plan,
    config: &Config,
    registry: &Registry,
    args: &BuildArgs,
    printer: &Printer,
) -> Result<Option<(Vec<SessionResult>, String, String)>, Error> {
    if args.force || !args.output.is_empty() || args.load || !plan.complete {
        return Ok(None);
    }
    let base_count = plan.base.manifest.layers().len();
    let mut results = Vec::new();
    for s in &plan.sessions {
        let (Status::Hit { digest }, Some(manifest)) = (&s.status, &s.hit_manifest) else {
            return Ok(None);
        };
        let Ok(m) = serde_json::from_slice::<oci_spec::image::ImageManifest>(manifest) else {
            return Ok(None);
        };
        let layer_size: u64 = m.layers().iter().skip(base_count).map(|l| l.size()).sum();
        results.push(SessionResult::hit(s, digest, layer_size, 0.0));
    }
    let all_ref = Reference::with_tag(
        config.repository.resolve_registry().to_string(),
        config.repository.repository().to_string(),
        plan.combined_tag(),
    );
    let Some(all_digest) = registry.manifest_digest(&all_ref).await? else {
        return Ok(None);
    };
    for r in &results {
        printer.info(format!(
            "{}: hit {}@{}",
            r.session,
            r.image,
            r.digest.as_deref().unwrap_or_default()
        ));
    }
    printer.info(format!(
        "the all-sessions image is there: {}@{all_digest}",
        all_ref.whole()
    ));
    Ok(Some((results, all_ref.whole(), all_digest)))
}

/// `--engine` over the config's container builder (the local builder stays local).
pub(super) fn with_engine<'c>(
    config: &'c Config,
    engine: Option<&str>,
) -> Result<std::borrow::Cow<'c, Config>, Error> {
    Ok(match super::engine_flag(engine)? {
        Some(engine) if config.builder != BuilderKind::Local && engine != config.builder => {
            std::borrow::Cow::Owned(Config {
                builder: engine,
                ..config.clone()
            })
        }
        _ => std::borrow::Cow::Borrowed(config),
    })
}

/// Where sessions build: a folder removed on drop unless `--keep`.
pub(super) struct WorkDir {
    pub path: PathBuf,
    _dir: Option<crate::cancel::TempDir>,
}

/// Before any session builds: the builder is there and can mount the checkout (when
/// something will build), a build folder, and the build environment (`build_env:` and
/// `--build-env`) with the values to mask.
pub(super) fn prepare(
    config: &Config,
    args: &BuildArgs,
    builds: bool,
    printer: &dyn Reporter,
) -> Result<(WorkDir, BuildEnv), Error> {
    if builds && !builder::engine_available(config.builder) {
        return Err(BuildError::NoEngine {
            builder: config.builder.as_str(),
            program: match config.builder {
                BuilderKind::Local => "nox",
                BuilderKind::Podman => "podman",
                BuilderKind::Docker => "docker",
            },
            hint: match config.builder {
                BuilderKind::Podman => "install podman (apt-get install podman), or set `builder: docker` / `builder: local`",
                BuilderKind::Docker => "install docker and start its daemon, or set `builder: podman`",
                BuilderKind::Local => "install nox and uv here (pip install nox uv), or use a container builder",
            },
        }
        .into());
    }

    if builds {
        crate::engine::mountable_checkout(config.builder, &config.project_dir)?;
    }

    let dir = crate::cancel::tempdir("build")
        .map_err(io_err("creating a build folder in the temp dir"))?;
    let work = if args.builder.keep {
        let path = dir.keep();
        printer.info(format!("keeping build folders in {}", path.display()));
        WorkDir { path, _dir: None }
    } else {
        WorkDir {
            path: dir.path().to_path_buf(),
            _dir: Some(dir),
        }
    };

    let mut extra_env = config.build_env.clone();
    for kv in &args.builder.build_env {
        // `NAME` alone takes the value from venvimg's own environment, so a secret never
        // has to be written on a command line other processes can read.
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(kv) {
                Ok(v) => (kv.clone(), v),
                Err(_) => {
                    return Err(Error::Usage(format!(
                        "--build-env `{kv}`: no `=` and no variable {kv} in the environment; give NAME=VALUE, or export {kv} and pass its name"
                    )))
                }
            },
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Usage(format!(
                "--build-env `{k}`: a variable name is letters, digits and `_`"
            )));
        }
        extra_env.insert(k, v);
    }
    let build_env = BuildEnv {
        secrets: crate::plan::secret_values(config, &extra_env),
        extra: extra_env,
    };
    Ok((work, build_env))
}

/// How many sessions build at once: `--jobs`, else two per core, bounded by memory
/// (about 1 GiB a build: uv, nox and packing) and by the misses. The local builder
/// builds in the one envdir, where builds take turns anyway.
pub(super) fn parallel_jobs(flag: Option<u16>, builder: BuilderKind, misses: usize) -> usize {
    if builder == BuilderKind::Local {
        return 1;
    }
    let wanted = match flag {
        Some(n) => usize::from(n),
        None => {
            // Two per core: a small session's build mostly waits (container start, the
            // index, nox's own start-up), measured in benches (`--only parallel`).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let by_memory = available_memory_gib().unwrap_or(1).max(1);
            (2 * cores).min(by_memory)
        }
    };
    wanted.min(misses).max(1)
}

/// MemAvailable from /proc/meminfo, in whole GiB.
fn available_memory_gib() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / (1024 * 1024))
}

/// A session's build and the seconds it took.
pub(super) type Built = (Result<SessionLayer, Error>, f64);

/// The misses' builds, `jobs` at a time, each result (and its seconds) in `misses`'
/// order. With `--fail-fast` no build starts after one failed: those are `None`.
/// Sessions build independently (their own folder, container and envdir), so the only
/// shared thing is the output: with more than one at a time each line names its session.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_all(
    config: &Config,
    plan: &Plan,
    misses: &[&SessionPlan],
    work: &Path,
    build_env: &BuildEnv,
    args: &BuildArgs,
    printer: &dyn Reporter,
    jobs: usize,
) -> Vec<Option<Built>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Built>>> = misses.iter().map(|_| Mutex::new(None)).collect();
    let worker = || loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(s) = misses.get(i) else {
            break;
        };
        let t0 = Instant::now();
        let result = if jobs > 1 {
            let tagged = crate::printer::Prefixed::new(printer, s.config.name.clone());
            build_session(config, plan, s, work, build_env, args, &tagged)
        } else {
            build_session(config, plan, s, work, build_env, args, printer)
        };
        if result.is_err() && args.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) =
            Some((result, t0.elapsed().as_secs_f64()));
    };
    if jobs <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(worker);
            }
        });
    }
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// One session's build: prepare its folder → install (nox in the builder) → check the
/// venv (the project's own code, drift) → pack its layers → the record its image
/// carries. Runs on a blocking thread.
fn build_session(
    config: &Config,
    plan: &Plan,
    s: &SessionPlan,
    work: &Path,
    build_env: &BuildEnv,
    args: &BuildArgs,
    printer: &dyn Reporter,
) -> Result<SessionLayer, Error> {
    let name = &s.config.name;
    let ws = Workspace::prepare(config, s, work, printer)?;
    let runner = ScriptRunner::new(config, plan, s, &ws, build_env, args, printer);
    let progress = printer.spinner(format!("{name}: building with {}", config.builder));
    let build_started = Instant::now();
    runner.install()?;
    progress.finish();
    let build_read = what_the_build_read(
        config,
        s,
        &ws.out_dir.join(script::RECORD_FILE),
        &build_env.secrets,
    )?;
    report_divergence(s, &build_read, printer);
    let facts = runner.settle_project_code()?;
    check_drift(s, &facts, args.strict, printer)?;
    let distributions =
        crate::sbom::read_distributions(&ws.venv_host).map_err(|source| BuildError::Venv {
            session: name.clone(),
            source,
        })?;
    printer.info(format!(
        "{name}: venv built in {:.1}s ({} backend, python {}, {} packages)",
        build_started.elapsed().as_secs_f64(),
        facts.backend,
        facts.python,
        facts.packages.len()
    ));
    let packed = pack_session(config, plan, s, &ws, printer)?;
    let record = SessionRecord {
        session: name.clone(),
        venv_dir: s.venv_dir.clone(),
        key: s.key.clone(),
        tag: s.tag.clone(),
        inputs: s.document.clone(),
        python: facts.python.clone(),
        backend: facts.backend.clone(),
        interpreter: facts.interpreter.clone(),
        packages: facts.packages.clone(),
        layers: packed.records,
        commands: build_read.commands.clone(),
        build_read: (Some(&build_read.discovered) != s.document.discovered.as_ref())
            .then(|| build_read.discovered.clone()),
        notes: build_read.notes.clone(),
    };
    let check = CheckAnnotation {
        key: s.key.clone(),
        files: build_read.discovered.checked_files().cloned().collect(),
    };
    let at = format!("{}/{}", config.envdir, s.venv_dir);
    Ok(SessionLayer {
        descriptors: packed
            .layers
            .iter()
            .map(|(label, p)| LayerDescriptor {
                media_type: p.media_type().to_string(),
                digest: p.digest.clone(),
                size: p.size,
                diff_id: p.diff_id.clone(),
                created_by: if packed.grouped {
                    format!("venvimg: nox session {name} at {at} ({label})")
                } else {
                    format!("venvimg: nox session {name} at {at}")
                },
            })
            .collect(),
        files: packed
            .layers
            .iter()
            .map(|(_, p)| (p.digest.clone(), p.path.clone()))
            .collect(),
        record,
        check,
        distributions: Some(distributions),
    })
}

/// A session's build folder on this machine: the project (a copy, for container
/// builders), the envdir the venv is built in, venvimg's hook and scripts, and where the
/// hook records what the build ran.
struct Workspace {
    dir: PathBuf,
    project: PathBuf,
    envdir_host: PathBuf,
    venv_host: PathBuf,
    hook_dir: PathBuf,
    out_dir: PathBuf,
    /// The local builder writes the real envdir: two venvimg builds there would delete
    /// each other's venv mid-install, so they take turns (held until the session ends).
    _envdir_lock: Option<crate::outputs::layout::LayoutLock>,
}

impl Workspace {
    fn prepare(
        config: &Config,
        s: &SessionPlan,
        work: &Path,
        printer: &dyn Reporter,
    ) -> Result<Workspace, Error> {
        let dir = work.join(&s.venv_dir);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let envdir_host = match config.builder {
            BuilderKind::Local => PathBuf::from(&config.envdir),
            _ => dir.join("envdir"),
        };
        let project = match config.builder {
            BuilderKind::Local => local_project_dir(config)?,
            _ => {
                let p = dir.join("project");
                builder::copy_project(&config.project_dir, &p)
                    .map_err(io_err(format!("copying the project to {}", p.display())))?;
                p
            }
        };
        let venv_host = envdir_host.join(&s.venv_dir);
        let envdir_lock = match config.builder {
            BuilderKind::Local => Some(lock_envdir(&envdir_host, printer)?),
            _ => None,
        };
        prepare_envdir(config.builder, &envdir_host, &venv_host)?;

        // The scripts and venvimg's hook (mounted read-only), and where the hook records
        // the commands nox runs (the one folder the build writes besides the venv).
        let hook_dir = dir.join("hook");
        let out_dir = dir.join("out");
        for d in [&hook_dir, &out_dir] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        crate::python::hook::write_files(&hook_dir, None).map_err(io_err(format!(
            "writing the hook into {}",
            hook_dir.display()
        )))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The container's user writes the record; the 0700 build folder keeps others
            // out.
            std::fs::set_permissions(
                &out_dir,
                std::fs::Permissions::from_mode(crate::cancel::CONTAINER_OUT_MODE),
            )
            .map_err(io_err(format!("preparing {}", out_dir.display())))?;
        }
        let script_path = hook_dir.join("build.sh");
        let script = script::render(&script::ScriptParams {
            session: &s.config.name,
            envdir: &config.envdir,
            venv_dir: &s.venv_dir,
            workdir: &config.workdir,
            build: s.config.build,
            posargs: &s.config.posargs,
        });
        std::fs::write(&script_path, script)
            .map_err(io_err(format!("writing {}", script_path.display())))?;
        Ok(Workspace {
            dir,
            project,
            envdir_host,
            venv_host,
            hook_dir,
            out_dir,
            _envdir_lock: envdir_lock,
        })
    }
}

/// Runs a session's scripts in the builder: the same image, mounts and environment for
/// each (the install, and the editable reinstall of the project's own code).
struct ScriptRunner<'a> {
    config: &'a Config,
    s: &'a SessionPlan,
    ws: &'a Workspace,
    base_pinned: String,
    insecure_pull: bool,
    platform: String,
    env: BTreeMap<String, String>,
    secrets: &'a [String],
    args: &'a BuildArgs,
    printer: &'a dyn Reporter,
}

impl<'a> ScriptRunner<'a> {
    fn new(
        config: &'a Config,
        plan: &Plan,
        s: &'a SessionPlan,
        ws: &'a Workspace,
        build_env: &'a BuildEnv,
        args: &'a BuildArgs,
        printer: &'a dyn Reporter,
    ) -> ScriptRunner<'a> {
        let mut env = builder::reproducible_env(layer::DEFAULT_SOURCE_DATE_EPOCH);
        env.extend(build_env.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(s.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_registry = config.base.resolve_registry();
        ScriptRunner {
            config,
            s,
            ws,
            base_pinned: plan.base.pinned(),
            insecure_pull: is_loopback(base_registry)
                || config
                    .insecure_registries
                    .iter()
                    .any(|r| r == base_registry),
            platform: config.platform.to_string(),
            env,
            secrets: &build_env.secrets,
            args,
            printer,
        }
    }

    fn run(&self, script: &str, log: &Path) -> Result<builder::BuildOutcome, Error> {
        let job = builder::BuildJob {
            kind: self.config.builder,
            image: &self.base_pinned,
            insecure_pull: self.insecure_pull,
            platform: &self.platform,
            project: &self.ws.project,
            workdir: &self.config.workdir,
            envdir_host: &self.ws.envdir_host,
            envdir: &self.config.envdir,
            hook_dir: &self.ws.hook_dir,
            script,
            out_dir: &self.ws.out_dir,
            env_file: &self.ws.dir.join("build.env"),
            env: self.env.clone(),
            ca_file: self.args.builder.build_ca.as_deref(),
            log,
            name: &crate::cancel::container_name(),
            secrets: self.secrets,
            network: self.args.builder.build_network.as_deref(),
        };
        Ok(builder::run(&job, self.printer).map_err(io_err(format!(
            "running the {} builder",
            self.config.builder
        )))?)
    }

    /// `script` ran; its failure diagnosed, the log kept.
    fn run_ok(&self, script: &str, log: &Path) -> Result<(), Error> {
        let outcome = self.run(script, log)?;
        self.check(&outcome, log)
    }

    fn check(&self, outcome: &builder::BuildOutcome, log: &Path) -> Result<(), Error> {
        if outcome.success {
            return Ok(());
        }
        let name = &self.s.config.name;
        let kept = keep_log(name, log);
        Err(diagnose_failure(name, &self.base_pinned, outcome, &kept).into())
    }

    /// nox installs the session's venv (build.sh). Package indexes time out now and
    /// then, most on loaded CI runners: one more try, from a fresh venv, before calling
    /// the build failed.
    fn install(&self) -> Result<(), Error> {
        let log = self.ws.dir.join("build.log");
        let mut outcome = self.run("build.sh", &log)?;
        if !outcome.success && network_failure(&outcome.output) {
            self.printer.warn(format!(
                "session `{}`: the package index failed to answer; building once more",
                self.s.config.name
            ));
            prepare_envdir(
                self.config.builder,
                &self.ws.envdir_host,
                &self.ws.venv_host,
            )?;
            let _ = std::fs::remove_file(self.ws.out_dir.join(script::RECORD_FILE));
            outcome = self.run("build.sh", &log)?;
        }
        self.check(&outcome, &log)
    }

    fn facts(&self) -> Result<venv::VenvFacts, Error> {
        venv::read_facts(&self.ws.venv_host).map_err(|source| {
            BuildError::Venv {
                session: self.s.config.name.clone(),
                source,
            }
            .into()
        })
    }

    /// The venv's facts, after applying `project:` to the project's own code installed
    /// non-editable: refuse, key it (nothing to do), or reinstall it editable from
    /// workdir.
    fn settle_project_code(&self) -> Result<venv::VenvFacts, Error> {
        let (config, name) = (self.config, &self.s.config.name);
        let facts = self.facts()?;
        let frozen_error = |frozen: &[&venv::Package]| -> Error {
            BuildError::FrozenProject {
                session: name.clone(),
                dists: frozen
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.version))
                    .collect::<Vec<_>>()
                    .join(", "),
                workdir: config.workdir.clone(),
            }
            .into()
        };
        let frozen = venv::frozen_project_code(&facts, &config.workdir);
        if frozen.is_empty() {
            return Ok(facts);
        }
        match self.s.config.project {
            ProjectMode::Refuse => Err(frozen_error(&frozen)),
            // The key covers the project's files: any source change is a new image.
            ProjectMode::Keyed => Ok(facts),
            ProjectMode::Editable => {
                let paths: Vec<String> = frozen
                    .iter()
                    .filter_map(|p| p.local_url.as_deref())
                    .map(|u| u.trim_start_matches("file://").to_string())
                    .collect();
                self.printer.info(format!(
                    "{name}: reinstalling {} editable from {}",
                    frozen
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    config.workdir
                ));
                let script = self.ws.hook_dir.join("editable.sh");
                std::fs::write(
                    &script,
                    script::render_editable(
                        &config.envdir,
                        &self.s.venv_dir,
                        &config.workdir,
                        &facts.backend,
                        &paths,
                    ),
                )
                .map_err(io_err(format!("writing {}", script.display())))?;
                self.run_ok("editable.sh", &self.ws.dir.join("editable.log"))?;
                let facts = self.facts()?;
                let still = venv::frozen_project_code(&facts, &config.workdir);
                if still.is_empty() {
                    Ok(facts)
                } else {
                    Err(frozen_error(&still))
                }
            }
        }
    }
}

/// A `locked:` session's packages its key does not cover: warnings, or with `--strict`
/// an error (nothing of it pushed).
fn check_drift(
    s: &SessionPlan,
    facts: &venv::VenvFacts,
    strict: bool,
    printer: &dyn Reporter,
) -> Result<(), Error> {
    let Some(locked) = &s.document.locked else {
        return Ok(());
    };
    let name = &s.config.name;
    let drift = crate::python::locked::drift(&facts.packages, &locked.packages);
    if drift.is_empty() {
        return Ok(());
    }
    if strict {
        return Err(BuildError::Drift {
            session: name.clone(),
            selection: serde_json::to_string(&s.config.locked).unwrap_or_default(),
            list: drift
                .iter()
                .map(|d| format!("    {d}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
        .into());
    }
    for d in &drift {
        printer.warn(format!(
            "session `{name}`: drift: {d}; the key does not cover it (--strict makes this an error)"
        ));
    }
    Ok(())
}

/// A session's packed layers: one for the venv, or one per distribution group.
struct PackedSession {
    layers: Vec<(String, layer::PackedLayer)>,
    records: Vec<LayerRecord>,
    grouped: bool,
}

fn pack_session(
    config: &Config,
    plan: &Plan,
    s: &SessionPlan,
    ws: &Workspace,
    printer: &dyn Reporter,
) -> Result<PackedSession, Error> {
    let name = &s.config.name;
    let mut opts = PackOptions::new(format!("{}/{}", config.envdir, s.venv_dir));
    opts.base_dirs = base_dirs(&ws.out_dir.join(script::BASE_DIRS_FILE), &config.envdir);
    opts.uid = config.owner.uid;
    opts.gid = config.owner.gid;
    opts.compression = config.compression;
    let t = Instant::now();
    let groups = match config.layers {
        LayerMode::Single => None,
        LayerMode::PerDistribution => {
            let cap = config
                .max_layers
                .saturating_sub(plan.base.manifest.layers().len())
                .max(1);
            Some(
                crate::python::layering::split(&ws.venv_host, cap).map_err(|e| BuildError::Io {
                    context: format!("session `{name}`: splitting the venv by distribution"),
                    source: match e {
                        crate::python::layering::LayeringError::Io { source, .. } => source,
                    },
                })?,
            )
        }
    };
    let mut layers = Vec::new();
    let mut records = Vec::new();
    match &groups {
        None => {
            let p = layer::pack_tree(&ws.venv_host, &opts, &ws.dir.join("layer.tar"))?;
            records.push(LayerRecord {
                digest: p.digest.clone(),
                size: p.size,
                group: None,
                distributions: serde_json::json!("*"),
            });
            layers.push(("venv".to_string(), p));
        }
        Some(groups) => {
            for (i, g) in groups.iter().enumerate() {
                let keep = crate::python::layering::keeps(g, groups);
                let p = layer::pack_tree_filtered(
                    &ws.venv_host,
                    &opts,
                    &ws.dir.join(format!("layer-{i:02}.tar")),
                    &keep,
                )?;
                records.push(LayerRecord {
                    digest: p.digest.clone(),
                    size: p.size,
                    group: Some(g.label.clone()),
                    distributions: serde_json::json!(g.distributions),
                });
                layers.push((g.label.clone(), p));
            }
        }
    }
    printer.info(format!(
        "{name}: packed {} → {} in {} layer(s) in {:.1}s",
        human_bytes(layers.iter().map(|(_, p)| p.uncompressed_size).sum()),
        human_bytes(layers.iter().map(|(_, p)| p.size).sum()),
        layers.len(),
        t.elapsed().as_secs_f64(),
    ));
    for (label, p) in &layers {
        printer.verbose(format!("  {label}: {} {}", human_bytes(p.size), p.digest));
    }
    Ok(PackedSession {
        layers,
        records,
        grouped: groups.is_some(),
    })
}

/// What the build read and ran, from the hook's record of it (untrusted: it was written
/// next to the project's noxfile). Also refuses an image whose inputs changed on this
/// machine while it was built: it would carry digests of files it was not built from.
fn what_the_build_read(
    config: &Config,
    s: &SessionPlan,
    record_path: &Path,
    secrets: &[String],
) -> Result<Derived, Error> {
    let name = &s.config.name;
    let mut records = crate::python::hook::Records::default();
    records
        .read_into(record_path)
        .map_err(crate::python::nox::NoxError::Hook)?;
    let Some(events) = records.sessions.get(name) else {
        return Err(BuildError::NoRecord {
            session: name.clone(),
            path: record_path.to_path_buf(),
        }
        .into());
    };
    let workdir = match config.builder {
        BuilderKind::Local => std::fs::canonicalize(&config.project_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| config.workdir.clone()),
        _ => config.workdir.clone(),
    };
    let ctx = inputs::Context {
        session: name,
        project_dir: &config.project_dir,
        workdir: &workdir,
        envdir: &config.envdir,
        secrets,
    };
    let derived = inputs::derive(&ctx, &records.module, events)?;
    if let Some(planned) = &s.document.discovered {
        let moved: Vec<String> = planned
            .checked_files()
            .filter(|f| inputs::changed(&config.project_dir, f).is_some())
            .map(|f| f.path.clone())
            .collect();
        if !moved.is_empty() {
            return Err(BuildError::InputsMoved {
                session: name.clone(),
                files: moved.join(", "),
            }
            .into());
        }
    }
    Ok(derived)
}

/// The dry run foresaw the build exactly, or the image records what the build read
/// besides (and plans check those files too); say which.
fn report_divergence(s: &SessionPlan, build: &Derived, printer: &dyn Reporter) {
    let Some(planned) = &s.document.discovered else {
        printer.info(format!(
            "{}: keyed by its settings alone ({}); each plan checks the {} file(s) its build read",
            s.config.name,
            s.document.opaque.as_deref().unwrap_or("no dry run"),
            build.discovered.checked_files().count()
        ));
        return;
    };
    if planned == &build.discovered {
        return;
    }
    let mut what = Vec::new();
    if planned.commands != build.discovered.commands {
        what.push("other commands".to_string());
    }
    let known: std::collections::BTreeSet<&str> =
        planned.checked_files().map(|f| f.path.as_str()).collect();
    let extra: Vec<&str> = build
        .discovered
        .checked_files()
        .map(|f| f.path.as_str())
        .filter(|p| !known.contains(p))
        .collect();
    if !extra.is_empty() {
        what.push(format!("files {}", extra.join(", ")));
    }
    if planned.locks != build.discovered.locks {
        what.push("other lock entries".into());
    }
    printer.warn(format!(
        "session `{}`: the build ran or read what the plan's dry run did not foresee ({}); the image records it and every plan checks it",
        s.config.name,
        if what.is_empty() { "details differ".to_string() } else { what.join("; ") }
    ));
}

/// Where failed builds' logs are kept after venvimg removed its build folder.
pub fn logs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VENVIMG_LOG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("venvimg/logs");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/venvimg/logs"),
        None => std::env::temp_dir().join("venvimg-logs"),
    }
}

/// Copy a failed build's log where it outlives the build folder (0600: build output may
/// show index URLs); the path the error names. Falls back to the log where it is.
fn keep_log(session: &str, log: &Path) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = logs_dir();
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let safe: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dest = dir.join(format!("{safe}-{stamp}.log"));
    let copied = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|_| std::fs::read(log))
        .and_then(|bytes| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)?;
            std::io::Write::write_all(&mut f, &bytes)
        });
    match copied {
        Ok(()) => dest,
        Err(_) => log.to_path_buf(),
    }
}

/// The local builder works on the project in place, which must be at `workdir` (editable
/// installs record that path).
fn local_project_dir(config: &Config) -> Result<PathBuf, Error> {
    let here = std::fs::canonicalize(&config.project_dir).map_err(io_err(format!(
        "resolving {}",
        config.project_dir.display()
    )))?;
    let want =
        std::fs::canonicalize(&config.workdir).unwrap_or_else(|_| PathBuf::from(&config.workdir));
    if here != want {
        return Err(BuildError::Local {
            message: format!(
                "the project is at {} but `workdir` is {}; the local builder builds in place, so run it from a checkout at workdir (as a CI job in the base image does), or use `builder: podman`",
                here.display(),
                config.workdir
            ),
        }
        .into());
    }
    Ok(here)
}

/// A fresh place for the venv. The local builder deletes an old venv there, but nothing
/// that is not one.
/// The base's folders above `envdir` as the build script listed them (`MODE UID GID
/// PATH`), keyed by archive path (`tmp`). What the build container wrote is untrusted:
/// only ancestors of the envdir, mode bits only, bounded; anything else is dropped (that
/// folder is then left out of the layers, as before).
fn base_dirs(file: &Path, envdir: &str) -> BTreeMap<String, layer::BaseDir> {
    let Ok(raw) = crate::untrusted::read_checked(file, 64 * 1024) else {
        return BTreeMap::new();
    };
    let envdir = Path::new(envdir);
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&raw).lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(mode), Some(uid), Some(gid), Some(path)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(mode), Ok(uid), Ok(gid)) = (
            u32::from_str_radix(mode, 8),
            uid.parse::<u64>(),
            gid.parse::<u64>(),
        ) else {
            continue;
        };
        let p = Path::new(path);
        if mode > 0o7777
            || !p.is_absolute()
            || p == envdir
            || !envdir.starts_with(p)
            || p == Path::new("/")
        {
            continue;
        }
        out.insert(
            path.trim_start_matches('/')
                .trim_end_matches('/')
                .to_string(),
            layer::BaseDir { mode, uid, gid },
        );
    }
    out
}

fn lock_envdir(
    envdir: &Path,
    printer: &dyn Reporter,
) -> Result<crate::outputs::layout::LayoutLock, Error> {
    use crate::outputs::layout::LayoutLock;
    std::fs::create_dir_all(envdir).map_err(io_err(format!("creating {}", envdir.display())))?;
    if let Some(lock) = LayoutLock::try_acquire(envdir)? {
        return Ok(lock);
    }
    printer.info(format!(
        "waiting for another venvimg build that uses {} (builder: local)",
        envdir.display()
    ));
    Ok(LayoutLock::acquire(envdir)?)
}

fn prepare_envdir(kind: BuilderKind, envdir: &Path, venv: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(envdir).map_err(io_err(format!("creating {}", envdir.display())))?;
    if venv.exists() {
        if kind == BuilderKind::Local && !venv.join("pyvenv.cfg").is_file() {
            return Err(BuildError::Local {
                message: format!(
                    "{} exists and is not a virtualenv (no pyvenv.cfg); refusing to delete it — move it away or choose another envdir",
                    venv.display()
                ),
            }
            .into());
        }
        std::fs::remove_dir_all(venv).map_err(io_err(format!("removing {}", venv.display())))?;
    }
    Ok(())
}

fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turn a failed build's output into the error that names the cause.
fn diagnose_failure(
    session: &str,
    base: &str,
    o: &builder::BuildOutcome,
    log: &Path,
) -> BuildError {
    let out = &o.output;
    if let Some(python) = missing_interpreter(out) {
        return BuildError::MissingInterpreter {
            session: session.into(),
            python,
            base: base.into(),
        };
    }
    if let Some(module) = crate::python::nox::missing_module(out) {
        return BuildError::MissingPlugin {
            session: session.into(),
            module,
            base: base.into(),
        };
    }
    if out.contains("Traceback (most recent call last)") && out.contains("noxfile.py") {
        return BuildError::InstallOnlyTraceback {
            session: session.into(),
            tail: tail(out, 12),
        };
    }
    // uv: "invalid peer certificate: UnknownIssuer"; pip: "CERTIFICATE_VERIFY_FAILED".
    if out.contains("invalid peer certificate") || out.contains("CERTIFICATE_VERIFY_FAILED") {
        return BuildError::UntrustedIndex {
            session: session.into(),
            tail: tail(out, 12),
            log: log.to_path_buf(),
        };
    }
    if no_network(out) {
        return BuildError::NoNetwork {
            session: session.into(),
            tail: tail(out, 12),
            log: log.to_path_buf(),
        };
    }
    BuildError::Failed {
        session: session.into(),
        code: o
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        tail: tail(out, 25),
        log: log.to_path_buf(),
    }
}

/// Name resolution failing (uv: "dns error: failed to lookup address information",
/// pip: "Temporary failure in name resolution" through its retries) or no route at all:
/// the build container has no network, rather than a flaky one.
fn no_network(out: &str) -> bool {
    const SIGNS: &[&str] = &[
        "dns error",
        "failed to lookup address information",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
    ];
    SIGNS.iter().any(|s| out.contains(s))
}

/// A failure of the network under the installs (uv's and pip's wordings), not of the
/// project: worth one retry.
fn network_failure(out: &str) -> bool {
    const SIGNS: &[&str] = &[
        "error sending request for url",
        "operation timed out",
        "Connection reset by peer",
        "ReadTimeoutError",
        "Temporary failure in name resolution",
        "NewConnectionError",
    ];
    SIGNS.iter().any(|s| out.contains(s))
}

/// nox: "Python interpreter 3.13 not found." / "Missing interpreters" lines.
fn missing_interpreter(out: &str) -> Option<String> {
    for line in out.lines() {
        if let Some(i) = line.find("Python interpreter ") {
            let rest = &line[i + "Python interpreter ".len()..];
            if let Some(j) = rest.find(" not found") {
                return Some(rest[..j].trim().to_string());
            }
        }
    }
    None
}

/// What `build` reports (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct BuildReport<'a> {
    pub sessions: &'a [SessionResult],
    /// The all-sessions image; none when a session failed or `--session` picked some
    /// (a pick's combined image, `sessions-…`, goes only to --output/--load).
    pub all: Option<AllImage<'a>>,
    pub seconds: f64,
    /// false with --no-push: the references name where the images would go.
    pub pushed: bool,
    /// What the push moved: the measure of what a dependency bump costs.
    pub push: push::StatsSnapshot,
}

#[derive(Debug, Serialize)]
pub struct AllImage<'a> {
    /// `registry/name:tag`.
    pub image: String,
    pub digest: &'a str,
    /// The sessions whose venvs it holds: every session of the config.
    pub sessions: Vec<&'a str>,
}

impl SessionResult {
    /// A session whose image was there: its digest and venv layers' size.
    fn hit(s: &SessionPlan, digest: &str, layer_size: u64, seconds: f64) -> SessionResult {
        SessionResult {
            session: s.config.name.clone(),
            venv_dir: s.venv_dir.clone(),
            tag: s.tag.clone(),
            image: s.image.whole(),
            digest: Some(digest.to_string()),
            outcome: "hit",
            layer_size: Some(layer_size),
            seconds,
            error: None,
            platforms: Vec::new(),
        }
    }
}

impl<'a> AllImage<'a> {
    /// The all-sessions image of `plan`'s sessions.
    pub(super) fn of(plan: &'a Plan, image: String, digest: &'a str) -> AllImage<'a> {
        AllImage {
            image,
            digest,
            sessions: plan
                .sessions
                .iter()
                .map(|s| s.config.name.as_str())
                .collect(),
        }
    }
}

impl BuildReport<'_> {
    /// Out as asked — the table (and a summary line) or JSON — and the CI outputs.
    pub(super) fn render(&self, args: &BuildArgs, printer: &Printer) -> Result<(), Error> {
        if args.json {
            printer.out(self.json());
        } else {
            printer.out(self.table());
            printer.info(self.summary_line());
        }
        if args.ci_output {
            crate::commands::report::write_ci_output(&self.ci_outputs(!args.no_push), printer)?;
        }
        Ok(())
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the build report serialises")
    }

    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .sessions
            .iter()
            .map(|r| {
                vec![
                    r.session.clone(),
                    r.outcome.to_string(),
                    r.layer_size.map(human_bytes).unwrap_or_default(),
                    format!("{:.1}s", r.seconds),
                    match &r.digest {
                        Some(d) => format!("{}@{d}", r.image),
                        None => r.image.clone(),
                    },
                ]
            })
            .collect();
        table(&["SESSION", "RESULT", "LAYER", "TIME", "IMAGE"], &rows)
    }

    pub fn summary_line(&self) -> String {
        match &self.all {
            Some(all) => format!(
                "all sessions: {}@{}{} · done in {:.1}s",
                all.image,
                all.digest,
                if self.pushed {
                    ""
                } else {
                    " (not pushed: --no-push)"
                },
                self.seconds
            ),
            None => format!("done in {:.1}s", self.seconds),
        }
    }

    /// `(venv dir, image)` for `--ci-output`, each session by digest when `pushed`, and
    /// `all`.
    pub fn ci_outputs(&self, pushed: bool) -> Vec<(String, String)> {
        let mut refs: Vec<(String, String)> = self
            .sessions
            .iter()
            .filter(|r| r.digest.is_some())
            .map(|r| {
                let reference = match &r.digest {
                    Some(d) if pushed => format!("{}@{}", r.image, d),
                    _ => r.image.clone(),
                };
                (r.venv_dir.clone(), reference)
            })
            .collect();
        if let Some(all) = &self.all {
            let reference = if pushed {
                format!("{}@{}", all.image, all.digest)
            } else {
                all.image.clone()
            };
            refs.push(("all".into(), reference));
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_network_failures_from_project_failures() {
        assert!(network_failure(
            "error: Request failed after 3 retries\n  cause: error sending request for url (https://pypi.org/simple/x/)"
        ));
        assert!(!network_failure("AssertionError: 3 != 2"));
    }

    #[test]
    fn a_build_without_network_names_build_network() {
        for output in [
            // uv
            "  × Failed to fetch: `https://pypi.org/simple/pyflakes/`\n  ╰─▶ dns error: failed to lookup address information: Temporary failure in name resolution",
            // pip, after its retries
            "WARNING: Retrying (Retry(total=4...)) after connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/pyflakes/\nERROR: No matching distribution found for pyflakes==3.2.0",
        ] {
            let o = builder::BuildOutcome {
                success: false,
                code: Some(1),
                output: output.into(),
            };
            let e = diagnose_failure("lint", "base", &o, Path::new("/tmp/log"));
            assert!(matches!(e, BuildError::NoNetwork { .. }), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("has no network"), "{text}");
            assert!(text.contains("--build-network host"), "{text}");
            assert!(Error::Build(e).summary().contains("--build-network"));
        }
        let o = builder::BuildOutcome {
            success: false,
            code: Some(1),
            output: "AssertionError: 3 != 2".into(),
        };
        assert!(matches!(
            diagnose_failure("lint", "base", &o, Path::new("/tmp/log")),
            BuildError::Failed { .. }
        ));
    }

    #[test]
    fn an_untrusted_index_certificate_points_at_build_ca() {
        let o = builder::BuildOutcome {
            success: false,
            code: Some(1),
            output: "error: Request failed after 3 retries\n  Caused by: invalid peer certificate: UnknownIssuer\n".into(),
        };
        let e = diagnose_failure("tests", "base@sha256:00", &o, Path::new("/tmp/log"));
        let text = e.to_string();
        assert!(text.contains("--build-ca"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
    }

    #[test]
    fn sessions_build_side_by_side_up_to_the_flag_the_misses_and_never_locally() {
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Podman, 20), 4);
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Docker, 3), 3);
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Local, 20), 1);
        assert_eq!(parallel_jobs(None, BuilderKind::Podman, 0), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = parallel_jobs(None, BuilderKind::Podman, 1000);
        assert!((1..=2 * cores).contains(&auto), "{auto} of {cores} cores");
    }

    #[test]
    fn finds_missing_interpreter() {
        let out = "nox > Session tests-3.13 skipped: Python interpreter 3.13 not found.\n";
        assert_eq!(missing_interpreter(out).as_deref(), Some("3.13"));
        assert_eq!(missing_interpreter("all good"), None);
    }
}
