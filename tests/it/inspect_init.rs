//! `venvimg init` and `venvimg inspect`, run as a user runs them: the binary, real nox,
//! the loopback registry and podman. The configuration `init` writes is built unchanged,
//! and what the build pushed and wrote is read back by `inspect`.
use crate::support;

use std::path::Path;

use serde_json::Value;
use venvimg::config::Config;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_ok(cmd: &mut assert_cmd::Command, what: &str) -> String {
    let out = cmd.output().expect("cannot run venvimg");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The names of the sessions a loaded venvimg.yaml lists.
fn session_names(config: &Config) -> Vec<String> {
    config
        .sessions
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

fn init_in(dir: &Path, extra: &[&str]) -> std::process::Output {
    support::venvimg()
        .current_dir(dir)
        .arg("init")
        .args(extra)
        .output()
        .expect("cannot run venvimg")
}

#[test]
fn init_writes_a_config_that_builds_unchanged_and_inspect_reads_the_result() {
    let env = support::testenv();
    let project = support::copy_fixture("sample");
    let dir = project.path();
    let repo = support::unique_repo("init-build");
    let out = init_in(
        dir,
        &[
            "--repository",
            &repo,
            "--base",
            &env.base,
            "--builder",
            "podman",
        ],
    );
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    let config_file = dir.join("venvimg.yaml");
    let text = std::fs::read_to_string(&config_file).unwrap();
    assert!(
        !text.contains("CHANGE ME"),
        "flags given, yet placeholders:\n{text}"
    );
    let config = Config::load(&config_file).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let sessions = session_names(&config);
    assert_eq!(sessions, ["tests", "lint", "compat-3.11"]);
    // No hand-made list of input files: venvimg finds what each session's installs read.
    assert!(config.inputs.is_empty(), "{text}");

    let plan: Value = serde_json::from_str(&run_ok(
        support::venvimg()
            .current_dir(dir)
            .args(["plan", "--json", "--session", "lint"]),
        "plan",
    ))
    .unwrap();
    let key = plan["sessions"][0]["key"].as_str().unwrap().to_string();

    let layout = dir.join("out/layout");
    let oci_archive = dir.join("out/image.oci.tar");
    let docker_archive = dir.join("out/image.docker.tar");
    let built: Value = serde_json::from_str(&run_ok(
        support::venvimg().current_dir(dir).args([
            "build",
            "--json",
            "--session",
            "lint",
            "--build-ca",
            env.ca_file(),
            "--output",
            &format!("oci:{}", layout.display()),
            "--output",
            &format!("oci-archive:{}", oci_archive.display()),
            "--output",
            &format!("docker-archive:{}", docker_archive.display()),
        ]),
        "build with the config init wrote",
    ))
    .unwrap();
    let pushed = built["sessions"][0]["image"].as_str().unwrap().to_string();
    // A `--session` pick: its combined image goes to the outputs only, not the registry.
    assert!(built["all"].is_null(), "{built}");

    for image in [
        pushed.clone(),
        format!("oci:{}", layout.display()),
        format!("oci-archive:{}", oci_archive.display()),
        format!("docker-archive:{}", docker_archive.display()),
    ] {
        let doc: Value = serde_json::from_str(&run_ok(
            support::venvimg().args(["inspect", "--json", &image]),
            &format!("inspect --json {image}"),
        ))
        .unwrap_or_else(|e| panic!("inspect --json {image}: {e}"));
        let s = &doc["sessions"][0];
        assert_eq!(
            doc["sessions"].as_array().unwrap().len(),
            1,
            "{image}: {doc}"
        );
        assert_eq!(s["session"], "lint", "{image}");
        assert_eq!(s["key"], key.as_str(), "{image}: not the planned key");
        assert_eq!(s["venv_path"], "/opt/nox/lint", "{image}");
        assert_eq!(s["backend"], "uv", "{image}");
        assert!(
            s["python"].as_str().unwrap().starts_with("3.11"),
            "{image}: {s}"
        );
        assert_eq!(s["base"]["digest"], env.base_digest(), "{image}");
        assert!(s["layer"]["size"].as_u64().unwrap() > 0, "{image}: {s}");
        let packages: Vec<String> = s["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}=={}",
                    p["name"].as_str().unwrap(),
                    p["version"].as_str().unwrap()
                )
            })
            .collect();
        assert!(
            packages.contains(&"pyflakes==3.2.0".to_string()),
            "{image}: {packages:?}"
        );
        let inputs: Vec<&str> = s["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        // lint installs a pinned package by name: the noxfile is all it reads.
        assert_eq!(inputs, ["noxfile.py"], "{image}");

        let text = run_ok(support::venvimg().args(["inspect", &image]), "inspect");
        for want in [
            "session lint",
            "pyflakes==3.2.0",
            &key,
            "noxfile.py",
            "/opt/nox/lint",
        ] {
            assert!(
                text.contains(want),
                "inspect {image}: {want:?} missing:\n{text}"
            );
        }
    }

    // The layout and the OCI archive hold the same image, tagged for what it holds.
    let digest_of = |image: String| -> Value {
        let doc: Value = serde_json::from_str(&run_ok(
            support::venvimg().args(["inspect", "--json", &image]),
            "inspect",
        ))
        .unwrap();
        doc["manifest_digest"].clone()
    };
    assert_eq!(
        digest_of(format!("oci:{}", layout.display())),
        digest_of(format!("oci-archive:{}", oci_archive.display()))
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(tag.starts_with("sessions-"), "{index}");
}

#[test]
fn init_lists_every_session_and_comments_out_unselected_ones() {
    let project = support::copy_fixture("sample");
    let dir = project.path();
    let noxfile = dir.join("noxfile.py");
    let mut src = std::fs::read_to_string(&noxfile).unwrap();
    src.push_str("\nnox.options.sessions = [\"tests\"]\n");
    std::fs::write(&noxfile, src).unwrap();

    // From elsewhere, with --config: the project is the config file's folder.
    let out = support::venvimg()
        .current_dir(std::env::temp_dir())
        .arg("--config")
        .arg(dir.join("venvimg.yaml"))
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("placeholders"),
        "no warning about placeholders: {}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(dir.join("venvimg.yaml")).unwrap();
    assert!(text.contains("\n  - tests  # Run the test suite"), "{text}");
    assert!(
        text.contains("\n  # - lint  # not in nox's default selection"),
        "{text}"
    );
    assert!(
        text.contains("\n  # - compat-3.11  # not in nox's default selection"),
        "{text}"
    );
    assert_eq!(text.matches("# CHANGE ME").count(), 2, "{text}");
    let config = Config::load(&dir.join("venvimg.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let sessions = session_names(&config);
    assert_eq!(sessions, ["tests"]);
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let env = support::testenv();
    let project = support::copy_fixture("sample");
    let dir = project.path();
    let file = dir.join("venvimg.yaml");
    std::fs::write(&file, "# mine\n").unwrap();
    let out = init_in(dir, &["--base", &env.base]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("venvimg.yaml: already exists"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n");

    let out = init_in(dir, &["--base", &env.base, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("base: \"{}\"", env.base)), "{text}");
}

#[test]
fn init_usage_errors_exit_2() {
    let empty = tempfile::tempdir().unwrap();
    let out = init_in(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("noxfile.py: not found"),
        "{}",
        stderr(&out)
    );
    assert!(!empty.path().join("venvimg.yaml").exists());

    let project = support::copy_fixture("sample");
    let out = init_in(
        project.path(),
        &["--repository", "127.0.0.1:5000/acme/ci:v1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--repository"), "{}", stderr(&out));
    assert!(!project.path().join("venvimg.yaml").exists());
}

#[test]
fn inspect_refuses_images_venvimg_did_not_make() {
    let env = support::testenv();
    let out = support::venvimg()
        .args(["inspect", &env.base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was not made by venvimg"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    let missing = format!("{}:no-such-tag", support::unique_repo("inspect-missing"));
    let out = support::venvimg()
        .args(["inspect", &missing])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    for bad in ["oci:/no/such/dir", "Not A Reference"] {
        let out = support::venvimg().args(["inspect", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("oci-archive:FILE"),
            "{}",
            stderr(&out)
        );
    }
}
