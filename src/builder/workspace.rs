use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{io_err, BuildOptions};
use crate::config::{BuilderKind, Config};
use crate::engine::{self as builder, script};
use crate::error::{BuildError, Error};
use crate::layer::{self};
use crate::plan::SessionPlan;
use crate::printer::Reporter;

/// The environment builds get besides the fixed one, and the values never to print.
pub(super) struct BuildEnv {
    pub(super) extra: BTreeMap<String, String>,
    pub(super) secrets: Vec<String>,
}

/// Where sessions build: a folder removed on drop unless `--keep`.
pub struct WorkDir {
    pub path: PathBuf,
    pub(super) _dir: Option<crate::cancel::TempDir>,
}

/// Before any session builds: the builder is there and can mount the checkout (when
/// something will build), a build folder, and the build environment (`build_env:` and
/// `--build-env`) with the values to mask.
pub(super) fn prepare(
    config: &Config,
    args: &BuildOptions,
    builds: bool,
    printer: &dyn Reporter,
) -> Result<(WorkDir, BuildEnv), Error> {
    if builds && !builder::engine_available(config.builder) {
        return Err(BuildError::NoEngine {
            builder: config.builder.as_str(),
            program: match config.builder {
                BuilderKind::Local => "nox",
                BuilderKind::Podman => "podman",
                BuilderKind::Docker => "docker",
            },
            hint: match config.builder {
                BuilderKind::Podman => "install podman (apt-get install podman), or set `builder: docker` / `builder: local`",
                BuilderKind::Docker => "install docker and start its daemon, or set `builder: podman`",
                BuilderKind::Local => "install nox and uv here (pip install nox uv), or use a container builder",
            },
        }
        .into());
    }

    if builds {
        crate::engine::mountable_checkout(config.builder, &config.project_dir)?;
    }

    let dir = crate::cancel::tempdir("build")
        .map_err(io_err("creating a build folder in the temp dir"))?;
    let work = if args.keep {
        let path = dir.keep();
        printer.info(format!("keeping build folders in {}", path.display()));
        WorkDir { path, _dir: None }
    } else {
        WorkDir {
            path: dir.path().to_path_buf(),
            _dir: Some(dir),
        }
    };

    let mut extra_env = config.build_env.clone();
    for kv in &args.build_env {
        // `NAME` alone takes the value from venvimg's own environment, so a secret never
        // has to be written on a command line other processes can read.
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(kv) {
                Ok(v) => (kv.clone(), v),
                Err(_) => {
                    return Err(crate::error::UsageError::Flag {
                        flag: "--build-env",
                        value: Some(kv.clone()),
                        why: format!("no `=` and no variable {kv} in the environment; give NAME=VALUE, or export {kv} and pass its name"),
                    }
                    .into())
                }
            },
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(crate::error::UsageError::Flag {
                flag: "--build-env",
                value: Some(k),
                why: "a variable name is letters, digits and `_`".into(),
            }
            .into());
        }
        extra_env.insert(k, v);
    }
    let build_env = BuildEnv {
        secrets: crate::plan::secret_values(config, &extra_env),
        extra: extra_env,
    };
    Ok((work, build_env))
}

/// How many sessions build at once: `--jobs`, else two per core, bounded by memory
/// (about 1 GiB a build: uv, nox and packing) and by the misses. The local builder
/// builds in the one envdir, where builds take turns anyway.
pub(super) fn parallel_jobs(flag: Option<u16>, builder: BuilderKind, misses: usize) -> usize {
    if builder == BuilderKind::Local {
        return 1;
    }
    let wanted = match flag {
        Some(n) => usize::from(n),
        None => {
            // Two per core: a small session's build mostly waits (container start, the
            // index, nox's own start-up), measured in benches (`--only parallel`).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let by_memory = available_memory_gib().unwrap_or(1).max(1);
            (2 * cores).min(by_memory)
        }
    };
    wanted.min(misses).max(1)
}

/// MemAvailable from /proc/meminfo, in whole GiB.
pub(super) fn available_memory_gib() -> Option<usize> {
    let text = fs_err::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / (1024 * 1024))
}

/// A session's build folder on this machine: the project (a copy, for container
/// builders), the envdir the venv is built in, venvimg's hook and scripts, and where the
/// hook records what the build ran.
pub(super) struct Workspace {
    pub(super) dir: PathBuf,
    pub(super) project: PathBuf,
    pub(super) envdir_host: PathBuf,
    pub(super) venv_host: PathBuf,
    pub(super) hook_dir: PathBuf,
    pub(super) out_dir: PathBuf,
    /// The local builder writes the real envdir: two venvimg builds there would delete
    /// each other's venv mid-install, so they take turns (held until the session ends).
    pub(super) _envdir_lock: Option<crate::outputs::layout::LayoutLock>,
}

