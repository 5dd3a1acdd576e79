//! Talking to OCI registries: resolve the base image, HEAD tags, push blobs and manifests.
//!
//! `oci-client` does the protocol (token and basic auth, uploads); what it leaves to us is
//! here: credentials from the user's files, sent only where they belong (the registry
//! they are for, a token service over HTTPS), plain HTTP only for loopback and listed
//! registries, TLS verification skipped only for the registries named, retries with
//! backoff, streaming blobs from disk, and errors that tell the user what to do.

pub mod auth;
pub mod challenge;
pub mod delete;
pub mod index;
pub mod push;
pub mod pushed;
pub mod referrers;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::client::{AsLayerDescriptor, ClientConfig, ClientProtocol, TagResponse};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::image::{BaseImage, MediaTypes};
use crate::model::{Digest, Platform, Tag};
use auth::{Credential, CredentialSource, ExplicitCredentials};
use challenge::{same_registry, Challenge, Verdict};

const USER_AGENT: &str = concat!("venvimg/", env!("CARGO_PKG_VERSION"));

/// How loud a message from the registry layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something the user should know or fix (shown even with `-q`).
    Warning,
    /// Detail for `-v`.
    Detail,
}

/// Where the registry layer's messages go as they happen (the printer). They never hold
/// a secret: only registries, hosts, files and credential sources.
pub type Notes = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// How to reach registries: which may use plain HTTP, TLS settings, the explicit
/// credentials for the target.
#[derive(Clone, Default)]
pub struct Transport {
    /// HOST[:PORT] reached over plain HTTP (loopback registries are added automatically).
    pub insecure: Vec<String>,
    /// HOST[:PORT] of the registries whose TLS certificates are not verified — a
    /// separate, explicit choice from plain HTTP, and only for the registries named
    /// (not the others, nor their token services unless named too).
    pub skip_tls_verify: Vec<String>,
    /// Extra CA certificates (PEM files).
    pub ca_files: Vec<std::path::PathBuf>,
    /// Credentials from flags / environment.
    pub explicit: ExplicitCredentials,
    /// The registry (HOST[:PORT]) that explicit credentials apply to; no other gets them.
    pub explicit_for: Option<String>,
    /// Upload blobs with one streamed PUT (true) or chunked PATCHes (false).
    pub monolithic: bool,
    /// Bytes per PATCH for chunked uploads; capped at [`MAX_CHUNK`] (oci-client splits
    /// anything larger). `None`: [`MAX_CHUNK`].
    pub chunk_size: Option<usize>,
    /// Where warnings and details go as they happen; without it, warnings are kept for
    /// [`Registry::take_warnings`] and details dropped.
    pub notes: Option<Notes>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot reach registry {registry} for {reference}: {detail}\n  hint: {}",
        unreachable_hint(registry, detail)
    )]
    Unreachable {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error(
        "cannot reach registry {registry} for {reference} over TLS: {detail}\n  hint: {}",
        tls_hint(registry, detail)
    )]
    Tls {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("registry {registry} refused {reference} ({status}); tried {source_}\n  hint: log in with `podman login {registry}` (or docker login), or set VENVIMG_USERNAME and VENVIMG_PASSWORD; check the account may {action} this repository")]
    Denied {
        registry: String,
        reference: String,
        status: u16,
        source_: Box<CredentialSource>,
        action: &'static str,
    },
    #[error("registry {registry}: {source_} may not push to repository {repository} (its token service granted {granted} there); nothing was pushed\n  hint: push to a repository these credentials may write (a pull-request job: `--repository` its own, with `trusted_repository:` naming the protected branch's to reuse its images), or run with credentials allowed to push to {repository}")]
    PushNotGranted {
        registry: String,
        repository: String,
        source_: Box<CredentialSource>,
        granted: String,
    },
    #[error("registry {registry} refused {reference} ({status}) without credentials: {source_}\n  hint: {hint}")]
    Withheld {
        registry: String,
        reference: String,
        status: u16,
        source_: Box<CredentialSource>,
        hint: String,
    },
    #[error("{reference} does not exist on {registry}\n  hint: {hint}")]
    NotFound {
        registry: String,
        reference: String,
        hint: &'static str,
    },
    #[error("registry {registry} refused a push to {reference}: 404{}, the repository name is unknown to it\n  hint: check `repository:` in venvimg.yaml; registries such as Forgejo/Gitea, GitLab, Harbor or ECR need the owner, project or repository to exist (and the account to be allowed to push there) before a push", if *name_unknown { " NAME_UNKNOWN" } else { "" })]
    NameUnknown {
        registry: String,
        reference: String,
        name_unknown: bool,
    },
    #[error("{reference}: no image for platform {platform} (it has: {available})\n  hint: set `platform:` (or `platforms:`) in venvimg.yaml to what the base image provides, or give a base image that has {platform}")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry} rejected an upload as too large (413) for {reference}\n  hint: a proxy in front of the registry limits request bodies; upload in chunks below its limit with --chunk-size MIB (e.g. --chunk-size 1; at most 4), or raise the proxy's limit")]
    TooLarge { registry: String, reference: String },
    #[error("registry {registry}: {operation} {reference} failed: {detail}")]
    Other {
        registry: String,
        operation: &'static str,
        reference: String,
        detail: String,
    },
    #[error("registry {registry} refuses to delete {reference} ({status}{code}): deletes are not enabled there\n  hint: {hint}")]
    DeleteRefused {
        registry: String,
        reference: String,
        status: u16,
        code: &'static str,
        hint: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{reference}: {detail}")]
    BadManifest { reference: String, detail: String },
    #[error("registry {registry} refused for {reference}: {reason}\n  hint: a registry's WWW-Authenticate challenge must name its own token service; check the registry's address (and any proxy in front of it)")]
    RealmRefused {
        registry: String,
        reference: String,
        reason: String,
    },
}

