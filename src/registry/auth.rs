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
use std::process::Stdio;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Where a credential was found, for messages ("credentials from ~/.docker/config.json
/// were refused").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--username` / `--password-stdin` or `VENVIMG_USERNAME` / `VENVIMG_PASSWORD`.
    Environment,
    /// The `auths` entry `key` (`host`, or `host/namespace/...`) of this auth file.
    File { file: PathBuf, key: String },
    /// `docker-credential-<helper>`, named by `credHelpers` / `credsStore` in `file`.
    Helper { helper: String, file: PathBuf },
    /// Nothing found: anonymous; the auth files that were looked at, and why explicit
    /// credentials, if any were given, did not apply.
    None {
        searched: Vec<PathBuf>,
        note: Option<String>,
    },
    /// A credential was found but not sent, `reason` says why, `hint` what to do.
    Withheld {
        found: Box<CredentialSource>,
        reason: String,
        hint: String,
    },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => f.write_str(
                "credentials from VENVIMG_USERNAME/VENVIMG_PASSWORD (or --username/--password-stdin)",
            ),
            CredentialSource::File { file, key } => {
                write!(f, "credentials from {} (entry `{key}`)", file.display())
            }
            CredentialSource::Helper { helper, file } => write!(
                f,
                "credentials from credential helper docker-credential-{helper} (named in {})",
                file.display()
            ),
            CredentialSource::None { searched, note } => {
                f.write_str("no credentials (anonymous; ")?;
                match note {
                    Some(n) => write!(f, "{n}; none found in ")?,
                    None => f.write_str("none found in VENVIMG_USERNAME/VENVIMG_PASSWORD, ")?,
                }
                let files: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
                f.write_str(&files.join(", "))?;
                f.write_str(")")
            }
            CredentialSource::Withheld { found, reason, .. } => {
                write!(f, "{found}, not sent: {reason}")
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
                note: None,
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
    /// Both a username and a password.
    pub fn is_complete(&self) -> bool {
        self.username.is_some() && self.password.is_some()
    }

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

/// Look up the credential for `repository` (`team/app/ci`) on `registry` (HOST[:PORT]).
/// Warnings (an unreadable file, a missing helper) go to `warn` and the search falls
/// through, as podman does.
pub fn lookup(
    registry: &str,
    repository: &str,
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
        let text = match fs_err::read_to_string(file) {
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
        if let Some((key, entry)) = find_entry(&parsed, registry, repository) {
            if let Some(c) = entry_credential(entry, file, key, warn) {
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
        source: CredentialSource::None {
            searched: files,
            note: None,
        },
    }
}

/// The entry for `repository` on `registry`, as podman chooses it: keys are `host[:port]`
/// or `host[:port]/namespace/...`, and the longest one that is `registry/repository` or
/// one of its parent namespaces wins (`reg/team/app` over `reg` for `team/app/ci`); an
/// entry scoped to another path never applies. Keys written as a URL
/// (`https://host/v1/`, docker's older form) stand for the whole host.
fn find_entry<'a>(
    file: &'a AuthFile,
    registry: &str,
    repository: &str,
) -> Option<(&'a str, &'a AuthEntry)> {
    let mut scope = format!("{registry}/{}", repository.trim_matches('/'));
    loop {
        if let Some((k, e)) = file.auths.get_key_value(&scope) {
            return Some((k, e));
        }
        match scope.rfind('/') {
            Some(i) if i >= registry.len() => scope.truncate(i),
            _ => break,
        }
    }
    file.auths.iter().find_map(|(k, v)| {
        let url = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))?;
        (url.split('/').next() == Some(registry)).then_some((k.as_str(), v))
    })
}

fn entry_credential(
    entry: &AuthEntry,
    file: &std::path::Path,
    key: &str,
    warn: &mut dyn FnMut(String),
) -> Option<Credential> {
    let source = CredentialSource::File {
        file: file.to_path_buf(),
        key: key.to_string(),
    };
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
                    "{}: the `auth` of entry `{key}` is not base64 of USER:PASSWORD; skipping it",
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
    let child = crate::process::command(&program)
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

    fn file(json: &str) -> AuthFile {
        serde_json::from_str(json).unwrap()
    }

    fn key<'a>(f: &'a AuthFile, registry: &str, repository: &str) -> Option<&'a str> {
        find_entry(f, registry, repository).map(|(k, _)| k)
    }

    #[test]
    fn entries_match_by_host_even_when_written_as_url() {
        let f = file(r#"{"auths": {"https://reg.example.invalid/v1/": {"auth": "dTpw"}}}"#);
        assert_eq!(
            key(&f, "reg.example.invalid", "team/app"),
            Some("https://reg.example.invalid/v1/")
        );
        assert_eq!(key(&f, "other.invalid", "team/app"), None);
        // A URL key names a host, not a prefix of one.
        assert_eq!(key(&f, "reg.example", "team/app"), None);
    }

    #[test]
    fn the_longest_matching_scope_wins() {
        let f = file(
            r#"{"auths": {
                "reg:5000": {"auth": "dTpw"},
                "reg:5000/team": {"auth": "dTpw"},
                "reg:5000/team/app": {"auth": "dTpw"},
                "reg:5000/team/application": {"auth": "dTpw"},
                "reg:5000/other": {"auth": "dTpw"}
            }}"#,
        );
        assert_eq!(
            key(&f, "reg:5000", "team/app/ci"),
            Some("reg:5000/team/app")
        );
        assert_eq!(key(&f, "reg:5000", "team/app"), Some("reg:5000/team/app"));
        assert_eq!(key(&f, "reg:5000", "team/apple"), Some("reg:5000/team"));
        assert_eq!(
            key(&f, "reg:5000", "team/application/ci"),
            Some("reg:5000/team/application")
        );
        assert_eq!(key(&f, "reg:5000", "elsewhere/app"), Some("reg:5000"));
        // Another port is another registry.
        assert_eq!(key(&f, "reg:5001", "team/app"), None);
        assert_eq!(key(&f, "reg", "team/app"), None);
    }

    #[test]
    fn an_entry_scoped_to_another_path_does_not_apply() {
        let f = file(
            r#"{"auths": {
                "reg:5000/other/app": {"auth": "dTpw"},
                "reg:5000/team/app/ci-x": {"auth": "dTpw"}
            }}"#,
        );
        assert_eq!(key(&f, "reg:5000", "team/app/ci"), None);
        assert_eq!(key(&f, "reg:5000", "team/app"), None);
        assert_eq!(
            key(&f, "reg:5000", "team/app/ci-x"),
            Some("reg:5000/team/app/ci-x")
        );
    }

    #[test]
    fn sources_name_the_entry_never_the_secret() {
        let f = file(r#"{"auths": {"reg:5000/team/app": {"auth": "dTpodW50ZXIy"}}}"#);
        let (k, e) = find_entry(&f, "reg:5000", "team/app/ci").unwrap();
        let c = entry_credential(e, std::path::Path::new("/x/auth.json"), k, &mut |_| {}).unwrap();
        assert_eq!(c.auth, RegistryAuth::Basic("u".into(), "hunter2".into()));
        let shown = format!("{} {c:?}", c.source);
        assert!(
            shown.contains("/x/auth.json") && shown.contains("reg:5000/team/app"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("dTpodW50ZXIy"),
            "{shown}"
        );
    }
}
