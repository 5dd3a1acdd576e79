//! `venvimg prune`: delete the session and all-sessions images venvimg made in the
//! config's repository that no current key uses.
//!
//! What is kept: every tag of the current plan (each session's tag and the all-sessions
//! tag), the newest `--keep N` stale images of each session, and stale images first pushed
//! less than `--keep-for DURATION` ago. What is never touched: anything without venvimg's
//! image record (other tools' images, artifacts, the base) and the base image's digest.
//! The age of an image is when `build` first pushed it, from the marker it pushes next to
//! it ([`crate::registry::pushed`]); an image without one has an unknown age and counts as
//! the oldest. Dry run unless `--yes`; manifests are deleted by digest, each as it happens.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures_util::StreamExt;
use oci_client::Reference;
use serde::Serialize;

use crate::config::{Config, Refresh};
use crate::error::Error;
use crate::image::MediaTypes;
use crate::model::{Digest, Tag};
use crate::plan::record::ImageRecord;
use crate::printer::{human_bytes, table, Printer, Verbosity};
use crate::registry::delete::Deleted;
use crate::registry::pushed::{self, Marker};
use crate::registry::referrers::{self, IndexChange, RemovalPlan};
use crate::registry::{at_tag, Registry, RegistryError};

/// How many manifests are read at once.
const PARALLEL: usize = 8;
/// An image config larger than this is not one venvimg wrote (its record is some
/// hundred KiB at most): not fetched, the image is skipped.
const MAX_CONFIG: u64 = 16 << 20;
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// `prune --help`: what it deletes, keeps and never touches.
pub const LONG_ABOUT: &str =
    "Delete the session and all-sessions images venvimg made in the configured \
repository that no current key uses. A dry run unless --yes: it lists every image venvimg \
made with what would happen to it, and the bytes deleting would free.\n\n\
Kept: the current plan's tags (each session's and the all-sessions image; as `venvimg plan` \
computes them), the newest --keep N stale images of each session, and stale images first \
pushed less than --keep-for DURATION ago. Never deleted: anything without venvimg's image \
record (other tools' images, artifacts, the base image), nor the base image's digest. An \
image's age is the time `venvimg build` first pushed it, which it records in a small marker \
tag (`sha256-<hex>.pushed`) next to the image; images pushed without one have an unknown \
age and count as the oldest.\n\n\
Manifests are deleted by digest (every tag pointing at one must be stale), each with its \
marker, and printed as they go; on an error prune stops and says what it deleted. The \
registry must allow deletes (distribution: `storage: {delete: {enabled: true}}`), and frees \
the blobs only when its garbage collector runs: the bytes freed are an estimate (blobs no \
kept image, other image or the base uses).";

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete the images listed for deletion (without it: a dry run that deletes nothing).
    #[arg(long)]
    pub yes: bool,
    /// Also keep the newest N stale images of each session (and of the all-sessions
    /// image), by first push. The current images are always kept and are not counted.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep: usize,
    /// Also keep stale images first pushed less than DURATION ago (e.g. 30d, 12h, 1h30m,
    /// 2w; 0s keeps none for their age). Images without a push marker count as old.
    #[arg(long, value_name = "DURATION", value_parser = parse_keep_for)]
    pub keep_for: Option<Refresh>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_keep_for(s: &str) -> Result<Refresh, String> {
    Refresh::parse(s)
        .ok_or_else(|| format!("`{s}` is not a duration; write e.g. 30d, 12h, 1h30m or 2w"))
}

/// What happens to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stale: deleted with --yes.
    Delete,
    /// Made by venvimg, kept (current, newest N, young).
    Keep,
    /// Not venvimg's to delete (no record, the base).
    Skip,
}

/// One manifest of the repository, with every tag that points at it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub tags: Vec<String>,
    pub digest: String,
    /// The sessions its record names (empty for images venvimg did not make).
    pub sessions: Vec<String>,
    /// Config and layers, as the manifest lists them.
    pub size: u64,
    /// When `venvimg build` first pushed it (RFC 3339); None: unknown.
    pub pushed: Option<String>,
    pub action: Action,
    /// `stale key`, `current`, `newest 1`, `younger than 30d`, `not made by venvimg`...
    pub why: String,
    /// The digest of its push marker, deleted with it.
    pub marker: Option<String>,
    #[serde(skip)]
    pushed_unix: Option<u64>,
    #[serde(skip)]
    blobs: Vec<(String, u64)>,
}

