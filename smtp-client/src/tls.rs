//! TLS: the policy ([`TlsPolicy`]), the rustls configuration behind it, and what went wrong
//! ([`TlsError`]).
//!
//! # Policies
//!
//! - [`TlsPolicy::RequireVerified`], **the default**: STARTTLS (RFC 3207) is required and the
//!   server's certificate must chain to a trusted root and be valid for the host name the
//!   caller gave (Postfix's `secure`/`verify`). A server that does not offer STARTTLS, or
//!   whose certificate does not verify, is an error, and nothing is sent in clear text after
//!   the EHLO. This is what a submission client (port 587) wants.
//! - [`TlsPolicy::Implicit`]: TLS from the first byte (RFC 8314 "implicit TLS", port 465):
//!   the handshake runs right after the TCP connection, before the greeting, with the
//!   certificate verified as above. STARTTLS is never used inside it.
//! - [`TlsPolicy::OpportunisticUnverified`]: for relaying between MX hosts, as Postfix's
//!   `smtp_tls_security_level = may`. Between mail servers most certificates cannot be
//!   verified against the name the client looked up (an MX name chosen by the domain,
//!   self-signed certificates, ...), so refusing such a channel would mean sending in clear
//!   text instead. This policy therefore encrypts whenever the server offers STARTTLS and
//!   only *records* whether the certificate verified ([`TlsInfo::verified`]); it sends in
//!   clear text to a server not offering STARTTLS. The handshake itself is checked in full:
//!   the server must prove it holds the certificate's key (the handshake signatures are
//!   verified), only the certificate's chain and name are not. It protects against passive
//!   eavesdropping, not against an active attacker: its name says so, so that choosing it is
//!   explicit.
//! - [`TlsPolicy::None`]: never TLS. For tests, and for LMTP or SMTP on loopback or a
//!   Unix-domain socket, where there is nothing to protect the session from.
//!
//! Trusted roots are Mozilla's (the `webpki-roots` crate, compiled in, so the result does
//! not depend on the machine) plus any given in
//! [`ClientConfig::extra_roots`](crate::ClientConfig::extra_roots). The certificate is checked
//! against the host name the session was opened for: the `server_name` of
//! [`Connection::connect`](crate::Connection::connect), the host of
//! [`Connection::connect_host`](crate::Connection::connect_host) (never the address it
//! resolved to), the MX name for [`Deliverer`](crate::Deliverer). For an IP address or an
//! address literal the certificate must name that address.
//!
//! # Opportunistic TLS that fails
//!
//! When an opportunistic STARTTLS fails (the handshake fails or times out, the peer closes or
//! sends garbage after its `220`, or the session breaks before the EHLO inside TLS is
//! answered), [`Connection::connect`](crate::Connection::connect) returns
//! [`ClientError::Tls`](crate::ClientError::Tls) and [`Deliverer`](crate::Deliverer) tries the
//! same address once more without STARTTLS, sending in clear text, as Postfix does at level
//! `may`: the alternative, deferring until the message expires, protects nothing, since the
//! policy would have sent in clear text to a server not offering STARTTLS at all. The verified
//! policies never fall back.
//!
//! # One configuration, resumed sessions
//!
//! The rustls configuration is built the first time a [`ClientConfig`](crate::ClientConfig)
//! (or a clone of it) needs TLS, and kept with it: every later connection made with that
//! configuration or its clones uses the same rustls configuration and so its session cache,
//! and a second connection to a server that supports it resumes the TLS session
//! ([`TlsInfo::resumed`]) instead of a full handshake. Changing the policy or the roots of a
//! configuration builds a new one when next needed.
//!
//! # Errors
//!
//! A TLS failure is a [`TlsError`]: the certificate is not trusted
//! ([`TlsError::CertificateInvalid`], with a [`CertificateProblem`] such as
//! [`CertificateProblem::UnknownIssuer`]), is not valid for the name
//! ([`TlsError::NameMismatch`]), the handshake failed for another reason
//! ([`TlsError::HandshakeFailed`]), the peer closed the connection
//! ([`TlsError::PeerClosed`]) or did not answer in time ([`TlsError::Timeout`]), ... Every
//! text from the peer in it (names in its certificate) is escaped when displayed.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::text::escape_controls;

