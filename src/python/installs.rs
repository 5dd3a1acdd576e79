//! What an install command reads and what it pins, from its argv (as nox ran it) and from
//! the requirement files it names: pip, `uv pip`, `uv sync` / `uv run`, pip-tools.
//!
//! Pure parsing: no file is opened here. [`super::inputs`] follows the files.

/// What a file argument of an install is to the installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `-r FILE`: requirements (followed: its `-r` / `-c` / path lines).
    Requirements,
    /// `-c FILE`, `--override FILE`, `--build-constraint FILE`: pins (followed too).
    Constraints,
    /// A project folder installed from its path (`.`, `-e ./plugins/foo`): its metadata
    /// files decide what it installs.
    Project,
    /// A local archive or wheel, or a `pyproject.toml` / `setup.cfg` named as a
    /// requirements source: its bytes.
    WholeFile,
    /// `--find-links DIR`: the distributions in that folder.
    FindLinks,
}

/// One file or folder an install names, as written, relative to where it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileArg {
    pub path: String,
    pub role: Role,
}

/// What one install command does, as far as keys care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    /// `pip install`, `uv pip install`, `uv sync`... for messages.
    pub tool: String,
    /// `pip` resolves path lines of requirement files against the working directory,
    /// uv against the file's folder.
    pub uv: bool,
    pub files: Vec<FileArg>,
    /// Requirement specifiers on the command line (`pytest`, `django==4.2`).
    pub requirements: Vec<String>,
    /// `--group NAME` / `--group PATH:NAME`: (pyproject path, group).
    pub groups: Vec<(String, String)>,
    /// `--extra NAME` with a pyproject requirements source; `--all-extras`.
    pub extras: Vec<String>,
    pub all_extras: bool,
    /// `uv sync` / `uv run`: installs from uv.lock; the project folder (`--project` /
    /// `--directory`, else the working directory).
    pub lock_project: Option<String>,
    /// `--no-deps`: only what is named is installed.
    pub no_deps: bool,
    /// `uv export` / `uv lock` / `uv pip compile`: reads the lock (or resolves) without
    /// installing; what it writes may feed a later install.
    pub reads_whole_lock: bool,
}

/// Options that take a value (and which of them name files), per tool. Long names only;
/// short ones are mapped first.
fn file_role(opt: &str) -> Option<Role> {
    Some(match opt {
        "--requirement" | "--requirements" | "--with-requirements" => Role::Requirements,
        "--constraint"
        | "--constraints"
        | "--override"
        | "--overrides"
        | "--build-constraint"
        | "--build-constraints" => Role::Constraints,
        "--editable" | "--with-editable" => Role::Project,
        "--find-links" => Role::FindLinks,
        _ => return None,
    })
}

fn long_name(short: &str) -> Option<&'static str> {
    Some(match short {
        "-r" => "--requirement",
        "-c" => "--constraint",
        "-e" => "--editable",
        "-f" => "--find-links",
        "-b" => "--build-constraint",
        "-i" => "--index-url",
        "-t" => "--target",
        "-C" => "--config-settings",
        "-p" => "--python",
        "-P" => "--upgrade-package",
        _ => return None,
    })
}

/// Options of pip and uv that take a value and name no file we key.
const VALUE_OPTIONS: &[&str] = &[
    "--index-url",
    "--extra-index-url",
    "--index",
    "--default-index",
    "--index-strategy",
    "--keyring-provider",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--python-platform",
    "--implementation",
    "--abi",
    "--src",
    "--upgrade-strategy",
    "--config-settings",
    "--config-setting",
    "--config-settings-package",
    "--global-option",
    "--no-binary",
    "--only-binary",
    "--no-binary-package",
    "--no-build-package",
    "--progress-bar",
    "--root-user-action",
    "--report",
    "--log",
    "--log-file",
    "--cache-dir",
    "--exists-action",
    "--trusted-host",
    "--allow-insecure-host",
    "--cert",
    "--client-cert",
    "--timeout",
    "--retries",
    "--proxy",
    "--python",
    "--use-feature",
    "--use-deprecated",
    "--resolution",
    "--prerelease",
    "--fork-strategy",
    "--exclude-newer",
    "--exclude-newer-package",
    "--link-mode",
    "--color",
    "--reinstall-package",
    "--refresh-package",
    "--upgrade-package",
    "--torch-backend",
    "--python-preference",
    "--no-install-package",
    "--package",
    "--no-extra",
    "--no-group",
    "--only-group",
    "--env-file",
    "--with",
    "--output-file",
    "--uploaded-prior-to",
    "--resume-retries",
    "--script",
    "--output-format",
    "--config-file",
];

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn is_python(prog: &str) -> bool {
    let b = basename(prog);
    b == "python"
        || b.strip_prefix("python").is_some_and(|v| {
            v.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == 't')
        })
        || b.starts_with("pypy")
}

