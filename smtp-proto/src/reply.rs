//! SMTP replies (RFC 5321 §4.2) with RFC 3463 enhanced status codes: the [`Reply`] type, its
//! encoder ([`Reply::encode`]) and the incremental client-side parser ([`parse_reply`]).
//!
//! ```text
//! Reply-line     = *( Reply-code "-" [ textstring ] CRLF )
//!                  Reply-code [ SP textstring ] CRLF
//! Reply-code     = %x32-35 %x30-35 %x30-39
//! ```
//!
//! # Decisions
//!
//! - Constructors never panic. [`Reply::new`] and [`Reply::multiline`] return
//!   `Result<Reply, InvalidReply>` because the code and enhanced code come from the caller;
//!   the well-known replies ([`Reply::ok`], [`Reply::service_ready`], ...) are infallible, and
//!   a reply fixed in the source is a `const` ([`Reply::fixed`], [`Refusal::fixed`]) whose
//!   errors are compile errors.
//! - A [`Refusal`] is a reply that is 4yz or 5yz by construction: what a policy hook returns
//!   to refuse, so that a positive reply can never be mistaken for a refusal.
//! - Text given to a constructor that contains line breaks (CRLF, bare LF or bare CR) is split
//!   into several reply lines, so a `Reply` never holds CR or LF in its text and its encoding can
//!   never inject a second reply.
//! - An enhanced code must have the class of the reply code's first digit (2.x.x for 2yz, ...);
//!   3yz replies (354) carry none (RFC 2034 §3).
//! - The parser is strict: every line must end with CRLF (a bare LF or CR is an error), all lines
//!   carry the same code, and it never buffers without bound: a line over
//!   [`MAX_REPLY_LINE_LEN`] octets, a reply over [`MAX_REPLY_LINES`] lines or over
//!   [`MAX_REPLY_LEN`] octets in total is an error as soon as it is seen. These bounds are
//!   generous (RFC 5321 §4.5.3.1.5 allows 512 octets per line); [`Reply`]'s constructors do not
//!   enforce them.
//! - When the first line's text starts with an enhanced code whose class matches the reply code,
//!   it becomes [`Reply::enhanced`] and is removed from every line that starts with the same
//!   code. Text that merely looks like an enhanced code of another class stays text.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Longest reply line the parser accepts, in octets including the CRLF.
pub const MAX_REPLY_LINE_LEN: usize = 4096;
/// Most lines the parser accepts in one (multi-line) reply.
pub const MAX_REPLY_LINES: usize = 1000;
/// Longest reply the parser accepts, in octets over all its lines.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// An RFC 3463 enhanced mail system status code, `class.subject.detail` (e.g. `5.1.1`).
///
/// Every value is valid: class 2, 4 or 5, subject and detail in `0..=999`. Build one with
/// [`EnhancedCode::new`] (checked at run time), [`FromStr`] (parsing), or, for a code fixed
/// in the source, [`EnhancedCode::fixed`] in a `const` (checked at compile time):
///
/// ```
/// use smtp_proto::EnhancedCode;
///
/// const NO_SUCH_USER: EnhancedCode = EnhancedCode::fixed(5, 1, 1);
/// assert_eq!(NO_SUCH_USER.to_string(), "5.1.1");
/// assert_eq!(EnhancedCode::new(3, 0, 0), None);
/// ```
///
/// An invalid fixed code does not compile:
///
/// ```compile_fail
/// const BAD: smtp_proto::EnhancedCode = smtp_proto::EnhancedCode::fixed(3, 0, 0);
/// ```
///
/// Nor can one be built field by field:
///
/// ```compile_fail
/// let e = smtp_proto::EnhancedCode { class: 3, subject: 0, detail: 0 };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// Builds a code, or `None` when it is not valid (class not 2/4/5, subject or detail > 999).
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// A code fixed in the source, for `const` items: there an invalid code is a compile-time
    /// error, so no `expect` is needed anywhere.
    ///
    /// # Panics
    /// When the code is invalid (see [`EnhancedCode::new`]); evaluated in a `const`, that is a
    /// compile error instead.
    pub const fn fixed(class: u8, subject: u16, detail: u16) -> Self {
        match Self::new(class, subject, detail) {
            Some(code) => code,
            None => panic!("invalid enhanced status code"),
        }
    }

    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub const fn class(&self) -> u8 {
        self.class
    }

    /// The subject, `0..=999` (1 addressing, 2 mailbox, 3 mail system, 4 network, 5
    /// protocol, 6 content, 7 security).
    pub const fn subject(&self) -> u16 {
        self.subject
    }

    /// The detail, `0..=999`.
    pub const fn detail(&self) -> u16 {
        self.detail
    }

    /// The same subject and detail in another class (e.g. `5.1.1` as `4.1.1` for a
    /// recipient refusal that is to be retried); `None` for a class other than 2, 4 or 5.
    pub const fn with_class(self, class: u8) -> Option<Self> {
        Self::new(class, self.subject, self.detail)
    }

    /// Writes the code's decimal form into `buf` without allocating; returns the length used.
    fn write_to(&self, buf: &mut [u8; 15]) -> usize {
        let mut n = push_decimal(buf, 0, u32::from(self.class));
        buf[n] = b'.';
        n = push_decimal(buf, n + 1, u32::from(self.subject));
        buf[n] = b'.';
        push_decimal(buf, n + 1, u32::from(self.detail))
    }
}

