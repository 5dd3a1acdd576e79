//! A session image's SBOM: a CycloneDX 1.6 JSON document of the distributions installed in
//! its venv, read from the built venv's `*.dist-info` folders (no container run).
//!
//! CycloneDX rather than SPDX: its JSON has no mandatory creation time or random
//! namespace (SPDX 2.3 requires `creationInfo.created` and a unique `documentNamespace`),
//! so a document that is a pure function of the venv is a valid one, and `pkg:pypi` purls
//! and licenses are first-class fields. 1.6 is the current release (ECMA-424) and what
//! scanners (Trivy, Grype, Dependency-Track) read.
//!
//! Reproducible: no timestamp; `serialNumber` is a name-based UUID (v5) of the rest of the
//! document; components are sorted; the same venv gives the same bytes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{url_without_credentials, Digest};
use crate::python::venv::{dist_info_dirs, read_in_venv, VenvError};
use crate::untrusted;

/// The media type of the document, and the `artifactType` of its manifest.
pub const MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";
pub const SPEC_VERSION: &str = "1.6";
/// The blob's file name (its `org.opencontainers.image.title`: what `oras pull` writes).
pub const FILE_NAME: &str = "sbom.cdx.json";
/// An annotation on the SBOM's manifest: made by venvimg (prune deletes only these).
pub const ANNOTATION: &str = "dev.venvimg.sbom";
/// A `License:` header longer than this, or spanning lines, is a license's text, not its
/// name: the classifiers name it then.
const MAX_LICENSE_NAME: usize = 120;
/// The namespace of the serial numbers' v5 UUIDs (a random UUID, fixed forever: changing it
/// changes every SBOM's bytes).
const SERIAL_NAMESPACE: [u8; 16] = [
    0x6f, 0x1c, 0x2a, 0x5e, 0x93, 0x4b, 0x4d, 0x0e, 0x8a, 0x61, 0x27, 0xd4, 0xc3, 0x90, 0x5b, 0x17,
];

/// Where a distribution came from, as its `direct_url.json` says (PEP 610).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// No `direct_url.json`: resolved from a package index.
    Index,
    /// A local folder (`file://...`), editable or not.
    Local { url: String, editable: bool },
    /// A VCS checkout: `git+https://host/repo@<commit>`.
    Vcs { url: String },
    /// An archive or wheel by URL (or a local file), with its hash when recorded.
    Archive { url: String, sha256: Option<String> },
}

/// One installed distribution, as the SBOM lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    pub name: String,
    pub version: String,
    /// `License-Expression` (an SPDX expression).
    pub license_expression: Option<String>,
    /// Else license names: a short `License:` header, or the license classifiers.
    pub license_names: Vec<String>,
    /// sha256 (hex) of its `RECORD`, the list of its installed files with their hashes:
    /// a digest of what it put in the venv.
    pub record_sha256: Option<String>,
    pub source: Source,
    /// `uv`, `pip`... from `INSTALLER`.
    pub installer: Option<String>,
    /// Its dist-info folder, relative to the venv.
    pub dist_info: String,
}

/// Every distribution of the venv at `venv` (a dist-info without a name or version is
/// not one), sorted by normalized name, version and folder.
pub fn read_distributions(venv: &Path) -> Result<Vec<Distribution>, VenvError> {
    let mut out = Vec::new();
    for info in dist_info_dirs(venv)? {
        if let Some(d) = read_distribution(venv, &info)? {
            out.push(d);
        }
    }
    out.sort_by(|a, b| {
        (normalize(&a.name), &a.version, &a.dist_info).cmp(&(
            normalize(&b.name),
            &b.version,
            &b.dist_info,
        ))
    });
    Ok(out)
}

