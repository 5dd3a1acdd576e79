use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::layer::{
    pack_tree, pack_tree_filtered, pack_with_block_size, BaseDir, Compression, LayerError,
    PackOptions, PackedLayer, BLOCK_SIZE, DEFAULT_SOURCE_DATE_EPOCH,
};
use crate::model::Digest;

const PREFIX: &str = "/opt/nox/tests-3-12";
const ROOT: &str = "opt/nox/tests-3-12/";

/// The golden digests: the layer bytes for `golden_tree()` with `golden_options()`.
/// If one changes, the layer format changed (tar headers, entry order, compressor,
/// compressor version or block size): every layer ever pushed would get a new digest,
/// so bump the layer-format version in the keys when you update these.
const GOLDEN_GZIP_DIGEST: &str =
    "sha256:256d8870e03aa5564623acdcc1dc94d1a8ab3701a96eb109c90c7c85f8c804b0";
const GOLDEN_ZSTD_DIGEST: &str =
    "sha256:77d463f1e84d575e41d2f72b2377a497c2d74ef21e840829dc731f9b4c04cbc0";
const GOLDEN_DIFF_ID: &str =
    "sha256:5e49444f8fcbad2757d895542859705e6773df3b7a6b91aa17f71aa93398fed1";

/// `golden_tree()` plus `lib/big.so` (`BLOCK_SIZE + 4321` bytes of `write_words`, seed 9),
/// gzip: see `system_tools_read_the_layers`.
const GOLDEN_TWO_BLOCK_GZIP_DIGEST: &str =
    "sha256:d5f2cc9dfcc687d96910fa0f8099eacb66556c52996828ec4e1193513dcdf35a";

/// An mtime before `DEFAULT_SOURCE_DATE_EPOCH`, which must be kept as is (1979-07-05).
const OLD_MTIME: u64 = 300_000_000;

const LONG_DIST_INFO: &str = "lib/python3.11/site-packages/a_distribution_with_a_rather_long_name_for_testing-1.0.0.dist-info";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layer-tree")
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the mtime of a file or directory (not of a symlink: std can't, and a symlink's
/// own mtime is its creation time, later than any clamp used here).
fn set_mtime(path: &Path, secs: u64) {
    let file = fs::File::open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// A "recent" time that differs from run to run (clamped away by the packer).
fn recent_time(salt: u64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    now.as_secs() - (u64::from(now.subsec_nanos()) + salt) % 86_400
}

/// Sets every file and directory under `dir` to `mtime`, `pyvenv.cfg` to `OLD_MTIME`.
fn set_all_mtimes(dir: &Path, mtime: u64) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            set_all_mtimes(&entry.path(), mtime);
        } else if ty.is_file() {
            set_mtime(&entry.path(), mtime);
        }
    }
    set_mtime(dir, mtime);
}

/// The fixture plus what git can't store: modes, symlinks, a hardlink, an empty directory,
/// a setuid/setgid bit to drop, an old mtime and random recent ones.
fn golden_tree(root: &Path) {
    copy_tree(&fixture_dir(), root);
    fs::create_dir(root.join("include")).unwrap();
    symlink("lib", root.join("lib64")).unwrap();
    // Dangling on most hosts: the target lives in the build container.
    symlink("/usr/bin/python3.11", root.join("bin/python")).unwrap();
    symlink("python", root.join("bin/python3")).unwrap();
    symlink("python", root.join("bin/python3.11")).unwrap();
    // `py.test` sorts before `pytest` ('.' < 't'): it is the first path of the inode.
    fs::hard_link(root.join("bin/pytest"), root.join("bin/py.test")).unwrap();
    // A link target longer than the 100-byte header field.
    symlink(
        format!("../../../../{LONG_DIST_INFO}/entry_points_and_more_long_names.txt"),
        root.join("lib/python3.11/site-packages/venvimg_fixture/entry_points.txt"),
    )
    .unwrap();
    set_modes(root);
    chmod(&root.join("bin/pytest"), 0o6755);
    set_all_mtimes(root, recent_time(0));
    set_mtime(&root.join("pyvenv.cfg"), OLD_MTIME);
}

