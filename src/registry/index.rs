//! Image indexes venvimg writes: one per session tag with `platforms:`, listing each
//! platform's image. The bytes depend only on the entries (sorted by platform), so two
//! runners that assemble the same index write the same digest.

use oci_client::Reference;
use serde_json::{json, Value};

use super::{Registry, RegistryError};
use crate::image::MediaTypes;
use crate::model::Digest;
use crate::model::Platform;

/// One platform's image in an index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub platform: Platform,
    /// The image manifest's bytes, as the registry serves them.
    pub manifest: Vec<u8>,
}

/// The index over `entries`, with `title` as its `org.opencontainers.image.title`.
pub fn platform_index(entries: &[IndexEntry], title: &str) -> Vec<u8> {
    let mut sorted: Vec<&IndexEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.platform.to_string());
    let manifests: Vec<Value> = sorted
        .iter()
        .map(|e| {
            let media_type = serde_json::from_slice::<Value>(&e.manifest)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| MediaTypes::OCI_MANIFEST.to_string());
            let mut platform = json!({
                "architecture": e.platform.architecture,
                "os": e.platform.os,
            });
            if let Some(v) = &e.platform.variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": media_type,
                "digest": Digest::of(&e.manifest).as_str(),
                "size": e.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MediaTypes::OCI_INDEX,
        "manifests": manifests,
        "annotations": {"org.opencontainers.image.title": title},
    });
    serde_json::to_vec(&index).expect("an index serialises")
}

impl Registry {
    /// Write `index` under `target`'s tag: every manifest it lists must be in `target`'s
    /// repository already (the registry checks).
    pub async fn push_index(
        &self,
        target: &Reference,
        index: Vec<u8>,
    ) -> Result<(), RegistryError> {
        let auth = self.auth(target);
        let client = self.client_for(target);
        super::retry(|| client.auth(target, &auth, oci_client::RegistryOperation::Push))
            .await
            .map_err(|e| self.explain(target, "push to", e))?;
        let ct: http::HeaderValue = MediaTypes::OCI_INDEX
            .parse()
            .expect("static media type is a valid header");
        super::retry(|| client.push_manifest_raw(target, index.clone(), ct.clone()))
            .await
            .map_err(|e| self.explain(target, "push an image index to", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, manifest: &str) -> IndexEntry {
        IndexEntry {
            platform: Platform::parse(&format!("linux/{arch}")).unwrap(),
            manifest: manifest.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_index_is_the_same_bytes_whatever_order_the_platforms_come_in() {
        let a = entry(
            "amd64",
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
        );
        let b = entry("arm64", r#"{"schemaVersion":2}"#);
        let one = platform_index(&[a.clone(), b.clone()], "tests");
        let a_size = a.manifest.len();
        assert_eq!(one, platform_index(&[b, a.clone()], "tests"));
        let v: Value = serde_json::from_slice(&one).unwrap();
        let m = v["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["platform"]["architecture"], "amd64");
        assert_eq!(m[1]["platform"]["architecture"], "arm64");
        // A manifest without its own mediaType is listed as an OCI manifest.
        assert_eq!(m[1]["mediaType"], MediaTypes::OCI_MANIFEST);
        assert_eq!(m[0]["size"], a_size);
        assert_eq!(m[0]["digest"], Digest::of(&a.manifest).as_str());
        assert_eq!(v["annotations"]["org.opencontainers.image.title"], "tests");
    }
}
