//! The hook venvimg runs with nox's own interpreter (`hook.py`): the plan's listing and dry
//! run, and the build's recording. This module holds its source, what venvimg asks of it,
//! and the typed, bounded reading of what it writes back (untrusted: it ran next to the
//! project's noxfile).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::untrusted;

/// The hook itself, written next to the build script.
pub const SOURCE: &str = include_str!("hook.py");

/// File names inside the folder mounted into the container (or used in place by the
/// local builder).
pub const HOOK_FILE: &str = "hook.py";
pub const LAUNCHER_FILE: &str = "launch.sh";
pub const SPEC_FILE: &str = "spec.json";

/// sh that finds the interpreter running the `nox` on PATH and runs the hook with it.
pub const LAUNCHER: &str = include_str!("launch.sh");

/// What the plan's dry run covers: groups of sessions run the same way.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlanSpec {
    pub envdir: String,
    pub groups: Vec<SpecGroup>,
    /// `uv export` runs for `locked:` sessions, by id.
    pub exports: Vec<SpecExport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpecGroup {
    /// The sessions nox selects by default, besides `sessions`.
    pub default: bool,
    /// Names as the user wrote them (signatures or function names).
    pub sessions: Vec<String>,
    /// `build: run`: the whole session, not `--install-only`.
    pub run: bool,
    pub posargs: Vec<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpecExport {
    pub id: String,
    pub args: Vec<String>,
}

/// One session of the noxfile, as the hook lists it (every session, including
/// `default=False` ones and those outside `nox.options.sessions`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ListedSession {
    /// The signature nox names the venv by (`tests-3.12`, `tests(django='4.2')`).
    pub session: String,
    /// The Python function's name.
    pub name: String,
    #[serde(default)]
    pub signatures: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub python: serde_json::Value,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `@nox.session(default=...)`.
    #[serde(default = "yes")]
    pub default: bool,
    /// What a plain `nox` would run.
    #[serde(default = "yes")]
    pub selected: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ListingFile {
    #[serde(default)]
    nox: Option<String>,
    sessions: Vec<ListedSession>,
}

#[derive(Debug, Deserialize)]
struct PlanFile {
    #[serde(default)]
    list_events: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    groups: Vec<PlanGroup>,
    #[serde(default)]
    exports: Vec<ExportResult>,
}

#[derive(Debug, Deserialize)]
struct PlanGroup {
    #[serde(default)]
    records: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ExportResult {
    pub id: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A file outside the project a command named (a constraints file the noxfile wrote into
/// the session's tmp dir), as the hook read it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct OutsideFile {
    pub path: String,
    /// `None` when it was too big to record.
    pub sha256: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// One line of the hook's records.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// A command nox ran (or would run, in the dry run).
    Command {
        session: Option<String>,
        argv: Vec<String>,
        cwd: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        venv_creation: bool,
        #[serde(default)]
        files: Vec<OutsideFile>,
    },
    /// `uv export --frozen` with the selection of a `uv sync` / `uv run` command.
    Export {
        session: Option<String>,
        #[serde(rename = "for")]
        for_argv: Vec<String>,
        args: Vec<String>,
        cwd: String,
        #[serde(default)]
        output: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
    /// A file the noxfile opened itself.
    Read {
        session: Option<String>,
        path: String,
        #[serde(default)]
        from: String,
    },
    Write {
        session: Option<String>,
        path: String,
        #[serde(default)]
        from: String,
    },
    /// A program the noxfile started itself, not through nox.
    Subprocess {
        session: Option<String>,
        argv: Vec<String>,
        cwd: String,
        #[serde(default)]
        from: String,
    },
    /// A folder of the project the noxfile listed.
    Listing {
        session: Option<String>,
        path: String,
        #[serde(default)]
        from: String,
    },
    /// A path of the project the noxfile checked (`os.path.exists` and friends):
    /// `file`, `dir`, `absent` or `other`.
    Stat {
        session: Option<String>,
        path: String,
        state: String,
    },
    /// A URL the noxfile fetched itself.
    Network {
        session: Option<String>,
        url: String,
        #[serde(default)]
        from: String,
    },
    /// How the session ended.
    Result {
        session: Option<String>,
        status: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Event {
    fn session(&self) -> Option<&str> {
        match self {
            Event::Command { session, .. }
            | Event::Export { session, .. }
            | Event::Read { session, .. }
            | Event::Write { session, .. }
            | Event::Subprocess { session, .. }
            | Event::Listing { session, .. }
            | Event::Stat { session, .. }
            | Event::Network { session, .. }
            | Event::Result { session, .. } => session.as_deref(),
        }
    }
}

/// The records of one session (events of the noxfile's module level are shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEvents {
    pub events: Vec<Event>,
    /// `SUCCESS`, `SKIPPED`, `FAILED`, `ABORTED`; `None` when nox never ran it.
    pub status: Option<String>,
    pub reason: Option<String>,
}

/// Everything one run of the hook recorded, by session.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Events outside any session (the noxfile's import, in each process that ran it).
    pub module: Vec<Event>,
    pub sessions: BTreeMap<String, SessionEvents>,
}

impl Records {
    /// Every event, module-level first.
    pub fn all(&self) -> impl Iterator<Item = &Event> {
        self.module
            .iter()
            .chain(self.sessions.values().flat_map(|s| s.events.iter()))
    }

    pub fn add(&mut self, ev: Event) {
        match ev.session().map(str::to_string) {
            None => self.module.push(ev),
            Some(s) => {
                let entry = self.sessions.entry(s).or_default();
                if let Event::Result { status, reason, .. } = &ev {
                    entry.status = status.clone();
                    entry.reason = reason.clone();
                }
                entry.events.push(ev);
            }
        }
    }

    /// Read a JSON-lines record file (bounded; a line that does not parse is an error
    /// naming the file and line).
    pub fn read_into(&mut self, path: &Path) -> Result<(), HookError> {
        let text =
            untrusted::read_text(path, untrusted::RECORDS).map_err(|source| HookError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let ev: Event = serde_json::from_str(line).map_err(|e| HookError::Bad {
                path: path.to_path_buf(),
                detail: format!("line {}: {e}", n + 1),
            })?;
            self.add(ev);
        }
        Ok(())
    }
}

/// What the plan's hook run found.
#[derive(Debug, Clone, Default)]
pub struct PlanOutput {
    pub nox_version: Option<String>,
    /// Every session the noxfile defines.
    pub listing: Vec<ListedSession>,
    pub records: Records,
    pub exports: Vec<ExportResult>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: venvimg's nox hook wrote something it cannot read: {detail}")]
    Bad { path: PathBuf, detail: String },
    /// The listing failed: the noxfile does not import (the caller diagnoses from the
    /// output it captured).
    #[error("listing the sessions failed (exit {code})")]
    ListFailed { code: i64 },
    /// A session name with a control character (a newline would start a line a CI runner
    /// reads as a workflow command): refused, shown escaped.
    #[error("the noxfile's session `{session}` has a control character in its name ({field}); venvimg refuses such names (printed, they could start lines a CI runner executes as workflow commands)\n  hint: rename the session (`@nox.session(name=...)`) or its parameters' ids to printable text")]
    ControlCharacters {
        session: String,
        field: &'static str,
    },
}

/// Refuse a listing with a session whose name, signatures or tags hold a control
/// character. Every listing goes through it, whatever its source: this run's dry run, or
/// one saved on this machine or in the registry by an earlier venvimg.
pub fn check_listing(listing: &[ListedSession]) -> Result<(), HookError> {
    listing.iter().try_for_each(check_printable)
}

fn check_printable(s: &ListedSession) -> Result<(), HookError> {
    let bad = |t: &str| t.chars().any(char::is_control);
    let field = if bad(&s.session) {
        "its name"
    } else if bad(&s.name) {
        "its function name"
    } else if s.signatures.iter().any(|x| bad(x)) {
        "a signature"
    } else if s.tags.iter().any(|x| bad(x)) {
        "a tag"
    } else {
        return Ok(());
    };
    Err(HookError::ControlCharacters {
        session: crate::untrusted::escaped(&s.session),
        field,
    })
}

/// Write the hook, its launcher and the spec into `dir` (mounted read-only into the
/// container, or used in place).
pub fn write_files(dir: &Path, spec: Option<&PlanSpec>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in [(HOOK_FILE, SOURCE), (LAUNCHER_FILE, LAUNCHER)] {
        let p = dir.join(name);
        fs_err::write(&p, text)?;
        // World-readable: a rootful docker daemon's container reads them as root, a
        // rootless podman one as the caller; nothing in them is secret.
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    if let Some(spec) = spec {
        let p = dir.join(SPEC_FILE);
        fs_err::write(&p, serde_json::to_vec(spec).expect("spec serialises"))?;
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Read what `hook.py plan` wrote into `out`.
pub fn read_plan(out: &Path) -> Result<PlanOutput, HookError> {
    let plan_path = out.join("plan.json");
    let text =
        untrusted::read_text(&plan_path, untrusted::RECORDS).map_err(|source| HookError::Io {
            path: plan_path.clone(),
            source,
        })?;
    let plan: PlanFile = serde_json::from_str(&text).map_err(|e| HookError::Bad {
        path: plan_path.clone(),
        detail: e.to_string(),
    })?;
    if plan.error.is_some() {
        return Err(HookError::ListFailed {
            code: plan.code.unwrap_or(-1),
        });
    }
    let listing_path = out.join("sessions.json");
    let text = untrusted::read_text(&listing_path, untrusted::RECORDS).map_err(|source| {
        HookError::Io {
            path: listing_path.clone(),
            source,
        }
    })?;
    let listing: ListingFile = serde_json::from_str(&text).map_err(|e| HookError::Bad {
        path: listing_path.clone(),
        detail: e.to_string(),
    })?;
    check_listing(&listing.sessions)?;
    let mut records = Records::default();
    let names = plan
        .list_events
        .iter()
        .chain(plan.groups.iter().filter_map(|g| g.records.as_ref()));
    for name in names {
        // A name from untrusted output: only a plain file name in `out`.
        if name.contains('/') || name.starts_with('.') {
            return Err(HookError::Bad {
                path: plan_path,
                detail: format!("record file name `{name}`"),
            });
        }
        let p = out.join(name);
        if p.exists() {
            records.read_into(&p)?;
        }
    }
    Ok(PlanOutput {
        nox_version: listing.nox,
        listing: listing.sessions,
        records,
        exports: plan.exports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_group_by_session() {
        let mut r = Records::default();
        for line in [
            r#"{"kind": "read", "path": "/src/pyproject.toml", "from": "noxfile.py:2", "session": null}"#,
            r#"{"kind": "command", "argv": ["uv", "pip", "install", "-r", "r.txt"], "cwd": "/src", "env": {"VIRTUAL_ENV": "/opt/nox/t"}, "venv_creation": false, "session": "t"}"#,
            r#"{"kind": "result", "status": "SKIPPED", "reason": "Python interpreter 3.99 not found", "session": "t"}"#,
        ] {
            r.add(serde_json::from_str(line).unwrap());
        }
        assert_eq!(r.module.len(), 1);
        let t = &r.sessions["t"];
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.status.as_deref(), Some("SKIPPED"));
    }

    #[test]
    fn launcher_is_posix_sh() {
        let d = tempfile::tempdir().unwrap();
        write_files(d.path(), None).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(d.path().join(LAUNCHER_FILE))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
