//! Plain values every stage shares, with no behaviour of their own beyond computing and
//! checking them: the bottom of the import order (see `lib.rs`).

/// libzstd level of zstd layers unless `compression_level` says otherwise (the `zstd`
/// CLI's default). Higher levels cost build CPU for fewer bytes: measured on the bigstack
/// venv, level 9 is 14% smaller for 3.7x the CPU, level 19 24% smaller for ~80x
/// (`benches/results/pull-layout.md`); pulls decompress every level as fast.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
/// Highest `compression_level` accepted: 20-22 need `--ultra` windows that decoders may
/// refuse to allocate.
pub const ZSTD_MAX_LEVEL: i32 = 19;

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    /// libzstd at `level` (1-19); part of the layer bytes, so of the key.
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// zstd at the default level.
    pub const ZSTD: Compression = Compression::Zstd {
        level: ZSTD_DEFAULT_LEVEL,
    };

    /// Whether layers are zstd (at any level): what Docker before 23 cannot pull.
    pub fn is_zstd(self) -> bool {
        matches!(self, Compression::Zstd { .. })
    }

    /// OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Strings that are one of these values' text: compare, show and serialise as it.
macro_rules! text_value {
    ($t:ty, $err:ty) => {
        impl $t {
            /// The text (for a digest, the full form `sha256:<hex>`).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
        impl PartialEq<$t> for str {
            fn eq(&self, other: &$t) -> bool {
                self == other.0
            }
        }
        impl PartialEq<$t> for String {
            fn eq(&self, other: &$t) -> bool {
                *self == other.0
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, other: &$t) -> bool {
                *self == other.0
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An OCI content digest, always `sha256:` and 64 lowercase hex digits: the only form
/// venvimg computes, and the only one it turns into a request or a path (so
/// `sha256:../../etc/hostname` is never one). Serialised as that plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// A string that is not a digest venvimg accepts (see [`Digest::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (sha256: and 64 lowercase hex)")]
pub struct DigestError(pub String);

impl Digest {
    /// What every digest starts with.
    pub const PREFIX: &'static str = "sha256:";

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything `r` yields, read in 64 KiB pieces (files of any size).
    pub fn of_reader(mut r: impl std::io::Read) -> std::io::Result<Digest> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(Digest::from_hasher(h));
            }
            h.update(&buf[..n]);
        }
    }

    /// The digest of what `hasher` has seen (for bytes hashed as they stream past).
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "{}{}",
            Self::PREFIX,
            hex::encode(hasher.finalize())
        ))
    }

    /// `s` as a digest, if it is `sha256:` and exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        Self::hex_of(s).map(|_| Digest(s.to_string()))
    }

    /// The 64 hex digits of `s`, if it is a well-formed digest (the one check behind
    /// [`parse`](Self::parse)): safe as a file name, borrowed from `s`.
    pub fn hex_of(s: &str) -> Result<&str, DigestError> {
        s.strip_prefix(Self::PREFIX)
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| DigestError(s.to_string()))
    }

    /// `s` without a leading `sha256:` (as it is when it has none), for showing recorded
    /// values that may be in either form. Validates nothing.
    pub fn hex_part(s: &str) -> &str {
        s.strip_prefix(Self::PREFIX).unwrap_or(s)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }

    /// Where an OCI layout keeps this blob: `blobs/sha256/<hex>`.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    /// The full form cut to 12 hex digits, `sha256:0123456789ab`: enough to tell values
    /// apart without showing (or recording) all of it.
    pub fn short(&self) -> &str {
        &self.0[..Self::PREFIX.len() + 12]
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

text_value!(Digest, DigestError);

/// A platform images are built for, in OCI's spelling (`linux/amd64`, `linux/arm/v7`).
/// Shown and serialised as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

const KNOWN_ARCHES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le",
];

impl Platform {
    /// The platform of this machine, in OCI's spelling.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
            _ => {
                return Err(format!(
                    "`{s}` is not OS/ARCH[/VARIANT]; write e.g. linux/amd64 or linux/arm64"
                ))
            }
        };
        if os != "linux" {
            return Err(format!(
                "unsupported OS `{os}` in `{s}`: nox job images are linux images; write linux/ARCH"
            ));
        }
        if !KNOWN_ARCHES.contains(&arch) {
            return Err(format!(
                "unsupported architecture `{arch}` in `{s}`; use one of: {}",
                KNOWN_ARCHES.join(", ")
            ));
        }
        Ok(Platform {
            os: os.into(),
            architecture: arch.into(),
            variant,
        })
    }
}

