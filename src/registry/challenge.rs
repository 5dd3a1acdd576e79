//! Where a registry wants credentials sent, read before oci-client gets one.
//!
//! oci-client exchanges a Basic credential for a token at whatever URL the registry's
//! `WWW-Authenticate: Bearer realm="..."` names, on any host, over any scheme. So before a
//! credential is handed over, the registry's `GET /v2/` is asked once (per registry, per
//! run), its challenge read exactly as oci-client reads it (same parser, same URL type),
//! and the credential goes only where [`judge`] allows; otherwise oci-client gets none.

use std::time::Duration;

use http_auth::parser::ChallengeParser;

/// What `GET /v2/` asks for, as oci-client understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No `WWW-Authenticate` header: oci-client sends no credential at all.
    None,
    /// Not a Bearer challenge with a realm: oci-client sends Basic to the registry itself.
    Basic,
    /// A token service: oci-client sends the credential to `realm`.
    Bearer { realm: String },
}

/// The first `WWW-Authenticate` value of a `GET /v2/` reply, read like oci-client's
/// `BearerChallenge::try_from`: the first challenge that parses, is `Bearer` and has a
/// realm; anything else falls back to Basic.
pub fn parse(header: Option<&[u8]>) -> Challenge {
    let Some(header) = header else {
        return Challenge::None;
    };
    let Ok(text) = std::str::from_utf8(header) else {
        return Challenge::Basic;
    };
    ChallengeParser::new(text)
        .filter_map(|c| c.ok())
        .find_map(|c| {
            if !c.scheme.eq_ignore_ascii_case("Bearer") {
                return None;
            }
            // The last `realm` parameter, as oci-client's loop keeps it.
            c.params
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("realm"))
                .map(|(_, v)| v.to_unescaped())
                .next_back()
        })
        .map_or(Challenge::Basic, |realm| Challenge::Bearer { realm })
}

/// `GET url` (a registry's `/v2/`) and its first `WWW-Authenticate` value, with the
/// certificates oci-client trusts and `accept_invalid_certs` as for that registry.
/// Retries connection failures and 5xx a little. Blocking: it runs on a thread of its
/// own (callers are synchronous code, often on the async runtime).
pub fn fetch(
    url: &str,
    accept_invalid_certs: bool,
    certs: &[Vec<u8>],
    user_agent: &'static str,
) -> Result<Option<Vec<u8>>, String> {
    let url = url.to_string();
    let certs = certs.to_vec();
    let work = move || -> Result<Option<Vec<u8>>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async move {
            let roots = certs
                .iter()
                .map(|pem| reqwest::Certificate::from_pem(pem))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| super::error_chain(&e))?;
            super::install_tls_provider();
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(accept_invalid_certs)
                .tls_certs_merge(roots)
                .connect_timeout(Duration::from_secs(15))
                .timeout(Duration::from_secs(30))
                .user_agent(user_agent)
                .build()
                .map_err(|e| super::error_chain(&e))?;
            let mut last = String::new();
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                match client.get(&url).send().await {
                    Ok(reply) if reply.status().is_server_error() => {
                        last = format!("answered {}", reply.status());
                    }
                    Ok(reply) => {
                        return Ok(reply
                            .headers()
                            .get(reqwest::header::WWW_AUTHENTICATE)
                            .map(|v| v.as_bytes().to_vec()));
                    }
                    Err(e) => {
                        last = super::error_chain(&e);
                        if super::is_tls_failure(&last) {
                            break;
                        }
                    }
                }
            }
            Err(last)
        })
    };
    let run = || {
        std::thread::spawn(work)
            .join()
            .unwrap_or_else(|_| Err("the request thread panicked".into()))
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    }
}

/// How a registry is reached, for [`judge`].
pub struct Route<'a> {
    /// HOST[:PORT], as in image references.
    pub registry: &'a str,
    /// Reached over plain HTTP (a loopback registry, or one listed as insecure).
    pub plain_http: bool,
    /// Whether TLS certificates of HOST[:PORT] go unverified (`--skip-tls-verify`).
    pub skips_verification: &'a dyn Fn(&str) -> bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the credential. `elsewhere`: the token service is on another host (host,
    /// realm without query), which the user should hear about.
    Send { elsewhere: Option<(String, String)> },
    /// Keep it: `reason` (what and why), `hint` (what to do).
    Withhold { reason: String, hint: String },
}

