//! Delivering a message to a domain: MX hosts in order, each host's addresses in order, until
//! one server takes the transaction.
//!
//! # Rules
//!
//! - The hosts come from [`Resolver::resolve`] (or, with a smarthost, from
//!   [`Resolver::resolve_host`] for that one host, an IP address or an address literal). A DNS
//!   failure decides every recipient: [`ResolveError::is_permanent`] errors (NXDOMAIN, null MX,
//!   no addresses) are permanent, `SERVFAIL` and timeouts transient.
//! - Addresses the [address filter](Deliverer::with_address_filter) refuses are skipped. When
//!   every address of every host is refused, the result is [`DeliveryError::Loop`], permanent,
//!   status `5.4.6` (RFC 3463 "routing loop detected"): the domain's mail would come back here.
//! - Moving on to the next address (and host): the connection is refused or times out, the
//!   greeting is not `220` (`421` busy, but also `554`, as Postfix's `smtp_skip_5xx_greeting`),
//!   EHLO/HELO or STARTTLS fail, the TLS policy cannot be met, MAIL gets a 4yz reply, or the
//!   connection breaks or times out in the transaction before the whole message was sent.
//!   These say something about that server, not about the recipients.
//! - A break between the final `.` and its reply ([`Connection::outcome_unknown`]) is
//!   different: the server may have taken the message. No other address or host is tried in
//!   this call ([`DeliveryError::OutcomeUnknown`], every recipient transient), so the message
//!   goes to no second host now; the queue's later retry may still duplicate it, which RFC
//!   5321 §6.1 prefers to a lost message.
//! - A transaction in which the server answered the recipients is final for this attempt:
//!   each recipient is delivered, transient (4yz) or permanent (5yz) with the server's reply.
//!   Transient recipients are *not* tried at the next host in the same call: the queue retries
//!   them later, as Postfix does for a 4yz reply to RCPT. A 5yz reply to MAIL is permanent for
//!   all recipients. The refusals this client makes before sending (SMTPUTF8 or 8BITMIME
//!   needed, message over SIZE) are permanent too, with RFC 3463 codes 5.6.7, 5.6.3 and 5.3.4.
//! - When no host took the transaction, every recipient is transient with the last error.
//!
//! # When the outcome is known
//!
//! [`Deliverer::deliver`] returns its report as soon as the server has answered the message
//! data (or refused every recipient): the QUIT that ends the session is sent from a spawned
//! task ([`Connection::quit_in_background`]) that gets at most
//! [`QUIT_GRACE`](crate::QUIT_GRACE) for the `221` and the close together. A caller can therefore record the outcome
//! at once, whatever the peer does next: a peer that answers `250` to the final `.` and then
//! never answers QUIT holds neither the caller's delivery slot nor the window in which a crash
//! would make the queue send the message again. Nothing needs to be done by the caller for
//! this; the API offers no way to wait for QUIT.
//!
//! # Connection reuse
//!
//! With [`Deliverer::with_connection_cache`] a session that carried a transaction is not
//! ended: it is kept idle, per next hop (host name, address, TLS policy, login), for at most
//! the cache's idle time, and the next delivery to that hop sends its message on it after an
//! `RSET` (pipelined with the transaction when the server offers PIPELINING), as Postfix's
//! `smtp_connection_cache_on_demand` does. A reused session that fails in any way before the
//! server has decided the recipients (it was closed while idle, `RSET` is refused, a `421`)
//! is not held against the message: it is dropped and the transaction is tried once more on a
//! fresh connection to the same address, which then decides (not a session that failed after
//! the message's end marker was sent: [`Connection::outcome_unknown`]). Idle
//! sessions are ended with QUIT when their time is up (checked every second) and at most
//! [`MAX_IDLE_PER_HOP`] are kept per hop. The cache is shared by the clones of a
//! `Deliverer`. Without it (the default) every delivery makes its own connection.
//!
//! # Opportunistic TLS that fails
//!
//! Under [`TlsPolicy::OpportunisticUnverified`], a server that offers STARTTLS and then fails it (the
//! handshake fails or times out, the connection is closed or garbage arrives after the `220`
//! to STARTTLS, or the session breaks before the EHLO inside TLS is answered: see
//! [`ClientError::Tls`]) is tried once more at the same address *without* STARTTLS, and the
//! message is sent in clear text there, as Postfix does for its `may` level. The first attempt
//! is in [`DeliveryReport::attempts`] with its TLS error, and [`DeliveryReport::tls_fallback`]
//! holds that error when the clear-text session carried the transaction. Under
//! [`TlsPolicy::RequireVerified`] (the default of [`ClientConfig`]) a TLS failure is never
//! retried in clear text: the next address is tried, with TLS. Nor when the configuration has
//! [credentials](crate::ClientConfig::with_credentials) that need TLS: the login could not
//! happen in clear text.
//!
//! # Logging in
//!
//! With [credentials](crate::ClientConfig::with_credentials) every connection to the
//! [smarthost](Deliverer::with_smarthost) logs in after STARTTLS ([`crate::auth`]). Without a
//! smarthost the credentials are not used at all: a recipient domain's MX hosts are whoever
//! its DNS names, and are never given a password. A failed login (`535`, `454`, no usable mechanism, no TLS) is
//! a failure of that server, like a refused STARTTLS: the next address is tried, and when
//! none logs in every recipient is transient ([`DeliveryError::NoHostReached`], with the
//! login error's text), so a queue keeps the message until the password is fixed, as Postfix
//! defers mail when SASL authentication fails.
//!
//! # Address order
//!
//! Each host's addresses are tried in the order of the resolver's [`AddressOrder`]; set it
//! with [`Deliverer::with_address_preference`] (or [`Resolver::with_address_order`]). The
//! default alternates IPv6 and IPv4 ([`AddressPreference::Any`], Postfix's default).
//!
//! # Peer text
//!
//! Replies in the report are kept as received but bounded
//! ([`bound_reply`](crate::codec::bound_reply): 10 lines, 2 KiB of text), and every text
//! meant for people ([`Failure::text`], [`Attempt::error`], errors' `Display`) has control
//! characters escaped ([`crate::text`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_proto::address::ForwardPath;
use smtp_proto::reply::{EnhancedCode, Reply};
use tracing::{debug, info, warn};

