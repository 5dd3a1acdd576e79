use std::collections::BTreeMap;
use std::path::Path;

use super::diagnose::{diagnose_failure, keep_log, network_failure};
use super::workspace::{prepare_envdir, BuildEnv, Workspace};
use super::{io_err, BuildOptions};
use crate::config::{Config, ProjectMode};
use crate::engine::{self as builder, script};
use crate::error::{BuildError, Error};
use crate::layer::{self};
use crate::model::Platform;
use crate::plan::{Plan, SessionPlan};
use crate::printer::Reporter;
use crate::python::venv;
use crate::registry::is_loopback;

/// Runs a session's scripts in the builder: the same image, mounts and environment for
/// each (the install, and the editable reinstall of the project's own code).
pub(super) struct ScriptRunner<'a> {
    pub(super) config: &'a Config,
    pub(super) s: &'a SessionPlan,
    pub(super) ws: &'a Workspace,
    pub(super) base_pinned: String,
    pub(super) insecure_pull: bool,
    pub(super) platform: Platform,
    pub(super) env: BTreeMap<String, String>,
    pub(super) secrets: &'a [String],
    pub(super) args: &'a BuildOptions,
    pub(super) printer: &'a dyn Reporter,
}

impl<'a> ScriptRunner<'a> {
    pub(super) fn new(
        config: &'a Config,
        plan: &Plan,
        s: &'a SessionPlan,
        ws: &'a Workspace,
        build_env: &'a BuildEnv,
        args: &'a BuildOptions,
        printer: &'a dyn Reporter,
    ) -> ScriptRunner<'a> {
        let mut env = builder::reproducible_env(layer::DEFAULT_SOURCE_DATE_EPOCH);
        env.extend(build_env.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(s.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let base_registry = config.base.resolve_registry();
        ScriptRunner {
            config,
            s,
            ws,
            base_pinned: plan.base.pinned(),
            insecure_pull: is_loopback(base_registry)
                || config
                    .insecure_registries
                    .iter()
                    .any(|r| r == base_registry),
            platform: config.platform.clone(),
            env,
            secrets: &build_env.secrets,
            args,
            printer,
        }
    }

    fn run(&self, script: &str, log: &Path) -> Result<builder::BuildOutcome, Error> {
        let job = builder::BuildJob {
            kind: self.config.builder,
            image: &self.base_pinned,
            insecure_pull: self.insecure_pull,
            platform: &self.platform,
            project: &self.ws.project,
            workdir: &self.config.workdir,
            envdir_host: &self.ws.envdir_host,
            envdir: &self.config.envdir,
            hook_dir: &self.ws.hook_dir,
            script,
            out_dir: &self.ws.out_dir,
            env_file: &self.ws.dir.join("build.env"),
            env: self.env.clone(),
            ca_file: self.args.build_ca.as_deref(),
            log,
            name: &crate::cancel::container_name(),
            secrets: self.secrets,
            network: self.args.build_network.as_deref(),
        };
        Ok(builder::run(&job, self.printer).map_err(io_err(format!(
            "running the {} builder",
            self.config.builder
        )))?)
    }

    /// `script` ran; its failure diagnosed, the log kept.
    fn run_ok(&self, script: &str, log: &Path) -> Result<(), Error> {
        let outcome = self.run(script, log)?;
        self.check(&outcome, log)
    }

    fn check(&self, outcome: &builder::BuildOutcome, log: &Path) -> Result<(), Error> {
        if outcome.success {
            return Ok(());
        }
        let name = &self.s.config.name;
        let kept = keep_log(name, log);
        Err(diagnose_failure(name, &self.base_pinned, outcome, &kept).into())
    }

    /// nox installs the session's venv (build.sh). Package indexes time out now and
    /// then, most on loaded CI runners: one more try, from a fresh venv, before calling
    /// the build failed.
    pub(super) fn install(&self) -> Result<(), Error> {
        let log = self.ws.dir.join("build.log");
        let mut outcome = self.run("build.sh", &log)?;
        if !outcome.success && network_failure(&outcome.output) {
            self.printer.warn(format!(
                "session `{}`: the package index failed to answer; building once more",
                self.s.config.name
            ));
            prepare_envdir(
                self.config.builder,
                &self.ws.envdir_host,
                &self.ws.venv_host,
            )?;
            let _ = fs_err::remove_file(self.ws.out_dir.join(script::RECORD_FILE));
            outcome = self.run("build.sh", &log)?;
        }
        self.check(&outcome, &log)
    }

    fn facts(&self) -> Result<venv::VenvFacts, Error> {
        venv::read_facts(&self.ws.venv_host).map_err(|source| {
            BuildError::Venv {
                session: self.s.config.name.clone(),
                source,
            }
            .into()
        })
    }

    /// The venv's facts, after applying `project:` to the project's own code installed
    /// non-editable: refuse, key it (nothing to do), or reinstall it editable from
    /// workdir.
    pub(super) fn settle_project_code(&self) -> Result<venv::VenvFacts, Error> {
        let (config, name) = (self.config, &self.s.config.name);
        let facts = self.facts()?;
        let frozen_error = |frozen: &[&venv::Package]| -> Error {
            BuildError::FrozenProject {
                session: name.clone(),
                dists: frozen
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.version))
                    .collect::<Vec<_>>()
                    .join(", "),
                workdir: config.workdir.clone(),
            }
            .into()
        };
        let frozen = venv::frozen_project_code(&facts, &config.workdir);
        if frozen.is_empty() {
            return Ok(facts);
        }
        match self.s.config.project {
            ProjectMode::Refuse => Err(frozen_error(&frozen)),
            // The key covers the project's files: any source change is a new image.
            ProjectMode::Keyed => Ok(facts),
            ProjectMode::Editable => {
                let paths: Vec<String> = frozen
                    .iter()
                    .filter_map(|p| p.local_url.as_deref())
                    .map(|u| u.trim_start_matches("file://").to_string())
                    .collect();
                self.printer.info(format!(
                    "{name}: reinstalling {} editable from {}",
                    frozen
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    config.workdir
                ));
                let script = self.ws.hook_dir.join("editable.sh");
                fs_err::write(
                    &script,
                    script::render_editable(
                        &config.envdir,
                        &self.s.venv_dir,
                        &config.workdir,
                        &facts.backend,
                        &paths,
                    ),
                )
                .map_err(io_err(format!("writing {}", script.display())))?;
                self.run_ok("editable.sh", &self.ws.dir.join("editable.log"))?;
                let facts = self.facts()?;
                let still = venv::frozen_project_code(&facts, &config.workdir);
                if still.is_empty() {
                    Ok(facts)
                } else {
                    Err(frozen_error(&still))
                }
            }
        }
    }
}
