//! `venvimg plan --explain SESSION`: why a session hits or misses. On a miss, the images
//! the repository holds for earlier keys of that session are read back (their labels keep
//! the key document), and the closest one is compared field by field with today's.

use std::collections::BTreeMap;

use oci_client::Reference;
use serde_json::Value;

use super::{KeyDocument, Plan, SessionPlan, Status};
use crate::config::Config;
use crate::error::Error;
use crate::image;
use crate::model::{Digest, Key, Tag};
use crate::python::inputs::Discovered;
use crate::python::locked;
use crate::registry::Registry;

/// How many earlier images of a session are compared at most (each costs two requests).
const MAX_CANDIDATES: usize = 30;

/// Why a session hits or misses: what `--explain` prints, as text or (`--json`) as is.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub session: String,
    /// `hit` or `miss`.
    pub status: &'static str,
    pub key: Key,
    pub tag: Tag,
    /// `registry/name:tag`.
    pub image: String,
    /// The manifest digest of a hit.
    pub digest: Option<String>,
    /// The Python nox finds missing in the base image (the session is skipped there).
    pub missing_python: Option<String>,
    /// An image exists at this tag, but these files its build read changed since.
    pub changed_at_tag: Vec<String>,
    /// The closest earlier image of the session, and what changed since it.
    pub closest_earlier: Option<Earlier>,
    /// `registry/name` searched for earlier images.
    pub repository: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Earlier {
    pub tag: String,
    pub changes: Vec<String>,
}

impl Explanation {
    pub fn text(&self) -> String {
        let mut out = format!(
            "session {}: {} (key {}, tag {})\n",
            self.session,
            self.status,
            self.key.short(),
            self.tag
        );
        if let Some(digest) = &self.digest {
            out.push_str(&format!(
                "  the image for this key exists: {}@{digest}\n",
                self.image
            ));
            return out;
        }
        if let Some(python) = &self.missing_python {
            out.push_str(&format!(
                "  nox skips it in the base image: no Python {python} there\n"
            ));
        }
        if !self.changed_at_tag.is_empty() {
            out.push_str("  an image exists at this tag, but what its build read changed since:\n");
            for c in &self.changed_at_tag {
                out.push_str(&format!("    {c}\n"));
            }
            return out;
        }
        match &self.closest_earlier {
            None => out.push_str(&format!(
                "  no earlier image of this session in {}: first build\n",
                self.repository
            )),
            Some(e) => {
                out.push_str(&format!(
                    "  closest earlier image: tag {}\n  changed since:\n",
                    e.tag
                ));
                for c in &e.changes {
                    out.push_str(&format!("    {c}\n"));
                }
            }
        }
        out
    }
}

pub async fn explain(
    config: &Config,
    registry: &Registry,
    plan: &Plan,
    session: &str,
) -> Result<Explanation, Error> {
    let s = plan
        .sessions
        .iter()
        .find(|s| s.config.name == session || s.venv_dir == session)
        .ok_or_else(|| Error::UnknownSession {
            file: config.file.clone(),
            name: session.to_string(),
            available: plan
                .sessions
                .iter()
                .map(|s| s.config.name.clone())
                .collect(),
            functions: Vec::new(),
        })?;
    let mut e = Explanation {
        session: s.config.name.clone(),
        status: match &s.status {
            Status::Hit { .. } => "hit",
            Status::Miss => "miss",
        },
        key: s.key.clone(),
        tag: s.tag.clone(),
        image: s.image.whole(),
        digest: match &s.status {
            Status::Hit { digest } => Some(digest.to_string()),
            Status::Miss => None,
        },
        missing_python: s.problem.as_ref().map(|p| match p {
            super::Problem::MissingInterpreter { python } => python.clone(),
        }),
        changed_at_tag: s.changed.clone(),
        closest_earlier: None,
        repository: config.repository_path(),
    };
    if e.digest.is_some() || !e.changed_at_tag.is_empty() {
        return Ok(e);
    }
    let earlier = earlier_documents(registry, s).await?;
    e.closest_earlier = earlier
        .into_iter()
        .map(|(tag, doc)| {
            let changes = differences(&doc, &s.document);
            Earlier { tag, changes }
        })
        .min_by_key(|e| e.changes.len());
    Ok(e)
}

