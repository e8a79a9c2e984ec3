//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2), typed.
//!
//! - MAIL: `SIZE=n` (RFC 1870), `BODY=7BIT|8BITMIME|BINARYMIME` (RFC 6152, RFC 3030),
//!   `SMTPUTF8` (RFC 6531), `AUTH=<xtext>` (RFC 4954), `RET=FULL|HDRS` and `ENVID=<xtext>`
//!   (RFC 3461).
//! - RCPT: `NOTIFY=NEVER|SUCCESS,FAILURE,DELAY` and `ORCPT=addr-type;xtext` (RFC 3461).
//!
//! Keywords are case-insensitive. Reply codes follow RFC 5321 §4.2.2 and §4.3.2: `501` is for
//! syntax errors in parameters or arguments, `555` for parameters "not recognized or not
//! implemented". So a keyword given twice, and a known keyword whose value is malformed or
//! missing (`SIZE=abc`, `SIZE` alone, `BODY=9BIT`, `SMTPUTF8=yes`, `RET=ALL`, `ENVID=a+zz`,
//! `AUTH` without a value, `NOTIFY=SOMETIMES`, `ORCPT=a@b`) get `501 5.5.4`; a known keyword
//! that belongs to the other command (`NOTIFY` on MAIL) is not recognised for this one and gets
//! `555 5.5.4`, as do unknown keywords once the server refuses them (the session does). Any
//! other `keyword[=value]` is kept in `other` ([`OtherParams`]), in order, for the caller to
//! accept or refuse. xtext values (AUTH, ENVID, ORCPT) are checked when parsed
//! and kept as sent ([`XText`]); [`XText::decode`] gives the text (`+2B` becomes `+`),
//! allocating only when there is an escape. `Display` writes the canonical form (keywords
//! upper case, known ones first in a fixed order), which parses back to the same value.
//!
//! Like the address types, [`MailParams`], [`RcptParams`], [`Orcpt`], [`XText`] and
//! [`OtherParams`] are generic over their text: `&str` as parsed (`Copy`, nothing allocated),
//! `String` (the default) as stored, through `into_owned`.
use std::borrow::Cow;
use std::fmt::{self, Write as _};

use nom::branch::alt;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::{char, satisfy};
use nom::combinator::{opt, recognize};
use nom::multi::many0_count;
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::address::sub;

type Res<'a, T> = IResult<&'a [u8], T>;

/// Why a MAIL or RCPT parameter was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParamError {
    /// The parameter list does not follow `esmtp-param *(SP esmtp-param)` (501 5.5.4).
    #[error("syntax error in parameters")]
    Syntax,
    /// The same keyword appears twice (501 5.5.4).
    #[error("duplicate parameter")]
    Duplicate,
    /// A known keyword with a value it does not allow, or without the value it needs, e.g.
    /// `SIZE=abc` or `SMTPUTF8=yes` (501 5.5.4: a syntax error in a recognised parameter).
    #[error("invalid parameter value")]
    InvalidValue,
    /// A known keyword that belongs to the other command, e.g. `NOTIFY` on MAIL (555 5.5.4).
    #[error("parameter not valid for this command")]
    WrongCommand,
}

impl ParamError {
    /// The basic reply code: 501 for syntax errors (list syntax, duplicates, malformed values
    /// of known keywords), 555 for a parameter not recognised for this command.
    pub fn code(&self) -> u16 {
        match self {
            ParamError::Syntax | ParamError::Duplicate | ParamError::InvalidValue => 501,
            ParamError::WrongCommand => 555,
        }
    }

    /// Human text for a reply.
    pub fn message(&self) -> &'static str {
        match self {
            ParamError::Syntax => "Syntax error in parameters",
            ParamError::Duplicate => "Duplicate parameter",
            ParamError::InvalidValue => "Invalid parameter value",
            ParamError::WrongCommand => "Parameter not valid for this command",
        }
    }
}

/// `BODY=` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `7BIT`
    SevenBit,
    /// `8BITMIME`
    EightBitMime,
    /// `BINARYMIME` (needs BDAT)
    BinaryMime,
}

