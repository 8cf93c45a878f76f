//! A certificate authority made by the test, and a server certificate it
//! signed for `localhost` and 127.0.0.1, as PEM files in a temporary
//! directory.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestCa {
    /// The CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "flowmeter test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Self {
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// An HTTPS client that trusts this CA (HTTP/2 offered by ALPN).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA pem"),
            )
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("https client")
    }

    /// A rustls client configuration that trusts this CA, for raw TLS
    /// connections (e.g. a WebSocket).
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .expect("CA der");
        roots.add(der).expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

use rustls::pki_types::pem::PemObject as _;
