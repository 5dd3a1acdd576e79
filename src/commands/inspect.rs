//! `venvimg inspect IMAGE`: what venvimg recorded in an image it made — sessions, keys,
//! inputs, python, base, layer sizes and installed packages — read from a registry, an
//! OCI layout, an OCI archive or a docker archive.

use fs_err::{self as fs, File};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::image::{self, MediaTypes};
use crate::model::{Digest, Key, Platform, Recorded, Tag, VenvName};
use crate::outputs::layout::{MAX_CONFIG, MAX_INDEX_JSON, MAX_MANIFEST};
use crate::outputs::OutputError;
use crate::plan::record::ImageRecord;
use crate::plan::KeyDocument;
use crate::printer::{human_bytes, Printer};
use crate::python::venv::Package;
use crate::registry::{Registry, RegistryError, Transport};
use crate::untrusted;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The image: HOST[:PORT]/REPO:TAG in a registry, oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG] or docker-archive:FILE.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Print a JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the image's SBOM (CycloneDX JSON), found through the registry's referrers
    /// API, else the `sha256-<hex>` referrers tag. Registry images only.
    #[arg(long, conflicts_with = "json")]
    pub sbom: bool,
    /// From an image index (a multi-platform tag), show this platform's image (default:
    /// this machine's).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
}

const IMAGE_FORMS: &str =
    "HOST[:PORT]/REPO:TAG, oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE";

/// The largest JSON document inspect reads from an archive (a config, at most).
const MAX_METADATA_FILE: u64 = MAX_CONFIG;

/// Where the image to inspect is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Registry(Reference),
    OciDir(PathBuf, Option<String>),
    OciArchive(PathBuf, Option<String>),
    DockerArchive(PathBuf, Option<String>),
}

fn parse_source(image: &str) -> Result<Source, Error> {
    let usage = |why: String| {
        Error::Usage(crate::error::UsageError::Argument {
            command: "inspect",
            name: "IMAGE",
            value: image.to_string(),
            why: format!("{why}; IMAGE is {IMAGE_FORMS}"),
        })
    };
    // `PATH` when it exists, else `PATH:NAME` (skopeo's syntax for one image of several).
    let split = |rest: &str| -> (PathBuf, Option<String>) {
        if Path::new(rest).exists() {
            return (PathBuf::from(rest), None);
        }
        match rest.rsplit_once(':') {
            Some((p, name)) if !p.is_empty() && !name.is_empty() && Path::new(p).exists() => {
                (PathBuf::from(p), Some(name.to_string()))
            }
            _ => (PathBuf::from(rest), None),
        }
    };
    for (prefix, make) in [
        (
            "oci:",
            Source::OciDir as fn(PathBuf, Option<String>) -> Source,
        ),
        ("oci-archive:", Source::OciArchive),
        ("docker-archive:", Source::DockerArchive),
    ] {
        if let Some(rest) = image.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(usage("no path after the colon".into()));
            }
            let (path, name) = split(rest);
            if !path.exists() {
                return Err(usage(format!("{} does not exist", path.display())));
            }
            return Ok(make(path, name));
        }
    }
    let reference = image.strip_prefix("docker://").unwrap_or(image);
    reference
        .parse::<Reference>()
        .map(Source::Registry)
        .map_err(|e| usage(format!("not an image reference ({e})")))
}

/// What `inspect` needs of an image, wherever it was read from.
#[derive(Debug, Clone, Default)]
struct ImageData {
    /// The manifest's digest (not for docker archives, which have no manifest).
    manifest_digest: Option<String>,
    /// The config's digest: the image ID podman and docker show.
    config_digest: String,
    annotations: BTreeMap<String, String>,
    layers: Vec<LayerData>,
    config: Value,
    /// Read through an image index: its digest and every platform it lists.
    index: Option<IndexInfo>,
}

/// The image index an image was picked from (a multi-platform session tag).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexInfo {
    pub digest: String,
    pub platforms: Vec<String>,
    /// The platform shown.
    pub shown: String,
}

#[derive(Debug, Clone, Default)]
struct LayerData {
    digest: Option<String>,
    media_type: Option<String>,
    size: u64,
}

fn bad(image: &str, detail: impl Into<String>) -> OutputError {
    OutputError::BadImage {
        image: image.to_string(),
        detail: detail.into(),
    }
}

/// A blob as a manifest or index names it: digest and (when given) size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Descriptor {
    digest: String,
    size: Option<u64>,
}

impl Descriptor {
    fn of(v: &Value) -> Option<Descriptor> {
        Some(Descriptor {
            digest: v["digest"].as_str()?.to_string(),
            size: v["size"].as_u64(),
        })
    }
}

