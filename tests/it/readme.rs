//! The README run as written: every `sh` block of its "Five-minute tutorial" section, in
//! order, in one bash, from the repository's root, against the test environment the
//! tutorial itself brings up; and every `sh` block of its "Install" section, the same way,
//! with a fresh `$HOME` (a new user's machine).

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
    let text = support::output_text(&out);
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

/// The Install section's release line: support::dist() ran it already (into dist/).
const RELEASE_LINE: &str = "bash .ci/release.sh";
/// The cargo line, and what the test adds to it (see below).
const CARGO_LINE: &str = "cargo install --locked --path .";
/// The Install section's image build (its base from docker.io unless told otherwise).
const PODMAN_BUILD_LINE: &str = "podman build -f Containerfile -t venvimg .";

#[test]
fn the_install_section_runs_as_written() {
    let env = support::testenv();
    let root = support::manifest_dir();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "## Install");
    assert!(blocks.len() >= 6, "{blocks:?}");
    let mut script = blocks.join("");
    assert!(
        script.contains(RELEASE_LINE) && script.contains(CARGO_LINE),
        "the Install section's release or cargo line changed; update this test:\n{script}"
    );
    // dist/ is made once for every test that reads release files (support::dist: this
    // very script, under a lock, reused while the sources are unchanged; a cross-build
    // costs minutes), so the release line is skipped once dist/ is there. It must be this
    // checkout's dist/, the one the README names.
    let dist = support::dist();
    let same = std::fs::canonicalize(&dist).ok() == std::fs::canonicalize(root.join("dist")).ok();
    assert!(
        same,
        "the release folder must be this checkout's dist/ (what the README names): {}",
        dist.display()
    );
    script = script
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(RELEASE_LINE) {
                ": release.sh ran in support::dist".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    // `cargo install` as written compiles a host release build: minutes more, of the very
    // sources `.ci/run` already compiled for the musl target. So the test asks for that
    // target (its artifacts reused) and installs under the fresh HOME (--root); cargo's
    // own home stays the machine's, so no crate is downloaded again.
    script = script.replace(
        CARGO_LINE,
        &format!("{CARGO_LINE} --root \"$HOME/.cargo\" --target x86_64-unknown-linux-musl"),
    );
    // Tests pull nothing from public registries: the Containerfile's CA-bundle stage
    // takes the test environment's base image through its documented build argument
    // instead of docker.io's alpine.
    assert!(
        script.contains(PODMAN_BUILD_LINE),
        "the Install section's podman build line changed; update this test:\n{script}"
    );
    script = script.replace(
        PODMAN_BUILD_LINE,
        &format!(
            "podman build -f Containerfile --build-arg CERTS_IMAGE={} -t venvimg .",
            env.base_local
        ),
    );
    // Whatever each way installed last must be the one found: the fresh HOME's.
    script.push_str("command -v venvimg\n");

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let real_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{real_home}/.cargo"));
    let rustup_home =
        std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{real_home}/.rustup"));
    let path = format!(
        "{h}/.local/bin:{h}/.cargo/bin:{}",
        std::env::var("PATH").unwrap_or_default(),
        h = home.display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(&root)
        .envs(env.envs.iter().map(|(k, v)| (k, v)))
        .env("HOME", &home)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTUP_HOME", &rustup_home)
        .env("PATH", &path)
        .env("TMPDIR", tmp.path())
        .env("MANPAGER", "cat")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_BIN_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("UV_TOOL_DIR")
        .env_remove("UV_TOOL_BIN_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = support::output_text(&out);
    // The image the container block built is this test's; leave podman's store as it was.
    let _ = support::podman()
        .args(["rmi", "-f", "localhost/venvimg:latest"])
        .output();
    assert!(
        out.status.success(),
        "the Install section failed:\n{script}\n---\n{text}"
    );

    let version = format!("venvimg {}", env!("CARGO_PKG_VERSION"));
    // uvx, uv tool, the static binary, cargo install, the container image.
    assert!(text.matches(&version).count() >= 5, "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim() == format!("{}/.local/bin/venvimg", home.display())),
        "venvimg on PATH is not the one the section installed:\n{text}"
    );
    assert!(
        home.join(".cargo/bin/venvimg").is_file(),
        "cargo install: {text}"
    );
    let completion =
        std::fs::read_to_string(home.join(".local/share/bash-completion/completions/venvimg"))
            .unwrap();
    assert!(completion.contains("complete -F"), "{completion}");
    assert!(home.join(".local/share/man/man1/venvimg-build.1").is_file());
    assert!(
        text.contains("venvimg-plan"),
        "man -l printed no page:\n{text}"
    );
}
