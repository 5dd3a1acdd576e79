//! The on-disk forms of an image: an OCI image layout (a directory, or a tar of one) and
//! `docker save`'s archive. Every byte is decided by the image alone — sorted entries,
//! fixed mtimes, uid/gid 0, canonical JSON — so the same image gives the same file.
//!
//! The writers here take an image whose blobs are all files on this machine
//! ([`ImageFiles`]); fetching the blobs that are not is the caller's job.

use fs_err::{self as fs, File};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::OutputError;
use crate::image::{BlobRef, ComposedImage, MediaTypes};
use crate::layer::DEFAULT_SOURCE_DATE_EPOCH;
use crate::model::Digest;

/// The `oci-layout` file of every layout we write.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The annotation tools read a layout's tag from (`skopeo oci:DIR:TAG`, `umoci`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name; podman and containerd name a loaded OCI archive by it.
pub const IMAGE_NAME: &str = "io.containerd.image.name";

/// Modification time of every archive entry (1980-01-01, as in the layers).
const ARCHIVE_MTIME: u64 = DEFAULT_SOURCE_DATE_EPOCH;
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// An image whose every layer is a file here (config and manifest are in the image).
pub struct ImageFiles<'a> {
    pub image: &'a ComposedImage,
    /// Layer digest → the file holding exactly that blob.
    pub layers: HashMap<Digest, PathBuf>,
}

impl ImageFiles<'_> {
    /// The file of `blob`, checked to exist with the size the manifest gives.
    fn layer_file(&self, blob: &BlobRef) -> Result<&Path, OutputError> {
        let path =
            self.layers
                .get(blob.digest.as_str())
                .ok_or_else(|| OutputError::MissingBlob {
                    digest: blob.digest.clone(),
                })?;
        let size = fs::metadata(path)
            .map_err(|source| OutputError::io(path, source))?
            .len();
        if size != blob.size {
            return Err(OutputError::BlobSize {
                path: path.clone(),
                digest: blob.digest.to_string(),
                expected: blob.size,
                actual: size,
            });
        }
        Ok(path)
    }

    /// Each distinct layer once, in manifest order.
    fn unique_layers(&self) -> Vec<&BlobRef> {
        let mut seen = std::collections::HashSet::new();
        self.image
            .layers
            .iter()
            .filter(|b| seen.insert(b.digest.as_str()))
            .collect()
    }
}

/// `sha256:abc…` → `abc…`, only for a well-formed digest (64 lowercase hex): what comes
/// back is safe to use as a file name under `blobs/sha256/`.
pub fn hex_of(digest: &str) -> Result<&str, OutputError> {
    Digest::hex_of(digest).map_err(|_| OutputError::BadDigest {
        digest: digest.to_string(),
    })
}

/// `blobs/sha256/<hex>`, only for a well-formed digest (see [`hex_of`]).
fn blob_path(digest: &str) -> Result<String, OutputError> {
    Digest::parse(digest)
        .map(|d| d.blob_path())
        .map_err(|_| OutputError::BadDigest {
            digest: digest.to_string(),
        })
}

/// The most of `index.json` venvimg reads: thousands of tags fit.
pub const MAX_INDEX_JSON: u64 = 16 << 20;
/// The most of a manifest (or image index) venvimg reads, as registries cap them.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The most of an image config venvimg reads (venvimg's record of packages is in it).
pub const MAX_CONFIG: u64 = 64 << 20;

/// The file in an `oci:DIR` layout that writers lock while they update `index.json`.
pub const LOCK_FILE: &str = ".venvimg.lock";

/// The descriptor of the image's manifest, as an `index.json` entry.
fn manifest_descriptor(image: &ComposedImage, ref_name: &str, image_name: &str) -> Value {
    json!({
        "mediaType": MediaTypes::OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": image.manifest.len(),
        "annotations": { REF_NAME: ref_name, IMAGE_NAME: image_name },
    })
}

/// `index.json` naming just this image.
pub fn index_json(image: &ComposedImage, ref_name: &str, image_name: &str) -> Vec<u8> {
    index_bytes(vec![manifest_descriptor(image, ref_name, image_name)])
}

fn index_bytes(manifests: Vec<Value>) -> Vec<u8> {
    // serde_json's maps are sorted by key: the bytes are canonical.
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MediaTypes::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("JSON values serialise")
}

