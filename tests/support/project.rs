//! A fixture project for the end-to-end tests: a fresh copy of `tests/fixtures/<name>`, a
//! venvimg.yaml pointing at a fresh repository on the test base, and `venvimg` run in it.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support;

/// Write `venvimg.yaml` in `dir`: `repository: REPO`, `base:` the test base image, then
/// `extra` (whole YAML lines).
pub fn write_config(dir: &Path, repo: &str, extra: &str) {
    std::fs::write(
        dir.join("venvimg.yaml"),
        format!(
            "repository: {repo}\nbase: {}\n{extra}",
            support::testenv().base
        ),
    )
    .unwrap();
}

/// A copy of a fixture (or an unpacked project) in a temporary directory, with the
/// repository its images go to.
pub struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: String,
}

impl Project {
    /// A fresh copy of `tests/fixtures/<name>`, images going to a fresh repository named
    /// after the fixture. No venvimg.yaml is written until [`Project::config`].
    pub fn fixture(name: &str) -> Self {
        let tmp = support::copy_fixture(name);
        let dir = tmp.path().to_path_buf();
        Project {
            _tmp: tmp,
            dir,
            repo: support::unique_repo(name),
        }
    }

    /// The project in `tmp`'s subfolder `sub` (e.g. an unpacked sdist), images going to a
    /// fresh repository named after `sub`.
    pub fn at(tmp: tempfile::TempDir, sub: &str) -> Self {
        let dir = tmp.path().join(sub);
        Project {
            _tmp: tmp,
            dir,
            repo: support::unique_repo(sub),
        }
    }

    /// Images go to a fresh repository `support::unique_repo(prefix)` instead.
    pub fn unique_repo(mut self, prefix: &str) -> Self {
        self.repo = support::unique_repo(prefix);
        self
    }

    /// Images go to exactly `repository` (`HOST:PORT/name`) instead.
    pub fn repository(mut self, repository: &str) -> Self {
        self.repo = repository.to_string();
        self
    }

    /// Write venvimg.yaml (see [`write_config`]) and hand the project back.
    pub fn config(self, extra: &str) -> Self {
        self.write_config(extra);
        self
    }

    /// Write venvimg.yaml again: this repository, the test base, then `extra`.
    pub fn write_config(&self, extra: &str) {
        write_config(&self.dir, &self.repo, extra);
    }

    /// Write `text` as venvimg.yaml, as is.
    pub fn write_config_raw(&self, text: &str) {
        std::fs::write(self.dir.join("venvimg.yaml"), text).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// `venvimg` in the project directory, with the test environment's variables.
    pub fn venvimg(&self) -> assert_cmd::Command {
        let mut cmd = support::venvimg();
        cmd.current_dir(&self.dir);
        cmd
    }

    /// `venvimg ARGS` in the project; whatever it did.
    pub fn run(&self, args: &[&str]) -> Output {
        self.venvimg().args(args).output().unwrap()
    }

    /// `venvimg ARGS` in the project: its exit code and stdout followed by stderr.
    pub fn outcome(&self, args: &[&str]) -> (Option<i32>, String) {
        self.outcome_with(args, &[])
    }

    /// [`Project::outcome`] with `extra` variables in venvimg's environment.
    pub fn outcome_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String) {
        let out = self
            .venvimg()
            .args(args)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), support::output_text(&out))
    }

    /// `venvimg plan --json -q`, which must succeed; the plan, parsed.
    pub fn plan(&self) -> Value {
        json_ok(&self.run(&["plan", "--json", "-q"]), "plan")
    }

    /// `venvimg build --json --build-ca CA ARGS`; whatever it did.
    pub fn build_output(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "build",
            "--json",
            "--build-ca",
            support::testenv().ca_file(),
        ];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// [`Project::build_output`], which must succeed; the summary, parsed.
    pub fn build(&self, args: &[&str]) -> Value {
        json_ok(&self.build_output(args), "venvimg build")
    }

    /// [`support::assert_runs_offline`] with this project as the checkout.
    #[track_caller]
    pub fn assert_runs_offline(&self, image: &str, session: &str) {
        support::assert_runs_offline(image, &self.dir, session);
    }
}

/// `out` must be a success; its stdout, parsed as JSON.
#[track_caller]
pub fn json_ok(out: &Output, what: &str) -> Value {
    let stdout = support::stdout_ok(out, what);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{stdout}"))
}

/// The entry of session `name` in a plan or build summary (`sessions[].session`).
#[track_caller]
pub fn session<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == name)
        .unwrap_or_else(|| panic!("no session {name} in {doc}"))
}

/// The `image` of session `name` in a plan or build summary.
#[track_caller]
pub fn image_of(doc: &Value, name: &str) -> String {
    session(doc, name)["image"].as_str().unwrap().to_string()
}

/// `(session, FIELD)` of every session of a plan or build summary, in order.
pub fn by_session(doc: &Value, field: &str) -> Vec<(String, String)> {
    doc["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["session"].as_str().unwrap().to_string(),
                s[field].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