/// One manifest `--yes` deletes, and what it is.
#[derive(Debug, Clone, Serialize)]
pub struct Deletion {
    pub digest: String,
    /// `image lint-…`, `push marker of lint-…`, `SBOM of lint-…`, `referrers index sha256-…`.
    pub what: String,
}

/// What `prune` found and did (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct PruneReport {
    /// `registry/name`.
    pub repository: String,
    pub dry_run: bool,
    pub keep: usize,
    pub keep_for: Option<String>,
    /// The current plan's tags (always kept).
    pub current: Vec<String>,
    /// Every manifest a tag of the repository points at.
    pub images: Vec<ImageRow>,
    /// Push markers whose image is gone (deleted with --yes).
    pub orphan_markers: Vec<String>,
    /// Referrers tags (`sha256-<hex>`) whose image is gone: venvimg's SBOMs listed there
    /// are deleted with --yes, and the tag when nothing else is listed.
    pub orphan_referrer_tags: Vec<String>,
    /// Every manifest `--yes` deletes, in order (images, their push markers and SBOMs,
    /// referrers indexes left empty, push markers of images gone): the dry run lists
    /// exactly what `--yes` then deletes.
    pub planned: Vec<Deletion>,
    /// Digests deleted (with --yes), in order: every one is in `planned`.
    pub deleted: Vec<String>,
    /// Bytes of the blobs only the images to delete use: what the registry's garbage
    /// collector can free afterwards (an estimate; shared storage may differ).
    pub bytes_freed_estimate: u64,
}

impl PruneReport {
    pub fn to_delete(&self) -> impl Iterator<Item = &ImageRow> {
        self.images.iter().filter(|i| i.action == Action::Delete)
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the prune report serialises")
    }

