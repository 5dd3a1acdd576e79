//! Tokens for what oci-client's own token handling cannot express.
//!
//! oci-client asks a registry's token service for one repository at a time
//! (`repository:NAME:pull` or `:pull,push`) and caches that token per repository. Two
//! things need more:
//!
//! - A cross-repository mount (`POST /v2/TARGET/blobs/uploads/?mount=D&from=SOURCE`):
//!   distribution authorizes it only with `pull` on SOURCE *in the same token* as `push`
//!   on TARGET (registry/handlers/app.go, `authorized`). With oci-client's token the
//!   registry answers 401 and every layer would be copied through this machine instead;
//!   [`Registry::mount_with_source_scope`] asks for both scopes in one token.
//! - A refused push: a token service gives a user asking for `pull,push` a token for what
//!   it may do (`pull` only, or nothing) — by the protocol that is not an error, the
//!   registry refuses the first write later. [`Registry::authorize_push`] reads what the
//!   token grants, where it says (a JWT with an `access` claim), and stops before any
//!   upload with an error naming the repository and the credentials.
//!
//! Requests go out with reqwest (the HTTP client oci-client itself uses), reached and
//! authenticated like oci-client's: plain HTTP only for loopback and listed registries,
//! the same certificates, the credential [`Registry::credential`] picked, sent to a token
//! service only where [`challenge::judge`] allows.

use std::time::Duration;

use base64::Engine;
use http_auth::parser::ChallengeParser;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use super::{challenge, Registry, RegistryError, USER_AGENT};
use crate::model::Digest;

impl Registry {
    /// The `Authorization` value that answers a `WWW-Authenticate` challenge, or None when
    /// there is nothing to answer with (no credential for a Basic challenge, a token
    /// service that refuses). `scopes`: what to ask the token service for instead of the
    /// challenge's own `scope`.
    pub(super) async fn answer_challenge(
        &self,
        http: &reqwest::Client,
        registry: &str,
        auth: &RegistryAuth,
        header: Option<&str>,
        scopes: Option<&[String]>,
    ) -> Result<Option<String>, String> {
        let Some(header) = header else {
            return Ok(None);
        };
        let bearer = ChallengeParser::new(header)
            .filter_map(|c| c.ok())
            .find(|c| c.scheme.eq_ignore_ascii_case("Bearer"));
        let Some(bearer) = bearer else {
            // Basic, to the registry itself (the credential lookup already checked where
            // this registry wants credentials).
            return Ok(match auth {
                RegistryAuth::Basic(user, password) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                )),
                _ => None,
            });
        };
        let param = |name: &str| {
            bearer
                .params
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
                .next_back()
        };
        let Some(realm) = param("realm") else {
            return Ok(None);
        };
        let skips = |h: &str| self.skips_tls_verify(h);
        let verdict = challenge::judge(
            &challenge::Route {
                registry,
                plain_http: self.clients.plain_http(registry),
                skips_verification: &skips,
            },
            &realm,
        );
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        match scopes {
            // One `scope` parameter per scope, as docker and containers/image send them.
            Some(scopes) => query.extend(scopes.iter().map(|s| ("scope", s.clone()))),
            None => {
                if let Some(scope) = param("scope") {
                    query.push(("scope", scope));
                }
            }
        }
        let mut req = http.get(&realm).query(&query);
        if let (RegistryAuth::Basic(user, password), challenge::Verdict::Send { .. }) =
            (auth, &verdict)
        {
            req = req.basic_auth(user, Some(password));
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("token service: {}", super::error_chain(&e)))?;
        if !res.status().is_success() {
            // The request is then refused, and reported as such.
            return Ok(None);
        }
        let v: serde_json::Value = res
            .json()
            .await
            .map_err(|e| format!("token service: unreadable answer: {e}"))?;
        Ok(v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(|t| format!("Bearer {t}")))
    }

    /// A reqwest client that reaches `registry` as oci-client's does (certificates, TLS
    /// verification).
    pub(super) fn http_client(&self, registry: &str) -> Result<reqwest::Client, String> {
        let roots = self
            .clients
            .certs
            .iter()
            .map(|pem| reqwest::Certificate::from_pem(pem))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| super::error_chain(&e))?;
        super::install_tls_provider();
        reqwest::Client::builder()
            .danger_accept_invalid_certs(self.skips_tls_verify(registry))
            .tls_certs_merge(roots)
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| super::error_chain(&e))
    }

    /// Get the push token for `target` (so concurrent uploads share one) and refuse at
    /// once when the token says the credentials may not push there: nothing is uploaded.
    pub(crate) async fn authorize_push(&self, target: &Reference) -> Result<(), RegistryError> {
        self.guard_realm(target)?;
        let auth = self.auth(target);
        let client = self.client_for(target);
        let token =
            super::retry(|| client.auth(target, &auth, oci_client::RegistryOperation::Push))
                .await
                .map_err(|e| self.explain(target, "push to", e))?;
        let Some(granted) = token
            .as_deref()
            .and_then(|t| granted(t, target.repository()))
        else {
            // Basic auth, no auth, or a token that does not say: the registry decides.
            return Ok(());
        };
        if granted.iter().any(|a| a == "push" || a == "*") {
            return Ok(());
        }
        let registry = target.resolve_registry().to_string();
        Err(RegistryError::PushNotGranted {
            source_: Box::new(self.credential(&registry, target.repository()).source),
            repository: format!("{registry}/{}", target.repository()),
            registry,
            granted: if granted.is_empty() {
                "nothing".into()
            } else {
                format!("only `{}`", granted.join(","))
            },
        })
    }

    /// Mount `digest` from `from` into `target` (one registry) with a token holding `push`
    /// on the target and `pull` on the source, as distribution requires. True when the
    /// registry mounted it; false when it did not (the caller copies the blob instead).
    pub(crate) async fn mount_with_source_scope(
        &self,
        target: &Reference,
        from: &Reference,
        digest: &Digest,
    ) -> bool {
        let registry = target.resolve_registry();
        let Ok(http) = self.http_client(registry) else {
            return false;
        };
        let scheme = if self.clients.plain_http(registry) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{registry}/v2/{}/blobs/uploads/",
            target.repository()
        );
        let query = [("mount", digest.as_str()), ("from", from.repository())];
        let key = format!("{registry}/{}<{}", target.repository(), from.repository());
        let mut authorization = self.mount_tokens.lock().unwrap().get(&key).cloned();
        let auth = self.auth(target);
        for round in 0..2 {
            let mut req = http.post(&url).query(&query);
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let Ok(res) = req.header(reqwest::header::CONTENT_LENGTH, 0).send().await else {
                return false;
            };
            match res.status().as_u16() {
                201 => return true,
                // Declined: the registry opened an ordinary upload instead; cancel it.
                202 => {
                    if let Some(location) = res
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| reqwest::Url::parse(&url).ok()?.join(l).ok())
                    {
                        let mut cancel = http.delete(location);
                        if let Some(a) = &authorization {
                            cancel = cancel.header(reqwest::header::AUTHORIZATION, a);
                        }
                        let _ = cancel.send().await;
                    }
                    return false;
                }
                401 if round == 0 => {
                    let header = res
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string);
                    let scopes = [
                        format!("repository:{}:pull,push", target.repository()),
                        format!("repository:{}:pull", from.repository()),
                    ];
                    let Ok(Some(a)) = self
                        .answer_challenge(
                            &http,
                            registry,
                            &auth,
                            header.as_deref(),
                            Some(&scopes[..]),
                        )
                        .await
                    else {
                        return false;
                    };
                    self.mount_tokens
                        .lock()
                        .unwrap()
                        .insert(key.clone(), a.clone());
                    authorization = Some(a);
                }
                _ => return false,
            }
        }
        false
    }
}

