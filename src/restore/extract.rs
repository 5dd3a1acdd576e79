//! One venv layer, decompressed and written as its bytes arrive: no copy of the blob on
//! disk, nothing held in memory beyond the pieces in flight. What the layer holds is
//! untrusted (a registry may serve anything that hashes to a digest someone pushed): only
//! the venv's own folder is written, never through a symlink, never over a file another
//! layer wrote, never anything but folders, files, symlinks and hard links.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::RestoreError;

/// The pieces of a blob as they arrive (from the async side, which fetches them): a
/// blocking reader for the decompressor. Ends when the sender is dropped.
pub(super) struct Pieces {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl Pieces {
    pub(super) fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Pieces {
        Pieces {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Where one layer goes: its entries under `venv` (the archive path of the venv folder,
/// `opt/nox/tests`) are written under `staging` as `<venv_dir>/…`.
pub(super) struct Target<'a> {
    /// The venv's archive path, without a leading or trailing `/`.
    pub venv: &'a str,
    /// The venv folder's own name (`tests`).
    pub venv_dir: &'a str,
    pub staging: &'a Path,
    /// The layer's place in the image (later layers win a folder's metadata).
    pub index: usize,
    /// Restore owners as the image has them (root only; others keep their own).
    pub owners: bool,
}

/// A folder's metadata, applied once every layer is written (writing into a folder
/// changes its mtime; a read-only folder must still take its files).
#[derive(Debug, Clone)]
pub(super) struct FolderMeta {
    pub rel: PathBuf,
    pub mode: u32,
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
    pub layer: usize,
}

/// A hard link whose target another layer writes: made once every layer is done.
#[derive(Debug, Clone)]
pub(super) struct LaterLink {
    pub rel: PathBuf,
    pub target: PathBuf,
}

/// What a layer wrote.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub folders: Vec<FolderMeta>,
    pub later_links: Vec<LaterLink>,
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Decompress (by the layer's media type) and write a layer's tar.
pub(super) fn extract(
    blob: impl Read,
    media_type: &str,
    to: &Target,
) -> Result<Written, RestoreError> {
    let blob = io::BufReader::with_capacity(256 << 10, blob);
    let bad = |detail: String| RestoreError::BadLayer {
        layer: to.index,
        detail,
    };
    // A gzip layer may be several members (venvimg compresses on several threads).
    let tar: Box<dyn Read> = if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(|e| bad(e.to_string()))?)
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Box::new(blob)
    } else {
        return Err(bad(format!(
            "media type {media_type} is not a layer venvimg reads"
        )));
    };
    let mut archive = tar::Archive::new(tar);
    let mut out = Written::default();
    let mut folders = KnownFolders::new(to.staging);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry's name: {e}")))?
            .into_owned();
        let Some(rel) = venv_relative(&path, to).map_err(bad)? else {
            continue;
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
        let mtime = header.mtime().map_err(|e| bad(e.to_string()))?;
        let uid = header.uid().map_err(|e| bad(e.to_string()))?;
        let gid = header.gid().map_err(|e| bad(e.to_string()))?;
        let meta = Meta {
            kind: header.entry_type(),
            mode,
            mtime,
            uid,
            gid,
        };
        write_entry(&mut entry, &path, rel, meta, to, &mut folders, &mut out)?;
    }
    Ok(out)
}

/// One entry's metadata, from its header.
struct Meta {
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
}

/// Write one entry at `rel` under the staging folder (a folder's metadata waits for
/// [`settle_folders`]; a hard link to a file not written yet waits in `out`).
fn write_entry(
    entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    path: &Path,
    rel: PathBuf,
    meta: Meta,
    to: &Target,
    folders: &mut KnownFolders,
    out: &mut Written,
) -> Result<(), RestoreError> {
    let Meta {
        kind,
        mode,
        mtime,
        uid,
        gid,
    } = meta;
    let bad = |detail: String| RestoreError::BadLayer {
        layer: to.index,
        detail,
    };
    let dest = to.staging.join(&rel);
    let io_err = |e: io::Error| RestoreError::Io {
        context: format!("writing {}", dest.display()),
        source: e,
    };
    if kind.is_dir() {
        folders.ensure(&rel).map_err(io_err)?;
        out.folders.push(FolderMeta {
            rel,
            mode,
            mtime,
            uid,
            gid,
            layer: to.index,
        });
        return Ok(());
    }
    let Some(parent) = rel.parent() else {
        return Err(bad(format!(
            "{}: the venv folder itself is not a folder",
            path.display()
        )));
    };
    folders.ensure(parent).map_err(io_err)?;
    if kind.is_file() {
        // O_EXCL: a file two layers both hold is an error, not a race one of them wins.
        let mut file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&dest)
            .map_err(|e| overlap_or(e, path, to))?;
        out.bytes += io::copy(entry, &mut file).map_err(io_err)?;
        let file = file.into_parts().0;
        if to.owners {
            std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32)).map_err(io_err)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io_err)?;
        }
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_file_handle_times(&file, Some(t), Some(t)).map_err(io_err)?;
        out.files += 1;
    } else if kind.is_symlink() {
        let target = entry
            .link_name()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad(format!("{}: a symlink without a target", path.display())))?;
        fs_err::os::unix::fs::symlink(&target, &dest).map_err(|e| overlap_or(e, path, to))?;
        if to.owners {
            std::os::unix::fs::lchown(&dest, Some(uid as u32), Some(gid as u32)).map_err(io_err)?;
        }
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_symlink_file_times(&dest, t, t).map_err(io_err)?;
        out.files += 1;
    } else if kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad(format!("{}: a hard link without a target", path.display())))?
            .into_owned();
        let Some(target) = venv_relative(&target, to).map_err(bad)? else {
            return Err(bad(format!(
                "{}: a hard link to {}, outside the venv",
                path.display(),
                target.display()
            )));
        };
        // The target is this layer's (written above) or another's, still on its way.
        if !link(to.staging, &target, &rel).map_err(|e| overlap_or(e, path, to))? {
            out.later_links.push(LaterLink { rel, target });
        }
        out.files += 1;
    } else {
        return Err(bad(format!(
            "{}: a {:?} entry; a venv layer holds folders, files and links only",
            path.display(),
            kind
        )));
    }
    Ok(())
}