fn read_distribution(venv: &Path, info: &Path) -> Result<Option<Distribution>, VenvError> {
    let Some(meta) = read_in_venv(venv, &info.join("METADATA"), untrusted::DIST_METADATA)? else {
        return Ok(None);
    };
    let headers = headers(&String::from_utf8_lossy(&meta));
    let first = |k: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let (Some(name), Some(version)) = (first("Name"), first("Version")) else {
        return Ok(None);
    };
    let license_expression = first("License-Expression").filter(|v| !v.trim().is_empty());
    let short_license = first("License").filter(|v| {
        let v = v.trim();
        !v.is_empty()
            && !v.contains('\n')
            && v.len() <= MAX_LICENSE_NAME
            && !v.eq_ignore_ascii_case("UNKNOWN")
    });
    let license_names = match short_license {
        Some(l) => vec![l.trim().to_string()],
        None => {
            let mut names: Vec<String> = headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("Classifier"))
                .filter_map(|(_, v)| {
                    let rest = v.trim().strip_prefix("License ::")?;
                    let last = rest.rsplit("::").next()?.trim();
                    (!last.is_empty() && last != "OSI Approved").then(|| last.to_string())
                })
                .collect();
            names.dedup();
            names
        }
    };
    let record_sha256 = read_in_venv(venv, &info.join("RECORD"), untrusted::DIST_RECORD)?
        .map(|b| Digest::of(&b).hex().to_string());
    let installer = read_in_venv(venv, &info.join("INSTALLER"), untrusted::SMALL_FILE)?
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 64);
    let source = match read_in_venv(venv, &info.join("direct_url.json"), untrusted::SMALL_FILE)? {
        Some(bytes) => source_of(&bytes),
        None => Source::Index,
    };
    Ok(Some(Distribution {
        name,
        version,
        license_expression: license_expression.map(|s| s.trim().to_string()),
        license_names,
        record_sha256,
        source,
        installer,
        dist_info: info.to_string_lossy().into_owned(),
    }))
}

/// The header fields of a METADATA file (up to the first empty line), in order, with
/// continuation lines (starting with whitespace) joined by newlines.
fn headers(meta: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in meta.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// A `direct_url.json`'s source; credentials in its URL are dropped.
fn source_of(bytes: &[u8]) -> Source {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Source::Index;
    };
    let Some(url) = v["url"].as_str().map(url_without_credentials) else {
        return Source::Index;
    };
    if let Some(vcs) = v.get("vcs_info") {
        let kind = vcs["vcs"].as_str().unwrap_or("git");
        let at = vcs["commit_id"]
            .as_str()
            .map(|c| format!("@{c}"))
            .unwrap_or_default();
        return Source::Vcs {
            url: format!("{kind}+{url}{at}"),
        };
    }
    if let Some(dir) = v.get("dir_info") {
        return Source::Local {
            url,
            editable: dir["editable"].as_bool().unwrap_or(false),
        };
    }
    let archive = &v["archive_info"];
    let sha256 = archive["hashes"]["sha256"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            archive["hash"]
                .as_str()
                .and_then(|h| h.strip_prefix("sha256="))
                .map(str::to_string)
        })
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    Source::Archive { url, sha256 }
}

/// PEP 503's normalized name, which purls use for PyPI (`Foo_Bar.baz` → `foo-bar-baz`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
            continue;
        }
        if dash && !out.is_empty() {
            out.push('-');
        }
        dash = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// `pkg:pypi/<name>@<version>`, the version percent-encoded (`1.0+local` → `1.0%2Blocal`).
pub fn purl(name: &str, version: &str) -> String {
    let mut v = String::with_capacity(version.len());
    for b in version.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            v.push(b as char);
        } else {
            v.push_str(&format!("%{b:02X}"));
        }
    }
    format!("pkg:pypi/{}@{v}", normalize(name))
}

/// What the SBOM describes: the image (its repository and tag) and the session.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// `registry/name`.
    pub repository: &'a str,
    pub tag: &'a str,
    pub session: &'a str,
    pub key: &'a str,
    pub python: &'a str,
    /// Where the venv lives in the image.
    pub venv_path: &'a str,
}

