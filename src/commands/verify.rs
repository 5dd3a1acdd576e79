//! `venvimg verify`: rebuild images from their inputs and compare them, byte for byte,
//! with what the registry holds. Builds are reproducible (same inputs → same layer and
//! manifest digests), so any difference is a fact to explain: a tampered image, a base
//! that moved under its digest, or a build that is not reproducible after all — and the
//! report names the first layer and file where it shows.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_client::Reference;
use serde::Serialize;

use super::BuilderArgs;
use crate::builder::{self, BuildOptions, SessionLayer};
use crate::config::Config;
use crate::error::{Error, UsageError};
use crate::image::ComposedImage;
use crate::model::{Digest, Key};
use crate::plan::{SessionPlan, Status};
use crate::printer::{table, Printer};
use crate::registry::Registry;

#[derive(Debug, Default, clap::Args)]
pub struct VerifyArgs {
    /// An image venvimg made, by tag or digest (a session's or the all-sessions image):
    /// its recorded sessions are rebuilt and composed as it was. Default: the current
    /// image of every session (of `--session`) that the plan finds.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Only these sessions (without IMAGE), as nox takes them.
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1.., conflicts_with = "image")]
    pub sessions: Vec<String>,
    #[command(flatten)]
    pub builder: BuilderArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `verify` reports (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub images: Vec<VerifiedImage>,
}

#[derive(Debug, Serialize)]
pub struct VerifiedImage {
    pub image: String,
    pub sessions: Vec<String>,
    /// The registry's manifest digest.
    pub digest: Digest,
    /// The rebuilt image's manifest digest (None: it did not build).
    pub rebuilt: Option<Digest>,
    /// `identical`, `differs` or `not rebuilt`.
    pub result: &'static str,
    /// Where it differs (the first layer and file), or why it did not build.
    pub difference: Option<String>,
}

impl VerifyReport {
    fn table(&self) -> String {
        table(
            &["IMAGE", "SESSIONS", "RESULT"],
            &self
                .images
                .iter()
                .map(|i| {
                    vec![
                        format!("{}@{}", i.image, i.digest.short()),
                        i.sessions.join(","),
                        match &i.difference {
                            Some(d) => format!("{}: {d}", i.result),
                            None => i.result.to_string(),
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        )
    }
}

/// One image to rebuild: where it is, its digest, and the sessions it holds (in order).
struct Target<'p> {
    image: Reference,
    digest: Digest,
    sessions: Vec<&'p SessionPlan>,
}

pub async fn verify(
    config: &Config,
    registry: &Registry,
    args: &VerifyArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let config = &builder::with_engine(config, args.builder.engine.as_deref())?;
    // With IMAGE: the sessions its record names, checked against the checkout's keys.
    let recorded = match &args.image {
        Some(image) => Some(recorded_image(config, registry, image).await?),
        None => None,
    };
    let selection: Vec<String> = match &recorded {
        Some((_, _, record)) => record.sessions.iter().map(|s| s.session.clone()).collect(),
        None => args.sessions.clone(),
    };
    let plan = crate::plan::make_plan(config, registry, &selection).await?;
    crate::plan::findings::flush_warnings(registry, printer);

    let targets = targets(config, &plan, recorded.as_ref(), printer)?;

    // Rebuild every session the targets hold (each once: one target per session, or the
    // one IMAGE), as `build --force --no-push` would.
    let to_build: Vec<&SessionPlan> = targets
        .iter()
        .flat_map(|t| t.sessions.iter().copied())
        .collect();
    let options = args.builder.apply(BuildOptions {
        force: true,
        no_push: true,
        ..BuildOptions::default()
    });
    printer.info(format!(
        "rebuilding {} session(s) to compare with the registry's images",
        to_build.len()
    ));
    let (work, built) = builder::build_sessions(config, &plan, &to_build, &options, printer)?;
    let mut layers: HashMap<&str, Result<SessionLayer, String>> = HashMap::new();
    for (s, b) in to_build.iter().zip(built) {
        let layer = match b {
            Some((Ok(layer), _)) => Ok(layer),
            Some((Err(e), _)) => {
                printer.error(e.to_string());
                Err(e.summary())
            }
            None => Err("not built".to_string()),
        };
        layers.insert(s.config.name.as_str(), layer);
    }

    let mut report = VerifyReport { images: Vec::new() };
    for t in &targets {
        report
            .images
            .push(compare(config, registry, &plan, t, &layers, printer).await?);
    }
    drop(work);

    if args.json {
        printer.out(serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        printer.out(report.table());
    }
    let bad: Vec<String> = report
        .images
        .iter()
        .filter(|i| i.result != "identical")
        .map(|i| format!("{} ({})", i.image, i.result))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::NotVerified {
            images: bad,
            total: report.images.len(),
        })
    }
}

/// What to compare: with IMAGE, that image and the sessions its record names (each
/// checked against the checkout's keys); else each session's current image.
fn targets<'p>(
    config: &Config,
    plan: &'p crate::plan::Plan,
    recorded: Option<&(Reference, Digest, crate::plan::record::ImageRecord)>,
    printer: &Printer,
) -> Result<Vec<Target<'p>>, Error> {
    Ok(match recorded {
        Some((image, digest, record)) => {
            let mut sessions = Vec::new();
            for r in &record.sessions {
                let s = plan
                    .sessions
                    .iter()
                    .find(|s| s.config.name == r.session)
                    .ok_or_else(|| {
                        Error::Usage(UsageError::Argument {
                            command: "verify",
                            name: "IMAGE",
                            value: image.whole(),
                            why: format!(
                                "holds session `{}`, which {} does not configure",
                                r.session,
                                config.file.display()
                            ),
                        })
                    })?;
                if r.key.valid() != Some(&s.key) {
                    return Err(UsageError::Argument {
                        command: "verify",
                        name: "IMAGE",
                        value: image.whole(),
                        why: format!(
                            "session `{}` was built from inputs with key {}, this checkout's give {}; nothing to compare\n  hint: check out the commit the image was built from (`venvimg inspect {}` lists its inputs)",
                            r.session,
                            Key::short_of(r.key.as_str()),
                            s.key.short(),
                            image.whole()
                        ),
                    }
                    .into());
                }
                sessions.push(s);
            }
            vec![Target {
                image: image.clone(),
                digest: digest.clone(),
                sessions,
            }]
        }
        None => {
            let mut targets = Vec::new();
            for s in &plan.sessions {
                match &s.status {
                    Status::Hit { digest } => targets.push(Target {
                        image: s.image.clone(),
                        digest: digest.clone(),
                        sessions: vec![s],
                    }),
                    Status::Miss => printer.warn(format!(
                        "session `{}`: no image for its current key ({}); nothing to verify",
                        s.config.name,
                        s.image.whole()
                    )),
                }
            }
            if targets.is_empty() {
                return Err(UsageError::Path {
                    path: config.file.clone(),
                    why: format!(
                        "no session has an image for its current key in {}; nothing to verify\n  hint: `venvimg build` first, or name an image: venvimg verify IMAGE",
                        config.repository_path()
                    ),
                }
                .into());
            }
            targets
        }
    })
}

