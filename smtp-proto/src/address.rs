//! Mailbox addresses and paths (RFC 5321 §4.1.2, RFC 6531 for UTF-8).
//!
//! The types are generic over the storage of their text: parsing gives `Mailbox<&str>`,
//! `Domain<&str>`, `ReversePath<&str>`, `ForwardPath<&str>`, which borrow from the input, are
//! `Copy` and never allocate (a quoted local part with quoted-pairs, `"a\"b"`, keeps its
//! escapes and is unescaped when [`Mailbox::local_part`] is called). The default type
//! parameter `String` gives the owned forms for storing ([`MailboxBuf`], [`DomainBuf`],
//! `ReversePath`, `ForwardPath`), made by `into_owned`; `as_borrowed` goes back. Mailboxes and
//! paths compare equal across the two forms.
//!
//! What is accepted, and decided here:
//! - local parts: `Dot-string` and `Quoted-string`; the local part is compared and returned
//!   in its *unquoted* form, and [`Display`](fmt::Display) writes it back quoted only when it is not
//!   a valid `Dot-string`, so printing then parsing gives the same value;
//! - domains: `sub-domain` labels of letters, digits and hyphens (no hyphen first or last);
//!   RFC 6531 U-labels (any UTF-8 non-ASCII character) are accepted in labels and local parts,
//!   [`Mailbox::is_ascii`] tells whether the `SMTPUTF8` parameter is needed;
//! - address literals: `[192.0.2.1]` and `[IPv6:2001:db8::1]` (the IP is parsed with
//!   `std::net`); general address literals (`[tag:content]`) are refused with
//!   [`AddressError::UnsupportedAddressLiteral`];
//! - paths: the null reverse path `<>`, `<postmaster>` (any case) as a forward path, source
//!   routes `<@a,@b:user@c>` are parsed and dropped;
//! - limits (RFC 5321 §4.5.3.1, configurable through [`Limits`]): local part 64 octets and
//!   domain 255 octets as sent on the wire, path 256 octets including the angle brackets and
//!   any source route.
use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use nom::branch::alt;
use nom::bytes::complete::take_while1;
use nom::character::complete::{char, satisfy};
use nom::combinator::{consumed, recognize, verify};
use nom::multi::many0_count;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

use crate::command::Limits;

type Res<'a, T> = IResult<&'a [u8], T>;

/// Why an address or path was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AddressError {
    /// The text does not follow the RFC 5321 grammar.
    #[error("bad address syntax")]
    Syntax,
    /// The local part is longer than the limit (64 octets by default).
    #[error("local part too long")]
    LocalPartTooLong,
    /// The domain is longer than the limit (255 octets by default).
    #[error("domain too long")]
    DomainTooLong,
    /// The path is longer than the limit (256 octets by default).
    #[error("path too long")]
    PathTooLong,
    /// The address contains bytes that are not UTF-8.
    #[error("address is not valid UTF-8")]
    InvalidUtf8,
    /// An address literal (`[...]`) that is not a valid IPv4 or IPv6 address.
    #[error("invalid address literal")]
    InvalidAddressLiteral,
    /// A general address literal (`[tag:content]`); none is standardised for mail.
    #[error("unsupported address literal")]
    UnsupportedAddressLiteral,
    /// A local part with a character that cannot be sent, even quoted (control characters).
    #[error("invalid local part")]
    InvalidLocalPart,
    /// A domain name that is not a sequence of valid labels.
    #[error("invalid domain")]
    InvalidDomain,
    /// A path where a mailbox was required: `<>` or `<postmaster>` in the wrong place.
    #[error("a mailbox is required")]
    MailboxRequired,
}

impl AddressError {
    /// Human text for a reply, e.g. `Local part too long`.
    pub fn message(&self) -> &'static str {
        match self {
            AddressError::Syntax => "Bad address syntax",
            AddressError::LocalPartTooLong => "Local part too long",
            AddressError::DomainTooLong => "Domain too long",
            AddressError::PathTooLong => "Path too long",
            AddressError::InvalidUtf8 => "Address is not valid UTF-8",
            AddressError::InvalidAddressLiteral => "Invalid address literal",
            AddressError::UnsupportedAddressLiteral => "Unsupported address literal",
            AddressError::InvalidLocalPart => "Invalid local part",
            AddressError::InvalidDomain => "Invalid domain",
            AddressError::MailboxRequired => "A mailbox address is required",
        }
    }
}

/// The domain of a mailbox: a name or an address literal.
///
/// `S` holds the text: `&str` for a domain borrowed from parsed input (the type is then
/// `Copy` and has nothing to drop), `String` (the default, [`DomainBuf`]) for one stored.
/// A `Name` holds a [`DomainName`], which is valid by construction ([`Domain::name`],
/// [`DomainName::new`] or [`parse_domain`]), so a domain can never put CR, LF or a space on
/// the wire. Domains compare byte for byte (names as sent, not case-folded), within one form
/// (`as_borrowed` to compare the two).
///
/// ```
/// use smtp_proto::address::{Domain, DomainName};
///
/// assert!(Domain::name("mx.example.org").is_ok());
/// assert!(Domain::name("example.org\r\nRSET").is_err());
/// assert!(DomainName::new("bad domain").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain<S = String> {
    /// A domain name, as sent (case preserved; compare with `eq_ignore_ascii_case`).
    Name(DomainName<S>),
    /// `[192.0.2.1]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`
    Ipv6(Ipv6Addr),
}

