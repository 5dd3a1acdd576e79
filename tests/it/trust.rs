//! Trust scopes: a pull-request job (`--repository` its own, `trusted_repository:` the
//! protected branch's) reuses the trusted images and writes only into its own repository;
//! against a registry with token auth, the registry itself refuses a pull-request job's
//! write into the trusted repository (the setup of docs/content/guide/trust-scopes.md,
//! tested).

use std::process::Output;

use base64::Engine;

use crate::support::project::{json_ok, session, Project};
use crate::support::token_registry::{TokenRegistry, User};
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
    assert_hits_from(&report, &trusted, &["check", "other"]);
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

const MAIN_PASSWORD: &str = "main-Secr3t-token";
const PR_PASSWORD: &str = "pr-Secr3t-token";
const TRUSTED: &str = "acme/app/ci";
const PULL_REQUESTS: &str = "acme/app/ci-pr";

/// `venvimg build --json` with the credentials of `user`, passed as CI passes secrets.
fn build_as(p: &Project, user: &str, password: &str, args: &[&str]) -> Output {
    let ca = support::testenv().ca_file();
    let mut all = vec!["build", "--json", "--build-ca", ca];
    all.extend_from_slice(args);
    p.venvimg()
        .args(&all)
        .env("VENVIMG_USERNAME", user)
        .env("VENVIMG_PASSWORD", password)
        .output()
        .unwrap()
}

/// No password, no Basic encoding of it, no token (a JWT starts `eyJ`) in `all`.
#[track_caller]
fn assert_no_secret(all: &str, user: &str, password: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    assert!(
        !all.contains(password) && !all.contains(&basic) && !all.contains("eyJ"),
        "a secret was printed:\n{all}"
    );
}