/// A session's key: the sha256 of its canonical key document, 64 lowercase hex digits
/// without a prefix (it names a document, not content a registry stores).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

/// A string that is not a key (see [`Key::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a venvimg key (64 lowercase hex)")]
pub struct KeyError(pub String);

impl Key {
    /// How much of a key a tag carries, and what is shown of it.
    pub const SHORT: usize = 16;

    /// The key of a canonical key document.
    pub fn of_document(canonical: &[u8]) -> Key {
        use sha2::Digest as _;
        Key(hex::encode(sha2::Sha256::digest(canonical)))
    }

    /// `s` as a key, if it is 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Key(s.to_string()))
            .ok_or_else(|| KeyError(s.to_string()))
    }

    /// The first 16 hex digits: what the session's tag carries.
    pub fn short(&self) -> &str {
        &self.0[..Self::SHORT]
    }

    /// The first 16 characters of a key an image recorded (or all of a shorter one): for
    /// showing a value read back from a registry, which nothing has checked.
    pub fn short_of(recorded: &str) -> &str {
        recorded.get(..Self::SHORT).unwrap_or(recorded)
    }
}

text_value!(Key, KeyError);

/// An OCI tag venvimg reads or writes: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (the
/// distribution spec's grammar), so it is always a valid reference's tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// A string that is not a tag (see [`Tag::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an OCI tag (letters, digits, `_`, `.`, `-`; at most 128, not starting with `.` or `-`)")]
pub struct TagError(pub String);

impl Tag {
    /// `s` as a tag, if the distribution spec allows it.
    pub fn parse(s: &str) -> Result<Tag, TagError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        ok.then(|| Tag(s.to_string()))
            .ok_or_else(|| TagError(s.to_string()))
    }

    /// A session image's tag: `<venv folder>-<first 16 hex of its key>`, so the registry
    /// listing says which session each image is for.
    pub fn of_session(venv: &VenvName, key: &Key) -> Tag {
        Tag::hashed(venv.as_str(), key.as_str())
    }

    /// `<prefix>-<first 16 hex of hash>`: the index tags (a hash of several keys or tags).
    /// The prefix is a venv folder name or a fixed word (`all`, `sessions`), both ASCII
    /// tag characters; a longer one is cut so the tag stays within 128.
    pub(crate) fn hashed(prefix: &str, hex: &str) -> Tag {
        debug_assert!(
            prefix
                .bytes()
                .chain(hex.bytes())
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-')),
            "{prefix} {hex}"
        );
        let hex = &hex[..Key::SHORT.min(hex.len())];
        let room = 128 - 1 - hex.len();
        let prefix = &prefix[..prefix.len().min(room)];
        Tag(format!("{prefix}-{hex}"))
    }
}

text_value!(Tag, TagError);

/// The name of a session's venv folder under the envdir, as nox makes it (see
/// `python::nox::venv_dir_name`): lowercase letters, digits, `_` and `-`, not starting
/// with `-`. So it is one path component, never `..`, and fits in a tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VenvName(String);

/// A string that is not a plain folder name (see [`VenvName::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a nox venv folder name (lowercase letters, digits, `_`, `-`)")]
pub struct VenvNameError(pub String);

impl VenvName {
    /// `s` as a venv folder name, if nox could have made it.
    pub fn parse(s: &str) -> Result<VenvName, VenvNameError> {
        let ok = !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        ok.then(|| VenvName(s.to_string()))
            .ok_or_else(|| VenvNameError(s.to_string()))
    }

    /// The venv's path in the image: `envdir/name`, joined as nox joins it.
    pub fn path_in(&self, envdir: &str) -> String {
        if envdir.ends_with('/') {
            format!("{envdir}{}", self.0)
        } else {
            format!("{envdir}/{}", self.0)
        }
    }
}

text_value!(VenvName, VenvNameError);

impl AsRef<std::path::Path> for VenvName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

