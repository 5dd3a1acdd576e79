//! Never stale (issue #14): a session's key covers every file its installs read, found by
//! venvimg (not listed by hand), hits are checked against what the image's build read,
//! floating installs are named, and sessions nox does not select by default build when
//! named. Against the real registry, podman and nox, on a fixture laid out like many
//! real projects (`tests/fixtures/discovered`).
use crate::support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::Project;

/// The sessions of a plan or build summary whose `field` is `value`.
fn sessions_with(doc: &Value, field: &str, value: &str) -> BTreeSet<String> {
    doc["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[field] == value)
        .map(|s| s["session"].as_str().unwrap().to_string())
        .collect()
}

fn misses(plan: &Value) -> BTreeSet<String> {
    sessions_with(plan, "status", "miss")
}

fn built(summary: &Value) -> BTreeSet<String> {
    sessions_with(summary, "outcome", "built")
}

/// `HOST/REPO:TAG@DIGEST` of a session's image.
fn image_of(summary: &Value, session: &str) -> String {
    format!(
        "{}@{}",
        support::image_of(summary, session),
        support::session(summary, session)["digest"]
            .as_str()
            .unwrap()
    )
}

/// `HOST/REPO@DIGEST` of a session's image (skopeo takes a tag or a digest, not both).
fn by_digest(summary: &Value, session: &str) -> String {
    let image = image_of(summary, session);
    let (name_tag, digest) = image.split_once('@').unwrap();
    let name = name_tag.rsplit_once(':').unwrap().0;
    format!("{name}@{digest}")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn replace_in(p: &Project, file: &str, from: &str, to: &str) {
    let p = p.path().join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&p, text.replace(from, to)).unwrap();
}

/// `venvimg init` the way a new user does it.
fn init(p: &Project) {
    let env = support::testenv();
    let out = p.run(&["init", "--repository", p.repo(), "--base", &env.base]);
    assert!(
        out.status.success(),
        "init failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_file_an_install_reads_keys_exactly_the_sessions_that_read_it() {
    let d = &Project::fixture("discovered");
    init(d);
    let config = std::fs::read_to_string(d.path().join("venvimg.yaml")).unwrap();
    assert!(
        !config.lines().any(|l| l.starts_with("inputs:")),
        "init writes no hand-made list of inputs:\n{config}"
    );
    let first = d.build(&[]);
    assert_eq!(built(&first).len(), 6, "{first}");
    assert!(
        misses(&d.plan()).is_empty(),
        "a second plan hits everything"
    );

    // Files no session's installs read: every session still hits.
    std::fs::write(d.path().join("README.md"), "changed\n").unwrap();
    replace_in(d, "src/discovered/__init__.py", "42", "42  # edited");
    assert!(misses(&d.plan()).is_empty());

    // Each file in turn: exactly the sessions that read it miss; --explain names the file;
    // the rebuilt image passes offline (its session checks the checkout's pins).
    let lint_bump = support::fixture("discovered-variants").join("lint-bump.lock");
    type Change = Box<dyn Fn(&Project)>;
    let changes: Vec<(&str, Change, &str, &str)> = vec![
        (
            "a pin in a nested -r file in a subfolder",
            Box::new(|d| {
                replace_in(
                    d,
                    "tests/requirements/base.txt",
                    "pluggy==1.5.0",
                    "pluggy==1.4.0",
                )
            }),
            "pinned",
            "tests/requirements/base.txt",
        ),
        (
            "a per-Python constraints file read with -c",
            Box::new(|d| {
                replace_in(
                    d,
                    "testing/constraints-3.11.txt",
                    "packaging==24.2",
                    "packaging==24.1",
                )
            }),
            "constrained-3.11",
            "testing/constraints-3.11.txt",
        ),
        (
            "the metadata of an editable path dependency",
            Box::new(|d| {
                replace_in(
                    d,
                    "plugins/helper/pyproject.toml",
                    "version = \"0.1.0\"",
                    "version = \"0.2.0\"",
                )
            }),
            "plugin",
            "plugins/helper/pyproject.toml",
        ),
        (
            "a lint-only bump in uv.lock, no `locked:`",
            Box::new(move |d| {
                std::fs::copy(&lint_bump, d.path().join("uv.lock")).unwrap();
            }),
            "lint",
            "pyflakes: 4.1.0 → 3.2.0",
        ),
    ];
    for (what, change, session, named) in changes {
        change(d);
        let p = d.plan();
        assert_eq!(misses(&p), set(&[session]), "{what}: {p}");
        let out = d.run(&["plan", "--explain", session]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(named),
            "{what}: --explain does not name {named}:\n{text}"
        );
        let summary = d.build(&[]);
        assert_eq!(built(&summary), set(&[session]), "{what}: {summary}");
        d.assert_runs_offline(&image_of(&summary, session), session);
        assert!(
            misses(&d.plan()).is_empty(),
            "{what}: all hit after the build"
        );
    }

    // The project's pyproject.toml is read by the two `uv sync` sessions only.
    replace_in(
        d,
        "pyproject.toml",
        "description = ",
        "keywords = [\"x\"]\ndescription = ",
    );
    assert_eq!(misses(&d.plan()), set(&["synced", "lint"]));

    // A file that vanishes is named too.
    std::fs::remove_file(d.path().join("tests/requirements/base.txt")).unwrap();
    let out = d.run(&["plan", "--explain", "pinned"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tests/requirements/base.txt") && text.contains("absent"),
        "{text}"
    );
}

/// A hit is checked against what the image's build read: an image put under another
/// session state's tag (a poisoned or stale tag) is not taken.
#[test]
fn a_hit_must_carry_the_key_and_the_files_its_build_read() {
    let d = &Project::fixture("discovered")
        .unique_repo("checked")
        .config("sessions: [pinned]\n");
    let first = d.build(&[]);
    let old_image = by_digest(&first, "pinned");
    replace_in(
        d,
        "tests/requirements/base.txt",
        "pluggy==1.5.0",
        "pluggy==1.4.0",
    );
    let p = d.plan();
    let new_ref = p["sessions"][0]["image"].as_str().unwrap().to_string();
    // Someone pushes the old image under the new key's tag.
    support::copy_tag(&old_image, &new_ref);
    let p = d.plan();
    assert_eq!(misses(&p), set(&["pinned"]), "{p}");
    let out = d.run(&["plan", "--explain", "pinned"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("made for key"), "{text}");
    // The build replaces it with an image that passes.
    let summary = d.build(&[]);
    assert_eq!(built(&summary), set(&["pinned"]));
    d.assert_runs_offline(&image_of(&summary, "pinned"), "pinned");
}

#[test]
fn floating_sessions_are_named_and_refresh_puts_the_period_in_their_key() {
    let d = &Project::fixture("discovered").unique_repo("floating");
    let write = |extra: &str| d.write_config(&format!("sessions: [pinned, floating]\n{extra}"));
    write("");
    let out = d.run(&["plan", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("session `floating` floats: nothing pins iniconfig"),
        "{err}"
    );
    assert!(!err.contains("session `pinned` floats"), "{err}");
    let without: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        without["sessions"][1]["floating"][0]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("iniconfig")
    );
    write("refresh: 7d\n");
    let with = d.plan();
    assert_eq!(
        with["sessions"][0]["key"], without["sessions"][0]["key"],
        "pinned does not float: no time in its key"
    );
    assert_ne!(
        with["sessions"][1]["key"], without["sessions"][1]["key"],
        "floating's key holds the period"
    );
    // A period of one minute: the key moves with time.
    write("refresh: 1m\n");
    let a = d.plan()["sessions"][1]["key"].clone();
    std::thread::sleep(std::time::Duration::from_secs(61));
    let b = d.plan()["sessions"][1]["key"].clone();
    assert_ne!(a, b, "a new period, a new key");
}

#[test]
fn a_default_false_session_builds_when_the_config_names_it() {
    let d = &Project::fixture("discovered")
        .unique_repo("extra")
        .config("sessions: [extra]\n");
    let summary = d.build(&[]);
    assert_eq!(built(&summary), set(&["extra"]));
    d.assert_runs_offline(&image_of(&summary, "extra"), "extra");
    // `-s` names it too, on a config that does not list it.
    d.write_config("");
    let p = support::json_ok(&d.run(&["plan", "--json", "-q", "-s", "extra"]), "plan");
    assert_eq!(p["sessions"][0]["session"], "extra");
    assert_eq!(p["sessions"][0]["status"], "hit");
}

/// A public project whose non-default session (`@nox.session(default=False)`) builds and
/// runs offline. pypa/packaging's sdists carry no noxfile; particle's (from PyPI) does.
#[test]
fn a_public_projects_default_false_session_builds_and_runs_offline() {
    let work = tempfile::tempdir().unwrap();
    // From PyPI's simple index (the package registry this machine reaches), checked
    // against the sha256 the index publishes.
    const FETCH: &str = r#"
import hashlib, json, sys, urllib.request
name, version, dest = sys.argv[1:]
req = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
f = next(x for x in files if x["filename"] == f"{name}-{version}.tar.gz")
data = urllib.request.urlopen(f["url"], timeout=120).read()
assert hashlib.sha256(data).hexdigest() == f["hashes"]["sha256"], "sdist digest mismatch"
open(f"{dest}/{f['filename']}", "wb").write(data)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", FETCH, "particle", "1.1.0"])
        .arg(work.path())
        .output()
        .expect("python3 must run (apt-get install -y python3)");
    assert!(
        out.status.success(),
        "fetching particle 1.1.0 from PyPI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(work.path().join("particle-1.1.0.tar.gz"))
        .arg("-C")
        .arg(work.path())
        .status()
        .unwrap();
    assert!(st.success());
    let d = Project::at(work, "particle-1.1.0")
        .unique_repo("particle")
        .config("sessions: [generate_aliases]\n");
    let summary = d.build(&[]);
    assert_eq!(built(&summary), set(&["generate_aliases"]));
    d.assert_runs_offline(&image_of(&summary, "generate_aliases"), "generate_aliases");
}

/// With a container builder, nox on this machine is never run: a broken one (a pyenv
/// shim for a Python this machine lacks exits 127) changes nothing.
#[test]
fn a_broken_nox_on_path_does_not_matter_to_a_container_builder() {
    let d = Project::fixture("discovered")
        .unique_repo("shim")
        .config("");
    let bin = tempfile::tempdir().unwrap();
    let called = bin.path().join("called");
    let path = support::fake_on_path(
        bin.path(),
        "nox",
        &format!("#!/bin/sh\ntouch {}\nexit 127\n", called.display()),
    );
    let out = d
        .venvimg()
        .env("PATH", path)
        .args(["plan", "--json", "-q"])
        .output()
        .unwrap();
    let p = support::json_ok(&out, "plan");
    assert_eq!(p["sessions"].as_array().unwrap().len(), 6);
    assert!(!called.exists(), "the nox on PATH was run");
}

/// A failed build's log outlives venvimg's build folder: the path the error names exists.
#[test]
fn a_failed_build_names_a_log_that_still_exists() {
    let d = Project::fixture("discovered").unique_repo("broken");
    let noxfile = d.path().join("noxfile.py");
    let mut text = std::fs::read_to_string(&noxfile).unwrap();
    text.push_str(
        "\n\n@nox.session(python=\"3.11\", default=False)\ndef broken(session):\n    session.install(\"-r\", \"tests/requirements/base.txt\")\n    session.run_install(\"python\", \"-c\", \"print('about to fail'); raise SystemExit(3)\")\n",
    );
    std::fs::write(&noxfile, text).unwrap();
    d.write_config("sessions: [broken]\n");
    let state = tempfile::tempdir().unwrap();
    let out = d
        .venvimg()
        .env("XDG_STATE_HOME", state.path())
        .args(["build", "--build-ca", support::testenv().ca_file()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let log = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("full log: "))
        .unwrap_or_else(|| panic!("no `full log:` line:\n{err}"));
    let kept = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    assert!(kept.contains("about to fail"), "{kept}");
    assert!(
        log.starts_with(&state.path().display().to_string()),
        "{log}"
    );
}
