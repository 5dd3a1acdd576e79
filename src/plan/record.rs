//! The record venvimg writes into every image it makes (the `dev.venvimg.record` label of
//! its config): per session, the key document, what the build read and ran, python and
//! the installed packages. One typed struct for the writer (build) and the readers
//! (hits, `plan --explain`, `inspect`).

use serde::{Deserialize, Serialize};

use super::KeyDocument;
use crate::model::{Digest, Key, Recorded, Tag, VenvName};
use crate::python::inputs::{Discovered, RecordedCommand};
use crate::python::venv::Package;

pub const RECORD_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    #[serde(default)]
    pub version: u32,
    pub sessions: Vec<SessionRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub digest: Recorded<Digest>,
    pub size: u64,
    /// `skeleton`, `dist-numpy`, `bucket-3`; absent for a single-layer venv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The distributions the layer holds, or `"*"` for the whole venv.
    pub distributions: serde_json::Value,
}

/// Read tolerantly (every field defaults): `inspect` shows what an older or hand-made
/// record holds rather than refusing it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct SessionRecord {
    pub session: String,
    pub venv_dir: Recorded<VenvName>,
    pub key: Recorded<Key>,
    pub tag: Recorded<Tag>,
    /// The key document (named `inputs` since the first images venvimg made).
    pub inputs: KeyDocument,
    pub python: String,
    pub backend: String,
    pub interpreter: String,
    pub packages: Vec<Package>,
    /// One per layer of the session (several with `layers: per-distribution`); absent in
    /// the records of the first images.
    #[serde(default)]
    pub layers: Vec<LayerRecord>,
    /// The commands the build ran (secrets masked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<RecordedCommand>,
    /// What the build read, when it differs from what the plan's dry run foresaw (then
    /// each plan checks these files too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_read: Option<Discovered>,
    /// What venvimg saw but could not key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl ImageRecord {
    pub fn to_label(&self) -> String {
        serde_json::to_string(self).expect("record serialises")
    }

    /// Parse the label of an image config (`config.Labels[dev.venvimg.record]`).
    pub fn from_config(config_json: &[u8]) -> Option<ImageRecord> {
        let v: serde_json::Value = serde_json::from_slice(config_json).ok()?;
        let raw = v["config"]["Labels"][crate::image::RECORD_LABEL].as_str()?;
        serde_json::from_str(raw).ok()
    }
}