/// Recognise an install command and parse it; `None` for anything else (pytest, a venv
/// creation...).
pub fn parse(argv: &[String]) -> Option<Install> {
    let prog = basename(argv.first()?);
    let rest = &argv[1..];
    if prog == "pip" || prog.starts_with("pip3") {
        return (rest.first()? == "install")
            .then(|| parse_pip_like("pip install", false, &rest[1..], false));
    }
    if is_python(prog) {
        // python [-I -E ...] -m pip install ...
        let m = rest.iter().position(|a| a == "-m")?;
        if rest[..m].iter().any(|a| !a.starts_with('-')) {
            return None;
        }
        let after = &rest[m + 1..];
        if after.first()? == "pip" && after.get(1)? == "install" {
            return Some(parse_pip_like("pip install", false, &after[2..], false));
        }
        return None;
    }
    if prog == "pip-sync" {
        return Some(parse_pip_like("pip-sync", false, rest, true));
    }
    if prog == "uv" || prog == "uvx" {
        let mut rest = rest;
        while let Some(first) = rest.first() {
            if !first.starts_with('-') {
                break;
            }
            let takes = VALUE_OPTIONS.contains(&first.as_str()) || long_name(first).is_some();
            let skip = if takes && !first.contains('=') { 2 } else { 1 };
            rest = &rest[skip.min(rest.len())..];
        }
        match rest.first().map(String::as_str)? {
            "pip" => match rest.get(1).map(String::as_str)? {
                "install" => {
                    return Some(parse_pip_like("uv pip install", true, &rest[2..], false))
                }
                "sync" | "compile" => {
                    let tool = format!("uv pip {}", rest[1]);
                    return Some(parse_pip_like(&tool, true, &rest[2..], true));
                }
                _ => return None,
            },
            "export" | "lock" => {
                let mut i = parse_pip_like(&format!("uv {}", rest[0]), true, &rest[1..], false);
                i.requirements.clear();
                i.lock_project = Some(i.lock_project.take().unwrap_or_else(|| ".".into()));
                i.reads_whole_lock = true;
                return Some(i);
            }
            "sync" | "run" => {
                let mut i = parse_pip_like(&format!("uv {}", rest[0]), true, &rest[1..], false);
                // `uv run CMD ARGS`: what follows the command is the command's own.
                i.requirements.clear();
                i.lock_project = Some(i.lock_project.take().unwrap_or_else(|| ".".into()));
                return Some(i);
            }
            _ => return None,
        }
    }
    None
}