impl Workspace {
    pub(super) fn prepare(
        config: &Config,
        s: &SessionPlan,
        work: &Path,
        printer: &dyn Reporter,
    ) -> Result<Workspace, Error> {
        let dir = work.join(&s.venv_dir);
        fs_err::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let envdir_host = match config.builder {
            BuilderKind::Local => PathBuf::from(&config.envdir),
            _ => dir.join("envdir"),
        };
        let project = match config.builder {
            BuilderKind::Local => local_project_dir(config)?,
            _ => {
                let p = dir.join("project");
                builder::copy_project(&config.project_dir, &p)
                    .map_err(io_err(format!("copying the project to {}", p.display())))?;
                p
            }
        };
        let venv_host = envdir_host.join(&s.venv_dir);
        let envdir_lock = match config.builder {
            BuilderKind::Local => Some(lock_envdir(&envdir_host, printer)?),
            _ => None,
        };
        prepare_envdir(config.builder, &envdir_host, &venv_host)?;

        // The scripts and venvimg's hook (mounted read-only), and where the hook records
        // the commands nox runs (the one folder the build writes besides the venv).
        let hook_dir = dir.join("hook");
        let out_dir = dir.join("out");
        for d in [&hook_dir, &out_dir] {
            fs_err::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        crate::python::hook::write_files(&hook_dir, None).map_err(io_err(format!(
            "writing the hook into {}",
            hook_dir.display()
        )))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The container's user writes the record; the 0700 build folder keeps others
            // out.
            fs_err::set_permissions(
                &out_dir,
                std::fs::Permissions::from_mode(crate::cancel::CONTAINER_OUT_MODE),
            )
            .map_err(io_err(format!("preparing {}", out_dir.display())))?;
        }
        let script_path = hook_dir.join("build.sh");
        let script = script::render(&script::ScriptParams {
            session: &s.config.name,
            envdir: &config.envdir,
            venv_dir: &s.venv_dir,
            workdir: &config.workdir,
            build: s.config.build,
            posargs: &s.config.posargs,
        });
        fs_err::write(&script_path, script)
            .map_err(io_err(format!("writing {}", script_path.display())))?;
        Ok(Workspace {
            dir,
            project,
            envdir_host,
            venv_host,
            hook_dir,
            out_dir,
            _envdir_lock: envdir_lock,
        })
    }
}

/// The local builder works on the project in place, which must be at `workdir` (editable
/// installs record that path).
pub(super) fn local_project_dir(config: &Config) -> Result<PathBuf, Error> {
    let here = fs_err::canonicalize(&config.project_dir).map_err(io_err(format!(
        "resolving {}",
        config.project_dir.display()
    )))?;
    let want =
        fs_err::canonicalize(&config.workdir).unwrap_or_else(|_| PathBuf::from(&config.workdir));
    if here != want {
        return Err(BuildError::Local {
            message: format!(
                "the project is at {} but `workdir` is {}; the local builder builds in place, so run it from a checkout at workdir (as a CI job in the base image does), or use `builder: podman`",
                here.display(),
                config.workdir
            ),
        }
        .into());
    }
    Ok(here)
}

/// The base's folders above `envdir` as the build script listed them (`MODE UID GID
/// PATH`), keyed by archive path (`tmp`). What the build container wrote is untrusted:
/// only ancestors of the envdir, mode bits only, bounded; anything else is dropped (that
/// folder is then left out of the layers, as before).
pub(super) fn base_dirs(file: &Path, envdir: &str) -> BTreeMap<String, layer::BaseDir> {
    let Ok(raw) = crate::untrusted::read_checked(file, 64 * 1024) else {
        return BTreeMap::new();
    };
    let envdir = Path::new(envdir);
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&raw).lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(mode), Some(uid), Some(gid), Some(path)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(mode), Ok(uid), Ok(gid)) = (
            u32::from_str_radix(mode, 8),
            uid.parse::<u64>(),
            gid.parse::<u64>(),
        ) else {
            continue;
        };
        let p = Path::new(path);
        if mode > 0o7777
            || !p.is_absolute()
            || p == envdir
            || !envdir.starts_with(p)
            || p == Path::new("/")
        {
            continue;
        }
        out.insert(
            path.trim_start_matches('/')
                .trim_end_matches('/')
                .to_string(),
            layer::BaseDir { mode, uid, gid },
        );
    }
    out
}

pub(super) fn lock_envdir(
    envdir: &Path,
    printer: &dyn Reporter,
) -> Result<crate::outputs::layout::LayoutLock, Error> {
    use crate::outputs::layout::LayoutLock;
    fs_err::create_dir_all(envdir).map_err(io_err(format!("creating {}", envdir.display())))?;
    if let Some(lock) = LayoutLock::try_acquire(envdir)? {
        return Ok(lock);
    }
    printer.info(format!(
        "waiting for another venvimg build that uses {} (builder: local)",
        envdir.display()
    ));
    Ok(LayoutLock::acquire(envdir)?)
}

pub(super) fn prepare_envdir(kind: BuilderKind, envdir: &Path, venv: &Path) -> Result<(), Error> {
    fs_err::create_dir_all(envdir).map_err(io_err(format!("creating {}", envdir.display())))?;
    if venv.exists() {
        if kind == BuilderKind::Local && !venv.join("pyvenv.cfg").is_file() {
            return Err(BuildError::Local {
                message: format!(
                    "{} exists and is not a virtualenv (no pyvenv.cfg); refusing to delete it — move it away or choose another envdir",
                    venv.display()
                ),
            }
            .into());
        }
        fs_err::remove_dir_all(venv).map_err(io_err(format!("removing {}", venv.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_build_side_by_side_up_to_the_flag_the_misses_and_never_locally() {
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Podman, 20), 4);
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Docker, 3), 3);
        assert_eq!(parallel_jobs(Some(4), BuilderKind::Local, 20), 1);
        assert_eq!(parallel_jobs(None, BuilderKind::Podman, 0), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = parallel_jobs(None, BuilderKind::Podman, 1000);
        assert!((1..=2 * cores).contains(&auto), "{auto} of {cores} cores");
    }
}