/// One target's rebuilt image composed and compared with the registry's: identical, or
/// the first layer and file where they differ.
async fn compare(
    config: &Config,
    registry: &Registry,
    plan: &crate::plan::Plan,
    t: &Target<'_>,
    layers: &HashMap<&str, Result<SessionLayer, String>>,
    printer: &Printer,
) -> Result<VerifiedImage, Error> {
    let names: Vec<String> = t.sessions.iter().map(|s| s.config.name.clone()).collect();
    let mut parts = Vec::new();
    let mut failed = None;
    for s in &t.sessions {
        match &layers[s.config.name.as_str()] {
            Ok(l) => parts.push((s.venv_dir.clone(), l.clone())),
            Err(e) => failed = Some(e.clone()),
        }
    }
    if let Some(why) = failed {
        return Ok(VerifiedImage {
            image: t.image.whole(),
            sessions: names,
            digest: t.digest.clone(),
            rebuilt: None,
            result: "not rebuilt",
            difference: Some(why),
        });
    }
    // Several sessions: the all-sessions image (verify takes no other).
    let rebuilt = builder::compose_images(&plan.base, &parts, config, true);
    let files: HashMap<crate::model::Digest, PathBuf> = parts
        .iter()
        .flat_map(|(_, l)| l.files.iter().cloned())
        .collect();
    let difference = if rebuilt.manifest_digest == t.digest {
        None
    } else {
        let pinned = Reference::with_digest(
            t.image.registry().to_string(),
            t.image.repository().to_string(),
            t.digest.to_string(),
        );
        Some(first_difference(registry, &pinned, &rebuilt, &files).await?)
    };
    printer.info(match &difference {
        None => format!(
            "{}@{}: rebuilt byte for byte",
            t.image.whole(),
            t.digest.short()
        ),
        Some(d) => format!("{}@{}: differs: {d}", t.image.whole(), t.digest.short()),
    });
    Ok(VerifiedImage {
        image: t.image.whole(),
        sessions: names,
        digest: t.digest.clone(),
        rebuilt: Some(rebuilt.manifest_digest.clone()),
        result: if difference.is_none() {
            "identical"
        } else {
            "differs"
        },
        difference,
    })
}

