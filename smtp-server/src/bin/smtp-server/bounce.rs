//! Delivery status notifications (RFC 3464): the bounce sent to a sender whose mail could not
//! be delivered.
//!
//! The message is `multipart/report; report-type=delivery-status` with three parts: a short
//! text for people, the `message/delivery-status` part (per-message fields, then one block per
//! failed recipient), and part of the original message's header section as
//! `text/rfc822-headers` (RFC 6522). When the original was internationalized (a non-ASCII
//! sender, recipient or original recipient, or UTF-8 in the returned header fields) the
//! bounce is an RFC 6533 one: `report-type=global-delivery-status`,
//! `message/global-delivery-status` (non-ASCII addresses as `utf-8; ...`) and
//! `message/global-headers`, with UTF-8 text sent as `8bit`; otherwise every generated line is
//! ASCII (non-ASCII text escaped as `\x{HEX}`, as RFC 6533 writes it).
//! It is sent from the null sender `<>`; a message that itself came from `<>` gets no bounce.
//!
//! # Size and content policy (amplification, backscatter)
//!
//! A bounce is sent to an address nobody verified: for mail from the public listener the
//! envelope sender may be forged, so a bounce can be made to carry an attacker's text to a
//! third party ("backscatter"), and a peer's reply is text someone else chose. Postfix is the
//! anchor: it returns at most `bounce_size_limit` (50 000) octets of the original, and its
//! BACKSCATTER_README's answer is to refuse at RCPT time rather than accept and bounce, which
//! this daemon does for unknown local users (`550 5.1.1`) and relaying (`554 5.7.1`). What
//! remains are bounces of accepted mail: relayed mail of our users, and mail to an alias with a
//! remote target that the remote refuses. For those this daemon is stricter than Postfix:
//!
//! - **Never the body**, whatever `RET=FULL` asked: only header fields are returned.
//! - **Bounces that stay here** (the sender is a local mailbox: our own users' mail, or a forged
//!   local sender, which harms nobody outside) return the header section, whole fields only,
//!   at most [`RETURN_HEADERS_MAX`] octets ([`Returned::Headers`]).
//! - **Bounces that leave this host** (the sender is remote: this covers every forged sender of
//!   public-listener mail) return only `Date:`, `From:`, `To:`, `Subject:` and `Message-ID:`,
//!   each unfolded and cut to [`MINIMAL_FIELD_MAX`] octets ([`Returned::Minimal`]): enough for a
//!   real sender to know which message it was, too little to reflect anybody's bulk.
//! - **A peer's reply** is kept to its first [`REPLY_LINES`] lines and [`DIAG_MAX`] octets
//!   ([`summarize_reply`], also what the queue records), and every diagnostic in a bounce is
//!   escaped and cut to [`DIAG_MAX`] octets.
//! - **Recipients**: at most [`MAX_LISTED`] failed recipients are reported in full (text and
//!   delivery-status blocks), and fewer when their reports pass [`LIST_BUDGET`] octets; the rest
//!   are counted in one sentence. So a bounce is at most about 64 KB, however many recipients
//!   failed and whatever the peers said.
//! - **Lines**: every generated line is folded to at most 78 octets where a space allows and
//!   never more than 998 (RFC 5322 §2.1.1); returned header lines are cut at 998.
//! - **How many**: to a remote sender, at most one bounce per message: failed recipients are
//!   kept as `Refused` in the queue entry until none is pending, and one bounce lists them
//!   all (the relay decides when; backscatter can never be more than one small message per
//!   message accepted). To a local sender, one per delivery attempt that had failures, as
//!   Postfix reports once per queue pass, so our own users learn of a refusal at once. Never
//!   a bounce to the null sender, so bounces never bounce.

use std::time::SystemTime;

use crate::headers::{
    escape_text, fold, is_unsafe, message_id_header, received_word, rfc5322_date, truncate_str,
    unique_id, HeaderScanner, LINE_MAX,
};