/// Everything an invocation does with registries: clients, credentials looked up once
/// per repository, and the checks of where a registry wants them sent, once per registry.
#[derive(Clone)]
pub struct Registry {
    clients: Arc<ClientPool>,
    transport: Arc<Transport>,
    creds: Arc<Mutex<CredState>>,
    pub stats: Arc<push::Stats>,
    warnings: Arc<Mutex<Vec<String>>>,
    /// `registry/repository@digest` of blobs this invocation saw in, or put into, a
    /// repository: the session images and the all-sessions image of one build share most
    /// blobs (the base's, each session's layer), checked or sent once.
    present: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Registries whose cross-repository mounts need a token with `pull` on the source
    /// too (oci-client's mount was refused there once): [`token`].
    scoped_mounts: Arc<Mutex<HashSet<String>>>,
    /// `registry/target<source` → the `Authorization` value of such a token.
    mount_tokens: Arc<Mutex<HashMap<String, String>>>,
}

#[derive(Default)]
struct CredState {
    /// `registry/repository` → credential.
    creds: HashMap<String, Credential>,
    /// registry → where its credentials may go.
    realms: HashMap<String, Verdict>,
    /// Warnings already given (each once).
    warned: HashSet<String>,
    /// registry → why its token realm is refused (None: it is not).
    refused_realms: HashMap<String, Option<String>>,
}

/// oci-client's clients: TLS verification is a setting of the whole client, and a client
/// keeps one credential per registry host. So there is one client per (verification,
/// credential), made when first needed; registries are routed to theirs.
struct ClientPool {
    /// HOST[:PORT] reached over plain HTTP.
    http: Vec<String>,
    /// Extra root certificates (PEM file contents).
    certs: Vec<Vec<u8>>,
    monolithic: bool,
    made: Mutex<Vec<(bool, RegistryAuth, Client)>>,
}

impl ClientPool {
    fn build(&self, verify: bool) -> Result<Client, OciDistributionError> {
        install_tls_provider();
        Client::try_from(ClientConfig {
            protocol: if self.http.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.http.clone())
            },
            accept_invalid_certificates: !verify,
            extra_root_certificates: self
                .certs
                .iter()
                .map(|data| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: data.clone(),
                })
                .collect(),
            use_monolithic_push: self.monolithic,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: USER_AGENT,
            ..Default::default()
        })
    }

    fn get(&self, verify: bool, auth: &RegistryAuth) -> Client {
        let mut made = self.made.lock().unwrap();
        if let Some((_, _, c)) = made.iter().find(|(v, a, _)| *v == verify && a == auth) {
            return c.clone();
        }
        // The same settings built a client in `Registry::new`; should they fail now, the
        // anonymous client of the same verification is the safe stand-in.
        let client = match self.build(verify) {
            Ok(c) => c,
            Err(_) => match made
                .iter()
                .find(|(v, a, _)| *v == verify && *a == RegistryAuth::Anonymous)
            {
                Some((_, _, c)) => return c.clone(),
                None => Client::default(),
            },
        };
        made.push((verify, auth.clone(), client.clone()));
        client
    }

    /// Plain HTTP for `registry`, exactly as oci-client decides it.
    fn plain_http(&self, registry: &str) -> bool {
        self.http.iter().any(|h| h == registry)
    }
}

/// [`Registry::client`]: oci-client calls routed to the client for the registry and the
/// credential at hand.
#[derive(Clone, Copy)]
pub struct RoutedClient<'a> {
    registry: &'a Registry,
}

impl RoutedClient<'_> {
    /// The client for `r` (its registry's TLS verification, its repository's credential).
    pub fn for_reference(&self, r: &Reference) -> Client {
        self.registry.client_for(r)
    }

    pub async fn store_auth_if_needed(&self, registry: &str, auth: &RegistryAuth) {
        self.registry
            .client_with(registry, auth)
            .store_auth_if_needed(registry, auth)
            .await
    }

    pub async fn list_tags(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagResponse, OciDistributionError> {
        self.registry
            .client_with(image.resolve_registry(), auth)
            .list_tags(image, auth, n, last)
            .await
    }

    pub async fn pull_blob<T: tokio::io::AsyncWrite>(
        &self,
        image: &Reference,
        layer: impl AsLayerDescriptor,
        out: T,
    ) -> Result<(), OciDistributionError> {
        self.registry
            .client_for(image)
            .pull_blob(image, layer, out)
            .await
    }
}

