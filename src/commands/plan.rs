//! `venvimg plan`: for each session its venv dir, key, tag and whether the registry has
//! the image. One typed report, rendered as the table, `--json` and `--ci-output`.

use serde::Serialize;

use crate::config::Config;
use crate::error::Error;
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
    pub platform: String,
    pub envdir: &'a str,
    pub workdir: &'a str,
    pub sessions: Vec<SessionRow<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SessionRow<'a> {
    pub session: &'a str,
    pub venv_dir: &'a str,
    pub key: &'a str,
    pub tag: &'a str,
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
                serde_json::json!({
                    "session": s.session,
                    "venv": super::report::ci_output_name(s.venv_dir),
                    "tag": s.tag,
                    "image": s.image,
                })
            })
            .collect();
        serde_json::json!({ "include": include }).to_string()
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
        super::report::ci_output_file()?;
    }
    // `--explain S -s T`: S is planned too.
    let mut only = args.sessions.clone();
    if let Some(s) = &args.explain {
        if !only.is_empty() && !only.contains(s) {
            only.push(s.clone());
        }
    }
    let plan = crate::plan::make_plan(config, registry, &only).await?;
    super::report::flush_warnings(registry, printer);
    if let Some(session) = &args.explain {
        let why = crate::plan::explain::explain(config, registry, &plan, session).await?;
        if args.json {
            printer.out(serde_json::to_string_pretty(&why).expect("the explanation serialises"));
        } else {
            printer.out(why.text().trim_end());
        }
        return Ok(());
    }
    super::report::report_plan_findings(&plan, printer);
    super::report::check_project(config, &plan, &args.sessions, args.strict, printer)?;
    let report = PlanReport::new(&plan, config);
    if args.matrix {
        printer.out(report.matrix());
    } else if args.json {
        printer.out(report.json());
    } else {
        printer.info(format!("base {}", report.base));
        printer.out(report.table());
    }
    if args.ci_output {
        let mut lines = report.ci_outputs();
        if args.matrix {
            lines.push(("matrix".into(), report.matrix()));
        }
        super::report::write_ci_output(&lines, printer)?;
    }
    Ok(())
}