/// 0755 for directories, 0644 for files, whatever the umask of the test process and the
/// modes git checked out.
fn set_modes(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        let path = entry.path();
        if ty.is_dir() {
            chmod(&path, 0o755);
            set_modes(&path);
        } else if ty.is_file() {
            chmod(&path, 0o644);
        }
    }
    chmod(dir, 0o755);
}

fn golden_options(compression: Compression) -> PackOptions {
    PackOptions {
        prefix: PREFIX.into(),
        source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
        uid: 0,
        gid: 0,
        compression,
        parents: 1,
        base_dirs: Default::default(),
        threads: 2,
    }
}

fn pack(src: &Path, opts: &PackOptions, out: &Path) -> PackedLayer {
    pack_tree(src, opts, out).unwrap_or_else(|e| panic!("packing {}: {e:?}", src.display()))
}

fn decompress(layer: &PackedLayer) -> Vec<u8> {
    let blob = fs::read(&layer.path).unwrap();
    let mut tar = Vec::new();
    match layer.compression {
        // GzDecoder reads a single gzip member: the whole layer must be one.
        Compression::Gzip => {
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut tar)
                .unwrap();
        }
        Compression::Zstd { .. } => tar = zstd::decode_all(&blob[..]).unwrap(),
    }
    tar
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    content: Vec<u8>,
}

/// Reads a layer back with the `tar` crate, checking the header fields that must be the
/// same for every entry on the way.
fn read_layer(layer: &PackedLayer) -> Vec<Entry> {
    let tar_bytes = decompress(layer);
    assert_eq!(tar_bytes.len() as u64, layer.uncompressed_size);
    assert_eq!(Digest::of(&tar_bytes), layer.diff_id);
    let blob = fs::read(&layer.path).unwrap();
    assert_eq!(blob.len() as u64, layer.size);
    assert_eq!(Digest::of(&blob), layer.digest);

    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
        assert_eq!(header.device_major().unwrap(), Some(0));
        assert_eq!(header.device_minor().unwrap(), Some(0));
        assert!(header.as_gnu().is_some(), "GNU headers");
        // GNU atime, ctime, offset, sparse map, realsize: all empty.
        assert!(
            header.as_bytes()[345..].iter().all(|&b| b == 0),
            "{:?}",
            entry.path()
        );
        assert!(!header.entry_type().is_gnu_sparse());
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.push(Entry {
            name,
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime: header.mtime().unwrap(),
            link,
            content,
        });
    }
    assert_eq!(entries.len() as u64, layer.entries);
    entries
}

fn by_name(entries: &[Entry]) -> BTreeMap<String, Entry> {
    entries
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect()
}

