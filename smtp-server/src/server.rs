//! The server: a builder, binding, the accept loops, connection limits and graceful shutdown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smtp_proto::session::SessionConfig;
use smtp_proto::Refusal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::{FailureTable, LIMIT_REACHED};
use crate::config::Limits;
use crate::connection::{implicit_tls, refuse, Connection, Stream, Transport};
use crate::handler::{ConnectionInfo, Handler};
use crate::listener::{bind, Listener};
use crate::tls::TlsConfig;

/// How long [`BoundServer::serve`] waits for connections after the grace period.
const FINAL_WAIT: Duration = Duration::from_secs(10);

/// Why a server could not be built or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// No listen address was given to a server that was to bind ([`Server::bind`]). A server
    /// without listeners can still serve streams ([`Server::serve_stream`]).
    #[error("no listen address configured")]
    NoListeners,
    /// An implicit-TLS listener was configured without [`ServerBuilder::tls`].
    #[error("implicit-TLS listener {0} needs a TLS configuration")]
    TlsRequired(SocketAddr),
    /// The session configuration cannot be used as given ([`SessionConfig::check`]): a host
    /// name that is not a domain name ([`ServerBuilder::hostname`]), or a capability or verb
    /// given to [`ServerBuilder::extension`] that is not one EHLO line or command word, or that
    /// the session offers itself (`STARTTLS`, `AUTH`, ...).
    #[error("invalid session configuration: {0}")]
    Config(#[from] smtp_proto::session::ConfigError),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Bind { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// An SMTP server: a handler, listeners, limits and optional TLS. Made by
/// [`Server::builder`].
///
/// ```no_run
/// # use smtp_server::{Server, Handler, SessionHandler, ConnectionInfo, Envelope, BodyStream, DataOutcome};
/// # use smtp_server::Refusal;
/// struct Sink;
/// struct SinkSession;
/// impl Handler for Sink {
///     type Session = SinkSession;
///     async fn connect(&self, _: &ConnectionInfo) -> Result<SinkSession, Refusal> { Ok(SinkSession) }
/// }
/// impl SessionHandler for SinkSession {
///     async fn data(&mut self, _: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
///         while let Ok(Some(_)) = body.chunk().await {}
///         DataOutcome::accepted("Discarded")
///     }
/// }
/// # async fn run() -> std::io::Result<()> {
/// Server::builder(Sink)
///     .hostname("mx.example.org")
///     .listen("127.0.0.1:2525".parse().unwrap())
///     .build()?
///     .serve(async { tokio::signal::ctrl_c().await.ok(); })
///     .await
/// # }
/// ```
pub struct Server<H> {
    handler: Arc<H>,
    listeners: Vec<Listener>,
    common: Arc<Common>,
}

/// Configures a [`Server`].
pub struct ServerBuilder<H> {
    handler: H,
    listeners: Vec<Listener>,
    tls: Option<TlsConfig>,
    limits: Limits,
    session: SessionConfig,
    /// What [`ServerBuilder::hostname`], [`ServerBuilder::auth`] and
    /// [`ServerBuilder::extension`] set, applied over `session` when the server is built, so
    /// that the order of the calls does not matter.
    hostname: Option<String>,
    auth: Option<Vec<crate::Mechanism>>,
    extensions: Vec<(String, Option<smtp_proto::ehlo::Capability>)>,
}

impl<H: Handler> Server<H> {
    /// Starts configuring a server around `handler`.
    pub fn builder(handler: H) -> ServerBuilder<H> {
        ServerBuilder {
            handler,
            listeners: Vec::new(),
            tls: None,
            limits: Limits::default(),
            session: SessionConfig::new(machine_hostname()),
            hostname: None,
            auth: None,
            extensions: Vec::new(),
        }
    }

    /// Binds every listener; the server starts serving with [`BoundServer::serve`].
    ///
    /// # Errors
    /// [`Error::NoListeners`] when no listener was configured; [`Error::Bind`] naming the
    /// first address that could not be bound.
    pub async fn bind(self) -> Result<BoundServer<H>, Error> {
        if self.listeners.is_empty() {
            return Err(Error::NoListeners);
        }
        let mut bound = Vec::with_capacity(self.listeners.len());
        for l in self.listeners {
            let socket = bind(l.addr).map_err(|source| Error::Bind {
                addr: l.addr,
                source,
            })?;
            let mut l = l;
            if l.addr.port() == 0 {
                if let Ok(a) = socket.local_addr() {
                    // A listener named after its address takes the port actually bound.
                    if *l.name == *l.addr.to_string() {
                        l.name = Arc::from(a.to_string());
                    }
                    l.addr = a;
                }
            }
            bound.push((socket, l));
        }
        Ok(BoundServer {
            handler: self.handler,
            listeners: bound,
            common: self.common,
        })
    }

    /// Runs one SMTP session on `stream`, a byte stream of any kind: an in-memory
    /// [`tokio::io::duplex`] pipe in a test, a transport of your own (a Unix socket, a proxy
    /// protocol you parsed, a connection you accepted yourself). It is the session a listener's
    /// connection gets: the same handler, limits, timeouts and logs; STARTTLS (over `stream`)
    /// when [`ServerBuilder::tls`] was given, and the handshake first when `listener` is an
    /// implicit-TLS one. The handler sees `listener`'s name and address as
    /// [`ConnectionInfo::listener`] and [`ConnectionInfo::local`], and `peer` as
    /// [`ConnectionInfo::peer`]. The future ends with the session; it owns what it needs
    /// (spawn it, or await it).
    ///
    /// Unlike a listener's connections these are not counted against
    /// [`Limits::max_connections`] or [`Limits::max_connections_per_ip`] (the caller chose to
    /// serve them), and [`BoundServer::serve`]'s shutdown does not reach them: drop the
    /// future to end one. The pipelining check cannot peek at a stream that is not a socket:
    /// it polls the stream once without waiting instead (see [`crate`], "How a connection
    /// runs").
    ///
    /// ```
    /// # use smtp_server::{Server, Handler, SessionHandler, ConnectionInfo, Envelope, BodyStream, DataOutcome, Listener};
    /// # use smtp_server::Refusal;
    /// # use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    /// # struct Sink;
    /// # struct SinkSession;
    /// # impl Handler for Sink {
    /// #     type Session = SinkSession;
    /// #     async fn connect(&self, _: &ConnectionInfo) -> Result<SinkSession, Refusal> { Ok(SinkSession) }
    /// # }
    /// # impl SessionHandler for SinkSession {
    /// #     async fn data(&mut self, _: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
    /// #         while let Ok(Some(_)) = body.chunk().await {}
    /// #         DataOutcome::accepted("Discarded")
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = Server::builder(Sink).hostname("mx.example.org").build()?;
    /// let (client, stream) = tokio::io::duplex(4096);
    /// let listener = Listener::named("in-memory", "127.0.0.1:25".parse().unwrap());
    /// tokio::spawn(server.serve_stream(stream, &listener, "192.0.2.1:4321".parse().unwrap()));
    /// let mut client = BufReader::new(client);
    /// let mut line = String::new();
    /// client.read_line(&mut line).await?;
    /// assert_eq!(line, "220 mx.example.org ESMTP ready\r\n");
    /// client.get_mut().write_all(b"QUIT\r\n").await?;
    /// # Ok(()) }
    /// ```
    pub fn serve_stream<S>(
        &self,
        stream: S,
        listener: &Listener,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = Arc::clone(&self.handler);
        let common = Arc::clone(&self.common);
        let id = common.next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("session", id, %peer, listener = %listener.name);
        let mut info = ConnectionInfo {
            peer,
            local: listener.addr,
            listener: Arc::clone(&listener.name),
            tls: None,
            session_id: id,
            lmtp: listener.lmtp,
        };
        let implicit = listener.implicit_tls;
        let connection = async move {
            let stream: Box<dyn Transport> = Box::new(stream);
            let stream = if implicit {
                let Some((tls, tls_info)) = implicit_tls(&common, stream).await else {
                    debug!("implicit TLS failed or not configured");
                    return;
                };
                info.tls = Some(tls_info);
                Stream::OtherTls(Box::new(tls))
            } else {
                Stream::Other(stream)
            };
            // Owned here, run by reference: an async fn taking `self` by value keeps two
            // copies of it in its state (the argument and the moved local).
            let mut connection = Connection::new(handler, common, stream, info);
            connection.run().await;
        };
        connection.instrument(span)
    }

    /// Binds and serves until `shutdown` completes, then shuts down gracefully (see
    /// [`BoundServer::serve`]).
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        self.bind().await?.serve(shutdown).await
    }
}

