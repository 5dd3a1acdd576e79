//! Where images go besides a registry — an OCI layout (`oci:DIR`), a tar of one
//! (`oci-archive:FILE`), `docker save`'s archive (`docker-archive:FILE`), local podman or
//! docker storage (`--load`) — and the commands that read images back (`inspect`) or
//! start a project (`init`).

pub mod layout;

use fs_err as fs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::Reference;
use tokio::io::AsyncWriteExt;

use crate::config::BuilderKind;
use crate::image::{BlobRef, ComposedImage};
use crate::model::Digest;
use crate::printer::{human_bytes, Reporter};
use crate::registry::{retry, Registry};
use crate::untrusted::{self, Refusal};
use layout::ImageFiles;

/// Where to find each blob an image references.
pub struct BlobSources<'a> {
    /// Layers packed on this machine, by digest.
    pub local: &'a HashMap<Digest, PathBuf>,
    /// The base image's repository (for base layers).
    pub base: &'a Reference,
    /// The target repository (for layers of sessions that were hits).
    pub repository: &'a Reference,
    /// Layers found elsewhere, by digest (hits in `trusted_repository`).
    pub remote: &'a HashMap<Digest, Reference>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: expected {expected} bytes for blob {digest}, found {actual}; the file changed after it was packed")]
    BlobSize {
        path: PathBuf,
        /// The blob's digest, or its name in an archive.
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("no file and no registry source for blob {digest}")]
    MissingBlob { digest: Digest },
    #[error("unsupported digest `{digest}` (only sha256 is written to layouts and archives)")]
    BadDigest { digest: String },
    #[error("cannot run `{program} load`: {source}\n  hint: install {program}, or write the image with --output docker-archive:FILE and load it where {program} runs")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{program} load -i {archive}` failed ({status}):\n{stderr}")]
    Load {
        program: &'static str,
        archive: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{image}: {detail}")]
    BadImage { image: String, detail: String },
    #[error("{image} was not made by venvimg: its config has no `{label}` label\n  hint: inspect an image that `venvimg build` pushed or wrote (the tag printed by `venvimg plan`)")]
    NotVenvimg { image: String, label: &'static str },
    #[error(
        "{noxfile}: nox lists no sessions; define one with @nox.session before `venvimg init`"
    )]
    NoSessions { noxfile: PathBuf },
    /// A destination or option given wrong (exit 2).
    #[error(transparent)]
    Usage(crate::usage::UsageError),
    /// Boxed: the registry's errors are large.
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
}

impl From<crate::registry::RegistryError> for OutputError {
    fn from(e: crate::registry::RegistryError) -> Self {
        OutputError::Registry(Box::new(e))
    }
}

impl OutputError {
    /// 2 for a destination given wrong, 1 for a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            OutputError::Usage(_) => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> OutputError {
        OutputError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

const FORMS: &str = "oci:DIR, oci-archive:FILE or docker-archive:FILE";

/// A parsed `--output` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    OciDir(PathBuf),
    OciArchive(PathBuf),
    DockerArchive(PathBuf),
}

