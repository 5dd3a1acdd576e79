//! `venvimg` started in the background with its output in files: wait for a line, send it
//! a signal, wait for it to end, never hang a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;

pub struct Background {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    what: String,
    _logs: tempfile::TempDir,
}

impl Background {
    /// `venvimg ARGS` in `dir` with the test environment, `extra` variables on top, stdin
    /// closed.
    pub fn venvimg(dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Self {
        let env = support::testenv();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_venvimg"));
        for var in support::CI_MARKERS {
            cmd.env_remove(var);
        }
        cmd.envs(env.envs.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .current_dir(dir)
            .args(args);
        Self::start(cmd, &format!("venvimg {}", args.join(" ")))
    }

    /// `cmd`, its stdout and stderr going to files.
    pub fn start(mut cmd: Command, what: &str) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let (out, err) = (logs.path().join("out"), logs.path().join("err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child,
            out,
            err,
            what: what.to_string(),
            _logs: logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout, then stderr, so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
            + &std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Wait until the output holds `marker`; fails the test if the process ends first or
    /// `timeout` passes.
    #[track_caller]
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) {
        let started = Instant::now();
        while !self.text().contains(marker) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} ended ({status}) before printing {marker:?}:\n{}",
                    self.what,
                    self.text()
                );
            }
            if started.elapsed() > timeout {
                self.stop();
                panic!(
                    "{} printed no {marker:?} in {timeout:?}:\n{}",
                    self.what,
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Send `signal` (`INT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Wait for the process to end; fails the test (after stopping it: SIGTERM, then
    /// SIGKILL) if it outlives `timeout`.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > timeout {
                self.stop();
                panic!(
                    "{} still running after {timeout:?}:\n{}",
                    self.what,
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM first (venvimg stops the containers it started), SIGKILL 20 s later.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}
