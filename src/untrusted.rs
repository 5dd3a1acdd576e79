//! Reading what a build left behind, or what a layout or archive holds: data made by code
//! venvimg does not trust (a project's noxfile, its build backends, a registry). Only
//! regular files, never through a symlink, never more than a cap: a `METADATA` symlinked
//! to a host file, a FIFO or `/dev/zero` in a `dist-info` must fail, not leak or hang.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

/// Caps for the small text files venvimg reads from a venv and from its hook.
pub const SMALL_FILE: u64 = 1 << 20;
/// The hook's records of a plan or a build: commands, reads, exports of big locks.
pub const RECORDS: u64 = 64 << 20;

/// Open `path` for reading only if it is a regular file reached without following a
/// symlink in its last component (`O_NOFOLLOW`), and without blocking on a FIFO.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file (a FIFO, device or directory); refusing to read it",
        ));
    }
    Ok(f)
}

/// Read at most `cap` bytes of a regular file; a bigger file is an error, not a
/// truncation (a truncated METADATA or record would be silently wrong).
pub fn read(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > cap {
        return Err(too_big(len, cap));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64, cap));
    }
    Ok(buf)
}

/// sha256 (hex) of a regular file, streamed: for files of any size.
pub fn sha256(path: &Path) -> io::Result<String> {
    let digest = crate::model::Digest::of_reader(open_regular(path)?)?;
    Ok(digest.hex().to_string())
}

/// [`read`] as UTF-8 text (lossy: names and versions in METADATA are ASCII in practice).
pub fn read_text(path: &Path, cap: u64) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&read(path, cap)?).into_owned())
}

fn too_big(len: u64, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{len} bytes, more than the {cap} venvimg reads from untrusted output"),
    )
}

/// `rel` joined under `root` only if no component of it leaves `root` (`..`, an absolute
/// path) and no directory on the way is a symlink: a path taken from untrusted data never
/// reads outside the folder it names.
pub fn join_inside(root: &Path, rel: &Path) -> io::Result<std::path::PathBuf> {
    let mut out = root.to_path_buf();
    let comps: Vec<Component> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        match c {
            Component::Normal(n) => {
                out.push(n);
                let last = i + 1 == comps.len();
                if !last {
                    let meta = fs_err::symlink_metadata(&out)?;
                    if !meta.file_type().is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is not a directory (a symlink?)", out.display()),
                        ));
                    }
                }
            }
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} leaves the folder it must stay in", rel.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// What a RECORD (the list of a distribution's files) may weigh: the biggest real ones
/// (thousands of files) are a few MiB.
pub const DIST_RECORD: u64 = 16 << 20;
/// What a `METADATA` may weigh: headers plus the long description, which some projects
/// fill with their whole changelog.
pub const DIST_METADATA: u64 = 16 << 20;

/// Why a file of untrusted output was not read. The message follows the file's name:
/// "…/METADATA is a symlink; refusing to read it".
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("is a symlink; refusing to read it")]
    Symlink,
    #[error("is a {0}, not a regular file; refusing to read it")]
    NotRegular(&'static str),
    #[error("is a {0}, not a directory; refusing to read it")]
    NotDirectory(&'static str),
    #[error("is {len} bytes, more than the {cap} venvimg accepts there; refusing to read it")]
    TooBig { len: u64, cap: u64 },
    #[error("was replaced while venvimg opened it; refusing to read it")]
    Changed,
    #[error("line {line} names `{}`, a path outside the {within}; refusing it", shown(.target))]
    Escapes {
        line: usize,
        target: String,
        within: &'static str,
    },
    #[error("does not exist")]
    Missing,
    #[error("cannot be read: {0}")]
    Io(io::Error),
}

/// A refused file, named relative to the folder the message is about (a venv, a layout).
#[derive(Debug, thiserror::Error)]
#[error("{} {reason}", shown(&.path.to_string_lossy()))]
pub struct Refused {
    pub path: std::path::PathBuf,
    pub reason: Refusal,
}

/// Untrusted text (a file name, a line of a RECORD) as a message may show it: control
/// characters escaped, at most 200 characters.
pub fn shown(text: &str) -> String {
    const MAX: usize = 200;
    let cut: String = text.chars().take(MAX).collect();
    let mut out = escaped(&cut);
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): whatever it holds, printed it
/// stays on its line, so it can not start a line a CI runner executes as a workflow
/// command (`::add-mask::`...) nor move the terminal's cursor.
pub fn escaped(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// What kind of thing a file type is, for messages.
pub fn kind_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_file() {
        "regular file"
    } else {
        "file of unknown type"
    }
}

fn refusal_of(e: io::Error) -> Refusal {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => Refusal::Missing,
        (_, Some(libc::ELOOP)) => Refusal::Symlink,
        _ => Refusal::Io(e),
    }
}

