//! venvimg's integration tests: one binary, one module per area, against the real
//! registry, podman, docker, nox and uv (`tests/support/testenv.sh up` brings them up).
// Tests start programs and write fixtures with std: clippy.toml's rules are for src/.
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod build_e2e;
mod ci_files;
mod completions_man;
mod discovered;
mod docker;
mod docs;
mod finer_keys;
mod hardening;
mod images;
mod inspect_init;
mod layers_per_dist;
mod outputs;
mod plan;
mod platforms;
mod prune;
mod readme;
mod real_noxfiles;
mod registry_auth;
mod registry_push;
mod registry_rss;
mod release;
mod restore;
mod run;
mod runners;
mod sbom;
mod testenv;
mod trust;
mod verify;
mod wheel;