impl<H: Handler> ServerBuilder<H> {
    /// Listens on `addr` (repeatable). An IPv6 wildcard (`[::]`) is bound v6-only, so
    /// `0.0.0.0` can be bound on the same port too.
    #[must_use]
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.listener(Listener::new(addr))
    }

    /// Listens on `addr` under a name the handler sees in [`ConnectionInfo::listener`].
    #[must_use]
    pub fn listen_named(self, name: impl Into<Arc<str>>, addr: SocketAddr) -> Self {
        self.listener(Listener::named(name, addr))
    }

    /// Listens on `addr` with implicit TLS (port 465 style); needs [`ServerBuilder::tls`].
    #[must_use]
    pub fn implicit_tls_listen(self, addr: SocketAddr) -> Self {
        self.listener(Listener::new(addr).implicit_tls())
    }

    /// Listens on `addr` for LMTP (RFC 2033): `LHLO`, and one reply per recipient after the
    /// message ([`crate::DataOutcome::per_recipient`]).
    #[must_use]
    pub fn lmtp_listen(self, addr: SocketAddr) -> Self {
        self.listener(Listener::new(addr).lmtp())
    }

    /// Hands command lines with `verb` (compared case-insensitively) to
    /// [`crate::SessionHandler::extension`] instead of refusing them, and advertises
    /// `capability` in the EHLO reply if given (e.g. XCLIENT, ETRN or a verb of your own).
    /// The verbs the session implements cannot be taken over. Added to those of
    /// [`ServerBuilder::session_config`], whichever is called first.
    #[must_use]
    pub fn extension(
        mut self,
        verb: impl Into<String>,
        capability: Option<smtp_proto::ehlo::Capability>,
    ) -> Self {
        self.extensions.push((verb.into(), capability));
        self
    }

    /// Adds a listener.
    #[must_use]
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Enables TLS: STARTTLS on plain listeners and the implicit-TLS listeners. Keep a clone
    /// of `tls` to [`TlsConfig::reload`] it later.
    #[must_use]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The server's name in the greeting, EHLO and closing replies (default:
    /// [`machine_hostname`]).
    #[must_use]
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Protocol options of every session (CHUNKING, SMTPUTF8, DSN, the bare line ending policy
    /// of message content, the unauthorised pipelining policy
    /// [`SessionConfig::forbid_unauth_pipelining`], on by default). Its host name, AUTH
    /// mechanisms and extensions are used unless [`ServerBuilder::hostname`],
    /// [`ServerBuilder::auth`] or [`ServerBuilder::extension`] were called, before or after
    /// this (those win, or for extensions add, whatever the order); its size, recipient, line,
    /// address and error limits, its timeouts and TLS flags are replaced by those of
    /// [`ServerBuilder::limits`] and [`ServerBuilder::tls`].
    #[must_use]
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.session = config;
        self
    }

    /// Offers SMTP AUTH with these mechanisms (e.g. [`crate::Mechanism::Plain`] and
    /// [`crate::Mechanism::Login`]), only on encrypted connections unless the
    /// [`ServerBuilder::session_config`] says otherwise
    /// ([`SessionConfig::auth_requires_tls`]); [`crate::SessionHandler::authenticate`]
    /// checks the credentials and [`crate::SessionHandler::auth_offered`] can turn AUTH off
    /// per connection. Failures are limited by [`Limits::max_auth_failures`] and
    /// [`Limits::max_auth_failures_per_ip`].
    #[must_use]
    pub fn auth(mut self, mechanisms: impl IntoIterator<Item = crate::Mechanism>) -> Self {
        self.auth = Some(mechanisms.into_iter().collect());
        self
    }

    /// Checks the configuration. A server without listeners is valid: it can serve streams
    /// ([`Server::serve_stream`]) but not bind ([`Error::NoListeners`]).
    ///
    /// # Errors
    /// [`Error::TlsRequired`] for an implicit-TLS listener without TLS; [`Error::Config`]
    /// for a host name, capability or extension verb that fails [`SessionConfig::check`].
    pub fn build(self) -> Result<Server<H>, Error> {
        if self.tls.is_none() {
            if let Some(l) = self.listeners.iter().find(|l| l.implicit_tls) {
                return Err(Error::TlsRequired(l.addr));
            }
        }
        let mut session = self.session;
        if let Some(hostname) = self.hostname {
            session.hostname = hostname;
        }
        if let Some(auth) = self.auth {
            session.auth_mechanisms = auth;
        }
        // Added to the configuration's own, each once (a verb or keyword given both ways is
        // not offered twice).
        for (verb, capability) in self.extensions {
            if !session
                .extension_verbs
                .iter()
                .any(|v| v.eq_ignore_ascii_case(&verb))
            {
                session.extension_verbs.push(verb);
            }
            if let Some(c) = capability {
                let keyword = c.keyword();
                if !session
                    .extra_capabilities
                    .iter()
                    .any(|e| e.keyword().eq_ignore_ascii_case(keyword))
                {
                    session.extra_capabilities.push(c);
                }
            }
        }
        let limits = self.limits;
        session.max_message_size = limits.max_message_size;
        session.max_recipients = limits.max_recipients;
        session.max_recipient_overshoot = limits.max_recipient_overshoot;
        session.max_errors = limits.max_errors;
        session.max_refused_recipients = limits.max_refused_recipients;
        session.max_auth_failures = limits.max_auth_failures;
        session.limits.max_command_line = limits.max_command_line;
        session.limits.max_local_part = limits.max_local_part;
        session.limits.max_path = limits.max_path;
        session.data.max_line_len = limits.max_text_line;
        session.command_timeout = limits.command_timeout;
        session.data_timeout = limits.data_timeout;
        session.starttls = false;
        session.tls_active = false;
        session.check()?;
        // One shared configuration per kind of connection: encrypted or not, SMTP or LMTP.
        let variant = |tls_active: bool, lmtp: bool| {
            let mut c = session.clone();
            c.tls_active = tls_active;
            c.starttls = !tls_active && self.tls.is_some();
            c.lmtp = lmtp;
            Arc::new(c)
        };
        let session_configs = [
            variant(false, false),
            variant(false, true),
            variant(true, false),
            variant(true, true),
        ];
        Ok(Server {
            handler: Arc::new(self.handler),
            listeners: self.listeners,
            common: Arc::new(Common {
                auth_failures: FailureTable::new(
                    limits.max_auth_failures_per_ip,
                    limits.auth_failure_window,
                ),
                session_config: session,
                session_configs,
                tls: self.tls,
                limits,
                tracker: Tracker::default(),
                soft: CancellationToken::new(),
                hard: CancellationToken::new(),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Builds and binds; see [`Server::bind`].
    ///
    /// # Errors
    /// As [`ServerBuilder::build`] and [`Server::bind`].
    pub async fn bind(self) -> Result<BoundServer<H>, Error> {
        self.build()?.bind().await
    }
}

/// A server whose listeners are bound; learn the addresses (useful with port 0), then serve.
pub struct BoundServer<H> {
    handler: Arc<H>,
    listeners: Vec<(TcpListener, Listener)>,
    common: Arc<Common>,
}

impl<H: Handler> BoundServer<H> {
    /// The bound addresses, in the order the listeners were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs_inner()
    }

    /// Accepts and serves connections until `shutdown` completes. Then it stops accepting,
    /// answers idle sessions `421 4.3.2` at once, lets sessions receiving a message finish it
    /// within [`Limits::shutdown_grace`] (then answers them `421 4.3.2` too), and returns
    /// when every connection has ended (waiting at most 10 more seconds for connections
    /// stuck in a handler or a write after the grace period).
    ///
    /// # Errors
    /// None so far; accept errors (e.g. too many open files) are logged and retried.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut loops = JoinSet::new();
        for (socket, listener) in self.listeners {
            info!(addr = %listener.addr, name = %listener.name, tls = listener.implicit_tls, "listening");
            loops.spawn(accept_loop(
                Arc::clone(&self.handler),
                Arc::clone(&self.common),
                socket,
                listener,
            ));
        }
        shutdown.await;
        let common = &self.common;
        info!(
            connections = common.tracker.count(),
            "shutting down: no longer accepting"
        );
        common.soft.cancel();
        while loops.join_next().await.is_some() {}
        let grace = common.limits.shutdown_grace;
        if tokio::time::timeout(grace, common.tracker.wait_idle())
            .await
            .is_err()
        {
            info!(
                connections = common.tracker.count(),
                "grace period over, closing remaining sessions"
            );
            common.hard.cancel();
            if tokio::time::timeout(FINAL_WAIT, common.tracker.wait_idle())
                .await
                .is_err()
            {
                warn!(
                    connections = common.tracker.count(),
                    "connections still open at exit"
                );
            }
        }
        Ok(())
    }
}

impl<H> fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl<H> fmt::Debug for ServerBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listeners", &self.listeners)
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("session", &self.session)
            .field("hostname", &self.hostname)
            .field("auth", &self.auth)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl<H> fmt::Debug for BoundServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundServer")
            .field("listeners", &self.local_addrs_inner())
            .finish_non_exhaustive()
    }
}