/// When and how to use TLS. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TlsPolicy {
    /// Require STARTTLS and a certificate valid for the host name connected to; fail
    /// otherwise, never falling back to clear text. The default.
    #[default]
    RequireVerified,
    /// Implicit TLS (RFC 8314, port 465): the TLS handshake right after the TCP connection,
    /// before the greeting, with the certificate verified as for
    /// [`RequireVerified`](Self::RequireVerified).
    Implicit,
    /// Use STARTTLS whenever the server offers it, and encrypt even when the certificate
    /// cannot be verified ([`TlsInfo::verified`] says whether it did); send in clear text when
    /// it is not offered, and (with [`Deliverer`](crate::Deliverer)) on a new connection when
    /// STARTTLS fails. Postfix's `may`: for relaying between MX hosts, where most
    /// certificates cannot be verified. No protection against an active attacker.
    OpportunisticUnverified,
    /// Never use TLS. For tests, and for LMTP or SMTP on loopback or a Unix-domain socket.
    None,
}

impl TlsPolicy {
    /// Whether the policy requires a certificate that verifies (and so encryption).
    pub fn requires_verification(self) -> bool {
        matches!(self, Self::RequireVerified | Self::Implicit)
    }
}

/// What was negotiated on an encrypted connection: the protocol crate's type, shared with the
/// server library. Here [`TlsInfo::verified`] says whether the certificate chains to a trusted
/// root and is valid for the host name (always true under [`TlsPolicy::RequireVerified`] and
/// [`TlsPolicy::Implicit`]), and [`TlsInfo::resumed`] whether the handshake resumed a session
/// made with the same [`ClientConfig`](crate::ClientConfig) or a clone of it.
pub use smtp_proto::envelope::TlsInfo;

/// Why a certificate was not accepted ([`TlsError::CertificateInvalid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// The chain does not lead to a trusted root: self-signed, or issued by a private CA not
    /// given in [`ClientConfig::extra_roots`](crate::ClientConfig::extra_roots).
    UnknownIssuer,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotValidYet,
    /// The certificate has been revoked.
    Revoked,
    /// A signature in the chain does not verify.
    BadSignature,
    /// The certificate may not be used for a TLS server.
    InvalidPurpose,
    /// The certificate is malformed.
    BadEncoding,
    /// The server presented no certificate.
    Missing,
    /// Anything else (see the error's detail).
    Other,
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownIssuer => "issued by an unknown authority",
            Self::Expired => "expired",
            Self::NotValidYet => "not valid yet",
            Self::Revoked => "revoked",
            Self::BadSignature => "bad signature",
            Self::InvalidPurpose => "not for a TLS server",
            Self::BadEncoding => "malformed",
            Self::Missing => "none presented",
            Self::Other => "not valid",
        })
    }
}