/// A domain name (`sub-domain *("." sub-domain)`, RFC 6531 U-labels allowed), valid by
/// construction: made by [`DomainName::new`] or by the parsers, never from unchecked text.
///
/// ```
/// use smtp_proto::address::DomainName;
///
/// let d = DomainName::new("Example.ORG").unwrap();
/// assert_eq!(d.as_str(), "Example.ORG");
/// assert!(DomainName::new("-bad.example").is_err());
/// assert!(DomainName::new("a.example\r\n").is_err());
/// ```
///
/// Unchecked text cannot be wrapped by hand:
///
/// ```compile_fail
/// let d = smtp_proto::address::Domain::Name(smtp_proto::address::DomainName("x\r\nRSET"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName<S = String>(S);

impl<S: AsRef<str>> DomainName<S> {
    /// A validated domain name.
    ///
    /// # Errors
    /// [`AddressError::InvalidDomain`] when `name` is not a domain name.
    pub fn new(name: S) -> Result<Self, AddressError> {
        match domain(name.as_ref().as_bytes()) {
            Ok(([], _)) => Ok(Self(name)),
            _ => Err(AddressError::InvalidDomain),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The storage the name is held in.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S: AsRef<str>> AsRef<str> for DomainName<S> {
    fn as_ref(&self) -> &str {
        self.0.as_ref()
    }
}

impl<S: AsRef<str>> fmt::Display for DomainName<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

impl TryFrom<String> for DomainName {
    type Error = AddressError;

    fn try_from(s: String) -> Result<Self, AddressError> {
        Self::new(s)
    }
}

impl<'a> TryFrom<&'a str> for DomainName<&'a str> {
    type Error = AddressError;

    fn try_from(s: &'a str) -> Result<Self, AddressError> {
        Self::new(s)
    }
}

/// An owned [`Domain`].
pub type DomainBuf = Domain<String>;

impl<S: AsRef<str>> Domain<S> {
    /// A validated domain name (`sub-domain *("." sub-domain)`, U-labels allowed).
    ///
    /// # Errors
    /// [`AddressError::InvalidDomain`] when `name` is not a domain name.
    pub fn name(name: S) -> Result<Self, AddressError> {
        DomainName::new(name).map(Domain::Name)
    }

    /// The domain name, or `None` for an address literal.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Domain::Name(n) => Some(n.as_ref()),
            _ => None,
        }
    }

    /// A borrowed view of this domain.
    pub fn as_borrowed(&self) -> Domain<&str> {
        match self {
            Domain::Name(n) => Domain::Name(DomainName(n.as_str())),
            Domain::Ipv4(a) => Domain::Ipv4(*a),
            Domain::Ipv6(a) => Domain::Ipv6(*a),
        }
    }

    /// An owned copy, for storing.
    pub fn into_owned(self) -> DomainBuf {
        match self {
            Domain::Name(n) => Domain::Name(DomainName(n.as_str().to_owned())),
            Domain::Ipv4(a) => Domain::Ipv4(a),
            Domain::Ipv6(a) => Domain::Ipv6(a),
        }
    }

    /// True when the domain is all ASCII (address literals always are).
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.as_ref().is_ascii(),
            _ => true,
        }
    }
}

impl<S: AsRef<str>> fmt::Display for Domain<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n.as_ref()),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// A mailbox `local-part@domain`.
///
/// `S` holds the text: `Mailbox<&str>` borrows both parts from parsed input (it is `Copy`
/// and has nothing to drop, which keeps parsing allocation-free), `Mailbox<String>` (the
/// default, [`MailboxBuf`]) owns them. [`Mailbox::into_owned`] goes from one to the other.
///
/// The local part is compared, hashed and returned ([`Mailbox::local_part`]) unquoted:
/// `"a\"b"@x` has the local part `a"b`. A parsed quoted local part with quoted-pairs keeps its
/// escaped form and is unescaped when read, so parsing never allocates.
#[derive(Debug, Clone, Copy)]
pub struct Mailbox<S = String> {
    /// The local part, unquoted; still holding quoted-pairs when `escaped`.
    local: S,
    /// Whether `local` holds quoted-pairs (`\x`) to remove when read.
    escaped: bool,
    domain: Domain<S>,
}

/// An owned [`Mailbox`], for storing.
pub type MailboxBuf = Mailbox<String>;

