//! Each session image's SBOM (CycloneDX 1.6 JSON) against a real registry: it is pushed
//! as an OCI 1.1 referrer of the image and, the test registry (distribution 2.8) having
//! no referrers API, listed in the referrers tag `sha256-<hex>`; it validates against the
//! CycloneDX schema (cyclonedx-python-lib's strict validator, from PyPI); it lists the
//! venv's distributions; two builds from a clean registry push the same bytes; `venvimg
//! inspect --sbom` prints it, and says so when an image has none. (Prune deleting an
//! image's SBOM is in `prune.rs`, whose registry this test borrows.)

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::prune::OwnedRegistry;
use crate::support;
use crate::support::project::{session, Project};
use crate::support::registry_kit;

const CYCLONEDX: &str = "application/vnd.cyclonedx+json";

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("cannot run curl (apt-get install -y curl)");
    let mut body = out.stdout;
    let cut = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[cut..]).trim().to_string();
    body.truncate(cut);
    (status, body)
}

fn split(repo: &str) -> (&str, &str) {
    repo.split_once('/').expect("HOST:PORT/name")
}

/// The raw bytes of a manifest (`reference`: a tag or digest) of the loopback `repo`.
fn manifest_bytes(repo: &str, reference: &str) -> Option<Vec<u8>> {
    let (host, name) = split(repo);
    let (status, body) = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        &format!("http://{host}/v2/{name}/manifests/{reference}"),
    ]);
    (status == "200").then_some(body)
}

/// HEAD of a manifest by digest: "200" or "404".
pub(crate) fn manifest_status(repo: &str, digest: &str) -> String {
    let (host, name) = split(repo);
    curl(&[
        "-I",
        "-o",
        "/dev/null",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{host}/v2/{name}/manifests/{digest}"),
    ])
    .0
}

fn blob(repo: &str, digest: &str) -> Vec<u8> {
    let (host, name) = split(repo);
    let (status, body) = curl(&["-L", &format!("http://{host}/v2/{name}/blobs/{digest}")]);
    assert_eq!(status, "200", "blob {digest} of {repo}");
    body
}

/// The digests of the CycloneDX referrers the referrers tag of `image_digest` lists (the
/// registry has no referrers API, so that tag is where they must be).
pub(crate) fn sbom_digests(repo: &str, image_digest: &str) -> Vec<String> {
    referrers(repo, image_digest)
        .iter()
        .filter(|d| d["artifactType"] == CYCLONEDX)
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The digests of every manifest `image_digest`'s referrers tag lists, venvimg's SBOMs
/// and other tools' referrers alike, in the index's order (none without the tag).
pub(crate) fn referrer_digests(repo: &str, image_digest: &str) -> Vec<String> {
    referrers(repo, image_digest)
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The descriptors of the image index at `image_digest`'s referrers tag (`sha256-...`),
/// read through the registry API; none without the tag.
fn referrers(repo: &str, image_digest: &str) -> Vec<Value> {
    let tag = image_digest.replace(':', "-");
    let Some(bytes) = manifest_bytes(repo, &tag) else {
        return Vec::new();
    };
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "the referrers tag {tag} must hold an image index: {index}"
    );
    index["manifests"].as_array().unwrap().clone()
}

/// Push another tool's referrer (a made-up signature type) of `subject` with venvimg's
/// library: added to the same referrers tag. Returns its digest.
pub(crate) fn push_foreign_referrer(repo: &str, subject: &str) -> String {
    let rt = registry_kit::runtime();
    let host = split(repo).0;
    let reg = venvimg::registry::Registry::new(registry_kit::plain_transport(), &[host]).unwrap();
    let size = manifest_bytes(repo, subject)
        .expect("the subject exists")
        .len();
    let artifact = venvimg::registry::referrers::Artifact {
        artifact_type: "application/vnd.example.signature.v1",
        data: b"signed, somebody else",
        annotations: Default::default(),
        layer_annotations: Default::default(),
    };
    let pushed = rt
        .block_on(reg.push_referrer(
            &registry_kit::reference(repo),
            &venvimg::model::Digest::parse(subject).unwrap(),
            size,
            &artifact,
        ))
        .unwrap();
    assert!(!pushed.already_listed);
    pushed.digest.into_string()
}

/// Validate `doc` against the CycloneDX 1.6 JSON schema with cyclonedx-python-lib.
fn assert_valid_cyclonedx(doc: &[u8], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sbom.cdx.json");
    std::fs::write(&file, doc).unwrap();
    let script = r#"
import sys
try:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
except ImportError as e:
    print(f"MISSING: {e}")
    sys.exit(3)
err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())
if err is not None:
    data = getattr(err, "data", None)
    print(getattr(data, "message", str(err)[:2000]), "at", list(getattr(data, "absolute_path", [])))
    sys.exit(1)
print("valid")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("cannot run python3");
    let text = support::output_text(&out);
    assert_ne!(
        out.status.code(),
        Some(3),
        "the CycloneDX validator is missing ({text}): install it with `bash tests/support/testenv.sh deps` (python3 -m pip install 'cyclonedx-python-lib[json-validation]')"
    );
    assert!(
        out.status.success() && text.contains("valid"),
        "{what}: the SBOM does not validate against the CycloneDX 1.6 schema: {text}"
    );
}

