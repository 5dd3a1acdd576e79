//! `venvimg verify`: an honest image rebuilds byte for byte; one whose layer was replaced
//! through the registry API is named, down to the layer and the file.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::support::project::{session, Project};
use crate::support::{self};

/// `REGISTRY/REPO:TAG` → (registry, repo, tag).
fn split(image: &str) -> (&str, &str, &str) {
    let (reg, rest) = image.split_once('/').unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    (reg, repo, tag)
}

fn curl(args: &[&str], body: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run curl: apt-get install curl");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(b) = body {
            stdin.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// Replace the image's last layer, through the registry API, with one whose first
/// non-empty `.py` file has a line added; the config (and its record) untouched, as an
/// attacker with push rights would. Returns the altered file's path in the layer.
fn tamper_last_layer(image: &str) -> String {
    let (reg, repo, _) = split(image);
    let m = manifest(image);
    let last = m["layers"].as_array().unwrap().len() - 1;
    let digest = m["layers"][last]["digest"].as_str().unwrap().to_string();
    let media_type = m["layers"][last]["mediaType"].as_str().unwrap().to_string();
    assert!(media_type.ends_with("gzip"), "{media_type}");
    let blob = curl(&[&format!("http://{reg}/v2/{repo}/blobs/{digest}")], None);

    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut out = tar::Builder::new(Vec::new());
    let mut altered = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if altered.is_none()
            && header.entry_type().is_file()
            && path.ends_with(".py")
            && !data.is_empty()
        {
            data.extend_from_slice(b"\nimport os  # tampered\n");
            altered = Some(path.clone());
        }
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.append(&header, &data[..]).unwrap();
    }
    let altered = altered.expect("the layer has a .py file");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&out.into_inner().unwrap()).unwrap();
    let new_blob = gz.finish().unwrap();
    swap_last_layer(image, &new_blob, &media_type);
    altered
}

#[test]
fn verify_passes_on_an_honest_image_and_names_the_file_of_a_replaced_layer() {
    let ca = support::testenv().ca_file();
    let p = Project::fixture("runner")
        .unique_repo("verify")
        .config("sessions: [check]\n");
    let built = p.build(&[]);
    let check = session(&built, "check");
    let image = check["image"].as_str().unwrap().to_string();
    let digest = check["digest"].as_str().unwrap().to_string();

    // Honest: every session's current image, and the image named.
    let out = p.run(&["verify", "--json", "--build-ca", ca]);
    let report = support::project::json_ok(&out, "venvimg verify");
    assert_eq!(report["images"][0]["result"], "identical", "{report}");
    assert_eq!(report["images"][0]["digest"], digest.as_str());
    assert_eq!(report["images"][0]["rebuilt"], digest.as_str());
    let (code, text) = p.outcome(&["verify", &image, "--build-ca", ca]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("rebuilt byte for byte"), "{text}");

    // A layer replaced through the registry API, the config and its record untouched:
    // the plan still calls it a hit, verify does not.
    let altered = tamper_last_layer(&image);
    let out = p.run(&["verify", "--json", "--build-ca", ca]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = &report["images"][0];
    assert_eq!(first["result"], "differs", "{report}");
    assert_eq!(first["rebuilt"], digest.as_str(), "{report}");
    let difference = first["difference"].as_str().unwrap();
    let layers = manifest(&image)["layers"].as_array().unwrap().len();
    assert!(
        difference.starts_with(&format!("layer {layers} of {layers} ")),
        "{difference}"
    );
    assert!(
        difference.contains(&format!("`{altered}`: its content differs")),
        "{difference}"
    );
    assert!(
        stderr.contains("1 of 1 image(s) not reproduced"),
        "{stderr}"
    );

    // An image of other inputs is refused with what to do, before anything builds.
    let (code, text) = p.outcome(&["verify", "--build-ca", ca, &format!("{image}-nope")]);
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = p.outcome(&["verify", "-s", "other", "--build-ca", ca]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("nothing to verify"), "{text}");
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The image manifest at `image`'s tag, through the registry API.
fn manifest(image: &str) -> serde_json::Value {
    let (reg, repo, tag) = split(image);
    let bytes = curl(
        &[
            "-H",
            &format!("Accept: {OCI_MANIFEST}"),
            &format!("http://{reg}/v2/{repo}/manifests/{tag}"),
        ],
        None,
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// Upload `blob` to `image`'s repository and make it the image's last layer (of
/// `media_type`), through the registry API.
fn swap_last_layer(image: &str, blob: &[u8], media_type: &str) {
    let (reg, repo, tag) = split(image);
    let mut m = manifest(image);
    let last = m["layers"].as_array().unwrap().len() - 1;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
    // Start an upload, then send the blob in one PUT (distribution 2.8 has no
    // single-POST upload).
    let headers = curl(
        &[
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{reg}/v2/{repo}/blobs/uploads/"),
        ],
        None,
    );
    let headers = String::from_utf8_lossy(&headers);
    let location = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .unwrap_or_else(|| panic!("no Location in {headers}"))
        .trim();
    let location = if location.starts_with("http") {
        location.to_string()
    } else {
        format!("http://{reg}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "@-",
            &format!("{location}{sep}digest={digest}"),
        ],
        Some(blob),
    );
    m["layers"][last]["digest"] = digest.into();
    m["layers"][last]["size"] = blob.len().into();
    m["layers"][last]["mediaType"] = media_type.into();
    curl(
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {OCI_MANIFEST}"),
            "--data-binary",
            "@-",
            &format!("http://{reg}/v2/{repo}/manifests/{tag}"),
        ],
        Some(&serde_json::to_vec(&m).unwrap()),
    );
}

/// A zstd layer of some KiB whose tar starts with a GNU long-name header of 1 GiB (and
/// the 1 GiB of name after it): the tar crate would read that name into memory whole.
fn long_name_bomb() -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let len: u64 = 1 << 30;
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_mode(0o644);
    h.set_size(len);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..(len >> 20) {
        enc.write_all(&chunk).unwrap();
    }
    let mut f = tar::Header::new_gnu();
    f.set_path("x").unwrap();
    f.set_size(0);
    f.set_mode(0o644);
    f.set_uid(0);
    f.set_gid(0);
    f.set_mtime(0);
    f.set_cksum();
    enc.write_all(f.as_bytes()).unwrap();
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

#[test]
fn verify_refuses_a_layer_with_a_huge_gnu_long_name_quickly_with_bounded_memory() {
    let ca = support::testenv().ca_file();
    let p = Project::fixture("runner")
        .unique_repo("verify-bomb")
        .config("sessions: [check]\n");
    let built = p.build(&[]);
    let image = session(&built, "check")["image"]
        .as_str()
        .unwrap()
        .to_string();
    let bomb = long_name_bomb();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    swap_last_layer(&image, &bomb, "application/vnd.oci.image.layer.v1.tar+zstd");

    let start = std::time::Instant::now();
    let (code, text, rss) = support::venvimg_rss(p.path(), &["verify", &image, "--build-ca", ca]);
    let took = start.elapsed();
    // Today's main read the 1 GiB name into memory: 2.6 GB RSS.
    assert!(
        rss < 400 << 20,
        "venvimg's RSS reached {} MiB:\n{text}",
        rss >> 20
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&image), "the error names the image:\n{text}");
    assert!(
        text.contains("a GNU long name of 1073741824 bytes, more than the 65536"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(took.as_secs() < 300, "{took:?}");
}
