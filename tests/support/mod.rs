//! Test support shared by the integration tests (`tests/it/`, one module per area).
//!
//! The real parts (loopback registry, podman configuration, base image with Python, nox and
//! uv) come from `tests/support/testenv.sh up`, run once per test process. When it fails,
//! the tests fail loudly with the script's message: they never skip.
#![allow(dead_code)]

pub mod action_runner;
pub mod background;
pub mod fault_proxy;
pub mod project;
pub mod registry_kit;
pub mod token_registry;

pub use project::{by_session, image_of, json_ok, session, write_config, Project};

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const INSTALL_HINT: &str = "install the test dependencies as root with \
`bash tests/support/testenv.sh deps` (apt-get install -y podman runc skopeo umoci \
docker-registry debootstrap musl-tools uidmap; python3 -m pip install uv nox), \
then `bash tests/support/testenv.sh up`; recipes: /work/shared/ENVIRONMENT.md";

/// What `testenv.sh up` set up, read from its env file.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// `127.0.0.1:PORT` of the shared loopback registry (plain HTTP).
    pub registry: String,
    /// The base image in that registry: `127.0.0.1:PORT/base/python-nox:bookworm`.
    pub base: String,
    /// The same base image in local podman storage: `localhost/venvimg-test/base:bookworm`.
    pub base_local: String,
    /// Every `KEY=value` of the env file (CONTAINERS_CONF, CONTAINERS_REGISTRIES_CONF, ...),
    /// set on every command made by this module.
    pub envs: Vec<(String, String)>,
    /// `$VENVIMG_TESTENV_DIR` (default `/var/tmp/venvimg-testenv`).
    pub state_dir: PathBuf,
}

impl TestEnv {
    /// A value of the env file, e.g. `VENVIMG_TEST_BASE_DIGEST` or `VENVIMG_TEST_CA_FILE`.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.envs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Manifest digest of the base image in the registry (`sha256:...`).
    pub fn base_digest(&self) -> &str {
        self.var("VENVIMG_TEST_BASE_DIGEST")
            .expect("VENVIMG_TEST_BASE_DIGEST missing from the testenv env file")
    }

    /// The CA bundle package downloads need inside containers (mount it, set
    /// `SSL_CERT_FILE` / `PIP_CERT`).
    pub fn ca_file(&self) -> &str {
        self.var("VENVIMG_TEST_CA_FILE")
            .unwrap_or("/etc/ssl/certs/ca-certificates.crt")
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    manifest_dir().join("tests/support/testenv.sh")
}

fn run_script(args: &[&str]) -> String {
    let out = StdCommand::new("bash")
        .arg(script())
        .args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run bash {}: {e}\n{INSTALL_HINT}",
                script().display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "test environment: `bash tests/support/testenv.sh {}` failed ({}).\n\
             --- stderr ---\n{}\n--- stdout ---\n{}\n--------------\n{INSTALL_HINT}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            stdout.trim_end(),
        );
    }
    stdout
}

fn parse_env_file(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the testenv env file {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line in {}: {l:?}", path.display()));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The test environment, brought up (or found up) once per test process.
pub fn testenv() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let stdout = run_script(&["up"]);
        let path = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("testenv.sh up printed no env file path\n{INSTALL_HINT}"));
        let envs = parse_env_file(&path);
        let map: HashMap<&str, &str> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let get = |k: &str| -> String {
            map.get(k)
                .unwrap_or_else(|| panic!("{k} missing from {}", path.display()))
                .to_string()
        };
        TestEnv {
            registry: get("VENVIMG_TEST_REGISTRY"),
            base: get("VENVIMG_TEST_BASE"),
            base_local: get("VENVIMG_TEST_BASE_LOCAL"),
            state_dir: PathBuf::from(get("VENVIMG_TESTENV_DIR")),
            envs,
        }
    })
}