/// Each session's SBOM bytes as the registry holds them (found by the referrers tag),
/// checked against its image: one SBOM, its subject the image, `inspect --sbom` the
/// same bytes.
fn sboms_of(p: &Project, report: &Value, sessions: &[&str]) -> Vec<(String, Vec<u8>)> {
    let repo = p.repo();
    let mut out = Vec::new();
    for name in sessions {
        let s = session(report, name);
        let image_digest = s["digest"].as_str().unwrap();
        let found = sbom_digests(repo, image_digest);
        assert_eq!(found.len(), 1, "{name}: SBOMs listed: {found:?}");
        let manifest: Value =
            serde_json::from_slice(&manifest_bytes(repo, &found[0]).unwrap()).unwrap();
        assert_eq!(manifest["artifactType"], CYCLONEDX, "{manifest}");
        assert_eq!(manifest["subject"]["digest"], image_digest, "{manifest}");
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], CYCLONEDX);
        let bytes = blob(repo, layer["digest"].as_str().unwrap());

        let image = s["image"].as_str().unwrap();
        let out_ = p.run(&["inspect", "--sbom", image]);
        assert!(
            out_.status.success(),
            "inspect --sbom {image}: {}",
            String::from_utf8_lossy(&out_.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out_.stdout),
            String::from_utf8_lossy(&bytes),
            "inspect --sbom prints the SBOM as pushed"
        );
        out.push((name.to_string(), bytes));
    }
    out
}

