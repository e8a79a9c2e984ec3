//! SMTP commands: the parser a server runs on each line, and the encoder a client uses.
//!
//! [`parse_command`] takes the bytes received so far and returns either a [`Command`] with the
//! number of bytes it used, `Ok(None)` when the line is not complete yet, or a
//! [`CommandError`] that says which reply to send and how many bytes to skip.
//!
//! ```
//! use smtp_proto::command::{parse_command, Command, Limits};
//!
//! let input = b"MAIL FROM:<alice@example.org> SIZE=1000\r\nRCPT TO:<bob@example.net>\r\nDA";
//! let limits = Limits::default();
//! let (cmd, used) = parse_command(input, &limits).unwrap().unwrap();
//! assert!(matches!(cmd, Command::Mail { ref params, .. } if params.size == Some(1000)));
//! let (cmd, used2) = parse_command(&input[used..], &limits).unwrap().unwrap();
//! assert_eq!(cmd.to_string(), "RCPT TO:<bob@example.net>\r\n");
//! // "DA" is not a whole line yet: read more.
//! assert!(parse_command(&input[used + used2..], &limits).unwrap().is_none());
//! ```
//!
//! Decisions (where RFC 5321 leaves room or real clients differ from it):
//! - Lines end with CRLF only. A line ending in a bare LF ([`CommandErrorKind::BareLineFeed`])
//!   or holding a bare CR ([`CommandErrorKind::BareCarriageReturn`]) is refused with `550
//!   5.5.2 Error: bare <LF> received` (or `<CR>`), Postfix's reply with
//!   `smtpd_forbid_bare_newline = reject`, rather than guessed at, because disagreeing about
//!   line ends is what SMTP smuggling exploits. The error is reported as soon as the bare LF
//!   arrives, and its `consumed` ends there; but the bytes after it up to the next CRLF are
//!   the rest of the same bad line, not a command: a server must not parse them as one (the
//!   [`crate::session::Session`] closes the connection, as Postfix does). An over-long line
//!   that ends in a bare LF is reported as a bare LF too.
//! - A line longer than [`Limits::max_command_line`] (512 octets with CRLF by default) is
//!   refused with `500 5.5.2`; bytes are never buffered without end (see
//!   [`CommandErrorKind::LineTooLong`]).
//! - Lenient where common clients are sloppy and no ambiguity arises: spaces after `FROM:`
//!   / `TO:` (`MAIL FROM: <a@b>`), paths without angle brackets (`MAIL FROM:a@b`, as Postfix
//!   accepts by default), several spaces between arguments, trailing spaces or tabs.
//! - `VRFY`, `EXPN` and `HELP` take the rest of the line as their argument (clients send
//!   `VRFY <user@host>`, which is not the RFC's `String`); `NOOP`'s argument is ignored.
//! - `EHLO`/`HELO` take one word without checking it is a domain (Windows hosts send names
//!   with `_`); use [`crate::address::parse_domain`] to check it strictly.
//! - Address errors reply `501 5.1.7` for MAIL and `501 5.1.3` for RCPT (RFC 3463), including
//!   paths over the length limits.
//! - `AUTH` initial responses are checked to be base64 or `=`; `Debug` on [`Command`] hides them.
//! - A [`Command`] built by hand is as safe to encode as a parsed one: its free-text
//!   arguments are [`Word`] and [`Text`], its paths and parameters the validated types of
//!   [`crate::address`] and [`crate::param`], so none can hold CR, LF or NUL.
use std::fmt;

use crate::address::{AddressError, ForwardPath, ReversePath};
use crate::param::{MailParams, ParamError, RcptParams};

pub use arg::{InvalidArgument, Text, Word};

mod arg;
mod auth;
mod bdat;
#[cfg(test)]
mod differential;
mod fast;
mod hello;
mod mail;
mod simple;

/// Size limits applied while parsing (RFC 5321 §4.5.3.1). The defaults are the RFC's minimums.
/// Build other limits from [`Limits::RFC5321`] with the `const` `with_` setters:
/// `Limits::RFC5321.with_max_command_line(8192)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest command line, including the CRLF (default 512).
    pub max_command_line: usize,
    /// Longest local part, in octets as sent (default 64).
    pub max_local_part: usize,
    /// Longest domain, in octets (default 255).
    pub max_domain: usize,
    /// Longest path, including `<` and `>` (default 256).
    pub max_path: usize,
}