/// Does the loopback registry at `registry` (HOST:PORT) want TLS? Asks `GET /v2/` in
/// plain HTTP: a plain registry answers 200/401/404; a TLS server answers 400 ("HTTP
/// request to an HTTPS server") or with TLS bytes, or hangs up. Nothing listening → no
/// (the first real request then reports it unreachable). Blocking, but on loopback it
/// takes a millisecond.
fn loopback_speaks_tls(registry: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // Without a port, plain HTTP (what a loopback registry gets) means port 80.
    let host_port = if registry.contains(':') && !registry.ends_with(']') {
        registry.to_string()
    } else {
        format!("{registry}:80")
    };
    let Ok(addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    let addrs: Vec<_> = addrs.collect();
    let mut hung_up = 0;
    let mut refused = 0;
    while hung_up < 3 {
        // `localhost` may resolve to ::1 and 127.0.0.1; take the one that listens.
        let Some(mut conn) = addrs
            .iter()
            .find_map(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(2)).ok())
        else {
            // A registry being (re)started refuses connections for a moment; wait a
            // little before concluding nothing listens (loopback refusals are instant).
            refused += 1;
            if refused > 20 {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {registry}\r\nUser-Agent: venvimg\r\nConnection: close\r\n\r\n"
        );
        if conn.write_all(request.as_bytes()).is_err() {
            hung_up += 1;
            continue;
        }
        let mut head = [0u8; 512];
        let mut n = 0;
        while n < head.len() {
            match conn.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let reply = &head[..n];
        if reply.is_empty() {
            hung_up += 1;
            continue;
        }
        // A TLS record: handshake (0x16) or alert (0x15).
        if matches!(reply[0], 0x15 | 0x16) {
            return true;
        }
        let text = String::from_utf8_lossy(reply);
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|t| t.get(2..5))
            .and_then(|c| c.parse::<u16>().ok());
        // A registry answers `GET /v2/` with 200, 401 or 404, never 400.
        return !matches!(status, Some(s) if s != 400);
    }
    // A plain HTTP registry always answers; one that hangs up every time wants TLS.
    hung_up == 3
}

fn blob_key(target: &Reference, digest: &Digest) -> String {
    format!(
        "{}/{}@{digest}",
        target.resolve_registry(),
        target.repository()
    )
}

/// `tag` in `repo`'s repository (whatever `repo`'s own tag or digest).
pub fn at_tag(repo: &Reference, tag: &Tag) -> Reference {
    Reference::with_tag(
        repo.resolve_registry().to_string(),
        repo.repository().to_string(),
        tag.to_string(),
    )
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
    /// put on plain HTTP up front (oci-client's protocol setting is per client). A
    /// loopback registry that answers TLS keeps HTTPS, as docker does for its default
    /// insecure range: it is asked once, here.
    pub fn new(transport: Transport, registries: &[&str]) -> Result<Registry, RegistryError> {
        let mut http: Vec<String> = transport.insecure.clone();
        for r in registries {
            if is_loopback(r) && !http.iter().any(|h| h == r) && !loopback_speaks_tls(r) {
                http.push(r.to_string());
            }
        }
        let mut certs = Vec::new();
        let mut ca_files = transport.ca_files.clone();
        if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
            ca_files.push(f.into());
        }
        for f in &ca_files {
            let data = fs_err::read(f).map_err(|source| RegistryError::Io {
                path: f.clone(),
                source,
            })?;
            certs.push(data);
        }
        let clients = ClientPool {
            http,
            certs,
            monolithic: transport.monolithic,
            made: Mutex::default(),
        };
        // Build the clients up front: bad settings (a certificate file) fail here.
        let mut verifications = vec![true];
        if !transport.skip_tls_verify.is_empty() {
            verifications.push(false);
        }
        for verify in verifications {
            let client = clients.build(verify).map_err(|e| RegistryError::Other {
                registry: String::new(),
                operation: "set up the HTTP client for",
                reference: "registries".into(),
                detail: e.to_string(),
            })?;
            clients
                .made
                .lock()
                .unwrap()
                .push((verify, RegistryAuth::Anonymous, client));
        }
        Ok(Registry {
            clients: Arc::new(clients),
            transport: Arc::new(transport),
            creds: Arc::default(),
            stats: Arc::default(),
            warnings: Arc::default(),
            present: Arc::default(),
            scoped_mounts: Arc::default(),
            mount_tokens: Arc::default(),
        })
    }

    /// `digest` is in `target`'s repository: this invocation saw or put it there.
    pub(crate) fn known_present(&self, target: &Reference, digest: &Digest) -> bool {
        self.present
            .lock()
            .expect("present-blob set poisoned")
            .contains(&blob_key(target, digest))
    }

    pub(crate) fn mark_present(&self, target: &Reference, digest: &Digest) {
        self.present
            .lock()
            .expect("present-blob set poisoned")
            .insert(blob_key(target, digest));
    }

    /// oci-client, routed per call to the client for the registry and credential at hand.
    pub fn client(&self) -> RoutedClient<'_> {
        RoutedClient { registry: self }
    }

    /// The client for `r`: its registry's TLS verification, its repository's credential.
    pub fn client_for(&self, r: &Reference) -> Client {
        self.client_with(r.resolve_registry(), &self.auth(r))
    }

    fn client_with(&self, registry: &str, auth: &RegistryAuth) -> Client {
        self.clients.get(!self.skips_tls_verify(registry), auth)
    }

    /// Whether `--skip-tls-verify` names `registry` (HOST[:PORT]).
    pub fn skips_tls_verify(&self, registry: &str) -> bool {
        self.transport
            .skip_tls_verify
            .iter()
            .any(|h| same_registry(h, registry))
    }

    /// Warnings gathered while looking up credentials (missing helper...), for the printer,
    /// when the transport has no [`Notes`] to give them to at once.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap())
    }

    /// A warning, once per run.
    fn warn(&self, st: &mut CredState, msg: String) {
        if !st.warned.insert(msg.clone()) {
            return;
        }
        match &self.transport.notes {
            Some(notes) => notes(Level::Warning, &msg),
            None => self.warnings.lock().unwrap().push(msg),
        }
    }

    fn detail(&self, msg: &str) {
        if let Some(notes) = &self.transport.notes {
            notes(Level::Detail, msg);
        }
    }

    /// The credential for `repository` on `registry`: explicit credentials when they are
    /// for this registry, else the user's auth files (the longest matching entry); and
    /// none when the registry's challenge would send it somewhere it must not go.
    pub fn credential(&self, registry: &str, repository: &str) -> Credential {
        let mut st = self.creds.lock().unwrap();
        let key = format!("{registry}/{repository}");
        if let Some(c) = st.creds.get(&key) {
            return c.clone();
        }
        let t = &self.transport;
        let applies = t
            .explicit_for
            .as_deref()
            .is_some_and(|f| same_registry(f, registry));
        let mut warnings = Vec::new();
        let mut cred = auth::lookup(
            registry,
            repository,
            applies.then_some(&t.explicit),
            &mut |w| warnings.push(w),
        );
        for w in warnings {
            self.warn(&mut st, w);
        }
        if let CredentialSource::None { note, .. } = &mut cred.source {
            if !applies && t.explicit.is_complete() {
                *note = Some(match &t.explicit_for {
                    Some(f) => format!(
                        "VENVIMG_USERNAME/VENVIMG_PASSWORD (or --username/--password-stdin) are for {f} only"
                    ),
                    None => "VENVIMG_USERNAME/VENVIMG_PASSWORD apply only to the registry of venvimg.yaml's `repository:`, and there is no venvimg.yaml here".into(),
                });
            }
        }
        if cred.auth != RegistryAuth::Anonymous {
            let verdict = match st.realms.get(registry) {
                Some(v) => v.clone(),
                None => {
                    let v = self.check_challenge(&mut st, registry);
                    st.realms.insert(registry.to_string(), v.clone());
                    v
                }
            };
            if let Verdict::Withhold { reason, hint } = verdict {
                cred = Credential {
                    auth: RegistryAuth::Anonymous,
                    source: CredentialSource::Withheld {
                        found: Box::new(cred.source),
                        reason,
                        hint,
                    },
                };
            }
        }
        self.detail(&format!(
            "registry {registry}, repository {repository}: {}",
            cred.source
        ));
        st.creds.insert(key, cred.clone());
        cred
    }

    /// Ask `GET /v2/` where `registry` wants credentials sent, and judge it (warning about
    /// a token service on another host, or one credentials will not be sent to).
    fn check_challenge(&self, st: &mut CredState, registry: &str) -> Verdict {
        let plain_http = self.clients.plain_http(registry);
        let url = format!(
            "{}://{registry}/v2/",
            if plain_http { "http" } else { "https" }
        );
        let header = match challenge::fetch(
            &url,
            self.skips_tls_verify(registry),
            &self.clients.certs,
            USER_AGENT,
        ) {
            Ok(h) => h,
            Err(detail) => {
                // Whatever oci-client would meet next is unknown: send nothing. The
                // request that follows reports the failure itself.
                self.detail(&format!("registry {registry}: GET {url} failed: {detail}"));
                return Verdict::Withhold {
                    reason: format!("its auth challenge could not be read (GET {url}: {detail})"),
                    hint: format!("check that {registry} is up and reachable, then try again"),
                };
            }
        };
        let realm = match challenge::parse(header.as_deref()) {
            Challenge::None | Challenge::Basic => return Verdict::Send { elsewhere: None },
            Challenge::Bearer { realm } => realm,
        };
        let skips = |h: &str| self.skips_tls_verify(h);
        let verdict = challenge::judge(
            &challenge::Route {
                registry,
                plain_http,
                skips_verification: &skips,
            },
            &realm,
        );
        match &verdict {
            Verdict::Send { elsewhere: None } => {
                self.detail(&format!("registry {registry}: token service on the same host"))
            }
            Verdict::Send {
                elsewhere: Some((host, shown)),
            } => self.warn(
                st,
                format!(
                    "registry {registry} has credentials sent to a token service on another host, {host} ({shown}), as its WWW-Authenticate challenge asks; make sure you trust {host} with them"
                ),
            ),
            Verdict::Withhold { reason, hint } => self.warn(
                st,
                format!(
                    "registry {registry}: credentials not sent: {reason}; going on without them\n  hint: {hint}"
                ),
            ),
        }
        verdict
    }

    /// Refuse `r`'s registry when its challenge sends token requests to a link-local or
    /// cloud-metadata address ([`challenge::metadata_realm`]): asked once per registry,
    /// before any request that would follow the challenge, with or without credentials.
    pub(crate) fn guard_realm(&self, r: &Reference) -> Result<(), RegistryError> {
        let registry = r.resolve_registry();
        let known = self
            .creds
            .lock()
            .unwrap()
            .refused_realms
            .get(registry)
            .cloned();
        let refusal = match known {
            Some(v) => v,
            None => {
                let url = format!(
                    "{}://{registry}/v2/",
                    if self.clients.plain_http(registry) {
                        "http"
                    } else {
                        "https"
                    }
                );
                let header = challenge::fetch(
                    &url,
                    self.skips_tls_verify(registry),
                    &self.clients.certs,
                    USER_AGENT,
                )
                .ok()
                .flatten();
                let v = match challenge::parse(header.as_deref()) {
                    Challenge::Bearer { realm } => challenge::metadata_realm(registry, &realm),
                    _ => None,
                };
                self.creds
                    .lock()
                    .unwrap()
                    .refused_realms
                    .insert(registry.to_string(), v.clone());
                v
            }
        };
        match refusal {
            None => Ok(()),
            Some(reason) => Err(RegistryError::RealmRefused {
                registry: registry.to_string(),
                reference: r.whole(),
                reason,
            }),
        }
    }

    pub fn auth(&self, r: &Reference) -> RegistryAuth {
        self.credential(r.resolve_registry(), r.repository()).auth
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
        let pushing = operation.starts_with("push")
            || operation.starts_with("upload")
            || operation.starts_with("copy")
            || operation.starts_with("mount");
        let action = if pushing { "push to" } else { "pull from" };
        let status = match &err {
            // The token service refused the credentials.
            OciDistributionError::AuthenticationFailure(_) => Some(401),
            other => status_of(other),
        };
        match status {
            Some(s @ (401 | 403)) => {
                return match self.credential(&registry, r.repository()).source {
                    CredentialSource::Withheld {
                        found,
                        reason,
                        hint,
                    } => RegistryError::Withheld {
                        registry,
                        reference,
                        status: s,
                        hint: hint.clone(),
                        source_: Box::new(CredentialSource::Withheld {
                            found,
                            reason,
                            hint,
                        }),
                    },
                    source_ => RegistryError::Denied {
                        source_: Box::new(source_),
                        registry,
                        reference,
                        status: s,
                        action,
                    },
                }
            }
            // Registries create repositories on push; a 404 there means the name (its
            // owner, project, namespace) is unknown or not writable.
            Some(404) if pushing => {
                return RegistryError::NameUnknown {
                    registry,
                    reference,
                    name_unknown: is_name_unknown(&err),
                }
            }
            Some(404) => {
                return RegistryError::NotFound {
                    registry,
                    reference,
                    hint: "check the image name and tag (`venvimg plan` shows the tags of the current keys; `venvimg build` makes a missing one)",
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
        if let OciDistributionError::RequestError(e) = &err {
            let detail = error_chain(e);
            if is_tls_failure(&detail) {
                return RegistryError::Tls {
                    registry,
                    reference,
                    detail,
                };
            }
            if e.is_connect() || e.is_timeout() {
                return RegistryError::Unreachable {
                    registry,
                    reference,
                    detail,
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
    /// it is unknown. Costs one request on a hit. The registry's header is compared with
    /// digests venvimg computed, so one of another form is an error, not a mismatch.
    pub async fn manifest_digest(&self, r: &Reference) -> Result<Option<Digest>, RegistryError> {
        self.guard_realm(r)?;
        let auth = self.auth(r);
        let client = self.client_for(r);
        let res = retry(|| client.fetch_manifest_digest(r, &auth)).await;
        match res {
            Ok(d) => Digest::parse(&d)
                .map(Some)
                .map_err(|e| RegistryError::BadManifest {
                    reference: r.whole(),
                    detail: format!("the registry's Docker-Content-Digest: {e}"),
                }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.explain(r, "look up", e)),
        }
    }

    /// GET a manifest if the tag exists: its bytes and digest, or `None` when the registry
    /// says it is unknown. Costs one request, like a HEAD, and says what a hit must be
    /// checked against. At most [`MAX_MANIFEST`] bytes are read; the digest is the one of
    /// the bytes read (and must be the reference's own when it names one), never a
    /// registry's header.
    pub async fn manifest_if_exists(
        &self,
        r: &Reference,
    ) -> Result<Option<(bytes::Bytes, Digest)>, RegistryError> {
        let reference = r.whole();
        let at = match r.digest() {
            Some(d) => Digest::parse(d)
                .map_err(|e| RegistryError::BadManifest {
                    reference: reference.clone(),
                    detail: e.to_string(),
                })?
                .into_string(),
            None => r.tag().unwrap_or("latest").to_string(),
        };
        let answer = self
            .request(
                r,
                &delete::Call {
                    method: reqwest::Method::GET,
                    path: format!("manifests/{at}"),
                    accept: Some(ACCEPT_MANIFESTS),
                    reference: reference.clone(),
                    operation: "pull",
                    action: "pull from",
                },
            )
            .await?;
        match answer.status {
            200 => {}
            404 => return Ok(None),
            status => {
                return Err(RegistryError::Other {
                    registry: r.resolve_registry().to_string(),
                    operation: "pull",
                    reference,
                    detail: format!("the registry answered {status}"),
                })
            }
        }
        let digest = Digest::of(&answer.body);
        if r.digest().is_some_and(|d| d != digest.as_str()) {
            return Err(RegistryError::BadManifest {
                reference,
                detail: format!("the registry served other bytes ({digest}); refusing them"),
            });
        }
        Ok(Some((answer.body, digest)))
    }

    /// Push a small artifact — one blob of `media_type`, an empty config — under `target`'s
    /// tag: venvimg's own bookkeeping (a saved dry run). Blobs first, then the tag.
    pub async fn push_artifact(
        &self,
        target: &Reference,
        media_type: &str,
        data: Vec<u8>,
    ) -> Result<String, RegistryError> {
        const EMPTY: &[u8] = b"{}";
        let client = self.client_for(target);
        self.authorize_push(target).await?;
        let data_digest = Digest::of(&data).into_string();
        let empty_digest = Digest::of(EMPTY).into_string();
        for (bytes, digest) in [
            (EMPTY.to_vec(), &empty_digest),
            (data.clone(), &data_digest),
        ] {
            let exists = retry(|| client.blob_exists(target, digest))
                .await
                .map_err(|e| self.explain(target, "check a blob in", e))?;
            if !exists {
                retry(|| client.push_blob(target, bytes.clone(), digest))
                    .await
                    .map_err(|e| self.explain(target, "push a blob to", e))?;
            }
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaTypes::OCI_MANIFEST,
            "artifactType": media_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty_digest,
                "size": EMPTY.len(),
            },
            "layers": [{"mediaType": media_type, "digest": data_digest, "size": data.len()}],
        }))
        .expect("manifest serialises");
        let content_type: http::HeaderValue = MediaTypes::OCI_MANIFEST
            .parse()
            .expect("static media type is a valid header");
        retry(|| client.push_manifest_raw(target, manifest.clone(), content_type.clone()))
            .await
            .map_err(|e| self.explain(target, "push tag to", e))?;
        Ok(Digest::of(&manifest).into_string())
    }

    /// The blob of an artifact [`push_artifact`](Self::push_artifact) made, if `target`
    /// exists and is one: checked for media type, size (at most `cap`) and digest.
    pub async fn pull_artifact(
        &self,
        target: &Reference,
        media_type: &str,
        cap: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((bytes, _)) = self.manifest_if_exists(target).await? else {
            return Ok(None);
        };
        let v: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let Some(layer) = v["layers"].as_array().and_then(|l| l.first()) else {
            return Ok(None);
        };
        let (Some(mt), Some(digest), Some(size)) = (
            layer["mediaType"].as_str(),
            layer["digest"].as_str(),
            layer["size"].as_u64(),
        ) else {
            return Ok(None);
        };
        let Ok(digest) = Digest::parse(digest) else {
            return Ok(None);
        };
        if mt != media_type || size > cap {
            return Ok(None);
        }
        let blob = self.blob_bytes(target, digest.as_str(), size).await?;
        if blob.len() as u64 != size || Digest::of(&blob) != digest {
            return Ok(None);
        }
        Ok(Some(blob))
    }

    /// Fetch a manifest's exact bytes and its digest (at most [`MAX_MANIFEST`] bytes).
    pub async fn manifest_raw(
        &self,
        r: &Reference,
    ) -> Result<(bytes::Bytes, Digest), RegistryError> {
        self.manifest_if_exists(r)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                registry: r.resolve_registry().to_string(),
                reference: r.whole(),
                hint: "check the image name and tag (`venvimg plan` shows the tags of the current keys; `venvimg build` makes a missing one)",
            })
    }

    /// Resolve the base image for `platform`: through an index if it is one, down to the
    /// platform's image manifest and its config.
    pub async fn resolve_base(
        &self,
        base: &Reference,
        platform: &Platform,
    ) -> Result<BaseImage, RegistryError> {
        let (bytes, digest) = self.manifest_raw(base).await.map_err(|e| match e {
            RegistryError::NotFound {
                registry,
                reference,
                ..
            } => RegistryError::NotFound {
                registry,
                reference,
                hint: "check `base:` in venvimg.yaml; push the base image first if it is yours",
            },
            e => e,
        })?;
        let picked = crate::image::pick_platform(&bytes, platform).map_err(|detail| {
            RegistryError::BadManifest {
                reference: base.whole(),
                detail,
            }
        })?;
        let single = matches!(picked, crate::image::Picked::Manifest);
        let (manifest_bytes, manifest_digest) = match picked {
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
        let config_bytes = self
            .blob_bytes(base, &config_digest, manifest.config().size())
            .await?;
        if single {
            // One image, not an index: it serves only the platform its config names (an
            // amd64 base must not be taken for an arm64 one).
            let v: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap_or_default();
            let (os, arch) = (v["os"].as_str(), v["architecture"].as_str());
            if let (Some(os), Some(arch)) = (os, arch) {
                if os != platform.os || arch != platform.architecture {
                    return Err(RegistryError::NoPlatform {
                        reference: base.whole(),
                        platform: platform.to_string(),
                        available: format!("{os}/{arch}, a single image and no index"),
                    });
                }
            }
        }
        BaseImage::new(base.clone(), manifest_digest, manifest, config_bytes).map_err(|detail| {
            RegistryError::BadManifest {
                reference: base.whole(),
                detail,
            }
        })
    }

    /// A small blob (an image config) read into memory: at most `size` bytes, the size
    /// its descriptor gives, and no more than [`MAX_BLOB_IN_MEMORY`]; a registry serving
    /// more is refused as soon as it does (not after reading it all).
    pub async fn blob_bytes(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size > MAX_BLOB_IN_MEMORY {
            return Err(RegistryError::BadManifest {
                reference: format!("{} (blob {digest})", r.whole()),
                detail: format!(
                    "its descriptor gives {size} bytes, more than the {MAX_BLOB_IN_MEMORY} venvimg reads into memory"
                ),
            });
        }
        self.blob_into(r, digest, size, || Ok(Vec::new())).await
    }

    /// A layer blob in an unnamed temporary file (never in memory): at most `size` bytes,
    /// the size its descriptor gives, checked against its digest.
    pub async fn layer_file(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<std::fs::File, RegistryError> {
        let SyncWriter(mut file) = self
            .blob_into(r, digest, size, || tempfile::tempfile().map(SyncWriter))
            .await?;
        use std::io::Seek;
        file.rewind().map_err(|source| RegistryError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(file)
    }

    /// The blob `digest` of `r` as it arrives, for a reader that works on it in the same
    /// pass (`restore`: decompress and extract, no copy on disk). The request is retried
    /// like any other; once bytes flow, a failure is the caller's (what it wrote from
    /// them is not known here). [`BlobStream::next`] refuses more than `size` bytes as
    /// they come, fewer at the end, and bytes that do not hash to `digest` (checked as
    /// the last chunk arrives).
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobStream, RegistryError> {
        let client = self.reading_client(r).await?;
        let stream = retry(|| client.pull_blob_stream(r, digest.as_str()))
            .await
            .map_err(|e| self.explain(r, "pull blob of", e))?;
        Ok(BlobStream {
            stream: stream.stream,
            reference: format!("{} (blob {digest})", r.whole()),
            size,
            read: 0,
        })
    }

    /// A client for reading from `r`'s repository: never for a realm this run refused,
    /// with the credential for it stored (so a token is asked for once, not per blob).
    async fn reading_client(&self, r: &Reference) -> Result<Client, RegistryError> {
        self.guard_realm(r)?;
        let auth = self.auth(r);
        let client = self.client_for(r);
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        Ok(client)
    }

    /// Pull the blob `digest` of `r` into a fresh `make()` per attempt, refusing more than
    /// `size` bytes as soon as they arrive and fewer at the end.
    async fn blob_into<W: Sink + Unpin>(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        make: impl Fn() -> std::io::Result<W>,
    ) -> Result<W, RegistryError> {
        let refused = |detail: String| RegistryError::BadManifest {
            reference: format!("{} (blob {digest})", r.whole()),
            detail,
        };
        let digest = Digest::parse(digest).map_err(|e| refused(e.to_string()))?;
        let client = self.reading_client(r).await?;
        let over = std::sync::atomic::AtomicBool::new(false);
        let got = retry(|| async {
            let mut out = Capped {
                out: make()?,
                written: 0,
                cap: size,
                over: &over,
            };
            match client.pull_blob(r, digest.as_str(), &mut out).await {
                // Not worth another try: the registry serves more than the descriptor says.
                Err(_) if over.load(std::sync::atomic::Ordering::Relaxed) => Err(
                    OciDistributionError::GenericError(Some("oversized blob".into())),
                ),
                Err(e) => Err(e),
                Ok(()) => Ok((out.written, out.out)),
            }
        })
        .await;
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(refused(format!(
                "the registry served more than the {size} bytes its descriptor gives; refused at that point"
            )));
        }
        let (written, out) = got.map_err(|e| self.explain(r, "pull blob of", e))?;
        if written != size {
            return Err(refused(format!(
                "the registry served {written} bytes, its descriptor gives {size}"
            )));
        }
        Ok(out)
    }
}

/// A blob's bytes as the registry sends them (see [`Registry::blob_stream`]).
pub struct BlobStream {
    stream: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    reference: String,
    size: u64,
    read: u64,
}

impl BlobStream {
    /// The next piece; None at the end, once all `size` bytes came and matched the digest.
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, RegistryError> {
        use futures_util::StreamExt;
        let refused = |detail: String| RegistryError::BadManifest {
            reference: self.reference.clone(),
            detail,
        };
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.read += chunk.len() as u64;
                if self.read > self.size {
                    return Err(refused(format!(
                        "the registry served more than the {} bytes its descriptor gives; refused at that point",
                        self.size
                    )));
                }
                Ok(Some(chunk))
            }
            // oci-client's verifying stream ends with an error when the digest differs.
            Some(Err(e)) => Err(refused(format!("reading it failed: {e}"))),
            None if self.read != self.size => Err(refused(format!(
                "the registry served {} bytes, its descriptor gives {}",
                self.read, self.size
            ))),
            None => Ok(None),
        }
    }
}

/// Where [`Registry::blob_into`] puts a blob's bytes.
trait Sink {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A local file written synchronously, piece by piece as the blob arrives.
struct SyncWriter(std::fs::File);

impl Sink for SyncWriter {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, data)
    }
}

