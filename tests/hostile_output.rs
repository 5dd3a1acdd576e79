//! What a build leaves behind is untrusted (a noxfile from a pull request wrote it): real
//! builds with podman against the loopback registry whose sessions plant, after a real
//! install, a METADATA symlinked to /etc/hostname, a dist-info symlinked to a folder of
//! this machine, a FIFO, a 3 GiB sparse METADATA, a RECORD line leaving the venv. Each
//! build must fail (exit 1) naming the file and what is wrong, without hanging, without
//! exhausting memory, without pushing anything, and without showing what the host file
//! holds.
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let env = support::testenv();
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_venvimg"))
        .envs(env.envs.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("cannot run venvimg");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            // SIGTERM first: venvimg stops the containers it started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "venvimg {} hung for {BUILD_TIMEOUT:?}:\n{}{}",
                args.join(" "),
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Run {
        code: status.code(),
        text: format!(
            "{}{}",
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(&err).unwrap()
        ),
    }
}

/// The fixture with a venvimg.yaml for `sessions` (YAML list items) in a fresh repository.
fn project(prefix: &str, sessions: &str) -> (tempfile::TempDir, String) {
    let env = support::testenv();
    let dir = support::copy_fixture("hostile");
    let repo = support::unique_repo(prefix);
    std::fs::write(
        dir.path().join("venvimg.yaml"),
        format!(
            "repository: {repo}\nbase: {}\nsessions:\n{sessions}",
            env.base
        ),
    )
    .unwrap();
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
    plan["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == session)
        .unwrap_or_else(|| panic!("no {session} in {plan}"))["image"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every tag of `repo` (none when the registry never heard of it).
fn tags(repo: &str) -> Vec<String> {
    let out = support::skopeo()
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
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// Manifest and config of every image in `repo`, as text: what anyone pulling sees.
fn pushed_records(repo: &str) -> String {
    let mut all = String::new();
    for tag in tags(repo) {
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
    let pushed: Vec<String> = tags(&repo)
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
