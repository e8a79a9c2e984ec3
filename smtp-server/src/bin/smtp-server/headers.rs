//! Trace and identification headers: `Received:` (RFC 5321 §4.4), `Return-Path:`, `Message-ID:`,
//! `Date:`, the RFC 5322 date, making network text safe for a header, folding, and two
//! streaming readers of the header section: [`HeaderFilter`] (rewrites it as a message comes
//! in) and [`HeaderScanner`] (only looks).
//!
//! # What the header section of a stored or relayed message looks like
//!
//! ```text
//! Return-Path: <alice@example.org>        final delivery only (a local mailbox)
//! Received: from client.example ([192.0.2.1])
//!         (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
//!         by mx.example with UTF8SMTPS id 18a3f...
//!         for <bob@example.org>;
//!         Tue, 14 Nov 2023 22:13:20 +0000
//! Received: ...                           the message's own trace fields, as sent
//! Subject: ...                            the rest of the message's header section
//! Message-ID: <18a3f...@mx.example>       added when missing (submitted mail only)
//! Date: Tue, 14 Nov 2023 22:13:20 +0000   added when missing (submitted mail only)
//! ```
//!
//! Decisions:
//!
//! - Every `Return-Path:` field of the incoming message is dropped, whatever its case or
//!   folding, from both the local and the queued copy: the only `Return-Path:` is the one final
//!   delivery adds from the envelope (RFC 5321 §4.4: a relay SHOULD NOT send one; a forged one
//!   would sit beside ours). Postfix's cleanup does the same.
//! - `Date:` and `Message-ID:` are added when missing only to mail our own users submit (the
//!   loopback listener, or an implicit-TLS listener on loopback), never to mail from the public
//!   listener: Postfix's `local_header_rewrite_clients` default. They go at the end of the
//!   header section, as Postfix's cleanup appends them, so they are always below the trace
//!   block (our `Received:` and any trace fields at the top of the message) and trace fields
//!   stay together (RFC 5322 §3.6.7). They are decided at the end of the header section, so a
//!   message whose `Message-ID:` comes late still gets none added.
//! - The `with` clause names the protocol as RFC 3848 and RFC 6531 §3.7.3 register it:
//!   `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`, and `UTF8SMTP`, `UTF8SMTPS`, `UTF8SMTPA`,
//!   `UTF8SMTPSA` for a transaction with the `SMTPUTF8` parameter.
//! - On an encrypted session a comment in Postfix's format follows the `from` clause:
//!   `(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))`. rustls's suite names
//!   are given their OpenSSL names (which is what Postfix shows); the bits are the symmetric
//!   key's (both numbers, as OpenSSL reports for AEAD suites). An unknown suite is shown by
//!   its rustls name without bits. Postfix's newer `key-exchange ...` details are not known
//!   to the server library and not written.
//! - Nothing from the network reaches a header unchecked. The EHLO name is written as a word
//!   of ASCII letters, digits and `-._:[]` (plus letters and digits beyond ASCII in an
//!   SMTPUTF8 transaction), every other character as `?` (Postfix's `printable()` does the
//!   same), at most 255 octets. Addresses (`for <...>`, `Return-Path:`) keep their text except
//!   the characters of [`is_unsafe`] (controls, C1 controls such as U+0085, U+2028/U+2029,
//!   bidirectional and other invisible format characters) and `<`, `>`, which become `?`;
//!   non-ASCII is kept only in SMTPUTF8 transactions (where RFC 6532 allows it). Free text (a
//!   peer's reply in a bounce) is escaped by [`escape_text`] as `\x{HEX}` (RFC 6533's
//!   notation), so nothing is lost to the reader. The daemon does no reverse DNS lookup, so no
//!   name from DNS is written (only `[address]`).
//! - Generated header lines stay within 78 octets where a space allows and never exceed
//!   RFC 5322's 998 ([`fold`]).
//! - The message's content never continues a field we wrote. Our trace fields come first,
//!   so a message whose first line starts with white space (which an RFC 5322 reader would
//!   fold into our `Received:`, forging its clauses and date) has no field of its own to
//!   continue: its header section ends there, as at any line that is not a field (no colon
//!   after a valid name within [`LINE_MAX`] octets), and the empty line that separates the
//!   header section from the body is inserted before that line, so it is body text. Postfix
//!   does the same: its MIME parser (`mime_state_update()` in `src/global/mime_state.c`,
//!   used by cleanup) treats a line that is neither a header nor a continuation of one as
//!   "invalid input", forces out one blank line and goes to the body state.
//! - At most [`LINE_MAX`] octets of a line are held while its fate is unknown (a field name,
//!   white space before the colon): a line with no colon within that length cannot be a
//!   field, so it ends the header section there and what was held is written out.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use smtp_server::handler::TlsInfo;

/// The longest line RFC 5322 §2.1.1 allows, without its CRLF.
pub const LINE_MAX: usize = 998;

/// The line length RFC 5322 §2.1.1 recommends, without its CRLF.
pub const LINE_SOFT: usize = 78;

/// The longest EHLO name written into `Received:` (a domain's limit).
const WORD_MAX: usize = 255;

/// The longest address written into a header (RFC 5321's path limit is 256).
const ADDRESS_MAX: usize = 512;

/// A message with this many `Received:` headers or more is refused as a loop (RFC 5321 §6.3
/// suggests 100).
pub const MAX_HOPS: usize = 100;

/// The most of an `Authentication-Results:` field held to find its authserv-id (a comment may
/// come first); a field whose authserv-id is not found within it is dropped.
pub const AUTH_RESULTS_HELD_MAX: usize = 8192;

/// An RFC 5322 `date-time` in UTC, e.g. `Tue, 14 Nov 2023 22:13:20 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d} {mon} {y} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian (the
/// era-based algorithm from Howard Hinnant's `chrono`-compatible date notes).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// True for characters that are never written as they are into a header or a bounce: C0 and
/// C1 controls (U+0085 among them) and DEL, the line and paragraph separators U+2028/U+2029,
/// the bidirectional controls (U+061C, U+200E/F, U+202A-202E, U+2066-2069), the other
/// invisible format characters (soft hyphen, zero-width spaces and joiners, word joiners,
/// BOM, interlinear annotation, tags) and noncharacters.
pub fn is_unsafe(c: char) -> bool {
    // One list for the client's texts, the logs and the headers.
    smtp_client::text::is_unsafe_char(c)
}

/// Appends `c` as `\x{HEX}` (RFC 6533's `EmbeddedUnicodeChar` notation, at least two digits).
fn push_escaped(out: &mut String, c: char) {
    let _ = write!(out, "\\x{{{:02X}}}", c as u32);
}