impl Body {
    /// The keyword value as sent.
    pub fn as_str(&self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// `RET=` (RFC 3461): how much of the message a delivery status notification returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: the whole message.
    Full,
    /// `HDRS`: the headers only.
    Hdrs,
}

impl Ret {
    /// The keyword value as sent.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `NOTIFY=` (RFC 3461). All three false means `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Notify {
    /// `SUCCESS`
    pub success: bool,
    /// `FAILURE`
    pub failure: bool,
    /// `DELAY`
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// True for `NEVER`.
    pub fn is_never(&self) -> bool {
        !(self.success || self.failure || self.delay)
    }
}

impl fmt::Display for Notify {
    /// `NEVER` or a comma list in the order SUCCESS,FAILURE,DELAY.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("NEVER");
        }
        let mut sep = "";
        for (on, name) in [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ] {
            if on {
                write!(f, "{sep}{name}")?;
                sep = ",";
            }
        }
        Ok(())
    }
}

/// `ORCPT=addr-type;xtext` (RFC 3461): the original recipient (`S` as for [`MailParams`]).
///
/// Valid by construction: the address type is an `atom` and the address is [`XText`], so an
/// `Orcpt` cannot put a space, CR or LF into a command line.
///
/// ```
/// use smtp_proto::param::{Orcpt, XText};
///
/// let o = Orcpt::new("rfc822", XText::new("a+2Bb@example.org").unwrap()).unwrap();
/// assert_eq!(o.addr().decode(), "a+b@example.org");
/// assert!(Orcpt::new("rfc822\r\nRSET", XText::new("x").unwrap()).is_err());
/// ```
///
/// ```compile_fail
/// use smtp_proto::param::{Orcpt, XText};
/// let o = Orcpt { addr_type: "rfc822\r\nRSET", addr: XText::new("x").unwrap() };
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Orcpt<S = String> {
    addr_type: S,
    addr: XText<S>,
}

impl<S: AsRef<str>> Orcpt<S> {
    /// An original recipient of type `addr_type` (e.g. `rfc822`, an RFC 5322 `atom`).
    ///
    /// # Errors
    /// [`ParamError::InvalidValue`] when the type is empty or not an atom.
    pub fn new(addr_type: S, addr: XText<S>) -> Result<Self, ParamError> {
        let t = addr_type.as_ref();
        if t.is_empty() || !t.bytes().all(crate::address::is_atext) {
            return Err(ParamError::InvalidValue);
        }
        Ok(Self { addr_type, addr })
    }

    /// The address type, e.g. `rfc822` (as sent; compare case-insensitively).
    pub fn addr_type(&self) -> &str {
        self.addr_type.as_ref()
    }

    /// The address, xtext-encoded as sent ([`XText::decode`] gives the text).
    pub fn addr(&self) -> &XText<S> {
        &self.addr
    }

    /// An owned copy, independent of the input buffer.
    pub fn into_owned(self) -> Orcpt {
        Orcpt {
            addr_type: self.addr_type.as_ref().to_owned(),
            addr: self.addr.into_owned(),
        }
    }

    /// A borrowed view.
    pub fn as_borrowed(&self) -> Orcpt<&str> {
        Orcpt {
            addr_type: self.addr_type.as_ref(),
            addr: self.addr.as_borrowed(),
        }
    }
}

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<Orcpt<B>> for Orcpt<A> {
    fn eq(&self, other: &Orcpt<B>) -> bool {
        self.addr_type.as_ref() == other.addr_type.as_ref() && self.addr == other.addr
    }
}

impl<S: AsRef<str>> Eq for Orcpt<S> {}

impl<S: AsRef<str>> std::hash::Hash for Orcpt<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr_type.as_ref().hash(state);
        self.addr.hash(state);
    }
}

