//! The images venvimg ships, built for real with podman:
//!
//! - `Containerfile` (venvimg's own image): the static musl release binary on `scratch`
//!   with CA certificates; it runs `venvimg --version` and holds nothing else.
//! - `images/python-nox` (a base job image), built from the local debootstrap base image
//!   (no public registry here) with venvimg copied from the image above and a nox plugin;
//!   nox, uv and venvimg run in it, and a session built on it by `venvimg build` runs
//!   offline in its job image.
//!
//! The musl build needs the Rust target and musl-gcc (`rustup target add
//! x86_64-unknown-linux-musl`, `apt-get install musl-tools`); the test fails with that hint
//! when they are missing. It builds into target/images-musl (its own Cargo lock, so it
//! never waits for a build in target/), without LTO to save time; set
//! VENVIMG_MUSL_BINARY to use a binary built elsewhere.
use crate::support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
const MUSL_HINT: &str = "the static venvimg binary needs the Rust musl target and musl-gcc: \
`rustup target add x86_64-unknown-linux-musl` and, as root, `apt-get install -y musl-tools` \
(`bash .ci/run` does both)";
/// A nox plugin the python-nox test image gets through NOX_PLUGINS (images/README.md).
const NOX_PLUGIN: &str = "nox-uv==0.8.0";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let text = text(&out);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A tag no other test process uses (tests of other runs may share podman's storage).
fn unique_tag(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "localhost/venvimg-test/{name}:images-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the local images it holds when the test ends (pass or fail).
struct LocalImages(Vec<String>);

impl Drop for LocalImages {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = support::podman()
                .args(["rmi", "--force"])
                .args(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The static release binary: `cargo build --release --target x86_64-unknown-linux-musl`,
/// built once per test process.
fn musl_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_musl_binary).clone()
}

fn build_musl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VENVIMG_MUSL_BINARY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "VENVIMG_MUSL_BINARY={} is not a file",
            p.display()
        );
        return p;
    }
    // The two prerequisites, checked first for a clear message.
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        Path::new(&sysroot)
            .join("lib/rustlib")
            .join(MUSL_TARGET)
            .is_dir(),
        "the Rust target {MUSL_TARGET} is not installed (sysroot {sysroot:?})\n{MUSL_HINT}"
    );
    assert!(
        Command::new("musl-gcc")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "musl-gcc is missing\n{MUSL_HINT}"
    );

    let root = support::manifest_dir();
    let target_dir = root.join("target/images-musl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let out = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "venvimg",
            "--target",
            MUSL_TARGET,
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Test speed: the image test needs a working static binary, not the smallest one.
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    let log = text(&out);
    assert!(
        out.status.success(),
        "cargo build --release --target {MUSL_TARGET} failed:\n{}\n{MUSL_HINT}",
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "musl release build: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let bin = target_dir.join(MUSL_TARGET).join("release/venvimg");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// `podman build -f Containerfile` with the binary at its documented path in a context of
/// its own; CA certificates from the local base image. Returns the tag.
fn build_venvimg_image(images: &mut LocalImages) -> String {
    let env = support::testenv();
    let bin = musl_binary();
    let context = tempfile::tempdir().unwrap();
    let dest = context
        .path()
        .join("target")
        .join(MUSL_TARGET)
        .join("release");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(&bin, dest.join("venvimg")).unwrap();

    let tag = unique_tag("venvimg");
    let started = Instant::now();
    run(
        support::podman()
            .args(["build", "--pull=never", "-f"])
            .arg(support::manifest_dir().join("Containerfile"))
            .args(["--build-arg", &format!("CERTS_IMAGE={}", env.base_local)])
            .args(["-t", &tag])
            .arg(context.path()),
        "podman build -f Containerfile",
    );
    images.0.push(tag.clone());
    eprintln!(
        "podman build -f Containerfile: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tag
}

fn image_size(tag: &str) -> u64 {
    run(
        support::podman().args(["image", "inspect", "--format", "{{.Size}}", tag]),
        "podman image inspect",
    )
    .trim()
    .parse()
    .expect("image size")
}

/// Path → (entry type, mode) of every entry in the image's filesystem (`podman export`).
fn image_files(tag: &str) -> BTreeMap<String, (tar::EntryType, u32)> {
    let id = run(support::podman().args(["create", tag]), "podman create")
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let out = support::podman().args(["export", &id]).output().unwrap();
    let _ = support::podman().args(["rm", &id]).output();
    assert!(out.status.success(), "podman export: {}", text(&out));
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(&out.stdout[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let header = entry.header();
        files.insert(path, (header.entry_type(), header.mode().unwrap()));
        let _ = entry.read_to_end(&mut Vec::new());
    }
    files
}

#[test]
fn containerfile_builds_venvimg_image_on_scratch() {
    let mut images = LocalImages(Vec::new());
    let tag = build_venvimg_image(&mut images);

    let version = run(
        support::podman().args(["run", "--rm", "--network", "none", &tag, "--version"]),
        "venvimg --version in its image",
    );
    assert_eq!(
        version.trim(),
        format!("venvimg {}", env!("CARGO_PKG_VERSION")),
        "venvimg --version in its image"
    );
    // Subcommands work too (the ENTRYPOINT takes the arguments).
    let help = run(
        support::podman().args(["run", "--rm", "--network", "none", &tag, "build", "--help"]),
        "venvimg build --help in its image",
    );
    assert!(help.contains("--ci-output"), "{help}");

    // Nothing but the binary, the CA bundle and /tmp: no shell, no libc.
    let files = image_files(&tag);
    let regular: Vec<&str> = files
        .iter()
        .filter(|(_, (t, _))| !t.is_dir())
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(
        regular,
        ["etc/ssl/certs/ca-certificates.crt", "usr/local/bin/venvimg"],
        "files in the venvimg image"
    );
    let (tmp_type, tmp_mode) = files.get("tmp").expect("/tmp in the image");
    assert!(
        tmp_type.is_dir() && tmp_mode & 0o7777 == 0o1777,
        "/tmp: {tmp_type:?} {tmp_mode:o}"
    );
    assert!(
        files["usr/local/bin/venvimg"].1 & 0o111 != 0,
        "venvimg is executable"
    );

    let size = image_size(&tag);
    eprintln!(
        "venvimg image {tag}: {size} bytes ({:.1} MB)",
        size as f64 / 1e6
    );
    assert!(
        size < 40_000_000,
        "the venvimg image is {size} bytes, expected < 40 MB"
    );
}

/// The default of `ARG NAME=value` in a Containerfile.
fn arg_default(containerfile: &str, name: &str) -> String {
    containerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
        .unwrap_or_else(|| panic!("no `ARG {name}=` in images/python-nox/Containerfile"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn python_nox_image_builds_from_the_local_base_and_runs_a_session_offline() {
    let env = support::testenv();
    let mut images = LocalImages(Vec::new());
    let venvimg_image = build_venvimg_image(&mut images);

    let dir = support::manifest_dir().join("images/python-nox");
    let containerfile = std::fs::read_to_string(dir.join("Containerfile")).unwrap();
    let nox_version = arg_default(&containerfile, "NOX_VERSION");
    let uv_version = arg_default(&containerfile, "UV_VERSION");

    // 1. Build it as images/README.md says, from the debootstrap base instead of Docker Hub.
    let tag = unique_tag("python-nox");
    let started = Instant::now();
    run(
        support::podman()
            .args(["build", "--pull=never"])
            .args(["--build-arg", &format!("BASE={}", env.base_local)])
            .args(["--build-arg", &format!("VENVIMG_IMAGE={venvimg_image}")])
            .args(["--build-arg", &format!("NOX_PLUGINS={NOX_PLUGIN}")])
            .args(["-t", &tag])
            .arg(&dir),
        "podman build images/python-nox",
    );
    images.0.push(tag.clone());
    eprintln!(
        "podman build images/python-nox: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 2. nox, uv (the pinned versions), the plugin and venvimg are there, offline.
    let in_image = |args: &[&str]| {
        run(
            support::podman()
                .args(["run", "--rm", "--network", "none", &tag])
                .args(args),
            &format!("{args:?} in python-nox"),
        )
    };
    assert_eq!(in_image(&["nox", "--version"]).trim(), nox_version);
    assert_eq!(
        in_image(&["uv", "--version"]).split_whitespace().nth(1),
        Some(uv_version.as_str())
    );
    assert_eq!(
        in_image(&["venvimg", "--version"]).trim(),
        format!("venvimg {}", env!("CARGO_PKG_VERSION"))
    );
    in_image(&["/opt/tools/bin/python", "-c", "import nox_uv"]);

    // 3. End to end: the image in the loopback registry as the `base:` of a project, a
    // session built on it by venvimg (podman builder), then run offline in its job image.
    let base_ref = format!("{}:base", support::unique_repo("images-python-nox"));
    run(
        support::podman().args([
            "push",
            "--tls-verify=false",
            &tag,
            &format!("docker://{base_ref}"),
        ]),
        "podman push python-nox",
    );
    // Not the test base: venvimg.yaml written here.
    let project = support::Project::fixture("sample").unique_repo("images-e2e");
    std::fs::write(
        project.path().join("venvimg.yaml"),
        format!(
            "repository: {}\nbase: {base_ref}\nsessions: [lint]\n",
            project.repo()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = project.build_output(&[]);
    assert!(
        out.status.success(),
        "venvimg build on python-nox:\n{}",
        text(&out)
    );
    eprintln!(
        "venvimg build (lint on python-nox): {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json");
    let image = summary["sessions"][0]["image"]
        .as_str()
        .unwrap_or_else(|| panic!("no session image in {summary}"))
        .to_string();

    let checkout = support::copy_fixture("sample");
    support::assert_runs_offline(&image, checkout.path(), "lint");
    images.0.push(image);
}