use crate::codec::{has_8bit, wire_size};
use crate::connection::{ClientConfig, Connection, Envelope, RcptResult};
use crate::error::ClientError;
use crate::message::{Message, MessageInfo};
use crate::resolve::{AddressOrder, AddressPreference, MxHost, ResolveError, Resolver};
use crate::text::{escape_controls, SafeReply};
use crate::tls::{TlsError, TlsInfo, TlsPolicy};

/// Decides whether an address may be connected to (`true`) or must be skipped.
pub type AddressFilter = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Why a recipient was not delivered: the server's reply when there was one, and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The server's reply, when a server gave the verdict.
    pub reply: Option<Reply>,
    /// An RFC 3463 status code for the delivery status notification.
    pub enhanced: EnhancedCode,
    /// What happened, for logs and the bounce's diagnostic, on one line with control
    /// characters escaped ([`crate::text`]): the reply as [`SafeReply`] shows it, or the error.
    pub text: String,
}

impl Failure {
    pub(crate) fn from_reply(reply: &Reply) -> Self {
        let fallback = if reply.is_permanent() {
            EnhancedCode::fixed(5, 0, 0)
        } else {
            EnhancedCode::fixed(4, 0, 0)
        };
        Self {
            reply: Some(reply.clone()),
            enhanced: reply.enhanced().unwrap_or(fallback),
            text: SafeReply(reply).to_string(),
        }
    }

    pub(crate) fn from_error(error: &ClientError) -> Self {
        Self {
            reply: error.reply().cloned(),
            enhanced: error.enhanced_code(),
            text: safe(error),
        }
    }

