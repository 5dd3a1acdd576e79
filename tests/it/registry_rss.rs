//! Peak memory while packing and pushing a 1 GiB layer: the packer and the uploads stream
//! from disk, so the peak RSS stays under 100 MiB whatever the layer's size.
//!
//! The 1 GiB run is not the default size (it writes about 3 GiB and takes a minute); run it
//! with `bash benches/push_rss.sh`, which builds it in release mode and measures it with
//! `/usr/bin/time -v` as well. The tests check their own peak (`VmHWM`) too, so they fail,
//! rather than report, when memory use regresses; a 160 MiB run is in the default set.
use crate::support;
use crate::support::registry_kit as kit;

use std::io::Write;
use std::time::Instant;

use kit::{compose_on, push, runtime, Access, XorShift};
use venvimg::layer::{pack_tree, PackOptions};
use venvimg::registry::{Registry, Transport};

const LIMIT_KIB: u64 = 100 * 1024;

/// `VmHWM` (peak resident set) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Start a new peak measurement (writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM via /proc/self/clear_refs");
}

/// A layer larger than the limit (160 MiB by default), so holding it in memory anywhere
/// fails the test; `benches/push_rss.sh` runs it with VENVIMG_RSS_BYTES at 1 GiB. One
/// test in this binary: the peak is this test's.
#[test]
fn push_layer_under_100mib_rss() {
    let size: u64 = std::env::var("VENVIMG_RSS_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160 << 20);
    let chunk_mib: Option<usize> = std::env::var("VENVIMG_RSS_CHUNK_MIB")
        .ok()
        .and_then(|s| s.parse().ok());
    pack_and_push_under_limit(size, chunk_mib);
}

fn pack_and_push_under_limit(size: u64, chunk_mib: Option<usize>) {
    let env = support::testenv();
    // A registry of its own: its storage is dropped when the test is done.
    let registry = support::private_registry("rss", "");
    let work = tempfile::Builder::new()
        .prefix("venvimg-rss-")
        .tempdir_in(std::env::var_os("VENVIMG_RSS_DIR").unwrap_or_else(|| "/tmp".into()))
        .unwrap();
    let tree = work.path().join("venv");
    std::fs::create_dir_all(tree.join("lib")).unwrap();

    // Incompressible data, written 1 MiB at a time.
    let t = Instant::now();
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(tree.join("lib/blob.bin")).unwrap());
        let mut rng = XorShift::new(7);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        f.flush().unwrap();
    }
    eprintln!("generated {size} bytes in {:.1?}", t.elapsed());

    reset_peak();
    let t = Instant::now();
    let layer = pack_tree(
        &tree,
        &PackOptions::new("/opt/nox/big"),
        &work.path().join("big.tar.gz"),
    )
    .unwrap();
    std::fs::remove_file(tree.join("lib/blob.bin")).unwrap();
    let pack_peak = peak_rss_kib();
    eprintln!(
        "packed {} bytes (gzip) in {:.1?}; peak RSS while packing: {} KiB",
        layer.size,
        t.elapsed(),
        pack_peak
    );

    reset_peak();
    let t = Instant::now();
    let rt = runtime();
    let transport = Transport {
        monolithic: chunk_mib.is_none(),
        chunk_size: chunk_mib.map(|m| m << 20),
        ..Default::default()
    };
    let reg = Registry::new(transport, &[&registry, &env.registry]).unwrap();
    let img = compose_on(&rt, &reg, &env.base, std::slice::from_ref(&layer));
    let repo = format!("rss/big-{}", std::process::id());
    let (digest, stats) = push(&rt, &reg, &format!("{registry}/{repo}:ci"), &img).unwrap();
    let push_peak = peak_rss_kib();
    eprintln!(
        "pushed {digest} ({} bytes uploaded, {} blobs; {}) in {:.1?}; peak RSS while pushing: {} KiB",
        stats.bytes_uploaded,
        stats.blobs_uploaded,
        match chunk_mib {
            Some(m) => format!("chunked, {m} MiB"),
            None => "monolithic".to_string(),
        },
        t.elapsed(),
        push_peak
    );
    assert!(stats.bytes_uploaded >= layer.size, "{stats:?}");
    assert_eq!(
        kit::blob_size(&Access::default(), &registry, &repo, layer.digest.as_str()),
        Some(layer.size)
    );

    drop(work);
    let _ = std::process::Command::new("bash")
        .arg(support::manifest_dir().join("tests/support/testenv.sh"))
        .args(["down", "rss"])
        .output();
    let _ = std::fs::remove_dir_all(env.state_dir.join("registries/rss/storage"));

    assert!(pack_peak < LIMIT_KIB, "packing peaked at {pack_peak} KiB");
    assert!(push_peak < LIMIT_KIB, "pushing peaked at {push_peak} KiB");
}