/// Whether a Basic credential for `route` may go to the token service `realm`: over
/// HTTPS (with the certificate verified unless `--skip-tls-verify` names the realm's own
/// HOST[:PORT]); over plain HTTP only when the registry itself is a plain-HTTP one on the
/// same host.
pub fn judge(route: &Route<'_>, realm: &str) -> Verdict {
    let Ok(url) = reqwest::Url::parse(realm) else {
        return Verdict::Withhold {
            reason: format!("its token service realm `{realm}` is not an absolute URL"),
            hint: "the registry's WWW-Authenticate challenge is broken; tell its operator".into(),
        };
    };
    let Some(realm_host) = url.host_str().map(str::to_ascii_lowercase) else {
        return Verdict::Withhold {
            reason: format!("its token service realm `{realm}` names no host"),
            hint: "the registry's WWW-Authenticate challenge is broken; tell its operator".into(),
        };
    };
    let shown = shown_url(&url);
    let authority = match url.port() {
        Some(p) => format!("{realm_host}:{p}"),
        None => realm_host.clone(),
    };
    let registry_host = host_of(route.registry).to_ascii_lowercase();
    let same_host = realm_host == registry_host;
    match url.scheme() {
        "https" => {
            // oci-client asks the realm with the registry's own HTTP client: when that
            // one skips verification, the realm's certificate goes unchecked too.
            if (route.skips_verification)(route.registry)
                && !same_registry(&authority, route.registry)
                && !(route.skips_verification)(&authority)
            {
                return Verdict::Withhold {
                    reason: format!(
                        "its token service {shown} would be reached without checking its TLS certificate (--skip-tls-verify names {}, not {authority})",
                        route.registry
                    ),
                    hint: format!(
                        "trust the token service's certificate with --ca-file FILE, or, for a test setup only, add --skip-tls-verify {authority}"
                    ),
                };
            }
            Verdict::Send {
                elsewhere: (!same_host).then_some((authority, shown)),
            }
        }
        "http" if route.plain_http && same_host => Verdict::Send { elsewhere: None },
        "http" => Verdict::Withhold {
            reason: if route.plain_http {
                format!(
                    "its token service {shown} is plain HTTP on another host ({realm_host}); Basic credentials go to a token service only over HTTPS, or over plain HTTP on the host of a plain-HTTP registry"
                )
            } else {
                format!(
                    "its token service {shown} is plain HTTP; Basic credentials go to a token service only over HTTPS (the registry itself uses HTTPS)"
                )
            },
            hint: format!(
                "the registry's token `realm` must be an https:// URL; fix its configuration (or ask its operator) before sending credentials for {}",
                route.registry
            ),
        },
        other => Verdict::Withhold {
            reason: format!("its token service {shown} uses `{other}:`, not https"),
            hint: "the registry's token `realm` must be an https:// URL".into(),
        },
    }
}

/// Whether `ip` is link-local or a cloud metadata address (169.254.0.0/16, fe80::/10,
/// AWS's fd00:ec2::254): where instance credentials are served, never a token service.
pub fn is_metadata_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// The addresses `host` (a name or an IP literal, `[v6]` too) stands for; none when it
/// does not resolve.
fn addresses_of(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return vec![ip];
    }
    (bare, port)
        .to_socket_addrs()
        .map(|a| a.map(|s| s.ip()).collect())
        .unwrap_or_default()
}

/// Why the token service `realm` of `registry` must not be asked, if it must not: a
/// link-local or metadata address, unless the registry itself is on one.
pub fn metadata_realm(registry: &str, realm: &str) -> Option<String> {
    let url = reqwest::Url::parse(realm).ok()?;
    let host = url.host_str()?;
    let port = url.port_or_known_default().unwrap_or(443);
    let bad: Vec<std::net::IpAddr> = addresses_of(host, port)
        .into_iter()
        .filter(|ip| is_metadata_address(*ip))
        .collect();
    let first = bad.first()?;
    let registry_port = registry
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(443);
    if addresses_of(host_of(registry), registry_port)
        .iter()
        .any(|ip| is_metadata_address(*ip))
    {
        return None;
    }
    Some(format!(
        "its token service realm {} is on {first}, a link-local/cloud-metadata address (where a machine's own credentials are served); venvimg does not send requests there for a registry elsewhere",
        shown_url(&url)
    ))
}