/// `positional_files`: `uv pip sync` / `pip-sync` / `uv pip compile` take requirement files
/// as positionals.
fn parse_pip_like(tool: &str, uv: bool, args: &[String], positional_files: bool) -> Install {
    let mut out = Install {
        tool: tool.to_string(),
        uv,
        ..Install::default()
    };
    let is_run = tool == "uv run";
    let mut i = 0;
    while i < args.len() {
        let tok = &args[i];
        i += 1;
        if tok == "--" {
            if is_run {
                break;
            }
            continue;
        }
        if !tok.starts_with('-') || tok == "-" {
            if is_run {
                break; // the command to run
            }
            if positional_files {
                out.files.push(FileArg {
                    path: tok.clone(),
                    role: Role::Requirements,
                });
            } else {
                classify_positional(tok, &mut out);
            }
            continue;
        }
        // Split `--opt=value`, `-rFILE`, `-e.`.
        let (name, mut value): (String, Option<String>) = if let Some((n, v)) = tok.split_once('=')
        {
            (n.to_string(), Some(v.to_string()))
        } else if !tok.starts_with("--") && tok.len() > 2 && tok.is_char_boundary(2) {
            (tok[..2].to_string(), Some(tok[2..].to_string()))
        } else {
            (tok.clone(), None)
        };
        let long = long_name(&name).map(str::to_string).unwrap_or(name);
        match long.as_str() {
            "--no-deps" => out.no_deps = true,
            "--all-extras" => out.all_extras = true,
            "--project" | "--directory" => {
                let v = take(&mut value, args, &mut i);
                if let Some(v) = v {
                    out.lock_project = Some(match out.lock_project.take() {
                        // --directory then --project: the project is relative to it.
                        Some(d) if long == "--project" => format!("{d}/{v}"),
                        _ => v,
                    });
                }
            }
            "--group" => {
                if let Some(v) = take(&mut value, args, &mut i) {
                    // pip: `[PATH:]GROUP`; uv: GROUP from ./pyproject.toml.
                    let (path, group) = match v.rsplit_once(':') {
                        Some((p, g)) if !uv => (p.to_string(), g.to_string()),
                        _ => ("pyproject.toml".to_string(), v),
                    };
                    out.groups.push((path, group));
                }
            }
            "--extra" => {
                if let Some(v) = take(&mut value, args, &mut i) {
                    out.extras.push(v);
                }
            }
            other => {
                if let Some(role) = file_role(other) {
                    if let Some(v) = take(&mut value, args, &mut i) {
                        if role == Role::Project {
                            let (path, extras) = split_extras(&v);
                            if looks_like_path(path) {
                                out.files.push(FileArg {
                                    path: path.to_string(),
                                    role,
                                });
                                out.extras.extend(extras);
                            } else {
                                // `-e git+https://...#egg=x`: from the network.
                                out.requirements.push(v);
                            }
                        } else if role == Role::FindLinks && v.contains("://") {
                            // an index page: nothing local
                        } else {
                            out.files.push(FileArg { path: v, role });
                        }
                    }
                } else if VALUE_OPTIONS.contains(&other) && value.is_none() {
                    i += 1; // skip its value
                }
            }
        }
    }
    out
}

fn take(value: &mut Option<String>, args: &[String], i: &mut usize) -> Option<String> {
    if let Some(v) = value.take() {
        return Some(v);
    }
    let v = args.get(*i).cloned();
    *i += 1;
    v
}

fn classify_positional(tok: &str, out: &mut Install) {
    let (path, extras) = split_extras(tok);
    if looks_like_path(path) {
        let p = path.strip_prefix("file://").unwrap_or(path);
        let role = if is_archive(p) || is_metadata_file(p) {
            Role::WholeFile
        } else {
            Role::Project
        };
        out.files.push(FileArg {
            path: p.to_string(),
            role,
        });
        out.extras.extend(extras);
    } else {
        out.requirements.push(tok.to_string());
    }
}

/// `path[extra1,extra2]` → (path, extras).
pub fn split_extras(s: &str) -> (&str, Vec<String>) {
    if let Some(open) = s.rfind('[') {
        if s.ends_with(']') && !s[..open].is_empty() {
            let extras = s[open + 1..s.len() - 1]
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            return (&s[..open], extras);
        }
    }
    (s, Vec::new())
}

/// How pip tells a path from a requirement name: a separator, a leading dot, a file URL,
/// an archive suffix.
pub fn looks_like_path(s: &str) -> bool {
    if s.contains("://") && !s.starts_with("file:") {
        return false;
    }
    if s.contains(" @ ") || s.contains(';') {
        return false;
    }
    s == "."
        || s == ".."
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('/')
        || s.starts_with("file:")
        || s.starts_with('~')
        || (s.contains('/') && !s.contains(['=', '<', '>', '!', '~', ' ']))
        || is_archive(s)
}

fn is_archive(s: &str) -> bool {
    [".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz"]
        .iter()
        .any(|x| s.ends_with(x))
}

fn is_metadata_file(s: &str) -> bool {
    matches!(basename(s), "pyproject.toml" | "setup.cfg" | "setup.py")
}

/// One meaningful line of a requirements file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqLine {
    /// `-r FILE` / `-c FILE` (nested; relative to the including file).
    Include { path: String, role: Role },
    /// A project folder or archive (`-e ./x`, `./x[extra]`, `file:../y`).
    Path { path: String, role: Role },
    /// A requirement specifier (without its `--hash` options).
    Requirement { spec: String, hashed: bool },
    /// `--find-links DIR` (local).
    FindLinks(String),
}

