//! OCI 1.1 referrers: artifacts whose `subject` is an image (venvimg's SBOMs).
//!
//! A registry with the referrers API (`GET /v2/<name>/referrers/<digest>` answering 200
//! with an image index) lists a manifest with a `subject` by itself: pushing it by digest
//! is all. One without it (a 404 there; distribution 2.8, GHCR) gets the distribution
//! spec's fallback, the *referrers tag schema*: an image index under the tag
//! `sha256-<hex of the subject's digest>` lists the referrers, and whoever pushes one
//! reads that index, adds its descriptor and writes it back — so other tools' referrers
//! (signatures, attestations) stay listed.

use std::collections::BTreeMap;

use oci_client::Reference;
use serde_json::{json, Value};

use super::delete::Call;
use super::{at_tag, Registry, RegistryError};
use crate::image::MediaTypes;
use crate::model::{Digest, Tag};

/// The OCI empty descriptor's media type and bytes: the config of artifacts.
pub(crate) const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(crate) const EMPTY: &[u8] = b"{}";

/// The referrers tag schema's tag of the image `digest` (`sha256:<hex>` → `sha256-<hex>`).
pub fn fallback_tag(digest: &Digest) -> Tag {
    Tag::parse(&format!("sha256-{}", digest.hex())).expect("sha256- and 64 hex is a tag")
}

/// The image digest a referrers fallback tag is for, if `tag` is exactly one.
pub fn fallback_subject(tag: &str) -> Option<Digest> {
    let hex = tag.strip_prefix("sha256-")?;
    Digest::parse(&format!("{}{hex}", Digest::PREFIX)).ok()
}

/// An artifact to push with a subject: one blob, an empty config.
#[derive(Debug, Clone)]
pub struct Artifact<'a> {
    /// The manifest's `artifactType` and the blob's media type.
    pub artifact_type: &'a str,
    pub data: &'a [u8],
    /// On the manifest (and so in the referrers list).
    pub annotations: BTreeMap<String, String>,
    /// On the blob's descriptor (`org.opencontainers.image.title`: its file name for oras).
    pub layer_annotations: BTreeMap<String, String>,
}

/// Where a registry lists an image's referrers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The referrers API.
    Api,
    /// The referrers tag schema: this tag.
    Tag(Tag),
}

/// What [`Registry::remove_referrers`] will delete for one subject: checked referrers,
/// and what becomes of the referrers tag's index.
#[derive(Debug, Clone)]
pub struct RemovalPlan {
    pub subject: Digest,
    pub referrers: Vec<Digest>,
    pub index: Option<IndexChange>,
}

impl RemovalPlan {
    /// Every digest carrying out the plan deletes.
    pub fn deletions(&self) -> Vec<Digest> {
        let mut all = self.referrers.clone();
        if let Some(IndexChange::Delete(d)) = &self.index {
            all.push(d.clone());
        }
        all
    }
}

/// The referrers tag's index after a removal.
#[derive(Debug, Clone)]
pub enum IndexChange {
    /// It listed nothing else: deleted.
    Delete(Digest),
    /// Written back with the others.
    Rewrite(Value),
}

/// A manifest with a subject, as [`Registry::push_referrer`] pushed it.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: Digest,
    pub via: Via,
    /// Whether the referrers list already had it (the same bytes pushed before).
    pub already_listed: bool,
}

/// The manifest of `artifact` with `subject` (an image manifest's digest and size).
pub fn artifact_manifest(artifact: &Artifact, subject: &Digest, subject_size: usize) -> Vec<u8> {
    let empty = json!({
        "mediaType": EMPTY_TYPE,
        "digest": Digest::of(EMPTY).as_str(),
        "size": EMPTY.len(),
    });
    let mut layer = json!({
        "mediaType": artifact.artifact_type,
        "digest": Digest::of(artifact.data).as_str(),
        "size": artifact.data.len(),
    });
    if !artifact.layer_annotations.is_empty() {
        layer["annotations"] = json!(artifact.layer_annotations);
    }
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MediaTypes::OCI_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": empty,
        "layers": [layer],
        "subject": {"mediaType": MediaTypes::OCI_MANIFEST, "digest": subject, "size": subject_size},
    });
    if !artifact.annotations.is_empty() {
        m["annotations"] = json!(artifact.annotations);
    }
    serde_json::to_vec(&m).expect("a manifest serialises")
}

