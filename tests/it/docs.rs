//! The documentation (README.md and the site under docs/) cannot drift from the binary:
//! - docs/content/reference/cli.md is rendered from clap's `Cli::command()`: every
//!   command and flag with its help, value name, default and possible values; a mismatch
//!   fails and `VENVIMG_BLESS=1` rewrites the file;
//! - docs/content/reference/config.md names every field venvimg.yaml accepts, every
//!   session option and every `locked:` option, as the parser lists them in its own
//!   "unknown field" errors (serde's list of the struct's fields; the session options'
//!   message);
//! - the repository paths that messages and comments point users at
//!   (`docs/content/` and a page's path) exist, and README.md's relative links resolve.
//!
//! `mkdocs build --strict` (every page in the nav, every link and anchor found) runs in
//! `.ci/run`; these tests need neither mkdocs nor the test environment.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

const CLI_MD: &str = "docs/content/reference/cli.md";
const CONFIG_MD: &str = "docs/content/reference/config.md";
const BLESS: &str = "VENVIMG_BLESS";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Markdown-safe text outside code spans: `<`, `>` and `*` would start HTML or emphasis.
fn escape(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 {
            out.push_str(part);
        } else {
            out.push_str(
                &part
                    .replace('\\', "\\\\")
                    .replace('*', "\\*")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;"),
            );
        }
    }
    out
}

/// A flag as typed: `-s`, `--session <NAME>`; a positional: `<SHELL>`.
fn flag_name(arg: &clap::Arg) -> String {
    let value = || {
        arg.get_value_names()
            .map(|v| {
                v.iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()))
    };
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if arg.is_positional() {
        return value();
    }
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("--{l}"));
    }
    let mut name = names.join(", ");
    if takes_value {
        let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
        if optional {
            name.push_str(&format!(" [{}]", value()));
        } else {
            name.push(' ');
            name.push_str(&value());
        }
    }
    name
}

fn render_arg(out: &mut String, arg: &clap::Arg) {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut facts = Vec::new();
    if arg.is_required_set() && !arg.is_positional() {
        facts.push("required".to_string());
    }
    if matches!(
        arg.get_action(),
        clap::ArgAction::Append | clap::ArgAction::Count
    ) {
        facts.push("repeatable".to_string());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if !defaults.is_empty() && !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        facts.push(format!("default: {}", defaults.join(", ")));
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| format!("`{}`", p.get_name()))
        .collect();
    if !possible.is_empty() && !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        facts.push(format!("one of {}", possible.join(", ")));
    }
    if let Some(env) = arg.get_env() {
        facts.push(format!("env `{}`", env.to_string_lossy()));
    }
    let _ = write!(out, "- `{}`", flag_name(arg));
    if !facts.is_empty() {
        let _ = write!(out, " ({})", facts.join("; "));
    }
    let mut paragraphs = help.split("\n\n").map(|p| escape(p.trim()));
    match paragraphs.next() {
        Some(first) if !first.is_empty() => {
            let _ = writeln!(out, ": {}", first.replace('\n', " "));
        }
        _ => out.push('\n'),
    }
    for p in paragraphs {
        let _ = writeln!(out, "\n    {}", p.replace('\n', " "));
    }
}