impl<S: AsRef<str>> Mailbox<S> {
    /// Builds a mailbox from an unquoted local part and a domain.
    ///
    /// The local part may hold any character that can be sent inside a quoted string
    /// (printable ASCII, space, UTF-8 non-ASCII); lengths are not checked here
    /// (they are a receiver's limit, see [`Limits`]).
    ///
    /// # Errors
    /// [`AddressError::InvalidLocalPart`] for control characters (the domain is valid by
    /// construction, see [`DomainName`]).
    pub fn new(local_part: S, domain: Domain<S>) -> Result<Self, AddressError> {
        if !local_part
            .as_ref()
            .chars()
            .all(|c| (' '..='~').contains(&c) || !c.is_ascii())
        {
            return Err(AddressError::InvalidLocalPart);
        }
        Ok(Mailbox {
            local: local_part,
            escaped: false,
            domain,
        })
    }

    /// The local part, unquoted (`"a b"@x` gives `a b`); borrowed unless a quoted-pair had
    /// to be removed.
    pub fn local_part(&self) -> Cow<'_, str> {
        let local = self.local.as_ref();
        if !self.escaped {
            return Cow::Borrowed(local);
        }
        let mut s = String::with_capacity(local.len());
        let mut escape = false;
        for c in local.chars() {
            if escape || c != '\\' {
                s.push(c);
                escape = false;
            } else {
                escape = true;
            }
        }
        Cow::Owned(s)
    }

    /// The domain.
    pub fn domain(&self) -> &Domain<S> {
        &self.domain
    }

    /// True when local part and domain are ASCII, i.e. the address can be used without the
    /// `SMTPUTF8` parameter (RFC 6531). Deciding whether to accept is the session's job.
    pub fn is_ascii(&self) -> bool {
        self.local.as_ref().is_ascii() && self.domain.is_ascii()
    }

    /// True when the local part must be quoted on the wire (it is not a `Dot-string`).
    pub fn needs_quoting(&self) -> bool {
        !is_dot_string(self.local_part().as_bytes())
    }

    /// A borrowed view of this mailbox.
    pub fn as_borrowed(&self) -> Mailbox<&str> {
        Mailbox {
            local: self.local.as_ref(),
            escaped: self.escaped,
            domain: self.domain.as_borrowed(),
        }
    }

    /// An owned copy, for storing.
    pub fn into_owned(self) -> MailboxBuf {
        let local = self.local_part().into_owned();
        Mailbox {
            local,
            escaped: false,
            domain: self.domain.into_owned(),
        }
    }

    /// An owned copy.
    pub fn to_buf(&self) -> MailboxBuf {
        self.as_borrowed().into_owned()
    }
}

impl<'a> Mailbox<&'a str> {
    /// A mailbox from a dot-string local part and a domain name the caller has checked
    /// (the command parser's fast path).
    #[inline(always)]
    pub(crate) fn from_checked(local_part: &'a str, domain: &'a str) -> Self {
        Mailbox {
            local: local_part,
            escaped: false,
            domain: Domain::Name(DomainName(domain)),
        }
    }
}

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<Mailbox<B>> for Mailbox<A> {
    /// Equal when the unquoted local parts and the domains are (byte for byte: domains as
    /// sent, not case-folded).
    fn eq(&self, other: &Mailbox<B>) -> bool {
        let domains = match (&self.domain, &other.domain) {
            (Domain::Name(a), Domain::Name(b)) => a.as_ref() == b.as_ref(),
            (Domain::Ipv4(a), Domain::Ipv4(b)) => a == b,
            (Domain::Ipv6(a), Domain::Ipv6(b)) => a == b,
            _ => false,
        };
        domains
            && if self.escaped || other.escaped {
                self.local_part() == other.local_part()
            } else {
                self.local.as_ref() == other.local.as_ref()
            }
    }
}

impl<S: AsRef<str>> Eq for Mailbox<S> {}

impl<S: AsRef<str>> std::hash::Hash for Mailbox<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.local_part().hash(state);
        self.domain.as_borrowed().hash(state);
    }
}

impl<S: AsRef<str>> fmt::Display for Mailbox<S> {
    /// The canonical wire form `local@domain`, quoting the local part when needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lp = self.local_part();
        if !is_dot_string(lp.as_bytes()) {
            f.write_str("\"")?;
            let mut start = 0;
            for (i, b) in lp.bytes().enumerate() {
                if b == b'"' || b == b'\\' {
                    f.write_str(&lp[start..i])?;
                    f.write_str("\\")?;
                    start = i;
                }
            }
            f.write_str(&lp[start..])?;
            f.write_str("\"")?;
        } else {
            f.write_str(&lp)?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// `Reverse-path = Path / "<>"`: the MAIL FROM address (`S` as for [`Mailbox`]).
#[derive(Debug, Clone, Copy)]
pub enum ReversePath<S = String> {
    /// `<>`: the null sender, used for bounces.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox<S>),
}

impl<S: AsRef<str>> ReversePath<S> {
    /// An owned copy, for storing.
    pub fn into_owned(self) -> ReversePath {
        match self {
            ReversePath::Null => ReversePath::Null,
            ReversePath::Mailbox(m) => ReversePath::Mailbox(m.into_owned()),
        }
    }

    /// A borrowed view.
    pub fn as_borrowed(&self) -> ReversePath<&str> {
        match self {
            ReversePath::Null => ReversePath::Null,
            ReversePath::Mailbox(m) => ReversePath::Mailbox(m.as_borrowed()),
        }
    }

    /// True unless the mailbox needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            ReversePath::Null => true,
            ReversePath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<ReversePath<B>> for ReversePath<A> {
    fn eq(&self, other: &ReversePath<B>) -> bool {
        match (self, other) {
            (ReversePath::Null, ReversePath::Null) => true,
            (ReversePath::Mailbox(a), ReversePath::Mailbox(b)) => a == b,
            _ => false,
        }
    }
}

impl<S: AsRef<str>> Eq for ReversePath<S> {}

impl<S: AsRef<str>> std::hash::Hash for ReversePath<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            ReversePath::Null => state.write_u8(0),
            ReversePath::Mailbox(m) => {
                state.write_u8(1);
                m.hash(state);
            }
        }
    }
}