/// The descriptor a referrers list holds for `manifest` (the spec: media type, digest,
/// size, artifactType and the manifest's annotations).
fn descriptor_of(manifest: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(manifest).unwrap_or_default();
    let mut d = json!({
        "mediaType": MediaTypes::OCI_MANIFEST,
        "digest": Digest::of(manifest).as_str(),
        "size": manifest.len(),
    });
    if let Some(t) = v.get("artifactType") {
        d["artifactType"] = t.clone();
    }
    if let Some(a) = v.get("annotations") {
        d["annotations"] = a.clone();
    }
    d
}

fn at_digest(repo: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        repo.resolve_registry().to_string(),
        repo.repository().to_string(),
        digest.to_string(),
    )
}

fn content_type(media_type: &str) -> http::HeaderValue {
    media_type
        .parse()
        .expect("static media type is a valid header")
}

impl Registry {
    /// Upload the small blob `bytes` to `target`'s repository unless it is there.
    pub(crate) async fn ensure_small_blob(
        &self,
        target: &Reference,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let digest = Digest::of(bytes).into_string();
        let client = self.client_for(target);
        let exists = super::retry(|| client.blob_exists(target, &digest))
            .await
            .map_err(|e| self.explain(target, "check a blob in", e))?;
        if !exists {
            super::retry(|| client.push_blob(target, bytes.to_vec(), &digest))
                .await
                .map_err(|e| self.explain(target, "push a blob to", e))?;
        }
        Ok(digest)
    }

    /// Authenticate for pushing to `target`'s repository, and upload the empty config.
    pub(crate) async fn prepare_artifact_push(
        &self,
        target: &Reference,
    ) -> Result<String, RegistryError> {
        self.guard_realm(target)?;
        let auth = self.auth(target);
        let client = self.client_for(target);
        super::retry(|| client.auth(target, &auth, oci_client::RegistryOperation::Push))
            .await
            .map_err(|e| self.explain(target, "push to", e))?;
        self.ensure_small_blob(target, EMPTY).await
    }

