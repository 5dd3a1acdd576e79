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

use tokio::io::AsyncReadExt;

use super::{is_transient, retry, Registry, RegistryError, MAX_CHUNK};
use crate::image::{BaseImage, BlobRef, ComposedImage, MediaTypes};
use crate::model::Digest;

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
/// Read size for monolithic uploads.
const READ_CHUNK: usize = 1 << 20;

impl Registry {
    /// Bytes per stream item: the chunk size for chunked uploads (at most what
    /// oci-client sends in one PATCH), a read buffer for monolithic ones.
    fn upload_piece(&self) -> usize {
        if self.transport.monolithic {
            READ_CHUNK
        } else {
            self.transport
                .chunk_size
                .unwrap_or(MAX_CHUNK)
                .clamp(1, MAX_CHUNK)
        }
    }
}

/// Push `image` to `target` (a repository with a tag). `local` maps the digests of layers
/// packed on this machine to their files.
pub async fn push_image(
    reg: &Registry,
    target: &Reference,
    image: &ComposedImage,
    base: &BaseImage,
    local: &HashMap<Digest, PathBuf>,
) -> Result<String, RegistryError> {
    push_image_from(reg, target, image, base, local, &HashMap::new()).await
}

/// [`push_image`], where `remote` names, by digest, layers that are neither packed here
/// nor the base's but in another repository (a hit in `trusted_repository`): mounted from
/// there on the same registry, else copied.
pub async fn push_image_from(
    reg: &Registry,
    target: &Reference,
    image: &ComposedImage,
    base: &BaseImage,
    local: &HashMap<Digest, PathBuf>,
    remote: &HashMap<Digest, Reference>,
) -> Result<String, RegistryError> {
    let client = reg.client_for(target);
    // Authenticate for push once up front, so a refused credential (or a token that
    // grants no push here) fails before any upload and concurrent uploads share one token.
    reg.authorize_push(target).await?;

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

    let by_digest = Reference::with_digest(
        target.resolve_registry().to_string(),
        target.repository().to_string(),
        image.manifest_digest.to_string(),
    );
    let content_type: http::HeaderValue = MediaTypes::OCI_MANIFEST
        .parse()
        .expect("static media type is a valid header");
    let dest = BlobPush {
        reg,
        target,
        base,
        local,
        remote,
    };
    let dest = &dest;
    let mut round = 0;
    loop {
        round += 1;
        futures_util::stream::iter(all.iter().map(|blob| {
            let config_bytes = (blob.digest == image.config_digest).then(|| image.config.clone());
            async move { dest.push(blob, config_bytes, round).await }
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<Vec<()>>()
        .await?;

        // Manifest by digest first, then the tag: a reader of the tag always finds every
        // blob.
        let pushed = async {
            retry(|| {
                client.push_manifest_raw(&by_digest, image.manifest.clone(), content_type.clone())
            })
            .await
            .map_err(|e| (&by_digest, "push manifest to", e))?;
            retry(|| client.push_manifest_raw(target, image.manifest.clone(), content_type.clone()))
                .await
                .map_err(|e| (target, "push tag to", e))
        }
        .await;
        match pushed {
            Ok(_) => return Ok(image.manifest_digest.to_string()),
            // Another job pushing the same blobs at this moment can make the registry
            // miss one while it verifies our manifest (distribution rewrites a blob's
            // repository link non-atomically); or a blob went away since our HEAD. Check
            // the blobs again, then the manifest again.
            Err((_, _, e)) if round < MANIFEST_ROUNDS && manifest_blob_unknown(&e) => {
                tokio::time::sleep(super::backoff(round, &e)).await;
            }
            Err((r, op, e)) => return Err(reg.explain(r, op, e)),
        }
    }
}

/// How many times the blobs-then-manifest sequence runs when the registry says the
/// manifest references a blob it does not know.
const MANIFEST_ROUNDS: u32 = 4;

/// The registry refused a manifest because a blob it references is unknown or unreadable
/// (`MANIFEST_BLOB_UNKNOWN`, with `DIGEST_INVALID` while a link is being rewritten).
fn manifest_blob_unknown(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            e.code == oci_client::errors::OciErrorCode::ManifestBlobUnknown
                || e.code == oci_client::errors::OciErrorCode::BlobUnknown
        }),
        OciDistributionError::ServerError { code, message, .. } => {
            (*code == 400 || *code == 404)
                && (message.contains("MANIFEST_BLOB_UNKNOWN") || message.contains("BLOB_UNKNOWN"))
        }
        _ => false,
    }
}

