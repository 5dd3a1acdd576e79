use std::path::Path;
use std::time::Instant;

use super::pack::pack_session;
use super::scripts::ScriptRunner;
use super::workspace::{BuildEnv, Workspace};
use super::{BuildOptions, SessionLayer};
use crate::config::{BuilderKind, Config};
use crate::engine::script;
use crate::error::{BuildError, Error};
use crate::image::LayerDescriptor;
use crate::plan::record::SessionRecord;
use crate::plan::{CheckAnnotation, Plan, SessionPlan};
use crate::printer::Reporter;
use crate::python::inputs::{self, Derived};
use crate::python::venv;

/// A session's build and the seconds it took.
pub type Built = (Result<SessionLayer, Error>, f64);

/// What every session's build is given: the config and plan, the build folder and
/// environment ([`prepare`](super::workspace::prepare)), the build's options.
pub(super) struct BuildSetup<'a> {
    pub(super) config: &'a Config,
    pub(super) plan: &'a Plan,
    pub(super) work: &'a Path,
    pub(super) build_env: &'a BuildEnv,
    pub(super) args: &'a BuildOptions,
}

/// The misses' builds, `jobs` at a time, each result (and its seconds) in `misses`'
/// order. With `--fail-fast` no build starts after one failed: those are `None`.
/// Sessions build independently (their own folder, container and envdir), so the only
/// shared thing is the output: with more than one at a time each line names its session.
pub(super) fn build_all(
    setup: &BuildSetup<'_>,
    misses: &[&SessionPlan],
    printer: &dyn Reporter,
    jobs: usize,
) -> Vec<Option<Built>> {
    let BuildSetup {
        config,
        plan,
        work,
        build_env,
        args,
    } = *setup;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Built>>> = misses.iter().map(|_| Mutex::new(None)).collect();
    let worker = || loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(s) = misses.get(i) else {
            break;
        };
        let t0 = Instant::now();
        let result = if jobs > 1 {
            let tagged = crate::printer::Prefixed::new(printer, s.config.name.clone());
            build_session(config, plan, s, work, build_env, args, &tagged)
        } else {
            build_session(config, plan, s, work, build_env, args, printer)
        };
        if result.is_err() && args.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) =
            Some((result, t0.elapsed().as_secs_f64()));
    };
    if jobs <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(worker);
            }
        });
    }
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// One session's build: prepare its folder → install (nox in the builder) → check the
/// venv (the project's own code, drift) → pack its layers → the record its image
/// carries. Runs on a blocking thread.
pub(super) fn build_session(
    config: &Config,
    plan: &Plan,
    s: &SessionPlan,
    work: &Path,
    build_env: &BuildEnv,
    args: &BuildOptions,
    printer: &dyn Reporter,
) -> Result<SessionLayer, Error> {
    let name = &s.config.name;
    let ws = Workspace::prepare(config, s, work, printer)?;
    let runner = ScriptRunner::new(config, plan, s, &ws, build_env, args, printer);
    let progress = printer.spinner(format!("{name}: building with {}", config.builder));
    let build_started = Instant::now();
    runner.install()?;
    progress.finish();
    let build_read = what_the_build_read(
        config,
        s,
        &ws.out_dir.join(script::RECORD_FILE),
        &build_env.secrets,
    )?;
    report_divergence(s, &build_read, printer);
    let facts = runner.settle_project_code()?;
    check_drift(s, &facts, args.strict, printer)?;
    let distributions =
        crate::sbom::read_distributions(&ws.venv_host).map_err(|source| BuildError::Venv {
            session: name.clone(),
            source,
        })?;
    printer.info(format!(
        "{name}: venv built in {:.1}s ({} backend, python {}, {} packages)",
        build_started.elapsed().as_secs_f64(),
        facts.backend,
        facts.python,
        facts.packages.len()
    ));
    let packed = pack_session(config, plan, s, &ws, printer)?;
    let record = SessionRecord {
        session: name.clone(),
        venv_dir: s.venv_dir.clone().into(),
        key: s.key.clone().into(),
        tag: s.tag.clone().into(),
        inputs: s.document.clone(),
        python: facts.python.clone(),
        backend: facts.backend.clone(),
        interpreter: facts.interpreter.clone(),
        packages: facts.packages.clone(),
        layers: packed.records,
        commands: build_read.commands.clone(),
        build_read: (Some(&build_read.discovered) != s.document.discovered.as_ref())
            .then(|| build_read.discovered.clone()),
        notes: build_read.notes.clone(),
    };
    let check = CheckAnnotation {
        key: s.key.to_string(),
        files: build_read.discovered.checked_files().cloned().collect(),
    };
    let at = s.venv_dir.path_in(&config.envdir);
    Ok(SessionLayer {
        descriptors: packed
            .layers
            .iter()
            .map(|(label, p)| LayerDescriptor {
                media_type: p.media_type().to_string(),
                digest: p.digest.clone(),
                size: p.size,
                diff_id: p.diff_id.clone(),
                created_by: if packed.grouped {
                    format!("venvimg: nox session {name} at {at} ({label})")
                } else {
                    format!("venvimg: nox session {name} at {at}")
                },
            })
            .collect(),
        files: packed
            .layers
            .iter()
            .map(|(_, p)| (p.digest.clone(), p.path.clone()))
            .collect(),
        record,
        check,
        distributions: Some(distributions),
    })
}

