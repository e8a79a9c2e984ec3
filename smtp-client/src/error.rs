//! The client's error type.

use std::io;
use std::net::SocketAddr;

use smtp_proto::reply::{EnhancedCode, Reply, ReplyError};

use crate::auth::AuthError;
use crate::resolve::ResolveError;
use crate::text::SafeReply;
use crate::tls::TlsError;

/// Why a connection or a transaction failed.
///
/// Its `Display` is one line, with the peer's text escaped ([`crate::text`]): a reply is shown
/// as [`SafeReply`] shows it; a malformed reply's line is quoted with Rust's escapes.
///
/// [`ClientError::is_permanent`] says whether trying again later (or another host) can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made (refused, unreachable, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// No reply (or no progress) within the time allowed for this step.
    #[error("timed out waiting for {stage}")]
    Timeout {
        /// What was awaited: `connect`, `greeting`, `EHLO`, `MAIL`, `RCPT`, `DATA`,
        /// `data block`, `end of data`, ...
        stage: &'static str,
    },
    /// Reading or writing failed after the connection was made.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection while a reply was awaited.
    #[error("connection closed by the server while waiting for {stage}")]
    Closed {
        /// What was awaited.
        stage: &'static str,
    },
    /// The server sent something that is not an SMTP reply; the error holds the raw line.
    #[error("malformed reply: {0}")]
    MalformedReply(#[from] ReplyError),
    /// The server's greeting was not `220` (e.g. `421` busy, `554` no service).
    #[error("server refused the session: {}", SafeReply(.0))]
    Greeting(Reply),
    /// The server refused a command outside the per-recipient results: EHLO and HELO,
    /// STARTTLS, MAIL, RSET.
    #[error("server refused {command}: {}", SafeReply(.reply))]
    Refused {
        /// The command's verb.
        command: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent a reply that makes no sense at this point (e.g. `354` to MAIL).
    #[error("unexpected reply to {command}: {}", SafeReply(.reply))]
    Unexpected {
        /// The command's verb.
        command: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent something the client had not asked for yet: a reply before the
    /// command it would answer was sent (a `250` while the message was still being written,
    /// a second reply to one command). Replies and commands are out of step, so no reply
    /// after it can be trusted to answer what it seems to (a message would be taken as
    /// delivered on the strength of another command's `250`): the connection is unusable
    /// and nothing in flight counts as delivered. Transient (`4.5.0`).
    #[error("the server sent {octets} octets before {stage} was sent: replies out of step with commands")]
    OutOfStep {
        /// What the client was about to send (`MAIL`, `end of data`, ...).
        stage: &'static str,
        /// How much had arrived.
        octets: usize,
    },
    /// STARTTLS is required ([`TlsPolicy::RequireVerified`](crate::TlsPolicy::RequireVerified),
    /// the default) and the server does not offer it. Nothing was sent but EHLO (and QUIT).
    #[error("the server does not offer STARTTLS and TLS is required")]
    StartTlsNotOffered,
    /// The TLS setup or handshake failed ([`TlsError`]: an untrusted certificate or one for
    /// another name under the verified policies, a failed handshake, ...). Under
    /// [`TlsPolicy::OpportunisticUnverified`](crate::TlsPolicy::OpportunisticUnverified) also
    /// anything that broke the session between STARTTLS and the server's reply to EHLO
    /// inside TLS (the connection closed or timed out, a malformed reply):
    /// [`Deliverer`](crate::Deliverer) then retries the address in clear text.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The host name given to [`Connection::connect_host`](crate::Connection::connect_host)
    /// is not a host name, or could not be resolved (no such domain, no address, a DNS
    /// failure). Nothing was sent.
    #[error("{0}")]
    Resolve(ResolveError),
    /// The message has 8-bit octets and the server does not offer 8BITMIME. RFC 6152 lets the
    /// client convert or bounce; this client does not convert. Nothing was sent.
    #[error("the message has 8-bit content and the server does not offer 8BITMIME")]
    Needs8BitMime,
    /// An address is not ASCII and the server does not offer SMTPUTF8 (RFC 6531). Nothing was
    /// sent.
    #[error("an address needs SMTPUTF8 and the server does not offer it")]
    NeedsSmtpUtf8,
    /// The message is larger than the server's announced `SIZE`. Nothing was sent.
    #[error("message of {size} octets exceeds the server's limit of {limit}")]
    TooLarge {
        /// The message's size on the wire.
        size: u64,
        /// The server's `SIZE`.
        limit: u64,
    },
    /// The envelope has no recipient.
    #[error("the envelope has no recipient")]
    NoRecipients,
    /// The message could not be read (a [`Body::File`](crate::message::Body::File) that
    /// cannot be opened or read). Before MAIL nothing was sent; during the data the connection
    /// was left without the end marker, so the server discards what it got, and is unusable.
    #[error("cannot read the message: {0}")]
    Message(io::Error),
    /// Logging in (SMTP AUTH, [`crate::auth`]) failed or was not attempted. The connection
    /// is still usable after a refusal (the server's verdict) and after
    /// [`AuthError::EncryptionRequired`] and [`AuthError::NotOffered`] (nothing was sent).
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// An earlier error left the connection unusable.
    #[error("the connection is no longer usable after an earlier error")]
    Broken,
    /// [`ClientConfig::helo_name`](crate::ClientConfig::helo_name) is not an ASCII domain
    /// name or address literal (RFC 5321 §4.1.1.1), e.g. it holds a space, CR or LF that
    /// would put another command on the wire. Checked before connecting: nothing was sent.
    /// Transient, as a configuration error is (`4.3.5`).
    #[error("the HELO name {0:?} is not a domain name or address literal")]
    InvalidHeloName(String),
}

impl ClientError {
    /// Whether the failure is permanent: the message would fail the same way later. A refusal
    /// carries the server's verdict (5yz); the refusals made before sending are permanent;
    /// network errors, timeouts and everything else are transient. A failed login
    /// ([`ClientError::Auth`]) is transient even when the server said `535`: the fix is in
    /// the client's configuration (the password), and a message waiting in a queue should
    /// wait for it, as Postfix defers mail when SASL authentication fails.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Greeting(reply) | Self::Refused { reply, .. } => reply.is_permanent(),
            Self::Needs8BitMime | Self::NeedsSmtpUtf8 | Self::TooLarge { .. } => true,
            Self::NoRecipients => true,
            Self::Resolve(e) => e.is_permanent(),
            _ => false,
        }
    }

    /// The server's reply behind the error, if there is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Greeting(reply)
            | Self::Refused { reply, .. }
            | Self::Unexpected { reply, .. } => Some(reply),
            Self::Auth(e) => e.reply(),
            _ => None,
        }
    }

    /// An RFC 3463 status code for a delivery status notification: the server's own when it
    /// gave one, otherwise one that describes the error.
    pub fn enhanced_code(&self) -> EnhancedCode {
        if let Some(reply) = self.reply() {
            if let Some(enhanced) = reply.enhanced() {
                return enhanced;
            }
            return if reply.is_permanent() {
                EnhancedCode::fixed(5, 0, 0)
            } else {
                EnhancedCode::fixed(4, 0, 0)
            };
        }
        match self {
            Self::Connect { .. } => EnhancedCode::fixed(4, 4, 1),
            Self::Timeout { .. } => EnhancedCode::fixed(4, 4, 2),
            Self::Io(_) | Self::Closed { .. } | Self::Broken => EnhancedCode::fixed(4, 4, 2),
            Self::MalformedReply(_) | Self::OutOfStep { .. } => EnhancedCode::fixed(4, 5, 0),
            Self::StartTlsNotOffered | Self::Tls(_) => EnhancedCode::fixed(4, 7, 5),
            // RFC 3463 X.7.8 "authentication credentials invalid", X.7.10 "encryption
            // needed"; the server's own code when it gave one (above).
            Self::Auth(AuthError::EncryptionRequired) => EnhancedCode::fixed(4, 7, 10),
            Self::Auth(_) => EnhancedCode::fixed(4, 7, 8),
            Self::Needs8BitMime => EnhancedCode::fixed(5, 6, 3),
            Self::NeedsSmtpUtf8 => EnhancedCode::fixed(5, 6, 7),
            Self::TooLarge { .. } => EnhancedCode::fixed(5, 3, 4),
            Self::NoRecipients => EnhancedCode::fixed(5, 5, 1),
            Self::Message(_) => EnhancedCode::fixed(4, 3, 0),
            Self::InvalidHeloName(_) => EnhancedCode::fixed(4, 3, 5),
            // As `DeliveryError::Resolve`: bad destination address, or routing failures.
            Self::Resolve(
                ResolveError::NoSuchDomain { .. } | ResolveError::InvalidDomain { .. },
            ) => EnhancedCode::fixed(5, 1, 2),
            Self::Resolve(ResolveError::NoAddresses { .. }) => EnhancedCode::fixed(5, 4, 4),
            Self::Resolve(_) => EnhancedCode::fixed(4, 4, 3),
            _ => EnhancedCode::fixed(4, 0, 0),
        }
    }
}
