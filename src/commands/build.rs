//! `venvimg build`: the flags, the build stage ([`crate::builder`]) over every platform
//! picked, and the report: a table (or JSON), CI outputs, exit 1 when a session failed.

use std::time::Instant;

use crate::builder::{self, BuildOptions};
use crate::config::Config;
use crate::error::Error;
use crate::printer::Printer;
use crate::registry::Registry;

use super::report::BuildReport;
use super::BuilderArgs;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct BuildArgs {
    /// Only these sessions, as nox takes them: `-s tests lint`, repeatable; a function name
    /// stands for all its parametrizations. (NOXSESSION is not read.)
    #[arg(long = "session", short = 's', value_name = "NAME", num_args = 1..)]
    pub sessions: Vec<String>,
    /// Rebuild sessions whose image already exists.
    #[arg(long)]
    pub force: bool,
    /// Build and compose, but push nothing.
    #[arg(long)]
    pub no_push: bool,
    /// Also write the all-sessions image: oci:DIR, oci-archive:FILE or docker-archive:FILE.
    #[arg(long, value_name = "DEST")]
    pub output: Vec<String>,
    /// Load the all-sessions image into local podman (or docker) storage.
    #[arg(long)]
    pub load: bool,
    #[command(flatten)]
    pub builder: BuilderArgs,
    /// For CI: refuse to build (exit 2) when uv.lock does not match pyproject.toml or
    /// `sessions:` leaves out a session nox runs by default, and fail (exit 1, push
    /// nothing) when a `locked:` session installs packages its key does not cover.
    #[arg(long)]
    pub strict: bool,
    /// Stop at the first session that fails to build (default: build the others, push
    /// them, report each failure, exit 1).
    #[arg(long)]
    pub fail_fast: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Append `name=value` lines with each session's image to $GITHUB_OUTPUT / $FORGEJO_OUTPUT.
    #[arg(long)]
    pub ci_output: bool,
    /// Only this platform of `platforms:` (repeatable; default: all, foreign ones under
    /// emulation): a runner of each architecture builds its own, and each session's
    /// index is written once every platform's image is in the registry.
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Vec<String>,
}

impl BuildArgs {
    /// What the build stage is asked to do.
    pub fn options(&self) -> BuildOptions {
        self.builder.apply(BuildOptions {
            sessions: self.sessions.clone(),
            force: self.force,
            no_push: self.no_push,
            output: self.output.clone(),
            load: self.load,
            strict: self.strict,
            fail_fast: self.fail_fast,
            platform: self.platform.clone(),
            ..BuildOptions::default()
        })
    }
}

pub async fn run(
    config: &Config,
    registry: &Registry,
    args: &BuildArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let started = Instant::now();
    if args.ci_output {
        super::report::ci_output_file()?;
    }
    let built = builder::build(config, registry, &args.options(), printer).await?;
    let report = BuildReport::of(&built, started, !args.no_push, registry);
    report.render(args.json, args.ci_output, printer)?;
    built.exit()
}
