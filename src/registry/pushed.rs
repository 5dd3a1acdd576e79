//! When venvimg first pushed an image: a tiny marker next to it.
//!
//! Images are reproducible, so their bytes hold no push time (`created` is fixed). `build`
//! therefore pushes, next to each image it pushes, a marker under the tag
//! `sha256-<hex of the image's manifest digest>.pushed` (the shape of the OCI referrers
//! tag-schema fallback, with a suffix of its own): an OCI artifact manifest whose
//! `subject` is the image and whose annotations carry the time of the first push. It is
//! written once per image (an existing marker is left alone, so re-pushes leave no
//! untagged versions behind); `prune` reads it for "newest" and `--keep-for`, and
//! deletes it with its image.

use oci_client::Reference;

use super::referrers::{EMPTY, EMPTY_TYPE};
use super::{Registry, RegistryError};
use crate::image::MediaTypes;
use crate::model::{Digest, Tag};

/// The marker's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.venvimg.pushed.v1";
/// Seconds since the Unix epoch of the first push (the machine's clock).
pub const PUSHED_UNIX: &str = "dev.venvimg.pushed.unix";
/// The same time, RFC 3339, for people.
pub const CREATED: &str = "org.opencontainers.image.created";
/// The tag the image was pushed under.
pub const PUSHED_TAG: &str = "dev.venvimg.pushed.tag";
const SUFFIX: &str = ".pushed";

/// `sha256-<hex>.pushed` for the image `digest` (`sha256:<hex>`).
pub fn marker_tag(digest: &Digest) -> Tag {
    Tag::parse(&format!(
        "{}{SUFFIX}",
        super::referrers::fallback_tag(digest)
    ))
    .expect("a fallback tag and .pushed is a tag")
}

/// The image digest a marker tag is for, if `tag` is one.
pub fn marker_subject(tag: &str) -> Option<Digest> {
    super::referrers::fallback_subject(tag.strip_suffix(SUFFIX)?)
}

/// What a marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The marker manifest's own digest (what deleting it takes).
    pub digest: Digest,
    /// The image it is for.
    pub subject: Digest,
    /// First push, seconds since the Unix epoch.
    pub pushed_unix: u64,
}

/// Parse a marker manifest (`digest`: its own digest); None when it is not one.
pub fn parse_marker(bytes: &[u8], digest: &Digest) -> Option<Marker> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v["artifactType"].as_str() != Some(ARTIFACT_TYPE) {
        return None;
    }
    Some(Marker {
        digest: digest.clone(),
        subject: Digest::parse(v["subject"]["digest"].as_str()?).ok()?,
        pushed_unix: v["annotations"][PUSHED_UNIX].as_str()?.parse().ok()?,
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of `unix`.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Registry {
    /// Push the marker of the image `digest` (`size` bytes of manifest) just pushed as
    /// `target`, unless it has one already. Returns whether it wrote one.
    pub async fn mark_pushed(
        &self,
        target: &Reference,
        digest: &Digest,
        size: usize,
    ) -> Result<bool, RegistryError> {
        let marker_ref = super::at_tag(target, &marker_tag(digest));
        if let Some((bytes, d)) = self.manifest_if_exists(&marker_ref).await? {
            if parse_marker(&bytes, &d).is_some_and(|m| m.subject == *digest) {
                return Ok(false);
            }
        }
        self.authorize_push(target).await?;
        let empty_digest = self.prepare_artifact_push(target).await?;
        let client = self.client_for(target);
        let now = now_unix();
        let empty = serde_json::json!({
            "mediaType": EMPTY_TYPE, "digest": empty_digest, "size": EMPTY.len(),
        });
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaTypes::OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": empty,
            "layers": [empty],
            "subject": {"mediaType": MediaTypes::OCI_MANIFEST, "digest": digest, "size": size},
            "annotations": {
                CREATED: rfc3339(now),
                PUSHED_UNIX: now.to_string(),
                PUSHED_TAG: target.tag().unwrap_or_default(),
            },
        }))
        .expect("marker serialises");
        let content_type: http::HeaderValue = MediaTypes::OCI_MANIFEST
            .parse()
            .expect("static media type is a valid header");
        super::retry(|| {
            client.push_manifest_raw(&marker_ref, manifest.clone(), content_type.clone())
        })
        .await
        .map_err(|e| self.explain(&marker_ref, "push tag to", e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_tags_round_trip() {
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let tag = marker_tag(&d);
        assert_eq!(tag, format!("sha256-{}.pushed", "ab".repeat(32)));
        assert!(tag.as_str().len() <= 128, "a tag is at most 128 characters");
        assert_eq!(marker_subject(tag.as_str()), Some(d));
        assert_eq!(marker_subject("sha256-abc.pushed"), None);
        assert_eq!(marker_subject("tests-0123456789abcdef"), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