/// The realm for messages: scheme, host, port and path; no user info, query or fragment.
fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// `host` of `host[:port]` / `[v6]:port`.
pub fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(i) => &registry[..=i],
            None => registry,
        };
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Two HOST[:PORT] names for one registry: equal, `:443` being the default.
pub fn same_registry(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(":443").map(str::to_string).unwrap_or(s)
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_on_metadata_addresses_are_refused_unless_the_registry_is_there() {
        for realm in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "https://169.254.170.2/v2/credentials",
            "http://[fd00:ec2::254]/latest/api/token",
            "http://[fe80::1]/token",
        ] {
            let why = metadata_realm("registry.example.invalid", realm);
            assert!(
                why.as_deref().is_some_and(|w| w.contains("link-local")),
                "{realm}: {why:?}"
            );
        }
        assert_eq!(
            metadata_realm("169.254.10.10:5000", "http://169.254.10.10:5001/token"),
            None
        );
        assert_eq!(metadata_realm("ghcr.io", "https://127.0.0.1/token"), None);
        assert_eq!(metadata_realm("ghcr.io", "https://10.1.2.3/token"), None);
    }

    fn bearer(realm: &str) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
        }
    }

    #[test]
    fn challenges_read_as_oci_client_reads_them() {
        assert_eq!(parse(None), Challenge::None);
        assert_eq!(parse(Some(b"Basic realm=\"registry\"")), Challenge::Basic);
        assert_eq!(
            parse(Some(
                b"Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"x\""
            )),
            bearer("https://auth.example/token")
        );
        // Several challenges: the Bearer one, wherever it is.
        assert_eq!(
            parse(Some(
                b"Basic realm=\"a\", Bearer realm=\"http://evil.example/t\""
            )),
            bearer("http://evil.example/t")
        );
        // Bearer without a realm: oci-client falls back to Basic.
        assert_eq!(parse(Some(b"Bearer service=\"reg\"")), Challenge::Basic);
        assert_eq!(parse(Some(b"bEaReR realm=x")), bearer("x"));
        assert_eq!(parse(Some(b"\xff\xfe")), Challenge::Basic);
    }

    fn route<'a>(registry: &'a str, plain_http: bool, skip: &'a dyn Fn(&str) -> bool) -> Route<'a> {
        Route {
            registry,
            plain_http,
            skips_verification: skip,
        }
    }

    fn sent(v: &Verdict) -> bool {
        matches!(v, Verdict::Send { .. })
    }

    #[test]
    fn basic_credentials_go_to_a_token_service_only_over_https() {
        let none = |_: &str| false;
        let tls = route("reg.example:5000", false, &none);
        assert_eq!(
            judge(&tls, "https://reg.example:5000/token"),
            Verdict::Send { elsewhere: None }
        );
        // Another host over HTTPS: sent, and named.
        assert_eq!(
            judge(&tls, "https://auth.example/token?x=1"),
            Verdict::Send {
                elsewhere: Some(("auth.example".into(), "https://auth.example/token".into()))
            }
        );
        // Plain HTTP from an HTTPS registry: never, same host or not.
        for realm in ["http://reg.example:5000/token", "http://auth.example/token"] {
            let v = judge(&tls, realm);
            assert!(!sent(&v), "{realm}: {v:?}");
        }
        // A plain-HTTP registry: its own host over HTTP is no worse than itself.
        let plain = route("127.0.0.1:5000", true, &none);
        assert!(sent(&judge(&plain, "http://127.0.0.1:5001/token")));
        let v = judge(&plain, "http://127.0.0.2:5001/token");
        match v {
            Verdict::Withhold { reason, .. } => {
                assert!(
                    reason.contains("127.0.0.2") && reason.contains("plain HTTP"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Nonsense realms are not followed.
        for realm in [
            "/token",
            "ftp://127.0.0.1/t",
            "file:///etc/passwd",
            "data:,x",
        ] {
            assert!(!sent(&judge(&plain, realm)), "{realm}");
        }
    }

    #[test]
    fn skipping_verification_for_a_registry_does_not_cover_its_token_service() {
        let skip_reg = |h: &str| same_registry(h, "reg.example:5000");
        let r = route("reg.example:5000", false, &skip_reg);
        let v = judge(&r, "https://auth.example/token");
        match &v {
            Verdict::Withhold { reason, hint } => {
                assert!(reason.contains("auth.example"), "{reason}");
                assert!(hint.contains("--skip-tls-verify auth.example"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
        // Same HOST:PORT as the registry: covered by the registry's own flag.
        assert!(sent(&judge(&r, "https://reg.example:5000/token")));
        // Named too: sent.
        let skip_both =
            |h: &str| same_registry(h, "reg.example:5000") || same_registry(h, "auth.example");
        let r = route("reg.example:5000", false, &skip_both);
        assert!(sent(&judge(&r, "https://auth.example:443/token")));
    }

    #[test]
    fn messages_show_the_realm_without_userinfo_or_query() {
        let none = |_: &str| false;
        let r = route("reg.example", false, &none);
        let v = judge(&r, "http://user:pw@auth.example/token?account=alice#x");
        let Verdict::Withhold { reason, .. } = v else {
            panic!("{v:?}")
        };
        assert!(reason.contains("http://auth.example/token"), "{reason}");
        assert!(
            !reason.contains("pw") && !reason.contains("alice"),
            "{reason}"
        );
    }

    #[test]
    fn hosts_and_registries() {
        assert_eq!(host_of("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "[::1]");
        assert_eq!(host_of("reg.example"), "reg.example");
        assert!(same_registry("Reg.example:443", "reg.example"));
        assert!(!same_registry("reg.example:5000", "reg.example"));
    }
}
