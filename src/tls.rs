//! Optional mutual TLS for every gRPC connection of a node.
//!
//! A `TlsConfig` holds the node's certificate chain and private key and the CA certificate(s)
//! that sign every member's certificate. The PEM files are read and checked once, when the
//! `TlsConfig` is built (`from_pem_files`), so a typo in a path fails at startup with a typed
//! error instead of at the first connection.
//!
//! With `Config::tls` set, a node's server accepts only TLS connections whose client presents a
//! certificate signed by the CA, and every connection the node opens (raft messages, snapshots,
//! forwarded proposals, join calls) presents the node's own certificate and checks the server's
//! against the CA. The name checked in the server's certificate is the host of the address being
//! dialled (a DNS name or an IP address, so certificates need that SAN), unless
//! `with_server_name` fixes one name for every member.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Why TLS material could not be used. Each message names the file (or "inline PEM") involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error(
        "cannot read the TLS {what} file {path:?}: {source}; check the path and its permissions"
    )]
    Read {
        /// Which input: "certificate", "key" or "CA".
        what: &'static str,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or CA input holds no usable PEM certificate.
    #[error("the TLS {what} ({origin}) is not a PEM certificate: {reason}; expected one or more \"-----BEGIN CERTIFICATE-----\" blocks")]
    BadCertificate {
        /// Which input: "certificate" or "CA".
        what: &'static str,
        /// Where the input came from: its file, or "inline PEM".
        origin: String,
        /// What the PEM parser found wrong.
        reason: String,
    },
    /// The key input holds no usable PEM private key.
    #[error("the TLS key ({origin}) is not a PEM private key: {reason}; expected a PKCS#8, PKCS#1 or SEC1 \"-----BEGIN ... PRIVATE KEY-----\" block")]
    BadKey {
        /// Where the key came from: its file, or "inline PEM".
        origin: String,
        /// What the PEM parser found wrong.
        reason: String,
    },
    /// The server name override is not a valid DNS name or IP address.
    #[error("TLS server name {0:?} is not a valid DNS name or IP address")]
    BadServerName(String),
    /// rustls refused the material (for example a key that does not match the certificate).
    #[error("TLS setup failed: {0}; check that the key belongs to the certificate")]
    Setup(String),
}

/// Mutual TLS material of a node (or a client): its certificate and key, and the CA that signs
/// every member. Cheap to clone (the PEM bytes are shared).
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Material>,
    server_name: Option<String>,
}

struct Material {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// Where the material came from, for `Debug` and error messages (never the key itself).
    origin: String,
}

/// How long a TLS handshake may take before the connection is dropped (server side).
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsConfig {
    /// Read and check the node's certificate chain, its private key and the CA certificate(s),
    /// all PEM files. Fails with `TlsError::Read` for a missing or unreadable file and
    /// `BadCertificate` / `BadKey` for contents that are not what they should be.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let (cert, key, ca) = (cert.as_ref(), key.as_ref(), ca.as_ref());
        let material = Material {
            cert_pem: read("certificate", cert)?,
            key_pem: read("key", key)?,
            ca_pem: read("CA", ca)?,
            origin: format!(
                "cert {}, key {}, CA {}",
                cert.display(),
                key.display(),
                ca.display()
            ),
        };
        material.check(
            &cert.display().to_string(),
            &key.display().to_string(),
            &ca.display().to_string(),
        )?;
        Ok(TlsConfig {
            inner: Arc::new(material),
            server_name: None,
        })
    }

    /// Like `from_pem_files`, with the PEM contents given directly.
    pub fn from_pem(
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
        ca: impl Into<Vec<u8>>,
    ) -> Result<Self, TlsError> {
        let material = Material {
            cert_pem: cert.into(),
            key_pem: key.into(),
            ca_pem: ca.into(),
            origin: "inline PEM".into(),
        };
        material.check("inline PEM", "inline PEM", "inline PEM")?;
        Ok(TlsConfig {
            inner: Arc::new(material),
            server_name: None,
        })
    }

    /// Check every server's certificate against this one name instead of the host of the
    /// address being dialled. Useful when all members share a certificate name (for example
    /// `pontoon-node`) or are reached through addresses their certificates do not list.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(TlsError::BadServerName(name));
        }
        self.server_name = Some(name);
        Ok(self)
    }

    /// The server name override, if one is set.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The tonic client side: present our identity, trust only the CA.
    pub(crate) fn client_config(&self, handshake_timeout: Duration) -> ClientTlsConfig {
        let m = &self.inner;
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&m.ca_pem))
            .identity(Identity::from_pem(&m.cert_pem, &m.key_pem))
            .timeout(handshake_timeout);
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }

    /// The tonic server side: present our identity, require a client certificate from the CA.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let m = &self.inner;
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&m.cert_pem, &m.key_pem))
            .client_ca_root(Certificate::from_pem(&m.ca_pem))
            .client_auth_optional(false)
            .timeout(SERVER_HANDSHAKE_TIMEOUT)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("origin", &self.inner.origin)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Material {
    fn check(&self, cert_origin: &str, key_origin: &str, ca_origin: &str) -> Result<(), TlsError> {
        check_certificates("certificate", cert_origin, &self.cert_pem)?;
        check_certificates("CA", ca_origin, &self.ca_pem)?;
        PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::BadKey {
            origin: key_origin.to_string(),
            reason: pem_reason(e),
        })?;
        Ok(())
    }
}

