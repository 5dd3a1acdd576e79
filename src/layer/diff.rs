//! Reading a layer back, to say where two layers that should be the same bytes differ
//! (`venvimg verify`): the first entry whose name, kind, mode, owner, size, link target or
//! content differs, or the first entry only one of them has.

use std::io::{self, Read};

/// What a layer's tar says of one entry; two equal lists make equal tars (venvimg's
/// writer fixes everything else: order, mtimes, header format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub link: Option<String>,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
}

/// What venvimg reads of a layer it did not write (a registry's, an archive's), at most:
/// past any of these the read stops with a [`Refused`] error.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Bytes after decompression (the tar itself).
    pub decompressed: u64,
    /// Entries of the tar.
    pub entries: u64,
    /// Bytes of one GNU long name / long link or PAX extended header (a path is at most
    /// 4096 bytes on Linux).
    pub extension: u64,
}

/// The caps of every layer and archive venvimg reads back.
pub const CAPS: Caps = Caps {
    decompressed: 16 << 30,
    entries: 2_000_000,
    extension: 64 << 10,
};

/// A layer refused by a cap: what was too big.
#[derive(Debug, thiserror::Error)]
#[error("{what}, more than the {cap} venvimg reads; refused")]
pub struct Refused {
    pub what: String,
    pub cap: u64,
}

fn refused(what: String, cap: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Refused { what, cap })
}

/// The cap `e` hit, if it is a [`Refused`] error.
pub fn as_refused(e: &io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|e| e.downcast_ref::<Refused>())
}

/// A reader that fails past `cap` bytes.
pub struct Bounded<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(refused(
                "the layer decompresses to more bytes".to_string(),
                self.cap,
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The value of `key` in PAX extended header records (`LEN KEY=VALUE\n`).
fn pax_value(data: &[u8], key: &str) -> Option<Vec<u8>> {
    let mut rest = data;
    let mut found = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return found;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            if &record[..eq] == key.as_bytes() {
                found = Some(record[eq + 1..].to_vec());
            }
        }
        rest = &rest[len..];
    }
    found
}

/// What [`each_entry`] calls with each entry, its full path and its link target.
pub type EachEntry<'a, R> =
    dyn FnMut(&mut tar::Entry<'_, Bounded<R>>, String, Option<String>) -> io::Result<()> + 'a;

/// Every entry of the tar `reader` yields, with GNU long names and PAX paths applied
/// by hand (the tar crate would read them whole into memory, whatever their size), and
/// `caps` enforced: `each` sees each entry with its full path and link target.
pub fn each_entry<R: Read>(reader: R, caps: Caps, each: &mut EachEntry<'_, R>) -> io::Result<()> {
    let mut archive = tar::Archive::new(Bounded {
        inner: reader,
        left: caps.decompressed,
        cap: caps.decompressed,
    });
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<u8>> = None;
    let mut count = 0u64;
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let t = entry.header().entry_type();
        let extension = t.is_gnu_longname() || t.is_gnu_longlink() || t.is_pax_local_extensions();
        if extension || t.is_pax_global_extensions() {
            let size = entry.size();
            if size > caps.extension {
                let what = if t.is_gnu_longname() {
                    "a GNU long name"
                } else if t.is_gnu_longlink() {
                    "a GNU long link name"
                } else {
                    "a PAX extended header"
                };
                return Err(refused(format!("{what} of {size} bytes"), caps.extension));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data)?;
            if t.is_gnu_longname() {
                long_name = Some(data);
            } else if t.is_gnu_longlink() {
                long_link = Some(data);
            } else if t.is_pax_local_extensions() {
                pax = Some(data);
            }
            continue;
        }
        count += 1;
        if count > caps.entries {
            return Err(refused(
                format!("more than {} entries", caps.entries),
                caps.entries,
            ));
        }
        let trim = |mut b: Vec<u8>| {
            while b.last() == Some(&0) {
                b.pop();
            }
            String::from_utf8_lossy(&b).into_owned()
        };
        let pax_data = pax.take();
        let path = pax_data
            .as_deref()
            .and_then(|p| pax_value(p, "path"))
            .or(long_name.take())
            .map(trim)
            .unwrap_or_else(|| String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        let link = pax_data
            .as_deref()
            .and_then(|p| pax_value(p, "linkpath"))
            .or(long_link.take())
            .map(trim)
            .or_else(|| {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
            });
        long_name = None;
        long_link = None;
        each(&mut entry, path, link)?;
    }
    Ok(())
}

/// A layer blob's tar stream: gzip or zstd by its media type (`+zstd`, `gzip`), else
/// a plain tar.
pub fn decompressed<'a>(blob: impl Read + 'a, media_type: &str) -> io::Result<Box<dyn Read + 'a>> {
    Ok(if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(blob)?)
    } else if media_type.ends_with("gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    })
}

