//! Trace and identification headers: `Received:` (RFC 5321 §4.4), `Return-Path:`, `Message-ID:`,
//! the RFC 5322 date, and a streaming scanner of the header section (counting `Received:` for
//! the hop limit, finding `Message-ID:`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A message with this many `Received:` headers or more is refused as a loop (RFC 5321 §6.3
/// suggests 100).
pub const MAX_HOPS: usize = 100;

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

/// How the message came in, for the `with` clause (RFC 3848).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// EHLO (ESMTP) rather than HELO (SMTP).
    pub extended: bool,
    /// Over TLS.
    pub tls: bool,
    /// Authenticated.
    pub auth: bool,
}

impl Protocol {
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`.
    pub fn name(&self) -> &'static str {
        match (self.extended || self.tls || self.auth, self.tls, self.auth) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

/// The fields of one `Received:` header.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    /// What the client said in EHLO/HELO.
    pub helo: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// How it came in.
    pub protocol: Protocol,
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
    /// Received: from client.example (client.example [192.0.2.1])
    ///         by mx.example with ESMTPS id 18a3f...
    ///         for <bob@example.org>; Tue, 14 Nov 2023 22:13:20 +0000
    /// ```
    pub fn to_header(&self) -> String {
        let helo: String = self
            .helo
            .chars()
            .map(|c| {
                if c.is_control() || c == '(' || c == ')' {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        let helo = if helo.is_empty() {
            "unknown".to_owned()
        } else {
            helo
        };
        let ip = match crate::policy::canonical_ip(self.peer) {
            IpAddr::V4(a) => format!("[{a}]"),
            IpAddr::V6(a) => format!("[IPv6:{a}]"),
        };
        let mut h = format!(
            "Received: from {helo} ({ip})\r\n\tby {} with {} id {}",
            self.by,
            self.protocol.name(),
            self.id
        );
        if let Some(r) = self.for_rcpt {
            h.push_str(&format!("\r\n\tfor <{r}>"));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.date)));
        h
    }
}

/// `Return-Path: <sender>` + CRLF (`<>` for the null sender).
pub fn return_path(sender: &str) -> String {
    format!("Return-Path: <{sender}>\r\n")
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

const NAME_MAX: usize = 32;

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
            },
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
                auth: false
            }
            .name(),
            "SMTP"
        );
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
        let many = "Received: x\r\n".repeat(150) + "\r\n";
        assert_eq!(scan_in_pieces(many.as_bytes(), 7).received, 150);
    }
}
