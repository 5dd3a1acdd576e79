//! Credentials from where users already keep them, in the order podman and skopeo read
//! them: `VENVIMG_USERNAME`/`VENVIMG_PASSWORD` (CI secrets) first, then
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (with `credHelpers` / `credsStore`).
//!
//! A secret is never formatted: [`Credential`]'s `Debug` hides it, and errors name only
//! the *source* a credential came from.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Where a credential was found, for messages ("credentials from ~/.docker/config.json
/// were refused").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--username` / `--password-stdin` or `VENVIMG_USERNAME` / `VENVIMG_PASSWORD`.
    Environment,
    /// An `auths` entry of this auth file.
    File(PathBuf),
    /// `docker-credential-<helper>`, named by `credHelpers` / `credsStore` in `file`.
    Helper { helper: String, file: PathBuf },
    /// Nothing found: anonymous; the auth files that were looked at.
    None { searched: Vec<PathBuf> },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => f.write_str(
                "credentials from VENVIMG_USERNAME/VENVIMG_PASSWORD (or --username/--password-stdin)",
            ),
            CredentialSource::File(p) => write!(f, "credentials from {}", p.display()),
            CredentialSource::Helper { helper, file } => write!(
                f,
                "credentials from credential helper docker-credential-{helper} (named in {})",
                file.display()
            ),
            CredentialSource::None { searched } => {
                f.write_str("no credentials (anonymous; none found in VENVIMG_USERNAME/VENVIMG_PASSWORD")?;
                for p in searched {
                    write!(f, ", {}", p.display())?;
                }
                f.write_str(")")
            }
        }
    }
}

#[derive(Clone)]
pub struct Credential {
    pub auth: RegistryAuth,
    pub source: CredentialSource,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RegistryAuth's Debug already hides secrets; say only what kind it is.
        let kind = match self.auth {
            RegistryAuth::Anonymous => "anonymous",
            RegistryAuth::Basic(..) => "basic",
            RegistryAuth::Bearer(..) => "bearer",
        };
        write!(f, "Credential({kind} from {})", self.source)
    }
}

impl Credential {
    pub fn anonymous() -> Self {
        Credential {
            auth: RegistryAuth::Anonymous,
            source: CredentialSource::None {
                searched: Vec::new(),
            },
        }
    }
}

/// Explicit credentials given on the command line or in the environment; they apply to
/// the target repository's registry only, never to the base image's.
#[derive(Clone, Default)]
pub struct ExplicitCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl ExplicitCredentials {
    pub fn from_env() -> Self {
        ExplicitCredentials {
            username: std::env::var("VENVIMG_USERNAME")
                .ok()
                .filter(|s| !s.is_empty()),
            password: std::env::var("VENVIMG_PASSWORD")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The auth files podman/skopeo would read, in their order, then docker's.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(h) = &home {
        files.push(h.join(".config/containers/auth.json"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        files.push(PathBuf::from(d).join("config.json"));
    } else if let Some(h) = &home {
        files.push(h.join(".docker/config.json"));
    }
    files
}

/// Look up the credential for `registry` (HOST[:PORT]). Warnings (an unreadable file, a
/// missing helper) go to `warn` and the search falls through, as podman does.
pub fn lookup(
    registry: &str,
    explicit: Option<&ExplicitCredentials>,
    warn: &mut dyn FnMut(String),
) -> Credential {
    if let Some(e) = explicit {
        match (&e.username, &e.password) {
            (Some(u), Some(p)) => {
                return Credential {
                    auth: RegistryAuth::Basic(u.clone(), p.clone()),
                    source: CredentialSource::Environment,
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                warn("only one of VENVIMG_USERNAME / VENVIMG_PASSWORD is set; ignoring both".into())
            }
            (None, None) => {}
        }
    }
    let files = auth_files();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn(format!("cannot read {}: {e}", file.display()));
                continue;
            }
        };
        let parsed: AuthFile = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                warn(format!(
                    "{} is not valid JSON ({e}); skipping it",
                    file.display()
                ));
                continue;
            }
        };
        if let Some(helper) = parsed.cred_helpers.get(registry) {
            if let Some(c) = run_helper(helper, file, registry, warn) {
                return c;
            }
        }
        if let Some(entry) = find_entry(&parsed, registry) {
            if let Some(c) = entry_credential(entry, file, warn) {
                return c;
            }
        }
        if let Some(store) = &parsed.creds_store {
            if let Some(c) = run_helper(store, file, registry, warn) {
                return c;
            }
        }
    }
    Credential {
        auth: RegistryAuth::Anonymous,
        source: CredentialSource::None { searched: files },
    }
}

