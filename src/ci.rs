//! Where the session jobs of the CI this process runs in will see the checkout.
//!
//! A venv records the checkout path (editable installs, `direct_url.json`), so a job
//! image is built for one `workdir` and nox reuses it only there. The `images` job runs
//! in the same CI as its session jobs, so it can tell where they will check out; the
//! default `workdir` is that path, and a `workdir:` naming another one is found before
//! anything is built. Everything here reads the environment through a function, so the
//! rules are tested with a map.

/// The setting for runners configured otherwise (another `workdir_parent`, GitLab's
/// `GIT_CLONE_PATH`...): the path session jobs check out into.
pub const WORKDIR_VAR: &str = "VENVIMG_CI_WORKDIR";

/// The session jobs' checkout path and why venvimg thinks so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiCheckout {
    pub path: String,
    /// The CI, as a user names it (`GitHub Actions`...).
    pub ci: &'static str,
    /// Why that path, for `plan`'s line (`GitHub Actions container jobs check out there`).
    pub why: String,
}

/// A CI was recognised but its checkout path cannot be told (a variable it always sets
/// is missing or not absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undetermined {
    pub ci: &'static str,
    pub message: String,
}

fn on(v: Option<String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn clean(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_string()
    }
}

/// Detects the CI from `env` (a variable's value by name). `Ok(None)`: not in a CI venvimg
/// knows (the default `workdir` stays `/src`).
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<CiCheckout>, Undetermined> {
    if let Some(path) = non_empty(env(WORKDIR_VAR)) {
        if !path.starts_with('/') {
            return Err(Undetermined {
                ci: "VENVIMG_CI_WORKDIR",
                message: format!(
                    "{WORKDIR_VAR}=`{path}` is not an absolute path; set it to where your session jobs check the project out"
                ),
            });
        }
        return Ok(Some(CiCheckout {
            path: clean(&path),
            ci: "VENVIMG_CI_WORKDIR",
            why: format!("{WORKDIR_VAR} says session jobs check out there"),
        }));
    }
    let repository = non_empty(env("GITHUB_REPOSITORY"));
    // Forgejo's and Gitea's runners (forks of act) set GITHUB_ACTIONS and ACT too: they
    // are told apart by their own markers, first.
    if on(env("FORGEJO_ACTIONS")) || on(env("GITEA_ACTIONS")) {
        let ci = if on(env("FORGEJO_ACTIONS")) {
            "Forgejo Actions"
        } else {
            "Gitea Actions"
        };
        let Some(repository) = repository else {
            return Err(Undetermined {
                ci,
                message: format!("{ci} without GITHUB_REPOSITORY: cannot tell where session jobs check out; set {WORKDIR_VAR} or `workdir:`"),
            });
        };
        // A container job sees /<workdir_parent>/<owner>/<repo> itself; a host job's
        // workspace is a runner cache folder, so the runner's default parent is assumed.
        let own = non_empty(env("GITHUB_WORKSPACE")).filter(|w| {
            w.starts_with('/')
                && w.ends_with(&format!("/{repository}"))
                && !w.contains("/hostexecutor")
        });
        return Ok(Some(match own {
            Some(w) => CiCheckout {
                path: clean(&w),
                ci,
                why: format!("{ci} container jobs check out there (this job's GITHUB_WORKSPACE)"),
            },
            None => CiCheckout {
                path: format!("/workspace/{repository}"),
                ci,
                why: format!(
                    "{ci} container jobs check out there with the runner's default container.workdir_parent"
                ),
            },
        }));
    }
    if on(env("ACT")) {
        // act copies the checkout into each job container at its host path; a job on the
        // host (`-P LABEL=-self-hosted`) works in a copy under act's cache instead, and
        // nothing in its environment names the folder act was started in.
        return match non_empty(env("GITHUB_WORKSPACE")).filter(|w| w.starts_with('/')) {
            Some(w) if w.contains("/hostexecutor") => Err(Undetermined {
                ci: "act",
                message: format!(
                    "act runs this job on the host in a copy of the checkout ({w}), while its container jobs see the checkout at the folder act was started in; tell venvimg that folder: `act --env {WORKDIR_VAR}=$PWD ...`"
                ),
            }),
            Some(w) => Ok(Some(CiCheckout {
                path: clean(&w),
                ci: "act",
                why: "act's container jobs see the checkout at its host path".into(),
            })),
            None => Err(Undetermined {
                ci: "act",
                message: format!("act without an absolute GITHUB_WORKSPACE: cannot tell where session jobs check out; set {WORKDIR_VAR} or `workdir:`"),
            }),
        };
    }
    if on(env("GITHUB_ACTIONS")) {
        return Ok(github(env, repository));
    }
    if on(env("GITLAB_CI")) {
        return match non_empty(env("CI_PROJECT_DIR")).filter(|w| w.starts_with('/')) {
            Some(dir) => Ok(Some(CiCheckout {
                path: clean(&dir),
                ci: "GitLab CI",
                why: "GitLab clones into CI_PROJECT_DIR, the same path in every job".into(),
            })),
            None => Err(Undetermined {
                ci: "GitLab CI",
                message: format!(
                    "GitLab CI without an absolute CI_PROJECT_DIR: set {WORKDIR_VAR} or `workdir:`"
                ),
            }),
        };
    }
    // gitlab-ci-local (a .gitlab-ci.yml run on a workstation) says GITLAB_CI=false, but its
    // docker jobs work in CI_PROJECT_DIR as GitLab's do, and carry GCL_PROJECT_DIR_ON_HOST.
    if non_empty(env("GCL_PROJECT_DIR_ON_HOST")).is_some() {
        if let Some(dir) = non_empty(env("CI_PROJECT_DIR")).filter(|w| w.starts_with('/')) {
            return Ok(Some(CiCheckout {
                path: clean(&dir),
                ci: "gitlab-ci-local",
                why: "gitlab-ci-local's docker jobs work in CI_PROJECT_DIR, as GitLab's".into(),
            }));
        }
    }
    Ok(None)
}

