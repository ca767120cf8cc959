//! From a ledger URL to a pool of connections: reading the URL (libpq's `postgres://` form),
//! TLS with rustls when it asks for it, and a name for messages that never carries a secret.
//!
//! `sslmode` as libpq reads it: `disable` (the default here: a ledger on loopback or a private
//! network), `prefer` and `require` (encrypted, the server's certificate not checked),
//! `verify-ca` and `verify-full` (encrypted, the certificate checked against `sslrootcert` or
//! the system's roots, and its name against the host; rustls always checks the name, so
//! `verify-ca` is as strict as `verify-full`). A password missing from the URL comes from
//! `PGPASSWORD`, a user from `PGUSER` or the login name, as with libpq.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

/// Why a ledger URL cannot be used. Never holds the URL itself (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("the ledger URL is not a URL ({0}); expected postgres://user@host:port/database")]
    NotAUrl(String),
    #[error("the ledger URL's scheme is {0:?}; expected postgres:// or postgresql://")]
    Scheme(String),
    #[error(
        "the ledger URL has an unsupported sslmode {0:?} (disable, prefer, require, verify-ca, verify-full)"
    )]
    SslMode(String),
    #[error("the ledger URL is not a valid PostgreSQL connection string: {0}")]
    Invalid(String),
    #[error("cannot read the ledger URL's sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    /// Encrypted; the certificate not checked (libpq's `prefer`, `require`).
    Unverified(SslMode),
    /// Encrypted; the certificate and the host name checked.
    Verified,
}

/// A ledger URL, read: the driver's config, how TLS is done, and the name to show.
pub struct Target {
    pub(super) config: tokio_postgres::Config,
    tls: Tls,
    root_cert: Option<String>,
    /// `postgres://host:port/database`: no user, no password, no parameters.
    pub(super) name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `postgres://host:port/database` for `url`, or `postgres (unreadable URL)`: what messages may
/// show of a ledger URL.
pub fn redacted(url: &str) -> String {
    Target::parse(url)
        .map(|t| t.name)
        .unwrap_or_else(|_| "postgres (unreadable URL)".to_owned())
}

impl Target {
    /// Reads a `postgres://` URL.
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let mut parsed = url::Url::parse(url).map_err(|e| UrlError::NotAUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(UrlError::Scheme(parsed.scheme().to_owned()));
        }
        // tokio-postgres knows neither verify-* nor sslrootcert: take them out first.
        let mut tls = Tls::Off;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "sslmode" => {
                    tls = match value.as_ref() {
                        "disable" => Tls::Off,
                        "allow" | "prefer" => Tls::Unverified(SslMode::Prefer),
                        "require" => Tls::Unverified(SslMode::Require),
                        "verify-ca" | "verify-full" => Tls::Verified,
                        other => return Err(UrlError::SslMode(other.to_owned())),
                    }
                }
                "sslrootcert" => root_cert = Some(value.into_owned()),
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config: tokio_postgres::Config = parsed
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| UrlError::Invalid(e.to_string()))?;
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::Unverified(mode) => mode,
            Tls::Verified => SslMode::Require,
        });
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".to_owned());
            config.user(user);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("tollgate");
        let name = name_of(&config);
        Ok(Target {
            config,
            tls,
            root_cert,
            name,
        })
    }

    /// A pool of at most `size` connections to the target. A caller waits at most
    /// `wait` for a free connection, then gets an error naming the pool's size.
    pub(super) fn pool(&self, size: usize, wait: Duration) -> Result<Pool, UrlError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match self.tls {
            Tls::Off => {
                Manager::from_config(self.config.clone(), tokio_postgres::NoTls, manager_config)
            }
            _ => Manager::from_config(
                self.config.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls()?),
                manager_config,
            ),
        };
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| UrlError::Invalid(e.to_string()))
    }

    fn rustls(&self) -> Result<rustls::ClientConfig, UrlError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UrlError::Invalid(e.to_string()))?;
        if self.tls != Tls::Verified {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth());
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| UrlError::RootCert {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                for cert in rustls_pemfile_certs(&pem) {
                    roots.add(cert).map_err(|e| UrlError::RootCert {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                if roots.is_empty() {
                    return Err(UrlError::RootCert {
                        path: path.clone(),
                        reason: "no PEM certificate in it".to_owned(),
                    });
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system root rustls cannot read is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
            }
        }
        Ok(builder.with_root_certificates(roots).with_no_client_auth())
    }
}

/// Certificates in a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// How long connecting (and TLS) may take before the ledger reports the database unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn name_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("postgres://{host}:{port}/{db}")
}

/// `sslmode=require`: encrypted, the certificate not checked (libpq's meaning). The handshake's
/// signatures are still verified, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_shown_has_no_user_password_or_parameters() {
        let t = Target::parse(
            "postgres://alice:s3cret@db.internal:6543/books?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(t.name, "postgres://db.internal:6543/books");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(t.tls, Tls::Unverified(SslMode::Require));
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn verify_full_and_sslrootcert_are_read_here_not_passed_to_the_driver() {
        let t = Target::parse(
            "postgresql://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.tls, Tls::Verified);
        assert_eq!(t.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for (url, want) in [
            ("mysql://u:pw@h/d", "scheme"),
            ("postgres://u:pw@h/d?sslmode=sometimes", "sslmode"),
            ("postgres://u:pw@h/d?nonsense=1", "connection string"),
            ("not a url pw", "not a URL"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: {err}");
        }
        assert_eq!(redacted("postgres://u:pw@h:1/d"), "postgres://h:1/d");
    }
}
