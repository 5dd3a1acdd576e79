//! Docker, tested like podman: a real Docker Engine (Debian's docker.io, 20.10) on its own
//! socket (`tests/support/testenv.sh up` starts it with no bridge, so build containers
//! get `--build-network host`). Builds with `builder: docker` give the same layers as
//! podman's; the job image runs offline under docker; `--load` puts it into docker; a
//! zstd image meets a clear error instead of docker's bare tar error.

use std::path::Path;

use serde_json::Value;

use crate::support;

fn docker() -> std::process::Command {
    let env = support::testenv();
    let mut c = std::process::Command::new("docker");
    c.envs(env.envs.iter().map(|(k, v)| (k, v)));
    c
}

fn project(builder: &str, extra: &str) -> tempfile::TempDir {
    let env = support::testenv();
    let dir = support::copy_fixture("runner");
    let repo = support::unique_repo(&format!("docker-{builder}"));
    std::fs::write(
        dir.path().join("venvimg.yaml"),
        format!(
            "repository: {repo}\nbase: {}\nbuilder: {builder}\nsessions: [check]\n{extra}",
            env.base
        ),
    )
    .unwrap();
    dir
}

fn venvimg(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = support::venvimg()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cannot run venvimg");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn build(dir: &Path, extra: &[&str]) -> String {
    let env = support::testenv();
    let mut args = vec!["build", "--build-ca", env.ca_file()];
    args.extend_from_slice(extra);
    let (code, text) = venvimg(dir, &args);
    assert_eq!(code, Some(0), "{text}");
    text
}

fn image(dir: &Path) -> String {
    let (code, text) = venvimg(dir, &["plan", "--json", "-q"]);
    assert_eq!(code, Some(0), "{text}");
    let plan: Value = serde_json::from_str(&text).unwrap();
    plan["sessions"][0]["image"].as_str().unwrap().to_string()
}

fn layer_digests(image: &str) -> Vec<String> {
    let m = support::skopeo_raw_manifest(image);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn docker_builds_podmans_layers_and_its_job_image_runs_offline_under_docker() {
    let daemon = docker()
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .expect("cannot run docker: apt-get install -y docker.io (testenv.sh deps)");
    assert!(
        daemon.status.success(),
        "dockerd does not answer on DOCKER_HOST; `bash tests/support/testenv.sh up` starts it: {}",
        String::from_utf8_lossy(&daemon.stderr)
    );

    let with_podman = project("podman", "");
    build(with_podman.path(), &[]);
    let with_docker = project("docker", "");
    let text = build(with_docker.path(), &["--build-network", "host", "--load"]);
    assert!(text.contains("building with docker"), "{text}");
    // Byte-identical venv layers from both engines (the base's layers are shared too).
    let (p, d) = (image(with_podman.path()), image(with_docker.path()));
    assert_eq!(layer_digests(&p), layer_digests(&d), "{p} vs {d}");

    // --load put the all-sessions image into docker.
    let repo = d.rsplit_once(':').unwrap().0;
    let listed = docker()
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", repo])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("{repo}:all-")),
        "docker images: {listed}"
    );

    // The job image runs offline under docker, reusing its venv.
    let (code, text) = venvimg(
        with_docker.path(),
        &[
            "run",
            "--engine",
            "docker",
            "--no-build",
            "-s",
            "check",
            "--",
            "0",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
    assert!(!text.contains("Creating virtual environment"), "{text}");
    assert_eq!(
        std::fs::read_to_string(with_docker.path().join("written-by-session.txt")).unwrap(),
        "3.2.0"
    );
}

#[test]
fn a_zstd_image_under_docker_20_gets_a_clear_error() {
    // The build warns (the layers are fine: another engine runs them)...
    let dir = project("docker", "compression: zstd\n");
    let text = build(dir.path(), &["--build-network", "host"]);
    assert!(
        text.contains("Docker 20.10 cannot pull zstd layers (Docker 23 and later can)"),
        "{text}"
    );
    // ...and `run` under that docker stops with what to do.
    let (code, text) = venvimg(dir.path(), &["run", "--no-build", "-s", "check"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("`compression: zstd`, but Docker 20.10 cannot pull zstd layers"),
        "{text}"
    );
    assert!(text.contains("--engine podman"), "{text}");
    assert!(!text.contains("invalid tar header"), "{text}");
}