    /// Images venvimg made (and with `all`, the skipped ones too).
    pub fn table(&self, all: bool) -> String {
        let rows: Vec<Vec<String>> = self
            .images
            .iter()
            .filter(|i| all || i.action != Action::Skip)
            .map(|i| {
                vec![
                    i.tags.join(", "),
                    if i.sessions.is_empty() {
                        "-".into()
                    } else {
                        i.sessions.join(", ")
                    },
                    Digest::hex_part(&i.digest).chars().take(12).collect(),
                    human_bytes(i.size),
                    i.pushed
                        .as_deref()
                        .map(|p| p.replace('T', " ").trim_end_matches('Z').to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    match i.action {
                        Action::Delete if self.dry_run => format!("would delete: {}", i.why),
                        Action::Delete => format!("delete: {}", i.why),
                        Action::Keep => format!("kept: {}", i.why),
                        Action::Skip => format!("skipped: {}", i.why),
                    },
                ]
            })
            .collect();
        table(
            &[
                "TAG",
                "SESSIONS",
                "DIGEST",
                "SIZE",
                "PUSHED (UTC)",
                "ACTION",
            ],
            &rows,
        )
    }

    /// `would delete 2 image(s), freeing ~41.0 MiB ...`.
    pub fn summary(&self, deleted: bool) -> String {
        let n = self.to_delete().count();
        let mut markers = if self.orphan_markers.is_empty() {
            String::new()
        } else {
            format!(
                " and {} push marker(s) of images already gone",
                self.orphan_markers.len()
            )
        };
        if !self.orphan_referrer_tags.is_empty() {
            markers.push_str(&format!(
                " and the SBOMs of {} image(s) already gone",
                self.orphan_referrer_tags.len()
            ));
        }
        let freed = format!(
            "~{} (an estimate: the registry frees it when its garbage collector runs)",
            human_bytes(self.bytes_freed_estimate)
        );
        if deleted {
            format!("deleted {n} image(s){markers}, freeing {freed}")
        } else if n == 0 && self.orphan_markers.is_empty() && self.orphan_referrer_tags.is_empty() {
            "nothing to delete".into()
        } else {
            format!("would delete {n} image(s){markers}, freeing {freed}; run again with --yes to delete them")
        }
    }
}

/// A manifest of the repository as read: what kind it is, before any decision.
#[derive(Debug, Clone)]
struct Found {
    digest: String,
    tags: Vec<String>,
    /// The record's sessions; None: not made by venvimg (with why).
    made: Result<Vec<String>, String>,
    size: u64,
    blobs: Vec<(String, u64)>,
}

/// Decide what happens to each image: pure, given what the registry holds.
fn decide(
    found: Vec<Found>,
    markers: &BTreeMap<String, Marker>,
    current: &BTreeSet<String>,
    base_digest: &str,
    keep: usize,
    keep_for: Option<&Refresh>,
    now: u64,
) -> Vec<ImageRow> {
    let mut rows: Vec<ImageRow> = found
        .into_iter()
        .map(|f| {
            let marker = markers.get(&f.digest);
            let (action, why, sessions) = match f.made {
                _ if f.digest == base_digest => (Action::Skip, "the base image".into(), vec![]),
                Err(why) => (Action::Skip, why, vec![]),
                Ok(sessions) if f.tags.iter().any(|t| current.contains(t)) => {
                    (Action::Keep, "current".into(), sessions)
                }
                Ok(sessions) => (Action::Delete, "stale key".into(), sessions),
            };
            ImageRow {
                tags: f.tags,
                digest: f.digest,
                sessions,
                size: f.size,
                pushed: marker.map(|m| pushed::rfc3339(m.pushed_unix)),
                action,
                why,
                marker: marker.map(|m| m.digest.to_string()),
                pushed_unix: marker.map(|m| m.pushed_unix),
                blobs: f.blobs,
            }
        })
        .collect();
    // Newest first within each session group (unknown age last), then by tag.
    rows.sort_by(|a, b| {
        a.sessions
            .cmp(&b.sessions)
            .then(b.pushed_unix.cmp(&a.pushed_unix))
            .then(a.tags.cmp(&b.tags))
    });
    let mut seen: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for row in rows.iter_mut().filter(|r| r.action == Action::Delete) {
        let n = seen.entry(row.sessions.clone()).or_default();
        *n += 1;
        if *n <= keep {
            row.action = Action::Keep;
            row.why = format!("newest {keep}");
        } else if let (Some(d), Some(p)) = (keep_for, row.pushed_unix) {
            if now.saturating_sub(p) < d.seconds {
                row.action = Action::Keep;
                row.why = format!("younger than {}", d.text);
            }
        }
    }
    rows
}

/// Bytes of the blobs that only the images to delete use.
fn freed(rows: &[ImageRow], base_blobs: &HashSet<String>) -> u64 {
    let kept: HashSet<&str> = rows
        .iter()
        .filter(|r| r.action != Action::Delete)
        .flat_map(|r| r.blobs.iter().map(|(d, _)| d.as_str()))
        .collect();
    let mut counted = HashSet::new();
    rows.iter()
        .filter(|r| r.action == Action::Delete)
        .flat_map(|r| r.blobs.iter())
        .filter(|(d, _)| !kept.contains(d.as_str()) && !base_blobs.contains(d))
        .filter(|(d, _)| counted.insert(d.clone()))
        .map(|(_, s)| *s)
        .sum()
}

/// What a repository's tags hold: images, push markers by image digest, and referrers
/// tags (`sha256-<hex>`, the SBOMs' index where the registry has no referrers API) by
/// image digest.
struct Survey {
    found: Vec<Found>,
    markers: BTreeMap<String, Marker>,
    referrer_tags: BTreeMap<String, String>,
}

/// Read every tag of `repo`: markers, referrers tags (never images of their own), and the
/// manifests the other tags point at.
async fn survey(registry: &Registry, repo: &Reference) -> Result<Survey, Error> {
    // A listed name that is no tag cannot be asked for (nor deleted) by tag: left alone.
    let tags: Vec<Tag> = registry
        .all_tags(repo)
        .await?
        .iter()
        .filter_map(|t| Tag::parse(t).ok())
        .collect();
    let (referrer_tags, tags): (Vec<Tag>, Vec<Tag>) = tags
        .into_iter()
        .partition(|t| referrers::fallback_subject(t.as_str()).is_some());
    let referrer_tags: BTreeMap<String, String> = referrer_tags
        .into_iter()
        .filter_map(|t| {
            Some((
                referrers::fallback_subject(t.as_str())?.into_string(),
                t.into(),
            ))
        })
        .collect();
    let (marker_tags, mut image_tags): (Vec<Tag>, Vec<Tag>) = tags
        .into_iter()
        .partition(|t| pushed::marker_subject(t.as_str()).is_some());
    let read = |tag: Tag| async move {
        let r = registry.manifest_if_exists(&at_tag(repo, &tag)).await;
        (tag, r)
    };
    let mut markers = BTreeMap::new();
    let got: Vec<_> = futures_util::stream::iter(marker_tags.into_iter().map(read))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (tag, r) in got {
        if let Some((bytes, digest)) = r? {
            match pushed::parse_marker(&bytes, &digest) {
                Some(m) => {
                    markers.insert(m.subject.to_string(), m);
                }
                // Shaped like a marker, but not one: an image like any other.
                None => image_tags.push(tag),
            }
        }
    }
    let got: Vec<_> = futures_util::stream::iter(image_tags.into_iter().map(read))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut by_digest: BTreeMap<Digest, (bytes::Bytes, Vec<Tag>)> = BTreeMap::new();
    for (tag, r) in got {
        if let Some((bytes, digest)) = r? {
            let e = by_digest.entry(digest).or_insert_with(|| (bytes, vec![]));
            e.1.push(tag);
        }
    }
    let classify = |(digest, (bytes, mut tags)): (Digest, (bytes::Bytes, Vec<Tag>))| async move {
        tags.sort();
        let r = at_tag(repo, &tags[0]);
        let (digest, tags) = (
            digest.into_string(),
            tags.into_iter().map(String::from).collect(),
        );
        let (made, size, blobs) = classify(registry, &r, &bytes).await?;
        Ok::<_, RegistryError>(Found {
            digest,
            tags,
            made,
            size,
            blobs,
        })
    };
    let found: Vec<Result<Found, RegistryError>> =
        futures_util::stream::iter(by_digest.into_iter().map(classify))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    let mut out = Vec::with_capacity(found.len());
    for f in found {
        out.push(f?);
    }
    Ok(Survey {
        found: out,
        markers,
        referrer_tags,
    })
}

type Classified = (Result<Vec<String>, String>, u64, Vec<(String, u64)>);

/// Whether the manifest `bytes` (at `r`) is an image venvimg made (its record's sessions),
/// its size and blobs.
async fn classify(
    registry: &Registry,
    r: &Reference,
    bytes: &[u8],
) -> Result<Classified, RegistryError> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok((Err("not a manifest venvimg reads".into()), 0, vec![]));
    };
    let descriptor = |d: &serde_json::Value| -> Option<(String, u64)> {
        Some((d["digest"].as_str()?.to_string(), d["size"].as_u64()?))
    };
    let mut blobs: Vec<(String, u64)> = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(descriptor)
        .collect();
    let config = descriptor(&v["config"]);
    if let Some(c) = &config {
        blobs.push(c.clone());
    }
    let size = blobs.iter().map(|(_, s)| s).sum();
    let config_type = v["config"]["mediaType"].as_str().unwrap_or_default();
    let Some((config_digest, config_size)) = config else {
        return Ok((
            Err("not made by venvimg (an index or not an image)".into()),
            size,
            blobs,
        ));
    };
    if ![MediaTypes::OCI_CONFIG, DOCKER_CONFIG].contains(&config_type) || config_size > MAX_CONFIG {
        return Ok((
            Err("not made by venvimg (not an image)".into()),
            size,
            blobs,
        ));
    }
    let config = match registry.blob_bytes(r, &config_digest, config_size).await {
        Ok(c) => c,
        Err(RegistryError::NotFound { .. }) => {
            return Ok((
                Err("not made by venvimg (its config is missing)".into()),
                size,
                blobs,
            ))
        }
        Err(e) => return Err(e),
    };
    let made = match ImageRecord::from_config(&config) {
        Some(record) if !record.sessions.is_empty() => {
            // Names from a registry answer: shown escaped, never raw.
            let mut s: Vec<String> = record
                .sessions
                .into_iter()
                .map(|s| crate::untrusted::escaped(&s.session))
                .collect();
            s.sort();
            Ok(s)
        }
        _ => Err("not made by venvimg (no image record)".into()),
    };
    Ok((made, size, blobs))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn prune(
    config: &Config,
    registry: &Registry,
    args: &PruneArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let (plan, current) = current_tags(config, registry, printer).await?;
    crate::plan::findings::flush_warnings(registry, printer);
    let repo = at_tag(&config.repository, &Tag::parse("latest").expect("a tag"));
    let Survey {
        found,
        markers,
        referrer_tags,
    } = survey(registry, &repo).await?;
    let present: HashSet<&str> = found.iter().map(|f| f.digest.as_str()).collect();
    let orphan_markers: Vec<Marker> = markers
        .values()
        .filter(|m| !present.contains(m.subject.as_str()))
        .cloned()
        .collect();
    let base_blobs: HashSet<String> = plan
        .base
        .manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .chain([plan.base.manifest.config().digest().to_string()])
        .collect();
    let images = decide(
        found,
        &markers,
        &current,
        plan.base.digest.as_str(),
        args.keep,
        args.keep_for.as_ref(),
        now_unix(),
    );
    // Never deleted, whatever a referrers list or marker says: what the survey keeps or
    // skips, and the base.
    let protected: HashSet<String> = images
        .iter()
        .filter(|i| i.action != Action::Delete)
        .map(|i| i.digest.clone())
        .chain([plan.base.digest.to_string()])
        .collect();
    let bytes_freed_estimate = freed(&images, &base_blobs);
    let Removals {
        planned,
        sbom_plans,
        orphan_referrer_tags,
    } = plan_removals(
        registry,
        &repo,
        &images,
        &referrer_tags,
        &orphan_markers,
        &protected,
        printer,
    )
    .await?;
    let mut report = PruneReport {
        repository: config.repository_path(),
        dry_run: !args.yes,
        keep: args.keep,
        keep_for: args.keep_for.as_ref().map(|d| d.text.clone()),
        current: current.into_iter().collect(),
        bytes_freed_estimate,
        images,
        orphan_markers: orphan_markers
            .iter()
            .map(|m| pushed::marker_tag(&m.subject).into())
            .collect(),
        orphan_referrer_tags,
        planned: planned
            .iter()
            .map(|(d, what)| Deletion {
                digest: d.to_string(),
                what: what.clone(),
            })
            .collect(),
        deleted: Vec::new(),
    };
    if !show(&report, args, printer) {
        return Ok(());
    }

    carry_out(
        registry,
        &repo,
        &mut report,
        &sbom_plans,
        &orphan_markers,
        &protected,
        printer,
    )
    .await?;
    if args.json {
        printer.out(report.json());
    } else {
        printer.out(report.summary(true));
    }
    Ok(())
}