/// A TLS failure ([`ClientError::Tls`](crate::ClientError::Tls)). Its `Display` is one line,
/// with any text from the peer escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate was refused: it does not chain to a trusted root, has expired, ...
    #[error("certificate not trusted for {name}: {problem} ({detail})")]
    CertificateInvalid {
        /// The name (or address) the certificate was checked for.
        name: String,
        /// What is wrong with it.
        problem: CertificateProblem,
        /// rustls' description.
        detail: String,
    },
    /// The certificate chains to a trusted root but is not valid for the name.
    #[error("certificate not valid for {name} (it names {})", names(.presented))]
    NameMismatch {
        /// The name (or address) the certificate was checked for.
        name: String,
        /// The names the certificate holds (DNS names as they are, other kinds in rustls'
        /// debug form, e.g. `IpAddress(...)`); text from the peer, escaped in `Display`.
        /// Empty when rustls did not report them.
        presented: Vec<String>,
    },
    /// The handshake failed for another reason: an alert from the server (e.g. it demands a
    /// client certificate), no common protocol version or cipher suite, garbage instead of
    /// a TLS record, ...
    #[error("handshake failed: {detail}")]
    HandshakeFailed {
        /// What went wrong.
        detail: String,
    },
    /// The server closed the connection during the handshake, or (opportunistic STARTTLS)
    /// before answering the EHLO inside TLS.
    #[error("the server closed the connection during {stage}")]
    PeerClosed {
        /// What was awaited: `TLS handshake`, `STARTTLS`, `EHLO`.
        stage: &'static str,
    },
    /// No answer in time during the handshake, or (opportunistic STARTTLS) to STARTTLS or
    /// the EHLO inside TLS.
    #[error("timed out waiting for {stage}")]
    Timeout {
        /// What was awaited: `TLS handshake`, `STARTTLS`, `EHLO`.
        stage: &'static str,
    },
    /// Opportunistic STARTTLS: the session broke otherwise between STARTTLS and the reply to
    /// the EHLO inside TLS (an I/O error, a malformed reply).
    #[error("STARTTLS failed: {detail}")]
    SessionFailed {
        /// What went wrong, escaped.
        detail: String,
    },
    /// The TLS configuration could not be built (an unusable extra root certificate), or the
    /// stream cannot carry TLS (a Unix-domain socket).
    #[error("configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
}

fn names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "other names".to_owned();
    }
    presented
        .iter()
        .map(|n| escape_controls(n).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

impl TlsError {
    /// The error for a failed client handshake (what tokio-rustls returns), checked for `name`.
    pub(crate) fn from_handshake(error: &io::Error, name: &ServerName<'_>) -> Self {
        if let Some(tls) = Self::from_tls_io(error, name) {
            return tls;
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::PeerClosed {
                stage: "TLS handshake",
            },
            _ => Self::HandshakeFailed {
                detail: escape_controls(&error.to_string()).into_owned(),
            },
        }
    }

    /// The error inside an I/O error from a TLS stream, when rustls raised it (an alert from
    /// the peer after the handshake, a corrupt record).
    pub(crate) fn from_tls_io(error: &io::Error, name: &ServerName<'_>) -> Option<Self> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|tls| Self::from_rustls(tls, name))
    }

    fn from_rustls(error: &rustls::Error, name: &ServerName<'_>) -> Self {
        let name = server_name_text(name);
        let detail = escape_controls(&error.to_string()).into_owned();
        let problem = match error {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                return Self::NameMismatch {
                    name,
                    presented: Vec::new(),
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => {
                return Self::NameMismatch {
                    name,
                    presented: presented.iter().map(|n| presented_name(n)).collect(),
                }
            }
            rustls::Error::InvalidCertificate(c) => certificate_problem(c),
            rustls::Error::NoCertificatesPresented => CertificateProblem::Missing,
            _ => return Self::HandshakeFailed { detail },
        };
        Self::CertificateInvalid {
            name,
            problem,
            detail,
        }
    }
}

/// A name from the certificate as webpki reports it (`DnsName("mx.example.org")`, Rust's
/// debug form with its escapes): a DNS name bare, other kinds as they are.
fn presented_name(reported: &str) -> String {
    reported
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .unwrap_or(reported)
        .to_owned()
}

fn certificate_problem(error: &CertificateError) -> CertificateProblem {
    match error {
        CertificateError::UnknownIssuer => CertificateProblem::UnknownIssuer,
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            CertificateProblem::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            CertificateProblem::NotValidYet
        }
        CertificateError::Revoked => CertificateProblem::Revoked,
        CertificateError::BadSignature => CertificateProblem::BadSignature,
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            CertificateProblem::InvalidPurpose
        }
        CertificateError::BadEncoding => CertificateProblem::BadEncoding,
        _ => CertificateProblem::Other,
    }
}

