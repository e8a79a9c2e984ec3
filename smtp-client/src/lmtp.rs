//! LMTP (RFC 2033): delivering to a local mailbox server, such as Dovecot's `lmtp` service,
//! as Postfix's `mailbox_transport = lmtp:unix:private/dovecot-lmtp` does.
//!
//! LMTP is SMTP with two changes: the client says `LHLO`, and after the data the server
//! answers once per accepted recipient, so each recipient gets its own verdict (a full
//! mailbox refuses one recipient, not the message). [`Lmtp::deliver_message`] runs one
//! transaction and reports per recipient as [`Deliverer`](crate::Deliverer) does: delivered,
//! transient (try again later) or permanent (bounce). An LMTP server is trusted and local:
//! there is no MX lookup and no fallback to another host.
//!
//! ```no_run
//! # async fn f() {
//! use smtp_client::lmtp::{Lmtp, LmtpTarget};
//! // The protocol types come re-exported: no direct smtp-proto dependency needed.
//! use smtp_client::{parse_forward_path, ClientConfig, Envelope, Message, ReversePath, TlsPolicy};
//!
//! let target: LmtpTarget = "unix:/run/dovecot/lmtp".parse().unwrap();
//! let lmtp = Lmtp::new(target, ClientConfig::new("mx.example.org").with_tls(TlsPolicy::None));
//! let to = parse_forward_path("<alice@example.org>").unwrap().into_owned();
//! let envelope = Envelope::new(ReversePath::Null, vec![to]);
//! let report = lmtp.deliver_message(&envelope, &Message::bytes(b"Subject: hi\r\n\r\nhello\r\n")).await;
//! assert!(report.all_delivered());
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use tracing::info;

use crate::connection::{ClientConfig, Connection, Envelope};
use crate::deliver::{
    transient_code, Attempt, DeliveryError, DeliveryReport, Failure, RcptOutcome,
};
use crate::message::Message;
use crate::text::escape_controls;
use crate::ClientError;

/// Where an LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// A Unix-domain socket (Dovecot's `/run/dovecot/lmtp`).
    Unix(PathBuf),
    /// A TCP address (Dovecot's `inet_listener lmtp`, usually on loopback).
    Tcp(SocketAddr),
}

impl FromStr for LmtpTarget {
    type Err = String;

    /// `unix:PATH` or an absolute `PATH` for a Unix-domain socket; `inet:ADDRESS:PORT` (an IP
    /// address, `[...]` around IPv6) for TCP. No host names: an LMTP server is this host or
    /// one next to it, and a name would need a DNS lookup at every delivery.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let rest = s.strip_prefix("inet:").unwrap_or(s);
        rest.parse::<SocketAddr>()
            .ok()
            .filter(|a| a.port() != 0)
            .map(Self::Tcp)
            .ok_or_else(|| {
                format!(
                    "{s:?}: expected unix:/path/to/socket, /path/to/socket or \
                     inet:IP-ADDRESS:PORT (e.g. inet:127.0.0.1:24, inet:[::1]:24)"
                )
            })
    }
}

impl fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "inet:{a}"),
        }
    }
}

/// Delivers messages to one LMTP server.
#[derive(Debug, Clone)]
pub struct Lmtp {
    target: LmtpTarget,
    config: ClientConfig,
}

impl Lmtp {
    /// A client for the server at `target`, with `config`'s name (sent with LHLO), timeouts,
    /// TLS policy and credentials. The default policy,
    /// [`TlsPolicy::RequireVerified`](crate::TlsPolicy::RequireVerified), fails against an
    /// LMTP server without STARTTLS: for a Unix-domain socket or loopback choose
    /// [`TlsPolicy::None`](crate::TlsPolicy::None).
    pub fn new(target: LmtpTarget, config: ClientConfig) -> Self {
        Self { target, config }
    }

    /// Where the server listens.
    pub fn target(&self) -> &LmtpTarget {
        &self.target
    }