/// Writes `v` (at most 5 digits for the values used here) at `buf[at..]`, returns the new end.
fn push_decimal(buf: &mut [u8; 15], at: usize, v: u32) -> usize {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut v = v;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 || len == digits.len() {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[at + i] = *d;
    }
    at + len
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The string given to [`EnhancedCode::from_str`] is not an RFC 3463 status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enhanced status code: {0:?}")]
pub struct ParseEnhancedCodeError(pub String);

impl FromStr for EnhancedCode {
    type Err = ParseEnhancedCodeError;

    /// Parses `class "." subject "." detail` exactly as RFC 3463 §2 spells it:
    /// class is `2`, `4` or `5`; subject and detail are 1 to 3 digits without leading zeros.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match split_enhanced(s) {
            Some((code, "")) if s.len() == enhanced_len(&code) => Ok(code),
            _ => Err(ParseEnhancedCodeError(s.to_owned())),
        }
    }
}

fn enhanced_len(code: &EnhancedCode) -> usize {
    let mut buf = [0u8; 15];
    code.write_to(&mut buf)
}

/// `status-code = class "." subject "." detail` with `subject = "0" / ("1"-"9" 0*2digit)`.
fn status_number(s: &[u8]) -> Option<(u16, usize)> {
    let len = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 3 || (len > 1 && s[0] == b'0') {
        return None;
    }
    let v = s[..len]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    Some((v, len))
}

/// Splits an enhanced code off the start of a reply text: it must be followed by a space
/// (removed) or the end of the text.
fn split_enhanced(text: &str) -> Option<(EnhancedCode, &str)> {
    let b = text.as_bytes();
    let class = match b.first()? {
        c @ (b'2' | b'4' | b'5') => c - b'0',
        _ => return None,
    };
    if b.get(1) != Some(&b'.') {
        return None;
    }
    let (subject, n1) = status_number(&b[2..])?;
    let at = 2 + n1;
    if b.get(at) != Some(&b'.') {
        return None;
    }
    let (detail, n2) = status_number(&b[at + 1..])?;
    let end = at + 1 + n2;
    let rest = match b.get(end) {
        None => "",
        // `end` and `end + 1` are ASCII boundaries, so slicing the str cannot split a char.
        Some(b' ') => &text[end + 1..],
        Some(_) => return None,
    };
    Some((
        EnhancedCode {
            class,
            subject,
            detail,
        },
        rest,
    ))
}