#[test]
fn golden_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    let gzip = pack(
        &tree,
        &golden_options(Compression::Gzip),
        &tmp.path().join("l.tar.gz"),
    );
    let zstd = pack(
        &tree,
        &golden_options(Compression::ZSTD),
        &tmp.path().join("l.tar.zst"),
    );
    eprintln!(
        "gzip digest {}\nzstd digest {}\ndiff_id {}",
        gzip.digest, zstd.digest, gzip.diff_id
    );
    assert_eq!(gzip.diff_id, zstd.diff_id);
    assert_eq!(gzip.diff_id, GOLDEN_DIFF_ID, "tar bytes changed");
    assert_eq!(gzip.digest, GOLDEN_GZIP_DIGEST, "gzip layer bytes changed");
    assert_eq!(zstd.digest, GOLDEN_ZSTD_DIGEST, "zstd layer bytes changed");
    assert_eq!(
        gzip.media_type(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        zstd.media_type(),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

/// `compression_level` reaches libzstd: other bytes, the same tar, the same bytes again.
#[test]
fn zstd_level_changes_the_bytes_not_the_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    let high = Compression::Zstd { level: 19 };
    let a = pack(&tree, &golden_options(high), &tmp.path().join("a.tar.zst"));
    let b = pack(&tree, &golden_options(high), &tmp.path().join("b.tar.zst"));
    let default = pack(
        &tree,
        &golden_options(Compression::ZSTD),
        &tmp.path().join("d.tar.zst"),
    );
    assert_eq!(a.digest, b.digest, "level 19 is reproducible");
    assert_ne!(a.digest, default.digest, "the level did not reach libzstd");
    assert_eq!(a.diff_id, default.diff_id);
    assert_eq!(decompress(&a), decompress(&default));
}

#[test]
fn layer_entries_are_normalised() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    let opts = PackOptions {
        uid: 1234,
        gid: 5678,
        ..golden_options(Compression::Gzip)
    };
    let layer = pack(&tree, &opts, &tmp.path().join("l.tar.gz"));
    let entries = read_layer(&layer);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();

    // Bytewise order of the archive names, so a dist-info directory (`-` is 0x2d)
    // comes before the package directory of the same name (`/` is 0x2f).
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted, "entries not strictly sorted by name");
    // The envdir is venvimg's; the base image's `opt/` above it is not overwritten.
    assert_eq!(&names[..2], ["opt/nox/", ROOT]);
    assert!(!names.contains(&"opt/"), "{names:?}");
    let site = format!("{ROOT}lib/python3.11/site-packages/");
    assert!(
        names
            .iter()
            .position(|n| *n == format!("{site}venvimg_fixture-1.0.0.dist-info/"))
            < names
                .iter()
                .position(|n| *n == format!("{site}venvimg_fixture/"))
    );

    for e in &entries {
        assert_eq!((e.uid, e.gid), (1234, 5678), "{}", e.name);
        assert!(!e.name.starts_with('/'), "{}", e.name);
        assert_eq!(
            e.name.ends_with('/'),
            e.kind == tar::EntryType::Directory,
            "{}",
            e.name
        );
        let expected_mtime = if e.name.ends_with("pyvenv.cfg") {
            OLD_MTIME
        } else {
            DEFAULT_SOURCE_DATE_EPOCH
        };
        assert_eq!(e.mtime, expected_mtime, "{}", e.name);
        assert_eq!(e.mode & 0o6000, 0, "setuid/setgid kept on {}", e.name);
    }

    let e = by_name(&entries);
    let entry = |rel: &str| {
        e.get(&format!("{ROOT}{rel}"))
            .unwrap_or_else(|| panic!("no {rel}"))
    };
    assert_eq!(e["opt/nox/"].mode, 0o755);
    assert_eq!(e[ROOT].mode, 0o755);
    assert_eq!(entry("include/").kind, tar::EntryType::Directory);

    let python = entry("bin/python");
    assert_eq!(python.kind, tar::EntryType::Symlink);
    assert_eq!(python.link.as_deref(), Some("/usr/bin/python3.11"));
    assert_eq!(python.mode, 0o777);
    assert_eq!(entry("bin/python3").link.as_deref(), Some("python"));
    assert_eq!(entry("lib64").kind, tar::EntryType::Symlink);

    let first = entry("bin/py.test");
    assert_eq!(first.kind, tar::EntryType::Regular);
    assert_eq!(first.mode, 0o755, "setuid/setgid dropped, rest kept");
    assert_eq!(first.content, fs::read(tree.join("bin/pytest")).unwrap());
    let second = entry("bin/pytest");
    assert_eq!(second.kind, tar::EntryType::Link);
    assert_eq!(second.link.as_deref(), Some(&*format!("{ROOT}bin/py.test")));
    assert!(second.content.is_empty());

    assert_eq!(entry("bin/activate").mode, 0o644);
    let long = entry(&format!(
        "{LONG_DIST_INFO}/entry_points_and_more_long_names.txt"
    ));
    assert!(long.name.len() > 100);
    assert!(long.content.starts_with(b"[console_scripts]"));
    let long_link = entry("lib/python3.11/site-packages/venvimg_fixture/entry_points.txt");
    assert!(long_link.link.as_ref().unwrap().len() > 100);
    assert!(long_link
        .link
        .as_ref()
        .unwrap()
        .ends_with("entry_points_and_more_long_names.txt"));

    // Everything in the tree is in the layer: 3 prefix dirs + root + the rest.
    let count = |ty: &str| {
        let out = Command::new("find")
            .arg(&tree)
            .args(["-mindepth", "1", "-type", ty])
            .output()
            .unwrap();
        out.stdout.iter().filter(|&&b| b == b'\n').count()
    };
    assert_eq!(entries.len(), 2 + count("d") + count("f") + count("l"));
}