/// Manifest JSON → the config's descriptor, layers and annotations (OCI and docker v2
/// manifests alike).
fn parse_image_manifest(name: &str, bytes: &[u8]) -> Result<(Descriptor, ImageData), OutputError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(name, format!("the manifest is not JSON: {e}")))?;
    let config = Descriptor::of(&v["config"]).ok_or_else(|| {
        bad(
            name,
            "the manifest names no config; is it an image manifest?",
        )
    })?;
    let config_digest = config.digest.clone();
    let layers = v["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| LayerData {
                    digest: l["digest"].as_str().map(str::to_string),
                    media_type: l["mediaType"].as_str().map(str::to_string),
                    size: l["size"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let annotations = v["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let data = ImageData {
        manifest_digest: Some(Digest::of(bytes).into_string()),
        config_digest,
        annotations,
        layers,
        config: Value::Null,
        index: None,
    };
    Ok((config, data))
}

fn parse_config(name: &str, bytes: &[u8]) -> Result<Value, OutputError> {
    serde_json::from_slice(bytes)
        .map_err(|e| bad(name, format!("the image config is not JSON: {e}")))
}

async fn read_registry(
    transport: Transport,
    r: &Reference,
    platform: &Platform,
) -> Result<ImageData, Error> {
    let registry = Registry::new(transport, &[r.resolve_registry()])?;
    let (top, _) = registry.manifest_raw(r).await?;
    let mut index = None;
    let bytes =
        match image::pick_platform(&top, platform).map_err(|detail| RegistryError::BadManifest {
            reference: r.whole(),
            detail,
        })? {
            image::Picked::Manifest => top,
            image::Picked::FromIndex { digest } => {
                index = Some(IndexInfo {
                    digest: Digest::of(&top).into_string(),
                    platforms: image::index_platforms(&top),
                    shown: platform.to_string(),
                });
                registry.manifest_raw(&r.clone_with_digest(digest)).await?.0
            }
            image::Picked::NoMatch { available } => {
                return Err(RegistryError::NoPlatform {
                    reference: r.whole(),
                    platform: platform.to_string(),
                    available,
                }
                .into())
            }
        };
    let (config, mut data) = parse_image_manifest(&r.whole(), &bytes)?;
    data.index = index;
    let Some(config_size) = config.size else {
        return Err(bad(&r.whole(), "the manifest's config descriptor has no size").into());
    };
    let config = registry.blob_bytes(r, &config.digest, config_size).await?;
    data.config = parse_config(&r.whole(), &config)?;
    data.config_digest = Digest::of(&config).into_string();
    Ok(data)
}

/// Read access to the files of an OCI layout (a directory, or an archive's small files).
/// `rel` is `index.json` or `blobs/sha256/<64 hex>`; a file over `max` bytes is an error.
trait LayoutFiles {
    fn read(&self, rel: &str, max: u64) -> Result<Vec<u8>, OutputError>;
}

/// A layout directory, read as untrusted data: regular files only, never through a
/// symlink (not even a symlinked `blobs/`), never more than asked for.
struct DirFiles<'a> {
    name: &'a str,
    dir: &'a Path,
}

impl LayoutFiles for DirFiles<'_> {
    fn read(&self, rel: &str, max: u64) -> Result<Vec<u8>, OutputError> {
        let refused = |reason: untrusted::Refusal| bad(self.name, format!("{rel} {reason}"));
        let p = untrusted::join_inside(self.dir, Path::new(rel)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                refused(untrusted::Refusal::Missing)
            } else {
                bad(
                    self.name,
                    format!("{rel}: a folder on the way is not a folder (a symlink?); refusing to read it"),
                )
            }
        })?;
        untrusted::read_checked(&p, max).map_err(refused)
    }
}

/// An archive's small files by name (the JSON documents, usually), and every file's
/// size; a larger file is read on demand, so layers are never held in memory.
struct ArchiveFiles {
    name: String,
    path: PathBuf,
    files: HashMap<String, Vec<u8>>,
    sizes: HashMap<String, u64>,
}

/// Files up to this size are kept from the first pass over an archive...
const SMALL_FILE: u64 = 1 << 20;
/// ...as long as all kept files together stay under this; the rest are read on demand.
const KEPT_BUDGET: u64 = 32 << 20;

impl ArchiveFiles {
    /// One pass over the archive; `keep(name, size)` says which files to read.
    fn each_file(
        name: &str,
        path: &Path,
        keep: &mut dyn FnMut(&str, u64) -> bool,
        found: &mut dyn FnMut(String, u64, Option<Vec<u8>>),
    ) -> Result<(), OutputError> {
        // The user named it (a symlink to it is fine), but a FIFO would hang the read.
        let meta = fs::metadata(path).map_err(|s| OutputError::io(path, s))?;
        if !meta.is_file() {
            return Err(bad(
                name,
                format!(
                    "{} is a {}, not an archive file",
                    path.display(),
                    untrusted::kind_name(&meta.file_type())
                ),
            ));
        }
        let file = File::open(path).map_err(|s| OutputError::io(path, s))?;
        // Long names and PAX headers capped (the tar crate alone would read a 1 GiB long
        // name into memory), entries and bytes too.
        crate::layer::diff::each_entry(
            BufReader::new(file),
            crate::layer::diff::CAPS,
            &mut |entry, raw, _| {
                if !entry.header().entry_type().is_file() {
                    return Ok(());
                }
                let key = raw.trim_start_matches("./").to_string();
                let size = entry.size();
                let data = if keep(&key, size) {
                    let mut data = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut data).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("reading {key}: {e}"))
                    })?;
                    Some(data)
                } else {
                    None
                };
                found(key, size, data);
                Ok(())
            },
        )
        .map_err(|e| bad(name, format!("not a tar archive venvimg reads: {e}")))
    }

    fn scan(name: &str, path: &Path) -> Result<ArchiveFiles, OutputError> {
        let mut kept = 0u64;
        let mut files = HashMap::new();
        let mut sizes = HashMap::new();
        Self::each_file(
            name,
            path,
            &mut |_, size| {
                let keep = size <= SMALL_FILE && kept + size <= KEPT_BUDGET;
                if keep {
                    kept += size;
                }
                keep
            },
            &mut |key, size, data| {
                sizes.insert(key.clone(), size);
                if let Some(d) = data {
                    files.insert(key, d);
                }
            },
        )?;
        Ok(ArchiveFiles {
            name: name.to_string(),
            path: path.to_path_buf(),
            files,
            sizes,
        })
    }
}

