//! What venvimg must know of nox: the name nox gives a session's venv directory, and
//! how its failures read.

use std::path::PathBuf;

use sha1::{Digest, Sha1};
use unicode_normalization::UnicodeNormalization;

use crate::model::VenvName;

/// nox's `_normalize_path(envdir, signature)`, returning the directory *name* (the last
/// component). nox reuses a venv only at exactly this path, so this is a port, not an
/// approximation: NFKD then ASCII-only, `[^\w\s-]` → `-`, strip, lower-case, runs of
/// `-`/whitespace → `-`, strip `-`; empty → sha1[:8] of the original; and when
/// `join(envdir, name)` is longer than 87 characters (room for `bin/pythonX.Y` under
/// 100), the name becomes sha1(name)[:8] — unless envdir itself is 91 or longer.
pub fn venv_dir_name(envdir: &str, signature: &str) -> VenvName {
    let ascii: String = signature.nfkd().filter(|c| c.is_ascii()).collect();
    // After the ASCII filter, Python's `\w` is [A-Za-z0-9_] and `\s` is str.isspace().
    let replaced: String = ascii
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || is_py_space(c) || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let lowered = replaced.trim_matches(is_py_space).to_lowercase();
    let mut collapsed = String::with_capacity(lowered.len());
    let mut in_run = false;
    for c in lowered.chars() {
        if c == '-' || is_py_space(c) {
            if !in_run {
                collapsed.push('-');
            }
            in_run = true;
        } else {
            collapsed.push(c);
            in_run = false;
        }
    }
    let mut name = collapsed.trim_matches('-').to_string();
    if name.is_empty() {
        name = sha1_hex8(signature.as_bytes());
    }
    let full_len = python_join_len(envdir, &name);
    if full_len > 100 - "bin/pythonX.Y".len() && envdir.chars().count() < 100 - 9 {
        name = sha1_hex8(name.as_bytes());
    }
    VenvName::parse(&name).expect("nox's normalised name is a venv folder name")
}

/// The full venv path nox uses: `os.path.join(envdir, name)`.
pub fn venv_path(envdir: &str, signature: &str) -> String {
    let name = venv_dir_name(envdir, signature);
    python_join(envdir, name.as_str())
}

fn python_join(envdir: &str, name: &str) -> String {
    if envdir.is_empty() || envdir.ends_with('/') {
        format!("{envdir}{name}")
    } else {
        format!("{envdir}/{name}")
    }
}

fn python_join_len(envdir: &str, name: &str) -> usize {
    python_join(envdir, name).chars().count()
}

fn is_py_space(c: char) -> bool {
    // str.isspace() for ASCII: \t \n \v \f \r, the separators \x1c-\x1f, and space.
    matches!(
        c,
        '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f' | ' '
    )
}

fn sha1_hex8(bytes: &[u8]) -> String {
    let digest = Sha1::digest(bytes);
    hex::encode(digest)[..8].to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum NoxError {
    #[error("cannot list the sessions of {noxfile}: {source}\n  hint: container builders need podman or docker and the base image; the local builder needs nox here (`pip install nox` or `uv tool install nox`)")]
    Spawn {
        noxfile: PathBuf,
        source: std::io::Error,
    },
    #[error("{noxfile} imports the module `{module}`, which {place} lacks\n  hint: install it next to nox there (e.g. `pip install {module}` in the nox environment); for a base job image see images/README.md")]
    MissingModule {
        noxfile: PathBuf,
        module: String,
        place: String,
    },
    #[error("listing and dry-running the sessions of {noxfile} failed with {place} (exit {code}):\n{stderr}")]
    Failed {
        noxfile: PathBuf,
        place: String,
        code: i32,
        stderr: String,
    },
    #[error(transparent)]
    Hook(#[from] crate::python::hook::HookError),
}

/// `ModuleNotFoundError: No module named 'nox_uv'` → `nox_uv` (top-level package).
pub fn missing_module(stderr: &str) -> Option<String> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("ModuleNotFoundError: No module named"))?;
    let start = line.find("No module named")? + "No module named".len();
    let name = line[start..].trim().trim_matches(|c| c == '\'' || c == '"');
    let top = name.split('.').next().unwrap_or(name);
    (!top.is_empty()).then(|| top.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_names() {
        assert_eq!(venv_dir_name(".nox", "tests"), "tests");
        assert_eq!(venv_dir_name("/opt/nox", "tests-3.12"), "tests-3-12");
        assert_eq!(
            venv_dir_name("/opt/nox", "tests(django='4.2')"),
            "tests-django-4-2"
        );
        assert_eq!(venv_dir_name("/opt/nox", "Tests  --  X"), "tests-x");
    }

    #[test]
    fn empty_after_normalisation_is_hashed() {
        let n = venv_dir_name("/opt/nox", "測試");
        assert_eq!(n.as_str().len(), 8);
        assert_eq!(n, sha1_hex8("測試".as_bytes()));
    }

    #[test]
    fn long_names_are_hashed_unless_envdir_is_huge() {
        let long = "a".repeat(90);
        assert_eq!(venv_dir_name("/opt/nox", &long), sha1_hex8(long.as_bytes()));
        let huge_envdir = format!("/{}", "e".repeat(95));
        assert_eq!(venv_dir_name(&huge_envdir, &long), long);
    }

    #[test]
    fn finds_missing_module() {
        let err = "Traceback...\nModuleNotFoundError: No module named 'nox_uv.session'\n";
        assert_eq!(missing_module(err).as_deref(), Some("nox_uv"));
        assert_eq!(missing_module("all fine"), None);
    }
}
