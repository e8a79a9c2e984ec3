//! STARTTLS (RFC 3207) policy and the rustls configuration behind it.
//!
//! Between mail servers most certificates cannot be verified against the name the client
//! looked up (an MX name chosen by the domain, self-signed certificates, ...), so refusing such
//! a channel would mean sending in clear text instead. [`TlsPolicy::Opportunistic`] therefore
//! encrypts whenever the server offers STARTTLS, and only *records* whether the certificate
//! verified ([`TlsInfo::verified`]), as Postfix's `smtp_tls_security_level = may` does. The
//! handshake itself is checked in full: the server must prove it holds the certificate's key
//! (the handshake signatures are verified), only the certificate's chain and name are not.
//!
//! When an opportunistic STARTTLS fails (the handshake fails or times out, the peer closes or
//! sends garbage after its `220`, or the session breaks before the EHLO inside TLS is
//! answered), [`Connection::connect`](crate::Connection::connect) returns
//! [`ClientError::Tls`](crate::ClientError::Tls) and [`Deliverer`](crate::Deliverer) tries the
//! same address once more without STARTTLS, sending in clear text, as Postfix does at level
//! `may`: the alternative, deferring until the message expires, protects nothing, since the
//! policy would have sent in clear text to a server not offering STARTTLS at all.
//!
//! [`TlsPolicy::RequireVerified`] (Postfix's `secure`/`verify`) fails the connection when the
//! server does not offer STARTTLS or its certificate does not chain to a trusted root for the
//! host name that was connected to. Trusted roots are Mozilla's (the `webpki-roots` crate,
//! compiled in, so the result does not depend on the machine) plus any given in
//! [`ClientConfig::extra_roots`](crate::ClientConfig::extra_roots).

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// When to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Use STARTTLS whenever the server offers it; encrypt even when the certificate cannot be
    /// verified. Send in clear text when it is not offered, and (with
    /// [`Deliverer`](crate::Deliverer)) on a new connection when STARTTLS fails. The default,
    /// as for relaying between MX hosts.
    #[default]
    Opportunistic,
    /// Require STARTTLS and a certificate valid for the host name connected to; fail otherwise
    /// (never falls back to clear text).
    RequireVerified,
    /// Never use STARTTLS.
    None,
}

/// What was negotiated on an encrypted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version, e.g. `TLSv1_3`.
    pub protocol: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Whether the certificate chains to a trusted root and is valid for the host name.
    /// Always true under [`TlsPolicy::RequireVerified`].
    pub verified: bool,
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.protocol,
            self.cipher,
            if self.verified {
                "verified"
            } else {
                "not verified"
            }
        )
    }
}

/// The rustls pieces for one [`ClientConfig`](crate::ClientConfig), built once.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    /// The configuration for the handshake (which verifier depends on the policy).
    pub config: Arc<rustls::ClientConfig>,
    /// The full verifier, used after an opportunistic handshake to tell whether the
    /// certificate would have verified.
    pub verifier: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup").finish_non_exhaustive()
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSetup {
    /// Builds the verifier from Mozilla's roots plus `extra_roots`, and the rustls client
    /// configuration for `policy`.
    pub(crate) fn new(
        policy: TlsPolicy,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, String> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| format!("extra root certificate: {e}"))?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let config = match policy {
            TlsPolicy::RequireVerified | TlsPolicy::None => builder
                .with_webpki_verifier(Arc::clone(&verifier))
                .with_no_client_auth(),
            TlsPolicy::Opportunistic => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
            verifier,
        })
    }

    /// Whether `chain` (end entity first) verifies for `name` with the full verifier.
    pub(crate) fn verifies(
        &self,
        chain: &[CertificateDer<'static>],
        name: &ServerName<'_>,
    ) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
            .is_ok()
    }
}

/// Accepts any certificate chain, but checks the handshake signatures with the certificate's
/// key, so the peer must hold the key of the certificate it presented.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
