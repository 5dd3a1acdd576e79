//! `venvimg run` and `venvimg shell` against the loopback registry and podman: a miss is
//! built first, then nox runs offline in the job image with the checkout mounted;
//! posargs pass through and nox's exit code comes back.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::support;
use crate::support::background::Background;
use crate::support::project::Project;

fn project() -> Project {
    Project::fixture("runner")
        .unique_repo("run")
        .config("sessions: [check, other]\n")
}

#[test]
fn run_builds_a_miss_then_runs_nox_offline_with_posargs_and_its_exit_code() {
    let env = support::testenv();
    let p = project();
    let written = p.path().join("written-by-session.txt");

    // A miss, built first; then nox in the job image runs the session with the posarg,
    // whose command fails with it; nox's own exit code (1) comes back.
    let (code, text) = p.outcome(&["run", "-s", "check", "--build-ca", env.ca_file(), "--", "3"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("' 3 failed with exit code 3"), "{text}");
    assert!(text.contains("check: running nox in "), "{text}");
    assert!(text.contains("building first: check"), "{text}");
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
    assert!(!text.contains("Creating virtual environment"), "{text}");
    assert!(text.contains("session `check` (exit 1)"), "{text}");
    // By tag and digest.
    assert!(
        text.contains(":check-") && text.contains("@sha256:"),
        "{text}"
    );
    // The session wrote into the checkout, as the caller.
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "3.2.0");
    let meta = std::fs::metadata(&written).unwrap();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });

    // Now a hit: nothing is built, and 0 is 0.
    std::fs::remove_file(&written).unwrap();
    let (code, text) = p.outcome(&["run", "-s", "check", "--no-build", "--", "0"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("building first"), "{text}");
    assert!(written.is_file());

    // --no-build on a miss says what to run.
    let (code, text) = p.outcome(&["run", "-s", "other", "--no-build"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("venvimg build -s other"), "{text}");

    // Every session, one after another: `other` is built, both pass.
    let (code, text) = p.outcome(&["run", "--build-ca", env.ca_file()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("other ran"), "{text}");
    assert!(text.contains("2 of 2 sessions passed"), "{text}");
}

#[test]
fn shell_runs_a_command_in_the_job_image_with_the_venv_first_on_path() {
    let env = support::testenv();
    let p = project();
    let (code, text) = p.outcome(&[
        "shell",
        "check",
        "--build-ca",
        env.ca_file(),
        "--",
        "python",
        "-c",
        "import sys, pyflakes, os; print('prefix', sys.prefix, os.getcwd())",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("prefix /opt/nox/check /src"), "{text}");
    // No network in the container unless asked for.
    let (code, text) = p.outcome(&[
        "shell",
        "check",
        "--no-build",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.trim().lines().last(), Some("lo"), "{text}");
}

/// The names of `engine`'s containers (running or not) started by venvimg process `pid`.
fn containers_of(engine: &str, pid: u32) -> String {
    let env = support::testenv();
    let out = std::process::Command::new(engine)
        .envs(env.envs.iter().map(|(k, v)| (k, v)))
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .args(["--filter", &format!("name=venvimg-{pid}-")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {engine}: {e}"));
    assert!(out.status.success(), "{engine} ps: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sigint_mid_run_stops_the_session_container_with_either_engine() {
    let env = support::testenv();
    support::need_docker();
    let p = Project::fixture("runner")
        .unique_repo("run-cancel")
        .config("sessions: [wait]\n");
    let (code, text) = p.outcome(&["build", "--build-ca", env.ca_file()]);
    assert_eq!(code, Some(0), "{text}");
    for engine in ["podman", "docker"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut run = Background::venvimg(
            p.path(),
            &["run", "--engine", engine, "--no-build"],
            &[("TMPDIR", tmp.path().to_str().unwrap())],
        );
        run.wait_for("runner-wait-started", Duration::from_secs(300));
        let pid = run.pid();
        assert_ne!(
            containers_of(engine, pid),
            "",
            "{engine}: no container named venvimg-{pid}-*"
        );
        run.signal("INT");
        let status = run.wait(Duration::from_secs(60));
        let text = run.text();
        assert_eq!(status.code(), Some(130), "{engine}: {text}");
        assert!(text.contains("interrupted"), "{engine}: {text}");
        assert_eq!(
            containers_of(engine, pid),
            "",
            "{engine}: a container outlived the cancel"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{engine}: left in $TMPDIR: {left:?}");
    }
}

#[test]
fn a_non_root_caller_owns_what_a_session_writes_under_docker() {
    use std::os::unix::fs::PermissionsExt;
    // Docker's daemon runs as root: without `--user`, a session's reports and caches in
    // the checkout would belong to root. A caller with uid 4242 (no passwd entry needed)
    // in the socket's group runs the session; what it writes is theirs.
    const UID: u32 = 4242;
    let env = support::testenv();
    support::need_docker();
    let p = Project::fixture("runner")
        .unique_repo("run-nonroot")
        .config("builder: docker\nsessions: [check]\n");
    let (code, text) = p.outcome(&[
        "build",
        "--build-ca",
        env.ca_file(),
        "--build-network",
        "host",
    ]);
    assert_eq!(code, Some(0), "{text}");

    let socket = env
        .envs
        .iter()
        .find(|(k, _)| k == "DOCKER_HOST")
        .and_then(|(_, v)| v.strip_prefix("unix://"))
        .expect("DOCKER_HOST=unix://... in the test environment (testenv.sh up)")
        .to_string();
    let socket_gid = std::fs::metadata(&socket).unwrap().gid();
    // The binary and a home where that user can reach them.
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("venvimg");
    std::fs::copy(env!("CARGO_BIN_EXE_venvimg"), &bin).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = |path: &std::path::Path| {
        let ok = std::process::Command::new("chown")
            .args(["-R", &format!("{UID}:{UID}")])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "chown {}", path.display());
    };
    chown(home.path());
    chown(p.path());

    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            &format!("--groups={socket_gid}"),
            "--",
        ])
        .arg(&bin)
        .args(crate::docker::RUN_CHECK_UNDER_DOCKER)
        .envs(env.envs.iter().map(|(k, v)| (k, v)))
        .env("HOME", home.path())
        .current_dir(p.path())
        .output()
        .expect("setpriv (util-linux) must be installed");
    crate::docker::assert_check_ran_under_docker(
        out.status.code(),
        &support::output_text(&out),
        p.path(),
    );
    let written = p.path().join("written-by-session.txt");
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (UID, UID),
        "{}",
        written.display()
    );
}

#[test]
fn run_refuses_what_it_cannot_do_with_what_to_do_instead() {
    let p = project();
    // An unknown session.
    let (code, text) = p.outcome(&["run", "-s", "nope", "--no-build"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("nope"), "{text}");
    // An engine that is not one.
    let (code, text) = p.outcome(&["run", "--engine", "lxc", "--no-build"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("use podman or docker"), "{text}");
    // A docker daemon on another host would mount its own folder, not the checkout (the
    // name is never resolved: the check comes first).
    let (code, text) = p.outcome_with(
        &["run", "--engine", "docker", "--no-build"],
        &[("DOCKER_HOST", "tcp://docker.invalid:2375")],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("DOCKER_HOST: names a tcp:// daemon"),
        "{text}"
    );
    assert!(!text.contains("docker.invalid"), "{text}");

    // No engine at all: `builder: local`, and neither podman nor docker on PATH.
    let local = Project::fixture("runner")
        .unique_repo("run-noengine")
        .config("builder: local\nsessions: [check]\n");
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = local.outcome_with(
        &["run", "--no-build"],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("neither podman nor docker"), "{text}");
    assert!(text.contains("apt-get install podman"), "{text}");

    // A checkout whose path the engines cannot bind-mount (they split -v on ':').
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("app:v2");
    std::fs::create_dir(&odd).unwrap();
    support::copy_tree(&support::fixture("runner"), &odd);
    let colon = Project::at(tmp, "app:v2")
        .unique_repo("run-colon")
        .config("sessions: [check]\n");
    // (`plan` may reuse a dry run and mount nothing; `build` must mount it.)
    for args in [&["run", "--no-build"][..], &["build"][..]] {
        let (code, text) = colon.outcome(args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(
            text.contains("holds ':', which podman cannot bind-mount"),
            "{args:?}: {text}"
        );
        assert!(text.contains("move or rename the checkout"), "{text}");
    }
}
