//! Helpers for the registry tests (`tests/it/registry_*.rs`, as `support::registry_kit`): images
//! composed on the test base image through the library, pushed with
//! `venvimg::registry::push::push_image`, and checks of what a registry holds made with
//! tools other than venvimg (skopeo, curl).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_client::Reference;
use venvimg::image::{compose, BaseImage, ComposedImage, LayerDescriptor};
use venvimg::layer::{pack_tree, PackOptions, PackedLayer};
use venvimg::model::Platform;
use venvimg::registry::push::{push_image, StatsSnapshot};
use venvimg::registry::{Registry, RegistryError, Transport};

use crate::support;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn reference(s: &str) -> Reference {
    s.parse()
        .unwrap_or_else(|e| panic!("bad reference {s:?}: {e}"))
}

/// The transport for anonymous loopback registries: defaults, monolithic uploads.
pub fn plain_transport() -> Transport {
    Transport {
        monolithic: true,
        ..Default::default()
    }
}

/// `xorshift64*`: reproducible bytes and decisions without another crate.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A small venv-like tree (a few files, a symlink) with `random_bytes` of incompressible
/// data, packed as a layer at `/opt/nox/<name>`. Different seeds, different layers.
pub fn small_layer(dir: &Path, name: &str, seed: u64, random_bytes: usize) -> PackedLayer {
    let tree = dir.join(format!("tree-{name}"));
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("lib/site-packages/pkg")).unwrap();
    std::fs::write(
        tree.join("pyvenv.cfg"),
        format!("home = /usr/bin\nseed = {seed}\n"),
    )
    .unwrap();
    std::fs::write(
        tree.join("lib/site-packages/pkg/__init__.py"),
        format!("SEED = {seed}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", tree.join("bin/python")).unwrap();
    let mut data = vec![0u8; random_bytes];
    XorShift::new(seed).fill(&mut data);
    std::fs::write(tree.join("lib/site-packages/pkg/data.bin"), data).unwrap();
    let out = dir.join(format!("{name}.tar.gz"));
    pack_tree(&tree, &PackOptions::new(format!("/opt/nox/{name}")), &out)
        .unwrap_or_else(|e| panic!("pack_tree {}: {e}", tree.display()))
}

/// An image composed on a resolved base, with the files of its local layers.
pub struct TestImage {
    pub base: BaseImage,
    pub image: ComposedImage,
    pub local: HashMap<venvimg::model::Digest, PathBuf>,
}

pub fn platform() -> Platform {
    Platform::parse("linux/amd64").expect("platform parses")
}

/// `base_ref`, resolved through `reg` for linux/amd64.
pub fn resolve_base(rt: &tokio::runtime::Runtime, reg: &Registry, base_ref: &str) -> BaseImage {
    rt.block_on(reg.resolve_base(&reference(base_ref), &platform()))
        .unwrap_or_else(|e| panic!("resolve_base {base_ref}: {e}"))
}

/// Resolve `base_ref` through `reg` and compose `layers` on it.
pub fn compose_on(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    base_ref: &str,
    layers: &[PackedLayer],
) -> TestImage {
    compose_with(resolve_base(rt, reg, base_ref), layers)
}

/// An image as venvimg would leave it for session `session`: the test base, one
/// [`small_layer`] (`seed`, its tree under `dir`) and a venvimg record in its labels
/// ([`support::record_labels`]), so that `venvimg inspect` and `prune` read it.
pub fn recorded_image(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    dir: &Path,
    session: &str,
    seed: u64,
) -> TestImage {
    let env = support::testenv();
    let layer = small_layer(dir, session, seed, 256);
    compose_labeled(
        resolve_base(rt, reg, &env.base),
        &[layer],
        &support::record_labels(session, env.base_digest()),
    )
}

pub fn compose_with(base: BaseImage, layers: &[PackedLayer]) -> TestImage {
    let labels = BTreeMap::from([("dev.venvimg.test".to_string(), "registry".to_string())]);
    compose_labeled(base, layers, &labels)
}

