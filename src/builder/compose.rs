use std::collections::BTreeMap;

use super::SessionLayer;
use crate::config::Config;
use crate::error::Error;
use crate::image::{self, BaseImage, ComposedImage, LayerDescriptor};
use crate::model::{Digest, Key, VenvName};
use crate::plan::record::{ImageRecord, RECORD_VERSION};
use crate::plan::{SessionPlan, CHECK_ANNOTATION};
use crate::registry::Registry;

/// Compose `layers` on the base. A session's own image (one session) carries the check
/// annotation plans read; the all-sessions image does not need one.
/// The image's working directory is `workdir`, where the venvs expect the checkout: a
/// plain `docker run -v "$PWD:WORKDIR" IMAGE nox -s S` then runs at the right path.
/// Annotations: the base (name, digest), the title (the session's name; "all sessions"
/// for every session of the config, `complete`; else the names) and the project's
/// `source` when the config knows a clean one.
pub fn compose_images(
    base: &BaseImage,
    layers: &[(VenvName, SessionLayer)],
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
        base.digest.to_string(),
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
pub(super) async fn layer_from_registry(
    registry: &Registry,
    base: &BaseImage,
    s: &SessionPlan,
    digest: &Digest,
) -> Result<SessionLayer, Error> {
    // By the digest the plan checked, never the tag again: a tag moved since is not used.
    let pinned = s.image.clone_with_digest(digest.to_string());
    let (bytes, got) = registry.manifest_raw(&pinned).await?;
    if got != *digest {
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
    if record.key.valid() != Some(&s.key) || check.key != s.key {
        return Err(bad(format!(
            "its record is for key {}, not {}",
            Key::short_of(record.key.as_str()),
            s.key.short()
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
    let descriptors = venv_descriptors(layers, base_count, &config).map_err(bad)?;
    Ok(SessionLayer {
        descriptors,
        files: Vec::new(),
        record,
        check,
        distributions: None,
    })
}

/// The descriptors of an image's venv layers (those above the base's `base_count`): each
/// one's digest and size from the manifest, diff_id and history line from the config.
fn venv_descriptors(
    layers: &[oci_spec::image::Descriptor],
    base_count: usize,
    config: &serde_json::Value,
) -> Result<Vec<LayerDescriptor>, String> {
    let history: Vec<&serde_json::Value> = config["history"]
        .as_array()
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    let mut descriptors = Vec::with_capacity(layers.len() - base_count);
    for (i, l) in layers.iter().enumerate().skip(base_count) {
        let diff_id = config["rootfs"]["diff_ids"][i]
            .as_str()
            .ok_or_else(|| format!("config has no diff_id for layer {i}"))?;
        let diff_id = Digest::parse(diff_id).map_err(|e| format!("layer {i}'s diff_id: {e}"))?;
        let digest = Digest::parse(l.digest().as_ref()).map_err(|e| format!("layer {i}: {e}"))?;
        // Our history entries are the last ones, one per venv layer.
        let created_by = history
            .len()
            .checked_sub(layers.len() - i)
            .and_then(|h| history[h]["created_by"].as_str())
            .unwrap_or("venvimg")
            .to_string();
        descriptors.push(LayerDescriptor {
            media_type: l.media_type().to_string(),
            digest,
            size: l.size(),
            diff_id,
            created_by,
        });
    }
    Ok(descriptors)
}