/// Free text from the network (a reply text, a diagnostic) made safe for one header value or
/// text line: line breaks and tabs become spaces, runs of spaces one space, the result is
/// trimmed; [`is_unsafe`] characters, and every non-ASCII one when `ascii`, are written as
/// `\x{HEX}`.
pub fn escape_text(s: &str, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if matches!(c, '\r' | '\n' | '\t') {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else if is_unsafe(c) || (ascii && !c.is_ascii()) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Cuts `s` to at most `max` octets at a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A name from the network (the EHLO argument) as one word for a `Received:` clause: ASCII
/// letters, digits and `-._:[]` as they are, letters and digits beyond ASCII only when `utf8`
/// (an SMTPUTF8 transaction), anything else `?`; at most 255 octets; `unknown` when empty.
pub fn received_word(s: &str, utf8: bool) -> String {
    let mut out = String::with_capacity(s.len().min(WORD_MAX));
    for c in s.chars() {
        let keep = c.is_ascii_alphanumeric()
            || matches!(c, '-' | '.' | '_' | ':' | '[' | ']')
            || (utf8 && !c.is_ascii() && c.is_alphanumeric() && !is_unsafe(c));
        let c = if keep { c } else { '?' };
        if out.len() + c.len_utf8() > WORD_MAX {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "unknown".to_owned()
    } else {
        out
    }
}

/// An address from the envelope for a header (inside `<...>`): its text, with the
/// [`is_unsafe`] characters, `<` and `>` (and non-ASCII ones unless `utf8`) replaced by `?`;
/// at most 512 octets.
pub fn address_text(s: &str, utf8: bool) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if is_unsafe(c) || c == '<' || c == '>' || (!utf8 && !c.is_ascii()) {
                '?'
            } else {
                c
            }
        })
        .collect();
    truncate_str(&s, ADDRESS_MAX).to_owned()
}

/// Folds one logical header line (`Name: value`, without CRLF, no line breaks inside) before
/// spaces so that its lines stay within [`LINE_SOFT`] octets where a space allows; a piece
/// still longer than [`LINE_MAX`] is cut there (at a character boundary) and continues on the
/// next line after a space. Returns the lines, each ending with CRLF.
pub fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut cur = String::new();
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            // Never fold between the field name and the first word, nor before an empty
            // word (which would leave a line of white space only).
            if i > 1 && !word.is_empty() && cur.len() + 1 + word.len() > LINE_SOFT {
                push_hard(&mut out, &cur);
                cur.clear();
            }
            cur.push(' ');
        }
        cur.push_str(word);
    }
    push_hard(&mut out, &cur);
    out
}

/// Appends `line` with CRLF, cut into pieces of at most [`LINE_MAX`] octets (continuations
/// start with a space).
fn push_hard(out: &mut String, line: &str) {
    let mut rest = line;
    let mut lead = false;
    loop {
        let room = LINE_MAX - usize::from(lead);
        let piece = truncate_str(rest, room);
        if lead {
            out.push(' ');
        }
        out.push_str(piece);
        out.push_str("\r\n");
        rest = &rest[piece.len()..];
        if rest.is_empty() || piece.is_empty() {
            return;
        }
        lead = true;
    }
}

/// How the message came in, for the `with` clause (RFC 3848, RFC 6531 §3.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// EHLO (ESMTP) rather than HELO (SMTP).
    pub extended: bool,
    /// Over TLS.
    pub tls: bool,
    /// Authenticated.
    pub auth: bool,
    /// The transaction used `SMTPUTF8` (RFC 6531).
    pub utf8: bool,
}

impl Protocol {
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`, or for SMTPUTF8 `UTF8SMTP`,
    /// `UTF8SMTPS`, `UTF8SMTPA`, `UTF8SMTPSA`.
    pub fn name(&self) -> &'static str {
        let extended = self.extended || self.tls || self.auth || self.utf8;
        match (extended, self.utf8, self.tls, self.auth) {
            (false, ..) => "SMTP",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        }
    }
}

/// rustls's name of a cipher suite (`TLS13_AES_256_GCM_SHA384`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) as OpenSSL (and so Postfix) names it
/// (`TLS_AES_256_GCM_SHA384`, `ECDHE-RSA-AES128-GCM-SHA256`), with the symmetric key's bits
/// when known.
fn openssl_cipher(rustls: &str) -> (String, Option<u32>) {
    let bits = if rustls.contains("AES_256") || rustls.contains("CHACHA20") {
        Some(256)
    } else if rustls.contains("AES_128") {
        Some(128)
    } else {
        None
    };
    if let Some(rest) = rustls.strip_prefix("TLS13_") {
        return (format!("TLS_{rest}"), bits);
    }
    if let Some((kx, cipher)) = rustls
        .strip_prefix("TLS_")
        .and_then(|r| r.split_once("_WITH_"))
    {
        let cipher = match cipher {
            "AES_128_GCM_SHA256" => Some("AES128-GCM-SHA256"),
            "AES_256_GCM_SHA384" => Some("AES256-GCM-SHA384"),
            "CHACHA20_POLY1305_SHA256" => Some("CHACHA20-POLY1305"),
            _ => None,
        };
        if let Some(cipher) = cipher {
            return (format!("{}-{cipher}", kx.replace('_', "-")), bits);
        }
    }
    (rustls.to_owned(), bits)
}

/// The comment Postfix writes into `Received:` for an encrypted session:
/// `(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))`.
pub fn tls_comment(info: &TlsInfo) -> String {
    let (name, bits) = openssl_cipher(&info.cipher);
    let name = received_word(&name, false);
    let protocol = received_word(&info.protocol, false);
    match bits {
        Some(b) => format!("(using {protocol} with cipher {name} ({b}/{b} bits))"),
        None => format!("(using {protocol} with cipher {name})"),
    }
}

/// The fields of one `Received:` header.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    /// What the client said in EHLO/HELO (as sent: made safe here).
    pub helo: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// How it came in.
    pub protocol: Protocol,
    /// The TLS parameters, on an encrypted session.
    pub tls: Option<&'a TlsInfo>,
    /// Our id for the transaction.
    pub id: &'a str,
    /// The recipient, when there is exactly one (RFC 5321: not for several).
    pub for_rcpt: Option<&'a str>,
    /// When it arrived.
    pub date: SystemTime,
}

impl Received<'_> {
    /// The header, folded, ending with CRLF:
    ///
    /// ```text
    /// Received: from client.example ([192.0.2.1])
    ///         (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
    ///         by mx.example with ESMTPS id 18a3f...
    ///         for <bob@example.org>;
    ///         Tue, 14 Nov 2023 22:13:20 +0000
    /// ```
    pub fn to_header(&self) -> String {
        let utf8 = self.protocol.utf8;
        let helo = received_word(self.helo, utf8);
        let ip = match crate::policy::canonical_ip(self.peer) {
            IpAddr::V4(a) => format!("[{a}]"),
            IpAddr::V6(a) => format!("[IPv6:{a}]"),
        };
        let mut h = format!("Received: from {helo} ({ip})\r\n");
        if let Some(t) = self.tls {
            h.push('\t');
            h.push_str(&tls_comment(t));
            h.push_str("\r\n");
        }
        h.push_str(&format!(
            "\tby {} with {} id {}",
            self.by,
            self.protocol.name(),
            self.id
        ));
        if let Some(r) = self.for_rcpt {
            h.push_str(&format!("\r\n\tfor <{}>", address_text(r, utf8)));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.date)));
        h
    }
}