    fn from_delivery_error(error: &DeliveryError) -> Self {
        Self {
            reply: None,
            enhanced: error.enhanced_code(),
            text: safe(error),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An error's text with control characters escaped.
fn safe(error: &dyn fmt::Display) -> String {
    escape_controls(&error.to_string()).into_owned()
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took the message for this recipient; its final reply.
    Delivered(Reply),
    /// Try again later.
    Transient(Failure),
    /// Give up and bounce.
    Permanent(Failure),
}

impl RcptOutcome {
    /// Whether the recipient is done with (delivered or bounced): nothing to retry.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Transient(_))
    }

    /// The outcome a server's verdict on one recipient means: accepted is delivered, a 5yz
    /// permanent, a 4yz transient.
    pub(crate) fn of(result: RcptResult) -> Self {
        match result {
            RcptResult::Accepted(reply) => Self::Delivered(reply),
            RcptResult::Rejected(reply) if reply.is_permanent() => {
                Self::Permanent(Failure::from_reply(&reply))
            }
            RcptResult::Rejected(reply) => Self::Transient(Failure::from_reply(&reply)),
        }
    }
}

/// A failure that decides the whole domain, before any server answered for the recipients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The mail hosts could not be found.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Every address of every mail host was refused by the address filter: the mail would
    /// loop back to this host. Permanent, `5.4.6`.
    #[error("mail for {domain} loops back to myself (every MX address is one of mine)")]
    Loop {
        /// The destination domain.
        domain: String,
    },
    /// The message could not be read (a file body): nothing was delivered. Transient, `4.3.0`.
    #[error("cannot read the message: {0}")]
    Message(String),
    /// A host was sent the whole message and the session failed before its verdict came
    /// (a timeout, the connection closed: [`Connection::outcome_unknown`]): it may have taken
    /// the message, so no other host is tried now (that could deliver it twice). Transient,
    /// with the failure's code: the queue tries again later.
    #[error("{host}: {last}; the message may have been delivered, not sent elsewhere now")]
    OutcomeUnknown {
        /// The host that had the message.
        host: String,
        /// The error, as text.
        last: String,
        /// Its status code.
        enhanced: EnhancedCode,
    },
    /// No host took the transaction; the last error.
    #[error("no mail host of {domain} could be used: {last}")]
    NoHostReached {
        /// The destination domain.
        domain: String,
        /// The last error, as text.
        last: String,
        /// Its status code.
        enhanced: EnhancedCode,
    },
}

impl DeliveryError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Resolve(e) => e.is_permanent(),
            Self::Loop { .. } => true,
            Self::NoHostReached { .. } | Self::OutcomeUnknown { .. } | Self::Message(_) => false,
        }
    }

    /// An RFC 3463 status code for a delivery status notification.
    pub fn enhanced_code(&self) -> EnhancedCode {
        match self {
            Self::Resolve(ResolveError::NullMx { .. }) => EnhancedCode::fixed(5, 1, 10),
            Self::Resolve(ResolveError::NoSuchDomain { .. }) => EnhancedCode::fixed(5, 1, 2),
            Self::Resolve(ResolveError::InvalidDomain { .. }) => EnhancedCode::fixed(5, 1, 2),
            Self::Resolve(ResolveError::NoAddresses { .. }) => EnhancedCode::fixed(5, 4, 4),
            Self::Resolve(_) => EnhancedCode::fixed(4, 4, 3),
            Self::Loop { .. } => EnhancedCode::fixed(5, 4, 6),
            Self::NoHostReached { enhanced, .. } | Self::OutcomeUnknown { enhanced, .. } => {
                *enhanced
            }
            Self::Message(_) => EnhancedCode::fixed(4, 3, 0),
        }
    }
}

/// One connection attempt, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The host name (MX name, smarthost or literal).
    pub host: String,
    /// The address tried.
    pub addr: SocketAddr,
    /// What went wrong, with control characters escaped; `None` for the attempt that carried
    /// the transaction.
    pub error: Option<String>,
}