/// The most failed recipients reported in full in one bounce.
pub const MAX_LISTED: usize = 50;

/// The most octets the reports of the listed recipients take (text and delivery-status
/// together); recipients past it are counted, not listed.
pub const LIST_BUDGET: usize = 48 * 1024;

/// The most octets of one diagnostic (a peer's reply, a local reason) kept.
pub const DIAG_MAX: usize = 512;

/// The most lines of a peer's multi-line reply kept.
pub const REPLY_LINES: usize = 5;

/// The most octets of original header fields returned by a bounce that stays on this host.
pub const RETURN_HEADERS_MAX: usize = 8 * 1024;

/// The most octets of each field a bounce that leaves this host returns.
pub const MINIMAL_FIELD_MAX: usize = 200;

/// The fields a bounce that leaves this host returns (first occurrence of each).
const MINIMAL_FIELDS: [&str; 5] = ["date", "from", "to", "subject", "message-id"];

/// A peer's reply as one bounded line for the queue and the bounce: `head` (the code and the
/// enhanced code, e.g. `550 5.1.1`), then the first [`REPLY_LINES`] lines of text joined with
/// spaces, and a note of how many lines were left out; at most [`DIAG_MAX`] octets.
pub fn summarize_reply<'a>(head: &str, lines: impl IntoIterator<Item = &'a str>) -> String {
    let lines: Vec<&str> = lines.into_iter().collect();
    let mut s = head.to_owned();
    for l in lines.iter().take(REPLY_LINES) {
        s.push(' ');
        s.push_str(l);
        if s.len() > DIAG_MAX {
            break;
        }
    }
    let note = if lines.len() > REPLY_LINES {
        format!(" [{} more lines]", lines.len() - REPLY_LINES)
    } else {
        String::new()
    };
    let s = truncate_str(&s, DIAG_MAX.saturating_sub(note.len())).to_owned();
    s + &note
}

/// One recipient that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The recipient address (`bob@example.net`).
    pub recipient: String,
    /// The original recipient from `ORCPT=`, as `type;address`, if given.
    pub orcpt: Option<String>,
    /// The last reply or the reason (`550 5.1.1 no such user`, or a local explanation).
    pub diagnostic: String,
    /// The host that gave the reply, if a remote one did.
    pub remote_mta: Option<String>,
    /// The status to report, when not the one in the diagnostic (e.g. `4.4.7` for expiry).
    pub status: Option<String>,
}

/// True for an RFC 3463 status `class.subject.detail`.
fn is_status(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Failure {
    /// The RFC 3463 status for the `Status:` field: the given one if valid, else the enhanced
    /// code at the start of the diagnostic's text if there is one, else derived from the reply
    /// code (5.0.0 / 4.0.0).
    pub fn status(&self) -> String {
        if let Some(s) = self.status.as_deref().filter(|s| is_status(s)) {
            return s.to_owned();
        }
        let mut words = self.diagnostic.split_whitespace();
        let code = words.next().unwrap_or("");
        if let Some(enh) = words.next().filter(|e| is_status(e)) {
            return enh.to_owned();
        }
        if code.starts_with('4') {
            "4.0.0".into()
        } else {
            "5.0.0".into()
        }
    }
}

/// Which of the original header fields a bounce returns (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// The header section, whole fields, up to [`RETURN_HEADERS_MAX`] octets: for a bounce
    /// delivered to a local mailbox.
    Headers,
    /// `Date:`, `From:`, `To:`, `Subject:`, `Message-ID:`, each cut to
    /// [`MINIMAL_FIELD_MAX`]: for a bounce that leaves this host.
    Minimal,
}

