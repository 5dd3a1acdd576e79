//! Does uv.lock still answer pyproject.toml? uv records, in the lock, the requirements it
//! resolved for the project (`[package.metadata]` of the project's own entry, or
//! `[manifest]` for a project without `[project]`); `uv lock --check` starts by comparing
//! them with pyproject.toml. The same comparison here needs no uv, no network and no
//! container: a requirement added, dropped or re-specified without `uv lock` (e.g.
//! `uv add --frozen`) is found before an image is built from a lock that lacks it.
//!
//! Conservative on purpose: names, extras, which section and version specifiers are
//! compared; markers, sources, `requires-python` (uv stores the simplified range) and
//! dynamic metadata are not (a difference there is left to `uv lock --check`), so what
//! this reports is stale.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::inputs::{group_requirements, strings};
use super::installs::normalize;

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// Every compared requirement matches.
    Matches,
    /// What differs, one line each.
    Stale(Vec<String>),
    /// Not compared, and why (unreadable files, dynamic dependencies, a workspace).
    Unchecked(String),
}

/// `None` when the project has no uv.lock.
pub fn check(project_dir: &Path) -> Option<LockState> {
    let lock_path = project_dir.join("uv.lock");
    let lock = fs_err::read_to_string(&lock_path).ok()?;
    let pyproject = match fs_err::read_to_string(project_dir.join("pyproject.toml")) {
        Ok(p) => p,
        Err(e) => return Some(LockState::Unchecked(format!("pyproject.toml: {e}"))),
    };
    Some(compare(&pyproject, &lock))
}

/// One requirement's place: which section, the normalised name, its extras.
type Slot = (String, String, Vec<String>);

/// Each requirement's place and the specifiers asked there.
type Specs = BTreeMap<Slot, Vec<Option<String>>>;

/// pyproject.toml against uv.lock (their texts).
pub fn compare(pyproject: &str, lock: &str) -> LockState {
    let py: toml::Table = match toml::from_str(pyproject) {
        Ok(t) => t,
        Err(e) => return LockState::Unchecked(format!("pyproject.toml does not parse: {e}")),
    };
    let lk: toml::Table = match toml::from_str(lock) {
        Ok(t) => t,
        Err(e) => return LockState::Unchecked(format!("uv.lock does not parse: {e}")),
    };
    let uv = py
        .get("tool")
        .and_then(|t| t.get("uv"))
        .and_then(|t| t.as_table());
    if uv.is_some_and(|u| u.contains_key("workspace")) {
        return LockState::Unchecked("a uv workspace (its members are not compared)".into());
    }
    // Packages with a `[tool.uv.sources]` entry: the lock records the source, not the
    // specifier, so only their presence is compared.
    let sourced: HashSet<String> = uv
        .and_then(|u| u.get("sources"))
        .and_then(|s| s.as_table())
        .map(|s| s.keys().map(|k| normalize(k)).collect())
        .unwrap_or_default();

    // What pyproject.toml asks for.
    let mut wanted = Specs::new();
    for (group, reqs) in &expand_groups(&py) {
        for r in reqs {
            if let Some(req) = parse_requirement(r) {
                add(&mut wanted, format!("group `{group}`"), req);
            }
        }
    }
    let locked = match py.get("project").and_then(|p| p.as_table()) {
        Some(project) => match project_requirements(project, &lk, &mut wanted) {
            Ok(locked) => locked,
            Err(state) => return state,
        },
        None => Locked {
            groups: lk
                .get("manifest")
                .and_then(|m| m.get("dependency-groups"))
                .cloned(),
            dist: None,
        },
    };

    let out = differences(&wanted, &locked.found(), &sourced);
    if out.is_empty() {
        LockState::Matches
    } else {
        LockState::Stale(out)
    }
}

/// What uv.lock recorded as resolved for: the dependency groups and (for a project)
/// the distribution's own requirements, as the lock's raw values.
struct Locked {
    groups: Option<toml::Value>,
    dist: Option<toml::Value>,
}

