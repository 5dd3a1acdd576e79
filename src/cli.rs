//! Command-line surface: clap types, then each command run on resolved settings.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::Config;
use crate::error::{Error, UsageError};
use crate::printer::{Printer, Verbosity};
use crate::registry::auth::ExplicitCredentials;
use crate::registry::{Level, Notes, Registry, Transport};

#[derive(Debug, Parser)]
#[command(
    name = "venvimg",
    version,
    about = "nox session virtualenvs as reproducible OCI job images",
    long_about = "venvimg turns each nox session's virtualenv into a reproducible OCI image layer, \
tagged by a hash of everything that decides its bytes, and pushes a job image (base image + venv) \
to a registry. CI jobs run in that image with `.nox` already there: \
`UV_OFFLINE=1 nox --envdir /opt/nox --reuse-venv=always --no-install -s SESSION`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The configuration file (default: venvimg.yaml here or in the nearest folder above,
    /// as uv and cargo find theirs). Inputs and the noxfile are found next to it, or in
    /// its `root:` folder.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The project's root folder (noxfile, pyproject.toml, inputs), as uv's --project:
    /// venvimg.yaml is looked for from there, and the project is there wherever the
    /// config file lives (over its `root:`).
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Push to and look up images in this repository (REGISTRY/NAME) instead of
    /// venvimg.yaml's `repository:`; VENVIMG_REPOSITORY does the same from the environment
    /// (a fork's or a trial run's own registry, like ko's KO_DOCKER_REPO). The flag wins.
    #[arg(long, global = true, value_name = "REF")]
    pub repository: Option<String>,
    /// More detail (each step, each request kind).
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Only warnings, errors and the data asked for.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// A registry (HOST[:PORT]) reached over plain HTTP. Loopback registries always are.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Do not verify the TLS certificate of this registry (repeat for several). HTTPS is
    /// still used; every other registry and token service is still verified.
    #[arg(
        long = "skip-tls-verify",
        global = true,
        value_name = "HOST[:PORT]",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub skip_tls_verify: Vec<String>,
    /// Extra CA certificate (PEM) to trust; SSL_CERT_FILE is also read.
    #[arg(long = "ca-file", global = true, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Username for the target registry (else VENVIMG_USERNAME, then auth files). With
    /// `inspect` and --password-stdin: for IMAGE's registry.
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// Read the target registry's password from standard input (else VENVIMG_PASSWORD).
    /// VENVIMG_USERNAME/VENVIMG_PASSWORD go only to the registry of venvimg.yaml's
    /// `repository:` (and its base image when it is on the same registry).
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// Upload blobs in chunks of this many MiB (1-4: oci-client sends at most 4 MiB per
    /// PATCH) instead of one request each, for proxies that limit request bodies.
    #[arg(long, global = true, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4))]
    pub chunk_size: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// For each session: key, tag, image reference, hit or miss.
    Plan(crate::commands::plan::PlanArgs),
    /// Plan, then build, pack, compose and push every miss.
    Build(crate::commands::build::BuildArgs),
    /// Run sessions in their job images here, the checkout mounted (builds a miss first).
    Run(crate::commands::run::RunArgs),
    /// Each session's venv from its image straight into the envdir (no container engine):
    /// for jobs in the base image or on a host runner.
    Restore(crate::commands::restore::RestoreArgs),
    /// An interactive shell (or a command) in a session's job image, its venv on PATH.
    Shell(crate::commands::run::ShellArgs),
    /// Rebuild images from this checkout and compare them byte for byte with the
    /// registry's: exit 1 naming the first layer and file that differ.
    Verify(crate::commands::verify::VerifyArgs),
    /// Sessions, keys, inputs and packages recorded in an image venvimg made.
    Inspect(crate::commands::InspectArgs),
    /// Delete the images venvimg made that no current key uses (a dry run unless --yes).
    #[command(long_about = crate::commands::prune::LONG_ABOUT)]
    Prune(crate::commands::prune::PruneArgs),
    /// Write a commented venvimg.yaml from `nox --list --json`.
    Init(crate::commands::InitArgs),
    /// Print the shell completion script for SHELL, e.g. `venvimg completions bash >
    /// ~/.local/share/bash-completion/completions/venvimg`.
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print venvimg's man page (roff), or write one page per command into --dir.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write venvimg.1 and venvimg-COMMAND.1 for every command into DIR (created if
    /// missing), e.g. `--dir ~/.local/share/man/man1`, instead of printing venvimg.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[allow(clippy::print_stderr)] // the last error, after the printer is gone
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 2,
            };
        }
    };
    let printer = Printer::new(if cli.global.quiet {
        Verbosity::Quiet
    } else if cli.global.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // A `--json` caller parses stdout: on failure it gets an error object there too.
    let json = match &cli.command {
        Command::Plan(a) => a.json,
        Command::Build(a) => a.json,
        Command::Inspect(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Prune(a) => a.json,
        _ => false,
    };
    let outcome = runtime.block_on(async {
        crate::cancel::exit_on_signal();
        run(cli, &printer).await
    });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            // A build's report (on stdout already) carries its failed sessions.
            if json && !matches!(e, Error::BuildsFailed { .. } | Error::NotVerified { .. }) {
                printer.out(
                    serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code()})
                        .to_string(),
                );
            }
            e.exit_code()
        }
    }
}