/// What the bounce reports on.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name (Reporting-MTA, From: MAILER-DAEMON@...).
    pub hostname: &'a str,
    /// The original sender, who receives the bounce (never empty here).
    pub sender: &'a str,
    /// The `ENVID=` of the original message.
    pub envid: Option<&'a str>,
    /// When the original message arrived.
    pub arrival: SystemTime,
    /// The failed recipients.
    pub failures: &'a [Failure],
    /// The original message's beginning: its header section (or as much of it as was read).
    /// Nothing past the header section is ever returned.
    pub original: &'a [u8],
    /// Which header fields are returned.
    pub returned: Returned,
    /// Now.
    pub now: SystemTime,
}

/// One header field of the original: its lines, without line ends.
type Field<'a> = Vec<&'a [u8]>;

/// The fields of a header section (continuation lines with their field).
fn fields(section: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match (line.first(), out.last_mut()) {
            (Some(b' ' | b'\t'), Some(f)) => f.push(line),
            _ => out.push(vec![line]),
        }
    }
    out
}

/// The field's name, lower case.
fn field_name(f: &Field<'_>) -> String {
    let first = f.first().copied().unwrap_or_default();
    let name = first.split(|&b| b == b':').next().unwrap_or_default();
    String::from_utf8_lossy(name).trim().to_ascii_lowercase()
}

/// One line of original header text made safe for the bounce: invalid UTF-8 as U+FFFD (or
/// `?` in an ASCII bounce), [`is_unsafe`] characters other than tab as `?`, non-ASCII as `?`
/// when `ascii`; cut at [`LINE_MAX`] octets.
fn clean_line(line: &[u8], ascii: bool) -> String {
    let s: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c == '\t' {
                c
            } else if is_unsafe(c) || (ascii && !c.is_ascii()) {
                '?'
            } else {
                c
            }
        })
        .collect();
    truncate_str(&s, LINE_MAX).to_owned()
}

/// The selected original fields (raw), and whether some were left out for size.
fn select(original: &[u8], returned: Returned) -> (Vec<Field<'_>>, bool) {
    let mut scan = HeaderScanner::new();
    scan.feed(original);
    let end = scan
        .header_len()
        .map_or(original.len(), |e| usize::try_from(e).unwrap_or(usize::MAX))
        .min(original.len());
    let all = fields(&original[..end]);
    match returned {
        Returned::Headers => {
            let mut size = 0;
            let mut out = Vec::new();
            for f in all {
                let len: usize = f.iter().map(|l| l.len().min(LINE_MAX) + 2).sum();
                if size + len > RETURN_HEADERS_MAX {
                    return (out, true);
                }
                size += len;
                out.push(f);
            }
            (out, false)
        }
        Returned::Minimal => {
            let mut seen: Vec<String> = Vec::new();
            let mut out = Vec::new();
            let mut left_out = false;
            for f in all {
                let name = field_name(&f);
                if MINIMAL_FIELDS.contains(&name.as_str()) && !seen.contains(&name) {
                    seen.push(name);
                    out.push(f);
                } else {
                    left_out = true;
                }
            }
            (out, left_out)
        }
    }
}

