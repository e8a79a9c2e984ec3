//! The envelope of one message as it travels: the one type the server library, the client and
//! the queue share, and its text form; and [`TlsInfo`], what was negotiated on an encrypted
//! connection, on either side.
//!
//! An [`Envelope`] is a reverse path, the recipients in order with their DSN parameters, and
//! the DSN parameters of `MAIL FROM` (RFC 3461 `RET` and `ENVID`): what survives a hop.
//! Decisions:
//! - Only the DSN parameters are part of it. RFC 3461 §4 has a relay pass `NOTIFY`, `ORCPT`,
//!   `RET` and `ENVID` on; `SIZE`, `BODY` and `SMTPUTF8` describe the message and are worked
//!   out again for each hop from its content (the client does); `AUTH=` is about one session;
//!   unknown parameters are not relayed.
//! - The values are the validated types of [`crate::address`] and [`crate::param`], so an
//!   envelope that exists can be sent: nothing needs parsing again before a delivery, and a
//!   stored envelope that does not parse is damage, never "some other sender".
//! - `#[non_exhaustive]`: the fields are public to read and change, and the constructors
//!   ([`Envelope::new`], [`Recipient::new`] and the `with_` methods) build one, so that a
//!   field added later (another DSN or RFC 6710 parameter) is not a breaking change.
//!
//! # Text form (version 1)
//!
//! The text form is SMTP itself: a `MAIL FROM:` command line, then one `RCPT TO:` line per
//! recipient, each as [`crate::command::Command`] encodes it, with only the parameters above:
//!
//! ```text
//! MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159
//! RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net
//! RCPT TO:<carol@example.net>
//! ```
//!
//! [`Envelope::to_text`] writes it (lines end in CRLF) and [`Envelope::parse`] reads it back
//! with [`crate::command::parse_command`] under [`STORED_LIMITS`]; a round trip gives the same
//! value. Parsing is strict: a line that is not the expected command, a parameter other than
//! those above, anything after a line on the same line, or a missing `MAIL` line is an
//! [`EnvelopeError`]. The lines never hold CR, LF or NUL (the types cannot), so a line-based
//! container (the queue's entry file) can hold them as they are, one per line;
//! [`parse_mail_line`] and [`Recipient::parse_line`] read one line each for such a container.
//! The text form has no version line of its own: the container carries the version
//! ([`TEXT_VERSION`]), and a change to the form gets a new one.
//!
//! ```
//! use smtp_proto::envelope::{Envelope, Recipient};
//! use smtp_proto::param::{Notify, Ret};
//! use smtp_proto::address::{parse_forward_path, parse_reverse_path};
//!
//! let from = parse_reverse_path("<alice@example.org>").unwrap().into_owned();
//! let to = parse_forward_path("<bob@example.net>").unwrap().into_owned();
//! let env = Envelope::with_recipients(
//!     from,
//!     vec![Recipient::new(to).with_notify(Notify { failure: true, ..Notify::NEVER })],
//! )
//! .with_ret(Ret::Hdrs);
//! let text = env.to_text();
//! assert_eq!(text, "MAIL FROM:<alice@example.org> RET=HDRS\r\nRCPT TO:<bob@example.net> NOTIFY=FAILURE\r\n");
//! assert_eq!(Envelope::parse(&text).unwrap(), env);
//! ```
use std::fmt;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{parse_command, Command, CommandError, Limits};
use crate::param::{MailParams, Notify, Orcpt, RcptParams, Ret, XText};

/// The version of the text form described in the module docs, for containers to record.
pub const TEXT_VERSION: u32 = 1;

/// The limits [`Envelope::parse`] applies: roomy, since what is read back was accepted once
/// under whatever limits the receiving server had (a stored envelope is not refused for being
/// long); still a bound on one line.
pub const STORED_LIMITS: Limits = Limits {
    max_command_line: 1 << 20,
    max_local_part: 1 << 16,
    max_domain: 1 << 16,
    max_path: 1 << 17,
};