impl Limits {
    /// The RFC 5321 §4.5.3.1 values.
    pub const RFC5321: Limits = Limits {
        max_command_line: 512,
        max_local_part: 64,
        max_domain: 255,
        max_path: 256,
    };

    /// Sets [`Limits::max_command_line`].
    #[must_use]
    pub const fn with_max_command_line(mut self, n: usize) -> Self {
        self.max_command_line = n;
        self
    }

    /// Sets [`Limits::max_local_part`].
    #[must_use]
    pub const fn with_max_local_part(mut self, n: usize) -> Self {
        self.max_local_part = n;
        self
    }

    /// Sets [`Limits::max_domain`].
    #[must_use]
    pub const fn with_max_domain(mut self, n: usize) -> Self {
        self.max_domain = n;
        self
    }

    /// Sets [`Limits::max_path`].
    #[must_use]
    pub const fn with_max_path(mut self, n: usize) -> Self {
        self.max_path = n;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::RFC5321
    }
}

/// One SMTP command, borrowing its text from the input line.
///
/// It is `Copy` and owns nothing: parsing never allocates, and a parsed command costs nothing
/// to drop. Convert the parts to keep with their `into_owned` methods.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `EHLO <domain or address literal>` (the argument as sent, one word).
    Ehlo(Word<'a>),
    /// `HELO <domain>` (the argument as sent, one word).
    Helo(Word<'a>),
    /// `MAIL FROM:<reverse-path> [params]`
    Mail {
        /// The sender, or `<>`.
        from: ReversePath<&'a str>,
        /// ESMTP parameters.
        params: MailParams<&'a str>,
    },
    /// `RCPT TO:<forward-path> [params]`
    Rcpt {
        /// The recipient.
        to: ForwardPath<&'a str>,
        /// ESMTP parameters.
        params: RcptParams<&'a str>,
    },
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [string]` (the argument is ignored)
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY <string>`
    Vrfy(Text<'a>),
    /// `EXPN <string>`
    Expn(Text<'a>),
    /// `HELP [string]`
    Help(Option<Text<'a>>),
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954)
    Auth {
        /// The SASL mechanism name, as sent (compare case-insensitively).
        mechanism: Word<'a>,
        /// The initial response as sent: base64, or `=` for the empty response (RFC 4954
        /// §4). Not decoded nor checked here; see [`crate::sasl::decode_base64`].
        initial_response: Option<Word<'a>>,
    },
    /// `BDAT <size> [LAST]` (RFC 3030): `size` octets of message follow the CRLF.
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// True for the last chunk.
        last: bool,
    },
}

impl Command<'_> {
    /// The verb in upper case, e.g. `"MAIL"`.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Bdat { .. } => "BDAT",
        }
    }

    /// Appends the wire form, CRLF included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{self}");
    }
}

impl fmt::Display for Command<'_> {
    /// The wire form, CRLF included: `MAIL FROM:<a@b> SIZE=10\r\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(d) | Command::Helo(d) => write!(f, "{} {d}", self.verb())?,
            Command::Vrfy(t) | Command::Expn(t) => write!(f, "{} {t}", self.verb())?,
            Command::Help(Some(s)) => write!(f, "HELP {s}")?,
            Command::Mail { from, params } => {
                write!(f, "MAIL FROM:{from}")?;
                if !params.is_empty() {
                    write!(f, " {params}")?;
                }
            }
            Command::Rcpt { to, params } => {
                write!(f, "RCPT TO:{to}")?;
                if !params.is_empty() {
                    write!(f, " {params}")?;
                }
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                write!(f, "AUTH {mechanism}")?;
                if let Some(r) = initial_response {
                    write!(f, " {r}")?;
                }
            }
            Command::Bdat { size, last } => {
                write!(f, "BDAT {size}")?;
                if *last {
                    f.write_str(" LAST")?;
                }
            }
            Command::Help(None)
            | Command::Data
            | Command::Rset
            | Command::Noop
            | Command::Quit
            | Command::StartTls => f.write_str(self.verb())?,
        }
        f.write_str("\r\n")
    }
}