/// Key documents of this session's other tags in the repository.
async fn earlier_documents(
    registry: &Registry,
    s: &SessionPlan,
) -> Result<Vec<(String, KeyDocument)>, Error> {
    let repo = Reference::with_tag(
        s.image.resolve_registry().to_string(),
        s.image.repository().to_string(),
        "latest".into(),
    );
    let auth = registry.auth(&repo);
    let tags = match registry.client().list_tags(&repo, &auth, None, None).await {
        Ok(t) => t.tags,
        Err(e) if crate::registry::status_of(&e) == Some(404) => Vec::new(),
        Err(e) => return Err(registry.explain(&repo, "list tags of", e).into()),
    };
    let prefix = format!("{}-", s.venv_dir);
    let mut candidates: Vec<String> = tags
        .into_iter()
        .filter(|t| {
            t != &s.tag
                && t.len() == prefix.len() + 16
                && t.starts_with(&prefix)
                && t[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    candidates.sort();
    candidates.truncate(MAX_CANDIDATES);
    let mut out = Vec::new();
    for tag in candidates {
        let r = Reference::with_tag(
            repo.resolve_registry().to_string(),
            repo.repository().to_string(),
            tag.clone(),
        );
        let (bytes, _) = registry.manifest_raw(&r).await?;
        let Ok(manifest) = image::parse_manifest(&bytes) else {
            continue;
        };
        let config = registry
            .blob_bytes(
                &r,
                manifest.config().digest().as_ref(),
                manifest.config().size(),
            )
            .await?;
        if let Some(doc) = record_document(&config, &s.config.name) {
            out.push((tag, doc));
        }
    }
    Ok(out)
}

/// The key document a venvimg image recorded for `session`.
pub fn record_document(config_json: &[u8], session: &str) -> Option<KeyDocument> {
    super::record::ImageRecord::from_config(config_json)?
        .sessions
        .into_iter()
        .find(|e| e.session == session)
        .map(|e| e.inputs)
}

fn short(s: &str) -> String {
    Digest::hex_part(s).chars().take(12).collect()
}

/// What changed between two key documents, one line each.
pub fn differences(old: &KeyDocument, new: &KeyDocument) -> Vec<String> {
    let mut out = Vec::new();
    let o = serde_json::to_value(old).unwrap_or_default();
    let n = serde_json::to_value(new).unwrap_or_default();
    for (field, nv) in n.as_object().into_iter().flatten() {
        if matches!(field.as_str(), "inputs" | "locked" | "discovered") {
            continue;
        }
        let ov = o.get(field).cloned().unwrap_or(Value::Null);
        if &ov != nv {
            out.push(format!("{field}: {} → {}", compact(&ov), compact(nv)));
        }
    }
    let old_inputs: BTreeMap<&str, &str> = old
        .inputs
        .iter()
        .map(|i| (i.path.as_str(), i.sha256.as_str()))
        .collect();
    let new_inputs: BTreeMap<&str, &str> = new
        .inputs
        .iter()
        .map(|i| (i.path.as_str(), i.sha256.as_str()))
        .collect();
    for (path, sha) in &new_inputs {
        match old_inputs.get(path) {
            None => out.push(format!("input {path}: added")),
            Some(o) if o != sha => out.push(format!(
                "input {path}: sha256 {} → {}",
                short(o),
                short(sha)
            )),
            _ => {}
        }
    }
    for path in old_inputs.keys() {
        if !new_inputs.contains_key(path) {
            out.push(format!("input {path}: no longer an input"));
        }
    }
    match (&old.discovered, &new.discovered) {
        (Some(a), Some(b)) => out.extend(discovered_differences(a, b)),
        (None, Some(_)) => out.push("now keyed by what its installs read (a dry run)".into()),
        (Some(_), None) => out.push("no longer keyed by a dry run".into()),
        (None, None) => {}
    }
    match (&old.locked, &new.locked) {
        (Some(a), Some(b)) => {
            let (pa, pb) = (locked::pinned(&a.packages), locked::pinned(&b.packages));
            for (name, v) in &pb {
                match pa.get(name) {
                    None => out.push(format!("package {name}: added at {v}")),
                    Some(o) if o != v => out.push(format!("package {name}: {o} → {v}")),
                    _ => {}
                }
            }
            for (name, v) in &pa {
                if !pb.contains_key(name) {
                    out.push(format!("package {name}: removed (was {v})"));
                }
            }
            // Lines that are not `name==version` (editable project, URLs, markers).
            for l in b.packages.iter().filter(|l| !a.packages.contains(l)) {
                if !l.contains("==") {
                    out.push(format!("requirement added: {l}"));
                }
            }
            if a.groups != b.groups || a.only_groups != b.only_groups || a.extras != b.extras {
                out.push("locked selection (groups/extras) changed".into());
            }
        }
        (None, Some(_)) => out.push("now keyed by its locked package set (locked: added)".into()),
        (Some(_), None) => out.push("no longer keyed by a locked package set".into()),
        (None, None) => {}
    }
    out
}

/// What changed in what the installs read: files (named, with the way they are reached),
/// lock entries (package by package), commands, floating requirements.
fn discovered_differences(old: &Discovered, new: &Discovered) -> Vec<String> {
    let mut out = Vec::new();
    let files = |d: &Discovered| -> BTreeMap<String, (String, String)> {
        d.files
            .iter()
            .chain(d.generated.iter())
            .chain(d.noxfile_reads.iter())
            .map(|f| (f.path.clone(), (f.sha256.clone(), f.via.clone())))
            .collect()
    };
    let (of, nf) = (files(old), files(new));
    for (path, (sha, via)) in &nf {
        match of.get(path) {
            None => out.push(format!("input {path}: now read ({via})")),
            Some((o, _)) if o != sha => out.push(format!(
                "input {path}: sha256 {} → {} ({via})",
                short(o),
                short(sha)
            )),
            _ => {}
        }
    }
    for path in of.keys() {
        if !nf.contains_key(path) {
            out.push(format!("input {path}: no longer read"));
        }
    }
    for l in &new.locks {
        let before = old
            .locks
            .iter()
            .find(|o| o.lock == l.lock && o.selection == l.selection);
        let Some(before) = before else {
            out.push(format!(
                "{} ({}): now installed from",
                l.lock,
                l.selection.join(" ")
            ));
            continue;
        };
        if before.sha256 == l.sha256 {
            continue;
        }
        let (pa, pb) = (
            locked::pinned(&before.packages),
            locked::pinned(&l.packages),
        );
        let mut named = false;
        for (name, v) in &pb {
            match pa.get(name) {
                None => out.push(format!("{}: package {name} added at {v}", l.lock)),
                Some(o) if o != v => out.push(format!("{}: package {name}: {o} → {v}", l.lock)),
                _ => continue,
            }
            named = true;
        }
        for (name, v) in &pa {
            if !pb.contains_key(name) {
                out.push(format!("{}: package {name} removed (was {v})", l.lock));
                named = true;
            }
        }
        if !named {
            out.push(format!(
                "{} ({}): the entries it installs changed (sources or hashes)",
                l.lock,
                l.selection.join(" ")
            ));
        }
    }
    if old.commands != new.commands {
        out.push(
            "the commands the session runs changed (the noxfile, or what it computes them from)"
                .into(),
        );
    }
    for f in new.floating.iter().filter(|f| !old.floating.contains(f)) {
        out.push(format!("floating: {f}"));
    }
    out
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) if s.starts_with(Digest::PREFIX) || s.len() == 64 => short(s),
        Value::String(s) => s.clone(),
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}
