//! `venvimg init`: a commented `venvimg.yaml` for the project next to it, from what nox
//! says the noxfile defines and which input files the project has.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_client::Reference;

use crate::config::{BuilderKind, Config, DEFAULT_ENVDIR, DEFAULT_WORKDIR};
use crate::error::{Error, UsageError};
use crate::model::Platform;
use crate::outputs::OutputError;
use crate::printer::Printer;
use crate::python::hook::{ListedSession, PlanSpec};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where job images go: HOST[:PORT]/PATH, without a tag. Without it, a placeholder
    /// to edit is written.
    #[arg(long, value_name = "REF")]
    pub repository: Option<String>,
    /// The image with python, uv and nox that the venvs are layered onto. Without it, a
    /// placeholder to edit is written.
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// Which engine runs the installs (default: podman when installed, else docker).
    #[arg(long, value_parser = ["podman", "docker", "local"])]
    pub builder: Option<String>,
    /// Where CI checks the project out (editable installs point there).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_WORKDIR)]
    pub workdir: String,
    /// Overwrite an existing configuration file.
    #[arg(long)]
    pub force: bool,
}

use crate::config::{BASE_PLACEHOLDER, REPOSITORY_PLACEHOLDER};

/// Everything the written file depends on, gathered before anything is written.
#[derive(Debug, Clone)]
pub struct InitFacts {
    pub repository: Option<String>,
    pub base: Option<String>,
    pub builder: BuilderKind,
    pub workdir: String,
    /// `root:`, when the file is written outside the project's root (`--project`).
    pub root: Option<String>,
    /// Every session the noxfile defines, `default=False` ones included, each saying
    /// whether nox selects it by default.
    pub sessions: Vec<ListedSession>,
}

/// A YAML scalar for `s`: plain when that reads back as the same string, else
/// double-quoted (JSON's string syntax is YAML's double-quoted scalar).
fn yaml_scalar(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+".contains(c))
        && !s.contains(": ")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialise")
    }
}

/// `root:` for a config file in `config_dir` and the project at `project`: `None` when
/// they are the same folder, `..`-steps when the file is below the project (`ci/`), the
/// path down when it is above.
fn relative_root(config_dir: &Path, project: &Path) -> Result<Option<String>, Error> {
    let canon = |p: &Path| {
        fs_err::canonicalize(p).map_err(|e| {
            Error::Usage(UsageError::Path {
                path: p.to_path_buf(),
                why: format!("{e}; create the folder first"),
            })
        })
    };
    let (c, p) = (canon(config_dir)?, canon(project)?);
    if c == p {
        return Ok(None);
    }
    if let Ok(down) = p.strip_prefix(&c) {
        return Ok(Some(down.to_string_lossy().into_owned()));
    }
    if let Ok(up) = c.strip_prefix(&p) {
        let steps = vec![".."; up.components().count()];
        return Ok(Some(steps.join("/")));
    }
    Err(UsageError::Flag {
        flag: "--project",
        value: Some(project.display().to_string()),
        why: format!(
            "the config file's folder {} is neither inside nor above it; put venvimg.yaml in the project",
            config_dir.display()
        ),
    }
    .into())
}

/// The first line of a session's docstring, for a comment.
fn summary(s: &ListedSession) -> Option<String> {
    let d = s.description.lines().next()?.trim();
    (!d.is_empty()).then(|| d.to_string())
}

