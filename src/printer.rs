//! All user-facing output goes through one [`Printer`]: data on stdout, messages on
//! stderr; progress bars on a terminal, plain timestamped lines in CI logs.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Debug, Clone)]
pub struct Printer {
    pub verbosity: Verbosity,
    tty: bool,
}

impl Printer {
    pub fn new(verbosity: Verbosity) -> Printer {
        Printer {
            verbosity,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "{msg}");
        } else {
            let now = time::OffsetDateTime::now_utc();
            let _ = writeln!(
                err,
                "[{:02}:{:02}:{:02}] {msg}",
                now.hour(),
                now.minute(),
                now.second()
            );
        }
    }

    /// A step of progress ("building tests-3-12...").
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            self.line(msg.as_ref());
        }
    }

    pub fn verbose(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Verbose {
            self.line(msg.as_ref());
        }
    }

    /// Warnings are shown even with -q: they are things the user should fix.
    pub fn warn(&self, msg: impl AsRef<str>) {
        self.line(&format!("warning: {}", msg.as_ref()));
    }

    /// An error that does not end the command (one session of several); shown even with
    /// -q.
    pub fn error(&self, msg: impl AsRef<str>) {
        self.line(&format!("error: {}", msg.as_ref()));
    }

    /// Data for stdout (tables, JSON, image references).
    pub fn out(&self, s: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", s.as_ref());
    }

    /// A spinner on a terminal; on a log, one line when it starts.
    pub fn spinner(&self, msg: impl Into<String>) -> Progress {
        let msg = msg.into();
        if self.tty && self.verbosity >= Verbosity::Normal {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(msg);
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress { bar: Some(bar) }
        } else {
            self.info(msg);
            Progress { bar: None }
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
}

/// The kinds of line a [`Reporter`] emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Verbose,
    Warn,
    Error,
}

/// Where the stages (the engine's runs, outputs, a session's build) send their progress.
/// The commands own a [`Printer`] and hand the stages `&dyn Reporter`: the CLI's printer,
/// or a [`Prefixed`] one that names the session each line belongs to when sessions build
/// side by side. Call it through `info`/`verbose`/`warn`/`error`/`spinner`, as a printer.
pub trait Reporter: Sync {
    fn verbosity(&self) -> Verbosity;
    fn emit(&self, level: Level, msg: &str);
    /// A spinner where one can be drawn; otherwise a line when it starts.
    fn start(&self, msg: String) -> Progress;
}

impl dyn Reporter + '_ {
    pub fn info(&self, msg: impl AsRef<str>) {
        self.emit(Level::Info, msg.as_ref());
    }
    pub fn verbose(&self, msg: impl AsRef<str>) {
        self.emit(Level::Verbose, msg.as_ref());
    }
    pub fn warn(&self, msg: impl AsRef<str>) {
        self.emit(Level::Warn, msg.as_ref());
    }
    pub fn error(&self, msg: impl AsRef<str>) {
        self.emit(Level::Error, msg.as_ref());
    }
    pub fn spinner(&self, msg: impl Into<String>) -> Progress {
        self.start(msg.into())
    }
}

impl Reporter for Printer {
    fn verbosity(&self) -> Verbosity {
        self.verbosity
    }
    fn emit(&self, level: Level, msg: &str) {
        match level {
            Level::Info => self.info(msg),
            Level::Verbose => self.verbose(msg),
            Level::Warn => self.warn(msg),
            Level::Error => self.error(msg),
        }
    }
    fn start(&self, msg: String) -> Progress {
        self.spinner(msg)
    }
}

/// A reporter for one of several sessions building at once: each line names its session
/// (unless it already starts with the name), and no spinner is drawn — several would
/// overwrite each other on one terminal.
pub struct Prefixed<'a> {
    inner: &'a dyn Reporter,
    tag: String,
}

impl<'a> Prefixed<'a> {
    pub fn new(inner: &'a dyn Reporter, tag: impl Into<String>) -> Prefixed<'a> {
        Prefixed {
            inner,
            tag: tag.into(),
        }
    }

    fn tagged(&self, msg: &str) -> String {
        match msg.strip_prefix(self.tag.as_str()) {
            Some(rest) if rest.starts_with(':') => msg.to_string(),
            _ => format!("{}: {msg}", self.tag),
        }
    }
}

impl Reporter for Prefixed<'_> {
    fn verbosity(&self) -> Verbosity {
        self.inner.verbosity()
    }
    fn emit(&self, level: Level, msg: &str) {
        self.inner.emit(level, &self.tagged(msg));
    }
    fn start(&self, msg: String) -> Progress {
        self.inner.info(self.tagged(&msg));
        Progress { bar: None }
    }
}

impl Progress {
    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Left-aligned text table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    let mut out = fmt_row(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&fmt_row(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps what it is sent, to read back.
    struct Recorder(Mutex<Vec<(Level, String)>>);

    impl Reporter for Recorder {
        fn verbosity(&self) -> Verbosity {
            Verbosity::Verbose
        }
        fn emit(&self, level: Level, msg: &str) {
            self.0.lock().unwrap().push((level, msg.to_string()));
        }
        fn start(&self, msg: String) -> Progress {
            self.emit(Level::Info, &format!("spinner {msg}"));
            Progress { bar: None }
        }
    }

    #[test]
    fn a_prefixed_reporter_names_the_session_once_and_draws_no_spinner() {
        let rec = Recorder(Mutex::new(Vec::new()));
        let p = Prefixed::new(&rec, "tests-3.11");
        let r: &dyn Reporter = &p;
        r.info("tests-3.11: venv built");
        r.verbose("  | Collecting numpy");
        r.warn("tests-3.11x is not this session");
        let progress = r.spinner("building with podman");
        progress.finish();
        assert_eq!(
            rec.0.into_inner().unwrap(),
            vec![
                (Level::Info, "tests-3.11: venv built".to_string()),
                (
                    Level::Verbose,
                    "tests-3.11:   | Collecting numpy".to_string()
                ),
                (
                    Level::Warn,
                    "tests-3.11: tests-3.11x is not this session".to_string()
                ),
                (Level::Info, "tests-3.11: building with podman".to_string()),
            ]
        );
    }
}
