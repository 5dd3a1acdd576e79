//! Finer keys (issue #8): sessions keyed by their own locked package set, the drift
//! guard, and `plan --explain`, against the real registry with podman builds.
use crate::support;

use serde_json::Value;
use support::Project;

const LOCKED: &str = "sessions:
  - name: tests
    locked: {groups: [test]}
  - name: lint
    locked: {groups: [lint]}
";

fn status(plan: &Value) -> Vec<(String, String)> {
    support::by_session(plan, "status")
}

fn use_lock(p: &Project, variant: &str) {
    std::fs::copy(
        support::fixture("groups-variants").join(variant),
        p.path().join("uv.lock"),
    )
    .unwrap();
}

/// `venvimg build` (no `--json`) with the test CA.
fn build(p: &Project, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--build-ca", support::testenv().ca_file()];
    args.extend_from_slice(extra);
    p.run(&args)
}

#[test]
fn a_lock_change_rebuilds_only_the_sessions_it_touches() {
    let p = Project::fixture("groups")
        .unique_repo("finer")
        .config(LOCKED);
    support::stdout_ok(&build(&p, &[]), "venvimg build");
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(status(&p.plan()), vec![s("tests", "hit"), s("lint", "hit")]);

    // A lint-only bump: lint misses, tests still hits.
    use_lock(&p, "lint-bump.lock");
    assert_eq!(
        status(&p.plan()),
        vec![s("tests", "hit"), s("lint", "miss")]
    );

    // --explain names the package with old and new versions.
    let text = support::stdout_ok(
        &p.run(&["plan", "--explain", "lint"]),
        "plan --explain lint",
    );
    assert!(text.contains("session lint: miss"), "{text}");
    assert!(text.contains("package pyflakes: 4.1.0 → 3.1.0"), "{text}");
    let out = p.run(&["plan", "--explain", "tests"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("session tests: hit"));
    // The same, for a script: --json.
    let out = p.run(&["plan", "--explain", "lint", "--json", "-q"]);
    let why = support::project::json_ok(&out, "plan --explain lint --json");
    assert_eq!(why["status"], "miss", "{why}");
    let changes: Vec<&str> = why["closest_earlier"]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no closest_earlier.changes: {why}"))
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        changes
            .iter()
            .any(|c| c.contains("package pyflakes: 4.1.0 → 3.1.0")),
        "{why}"
    );
    let out = p.run(&["plan", "--explain", "tests", "--json", "-q"]);
    let why = support::project::json_ok(&out, "plan --explain tests --json");
    assert_eq!(why["status"], "hit", "{why}");
    assert!(
        why["digest"].as_str().unwrap_or("").starts_with("sha256:"),
        "{why}"
    );

    // A runtime dependency bump: both sessions install the project's dependencies, so
    // both miss.
    use_lock(&p, "runtime-bump.lock");
    assert_eq!(
        status(&p.plan()),
        vec![s("tests", "miss"), s("lint", "miss")]
    );
    let out = p.run(&["plan", "--explain", "tests"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("package packaging: 26.3 → 24.2"), "{text}");
}

/// Without `locked:`, venvimg finds by itself what each session takes from uv.lock (the
/// `uv sync` selection its noxfile runs): a lint-only bump changes lint's key and not
/// tests', exactly as with `locked:`, and a runtime bump changes both.
#[test]
fn without_locked_a_lock_change_changes_only_the_keys_of_sessions_it_touches() {
    let keys = |sessions: &str, lock: Option<&str>| -> Vec<String> {
        let p = Project::fixture("groups")
            .unique_repo("coarse")
            .config(sessions);
        if let Some(l) = lock {
            use_lock(&p, l);
        }
        p.plan()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    for sessions in ["sessions: [tests, lint]\n", LOCKED] {
        let before = keys(sessions, None);
        let lint_bump = keys(sessions, Some("lint-bump.lock"));
        assert_eq!(before[0], lint_bump[0], "tests keeps its key ({sessions})");
        assert_ne!(before[1], lint_bump[1], "lint changes ({sessions})");
        let runtime_bump = keys(sessions, Some("runtime-bump.lock"));
        assert_ne!(before[0], runtime_bump[0], "{sessions}");
        assert_ne!(before[1], runtime_bump[1], "{sessions}");
    }
}

#[test]
fn unpinned_install_is_drift_and_strict_refuses_it() {
    let p = Project::fixture("groups")
        .unique_repo("drift")
        .config("sessions:\n  - name: drift\n    locked: {only_groups: [lint]}\n");
    let image = p.plan()["sessions"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();

    // `-s`: the config names one session on purpose (a bare --strict would refuse the
    // sessions it leaves out before building).
    let out = build(&p, &["--strict", "-s", "drift"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("session `drift`"), "{err}");
    assert!(err.contains("iniconfig"), "{err}");
    assert_eq!(
        support::skopeo_inspect_digest(&image),
        None,
        "--strict pushed {image}"
    );

    let out = build(&p, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: session `drift`: drift: iniconfig"),
        "{err}"
    );
    assert!(support::skopeo_inspect_digest(&image).is_some());
}
