//! `venvimg plan` against the real loopback registry, and the bad-input table: each bad
//! input exits 2 with a message naming the problem, and nothing panics.
use crate::support;

use predicates::prelude::*;
use support::Project;

/// A copy of the sample project with a venvimg.yaml pointing at a fresh repository.
fn project(extra_yaml: &str) -> Project {
    Project::fixture("sample")
        .unique_repo("plan")
        .config(extra_yaml)
}

fn keys(plan: &serde_json::Value) -> Vec<(String, String)> {
    support::by_session(plan, "key")
}

#[test]
fn miss_then_hit_after_any_tool_pushes_the_tag() {
    let env = support::testenv();
    let p = project("");
    let repo = p.repo();
    let plan = p.plan();
    let sessions = plan["sessions"].as_array().unwrap();
    let names: Vec<&str> = sessions
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["tests", "lint", "compat-3.11"]);
    for s in sessions {
        assert_eq!(s["status"], "miss", "{s}");
        let tag = s["tag"].as_str().unwrap();
        let venv = s["venv_dir"].as_str().unwrap();
        assert!(tag.starts_with(&format!("{venv}-")), "{tag}");
        assert_eq!(tag.len(), venv.len() + 17);
    }
    assert_eq!(sessions[2]["venv_dir"], "compat-3-11");
    assert_eq!(
        plan["base"].as_str().unwrap().split('@').nth(1),
        Some(env.base_digest())
    );

    // Any image pushed under lint's tag by another tool is not a hit: a hit must carry
    // the session's key and what its build read.
    let lint_image = sessions[1]["image"].as_str().unwrap().to_string();
    assert!(lint_image.starts_with(repo));
    support::copy_tag(&env.base, &lint_image);
    let plan2 = p.plan();
    assert_eq!(plan2["sessions"][1]["status"], "miss", "{plan2}");
    assert!(
        plan2["sessions"][1]["changed"][0]
            .as_str()
            .unwrap()
            .contains("not made by this venvimg"),
        "{plan2}"
    );

    // The image venvimg builds for it is: lint becomes a hit, the rest stay misses.
    let built = p.build(&["-q", "-s", "lint"]);
    let plan2 = p.plan();
    let status: Vec<&str> = plan2["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, vec!["miss", "hit", "miss"]);
    assert_eq!(
        plan2["sessions"][1]["digest"], built["sessions"][0]["digest"],
        "a hit reports the digest the tag points at"
    );

    // The table form says the same.
    support::venvimg()
        .current_dir(p.path())
        .arg("plan")
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"lint\s+lint\s+lint-[0-9a-f]{16}\s+hit").unwrap())
        .stdout(predicate::str::is_match(r"tests\s+tests\s+tests-[0-9a-f]{16}\s+miss").unwrap());
}

#[test]
fn keys_are_stable_and_follow_every_input_byte() {
    let p = project("");
    let first = keys(&p.plan());
    let second = keys(&p.plan());
    assert_eq!(
        first, second,
        "an unchanged project must plan identical keys"
    );

    // Reordering the YAML does not change keys.
    let yaml = std::fs::read_to_string(p.path().join("venvimg.yaml")).unwrap();
    let mut lines: Vec<&str> = yaml.lines().collect();
    lines.reverse();
    std::fs::write(p.path().join("venvimg.yaml"), lines.join("\n") + "\n").unwrap();
    assert_eq!(keys(&p.plan()), first, "YAML order changed a key");

    // A byte of uv.lock that changes none of the entries a session installs (its
    // formatting) changes no key: sessions are keyed by the entries, not the file.
    let lock = p.path().join("uv.lock");
    let mut bytes = std::fs::read(&lock).unwrap();
    bytes.push(b'\n');
    std::fs::write(&lock, bytes).unwrap();
    assert_eq!(keys(&p.plan()), first, "uv.lock formatting changed a key");

    // One byte of the noxfile changes every key.
    let noxfile = p.path().join("noxfile.py");
    let mut bytes = std::fs::read(&noxfile).unwrap();
    bytes.extend_from_slice(b"# edited\n");
    std::fs::write(&noxfile, bytes).unwrap();
    let third = keys(&p.plan());
    for ((s1, k1), (s3, k3)) in first.iter().zip(&third) {
        assert_eq!(s1, s3);
        assert_ne!(
            k1, k3,
            "session {s1}: key unchanged after editing the noxfile"
        );
    }
}