/// The largest manifest or index venvimg reads (distribution's own limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest blob venvimg reads into memory (image configs, SBOMs, saved dry runs).
pub const MAX_BLOB_IN_MEMORY: u64 = 64 << 20;

/// The `Accept` header of a manifest GET.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A writer that passes at most `cap` bytes to `out` and fails (setting `over`) past them.
struct Capped<'a, W> {
    out: W,
    written: u64,
    cap: u64,
    over: &'a std::sync::atomic::AtomicBool,
}

impl<W: Sink + Unpin> tokio::io::AsyncWrite for Capped<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + data.len() as u64 > this.cap {
            this.over.store(true, std::sync::atomic::Ordering::Relaxed);
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "more bytes than the descriptor gives",
            )));
        }
        this.out.put(data)?;
        this.written += data.len() as u64;
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// TLS runs on ring (Cargo.toml says why). reqwest built without a provider of its own
/// uses the process-wide default, and panics when there is none: so it is installed before
/// any client is made.
pub(crate) fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is installed already (a program embedding this crate
        // chose its own): that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

/// A 404 that says the repository itself is unknown (NAME_UNKNOWN), not a tag or blob.
fn is_name_unknown(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::NameUnknown),
        OciDistributionError::ServerError { message, .. } => message.contains("NAME_UNKNOWN"),
        _ => false,
    }
}

