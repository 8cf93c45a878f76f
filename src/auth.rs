//! Bearer tokens and scopes (`[auth]` in the config). A request names its
//! token in `Authorization: Bearer <token>` (the scheme in any case) or,
//! where headers cannot be set (browser WebSockets, `sendBeacon`), in the
//! `token` query parameter.
//!
//! Tokens are kept only as SHA-256 digests (configured as the token or as
//! `token_sha256`); a presented token is hashed and compared with every
//! digest in constant time, so neither its content nor its length shows in
//! the timing.
//!
//! Anonymous callers (auth off) are told apart by [`ClientKey`], the one
//! key every per-client limit uses: the ingest rate limit and the hub's
//! connection and channel caps.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use serde::{Deserialize, Serialize};

/// Bearer tokens. With none configured the API is open, which `serve`
/// allows only on a loopback address unless `allow_anonymous` is set.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    /// Serve without tokens on an address that is not loopback (everything
    /// open to whoever reaches it; a warning says so). Default false: such a
    /// server refuses to start.
    pub allow_anonymous: bool,
    /// `GET /metrics` asks for a token with the `metrics` scope (default
    /// false: open, like `/healthz`).
    pub metrics_requires_token: bool,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// One token and what it may do. Give either `token` or `token_sha256`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and limits (never the token itself).
    pub name: String,
    /// The token itself, at least 16 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Instead of `token`: its SHA-256 as 64 hex digits
    /// (`printf %s "$TOKEN" | sha256sum`), so the file holds no secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_sha256: String,
    /// `read` (WebSocket hub, queries), `ingest` (POST /v1/events),
    /// `metrics` (GET /metrics with `auth.metrics_requires_token`).
    pub scopes: Vec<String>,
}

/// A client address as per-client limits count it: IPv4 whole (an
/// IPv4-mapped IPv6 address is its IPv4 address), IPv6 by its /64, so one
/// host cannot take fresh quotas from the addresses of its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.into()),
                None => ClientKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// `192.0.2.1`, or `2001:db8:1:2::/64`.
impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ClientKey::V4(v4) => write!(f, "{}", std::net::Ipv4Addr::from(v4)),
            ClientKey::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from(u128::from(prefix) << 64))
            }
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Ingest,
    Metrics,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Read, Scope::Ingest, Scope::Metrics];

    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Metrics => "metrics",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Why a request is refused (HTTP 401 or 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send `Authorization: Bearer <token>` or `?token=<token>`")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("token {name} lacks the {scope} scope")]
    Scope { name: String, scope: &'static str },
}

impl AuthError {
    /// 403 for a known token without the scope, else 401.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Scope { .. } => StatusCode::FORBIDDEN,
            AuthError::Missing | AuthError::Unknown => StatusCode::UNAUTHORIZED,
        }
    }
}

/// `{"error": …}` with [`AuthError::status`]: the answer of every route
/// that checks a token (the API's and the hub's alike).
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Why `serve` refuses to start: open to anyone on a reachable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to serve without tokens on {addr}, which is not a loopback address: configure [auth] tokens (docs/security.md), or set auth.allow_anonymous = true to serve open on purpose")]
pub struct ExposedError {
    pub addr: SocketAddr,
}

type Sha = [u8; 32];

#[derive(Debug, Clone)]
struct Known {
    name: String,
    digest: Sha,
    scopes: Vec<Scope>,
}

/// The configured tokens, as digests.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Vec<Known>,
    metrics_requires_token: bool,
}

