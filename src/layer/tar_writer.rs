//! A minimal tar writer that owns every byte of every header.
//!
//! We write the headers ourselves instead of using the `tar` crate's `Builder` because the
//! layer digest is a promise: a crate bump must not change a single byte, and the
//! `Builder` drops the trailing `/` of directory names and fills fields we don't want.
//!
//! Format: GNU tar headers (magic `"ustar  \0"`, the format GNU tar, Go's `archive/tar`,
//! bsdtar, Python's `tarfile`, containerd and podman all read), with GNU `././@LongLink`
//! entries (`L` for names, `K` for link targets) for anything longer than 100 bytes —
//! byte for byte what `tar --format=gnu` writes. The GNU atime/ctime/offset/sparse fields
//! are left empty (NUL), so no access or change time and no sparse map is ever recorded.
//! Numbers are zero-padded octal; values that don't fit (files of 8 GiB and more, uids
//! above 2097151) use the GNU base-256 encoding.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const LONG_LINK_NAME: &[u8] = b"././@LongLink";

const TYPE_REGULAR: u8 = b'0';
const TYPE_HARDLINK: u8 = b'1';
const TYPE_SYMLINK: u8 = b'2';
const TYPE_DIR: u8 = b'5';
const TYPE_GNU_LONGNAME: u8 = b'L';
const TYPE_GNU_LONGLINK: u8 = b'K';

/// The per-entry fields we record; everything else in a header is fixed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryMeta {
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
}

/// Why copying a file's content into the archive failed: reading the source and writing
/// the archive are reported differently (the source path vs the output).
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// The file is not `expected` bytes long any more (it changed while being packed).
    SizeChanged {
        expected: u64,
    },
}