/// `index.json` for a layout that already has one: entries under other names are kept,
/// an entry with our name is replaced (like `skopeo copy` to `oci:DIR:TAG`).
pub fn merged_index_json(
    existing: &[u8],
    image: &ComposedImage,
    ref_name: &str,
    image_name: &str,
) -> Result<Vec<u8>, String> {
    let v: Value =
        serde_json::from_slice(existing).map_err(|e| format!("index.json is not JSON: {e}"))?;
    let list = v
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or("index.json has no `manifests` list")?;
    let mut manifests: Vec<Value> = list
        .iter()
        .filter(|m| m["annotations"][REF_NAME].as_str() != Some(ref_name))
        .cloned()
        .collect();
    manifests.push(manifest_descriptor(image, ref_name, image_name));
    Ok(index_bytes(manifests))
}

/// What goes into an archive, by entry name.
enum Content<'a> {
    Dir,
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

/// Write a tar of `entries` in bytewise name order, with fixed metadata.
fn write_tar(
    mut entries: Vec<(String, Content<'_>)>,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<(), OutputError> {
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    entries.dedup_by(|a, b| a.0 == b.0);
    let write_err = |source| OutputError::io(out_path, source);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ARCHIVE_MTIME);
        match content {
            Content::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(DIR_MODE);
                header.set_size(0);
                tar.append_data(&mut header, &name, io::empty())
                    .map_err(write_err)?;
            }
            Content::Bytes(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(FILE_MODE);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, &name, bytes)
                    .map_err(write_err)?;
            }
            Content::File(path, size) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(FILE_MODE);
                header.set_size(size);
                let file = File::open(path).map_err(|source| OutputError::io(path, source))?;
                // `take` keeps the entry exactly `size` bytes; a shorter file is caught
                // below rather than producing a corrupt archive.
                let mut reader = CountingReader {
                    inner: file.take(size),
                    count: 0,
                };
                tar.append_data(&mut header, &name, &mut reader)
                    .map_err(write_err)?;
                if reader.count != size {
                    return Err(OutputError::BlobSize {
                        path: path.to_path_buf(),
                        digest: name,
                        expected: size,
                        actual: reader.count,
                    });
                }
            }
        }
    }
    let mut buffered = tar.into_inner().map_err(write_err)?;
    buffered.flush().map_err(write_err)?;
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A tar of the OCI image layout holding just this image (`oci-archive:`).
pub fn write_oci_archive(
    files: &ImageFiles<'_>,
    ref_name: &str,
    image_name: &str,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<(), OutputError> {
    let image = files.image;
    let index = index_json(image, ref_name, image_name);
    let mut entries: Vec<(String, Content<'_>)> = vec![
        ("blobs/".into(), Content::Dir),
        ("blobs/sha256/".into(), Content::Dir),
        ("oci-layout".into(), Content::Bytes(OCI_LAYOUT)),
        ("index.json".into(), Content::Bytes(&index)),
        (
            blob_path(image.manifest_digest.as_str())?,
            Content::Bytes(&image.manifest),
        ),
        (
            blob_path(image.config_digest.as_str())?,
            Content::Bytes(&image.config),
        ),
    ];
    for blob in files.unique_layers() {
        let path = files.layer_file(blob)?;
        entries.push((blob.digest.blob_path(), Content::File(path, blob.size)));
    }
    write_tar(entries, out, out_path)
}

/// `docker save`'s format: `manifest.json` (Config, RepoTags, Layers), the config as
/// `<hex>.json` and each layer as `<hex>.tar[.gz|.zst]`. Layers keep their compressed
/// bytes: `docker load` and `podman load` decompress them.
pub fn write_docker_archive(
    files: &ImageFiles<'_>,
    repo_tag: &str,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<(), OutputError> {
    #[derive(Serialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags")]
        repo_tags: Vec<String>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let image = files.image;
    let config_name = format!("{}.json", hex_of(image.config_digest.as_str())?);
    let mut layer_names = Vec::with_capacity(image.layers.len());
    for blob in &image.layers {
        layer_names.push(docker_layer_name(blob)?);
    }
    let manifest = serde_json::to_vec(&[Entry {
        config: config_name.clone(),
        repo_tags: vec![repo_tag.to_string()],
        layers: layer_names,
    }])
    .expect("manifest.json serialises");
    let mut entries: Vec<(String, Content<'_>)> = vec![
        ("manifest.json".into(), Content::Bytes(&manifest)),
        (config_name, Content::Bytes(&image.config)),
    ];
    for blob in files.unique_layers() {
        let path = files.layer_file(blob)?;
        entries.push((docker_layer_name(blob)?, Content::File(path, blob.size)));
    }
    write_tar(entries, out, out_path)
}

fn docker_layer_name(blob: &BlobRef) -> Result<String, OutputError> {
    let ext = if blob.media_type.contains("gzip") {
        "tar.gz"
    } else if blob.media_type.contains("zstd") {
        "tar.zst"
    } else {
        "tar"
    };
    Ok(format!("{}.{ext}", blob.digest.hex()))
}

/// Write `bytes` to `path` through a temporary file in the same directory, so a reader
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".venvimg-")
        .tempfile_in(dir)
        .map_err(|source| OutputError::io(dir, source))?;
    tmp.write_all(bytes)
        .map_err(|source| OutputError::io(tmp.path(), source))?;
    set_file_mode(tmp.as_file(), FILE_MODE).map_err(|source| OutputError::io(path, source))?;
    // On disk before the name points at it: a crash leaves the old file or the new one.
    tmp.as_file()
        .sync_all()
        .map_err(|source| OutputError::io(tmp.path(), source))?;
    tmp.persist(path)
        .map_err(|e| OutputError::io(path, e.error))?;
    sync_dir(dir)
}

