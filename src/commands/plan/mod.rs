//! `venvimg plan`: for each session its venv dir, key, tag and whether the registry has
//! the image. One typed report, rendered as the table, `--json` and `--ci-output`.

mod platforms;

use serde::Serialize;

use crate::config::Config;
use crate::error::Error;
use crate::model::{Key, Platform, Tag, VenvName};
use crate::plan::{InputDigest, Plan, Problem, Status};
use crate::printer::{table, Printer};
use crate::python::inputs::Discovered;
use crate::registry::Registry;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Only these sessions, as nox takes them: `-s tests lint`, repeatable; a function name
    /// stands for all its parametrizations. (NOXSESSION is not read.)
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1..)]
    pub sessions: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Append `name=value` lines with each session's image to $GITHUB_OUTPUT or
    /// $FORGEJO_OUTPUT.
    #[arg(long)]
    pub ci_output: bool,
    /// The misses as a CI matrix, one line of JSON: `{"include": [{"session", "venv",
    /// "tag", "image"}]}` for GitHub/Forgejo `strategy.matrix` (one runner per miss runs
    /// `venvimg build -s SESSION`; a last `venvimg build` then composes the all-sessions
    /// image from the pushed session images). With --ci-output, also `matrix=` there.
    #[arg(long, conflicts_with_all = ["json", "explain"])]
    pub matrix: bool,
    /// With --matrix, for GitLab: also write the misses as a child pipeline to FILE, one
    /// job per miss running `venvimg build -s SESSION` in the base image (by digest), or
    /// one no-op job when every session hits (GitLab refuses an empty pipeline). A
    /// parent's `trigger: {include: [{artifact: FILE, job: JOB}], strategy: depend}` runs
    /// it; a later `venvimg build` composes the all-sessions image.
    #[arg(long, value_name = "FILE", requires = "matrix")]
    pub gitlab_child: Option<std::path::PathBuf>,
    /// For CI: exit 2 when uv.lock does not match pyproject.toml or `sessions:` leaves
    /// out a session nox runs by default (otherwise warnings).
    #[arg(long)]
    pub strict: bool,
    /// Why SESSION hits or misses: what changed since the closest earlier image of it
    /// (with --json, as an object).
    #[arg(long, value_name = "SESSION")]
    pub explain: Option<String>,
}

/// What `plan` reports (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct PlanReport<'a> {
    /// `registry/name` the session images go to.
    pub repository: String,
    /// The base image, by digest.
    pub base: String,
    /// This machine's platform, or with `platforms:` their list (`linux/amd64,linux/arm64`).
    pub platform: String,
    pub envdir: &'a str,
    pub workdir: &'a str,
    pub sessions: Vec<SessionRow<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SessionRow<'a> {
    pub session: &'a str,
    /// With `platforms:`: the platform of this row (a matrix entry builds it with
    /// `--platform`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    pub venv_dir: &'a VenvName,
    pub key: &'a Key,
    pub tag: &'a Tag,
    /// `registry/name:tag`.
    pub image: String,
    pub status: HitOrMiss,
    /// The manifest digest of a hit.
    pub digest: Option<&'a str>,
    pub inputs: &'a [InputDigest],
    pub discovered: Option<&'a Discovered>,
    pub opaque: Option<&'a str>,
    pub floating: &'a [String],
    /// Files its build read that changed since the image at the tag was made.
    pub changed: &'a [String],
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HitOrMiss {
    Hit,
    Miss,
}

impl<'a> PlanReport<'a> {
    pub fn new(plan: &'a Plan, config: &'a Config) -> Self {
        let sessions = plan
            .sessions
            .iter()
            .map(|s| SessionRow {
                session: &s.config.name,
                platform: None,
                venv_dir: &s.venv_dir,
                key: &s.key,
                tag: &s.tag,
                image: s.image.whole(),
                status: match s.status {
                    Status::Hit { .. } => HitOrMiss::Hit,
                    Status::Miss => HitOrMiss::Miss,
                },
                digest: match &s.status {
                    Status::Hit { digest } => Some(digest.as_str()),
                    Status::Miss => None,
                },
                inputs: &s.document.inputs,
                discovered: s.document.discovered.as_ref(),
                opaque: s.document.opaque.as_deref(),
                floating: s
                    .document
                    .discovered
                    .as_ref()
                    .map(|d| d.floating.as_slice())
                    .unwrap_or_default(),
                changed: &s.changed,
                problem: s.problem.as_ref().map(|p| match p {
                    Problem::MissingInterpreter { python } => {
                        format!("the base image has no Python {python}")
                    }
                }),
            })
            .collect();
        PlanReport {
            repository: config.repository_path(),
            base: plan.base.pinned(),
            platform: config.platform.to_string(),
            envdir: &config.envdir,
            workdir: &config.workdir,
            sessions,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the plan report serialises")
    }

    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .sessions
            .iter()
            .map(|s| {
                let status = match (s.status, &s.problem) {
                    (HitOrMiss::Hit, _) => "hit".to_string(),
                    (HitOrMiss::Miss, Some(problem)) => format!("miss ({problem})"),
                    (HitOrMiss::Miss, None) if !s.changed.is_empty() => {
                        format!("miss ({})", s.changed.join(", "))
                    }
                    (HitOrMiss::Miss, None) => "miss".into(),
                };
                vec![
                    s.session.to_string(),
                    s.venv_dir.to_string(),
                    s.tag.to_string(),
                    status,
                ]
            })
            .collect();
        table(&["SESSION", "VENV", "TAG", "STATUS"], &rows)
    }