/// The current keys' tags, exactly as `venvimg plan` computes them, and this platform's
/// plan. With `platforms:`, every platform's images are current (each has its own keys).
async fn current_tags(
    config: &Config,
    registry: &Registry,
    printer: &Printer,
) -> Result<(crate::plan::Plan, BTreeSet<String>), Error> {
    let this = config.for_platform(&config.platform);
    let plan =
        crate::plan::make_plan(&super::plannable_here(&this, printer), registry, &[]).await?;
    let mut current: BTreeSet<String> = plan.sessions.iter().map(|s| s.tag.to_string()).collect();
    current.insert(plan.combined_tag().into());
    for p in config.platforms.iter().filter(|p| **p != config.platform) {
        let other = crate::plan::make_plan(&config.for_platform(p), registry, &[]).await?;
        current.extend(other.sessions.iter().map(|s| s.tag.to_string()));
        current.insert(other.combined_tag().into());
    }
    Ok((plan, current))
}

/// What `--yes` would delete besides the images: their push markers and SBOMs, the SBOMs
/// of images already gone, markers whose image is gone.
struct Removals {
    planned: Vec<(Digest, String)>,
    sbom_plans: Vec<(String, RemovalPlan)>,
    orphan_referrer_tags: Vec<String>,
}

/// Every deletion, planned before any is made (the dry run lists exactly these): each
/// image to delete with its marker and venvimg's SBOMs among its referrers, referrers
/// tags of images already gone, orphan markers. Nothing in `protected` is ever planned.
async fn plan_removals(
    registry: &Registry,
    repo: &Reference,
    images: &[ImageRow],
    referrer_tags: &BTreeMap<String, String>,
    orphan_markers: &[Marker],
    protected: &HashSet<String>,
    printer: &Printer,
) -> Result<Removals, Error> {
    let mut planned: Vec<(Digest, String)> = Vec::new();
    let mut sbom_plans: Vec<(String, RemovalPlan)> = Vec::new();
    for row in images.iter().filter(|i| i.action == Action::Delete) {
        let digest = Digest::parse(&row.digest).map_err(|e| RegistryError::BadManifest {
            reference: repo.whole(),
            detail: e.to_string(),
        })?;
        planned.push((digest.clone(), format!("image {}", row.tags.join(", "))));
        if let Some(m) = row.marker.as_deref().and_then(|m| Digest::parse(m).ok()) {
            if !protected.contains(m.as_str()) {
                planned.push((m, format!("push marker of {}", row.tags.join(", "))));
            }
        }
        let plan = registry
            .plan_referrer_removal(
                repo,
                &digest,
                crate::sbom::MEDIA_TYPE,
                crate::sbom::ANNOTATION,
                protected,
            )
            .await;
        add_sbom_plan(
            &mut planned,
            &mut sbom_plans,
            printer,
            row.tags.join(", "),
            plan,
        );
    }
    // Referrers tags of images already gone: venvimg's SBOMs listed there go (other tools'
    // referrers stay).
    let present: HashSet<String> = images.iter().map(|i| i.digest.clone()).collect();
    let mut orphan_referrer_tags = Vec::new();
    for (subject, tag) in referrer_tags {
        if present.contains(subject) {
            continue;
        }
        let Ok(subject) = Digest::parse(subject) else {
            continue;
        };
        let plan = registry
            .plan_referrer_removal(
                repo,
                &subject,
                crate::sbom::MEDIA_TYPE,
                crate::sbom::ANNOTATION,
                protected,
            )
            .await;
        if plan.as_ref().is_ok_and(|p| !p.referrers.is_empty()) {
            orphan_referrer_tags.push(tag.clone());
        }
        add_sbom_plan(
            &mut planned,
            &mut sbom_plans,
            printer,
            format!("an image already gone ({tag})"),
            plan,
        );
    }
    for m in orphan_markers {
        {
            let d = m.digest.clone();
            if !protected.contains(d.as_str()) {
                planned.push((
                    d,
                    format!(
                        "push marker {} (its image is gone)",
                        pushed::marker_tag(&m.subject)
                    ),
                ));
            }
        }
    }
    Ok(Removals {
        planned,
        sbom_plans,
        orphan_referrer_tags,
    })
}