#[test]
fn ci_output_writes_name_value_lines() {
    let p = project("");
    let repo = p.repo();
    let out_file = p.path().join("gh-output");
    std::fs::write(&out_file, "existing=1\n").unwrap();
    support::venvimg()
        .current_dir(p.path())
        .env("GITHUB_OUTPUT", &out_file)
        .args(["plan", "--ci-output", "-q"])
        .assert()
        .success();
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(text.starts_with("existing=1\n"), "must append: {text}");
    for name in ["tests", "lint", "compat_3_11"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= line in {text}"));
        assert!(line.contains(repo), "{line}");
    }
}

/// Each bad input: exit 2, a message naming the problem, no panic.
#[test]
fn bad_inputs_exit_2_with_a_clear_message() {
    let env = support::testenv();
    let base = &env.base;
    let reg = &env.registry;
    let cases: Vec<(&str, String, &str)> = vec![
        ("YAML syntax error", format!("repository: {reg}/x\nbase: [unclosed\n"), "line"),
        ("unknown field", format!("repository: {reg}/x\nbase: {base}\ncolour: red\n"), "unknown field `colour`"),
        ("relative envdir", format!("repository: {reg}/x\nbase: {base}\nenvdir: opt/nox\n"), "`envdir`"),
        ("unknown session", format!("repository: {reg}/x\nbase: {base}\nsessions: [nope]\n"), "unknown session `nope`"),
        ("missing input", format!("repository: {reg}/x\nbase: {base}\ninputs: [requirements.txt]\n"), "requirements.txt"),
        ("malformed repository", format!("repository: 'Not A/Ref!!'\nbase: {base}\n"), "`repository`"),
        ("malformed base", format!("repository: {reg}/x\nbase: 'bad ref::'\n"), "`base`"),
        ("bad platform", format!("repository: {reg}/x\nbase: {base}\nplatform: linux/sparc\n"), "`platform`"),
        ("bad session option", format!("repository: {reg}/x\nbase: {base}\nsessions:\n  - name: tests\n    project: frozen\n"), "sessions[0].project"),
        ("repository with tag", format!("repository: {reg}/x:latest\nbase: {base}\n"), "`repository`"),
        ("a typo in a session name", format!("repository: {reg}/x\nbase: {base}\nsessions: [test]\n"), "unknown session `test`; did you mean `tests`?"),
        // Refused before any request: the name would not resolve here anyway, but the
        // message says what to edit instead of a DNS error.
        ("init's placeholders", "repository: registry.example.com/change-me/ci\nbase: registry.example.com/change-me/python-nox:3.12\n".to_string(), "`repository` and `base` still hold the placeholder `venvimg init` wrote"),
        ("init's base placeholder", format!("repository: {reg}/x\nbase: registry.example.com/change-me/python-nox:3.12\n"), "`base` still holds the placeholder"),
    ];
    for (what, yaml, needle) in cases {
        let dir = support::copy_fixture("sample");
        std::fs::write(dir.path().join("venvimg.yaml"), &yaml).unwrap();
        let out = support::venvimg()
            .current_dir(dir.path())
            .arg("plan")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit code, stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{what}: expected {needle:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains("venvimg.yaml"),
            "{what}: the file is not named:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: panic:\n{stderr}");
    }

    // A missing config file.
    let dir = tempfile::tempdir().unwrap();
    support::venvimg()
        .current_dir(dir.path())
        .arg("plan")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("venvimg.yaml").and(predicate::str::contains("venvimg init")),
        );

    // A bad flag is a usage error too.
    support::venvimg()
        .args(["plan", "--no-such-flag"])
        .assert()
        .code(2);
}

