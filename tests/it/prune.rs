//! `venvimg prune` against real registries: images of keys no longer current are listed by
//! a dry run and deleted with `--yes`; the registry's garbage collector then runs, and the
//! current images still pull and run. Foreign images are never touched; `--keep` and
//! `--keep-for` hold images back; a registry without deletes gets a clear error.
//!
//! Each test that deletes (or must fail to) has a registry of its own, started here as a
//! child process: distribution's garbage collector must not run while the registry
//! serves (its docs warn against it), so the test stops its registry, collects, and starts
//! it again on the same port and storage.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::project::Project;
use crate::support::registry_kit;

/// A distribution registry this test owns: its config, storage and process (also used by
/// the SBOM tests, which wipe it for a clean second build).
pub(crate) struct OwnedRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnedRegistry {
    pub(crate) fn start(deletes: bool) -> OwnedRegistry {
        let _ = support::testenv();
        let dir = tempfile::Builder::new()
            .prefix("venvimg-prune-registry-")
            .tempdir()
            .unwrap();
        let port = support::free_port();
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: {deletes}}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let mut r = OwnedRegistry {
            dir,
            port,
            child: None,
        };
        r.serve();
        r
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn serve(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot run docker-registry (apt-get install -y docker-registry)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_status(&format!("http://{}/v2/", self.addr()), "GET") == "200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the test registry did not come up: {}",
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stop, delete everything it stored, serve again (same port, so the same names).
    pub(crate) fn wipe(&mut self) {
        self.stop();
        let storage = self.dir.path().join("storage");
        if storage.exists() {
            std::fs::remove_dir_all(&storage).unwrap();
        }
        self.serve();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop, collect garbage, serve again (same port, same storage); the collector's output.
    fn collect_garbage(&mut self) -> String {
        self.stop();
        let out = Command::new("docker-registry")
            .arg("garbage-collect")
            .arg(self.config())
            .output()
            .unwrap();
        let text = support::output_text(&out);
        assert!(out.status.success(), "garbage-collect failed:\n{text}");
        self.serve();
        text
    }
}

impl Drop for OwnedRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `curl`'s status for METHOD url ("000" when nothing answers).
fn http_status(url: &str, method: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(["-X", method, url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn blob_status(repo: &str, digest: &str) -> String {
    let (host, name) = repo.split_once('/').unwrap();
    http_status(&format!("http://{host}/v2/{name}/blobs/{digest}"), "HEAD")
}

/// Pull every blob of `image` (skopeo, into a temporary folder): the registry has them all.
fn pulls_completely(image: &str) {
    let dest = tempfile::tempdir().unwrap();
    let out = support::skopeo()
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", dest.path().join("img").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{image} does not pull completely: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_marker(tag: &str) -> bool {
    tag.starts_with("sha256-") && tag.ends_with(".pushed")
}

/// Tags of venvimg's session and all-sessions images (`lint-…`, `compat-…`, `all-…`).
fn image_tags(repo: &str) -> BTreeSet<String> {
    support::list_tags(repo)
        .into_iter()
        .filter(|t| {
            ["lint-", "compat-", "all-"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .collect()
}

fn prune(p: &Project, args: &[&str]) -> (Option<i32>, String, Value) {
    let mut all = vec!["prune"];
    all.extend_from_slice(args);
    let out = p.run(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code(), text, json)
}

/// The tags of the report's images with `action`.
fn tags_with(report: &Value, action: &str) -> BTreeSet<String> {
    report["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {report}"))
        .iter()
        .filter(|i| i["action"] == action)
        .flat_map(|i| i["tags"].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn set_pyflakes(dir: &Path, version: &str) {
    let f = dir.join("noxfile.py");
    let text = std::fs::read_to_string(&f).unwrap();
    let start = text.find("pyflakes==").expect("the sample pins pyflakes");
    let end = start + text[start..].find('"').unwrap();
    std::fs::write(
        &f,
        format!("{}pyflakes=={version}{}", &text[..start], &text[end..]),
    )
    .unwrap();
}

#[test]
fn dry_run_lists_exactly_the_stale_images_and_yes_deletes_them_then_gc_keeps_current_ones() {
    let env = support::testenv();
    let mut reg = OwnedRegistry::start(true);
    let p = Project::fixture("sample")
        .repository(&format!("{}/prune/sample", reg.addr()))
        .config("sessions: [lint, compat]\n");
    let repo = p.repo().to_string();

    // Generation 1: pyflakes 3.1.0. Build pushes each image with its push marker.
    set_pyflakes(p.path(), "3.1.0");
    p.build(&[]);
    let first = image_tags(&repo);
    assert_eq!(
        first.len(),
        3,
        "two session images and the all-sessions image: {first:?}"
    );
    let tags = support::list_tags(&repo);
    // Each session image's SBOM: (its referrers tag, the SBOM manifest's digest).
    let mut stale_sboms: Vec<(String, String)> = Vec::new();
    for t in &first {
        let digest = support::skopeo_inspect_digest(&format!("{repo}:{t}")).unwrap();
        let marker = format!("{}.pushed", digest.replace(':', "-"));
        assert!(
            tags.contains(&marker),
            "no push marker {marker} for {t}: {tags:?}"
        );
        if !t.starts_with("all-") {
            let sbom = crate::sbom::sbom_digests(&repo, &digest);
            assert_eq!(sbom.len(), 1, "{t}: {sbom:?}");
            stale_sboms.push((digest.replace(':', "-"), sbom[0].clone()));
        }
    }
    assert_eq!(stale_sboms.len(), 2);
    let stale_lint = first
        .iter()
        .find(|t| t.starts_with("lint-"))
        .unwrap()
        .clone();
    let lint_manifest = support::skopeo_raw_manifest(&format!("{repo}:{stale_lint}"));
    let stale_layer = lint_manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let stale_layer_size = stale_layer["size"].as_u64().unwrap();
    let stale_layer = stale_layer["digest"].as_str().unwrap().to_string();
    // Another tool's referrer of the stale lint image (a signature, say), added to the
    // same referrers tag: prune deletes venvimg's SBOM and leaves it listed.
    let stale_lint_digest =
        support::skopeo_inspect_digest(&format!("{repo}:{stale_lint}")).unwrap();
    let foreign_referrer = crate::sbom::push_foreign_referrer(&repo, &stale_lint_digest);

    // Generation 2: the sample as it is (pyflakes 3.2.0): the noxfile changed, so every
    // key did; compat's venv is the same (its layer is shared by old and new images).
    set_pyflakes(p.path(), "3.2.0");
    p.build(&[]);
    let now = image_tags(&repo);
    let current: BTreeSet<String> = now.difference(&first).cloned().collect();
    assert_eq!(current.len(), 3, "{now:?}");
    let plan = p.plan();
    for s in plan["sessions"].as_array().unwrap() {
        assert!(current.contains(s["tag"].as_str().unwrap()), "{plan}");
    }

    // Somebody else's image in the same repository (the base, copied): never deleted.
    support::copy_tag(&env.base, &format!("{repo}:foreign"));

    // The dry run lists exactly the stale images and deletes nothing.
    let before = support::list_tags(&repo);
    let (code, text, report) = prune(&p, &["--json"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(tags_with(&report, "delete"), first, "{text}");
    assert_eq!(tags_with(&report, "keep"), current, "{text}");
    assert!(tags_with(&report, "skip").contains("foreign"), "{text}");
    // Referrers tags are no images of their own: not even listed as skipped.
    for action in ["delete", "keep", "skip"] {
        let odd: Vec<String> = tags_with(&report, action)
            .into_iter()
            .filter(|t| t.starts_with("sha256-"))
            .collect();
        assert!(odd.is_empty(), "{action}: {odd:?} in {text}");
    }
    // What deleting generation 1 frees: the blobs only its manifests use (read with
    // skopeo). Compat's venv is the same in both generations: its layer is not counted.
    let blobs = |tags: &BTreeSet<String>| -> BTreeSet<(String, u64)> {
        tags.iter()
            .flat_map(|t| {
                let m = support::skopeo_raw_manifest(&format!("{repo}:{t}"));
                let mut v: Vec<Value> = m["layers"].as_array().unwrap().clone();
                v.push(m["config"].clone());
                v
            })
            .map(|d| {
                (
                    d["digest"].as_str().unwrap().to_string(),
                    d["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let keeping = blobs(&current);
    let expected_freed: u64 = blobs(&first)
        .iter()
        .filter(|b| !keeping.contains(b))
        .map(|(_, size)| size)
        .sum();
    assert!(expected_freed > stale_layer_size, "{expected_freed}");
    assert_eq!(report["bytes_freed_estimate"], expected_freed, "{text}");
    assert_eq!(support::list_tags(&repo), before);
    // The table says the same, and how to delete.
    let (code, text, _) = prune(&p, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("would delete 3 image(s), freeing ~"),
        "{text}"
    );
    assert!(text.contains("--yes"), "{text}");
    assert!(
        text.contains(&stale_lint) && text.contains("kept: current"),
        "{text}"
    );
    assert_eq!(support::list_tags(&repo), before);

    // --yes deletes them (and their markers), each as it goes.
    let (code, text, _) = prune(&p, &["--yes"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("deleted {stale_lint}")), "{text}");
    assert!(text.contains("deleted 3 image(s)"), "{text}");
    let after = support::list_tags(&repo);
    for t in &first {
        assert!(!after.contains(t), "{t} survived: {after:?}");
    }
    for t in current.iter().chain(["foreign".to_string()].iter()) {
        assert!(after.contains(t), "{t} was deleted: {after:?}");
    }
    assert_eq!(
        after.iter().filter(|t| is_marker(t)).count(),
        3,
        "{after:?}"
    );
    // The stale images' SBOMs went with them: the manifests are gone, and so is the
    // referrers tag that listed only venvimg's SBOM; the one listing another tool's
    // referrer too now lists only that. The current images keep theirs.
    for (referrers_tag, sbom) in &stale_sboms {
        assert_eq!(
            crate::sbom::manifest_status(&repo, sbom),
            "404",
            "the SBOM {sbom} of a deleted image survived:\n{text}"
        );
        if *referrers_tag == stale_lint_digest.replace(':', "-") {
            assert_eq!(
                crate::sbom::referrer_digests(&repo, &stale_lint_digest),
                [foreign_referrer.as_str()],
                "{referrers_tag}"
            );
        } else {
            assert!(!after.contains(referrers_tag), "{referrers_tag}: {after:?}");
        }
    }
    assert!(text.contains("deleted the SBOM of"), "{text}");
    for t in current.iter().filter(|t| !t.starts_with("all-")) {
        let digest = support::skopeo_inspect_digest(&format!("{repo}:{t}")).unwrap();
        assert_eq!(crate::sbom::sbom_digests(&repo, &digest).len(), 1, "{t}");
    }

    // The garbage collector frees the stale layer; every current tag still pulls and
    // runs, and the foreign image still pulls.
    let gc = reg.collect_garbage();
    assert_eq!(blob_status(&repo, &stale_layer), "404", "gc:\n{gc}");
    for t in &current {
        pulls_completely(&format!("{repo}:{t}"));
    }
    pulls_completely(&format!("{repo}:foreign"));
    let lint = current.iter().find(|t| t.starts_with("lint-")).unwrap();
    let all = current.iter().find(|t| t.starts_with("all-")).unwrap();
    support::assert_runs_offline(&format!("{repo}:{lint}"), p.path(), "lint");
    support::assert_runs_offline(&format!("{repo}:{all}"), p.path(), "lint");
    support::assert_runs_offline(&format!("{repo}:{all}"), p.path(), "compat");
    let (code, text) = p.outcome(&["run", "--no-build", "-s", "lint", "compat"]);
    assert_eq!(code, Some(0), "{text}");

    // Nothing stale is left.
    let (code, text, report) = prune(&p, &["--json"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(tags_with(&report, "delete").is_empty(), "{text}");
}

/// Push an image with a venvimg record for session `lint` under `tag` (and, with
/// `marked`, its push marker); returns its digest.
fn push_recorded(
    rt: &tokio::runtime::Runtime,
    reg: &venvimg::registry::Registry,
    repo: &str,
    tag: &str,
    seed: u64,
    marked: bool,
) -> String {
    let work = tempfile::tempdir().unwrap();
    let img = registry_kit::recorded_image(rt, reg, work.path(), "lint", seed);
    let target = format!("{repo}:{tag}");
    let (digest, _) = registry_kit::push(rt, reg, &target, &img).unwrap();
    if marked {
        let wrote = rt
            .block_on(reg.mark_pushed(
                &registry_kit::reference(&target),
                &venvimg::model::Digest::parse(&digest).unwrap(),
                img.image.manifest.len(),
            ))
            .unwrap();
        assert!(wrote);
    }
    digest
}

#[test]
fn keep_holds_back_the_newest_and_keep_for_the_young() {
    let p = Project::fixture("sample")
        .unique_repo("prune-keep")
        .config("sessions: [lint]\n");
    let repo = p.repo().to_string();
    let rt = registry_kit::runtime();
    let reg = venvimg::registry::Registry::new(
        registry_kit::plain_transport(),
        &[&support::testenv().registry],
    )
    .unwrap();
    // Oldest without a marker (unknown age), then two a second apart.
    push_recorded(&rt, &reg, &repo, "lint-00000000000000aa", 1, false);
    push_recorded(&rt, &reg, &repo, "lint-00000000000000bb", 2, true);
    std::thread::sleep(Duration::from_millis(1100));
    push_recorded(&rt, &reg, &repo, "lint-00000000000000cc", 3, true);
    let all: BTreeSet<String> = ["aa", "bb", "cc"]
        .iter()
        .map(|s| format!("lint-00000000000000{s}"))
        .collect();
    let tags = |names: &[&str]| -> BTreeSet<String> {
        names
            .iter()
            .map(|s| format!("lint-00000000000000{s}"))
            .collect()
    };

    let (code, text, report) = prune(&p, &["--json"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tags_with(&report, "delete"), all, "{text}");

    let (code, text, report) = prune(&p, &["--json", "--keep", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tags_with(&report, "delete"), tags(&["aa", "bb"]), "{text}");
    assert_eq!(tags_with(&report, "keep"), tags(&["cc"]), "{text}");
    let cc = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tags"][0] == "lint-00000000000000cc")
        .unwrap();
    assert_eq!(cc["why"], "newest 1");

    let (code, text, report) = prune(&p, &["--json", "--keep", "2"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tags_with(&report, "delete"), tags(&["aa"]), "{text}");

    // Marked images are minutes old at most; the unmarked one counts as old.
    let (code, text, report) = prune(&p, &["--json", "--keep-for", "1h"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tags_with(&report, "delete"), tags(&["aa"]), "{text}");
    assert_eq!(tags_with(&report, "keep"), tags(&["bb", "cc"]), "{text}");
    let (code, text) = p.outcome(&["prune", "--keep-for", "1h"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("kept: younger than 1h"), "{text}");
    assert!(text.contains("unknown"), "{text}");
    // A dry run deletes nothing.
    assert!(all.is_subset(&support::list_tags(&repo).into_iter().collect()));
}

#[test]
fn a_registry_that_refuses_deletes_gets_exit_1_saying_what_to_enable() {
    let reg_proc = OwnedRegistry::start(false);
    let p = Project::fixture("sample")
        .repository(&format!("{}/prune/nodelete", reg_proc.addr()))
        .config("sessions: [lint]\n");
    let repo = p.repo().to_string();
    let rt = registry_kit::runtime();
    let reg = venvimg::registry::Registry::new(
        registry_kit::plain_transport(),
        &[&support::testenv().registry, &reg_proc.addr()],
    )
    .unwrap();
    push_recorded(&rt, &reg, &repo, "lint-00000000000000aa", 7, true);

    // The dry run works (it deletes nothing).
    let (code, text, _) = prune(&p, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("would delete 1 image(s)"), "{text}");

    let (code, text, _) = prune(&p, &["--yes"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&reg_proc.addr()), "{text}");
    assert!(text.contains("refuses to delete"), "{text}");
    assert!(text.contains("delete: {enabled: true}"), "{text}");
    assert!(text.contains("nothing was deleted"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(support::list_tags(&repo).contains(&"lint-00000000000000aa".to_string()));

    // --json: the error as JSON on stdout.
    let (code, _, json) = prune(&p, &["--yes", "--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(json["exit_code"], 1, "{json}");
}

#[test]
fn a_bad_keep_for_is_a_usage_error_naming_the_flag_and_the_form() {
    let p = Project::fixture("sample")
        .unique_repo("prune-usage")
        .config("sessions: [lint]\n");
    for bad in ["soon", "30", "d", "3 parsecs"] {
        let (code, text) = p.outcome(&["prune", "--keep-for", bad]);
        assert_eq!(code, Some(2), "{bad}: {text}");
        assert!(text.contains("--keep-for"), "{text}");
        assert!(text.contains("30d") && text.contains("12h"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
    // Durations as people write them (humantime), zero included: keep none for its age.
    for good in ["0s", "90m", "1h30m", "1h 30m", "2w"] {
        let (code, text) = p.outcome(&["prune", "--keep-for", good]);
        assert_eq!(code, Some(0), "{good}: {text}");
    }
    let (code, text) = p.outcome(&["prune", "--keep", "many"]);
    assert_eq!(code, Some(2), "{text}");
}

/// Whether `repo` (HOST:PORT/NAME) holds the manifest `digest`: curl's HEAD status.
fn manifest_at(repo: &str, digest: &str) -> String {
    let (host, name) = repo.split_once('/').unwrap();
    let out = Command::new("curl")
        .args(["-s", "-I", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args([
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("http://{host}/v2/{name}/manifests/{digest}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PUT `index` (an OCI image index) under `tag` of `repo`, straight to the registry.
fn put_index(repo: &str, tag: &str, index: &Value) {
    let (host, name) = repo.split_once('/').unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}", "-X", "PUT"])
        .args([
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
        ])
        .args(["--data-binary", &index.to_string()])
        .arg(format!("http://{host}/v2/{name}/manifests/{tag}"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "201",
        "PUT {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two attacks on prune's referrers handling, against a real registry (and a
/// loopback proxy forging one answer):
/// - on stock distribution, an index pushed at some `sha256-<hex>` referrers tag lists
///   the current image and the base as if they were venvimg SBOMs;
/// - the stale image's referrers tag, as the proxy serves it, lists an "SBOM" whose
///   digest is `../../../other/victim/manifests/sha256:…`.
///
/// prune must delete neither, nor anything in another repository; its dry run must list
/// every deletion `--yes` then makes, and `--yes` exactly those.
#[test]
fn prune_deletes_only_what_it_surveyed_and_checked_never_what_a_referrers_list_names() {
    use crate::support::fault_proxy::{Action, FaultProxy};
    let env = support::testenv();
    let reg_proc = OwnedRegistry::start(true);
    let direct = format!("{}/prune/hostile", reg_proc.addr());
    let victim_repo = format!("{}/other/victim", reg_proc.addr());
    let rt = registry_kit::runtime();
    let reg = venvimg::registry::Registry::new(
        registry_kit::plain_transport(),
        &[&env.registry, &reg_proc.addr()],
    )
    .unwrap();

    let stale = push_recorded(&rt, &reg, &direct, "lint-00000000000000aa", 21, true);
    let victim = push_recorded(&rt, &reg, &victim_repo, "keep", 22, false);
    support::copy_tag(&env.base, &format!("{direct}:foreign"));
    let base = support::skopeo_inspect_digest(&format!("{direct}:foreign")).unwrap();
    assert_eq!(base, env.base_digest());

    // The forged answer: the stale image's referrers tag listing another repository's
    // manifest as a venvimg SBOM. A real index sits at that tag (so it is listed).
    let stale_tag = stale.replace(':', "-");
    put_index(
        &direct,
        &stale_tag,
        &serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}),
    );
    let sbom_descriptor = |digest: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 600,
            "artifactType": "application/vnd.cyclonedx+json",
            "annotations": {"dev.venvimg.sbom": "x"},
        })
    };
    let forged = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [sbom_descriptor(&format!("../../../other/victim/manifests/{victim}"))],
    });
    let forged_path = format!("/v2/prune/hostile/manifests/{stale_tag}");
    let proxy = FaultProxy::start(
        &reg_proc.addr(),
        Box::new(move |head| {
            if head.method == "GET" && head.target == forged_path {
                Action::Reply {
                    code: 200,
                    content_type: "application/vnd.oci.image.index.v1+json",
                    body: forged.to_string().into_bytes(),
                }
            } else {
                Action::Forward
            }
        }),
    );
    let p = Project::fixture("sample")
        .repository(&format!("{}/prune/hostile", proxy.addr))
        .config("sessions: [lint]\n");
    let plan = p.plan();
    let current_tag = plan["sessions"][0]["tag"].as_str().unwrap().to_string();
    let current = push_recorded(&rt, &reg, &direct, &current_tag, 23, true);

    // On stock distribution: an index at a referrers tag of an image that is not there,
    // listing the current image and the base as venvimg SBOMs.
    put_index(
        &direct,
        &format!("sha256-{}", "e".repeat(64)),
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [sbom_descriptor(&current), sbom_descriptor(&base)],
        }),
    );

    let (code, text, report) = prune(&p, &["--json"]);
    assert_eq!(code, Some(0), "{text}");
    let planned: BTreeSet<String> = report["planned"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|d| d["digest"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    for d in [&current, &base, &victim] {
        assert!(
            !planned.contains(d),
            "the dry run plans to delete {d}: {text}"
        );
    }
    let (code, dry_text) = p.outcome(&["prune"]);
    assert_eq!(code, Some(0), "{dry_text}");

    let (code, text, done) = prune(&p, &["--yes", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    // Nothing outside the survey went: another repository's manifest, the current image,
    // the base.
    assert_eq!(
        manifest_at(&victim_repo, &victim),
        "200",
        "another repository's manifest was deleted:\n{text}"
    );
    assert_eq!(
        manifest_at(&direct, &current),
        "200",
        "the current image was deleted:\n{text}"
    );
    assert_eq!(
        manifest_at(&direct, &base),
        "200",
        "the base was deleted:\n{text}"
    );
    for l in proxy.log() {
        if l.head.method == "DELETE" {
            assert!(
                l.head
                    .target
                    .starts_with("/v2/prune/hostile/manifests/sha256:"),
                "a DELETE outside the repository: {}",
                l.head.target
            );
        }
    }
    // What the survey marked stale is gone, and the dry run listed every deletion.
    assert_eq!(manifest_at(&direct, &stale), "404", "{text}");
    let deleted: BTreeSet<String> = done["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert!(deleted.contains(&stale), "{text}");
    assert_eq!(
        deleted, planned,
        "--yes deleted other manifests than the dry run listed"
    );
    for d in &planned {
        assert!(
            dry_text.contains(&format!("would delete {d}")),
            "{d} not listed:\n{dry_text}"
        );
    }
}
