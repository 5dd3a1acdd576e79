//! Release artifacts made by the binary itself: shell completions (`venvimg completions
//! SHELL`) and man pages (`venvimg man`, `venvimg man --dir DIR`), checked with the
//! programs that consume them: a real bash running the completion function, and groff
//! rendering the roff.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;

const GROFF_HINT: &str = "groff is required by this test: `apt-get install -y groff-base` \
(`bash tests/support/testenv.sh deps` installs it)";

/// The binary under test; these tests need no registry, so no test environment.
fn venvimg() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("venvimg").expect("venvimg binary not built")
}

/// The subcommands a user sees (clap's own `help` aside).
fn subcommands() -> Vec<String> {
    venvimg::cli::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"))
}

/// What bash's completion function offers for the words of `line` (the cursor at its
/// end; a trailing space means a new, empty word), the way bash calls it on TAB.
fn bash_completes(script: &Path, line: &str) -> Vec<String> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if line.ends_with(' ') {
        words.push("");
    }
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    // `complete -p` proves the script registered its function for `venvimg`; the function
    // is then called as bash calls it: $1 the command, $2 the current word, $3 the previous.
    let driver = format!(
        r#"source '{script}'
spec=$(complete -p venvimg) || {{ echo "no completion registered for venvimg" >&2; exit 3; }}
fn=$(sed -E 's/.*-F ([^ ]+).*/\1/' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMP_TYPE=9
COMPREPLY=()
"$fn" venvimg '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display(),
        words = quoted.join(" "),
        cur = words[cword],
    );
    let out = Command::new("bash")
        .arg("--norc")
        .arg("--noprofile")
        .arg("-c")
        .arg(driver)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run bash (apt-get install -y bash)");
    stdout_of(&out, &format!("bash completion of `{line}`"))
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completion_completes_commands_flags_and_values_in_a_real_bash() {
    let tmp = tempfile::tempdir().unwrap();
    let out = venvimg().args(["completions", "bash"]).output().unwrap();
    let script = tmp.path().join("venvimg.bash");
    std::fs::write(&script, stdout_of(&out, "venvimg completions bash")).unwrap();

    assert_eq!(bash_completes(&script, "venvimg pl"), ["plan"]);
    assert_eq!(bash_completes(&script, "venvimg ma"), ["man"]);
    assert_eq!(
        bash_completes(&script, "venvimg build --ses"),
        ["--session"]
    );
    assert_eq!(bash_completes(&script, "venvimg completions f"), ["fish"]);
    let all = bash_completes(&script, "venvimg ");
    for sub in subcommands() {
        assert!(all.contains(&sub), "`venvimg <TAB>` lacks {sub}: {all:?}");
    }
}

#[test]
fn every_shell_gets_a_script_and_an_unknown_shell_is_a_usage_error() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef venvimg"),
        ("fish", "complete -c venvimg"),
        ("elvish", "edit:completion:arg-completer[venvimg]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = venvimg().args(["completions", shell]).output().unwrap();
        let text = stdout_of(&out, &format!("venvimg completions {shell}"));
        assert!(text.contains(marker), "{shell}: no `{marker}` in:\n{text}");
        assert!(text.contains("plan"), "{shell}: no `plan` in the script");
    }
    let out = venvimg().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

/// groff's rendering of `page` (warnings on, all of them: a roff mistake fails the test).
fn groff(page: &[u8], what: &str) -> String {
    let mut child = Command::new("groff")
        // -P-cbou: plain text, no bold or underline escapes.
        .args(["-man", "-Tutf8", "-P-cbou", "-ww", "-rLL=100n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run groff ({e}): {GROFF_HINT}"));
    child.stdin.take().unwrap().write_all(page).unwrap();
    let out = child.wait_with_output().unwrap();
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.trim().is_empty(),
        "groff -man on {what}: {}\n{warnings}",
        out.status
    );
    // -Tutf8 bolds and underlines by overstriking: keep the letters only.
    let mut text = String::new();
    let mut chars = String::from_utf8_lossy(&out.stdout).into_owned();
    chars = chars.replace("\u{2010}", "-").replace("\u{2212}", "-");
    let mut it = chars.chars().peekable();
    while let Some(c) = it.next() {
        if it.peek() == Some(&'\u{8}') {
            it.next();
            continue;
        }
        text.push(c);
    }
    text
}

#[test]
fn man_page_is_roff_that_groff_renders_with_every_command() {
    let out = venvimg().arg("man").output().unwrap();
    let page = stdout_of(&out, "venvimg man");
    assert!(page.contains(".TH venvimg 1"), "no .TH line:\n{page}");
    let text = groff(page.as_bytes(), "venvimg man");
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS"] {
        assert!(
            text.lines().any(|l| l.trim() == section),
            "no {section} section:\n{text}"
        );
    }
    for sub in subcommands() {
        assert!(
            text.contains(&format!("venvimg-{sub}(1)")),
            "the rendered page does not list {sub}:\n{text}"
        );
    }
    assert!(text.contains("--config"), "{text}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("v{version}")), "{text}");

    // man itself (man-db) formats the same file, as a user's `man -l` would.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("venvimg.1");
    std::fs::write(&file, &page).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&file)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run man ({e}): `apt-get install -y man-db` (testenv.sh deps does)")
        });
    let text = stdout_of(&out, "man -l venvimg.1");
    assert!(text.contains("SUBCOMMANDS"), "{text}");
}

#[test]
fn man_dir_writes_a_page_per_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share/man/man1");
    let out = venvimg().args(["man", "--dir"]).arg(&dir).output().unwrap();
    stdout_of(&out, "venvimg man --dir");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = subcommands()
        .iter()
        .map(|s| format!("venvimg-{s}.1"))
        .collect();
    want.push("venvimg.1".into());
    want.sort();
    assert_eq!(names, want);
    for name in &names {
        let page = std::fs::read(dir.join(name)).unwrap();
        let text = groff(&page, name);
        let stem = name.trim_end_matches(".1");
        let after_name = text
            .split("NAME")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no NAME section:\n{text}"));
        assert!(
            after_name.trim_start().starts_with(stem),
            "{name}: NAME does not name {stem}:\n{text}"
        );
    }
    let plan = groff(&std::fs::read(dir.join("venvimg-plan.1")).unwrap(), "plan");
    assert!(plan.contains("--matrix"), "{plan}");

    // A file where the folder should be: exit 1, naming it.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = venvimg()
        .args(["man", "--dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-a-dir") && !err.contains("panicked"),
        "{err}"
    );
}