    /// `{"include": [...]}`: one entry per miss.
    pub fn matrix(&self) -> String {
        let include: Vec<serde_json::Value> = self
            .sessions
            .iter()
            .filter(|s| s.status == HitOrMiss::Miss)
            .map(|s| {
                let mut entry = serde_json::json!({
                    "session": s.session,
                    "venv": crate::commands::report::ci_output_name(s.venv_dir.as_str()),
                    "tag": s.tag,
                    "image": s.image,
                });
                if let Some(p) = &s.platform {
                    entry["platform"] = serde_json::json!(p);
                }
                entry
            })
            .collect();
        serde_json::json!({ "include": include }).to_string()
    }

    /// The GitLab child pipeline of `--gitlab-child`: one job per miss, each building its
    /// session in the base image (a `builder: local` config builds there; a podman one
    /// needs a runner that ignores `image:`, like the shell executor). `config_arg` is
    /// the `--config` the jobs pass, when the file is not ./venvimg.yaml.
    /// `gitlab_registry`: the images go to the project's GitLab registry ($CI_REGISTRY),
    /// so each job logs in with its own job token (VENVIMG_USERNAME/PASSWORD from
    /// $CI_REGISTRY_USER/PASSWORD; project CI/CD variables still win over these).
    pub fn gitlab_child(&self, config_arg: Option<&str>, gitlab_registry: bool) -> String {
        use serde_yaml::{Mapping, Value};
        let mut doc = Mapping::new();
        doc.insert("stages".into(), Value::Sequence(vec!["build".into()]));
        let misses: Vec<&SessionRow> = self
            .sessions
            .iter()
            .filter(|s| s.status == HitOrMiss::Miss)
            .collect();
        let config = config_arg
            .map(|c| format!(" --config {}", shell_word(c)))
            .unwrap_or_default();
        for s in &misses {
            let mut job = Mapping::new();
            job.insert("stage".into(), "build".into());
            job.insert("image".into(), self.base.clone().into());
            if gitlab_registry {
                let mut vars = Mapping::new();
                vars.insert("VENVIMG_USERNAME".into(), "$CI_REGISTRY_USER".into());
                vars.insert("VENVIMG_PASSWORD".into(), "$CI_REGISTRY_PASSWORD".into());
                job.insert("variables".into(), Value::Mapping(vars));
            }
            let platform = s
                .platform
                .as_ref()
                .map(|p| format!(" --platform {}", shell_word(&p.to_string())))
                .unwrap_or_default();
            job.insert(
                "script".into(),
                Value::Sequence(vec![format!(
                    "venvimg{config} build --session {}{platform}",
                    shell_word(s.session)
                )
                .into()]),
            );
            doc.insert(
                format!("venvimg build {}{platform}", s.session).into(),
                Value::Mapping(job),
            );
        }
        if misses.is_empty() {
            let mut job = Mapping::new();
            job.insert("stage".into(), "build".into());
            let mut vars = Mapping::new();
            vars.insert("GIT_STRATEGY".into(), "none".into());
            job.insert("variables".into(), Value::Mapping(vars));
            job.insert(
                "script".into(),
                Value::Sequence(vec![
                    "echo 'venvimg: every session has its job image; nothing to build'".into(),
                ]),
            );
            doc.insert("venvimg nothing to build".into(), Value::Mapping(job));
        }
        let body = serde_yaml::to_string(&Value::Mapping(doc)).expect("the pipeline serialises");
        format!(
            "# GitLab child pipeline written by `venvimg plan --matrix --gitlab-child`: {} for {}\n# (base {}).\n{body}",
            match misses.len() {
                0 => "no session to build".to_string(),
                1 => "one session to build".to_string(),
                n => format!("{n} sessions to build, one job each"),
            },
            self.repository,
            self.base,
        )
    }