/// venvimg.yaml, with `repository` taken from `--repository` or VENVIMG_REPOSITORY when
/// set (a fork's or a trial run's own registry, like ko's KO_DOCKER_REPO); refused,
/// before any request, while it still holds `venvimg init`'s placeholders.
fn load_config(g: &GlobalArgs) -> Result<Config, Error> {
    if let Some(dir) = &g.project {
        if !dir.join(crate::config::NOXFILE).is_file() {
            return Err(UsageError::Flag {
                flag: "--project",
                value: Some(dir.display().to_string()),
                why: format!(
                    "no {} there; name the project's root folder",
                    crate::config::NOXFILE
                ),
            }
            .into());
        }
    }
    let mut config = Config::load_for(&g.config_file(), g.project.as_deref())?
        .with_ci(crate::ci::detect(&|name| std::env::var(name).ok()))?;
    let from_env = std::env::var("VENVIMG_REPOSITORY")
        .ok()
        .filter(|v| !v.trim().is_empty());
    if let Some(value) = &g.repository {
        config.override_repository("--repository", value.trim())?;
    } else if let Some(value) = from_env {
        config.override_repository("VENVIMG_REPOSITORY", value.trim())?;
    }
    let fields = config.placeholders();
    if !fields.is_empty() {
        return Err(UsageError::Placeholders {
            file: config.file.clone(),
            fields,
        }
        .into());
    }
    Ok(config)
}

async fn run(cli: Cli, printer: &Printer) -> Result<(), Error> {
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "venvimg", &mut script);
            write_stdout(&script)
        }
        Command::Man(args) => man(&args, printer),
        Command::Init(args) => {
            // init writes here unless told where: it never edits a parent's file.
            let file = cli.global.config.clone().unwrap_or_else(|| {
                cli.global
                    .project
                    .clone()
                    .unwrap_or_default()
                    .join(crate::config::DEFAULT_CONFIG_FILE)
            });
            crate::commands::init(&file, cli.global.project.as_deref(), &args, printer)
        }
        Command::Inspect(args) => {
            let transport = inspect_transport(&cli.global, &args.image, printer)?;
            crate::commands::inspect(transport, &args, printer).await
        }
        Command::Plan(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            config.check_ci_workdir()?;
            printer.info(config.workdir_line());
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::plan::plan(&config, &registry, &args, printer).await
        }
        Command::Run(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::run::run(&config, &registry, &args, printer).await
        }
        Command::Restore(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::restore::restore(&config, &registry, &args, printer).await
        }
        Command::Shell(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::run::shell(&config, &registry, &args, printer).await
        }
        Command::Prune(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::prune::prune(&config, &registry, &args, printer).await
        }
        Command::Build(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            config.check_ci_workdir()?;
            printer.info(config.workdir_line());
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::build::run(&config, &registry, &args, printer).await
        }
        Command::Verify(args) => {
            crate::cancel::sweep_stale();
            let config = load_config(&cli.global)?;
            let registry = connect(&cli.global, &config, printer)?;
            crate::commands::verify::verify(&config, &registry, &args, printer).await
        }
    }
}