/// The returned fields as text, each line cleaned; in [`Returned::Minimal`] each field is
/// unfolded and cut to [`MINIMAL_FIELD_MAX`] octets.
fn render_fields(selected: &[Field<'_>], returned: Returned, ascii: bool) -> String {
    let mut out = String::new();
    for f in selected {
        match returned {
            Returned::Headers => {
                for l in f {
                    out.push_str(&clean_line(l, ascii));
                    out.push_str("\r\n");
                }
            }
            Returned::Minimal => {
                let joined: Vec<u8> = f.join(&b' ');
                let line = clean_line(&joined, ascii);
                out.push_str(truncate_str(&line, MINIMAL_FIELD_MAX));
                out.push_str("\r\n");
            }
        }
    }
    out
}

/// True when `s` holds a non-ASCII character (only possible with SMTPUTF8).
fn non_ascii(s: &str) -> bool {
    !s.is_ascii()
}

/// An address as an RFC 3464/6533 `address-type; address` value: `rfc822; a@b` for ASCII,
/// `utf-8; ...` for a non-ASCII one; escaped ([`escape_text`]) either way.
fn typed_address(addr: &str, ascii: bool) -> String {
    let kind = if non_ascii(addr) { "utf-8" } else { "rfc822" };
    format!("{kind}; {}", truncate_str(&escape_text(addr, ascii), 1024))
}

impl Report<'_> {
    /// The complete bounce message (CRLF line ends), bounded as the module docs say.
    pub fn to_message(&self) -> Vec<u8> {
        let (selected, left_out) = select(self.original, self.returned);
        let headers_utf8 = selected
            .iter()
            .flatten()
            .any(|l| !l.is_ascii() && std::str::from_utf8(l).is_ok());
        let global = non_ascii(self.sender)
            || self
                .failures
                .iter()
                .any(|f| non_ascii(&f.recipient) || f.orcpt.as_deref().is_some_and(non_ascii))
            || headers_utf8;
        let ascii = !global;
        let cte = if global { "8bit" } else { "7bit" };

        let boundary = format!("=_bounce_{}", unique_id());
        let mut m = String::new();
        m.push_str(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
            self.hostname
        ));
        if self
            .sender
            .chars()
            .any(|c| is_unsafe(c) || c == '<' || c == '>')
        {
            // Not writable as an address: the envelope still has it.
            m.push_str("To: undisclosed-recipients:;\r\n");
        } else {
            m.push_str(&fold(&format!("To: <{}>", truncate_str(self.sender, 1024))));
        }
        m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
        m.push_str(&format!("Date: {}\r\n", rfc5322_date(self.now)));
        m.push_str(&message_id_header(&unique_id(), self.hostname));
        m.push_str("Auto-Submitted: auto-replied\r\n");
        m.push_str("MIME-Version: 1.0\r\n");
        let report_type = if global {
            "global-delivery-status"
        } else {
            "delivery-status"
        };
        m.push_str(&format!(
            "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n"
        ));
        m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

        // The per-recipient reports, listed within the bounds.
        let mut text = String::new();
        let mut blocks = String::new();
        let mut listed = 0;
        for f in self.failures {
            if listed == MAX_LISTED || text.len() + blocks.len() > LIST_BUDGET {
                break;
            }
            let diag = truncate_str(&escape_text(&f.diagnostic, ascii), DIAG_MAX).to_owned();
            let rcpt = truncate_str(&escape_text(&f.recipient, ascii), 1024).to_owned();
            text.push_str(&fold(&format!("<{rcpt}>: {diag}")));
            blocks.push_str("\r\n");
            if let Some(o) = &f.orcpt {
                let (kind, addr) = o.split_once(';').unwrap_or(("rfc822", o));
                let kind = if non_ascii(addr) {
                    "utf-8".to_owned()
                } else {
                    received_word(kind, false)
                };
                blocks.push_str(&fold(&format!(
                    "Original-Recipient: {kind}; {}",
                    truncate_str(&escape_text(addr, ascii), 1024)
                )));
            }
            blocks.push_str(&fold(&format!(
                "Final-Recipient: {}",
                typed_address(&f.recipient, ascii)
            )));
            blocks.push_str("Action: failed\r\n");
            blocks.push_str(&format!("Status: {}\r\n", f.status()));
            if let Some(r) = &f.remote_mta {
                blocks.push_str(&format!("Remote-MTA: dns; {}\r\n", received_word(r, false)));
            }
            let diag_type = if f
                .diagnostic
                .get(..3)
                .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
            {
                "smtp"
            } else {
                "x-local"
            };
            blocks.push_str(&fold(&format!("Diagnostic-Code: {diag_type}; {diag}")));
            blocks.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                rfc5322_date(self.now)
            ));
            listed += 1;
        }
        let unlisted = self.failures.len() - listed;

        // 1. For people.
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        m.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
        m.push_str("Content-Description: Notification\r\n\r\n");
        m.push_str(&fold(&format!(
            "This is the mail system at host {}.",
            self.hostname
        )));
        m.push_str(
            "\r\nYour message could not be delivered to one or more recipients.\r\n\
             It has not been delivered to them and will not be retried.\r\n\r\n",
        );
        m.push_str(&text);
        if unlisted > 0 {
            m.push_str(&format!(
                "\r\n... and {unlisted} more recipient(s), not listed to keep this report small.\r\n"
            ));
        }
        match (self.returned, left_out) {
            (Returned::Headers, true) => m.push_str(
                "\r\nOnly the first header fields of your message are returned below.\r\n",
            ),
            (Returned::Minimal, _) => {
                m.push_str("\r\nOnly a few header fields of your message are returned below.\r\n")
            }
            (Returned::Headers, false) => {}
        }
        m.push_str("\r\n");

        // 2. For programs.
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str(&format!("Content-Type: message/{report_type}\r\n"));
        if global {
            m.push_str("Content-Transfer-Encoding: 8bit\r\n");
        }
        m.push_str("Content-Description: Delivery report\r\n\r\n");
        m.push_str(&format!("Reporting-MTA: dns; {}\r\n", self.hostname));
        if let Some(e) = self.envid {
            m.push_str(&fold(&format!(
                "Original-Envelope-Id: {}",
                truncate_str(&escape_text(e, true), 200)
            )));
        }
        m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(self.arrival)));
        m.push_str(&blocks);
        m.push_str("\r\n");

        // 3. The original header fields.
        m.push_str(&format!("--{boundary}\r\n"));
        if global {
            m.push_str("Content-Type: message/global-headers\r\n");
            m.push_str("Content-Transfer-Encoding: 8bit\r\n");
        } else {
            m.push_str("Content-Type: text/rfc822-headers\r\n");
        }
        m.push_str("Content-Description: Undelivered Message Headers\r\n\r\n");
        m.push_str(&render_fields(&selected, self.returned, ascii));
        m.push_str(&format!("\r\n--{boundary}--\r\n"));
        m.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn report<'a>(failures: &'a [Failure], original: &'a [u8], returned: Returned) -> Report<'a> {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Report {
            hostname: "mx.example",
            sender: "alice@example.org",
            envid: None,
            arrival: t,
            failures,
            original,
            returned,
            now: t,
        }
    }

    fn failure(rcpt: &str, diag: &str) -> Failure {
        Failure {
            recipient: rcpt.into(),
            orcpt: None,
            diagnostic: diag.into(),
            remote_mta: Some("mx.remote.test".into()),
            status: None,
        }
    }

    /// Every line ends with CRLF and is at most 998 octets.
    fn assert_lines(m: &[u8]) {
        assert!(m.ends_with(b"\r\n"));
        for l in m.split(|&b| b == b'\n') {
            assert!(l.len() <= LINE_MAX + 1, "line of {} octets", l.len());
            assert!(!l[..l.len().saturating_sub(1)].contains(&b'\r'), "bare CR");
        }
        let s = String::from_utf8(m.to_vec()).unwrap();
        assert!(!s.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn report_layout() {
        let mut f = failure("bob@remote.test", "550 5.1.1 no such user\r\n");
        f.orcpt = Some("rfc822;bob@remote.test".into());
        let failures = [f];
        let r = report(
            &failures,
            b"Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody text\r\n",
            Returned::Headers,
        );
        let m = String::from_utf8(r.to_message()).unwrap();
        assert!(m.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(m.contains("Content-Type: message/delivery-status\r\n"));
        assert!(m.contains("Reporting-MTA: dns; mx.example\r\n"));
        assert!(m.contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
        assert!(m.contains("Original-Recipient: rfc822; bob@remote.test\r\nFinal-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"), "{m}");
        assert!(m.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(m.contains("Subject: hi\r\nFrom: alice@example.org\r\n"));
        assert!(!m.contains("body text"));
        assert!(m.starts_with(
            "From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\nTo: <alice@example.org>\r\n"
        ));
        assert!(m.ends_with("--\r\n"));
        assert!(m.is_ascii());
        assert_lines(m.as_bytes());
    }

    #[test]
    fn status_from_diagnostic() {
        let f = |d: &str| Failure {
            recipient: "x@y".into(),
            orcpt: None,
            diagnostic: d.into(),
            remote_mta: None,
            status: None,
        };
        assert_eq!(f("554 5.4.6 loop").status(), "5.4.6");
        assert_eq!(f("550 no").status(), "5.0.0");
        assert_eq!(f("451 4.4.1 try later").status(), "4.4.1");
        assert_eq!(f("message expired").status(), "5.0.0");
        let mut g = f("550 x");
        g.status = Some("5.1.1\r\nX: y".into());
        assert_eq!(g.status(), "5.0.0");
    }

    #[test]
    fn replies_are_summarized() {
        let lines: Vec<String> = (0..900)
            .map(|i| format!("line {i} {}", "x".repeat(50)))
            .collect();
        let s = summarize_reply("550 5.7.1", lines.iter().map(String::as_str));
        assert!(s.len() <= DIAG_MAX, "{}", s.len());
        assert!(s.starts_with("550 5.7.1 line 0 "), "{s}");
        assert!(s.ends_with(" [895 more lines]"), "{s}");
        assert_eq!(summarize_reply("550", ["a", "b"]), "550 a b");
    }

    #[test]
    fn a_huge_failure_makes_a_small_bounce() {
        // 100 recipients, each refused with a 900-line reply as the queue records it (the
        // queue keeps the summary; here the raw join, to show the bounce bounds it too).
        let reply = format!("550 5.7.1 {}", "spam spam spam spam ".repeat(2700));
        let failures: Vec<Failure> = (0..100)
            .map(|i| failure(&format!("user{i}@remote.test"), &reply))
            .collect();
        let mut original = Vec::new();
        for i in 0..1000 {
            original.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(60)).as_bytes());
        }
        original.extend_from_slice(format!("X-Long: {}\r\n\r\n", "z".repeat(54_000)).as_bytes());
        original.extend_from_slice(&b"body\r\n".repeat(10_000));
        for returned in [Returned::Headers, Returned::Minimal] {
            let m = report(&failures, &original, returned).to_message();
            assert!(m.len() < 64 * 1024, "{} octets", m.len());
            assert_lines(&m);
            let s = String::from_utf8(m).unwrap();
            assert!(s.contains("more recipient(s), not listed"), "{s}");
            assert!(s.matches("Final-Recipient:").count() <= MAX_LISTED);
            assert!(!s.contains("body\r\n"));
            for l in s.split("\r\n") {
                if !l.starts_with("X-") {
                    assert!(l.len() <= 78, "{l:?}");
                }
            }
        }
    }

    #[test]
    fn minimal_return_has_only_identifying_fields() {
        let failures = [failure("bob@remote.test", "550 5.1.1 no")];
        let original = format!(
            "Received: from x\r\nSubject: hello\r\n there\r\nX-Bulk: {}\r\nFrom: a@b\r\nTo: c@d\r\n\
             Date: now\r\nMessage-ID: <1@b>\r\nSubject: second\r\n\r\nbody\r\n",
            "b".repeat(50_000)
        );
        let m = report(&failures, original.as_bytes(), Returned::Minimal).to_message();
        let s = String::from_utf8(m).unwrap();
        let part = s
            .split("Content-Description: Undelivered Message Headers\r\n\r\n")
            .nth(1)
            .unwrap();
        let part = part.split("\r\n--").next().unwrap();
        assert_eq!(
            part,
            "Subject: hello  there\r\nFrom: a@b\r\nTo: c@d\r\nDate: now\r\nMessage-ID: <1@b>\r\n"
        );
        assert!(s.len() < 4096, "{}", s.len());
    }

    #[test]
    fn network_text_cannot_inject_into_the_bounce() {
        let nasty = "550 5.1.1 no\r\nX-Injected: yes\u{2028}\u{85}\u{202E}\u{2066}\u{200E}\u{61C}\0\u{1b}[31m";
        let mut f = failure("bob@remote.test", nasty);
        f.remote_mta = Some("mx\r\nX-Evil: 1".into());
        let failures = [f];
        // Controls and invalid UTF-8 in the original headers (an ASCII bounce), then a C1
        // control in valid UTF-8 (which makes it an RFC 6533 one).
        for (original, want) in [
            (
                &b"Subject: a\x00b\x1b\xffc\r\nX-Bad: \xfe\r\n\r\n"[..],
                "Subject: a?b??c\r\nX-Bad: ?\r\n",
            ),
            (
                b"Subject: a\x00b\x1b\xc2\x85c\r\nX-Bad: \xfe\r\n\r\n",
                "Subject: a?b??c\r\nX-Bad: \u{FFFD}\r\n",
            ),
        ] {
            let m = report(&failures, original, Returned::Headers).to_message();
            assert_lines(&m);
            let s = String::from_utf8(m).unwrap();
            assert_eq!(s.is_ascii(), !want.contains('\u{FFFD}'), "{s}");
            assert!(
                s.chars()
                    .all(|c| !is_unsafe(c) || c == '\r' || c == '\n' || c == '\t'),
                "{s:?}"
            );
            assert!(!s.contains("\r\nX-Injected"), "{s}");
            assert!(!s.contains("\r\nX-Evil"), "{s}");
            assert!(s.contains("Diagnostic-Code: smtp; 550 5.1.1 no X-Injected:\r\n yes\\x{2028}\\x{85}\\x{202E}\\x{2066}\\x{200E}\\x{61C}\\x{00}\\x{1B}[31m\r\n"), "{s}");
            assert!(s.contains("Remote-MTA: dns; mx??X-Evil:?1\r\n"), "{s}");
            assert!(s.contains(want), "{s}");
        }
    }

    #[test]
    fn internationalized_bounce() {
        let mut f = failure(
            "用户@例子.广告",
            "550 5.1.1 пользователь неизвестен\u{2028}",
        );
        f.orcpt = Some("utf-8;用户@例子.广告".into());
        let failures = [f];
        let mut r = report(
            &failures,
            "Subject: привет\r\n\r\n".as_bytes(),
            Returned::Headers,
        );
        r.sender = "алиса@пример.рф";
        let s = String::from_utf8(r.to_message()).unwrap();
        assert_lines(s.as_bytes());
        assert!(
            s.contains("Content-Type: multipart/report; report-type=global-delivery-status;"),
            "{s}"
        );
        assert!(s.contains("To: <алиса@пример.рф>\r\n"), "{s}");
        assert!(s.contains("Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n"), "{s}");
        assert!(s.contains("Original-Recipient: utf-8; 用户@例子.广告\r\nFinal-Recipient: utf-8; 用户@例子.广告\r\n"), "{s}");
        assert!(
            s.contains("Diagnostic-Code: smtp; 550 5.1.1 пользователь\r\n неизвестен\\x{2028}\r\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "Content-Type: message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n"
            ),
            "{s}"
        );
        assert!(s.contains("Subject: привет\r\n"), "{s}");
        // ASCII addresses but UTF-8 in the returned headers: global too.
        let failures = [failure("bob@remote.test", "550 no")];
        let s = String::from_utf8(
            report(
                &failures,
                "Subject: привет\r\n\r\n".as_bytes(),
                Returned::Headers,
            )
            .to_message(),
        )
        .unwrap();
        assert!(
            s.contains("Final-Recipient: rfc822; bob@remote.test\r\n"),
            "{s}"
        );
        assert!(s.contains("message/global-headers"), "{s}");
    }
}
