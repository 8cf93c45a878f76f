//! TLS to MySQL: `mysql.ssl_mode` / `ssl_ca` / `ssl_cert` / `ssl_key` laid
//! over the URL's own parameters (`?ssl-mode=VERIFY_IDENTITY&ssl-ca=…`), the
//! files checked before the first connection, and connection failures that
//! TLS explains turned into errors naming the setting to fix.
//!
//! sqlx's rustls with ring; a CA file is added to the system's trust store.

use std::path::{Path, PathBuf};

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlSslMode};

use super::StoreError;
use crate::config::{MysqlConfig, MysqlSslMode};
use crate::pem::PemKind;

/// MariaDB / MySQL: "Connections using insecure transport are prohibited
/// while --require_secure_transport=ON".
const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
const ER_ACCESS_DENIED: u16 = 1045;

/// The TLS settings in effect, to explain failures.
#[derive(Debug, Clone)]
pub(super) struct TlsContext {
    mode: MysqlSslMode,
    /// The CA file and the setting it came from (`mysql.ssl_ca` or the URL's `ssl-ca`).
    ca: Option<(String, PathBuf)>,
}

/// `opts` with `cfg`'s TLS settings applied over the URL's.
pub(super) fn apply(
    mut opts: MySqlConnectOptions,
    url: &str,
    cfg: Option<&MysqlConfig>,
) -> Result<(MySqlConnectOptions, TlsContext), StoreError> {
    let param = |names: &[&str]| -> Option<String> {
        url::Url::parse(url).ok().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| names.contains(&k.as_ref()))
                .map(|(_, v)| v.into_owned())
        })
    };
    let url_mode = param(&["ssl-mode", "sslmode"]).and_then(|m| parse_mode(&m));
    let mode = cfg
        .and_then(|c| c.ssl_mode)
        .or(url_mode)
        .unwrap_or(MysqlSslMode::Preferred);
    opts = opts.ssl_mode(sqlx_mode(mode));

    let from_url = |names: &[&str], what: &str| -> Option<(String, PathBuf)> {
        param(names).map(|p| (format!("the {what} of mysql.url"), PathBuf::from(p)))
    };
    let mut ca = from_url(&["ssl-ca", "sslca"], "ssl-ca");
    let mut cert = from_url(&["ssl-cert", "sslcert"], "ssl-cert");
    let mut key = from_url(&["ssl-key", "sslkey"], "ssl-key");
    if let Some(c) = cfg {
        if let Some(p) = &c.ssl_ca {
            opts = opts.ssl_ca(p);
            ca = Some(("mysql.ssl_ca".to_string(), p.clone()));
        }
        if let (Some(cp), Some(kp)) = (&c.ssl_cert, &c.ssl_key) {
            opts = opts.ssl_client_cert(cp).ssl_client_key(kp);
            cert = Some(("mysql.ssl_cert".to_string(), cp.clone()));
            key = Some(("mysql.ssl_key".to_string(), kp.clone()));
        }
    }
    if let Some((field, path)) = &ca {
        check_pem(field, path, false)?;
    }
    match (&cert, &key) {
        (Some((cf, cp)), Some((kf, kp))) => {
            check_pem(cf, cp, false)?;
            check_pem(kf, kp, true)?;
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Tls(
                "a client certificate needs its key and the key its certificate: set mysql.ssl_cert and mysql.ssl_key together".into(),
            ))
        }
    }
    if mode == MysqlSslMode::Disabled && (ca.is_some() || cert.is_some()) {
        tracing::warn!(
            "mysql.ssl_mode is disabled: the TLS files configured for MySQL are not used"
        );
    }
    Ok((opts, TlsContext { mode, ca }))
}

/// The URL spelling of MySQL's `--ssl-mode` (`VERIFY_IDENTITY`, any case).
fn parse_mode(s: &str) -> Option<MysqlSslMode> {
    Some(match s.to_ascii_lowercase().as_str() {
        "disabled" => MysqlSslMode::Disabled,
        "preferred" => MysqlSslMode::Preferred,
        "required" => MysqlSslMode::Required,
        "verify_ca" => MysqlSslMode::VerifyCa,
        "verify_identity" => MysqlSslMode::VerifyIdentity,
        _ => return None,
    })
}

