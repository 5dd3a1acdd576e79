//! `layers: per-distribution` (issue #11): the same venv split into layers by installed
//! distribution unpacks to exactly the tree of the single-layer image, runs offline, and a
//! one-package bump uploads and pulls only the layers that changed.
use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::Project;

/// Unpack an OCI layout's image with umoci (an independent reader) and describe every
/// entry under `under`: type, mode, owner, link target, content digest.
fn unpacked_tree(layout: &Path, under: &str) -> BTreeMap<PathBuf, String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string();
    let bundle = tempfile::tempdir().unwrap();
    let target = bundle.path().join("b");
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&target)
        .output()
        .expect("umoci must be installed (apt-get install umoci)");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = target.join("rootfs");
    let tree = support::describe_tree(&root.join(under.trim_start_matches('/')), false);
    assert!(tree.len() > 50, "suspiciously small tree: {}", tree.len());
    tree
}

#[test]
fn per_distribution_tree_equals_the_single_layer_tree_and_runs_offline() {
    let single = Project::fixture("sample")
        .unique_repo("layers-single")
        .config("sessions: [tests]\nlayers: single\n");
    let split = Project::fixture("sample")
        .unique_repo("layers-split")
        .config("sessions: [tests]\nlayers: per-distribution\n");
    let out = tempfile::tempdir().unwrap();
    let a = single.build(&[
        "--output",
        &format!("oci:{}", out.path().join("single").display()),
    ]);
    let b = split.build(&[
        "--output",
        &format!("oci:{}", out.path().join("split").display()),
    ]);
    assert_eq!(a["sessions"][0]["outcome"], "built");
    assert_eq!(b["sessions"][0]["outcome"], "built");

    let t1 = unpacked_tree(&out.path().join("single"), "/opt/nox");
    let t2 = unpacked_tree(&out.path().join("split"), "/opt/nox");
    let only1: Vec<_> = t1
        .iter()
        .filter(|(k, v)| t2.get(*k) != Some(v))
        .take(5)
        .collect();
    let only2: Vec<_> = t2
        .iter()
        .filter(|(k, v)| t1.get(*k) != Some(v))
        .take(5)
        .collect();
    assert!(
        only1.is_empty() && only2.is_empty(),
        "trees differ:\n single: {only1:?}\n split: {only2:?}"
    );

    // The split image has several venv layers; inspect says what each holds.
    let image = b["sessions"][0]["image"].as_str().unwrap().to_string();
    let doc = support::json_ok(
        &support::venvimg()
            .args(["inspect", "--json", &image])
            .output()
            .unwrap(),
        "inspect",
    );
    let layers = doc["sessions"][0]["layers"].as_array().unwrap();
    assert!(layers.len() >= 3, "{layers:?}");
    assert_eq!(layers[0]["group"], "skeleton");
    let held: Vec<String> = layers
        .iter()
        .flat_map(|l| l["distributions"].as_array().cloned().unwrap_or_default())
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    for p in ["pytest", "pluggy", "iniconfig", "packaging"] {
        assert!(
            held.iter().any(|h| h == p),
            "{p} not in any layer: {held:?}"
        );
    }

    // And the job runs offline in it, pulled by podman and by docker.
    let checkout = support::copy_fixture("sample");
    let (ok, text) = support::run_offline(&image, checkout.path(), "tests");
    assert!(ok, "{text}");
    assert!(!text.contains("Creating virtual environment"), "{text}");
    support::need_docker();
    let (code, text) = split.outcome(&["run", "--engine", "docker", "--no-build", "-s", "tests"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Reusing existing virtual environment"),
        "{text}"
    );
    assert!(!text.contains("Creating virtual environment"), "{text}");
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

/// `podman pull` of `image`; returns the layer blobs the registry served for it, counted
/// in the registry's access log (podman's own output does not say which it skipped when
/// it is not on a terminal).
fn pull(image: &str, registry_log: &Path, storage: &Path) -> Vec<String> {
    let seen = std::fs::read_to_string(registry_log)
        .unwrap_or_default()
        .len();
    let out = support::podman()
        .arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("runroot"))
        .args(["pull", image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman pull {image}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(registry_log).unwrap();
    let mut served: Vec<String> = log[seen..]
        .lines()
        .filter(|l| {
            l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\" 200 ")
        })
        .filter_map(|l| {
            let i = l.find("/blobs/")? + "/blobs/".len();
            Some(l[i..].split([' ', '"']).next()?.to_string())
        })
        .collect();
    served.sort();
    served.dedup();
    served
}

/// The acceptance of issue #11 on the 60-package data/web stack: a one-package bump
/// uploads under 5% of the first push, measured as the growth of the registry's storage,
/// and a podman holding the old image pulls only the changed layers.
#[test]
fn one_package_bump_uploads_and_pulls_only_the_changed_layers() {
    let env = support::testenv();
    // A registry of its own, so the storage growth is this test's alone.
    let name = format!("bump-{}", std::process::id());
    let registry =
        support::private_registry(&name, "log:\n  level: warn\n  accesslog: {disabled: false}");
    let registry_log = env.state_dir.join("registries").join(&name).join("log");
    let storage = env.state_dir.join("registries").join(&name).join("storage");
    let dir = Project::fixture("bigstack")
        .repository(&format!("{registry}/bigstack/ci"))
        .config("layers: per-distribution\n");

    let before = dir_bytes(&storage);
    let first = dir.build(&[]);
    let after_first = dir_bytes(&storage);
    let venv_bytes = first["sessions"][0]["layer_size"].as_u64().unwrap();
    assert!(
        venv_bytes > 40 << 20,
        "bigstack's venv layers are only {venv_bytes} bytes"
    );
    assert!(
        after_first - before >= venv_bytes,
        "the first push stored less than the venv"
    );
    let first_image = first["sessions"][0]["image"].as_str().unwrap().to_string();
    // A podman storage of its own: the machine "holding the old image" holds nothing else.
    let podman_storage = tempfile::tempdir().unwrap();
    pull(&first_image, &registry_log, podman_storage.path());

    std::fs::copy(
        support::fixture("bigstack-variants").join("small-bump.lock"),
        dir.path().join("uv.lock"),
    )
    .unwrap();
    let second = dir.build(&[]);
    assert_eq!(second["sessions"][0]["outcome"], "built");
    let growth = dir_bytes(&storage) - after_first;
    assert!(
        growth * 20 < venv_bytes,
        "the bump stored {growth} bytes in the registry, not under 5% of {venv_bytes}"
    );
    let uploaded = second["push"]["bytes_uploaded"].as_u64().unwrap();
    assert!(
        uploaded * 20 < venv_bytes,
        "uploaded {uploaded} of {venv_bytes}"
    );

    // podman holding the old image fetches only the layers whose digests changed.
    let second_image = second["sessions"][0]["image"].as_str().unwrap().to_string();
    let layers = |image: &str| -> Vec<String> {
        support::skopeo_raw_manifest(image)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let old = layers(&first_image);
    let new = layers(&second_image);
    let mut changed: Vec<String> = new.iter().filter(|d| !old.contains(d)).cloned().collect();
    changed.sort();
    assert!(
        (1..=2).contains(&changed.len()),
        "{} layers changed for one package",
        changed.len()
    );
    // The config blob is fetched too; compare layers only.
    let fetched: Vec<String> = pull(&second_image, &registry_log, podman_storage.path())
        .into_iter()
        .filter(|d| new.contains(d))
        .collect();
    assert_eq!(
        fetched, changed,
        "podman fetched other layers than the changed ones"
    );
    eprintln!(
        "bump: registry grew {growth} B, uploaded {uploaded} B of {venv_bytes} B venv layers; \
         podman fetched {} of {} layers",
        fetched.len(),
        new.len()
    );
}
