//! Pushing through the library (`venvimg::registry::push::push_image`) to the real loopback
//! registry, with a fault-injecting proxy in between where a test needs one: only missing
//! blobs go up, the tag is written last, transient failures are retried (429 waits), an
//! interrupted upload restarts cleanly, concurrent pushes leave one image, `--chunk-size`
//! really uploads in chunks, and 403/404/413 become errors that say what to do.
use crate::support;
use crate::support::fault_proxy;
use crate::support::registry_kit as kit;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fault_proxy::{random_rule, Action, FaultProxy, Rates, RequestHead, Rule};
use kit::{
    assert_repository_complete, compose_on, plain_transport, push, runtime, small_layer, Access,
};
use venvimg::registry::{Registry, RegistryError, Transport};

/// `HOST:PORT/name` → `name`.
fn repo_of(full: &str) -> String {
    full.split_once('/').unwrap().1.to_string()
}

/// The same repository name as `full` (in the shared registry), reached through `proxy`.
fn via(proxy: &FaultProxy, full: &str) -> String {
    format!("{}/{}", proxy.addr, repo_of(full))
}

fn forward_all() -> Rule {
    Box::new(|_: &RequestHead| Action::Forward)
}

fn is_blob_write(h: &RequestHead) -> bool {
    h.target.contains("/blobs/uploads/") && matches!(h.method.as_str(), "POST" | "PUT" | "PATCH")
}

#[test]
fn second_push_uploads_nothing_and_the_tag_is_written_last() {
    let env = support::testenv();
    let proxy = FaultProxy::start(&env.registry, forward_all());
    let rt = runtime();
    let reg = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), "tests-3-12", 1, 64 << 10);
    let img = compose_on(&rt, &reg, &via(&proxy, &env.base), &[layer]);
    let repo = support::unique_repo("push-twice");
    let target = format!("{}:ci", via(&proxy, &repo));

    let (digest, first) = push(&rt, &reg, &target, &img).expect("first push");
    assert_eq!(digest, img.image.manifest_digest);
    assert_eq!(first.blobs_uploaded, 2, "layer + config: {first:?}");
    assert_eq!(
        first.blobs_mounted, 1,
        "the base layer is mounted from base/python-nox: {first:?}"
    );
    assert_eq!(first.blobs_copied, 0, "{first:?}");

    // Order on the wire: every blob written, then the manifest by digest, then the tag.
    let log = proxy.log();
    let pos = |pred: &dyn Fn(&RequestHead) -> bool| log.iter().rposition(|l| pred(&l.head));
    let last_blob = pos(&is_blob_write).expect("blob writes");
    let by_digest = log
        .iter()
        .position(|l| l.head.method == "PUT" && l.head.target.contains("/manifests/sha256:"))
        .expect("manifest pushed by digest");
    let by_tag = log
        .iter()
        .position(|l| l.head.method == "PUT" && l.head.target.ends_with("/manifests/ci"))
        .expect("manifest pushed by tag");
    assert!(
        last_blob < by_digest && by_digest < by_tag,
        "blobs ({last_blob}) < manifest by digest ({by_digest}) < tag ({by_tag})"
    );

    // Another job (a fresh registry session) checks every blob and sends none.
    let before = proxy.log().len();
    let later = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let (digest2, second) = push(&rt, &later, &target, &img).expect("second push");
    assert_eq!(digest2, digest);
    assert_eq!(second.blobs_uploaded, 0, "{second:?}");
    assert_eq!(second.bytes_uploaded, 0, "{second:?}");
    assert_eq!(second.blobs_mounted + second.blobs_copied, 0, "{second:?}");
    assert_eq!(second.blobs_present, 3, "{second:?}");
    let writes: Vec<_> = proxy.log()[before..]
        .iter()
        .filter(|l| is_blob_write(&l.head))
        .map(|l| format!("{} {}", l.head.method, l.head.target))
        .collect();
    assert!(writes.is_empty(), "second push wrote blobs: {writes:?}");

    // The same session pushing it again (the all-sessions image after the session
    // images, in one build) does not even ask: it checked or sent each blob already.
    let before = proxy.log().len();
    let (_, third) = push(&rt, &reg, &target, &img).expect("third push");
    assert_eq!(third.blobs_uploaded + third.blobs_present, 0, "{third:?}");
    let blob_requests: Vec<_> = proxy.log()[before..]
        .iter()
        .filter(|l| l.head.target.contains("/blobs/"))
        .map(|l| format!("{} {}", l.head.method, l.head.target))
        .collect();
    assert!(blob_requests.is_empty(), "{blob_requests:?}");

    let tags = assert_repository_complete(&Access::default(), &env.registry, &repo_of(&repo));
    assert_eq!(tags.get("ci"), Some(&digest));
}

