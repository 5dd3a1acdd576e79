//! `platforms: [linux/amd64, linux/arm64]`: one job image per platform, and an image
//! index under each session tag so every engine pulls its own architecture.
//!
//! Each platform is planned and built exactly as a single-platform config would be (its
//! own base manifest, keys and tags), so a runner of each architecture can build its own
//! with `build --platform`. The session's tag is an index over those images, named by a
//! hash of every platform's key. It is written only once every platform's image is in
//! the registry, and its bytes depend only on those images: two runners assembling at
//! once write the same index, and the one that pushed its platform last always finds
//! the other's there — neither can drop the other's manifest.

use std::collections::HashMap;
use std::time::Instant;

use oci_client::Reference;

use crate::config::{BuilderKind, Config};
use crate::error::Error;
use crate::model::Digest;
use crate::model::{Platform, Tag};
use crate::plan::{all_index_tag, index_tag, Plan, SessionPlan, Status};
use crate::printer::Printer;
use crate::registry::index::{platform_index, IndexEntry};
use crate::registry::{at_tag, Registry};

use super::{
    build_platform, BuildOptions, BuildResult, PlatformBuild, PlatformResult, SessionResult,
};

/// The platforms `--platform` picks out of the config's (all of them when not given); a
/// usage error for one the config does not list.
pub(super) fn check_flag(config: &Config, flags: &[String]) -> Result<Vec<Platform>, Error> {
    if flags.is_empty() {
        return Ok(config.platforms.clone());
    }
    let listed = || {
        config
            .platforms
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut picked = Vec::new();
    for flag in flags {
        let p = Platform::parse(flag).map_err(|why| {
            Error::Usage(crate::error::UsageError::Flag {
                flag: "--platform",
                value: None,
                why,
            })
        })?;
        if !config.platforms.contains(&p) {
            return Err(crate::error::UsageError::Flag {
                flag: "--platform",
                value: Some(p.to_string()),
                why: format!(
                    "{} builds for {} only\n  hint: add it to `platforms:` there",
                    config.file.display(),
                    listed()
                ),
            }
            .into());
        }
        if !picked.contains(&p) {
            picked.push(p);
        }
    }
    Ok(picked)
}

/// Is this machine able to run `p`'s containers only under emulation?
fn emulated(p: &Platform) -> bool {
    p.architecture != Platform::host().architecture
}

/// One platform's part: built here, or planned only (another runner builds it).
struct Part {
    platform: Platform,
    plan: Plan,
    built: Option<Built>,
}

/// What building a platform here gave (see [`PlatformBuild`]).
struct Built {
    results: Vec<SessionResult>,
    all: Option<(String, Digest)>,
    /// (session, cause) of each session that failed to build.
    failed: Vec<(String, String)>,
    manifests: HashMap<Digest, Vec<u8>>,
}

/// Every platform's part, in the config's order, and which of them leads: the one built
/// here that `--output`/`--load` carry, whose sessions the report lists.
struct Parts<'p> {
    each: &'p [Part],
    lead: usize,
}

impl Parts<'_> {
    fn lead(&self) -> &Part {
        &self.each[self.lead]
    }
}

impl Part {
    /// A session's image on this platform: (reference, digest, outcome).
    fn image_of(&self, s: &SessionPlan) -> (Reference, Option<Digest>, &'static str) {
        if let Some(b) = &self.built {
            let r = b.results.iter().find(|r| r.session == s.config.name);
            return match r {
                Some(r) => (s.image.clone(), r.digest.clone(), r.outcome),
                None => (s.image.clone(), None, "failed"),
            };
        }
        match &s.status {
            Status::Hit { digest } => (s.image.clone(), Some(digest.clone()), "hit"),
            Status::Miss => (s.image.clone(), None, "not built here"),
        }
    }
}