impl<S: AsRef<str>> fmt::Display for ReversePath<S> {
    /// The wire form with angle brackets: `<>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// `Forward-path = Path`, plus the special `<Postmaster>` without a domain: the RCPT TO
/// address (`S` as for [`Mailbox`]).
#[derive(Debug, Clone, Copy)]
pub enum ForwardPath<S = String> {
    /// `<postmaster>` (any case), without a domain: the local postmaster.
    Postmaster,
    /// A recipient mailbox (`<Postmaster@domain>` is an ordinary mailbox).
    Mailbox(Mailbox<S>),
}

impl<S: AsRef<str>> ForwardPath<S> {
    /// An owned copy, for storing.
    pub fn into_owned(self) -> ForwardPath {
        match self {
            ForwardPath::Postmaster => ForwardPath::Postmaster,
            ForwardPath::Mailbox(m) => ForwardPath::Mailbox(m.into_owned()),
        }
    }

    /// A borrowed view.
    pub fn as_borrowed(&self) -> ForwardPath<&str> {
        match self {
            ForwardPath::Postmaster => ForwardPath::Postmaster,
            ForwardPath::Mailbox(m) => ForwardPath::Mailbox(m.as_borrowed()),
        }
    }

    /// True unless the mailbox needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl<A: AsRef<str>, B: AsRef<str>> PartialEq<ForwardPath<B>> for ForwardPath<A> {
    fn eq(&self, other: &ForwardPath<B>) -> bool {
        match (self, other) {
            (ForwardPath::Postmaster, ForwardPath::Postmaster) => true,
            (ForwardPath::Mailbox(a), ForwardPath::Mailbox(b)) => a == b,
            _ => false,
        }
    }
}

impl<S: AsRef<str>> Eq for ForwardPath<S> {}

impl<S: AsRef<str>> std::hash::Hash for ForwardPath<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            ForwardPath::Postmaster => state.write_u8(0),
            ForwardPath::Mailbox(m) => {
                state.write_u8(1);
                m.hash(state);
            }
        }
    }
}

impl<S: AsRef<str>> fmt::Display for ForwardPath<S> {
    /// The wire form with angle brackets: `<Postmaster>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Character classes: one 256-entry table, one bit per class, so a scanner costs a load and
// a test per byte.

/// `atext` (RFC 5322), extended by RFC 6531 with `UTF8-non-ascii`.
const ATEXT: u8 = 1;
/// Letters, digits, hyphen, and UTF-8 non-ASCII (U-labels).
const LDH: u8 = 2;
/// `qtextSMTP` plus UTF-8 non-ASCII.
const QTEXT: u8 = 4;
/// `dcontent`
const DCONTENT: u8 = 8;

/// `atext` (RFC 5322) plus UTF-8 non-ASCII (RFC 6531).
pub(crate) const fn atext_class(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
        || b >= 0x80
}

/// A domain label byte: letter, digit, hyphen, or UTF-8 non-ASCII (U-labels).
pub(crate) const fn ldh_class(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80
}

const fn qtext_class(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

const fn dcontent_class(b: u8) -> bool {
    matches!(b, 33..=90 | 94..=126)
}

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = (atext_class(b) as u8 * ATEXT)
            | (ldh_class(b) as u8 * LDH)
            | (qtext_class(b) as u8 * QTEXT)
            | (dcontent_class(b) as u8 * DCONTENT);
        i += 1;
    }
    t
};

/// `atext` (RFC 5322), extended by RFC 6531 with `UTF8-non-ascii`.
#[inline]
pub(crate) fn is_atext(b: u8) -> bool {
    CLASS[b as usize] & ATEXT != 0
}

fn is_qtext(b: u8) -> bool {
    CLASS[b as usize] & QTEXT != 0
}

fn is_dcontent(b: u8) -> bool {
    CLASS[b as usize] & DCONTENT != 0
}

/// A label byte: `ALPHA / DIGIT / "-"`, and UTF-8 non-ASCII (RFC 6531 U-labels).
fn is_ldh(b: u8) -> bool {
    CLASS[b as usize] & LDH != 0
}

/// `Let-dig = ALPHA / DIGIT` (RFC 6531: and the bytes of a U-label).
fn is_let_dig(b: u8) -> bool {
    is_ldh(b) && b != b'-'
}

fn is_dot_string(s: &[u8]) -> bool {
    matches!(dot_string(s), Ok((rest, _)) if rest.is_empty())
}