/// The actions a registry token grants on `repository`, when the token says: a JWT whose
/// claims hold an `access` list (distribution's token format, which Docker Hub, Harbor,
/// GitLab and distribution's own token services use). None for anything else — opaque
/// tokens, or a `RegistryAuth::Basic` password. Read without checking the signature:
/// it only decides to stop early, the registry enforces what the token really grants.
pub fn granted(token: &str, repository: &str) -> Option<Vec<String>> {
    let mut parts = token.split('.');
    let (_header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let access = claims.get("access")?.as_array()?;
    let mut actions: Vec<String> = Vec::new();
    for entry in access {
        if entry["type"] == "repository" && entry["name"] == repository {
            for a in entry["actions"].as_array().into_iter().flatten() {
                if let Some(a) = a.as_str() {
                    if !actions.iter().any(|x| x == a) {
                        actions.push(a.to_string());
                    }
                }
            }
        }
    }
    Some(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            enc(br#"{"alg":"ES256","typ":"JWT"}"#),
            enc(claims.to_string().as_bytes()),
            enc(b"signature")
        )
    }

    #[test]
    fn a_token_says_what_it_grants_per_repository() {
        let t = jwt(serde_json::json!({"access": [
            {"type": "repository", "name": "acme/ci", "actions": ["pull"]},
            {"type": "repository", "name": "acme/ci-pr", "actions": ["pull", "push"]},
            {"type": "repository", "name": "acme/ci", "actions": ["pull", "delete"]},
        ]}));
        assert_eq!(
            granted(&t, "acme/ci"),
            Some(vec!["pull".to_string(), "delete".to_string()])
        );
        assert_eq!(
            granted(&t, "acme/ci-pr"),
            Some(vec!["pull".to_string(), "push".to_string()])
        );
        // Listed nowhere: granted nothing.
        assert_eq!(granted(&t, "acme/other"), Some(vec![]));
        // An empty access list (a user with no rights there): nothing.
        let none = jwt(serde_json::json!({"sub": "pr", "access": []}));
        assert_eq!(granted(&none, "acme/ci"), Some(vec![]));
    }

    #[test]
    fn tokens_that_do_not_say_are_left_to_the_registry() {
        // A JWT without an access claim, opaque tokens, garbage.
        assert_eq!(granted(&jwt(serde_json::json!({"sub": "x"})), "a/b"), None);
        assert_eq!(granted("djE6YWNtZS9jaTox", "a/b"), None);
        assert_eq!(granted("a.b.c.d", "a/b"), None);
        assert_eq!(granted("a.!!!.c", "a/b"), None);
        assert_eq!(granted("", "a/b"), None);
    }
}