/// Parameters of `MAIL FROM:`.
///
/// `S` holds the text of the xtext and unknown parameters: `&str` for parameters borrowed
/// from a parsed line (the type is then `Copy`: parsing allocates nothing), `String` (the
/// default) for parameters stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailParams<S = String> {
    /// `SIZE=n`: the declared message size in octets.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<Body>,
    /// `SMTPUTF8` (no value)
    pub smtputf8: bool,
    /// `AUTH=`: the authenticated submitter (`<>` means unknown).
    pub auth: Option<XText<S>>,
    /// `RET=`
    pub ret: Option<Ret>,
    /// `ENVID=`: the envelope identifier.
    pub envid: Option<XText<S>>,
    /// Any other parameter, in the order received.
    pub other: OtherParams<S>,
}

/// Parameters of `RCPT TO:` (`S` as for [`MailParams`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RcptParams<S = String> {
    /// `NOTIFY=`
    pub notify: Option<Notify>,
    /// `ORCPT=`
    pub orcpt: Option<Orcpt<S>>,
    /// Any other parameter, in the order received.
    pub other: OtherParams<S>,
}

impl<'a> MailParams<&'a str> {
    /// Parses `Mail-parameters = esmtp-param *(SP esmtp-param)` (the text after the path and
    /// its space). An empty string gives no parameters.
    ///
    /// # Errors
    /// A [`ParamError`] saying which reply applies.
    pub fn parse(s: &'a str) -> Result<Self, ParamError> {
        mail_parameters(s.as_bytes(), s)
    }
}

impl<S: AsRef<str>> MailParams<S> {
    /// True when there is no parameter at all.
    pub fn is_empty(&self) -> bool {
        self.size.is_none()
            && self.body.is_none()
            && !self.smtputf8
            && self.auth.is_none()
            && self.ret.is_none()
            && self.envid.is_none()
            && self.other.is_empty()
    }

    /// An owned copy, for storing.
    pub fn into_owned(self) -> MailParams {
        MailParams {
            size: self.size,
            body: self.body,
            smtputf8: self.smtputf8,
            auth: self.auth.map(XText::into_owned),
            ret: self.ret,
            envid: self.envid.map(XText::into_owned),
            other: self.other.into_owned(),
        }
    }
}

impl<'a> RcptParams<&'a str> {
    /// Parses `Rcpt-parameters = esmtp-param *(SP esmtp-param)`. An empty string gives no
    /// parameters.
    ///
    /// # Errors
    /// A [`ParamError`] saying which reply applies.
    pub fn parse(s: &'a str) -> Result<Self, ParamError> {
        rcpt_parameters(s.as_bytes(), s)
    }
}

impl<S: AsRef<str>> RcptParams<S> {
    /// True when there is no parameter at all.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none() && self.other.is_empty()
    }

    /// An owned copy, for storing.
    pub fn into_owned(self) -> RcptParams {
        RcptParams {
            notify: self.notify,
            orcpt: self.orcpt.map(Orcpt::into_owned),
            other: self.other.into_owned(),
        }
    }
}

impl<S: AsRef<str>> PartialEq for MailParams<S> {
    fn eq(&self, o: &Self) -> bool {
        self.size == o.size
            && self.body == o.body
            && self.smtputf8 == o.smtputf8
            && self.auth == o.auth
            && self.ret == o.ret
            && self.envid == o.envid
            && self.other == o.other
    }
}

impl<S: AsRef<str>> Eq for MailParams<S> {}

impl<S: AsRef<str>> PartialEq for RcptParams<S> {
    fn eq(&self, o: &Self) -> bool {
        self.notify == o.notify && self.orcpt == o.orcpt && self.other == o.other
    }
}

impl<S: AsRef<str>> Eq for RcptParams<S> {}

/// The parameters of a MAIL or RCPT command that this crate does not know (`X-FOO=1`,
/// `MT-PRIORITY=3`, ...), for the caller to accept or refuse.
///
/// They are kept as the parameter text they came in (which may also hold known parameters;
/// [`OtherParams::iter`] skips those), so parsing allocates nothing. Two values are equal when
/// they list the same unknown parameters in the same order.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtherParams<S = String>(Option<S>);