#[test]
fn base_dirs_above_the_envdir_keep_the_bases_mode_and_owner() {
    // An envdir under /tmp: `tmp/` must come with 1777 and root (the base's), not 0755
    // and the configured owner, and every ancestor the base did not name stays out.
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    let mut opts = PackOptions {
        prefix: "/tmp/a/nox/tests-3-11".into(),
        uid: 1000,
        gid: 1000,
        ..golden_options(Compression::Gzip)
    };
    opts.base_dirs.insert(
        "tmp".into(),
        BaseDir {
            mode: 0o1777,
            uid: 0,
            gid: 0,
        },
    );
    let layer = pack(&tree, &opts, &tmp.path().join("l.tar.gz"));
    let entries = read_layer(&layer);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(&names[..3], ["tmp/", "tmp/a/nox/", "tmp/a/nox/tests-3-11/"]);
    let e = by_name(&entries);
    assert_eq!(
        (e["tmp/"].mode, e["tmp/"].uid, e["tmp/"].gid),
        (0o1777, 0, 0)
    );
    assert_eq!((e["tmp/a/nox/"].mode, e["tmp/a/nox/"].uid), (0o755, 1000));
}

#[test]
fn prefix_root_and_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/file"), "x").unwrap();
    let out = tmp.path().join("l.tar.gz");

    let opts = PackOptions::new("/");
    let names: Vec<String> = read_layer(&pack(&tree, &opts, &out))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["sub/", "sub/file"]);

    let opts = PackOptions::new("//opt//venv/");
    let names: Vec<String> = read_layer(&pack(&tree, &opts, &out))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["opt/", "opt/venv/", "opt/venv/sub/", "opt/venv/sub/file"]
    );

    for bad in ["opt/nox", "/opt/../etc", "/opt/./nox", ""] {
        let err = pack_tree(&tree, &PackOptions::new(bad), &out).unwrap_err();
        assert!(
            matches!(err, LayerError::InvalidPrefix { .. }),
            "{bad}: {err:?}"
        );
    }
    let err = pack_tree(&tree.join("sub/file"), &PackOptions::new("/x"), &out).unwrap_err();
    assert!(matches!(&err, LayerError::NotADirectory { path } if path.ends_with("sub/file")));
    assert!(!out.exists(), "a failed pack must not leave a blob behind");
}

/// Writes `len` bytes of pseudo-random words (compressible, not trivially).
fn write_words(path: &Path, len: usize, seed: u64) {
    let words = [
        "def", "self", "return", "import", "numpy", "(", ")", ":", "\n", "    ",
    ];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
        if state & 0x300 == 0 {
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(len);
    fs::write(path, out).unwrap();
}

#[test]
fn output_does_not_depend_on_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("lib")).unwrap();
    // Small blocks (the real size is covered by `system_tools_read_the_layers`).
    let block = 64 * 1024;
    write_words(&tree.join("lib/big.so"), 5 * block + 1000, 1);
    for i in 0..20 {
        write_words(
            &tree.join(format!("lib/mod{i}.py")),
            2_000 + i * 397,
            i as u64,
        );
    }
    for compression in [Compression::Gzip, Compression::ZSTD] {
        let mut blobs = Vec::new();
        for threads in [1, 2, 5] {
            let opts = PackOptions {
                threads,
                ..golden_options(compression)
            };
            let out = tmp.path().join(format!("l-{threads}"));
            let layer = pack_with_block_size(&tree, &opts, &out, &|_| true, block).unwrap();
            assert!(layer.uncompressed_size > 6 * block as u64);
            read_layer(&layer);
            blobs.push(fs::read(&out).unwrap());
        }
        assert!(
            blobs.windows(2).all(|w| w[0] == w[1]),
            "{compression:?} bytes depend on threads"
        );
    }
}

