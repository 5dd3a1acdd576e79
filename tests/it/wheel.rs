//! The PyPI wheel: maturin packs the static musl binary (pyproject.toml at the top), the
//! wheel installs into a fresh venv with no index, and the installed `venvimg` plans the
//! sample against the real registry.

use std::process::Command;

use crate::support::{self, Project};

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {what} ({e}): `bash tests/support/testenv.sh deps` installs uv and maturin (pip install uv maturin)")
        });
    let text = support::output_text(&out);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn the_wheel_installs_into_a_fresh_venv_and_its_venvimg_plans() {
    let tmp = tempfile::tempdir().unwrap();
    // The release's wheel (.ci/release.sh, made once for every test that reads it).
    let dist = support::dist();
    let wheel = std::fs::read_dir(&dist)
        .unwrap_or_else(|e| panic!("{}: {e}", dist.display()))
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "whl")
                && p.to_string_lossy().contains("manylinux_2_17_x86_64")
        })
        .unwrap_or_else(|| panic!("no x86_64 wheel in {}", dist.display()));
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("venvimg-{version}-py3-none-"))
            && name.contains("manylinux_2_17_x86_64")
            && name.contains("musllinux_1_2_x86_64"),
        "{name}"
    );

    let venv = tmp.path().join("venv");
    // Offline, this machine's python: nothing downloaded.
    run(
        Command::new("uv")
            .args(["venv", "--offline", "--python", "python3"])
            .arg(&venv)
            .env("UV_PYTHON_DOWNLOADS", "never"),
        "uv venv",
    );
    run(
        Command::new("uv")
            .args(["pip", "install", "--offline", "--no-index", "--python"])
            .arg(venv.join("bin/python"))
            .arg(&wheel),
        "uv pip install WHEEL",
    );
    let installed = venv.join("bin/venvimg");
    let text = run(
        Command::new(&installed).arg("--version"),
        "venvimg --version",
    );
    assert_eq!(text.trim(), format!("venvimg {version}"));

    let p = Project::fixture("sample").unique_repo("wheel").config("");
    let env = support::testenv();
    let out = Command::new(&installed)
        .envs(env.envs.iter().map(|(k, v)| (k, v)))
        .current_dir(p.path())
        .args(["plan", "--json", "-q"])
        .output()
        .unwrap();
    let plan = support::project::json_ok(&out, "the wheel's venvimg plan");
    assert_eq!(plan["sessions"].as_array().map(Vec::len), Some(3), "{plan}");
}
