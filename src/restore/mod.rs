//! `restore`: a session's venv straight from its image into the envdir, without a
//! container engine. The image's venv layers are fetched by digest side by side, each
//! checked as it streams and decompressed and written in the same pass, into a folder
//! beside the target that is renamed into place only when every layer is complete: a
//! failed or cancelled restore leaves nothing half-written. Files, modes, links, mtimes
//! (and owners, as root) are the image's.
//!
//! What it writes next to the venv: `<envdir>/.venvimg/<venv dir>.json`, the key and
//! image it came from, so the next restore knows the venv is current (and refuses to
//! replace one it did not restore, unless forced).

mod extract;

use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, RestoreError};
use crate::model::{Digest, Key, KeyError, VenvName};
use crate::plan::record::ImageRecord;
use crate::plan::{Plan, SessionPlan, Status};
use crate::printer::Reporter;
use crate::registry::Registry;

/// How a restore runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Layers fetched and written at once (0: two per core, at least 2).
    pub jobs: usize,
    /// Replace a venv that is not the current key's (or that venvimg did not restore).
    pub force: bool,
    /// Write under this folder instead of `/` (the envdir's path below it): to look at a
    /// venv without touching the real envdir.
    pub root: Option<PathBuf>,
}

/// What a restore did for one session.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub session: String,
    pub venv_dir: VenvName,
    /// Where the venv is.
    pub path: PathBuf,
    /// The image it came from, by digest.
    pub image: String,
    /// "restored", or "present" (the venv there is the current key's already).
    pub outcome: &'static str,
    pub layers: usize,
    /// Bytes fetched (compressed).
    pub fetched: u64,
    /// Files written (and bytes of their content).
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Next to a restored venv: what it is.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    session: String,
    key: String,
    image: String,
}

/// What to restore: one session's venv layers in an image, and where they go.
#[derive(Debug, Clone)]
pub struct Source {
    pub session: String,
    pub key: Key,
    pub venv_dir: VenvName,
    /// The envdir the venv was built for (its paths are in the venv).
    pub envdir: String,
    /// The image, by digest.
    pub image: Reference,
    layers: Vec<VenvLayer>,
}

impl Source {
    /// Session `s` of `plan`: its hit, the layers above the base's.
    pub fn of_plan(config: &Config, plan: &Plan, s: &SessionPlan) -> Result<Source, Error> {
        let Status::Hit { digest } = &s.status else {
            return Err(RestoreError::Miss {
                session: s.config.name.clone(),
                image: s.image.whole(),
            }
            .into());
        };
        let image = s.image.clone_with_digest(digest.to_string());
        Ok(Source {
            session: s.config.name.clone(),
            key: s.key.clone(),
            venv_dir: s.venv_dir.clone(),
            envdir: config.envdir.clone(),
            layers: venv_layers(plan, s, &image)?,
            image,
        })
    }

