//! Listing a repository's tags and deleting manifests by digest, for `venvimg prune`.
//!
//! oci-client has no DELETE: it is sent here with reqwest (the HTTP client oci-client
//! itself uses), reached and authenticated the same way: plain HTTP only for loopback and
//! listed registries, the same certificates, and the credential [`Registry::credential`]
//! picked (withheld where it must not go). A `401` answer's challenge is followed like
//! docker and skopeo do: Basic to the registry itself, or a token for the challenge's
//! scope (`repository:NAME:delete`) from a token service [`challenge::judge`] allows.

use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use super::{challenge, status_of, Registry, RegistryError};

/// Tags asked for per page (registries that paginate send `Link` or fewer).
const PAGE: usize = 1000;

/// A request [`Registry::request`] sends: to `/v2/<name>/<path>`, with `reference`
/// (what errors name), `operation` (`delete`) and `action` (`delete from`) for messages.
pub(crate) struct Call {
    pub method: reqwest::Method,
    pub path: String,
    pub accept: Option<&'static str>,
    pub reference: String,
    pub operation: &'static str,
    pub action: &'static str,
}

/// A registry's answer to [`Registry::request`] other than a refusal.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a DELETE of a manifest came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The registry deleted it (202).
    Yes,
    /// The registry no longer had it (404): someone deleted it meanwhile.
    AlreadyGone,
}

impl Registry {
    /// Every tag of `repo`'s repository (any tag or digest in `repo` is ignored), page by
    /// page; none when the registry does not know the repository.
    pub async fn all_tags(&self, repo: &Reference) -> Result<Vec<String>, RegistryError> {
        self.guard_realm(repo)?;
        let auth = self.auth(repo);
        let client = self.client_with(repo.resolve_registry(), &auth);
        let mut tags: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page =
                super::retry(|| client.list_tags(repo, &auth, Some(PAGE), last.as_deref())).await;
            let page = match page {
                Ok(p) => p.tags,
                Err(e) if status_of(&e) == Some(404) && tags.is_empty() => return Ok(Vec::new()),
                Err(e) => return Err(self.explain(repo, "list tags of", e)),
            };
            let n = page.len();
            let next = page.last().cloned();
            for t in page {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            // A registry that ignores `n` sends everything at once; one that honours it
            // sends a full page while more follow.
            if n < PAGE || next.is_none() || next == last {
                break;
            }
            last = next;
        }
        tags.sort();
        Ok(tags)
    }

    /// DELETE the manifest `digest` from `repo`'s repository (deleting every tag that
    /// points at it). A registry that refuses deletes gets an error saying what to enable.
    pub async fn delete_manifest(
        &self,
        repo: &Reference,
        digest: &crate::model::Digest,
    ) -> Result<Deleted, RegistryError> {
        // Only a parsed digest becomes a path: never `../../other/repo/manifests/...`.
        let digest = digest.as_str();
        let target = Reference::with_digest(
            repo.resolve_registry().to_string(),
            repo.repository().to_string(),
            digest.to_string(),
        );
        let answer = self
            .request(
                repo,
                &Call {
                    method: reqwest::Method::DELETE,
                    path: format!("manifests/{digest}"),
                    accept: None,
                    reference: target.whole(),
                    operation: "delete",
                    action: "delete from",
                },
            )
            .await?;
        let registry = repo.resolve_registry();
        match answer.status {
            200..=299 => Ok(Deleted::Yes),
            404 => Ok(Deleted::AlreadyGone),
            405 => Err(delete_disabled(
                registry,
                &target,
                answer.status,
                &answer.text(),
            )),
            _ if answer.text().contains("UNSUPPORTED") => Err(delete_disabled(
                registry,
                &target,
                answer.status,
                &answer.text(),
            )),
            status => Err(RegistryError::Other {
                registry: registry.to_string(),
                operation: "delete",
                reference: target.whole(),
                detail: format!(
                    "the registry answered {status}: {}",
                    first_line(&answer.text())
                ),
            }),
        }
    }

