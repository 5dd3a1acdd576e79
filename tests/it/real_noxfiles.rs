//! Noxfiles as people write them (issue #10), end to end against the loopback registry
//! with podman: the project frozen non-editable, sessions that resist --install-only,
//! missing interpreters, plugins, VCS-derived versions.
use crate::support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{image_of, session, Project};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// [`support::run_offline_with`], which must not have recreated the venv.
fn run_offline(image: &str, checkout: &Path, session: &str, env: &[&str]) -> (bool, String) {
    let (ok, text) = support::run_offline_with(image, checkout, session, env);
    assert!(
        !text.contains("Creating virtual environment"),
        "nox recreated the venv of {session} in {image}:\n{text}"
    );
    (ok, text)
}

#[test]
fn frozen_project_is_refused_by_default_and_pushes_nothing() {
    let dir = Project::fixture("frozen")
        .unique_repo("frozen-refuse")
        .config("");
    let image = image_of(&dir.plan(), "tests");
    let out = dir.build_output(&["--session", "tests"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("session `tests`"), "{err}");
    assert!(err.contains("frozen-sample 0.1.0"), "{err}");
    assert!(
        err.contains("project: editable") && err.contains("project: keyed"),
        "{err}"
    );
    assert_eq!(
        support::skopeo_inspect_digest(&image),
        None,
        "a tag was pushed: {image}"
    );
}

#[test]
fn editable_project_runs_the_checkout_so_a_bug_fails_the_job() {
    let dir = Project::fixture("frozen")
        .unique_repo("frozen-editable")
        .config("sessions:\n  - name: tests\n    project: editable\n");
    let out = dir.build_output(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let image = image_of(&dir.plan(), "tests");

    let checkout = support::copy_fixture("frozen");
    let (ok, text) = run_offline(&image, checkout.path(), "tests", &[]);
    assert!(ok, "clean checkout must pass:\n{text}");
    assert!(
        text.contains("imported from /src/src/frozen_sample"),
        "{text}"
    );

    // A deliberate bug in the checkout: the image must not hide it. (It changes the file's
    // size: the clean run left an mtime-checked pyc in the checkout, which Python trusts
    // for a same-size edit made within the same second.)
    let src = checkout.path().join("src/frozen_sample/__init__.py");
    let code = std::fs::read_to_string(&src)
        .unwrap()
        .replace("2 * x", "2 * x + 1");
    std::fs::write(&src, code).unwrap();
    let (ok, text) = run_offline(&image, checkout.path(), "tests", &[]);
    assert!(!ok, "the job passed with a bug in the checkout:\n{text}");
    assert!(text.contains("FAILED"), "{text}");
}

#[test]
fn keyed_project_key_follows_source_files_of_that_session_only() {
    let dir = Project::fixture("frozen")
        .unique_repo("frozen-keyed")
        .config("sessions:\n  - name: tests\n    project: keyed\n  - lint\n");
    let before = dir.plan();
    let src = dir.path().join("src/frozen_sample/__init__.py");
    let mut code = std::fs::read_to_string(&src).unwrap();
    code.push_str("\n# an edit\n");
    std::fs::write(&src, code).unwrap();
    let after = dir.plan();
    assert_ne!(
        session(&before, "tests")["key"],
        session(&after, "tests")["key"]
    );
    assert_eq!(
        session(&before, "lint")["key"],
        session(&after, "lint")["key"]
    );

    // And a keyed session builds (the frozen copy is allowed: the key covers it).
    let out = dir.build_output(&["--session", "tests"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn session_using_run_output_needs_build_run_and_then_works_offline() {
    let dir = Project::fixture("quirks")
        .unique_repo("quirks-run")
        .config("sessions: [resist]\n");
    let out = dir.build_output(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("build: run"),
        "the error must point to build: run:\n{err}"
    );
    assert!(err.contains("noxfile"), "{err}");

    dir.write_config("sessions:\n  - name: resist\n    build: run\n");
    let out = dir.build_output(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let image = image_of(&dir.plan(), "resist");
    assert!(support::skopeo_inspect_digest(&image).is_some());
    let checkout = support::copy_fixture("quirks");
    let (ok, text) = run_offline(&image, checkout.path(), "resist", &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
}

#[test]
fn missing_interpreter_is_an_error_naming_the_python() {
    let dir = Project::fixture("quirks")
        .unique_repo("quirks-py")
        .config("sessions: [future]\n");
    let image = image_of(&dir.plan(), "future");
    let out = dir.build_output(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("3.13"), "{err}");
    assert!(err.contains("session `future`"), "{err}");
    assert!(
        err.contains("base/python-nox@sha256:"),
        "the base image is named: {err}"
    );
    assert_eq!(support::skopeo_inspect_digest(&image), None);
}

#[test]
fn noxfile_plugin_missing_from_the_base_is_named() {
    let dir = Project::fixture("plugin").config("");
    let out = dir.run(&["plan"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`nox_uv`"), "{err}");
    assert!(err.contains("base image"), "{err}");
    assert!(err.contains("images/README.md"), "{err}");
}

#[test]
fn vcs_version_comes_from_the_checkout_git_and_builds_reproducibly() {
    let dir = Project::fixture("vcs");
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(["-c", "user.email=ci@venvimg.invalid", "-c", "user.name=ci"])
            .args(args)
            .current_dir(dir.path())
            .status()
            .expect("git must be installed");
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "init"]);
    git(&["tag", "v1.2.3"]);
    // The config is written after the commit: an untracked file, as in many checkouts.
    dir.write_config("");
    let first = dir.build_output(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let image = image_of(&dir.plan(), "tests");
    let (ok, text) = run_offline(&image, dir.path(), "tests", &["EXPECT_VERSION=1.2.3"]);
    assert!(ok, "{text}");
    assert!(text.contains("vcs-sample version 1.2.3"), "{text}");

    let again = dir.build_output(&["--force", "--no-push"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let a: Value = serde_json::from_slice(&first.stdout).unwrap();
    let b: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        a["sessions"][0]["digest"], b["sessions"][0]["digest"],
        "two builds of the hatch-vcs project differ"
    );
}