/// What a test tree holds, independent of how it is created.
enum Spec {
    Dir,
    File(&'static str),
    Symlink(&'static str),
    Hardlink(&'static str),
}

fn repro_spec() -> Vec<(String, Spec, u32)> {
    let mut spec = vec![
        ("a".to_string(), Spec::Dir, 0o755),
        ("a/b".into(), Spec::File("b"), 0o644),
        ("a-b".into(), Spec::File("a-b"), 0o600),
        ("a.txt".into(), Spec::File("a.txt"), 0o664),
        ("bin".into(), Spec::Dir, 0o755),
        ("bin/tool".into(), Spec::File("#!/bin/sh\n"), 0o755),
        ("bin/tool2".into(), Spec::Hardlink("bin/tool"), 0o755),
        (
            "bin/python".into(),
            Spec::Symlink("/usr/local/bin/python3.12"),
            0,
        ),
        ("shared".into(), Spec::Dir, 0o2775),
        ("site".into(), Spec::Dir, 0o755),
    ];
    // Enough siblings that readdir's (hash) order and creation order differ.
    for i in 0..60 {
        spec.push((
            format!("site/m{:02}.py", (i * 37) % 60),
            Spec::File("print()\n"),
            0o644,
        ));
    }
    spec
}

fn create_in_process(root: &Path, spec: &[(String, Spec, u32)]) {
    fs::create_dir(root).unwrap();
    for (path, what, _) in spec {
        let p = root.join(path);
        match what {
            Spec::Dir => fs::create_dir(&p).unwrap(),
            Spec::File(content) => fs::write(&p, content).unwrap(),
            Spec::Symlink(target) => symlink(target, &p).unwrap(),
            Spec::Hardlink(to) => fs::hard_link(root.join(to), &p).unwrap(),
        }
    }
}

/// Creates the tree from a shell with another umask, in reverse order (directories
/// first, since children need them).
fn create_with_shell(root: &Path, spec: &[(String, Spec, u32)], umask: &str) {
    let staging = root.with_extension("staging");
    fs::create_dir(&staging).unwrap();
    let mut script = format!(
        "set -e\numask {umask}\nmkdir '{}'\ncd '{}'\n",
        root.display(),
        root.display()
    );
    for (path, what, _) in spec.iter().rev() {
        if let Spec::Dir = what {
            script += &format!("mkdir -p '{path}'\n");
        }
    }
    for (i, (path, what, _)) in spec.iter().enumerate().rev() {
        if let Spec::File(content) = what {
            let src = staging.join(i.to_string());
            fs::write(&src, content).unwrap();
            script += &format!("cat '{}' > '{path}'\n", src.display());
        }
    }
    for (path, what, _) in spec.iter().rev() {
        match what {
            Spec::Symlink(target) => script += &format!("ln -s '{target}' '{path}'\n"),
            Spec::Hardlink(to) => script += &format!("ln '{to}' '{path}'\n"),
            _ => {}
        }
    }
    let status = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(status.success());
}

fn apply_modes_and_mtimes(root: &Path, spec: &[(String, Spec, u32)], mtime: u64) {
    for (path, what, mode) in spec {
        if matches!(what, Spec::Dir | Spec::File(_)) {
            chmod(&root.join(path), *mode);
        }
    }
    chmod(root, 0o755);
    set_all_mtimes(root, mtime);
}

#[test]
fn same_content_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = repro_spec();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    create_in_process(&a, &spec);
    create_with_shell(&b, &spec, "077");
    apply_modes_and_mtimes(&a, &spec, recent_time(1));
    apply_modes_and_mtimes(&b, &spec, recent_time(2) - 3 * 86_400);
    // pyvenv.cfg-style old mtimes are kept, so they must be equal too: none here.

    for compression in [Compression::Gzip, Compression::ZSTD] {
        let la = pack(
            &a,
            &golden_options(compression),
            &tmp.path().join("a.layer"),
        );
        let lb = pack(
            &b,
            &golden_options(compression),
            &tmp.path().join("b.layer"),
        );
        assert_eq!(la.diff_id, lb.diff_id, "{compression:?}");
        assert_eq!(la.digest, lb.digest, "{compression:?}");
        let entries = read_layer(&la);
        let e = by_name(&entries);
        assert_eq!(
            e[&format!("{ROOT}shared/")].mode,
            0o775,
            "setgid dropped on dirs"
        );
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e.name.as_str())
            .skip(1)
            .take(5)
            .collect();
        assert_eq!(
            names,
            [
                ROOT,
                &format!("{ROOT}a-b"),
                &format!("{ROOT}a.txt"),
                &format!("{ROOT}a/"),
                &format!("{ROOT}a/b")
            ]
        );
    }
}

#[test]
fn filtered_layer_keeps_parents_and_relinks() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    chmod(&tree.join("lib/python3.11"), 0o750);
    let keep = |p: &Path| {
        p.starts_with("lib/python3.11/site-packages/venvimg_fixture")
            || p == Path::new("bin/pytest")
    };
    let layer = pack_tree_filtered(
        &tree,
        &golden_options(Compression::Gzip),
        &tmp.path().join("l"),
        &keep,
    )
    .unwrap();
    let entries = read_layer(&layer);
    let names: Vec<String> = entries
        .iter()
        .map(|e| e.name.strip_prefix(ROOT).unwrap_or(&e.name).to_string())
        .collect();
    assert_eq!(
        names,
        [
            "opt/nox/",
            "",
            "bin/",
            "bin/pytest",
            "lib/",
            "lib/python3.11/",
            "lib/python3.11/site-packages/",
            "lib/python3.11/site-packages/venvimg_fixture/",
            "lib/python3.11/site-packages/venvimg_fixture/__init__.py",
            "lib/python3.11/site-packages/venvimg_fixture/core.py",
            "lib/python3.11/site-packages/venvimg_fixture/entry_points.txt",
        ]
    );
    let e = by_name(&entries);
    // Its first path (bin/py.test) is not in this layer, so it is a file here.
    assert_eq!(
        e[&format!("{ROOT}bin/pytest")].kind,
        tar::EntryType::Regular
    );
    assert!(!e[&format!("{ROOT}bin/pytest")].content.is_empty());
    // Parents pulled in for their children keep their own mode.
    assert_eq!(e[&format!("{ROOT}lib/python3.11/")].mode, 0o750);
}