/// The result of [`Deliverer::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The destination domain.
    pub domain: String,
    /// One outcome per recipient, in the envelope's order.
    pub rcpts: Vec<(ForwardPath, RcptOutcome)>,
    /// The host and address that carried the transaction, if any did.
    pub delivered_via: Option<(String, SocketAddr)>,
    /// Whether that transaction was encrypted.
    pub tls: bool,
    /// That transaction's TLS protocol and cipher suite, when it was encrypted.
    pub tls_info: Option<TlsInfo>,
    /// When the transaction went in clear text because STARTTLS failed at that address
    /// ([`TlsPolicy::OpportunisticUnverified`] only, see the [module docs](self)): the TLS
    /// error.
    pub tls_fallback: Option<TlsError>,
    /// Every connection attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The failure that decided every recipient before any server did, if that happened.
    pub error: Option<DeliveryError>,
}

impl DeliveryReport {
    /// A report for `domain` before anything happened: no recipient decided, no attempt.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            rcpts: Vec::new(),
            delivered_via: None,
            tls: false,
            tls_info: None,
            tls_fallback: None,
            attempts: Vec::new(),
            error: None,
        }
    }

    /// Whether every recipient got the message.
    pub fn all_delivered(&self) -> bool {
        self.rcpts
            .iter()
            .all(|(_, o)| matches!(o, RcptOutcome::Delivered(_)))
    }
}

/// The most idle sessions the connection cache keeps for one next hop.
pub const MAX_IDLE_PER_HOP: usize = 64;

/// Per next hop, the idle sessions and when each became idle (most recent last).
type IdleSessions = HashMap<String, Vec<(Connection, Instant)>>;

/// Idle sessions kept for reuse (see the [module docs](self#connection-reuse)).
struct ConnectionCache {
    idle: Duration,
    /// The idle sessions, and whether the reaper task runs.
    state: Mutex<(IdleSessions, bool)>,
}

impl ConnectionCache {
    /// An idle session for `key` that has not been idle too long; stale ones are ended.
    fn take(&self, key: &str) -> Option<Connection> {
        let mut guard = self.state.lock().ok()?;
        let list = guard.0.get_mut(key)?;
        let mut found = None;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < self.idle && conn.is_usable() {
                found = Some(conn);
                break;
            }
            conn.quit_in_background();
        }
        if list.is_empty() {
            guard.0.remove(key);
        }
        found
    }

    /// Keeps `conn` idle for `key` (or ends it, when the hop has enough idle sessions).
    fn put(self: &Arc<Self>, key: String, conn: Connection) {
        if !conn.is_usable() {
            return;
        }
        let Ok(mut guard) = self.state.lock() else {
            conn.quit_in_background();
            return;
        };
        let list = guard.0.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_HOP {
            drop(guard);
            conn.quit_in_background();
            return;
        }
        list.push((conn, Instant::now()));
        if !guard.1 {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                guard.1 = true;
                let me = self.clone();
                runtime.spawn(async move { me.reap().await });
            }
        }
    }

    /// Ends sessions idle for longer than the idle time, every second, until none is left.
    async fn reap(self: Arc<Self>) {
        let tick = self
            .idle
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let stale: Vec<Connection> = {
                let Ok(mut guard) = self.state.lock() else {
                    return;
                };
                let mut stale = Vec::new();
                for list in guard.0.values_mut() {
                    let mut i = 0;
                    while i < list.len() {
                        if list[i].1.elapsed() >= self.idle {
                            stale.push(list.remove(i).0);
                        } else {
                            i += 1;
                        }
                    }
                }
                guard.0.retain(|_, l| !l.is_empty());
                if guard.0.is_empty() {
                    guard.1 = false;
                    for c in stale {
                        c.quit_in_background();
                    }
                    return;
                }
                stale
            };
            for c in stale {
                c.quit_in_background();
            }
        }
    }
}

/// Delivers messages to a domain's mail hosts (or a smarthost).
#[derive(Clone)]
pub struct Deliverer {
    resolver: Resolver,
    config: ClientConfig,
    port: u16,
    smarthost: Option<(String, u16)>,
    filter: Option<AddressFilter>,
    cache: Option<Arc<ConnectionCache>>,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("resolver", &self.resolver)
            .field("config", &self.config)
            .field("port", &self.port)
            .field("smarthost", &self.smarthost)
            .field("filter", &self.filter.is_some())
            .field("connection_cache", &self.cache.as_ref().map(|c| c.idle))
            .finish()
    }
}

