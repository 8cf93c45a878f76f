//! PEM files named in the configuration (TLS CAs, certificates, keys):
//! read and checked at start, so a missing or wrong file is named with its
//! setting instead of failing the first handshake.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more certificates (a CA bundle, a certificate chain).
    Certificates,
    PrivateKey,
}

/// The bytes of `path` (setting `field`), checked to hold `kind`; the error
/// names the setting, the path and what is wrong.
pub fn read(field: &str, path: &Path, kind: PemKind) -> Result<Vec<u8>, String> {
    let bad = |reason: String| format!("{field} {}: {reason}", path.display());
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    match kind {
        PemKind::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad(
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
        }
        PemKind::PrivateKey => {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| bad(format!("holds no PEM private key: {e}")))?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_setting_and_what_is_wrong() {
        let e = read(
            "x.ca",
            Path::new("/nonexistent/ca.pem"),
            PemKind::Certificates,
        )
        .expect_err("missing");
        assert!(
            e.starts_with("x.ca /nonexistent/ca.pem: cannot read it"),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "junk").expect("write");
        let e = read("x.ca", &junk, PemKind::Certificates).expect_err("no certificate");
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = read("x.key", &junk, PemKind::PrivateKey).expect_err("no key");
        assert!(e.contains("holds no PEM private key"), "{e}");
    }
}