/// A value an image's record holds, as venvimg reads it back: parsed when it is one
/// (`Valid`), else kept as written (`Other`), so `inspect` shows an older or hand-made
/// record rather than refusing it, and a reader that needs the value says what is wrong
/// with it. Written and read as the plain string either way (the record's bytes are part
/// of the image's digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded<T> {
    Valid(T),
    Other(String),
}

impl<T: AsRef<str>> Recorded<T> {
    /// The value, if it parsed.
    pub fn valid(&self) -> Option<&T> {
        match self {
            Recorded::Valid(v) => Some(v),
            Recorded::Other(_) => None,
        }
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        match self {
            Recorded::Valid(v) => v.as_ref(),
            Recorded::Other(s) => s,
        }
    }
}

impl<T: std::str::FromStr> Recorded<T> {
    /// `s` parsed if it is a `T`, else kept as written.
    pub fn read(s: &str) -> Recorded<T> {
        match s.parse() {
            Ok(v) => Recorded::Valid(v),
            Err(_) => Recorded::Other(s.to_string()),
        }
    }
}

impl<T> Default for Recorded<T> {
    fn default() -> Self {
        Recorded::Other(String::new())
    }
}

impl<T> From<T> for Recorded<T> {
    fn from(v: T) -> Self {
        Recorded::Valid(v)
    }
}