// ---------------------------------------------------------------------------------------
// The grammar: nom parsers named after the RFC 5321 §4.1.2 rules (RFC 6531 extends the
// character classes with UTF-8 non-ASCII), each documented with its rule. They recognise;
// the functions further down check the limits and build the values.

/// `Atom = 1*atext`
#[inline(always)]
fn atom(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(is_atext)(i)
}

/// `Dot-string = Atom *("." Atom)`
///
/// A dot not followed by an atom is left in the rest, as the grammar's repetition does.
#[inline(always)]
fn dot_string(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((atom, many0_count((char('.'), atom)))).parse(i)
}

/// `quoted-pairSMTP = %d92 %d32-126` (a backslash followed by any ASCII graphic or space)
fn quoted_pair_smtp(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((char('\\'), satisfy(|c| (' '..='~').contains(&c)))).parse(i)
}

/// `QcontentSMTP = qtextSMTP / quoted-pairSMTP`
///
/// `qtextSMTP = %d32-33 / %d35-91 / %d93-126` (RFC 6531: `/ UTF8-non-ascii`), taken a run
/// at a time.
#[inline(always)]
fn qcontent_smtp(i: &[u8]) -> Res<'_, &[u8]> {
    alt((take_while1(is_qtext), quoted_pair_smtp)).parse(i)
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`
///
/// Returns the text between the quotes, still escaped.
fn quoted_string(i: &[u8]) -> Res<'_, &[u8]> {
    delimited(char('"'), recognize(many0_count(qcontent_smtp)), char('"')).parse(i)
}

/// `Local-part = Dot-string / Quoted-string`
///
/// Returns the local part as sent (quotes included) and, for a quoted string, the text
/// between the quotes.
#[inline(always)]
fn local_part(i: &[u8]) -> Res<'_, (&[u8], Option<&[u8]>)> {
    alt((
        dot_string.map(|d| (d, None)),
        consumed(quoted_string).map(|(all, inner)| (all, Some(inner))),
    ))
    .parse(i)
}

/// `sub-domain = Let-dig [Ldh-str]` (RFC 6531: `/ U-label`),
/// `Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig`
///
/// The label is taken whole (the longest run of letters, digits, hyphens and UTF-8
/// non-ASCII) and must start and end with a `Let-dig`. This is the rule: `Ldh-str` ends
/// with a `Let-dig`, and what may follow a sub-domain (`.`, `>`, `,`, `:`, a space, the end)
/// is never a label byte, so a shorter match could not be followed by anything either.
#[inline(always)]
fn sub_domain(i: &[u8]) -> Res<'_, &[u8]> {
    verify(take_while1(is_ldh), |l: &[u8]| {
        l.first().is_some_and(|&b| is_let_dig(b)) && l.last().is_some_and(|&b| is_let_dig(b))
    })
    .parse(i)
}

/// `Domain = sub-domain *("." sub-domain)`
///
/// A dot not followed by a label is left in the rest, as the grammar's repetition does.
#[inline(always)]
fn domain(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((sub_domain, many0_count((char('.'), sub_domain)))).parse(i)
}

/// `At-domain = "@" Domain`
fn at_domain(i: &[u8]) -> Res<'_, &[u8]> {
    preceded(char('@'), domain).parse(i)
}

/// `A-d-l = At-domain *( "," At-domain )` (the source route, dropped)
fn a_d_l(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((at_domain, many0_count((char(','), at_domain)))).parse(i)
}

/// `IPv4-address-literal = Snum 3("." Snum)`, `Snum = 1*3DIGIT` (0 to 255), read by
/// `std::net` (which refuses leading zeros).
fn ipv4_address_literal(content: &str) -> Option<Ipv4Addr> {
    content
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.')
        .then(|| content.parse().ok())
        .flatten()
}

/// `IPv6-address-literal = "IPv6:" IPv6-addr` (the tag in any case), the address read by
/// `std::net`. `Ok(None)` when the tag is not there.
fn ipv6_address_literal(content: &str) -> Result<Option<Ipv6Addr>, AddressError> {
    match strip_prefix_ignore_case(content, "IPv6:") {
        Some(v6) => v6
            .parse()
            .map(Some)
            .map_err(|_| AddressError::InvalidAddressLiteral),
        None => Ok(None),
    }
}

/// `General-address-literal = Standardized-tag ":" 1*dcontent`,
/// `Standardized-tag = Ldh-str`
fn general_address_literal(content: &[u8]) -> Res<'_, &[u8]> {
    recognize((sub_domain, char(':'), take_while1(is_dcontent))).parse(content)
}

/// `address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
/// General-address-literal ) "]"`, `dcontent = %d33-90 / %d94-126`
///
/// The content between the brackets is taken as `1*dcontent`, then read as one of the three;
/// a well-formed general literal is [`AddressError::UnsupportedAddressLiteral`].
fn address_literal<S>(i: &[u8]) -> Result<(&[u8], Domain<S>), AddressError> {
    let parsed: Res<'_, &[u8]> = delimited(char('['), take_while1(is_dcontent), char(']')).parse(i);
    let (rest, content) = parsed.map_err(|_| AddressError::Syntax)?;
    // dcontent is ASCII, so this cannot fail; map it anyway rather than panic.
    let text = std::str::from_utf8(content).map_err(|_| AddressError::InvalidAddressLiteral)?;
    if let Some(addr) = ipv6_address_literal(text)? {
        return Ok((rest, Domain::Ipv6(addr)));
    }
    if let Some(addr) = ipv4_address_literal(text) {
        return Ok((rest, Domain::Ipv4(addr)));
    }
    match general_address_literal(content) {
        Ok(([], _)) => Err(AddressError::UnsupportedAddressLiteral),
        _ => Err(AddressError::InvalidAddressLiteral),
    }
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Bytes `at..at + 8` of `s` (zero past its end) as a little-endian word.
#[inline(always)]
fn le_word(s: &[u8], at: usize) -> u64 {
    let rest = s.get(at..).unwrap_or_default();
    let n = rest.len().min(8);
    let mut w = [0u8; 8];
    w[..n].copy_from_slice(&rest[..n]);
    u64::from_le_bytes(w)
}

/// Bit 5 of each byte of `upper[at..at + 8]` that is an upper-case letter.
#[inline(always)]
const fn letter_mask(upper: &[u8], at: usize) -> u64 {
    let mut mask = 0u64;
    let mut k = 0;
    while k < 8 && at + k < upper.len() {
        if upper[at + k].is_ascii_uppercase() {
            mask |= 0x20 << (8 * k);
        }
        k += 1;
    }
    mask
}

/// Whether `s` equals `upper` (upper-case letters and other bytes, at most 16 of them) with letters
/// in any case; exact for every byte of `s`.
///
/// Eight bytes at a time: bit 5 is set on both sides where `upper` has a letter, so `s`
/// matches there only with that letter in either case, and must match exactly elsewhere.
/// `upper` is a constant at every call, so its words and masks fold away.
#[inline(always)]
pub(crate) fn eq_upper<const N: usize>(s: &[u8], upper: &[u8; N]) -> bool {
    let Ok(s) = <&[u8; N]>::try_from(s) else {
        return false;
    };
    let lo = letter_mask(upper, 0);
    let same = (le_word(s, 0) | lo) == (le_word(upper, 0) | lo);
    if N <= 8 {
        return same;
    }
    let hi = letter_mask(upper, 8);
    same & ((le_word(s, 8) | hi) == (le_word(upper, 8) | hi))
}

/// The part of `text` that `piece` (a sub-slice of `text`'s bytes) covers, so that UTF-8 is
/// validated once per line rather than once per piece.
#[inline(always)]
pub(crate) fn sub<'a>(text: &'a str, piece: &[u8]) -> Option<&'a str> {
    let off = (piece.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    // Two inlined boundary checks; `str::get` with a range is an out-of-line call here.
    let (_, tail) = text.split_at_checked(off)?;
    let (piece, _) = tail.split_at_checked(piece.len())?;
    Some(piece)
}