/// A part of the test environment that only some tests use, brought up (or found up) by
/// `testenv.sh up PART` once per test process: the tests that need none of them never
/// wait for them.
fn part(name: &str, cell: &'static OnceLock<Vec<(String, String)>>) -> &'static [(String, String)] {
    cell.get_or_init(|| {
        testenv();
        let stdout = run_script(&["up", name]);
        let file = format!("env.{name}");
        let path = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.ends_with(&file))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!("testenv.sh up {name} printed no {file} path:\n{stdout}\n{INSTALL_HINT}")
            });
        parse_env_file(&path)
    })
}

/// The linux/arm64 base (built under qemu emulation, minutes the first time) and the
/// two-platform index of both bases: `VENVIMG_TEST_BASE_ARM64`, `VENVIMG_TEST_BASE_MULTI`
/// and their digests.
pub fn need_arm64() -> &'static [(String, String)] {
    static ARM64: OnceLock<Vec<(String, String)>> = OnceLock::new();
    part("arm64", &ARM64)
}

/// A value of the arm64 part, e.g. `VENVIMG_TEST_BASE_MULTI`.
pub fn arm64_var(key: &str) -> String {
    need_arm64()
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key} missing from testenv.sh's env.arm64"))
}

/// The private Docker daemon (`DOCKER_HOST` of the test environment answers after this).
pub fn need_docker() {
    static DOCKER: OnceLock<Vec<(String, String)>> = OnceLock::new();
    part("docker", &DOCKER);
}

/// `docker` on the test environment's private daemon (its DOCKER_HOST), stdin closed.
pub fn docker() -> std::process::Command {
    need_docker();
    let mut c = std::process::Command::new("docker");
    c.envs(testenv().envs.iter().map(|(k, v)| (k, v)));
    c.stdin(std::process::Stdio::null());
    c
}

/// `docker ARGS`, which must succeed; its stdout and stderr.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker().args(args).output().expect("cannot run docker");
    let text = output_text(&out);
    assert!(out.status.success(), "docker {}: {text}", args.join(" "));
    text
}

