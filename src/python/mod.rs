//! Python facts venvimg must know: what nox's hook reports (sessions, commands), what
//! install commands read and pin, and the inputs a session is keyed by.

pub mod dryrun;
pub mod hook;
pub mod inputs;
pub mod installs;