/// A server name as text: the DNS name, or the address.
fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => escape_controls(&format!("{name:?}")).into_owned(),
    }
}

/// The rustls pieces for one TLS policy and set of roots, built once.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    /// Whether `config` verifies certificates (else it accepts any, checking signatures).
    verify: bool,
    /// The extra roots it was built with.
    roots: Vec<CertificateDer<'static>>,
    /// The configuration for the handshake (which verifier depends on the policy); it holds
    /// the session cache that lets later connections resume.
    pub config: Arc<rustls::ClientConfig>,
    /// The full verifier, used after an opportunistic handshake to tell whether the
    /// certificate would have verified.
    pub verifier: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("verify", &self.verify)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSetup {
    /// Builds the verifier from Mozilla's roots plus `extra_roots`, and the rustls client
    /// configuration: verifying with it, or (`verify` false) accepting any certificate.
    fn new(verify: bool, extra_roots: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        let config_error = |detail: String| TlsError::Config { detail };
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| config_error(format!("extra root certificate: {e}")))?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| config_error(format!("certificate verifier: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS versions: {e}")))?;
        let config = if verify {
            builder
                .with_webpki_verifier(Arc::clone(&verifier))
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth()
        };
        Ok(Self {
            verify,
            roots: extra_roots.to_vec(),
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

/// How many setups a [`TlsCache`] keeps (one per policy and set of roots in use).
const MAX_SETUPS: usize = 4;

/// The rustls configurations of a [`ClientConfig`](crate::ClientConfig), shared by its
/// clones: built when first needed, then reused, so that TLS sessions resume.
#[derive(Clone, Default)]
pub(crate) struct TlsCache(Arc<Mutex<Vec<TlsSetup>>>);

impl fmt::Debug for TlsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsCache")
    }
}

impl TlsCache {
    /// The setup for `policy` and `extra_roots`, built now if this cache has none yet.
    pub(crate) fn get(
        &self,
        policy: TlsPolicy,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<TlsSetup, TlsError> {
        let verify = policy.requires_verification();
        let mut setups = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = setups
            .iter()
            .find(|s| s.verify == verify && s.roots == extra_roots)
        {
            return Ok(found.clone());
        }
        let setup = TlsSetup::new(verify, extra_roots)?;
        if setups.len() >= MAX_SETUPS {
            setups.remove(0);
        }
        setups.push(setup.clone());
        Ok(setup)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_builds_each_setup_once() {
        let cache = TlsCache::default();
        let a = cache.get(TlsPolicy::RequireVerified, &[]).unwrap();
        let b = cache.clone().get(TlsPolicy::Implicit, &[]).unwrap();
        assert!(Arc::ptr_eq(&a.config, &b.config), "same verifying config");
        let c = cache.get(TlsPolicy::OpportunisticUnverified, &[]).unwrap();
        assert!(!Arc::ptr_eq(&a.config, &c.config));
        let d = cache.get(TlsPolicy::OpportunisticUnverified, &[]).unwrap();
        assert!(Arc::ptr_eq(&c.config, &d.config));
    }

    #[test]
    fn a_bad_extra_root_is_a_config_error() {
        let err = TlsCache::default()
            .get(
                TlsPolicy::RequireVerified,
                &[CertificateDer::from(vec![1, 2, 3])],
            )
            .unwrap_err();
        assert!(matches!(err, TlsError::Config { .. }), "{err:?}");
    }

    #[test]
    fn peer_names_are_escaped_in_display() {
        let err = TlsError::NameMismatch {
            name: "mx.test".into(),
            presented: vec!["evil\r\n250 ok".into()],
        };
        let shown = err.to_string();
        assert!(!shown.contains('\r') && !shown.contains('\n'), "{shown}");
    }
}
