//! `venvimg plan` with `platforms:`: each platform's plan, and each session's image index
//! (see the builder's `platforms` for how indexes are written).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{HitOrMiss, PlanArgs, PlanReport};
use crate::config::Config;
use crate::error::Error;
use crate::model::{Digest, Tag, VenvName};
use crate::plan::{index_tag, Status};
use crate::printer::Printer;
use crate::registry::{at_tag, Registry};

/// A session's index in `plan`: a hit when every platform's image and the index are in
/// the registry.
#[derive(Debug, Serialize)]
struct IndexRow {
    session: String,
    venv_dir: VenvName,
    tag: Tag,
    image: String,
    status: HitOrMiss,
    digest: Option<Digest>,
    /// Each platform's image: hit or miss.
    platforms: BTreeMap<String, HitOrMiss>,
}

#[derive(Debug, Serialize)]
struct MultiPlanReport<'a> {
    repository: String,
    /// Each platform's plan, as `plan` reports one.
    platforms: Vec<PlanReport<'a>>,
    /// Each session's index.
    sessions: Vec<IndexRow>,
}

/// `venvimg plan` with more than one platform: each platform's plan, and each session's
/// index. `--matrix` has an entry per platform and session that misses.
pub(super) async fn plan(
    config: &Config,
    registry: &Registry,
    args: &PlanArgs,
    only: &[String],
    printer: &Printer,
) -> Result<(), Error> {
    let configs: Vec<Config> = config
        .platforms
        .iter()
        .map(|p| config.for_platform(p))
        .collect();
    let mut plans = Vec::new();
    for one in &configs {
        let one = crate::commands::plannable_here(one, printer);
        plans.push(crate::plan::make_plan(&one, registry, only).await?);
    }
    crate::plan::findings::flush_warnings(registry, printer);
    let lead = config
        .platforms
        .iter()
        .position(|p| *p == config.platform)
        .unwrap_or(0);
    for plan in &plans {
        crate::plan::findings::report_plan_findings(plan, printer);
    }
    crate::plan::findings::check_project(
        config,
        &plans[lead],
        &args.sessions,
        args.strict,
        printer,
    )?;
    let reports: Vec<PlanReport> = plans
        .iter()
        .zip(&configs)
        .map(|(plan, one)| PlanReport::new(plan, one))
        .collect();

    let rows = index_rows(config, registry, &plans, lead).await?;

    // Every platform's rows in one report: what --matrix and --gitlab-child list. Its
    // jobs start from the base as configured, so each runner pulls its own platform.
    let mut flat = PlanReport::new(&plans[lead], &configs[lead]);
    flat.base = config.base.whole();
    flat.platform = config
        .platforms
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    flat.sessions = plans
        .iter()
        .zip(&configs)
        .flat_map(|(plan, one)| {
            PlanReport::new(plan, one)
                .sessions
                .into_iter()
                .map(move |mut row| {
                    row.platform = Some(one.platform.clone());
                    row
                })
        })
        .collect();

    let outputs: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.venv_dir.to_string(), r.image.clone()))
        .collect();
    if args.matrix {
        printer.out(flat.matrix());
    } else if args.json {
        let report = MultiPlanReport {
            repository: config.repository_path(),
            platforms: reports,
            sessions: rows,
        };
        printer.out(serde_json::to_string_pretty(&report).expect("the plan report serialises"));
    } else {
        for r in &reports {
            printer.info(format!("platform {} · base {}", r.platform, r.base));
            printer.out(r.table());
        }
        let table_rows = index_table(&rows);
        printer.info("each session's image index (what jobs pull):");
        printer.out(crate::printer::table(
            &["SESSION", "INDEX TAG", "STATUS"],
            &table_rows,
        ));
    }
    super::write_outputs(config, args, &flat, &outputs, printer)
}

/// Each session's index row: every platform's hit or miss, and the index's digest when
/// every platform hits and the index is there.
async fn index_rows(
    config: &Config,
    registry: &Registry,
    plans: &[crate::plan::Plan],
    lead: usize,
) -> Result<Vec<IndexRow>, Error> {
    let mut rows = Vec::new();
    for s in &plans[lead].sessions {
        let mut keys = Vec::new();
        let mut statuses = BTreeMap::new();
        for (plan, p) in plans.iter().zip(&config.platforms) {
            let found = plan
                .sessions
                .iter()
                .find(|x| x.config.name == s.config.name);
            if let Some(x) = found {
                keys.push((p.clone(), x.key.clone()));
            }
            let hit = found.is_some_and(|x| matches!(x.status, Status::Hit { .. }));
            statuses.insert(
                p.to_string(),
                if hit { HitOrMiss::Hit } else { HitOrMiss::Miss },
            );
        }
        let tag = index_tag(&s.venv_dir, &keys);
        let image = at_tag(&config.repository, &tag);
        let digest = if statuses.values().all(|h| *h == HitOrMiss::Hit) {
            registry.manifest_digest(&image).await?
        } else {
            None
        };
        rows.push(IndexRow {
            session: s.config.name.clone(),
            venv_dir: s.venv_dir.clone(),
            tag,
            image: image.whole(),
            status: if digest.is_some() {
                HitOrMiss::Hit
            } else {
                HitOrMiss::Miss
            },
            digest,
            platforms: statuses,
        });
    }
    Ok(rows)
}

/// The index rows as table rows: session, index tag, and what is missing.
fn index_table(rows: &[IndexRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let missing: Vec<&str> = r
                .platforms
                .iter()
                .filter(|(_, h)| **h == HitOrMiss::Miss)
                .map(|(p, _)| p.as_str())
                .collect();
            let status = match (r.status, missing.is_empty()) {
                (HitOrMiss::Hit, _) => "hit".to_string(),
                (HitOrMiss::Miss, true) => {
                    "miss (every platform's image is there: `venvimg build` writes the index)"
                        .into()
                }
                (HitOrMiss::Miss, false) => format!("miss ({})", missing.join(", ")),
            };
            vec![r.session.clone(), r.tag.to_string(), status]
        })
        .collect()
}