/// The report as asked (table, or JSON); with a dry run (no `--yes`) also what would go.
/// Whether to go on and delete.
fn show(report: &PruneReport, args: &PruneArgs, printer: &Printer) -> bool {
    let skipped = report
        .images
        .iter()
        .filter(|i| i.action == Action::Skip)
        .count();
    if !args.json {
        printer.info(format!(
            "{}: {} manifest(s) tagged, {} made by venvimg",
            report.repository,
            report.images.len(),
            report.images.len() - skipped
        ));
        printer.out(report.table(printer.verbosity >= Verbosity::Verbose));
        if skipped > 0 && printer.verbosity < Verbosity::Verbose {
            printer.info(format!(
                "{skipped} other image(s) skipped: not made by venvimg, or the base (-v lists them)"
            ));
        }
    }
    if !args.yes {
        if args.json {
            printer.out(report.json());
        } else {
            for d in &report.planned {
                printer.out(format!("would delete {} ({})", d.digest, d.what));
            }
            printer.out(report.summary(false));
        }
        return false;
    }

    true
}

/// Delete what was planned, images first (each with its marker and SBOMs); stop at the
/// first image that cannot be deleted, saying what was.
async fn carry_out(
    registry: &Registry,
    repo: &Reference,
    report: &mut PruneReport,
    sbom_plans: &[(String, RemovalPlan)],
    orphan_markers: &[Marker],
    protected: &HashSet<String>,
    printer: &Printer,
) -> Result<(), Error> {
    let present: HashSet<String> = report.images.iter().map(|i| i.digest.clone()).collect();
    let to_delete: Vec<ImageRow> = report.to_delete().cloned().collect();
    let total = to_delete.len();
    let mut images_deleted = 0;
    for row in &to_delete {
        // Parsed when planned: every row to delete is a digest.
        let Ok(digest) = Digest::parse(&row.digest) else {
            continue;
        };
        match registry.delete_manifest(repo, &digest).await {
            Ok(outcome) => {
                images_deleted += 1;
                report.deleted.push(row.digest.clone());
                printer.info(format!(
                    "deleted {} ({}, {}){}",
                    row.tags.join(", "),
                    digest.hex().chars().take(12).collect::<String>(),
                    human_bytes(row.size),
                    if outcome == Deleted::AlreadyGone {
                        " - it was already gone"
                    } else {
                        ""
                    }
                ));
            }
            Err(e) => {
                if images_deleted == 0 {
                    printer.error("nothing was deleted");
                } else {
                    printer.error(format!(
                        "stopped after deleting {images_deleted} of {total} image(s): {}",
                        report.deleted.join(", ")
                    ));
                }
                return Err(e.into());
            }
        }
        if let Some(marker) = row.marker.as_deref().and_then(|m| Digest::parse(m).ok()) {
            if !protected.contains(marker.as_str()) {
                match registry.delete_manifest(repo, &marker).await {
                    Ok(_) => report.deleted.push(marker.into_string()),
                    Err(e) => printer.warn(format!(
                        "could not delete the push marker of {}: {}",
                        row.tags.join(", "),
                        first_line(&e.to_string())
                    )),
                }
            }
        }
        let what = row.tags.join(", ");
        if let Some((_, plan)) = sbom_plans.iter().find(|(w, _)| *w == what) {
            delete_sboms(registry, repo, plan, &what, printer, &mut report.deleted).await;
        }
    }
    for (what, plan) in sbom_plans
        .iter()
        .filter(|(_, p)| !present.contains(p.subject.as_str()))
    {
        delete_sboms(registry, repo, plan, what, printer, &mut report.deleted).await;
    }
    for m in orphan_markers {
        let d = m.digest.clone();
        if protected.contains(d.as_str()) {
            continue;
        }
        match registry.delete_manifest(repo, &d).await {
            Ok(_) => {
                report.deleted.push(d.into_string());
                printer.verbose(format!(
                    "deleted the push marker {} (its image is gone)",
                    pushed::marker_tag(&m.subject)
                ))
            }
            Err(e) => printer.warn(format!(
                "could not delete the push marker {}: {}",
                pushed::marker_tag(&m.subject),
                first_line(&e.to_string())
            )),
        }
    }
    Ok(())
}

