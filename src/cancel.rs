//! Cancelling cleanly. A CI cancel or Ctrl-C sends SIGTERM or SIGINT: venvimg stops the
//! containers it started, removes its temp folders and exits 130 (SIGINT) or 143
//! (SIGTERM). Nothing half-done is ever pushed: a tag is written last, after its blobs and
//! manifest, so an interrupted push leaves no tag.
//!
//! Folders left by a venvimg that was killed outright (SIGKILL, a lost runner) carry its
//! pid in their name and are removed by the next venvimg that finds that pid gone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
struct Live {
    /// (engine, container name) of containers running now.
    containers: Vec<(String, String)>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    containers: Vec::new(),
    dirs: Vec::new(),
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container venvimg is about to start: its name (`venvimg-<pid>-<n>`), registered so a
/// cancel removes it; unregistered when dropped.
pub struct ContainerGuard {
    engine: String,
    pub name: String,
}

/// A fresh container name for this process: `venvimg-<pid>-<n>`.
pub fn container_name() -> String {
    format!(
        "venvimg-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl ContainerGuard {
    pub fn new(engine: &str) -> ContainerGuard {
        Self::named(engine, &container_name())
    }

    pub fn named(engine: &str, name: &str) -> ContainerGuard {
        let name = name.to_string();
        live().containers.push((engine.to_string(), name.clone()));
        ContainerGuard {
            engine: engine.to_string(),
            name,
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        live()
            .containers
            .retain(|(e, n)| !(e == &self.engine && n == &self.name));
    }
}

/// A temp folder named for this process (`venvimg-<kind>-<pid>-XXXXXX`, mode 0700),
/// registered so a cancel removes it.
pub fn tempdir(kind: &str) -> std::io::Result<TempDir> {
    registered(&format!("venvimg-{kind}"), &std::env::temp_dir())
}

/// A private folder `PREFIX-<pid>-XXXXXX` in `dir`, registered for a cancel.
fn registered(prefix: &str, dir: &Path) -> std::io::Result<TempDir> {
    let dir = private_tempdir(
        tempfile::Builder::new().prefix(&format!("{prefix}-{}-", std::process::id())),
        dir,
    )?;
    live().dirs.push(dir.path().to_path_buf());
    Ok(TempDir { dir: Some(dir) })
}

/// A private folder in `dir` (`.venvimg-<kind>-<pid>-XXXXXX`, mode 0700), registered so
/// a cancel removes it: for work that must end up on `dir`'s filesystem (a rename).
pub fn tempdir_in(kind: &str, dir: &Path) -> std::io::Result<TempDir> {
    registered(&format!(".venvimg-{kind}"), dir)
}

/// Remove what [`tempdir_in`] left in `dir` for processes that are gone (killed before
/// they could clean up).
pub fn sweep_stale_in(dir: &Path) {
    sweep(dir, ".venvimg-");
}

/// The mode of every temp folder venvimg makes: its owner's only. tempfile follows the
/// umask (0755 under the usual 022), so it is set here, at creation, explicitly.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// The mode of the `out/` folder inside a build's private folder, where the container's
/// user (whatever its uid) writes the records: write and search for all, listing for
/// none, sticky; the 0700 folder around it is what keeps other users out.
pub const CONTAINER_OUT_MODE: u32 = 0o1733;

/// A temp folder from `builder` in `dir`, mode [`PRIVATE_DIR_MODE`] from its creation on
/// (and set again, whatever the umask did).
pub fn private_tempdir(
    builder: &mut tempfile::Builder,
    dir: &Path,
) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let d = builder
        .permissions(std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .tempdir_in(dir)?;
    fs_err::set_permissions(d.path(), std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    Ok(d)
}

/// A registered temp folder; removed when dropped (unless kept).
pub struct TempDir {
    dir: Option<tempfile::TempDir>,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until dropped").path()
    }

    /// Keep the folder (`--keep`): it is no longer removed, not even on cancel.
    pub fn keep(mut self) -> PathBuf {
        let d = self.dir.take().expect("present until dropped");
        let p = d.keep();
        live().dirs.retain(|x| x != &p);
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            drop(d);
            live().dirs.retain(|x| x != &p);
        }
    }
}

/// Stop every container venvimg started and remove its temp folders. Called on a signal,
/// from the signal-handling task, before the process exits.
pub fn clean_up() {
    let (containers, dirs) = {
        let mut l = live();
        (
            std::mem::take(&mut l.containers),
            std::mem::take(&mut l.dirs),
        )
    };
    for (engine, name) in containers {
        let _ = crate::process::command(&engine)
            .args(["rm", "--force", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for d in dirs {
        let _ = fs_err::remove_dir_all(&d);
    }
}

/// Remove temp folders of venvimg processes that no longer exist (killed with SIGKILL):
/// `venvimg-<kind>-<pid>-*` in the temp folder, owned by this user, whose pid is gone.
pub fn sweep_stale() {
    sweep(&std::env::temp_dir(), "venvimg-");
}

/// Remove the folders `PREFIX<kind>-<pid>-XXXXXX` in `dir` that this user owns and whose
/// process is gone (what [`registered`] names them; the kind may hold dashes, the random
/// tail does not).
fn sweep(dir: &Path, prefix: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs_err::read_dir(dir) else {
        return;
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let Some(Ok(pid)) = name.rsplit('-').nth(1).map(str::parse::<u32>) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(meta) = fs_err::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() && meta.uid() == me {
            let _ = fs_err::remove_dir_all(e.path());
        }
    }
}

/// SIGINT and SIGTERM, listened to from the moment this returns (`None` when the
/// handlers cannot be installed: the command then simply runs to its end).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

pub fn listen() -> Option<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    Some(Signals {
        int: signal(SignalKind::interrupt()).ok()?,
        term: signal(SignalKind::terminate()).ok()?,
    })
}

impl Signals {
    /// Wait for the first signal; the exit code for it (130 / 143).
    pub async fn recv(mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
        }
    }
}

/// On SIGINT or SIGTERM: stop the containers, remove the folders, exit. A task of its
/// own on the runtime's workers, because the command's future may be inside a blocking
/// container run when the signal comes and would not be polled until it returned.
#[allow(clippy::print_stderr)] // the process's last words, from the signal task
pub fn exit_on_signal() {
    let Some(signals) = listen() else {
        return;
    };
    tokio::spawn(async move {
        let code = signals.recv().await;
        clean_up();
        eprintln!("venvimg: interrupted; stopped its containers and removed its temp folders");
        // Not through the runtime's shutdown, which would wait for the blocking calls of
        // the containers just stopped.
        std::process::exit(code);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of a process that is gone is removed (whatever dashes its kind holds); one
    /// of a live process, or without a pid, stays.
    #[test]
    fn sweeps_only_the_folders_of_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        // Above any pid_max: no such process.
        let gone = dir
            .path()
            .join(".venvimg-restore-tests-3-12-4294967294-AbC123");
        let live = dir.path().join(format!(
            ".venvimg-restore-lint-{}-XyZ789",
            std::process::id()
        ));
        let other = dir.path().join(".venvimg-blobs-Qw3rty");
        for d in [&gone, &live, &other] {
            fs_err::create_dir(d).unwrap();
        }
        sweep_stale_in(dir.path());
        assert!(!gone.exists());
        assert!(live.exists() && other.exists());
    }
}