/// One recipient with its DSN parameters (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Recipient {
    /// The address (`RCPT TO`).
    pub path: ForwardPath,
    /// `NOTIFY=`; a client sends it only when the server offers DSN.
    pub notify: Option<Notify>,
    /// `ORCPT=`; a client sends it only when the server offers DSN.
    pub orcpt: Option<Orcpt>,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(path: ForwardPath) -> Self {
        Self {
            path,
            notify: None,
            orcpt: None,
        }
    }

    /// With `NOTIFY=`.
    #[must_use]
    pub fn with_notify(mut self, notify: Notify) -> Self {
        self.notify = Some(notify);
        self
    }

    /// With `ORCPT=`.
    #[must_use]
    pub fn with_orcpt(mut self, orcpt: Orcpt) -> Self {
        self.orcpt = Some(orcpt);
        self
    }

    /// The recipient and the DSN parameters of a `RCPT TO` (its other parameters are not
    /// part of a [`Recipient`]: see the module docs).
    pub fn from_rcpt<S: AsRef<str>>(path: &ForwardPath<S>, params: &RcptParams<S>) -> Self {
        Self {
            path: path.as_borrowed().into_owned(),
            notify: params.notify,
            orcpt: params.orcpt.as_ref().map(|o| o.as_borrowed().into_owned()),
        }
    }

    /// The `RCPT TO` command for it, with its DSN parameters.
    pub fn rcpt_command(&self) -> Command<'_> {
        Command::Rcpt {
            to: self.path.as_borrowed(),
            params: RcptParams {
                notify: self.notify,
                orcpt: self.orcpt.as_ref().map(Orcpt::as_borrowed),
                ..RcptParams::default()
            },
        }
    }

    /// Parses one `RCPT TO:` line of the text form (with or without its CRLF).
    ///
    /// # Errors
    /// An [`EnvelopeError`] when it is not such a line.
    pub fn parse_line(line: &str) -> Result<Self, EnvelopeError> {
        let bytes = with_crlf(line);
        match parse_whole(&bytes)? {
            Command::Rcpt { to, params } => {
                if !params.other.is_empty() {
                    return Err(EnvelopeError::UnexpectedParameter);
                }
                Ok(Self::from_rcpt(&to, &params))
            }
            _ => Err(EnvelopeError::NotRcpt),
        }
    }
}

impl From<ForwardPath> for Recipient {
    fn from(path: ForwardPath) -> Self {
        Self::new(path)
    }
}

/// The sender and recipients of one message, with their DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Envelope {
    /// `MAIL FROM`: the sender, or `<>` for a bounce.
    pub from: ReversePath,
    /// `RCPT TO`, in order.
    pub rcpts: Vec<Recipient>,
    /// `RET=`; a client sends it only when the server offers DSN.
    pub ret: Option<Ret>,
    /// `ENVID=` as xtext ([`XText::decode`] gives the text); a client sends it only when the
    /// server offers DSN.
    pub envid: Option<XText>,
}

impl Envelope {
    /// An envelope without DSN parameters.
    pub fn new(from: ReversePath, rcpts: Vec<ForwardPath>) -> Self {
        Self::with_recipients(from, rcpts.into_iter().map(Recipient::new).collect())
    }

    /// An envelope of these recipients (each with its parameters), without `RET` or `ENVID`.
    pub fn with_recipients(from: ReversePath, rcpts: Vec<Recipient>) -> Self {
        Self {
            from,
            rcpts,
            ret: None,
            envid: None,
        }
    }

    /// With `RET=`.
    #[must_use]
    pub fn with_ret(mut self, ret: Ret) -> Self {
        self.ret = Some(ret);
        self
    }

    /// With `ENVID=`.
    #[must_use]
    pub fn with_envid(mut self, envid: XText) -> Self {
        self.envid = Some(envid);
        self
    }

    /// The DSN parameters of a `MAIL FROM` (the others are not part of an envelope: see the
    /// module docs), without recipients.
    pub fn from_mail<S: AsRef<str>>(from: &ReversePath<S>, params: &MailParams<S>) -> Self {
        Self {
            from: from.as_borrowed().into_owned(),
            rcpts: Vec::new(),
            ret: params.ret,
            envid: params.envid.as_ref().map(|e| e.as_borrowed().into_owned()),
        }
    }

    /// The same sender and `MAIL` parameters for other recipients (a relay sends the
    /// recipients of one next hop in one transaction).
    pub fn for_recipients(&self, rcpts: Vec<Recipient>) -> Self {
        Self {
            from: self.from.clone(),
            rcpts,
            ret: self.ret,
            envid: self.envid.clone(),
        }
    }

