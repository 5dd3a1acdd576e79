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
    use sha2::Digest;
    let mut f = open_regular(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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
                    let meta = std::fs::symlink_metadata(&out)?;
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
}
