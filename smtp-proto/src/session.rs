//! The server side of an SMTP session as a sans-IO state machine.
//!
//! A [`Session`] is fed the bytes a client sent and produces the bytes to send back. Where a
//! policy decision is needed (accept this connection, this sender, this recipient, this
//! message?) it stops and reports an [`Event`]; the caller decides, possibly after awaiting a
//! database or a disk, and tells the session with [`Session::accept`] or [`Session::respond`].
//! The session owns everything the RFCs fix: command syntax, command order (`503 5.5.1`),
//! recipient and size limits (`452 4.5.3`, `552 5.3.4`), DATA dot-stuffing and its end
//! marker, BDAT chunks, PIPELINING (replies queued in order, flushed when input runs out) and
//! the STARTTLS boundary.
//!
//! # Driving a session
//!
//! Methods come in four kinds, in the order a driver calls them:
//! - input: [`Session::feed`] (bytes from the client), [`Session::handle_timeout`] (and
//!   [`Session::timeout`]), [`Session::shutdown`], [`Session::tls_established`];
//! - events: [`Session::poll_event`], until it returns `None` (then more input is needed, or
//!   the session is closed);
//! - decisions: [`Session::accept`] / [`Session::respond`], once after each event for which
//!   [`Event::needs_decision`] is true, before polling again ([`Event::SyncCheck`] is answered
//!   with [`Session::input_pending`]; `accept` there means "nothing pending");
//! - output: [`Session::output`] and [`Session::clear_output`] (write these bytes to the
//!   client), [`Session::poll_timeout`] (the instant by which the client must send more),
//!   and the getters [`Session::is_closed`], [`Session::is_receiving_data`].
//!
//! ```
//! use smtp_proto::session::{Event, Session, SessionConfig};
//!
//! let mut s = Session::new(SessionConfig::new("mx.example.org"));
//! let mut body = Vec::new();
//! // What a client sends in each round trip (RFC 2920: EHLO and DATA end a group).
//! for input in [
//!     &b""[..],
//!     b"EHLO client.example\r\n",
//!     b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
//!     b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
//! ] {
//!     s.feed(input);
//!     while let Some(event) = s.poll_event() {
//!         let decide = event.needs_decision();
//!         if let Event::Body(chunk) = event {
//!             body.extend_from_slice(chunk);
//!         }
//!         if decide {
//!             // A real server asks its policy here (and, for Event::SyncCheck, its socket).
//!             s.accept();
//!         }
//!     }
//! }
//! assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\n");
//! let out = String::from_utf8_lossy(s.output());
//! assert!(out.starts_with("220 mx.example.org ESMTP ready\r\n250-mx.example.org"));
//! assert!(out.ends_with("250 2.0.0 Message accepted\r\n221 2.0.0 mx.example.org closing connection\r\n"));
//! assert!(s.is_closed());
//! ```
//!
//! # Timeouts
//!
//! The session reads no clock: the driver passes the current [`Instant`] in, as with
//! quinn-proto's `poll_timeout` and `handle_timeout`. After [`Session::poll_event`] returned
//! `None` and the output was written, the driver asks [`Session::poll_timeout`] for the
//! deadline, waits for input until then, and if none came calls
//! [`Session::handle_timeout`], which queues `421 4.4.2 <host> Timeout exceeded, closing
//! connection` and closes the session once the deadline has passed:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use smtp_proto::session::{Session, SessionConfig};
//!
//! let mut s = Session::new(SessionConfig::new("mx.example.org"));
//! while s.poll_event().is_some() {
//!     s.accept(); // the Connect event, and the pipelining check before the greeting
//! }
//! s.clear_output(); // the greeting was written
//! let start = Instant::now();
//! let deadline = s.poll_timeout(start).expect("the session waits for a command");
//! assert_eq!(deadline, start + Duration::from_secs(300));
//! // ... no input until then:
//! assert!(!s.handle_timeout(deadline - Duration::from_secs(1)));
//! assert!(s.handle_timeout(deadline));
//! assert_eq!(s.output(), b"421 4.4.2 mx.example.org Timeout exceeded, closing connection\r\n");
//! assert!(s.is_closed() && s.poll_timeout(deadline).is_none());
//! ```
//!
//! Decisions made here:
//! - The limit is [`SessionConfig::command_timeout`] (default 5 minutes, RFC 5321
//!   §4.5.3.2.7) while a command (or an AUTH response line) is awaited, and
//!   [`SessionConfig::data_timeout`] (default 3 minutes, RFC 5321 §4.5.3.2.5) inside message
//!   content: in DATA, and from the first BDAT chunk to the last (between chunks too), as
//!   [`Session::is_receiving_data`] says.
//! - The clock starts when the driver first asks after the session last received input
//!   (bytes, a decision, the end of the TLS handshake): the time the server spends deciding
//!   or writing is not the client's. Every read restarts it, so the limit is per read (as
//!   Postfix's `smtpd_timeout`); line and size limits bound what a client that trickles
//!   bytes can make the server hold.
//! - There is no deadline while the session waits for the driver (a decision is pending, or
//!   the TLS handshake after STARTTLS is due; the driver bounds the handshake itself), before
//!   the first [`Session::poll_event`], or once the session is closed.
//! - A timeout too large for an [`Instant`] (e.g. [`Duration::MAX`]) means no deadline.
//!
//! # States
//!
//! ```text
//!  Connect ──accept──▶ Ready ──EHLO/HELO──▶ Greeted ──MAIL──▶ Mail ──RCPT──▶ Rcpt ─┐
//!     │reject             ▲                     ▲                 (RCPT)* ◀──────┘
//!     ▼                   │                     │            DATA │  BDAT
//!  Closed ◀── QUIT / 421 ─┴── STARTTLS ─(handshake)             ▼    ▼
//!                                               └── reply ◀── Data / Bdat chunks
//! ```
//! RSET and a new EHLO abort a transaction from any state; STARTTLS resets the session to
//! Ready (a new EHLO is required) and drops whatever the client pipelined behind it.
//!
//! # Decisions made here
//! - Replies carry RFC 3463 enhanced codes (except the greeting, EHLO/HELO and 354).
//! - A client that makes [`SessionConfig::max_errors`] protocol errors (bad syntax, bad
//!   sequence) is disconnected with `421 4.7.0`; policy refusals do not count, nor do BDAT
//!   chunks refused because an earlier chunk failed. Past [`SessionConfig::max_junk`] NOOP,
//!   RSET, VRFY, EXPN and HELP commands, each further one counts as an error. Both counts
//!   start again when a message is accepted (as Postfix's), so only a client that delivers
//!   nothing is cut off.
//! - The EHLO reply echoes the client's name only when it is at most 255 octets.
//! - A BDAT line that does not parse (`BDAT abc`, `BDAT 5 LASTX`, `BDAT\t5`, a size past 64
//!   bits, a line too long, complete or not) gets `521 5.5.4 Syntax: BDAT count [LAST]` and
//!   the session closes, as Postfix's: the size of its chunk is unknown, so nothing after it
//!   can be read as a command.
//! - BDAT and AUTH, offered only in the EHLO reply, get `503 5.5.1 Send EHLO first` after
//!   HELO or before any greeting; a refused BDAT's chunk is swallowed, and it is part of its
//!   command for the pipelining rules below (never "input sent ahead"), so the reply to the
//!   BDAT is the same however the client's writes split command and chunk. (A command sent
//!   behind the chunk without waiting is a synchronization error when it comes with the
//!   chunk's last byte; when it comes later it is read as the next command.)
//! - MAIL/RCPT parameters the server did not advertise (unknown keywords, DSN's NOTIFY, ORCPT,
//!   RET and ENVID unless [`SessionConfig::dsn`], `BODY=BINARYMIME`) are refused with
//!   `555 5.5.4`; parameters after HELO (not EHLO) likewise.
//! - A non-ASCII address without `SMTPUTF8` on MAIL gets `553 5.6.7` (RFC 6531).
//! - A rejected greeting (`554`) closes the connection at once.
//! - Recipients the caller refuses count: at [`SessionConfig::max_refused_recipients`] of them
//!   (default 20, Postfix's `smtpd_hard_error_limit`) the refusal is followed by `421 4.7.0`
//!   and the session closes, so a client guessing addresses gets 20 tries a connection, not
//!   thousands; the count starts again when a message is accepted.
//! - Recipients past [`SessionConfig::max_recipients`] get `452 4.5.3 Too many recipients`
//!   and the transaction goes on with the recipients accepted so far: a client that sends
//!   them all before DATA (Python's `smtplib.sendmail`, for one) delivers to the first ones
//!   and retries the rest later (RFC 5321 §4.5.3.1.10). Only past
//!   [`SessionConfig::max_recipient_overshoot`] such recipients in one transaction (default
//!   1000) does each further one count as a protocol error, so a client cannot go on sending
//!   them forever. This is Postfix's `smtpd_recipient_overshoot_limit` (default 1000): its
//!   smtpd `rcpt_cmd()` answers `452 4.5.3 Error: too many recipients` and counts an error
//!   only once `state->rcpt_overshoot++ < var_smtpd_rcpt_overlim` fails, and `rcpt_reset()`
//!   clears that count with each transaction, as [`Session`] does. (Counting every such
//!   reply as an error, as this crate once did, closed a session of 110 recipients with
//!   `421` before DATA under the defaults, and every retry ended the same way.)
//! - MAIL/RCPT parameters: a malformed value of a known keyword is `501 5.5.4`, an unknown
//!   or unadvertised keyword `555 5.5.4` (see [`crate::param`]).
//!
//! # Bare CR and LF in command lines
//! A command line that ends in a bare LF, or holds a bare CR, is answered as Postfix does with
//! `smtpd_forbid_bare_newline = reject`: `550 5.5.2 <hostname> Error: bare <LF> received` (or
//! `<CR>`), and the session closes ([`Event::Closed`]). Nothing of the line is executed, in
//! particular not the text after the bare LF, which a server that split the line there would
//! take for a second command. This holds in every state where commands are read: before and
//! after EHLO, in a transaction, between BDAT chunks, after STARTTLS, and at the end of an
//! over-long line that is being dropped. It is not configurable: no other reading of such a
//! line is safe. (Message content has its own policy, [`DataConfig::bare_line_ending`],
//! which applies to BDAT chunks too: text sent by BDAT has CRLF line ends as DATA's has,
//! RFC 3030 §2, and a bare CR split from its LF by a chunk boundary is found as well;
//! BINARYMIME is not offered, `BODY=BINARYMIME` gets `555 5.5.4`. A message a reader
//! splits on a bare CR would show it other header fields than the server read.)
//!
//! # LMTP and extension verbs
//! With [`SessionConfig::lmtp`] the session speaks LMTP (RFC 2033): the greeting says
//! `LMTP`, `LHLO` replaces EHLO (HELO and EHLO get `500 5.5.1`, RFC 2033 §4.1 forbids a
//! positive reply), and the end of a message gets one reply per accepted recipient, in order
//! (§4.2), given with [`Session::respond_per_recipient`]; content the session itself refuses
//! (size, bare line endings) gets its refusal once per recipient. In an SMTP session the
//! same call sends one reply chosen by [`combine_replies`], so that no recipient's mail is
//! lost. Verbs listed in [`SessionConfig::extension_verbs`] (XCLIENT, ETRN, a verb of the
//! caller's) are reported as [`Event::Extension`] with their arguments, so a caller can
//! implement them without changing the state machine; everything else the parser does not
//! know is still refused.
//!
//! # Pipelining
//! With [`SessionConfig::forbid_unauth_pipelining`] (the default), the session enforces RFC
//! 2920 as Postfix's `smtpd_forbid_unauth_pipelining = yes` (its default since 3.9): the
//! client may send a command before the previous one's reply only after an EHLO was
//! accepted, and never behind EHLO, HELO, DATA, VRFY, EXPN, TURN, QUIT or NOOP, which end a
//! group (so message content sent before the `354` counts); nor may it talk before the
//! greeting. Input where it is not allowed gets `554 5.5.0 Error: SMTP protocol
//! synchronization` (Postfix's reply), the command it follows is not executed, and the
//! session closes. MAIL, RCPT, RSET, BDAT (and its content) and HELP may be followed by more;
//! commands may follow the end of a message (`.` or `BDAT ... LAST`). STARTTLS drops what
//! follows it instead (see above), as Postfix does.
//!
//! The session sees the input it was fed. When nothing is buffered behind such a command (or
//! when the greeting is due) it asks the driver with [`Event::SyncCheck`] whether the client
//! sent more that it has not been fed yet: the driver looks at its socket without waiting
//! (Postfix peeks at its socket in the same places), so a client that waits for replies
//! sees no delay. A driver that always answers "nothing pending" still gets the checks on
//! what it fed.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::address::{ForwardPath, ReversePath};
use crate::command::{parse_command, Command, CommandErrorKind, Limits};
use crate::data::{BareLineEnding, DataConfig, DataDecoder, DataError, DataStatus};
use crate::ehlo::{Capability, EhloReply};
use crate::param::{Body, MailParams, RcptParams};
use crate::reply::{EnhancedCode, Refusal, Reply};
use crate::sasl::{self, Credentials, Mechanism, ServerExchange};