/// The commented `venvimg.yaml` for `facts`. Every field has a one-line comment above it.
pub fn render_config(facts: &InitFacts) -> String {
    let mut y = String::new();
    let mut line = |s: &str| {
        y.push_str(s);
        y.push('\n');
    };
    line("# venvimg configuration, written by `venvimg init`.");
    line("# Each session's key hashes these settings (except insecure_registries and build_env),");
    line("# the noxfile, and every file the session's installs read (found by venvimg): change");
    line("# one, and `venvimg build` rebuilds the sessions it concerns.");
    line("");
    line("# Where job images are pushed: HOST[:PORT]/PATH without a tag (venvimg picks the tags).");
    match &facts.repository {
        Some(r) => line(&format!("repository: {}", yaml_scalar(r))),
        None => {
            line("# CHANGE ME: a placeholder; set your registry path (or rerun `venvimg init --repository REF --force`).");
            line(&format!("repository: {REPOSITORY_PLACEHOLDER}"));
        }
    }
    line("# The image the venvs are layered onto (python, uv and nox inside); resolved to a digest at every plan.");
    match &facts.base {
        Some(b) => line(&format!("base: {}", yaml_scalar(b))),
        None => {
            line("# CHANGE ME: a placeholder; set the image your CI jobs run in (or rerun `venvimg init --base REF --force`).");
            line(&format!("base: {BASE_PLACEHOLDER}"));
        }
    }
    if let Some(root) = &facts.root {
        line("# The project's root (noxfile, pyproject.toml, inputs), relative to this file's folder.");
        line(&format!("root: {}", yaml_scalar(root)));
    }
    line("# Platform of the images, OS/ARCH[/VARIANT]; unset means this machine's (uncomment to pin it).");
    line(&format!("# platform: {}", Platform::host()));
    line("# Where the venvs live in the job image (nox --envdir); absolute, outside the checkout.");
    line(&format!("envdir: {DEFAULT_ENVDIR}"));
    line("# Where CI checks the project out (editable installs point here): set it to your CI's checkout path; GitHub container jobs use /__w/<repo>/<repo>, Forgejo's runner a similar /workspace/<owner>/<repo>.");
    line(&format!("workdir: {}", yaml_scalar(&facts.workdir)));
    line("# Which engine runs the installs: podman or docker (in the base image), or local (this machine, e.g. a CI job running in the base image at workdir).");
    line(&format!("builder: {}", facts.builder.as_str()));
    line("# Extra files that key every session whole; rarely needed: venvimg finds the files each");
    line("# session's installs read (requirements, constraints, pyproject.toml, uv.lock entries).");
    line("# inputs: [tools/versions.json]");
    line("# How old the image of a floating session (installs nothing pins) may get, e.g. 7d.");
    line("# refresh: 7d");
    line("# Layer compression: gzip (every engine) or zstd (faster; podman, containerd, Docker >= 23).");
    line("compression: gzip");
    line("# uid:gid of the files in the layers (the user the jobs run as).");
    line("owner: \"0:0\"");
    line("# When the installs freeze the project's own code non-editable: refuse, editable (reinstall it editable from workdir) or keyed (key the project's files too).");
    line("project: refuse");
    line("# How venvs are built: install-only (nox --install-only) or run (the whole session, for noxfiles that use command output while installing).");
    line("build: install-only");
    let selected = |s: &ListedSession| s.selected;
    let listed = facts.sessions.iter().filter(|s| selected(s)).count();
    line("# nox sessions to build, from `nox --list`; a map sets per-session options, e.g. `- {name: docs, build: run}`.");
    if facts.sessions.is_empty() || listed == 0 {
        // `sessions:` with no entries would be null; say so and let nox choose.
        line("# (none listed: without `sessions`, venvimg builds what `nox --list` selects)");
        line("# sessions:");
    } else {
        line("sessions:");
    }
    for s in &facts.sessions {
        let comment = summary(s).map(|d| format!("  # {d}")).unwrap_or_default();
        if selected(s) {
            line(&format!("  - {}{comment}", yaml_scalar(&s.session)));
        } else {
            let why = if s.default {
                "not in nox.options.sessions"
            } else {
                "default=False"
            };
            line(&format!(
                "  # - {}  # not in nox's default selection ({why}){}",
                yaml_scalar(&s.session),
                summary(s).map(|d| format!("; {d}")).unwrap_or_default()
            ));
        }
    }
    line("# Registries reached over plain HTTP (HOST[:PORT]); loopback registries always are. Not part of the key.");
    line("# insecure_registries: [registry.internal:5000]");
    line("# Extra environment for every build (package index, certificates); not part of the key, so keep secrets here.");
    line("# build_env: {UV_INDEX_URL: \"https://pypi.internal/simple\"}");
    y
}