#[inline(always)]
fn utf8<'a>(text: &'a str, b: &[u8]) -> Result<&'a str, AddressError> {
    sub(text, b).ok_or(AddressError::InvalidUtf8)
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`
#[inline(always)]
pub(crate) fn mailbox<'a>(
    i: &'a [u8],
    text: &'a str,
    limits: &Limits,
) -> Result<(&'a [u8], Mailbox<&'a str>), AddressError> {
    let (rest, (wire, quoted)) = local_part(i).map_err(|_| AddressError::Syntax)?;
    if wire.len() > limits.max_local_part {
        return Err(AddressError::LocalPartTooLong);
    }
    // A quoted local part is kept without its quotes; its quoted-pairs stay in place, and
    // `Mailbox::local_part` removes them when read.
    let (local, escaped) = match quoted {
        Some(inner) => (utf8(text, inner)?, inner.contains(&b'\\')),
        None => (utf8(text, wire)?, false),
    };
    let rest = match rest.split_first() {
        Some((b'@', r)) => r,
        _ => return Err(AddressError::Syntax),
    };
    let (rest, domain) = domain_or_literal(rest, text, limits)?;
    Ok((
        rest,
        Mailbox {
            local,
            escaped,
            domain,
        },
    ))
}

/// `Domain / address-literal`, with the domain length limit.
#[inline(always)]
fn domain_or_literal<'a>(
    i: &'a [u8],
    text: &'a str,
    limits: &Limits,
) -> Result<(&'a [u8], Domain<&'a str>), AddressError> {
    if i.first() == Some(&b'[') {
        let (rest, d) = address_literal(i)?;
        if i.len() - rest.len() > limits.max_domain {
            return Err(AddressError::DomainTooLong);
        }
        return Ok((rest, d));
    }
    let (rest, d) = domain(i).map_err(|_| AddressError::Syntax)?;
    if d.len() > limits.max_domain {
        return Err(AddressError::DomainTooLong);
    }
    Ok((rest, Domain::Name(DomainName(utf8(text, d)?))))
}

/// What a path held, before the command decides which forms it allows.
pub(crate) enum RawPath<'a> {
    Null,
    Postmaster,
    Mailbox(Mailbox<&'a str>),
}

/// The type a path is parsed into: each form is accepted or refused as it is found, so the
/// mailbox is built in its final place rather than moved through [`RawPath`].
pub(crate) trait PathForm<'a>: Sized {
    /// `<>`
    fn null() -> Result<Self, AddressError>;
    /// `<Postmaster>`
    fn postmaster() -> Result<Self, AddressError>;
    /// A mailbox.
    fn mailbox(m: Mailbox<&'a str>) -> Self;
}

impl<'a> PathForm<'a> for RawPath<'a> {
    fn null() -> Result<Self, AddressError> {
        Ok(RawPath::Null)
    }
    fn postmaster() -> Result<Self, AddressError> {
        Ok(RawPath::Postmaster)
    }
    #[inline(always)]
    fn mailbox(m: Mailbox<&'a str>) -> Self {
        RawPath::Mailbox(m)
    }
}

impl<'a> PathForm<'a> for ReversePath<&'a str> {
    fn null() -> Result<Self, AddressError> {
        Ok(ReversePath::Null)
    }
    fn postmaster() -> Result<Self, AddressError> {
        Err(AddressError::MailboxRequired)
    }
    #[inline(always)]
    fn mailbox(m: Mailbox<&'a str>) -> Self {
        ReversePath::Mailbox(m)
    }
}

impl<'a> PathForm<'a> for ForwardPath<&'a str> {
    fn null() -> Result<Self, AddressError> {
        Err(AddressError::MailboxRequired)
    }
    fn postmaster() -> Result<Self, AddressError> {
        Ok(ForwardPath::Postmaster)
    }
    #[inline(always)]
    fn mailbox(m: Mailbox<&'a str>) -> Self {
        ForwardPath::Mailbox(m)
    }
}

/// `Path = "<" [ A-d-l ":" ] Mailbox ">"`, and also `"<>"` and `"<Postmaster>"`.
///
/// Leniently (as Postfix does by default), a bare mailbox or `postmaster` without angle
/// brackets is accepted too; it ends at a space or the end of the input.
#[inline(always)]
pub(crate) fn path<'a, P: PathForm<'a>>(
    i: &'a [u8],
    text: &'a str,
    limits: &Limits,
) -> Result<(&'a [u8], P), AddressError> {
    let Some((b'<', inner)) = i.split_first() else {
        // Lenient form without angle brackets.
        if let Some(rest) = postmaster(i) {
            if rest.is_empty() || rest.first() == Some(&b' ') {
                return Ok((rest, P::postmaster()?));
            }
        }
        let (rest, m) = mailbox(i, text, limits)?;
        if i.len() - rest.len() + 2 > limits.max_path {
            return Err(AddressError::PathTooLong);
        }
        if !(rest.is_empty() || rest.first() == Some(&b' ')) {
            return Err(AddressError::Syntax);
        }
        return Ok((rest, P::mailbox(m)));
    };
    if let Some((b'>', rest)) = inner.split_first() {
        return Ok((rest, P::null()?));
    }
    if let Some(r) = postmaster(inner) {
        if let Some((b'>', rest)) = r.split_first() {
            return Ok((rest, P::postmaster()?));
        }
    }
    let mut after_route = inner;
    if inner.first() == Some(&b'@') {
        let (r, _) = a_d_l(inner).map_err(|_| AddressError::Syntax)?;
        match r.split_first() {
            Some((b':', r)) => after_route = r,
            _ => return Err(AddressError::Syntax),
        }
    }
    let (r, m) = mailbox(after_route, text, limits)?;
    let Some((b'>', rest)) = r.split_first() else {
        return Err(AddressError::Syntax);
    };
    if i.len() - rest.len() > limits.max_path {
        return Err(AddressError::PathTooLong);
    }
    Ok((rest, P::mailbox(m)))
}

/// `Reverse-path = Path / "<>"`
#[inline(always)]
pub(crate) fn reverse_path<'a>(
    i: &'a [u8],
    text: &'a str,
    limits: &Limits,
) -> Result<(&'a [u8], ReversePath<&'a str>), AddressError> {
    path(i, text, limits)
}

/// `Forward-path = Path`, and in RCPT `"<Postmaster>"` (RFC 5321 §4.1.1.3)
#[inline(always)]
pub(crate) fn forward_path<'a>(
    i: &'a [u8],
    text: &'a str,
    limits: &Limits,
) -> Result<(&'a [u8], ForwardPath<&'a str>), AddressError> {
    path(i, text, limits)
}

/// `"Postmaster"`, any case.
#[inline(always)]
fn postmaster(i: &[u8]) -> Option<&[u8]> {
    // Most paths do not start with a `p`: test one byte before ten.
    match i.first() {
        Some(b'p' | b'P') => postmaster_slow(i),
        _ => None,
    }
}

#[inline(always)]
fn postmaster_slow(i: &[u8]) -> Option<&[u8]> {
    let head = i.get(..10)?;
    eq_upper(head, b"POSTMASTER").then(|| &i[10..])
}

fn all<T>(r: Result<(&[u8], T), AddressError>) -> Result<T, AddressError> {
    match r {
        Ok(([], v)) => Ok(v),
        Ok(_) => Err(AddressError::Syntax),
        Err(e) => Err(e),
    }
}

/// Parses a bare mailbox `local@domain` (no angle brackets), with the RFC 5321 default
/// limits. For configuration, users files, header addresses already extracted, etc.
///
/// # Errors
/// An [`AddressError`] saying what is wrong.
///
/// ```
/// use smtp_proto::address::{parse_mailbox, Domain};
/// let m = parse_mailbox("\"john doe\"@[192.0.2.1]").unwrap();
/// assert_eq!(m.local_part(), "john doe");
/// assert_eq!(m.domain(), &Domain::Ipv4([192, 0, 2, 1].into()));
/// assert_eq!(m.to_string(), "\"john doe\"@[192.0.2.1]");
/// ```
pub fn parse_mailbox(s: &str) -> Result<Mailbox<&str>, AddressError> {
    parse_mailbox_with(s, &Limits::default())
}

