//! Docker, tested like podman: a real Docker Engine (Debian's docker.io, 20.10) on its own
//! socket (`tests/support/testenv.sh up docker` starts it with no bridge, so build containers
//! get `--build-network host`). Builds with `builder: docker` give the same layers as
//! podman's; the job image runs offline under docker; `--load` puts it into docker; a
//! zstd image meets a clear error instead of docker's bare tar error.

use std::path::Path;

use crate::support;
use crate::support::project::Project;
use crate::support::{docker, docker_ok};

fn project(builder: &str, extra: &str) -> Project {
    support::need_docker();
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

/// `venvimg run` of the runner fixture's `check` session in its job image under docker,
/// with no build first.
pub(crate) const RUN_CHECK_UNDER_DOCKER: [&str; 8] = [
    "run",
    "--engine",
    "docker",
    "--no-build",
    "-s",
    "check",
    "--",
    "0",
];

/// [`RUN_CHECK_UNDER_DOCKER`] in `checkout` passed (`code`, `text`: its exit code and
/// output): nox reused the job image's venv, and the session wrote its file.
#[track_caller]
pub(crate) fn assert_check_ran_under_docker(code: Option<i32>, text: &str, checkout: &Path) {
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
    assert!(!text.contains("Creating virtual environment"), "{text}");
    let written = checkout.join("written-by-session.txt");
    assert_eq!(
        std::fs::read_to_string(&written)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", written.display())),
        "3.2.0"
    );
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
        "dockerd does not answer on DOCKER_HOST; `bash tests/support/testenv.sh up docker` starts it: {}",
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
    // And the same key (tag) and the same image: the engine is not in the bytes.
    assert_eq!(p.rsplit_once(':').unwrap().1, d.rsplit_once(':').unwrap().1);
    assert_eq!(
        support::skopeo_inspect_digest(&p).expect("pushed"),
        support::skopeo_inspect_digest(&d).expect("pushed"),
        "{p} vs {d}"
    );

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
    let (code, text) = with_docker.outcome(&RUN_CHECK_UNDER_DOCKER);
    assert_check_ran_under_docker(code, &text, with_docker.path());
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

/// Removes a docker container when the test ends, passed or not.
struct DockerContainer(String);

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = docker().args(["rm", "--force", &self.0]).output();
    }
}

#[test]
fn a_container_job_started_like_githubs_and_forgejos_runners_runs_the_session_offline() {
    // GitHub's runner (and Forgejo's, through act) creates the job container with the
    // work folder mounted and `tail -f /dev/null` as its process, checks the repository
    // out into the mount, then runs each step with `docker exec`.
    let workspace = "/__w/app/app";
    let p = Project::fixture("runner")
        .unique_repo("docker-runner")
        .config(&format!("workdir: {workspace}\nsessions: [check]\n"));
    build(&p, &[]);
    let image = image(&p);
    let work = tempfile::tempdir().unwrap();
    let name = format!("venvimg-test-runner-{}", std::process::id());
    let _container = DockerContainer(name.clone());
    let volume = format!("{}:/__w", work.path().display());
    docker_ok(&[
        "create",
        "--name",
        &name,
        "--workdir",
        workspace,
        "-v",
        &volume,
        "-e",
        "HOME=/github/home",
        "-e",
        "CI=true",
        "-e",
        "GITHUB_ACTIONS=true",
        "--network",
        "none",
        "--entrypoint",
        "tail",
        &image,
        "-f",
        "/dev/null",
    ]);
    docker_ok(&["start", &name]);
    // actions/checkout, through the mount.
    let checkout = work.path().join("app/app");
    std::fs::create_dir_all(&checkout).unwrap();
    support::copy_tree(p.path(), &checkout);
    // The example pipeline's step.
    let text = docker_ok(&[
        "exec",
        "--workdir",
        workspace,
        "-e",
        "UV_OFFLINE=1",
        &name,
        "sh",
        "-e",
        "-c",
        "nox --envdir /opt/nox --reuse-venv=always --no-install -s check -- 0",
    ]);
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
    assert!(!text.contains("Creating virtual environment"), "{text}");
    assert_eq!(
        std::fs::read_to_string(checkout.join("written-by-session.txt")).unwrap(),
        "3.2.0"
    );
}

#[test]
fn build_engine_docker_loads_into_docker_and_its_docker_archive_loads_there_too() {
    // `builder: podman` in the file; `--engine docker` builds with docker and loads into
    // it. The image is podman's, byte for byte: a podman build before makes it a hit.
    let p = project("podman", "");
    build(&p, &[]);
    let podman_built = image(&p);
    let pushed = support::skopeo_inspect_digest(&podman_built).expect("pushed");
    let archive = tempfile::tempdir().unwrap();
    let archive = archive.path().join("all.tar");
    let text = build(
        &p,
        &[
            "--engine",
            "docker",
            "--build-network",
            "host",
            "--force",
            "--load",
            "--output",
            &format!("docker-archive:{}", archive.display()),
        ],
    );
    assert!(text.contains("building with docker"), "{text}");
    assert_eq!(image(&p), podman_built);
    assert_eq!(
        support::skopeo_inspect_digest(&podman_built).as_deref(),
        Some(pushed.as_str()),
        "the docker build pushed other bytes"
    );
    let repo = podman_built.rsplit_once(':').unwrap().0.to_string();
    let all = docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}", &repo]);
    let all = all
        .lines()
        .find(|l| l.starts_with(&format!("{repo}:all-")))
        .unwrap_or_else(|| panic!("--load put no {repo}:all-* into docker: {all}"))
        .to_string();

    // The archive loads into docker as that image, and runs the session offline.
    docker_ok(&["rmi", &all]);
    let loaded = docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(&all), "{loaded}");
    let (ok, text) = support::run_offline_in(docker(), &all, p.path(), "check", &[]);
    assert!(ok, "{text}");
    assert!(!text.contains("Creating virtual environment"), "{text}");
    docker_ok(&["rmi", &all]);
}
