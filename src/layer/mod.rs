//! Packing a directory tree (a session's virtualenv) into a reproducible OCI layer.
//!
//! The pipeline streams: walk (sorted, no symlink following) → tar (our own headers) →
//! SHA-256 of the tar (the `diff_id`) → gzip or zstd on worker threads → SHA-256 of the
//! compressed bytes (the `digest`) → the output file. Memory stays bounded by a few
//! compression blocks per worker, whatever the size of the tree.
//!
//! What makes the bytes reproducible — the same tree content gives the same digest on any
//! machine, any day, with any number of threads:
//! - entries in bytewise order of their archive names, whatever `readdir` returns;
//! - mtimes clamped to `source_date_epoch`, numeric owners from the options, empty
//!   user/group names, setuid/setgid dropped, no atime/ctime, no sparse headers;
//! - the compressors pinned (zlib-rs for gzip, libzstd single-threaded for zstd)
//!   and fed blocks whose boundaries don't depend on the thread count;
//! - golden digests in the tests that fail when any of this changes.
//!
//! Not normalised, on purpose: permission bits (a file that is group-writable in the
//! tree is group-writable in the layer), so builds must run with a fixed umask.

mod compress;
pub mod diff;
mod digest;
mod tar_writer;
mod walk;

use fs_err::{self as fs, File};
use std::collections::HashMap;
use std::io::{self, BufWriter};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::compress::{Codec, Compressor};
use crate::layer::digest::HashingWriter;
use crate::layer::tar_writer::{CopyError, EntryMeta, TarWriter};
use crate::layer::walk::{Kind, WalkEntry};
use crate::model::Digest;

pub use crate::layer::compress::{BLOCK_SIZE, GZIP_LEVEL, ZSTD_LEVEL};

/// Default clamp for mtimes: 1980-01-01T00:00:00Z. Not 0, because some tools treat a
/// zero mtime as "unknown" and zip-based Python tooling can't represent times before 1980.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 315_532_800;

/// Mode of the directories above the tree's root (`/opt`, `/opt/nox` for
/// `/opt/nox/tests-3-12`).
const PARENT_DIR_MODE: u32 = 0o755;

/// Permission bits we keep: rwx for all, and the sticky bit. setuid/setgid are dropped
/// (nothing in a venv needs them, and they'd be a privilege escalation in a job image).
const KEPT_MODE_BITS: u32 = 0o1777;

pub use crate::model::Compression;

fn codec(c: Compression) -> Codec {
    match c {
        Compression::Gzip => Codec::Gzip,
        Compression::Zstd { level } => Codec::Zstd(level),
    }
}

/// How to pack a tree. Every field but `threads` is part of the layer's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Absolute path in the image where the tree's root goes, e.g. `/opt/nox/tests-3-12`.
    /// `/` puts the tree's contents at the image root (and emits no root entry).
    pub prefix: String,
    /// mtimes later than this are clamped to it (seconds since the epoch).
    pub source_date_epoch: u64,
    pub uid: u64,
    pub gid: u64,
    pub compression: Compression,
    /// How many of the prefix's parent directories the layer writes with the options'
    /// owner and 0755, innermost first: 1 writes the envdir that holds the venv
    /// (venvimg's). The base image's own directories above it are written only as
    /// `base_dirs` gives them.
    pub parents: usize,
    /// The base image's directories above those (`tmp`, `opt`), with the base's mode and
    /// owner. Every layer must carry them: an engine that extracts `tmp/nox/` with no
    /// `tmp/` entry creates `tmp` in that layer with 0755, which then hides the base's
    /// 1777 `/tmp` (seen with podman's overlay storage). Ancestors not named here are left
    /// out.
    pub base_dirs: std::collections::BTreeMap<String, BaseDir>,
    /// Compression worker threads (gzip); 0 counts as 1. Never changes the output bytes.
    pub threads: usize,
}

