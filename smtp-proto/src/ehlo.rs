//! The EHLO reply (RFC 5321 §4.1.1.1): a builder for the server ([`EhloReply::to_reply`]) and
//! its inverse for the client ([`parse_ehlo`]).
//!
//! ```text
//! ehlo-ok-rsp  = ( "250" SP Domain [ SP ehlo-greet ] CRLF )
//!              / ( "250-" Domain [ SP ehlo-greet ] CRLF
//!                  *( "250-" ehlo-line CRLF )
//!                  "250" SP ehlo-line CRLF )
//! ehlo-line    = ehlo-keyword *( SP ehlo-param )
//! ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
//! ehlo-param   = 1*(%d33-126)
//! ```
//!
//! Parsing is lenient where servers in the wild differ: keywords are case-insensitive, `SIZE`
//! with a missing or unreadable number is `Size(None)`, the pre-RFC 4954 form `AUTH=PLAIN LOGIN`
//! is read like `AUTH PLAIN LOGIN` (mechanisms from several AUTH lines are merged into the first
//! `Auth`), and unknown keywords are kept as [`Capability::Other`].

use crate::reply::Reply;

/// One service extension advertised in an EHLO reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// `PIPELINING` (RFC 2920).
    Pipelining,
    /// `SIZE [n]` (RFC 1870): the fixed maximum message size in octets; `None` or `Some(0)`
    /// means no fixed limit is announced.
    Size(Option<u64>),
    /// `8BITMIME` (RFC 6152).
    EightBitMime,
    /// `SMTPUTF8` (RFC 6531).
    SmtpUtf8,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    EnhancedStatusCodes,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `CHUNKING` (RFC 3030).
    Chunking,
    /// `BINARYMIME` (RFC 3030).
    BinaryMime,
    /// `AUTH mech...` (RFC 4954): the SASL mechanisms offered.
    Auth(Vec<String>),
    /// `DSN` (RFC 3461).
    Dsn,
    /// Any other keyword with its parameters, as sent.
    Other(String, Vec<String>),
}

impl Capability {
    /// The EHLO keyword, upper case for the known ones, as given for [`Capability::Other`].
    pub fn keyword(&self) -> &str {
        match self {
            Self::Pipelining => "PIPELINING",
            Self::Size(_) => "SIZE",
            Self::EightBitMime => "8BITMIME",
            Self::SmtpUtf8 => "SMTPUTF8",
            Self::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Self::StartTls => "STARTTLS",
            Self::Chunking => "CHUNKING",
            Self::BinaryMime => "BINARYMIME",
            Self::Auth(_) => "AUTH",
            Self::Dsn => "DSN",
            Self::Other(keyword, _) => keyword,
        }
    }

    /// The EHLO line for this capability, e.g. `SIZE 10485760` or `AUTH PLAIN LOGIN`.
    pub fn to_line(&self) -> String {
        let mut line = self.keyword().to_owned();
        let params: &[String] = match self {
            Self::Size(Some(n)) => {
                line.push(' ');
                line.push_str(&n.to_string());
                &[]
            }
            Self::Auth(mechs) => mechs,
            Self::Other(_, params) => params,
            _ => &[],
        };
        for p in params {
            line.push(' ');
            line.push_str(p);
        }
        line
    }

    /// Whether the capability can be written as one `ehlo-line` (RFC 5321 §4.1.1.1): the
    /// keyword `(ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`, each parameter `1*(%d33-126)` (so no
    /// space, CR, LF or other control character, which would split the line or add one).
    /// [`EhloReply::to_reply`] leaves out a capability that is not.
    pub fn is_valid(&self) -> bool {
        let keyword_ok = is_ehlo_keyword(self.keyword());
        let params: &[String] = match self {
            Self::Auth(mechs) => mechs,
            Self::Other(_, params) => params,
            _ => &[],
        };
        keyword_ok
            && params
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| (33..=126).contains(&b)))
    }

    /// Reads one EHLO line (`keyword *(SP param)`); `None` for an empty line.
    pub fn from_line(line: &str) -> Option<Self> {
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let keyword = words.next()?;
        let upper = keyword.to_ascii_uppercase();
        let cap = match upper.as_str() {
            "PIPELINING" => Self::Pipelining,
            "SIZE" => Self::Size(words.next().and_then(|n| n.parse().ok())),
            "8BITMIME" => Self::EightBitMime,
            "SMTPUTF8" => Self::SmtpUtf8,
            "ENHANCEDSTATUSCODES" => Self::EnhancedStatusCodes,
            "STARTTLS" => Self::StartTls,
            "CHUNKING" => Self::Chunking,
            "BINARYMIME" => Self::BinaryMime,
            "DSN" => Self::Dsn,
            "AUTH" => Self::Auth(words.map(str::to_owned).collect()),
            _ if upper.starts_with("AUTH=") => {
                let first = &keyword["AUTH=".len()..];
                Self::Auth(
                    std::iter::once(first)
                        .filter(|m| !m.is_empty())
                        .chain(words)
                        .map(str::to_owned)
                        .collect(),
                )
            }
            _ => Self::Other(keyword.to_owned(), words.map(str::to_owned).collect()),
        };
        Some(cap)
    }
}