/// The SBOM of `dists` in the image `subject`: pretty JSON, a trailing newline.
pub fn document(subject: &Subject, dists: &[Distribution]) -> Vec<u8> {
    let prop = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut refs: Vec<String> = Vec::with_capacity(dists.len());
    let components: Vec<Value> = dists
        .iter()
        .map(|d| {
            let mut bom_ref = purl(&d.name, &d.version);
            // Two dist-infos of one name and version (lib and lib64): refs stay unique.
            if refs.contains(&bom_ref) {
                bom_ref = format!("{bom_ref}#{}", d.dist_info);
            }
            refs.push(bom_ref.clone());
            let mut c = json!({
                "type": "library",
                "bom-ref": bom_ref,
                "name": d.name,
                "version": d.version,
                "purl": purl(&d.name, &d.version),
            });
            if let Some(e) = &d.license_expression {
                c["licenses"] = json!([{"expression": e}]);
            } else if !d.license_names.is_empty() {
                c["licenses"] = d
                    .license_names
                    .iter()
                    .map(|n| json!({"license": {"name": n}}))
                    .collect();
            }
            if let Some(h) = &d.record_sha256 {
                c["hashes"] = json!([{"alg": "SHA-256", "content": h}]);
            }
            let (kind, reference) = match &d.source {
                Source::Index => ("index", None),
                Source::Local { url, editable } => (
                    if *editable { "editable" } else { "local" },
                    Some(json!({"type": "other", "url": url, "comment": "installed from this folder"})),
                ),
                Source::Vcs { url } => ("vcs", Some(json!({"type": "vcs", "url": url}))),
                Source::Archive { url, sha256 } => {
                    let mut r = json!({"type": "distribution", "url": url});
                    if let Some(h) = sha256 {
                        r["hashes"] = json!([{"alg": "SHA-256", "content": h}]);
                    }
                    ("archive", Some(r))
                }
            };
            if let Some(r) = reference {
                c["externalReferences"] = json!([r]);
            }
            let mut props = vec![
                prop("venvimg:source", kind),
                prop("venvimg:dist-info", &d.dist_info),
            ];
            if d.record_sha256.is_some() {
                props.push(prop("venvimg:hash-of", "dist-info/RECORD"));
            }
            if let Some(i) = &d.installer {
                props.push(prop("venvimg:installer", i));
            }
            c["properties"] = Value::Array(props);
            c
        })
        .collect();
    let image_ref = "image";
    let mut doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "tools": {"components": [{
                "type": "application",
                "name": "venvimg",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": subject.repository,
                "version": subject.tag,
                "description": format!("nox session {} (venv at {})", subject.session, subject.venv_path),
                "properties": [
                    prop("venvimg:session", subject.session),
                    prop("venvimg:key", subject.key),
                    prop("venvimg:python", subject.python),
                    prop("venvimg:venv", subject.venv_path),
                ],
            },
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": refs}],
    });
    let body = serde_json::to_vec(&doc).expect("an SBOM serialises");
    doc["serialNumber"] = Value::String(format!("urn:uuid:{}", uuid_v5(&Digest::of(&body))));
    let mut out = serde_json::to_vec_pretty(&doc).expect("an SBOM serialises");
    out.push(b'\n');
    out
}

