//! Where images go besides a registry: OCI layouts and archives, local engine storage;
//! and the commands that read images back (`inspect`) or start a project (`init`).
//! (Being written; the interface below is what `build` calls.)
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_client::Reference;

use crate::config::BuilderKind;
use crate::error::Error;
use crate::image::ComposedImage;
use crate::printer::Printer;
use crate::registry::Registry;

/// Where to find each blob an image references.
pub struct BlobSources<'a> {
    /// Layers packed on this machine, by digest.
    pub local: &'a HashMap<String, PathBuf>,
    /// The base image's repository (for base layers).
    pub base: &'a Reference,
    /// The target repository (for layers of sessions that were hits).
    pub repository: &'a Reference,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    pub image: String,
}
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[arg(long)]
    pub force: bool,
}
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0}")]
    Unsupported(String),
}
pub fn init(_g: &crate::cli::GlobalArgs, _a: &InitArgs, _p: &Printer) -> Result<(), Error> {
    Err(OutputError::Unsupported("init is not implemented yet".into()).into())
}
pub async fn inspect(
    _t: crate::registry::Transport,
    _a: &InspectArgs,
    _p: &Printer,
) -> Result<(), Error> {
    Err(OutputError::Unsupported("inspect is not implemented yet".into()).into())
}
pub async fn write_output(
    _registry: &Registry,
    dest: &str,
    _reference: &Reference,
    _image: &ComposedImage,
    _sources: &BlobSources<'_>,
    _printer: &Printer,
) -> Result<(), Error> {
    Err(OutputError::Unsupported(format!("--output {dest} is not implemented yet")).into())
}
#[allow(clippy::too_many_arguments)]
pub async fn load(
    _builder: BuilderKind,
    _registry: &Registry,
    _reference: &Reference,
    _image: &ComposedImage,
    _sources: &BlobSources<'_>,
    _work: &Path,
    _printer: &Printer,
) -> Result<(), Error> {
    Err(OutputError::Unsupported("--load is not implemented yet".into()).into())
}
