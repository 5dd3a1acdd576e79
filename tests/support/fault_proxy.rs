//! A small HTTP/1.1 proxy for the registry tests (included with `#[path]`): it sits on
//! loopback between venvimg and a real registry and, per request, forwards it or injects a
//! fault (connection reset before, in the middle of the request body or of the response;
//! an HTTP status such as 500, 429 with `Retry-After`, 413, 403, 404). Decisions come from
//! a rule the test gives (seeded, so runs are reproducible), and every request is logged.
//!
//! One request per connection: the proxy asks the registry for `Connection: close` and
//! closes the client's connection after each response, so request framing is just
//! `Content-Length` (oci-client always sets it on bodies).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy saw of a request before deciding.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// Order of arrival, from 0.
    pub index: u64,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub content_length: u64,
}

/// What to do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// Reset the client's connection before anything reaches the registry.
    ResetBefore,
    /// Forward the head and half the body, then reset both connections (an interrupted
    /// upload; the registry sees a truncated PATCH/PUT).
    ResetMidBody,
    /// Forward the whole request, then reset the client's connection part-way through
    /// the registry's response (the registry did the work; the client never heard).
    ResetMidResponse,
    /// Answer with this body instead of the registry (a forged answer; the request's
    /// body is read and dropped, the registry sees nothing).
    Reply {
        code: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Answer 200 with `len` bytes of `a`, streamed (a blob far larger than its
    /// descriptor says), whoever stops reading first.
    Flood {
        len: u64,
    },
    /// Answer with this status (the body is read and dropped; the registry sees nothing).
    Status {
        code: u16,
        retry_after: Option<u64>,
        error_code: &'static str,
    },
}

impl Action {
    pub fn status(code: u16) -> Action {
        let error_code = match code {
            401 => "UNAUTHORIZED",
            403 => "DENIED",
            404 => "NAME_UNKNOWN",
            413 => "SIZE_INVALID",
            429 => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        };
        Action::Status {
            code,
            retry_after: (code == 429).then_some(1),
            error_code,
        }
    }

    /// Short name for counting: `forward`, `reset-before`, `500`...
    pub fn kind(&self) -> String {
        match self {
            Action::Forward => "forward".into(),
            Action::ResetBefore => "reset-before".into(),
            Action::ResetMidBody => "reset-mid-body".into(),
            Action::ResetMidResponse => "reset-mid-response".into(),
            Action::Status { code, .. } => code.to_string(),
            Action::Reply { code, .. } => format!("reply-{code}"),
            Action::Flood { .. } => "flood".into(),
        }
    }
}

pub type Rule = Box<dyn FnMut(&RequestHead) -> Action + Send>;

/// One logged request.
#[derive(Clone, Debug)]
pub struct Logged {
    pub head: RequestHead,
    pub action: Action,
    pub at: Instant,
}

pub struct FaultProxy {
    /// `127.0.0.1:PORT` to give venvimg instead of the registry's address.
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Start a proxy in front of `upstream` (`127.0.0.1:PORT`, plain HTTP).
    pub fn start(upstream: &str, rule: Rule) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rule = Arc::new(Mutex::new(rule));
        let counter = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (log, rule, counter, upstream) =
                        (log.clone(), rule.clone(), counter.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &upstream, &rule, &counter, &log);
                    });
                }
            });
        }
        FaultProxy { addr, log, stop }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests got each kind of action.
    pub fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for l in self.log() {
            *m.entry(l.action.kind()).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Random faults at the given rates (each in [0, 1), summing below 1), from `seed`.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    pub reset_before: f64,
    pub reset_mid_body: f64,
    pub reset_mid_response: f64,
    pub status_500: f64,
    pub status_503: f64,
    pub status_429: f64,
}

/// The operation a request is part of, the same for every attempt of it: method, path
/// without the upload session's id, and the `digest=`/`mount=` of the query.
fn operation(head: &RequestHead) -> String {
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    const UPLOADS: &str = "/blobs/uploads/";
    let path = match path.find(UPLOADS) {
        Some(i) => &path[..i + UPLOADS.len()],
        None => path,
    };
    let keep: Vec<&str> = query
        .split('&')
        .filter(|p| p.starts_with("digest=") || p.starts_with("mount="))
        .collect();
    format!("{} {path}?{}", head.method, keep.join("&"))
}

/// Random faults drawn from `seed` in the order requests arrive, at most one per operation
/// (`operation`): concurrent uploads arrive in a different order on every run, so without
/// that bound one blob could draw a fault on every one of its attempts (it did, about one
/// run in eight) and the test would measure luck, not the retries.
pub fn random_rule(seed: u64, rates: Rates) -> Rule {
    let mut rng = crate::support::registry_kit::XorShift::new(seed);
    let mut faulted = std::collections::HashSet::new();
    Box::new(move |head: &RequestHead| {
        let mut x = rng.unit();
        if faulted.contains(&operation(head)) {
            return Action::Forward;
        }
        for (rate, action) in [
            (rates.reset_before, Action::ResetBefore),
            (rates.reset_mid_body, Action::ResetMidBody),
            (rates.reset_mid_response, Action::ResetMidResponse),
            (rates.status_500, Action::status(500)),
            (rates.status_503, Action::status(503)),
            (rates.status_429, Action::status(429)),
        ] {
            if x < rate {
                faulted.insert(operation(head));
                if action == Action::ResetMidBody && head.content_length == 0 {
                    return Action::ResetBefore;
                }
                return action;
            }
            x -= rate;
        }
        Action::Forward
    })
}

