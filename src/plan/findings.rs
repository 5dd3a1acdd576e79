//! What a plan found that the user should know besides hit or miss — sessions the config
//! leaves out, a stale uv.lock, floating sessions, what the dry run could not key — and the
//! registry's warnings gathered while planning. `plan`, `build` and `run` print them.

use crate::error::Error;
use crate::model::Digest;
use crate::printer::Printer;
use crate::python::lockcheck::LockState;
use crate::registry::Registry;

use super::Plan;

/// What the project's own files disagree on: sessions nox runs by default that
/// venvimg.yaml's `sessions:` leaves out (only when no `--session` narrows the run), and a
/// uv.lock that no longer answers pyproject.toml. Warnings, or with `--strict` (for CI) an
/// error before anything is built.
pub fn check_project(
    config: &crate::config::Config,
    plan: &Plan,
    only: &[String],
    strict: bool,
    printer: &Printer,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    let left = if only.is_empty() {
        super::left_out(config, &plan.listing)
    } else {
        Vec::new()
    };
    if !left.is_empty() {
        problems.push(format!(
            "{}: `sessions:` leaves out {} that nox runs by default ({}): {} no image; add {} to `sessions:`, or drop `sessions:` to follow the noxfile",
            config.file.display(),
            if left.len() == 1 { "a session" } else { "sessions" },
            left.join(", "),
            if left.len() == 1 { "it gets" } else { "they get" },
            if left.len() == 1 { "it" } else { "them" },
        ));
    }
    match &plan.lock {
        Some(LockState::Stale(why)) => problems.push(format!(
            "{}: uv.lock does not match pyproject.toml: {}; sessions that install from the lock as it is (`--frozen`) would miss that\n  hint: run `uv lock` and commit uv.lock (`uv lock --check` confirms)",
            config.project_dir.join("uv.lock").display(),
            why.join("; ")
        )),
        Some(LockState::Unchecked(why)) => {
            printer.verbose(format!("uv.lock not compared with pyproject.toml: {why}"))
        }
        Some(LockState::Matches) | None => {}
    }
    if strict && !problems.is_empty() {
        return Err(crate::error::UsageError::Flag {
            flag: "--strict",
            value: None,
            why: problems.join("\nerror: --strict: "),
        }
        .into());
    }
    for p in problems {
        printer.warn(p);
    }
    Ok(())
}

pub fn flush_warnings(registry: &Registry, printer: &Printer) {
    for w in registry.take_warnings() {
        printer.warn(w);
    }
}

/// What a plan found that the user should know besides hit or miss: floating sessions,
/// what the dry run could not key.
pub fn report_plan_findings(plan: &Plan, printer: &Printer) {
    printer.verbose(format!(
        "dry run of the noxfile: {} (nox {})",
        plan.dry_run_source,
        plan.nox_version.as_deref().unwrap_or("?")
    ));
    for s in &plan.sessions {
        if let Some(d) = &s.document.discovered {
            if !d.floating.is_empty() {
                let refresh = match &s.document.refresh {
                    Some(r) => format!("rebuilt every {} (refresh)", r.every),
                    None => "set `refresh:` to rebuild it periodically".to_string(),
                };
                printer.warn(format!(
                    "session `{}` floats: nothing pins {}; the same files may give another venv on another day ({refresh})",
                    s.config.name,
                    d.floating.join("; ")
                ));
            }
        }
        if let Some(why) = &s.document.opaque {
            if s.problem.is_none() {
                printer.warn(format!(
                    "session `{}`: {why}; it is keyed by its settings and the noxfile, and its image is checked against what its build read",
                    s.config.name
                ));
            }
        }
        for note in s.derived.iter().flat_map(|d| d.notes.iter()) {
            printer.verbose(format!("session `{}`: {note}", s.config.name));
        }
        if printer.verbosity >= crate::printer::Verbosity::Verbose {
            if let Some(d) = &s.document.discovered {
                for f in &d.files {
                    printer.verbose(format!(
                        "session `{}`: input {} ({}) {}{}",
                        s.config.name,
                        f.path,
                        f.via,
                        Digest::PREFIX,
                        &f.sha256[..f.sha256.len().min(12)]
                    ));
                }
                for l in &d.locks {
                    printer.verbose(format!(
                        "session `{}`: {} entries of {} ({})",
                        s.config.name,
                        l.packages.len(),
                        l.lock,
                        l.selection.join(" ")
                    ));
                }
            }
        }
    }
}