/// That page's setup against a real token service: `main` (the protected branch's
/// token) may pull and push the trusted repository; `pr` (the pull requests' token) may
/// pull it and pull and push its own repository, nothing else.
#[test]
fn the_registry_refuses_a_pull_request_job_write_into_the_trusted_repository() {
    let reg = TokenRegistry::start(
        "trust-tokens",
        &[
            User {
                name: "main",
                password: MAIN_PASSWORD,
                grants: &[(TRUSTED, &["pull", "push"])],
            },
            User {
                name: "pr",
                password: PR_PASSWORD,
                grants: &[(TRUSTED, &["pull"]), (PULL_REQUESTS, &["pull", "push"])],
            },
        ],
    );
    let trusted = format!("{}/{TRUSTED}", reg.addr);
    let pr = format!("{}/{PULL_REQUESTS}", reg.addr);
    let p = Project::fixture("runner").repository(&trusted);
    let config =
        |other: &str| format!("trusted_repository: {trusted}\nsessions:\n  - check\n{other}");
    p.write_config(&config("  - other\n"));
    let base_layers = support::skopeo_raw_manifest(&support::testenv().base)["layers"]
        .as_array()
        .unwrap()
        .len() as u64;

    // The protected branch's job builds into the trusted repository.
    let out = build_as(&p, "main", MAIN_PASSWORD, &[]);
    assert_no_secret(&support::output_text(&out), "main", MAIN_PASSWORD);
    let report = json_ok(&out, "the protected branch's build");
    for name in ["check", "other"] {
        assert_eq!(session(&report, name)["outcome"], "built", "{report}");
    }
    let trusted_tags = reg.tags(TRUSTED);
    for prefix in ["check-", "other-", "all-"] {
        assert!(
            trusted_tags.iter().any(|t| t.starts_with(prefix)),
            "{prefix}* missing from {trusted_tags:?}"
        );
    }
    let trusted_files = reg.stored_files(TRUSTED);

    // A pull-request job with nothing changed: every session a hit in the trusted
    // repository; its own gets the all-sessions image, the trusted layers mounted (one
    // token naming both repositories: push on its own, pull on the trusted one), only the
    // base's layers copied (they live on another registry).
    let out = build_as(&p, "pr", PR_PASSWORD, &["--repository", &pr]);
    assert_no_secret(&support::output_text(&out), "pr", PR_PASSWORD);
    let report = json_ok(&out, "the pull request's build, nothing changed");
    assert_hits_from(&report, &trusted, &["check", "other"]);
    let all = report["all"]["image"].as_str().unwrap();
    assert!(all.starts_with(&format!("{pr}:all-")), "{report}");
    let push = &report["push"];
    assert!(
        push["blobs_mounted"].as_u64().unwrap() >= 2,
        "the trusted layers were not mounted: {push}"
    );
    assert_eq!(
        push["blobs_copied"].as_u64(),
        Some(base_layers),
        "only the base's layers may be copied: {push}"
    );
    let both_scopes = reg.requests().into_iter().find(|r| {
        let scopes = r["scopes"].to_string();
        r["user"] == "pr"
            && scopes.contains(&format!("repository:{PULL_REQUESTS}:pull,push"))
            && scopes.contains(&format!("repository:{TRUSTED}:pull"))
    });
    let both_scopes = both_scopes.unwrap_or_else(|| {
        panic!(
            "venvimg never asked for one token naming both repositories: {:?}",
            reg.requests()
        )
    });
    assert_eq!(
        both_scopes["access"],
        serde_json::json!([
            {"type": "repository", "name": PULL_REQUESTS, "actions": ["pull", "push"]},
            {"type": "repository", "name": TRUSTED, "actions": ["pull"]},
        ]),
        "{both_scopes}"
    );
    let pr_tags = reg.tags(PULL_REQUESTS);
    assert!(
        pr_tags
            .iter()
            .all(|t| !t.starts_with("check-") && !t.starts_with("other-")),
        "{pr_tags:?}"
    );
    assert_eq!(reg.stored_files(TRUSTED), trusted_files);

    // The pull request changes `other`: built and pushed to the pull request's repository
    // (every blob of it there), `check` still used from the trusted one.
    p.write_config(&config("  - name: other\n    env: {VARIANT: '1'}\n"));
    let out = build_as(&p, "pr", PR_PASSWORD, &["--repository", &pr]);
    assert_no_secret(&support::output_text(&out), "pr", PR_PASSWORD);
    let report = json_ok(&out, "the pull request's build, `other` changed");
    assert_eq!(session(&report, "check")["outcome"], "hit", "{report}");
    let other = session(&report, "other");
    assert_eq!(other["outcome"], "built", "{report}");
    let other_image = other["image"].as_str().unwrap();
    let tag = other_image
        .strip_prefix(&format!("{pr}:"))
        .unwrap_or_else(|| panic!("`other` went elsewhere: {report}"));
    let manifest = reg.manifest(PULL_REQUESTS, tag);
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_string());
    }
    for b in &blobs {
        assert!(reg.has_blob(PULL_REQUESTS, b), "{pr} lacks {b} of {tag}");
    }
    // The trusted layers and the base's are in the pull request's repository since the
    // last job: nothing is copied through this machine again.
    assert_eq!(report["push"]["blobs_copied"], 0, "{report}");
    assert_eq!(reg.tags(TRUSTED), trusted_tags);
    assert_eq!(reg.stored_files(TRUSTED), trusted_files);

    // The pull request's token pointed at the trusted repository: the registry grants it
    // no push there; venvimg says so, naming the repository and the credentials, and
    // writes nothing (no tag, no blob, no upload session).
    let out = build_as(&p, "pr", PR_PASSWORD, &["--repository", &trusted]);
    let all = support::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    for needle in [
        format!("may not push to repository {trusted}"),
        "VENVIMG_USERNAME/VENVIMG_PASSWORD".to_string(),
        "--repository".to_string(),
    ] {
        assert!(all.contains(&needle), "{needle:?} missing:\n{all}");
    }
    assert_no_secret(&all, "pr", PR_PASSWORD);
    assert_eq!(reg.tags(TRUSTED), trusted_tags);
    assert_eq!(
        reg.stored_files(TRUSTED),
        trusted_files,
        "the refused job left something in the trusted repository"
    );
    assert!(
        !reg.has_blob(TRUSTED, &blobs[0]),
        "the changed session's config reached the trusted repository"
    );
}

/// Each of `names` is a hit in `report`, used from the `trusted` repository where it is.
#[track_caller]
fn assert_hits_from(report: &serde_json::Value, trusted: &str, names: &[&str]) {
    for name in names {
        let s = session(report, name);
        assert_eq!(s["outcome"], "hit", "{name}: {report}");
        assert!(
            s["image"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{trusted}:")),
            "{name} should be used from the trusted repository: {report}"
        );
    }
}
