use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use oci_client::Reference;

use super::compose::{compose_images, layer_from_registry};
use super::publish::{mark_pushed, push_sbom, share_dry_run};
use super::session::{build_all, BuildSetup};
use super::workspace::{parallel_jobs, prepare};
use super::{with_engine, BuildOptions, PlatformBuild, SessionLayer, SessionResult};
use crate::config::{BuilderKind, Config};
use crate::engine::{self as builder};
use crate::error::Error;
use crate::image::ComposedImage;
use crate::model::{Digest, VenvName};
use crate::plan::{Plan, SessionPlan, Status};
use crate::printer::{human_bytes, Printer};
use crate::registry::{at_tag, push, Registry};

/// Plan and build one platform's sessions (the config's `platform`), push them and the
/// all-sessions image, write `--output`/`--load`: everything but the report.
pub(super) async fn build_platform(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    printer: &Printer,
) -> Result<PlatformBuild, Error> {
    let config = &with_engine(config, args.engine.as_deref())?;
    let plan = crate::plan::make_plan(config, registry, &args.sessions).await?;
    crate::plan::findings::flush_warnings(registry, printer);
    crate::plan::findings::report_plan_findings(&plan, printer);
    crate::plan::findings::check_project(config, &plan, &args.sessions, args.strict, printer)?;
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

    let hit_layers = fetch_hit_layers(&plan, registry, args).await?;
    let jobs = parallel_jobs(args.jobs, config.builder, to_build.len());
    if jobs > 1 {
        printer.info(format!(
            "building {} session(s), {jobs} at a time",
            to_build.len()
        ));
    }
    let setup = BuildSetup {
        config,
        plan: &plan,
        work: &work_path,
        build_env: &build_env,
        args,
    };
    let built = builder::blocking(|| build_all(&setup, &to_build, printer, jobs));
    let sessions = Sessions::gather(config, &plan, args, hit_layers, built, printer)?;
    let all = AllSessions::compose(config, &plan, &sessions, args, printer)?;
    if !args.no_push {
        share_dry_run(&plan, registry, printer).await;
        push_images(config, registry, &plan, &sessions, &all, printer).await?;
    }
    let sources = crate::outputs::BlobSources {
        local: &sessions.local_files,
        base: &plan.base.reference,
        repository: &all.reference,
        remote: &sessions.remote,
    };
    write_outputs(config, registry, &all, &sources, args, &work_path, printer).await?;

    let mut manifests: HashMap<Digest, Vec<u8>> = sessions
        .composed
        .iter()
        .map(|(_, img, _, _)| (img.manifest_digest.clone(), img.manifest.clone()))
        .collect();
    manifests.insert(
        all.image.manifest_digest.clone(),
        all.image.manifest.clone(),
    );
    let all_pushed = (all.wanted && plan.complete)
        .then(|| (all.reference.whole(), all.image.manifest_digest.clone()));
    Ok(PlatformBuild {
        results: sessions.results,
        all: all_pushed,
        failed: sessions.failed,
        manifests,
        plan,
    })
}

/// The hits' layers (for the all-sessions image and the report), fetched side by side
/// before anything is built: 20 hits should not cost 40 round trips in sequence, and a
/// hit that fails its checks stops the build before a miss's minutes are spent. By
/// session, with the seconds each took.
async fn fetch_hit_layers(
    plan: &Plan,
    registry: &Registry,
    args: &BuildOptions,
) -> Result<HashMap<String, (SessionLayer, f64)>, Error> {
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
    .await
}

/// Every session's outcome in plan order: the hits' layers, the misses built and each
/// composed into its image (not pushed yet), the failures.
struct Sessions<'p> {
    results: Vec<SessionResult>,
    /// (venv dir, layers) of every session that has them, for the all-sessions image.
    layers: Vec<(VenvName, SessionLayer)>,
    /// The images built here: target, image, its session, its layers.
    composed: Vec<(Reference, ComposedImage, &'p SessionPlan, SessionLayer)>,
    /// digest → file of every layer packed here.
    local_files: HashMap<Digest, PathBuf>,
    /// digest → the image a hit's layer is in (another repository for a hit in
    /// `trusted_repository`).
    remote: HashMap<Digest, Reference>,
    /// (session, cause) of each session that failed.
    failed: Vec<(String, String)>,
}

