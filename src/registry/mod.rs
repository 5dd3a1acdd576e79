//! Talking to OCI registries: resolve the base image, HEAD tags, push blobs and manifests.
//!
//! `oci-client` does the protocol (token and basic auth, uploads); what it leaves to us is
//! here: credentials from the user's files, plain HTTP only for loopback and listed
//! registries, retries with backoff, streaming blobs from disk, and errors that tell the
//! user what to do.

pub mod auth;
pub mod push;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::config::Platform;
use crate::image::{BaseImage, MediaTypes};
use auth::{Credential, CredentialSource, ExplicitCredentials};

/// How to reach registries: which may use plain HTTP, TLS settings, the explicit
/// credentials for the target.
#[derive(Clone, Default)]
pub struct Transport {
    /// HOST[:PORT] reached over plain HTTP (loopback registries are added automatically).
    pub insecure: Vec<String>,
    /// Skip TLS certificate verification — a separate, explicit choice from plain HTTP.
    pub skip_tls_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca_files: Vec<std::path::PathBuf>,
    /// Credentials for the target registry from flags / environment.
    pub explicit: ExplicitCredentials,
    /// The registry (HOST[:PORT]) that explicit credentials apply to.
    pub explicit_for: Option<String>,
    /// Upload blobs with one PUT (true) or chunked PATCHes (false).
    pub monolithic: bool,
    /// Chunk size for chunked uploads.
    pub chunk_size: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} for {reference}: {detail}\n  hint: check the address and that the registry is up; a plain-HTTP registry must be listed in `insecure_registries` (or --insecure-registry)")]
    Unreachable {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("registry {registry} refused {reference} ({status}) with {source_}\n  hint: log in with `podman login {registry}` (or docker login), or set VENVIMG_USERNAME and VENVIMG_PASSWORD; check the account may {action} this repository")]
    Denied {
        registry: String,
        reference: String,
        status: u16,
        source_: CredentialSource,
        action: &'static str,
    },
    #[error("{reference} does not exist on {registry}\n  hint: check the image name and tag; push the base image first if it is yours")]
    NotFound { registry: String, reference: String },
    #[error("{reference}: no manifest for platform {platform} in the image index (it has: {available})\n  hint: set `platform:` in venvimg.yaml to one the base image provides")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry} rejected an upload as too large (413) for {reference}\n  hint: a proxy in front of the registry limits request bodies; use chunked uploads (--chunk-size) or raise the proxy's limit")]
    TooLarge { registry: String, reference: String },
    #[error("registry {registry}: {operation} {reference} failed: {detail}")]
    Other {
        registry: String,
        operation: &'static str,
        reference: String,
        detail: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{reference}: {detail}")]
    BadManifest { reference: String, detail: String },
}

/// A client for every registry an invocation touches, with credentials looked up once
/// per registry.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    transport: Arc<Transport>,
    creds: Arc<Mutex<HashMap<String, Credential>>>,
    pub stats: Arc<push::Stats>,
    warnings: Arc<Mutex<Vec<String>>>,
}

pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl Registry {
    /// `registries` lists every HOST[:PORT] this run will reach, so loopback ones can be
    /// put on plain HTTP up front (oci-client's protocol setting is per client).
    pub fn new(transport: Transport, registries: &[&str]) -> Result<Registry, RegistryError> {
        let mut http: Vec<String> = transport.insecure.clone();
        for r in registries {
            if is_loopback(r) && !http.iter().any(|h| h == r) {
                http.push(r.to_string());
            }
        }
        let mut extra_root_certificates = Vec::new();
        let mut ca_files = transport.ca_files.clone();
        if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
            ca_files.push(f.into());
        }
        for f in &ca_files {
            let data = std::fs::read(f).map_err(|source| RegistryError::Io {
                path: f.clone(),
                source,
            })?;
            extra_root_certificates.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if http.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(http)
            },
            accept_invalid_certificates: transport.skip_tls_verify,
            extra_root_certificates,
            use_monolithic_push: transport.monolithic,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("venvimg/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| RegistryError::Other {
            registry: String::new(),
            operation: "set up the HTTP client for",
            reference: "registries".into(),
            detail: e.to_string(),
        })?;
        Ok(Registry {
            client,
            transport: Arc::new(transport),
            creds: Arc::default(),
            stats: Arc::default(),
            warnings: Arc::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Warnings gathered while looking up credentials (missing helper...), for the printer.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap())
    }

    pub fn credential(&self, registry: &str) -> Credential {
        if let Some(c) = self.creds.lock().unwrap().get(registry) {
            return c.clone();
        }
        let explicit = (self.transport.explicit_for.as_deref() == Some(registry))
            .then_some(&self.transport.explicit);
        let mut warnings = Vec::new();
        let cred = auth::lookup(registry, explicit, &mut |w| warnings.push(w));
        self.warnings.lock().unwrap().extend(warnings);
        self.creds
            .lock()
            .unwrap()
            .insert(registry.to_string(), cred.clone());
        cred
    }

    pub fn auth(&self, r: &Reference) -> RegistryAuth {
        self.credential(r.resolve_registry()).auth
    }

    /// Turn an oci-client error into one that says what to do.
    pub fn explain(
        &self,
        r: &Reference,
        operation: &'static str,
        err: OciDistributionError,
    ) -> RegistryError {
        let registry = r.resolve_registry().to_string();
        let reference = r.whole();
        let action = if operation.starts_with("push") || operation.starts_with("upload") {
            "push to"
        } else {
            "pull from"
        };
        match status_of(&err) {
            Some(401) | Some(403) => {
                return RegistryError::Denied {
                    source_: self.credential(&registry).source,
                    registry,
                    reference,
                    status: status_of(&err).unwrap_or(401),
                    action,
                }
            }
            Some(404) => {
                return RegistryError::NotFound {
                    registry,
                    reference,
                }
            }
            Some(413) => {
                return RegistryError::TooLarge {
                    registry,
                    reference,
                }
            }
            _ => {}
        }
        if let OciDistributionError::AuthenticationFailure(_) = &err {
            return RegistryError::Denied {
                source_: self.credential(&registry).source,
                registry,
                reference,
                status: 401,
                action,
            };
        }
        if let OciDistributionError::RequestError(e) = &err {
            if e.is_connect() || e.is_timeout() {
                return RegistryError::Unreachable {
                    registry,
                    reference,
                    detail: error_chain(e),
                };
            }
        }
        RegistryError::Other {
            registry,
            operation,
            reference,
            detail: match &err {
                OciDistributionError::RequestError(e) => error_chain(e),
                other => other.to_string(),
            },
        }
    }

    /// HEAD a manifest: `Some(digest)` when the tag exists, `None` when the registry says
    /// it is unknown. Costs one request on a hit.
    pub async fn manifest_digest(&self, r: &Reference) -> Result<Option<String>, RegistryError> {
        let auth = self.auth(r);
        let res = retry(|| self.client.fetch_manifest_digest(r, &auth)).await;
        match res {
            Ok(d) => Ok(Some(d)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.explain(r, "look up", e)),
        }
    }

    /// Fetch a manifest's exact bytes and its digest.
    pub async fn manifest_raw(
        &self,
        r: &Reference,
    ) -> Result<(bytes::Bytes, String), RegistryError> {
        let auth = self.auth(r);
        retry(|| {
            self.client
                .pull_manifest_raw(r, &auth, MediaTypes::ACCEPTED_MANIFESTS)
        })
        .await
        .map_err(|e| self.explain(r, "pull", e))
    }

    /// Resolve the base image for `platform`: through an index if it is one, down to the
    /// platform's image manifest and its config.
    pub async fn resolve_base(
        &self,
        base: &Reference,
        platform: &Platform,
    ) -> Result<BaseImage, RegistryError> {
        let (bytes, digest) = self.manifest_raw(base).await?;
        let (manifest_bytes, manifest_digest) = match crate::image::pick_platform(&bytes, platform)
            .map_err(|detail| RegistryError::BadManifest {
                reference: base.whole(),
                detail,
            })? {
            crate::image::Picked::Manifest => (bytes, digest),
            crate::image::Picked::FromIndex { digest: d } => {
                let by_digest = base.clone_with_digest(d.clone());
                let (b, d2) = self.manifest_raw(&by_digest).await?;
                (b, d2)
            }
            crate::image::Picked::NoMatch { available } => {
                return Err(RegistryError::NoPlatform {
                    reference: base.whole(),
                    platform: platform.to_string(),
                    available,
                })
            }
        };
        let manifest = crate::image::parse_manifest(&manifest_bytes).map_err(|detail| {
            RegistryError::BadManifest {
                reference: base.whole(),
                detail,
            }
        })?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.blob_bytes(base, &config_digest).await?;
        BaseImage::new(base.clone(), manifest_digest, manifest, config_bytes).map_err(|detail| {
            RegistryError::BadManifest {
                reference: base.whole(),
                detail,
            }
        })
    }

    /// A small blob (an image config) read into memory.
    pub async fn blob_bytes(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let auth = self.auth(r);
        self.client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        retry(|| async {
            let mut out = Vec::new();
            self.client.pull_blob(r, digest, &mut out).await?;
            Ok(out)
        })
        .await
        .map_err(|e| self.explain(r, "pull blob of", e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The HTTP status behind an oci-client error, where it kept one.
pub fn status_of(err: &OciDistributionError) -> Option<u16> {
    match err {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|e| match e.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
                | OciErrorCode::BlobUnknown => Some(404),
                OciErrorCode::Toomanyrequests => Some(429),
                _ => None,
            })
        }
        OciDistributionError::ImageManifestNotFoundError(_) => Some(404),
        _ => None,
    }
}

fn is_not_found(err: &OciDistributionError) -> bool {
    status_of(err) == Some(404)
}

/// Transient failures worth another try: connection errors, timeouts, 408, 429, 5xx.
pub fn is_transient(err: &OciDistributionError) -> bool {
    match status_of(err) {
        Some(408) | Some(429) => return true,
        Some(s) if s >= 500 => return true,
        Some(_) => return false,
        None => {}
    }
    match err {
        OciDistributionError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
        }
        OciDistributionError::IoError(_) => true,
        // A registry that cut a reply short (reset mid-body) surfaces as these.
        OciDistributionError::RegistryNoLocationError
        | OciDistributionError::RegistryNoDigestError => true,
        _ => false,
    }
}

pub const MAX_ATTEMPTS: u32 = 6;

/// Run `op` until it succeeds, fails for good, or runs out of attempts; exponential
/// backoff (0.2 s, 0.4 s, ... capped at 5 s) with full jitter so concurrent CI jobs do not
/// retry in lockstep. `op` must be safe to repeat (every upload starts a new session).
pub async fn retry<T, F, Fut>(mut op: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < MAX_ATTEMPTS && is_transient(&e) => {
                let cap = Duration::from_millis(200u64 << (attempt - 1).min(5))
                    .min(Duration::from_secs(5));
                let wait = cap.mul_f64(rand::random::<f64>().max(0.1));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.invalid"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