/// Keys in auth files are `host[:port]`, sometimes written as a URL
/// (`https://host/v1/`) or with a repository path (podman allows `host/ns`).
fn find_entry<'a>(file: &'a AuthFile, registry: &str) -> Option<&'a AuthEntry> {
    if let Some(e) = file.auths.get(registry) {
        return Some(e);
    }
    file.auths.iter().find_map(|(k, v)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        (host == registry).then_some(v)
    })
}

fn entry_credential(
    entry: &AuthEntry,
    file: &std::path::Path,
    warn: &mut dyn FnMut(String),
) -> Option<Credential> {
    let source = CredentialSource::File(file.to_path_buf());
    if let Some(token) = entry.identity_token.as_ref().filter(|t| !t.is_empty()) {
        // An identity token is a refresh token for the registry's token service; the
        // distribution token protocol accepts it as the password of user `<token>`.
        return Some(Credential {
            auth: RegistryAuth::Basic("<token>".into(), token.clone()),
            source,
        });
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|s| s.split_once(':')) {
            Some((u, p)) => {
                return Some(Credential {
                    auth: RegistryAuth::Basic(u.to_string(), p.to_string()),
                    source,
                })
            }
            None => {
                warn(format!(
                    "{}: an `auth` entry is not base64 of USER:PASSWORD; skipping it",
                    file.display()
                ));
                return None;
            }
        }
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Some(Credential {
            auth: RegistryAuth::Basic(u.clone(), p.clone()),
            source,
        });
    }
    None
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-NAME get` with the registry on stdin (the docker credential
/// helper protocol). Blocking; callers keep it off the async runtime's hot path.
fn run_helper(
    name: &str,
    file: &std::path::Path,
    registry: &str,
    warn: &mut dyn FnMut(String),
) -> Option<Credential> {
    let program = format!("docker-credential-{name}");
    let child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn(format!(
                "credential helper {program} could not be run ({e}); trying the next source"
            ));
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            warn(format!("credential helper {program} failed ({e})"));
            return None;
        }
    };
    if !out.status.success() {
        // "credentials not found in native keychain" is the normal miss; say it quietly.
        warn(format!(
            "credential helper {program} has no credentials for {registry}"
        ));
        return None;
    }
    let reply: HelperReply = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(_) => {
            warn(format!(
                "credential helper {program} answered something that is not its JSON reply"
            ));
            return None;
        }
    };
    let source = CredentialSource::Helper {
        helper: name.to_string(),
        file: file.to_path_buf(),
    };
    Some(Credential {
        auth: RegistryAuth::Basic(reply.username, reply.secret),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let c = Credential {
            auth: RegistryAuth::Basic("user".into(), "hunter2".into()),
            source: CredentialSource::Environment,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("basic"), "{s}");
    }

    #[test]
    fn entries_match_by_host_even_when_written_as_url() {
        let file: AuthFile = serde_json::from_str(
            r#"{"auths": {"https://reg.example.invalid/v1/": {"auth": "dTpw"}}}"#,
        )
        .unwrap();
        assert!(find_entry(&file, "reg.example.invalid").is_some());
        assert!(find_entry(&file, "other.invalid").is_none());
    }
}