/// What a finished command printed: its stdout, then its stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out` must be a success, or the test fails with `what` and the command's stderr; its
/// stdout.
#[track_caller]
pub fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git ARGS` in `dir` (as user `ci <ci@example.invalid>`), which must succeed.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) {
    let out = StdCommand::new("git")
        .args(["-c", "user.email=ci@example.invalid", "-c", "user.name=ci"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run git: apt-get install git");
    stdout_ok(&out, &format!("git {args:?}"));
}

/// A loopback port nothing listens on (free when asked; whoever binds it next gets it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// `venvimg ARGS` in `dir` under `/usr/bin/time -v`, with the test environment's
/// variables: its exit code, its output (stdout then stderr, time's report included) and
/// its largest resident set in bytes (venvimg's own, not its children's).
pub fn venvimg_rss(dir: &Path, args: &[&str]) -> (Option<i32>, String, u64) {
    let out = StdCommand::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_venvimg"))
        .args(args)
        .current_dir(dir)
        .envs(testenv().envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("cannot run /usr/bin/time (apt-get install -y time)");
    let text = output_text(&out);
    let rss_kib: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("time -v reports the maximum RSS");
    (out.status.code(), text, rss_kib * 1024)
}

/// The private Docker daemon with gitlab-ci-local's helper image in it
/// (`docker.io/firecow/gitlab-ci-local-util:latest`, made from the base image plus rsync:
/// Docker Hub is out of reach), so gitlab-ci-local's docker executor never pulls it.
/// Returns that image's name.
pub fn need_gitlab() -> String {
    static GITLAB: OnceLock<Vec<(String, String)>> = OnceLock::new();
    need_docker();
    part("gitlab", &GITLAB)
        .iter()
        .find(|(k, _)| k == "VENVIMG_TEST_GCL_HELPER")
        .map(|(_, v)| v.clone())
        .expect("VENVIMG_TEST_GCL_HELPER missing from testenv.sh's env.gitlab")
}

/// The release folder, as `.ci/release.sh` makes it: `$VENVIMG_DIST` when set (`.ci/run`
/// made it), else this checkout's `dist/`, built once under a lock by
/// `tests/support/dist.sh` and reused while its sources are unchanged (the aarch64
/// cross-build costs minutes; the tests that read release files share one build).
pub fn dist() -> PathBuf {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        if let Some(dir) = std::env::var_os("VENVIMG_DIST").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("SHA256SUMS").is_file(),
                "VENVIMG_DIST={} holds no SHA256SUMS: run `bash .ci/release.sh` into it, or unset it",
                dir.display()
            );
            return dir;
        }
        let out = StdCommand::new("bash")
            .arg(manifest_dir().join("tests/support/dist.sh"))
            .current_dir(manifest_dir())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash tests/support/dist.sh");
        assert!(
            out.status.success(),
            "tests/support/dist.sh (.ci/release.sh) failed; it needs musl-tools, maturin and \
             ziglang: `bash tests/support/testenv.sh deps`\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
    .clone()
}

/// The static x86_64 release binary in [`dist`].
pub fn musl_binary() -> PathBuf {
    let bin = dist().join(format!(
        "venvimg-{}-x86_64-unknown-linux-musl",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        bin.is_file(),
        "{} is missing from the release folder",
        bin.display()
    );
    bin
}

/// The venvimg binary of this crate, with the test environment's variables set.
pub fn venvimg() -> assert_cmd::Command {
    let env = testenv();
    let mut cmd = assert_cmd::Command::cargo_bin("venvimg").expect("venvimg binary not built");
    for var in CI_MARKERS {
        cmd.env_remove(var);
    }
    cmd.envs(env.envs.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The variables venvimg reads to tell which CI it runs in (`src/ci.rs`): removed from
/// what tests run, so the suite means the same under a CI runner as on a laptop; a test
/// about CI sets them itself.
pub const CI_MARKERS: &[&str] = &[
    "GCL_PROJECT_DIR_ON_HOST",
    "ACT",
    "GITHUB_ACTIONS",
    "FORGEJO_ACTIONS",
    "GITEA_ACTIONS",
    "GITLAB_CI",
    "VENVIMG_CI_WORKDIR",
];

/// `podman` with the test environment's containers.conf / registries.conf.
pub fn podman() -> StdCommand {
    tool("podman")
}

/// `skopeo` with the test environment's registries.conf.
pub fn skopeo() -> StdCommand {
    tool("skopeo")
}

fn tool(name: &str) -> StdCommand {
    let env = testenv();
    let mut cmd = StdCommand::new(name);
    cmd.envs(env.envs.iter().map(|(k, v)| (k, v)));
    cmd.stdin(Stdio::null());
    cmd
}

fn docker_ref(image_ref: &str) -> String {
    if image_ref.starts_with("docker://") {
        image_ref.to_string()
    } else {
        format!("docker://{image_ref}")
    }
}

/// Manifest digest of `image_ref` (`HOST:PORT/repo:tag` or `@sha256:...`) as the registry
/// serves it, read by skopeo (independent of venvimg); `None` when it is not there.
pub fn skopeo_inspect_digest(image_ref: &str) -> Option<String> {
    let out = skopeo()
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(docker_ref(image_ref))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    if !out.status.success() {
        return None;
    }
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!digest.is_empty()).then_some(digest)
}

/// The raw manifest of `image_ref` as the registry serves it, parsed.
pub fn skopeo_raw_manifest(image_ref: &str) -> serde_json::Value {
    let out = skopeo()
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(docker_ref(image_ref))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect --raw {image_ref} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("manifest is not JSON")
}

/// The image config of `image_ref` (`HOST:PORT/repo:tag` or `@sha256:...`) as the registry
/// serves it, parsed (skopeo: independent of venvimg).
pub fn skopeo_config(image_ref: &str) -> serde_json::Value {
    let out = skopeo()
        .args(["inspect", "--tls-verify=false", "--config"])
        .arg(docker_ref(image_ref))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect --config {image_ref} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("image config is not JSON")
}

/// Put `src_ref` under `dst_ref` (both `HOST:PORT/repo:tag` in loopback registries), as any
/// tool pushing an image would; digests are preserved. Panics on failure.
pub fn copy_tag(src_ref: &str, dst_ref: &str) {
    let out = skopeo()
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(docker_ref(src_ref))
        .arg(docker_ref(dst_ref))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy {src_ref} {dst_ref} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Delete the manifest `image_ref` points at from its repository (test clean-up).
pub fn delete_image(image_ref: &str) {
    let out = skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(docker_ref(image_ref))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo delete {image_ref} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository name in the shared registry that no other test (or earlier run) uses:
/// `<registry>/<prefix>-<pid>-<nanos>-<counter>`.
pub fn unique_repo(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "{}/{}-{}-{nanos}-{n}",
        testenv().registry,
        prefix.trim_matches('-'),
        std::process::id()
    )
}

/// An extra registry on loopback for one test (auth, TLS...): `testenv.sh registry NAME
/// EXTRA_YAML`. `extra_yaml` is appended to a config with filesystem storage, plain HTTP
/// and no access log; top-level `storage:` / `http:` / `log:` in it replace those (the address is always set by
/// the script). Same NAME + same yaml → the running one is reused. Returns `127.0.0.1:PORT`.
pub fn private_registry(name: &str, extra_yaml: &str) -> String {
    let _ = testenv();
    run_script(&["registry", name, extra_yaml])
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .expect("testenv.sh registry printed no address")
        .to_string()
}