fn sqlx_mode(m: MysqlSslMode) -> MySqlSslMode {
    match m {
        MysqlSslMode::Disabled => MySqlSslMode::Disabled,
        MysqlSslMode::Preferred => MySqlSslMode::Preferred,
        MysqlSslMode::Required => MySqlSslMode::Required,
        MysqlSslMode::VerifyCa => MySqlSslMode::VerifyCa,
        MysqlSslMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
    }
}

/// Fails with a message naming `field` when `path` is not a readable PEM
/// certificate file (or private key file, `key`).
fn check_pem(field: &str, path: &Path, key: bool) -> Result<(), StoreError> {
    let kind = if key {
        PemKind::PrivateKey
    } else {
        PemKind::Certificates
    };
    crate::pem::read(field, path, kind)
        .map(|_| ())
        .map_err(StoreError::Tls)
}

impl TlsContext {
    /// `e`, from a first connection, as an error that names what to fix
    /// when TLS explains it.
    pub(super) fn explain(&self, e: sqlx::Error) -> StoreError {
        let text = e.to_string();
        let number = match &e {
            sqlx::Error::Database(d) => d
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(|m| m.number()),
            _ => None,
        };
        let mode = format!("{:?}", self.mode).to_ascii_lowercase();
        let reason = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
            match &self.ca {
                Some((field, path)) => format!(
                    "the server certificate is not signed by {field} ({}) nor by a CA of the system's trust store",
                    path.display()
                ),
                None => "the server certificate is not signed by a CA of the system's trust store: set mysql.ssl_ca to the CA that signed it".into(),
            }
        } else if text.contains("NotValidForName") || text.contains("not valid for name") {
            "the server certificate does not name the host of mysql.url: connect with a name (or IP) it lists, or use mysql.ssl_mode = \"verify_ca\"".into()
        } else if text.contains("Expired") || text.contains("NotValidYet") {
            "the server certificate has expired or is not valid yet".into()
        } else if number == Some(ER_SECURE_TRANSPORT_REQUIRED) {
            format!(
                "the server accepts only TLS connections and mysql.ssl_mode is {mode}: set mysql.ssl_mode = \"verify_identity\" (or \"required\") and mysql.ssl_ca ({text})"
            )
        } else if number == Some(ER_ACCESS_DENIED) && self.mode == MysqlSslMode::Disabled {
            format!(
                "access denied with mysql.ssl_mode = \"disabled\" ({text}); if the account is created REQUIRE SSL, set mysql.ssl_mode = \"verify_identity\" (or \"required\")"
            )
        } else if text.contains("does not support TLS") || text.contains("not support SSL") {
            format!(
                "the server does not offer TLS but mysql.ssl_mode is {mode}: enable TLS on the server (ssl_cert, ssl_key) or lower mysql.ssl_mode"
            )
        } else {
            return StoreError::Db(e);
        };
        StoreError::Tls(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MySqlConnectOptions {
        "mysql://root@127.0.0.1:3306/x".parse().expect("url")
    }

    #[test]
    fn the_url_mode_applies_unless_the_config_sets_one() {
        let url = "mysql://root@127.0.0.1:3306/x?ssl-mode=VERIFY_CA";
        let (_, t) = apply(base(), url, None).expect("applies");
        assert_eq!(t.mode, MysqlSslMode::VerifyCa);
        let cfg = MysqlConfig {
            ssl_mode: Some(MysqlSslMode::Disabled),
            ..Default::default()
        };
        let (_, t) = apply(base(), url, Some(&cfg)).expect("applies");
        assert_eq!(t.mode, MysqlSslMode::Disabled);
        let (_, t) = apply(base(), "mysql://root@h/x", None).expect("applies");
        assert_eq!(t.mode, MysqlSslMode::Preferred);
    }

    #[test]
    fn unreadable_or_non_pem_files_are_named() {
        let mut cfg = MysqlConfig {
            ssl_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = apply(base(), &cfg.url.clone(), Some(&cfg)).expect_err("refused");
        assert!(
            e.to_string().contains("mysql.ssl_ca /nonexistent/ca.pem"),
            "{e}"
        );
        let e = apply(base(), "mysql://h/x?ssl-ca=/nonexistent/u.pem", None).expect_err("refused");
        assert!(e.to_string().contains("ssl-ca of mysql.url"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "junk").expect("write");
        cfg.ssl_ca = Some(junk);
        let e = apply(base(), &cfg.url.clone(), Some(&cfg)).expect_err("refused");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }
}
