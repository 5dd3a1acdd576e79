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
