//! The error every command returns, and the exit code it maps to: 2 for usage and
//! configuration errors (the user must change something they wrote), 1 for failures.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::nox::NoxError;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{file}: unknown session `{name}`; the noxfile defines: {}\n  hint: use a name from `nox --list`", if available.is_empty() { "(none)".to_string() } else { available.join(", ") })]
    UnknownSession {
        file: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error(transparent)]
    Nox(#[from] NoxError),
    /// Boxed: the registry's errors carry several strings and would make every
    /// `Result<_, Error>` as large as they are.
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Locked(#[from] crate::plan::locked::LockedError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputError),
    #[error(transparent)]
    Inputs(#[from] crate::python::inputs::InputError),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::Usage(_)
            | Error::UnknownSession { .. }
            | Error::Locked(crate::plan::locked::LockedError::Failed { .. }) => 2,
            _ => 1,
        }
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        Error::Registry(Box::new(e))
    }
}
