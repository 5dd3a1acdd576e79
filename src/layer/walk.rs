//! A deterministic, streaming walk of a directory tree.
//!
//! Order: every emitted entry's archive name (directories with their trailing `/`) is
//! strictly greater, bytewise, than the one before — so the layer doesn't depend on the
//! order `readdir` happens to return. Sorting siblings by `name` for files and `name/`
//! for directories, and descending into a directory right after its own entry, gives
//! exactly that order without collecting the whole tree first: memory grows with the
//! width of the directories on the current path, not with the size of the tree.
//!
//! Symlinks are never followed (a venv's `bin/python` must stay a symlink, even when its
//! target only exists inside the build container).

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;

use fs_err as fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::layer::LayerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of the tree, as handed to the visitor.
pub(crate) struct WalkEntry {
    /// Path relative to the root, `/`-separated, without a trailing `/`; empty for the root.
    pub(crate) rel: Vec<u8>,
    /// Path on the host, for reading content and link targets and for error messages.
    pub(crate) abs: PathBuf,
    /// `lstat` of the entry.
    pub(crate) meta: Metadata,
    pub(crate) kind: Kind,
}

struct Child {
    name: OsString,
    sort_key: Vec<u8>,
    meta: Metadata,
    kind: Result<Kind, &'static str>,
}

struct Frame {
    entry: WalkEntry,
    /// Whether the directory's own entry went out already (see `walk`).
    emitted: bool,
    children: std::vec::IntoIter<Child>,
}

/// Walks `root` and calls `visit` for each entry to put in the layer, in archive order.
///
/// The root is always visited. Any other entry is visited when `keep(relative path)`
/// says so, and a directory is also visited — just before the first kept entry under
/// it — when something below it is kept, so a subset layer still creates its parents.
/// `keep` is asked about every entry, directories included; a directory it rejects is
/// still walked.
///
/// Sockets, FIFOs and devices are errors if `keep` accepts them.
pub(crate) fn walk(
    root: &Path,
    keep: &dyn Fn(&Path) -> bool,
    visit: &mut dyn FnMut(&WalkEntry) -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    // The root itself may be given through a symlink (like `tar -C`); nothing below it is
    // followed.
    let meta = fs::metadata(root).map_err(|source| LayerError::Metadata {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(LayerError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let root_entry = WalkEntry {
        rel: Vec::new(),
        abs: root.to_path_buf(),
        meta,
        kind: Kind::Dir,
    };
    visit(&root_entry)?;
    let children = read_sorted(root)?.into_iter();
    let mut stack = vec![Frame {
        entry: root_entry,
        emitted: true,
        children,
    }];

    while let Some(top) = stack.last_mut() {
        let Some(child) = top.children.next() else {
            stack.pop();
            continue;
        };
        let mut rel = top.entry.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(child.name.as_bytes());
        let abs = top.entry.abs.join(&child.name);
        let kept = keep(Path::new(OsStr::from_bytes(&rel)));
        let kind = match child.kind {
            Ok(kind) => kind,
            Err(kind) if kept => return Err(LayerError::UnsupportedFileType { path: abs, kind }),
            Err(_) => continue,
        };
        let entry = WalkEntry {
            rel,
            abs,
            meta: child.meta,
            kind,
        };
        if kept {
            // Parents first: those not emitted yet were rejected by `keep` but are needed
            // now. They sort before this entry and after everything emitted so far.
            for frame in stack.iter_mut().filter(|f| !f.emitted) {
                visit(&frame.entry)?;
                frame.emitted = true;
            }
            visit(&entry)?;
        }
        if kind == Kind::Dir {
            let children = read_sorted(&entry.abs)?.into_iter();
            stack.push(Frame {
                entry,
                emitted: kept,
                children,
            });
        }
    }
    Ok(())
}

/// Reads a directory's entries with their `lstat`, sorted in archive order.
fn read_sorted(dir: &Path) -> Result<Vec<Child>, LayerError> {
    let read_dir_error = |source| LayerError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut children = Vec::new();
    for dirent in fs::read_dir(dir).map_err(read_dir_error)? {
        let dirent = dirent.map_err(read_dir_error)?;
        // `DirEntry::metadata` does not follow symlinks.
        let meta = dirent.metadata().map_err(|source| LayerError::Metadata {
            path: dirent.path(),
            source,
        })?;
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            Ok(Kind::Dir)
        } else if file_type.is_file() {
            Ok(Kind::File)
        } else if file_type.is_symlink() {
            Ok(Kind::Symlink)
        } else if file_type.is_socket() {
            Err("socket")
        } else if file_type.is_fifo() {
            Err("FIFO")
        } else if file_type.is_block_device() {
            Err("block device")
        } else if file_type.is_char_device() {
            Err("character device")
        } else {
            Err("unknown file type")
        };
        let name = dirent.file_name();
        let mut sort_key = name.clone().into_vec();
        if kind == Ok(Kind::Dir) {
            sort_key.push(b'/');
        }
        children.push(Child {
            name,
            sort_key,
            meta,
            kind,
        });
    }
    children.sort_unstable_by(|a, b| a.sort_key.cmp(&b.sort_key));
    Ok(children)
}