    /// Whether any address needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        !self.from.is_ascii() || self.rcpts.iter().any(|r| !r.path.is_ascii())
    }

    /// The `MAIL FROM` command for it, with `RET` and `ENVID` (a client adds the parameters
    /// that describe the message).
    pub fn mail_command(&self) -> Command<'_> {
        Command::Mail {
            from: self.from.as_borrowed(),
            params: MailParams {
                ret: self.ret,
                envid: self.envid.as_ref().map(XText::as_borrowed),
                ..MailParams::default()
            },
        }
    }

    /// The text form (see the module docs): the `MAIL` line and one `RCPT` line per
    /// recipient, each ending in CRLF.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Parses the text form (lines ending in CRLF or LF).
    ///
    /// # Errors
    /// An [`EnvelopeError`] for anything [`to_text`](Self::to_text) does not write.
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        let mut lines = text.lines();
        let mut env = parse_mail_line(lines.next().ok_or(EnvelopeError::NoMail)?)?;
        for line in lines {
            env.rcpts.push(Recipient::parse_line(line)?);
        }
        Ok(env)
    }
}

impl fmt::Display for Envelope {
    /// The text form, as [`Envelope::to_text`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mail_command())?;
        for r in &self.rcpts {
            write!(f, "{}", r.rcpt_command())?;
        }
        Ok(())
    }
}

/// Parses the `MAIL FROM:` line of the text form (with or without its CRLF): an envelope
/// without recipients.
///
/// # Errors
/// An [`EnvelopeError`] when it is not such a line.
pub fn parse_mail_line(line: &str) -> Result<Envelope, EnvelopeError> {
    let bytes = with_crlf(line);
    match parse_whole(&bytes)? {
        Command::Mail { from, params } => {
            let dsn_only = MailParams {
                ret: params.ret,
                envid: params.envid,
                ..MailParams::default()
            };
            if params != dsn_only {
                return Err(EnvelopeError::UnexpectedParameter);
            }
            Ok(Envelope::from_mail(&from, &params))
        }
        _ => Err(EnvelopeError::NotMail),
    }
}

/// `line` with exactly one CRLF at its end.
fn with_crlf(line: &str) -> Vec<u8> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// One command that uses all of `bytes`.
fn parse_whole(bytes: &[u8]) -> Result<Command<'_>, EnvelopeError> {
    match parse_command(bytes, &STORED_LIMITS) {
        Ok(Some((cmd, used))) if used == bytes.len() => Ok(cmd),
        Ok(_) => Err(EnvelopeError::NotOneLine),
        Err(e) => Err(EnvelopeError::Command(e)),
    }
}

/// Why a text is not an envelope's text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Empty: no `MAIL FROM:` line.
    #[error("no MAIL FROM line")]
    NoMail,
    /// The first line is not `MAIL FROM:`.
    #[error("not a MAIL FROM line")]
    NotMail,
    /// A later line is not `RCPT TO:`.
    #[error("not a RCPT TO line")]
    NotRcpt,
    /// A parameter that is not part of an envelope (only RET, ENVID, NOTIFY, ORCPT are).
    #[error("a parameter that is not part of an envelope")]
    UnexpectedParameter,
    /// A line that is not one whole command.
    #[error("not one command line")]
    NotOneLine,
    /// The line does not parse.
    #[error("{0}")]
    Command(CommandError),
}

/// What was negotiated on an encrypted connection, on either side: the server library
/// reports it to its handler, the client in its delivery results.
///
/// The names are the standard ones on both sides ([`TlsInfo::from_rustls_names`]): the
/// protocol as OpenSSL, Postfix and RFC 8446 write it (`TLSv1.3`), the cipher suite by its
/// IANA name (`TLS_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The protocol version, e.g. `TLSv1.3`.
    pub protocol: String,
    /// The cipher suite's IANA name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Whether the peer's certificate was verified: on a client, that it chains to a trusted
    /// root and is valid for the host name; on a server, that the client presented one that
    /// verified (the server library asks for none, so it is false there).
    pub verified: bool,
    /// Whether the handshake resumed an earlier session rather than a full handshake.
    pub resumed: bool,
}

