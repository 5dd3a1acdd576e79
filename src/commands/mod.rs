//! The commands: each runs the stages for one `venvimg` subcommand and reports. Nothing
//! below this folder imports it; `cli` only parses arguments and calls in here.

pub mod build;
pub mod init;
pub mod inspect;
pub mod plan;
pub mod prune;
pub mod report;
pub mod restore;
pub mod run;
pub mod verify;

pub use init::{init, render_config, InitArgs, InitFacts};
pub use inspect::{inspect, InspectArgs};

use std::borrow::Cow;
use std::path::PathBuf;

use crate::config::{BuilderKind, Config};
use crate::printer::Printer;

/// `config` as the commands that only plan (`plan`, `prune`, `restore`) use it. A job
/// running in the base image itself has nox but no container engine: the noxfile's dry
/// run then runs with this machine's nox, as it would in a container of the base. Only
/// for this machine's platform (another's dry run needs its emulated container), and
/// never in the key: the same keys either way (tested).
pub(crate) fn plannable_here<'a>(config: &'a Config, printer: &Printer) -> Cow<'a, Config> {
    let here = config.builder != BuilderKind::Local
        && config.platform == crate::model::Platform::host()
        && !crate::engine::engine_available(config.builder)
        && crate::engine::engine_available(BuilderKind::Local);
    if !here {
        return Cow::Borrowed(config);
    }
    printer.info(format!(
        "no {} here: the noxfile's dry run runs with this machine's nox (as in a job in the base image)",
        config.builder.as_str()
    ));
    Cow::Owned(Config {
        dry_run_here: true,
        ..config.clone()
    })
}

/// How sessions build: shared by `build`, `verify` (and what `run` builds first).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct BuilderArgs {
    /// podman or docker: the engine of the build containers (for `builder: podman` or
    /// `docker`; both give the same bytes and tags) and of `build --load` (default: the
    /// builder; for `builder: local`, whichever is installed).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Extra environment for the builds (repeatable): NAME=VALUE, or NAME to take the
    /// value from venvimg's environment (keeps a secret off the command line).
    #[arg(long = "build-env", value_name = "NAME[=VALUE]")]
    pub build_env: Vec<String>,
    /// A CA bundle the builds trust for package downloads (mounted read-only).
    #[arg(long, value_name = "FILE")]
    pub build_ca: Option<PathBuf>,
    /// The build containers' network (podman/docker `--network`, e.g. `host` where the
    /// daemon has no bridge); default: the engine's own.
    #[arg(long, value_name = "MODE")]
    pub build_network: Option<String>,
    /// How many sessions build at once (default: two per core, as memory allows; 1 for
    /// `builder: local`, whose builds share the envdir). Each line then names its session.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Keep the build folders (venvs, layers, logs) for debugging.
    #[arg(long)]
    pub keep: bool,
}

impl BuilderArgs {
    /// These flags over `opts`.
    pub fn apply(&self, opts: crate::builder::BuildOptions) -> crate::builder::BuildOptions {
        crate::builder::BuildOptions {
            engine: self.engine.clone(),
            build_env: self.build_env.clone(),
            build_ca: self.build_ca.clone(),
            build_network: self.build_network.clone(),
            jobs: self.jobs,
            keep: self.keep,
            ..opts
        }
    }
}