impl Destination {
    /// `oci:DIR`, `oci-archive:FILE` or `docker-archive:FILE`; anything else is a usage
    /// error naming the value and the three forms.
    pub fn parse(dest: &str) -> Result<Destination, OutputError> {
        let (kind, path) = dest.split_once(':').unwrap_or((dest, ""));
        let usage = |why: &str| {
            OutputError::Usage(crate::usage::UsageError::Flag {
                flag: "--output",
                value: Some(dest.to_string()),
                why: format!("{why}; write {FORMS} (e.g. docker-archive:image.tar, then `podman load -i image.tar`)"),
            })
        };
        if path.is_empty() && matches!(kind, "oci" | "oci-archive" | "docker-archive") {
            return Err(usage("no path after the colon"));
        }
        let path = PathBuf::from(path);
        match kind {
            "oci" => Ok(Destination::OciDir(path)),
            "oci-archive" => Ok(Destination::OciArchive(path)),
            "docker-archive" => Ok(Destination::DockerArchive(path)),
            _ => Err(usage("unknown destination")),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::OciDir(p) => write!(f, "oci:{}", p.display()),
            Destination::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Destination::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

/// Write `image` (named `reference`) to `dest`: `oci:DIR`, `oci-archive:FILE` or
/// `docker-archive:FILE`. Layers not packed here are streamed from the registry to disk.
pub async fn write_output(
    registry: &Registry,
    dest: &str,
    reference: &Reference,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    printer: &dyn Reporter,
) -> Result<(), OutputError> {
    let dest = Destination::parse(dest)?;
    let progress = printer.spinner(format!("writing {dest}"));
    let result = match &dest {
        Destination::OciDir(dir) => {
            write_oci_dir(registry, dir, reference, image, sources, printer).await
        }
        Destination::OciArchive(file) | Destination::DockerArchive(file) => {
            write_archive(registry, &dest, file, reference, image, sources, printer).await
        }
    };
    progress.finish();
    result?;
    let size: u64 = image.layers.iter().map(|l| l.size).sum();
    printer.info(format!(
        "wrote {} to {dest} ({} layers, {})",
        reference.whole(),
        image.layers.len(),
        human_bytes(size)
    ));
    Ok(())
}

/// The tag an OCI layout names the image by (`org.opencontainers.image.ref.name`).
fn ref_name(reference: &Reference) -> String {
    reference.tag().unwrap_or("latest").to_string()
}

async fn write_archive(
    registry: &Registry,
    dest: &Destination,
    file: &Path,
    reference: &Reference,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    printer: &dyn Reporter,
) -> Result<(), OutputError> {
    if file.is_dir() {
        return Err(OutputError::Usage(crate::usage::UsageError::Flag {
            flag: "--output",
            value: Some(dest.to_string()),
            why: format!(
                "{} is a directory; an archive is a file (for a directory, use oci:DIR)",
                file.display()
            ),
        }));
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|s| OutputError::io(&dir, s))?;
    // Fetched blobs and the archive-in-progress live next to the destination: same
    // filesystem for the final rename, and no surprise use of a small /tmp.
    let staging =
        crate::cancel::private_tempdir(tempfile::Builder::new().prefix(".venvimg-blobs-"), &dir)
            .map_err(|s| OutputError::io(&dir, s))?;
    let layers = gather_layers(registry, image, sources, staging.path(), printer).await?;
    let files = ImageFiles { image, layers };
    let mut tmp = tempfile::Builder::new()
        .prefix(".venvimg-archive-")
        .tempfile_in(&dir)
        .map_err(|s| OutputError::io(&dir, s))?;
    let tmp_path = tmp.path().to_path_buf();
    match dest {
        Destination::DockerArchive(_) => {
            layout::write_docker_archive(&files, &reference.whole(), tmp.as_file_mut(), &tmp_path)?
        }
        _ => layout::write_oci_archive(
            &files,
            &ref_name(reference),
            &reference.whole(),
            tmp.as_file_mut(),
            &tmp_path,
        )?,
    }
    layout::set_file_mode(tmp.as_file(), 0o644).map_err(|s| OutputError::io(&tmp_path, s))?;
    tmp.as_file()
        .sync_all()
        .map_err(|s| OutputError::io(&tmp_path, s))?;
    tmp.persist(file)
        .map_err(|e| OutputError::io(file, e.error))?;
    layout::sync_dir(&dir)?;
    Ok(())
}

/// Write or update the OCI layout in `dir`. Blobs go first and `index.json` last, so the
/// layout never names a manifest whose blobs are missing. Writers of one layout take
/// turns (a lock file in it), so concurrent ones never lose each other's entries.
async fn write_oci_dir(
    registry: &Registry,
    dir: &Path,
    reference: &Reference,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    printer: &dyn Reporter,
) -> Result<(), OutputError> {
    let index_file = dir.join("index.json");
    let shown = format!("oci:{}", dir.display());
    let lock = lock_layout(dir, &shown, printer).await?;
    let blobs = blob_folders(dir, &shown)?;
    put_layers(registry, dir, &blobs, image, sources, printer).await?;
    for (hex, bytes) in layout::small_blobs(image)? {
        layout::write_atomic(&blobs.join(hex), bytes)?;
    }
    let index = match untrusted::read_checked(&index_file, layout::MAX_INDEX_JSON) {
        Ok(existing) => {
            layout::merged_index_json(&existing, image, &ref_name(reference), &reference.whole())
                .map_err(|detail| OutputError::BadImage {
                    image: shown.clone(),
                    detail,
                })?
        }
        Err(Refusal::Missing) => {
            layout::index_json(image, &ref_name(reference), &reference.whole())
        }
        Err(reason) => {
            return Err(OutputError::BadImage {
                image: shown,
                detail: format!("index.json {reason}"),
            })
        }
    };
    layout::write_atomic(&index_file, &index)?;
    drop(lock);
    Ok(())
}

/// `dir` as a layout this writer holds: refused when it is something else, the lock
/// taken (waiting for another writer), and marked as a layout (`oci-layout`).
async fn lock_layout(
    dir: &Path,
    shown: &str,
    printer: &dyn Reporter,
) -> Result<layout::LayoutLock, OutputError> {
    let layout_file = dir.join("oci-layout");
    let not_a_layout = || {
        OutputError::Usage(crate::usage::UsageError::Flag {
            flag: "--output",
            value: Some(shown.to_string()),
            why: "the directory exists and is not an OCI layout (no oci-layout file); choose a new or empty directory".into(),
        })
    };
    if dir.exists() && !dir.is_dir() {
        return Err(not_a_layout());
    }
    // Anything there besides a lock file must be a layout before the lock file is made.
    let others = |d: &Path| -> Result<bool, OutputError> {
        if !d.exists() {
            return Ok(false);
        }
        Ok(fs::read_dir(d)
            .map_err(|s| OutputError::io(d, s))?
            .flatten()
            .any(|e| e.file_name() != layout::LOCK_FILE))
    };
    if others(dir)? && untrusted::check_regular(&layout_file).is_err() {
        return Err(not_a_layout());
    }
    fs::create_dir_all(dir).map_err(|s| OutputError::io(dir, s))?;
    let lock = match layout::LayoutLock::try_acquire(dir)? {
        Some(lock) => lock,
        None => {
            printer.info(format!(
                "waiting for another venvimg writing {shown} to finish"
            ));
            let d = dir.to_path_buf();
            tokio::task::spawn_blocking(move || layout::LayoutLock::acquire(&d))
                .await
                .map_err(|e| OutputError::io(dir, std::io::Error::other(e.to_string())))??
        }
    };
    // Checked again under the lock: another writer may have been first.
    if others(dir)? && untrusted::check_regular(&layout_file).is_err() {
        return Err(not_a_layout());
    }
    // Marks the folder as a layout from the start, so a concurrent writer sees one.
    layout::write_atomic(&layout_file, layout::OCI_LAYOUT)?;
    Ok(lock)
}

/// The layout's `blobs/sha256`, made where missing; a symlink or a file in their place is
/// refused.
fn blob_folders(dir: &Path, shown: &str) -> Result<PathBuf, OutputError> {
    let blobs = dir.join("blobs").join("sha256");
    for d in [dir.join("blobs"), blobs.clone()] {
        match untrusted::check_dir(&d) {
            Ok(()) => {}
            Err(Refusal::Missing) => match fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(OutputError::io(&d, e)),
            },
            Err(Refusal::Io(e)) => return Err(OutputError::io(&d, e)),
            Err(_) => {
                let rel = d.strip_prefix(dir).unwrap_or(&d).display().to_string();
                return Err(OutputError::BadImage {
                    image: shown.to_string(),
                    detail: format!(
                        "{rel} is not a folder (a symlink?); venvimg writes a layout only into its own folders\n  hint: remove {} or write to a new directory",
                        d.display()
                    ),
                });
            }
        }
    }
    Ok(blobs)
}

/// The image's layers into `blobs`: those already there are kept, local ones copied, the
/// others fetched.
async fn put_layers(
    registry: &Registry,
    dir: &Path,
    blobs: &Path,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    printer: &dyn Reporter,
) -> Result<(), OutputError> {
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for blob in &image.layers {
        if !seen.insert(blob.digest.as_str()) {
            continue;
        }
        let target = blobs.join(blob.digest.hex());
        if blob_file_matches(&target, blob)? {
            continue;
        }
        if let Some(local) = sources.local.get(blob.digest.as_str()) {
            copy_blob(local, &target, blob)?;
        } else {
            missing.push(blob.clone());
        }
    }
    if !missing.is_empty() {
        // Fetched into a folder that is removed whatever happens, then moved into place.
        let staging =
            crate::cancel::private_tempdir(tempfile::Builder::new().prefix(".venvimg-blobs-"), dir)
                .map_err(|s| OutputError::io(dir, s))?;
        let fetched = fetch_blobs(registry, &missing, sources, staging.path(), printer).await?;
        for (digest, path) in fetched {
            let target = blobs.join(digest.hex());
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|s| OutputError::io(&path, s))?;
            fs::rename(&path, &target).map_err(|s| OutputError::io(&target, s))?;
        }
    }
    layout::sync_dir(blobs)?;
    Ok(())
}

/// Is `path` already exactly this blob? (A layout being updated keeps what it has.) A
/// symlink or anything else but a regular file is not: it is replaced, never followed.
fn blob_file_matches(path: &Path, blob: &BlobRef) -> Result<bool, OutputError> {
    match untrusted::check_regular(path) {
        Ok(m) if m.len() == blob.size => {
            let digest = untrusted::sha256(path).map_err(|s| OutputError::io(path, s))?;
            Ok(blob.digest.hex() == digest)
        }
        Err(Refusal::Io(e)) => Err(OutputError::io(path, e)),
        _ => Ok(false),
    }
}

fn copy_blob(from: &Path, to: &Path, blob: &BlobRef) -> Result<(), OutputError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".venvimg-")
        .tempfile_in(dir)
        .map_err(|s| OutputError::io(dir, s))?;
    let copied = fs::copy(from, tmp.path()).map_err(|s| OutputError::io(from, s))?;
    if copied != blob.size {
        return Err(OutputError::BlobSize {
            path: from.to_path_buf(),
            digest: blob.digest.to_string(),
            expected: blob.size,
            actual: copied,
        });
    }
    layout::set_file_mode(tmp.as_file(), 0o644).map_err(|s| OutputError::io(to, s))?;
    tmp.as_file()
        .sync_all()
        .map_err(|s| OutputError::io(tmp.path(), s))?;
    tmp.persist(to).map_err(|e| OutputError::io(to, e.error))?;
    Ok(())
}