impl<H> BoundServer<H> {
    fn local_addrs_inner(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, l)| l.addr).collect()
    }
}

/// Server state shared by every connection (not generic, so the driver is compiled once).
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) session_config: SessionConfig,
    /// The configurations sessions share, by [`Common::config_for`].
    session_configs: [Arc<SessionConfig>; 4],
    /// Failed logins per client address.
    pub(crate) auth_failures: FailureTable,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) limits: Limits,
    tracker: Tracker,
    /// Graceful shutdown: stop accepting, close idle sessions.
    pub(crate) soft: CancellationToken,
    /// End of the grace period: close every session.
    pub(crate) hard: CancellationToken,
    next_id: AtomicU64,
}

async fn accept_loop<H: Handler>(
    handler: Arc<H>,
    common: Arc<Common>,
    socket: TcpListener,
    listener: Listener,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = common.soft.cancelled() => break,
            r = socket.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection errors (reset before accept) need no pause; running out of
                // descriptors does.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    warn!(addr = %listener.addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let guard = match acquire(&common, ip) {
            Ok(g) => g,
            Err(reply) => {
                debug!(%peer, reply = %reply, "connection refused");
                tokio::spawn(refuse(tcp, reply));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Only a wildcard listener needs to ask the socket (a syscall per connection) which
        // of the host's addresses the client reached; otherwise it is the listener's.
        let local = if listener.addr.ip().is_unspecified() {
            tcp.local_addr().unwrap_or(listener.addr)
        } else {
            listener.addr
        };
        let id = common.next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("session", id, %peer, listener = %listener.name);
        let info = ConnectionInfo {
            peer,
            local,
            listener: Arc::clone(&listener.name),
            tls: None,
            session_id: id,
            lmtp: listener.lmtp,
        };
        let handler = Arc::clone(&handler);
        let common = Arc::clone(&common);
        if listener.implicit_tls {
            let connection = async move {
                let _guard = guard;
                let mut info = info;
                let Some((tls, tls_info)) = implicit_tls(&common, tcp).await else {
                    return;
                };
                info.tls = Some(tls_info);
                let stream = Stream::Tls(Box::new(tls));
                let mut connection = Connection::new(handler, common, stream, info);
                connection.run().await;
            };
            tokio::spawn(connection.instrument(span));
        } else {
            // Made before the task, so that the task's state holds the connection once, not
            // also the parts it was made of (an async block keeps room for what it captures
            // for as long as it lives). Run by reference: an async fn taking `self` by value
            // keeps two copies of it in its state (the argument and the moved local).
            let mut connection = Connection::new(handler, common, Stream::Plain(tcp), info);
            let connection = async move {
                let _guard = guard;
                connection.run().await;
                // Before the guard: a captured value would be dropped after the locals, and
                // the connection must be gone (socket, handler session) before it is
                // uncounted, as in the TLS branch.
                drop(connection);
            };
            tokio::spawn(connection.instrument(span));
        }
    }
}

