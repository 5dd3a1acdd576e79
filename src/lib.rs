//! venvimg: nox session virtualenvs as reproducible OCI image layers.
//!
//! The pipeline, one module a step: [`config`] → [`plan`] (keys, tags, hit/miss) →
//! [`build`] (builders run nox's installs) → [`layer`] (deterministic tar + compression)
//! → [`image`] (compose on the base) → [`registry`] / [`outputs`] (push, OCI layout,
//! archives). [`cli`] wires them to commands.

pub mod build;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod error;
pub mod image;
pub mod layer;
pub mod layering;
pub mod nox;
pub mod outputs;
pub mod plan;
pub mod printer;
pub mod python;
pub mod registry;
pub mod untrusted;

pub use error::Error;