fn sha256(token: &str) -> Sha {
    Sha256::digest(token.as_bytes()).into()
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_hex(hex: &str) -> Option<Sha> {
    if hex.len() != 64 {
        return None;
    }
    let mut digits = hex.chars().map(|c| c.to_digit(16));
    let mut out = [0u8; 32];
    for b in &mut out {
        let (hi, lo) = (digits.next()??, digits.next()??);
        *b = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// Checks `[auth]`: every token has a name, exactly one of `token` (at least
/// 16 characters) and `token_sha256` (64 hex digits), and known scopes. The
/// error names the token and the field.
pub fn validate(cfg: &AuthConfig) -> Result<(), String> {
    for t in &cfg.tokens {
        let who = format!("auth.tokens {:?}", t.name);
        if t.name.is_empty() {
            return Err("auth.tokens: every token needs a name".into());
        }
        match (t.token.is_empty(), t.token_sha256.is_empty()) {
            (false, false) => return Err(format!("{who}: give token or token_sha256, not both")),
            (true, true) => return Err(format!("{who}: give token or token_sha256")),
            (false, true) if t.token.chars().count() < 16 => {
                return Err(format!("{who}: a token must be at least 16 characters"))
            }
            (true, false) if parse_hex(&t.token_sha256).is_none() => {
                return Err(format!("{who}: token_sha256 must be 64 hex digits"))
            }
            _ => {}
        }
        if let Some(s) = t.scopes.iter().find(|s| Scope::parse(s).is_none()) {
            return Err(format!(
                "{who}: unknown scope {s:?} (read, ingest, metrics)"
            ));
        }
    }
    let metrics = cfg
        .tokens
        .iter()
        .any(|t| t.scopes.iter().any(|s| s == "metrics"));
    if cfg.metrics_requires_token && !metrics {
        return Err("auth.metrics_requires_token is set but no token has the metrics scope".into());
    }
    Ok(())
}

/// Refuses an open server on an address that is not loopback, unless
/// `auth.allow_anonymous`; an allowed open one is logged as a warning.
pub fn check_exposure(cfg: &AuthConfig, addrs: &[SocketAddr]) -> Result<(), ExposedError> {
    if cfg.enabled() {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        None => {
            tracing::info!(
                "no [auth] tokens configured: the API and the hub are open to local clients"
            );
            Ok(())
        }
        Some(&addr) if cfg.allow_anonymous => {
            tracing::warn!(%addr, "auth.allow_anonymous = true and no [auth] tokens: the API and the hub are open to anyone who can reach {addr}");
            Ok(())
        }
        Some(&addr) => Err(ExposedError { addr }),
    }
}

/// The token in an `Authorization` value: `Bearer <token>`, scheme in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

impl Auth {
    /// Digests of the tokens of `cfg`. Tokens whose `token_sha256` does not
    /// parse are left out ([`validate`] refuses them at load).
    pub fn new(cfg: &AuthConfig) -> Self {
        let tokens = cfg
            .tokens
            .iter()
            .filter_map(|t| {
                let digest = if t.token.is_empty() {
                    parse_hex(&t.token_sha256)?
                } else {
                    sha256(&t.token)
                };
                Some(Known {
                    name: t.name.clone(),
                    digest,
                    scopes: t.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                })
            })
            .collect();
        Self {
            tokens,
            metrics_requires_token: cfg.metrics_requires_token,
        }
    }

    /// Whether any token is configured (else everything is open).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `GET /metrics` asks for a token with the `metrics` scope.
    pub fn metrics_requires_token(&self) -> bool {
        self.metrics_requires_token && self.enabled()
    }

    /// The token of a request: the bearer header, else the `token` query parameter.
    pub fn token_of<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .or(query_token)
            .filter(|t| !t.is_empty())
    }

    /// Checks `token` for `scope`; returns the token's name (`anonymous` when auth is off).
    pub fn check(&self, token: Option<&str>, scope: Scope) -> Result<String, AuthError> {
        if !self.enabled() {
            return Ok("anonymous".into());
        }
        let digest = sha256(token.ok_or(AuthError::Missing)?);
        // Every digest is compared, each in constant time: the time taken
        // does not depend on which token matched or how close a guess was.
        let found = self.tokens.iter().fold(None, |found, t| {
            if bool::from(t.digest.ct_eq(&digest)) {
                Some(t)
            } else {
                found
            }
        });
        let t = found.ok_or(AuthError::Unknown)?;
        if t.scopes.contains(&scope) {
            Ok(t.name.clone())
        } else {
            Err(AuthError::Scope {
                name: t.name.clone(),
                scope: scope.name(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    #[test]
    fn client_keys_group_ipv6_by_64_and_read_back() {
        let key = |s: &str| ClientKey::from(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(key("2001:db8:1:2:ffff::9").to_string(), "2001:db8:1:2::/64");
    }

    fn token(name: &str, token: &str, scopes: &[&str]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token: token.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..TokenConfig::default()
        }
    }

    #[test]
    fn scopes_are_checked() {
        let auth = Auth::new(&AuthConfig {
            tokens: vec![token("dash", "0123456789abcdef", &["read"])],
            ..AuthConfig::default()
        });
        assert_eq!(
            auth.check(Some("0123456789abcdef"), Scope::Read),
            Ok("dash".into())
        );
        assert!(matches!(
            auth.check(Some("0123456789abcdef"), Scope::Ingest),
            Err(AuthError::Scope { .. })
        ));
        assert_eq!(
            auth.check(Some("nope"), Scope::Read),
            Err(AuthError::Unknown)
        );
        // a prefix or an extension of a token is not the token
        for near in ["0123456789abcde", "0123456789abcdef0", ""] {
            assert_eq!(auth.check(Some(near), Scope::Read), Err(AuthError::Unknown));
        }
        assert_eq!(auth.check(None, Scope::Read), Err(AuthError::Missing));
        assert_eq!(
            Auth::default().check(None, Scope::Read),
            Ok("anonymous".into())
        );
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        let mut h = HeaderMap::new();
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "BeArEr\tabc"] {
            h.insert(
                axum::http::header::AUTHORIZATION,
                axum::http::HeaderValue::from_static(v),
            );
            assert_eq!(Auth::token_of(&h, Some("q")), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearerabc", "abc"] {
            h.insert(
                axum::http::header::AUTHORIZATION,
                axum::http::HeaderValue::from_static(v),
            );
            assert_eq!(Auth::token_of(&h, None), None, "{v:?}");
        }
        assert_eq!(Auth::token_of(&HeaderMap::new(), Some("q")), Some("q"));
        assert_eq!(Auth::token_of(&HeaderMap::new(), Some("")), None);
    }

    #[test]
    fn tokens_by_their_hash() {
        let secret = "a-token-only-its-owner-knows";
        let hex: String = sha256(secret).iter().map(|b| format!("{b:02x}")).collect();
        let cfg = AuthConfig {
            tokens: vec![TokenConfig {
                name: "ci".into(),
                token_sha256: hex.to_uppercase(),
                scopes: vec!["ingest".into()],
                ..TokenConfig::default()
            }],
            ..AuthConfig::default()
        };
        assert_eq!(validate(&cfg), Ok(()));
        let auth = Auth::new(&cfg);
        assert_eq!(auth.check(Some(secret), Scope::Ingest), Ok("ci".into()));
        // the digest itself is not a token
        assert_eq!(
            auth.check(Some(&hex), Scope::Ingest),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn validation_names_the_token_and_field() {
        let check = |t: TokenConfig| {
            validate(&AuthConfig {
                tokens: vec![t],
                ..AuthConfig::default()
            })
        };
        let err = check(token("short", "tooshort", &["read"])).expect_err("short");
        assert!(err.contains("\"short\"") && err.contains("16"), "{err}");
        let mut both = token("both", "0123456789abcdef", &["read"]);
        both.token_sha256 = "00".repeat(32);
        assert!(check(both).expect_err("both").contains("not both"));
        let mut badhex = token("hex", "", &["read"]);
        badhex.token_sha256 = "zz".repeat(32);
        assert!(check(badhex).expect_err("hex").contains("token_sha256"));
        let mut odd = token("odd", "", &["read"]);
        odd.token_sha256 = "0".repeat(63);
        assert!(check(odd).expect_err("odd").contains("64 hex"));
        let err = check(token("s", "0123456789abcdef", &["admin"])).expect_err("scope");
        assert!(err.contains("admin"), "{err}");
        let err = validate(&AuthConfig {
            tokens: vec![token("r", "0123456789abcdef", &["read"])],
            metrics_requires_token: true,
            ..AuthConfig::default()
        })
        .expect_err("no metrics token");
        assert!(err.contains("metrics_requires_token"), "{err}");
    }

    /// The k8s manifests' config file (k8s/base/flowmeter.toml) with the
    /// tokens of the example Secret (k8s/examples/flowmeter-auth.tokens.json,
    /// which the pods get as `FLOWMETER__AUTH__TOKENS`): refused while they
    /// hold the placeholders, accepted with digests in their place, and then
    /// the pods may listen on 0.0.0.0; without tokens they may not.
    #[test]
    fn the_k8s_tokens_fail_closed_until_filled_in() {
        let path = std::path::Path::new("k8s/base/flowmeter.toml");
        let settings =
            crate::config::Settings::load_from(Some(path), Vec::new()).expect("the file loads");
        let example = std::fs::read_to_string("k8s/examples/flowmeter-auth.tokens.json")
            .expect("the example tokens");
        let tokens: Vec<TokenConfig> = serde_json::from_str(&example).expect("a token list");
        assert_eq!(tokens.len(), 2);
        let with = |tokens| AuthConfig {
            tokens,
            ..settings.auth.clone()
        };
        let err = validate(&with(tokens.clone())).expect_err("placeholders refused");
        assert!(err.contains("token_sha256"), "{err}");
        let filled = tokens
            .into_iter()
            .map(|t| {
                assert!(t.token_sha256.starts_with("REPLACE"), "{t:?}");
                TokenConfig {
                    token_sha256: "ab".repeat(32),
                    ..t
                }
            })
            .collect();
        let auth = with(filled);
        assert_eq!(validate(&auth), Ok(()));
        let addr: SocketAddr = settings.server.listen.parse().expect("addr");
        assert!(!addr.ip().is_loopback(), "{addr}");
        assert_eq!(check_exposure(&auth, &[addr]), Ok(()));
        assert!(check_exposure(&settings.auth, &[addr]).is_err());
    }

    #[test]
    fn open_servers_only_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let open = AuthConfig::default();
        for ok in ["127.0.0.1:8080", "[::1]:8080", "127.3.4.5:1"] {
            assert_eq!(check_exposure(&open, &[addr(ok)]), Ok(()), "{ok}");
        }
        let err = check_exposure(&open, &[addr("127.0.0.1:1"), addr("0.0.0.0:8080")])
            .expect_err("0.0.0.0 without tokens");
        assert!(err.to_string().contains("auth.allow_anonymous"), "{err}");
        assert!(check_exposure(&open, &[addr("[::]:80")]).is_err());
        let allowed = AuthConfig {
            allow_anonymous: true,
            ..AuthConfig::default()
        };
        assert_eq!(check_exposure(&allowed, &[addr("0.0.0.0:8080")]), Ok(()));
        let closed = AuthConfig {
            tokens: vec![token("r", "0123456789abcdef", &["read"])],
            ..AuthConfig::default()
        };
        assert_eq!(check_exposure(&closed, &[addr("0.0.0.0:8080")]), Ok(()));
    }
}