/// The `Received:` header of a message made here (a bounce), folded:
/// `Received: from localhost\r\n\tby host with local id ID;\r\n\tDATE\r\n`.
pub fn local_received(hostname: &str, id: &str, date: SystemTime) -> String {
    format!(
        "Received: from localhost\r\n\tby {hostname} with local id {id};\r\n\t{}\r\n",
        rfc5322_date(date)
    )
}

/// `Return-Path: <sender>` + CRLF (`<>` for the null sender); the address made safe by
/// [`address_text`] (non-ASCII kept: a non-ASCII sender implies SMTPUTF8).
pub fn return_path(sender: &str) -> String {
    format!("Return-Path: <{}>\r\n", address_text(sender, true))
}

/// A unique id for a transaction or message: time, process and a counter, in hex.
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}{:05x}.{:x}.{n:x}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// A `Message-ID:` header line for a message that has none.
pub fn message_id_header(id: &str, hostname: &str) -> String {
    format!("Message-ID: <{id}@{hostname}>\r\n")
}

/// The fields added at the end of the header section of a submitted message that lacks them.
#[derive(Debug, Clone)]
pub struct Missing {
    /// The `Message-ID:` line, with CRLF.
    pub message_id: String,
    /// The `Date:` line, with CRLF.
    pub date: String,
}

impl Missing {
    /// `Message-ID: <id@hostname>` and `Date:` of `t`.
    pub fn new(id: &str, hostname: &str, t: SystemTime) -> Missing {
        Missing {
            message_id: message_id_header(id, hostname),
            date: format!("Date: {}\r\n", rfc5322_date(t)),
        }
    }

    /// `Message-ID: <id@hostname>` alone (`date` empty: nothing added): for mail from the
    /// network that is relayed onward (an alias with a remote target), which large providers
    /// refuse without one.
    pub fn message_id_only(id: &str, hostname: &str) -> Missing {
        Missing {
            message_id: message_id_header(id, hostname),
            date: String::new(),
        }
    }
}

/// Where a [`HeaderFilter`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filtering {
    /// At the start of a header line: its first octets are held until the line is known to
    /// be a field (and which), a continuation, or the end of the header section; `wsp` once
    /// white space followed the name (obsolete `Name :` syntax).
    Start { wsp: bool },
    /// In the rest of a line whose fate is known.
    Line,
    /// In the body: everything passes.
    Body,
}

/// Rewrites the header section of a message as it streams by, in chunks of any size: drops
/// every `Return-Path:` field (with its continuation lines), and, when given our authserv-id
/// ([`drop_auth_results_of`](Self::drop_auth_results_of)), every `Authentication-Results:`
/// field that claims it (RFC 8601 §5: a forger could otherwise pre-fill our verdicts); counts
/// `Received:` fields (the hop limit), and, when given [`Missing`] fields, adds those the
/// message lacks just before the header section ends. The body passes unchanged.
///
/// An `Authentication-Results:` field is held (at most [`AUTH_RESULTS_HELD_MAX`] octets)
/// until its authserv-id (the first token or quoted string after the colon, comments and
/// folding skipped) is known, then passed or dropped whole, continuation lines included. The
/// comparison ignores ASCII case and a final dot. A field whose authserv-id cannot be found
/// within the held length, or that ends before one, is dropped too (it is malformed, and a
/// lenient reader might take it for ours), as is one whose authserv-id is not a plain host
/// name: labels of letters, digits, `-` and `_`, none empty (an encoded word
/// `=?us-ascii?q?...?=`, a backslash, a byte order mark, any non-ASCII, `mx..example`: a
/// reader might decode or tidy it into ours). `ARC-Authentication-Results:` fields are kept: they
/// belong to an ARC set sealed by the signer its `ARC-Seal:` names, removing one would break
/// that chain, and the ARC verdict in our own field says whether the set holds.
///
/// The header section ends at the first empty line, or at the first line that is not a field
/// (no colon after a valid field name within [`LINE_MAX`] octets, or white space at the start
/// of the message, where the field above is ours), which RFC 5322 parsers also treat as the
/// body's start; added fields go before that line, and so does the empty line that ends the
/// header section (as Postfix inserts it), so that the line can never continue a field above
/// it. At most [`LINE_MAX`] octets of a line's start are held.
#[derive(Debug, Clone)]
pub struct HeaderFilter {
    add: Option<Missing>,
    state: Filtering,
    /// The held start of the current line (at most [`LINE_MAX`] octets).
    line: Vec<u8>,
    /// The current field is being dropped (continuation lines follow it).
    dropping: bool,
    /// A field of the message has begun (kept or dropped), so a line starting with white
    /// space continues it; before that, the field above is the last one we wrote.
    in_field: bool,
    /// Number of `Received:` fields in the message's header section.
    pub received: usize,
    /// A `Message-ID:` field was seen.
    pub has_message_id: bool,
    /// A `Date:` field was seen.
    pub has_date: bool,
    /// How many `Return-Path:` fields were dropped.
    pub dropped_return_paths: usize,
    /// Our authserv-id (the host name), lower case, without a final dot.
    authserv_id: Option<String>,
    /// The current field is an `Authentication-Results:` whose authserv-id is not known yet:
    /// what was seen of it (written out or dropped once it is).
    held: Option<Vec<u8>>,
    /// How many `Authentication-Results:` fields claiming our authserv-id were dropped.
    pub dropped_auth_results: usize,
}

