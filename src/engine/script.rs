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
use crate::model::VenvName;

pub struct ScriptParams<'a> {
    pub session: &'a str,
    pub envdir: &'a str,
    pub venv_dir: &'a VenvName,
    pub workdir: &'a str,
    pub build: BuildMode,
    pub posargs: &'a [String],
}

/// Exit code the script uses when nox made no venv where it should be.
pub const NO_VENV_EXIT: i32 = 97;

/// Where the build leaves the hook's record of the commands nox ran, in `$VENVIMG_OUT`.
pub const RECORD_FILE: &str = "build.jsonl";

/// Where the build script lists the base's folders above the envdir, in `$VENVIMG_OUT`:
/// `MODE UID GID PATH` lines (`stat -c '%a %u %g %n'`).
pub const BASE_DIRS_FILE: &str = "base-dirs.txt";

/// The build script. It finds nox's interpreter and runs nox through venvimg's hook
/// (`$VENVIMG_HOOK`, written next to it), which records every command into
/// `$VENVIMG_OUT/build.jsonl`; the same script runs in a container and on this machine.
pub fn render(p: &ScriptParams) -> String {
    let venv = p.venv_dir.path_in(p.envdir);
    let mut nox = vec![
        "--no-color".to_string(),
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
    // The echo line is quoted as one word: nothing in a session name, a path or a posarg
    // is ever expanded by the shell.
    let shown = format!("venvimg: running nox {}", nox_cmd.join(" "));
    format!(
        r#"#!/bin/sh
# Written by venvimg: build one nox session's venv at its final path.
set -eu
# Layers keep file modes: the same venv must get the same modes whatever the caller's umask.
umask 022
cd {workdir}
VENVIMG_WORKDIR={workdir}
VENVIMG_ENVDIR={envdir}
export VENVIMG_WORKDIR VENVIMG_ENVDIR
# The base's own folders above the envdir (mode, owner) before anything runs: the
# layers carry them as they are, so /tmp stays 1777 in the job image.
{{ d=$(dirname "$VENVIMG_ENVDIR"); while [ "$d" != / ] && [ "$d" != . ]; do
  stat -c '%a %u %g %n' "$d"; d=$(dirname "$d"); done; }} >"$VENVIMG_OUT/{base_dirs}" 2>/dev/null || true
printf '%s\n' {shown}
sh "$VENVIMG_HOOK/launch.sh" record "$VENVIMG_OUT/{record}" --exec -- {nox_cmd}
venv={venv}
if [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "venvimg: nox finished but made no virtualenv at $venv" >&2
  exit {no_venv}
fi
{compile}"#,
        workdir = sh_quote(p.workdir),
        envdir = sh_quote(p.envdir),
        shown = sh_quote(&shown),
        record = RECORD_FILE,
        base_dirs = BASE_DIRS_FILE,
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
    venv_dir: &VenvName,
    workdir: &str,
    backend: &str,
    paths: &[String],
) -> String {
    let venv = venv_dir.path_in(envdir);
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
        "#!/bin/sh\n# Written by venvimg: make the project's own code editable (project: editable).\nset -eu\numask 022\ncd {workdir}\nvenv={venv}\nprintf '%s\\n' {line}\n{install}\n{COMPILE}",
        workdir = sh_quote(workdir),
        venv = sh_quote(&venv),
        line = sh_quote(&format!("venvimg: {install}")),
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
            venv_dir: &VenvName::parse("docs").unwrap(),
            workdir: "/src",
            build: BuildMode::Run,
            posargs: &["--collect-only".into()],
        });
        assert!(s.contains("-s docs -- --collect-only"), "{s}");
        assert!(!s.contains("--install-only"));
        let s = render(&ScriptParams {
            session: "docs",
            envdir: "/opt/nox",
            venv_dir: &VenvName::parse("docs").unwrap(),
            workdir: "/src",
            build: BuildMode::InstallOnly,
            posargs: &[],
        });
        assert!(s.contains("--install-only"));
        assert!(s.contains("--error-on-missing-interpreters"));
    }

    #[test]
    fn echoed_lines_never_expand() {
        let s = render(&ScriptParams {
            session: "t$(touch /tmp/pwned)",
            envdir: "/opt/nox",
            venv_dir: &VenvName::parse("t").unwrap(),
            workdir: "/src",
            build: BuildMode::Run,
            posargs: &["`id`".into(), "$HOME".into()],
        });
        let d = tempfile::tempdir().unwrap();
        // Only the printf line: run it and compare what it prints.
        let line = s.lines().find(|l| l.starts_with("printf")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(d.path())
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("t$(touch /tmp/pwned)"), "{printed}");
        assert!(
            printed.contains("`id`") && printed.contains("$HOME"),
            "{printed}"
        );
    }
}