impl<S: AsRef<str>> OtherParams<S> {
    /// Unknown parameters written as `esmtp-param *(SP esmtp-param)`, e.g. `"X-A=1 X-B"`.
    ///
    /// # Errors
    /// [`ParamError::Syntax`] when `text` is not a parameter list, [`ParamError::Duplicate`]
    /// when a keyword appears twice, [`ParamError::WrongCommand`] for a keyword this crate
    /// knows (set it in its own field instead).
    pub fn new(text: S) -> Result<Self, ParamError> {
        let mut seen: Vec<&str> = Vec::new();
        let t = text.as_ref();
        each_param(t.as_bytes(), |k, v| {
            let Keyword::Other = keyword(k) else {
                return Err(ParamError::WrongCommand);
            };
            note_unknown(&mut seen, t, k, v)
        })?;
        Ok(OtherParams((!seen.is_empty()).then_some(text)))
    }

    /// True when there is no unknown parameter.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The unknown parameters as `(keyword, value)`, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        let text = self.0.as_ref().map_or("", AsRef::as_ref);
        let mut rest = text.as_bytes();
        std::iter::from_fn(move || loop {
            while let Some((b' ', r)) = rest.split_first() {
                rest = r;
            }
            let Ok((r, (k, v))) = esmtp_param(rest) else {
                return None;
            };
            rest = r;
            if let Keyword::Other = keyword(k) {
                let k = sub(text, k)?;
                let v = match v {
                    Some(v) => Some(sub(text, v)?),
                    None => None,
                };
                return Some((k, v));
            }
        })
    }

    /// The first unknown parameter, if any.
    pub fn first(&self) -> Option<(&str, Option<&str>)> {
        self.iter().next()
    }

    /// An owned copy.
    pub fn into_owned(self) -> OtherParams {
        OtherParams(self.0.map(|t| t.as_ref().to_owned()))
    }
}

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<OtherParams<B>> for OtherParams<A> {
    fn eq(&self, other: &OtherParams<B>) -> bool {
        self.iter().eq(other.iter())
    }
}

impl<S: AsRef<str>> Eq for OtherParams<S> {}

/// Writes ` KEY` or ` KEY=VALUE`, with a space before all but the first item.
struct Joiner<'f, 'g> {
    f: &'f mut fmt::Formatter<'g>,
    first: bool,
}

impl Joiner<'_, '_> {
    fn item(&mut self, args: fmt::Arguments<'_>) -> fmt::Result {
        if !self.first {
            self.f.write_char(' ')?;
        }
        self.first = false;
        self.f.write_fmt(args)
    }

    fn others<S: AsRef<str>>(&mut self, other: &OtherParams<S>) -> fmt::Result {
        for (k, v) in other.iter() {
            match v {
                Some(v) => self.item(format_args!("{k}={v}"))?,
                None => self.item(format_args!("{k}"))?,
            }
        }
        Ok(())
    }
}

impl<S: AsRef<str>> fmt::Display for MailParams<S> {
    /// The parameters separated by single spaces, without a leading space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut j = Joiner { f, first: true };
        if let Some(n) = self.size {
            j.item(format_args!("SIZE={n}"))?;
        }
        if let Some(b) = self.body {
            j.item(format_args!("BODY={}", b.as_str()))?;
        }
        if self.smtputf8 {
            j.item(format_args!("SMTPUTF8"))?;
        }
        if let Some(a) = &self.auth {
            j.item(format_args!("AUTH={a}"))?;
        }
        if let Some(r) = self.ret {
            j.item(format_args!("RET={}", r.as_str()))?;
        }
        if let Some(e) = &self.envid {
            j.item(format_args!("ENVID={e}"))?;
        }
        j.others(&self.other)
    }
}

impl<S: AsRef<str>> fmt::Display for RcptParams<S> {
    /// The parameters separated by single spaces, without a leading space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut j = Joiner { f, first: true };
        if let Some(n) = self.notify {
            j.item(format_args!("NOTIFY={n}"))?;
        }
        if let Some(o) = &self.orcpt {
            j.item(format_args!("ORCPT={};{}", o.addr_type.as_ref(), o.addr))?;
        }
        j.others(&self.other)
    }
}

// ---------------------------------------------------------------------------------------
// xtext (RFC 3461 §4)