/// What a reply code's first digit says (RFC 5321 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// 2yz: the action completed.
    PositiveCompletion,
    /// 3yz: send more (354 after DATA, 334 during AUTH).
    PositiveIntermediate,
    /// 4yz: temporary failure, try again later.
    TransientNegative,
    /// 5yz: permanent failure.
    PermanentNegative,
}

/// Why [`Reply::new`] or [`Reply::multiline`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReply {
    /// The code is not three digits `[2-5][0-5][0-9]`.
    #[error("invalid reply code {0}: must be 200..=559 with a middle digit 0-5")]
    Code(u16),
    /// The enhanced code's class differs from the reply code's first digit.
    #[error("enhanced status code {enhanced} does not match reply code {code}")]
    ClassMismatch {
        /// The reply code.
        code: u16,
        /// The enhanced code given with it.
        enhanced: EnhancedCode,
    },
    /// A [`Refusal`] was asked for with a code that is not 4yz or 5yz.
    #[error("reply code {0} is not a refusal (4yz or 5yz)")]
    NotARefusal(u16),
}

/// A complete SMTP reply: a code, an optional enhanced status code and one or more text lines.
///
/// A `Reply` that exists is valid: its code is `[2-5][0-5][0-9]`, its enhanced code (if any) is
/// of the code's class, it has at least one line and no line contains CR or LF. Text given to
/// the constructors ([`Reply::new`], [`Reply::multiline`], [`Reply::with_text`]) is split into
/// lines at its line breaks, and other control characters but tab in it are written as `?`,
/// so what a server sends is `textstring` (RFC 5321 §4.2); a reply parsed from a peer keeps
/// its text as received ([`parse_reply`]). A reply fixed
/// in the source is a `const` made with [`Reply::fixed`], checked at compile time:
///
/// ```
/// use smtp_proto::{EnhancedCode, Reply};
///
/// const BUSY: Reply = Reply::fixed(452, Some(EnhancedCode::fixed(4, 3, 1)), "Try again later");
/// assert_eq!(BUSY.to_bytes(), b"452 4.3.1 Try again later\r\n");
/// ```
///
/// ```compile_fail
/// // A line break in a fixed text does not compile (nor does a bad code or class).
/// const SMUGGLED: smtp_proto::Reply = smtp_proto::Reply::fixed(250, None, "OK\r\n250 more");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    /// The lines joined with `\n` (no line holds CR or LF, so the split is unambiguous).
    text: Cow<'static, str>,
}

const fn valid_code(code: u16) -> bool {
    code >= 200 && code <= 599 && (code / 10) % 10 <= 5
}

/// Splits text on CRLF, bare LF and bare CR (one trailing line break is ignored) and joins
/// the lines with `\n`, the internal separator. Other control characters but tab (NUL, ESC,
/// DEL, C1 controls), which RFC 5321's `textstring` does not allow and which a client could
/// show or log as they are, are written as `?`.
fn normalize_text(text: String) -> String {
    let other_control = |c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n');
    if !text.contains('\r') && !text.ends_with('\n') && !text.contains(other_control) {
        return text;
    }
    let body = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .or_else(|| text.strip_suffix('\r'))
        .unwrap_or(&text);
    body.replace("\r\n", "\n")
        .replace('\r', "\n")
        .chars()
        .map(|c| if other_control(c) { '?' } else { c })
        .collect()
}

/// Joins reply lines with `\n`, splitting lines that hold line breaks further.
pub(crate) fn join_lines<I, S>(lines: I) -> String
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut out = String::new();
    for (i, line) in lines.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&normalize_text(line.into()));
    }
    out
}

/// Whether `text` holds no control character but tab, CR, LF and C1 controls included
/// (usable in a `const fn`).
const fn one_line(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if (b[i] < 0x20 && b[i] != b'\t') || b[i] == 0x7f {
            return false;
        }
        // C1 controls, U+0080..U+009F, are 0xC2 0x80..0x9F in UTF-8.
        if b[i] == 0xc2 && i + 1 < b.len() && b[i + 1] >= 0x80 && b[i + 1] <= 0x9f {
            return false;
        }
        i += 1;
    }
    true
}