    /// One transaction for every recipient of `envelope`, then QUIT (in the background).
    /// Each recipient's outcome is its own reply: its RCPT refusal, or its reply after the
    /// data. When the server cannot be reached or the session breaks before the recipients
    /// are decided, every recipient is transient (permanent when the client itself refused
    /// to send, e.g. a message larger than the server's SIZE, or MAIL was refused with a 5yz;
    /// a 5yz greeting or LHLO is transient: a server misconfigured or starting up, not a
    /// verdict on the mail). `delivered_via` is the target
    /// as text with the connected address (`0.0.0.0:0` for a Unix-domain socket).
    pub async fn deliver_message(
        &self,
        envelope: &Envelope,
        message: &Message<'_>,
    ) -> DeliveryReport {
        let host = self.target.to_string();
        let mut report = DeliveryReport::new(host.clone());
        let all = |outcome: RcptOutcome| {
            envelope
                .rcpts
                .iter()
                .map(|r| (r.path.clone(), outcome.clone()))
                .collect::<Vec<_>>()
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let addr = match &self.target {
            LmtpTarget::Tcp(a) => *a,
            LmtpTarget::Unix(_) => unspecified,
        };
        let broken = |report: &mut DeliveryReport, e: &ClientError| {
            let text = escape_controls(&e.to_string()).into_owned();
            info!(lmtp = %host, error = %text, "LMTP delivery failed");
            report.attempts.push(Attempt {
                host: host.clone(),
                addr,
                error: Some(text.clone()),
            });
            let failure = Failure::from_error(e);
            // A refusing greeting or LHLO is a server that is misconfigured or starting,
            // not a verdict on the mail: the queue keeps it until the server is fixed. What
            // refuses the message itself (MAIL, SIZE, SMTPUTF8) is permanent.
            let session_refused = matches!(
                e,
                ClientError::Greeting(_)
                    | ClientError::Refused {
                        command: "LHLO",
                        ..
                    }
            );
            if e.is_permanent() && !session_refused {
                report.rcpts = all(RcptOutcome::Permanent(failure));
            } else {
                report.error = Some(DeliveryError::NoHostReached {
                    domain: host.clone(),
                    last: text,
                    enhanced: transient_code(failure.enhanced),
                });
                report.rcpts = all(RcptOutcome::Transient(Failure {
                    enhanced: transient_code(failure.enhanced),
                    ..failure
                }));
            }
        };
        let mut conn = match Connection::connect_lmtp(&self.target, &self.config).await {
            Ok(c) => c,
            Err(e) => {
                broken(&mut report, &e);
                return report;
            }
        };
        let tls = conn.tls_info().cloned();
        let sent = conn.send_message(envelope, message).await;
        conn.quit_in_background();
        match sent {
            Ok(result) => {
                report.rcpts = envelope
                    .rcpts
                    .iter()
                    .zip(result.rcpts)
                    .map(|(r, result)| (r.path.clone(), RcptOutcome::of(result)))
                    .collect();
                report.delivered_via = Some((host.clone(), addr));
                report.tls = tls.is_some();
                report.tls_info = tls;
                report.attempts.push(Attempt {
                    host,
                    addr,
                    error: None,
                });
            }
            Err(e) => broken(&mut report, &e),
        }
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            "unix:/run/dovecot/lmtp".parse::<LmtpTarget>().unwrap(),
            LmtpTarget::Unix("/run/dovecot/lmtp".into())
        );
        assert_eq!(
            "/run/dovecot/lmtp".parse::<LmtpTarget>().unwrap(),
            LmtpTarget::Unix("/run/dovecot/lmtp".into())
        );
        assert_eq!(
            "inet:127.0.0.1:24".parse::<LmtpTarget>().unwrap(),
            LmtpTarget::Tcp("127.0.0.1:24".parse().unwrap())
        );
        assert_eq!(
            "inet:[::1]:24".parse::<LmtpTarget>().unwrap().to_string(),
            "inet:[::1]:24"
        );
        for bad in [
            "",
            "unix:",
            "inet:localhost:24",
            "lmtp",
            "127.0.0.1",
            "inet:127.0.0.1:0",
            "relative/path",
        ] {
            assert!(bad.parse::<LmtpTarget>().is_err(), "{bad:?}");
        }
    }
}
