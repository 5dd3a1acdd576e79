//! Image composition as pure functions: a base image plus venv layers becomes a new
//! config and manifest, serialised once, whose bytes (and so digests) depend only on the
//! inputs.

use std::collections::BTreeMap;

use oci_client::Reference;
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Serialize;
use serde_json::{json, Value};

use crate::model::Digest;
use crate::model::Platform;

pub struct MediaTypes;

impl MediaTypes {
    pub const OCI_MANIFEST: &'static str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &'static str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &'static str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &'static str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &'static str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_TAR: &'static str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_MANIFEST: &'static str =
        "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &'static str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_LAYER_GZIP: &'static str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_TAR: &'static str = "application/vnd.docker.image.rootfs.diff.tar";

    pub const ACCEPTED_MANIFESTS: &'static [&'static str] = &[
        Self::OCI_MANIFEST,
        Self::OCI_INDEX,
        Self::DOCKER_MANIFEST,
        Self::DOCKER_LIST,
    ];

    /// Our manifests are OCI; base layers pushed in docker's format keep their bytes and
    /// get the OCI name for the same thing.
    pub fn oci_layer_type(media_type: &str) -> &str {
        match media_type {
            Self::DOCKER_LAYER_GZIP => Self::OCI_LAYER_GZIP,
            Self::DOCKER_LAYER_TAR => Self::OCI_LAYER_TAR,
            other => other,
        }
    }
}

/// The `created` time written into every image venvimg makes: fixed, so the config digest
/// does not depend on when the build ran.
pub const CREATED: &str = "1980-01-01T00:00:00Z";

/// The label that carries venvimg's record of what an image holds (read by `inspect`).
pub const RECORD_LABEL: &str = "dev.venvimg.record";
pub const SESSIONS_LABEL: &str = "dev.venvimg.sessions";
/// Standard annotations on the images venvimg pushes: what it is, and the project.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
pub const SOURCE_ANNOTATION: &str = "org.opencontainers.image.source";

pub enum Picked {
    Manifest,
    FromIndex { digest: String },
    NoMatch { available: String },
}

/// Is this manifest an index? If so, which entry serves `platform`?
pub fn pick_platform(bytes: &[u8], platform: &Platform) -> Result<Picked, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let media_type = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    let is_index = media_type == MediaTypes::OCI_INDEX
        || media_type == MediaTypes::DOCKER_LIST
        || (media_type.is_empty() && v.get("manifests").is_some());
    if !is_index {
        return Ok(Picked::Manifest);
    }
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| format!("image index does not parse: {e}"))?;
    let mut available = Vec::new();
    for m in index.manifests() {
        let Some(p) = m.platform() else { continue };
        let os = p.os().to_string();
        let arch = p.architecture().to_string();
        let variant = p.variant().clone();
        available.push(spelled(p));
        if os == platform.os
            && arch == platform.architecture
            && (platform.variant.is_none() || platform.variant == variant)
        {
            return Ok(Picked::FromIndex {
                digest: m.digest().to_string(),
            });
        }
    }
    Ok(Picked::NoMatch {
        available: if available.is_empty() {
            "no platforms".into()
        } else {
            available.join(", ")
        },
    })
}

/// The platforms an image index lists (`os/arch[/variant]`), in its order.
pub fn index_platforms(bytes: &[u8]) -> Vec<String> {
    let Ok(index) = serde_json::from_slice::<ImageIndex>(bytes) else {
        return Vec::new();
    };
    index
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(spelled)
        .collect()
}

/// An index entry's platform as `os/arch[/variant]`.
fn spelled(p: &oci_spec::image::Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("image manifest does not parse: {e}"))
}

/// The base image, resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub reference: Reference,
    /// Digest of the platform's image manifest (what keys are computed from).
    pub digest: Digest,
    pub manifest: ImageManifest,
    pub config: Value,
}

