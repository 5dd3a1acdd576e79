//! A loopback registry (Debian's docker-registry, distribution 2.8) with token auth, and
//! the real token service it trusts (`tests/support/token_service.py`: the Docker token
//! protocol, ES256 JWTs whose certificate is the registry's `rootcertbundle`), with a
//! per-user policy: which user may pull or push which repository. The registry itself
//! enforces the policy; checks of what it holds go through its API with a token of a
//! read-everything user, and through its storage on disk.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support;

/// A user of the token service: name, password, and (repository or fnmatch pattern,
/// actions) grants.
pub struct User<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub grants: &'a [(&'a str, &'a [&'a str])],
}

pub struct TokenRegistry {
    /// `127.0.0.1:PORT` of the registry (plain HTTP).
    pub addr: String,
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// Where the registry keeps its repositories (distribution's filesystem layout).
    repositories: PathBuf,
    dir: tempfile::TempDir,
    service: Child,
}

const SERVICE: &str = "venvimg-trust-test";
const ISSUER: &str = "venvimg-trust-test-issuer";
/// Reads every repository, for the checks; the users under test never see it.
const CHECKER: &str = "venvimg-checker";

impl TokenRegistry {
    /// Start the token service (a fresh key) and the registry `name` trusting it (a
    /// fresh storage: the configuration names this run's certificate).
    pub fn start(name: &str, users: &[User<'_>]) -> TokenRegistry {
        let env = support::testenv();
        let dir = tempfile::tempdir().unwrap();
        let checker_password = format!("checker-{}", std::process::id());
        let mut policy_users = serde_json::Map::new();
        for u in users {
            let grants: serde_json::Map<String, serde_json::Value> = u
                .grants
                .iter()
                .map(|(repo, actions)| (repo.to_string(), serde_json::json!(actions)))
                .collect();
            policy_users.insert(
                u.name.to_string(),
                serde_json::json!({"password": u.password, "grants": grants}),
            );
        }
        policy_users.insert(
            CHECKER.into(),
            serde_json::json!({"password": checker_password, "grants": {"*": ["pull"]}}),
        );
        let policy =
            serde_json::json!({"issuer": ISSUER, "service": SERVICE, "users": policy_users});
        let script = support::manifest_dir().join("tests/support/token_service.py");
        let mut service = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(policy.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (bash tests/support/testenv.sh deps)");
        let mut line = String::new();
        std::io::BufReader::new(service.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(port) = line.trim().strip_prefix("ready ") else {
            let out = service.wait_with_output().unwrap();
            panic!(
                "the token service did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let realm = format!("http://127.0.0.1:{port}/token");
        let yaml = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            dir.path().join("cert.pem").display()
        );
        let addr = support::private_registry(name, &yaml);
        let registry = TokenRegistry {
            addr,
            realm,
            repositories: env
                .state_dir
                .join("registries")
                .join(name)
                .join("storage/docker/registry/v2/repositories"),
            dir,
            service,
        };
        std::fs::write(registry.dir.path().join("checker"), checker_password).unwrap();
        registry
    }

    /// A token from the service for `user` / `password` and `scopes` (what it granted is
    /// in the token; see [`TokenRegistry::requests`]).
    pub fn token(&self, user: &str, password: &str, scopes: &[String]) -> String {
        let mut url = format!("{}?service={SERVICE}", self.realm);
        for s in scopes {
            url.push_str("&scope=");
            url.push_str(s);
        }
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "20", "-u"])
            .arg(format!("{user}:{password}"))
            .arg(&url)
            .output()
            .expect("curl must be installed");
        assert!(out.status.success(), "token request for {user} failed");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    fn checker_token(&self, repo: &str) -> String {
        let password = std::fs::read_to_string(self.dir.path().join("checker")).unwrap();
        self.token(CHECKER, &password, &[format!("repository:{repo}:pull")])
    }

    /// `GET /v2/<repo>/<path>` with a pull token: (status, body).
    fn get(&self, repo: &str, path: &str, head: bool) -> (u16, String) {
        let token = self.checker_token(repo);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"]);
        if head {
            cmd.arg("-I");
        }
        let out = cmd
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg("-H")
            .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json")
            .arg(format!("http://{}/v2/{repo}/{path}", self.addr))
            .output()
            .expect("curl must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The repository's tags, sorted (none when the registry does not know it).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let (status, body) = self.get(repo, "tags/list", false);
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "tags/list of {repo}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        tags.sort();
        tags
    }

    /// The manifest `reference` (tag or digest) of `repo`, parsed.
    pub fn manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        let (status, body) = self.get(repo, &format!("manifests/{reference}"), false);
        assert_eq!(status, 200, "manifest {repo}:{reference}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Whether `repo` serves the blob `digest`.
    pub fn has_blob(&self, repo: &str, digest: &str) -> bool {
        self.get(repo, &format!("blobs/{digest}"), true).0 == 200
    }

    /// Every file the registry keeps for `repo` (layer links, manifests, tags, upload
    /// sessions), relative to the repository's folder: what any write there would change.
    pub fn stored_files(&self, repo: &str) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                }
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
        let mut out = BTreeSet::new();
        let root = self.repositories.join(repo);
        walk(&root, &root, &mut out);
        out
    }

    /// The token requests so far: `{"user", "status", "scopes": [...], "access": [...]}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}