impl Reply {
    /// A single-line reply (or several lines if `text` contains line breaks, see the module
    /// docs).
    ///
    /// # Errors
    /// [`InvalidReply`] when the code is not `[2-5][0-5][0-9]`, or the enhanced code is of
    /// another class than the code.
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<String>,
    ) -> Result<Self, InvalidReply> {
        Self::from_parts(code, enhanced, normalize_text(text.into()))
    }

    /// A multi-line reply, one line per item (items with line breaks are split further; no item
    /// at all gives one empty line).
    ///
    /// # Errors
    /// As [`Reply::new`].
    pub fn multiline<I, S>(
        code: u16,
        enhanced: Option<EnhancedCode>,
        lines: I,
    ) -> Result<Self, InvalidReply>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_parts(code, enhanced, join_lines(lines))
    }

    /// A reply fixed in the source, for `const` items and statics: there an invalid code, an
    /// enhanced code of another class, or a CR or LF in `text` is a compile-time error.
    ///
    /// # Panics
    /// On the errors above, when called outside a `const` (prefer [`Reply::new`] there).
    pub const fn fixed(code: u16, enhanced: Option<EnhancedCode>, text: &'static str) -> Self {
        assert!(valid_code(code), "invalid reply code");
        if let Some(e) = enhanced {
            assert!(
                e.class as u16 == code / 100,
                "enhanced code of another class than the reply code"
            );
        }
        assert!(
            one_line(text),
            "a control character (CR, LF, NUL...) in a fixed reply text"
        );
        Self {
            code,
            enhanced,
            text: Cow::Borrowed(text),
        }
    }

    fn from_parts(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: String,
    ) -> Result<Self, InvalidReply> {
        if !valid_code(code) {
            return Err(InvalidReply::Code(code));
        }
        if let Some(e) = enhanced {
            if u16::from(e.class) != code / 100 {
                return Err(InvalidReply::ClassMismatch { code, enhanced: e });
            }
        }
        Ok(Self {
            code,
            enhanced,
            text: Cow::Owned(text),
        })
    }

    /// Builds one of the well-known replies below; `text` may come from configuration (a host
    /// name), so line breaks in it are still split off.
    pub(crate) fn known(code: u16, enhanced: Option<EnhancedCode>, text: String) -> Self {
        Self {
            code,
            enhanced,
            text: Cow::Owned(normalize_text(text)),
        }
    }

    /// A reply whose code and enhanced code the crate fixed, from [`join_lines`]' output.
    pub(crate) fn from_joined(code: u16, enhanced: Option<EnhancedCode>, text: String) -> Self {
        debug_assert!(valid_code(code));
        Self {
            code,
            enhanced,
            text: Cow::Owned(text),
        }
    }

    /// `220 <domain> ESMTP ready` (the greeting carries no enhanced code: it precedes EHLO).
    pub fn service_ready(domain: &str) -> Self {
        Self::known(220, None, format!("{domain} ESMTP ready"))
    }

    /// `221 2.0.0 <domain> closing connection`, the answer to QUIT.
    pub fn closing(domain: &str) -> Self {
        Self::known(
            221,
            Some(EnhancedCode::fixed(2, 0, 0)),
            format!("{domain} closing connection"),
        )
    }

    /// `250 2.0.0 OK`.
    pub const fn ok() -> Self {
        Self::fixed(250, Some(EnhancedCode::fixed(2, 0, 0)), "OK")
    }

    /// `354 End data with <CR><LF>.<CR><LF>`, the answer to DATA.
    pub const fn start_mail_input() -> Self {
        Self::fixed(354, None, "End data with <CR><LF>.<CR><LF>")
    }

    /// `421 4.3.2 <domain> Service not available, closing transmission channel`.
    pub fn service_unavailable(domain: &str) -> Self {
        Self::known(
            421,
            Some(EnhancedCode::fixed(4, 3, 2)),
            format!("{domain} Service not available, closing transmission channel"),
        )
    }

    /// The same code and enhanced code with another text (line breaks in it split it into
    /// lines, as for [`Reply::new`]): a fixed reply with a text made at run time, without a
    /// fallible constructor.
    ///
    /// ```
    /// use smtp_proto::{EnhancedCode, Reply};
    ///
    /// const GOODBYE: Reply = Reply::fixed(221, Some(EnhancedCode::fixed(2, 0, 0)), "Bye");
    /// let r = GOODBYE.with_text(format!("{} closing connection", "mx.example.org"));
    /// assert_eq!(r.to_bytes(), b"221 2.0.0 mx.example.org closing connection\r\n");
    /// ```
    #[must_use]
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self::known(self.code, self.enhanced, text.into())
    }

    /// The same reply without its enhanced code, for sessions that did not negotiate
    /// ENHANCEDSTATUSCODES (HELO clients).
    #[must_use]
    pub fn without_enhanced(mut self) -> Self {
        self.enhanced = None;
        self
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines (at least one, possibly empty), without code or enhanced code.
    pub fn lines(&self) -> impl DoubleEndedIterator<Item = &str> + Clone + '_ {
        self.text.split('\n')
    }

    /// The number of text lines (at least one).
    pub fn line_count(&self) -> usize {
        1 + self.text.bytes().filter(|&b| b == b'\n').count()
    }

    /// The reply cut to at most `max_lines` lines (at least one) and `max_text` octets of
    /// text (a line cut at a character boundary), `mark` appended to the last kept line when
    /// anything was dropped. Code and enhanced code are kept, and so is the kept text as it
    /// was: a reply parsed from a peer keeps its text as received (only `mark` is written as
    /// the constructors write text). A reply within the bounds is returned unchanged.
    ///
    /// ```
    /// use smtp_proto::Reply;
    /// let r = Reply::multiline(452, None, ["one", "two", "three"]).unwrap();
    /// assert_eq!(r.truncated(2, 100, " [...]").to_bytes(), b"452-one\r\n452 two [...]\r\n");
    /// assert_eq!(r.truncated(3, 5, "~").to_bytes(), b"452-one\r\n452 tw~\r\n");
    /// assert_eq!(r.truncated(3, 100, "~"), r);
    /// ```
    #[must_use]
    pub fn truncated(&self, max_lines: usize, max_text: usize, mark: &str) -> Reply {
        let max_lines = max_lines.max(1);
        let total: usize = self.lines().map(str::len).sum();
        if self.line_count() <= max_lines && total <= max_text {
            return self.clone();
        }
        let mut text = String::with_capacity(max_text.min(total) + max_lines + mark.len());
        let mut budget = max_text;
        for (i, line) in self.lines().take(max_lines).enumerate() {
            if i > 0 {
                text.push('\n');
            }
            if line.len() <= budget {
                budget -= line.len();
                text.push_str(line);
            } else {
                let mut end = budget;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                text.push_str(&line[..end]);
                break;
            }
        }
        text.push_str(&normalize_text(mark.replace(['\r', '\n'], " ")));
        Self::from_joined(self.code, self.enhanced, text)
    }

    /// The text of all lines joined with `\n`, without codes.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What the first digit says.
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// 2yz.
    pub fn is_positive_completion(&self) -> bool {
        self.severity() == Severity::PositiveCompletion
    }

    /// 3yz.
    pub fn is_positive_intermediate(&self) -> bool {
        self.severity() == Severity::PositiveIntermediate
    }

    /// 4yz: a transient failure.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::TransientNegative
    }

    /// 5yz: a permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::PermanentNegative
    }

    /// Appends the wire form (`250-first\r\n250 last\r\n`, with the enhanced code at the start
    /// of every line's text) to `out`. Allocates nothing besides growing `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let code = [
            b'0' + (self.code / 100) as u8,
            b'0' + (self.code / 10 % 10) as u8,
            b'0' + (self.code % 10) as u8,
        ];
        let mut enh_buf = [0u8; 15];
        let enh_len = self.enhanced.map_or(0, |e| e.write_to(&mut enh_buf));
        let enh = &enh_buf[..enh_len];
        let mut lines = self.lines().peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            if lines.peek().is_some() {
                out.push(b'-');
            } else if !enh.is_empty() || !line.is_empty() {
                out.push(b' ');
            }
            out.extend_from_slice(enh);
            if !enh.is_empty() && !line.is_empty() {
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new vector (convenience over [`Reply::encode`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16 * self.line_count());
        self.encode(&mut out);
        out
    }
}

