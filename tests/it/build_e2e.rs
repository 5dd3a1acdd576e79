//! The mission, end to end: `venvimg build` on the sample project with the podman
//! builder, images pushed to the loopback registry, and each session run offline in its
//! image with nox reusing the venv.
use crate::support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

fn write_config(dir: &Path, repo: &str, extra: &str) {
    let env = support::testenv();
    std::fs::write(
        dir.join("venvimg.yaml"),
        format!("repository: {repo}\nbase: {}\n{extra}", env.base),
    )
    .unwrap();
}

/// `venvimg build --json` in `dir`; returns the parsed summary and stderr.
fn build(dir: &Path, extra_args: &[&str]) -> (Value, String) {
    let env = support::testenv();
    let out = support::venvimg()
        .current_dir(dir)
        .args(["build", "--json", "--build-ca", env.ca_file()])
        .args(extra_args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "venvimg build failed:\n{stderr}");
    (
        serde_json::from_slice(&out.stdout).expect("build --json prints JSON"),
        stderr,
    )
}

fn session<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == name)
        .unwrap_or_else(|| panic!("no session {name} in {summary}"))
}

/// The job: the project checked out at /src, no network, nox told to reuse.
fn run_offline(image: &str, checkout: &Path, session: &str) -> Output {
    support::podman()
        .args(["run", "--rm", "--network", "none", "--pull", "missing"])
        .args(["-v", &format!("{}:/src", checkout.display()), "-w", "/src"])
        .args(["-e", "UV_OFFLINE=1", image])
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
        .expect("podman must be installed")
}

fn assert_reused_and_passed(image: &str, checkout: &Path, session: &str) {
    let out = run_offline(image, checkout, session);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{session} failed offline in {image}:\n{text}"
    );
    assert!(
        !text.contains("Creating virtual environment"),
        "{session}: nox recreated the venv in {image}:\n{text}"
    );
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{session}: nox did not say it reused the venv:\n{text}"
    );
}

fn package_version_in(image: &str, venv: &str, package: &str) -> String {
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", image])
        .args([
            &format!("/opt/nox/{venv}/bin/python"),
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn build_push_and_reuse_offline_then_hit_then_rebuild_on_lock_change() {
    let project = support::copy_fixture("sample");
    let repo = support::unique_repo("e2e");
    write_config(project.path(), &repo, "");

    // 1. Everything misses: build and push.
    let (first, _) = build(project.path(), &[]);
    for name in ["tests", "lint", "compat-3.11"] {
        let s = session(&first, name);
        assert_eq!(s["outcome"], "built", "{s}");
        let image = s["image"].as_str().unwrap();
        assert_eq!(
            support::skopeo_inspect_digest(image).as_deref(),
            s["digest"].as_str(),
            "the tag in the registry points at the image venvimg reports"
        );
    }

    // 2. Each session's image runs its session offline, reusing the venv. The checkout is
    // a fresh copy, as CI would have.
    let checkout = support::copy_fixture("sample");
    for name in ["tests", "lint", "compat-3.11"] {
        let image = session(&first, name)["image"].as_str().unwrap().to_string();
        assert_reused_and_passed(&image, checkout.path(), name);
    }
    // The all-sessions image holds every venv.
    let all = first["all"]["image"].as_str().unwrap().to_string();
    assert_reused_and_passed(&all, checkout.path(), "lint");
    assert_reused_and_passed(&all, checkout.path(), "compat-3.11");

    // 3. Nothing changed: every session hits and no builder runs. A `podman` first on
    // PATH that records being called proves it: any container start would go through it.
    let fakebin = tempfile::tempdir().unwrap();
    let called = fakebin.path().join("called");
    let fake = fakebin.path().join("podman");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", called.display()),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let path = format!(
        "{}:{}",
        fakebin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = support::venvimg()
        .current_dir(project.path())
        .env("PATH", path)
        .args(["build", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second build:\n{stderr}");
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["tests", "lint", "compat-3.11"] {
        let s = session(&second, name);
        assert_eq!(s["outcome"], "hit", "{s}");
        assert_eq!(s["digest"], session(&first, name)["digest"]);
    }
    assert!(!stderr.contains("building with"), "{stderr}");
    assert!(
        !called.exists(),
        "an all-hit build called podman: {}",
        std::fs::read_to_string(&called).unwrap_or_default()
    );
    assert_eq!(second["all"]["digest"], first["all"]["digest"]);

    // 4. A dependency bump in uv.lock: the session that installs from the lock (`tests`,
    // `uv sync`) misses and rebuilds, the two that install pinned packages do not read
    // uv.lock and hit, and the tests image holds the new version.
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        project.path().join("uv.lock"),
    )
    .unwrap();
    let (third, _) = build(project.path(), &[]);
    let s = session(&third, "tests");
    assert_eq!(s["outcome"], "built", "{s}");
    assert_ne!(s["tag"], session(&first, "tests")["tag"]);
    for name in ["lint", "compat-3.11"] {
        let s = session(&third, name);
        assert_eq!(s["outcome"], "hit", "{s}");
        assert_eq!(s["tag"], session(&first, name)["tag"]);
    }
    let tests_image = session(&third, "tests")["image"]
        .as_str()
        .unwrap()
        .to_string();
    let old_image = session(&first, "tests")["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        package_version_in(&old_image, "tests", "iniconfig"),
        "2.3.1"
    );
    assert_eq!(
        package_version_in(&tests_image, "tests", "iniconfig"),
        "2.0.0"
    );
    std::fs::copy(
        project.path().join("uv.lock"),
        checkout.path().join("uv.lock"),
    )
    .unwrap();
    assert_reused_and_passed(&tests_image, checkout.path(), "tests");
}

/// Two builds from clean state, at different times, into different repositories: the
/// same manifest digest (so the same config, diff_ids and layer digests) for every session.
#[test]
fn two_clean_builds_are_byte_identical() {
    let a = support::copy_fixture("sample");
    let b = support::copy_fixture("sample");
    write_config(a.path(), &support::unique_repo("repro-a"), "");
    write_config(b.path(), &support::unique_repo("repro-b"), "");
    let (first, _) = build(a.path(), &[]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (second, _) = build(b.path(), &[]);
    for name in ["tests", "lint", "compat-3.11"] {
        let (x, y) = (session(&first, name), session(&second, name));
        assert_eq!(x["outcome"], "built");
        assert_eq!(y["outcome"], "built");
        assert_eq!(x["tag"], y["tag"], "{name}: keys differ");
        assert_eq!(x["digest"], y["digest"], "{name}: manifest digests differ");
        assert_eq!(x["layer_size"], y["layer_size"]);
    }
    assert_eq!(first["all"]["digest"], second["all"]["digest"]);
}
