//! The images venvimg ships, built for real with podman:
//!
//! - `Containerfile` (venvimg's own image): the static musl release binary on `scratch`
//!   with CA certificates; it runs `venvimg --version` and holds nothing else.
//! - `images/python-nox` (a base job image), built from the local debootstrap base image
//!   (no public registry here) with venvimg copied from the image above and a nox plugin;
//!   nox, uv and venvimg run in it, and a session built on it by `venvimg build` runs
//!   offline in its job image.
//!
//! The binary is the release's static x86_64 one (`support::musl_binary`: the release
//! folder `.ci/release.sh` makes, built once for every test that reads it).
use crate::support;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// A nox plugin the python-nox test image gets through NOX_PLUGINS (images/README.md).
const NOX_PLUGIN: &str = "nox-uv==0.8.0";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let text = support::output_text(&out);
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

/// `podman build -f Containerfile` with the binary at its documented path in a context of
/// its own; CA certificates from the local base image. Returns the tag.
fn build_venvimg_image(images: &mut LocalImages) -> String {
    let env = support::testenv();
    let bin = support::musl_binary();
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
    assert!(
        out.status.success(),
        "podman export: {}",
        support::output_text(&out)
    );
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
        support::output_text(&out)
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