/// Make the renames done in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| OutputError::io(dir, source))
}

/// An exclusive `flock` on `DIR/.venvimg.lock`, released when dropped: two venvimg
/// processes updating one layout take turns, so neither loses the other's entry.
pub struct LayoutLock {
    _file: File,
}

impl LayoutLock {
    /// The lock on the layout in `dir` (which must exist), or `None` when another
    /// process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<LayoutLock>, OutputError> {
        let (file, path) = Self::open(dir)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(LayoutLock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(OutputError::io(&path, e)),
        }
    }

    /// Wait for the lock on the layout in `dir` (blocks the thread).
    pub fn acquire(dir: &Path) -> Result<LayoutLock, OutputError> {
        let (file, path) = Self::open(dir)?;
        loop {
            match flock(&file, libc::LOCK_EX) {
                Ok(()) => return Ok(LayoutLock { _file: file }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OutputError::io(&path, e)),
            }
        }
    }

    fn open(dir: &Path) -> Result<(File, PathBuf), OutputError> {
        use fs_err::os::unix::fs::OpenOptionsExt;
        let path = dir.join(LOCK_FILE);
        // Never through a symlink: the lock file is created here or is a file here.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| OutputError::io(&path, source))?;
        Ok((file, path))
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Temporary files are 0600; what we leave behind is 0644, like any other tool's output.
pub fn set_file_mode(file: &std::fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// The blobs `oci:DIR` must hold besides the layers: manifest and config, by hex.
pub fn small_blobs(image: &ComposedImage) -> Result<BTreeMap<String, &[u8]>, OutputError> {
    let mut m = BTreeMap::new();
    m.insert(
        image.manifest_digest.hex().to_string(),
        image.manifest.as_slice(),
    );
    m.insert(
        hex_of(image.config_digest.as_str())?.to_string(),
        image.config.as_slice(),
    );
    Ok(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A two-layer image whose blobs are files in `dir`; its manifest and config are
    /// fixed bytes, so archive digests below depend on the writers alone.
    pub(crate) fn tiny_image(dir: &Path) -> (ComposedImage, HashMap<Digest, PathBuf>) {
        let layer_a = b"layer a bytes".to_vec();
        let layer_b = vec![7u8; 3000];
        let mut layers = Vec::new();
        let mut files = HashMap::new();
        for (i, bytes) in [layer_a, layer_b].into_iter().enumerate() {
            let digest = Digest::of(&bytes);
            let path = dir.join(format!("layer{i}"));
            fs::write(&path, &bytes).unwrap();
            files.insert(digest.clone(), path);
            layers.push(BlobRef {
                digest,
                size: bytes.len() as u64,
                media_type: MediaTypes::OCI_LAYER_GZIP.into(),
                from_base: i == 0,
            });
        }
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[]}}"#,
            MediaTypes::OCI_MANIFEST,
            MediaTypes::OCI_CONFIG,
            Digest::of(&config),
            config.len()
        )
        .into_bytes();
        (
            ComposedImage {
                config_digest: Digest::of(&config),
                config,
                manifest_digest: Digest::of(&manifest),
                manifest,
                layers,
            },
            files,
        )
    }

    fn archive(kind: &str, dir: &Path) -> Vec<u8> {
        let (image, layers) = tiny_image(dir);
        let files = ImageFiles {
            image: &image,
            layers,
        };
        let mut out = Vec::new();
        let p = Path::new("out.tar");
        match kind {
            "oci" => write_oci_archive(&files, "v1", "example.test/app:v1", &mut out, p).unwrap(),
            _ => write_docker_archive(&files, "example.test/app:v1", &mut out, p).unwrap(),
        }
        out
    }

    fn entries(bytes: &[u8]) -> Vec<(String, u64, u32, u64, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    String::from_utf8(e.path_bytes().to_vec()).unwrap(),
                    h.mtime().unwrap(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn oci_archive_is_a_sorted_layout_with_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = archive("oci", dir.path());
        let e = entries(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries are not sorted");
        assert_eq!(&names[..2], &["blobs/", "blobs/sha256/"]);
        assert_eq!(&names[names.len() - 2..], &["index.json", "oci-layout"]);
        assert_eq!(
            names.len(),
            2 + 4 + 2,
            "dirs + manifest, config, 2 layers + 2 files"
        );
        for (name, mtime, mode, uid, gid, data) in &e {
            assert_eq!(*mtime, ARCHIVE_MTIME, "{name}");
            assert_eq!((*uid, *gid), (0, 0), "{name}");
            assert!(*mode == 0o644 || *mode == 0o755, "{name} {mode:o}");
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(Digest::of(data).hex(), hex, "{name}");
            }
        }
        let index: Value =
            serde_json::from_slice(&e.iter().find(|x| x.0 == "index.json").unwrap().5).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"][REF_NAME], "v1");
        assert_eq!(m["annotations"][IMAGE_NAME], "example.test/app:v1");
        assert_eq!(m["mediaType"], MediaTypes::OCI_MANIFEST);
    }

    #[test]
    fn archives_are_byte_identical_and_pinned() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let oci = archive("oci", d1.path());
        assert_eq!(oci, archive("oci", d2.path()));
        let docker = archive("docker", d1.path());
        assert_eq!(docker, archive("docker", d2.path()));
        // Golden digests: a change here changes every archive users have compared.
        assert_eq!(
            Digest::of(&oci),
            "sha256:91c88cc39a73f7f97af02232a768630fec6ee3f6e086d46768507f5579e944c8"
        );
        assert_eq!(
            Digest::of(&docker),
            "sha256:32d8ff6a6c389d90ff127898586d16c068656bab105191afe3be0ed4786ea8aa"
        );
    }

    #[test]
    fn docker_archive_manifest_lists_config_tag_and_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = tiny_image(dir.path());
        let bytes = archive("docker", dir.path());
        let e = entries(&bytes);
        let manifest: Value =
            serde_json::from_slice(&e.iter().find(|x| x.0 == "manifest.json").unwrap().5).unwrap();
        let config_hex = image.config_digest.hex();
        assert_eq!(manifest[0]["Config"], format!("{config_hex}.json"));
        assert_eq!(manifest[0]["RepoTags"], json!(["example.test/app:v1"]));
        let layers: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("{}.tar.gz", l.digest.hex()))
            .collect();
        assert_eq!(manifest[0]["Layers"], json!(layers));
        for l in &layers {
            assert!(e.iter().any(|x| &x.0 == l), "{l} missing");
        }
        let config = &e
            .iter()
            .find(|x| x.0 == format!("{config_hex}.json"))
            .unwrap()
            .5;
        assert_eq!(config, &image.config);
    }

    #[test]
    fn a_layer_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (image, layers) = tiny_image(dir.path());
        fs::write(&layers[&image.layers[1].digest], b"short").unwrap();
        let files = ImageFiles {
            image: &image,
            layers,
        };
        let err = write_oci_archive(&files, "v1", "x", &mut Vec::new(), Path::new("o"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("3000") && err.contains('5'), "{err}");
    }

    #[test]
    fn merged_index_replaces_same_name_and_keeps_others() {
        let dir = tempfile::tempdir().unwrap();
        let (image, _) = tiny_image(dir.path());
        let other = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"m","digest":"sha256:aa","size":1,"annotations":{"org.opencontainers.image.ref.name":"old"}},
            {"mediaType":"m","digest":"sha256:bb","size":1,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}"#;
        let merged: Value =
            serde_json::from_slice(&merged_index_json(other, &image, "v1", "x").unwrap()).unwrap();
        let m = merged["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["digest"], "sha256:aa");
        assert_eq!(m[1]["digest"], image.manifest_digest.as_str());
        assert!(merged_index_json(b"[]", &image, "v1", "x").is_err());
    }
}
