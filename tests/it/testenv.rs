//! Proves the test environment itself: these fail (never skip) when a part is missing.
use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn registry_answers_v2() {
    let env = support::testenv();
    let mut s = TcpStream::connect(&env.registry)
        .unwrap_or_else(|e| panic!("cannot connect to the test registry {}: {e}", env.registry));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        env.registry
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET http://{}/v2/ answered {status:?}",
        env.registry
    );
}

#[test]
fn base_image_resolves_by_digest() {
    let env = support::testenv();
    let digest = support::skopeo_inspect_digest(&env.base)
        .unwrap_or_else(|| panic!("skopeo cannot resolve {} in the registry", env.base));
    assert!(digest.starts_with("sha256:"), "odd digest {digest}");
    assert_eq!(digest, env.base_digest(), "env file and registry disagree");
    // and by digest
    let repo = env.base.rsplit_once(':').unwrap().0;
    let by_digest = format!("{repo}@{digest}");
    assert_eq!(
        support::skopeo_inspect_digest(&by_digest).as_deref(),
        Some(digest.as_str())
    );
}

#[test]
fn copy_tag_preserves_digest_in_a_unique_repo() {
    let env = support::testenv();
    let repo = support::unique_repo("testenv-copy");
    let dst = format!("{repo}:any-tool");
    assert_eq!(
        support::skopeo_inspect_digest(&dst),
        None,
        "{dst} exists already"
    );
    support::copy_tag(&env.base, &dst);
    assert_eq!(
        support::skopeo_inspect_digest(&dst).as_deref(),
        Some(env.base_digest())
    );
    support::delete_image(&dst);
    assert_eq!(support::skopeo_inspect_digest(&dst), None);
}

fn run_in_base(args: &[&str]) -> String {
    let env = support::testenv();
    let out = support::podman()
        .args(["run", "--rm", "--network", "none", &env.base_local])
        .args(args)
        .output()
        .expect("cannot run podman (apt-get install -y podman)");
    assert!(
        out.status.success(),
        "podman run {} {} failed ({}):\n{}{}",
        env.base_local,
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
        + String::from_utf8_lossy(&out.stderr).as_ref()
}

#[test]
fn base_image_runs_nox_offline() {
    let out = run_in_base(&["nox", "--version"]);
    assert!(
        out.trim()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit()),
        "nox --version said {out:?}"
    );
}

#[test]
fn base_image_runs_uv_offline() {
    let out = run_in_base(&["uv", "--version"]);
    assert!(out.starts_with("uv "), "uv --version said {out:?}");
}

#[test]
fn base_image_has_python_and_git() {
    let out = run_in_base(&["sh", "-c", "python3 --version && git --version"]);
    assert!(out.contains("Python 3."), "{out}");
    assert!(out.contains("git version"), "{out}");
}

#[test]
fn fixture_copies_are_independent() {
    let fixtures = support::fixture("");
    let name = std::fs::read_dir(&fixtures)
        .unwrap_or_else(|e| panic!("{}: {e}", fixtures.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .min()
        .expect("no fixture directory under tests/fixtures");
    let src = support::fixture(&name);
    let copy = support::copy_fixture(&name);
    let list = |p: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&src), list(copy.path()));
    assert_ne!(copy.path(), src.as_path());
}
