//! `venvimg restore` (issue 36): a session's venv from its image straight into the
//! envdir — the tree podman extracts from the same image, to the mode, owner, mtime and
//! hard link; refused over another key's venv; a miss says to build; and nox reuses the
//! restored venv offline, both in a job container of the base image and on a host runner
//! (`builder: local`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, Project};

/// Every entry under `dir`, to the mtime and hard link, the folder itself included.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = support::describe_tree(dir, true);
    let top = std::fs::symlink_metadata(dir).unwrap();
    out.insert(
        PathBuf::from("."),
        format!("dir mode {:o} mtime {}", top.mode() & 0o7777, top.mtime()),
    );
    out
}

/// What podman extracts of `image` under `under`: the container's root mounted by podman.
fn podman_tree(image: &str, under: &str) -> BTreeMap<PathBuf, String> {
    let ok = |cmd: &mut Command, what: &str| -> String {
        let out = cmd
            .output()
            .expect("podman must be installed (apt-get install -y podman)");
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(support::podman().args(["pull", "-q", image]), "podman pull");
    let id = ok(
        support::podman().args(["create", image, "true"]),
        "podman create",
    );
    let mounted = ok(support::podman().args(["mount", &id]), "podman mount");
    let t = tree(&Path::new(&mounted).join(under.trim_start_matches('/')));
    let _ = support::podman().args(["umount", &id]).output();
    let _ = support::podman().args(["rm", "-f", &id]).output();
    let _ = support::podman().args(["rmi", "-f", image]).output();
    t
}

fn outcome(p: &Project, args: &[&str]) -> (Option<i32>, String) {
    p.outcome(args)
}

/// The restored tree is the one podman extracts from the same image: every layer
/// layout and compression venvimg writes (per-distribution gzip layers, one zstd layer).
#[test]
fn a_restored_venv_is_the_tree_podman_extracts_from_the_image() {
    for (name, extra) in [
        ("restore-tree-gzip", "layers: per-distribution\n"),
        ("restore-tree-zstd", "layers: single\ncompression: zstd\n"),
    ] {
        let p = Project::fixture("sample").unique_repo(name).config(extra);
        let built = p.build(&[]);
        let image = support::project::image_of(&built, "tests");
        let root = tempfile::tempdir().unwrap();
        let root_s = root.path().to_str().unwrap();
        // The plan's image, or (zstd) the image named, without a plan.
        let by = if name.ends_with("zstd") {
            vec!["restore", "--image", image.as_str(), "--root", root_s]
        } else {
            vec!["restore", "-s", "tests", "--root", root_s]
        };
        let (code, text) = outcome(&p, &by);
        assert_eq!(code, Some(0), "{name}: {text}");
        assert!(text.contains("restored"), "{name}: {text}");
        let ours = tree(&root.path().join("opt/nox/tests"));
        assert!(
            ours.len() > 50,
            "{name}: a suspiciously small venv: {}",
            ours.len()
        );
        let theirs = podman_tree(&image, "/opt/nox/tests");
        let differ: Vec<String> = ours
            .iter()
            .filter(|(k, v)| theirs.get(*k) != Some(*v))
            .map(|(k, v)| format!("{}: ours {v}, podman's {:?}", k.display(), theirs.get(k)))
            .chain(
                theirs
                    .keys()
                    .filter(|k| !ours.contains_key(*k))
                    .map(|k| format!("{}: only in podman's", k.display())),
            )
            .take(20)
            .collect();
        assert!(
            differ.is_empty(),
            "{name}: the trees differ:\n{}",
            differ.join("\n")
        );
        // Nothing else is left in the envdir: the venvs, and the record of what they are.
        let mut left: Vec<String> = std::fs::read_dir(root.path().join("opt/nox"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".venvimg", "tests"], "{name}");

        // Again: the venv there is the current key's, nothing is fetched.
        let (code, text) = outcome(&p, &["restore", "-s", "tests", "--root", root_s, "--json"]);
        assert_eq!(code, Some(0), "{text}");
        let doc: serde_json::Value =
            serde_json::from_str(&text[..text.rfind('}').unwrap() + 1]).unwrap();
        assert_eq!(doc["sessions"][0]["outcome"], "present", "{text}");
    }
}

/// A miss is exit 1 saying to build; a venv of another key, or a folder venvimg did not
/// restore, is not replaced without --force; --force replaces it.
#[test]
fn restore_refuses_a_miss_and_another_keys_venv() {
    let p = Project::fixture("sample")
        .unique_repo("restore-refusals")
        .config("sessions: [lint]\n");
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().to_str().unwrap();
    let (code, text) = outcome(&p, &["restore", "--root", root_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no image for its current key") && text.contains("venvimg build -s lint"),
        "{text}"
    );
    assert!(!root.path().join("opt/nox/lint").exists());

    // --build builds the miss first, shows what it built (as `run` does), restores it.
    let built_root = tempfile::tempdir().unwrap();
    let ca = support::testenv().ca_file();
    let (code, text) = outcome(
        &p,
        &[
            "restore",
            "--build",
            "--build-ca",
            ca,
            "--root",
            built_root.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("lint") && l.contains("built")),
        "restore --build shows the build table: {text}"
    );
    assert!(
        built_root.path().join("opt/nox/lint/pyvenv.cfg").is_file(),
        "{text}"
    );

    let venv = root.path().join("opt/nox/lint");
    let marker = root.path().join("opt/nox/.venvimg/lint.json");
    // A folder venvimg did not put there.
    std::fs::create_dir_all(&venv).unwrap();
    std::fs::write(venv.join("mine.txt"), "keep me").unwrap();
    let (code, text) = outcome(&p, &["restore", "--root", root_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("a folder venvimg did not restore") && text.contains("--force"),
        "{text}"
    );
    assert!(venv.join("mine.txt").exists());

    let (code, text) = outcome(&p, &["restore", "--root", root_s, "--force"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!venv.join("mine.txt").exists() && venv.join("pyvenv.cfg").is_file());

    // The record names another key: another key's venv.
    let record = std::fs::read_to_string(&marker).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&record).unwrap();
    doc["key"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(&marker, doc.to_string()).unwrap();
    let (code, text) = outcome(&p, &["restore", "--root", root_s]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("the venv of another key (0123456789abcdef"),
        "{text}"
    );
    // An image whose venvs are for another envdir is refused by --image, naming both.
    let other = Project::fixture("sample")
        .unique_repo("restore-other-envdir")
        .config("sessions: [lint]\nenvdir: /opt/other\n");
    let built = other.build(&[]);
    let image = support::project::image_of(&built, "lint");
    let (code, text) = outcome(
        &p,
        &["restore", "--image", &image, "--root", root_s, "--force"],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("its venvs are for envdir /opt/other, not /opt/nox"),
        "{text}"
    );
    // No staging folder left behind by any of it.
    let stray: Vec<String> = std::fs::read_dir(root.path().join("opt/nox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".venvimg-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// A CI job whose container is the base image: a step restores the session's venv into
/// the envdir, then nox runs — here two containers of the base sharing the envdir, the
/// second without network.
#[test]
fn nox_reuses_a_venv_restored_in_a_job_container_of_the_base_image() {
    let env = support::testenv();
    let p = Project::fixture("sample")
        .unique_repo("restore-job")
        .config("sessions: [tests]\n");
    p.build(&[]);
    let envdir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("venvimg");
    // venvimg in a job container of the base: nox, no engine.
    let in_job = |args: &[&str]| {
        support::podman()
            .args(["run", "--rm", "--network", "host", "--pull", "missing"])
            .args([
                "-v",
                &format!("{}:/usr/local/bin/venvimg:ro", bin.display()),
            ])
            .args(["-v", &format!("{}:/src", p.path().display()), "-w", "/src"])
            .args(["-v", &format!("{}:/opt/nox", envdir.path().display())])
            .arg(&env.base)
            .arg("venvimg")
            .args(args)
            .output()
            .expect("podman must be installed (apt-get install -y podman)")
    };
    // `plan` there too: the dry run with the job's nox, the same key as the build's.
    let plan = in_job(&["plan", "--json"]);
    let text = String::from_utf8_lossy(&plan.stderr);
    assert!(plan.status.success(), "plan in the job container: {text}");
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(report["sessions"][0]["status"], "hit", "{report}");
    let restore = in_job(&["restore"]);
    let text = String::from_utf8_lossy(&restore.stderr);
    assert!(
        restore.status.success(),
        "restore in the job container: {text}"
    );
    let (ok, text) = support::run_offline_mounting(
        support::podman(),
        &env.base,
        p.path(),
        "tests",
        &[],
        &[format!("{}:/opt/nox", envdir.path().display())],
    );
    support::assert_reused(ok, &text, "tests in a job container of the base");
}

/// A host runner without containers: images built with `builder: local` (the venv at the
/// checkout's own envdir path), the envdir gone as on a fresh runner, restored, and nox
/// reusing it with no network at all.
#[test]
fn nox_reuses_a_venv_restored_on_a_host_runner() {
    let p = Project::fixture("sample").unique_repo("restore-host");
    let workdir = std::fs::canonicalize(p.path()).unwrap();
    // Outside the checkout, as venvimg requires (CI checkouts wipe the workspace).
    let runner = tempfile::tempdir().unwrap();
    let envdir = runner.path().join("nox");
    p.write_config(&format!(
        "sessions: [tests]\nbuilder: local\nworkdir: {}\nenvdir: {}\n",
        workdir.display(),
        envdir.display()
    ));
    p.build(&[]);
    std::fs::remove_dir_all(&envdir).unwrap();
    let (code, text) = outcome(&p, &["restore"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(envdir.join("tests/pyvenv.cfg").is_file(), "{text}");
    let out = Command::new("unshare")
        .args(["-n", "nox", "--envdir"])
        .arg(&envdir)
        .args(["--reuse-venv=always", "--no-install", "-s", "tests"])
        .current_dir(p.path())
        .env("UV_OFFLINE", "1")
        .output()
        .expect("unshare (util-linux) and nox (pip install nox) must be installed");
    support::assert_reused(
        out.status.success(),
        &support::output_text(&out),
        "tests on a host runner",
    );
}