/// Every layer of `image` as a file: the ones packed here where they are, the others
/// fetched into `staging`.
async fn gather_layers(
    registry: &Registry,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    staging: &Path,
    printer: &dyn Reporter,
) -> Result<HashMap<Digest, PathBuf>, OutputError> {
    let mut files = HashMap::new();
    let mut missing = Vec::new();
    for blob in &image.layers {
        if files.contains_key(&blob.digest)
            || missing.iter().any(|b: &BlobRef| b.digest == blob.digest)
        {
            continue;
        }
        match sources.local.get(blob.digest.as_str()) {
            Some(path) => {
                files.insert(blob.digest.clone(), path.clone());
            }
            None => missing.push(blob.clone()),
        }
    }
    files.extend(fetch_blobs(registry, &missing, sources, staging, printer).await?);
    Ok(files)
}

/// How many blobs are fetched at once.
const PARALLEL_FETCHES: usize = 4;

/// Stream `blobs` from their registries into files in `dir` (digest-checked by the
/// client); returns digest → file.
async fn fetch_blobs(
    registry: &Registry,
    blobs: &[BlobRef],
    sources: &BlobSources<'_>,
    dir: &Path,
    printer: &dyn Reporter,
) -> Result<Vec<(Digest, PathBuf)>, OutputError> {
    futures_util::stream::iter(blobs.iter().map(|blob| async move {
        let from = if blob.from_base {
            sources.base
        } else {
            sources
                .remote
                .get(blob.digest.as_str())
                .unwrap_or(sources.repository)
        };
        let path = dir.join(format!(".fetch-{}", blob.digest.hex()));
        printer.verbose(format!(
            "fetching {} ({}) from {}/{}",
            blob.digest,
            human_bytes(blob.size),
            from.resolve_registry(),
            from.repository()
        ));
        fetch_blob(registry, from, blob, &path).await?;
        Ok::<_, OutputError>((blob.digest.clone(), path))
    }))
    .buffer_unordered(PARALLEL_FETCHES)
    .try_collect()
    .await
}