/// [`compose_with`], with the image config labels given (e.g. a venvimg record, so that
/// `venvimg inspect` reads the image).
pub fn compose_labeled(
    base: BaseImage,
    layers: &[PackedLayer],
    labels: &BTreeMap<String, String>,
) -> TestImage {
    let descriptors: Vec<LayerDescriptor> = layers
        .iter()
        .map(|l| LayerDescriptor {
            media_type: l.media_type().to_string(),
            digest: l.digest.clone(),
            size: l.size,
            diff_id: l.diff_id.clone(),
            created_by: "venvimg registry test".into(),
        })
        .collect();
    let image = compose(&base, &descriptors, labels, &BTreeMap::new(), None);
    let local = layers
        .iter()
        .map(|l| (l.digest.clone(), l.path.clone()))
        .collect();
    TestImage { base, image, local }
}

/// Push `img` to `target` (`HOST:PORT/repo:tag`); the manifest digest, and what the push
/// did (this push only).
pub fn push(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    target: &str,
    img: &TestImage,
) -> Result<(String, StatsSnapshot), RegistryError> {
    let before = reg.stats.snapshot();
    let digest = rt.block_on(push_image(
        reg,
        &reference(target),
        &img.image,
        &img.base,
        &img.local,
    ))?;
    let after = reg.stats.snapshot();
    Ok((digest, stats_delta(before, after)))
}

pub fn stats_delta(before: StatsSnapshot, after: StatsSnapshot) -> StatsSnapshot {
    StatsSnapshot {
        blobs_uploaded: after.blobs_uploaded - before.blobs_uploaded,
        bytes_uploaded: after.bytes_uploaded - before.bytes_uploaded,
        blobs_present: after.blobs_present - before.blobs_present,
        bytes_present: after.bytes_present - before.bytes_present,
        blobs_mounted: after.blobs_mounted - before.blobs_mounted,
        blobs_copied: after.blobs_copied - before.blobs_copied,
    }
}

/// How to reach a registry with curl and skopeo: plain HTTP, or TLS with a CA and
/// credentials.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tls_ca: Option<PathBuf>,
    pub user: Option<(String, String)>,
}

impl Access {
    fn scheme(&self) -> &'static str {
        if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "30"]);
        if let Some(ca) = &self.tls_ca {
            c.arg("--cacert").arg(ca);
        }
        if let Some((u, p)) = &self.user {
            c.arg("-u").arg(format!("{u}:{p}"));
        }
        c
    }
    fn skopeo(&self) -> Command {
        let mut c = support::skopeo();
        c.arg("inspect").arg("--tls-verify=false");
        if let Some((u, p)) = &self.user {
            c.arg("--creds").arg(format!("{u}:{p}"));
        }
        c
    }
}