impl HeaderFilter {
    /// A filter at the start of a message; `add` are the fields to add when missing.
    pub fn new(add: Option<Missing>) -> HeaderFilter {
        HeaderFilter {
            add,
            state: Filtering::Start { wsp: false },
            line: Vec::new(),
            dropping: false,
            in_field: false,
            received: 0,
            has_message_id: false,
            has_date: false,
            dropped_return_paths: 0,
            authserv_id: None,
            held: None,
            dropped_auth_results: 0,
        }
    }

    /// Also drops every `Authentication-Results:` field whose authserv-id is `id` (see the
    /// type's doc).
    #[must_use]
    pub fn drop_auth_results_of(mut self, id: &str) -> HeaderFilter {
        self.authserv_id = Some(id.trim_end_matches('.').to_ascii_lowercase());
        self
    }

    /// True once the header section has ended.
    pub fn in_body(&self) -> bool {
        self.state == Filtering::Body
    }

    /// Filters the next chunk, appending what is to be stored to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                Filtering::Body => {
                    out.extend_from_slice(&chunk[i..]);
                    return;
                }
                Filtering::Line => {
                    let (end, eol) = match chunk[i..].iter().position(|&b| b == b'\n') {
                        Some(p) => (i + p + 1, true),
                        None => (chunk.len(), false),
                    };
                    self.emit(&chunk[i..end], out);
                    if eol {
                        self.state = Filtering::Start { wsp: false };
                    }
                    i = end;
                }
                Filtering::Start { wsp } => {
                    let b = chunk[i];
                    i += 1;
                    self.line.push(b);
                    self.step(b, wsp, out);
                }
            }
        }
    }

    /// Classifies the held line start after octet `b` was added to it.
    fn step(&mut self, b: u8, wsp: bool, out: &mut Vec<u8>) {
        let len = self.line.len();
        if len == 1 && (b == b' ' || b == b'\t') {
            if self.in_field {
                // A continuation line of the message's current field (dropped with it).
                self.pass_line(out);
            } else {
                // The field above is one of ours: the content may not continue it.
                self.end_of_header(out);
            }
            return;
        }
        match b {
            b'\n' => {
                // The empty line, or a line without a colon: the body starts.
                self.end_of_header(out);
            }
            b':' => {
                // The field before is complete.
                self.settle(out);
                let mut name = &self.line[..len - 1];
                while let [rest @ .., b' ' | b'\t'] = name {
                    name = rest;
                }
                if name.is_empty() || name.iter().any(|&c| !(33..=126).contains(&c)) {
                    self.end_of_header(out);
                    return;
                }
                self.dropping = false;
                self.in_field = true;
                if name.eq_ignore_ascii_case(b"return-path") {
                    self.dropping = true;
                    self.dropped_return_paths += 1;
                } else if self.authserv_id.is_some()
                    && name.eq_ignore_ascii_case(b"authentication-results")
                {
                    self.held = Some(Vec::new());
                } else if name.eq_ignore_ascii_case(b"received") {
                    self.received += 1;
                } else if name.eq_ignore_ascii_case(b"message-id") {
                    self.has_message_id = true;
                } else if name.eq_ignore_ascii_case(b"date") {
                    self.has_date = true;
                }
                self.pass_line(out);
            }
            // No colon within the line limit: not a field, whatever follows (and the held
            // octets never exceed the limit).
            _ if len >= LINE_MAX => self.end_of_header(out),
            b' ' | b'\t' => self.state = Filtering::Start { wsp: true },
            b'\r' if len == 1 => {}
            33..=126 if !wsp => {}
            _ => self.end_of_header(out),
        }
    }

    /// The held line start is decided: it goes out (unless dropped) and the rest of the line
    /// follows it.
    fn pass_line(&mut self, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.line);
        let ended = line.last() == Some(&b'\n');
        self.emit(&line, out);
        self.line = line;
        self.line.clear();
        self.state = if ended {
            Filtering::Start { wsp: false }
        } else {
            Filtering::Line
        };
    }

    /// Octets of the current field (or its continuation): dropped, held, or written out.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.dropping {
            return;
        }
        match &mut self.held {
            Some(held) => {
                held.extend_from_slice(bytes);
                self.decide(out, false);
            }
            None => out.extend_from_slice(bytes),
        }
    }

    /// The held `Authentication-Results:` field is complete: pass or drop it.
    fn settle(&mut self, out: &mut Vec<u8>) {
        self.decide(out, true);
    }

    /// Decides the held field's fate once its authserv-id is known (or cannot be: `complete`,
    /// or too much held), and writes it out or drops it.
    fn decide(&mut self, out: &mut Vec<u8>, complete: bool) {
        let (Some(held), Some(ours)) = (&self.held, &self.authserv_id) else {
            return;
        };
        let value = match held.iter().position(|&b| b == b':') {
            Some(colon) => &held[colon + 1..],
            None if complete => &[][..],
            None => return,
        };
        let keep = match authserv_id(value, complete) {
            // Kept: another host's name. Dropped: ours, and anything a reader could decode
            // or show as ours (an encoded word, a backslash, a byte order mark or other
            // non-ASCII, an empty id).
            Some(id) => {
                let id = id.strip_suffix(b".").unwrap_or(&id);
                let host_name = !id.is_empty()
                    && id.split(|&b| b == b'.').all(|label| {
                        !label.is_empty()
                            && label
                                .iter()
                                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                    });
                host_name && !id.eq_ignore_ascii_case(ours.as_bytes())
            }
            None if complete || held.len() > AUTH_RESULTS_HELD_MAX => false,
            None => return,
        };
        let Some(held) = self.held.take() else {
            return;
        };
        if keep {
            out.extend_from_slice(&held);
        } else {
            self.dropping = true;
            self.dropped_auth_results += 1;
        }
    }

    /// The header section ends before the held line: the missing fields, then, unless the
    /// held line is the empty line (or nothing), the empty line that ends the header section,
    /// then the held line (the body's first).
    fn end_of_header(&mut self, out: &mut Vec<u8>) {
        self.settle(out);
        self.add_missing(out);
        if !matches!(self.line.as_slice(), b"" | b"\r\n" | b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.line);
        self.line.clear();
        self.dropping = false;
        self.state = Filtering::Body;
    }

    fn add_missing(&mut self, out: &mut Vec<u8>) {
        if let Some(m) = self.add.take() {
            if !self.has_message_id {
                out.extend_from_slice(m.message_id.as_bytes());
            }
            if !self.has_date {
                out.extend_from_slice(m.date.as_bytes());
            }
        }
    }

    /// The message ended: a message that was all header section gets its missing fields at
    /// its end (after a CRLF when its last line was not ended, which only BDAT allows).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            Filtering::Body => {}
            Filtering::Line => {
                self.emit(b"\r\n", out);
                self.end_of_header(out);
            }
            Filtering::Start { .. } => self.end_of_header(out),
        }
    }
}

