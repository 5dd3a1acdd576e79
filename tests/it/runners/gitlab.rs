//! `images/ci-examples/gitlab-ci.yml` under gitlab-ci-local 4.64.0 (docker executor) on
//! the test dockerd and the loopback registry, fully offline: the plan → child pipeline
//! (`trigger: include: artifact`) → images flow, session jobs in `image: $tests` from the
//! dotenv report, and the `images`-only layout the example's comments describe.
//!
//! The pipeline is the shipped file, copied as a user copies it; what differs, and why,
//! is in `SUBSTITUTIONS` (printed by each test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{docker, docker_ok};

/// Every change these tests make to the shipped pipeline or to what GitLab would give
/// its jobs, with why.
pub const SUBSTITUTIONS: &[(&str, &str)] = &[
    (
        "the example copied to .gitlab-ci.yml of a git checkout of the sample project (one commit, origin https://gitlab.invalid/acme/app.git with origin/HEAD -> main, as a clone has)",
        "what a user does; gitlab-ci-local derives CI_PROJECT_DIR=/builds/acme/app from the origin remote and never contacts it",
    ),
    (
        "variables: VENVIMG_BASE: <job base image> (the pipeline's only text change)",
        "the line the example marks `Adapt.`: the base job image on the loopback registry",
    ),
    (
        "job base image = the test base image (Python, uv, nox) + this build's venvimg binary (debug, symbols stripped) at /usr/local/bin/venvimg, built in the test and pushed to the loopback registry",
        "images/python-nox with venvimg 0.1.0 is not published: the binary under test goes into the base job image, as images/README.md says to",
    ),
    (
        "venvimg.yaml: repository/base on the loopback registry, builder: local, no `workdir:`",
        "what a user writes (their registry, the example's base job image and builder); workdir left out, as the example says",
    ),
    (
        "$HOME/.gitlab-ci-local/variables.yml (gitlab-ci-local --home <temp>): CI_REGISTRY=<loopback registry>, CI_REGISTRY_USER, CI_REGISTRY_PASSWORD (a long value); the registry takes any",
        "what GitLab gives every job when the project's container registry holds the images; gitlab-ci-local defines no CI_REGISTRY_USER/PASSWORD and a made-up CI_REGISTRY. The home file, not --variable: gitlab-ci-local hands --variable values to no child pipeline",
    ),
    (
        "gitlab-ci-local --ca-file <the package proxy's CA>",
        "the build (uv in the images job) reaches PyPI only through this machine's proxy, whose CA it must trust: gitlab-ci-local mounts it into every job and sets SSL_CERT_FILE",
    ),
    (
        "gitlab-ci-local --network host for whole-pipeline runs",
        "the test dockerd runs without a bridge: host networking is how a job reaches the loopback registry and the package proxy, as any runner's jobs reach theirs",
    ),
    (
        "the session jobs run a second time alone: gitlab-ci-local --network none tests lint",
        "--network applies to every job of a run; this run proves the session jobs need no network (images from the first run's dotenv report)",
    ),
    (
        "docker.io/firecow/gitlab-ci-local-util:latest in the test dockerd = the base image + Debian's rsync (testenv.sh up gitlab)",
        "gitlab-ci-local copies the checkout and artifacts with rsync in that helper image and pulls it from Docker Hub when missing; Docker Hub is out of reach here",
    ),
];

/// The gitlab-ci-local release these tests run: the last that runs on Debian 12's Node 20.
const GCL_VERSION: &str = "4.64.0";

/// Where gitlab-ci-local's docker executor checks the project out, from the origin remote
/// (`/builds/<group>/<project>`), as GitLab's runner does.
const CI_PROJECT_DIR: &str = "/builds/acme/app";

const REGISTRY_PASSWORD: &str = "job-token-5f0c2a9d7e3b41c86a0d";

fn print_substitutions() {
    eprintln!("substitutions this test makes:");
    for (what, why) in SUBSTITUTIONS {
        eprintln!("  - {what}: {why}");
    }
}

/// `gitlab-ci-local` on PATH, at the version these tests are written for, and the rsync
/// it runs on the host; a failure with the install command otherwise (never a skip).
fn gitlab_ci_local() -> PathBuf {
    let gcl = super::tool("gitlab-ci-local");
    super::tool("rsync");
    let out = Command::new(&gcl)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run gitlab-ci-local --version");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version, GCL_VERSION,
        "gitlab-ci-local {version} is installed; these tests run {GCL_VERSION}: `bash tests/support/testenv.sh deps` (npm install -g gitlab-ci-local@{GCL_VERSION})"
    );
    gcl
}