/// Whether `word` is an `ehlo-keyword`: `(ALPHA / DIGIT) *(ALPHA / DIGIT / "-")` (also the
/// shape of a command verb a session may hand to its caller).
pub(crate) fn is_ehlo_keyword(word: &str) -> bool {
    let b = word.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// The server's answer to EHLO: its domain, a greeting and the extensions it offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EhloReply {
    /// The server's host name (first word of the first line).
    pub domain: String,
    /// The rest of the first line (may be empty).
    pub greeting: String,
    /// The extensions, one reply line each, in order.
    pub capabilities: Vec<Capability>,
}

impl EhloReply {
    /// An EHLO reply with no capabilities yet.
    pub fn new(domain: impl Into<String>, greeting: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            greeting: greeting.into(),
            capabilities: Vec::new(),
        }
    }

    /// Adds a capability (builder style).
    #[must_use]
    pub fn with(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }

    /// The `250` reply: first line `domain greeting`, then one line per capability. Never
    /// carries an enhanced code (RFC 2034 §3 exempts the EHLO reply).
    ///
    /// The reply has exactly one line per capability [`Capability::is_valid`] says can be
    /// written, and no other: an invalid one is left out (not offered), and control
    /// characters in the domain or greeting (a CR or LF would start a line of their own,
    /// read by the client as a capability) are written as `?`.
    pub fn to_reply(&self) -> Reply {
        let first = if self.greeting.is_empty() {
            self.domain.clone()
        } else {
            format!("{} {}", self.domain, self.greeting)
        };
        let first = if first.chars().any(char::is_control) {
            first
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        } else {
            first
        };
        let lines = std::iter::once(first).chain(
            self.capabilities
                .iter()
                .filter(|c| c.is_valid())
                .map(Capability::to_line),
        );
        Reply::from_joined(250, None, crate::reply::join_lines(lines))
    }

    /// Whether a capability with this keyword is offered (case-insensitive; `AUTH` matches the
    /// `Auth` capability).
    pub fn has(&self, keyword: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.keyword().eq_ignore_ascii_case(keyword))
    }

    /// The announced fixed maximum message size; `None` when SIZE is absent, has no number, or
    /// is `0` (RFC 1870: no fixed maximum).
    pub fn size(&self) -> Option<u64> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::Size(Some(n)) if *n > 0 => Some(*n),
            _ => None,
        })
    }

    /// The SASL mechanisms offered by AUTH (empty when AUTH is not offered).
    pub fn auth_mechanisms(&self) -> &[String] {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::Auth(m) => Some(m.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }
}

/// Why [`parse_ehlo`] refused a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EhloError {
    /// The reply is not `250`: the server refused EHLO (a client may fall back to HELO on 5yz).
    #[error("EHLO refused: {0}")]
    NotAccepted(Reply),
}

/// Reads a `250` EHLO reply into its domain, greeting and capabilities (the client side).
///
/// # Errors
/// [`EhloError::NotAccepted`] when the reply code is not 250.
pub fn parse_ehlo(reply: &Reply) -> Result<EhloReply, EhloError> {
    if reply.code() != 250 {
        return Err(EhloError::NotAccepted(reply.clone()));
    }
    let mut lines = reply.lines();
    let first = lines.next().unwrap_or("");
    let (domain, greeting) = first.split_once(' ').unwrap_or((first, ""));
    let mut ehlo = EhloReply::new(domain, greeting);
    for cap in lines.filter_map(Capability::from_line) {
        if let Capability::Auth(more) = &cap {
            let existing = ehlo.capabilities.iter_mut().find_map(|c| match c {
                Capability::Auth(m) => Some(m),
                _ => None,
            });
            if let Some(mechs) = existing {
                for m in more {
                    if !mechs.iter().any(|x| x.eq_ignore_ascii_case(m)) {
                        mechs.push(m.clone());
                    }
                }
                continue;
            }
        }
        ehlo.capabilities.push(cap);
    }
    Ok(ehlo)
}