impl fmt::Debug for Command<'_> {
    /// Like a derived `Debug`, but an AUTH initial response (a credential) is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(s) => f.debug_tuple("Ehlo").field(s).finish(),
            Command::Helo(s) => f.debug_tuple("Helo").field(s).finish(),
            Command::Mail { from, params } => f
                .debug_struct("Mail")
                .field("from", from)
                .field("params", params)
                .finish(),
            Command::Rcpt { to, params } => f
                .debug_struct("Rcpt")
                .field("to", to)
                .field("params", params)
                .finish(),
            Command::Data => f.write_str("Data"),
            Command::Rset => f.write_str("Rset"),
            Command::Noop => f.write_str("Noop"),
            Command::Quit => f.write_str("Quit"),
            Command::Vrfy(s) => f.debug_tuple("Vrfy").field(s).finish(),
            Command::Expn(s) => f.debug_tuple("Expn").field(s).finish(),
            Command::Help(s) => f.debug_tuple("Help").field(s).finish(),
            Command::StartTls => f.write_str("StartTls"),
            Command::Auth {
                mechanism,
                initial_response,
            } => f
                .debug_struct("Auth")
                .field("mechanism", mechanism)
                .field("initial_response", &initial_response.map(|_| "<redacted>"))
                .finish(),
            Command::Bdat { size, last } => f
                .debug_struct("Bdat")
                .field("size", size)
                .field("last", last)
                .finish(),
        }
    }
}

/// Why a command line was refused, and so which reply to send.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CommandErrorKind {
    /// Not an SMTP verb: `500 5.5.1`.
    #[error("command unrecognized")]
    UnknownCommand,
    /// A verb this crate knows but does not implement (TURN, ETRN, ATRN, ...): `502 5.5.1`.
    #[error("command not implemented")]
    NotImplemented,
    /// Bad arguments to a known verb: `501 5.5.4`; the text is a usage hint.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// Bad MAIL FROM address: `501 5.1.7`.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// Bad RCPT TO address: `501 5.1.3`.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A MAIL/RCPT parameter was refused: `501 5.5.4` (syntax, duplicate, malformed value of a
    /// known keyword) or `555 5.5.4` (a keyword of the other command); see [`ParamError::code`].
    #[error("parameter error: {0}")]
    Parameter(ParamError),
    /// The line is longer than [`Limits::max_command_line`]: `500 5.5.2`.
    ///
    /// When `complete` is false the error's `consumed` is the whole input and the line goes
    /// on: the caller discards bytes up to and including the next LF before parsing again.
    /// When true, `consumed` covers the whole line through its end.
    #[error("line too long")]
    LineTooLong {
        /// Whether the end of the line was in the input.
        complete: bool,
    },
    /// The line ended with a bare LF instead of CRLF: `550 5.5.2` (as Postfix). What follows
    /// the LF up to the next CRLF belongs to this bad line; see the module docs.
    #[error("bare LF line terminator")]
    BareLineFeed,
    /// The line holds a CR that is not part of its CRLF: `550 5.5.2` (as for a bare LF).
    #[error("bare CR in a command line")]
    BareCarriageReturn,
}

impl CommandErrorKind {
    /// The basic reply code (RFC 5321).
    pub fn code(&self) -> u16 {
        match self {
            CommandErrorKind::UnknownCommand | CommandErrorKind::LineTooLong { .. } => 500,
            CommandErrorKind::BareLineFeed | CommandErrorKind::BareCarriageReturn => 550,
            CommandErrorKind::NotImplemented => 502,
            CommandErrorKind::Syntax(_)
            | CommandErrorKind::BadSender(_)
            | CommandErrorKind::BadRecipient(_) => 501,
            CommandErrorKind::Parameter(p) => p.code(),
        }
    }

    /// The enhanced status code (RFC 3463) as `(class, subject, detail)`, e.g. `(5, 5, 1)`.
    pub fn enhanced(&self) -> (u8, u16, u16) {
        match self {
            CommandErrorKind::UnknownCommand | CommandErrorKind::NotImplemented => (5, 5, 1),
            CommandErrorKind::LineTooLong { .. }
            | CommandErrorKind::BareLineFeed
            | CommandErrorKind::BareCarriageReturn => (5, 5, 2),
            CommandErrorKind::Syntax(_) | CommandErrorKind::Parameter(_) => (5, 5, 4),
            CommandErrorKind::BadSender(_) => (5, 1, 7),
            CommandErrorKind::BadRecipient(_) => (5, 1, 3),
        }
    }