impl Deliverer {
    /// Delivers to port 25 of the MX hosts `resolver` finds (the address order is the
    /// resolver's, see [`with_address_preference`](Self::with_address_preference)).
    ///
    /// The TLS policy is `config`'s. For relaying to a domain's MX hosts choose
    /// [`TlsPolicy::OpportunisticUnverified`] (Postfix's `may`): under the default,
    /// [`TlsPolicy::RequireVerified`], mail to any MX host without STARTTLS or without a
    /// certificate valid for its MX name is deferred. A smarthost usually has a verifiable
    /// certificate: keep the default there.
    pub fn new(resolver: Resolver, config: ClientConfig) -> Self {
        Self {
            resolver,
            config,
            port: 25,
            smarthost: None,
            filter: None,
            cache: None,
        }
    }

    /// Keeps sessions that carried a transaction open for `idle` and sends later messages
    /// to the same next hop on them (see [connection reuse](self#connection-reuse)); a zero
    /// `idle` turns the cache off.
    #[must_use]
    pub fn with_connection_cache(mut self, idle: Duration) -> Self {
        self.cache = (!idle.is_zero()).then(|| {
            Arc::new(ConnectionCache {
                idle,
                state: Mutex::new((HashMap::new(), false)),
            })
        });
        self
    }