/// `venvimg build` with more than one platform: each platform picked is built (under
/// emulation where this machine's architecture differs), the others are looked up, and
/// each session's index is written once every platform's image is there.
pub(super) async fn build(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    printer: &Printer,
) -> Result<BuildResult, Error> {
    let picked = check_flag(config, &args.platform)?;
    if config.builder == BuilderKind::Local {
        if let Some(p) = picked.iter().find(|p| emulated(p)) {
            return Err(crate::error::UsageError::Field {
                file: config.file.clone(),
                field: "builder",
                value: "local".into(),
                why: format!(
                    "which builds for this machine's platform ({}) only, not {p}\n  hint: use `builder: podman` (or docker), which builds {p} under emulation, or run `venvimg build --platform {p}` on such a runner",
                    Platform::host()
                ),
            }
            .into());
        }
    }
    // --output/--load carry one image: the platform this machine runs (else the first
    // one built here).
    let local_one = picked
        .iter()
        .find(|p| **p == config.platform)
        .unwrap_or(&picked[0])
        .clone();
    let mut parts = build_here(config, registry, args, &picked, &local_one, printer).await?;

    // The other platforms are looked up only now, after this runner's images are pushed:
    // of two runners finishing at once, the later one to push then finds the other's
    // images, and writes the index.
    for p in config.platforms.iter().filter(|p| !picked.contains(p)) {
        let plan =
            crate::plan::make_plan(&config.for_platform(p), registry, &args.sessions).await?;
        parts.push(Part {
            platform: p.clone(),
            plan,
            built: None,
        });
    }
    parts.sort_by_key(|part| config.platforms.iter().position(|p| *p == part.platform));
    let lead = parts
        .iter()
        .position(|part| part.platform == local_one)
        .expect("the platform built here is among the parts");
    let mut results = Vec::new();
    // Each failure with its cause, named by session and platform.
    let failed: Vec<(String, String)> = parts
        .iter()
        .filter_map(|part| Some((part, part.built.as_ref()?)))
        .flat_map(|(part, b)| {
            b.failed
                .iter()
                .map(move |(s, cause)| (format!("{s} ({})", part.platform), cause.clone()))
        })
        .collect();
    let mut manifests: HashMap<Digest, Vec<u8>> = parts
        .iter()
        .filter_map(|p| p.built.as_ref())
        .flat_map(|b| b.manifests.clone())
        .collect();
    let all_parts = Parts { each: &parts, lead };
    for s in &parts[lead].plan.sessions {
        results.push(
            session_index(
                config,
                registry,
                args,
                &all_parts,
                s,
                &mut manifests,
                printer,
            )
            .await?,
        );
    }

    let all = all_index(config, registry, &parts, lead, args, printer).await?;
    let total = results.len() * parts.len();
    Ok(BuildResult {
        plan: parts.swap_remove(lead).plan,
        results,
        all,
        failed,
        total,
    })
}

/// Each platform picked, built here (under emulation where this machine's architecture
/// differs); `--output`/`--load` go with `local_one` only.
async fn build_here(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    picked: &[Platform],
    local_one: &Platform,
    printer: &Printer,
) -> Result<Vec<Part>, Error> {
    let mut parts = Vec::new();
    for p in config.platforms.iter().filter(|p| picked.contains(p)) {
        let one = config.for_platform(p);
        printer.info(format!(
            "platform {p}{}",
            if emulated(p) {
                " (emulated: this machine is ".to_string() + &Platform::host().to_string() + ")"
            } else {
                String::new()
            }
        ));
        let mut a = args.clone();
        if p != local_one {
            a.output.clear();
            a.load = false;
        }
        let t0 = Instant::now();
        let built = build_platform(&one, registry, &a, printer).await?;
        let misses = built
            .results
            .iter()
            .filter(|r| r.outcome == "built")
            .count();
        printer.info(format!(
            "platform {p}: {misses} session(s) built in {:.1}s{}",
            t0.elapsed().as_secs_f64(),
            if emulated(p) && misses > 0 {
                " under emulation"
            } else {
                ""
            }
        ));
        let PlatformBuild {
            plan,
            results,
            all,
            failed,
            manifests,
        } = built;
        parts.push(Part {
            platform: p.clone(),
            plan,
            built: Some(Built {
                results,
                all,
                failed,
                manifests,
            }),
        });
    }

    Ok(parts)
}

/// A session's result over every platform: each platform's image, and the session's
/// index once every platform's image is there (pushed unless `--no-push`; for hits in
/// `trusted_repository`, found there). `manifests` caches the platform manifests read.
async fn session_index(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    parts: &Parts<'_>,
    s: &SessionPlan,
    manifests: &mut HashMap<Digest, Vec<u8>>,
    printer: &Printer,
) -> Result<SessionResult, Error> {
    let name = &s.config.name;
    let mut per = Vec::new();
    let mut keys = Vec::new();
    let mut entries = Vec::new();
    let mut complete = true;
    for part in parts.each {
        let Some(ps) = part.plan.sessions.iter().find(|x| x.config.name == *name) else {
            complete = false;
            continue;
        };
        keys.push((part.platform.clone(), ps.key.clone()));
        let (image, digest, outcome) = part.image_of(ps);
        per.push(PlatformResult {
            platform: part.platform.clone(),
            tag: ps.tag.clone(),
            image: image.whole(),
            digest: digest.clone(),
            outcome,
        });
        let Some(digest) = digest else {
            complete = false;
            continue;
        };
        let manifest = match manifests.get(digest.as_str()) {
            Some(m) => m.clone(),
            None => match &ps.hit_manifest {
                Some(m) if matches!(&ps.status, Status::Hit { digest: d } if *d == digest) => {
                    m.to_vec()
                }
                _ => fetch_manifest(registry, &image, &digest).await?,
            },
        };
        manifests.insert(digest, manifest.clone());
        entries.push((
            image,
            IndexEntry {
                platform: part.platform.clone(),
                manifest,
            },
        ));
    }
    let tag = index_tag(&s.venv_dir, &keys);
    let any_failed = per.iter().any(|p| p.outcome == "failed");
    let (index_ref, index_digest) = if complete {
        index_for(config, registry, args, name, &tag, &entries, printer).await?
    } else {
        (at_tag(&config.repository, &tag), None)
    };
    if !complete && !any_failed {
        let waiting: Vec<String> = per
            .iter()
            .filter(|p| p.digest.is_none())
            .map(|p| p.platform.to_string())
            .collect();
        printer.info(format!(
            "{name}: the index waits for {} (run `venvimg build --platform P` where P runs)",
            waiting.join(", ")
        ));
    }
    let outcome = if any_failed {
        "failed"
    } else if index_digest.is_none() {
        "incomplete"
    } else if per.iter().any(|p| p.outcome == "built") {
        "built"
    } else {
        "hit"
    };
    let built_here: Vec<&SessionResult> = parts
        .each
        .iter()
        .filter_map(|p| p.built.as_ref())
        .flat_map(|b| b.results.iter().filter(|r| r.session == *name))
        .collect();
    let lead_result = parts
        .lead()
        .built
        .as_ref()
        .and_then(|b| b.results.iter().find(|r| r.session == *name));
    Ok(SessionResult {
        session: name.clone(),
        venv_dir: s.venv_dir.clone(),
        tag,
        image: index_ref.whole(),
        digest: index_digest,
        outcome,
        layer_size: lead_result.and_then(|r| r.layer_size),
        seconds: built_here.iter().map(|r| r.seconds).sum(),
        // The first platform's failure (each is in `platforms` and the summary).
        error: built_here.iter().find_map(|r| r.error.clone()),
        platforms: per,
    })
}

