use std::time::Instant;

use super::workspace::{base_dirs, Workspace};
use crate::config::{Config, LayerMode};
use crate::engine::script;
use crate::error::{BuildError, Error};
use crate::layer::{self, PackOptions};
use crate::plan::record::LayerRecord;
use crate::plan::{Plan, SessionPlan};
use crate::printer::{human_bytes, Reporter};

/// A session's packed layers: one for the venv, or one per distribution group.
pub(super) struct PackedSession {
    pub(super) layers: Vec<(String, layer::PackedLayer)>,
    pub(super) records: Vec<LayerRecord>,
    pub(super) grouped: bool,
}

pub(super) fn pack_session(
    config: &Config,
    plan: &Plan,
    s: &SessionPlan,
    ws: &Workspace,
    printer: &dyn Reporter,
) -> Result<PackedSession, Error> {
    let name = &s.config.name;
    let mut opts = PackOptions::new(s.venv_dir.path_in(&config.envdir));
    opts.base_dirs = base_dirs(&ws.out_dir.join(script::BASE_DIRS_FILE), &config.envdir);
    opts.uid = config.owner.uid;
    opts.gid = config.owner.gid;
    opts.compression = config.compression;
    let t = Instant::now();
    let groups = match config.layers {
        LayerMode::Single => None,
        LayerMode::PerDistribution => {
            let cap = config
                .max_layers
                .saturating_sub(plan.base.manifest.layers().len())
                .max(1);
            Some(
                crate::python::layering::split(&ws.venv_host, cap).map_err(|e| BuildError::Io {
                    context: format!("session `{name}`: splitting the venv by distribution"),
                    source: match e {
                        crate::python::layering::LayeringError::Io { source, .. } => source,
                    },
                })?,
            )
        }
    };
    let mut layers = Vec::new();
    let mut records = Vec::new();
    match &groups {
        None => {
            let p = layer::pack_tree(&ws.venv_host, &opts, &ws.dir.join("layer.tar"))?;
            records.push(LayerRecord {
                digest: p.digest.clone().into(),
                size: p.size,
                group: None,
                distributions: serde_json::json!("*"),
            });
            layers.push(("venv".to_string(), p));
        }
        Some(groups) => {
            for (i, g) in groups.iter().enumerate() {
                let keep = crate::python::layering::keeps(g, groups);
                let p = layer::pack_tree_filtered(
                    &ws.venv_host,
                    &opts,
                    &ws.dir.join(format!("layer-{i:02}.tar")),
                    &keep,
                )?;
                records.push(LayerRecord {
                    digest: p.digest.clone().into(),
                    size: p.size,
                    group: Some(g.label.clone()),
                    distributions: serde_json::json!(g.distributions),
                });
                layers.push((g.label.clone(), p));
            }
        }
    }
    printer.info(format!(
        "{name}: packed {} → {} in {} layer(s) in {:.1}s",
        human_bytes(layers.iter().map(|(_, p)| p.uncompressed_size).sum()),
        human_bytes(layers.iter().map(|(_, p)| p.size).sum()),
        layers.len(),
        t.elapsed().as_secs_f64(),
    ));
    for (label, p) in &layers {
        printer.verbose(format!("  {label}: {} {}", human_bytes(p.size), p.digest));
    }
    Ok(PackedSession {
        layers,
        records,
        grouped: groups.is_some(),
    })
}