    /// The sessions `only` (all when empty) of the image `reference` names (a session's
    /// image or the all-sessions image; this machine's platform of an index), read from
    /// the record it carries — no plan, no dry run. The record is the image's word, not
    /// trusted for paths: its envdir must be `envdir` (the config's), its venv folders
    /// plain names.
    pub async fn of_image(
        registry: &Registry,
        reference: &Reference,
        envdir: &str,
        only: &[String],
    ) -> Result<Vec<Source>, Error> {
        let img = registry
            .resolve_base(reference, &crate::model::Platform::host())
            .await
            .map_err(|e| match e {
                crate::registry::RegistryError::NotFound {
                    registry,
                    reference,
                    ..
                } => crate::registry::RegistryError::NotFound {
                    registry,
                    reference,
                    hint: "build it first (venvimg build), or check the reference",
                },
                e => e,
            })?;
        let image = reference.clone_with_digest(img.digest.to_string());
        let bad = |detail: String| RestoreError::BadImage {
            image: image.whole(),
            detail,
        };
        let record: ImageRecord = img.config["config"]["Labels"][crate::image::RECORD_LABEL]
            .as_str()
            .and_then(|raw| serde_json::from_str(raw).ok())
            .ok_or_else(|| bad("no record of venvimg's format: was it made by venvimg?".into()))?;
        let mut out = Vec::new();
        for s in record.sessions {
            if !only.is_empty() && !only.contains(&s.session) {
                continue;
            }
            if s.inputs.envdir != envdir {
                return Err(bad(format!(
                    "its venvs are for envdir {}, not {envdir} (`envdir:` in venvimg.yaml)",
                    s.inputs.envdir
                ))
                .into());
            }
            let venv_dir = s.venv_dir.valid().cloned().ok_or_else(|| {
                bad(format!(
                    "its record names the venv folder `{}`, not a plain name",
                    crate::untrusted::escaped(s.venv_dir.as_str())
                ))
            })?;
            let key = s.key.valid().cloned().ok_or_else(|| {
                bad(format!(
                    "its record of session `{}`: {}",
                    s.session,
                    crate::untrusted::escaped(&KeyError(s.key.to_string()).to_string())
                ))
            })?;
            if s.layers.is_empty() {
                return Err(bad(format!(
                    "its record lists no layer of session `{}`",
                    s.session
                ))
                .into());
            }
            let mut layers = Vec::new();
            for l in &s.layers {
                let digest = l.digest.valid().cloned().ok_or_else(|| {
                    bad(crate::model::DigestError(l.digest.to_string()).to_string())
                })?;
                let (index, desc) = img
                    .manifest
                    .layers()
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.digest().as_ref() == digest.as_str())
                    .ok_or_else(|| {
                        bad(format!(
                            "its record names layer {digest}, which it does not hold"
                        ))
                    })?;
                layers.push(VenvLayer {
                    index,
                    digest,
                    size: desc.size(),
                    media_type: desc.media_type().to_string(),
                });
            }
            out.push(Source {
                session: s.session,
                key,
                venv_dir,
                envdir: envdir.to_string(),
                image: image.clone(),
                layers,
            });
        }
        if out.is_empty() {
            return Err(bad(format!(
                "it holds none of the sessions asked for ({})",
                only.join(", ")
            ))
            .into());
        }
        Ok(out)
    }
}