/// A negative reply, 4yz or 5yz: what a policy decision refuses with. It cannot hold a
/// positive reply, so a hook returning `Err(refusal)` always refuses.
///
/// ```
/// use smtp_proto::{EnhancedCode, Refusal, Reply};
///
/// const NO_RELAY: Refusal = Refusal::fixed(554, Some(EnhancedCode::fixed(5, 7, 1)), "Relay access denied");
/// assert_eq!(NO_RELAY.reply().to_bytes(), b"554 5.7.1 Relay access denied\r\n");
/// // A positive reply is not a refusal.
/// assert!(Refusal::try_from(Reply::ok()).is_err());
/// assert!(Refusal::new(250, None, "OK").is_err());
/// ```
///
/// ```compile_fail
/// const ACCEPTING: smtp_proto::Refusal = smtp_proto::Refusal::fixed(250, None, "OK");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refusal(Reply);

impl Refusal {
    /// A refusal; `text` as for [`Reply::new`].
    ///
    /// # Errors
    /// [`InvalidReply::NotARefusal`] for a code that is not 4yz or 5yz, otherwise as
    /// [`Reply::new`].
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<String>,
    ) -> Result<Self, InvalidReply> {
        if !(400..=599).contains(&code) {
            return Err(InvalidReply::NotARefusal(code));
        }
        Reply::new(code, enhanced, text).map(Self)
    }

    /// A refusal fixed in the source, for `const` items: a code that is not 4yz or 5yz is a
    /// compile-time error there, as are the errors of [`Reply::fixed`].
    ///
    /// # Panics
    /// As [`Reply::fixed`], and for a code that is not 4yz or 5yz.
    pub const fn fixed(code: u16, enhanced: Option<EnhancedCode>, text: &'static str) -> Self {
        assert!(code >= 400 && code <= 599, "a refusal is 4yz or 5yz");
        Self(Reply::fixed(code, enhanced, text))
    }

    /// The same code and enhanced code with another text (see [`Reply::with_text`]).
    #[must_use]
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self(self.0.with_text(text))
    }

    /// The reply sent to the client.
    pub fn reply(&self) -> &Reply {
        &self.0
    }

    /// The reply sent to the client.
    pub fn into_reply(self) -> Reply {
        self.0
    }

    /// The three-digit reply code (4yz or 5yz).
    pub fn code(&self) -> u16 {
        self.0.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.0.enhanced
    }

    /// 4yz: the client may try again later.
    pub fn is_transient(&self) -> bool {
        self.0.is_transient()
    }
}