/// [`parse_mailbox`] with explicit limits.
///
/// # Errors
/// An [`AddressError`] saying what is wrong.
pub fn parse_mailbox_with<'a>(
    s: &'a str,
    limits: &Limits,
) -> Result<Mailbox<&'a str>, AddressError> {
    all(mailbox(s.as_bytes(), s, limits))
}

/// Parses `Domain / address-literal` (e.g. the argument of EHLO, or a configured domain).
///
/// # Errors
/// An [`AddressError`] saying what is wrong.
pub fn parse_domain(s: &str) -> Result<Domain<&str>, AddressError> {
    all(domain_or_literal(s.as_bytes(), s, &Limits::default()))
}

/// Parses a `Path` in angle brackets (`<a@b>`, `<@route:a@b>`), which must name a mailbox.
///
/// # Errors
/// [`AddressError::MailboxRequired`] for `<>` and `<postmaster>`; otherwise what is wrong.
pub fn parse_path(s: &str) -> Result<Mailbox<&str>, AddressError> {
    if !s.starts_with('<') {
        return Err(AddressError::Syntax);
    }
    match all(path::<RawPath<'_>>(s.as_bytes(), s, &Limits::default()))? {
        RawPath::Mailbox(m) => Ok(m),
        RawPath::Null | RawPath::Postmaster => Err(AddressError::MailboxRequired),
    }
}