/// Longest SASL response line accepted, CRLF included (RFC 4954 §4: at least 12288 octets).
pub const MAX_AUTH_LINE: usize = 12288;

/// Configuration of a [`Session`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The server's name, in the greeting, the EHLO reply and 221/421 replies.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as `SIZE`); `None` for no limit.
    pub max_message_size: Option<u64>,
    /// Most recipients accepted in one transaction (default 100, RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Recipients past [`SessionConfig::max_recipients`] a client may send in one
    /// transaction, each refused with `452 4.5.3` but not counted as an error, before each
    /// further one counts against [`SessionConfig::max_errors`] (default 1000, as Postfix's
    /// `smtpd_recipient_overshoot_limit`). See the module docs, "Decisions made here".
    pub max_recipient_overshoot: usize,
    /// Command line and address length limits.
    pub limits: Limits,
    /// DATA policies (bare CR/LF, text line length; the bare CR/LF policy is BDAT's too);
    /// its `max_size` is replaced by
    /// `max_message_size`.
    pub data: DataConfig,
    /// Offer STARTTLS (a certificate is configured). Not offered once TLS is active.
    pub starttls: bool,
    /// The connection is already encrypted (implicit TLS listener).
    pub tls_active: bool,
    /// Offer CHUNKING and accept BDAT.
    pub chunking: bool,
    /// Offer SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Offer DSN and accept its parameters (RFC 3461); the caller must then honour them.
    pub dsn: bool,
    /// Protocol errors tolerated before the client is disconnected with `421 4.7.0`; the
    /// count starts again when a message is accepted.
    pub max_errors: usize,
    /// Recipients the caller refused (any 4yz or 5yz answer to `RCPT` but the session's own
    /// `452 4.5.3 Too many recipients`) a client may get before the session closes with
    /// `421 4.7.0` (default 20, as Postfix's `smtpd_hard_error_limit`, which counts every
    /// refusal); the count starts again when a message is accepted. It stops a client that
    /// guesses addresses (a directory harvest) from trying without end on one connection.
    pub max_refused_recipients: usize,
    /// NOOP, RSET, VRFY, EXPN and HELP commands allowed before each further one counts as a
    /// protocol error (default 100); the count starts again when a message is accepted.
    pub max_junk: usize,
    /// Refuse input the client sent without waiting for a reply where RFC 2920 does not allow
    /// it, as Postfix's `smtpd_forbid_unauth_pipelining = yes` (its default since 3.9): the
    /// command is not executed, `554 5.5.0 Error: SMTP protocol synchronization` is sent and
    /// the session closes. Default `true`; see the module docs, "Pipelining".
    pub forbid_unauth_pipelining: bool,
    /// SASL mechanisms offered with `AUTH` (RFC 4954), in the order advertised; empty (the
    /// default) for no AUTH (`502 5.5.1`). The session runs the exchange and reports the
    /// client's credentials as [`Event::Auth`]; the caller checks them.
    pub auth_mechanisms: Vec<Mechanism>,
    /// Offer AUTH only on an encrypted connection (default `true`): before TLS it is not
    /// advertised and `AUTH` gets `538 5.7.11`, as Postfix's `smtpd_tls_auth_only = yes`.
    /// PLAIN and LOGIN send the password itself.
    pub auth_requires_tls: bool,
    /// Failed AUTH attempts allowed in one session (default 3): the failure that reaches
    /// this number is answered, then `421 4.7.0` closes the session.
    pub max_auth_failures: usize,
    /// How long the client may be silent while a command is awaited (default 5 minutes,
    /// RFC 5321 §4.5.3.2.7); then `421 4.4.2` closes the session. See the module docs,
    /// "Timeouts".
    pub command_timeout: Duration,
    /// How long the client may be silent inside message content, DATA or BDAT (default 3
    /// minutes, RFC 5321 §4.5.3.2.5); then `421 4.4.2` closes the session.
    pub data_timeout: Duration,
    /// Verbs beyond this crate's that the caller implements (`XCLIENT`, `ETRN`, its own):
    /// a command line with one of them (compared case-insensitively) is reported as
    /// [`Event::Extension`] instead of being refused with `500 5.5.1` (or `502 5.5.1` for
    /// verbs this crate knows but does not implement, such as `ETRN`). The verbs this crate
    /// implements cannot be taken over. Default: none.
    pub extension_verbs: Vec<String>,
    /// Capabilities added at the end of the EHLO reply (e.g. an extension's keyword).
    pub extra_capabilities: Vec<Capability>,
    /// Speak LMTP (RFC 2033) instead of SMTP: the greeting says `LMTP`, `LHLO` takes the
    /// place of EHLO (reported as [`Event::Hello`] with `extended`), `HELO` and `EHLO` get
    /// `500 5.5.1`, and the end of a message is answered with one reply per accepted
    /// recipient, in order ([`Session::respond_per_recipient`]; [`Session::accept`] and
    /// [`Session::respond`] give every recipient the same reply). Default `false`.
    pub lmtp: bool,
}

/// Why a [`SessionConfig`] cannot be used ([`SessionConfig::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The host name is not a domain name or an address literal (RFC 5321 `Domain /
    /// address-literal`): empty, or with spaces or control characters that would change the
    /// replies it is written into.
    #[error("host name {0:?} is not a domain name or address literal")]
    Hostname(String),
    /// An extra capability is not one `ehlo-line` ([`Capability::is_valid`]).
    #[error("capability {0:?} cannot be written as one EHLO line")]
    Capability(String),
    /// An extra capability that the session offers itself from its own settings (`STARTTLS`,
    /// `AUTH`, `SIZE`, ...): added by hand it would be offered where the session does not
    /// implement it, or twice.
    #[error("capability {0} is offered by the session from its settings, not added by hand")]
    ReservedCapability(String),
    /// An extension verb that is not an `ehlo-keyword`-like word (`(ALPHA / DIGIT) *(ALPHA /
    /// DIGIT / "-")`).
    #[error("extension verb {0:?} is not a command word")]
    Verb(String),
}

/// `name` with what no reply can carry replaced: control characters and spaces as `?`, and
/// an empty name as `localhost`.
fn sanitized_hostname(name: &str) -> String {
    if name.is_empty() {
        return "localhost".to_owned();
    }
    name.chars()
        .map(|c| if c.is_control() || c == ' ' { '?' } else { c })
        .collect()
}

impl SessionConfig {
    /// Checks what the session writes into its replies as given: the host name is a domain
    /// name or address literal, each of [`extra_capabilities`](Self::extra_capabilities) is
    /// one valid EHLO line and not one the session offers itself, each of
    /// [`extension_verbs`](Self::extension_verbs) is a command word. A session made from a
    /// configuration that fails still never writes a reply line it was not meant to (an
    /// invalid capability is not offered, a bad host name has its control characters and
    /// spaces written as `?`), but a driver should refuse to start with it; the server
    /// library's builder does.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn check(&self) -> Result<(), ConfigError> {
        if crate::address::parse_domain(&self.hostname).is_err() {
            return Err(ConfigError::Hostname(self.hostname.clone()));
        }
        for c in &self.extra_capabilities {
            if !c.is_valid() {
                return Err(ConfigError::Capability(c.to_line()));
            }
            let reserved = !matches!(c, Capability::Other(..))
                || Capability::from_line(c.keyword())
                    .is_some_and(|k| !matches!(k, Capability::Other(..)));
            if reserved {
                return Err(ConfigError::ReservedCapability(
                    c.keyword().to_ascii_uppercase(),
                ));
            }
        }
        for v in &self.extension_verbs {
            if !crate::ehlo::is_ehlo_keyword(v) {
                return Err(ConfigError::Verb(v.clone()));
            }
        }
        Ok(())
    }

    /// Defaults: no size limit, 100 recipients (and 1000 more refused before they count as
    /// errors), RFC 5321 line limits, bare line endings refused, CHUNKING and SMTPUTF8
    /// offered, no TLS, no DSN, 10 errors, 100 junk commands, unauthorised pipelining refused,
    /// no AUTH (when mechanisms are set: only after TLS, 3 failures per session), a command
    /// timeout of 5 minutes and a data timeout of 3 minutes.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_message_size: None,
            max_recipients: 100,
            max_recipient_overshoot: 1000,
            limits: Limits::default(),
            data: DataConfig::default(),
            starttls: false,
            tls_active: false,
            chunking: true,
            smtputf8: true,
            dsn: false,
            max_errors: 10,
            max_refused_recipients: 20,
            max_junk: 100,
            forbid_unauth_pipelining: true,
            auth_mechanisms: Vec::new(),
            auth_requires_tls: true,
            max_auth_failures: 3,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            extension_verbs: Vec::new(),
            extra_capabilities: Vec::new(),
            lmtp: false,
        }
    }
}

