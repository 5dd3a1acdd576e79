//! venvimg: nox session virtualenvs as reproducible OCI image layers.
//!
//! The pipeline, one module a step: [`config`] → [`plan`] (keys, tags, hit/miss, from a
//! dry run by the [`engine`]) → [`builder`] (the [`engine`] runs nox's installs,
//! [`python`] reads the venv) → [`layer`] (deterministic tar + compression) →
//! [`image`] (compose on the base) → [`registry`] / [`outputs`] (push, OCI layout,
//! archives; each session image's [`sbom`] as a referrer). [`commands`] run the stages
//! for each subcommand; [`cli`] parses arguments.
//! Imports point one way, down [`LAYERS`].

// Output goes through `printer` (which knows terminals, CI logs and --quiet); only the
// process's last words (a fatal error, an interrupt) are written directly.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]
// Tests start their own programs and write their fixtures with std (clippy.toml's
// disallowed methods are for venvimg's own code, which the non-test build still checks).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod builder;
pub mod cancel;
pub mod ci;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod image;
pub mod layer;
pub mod model;
pub mod outputs;
pub mod plan;
pub mod printer;
pub mod process;
pub mod python;
pub mod registry;
pub mod restore;
pub mod sbom;
pub mod untrusted;
pub mod usage;

pub use error::Error;

/// The import order, bottom first: a module may use only modules of lower layers (the
/// test below reads `src/` and fails on any other `crate::` path outside tests).
pub const LAYERS: &[&[&str]] = &[
    // plain values (digests, platforms, media types)
    &["model"],
    // what a usage error names (flag, argument, config field, file): wrapped above
    &["usage"],
    // where every process is made (containers and nox through `engine`)
    &["process"],
    // small utilities over the values
    &["untrusted", "cancel", "printer"],
    // nox, uv and venv facts; no configuration, no containers
    &["python"],
    // a venv's distributions as a CycloneDX SBOM (python facts, one document)
    &["sbom"],
    // where this CI's jobs check out (environment facts)
    &["ci"],
    &["config"],
    // the pipeline's stages: pack, compose, move images
    &["layer"],
    &["image"],
    &["registry"],
    &["outputs"],
    &["error"],
    // the only code that starts a container or nox
    &["engine"],
    &["plan"],
    // the build stage: a plan's misses built, packed, composed and pushed; and back: a
    // hit's venv layers written into the envdir
    &["builder", "restore"],
    // one module per subcommand
    &["commands"],
    &["cli"],
];

#[cfg(test)]
mod import_order {
    use std::collections::BTreeSet;
    use std::path::Path;

    fn rank(module: &str) -> Option<usize> {
        super::LAYERS.iter().position(|l| l.contains(&module))
    }

    /// The top-level modules `code` names through `crate::` (also `crate::{a, b::c}`).
    fn imports(code: &str) -> BTreeSet<String> {
        names_after(code, "crate::")
    }

    /// The first path segments `code` names after `prefix` (also `prefix{a, b::c}`).
    fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        out.insert(name.to_string());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
        out
    }

    /// The module a path below a folder belongs to: its first component, without `.rs`.
    fn module_of(rel: &Path) -> String {
        rel.components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    }

    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in fs_err::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }

    #[test]
    fn imports_point_down_only() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let mut wrong = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            let top = module_of(rel);
            if top == "lib" || top == "main" || rel.ends_with("tests.rs") {
                continue;
            }
            let text = fs_err::read_to_string(f).unwrap();
            // Tests may reach anywhere: only the code before `#[cfg(test)]` counts.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let Some(mine) = rank(&top) else {
                wrong.push(format!(
                    "{}: module `{top}` is in no layer of LAYERS",
                    rel.display()
                ));
                continue;
            };
            for used in imports(code) {
                if used == top || ["self", "super"].contains(&used.as_str()) {
                    continue;
                }
                match rank(&used) {
                    Some(r) if r < mine => {}
                    Some(_) => wrong.push(format!(
                        "{}: `{top}` uses `crate::{used}`, which is not below it",
                        rel.display()
                    )),
                    None => wrong.push(format!(
                        "{}: `crate::{used}` is in no layer of LAYERS",
                        rel.display()
                    )),
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layer order:\n{}",
            wrong.join("\n")
        );
    }

    /// Commands share only `commands/report.rs` (the report types and CI outputs) and what
    /// `commands/mod.rs` holds (shared flags): no command imports another, so each one's
    /// stages are in the layers below, not in a sibling.
    #[test]
    fn no_command_imports_another() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
        let commands: BTreeSet<String> = fs_err::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| module_of(Path::new(&e.file_name())))
            .filter(|m| m != "mod" && m != "report")
            .collect();
        let mut files = Vec::new();
        walk(&dir, &mut files);
        let mut wrong = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&dir).unwrap();
            let depth = rel.components().count();
            let mine = module_of(rel);
            if mine == "mod" || mine == "report" {
                continue;
            }
            let text = fs_err::read_to_string(f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            // `super::` from commands/x.rs (or x/mod.rs) is commands; from x/y.rs it is x.
            let up = if depth == 1 || rel.ends_with("mod.rs") {
                "super::".to_string()
            } else {
                "super::".repeat(depth)
            };
            let used = names_after(code, "crate::commands::").into_iter().chain(
                names_after(code, &up)
                    .into_iter()
                    .filter(|_| !up.is_empty()),
            );
            for other in used {
                if other != mine && commands.contains(&other) {
                    wrong.push(format!(
                        "commands/{}: `{mine}` uses the command `{other}` (share through commands/report.rs or a layer below)",
                        rel.display()
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let found = names_after("use super::{report::X, build};", "super::");
        assert!(
            found.contains("build") && found.contains("report"),
            "{found:?}"
        );
    }

    #[test]
    fn the_checker_sees_grouped_and_nested_paths() {
        let found = imports("use crate::{config::Config, plan};\nlet x = crate::engine::run();");
        let want: BTreeSet<String> = ["config", "plan", "engine"].map(String::from).into();
        assert_eq!(found, want);
    }
}