/// Where an image's blobs go and where they come from: the target repository, the
/// base image (mounted or copied from), the files packed here.
#[derive(Clone, Copy)]
struct BlobPush<'a> {
    reg: &'a Registry,
    target: &'a Reference,
    base: &'a BaseImage,
    local: &'a HashMap<Digest, PathBuf>,
    remote: &'a HashMap<Digest, Reference>,
}

impl BlobPush<'_> {
    /// Make sure `blob` is in the target repository. The first round trusts what this
    /// invocation already checked or sent there (another image of the same build); a
    /// later round, after the registry refused the manifest, asks again. `inline`: the
    /// config's bytes.
    async fn push(
        &self,
        blob: &BlobRef,
        inline: Option<Vec<u8>>,
        round: u32,
    ) -> Result<(), RegistryError> {
        if round == 1 && self.reg.known_present(self.target, &blob.digest) {
            return Ok(());
        }
        ensure_blob(*self, blob, inline, round).await?;
        self.reg.mark_present(self.target, &blob.digest);
        Ok(())
    }
}

async fn ensure_blob(
    dest: BlobPush<'_>,
    blob: &BlobRef,
    inline: Option<Vec<u8>>,
    round: u32,
) -> Result<(), RegistryError> {
    let BlobPush {
        reg, target, local, ..
    } = dest;
    // The target's client; the base's registry may be reached with another one (its own
    // TLS verification and credential).
    let client = reg.client_for(target);
    if dest.present(&client, blob, round).await? {
        return Ok(());
    }

    if let Some(bytes) = inline {
        retry(|| client.push_blob(target, bytes.clone(), blob.digest.as_str()))
            .await
            .map_err(|e| reg.explain(target, "upload the config to", e))?;
        count_upload(reg, blob.size);
        return Ok(());
    }

    if let Some(path) = local.get(blob.digest.as_str()) {
        let size = blob.size;
        let piece = reg.upload_piece();
        retry(|| async {
            // Each attempt re-opens the file and starts a new upload session.
            let file = tokio::fs::File::open(path).await?;
            client
                .push_blob_stream(
                    target,
                    file_pieces(file, piece),
                    blob.digest.as_str(),
                    Some(size),
                )
                .await
        })
        .await
        .map_err(|e| reg.explain(target, "upload a layer to", e))?;
        count_upload(reg, blob.size);
        return Ok(());
    }

    // A base layer (or another repository's) the target repository lacks: mount it when
    // it lives on the same registry (no bytes move), otherwise copy it from there.
    let from = dest.source(blob)?;
    if from.resolve_registry() == target.resolve_registry()
        && dest.mount(&client, blob, from).await?
    {
        return Ok(());
    }
    dest.copy(&client, blob, from).await
}

impl<'a> BlobPush<'a> {
    /// Is `blob` in the target repository already? Counted as present in the first round.
    async fn present(
        &self,
        client: &oci_client::Client,
        blob: &BlobRef,
        round: u32,
    ) -> Result<bool, RegistryError> {
        let (reg, target) = (self.reg, self.target);
        // A 400 to a HEAD has no body to explain it; with distribution it is the blob's link
        // being rewritten by a concurrent push of the same blob (DIGEST_INVALID): ask again.
        let exists = super::retry_when(
            || client.blob_exists(target, blob.digest.as_str()),
            |attempt, e| attempt < 4 && super::status_of(e) == Some(400),
        )
        .await
        .map_err(|e| reg.explain(target, "check a blob in", e))?;
        if exists && round == 1 {
            reg.stats.blobs_present.fetch_add(1, Ordering::Relaxed);
            reg.stats
                .bytes_present
                .fetch_add(blob.size, Ordering::Relaxed);
        }
        Ok(exists)
    }