/// An xtext value (RFC 3461 §4) as it is sent: `+`, `=` and every byte outside `!`..`~`
/// written as `+XX`. Always valid, and its decoded form is UTF-8; [`XText::decode`] gives
/// the text. Two values are equal when their decoded texts are (`+41`, `+41` and `A` are
/// one value), and `Display` writes the canonical encoding (upper-case hex, escapes only
/// where needed), whatever form was received.
#[derive(Debug, Clone, Copy)]
pub struct XText<S = String>(S);

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<XText<B>> for XText<A> {
    fn eq(&self, other: &XText<B>) -> bool {
        self.as_encoded() == other.as_encoded() || self.decode() == other.decode()
    }
}

impl<S: AsRef<str>> Eq for XText<S> {}

impl<S: AsRef<str>> std::hash::Hash for XText<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.decode().hash(state);
    }
}

impl<S: AsRef<str>> XText<S> {
    /// Takes an encoded value as sent.
    ///
    /// # Errors
    /// [`ParamError::InvalidValue`] when it is not xtext or does not decode to UTF-8.
    pub fn new(encoded: S) -> Result<Self, ParamError> {
        xtext_decode(encoded.as_ref())?;
        Ok(XText(encoded))
    }

    /// The encoded form, as sent.
    pub fn as_encoded(&self) -> &str {
        self.0.as_ref()
    }

    /// The decoded text; borrowed when there was nothing to decode.
    pub fn decode(&self) -> Cow<'_, str> {
        // Checked when built, so this does not fail; stay total anyway.
        xtext_decode(self.0.as_ref()).unwrap_or(Cow::Borrowed(""))
    }

    /// An owned copy.
    pub fn into_owned(self) -> XText {
        XText(self.0.as_ref().to_owned())
    }

    /// A borrowed view.
    pub fn as_borrowed(&self) -> XText<&str> {
        XText(self.0.as_ref())
    }
}

impl XText<String> {
    /// Encodes plain text, e.g. `a+b` becomes `a+2Bb`.
    pub fn encode(plain: &str) -> Self {
        XText(xtext_encode(plain))
    }
}

impl<S: AsRef<str>> fmt::Display for XText<S> {
    /// The canonical encoding: as received when it has no escape, re-encoded otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.0.as_ref();
        if encoded.contains('+') {
            f.write_str(&xtext_encode(&self.decode()))
        } else {
            f.write_str(encoded)
        }
    }
}

/// `xchar`: any ASCII character from `!` to `~` except `+` and `=`.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

/// Encodes a string as xtext (RFC 3461 §4), e.g. `a+b` → `a+2Bb`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && is_xchar(c as u8) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing into a String cannot fail.
                let _ = write!(out, "+{b:02X}");
            }
        }
    }
    out
}

/// Decodes xtext (RFC 3461 §4): `xtext = *( xchar / hexchar )`, `hexchar = "+" 2HEXDIG`.
///
/// Borrows when there is nothing to decode. Lower-case hex digits are accepted (RFC 3461
/// asks senders for upper case).
///
/// # Errors
/// [`ParamError::InvalidValue`] for a character outside xtext, a bad `+XX` escape, or
/// decoded bytes that are not UTF-8.
pub fn xtext_decode(s: &str) -> Result<Cow<'_, str>, ParamError> {
    let bytes = s.as_bytes();
    if bytes.iter().all(|&b| is_xchar(b)) {
        return Ok(Cow::Borrowed(s));
    }
    if !matches!(xtext(bytes), Ok(([], _))) {
        return Err(ParamError::InvalidValue);
    }
    // Every `+` now starts a `hexchar`.
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'+' {
            let hi = bytes.get(i + 1).and_then(|&c| (c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|&c| (c as char).to_digit(16));
            match (hi, lo) {
                // Two hex digits make a value below 256.
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(ParamError::InvalidValue),
            }
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(ParamError::InvalidValue);
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ParamError::InvalidValue)
}

// ---------------------------------------------------------------------------------------
// Parsers

