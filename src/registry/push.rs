//! Pushing an image: every blob the registry lacks (HEAD first; mount from the base's
//! repository on the same registry; copy stream-to-stream from another registry; stream
//! local layers from disk), then the manifest by digest, then the tag — so a tag never
//! points at something missing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::Reference;

use super::{retry, Registry, RegistryError};
use crate::image::{BaseImage, BlobRef, ComposedImage, MediaTypes};

/// What a push did, for the summary and for tests ("a second push uploads nothing").
#[derive(Debug, Default)]
pub struct Stats {
    pub blobs_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub blobs_present: AtomicU64,
    pub bytes_present: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub blobs_copied: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_present: u64,
    pub bytes_present: u64,
    pub blobs_mounted: u64,
    pub blobs_copied: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            blobs_uploaded: self.blobs_uploaded.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            blobs_present: self.blobs_present.load(Ordering::Relaxed),
            bytes_present: self.bytes_present.load(Ordering::Relaxed),
            blobs_mounted: self.blobs_mounted.load(Ordering::Relaxed),
            blobs_copied: self.blobs_copied.load(Ordering::Relaxed),
        }
    }
}

/// How many blobs go up at once. Registries and proxies cope well with a few; more buys
/// nothing on the 2-core runners CI usually has.
pub const PARALLEL_UPLOADS: usize = 4;
const READ_CHUNK: usize = 1 << 20;

/// Push `image` to `target` (a repository with a tag). `local` maps the digests of layers
/// packed on this machine to their files.
pub async fn push_image(
    reg: &Registry,
    target: &Reference,
    image: &ComposedImage,
    base: &BaseImage,
    local: &HashMap<String, PathBuf>,
) -> Result<String, RegistryError> {
    let auth = reg.auth(target);
    reg.client()
        .store_auth_if_needed(target.resolve_registry(), &auth)
        .await;
    // Authenticate for push once up front, so a refused credential fails before any
    // upload and concurrent uploads share one token.
    reg.client()
        .auth(target, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| reg.explain(target, "push to", e))?;

    let config_blob = BlobRef {
        digest: image.config_digest.clone(),
        size: image.config.len() as u64,
        media_type: MediaTypes::OCI_CONFIG.into(),
        from_base: false,
    };
    let mut all: Vec<BlobRef> = image.layers.clone();
    all.push(config_blob);
    // The same layer may appear twice (two sessions with identical venvs); upload once.
    let mut seen = std::collections::HashSet::new();
    all.retain(|b| seen.insert(b.digest.clone()));

    futures_util::stream::iter(all.into_iter().map(|blob| {
        let config_bytes = (blob.digest == image.config_digest).then(|| image.config.clone());
        async move { push_blob(reg, target, base, &blob, local, config_bytes).await }
    }))
    .buffer_unordered(PARALLEL_UPLOADS)
    .try_collect::<Vec<()>>()
    .await?;

    // Manifest by digest first, then the tag: a reader of the tag always finds every blob.
    let by_digest = Reference::with_digest(
        target.resolve_registry().to_string(),
        target.repository().to_string(),
        image.manifest_digest.clone(),
    );
    let content_type: http::HeaderValue = MediaTypes::OCI_MANIFEST
        .parse()
        .expect("static media type is a valid header");
    retry(|| {
        reg.client()
            .push_manifest_raw(&by_digest, image.manifest.clone(), content_type.clone())
    })
    .await
    .map_err(|e| reg.explain(&by_digest, "push manifest to", e))?;
    retry(|| {
        reg.client()
            .push_manifest_raw(target, image.manifest.clone(), content_type.clone())
    })
    .await
    .map_err(|e| reg.explain(target, "push tag to", e))?;
    Ok(image.manifest_digest.clone())
}

async fn push_blob(
    reg: &Registry,
    target: &Reference,
    base: &BaseImage,
    blob: &BlobRef,
    local: &HashMap<String, PathBuf>,
    inline: Option<Vec<u8>>,
) -> Result<(), RegistryError> {
    let client = reg.client();
    let exists = retry(|| client.blob_exists(target, &blob.digest))
        .await
        .map_err(|e| reg.explain(target, "check a blob in", e))?;
    if exists {
        reg.stats.blobs_present.fetch_add(1, Ordering::Relaxed);
        reg.stats
            .bytes_present
            .fetch_add(blob.size, Ordering::Relaxed);
        return Ok(());
    }

    if let Some(bytes) = inline {
        retry(|| client.push_blob(target, bytes.clone(), &blob.digest))
            .await
            .map_err(|e| reg.explain(target, "upload the config to", e))?;
        count_upload(reg, blob.size);
        return Ok(());
    }

    if let Some(path) = local.get(&blob.digest) {
        let size = blob.size;
        retry(|| async {
            let file = tokio::fs::File::open(path).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
                .map_err(OciDistributionError::IoError);
            client
                .push_blob_stream(target, stream, &blob.digest, Some(size))
                .await
        })
        .await
        .map_err(|e| reg.explain(target, "upload a layer to", e))?;
        count_upload(reg, blob.size);
        return Ok(());
    }

    if !blob.from_base {
        return Err(RegistryError::Other {
            registry: target.resolve_registry().to_string(),
            operation: "upload",
            reference: target.whole(),
            detail: format!("no local file for blob {}", blob.digest),
        });
    }

    // A base layer the target repository lacks: mount it when the base lives on the same
    // registry (no bytes move), otherwise copy it from the base's registry.
    let same_registry = base.reference.resolve_registry() == target.resolve_registry();
    if same_registry {
        // A registry may decline the mount (202 + upload session); then copy.
        if client
            .mount_blob(target, &base.reference, &blob.digest)
            .await
            .is_ok()
        {
            reg.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }
    let base_auth = reg.auth(&base.reference);
    client
        .store_auth_if_needed(base.reference.resolve_registry(), &base_auth)
        .await;
    let size = blob.size;
    retry(|| async {
        let src = client
            .pull_blob_stream(&base.reference, blob.digest.as_str())
            .await?;
        let stream = src.stream.map_err(OciDistributionError::IoError);
        client
            .push_blob_stream(target, stream, &blob.digest, Some(size))
            .await
    })
    .await
    .map_err(|e| reg.explain(target, "copy a base layer to", e))?;
    reg.stats.blobs_copied.fetch_add(1, Ordering::Relaxed);
    count_upload(reg, blob.size);
    Ok(())
}

fn count_upload(reg: &Registry, size: u64) {
    reg.stats.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
    reg.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
}