/// What to do when `registry` cannot be reached, by how it failed.
fn unreachable_hint(registry: &str, detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    if d.contains("connection refused") {
        format!("nothing listens at {registry}: start the registry, or check the host and port")
    } else if d.contains("timed out") || d.contains("timeout") {
        format!("{registry} did not answer in time: check the address, the network and any proxy (HTTPS_PROXY/NO_PROXY)")
    } else if d.contains("dns") || d.contains("resolve") || d.contains("name or service") {
        format!("the name of {registry} does not resolve: check the host in the image reference")
    } else {
        "check the address and that the registry is up".to_string()
    }
}

/// What to do about a TLS failure: a plain-HTTP registry answering an HTTPS request, or
/// a certificate this machine does not trust.
fn tls_hint(registry: &str, detail: &str) -> String {
    if speaks_plain_http(detail) {
        format!("{registry} answers in plain HTTP: list it in `insecure_registries` (or pass --insecure-registry {registry})")
    } else {
        format!("trust the registry's certificate with --ca-file FILE (or SSL_CERT_FILE), or, for a test registry only, --skip-tls-verify {registry}")
    }
}

/// rustls's words for an HTTP answer to its handshake.
fn speaks_plain_http(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("corrupt message") || d.contains("invalidcontenttype")
}

