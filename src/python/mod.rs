//! Python facts venvimg must know: what nox's hook reports (sessions, commands), what
//! install commands read and pin, the inputs a session is keyed by, nox's naming, uv
//! lock projections, and what a built venv holds (its distributions, the per-distribution
//! split). Nothing here reads venvimg's configuration or starts a container.

pub mod dryrun;
pub mod hook;
pub mod inputs;
pub mod installs;
pub mod layering;
pub mod lockcheck;
pub mod locked;
pub mod nox;
pub mod venv;