/// Link `rel` to `target` (both under `staging`); false when the target is not there yet.
/// Never links a symlink or a folder: only a regular file a layer wrote.
pub(super) fn link(staging: &Path, target: &Path, rel: &Path) -> io::Result<bool> {
    let from = staging.join(target);
    match fs_err::symlink_metadata(&from) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "hard link target {} is not a regular file",
                    target.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    fs_err::hard_link(from, staging.join(rel))?;
    Ok(true)
}

fn overlap_or(e: io::Error, path: &Path, to: &Target) -> RestoreError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        RestoreError::BadLayer {
            layer: to.index,
            detail: format!(
                "{} is in another layer too; venvimg's venv layers never overlap",
                path.display()
            ),
        }
    } else {
        RestoreError::Io {
            context: format!("writing {}", to.staging.join(path).display()),
            source: e,
        }
    }
}

/// The path of an entry below the venv folder (`tests/bin/python`), None for the
/// folders above it (`opt/`, `opt/nox/`: the base image's, not restored); an error for
/// anything else, or a name with `..` or a root in it.
fn venv_relative(path: &Path, to: &Target) -> Result<Option<PathBuf>, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => return Err(format!("{}: not a plain relative name", path.display())),
        }
    }
    let venv: Vec<&std::ffi::OsStr> = Path::new(to.venv)
        .components()
        .map(|c| c.as_os_str())
        .collect();
    if parts.len() < venv.len() {
        if venv.starts_with(&parts) {
            return Ok(None);
        }
    } else if parts[..venv.len()] == venv[..] {
        let mut rel = PathBuf::from(to.venv_dir);
        rel.extend(&parts[venv.len()..]);
        return Ok(Some(rel));
    }
    Err(format!(
        "{}: outside the venv folder /{}; not a venv layer venvimg made",
        path.display(),
        to.venv
    ))
}

/// The folders known to be real folders under `staging` (not symlinks), so an entry is
/// never written through a symlink another entry made. A folder stays one: no entry may
/// replace it (files are created exclusively, folders are never removed).
struct KnownFolders<'a> {
    staging: &'a Path,
    known: HashSet<PathBuf>,
}

