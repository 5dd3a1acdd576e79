//! `venvimg restore`: each session's venv from its image straight into the envdir, with
//! no container engine — for jobs that run in the base image (or on a host runner) and
//! only need the venvs where nox looks for them.

use std::path::PathBuf;
use std::time::Instant;

use oci_client::Reference;
use serde::Serialize;

use super::BuilderArgs;
use crate::builder::{self, BuildOptions};
use crate::config::Config;
use crate::error::{Error, RestoreError};
use crate::plan::Plan;
use crate::printer::{human_bytes, table, Printer};
use crate::registry::Registry;
use crate::restore::{RestoreOptions, Restored, Source};

#[derive(Debug, Default, clap::Args)]
pub struct RestoreArgs {
    /// Only these sessions, as nox takes them (default: every session of the config).
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1..)]
    pub sessions: Vec<String>,
    /// Replace a venv of another key, or a folder venvimg did not restore.
    #[arg(long)]
    pub force: bool,
    /// Build (and push) a session whose image is missing, then restore it (default: exit 1
    /// saying to build it).
    #[arg(long)]
    pub build: bool,
    /// Write under DIR instead of `/`: the venv goes to DIR/ENVDIR/VENV (to look at one
    /// without touching the real envdir).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// How many layers are fetched and written at once (default: two per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub layers: Option<u16>,
    /// With --build: how the builds run.
    #[command(flatten)]
    pub builder: BuilderArgs,
    /// Restore from this image (a session's, or the all-sessions image; by tag or
    /// digest) instead of planning: no dry run of the noxfile, for a job handed the image
    /// by an earlier one. Its venvs must be for the config's envdir.
    #[arg(long, value_name = "IMAGE", conflicts_with = "build")]
    pub image: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct RestoreReport<'a> {
    sessions: &'a [Restored],
    seconds: f64,
}

pub async fn restore(
    config: &Config,
    registry: &Registry,
    args: &RestoreArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let started = Instant::now();
    let opts = RestoreOptions {
        jobs: args.layers.map_or(0, usize::from),
        force: args.force,
        root: args.root.clone(),
    };
    let sources = match &args.image {
        Some(image) => {
            let reference = image.parse::<Reference>().map_err(|e| {
                Error::Usage(crate::error::UsageError::Flag {
                    flag: "--image",
                    value: Some(image.clone()),
                    why: format!("not an image reference ({e}); give REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"),
                })
            })?;
            Source::of_image(registry, &reference, &config.envdir, &args.sessions).await?
        }
        None => planned_sources(config, registry, args, printer).await?,
    };
    let mut done = Vec::new();
    for src in &sources {
        done.push(crate::restore::restore(registry, src, &opts, printer).await?);
    }
    let report = RestoreReport {
        sessions: &done,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        printer.out(serde_json::to_string_pretty(&report).expect("the restore report serialises"));
    } else {
        let rows: Vec<Vec<String>> = done
            .iter()
            .map(|r| {
                vec![
                    r.session.clone(),
                    r.outcome.to_string(),
                    r.layers.to_string(),
                    human_bytes(r.fetched),
                    format!("{:.1}s", r.seconds),
                    r.path.display().to_string(),
                ]
            })
            .collect();
        printer.out(table(
            &["SESSION", "RESULT", "LAYERS", "FETCHED", "TIME", "VENV"],
            &rows,
        ));
        printer.info(format!("done in {:.1}s", report.seconds));
    }
    Ok(())
}

/// What the plan finds for the sessions asked (misses built first with --build).
async fn planned_sources(
    config: &Config,
    registry: &Registry,
    args: &RestoreArgs,
    printer: &Printer,
) -> Result<Vec<Source>, Error> {
    let config = &*super::plannable_here(config, printer);
    let mut plan = planned(config, registry, &args.sessions, printer).await?;
    let miss = |plan: &Plan| {
        plan.misses().next().map(|s| RestoreError::Miss {
            session: s.config.name.clone(),
            image: s.image.whole(),
        })
    };
    if let Some(e) = miss(&plan) {
        if !args.build {
            return Err(e.into());
        }
        let misses: Vec<String> = plan.misses().map(|s| s.config.name.clone()).collect();
        printer.info(format!("building first: {}", misses.join(", ")));
        let options = args.builder.apply(BuildOptions {
            sessions: misses,
            ..BuildOptions::default()
        });
        let started = Instant::now();
        let built = builder::build(config, registry, &options, printer).await?;
        // As `run` shows what it built first; `--json` keeps stdout for the restore's own
        // report.
        if !args.json {
            super::report::BuildReport::of(&built, started, true, registry)
                .render(false, false, printer)?;
        }
        built.exit()?;
        plan = planned(config, registry, &args.sessions, printer).await?;
        if let Some(e) = miss(&plan) {
            return Err(e.into());
        }
    }
    plan.sessions
        .iter()
        .map(|s| Source::of_plan(config, &plan, s))
        .collect()
}

async fn planned(
    config: &Config,
    registry: &Registry,
    sessions: &[String],
    printer: &Printer,
) -> Result<Plan, Error> {
    let plan = crate::plan::make_plan(config, registry, sessions).await?;
    crate::plan::findings::flush_warnings(registry, printer);
    crate::plan::findings::report_plan_findings(&plan, printer);
    Ok(plan)
}