fn render_command(out: &mut String, path: &str, cmd: &clap::Command) {
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = writeln!(out, "## `{path}`\n");
    for p in about.split("\n\n") {
        let _ = writeln!(out, "{}\n", escape(p.trim()).replace('\n', " "));
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim().trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let args: Vec<&clap::Arg> = cmd.get_arguments().filter(|a| shown(a)).collect();
    if args.is_empty() {
        out.push_str("No flags of its own; the global flags apply.\n\n");
    } else {
        for arg in args {
            render_arg(out, arg);
        }
        out.push('\n');
    }
}

/// A command's own arguments as its help lists them: not hidden, not clap's `--help` /
/// `--version`, not the global flags (listed once, at the top).
fn shown(arg: &clap::Arg) -> bool {
    !arg.is_hide_set()
        && !arg.is_global_set()
        && !["help", "version"].contains(&arg.get_id().as_str())
}

/// The Markdown reference of every command and flag, from clap (the built command: value
/// names and counts are settled by `build`).
fn render_cli_reference() -> String {
    let mut cmd = venvimg::cli::Cli::command();
    cmd.build();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated from venvimg's clap definitions by tests/it/docs.rs: do not edit.\n     \
         `{BLESS}=1 cargo nextest run -E 'test(docs::)'` rewrites it. -->\n\n\
         # Command-line flags\n\n\
         Every command and flag of `venvimg {}`, from the same definitions as `venvimg --help` \
         and the man pages (`venvimg man`). What each command does, step by step, is in \
         [Commands](commands.md).\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "## Global flags\n");
    out.push_str(
        "These go before or after the command (`venvimg -v plan`, `venvimg plan -v`). \
         `-h`, `--help` prints a command's help, `-V`, `--version` venvimg's version.\n\n",
    );
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !["help", "version"].contains(&a.get_id().as_str()))
    {
        render_arg(&mut out, arg);
    }
    out.push('\n');
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        render_command(&mut out, &format!("venvimg {}", sub.get_name()), sub);
    }
    out.trim_end().to_string() + "\n"
}