/// Something the caller must know or decide. Borrowed from the session: copy what you need
/// before deciding.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A client connected. Decide: accept (the `220` greeting) or respond with a `554` (or
    /// `421`) reply, after which the session closes.
    Connect,
    /// `EHLO` (extended) or `HELO` (with [`SessionConfig::lmtp`]: `LHLO`, extended). Any
    /// transaction in progress was aborted. Decide.
    Hello {
        /// The client's name, as sent.
        domain: &'a str,
        /// True for EHLO.
        extended: bool,
    },
    /// `MAIL FROM`, already checked against syntax, sequence and SIZE. Decide.
    Mail {
        /// The sender.
        from: &'a ReversePath,
        /// Its parameters (only ones the session advertised).
        params: &'a MailParams,
    },
    /// `RCPT TO`, already checked against syntax, sequence and the recipient limit. Decide.
    Rcpt {
        /// The recipient.
        to: &'a ForwardPath,
        /// Its parameters.
        params: &'a RcptParams,
    },
    /// The message content starts (`DATA` was answered `354`, or the first `BDAT` chunk).
    DataStart,
    /// Message content, dot-stuffing removed. May come in any number of pieces.
    Body(&'a [u8]),
    /// The message is complete. Decide: the reply for the whole transaction.
    DataEnd {
        /// Message size in octets.
        size: u64,
    },
    /// The message was refused by the session itself (size, bare CR/LF, line length); the
    /// reply is already queued and the transaction is over. Discard what was received.
    DataAborted(DataError),
    /// The transaction was aborted (RSET, or a BDAT error); start afresh.
    Reset,
    /// `220` to STARTTLS is queued and pipelined input was discarded: write the output, run
    /// the TLS handshake, then call [`Session::tls_established`].
    StartTls,
    /// The client said QUIT; `221` is queued. Write the output and close.
    Quit,
    /// The session closed itself (error budget, timeout, shutdown, refused greeting, bare CR
    /// or LF in a command line, unauthorised pipelining); a `421`, `550` or `554` is queued.
    /// Write the output and close.
    Closed,
    /// Only with [`SessionConfig::forbid_unauth_pipelining`]: the greeting is due, or a
    /// command that must be the last of its group (RFC 2920) was read, and the session holds
    /// no input behind it. Decide whether the client sent more that the session was not fed
    /// yet (unread bytes on the socket, plaintext buffered by the TLS layer) without waiting
    /// for data: answer [`Session::input_pending`] (`true`: the client did not wait for the
    /// reply, so the command is not executed, `554 5.5.0` is queued and the session closes),
    /// or feed those bytes and [`Session::accept`]. [`Session::accept`] alone means nothing
    /// is pending.
    SyncCheck,
    /// `AUTH`: the client completed a SASL exchange with these credentials. Decide: accept
    /// (`235 2.7.0 Authentication successful`; the session is then authenticated) or respond
    /// with a refusal, normally `535 5.7.8` (bad credentials) or `454 4.7.0` (the user
    /// database is unreachable). Each permanent refusal (5xx) counts against
    /// [`SessionConfig::max_auth_failures`]; a `421` closes the session.
    Auth {
        /// What the client presented.
        credentials: &'a Credentials,
    },
    /// A command with one of [`SessionConfig::extension_verbs`]. Decide: answer it with
    /// [`Session::respond`] (any reply; a `421` closes the session), or accept (`250 2.0.0
    /// OK`). The session's state does not change: an extension that resets the session
    /// (XCLIENT's new greeting) says so in its reply and the client sends EHLO again.
    Extension {
        /// The verb as sent (compare case-insensitively).
        verb: &'a str,
        /// The rest of the line after the verb and its space, if any (printable text, no
        /// CR, LF or other control characters).
        args: Option<&'a str>,
    },
}

impl Event<'_> {
    /// Whether the session waits for [`Session::accept`] or [`Session::respond`].
    pub fn needs_decision(&self) -> bool {
        matches!(
            self,
            Event::Connect
                | Event::Hello { .. }
                | Event::Mail { .. }
                | Event::Rcpt { .. }
                | Event::DataEnd { .. }
                | Event::SyncCheck
                | Event::Auth { .. }
                | Event::Extension { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing happened yet: the Connect event is due.
    Start,
    /// The connection was accepted; the greeting waits for the pre-greeting input check.
    Greeting,
    /// Reading command lines.
    Command,
    /// Dropping the rest of an over-long command line; `after_cr` when the last byte dropped
    /// was a CR (so an LF next ends the line properly).
    Discard { after_cr: bool },
    /// Inside DATA.
    Data,
    /// Inside a BDAT chunk.
    Bdat { remaining: u64, last: bool },
    /// AUTH: a `334` challenge was sent; the next line is the client's response.
    AuthResponse,
    /// STARTTLS answered; waiting for the handshake.
    Tls,
    /// No more input is processed.
    Closed,
}

/// What awaits a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Connect,
    Hello,
    Mail,
    Rcpt,
    DataEnd,
    /// [`Event::SyncCheck`]
    Sync,
    /// [`Event::Auth`]
    Auth,
    /// [`Event::Extension`]
    Extension,
}

/// Events without borrowed content, produced by [`Session::step`].
#[derive(Debug, Clone, Copy)]
enum Step {
    Connect,
    Hello,
    Mail,
    Rcpt,
    DataStart,
    Body,
    DataEnd(u64),
    DataAborted(DataError),
    Reset,
    StartTls,
    Quit,
    Closed,
    SyncCheck,
    Auth,
    Extension,
}

/// Whether [`Session::step`]'s loop goes on.
enum Flow {
    Return(Option<Step>),
    Continue,
}

/// Where the envelope stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envelope {
    /// No EHLO/HELO yet.
    Ready,
    /// Greeted, no transaction.
    Greeted,
    /// MAIL accepted.
    Mail,
    /// BDAT chunks under way (no more MAIL/RCPT/DATA until LAST or RSET).
    Chunking,
}

/// The server side of one SMTP connection; see the module docs.
#[derive(Debug)]
pub struct Session {
    /// Shared by the sessions of a listener ([`Session::with_shared_config`]).
    config: Arc<SessionConfig>,
    /// [`Session::disable_auth`] was called: no mechanism is offered.
    auth_disabled: bool,
    phase: Phase,
    envelope: Envelope,
    pending: Option<Pending>,
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    body: Vec<u8>,
    decoder: DataDecoder,
    helo: String,
    extended: bool,
    tls: bool,
    smtputf8: bool,
    /// The sender and parameters of the open transaction. Boxed, as are the other fields
    /// that hold something only for a while (the recipient under decision, credentials, an
    /// extension command, the greeting): an idle session keeps a pointer, not their room.
    from: Option<Box<(ReversePath, MailParams)>>,
    /// The recipient under decision.
    rcpt: Option<Box<(ForwardPath, RcptParams)>>,
    recipients: usize,
    /// Recipients refused in the open transaction because it had
    /// [`SessionConfig::max_recipients`] already.
    rcpt_overshoot: usize,
    /// Recipients refused by the caller since the session began or last delivered a message.
    refused_rcpts: usize,
    /// Size of the BDAT message so far.
    bdat_size: u64,
    bdat_oversize: bool,
    /// A bare CR or LF was in this BDAT message's content.
    bdat_bare: bool,
    /// The content so far ends with a CR (its LF may start the next chunk).
    bdat_cr: bool,
    /// A message end seen while its last piece of body was being reported.
    finished: Option<(u64, Result<(), DataError>)>,
    errors: usize,
    junk: usize,
    /// The greeting, held until the pre-greeting input check passed.
    greeting: Option<Box<Reply>>,
    /// The driver answered [`Event::SyncCheck`] for the line at `pos`: nothing pending.
    sync_checked: bool,
    /// The session closed itself outside `step` (an answer to [`Event::SyncCheck`]): an
    /// [`Event::Closed`] is due.
    close_due: bool,
    /// The SASL exchange under way.
    sasl: Option<ServerExchange>,
    /// The credentials of [`Event::Auth`], until it is decided.
    credentials: Option<Box<Credentials>>,
    authenticated: bool,
    auth_failures: usize,
    /// Since when the client's deadline runs: set by [`Session::poll_timeout`], cleared by
    /// every input (the next call starts the clock again).
    wait_since: Option<Instant>,
    /// The verb and arguments of [`Event::Extension`], until it is decided.
    extension: Option<Box<(String, Option<String>)>>,
    /// The first word of the command line being handled (uppercase, at most
    /// [`VERB_MAX`] octets), for [`Session::take_refusals`].
    verb: ([u8; VERB_MAX], u8),
    /// The session's own refusals since the last [`Session::take_refusals`] (bounded).
    refusals: Vec<SessionRefusal>,
}

/// The longest verb [`SessionRefusal::command`] keeps.
const VERB_MAX: usize = 12;

/// The most refusals kept between two [`Session::take_refusals`] calls; later ones are
/// counted in [`SessionRefusal::dropped`] of the last.
const REFUSALS_MAX: usize = 32;

/// A reply refusing a command that the session itself sent (a syntax error, a command out of
/// sequence, a parameter it does not accept, a size over the limit), or with which it closed
/// the connection (a timeout, too many errors, a synchronization error): what a driver logs,
/// since no [`Event`] reports these (see [`Session::take_refusals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRefusal {
    /// The refused command's verb, uppercase (`MAIL`, `RCPT`, `AUTH`; at most 12 octets of
    /// the line's first word, printable ASCII only); `None` when the session closed the
    /// connection.
    pub command: Option<String>,
    /// The reply sent.
    pub reply: Reply,
    /// Refusals not kept after this one (more than 32 between two takes).
    pub dropped: usize,
}

fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
    let enhanced = enhanced.and_then(|(c, s, d)| EnhancedCode::new(c, s, d));
    Reply::known(code, enhanced, text.to_owned())
}

