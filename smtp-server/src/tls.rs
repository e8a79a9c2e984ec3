//! TLS configuration: a certificate chain and key from PEM files, reloadable while the
//! server runs.
//!
//! A [`TlsConfig`] is a cheap handle: clone it, give one clone to the builder and keep one to
//! call [`TlsConfig::reload`] (e.g. on SIGHUP, after the certificate was renewed). A reload
//! swaps the rustls configuration atomically; handshakes that already started finish with the
//! old one, every later handshake uses the new one. A reload that fails keeps the old
//! configuration.
//!
//! rustls runs with the `ring` provider and its safe defaults (TLS 1.2 and 1.3).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use crate::handler::TlsInfo;

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// The key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key found in {0}")]
    NoPrivateKey(String),
    /// rustls refused the certificate or key (e.g. they do not match).
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    /// [`TlsConfig::reload`] on a configuration that was not loaded from files.
    #[error("this TLS configuration was not loaded from files")]
    NoFiles,
}

/// A shared, reloadable TLS server configuration; see the module docs.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<ServerConfig>>,
    files: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a certificate chain (leaf first) and its private key from PEM files.
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read or holds no usable certificate or key, or the
    /// key does not fit the certificate.
    pub fn from_pem_files(
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_file, key_file) = (cert_file.as_ref(), key_file.as_ref());
        let config = load_files(cert_file, key_file)?;
        Ok(Self::new(
            config,
            Some((cert_file.to_path_buf(), key_file.to_path_buf())),
        ))
    }

    /// A configuration from PEM text held in memory (not reloadable from files).
    ///
    /// # Errors
    /// As [`TlsConfig::from_pem_files`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let config = build(cert_pem, key_pem, "certificate", "key")?;
        Ok(Self::new(config, None))
    }

    /// Wraps a rustls configuration built by the caller (ALPN, client certificates, another
    /// crypto provider...). Not reloadable from files; use [`TlsConfig::set`] instead.
    pub fn from_server_config(config: Arc<ServerConfig>) -> Self {
        Self::new(config, None)
    }

    fn new(config: Arc<ServerConfig>, files: Option<(PathBuf, PathBuf)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(config),
                files,
            }),
        }
    }

    /// Reads the certificate and key files again and uses them for every later handshake.
    ///
    /// # Errors
    /// As [`TlsConfig::from_pem_files`] (the old configuration stays in use), or
    /// [`TlsError::NoFiles`] when this configuration was not loaded from files.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (cert, key) = self.inner.files.as_ref().ok_or(TlsError::NoFiles)?;
        let config = load_files(cert, key)?;
        self.set(config);
        Ok(())
    }

    /// Replaces the configuration for every later handshake.
    pub fn set(&self, config: Arc<ServerConfig>) {
        let mut guard = match self.inner.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = config;
    }

    /// The configuration in use now.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.inner.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }
}

fn load_files(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    build(
        &cert_pem,
        &key_pem,
        &cert_file.display().to_string(),
        &key_file.display().to_string(),
    )
}

fn build(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_name.to_owned()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoPrivateKey(key_name.to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The protocol and cipher of an established TLS connection, and whether it resumed a session
/// (no client certificate is asked for, so none is verified).
pub(crate) fn tls_info(conn: &ServerConnection) -> TlsInfo {
    let name = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_owned());
    TlsInfo::from_rustls_names(
        &name(conn.protocol_version().map(|v| format!("{v:?}"))),
        &name(
            conn.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
        ),
    )
    .with_resumed(conn.handshake_kind() == Some(tokio_rustls::rustls::HandshakeKind::Resumed))
}