/// Compare a generated file with the committed one; `VENVIMG_BLESS=1` writes it.
fn check_generated(rel: &str, expected: &str) {
    let path = root().join(rel);
    if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
        std::fs::write(&path, expected).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != expected {
        let first = committed
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(expected.lines().count()));
        panic!(
            "{rel} is not what the code generates (first difference at line {}):\n  committed: {:?}\n  generated: {:?}\n\
             Rewrite it with `{BLESS}=1 cargo nextest run -E 'test(docs::)'` and commit it.",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            expected.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn the_cli_reference_is_generated_from_clap() {
    let text = render_cli_reference();
    // Every command a user sees is there.
    for sub in venvimg::cli::Cli::command().get_subcommands() {
        if !sub.is_hide_set() {
            assert!(
                text.contains(&format!("## `venvimg {}`", sub.get_name())),
                "{}",
                sub.get_name()
            );
        }
    }
    check_generated(CLI_MD, &text);
}

/// The names listed after `after` in a parser's error message: the backquoted ones
/// (serde: "expected one of `repository`, `base`, ... at line 1 column 1"), else the
/// words of a plain list ("use name, project, build or refresh").
fn listed_names(message: &str, after: &str) -> Vec<String> {
    let start = message
        .find(after)
        .unwrap_or_else(|| panic!("no `{after}` in the parser's message: {message}"));
    let rest = &message[start + after.len()..];
    let rest = rest.split(['\n', ';']).next().unwrap_or(rest);
    if rest.contains('`') {
        return rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
    }
    rest.split([',', ' '])
        .map(|w| w.trim_matches(|c: char| c == '.' || c.is_whitespace()))
        .filter(|w| !w.is_empty() && *w != "or" && *w != "and")
        .map(str::to_string)
        .collect()
}

fn config_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("noxfile.py"), "").unwrap();
    let file = dir.path().join("venvimg.yaml");
    match venvimg::config::Config::parse(yaml, &file, dir.path()) {
        Ok(_) => panic!("venvimg accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// Rows of the Markdown tables under `heading` (up to the next heading of its level or
/// above): each row's first cell, its backticks removed.
fn table_keys(page: &str, heading: &str) -> Vec<String> {
    let start = page
        .find(heading)
        .unwrap_or_else(|| panic!("{CONFIG_MD} has no `{heading}`"));
    let rest = &page[start + heading.len()..];
    let level = heading.chars().take_while(|c| *c == '#').count();
    let end = rest
        .lines()
        .scan(0usize, |pos, l| {
            let at = *pos;
            *pos += l.len() + 1;
            Some((at, l))
        })
        .find(|(_, l)| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && l[hashes..].starts_with(' ')
        })
        .map(|(at, _)| at)
        .unwrap_or(rest.len());
    // Body rows only: a table's header is the row right above its `| --- |` line.
    let lines: Vec<&str> = rest[..end].lines().collect();
    let separator = |l: &str| l.starts_with("| ---") || l.starts_with("|---");
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            l.starts_with('|') && !separator(l) && !lines.get(i + 1).is_some_and(|n| separator(n))
        })
        .filter_map(|(_, l)| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn the_config_reference_names_every_field_the_parser_accepts() {
    let page = std::fs::read_to_string(root().join(CONFIG_MD)).unwrap();
    // serde's own list of RawConfig's fields, in its deny_unknown_fields error.
    let top = listed_names(&config_error("no_such_field: 1\n"), "expected one of ");
    assert!(
        top.len() > 15 && top.contains(&"repository".to_string()),
        "{top:?}"
    );
    let base = "repository: registry.example.com/acme/app/ci\nbase: registry.example.com/base:1\n";
    let session = listed_names(
        &config_error(&format!(
            "{base}sessions:\n  - {{name: tests, no_such_option: 1}}\n"
        )),
        "use ",
    );
    assert!(session.contains(&"locked".to_string()), "{session:?}");
    let locked = listed_names(
        &config_error(&format!(
            "{base}sessions:\n  - {{name: tests, locked: {{no_such_option: [a]}}}}\n"
        )),
        "use ",
    );
    assert!(locked.contains(&"only_groups".to_string()), "{locked:?}");

    let documented_top = table_keys(&page, "## Fields");
    let documented_session = table_keys(&page, "## Per-session options");
    let mut missing = Vec::new();
    for f in &top {
        if !documented_top.contains(f) {
            missing.push(format!("field `{f}` (table under `## Fields`)"));
        }
    }
    for f in &session {
        if f != "name" && !documented_session.contains(f) {
            missing.push(format!(
                "session option `{f}` (table under `## Per-session options`)"
            ));
        }
    }
    for f in &locked {
        if !page.contains(&format!("`{f}`")) && !page.contains(&format!("{{{f}:")) {
            missing.push(format!("locked option `{f}`"));
        }
    }
    let unknown: Vec<_> = documented_top.iter().filter(|f| !top.contains(f)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{CONFIG_MD} and the parser disagree:\n  not documented: {missing:#?}\n  documented but not accepted: {unknown:?}"
    );
}

fn files_under(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|x| ext.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

/// Messages, comments and workflows that point users at a documentation page name one
/// that exists (pages move; a hint must not point at nothing).
#[test]
fn every_docs_path_named_in_the_repository_exists() {
    let mut files = Vec::new();
    for dir in [
        "src", "tests", ".forgejo", ".ci", "images", "benches", "docs",
    ] {
        files_under(
            &root().join(dir),
            &["rs", "yml", "yaml", "sh", "md", "py"],
            &mut files,
        );
    }
    files.push(root().join("README.md"));
    let mut named = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (i, _) in text.match_indices("docs/content/") {
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            if !path.ends_with(".md") {
                continue;
            }
            named += 1;
            if !root().join(path).is_file() {
                missing.push(format!(
                    "{}: {path}",
                    file.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(named > 5, "only {named} docs paths found");
    assert!(missing.is_empty(), "pages that do not exist: {missing:#?}");
}

/// README.md's relative links (`[text](docs/content/...)`) resolve to files: GitHub,
/// Forgejo and crates.io show the README outside the site.
#[test]
fn the_readme_links_resolve() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut links = 0;
    let mut broken = Vec::new();
    for (i, _) in readme.match_indices("](") {
        let target: String = readme[i + 2..].chars().take_while(|c| *c != ')').collect();
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            continue;
        }
        links += 1;
        let file = target.split('#').next().unwrap();
        if !root().join(file).exists() {
            broken.push(target);
        }
    }
    assert!(links >= 5, "README.md links to the docs: {links} links");
    assert!(broken.is_empty(), "README.md links to nothing: {broken:?}");
}
