//! The commands: each runs the stages for one `venvimg` subcommand and reports. Nothing
//! below this folder imports it; `cli` only parses arguments and calls in here.

pub mod build;
pub mod init;
pub mod inspect;
pub mod plan;
pub mod platforms;
pub mod prune;
pub mod report;
pub mod run;
pub mod verify;

pub use init::{init, render_config, InitArgs, InitFacts};
pub use inspect::{inspect, InspectArgs};

use crate::config::BuilderKind;
use crate::error::Error;

/// The engine `--engine FLAG` names, checked; None when not given.
pub fn engine_flag(flag: Option<&str>) -> Result<Option<BuilderKind>, Error> {
    match flag {
        None => Ok(None),
        Some("podman") => Ok(Some(BuilderKind::Podman)),
        Some("docker") => Ok(Some(BuilderKind::Docker)),
        Some(other) => Err(Error::Usage(format!(
            "--engine `{other}`: use podman or docker"
        ))),
    }
}

/// The container engine that runs job images (run, shell, `build --load`): `--engine`,
/// else the config's builder when it is an engine, else whichever is installed (podman
/// first); a usage error that says what to install when none is.
pub fn job_engine(builder: BuilderKind, flag: Option<&str>) -> Result<BuilderKind, Error> {
    if let Some(engine) = engine_flag(flag)? {
        return Ok(engine);
    }
    match builder {
        BuilderKind::Local => crate::engine::installed_engine().ok_or_else(|| {
            Error::Usage(
                "no container engine to run the job image: neither podman nor docker runs here\n  hint: install one (apt-get install podman) or pass --engine".into(),
            )
        }),
        k => Ok(k),
    }
}