#[test]
fn four_concurrent_pushes_all_succeed_and_leave_one_image() {
    let env = support::testenv();
    let rt = runtime();
    let reg = Registry::new(plain_transport(), &[&env.registry]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layers = [
        small_layer(dir.path(), "tests", 21, 512 << 10),
        small_layer(dir.path(), "lint", 22, 256 << 10),
    ];
    let img = Arc::new(compose_on(&rt, &reg, &env.base, &layers));
    drop(rt);
    // The race is in the registry's timing; three rounds of four pushes each.
    for round in 0..3 {
        let repo = support::unique_repo("push-concurrent");
        let target = format!("{repo}:tests-9f8a2c41d0e7b311");
        let barrier = Arc::new(Barrier::new(4));
        let results: Vec<Result<String, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (img, barrier, target) = (img.clone(), barrier.clone(), target.clone());
                    let registry = env.registry.clone();
                    s.spawn(move || {
                        // Each "job" has its own client, connections and runtime.
                        let rt = runtime();
                        let reg = Registry::new(plain_transport(), &[&registry]).unwrap();
                        barrier.wait();
                        push(&rt, &reg, &target, &img)
                            .map(|(d, _)| d)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(
                r.as_deref(),
                Ok(img.image.manifest_digest.as_str()),
                "round {round}: {results:?}"
            );
        }
        let tags = assert_repository_complete(&Access::default(), &env.registry, &repo_of(&repo));
        assert_eq!(tags.len(), 1, "{tags:?}");
        assert_eq!(
            tags.get("tests-9f8a2c41d0e7b311"),
            Some(&img.image.manifest_digest.to_string())
        );
        assert_eq!(
            support::skopeo_inspect_digest(&target).as_deref(),
            Some(img.image.manifest_digest.as_str())
        );
    }
}

/// The first request that matches each predicate gets the paired fault (so every kind is
/// exercised whatever the seed), every other request a seeded random one.
fn faults(seed: u64, rates: Rates) -> Rule {
    type Pred = Box<dyn Fn(&RequestHead) -> bool + Send>;
    let mut forced: Vec<(Pred, Action)> = vec![
        (
            Box::new(|h| h.method == "GET" && h.target.contains("/manifests/")),
            Action::status(503),
        ),
        (
            Box::new(|h| h.method == "HEAD" && h.target.contains("/blobs/")),
            Action::status(500),
        ),
        (
            Box::new(|h| h.method == "POST" && h.target.contains("mount=")),
            Action::ResetMidResponse,
        ),
        (
            Box::new(|h| {
                h.method == "POST"
                    && h.target.contains("/blobs/uploads/")
                    && !h.target.contains("mount=")
            }),
            Action::ResetBefore,
        ),
        (
            // An interrupted upload: half the layer reaches the registry.
            Box::new(|h| {
                h.method == "PUT" && h.target.contains("digest=") && h.content_length > 4096
            }),
            Action::ResetMidBody,
        ),
        (
            Box::new(|h| h.method == "PUT" && h.target.contains("/manifests/sha256:")),
            Action::status(429),
        ),
        (
            Box::new(|h| {
                h.method == "PUT"
                    && h.target.contains("/manifests/")
                    && !h.target.contains("sha256:")
            }),
            Action::ResetMidResponse,
        ),
    ];
    let mut random = random_rule(seed, rates);
    Box::new(move |h: &RequestHead| {
        if let Some(i) = forced.iter().position(|(p, _)| p(h)) {
            return forced.remove(i).1;
        }
        random(h)
    })
}

#[test]
fn push_survives_resets_500s_and_429s_and_leaves_every_tag_complete() {
    let env = support::testenv();
    let rates = Rates {
        reset_before: 0.03,
        reset_mid_body: 0.03,
        reset_mid_response: 0.03,
        status_500: 0.03,
        status_503: 0.01,
        status_429: 0.02,
    };
    let proxy = FaultProxy::start(&env.registry, faults(0x5eed_f00d, rates));
    let rt = runtime();
    let reg = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = compose_on(
        &rt,
        &reg,
        &via(&proxy, &env.base),
        &[small_layer(dir.path(), "tests", 31, 1 << 20)],
    );
    let b = compose_on(
        &rt,
        &reg,
        &via(&proxy, &env.base),
        &[
            small_layer(dir.path(), "lint", 32, 300 << 10),
            small_layer(dir.path(), "docs", 33, 200 << 10),
        ],
    );
    let repo = support::unique_repo("push-faults");
    let mut expected = std::collections::BTreeMap::new();
    for (tag, img) in [("a", &a), ("b", &b), ("a-again", &a), ("b-again", &b)] {
        let (digest, _) = push(&rt, &reg, &format!("{}:{tag}", via(&proxy, &repo)), img)
            .unwrap_or_else(|e| {
                panic!(
                    "push {tag} through faults: {e}\nproxy: {:?}",
                    proxy.counts()
                )
            });
        assert_eq!(digest, img.image.manifest_digest);
        expected.insert(tag.to_string(), digest);
    }

    let counts = proxy.counts();
    eprintln!("fault proxy: {counts:?}");
    for kind in [
        "reset-before",
        "reset-mid-body",
        "reset-mid-response",
        "500",
        "503",
        "429",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} injected: {counts:?}"
        );
    }
    // The interrupted upload was restarted in a new upload session.
    let log = proxy.log();
    let cut = log
        .iter()
        .position(|l| l.action == Action::ResetMidBody && l.head.target.contains("digest="))
        .expect("an upload was cut");
    let digest_param = |t: &str| {
        t.split("digest=")
            .nth(1)
            .map(|d| d.split('&').next().unwrap().to_string())
    };
    let cut_digest = digest_param(&log[cut].head.target).unwrap();
    assert!(
        log[cut + 1..].iter().any(|l| l.action == Action::Forward
            && l.head.method == "PUT"
            && digest_param(&l.head.target).as_deref() == Some(cut_digest.as_str())
            && l.head.target.split('?').next() != log[cut].head.target.split('?').next()),
        "the cut upload of {cut_digest} was not completed in a new session"
    );

    // Checked behind the proxy, with skopeo and the registry API.
    let tags = assert_repository_complete(&Access::default(), &env.registry, &repo_of(&repo));
    assert_eq!(tags, expected);
}