/// A session's index over `entries` (every platform's image): pushed to the repository
/// when every image is there (unless `--no-push`), or, when they are all hits in
/// `trusted_repository`, found there as the protected branch assembled it. The index's
/// reference, and its digest when there is one.
async fn index_for(
    config: &Config,
    registry: &Registry,
    args: &BuildOptions,
    name: &str,
    tag: &Tag,
    entries: &[(Reference, IndexEntry)],
    printer: &Printer,
) -> Result<(Reference, Option<Digest>), Error> {
    let own = at_tag(&config.repository, tag);
    let bytes = platform_index(
        &entries.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        name,
    );
    let digest = Digest::of(&bytes);
    let all_own = entries.iter().all(|(r, _)| {
        r.repository() == config.repository.repository()
            && r.resolve_registry() == config.repository.resolve_registry()
    });
    if all_own {
        if !args.no_push && registry.manifest_digest(&own).await?.as_ref() != Some(&digest) {
            registry.push_index(&own, bytes).await?;
            printer.info(format!("pushed the index {}@{digest}", own.whole()));
        }
        return Ok((own, Some(digest)));
    }
    let at = at_tag(&entries[0].0, tag);
    if registry.manifest_digest(&at).await?.as_ref() == Some(&digest) {
        return Ok((at, Some(digest)));
    }
    printer.warn(format!(
        "{name}: no index: its platforms' images are in different repositories ({}); run the build in one of them",
        entries
            .iter()
            .map(|(r, _)| r.whole())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok((own, None))
}

/// The all-sessions images' index, once every platform has its all-sessions image.
async fn all_index(
    config: &Config,
    registry: &Registry,
    parts: &[Part],
    lead: usize,
    args: &BuildOptions,
    printer: &Printer,
) -> Result<Option<(String, Digest)>, Error> {
    if !parts[lead].plan.complete {
        return Ok(None);
    }
    let mut tags = Vec::new();
    let mut entries = Vec::new();
    for part in parts {
        let tag = part.plan.combined_tag();
        let r = at_tag(&config.repository, &tag);
        tags.push((part.platform.clone(), tag));
        let digest = match part.built.as_ref() {
            Some(b) => b.all.as_ref().map(|(_, d)| d.clone()),
            None => registry.manifest_digest(&r).await?,
        };
        let Some(digest) = digest else {
            return Ok(None);
        };
        let manifest = match part
            .built
            .as_ref()
            .and_then(|b| b.manifests.get(digest.as_str()))
        {
            Some(m) => m.clone(),
            None if args.no_push => return Ok(None),
            None => fetch_manifest(registry, &r, &digest).await?,
        };
        entries.push(IndexEntry {
            platform: part.platform.clone(),
            manifest,
        });
    }
    let bytes = platform_index(&entries, "all sessions");
    let digest = Digest::of(&bytes);
    let tag = all_index_tag(&tags);
    let r = at_tag(&config.repository, &tag);
    if !args.no_push && registry.manifest_digest(&r).await?.as_ref() != Some(&digest) {
        registry.push_index(&r, bytes).await?;
        printer.info(format!(
            "pushed the all-sessions index {}@{digest}",
            r.whole()
        ));
    }
    Ok(Some((r.whole(), digest)))
}

async fn fetch_manifest(
    registry: &Registry,
    image: &Reference,
    digest: &Digest,
) -> Result<Vec<u8>, Error> {
    let pinned = image.clone_with_digest(digest.to_string());
    match registry.manifest_if_exists(&pinned).await? {
        Some((bytes, _)) => Ok(bytes.to_vec()),
        None => Err(crate::registry::RegistryError::Other {
            registry: pinned.resolve_registry().to_string(),
            operation: "read",
            reference: pinned.whole(),
            detail: "the manifest went missing while the index was assembled; run the build again"
                .into(),
        }
        .into()),
    }
}