/// `<manifest_dir>/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

/// A copy of the fixture directory `name` in a fresh temporary directory: the returned
/// directory's path *is* the copied fixture (tests never modify the repo). Symlinks are
/// copied as symlinks, permissions kept.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = fixture(name);
    assert!(src.is_dir(), "fixture {} is not a directory", src.display());
    let dir = tempfile::Builder::new()
        .prefix(&format!("venvimg-{name}-"))
        .tempdir()
        .expect("cannot create a temporary directory");
    copy_tree(&src, dir.path());
    dir
}

/// Copy the contents of `src` into the existing directory `dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let mut entries: Vec<_> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()))
        .map(|e| e.expect("read_dir entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().expect("file type");
        if ft.is_symlink() {
            let target = fs::read_link(&from).expect("read_link");
            std::os::unix::fs::symlink(&target, &to)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", to.display()));
        } else if ft.is_dir() {
            fs::create_dir(&to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
            copy_tree(&from, &to);
            let perms = fs::metadata(&from).expect("metadata").permissions();
            fs::set_permissions(&to, perms).expect("set_permissions");
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        }
    }
}

/// Run `session` in `image` the way CI does: the checkout at /src, no network,
/// `UV_OFFLINE=1 nox --envdir /opt/nox --reuse-venv=always --no-install -s SESSION`.
/// Returns (success, stdout + stderr).
pub fn run_offline(image: &str, checkout: &Path, session: &str) -> (bool, String) {
    run_offline_with(image, checkout, session, &[])
}

/// [`run_offline`] with `env` (`NAME=value`) set in the container too.
pub fn run_offline_with(
    image: &str,
    checkout: &Path,
    session: &str,
    env: &[&str],
) -> (bool, String) {
    run_offline_in(podman(), image, checkout, session, env)
}

/// [`run_offline_with`] under `engine` (`podman()`, or a `docker` command).
pub fn run_offline_in(
    cmd: StdCommand,
    image: &str,
    checkout: &Path,
    session: &str,
    env: &[&str],
) -> (bool, String) {
    run_offline_mounting(cmd, image, checkout, session, env, &[])
}

/// [`run_offline_in`] with more volumes (`-v` values), e.g. a restored envdir.
pub fn run_offline_mounting(
    mut cmd: StdCommand,
    image: &str,
    checkout: &Path,
    session: &str,
    env: &[&str],
    volumes: &[String],
) -> (bool, String) {
    cmd.args(["run", "--rm", "--network", "none", "--pull", "missing"])
        .args(["-v", &format!("{}:/src", checkout.display()), "-w", "/src"])
        .args(["-e", "UV_OFFLINE=1"]);
    for v in volumes {
        cmd.args(["-v", v]);
    }
    for e in env {
        cmd.args(["-e", e]);
    }
    let out = cmd
        .arg(image)
        .args([
            "nox",
            "--envdir",
            "/opt/nox",
            "--reuse-venv=always",
            "--no-install",
            "-s",
            session,
        ])
        .output()
        .expect("cannot run the engine (apt-get install -y podman docker.io)");
    (out.status.success(), output_text(&out))
}

/// [`run_offline`] must pass, reusing the venv in the image (no re-creation).
#[track_caller]
pub fn assert_runs_offline(image: &str, checkout: &Path, session: &str) {
    let (ok, text) = run_offline(image, checkout, session);
    assert_reused(ok, &text, &format!("{session} in {image}"));
}

/// nox's run (`ok`, its output `text`) passed, reusing the venv it found (no re-creation).
#[track_caller]
pub fn assert_reused(ok: bool, text: &str, what: &str) {
    assert!(ok, "{what} failed offline:\n{text}");
    assert!(
        !text.contains("Creating virtual environment"),
        "{what}: nox recreated the venv:\n{text}"
    );
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{what}: nox did not say it reused the venv:\n{text}"
    );
}

