//! Delivery status notifications (RFC 3464): the bounce sent to a sender whose mail could not
//! be delivered.
//!
//! The message is `multipart/report; report-type=delivery-status` with three parts: a short
//! text for people, the `message/delivery-status` part (per-message fields, then one block per
//! failed recipient), and the original message's header section as `text/rfc822-headers`
//! (RFC 6522: only the headers, so a bounce never carries a large or harmful body back).
//! It is sent from the null sender `<>`; a message that itself came from `<>` gets no bounce.

use std::time::SystemTime;

use crate::headers::{message_id_header, rfc5322_date, unique_id};

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

impl Failure {
    /// The RFC 3463 status for the `Status:` field: the enhanced code at the start of the
    /// diagnostic's text if there is one, else derived from the reply code (5.0.0 / 4.0.0).
    pub fn status(&self) -> String {
        if let Some(s) = &self.status {
            return s.clone();
        }
        let mut words = self.diagnostic.split_whitespace();
        let code = words.next().unwrap_or("");
        if let Some(enh) = words.next() {
            let parts: Vec<&str> = enh.split('.').collect();
            if parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
            {
                return enh.to_owned();
            }
        }
        if code.starts_with('4') {
            "4.0.0".into()
        } else {
            "5.0.0".into()
        }
    }
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
    /// The original message's header section.
    pub original_headers: &'a [u8],
    /// Now.
    pub now: SystemTime,
}

impl Report<'_> {
    /// The complete bounce message (CRLF line ends).
    pub fn to_message(&self) -> Vec<u8> {
        let boundary = format!("=_bounce_{}", unique_id());
        let mut m = String::new();
        m.push_str(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
            self.hostname
        ));
        m.push_str(&format!("To: <{}>\r\n", self.sender));
        m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
        m.push_str(&format!("Date: {}\r\n", rfc5322_date(self.now)));
        m.push_str(&message_id_header(&unique_id(), self.hostname));
        m.push_str("Auto-Submitted: auto-replied\r\n");
        m.push_str("MIME-Version: 1.0\r\n");
        m.push_str(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
        ));
        m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

        // 1. For people.
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        m.push_str("Content-Description: Notification\r\n\r\n");
        m.push_str(&format!(
            "This is the mail system at host {}.\r\n\r\n\
             Your message could not be delivered to one or more recipients.\r\n\
             It has not been delivered to them and will not be retried.\r\n\r\n",
            self.hostname
        ));
        for f in self.failures {
            m.push_str(&format!(
                "<{}>: {}\r\n",
                f.recipient,
                one_line(&f.diagnostic)
            ));
        }
        m.push_str("\r\n");

        // 2. For programs.
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: message/delivery-status\r\n");
        m.push_str("Content-Description: Delivery report\r\n\r\n");
        m.push_str(&format!("Reporting-MTA: dns; {}\r\n", self.hostname));
        if let Some(e) = self.envid {
            m.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(e)));
        }
        m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(self.arrival)));
        for f in self.failures {
            m.push_str("\r\n");
            if let Some(o) = &f.orcpt {
                m.push_str(&format!("Original-Recipient: {}\r\n", one_line(o)));
            }
            m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.recipient));
            m.push_str("Action: failed\r\n");
            m.push_str(&format!("Status: {}\r\n", f.status()));
            if let Some(r) = &f.remote_mta {
                m.push_str(&format!("Remote-MTA: dns; {r}\r\n"));
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
            m.push_str(&format!(
                "Diagnostic-Code: {diag_type}; {}\r\n",
                one_line(&f.diagnostic)
            ));
            m.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                rfc5322_date(self.now)
            ));
        }
        m.push_str("\r\n");

        // 3. The original headers.
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: text/rfc822-headers\r\n");
        m.push_str("Content-Description: Undelivered Message Headers\r\n\r\n");
        let mut out = m.into_bytes();
        let headers = self.original_headers;
        out.extend_from_slice(headers);
        if !headers.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        out
    }
}

/// Removes line breaks and control characters so a value stays one header line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn report_layout() {
        let failures = [Failure {
            recipient: "bob@remote.test".into(),
            orcpt: Some("rfc822;bob@remote.test".into()),
            diagnostic: "550 5.1.1 no such user\r\n".into(),
            remote_mta: Some("mx.remote.test".into()),
            status: None,
        }];
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = Report {
            hostname: "mx.example",
            sender: "alice@example.org",
            envid: None,
            arrival: t,
            failures: &failures,
            original_headers: b"Subject: hi\r\nFrom: alice@example.org\r\n\r\n",
            now: t,
        };
        let m = String::from_utf8(r.to_message()).unwrap();
        assert!(m.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(m.contains("Content-Type: message/delivery-status\r\n"));
        assert!(m.contains("Reporting-MTA: dns; mx.example\r\n"));
        assert!(m.contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
        assert!(m.contains("Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(m.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(m.contains("Subject: hi\r\n"));
        assert!(m.starts_with(
            "From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\nTo: <alice@example.org>\r\n"
        ));
        assert!(m.ends_with("--\r\n"));
        assert!(!m.replace("\r\n", "").contains('\n'));
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
    }
}