    /// `(venv dir, image)` for `--ci-output`.
    pub fn ci_outputs(&self) -> Vec<(String, String)> {
        self.sessions
            .iter()
            .map(|s| (s.venv_dir.to_string(), s.image.clone()))
            .collect()
    }
}

pub async fn plan(
    config: &Config,
    registry: &Registry,
    args: &PlanArgs,
    printer: &Printer,
) -> Result<(), Error> {
    if args.ci_output {
        crate::commands::report::ci_output_file()?;
    }
    // `--explain S -s T`: S is planned too.
    let mut only = args.sessions.clone();
    if let Some(s) = &args.explain {
        if !only.is_empty() && !only.contains(s) {
            only.push(s.clone());
        }
    }
    if config.multi_platform() && args.explain.is_none() {
        return platforms::plan(config, registry, args, &only, printer).await;
    }
    // `--explain` with `platforms:` explains this machine's platform.
    let config = &config.for_platform(&config.platform);
    let config = &*crate::commands::plannable_here(config, printer);
    let plan = crate::plan::make_plan(config, registry, &only).await?;
    crate::plan::findings::flush_warnings(registry, printer);
    if let Some(session) = &args.explain {
        let why = crate::plan::explain::explain(config, registry, &plan, session).await?;
        if args.json {
            printer.out(serde_json::to_string_pretty(&why).expect("the explanation serialises"));
        } else {
            printer.out(why.text().trim_end());
        }
        return Ok(());
    }
    crate::plan::findings::report_plan_findings(&plan, printer);
    crate::plan::findings::check_project(config, &plan, &args.sessions, args.strict, printer)?;
    let report = PlanReport::new(&plan, config);
    if args.matrix {
        printer.out(report.matrix());
    } else if args.json {
        printer.out(report.json());
    } else {
        printer.info(format!("base {}", report.base));
        printer.out(report.table());
    }
    write_outputs(config, args, &report, &report.ci_outputs(), printer)
}

/// `--gitlab-child FILE` (the misses of `report`) and `--ci-output` (`outputs`, and the
/// matrix with `--matrix`).
pub(super) fn write_outputs(
    config: &Config,
    args: &PlanArgs,
    report: &PlanReport,
    outputs: &[(String, String)],
    printer: &Printer,
) -> Result<(), Error> {
    if let Some(file) = &args.gitlab_child {
        write_gitlab_child(config, report, file, printer)?;
    }
    if args.ci_output {
        let mut lines = outputs.to_vec();
        if args.matrix {
            lines.push(("matrix".into(), report.matrix()));
        }
        crate::commands::report::write_ci_output(&lines, printer)?;
    }
    Ok(())
}

/// `--gitlab-child FILE`: the child pipeline of `report`'s misses.
fn write_gitlab_child(
    config: &Config,
    report: &PlanReport,
    file: &std::path::Path,
    printer: &Printer,
) -> Result<(), Error> {
    let config_arg = (config.file.file_name()
        != Some(std::ffi::OsStr::new(crate::config::DEFAULT_CONFIG_FILE))
        || !is_current_dir(config.file.parent()))
    .then(|| config.file.to_string_lossy().into_owned());
    let registry = config.repository.resolve_registry();
    let gitlab_registry = std::env::var("CI_REGISTRY").is_ok_and(|r| r == registry);
    let text = report.gitlab_child(config_arg.as_deref(), gitlab_registry);
    fs_err::write(file, text).map_err(|source| Error::Io {
        path: file.to_path_buf(),
        source,
    })?;
    printer.verbose(format!(
        "wrote the GitLab child pipeline {}",
        file.display()
    ));
    Ok(())
}

/// Whether `dir` (a config file's folder: empty for a bare file name) is the working one.
fn is_current_dir(dir: Option<&std::path::Path>) -> bool {
    match dir {
        None => true,
        Some(d) if d.as_os_str().is_empty() => true,
        Some(d) => match (fs_err::canonicalize(d), std::env::current_dir()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    }
}

/// `word` as one POSIX shell word: as is when it is safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,/:=@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn shell_words_survive_sh() {
        for word in ["tests-3.12", "tests(django='4.2')", "a b", "", "it's"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_word(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
        assert_eq!(shell_word("tests-3.12"), "tests-3.12");
    }
}
