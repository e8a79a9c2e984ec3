//! SMTP AUTH (RFC 4954) on the client side: logging in to a submission server or a relay host.
//!
//! Give a connection [`Credentials`] with
//! [`ClientConfig::with_credentials`](crate::ClientConfig::with_credentials) and
//! [`Connection::connect`](crate::Connection::connect) logs in after the EHLO that follows
//! STARTTLS, using that EHLO's capabilities; or call
//! [`Connection::login`](crate::Connection::login) on an open connection. Either way:
//!
//! - The mechanism is the strongest one the server offers among those
//!   [`smtp_proto::sasl`] implements, in the order of [`Mechanism::ALL`] (`PLAIN`, then
//!   `LOGIN`). A server that offers no AUTH, or none of these, gives
//!   [`AuthError::NotOffered`] with nothing sent.
//! - Both mechanisms send the password itself, so the client logs in only over TLS. On a clear
//!   text connection (no STARTTLS offered, STARTTLS refused, [`TlsPolicy::None`]) the result is
//!   [`AuthError::EncryptionRequired`], before anything is sent, unless the credentials were
//!   made with [`Credentials::allow_plaintext_auth`].
//! - `PLAIN` sends its message as the initial response (`AUTH PLAIN <base64>`), or, when that
//!   would make the command line longer than RFC 5321's 512 octets, waits for the server's
//!   empty `334` challenge and answers it. `LOGIN` answers the two `334` challenges with the
//!   user name and the password. Everything is base64 on the wire.
//! - `235` is success. A `334` the mechanism has no answer for (one round too many, or a
//!   challenge that is not base64) is cancelled with `*` (RFC 4954 §4) and reported as
//!   [`AuthError::Cancelled`]. A 4yz reply is [`AuthError::Temporary`] (`454 4.7.0`), a 5yz
//!   [`AuthError::Rejected`] (`535 5.7.8` bad credentials, `534` mechanism too weak, ...).
//! - The server's replies are kept bounded, as every reply the client keeps
//!   ([`bound_reply`](crate::codec::bound_reply)). The password is never logged, and the
//!   copies made to send it are overwritten once written.
//!
//! [`TlsPolicy::None`]: crate::TlsPolicy::None

use std::fmt;

use smtp_proto::reply::Reply;
use smtp_proto::sasl::{Mechanism, Secret, MAX_IDENTITY, MAX_SECRET};

use crate::text::SafeReply;

/// A user name and its password, for logging in with SMTP AUTH.
///
/// Valid by construction ([`Credentials::new`]): a user name of 1 to 255 octets without
/// control characters, a password of at most 1024 octets without NUL (so that the `PLAIN`
/// message `NUL user NUL password` means what it says). `Debug` never shows the password.
///
/// These are what a client *presents*; what a server decodes from a client is
/// [`smtp_proto::sasl::Credentials`].
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    secret: Secret,
    allow_plaintext: bool,
}