impl From<Refusal> for Reply {
    fn from(r: Refusal) -> Self {
        r.0
    }
}

impl AsRef<Reply> for Refusal {
    fn as_ref(&self) -> &Reply {
        &self.0
    }
}

impl TryFrom<Reply> for Refusal {
    /// The reply itself, when it is not 4yz or 5yz.
    type Error = Reply;

    fn try_from(r: Reply) -> Result<Self, Reply> {
        if r.is_transient() || r.is_permanent() {
            Ok(Self(r))
        } else {
            Err(r)
        }
    }
}

impl fmt::Display for Refusal {
    /// As [`Reply`]'s `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Reply {
    /// The wire form with `\n` between lines and no final line break, e.g. for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let text = text.strip_suffix("\r\n").unwrap_or(&text);
        f.write_str(&text.replace("\r\n", "\n"))
    }
}

/// What is wrong with a reply the parser refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyErrorKind {
    /// The line does not start with a code `[2-5][0-5][0-9]`.
    InvalidCode,
    /// A line's code differs from the first line's.
    CodeMismatch,
    /// The code is followed by something other than `-`, space or CRLF.
    InvalidSeparator,
    /// A line ends with a bare LF, or contains a bare CR.
    BareLineEnding,
    /// A line is longer than [`MAX_REPLY_LINE_LEN`].
    LineTooLong,
    /// The reply has more than [`MAX_REPLY_LINES`] lines or [`MAX_REPLY_LEN`] octets.
    ReplyTooLong,
}