/// Parse a requirements (or constraints) file: continuation lines joined, comments
/// dropped, options kept only where they name a file.
pub fn parse_requirements(text: &str) -> Vec<ReqLine> {
    let mut joined: Vec<String> = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = strip_comment(raw);
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        joined.push(std::mem::take(&mut cur));
    }
    if !cur.is_empty() {
        joined.push(cur);
    }
    let mut out = Vec::new();
    for line in joined {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        let first = toks[0];
        if first.starts_with('-') {
            let (name, value) = match first.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None if !first.starts_with("--")
                    && first.len() > 2
                    && first.is_char_boundary(2) =>
                {
                    (first[..2].to_string(), Some(first[2..].to_string()))
                }
                None => (first.to_string(), toks.get(1).map(|s| s.to_string())),
            };
            let long = long_name(&name).unwrap_or(name.as_str());
            let Some(value) = value else { continue };
            match long {
                "--requirement" | "--requirements" => out.push(ReqLine::Include {
                    path: value,
                    role: Role::Requirements,
                }),
                "--constraint" | "--constraints" => out.push(ReqLine::Include {
                    path: value,
                    role: Role::Constraints,
                }),
                "--editable" => {
                    let (p, _) = split_extras(&value);
                    if looks_like_path(p) {
                        out.push(ReqLine::Path {
                            path: p.to_string(),
                            role: Role::Project,
                        });
                    } else {
                        out.push(ReqLine::Requirement {
                            spec: value,
                            hashed: false,
                        });
                    }
                }
                "--find-links" if !value.contains("://") => out.push(ReqLine::FindLinks(value)),
                _ => {}
            }
            continue;
        }
        let hashed = toks.iter().any(|t| t.starts_with("--hash"));
        let spec: Vec<&str> = toks
            .iter()
            .copied()
            .take_while(|t| !t.starts_with("--"))
            .collect();
        let spec = spec.join(" ");
        let (p, _) = split_extras(&spec);
        if looks_like_path(p) {
            let p = p.strip_prefix("file://").unwrap_or(p);
            let p = p.strip_prefix("file:").unwrap_or(p);
            out.push(ReqLine::Path {
                path: p.to_string(),
                role: if is_archive(p) {
                    Role::WholeFile
                } else {
                    Role::Project
                },
            });
        } else {
            out.push(ReqLine::Requirement { spec, hashed });
        }
    }
    out
}

/// A `#` starts a comment at the start of a line or after whitespace (pip's rule: a `#`
/// inside a URL fragment such as `#egg=` or `#sha256=` is not one).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// PEP 503 name normalisation.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The distribution name of a PEP 508 requirement (normalised), if it has one.
pub fn requirement_name(spec: &str) -> Option<String> {
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(spec.len());
    let name = &spec[..end];
    (!name.is_empty()).then(|| normalize(name))
}