impl<'a> KnownFolders<'a> {
    fn new(staging: &'a Path) -> KnownFolders<'a> {
        KnownFolders {
            staging,
            known: HashSet::new(),
        }
    }

    /// `rel` and its parents, each a real folder (made where missing).
    fn ensure(&mut self, rel: &Path) -> io::Result<()> {
        let mut at = PathBuf::new();
        for c in rel.components() {
            at.push(c);
            if self.known.contains(&at) {
                continue;
            }
            let full = self.staging.join(&at);
            match fs_err::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is not a folder, and an entry of the layer goes in it",
                            at.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs_err::create_dir(&full) {
                        Ok(()) => {}
                        // Another layer made it at the same moment: it must be a folder.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            if !fs_err::symlink_metadata(&full)?.file_type().is_dir() {
                                return Err(e);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            self.known.insert(at.clone());
        }
        Ok(())
    }
}

/// Apply the folders' metadata, deepest first (a folder's mtime is final only once its
/// contents are), the last layer's entry of a folder winning as in the image.
pub(super) fn settle_folders(
    staging: &Path,
    mut folders: Vec<FolderMeta>,
    owners: bool,
) -> Result<(), RestoreError> {
    folders.sort_by(|a, b| {
        b.rel
            .components()
            .count()
            .cmp(&a.rel.components().count())
            .then_with(|| a.rel.cmp(&b.rel))
            .then_with(|| b.layer.cmp(&a.layer))
    });
    folders.dedup_by(|later, first| later.rel == first.rel);
    for f in folders {
        let path = staging.join(&f.rel);
        let io_err = |e: io::Error| RestoreError::Io {
            context: format!("setting the metadata of {}", path.display()),
            source: e,
        };
        if owners {
            std::os::unix::fs::lchown(&path, Some(f.uid as u32), Some(f.gid as u32))
                .map_err(io_err)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
                .map_err(io_err)?;
        }
        let t = filetime::FileTime::from_unix_time(f.mtime as i64, 0);
        filetime::set_symlink_file_times(&path, t, t).map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(315532800);
        h
    }

    fn target(staging: &Path) -> Target<'_> {
        Target {
            venv: "opt/nox/tests",
            venv_dir: "tests",
            staging,
            index: 0,
            owners: false,
        }
    }

    #[test]
    fn only_the_venv_folder_is_written() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        assert_eq!(venv_relative(Path::new("opt/"), &t), Ok(None));
        assert_eq!(venv_relative(Path::new("./opt/nox"), &t), Ok(None));
        assert_eq!(
            venv_relative(Path::new("opt/nox/tests"), &t),
            Ok(Some(PathBuf::from("tests")))
        );
        assert_eq!(
            venv_relative(Path::new("opt/nox/tests/bin/python"), &t),
            Ok(Some(PathBuf::from("tests/bin/python")))
        );
        for bad in [
            "opt/nox/lint/x",
            "etc/passwd",
            "opt/nox/tests/../../x",
            "/opt/nox/tests/x",
        ] {
            assert!(venv_relative(Path::new(bad), &t).is_err(), "{bad}");
        }
    }

    /// A layer with a symlink `tests/lib -> /tmp/…` and then a file `tests/lib/evil`:
    /// refused, nothing written outside the staging folder.
    #[test]
    fn never_writes_through_a_symlink_the_layer_made() {
        let outside = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, "opt/nox/tests/", io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, "opt/nox/tests/lib", outside.path())
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 4);
        b.append_data(&mut h, "opt/nox/tests/lib/evil", &b"evil"[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let e = extract(
            &tar[..],
            "application/vnd.oci.image.layer.v1.tar",
            &target(staging.path()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        assert!(!outside.path().join("evil").exists());
    }

    #[test]
    fn a_file_in_two_layers_is_refused() {
        let staging = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        b.append_data(&mut h, "opt/nox/tests/pyvenv.cfg", &b"x"[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let media = "application/vnd.oci.image.layer.v1.tar";
        extract(&tar[..], media, &target(staging.path())).unwrap();
        let e = extract(&tar[..], media, &target(staging.path())).unwrap_err();
        assert!(e.to_string().contains("in another layer too"), "{e}");
    }
}