    /// Human text for the reply.
    pub fn message(&self) -> &'static str {
        match self {
            CommandErrorKind::UnknownCommand => "Command unrecognized",
            CommandErrorKind::NotImplemented => "Command not implemented",
            CommandErrorKind::Syntax(hint) => hint,
            CommandErrorKind::BadSender(AddressError::Syntax) => "Bad sender address syntax",
            CommandErrorKind::BadRecipient(AddressError::Syntax) => "Bad recipient address syntax",
            CommandErrorKind::BadSender(e) | CommandErrorKind::BadRecipient(e) => e.message(),
            CommandErrorKind::Parameter(p) => p.message(),
            CommandErrorKind::LineTooLong { .. } => "Line too long",
            CommandErrorKind::BareLineFeed => "Error: bare <LF> received",
            CommandErrorKind::BareCarriageReturn => "Error: bare <CR> received",
        }
    }
}

/// A refused command line: what is wrong and how many bytes the line took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{kind}")]
pub struct CommandError {
    /// What is wrong, and so which reply applies.
    pub kind: CommandErrorKind,
    /// Length of the bad line including its line end, so the caller can skip it (the whole
    /// input for [`CommandErrorKind::LineTooLong`] with `complete: false`).
    pub consumed: usize,
}

impl CommandError {
    /// See [`CommandErrorKind::code`].
    pub fn code(&self) -> u16 {
        self.kind.code()
    }

    /// See [`CommandErrorKind::enhanced`].
    pub fn enhanced(&self) -> (u8, u16, u16) {
        self.kind.enhanced()
    }

    /// See [`CommandErrorKind::message`].
    pub fn message(&self) -> &'static str {
        self.kind.message()
    }
}

/// Parses one command line from the start of `input`.
///
/// Returns `Ok(Some((command, consumed)))` where `consumed` counts the line and its CRLF,
/// `Ok(None)` when no line end has arrived yet and the line is still within
/// [`Limits::max_command_line`] (read more bytes), or an error with the reply to send.
///
/// # Errors
/// A [`CommandError`]; its `consumed` is the number of bytes to drop before parsing again.
#[inline]
pub fn parse_command<'a>(
    input: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Command<'a>, usize)>, CommandError> {
    // The common MAIL and RCPT lines in one pass, line end included.
    #[cfg(feature = "__bench")]
    let fast = FAST_PATH.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "__bench"))]
    let fast = true;
    if !fast {
        return general(input, limits);
    }
    if let Some(parsed) = fast::mail_or_rcpt(input, limits) {
        return Ok(Some(parsed));
    }
    general(input, limits)
}

/// Benchmarks only (feature `__bench`): whether [`parse_command`] tries the MAIL/RCPT fast
/// path first.
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub static FAST_PATH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// [`parse_command`] without the fast path: finds the line end, then parses the line.
#[inline(always)]
fn general<'a>(input: &'a [u8], limits: &Limits) -> Parsed<'a> {
    // RFC 4954 §4: an AUTH line with its initial response may be up to 12288 octets.
    let max = match input.get(..5) {
        Some(v) if v.eq_ignore_ascii_case(b"AUTH ") => {
            limits.max_command_line.max(crate::session::MAX_AUTH_LINE)
        }
        _ => limits.max_command_line,
    };
    let window = input.get(..max).unwrap_or(input);
    match find_lf(window) {
        Some(lf) => {
            let consumed = lf + 1;
            let line = match lf.checked_sub(1) {
                Some(cr) if window.get(cr) == Some(&b'\r') => &window[..cr],
                _ => {
                    return Err(CommandError {
                        kind: CommandErrorKind::BareLineFeed,
                        consumed,
                    })
                }
            };
            if memchr::memchr(b'\r', line).is_some() {
                return Err(CommandError {
                    kind: CommandErrorKind::BareCarriageReturn,
                    consumed,
                });
            }
            command(line, input, limits, consumed)
        }
        None if input.len() < max => Ok(None),
        None => {
            let after = input.get(window.len()..).unwrap_or_default();
            let (kind, consumed) = match find_lf(after) {
                // A long line that ends in a bare LF is a bare LF: what follows must not be
                // taken for the next command.
                Some(lf)
                    if (window.len() + lf)
                        .checked_sub(1)
                        .and_then(|cr| input.get(cr))
                        != Some(&b'\r') =>
                {
                    (CommandErrorKind::BareLineFeed, window.len() + lf + 1)
                }
                Some(lf) => (
                    CommandErrorKind::LineTooLong { complete: true },
                    window.len() + lf + 1,
                ),
                None => (
                    CommandErrorKind::LineTooLong { complete: false },
                    input.len(),
                ),
            };
            Err(CommandError { kind, consumed })
        }
    }
}

