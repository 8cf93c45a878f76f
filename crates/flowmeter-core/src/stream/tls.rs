//! TLS to Redis (`rediss://` URLs): the CA and client certificate files of
//! `[redis]`, read and checked before the first connection, and handshake
//! failures turned into errors that say which setting to fix.
//!
//! rustls with ring as the one crypto provider; without `tls_ca_file` the
//! system's trust store is used.

use std::path::{Path, PathBuf};

use super::StreamError;
use crate::pem::PemKind;

/// The certificate files of a `rediss://` connection (`redis.tls_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA(s) the server's certificate must be signed by; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key, for `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Whether `url` asks for TLS.
pub(super) fn is_tls_url(url: &str) -> bool {
    url.trim_start()
        .to_ascii_lowercase()
        .starts_with("rediss://")
}

/// The client for `url`: plain for `redis://`, TLS with `tls`'s files for
/// `rediss://`. Files given with a `redis://` URL are an error rather than
/// silently unused.
pub(super) fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, StreamError> {
    if !is_tls_url(url) {
        if tls.is_set() {
            return Err(StreamError::TlsConfig(
                "redis.tls_ca_file / tls_cert_file / tls_key_file are set but redis.url is not \
                 rediss://: use a rediss:// URL to connect with TLS, or unset them"
                    .into(),
            ));
        }
        return Ok(redis::Client::open(url)?);
    }
    // redis builds its rustls config with the process-wide provider; ring
    // is the one this build uses (installing twice is a no-op error).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read_pem("redis.tls_ca_file", p, PemKind::Certificates))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem("redis.tls_cert_file", cert, PemKind::Certificates)?,
            client_key: read_pem("redis.tls_key_file", key, PemKind::PrivateKey)?,
        }),
        (None, None) => None,
        _ => {
            return Err(StreamError::TlsConfig(
                "redis.tls_cert_file and redis.tls_key_file go together: set both or neither"
                    .into(),
            ))
        }
    };
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )?)
}

/// `path`'s bytes, checked to hold `kind`.
fn read_pem(field: &str, path: &Path, kind: PemKind) -> Result<Vec<u8>, StreamError> {
    crate::pem::read(field, path, kind).map_err(StreamError::TlsConfig)
}

/// Turns a failed first connection into an error that names the setting to
/// fix, when the failure is TLS's (a certificate the client refused, or a
/// plain client talking to a TLS port); other failures pass through.
pub(super) fn explain_connect_error(
    url: &str,
    tls: &RedisTls,
    err: redis::RedisError,
) -> StreamError {
    let text = err.to_string();
    if is_tls_url(url) {
        let ca = match &tls.ca_file {
            Some(p) => format!("redis.tls_ca_file ({})", p.display()),
            None => "any CA of the system's trust store (set redis.tls_ca_file to the CA that signed it)".into(),
        };
        let reason = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
            format!("the server certificate is not signed by {ca}")
        } else if text.contains("NotValidForName") || text.contains("not valid for name") {
            "the server certificate does not name the host of redis.url: connect with a name (or IP) the certificate lists".into()
        } else if text.contains("Expired") || text.contains("NotValidYet") {
            "the server certificate has expired or is not valid yet".into()
        } else if text.contains("CertificateRequired") || text.contains("certificate required") {
            "the server requires a client certificate: set redis.tls_cert_file and redis.tls_key_file".into()
        } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
            "the server did not answer with TLS: is this port its tls-port? (a plain port needs redis://)".into()
        } else if text.contains("invalid peer certificate") || text.contains("HandshakeFailure") {
            format!("the server certificate was refused ({text})")
        } else if err.is_connection_dropped() || text.contains("reset by peer") {
            format!("the server closed the connection ({text}); if it checks client certificates (tls-auth-clients), set redis.tls_cert_file and redis.tls_key_file")
        } else {
            return StreamError::Redis(err);
        };
        return StreamError::TlsHandshake { reason };
    }
    if err.is_connection_refusal() {
        // nothing listens there: not a TLS question (is_connection_dropped
        // counts a refusal too)
        return StreamError::Redis(err);
    }
    let dropped = err.is_connection_dropped()
        || text.contains("broken pipe")
        || text.contains("reset by peer")
        || text.contains("unexpected end of file");
    if dropped {
        return StreamError::TlsHandshake {
            reason: format!(
                "Redis closed the connection before answering ({text}); if this port accepts only TLS (redis' tls-port), use a rediss:// URL"
            ),
        };
    }
    StreamError::Redis(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_with_a_plain_url_are_an_error() {
        let tls = RedisTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client("redis://127.0.0.1:6379", &tls).expect_err("refused");
        assert!(e.to_string().contains("rediss://"), "{e}");
        assert!(client("redis://127.0.0.1:6379", &RedisTls::default()).is_ok());
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let tls = RedisTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client("rediss://127.0.0.1:6380", &tls).expect_err("refused");
        assert!(
            e.to_string()
                .contains("redis.tls_ca_file /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let tls = RedisTls {
            ca_file: Some(empty),
            ..Default::default()
        };
        let e = client("rediss://127.0.0.1:6380", &tls).expect_err("refused");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let tls = RedisTls {
            cert_file: Some(dir.path().join("c.pem")),
            ..Default::default()
        };
        let e = client("rediss://127.0.0.1:6380", &tls).expect_err("refused");
        assert!(e.to_string().contains("go together"), "{e}");
    }

    #[test]
    fn only_rediss_is_tls() {
        assert!(is_tls_url("rediss://h:1"));
        assert!(is_tls_url("REDISS://h:1"));
        assert!(!is_tls_url("redis://h:1"));
    }
}
