//! Credentials and TLS against a real loopback registry with htpasswd (Basic) auth over
//! TLS, its certificate made here with the openssl CLI: credentials from a podman auth
//! file (the longest matching `host/path` entry), a docker config.json, a credential
//! helper on PATH and VENVIMG_USERNAME / VENVIMG_PASSWORD; refused ones exit 1 naming the
//! registry and the credential source, and no secret is ever printed, at any verbosity.
//!
//! Credentials go only where they belong: environment credentials only to the configured
//! repository's registry (`inspect` of another registry does not send them; a recording
//! proxy in front of a real htpasswd registry shows what was sent), Basic credentials to
//! a registry's token service (real registries with token auth, whose realm is a fake
//! token service on 127.0.0.2 recording what it receives) only over HTTPS, and
//! `--skip-tls-verify HOST[:PORT]` skips verification for the registry named only.
use crate::support;
use crate::support::registry_kit as kit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use kit::{
    assert_repository_complete, compose_labeled, compose_on, push, runtime, small_layer, Access,
    FakeTokenService, RecordingProxy,
};
use venvimg::registry::auth::ExplicitCredentials;
use venvimg::registry::{Registry, RegistryError, Transport};

const USER: &str = "alice";
const PASSWORD: &str = "venvimg-Secr3t-pw";
/// bcrypt of PASSWORD (distribution's htpasswd only takes bcrypt).
const PASSWORD_BCRYPT: &str = "$2b$10$3izkHhYoYhiN/ACw8UWlG.3fTyaFwb.FuW.Q6Gc7M1Up0AOgV.cbW";
const WRONG: &str = "wr0ng-Passw0rd-XYZ";

