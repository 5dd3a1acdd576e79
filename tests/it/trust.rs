//! Trust scopes: a pull-request job (`--repository` its own, `trusted_repository:` the
//! protected branch's) reuses the trusted images and writes only into its own repository.

use crate::support::project::{session, Project};
use crate::support::{self};

#[test]
fn a_pull_request_job_reuses_trusted_images_and_writes_only_its_own_repository() {
    let p = Project::fixture("runner").unique_repo("trusted");
    let trusted = p.repo().to_string();
    let pr = format!("{trusted}-pr");
    let other_env = "  - name: other\n    env: {VARIANT: '1'}\n";

    // The protected branch builds into the trusted repository (its own): `trusted_repository`
    // naming it changes nothing there.
    p.write_config(&format!(
        "trusted_repository: {trusted}\nsessions:\n  - check\n  - other\n"
    ));
    let main = p.build(&[]);
    assert_eq!(session(&main, "check")["outcome"], "built", "{main}");
    let trusted_tags = support::list_tags(&trusted);
    assert!(!trusted_tags.is_empty());

    // A pull-request job with nothing changed: every session a hit where it is, nothing
    // built; its own repository gets only the all-sessions image (layers mounted).
    let out = p.build_output(&["--repository", &pr]);
    let report = support::project::json_ok(&out, "venvimg build --repository PR");
    for name in ["check", "other"] {
        let s = session(&report, name);
        assert_eq!(s["outcome"], "hit", "{report}");
        assert!(
            s["image"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{trusted}:")),
            "{name} should be used from the trusted repository: {report}"
        );
    }
    let pr_tags = support::list_tags(&pr);
    assert!(
        pr_tags
            .iter()
            .all(|t| !t.starts_with("check-") && !t.starts_with("other-")),
        "{pr_tags:?}"
    );
    let all = report["all"]["image"].as_str().unwrap().to_string();
    assert!(all.starts_with(&format!("{pr}:all-")), "{report}");
    p.assert_runs_offline(&all, "check");

    // The pull request changes `other`: only it is built, and pushed to the PR's
    // repository; `check` still comes from the trusted one, which is left as it was.
    p.write_config(&format!(
        "trusted_repository: {trusted}\nsessions:\n  - check\n{other_env}"
    ));
    let out = p.build_output(&["--repository", &pr]);
    let report = support::project::json_ok(&out, "venvimg build --repository PR");
    let check = session(&report, "check");
    let other = session(&report, "other");
    assert_eq!(check["outcome"], "hit", "{report}");
    assert!(check["image"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{trusted}:")));
    assert_eq!(other["outcome"], "built", "{report}");
    assert!(
        other["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{pr}:other-")),
        "{report}"
    );
    assert_eq!(
        support::list_tags(&trusted),
        trusted_tags,
        "the pull request's build wrote into the trusted repository"
    );
    let all = report["all"]["image"].as_str().unwrap().to_string();
    p.assert_runs_offline(&all, "check");
    p.assert_runs_offline(&all, "other");
    // `run` uses the trusted image for check, the PR's for other.
    let (code, text) = p.outcome(&[
        "--repository",
        &pr,
        "run",
        "--no-build",
        "-s",
        "check",
        "other",
        "--",
        "0",
    ]);
    assert_eq!(code, Some(0), "{text}");
}