/// A name-based (v5, SHA-1) UUID of `digest` in venvimg's namespace, as RFC 9562 makes it.
fn uuid_v5(digest: &Digest) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(SERIAL_NAMESPACE);
    h.update(digest.as_str().as_bytes());
    let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("sha1 has 20 bytes");
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: &str = "lib/python3.11/site-packages";

    fn dist(venv: &Path, folder: &str, metadata: &str, extra: &[(&str, &str)]) {
        let info = venv.join(SP).join(folder);
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("METADATA"), metadata).unwrap();
        for (name, text) in extra {
            std::fs::write(info.join(name), text).unwrap();
        }
    }

    fn subject() -> Subject<'static> {
        Subject {
            repository: "127.0.0.1:5000/acme/ci",
            tag: "tests-0123456789abcdef",
            session: "tests",
            key: "0123456789abcdef",
            python: "3.11.2",
            venv_path: "/opt/nox/tests",
        }
    }

    fn sample() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let v = t.path();
        dist(
            v,
            "Zope.Interface-6.0.dist-info",
            "Metadata-Version: 2.4\nName: Zope.Interface\nVersion: 6.0+local\nLicense-Expression: ZPL-2.1\n\nbody",
            &[("RECORD", "zope/__init__.py,sha256=x,1\n"), ("INSTALLER", "uv\n")],
        );
        dist(
            v,
            "attrs-23.1.dist-info",
            "Name: attrs\nVersion: 23.1\nLicense: This is a long license\n    text over lines\nClassifier: License :: OSI Approved :: MIT License\nClassifier: Programming Language :: Python\n\n",
            &[(
                "direct_url.json",
                r#"{"url": "https://user:s3cret@git.example/attrs", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}"#,
            )],
        );
        dist(
            v,
            "app-0.1.dist-info",
            "Name: app\nVersion: 0.1\nLicense: Apache-2.0\n\n",
            &[(
                "direct_url.json",
                r#"{"url": "file:///src", "dir_info": {"editable": true}}"#,
            )],
        );
        t
    }

    #[test]
    fn lists_distributions_sorted_with_licenses_sources_and_hashes() {
        let t = sample();
        let dists = read_distributions(t.path()).unwrap();
        let names: Vec<&str> = dists.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["app", "attrs", "Zope.Interface"]);
        assert_eq!(dists[0].license_names, ["Apache-2.0"]);
        assert_eq!(
            dists[0].source,
            Source::Local {
                url: "file:///src".into(),
                editable: true
            }
        );
        // A license text spanning lines is not a name: the classifier names it.
        assert_eq!(dists[1].license_names, ["MIT License"]);
        assert_eq!(
            dists[1].source,
            Source::Vcs {
                url: "git+https://git.example/attrs@abc123".into()
            }
        );
        assert_eq!(dists[2].license_expression.as_deref(), Some("ZPL-2.1"));
        assert_eq!(
            dists[2].record_sha256.as_deref(),
            Some(Digest::of(b"zope/__init__.py,sha256=x,1\n").hex())
        );
        assert_eq!(dists[2].installer.as_deref(), Some("uv"));

        let doc = document(&subject(), &dists);
        let text = String::from_utf8(doc.clone()).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let v: Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["specVersion"], "1.6");
        assert_eq!(
            v["components"][2]["purl"],
            "pkg:pypi/zope-interface@6.0%2Blocal"
        );
        assert_eq!(
            v["metadata"]["component"]["version"],
            "tests-0123456789abcdef"
        );
        assert!(v.get("metadata").unwrap().get("timestamp").is_none());
        let serial = v["serialNumber"].as_str().unwrap();
        assert!(serial.starts_with("urn:uuid:"), "{serial}");
        assert_eq!(&serial[9 + 14..9 + 15], "5", "a v5 UUID: {serial}");
        // The same venv, the same bytes; another venv, another serial number.
        assert_eq!(
            document(&subject(), &read_distributions(t.path()).unwrap()),
            doc
        );
        let other = document(&subject(), &dists[..2]);
        let w: Value = serde_json::from_slice(&other).unwrap();
        assert_ne!(w["serialNumber"], v["serialNumber"]);
    }

    #[test]
    fn names_and_urls() {
        assert_eq!(normalize("Foo_Bar..baz"), "foo-bar-baz");
        assert_eq!(purl("A_b", "1!2.0"), "pkg:pypi/a-b@1%212.0");
    }
}