/// The type of `path` itself (never what a symlink points at), as a refusal when it is
/// not a regular file. Nothing is opened: a FIFO or a device is never touched.
pub fn check_regular(path: &Path) -> Result<std::fs::Metadata, Refusal> {
    let meta = fs_err::symlink_metadata(path).map_err(refusal_of)?;
    let t = meta.file_type();
    if t.is_symlink() {
        return Err(Refusal::Symlink);
    }
    if !t.is_file() {
        return Err(Refusal::NotRegular(kind_name(&t)));
    }
    Ok(meta)
}

/// `path` is a directory itself, not a symlink to one.
pub fn check_dir(path: &Path) -> Result<(), Refusal> {
    let t = fs_err::symlink_metadata(path)
        .map_err(refusal_of)?
        .file_type();
    if t.is_symlink() {
        return Err(Refusal::Symlink);
    }
    if !t.is_dir() {
        return Err(Refusal::NotDirectory(kind_name(&t)));
    }
    Ok(())
}

/// [`read`] with a reason a message can name, and stricter: the type is checked before
/// anything is opened (a device in a build's output is never even opened), and the file
/// opened must be the one checked.
pub fn read_checked(path: &Path, cap: u64) -> Result<Vec<u8>, Refusal> {
    use std::os::unix::fs::MetadataExt;
    let before = check_regular(path)?;
    if before.len() > cap {
        return Err(Refusal::TooBig {
            len: before.len(),
            cap,
        });
    }
    let f = open_regular(path).map_err(refusal_of)?;
    let meta = f.metadata().map_err(Refusal::Io)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(Refusal::Changed);
    }
    let mut buf = Vec::with_capacity(meta.len().min(cap) as usize);
    f.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(Refusal::Io)?;
    if buf.len() as u64 > cap {
        return Err(Refusal::TooBig {
            len: buf.len() as u64,
            cap,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_fifos_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("ok");
        std::fs::write(&ok, "fine").unwrap();
        assert_eq!(read_text(&ok, 10).unwrap(), "fine");
        assert!(read(&ok, 3).is_err(), "over the cap is an error");

        let link = d.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(read(&link, 1 << 20).is_err(), "a symlink is not followed");

        let fifo = d.path().join("fifo");
        let st = std::process::Command::new("mkfifo").arg(&fifo).status();
        if st.map(|s| s.success()).unwrap_or(false) {
            assert!(
                read(&fifo, 10).is_err(),
                "a FIFO is refused without blocking"
            );
        }
        assert!(read(Path::new("/dev/zero"), 10).is_err());
    }

    #[test]
    fn join_inside_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("up")).unwrap();
        assert!(join_inside(d.path(), Path::new("a/x")).is_ok());
        assert!(join_inside(d.path(), Path::new("../x")).is_err());
        assert!(join_inside(d.path(), Path::new("/etc/passwd")).is_err());
        assert!(join_inside(d.path(), Path::new("up/passwd")).is_err());
    }

    #[test]
    fn read_checked_names_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("ok");
        std::fs::write(&ok, "fine").unwrap();
        assert_eq!(read_checked(&ok, 4).unwrap(), b"fine");
        let msg = |p: &Path, cap| read_checked(p, cap).unwrap_err().to_string();
        assert_eq!(
            msg(&ok, 3),
            "is 4 bytes, more than the 3 venvimg accepts there; refusing to read it"
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert_eq!(msg(&link, 1 << 20), "is a symlink; refusing to read it");
        assert_eq!(
            msg(Path::new("/dev/zero"), 1 << 20),
            "is a character device, not a regular file; refusing to read it"
        );
        assert_eq!(
            msg(d.path(), 1 << 20),
            "is a directory, not a regular file; refusing to read it"
        );
        assert!(matches!(
            read_checked(&d.path().join("none"), 1),
            Err(Refusal::Missing)
        ));
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        assert_eq!(
            msg(&fifo, 10),
            "is a FIFO, not a regular file; refusing to read it"
        );
        assert!(check_dir(d.path()).is_ok());
        assert_eq!(shown("a\x1b[31mb\n"), "a\\u{1b}[31mb\\n");
        assert_eq!(shown(&"x".repeat(300)).chars().count(), 201);
        assert!(matches!(check_dir(&link), Err(Refusal::Symlink)));
        assert!(matches!(check_dir(&ok), Err(Refusal::NotDirectory(_))));
    }
}