/// The authserv-id at the start of an `Authentication-Results:` value (RFC 8601 §2.2: a
/// token or a quoted string, after optional comments and folding white space), or `None`
/// while it is not known yet: the value ends inside a comment, a quoted string or the token
/// (unless `complete`, when the token ends with the value). A complete value without one gives
/// an empty id.
fn authserv_id(value: &[u8], complete: bool) -> Option<Vec<u8>> {
    let mut i = 0;
    loop {
        match value.get(i) {
            Some(b' ' | b'\t' | b'\r' | b'\n') => i += 1,
            Some(b'(') => i = crate::from_field::comment_end(value, i)?,
            Some(b'"') => {
                // The quoted pairs unescaped, as a reader compares them.
                let mut id = Vec::new();
                let mut j = i + 1;
                loop {
                    match value.get(j) {
                        None => return None,
                        Some(b'\\') => {
                            id.extend(value.get(j + 1));
                            j += 2;
                        }
                        Some(b'"') => return Some(id),
                        Some(&b) => {
                            id.push(b);
                            j += 1;
                        }
                    }
                }
            }
            Some(_) => {
                let rest = &value[i..];
                return match rest
                    .iter()
                    .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b'"'))
                {
                    Some(end) => Some(rest[..end].to_vec()),
                    None if complete => Some(rest.to_vec()),
                    None => None,
                };
            }
            None if complete => return Some(Vec::new()),
            None => return None,
        }
    }
}

/// Reads the header section of a message as it streams by, in chunks of any size: counts
/// `Received:` fields, notes a `Message-ID:`, and finds where the header section ends.
///
/// The header section ends at the first empty line, or at the first line that is not a field
/// (no colon before white space), which RFC 5322 parsers also treat as the body's start.
#[derive(Debug, Default, Clone)]
pub struct HeaderScanner {
    done: bool,
    /// Bytes of the current line seen so far, kept only up to the field name's length limit.
    line: Vec<u8>,
    /// The current line's name was already classified.
    classified: bool,
    /// Octets consumed before the header section ended (the body offset), once known.
    end: Option<u64>,
    consumed: u64,
    /// Number of `Received:` fields.
    pub received: usize,
    /// A `Message-ID:` field was seen.
    pub has_message_id: bool,
}

/// Field names are held up to the line limit (names such as
/// `X-MS-Exchange-CrossTenant-OriginalArrivalTime` are longer than 32 octets).
const NAME_MAX: usize = LINE_MAX;

impl HeaderScanner {
    /// A scanner at the start of a message.
    pub fn new() -> HeaderScanner {
        HeaderScanner::default()
    }

    /// True once the header section has ended.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The offset of the body (just after the header section and its empty line, or the
    /// start of the first non-field line), once known.
    pub fn header_len(&self) -> Option<u64> {
        self.end
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.done {
                return;
            }
            self.consumed += 1;
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let empty = line == b"\r" || line.is_empty();
                if empty && !self.classified {
                    self.done = true;
                    self.end = Some(self.consumed);
                    return;
                }
                if !self.classified {
                    self.classify(&line, true);
                    if self.done {
                        // a line without a colon: the body starts at it
                        self.end = Some(self.consumed - line.len() as u64 - 1);
                        return;
                    }
                }
                self.classified = false;
                continue;
            }
            if self.classified {
                continue;
            }
            self.line.push(b);
            if b == b':' || self.line.len() > NAME_MAX {
                let line = std::mem::take(&mut self.line);
                self.classify(&line, false);
                if self.done {
                    self.end = Some(self.consumed - line.len() as u64);
                    return;
                }
                self.classified = true;
            }
        }
    }

    /// Looks at the start of a line: a continuation (leading white space), a field name
    /// followed by `:`, or something else (the body starts).
    fn classify(&mut self, start: &[u8], whole_line: bool) {
        if matches!(start.first(), Some(b' ' | b'\t')) {
            return; // folded continuation of the previous field
        }
        let Some(colon) = start.iter().position(|&b| b == b':') else {
            // No colon within the name limit (or on the whole line).
            let _ = whole_line;
            self.done = true;
            return;
        };
        let name = &start[..colon];
        let name = name.strip_suffix(b" ").unwrap_or(name); // obs-fields allow WSP before ':'
        if name.is_empty() || name.iter().any(|&b| !(33..=126).contains(&b)) {
            self.done = true;
            return;
        }
        if name.eq_ignore_ascii_case(b"received") {
            self.received += 1;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            self.has_message_id = true;
        }
    }
}