/// Add what `plan` deletes for `what` to `planned`; a plan that failed (a referrers list
/// naming something other than a digest...) deletes nothing and is a warning.
fn add_sbom_plan(
    planned: &mut Vec<(Digest, String)>,
    sbom_plans: &mut Vec<(String, RemovalPlan)>,
    printer: &Printer,
    what: String,
    plan: Result<RemovalPlan, RegistryError>,
) {
    match plan {
        Ok(p) => {
            for d in &p.referrers {
                planned.push((d.clone(), format!("SBOM of {what}")));
            }
            if let Some(IndexChange::Delete(d)) = &p.index {
                planned.push((
                    d.clone(),
                    format!("referrers index {}", referrers::fallback_tag(&p.subject)),
                ));
            }
            if !p.referrers.is_empty() {
                sbom_plans.push((what, p));
            }
        }
        Err(e) => printer.warn(format!(
            "the SBOMs of {what} are left alone: {}",
            first_line(&e.to_string())
        )),
    }
}

/// Delete venvimg's SBOMs of `what` as `plan` checked them, and take them off its
/// referrers tag (the tag goes when it lists nothing else). Best effort, like the push
/// markers: a failure is a warning.
async fn delete_sboms(
    registry: &Registry,
    repo: &Reference,
    plan: &RemovalPlan,
    what: &str,
    printer: &Printer,
    deleted: &mut Vec<String>,
) {
    match registry.remove_referrers(repo, plan).await {
        Ok(gone) => {
            if !plan.referrers.is_empty() {
                printer.info(format!(
                    "deleted the SBOM of {what} ({})",
                    plan.referrers
                        .iter()
                        .map(Digest::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            deleted.extend(gone.into_iter().map(Digest::into_string));
        }
        Err(e) => printer.warn(format!(
            "could not delete the SBOM of {what}: {}",
            first_line(&e.to_string())
        )),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(digest: &str, tag: &str, sessions: &[&str]) -> Found {
        Found {
            digest: digest.into(),
            tags: vec![tag.into()],
            made: if sessions.is_empty() {
                Err("not made by venvimg (no image record)".into())
            } else {
                Ok(sessions.iter().map(|s| s.to_string()).collect())
            },
            size: 10,
            blobs: vec![(format!("blob-{digest}"), 10), ("shared".into(), 5)],
        }
    }

    fn marker(digest: &str, at: u64) -> (String, Marker) {
        (
            digest.into(),
            Marker {
                digest: Digest::of(format!("m-{digest}").as_bytes()),
                subject: Digest::of(digest.as_bytes()),
                pushed_unix: at,
            },
        )
    }

    fn actions(rows: &[ImageRow]) -> BTreeMap<String, (Action, String)> {
        rows.iter()
            .map(|r| (r.tags.join(","), (r.action, r.why.clone())))
            .collect()
    }

    #[test]
    fn keeps_current_newest_and_young_deletes_the_rest() {
        let images = vec![
            found("d1", "lint-1", &["lint"]),
            found("d2", "lint-2", &["lint"]),
            found("d3", "lint-3", &["lint"]),
            found("d4", "lint-4", &["lint"]),
            found("d5", "tests-1", &["tests"]),
            found("base", "base", &["tests"]),
            found("f", "foreign", &[]),
        ];
        let markers: BTreeMap<String, Marker> = [
            marker("d1", 1000),
            marker("d2", 5000),
            marker("d3", 9000),
            marker("d4", 9500),
        ]
        .into();
        let current: BTreeSet<String> = ["lint-4".to_string()].into();
        let day = Refresh::parse("2h").unwrap();
        let rows = decide(
            images.clone(),
            &markers,
            &current,
            "base",
            1,
            Some(&day),
            10_000,
        );
        let a = actions(&rows);
        assert_eq!(a["lint-4"], (Action::Keep, "current".into()));
        assert_eq!(a["lint-3"], (Action::Keep, "newest 1".into()));
        assert_eq!(a["lint-2"], (Action::Keep, "younger than 2h".into()));
        assert_eq!(a["lint-1"].0, Action::Delete);
        // No marker: unknown age, the oldest; but the newest of its own session.
        assert_eq!(a["tests-1"], (Action::Keep, "newest 1".into()));
        assert_eq!(a["base"], (Action::Skip, "the base image".into()));
        assert_eq!(a["foreign"].0, Action::Skip);

        let rows = decide(images, &markers, &current, "base", 0, None, 10_000);
        let a = actions(&rows);
        let deleted: BTreeSet<&str> = a
            .iter()
            .filter(|(_, (act, _))| *act == Action::Delete)
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(
            deleted,
            ["lint-1", "lint-2", "lint-3", "tests-1"]
                .into_iter()
                .collect()
        );
        // Each deleted image's own blob; `shared` is also used by kept images.
        assert_eq!(freed(&rows, &HashSet::new()), 40);
        let base: HashSet<String> = ["blob-d1".to_string()].into();
        assert_eq!(freed(&rows, &base), 30);
    }

    #[test]
    fn an_image_with_one_current_tag_is_kept() {
        let mut f = found("d1", "lint-old", &["lint"]);
        f.tags.push("lint-new".into());
        let current: BTreeSet<String> = ["lint-new".to_string()].into();
        let rows = decide(vec![f], &BTreeMap::new(), &current, "", 0, None, 0);
        assert_eq!(rows[0].action, Action::Keep);
    }

    #[test]
    fn keep_for_takes_a_duration() {
        assert_eq!(parse_keep_for("30d").unwrap().seconds, 30 * 86_400);
        assert_eq!(parse_keep_for("2w").unwrap().seconds, 14 * 86_400);
        let e = parse_keep_for("soon").unwrap_err();
        assert!(e.contains("30d") && e.contains("12h"), "{e}");
        assert_eq!(parse_keep_for("1h30m").unwrap().seconds, 5400);
        // Zero keeps no image for its age: allowed.
        assert_eq!(parse_keep_for("0s").unwrap().seconds, 0);
        assert!(parse_keep_for("30").is_err());
    }
}