/// Certificate and handshake failures, as rustls words them inside reqwest's error chain.
pub(crate) fn is_tls_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "notvalidforname",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|w| d.contains(w))
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
            // A certificate the client does not trust stays untrusted.
            (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
                && !is_tls_failure(&error_chain(e))
        }
        OciDistributionError::IoError(_) => true,
        // A registry that cut a reply short (reset mid-body) surfaces as these.
        OciDistributionError::RegistryNoLocationError
        | OciDistributionError::RegistryNoDigestError => true,
        _ => false,
    }
}

pub const MAX_ATTEMPTS: u32 = 6;

/// The largest PATCH oci-client sends in a chunked upload.
pub const MAX_CHUNK: usize = 4 << 20;

/// How long to wait before attempt `attempt + 1` after `err`.
///
/// A 429 would ideally wait for its `Retry-After`, but oci-client's errors keep only the
/// status and body, never the headers; so 429 waits at least 1 s, doubling up to 8 s
/// (+0-50 % jitter, never earlier), which covers the usual `Retry-After: 1..8`. Other
/// transient failures: exponential backoff from 0.2 s capped at 5 s, with full jitter so
/// concurrent CI jobs do not retry in lockstep.
pub fn backoff(attempt: u32, err: &OciDistributionError) -> Duration {
    let step = (attempt.max(1) - 1).min(5);
    if status_of(err) == Some(429) {
        let base = Duration::from_secs(1u64 << step.min(3));
        return base.mul_f64(1.0 + rand::random::<f64>() * 0.5);
    }
    let cap = Duration::from_millis(200u64 << step).min(Duration::from_secs(5));
    cap.mul_f64(rand::random::<f64>().max(0.1))
}