/// GitHub mounts the runner's work folder (the parent of RUNNER_WORKSPACE) at `/__w` in
/// container jobs: `/home/runner/work/app/app` on the host is `/__w/app/app` there.
fn github(env: &dyn Fn(&str) -> Option<String>, repository: Option<String>) -> Option<CiCheckout> {
    const CI: &str = "GitHub Actions";
    let workspace = non_empty(env("GITHUB_WORKSPACE")).map(|w| clean(&w));
    let path = match (&workspace, non_empty(env("RUNNER_WORKSPACE"))) {
        (Some(w), _) if w.starts_with("/__w/") => Some(w.clone()),
        (Some(w), Some(rw)) => {
            let rw = clean(&rw);
            let work = std::path::Path::new(&rw).parent()?.to_path_buf();
            std::path::Path::new(w)
                .strip_prefix(&work)
                .ok()
                .map(|rel| format!("/__w/{}", rel.display()))
        }
        _ => None,
    }
    .or_else(|| {
        let name = repository?.rsplit('/').next()?.to_string();
        Some(format!("/__w/{name}/{name}"))
    })?;
    Some(CiCheckout {
        path,
        ci: CI,
        why: "GitHub Actions container jobs check out there".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn at(vars: &[(&str, &str)]) -> Result<Option<CiCheckout>, Undetermined> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(&|k| map.get(k).cloned())
    }

    fn path(vars: &[(&str, &str)]) -> String {
        at(vars).unwrap().expect("a CI").path
    }

    #[test]
    fn outside_ci_nothing_is_found() {
        assert_eq!(at(&[]).unwrap(), None);
        assert_eq!(at(&[("CI", "true"), ("HOME", "/root")]).unwrap(), None);
        assert_eq!(at(&[("GITHUB_ACTIONS", "false")]).unwrap(), None);
    }

    #[test]
    fn github_host_job_maps_its_workspace_under_the_work_folder_to_dunder_w() {
        let found = at(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "acme/app"),
            ("GITHUB_WORKSPACE", "/home/runner/work/app/app"),
            ("RUNNER_WORKSPACE", "/home/runner/work/app"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(found.path, "/__w/app/app");
        assert_eq!(found.ci, "GitHub Actions");
        // A self-hosted runner with another work folder, and a checkout `path:`.
        assert_eq!(
            path(&[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_WORKSPACE", "/srv/r/_work/app/app/"),
                ("RUNNER_WORKSPACE", "/srv/r/_work/app"),
            ]),
            "/__w/app/app"
        );
    }

    #[test]
    fn github_container_job_keeps_its_own_path_and_the_repository_is_the_last_resort() {
        assert_eq!(
            path(&[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_WORKSPACE", "/__w/app/app"),
                ("RUNNER_WORKSPACE", "/__w/app"),
            ]),
            "/__w/app/app"
        );
        assert_eq!(
            path(&[
                ("GITHUB_ACTIONS", "true"),
                ("GITHUB_REPOSITORY", "acme/web")
            ]),
            "/__w/web/web"
        );
        // Nothing to go on (a bare emulation): no CI path, the default stays.
        assert_eq!(at(&[("GITHUB_ACTIONS", "true")]).unwrap(), None);
    }

    #[test]
    fn forgejo_and_gitea_use_the_runners_workdir_parent_not_the_host_cache() {
        let base = [
            ("GITHUB_ACTIONS", "true"),
            ("ACT", "true"),
            ("GITHUB_REPOSITORY", "acme/app"),
            (
                "GITHUB_WORKSPACE",
                "/home/runner/.cache/act/3f2a/hostexecutor",
            ),
        ];
        let mut forgejo = base.to_vec();
        forgejo.extend([("FORGEJO_ACTIONS", "true"), ("GITEA_ACTIONS", "true")]);
        let found = at(&forgejo).unwrap().unwrap();
        assert_eq!(found.path, "/workspace/acme/app");
        assert_eq!(found.ci, "Forgejo Actions");
        assert!(found.why.contains("workdir_parent"), "{}", found.why);
        let mut gitea = base.to_vec();
        gitea.push(("GITEA_ACTIONS", "true"));
        let found = at(&gitea).unwrap().unwrap();
        assert_eq!(
            (found.path.as_str(), found.ci),
            ("/workspace/acme/app", "Gitea Actions")
        );
        // An images job in a container of a runner with another parent sees its own path.
        let mut own = forgejo.clone();
        own.retain(|(k, _)| *k != "GITHUB_WORKSPACE");
        own.push(("GITHUB_WORKSPACE", "/build/acme/app"));
        assert_eq!(path(&own), "/build/acme/app");
        // No repository: said, not guessed.
        let err = at(&[("FORGEJO_ACTIONS", "true")]).unwrap_err();
        assert!(err.message.contains(WORKDIR_VAR), "{}", err.message);
    }

    #[test]
    fn act_uses_the_host_path_of_the_checkout() {
        let found = at(&[
            ("ACT", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "acme/app"),
            ("GITHUB_WORKSPACE", "/home/me/src/app"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((found.path.as_str(), found.ci), ("/home/me/src/app", "act"));
        assert!(at(&[("ACT", "true")]).is_err());
        // A host job (-self-hosted) works in a copy: said, with the fix.
        let err = at(&[
            ("ACT", "true"),
            (
                "GITHUB_WORKSPACE",
                "/root/.cache/act/0bf0c8dfb19c7e0d/hostexecutor",
            ),
        ])
        .unwrap_err();
        assert!(
            err.message.contains("--env VENVIMG_CI_WORKDIR=$PWD"),
            "{}",
            err.message
        );
        // ...and the setting is what the act line of docs/content/guide/local-runs.md passes.
        assert_eq!(
            path(&[
                ("ACT", "true"),
                (
                    "GITHUB_WORKSPACE",
                    "/root/.cache/act/0bf0c8dfb19c7e0d/hostexecutor"
                ),
                ("VENVIMG_CI_WORKDIR", "/home/me/src/app"),
            ]),
            "/home/me/src/app"
        );
    }

    #[test]
    fn gitlab_uses_ci_project_dir() {
        assert_eq!(
            path(&[
                ("GITLAB_CI", "true"),
                ("CI_PROJECT_DIR", "/builds/acme/app")
            ]),
            "/builds/acme/app"
        );
        assert!(at(&[("GITLAB_CI", "true")]).is_err());
    }

    #[test]
    fn gitlab_ci_local_docker_jobs_use_ci_project_dir() {
        let found = at(&[
            ("GITLAB_CI", "false"),
            ("CI_PROJECT_DIR", "/builds/acme/app"),
            ("GCL_PROJECT_DIR_ON_HOST", "/home/me/app"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(found.path, "/builds/acme/app");
        assert_eq!(found.ci, "gitlab-ci-local");
        // Its shell jobs (no marker) run in the host checkout: not recognised.
        assert_eq!(
            at(&[("GITLAB_CI", "false"), ("CI_PROJECT_DIR", "/home/me/app")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_setting_wins_and_must_be_absolute() {
        let found = at(&[
            ("VENVIMG_CI_WORKDIR", "/ci/src/"),
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_DIR", "/builds/acme/app"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(found.path, "/ci/src");
        assert!(found.why.contains(WORKDIR_VAR));
        assert!(at(&[("VENVIMG_CI_WORKDIR", "ci/src")]).is_err());
        // Empty is unset.
        assert_eq!(at(&[("VENVIMG_CI_WORKDIR", " ")]).unwrap(), None);
    }
}