/// Bytes for stdout as they are (a script, a roff page): a reader that goes away early
/// (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            path: "<stdout>".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `venvimg man`: the top page on stdout, or every command's page into `--dir`. Pages
/// carry no date, so they are the same bytes for the same version.
fn man(args: &ManArgs, printer: &Printer) -> Result<(), Error> {
    let cmd = Cli::command();
    let Some(dir) = &args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .map_err(|source| Error::Io {
                path: "<man page>".into(),
                source,
            })?;
        return write_stdout(&page);
    };
    let io = |source| Error::Io {
        path: dir.clone(),
        source,
    };
    fs_err::create_dir_all(dir).map_err(io)?;
    clap_mangen::generate_to(cmd, dir).map_err(io)?;
    printer.info(format!(
        "wrote venvimg.1 and a page per command to {} (`man -l {}` shows one)",
        dir.display(),
        dir.join("venvimg.1").display()
    ));
    Ok(())
}

impl GlobalArgs {
    /// `--config`, else the nearest venvimg.yaml from the working folder up, else
    /// venvimg.yaml here (whose absence the loader reports).
    pub fn config_file(&self) -> PathBuf {
        if let Some(file) = &self.config {
            return file.clone();
        }
        let name = crate::config::DEFAULT_CONFIG_FILE;
        let start = self.project.clone().unwrap_or_default();
        let here = start.join(name);
        if here.is_file() {
            return here;
        }
        let from = if start.as_os_str().is_empty() {
            std::env::current_dir()
        } else {
            std::path::absolute(&start)
        };
        from.ok()
            .and_then(|dir| {
                dir.ancestors()
                    .skip(1)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
            .unwrap_or(here)
    }
}

/// `--username` and the password read by `--password-stdin`: only what the command line
/// gave.
fn flag_credentials(g: &GlobalArgs) -> Result<ExplicitCredentials, Error> {
    let mut flags = ExplicitCredentials {
        username: g.username.clone().filter(|u| !u.is_empty()),
        password: None,
    };
    if g.password_stdin {
        let mut pw = String::new();
        std::io::stdin().read_line(&mut pw).map_err(|e| {
            Error::Usage(UsageError::Flag {
                flag: "--password-stdin",
                value: None,
                why: format!("cannot read standard input: {e}"),
            })
        })?;
        let pw = pw.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            return Err(UsageError::Flag {
                flag: "--password-stdin",
                value: None,
                why: "standard input was empty; pipe the password in".into(),
            }
            .into());
        }
        flags.password = Some(pw);
    }
    Ok(flags)
}

/// VENVIMG_USERNAME / VENVIMG_PASSWORD, each overridden by its flag.
fn env_and_flag_credentials(flags: ExplicitCredentials) -> ExplicitCredentials {
    let env = ExplicitCredentials::from_env();
    ExplicitCredentials {
        username: flags.username.or(env.username),
        password: flags.password.or(env.password),
    }
}

/// Transport settings from the global flags: `explicit` credentials go to the registry
/// `explicit_for` only; messages go to `printer`.
pub fn transport(
    g: &GlobalArgs,
    explicit: ExplicitCredentials,
    explicit_for: Option<String>,
    printer: &Printer,
) -> Result<Transport, Error> {
    for host in &g.skip_tls_verify {
        if host.is_empty() {
            return Err(UsageError::Flag {
                flag: "--skip-tls-verify",
                value: None,
                why: "name the registry whose certificate is not to be verified: \
                      --skip-tls-verify HOST[:PORT] (repeat it for several registries); every \
                      other registry and token service stays verified"
                    .into(),
            }
            .into());
        }
        if host.contains('/') || host.chars().any(char::is_whitespace) {
            return Err(UsageError::Flag {
                flag: "--skip-tls-verify",
                value: Some(host.clone()),
                why: "name a registry as HOST[:PORT], without a scheme or path (e.g. --skip-tls-verify registry.example:5000)".into(),
            }
            .into());
        }
    }
    let notes_printer = printer.clone();
    let notes: Notes = Arc::new(move |level: Level, msg: &str| match level {
        Level::Warning => notes_printer.warn(msg),
        Level::Detail => notes_printer.verbose(msg),
    });
    Ok(Transport {
        insecure: g.insecure_registry.clone(),
        skip_tls_verify: g.skip_tls_verify.clone(),
        ca_files: g.ca_file.clone(),
        explicit,
        explicit_for,
        monolithic: g.chunk_size.is_none(),
        chunk_size: g.chunk_size.map(|m| (m.max(1) as usize) << 20),
        notes: Some(notes),
    })
}

/// For `inspect IMAGE`: `--username` with `--password-stdin` go to IMAGE's registry;
/// VENVIMG_USERNAME / VENVIMG_PASSWORD only to the registry of venvimg.yaml's
/// `repository:`, when there is a venvimg.yaml and IMAGE lives there.
fn inspect_transport(g: &GlobalArgs, image: &str, printer: &Printer) -> Result<Transport, Error> {
    let local = ["oci:", "oci-archive:", "docker-archive:"]
        .iter()
        .any(|p| image.starts_with(p));
    let target = (!local)
        .then(|| image.parse::<oci_client::Reference>().ok())
        .flatten()
        .map(|r| r.resolve_registry().to_string());
    let flags = flag_credentials(g)?;
    if flags.is_complete() {
        return transport(g, flags, target, printer);
    }
    let config_file = g.config_file();
    let configured = if config_file.is_file() {
        match Config::load(&config_file) {
            Ok(c) => Some(c.repository.resolve_registry().to_string()),
            Err(e) => {
                printer.verbose(format!(
                    "{} does not load ({e}); VENVIMG_USERNAME/VENVIMG_PASSWORD are not used",
                    config_file.display()
                ));
                None
            }
        }
    } else {
        None
    };
    let partial = flags.username.is_some() || flags.password.is_some();
    if let (true, Some(t)) = (partial, &target) {
        if configured.as_deref() != Some(t.as_str()) {
            let (flag, needs) = if flags.username.is_some() {
                ("--username", "--password-stdin")
            } else {
                ("--password-stdin", "--username")
            };
            return Err(UsageError::Requires {
                flag,
                needs,
                why: format!(
                    "give both for {t}, the registry of IMAGE `{image}`; VENVIMG_USERNAME/VENVIMG_PASSWORD are only for {}",
                    match &configured {
                        Some(c) => format!("{c} (the registry of `repository:` in {})", config_file.display()),
                        None => format!("the registry of venvimg.yaml's `repository:` (no {} here)", config_file.display()),
                    }
                ),
            }
            .into());
        }
    }
    transport(g, env_and_flag_credentials(flags), configured, printer)
}

pub fn connect(g: &GlobalArgs, config: &Config, printer: &Printer) -> Result<Registry, Error> {
    let target = config.repository.resolve_registry().to_string();
    let explicit = env_and_flag_credentials(flag_credentials(g)?);
    let mut t = transport(g, explicit, Some(target), printer)?;
    t.insecure
        .extend(config.insecure_registries.iter().cloned());
    Ok(Registry::new(
        t,
        &[
            config.repository.resolve_registry(),
            config.base.resolve_registry(),
        ],
    )?)
}

/// The CI output name of a venv directory (kept here for the tests' convenience).
pub use crate::commands::report::ci_output_name;