impl fmt::Display for ReplyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidCode => "invalid reply code",
            Self::CodeMismatch => "continuation line with a different reply code",
            Self::InvalidSeparator => "invalid separator after the reply code",
            Self::BareLineEnding => "reply line with a bare CR or LF",
            Self::LineTooLong => "reply line too long",
            Self::ReplyTooLong => "reply too long",
        })
    }
}

/// A malformed reply from the server, with the start of the offending line (lossy UTF-8,
/// without its line ending, at most [`ReplyError::LINE_MAX`] octets) so that error messages
/// can show what the peer sent without growing with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {line:?}{}", if *.cut { " (cut)" } else { "" })]
pub struct ReplyError {
    kind: ReplyErrorKind,
    line: String,
    cut: bool,
}

impl ReplyError {
    /// The most octets of the offending line an error keeps. A line may be up to
    /// [`MAX_REPLY_LINE_LEN`] octets, and its `Debug` escaping in the message up to four
    /// times that: an error text that ends in a log line or a bounce stays small.
    pub const LINE_MAX: usize = 256;

    fn new(kind: ReplyErrorKind, line: &[u8]) -> Self {
        let cut = line.len() > Self::LINE_MAX;
        let mut line =
            String::from_utf8_lossy(&line[..line.len().min(Self::LINE_MAX)]).into_owned();
        if cut {
            // A character split by the cut became U+FFFD: drop it.
            if line.ends_with('\u{fffd}') {
                line.pop();
            }
        }
        Self { kind, line, cut }
    }

    /// What is wrong.
    pub fn kind(&self) -> ReplyErrorKind {
        self.kind
    }

    /// The offending line as received (lossy UTF-8), or its first [`ReplyError::LINE_MAX`]
    /// octets.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Whether [`ReplyError::line`] is only the start of the line.
    pub fn is_cut(&self) -> bool {
        self.cut
    }
}