/// Does this requirement decide one exact artifact or version? `name==1.2`, `name===x`,
/// a URL with a hash, a VCS URL at a full commit. Ranges, bare names and wildcards float.
pub fn is_pinned(spec: &str, hashed: bool) -> bool {
    let spec = spec.split(';').next().unwrap_or("").trim();
    let Some(name) = requirement_name(spec) else {
        return false;
    };
    let _ = name;
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(spec.len());
    let mut rest = spec[end..].trim_start();
    if rest.starts_with('[') {
        rest = rest
            .find(']')
            .map(|j| rest[j + 1..].trim_start())
            .unwrap_or("");
    }
    if let Some(url) = rest.strip_prefix('@') {
        let url = url.trim();
        if url.contains("#sha256=") || hashed {
            return true;
        }
        // git+https://host/repo@<40 hex>
        return url
            .rsplit('@')
            .next()
            .map(|r| r.split('#').next().unwrap_or(r))
            .is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let rest = rest.trim_start_matches('(').trim_end_matches(')').trim();
    if let Some(v) = rest.strip_prefix("===") {
        return !v.trim().is_empty();
    }
    if let Some(v) = rest.strip_prefix("==") {
        let v = v.trim();
        return !v.is_empty() && !v.contains(',') && !v.contains('*');
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn recognises_installers() {
        let i = parse(&argv("uv pip install -r reqs/test.txt -c c.txt pytest -e.")).unwrap();
        assert_eq!(i.tool, "uv pip install");
        assert_eq!(
            i.files,
            vec![
                FileArg {
                    path: "reqs/test.txt".into(),
                    role: Role::Requirements
                },
                FileArg {
                    path: "c.txt".into(),
                    role: Role::Constraints
                },
                FileArg {
                    path: ".".into(),
                    role: Role::Project
                },
            ]
        );
        assert_eq!(i.requirements, vec!["pytest"]);

        let i = parse(&argv(
            "/opt/nox/x/bin/python -m pip install --requirement=a.txt ./plugins/foo[cli] --no-deps",
        ))
        .unwrap();
        assert_eq!(i.tool, "pip install");
        assert!(i.no_deps);
        assert_eq!(
            i.files[1],
            FileArg {
                path: "./plugins/foo".into(),
                role: Role::Project
            }
        );
        assert_eq!(i.extras, vec!["cli"]);

        let i = parse(&argv("uv sync --frozen --group test --project sub")).unwrap();
        assert_eq!(i.lock_project.as_deref(), Some("sub"));
        assert_eq!(i.groups, vec![("pyproject.toml".into(), "test".into())]);
        let i = parse(&argv("uv run --group lint ruff check .")).unwrap();
        assert_eq!(i.lock_project.as_deref(), Some("."));
        assert!(i.requirements.is_empty(), "{i:?}");

        let i = parse(&argv("uv pip sync requirements/lock.txt")).unwrap();
        assert_eq!(i.files[0].role, Role::Requirements);
        let i = parse(&argv(
            "python -m pip install --group tests/pyproject.toml:dev",
        ))
        .unwrap();
        assert_eq!(
            i.groups,
            vec![("tests/pyproject.toml".into(), "dev".into())]
        );

        assert!(parse(&argv("pytest -q")).is_none());
        assert!(parse(&argv("uv venv -p python3.11 /opt/nox/x")).is_none());
        assert!(parse(&argv("python -c print(1)")).is_none());
    }

    #[test]
    fn requirement_files() {
        let text = "# top\n-r base.txt\n--constraint ../c.txt\n-e ./plugins/foo\n\
                    pytest>=8 # comment\nsix==1.16.0 \\\n    --hash=sha256:abc\n\
                    ./wheels/x-1.0-py3-none-any.whl\nhttps://example.invalid/x.tar.gz#egg=x\n\
                    pkg @ https://example.invalid/p.zip#sha256=00\n";
        let lines = parse_requirements(text);
        assert_eq!(
            lines,
            vec![
                ReqLine::Include {
                    path: "base.txt".into(),
                    role: Role::Requirements
                },
                ReqLine::Include {
                    path: "../c.txt".into(),
                    role: Role::Constraints
                },
                ReqLine::Path {
                    path: "./plugins/foo".into(),
                    role: Role::Project
                },
                ReqLine::Requirement {
                    spec: "pytest>=8".into(),
                    hashed: false
                },
                ReqLine::Requirement {
                    spec: "six==1.16.0".into(),
                    hashed: true
                },
                ReqLine::Path {
                    path: "./wheels/x-1.0-py3-none-any.whl".into(),
                    role: Role::WholeFile
                },
                ReqLine::Requirement {
                    spec: "https://example.invalid/x.tar.gz#egg=x".into(),
                    hashed: false
                },
                ReqLine::Requirement {
                    spec: "pkg @ https://example.invalid/p.zip#sha256=00".into(),
                    hashed: false
                },
            ]
        );
    }

    #[test]
    fn pins() {
        assert!(is_pinned("pytest==8.3.5", false));
        assert!(is_pinned(
            "Django[argon2]==4.2 ; python_version >= '3.8'",
            false
        ));
        assert!(is_pinned("x===weird", false));
        assert!(!is_pinned("pytest", false));
        assert!(!is_pinned("pytest>=8", false));
        assert!(!is_pinned("pytest==8.*", false));
        assert!(!is_pinned("pytest==8,<9", false));
        assert!(is_pinned("pkg @ https://e.invalid/p.zip#sha256=00", false));
        assert!(is_pinned(
            "pkg @ git+https://e.invalid/r@0123456789abcdef0123456789abcdef01234567",
            false
        ));
        assert!(!is_pinned("pkg @ git+https://e.invalid/r@main", false));
        assert_eq!(
            requirement_name("Zope.Interface>=5").as_deref(),
            Some("zope-interface")
        );
    }
}