#[test]
fn special_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("run")).unwrap();
    fs::write(tree.join("file"), "x").unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("run/sock")).unwrap();
    let out = tmp.path().join("l.tar.gz");
    let err = pack_tree(&tree, &PackOptions::new(PREFIX), &out).unwrap_err();
    match &err {
        LayerError::UnsupportedFileType { path, kind } => {
            assert!(path.ends_with("run/sock"));
            assert_eq!(*kind, "socket");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("run/sock"), "{err}");
    assert!(!out.exists());
    // A filter may leave it out.
    let layer = pack_tree_filtered(&tree, &PackOptions::new(PREFIX), &out, &|p| {
        !p.ends_with("sock")
    })
    .unwrap();
    assert_eq!(read_layer(&layer).len(), 2 + 2);
}

#[test]
fn large_owner_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), "x").unwrap();
    let opts = PackOptions {
        uid: 4_000_000_000,
        gid: 3_000_000,
        ..PackOptions::new("/x")
    };
    let layer = pack(&tree, &opts, &tmp.path().join("l.tar.gz"));
    for e in read_layer(&layer) {
        assert_eq!((e.uid, e.gid), (4_000_000_000, 3_000_000), "{}", e.name);
    }
}

/// An independent decompressor the check needs: missing, the test fails saying what to
/// install (it never passes without the check).
fn require(tool: &str) {
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "{tool} is required by this test and is not installed: apt-get install {tool} (`bash tests/support/testenv.sh deps` installs it)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn system_tools_read_the_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    golden_tree(&tree);
    // Just over one real block, so the real block size is covered too.
    write_words(&tree.join("lib/big.so"), BLOCK_SIZE + 4321, 9);
    chmod(&tree.join("lib/big.so"), 0o644); // not the umask's choice: it's in the digest
    let gz = pack(
        &tree,
        &golden_options(Compression::Gzip),
        &tmp.path().join("l.tar.gz"),
    );
    let zst = pack(
        &tree,
        &golden_options(Compression::ZSTD),
        &tmp.path().join("l.tar.zst"),
    );
    // Two real blocks: guards BLOCK_SIZE, the sync-flushed block joins and the combined
    // CRC, which the one-block golden fixture can't see.
    eprintln!("two-block gzip digest {}", gz.digest);
    assert_eq!(
        gz.digest, GOLDEN_TWO_BLOCK_GZIP_DIGEST,
        "multi-block gzip bytes changed"
    );

    require("gzip");
    {
        run(Command::new("gzip").arg("-t").arg(&gz.path));
        let listing = run(Command::new("tar").arg("-tvzf").arg(&gz.path));
        assert!(
            listing.contains(&format!("{ROOT}bin/python -> /usr/bin/python3.11")),
            "{listing}"
        );
        assert!(
            listing.contains(&format!("{ROOT}bin/pytest link to {ROOT}bin/py.test")),
            "{listing}"
        );
        assert!(listing.contains("0/0"), "{listing}");

        // Extract with GNU tar and compare with the tree.
        let x = tmp.path().join("x");
        fs::create_dir(&x).unwrap();
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&gz.path)
            .arg("-C")
            .arg(&x));
        let root = x.join(ROOT);
        assert_eq!(
            fs::read_link(root.join("bin/python")).unwrap(),
            Path::new("/usr/bin/python3.11")
        );
        let a = fs::metadata(root.join("bin/pytest")).unwrap();
        let b = fs::metadata(root.join("bin/py.test")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hardlink not restored");
        assert_eq!(a.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read(root.join("lib/big.so")).unwrap(),
            fs::read(tree.join("lib/big.so")).unwrap()
        );
        let long = format!("{LONG_DIST_INFO}/entry_points_and_more_long_names.txt");
        assert_eq!(
            fs::read(root.join(&long)).unwrap(),
            fs::read(tree.join(&long)).unwrap()
        );
    }
    require("zstd");
    {
        run(Command::new("zstd").arg("-q").arg("-t").arg(&zst.path));
        let listing = run(Command::new("tar").arg("--zstd").arg("-tvf").arg(&zst.path));
        assert!(
            listing.contains(&format!("{ROOT}bin/python -> /usr/bin/python3.11")),
            "{listing}"
        );
    }
}

#[test]
fn write_errors_name_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), "x").unwrap();
    let out = tmp.path().join("missing-dir/l.tar.gz");
    let err = pack_tree(tmp.path(), &PackOptions::new("/x"), &out).unwrap_err();
    assert!(
        matches!(&err, LayerError::CreateOutput { path, .. } if path == &out),
        "{err:?}"
    );

    // /dev/full: every write fails with ENOSPC, which must surface as WriteOutput
    // (from the compression threads) rather than hang or panic.
    if Path::new("/dev/full").exists() {
        write_words(&tmp.path().join("big"), 1 << 20, 3);
        for compression in [Compression::Gzip, Compression::ZSTD] {
            let opts = PackOptions {
                compression,
                ..PackOptions::new("/x")
            };
            let dev_full = Path::new("/dev/full");
            let err = pack_with_block_size(tmp.path(), &opts, dev_full, &|_| true, 64 * 1024);
            assert!(
                matches!(&err, Err(LayerError::WriteOutput { .. })),
                "{err:?}"
            );
        }
    }
}