impl<'p> Sessions<'p> {
    fn gather(
        config: &Config,
        plan: &'p Plan,
        args: &BuildOptions,
        mut hit_layers: HashMap<String, (SessionLayer, f64)>,
        built: Vec<Option<super::Built>>,
        printer: &Printer,
    ) -> Result<Sessions<'p>, Error> {
        let mut out = Sessions {
            results: Vec::new(),
            layers: Vec::new(),
            composed: Vec::new(),
            local_files: HashMap::new(),
            remote: HashMap::new(),
            failed: Vec::new(),
        };
        let mut built = built.into_iter();
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
                    .expect("every hit's layer was fetched first");
                for d in &layer.descriptors {
                    out.remote.insert(d.digest.clone(), s.image.clone());
                }
                out.results
                    .push(SessionResult::hit(s, digest, layer.size(), seconds));
                out.layers.push((s.venv_dir.clone(), layer));
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
                    out.failed.push((s.config.name.clone(), cause.clone()));
                    out.results.push(SessionResult {
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
                out.local_files.insert(digest.clone(), file.clone());
            }
            out.results.push(SessionResult {
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
            out.composed.push((s.image.clone(), img, s, layer.clone()));
            out.layers.push((s.venv_dir.clone(), layer));
        }
        Ok(out)
    }
}

/// The all-sessions image, for local use: every session's layer on one base.
struct AllSessions {
    reference: Reference,
    image: ComposedImage,
    /// Within `max_layers`: every session's layers on one base may exceed what overlay
    /// filesystems accept; the per-session images are what CI needs, so the combined
    /// one is then skipped, loudly.
    fits: bool,
    /// No session failed: only an image of every selected session is the all-sessions
    /// image.
    wanted: bool,
}

impl AllSessions {
    fn compose(
        config: &Config,
        plan: &Plan,
        sessions: &Sessions,
        args: &BuildOptions,
        printer: &Printer,
    ) -> Result<AllSessions, Error> {
        let reference = at_tag(&config.repository, &plan.combined_tag());
        let image = compose_images(&plan.base, &sessions.layers, config, plan.complete);
        let fits = image.layers.len() <= config.max_layers;
        let wanted = sessions.failed.is_empty();
        if !wanted {
            printer.warn(format!(
                "no all-sessions image: {} of {} session(s) failed",
                sessions.failed.len(),
                plan.sessions.len()
            ));
        } else if !fits {
            let msg = format!(
                "the all-sessions image would have {} layers, more than max_layers ({})",
                image.layers.len(),
                config.max_layers
            );
            if !args.output.is_empty() || args.load {
                return Err(crate::error::UsageError::Flag {
                    flag: if args.output.is_empty() { "--load" } else { "--output" },
                    value: None,
                    why: format!("it needs the all-sessions image, but {msg}; build fewer sessions (--session) or raise max_layers"),
                }
                .into());
            }
            printer.warn(format!("{msg}; not pushing it"));
        }
        Ok(AllSessions {
            reference,
            image,
            fits,
            wanted,
        })
    }
}

/// Push each image built here with its SBOM, then the all-sessions image when it is not
/// there yet; say what the push moved.
async fn push_images(
    config: &Config,
    registry: &Registry,
    plan: &Plan,
    sessions: &Sessions<'_>,
    all: &AllSessions,
    printer: &Printer,
) -> Result<(), Error> {
    for (target, img, s, layer) in &sessions.composed {
        let p = printer.spinner(format!("pushing {}", target.whole()));
        push::push_image(registry, target, img, &plan.base, &sessions.local_files).await?;
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
    // A `--session` pick's combined image is for --output/--load only: pushing it would
    // leave a tag per pick (a CI matrix of single-session builds) that no plan ever looks
    // up.
    let all_exists = if all.fits && all.wanted && plan.complete {
        registry.manifest_digest(&all.reference).await?
    } else {
        Some(all.image.manifest_digest.clone())
    };
    if all_exists.as_ref() != Some(&all.image.manifest_digest) {
        push::push_image_from(
            registry,
            &all.reference,
            &all.image,
            &plan.base,
            &sessions.local_files,
            &sessions.remote,
        )
        .await?;
        mark_pushed(
            registry,
            &all.reference,
            &all.image.manifest_digest,
            all.image.manifest.len(),
            printer,
        )
        .await;
        printer.info(format!(
            "pushed the all-sessions image {}@{}",
            all.reference.whole(),
            all.image.manifest_digest
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
    Ok(())
}

/// `--output` and `--load` carry the all-sessions image; blobs not packed here (base
/// layers, the layers of hits) are fetched from the registry (`sources`).
async fn write_outputs(
    config: &Config,
    registry: &Registry,
    all: &AllSessions,
    sources: &crate::outputs::BlobSources<'_>,
    args: &BuildOptions,
    work_path: &std::path::Path,
    printer: &Printer,
) -> Result<(), Error> {
    if !all.wanted {
        return Ok(());
    }
    for dest in &args.output {
        crate::outputs::write_output(registry, dest, &all.reference, &all.image, sources, printer)
            .await?;
    }
    if args.load {
        crate::outputs::load(
            crate::engine::job_engine(config.builder, args.engine.as_deref())?,
            registry,
            &all.reference,
            &all.image,
            sources,
            work_path,
            printer,
        )
        .await?;
    }
    Ok(())
}

/// When every session hits and the all-sessions tag exists (the tag is a hash of the
/// sessions' keys, so it holds their images' layers), the report without fetching a
/// layer; None otherwise (`--output`/`--load` need the image's bytes; `--force` builds).
/// Returns the sessions' results, the all-sessions image and its digest.
pub(super) async fn all_hit_and_composed(
    plan: &Plan,
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    printer: &Printer,
) -> Result<Option<(Vec<SessionResult>, String, Digest)>, Error> {
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
    let all_ref = at_tag(&config.repository, &plan.combined_tag());
    let Some(all_digest) = registry.manifest_digest(&all_ref).await? else {
        return Ok(None);
    };
    for r in &results {
        printer.info(format!(
            "{}: hit {}@{}",
            r.session,
            r.image,
            r.digest.as_ref().map(Digest::as_str).unwrap_or_default()
        ));
    }
    printer.info(format!(
        "the all-sessions image is there: {}@{all_digest}",
        all_ref.whole()
    ));
    Ok(Some((results, all_ref.whole(), all_digest)))
}