    /// The referrers API's list for `subject` in `repo`'s repository: `None` when the
    /// registry has no referrers API (a 404, or an answer that is no image index).
    pub async fn referrers_api(
        &self,
        repo: &Reference,
        subject: &Digest,
    ) -> Result<Option<Vec<Value>>, RegistryError> {
        let subject = subject.as_str();
        let answer = match self
            .request(
                repo,
                &Call {
                    method: reqwest::Method::GET,
                    path: format!("referrers/{subject}"),
                    accept: Some(MediaTypes::OCI_INDEX),
                    reference: at_digest(repo, subject).whole(),
                    operation: "list the referrers of",
                    action: "pull from",
                },
            )
            .await
        {
            Ok(a) => a,
            // A listing refused with the credentials that may push here (a token service
            // scoping this endpoint differently): the tag schema, through oci-client's
            // own authentication, still works.
            Err(RegistryError::Denied { .. } | RegistryError::Withheld { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if answer.status != 200 {
            return Ok(None);
        }
        let Ok(v) = serde_json::from_slice::<Value>(&answer.body) else {
            return Ok(None);
        };
        Ok(v["manifests"].as_array().cloned())
    }

    /// The referrers index under `subject`'s fallback tag, and its digest; None when the
    /// tag does not exist. A tag there that is no image index is an error: venvimg will
    /// not overwrite it.
    async fn fallback_index(
        &self,
        repo: &Reference,
        subject: &Digest,
    ) -> Result<Option<(Value, Digest)>, RegistryError> {
        let tag_ref = at_tag(repo, &fallback_tag(subject));
        let Some((bytes, digest)) = self.manifest_if_exists(&tag_ref).await? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if v["mediaType"].as_str() != Some(MediaTypes::OCI_INDEX) || !v["manifests"].is_array() {
            return Err(RegistryError::BadManifest {
                reference: tag_ref.whole(),
                detail: "this referrers tag (OCI referrers tag schema) holds something other than an image index; remove or rename that tag".into(),
            });
        }
        Ok(Some((v, digest)))
    }

    /// Every referrer of `subject` (an image digest in `repo`'s repository): through the
    /// referrers API, else the fallback tag's index (none when it is missing).
    pub async fn referrers(
        &self,
        repo: &Reference,
        subject: &Digest,
    ) -> Result<(Vec<Value>, Via), RegistryError> {
        if let Some(list) = self.referrers_api(repo, subject).await? {
            return Ok((list, Via::Api));
        }
        let via = Via::Tag(fallback_tag(subject));
        Ok(match self.fallback_index(repo, subject).await? {
            Some((index, _)) => (
                index["manifests"].as_array().cloned().unwrap_or_default(),
                via,
            ),
            None => (Vec::new(), via),
        })
    }

    /// Push `artifact` with `subject` (an image in `repo`'s repository, `subject_size`
    /// bytes of manifest): its blob and the empty config, its manifest by digest, then —
    /// where the registry has no referrers API — its descriptor added to the fallback
    /// tag's index (read, add, write back; an index that lists it already is left alone).
    pub async fn push_referrer(
        &self,
        repo: &Reference,
        subject: &Digest,
        subject_size: usize,
        artifact: &Artifact<'_>,
    ) -> Result<Pushed, RegistryError> {
        // The listing first: it says whether the registry has the referrers API (and
        // whether this exact SBOM is there already), before anything is written.
        let api = self.referrers_api(repo, subject).await?;
        self.prepare_artifact_push(repo).await?;
        self.ensure_small_blob(repo, artifact.data).await?;
        let manifest = artifact_manifest(artifact, subject, subject_size);
        let digest = Digest::of(&manifest);
        let by_digest = at_digest(repo, digest.as_str());
        let client = self.client_for(repo);
        let ct = content_type(MediaTypes::OCI_MANIFEST);
        super::retry(|| client.push_manifest_raw(&by_digest, manifest.clone(), ct.clone()))
            .await
            .map_err(|e| self.explain(&by_digest, "push a manifest to", e))?;

        if let Some(list) = api {
            // The registry lists it by itself (its `subject`): nothing more to write.
            let listed = list
                .iter()
                .any(|d| d["digest"].as_str() == Some(digest.as_str()));
            return Ok(Pushed {
                digest,
                via: Via::Api,
                already_listed: listed,
            });
        }
        let tag = fallback_tag(subject);
        let mut index = match self.fallback_index(repo, subject).await? {
            Some((index, _)) => index,
            None => json!({
                "schemaVersion": 2,
                "mediaType": MediaTypes::OCI_INDEX,
                "manifests": [],
            }),
        };
        let manifests = index["manifests"]
            .as_array_mut()
            .expect("fallback_index checked it is a list");
        if manifests
            .iter()
            .any(|d| d["digest"].as_str() == Some(digest.as_str()))
        {
            return Ok(Pushed {
                digest,
                via: Via::Tag(tag),
                already_listed: true,
            });
        }
        manifests.push(descriptor_of(&manifest));
        self.put_index(repo, &tag, &index).await?;
        Ok(Pushed {
            digest,
            via: Via::Tag(tag),
            already_listed: false,
        })
    }

    async fn put_index(
        &self,
        repo: &Reference,
        tag: &Tag,
        index: &Value,
    ) -> Result<(), RegistryError> {
        let tag_ref = at_tag(repo, tag);
        let bytes = serde_json::to_vec(index).expect("an index serialises");
        let client = self.client_for(repo);
        let ct = content_type(MediaTypes::OCI_INDEX);
        super::retry(|| client.push_manifest_raw(&tag_ref, bytes.clone(), ct.clone()))
            .await
            .map_err(|e| self.explain(&tag_ref, "push tag to", e))?;
        Ok(())
    }

    /// Which referrers of `subject` (an image of `repo`'s repository) are venvimg's to
    /// delete, checked one by one, without deleting anything: each listed descriptor of
    /// `artifact_type` whose digest parses as a [`Digest`] (a list naming anything else is
    /// refused whole), that is not in `protected`, and whose manifest, fetched by that
    /// digest, has `artifact_type`, the `annotation`, `subject` as its subject and the
    /// size its descriptor gives. The others stay listed.
    pub async fn plan_referrer_removal(
        &self,
        repo: &Reference,
        subject: &Digest,
        artifact_type: &str,
        annotation: &str,
        protected: &std::collections::HashSet<String>,
    ) -> Result<RemovalPlan, RegistryError> {
        let (list, index) = match self.referrers_api(repo, subject).await? {
            Some(list) => (list, None),
            None => match self.fallback_index(repo, subject).await? {
                Some((index, digest)) => (
                    index["manifests"].as_array().cloned().unwrap_or_default(),
                    Some((index, digest)),
                ),
                None => (Vec::new(), None),
            },
        };
        let listed_at = match &index {
            Some(_) => at_tag(repo, &fallback_tag(subject)).whole(),
            None => at_digest(repo, subject.as_str()).whole(),
        };
        let mut ours: Vec<Digest> = Vec::new();
        for d in &list {
            if d["artifactType"].as_str() != Some(artifact_type) {
                continue;
            }
            let raw = d["digest"].as_str().unwrap_or_default();
            let digest = Digest::parse(raw).map_err(|e| RegistryError::BadManifest {
                reference: listed_at.clone(),
                detail: format!(
                    "its referrers list names {e}; refusing to delete anything it lists"
                ),
            })?;
            if protected.contains(digest.as_str()) || ours.contains(&digest) {
                continue;
            }
            let Some((bytes, _)) = self
                .manifest_if_exists(&at_digest(repo, digest.as_str()))
                .await?
            else {
                continue;
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let checked = v["artifactType"].as_str() == Some(artifact_type)
                && v["annotations"][annotation].is_string()
                && v["subject"]["digest"].as_str() == Some(subject.as_str())
                && d["size"].as_u64() == Some(bytes.len() as u64);
            if checked {
                ours.push(digest);
            }
        }
        let index = match index {
            Some((mut index, digest)) if !ours.is_empty() => {
                let others: Vec<Value> = list
                    .into_iter()
                    .filter(|d| {
                        !d["digest"]
                            .as_str()
                            .is_some_and(|x| ours.iter().any(|o| o.as_str() == x))
                    })
                    .collect();
                Some(
                    if others.is_empty() && !protected.contains(digest.as_str()) {
                        IndexChange::Delete(digest)
                    } else {
                        index["manifests"] = Value::Array(others);
                        IndexChange::Rewrite(index)
                    },
                )
            }
            _ => None,
        };
        Ok(RemovalPlan {
            subject: subject.clone(),
            referrers: ours,
            index,
        })
    }

    /// Carry out `plan` ([`plan_referrer_removal`](Self::plan_referrer_removal)): delete
    /// exactly its referrers, then its referrers tag's index (or write it back without
    /// them). Returns every digest deleted.
    pub async fn remove_referrers(
        &self,
        repo: &Reference,
        plan: &RemovalPlan,
    ) -> Result<Vec<Digest>, RegistryError> {
        let mut deleted = Vec::new();
        for d in &plan.referrers {
            self.delete_manifest(repo, d).await?;
            deleted.push(d.clone());
        }
        match &plan.index {
            Some(IndexChange::Delete(d)) => {
                self.delete_manifest(repo, d).await?;
                deleted.push(d.clone());
            }
            Some(IndexChange::Rewrite(index)) => {
                self.put_index(repo, &fallback_tag(&plan.subject), index)
                    .await?;
            }
            None => {}
        }
        Ok(deleted)
    }

    /// The one blob of the referrer `digest` (an artifact manifest of `artifact_type`),
    /// checked against its descriptor; at most `cap` bytes.
    pub async fn referrer_blob(
        &self,
        repo: &Reference,
        digest: &str,
        artifact_type: &str,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let r = at_digest(repo, digest);
        let (bytes, _) = self.manifest_raw(&r).await?;
        let bad = |detail: String| RegistryError::BadManifest {
            reference: r.whole(),
            detail,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let layer = v["layers"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["mediaType"] == artifact_type))
            .ok_or_else(|| bad(format!("no {artifact_type} layer")))?;
        let (Some(blob), Some(size)) = (layer["digest"].as_str(), layer["size"].as_u64()) else {
            return Err(bad("its layer has no digest or size".into()));
        };
        let blob = Digest::parse(blob).map_err(|e| bad(e.to_string()))?;
        if size > cap {
            return Err(bad(format!("its layer is {size} bytes, more than {cap}")));
        }
        let data = self.blob_bytes(&r, blob.as_str(), size).await?;
        if data.len() as u64 != size || Digest::of(&data) != blob {
            return Err(bad(format!(
                "the registry served other bytes than {} ({size} bytes)",
                blob.as_str()
            )));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_round_trip() {
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "ab".repeat(32)));
        assert_eq!(fallback_subject(fallback_tag(&d).as_str()), Some(d.clone()));
        assert_eq!(
            fallback_subject(&format!("{}.pushed", fallback_tag(&d))),
            None
        );
        assert_eq!(fallback_subject("sha256-abc"), None);
    }

    #[test]
    fn an_artifact_manifest_names_its_subject_and_type() {
        let a = Artifact {
            artifact_type: "application/vnd.cyclonedx+json",
            data: b"{}\n",
            annotations: [("a".to_string(), "b".to_string())].into(),
            layer_annotations: BTreeMap::new(),
        };
        let subject = Digest::parse(&format!("sha256:{}", "cd".repeat(32))).unwrap();
        let m = artifact_manifest(&a, &subject, 42);
        let v: Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["artifactType"], a.artifact_type);
        assert_eq!(v["subject"]["digest"], subject.as_str());
        assert_eq!(v["config"]["mediaType"], EMPTY_TYPE);
        let d = descriptor_of(&m);
        assert_eq!(d["digest"], Digest::of(&m).as_str());
        assert_eq!(d["artifactType"], a.artifact_type);
        assert_eq!(d["annotations"]["a"], "b");
    }
}