/// The repositories (`HOST:PORT/name`) a test pushed to, itself or through its jobs:
/// their images in the test dockerd (built, or pulled by the jobs) and their tags in the
/// registry go when the test ends, passed or not.
#[derive(Default)]
struct Cleanup {
    repos: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(out) = docker()
            .args([
                "image",
                "ls",
                "--digests",
                "--format",
                "{{.Repository}} {{.Tag}} {{.Digest}}",
            ])
            .output()
        else {
            return;
        };
        let mut refs = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(repo), Some(tag), Some(digest)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !self.repos.iter().any(|r| r == repo) {
                continue;
            }
            if tag != "<none>" {
                refs.push(format!("{repo}:{tag}"));
            }
            if digest != "<none>" {
                refs.push(format!("{repo}@{digest}"));
            }
        }
        if !refs.is_empty() {
            let _ = docker()
                .arg("rmi")
                .args(&refs)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for repo in &self.repos {
            let Ok(out) = support::skopeo()
                .args(["list-tags", "--tls-verify=false"])
                .arg(format!("docker://{repo}"))
                .output()
            else {
                continue;
            };
            let tags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for tag in tags["Tags"].as_array().into_iter().flatten() {
                let Some(tag) = tag.as_str() else { continue };
                let _ = support::skopeo()
                    .args(["delete", "--tls-verify=false"])
                    .arg(format!("docker://{repo}:{tag}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The base job image of the example (images/python-nox: Python, uv, nox and venvimg):
/// the test base image plus the venvimg binary under test, built in the test dockerd and
/// pushed to the loopback registry. Returns its reference.
fn job_base_image(cleanup: &mut Cleanup) -> String {
    let env = support::testenv();
    let repo = support::unique_repo("gcl-job-base");
    let reference = format!("{repo}:1");
    cleanup.repos.push(repo);
    let context = tempfile::tempdir().unwrap();
    // The debug binary without its debug sections: what runs is the same code, and the
    // image is a tenth of the size.
    let out = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(context.path().join("venvimg"))
        .arg(env!("CARGO_BIN_EXE_venvimg"))
        .output()
        .expect("cannot run strip (binutils, which cargo's linker brings)");
    assert!(
        out.status.success(),
        "strip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base_repo = env.base.rsplit_once(':').map(|(repo, _tag)| repo).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base_repo}@{}\nCOPY venvimg /usr/local/bin/venvimg\n",
            env.base_digest()
        ),
    )
    .unwrap();
    docker_ok(&[
        "build",
        "-q",
        "-t",
        &reference,
        context.path().to_str().unwrap(),
    ]);
    docker_ok(&["push", &reference]);
    reference
}

/// The shipped example with the line a user adapts (VENVIMG_BASE) set to `base`.
fn example_pipeline(base: &str) -> String {
    let text =
        std::fs::read_to_string(support::manifest_dir().join("images/ci-examples/gitlab-ci.yml"))
            .unwrap();
    let line = "  VENVIMG_BASE: registry.gitlab.com/acme/python-nox:3.12\n";
    assert!(
        text.contains(line),
        "the example's VENVIMG_BASE line changed"
    );
    text.replace(line, &format!("  VENVIMG_BASE: {base}\n"))
}

/// The sample project as a user's GitLab checkout: `.gitlab-ci.yml`, venvimg.yaml for the
/// example's layout (`builder: local` in the base job image), one commit, an origin.
struct Checkout {
    project: support::project::Project,
    /// `$HOME` of gitlab-ci-local: `.gitlab-ci-local/variables.yml`, the project's CI/CD
    /// variables.
    home: tempfile::TempDir,
}

impl Checkout {
    fn new(prefix: &str, pipeline: &str, base: &str) -> Checkout {
        let env = support::testenv();
        let project = support::project::Project::fixture("sample").unique_repo(prefix);
        project.write_config_raw(&format!(
            "repository: {}\nbase: {base}\nbuilder: local\n",
            project.repo()
        ));
        std::fs::write(project.path().join(".gitlab-ci.yml"), pipeline).unwrap();
        let dir = project.path();
        support::git(dir, &["init", "-q", "-b", "main"]);
        support::git(dir, &["add", "-A"]);
        support::git(dir, &["commit", "-q", "-m", "init"]);
        support::git(
            dir,
            &[
                "remote",
                "add",
                "origin",
                "https://gitlab.invalid/acme/app.git",
            ],
        );
        // What a clone has: gitlab-ci-local reads the default branch from origin/HEAD.
        support::git(dir, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
        support::git(
            dir,
            &[
                "symbolic-ref",
                "refs/remotes/origin/HEAD",
                "refs/remotes/origin/main",
            ],
        );
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".gitlab-ci-local")).unwrap();
        std::fs::write(
            home.path().join(".gitlab-ci-local/variables.yml"),
            format!(
                "global:\n  CI_REGISTRY: \"{}\"\n  CI_REGISTRY_USER: gitlab-ci-token\n  CI_REGISTRY_PASSWORD: {REGISTRY_PASSWORD}\n",
                env.registry
            ),
        )
        .unwrap();
        Checkout { project, home }
    }

    fn path(&self) -> &Path {
        self.project.path()
    }

    /// Commits `file` (what gitlab-ci-local copied back from the jobs' artifacts stays
    /// untracked, as in a user's checkout).
    fn commit(&self, file: &str, message: &str) {
        support::git(self.path(), &["add", file]);
        support::git(self.path(), &["commit", "-q", "-m", message]);
    }

    /// `gitlab-ci-local ARGS` in the checkout, with the options of SUBSTITUTIONS.
    fn run(&self, args: &[&str]) -> GclRun {
        let env = support::testenv();
        let gcl = gitlab_ci_local();
        support::need_gitlab();
        let mut cmd = Command::new(gcl);
        cmd.arg("--home")
            .arg(self.home.path())
            .args(["--ca-file", env.ca_file()])
            .args(["--color=false", "--max-job-name-padding", "0"])
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null());
        for var in support::CI_MARKERS {
            cmd.env_remove(var);
        }
        cmd.envs(env.envs.iter().map(|(k, v)| (k, v)));
        let start = Instant::now();
        let out = cmd.output().expect("cannot run gitlab-ci-local");
        let wall = start.elapsed();
        GclRun {
            ok: out.status.success(),
            log: support::output_text(&out),
            wall,
        }
    }

    /// The whole pipeline, every job with the host's network.
    fn pipeline(&self) -> GclRun {
        self.run(&["--network", "host"])
    }

    /// `NAME=IMAGE` lines of the images job's dotenv report (gitlab-ci-local copies the
    /// artifacts into the checkout).
    fn dotenv(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path().join("venvimg.env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dotenv_image(&self, name: &str) -> String {
        self.dotenv()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {name}= in venvimg.env: {:?}", self.dotenv()))
    }
}

/// What a run of gitlab-ci-local printed and how long it took.
struct GclRun {
    ok: bool,
    log: String,
    wall: Duration,
}

impl GclRun {
    /// The lines of job `job` (`images`, or a child job as `[build] -> venvimg build tests`).
    fn job_lines(&self, job: &str) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| {
                l.trim_start()
                    .strip_prefix(job)
                    .is_some_and(|rest| rest.starts_with(' '))
            })
            .collect()
    }

    fn job_log(&self, job: &str) -> String {
        self.job_lines(job).join("\n")
    }

    /// The image gitlab-ci-local started job `job` in (`JOB starting IMAGE (STAGE)`).
    fn job_image(&self, job: &str) -> String {
        self.job_lines(job)
            .iter()
            .find_map(|l| {
                let rest = l.trim_start().strip_prefix(job)?.trim_start();
                let rest = rest.strip_prefix("starting ")?;
                Some(rest.split_whitespace().next()?.to_string())
            })
            .unwrap_or_else(|| panic!("{job} did not start:\n{}", self.log))
    }

    /// The names of the child pipeline's jobs that passed (`PASS  [build] -> NAME`).
    fn child_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self
            .log
            .lines()
            .filter_map(|l| l.trim().strip_prefix("PASS  [build] -> "))
            .map(|j| j.trim().to_string())
            .collect();
        jobs.sort();
        jobs
    }
}

