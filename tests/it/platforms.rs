//! `platforms: [linux/amd64, linux/arm64]`: each session tag an image index with one
//! image per platform, arm64 built under qemu emulation on this amd64 machine, and each
//! engine pulling its own platform from the same tag.
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support;
use support::{session, Project};

const PLATFORMS: &str = "platforms: [linux/amd64, linux/arm64]\n";

/// The two-platform base index `testenv.sh up arm64` pushes (amd64 + arm64 under
/// emulation).
fn multi_base() -> String {
    support::arm64_var("VENVIMG_TEST_BASE_MULTI")
}

fn project(prefix: &str, extra: &str) -> Project {
    let p = Project::fixture("sample").unique_repo(prefix);
    p.write_config_raw(&format!(
        "repository: {}\nbase: {}\n{PLATFORMS}{extra}",
        p.repo(),
        multi_base()
    ));
    p
}

/// The raw manifest at `image` and its digest.
fn raw(image: &str) -> (Value, String) {
    let out = support::skopeo()
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("cannot run skopeo (apt-get install -y skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect --raw {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&out.stdout)));
    (serde_json::from_slice(&out.stdout).unwrap(), digest)
}

/// The index at `image`: `platform → manifest digest`, checked to be an OCI index.
fn index_of(image: &str) -> Vec<(String, String)> {
    let (index, _) = raw(image);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{image} is not an image index: {index}"
    );
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn platform_digest(s: &Value, platform: &str) -> String {
    s["platforms"]
        .as_array()
        .unwrap_or_else(|| panic!("no platforms in {s}"))
        .iter()
        .find(|p| p["platform"] == platform)
        .unwrap_or_else(|| panic!("no {platform} in {s}"))["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no {platform} digest in {s}"))
        .to_string()
}

