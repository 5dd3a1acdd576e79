//! The release artifacts `.ci/release.sh` makes: static musl binaries for x86_64 and
//! aarch64, their wheels, completions and man pages, and SHA256SUMS over all of them.
//!
//! The folder is `support::dist()`: made once by `tests/support/dist.sh` (the script,
//! under a lock, reused while the sources are unchanged; an aarch64 cross-build costs
//! minutes on 2 cores) or `.ci/run`'s VENVIMG_DIST. aarch64 code cannot run here
//! (no qemu needed for the tests), so the aarch64 binary is checked by its ELF headers:
//! an AArch64 executable with no program interpreter, i.e. static.

use std::path::Path;
use std::process::Command;

use crate::support;

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const PT_INTERP: u32 = 3;

/// What an ELF header says: the machine, and whether a program header asks for an
/// interpreter (a dynamic loader).
#[derive(Debug)]
struct Elf {
    machine: u16,
    interp: bool,
}

fn read_elf(bytes: &[u8], what: &str) -> Elf {
    assert!(
        bytes.len() > 64 && bytes[..4] == *b"\x7fELF",
        "{what} is not an ELF file"
    );
    assert_eq!(bytes[4], 2, "{what}: not a 64-bit ELF");
    assert_eq!(bytes[5], 1, "{what}: not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let e_type = u16_at(16);
    assert!(
        e_type == 2 || e_type == 3,
        "{what}: not an executable (e_type {e_type})"
    );
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    assert!(
        phnum > 0 && phoff + phnum * phentsize <= bytes.len(),
        "{what}: program headers"
    );
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    Elf {
        machine: u16_at(18),
        interp,
    }
}

/// The bytes of `member` inside the zip file `wheel` (Python's zipfile: a wheel is a zip).
fn wheel_member(wheel: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(wheel)
        .arg(member)
        .output()
        .expect("python3 is needed to read the wheel");
    assert!(
        out.status.success(),
        "{member} in {}: {}",
        wheel.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tar_list(file: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tzf").arg(file).output().unwrap();
    assert!(out.status.success(), "tar -tzf {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn release_has_static_binaries_and_wheels_for_x86_64_and_aarch64_with_sums() {
    let dir = support::dist();
    let version = env!("CARGO_PKG_VERSION");

    for (arch, machine) in [("x86_64", EM_X86_64), ("aarch64", EM_AARCH64)] {
        let name = format!("venvimg-{version}-{arch}-unknown-linux-musl");
        let binary = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("{name} is missing from {}: {e}", dir.display()));
        let elf = read_elf(&binary, &name);
        assert_eq!(elf.machine, machine, "{name}: e_machine");
        assert!(
            !elf.interp,
            "{name} asks for a dynamic loader (PT_INTERP): not static"
        );

        // The wheel holds the same binary, tagged for glibc and musl systems alike.
        let wheel = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(&format!("venvimg-{version}-py3-none-"))
                    && n.ends_with(".whl")
                    && n.contains(&format!("manylinux_2_17_{arch}"))
                    && n.contains(&format!("musllinux_1_2_{arch}"))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {arch} wheel tagged manylinux_2_17 and musllinux_1_2 in {}",
                    dir.display()
                )
            });
        let wheel_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
        let inside = wheel_member(&wheel, &format!("venvimg-{version}.data/scripts/venvimg"));
        assert!(
            inside == binary,
            "{wheel_name} holds another binary than {name}"
        );
    }

    // The x86_64 one runs here.
    let x86 = dir.join(format!("venvimg-{version}-x86_64-unknown-linux-musl"));
    if std::env::consts::ARCH == "x86_64" {
        let out = Command::new(&x86).arg("--version").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("venvimg {version}")
        );
    }

    let completions = tar_list(&dir.join(format!("venvimg-{version}-completions.tar.gz")));
    for file in [
        "venvimg.bash",
        "_venvimg",
        "venvimg.fish",
        "venvimg.elv",
        "_venvimg.ps1",
    ] {
        assert!(
            completions.contains(&format!("completions/{file}")),
            "{file}: {completions:?}"
        );
    }
    let man = tar_list(&dir.join(format!("venvimg-{version}-man.tar.gz")));
    for file in ["man/venvimg.1", "man/venvimg-build.1", "man/venvimg-plan.1"] {
        assert!(man.iter().any(|m| m == file), "{file}: {man:?}");
    }

    // SHA256SUMS covers every other file, and each sum holds.
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    let mut listed: Vec<&str> = sums
        .lines()
        .map(|l| {
            let (digest, name) = l.split_once("  ").unwrap_or_else(|| panic!("{l:?}"));
            assert_eq!(digest.len(), 64, "{l:?}");
            name
        })
        .collect();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    files.sort();
    assert_eq!(listed, files);
    let out = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sha256sum --check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_elf_reader_tells_a_dynamic_binary_from_a_static_one() {
    // The test binary itself is a dynamically linked x86_64 (or host) executable.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let elf = read_elf(&me, "the test binary");
    assert!(elf.interp, "{elf:?}");
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(elf.machine, EM_X86_64);
    }
}