/// Whether `err` on attempt `attempt` deserves another one. A 401 gets exactly one more:
/// oci-client authenticates lazily and, when that first `GET /v2/` fails in transit, sends
/// the request anonymously; the second attempt authenticates again.
pub fn worth_retrying(attempt: u32, err: &OciDistributionError) -> bool {
    if attempt >= MAX_ATTEMPTS {
        return false;
    }
    if status_of(err) == Some(401) {
        return attempt == 1;
    }
    is_transient(err)
}

/// Run `op` until it succeeds, fails for good, or runs out of attempts ([`backoff`],
/// [`worth_retrying`]). `op` must be safe to repeat: every upload attempt starts a new
/// upload session and re-reads its source from the start.
pub async fn retry<T, F, Fut>(op: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    retry_when(op, |_, _| false).await
}

/// [`retry`], also retrying the errors `also(attempt, err)` accepts (an operation that
/// knows a failure specific to it is transient).
pub async fn retry_when<T, F, Fut>(
    mut op: F,
    also: impl Fn(u32, &OciDistributionError) -> bool,
) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e)
                if worth_retrying(attempt, &e) || (attempt < MAX_ATTEMPTS && also(attempt, &e)) =>
            {
                RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt, &e)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Retries made by [`retry`] in this process (for the push summary and tests).