async fn fetch_blob(
    registry: &Registry,
    from: &Reference,
    blob: &BlobRef,
    path: &Path,
) -> Result<(), OutputError> {
    let client = registry.client();
    client
        .store_auth_if_needed(from.resolve_registry(), &registry.auth(from))
        .await;
    retry(|| async move {
        // Each attempt starts the file over.
        let file = tokio::fs::File::create(path).await?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        client
            .pull_blob(from, blob.digest.as_str(), &mut out)
            .await?;
        out.flush().await?;
        Ok::<_, OciDistributionError>(())
    })
    .await
    .map_err(|e| registry.explain(from, "pull blob of", e))?;
    let size = fs::metadata(path)
        .map_err(|s| OutputError::io(path, s))?
        .len();
    if size != blob.size {
        return Err(OutputError::BlobSize {
            path: path.to_path_buf(),
            digest: blob.digest.to_string(),
            expected: blob.size,
            actual: size,
        });
    }
    Ok(())
}

/// Load `image` into local podman or docker storage as `reference`: a docker-archive in
/// `work`, then `podman load -i` (or `docker load -i`). `engine` is podman or docker, as
/// `commands::job_engine` resolved it (the local builder is no engine).
pub async fn load(
    engine: BuilderKind,
    registry: &Registry,
    reference: &Reference,
    image: &ComposedImage,
    sources: &BlobSources<'_>,
    work: &Path,
    printer: &dyn Reporter,
) -> Result<(), OutputError> {
    debug_assert!(
        engine != BuilderKind::Local,
        "--load needs podman or docker"
    );
    let program = engine.as_str();
    let archive = work.join(format!("{}.docker-archive.tar", ref_name(reference)));
    let dest = format!("docker-archive:{}", archive.display());
    write_output(registry, &dest, reference, image, sources, printer).await?;
    let progress = printer.spinner(format!("loading {} into {program}", reference.whole()));
    let out = crate::process::async_command(program)
        .arg("load")
        .arg("-i")
        .arg(&archive)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    progress.finish();
    // The archive is as large as the image; it has done its job either way.
    let _ = fs::remove_file(&archive);
    let out = out.map_err(|source| OutputError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(OutputError::Load {
            program,
            archive,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        });
    }
    printer.verbose(String::from_utf8_lossy(&out.stdout).trim_end());
    printer.info(format!("loaded {} into {program}", reference.whole()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::{Printer, Verbosity};
    use crate::registry::Transport;

    /// Every file under `dir` by relative path, with its bytes and mode.
    fn tree(dir: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, (fs::read(&p).unwrap(), mode));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn oci_dir_is_deterministic_and_keeps_other_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let (image, local) = layout::tests::tiny_image(tmp.path());
        // Every layer is local: the registry is never asked.
        let registry = Registry::new(Transport::default(), &[]).unwrap();
        let repo: Reference = "registry.invalid/app:v1".parse().unwrap();
        let sources = BlobSources {
            local: &local,
            base: &repo,
            repository: &repo,
            remote: &HashMap::new(),
        };
        let printer = Printer::new(Verbosity::Quiet);
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            let dest = format!("oci:{}", d.display());
            write_output(&registry, &dest, &repo, &image, &sources, &printer)
                .await
                .unwrap();
        }
        let first = tree(&a);
        assert_eq!(first, tree(&b));
        let names: Vec<&String> = first.keys().collect();
        // oci-layout, index.json, 4 blobs, and the writers' (empty) lock file.
        assert_eq!(names.len(), 2 + 4 + 1, "{names:?}");
        assert_eq!(first[layout::LOCK_FILE].0, b"");
        assert!(first.values().all(|(_, mode)| *mode == 0o644));
        assert_eq!(first["oci-layout"].0, layout::OCI_LAYOUT);
        for (name, (bytes, _)) in &first {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(Digest::of(bytes).hex(), hex);
            }
        }

        // Another tag into the same layout: both are listed, blobs shared.
        let v2: Reference = "registry.invalid/app:v2".parse().unwrap();
        let dest = format!("oci:{}", a.display());
        write_output(&registry, &dest, &v2, &image, &sources, &printer)
            .await
            .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(a.join("index.json")).unwrap()).unwrap();
        let refs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"][layout::REF_NAME].as_str().unwrap())
            .collect();
        assert_eq!(refs, ["v1", "v2"]);
        assert_eq!(tree(&a).len(), first.len());
    }

    #[test]
    fn destinations_parse_and_errors_list_the_forms() {
        assert_eq!(
            Destination::parse("oci:out/dir").unwrap(),
            Destination::OciDir("out/dir".into())
        );
        assert_eq!(
            Destination::parse("oci-archive:/tmp/a.tar").unwrap(),
            Destination::OciArchive("/tmp/a.tar".into())
        );
        assert_eq!(
            Destination::parse("docker-archive:a:b.tar").unwrap(),
            Destination::DockerArchive("a:b.tar".into())
        );
        for bad in ["docker://x/y", "dir:/tmp/x", "oci:", "image.tar"] {
            let err = Destination::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(msg.contains(bad), "{msg}");
            assert!(msg.contains(FORMS), "{msg}");
        }
    }
}