fn check_reference(flag: &'static str, value: &str, repository: bool) -> Result<(), Error> {
    let r: Reference = value.parse().map_err(|e| {
        Error::Usage(UsageError::Flag {
            flag,
            value: Some(value.to_string()),
            why: format!(
                "not an image reference ({e}); write HOST[:PORT]/PATH{}",
                if repository { "" } else { "[:TAG]" }
            ),
        })
    })?;
    if repository && (r.digest().is_some() || value.rsplit('/').next().unwrap_or("").contains(':'))
    {
        return Err(UsageError::Flag {
            flag,
            value: Some(value.to_string()),
            why: "names a tag or digest; give the repository only (venvimg chooses the tags)"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// Every session the noxfile defines, listed by venvimg's hook: in the base image when a
/// container builder and `--base` are given (the project's code then never runs here),
/// else with this machine's nox (environment cleared of credentials).
fn list_all_sessions(
    dir: &Path,
    builder: BuilderKind,
    base: Option<&str>,
    printer: &Printer,
) -> Result<Vec<ListedSession>, Error> {
    let spec = PlanSpec {
        envdir: DEFAULT_ENVDIR.to_string(),
        groups: Vec::new(),
        exports: Vec::new(),
    };
    let (kind, image, insecure) = match (builder, base) {
        (BuilderKind::Local, _) | (_, None) => (BuilderKind::Local, String::new(), false),
        (k, Some(b)) => {
            let r: Reference = b.parse().map_err(|e| {
                Error::Usage(UsageError::Flag {
                    flag: "--base",
                    value: Some(b.to_string()),
                    why: format!("{e}"),
                })
            })?;
            (
                k,
                b.to_string(),
                crate::registry::is_loopback(r.resolve_registry()),
            )
        }
    };
    printer.verbose(format!(
        "listing the sessions with {}",
        if kind == BuilderKind::Local {
            "nox on this machine".to_string()
        } else {
            format!("{kind} in {image}")
        }
    ));
    let place = crate::engine::HookPlace {
        kind,
        image,
        insecure_pull: insecure,
        platform: Platform::host(),
        env: BTreeMap::new(),
    };
    let (out, _) =
        crate::engine::run_hook_plan(&place, dir, DEFAULT_WORKDIR, DEFAULT_ENVDIR, &spec)?;
    Ok(out.listing)
}

fn default_builder() -> BuilderKind {
    crate::engine::installed_engine().unwrap_or(BuilderKind::Podman)
}

/// Write `config_file` for the project at `project` (default: the file's folder); a file
/// outside the project's root gets a `root:` pointing back to it.
pub fn init(
    config_file: &Path,
    project: Option<&Path>,
    args: &InitArgs,
    printer: &Printer,
) -> Result<(), Error> {
    let file: PathBuf = config_file.to_path_buf();
    let config_dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (dir, root) = match project {
        None => (config_dir.clone(), None),
        Some(p) => (p.to_path_buf(), relative_root(&config_dir, p)?),
    };
    if file.exists() && !args.force {
        return Err(UsageError::Path {
            path: file,
            why: "already exists; pass --force to overwrite it".into(),
        }
        .into());
    }
    let noxfile = dir.join("noxfile.py");
    if !noxfile.is_file() {
        return Err(UsageError::Path {
            path: noxfile,
            why: "not found; run `venvimg init` in the project (next to noxfile.py), or pass --config DIR/venvimg.yaml".into(),
        }
        .into());
    }
    if let Some(r) = &args.repository {
        check_reference("--repository", r, true)?;
    }
    if let Some(b) = &args.base {
        check_reference("--base", b, false)?;
    }
    let builder = match args.builder.as_deref() {
        Some("docker") => BuilderKind::Docker,
        Some("local") => BuilderKind::Local,
        Some(_) => BuilderKind::Podman,
        None => default_builder(),
    };
    let sessions = list_all_sessions(&dir, builder, args.base.as_deref(), printer)?;
    if sessions.is_empty() {
        return Err(OutputError::NoSessions { noxfile }.into());
    }
    let facts = InitFacts {
        repository: args.repository.clone(),
        base: args.base.clone(),
        builder,
        workdir: args.workdir.clone(),
        root,
        sessions,
    };
    let text = render_config(&facts);
    // What we write must load: check it the way every command will read it.
    Config::parse(&text, &file, &config_dir)?;

    let mut tmp = tempfile::Builder::new()
        .prefix(".venvimg-")
        .tempfile_in(&config_dir)
        .map_err(|s| OutputError::io(&config_dir, s))?;
    tmp.write_all(text.as_bytes())
        .map_err(|s| OutputError::io(tmp.path(), s))?;
    crate::outputs::layout::set_file_mode(tmp.as_file(), 0o644)
        .map_err(|s| OutputError::io(&file, s))?;
    if args.force {
        tmp.persist(&file)
            .map_err(|e| OutputError::io(&file, e.error))?;
    } else {
        // Refuse to replace a file that appeared meanwhile.
        tmp.persist_noclobber(&file).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(UsageError::Path {
                    path: file.clone(),
                    why: "already exists; pass --force to overwrite it".into(),
                })
            } else {
                OutputError::io(&file, e.error).into()
            }
        })?;
    }

    let skipped = facts.sessions.iter().filter(|s| !s.selected).count();
    printer.info(format!(
        "wrote {}: {} session(s){}",
        file.display(),
        facts.sessions.len() - skipped,
        if skipped > 0 {
            format!(" ({skipped} more commented out: not in nox's default selection)")
        } else {
            String::new()
        },
    ));
    if facts.repository.is_none() || facts.base.is_none() {
        printer.warn(format!(
            "{}: `repository` and `base` hold placeholders (CHANGE ME); set them, or rerun with --repository REF --base REF --force",
            file.display()
        ));
    }
    printer.info(format!(
        "check `workdir: {}` is where CI checks the project out, then run `venvimg plan`",
        facts.workdir
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BuildMode;

    fn session(sig: &str, desc: Option<&str>, selected: bool) -> ListedSession {
        ListedSession {
            session: sig.into(),
            name: sig.split(['-', '(']).next().unwrap().into(),
            signatures: vec![sig.into()],
            description: desc.unwrap_or("").to_string(),
            python: serde_json::Value::Null,
            tags: Vec::new(),
            default: selected,
            selected,
        }
    }

    fn facts(dir: &Path) -> InitFacts {
        for f in ["pyproject.toml", "uv.lock", "noxfile.py"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        InitFacts {
            repository: Some("127.0.0.1:5000/acme/app/ci".into()),
            base: Some("127.0.0.1:5000/base/python-nox:bookworm".into()),
            builder: BuilderKind::Local,
            workdir: "/__w/app/app".into(),
            root: None,
            sessions: vec![
                session("tests-3.12", Some("Run the tests.\n\nMore text."), true),
                session("tests(django='4.2')", None, true),
                session("3.10", Some("odd name: yes"), true),
                session("docs", Some("Build the docs"), false),
            ],
        }
    }

    #[test]
    fn rendered_config_round_trips_through_the_parser() {
        let dir = tempfile::tempdir().unwrap();
        let f = facts(dir.path());
        let text = render_config(&f);
        let c = Config::parse(&text, &dir.path().join("venvimg.yaml"), dir.path())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.repository.repository(), "acme/app/ci");
        assert_eq!(c.base.tag(), Some("bookworm"));
        assert_eq!(c.envdir, "/opt/nox");
        assert_eq!(c.workdir, "/__w/app/app");
        assert_eq!(c.builder, BuilderKind::Local);
        // No frozen list of files: venvimg finds what each session reads.
        assert!(c.inputs.is_empty(), "{text}");
        assert_eq!(c.default_build, BuildMode::InstallOnly);
        let names: Vec<String> = c.sessions.unwrap().into_iter().map(|s| s.name).collect();
        // `docs` is defined but not selected by default: listed, commented out.
        assert_eq!(names, ["tests-3.12", "tests(django='4.2')", "3.10"]);
        assert!(
            text.contains("  # - docs  # not in nox's default selection (default=False)"),
            "{text}"
        );
        assert!(
            text.contains("  - tests-3.12  # Run the tests.\n"),
            "{text}"
        );
    }

    #[test]
    fn every_field_has_a_comment_line_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = render_config(&facts(dir.path()));
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let is_field = l.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            let is_commented_field = l.starts_with("# ")
                && l[2..].split_once(": ").is_some_and(|(k, _)| {
                    [
                        "platform",
                        "insecure_registries",
                        "build_env",
                        "sessions",
                        "inputs",
                        "refresh",
                    ]
                    .contains(&k)
                });
            if is_field || is_commented_field {
                assert!(lines[i - 1].starts_with('#'), "no comment above {l:?}");
            }
        }
    }

    #[test]
    fn placeholders_parse_and_say_change_me() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = facts(dir.path());
        f.repository = None;
        f.base = None;
        let text = render_config(&f);
        assert_eq!(text.matches("# CHANGE ME").count(), 2, "{text}");
        let c = Config::parse(&text, Path::new("venvimg.yaml"), dir.path()).unwrap();
        assert_eq!(c.repository.registry(), "registry.example.com");
    }

    #[test]
    fn nothing_selected_leaves_sessions_to_nox() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = facts(dir.path());
        for s in &mut f.sessions {
            s.selected = false;
        }
        let text = render_config(&f);
        let c = Config::parse(&text, Path::new("venvimg.yaml"), dir.path()).unwrap();
        assert!(c.sessions.is_none(), "{text}");
    }

    #[test]
    fn scalars_are_quoted_when_yaml_would_change_them() {
        for s in ["tests-3.12", "/src", "registry.example.com/a/b:1"] {
            assert_eq!(yaml_scalar(s), s);
        }
        for s in [
            "3.10",
            "yes",
            "no",
            "tests(django='4.2')",
            "a: b",
            "",
            "#x",
            "-x",
        ] {
            let q = yaml_scalar(s);
            assert!(q.starts_with('"'), "{s} → {q}");
            let back: String = serde_yaml::from_str(&q).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for (flag, v, repo) in [
            ("--repository", "127.0.0.1:5000/a/b:tag", true),
            ("--repository", "UPPER CASE/x", true),
            ("--base", "not a ref", false),
        ] {
            let err = check_reference(flag, v, repo).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().starts_with(&format!("{flag} `{v}`: ")),
                "{err}"
            );
        }
        check_reference("--base", "127.0.0.1:5000/base:1", false).unwrap();
    }
}