pub static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

    /// A one-shot server on loopback answering every connection with `reply` (or hanging
    /// up when it is empty).
    fn answering(reply: &'static [u8]) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(reply);
            }
        });
        addr
    }

    #[test]
    fn loopback_tls_probe() {
        // distribution's plain HTTP answers, with or without auth.
        assert!(!loopback_speaks_tls(&answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        )));
        assert!(!loopback_speaks_tls(&answering(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n\r\n"
        )));
        // Go's TLS server, nginx's, and a TLS alert.
        assert!(loopback_speaks_tls(&answering(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
        )));
        assert!(loopback_speaks_tls(&answering(
            b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n\r\nThe plain HTTP request was sent to HTTPS port"
        )));
        assert!(loopback_speaks_tls(&answering(
            b"\x15\x03\x01\x00\x02\x02\x50"
        )));
        // Hangs up every time: not plain HTTP.
        assert!(loopback_speaks_tls(&answering(b"")));
        // Nothing listening: left to plain HTTP, reported unreachable by the first request.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!loopback_speaks_tls(&format!("127.0.0.1:{port}")));
    }

    fn server_error(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:1/v2/".into(),
            message: String::new(),
        }
    }

    #[test]
    fn what_is_retried_and_how_long_it_waits() {
        for code in [408, 429, 500, 502, 503] {
            assert!(worth_retrying(1, &server_error(code)), "{code}");
            assert!(!worth_retrying(MAX_ATTEMPTS, &server_error(code)), "{code}");
        }
        for code in [400, 403, 404, 413] {
            assert!(!worth_retrying(1, &server_error(code)), "{code}");
        }
        // 401: once (oci-client may have sent it anonymously after a failed auth GET).
        assert!(worth_retrying(1, &server_error(401)));
        assert!(!worth_retrying(2, &server_error(401)));
        // 429 never sooner than the usual Retry-After of 1 s, and bounded.
        for attempt in 1..MAX_ATTEMPTS {
            let w = backoff(attempt, &server_error(429));
            assert!(
                w >= Duration::from_secs(1) && w <= Duration::from_secs(12),
                "{w:?}"
            );
            let w = backoff(attempt, &server_error(500));
            assert!(w <= Duration::from_secs(5), "{w:?}");
        }
    }

    #[test]
    fn tls_failures_are_told_apart() {
        assert!(is_tls_failure(
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(is_tls_failure(
            "received corrupt message of type InvalidContentType"
        ));
        assert!(!is_tls_failure(
            "tcp connect error: Connection refused (os error 111)"
        ));
        assert!(!is_tls_failure(
            "connection closed before message completed"
        ));
    }
}
