//! One SMTP session with one server: connect, greeting, EHLO, STARTTLS, transactions, QUIT.
//!
//! See the [crate documentation](crate) for an example.
//!
//! # Replies in step with commands
//!
//! A reply counts only as the answer to the command it follows in order. Before each command
//! (or pipelined group), before the message after `354` and before its end marker, the
//! client checks that nothing has arrived (what is buffered, and the socket without
//! waiting): a reply there answers nothing the client sent, so the server is out of step
//! (a `250` written while the message was still being sent, a reply sent twice) and every
//! later reply could be taken for the wrong command. That is
//! [`ClientError::OutOfStep`], and the connection is unusable; a message is never counted
//! delivered on the strength of such a reply. The exception is `421`, which a server may
//! send at any time (RFC 5321 §3.8): it is read as the answer to the next command, a
//! refusal. DATA's only positive reply is `354`: a `250`
//! to DATA itself is [`ClientError::Unexpected`], not a delivery.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use smtp_proto::command::{Command, Word};
use smtp_proto::data::DataEncoder;
use smtp_proto::ehlo::{parse_ehlo, EhloReply};
use smtp_proto::param::{Body, MailParams, Orcpt, RcptParams, XText};
use smtp_proto::reply::Reply;
use smtp_proto::sasl::{decode_base64, encode_base64, ClientExchange, Mechanism};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::auth::{self, AuthError, CancelReason, Credentials};
use crate::codec::{bound_reply, has_8bit, wire_size, CodecError, ReplyDecoder};
use crate::error::ClientError;
use crate::message::{Message, MessageInfo, MessageReader, CHUNK};
use crate::resolve::{resolve_literal, ResolveError, Resolver};
use crate::text::SafeReply;
use crate::tls::{TlsCache, TlsError, TlsInfo, TlsPolicy};

/// How long to wait for each step. The defaults are RFC 5321 §4.5.3.2's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// The TCP connection (default 30 s; the RFC sets none).
    pub connect: Duration,
    /// The `220` greeting (default 5 min).
    pub greeting: Duration,
    /// MAIL's reply (default 5 min).
    pub mail: Duration,
    /// Each RCPT's reply (default 5 min).
    pub rcpt: Duration,
    /// DATA's `354` (default 2 min).
    pub data_init: Duration,
    /// Each write of message data (default 3 min).
    pub data_block: Duration,
    /// The reply after the final `.` (default 10 min).
    pub data_end: Duration,
    /// EHLO, HELO, STARTTLS and its handshake, RSET, NOOP, and QUIT by [`Connection::quit`]
    /// (default 5 min). A QUIT sent by [`Connection::quit_in_background`] (as
    /// [`Deliverer`](crate::Deliverer) does) waits at most [`QUIT_GRACE`] of it.
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
            command: Duration::from_secs(5 * MIN),
        }
    }
}

impl Timeouts {
    /// Every timeout set to `d` (handy in tests).
    pub fn all(d: Duration) -> Self {
        Self {
            connect: d,
            greeting: d,
            mail: d,
            rcpt: d,
            data_init: d,
            data_block: d,
            data_end: d,
            command: d,
        }
    }
}

/// The longest a QUIT sent by [`Connection::quit_in_background`] may take, from sending QUIT
/// to the socket being closed (or the command timeout, when that is shorter): the `221`, the
/// TLS `close_notify` and its flush all fit in it, and whatever is left undone when it runs
/// out is abandoned and the socket closed. [`Connection::quit`] gives the close after its
/// `221` the same bound. The outcome of the session is already known then; this only bounds
/// how long a silent peer (one that stops reading, a zero receive window) keeps a socket
/// and a task alive.
pub const QUIT_GRACE: Duration = Duration::from_secs(10);

/// How the client introduces itself and secures the channel.
///
/// The rustls configuration for its [TLS policy](TlsPolicy) is built the first time a
/// connection needs it and kept with the configuration, shared by its clones, so that later
/// connections resume TLS sessions (see [`crate::tls`]). Build one `ClientConfig` and use it
/// (or clones) for every connection, rather than a new one each time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The name sent with EHLO/HELO: this host's fully qualified name (RFC 5321 §4.1.1.1).
    pub helo_name: String,
    /// When and how to use TLS; by default STARTTLS is required and the certificate
    /// verified ([`TlsPolicy::RequireVerified`]).
    pub tls: TlsPolicy,
    /// Root certificates trusted in addition to Mozilla's (e.g. a private CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Per-step timeouts.
    pub timeouts: Timeouts,
    /// Log in with these after EHLO (and STARTTLS): see [`crate::auth`]. `None` (the
    /// default): no AUTH.
    pub credentials: Option<Credentials>,
    /// The rustls configurations built for this configuration and its clones.
    tls_cache: TlsCache,
}

impl ClientConfig {
    /// Defaults: STARTTLS required with a verified certificate
    /// ([`TlsPolicy::RequireVerified`]; choose [`TlsPolicy::OpportunisticUnverified`]
    /// explicitly for relaying to MX hosts), RFC 5321 timeouts, no extra roots. `helo_name` must be
    /// an ASCII domain name or address literal (`mail.example.org`, `[192.0.2.1]`); anything
    /// else is refused at connect time with [`ClientError::InvalidHeloName`], before a byte is
    /// sent (so a name taken from elsewhere cannot smuggle CR LF and a command).
    pub fn new(helo_name: impl Into<String>) -> Self {
        Self {
            helo_name: helo_name.into(),
            tls: TlsPolicy::default(),
            extra_roots: Vec::new(),
            timeouts: Timeouts::default(),
            credentials: None,
            tls_cache: TlsCache::default(),
        }
    }

    /// Sets the TLS policy.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsPolicy) -> Self {
        self.tls = tls;
        self
    }

    /// Adds a trusted root certificate (DER).
    #[must_use]
    pub fn with_root(mut self, cert: CertificateDer<'static>) -> Self {
        self.extra_roots.push(cert);
        self
    }

    /// Sets the timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Logs in with `credentials` on every connection, after STARTTLS
    /// ([`Connection::login`]). The password goes only over TLS unless the credentials say
    /// otherwise ([`Credentials::allow_plaintext_auth`]); with [`TlsPolicy::None`] that means
    /// every login fails with [`AuthError::EncryptionRequired`].
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Whether a failed STARTTLS may be followed by a clear-text session: not when the
    /// credentials need TLS, as the login would fail there before sending anything.
    pub(crate) fn may_fall_back_to_clear_text(&self) -> bool {
        // Not `Option::is_none_or`: the workspace's rust-version is 1.80.
        !matches!(&self.credentials, Some(c) if !c.plaintext_allowed())
    }
}

/// The envelope and its recipients are the protocol crate's, shared with the server library
/// and the queue (see [`smtp_proto::envelope`]).
pub use smtp_proto::envelope::{Envelope, Recipient};

