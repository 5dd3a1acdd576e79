//! The mission, end to end: `venvimg build` on the sample project with the podman
//! builder, images pushed to the loopback registry, and each session run offline in its
//! image with nox reusing the venv.
use crate::support;

use serde_json::Value;
use support::{session, Project};

fn package_version_in(image: &str, venv: &str, package: &str) -> String {
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", image])
        .args([
            &format!("/opt/nox/{venv}/bin/python"),
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ])
        .output()
        .unwrap();
    support::stdout_ok(&out, &format!("{package}'s version in {image}"))
        .trim()
        .to_string()
}

#[test]
fn build_push_and_reuse_offline_then_hit_then_rebuild_on_lock_change() {
    let project = Project::fixture("sample").unique_repo("e2e").config("");

    // 1. Everything misses: build and push. Three session images and the all-sessions
    // image share the base's layers and each session's layer: each blob is checked (or
    // mounted, or sent) once for the whole build, none found present twice.
    let first = project.build(&[]);
    assert_eq!(first["push"]["blobs_present"], 0, "{}", first["push"]);
    assert!(
        first["push"]["blobs_uploaded"].as_u64().unwrap() >= 4,
        "{}",
        first["push"]
    );
    for name in ["tests", "lint", "compat-3.11"] {
        let s = session(&first, name);
        assert_eq!(s["outcome"], "built", "{s}");
        let image = s["image"].as_str().unwrap();
        assert_eq!(
            support::skopeo_inspect_digest(image).as_deref(),
            s["digest"].as_str(),
            "the tag in the registry points at the image venvimg reports"
        );
    }

    // 2. Each session's image runs its session offline, reusing the venv. The checkout is
    // a fresh copy, as CI would have.
    let checkout = support::copy_fixture("sample");
    for name in ["tests", "lint", "compat-3.11"] {
        let image = support::image_of(&first, name);
        support::assert_runs_offline(&image, checkout.path(), name);
    }
    // The image's working directory is `workdir` (a plain run starts where the checkout
    // goes), and inspect says so.
    let tests_image = support::image_of(&first, "tests");
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", &tests_image, "pwd"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "/src",
        "{out:?}"
    );
    let out = support::venvimg()
        .args(["inspect", &tests_image])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("workdir   /src (mount the checkout here)"),
        "{text}"
    );
    // The all-sessions image holds every venv.
    let all = first["all"]["image"].as_str().unwrap().to_string();
    support::assert_runs_offline(&all, checkout.path(), "lint");
    support::assert_runs_offline(&all, checkout.path(), "compat-3.11");

    // 3. Nothing changed: every session hits and no builder runs. A `podman` first on
    // PATH that records being called proves it: any container start would go through it.
    let fakebin = tempfile::tempdir().unwrap();
    let called = fakebin.path().join("called");
    let path = support::fake_on_path(
        fakebin.path(),
        "podman",
        &format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", called.display()),
    );
    let out = project
        .venvimg()
        .env("PATH", path)
        .args(["build", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second build:\n{stderr}");
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["tests", "lint", "compat-3.11"] {
        let s = session(&second, name);
        assert_eq!(s["outcome"], "hit", "{s}");
        assert_eq!(s["digest"], session(&first, name)["digest"]);
    }
    assert!(!stderr.contains("building with"), "{stderr}");
    assert!(
        !called.exists(),
        "an all-hit build called podman: {}",
        std::fs::read_to_string(&called).unwrap_or_default()
    );
    assert_eq!(second["all"]["digest"], first["all"]["digest"]);
    assert!(
        first["all"]["image"].as_str().unwrap().contains(":all-"),
        "{first}"
    );

    // `--ci-output` (all hits, no builder): each session pinned by digest, and `all=` for
    // the all-sessions image, pinned too. A `-s` pick is no all-sessions image: its
    // combined image is `sessions-…`, and it writes no `all=`.
    let outputs = tempfile::NamedTempFile::new().unwrap();
    let ci = |args: &[&str]| -> (Value, String) {
        std::fs::write(outputs.path(), "").unwrap();
        let out = project
            .venvimg()
            .env("GITHUB_OUTPUT", outputs.path())
            .args(["build", "--json", "--ci-output"])
            .args(args)
            .output()
            .unwrap();
        let report = support::project::json_ok(&out, "build --ci-output");
        (report, std::fs::read_to_string(outputs.path()).unwrap())
    };
    let (report, lines) = ci(&[]);
    let all_line = format!(
        "all={}@{}\n",
        report["all"]["image"].as_str().unwrap(),
        report["all"]["digest"].as_str().unwrap()
    );
    assert!(lines.contains(&all_line), "{lines}");
    assert!(
        lines.contains(&format!(
            "tests={}@{}\n",
            session(&first, "tests")["image"].as_str().unwrap(),
            session(&first, "tests")["digest"].as_str().unwrap()
        )),
        "{lines}"
    );
    assert_eq!(
        report["all"]["sessions"],
        serde_json::json!(["tests", "lint", "compat-3.11"]),
        "{report}"
    );
    let (report, lines) = ci(&["-s", "tests"]);
    assert!(report["all"].is_null(), "{report}");
    // Nothing pushed for the pick's combined image: no tag a plan never looks up.
    let tags = support::list_tags(project.repo());
    assert!(!tags.iter().any(|t| t.starts_with("sessions-")), "{tags:?}");
    assert!(!lines.contains("all="), "{lines}");
    assert!(lines.starts_with("tests="), "{lines}");

    // 4. A dependency bump in uv.lock: the session that installs from the lock (`tests`,
    // `uv sync`) misses and rebuilds, the two that install pinned packages do not read
    // uv.lock and hit, and the tests image holds the new version.
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        project.path().join("uv.lock"),
    )
    .unwrap();
    let third = project.build(&[]);
    let s = session(&third, "tests");
    assert_eq!(s["outcome"], "built", "{s}");
    assert_ne!(s["tag"], session(&first, "tests")["tag"]);
    for name in ["lint", "compat-3.11"] {
        let s = session(&third, name);
        assert_eq!(s["outcome"], "hit", "{s}");
        assert_eq!(s["tag"], session(&first, name)["tag"]);
    }
    let tests_image = support::image_of(&third, "tests");
    let old_image = support::image_of(&first, "tests");
    assert_eq!(
        package_version_in(&old_image, "tests", "iniconfig"),
        "2.3.1"
    );
    assert_eq!(
        package_version_in(&tests_image, "tests", "iniconfig"),
        "2.0.0"
    );
    std::fs::copy(
        project.path().join("uv.lock"),
        checkout.path().join("uv.lock"),
    )
    .unwrap();
    support::assert_runs_offline(&tests_image, checkout.path(), "tests");
}