pub(crate) struct TarWriter<W> {
    out: W,
    copy_buf: Vec<u8>,
    entries: u64,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            // Large enough that reading big files costs few syscalls, small enough to
            // keep memory bounded.
            copy_buf: vec![0; 256 * 1024],
            entries: 0,
        }
    }

    /// Number of entries written, not counting the `././@LongLink` helper entries.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// `name` must end with `/`.
    pub(crate) fn append_dir(&mut self, name: &[u8], meta: &EntryMeta) -> io::Result<()> {
        debug_assert!(name.ends_with(b"/"));
        self.append_header(name, b"", TYPE_DIR, 0, meta)
    }

    pub(crate) fn append_symlink(
        &mut self,
        name: &[u8],
        target: &[u8],
        meta: &EntryMeta,
    ) -> io::Result<()> {
        self.append_header(name, target, TYPE_SYMLINK, 0, meta)
    }

    /// `target` is the archive name of the entry this one is a hardlink to.
    pub(crate) fn append_hardlink(
        &mut self,
        name: &[u8],
        target: &[u8],
        meta: &EntryMeta,
    ) -> io::Result<()> {
        self.append_header(name, target, TYPE_HARDLINK, 0, meta)
    }

    /// Appends a regular file of `size` bytes read from `content`, which must hold
    /// exactly that many (a file that grew or shrank since it was stat'ed is an error:
    /// the header already promised the size).
    pub(crate) fn append_file(
        &mut self,
        name: &[u8],
        size: u64,
        content: &mut dyn Read,
        meta: &EntryMeta,
    ) -> Result<(), CopyError> {
        self.append_header(name, b"", TYPE_REGULAR, size, meta)
            .map_err(CopyError::Write)?;
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.copy_buf.len() as u64) as usize;
            let n = match content.read(&mut self.copy_buf[..want]) {
                Ok(0) => return Err(CopyError::SizeChanged { expected: size }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.out
                .write_all(&self.copy_buf[..n])
                .map_err(CopyError::Write)?;
            remaining -= n as u64;
        }
        // One more read tells a file that grew apart from one that is exactly as long.
        loop {
            match content.read(&mut self.copy_buf[..1]) {
                Ok(0) => break,
                Ok(_) => return Err(CopyError::SizeChanged { expected: size }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        self.pad(size).map_err(CopyError::Write)
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the writer. No
    /// padding to a 10 KiB record: readers don't need it and it only costs bytes.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        Ok(self.out)
    }

    fn append_header(
        &mut self,
        name: &[u8],
        link: &[u8],
        typeflag: u8,
        size: u64,
        meta: &EntryMeta,
    ) -> io::Result<()> {
        if name.len() > NAME_LEN {
            self.append_long_link(TYPE_GNU_LONGNAME, name)?;
        }
        if link.len() > NAME_LEN {
            self.append_long_link(TYPE_GNU_LONGLINK, link)?;
        }
        let header = header_block(name, link, typeflag, size, meta);
        self.out.write_all(&header)?;
        self.entries += 1;
        Ok(())
    }

    /// A GNU `././@LongLink` entry carrying the full `value` (NUL-terminated) for the
    /// header that follows; its fields are those GNU tar writes with `--numeric-owner`.
    fn append_long_link(&mut self, typeflag: u8, value: &[u8]) -> io::Result<()> {
        let size = value.len() as u64 + 1;
        let meta = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        let header = header_block(LONG_LINK_NAME, b"", typeflag, size, &meta);
        self.out.write_all(&header)?;
        self.out.write_all(value)?;
        self.out.write_all(&[0])?;
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

/// One 512-byte GNU header. Names longer than the 100-byte fields are truncated here;
/// the preceding `././@LongLink` entry carries them in full.
fn header_block(
    name: &[u8],
    link: &[u8],
    typeflag: u8,
    size: u64,
    meta: &EntryMeta,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    copy_truncated(&mut h[0..100], name);
    write_number(&mut h[100..108], u64::from(meta.mode));
    write_number(&mut h[108..116], meta.uid);
    write_number(&mut h[116..124], meta.gid);
    write_number(&mut h[124..136], size);
    write_number(&mut h[136..148], meta.mtime);
    h[156] = typeflag;
    copy_truncated(&mut h[157..257], link);
    h[257..265].copy_from_slice(b"ustar  \0");
    // uname/gname (265..329) stay empty: owners are numeric only.
    // Device numbers are written as explicit zeros so that every reader (including
    // strict ones that reject empty numeric fields) reports 0.
    write_number(&mut h[329..337], 0);
    write_number(&mut h[337..345], 0);
    // GNU atime/ctime/offset/longnames/sparse/realsize (345..512) stay empty.

    // The checksum is computed with its own field as eight spaces, then written as six
    // octal digits, NUL, space (the historical layout every reader accepts).
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(digits.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal followed by NUL when it fits, GNU base-256 otherwise.
fn write_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits * 3 >= 64 || value < (1u64 << (digits * 3)) {
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        // Big-endian two's complement with the top bit of the first byte set.
        field.fill(0);
        let bytes = value.to_be_bytes();
        let len = field.len();
        let take = bytes.len().min(len - 1);
        field[len - take..].copy_from_slice(&bytes[bytes.len() - take..]);
        field[0] |= 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        let mut f = [0u8; 8];
        write_number(&mut f, 0o644);
        assert_eq!(&f, b"0000644\0");
        let mut f = [0u8; 12];
        write_number(&mut f, 1);
        assert_eq!(&f, b"00000000001\0");
        let mut f = [0u8; 8];
        write_number(&mut f, 0o7777777 + 1);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0x20, 0, 0]);
        let mut f = [0u8; 12];
        write_number(&mut f, 1 << 40);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn header_matches_gnu_tar_layout() {
        let meta = EntryMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
        };
        let h = header_block(b"d/", b"", TYPE_DIR, 0, &meta);
        assert_eq!(&h[100..108], b"0000755\0");
        assert_eq!(&h[136..148], b"00000000001\0");
        assert_eq!(&h[257..265], b"ustar  \0");
        let header = tar::Header::from_byte_slice(&h);
        assert_eq!(header.cksum().unwrap(), {
            let mut sum = 0u32;
            for (i, b) in h.iter().enumerate() {
                sum += if (148..156).contains(&i) {
                    u32::from(b' ')
                } else {
                    u32::from(*b)
                };
            }
            sum
        });
    }
}