/// Restore one session's venv into its envdir.
pub async fn restore(
    registry: &Registry,
    src: &Source,
    opts: &RestoreOptions,
    printer: &dyn Reporter,
) -> Result<Restored, Error> {
    let started = Instant::now();
    let name = &src.session;
    let pinned = &src.image;
    let envdir = match &opts.root {
        Some(root) => root.join(src.envdir.trim_start_matches('/')),
        None => PathBuf::from(&src.envdir),
    };
    let path = envdir.join(&src.venv_dir);
    let marker_path = envdir
        .join(".venvimg")
        .join(format!("{}.json", src.venv_dir));
    let marker = Marker {
        session: name.clone(),
        key: src.key.to_string(),
        image: pinned.whole(),
    };
    if let Some(image) = already_there(&path, &marker_path, &marker, opts.force)? {
        printer.info(format!(
            "{name}: {} is the current key's venv already",
            path.display()
        ));
        return Ok(Restored {
            session: name.clone(),
            venv_dir: src.venv_dir.clone(),
            path,
            image,
            outcome: "present",
            layers: 0,
            fetched: 0,
            files: 0,
            bytes: 0,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    let layers = &src.layers;
    printer.info(format!(
        "{name}: restoring {} layer(s) of {} into {}",
        layers.len(),
        pinned.whole(),
        path.display()
    ));
    fs_err::create_dir_all(&envdir).map_err(|e| RestoreError::Io {
        context: format!("creating {}", envdir.display()),
        source: e,
    })?;
    crate::cancel::sweep_stale_in(&envdir);
    // Beside the target (same filesystem: the rename is atomic), removed on drop and on
    // a cancel.
    let staging = crate::cancel::tempdir_in(&format!("restore-{}", src.venv_dir), &envdir)
        .map_err(|e| RestoreError::Io {
            context: format!("creating a folder in {}", envdir.display()),
            source: e,
        })?;
    // Layer entries have no leading `/`.
    let venv_archive = src.venv_dir.path_in(src.envdir.trim_start_matches('/'));
    // Root restores owners as the image has them; anyone else owns what they write.
    let owners = is_root();
    let to = Destination {
        venv_archive: &venv_archive,
        venv_dir: &src.venv_dir,
        staging: staging.path(),
        owners,
    };
    let written = fetch_and_write(registry, pinned, layers, &to, opts.jobs)
        .await
        .map_err(|e| e.for_session(name, pinned))?;

    let (files, bytes) =
        complete(staging.path(), written, owners).map_err(|e| e.for_session(name, pinned))?;
    let new = staging.path().join(&src.venv_dir);
    if !new.is_dir() {
        return Err(RestoreError::BadLayer {
            layer: 0,
            detail: format!("no layer holds the venv folder /{venv_archive}"),
        }
        .for_session(name, pinned)
        .into());
    }
    put_in_place(&new, &path, staging.path())?;
    write_marker(&marker_path, &marker)?;
    drop(staging);
    Ok(Restored {
        session: name.clone(),
        venv_dir: src.venv_dir.clone(),
        path,
        image: pinned.whole(),
        outcome: "restored",
        layers: layers.len(),
        fetched: layers.iter().map(|l| l.size).sum(),
        files,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What is at `path` already: nothing (None), the current key's venv (its image), or
/// something else — refused unless `force`.
fn already_there(
    path: &Path,
    marker_path: &Path,
    marker: &Marker,
    force: bool,
) -> Result<Option<String>, RestoreError> {
    if fs_err::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let there: Option<Marker> = fs_err::read(marker_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match there {
        Some(m) if m.key == marker.key => Ok(Some(m.image)),
        _ if force => Ok(None),
        there => Err(RestoreError::Occupied {
            session: marker.session.clone(),
            path: path.to_path_buf(),
            what: match there {
                Some(m) => format!(
                    "the venv of another key ({}…, from {})",
                    Key::short_of(&m.key),
                    m.image
                ),
                None => "a folder venvimg did not restore".into(),
            },
        }),
    }
}

/// A venv layer of the image: its place, digest, size and media type.
#[derive(Debug, Clone)]
struct VenvLayer {
    index: usize,
    digest: Digest,
    size: u64,
    media_type: String,
}

/// The image's layers above the base's (the plan checked the image's key; its first
/// layers must be the base's, as the plan resolved it).
fn venv_layers(plan: &Plan, s: &SessionPlan, pinned: &Reference) -> Result<Vec<VenvLayer>, Error> {
    let bad = |detail: String| crate::registry::RegistryError::BadManifest {
        reference: pinned.whole(),
        detail,
    };
    let bytes = s
        .hit_manifest
        .as_ref()
        .ok_or_else(|| bad("the plan kept no manifest of this hit".into()))?;
    let manifest = crate::image::parse_manifest(bytes).map_err(bad)?;
    let base: Vec<String> = plan
        .base
        .manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let layers = manifest.layers();
    if layers.len() <= base.len()
        || layers[..base.len()]
            .iter()
            .map(|l| l.digest().to_string())
            .ne(base.iter().cloned())
    {
        return Err(bad(format!(
            "its first layers are not the base image's ({}); was it made by venvimg on this base?",
            plan.base.pinned()
        ))
        .into());
    }
    layers
        .iter()
        .enumerate()
        .skip(base.len())
        .map(|(index, l)| {
            Ok(VenvLayer {
                index,
                digest: Digest::parse(l.digest().as_ref()).map_err(|e| bad(e.to_string()))?,
                size: l.size(),
                media_type: l.media_type().to_string(),
            })
        })
        .collect()
}

/// Where a session's layers are written: the venv's folder as the layers name it, under
/// a private folder beside the target.
struct Destination<'a> {
    /// `opt/nox/tests`: the venv's path in the layers (no leading `/`).
    venv_archive: &'a str,
    venv_dir: &'a VenvName,
    staging: &'a Path,
    /// Restore owners as the image has them (root only).
    owners: bool,
}

/// Every layer fetched and written, `jobs` at a time, the largest first (the longest
/// pole starts at once). Each layer: an async task moves the blob's pieces into a small
/// bounded channel (the memory a layer holds), a blocking thread decompresses and
/// writes them.
async fn fetch_and_write(
    registry: &Registry,
    image: &Reference,
    layers: &[VenvLayer],
    to: &Destination<'_>,
    jobs: usize,
) -> Result<Vec<extract::Written>, RestoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    let jobs = if jobs == 0 {
        (2 * std::thread::available_parallelism().map_or(1, |n| n.get())).max(2)
    } else {
        jobs
    };
    let mut order: Vec<&VenvLayer> = layers.iter().collect();
    order.sort_by_key(|l| std::cmp::Reverse(l.size));
    futures_util::stream::iter(order)
        .map(|layer| {
            let venv = to.venv_archive.to_string();
            let venv_dir = to.venv_dir.to_string();
            let staging = to.staging.to_path_buf();
            let owners = to.owners;
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
                let media_type = layer.media_type.clone();
                let index = layer.index;
                let writer = tokio::task::spawn_blocking(move || {
                    let to = extract::Target {
                        venv: &venv,
                        venv_dir: &venv_dir,
                        staging: &staging,
                        index,
                        owners,
                    };
                    let mut pieces = extract::Pieces::new(rx);
                    let written = extract::extract(&mut pieces, &media_type, &to);
                    // Whatever the tar ends with, the blob is read to its end: its digest
                    // is checked only there.
                    let _ = std::io::copy(&mut pieces, &mut std::io::sink());
                    written
                });
                let fetched = async {
                    let mut blob = registry
                        .blob_stream(image, &layer.digest, layer.size)
                        .await
                        .map_err(|e| RestoreError::Fetch {
                            layer: layer.index,
                            detail: e.to_string(),
                        })?;
                    while let Some(piece) = blob.next().await.map_err(|e| RestoreError::Fetch {
                        layer: layer.index,
                        detail: e.to_string(),
                    })? {
                        // The writer stopped (an error it reports): stop fetching.
                        if tx.send(piece).await.is_err() {
                            break;
                        }
                    }
                    drop(tx);
                    Ok::<(), RestoreError>(())
                }
                .await;
                let written = writer.await.map_err(|e| RestoreError::BadLayer {
                    layer: layer.index,
                    detail: format!("the writer stopped: {e}"),
                })?;
                // A blob that failed its digest or size is the error, whatever its tar
                // looked like to the writer.
                fetched?;
                written
            }
        })
        .buffer_unordered(jobs)
        .try_collect()
        .await
}

/// After every layer: the hard links to other layers' files, then the folders'
/// metadata. The files and bytes written.
fn complete(
    staging: &Path,
    written: Vec<extract::Written>,
    owners: bool,
) -> Result<(u64, u64), RestoreError> {
    let mut folders = Vec::new();
    let mut later = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for w in written {
        folders.extend(w.folders);
        later.extend(w.later_links);
        files += w.files;
        bytes += w.bytes;
    }
    for l in later {
        let linked = extract::link(staging, &l.target, &l.rel).map_err(|e| RestoreError::Io {
            context: format!("linking {}", l.rel.display()),
            source: e,
        })?;
        if !linked {
            return Err(RestoreError::BadLayer {
                layer: 0,
                detail: format!(
                    "{}: a hard link to {}, which no layer holds",
                    l.rel.display(),
                    l.target.display()
                ),
            });
        }
    }
    extract::settle_folders(staging, folders, owners)?;
    Ok((files, bytes))
}

/// Move the complete venv into place; an old one (forced) goes into the staging folder,
/// removed with it.
fn put_in_place(new: &Path, path: &Path, staging: &Path) -> Result<(), RestoreError> {
    let io_err = |context: String| move |source| RestoreError::Io { context, source };
    if fs_err::symlink_metadata(path).is_ok() {
        fs_err::rename(path, staging.join(".replaced"))
            .map_err(io_err(format!("moving the old {} away", path.display())))?;
    }
    fs_err::rename(new, path).map_err(io_err(format!("moving the venv to {}", path.display())))
}

fn write_marker(path: &Path, marker: &Marker) -> Result<(), RestoreError> {
    let io_err = |source| RestoreError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let dir = path.parent().expect("the marker is in a folder");
    fs_err::create_dir_all(dir).map_err(io_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    serde_json::to_writer_pretty(&mut tmp, marker).expect("the marker serialises");
    crate::outputs::layout::set_file_mode(tmp.as_file(), 0o644).map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