/// The sessions venvimg said it built (`[HH:MM:SS] SESSION: building with local`) in
/// `lines`.
fn building(lines: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let (before, _) = l.split_once(": building with ")?;
            Some(before.rsplit(' ').next()?.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The run passed, printed no secret, and no job's script tripped over its own text.
#[track_caller]
fn assert_clean_pass(run: &GclRun, what: &str) {
    assert!(run.ok, "{what}: gitlab-ci-local failed:\n{}", run.log);
    // gitlab-ci-local does not carry a child job's failure to the trigger job
    // (`strategy: depend`) nor to its exit code: every job's own result counts.
    assert!(
        !run.log.lines().any(|l| l.trim_start().starts_with("FAIL ")),
        "{what}: a job failed:\n{}",
        run.log
    );
    assert!(
        !run.log.contains(REGISTRY_PASSWORD),
        "{what}: the registry password was printed:\n{}",
        run.log
    );
    assert!(
        !run.log.contains("command not found"),
        "{what}: a job script ran something it did not mean to:\n{}",
        run.log
    );
    assert!(
        !run.log.contains("pulled docker.io/"),
        "{what}: gitlab-ci-local pulled from Docker Hub:\n{}",
        run.log
    );
}

/// A session job: in its job image from the dotenv report, nox reused the prebuilt venv
/// offline (UV_OFFLINE=1, set by the example) and the session passed.
#[track_caller]
fn assert_session_job(run: &GclRun, checkout: &Checkout, job: &str) {
    let log = run.job_log(job);
    assert_eq!(
        run.job_image(job),
        checkout.dotenv_image(job),
        "{job} runs in the image the images job reported"
    );
    assert!(
        log.contains(&format!(
            "Reusing existing virtual environment at /opt/nox/{job}."
        )),
        "{job}: nox did not reuse the venv:\n{log}\n--- whole log ---\n{}",
        run.log
    );
    assert!(
        !log.contains("Creating virtual environment"),
        "{job}: nox recreated the venv:\n{log}"
    );
    assert!(
        log.contains(&format!("Session {job} was successful")),
        "{job}:\n{log}\n--- whole log ---\n{}",
        run.log
    );
}

#[test]
fn the_gitlab_example_runs_under_gitlab_ci_local_plan_child_pipeline_images_then_offline_sessions()
{
    print_substitutions();
    let started = Instant::now();
    support::need_gitlab();
    let mut cleanup = Cleanup::default();
    let base = job_base_image(&mut cleanup);
    let checkout = Checkout::new("gcl-example", &example_pipeline(&base), &base);
    cleanup.repos.push(checkout.project.repo().to_string());

    // First run: plan finds three misses; the child pipeline builds each in a job of its
    // own, in the base job image by digest; images finds them all hits and composes the
    // all-sessions image; the session jobs run in their images.
    let first = checkout.pipeline();
    assert_clean_pass(&first, "first run");
    assert!(
        first.job_log("plan").contains(&format!(
            "workdir {CI_PROJECT_DIR} (gitlab-ci-local's docker jobs work in CI_PROJECT_DIR"
        )),
        "plan takes CI_PROJECT_DIR as workdir:\n{}",
        first.job_log("plan")
    );
    assert!(
        first.log.contains("downstream pipeline is experimental"),
        "the build job ran the child pipeline:\n{}",
        first.log
    );
    let sessions = ["compat-3.11", "lint", "tests"];
    let child_jobs: Vec<String> = sessions
        .iter()
        .map(|s| format!("venvimg build {s}"))
        .collect();
    assert_eq!(first.child_jobs(), child_jobs, "{}", first.log);
    // This test's own repository@digest: the other GitLab test pushes the same image
    // (same ID) under another repository, and RepoDigests lists both in any order.
    let base_repo = base.rsplit_once(':').map(|(repo, _tag)| repo).unwrap();
    let repo_digests = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{range .RepoDigests}}{{println .}}{{end}}",
        &base,
    ]);
    let base_digest = repo_digests
        .lines()
        .find(|d| d.starts_with(&format!("{base_repo}@")))
        .unwrap_or_else(|| panic!("no digest of {base_repo} in {repo_digests}"))
        .to_string();
    for (session, job) in sessions.iter().zip(&child_jobs) {
        let job = format!("[build] -> {job}");
        assert_eq!(
            building(&first.job_lines(&job)),
            [session.to_string()],
            "{job} builds its session only:\n{}",
            first.job_log(&job)
        );
        assert_eq!(
            first.job_image(&job),
            base_digest.trim(),
            "{job} runs in the base job image, by digest"
        );
    }
    let child = std::fs::read_to_string(checkout.path().join("venvimg-child.yml")).unwrap();
    assert!(
        child.contains("VENVIMG_PASSWORD: $CI_REGISTRY_PASSWORD"),
        "repository: is on $CI_REGISTRY, so each child job logs in with its job token:\n{child}"
    );
    assert_eq!(
        building(&first.job_lines("images")),
        Vec::<String>::new(),
        "images builds nothing after the child pipeline:\n{}",
        first.job_log("images")
    );
    assert!(
        first
            .job_log("images")
            .contains("pushed the all-sessions image"),
        "{}",
        first.job_log("images")
    );
    for job in ["tests", "lint"] {
        assert_session_job(&first, &checkout, job);
    }
    assert!(
        first.job_log("tests").contains("3 passed"),
        "{}",
        first.job_log("tests")
    );
    eprintln!(
        "first run (plan, 3 child builds, images, sessions): {:.1}s",
        first.wall.as_secs_f64()
    );

    // The session jobs alone, without any network: their images come from the dotenv
    // report of the first run, nox reuses the venvs and the sessions pass.
    let offline = checkout.run(&["--network", "none", "tests", "lint"]);
    assert_clean_pass(&offline, "session jobs with --network none");
    for job in ["tests", "lint"] {
        assert_session_job(&offline, &checkout, job);
    }
    eprintln!(
        "session jobs alone, --network none: {:.1}s",
        offline.wall.as_secs_f64()
    );

    // Second run: all hits. The child pipeline is the one no-op job, nothing is built.
    let second = checkout.pipeline();
    assert_clean_pass(&second, "second run");
    assert_eq!(
        second.child_jobs(),
        ["venvimg nothing to build"],
        "{}",
        second.log
    );
    assert!(
        !second.log.contains("building with"),
        "the second run built something:\n{}",
        second.log
    );
    assert!(
        second
            .job_log("images")
            .contains("the all-sessions image is there"),
        "{}",
        second.job_log("images")
    );
    for job in ["tests", "lint"] {
        assert_session_job(&second, &checkout, job);
    }
    eprintln!("second run (all hits): {:.1}s", second.wall.as_secs_f64());

    // A uv.lock change: one child job, for the one session whose installs read it.
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        checkout.path().join("uv.lock"),
    )
    .unwrap();
    checkout.commit("uv.lock", "bump a pin");
    let third = checkout.pipeline();
    assert_clean_pass(&third, "third run (uv.lock bump)");
    assert_eq!(third.child_jobs(), ["venvimg build tests"], "{}", third.log);
    assert_eq!(building(&third.log.lines().collect::<Vec<_>>()), ["tests"]);
    for job in ["tests", "lint"] {
        assert_session_job(&third, &checkout, job);
    }
    eprintln!(
        "third run (uv.lock bump): {:.1}s; the whole test {:.1}s",
        third.wall.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The example's short layout ("With few sessions, drop the jobs `plan` and `build` and
/// the `needs:` of `images`"): images builds every miss itself, then the session jobs run.
#[test]
fn the_gitlab_example_without_plan_and_build_builds_in_the_images_job() {
    print_substitutions();
    eprintln!("  - the jobs plan and build and the needs: of images removed: the layout the example's comments describe for few sessions");
    support::need_gitlab();
    let mut cleanup = Cleanup::default();
    let base = job_base_image(&mut cleanup);
    let full = example_pipeline(&base);
    let (head, rest) = full.split_once("\nplan:\n").expect("the example has plan");
    let (_, tail) = rest
        .split_once("\nimages:\n")
        .expect("the example has images after plan and build");
    let needs = "  needs:\n    - job: build\n";
    assert!(tail.contains(needs), "images needs build");
    let short = format!("{head}\nimages:\n{}", tail.replacen(needs, "", 1));
    assert!(!short.contains("trigger:") && !short.contains("\nplan:\n"));
    let checkout = Checkout::new("gcl-short", &short, &base);
    cleanup.repos.push(checkout.project.repo().to_string());

    let first = checkout.pipeline();
    assert_clean_pass(&first, "first run");
    assert_eq!(
        building(&first.job_lines("images")),
        ["compat-3.11", "lint", "tests"],
        "{}",
        first.job_log("images")
    );
    assert!(
        first.job_log("images").contains(&format!(
            "workdir {CI_PROJECT_DIR} (gitlab-ci-local's docker jobs work in CI_PROJECT_DIR"
        )),
        "{}",
        first.job_log("images")
    );
    for job in ["tests", "lint"] {
        assert_session_job(&first, &checkout, job);
    }
    eprintln!(
        "first run (images builds 3): {:.1}s",
        first.wall.as_secs_f64()
    );

    let second = checkout.pipeline();
    assert_clean_pass(&second, "second run");
    assert!(
        !second.log.contains("building with"),
        "the second run built something:\n{}",
        second.log
    );
    for job in ["tests", "lint"] {
        assert_session_job(&second, &checkout, job);
    }
    eprintln!("second run (all hits): {:.1}s", second.wall.as_secs_f64());
}
