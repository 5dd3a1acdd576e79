//! Usage errors: what the user must change (a flag, an argument, a config field, a
//! file, a session, an environment variable), named by a field of its own, and why.
//! Below every module that reports one; `Error::Usage` (error.rs) and
//! `OutputError::Usage` (outputs) wrap it, both with exit code 2.

use std::path::PathBuf;

/// What the user must change: a flag, an argument, a config field, a file, a session or
/// an environment variable, named by its own field; `why` says what is wrong with it and
/// what to do instead. Exit code 2 wherever it is wrapped.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A command-line flag, with the value given when that is what is wrong:
    /// "--platform `linux/x`: ...".
    #[error("{flag}{}: {why}", value.as_ref().map(|v| format!(" `{v}`")).unwrap_or_default())]
    Flag {
        flag: &'static str,
        value: Option<String>,
        why: String,
    },
    /// A flag given without the one it needs: "--username needs --password-stdin: ...".
    #[error("{flag} needs {needs}: {why}")]
    Requires {
        flag: &'static str,
        needs: &'static str,
        why: String,
    },
    /// A command's positional argument: "verify IMAGE `x`: ...". `command` is the
    /// command as typed, with the flag that makes the argument wrong when one does
    /// (`inspect --sbom`).
    #[error("{command} {name} `{value}`: {why}")]
    Argument {
        command: &'static str,
        name: &'static str,
        value: String,
        why: String,
    },
    /// A config field whose value the command cannot work with (checked outside config
    /// parsing): "venvimg.yaml: `builder: local`, which ...".
    #[error("{}: `{field}: {value}`, {why}", file.display())]
    Field {
        file: PathBuf,
        field: &'static str,
        value: String,
        why: String,
    },
    /// Config fields still holding the placeholders `venvimg init` wrote.
    #[error("{}: {} still hold{} the placeholder `venvimg init` wrote (registry.example.com/change-me/...); nothing was sent\n  hint: set {} in the file (or rerun `venvimg init --repository REF --base REF --force`){}",
        file.display(),
        fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(" and "),
        if fields.len() == 1 { "s" } else { "" },
        if fields.len() == 1 { "it" } else { "them" },
        if fields.contains(&"repository") { "; --repository or VENVIMG_REPOSITORY overrides `repository`" } else { "" })]
    Placeholders {
        file: PathBuf,
        fields: Vec<&'static str>,
    },
    /// A file or folder: one to create, remove or move, or one that holds the wrong thing.
    #[error("{}: {why}", path.display())]
    Path { path: PathBuf, why: String },
    /// A session of the project's: "session `tests`: ...".
    #[error("session `{name}`: {why}")]
    Session { name: String, why: String },
    /// An environment variable: "DOCKER_HOST: ...". Never its value, which may hold a
    /// user name or a secret.
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_names_what_to_change() {
        let cases: Vec<(UsageError, &str)> = vec![
            (
                UsageError::Flag {
                    flag: "--platform",
                    value: Some("linux/s390x".into()),
                    why: "venvimg.yaml builds for linux/amd64 only".into(),
                },
                "--platform `linux/s390x`: venvimg.yaml builds for linux/amd64 only",
            ),
            (
                UsageError::Flag {
                    flag: "--ci-output",
                    value: None,
                    why: "neither GITHUB_OUTPUT nor FORGEJO_OUTPUT is set".into(),
                },
                "--ci-output: neither GITHUB_OUTPUT nor FORGEJO_OUTPUT is set",
            ),
            (
                UsageError::Requires {
                    flag: "--username",
                    needs: "--password-stdin",
                    why: "give both for reg:5000".into(),
                },
                "--username needs --password-stdin: give both for reg:5000",
            ),
            (
                UsageError::Argument {
                    command: "inspect --sbom",
                    name: "IMAGE",
                    value: "oci:out".into(),
                    why: "SBOMs are referrers in a registry".into(),
                },
                "inspect --sbom IMAGE `oci:out`: SBOMs are referrers in a registry",
            ),
            (
                UsageError::Field {
                    file: PathBuf::from("ci/venvimg.yaml"),
                    field: "compression",
                    value: "zstd".into(),
                    why: "but Docker 20.10 cannot pull zstd layers".into(),
                },
                "ci/venvimg.yaml: `compression: zstd`, but Docker 20.10 cannot pull zstd layers",
            ),
            (
                UsageError::Path {
                    path: PathBuf::from("venvimg.yaml"),
                    why: "already exists; pass --force to overwrite it".into(),
                },
                "venvimg.yaml: already exists; pass --force to overwrite it",
            ),
            (
                UsageError::Session {
                    name: "tests".into(),
                    why: "still a miss after its build".into(),
                },
                "session `tests`: still a miss after its build",
            ),
            (
                UsageError::Env {
                    var: "DOCKER_HOST",
                    why: "names a tcp:// daemon".into(),
                },
                "DOCKER_HOST: names a tcp:// daemon",
            ),
        ];
        for (usage, want) in cases {
            assert_eq!(usage.to_string(), want);
        }
    }

    #[test]
    fn placeholders_name_each_field_and_what_overrides_it() {
        let one = UsageError::Placeholders {
            file: PathBuf::from("venvimg.yaml"),
            fields: vec!["base"],
        }
        .to_string();
        assert!(
            one.starts_with(
                "venvimg.yaml: `base` still holds the placeholder `venvimg init` wrote"
            ),
            "{one}"
        );
        assert!(one.contains("hint: set it in the file"), "{one}");
        assert!(!one.contains("VENVIMG_REPOSITORY"), "{one}");
        let both = UsageError::Placeholders {
            file: PathBuf::from("venvimg.yaml"),
            fields: vec!["repository", "base"],
        }
        .to_string();
        assert!(
            both.contains("`repository` and `base` still hold the placeholder"),
            "{both}"
        );
        assert!(both.contains("hint: set them in the file"), "{both}");
        assert!(
            both.ends_with("; --repository or VENVIMG_REPOSITORY overrides `repository`"),
            "{both}"
        );
    }
}