/// What the server said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// The message was accepted for this recipient; the reply is the server's final reply to
    /// the message data (`250` after the `.`).
    Accepted(Reply),
    /// Refused: the reply to RCPT, or, for a recipient RCPT accepted, the failure reply to the
    /// message data (4yz: try again later; 5yz: bounce).
    Rejected(Reply),
}

impl RcptResult {
    /// The reply behind the result.
    pub fn reply(&self) -> &Reply {
        match self {
            Self::Accepted(reply) | Self::Rejected(reply) => reply,
        }
    }

    /// Whether the message was accepted for this recipient.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted(_))
    }
}

/// The outcome of [`Connection::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// The reply to MAIL (positive, or `send` returns an error).
    pub mail: Reply,
    /// One result per recipient, in the envelope's order.
    pub rcpts: Vec<RcptResult>,
    /// The replies to each RCPT, in order, as received.
    pub rcpt_replies: Vec<Reply>,
    /// The reply to DATA when it was sent and refused (not `354`), or the final reply to the
    /// message data; `None` when DATA was not sent (no recipient accepted, without PIPELINING).
    pub data: Option<Reply>,
}

impl TransactionResult {
    /// How many recipients got the message.
    pub fn accepted(&self) -> usize {
        self.rcpts.iter().filter(|r| r.is_accepted()).count()
    }
}

/// The socket, in clear text or encrypted.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A Unix-domain socket (LMTP to a local mailbox server, see [`crate::lmtp`]).
    Unix(UnixStream),
    /// A stream the caller opened ([`Connection::from_stream`]).
    Other(Box<dyn Transport>),
    /// TLS over such a stream, after STARTTLS.
    OtherTls(Box<TlsStream<Box<dyn Transport>>>),
    /// Only during the STARTTLS handshake, or after it failed.
    Gone,
}

/// What [`Stream::Other`] holds: any byte stream a task can own.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost during STARTTLS",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Other(s) => Pin::new(s).poll_read(cx, buf),
            Self::OtherTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Other(s) => Pin::new(s).poll_write(cx, buf),
            Self::OtherTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Other(s) => Pin::new(s).poll_flush(cx),
            Self::OtherTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Other(s) => Pin::new(s).poll_shutdown(cx),
            Self::OtherTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// An open SMTP session with one server, greeted and (per the policy) encrypted.
