//! The shell script a builder runs, in the base image or on this machine: nox's installs
//! at the final envdir path, then deterministic bytecode.
//!
//! Bytecode policy: whatever installers wrote (pip compiles, uv does not, in parallel
//! orders) is removed, then one `compileall` run, single process, sorted, with
//! `checked-hash` invalidation, compiles every module of the venv. Hash-based pycs do not
//! depend on mtimes, a single process makes the marshal output stable, and `checked`
//! means an edited file in the venv is never run from a stale pyc. Job images thus import
//! at full speed with no write to the venv.

use crate::config::BuildMode;

pub struct ScriptParams<'a> {
    pub session: &'a str,
    pub envdir: &'a str,
    pub venv_dir: &'a str,
    pub workdir: &'a str,
    pub build: BuildMode,
    pub posargs: &'a [String],
}

/// Exit code the script uses when nox made no venv where it should be.
pub const NO_VENV_EXIT: i32 = 97;

pub fn render(p: &ScriptParams) -> String {
    let venv = format!("{}/{}", p.envdir.trim_end_matches('/'), p.venv_dir);
    let mut nox = vec![
        "nox".to_string(),
        "--no-color".into(),
        "--error-on-missing-interpreters".into(),
        "--envdir".into(),
        p.envdir.to_string(),
        "-s".into(),
        p.session.to_string(),
    ];
    match p.build {
        BuildMode::InstallOnly => nox.push("--install-only".into()),
        BuildMode::Run => {
            if !p.posargs.is_empty() {
                nox.push("--".into());
                nox.extend(p.posargs.iter().cloned());
            }
        }
    }
    let nox_cmd: Vec<String> = nox.iter().map(|a| sh_quote(a)).collect();
    format!(
        r#"#!/bin/sh
# Written by venvimg: build one nox session's venv at its final path.
set -eu
# Layers keep file modes: the same venv must get the same modes whatever the caller's umask.
umask 022
cd {workdir}
echo "venvimg: running {nox_line}"
{nox_cmd}
venv={venv}
if [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "venvimg: nox finished but made no virtualenv at $venv" >&2
  exit {no_venv}
fi
{compile}"#,
        workdir = sh_quote(p.workdir),
        nox_line = nox.join(" ").replace('"', "'"),
        nox_cmd = nox_cmd.join(" "),
        venv = sh_quote(&venv),
        no_venv = NO_VENV_EXIT,
        compile = COMPILE,
    )
}

/// Drops uv's mtime cache file, removes installer bytecode and compiles the venv once, deterministically; expects
/// `$venv` to be set.
const COMPILE: &str = r#"# uv records source mtimes in uv_cache.json for local installs; drop it and its RECORD
# line so the bytes do not depend on when the checkout was made. direct_url.json stays.
find "$venv" -path '*.dist-info/uv_cache.json' -type f | while read -r f; do
  rm -f "$f"
  sed -i '/\/uv_cache\.json,/d' "$(dirname "$f")/RECORD"
done
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$venv" -name '*.pyc' -type f -delete
echo "venvimg: compiling bytecode (single process, checked-hash)"
# Errors (a package shipping files for another Python) are not fatal: those modules
# simply have no pyc, exactly as with pip.
"$venv/bin/python" -m compileall -q -j 1 --invalidation-mode checked-hash "$venv" >/dev/null 2>&1 || true
"$venv/bin/python" -c 'import sys; print("venvimg: python", sys.version.split()[0], sys.executable)'
"#;

/// Reinstall the project's own distributions editable from their paths under `workdir`,
/// with no dependencies, using the installer that matches the venv's backend; then
/// recompile. For `project: editable`.
pub fn render_editable(
    envdir: &str,
    venv_dir: &str,
    workdir: &str,
    backend: &str,
    paths: &[String],
) -> String {
    let venv = format!("{}/{}", envdir.trim_end_matches('/'), venv_dir);
    let editables: Vec<String> = paths
        .iter()
        .map(|p| format!("-e {}", sh_quote(p)))
        .collect();
    let install = if backend == "uv" {
        format!(
            "uv pip install --python \"$venv/bin/python\" --no-deps --reinstall {}",
            editables.join(" ")
        )
    } else {
        format!(
            "\"$venv/bin/python\" -m pip install --no-deps --force-reinstall {}",
            editables.join(" ")
        )
    };
    format!(
        "#!/bin/sh\n# Written by venvimg: make the project's own code editable (project: editable).\nset -eu\numask 022\ncd {workdir}\nvenv={venv}\necho \"venvimg: {line}\"\n{install}\n{COMPILE}",
        workdir = sh_quote(workdir),
        venv = sh_quote(&venv),
        line = install.replace('"', "'"),
    )
}

pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("tests-3.12"), "tests-3.12");
        assert_eq!(
            sh_quote("tests(django='4.2')"),
            r#"'tests(django='\''4.2'\'')'"#
        );
    }

    #[test]
    fn run_mode_passes_posargs() {
        let s = render(&ScriptParams {
            session: "docs",
            envdir: "/opt/nox",
            venv_dir: "docs",
            workdir: "/src",
            build: BuildMode::Run,
            posargs: &["--collect-only".into()],
        });
        assert!(s.contains("-s docs -- --collect-only"), "{s}");
        assert!(!s.contains("--install-only"));
        let s = render(&ScriptParams {
            session: "docs",
            envdir: "/opt/nox",
            venv_dir: "docs",
            workdir: "/src",
            build: BuildMode::InstallOnly,
            posargs: &[],
        });
        assert!(s.contains("--install-only"));
        assert!(s.contains("--error-on-missing-interpreters"));
    }
}
