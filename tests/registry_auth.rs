//! Credentials and TLS against a real loopback registry with htpasswd (Basic) auth over
//! TLS, its certificate made here with the openssl CLI: credentials from a podman auth
//! file, a docker config.json, a credential helper on PATH and VENVIMG_USERNAME /
//! VENVIMG_PASSWORD; refused ones exit 1 naming the registry and the credential source,
//! and no secret is ever printed, at any verbosity.
#[path = "support/registry_kit.rs"]
mod kit;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use kit::{assert_repository_complete, compose_on, push, runtime, small_layer, Access};
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
        let fingerprint = venvimg::image::sha256_digest(&std::fs::read(dir.join("ca.pem")).unwrap());
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
    let (_, second) = push(&rt, &reg, &target, &img).expect("second push");
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
    let dir = support::copy_fixture("sample");
    std::fs::write(
        dir.path().join("venvimg.yaml"),
        format!(
            "repository: {}/team/app-plan-{}\nbase: {}\nsessions: [lint]\n",
            auth.addr,
            std::process::id(),
            env.base
        ),
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
        let mut cmd = support::venvimg();
        cmd.current_dir(self.dir.path())
            .env("HOME", self.home.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env_remove("VENVIMG_USERNAME")
            .env_remove("VENVIMG_PASSWORD")
            .env_remove("SSL_CERT_FILE")
            .arg("plan")
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs plan with `envs` at every verbosity: succeeds with `PASSWORD`, never prints it.
fn assert_accepted(p: &Project, envs: &[(&str, &str)]) {
    let ca = auth_registry().ca.display().to_string();
    for verbosity in [&["-v"][..], &[][..], &["-q"][..]] {
        let mut args = vec!["--ca-file", ca.as_str()];
        args.extend(verbosity);
        let out = p.plan(envs, &args);
        let all = text(&out);
        assert!(
            out.status.success(),
            "plan {args:?} with {envs:?} failed:\n{all}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("miss"),
            "{all}"
        );
        assert!(!all.contains(PASSWORD), "the password was printed:\n{all}");
        assert!(
            !all.contains(&basic(USER, PASSWORD)),
            "the encoded password was printed:\n{all}"
        );
    }
}

/// Runs plan with `envs` at every verbosity: exit 1 naming the registry and `source`,
/// never printing `secret`.
fn assert_refused(p: &Project, envs: &[(&str, &str)], source: &str, secret: &str) {
    let auth = auth_registry();
    let ca = auth.ca.display().to_string();
    for verbosity in [&["-v"][..], &[][..], &["-q"][..]] {
        let mut args = vec!["--ca-file", ca.as_str()];
        args.extend(verbosity);
        let out = p.plan(envs, &args);
        let all = text(&out);
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
        assert!(!all.contains(secret), "the secret was printed:\n{all}");
        assert!(
            !all.contains(&basic(USER, secret)),
            "the encoded secret was printed:\n{all}"
        );
    }
}

#[test]
fn podman_auth_file_from_registry_auth_file() {
    let p = project();
    let addr = &auth_registry().addr;
    let good = p.write(
        "podman/auth.json",
        &format!(
            r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, PASSWORD)
        ),
    );
    assert_accepted(&p, &[("REGISTRY_AUTH_FILE", good.to_str().unwrap())]);
    let bad = p.write(
        "podman/bad.json",
        &format!(
            r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, WRONG)
        ),
    );
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
    p.write(
        "docker-good/config.json",
        &format!(
            r#"{{"auths": {{"https://{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, PASSWORD)
        ),
    );
    let dir = p.home.path().join("docker-good");
    assert_accepted(&p, &[("DOCKER_CONFIG", dir.to_str().unwrap())]);
    let bad = p.write(
        "docker-bad/config.json",
        &format!(
            r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, WRONG)
        ),
    );
    let dir = p.home.path().join("docker-bad");
    assert_refused(
        &p,
        &[("DOCKER_CONFIG", dir.to_str().unwrap())],
        bad.to_str().unwrap(),
        WRONG,
    );
}

/// `docker-credential-<name>` in `bin/`, answering `secret` for the auth registry only.
fn install_helper(p: &Project, name: &str, secret: &str) -> String {
    let addr = &auth_registry().addr;
    let bin = p.home.path().join(format!("bin-{name}"));
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n\
             if [ \"$server\" = \"{addr}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{secret}\"}}\\n' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn credential_helper_on_path_from_cred_helpers() {
    let p = project();
    let addr = &auth_registry().addr;
    let path = install_helper(&p, "venvimggood", PASSWORD);
    p.write(
        "helper-good/config.json",
        &format!(r#"{{"credHelpers": {{"{addr}": "venvimggood"}}}}"#),
    );
    let dir = p.home.path().join("helper-good");
    assert_accepted(
        &p,
        &[("DOCKER_CONFIG", dir.to_str().unwrap()), ("PATH", &path)],
    );

    let path = install_helper(&p, "venvimgbad", WRONG);
    p.write(
        "helper-bad/config.json",
        &format!(r#"{{"credHelpers": {{"{addr}": "venvimgbad"}}}}"#),
    );
    let dir = p.home.path().join("helper-bad");
    assert_refused(
        &p,
        &[("DOCKER_CONFIG", dir.to_str().unwrap()), ("PATH", &path)],
        "docker-credential-venvimgbad",
        WRONG,
    );
}

#[test]
fn a_missing_helper_warns_and_falls_through_to_the_file() {
    let p = project();
    let addr = &auth_registry().addr;
    p.write(
        "fallthrough/config.json",
        &format!(
            r#"{{"credHelpers": {{"{addr}": "venvimg-not-installed"}}, "auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, PASSWORD)
        ),
    );
    let dir = p.home.path().join("fallthrough");
    let ca = auth_registry().ca.display().to_string();
    let out = p.plan(
        &[("DOCKER_CONFIG", dir.to_str().unwrap())],
        &["--ca-file", &ca],
    );
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
    let file = p.write(
        "podman/wrong.json",
        &format!(
            r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
            basic(USER, WRONG)
        ),
    );
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
    let out = p.plan(&[], &["--ca-file", &ca]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&auth.addr) && stderr.contains("no credentials"),
        "{all}"
    );
    assert!(stderr.contains("podman login"), "{all}");

    // Without the CA: a TLS error that says how to trust the certificate. A loopback
    // registry that speaks TLS is reached over TLS, never downgraded to plain HTTP.
    let creds = [("VENVIMG_USERNAME", USER), ("VENVIMG_PASSWORD", PASSWORD)];
    let out = p.plan(&creds, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&auth.addr) && stderr.contains("--ca-file"),
        "{all}"
    );
    assert!(!all.contains(PASSWORD), "{all}");

    // SSL_CERT_FILE is read too; --skip-tls-verify is the explicit way around.
    let mut with_env = creds.to_vec();
    with_env.push(("SSL_CERT_FILE", &ca));
    let out = p.plan(&with_env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.plan(&creds, &["--skip-tls-verify"]);
    assert!(out.status.success(), "{}", text(&out));
}