impl<T: AsRef<str>> std::fmt::Display for Recorded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<T: AsRef<str>> serde::Serialize for Recorded<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, T: std::str::FromStr> serde::Deserialize<'de> for Recorded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Recorded::read(&String::deserialize(d)?))
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `url` without its userinfo (`https://user:token@host/x` → `https://host/x`): a URL
/// recorded by git or an installer may carry a credential, and what venvimg writes into
/// images and SBOMs is public.
pub fn url_without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// A git remote as a public web URL of the project, for `org.opencontainers.image.source`:
/// `https://[user:token@]host/owner/repo.git`, `ssh://git@host/owner/repo` and
/// `git@host:owner/repo.git` all give `https://host/owner/repo` (forges serve the web page
/// at the clone path); credentials, queries and fragments are dropped. None for anything
/// else (a local path, `file://`): no clean public source.
pub fn public_source_url(remote: &str) -> Option<String> {
    let remote = remote.trim();
    let (scheme, rest) = match remote.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest.to_string()),
        // scp-like: [user@]host:path, with no slash before the colon.
        None => {
            let (host, path) = remote.split_once(':')?;
            if host.is_empty() || host.contains('/') || path.is_empty() {
                return None;
            }
            (
                "ssh".to_string(),
                format!("{host}/{}", path.trim_start_matches('/')),
            )
        }
    };
    let scheme = match scheme.as_str() {
        "https" | "http" => scheme,
        "ssh" | "git" | "git+ssh" | "ssh+git" => "https".to_string(),
        _ => return None,
    };
    let cut = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..cut];
    let (authority, path) = rest.split_at(rest.find('/')?);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // An ssh port is not the web server's.
    let host = if scheme == "https" && !remote.starts_with("http") {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    let path = path.trim_end_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    let clean = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
    (clean(host) && clean(path) && path != "/").then(|| format!("{scheme}://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn of_and_parts() {
        let d = Digest::of(b"abc");
        assert_eq!(d, ABC);
        assert_eq!(d.to_string(), ABC);
        assert_eq!(d.hex(), &ABC[7..]);
        assert_eq!(d.short(), "sha256:ba7816bf8f01");
        assert_eq!(d.blob_path(), format!("blobs/sha256/{}", &ABC[7..]));
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(Digest::from_hasher(h), d);
    }

    #[test]
    fn parse_accepts_only_sha256_and_64_lowercase_hex() {
        assert_eq!(Digest::parse(ABC).unwrap(), ABC);
        assert_eq!(Digest::hex_of(ABC).unwrap(), &ABC[7..]);
        let hex = &ABC[7..];
        for bad in [
            format!("sha512:{hex}"),
            format!("SHA256:{hex}"),
            hex.to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[..63]),
            format!("sha256:{hex}0"),
            "sha256:".to_string(),
            "sha256:aa".to_string(),
            "sha256:../../x".to_string(),
            format!("sha256:../../{}", &hex[6..]),
            format!("sha256:{}/", &hex[..63]),
            String::new(),
        ] {
            assert_eq!(Digest::parse(&bad), Err(DigestError(bad.clone())), "{bad}");
        }
    }

    #[test]
    fn serde_is_the_plain_string_and_checks_it() {
        let d = Digest::parse(ABC).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{ABC}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:../../x\"").is_err());
    }

    #[test]
    fn hex_part_strips_only_a_leading_prefix() {
        assert_eq!(Digest::hex_part("sha256:aa"), "aa");
        assert_eq!(Digest::hex_part("aa"), "aa");
    }

    #[test]
    fn keys_are_64_lowercase_hex_and_tags_carry_16() {
        let k = Key::of_document(b"{}");
        assert_eq!(k.as_str(), Digest::of(b"{}").hex());
        assert_eq!(Key::parse(k.as_str()), Ok(k.clone()));
        for bad in [
            "",
            "ab",
            &k.as_str().to_uppercase(),
            &format!("sha256:{}", k),
        ] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
        let venv = VenvName::parse("tests-3-12").unwrap();
        let t = Tag::of_session(&venv, &k);
        assert_eq!(t, format!("tests-3-12-{}", &k.as_str()[..16]));
        assert_eq!(k.short(), &k.as_str()[..16]);
        assert_eq!(Key::short_of("abc"), "abc");
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        assert!(serde_json::from_str::<Key>("\"../x\"").is_err());
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for ok in ["latest", "_x", "a.b-c_d", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"a".repeat(129)] {
            assert_eq!(Tag::parse(bad), Err(TagError(bad.to_string())), "{bad}");
        }
        // A prefix too long for a tag is cut, so every hashed tag stays one.
        let long = Tag::hashed(&"v".repeat(200), &"ab".repeat(32));
        assert_eq!(long.as_str().len(), 128);
        assert_eq!(Tag::parse(long.as_str()), Ok(long.clone()));
    }

    #[test]
    fn venv_names_are_what_nox_makes() {
        for ok in ["tests", "tests-3-12", "_x", "0abc1234"] {
            let v = VenvName::parse(ok).unwrap();
            assert_eq!(v.path_in("/opt/nox"), format!("/opt/nox/{ok}"));
        }
        for bad in ["", ".", "..", "-x", "a/b", "A", "a.b", "a b", "a\0"] {
            assert!(VenvName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_recorded_value_is_parsed_or_kept_as_written_and_writes_back_the_same() {
        let good = format!("\"{}\"", "ab".repeat(32));
        let r: Recorded<Key> = serde_json::from_str(&good).unwrap();
        assert_eq!(r.valid(), Some(&Key::parse(&"ab".repeat(32)).unwrap()));
        assert_eq!(serde_json::to_string(&r).unwrap(), good);
        let r: Recorded<Key> = serde_json::from_str("\"not-a-key\"").unwrap();
        assert_eq!(r, Recorded::Other("not-a-key".into()));
        assert_eq!(r.valid(), None);
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"not-a-key\"");
        assert_eq!(Recorded::<VenvName>::default().as_str(), "");
    }

    #[test]
    fn platforms_show_and_serialise_as_os_arch_variant() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"linux/arm/v7\"");
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap(),
            Platform::parse("linux/amd64").unwrap()
        );
        assert!(Platform::parse("windows/amd64").is_err());
    }

    #[test]
    fn source_urls_are_public_and_clean() {
        for (remote, want) in [
            (
                "https://github.com/acme/app.git",
                Some("https://github.com/acme/app"),
            ),
            (
                "https://gitlab-ci-token:glpat-SECRET@gitlab.example/g/app.git",
                Some("https://gitlab.example/g/app"),
            ),
            (
                "https://x:y@host:8443/a/b/?q=1",
                Some("https://host:8443/a/b"),
            ),
            (
                "git@github.com:acme/app.git",
                Some("https://github.com/acme/app"),
            ),
            (
                "ssh://git@code.example:2222/acme/app",
                Some("https://code.example/acme/app"),
            ),
            ("/home/me/src/app", None),
            ("file:///srv/git/app.git", None),
            ("../app", None),
            ("https://host", None),
        ] {
            assert_eq!(public_source_url(remote).as_deref(), want, "{remote}");
        }
        assert_eq!(
            url_without_credentials("https://u:p@h/x?a=b@c"),
            "https://h/x?a=b@c"
        );
        assert_eq!(url_without_credentials("file:///src"), "file:///src");
    }
}
