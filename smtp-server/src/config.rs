//! Limits and timeouts of a server.

use std::time::Duration;

/// Limits, timeouts and budgets. Start from [`Limits::default`] and change fields:
///
/// ```
/// # use std::time::Duration;
/// let mut limits = smtp_server::Limits::default();
/// limits.max_message_size = Some(10 << 20);
/// limits.command_timeout = Duration::from_secs(60);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest message in octets, advertised as `SIZE`, checked against `SIZE=` on MAIL
    /// (`552 5.3.4`) and while the content streams in. Default 25 MiB; `None` for no limit.
    pub max_message_size: Option<u64>,
    /// Most recipients per transaction; more get `452 4.5.3` and the transaction goes on
    /// with those accepted. Default 100 (RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Recipients past [`Limits::max_recipients`] refused in one transaction before each
    /// further one counts against [`Limits::max_errors`]. Default 1000, as Postfix's
    /// `smtpd_recipient_overshoot_limit` (see `smtp_proto::session`, "Decisions made here").
    pub max_recipient_overshoot: usize,
    /// Most concurrent connections; more are answered `421 4.7.0` and closed. Default 10,000;
    /// `None` for no limit.
    pub max_connections: Option<usize>,
    /// Most concurrent connections from one IP address (an IPv6 client: from its /64; an
    /// IPv4-mapped address counts as the IPv4 address); more are answered `421 4.7.0` and
    /// closed. Default 50 (as Postfix's `smtpd_client_connection_count_limit`); `None` for
    /// no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Clients on a loopback address (127.0.0.0/8, `::1`, and IPv4-mapped loopback) are not
    /// counted against [`Limits::max_connections_per_ip`] (they still count against
    /// [`Limits::max_connections`]), as Postfix exempts `$mynetworks` by default: on a mail
    /// server every local program shares one address. Default `false`.
    pub per_ip_exempt_loopback: bool,
    /// How long to wait for a command (RFC 5321 §4.5.3.2.7: at least 5 minutes, the
    /// default), counted from the last input or, after a reply, from when it was written.
    /// It becomes the session's `SessionConfig::command_timeout`, which sets the deadline
    /// (see the crate docs, "How a connection runs"). Also bounds the TLS handshake and each
    /// write.
    pub command_timeout: Duration,
    /// How long to wait for the next piece of message content (RFC 5321 §4.5.3.2.5: 3
    /// minutes, the default), in DATA and between BDAT chunks; the session's
    /// `SessionConfig::data_timeout`.
    pub data_timeout: Duration,
    /// Protocol errors (bad syntax, bad order) tolerated before the client is disconnected
    /// with `421 4.7.0`. Default 10.
    pub max_errors: usize,
    /// Recipients the handler refuses (any 4yz or 5yz but the `452 4.5.3` for too many
    /// recipients) before `421 4.7.0` closes the session; the count starts again when a
    /// message is accepted. Default 20, as Postfix's `smtpd_hard_error_limit`: a client
    /// guessing addresses gets 20 tries per connection.
    pub max_refused_recipients: usize,
    /// Refused recipients answered at once; each further refusal waits
    /// [`Limits::refused_recipient_delay`] first (Postfix's `smtpd_soft_error_limit`, 10,
    /// the default). Until a message is accepted.
    pub refused_recipients_undelayed: usize,
    /// The wait before each refusal past [`Limits::refused_recipients_undelayed`]: default 1
    /// second, as Postfix's `smtpd_error_sleep_time`. With the defaults a client guessing
    /// addresses gets ten answers at once, ten more in ten seconds, then `421`.
    pub refused_recipient_delay: Duration,
    /// Longest command line including CRLF; longer lines get `500 5.5.2`. Default 2048, as
    /// Postfix's `line_length_limit`: RFC 5321 §4.5.3.1.4's 512 is before extensions, and
    /// the parameters of MAIL and RCPT lengthen it (SIZE, RFC 1870; DSN, RFC 3461 §4: up to
    /// 500 more; AUTH=, RFC 4954), so a 255-octet local part with them still fits.
    pub max_command_line: usize,
    /// Longest local part of a `MAIL FROM` or `RCPT TO` address, in octets as sent; longer
    /// ones get `501 5.1.7` / `501 5.1.3 Local part too long`. Default 255, not RFC 5321's 64:
    /// real senders use longer ones (SRS rewrites of forwarded mail, VERP and bulk senders'
    /// bounce addresses that carry the recipient), Postfix has no such limit, and RFC 5321
    /// §4.5.3.1 asks for no limits "to the maximum extent possible".
    pub max_local_part: usize,
    /// Longest path including `<` and `>` (RFC 5321's is 256). Default 512, so that a
    /// 255-octet local part fits with any domain.
    pub max_path: usize,
    /// Longest text line of a message including CRLF; a message with a longer line is
    /// refused with `550 5.6.0`. Default 1000 (RFC 5321 §4.5.3.1.6); `None` for no check.
    pub max_text_line: Option<usize>,
    /// On shutdown, how long a session receiving a message may go on before it is
    /// answered `421 4.3.2`. Default 30 seconds.
    pub shutdown_grace: Duration,
    /// Failed AUTH attempts allowed in one session; the last is answered, then `421 4.7.0`
    /// closes the connection. Default 3.
    pub max_auth_failures: usize,
    /// Failed AUTH attempts allowed from one client address (IPv6: one /64) within
    /// [`Limits::auth_failure_window`] (attempts being checked count too); past them AUTH
    /// gets `421 4.7.0` at once. Temporary failures (`454`) do not count. Default 10; `None`
    /// for no limit. See [`crate::auth`].
    pub max_auth_failures_per_ip: Option<usize>,
    /// How long failures from an address are remembered. Default 15 minutes.
    pub auth_failure_window: Duration,
    /// Delay before a failure reply, times the session's failures so far (at most ten
    /// times). Default 1 second, as Postfix's `smtpd_error_sleep_time`.
    pub auth_failure_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: Some(25 << 20),
            max_recipients: 100,
            max_recipient_overshoot: 1000,
            max_connections: Some(10_000),
            max_connections_per_ip: Some(50),
            per_ip_exempt_loopback: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 10,
            max_refused_recipients: 20,
            refused_recipients_undelayed: 10,
            refused_recipient_delay: Duration::from_secs(1),
            max_command_line: 2048,
            max_local_part: 255,
            max_path: 512,
            max_text_line: Some(1000),
            shutdown_grace: Duration::from_secs(30),
            max_auth_failures: 3,
            max_auth_failures_per_ip: Some(10),
            auth_failure_window: Duration::from_secs(15 * 60),
            auth_failure_delay: Duration::from_secs(1),
        }
    }
}