    /// The smarthost all mail goes through, if one is set.
    pub fn smarthost(&self) -> Option<(&str, u16)> {
        self.smarthost.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    /// Connects to this port instead of 25 (tests, unusual setups). Not used for a smarthost,
    /// which has its own.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sends everything to `host:port` (a name, an IP address or an address literal) instead of
    /// looking up MX records.
    #[must_use]
    pub fn with_smarthost(mut self, host: impl Into<String>, port: u16) -> Self {
        self.smarthost = Some((host.into(), port));
        self
    }

    /// Skips the addresses `filter` returns `false` for (the daemon's own addresses).
    #[must_use]
    pub fn with_address_filter(mut self, filter: AddressFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Which address family to try first for a host that has both (default
    /// [`AddressPreference::Any`]): sets the resolver's [`AddressOrder`], for MX hosts, an
    /// implicit MX and a smarthost given by name alike.
    #[must_use]
    pub fn with_address_preference(mut self, preference: AddressPreference) -> Self {
        self.resolver = self.resolver.with_address_preference(preference);
        self
    }

    /// The address order in use (the resolver's).
    pub fn address_order(&self) -> AddressOrder {
        self.resolver.address_order()
    }

    /// The client configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Delivers `message` to the envelope's recipients, all of which are in `domain`. See the
    /// [module documentation](self) for the rules. Never fails as a whole: every recipient gets
    /// an outcome.
    pub async fn deliver(
        &self,
        domain: &str,
        envelope: &Envelope,
        message: &[u8],
    ) -> DeliveryReport {
        let info = MessageInfo {
            size: wire_size(message),
            eight_bit: has_8bit(message),
        };
        self.deliver_scanned(domain, envelope, &Message::bytes(message), Ok(info))
            .await
    }

    /// [`deliver`](Self::deliver) for a [`Message`] that may be a file, streamed from disk
    /// to each server tried (see [`Connection::send_message`]); the file is measured once per
    /// call. When it cannot be read, every recipient is transient with
    /// [`DeliveryError::Message`] and no further host is tried.
    pub async fn deliver_message(
        &self,
        domain: &str,
        envelope: &Envelope,
        message: &Message<'_>,
    ) -> DeliveryReport {
        let info = message.scan().await;
        self.deliver_scanned(domain, envelope, message, info).await
    }

    async fn deliver_scanned(
        &self,
        domain: &str,
        envelope: &Envelope,
        message: &Message<'_>,
        info: std::io::Result<MessageInfo>,
    ) -> DeliveryReport {
        let mut report = DeliveryReport::new(domain);
        let decide_all = |report: &mut DeliveryReport, error: DeliveryError| {
            let failure = Failure::from_delivery_error(&error);
            let outcome = if error.is_permanent() {
                RcptOutcome::Permanent(failure)
            } else {
                RcptOutcome::Transient(failure)
            };
            report.rcpts = envelope
                .rcpts
                .iter()
                .map(|r| (r.path.clone(), outcome.clone()))
                .collect();
            report.error = Some(error);
        };

        let info = match info {
            Ok(info) => info,
            Err(e) => {
                info!(%domain, error = %e, "cannot read the message");
                decide_all(&mut report, DeliveryError::Message(safe(&e)));
                return report;
            }
        };
        let (hosts, port) = match self.hosts(domain).await {
            Ok(found) => found,
            Err(e) => {
                info!(%domain, error = %safe(&e), "cannot resolve");
                decide_all(&mut report, e.into());
                return report;
            }
        };

        // Credentials are for the smarthost only: a domain's MX hosts are whoever its DNS
        // names (opportunistic, unverified TLS), and must never be given a password.
        let stripped;
        let config = if self.smarthost.is_none() && self.config.credentials.is_some() {
            debug!(%domain, "credentials configured without a smarthost: not used for MX hosts");
            let mut c = self.config.clone();
            c.credentials = None;
            stripped = c;
            &stripped
        } else {
            &self.config
        };
        let mut last: Option<ClientError> = None;
        let mut any_allowed = false;
        for host in &hosts {
            for ip in &host.addrs {
                let addr = SocketAddr::new(*ip, port);
                if let Some(filter) = &self.filter {
                    if !filter(addr) {
                        debug!(%domain, host = %host.name, %addr, "address refused by the filter");
                        continue;
                    }
                }
                any_allowed = true;
                let mut result = self
                    .attempt(&host.name, addr, config, envelope, message, info)
                    .await;
                let mut fallback = None;
                if let Err(AttemptError {
                    error: ClientError::Tls(tls_error),
                    ..
                }) = &result
                {
                    if config.tls == TlsPolicy::OpportunisticUnverified
                        && config.may_fall_back_to_clear_text()
                    {
                        let tls_error = tls_error.clone();
                        let error = result.err().map(|e| safe(&e.error)).unwrap_or_default();
                        info!(%domain, host = %host.name, %addr, %error,
                              "opportunistic TLS failed; retrying in clear text");
                        report.attempts.push(Attempt {
                            host: host.name.clone(),
                            addr,
                            error: Some(format!("{error}; retrying without TLS")),
                        });
                        let plain = config.clone().with_tls(TlsPolicy::None);
                        result = self
                            .attempt(&host.name, addr, &plain, envelope, message, info)
                            .await;
                        fallback = Some(tls_error);
                    }
                }
                match result {
                    Ok((rcpts, tls_info)) => {
                        report.attempts.push(Attempt {
                            host: host.name.clone(),
                            addr,
                            error: None,
                        });
                        report.rcpts = rcpts;
                        report.delivered_via = Some((host.name.clone(), addr));
                        report.tls = tls_info.is_some();
                        report.tls_info = tls_info;
                        report.tls_fallback = fallback;
                        return report;
                    }
                    Err(AttemptError {
                        error: e,
                        outcome_unknown,
                    }) => {
                        let error = safe(&e);
                        info!(%domain, host = %host.name, %addr, %error, "attempt failed");
                        report.attempts.push(Attempt {
                            host: host.name.clone(),
                            addr,
                            error: Some(error.clone()),
                        });
                        if outcome_unknown {
                            // The host may have the message: not to the next one now.
                            warn!(%domain, host = %host.name, %addr, %error,
                                  "the message may have been delivered; not sent to another host now");
                            let error = DeliveryError::OutcomeUnknown {
                                host: host.name.clone(),
                                last: error,
                                enhanced: transient_code(e.enhanced_code()),
                            };
                            decide_all(&mut report, error);
                            return report;
                        }
                        if let ClientError::Message(e) = e {
                            // The next host would fare no better.
                            decide_all(&mut report, DeliveryError::Message(safe(&e)));
                            return report;
                        }
                        last = Some(e);
                    }
                }
            }
        }
        let error = if !any_allowed {
            DeliveryError::Loop {
                domain: domain.to_owned(),
            }
        } else {
            let last = last.unwrap_or(ClientError::Broken);
            DeliveryError::NoHostReached {
                domain: domain.to_owned(),
                last: safe(&last),
                enhanced: transient_code(last.enhanced_code()),
            }
        };
        decide_all(&mut report, error);
        report
    }

    async fn hosts(&self, domain: &str) -> Result<(Vec<MxHost>, u16), ResolveError> {
        match &self.smarthost {
            Some((host, port)) => {
                let addrs: Vec<IpAddr> = self.resolver.resolve_host(host).await?;
                let host = MxHost {
                    name: host.clone(),
                    preference: 0,
                    addrs,
                };
                Ok((vec![host], *port))
            }
            None => Ok((self.resolver.resolve(domain).await?, self.port)),
        }
    }

    /// One server. `Ok` when the server decided the recipients (the outcome per recipient and
    /// whether TLS was used); `Err` to move on to the next address. The session is ended with
    /// a QUIT in the background, so the result is returned as soon as it is known.
    async fn attempt(
        &self,
        host: &str,
        addr: SocketAddr,
        config: &ClientConfig,
        envelope: &Envelope,
        message: &Message<'_>,
        info: MessageInfo,
    ) -> Result<(Vec<(ForwardPath, RcptOutcome)>, Option<TlsInfo>), AttemptError> {
        let key = format!(
            "{host} {addr} {:?} {}",
            config.tls,
            config.credentials.is_some()
        );
        let cached = self.cache.as_ref().and_then(|c| c.take(&key));
        let reused = cached.is_some();
        let mut conn = match cached {
            Some(c) => c,
            None => Connection::connect(addr, host, config).await?,
        };
        let mut sent = conn.send_scanned(envelope, message, info).await;
        if reused {
            match &sent {
                // Nothing wrong with the message: a reused session that failed before
                // the recipients were decided (closed while idle, RSET refused, a 421)
                // says nothing about it. Once more on a fresh session; not when the
                // failure came after the end of data (the server may have the message).
                Err(e) if !matches!(e, ClientError::Message(_)) && !conn.outcome_unknown() => {
                    debug!(%host, %addr, error = %e, "reused session failed; reconnecting");
                    conn.quit_in_background();
                    conn = Connection::connect(addr, host, config).await?;
                    sent = conn.send_scanned(envelope, message, info).await;
                }
                _ => {}
            }
        }
        let tls = conn.tls_info().cloned();
        let outcome_unknown = sent.is_err() && conn.outcome_unknown();
        let all = |outcome: RcptOutcome| {
            envelope
                .rcpts
                .iter()
                .map(|r| (r.path.clone(), outcome.clone()))
                .collect::<Vec<_>>()
        };
        // The outcome is known: keep the session for the next message, or say goodbye
        // without waiting for the answer.
        match (&self.cache, &sent) {
            (Some(cache), Ok(_)) => cache.put(key, conn),
            _ => conn.quit_in_background(),
        }
        let outcomes = match sent {
            Ok(result) => envelope
                .rcpts
                .iter()
                .zip(result.rcpts)
                .map(|(r, result)| (r.path.clone(), RcptOutcome::of(result)))
                .collect(),
            // Decided for every recipient by this server, or by this client before sending.
            Err(e) if e.is_permanent() => all(RcptOutcome::Permanent(Failure::from_error(&e))),
            // A 4yz to MAIL, or the connection broke before recipients were decided: the next
            // server may do better. (Unless it broke after the whole message was sent.)
            Err(error) => {
                return Err(AttemptError {
                    error,
                    outcome_unknown,
                })
            }
        };
        Ok((outcomes, tls))
    }
}

/// Why one server did not decide the recipients.
struct AttemptError {
    error: ClientError,
    /// The whole message was sent before the session failed ([`Connection::outcome_unknown`]).
    outcome_unknown: bool,
}

impl From<ClientError> for AttemptError {
    fn from(error: ClientError) -> Self {
        Self {
            error,
            outcome_unknown: false,
        }
    }
}

/// The status code for "no host reached": always transient.
pub(crate) fn transient_code(c: EnhancedCode) -> EnhancedCode {
    c.with_class(4).unwrap_or(c)
}