struct AuthRegistry {
    /// `127.0.0.1:PORT`, HTTPS only.
    addr: String,
    /// The CA that signed the registry's certificate.
    ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 (rustls refuses a CA certificate used as
/// the server's own), and the htpasswd file.
fn make_material(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=venvimg test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
        ],
    );
    std::fs::write(dir.join("htpasswd"), format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
}

/// The TLS + htpasswd registry, started once (and kept running between runs, like the
/// shared one). Its material lives in the testenv state directory; it is made again when
/// missing or about to expire, and the registry restarts when it changes (the yaml
/// carries the CA's fingerprint).
fn auth_registry() -> &'static AuthRegistry {
    static REG: OnceLock<AuthRegistry> = OnceLock::new();
    REG.get_or_init(|| {
        let env = support::testenv();
        // nextest runs each test in its own process: the first one makes the certificate
        // material and starts the registry, the others wait, so none restarts it (which
        // wipes its storage) under another's feet.
        let _guard = DirLock::acquire(&env.state_dir.join("registry-auth-tls.lock"));
        let dir = env.state_dir.join("registry-auth-tls");
        let valid = Command::new("openssl")
            .args(["x509", "-checkend", "86400", "-noout", "-in"])
            .arg(dir.join("server.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && dir.join("htpasswd").is_file()
            && dir.join("ca.pem").is_file();
        if !valid {
            let tmp = env
                .state_dir
                .join(format!("registry-auth-tls.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            make_material(&tmp);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).unwrap();
        }
        let fingerprint = venvimg::model::Digest::of(&std::fs::read(dir.join("ca.pem")).unwrap());
        let yaml = format!(
            "# ca {fingerprint}\nauth:\n  htpasswd:\n    realm: venvimg-test\n    path: {d}/htpasswd\n\
             http:\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n",
            d = dir.display()
        );
        let addr = support::private_registry("auth-tls", &yaml);
        AuthRegistry {
            addr,
            ca: dir.join("ca.pem"),
        }
    })
}

/// A lock between test processes: an atomic `mkdir`, removed on drop (a lock left by a
/// killed process is taken over after five minutes).
struct DirLock(std::path::PathBuf);

impl DirLock {
    fn acquire(path: &std::path::Path) -> DirLock {
        let start = std::time::Instant::now();
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return DirLock(path.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(300));
                    if stale {
                        let _ = std::fs::remove_dir(path);
                        continue;
                    }
                    assert!(
                        start.elapsed() < std::time::Duration::from_secs(600),
                        "waited 10 minutes for {}",
                        path.display()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("cannot create the lock {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// An auth file (podman's auth.json, docker's config.json) with one `auths` entry: `key`
/// → `USER:password`.
fn auths(key: &str, password: &str) -> String {
    format!(
        r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#,
        basic(USER, password)
    )
}

fn access() -> Access {
    Access {
        tls_ca: Some(auth_registry().ca.clone()),
        user: Some((USER.into(), PASSWORD.into())),
    }
}

fn transport(password: Option<&str>) -> Transport {
    let reg = auth_registry();
    Transport {
        ca_files: vec![reg.ca.clone()],
        explicit: ExplicitCredentials {
            username: password.map(|_| USER.to_string()),
            password: password.map(str::to_string),
        },
        explicit_for: Some(reg.addr.clone()),
        monolithic: true,
        ..Default::default()
    }
}

#[test]
fn push_over_tls_with_basic_auth_then_a_second_push_uploads_nothing() {
    let env = support::testenv();
    let auth = auth_registry();
    let rt = runtime();
    let reg = Registry::new(transport(Some(PASSWORD)), &[&auth.addr, &env.registry]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = compose_on(
        &rt,
        &reg,
        &env.base,
        &[small_layer(dir.path(), "tests-3-12", 61, 128 << 10)],
    );
    let repo = format!("team/app-{}", std::process::id());
    let target = format!("{}/{repo}:ci", auth.addr);

    let (digest, first) = push(&rt, &reg, &target, &img).expect("push with credentials");
    assert_eq!(digest, img.image.manifest_digest);
    // The base layer lives on another registry: copied stream-to-stream, or already in
    // this repository from an earlier run of this test.
    assert_eq!(
        first.blobs_uploaded + first.blobs_present,
        3,
        "base layer + layer + config: {first:?}"
    );
    // Another job (a fresh registry session) finds every blob there.
    let later = Registry::new(transport(Some(PASSWORD)), &[&auth.addr, &env.registry]).unwrap();
    let (_, second) = push(&rt, &later, &target, &img).expect("second push");
    assert_eq!(second.blobs_uploaded, 0, "{second:?}");
    assert_eq!(second.bytes_uploaded, 0, "{second:?}");
    assert_eq!(second.blobs_present, 3, "{second:?}");
    let tags = assert_repository_complete(&access(), &auth.addr, &repo);
    assert_eq!(tags.get("ci"), Some(&digest));

    // The same push with a wrong password, and with none: refused, saying with what.
    for (password, names) in [
        (Some(WRONG), "VENVIMG_USERNAME/VENVIMG_PASSWORD"),
        (None, "no credentials"),
    ] {
        let reg = Registry::new(transport(password), &[&auth.addr, &env.registry]).unwrap();
        let err = push(&rt, &reg, &format!("{}/{repo}:refused", auth.addr), &img).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RegistryError::Denied { status: 401, .. }),
            "{err:?}"
        );
        assert!(msg.contains(&auth.addr) && msg.contains(names), "{msg}");
        assert!(
            !msg.contains(WRONG) && !format!("{err:?}").contains(WRONG),
            "{msg}"
        );
    }
}

/// Chunked uploads (POST, PATCHes, PUT) with Basic auth over TLS, and a base layer from
/// another registry copied stream-to-stream in 4 MiB PATCHes.
#[test]
fn chunked_copy_of_a_base_layer_from_another_registry() {
    let env = support::testenv();
    let auth = auth_registry();
    let rt = runtime();
    let chunked = Transport {
        monolithic: false,
        chunk_size: Some(4 << 20),
        ..transport(Some(PASSWORD))
    };
    let reg = Registry::new(chunked, &[&auth.addr, &env.registry]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = compose_on(
        &rt,
        &reg,
        &env.base,
        &[small_layer(dir.path(), "lint", 62, 1024)],
    );
    // A repository of its own: the base layer is missing there, so it is copied.
    let repo = support::unique_repo("copy")
        .split_once('/')
        .unwrap()
        .1
        .to_string();
    let (_, stats) = push(&rt, &reg, &format!("{}/{repo}:ci", auth.addr), &img).unwrap();
    // Once; twice when other tests push the same base blob to this registry at the same
    // moment and distribution, rewriting the blob's links, refuses our manifest once
    // (push_image then checks and sends the blobs again: the second round).
    assert!((1..=2).contains(&stats.blobs_copied), "{stats:?}");
    assert_eq!(
        stats.blobs_uploaded,
        stats.blobs_copied + 2,
        "the copies, the layer and the config: {stats:?}"
    );
    assert_repository_complete(&access(), &auth.addr, &repo);
}

/// A project whose `repository:` is on the auth registry (`base:` stays on the shared
/// anonymous one), and a HOME without credentials.
struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

fn project() -> Project {
    let env = support::testenv();
    let auth = auth_registry();
    project_with(
        &format!("{}/team/app-plan-{}", auth.addr, std::process::id()),
        &env.base,
    )
}

/// A project whose images go to `repository`, on `base`.
fn project_with(repository: &str, base: &str) -> Project {
    let dir = support::copy_fixture("sample");
    std::fs::write(
        dir.path().join("venvimg.yaml"),
        format!("repository: {repository}\nbase: {base}\nsessions: [lint]\n"),
    )
    .unwrap();
    Project {
        dir,
        home: tempfile::tempdir().unwrap(),
    }
}

impl Project {
    /// `venvimg plan` with only the credentials the test gives.
    fn plan(&self, envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let mut all = vec!["plan"];
        all.extend(args);
        self.run(envs, &all, None)
    }

    /// `venvimg ARGS` as [`Project::run`] runs it, which must exit with `code`: its stderr,
    /// and its whole output ([`text`]).
    #[track_caller]
    fn exits(&self, code: i32, envs: &[(&str, &str)], args: &[&str]) -> (String, String) {
        let out = self.run(envs, args, None);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(code), "venvimg {args:?}:\n{all}");
        (stderr_of(&out), all)
    }

    /// `venvimg ARGS` in the project, with only the credentials the test gives, and
    /// `stdin` on standard input.
    fn run(
        &self,
        envs: &[(&str, &str)],
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::process::Output {
        let mut cmd = support::venvimg();
        cmd.current_dir(self.dir.path())
            .env("HOME", self.home.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env_remove("VENVIMG_USERNAME")
            .env_remove("VENVIMG_PASSWORD")
            .env_remove("SSL_CERT_FILE")
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(input) = stdin {
            cmd.write_stdin(input.to_string());
        }
        cmd.output().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A docker config folder `name` in HOME holding `config.json`; the folder (for
    /// `DOCKER_CONFIG`).
    fn docker_config(&self, name: &str, config_json: &str) -> String {
        self.write(&format!("{name}/config.json"), config_json);
        self.home.path().join(name).to_str().unwrap().to_string()
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `check`s `plan --ca-file CA ARGS` with `envs`, at every verbosity (`-v`, none, `-q`):
/// the arguments and what the run did.
fn plan_at_every_verbosity(
    p: &Project,
    envs: &[(&str, &str)],
    check: impl Fn(&[&str], &std::process::Output),
) {
    let ca = auth_registry().ca.display().to_string();
    for verbosity in [&["-v"][..], &[][..], &["-q"][..]] {
        let mut args = vec!["--ca-file", ca.as_str()];
        args.extend(verbosity);
        check(&args, &p.plan(envs, &args));
    }
}

/// Runs plan with `envs` at every verbosity: succeeds with `PASSWORD`, never prints it.
fn assert_accepted(p: &Project, envs: &[(&str, &str)]) {
    plan_at_every_verbosity(p, envs, |args, out| {
        let all = text(out);
        assert!(
            out.status.success(),
            "plan {args:?} with {envs:?} failed:\n{all}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("miss"),
            "{all}"
        );
        assert_no_secret(&all, PASSWORD);
    });
}

/// Runs plan with `envs` at every verbosity: exit 1 naming the registry and `source`,
/// never printing `secret`.
fn assert_refused(p: &Project, envs: &[(&str, &str)], source: &str, secret: &str) {
    let auth = auth_registry();
    plan_at_every_verbosity(p, envs, |args, out| {
        let all = text(out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "plan {args:?} with {envs:?}:\n{all}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&auth.addr), "names the registry:\n{all}");
        assert!(stderr.contains("401"), "{all}");
        assert!(
            stderr.contains(source),
            "names the credential source {source:?}:\n{all}"
        );
        assert!(!stderr.contains("panicked"), "{all}");
        assert_no_secret(&all, secret);
    });
}

#[test]
fn podman_auth_file_from_registry_auth_file() {
    let p = project();
    let addr = &auth_registry().addr;
    let good = p.write("podman/auth.json", &auths(addr, PASSWORD));
    assert_accepted(&p, &[("REGISTRY_AUTH_FILE", good.to_str().unwrap())]);
    let bad = p.write("podman/bad.json", &auths(addr, WRONG));
    assert_refused(
        &p,
        &[("REGISTRY_AUTH_FILE", bad.to_str().unwrap())],
        bad.to_str().unwrap(),
        WRONG,
    );
}

#[test]
fn docker_config_json_from_docker_config() {
    let p = project();
    let addr = &auth_registry().addr;
    // docker writes `https://HOST` keys for some registries; both forms must match.
    let dir = p.docker_config("docker-good", &auths(&format!("https://{addr}"), PASSWORD));
    assert_accepted(&p, &[("DOCKER_CONFIG", &dir)]);
    let dir = p.docker_config("docker-bad", &auths(addr, WRONG));
    assert_refused(
        &p,
        &[("DOCKER_CONFIG", &dir)],
        &format!("{dir}/config.json"),
        WRONG,
    );
}

/// `docker-credential-<name>` in `bin/`, answering `secret` for the auth registry only.
fn install_helper(p: &Project, name: &str, secret: &str) -> String {
    let addr = &auth_registry().addr;
    let bin = p.home.path().join(format!("bin-{name}"));
    std::fs::create_dir_all(&bin).unwrap();
    support::fake_on_path(
        &bin,
        &format!("docker-credential-{name}"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n\
             if [ \"$server\" = \"{addr}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{secret}\"}}\\n' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
}

#[test]
fn credential_helper_on_path_from_cred_helpers() {
    let p = project();
    let addr = &auth_registry().addr;
    let path = install_helper(&p, "venvimggood", PASSWORD);
    let dir = p.docker_config(
        "helper-good",
        &format!(r#"{{"credHelpers": {{"{addr}": "venvimggood"}}}}"#),
    );
    assert_accepted(&p, &[("DOCKER_CONFIG", &dir), ("PATH", &path)]);

    let path = install_helper(&p, "venvimgbad", WRONG);
    let dir = p.docker_config(
        "helper-bad",
        &format!(r#"{{"credHelpers": {{"{addr}": "venvimgbad"}}}}"#),
    );
    assert_refused(
        &p,
        &[("DOCKER_CONFIG", &dir), ("PATH", &path)],
        "docker-credential-venvimgbad",
        WRONG,
    );
}

#[test]
fn a_missing_helper_warns_and_falls_through_to_the_file() {
    let p = project();
    let addr = &auth_registry().addr;
    let dir = p.docker_config(
        "fallthrough",
        &format!(
            r#"{{"credHelpers": {{"{addr}": "venvimg-not-installed"}}, "auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, PASSWORD)
        ),
    );
    let ca = auth_registry().ca.display().to_string();
    let out = p.plan(&[("DOCKER_CONFIG", &dir)], &["--ca-file", &ca]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("docker-credential-venvimg-not-installed"),
        "warns about the missing helper:\n{all}"
    );
    assert!(!all.contains(PASSWORD), "{all}");
}

#[test]
fn venvimg_username_and_password_and_password_stdin() {
    let p = project();
    assert_accepted(
        &p,
        &[("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)],
    );
    assert_refused(
        &p,
        &[("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", WRONG)],
        "VENVIMG_USERNAME/VENVIMG_PASSWORD",
        WRONG,
    );
    // Explicit credentials win over a file's.
    let addr = &auth_registry().addr;
    let file = p.write("podman/wrong.json", &auths(addr, WRONG));
    assert_accepted(
        &p,
        &[
            ("VENVIMG_USERNAME", USER),
            ("VENVIMG_PASSWORD", PASSWORD),
            ("REGISTRY_AUTH_FILE", file.to_str().unwrap()),
        ],
    );

    let ca = auth_registry().ca.display().to_string();
    let out = support::venvimg()
        .current_dir(p.dir.path())
        .env("HOME", p.home.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("VENVIMG_USERNAME")
        .env_remove("VENVIMG_PASSWORD")
        .args([
            "plan",
            "-v",
            "--ca-file",
            &ca,
            "--username",
            USER,
            "--password-stdin",
        ])
        .write_stdin(format!("{PASSWORD}\n"))
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(PASSWORD), "{all}");
}

#[test]
fn no_credentials_and_untrusted_certificates_say_what_to_do() {
    let p = project();
    let auth = auth_registry();
    let ca = auth.ca.display().to_string();

    // Anonymous against an auth registry: names what was searched.
    let (stderr, all) = p.exits(1, &[], &["plan", "--ca-file", &ca]);
    assert!(
        stderr.contains(&auth.addr) && stderr.contains("no credentials"),
        "{all}"
    );
    assert!(stderr.contains("podman login"), "{all}");

    // Without the CA: a TLS error that says how to trust the certificate. A loopback
    // registry that speaks TLS is reached over TLS, never downgraded to plain HTTP.
    let creds = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)];
    let (stderr, all) = p.exits(1, &creds, &["plan"]);
    assert!(
        stderr.contains(&auth.addr) && stderr.contains("--ca-file"),
        "{all}"
    );
    assert!(!all.contains(PASSWORD), "{all}");

    // SSL_CERT_FILE is read too; --skip-tls-verify HOST:PORT is the explicit way around.
    let mut with_env = creds.to_vec();
    with_env.push(("SSL_CERT_FILE", &ca));
    let out = p.plan(&with_env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.plan(&creds, &["--skip-tls-verify", &auth.addr]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `all` (a command's output) holds neither `secret` nor its Basic encoding.
#[track_caller]
fn assert_no_secret(all: &str, secret: &str) {
    assert!(!all.contains(secret), "a secret was printed:\n{all}");
    assert!(
        !all.contains(&basic(USER, secret)),
        "an encoded secret was printed:\n{all}"
    );
}

/// An `Authorization` header value that carries `secret`.
fn carries(authorization: &str, secret: &str) -> bool {
    authorization.contains(secret) || authorization.contains(&basic(USER, secret))
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The directory of the auth registry's certificate material (its CA signs the others).
fn material_dir() -> PathBuf {
    auth_registry().ca.parent().unwrap().to_path_buf()
}

/// A first line for a private registry's yaml, so that it restarts when the CA changes.
fn ca_fingerprint_comment() -> String {
    format!(
        "# ca {}\n",
        venvimg::model::Digest::of(&std::fs::read(&auth_registry().ca).unwrap())
    )
}

fn tls_yaml() -> String {
    let d = material_dir();
    format!(
        "http:\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n",
        d = d.display()
    )
}

/// A TLS registry on 127.0.0.1 with token auth whose token service is `realm`: its
/// `GET /v2/` answers 401 with `WWW-Authenticate: Bearer realm="<realm>",service=...`.
fn token_registry(name: &str, realm: &str) -> String {
    let yaml = format!(
        "{}auth:\n  token:\n    realm: {realm}\n    service: venvimg-test\n    issuer: venvimg-test\n    rootcertbundle: {}\n{}",
        ca_fingerprint_comment(),
        auth_registry().ca.display(),
        tls_yaml()
    );
    support::private_registry(name, &yaml)
}

/// A second TLS registry (no auth), with the same certificate nobody trusts by default.
fn tls_anonymous_registry() -> String {
    support::private_registry(
        "tls-anon",
        &format!("{}{}", ca_fingerprint_comment(), tls_yaml()),
    )
}

/// A plain-HTTP registry with the same htpasswd (loopback only, as tests are).
fn htpasswd_plain_registry() -> String {
    support::private_registry(
        "auth-plain",
        &format!(
            "auth:\n  htpasswd:\n    realm: venvimg-plain\n    path: {}/htpasswd\n",
            material_dir().display()
        ),
    )
}

/// A certificate for 127.0.0.2 signed by the test CA, made in `dir`: (cert, key).
fn realm_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_dir = material_dir();
    let mut req = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    req.extend(["-nodes", "-keyout", "realm.key", "-out", "realm.csr"]);
    req.extend(["-subj", "/CN=127.0.0.2"]);
    openssl(dir, &req);
    std::fs::write(
        dir.join("realm.ext"),
        "subjectAltName=IP:127.0.0.2\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ca = ca_dir.join("ca.pem").display().to_string();
    let ca_key = ca_dir.join("ca.key").display().to_string();
    let serial = format!("0x{:x}", std::process::id() as u64 * 7919 + 17);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "realm.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-out",
            "realm.pem",
            "-days",
            "2",
            "-extfile",
            "realm.ext",
        ],
    );
    (dir.join("realm.pem"), dir.join("realm.key"))
}

/// Where the fake token services listen: the registries' configuration names them, so
/// the addresses are fixed. 127.0.0.2 is another host than the registries' 127.0.0.1;
/// the ports are below the ephemeral range.
const HTTP_REALM: &str = "127.0.0.2:29471";
const HTTPS_REALM: &str = "127.0.0.2:29472";

#[test]
fn a_token_service_gets_basic_credentials_only_over_https() {
    let env = support::testenv();
    let ca = auth_registry().ca.display().to_string();
    // The token services' addresses are fixed: one test process at a time uses them.
    let _lock = DirLock::acquire(&env.state_dir.join("fake-token-services.lock"));
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = realm_certificate(tmp.path());
    let http_realm = FakeTokenService::start(HTTP_REALM, None);
    let https_realm = FakeTokenService::start(HTTPS_REALM, Some((&cert, &key)));
    let creds = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)];
    let pid = std::process::id();

    // An HTTPS registry whose token service is plain HTTP on another host: the
    // credential is not sent there; venvimg goes on without it and says why.
    let reg = token_registry("token-http-realm", &http_realm.url);
    let p = project_with(&format!("{reg}/team/realm-{pid}"), &env.base);
    let (stderr, all) = p.exits(1, &creds, &["plan", "-v", "--ca-file", &ca]);
    for needle in [
        reg.as_str(),
        http_realm.url.as_str(),
        "not sent",
        "plain HTTP",
        "only over HTTPS",
        "VENVIMG_USERNAME/VENVIMG_PASSWORD",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing:\n{all}");
    }
    let seen = http_realm.authorizations();
    assert!(
        !seen.is_empty(),
        "the token service was never asked, so this proves nothing:\n{all}"
    );
    for a in seen.iter().flatten() {
        assert!(
            !carries(a, PASSWORD),
            "the token service got the password: {a}"
        );
    }
    assert_no_secret(&all, PASSWORD);

    // Its token service over HTTPS on another host: sent, and the user is told once,
    // with both hosts.
    let reg = token_registry("token-https-realm", &https_realm.url);
    let p = project_with(&format!("{reg}/team/realm-{pid}"), &env.base);
    // The fake service hands out no token: refused in the end, naming the credentials.
    let (stderr, all) = p.exits(1, &creds, &["plan", "-v", "--ca-file", &ca]);
    let warning = format!("token service on another host, {HTTPS_REALM}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(&warning)).collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{all}");
    assert!(warnings[0].contains(&reg), "{all}");
    let expected = format!("Basic {}", basic(USER, PASSWORD));
    assert!(
        https_realm
            .authorizations()
            .iter()
            .flatten()
            .any(|a| a == &expected),
        "the HTTPS token service did not get the credentials: {:?}\n{all}",
        https_realm.authorizations()
    );
    assert_no_secret(&all, PASSWORD);

    // --skip-tls-verify naming the registry does not cover its token service: its
    // certificate would go unchecked, so the credential is not sent there.
    let before = https_realm.authorizations().len();
    let (stderr, all) = p.exits(1, &creds, &["plan", "-v", "--skip-tls-verify", &reg]);
    assert!(
        stderr.contains("without checking its TLS certificate")
            && stderr.contains(&format!("--skip-tls-verify {HTTPS_REALM}")),
        "{all}"
    );
    let after = https_realm.authorizations();
    assert!(
        after.len() > before,
        "the token service was never asked:\n{all}"
    );
    for a in after[before..].iter().flatten() {
        assert!(
            !carries(a, PASSWORD),
            "the token service got the password: {a}"
        );
    }
    assert_no_secret(&all, PASSWORD);
}

/// Pushes an image `venvimg inspect` can read (a record label) to `registry/repo_tag`.
fn push_inspectable(registry: &str, repo_tag: &str) {
    let env = support::testenv();
    let rt = runtime();
    let transport = Transport {
        explicit: ExplicitCredentials {
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
        },
        explicit_for: Some(registry.into()),
        monolithic: true,
        ..Default::default()
    };
    let reg = Registry::new(transport, &[registry, &env.registry]).unwrap();
    let base = rt
        .block_on(reg.resolve_base(&kit::reference(&env.base), &kit::platform()))
        .unwrap();
    let labels = support::record_labels("lint", base.digest.as_str());
    let dir = tempfile::tempdir().unwrap();
    let img = compose_labeled(base, &[small_layer(dir.path(), "lint", 71, 1024)], &labels);
    push(&rt, &reg, &format!("{registry}/{repo_tag}"), &img).expect("push with credentials");
}

#[test]
fn environment_credentials_go_only_to_the_configured_registry() {
    let env = support::testenv();
    let upstream = htpasswd_plain_registry();
    let proxy = RecordingProxy::start(&upstream);
    let pid = std::process::id();
    let repo_tag = format!("team/inspect-{pid}:ci");
    push_inspectable(&upstream, &repo_tag);
    let image = format!("{}/{repo_tag}", proxy.addr);
    let creds = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)];
    let sent = |secret: &str| -> Vec<String> {
        proxy
            .requests()
            .into_iter()
            .filter(|h| carries(h, secret))
            .collect()
    };

    // venvimg.yaml's repository is on the shared registry; IMAGE is on another one.
    let p = project_with(&format!("{}/team/app-{pid}", env.registry), &env.base);
    let (stderr, all) = p.exits(1, &creds, &["inspect", "-v", &image]);
    assert!(
        stderr.contains(&proxy.addr) && stderr.contains("401"),
        "{all}"
    );
    assert!(
        stderr.contains(&format!(
            "VENVIMG_USERNAME/VENVIMG_PASSWORD (or --username/--password-stdin) are for {} only",
            env.registry
        )),
        "says why the credentials were not used:\n{all}"
    );
    assert!(!proxy.requests().is_empty(), "{all}");
    assert_eq!(sent(PASSWORD), Vec::<String>::new(), "{all}");
    assert_no_secret(&all, PASSWORD);

    // --username with --password-stdin go to IMAGE's registry (wrong environment
    // credentials notwithstanding).
    proxy.clear();
    let wrong = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", WRONG)];
    let out = p.run(
        &wrong,
        &[
            "inspect",
            "-v",
            "--username",
            USER,
            "--password-stdin",
            &image,
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lint"),
        "{all}"
    );
    assert!(!sent(PASSWORD).is_empty(), "{:?}", proxy.requests());
    assert_eq!(sent(WRONG), Vec::<String>::new());
    assert_no_secret(&all, PASSWORD);
    assert_no_secret(&all, WRONG);

    // One of the two flags only: a usage error that says what to give.
    let out = p.run(&creds, &["inspect", "--username", USER, &image], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(stderr_of(&out).contains("--password-stdin"), "{all}");

    // No venvimg.yaml: the environment's credentials go nowhere.
    proxy.clear();
    let none = p.dir.path().join("absent.yaml");
    let out = p.run(
        &creds,
        &["--config", none.to_str().unwrap(), "inspect", &image],
        None,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(stderr_of(&out).contains("no venvimg.yaml"), "{all}");
    assert_eq!(sent(PASSWORD), Vec::<String>::new(), "{all}");

    // IMAGE on the registry of venvimg.yaml's repository: they go there.
    let q = project_with(&format!("{}/team/app-{pid}", proxy.addr), &env.base);
    proxy.clear();
    let out = q.run(&creds, &["inspect", "-v", &image], None);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!sent(PASSWORD).is_empty(), "{:?}", proxy.requests());
    assert_no_secret(&all, PASSWORD);

    // A base image on another registry than the repository's does not get them either.
    let base = format!("{upstream}/base/python-nox:bookworm");
    let copy = support::skopeo()
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .args(["--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!("docker://{}", env.base))
        .arg(format!("docker://{base}"))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let r = project_with(
        &format!("{}/team/app-{pid}", env.registry),
        &format!("{}/base/python-nox:bookworm", proxy.addr),
    );
    proxy.clear();
    let (stderr, all) = r.exits(1, &creds, &["plan", "-v"]);
    assert!(
        stderr.contains(&proxy.addr) && stderr.contains("401"),
        "{all}"
    );
    assert!(!proxy.requests().is_empty(), "{all}");
    assert_eq!(sent(PASSWORD), Vec::<String>::new(), "{all}");
    assert_no_secret(&all, PASSWORD);
}

#[test]
fn skip_tls_verify_skips_only_the_registry_it_names() {
    let env = support::testenv();
    let a = auth_registry().addr.clone();
    let b = tls_anonymous_registry();
    let base = format!("{b}/base/python-nox:bookworm");
    support::copy_tag(&env.base, &base);
    // Repository on A (htpasswd), base on B: neither certificate is trusted here.
    let p = project_with(&format!("{a}/team/skip-{}", std::process::id()), &base);
    let creds = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)];

    for (skipped, verified) in [(&a, &b), (&b, &a)] {
        let (stderr, all) = p.exits(1, &creds, &["plan", "-v", "--skip-tls-verify", skipped]);
        assert!(
            stderr.contains(&format!("cannot reach registry {verified} for"))
                && stderr.contains("over TLS")
                && stderr.contains(&format!("--skip-tls-verify {verified}")),
            "skipping {skipped} must not skip {verified}:\n{all}"
        );
        assert_no_secret(&all, PASSWORD);
    }
    let out = p.plan(
        &creds,
        &["-v", "--skip-tls-verify", &a, "--skip-tls-verify", &b],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("miss"),
        "{all}"
    );
    assert_no_secret(&all, PASSWORD);

    // Naming no registry, or not as HOST[:PORT]: usage errors that say what to write.
    let (stderr, all) = p.exits(2, &creds, &["plan", "--skip-tls-verify"]);
    assert!(stderr.contains("--skip-tls-verify HOST[:PORT]"), "{all}");
    let (stderr, all) = p.exits(
        2,
        &creds,
        &["plan", "--skip-tls-verify", &format!("https://{a}/")],
    );
    assert!(stderr.contains("HOST[:PORT]"), "{all}");
}

#[test]
fn the_longest_matching_auth_file_entry_wins() {
    let env = support::testenv();
    let addr = &auth_registry().addr;
    let pid = std::process::id();
    let p = project_with(&format!("{addr}/team/app/ci-{pid}"), &env.base);
    let file = p.write(
        "podman/scoped.json",
        &format!(
            r#"{{"auths": {{
                "{addr}": {{"auth": "{wrong}"}},
                "{addr}/team/app": {{"auth": "{good}"}},
                "{addr}/team/application": {{"auth": "{good}"}}
            }}}}"#,
            wrong = basic(USER, WRONG),
            good = basic(USER, PASSWORD)
        ),
    );
    let envs = [("REGISTRY_AUTH_FILE", file.to_str().unwrap())];
    // `team/app/ci-PID`: the `host/team/app` entry, not the host's.
    assert_accepted(&p, &envs);
    // `team/application-x-PID`: the host's entry; a namespace that merely starts alike
    // does not apply.
    let q = project_with(&format!("{addr}/team/application-x-{pid}"), &env.base);
    assert_refused(&q, &envs, &format!("(entry `{addr}`)"), WRONG);
}
