//! Docker, tested like podman: a real Docker Engine (Debian's docker.io, 20.10) on its own
//! socket (`tests/support/testenv.sh up` starts it with no bridge, so build containers
//! get `--build-network host`). Builds with `builder: docker` give the same layers as
//! podman's; the job image runs offline under docker; `--load` puts it into docker; a
//! zstd image meets a clear error instead of docker's bare tar error.

use crate::support;
use crate::support::project::Project;

fn docker() -> std::process::Command {
    let env = support::testenv();
    let mut c = std::process::Command::new("docker");
    c.envs(env.envs.iter().map(|(k, v)| (k, v)));
    c
}

fn project(builder: &str, extra: &str) -> Project {
    Project::fixture("runner")
        .unique_repo(&format!("docker-{builder}"))
        .config(&format!("builder: {builder}\nsessions: [check]\n{extra}"))
}

fn build(p: &Project, extra: &[&str]) -> String {
    let env = support::testenv();
    let mut args = vec!["build", "--build-ca", env.ca_file()];
    args.extend_from_slice(extra);
    let (code, text) = p.outcome(&args);
    assert_eq!(code, Some(0), "{text}");
    text
}

fn image(p: &Project) -> String {
    support::project::image_of(&p.plan(), "check")
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
    build(&with_podman, &[]);
    let with_docker = project("docker", "");
    let text = build(&with_docker, &["--build-network", "host", "--load"]);
    assert!(text.contains("building with docker"), "{text}");
    // Byte-identical venv layers from both engines (the base's layers are shared too).
    let (p, d) = (image(&with_podman), image(&with_docker));
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
    let (code, text) = with_docker.outcome(&[
        "run",
        "--engine",
        "docker",
        "--no-build",
        "-s",
        "check",
        "--",
        "0",
    ]);
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
    let text = build(&dir, &["--build-network", "host"]);
    assert!(
        text.contains("Docker 20.10 cannot pull zstd layers (Docker 23 and later can)"),
        "{text}"
    );
    // ...and `run` under that docker stops with what to do.
    let (code, text) = dir.outcome(&["run", "--no-build", "-s", "check"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("`compression: zstd`, but Docker 20.10 cannot pull zstd layers"),
        "{text}"
    );
    assert!(text.contains("--engine podman"), "{text}");
    assert!(!text.contains("invalid tar header"), "{text}");
}