fn reset(stream: TcpStream) {
    // SO_LINGER 0: close() sends RST instead of FIN.
    let sock = tokio::net::TcpSocket::from_std_stream(stream);
    let _ = sock.set_zero_linger();
    drop(sock);
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Read until the end of an HTTP head; returns (head bytes, bytes read past it).
fn read_head(conn: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        let n = conn.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if buf.len() > 1 << 20 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// Copy exactly `n` bytes from `from` to `to` (or drop them when `to` is None).
fn copy_exact(
    from: &mut TcpStream,
    mut to: Option<&mut TcpStream>,
    mut n: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = buf.len().min(n as usize);
        let got = from.read(&mut buf[..want])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(t) = to.as_deref_mut() {
            t.write_all(&buf[..got])?;
        }
        n -= got as u64;
    }
    Ok(())
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    rule: &Mutex<Rule>,
    counter: &AtomicU64,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let (head, mut early_body) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut content_length = 0u64;
    let mut out_head = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k_lower = k.trim().to_ascii_lowercase();
        match k_lower.as_str() {
            "content-length" => content_length = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => {
                panic!("fault proxy: chunked request bodies are not supported ({request_line})")
            }
            "connection" | "keep-alive" => continue,
            _ => {}
        }
        out_head.push_str(line);
        out_head.push_str("\r\n");
    }
    out_head.push_str("Connection: close\r\n\r\n");

    let head_info = RequestHead {
        index: counter.fetch_add(1, Ordering::SeqCst),
        method: method.clone(),
        target,
        content_length,
    };
    let action = (rule.lock().unwrap())(&head_info);
    log.lock().unwrap().push(Logged {
        head: head_info,
        action: action.clone(),
        at: Instant::now(),
    });

    early_body.truncate(content_length as usize);
    let remaining = content_length - early_body.len() as u64;
    match action {
        Action::ResetBefore => {
            reset(client);
            Ok(())
        }
        Action::Reply {
            code,
            content_type,
            body,
        } => {
            copy_exact(&mut client, None, remaining)?;
            let head = format!(
                "HTTP/1.1 {code} Forged\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            client.write_all(head.as_bytes())?;
            if method != "HEAD" {
                client.write_all(&body)?;
            }
            client.flush()?;
            let _ = client.shutdown(Shutdown::Write);
            Ok(())
        }
        Action::Flood { len } => {
            copy_exact(&mut client, None, remaining)?;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            client.write_all(head.as_bytes())?;
            let chunk = vec![b'a'; 64 * 1024];
            let mut left = len;
            while left > 0 && method != "HEAD" {
                let n = left.min(chunk.len() as u64) as usize;
                // The client hung up: it stopped reading, as it should.
                if client.write_all(&chunk[..n]).is_err() {
                    return Ok(());
                }
                left -= n as u64;
            }
            let _ = client.shutdown(Shutdown::Write);
            Ok(())
        }
        Action::Status {
            code,
            retry_after,
            error_code,
        } => {
            copy_exact(&mut client, None, remaining)?;
            let body = format!(
                r#"{{"errors":[{{"code":"{error_code}","message":"injected by the test proxy","detail":null}}]}}"#
            );
            let mut resp = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(s) = retry_after {
                resp.push_str(&format!("Retry-After: {s}\r\n"));
            }
            if code == 401 {
                resp.push_str("WWW-Authenticate: Basic realm=\"injected\"\r\n");
            }
            resp.push_str("\r\n");
            if method != "HEAD" {
                resp.push_str(&body);
            }
            client.write_all(resp.as_bytes())?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Write);
            // Let the client read the answer before the socket goes away.
            let mut sink = [0u8; 1024];
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
            Ok(())
        }
        Action::Forward | Action::ResetMidBody | Action::ResetMidResponse => {
            let mut up = TcpStream::connect(upstream)?;
            up.set_read_timeout(Some(Duration::from_secs(120)))?;
            up.write_all(out_head.as_bytes())?;
            if action == Action::ResetMidBody {
                let half = content_length / 2;
                let first = (early_body.len() as u64).min(half);
                up.write_all(&early_body[..first as usize])?;
                copy_exact(&mut client, Some(&mut up), half - first)?;
                reset(up);
                reset(client);
                return Ok(());
            }
            up.write_all(&early_body)?;
            copy_exact(&mut client, Some(&mut up), remaining)?;
            up.flush()?;
            if action == Action::ResetMidResponse {
                // Read the response (at least its head: the registry has done the work),
                // pass on half of what was read.
                let mut resp = Vec::new();
                let _ = (&mut up).take(256 * 1024).read_to_end(&mut resp);
                let cut = (resp.len() / 2).max(1).min(resp.len());
                let _ = client.write_all(&resp[..cut]);
                let _ = client.flush();
                reset(client);
                return Ok(());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = up.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                client.write_all(&buf[..n])?;
            }
            client.flush()?;
            let _ = client.shutdown(Shutdown::Write);
            Ok(())
        }
    }
}