/// Position of the first LF, eight bytes at a time (a command line is tens of bytes).
fn find_lf(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ LF;
        // Non-zero exactly when some byte of `x` is zero, i.e. that byte was LF.
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

#[derive(Clone, Copy)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
    Bdat,
    Unimplemented,
}

const fn word(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// The first four bytes of `s`, little-endian, with bit 5 of each cleared (upper case for
/// letters); `None` when `s` is shorter.
#[inline(always)]
fn folded_word(s: &[u8]) -> Option<u32> {
    let four: [u8; 4] = s.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(four) & 0xDFDF_DFDF)
}

/// Recognises the verb at the start of `line` (letters only, any case) and returns it with
/// its length, which the next byte must not extend (`MAILX` is no verb).
///
/// Every byte of the names is a letter, and `b & 0xDF` equals an upper-case letter only for
/// that letter in either case, so the masked compare checks letters and case at once.
#[inline(always)]
fn verb(line: &[u8]) -> Option<(Verb, usize)> {
    const EHLO: u32 = word(b"EHLO");
    const HELO: u32 = word(b"HELO");
    const MAIL: u32 = word(b"MAIL");
    const RCPT: u32 = word(b"RCPT");
    const DATA: u32 = word(b"DATA");
    const RSET: u32 = word(b"RSET");
    const NOOP: u32 = word(b"NOOP");
    const QUIT: u32 = word(b"QUIT");
    const VRFY: u32 = word(b"VRFY");
    const EXPN: u32 = word(b"EXPN");
    const HELP: u32 = word(b"HELP");
    const AUTH: u32 = word(b"AUTH");
    const BDAT: u32 = word(b"BDAT");
    const STAR: u32 = word(b"STAR");
    const TTLS: u32 = word(b"TTLS");
    const TURN: u32 = word(b"TURN");
    const ETRN: u32 = word(b"ETRN");
    const ATRN: u32 = word(b"ATRN");
    const SEND: u32 = word(b"SEND");
    const SOML: u32 = word(b"SOML");
    const SAML: u32 = word(b"SAML");
    const BURL: u32 = word(b"BURL");
    let (verb, len) = match folded_word(line)? {
        MAIL => (Verb::Mail, 4),
        RCPT => (Verb::Rcpt, 4),
        EHLO => (Verb::Ehlo, 4),
        HELO => (Verb::Helo, 4),
        DATA => (Verb::Data, 4),
        RSET => (Verb::Rset, 4),
        NOOP => (Verb::Noop, 4),
        QUIT => (Verb::Quit, 4),
        VRFY => (Verb::Vrfy, 4),
        EXPN => (Verb::Expn, 4),
        HELP => (Verb::Help, 4),
        AUTH => (Verb::Auth, 4),
        BDAT => (Verb::Bdat, 4),
        STAR if folded_word(&line[4..]) == Some(TTLS) => (Verb::StartTls, 8),
        TURN | ETRN | ATRN | SEND | SOML | SAML | BURL => (Verb::Unimplemented, 4),
        _ => return None,
    };
    match line.get(len) {
        Some(b) if b.is_ascii_alphabetic() => None,
        _ => Some((verb, len)),
    }
}

/// `command = verb [SP arguments]` for one line without its CRLF, at the start of `input`.
#[inline(always)]
fn command<'a>(line: &'a [u8], input: &'a [u8], limits: &Limits, consumed: usize) -> Parsed<'a> {
    // Lenient: trailing spaces and tabs are ignored.
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    let line = &line[..end];
    let Some((verb, vlen)) = verb(line) else {
        return done(Err(CommandErrorKind::UnknownCommand), consumed);
    };
    let from = match line.get(vlen) {
        None => {
            // Nothing after the verb: no text to check, and nothing to slice.
            let c = match verb {
                Verb::Data => Command::Data,
                Verb::Rset => Command::Rset,
                Verb::Quit => Command::Quit,
                Verb::StartTls => Command::StartTls,
                Verb::Noop => Command::Noop,
                _ => return with_args(verb, None, "", limits, consumed),
            };
            return Ok(Some((c, consumed)));
        }
        Some(b' ') => vlen + 1,
        Some(_) => return done(Err(CommandErrorKind::UnknownCommand), consumed),
    };
    let args = skip_spaces(&line[from..]);
    // UTF-8 is checked once for the arguments; the parsers below slice this `&str`.
    let Some(text) = text_covering(input, from, end) else {
        let kind = match verb {
            Verb::Mail => CommandErrorKind::BadSender(AddressError::InvalidUtf8),
            Verb::Rcpt => CommandErrorKind::BadRecipient(AddressError::InvalidUtf8),
            Verb::Unimplemented => CommandErrorKind::NotImplemented,
            _ => CommandErrorKind::Syntax("Syntax error: the line is not valid UTF-8"),
        };
        return done(Err(kind), consumed);
    };
    with_args(verb, Some(args), text, limits, consumed)
}