fn outcomes(s: &Value) -> Vec<String> {
    s["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p["platform"].as_str().unwrap(),
                p["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// Run `session` offline in `image` for `platform`, as CI does, pulling that platform's
/// image from the tag; the venv must be reused. Returns the venv's `platform.machine()`.
#[track_caller]
fn runs_offline_on(
    image: &str,
    checkout: &std::path::Path,
    session: &str,
    venv: &str,
    platform: &str,
) -> String {
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", "--pull", "always", "--platform", platform])
        .args(["-v", &format!("{}:/src", checkout.display()), "-w", "/src"])
        .args(["-e", "UV_OFFLINE=1", image, "sh", "-c"])
        .arg(format!(
            "nox --envdir /opt/nox --reuse-venv=always --no-install -s {session} && \
             /opt/nox/{venv}/bin/python -c 'import platform; print(\"machine=\" + platform.machine())'"
        ))
        .output()
        .expect("cannot run podman (apt-get install -y podman)");
    let text = support::output_text(&out);
    assert!(
        out.status.success(),
        "{session} on {platform} failed offline in {image}:\n{text}"
    );
    assert!(
        text.contains("Reusing existing virtual environment")
            && !text.contains("Creating virtual environment"),
        "{session} on {platform}: nox did not reuse the venv:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("machine="))
        .unwrap_or_else(|| panic!("no machine line:\n{text}"))
        .trim()
        .to_string()
}

#[test]
fn one_tag_per_session_for_amd64_and_arm64_each_engine_pulls_its_own() {
    let project = project("multi", "");

    // 1. Both platforms built (arm64 under emulation), each session tag an index of two.
    let first = project.build(&[]);
    let names = ["tests", "lint", "compat-3.11"];
    for name in names {
        let s = session(&first, name);
        assert_eq!(s["outcome"], "built", "{s}");
        assert_eq!(
            outcomes(s),
            ["linux/amd64=built", "linux/arm64=built"],
            "{s}"
        );
        let image = s["image"].as_str().unwrap();
        let (_, digest) = raw(image);
        assert_eq!(s["digest"].as_str(), Some(digest.as_str()), "{s}");
        let index = index_of(image);
        assert_eq!(
            index,
            [
                ("linux/amd64".to_string(), platform_digest(s, "linux/amd64")),
                ("linux/arm64".to_string(), platform_digest(s, "linux/arm64")),
            ],
            "{image}"
        );
        // Each entry is its platform's image: the config says so too.
        let arm = format!("{}@{}", project.repo(), platform_digest(s, "linux/arm64"));
        let config = support::skopeo_config(&arm);
        assert_eq!(config["architecture"], "arm64", "{arm}");
    }
    let all = first["all"]["image"]
        .as_str()
        .expect("an all-sessions image");
    assert_eq!(index_of(all).len(), 2, "{all}");

    // 2. Each platform runs its sessions offline from the same tag, reusing the venv.
    let checkout = support::copy_fixture("sample");
    let tests = session(&first, "tests")["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        runs_offline_on(&tests, checkout.path(), "tests", "tests", "linux/arm64"),
        "aarch64"
    );
    assert_eq!(
        runs_offline_on(&tests, checkout.path(), "tests", "tests", "linux/amd64"),
        "x86_64"
    );
    let lint = session(&first, "lint")["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        runs_offline_on(&lint, checkout.path(), "lint", "lint", "linux/arm64"),
        "aarch64"
    );

    // 3. plan: every platform a hit, and the index; inspect lists the platforms.
    let plan = project.plan();
    for row in plan["sessions"].as_array().unwrap() {
        assert_eq!(row["status"], "hit", "{row}");
        assert_eq!(row["platforms"]["linux/arm64"], "hit", "{row}");
        assert_eq!(row["platforms"]["linux/amd64"], "hit", "{row}");
    }
    let out = project.run(&["inspect", "--json", "--platform", "linux/arm64", &tests]);
    let inspected = support::json_ok(&out, "inspect");
    assert_eq!(
        inspected["index"]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"]),
        "{inspected}"
    );
    assert_eq!(
        inspected["manifest_digest"].as_str(),
        Some(platform_digest(session(&first, "tests"), "linux/arm64").as_str())
    );

    // `venvimg run` takes this machine's platform: the amd64 image, already a hit.
    let (code, text) = project.outcome(&["run", "-s", "lint"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("building first"), "{text}");
    assert!(
        text.contains(&platform_digest(session(&first, "lint"), "linux/amd64")),
        "run should use the amd64 image of lint: {text}"
    );

    // 4. All hits: nothing is built, the same index digests.
    let again = project.build(&[]);
    for name in names {
        let s = session(&again, name);
        assert_eq!(s["outcome"], "hit", "{s}");
        assert_eq!(s["digest"], session(&first, name)["digest"], "{s}");
    }

    // 5. Reproducible under emulation: arm64 rebuilt from clean state gives the same
    // image digests, so the index is the same too.
    let forced = project.build(&[
        "--force",
        "--platform",
        "linux/arm64",
        "-s",
        "lint",
        "tests",
    ]);
    for name in ["lint", "tests"] {
        let s = session(&forced, name);
        assert_eq!(outcomes(s), ["linux/amd64=hit", "linux/arm64=built"], "{s}");
        assert_eq!(
            platform_digest(s, "linux/arm64"),
            platform_digest(session(&first, name), "linux/arm64"),
            "{name}: the emulated arm64 rebuild is not byte-identical"
        );
        assert_eq!(s["digest"], session(&first, name)["digest"], "{s}");
    }

    // 6. A lock change rebuilds that session on both platforms, and only it.
    std::fs::copy(
        support::fixture("sample-bump").join("uv.lock"),
        project.path().join("uv.lock"),
    )
    .unwrap();
    let bumped = project.build(&[]);
    let tests_after = session(&bumped, "tests");
    assert_eq!(
        outcomes(tests_after),
        ["linux/amd64=built", "linux/arm64=built"],
        "{tests_after}"
    );
    assert_ne!(tests_after["tag"], session(&first, "tests")["tag"]);
    assert_eq!(index_of(tests_after["image"].as_str().unwrap()).len(), 2);
    for name in ["lint", "compat-3.11"] {
        assert_eq!(session(&bumped, name)["outcome"], "hit", "{bumped}");
    }
}

#[test]
fn two_runners_pushing_different_platforms_of_one_key_both_end_in_the_index() {
    let project = project("multi-race", "");
    // The matrix has an entry per session and platform that misses, each saying which.
    let out = project.run(&["plan", "--matrix", "-q"]);
    let matrix = support::json_ok(&out, "plan --matrix");
    let mut entries: Vec<String> = matrix["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["session"].as_str().unwrap(),
                e["platform"].as_str().unwrap()
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "compat-3.11 linux/amd64",
            "compat-3.11 linux/arm64",
            "lint linux/amd64",
            "lint linux/arm64",
            "tests linux/amd64",
            "tests linux/arm64"
        ],
        "{matrix}"
    );
    let spawn = |platform: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_venvimg"));
        cmd.envs(support::testenv().envs.iter().map(|(k, v)| (k, v)))
            .current_dir(project.path())
            .args([
                "build",
                "--json",
                "-q",
                "-s",
                "lint",
                "--platform",
                platform,
            ])
            .args(["--build-ca", support::testenv().ca_file()]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both runners at once, as two CI jobs of a matrix would.
    let amd = spawn("linux/amd64");
    let arm = spawn("linux/arm64");
    let mut images = Vec::new();
    for (platform, child) in [("linux/amd64", amd), ("linux/arm64", arm)] {
        let out = child.wait_with_output().unwrap();
        let doc = support::json_ok(&out, &format!("build --platform {platform}"));
        let s = session(&doc, "lint");
        let mine = s["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["platform"] == platform)
            .unwrap()
            .clone();
        assert_eq!(mine["outcome"], "built", "{s}");
        images.push(s["image"].as_str().unwrap().to_string());
    }
    assert_eq!(images[0], images[1], "both runners name the same index tag");
    let index = index_of(&images[0]);
    let platforms: Vec<&str> = index.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{images:?}");

    // A last `venvimg build` (the matrix's final job) finds both and builds nothing.
    let last = project.build(&["-s", "lint"]);
    let s = session(&last, "lint");
    assert_eq!(outcomes(s), ["linux/amd64=hit", "linux/arm64=hit"], "{s}");
    assert_eq!(s["image"].as_str(), Some(images[0].as_str()));
}

#[test]
fn a_platform_the_base_lacks_or_the_config_does_not_list_is_a_clear_error() {
    // The amd64-only base has no arm64 image.
    let p = Project::fixture("sample").unique_repo("multi-err");
    p.write_config_raw(&format!(
        "repository: {}\nbase: {}\n{PLATFORMS}",
        p.repo(),
        support::testenv().base
    ));
    let (code, text) = p.outcome(&["plan"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("linux/arm64") && text.contains(&support::testenv().base),
        "{text}"
    );
    assert!(
        text.contains("it has: linux/amd64") || text.contains("platforms"),
        "{text}"
    );

    let q = project("multi-err2", "");
    let (code, text) = q.outcome(&["build", "--platform", "linux/s390x"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--platform `linux/s390x`: ") && text.contains("venvimg.yaml"),
        "{text}"
    );

    q.write_config_raw(&format!(
        "repository: {}\nbase: {}\nplatform: linux/amd64\n{PLATFORMS}",
        q.repo(),
        multi_base()
    ));
    let (code, text) = q.outcome(&["plan"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("platforms") && text.contains("not both"),
        "{text}"
    );
}