/// IMAGE's reference (in the config's registry unless it names one), its digest, and the
/// record venvimg wrote into it.
async fn recorded_image(
    config: &Config,
    registry: &Registry,
    image: &str,
) -> Result<(Reference, Digest, crate::plan::record::ImageRecord), Error> {
    let usage = |why: String| {
        Error::Usage(UsageError::Argument {
            command: "verify",
            name: "IMAGE",
            value: image.to_string(),
            why,
        })
    };
    let reference: Reference = image.parse().map_err(|e| {
        usage(format!(
            "not an image reference ({e}); give REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"
        ))
    })?;
    if reference.resolve_registry() != config.repository.resolve_registry()
        || reference.repository() != config.repository.repository()
    {
        return Err(usage(format!(
            "not in this project's repository {}; verify rebuilds from this checkout what its config pushes",
            config.repository_path()
        )));
    }
    let (bytes, digest) = registry.manifest_raw(&reference).await?;
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| usage(format!("its manifest is not JSON ({e})")))?;
    let config_digest = manifest["config"]["digest"].as_str().ok_or_else(|| {
        usage(
            "an index or an artifact, not an image manifest; name a session's or the all-sessions image"
                .into(),
        )
    })?;
    let config_size = manifest["config"]["size"].as_u64().unwrap_or(0);
    let config_bytes = registry
        .blob_bytes(&reference, config_digest, config_size)
        .await?;
    let record = crate::plan::record::ImageRecord::from_config(&config_bytes)
        .filter(|r| !r.sessions.is_empty())
        .ok_or_else(|| {
            usage("no venvimg record in its config; venvimg verifies only images it made".into())
        })?;
    Ok((reference, digest, record))
}

/// Where the registry's image at `pinned` and the rebuilt one part: the first layer that
/// differs and, inside it, the first file; else the config or the manifest.
async fn first_difference(
    registry: &Registry,
    pinned: &Reference,
    rebuilt: &ComposedImage,
    files: &HashMap<crate::model::Digest, PathBuf>,
) -> Result<String, Error> {
    let (bytes, _) = registry.manifest_raw(pinned).await?;
    let theirs: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let their_layers: Vec<(String, String, u64)> = theirs["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    (
                        l["digest"].as_str().unwrap_or_default().to_string(),
                        l["mediaType"].as_str().unwrap_or_default().to_string(),
                        l["size"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let n = rebuilt.layers.len();
    for (i, (ours, (their_digest, their_type, their_size))) in
        rebuilt.layers.iter().zip(&their_layers).enumerate()
    {
        if &ours.digest == their_digest {
            continue;
        }
        let which = format!("layer {} of {n}", i + 1);
        if ours.from_base {
            return Ok(format!(
                "{which}, a base image layer: {their_digest} in the registry, {} in the base",
                ours.digest
            ));
        }
        let Some(local) = files.get(ours.digest.as_str()) else {
            return Ok(format!(
                "{which}: {their_digest} in the registry, {} rebuilt",
                ours.digest
            ));
        };
        let blob = registry
            .layer_file(pinned, their_digest, *their_size)
            .await?;
        let read_local = || -> std::io::Result<_> {
            crate::layer::diff::entries(
                std::io::BufReader::new(fs_err::File::open(local)?),
                &ours.media_type,
            )
        };
        let ours_entries = read_local().map_err(|source| Error::Io {
            path: local.clone(),
            source,
        })?;
        let detail = match crate::layer::diff::entries(std::io::BufReader::new(blob), their_type) {
            Err(e) if crate::layer::diff::as_refused(&e).is_some() => {
                return Err(crate::registry::RegistryError::BadManifest {
                    reference: format!("{} (layer {their_digest})", pinned.whole()),
                    detail: format!("reading the layer back: {e}"),
                }
                .into())
            }
            Err(e) => format!("the registry's layer is not a readable {their_type} ({e})"),
            Ok(their_entries) => {
                match crate::layer::diff::first_difference(&ours_entries, &their_entries) {
                    Some(d) => d,
                    None => "the same files, other compressed bytes".to_string(),
                }
            }
        };
        return Ok(format!("{which} ({their_digest}): {detail}"));
    }
    if their_layers.len() != n {
        return Ok(format!(
            "the registry's image has {} layers, the rebuilt one {n}",
            their_layers.len()
        ));
    }
    let their_config = theirs["config"]["digest"].as_str().unwrap_or_default();
    if their_config != rebuilt.config_digest {
        let their_size = theirs["config"]["size"].as_u64().unwrap_or(0);
        let blob = registry
            .blob_bytes(pinned, their_config, their_size)
            .await?;
        let theirs: serde_json::Value = serde_json::from_slice(&blob).unwrap_or_default();
        let ours: serde_json::Value = serde_json::from_slice(&rebuilt.config).unwrap_or_default();
        let field = first_json_difference(&ours, &theirs, String::new())
            .unwrap_or_else(|| "its bytes".to_string());
        return Ok(format!(
            "the same layers; the image config differs at `{field}`"
        ));
    }
    Ok("the same layers and config; the manifest differs (annotations)".to_string())
}

/// The path of the first value that differs between two JSON documents.
fn first_json_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: String,
) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_json_difference(p, q, path),
                    _ => Some(path),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() { "(root)".into() } else { at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_differing_json_field() {
        let a = serde_json::json!({"config": {"Labels": {"x": "1", "y": "2"}}, "rootfs": {}});
        let b = serde_json::json!({"config": {"Labels": {"x": "1", "y": "3"}}, "rootfs": {}});
        assert_eq!(
            first_json_difference(&a, &b, String::new()).as_deref(),
            Some("config.Labels.y")
        );
        assert_eq!(first_json_difference(&a, &a, String::new()), None);
    }
}