impl PackOptions {
    /// Options with the defaults: `DEFAULT_SOURCE_DATE_EPOCH`, owner 0:0, gzip, one
    /// worker per available CPU.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            uid: 0,
            gid: 0,
            compression: Compression::Gzip,
            parents: 1,
            base_dirs: Default::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A directory of the base image: mode bits (with setuid/setgid/sticky), owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseDir {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// A layer blob written to disk, with what a manifest and an image config need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedLayer {
    pub path: PathBuf,
    /// `sha256:<hex>` of the compressed blob (the manifest's layer digest).
    pub digest: crate::model::Digest,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    pub compression: Compression,
    /// Number of tar entries (directories, files, symlinks, hardlinks), including the
    /// prefix's parent directories.
    pub entries: u64,
}

impl PackedLayer {
    pub fn media_type(&self) -> &'static str {
        self.compression.media_type()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid layer prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("{}: not a directory, cannot pack it as a layer", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot read directory {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot stat {}", path.display())]
    Metadata {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read symlink {}", path.display())]
    ReadLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} changed while it was being packed (expected {expected} bytes)", path.display())]
    FileChanged { path: PathBuf, expected: u64 },
    #[error("{}: a {kind} cannot go into a layer (only files, directories and symlinks can)", path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error("cannot create layer file {}", path.display())]
    CreateOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing or compressing the layer failed (disk full, a compression thread failed).
    #[error("cannot write layer file {}", path.display())]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Packs the whole tree at `src` into a compressed layer written to `out`.
pub fn pack_tree(src: &Path, opts: &PackOptions, out: &Path) -> Result<PackedLayer, LayerError> {
    pack_tree_filtered(src, opts, out, &|_| true)
}

/// Packs the entries of `src` for which `keep(relative path)` is true, plus the
/// directories above them (so the layer can be applied on its own), plus the tree's root
/// and the prefix's parents (always).
///
/// `keep` gets paths relative to `src` (`lib/python3.12/site-packages/six.py`), is asked
/// about every entry including directories, and a rejected directory is still searched.
/// A hardlink whose first path is left out is stored as a file at its first kept path.
///
/// On error, `out` is removed (when it is a regular file).
pub fn pack_tree_filtered(
    src: &Path,
    opts: &PackOptions,
    out: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<PackedLayer, LayerError> {
    pack_with_block_size(src, opts, out, keep, BLOCK_SIZE)
}

/// `pack_tree_filtered` with another compression block size, for tests that need many
/// blocks without packing megabytes.
fn pack_with_block_size(
    src: &Path,
    opts: &PackOptions,
    out: &Path,
    keep: &dyn Fn(&Path) -> bool,
    block_size: usize,
) -> Result<PackedLayer, LayerError> {
    let prefix = archive_prefix(&opts.prefix)?;
    let file = File::create(out).map_err(|source| LayerError::CreateOutput {
        path: out.to_path_buf(),
        source,
    })?;
    let result = pack_into(src, opts, &prefix, (file, out), keep, block_size);
    if result.is_err() && fs::symlink_metadata(out).is_ok_and(|m| m.is_file()) {
        // A partial blob must never be mistaken for a layer. (Only a regular file: `out`
        // may be a device or a pipe the caller handed us.)
        let _ = fs::remove_file(out);
    }
    result
}

fn pack_into(
    src: &Path,
    opts: &PackOptions,
    prefix: &[u8],
    (file, out): (File, &Path),
    keep: &dyn Fn(&Path) -> bool,
    block_size: usize,
) -> Result<PackedLayer, LayerError> {
    let write_error = |source| LayerError::WriteOutput {
        path: out.to_path_buf(),
        source,
    };
    let blob = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let compressor = Compressor::new(codec(opts.compression), blob, opts.threads, block_size)
        .map_err(write_error)?;
    let mut packer = Packer {
        tar: TarWriter::new(HashingWriter::new(compressor)),
        prefix,
        opts,
        out,
        first_links: HashMap::new(),
    };
    packer.write_prefix_parents()?;
    walk::walk(src, keep, &mut |entry| packer.append(entry))?;

    let entries = packer.tar.entries();
    let tar = packer.tar.finish().map_err(write_error)?;
    let (compressor, diff_id, uncompressed_size) = tar.finish();
    let blob = compressor.finish().map_err(write_error)?;
    let (file, digest, size) = blob.finish();
    // No fsync: the blob is an intermediate file that is re-created if lost.
    file.into_inner().map_err(|e| write_error(e.into_error()))?;
    Ok(PackedLayer {
        path: out.to_path_buf(),
        digest,
        diff_id,
        size,
        uncompressed_size,
        compression: opts.compression,
        entries,
    })
}

/// `/opt/nox/tests-3-12` → `opt/nox/tests-3-12/`; `/` → empty.
fn archive_prefix(prefix: &str) -> Result<Vec<u8>, LayerError> {
    let invalid = |reason| LayerError::InvalidPrefix {
        prefix: prefix.to_string(),
        reason,
    };
    if !prefix.starts_with('/') {
        return Err(invalid("it must be an absolute path"));
    }
    if prefix.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut out = Vec::with_capacity(prefix.len());
    for component in prefix.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(invalid("it must not contain `.` or `..` components"));
        }
        out.extend_from_slice(component.as_bytes());
        out.push(b'/');
    }
    Ok(out)
}

type LayerStream = HashingWriter<Compressor<HashingWriter<BufWriter<File>>>>;

struct Packer<'a> {
    tar: TarWriter<LayerStream>,
    /// Archive path of the tree's root, with a trailing `/` (empty for prefix `/`).
    prefix: &'a [u8],
    opts: &'a PackOptions,
    out: &'a Path,
    /// (device, inode) of files with several links → archive name of the first one
    /// written, which later links point to.
    first_links: HashMap<(u64, u64), Vec<u8>>,
}

impl Packer<'_> {
    fn write_error(&self, source: io::Error) -> LayerError {
        LayerError::WriteOutput {
            path: self.out.to_path_buf(),
            source,
        }
    }

