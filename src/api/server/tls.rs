//! TLS on the listener (`[server.tls]`): the rustls configuration read from
//! PEM files at start, and the handshake of one connection. A client that
//! speaks plain HTTP to the TLS port gets a 400 that says to use https://.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use crate::config::TlsConfig;
use crate::telemetry::metrics;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// Most of a plain-HTTP request read before answering it (so the answer is
/// not lost to a reset), and the longest that takes.
const PLAIN_READ_MAX: usize = 16 * 1024;
const PLAIN_READ_FOR: std::time::Duration = std::time::Duration::from_secs(1);

fn open(path: &Path) -> Result<BufReader<std::fs::File>, ServerError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| ServerError::TlsFile {
            path: path.to_path_buf(),
            source,
        })
}

/// The acceptor of `cfg`, or `None` when TLS is off.
pub(super) fn acceptor(cfg: &TlsConfig) -> Result<Option<TlsAcceptor>, ServerError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let pem = |path: &Path, what| ServerError::TlsPem {
        path: path.to_path_buf(),
        what,
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_reader_iter(open(&cfg.cert_path)?)
            .collect::<Result<_, _>>()
            .map_err(|_| pem(&cfg.cert_path, "readable certificate"))?;
    if certs.is_empty() {
        return Err(pem(&cfg.cert_path, "certificate"));
    }
    let key = PrivateKeyDer::from_pem_reader(open(&cfg.key_path)?)
        .map_err(|_| pem(&cfg.key_path, "private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The TLS handshake of `tcp`, finished by `deadline`; `None` when the
/// client left, failed the handshake, was too slow or spoke plain HTTP
/// (which is answered 400).
pub(super) async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    deadline: Instant,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first == [TLS_HANDSHAKE] => {}
        Ok(Ok(1)) => {
            refuse_plain(tcp, deadline).await;
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            metrics::HTTP_HEADER_TIMEOUTS.inc();
            return None;
        }
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            metrics::HTTP_TLS_FAILURES.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::HTTP_HEADER_TIMEOUTS.inc();
            None
        }
    }
}

/// Answers a plain-HTTP request on the TLS port with 400 and closes.
async fn refuse_plain(mut tcp: TcpStream, deadline: Instant) {
    metrics::HTTP_TLS_FAILURES.inc();
    // Read the request head first: closing with unread data would reset
    // the connection and the client would never see the answer.
    let until = deadline.min(Instant::now() + PLAIN_READ_FOR);
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while head.len() < PLAIN_READ_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend(buf.iter().take(n)),
            _ => break,
        }
    }
    let body = r#"{"error":"this port speaks TLS: use https:// (or wss://)"}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout_at(until + PLAIN_READ_FOR, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |cert: PathBuf, key: PathBuf| TlsConfig {
            cert_path: cert,
            key_path: key,
        };
        assert!(matches!(acceptor(&TlsConfig::default()), Ok(None)));
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&cfg(missing.clone(), missing.clone()))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_ref().is_some_and(|e| e.contains("missing.pem")),
            "{err:?}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let err = acceptor(&cfg(junk.clone(), junk))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_ref().is_some_and(|e| e.contains("junk.pem")),
            "{err:?}"
        );
    }
}