/// The entries of a layer blob (see [`decompressed`]), within [`CAPS`].
pub fn entries(blob: impl Read, media_type: &str) -> io::Result<Vec<Entry>> {
    let reader = decompressed(blob, media_type)?;
    let mut out = Vec::new();
    each_entry(reader, CAPS, &mut |entry, path, link| {
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular => "file",
            tar::EntryType::Directory => "directory",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hard link",
            _ => "special file",
        };
        let (mode, uid, gid, mtime) = (
            header.mode()?,
            header.uid()?,
            header.gid()?,
            header.mtime()?,
        );
        let size = entry.size();
        let sha256 = if kind == "file" {
            Some(
                crate::model::Digest::of_reader(&mut *entry)?
                    .hex()
                    .to_string(),
            )
        } else {
            None
        };
        out.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            size,
            link,
            sha256,
        });
        Ok(())
    })?;
    Ok(out)
}

/// The first place `ours` and `theirs` differ, in words; None when the lists are equal.
pub fn first_difference(ours: &[Entry], theirs: &[Entry]) -> Option<String> {
    for (a, b) in ours.iter().zip(theirs) {
        if a == b {
            continue;
        }
        if a.path != b.path {
            return Some(format!(
                "entry `{}` (rebuilt) where the registry's layer has `{}`",
                a.path, b.path
            ));
        }
        let what = if a.kind != b.kind {
            format!("a {} here, a {} in the registry's layer", a.kind, b.kind)
        } else if a.sha256 != b.sha256 {
            format!(
                "its content differs ({} bytes, sha256 {} rebuilt; {} bytes, sha256 {} in the registry's layer)",
                a.size,
                short(a.sha256.as_deref()),
                b.size,
                short(b.sha256.as_deref())
            )
        } else if a.link != b.link {
            format!(
                "it links to {} rebuilt, to {} in the registry's layer",
                a.link.as_deref().unwrap_or("-"),
                b.link.as_deref().unwrap_or("-")
            )
        } else if a.mode != b.mode {
            format!(
                "mode {:o} rebuilt, {:o} in the registry's layer",
                a.mode, b.mode
            )
        } else if (a.uid, a.gid) != (b.uid, b.gid) {
            format!(
                "owner {}:{} rebuilt, {}:{} in the registry's layer",
                a.uid, a.gid, b.uid, b.gid
            )
        } else {
            format!(
                "mtime {} rebuilt, {} in the registry's layer",
                a.mtime, b.mtime
            )
        };
        return Some(format!("`{}`: {what}", a.path));
    }
    match ours.len().cmp(&theirs.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "`{}` is only in the rebuilt layer",
            ours[theirs.len()].path
        )),
        std::cmp::Ordering::Less => Some(format!(
            "`{}` is only in the registry's layer",
            theirs[ours.len()].path
        )),
    }
}

fn short(h: Option<&str>) -> &str {
    h.map_or("-", |h| &h[..h.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn names_the_first_file_whose_content_differs_and_one_only_one_side_has() {
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let a = entries(&gz(&tar_of(&[("a", b"1"), ("b", b"2")]))[..], gzip).unwrap();
        let same = entries(
            &zstd::encode_all(&tar_of(&[("a", b"1"), ("b", b"2")])[..], 3).unwrap()[..],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        )
        .unwrap();
        assert_eq!(first_difference(&a, &same), None);
        let b = entries(&gz(&tar_of(&[("a", b"1"), ("b", b"X")]))[..], gzip).unwrap();
        let d = first_difference(&a, &b).unwrap();
        assert!(d.starts_with("`b`: its content differs"), "{d}");
        let c = entries(
            &gz(&tar_of(&[("a", b"1"), ("b", b"2"), ("c", b"")]))[..],
            gzip,
        )
        .unwrap();
        assert_eq!(
            first_difference(&a, &c).unwrap(),
            "`c` is only in the registry's layer"
        );
        assert!(entries(&b"not a layer"[..], gzip).is_err());
    }

    #[test]
    fn long_names_are_applied_and_capped() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = entries(&tar[..], "application/vnd.oci.image.layer.v1.tar").unwrap();
        assert_eq!(e[0].path, long);

        // A GNU long-name header claiming 1 GiB: refused from its header, nothing read.
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(1 << 30);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[b'a'; 4096]);
        let err = entries(&tar[..], "application/vnd.oci.image.layer.v1.tar").unwrap_err();
        let r = as_refused(&err).expect("a cap");
        assert!(
            r.what.contains("GNU long name of 1073741824 bytes"),
            "{err}"
        );
    }
}
