//! Where every process venvimg starts is made: containers and nox (through `engine`)
//! and the few small programs other stages run — `git` (plan: which files the checkout
//! tracks), a registry credential helper (`registry::auth`), `podman load` / `docker load`
//! (`outputs`), `rm --force` of a cancelled build's container (`cancel`). One place to
//! find them all: clippy's `disallowed-methods` (clippy.toml) refuses `Command::new`
//! anywhere else, tests aside.

use std::ffi::OsStr;

/// A blocking command for `program` (found on PATH as `std::process::Command` does).
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    #[allow(clippy::disallowed_methods)]
    std::process::Command::new(program)
}

/// An async command for `program`, for the runtime's tasks.
pub fn async_command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    #[allow(clippy::disallowed_methods)]
    tokio::process::Command::new(program)
}