/// A `&str` that covers `input[from..end]`, or `None` when those bytes are not UTF-8.
///
/// `input[..from]` is the verb and a space, and `input[end..]` starts with spaces, tabs or
/// CR, so widening the range keeps it on character boundaries. The standard validator checks
/// ASCII a word pair at a time from an aligned address, byte by byte elsewhere: so the range
/// is widened to start at an aligned address and to span whole 16-byte blocks where the
/// input has the bytes, which costs less than checking the exact range. When the widened
/// range is not UTF-8 (the next line may hold anything), the exact range decides.
#[inline(always)]
fn text_covering(input: &[u8], from: usize, end: usize) -> Option<&str> {
    const BLOCK: usize = 2 * std::mem::size_of::<usize>();
    let back = (input.as_ptr() as usize).wrapping_add(from) % std::mem::size_of::<usize>();
    let start = from.checked_sub(back).unwrap_or(from);
    let wide_end = start + (end - start).next_multiple_of(BLOCK);
    if let Some(Ok(text)) = input.get(start..wide_end).map(std::str::from_utf8) {
        return Some(text);
    }
    std::str::from_utf8(input.get(from..end)?).ok()
}

/// Dispatches on the verb; `text` is `args` as a `&str` (or `""` without arguments).
#[inline(always)]
fn with_args<'a>(
    verb: Verb,
    args: Option<&'a [u8]>,
    text: &'a str,
    limits: &Limits,
    consumed: usize,
) -> Parsed<'a> {
    // MAIL and RCPT build their command in the caller's result, through out-of-line calls.
    let r = match verb {
        Verb::Mail => return mail::mail_line(args, text, limits, consumed),
        Verb::Rcpt => return mail::rcpt_line(args, text, limits, consumed),
        Verb::Ehlo => hello::ehlo(args, text).map(|w| Command::Ehlo(Word::checked(w))),
        Verb::Helo => hello::helo(args, text).map(|w| Command::Helo(Word::checked(w))),
        Verb::Data => simple::no_args(args, Command::Data, "Syntax: DATA"),
        Verb::Rset => simple::no_args(args, Command::Rset, "Syntax: RSET"),
        Verb::Quit => simple::no_args(args, Command::Quit, "Syntax: QUIT"),
        Verb::StartTls => simple::no_args(args, Command::StartTls, "Syntax: STARTTLS"),
        Verb::Noop => simple::noop(args, text),
        Verb::Vrfy => simple::string(args, text, "Syntax: VRFY address")
            .map(|t| Command::Vrfy(Text::checked(t))),
        Verb::Expn => {
            simple::string(args, text, "Syntax: EXPN list").map(|t| Command::Expn(Text::checked(t)))
        }
        Verb::Help => simple::help(args, text),
        Verb::Auth => auth::auth(args, text),
        Verb::Bdat => bdat::bdat(args),
        Verb::Unimplemented => Err(CommandErrorKind::NotImplemented),
    };
    done(r, consumed)
}

/// What [`parse_command`] returns.
type Parsed<'a> = Result<Option<(Command<'a>, usize)>, CommandError>;

/// A line's outcome as [`parse_command`] returns it.
#[inline(always)]
fn done(r: Result<Command<'_>, CommandErrorKind>, consumed: usize) -> Parsed<'_> {
    match r {
        Ok(c) => Ok(Some((c, consumed))),
        Err(kind) => Err(CommandError { kind, consumed }),
    }
}

#[inline(always)]
fn skip_spaces(mut s: &[u8]) -> &[u8] {
    while let Some((b' ', r)) = s.split_first() {
        s = r;
    }
    s
}
