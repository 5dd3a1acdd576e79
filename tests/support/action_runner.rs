//! Runs a composite action's steps the way an Actions runner does, for the tests of
//! `.forgejo/actions/venvimg/action.yml`: each `run:` in `bash --noprofile --norc -eo
//! pipefail` (the runner's `shell: bash`), its `env:` evaluated first, a fresh
//! `$GITHUB_OUTPUT` file per step whose `name=value` (and `name<<DELIM`) lines become
//! `steps.ID.outputs`, `$GITHUB_PATH` lines put in front of PATH for the later steps, and
//! the action's `outputs:` evaluated at the end.
//!
//! Expressions: only the forms the action uses (`inputs.X`, `steps.ID.outputs.X`,
//! `github.action_repository`, `github.server_url`); any other one fails the test, so
//! a new expression in action.yml is never silently read as empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::Value;

pub struct ActionRun {
    /// `steps.ID.outputs` of every step that ran.
    pub steps: BTreeMap<String, BTreeMap<String, String>>,
    /// The action's `outputs:`, evaluated.
    pub outputs: BTreeMap<String, String>,
    /// What the steps printed (stdout and stderr).
    pub log: String,
    /// The step that failed (its id or name) and its exit code.
    pub failed: Option<(String, Option<i32>)>,
    /// Folders the steps added to PATH.
    pub path_added: Vec<String>,
}

pub struct Runner<'a> {
    pub action: &'a Value,
    pub inputs: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub envs: Vec<(String, String)>,
    /// RUNNER_TEMP: the runner's per-job temporary folder.
    pub temp: PathBuf,
    /// Run only the steps with these ids (all when empty).
    pub only: Vec<String>,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

impl Runner<'_> {
    fn input(&self, name: &str) -> String {
        let declared = &self.action["inputs"][name];
        assert!(
            declared.is_mapping(),
            "action.yml uses inputs.{name}, which it does not declare"
        );
        if let Some(v) = self.inputs.get(name) {
            return v.clone();
        }
        s(&declared["default"])
    }

    fn eval(&self, text: &str, steps: &BTreeMap<String, BTreeMap<String, String>>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 3..];
            let end = after
                .find("}}")
                .unwrap_or_else(|| panic!("unclosed expression in {text:?}"));
            let expr = after[..end].trim();
            // `A || 'literal'`: the literal when A is empty, as a runner's `||` does.
            let (expr, fallback) = match expr.split_once("||") {
                Some((a, lit)) => {
                    let lit = lit.trim();
                    let lit = lit
                        .strip_prefix('\'')
                        .and_then(|l| l.strip_suffix('\''))
                        .unwrap_or_else(|| panic!("`||` with a non-literal in {text:?}"));
                    (a.trim(), Some(lit))
                }
                None => (expr, None),
            };
            let parts: Vec<&str> = expr.split('.').collect();
            let value = match parts.as_slice() {
                ["inputs", name] => self.input(name),
                ["steps", id, "outputs", name] => steps
                    .get(*id)
                    .and_then(|o| o.get(*name))
                    .cloned()
                    .unwrap_or_default(),
                // Used by path (`uses: ./...`), as in these tests, a runner leaves it empty.
                ["github", "action_repository"] => String::new(),
                // Never contacted: the tests give `release-url`.
                ["github", "server_url"] => "https://forge.invalid".into(),
                _ => panic!("the test runner does not know the expression `{expr}` (in {text:?}); teach it, do not guess"),
            };
            match fallback {
                Some(lit) if value.is_empty() => out.push_str(lit),
                _ => out.push_str(&value),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    }

    pub fn run(&self) -> ActionRun {
        let steps = self.action["runs"]["steps"]
            .as_sequence()
            .expect("action.yml: runs.steps");
        let path_file = self.temp.join("github_path");
        std::fs::write(&path_file, "").unwrap();
        let mut done = ActionRun {
            steps: BTreeMap::new(),
            outputs: BTreeMap::new(),
            log: String::new(),
            failed: None,
            path_added: Vec::new(),
        };
        for (n, step) in steps.iter().enumerate() {
            let id = s(&step["id"]);
            if !self.only.is_empty() && !self.only.contains(&id) {
                continue;
            }
            assert_eq!(s(&step["shell"]), "bash", "step {n}: shell: bash");
            let script = s(&step["run"]);
            let file = self.temp.join(format!("step-{n}.sh"));
            std::fs::write(&file, &script).unwrap();
            let output_file = self.temp.join(format!("output-{n}"));
            std::fs::write(&output_file, "").unwrap();
            let mut path = done.path_added.iter().rev().cloned().collect::<Vec<_>>();
            path.push(std::env::var("PATH").unwrap_or_default());
            let mut cmd = Command::new("bash");
            for var in super::CI_MARKERS {
                cmd.env_remove(var);
            }
            cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
                .arg(&file)
                .current_dir(&self.cwd)
                .stdin(Stdio::null())
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .env("PATH", path.join(":"))
                .env("GITHUB_OUTPUT", &output_file)
                .env("GITHUB_PATH", &path_file)
                .env("RUNNER_TEMP", &self.temp)
                .env("GITHUB_ACTIONS", "true")
                .env("CI", "true");
            if let Some(env) = step["env"].as_mapping() {
                for (k, v) in env {
                    cmd.env(s(k), self.eval(&s(v), &done.steps));
                }
            }
            let out = cmd.output().expect("cannot run bash");
            done.log.push_str(&format!(
                "--- step {} ---\n{}{}",
                if id.is_empty() {
                    s(&step["name"])
                } else {
                    id.clone()
                },
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            done.steps.insert(id.clone(), parse_outputs(&output_file));
            done.path_added = std::fs::read_to_string(&path_file)
                .unwrap()
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if !out.status.success() {
                done.failed = Some((id, out.status.code()));
                break;
            }
        }
        // A runner evaluates the action's outputs after a failed step too (a job's
        // `outputs:` then read them).
        if let Some(outputs) = self.action["outputs"].as_mapping() {
            for (k, v) in outputs {
                let value = self.eval(&s(&v["value"]), &done.steps);
                done.outputs.insert(s(k), value);
            }
        }
        done
    }
}

/// `name=value` and `name<<DELIM ... DELIM` lines, as the runner reads $GITHUB_OUTPUT.
pub fn parse_outputs(file: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delim)) = line.split_once("<<") {
            if !name.contains('=') {
                let mut value = Vec::new();
                for l in lines.by_ref() {
                    if l == delim {
                        break;
                    }
                    value.push(l);
                }
                out.insert(name.to_string(), value.join("\n"));
                continue;
            }
        }
        if let Some((name, value)) = line.split_once('=') {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}

/// A plain HTTP file server on 127.0.0.1 for `dir` (a release's download folder), one
/// request per connection; it lives as long as the test process. Returns `http://HOST:PORT`.
pub fn serve_dir(dir: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The headers, up to the empty line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let name = path.trim_start_matches('/');
            let file = (!name.contains("..")).then(|| dir.join(name));
            let reply = match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&reply);
        }
    });
    format!("http://{addr}")
}