impl Locked {
    /// What uv.lock was made for, by place.
    fn found(&self) -> Specs {
        let mut found = Specs::new();
        for entry in self.dist.iter().flat_map(entries) {
            if let Some((mut slot, spec)) = lock_entry(entry) {
                slot.0 = match extra_of(entry) {
                    Some(extra) => format!("optional dependencies `{extra}`"),
                    None => "dependencies".into(),
                };
                found.entry(slot).or_default().push(spec);
            }
        }
        if let Some(groups) = self.groups.as_ref().and_then(|g| g.as_table()) {
            for (group, list) in groups {
                for entry in entries(list) {
                    if let Some((mut slot, spec)) = lock_entry(entry) {
                        slot.0 = format!("group `{group}`");
                        found.entry(slot).or_default().push(spec);
                    }
                }
            }
        }
        found
    }
}

/// A `[project]`'s dependencies and optional dependencies into `wanted`, and the
/// project's entry in uv.lock; `Err` is the verdict when they cannot be compared
/// (dynamic dependencies) or the lock has no entry for the project.
fn project_requirements(
    project: &toml::Table,
    lk: &toml::Table,
    wanted: &mut Specs,
) -> Result<Locked, LockState> {
    let dynamic: Vec<&str> = project
        .get("dynamic")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if dynamic.contains(&"dependencies") || dynamic.contains(&"optional-dependencies") {
        return Err(LockState::Unchecked(
            "pyproject.toml's dependencies are dynamic (built, not declared)".into(),
        ));
    }
    for r in strings(project.get("dependencies")) {
        if let Some(req) = parse_requirement(&r) {
            add(wanted, "dependencies".into(), req);
        }
    }
    if let Some(opt) = project
        .get("optional-dependencies")
        .and_then(|o| o.as_table())
    {
        for (extra, list) in opt {
            for r in strings(Some(list)) {
                if let Some(req) = parse_requirement(&r) {
                    add(
                        wanted,
                        format!("optional dependencies `{}`", normalize(extra)),
                        req,
                    );
                }
            }
        }
    }
    let name = project
        .get("name")
        .and_then(|n| n.as_str())
        .map(normalize)
        .unwrap_or_default();
    let Some(entry) = lk.get("package").and_then(|p| p.as_array()).and_then(|a| {
        a.iter()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
    }) else {
        return Err(LockState::Stale(vec![format!(
            "uv.lock has no entry for the project `{name}`"
        )]));
    };
    // `requires-python` is not compared: uv records the range it resolved for
    // (`~=3.11` becomes `>=3.11, <4`), not the text of pyproject.toml.
    let meta = entry.get("metadata");
    Ok(Locked {
        groups: meta.and_then(|m| m.get("requires-dev")).cloned(),
        dist: meta.and_then(|m| m.get("requires-dist")).cloned(),
    })
}