/// The reply of a recipient that was given none.
fn missing_verdict() -> Reply {
    reply(
        451,
        Some((4, 3, 0)),
        "No reply for this recipient, try again later",
    )
}

/// A per-recipient reply as a verdict: 2yz, 4yz and 5yz as given, anything else (a 3yz
/// makes no sense after the content) as a temporary failure.
fn verdict(r: Reply) -> Reply {
    if r.is_positive_completion() || r.is_transient() || r.is_permanent() {
        r
    } else {
        missing_verdict()
    }
}

/// One SMTP reply for a message whose recipients got different verdicts, chosen so that no
/// recipient's mail is lost: the first reply when all are 2yz; otherwise the first 4yz (the
/// client retries the whole message, so a recipient that was refused for now is tried
/// again: those that had accepted may get it twice, none loses it); otherwise the first
/// 5yz (the client bounces it for all). No reply at all gives `451 4.3.0`.
///
/// ```
/// use smtp_proto::session::combine_replies;
/// use smtp_proto::Reply;
///
/// let ok = Reply::ok();
/// let busy = Reply::new(452, None, "mailbox full").unwrap();
/// let gone = Reply::new(550, None, "no such user").unwrap();
/// assert_eq!(combine_replies(&[ok.clone(), ok.clone()]), ok);
/// assert_eq!(combine_replies(&[ok.clone(), gone.clone(), busy.clone()]), busy);
/// assert_eq!(combine_replies(&[gone.clone(), ok]), gone);
/// ```
pub fn combine_replies(replies: &[Reply]) -> Reply {
    let first = |f: fn(&Reply) -> bool| replies.iter().find(|r| f(r)).cloned();
    if !replies.is_empty() && replies.iter().all(Reply::is_positive_completion) {
        return replies[0].clone();
    }
    first(Reply::is_transient)
        .or_else(|| first(Reply::is_permanent))
        .unwrap_or_else(missing_verdict)
}

impl Session {
    /// A new session; the first event will be [`Event::Connect`].
    pub fn new(config: SessionConfig) -> Self {
        Self::with_shared_config(Arc::new(config))
    }

    /// A new session with a configuration shared with other sessions (a server keeps one
    /// per listener kind instead of a copy in every connection).
    pub fn with_shared_config(config: Arc<SessionConfig>) -> Self {
        // A host name no reply can carry as one word: never let it split a reply into lines
        // (see SessionConfig::check, which a driver should call; the server builder does).
        let config = if config.hostname.is_empty()
            || config.hostname.chars().any(|c| c.is_control() || c == ' ')
        {
            let mut c = SessionConfig::clone(&config);
            c.hostname = sanitized_hostname(&c.hostname);
            Arc::new(c)
        } else {
            config
        };
        let mut data = config.data;
        data.max_size = config.max_message_size;
        let tls = config.tls_active;
        Self {
            decoder: DataDecoder::with_config(data),
            config,
            auth_disabled: false,
            phase: Phase::Start,
            envelope: Envelope::Ready,
            pending: None,
            input: Vec::new(),
            pos: 0,
            output: Vec::new(),
            body: Vec::new(),
            helo: String::new(),
            extended: false,
            tls,
            smtputf8: false,
            from: None,
            rcpt: None,
            recipients: 0,
            rcpt_overshoot: 0,
            refused_rcpts: 0,
            bdat_size: 0,
            bdat_oversize: false,
            bdat_bare: false,
            bdat_cr: false,
            finished: None,
            errors: 0,
            junk: 0,
            greeting: None,
            sync_checked: false,
            close_due: false,
            sasl: None,
            credentials: None,
            authenticated: false,
            auth_failures: 0,
            wait_since: None,
            extension: None,
            verb: ([0; VERB_MAX], 0),
            refusals: Vec::new(),
        }
    }

    /// The replies with which the session itself refused commands or closed the connection
    /// since the last call (see [`SessionRefusal`]), oldest first; refusals the caller made
    /// ([`Session::refuse`], [`Session::respond`]) are not among them. At most 32 are kept
    /// between two calls.
    pub fn take_refusals(&mut self) -> Vec<SessionRefusal> {
        std::mem::take(&mut self.refusals)
    }

    fn record_refusal(&mut self, command: bool, reply: &Reply) {
        if self.refusals.len() >= REFUSALS_MAX {
            if let Some(last) = self.refusals.last_mut() {
                last.dropped += 1;
            }
            return;
        }
        let command = command.then(|| {
            let (bytes, len) = &self.verb;
            String::from_utf8_lossy(&bytes[..usize::from(*len)]).into_owned()
        });
        self.refusals.push(SessionRefusal {
            command,
            reply: reply.clone(),
            dropped: 0,
        });
    }

    /// The configuration this session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    // ---- getters ----