/// A `locked:` session's packages its key does not cover: warnings, or with `--strict`
/// an error (nothing of it pushed).
pub(super) fn check_drift(
    s: &SessionPlan,
    facts: &venv::VenvFacts,
    strict: bool,
    printer: &dyn Reporter,
) -> Result<(), Error> {
    let Some(locked) = &s.document.locked else {
        return Ok(());
    };
    let name = &s.config.name;
    let drift = crate::python::locked::drift(&facts.packages, &locked.packages);
    if drift.is_empty() {
        return Ok(());
    }
    if strict {
        return Err(BuildError::Drift {
            session: name.clone(),
            selection: serde_json::to_string(&s.config.locked).unwrap_or_default(),
            list: drift
                .iter()
                .map(|d| format!("    {d}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
        .into());
    }
    for d in &drift {
        printer.warn(format!(
            "session `{name}`: drift: {d}; the key does not cover it (--strict makes this an error)"
        ));
    }
    Ok(())
}

/// What the build read and ran, from the hook's record of it (untrusted: it was written
/// next to the project's noxfile). Also refuses an image whose inputs changed on this
/// machine while it was built: it would carry digests of files it was not built from.
pub(super) fn what_the_build_read(
    config: &Config,
    s: &SessionPlan,
    record_path: &Path,
    secrets: &[String],
) -> Result<Derived, Error> {
    let name = &s.config.name;
    let mut records = crate::python::hook::Records::default();
    records
        .read_into(record_path)
        .map_err(crate::python::nox::NoxError::Hook)?;
    let Some(events) = records.sessions.get(name) else {
        return Err(BuildError::NoRecord {
            session: name.clone(),
            path: record_path.to_path_buf(),
        }
        .into());
    };
    let workdir = match config.builder {
        BuilderKind::Local => fs_err::canonicalize(&config.project_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| config.workdir.clone()),
        _ => config.workdir.clone(),
    };
    let ctx = inputs::Context {
        session: name,
        project_dir: &config.project_dir,
        workdir: &workdir,
        envdir: &config.envdir,
        secrets,
    };
    let derived = inputs::derive(&ctx, &records.module, events)?;
    if let Some(planned) = &s.document.discovered {
        let moved: Vec<String> = planned
            .checked_files()
            .filter(|f| inputs::changed(&config.project_dir, f).is_some())
            .map(|f| f.path.clone())
            .collect();
        if !moved.is_empty() {
            return Err(BuildError::InputsMoved {
                session: name.clone(),
                files: moved.join(", "),
            }
            .into());
        }
    }
    Ok(derived)
}

/// The dry run foresaw the build exactly, or the image records what the build read
/// besides (and plans check those files too); say which.
pub(super) fn report_divergence(s: &SessionPlan, build: &Derived, printer: &dyn Reporter) {
    let Some(planned) = &s.document.discovered else {
        printer.info(format!(
            "{}: keyed by its settings alone ({}); each plan checks the {} file(s) its build read",
            s.config.name,
            s.document.opaque.as_deref().unwrap_or("no dry run"),
            build.discovered.checked_files().count()
        ));
        return;
    };
    if planned == &build.discovered {
        return;
    }
    let mut what = Vec::new();
    if planned.commands != build.discovered.commands {
        what.push("other commands".to_string());
    }
    let known: std::collections::BTreeSet<&str> =
        planned.checked_files().map(|f| f.path.as_str()).collect();
    let extra: Vec<&str> = build
        .discovered
        .checked_files()
        .map(|f| f.path.as_str())
        .filter(|p| !known.contains(p))
        .collect();
    if !extra.is_empty() {
        what.push(format!("files {}", extra.join(", ")));
    }
    if planned.locks != build.discovered.locks {
        what.push("other lock entries".into());
    }
    printer.warn(format!(
        "session `{}`: the build ran or read what the plan's dry run did not foresee ({}); the image records it and every plan checks it",
        s.config.name,
        if what.is_empty() { "details differ".to_string() } else { what.join("; ") }
    ));
}
