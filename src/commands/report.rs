//! What the commands share besides their own tables: the build report (`build` and `run`
//! print it), outputs for later CI jobs. The only module one command may import from
//! another (see the import-order test in lib.rs).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::builder::{BuildResult, SessionResult};
use crate::model::Digest;
use crate::printer::{human_bytes, table};
use crate::registry::push;

use crate::error::Error;
use crate::plan::Plan;
use crate::printer::Printer;
use crate::registry::Registry;

/// Append `name=value` lines for a later CI job (`${{ needs.JOB.outputs.NAME }}`). Names
/// are the venv directory names with `-` → `_`, which both GitHub and Forgejo accept.
pub fn write_ci_output(refs: &[(String, String)], printer: &Printer) -> Result<(), Error> {
    let path = ci_output_file()?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    let mut text = String::new();
    for (name, value) in refs {
        text.push_str(&format!("{}={}\n", ci_output_name(name), value));
    }
    f.write_all(text.as_bytes()).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    printer.verbose(format!(
        "wrote {} outputs to {}",
        refs.len(),
        path.display()
    ));
    Ok(())
}

/// Where `--ci-output` appends: $GITHUB_OUTPUT, else $FORGEJO_OUTPUT. Commands ask before
/// any work, so a step without it fails at once, not after the build.
pub fn ci_output_file() -> Result<PathBuf, Error> {
    std::env::var_os("GITHUB_OUTPUT")
        .or_else(|| std::env::var_os("FORGEJO_OUTPUT"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::Usage(crate::error::UsageError::Flag {
                flag: "--ci-output",
                value: None,
                why: "neither GITHUB_OUTPUT nor FORGEJO_OUTPUT is set; run it inside a workflow step or set one to a file".into(),
            })
        })
}

pub fn ci_output_name(venv_dir: &str) -> String {
    venv_dir.replace('-', "_")
}

/// What `build` reports (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct BuildReport<'a> {
    pub sessions: &'a [SessionResult],
    /// The all-sessions image; none when a session failed or `--session` picked some
    /// (a pick's combined image, `sessions-…`, goes only to --output/--load).
    pub all: Option<AllImage<'a>>,
    pub seconds: f64,
    /// false with --no-push: the references name where the images would go.
    pub pushed: bool,
    /// What the push moved: the measure of what a dependency bump costs.
    pub push: push::StatsSnapshot,
}

#[derive(Debug, Serialize)]
pub struct AllImage<'a> {
    /// `registry/name:tag`.
    pub image: String,
    pub digest: &'a Digest,
    /// The sessions whose venvs it holds: every session of the config.
    pub sessions: Vec<&'a str>,
}

impl<'a> AllImage<'a> {
    /// The all-sessions image of `plan`'s sessions.
    fn of(plan: &'a Plan, image: String, digest: &'a Digest) -> AllImage<'a> {
        AllImage {
            image,
            digest,
            sessions: plan
                .sessions
                .iter()
                .map(|s| s.config.name.as_str())
                .collect(),
        }
    }
}

impl<'a> BuildReport<'a> {
    /// The report of `built`, `started` when the command did.
    pub fn of(
        built: &'a BuildResult,
        started: Instant,
        pushed: bool,
        registry: &Registry,
    ) -> BuildReport<'a> {
        BuildReport {
            sessions: &built.results,
            all: built
                .all
                .as_ref()
                .map(|(image, digest)| AllImage::of(&built.plan, image.clone(), digest)),
            seconds: started.elapsed().as_secs_f64(),
            pushed,
            push: registry.stats.snapshot(),
        }
    }

    /// Out as asked — the table (and a summary line) or JSON — and the CI outputs.
    pub fn render(&self, json: bool, ci_output: bool, printer: &Printer) -> Result<(), Error> {
        if json {
            printer.out(self.json());
        } else {
            printer.out(self.table());
            printer.info(self.summary_line());
        }
        if ci_output {
            write_ci_output(&self.ci_outputs(self.pushed), printer)?;
        }
        Ok(())
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the build report serialises")
    }

    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .sessions
            .iter()
            .map(|r| {
                vec![
                    r.session.clone(),
                    r.outcome.to_string(),
                    r.layer_size.map(human_bytes).unwrap_or_default(),
                    format!("{:.1}s", r.seconds),
                    match &r.digest {
                        Some(d) => format!("{}@{d}", r.image),
                        None => r.image.clone(),
                    },
                ]
            })
            .collect();
        table(&["SESSION", "RESULT", "LAYER", "TIME", "IMAGE"], &rows)
    }

    pub fn summary_line(&self) -> String {
        match &self.all {
            Some(all) => format!(
                "all sessions: {}@{}{} · done in {:.1}s",
                all.image,
                all.digest,
                if self.pushed {
                    ""
                } else {
                    " (not pushed: --no-push)"
                },
                self.seconds
            ),
            None => format!("done in {:.1}s", self.seconds),
        }
    }

    /// `(venv dir, image)` for `--ci-output`, each session by digest when `pushed`, and
    /// `all`.
    pub fn ci_outputs(&self, pushed: bool) -> Vec<(String, String)> {
        let mut refs: Vec<(String, String)> = self
            .sessions
            .iter()
            .filter(|r| r.digest.is_some())
            .map(|r| {
                let reference = match &r.digest {
                    Some(d) if pushed => format!("{}@{}", r.image, d),
                    _ => r.image.clone(),
                };
                (r.venv_dir.to_string(), reference)
            })
            .collect();
        if let Some(all) = &self.all {
            let reference = if pushed {
                format!("{}@{}", all.image, all.digest)
            } else {
                all.image.clone()
            };
            refs.push(("all".into(), reference));
        }
        refs
    }
}