impl LayoutFiles for ArchiveFiles {
    fn read(&self, rel: &str, max: u64) -> Result<Vec<u8>, OutputError> {
        let max = max.min(MAX_METADATA_FILE);
        match self.sizes.get(rel) {
            Some(&size) if size > max => {
                return Err(bad(
                    &self.name,
                    format!("{rel} is {size} bytes, more than the {max} venvimg accepts there; refusing to read it"),
                ))
            }
            _ => {}
        }
        if let Some(d) = self.files.get(rel) {
            return Ok(d.clone());
        }
        match self.sizes.get(rel) {
            Some(_) => {
                let mut out = None;
                Self::each_file(
                    &self.name,
                    &self.path,
                    &mut |k, _| k == rel,
                    &mut |_, _, d| {
                        if d.is_some() {
                            out = d;
                        }
                    },
                )?;
                out.ok_or_else(|| bad(&self.name, format!("the archive has no {rel}")))
            }
            None => Err(bad(&self.name, format!("the archive has no {rel}"))),
        }
    }
}

/// The blob `desc` names, checked before it becomes a path (a well-formed sha256 digest:
/// `sha256:../../etc/hostname` names no file), read no further than its descriptor's
/// size (or `cap` when it gives none), and checked against its digest.
fn read_blob(
    name: &str,
    files: &dyn LayoutFiles,
    desc: &Descriptor,
    cap: u64,
) -> Result<Vec<u8>, OutputError> {
    let digest = desc.digest.as_str();
    let Ok(checked) = Digest::parse(digest) else {
        return Err(bad(
            name,
            format!("the layout names blob `{digest}`, which is not a sha256 digest (sha256: and 64 lowercase hex); refusing to look it up\n  hint: the layout is corrupt or was made to mislead; write it again with venvimg, skopeo or podman"),
        ));
    };
    let max = match desc.size {
        Some(size) if size > cap => {
            return Err(bad(
                name,
                format!("blob {digest} is {size} bytes by its descriptor, more than the {cap} venvimg reads for it"),
            ))
        }
        Some(size) => size,
        None => cap,
    };
    let bytes = files.read(&checked.blob_path(), max)?;
    if desc.size.is_some_and(|s| s != bytes.len() as u64) {
        return Err(bad(
            name,
            format!(
                "blob {digest} is {} bytes, its descriptor says {max}; the layout is corrupt",
                bytes.len()
            ),
        ));
    }
    if Digest::of(&bytes) != checked {
        return Err(bad(
            name,
            format!("blob {digest} does not match its digest; the layout is corrupt"),
        ));
    }
    Ok(bytes)
}

/// The image `want` names (`org.opencontainers.image.ref.name` or the full image name)
/// in an OCI layout; with no name, the layout's only image.
fn read_layout(
    name: &str,
    files: &dyn LayoutFiles,
    want: Option<&str>,
) -> Result<ImageData, OutputError> {
    let index: Value = serde_json::from_slice(&files.read("index.json", MAX_INDEX_JSON)?)
        .map_err(|e| bad(name, format!("index.json is not JSON: {e}")))?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| bad(name, "index.json has no `manifests` list"))?;
    let ref_of = |m: &Value| {
        m["annotations"][crate::outputs::layout::REF_NAME]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let chosen = match want {
        Some(w) => manifests.iter().find(|m| {
            ref_of(m) == w
                || m["annotations"][crate::outputs::layout::IMAGE_NAME].as_str() == Some(w)
        }),
        None if manifests.len() == 1 => manifests.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        let names: Vec<String> = manifests.iter().map(ref_of).collect();
        return Err(bad(
            name,
            match want {
                Some(w) => format!(
                    "no image named `{w}` in the layout (it has: {})",
                    names.join(", ")
                ),
                None if manifests.is_empty() => "the layout holds no image".to_string(),
                None => format!(
                    "the layout holds {} images ({}); add one's name: {name}:NAME",
                    manifests.len(),
                    names.join(", ")
                ),
            },
        ));
    };
    let desc =
        Descriptor::of(chosen).ok_or_else(|| bad(name, "index.json entry without a digest"))?;
    let mut bytes = read_blob(name, files, &desc, MAX_MANIFEST)?;
    if let image::Picked::FromIndex { digest } =
        image::pick_platform(&bytes, &Platform::host()).map_err(|d| bad(name, d))?
    {
        // The entry's size too, so the read stops where the index says the blob ends.
        let index: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let size = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["digest"].as_str() == Some(digest.as_str()))
            .and_then(|m| m["size"].as_u64());
        bytes = read_blob(name, files, &Descriptor { digest, size }, MAX_MANIFEST)?;
    }
    let (config, mut data) = parse_image_manifest(name, &bytes)?;
    data.config = parse_config(name, &read_blob(name, files, &config, MAX_CONFIG)?)?;
    data.config_digest = config.digest;
    Ok(data)
}

