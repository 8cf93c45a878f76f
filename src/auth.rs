//! Bearer tokens and scopes (`[auth]` in the config). A request names its
//! token in `Authorization: Bearer <token>` or, where headers cannot be set
//! (browser WebSockets), in the `token` query parameter.

use axum::http::HeaderMap;

use crate::config::AuthConfig;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Ingest,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
        }
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

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    cfg: AuthConfig,
}

/// Equal-length comparison that does not stop at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    pub fn new(cfg: AuthConfig) -> Self {
        Self { cfg }
    }

    /// Whether any token is configured (else everything is open).
    pub fn enabled(&self) -> bool {
        !self.cfg.tokens.is_empty()
    }

    /// The token of a request: the bearer header, else the `token` query parameter.
    pub fn token_of<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .or(query_token)
            .filter(|t| !t.is_empty())
    }

    /// Checks `token` for `scope`; returns the token's name (`anonymous` when auth is off).
    pub fn check(&self, token: Option<&str>, scope: Scope) -> Result<String, AuthError> {
        if !self.enabled() {
            return Ok("anonymous".into());
        }
        let token = token.ok_or(AuthError::Missing)?;
        let t = self
            .cfg
            .tokens
            .iter()
            .find(|t| same(&t.token, token))
            .ok_or(AuthError::Unknown)?;
        if t.scopes.iter().any(|s| s == scope.name()) {
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
    fn scopes_are_checked() {
        let auth = Auth::new(AuthConfig {
            tokens: vec![TokenConfig {
                name: "dash".into(),
                token: "0123456789abcdef".into(),
                scopes: vec!["read".into()],
            }],
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
        assert_eq!(auth.check(None, Scope::Read), Err(AuthError::Missing));
        assert_eq!(
            Auth::default().check(None, Scope::Read),
            Ok("anonymous".into())
        );
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(Auth::token_of(&h, Some("q")), Some("abc"));
        assert_eq!(Auth::token_of(&HeaderMap::new(), Some("q")), Some("q"));
    }
}