/// `GET /v2/<repo>/tags/list`, sorted.
pub fn tags(access: &Access, registry: &str, repo: &str) -> Vec<String> {
    let out = access
        .curl()
        .arg(format!(
            "{}://{registry}/v2/{repo}/tags/list",
            access.scheme()
        ))
        .output()
        .expect("curl must be installed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tags/list of {registry}/{repo} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// `HEAD /v2/<repo>/blobs/<digest>`: the size the registry reports, `None` unless 200.
pub fn blob_size(access: &Access, registry: &str, repo: &str, digest: &str) -> Option<u64> {
    let out = access
        .curl()
        .args(["-I", "-o", "-", "-w", "\n%{http_code}"])
        .arg(format!(
            "{}://{registry}/v2/{repo}/blobs/{digest}",
            access.scheme()
        ))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let code = text.lines().last().unwrap_or("").trim();
    if code != "200" {
        return None;
    }
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// The raw manifest and its digest, as skopeo reads them.
pub fn skopeo_manifest(access: &Access, image_ref: &str) -> (serde_json::Value, String) {
    let raw = access
        .skopeo()
        .arg("--raw")
        .arg(format!("docker://{image_ref}"))
        .output()
        .expect("skopeo must be installed");
    assert!(
        raw.status.success(),
        "skopeo inspect --raw {image_ref}: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let digest = venvimg::model::Digest::of(&raw.stdout).into_string();
    (
        serde_json::from_slice(&raw.stdout).expect("manifest is JSON"),
        digest,
    )
}

/// Every tag of `repo` resolves (skopeo), and every blob its manifest references exists
/// with its size (HEAD through the registry API). Returns tag → manifest digest.
pub fn assert_repository_complete(
    access: &Access,
    registry: &str,
    repo: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let tags = tags(access, registry, repo);
    assert!(!tags.is_empty(), "{registry}/{repo} has no tags");
    for tag in tags {
        let (manifest, digest) = skopeo_manifest(access, &format!("{registry}/{repo}:{tag}"));
        let mut blobs = vec![manifest["config"].clone()];
        blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
        for b in blobs {
            let d = b["digest"].as_str().unwrap();
            let size = b["size"].as_u64().unwrap();
            assert_eq!(
                blob_size(access, registry, repo, d),
                Some(size),
                "{registry}/{repo}:{tag} references blob {d} ({size} bytes), which the registry does not serve"
            );
        }
        out.insert(tag, digest);
    }
    out
}

/// A plain-HTTP reverse proxy on loopback in front of `upstream` (`127.0.0.1:PORT`, plain
/// HTTP) that records the head of every request (request line and headers, with
/// `Authorization`): what a client really sent to that registry. One request per
/// connection (`Connection: close` both ways).
pub struct RecordingProxy {
    /// `127.0.0.1:PORT` to give venvimg instead of the registry's address.
    pub addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingProxy {
    pub fn start(upstream: &str) -> RecordingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, upstream) = (heads.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, upstream) = (h.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = relay(conn, &upstream, &h);
                });
            }
        });
        RecordingProxy { addr, heads, stop }
    }

    /// The heads of the requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Forget what was recorded.
    pub fn clear(&self) {
        self.heads.lock().unwrap().clear();
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

fn relay(
    mut client: std::net::TcpStream,
    upstream: &str,
    heads: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    client.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = client.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    heads.lock().unwrap().push(head.clone());
    let mut content_length = 0usize;
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name == "content-length" {
            content_length = line[line.find(':').unwrap() + 1..]
                .trim()
                .parse()
                .unwrap_or(0);
        }
        if name == "connection" || name == "keep-alive" {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut body = buf[end..].to_vec();
    while body.len() < content_length {
        let n = client.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let mut up = std::net::TcpStream::connect(upstream)?;
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply)?;
    client.write_all(&reply)?;
    client.flush()?;
    let _ = client.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// A token service (the `realm` of a registry's `WWW-Authenticate: Bearer` challenge)
/// that hands out no token: it records the `Authorization` header of every request and
/// answers 401. Plain HTTP, or HTTPS with a certificate and key. Python's http.server, on
/// a fixed address the registry's configuration names; stopped on drop.
pub struct FakeTokenService {
    /// `http[s]://HOST:PORT/token`.
    pub url: String,
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

const FAKE_TOKEN_SERVICE: &str = r#"
import http.server, json, socket, ssl, sys, time
host, port, log, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}) + "\n")
        body = b'{"details":"this token service hands out no tokens"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
deadline = time.time() + 60
while True:
    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

impl FakeTokenService {
    /// Serve on `addr` (`HOST:PORT`); HTTPS when `tls` gives the certificate and key.
    pub fn start(addr: &str, tls: Option<(&Path, &Path)>) -> FakeTokenService {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        std::fs::write(&log, "").unwrap();
        let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
        let (cert, key) = tls
            .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
            .unwrap_or_default();
        let mut child = Command::new("python3")
            .args(["-c", FAKE_TOKEN_SERVICE, host, port])
            .arg(&log)
            .args([&cert, &key])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let _ = child.kill();
            panic!("the fake token service on {addr} did not start (is the port taken?)");
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        FakeTokenService {
            url: format!("{scheme}://{addr}/token"),
            child,
            log,
            _dir: dir,
        }
    }

    /// The `Authorization` header of each request so far (`None`: the request had none).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["authorization"].as_str().map(str::to_string)
            })
            .collect()
    }
}

impl Drop for FakeTokenService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