/// An executable `dir/name` holding `script`; returns `$PATH` with `dir` first, so that
/// a command run with it finds this `name` before any other.
pub fn fake_on_path(dir: &Path, name: &str, script: &str) -> String {
    let file = dir.join(name);
    fs::write(&file, script).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod 755");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Image config labels carrying a venvimg record for one session `session` built on
/// `base_digest` (pyflakes 3.2.0 on Python 3.11.2), so that `venvimg inspect` reads the
/// image.
pub fn record_labels(session: &str, base_digest: &str) -> BTreeMap<String, String> {
    let record = serde_json::json!({"sessions": [{
        "session": session, "venv_dir": session, "key": "0".repeat(64),
        "tag": format!("{session}-0000000000000000"),
        "inputs": {"base": base_digest, "envdir": "/opt/nox",
                   "inputs": [{"path": "noxfile.py", "sha256": "1".repeat(64)}]},
        "python": "3.11.2", "backend": "uv", "interpreter": "/usr/bin/python3",
        "packages": [{"name": "pyflakes", "version": "3.2.0"}],
    }]});
    BTreeMap::from([
        (
            venvimg::image::SESSIONS_LABEL.to_string(),
            session.to_string(),
        ),
        (venvimg::image::RECORD_LABEL.to_string(), record.to_string()),
    ])
}

/// Every tag of `repo` (none when the registry never heard of it).
pub fn list_tags(repo: &str) -> Vec<String> {
    let out = skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{repo}"))
        .output()
        .expect("cannot run skopeo");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("name unknown")
                || err.contains("NAME_UNKNOWN")
                || err.contains("status code from registry 404"),
            "skopeo list-tags {repo}: {err}"
        );
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// Every entry under `dir` (relative to it), described: type, mode, owner, and content
/// digest or link target; with `times_and_links`, also mtime, size and which entries
/// share an inode (hard links). Two trees are the same venv when these maps are equal.
pub fn describe_tree(dir: &Path, times_and_links: bool) -> BTreeMap<PathBuf, String> {
    use sha2::Digest as _;
    use std::os::unix::fs::MetadataExt;
    fn walk(
        root: &Path,
        dir: &Path,
        full: bool,
        out: &mut BTreeMap<PathBuf, String>,
        inodes: &mut BTreeMap<u64, PathBuf>,
    ) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mut what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap()))
                )
            };
            if full && m.file_type().is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                what = format!(
                    "{what} size {} nlink {} same-as {}",
                    m.len(),
                    m.nlink(),
                    first.display()
                );
            }
            let mut line = format!(
                "{what} mode {:o} owner {}:{}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            );
            if full {
                line = format!("{line} mtime {}", m.mtime());
            }
            out.insert(rel, line);
            if m.is_dir() {
                walk(root, &p, full, out, inodes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, times_and_links, &mut out, &mut BTreeMap::new());
    out
}
