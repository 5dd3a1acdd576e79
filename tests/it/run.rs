//! `venvimg run` and `venvimg shell` against the loopback registry and podman: a miss is
//! built first, then nox runs offline in the job image with the checkout mounted;
//! posargs pass through and nox's exit code comes back.

use std::os::unix::fs::MetadataExt;

use crate::support;
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