impl BaseImage {
    pub fn new(
        reference: Reference,
        digest: Digest,
        manifest: ImageManifest,
        config_bytes: Vec<u8>,
    ) -> Result<BaseImage, String> {
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("image config is not JSON: {e}"))?;
        if config
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .is_none()
        {
            return Err("image config has no rootfs.diff_ids".into());
        }
        // Its layers are pushed and mounted by digest with venvimg's own: one form.
        for l in manifest.layers() {
            Digest::parse(l.digest().as_ref()).map_err(|e| {
                format!("a layer of the base image: {e}; venvimg works with sha256 images")
            })?;
        }
        Ok(BaseImage {
            reference,
            digest,
            manifest,
            config,
        })
    }

    /// The base reference pinned by digest, as recorded in annotations.
    pub fn pinned(&self) -> String {
        format!(
            "{}/{}@{}",
            self.reference.resolve_registry(),
            self.reference.repository(),
            self.digest
        )
    }
}

/// A layer to append: what the manifest and config need to know of it.
#[derive(Debug, Clone)]
pub struct LayerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    /// `created_by` of its history entry.
    pub created_by: String,
}

/// A composed image: the exact bytes to push, and their digests.
#[derive(Debug, Clone)]
pub struct ComposedImage {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    /// All layers, base first.
    pub layers: Vec<BlobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// True for layers that come from the base image (copied or mounted, not uploaded
    /// from a local file).
    pub from_base: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescOut<'a>,
    layers: Vec<DescOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescOut<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

/// Append `layers` to `base`, with `labels` merged into the config's labels and, when
/// given, `working_dir` as the image's working directory. Pure: the same arguments give
/// the same bytes.
pub fn compose(
    base: &BaseImage,
    layers: &[LayerDescriptor],
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    working_dir: Option<&str>,
) -> ComposedImage {
    let mut config = base.config.clone();
    let obj = config.as_object_mut().expect("checked in BaseImage::new");
    obj.insert("created".into(), json!(CREATED));
    // Keep the base's own settings (Env, Cmd, WorkingDir...), add our labels. A null
    // `config` or `Labels` (docker writes null for "none") becomes an object.
    {
        let cfg = obj.entry("config").or_insert_with(|| json!({}));
        if !cfg.is_object() {
            *cfg = json!({});
        }
        if let Some(dir) = working_dir {
            cfg.as_object_mut()
                .expect("made an object above")
                .insert("WorkingDir".into(), json!(dir));
        }
        let lbl = cfg
            .as_object_mut()
            .expect("made an object above")
            .entry("Labels")
            .or_insert_with(|| json!({}));
        if !lbl.is_object() {
            *lbl = json!({});
        }
        let lbl = lbl.as_object_mut().expect("made an object above");
        for (k, v) in labels {
            lbl.insert(k.clone(), json!(v));
        }
    }
    let diff_ids = obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .expect("checked in BaseImage::new");
    for l in layers {
        diff_ids.push(json!(l.diff_id));
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    let history = history.as_array_mut().unwrap();
    for l in layers {
        history.push(json!({
            "created": CREATED,
            "created_by": l.created_by,
            "comment": "venvimg",
        }));
    }
    // serde_json's map is ordered by key: the serialisation is canonical.
    let config_bytes = serde_json::to_vec(&config).expect("JSON values serialise");
    let config_digest = Digest::of(&config_bytes);

    let mut blobs: Vec<BlobRef> = base
        .manifest
        .layers()
        .iter()
        .map(|d| BlobRef {
            digest: Digest::parse(d.digest().as_ref()).expect("checked in BaseImage::new"),
            size: d.size(),
            media_type: MediaTypes::oci_layer_type(d.media_type().as_ref()).to_string(),
            from_base: true,
        })
        .collect();
    for l in layers {
        blobs.push(BlobRef {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            from_base: false,
        });
    }
    let manifest = ManifestOut {
        schema_version: 2,
        media_type: MediaTypes::OCI_MANIFEST,
        config: DescOut {
            media_type: MediaTypes::OCI_CONFIG,
            digest: config_digest.as_str(),
            size: config_bytes.len() as u64,
        },
        layers: blobs
            .iter()
            .map(|b| DescOut {
                media_type: &b.media_type,
                digest: b.digest.as_str(),
                size: b.size,
            })
            .collect(),
        annotations: annotations.clone(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let manifest_digest = Digest::of(&manifest_bytes);
    ComposedImage {
        config: config_bytes,
        config_digest,
        manifest: manifest_bytes,
        manifest_digest,
        layers: blobs,
    }
}