#[test]
fn a_429_waits_before_the_next_attempt() {
    let env = support::testenv();
    let mut left = 4;
    let proxy = FaultProxy::start(
        &env.registry,
        Box::new(move |h: &RequestHead| {
            if h.target.contains("/manifests/") && left > 0 {
                left -= 1;
                return Action::status(429);
            }
            Action::Forward
        }),
    );
    let rt = runtime();
    let reg = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let start = Instant::now();
    let found = rt
        .block_on(reg.manifest_digest(&kit::reference(&via(&proxy, &env.base))))
        .expect("HEAD through 429s");
    assert_eq!(found.as_ref().map(|d| d.as_str()), Some(env.base_digest()));
    let manifest_requests: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|l| l.head.target.contains("/manifests/"))
        .collect();
    // Each attempt is HEAD, then GET when the HEAD has no digest header (as with a 429).
    let attempts: Vec<_> = manifest_requests
        .windows(2)
        .filter(|w| w[1].head.method == "HEAD")
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert_eq!(attempts.len(), 2, "{manifest_requests:?}");
    assert!(
        attempts
            .iter()
            .all(|gap| *gap >= Duration::from_millis(1000)),
        "a 429 (Retry-After: 1) was retried sooner than 1 s: {attempts:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

fn chunked(chunk_mib: usize) -> Transport {
    Transport {
        monolithic: false,
        chunk_size: Some(chunk_mib << 20),
        ..Default::default()
    }
}

#[test]
fn a_413_suggests_chunk_size_and_chunked_uploads_get_through() {
    let env = support::testenv();
    // A proxy body limit of 2.25 MiB; chunks of 2 MiB fit, a 5 MiB layer does not.
    const LIMIT: u64 = (2 << 20) + (256 << 10);
    let mut patches_seen = 0;
    let proxy = FaultProxy::start(
        &env.registry,
        Box::new(move |h: &RequestHead| {
            if h.content_length > LIMIT {
                return Action::status(413);
            }
            // Cut the second chunk of the first chunked upload once: it must restart.
            if h.method == "PATCH" {
                patches_seen += 1;
                if patches_seen == 2 {
                    return Action::ResetMidBody;
                }
            }
            Action::Forward
        }),
    );
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), "tests", 41, 5 << 20);
    assert!(layer.size > 5 << 20, "incompressible layer: {}", layer.size);

    let mono = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let img = compose_on(
        &rt,
        &mono,
        &via(&proxy, &env.base),
        std::slice::from_ref(&layer),
    );
    let repo = support::unique_repo("push-413");
    let target = format!("{}:ci", via(&proxy, &repo));
    let err = push(&rt, &mono, &target, &img).expect_err("a 5 MiB PUT through a 2.25 MiB limit");
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("413") && msg.contains("--chunk-size"), "{msg}");
    assert!(msg.contains(&proxy.addr), "{msg}");
    assert!(
        support::skopeo_inspect_digest(&format!("{repo}:ci")).is_none(),
        "no tag after a failed push"
    );

    let before = proxy.log().len();
    let reg = Registry::new(chunked(2), &[&proxy.addr]).unwrap();
    let (digest, stats) = push(&rt, &reg, &target, &img).expect("chunked push");
    assert_eq!(digest, img.image.manifest_digest);
    // The refused push stopped at the first error, having sent the config and mounted
    // the base layer or not; the layer itself went up now.
    assert_eq!(
        stats.blobs_uploaded + stats.blobs_present + stats.blobs_mounted,
        3,
        "{stats:?}"
    );
    assert!(stats.bytes_uploaded >= layer.size, "{stats:?}");
    let log = &proxy.log()[before..];
    let patches: Vec<u64> = log
        .iter()
        .filter(|l| l.head.method == "PATCH")
        .map(|l| l.head.content_length)
        .collect();
    assert!(
        patches.len() >= 4,
        "5+ MiB in 2 MiB chunks, one cut: {patches:?}"
    );
    // The chunk size asked for, exactly: not whatever a read happened to return.
    assert_eq!(patches.iter().max(), Some(&(2 << 20)), "{patches:?}");
    assert!(
        log.iter().all(|l| l.action.kind() != "413"),
        "no 413 when chunked"
    );
    let sessions = log
        .iter()
        .filter(|l| {
            l.head.method == "POST"
                && l.head.target.contains("/blobs/uploads/")
                && !l.head.target.contains("mount=")
        })
        .count();
    assert!(
        sessions >= 2,
        "the layer twice (one chunk was cut): {sessions}"
    );
    let tags = assert_repository_complete(&Access::default(), &env.registry, &repo_of(&repo));
    assert_eq!(tags.get("ci"), Some(&digest));
}