/// Counts connections, overall and per client address.
#[derive(Debug, Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    idle: Notify,
}

#[derive(Debug, Default)]
struct TrackerState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A counted connection; dropping it uncounts it.
struct ConnGuard {
    common: Arc<Common>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let tracker = &self.common.tracker;
        let mut state = tracker.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
        if state.total == 0 {
            tracker.idle.notify_waiters();
        }
    }
}

impl Common {
    /// The session configuration for a connection that is encrypted already (implicit TLS)
    /// or not, speaking LMTP or SMTP.
    pub(crate) fn config_for(&self, tls_active: bool, lmtp: bool) -> Arc<SessionConfig> {
        Arc::clone(&self.session_configs[usize::from(tls_active) * 2 + usize::from(lmtp)])
    }
}

/// Counts a new connection from `ip`, or the reply refusing it.
fn acquire(common: &Arc<Common>, ip: IpAddr) -> Result<ConnGuard, Refusal> {
    let limits = &common.limits;
    let mut state = common.tracker.lock();
    if limits.max_connections.is_some_and(|max| state.total >= max) {
        return Err(too_many(
            &common.session_config.hostname,
            "Too many connections, try again later",
        ));
    }
    let exempt = limits.per_ip_exempt_loopback && is_loopback(ip);
    // An IPv6 client by its /64, an IPv4-mapped one as its IPv4 address.
    let ip = crate::auth::key(ip);
    let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
    if !exempt
        && limits
            .max_connections_per_ip
            .is_some_and(|max| from_ip >= max)
    {
        return Err(too_many(
            &common.session_config.hostname,
            "Too many connections from your address, try again later",
        ));
    }
    state.total += 1;
    *state.per_ip.entry(ip).or_insert(0) += 1;
    drop(state);
    Ok(ConnGuard {
        common: Arc::clone(common),
        ip,
    })
}

/// 127.0.0.0/8, `::1`, or an IPv4-mapped loopback address (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn too_many(hostname: &str, text: &str) -> Refusal {
    LIMIT_REACHED.with_text(format!("{hostname} {text}"))
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn count(&self) -> usize {
        self.lock().total
    }

    /// Returns once no connection is counted.
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The machine's host name (Linux: `/proc/sys/kernel/hostname`, else `/etc/hostname`), or
/// `localhost` when there is none or it is not a domain name (`my_host`: no greeting or EHLO
/// reply can carry it); a trailing dot is dropped. What [`ServerBuilder`] uses until
/// [`hostname`](ServerBuilder::hostname) is called.
pub fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().trim_end_matches('.').to_owned())
        .find(|s| !s.is_empty())
        .filter(|s| smtp_proto::address::parse_domain(s).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