/// Two builds from clean state, at different times, into different repositories, one
/// session at a time and all at once: the same manifest digest (so the same config,
/// diff_ids and layer digests) for every session.
#[test]
fn two_clean_builds_are_byte_identical() {
    let a = Project::fixture("sample").unique_repo("repro-a").config("");
    let b = Project::fixture("sample").unique_repo("repro-b").config("");
    let first = a.build(&["--jobs", "1"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = b.build_output(&["--jobs", "3", "-v"]);
    let second = support::project::json_ok(&out, "venvimg build --jobs 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("building 3 session(s), 3 at a time"),
        "{stderr}"
    );
    // Side by side, each relayed line of a build names its session.
    for name in ["tests", "lint", "compat-3.11"] {
        assert!(
            stderr.contains(&format!("{name}:   | ")),
            "{name}: {stderr}"
        );
    }
    for name in ["tests", "lint", "compat-3.11"] {
        let (x, y) = (session(&first, name), session(&second, name));
        assert_eq!(x["outcome"], "built");
        assert_eq!(y["outcome"], "built");
        assert_eq!(x["tag"], y["tag"], "{name}: keys differ");
        assert_eq!(x["digest"], y["digest"], "{name}: manifest digests differ");
        assert_eq!(x["layer_size"], y["layer_size"]);
    }
    assert_eq!(first["all"]["digest"], second["all"]["digest"]);
}

#[test]
fn one_failing_session_does_not_throw_away_the_others() {
    // `newer` asks for a Python the base image lacks; `check` still builds and is pushed,
    // the report names the failure, no all-sessions image is made, exit 1 — as nox runs
    // every session and summarises.
    let p = Project::fixture("runner")
        .unique_repo("build-partial")
        .config("sessions: [check, newer]\n");
    let out = p.build_output(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}{stderr}"));
    let check = support::project::session(&report, "check");
    assert_eq!(check["outcome"], "built", "{report}");
    assert_eq!(
        support::skopeo_inspect_digest(check["image"].as_str().unwrap()).as_deref(),
        check["digest"].as_str(),
        "check was not pushed"
    );
    let newer = support::project::session(&report, "newer");
    assert_eq!(newer["outcome"], "failed", "{report}");
    assert!(
        newer["error"].as_str().unwrap().contains("3.13"),
        "{report}"
    );
    assert!(report["all"].is_null(), "{report}");
    assert!(
        stderr.contains("1 of 2 session(s) failed to build: `newer`"),
        "{stderr}"
    );
    assert!(stderr.contains("no all-sessions image"), "{stderr}");

    // --fail-fast stops at the first failure.
    let (code, text) = p.outcome(&["build", "--fail-fast", "--force", "-s", "newer", "check"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("failed to build:"), "{text}");
}

#[test]
fn a_build_that_cannot_verify_the_index_certificate_points_at_build_ca() {
    // The build containers trust only a CA that signed nothing the index serves (the test
    // registry's own), as a build behind a TLS-inspecting proxy without its CA would:
    // uv's UnknownIssuer gets venvimg's hint.
    let ca_dir = tempfile::tempdir().unwrap();
    let unrelated_ca = ca_dir.path().join("unrelated-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=venvimg test: signs nothing"])
        .arg("-keyout")
        .arg(ca_dir.path().join("key.pem"))
        .arg("-out")
        .arg(&unrelated_ca)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    let unrelated_ca = unrelated_ca.to_str().unwrap();
    let p = Project::fixture("runner")
        .unique_repo("build-tls")
        .config("sessions: [check]\n");
    let (code, text) = p.outcome(&["build", "--build-ca", unrelated_ca]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("could not verify the package index's TLS certificate"),
        "{text}"
    );
    assert!(
        text.contains("--build-ca /etc/ssl/certs/ca-certificates.crt"),
        "{text}"
    );
    assert!(
        text.contains("1 of 1 session(s) failed to build: `check`"),
        "{text}"
    );
    assert!(!text.contains("the others were built"), "{text}");
}

/// What a repository holds, as anyone pulling sees it: each tag's manifest digest (the
/// dry-run artifacts, which hold where the plan ran, and the push-time markers
/// `sha256-<hex>.pushed`, which hold when, left out). A referrers fallback tag
/// (`sha256-<hex>`, an index of the image's SBOMs, with no platform to resolve) is
/// compared by what it lists (artifact type and title): an SBOM names the repository it
/// was pushed to, so its digest differs between two repositories.
fn registry_state(repo: &str) -> std::collections::BTreeMap<String, String> {
    support::list_tags(repo)
        .into_iter()
        .filter(|t| !t.starts_with("venvimg-dryrun-") && !t.ends_with(".pushed"))
        .map(|t| {
            let image = format!("{repo}:{t}");
            let state = if t.starts_with("sha256-") {
                let index = support::skopeo_raw_manifest(&image);
                let listed: Vec<String> = index["manifests"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{image} is no index: {index}"))
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {}",
                            m["artifactType"], m["annotations"]["org.opencontainers.image.title"]
                        )
                    })
                    .collect();
                listed.join(", ")
            } else {
                support::skopeo_inspect_digest(&image)
                    .unwrap_or_else(|| panic!("{image} listed but not readable"))
            };
            (t, state)
        })
        .collect()
}