    /// Whether the session is over: write the output, then close the connection.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether message content is being received (so the DATA timeout applies, and a graceful
    /// shutdown should let it finish).
    pub fn is_receiving_data(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Bdat { .. })
            || self.pending == Some(Pending::DataEnd)
            || self.envelope == Envelope::Chunking
    }

    /// Recipients the caller refused since the session began or last delivered a message
    /// (what [`SessionConfig::max_refused_recipients`] limits); a driver may delay its
    /// refusals past a number of them, as Postfix's `smtpd_soft_error_limit`.
    pub fn refused_recipients(&self) -> usize {
        self.refused_rcpts
    }

    /// Whether a transaction (MAIL accepted) is open.
    pub fn in_transaction(&self) -> bool {
        matches!(self.envelope, Envelope::Mail | Envelope::Chunking)
    }

    /// Whether the session waits for STARTTLS's handshake.
    pub fn awaiting_tls(&self) -> bool {
        self.phase == Phase::Tls
    }

    /// Whether the connection is encrypted (implicit TLS or after STARTTLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether a client's AUTH was accepted (until STARTTLS, which forgets it).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether AUTH is offered to this client now: mechanisms are configured and, when
    /// [`SessionConfig::auth_requires_tls`], the connection is encrypted.
    pub fn auth_offered(&self) -> bool {
        !self.mechanisms().is_empty() && (self.tls || !self.config.auth_requires_tls)
    }

    /// Turns AUTH off for this session (e.g. a listener whose clients may not log in),
    /// whatever the configuration said. Call before the first EHLO.
    pub fn disable_auth(&mut self) {
        self.auth_disabled = true;
    }

    /// The SASL mechanisms this session offers.
    fn mechanisms(&self) -> &[Mechanism] {
        if self.auth_disabled {
            &[]
        } else {
            &self.config.auth_mechanisms
        }
    }

    /// The name the client gave in EHLO/HELO (empty before).
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// Whether the client said EHLO rather than HELO.
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// The accepted sender of the open transaction.
    pub fn sender(&self) -> Option<&ReversePath> {
        self.from.as_ref().map(|m| &m.0)
    }

    /// Number of recipients accepted in the open transaction.
    pub fn recipients(&self) -> usize {
        self.recipients
    }

    /// Bytes received and not yet processed.
    pub fn buffered_input(&self) -> usize {
        self.input.len() - self.pos
    }

    // ---- input ----

    /// Adds bytes received from the client. Ignored once closed or while the TLS handshake
    /// is due (nothing read before the handshake may be acted on after it).
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Closed | Phase::Tls) {
            return;
        }
        if !bytes.is_empty() {
            self.wait_since = None;
        }
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.input.len() / 2 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The deadline [`Session::poll_timeout`] gave may have passed: if it has (`now` is at or
    /// after it), queues `421 4.4.2 <host> Timeout exceeded, closing connection`, closes the
    /// session and returns `true`. Otherwise (no deadline runs, or `now` is before it, as
    /// after an early wake-up) does nothing and returns `false`.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                self.timeout();
                true
            }
            _ => false,
        }
    }

    /// The client was silent too long: queue `421 4.4.2` and close, whatever the deadline.
    /// Drivers with a clock use [`Session::handle_timeout`], which checks the deadline.
    pub fn timeout(&mut self) {
        let text = format!(
            "{} Timeout exceeded, closing connection",
            self.config.hostname
        );
        self.close_with(&reply(421, Some((4, 4, 2)), &text));
    }

    /// The server is going down: queue `421 4.3.2` and close.
    pub fn shutdown(&mut self) {
        self.close_with(&Reply::service_unavailable(&self.config.hostname));
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (a new EHLO is
    /// required) and STARTTLS is no longer offered.
    pub fn tls_established(&mut self) {
        if self.phase != Phase::Tls {
            return;
        }
        self.wait_since = None;
        self.tls = true;
        self.input.clear();
        self.pos = 0;
        self.reset_transaction();
        self.envelope = Envelope::Ready;
        self.helo.clear();
        self.extended = false;
        self.sync_checked = false;
        self.sasl = None;
        self.authenticated = false;
        self.phase = Phase::Command;
    }

    /// Releases memory the input, output and body buffers hold beyond `keep` octets each, so
    /// a connection that received a big message does not keep its buffers while idle.
    /// Unprocessed input and unsent output are kept. A driver calls this before waiting for a
    /// command.
    pub fn shrink_buffers(&mut self, keep: usize) {
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        self.input.shrink_to(keep);
        self.output.shrink_to(keep);
        self.body.shrink_to(keep);
    }

    // ---- decisions ----

    /// Accepts what the last event asked about, with the default positive reply.
    pub fn accept(&mut self) {
        let r = match self.pending {
            None => return,
            Some(Pending::Sync) => {
                self.wait_since = None;
                self.pending = None;
                self.sync_checked = true;
                return;
            }
            Some(Pending::Connect) if self.config.lmtp => {
                reply(220, None, &format!("{} LMTP ready", self.config.hostname))
            }
            Some(Pending::Connect) => Reply::service_ready(&self.config.hostname),
            Some(Pending::Hello) if self.extended => self.ehlo_reply(),
            Some(Pending::Hello) => reply(250, None, &self.config.hostname),
            Some(Pending::Mail) => reply(250, Some((2, 1, 0)), "Sender OK"),
            Some(Pending::Rcpt) => reply(250, Some((2, 1, 5)), "Recipient OK"),
            Some(Pending::DataEnd) => reply(250, Some((2, 0, 0)), "Message accepted"),
            Some(Pending::Auth) => reply(235, Some((2, 7, 0)), "Authentication successful"),
            Some(Pending::Extension) => reply(250, Some((2, 0, 0)), "OK"),
        };
        self.respond(r);
    }

    /// Answers the end of a message with one reply per accepted recipient, in the order
    /// they were accepted (LMTP, RFC 2033 §4.2). A reply that is neither 2yz, 4yz nor 5yz
    /// counts as `451 4.3.0`; recipients without a reply (too few given) get `451 4.3.0`,
    /// extra replies are ignored. Outside an LMTP session (or when the last event was not
    /// [`Event::DataEnd`]) the replies are combined into one with [`combine_replies`].
    pub fn respond_per_recipient<I>(&mut self, replies: I)
    where
        I: IntoIterator<Item = Reply>,
    {
        let replies: Vec<Reply> = replies.into_iter().map(verdict).collect();
        if !self.config.lmtp || self.pending != Some(Pending::DataEnd) {
            self.respond(combine_replies(&replies));
            return;
        }
        self.pending = None;
        self.wait_since = None;
        let n = self.recipients.max(1);
        let mut given = replies.into_iter();
        let mut any_ok = false;
        for _ in 0..n {
            let r = given.next().unwrap_or_else(missing_verdict);
            any_ok |= r.is_positive_completion();
            r.encode(&mut self.output);
        }
        if any_ok {
            self.delivered();
        }
        self.reset_transaction();
        self.envelope = Envelope::Greeted;
    }

    /// Answers the last event with `reply`. A positive reply (2xx) accepts, any other refuses
    /// (a refused Connect or [`Event::SyncCheck`] closes the session, and so does any `421`,
    /// which says the server closes the connection).
    pub fn respond(&mut self, r: Reply) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.wait_since = None;
        let ok = r.is_positive_completion();
        match pending {
            Pending::Connect if ok && self.config.forbid_unauth_pipelining => {
                // Sent once the client is known not to have talked first.
                self.greeting = Some(Box::new(r));
                self.phase = Phase::Greeting;
                return;
            }
            Pending::Sync if ok => {
                self.sync_checked = true;
                return;
            }
            _ => {}
        }
        r.encode(&mut self.output);
        if pending == Pending::DataEnd && self.config.lmtp {
            // One reply per accepted recipient (RFC 2033 §4.2), all the same here.
            for _ in 1..self.recipients {
                r.encode(&mut self.output);
            }
        }
        match pending {
            Pending::Connect if ok => self.phase = Phase::Command,
            Pending::Connect | Pending::Sync => self.phase = Phase::Closed,
            Pending::Hello if ok => self.envelope = Envelope::Greeted,
            Pending::Hello => {
                self.envelope = Envelope::Ready;
                self.helo.clear();
            }
            Pending::Mail if ok => self.envelope = Envelope::Mail,
            Pending::Mail => self.reset_transaction(),
            Pending::Rcpt => {
                self.rcpt = None;
                if ok {
                    self.recipients += 1;
                } else if r.code() != 421 {
                    self.refused_rcpts = self.refused_rcpts.saturating_add(1);
                    if self.refused_rcpts >= self.config.max_refused_recipients {
                        self.close_too_many_errors();
                        self.close_due = true;
                        return;
                    }
                }
            }
            Pending::DataEnd => {
                if ok {
                    self.delivered();
                }
                self.reset_transaction();
                self.envelope = Envelope::Greeted;
            }
            Pending::Extension => self.extension = None,
            Pending::Auth => {
                self.credentials = None;
                if ok {
                    self.authenticated = true;
                } else if r.is_permanent() {
                    // Only refusals of the credentials count: a temporary failure (454, the
                    // user database is down) says nothing about the password.
                    self.auth_failed();
                }
            }
        }
        if r.code() == 421 && self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.close_due = true;
        }
    }

    /// Refuses what the last event asked about with `refusal`, a 4yz or 5yz reply (the same
    /// as [`Session::respond`] with it; a driver whose policy returns a [`Refusal`] can never
    /// accept by mistake).
    pub fn refuse(&mut self, refusal: Refusal) {
        self.respond(refusal.into_reply());
    }

    /// Counts a failed AUTH; at [`SessionConfig::max_auth_failures`] the session closes.
    fn auth_failed(&mut self) {
        self.auth_failures = self.auth_failures.saturating_add(1);
        if self.auth_failures >= self.config.max_auth_failures && self.phase != Phase::Closed {
            let text = format!(
                "{} Error: too many failed authentication attempts",
                self.config.hostname
            );
            self.close_with(&reply(421, Some((4, 7, 0)), &text));
            self.close_due = true;
        }
    }

    /// Answers [`Event::SyncCheck`]: whether the client sent input the session was not fed
    /// (`true` refuses the command with `554 5.5.0 Error: SMTP protocol synchronization` and
    /// closes the session; an [`Event::Closed`] follows). Ignored when no check is due.
    pub fn input_pending(&mut self, pending: bool) {
        if self.pending != Some(Pending::Sync) {
            return;
        }
        self.pending = None;
        self.wait_since = None;
        if pending {
            self.sync_error();
            self.close_due = true;
        } else {
            self.sync_checked = true;
        }
    }

    // ---- output ----

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Marks the output as sent.
    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// The instant by which the client must send more input, or `None` when the session
    /// does not wait for the client (a decision is pending, the TLS handshake is due, no
    /// event was polled yet, or the session is closed). Call it with the current time after
    /// [`Session::poll_event`] returned `None` and the output was written: the first call
    /// after an input starts the clock at `now`, later calls return the same deadline until
    /// the next input. When no input came by then, call [`Session::handle_timeout`]. See the
    /// module docs, "Timeouts".
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.timeout_limit()?;
        let since = *self.wait_since.get_or_insert(now);
        since.checked_add(limit)
    }

    /// The running deadline (`None` when none runs or the clock has not started).
    fn deadline(&self) -> Option<Instant> {
        self.wait_since?.checked_add(self.timeout_limit()?)
    }

    /// The timeout that applies now, `None` when the session does not wait for the client.
    fn timeout_limit(&self) -> Option<Duration> {
        if self.pending.is_some()
            || self.close_due
            || matches!(self.phase, Phase::Start | Phase::Tls | Phase::Closed)
        {
            return None;
        }
        Some(if self.is_receiving_data() {
            self.config.data_timeout
        } else {
            self.config.command_timeout
        })
    }

    // ---- events ----

    /// The next event, or `None` when more input is needed, a decision is awaited, or the
    /// session is closed or waits for the TLS handshake.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let step = self.step()?;
        Some(match step {
            Step::Connect => Event::Connect,
            Step::Hello => Event::Hello {
                domain: &self.helo,
                extended: self.extended,
            },
            Step::Mail => {
                let (from, params) = &**self.from.as_ref()?;
                Event::Mail { from, params }
            }
            Step::Rcpt => {
                let (to, params) = &**self.rcpt.as_ref()?;
                Event::Rcpt { to, params }
            }
            Step::DataStart => Event::DataStart,
            Step::Body => Event::Body(&self.body),
            Step::DataEnd(size) => Event::DataEnd { size },
            Step::DataAborted(e) => Event::DataAborted(e),
            Step::Reset => Event::Reset,
            Step::StartTls => Event::StartTls,
            Step::Quit => Event::Quit,
            Step::Closed => Event::Closed,
            Step::SyncCheck => Event::SyncCheck,
            Step::Auth => Event::Auth {
                credentials: self.credentials.as_ref()?,
            },
            Step::Extension => {
                let (verb, args) = &**self.extension.as_ref()?;
                Event::Extension {
                    verb,
                    args: args.as_deref(),
                }
            }
        })
    }

    fn step(&mut self) -> Option<Step> {
        if std::mem::take(&mut self.close_due) {
            return Some(Step::Closed);
        }
        if self.pending.is_some() {
            return None;
        }
        self.body.clear();
        if let Some((size, result)) = self.finished.take() {
            return Some(self.finish_message(size, result));
        }
        loop {
            let flow = match self.phase {
                Phase::Closed | Phase::Tls => return None,
                Phase::Start => {
                    self.pending = Some(Pending::Connect);
                    self.phase = Phase::Command;
                    return Some(Step::Connect);
                }
                Phase::Greeting => self.step_greeting(),
                Phase::Discard { after_cr } => self.step_discard(after_cr),
                Phase::Data => self.step_data(),
                Phase::AuthResponse => self.step_auth_response(),
                Phase::Bdat { remaining, last } => self.step_bdat(remaining, last),
                Phase::Command => {
                    let before = self.pos;
                    match self.step_command() {
                        Some(step) => Flow::Return(Some(step)),
                        // An incomplete line: wait for more bytes.
                        None if self.pos == before => Flow::Return(None),
                        None => Flow::Continue,
                    }
                }
            };
            match flow {
                Flow::Return(step) => return step,
                Flow::Continue => {}
            }
        }
    }

    /// Sends the held greeting once the client is known not to have talked first (as Postfix
    /// checks for pending input when it sends its greeting).
    fn step_greeting(&mut self) -> Flow {
        if self.buffered_input() > 0 {
            self.sync_error();
            return Flow::Return(Some(Step::Closed));
        }
        if !std::mem::take(&mut self.sync_checked) {
            self.pending = Some(Pending::Sync);
            return Flow::Return(Some(Step::SyncCheck));
        }
        if let Some(g) = self.greeting.take() {
            g.encode(&mut self.output);
        }
        self.phase = Phase::Command;
        Flow::Continue
    }

    /// Drops the rest of an over-long line, up to its line end, which must be a CRLF: a bare
    /// LF there closes the session as in any command line (what follows it is never read as
    /// a command).
    fn step_discard(&mut self, after_cr: bool) -> Flow {
        let rest = &self.input[self.pos..];
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                let crlf = match lf.checked_sub(1) {
                    Some(cr) => rest[cr] == b'\r',
                    None => after_cr,
                };
                self.pos += lf + 1;
                if !crlf {
                    return Flow::Return(Some(self.bare_line_end(CommandErrorKind::BareLineFeed)));
                }
                self.phase = Phase::Command;
                Flow::Continue
            }
            None => {
                if let Some(&last) = rest.last() {
                    self.phase = Phase::Discard {
                        after_cr: last == b'\r',
                    };
                }
                self.pos = self.input.len();
                Flow::Return(None)
            }
        }
    }

    /// A command line with a bare LF or CR: as Postfix with `smtpd_forbid_bare_newline =
    /// reject`, `550 5.5.2 <host> Error: bare <LF> received` and the session closes, so no
    /// part of the line (nor what follows the bare LF) is executed.
    fn bare_line_end(&mut self, kind: CommandErrorKind) -> Step {
        let text = format!("{} {}", self.config.hostname, kind.message());
        self.close_with(&reply(kind.code(), Some(kind.enhanced()), &text));
        Step::Closed
    }

    /// Queues `554 5.5.0 Error: SMTP protocol synchronization` (Postfix's text) and closes.
    fn sync_error(&mut self) {
        self.close_with(&reply(
            554,
            Some((5, 5, 0)),
            "Error: SMTP protocol synchronization",
        ));
    }

    /// Whether the client may pipeline (RFC 2920): only once an EHLO was accepted. Before
    /// that, and after HELO, every command must wait for its reply.
    fn pipelining_allowed(&self) -> bool {
        self.extended && self.envelope != Envelope::Ready
    }

    fn step_data(&mut self) -> Flow {
        let input = &self.input[self.pos..];
        if input.is_empty() {
            return Flow::Return(None);
        }
        match self.decoder.decode(input, &mut self.body) {
            DataStatus::NeedMore => {
                self.pos = self.input.len();
                if self.body.is_empty() {
                    Flow::Return(None)
                } else {
                    Flow::Return(Some(Step::Body))
                }
            }
            DataStatus::End { consumed, result } => {
                self.pos += consumed;
                self.phase = Phase::Command;
                let size = self.decoder.size();
                self.decoder.reset();
                if self.body.is_empty() {
                    Flow::Return(Some(self.finish_message(size, result)))
                } else {
                    // Report the last piece first; the end comes on the next poll.
                    self.finished = Some((size, result));
                    Flow::Return(Some(Step::Body))
                }
            }
        }
    }

    fn step_bdat(&mut self, remaining: u64, last: bool) -> Flow {
        if remaining > 0 {
            let avail = self.input.len() - self.pos;
            if avail == 0 {
                return Flow::Return(None);
            }
            let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(avail);
            let start = self.pos;
            self.pos += n;
            self.phase = Phase::Bdat {
                remaining: remaining - n as u64,
                last,
            };
            if self.envelope != Envelope::Chunking || self.bdat_oversize {
                // A refused BDAT, or past the size limit: swallow its bytes.
                return Flow::Continue;
            }
            let before = self.bdat_size;
            self.bdat_size += n as u64;
            let keep = match self.config.max_message_size {
                Some(max) if self.bdat_size > max => {
                    self.bdat_oversize = true;
                    usize::try_from(max.saturating_sub(before)).unwrap_or(0)
                }
                _ => n,
            };
            if keep == 0 {
                return Flow::Continue;
            }
            // Content by BDAT has CRLF line ends too (RFC 3030 §2; BINARYMIME is never
            // accepted): the same bare CR/LF policy as DATA, across chunk boundaries.
            let piece = &self.input[start..start + keep];
            let policy = self.config.data.bare_line_ending;
            let bare = bdat_line_ends(piece, &mut self.bdat_cr, policy, &mut self.body);
            self.bdat_bare |= bare;
            return Flow::Return(Some(Step::Body));
        }
        // The chunk is complete.
        self.phase = Phase::Command;
        if self.envelope != Envelope::Chunking {
            // Its BDAT command was refused and answered already.
            return Flow::Continue;
        }
        if self.bdat_oversize {
            let e = DataError::SizeExceeded {
                max: self.config.max_message_size.unwrap_or(u64::MAX),
            };
            return Flow::Return(Some(self.finish_message(self.bdat_size, Err(e))));
        }
        if last {
            let mut result = Ok(());
            if std::mem::take(&mut self.bdat_cr) {
                // The message ends with a CR of no line end.
                self.bdat_bare = true;
                if self.config.data.bare_line_ending == BareLineEnding::Normalize {
                    self.body.push(b'\n');
                }
            }
            if self.bdat_bare && self.config.data.bare_line_ending == BareLineEnding::Reject {
                result = Err(DataError::BareLineEnding);
            }
            if !self.body.is_empty() {
                // The added LF first; the end comes on the next poll.
                self.finished = Some((self.bdat_size, result));
                return Flow::Return(Some(Step::Body));
            }
            return Flow::Return(Some(self.finish_message(self.bdat_size, result)));
        }
        let text = format!("{} octets received", self.bdat_size);
        reply(250, Some((2, 0, 0)), &text).encode(&mut self.output);
        Flow::Continue
    }

    fn finish_message(&mut self, size: u64, result: Result<(), DataError>) -> Step {
        match result {
            Ok(()) => {
                self.pending = Some(Pending::DataEnd);
                Step::DataEnd(size)
            }
            Err(e) => {
                let r = e.reply();
                let n = if self.config.lmtp {
                    self.recipients.max(1)
                } else {
                    1
                };
                for _ in 0..n {
                    r.encode(&mut self.output);
                }
                self.reset_transaction();
                self.envelope = Envelope::Greeted;
                Step::DataAborted(e)
            }
        }
    }

    fn reset_transaction(&mut self) {
        self.finished = None;
        self.from = None;
        self.rcpt = None;
        self.recipients = 0;
        self.rcpt_overshoot = 0;
        self.smtputf8 = false;
        self.bdat_size = 0;
        self.bdat_oversize = false;
        self.bdat_bare = false;
        self.bdat_cr = false;
        self.decoder.reset();
        if matches!(self.envelope, Envelope::Mail | Envelope::Chunking) {
            self.envelope = Envelope::Greeted;
        }
    }

    fn close_with(&mut self, r: &Reply) {
        if self.phase == Phase::Closed {
            return;
        }
        self.record_refusal(false, r);
        r.encode(&mut self.output);
        self.phase = Phase::Closed;
        self.pending = None;
    }

    /// Queues a protocol error reply; returns `Closed` when the error budget is spent.
    fn protocol_error(&mut self, code: u16, enhanced: (u8, u16, u16), text: &str) -> Option<Step> {
        let r = reply(code, Some(enhanced), text);
        self.record_refusal(true, &r);
        r.encode(&mut self.output);
        self.count_error()
    }

    /// Counts a command that moves nothing forward (NOOP, RSET, VRFY, EXPN, HELP): past
    /// [`SessionConfig::max_junk`] of them in a session, each counts as a protocol error (as
    /// Postfix's `smtpd_junk_command_limit`), so a client cannot hold a connection with them.
    fn junk(&mut self) -> Option<Step> {
        self.junk += 1;
        if self.junk > self.config.max_junk {
            return self.count_error();
        }
        None
    }

    /// A message was accepted (for at least one recipient): the junk and error counts start
    /// again, as Postfix's (`smtpd_junk_command_limit` "is reset after mail is delivered",
    /// `smtpd_hard_error_limit` counts errors "without delivering mail"). So a client that
    /// sends many messages on one connection with RSET or NOOP between them is never cut off
    /// for it, while one that delivers nothing still is.
    fn delivered(&mut self) {
        self.junk = 0;
        self.errors = 0;
        self.refused_rcpts = 0;
    }

    /// Queues `421 4.7.0 <host> Too many errors, closing connection` and closes: the end of
    /// the error budget and of the refused-recipient budget alike.
    fn close_too_many_errors(&mut self) {
        let text = format!(
            "{} Too many errors, closing connection",
            self.config.hostname
        );
        self.close_with(&reply(421, Some((4, 7, 0)), &text));
    }

    /// Counts one protocol error; returns `Closed` (with `421 4.7.0` queued) when the error
    /// budget is spent.
    fn count_error(&mut self) -> Option<Step> {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close_too_many_errors();
            return Some(Step::Closed);
        }
        None
    }

    fn ehlo_reply(&self) -> Reply {
        let mut e = EhloReply::new(
            self.config.hostname.clone(),
            // A client name is echoed only when it could be a domain (at most 255 octets),
            // so the reply line stays within the 512-octet limit.
            if self.helo.len() <= 255 {
                format!("greets {}", self.helo)
            } else {
                "greets you".to_owned()
            },
        );
        e = e
            .with(Capability::Pipelining)
            .with(Capability::Size(self.config.max_message_size))
            .with(Capability::EightBitMime)
            .with(Capability::EnhancedStatusCodes);
        if self.config.smtputf8 {
            e = e.with(Capability::SmtpUtf8);
        }
        if self.config.chunking {
            e = e.with(Capability::Chunking);
        }
        if self.config.dsn {
            e = e.with(Capability::Dsn);
        }
        if self.config.starttls && !self.tls {
            e = e.with(Capability::StartTls);
        }
        if self.auth_offered() {
            let names = self
                .config
                .auth_mechanisms
                .iter()
                .map(|m| m.name().to_owned());
            e = e.with(Capability::Auth(names.collect()));
        }
        for c in &self.config.extra_capabilities {
            e = e.with(c.clone());
        }
        e.to_reply()
    }

    /// Parses and handles one command line. Returns an event, or `None` to continue (also
    /// when out of input: the caller checks).
    fn step_command(&mut self) -> Option<Step> {
        let input = &self.input[self.pos..];
        // The verb, for the refusal log (no allocation).
        let mut verb = [0u8; VERB_MAX];
        let mut n = 0;
        for &b in input
            .iter()
            .take_while(|b| b.is_ascii_graphic())
            .take(VERB_MAX)
        {
            verb[n] = b.to_ascii_uppercase();
            n += 1;
        }
        self.verb = (verb, u8::try_from(n).unwrap_or(0));
        let parsed = parse_command(input, &self.config.limits);
        // The line's length, and whether RFC 2920 makes it the last command of its group.
        let (len, last_in_group) = match &parsed {
            Ok(None) => return None,
            Ok(Some((command, used))) => (*used, !self.pipelining_allowed() || ends_group(command)),
            Err(e) => match e.kind {
                CommandErrorKind::LineTooLong { complete: false }
                | CommandErrorKind::BareLineFeed
                | CommandErrorKind::BareCarriageReturn => (e.consumed, false),
                _ => (
                    e.consumed,
                    !self.pipelining_allowed() || {
                        // TURN and LHLO end a group as EHLO does (RFC 2920 §3.1).
                        let line = input.get(..e.consumed).unwrap_or(input);
                        is_turn(line) || (self.config.lmtp && is_verb(line, b"LHLO"))
                    },
                ),
            },
        };
        // BDAT's chunk is part of the command, never input sent ahead of its reply: the
        // group ends after it. When the chunk is not all here yet, what follows it cannot be
        // told from it, so there is nothing to check (a BDAT outside an EHLO session, the one
        // place BDAT ends a group, is refused anyway).
        let (len, chunk_pending) = match &parsed {
            Ok(Some((Command::Bdat { size, .. }, _))) => {
                let end = usize::try_from(*size).ok().and_then(|n| n.checked_add(len));
                match end {
                    Some(end)
                        if self
                            .pos
                            .checked_add(end)
                            .is_some_and(|e| e <= self.input.len()) =>
                    {
                        (end, false)
                    }
                    _ => (len, true),
                }
            }
            _ => (len, false),
        };
        if last_in_group && self.config.forbid_unauth_pipelining && !chunk_pending {
            if self.pos + len < self.input.len() {
                // The client sent more without waiting for this command's reply.
                self.sync_error();
                return Some(Step::Closed);
            }
            if !self.sync_checked {
                // Maybe it did, and the driver has not fed it yet: ask.
                self.pending = Some(Pending::Sync);
                return Some(Step::SyncCheck);
            }
        }
        self.sync_checked = false;
        let (command, used) = match parsed {
            Ok(None) => return None,
            Ok(Some(c)) => c,
            Err(e) => {
                self.pos += e.consumed;
                let line = &self.input[self.pos - e.consumed..self.pos];
                // Any BDAT line that did not parse (bad syntax, `BDAT\t5`, too long, whether
                // or not its end has arrived); a bare CR or LF closes below anyway.
                let malformed = !matches!(
                    e.kind,
                    CommandErrorKind::BareLineFeed | CommandErrorKind::BareCarriageReturn
                );
                if malformed && is_verb(line, b"BDAT") {
                    // Where its chunk ends cannot be known, so what follows cannot be read as
                    // commands (it is message content to the client, or to a proxy in
                    // between): closed, as Postfix does.
                    self.close_with(&reply(521, Some((5, 5, 4)), "Syntax: BDAT count [LAST]"));
                    return Some(Step::Closed);
                }
                match e.kind {
                    CommandErrorKind::LineTooLong { complete: false } => {
                        self.phase = Phase::Discard {
                            after_cr: self.input.last() == Some(&b'\r'),
                        };
                    }
                    CommandErrorKind::BareLineFeed | CommandErrorKind::BareCarriageReturn => {
                        return Some(self.bare_line_end(e.kind));
                    }
                    CommandErrorKind::UnknownCommand | CommandErrorKind::NotImplemented => {
                        let line = &self.input[self.pos - e.consumed..self.pos];
                        if let Some(step) = self.other_verb(line.to_vec()) {
                            return step;
                        }
                    }
                    _ => {}
                }
                return self.protocol_error(e.code(), e.enhanced(), e.message());
            }
        };
        // Commands borrow the input buffer: copy out what outlives this call.
        let step = match command {
            Command::Ehlo(_) | Command::Helo(_) if self.config.lmtp => {
                self.pos += used;
                // RFC 2033 §4.1: no positive reply to HELO or EHLO; 500 recommended.
                return self.protocol_error(500, (5, 5, 1), "Command unrecognized: use LHLO");
            }
            Command::Ehlo(d) | Command::Helo(d) => {
                let extended = matches!(command, Command::Ehlo(_));
                self.helo = d.as_str().to_owned();
                self.pos += used;
                self.extended = extended;
                self.reset_transaction();
                self.envelope = Envelope::Ready;
                self.pending = Some(Pending::Hello);
                return Some(Step::Hello);
            }
            Command::Mail { from, params } => {
                let checked = self.check_mail(&from, &params);
                let owned = checked.map(|()| (from.into_owned(), params.into_owned()));
                self.pos += used;
                match owned {
                    Err((code, enh, text, protocol)) => {
                        return self.refuse_command(code, enh, &text, protocol);
                    }
                    Ok((from, params)) => {
                        self.smtputf8 = params.smtputf8;
                        self.from = Some(Box::new((from, params)));
                        self.pending = Some(Pending::Mail);
                        Step::Mail
                    }
                }
            }
            Command::Rcpt { to, params } => {
                let checked = self.check_rcpt(&to, &params);
                let owned = checked.map(|()| (to.into_owned(), params.into_owned()));
                self.pos += used;
                match owned {
                    Err((code, enh, text, protocol)) => {
                        if code == TOO_MANY_RECIPIENTS {
                            self.rcpt_overshoot = self.rcpt_overshoot.saturating_add(1);
                        }
                        return self.refuse_command(code, enh, &text, protocol);
                    }
                    Ok((to, params)) => {
                        self.rcpt = Some(Box::new((to, params)));
                        self.pending = Some(Pending::Rcpt);
                        Step::Rcpt
                    }
                }
            }
            Command::Data => {
                self.pos += used;
                if let Err((code, enh, text, protocol)) = self.check_data() {
                    return self.refuse_command(code, enh, &text, protocol);
                }
                Reply::start_mail_input().encode(&mut self.output);
                self.decoder.reset();
                self.phase = Phase::Data;
                Step::DataStart
            }
            Command::Bdat { size, last } => {
                self.pos += used;
                self.phase = Phase::Bdat {
                    remaining: size,
                    last,
                };
                if !self.config.chunking {
                    return self.protocol_error(502, (5, 5, 1), "Command not implemented");
                }
                if !self.extended {
                    // CHUNKING is offered in the EHLO reply only (RFC 3030 §2), as AUTH is;
                    // the chunk is swallowed as any refused chunk is.
                    return self.protocol_error(503, (5, 5, 1), "Send EHLO first");
                }
                if self.envelope == Envelope::Chunking {
                    return None;
                }
                if let Err((code, enh, text, _)) = self.check_data() {
                    // Not a protocol error: a client that pipelined chunks behind one that
                    // failed (e.g. over the size limit) gets one refusal per chunk.
                    return self.refuse_command(code, enh, &text, false);
                }
                self.envelope = Envelope::Chunking;
                self.bdat_size = 0;
                self.bdat_oversize = false;
                self.bdat_bare = false;
                self.bdat_cr = false;
                Step::DataStart
            }
            Command::Rset => {
                self.pos += used;
                let was = self.in_transaction();
                self.reset_transaction();
                reply(250, Some((2, 0, 0)), "OK").encode(&mut self.output);
                if let Some(closed) = self.junk() {
                    return Some(closed);
                }
                if was {
                    Step::Reset
                } else {
                    return None;
                }
            }
            Command::Noop => {
                self.pos += used;
                reply(250, Some((2, 0, 0)), "OK").encode(&mut self.output);
                return self.junk();
            }
            Command::Vrfy(_) => {
                self.pos += used;
                reply(
                    252,
                    Some((2, 5, 0)),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )
                .encode(&mut self.output);
                return self.junk();
            }
            Command::Expn(_) => {
                self.pos += used;
                reply(502, Some((5, 5, 1)), "EXPN not available").encode(&mut self.output);
                return self.junk();
            }
            Command::Help(_) => {
                self.pos += used;
                reply(
                    214,
                    Some((2, 0, 0)),
                    "See RFC 5321: https://www.rfc-editor.org/rfc/rfc5321",
                )
                .encode(&mut self.output);
                return self.junk();
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                let mechanism = Mechanism::from_name(mechanism.as_str())
                    .filter(|m| self.mechanisms().contains(m));
                let initial = initial_response.map(|r| {
                    if r == "=" {
                        Some(Vec::new())
                    } else {
                        sasl::decode_base64(r.as_bytes())
                    }
                });
                self.pos += used;
                return self.start_auth(mechanism, initial);
            }
            Command::StartTls => {
                self.pos += used;
                if self.tls {
                    return self.protocol_error(503, (5, 5, 1), "TLS already active");
                }
                if !self.config.starttls {
                    return self.protocol_error(502, (5, 5, 1), "STARTTLS not available");
                }
                reply(220, Some((2, 0, 0)), "Ready to start TLS").encode(&mut self.output);
                // Anything pipelined behind STARTTLS was sent in the clear: drop it.
                self.input.clear();
                self.pos = 0;
                self.reset_transaction();
                self.phase = Phase::Tls;
                Step::StartTls
            }
            Command::Quit => {
                self.pos += used;
                Reply::closing(&self.config.hostname).encode(&mut self.output);
                self.phase = Phase::Closed;
                Step::Quit
            }
        };
        Some(step)
    }

    /// A line the parser does not know: `LHLO` in an LMTP session, or one of
    /// [`SessionConfig::extension_verbs`]. `None` when it is neither (it is then refused).
    fn other_verb(&mut self, line: Vec<u8>) -> Option<Option<Step>> {
        let line = line.strip_suffix(b"\r\n")?;
        let text = std::str::from_utf8(line).ok()?;
        // The rule of VRFY's argument (printable, tab, UTF-8; no control character).
        crate::command::Text::new(text).ok()?;
        let (verb, args) = match text.split_once(' ') {
            Some((v, a)) => (
                v,
                Some(a.trim_matches([' ', '\t'])).filter(|a| !a.is_empty()),
            ),
            None => (text, None),
        };
        if self.config.lmtp && verb.eq_ignore_ascii_case("LHLO") {
            let Some(name) = args.filter(|a| crate::command::Word::new(a).is_ok()) else {
                return Some(self.protocol_error(501, (5, 5, 4), "Syntax: LHLO hostname"));
            };
            self.helo = name.to_owned();
            self.extended = true;
            self.reset_transaction();
            self.envelope = Envelope::Ready;
            self.pending = Some(Pending::Hello);
            return Some(Some(Step::Hello));
        }
        // Between BDAT chunks only BDAT, RSET, QUIT (and the like) make sense: an extension
        // there is refused as unknown, so no decision is awaited inside a message.
        if self.envelope == Envelope::Chunking
            || !self
                .config
                .extension_verbs
                .iter()
                .any(|v| v.eq_ignore_ascii_case(verb))
        {
            return None;
        }
        self.extension = Some(Box::new((verb.to_owned(), args.map(str::to_owned))));
        self.pending = Some(Pending::Extension);
        Some(Some(Step::Extension))
    }

    /// `AUTH` with its mechanism (`None`: not one offered) and decoded initial response
    /// (`Some(None)`: not base64).
    fn start_auth(
        &mut self,
        mechanism: Option<Mechanism>,
        initial: Option<Option<Vec<u8>>>,
    ) -> Option<Step> {
        if self.mechanisms().is_empty() {
            return self.protocol_error(502, (5, 5, 1), "AUTH not available");
        }
        if !self.extended || self.envelope == Envelope::Ready {
            return self.protocol_error(503, (5, 5, 1), "Send EHLO first");
        }
        if self.authenticated {
            return self.protocol_error(503, (5, 5, 1), "Already authenticated");
        }
        if self.in_transaction() {
            return self.protocol_error(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            );
        }
        if !self.auth_offered() {
            reply(
                538,
                Some((5, 7, 11)),
                "Encryption required for requested authentication mechanism",
            )
            .encode(&mut self.output);
            return None;
        }
        let Some(mechanism) = mechanism else {
            return self.protocol_error(504, (5, 5, 4), "Unrecognized authentication type");
        };
        let initial = match initial {
            Some(None) => return self.protocol_error(501, (5, 5, 2), "Cannot decode response"),
            Some(Some(r)) => Some(r),
            None => None,
        };
        let (exchange, step) = ServerExchange::start(mechanism, initial.as_deref());
        self.sasl = Some(exchange);
        self.sasl_step(step)
    }

    /// Carries out what the SASL exchange said.
    fn sasl_step(&mut self, step: sasl::Step) -> Option<Step> {
        match step {
            sasl::Step::Challenge(c) => {
                self.output.extend_from_slice(b"334 ");
                self.output
                    .extend_from_slice(sasl::encode_base64(&c).as_bytes());
                self.output.extend_from_slice(b"\r\n");
                self.phase = Phase::AuthResponse;
                None
            }
            sasl::Step::Done(credentials) => {
                self.sasl = None;
                self.credentials = Some(Box::new(credentials));
                self.pending = Some(Pending::Auth);
                Some(Step::Auth)
            }
            // Malformed, or a step a later mechanism adds.
            _ => {
                self.sasl = None;
                reply(535, Some((5, 7, 8)), "Authentication credentials invalid")
                    .encode(&mut self.output);
                self.auth_failed();
                if std::mem::take(&mut self.close_due) {
                    return Some(Step::Closed);
                }
                None
            }
        }
    }

    /// One response line of a SASL exchange: `*` cancels, anything else must be base64
    /// (RFC 4954 §4). Lines may be up to [`MAX_AUTH_LINE`] octets.
    fn step_auth_response(&mut self) -> Flow {
        let rest = &self.input[self.pos..];
        let window = rest.get(..MAX_AUTH_LINE).unwrap_or(rest);
        let Some(lf) = memchr::memchr(b'\n', window) else {
            if rest.len() < MAX_AUTH_LINE {
                return Flow::Return(None);
            }
            self.pos += window.len();
            self.sasl = None;
            self.phase = Phase::Discard {
                after_cr: window.last() == Some(&b'\r'),
            };
            let step =
                self.protocol_error(500, (5, 5, 6), "Authentication Exchange line is too long");
            return Flow::Return(step);
        };
        self.pos += lf + 1;
        let line = match lf.checked_sub(1) {
            Some(cr) if window[cr] == b'\r' => &window[..cr],
            _ => return Flow::Return(Some(self.bare_line_end(CommandErrorKind::BareLineFeed))),
        };
        if line.contains(&b'\r') {
            return Flow::Return(Some(
                self.bare_line_end(CommandErrorKind::BareCarriageReturn),
            ));
        }
        self.phase = Phase::Command;
        let Some(mut exchange) = self.sasl.take() else {
            return Flow::Continue;
        };
        if line == b"*" {
            // A protocol error, as Postfix counts an aborted AUTH: endless AUTH / `*` rounds
            // end at the error budget.
            return Flow::Return(self.protocol_error(501, (5, 7, 0), "Authentication cancelled"));
        }
        let Some(response) = sasl::decode_base64(line) else {
            return Flow::Return(self.protocol_error(501, (5, 5, 2), "Cannot decode response"));
        };
        let step = exchange.respond(&response);
        self.sasl = Some(exchange);
        match self.sasl_step(step) {
            Some(s) => Flow::Return(Some(s)),
            None => Flow::Continue,
        }
    }

    /// Queues a refusal; protocol errors count against the error budget.
    fn refuse_command(
        &mut self,
        code: u16,
        enhanced: (u8, u16, u16),
        text: &str,
        protocol: bool,
    ) -> Option<Step> {
        if protocol {
            self.protocol_error(code, enhanced, text)
        } else {
            let r = reply(code, Some(enhanced), text);
            self.record_refusal(true, &r);
            r.encode(&mut self.output);
            None
        }
    }

    /// The checks MAIL and RCPT parameters share: none after HELO, no unknown keyword, DSN
    /// parameters only when DSN is offered.
    fn check_params(&self, empty: bool, unknown: Option<(&str, Option<&str>)>, dsn: bool) -> Check {
        if !empty && !self.extended {
            return Err(param("Parameters need EHLO"));
        }
        if let Some((k, _)) = unknown {
            return Err(param(&format!("Unsupported parameter {k}")));
        }
        if dsn && !self.config.dsn {
            return Err(param("DSN parameters not supported"));
        }
        Ok(())
    }

    fn check_mail(&self, from: &ReversePath<&str>, params: &MailParams<&str>) -> Check {
        match self.envelope {
            Envelope::Ready => return Err(seq("Send EHLO or HELO first")),
            Envelope::Mail | Envelope::Chunking => {
                return Err(seq("Nested MAIL command"));
            }
            Envelope::Greeted => {}
        }
        let dsn = params.ret.is_some() || params.envid.is_some();
        self.check_params(params.is_empty(), params.other.first(), dsn)?;
        // BINARYMIME is never offered (binary content could hide header lines behind bare
        // CRs from every check that reads lines): refused as any parameter not advertised.
        if params.body == Some(Body::BinaryMime) {
            return Err(param("BODY=BINARYMIME not supported"));
        }
        if params.smtputf8 && !self.config.smtputf8 {
            return Err(param("SMTPUTF8 not supported"));
        }
        if params.auth.is_some() && !self.auth_offered() {
            return Err(param("Unsupported parameter AUTH"));
        }
        if let (Some(size), Some(max)) = (params.size, self.config.max_message_size) {
            if size > max {
                return Err((
                    552,
                    (5, 3, 4),
                    "Message size exceeds fixed maximum message size".into(),
                    false,
                ));
            }
        }
        if !from.is_ascii() && !params.smtputf8 {
            return Err(needs_smtputf8());
        }
        Ok(())
    }

    fn check_rcpt(&self, to: &ForwardPath<&str>, params: &RcptParams<&str>) -> Check {
        match self.envelope {
            Envelope::Ready | Envelope::Greeted => return Err(seq("Need MAIL before RCPT")),
            Envelope::Chunking => return Err(seq("RCPT not allowed during BDAT")),
            Envelope::Mail => {}
        }
        let dsn = params.notify.is_some() || params.orcpt.is_some();
        self.check_params(params.is_empty(), params.other.first(), dsn)?;
        if self.recipients >= self.config.max_recipients {
            // Refused but the transaction goes on; counted as an error only past the
            // overshoot allowance, as Postfix's `smtpd_recipient_overshoot_limit` (see the
            // module docs). The caller counts the overshoot.
            let counted = self.rcpt_overshoot >= self.config.max_recipient_overshoot;
            return Err((
                TOO_MANY_RECIPIENTS,
                (4, 5, 3),
                "Too many recipients".into(),
                counted,
            ));
        }
        if !to.is_ascii() && !self.smtputf8 {
            return Err(needs_smtputf8());
        }
        Ok(())
    }

    fn check_data(&self) -> Check {
        match self.envelope {
            Envelope::Ready | Envelope::Greeted => Err(seq("Need MAIL command")),
            Envelope::Chunking => Err(seq("DATA not allowed during BDAT")),
            Envelope::Mail if self.recipients == 0 => {
                Err((554, (5, 5, 1), "No valid recipients".into(), false))
            }
            Envelope::Mail => Ok(()),
        }
    }
}