fn check_certificates(what: &'static str, origin: &str, pem: &[u8]) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        what,
        origin: origin.to_string(),
        reason,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| bad(pem_reason(e)))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no certificate found".into()));
    }
    Ok(())
}

fn pem_reason(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => "nothing of that kind found".into(),
        other => other.to_string(),
    }
}

/// An error and its sources as one line ("a: b: c"): tonic wraps the useful TLS detail deep.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Compare two secrets in time that depends only on their lengths, not on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Structurally valid PEM (base64 of arbitrary bytes): enough for the parsing checks, which
    // look at the PEM framing, not at the certificate inside.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", CERT);
        let key = write(dir.path(), "key.pem", KEY);
        let missing = dir.path().join("nope.pem");
        let err = TlsConfig::from_pem_files(&cert, &key, &missing).expect_err("missing CA");
        match &err {
            TlsError::Read { what, path, .. } => {
                assert_eq!(*what, "CA");
                assert_eq!(path, &missing);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = TlsConfig::from_pem_files(&missing, &key, &cert).expect_err("missing cert");
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_pem_is_refused_with_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = write(dir.path(), "cert.pem", CERT);
        let key = write(dir.path(), "key.pem", KEY);
        let garbage = write(dir.path(), "garbage.pem", "this is not PEM at all\n");
        let err = TlsConfig::from_pem_files(&garbage, &key, &cert).expect_err("garbage cert");
        assert!(
            matches!(
                err,
                TlsError::BadCertificate {
                    what: "certificate",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = TlsConfig::from_pem_files(&cert, &key, &garbage).expect_err("garbage CA");
        assert!(
            matches!(err, TlsError::BadCertificate { what: "CA", .. }),
            "{err:?}"
        );
        let err = TlsConfig::from_pem_files(&cert, &garbage, &cert).expect_err("garbage key");
        assert!(matches!(err, TlsError::BadKey { .. }), "{err:?}");
        // A certificate where the key should be is not a key either.
        let err = TlsConfig::from_pem_files(&cert, &cert, &cert).expect_err("cert as key");
        assert!(matches!(err, TlsError::BadKey { .. }), "{err:?}");
        // Broken base64 inside a PEM frame.
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = TlsConfig::from_pem_files(&broken, &key, &cert).expect_err("broken cert");
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err:?}");
    }

    #[test]
    fn well_formed_pem_loads_and_debug_hides_the_key() {
        let tls = TlsConfig::from_pem(CERT, KEY, CERT).expect("well-formed PEM");
        let shown = format!("{tls:?}");
        assert!(!shown.contains("AAECAwQFBgcICQ"), "{shown}");
        assert!(tls.server_name().is_none());
        let named = tls
            .clone()
            .with_server_name("pontoon-node")
            .expect("dns name");
        assert_eq!(named.server_name(), Some("pontoon-node"));
        assert!(tls.clone().with_server_name("127.0.0.1").is_ok());
        assert!(matches!(
            tls.with_server_name("not a name!"),
            Err(TlsError::BadServerName(_))
        ));
    }

    /// A real certificate, and the PEM of a key that is not its own.
    fn certificate_with_foreign_key() -> (String, String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("other key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed").pem();
        (cert, key.serialize_pem(), other.serialize_pem())
    }

    #[test]
    fn key_of_another_certificate_fails_server_setup_with_a_typed_error() {
        let (cert, own_key, foreign_key) = certificate_with_foreign_key();
        let good = TlsConfig::from_pem(cert.clone(), own_key, cert.clone()).expect("valid PEM");
        assert!(tonic::transport::Server::builder()
            .tls_config(good.server_config())
            .is_ok());
        // Well-formed PEM, so loading succeeds; the mismatch shows when the server is set up
        // (`Raft::bootstrap` maps it to `Error::Tls(TlsError::Setup)`).
        let bad = TlsConfig::from_pem(cert.clone(), foreign_key, cert).expect("valid PEM");
        assert!(tonic::transport::Server::builder()
            .tls_config(bad.server_config())
            .is_err());
    }

    #[test]
    fn constant_time_eq_compares_whole_secrets() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
