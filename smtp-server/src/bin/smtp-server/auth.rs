//! Users for submission: whether a login and password are valid (SMTP AUTH, issue 11).
//!
//! One [`Authenticator`] is made at startup and shared by every session (it is a cheap
//! [`Clone`] over an `Arc`). A session that has decoded a client's credentials (see
//! `smtp_proto::sasl`) calls [`Authenticator::verify`] and answers from the result:
//!
//! | result | reply |
//! |---|---|
//! | `Ok(Verdict::Ok { user })` | `235 2.7.0`; `user` is the canonical login name, for logs, `Received:` and the sender check |
//! | `Ok(Verdict::Invalid)` | `535 5.7.8` (wrong password, unknown user, login not allowed) |
//! | `Err(Temporary(why))` | `454 4.7.0`; `why` is for the log, not for the client |
//!
//! Two sources of users, as in Postfix (`smtpd_sasl_type = dovecot`) and Dovecot itself:
//!
//! - a **passwd-file** in Dovecot's format ([`Authenticator::passwd_file`], module
//!   `passwd`): `user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`. Schemes: `ARGON2ID`,
//!   `ARGON2I`, `BLF-CRYPT`, `SHA512-CRYPT`, `SHA256-CRYPT`, `CRYPT` (one of the crypt(3)
//!   formats `$2y$`, `$6$`, `$5$`, told apart by their prefix), and `PLAIN`/`CLEAR` for
//!   tests. The file is checked at startup (an error names `file:line`) and re-read when it
//!   changes; a broken new version is logged and fails closed (every login a temporary
//!   failure until it is fixed), never falling back to an older version.
//! - **Dovecot's auth service** ([`Authenticator::dovecot`], module `dovecot`): the client
//!   side of Dovecot's authentication protocol over its `auth-client` socket (unix, or
//!   `inet:HOST:PORT`), so that the users of the IMAP server are the users of submission.
//!
//! Login names: compared in ASCII lower case, as Dovecot does with its default
//! `auth_username_format = %Lu`, so `Alice@Example.ORG` logs in as `alice@example.org`.
//! Names with control characters (tab, CR, LF, NUL...) or longer than 255 octets are
//! invalid, whatever the source.
//!
//! Timing: an unknown login costs as much as a known one (the password is checked against
//! another entry's hash and the result discarded), so a client cannot tell which users
//! exist. Hashing runs on blocking threads (`spawn_blocking`), at most as many at once as
//! the machine has CPUs: one Argon2 check takes tens of MiB and tens of milliseconds, and
//! the async workers must keep serving sessions meanwhile. Slowing and cutting off repeated
//! failures belongs to the caller (per client address), not here.

mod dovecot;
mod passwd;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use smtp_proto::sasl::Secret;

pub use dovecot::Endpoint;
pub use passwd::Scheme;

/// Decides whether a login and password are valid. Shared by all sessions: clone it.
#[derive(Clone)]
pub struct Authenticator {
    backend: Arc<Backend>,
}

enum Backend {
    File(passwd::PasswdFile),
    Dovecot(dovecot::DovecotAuth),
}

/// The connection a login comes from: passed on to Dovecot (`rip`, `lip`, `secured`, for
/// its logs, penalties and `allow_nets`) and used for a passwd-file's `allow_nets=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is encrypted (TLS) or otherwise safe for a plain password.
    pub secured: bool,
}

/// The answer about one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Ok {
        /// The canonical login name (lower case; as Dovecot returned it).
        user: String,
    },
    /// Wrong password, unknown user, or a user who may not log in (from here).
    Invalid,
}

/// The question could not be answered now (Dovecot unreachable, timed out or answering
/// `temp`; a hashing thread lost): the caller answers `454 4.7.0` and logs the text, which
/// never holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Temporary(pub String);

impl fmt::Display for Temporary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Temporary {}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator(")?;
        f.write_str(&self.describe())?;
        f.write_str(")")
    }
}

impl Authenticator {
    /// Users from a Dovecot-format passwd-file, read and checked now.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or a line is malformed or names an unsupported scheme: the
    /// message names `file:line` (never a hash or password).
    pub fn passwd_file(path: PathBuf) -> Result<Self, String> {
        Ok(Authenticator {
            backend: Arc::new(Backend::File(passwd::PasswdFile::open(path)?)),
        })
    }

    /// Users from Dovecot's auth service at `endpoint`. Nothing is connected until the first
    /// login, so Dovecot may start after the daemon.
    pub fn dovecot(endpoint: Endpoint) -> Self {
        Authenticator {
            backend: Arc::new(Backend::Dovecot(dovecot::DovecotAuth::new(endpoint))),
        }
    }

    /// Where the users come from, for the startup log line (`passwd-file /etc/x (3 users)`).
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::File(f) => f.describe(),
            Backend::Dovecot(d) => d.describe(),
        }
    }

    /// Whether `password` is `login`'s, for a client connected as `client`.
    ///
    /// # Errors
    ///
    /// [`Temporary`] when the source cannot answer now.
    pub async fn verify(
        &self,
        login: &str,
        password: &Secret,
        client: &Client,
    ) -> Result<Verdict, Temporary> {
        // No source ever accepts an empty password, whatever its entry says.
        if password.expose().is_empty() {
            return Ok(Verdict::Invalid);
        }
        match &*self.backend {
            Backend::File(f) => f.verify(login, password, client).await,
            Backend::Dovecot(d) => d.verify(login, password, client).await,
        }
    }
}

/// The login as both sources compare it: ASCII lower case; `None` for a name no user can
/// have (empty, too long, control characters, or `:` which the file format cannot hold).
pub fn canonical_login(login: &str) -> Option<String> {
    let ok = !login.is_empty()
        && login.len() <= 255
        && !login.chars().any(|c| c.is_control() || c == ':');
    ok.then(|| login.to_ascii_lowercase())
}
