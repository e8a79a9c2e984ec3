//! ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2), typed.
//!
//! - MAIL: `SIZE=n` (RFC 1870), `BODY=7BIT|8BITMIME|BINARYMIME` (RFC 6152, RFC 3030),
//!   `SMTPUTF8` (RFC 6531), `AUTH=<xtext>` (RFC 4954), `RET=FULL|HDRS` and `ENVID=<xtext>`
//!   (RFC 3461).
//! - RCPT: `NOTIFY=NEVER|SUCCESS,FAILURE,DELAY` and `ORCPT=addr-type;xtext` (RFC 3461).
//!
//! Keywords are case-insensitive. A keyword given twice is a syntax error (501 5.5.4); a
//! known keyword with a malformed value, or one that belongs to the other command, is refused
//! (555 5.5.4); any other `keyword[=value]` is kept in `other`, in order, for the caller to
//! accept or refuse. xtext values are decoded (`+2B` becomes `+`); decoding allocates only when
//! the value holds a `+XX` escape. `Display` writes the canonical form (keywords upper case,
//! known ones first in a fixed order), which parses back to the same value.
use std::borrow::Cow;
use std::fmt::{self, Write as _};

use nom::IResult;

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
    /// A known keyword with a value it does not allow, e.g. `SIZE=abc` (555 5.5.4).
    #[error("invalid parameter value")]
    InvalidValue,
    /// A known keyword that belongs to the other command, e.g. `NOTIFY` on MAIL (555 5.5.4).
    #[error("parameter not valid for this command")]
    WrongCommand,
}

impl ParamError {
    /// The basic reply code: 501 for syntax and duplicates, 555 for refused parameters.
    pub fn code(&self) -> u16 {
        match self {
            ParamError::Syntax | ParamError::Duplicate => 501,
            ParamError::InvalidValue | ParamError::WrongCommand => 555,
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

/// `ORCPT=addr-type;xtext` (RFC 3461): the original recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt<'a> {
    /// The address type, e.g. `rfc822` (as sent).
    pub addr_type: Cow<'a, str>,
    /// The address, xtext-decoded.
    pub addr: Cow<'a, str>,
}

impl Orcpt<'_> {
    /// An owned copy, independent of the input buffer.
    pub fn into_owned(self) -> Orcpt<'static> {
        Orcpt {
            addr_type: Cow::Owned(self.addr_type.into_owned()),
            addr: Cow::Owned(self.addr.into_owned()),
        }
    }
}

/// Parameters of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// `SIZE=n`: the declared message size in octets.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<Body>,
    /// `SMTPUTF8` (no value)
    pub smtputf8: bool,
    /// `AUTH=`: the authenticated submitter, xtext-decoded (`<>` means unknown).
    pub auth: Option<Cow<'a, str>>,
    /// `RET=`
    pub ret: Option<Ret>,
    /// `ENVID=`: the envelope identifier, xtext-decoded.
    pub envid: Option<Cow<'a, str>>,
    /// Any other parameter, as `(keyword, value)`, in the order received.
    pub other: Vec<(&'a str, Option<&'a str>)>,
}

/// Parameters of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// `NOTIFY=`
    pub notify: Option<Notify>,
    /// `ORCPT=`
    pub orcpt: Option<Orcpt<'a>>,
    /// Any other parameter, as `(keyword, value)`, in the order received.
    pub other: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> MailParams<'a> {
    /// Parses `Mail-parameters = esmtp-param *(SP esmtp-param)` (the text after the path and
    /// its space). An empty string gives no parameters.
    ///
    /// # Errors
    /// A [`ParamError`] saying which reply applies.
    pub fn parse(s: &'a str) -> Result<Self, ParamError> {
        parse_mail_params(s.as_bytes(), s)
    }

    /// True when there is no parameter at all.
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

impl<'a> RcptParams<'a> {
    /// Parses `Rcpt-parameters = esmtp-param *(SP esmtp-param)`. An empty string gives no
    /// parameters.
    ///
    /// # Errors
    /// A [`ParamError`] saying which reply applies.
    pub fn parse(s: &'a str) -> Result<Self, ParamError> {
        parse_rcpt_params(s.as_bytes(), s)
    }

    /// True when there is no parameter at all.
    pub fn is_empty(&self) -> bool {
        *self == RcptParams::default()
    }
}

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

    fn others(&mut self, other: &[(&str, Option<&str>)]) -> fmt::Result {
        for (k, v) in other {
            match v {
                Some(v) => self.item(format_args!("{k}={v}"))?,
                None => self.item(format_args!("{k}"))?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for MailParams<'_> {
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
            j.item(format_args!("AUTH={}", XText(a)))?;
        }
        if let Some(r) = self.ret {
            j.item(format_args!("RET={}", r.as_str()))?;
        }
        if let Some(e) = &self.envid {
            j.item(format_args!("ENVID={}", XText(e)))?;
        }
        j.others(&self.other)
    }
}