impl TlsInfo {
    /// Parameters of a session with an unverified peer and a full handshake (for tests, and
    /// code that runs TLS itself); see [`with_verified`](Self::with_verified) and
    /// [`with_resumed`](Self::with_resumed).
    pub fn new(protocol: impl Into<String>, cipher: impl Into<String>) -> Self {
        Self {
            protocol: protocol.into(),
            cipher: cipher.into(),
            verified: false,
            resumed: false,
        }
    }

    /// Parameters named from rustls's names (their `Debug` forms): `TLSv1_3` becomes
    /// `TLSv1.3`, and a TLS 1.3 suite `TLS13_AES_256_GCM_SHA384` its IANA name
    /// `TLS_AES_256_GCM_SHA384` (rustls's TLS 1.2 names are the IANA ones already).
    ///
    /// ```
    /// # use smtp_proto::envelope::TlsInfo;
    /// let t = TlsInfo::from_rustls_names("TLSv1_3", "TLS13_AES_256_GCM_SHA384");
    /// assert_eq!((t.protocol.as_str(), t.cipher.as_str()), ("TLSv1.3", "TLS_AES_256_GCM_SHA384"));
    /// ```
    pub fn from_rustls_names(protocol: &str, suite: &str) -> Self {
        let protocol = match protocol.strip_prefix("TLSv") {
            Some(v) => format!("TLSv{}", v.replace('_', ".")),
            None => protocol.to_owned(),
        };
        let cipher = match suite.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => suite.to_owned(),
        };
        Self::new(protocol, cipher)
    }

    /// `PROTOCOL/CIPHER` (`TLSv1.3/TLS_AES_256_GCM_SHA384`): one word, for a log line.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.protocol, self.cipher)
    }

    /// With [`verified`](Self::verified) set.
    #[must_use]
    pub fn with_verified(mut self, verified: bool) -> Self {
        self.verified = verified;
        self
    }

    /// With [`resumed`](Self::resumed) set.
    #[must_use]
    pub fn with_resumed(mut self, resumed: bool) -> Self {
        self.resumed = resumed;
        self
    }
}

impl fmt::Display for TlsInfo {
    /// `TLSv1.3 TLS_AES_256_GCM_SHA384 (verified, resumed)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}{})",
            self.protocol,
            self.cipher,
            if self.verified {
                "verified"
            } else {
                "not verified"
            },
            if self.resumed { ", resumed" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{parse_forward_path, parse_reverse_path};

    #[test]
    fn strict_parse() {
        let ok = "MAIL FROM:<a@b.example> ENVID=x+2By\r\nRCPT TO:<c@d.example> ORCPT=rfc822;c@d.example\r\n";
        let env = Envelope::parse(ok).expect("valid");
        assert_eq!(
            env.envid.as_ref().map(|e| e.decode().into_owned()),
            Some("x+y".into())
        );
        assert_eq!(env.to_text(), ok);
        for (bad, why) in [
            ("", EnvelopeError::NoMail),
            ("RCPT TO:<c@d>", EnvelopeError::NotMail),
            (
                "MAIL FROM:<a@b> SIZE=10",
                EnvelopeError::UnexpectedParameter,
            ),
            (
                "MAIL FROM:<a@b>\r\nRCPT TO:<c@d> X-FOO=1",
                EnvelopeError::UnexpectedParameter,
            ),
            ("MAIL FROM:<a@b>\r\nMAIL FROM:<c@d>", EnvelopeError::NotRcpt),
            ("MAIL FROM:<a@b>\r\nQUIT", EnvelopeError::NotRcpt),
        ] {
            assert_eq!(Envelope::parse(bad), Err(why), "{bad:?}");
        }
        assert!(matches!(
            Envelope::parse("MAIL FROM:<a b@c>"),
            Err(EnvelopeError::Command(_))
        ));
        assert!(matches!(
            Recipient::parse_line("RCPT TO:<c@d>\r\nRSET"),
            Err(EnvelopeError::NotOneLine | EnvelopeError::Command(_))
        ));
    }

    #[test]
    fn null_sender_and_postmaster() {
        let env = Envelope::new(
            parse_reverse_path("<>").expect("valid").into_owned(),
            vec![parse_forward_path("<Postmaster>")
                .expect("valid")
                .into_owned()],
        );
        assert_eq!(env.to_text(), "MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n");
        assert_eq!(Envelope::parse(&env.to_text()), Ok(env));
    }
}