/// Parses a `Reverse-path` (`<>` or a path), as in `MAIL FROM:`.
///
/// # Errors
/// An [`AddressError`]; `<postmaster>` gives [`AddressError::MailboxRequired`].
pub fn parse_reverse_path(s: &str) -> Result<ReversePath<&str>, AddressError> {
    match all(path::<RawPath<'_>>(s.as_bytes(), s, &Limits::default()))? {
        RawPath::Null => Ok(ReversePath::Null),
        RawPath::Mailbox(m) => Ok(ReversePath::Mailbox(m)),
        RawPath::Postmaster => Err(AddressError::MailboxRequired),
    }
}

/// Parses a `Forward-path` (a path or `<postmaster>`), as in `RCPT TO:`.
///
/// # Errors
/// An [`AddressError`]; `<>` gives [`AddressError::MailboxRequired`].
pub fn parse_forward_path(s: &str) -> Result<ForwardPath<&str>, AddressError> {
    match all(path::<RawPath<'_>>(s.as_bytes(), s, &Limits::default()))? {
        RawPath::Postmaster => Ok(ForwardPath::Postmaster),
        RawPath::Mailbox(m) => Ok(ForwardPath::Mailbox(m)),
        RawPath::Null => Err(AddressError::MailboxRequired),
    }
}

#[cfg(test)]
mod tests {
    use super::eq_upper;

    /// The byte-by-byte rule `eq_upper` must give: letters in either case, others exactly.
    fn reference(s: &[u8], upper: &[u8]) -> bool {
        s.len() == upper.len()
            && s.iter()
                .zip(upper)
                .all(|(&a, &u)| a == u || (u.is_ascii_uppercase() && a == u | 0x20))
    }

    fn every_byte_at_every_place<const N: usize>(upper: &[u8; N]) {
        for at in 0..N {
            for b in 0..=255u8 {
                let mut s = *upper;
                s[at] = b;
                assert_eq!(eq_upper(&s, upper), reference(&s, upper), "{s:?}");
            }
        }
        assert!(!eq_upper(&upper[..N - 1], upper));
    }

    #[test]
    fn eq_upper_is_exact_for_every_byte() {
        every_byte_at_every_place(b"TO:");
        every_byte_at_every_place(b"FROM:");
        every_byte_at_every_place(b"8BITMIME");
        every_byte_at_every_place(b"SMTPUTF8");
        every_byte_at_every_place(b"POSTMASTER");
        every_byte_at_every_place(b"BINARYMIME");
        assert!(eq_upper(b"pOsTmAsTeR", b"POSTMASTER"));
        assert!(!eq_upper(b"postmaste\xd2", b"POSTMASTER"));
    }
}