fn read_docker_archive(
    name: &str,
    files: &ArchiveFiles,
    want: Option<&str>,
) -> Result<ImageData, OutputError> {
    let manifest: Value = serde_json::from_slice(&files.read("manifest.json", MAX_MANIFEST)?)
        .map_err(|e| bad(name, format!("manifest.json is not JSON: {e}")))?;
    let entries = manifest
        .as_array()
        .ok_or_else(|| bad(name, "manifest.json is not a list"))?;
    let tags_of = |e: &Value| -> Vec<String> {
        e["RepoTags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let chosen = match want {
        Some(w) => entries.iter().find(|e| tags_of(e).iter().any(|t| t == w)),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        let all: Vec<String> = entries.iter().flat_map(tags_of).collect();
        return Err(bad(
            name,
            format!(
                "choose one of the archive's {} images: {name}:NAME with NAME one of {}",
                entries.len(),
                all.join(", ")
            ),
        ));
    };
    let config_path = chosen["Config"]
        .as_str()
        .ok_or_else(|| bad(name, "manifest.json names no Config"))?;
    let config_bytes = files.read(config_path.trim_start_matches("./"), MAX_CONFIG)?;
    let config = parse_config(name, &config_bytes)?;
    let layers = chosen["Layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(Value::as_str)
                .map(|l| LayerData {
                    digest: None,
                    media_type: None,
                    size: files
                        .sizes
                        .get(l.trim_start_matches("./"))
                        .copied()
                        .unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ImageData {
        manifest_digest: None,
        config_digest: Digest::of(&config_bytes).into_string(),
        annotations: BTreeMap::new(),
        layers,
        config,
        index: None,
    })
}

/// What `inspect` reports: `--json` prints it as is, the text form shows the same.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub image: String,
    /// Not for docker archives, which have no manifest.
    pub manifest_digest: Option<String>,
    /// The image ID podman and docker show.
    pub config_digest: String,
    pub base: BaseInfo,
    pub sessions: Vec<SessionInfo>,
    /// A multi-platform tag: the index the image was picked from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseInfo {
    pub name: Option<String>,
    pub digest: Option<String>,
}

impl BaseInfo {
    fn text(&self) -> String {
        match (&self.name, &self.digest) {
            (Some(n), Some(d)) => format!("{n} ({d})"),
            (Some(n), None) => n.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "unknown".into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub session: String,
    pub venv_dir: Recorded<VenvName>,
    /// envdir/venv_dir: where the venv is in the image.
    pub venv_path: String,
    /// Where the checkout must be mounted for the venv to match it.
    pub workdir: String,
    pub key: Recorded<Key>,
    pub tag: Recorded<Tag>,
    pub python: String,
    pub backend: String,
    pub interpreter: String,
    pub base: BaseInfo,
    /// The session's first layer (its only one unless `layers: per-distribution`).
    pub layer: Option<LayerInfo>,
    pub layers: Vec<LayerInfo>,
    /// Every file the key covers.
    pub inputs: Vec<RecordedInput>,
    pub floating: Vec<String>,
    pub key_document: KeyDocument,
    pub packages: Vec<Package>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub digest: Option<String>,
    pub diff_id: Option<String>,
    pub media_type: Option<String>,
    pub size: u64,
    pub group: Option<String>,
    pub distributions: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordedInput {
    pub path: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub via: String,
}

/// The report for the image `name` read as `data`, from the record venvimg wrote into it.
fn describe(name: &str, data: &ImageData) -> Result<InspectReport, OutputError> {
    let labels = &data.config["config"]["Labels"];
    let Some(raw) = labels[image::RECORD_LABEL].as_str() else {
        return Err(OutputError::NotVenvimg {
            image: name.to_string(),
            label: image::RECORD_LABEL,
        });
    };
    let record: ImageRecord = serde_json::from_str(raw).map_err(|e| {
        bad(
            name,
            format!("the {} label does not parse: {e}", image::RECORD_LABEL),
        )
    })?;
    let diff_ids: Vec<&str> = data.config["rootfs"]["diff_ids"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let base_name = data
        .annotations
        .get("org.opencontainers.image.base.name")
        .cloned();
    // Docker archives carry no annotations; the key documents name the base's digest.
    let base_digest = data
        .annotations
        .get("org.opencontainers.image.base.digest")
        .cloned()
        .or_else(|| record.sessions.first().map(|s| s.inputs.base.clone()));
    // Session layers are the image's last layers, in record order: one per session, or
    // as many as the session's record lists.
    let counts: Vec<usize> = record
        .sessions
        .iter()
        .map(|s| s.layers.len().max(1))
        .collect();
    let first_session_layer = data.layers.len().checked_sub(counts.iter().sum());
    let mut offset = 0;
    let mut sessions = Vec::with_capacity(record.sessions.len());
    for (s, count) in record.sessions.into_iter().zip(counts) {
        let layers: Vec<LayerInfo> = first_session_layer
            .map(|f| {
                (0..count)
                    .map(|j| {
                        let at = f + offset + j;
                        let l = &data.layers[at];
                        let recorded = s.layers.get(j);
                        LayerInfo {
                            digest: l.digest.clone(),
                            diff_id: diff_ids.get(at).map(|d| d.to_string()),
                            media_type: l
                                .media_type
                                .as_deref()
                                .map(|m| MediaTypes::oci_layer_type(m).to_string()),
                            size: l.size,
                            group: recorded.and_then(|r| r.group.clone()),
                            distributions: recorded.map(|r| r.distributions.clone()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        offset += count;
        let doc = &s.inputs;
        let venv_path = match (&s.venv_dir, doc.envdir.is_empty()) {
            (Recorded::Valid(v), false) => v.path_in(&doc.envdir),
            (v, true) => v.to_string(),
            // As the record has it: what is wrong with it shows.
            (v, false) => format!("{}/{v}", doc.envdir),
        };
        sessions.push(SessionInfo {
            venv_path,
            workdir: doc.workdir.clone(),
            base: BaseInfo {
                name: base_name.clone(),
                digest: Some(doc.base.clone())
                    .filter(|d| !d.is_empty())
                    .or_else(|| base_digest.clone()),
            },
            layer: layers.first().cloned(),
            layers,
            inputs: recorded_inputs(doc),
            floating: doc
                .discovered
                .as_ref()
                .map(|d| d.floating.clone())
                .unwrap_or_default(),
            key_document: s.inputs.clone(),
            session: s.session,
            venv_dir: s.venv_dir,
            key: s.key,
            tag: s.tag,
            python: s.python,
            backend: s.backend,
            interpreter: s.interpreter,
            packages: s.packages,
        });
    }
    Ok(InspectReport {
        image: name.to_string(),
        manifest_digest: data.manifest_digest.clone(),
        config_digest: data.config_digest.clone(),
        base: BaseInfo {
            name: base_name,
            digest: base_digest,
        },
        sessions,
        index: data.index.clone(),
    })
}

/// Every file a session's key covers, as the image recorded it: the noxfile and listed
/// inputs, what its installs read, the lock entries it installs, files it made itself.
fn recorded_inputs(doc: &KeyDocument) -> Vec<RecordedInput> {
    let mut out: Vec<RecordedInput> = doc
        .inputs
        .iter()
        .map(|i| RecordedInput {
            path: i.path.clone(),
            sha256: i.sha256.clone(),
            via: String::new(),
        })
        .collect();
    if let Some(d) = &doc.discovered {
        for f in d.files.iter().chain(&d.generated).chain(&d.noxfile_reads) {
            out.push(RecordedInput {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
                via: f.via.clone(),
            });
        }
        for l in &d.locks {
            out.push(RecordedInput {
                path: l.lock.clone(),
                sha256: l.sha256.clone(),
                via: format!(
                    "{} entries installed ({})",
                    l.packages.len(),
                    l.selection.join(" ")
                ),
            });
        }
    }
    out
}

fn package_line(p: &Package) -> String {
    let mut s = format!("{}=={}", p.name, p.version);
    match (&p.local_url, p.editable) {
        (Some(u), true) => s.push_str(&format!(" (editable, {u})")),
        (None, true) => s.push_str(" (editable)"),
        (Some(u), false) => s.push_str(&format!(" ({u})")),
        (None, false) => {}
    }
    s
}

impl InspectReport {
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the inspect report serialises")
    }

    pub fn text(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("image     {}", self.image));
        if let Some(i) = &self.index {
            out.push(format!("index     {}", i.digest));
            out.push(format!(
                "platforms {} (shown: {}; --platform picks another)",
                i.platforms.join(", "),
                i.shown
            ));
        }
        if let Some(d) = &self.manifest_digest {
            out.push(format!("digest    {d}"));
        }
        out.push(format!("id        {}", self.config_digest));
        out.push(format!("base      {}", self.base.text()));
        out.push(format!("sessions  {}", self.sessions.len()));
        for s in &self.sessions {
            out.push(String::new());
            out.push(format!("session {}", s.session));
            out.push(format!("  venv      {}", s.venv_path));
            out.push(format!(
                "  workdir   {} (mount the checkout here)",
                s.workdir
            ));
            out.push(format!("  key       {}", s.key));
            out.push(format!("  tag       {}", s.tag));
            out.push(format!(
                "  python    {} ({} backend, {})",
                s.python, s.backend, s.interpreter
            ));
            out.push(format!("  base      {}", s.base.text()));
            for layer in &s.layers {
                let id = layer
                    .digest
                    .as_deref()
                    .or(layer.diff_id.as_deref())
                    .unwrap_or("");
                let group = layer.group.as_deref().unwrap_or("");
                let holds = match &layer.distributions {
                    Some(Value::Array(d)) if !d.is_empty() => format!(
                        " ({group}: {})",
                        d.iter()
                            .map(|x| x.as_str().unwrap_or("").to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ if layer.group.is_some() => format!(" ({group})"),
                    _ => String::new(),
                };
                out.push(format!(
                    "  layer     {} {id}{holds}",
                    human_bytes(layer.size)
                ));
            }
            let width = s.inputs.iter().map(|i| i.path.len()).max().unwrap_or(0);
            for (i, input) in s.inputs.iter().enumerate() {
                out.push(format!(
                    "  {:<9} {:<width$}  {}{}{}",
                    if i == 0 { "inputs" } else { "" },
                    input.path,
                    Digest::PREFIX,
                    input.sha256.trim_start_matches(Digest::PREFIX),
                    if input.via.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", input.via)
                    },
                ));
            }
            for f in &s.floating {
                out.push(format!("  floating  {f}"));
            }
            out.push(format!("  packages  {}", s.packages.len()));
            for p in &s.packages {
                out.push(format!("    {}", package_line(p)));
            }
        }
        // Every value above was read from the image (its record label, a registry's
        // answers): a control character in any of them is shown escaped, never printed.
        out.iter()
            .map(|line| untrusted::escaped(line))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The largest SBOM `inspect --sbom` reads (thousands of components are a few MiB).
const MAX_SBOM: u64 = 64 << 20;

/// The SBOM of the image `r` (by its digest): venvimg's own first when several are
/// listed, then by digest, so the answer does not depend on listing order.
async fn read_sbom(transport: Transport, r: &Reference) -> Result<Vec<u8>, Error> {
    let registry = Registry::new(transport, &[r.resolve_registry()])?;
    let digest = match r.digest() {
        Some(d) => Digest::parse(d).map_err(|e| RegistryError::BadManifest {
            reference: r.whole(),
            detail: e.to_string(),
        })?,
        None => registry.manifest_digest(r).await?.ok_or_else(|| {
            RegistryError::NotFound {
                registry: r.resolve_registry().to_string(),
                reference: r.whole(),
                hint: "check the image name and tag (`venvimg plan` shows the tags of the current keys)",
            }
        })?,
    };
    let (list, via) = registry.referrers(r, &digest).await?;
    let mut sboms: Vec<&Value> = list
        .iter()
        .filter(|d| d["artifactType"].as_str() == Some(crate::sbom::MEDIA_TYPE))
        .collect();
    sboms.sort_by_key(|d| {
        (
            d["annotations"][crate::sbom::ANNOTATION].is_null(),
            d["digest"].as_str().unwrap_or_default().to_string(),
        )
    });
    let Some(sbom) = sboms.first().and_then(|d| d["digest"].as_str()) else {
        return Err(Error::NoSbom {
            image: format!("{}@{digest}", r.whole()),
            looked: match via {
                crate::registry::referrers::Via::Api => {
                    "the registry's referrers API lists none".to_string()
                }
                crate::registry::referrers::Via::Tag(t) => format!(
                    "the registry has no referrers API, and its referrers tag {t} lists none"
                ),
            },
        });
    };
    Ok(registry
        .referrer_blob(r, sbom, crate::sbom::MEDIA_TYPE, MAX_SBOM)
        .await?)
}

pub async fn inspect(
    transport: Transport,
    args: &InspectArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let name = args.image.as_str();
    let source = parse_source(name)?;
    if args.sbom {
        let Source::Registry(r) = &source else {
            return Err(crate::error::UsageError::Argument {
                command: "inspect --sbom",
                name: "IMAGE",
                value: name.to_string(),
                why: "SBOMs are referrers in a registry; give the image as HOST[:PORT]/REPO:TAG (the one `venvimg build` pushed)".into(),
            }
            .into());
        };
        let sbom = read_sbom(transport, r).await?;
        printer.out(String::from_utf8_lossy(&sbom).trim_end_matches('\n'));
        return Ok(());
    }
    let data = match source {
        Source::Registry(r) => {
            let platform = match &args.platform {
                Some(p) => Platform::parse(p).map_err(|why| {
                    Error::Usage(crate::error::UsageError::Flag {
                        flag: "--platform",
                        value: None,
                        why,
                    })
                })?,
                None => Platform::host(),
            };
            read_registry(transport, &r, &platform).await?
        }
        Source::OciDir(dir, want) => {
            if !dir.join("oci-layout").is_file() {
                return Err(bad(
                    name,
                    format!(
                        "{} is not an OCI layout (no oci-layout file)",
                        dir.display()
                    ),
                )
                .into());
            }
            read_layout(name, &DirFiles { name, dir: &dir }, want.as_deref())?
        }
        Source::OciArchive(file, want) => {
            let files = ArchiveFiles::scan(name, &file)?;
            read_layout(name, &files, want.as_deref())?
        }
        Source::DockerArchive(file, want) => {
            let files = ArchiveFiles::scan(name, &file)?;
            read_docker_archive(name, &files, want.as_deref())?
        }
    };
    let report = describe(name, &data)?;
    if args.json {
        printer.out(report.json());
    } else {
        printer.out(report.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record_config() -> Value {
        use crate::plan::record::SessionRecord;
        use crate::plan::InputDigest;
        let session =
            |name: &str, venv_dir: &str, key: &str, inputs: Vec<InputDigest>| SessionRecord {
                session: name.into(),
                venv_dir: Recorded::read(venv_dir),
                key: Recorded::read(&key.repeat(32)),
                tag: Recorded::read(&format!("{venv_dir}-{}", key.repeat(8))),
                inputs: KeyDocument {
                    base: "sha256:base".into(),
                    envdir: "/opt/nox".into(),
                    workdir: "/src".into(),
                    inputs,
                    ..Default::default()
                },
                python: "3.12.1".into(),
                backend: "uv".into(),
                interpreter: "/usr/bin/python3.12".into(),
                packages: Vec::new(),
                layers: Vec::new(),
                commands: Vec::new(),
                build_read: None,
                notes: Vec::new(),
            };
        let mut tests = session(
            "tests-3.12",
            "tests-3-12",
            "ab",
            vec![InputDigest {
                path: "uv.lock".into(),
                sha256: "11".repeat(32),
            }],
        );
        tests.packages = vec![
            Package {
                name: "attrs".into(),
                version: "23.2.0".into(),
                local_url: None,
                editable: false,
            },
            Package {
                name: "app".into(),
                version: "1.0".into(),
                local_url: Some("file:///src".into()),
                editable: true,
            },
        ];
        let record = ImageRecord {
            version: crate::plan::record::RECORD_VERSION,
            sessions: vec![tests, session("lint", "lint", "cd", Vec::new())],
        };
        json!({
            "config": {"Labels": {image::RECORD_LABEL: record.to_label()}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:d0", "sha256:d1", "sha256:d2"]},
        })
    }

    fn layers(sizes: &[u64]) -> Vec<LayerData> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| LayerData {
                digest: Some(format!("sha256:l{i}")),
                media_type: Some(MediaTypes::OCI_LAYER_GZIP.into()),
                size: *s,
            })
            .collect()
    }

    #[test]
    fn sessions_get_the_last_layers_in_order() {
        let data = ImageData {
            manifest_digest: Some("sha256:m".into()),
            config_digest: "sha256:c".into(),
            annotations: [(
                "org.opencontainers.image.base.name".to_string(),
                "reg/base:1".to_string(),
            )]
            .into(),
            layers: layers(&[100, 2048, 4096]),
            config: record_config(),
            index: None,
        };
        let report = describe("x", &data).unwrap();
        let doc: Value = serde_json::from_str(&report.json()).unwrap();
        let s = &doc["sessions"];
        assert_eq!(s[0]["layer"]["digest"], "sha256:l1");
        assert_eq!(s[0]["layer"]["diff_id"], "sha256:d1");
        assert_eq!(s[1]["layer"]["size"], 4096);
        assert_eq!(s[0]["venv_path"], "/opt/nox/tests-3-12");
        assert_eq!(s[0]["base"]["name"], "reg/base:1");
        // the digest the session was keyed on; the image's, when no annotation says
        assert_eq!(s[0]["base"]["digest"], "sha256:base");
        assert_eq!(doc["base"]["digest"], "sha256:base");
        assert_eq!(s[0]["workdir"], "/src");
        let text = report.text();
        for want in [
            "session tests-3.12",
            "attrs==23.2.0",
            "app==1.0 (editable, file:///src)",
            "uv.lock",
            "2.0 KiB sha256:l1",
            "python    3.12.1 (uv backend, /usr/bin/python3.12)",
            "packages  2",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    /// An OCI archive whose config (with the record) is larger than the first pass keeps.
    #[test]
    fn oci_archive_with_a_large_config_is_read() {
        use crate::image::{BlobRef, ComposedImage};
        use crate::outputs::layout::{self, ImageFiles};
        let dir = tempfile::tempdir().unwrap();
        let mut config = record_config();
        config["padding"] = json!("x".repeat(2 << 20));
        let config = serde_json::to_vec(&config).unwrap();
        let layer_bytes = vec![1u8; 5000];
        let layer_path = dir.path().join("layer");
        fs::write(&layer_path, &layer_bytes).unwrap();
        let layers: Vec<BlobRef> = (0..3)
            .map(|_| BlobRef {
                digest: Digest::of(&layer_bytes),
                size: 5000,
                media_type: MediaTypes::OCI_LAYER_GZIP.into(),
                from_base: false,
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MediaTypes::OCI_MANIFEST,
            "config": {"mediaType": MediaTypes::OCI_CONFIG, "digest": Digest::of(&config), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            "annotations": {"org.opencontainers.image.base.digest": "sha256:fromannotation"},
        }))
        .unwrap();
        let image = ComposedImage {
            config_digest: Digest::of(&config),
            config,
            manifest_digest: Digest::of(&manifest),
            manifest,
            layers,
        };
        let files = ImageFiles {
            image: &image,
            layers: [(image.layers[0].digest.clone(), layer_path)].into(),
        };
        let archive = dir.path().join("image.tar");
        let mut out = File::create(&archive).unwrap();
        layout::write_oci_archive(&files, "v1", "reg/app:v1", &mut out, &archive).unwrap();
        drop(out);

        let files = ArchiveFiles::scan("a", &archive).unwrap();
        assert!(!files.files.contains_key(&image.config_digest.blob_path()));
        let data = read_layout("a", &files, None).unwrap();
        assert_eq!(
            data.manifest_digest.as_deref(),
            Some(image.manifest_digest.as_str())
        );
        assert_eq!(data.config_digest, image.config_digest);
        let report = describe("a", &data).unwrap();
        assert_eq!(report.sessions[1].layer.as_ref().unwrap().size, 5000);
        assert_eq!(report.base.digest.as_deref(), Some("sha256:fromannotation"));
        assert!(read_layout("a", &files, Some("v2"))
            .unwrap_err()
            .to_string()
            .contains("v1"));
        assert!(read_layout("a", &files, Some("reg/app:v1")).is_ok());
    }

    #[test]
    fn a_record_with_fields_missing_is_read() {
        // What an older venvimg (or a hand-made image) wrote: no format, no layers.
        let record = json!({"sessions": [{"session": "lint", "venv_dir": "lint",
            "inputs": {"base": "sha256:b", "envdir": "/opt/nox"}, "python": "3.11.2"}]});
        let data = ImageData {
            config: json!({"config": {"Labels": {image::RECORD_LABEL: record.to_string()}}}),
            layers: layers(&[10, 20]),
            ..Default::default()
        };
        let report = describe("old", &data).unwrap();
        assert_eq!(report.sessions[0].venv_path, "/opt/nox/lint");
        assert_eq!(report.sessions[0].python, "3.11.2");
        assert_eq!(report.sessions[0].layer.as_ref().unwrap().size, 20);
    }

    #[test]
    fn text_read_from_the_image_can_not_start_a_line() {
        // A record label is the image author's text: a newline in a session or package
        // name would start a line a CI runner executes (`::add-mask::`, `::set-output`).
        let evil = "x\n::add-mask::127.0.0.1\n::set-output name=images::{}\u{1b}[2J";
        let record = json!({"sessions": [{"session": evil, "venv_dir": evil,
            "inputs": {"base": evil, "envdir": "/opt/nox", "inputs": [{"path": evil, "sha256": "11"}]},
            "python": evil, "backend": evil,
            "packages": [{"name": evil, "version": evil, "local_url": evil, "editable": true}]}]});
        let data = ImageData {
            config: json!({"config": {"Labels": {image::RECORD_LABEL: record.to_string()}}}),
            layers: layers(&[10, 20]),
            ..Default::default()
        };
        let text = describe(evil, &data).unwrap().text();
        assert!(text.contains("x\\n::add-mask::"), "{text}");
        for line in text.lines() {
            assert!(
                !line.starts_with("::"),
                "a line starts a workflow command: {line:?}"
            );
            assert!(
                !line.contains('\u{1b}'),
                "an escape reaches the terminal: {line:?}"
            );
        }
    }

    #[test]
    fn an_image_without_the_record_is_not_venvimgs() {
        let data = ImageData {
            config: json!({"config": {"Labels": {"other": "x"}}}),
            ..Default::default()
        };
        let err = describe("reg/base:1", &data).unwrap_err();
        assert!(matches!(err, OutputError::NotVenvimg { .. }));
        assert!(
            err.to_string()
                .contains("reg/base:1 was not made by venvimg"),
            "{err}"
        );
        let data = ImageData {
            config: json!({"config": null}),
            ..Default::default()
        };
        assert!(matches!(
            describe("y", &data),
            Err(OutputError::NotVenvimg { .. })
        ));
    }

    #[test]
    fn sources_parse() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        assert_eq!(
            parse_source(&format!("oci:{d}")).unwrap(),
            Source::OciDir(dir.path().into(), None)
        );
        assert_eq!(
            parse_source(&format!("oci:{d}:v1")).unwrap(),
            Source::OciDir(dir.path().into(), Some("v1".into()))
        );
        assert!(matches!(
            parse_source("127.0.0.1:5000/a/b:t").unwrap(),
            Source::Registry(r) if r.repository() == "a/b" && r.tag() == Some("t")
        ));
        let err = parse_source("oci-archive:/does/not/exist.tar").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(parse_source("Not A Reference").unwrap_err().exit_code(), 2);
    }

    /// A layout folder holding `blobs` (by digest) and an index.json naming `manifest`.
    fn layout_dir(dir: &Path, manifest: &Value, blobs: &[&[u8]]) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), crate::outputs::layout::OCI_LAYOUT).unwrap();
        for b in blobs {
            fs::write(dir.join(Digest::of(b).blob_path()), b).unwrap();
        }
        let index = json!({"schemaVersion": 2, "manifests": [manifest]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    fn read_dir_layout(dir: &Path) -> Result<ImageData, OutputError> {
        read_layout("oci:x", &DirFiles { name: "oci:x", dir }, None)
    }

    #[test]
    fn a_digest_is_checked_before_it_becomes_a_path() {
        let t = tempfile::tempdir().unwrap();
        let layout = t.path().join("layout");
        // Reading this FIFO would hang: the digest must be refused before any open.
        let canary = t.path().join("canary");
        let made = std::process::Command::new("mkfifo").arg(&canary).status();
        assert!(made.is_ok_and(|s| s.success()));
        let evil = "sha256:../../../canary";
        layout_dir(
            &layout,
            &json!({"mediaType": MediaTypes::OCI_MANIFEST, "digest": evil, "size": 10}),
            &[],
        );
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "names blob `{evil}`, which is not a sha256 digest"
            )),
            "{err}"
        );

        // The same in the config descriptor of a good manifest.
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": MediaTypes::OCI_CONFIG, "digest": evil, "size": 10},
            "layers": [],
        }))
        .unwrap();
        layout_dir(
            &layout,
            &json!({"digest": Digest::of(&manifest), "size": manifest.len()}),
            &[&manifest],
        );
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(err.contains(&format!("`{evil}`")), "{err}");
    }

    #[test]
    fn layout_blobs_are_regular_files_no_bigger_than_their_descriptor() {
        let t = tempfile::tempdir().unwrap();
        let layout = t.path().join("layout");
        let manifest =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#;
        let digest = Digest::of(manifest);
        let blob = layout.join(digest.blob_path());

        // Bigger than the index says: refused before the whole file is read.
        layout_dir(&layout, &json!({"digest": digest, "size": 10}), &[manifest]);
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "blobs/sha256/{} is {} bytes, more than the 10",
                digest.hex(),
                manifest.len()
            )),
            "{err}"
        );

        // A symlink in place of a blob, or of the blobs folder, is not followed.
        layout_dir(
            &layout,
            &json!({"digest": digest, "size": manifest.len()}),
            &[],
        );
        let _ = fs::remove_file(&blob);
        std::os::unix::fs::symlink("/etc/hostname", &blob).unwrap();
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(err.contains("is a symlink; refusing to read it"), "{err}");
        let other = t.path().join("other");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(digest.hex()), manifest).unwrap();
        fs::remove_dir_all(layout.join("blobs/sha256")).unwrap();
        std::os::unix::fs::symlink(&other, layout.join("blobs/sha256")).unwrap();
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(err.contains("(a symlink?); refusing to read it"), "{err}");

        // index.json itself: a FIFO is refused, not waited on.
        fs::remove_file(layout.join("index.json")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(layout.join("index.json"))
            .status();
        assert!(made.is_ok_and(|s| s.success()));
        let err = read_dir_layout(&layout).unwrap_err().to_string();
        assert!(
            err.contains("index.json is a FIFO, not a regular file"),
            "{err}"
        );
    }
}