/// The reply code of a recipient past [`SessionConfig::max_recipients`]: the only `452`
/// [`Session::check_rcpt`] gives, so the caller can count the overshoot.
const TOO_MANY_RECIPIENTS: u16 = 452;

/// A refusal: code, enhanced code, text, and whether it counts as a protocol error.
type Check = Result<(), (u16, (u8, u16, u16), Cow<'static, str>, bool)>;

fn seq(text: &'static str) -> (u16, (u8, u16, u16), Cow<'static, str>, bool) {
    (503, (5, 5, 1), Cow::Borrowed(text), true)
}

fn needs_smtputf8() -> (u16, (u8, u16, u16), Cow<'static, str>, bool) {
    (
        553,
        (5, 6, 7),
        Cow::Borrowed("Non-ASCII address needs SMTPUTF8"),
        false,
    )
}

fn param(text: &str) -> (u16, (u8, u16, u16), Cow<'static, str>, bool) {
    (555, (5, 5, 4), Cow::Owned(text.to_owned()), true)
}

/// The commands RFC 2920 §3.1 allows only as the last of a group: EHLO, DATA, VRFY, EXPN,
/// TURN (see [`is_turn`]), QUIT and NOOP; and HELO, whose client does not pipeline at all.
fn ends_group(c: &Command<'_>) -> bool {
    matches!(
        c,
        Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Data
            | Command::Vrfy(_)
            | Command::Expn(_)
            | Command::Noop
            | Command::Quit
    )
}

/// Whether a refused line is a TURN command (parsed as not implemented).
fn is_turn(line: &[u8]) -> bool {
    is_verb(line, b"TURN")
}

/// Whether `line` starts with the verb `verb` (case-insensitively), as a whole word.
fn is_verb(line: &[u8], verb: &[u8]) -> bool {
    line.get(..verb.len())
        .is_some_and(|v| v.eq_ignore_ascii_case(verb))
        && !line.get(verb.len()).is_some_and(u8::is_ascii_alphanumeric)
}
/// Copies content `piece` of a BDAT message to `out`, finding its bare CRs and LFs (`cr`
/// carries a CR that ended the piece before): with [`BareLineEnding::Normalize`] each becomes
/// CRLF, with [`BareLineEnding::Reject`] they are copied as they are (the message is refused
/// at its end). Returns whether there was one. A CR ending `piece` is decided by the next
/// piece (or the end of the message).
fn bdat_line_ends(piece: &[u8], cr: &mut bool, policy: BareLineEnding, out: &mut Vec<u8>) -> bool {
    let normalize = policy == BareLineEnding::Normalize;
    let mut bare = false;
    out.reserve(piece.len());
    let mut i = 0;
    if std::mem::take(cr) {
        match piece.first() {
            Some(b'\n') => {
                out.push(b'\n');
                i = 1;
            }
            Some(_) => {
                bare = true;
                if normalize {
                    out.push(b'\n');
                }
            }
            None => *cr = true,
        }
    }
    while i < piece.len() {
        let Some(off) = memchr::memchr2(b'\r', b'\n', &piece[i..]) else {
            out.extend_from_slice(&piece[i..]);
            break;
        };
        let p = i + off;
        out.extend_from_slice(&piece[i..p]);
        i = p + 1;
        match (piece[p], piece.get(i)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            (b'\r', None) => {
                out.push(b'\r');
                *cr = true;
            }
            (b'\r', Some(_)) => {
                bare = true;
                out.extend_from_slice(if normalize { b"\r\n" } else { b"\r" });
            }
            _ => {
                bare = true;
                out.extend_from_slice(if normalize { b"\r\n" } else { b"\n" });
            }
        }
    }
    bare
}