/// `Let-dig / "-"`: an `esmtp-keyword` character.
const KEYWORD: u8 = 1;
/// `esmtp-value = 1*(%d33-60 / %d62-126)` (RFC 6531: `/ UTF8-non-ascii`)
const VALUE: u8 = 2;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || b == b'-' {
            t[i] |= KEYWORD;
        }
        if matches!(b, 33..=60 | 62..=126) || b >= 0x80 {
            t[i] |= VALUE;
        }
        i += 1;
    }
    t
};

fn is_keyword_char(b: u8) -> bool {
    CLASS[b as usize] & KEYWORD != 0
}

fn is_value_char(b: u8) -> bool {
    CLASS[b as usize] & VALUE != 0
}

/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`
#[inline(always)]
fn esmtp_keyword(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((
        satisfy(|c| c.is_ascii_alphanumeric()),
        take_while(is_keyword_char),
    ))
    .parse(i)
}

/// `esmtp-value = 1*(%d33-60 / %d62-126)` (RFC 6531: `/ UTF8-non-ascii`)
#[inline(always)]
fn esmtp_value(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_value_char)(i)
}

/// `esmtp-param = esmtp-keyword ["=" esmtp-value]`
///
/// A `=` without a value is left in the rest, where the parameter list refuses it.
#[inline(always)]
fn esmtp_param(i: &[u8]) -> Res<'_, (&[u8], Option<&[u8]>)> {
    (esmtp_keyword, opt(preceded(char('='), esmtp_value))).parse(i)
}

/// `hexchar = "+" 2HEXDIG` (RFC 3461; lower-case digits accepted)
fn hexchar(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((
        char('+'),
        satisfy(|c| c.is_ascii_hexdigit()),
        satisfy(|c| c.is_ascii_hexdigit()),
    ))
    .parse(i)
}

/// `xtext = *( xchar / hexchar )`, `xchar = %d33-42 / %d44-60 / %d62-126` (RFC 3461)
fn xtext(i: &[u8]) -> Res<'_, &[u8]> {
    recognize(many0_count(alt((take_while1(is_xchar), hexchar)))).parse(i)
}

/// `Mail-parameters = esmtp-param *(SP esmtp-param)` (and `Rcpt-parameters`, the same):
/// hands each parameter's keyword and value to `f`. Leniently, several spaces between
/// parameters are accepted.
#[inline(always)]
fn each_param<'a>(
    mut i: &'a [u8],
    mut f: impl FnMut(&'a [u8], Option<&'a [u8]>) -> Result<(), ParamError>,
) -> Result<(), ParamError> {
    loop {
        while let Some((b' ', r)) = i.split_first() {
            i = r;
        }
        if i.is_empty() {
            return Ok(());
        }
        let (rest, (k, v)) = esmtp_param(i).map_err(|_| ParamError::Syntax)?;
        if !(rest.is_empty() || rest.first() == Some(&b' ')) {
            return Err(ParamError::Syntax);
        }
        f(k, v)?;
        i = rest;
    }
}

/// The text of a keyword or value. It cannot fail for a `text` that `i` was taken from: a
/// keyword is ASCII and a value starts and ends next to ASCII bytes.
#[inline]
fn str_of<'a>(text: &'a str, piece: &[u8]) -> Result<&'a str, ParamError> {
    sub(text, piece).ok_or(ParamError::Syntax)
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::Duplicate);
    }
    *slot = Some(v);
    Ok(())
}

/// Adds the unknown keyword `k` (value `v`), both pieces of `text`, to `seen`, refusing a
/// repeat in any case.
fn note_unknown<'a>(
    seen: &mut Vec<&'a str>,
    text: &'a str,
    k: &[u8],
    v: Option<&[u8]>,
) -> Result<(), ParamError> {
    let key = str_of(text, k)?;
    if let Some(v) = v {
        str_of(text, v)?;
    }
    if seen.iter().any(|o| o.eq_ignore_ascii_case(key)) {
        return Err(ParamError::Duplicate);
    }
    seen.push(key);
    Ok(())
}

/// Records that `k` (an unknown keyword) was in the parameter text `all`, refusing a repeat.
#[cold]
fn push_other<'a>(
    other: &mut OtherParams<&'a str>,
    seen: &mut Vec<&'a str>,
    all: &'a [u8],
    text: &'a str,
    k: &[u8],
    v: Option<&[u8]>,
) -> Result<(), ParamError> {
    note_unknown(seen, text, k, v)?;
    // The whole list up to and including this parameter: `iter` finds the unknown ones.
    let end = (v.unwrap_or(k).as_ptr() as usize + v.unwrap_or(k).len())
        .wrapping_sub(all.as_ptr() as usize);
    let upto = all.get(..end).ok_or(ParamError::Syntax)?;
    other.0 = Some(str_of(text, upto)?);
    Ok(())
}

/// Case-insensitive comparison with an upper-case name; exact for every input byte.
#[inline(always)]
fn is<const N: usize>(k: &[u8], upper: &[u8; N]) -> bool {
    crate::address::eq_upper(k, upper)
}

/// The keywords this module knows.
#[derive(Clone, Copy)]
enum Keyword {
    Size,
    Body,
    SmtpUtf8,
    Auth,
    Ret,
    Envid,
    Notify,
    Orcpt,
    Other,
}

/// Recognises a keyword, case-insensitively, by its length first.
#[inline(always)]
fn keyword(k: &[u8]) -> Keyword {
    match k.len() {
        3 if is(k, b"RET") => Keyword::Ret,
        4 if is(k, b"SIZE") => Keyword::Size,
        4 if is(k, b"BODY") => Keyword::Body,
        4 if is(k, b"AUTH") => Keyword::Auth,
        5 if is(k, b"ENVID") => Keyword::Envid,
        5 if is(k, b"ORCPT") => Keyword::Orcpt,
        6 if is(k, b"NOTIFY") => Keyword::Notify,
        8 if is(k, b"SMTPUTF8") => Keyword::SmtpUtf8,
        _ => Keyword::Other,
    }
}

/// `size-value = 1*20DIGIT` (RFC 1870). Twenty digits can say more than a `u64` holds: such
/// a value is valid syntax (RFC 1870 §6 wants it refused for its size, `552 5.3.4`, not as a
/// syntax error), and is read as `u64::MAX`, larger than any limit.
#[inline]
fn size_value(v: &[u8]) -> Result<u64, ParamError> {
    if v.is_empty() || v.len() > 20 {
        return Err(ParamError::InvalidValue);
    }
    let mut n: u64 = 0;
    for &d in v {
        if !d.is_ascii_digit() {
            return Err(ParamError::InvalidValue);
        }
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    Ok(n)
}

/// `xtext` value, checked.
fn xtext_value<'a>(text: &'a str, v: Option<&[u8]>) -> Result<XText<&'a str>, ParamError> {
    XText::new(str_of(text, v.ok_or(ParamError::InvalidValue)?)?)
}

/// `Mail-parameters = esmtp-param *(SP esmtp-param)`, typed.
#[inline]
pub(crate) fn mail_parameters<'a>(
    i: &'a [u8],
    text: &'a str,
) -> Result<MailParams<&'a str>, ParamError> {
    let mut p = MailParams::default();
    // Unknown keywords so far (allocated only when there is one).
    let mut seen = Vec::new();
    each_param(i, |k, v| match keyword(k) {
        Keyword::Size => {
            let n = size_value(v.ok_or(ParamError::InvalidValue)?)?;
            set_once(&mut p.size, n)
        }
        Keyword::Body => {
            let b = match v {
                Some(v) if is(v, b"7BIT") => Body::SevenBit,
                Some(v) if is(v, b"8BITMIME") => Body::EightBitMime,
                Some(v) if is(v, b"BINARYMIME") => Body::BinaryMime,
                _ => return Err(ParamError::InvalidValue),
            };
            set_once(&mut p.body, b)
        }
        Keyword::SmtpUtf8 => {
            if v.is_some() {
                return Err(ParamError::InvalidValue);
            }
            if p.smtputf8 {
                return Err(ParamError::Duplicate);
            }
            p.smtputf8 = true;
            Ok(())
        }
        Keyword::Auth => {
            let a = xtext_value(text, v)?;
            set_once(&mut p.auth, a)
        }
        Keyword::Ret => {
            let r = match v {
                Some(v) if is(v, b"FULL") => Ret::Full,
                Some(v) if is(v, b"HDRS") => Ret::Hdrs,
                _ => return Err(ParamError::InvalidValue),
            };
            set_once(&mut p.ret, r)
        }
        Keyword::Envid => {
            let e = xtext_value(text, v)?;
            set_once(&mut p.envid, e)
        }
        Keyword::Notify | Keyword::Orcpt => Err(ParamError::WrongCommand),
        Keyword::Other => push_other(&mut p.other, &mut seen, i, text, k, v),
    })?;
    Ok(p)
}

/// `notify-esmtp-value = "NEVER" / 1#notify-list-element` (RFC 3461)
#[inline]
fn notify_value(v: &[u8]) -> Result<Notify, ParamError> {
    if is(v, b"NEVER") {
        return Ok(Notify::NEVER);
    }
    // Item by item from the front, without searching for the commas first.
    let mut n = Notify::NEVER;
    let mut rest = v;
    loop {
        let (flag, len) = if rest.get(..7).is_some_and(|w| is(w, b"SUCCESS")) {
            (&mut n.success, 7)
        } else if rest.get(..7).is_some_and(|w| is(w, b"FAILURE")) {
            (&mut n.failure, 7)
        } else if rest.get(..5).is_some_and(|w| is(w, b"DELAY")) {
            (&mut n.delay, 5)
        } else {
            // Includes NEVER in a list, which RFC 3461 makes exclusive, and empty items.
            return Err(ParamError::InvalidValue);
        };
        *flag = true;
        match rest.get(len..) {
            Some([]) => return Ok(n),
            Some([b',', r @ ..]) => rest = r,
            _ => return Err(ParamError::InvalidValue),
        }
    }
}