///
/// Driving it: [`Connection::connect`], then [`Connection::send`] any number of times
/// (each `send` after the first starts with RSET), then [`Connection::quit`].
/// After an error other than a refusal (I/O, timeout, malformed reply) the connection is
/// unusable and further calls return [`ClientError::Broken`].
pub struct Connection {
    stream: Stream,
    buf: BytesMut,
    decoder: ReplyDecoder,
    config: ClientConfig,
    peer: SocketAddr,
    server_name: String,
    greeting: Reply,
    ehlo: Option<EhloReply>,
    tls: Option<TlsInfo>,
    discarded: usize,
    transactions: usize,
    authenticated: Option<Mechanism>,
    broken: bool,
    /// The last transaction's end of data was sent and its final reply (every reply, in
    /// LMTP) has not been read: see [`Connection::outcome_unknown`].
    end_unanswered: bool,
    /// An LMTP session (RFC 2033): LHLO, and one reply per accepted recipient after the data.
    lmtp: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("server_name", &self.server_name)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr`, reads the greeting, says EHLO (HELO if EHLO gets a 5yz reply) and
    /// runs STARTTLS as `config.tls` says, then EHLO again, then logs in when the config has
    /// [credentials](ClientConfig::with_credentials) ([`Connection::login`]). `server_name` is
    /// the host name the address belongs to (the MX name): the name the certificate must be
    /// valid for.
    ///
    /// Under [`TlsPolicy::Implicit`] the TLS handshake comes first, before the greeting, and
    /// STARTTLS is not used.
    ///
    /// To connect by host name, see [`connect_host`](Self::connect_host).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] or [`ClientError::Timeout`] when no connection could be made;
    /// [`ClientError::Greeting`] for a greeting other than `220`; [`ClientError::Refused`] when
    /// both EHLO and HELO are refused; [`ClientError::StartTlsNotOffered`] and
    /// [`ClientError::Tls`] as the policy says; [`ClientError::Auth`] when the login fails
    /// (the session is then ended with QUIT).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<Self, ClientError> {
        check_helo_name(&config.helo_name)?;
        let tcp = open_tcp(addr, config).await?;
        Self::establish(Stream::Plain(tcp), addr, server_name, config, false).await
    }

    /// Connects to `host` (a host name such as `smtp.example.org`, an IP address, or an
    /// address literal such as `[192.0.2.1]`) on `port`, resolving it with `resolver` (the
    /// same [`Resolver`] as for delivery: its name servers and [address
    /// order](crate::AddressOrder), A and AAAA records, no MX lookup), then runs the session
    /// as [`connect`](Self::connect) does. The certificate is checked against `host`, the name
    /// given, never against the address it resolved to.
    ///
    /// The addresses are tried in the resolver's order, each within the connect timeout, until
    /// one accepts the TCP connection; once one has, its session decides (a `421` greeting or
    /// a TLS failure there is returned, not retried at the next address).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use smtp_client::{ClientConfig, Connection, Credentials, Resolver};
    ///
    /// // Submission (port 587): STARTTLS required, certificate verified for the name.
    /// let config = ClientConfig::new("laptop.example.org")
    ///     .with_credentials(Credentials::new("alice", "secret")?);
    /// let conn = Connection::connect_host(&Resolver::system()?, "smtp.example.org", 587, &config)
    ///     .await?;
    /// # conn.quit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Resolve`] when `host` is no host name ([`ResolveError::InvalidDomain`],
    /// e.g. it holds a CR or LF) or cannot be resolved; the error of the last address when
    /// none accepted the connection ([`ClientError::Connect`], [`ClientError::Timeout`]);
    /// then those of [`connect`](Self::connect).
    pub async fn connect_host(
        resolver: &Resolver,
        host: &str,
        port: u16,
        config: &ClientConfig,
    ) -> Result<Self, ClientError> {
        check_helo_name(&config.helo_name)?;
        let name = check_host(host).map_err(ClientError::Resolve)?;
        let addrs = resolver
            .resolve_host(&name)
            .await
            .map_err(ClientError::Resolve)?;
        let mut last = None;
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            match open_tcp(addr, config).await {
                Ok(tcp) => {
                    return Self::establish(Stream::Plain(tcp), addr, &name, config, false).await
                }
                Err(e) => {
                    debug!(%host, %addr, error = %e, "cannot connect; trying the next address");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Resolve(ResolveError::NoAddresses {
                domain: name.clone(),
            })
        }))
    }

    /// [`connect`](Self::connect) for an LMTP server (RFC 2033), as a local mailbox server
    /// such as Dovecot's `lmtp` service offers: LHLO instead of EHLO (no HELO fallback), and
    /// [`send`](Self::send) reads one reply per accepted recipient after the data, each the
    /// verdict for its recipient ([`RcptResult`]). STARTTLS and login are as the config says;
    /// over a Unix-domain socket use [`TlsPolicy::None`]. On a Unix-domain socket
    /// [`peer_addr`](Self::peer_addr) is the unspecified address `0.0.0.0:0`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); a refused LHLO is [`ClientError::Refused`].
    pub async fn connect_lmtp(
        target: &crate::lmtp::LmtpTarget,
        config: &ClientConfig,
    ) -> Result<Self, ClientError> {
        use crate::lmtp::LmtpTarget;
        check_helo_name(&config.helo_name)?;
        match target {
            LmtpTarget::Tcp(addr) => {
                let addr = *addr;
                let tcp = open_tcp(addr, config).await?;
                let name = addr.ip().to_string();
                Self::establish(Stream::Plain(tcp), addr, &name, config, true).await
            }
            LmtpTarget::Unix(path) => {
                let addr = SocketAddr::from(([0, 0, 0, 0], 0));
                let unix =
                    match tokio::time::timeout(config.timeouts.connect, UnixStream::connect(path))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        // The error names the socket (a Connect error would name `addr`).
                        Ok(Err(e)) => {
                            return Err(ClientError::Io(io::Error::new(
                                e.kind(),
                                format!("cannot connect to {}: {e}", path.display()),
                            )))
                        }
                        Err(_) => return Err(ClientError::Timeout { stage: "connect" }),
                    };
                let name = path.display().to_string();
                Self::establish(Stream::Unix(unix), addr, &name, config, true).await
            }
        }
    }

    /// [`connect`](Self::connect) over a stream the caller opened: an in-memory
    /// [`tokio::io::duplex`] pipe to a server in the same process (tests), a proxy, a tunnel.
    /// Reads the greeting, says EHLO, runs STARTTLS over `stream` as `config.tls` says and logs
    /// in, as [`connect`](Self::connect) does. `peer` is what
    /// [`peer_addr`](Self::peer_addr) and the logs show; `server_name` is the name the
    /// server's certificate must be valid for.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), except the errors of connecting.
    pub async fn from_stream<S>(
        stream: S,
        peer: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        check_helo_name(&config.helo_name)?;
        let stream = Stream::Other(Box::new(stream));
        Self::establish(stream, peer, server_name, config, false).await
    }

    /// The session on a connected stream: greeting, hello, STARTTLS and login.
    async fn establish(
        stream: Stream,
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
        lmtp: bool,
    ) -> Result<Self, ClientError> {
        let mut conn = Self {
            stream,
            buf: BytesMut::with_capacity(4096),
            decoder: ReplyDecoder::new(),
            config: config.clone(),
            peer: addr,
            server_name: server_name.to_owned(),
            greeting: Reply::service_ready(server_name),
            ehlo: None,
            tls: None,
            discarded: 0,
            transactions: 0,
            authenticated: None,
            broken: false,
            end_unanswered: false,
            lmtp,
        };
        if config.tls == TlsPolicy::Implicit {
            // RFC 8314 §3.3: TLS first; the greeting comes inside it.
            conn.handshake().await?;
        }
        let greeting = conn
            .read_reply(config.timeouts.greeting, "greeting")
            .await?;
        debug!(%addr, greeting = %SafeReply(&greeting), "greeting");
        if greeting.code() != 220 {
            // Be polite before going (RFC 5321 §3.1 asks for QUIT after a 554), without
            // waiting for the answer.
            conn.quit_in_background();
            return Err(ClientError::Greeting(greeting));
        }
        conn.greeting = greeting;
        conn.hello().await?;

        let offered = conn.ehlo.as_ref().is_some_and(|e| e.has("STARTTLS"));
        match config.tls {
            TlsPolicy::None | TlsPolicy::Implicit => {}
            TlsPolicy::OpportunisticUnverified if !offered => {}
            TlsPolicy::RequireVerified if !offered => {
                conn.quit_in_background();
                return Err(ClientError::StartTlsNotOffered);
            }
            TlsPolicy::RequireVerified => {
                conn.starttls().await?;
                conn.hello().await?;
            }
            TlsPolicy::OpportunisticUnverified => {
                // Whatever breaks the session from STARTTLS to the EHLO inside TLS is a TLS
                // failure, which `Deliverer` answers with a clear-text retry. A server's
                // refusal of that EHLO is its verdict, not a TLS failure.
                let secured = async {
                    conn.starttls().await?;
                    conn.hello().await
                }
                .await;
                match secured {
                    Ok(()) => {}
                    Err(e @ ClientError::Refused { .. }) | Err(e @ ClientError::Tls(_)) => {
                        return Err(e)
                    }
                    Err(ClientError::Timeout { stage }) => {
                        return Err(TlsError::Timeout { stage }.into())
                    }
                    Err(ClientError::Closed { stage }) => {
                        return Err(TlsError::PeerClosed { stage }.into())
                    }
                    Err(ClientError::Io(e)) => {
                        let name = tls_server_name(server_name, addr);
                        return Err(TlsError::from_tls_io(&e, &name)
                            .unwrap_or_else(|| TlsError::SessionFailed {
                                detail: crate::text::escape_controls(&e.to_string()).into_owned(),
                            })
                            .into());
                    }
                    Err(e) => {
                        return Err(TlsError::SessionFailed {
                            detail: crate::text::escape_controls(&e.to_string()).into_owned(),
                        }
                        .into())
                    }
                }
            }
        }
        if let Some(credentials) = &config.credentials {
            if let Err(e) = conn.login(credentials).await {
                conn.quit_in_background();
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// Logs in with SMTP AUTH (RFC 4954), using the capabilities of the last EHLO (the one
    /// inside TLS after STARTTLS): the strongest mechanism offered among those implemented
    /// (`PLAIN`, then `LOGIN`), the password only over TLS unless the credentials allow clear
    /// text. Returns the mechanism used. See [`crate::auth`] for the rules.
    ///
    /// # Errors
    ///
    /// [`ClientError::Auth`]: [`AuthError::EncryptionRequired`] or [`AuthError::NotOffered`]
    /// with nothing sent; [`AuthError::Rejected`] (5yz, e.g. `535`) or
    /// [`AuthError::Temporary`] (4yz, e.g. `454`) with the server's reply;
    /// [`AuthError::Cancelled`] when a challenge had no answer (the client sent `*`). After
    /// these the connection is still usable. [`ClientError::Unexpected`] for a reply that is
    /// neither (e.g. `250`), I/O errors, timeouts and malformed replies, after which it is
    /// not. Logging in twice is refused by servers with `503`
    /// ([`AuthError::Rejected`]).
    pub async fn login(&mut self, credentials: &Credentials) -> Result<Mechanism, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        if !self.is_tls() && !credentials.plaintext_allowed() {
            return Err(AuthError::EncryptionRequired.into());
        }
        let offered = self
            .ehlo
            .as_ref()
            .map_or(&[][..], EhloReply::auth_mechanisms);
        let Some(mechanism) = auth::choose(offered) else {
            return Err(AuthError::NotOffered {
                offered: auth::bounded_names(offered),
            }
            .into());
        };
        let t = self.config.timeouts.command;
        let mut exchange =
            ClientExchange::new(mechanism, credentials.user(), credentials.secret().clone());
        let mut line = Zeroizing::new(Vec::with_capacity(128));
        line.extend_from_slice(b"AUTH ");
        line.extend_from_slice(mechanism.name().as_bytes());
        // RFC 4954 §4: an initial response that would make the line longer than 512 octets
        // is not sent; the server then asks with an empty challenge.
        if let Some(initial) = exchange.initial_response().map(Zeroizing::new) {
            let encoded = Zeroizing::new(encode_base64(&initial));
            if line.len() + 1 + encoded.len().max(1) + 2 <= 512 {
                line.push(b' ');
                // An empty initial response is `=` (RFC 4954 §4).
                line.extend_from_slice(if encoded.is_empty() {
                    b"="
                } else {
                    encoded.as_bytes()
                });
            } else {
                // Start again, so the exchange answers the empty challenge with the message.
                exchange = ClientExchange::new(
                    mechanism,
                    credentials.user(),
                    credentials.secret().clone(),
                );
            }
        }
        line.extend_from_slice(b"\r\n");
        debug!(peer = %self.peer, %mechanism, user = %crate::text::escape_controls(credentials.user()), "AUTH");
        self.write_all(&line, t, "AUTH").await?;
        loop {
            let reply = self.read_reply(t, "AUTH").await?;
            match reply.code() {
                235 => {
                    debug!(peer = %self.peer, %mechanism, "logged in");
                    self.authenticated = Some(mechanism);
                    return Ok(mechanism);
                }
                334 => {}
                400..=499 => return Err(AuthError::Temporary { mechanism, reply }.into()),
                500..=599 => return Err(AuthError::Rejected { mechanism, reply }.into()),
                _ => {
                    return Err(self.fail(ClientError::Unexpected {
                        command: "AUTH",
                        reply,
                    }))
                }
            }
            let text = reply.lines().next().unwrap_or("");
            let answer = match decode_base64(text.trim().as_bytes()) {
                None => Err(CancelReason::MalformedChallenge),
                Some(challenge) => exchange
                    .answer(&challenge)
                    .map_err(|e| CancelReason::UnexpectedChallenge { round: e.round }),
            };
            match answer {
                Ok(answer) => {
                    let answer = Zeroizing::new(answer);
                    let mut out = Zeroizing::new(encode_base64(&answer).into_bytes());
                    out.extend_from_slice(b"\r\n");
                    self.write_all(&out, t, "AUTH").await?;
                }
                Err(reason) => {
                    self.write_all(b"*\r\n", t, "AUTH").await?;
                    let reply = self.read_reply(t, "AUTH").await?;
                    if reply.code() == 334 {
                        // A server that does not take the cancellation is beyond talking to.
                        return Err(self.fail(ClientError::Unexpected {
                            command: "AUTH",
                            reply,
                        }));
                    }
                    return Err(AuthError::Cancelled {
                        mechanism,
                        reason,
                        reply,
                    }
                    .into());
                }
            }
        }
    }

    /// The mechanism of a successful [`login`](Self::login), if there was one.
    pub fn authenticated(&self) -> Option<Mechanism> {
        self.authenticated
    }

    /// The server's `220` greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The server's EHLO reply (its capabilities), or `None` when only HELO was accepted.
    pub fn ehlo(&self) -> Option<&EhloReply> {
        self.ehlo.as_ref()
    }

    /// Whether the server offers an extension (`PIPELINING`, `SIZE`, ...).
    pub fn has(&self, keyword: &str) -> bool {
        self.ehlo.as_ref().is_some_and(|e| e.has(keyword))
    }

    /// The address connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether more commands may be sent: false after an I/O error, a timeout or a
    /// malformed reply.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Whether the last [`send`](Self::send) failed after the message's end marker was
    /// written and before the server's verdict on it was read (a timeout, the connection
    /// closed, a malformed reply): the server may have taken the message. Sending it again,
    /// here or anywhere, may deliver it twice (RFC 1047); a caller that must not duplicate
    /// should wait and retry later, as a queue does. False after any other failure (the
    /// message was not taken) and after success.
    pub fn outcome_unknown(&self) -> bool {
        self.end_unanswered
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS protocol, cipher suite and verification status, when encrypted.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Octets the server sent after its `220` to STARTTLS, before the handshake, which were
    /// discarded (RFC 3207 §5 response injection); 0 from an honest server.
    pub fn discarded_after_starttls(&self) -> usize {
        self.discarded
    }

    /// Sends one message: MAIL, RCPT for each recipient, DATA and the message (dot-stuffed,
    /// line ends normalised to CRLF). With PIPELINING, MAIL, all RCPTs and DATA go out in one
    /// write and the replies are read in order (RFC 2920); without, one at a time.
    ///
    /// Before anything is sent, the message is refused when it needs an extension the server
    /// lacks: SMTPUTF8 for a non-ASCII address, 8BITMIME for 8-bit content (this client does
    /// not downgrade), or when it exceeds the server's SIZE. MAIL carries `SIZE=` when SIZE is
    /// offered, `BODY=8BITMIME` for 8-bit content and `SMTPUTF8` for non-ASCII addresses; the
    /// envelope's DSN parameters are sent only when the server offers DSN.
    ///
    /// A second `send` on the same connection first sends RSET.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] when MAIL (or the RSET before it) is refused: no recipient was
    /// decided. The refusals named above, with nothing sent. I/O errors, timeouts and
    /// malformed replies, after which the connection is unusable.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<TransactionResult, ClientError> {
        let info = MessageInfo {
            size: wire_size(message),
            eight_bit: has_8bit(message),
        };
        self.send_scanned(envelope, &Message::bytes(message), info)
            .await
    }

    /// [`send`](Self::send) for a [`Message`] that may be a file: it is read once to measure
    /// it ([`Message::scan`]), then streamed in 64 KiB chunks, each dot-stuffed and written
    /// (within the data block timeout) before the next is read. The server receives exactly
    /// what `send` of the same bytes would give it.
    ///
    /// # Errors
    ///
    /// Those of [`send`](Self::send), and [`ClientError::Message`] when the file cannot be
    /// read: before MAIL with nothing sent, or in the middle of the data, which then ends
    /// without the end marker (the server discards it) and leaves the connection unusable.
    pub async fn send_message(
        &mut self,
        envelope: &Envelope,
        message: &Message<'_>,
    ) -> Result<TransactionResult, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let info = message.scan().await.map_err(ClientError::Message)?;
        self.send_scanned(envelope, message, info).await
    }

    /// [`send_message`](Self::send_message) with the scan already done (`info` must describe
    /// `message`).
    pub(crate) async fn send_scanned(
        &mut self,
        envelope: &Envelope,
        message: &Message<'_>,
        info: MessageInfo,
    ) -> Result<TransactionResult, ClientError> {
        self.end_unanswered = false;
        if self.broken {
            return Err(ClientError::Broken);
        }
        if envelope.rcpts.is_empty() {
            return Err(ClientError::NoRecipients);
        }
        let utf8 = envelope.needs_smtputf8();
        let MessageInfo { size, eight_bit } = info;
        if utf8 && !self.has("SMTPUTF8") {
            return Err(ClientError::NeedsSmtpUtf8);
        }
        if eight_bit && !self.has("8BITMIME") {
            return Err(ClientError::Needs8BitMime);
        }
        if let Some(limit) = self.ehlo.as_ref().and_then(EhloReply::size) {
            if size > limit {
                return Err(ClientError::TooLarge { size, limit });
            }
        }

        let pipelining = self.has("PIPELINING");
        // After the first transaction, RSET first; with PIPELINING it opens the pipelined
        // group (RFC 2920 §3.1 allows it anywhere in one), which saves a round trip.
        let rset = self.transactions > 0;
        if rset && !pipelining {
            let reply = self
                .command(&Command::Rset, self.config.timeouts.command, "RSET")
                .await?;
            if !reply.is_positive_completion() {
                return Err(ClientError::Refused {
                    command: "RSET",
                    reply,
                });
            }
        }
        self.transactions += 1;

        let dsn = self.has("DSN");
        let mail = Command::Mail {
            from: envelope.from.as_borrowed(),
            params: MailParams {
                size: self.has("SIZE").then_some(size),
                body: (eight_bit && self.has("8BITMIME")).then_some(Body::EightBitMime),
                smtputf8: utf8,
                ret: envelope.ret.filter(|_| dsn),
                envid: envelope
                    .envid
                    .as_ref()
                    .filter(|_| dsn)
                    .map(XText::as_borrowed),
                ..MailParams::default()
            },
        };
        let rcpts: Vec<Command<'_>> = envelope
            .rcpts
            .iter()
            .map(|r| Command::Rcpt {
                to: r.path.as_borrowed(),
                params: RcptParams {
                    notify: r.notify.filter(|_| dsn),
                    orcpt: r.orcpt.as_ref().filter(|_| dsn).map(Orcpt::as_borrowed),
                    ..RcptParams::default()
                },
            })
            .collect();

        let result = if pipelining {
            self.transaction_pipelined(rset, &mail, &rcpts).await?
        } else {
            self.transaction_stepwise(&mail, &rcpts).await?
        };
        let (mail_reply, rcpt_replies, data_reply) = result;

        let accepted = rcpt_replies
            .iter()
            .filter(|r| r.is_positive_completion())
            .count();
        let data = match data_reply {
            Some(reply) if reply.code() == 354 => {
                let final_reply = self
                    .write_message((accepted > 0).then_some(message))
                    .await?;
                Some(final_reply)
            }
            // DATA's only positive answer is 354 (RFC 5321 §4.3.2): a 2yz (or 1yz, 3yz)
            // here is not a delivery, the message was never sent.
            Some(reply) if !reply.is_transient() && !reply.is_permanent() => {
                return Err(self.fail(ClientError::Unexpected {
                    command: "DATA",
                    reply,
                }));
            }
            other => other,
        };
        // LMTP (RFC 2033 §4.2): after the data, one reply per accepted recipient, in order;
        // the first was read above.
        let mut per_rcpt: Vec<Reply> = Vec::new();
        if self.lmtp && accepted > 0 {
            if let Some(first) = data.as_ref().filter(|d| d.code() != 354) {
                per_rcpt.push(first.clone());
                let t = self.config.timeouts.data_end;
                while per_rcpt.len() < accepted {
                    let reply = self.read_reply(t, "end of data").await?;
                    if reply.code() < 200 || reply.code() == 354 {
                        return Err(self.fail(ClientError::Unexpected {
                            command: "end of data",
                            reply,
                        }));
                    }
                    per_rcpt.push(reply);
                }
            }
        }
        let mut per_rcpt = per_rcpt.into_iter();

        let rcpts = rcpt_replies
            .iter()
            .map(|reply| {
                if !reply.is_positive_completion() {
                    return RcptResult::Rejected(reply.clone());
                }
                if self.lmtp {
                    if let Some(own) = per_rcpt.next() {
                        return if own.is_positive_completion() {
                            RcptResult::Accepted(own)
                        } else {
                            RcptResult::Rejected(own)
                        };
                    }
                }
                match &data {
                    Some(d) if d.is_positive_completion() => RcptResult::Accepted(d.clone()),
                    Some(d) => RcptResult::Rejected(d.clone()),
                    // Not reachable with an accepted recipient: DATA is always sent then.
                    None => RcptResult::Rejected(reply.clone()),
                }
            })
            .collect();
        self.end_unanswered = false;
        Ok(TransactionResult {
            mail: mail_reply,
            rcpts,
            rcpt_replies,
            data,
        })
    }

    /// Says QUIT, reads the `221` (waiting up to the command timeout) and closes the
    /// connection: the close (TLS `close_notify` and its flush) gets at most [`QUIT_GRACE`]
    /// (or the command timeout, when shorter), after which the socket is dropped unflushed.
    ///
    /// A caller that must record the outcome of a transaction should do so before awaiting
    /// this (a peer may take its time to answer QUIT), or use
    /// [`quit_in_background`](Self::quit_in_background).
    ///
    /// # Errors
    ///
    /// I/O errors or a timeout while saying goodbye; the connection is closed either way.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        if self.broken {
            return Ok(());
        }
        let result = self
            .command(&Command::Quit, self.config.timeouts.command, "QUIT")
            .await;
        let grace = self.config.timeouts.command.min(QUIT_GRACE);
        // A peer that stops reading would hold a TLS close (close_notify, flush) forever.
        if tokio::time::timeout(grace, self.stream.shutdown())
            .await
            .is_err()
        {
            debug!(peer = %self.peer, "close not done within the grace, socket dropped");
        }
        result.map(|_| ())
    }

    /// Says QUIT from a spawned task and returns at once: the task waits for the `221`, then
    /// closes the connection (TLS `close_notify` and its flush), all within [`QUIT_GRACE`]
    /// (or the command timeout, when shorter); when that runs out the socket is dropped as
    /// it is, so the task and its socket never outlive it, whatever the peer does (a peer
    /// that stops reading after its `250` would otherwise hold the close forever). Nothing is
    /// sent when the connection is already unusable. Outside a tokio runtime the connection
    /// is just closed.
    ///
    /// [`Deliverer`](crate::Deliverer) ends every session this way, so its report is returned
    /// as soon as the server has answered the message data, never held up by a peer that does
    /// not answer QUIT.
    pub fn quit_in_background(mut self) {
        if self.broken {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let grace = self.config.timeouts.command.min(QUIT_GRACE);
        runtime.spawn(async move {
            let peer = self.peer;
            // One deadline for the whole goodbye: QUIT, its reply and the close.
            let goodbye = async {
                match self.command(&Command::Quit, grace, "QUIT").await {
                    Ok(reply) => debug!(%peer, reply = %SafeReply(&reply), "QUIT answered"),
                    Err(e) => debug!(%peer, error = %e, "QUIT not answered"),
                }
                let _ = self.stream.shutdown().await;
            };
            if tokio::time::timeout(grace, goodbye).await.is_err() {
                debug!(%peer, "close not done within the grace, socket dropped");
            }
            // Dropping the connection closes the socket.
            drop(self);
        });
    }

    /// Sends NOOP and returns the reply (to check that the connection is still alive).
    ///
    /// # Errors
    ///
    /// I/O errors, a timeout or a malformed reply.
    pub async fn noop(&mut self) -> Result<Reply, ClientError> {
        self.command(&Command::Noop, self.config.timeouts.command, "NOOP")
            .await
    }

    // ---- steps ----

    /// EHLO, or HELO when EHLO gets a 5yz reply (RFC 5321 §3.2).
    async fn hello(&mut self) -> Result<(), ClientError> {
        let name = self.config.helo_name.clone();
        // Checked at connect time already (a domain or address literal), so this cannot fail.
        let word = Word::new(&name).map_err(|_| ClientError::InvalidHeloName(name.clone()))?;
        let t = self.config.timeouts.command;
        if self.lmtp {
            // RFC 2033 §4.1: LHLO, answered as EHLO is; there is nothing to fall back to.
            // The name is checked as EHLO's argument is (one word, no CR, LF or space).
            let mut out = Vec::with_capacity(64);
            Command::Ehlo(word).encode(&mut out);
            out[..4].copy_from_slice(b"LHLO");
            self.write_all(&out, t, "LHLO").await?;
            let reply = self.read_reply_whole(t, "LHLO").await?;
            return match parse_ehlo(&reply) {
                Ok(ehlo) => {
                    self.ehlo = Some(ehlo);
                    Ok(())
                }
                Err(_) => Err(ClientError::Refused {
                    command: "LHLO",
                    reply: bound_reply(reply),
                }),
            };
        }
        // The one reply kept whole (within the reading bounds): it is the capability list.
        let reply = self.command_whole(&Command::Ehlo(word), t, "EHLO").await?;
        match parse_ehlo(&reply) {
            Ok(ehlo) => {
                self.ehlo = Some(ehlo);
                return Ok(());
            }
            Err(_) if reply.is_permanent() => {
                debug!(peer = %self.peer, reply = %SafeReply(&reply), "EHLO refused, trying HELO");
            }
            Err(_) => {
                return Err(ClientError::Refused {
                    command: "EHLO",
                    reply: bound_reply(reply),
                })
            }
        }
        let reply = self.command(&Command::Helo(word), t, "HELO").await?;
        if reply.is_positive_completion() {
            self.ehlo = None;
            Ok(())
        } else {
            Err(ClientError::Refused {
                command: "HELO",
                reply,
            })
        }
    }

    async fn starttls(&mut self) -> Result<(), ClientError> {
        let t = self.config.timeouts.command;
        let reply = self.command(&Command::StartTls, t, "STARTTLS").await?;
        if reply.code() != 220 {
            if self.config.tls.requires_verification() {
                return Err(ClientError::Refused {
                    command: "STARTTLS",
                    reply,
                });
            }
            // Opportunistic: carry on in clear text, as the session is still usable.
            warn!(peer = %self.peer, reply = %SafeReply(&reply), "STARTTLS refused; continuing without TLS");
            return Ok(());
        }
        if !self.buf.is_empty() {
            // RFC 3207 §5: nothing received before the handshake may be used after it.
            warn!(
                peer = %self.peer,
                octets = self.buf.len(),
                "server sent data after its 220 to STARTTLS; discarded"
            );
            self.discarded += self.buf.len();
            self.buf.clear();
        }
        self.decoder.reset();
        self.handshake().await
    }

    /// The client side of the TLS handshake on the stream (after STARTTLS's `220`, or first
    /// thing for implicit TLS), within the command timeout, with the configuration's cached
    /// rustls setup.
    async fn handshake(&mut self) -> Result<(), ClientError> {
        let t = self.config.timeouts.command;
        let setup = self
            .config
            .tls_cache
            .get(self.config.tls, &self.config.extra_roots)
            .map_err(|e| self.fail(e.into()))?;
        let name = tls_server_name(&self.server_name, self.peer);
        let connector = TlsConnector::from(std::sync::Arc::clone(&setup.config));
        let stream = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(tcp) => tls_connect(&connector, &name, tcp, t)
                .await
                .map(|tls| Stream::Tls(Box::new(tls))),
            Stream::Other(other) => tls_connect(&connector, &name, other, t)
                .await
                .map(|tls| Stream::OtherTls(Box::new(tls))),
            Stream::Unix(_) => Err(TlsError::Config {
                detail: "TLS over a Unix-domain socket is not supported".into(),
            }),
            _ => Err(TlsError::Config {
                detail: "the connection is already encrypted".into(),
            }),
        };
        self.stream = stream.map_err(|e| self.fail(e.into()))?;
        let session = match &self.stream {
            Stream::Tls(tls) => tls.get_ref().1,
            Stream::OtherTls(tls) => tls.get_ref().1,
            _ => {
                return Err(self.fail(
                    TlsError::Config {
                        detail: "no TLS session".into(),
                    }
                    .into(),
                ))
            }
        };
        let verified = self.config.tls.requires_verification()
            || session
                .peer_certificates()
                .is_some_and(|chain| setup.verifies(chain, &name));
        let info = TlsInfo::from_rustls_names(
            &session
                .protocol_version()
                .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
            &session
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
        )
        .with_verified(verified)
        .with_resumed(
            session.handshake_kind() == Some(tokio_rustls::rustls::HandshakeKind::Resumed),
        );
        debug!(peer = %self.peer, tls = %info, "TLS established");
        self.tls = Some(info);
        Ok(())
    }

    /// RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
    async fn transaction_pipelined(
        &mut self,
        rset: bool,
        mail: &Command<'_>,
        rcpts: &[Command<'_>],
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), ClientError> {
        let mut out = Vec::with_capacity(64 * (rcpts.len() + 3));
        if rset {
            Command::Rset.encode(&mut out);
        }
        mail.encode(&mut out);
        for rcpt in rcpts {
            rcpt.encode(&mut out);
        }
        Command::Data.encode(&mut out);
        let t = self.config.timeouts;
        self.in_step("MAIL").await?;
        self.write_all(&out, t.mail, "MAIL").await?;

        let rset_reply = match rset {
            true => Some(self.read_reply(t.command, "RSET").await?),
            false => None,
        };
        let mail_reply = self.read_reply(t.mail, "MAIL").await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            rcpt_replies.push(self.read_reply(t.rcpt, "RCPT").await?);
        }
        let data_reply = self.read_reply(t.data_init, "DATA").await?;
        if let Some(reply) = rset_reply.filter(|r| !r.is_positive_completion()) {
            // The rest of the group was answered too; whatever it said, nothing is sent.
            if data_reply.code() == 354 {
                let _ = self.write_message(None).await;
            }
            return Err(ClientError::Refused {
                command: "RSET",
                reply,
            });
        }
        if !mail_reply.is_positive_completion() {
            if data_reply.code() == 354 {
                // A broken server took DATA without a sender: end the empty message at once.
                let _ = self.write_message(None).await;
            }
            return Err(ClientError::Refused {
                command: "MAIL",
                reply: mail_reply,
            });
        }
        Ok((mail_reply, rcpt_replies, Some(data_reply)))
    }

    /// Without PIPELINING: one command, one reply. DATA only when a recipient was accepted.
    async fn transaction_stepwise(
        &mut self,
        mail: &Command<'_>,
        rcpts: &[Command<'_>],
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), ClientError> {
        let t = self.config.timeouts;
        let mail_reply = self.command(mail, t.mail, "MAIL").await?;
        if !mail_reply.is_positive_completion() {
            return Err(ClientError::Refused {
                command: "MAIL",
                reply: mail_reply,
            });
        }
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            rcpt_replies.push(self.command(rcpt, t.rcpt, "RCPT").await?);
        }
        if !rcpt_replies.iter().any(Reply::is_positive_completion) {
            return Ok((mail_reply, rcpt_replies, None));
        }
        let data_reply = self.command(&Command::Data, t.data_init, "DATA").await?;
        Ok((mail_reply, rcpt_replies, Some(data_reply)))
    }

    /// After `354`: the message, dot-stuffed and ended with `.`, then the final reply. When no
    /// recipient was accepted (`None`: a pipelined DATA the server took anyway), only the end
    /// marker is sent (RFC 2920 §3.1) and the reply read and dropped.
    async fn write_message(&mut self, message: Option<&Message<'_>>) -> Result<Reply, ClientError> {
        let t = self.config.timeouts;
        // A reply that came with the 354 (or behind it) answers nothing yet.
        self.in_step("the message").await?;
        let mut encoder = DataEncoder::new();
        let mut out = Vec::with_capacity(2 * CHUNK + 8);
        if let Some(message) = message {
            let mut reader = match MessageReader::open(message).await {
                Ok(r) => r,
                // Nothing of the data sent yet, but the server waits for it: the connection
                // cannot carry on without sending an (empty) message.
                Err(e) => return Err(self.fail(ClientError::Message(e))),
            };
            loop {
                let chunk = match reader.next().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(ClientError::Message(e))),
                };
                out.clear();
                encoder.encode(chunk, &mut out);
                self.write_all(&out, t.data_block, "data block").await?;
            }
        }
        out.clear();
        encoder.finish(&mut out);
        // A reply sent while the message was being written cannot be the one to its end.
        self.in_step("end of data").await?;
        self.write_all(&out, t.data_block, "data block").await?;
        // From here until the verdict is read, the server may have the message.
        self.end_unanswered = message.is_some();
        let reply = self.read_reply(t.data_end, "end of data").await?;
        if reply.code() == 354 || reply.code() < 200 {
            return Err(self.fail(ClientError::Unexpected {
                command: "end of data",
                reply,
            }));
        }
        Ok(reply)
    }

    // ---- I/O ----

    async fn command(
        &mut self,
        command: &Command<'_>,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, ClientError> {
        self.command_whole(command, timeout, stage)
            .await
            .map(bound_reply)
    }

    /// [`command`](Self::command), keeping the whole reply (EHLO).
    async fn command_whole(
        &mut self,
        command: &Command<'_>,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, ClientError> {
        self.in_step(stage).await?;
        let mut out = Vec::with_capacity(64);
        command.encode(&mut out);
        self.write_all(&out, timeout, stage).await?;
        self.read_reply_whole(timeout, stage).await
    }

    /// Before sending `stage`: nothing may have arrived that no command asked for. Looks at
    /// what is buffered and, without waiting, at the socket; anything there means the
    /// server's replies are out of step with the commands ([`ClientError::OutOfStep`]), and
    /// the connection is marked unusable.
    async fn in_step(&mut self, stage: &'static str) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        if self.buf.is_empty() {
            // One poll of the socket: tokio's timeout polls the read before its deadline,
            // and a read that is not ready moves no data, so nothing is lost by dropping it.
            // A close or a read error is reported by the next read, where it is expected.
            let Self { stream, buf, .. } = self;
            let _ = tokio::time::timeout(Duration::ZERO, stream.read_buf(buf)).await;
        }
        // A 421 may come at any time (RFC 5321 §3.8: the server is closing, a timeout, a
        // shutdown): it is read as the answer to what is sent next, which it refuses.
        if self.buf.is_empty() || self.buf.starts_with(b"421") {
            return Ok(());
        }
        let octets = self.buf.len();
        warn!(peer = %self.peer, octets, stage, "server sent data nothing asked for; connection dropped");
        Err(self.fail(ClientError::OutOfStep { stage, octets }))
    }

    async fn write_all(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
        stage: &'static str,
    ) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let stream = &mut self.stream;
        let written = tokio::time::timeout(timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(ClientError::Io(e))),
            Err(_) => Err(self.fail(ClientError::Timeout { stage })),
        }
    }

    /// The next reply, as much of it as the client keeps ([`bound_reply`]).
    async fn read_reply(
        &mut self,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, ClientError> {
        self.read_reply_whole(timeout, stage).await.map(bound_reply)
    }

    /// The next reply, whole: read and validated to its last line, within the decoder's
    /// bounds (see [`codec`](crate::codec)).
    async fn read_reply_whole(
        &mut self,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let Self {
            stream,
            buf,
            decoder,
            ..
        } = self;
        let read = tokio::time::timeout(timeout, async {
            loop {
                match decoder.decode(buf) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(CodecError::Malformed(e)) => return Err(ClientError::MalformedReply(e)),
                    Err(CodecError::Io(e)) => return Err(ClientError::Io(e)),
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(ClientError::Closed { stage });
                }
            }
        })
        .await;
        match read {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(self.fail(e)),
            Err(_) => Err(self.fail(ClientError::Timeout { stage })),
        }
    }

    /// Marks the connection unusable and passes the error on.
    fn fail(&mut self, error: ClientError) -> ClientError {
        self.broken = true;
        error
    }
}