/// Failures that are not the user's typing exit 1: a base image that does not exist, and a
/// registry that cannot be reached (in an empty network namespace, under `.invalid`).
#[test]
fn missing_base_and_unreachable_registry_exit_1() {
    let env = support::testenv();
    let p = project("");
    std::fs::write(
        p.path().join("venvimg.yaml"),
        format!(
            "repository: {}/x\nbase: {}/no/such-base:1\n",
            env.registry, env.registry
        ),
    )
    .unwrap();
    support::venvimg()
        .current_dir(p.path())
        .arg("plan")
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("no/such-base")
                .and(predicate::str::contains("does not exist"))
                .and(predicate::str::contains("check `base:` in venvimg.yaml")),
        );

    // A job image tag that does not exist: not the base's hint.
    let missing = format!("{}/x:tests-0000000000000000", env.registry);
    let out = support::venvimg()
        .current_dir(p.path())
        .args(["inspect", &missing])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("venvimg build"), "{stderr}");
    assert!(!stderr.contains("base image first"), "{stderr}");

    // A loopback port nothing listens on: said so, not the plain-HTTP hint.
    let port = support::free_port();
    std::fs::write(
        p.path().join("venvimg.yaml"),
        format!("repository: 127.0.0.1:{port}/x\nbase: 127.0.0.1:{port}/base:1\n"),
    )
    .unwrap();
    let out = support::venvimg()
        .current_dir(p.path())
        .arg("plan")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("nothing listens at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("insecure_registries"), "{stderr}");

    std::fs::write(
        p.path().join("venvimg.yaml"),
        "repository: registry.venvimg.invalid/acme/ci\nbase: registry.venvimg.invalid/base:1\n",
    )
    .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("venvimg");
    let out = std::process::Command::new("unshare")
        .arg("-n")
        .arg(bin)
        .arg("plan")
        .current_dir(p.path())
        .output()
        .expect("unshare (util-linux) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("registry.venvimg.invalid"), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(stderr.contains("does not resolve"), "{stderr}");
}

#[test]
fn sessions_are_selected_as_nox_takes_them_and_json_callers_get_errors_as_json() {
    let env = support::testenv();
    let p = project("");
    // `-s tests lint`: several names after one flag, as nox takes them.
    let out = p.run(&["plan", "--json", "-q", "-s", "tests", "lint"]);
    let doc = support::project::json_ok(&out, "plan -s tests lint");
    let mut names: Vec<_> = keys(&doc).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["lint", "tests"], "{doc}");
    // `--explain S -s T` explains S (it is planned too).
    let (code, text) = p.outcome(&["plan", "--explain", "tests", "-s", "lint"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("tests"), "{text}");
    // A failure under --json: an error object on stdout, with the exit code.
    let out = p.run(&["plan", "--json", "-s", "test"]);
    assert_eq!(out.status.code(), Some(2));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(err["exit_code"], 2, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("did you mean `tests`?"),
        "{err}"
    );
    // VENVIMG_REPOSITORY overrides `repository` (a fork's own registry), also over init's
    // placeholder; it is checked like the field.
    p.write_config_raw(&format!(
        "repository: registry.example.com/change-me/ci\nbase: {}\n",
        env.base
    ));
    let fork = format!("{}/fork-{}", env.registry, std::process::id());
    let out = p
        .venvimg()
        .args(["plan", "--json", "-q", "-s", "tests"])
        .env("VENVIMG_REPOSITORY", &fork)
        .output()
        .unwrap();
    let doc = support::project::json_ok(&out, "plan with VENVIMG_REPOSITORY");
    assert_eq!(doc["repository"], fork.as_str(), "{doc}");
    let (code, text) = p.outcome_with(&["plan"], &[("VENVIMG_REPOSITORY", "Not A/Ref!!")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("VENVIMG_REPOSITORY"), "{text}");
    // The flag does the same and wins over the environment.
    let flagged = format!("{}/flag-{}", env.registry, std::process::id());
    let out = p
        .venvimg()
        .args([
            "plan",
            "--json",
            "-q",
            "-s",
            "tests",
            "--repository",
            &flagged,
        ])
        .env("VENVIMG_REPOSITORY", &fork)
        .output()
        .unwrap();
    let doc = support::project::json_ok(&out, "plan with --repository");
    assert_eq!(doc["repository"], flagged.as_str(), "{doc}");
    let (code, text) = p.outcome(&["plan", "--repository", "Not A/Ref!!"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--repository"), "{text}");
}

#[test]
fn the_config_is_found_from_a_subfolder_and_ci_output_is_checked_before_any_work() {
    // Run from `tests/` of the checkout: venvimg.yaml above is found (as uv and cargo
    // find theirs), inputs resolve next to it, and the keys equal those from the root.
    let p = project("");
    let from_root = keys(&p.plan());
    let out = support::venvimg()
        .current_dir(p.path().join("tests"))
        .args(["plan", "--json", "-q"])
        .output()
        .unwrap();
    let from_sub = support::project::json_ok(&out, "plan from a subfolder");
    assert_eq!(keys(&from_sub), from_root);

    // --ci-output outside a workflow step: exit 2 at once, nothing built or pushed.
    let out = p
        .venvimg()
        .args(["build", "--ci-output"])
        .env_remove("GITHUB_OUTPUT")
        .env_remove("FORGEJO_OUTPUT")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("neither GITHUB_OUTPUT nor FORGEJO_OUTPUT"),
        "{text}"
    );
    assert!(!text.contains("base "), "it planned first: {text}");
}

#[test]
fn sessions_the_config_leaves_out_are_named() {
    // `sessions: [tests]` while nox runs lint and compat-3.11 by default too: plan says
    // which get no image (a CI job expecting one would find an empty output).
    let p = project("sessions: [tests]\n");
    let (code, text) = p.outcome(&["plan"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("`sessions:` leaves out sessions that nox runs by default"),
        "{text}"
    );
    assert!(
        text.contains("lint") && text.contains("compat-3.11"),
        "{text}"
    );
    // --chunk-size beyond what oci-client sends per request is refused, not capped.
    let (code, text) = p.outcome(&["plan", "--chunk-size", "16"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("1..=4"), "{text}");
    // Narrowed with -s on purpose: nothing to say.
    let (code, text) = p.outcome(&["plan", "-s", "tests"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("leaves out"), "{text}");
    // Following the noxfile (no `sessions:`): nothing left out.
    p.write_config("");
    let (code, text) = p.outcome(&["plan"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("leaves out"), "{text}");
}

#[test]
fn a_lock_that_no_longer_matches_pyproject_is_named_and_strict_refuses_it() {
    let p = project("");
    // Matching lock: --strict has nothing to refuse.
    let (code, text) = p.outcome(&["plan", "--strict"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("uv.lock does not match"), "{text}");

    // What a user does by mistake: add a dependency without updating the lock.
    let out = std::process::Command::new("uv")
        .args(["add", "--frozen", "--group", "test", "coverage"])
        .current_dir(p.path())
        .output()
        .expect("uv runs (install it: pip install uv)");
    support::stdout_ok(&out, "uv add --frozen");

    let (code, text) = p.outcome(&["plan"]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("uv.lock does not match pyproject.toml"),
        "{text}"
    );
    assert!(
        text.contains("`coverage` is in pyproject.toml's group `test` but not in uv.lock"),
        "{text}"
    );
    assert!(text.contains("run `uv lock`"), "{text}");

    // In CI, --strict stops the build before anything is built or pushed.
    let (code, text) = p.outcome(&["build", "--strict"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--strict: ") && text.contains("`coverage`"),
        "{text}"
    );
    assert!(!text.contains("session(s)"), "it went on to build: {text}");
    let (code, _) = p.outcome(&["plan", "--strict"]);
    assert_eq!(code, Some(2));
}

#[test]
fn a_config_outside_the_root_names_the_project_with_root_or_project() {
    let env = support::testenv();
    let p = project("");
    let from_root = keys(&p.plan());
    let ci = p.path().join("ci");
    std::fs::create_dir(&ci).unwrap();
    std::fs::rename(p.path().join("venvimg.yaml"), ci.join("venvimg.yaml")).unwrap();
    let plan_json = |args: &[&str], what: &str| {
        let out = p
            .venvimg()
            .args(args)
            .args(["plan", "--json", "-q"])
            .output()
            .unwrap();
        keys(&support::project::json_ok(&out, what))
    };

    // `--project .`: the project is here though the file is in ci/; same keys.
    assert_eq!(
        plan_json(
            &["--config", "ci/venvimg.yaml", "--project", "."],
            "--project"
        ),
        from_root
    );
    // `root: ..` in the file does the same, from anywhere below the project.
    let yaml = std::fs::read_to_string(ci.join("venvimg.yaml")).unwrap();
    std::fs::write(ci.join("venvimg.yaml"), format!("{yaml}root: ..\n")).unwrap();
    assert_eq!(
        plan_json(&["--config", "ci/venvimg.yaml"], "root: .."),
        from_root
    );
    // A root without a noxfile: exit 2 naming the field.
    std::fs::write(ci.join("venvimg.yaml"), format!("{yaml}root: nowhere\n")).unwrap();
    let (code, text) = p.outcome(&["--config", "ci/venvimg.yaml", "plan"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("root") && text.contains("has no noxfile.py"),
        "{text}"
    );
    let (code, text) = p.outcome(&["--project", "ci", "plan"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--project `ci`: no noxfile.py there"),
        "{text}"
    );

    // init writes `root:` when told the project is elsewhere.
    std::fs::remove_file(ci.join("venvimg.yaml")).unwrap();
    let out = p
        .venvimg()
        .args(["--config", "ci/venvimg.yaml", "--project", ".", "init"])
        .args(["--repository", p.repo(), "--base", &env.base])
        .output()
        .unwrap();
    support::stdout_ok(&out, "venvimg init --project .");
    let written = std::fs::read_to_string(ci.join("venvimg.yaml")).unwrap();
    assert!(written.contains("\nroot: \"..\"\n"), "{written}");
    let out = support::venvimg()
        .current_dir(&ci)
        .args(["plan", "--json", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        keys(&support::project::json_ok(&out, "plan in ci/")),
        from_root
    );
}

#[test]
fn a_function_name_selects_every_python_and_parametrization_as_nox_does() {
    let p = project("");
    let noxfile = p.path().join("noxfile.py");
    let mut text = std::fs::read_to_string(&noxfile).unwrap();
    text.push_str(
        r#"

@nox.session(python=["3.11", "3.13"], venv_backend="uv", default=False)
def multi(session: nox.Session) -> None:
    session.install("packaging==25.0")


@nox.session(python="3.11", venv_backend="uv", default=False)
@nox.parametrize("flavour", ["plain", "extra"])
def param(session: nox.Session, flavour: str) -> None:
    session.install("packaging==25.0")
"#,
    );
    std::fs::write(&noxfile, text).unwrap();
    let names = |args: &[&str]| -> Vec<String> {
        let out = p
            .venvimg()
            .args(["plan", "--json", "-q"])
            .args(args)
            .output()
            .unwrap();
        let mut n: Vec<String> = keys(&support::project::json_ok(&out, &args.join(" ")))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        n.sort();
        n
    };
    // A function name: every python of it, every parametrization.
    assert_eq!(names(&["-s", "multi"]), ["multi-3.11", "multi-3.13"]);
    assert_eq!(
        names(&["-s", "param"]),
        ["param(flavour='extra')", "param(flavour='plain')"]
    );
    // One signature, and several names after one flag mixing both kinds.
    assert_eq!(
        names(&["-s", "param(flavour='plain')"]),
        ["param(flavour='plain')"]
    );
    assert_eq!(
        names(&["-s", "multi-3.13", "param(flavour='extra')", "lint"]),
        ["lint", "multi-3.13", "param(flavour='extra')"]
    );
    // default=False sessions stay out of a plain plan, as nox leaves them out.
    assert_eq!(names(&[]), ["compat-3.11", "lint", "tests"]);
    // A near miss gets a suggestion, naming the noxfile.
    let (code, text) = p.outcome(&["plan", "-s", "mult"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("did you mean `multi`"), "{text}");
    assert!(text.contains("noxfile.py"), "{text}");
}
