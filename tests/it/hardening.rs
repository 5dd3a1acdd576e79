//! A noxfile from a pull request is hostile. Real builds (podman and the local builder)
//! against the loopback registry:
//! - its sessions plant, after a real install, a METADATA symlinked to /etc/hostname, a
//!   dist-info symlinked to a folder of this machine, a FIFO, a 3 GiB sparse METADATA, a
//!   RECORD line leaving the venv. Each build must fail (exit 1) naming the file and what
//!   is wrong, without hanging, without exhausting memory, without pushing anything, and
//!   without showing what the host file holds;
//! - it dumps its environment (at import and during the install) and the checkout's
//!   `.git/config`: no registry credential, no secret of venvimg's environment, no git
//!   auth header reaches it, no secret shows in venvimg's output or the process list;
//! - an envdir under /tmp leaves the base's /tmp alone; a cancelled build leaves no
//!   container and no folder.
use crate::support;
use crate::support::background::Background;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const SP: &str = "lib/python3.11/site-packages";
/// A build of these sessions takes well under a minute here; a read blocked on a FIFO
/// would never end.
const BUILD_TIMEOUT: Duration = Duration::from_secs(420);

struct Run {
    code: Option<i32>,
    /// stdout and stderr.
    text: String,
}

/// `venvimg ARGS` in `dir`, killed (and the test failed) if it outlives `BUILD_TIMEOUT`.
fn venvimg(dir: &Path, args: &[&str]) -> Run {
    venvimg_with(dir, args, &[])
}