#[test]
fn a_ci_matrix_of_single_session_builds_leaves_what_a_serial_build_leaves() {
    use crate::support::background::Background;
    let matrix = Project::fixture("sample").unique_repo("matrix").config("");
    let serial = Project::fixture("sample").unique_repo("serial").config("");

    // The plan job: the misses as a matrix, also written for later jobs.
    let outputs = tempfile::NamedTempFile::new().unwrap();
    let out = matrix
        .venvimg()
        .env("GITHUB_OUTPUT", outputs.path())
        .args(["plan", "--matrix", "--ci-output", "-q"])
        .output()
        .unwrap();
    let m = support::project::json_ok(&out, "plan --matrix");
    let written = std::fs::read_to_string(outputs.path()).unwrap();
    assert!(written.contains(&format!("matrix={m}\n")), "{written}");
    let mut sessions: Vec<String> = m["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["session"].as_str().unwrap().to_string())
        .collect();
    sessions.sort();
    assert_eq!(sessions, ["compat-3.11", "lint", "tests"], "{m}");
    assert_eq!(m["include"][0]["venv"], "tests", "{m}");

    // One runner per entry, all at once, against the one registry.
    let ca = support::testenv().ca_file().to_string();
    let mut runners: Vec<Background> = sessions
        .iter()
        .map(|s| Background::venvimg(matrix.path(), &["build", "--build-ca", &ca, "-s", s], &[]))
        .collect();
    for r in &mut runners {
        let status = r.wait(std::time::Duration::from_secs(600));
        assert!(status.success(), "{}", r.text());
    }
    // The final job: every session a hit, the all-sessions image composed, no build.
    let last = matrix.build(&[]);
    for s in last["sessions"].as_array().unwrap() {
        assert_eq!(s["outcome"], "hit", "{last}");
    }
    let out = matrix.run(&["plan", "--matrix", "-q"]);
    assert_eq!(
        support::project::json_ok(&out, "plan --matrix after"),
        serde_json::json!({"include": []})
    );

    // The same project built serially: the same tags, the same bytes.
    serial.build(&[]);
    let (a, b) = (registry_state(matrix.repo()), registry_state(serial.repo()));
    let images = a.keys().filter(|t| !t.starts_with("sha256-")).count();
    assert_eq!(
        (images, a.len() - images),
        (4, 3),
        "three sessions and the all-sessions image, an SBOM index for each session image: {a:?}"
    );
    assert_eq!(a, b);
}

/// The jobs of a GitLab child pipeline file (every top-level key but `stages`).
fn child_jobs(file: &std::path::Path) -> Vec<(String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(file).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("the child pipeline is not YAML ({e}):\n{text}"));
    let top = doc.as_mapping().expect("a mapping at the top");
    assert_eq!(
        doc["stages"],
        serde_yaml::Value::Sequence(vec!["build".into()]),
        "{text}"
    );
    top.iter()
        .filter(|(k, _)| k.as_str() != Some("stages"))
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

#[test]
fn a_gitlab_child_pipeline_builds_each_miss_in_its_own_job() {
    let p = Project::fixture("sample").unique_repo("gitlab").config("");
    let tmp = tempfile::tempdir().unwrap();
    let child = tmp.path().join("venvimg-child.yml");

    // The plan job (on GitLab, with the images on the project's registry).
    let registry = support::testenv().registry.clone();
    let out = p
        .venvimg()
        .env("CI_REGISTRY", &registry)
        .args(["plan", "--matrix", "-q", "--gitlab-child"])
        .arg(&child)
        .output()
        .unwrap();
    let matrix = support::project::json_ok(&out, "plan --matrix --gitlab-child");
    assert_eq!(
        matrix["include"].as_array().map(Vec::len),
        Some(3),
        "{matrix}"
    );
    let base = p.plan()["base"].as_str().unwrap().to_string();
    assert!(base.contains("@sha256:"), "{base}");

    let jobs = child_jobs(&child);
    let mut scripts = Vec::new();
    for (name, job) in &jobs {
        assert_eq!(job["stage"], "build", "{name}");
        assert_eq!(
            job["image"].as_str(),
            Some(base.as_str()),
            "{name}: the base by digest"
        );
        assert_eq!(
            job["variables"]["VENVIMG_PASSWORD"], "$CI_REGISTRY_PASSWORD",
            "{name}"
        );
        let script = job["script"].as_sequence().expect("script");
        assert_eq!(script.len(), 1, "{name}");
        scripts.push((name.clone(), script[0].as_str().unwrap().to_string()));
    }
    let mut named: Vec<&str> = jobs.iter().map(|(n, _)| n.as_str()).collect();
    named.sort();
    assert_eq!(
        named,
        [
            "venvimg build compat-3.11",
            "venvimg build lint",
            "venvimg build tests"
        ]
    );

    // Each job's script as its runner runs it (sh), side by side. `venvimg` on PATH is
    // the binary under test; the wrapper only adds this machine's package-proxy CA.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    support::fake_on_path(
        &bin,
        "venvimg",
        &format!(
            "#!/bin/sh\nexec {} \"$@\" --build-ca {}\n",
            env!("CARGO_BIN_EXE_venvimg"),
            support::testenv().ca_file()
        ),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env = support::testenv();
    let running: Vec<_> = scripts
        .iter()
        .map(|(name, script)| {
            let child = std::process::Command::new("sh")
                .args(["-c", script])
                .current_dir(p.path())
                .envs(env.envs.iter().map(|(k, v)| (k, v)))
                .env("PATH", &path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (name, script, child)
        })
        .collect();
    for (name, script, child) in running {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: `{script}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The parent's `images` job: all hits, the all-sessions image composed.
    let last = p.build(&[]);
    for s in last["sessions"].as_array().unwrap() {
        assert_eq!(s["outcome"], "hit", "{last}");
    }
    let all = last["all"]["image"].as_str().unwrap_or_default();
    assert!(all.starts_with(&format!("{}:all-", p.repo())), "{last}");

    // Nothing missing: one no-op job, since GitLab refuses an empty pipeline.
    let out = p
        .venvimg()
        .args(["plan", "--matrix", "-q", "--gitlab-child"])
        .arg(&child)
        .output()
        .unwrap();
    let matrix = support::project::json_ok(&out, "plan --matrix --gitlab-child");
    assert_eq!(matrix, serde_json::json!({"include": []}));
    let jobs = child_jobs(&child);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (name, job) = &jobs[0];
    assert_eq!(job["variables"]["GIT_STRATEGY"], "none", "{name}");
    assert!(job["image"].is_null(), "the no-op job pulls no image");
    let script = job["script"][0].as_str().unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("nothing to build")
    );

    // --gitlab-child is part of --matrix.
    let (code, text) = p.outcome(&["plan", "--gitlab-child", "x.yml"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--matrix"), "{text}");
}

/// `compression_level` (issue #17): a zstd level-19 build pushes zstd layers under tags of
/// their own (the level is in the key), smaller than level 3's, the same venv files
/// (diff_ids), and the image runs offline in podman.
#[test]
fn a_zstd_level_is_in_the_key_and_the_image_runs() {
    let default = Project::fixture("sample")
        .unique_repo("zstd3")
        .config("compression: zstd\nsessions: [tests]\n");
    let high = Project::fixture("sample")
        .unique_repo("zstd19")
        .config("compression: zstd\ncompression_level: 19\nsessions: [tests]\n");
    let a = default.build(&[]);
    let b = high.build(&[]);
    let (ia, ib) = (
        support::project::image_of(&a, "tests"),
        support::project::image_of(&b, "tests"),
    );
    let tag = |i: &str| i.rsplit(':').next().unwrap().to_string();
    assert_ne!(tag(&ia), tag(&ib), "the level is not in the key");
    let venv_layer = |image: &str| {
        let m = support::skopeo_raw_manifest(image);
        m["layers"].as_array().unwrap().last().unwrap().clone()
    };
    let (la, lb) = (venv_layer(&ia), venv_layer(&ib));
    for l in [&la, &lb] {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    assert_ne!(la["digest"], lb["digest"]);
    assert!(
        lb["size"].as_u64() <= la["size"].as_u64(),
        "level 19 {} > level 3 {}",
        lb["size"],
        la["size"]
    );
    let diff_ids = |image: &str| support::skopeo_config(image)["rootfs"]["diff_ids"].clone();
    assert_eq!(diff_ids(&ia), diff_ids(&ib), "the same files, other bytes");
    high.assert_runs_offline(&ib, "tests");

    // gzip has no level to choose: exit 2 naming the field.
    high.write_config("compression_level: 9\n");
    let (code, text) = high.outcome(&["plan"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("compression_level"), "{text}");
}