    /// Where a blob with no local file comes from: the base image, or another
    /// repository.
    fn source(&self, blob: &BlobRef) -> Result<&'a Reference, RegistryError> {
        if blob.from_base {
            Ok(&self.base.reference)
        } else if let Some(r) = self.remote.get(blob.digest.as_str()) {
            Ok(r)
        } else {
            Err(RegistryError::Other {
                registry: self.target.resolve_registry().to_string(),
                operation: "upload",
                reference: self.target.whole(),
                detail: format!("no local file for blob {}", blob.digest),
            })
        }
    }

    /// Mount `blob` from `from`, on the target's registry; `false` when the registry
    /// would not (then it is copied).
    async fn mount(
        &self,
        client: &oci_client::Client,
        blob: &BlobRef,
        from: &Reference,
    ) -> Result<bool, RegistryError> {
        let (reg, target) = (self.reg, self.target);
        let registry = target.resolve_registry();
        // A registry may decline the mount (202 + an upload session, a SpecViolation to
        // oci-client) or refuse it (no pull access to the source): then copy. A token
        // registry refuses oci-client's mount (its token names the target only) with a
        // 401: from then on mounts there ask for a token naming both repositories.
        if !reg.scoped_mounts.lock().unwrap().contains(registry) {
            match retry(|| client.mount_blob(target, from, blob.digest.as_str())).await {
                Ok(()) => {
                    reg.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(e) if is_transient(&e) => {
                    return Err(reg.explain(target, "mount a layer in", e));
                }
                Err(e) if super::status_of(&e) == Some(401) => {
                    reg.scoped_mounts
                        .lock()
                        .unwrap()
                        .insert(registry.to_string());
                }
                Err(_) => {}
            }
        }
        if reg.scoped_mounts.lock().unwrap().contains(registry)
            && reg
                .mount_with_source_scope(target, from, &blob.digest)
                .await
        {
            reg.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Copy `blob` from `from` (streamed through, never whole in memory).
    async fn copy(
        &self,
        client: &oci_client::Client,
        blob: &BlobRef,
        from: &Reference,
    ) -> Result<(), RegistryError> {
        let (reg, target) = (self.reg, self.target);
        let from_auth = reg.auth(from);
        let source = reg.client_for(from);
        source
            .store_auth_if_needed(from.resolve_registry(), &from_auth)
            .await;
        let size = blob.size;
        let piece = reg.upload_piece();
        retry(|| async {
            let src = source.pull_blob_stream(from, blob.digest.as_str()).await?;
            let stream = src.stream.map_err(OciDistributionError::IoError);
            // Network reads are small; a chunked upload must not turn each into a PATCH.
            let stream = regroup(stream, piece);
            client
                .push_blob_stream(target, stream, blob.digest.as_str(), Some(size))
                .await
        })
        .await
        .map_err(|e| reg.explain(target, "copy a layer to", e))?;
        reg.stats.blobs_copied.fetch_add(1, Ordering::Relaxed);
        count_upload(reg, blob.size);
        Ok(())
    }
}

/// The file as a stream of `piece`-byte `Bytes` (the last one shorter): what a chunked
/// upload sends per PATCH, and what a monolithic one hands to the socket at a time. Only
/// one piece is in memory per upload.
fn file_pieces(
    file: tokio::fs::File,
    piece: usize,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(file, move |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(piece);
        while buf.len() < piece {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok((!buf.is_empty()).then(|| (buf.freeze(), file)))
    })
}

/// `stream` regrouped into `piece`-byte items (the last one shorter).
fn regroup<S>(
    stream: S,
    piece: usize,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>>
        + Send
        + Unpin
        + 'static,
{
    futures_util::stream::try_unfold(
        (stream, bytes::BytesMut::new(), false),
        move |(mut stream, mut buf, mut done)| async move {
            while !done && buf.len() < piece {
                match stream.try_next().await? {
                    Some(b) => buf.extend_from_slice(&b),
                    None => done = true,
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let out = buf.split_to(piece.min(buf.len())).freeze();
            Ok(Some((out, (stream, buf, done))))
        },
    )
}

fn count_upload(reg: &Registry, size: u64) {
    reg.stats.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
    reg.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn regroup_makes_pieces_of_the_chunk_size() {
        let items: Vec<Result<bytes::Bytes, OciDistributionError>> = [3usize, 5, 1, 0, 7]
            .iter()
            .map(|&n| Ok(bytes::Bytes::from(vec![7u8; n])))
            .collect();
        let sizes: Vec<usize> = regroup(futures_util::stream::iter(items), 4)
            .map_ok(|b| b.len())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(sizes, vec![4, 4, 4, 4]);
    }

    #[tokio::test]
    async fn file_pieces_read_whole_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![1u8; (3 << 20) + 5]).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let sizes: Vec<usize> = file_pieces(file, 1 << 20)
            .map_ok(|b| b.len())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(sizes, vec![1 << 20, 1 << 20, 1 << 20, 5]);
    }

    #[test]
    fn a_manifest_refused_for_an_unknown_blob_is_told_apart() {
        let body = r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:0c"}]}"#;
        let err = OciDistributionError::ServerError {
            code: 400,
            url: "http://127.0.0.1:1/v2/x/manifests/sha256:00".into(),
            message: body.into(),
        };
        assert!(manifest_blob_unknown(&err));
        let other = OciDistributionError::ServerError {
            code: 400,
            url: String::new(),
            message: r#"{"errors":[{"code":"MANIFEST_INVALID"}]}"#.into(),
        };
        assert!(!manifest_blob_unknown(&other));
    }
}