/// The header section of a message held in a reader: everything up to and including the empty
/// line (or up to the body's first line), at most `limit` bytes.
pub fn header_section(message: &[u8], limit: usize) -> &[u8] {
    let mut s = HeaderScanner::new();
    s.feed(message);
    let end = s
        .header_len()
        .map(|e| e as usize)
        .unwrap_or(message.len())
        .min(limit)
        .min(message.len());
    &message[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc5322_date(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
        // 2100 is not a leap year: 2100-02-28 23:59:59 is followed by March 1st.
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(4_107_542_399)),
            "Sun, 28 Feb 2100 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(4_107_542_400)),
            "Mon, 1 Mar 2100 00:00:00 +0000"
        );
    }

    #[test]
    fn received_header() {
        let h = Received {
            helo: "client.example",
            peer: "::ffff:192.0.2.1".parse().unwrap(),
            by: "mx.example",
            protocol: Protocol {
                extended: true,
                tls: true,
                auth: false,
                utf8: false,
            },
            tls: None,
            id: "abc",
            for_rcpt: Some("bob@example.org"),
            date: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
        .to_header();
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example with ESMTPS id abc\r\n\
             \tfor <bob@example.org>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert_eq!(
            Protocol {
                extended: false,
                tls: false,
                auth: false,
                utf8: false,
            }
            .name(),
            "SMTP"
        );
        let p = |tls, auth| Protocol {
            extended: true,
            tls,
            auth,
            utf8: true,
        };
        assert_eq!(p(false, false).name(), "UTF8SMTP");
        assert_eq!(p(true, false).name(), "UTF8SMTPS");
        assert_eq!(p(false, true).name(), "UTF8SMTPA");
        assert_eq!(p(true, true).name(), "UTF8SMTPSA");
    }

    #[test]
    fn received_is_safe_for_any_helo_and_address() {
        let tls = TlsInfo::new("TLSv1.3", "TLS13_AES_256_GCM_SHA384");
        let nasty = "a\u{2028}b\u{85}c\u{202E}d\u{2066}e\u{200F}f\u{61C}g\0h\u{1b}i(j)k;l\r\nX: y";
        for utf8 in [false, true] {
            let h = Received {
                helo: nasty,
                peer: "192.0.2.1".parse().unwrap(),
                by: "mx.example",
                protocol: Protocol {
                    extended: true,
                    tls: true,
                    auth: false,
                    utf8,
                },
                tls: Some(&tls),
                id: "abc",
                for_rcpt: Some("\"x\u{2028}>y\"@b\u{202E}.example"),
                date: UNIX_EPOCH,
            }
            .to_header();
            assert!(
                h.starts_with("Received: from a?b?c?d?e?f?g?h?i?j?k?l??X:?y ([192.0.2.1])\r\n"),
                "{h}"
            );
            assert!(h.contains("\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.example with "), "{h}");
            assert!(h.contains("\tfor <\"x??y\"@b?.example>;\r\n"), "{h}");
            assert!(
                h.chars()
                    .all(|c| !is_unsafe(c) || c == '\r' || c == '\n' || c == '\t'),
                "{h:?}"
            );
            // Every line but the first is a continuation: one field.
            for l in h.trim_end().split("\r\n").skip(1) {
                assert!(l.starts_with('\t'), "{l:?}");
            }
        }
        // Letters beyond ASCII only in an SMTPUTF8 transaction.
        assert_eq!(received_word("bücher.example", true), "bücher.example");
        assert_eq!(received_word("bücher.example", false), "b?cher.example");
        assert_eq!(received_word("", false), "unknown");
        assert_eq!(received_word(&"a".repeat(600), false).len(), 255);
        assert_eq!(return_path("a\u{2028}b@x"), "Return-Path: <a?b@x>\r\n");
    }

    #[test]
    fn cipher_names_as_postfix_shows_them() {
        let c = |p: &str, s: &str| tls_comment(&TlsInfo::new(p, s));
        assert_eq!(
            c("TLSv1.3", "TLS13_CHACHA20_POLY1305_SHA256"),
            "(using TLSv1.3 with cipher TLS_CHACHA20_POLY1305_SHA256 (256/256 bits))"
        );
        assert_eq!(
            c("TLSv1.3", "TLS13_AES_128_GCM_SHA256"),
            "(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits))"
        );
        assert_eq!(
            c("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            "(using TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits))"
        );
        assert_eq!(
            c("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
            "(using TLSv1.2 with cipher ECDHE-ECDSA-CHACHA20-POLY1305 (256/256 bits))"
        );
        assert_eq!(
            c("TLSv1.2", "Unknown(0x1234)"),
            "(using TLSv1.2 with cipher Unknown?0x1234?)"
        );
    }

    #[test]
    fn escaping_and_folding() {
        assert_eq!(
            escape_text(" 550 a\r\n\tb\u{2028}c\u{85}d é ", false),
            "550 a b\\x{2028}c\\x{85}d é"
        );
        assert_eq!(escape_text("é\u{202E}\0", true), "\\x{E9}\\x{202E}\\x{00}");
        let long = format!("Diagnostic-Code: smtp; {}", "word ".repeat(100));
        let f = fold(long.trim_end());
        for l in f.split_terminator("\r\n") {
            assert!(l.len() <= LINE_SOFT, "{l:?}");
        }
        assert_eq!(f.replace("\r\n", ""), long.trim_end());
        let huge = format!("X: {}", "é".repeat(2000));
        let f = fold(&huge);
        for (i, l) in f.split_terminator("\r\n").enumerate() {
            assert!(l.len() <= LINE_MAX, "{}", l.len());
            assert_eq!(i > 0, l.starts_with(' '));
        }
        assert_eq!(f.replace("\r\n ", "").trim_end(), huge);
        assert_eq!(fold("A: b"), "A: b\r\n");
    }

    fn filter_in_pieces(msg: &[u8], piece: usize, add: bool) -> (Vec<u8>, HeaderFilter) {
        let mut f = HeaderFilter::new(add.then(|| Missing {
            message_id: "Message-ID: <new@here>\r\n".into(),
            date: "Date: now\r\n".into(),
        }));
        let mut out = Vec::new();
        for c in msg.chunks(piece) {
            f.feed(c, &mut out);
        }
        f.finish(&mut out);
        (out, f)
    }

    #[test]
    fn filter_drops_return_paths_and_adds_missing_fields_below_the_trace() {
        let msg = b"Received: a\r\n\tb\r\nRETURN-path: <forged@x>\r\n\t<more@x>\r\n\
            Received: c\r\nreturn-Path :<f2@x>\r\nX-MS-Exchange-CrossTenant-OriginalArrivalTime: 1\r\n\
            Subject: s\r\n\r\nReturn-Path: body\r\n";
        let want = b"Received: a\r\n\tb\r\nReceived: c\r\n\
            X-MS-Exchange-CrossTenant-OriginalArrivalTime: 1\r\nSubject: s\r\n\
            Message-ID: <new@here>\r\nDate: now\r\n\r\nReturn-Path: body\r\n";
        for piece in 1..msg.len() {
            let (out, f) = filter_in_pieces(msg, piece, true);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "piece {piece}"
            );
            assert_eq!(f.received, 2);
            assert_eq!(f.dropped_return_paths, 2);
            assert!(f.in_body());
        }
        // Present fields are not added again; without `add` nothing is added.
        let msg = b"Date: d\r\nmessage-id: <m@x>\r\n\r\nbody\r\n";
        assert_eq!(filter_in_pieces(msg, 3, true).0, msg);
        let msg = b"Subject: s\r\n\r\nbody\r\n";
        assert_eq!(filter_in_pieces(msg, 3, false).0, msg);
        // A message that is all header section, or has none, or ends mid-line (BDAT).
        assert_eq!(
            filter_in_pieces(b"Subject: s\r\n", 4, true).0,
            b"Subject: s\r\nMessage-ID: <new@here>\r\nDate: now\r\n"
        );
        assert_eq!(
            filter_in_pieces(b"no header here\r\nSubject: x\r\n", 4, true).0,
            b"Message-ID: <new@here>\r\nDate: now\r\n\r\nno header here\r\nSubject: x\r\n"
        );
        assert_eq!(
            filter_in_pieces(b"Subject: s", 4, true).0,
            b"Subject: s\r\nMessage-ID: <new@here>\r\nDate: now\r\n"
        );
        assert_eq!(
            filter_in_pieces(b"Return-Path: <x>", 4, true).0,
            b"Message-ID: <new@here>\r\nDate: now\r\n"
        );
        // A field name longer than the line limit is not a field.
        let long = format!("{}: x\r\n\r\n", "X".repeat(1200));
        let (out, _) = filter_in_pieces(long.as_bytes(), 100, true);
        assert!(out.starts_with(b"Message-ID: <new@here>\r\nDate: now\r\n\r\nXXX"));
    }

    /// What our prefix looks like in these tests: its last line could be continued.
    const PREFIX: &[u8] = b"Received: from client.example ([192.0.2.1])\r\n\
        \tby mx.example with ESMTP id 1;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n";

    /// The length of the first field of `m` as an RFC 5322 reader sees it: its first line and
    /// the lines starting with white space that follow.
    fn filter_results(msg: &[u8], piece: usize) -> (Vec<u8>, usize) {
        let mut f = HeaderFilter::new(None).drop_auth_results_of("MX.Example.test.");
        let mut out = Vec::new();
        for c in msg.chunks(piece) {
            f.feed(c, &mut out);
        }
        f.finish(&mut out);
        (out, f.dropped_auth_results)
    }

    #[test]
    fn auth_results_claiming_our_authserv_id_are_dropped_others_kept() {
        let ours = [
            "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n",
            "Authentication-Results: MX.EXAMPLE.TEST.; spf=pass\r\n",
            "authentication-results:mx.example.test;spf=pass\r\n",
            "Authentication-Results:\r\n (a comment (nested \\) )) \"mx.ex\\ample.test\" 1;\r\n\tdkim=pass\r\n",
            "Authentication-Results : mx.example.test (version?) ; none\r\n",
            "Authentication-Results: (a comment that never ends\r\n",
            "Authentication-Results: mx.example.test\r\n",
            "Authentication-Results: =?us-ascii?q?mx.example.test?=; dkim=pass\r\n",
            "Authentication-Results: mx\\.example.test; dkim=pass\r\n",
            "Authentication-Results: \u{feff}mx.example.test; dkim=pass\r\n",
            "Authentication-Results: mx.ex\u{e4}mple.test; dkim=pass\r\n",
            "Authentication-Results: \"\"; dkim=pass\r\n",
            "Authentication-Results: mx.example.test..; dkim=pass\r\n",
            "Authentication-Results: .mx.example.test; dkim=pass\r\n",
            "Authentication-Results: mx..example.test; dkim=pass\r\n",
        ];
        let theirs = [
            "Authentication-Results: mx.other.test; dkim=pass\r\n",
            "Authentication-Results: mx.example.test.evil; spf=pass\r\n",
            "Authentication-Results: (mx.example.test) other.test;\r\n spf=pass\r\n",
            "ARC-Authentication-Results: i=1; mx.example.test; spf=pass\r\n",
            "X-Authentication-Results: mx.example.test; spf=pass\r\n",
        ];
        for piece in [1, 3, 7, 4096] {
            for field in ours {
                let msg = format!(
                    "Subject: a\r\n{field}To: b\r\n\r\nAuthentication-Results: mx.example.test\r\n"
                );
                let (out, n) = filter_results(msg.as_bytes(), piece);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    "Subject: a\r\nTo: b\r\n\r\nAuthentication-Results: mx.example.test\r\n",
                    "{field:?} piece {piece}"
                );
                assert_eq!(n, 1);
                // Last in the header section, and as the whole message.
                let msg = format!("Subject: a\r\n{field}\r\nbody\r\n");
                let (out, _) = filter_results(msg.as_bytes(), piece);
                assert_eq!(out, b"Subject: a\r\n\r\nbody\r\n", "{field:?}");
                let (out, _) = filter_results(field.as_bytes(), piece);
                assert_eq!(out, b"", "{field:?}");
            }
            for field in theirs {
                let msg = format!("Subject: a\r\n{field}To: b\r\n\r\nx\r\n");
                let (out, n) = filter_results(msg.as_bytes(), piece);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    msg,
                    "{field:?} piece {piece}"
                );
                assert_eq!(n, 0);
            }
        }
        // A comment too long to find the authserv-id behind: dropped, and only so much held.
        let long = format!(
            "Authentication-Results: ({})\r\n other.test; none\r\nTo: b\r\n\r\n",
            "c".repeat(AUTH_RESULTS_HELD_MAX + 10)
        );
        assert_eq!(filter_results(long.as_bytes(), 512).0, b"To: b\r\n\r\n");
        // Without an authserv-id to drop, every field stays.
        let mut f = HeaderFilter::new(None);
        let mut out = Vec::new();
        f.feed(ours[0].as_bytes(), &mut out);
        f.finish(&mut out);
        assert!(out.starts_with(ours[0].as_bytes()));
    }

    fn first_field_len(m: &[u8]) -> usize {
        let mut len = 0;
        for (i, l) in m.split_inclusive(|&b| b == b'\n').enumerate() {
            if i > 0 && !matches!(l.first(), Some(b' ' | b'\t')) {
                break;
            }
            len += l.len();
        }
        len
    }

    /// True when `out`, written after [`PREFIX`], leaves our field as it is: nothing follows,
    /// or the empty line, or a field of its own (a name and a colon), never a continuation.
    fn leaves_our_field_alone(out: &[u8]) -> bool {
        let first = out.split(|&b| b == b'\n').next().unwrap_or(b"");
        out.is_empty()
            || out.starts_with(b"\r\n")
            || out.starts_with(b"\n")
            || first.iter().position(|&b| b == b':').is_some_and(|c| {
                let name = first[..c].trim_ascii_end();
                !name.is_empty() && name.iter().all(|b| (33..=126).contains(b))
            })
    }

    #[test]
    fn content_never_continues_our_fields() {
        let forged =
            " (authenticated as admin) by trusted.host; Mon, 1 Jan 1990 00:00:00 +0000\r\n";
        let cases: Vec<(String, bool, String)> = vec![
            // White space at the start: body text after the empty line we insert.
            (
                format!("{forged}Subject: s\r\n\r\nbody\r\n"),
                false,
                format!("\r\n{forged}Subject: s\r\n\r\nbody\r\n"),
            ),
            (
                format!("{forged}Subject: s\r\n"),
                true,
                format!("Message-ID: <new@here>\r\nDate: now\r\n\r\n{forged}Subject: s\r\n"),
            ),
            ("\tx\r\n".into(), false, "\r\n\tx\r\n".into()),
            (" \r\n\r\n".into(), false, "\r\n \r\n\r\n".into()),
            // BDAT: a last line without CRLF.
            (
                " x".into(),
                true,
                "Message-ID: <new@here>\r\nDate: now\r\n\r\n x".into(),
            ),
            // The empty line first: the header section is ours alone.
            ("\r\n x\r\n".into(), false, "\r\n x\r\n".into()),
            (
                "\r\n x\r\n".into(),
                true,
                "Message-ID: <new@here>\r\nDate: now\r\n\r\n x\r\n".into(),
            ),
            // A dropped Return-Path takes its continuation lines with it.
            (
                "Return-Path: <x@y>\r\n (more)\r\n\t(more)\r\nSubject: s\r\n (cont)\r\n\r\nb\r\n"
                    .into(),
                false,
                "Subject: s\r\n (cont)\r\n\r\nb\r\n".into(),
            ),
            ("Return-Path: <x@y>\r\n (more)\r\n".into(), false, "".into()),
            // A bare CR, then white space: not a field.
            ("\r x\r\n".into(), false, "\r\n\r x\r\n".into()),
        ];
        for (msg, add, want) in &cases {
            for piece in 1..=msg.len() {
                let (out, f) = filter_in_pieces(msg.as_bytes(), piece, *add);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    *want,
                    "{msg:?} piece {piece}"
                );
                assert!(leaves_our_field_alone(&out), "{out:?}");
                assert_eq!(first_field_len(&[PREFIX, &out].concat()), PREFIX.len());
                assert!(f.in_body());
            }
        }
    }

    #[test]
    fn a_line_is_held_up_to_the_line_limit_only() {
        let run = " ".repeat(5 << 20);
        let msgs = [
            // A name followed by megabytes of white space and no colon.
            format!("X{run}\r\nSubject: s\r\n\r\nbody\r\n"),
            // The same after a field, and with a colon at the end of the run.
            format!("Subject: s\r\nX{run}: v\r\n\r\nbody\r\n"),
            // White space after a bare CR.
            format!("\r{run}\r\n"),
            // A name megabytes long.
            format!("{}\r\n", "X".repeat(5 << 20)),
        ];
        for msg in &msgs {
            let msg = msg.as_bytes();
            // The line ends the header section where it starts; everything is kept.
            let at = if msg.starts_with(b"Subject") { 12 } else { 0 };
            let mut want = msg[..at].to_vec();
            want.extend_from_slice(b"Message-ID: <new@here>\r\nDate: now\r\n\r\n");
            want.extend_from_slice(&msg[at..]);
            for piece in [1, 7, 999, 4096, 65_536, msg.len()] {
                let mut f = HeaderFilter::new(Some(Missing {
                    message_id: "Message-ID: <new@here>\r\n".into(),
                    date: "Date: now\r\n".into(),
                }));
                let mut out = Vec::new();
                for c in msg.chunks(piece) {
                    f.feed(c, &mut out);
                    assert!(f.line.len() <= LINE_MAX, "held {}", f.line.len());
                }
                f.finish(&mut out);
                assert!(f.in_body());
                assert!(out == want, "piece {piece}: {:?}", &out[..80]);
            }
        }
        // At the limit: a name and its colon within 998 octets are a field, one more is not.
        let field = format!("{}: v\r\n\r\n", "X".repeat(LINE_MAX - 1));
        assert_eq!(
            filter_in_pieces(field.as_bytes(), 10, false).0,
            field.as_bytes()
        );
        let field = format!("X{}: v\r\n\r\n", " ".repeat(LINE_MAX - 2));
        assert_eq!(
            filter_in_pieces(field.as_bytes(), 10, false).0,
            field.as_bytes()
        );
        let long = format!("{}: v\r\n\r\n", "X".repeat(LINE_MAX));
        assert_eq!(
            filter_in_pieces(long.as_bytes(), 10, false).0,
            format!("\r\n{long}").as_bytes()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// For any content cut anywhere, what follows our prefix never continues its last
        /// field, the same bytes come out whatever the pieces, and no more than a line is held.
        #[test]
        fn our_fields_are_never_extended(
            content in proptest::collection::vec(
                proptest::sample::select(&b" \t\r\n:Xx-R\xe9"[..]), 0..64),
            words in proptest::collection::vec(
                proptest::sample::select(&["Return-Path:", "Received:", "Subject: s", " ", "\r\n",
                    "X", "\t"][..]), 0..8),
            piece in 1usize..9,
            add in proptest::bool::ANY,
        ) {
            let mut msg: Vec<u8> = words.concat().into_bytes();
            msg.extend_from_slice(&content);
            let (whole, _) = filter_in_pieces(&msg, msg.len().max(1), add);
            let (out, f) = filter_in_pieces(&msg, piece, add);
            proptest::prop_assert_eq!(&out, &whole);
            proptest::prop_assert!(f.line.len() <= LINE_MAX);
            proptest::prop_assert!(leaves_our_field_alone(&out), "{:?}", String::from_utf8_lossy(&out));
            proptest::prop_assert_eq!(first_field_len(&[PREFIX, &out].concat()), PREFIX.len());
        }
    }

    fn scan_in_pieces(msg: &[u8], piece: usize) -> HeaderScanner {
        let mut s = HeaderScanner::new();
        for c in msg.chunks(piece) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn scanner() {
        let msg = b"Received: a\r\n\tb\r\nreceived : c\r\nMessage-Id: <x@y>\r\nX-Received: d\r\n\r\nReceived: body\r\n";
        for piece in 1..msg.len() {
            let s = scan_in_pieces(msg, piece);
            assert_eq!(s.received, 2, "piece {piece}");
            assert!(s.has_message_id);
            assert_eq!(s.header_len(), Some(msg.len() as u64 - 16));
        }
        let s = scan_in_pieces(b"Subject: x\r\nnot a header line\r\nReceived: y\r\n", 3);
        assert_eq!(s.received, 0);
        assert_eq!(s.header_len(), Some(12));
        assert!(!s.has_message_id);
        assert_eq!(header_section(b"A: b\r\n\r\nbody", 100), b"A: b\r\n\r\n");
        // A field name longer than 32 octets is still a field (it ended the header section).
        let s = scan_in_pieces(
            b"X-MS-Exchange-CrossTenant-OriginalArrivalTime: 1\r\nReceived: y\r\n\r\n",
            5,
        );
        assert_eq!(s.received, 1);
        let many = "Received: x\r\n".repeat(150) + "\r\n";
        assert_eq!(scan_in_pieces(many.as_bytes(), 7).received, 150);
    }
}