/// One line per difference: asked but not locked, locked for other specifiers
/// (not for `sourced` packages), locked but no longer asked.
fn differences(wanted: &Specs, found: &Specs, sourced: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let show = |slot: &Slot| {
        if slot.2.is_empty() {
            format!("`{}`", slot.1)
        } else {
            format!("`{}[{}]`", slot.1, slot.2.join(","))
        }
    };
    for (slot, specs) in wanted {
        match found.get(slot) {
            None => out.push(format!(
                "{} is in pyproject.toml's {} but not in uv.lock",
                show(slot),
                slot.0
            )),
            Some(have) if !sourced.contains(&slot.1) => {
                let mut a = specs.clone();
                let mut b = have.clone();
                a.sort();
                b.sort();
                if a != b {
                    out.push(format!(
                        "{} in {}: pyproject.toml asks {}, uv.lock was made for {}",
                        show(slot),
                        slot.0,
                        describe(&a),
                        describe(&b)
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for slot in found.keys().filter(|s| !wanted.contains_key(*s)) {
        out.push(format!(
            "{} is in uv.lock's {} but no longer in pyproject.toml",
            show(slot),
            slot.0
        ));
    }
    out
}

fn describe(specs: &[Option<String>]) -> String {
    specs
        .iter()
        .map(|s| match s {
            Some(s) if !s.is_empty() => s.clone(),
            _ => "any version".into(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

fn add(map: &mut BTreeMap<Slot, Vec<Option<String>>>, section: String, req: Requirement) {
    map.entry((section, req.name, req.extras))
        .or_default()
        .push(req.specifier);
}

fn entries(v: &toml::Value) -> impl Iterator<Item = &toml::Value> {
    v.as_array().into_iter().flatten()
}

/// A lock requirement as a slot (section filled in by the caller) and its specifier.
fn lock_entry(entry: &toml::Value) -> Option<(Slot, Option<String>)> {
    let name = normalize(entry.get("name")?.as_str()?);
    let mut extras: Vec<String> = entry
        .get("extras")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).map(normalize).collect())
        .unwrap_or_default();
    extras.sort();
    extras.dedup();
    let spec = entry
        .get("specifier")
        .and_then(|s| s.as_str())
        .map(normalize_specifier)
        .filter(|s| !s.is_empty());
    Some(((String::new(), name, extras), spec))
}

/// `extra == 'dev'` in a lock entry's marker: the optional dependency it belongs to.
fn extra_of(entry: &toml::Value) -> Option<String> {
    let marker = entry.get("marker")?.as_str()?;
    let at = marker.find("extra == ")?;
    let rest = &marker[at + "extra == ".len()..];
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let value = rest[1..].split(quote).next()?;
    Some(normalize(value))
}

/// `[dependency-groups]` with `include-group` expanded (as uv records them), plus uv's
/// legacy `[tool.uv] dev-dependencies`, which uv locks as the group `dev`.
fn expand_groups(py: &toml::Table) -> BTreeMap<String, Vec<String>> {
    let table = py.get("dependency-groups").and_then(|g| g.as_table());
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(groups) = table {
        for name in groups.keys() {
            out.entry(normalize(name))
                .or_default()
                .extend(group_requirements(groups, name));
        }
    }
    let legacy = strings(
        py.get("tool")
            .and_then(|t| t.get("uv"))
            .and_then(|u| u.get("dev-dependencies")),
    );
    if !legacy.is_empty() {
        out.entry("dev".into()).or_default().extend(legacy);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
struct Requirement {
    name: String,
    extras: Vec<String>,
    /// Normalised version specifier; `None` for a direct reference (`name @ url`).
    specifier: Option<String>,
}

/// A PEP 508 requirement's name, extras and specifier (the marker is not compared).
fn parse_requirement(s: &str) -> Option<Requirement> {
    let s = s.split(';').next()?.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let name = normalize(&s[..end]);
    let mut rest = s[end..].trim_start();
    let mut extras = Vec::new();
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']')?;
        extras = after[..close]
            .split(',')
            .map(|e| normalize(e.trim()))
            .filter(|e| !e.is_empty())
            .collect();
        extras.sort();
        extras.dedup();
        rest = after[close + 1..].trim_start();
    }
    let specifier = if rest.starts_with('@') {
        None
    } else {
        Some(normalize_specifier(rest)).filter(|s| !s.is_empty())
    };
    Some(Requirement {
        name,
        extras,
        specifier,
    })
}

/// `>= 1.0.0 , <2` → `<2,>=1` : no spaces or parentheses, clauses sorted, trailing `.0`
/// release segments dropped where PEP 440 says they do not matter (not for `~=`, `===`
/// or wildcards).
fn normalize_specifier(s: &str) -> String {
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')')
        .collect();
    let mut clauses: Vec<String> = compact
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|clause| {
            let op_len = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"]
                .iter()
                .find(|op| clause.starts_with(*op))
                .map(|op| op.len())
                .unwrap_or(0);
            let (op, version) = clause.split_at(op_len);
            let mut version = version.to_ascii_lowercase();
            if op != "~=" && op != "===" && version.chars().all(|c| c.is_ascii_digit() || c == '.')
            {
                while version.ends_with(".0") && version.matches('.').count() > 0 {
                    version.truncate(version.len() - 2);
                }
            }
            format!("{op}{version}")
        })
        .collect();
    clauses.sort();
    clauses.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYPROJECT: &str = r#"
[project]
name = "Lt_One"
version = "0.1"
requires-python = ">=3.11.0"
dependencies = ["packaging>=24.0.0, <26", "Pytest[testing] ; python_version >= '3.11'"]
[project.optional-dependencies]
Dev = ["pyflakes==3.2.0"]
[dependency-groups]
a = ["iniconfig"]
b = [{include-group = "a"}, "pluggy"]
[tool.uv]
dev-dependencies = ["colorama"]
"#;

    // What uv 0.13 wrote for PYPROJECT (trimmed to the parts compared).
    const LOCK: &str = r#"
version = 1
revision = 5
requires-python = ">=3.11.0"

[[package]]
name = "lt-one"
version = "0.1"
source = { editable = "." }

[package.metadata]
requires-dist = [
    { name = "packaging", specifier = ">=24.0.0,<26" },
    { name = "pyflakes", marker = "extra == 'dev'", specifier = "==3.2.0" },
    { name = "pytest", extras = ["testing"], marker = "python_full_version >= '3.11'" },
]
provides-extras = ["dev"]

[package.metadata.requires-dev]
a = [{ name = "iniconfig" }]
b = [
    { name = "iniconfig" },
    { name = "pluggy" },
]
dev = [{ name = "colorama" }]
"#;

    fn stale(py: &str, lock: &str) -> Vec<String> {
        match compare(py, lock) {
            LockState::Stale(r) => r,
            other => panic!("expected stale, got {other:?}"),
        }
    }

    #[test]
    fn what_uv_wrote_matches() {
        assert_eq!(compare(PYPROJECT, LOCK), LockState::Matches);
    }

    #[test]
    fn a_requirement_added_without_relocking_is_stale() {
        let py = PYPROJECT.replace(r#"a = ["iniconfig"]"#, r#"a = ["iniconfig", "coverage"]"#);
        let r = stale(&py, LOCK);
        // In `a` and, through include-group, in `b`.
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[0].contains("`coverage` is in pyproject.toml's group `a`"),
            "{r:?}"
        );
    }

    #[test]
    fn a_dropped_or_respecified_requirement_is_stale() {
        let py = PYPROJECT.replace(r#"Dev = ["pyflakes==3.2.0"]"#, r#"Dev = ["pyflakes==3.3"]"#);
        let r = stale(&py, LOCK);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("asks ==3.3, uv.lock was made for ==3.2"),
            "{r:?}"
        );
        let py = PYPROJECT.replace(r#"dev-dependencies = ["colorama"]"#, "");
        let r = stale(&py, LOCK);
        assert!(
            r[0].contains("`colorama` is in uv.lock's group `dev` but no longer"),
            "{r:?}"
        );
        // uv records the range it resolved for, not the text: not compared.
        let py = PYPROJECT.replace(
            r#"requires-python = ">=3.11.0""#,
            r#"requires-python = "~=3.11""#,
        );
        assert_eq!(compare(&py, LOCK), LockState::Matches);
    }

    #[test]
    fn spelling_that_means_the_same_matches() {
        let py = PYPROJECT
            .replace("packaging>=24.0.0, <26", "packaging < 26 , >= 24")
            .replace("Pytest[testing]", "pytest [ Testing ]");
        assert_eq!(compare(&py, LOCK), LockState::Matches);
    }

    #[test]
    fn dynamic_dependencies_and_workspaces_are_not_compared() {
        let py = PYPROJECT.replace(
            "version = \"0.1\"",
            "version = \"0.1\"\ndynamic = [\"dependencies\"]",
        );
        assert!(matches!(compare(&py, LOCK), LockState::Unchecked(_)));
        let py = format!("{PYPROJECT}\n[tool.uv.workspace]\nmembers = [\"x\"]\n");
        assert!(matches!(compare(&py, LOCK), LockState::Unchecked(_)));
    }

    #[test]
    fn a_project_without_a_project_table_uses_the_manifest() {
        let py = "[dependency-groups]\na = [\"iniconfig\"]\n";
        let lock = "version = 1\nrequires-python = \">=3.11\"\n\n[manifest.dependency-groups]\na = [{ name = \"iniconfig\" }]\n";
        assert_eq!(compare(py, lock), LockState::Matches);
        let py = "[dependency-groups]\na = [\"iniconfig\", \"pytest\"]\n";
        assert!(stale(py, lock)[0].contains("`pytest`"));
    }

    /// Every uv.lock committed with the test fixtures was written by uv for its
    /// pyproject.toml: each must match.
    #[test]
    fn every_fixture_lock_matches_its_pyproject() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            let dir = entry.unwrap().path();
            // sample-bump is a uv.lock laid over sample's files.
            if !dir.join("pyproject.toml").exists() {
                continue;
            }
            if let Some(state) = check(&dir) {
                seen += 1;
                assert_eq!(state, LockState::Matches, "{}", dir.display());
            }
        }
        assert!(seen >= 5, "only {seen} fixtures with a uv.lock");
    }
}
