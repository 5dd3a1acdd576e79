//! The README's tutorial, run as written: every `sh` block of its "Five-minute tutorial"
//! section, in order, in one bash, from the repository's root, against the test
//! environment the tutorial itself brings up.

use crate::support;

/// The tutorial's build step. The one substitution: the binary under test goes on PATH
/// instead of a second (release) build of the same sources.
const BUILD_LINE: &str = "cargo build --release && export PATH=$PWD/target/release:$PATH";

/// The `sh` blocks of the README section starting at `heading`.
fn sh_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}` section"));
    let rest = &readme[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block in `{heading}`");
    blocks
}

#[test]
fn the_tutorial_runs_as_written() {
    support::testenv();
    let root = support::manifest_dir();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "## Five-minute tutorial");
    assert!(blocks.len() >= 4, "{blocks:?}");
    let script = blocks.join("");
    assert!(
        script.contains(BUILD_LINE),
        "the tutorial's build line changed; update BUILD_LINE:\n{script}"
    );
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_venvimg"));
    let script = script.replace(
        BUILD_LINE,
        &format!("export PATH={}:$PATH", bin.parent().unwrap().display()),
    );
    // mktemp's folder is the test's own, removed afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(&root)
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the tutorial failed:\n{text}");
    // What the tutorial says happens: a plan after the build is all hits, the session
    // reuses its venv offline (through venvimg run, and by hand), shell runs a command.
    let hits = text
        .lines()
        .filter(|l| l.trim_end().ends_with(" hit"))
        .count();
    assert!(hits >= 3, "the second plan is not all hits:\n{text}");
    assert!(
        text.matches("Reusing existing virtual environment at /opt/nox/tests")
            .count()
            >= 2,
        "{text}"
    );
    assert!(text.contains("3 passed"), "{text}");
    assert!(text.contains("pytest 8.3.5"), "{text}");
}