/// `original-recipient-address = addr-type ";" xtext`, `addr-type = atom` (RFC 3461)
fn orcpt_value(v: &str) -> Result<Orcpt<&str>, ParamError> {
    let (t, a) = v.split_once(';').ok_or(ParamError::InvalidValue)?;
    Orcpt::new(t, XText::new(a)?)
}

/// `Rcpt-parameters = esmtp-param *(SP esmtp-param)`, typed.
#[inline]
pub(crate) fn rcpt_parameters<'a>(
    i: &'a [u8],
    text: &'a str,
) -> Result<RcptParams<&'a str>, ParamError> {
    let mut p = RcptParams::default();
    // Unknown keywords so far (allocated only when there is one).
    let mut seen = Vec::new();
    each_param(i, |k, v| match keyword(k) {
        Keyword::Notify => {
            let n = notify_value(v.ok_or(ParamError::InvalidValue)?)?;
            set_once(&mut p.notify, n)
        }
        Keyword::Orcpt => {
            let o = orcpt_value(str_of(text, v.ok_or(ParamError::InvalidValue)?)?)?;
            set_once(&mut p.orcpt, o)
        }
        Keyword::Size
        | Keyword::Body
        | Keyword::SmtpUtf8
        | Keyword::Auth
        | Keyword::Ret
        | Keyword::Envid => Err(ParamError::WrongCommand),
        Keyword::Other => push_other(&mut p.other, &mut seen, i, text, k, v),
    })?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::{notify_value, Notify, ParamError};

    #[test]
    fn notify_lists_item_by_item() {
        let all = Notify {
            success: true,
            failure: true,
            delay: true,
        };
        assert_eq!(notify_value(b"delay,Failure,SUCCESS"), Ok(all));
        assert_eq!(
            notify_value(b"DELAY,DELAY"),
            Ok(Notify {
                delay: true,
                ..Notify::NEVER
            })
        );
        assert_eq!(notify_value(b"never"), Ok(Notify::NEVER));
        for bad in [
            &b""[..],
            b",",
            b"SUCCESS,",
            b",SUCCESS",
            b"SUCCESSX",
            b"SUCCES",
            b"SUCCESS;FAILURE",
            b"FAILURE,NEVER",
            b"DELAY ",
        ] {
            assert_eq!(notify_value(bad), Err(ParamError::InvalidValue), "{bad:?}");
        }
    }
}