/// Why [`Credentials::new`] refused a user name or password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid credentials: {0}")]
pub struct InvalidCredentials(&'static str);

impl Credentials {
    /// Credentials that are sent only over an encrypted connection.
    ///
    /// # Errors
    ///
    /// [`InvalidCredentials`] for an empty user name, one longer than 255 octets or with a
    /// control character, or a password longer than 1024 octets or with a NUL.
    pub fn new(
        user: impl Into<String>,
        secret: impl Into<Secret>,
    ) -> Result<Self, InvalidCredentials> {
        let user = user.into();
        let secret = secret.into();
        if user.is_empty() {
            return Err(InvalidCredentials("empty user name"));
        }
        if user.len() > MAX_IDENTITY {
            return Err(InvalidCredentials("user name longer than 255 octets"));
        }
        if user.chars().any(char::is_control) {
            return Err(InvalidCredentials("control character in the user name"));
        }
        if secret.expose().len() > MAX_SECRET {
            return Err(InvalidCredentials("password longer than 1024 octets"));
        }
        if secret.expose().contains(&0) {
            return Err(InvalidCredentials("NUL in the password"));
        }
        Ok(Self {
            user,
            secret,
            allow_plaintext: false,
        })
    }

    /// Also logs in over a connection that is not encrypted, sending the password in clear
    /// text to anyone on the path. Only for a server on the same host (loopback) or a test.
    #[must_use]
    pub fn allow_plaintext_auth(mut self) -> Self {
        self.allow_plaintext = true;
        self
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Whether [`allow_plaintext_auth`](Self::allow_plaintext_auth) was called.
    pub fn plaintext_allowed(&self) -> bool {
        self.allow_plaintext
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &self.secret)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// Why logging in failed. Its `Display` escapes the server's text, as
/// [`ClientError`](crate::ClientError)'s does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The connection is not encrypted and the credentials do not allow clear text
    /// ([`Credentials::allow_plaintext_auth`]). Nothing was sent.
    #[error("the connection is not encrypted; the password is sent only over TLS")]
    EncryptionRequired,
    /// The server offers no AUTH, or no mechanism this client implements. Nothing was sent.
    #[error("the server offers no usable AUTH mechanism (offered: {})", offered_list(.offered))]
    NotOffered {
        /// The mechanisms the server offered (at most 10 names of at most 40 characters).
        offered: Vec<String>,
    },
    /// The server refused the login for good: a 5yz reply (`535 5.7.8` bad credentials,
    /// `534 5.7.9` mechanism too weak, `504` mechanism unknown, ...).
    #[error("{mechanism} login refused: {}", SafeReply(.reply))]
    Rejected {
        /// The mechanism tried.
        mechanism: Mechanism,
        /// The server's reply.
        reply: Reply,
    },
    /// The server refused the login for now: a 4yz reply (`454 4.7.0`).
    #[error("{mechanism} login failed for now: {}", SafeReply(.reply))]
    Temporary {
        /// The mechanism tried.
        mechanism: Mechanism,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent a `334` challenge the mechanism cannot answer; the client cancelled the
    /// exchange with `*`. `reply` is the server's answer to the `*` (normally `501`).
    #[error("{mechanism} login cancelled ({reason}): {}", SafeReply(.reply))]
    Cancelled {
        /// The mechanism tried.
        mechanism: Mechanism,
        /// What was wrong with the challenge.
        reason: CancelReason,
        /// The server's reply to the cancellation.
        reply: Reply,
    },
}

/// Why the client cancelled an exchange ([`AuthError::Cancelled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// A challenge after the mechanism's last answer (this was challenge number `round`).
    UnexpectedChallenge {
        /// Which challenge, 1 for the first.
        round: u8,
    },
    /// The challenge's text is not base64.
    MalformedChallenge,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedChallenge { round } => write!(f, "unexpected challenge {round}"),
            Self::MalformedChallenge => f.write_str("challenge is not base64"),
        }
    }
}

impl AuthError {
    /// The server's reply behind the error, if there is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Rejected { reply, .. }
            | Self::Temporary { reply, .. }
            | Self::Cancelled { reply, .. } => Some(reply),
            Self::EncryptionRequired | Self::NotOffered { .. } => None,
        }
    }
}

fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        "none".to_owned()
    } else {
        crate::text::escape_controls(&offered.join(" ")).into_owned()
    }
}

/// The mechanism to use: the first of [`Mechanism::ALL`] that `offered` names.
pub(crate) fn choose(offered: &[String]) -> Option<Mechanism> {
    Mechanism::ALL
        .iter()
        .copied()
        .find(|m| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name())))
}

/// `offered`, bounded for keeping in an error.
pub(crate) fn bounded_names(offered: &[String]) -> Vec<String> {
    offered
        .iter()
        .take(10)
        .map(|name| name.chars().take(40).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn strongest_known_mechanism_first() {
        // One case per line: what the server offers, what the client picks.
        let cases: &[(&[&str], Option<Mechanism>)] = &[
            (&["PLAIN", "LOGIN"], Some(Mechanism::Plain)),
            (&["LOGIN", "PLAIN"], Some(Mechanism::Plain)),
            (&["login", "plain"], Some(Mechanism::Plain)),
            (&["CRAM-MD5", "LOGIN"], Some(Mechanism::Login)),
            (&["SCRAM-SHA-256", "XOAUTH2"], None),
            (&[], None),
        ];
        for (offered, want) in cases {
            assert_eq!(choose(&names(offered)), *want, "{offered:?}");
        }
    }

    #[test]
    fn credentials_are_checked_and_redacted() {
        let c = Credentials::new("alice", "s3cret").unwrap();
        assert!(!c.plaintext_allowed());
        assert!(c.clone().allow_plaintext_auth().plaintext_allowed());
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.secret().expose(), b"s3cret");
        for (user, pass) in [("", "x"), ("a\r\nb", "x"), ("a\0b", "x"), ("alice", "p\0w")] {
            assert!(Credentials::new(user, pass).is_err(), "{user:?} {pass:?}");
        }
        assert!(Credentials::new("a".repeat(256), "x").is_err());
        assert!(Credentials::new("a".repeat(255), "x".repeat(1024)).is_ok());
        assert!(Credentials::new("a", "x".repeat(1025)).is_err());
    }

    #[test]
    fn offered_names_are_bounded_and_escaped() {
        let many: Vec<String> = (0..50)
            .map(|i| format!("M{i}{}", "X".repeat(100)))
            .collect();
        let b = bounded_names(&many);
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|n| n.chars().count() == 40));
        let e = AuthError::NotOffered {
            offered: names(&["CRAM-MD5", "X\u{1b}[1m"]),
        };
        let text = e.to_string();
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("CRAM-MD5"), "{text}");
    }
}