    /// `opt/nox/` for the prefix `/opt/nox/tests-3-12` with `parents: 1` (`opt/` too
    /// with 2); the root's own entry comes from the walk, with the root's mode.
    fn write_prefix_parents(&mut self) -> Result<(), LayerError> {
        let meta = EntryMeta {
            mode: PARENT_DIR_MODE,
            uid: self.opts.uid,
            gid: self.opts.gid,
            mtime: self.opts.source_date_epoch,
        };
        let prefix = self.prefix;
        let parent_ends: Vec<usize> = prefix
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| i + 1)
            .filter(|&end| end < prefix.len())
            .collect();
        let skip = parent_ends.len().saturating_sub(self.opts.parents);
        for (i, &end) in parent_ends.iter().enumerate() {
            let meta = if i >= skip {
                meta
            } else {
                let path = String::from_utf8_lossy(&prefix[..end - 1]).into_owned();
                match self.opts.base_dirs.get(&path) {
                    Some(d) => EntryMeta {
                        mode: d.mode & 0o7777,
                        uid: d.uid,
                        gid: d.gid,
                        mtime: self.opts.source_date_epoch,
                    },
                    None => continue,
                }
            };
            self.tar
                .append_dir(&prefix[..end], &meta)
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    fn append(&mut self, entry: &WalkEntry) -> Result<(), LayerError> {
        let mut name = self.prefix.to_vec();
        name.extend_from_slice(&entry.rel);
        let meta = EntryMeta {
            mode: entry.meta.mode() & KEPT_MODE_BITS,
            uid: self.opts.uid,
            gid: self.opts.gid,
            // Times before 1970 become 0 rather than wrapping.
            mtime: u64::try_from(entry.meta.mtime())
                .unwrap_or(0)
                .min(self.opts.source_date_epoch),
        };
        let written = match entry.kind {
            Kind::Dir => {
                if name.is_empty() {
                    return Ok(()); // prefix `/`: the image root is the base image's
                }
                if !entry.rel.is_empty() {
                    name.push(b'/');
                }
                self.tar.append_dir(&name, &meta)
            }
            Kind::Symlink => {
                let target = fs::read_link(&entry.abs).map_err(|source| LayerError::ReadLink {
                    path: entry.abs.clone(),
                    source,
                })?;
                self.tar
                    .append_symlink(&name, target.as_os_str().as_bytes(), &meta)
            }
            Kind::File => return self.append_file(entry, name, &meta),
        };
        written.map_err(|e| self.write_error(e))
    }

    fn append_file(
        &mut self,
        entry: &WalkEntry,
        name: Vec<u8>,
        meta: &EntryMeta,
    ) -> Result<(), LayerError> {
        if entry.meta.nlink() > 1 {
            let key = (entry.meta.dev(), entry.meta.ino());
            if let Some(first) = self.first_links.get(&key) {
                return self
                    .tar
                    .append_hardlink(&name, first, meta)
                    .map_err(|e| self.write_error(e));
            }
            self.first_links.insert(key, name.clone());
        }
        let read_error = |source| LayerError::ReadFile {
            path: entry.abs.clone(),
            source,
        };
        let mut file = File::open(&entry.abs).map_err(read_error)?;
        self.tar
            .append_file(&name, entry.meta.len(), &mut file, meta)
            .map_err(|e| match e {
                CopyError::Read(source) => read_error(source),
                CopyError::Write(source) => self.write_error(source),
                CopyError::SizeChanged { expected } => LayerError::FileChanged {
                    path: entry.abs.clone(),
                    expected,
                },
            })
    }
}

#[cfg(test)]
mod tests;