impl fmt::Display for RcptParams<'_> {
    /// The parameters separated by single spaces, without a leading space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut j = Joiner { f, first: true };
        if let Some(n) = self.notify {
            j.item(format_args!("NOTIFY={n}"))?;
        }
        if let Some(o) = &self.orcpt {
            j.item(format_args!("ORCPT={};{}", o.addr_type, XText(&o.addr)))?;
        }
        j.others(&self.other)
    }
}

// ---------------------------------------------------------------------------------------
// xtext (RFC 3461 §4)

/// Displays a string xtext-encoded: `+`, `=` and every byte outside `!`..`~` become `+XX`.
#[derive(Debug, Clone, Copy)]
pub struct XText<'a>(pub &'a str);

impl fmt::Display for XText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            if !is_xchar(b) {
                f.write_str(s.get(start..i).unwrap_or_default())?;
                write!(f, "+{b:02X}")?;
                start = i + 1;
            }
        }
        f.write_str(s.get(start..).unwrap_or_default())
    }
}

/// `xchar`: any ASCII character from `!` to `~` except `+` and `=`.
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

/// Encodes a string as xtext (RFC 3461 §4), e.g. `a+b` → `a+2Bb`.
pub fn xtext_encode(s: &str) -> String {
    XText(s).to_string()
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

/// Length of the longest prefix of `i` whose bytes all have a class in `mask`.
#[inline(always)]
fn run(i: &[u8], mask: u8) -> usize {
    crate::address::run_in(&CLASS, i, mask)
}

fn nom_error(i: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify))
}

/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`
#[inline(always)]
fn esmtp_keyword(i: &[u8]) -> Res<'_, &[u8]> {
    match run(i, KEYWORD) {
        0 => Err(nom_error(i)),
        _ if i.first() == Some(&b'-') => Err(nom_error(i)),
        n => Ok((&i[n..], &i[..n])),
    }
}

/// `esmtp-value = 1*(%d33-60 / %d62-126)` (RFC 6531: `/ UTF8-non-ascii`)
#[inline(always)]
fn esmtp_value(i: &[u8]) -> Res<'_, &[u8]> {
    match run(i, VALUE) {
        0 => Err(nom_error(i)),
        n => Ok((&i[n..], &i[..n])),
    }
}

/// `esmtp-param = esmtp-keyword ["=" esmtp-value]`
#[inline(always)]
fn esmtp_param(i: &[u8]) -> Res<'_, (&[u8], Option<&[u8]>)> {
    let (rest, kw) = esmtp_keyword(i)?;
    match rest.split_first() {
        Some((b'=', r)) => {
            let (rest, v) = esmtp_value(r)?;
            Ok((rest, (kw, Some(v))))
        }
        _ => Ok((rest, (kw, None))),
    }
}

/// Splits `esmtp-param *(SP esmtp-param)` into keyword/value pairs and hands each to `f`.
/// Several spaces between parameters are accepted.
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

#[cold]
fn push_other<'a>(
    other: &mut Vec<(&'a str, Option<&'a str>)>,
    text: &'a str,
    k: &[u8],
    v: Option<&[u8]>,
) -> Result<(), ParamError> {
    let k = str_of(text, k)?;
    let v = match v {
        Some(v) => Some(str_of(text, v)?),
        None => None,
    };
    if other.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)) {
        return Err(ParamError::Duplicate);
    }
    other.push((k, v));
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

/// `size-value = 1*20DIGIT` (RFC 1870)
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
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(ParamError::InvalidValue)?;
    }
    Ok(n)
}

/// `xtext` value, decoded.
fn xtext_value<'a>(text: &'a str, v: Option<&[u8]>) -> Result<Cow<'a, str>, ParamError> {
    xtext_decode(str_of(text, v.ok_or(ParamError::InvalidValue)?)?)
}

#[inline]
pub(crate) fn parse_mail_params<'a>(
    i: &'a [u8],
    text: &'a str,
) -> Result<MailParams<'a>, ParamError> {
    let mut p = MailParams::default();
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
        Keyword::Other => push_other(&mut p.other, text, k, v),
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
fn orcpt_value(v: &str) -> Result<Orcpt<'_>, ParamError> {
    let (t, a) = v.split_once(';').ok_or(ParamError::InvalidValue)?;
    if t.is_empty() || !t.bytes().all(crate::address::is_atext) {
        return Err(ParamError::InvalidValue);
    }
    Ok(Orcpt {
        addr_type: Cow::Borrowed(t),
        addr: xtext_decode(a)?,
    })
}

#[inline]
pub(crate) fn parse_rcpt_params<'a>(
    i: &'a [u8],
    text: &'a str,
) -> Result<RcptParams<'a>, ParamError> {
    let mut p = RcptParams::default();
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
        Keyword::Other => push_other(&mut p.other, text, k, v),
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