/// A TCP connection to `addr` within the connect timeout, with Nagle off (commands are
/// written whole; Nagle would only delay them).
/// The client side of a TLS handshake within `limit`.
async fn tls_connect<IO: AsyncRead + AsyncWrite + Unpin>(
    connector: &TlsConnector,
    name: &ServerName<'static>,
    io: IO,
    limit: Duration,
) -> Result<TlsStream<IO>, TlsError> {
    match tokio::time::timeout(limit, connector.connect(name.clone(), io)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(TlsError::from_handshake(&e, name)),
        Err(_) => Err(TlsError::Timeout {
            stage: "TLS handshake",
        }),
    }
}

async fn open_tcp(addr: SocketAddr, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let tcp = match tokio::time::timeout(config.timeouts.connect, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Err(_) => return Err(ClientError::Timeout { stage: "connect" }),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The EHLO/LHLO argument must be an ASCII domain or address literal: anything else (a space,
/// CR, LF) would change the command on the wire.
fn check_helo_name(name: &str) -> Result<(), ClientError> {
    if name.is_ascii() && smtp_proto::address::parse_domain(name).is_ok() {
        Ok(())
    } else {
        Err(ClientError::InvalidHeloName(name.to_owned()))
    }
}

/// A host for [`Connection::connect_host`], checked: an IP address, an address literal, or a
/// domain name (RFC 5321 syntax: no space, CR or LF; one final dot allowed), returned without
/// the final dot and, for a non-ASCII name, in its ASCII (IDNA) form, which is the name the
/// certificate must hold.
fn check_host(host: &str) -> Result<String, ResolveError> {
    let invalid = |reason: &str| ResolveError::InvalidDomain {
        domain: host.to_owned(),
        reason: reason.to_owned(),
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host.to_owned());
    }
    if let Some(literal) = resolve_literal(host) {
        return literal.map(|_| host.to_owned());
    }
    let bare = host.strip_suffix('.').unwrap_or(host);
    if smtp_proto::address::DomainName::new(bare).is_err() {
        return Err(invalid("not a host name"));
    }
    if bare.is_ascii() {
        return Ok(bare.to_ascii_lowercase());
    }
    crate::resolve::ascii_name(bare)
}

/// The name to check the certificate against: the host name, or the address for a literal.
fn tls_server_name(name: &str, addr: SocketAddr) -> ServerName<'static> {
    let bare = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("IPv6:")
        .trim_start_matches("ipv6:");
    ServerName::try_from(bare.to_owned()).unwrap_or_else(|_| ServerName::from(addr.ip()))
}

/// The goodbye against a peer that stops reading with the client's send buffer full, so that
/// writing QUIT and closing TLS (`close_notify` and its flush) can never complete: the
/// socket must be closed within the grace all the same. These need the socket under the
/// connection (to fill its send buffer), hence here rather than in `tests/`.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod quit_tests {
    use std::sync::Arc;

    use tokio::net::TcpSocket;
    use tokio_rustls::rustls;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    const GRACE: Duration = Duration::from_millis(300);

    /// A connected pair on loopback with small buffers: (client, peer).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_send_buffer_size(4096).unwrap();
        let (c, s) = tokio::join!(client.connect(addr), listener.accept());
        (c.unwrap(), s.unwrap().0)
    }

    /// Writes junk until neither the client's send buffer nor the peer's receive buffer
    /// takes any more (the peer is not reading).
    async fn fill(tcp: &TcpStream) {
        let junk = [b'x'; 65536];
        let mut idle_rounds = 0;
        while idle_rounds < 3 {
            let mut wrote = 0;
            loop {
                match tcp.try_write(&junk) {
                    Ok(n) => wrote += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            idle_rounds = if wrote == 0 { idle_rounds + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn connection(stream: Stream, peer: SocketAddr) -> Connection {
        Connection {
            stream,
            buf: BytesMut::new(),
            decoder: ReplyDecoder::new(),
            config: ClientConfig::new("client.test").with_timeouts(Timeouts::all(GRACE)),
            peer,
            server_name: "mx.test".into(),
            greeting: Reply::service_ready("mx.test"),
            ehlo: None,
            tls: None,
            discarded: 0,
            transactions: 0,
            authenticated: None,
            broken: false,
            end_unanswered: false,
            lmtp: false,
        }
    }

    /// A TLS session over [`pair`]: (client stream, peer's TLS stream).
    async fn tls_pair() -> (
        TlsStream<TcpStream>,
        tokio_rustls::server::TlsStream<TcpStream>,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = pair().await;
        let name = ServerName::try_from("mx.test").unwrap();
        let (c, s) = tokio::join!(
            TlsConnector::from(Arc::new(client)).connect(name, c),
            TlsAcceptor::from(Arc::new(server)).accept(s)
        );
        (c.unwrap(), s.unwrap())
    }

    /// Whether the client closes its end of `peer` within a bound well past the grace, seen
    /// without reading (which would drain the buffers and let a stuck close complete): bytes
    /// the peer writes to a closed socket are answered with a reset, which a later write
    /// reports.
    async fn closed_by_client(peer: &TcpStream) -> bool {
        let deadline = tokio::time::Instant::now() + GRACE * 10;
        while tokio::time::Instant::now() < deadline {
            match peer.try_write(b"x") {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn background_quit_over_tls_closes_within_the_grace_when_the_peer_stops_reading() {
        let (client, peer) = tls_pair().await;
        let addr = client.get_ref().0.peer_addr().unwrap();
        fill(client.get_ref().0).await;
        let conn = connection(Stream::Tls(Box::new(client)), addr);
        conn.quit_in_background();
        // The peer never reads: QUIT, close_notify and the flush stay stuck behind the full
        // buffers.
        let (raw, _) = peer.into_inner();
        assert!(
            closed_by_client(&raw).await,
            "the background QUIT still holds the socket"
        );
    }

    #[tokio::test]
    async fn background_quit_over_plain_tcp_closes_within_the_grace() {
        let (client, peer) = pair().await;
        let addr = client.peer_addr().unwrap();
        fill(&client).await;
        let conn = connection(Stream::Plain(client), addr);
        conn.quit_in_background();
        assert!(closed_by_client(&peer).await);
    }

    #[tokio::test]
    async fn foreground_quit_over_tls_returns_when_the_close_cannot_complete() {
        let (client, peer) = tls_pair().await;
        let addr = client.get_ref().0.peer_addr().unwrap();
        fill(client.get_ref().0).await;
        let conn = connection(Stream::Tls(Box::new(client)), addr);
        // The QUIT times out after the command timeout, the close after the grace.
        let done = tokio::time::timeout(GRACE * 6, conn.quit()).await;
        assert!(done.is_ok(), "quit() hangs on the TLS close");
        assert!(done.unwrap().is_err(), "QUIT was never answered");
        drop(peer);
    }
}