/// Parses one complete reply from the start of `input`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((reply, consumed)))` when a whole
/// reply is there (`consumed` octets, up to and including the last line's CRLF; later bytes
/// belong to the next reply), and an error as soon as the input cannot become a valid reply.
/// Stateless: call it again on the whole buffered input when more bytes arrive.
///
/// # Errors
/// [`ReplyError`] for a bad code, mismatched continuation code, bad separator, bare CR/LF, or a
/// line or reply over the bounds in the module docs.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut enhanced: Option<EnhancedCode> = None;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let rest = &input[pos..];
        let window = &rest[..rest.len().min(MAX_REPLY_LINE_LEN)];
        let Some(nl) = memchr::memchr(b'\n', window) else {
            if rest.len() >= MAX_REPLY_LINE_LEN {
                return Err(ReplyError::new(ReplyErrorKind::LineTooLong, window));
            }
            // An incomplete line can already be invalid: say so without waiting for more.
            check_prefix(rest, code)?;
            return Ok(None);
        };
        let raw = &rest[..nl];
        let Some(content) = raw.strip_suffix(b"\r") else {
            return Err(ReplyError::new(ReplyErrorKind::BareLineEnding, raw));
        };
        if lines.len() == MAX_REPLY_LINES || pos + nl + 1 > MAX_REPLY_LEN {
            return Err(ReplyError::new(ReplyErrorKind::ReplyTooLong, content));
        }
        let (line_code, last, text) = parse_line(content, code)?;
        let text = String::from_utf8_lossy(text);
        match (code, enhanced) {
            (None, _) => {
                code = Some(line_code);
                match split_enhanced(&text) {
                    Some((e, rest)) if u16::from(e.class) == line_code / 100 => {
                        enhanced = Some(e);
                        lines.push(rest.to_owned());
                    }
                    _ => lines.push(text.into_owned()),
                }
            }
            (Some(_), Some(e)) => match split_enhanced(&text) {
                Some((found, rest)) if found == e => lines.push(rest.to_owned()),
                _ => lines.push(text.into_owned()),
            },
            (Some(_), None) => lines.push(text.into_owned()),
        }
        pos += nl + 1;
        if last {
            let reply = Reply {
                code: line_code,
                enhanced,
                text: Cow::Owned(lines.join("\n")),
            };
            return Ok(Some((reply, pos)));
        }
    }
}

/// Checks the code and separator of a line that has not been completed yet.
fn check_prefix(partial: &[u8], expected: Option<u16>) -> Result<(), ReplyError> {
    let head = &partial[..partial.len().min(4)];
    let bad = |kind| Err(ReplyError::new(kind, partial));
    for (i, &b) in head.iter().take(3).enumerate() {
        let ok = match i {
            0 => (b'2'..=b'5').contains(&b),
            1 => (b'0'..=b'5').contains(&b),
            _ => b.is_ascii_digit(),
        };
        if !ok {
            return bad(ReplyErrorKind::InvalidCode);
        }
    }
    if head.len() >= 3 {
        if let Some(expected) = expected {
            if read_code(head) != expected {
                return bad(ReplyErrorKind::CodeMismatch);
            }
        }
    }
    if let Some(&sep) = head.get(3) {
        if !matches!(sep, b'-' | b' ' | b'\r') {
            return bad(ReplyErrorKind::InvalidSeparator);
        }
    }
    Ok(())
}

fn read_code(b: &[u8]) -> u16 {
    b[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d.wrapping_sub(b'0')))
}

/// Parses one line without its CRLF: `(code, is_last_line, text)`.
fn parse_line(content: &[u8], expected: Option<u16>) -> Result<(u16, bool, &[u8]), ReplyError> {
    if content.len() < 3 {
        return Err(ReplyError::new(ReplyErrorKind::InvalidCode, content));
    }
    check_prefix(content, None)?;
    let code = read_code(content);
    if expected.is_some_and(|e| e != code) {
        return Err(ReplyError::new(ReplyErrorKind::CodeMismatch, content));
    }
    let (last, text) = match content.get(3) {
        None => (true, &content[3..]),
        Some(b' ') => (true, &content[4..]),
        Some(b'-') => (false, &content[4..]),
        Some(_) => return Err(ReplyError::new(ReplyErrorKind::InvalidSeparator, content)),
    };
    if memchr::memchr(b'\r', text).is_some() {
        return Err(ReplyError::new(ReplyErrorKind::BareLineEnding, content));
    }
    Ok((code, last, text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn enhanced_code_text_forms() {
        for (s, ok) in [
            ("2.0.0", true),
            ("5.1.1", true),
            ("4.999.999", true),
            ("5.01.1", false),
            ("5.1000.1", false),
            ("3.0.0", false),
            ("5.1.", false),
            ("5.1.1 ", false),
            ("", false),
        ] {
            assert_eq!(s.parse::<EnhancedCode>().is_ok(), ok, "{s:?}");
            if ok {
                assert_eq!(s.parse::<EnhancedCode>().unwrap().to_string(), s);
            }
        }
    }
}