/// `venvimg ARGS` with `extra` variables in its environment.
fn venvimg_with(dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Run {
    let mut run = Background::venvimg(dir, args, extra);
    let status = run.wait(BUILD_TIMEOUT);
    Run {
        code: status.code(),
        text: run.text(),
    }
}

/// The fixture with a venvimg.yaml for `sessions` (YAML list items) in a fresh repository.
fn project(prefix: &str, sessions: &str) -> (tempfile::TempDir, String) {
    let dir = support::copy_fixture("hostile");
    let repo = support::unique_repo(prefix);
    support::write_config(dir.path(), &repo, &format!("sessions:\n{sessions}"));
    (dir, repo)
}

fn build(dir: &Path) -> Run {
    let env = support::testenv();
    venvimg(dir, &["build", "--build-ca", env.ca_file()])
}

/// The image `plan` names for `session`.
fn image_of(dir: &Path, session: &str) -> String {
    let run = venvimg(dir, &["plan", "--json", "-q"]);
    assert_eq!(run.code, Some(0), "plan: {}", run.text);
    let start = run.text.find('{').expect("plan printed no JSON");
    let plan: Value = serde_json::Deserializer::from_str(&run.text[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    support::image_of(&plan, session)
}

/// Manifest and config of every image in `repo`, as text: what anyone pulling sees.
fn pushed_records(repo: &str) -> String {
    let mut all = String::new();
    for tag in support::list_tags(repo) {
        let image = format!("docker://{repo}:{tag}");
        for extra in [&["--raw"][..], &["--config"][..]] {
            let out = support::skopeo()
                .args(["inspect", "--tls-verify=false"])
                .args(extra)
                .arg(&image)
                .output()
                .unwrap();
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    all
}

/// Whether `needle` occurs in `text` as a word of its own (hostnames are short: `vm`
/// is part of many longer words).
fn has_word(text: &str, needle: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    text.match_indices(needle).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The largest resident set of any child this test process waited for (venvimg, and the
/// podman and skopeo it waited for), in bytes.
fn max_child_rss() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

/// Build `session` alone: exit 1, every `expected` line in the output, nothing of
/// `secrets` anywhere, no image pushed.
#[track_caller]
fn refused(prefix: &str, session: &str, extra_config: &str, expected: &[&str], secrets: &[&str]) {
    let (dir, repo) = project(prefix, &format!("  - name: {session}\n{extra_config}"));
    let image = image_of(dir.path(), session);
    let run = build(dir.path());
    assert_eq!(run.code, Some(1), "venvimg build must fail:\n{}", run.text);
    assert!(
        run.text.contains(&format!("session `{session}`")),
        "{}",
        run.text
    );
    for want in expected {
        assert!(
            run.text.contains(want),
            "{want:?} missing from:\n{}",
            run.text
        );
    }
    assert!(run.text.contains("hint:"), "{}", run.text);
    assert!(
        !run.text.contains("panicked"),
        "venvimg panicked:\n{}",
        run.text
    );
    assert_eq!(
        support::skopeo_inspect_digest(&image),
        None,
        "{image} was pushed"
    );
    let pushed: Vec<String> = support::list_tags(&repo)
        .into_iter()
        .filter(|t| !t.starts_with("venvimg-dryrun-"))
        .collect();
    assert!(pushed.is_empty(), "pushed to {repo}: {pushed:?}");
    let records = pushed_records(&repo);
    let host = hostname();
    for secret in secrets.iter().copied().chain([host.as_str()]) {
        if secret.is_empty() {
            continue;
        }
        assert!(
            !has_word(&run.text, secret),
            "the host's {secret:?} is in venvimg's output:\n{}",
            run.text
        );
        assert!(
            !has_word(&records, secret),
            "the host's {secret:?} was pushed"
        );
    }
}

#[test]
fn the_same_install_without_a_planted_file_builds_and_pushes() {
    // The control: the fixture builds and pushes when nothing hostile is planted, so
    // the refusals below come from the planted files alone.
    let (dir, repo) = project("hostile-clean", "  - clean\n");
    let image = image_of(dir.path(), "clean");
    let run = build(dir.path());
    assert_eq!(run.code, Some(0), "{}", run.text);
    assert!(support::skopeo_inspect_digest(&image).is_some());
    let records = pushed_records(&repo);
    assert!(records.contains("pyflakes"), "{records}");
}

#[test]
fn a_metadata_symlinked_to_etc_hostname_is_not_read() {
    refused(
        "hostile-meta-symlink",
        "meta_symlink",
        "",
        &[&format!(
            "{SP}/hostile-1.0.dist-info/METADATA is a symlink; refusing to read it"
        )],
        &[],
    );
}

#[test]
fn a_dist_info_symlinked_to_a_host_folder_is_not_read() {
    // A folder of this machine shaped like a dist-info: read, it would become a package
    // of the image.
    let host = tempfile::tempdir().unwrap();
    let marker = format!(
        "leaked-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::fs::write(
        host.path().join("METADATA"),
        format!("Metadata-Version: 2.1\nName: {marker}\nVersion: 6.6.6\n\n"),
    )
    .unwrap();
    std::fs::write(host.path().join("RECORD"), "../../../../etc/passwd,,\n").unwrap();
    refused(
        "hostile-dir-symlink",
        "dir_symlink",
        &format!(
            "    env: {{HOSTILE_TARGET_DIR: {}}}\n",
            host.path().display()
        ),
        &[&format!(
            "{SP}/hostile-1.0.dist-info is a symlink; refusing to read it"
        )],
        &[&marker],
    );
}

#[test]
fn a_fifo_metadata_fails_without_hanging() {
    refused(
        "hostile-fifo",
        "fifo",
        "",
        &[&format!(
            "{SP}/hostile-1.0.dist-info/METADATA is a FIFO, not a regular file; refusing to read it"
        )],
        &[],
    );
}

#[test]
fn a_3_gib_sparse_metadata_is_refused_by_its_size() {
    refused(
        "hostile-huge",
        "huge",
        "",
        &[&format!(
            "{SP}/hostile-1.0.dist-info/METADATA is 3221225472 bytes, more than the"
        )],
        &[],
    );
    let rss = max_child_rss();
    assert!(
        rss < 1 << 30,
        "a child used {rss} bytes: the 3 GiB file was read"
    );
}

#[test]
fn a_record_line_leaving_the_venv_is_refused() {
    refused(
        "hostile-record",
        "record_escape",
        "",
        &[&format!(
            "{SP}/hostile-1.0.dist-info/RECORD line 2 names `../../../../etc/hostname`, a path outside the venv; refusing it"
        )],
        &[],
    );
}

/// Every process's command line, sampled every 20 ms until stopped: what `ps` shows
/// anyone on the machine.
struct ProcessSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

impl ProcessSampler {
    fn start() -> ProcessSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !flag.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
                        if !raw.is_empty() {
                            seen.insert(String::from_utf8_lossy(&raw).replace('\0', " "));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        ProcessSampler { stop, thread }
    }

    fn stop(self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A value no other test uses: `prefix-<nanos>`.
fn secret(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The `hostile-env-dump STAGE {json}` lines in `text`, parsed.
fn dumps(text: &str, stage: &str) -> Vec<serde_json::Map<String, Value>> {
    let prefix = format!("hostile-env-dump {stage} ");
    text.lines()
        .filter_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .map(|j| match serde_json::from_str::<Value>(j.trim()) {
            Ok(Value::Object(m)) => m,
            other => panic!("not a dump: {j}: {other:?}"),
        })
        .collect()
}

#[test]
fn a_hostile_noxfile_in_a_container_build_gets_no_credentials_and_leaks_nothing() {
    let env = support::testenv();
    let (password, token, api_key, canary, git_secret, url_secret) = (
        secret("registry-password"),
        secret("index-token"),
        secret("session-api-key"),
        secret("host-only-canary"),
        secret("git-extraheader"),
        secret("git-url-token"),
    );
    let (dir, repo) = project(
        "hardening-leak",
        &format!("  - name: leak\n    env: {{API_KEY: {api_key}}}\n"),
    );
    // Where a noxfile that ran on this machine would leave its dumps.
    let drop_box = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dump-to.txt"),
        drop_box.path().display().to_string(),
    )
    .unwrap();
    // A checkout as actions/checkout leaves it: an auth header and a token in the URL.
    support::git(dir.path(), &["init", "-q"]);
    support::git(
        dir.path(),
        &[
            "config",
            "http.https://example.invalid/.extraheader",
            &format!("AUTHORIZATION: basic {git_secret}"),
        ],
    );
    support::git(
        dir.path(),
        &[
            "remote",
            "add",
            "origin",
            &format!("https://x-access-token:{url_secret}@example.invalid/o/r"),
        ],
    );
    let secrets_env = [
        ("VENVIMG_USERNAME", "hostile-user"),
        ("VENVIMG_PASSWORD", password.as_str()),
        ("INDEX_TOKEN", token.as_str()),
        ("HOSTILE_CANARY", canary.as_str()),
    ];

    let sampler = ProcessSampler::start();
    let run = venvimg_with(
        dir.path(),
        &[
            "build",
            "-v",
            "--build-ca",
            env.ca_file(),
            "--build-env",
            "INDEX_TOKEN",
        ],
        &secrets_env,
    );
    let processes = sampler.stop();
    assert_eq!(run.code, Some(0), "{}", run.text);

    // The noxfile did dump its environment during the install, and it was relayed (-v):
    // the build had INDEX_TOKEN, shown masked; nothing of venvimg's credentials or of the
    // host's environment.
    let builds = dumps(&run.text, "build");
    assert!(!builds.is_empty(), "no dump relayed:\n{}", run.text);
    for d in &builds {
        assert_eq!(d.get("INDEX_TOKEN"), Some(&Value::from("***")), "{d:?}");
        for name in ["VENVIMG_PASSWORD", "VENVIMG_USERNAME", "HOSTILE_CANARY"] {
            assert!(!d.contains_key(name), "{name} reached the build: {d:?}");
        }
    }
    // The checkout's .git/config reached the build without its credentials.
    assert!(run.text.contains("hostile-git-config"), "{}", run.text);
    assert!(run.text.contains("example.invalid/o/r"), "{}", run.text);
    // Nothing of the project ran on this machine (the container builder lists and dry-runs
    // in the base image).
    let dropped: Vec<_> = std::fs::read_dir(drop_box.path()).unwrap().collect();
    assert!(
        dropped.is_empty(),
        "the noxfile ran on the host: {dropped:?}"
    );

    let image = image_of(dir.path(), "leak");
    let inspect = venvimg_with(dir.path(), &["inspect", "--json", &image], &secrets_env);
    assert_eq!(inspect.code, Some(0), "{}", inspect.text);
    let explain = venvimg_with(dir.path(), &["plan", "--explain", "leak"], &secrets_env);
    assert_eq!(explain.code, Some(0), "{}", explain.text);
    assert!(
        inspect.text.contains("API_KEY"),
        "the recorded key names the variable (its value hashed):\n{}",
        inspect.text
    );
    let records = pushed_records(&repo);
    assert!(records.contains("pyflakes"), "{records}");
    let ps = processes.iter().cloned().collect::<Vec<_>>().join("\n");
    assert!(
        processes
            .iter()
            .any(|p| p.contains(" run ") && p.contains("venvimg-")),
        "the sampler never saw the build container's command line:\n{ps}"
    );
    for value in [
        &password,
        &token,
        &api_key,
        &canary,
        &git_secret,
        &url_secret,
    ] {
        for (what, text) in [
            ("the build's output", &run.text),
            ("inspect --json", &inspect.text),
            ("plan --explain", &explain.text),
            ("the pushed manifests and configs", &records),
            ("the process list", &ps),
        ] {
            assert!(
                !text.contains(value.as_str()),
                "{value} is in {what}:\n{text}"
            );
        }
    }
}

#[test]
fn a_hostile_noxfile_under_the_local_builder_runs_without_venvimgs_credentials() {
    let env = support::testenv();
    let (password, token, canary) = (
        secret("registry-password"),
        secret("index-token"),
        secret("host-only-canary"),
    );
    let (dir, _repo) = project("hardening-local", "  - leak\n");
    let workdir = std::fs::canonicalize(dir.path()).unwrap();
    let envdir = tempfile::tempdir().unwrap();
    let mut yaml = std::fs::read_to_string(dir.path().join("venvimg.yaml")).unwrap();
    yaml.push_str(&format!(
        "builder: local\nworkdir: {}\nenvdir: {}/nox\n",
        workdir.display(),
        envdir.path().display()
    ));
    std::fs::write(dir.path().join("venvimg.yaml"), yaml).unwrap();
    let drop_box = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dump-to.txt"),
        drop_box.path().display().to_string(),
    )
    .unwrap();
    let secrets_env = [
        ("VENVIMG_USERNAME", "hostile-user"),
        ("VENVIMG_PASSWORD", password.as_str()),
        ("INDEX_TOKEN", token.as_str()),
        ("HOSTILE_CANARY", canary.as_str()),
        ("SSL_CERT_FILE", env.ca_file()),
    ];
    let sampler = ProcessSampler::start();
    let run = venvimg_with(
        dir.path(),
        &["build", "-v", "--build-env", "INDEX_TOKEN"],
        &secrets_env,
    );
    let processes = sampler.stop();
    assert_eq!(run.code, Some(0), "{}", run.text);

    // Here the noxfile does run on this machine (that is what `builder: local` is): at
    // listing, dry run and build. Each time without venvimg's credentials or unrelated
    // variables; the build has what --build-env gave it.
    let mut stages = Vec::new();
    for e in std::fs::read_dir(drop_box.path()).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let d: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        for name in ["VENVIMG_PASSWORD", "VENVIMG_USERNAME", "HOSTILE_CANARY"] {
            assert!(!d.contains_key(name), "{name} reached the noxfile: {d:?}");
        }
        assert!(
            !text.contains(&password) && !text.contains(&canary),
            "{text}"
        );
        stages.push(d.contains_key("INDEX_TOKEN"));
    }
    assert!(
        stages.len() >= 2,
        "the noxfile ran {} times on the host; expected the dry run and the build",
        stages.len()
    );
    assert!(
        stages.iter().any(|&has| has),
        "--build-env INDEX_TOKEN never reached the build"
    );
    assert!(
        dumps(&run.text, "build")
            .iter()
            .all(|d| d.get("INDEX_TOKEN") == Some(&Value::from("***"))),
        "{}",
        run.text
    );
    let ps = processes.into_iter().collect::<Vec<_>>().join("\n");
    for value in [&password, &token, &canary] {
        assert!(
            !run.text.contains(value.as_str()),
            "{value} in:\n{}",
            run.text
        );
        assert!(
            !ps.contains(value.as_str()),
            "{value} in the process list:\n{ps}"
        );
    }
}

#[test]
fn an_envdir_under_tmp_leaves_the_bases_tmp_sticky_and_world_writable() {
    let (dir, _repo) = project("hardening-tmp", "  - clean\n");
    let mut yaml = std::fs::read_to_string(dir.path().join("venvimg.yaml")).unwrap();
    yaml.push_str("envdir: /tmp/nox\n");
    std::fs::write(dir.path().join("venvimg.yaml"), yaml).unwrap();
    let run = build(dir.path());
    assert_eq!(run.code, Some(0), "{}", run.text);
    let image = image_of(dir.path(), "clean");
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", &image])
        .args(["sh", "-c", "stat -c '%a %u:%g' /tmp && ls /tmp/nox"])
        .output()
        .expect("cannot run podman");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("1777 0:0"),
        "/tmp in the job image: {text}"
    );
    assert_eq!(
        lines.next(),
        Some("clean"),
        "the venv in the job image: {text}"
    );
    let _ = support::podman().args(["rmi", "--force", &image]).output();
}

#[test]
fn sigint_mid_build_stops_the_container_and_removes_the_build_folder() {
    let env = support::testenv();
    let (dir, repo) = project("hardening-cancel", "  - slow\n");
    let image = image_of(dir.path(), "slow");
    let tmp = tempfile::tempdir().unwrap();
    let mut build = Background::venvimg(
        dir.path(),
        &["build", "-v", "--build-ca", env.ca_file()],
        &[("TMPDIR", tmp.path().to_str().unwrap())],
    );
    let pid = build.pid();
    build.wait_for("hostile-slow-started", BUILD_TIMEOUT);
    let containers = || {
        let out = support::podman()
            .args(["ps", "--all", "--format", "{{.Names}}"])
            .args(["--filter", &format!("name=venvimg-{pid}-")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_ne!(containers(), "", "no build container named venvimg-{pid}-*");
    let ours = |tmp: &Path| -> Vec<String> {
        std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("venvimg-build-{pid}-")))
            .collect()
    };
    assert!(!ours(tmp.path()).is_empty(), "no build folder in $TMPDIR");
    build.signal("INT");
    let status = build.wait(Duration::from_secs(60));
    let text = build.text();
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert_eq!(containers(), "", "a container outlived the cancel");
    assert_eq!(
        ours(tmp.path()),
        Vec::<String>::new(),
        "a folder outlived the cancel"
    );
    assert_eq!(
        support::skopeo_inspect_digest(&image),
        None,
        "{image} was pushed"
    );
    assert!(
        support::list_tags(&repo)
            .iter()
            .all(|t| t.starts_with("venvimg-dryrun-")),
        "{:?}",
        support::list_tags(&repo)
    );
}

#[test]
fn inspect_refuses_a_layout_whose_digest_walks_out_of_it() {
    // A layout (an artifact of someone else's job) whose index names
    // `sha256:../../../../etc/hostname`: the digest is refused before it becomes a path.
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let evil = "sha256:../../../../../../../../etc/hostname";
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": evil, "size": 64}]})
        .to_string(),
    )
    .unwrap();
    let image = format!("oci:{}", layout.display());
    let run = venvimg(t.path(), &["inspect", &image]);
    assert_eq!(run.code, Some(1), "{}", run.text);
    assert!(
        run.text.contains(&format!("`{evil}`")) && run.text.contains("not a sha256 digest"),
        "{}",
        run.text
    );
    assert!(!run.text.contains("panicked"), "{}", run.text);
    let host = hostname();
    assert!(
        host.is_empty() || !has_word(&run.text, &host),
        "{}",
        run.text
    );
}

#[test]
fn a_config_served_far_larger_than_its_descriptor_is_refused_with_bounded_memory() {
    use crate::support::fault_proxy::{Action, FaultProxy};
    use crate::support::registry_kit;
    let env = support::testenv();
    let repo = support::unique_repo("harden-flood");
    let rt = registry_kit::runtime();
    let reg = venvimg::registry::Registry::new(registry_kit::plain_transport(), &[&env.registry])
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let img = registry_kit::recorded_image(&rt, &reg, work.path(), "lint", 31);
    registry_kit::push(&rt, &reg, &format!("{repo}:lint-1"), &img).unwrap();
    let config = img.image.config_digest.clone();
    let config_size = img.image.config.len();
    let name = repo.split_once('/').unwrap().1.to_string();
    // The registry serves 512 MiB for the config's few KiB.
    let blob_path = format!("/v2/{name}/blobs/{config}");
    let proxy = FaultProxy::start(
        &env.registry,
        Box::new(move |head| {
            if head.method == "GET" && head.target == blob_path {
                Action::Flood { len: 512 << 20 }
            } else {
                Action::Forward
            }
        }),
    );
    let image = format!("{}/{name}:lint-1", proxy.addr);
    let (code, text, rss) = support::venvimg_rss(work.path(), &["inspect", &image]);
    // Today's main read all 512 MiB before its digest check: 550 MB RSS.
    assert!(
        rss < 150 << 20,
        "venvimg's RSS reached {} MiB:\n{text}",
        rss >> 20
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&image) && text.contains(config.as_str()),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "more than the {config_size} bytes its descriptor gives"
        )),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_session_name_with_control_characters_never_reaches_the_ci_raw() {
    let dir = support::copy_fixture("ci-names");
    let repo = support::unique_repo("harden-names");
    support::write_config(dir.path(), &repo, "");
    let ci_output = dir.path().join("ci-output.txt");
    let ci = ci_output.to_str().unwrap();
    for args in [
        vec!["plan"],
        vec!["plan", "--json"],
        vec!["plan", "--ci-output"],
        vec!["plan", "--explain", "lint"],
        vec!["build", "--ci-output"],
    ] {
        let run = venvimg_with(dir.path(), &args, &[("GITHUB_OUTPUT", ci)]);
        let mut seen = run.text.clone();
        seen.push_str(&std::fs::read_to_string(&ci_output).unwrap_or_default());
        for line in seen.lines() {
            assert!(
                !line.trim_start().starts_with("::"),
                "{args:?}: a line a CI runner executes: {line:?}\n{seen}"
            );
        }
        assert_eq!(run.code, Some(2), "{args:?}:\n{}", run.text);
        assert!(
            run.text
                .contains(r"lint\n::add-mask::127.0.0.1\n::set-output"),
            "{args:?}: the refusal names the session, escaped:\n{}",
            run.text
        );
        assert!(!run.text.contains("panicked"), "{}", run.text);
    }
}

#[test]
fn temp_folders_are_0700_and_another_user_cannot_list_or_plant_in_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::copy_fixture("sample");
    let repo = support::unique_repo("harden-tmp");
    support::write_config(dir.path(), &repo, "sessions: [lint]\n");
    // The noxfile waits at import while `hold` exists: venvimg's plan folder is there.
    let noxfile = dir.path().join("noxfile.py");
    let text = std::fs::read_to_string(&noxfile).unwrap();
    std::fs::write(
        &noxfile,
        format!(
            "import pathlib as _p, time as _t\n_h = _p.Path(__file__).resolve().parent / 'hold'\n_end = _t.time() + 120\nwhile _h.exists() and _t.time() < _end:\n    _t.sleep(0.1)\n{text}"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("hold"), "").unwrap();
    // A temp folder others can enter, as /tmp is.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let tmp_s = tmp.path().to_str().unwrap().to_string();
    let cache = tmp.path().join("cache");
    let cache_s = cache.to_str().unwrap().to_string();
    let mut run = Background::venvimg(
        dir.path(),
        &["plan"],
        &[("TMPDIR", &tmp_s), ("XDG_CACHE_HOME", &cache_s)],
    );
    let start = std::time::Instant::now();
    let plan_dir = loop {
        let found = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("venvimg-plan-")
                    && p.join("out").exists()
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no plan folder in {tmp_s}:\n{}",
            run.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let folder_mode = mode(&plan_dir);
    let out_mode = mode(&plan_dir.join("out"));
    let nobody = |cmd: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                cmd,
            ])
            .arg("sh")
            .arg(&plan_dir)
            .output()
            .unwrap()
    };
    let listed = nobody("ls -a \"$1\" && ls -a \"$1/out\"");
    let planted = nobody("echo planted > \"$1/out/planted\"");
    std::fs::remove_file(dir.path().join("hold")).unwrap();
    let status = run.wait(BUILD_TIMEOUT);
    assert_eq!(
        folder_mode,
        0o700,
        "{}: {folder_mode:o}",
        plan_dir.display()
    );
    assert_ne!(out_mode & 0o777, 0o777, "out/ is {out_mode:o}");
    assert!(
        !listed.status.success(),
        "another user listed the plan folder:\n{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    assert!(
        !planted.status.success(),
        "another user planted a file in out/"
    );
    assert!(status.success(), "{}", run.text());
}

/// The registry's challenge names a token service on a cloud-metadata address: venvimg
/// must not send it a request. Run in a network namespace of the test's own (`unshare
/// -n`, only loopback, 169.254.169.254 added to it there): nothing reaches a real
/// metadata service.
#[test]
fn a_token_realm_on_a_metadata_address_is_refused_without_a_request() {
    let t = tempfile::tempdir().unwrap();
    let hits = t.path().join("metadata-hits");
    let script = t.path().join("servers.py");
    std::fs::write(
        &script,
        r#"
import http.server, sys, threading
hits = sys.argv[1]
class Meta(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open(hits, "a").write(self.path + "\n")
        body = b'{"token": "instance-credentials"}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class Registry(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer realm="http://169.254.169.254/latest/meta-data/iam/security-credentials/",service="registry"')
        self.send_header("Content-Length", "0"); self.end_headers()
    do_HEAD = do_GET
    def log_message(self, *a): pass
m = http.server.ThreadingHTTPServer(("169.254.169.254", 80), Meta)
r = http.server.ThreadingHTTPServer(("127.0.0.1", 5999), Registry)
for s in (m, r):
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#,
    )
    .unwrap();
    let inner = format!(
        "ip link set lo up && ip addr add 169.254.169.254/32 dev lo && \
         (python3 {script} {hits} > {t}/servers.log 2>&1 &) && \
         for i in $(seq 50); do grep -q ready {t}/servers.log 2>/dev/null && break; sleep 0.1; done; \
         {bin} inspect 127.0.0.1:5999/team/app:1; echo \"exit=$?\"",
        script = script.display(),
        hits = hits.display(),
        t = t.path().display(),
        bin = env!("CARGO_BIN_EXE_venvimg"),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &inner])
        .current_dir(t.path())
        .output()
        .unwrap();
    let text = support::output_text(&out);
    let asked = std::fs::read_to_string(&hits).unwrap_or_default();
    assert!(
        asked.is_empty(),
        "venvimg asked the metadata address: {asked}\n{text}"
    );
    assert!(text.contains("exit=1"), "{text}");
    assert!(text.contains("169.254.169.254"), "{text}");
    assert!(text.contains("link-local"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