    /// One request to `/v2/<repo's name>/<path>` that oci-client cannot make (a DELETE, a
    /// referrers listing whose 404 must be told from an empty list): reached and authenticated as oci-client would, a `401`'s
    /// challenge answered once, unreachable and transient answers (408, 429, 5xx) retried.
    /// Any other status is the caller's to read; a refusal (401/403) is an error worded
    /// for `action` (`delete from`, `pull from`).
    pub(crate) async fn request(
        &self,
        repo: &Reference,
        call: &Call,
    ) -> Result<Answer, RegistryError> {
        let registry = repo.resolve_registry().to_string();
        let named = Named {
            registry: registry.clone(),
            operation: call.operation,
            reference: call.reference.clone(),
        };
        let scheme = if self.clients.plain_http(&registry) {
            "http"
        } else {
            "https"
        };
        self.guard_realm(repo)?;
        let url = format!(
            "{scheme}://{registry}/v2/{}/{}",
            repo.repository(),
            call.path
        );
        let http = self
            .http_client(&registry)
            .map_err(|detail| named.other(detail))?;
        let credential = self.credential(&registry, repo.repository());

        let mut authorization: Option<String> = match &credential.auth {
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
            _ => None,
        };
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = http.request(call.method.clone(), &url);
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            if let Some(a) = call.accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            let res = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < 4 && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                    continue;
                }
                Err(e) => return Err(named.send_failed(&e)),
            };
            let status = res.status().as_u16();
            let challenge_header = res
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            let body = match read_capped(res).await {
                Ok(body) => body,
                Err(BodyError::TooLarge) => return Err(named.too_large()),
                // Cut short: a transient failure like a reset before the answer.
                Err(BodyError::CutShort(_)) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                    continue;
                }
                Err(BodyError::CutShort(e)) => return Err(named.other(super::error_chain(&e))),
            };
            match status {
                401 if !challenged => {
                    challenged = true;
                    authorization = self
                        .answer_challenge(
                            &http,
                            &registry,
                            &credential.auth,
                            challenge_header.as_deref(),
                            None,
                        )
                        .await
                        .map_err(|detail| named.other(detail))?;
                    if authorization.is_some() {
                        continue;
                    }
                    return Err(self.refused(repo, &named.reference, status, call.action));
                }
                401 | 403 => return Err(self.refused(repo, &named.reference, status, call.action)),
                408 | 429 | 500..=599 if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    continue;
                }
                _ => return Ok(Answer { status, body }),
            }
        }
    }

    /// A refused request, worded like any (which credential was tried, how to log in),
    /// for `action` (`delete from`, `pull from`).
    fn refused(
        &self,
        repo: &Reference,
        reference: &str,
        status: u16,
        action: &'static str,
    ) -> RegistryError {
        let source = self
            .credential(repo.resolve_registry(), repo.repository())
            .source;
        match source {
            super::auth::CredentialSource::Withheld {
                found,
                reason,
                hint,
            } => RegistryError::Withheld {
                registry: repo.resolve_registry().to_string(),
                reference: reference.to_string(),
                status,
                hint: hint.clone(),
                source_: Box::new(super::auth::CredentialSource::Withheld {
                    found,
                    reason,
                    hint,
                }),
            },
            source => RegistryError::Denied {
                registry: repo.resolve_registry().to_string(),
                reference: reference.to_string(),
                status,
                source_: Box::new(source),
                action,
            },
        }
    }
}

/// What the errors of one [`Registry::request`] name.
struct Named {
    registry: String,
    operation: &'static str,
    reference: String,
}

impl Named {
    fn other(&self, detail: String) -> RegistryError {
        RegistryError::Other {
            registry: self.registry.clone(),
            operation: self.operation,
            reference: self.reference.clone(),
            detail,
        }
    }

    /// The request could not be sent (after the retries): a TLS failure, an unreachable
    /// registry, or anything else.
    fn send_failed(&self, e: &reqwest::Error) -> RegistryError {
        let detail = super::error_chain(e);
        if super::is_tls_failure(&detail) {
            RegistryError::Tls {
                registry: self.registry.clone(),
                reference: self.reference.clone(),
                detail,
            }
        } else if e.is_connect() || e.is_timeout() {
            RegistryError::Unreachable {
                registry: self.registry.clone(),
                reference: self.reference.clone(),
                detail,
            }
        } else {
            self.other(detail)
        }
    }

    fn too_large(&self) -> RegistryError {
        RegistryError::BadManifest {
            reference: self.reference.clone(),
            detail: format!(
                "the registry's answer is larger than {} bytes (the most a manifest or index may be); refused",
                super::MAX_MANIFEST
            ),
        }
    }
}

/// Why an answer's body was not read whole.
enum BodyError {
    /// Larger than a manifest may be.
    TooLarge,
    /// The transfer failed part way.
    CutShort(reqwest::Error),
}

/// An answer's body. Manifests, indexes and error bodies: never more than a manifest may
/// be.
async fn read_capped(mut res: reqwest::Response) -> Result<bytes::Bytes, BodyError> {
    let mut body = bytes::BytesMut::new();
    loop {
        match res.chunk().await {
            Ok(Some(c)) => {
                if body.len() as u64 + c.len() as u64 > super::MAX_MANIFEST {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(BodyError::CutShort(e)),
        }
    }
}

fn first_line(body: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// The registry refuses deletes: what to enable, by kind of registry.
fn delete_disabled(registry: &str, target: &Reference, status: u16, body: &str) -> RegistryError {
    let host = challenge::host_of(registry).to_ascii_lowercase();
    let hint = if host == "ghcr.io" {
        "GHCR does not delete through the registry API: delete package versions through GitHub's packages API (`DELETE /user/packages/container/NAME/versions/ID`, or /orgs/ORG/...) with a token that has `delete:packages`".to_string()
    } else {
        "enable deletes on the registry: distribution (docker-registry, registry:2): `storage: {delete: {enabled: true}}` in its config.yml (or REGISTRY_STORAGE_DELETE_ENABLED=true), then restart it; GHCR: delete package versions through GitHub's packages API with a token that has `delete:packages`; Forgejo/Gitea: delete package versions in the package settings or through the packages API (a token with package write access)".to_string()
    };
    RegistryError::DeleteRefused {
        registry: registry.to_string(),
        reference: target.whole(),
        status,
        code: if body.contains("UNSUPPORTED") {
            " UNSUPPORTED"
        } else {
            ""
        },
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_delete_says_what_to_enable() {
        let r: Reference = "127.0.0.1:5000/team/app:x".parse().unwrap();
        let e = delete_disabled(
            "127.0.0.1:5000",
            &r,
            405,
            r#"{"errors":[{"code":"UNSUPPORTED"}]}"#,
        );
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:5000"), "{text}");
        assert!(text.contains("delete: {enabled: true}"), "{text}");
        assert!(text.contains("405 UNSUPPORTED"), "{text}");
        let e = delete_disabled("ghcr.io", &r, 405, "");
        assert!(e.to_string().contains("delete:packages"));
    }
}
