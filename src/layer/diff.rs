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

/// The entries of a layer blob: gzip or zstd by its media type (`+zstd`, `gzip`), else
/// a plain tar.
pub fn entries(blob: impl Read, media_type: &str) -> io::Result<Vec<Entry>> {
    let reader: Box<dyn Read + '_> = if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(blob)?)
    } else if media_type.ends_with("gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular => "file",
            tar::EntryType::Directory => "directory",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hard link",
            _ => "special file",
        };
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let (mode, uid, gid, mtime) = (
            header.mode()?,
            header.uid()?,
            header.gid()?,
            header.mtime()?,
        );
        let size = entry.size();
        let sha256 = if kind == "file" {
            Some(
                crate::model::Digest::of_reader(&mut entry)?
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
    }
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
}