#[test]
fn refusals_and_unknown_names_say_what_to_do() {
    let env = support::testenv();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), "tests", 51, 1024);

    // 403 on the manifest: denied, naming the registry and the credentials tried.
    let proxy = FaultProxy::start(
        &env.registry,
        Box::new(|h: &RequestHead| {
            if h.method == "PUT" && h.target.contains("/manifests/") {
                Action::status(403)
            } else {
                Action::Forward
            }
        }),
    );
    let reg = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let img = compose_on(
        &rt,
        &reg,
        &via(&proxy, &env.base),
        std::slice::from_ref(&layer),
    );
    let repo = support::unique_repo("push-denied");
    let err = push(&rt, &reg, &format!("{}:ci", via(&proxy, &repo)), &img).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Denied { status: 403, .. }),
        "{err:?}"
    );
    assert!(msg.contains(&proxy.addr) && msg.contains("403"), "{msg}");
    assert!(
        msg.contains("no credentials"),
        "names the credentials tried: {msg}"
    );
    assert!(msg.contains("podman login"), "{msg}");

    // 404 NAME_UNKNOWN when opening an upload (a Forgejo owner that does not exist).
    let proxy = FaultProxy::start(
        &env.registry,
        Box::new(|h: &RequestHead| {
            if h.method == "POST" && h.target.contains("/blobs/uploads/") {
                Action::status(404)
            } else {
                Action::Forward
            }
        }),
    );
    let reg = Registry::new(plain_transport(), &[&proxy.addr]).unwrap();
    let repo = support::unique_repo("no-such-owner");
    let err = push(&rt, &reg, &format!("{}:ci", via(&proxy, &repo)), &img).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            RegistryError::NameUnknown {
                name_unknown: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("NAME_UNKNOWN") && msg.contains("repository:"),
        "{msg}"
    );

    // A base image that is not there: not found, naming it.
    let reg = Registry::new(plain_transport(), &[&env.registry]).unwrap();
    let missing = format!("{}/base/not-there:1", env.registry);
    let err = rt
        .block_on(reg.resolve_base(&kit::reference(&missing), &kit::platform()))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");
}
