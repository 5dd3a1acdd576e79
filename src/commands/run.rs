//! `venvimg run` and `venvimg shell`: a session's job image on this machine, with the
//! checkout mounted at `workdir` — the same command CI runs, without assembling it by
//! hand. A miss is built (and pushed) first, unless `--no-build`.

use std::path::PathBuf;

use crate::config::{BuilderKind, Config};
use crate::engine::{self, JobRun};
use crate::error::Error;
use crate::plan::{Plan, SessionPlan, Status};
use crate::printer::Printer;
use crate::registry::{is_loopback, Registry};

/// What `run` and `shell` share.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// podman or docker (default: the builder of venvimg.yaml; for `builder: local`,
    /// whichever is installed, podman first).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Give the container the network (default: none, with UV_OFFLINE=1, as in CI).
    #[arg(long)]
    pub network: bool,
    /// Relabel the checkout mount for SELinux (`:z`).
    #[arg(long)]
    pub relabel: bool,
    /// On a miss, fail with what to run instead of building first.
    #[arg(long)]
    pub no_build: bool,
    /// For a build on a miss: a CA certificate (PEM) for the build containers.
    #[arg(long, value_name = "FILE")]
    pub build_ca: Option<PathBuf>,
    /// For a build on a miss: the build containers' network (e.g. `host`).
    #[arg(long, value_name = "MODE")]
    pub build_network: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Sessions to run, one after another, as nox takes them (`-s tests lint`,
    /// repeatable; default: every session of venvimg.yaml; NOXSESSION is not read).
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1..)]
    pub sessions: Vec<String>,
    #[command(flatten)]
    pub job: JobArgs,
    /// nox's posargs for the sessions, after `--`.
    #[arg(last = true, value_name = "POSARGS")]
    pub posargs: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// The session whose job image to enter.
    pub session: String,
    #[command(flatten)]
    pub job: JobArgs,
    /// A command to run instead of an interactive shell, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub async fn run(
    config: &Config,
    registry: &Registry,
    args: &RunArgs,
    printer: &Printer,
) -> Result<(), Error> {
    // With `platforms:`, this machine's platform (the first listed when it is not one).
    let config = &config.for_platform(&config.platform);
    let (plan, target) = ready(config, registry, &args.sessions, &args.job, printer).await?;
    let mut failed = Vec::new();
    let total = plan.sessions.len();
    for s in &plan.sessions {
        let mut command: Vec<String> = [
            "nox",
            "--envdir",
            &config.envdir,
            "--reuse-venv=always",
            "--no-install",
            "-s",
            &s.config.name,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if !args.posargs.is_empty() {
            command.push("--".into());
            command.extend(args.posargs.iter().cloned());
        }
        printer.info(format!("{}: running nox in {}", s.config.name, pinned(s)));
        let code = start(config, s, &target, &args.job, command, printer)?;
        if code != 0 {
            failed.push((s.config.name.clone(), code));
        }
    }
    if total > 1 {
        printer.info(format!(
            "{} of {total} sessions passed{}",
            total - failed.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; failed: {}",
                    failed
                        .iter()
                        .map(|(n, c)| format!("{n} (exit {c})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
    }
    match failed.first() {
        None => Ok(()),
        Some(&(_, code)) => Err(Error::SessionsFailed { failed, code }),
    }
}

pub async fn shell(
    config: &Config,
    registry: &Registry,
    args: &ShellArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let config = &config.for_platform(&config.platform);
    let (plan, target) = ready(
        config,
        registry,
        std::slice::from_ref(&args.session),
        &args.job,
        printer,
    )
    .await?;
    let s = &plan.sessions[0];
    let venv = s.venv_dir.path_in(&config.envdir);
    // The venv first on PATH, as `source bin/activate` would; then the command, or bash
    // (sh where the image has no bash).
    let mut command: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"export VIRTUAL_ENV="$1" PATH="$1/bin:$PATH"; shift
if [ $# -gt 0 ]; then exec "$@"; fi
if command -v bash >/dev/null 2>&1; then exec bash; fi
exec sh"#
            .into(),
        "venvimg-shell".into(),
        venv,
    ];
    command.extend(args.command.iter().cloned());
    let code = start(config, s, &target, &args.job, command, printer)?;
    if code == 0 {
        Ok(())
    } else {
        Err(Error::SessionsFailed {
            failed: vec![(s.config.name.clone(), code)],
            code,
        })
    }
}

/// Plan `sessions`; build the misses (unless `--no-build`); plan again so every session
/// is a hit with its digest; and where the sessions will run.
async fn ready(
    config: &Config,
    registry: &Registry,
    sessions: &[String],
    job: &JobArgs,
    printer: &Printer,
) -> Result<(Plan, Target), Error> {
    let target = Target::resolve(config, job)?;
    let plan = crate::plan::make_plan(config, registry, sessions).await?;
    crate::plan::findings::flush_warnings(registry, printer);
    let misses: Vec<String> = plan.misses().map(|s| s.config.name.clone()).collect();
    if misses.is_empty() {
        return Ok((plan, target));
    }
    if job.no_build {
        return Err(crate::error::UsageError::Flag {
            flag: "--no-build",
            value: None,
            why: format!(
                "no job image for the current key of {}; build it with `venvimg build{}` (or drop --no-build)",
                misses.join(", "),
                misses.iter().map(|m| format!(" -s {m}")).collect::<String>()
            ),
        }
        .into());
    }
    printer.info(format!("building first: {}", misses.join(", ")));
    let options = crate::builder::BuildOptions {
        sessions: misses,
        engine: job.engine.clone(),
        build_ca: job.build_ca.clone(),
        build_network: job.build_network.clone(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let built = crate::builder::build(config, registry, &options, printer).await?;
    super::report::BuildReport::of(&built, started, true, registry)
        .render(false, false, printer)?;
    built.exit()?;
    let plan = crate::plan::make_plan(config, registry, sessions).await?;
    if let Some(s) = plan.misses().next() {
        return Err(crate::error::UsageError::Session {
            name: s.config.name.clone(),
            why: format!(
                "still a miss after its build; see `venvimg plan --explain {}`",
                s.config.name
            ),
        }
        .into());
    }
    Ok((plan, target))
}

/// Where the sessions run, resolved once before planning: the engine, and the checkout
/// as it mounts it (refused up front when it cannot).
struct Target {
    engine: BuilderKind,
    checkout: PathBuf,
}

impl Target {
    fn resolve(config: &Config, job: &JobArgs) -> Result<Target, Error> {
        let engine = crate::engine::job_engine(config.builder, job.engine.as_deref())?;
        if engine == BuilderKind::Docker && config.compression.is_zstd() {
            // Docker before 23 fails such a pull with a bare "archive/tar: invalid tar header".
            if let Some((major, minor)) = engine::docker_server_version().filter(|v| v.0 < 23) {
                return Err(crate::error::UsageError::Field {
                    file: config.file.clone(),
                    field: "compression",
                    value: "zstd".into(),
                    why: format!("but Docker {major}.{minor} cannot pull zstd layers (Docker 23 and later can)\n  hint: use `compression: gzip` for images Docker {major}.{minor} runs, run them with --engine podman, or upgrade Docker"),
                }
                .into());
            }
        }
        let checkout = engine::mountable_checkout(engine, &config.project_dir)?;
        Ok(Target { engine, checkout })
    }
}

/// `name:tag@digest` of a hit.
fn pinned(s: &SessionPlan) -> String {
    match &s.status {
        Status::Hit { digest } => format!("{}@{digest}", s.image.whole()),
        Status::Miss => s.image.whole(),
    }
}

fn start(
    config: &Config,
    s: &SessionPlan,
    target: &Target,
    job: &JobArgs,
    command: Vec<String>,
    printer: &Printer,
) -> Result<i32, Error> {
    let Target { engine, checkout } = target;
    let engine = *engine;
    let host = config.repository.resolve_registry();
    let mut env = Vec::new();
    if !job.network {
        env.push(("UV_OFFLINE".to_string(), "1".to_string()));
    }
    let image = pinned(s);
    let run = JobRun {
        engine,
        image: &image,
        platform: &config.platform,
        insecure_pull: is_loopback(host) || config.insecure_registries.iter().any(|r| r == host),
        checkout,
        workdir: &config.workdir,
        network: job.network,
        relabel: job.relabel,
        env,
        command,
    };
    engine::blocking(|| engine::run_job(&run, printer)).map_err(|source| Error::Io {
        path: PathBuf::from(engine.as_str()),
        source,
    })
}