#[test]
fn session_images_get_a_valid_reproducible_sbom_found_by_referrers_tag_and_inspect() {
    let _ = support::testenv();
    let mut reg = OwnedRegistry::start(true);
    let repo = format!("{}/sbom/sample", reg.addr());
    let sessions = ["tests", "lint"];
    let config = "sessions: [tests, lint]\nsource: https://forge.example/acme/sample\n";
    let p = Project::fixture("sample").repository(&repo).config(config);
    let first = p.build(&[]);
    let sboms = sboms_of(&p, &first, &sessions);

    for (name, bytes) in &sboms {
        assert_valid_cyclonedx(bytes, name);
        let doc: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(doc["specVersion"], "1.6");
        assert!(doc["metadata"].get("timestamp").is_none(), "{doc}");
        let meta = &doc["metadata"]["component"];
        assert_eq!(meta["name"], repo.as_str());
        assert_eq!(meta["version"], session(&first, name)["tag"], "{meta}");
        // Its components are the venv's distributions, as the image's record lists them.
        let image = session(&first, name)["image"].as_str().unwrap().to_string();
        let inspected =
            support::project::json_ok(&p.run(&["inspect", "--json", &image]), "inspect");
        let recorded: BTreeSet<(String, String)> = inspected["sessions"][0]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["version"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let components = doc["components"].as_array().unwrap();
        let listed: BTreeSet<(String, String)> = components
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["version"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(!recorded.is_empty(), "{inspected}");
        assert_eq!(listed, recorded, "{name}");
        for c in components {
            let purl = c["purl"].as_str().unwrap();
            assert!(purl.starts_with("pkg:pypi/"), "{c}");
            assert_eq!(c["hashes"][0]["alg"], "SHA-256", "{c}");
        }
        // The image carries the standard annotations.
        let manifest = support::skopeo_raw_manifest(&image);
        let ann = &manifest["annotations"];
        assert_eq!(ann["org.opencontainers.image.title"], *name, "{ann}");
        assert_eq!(
            ann["org.opencontainers.image.source"],
            "https://forge.example/acme/sample"
        );
        assert_eq!(
            ann["org.opencontainers.image.base.name"],
            support::testenv().base
        );
    }
    let component = |name: &str, dist: &str| -> Value {
        let bytes = &sboms.iter().find(|(n, _)| n == name).unwrap().1;
        let doc: Value = serde_json::from_slice(bytes).unwrap();
        doc["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == dist)
            .unwrap_or_else(|| panic!("no {dist} in the {name} SBOM"))
            .clone()
    };
    let pyflakes = component("lint", "pyflakes");
    assert_eq!(pyflakes["purl"], "pkg:pypi/pyflakes@3.2.0");
    assert_eq!(
        pyflakes["licenses"][0]["license"]["name"], "MIT",
        "{pyflakes}"
    );
    // The project itself, installed editable by `uv sync` from the checkout.
    let own = component("tests", "venvimg-sample");
    assert!(
        own["properties"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "venvimg:source", "value": "editable"})),
        "{own}"
    );
    assert_eq!(own["externalReferences"][0]["url"], "file:///src", "{own}");

    // The all-sessions image has none: inspect --sbom says so, exit 1.
    let all = first["all"]["image"].as_str().unwrap();
    let (code, text) = p.outcome(&["inspect", "--sbom", all]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no SBOM refers to this image"), "{text}");
    assert!(text.contains("referrers tag sha256-"), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    // A rebuild of a pushed image keeps one SBOM, and another tool's referrer listed in
    // the same referrers tag survives it.
    let lint_digest = session(&first, "lint")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = push_foreign_referrer(&repo, &lint_digest);
    let again = p.build(&["--force", "-s", "lint"]);
    assert_eq!(session(&again, "lint")["digest"], lint_digest.as_str());
    let listed = referrer_digests(&repo, &lint_digest);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&foreign), "{listed:?}");

    // From a clean registry (same name) and a fresh copy: the same SBOM bytes.
    reg.wipe();
    assert!(support::list_tags(&repo).is_empty());
    let q = Project::fixture("sample").repository(&repo).config(config);
    let second = q.build(&[]);
    for name in sessions {
        assert_eq!(session(&second, name)["outcome"], "built");
        assert_eq!(
            session(&second, name)["digest"],
            session(&first, name)["digest"]
        );
    }
    let again = sboms_of(&q, &second, &sessions);
    for ((name, a), (_, b)) in sboms.iter().zip(&again) {
        assert!(a == b, "{name}: the SBOMs of two clean builds differ");
    }
}

#[test]
fn inspect_sbom_needs_a_registry_image() {
    let p = Project::fixture("sample")
        .unique_repo("sbom-usage")
        .config("sessions: [lint]\n");
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = p.outcome(&[
        "inspect",
        "--sbom",
        &format!("oci:{}", dir.path().display()),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("inspect --sbom"), "{text}");
    assert!(text.contains("HOST[:PORT]/REPO:TAG"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
