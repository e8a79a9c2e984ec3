//! The connection driver: one loop over a [`Session`] per connection.
//!
//! The loop polls the session for events and forwards them to the [`SessionHandler`]; when
//! the session needs input it flushes the queued replies (so pipelined commands are answered
//! in one write) and reads until the deadline the session gives
//! ([`Session::poll_timeout`]: the command or the data timeout, restarted by every input),
//! with the shutdown signals in the same `select!`; when the deadline passes it calls
//! [`Session::handle_timeout`], which queues `421 4.4.2`. The driver chooses no read
//! timeout itself; it bounds only what the session does not see: each write and the TLS
//! handshake ([`crate::Limits::command_timeout`]), and the close. Time is tokio's clock, so
//! tests with paused time (`tokio::time::pause`) see the timeouts at once. All protocol
//! logic lives in the session; this module only moves bytes and decisions.
//!
//! Pipelining: when the session asks ([`Event::SyncCheck`]: the greeting is due, or a command
//! that must end a pipelining group has nothing behind it in the session), the driver looks
//! whether the client sent more that was not read yet, without waiting: one `recv(MSG_PEEK |
//! MSG_DONTWAIT)` on the socket (as Postfix peeks at its socket when it sends the greeting and
//! after such commands), and for TLS also the plaintext rustls has decrypted but not handed
//! out. Any byte counts, so over TLS a client that sends an alert or a key update without
//! waiting for a reply counts as pipelining too. A client that waits for replies sees no
//! delay. On a stream that is not a socket ([`crate::Server::serve_stream`]) nothing can be
//! peeked at: the driver polls the stream once for plaintext without waiting, and a byte
//! there counts as pipelining (the byte is dropped, as the session closes anyway).
//!
//! Memory: an idle plain connection owns no buffer. Reads wait for readiness and then read
//! into a per-thread scratch buffer whose bytes go straight into the session, which keeps
//! only what it has not processed yet; when a plain connection is about to wait for a
//! command, the session's buffers are freed. Buffers grown by a big message are shrunk when
//! the connection goes back to waiting for a command.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, BufRead as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use smtp_proto::data::DataError;
use smtp_proto::session::{Event, Session};
use smtp_proto::Refusal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::auth::{Credentials, LIMIT_REACHED};
use crate::handler::{ConnectionInfo, Envelope, Handler, SessionHandler, TlsInfo};
use crate::server::Common;
use crate::tls::tls_info;

/// Size of the per-thread read buffer for plain connections and of the per-connection read
/// buffer of TLS and other connections.
const READ_BUF: usize = 16 * 1024;
const TLS_READ_BUF: usize = 8 * 1024;
/// Buffer capacity kept by an idle connection.
const IDLE_KEEP: usize = 4096;
/// Queued replies beyond this are written before more input is processed: a client that
/// pipelines cheap commands with long replies (8 octets of `EHLO a` get ~150 octets back)
/// and never reads would otherwise make one read of input queue ~20 times its size. (Inside
/// a message only BDAT's `250`s are queued, ~4 times the input at most.)
const OUTPUT_HIGH_WATER: usize = 32 * 1024;
/// How long closing (TLS close_notify, TCP FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// Why the message content could not be read to its end. The session has answered the client
/// already; the handler's outcome is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The session refused the message (too big, bare CR or LF, line too long); the reply
    /// (`552 5.3.4`, `550 5.5.2`, `550 5.6.0`) has been sent.
    #[error("message refused: {0}")]
    Refused(DataError),
    /// The client aborted the transaction (`RSET`, `EHLO`, `STARTTLS` or `QUIT` between BDAT
    /// chunks).
    #[error("transaction aborted by the client")]
    Aborted,
    /// The client closed the connection before the end of the message.
    #[error("connection closed before the end of the message")]
    Disconnected,
    /// The client was silent longer than the data timeout (`421 4.4.2` was sent).
    #[error("data timeout")]
    Timeout,
    /// The server shut down before the message ended (`421 4.3.2` was sent).
    #[error("server shutting down")]
    Shutdown,
    /// A network error.
    #[error("network error: {0}")]
    Io(#[source] Arc<io::Error>),
}

impl Clone for BodyError {
    fn clone(&self) -> Self {
        match self {
            Self::Refused(e) => Self::Refused(*e),
            Self::Aborted => Self::Aborted,
            Self::Disconnected => Self::Disconnected,
            Self::Timeout => Self::Timeout,
            Self::Shutdown => Self::Shutdown,
            Self::Io(e) => Self::Io(Arc::clone(e)),
        }
    }
}

/// The content of one message, pulled by [`SessionHandler::data`] piece by piece.
///
/// Each call to [`BodyStream::chunk`] reads from the connection as needed (with the data
/// timeout) and returns the next piece with dot-stuffing removed, so a message never has to
/// be held in memory whole.
pub struct BodyStream<'a> {
    io: &'a mut Io,
    state: BodyState,
    discard: bool,
}

enum BodyState {
    Open,
    Ended(u64),
    Failed(BodyError),
}

impl fmt::Debug for BodyStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            BodyState::Open => "open".to_owned(),
            BodyState::Ended(n) => format!("ended after {n} octets"),
            BodyState::Failed(e) => format!("failed: {e}"),
        };
        f.debug_struct("BodyStream").field("state", &state).finish()
    }
}

impl<'a> BodyStream<'a> {
    /// The next piece of the message, `Ok(None)` at its end.
    ///
    /// # Errors
    /// [`BodyError`] when the message is lost; see its variants. Calling again after the
    /// end or an error returns the same result.
    pub async fn chunk(&mut self) -> Result<Option<&[u8]>, BodyError> {
        loop {
            match &self.state {
                BodyState::Open => {}
                BodyState::Ended(_) => return Ok(None),
                BodyState::Failed(e) => return Err(e.clone()),
            }
            let io = &mut *self.io;
            match io.session.poll_event() {
                Some(Event::Body(bytes)) => {
                    if self.discard {
                        continue;
                    }
                    io.chunk.clear();
                    io.chunk.extend_from_slice(bytes);
                    break;
                }
                Some(Event::DataEnd { size }) => self.state = BodyState::Ended(size),
                Some(Event::DataAborted(e)) => self.fail(BodyError::Refused(e)),
                Some(Event::Reset) => self.fail(BodyError::Aborted),
                Some(Event::Hello { .. }) => {
                    io.deferred = Some(Deferred::Hello);
                    self.fail(BodyError::Aborted);
                }
                Some(Event::StartTls) => {
                    io.deferred = Some(Deferred::StartTls);
                    self.fail(BodyError::Aborted);
                }
                Some(Event::SyncCheck) => {
                    let pending = io.input_pending().await;
                    io.session.input_pending(pending);
                }
                Some(Event::Quit) => self.fail(BodyError::Aborted),
                Some(Event::Closed) => self.fail(BodyError::Shutdown),
                // Connect, Mail, Rcpt and DataStart cannot occur inside a message.
                Some(_) => {}
                None => self.fill().await,
            }
        }
        Ok(Some(&self.io.chunk))
    }

    fn fail(&mut self, e: BodyError) {
        self.state = BodyState::Failed(e);
    }

    /// Flushes queued replies (BDAT's `250`, DATA's `354`) and reads more content.
    async fn fill(&mut self) {
        if self.io.session.is_closed() {
            // Timeout or shutdown reported by the session itself.
            return self.fail(BodyError::Shutdown);
        }
        if let Err(e) = self.io.flush().await {
            self.io.broken = true;
            return self.fail(BodyError::Io(Arc::new(e)));
        }
        match self.io.read().await {
            Ok(ReadOutcome::Data) => {}
            Ok(ReadOutcome::Eof) => {
                self.io.broken = true;
                self.fail(BodyError::Disconnected);
            }
            // The session has queued its `421 4.4.2`.
            Ok(ReadOutcome::Timeout) => self.fail(BodyError::Timeout),
            Ok(ReadOutcome::Shutdown) => {
                self.io.session.shutdown();
                self.fail(BodyError::Shutdown);
            }
            Err(e) => {
                self.io.broken = true;
                self.fail(BodyError::Io(Arc::new(e)));
            }
        }
    }

    /// The message as an [`AsyncRead`](tokio::io::AsyncRead), for `tokio::io::copy` and
    /// everything else that reads bytes: the same content [`chunk`](Self::chunk) yields,
    /// without copying it again. The end of the message is the reader's end of file; a
    /// [`BodyError`] is an [`io::Error`] whose inner error is the `BodyError` (kind
    /// `InvalidData` for a refused message, `UnexpectedEof` when the client went away,
    /// `TimedOut`, `ConnectionAborted` for an abort or a shutdown, or the network error's
    /// kind; never `Interrupted`, which readers retry).
    ///
    /// ```no_run
    /// # async fn f(body: &mut smtp_server::BodyStream<'_>) -> std::io::Result<()> {
    /// let mut file = tokio::fs::File::create("message.eml").await?;
    /// tokio::io::copy(&mut body.reader(), &mut file).await?;
    /// # Ok(()) }
    /// ```
    pub fn reader<'b>(&'b mut self) -> BodyReader<'b, 'a> {
        BodyReader {
            state: ReaderState::Ready {
                body: self,
                pos: 0,
                filled: false,
            },
        }
    }

    /// Reads and drops whatever the handler left unread.
    async fn drain(&mut self) {
        self.discard = true;
        while let Ok(Some(_)) = self.chunk().await {}
    }
}

/// A [`BodyStream`] read as bytes: see [`BodyStream::reader`].
pub struct BodyReader<'b, 'a> {
    state: ReaderState<'b, 'a>,
}

/// The next chunk being read; resolves to the stream and whether a chunk came.
type NextChunk<'b, 'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (&'b mut BodyStream<'a>, Result<bool, BodyError>)>
            + Send
            + 'b,
    >,
>;

enum ReaderState<'b, 'a> {
    /// The stream's current chunk (when `filled`) is read up to `pos`.
    Ready {
        body: &'b mut BodyStream<'a>,
        pos: usize,
        filled: bool,
    },
    Waiting(NextChunk<'b, 'a>),
    End,
    Failed(BodyError),
    /// Only while a state is being replaced.
    Gone,
}

impl fmt::Debug for BodyReader<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            ReaderState::Ready { .. } | ReaderState::Waiting(_) | ReaderState::Gone => "reading",
            ReaderState::End => "at the end",
            ReaderState::Failed(_) => "failed",
        };
        f.debug_struct("BodyReader").field("state", &state).finish()
    }
}

fn body_io_error(e: BodyError) -> io::Error {
    let kind = match &e {
        BodyError::Refused(_) => io::ErrorKind::InvalidData,
        BodyError::Disconnected => io::ErrorKind::UnexpectedEof,
        BodyError::Timeout => io::ErrorKind::TimedOut,
        // Not `Interrupted`: readers retry that (tokio::io::copy would spin).
        BodyError::Aborted | BodyError::Shutdown => io::ErrorKind::ConnectionAborted,
        BodyError::Io(e) => e.kind(),
    };
    io::Error::new(kind, e)
}

impl tokio::io::AsyncRead for BodyReader<'_, '_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        loop {
            match std::mem::replace(&mut self.state, ReaderState::Gone) {
                ReaderState::Ready {
                    body,
                    mut pos,
                    filled,
                } => {
                    let chunk = &body.io.chunk;
                    if filled && pos < chunk.len() {
                        let n = buf.remaining().min(chunk.len() - pos);
                        buf.put_slice(&chunk[pos..pos + n]);
                        pos += n;
                        self.state = ReaderState::Ready { body, pos, filled };
                        return Poll::Ready(Ok(()));
                    }
                    self.state = ReaderState::Waiting(Box::pin(async move {
                        let r = body.chunk().await.map(|c| c.is_some());
                        (body, r)
                    }));
                }
                ReaderState::Waiting(mut next) => match next.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = ReaderState::Waiting(next);
                        return Poll::Pending;
                    }
                    Poll::Ready((body, Ok(true))) => {
                        self.state = ReaderState::Ready {
                            body,
                            pos: 0,
                            filled: true,
                        };
                    }
                    Poll::Ready((_, Ok(false))) => {
                        self.state = ReaderState::End;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready((_, Err(e))) => {
                        self.state = ReaderState::Failed(e.clone());
                        return Poll::Ready(Err(body_io_error(e)));
                    }
                },
                ReaderState::End => {
                    self.state = ReaderState::End;
                    return Poll::Ready(Ok(()));
                }
                ReaderState::Failed(e) => {
                    self.state = ReaderState::Failed(e.clone());
                    return Poll::Ready(Err(body_io_error(e)));
                }
                ReaderState::Gone => {
                    return Poll::Ready(Err(io::Error::other("body reader used after a panic")))
                }
            }
        }
    }
}

/// The transport, plain or encrypted.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Any other byte stream ([`crate::Server::serve_stream`]).
    Other(Box<dyn Transport>),
    /// TLS over such a stream.
    OtherTls(Box<TlsStream<Box<dyn Transport>>>),
    /// Taken for the TLS handshake.
    Gone,
}

/// What [`Stream::Other`] holds: any byte stream a task can own.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// An event a [`BodyStream`] met that the main loop must handle.
#[derive(Debug, Clone, Copy)]
enum Deferred {
    Hello,
    StartTls,
}

enum ReadOutcome {
    Data,
    Eof,
    Timeout,
    Shutdown,
}

/// The I/O half of a connection: what the [`BodyStream`] drives.
pub(crate) struct Io {
    stream: Stream,
    session: Session,
    /// Read buffer of a TLS or other connection (plain TCP reads into [`SCRATCH`]).
    tls_buf: Vec<u8>,
    /// The body piece handed to the handler.
    chunk: Vec<u8>,
    deferred: Option<Deferred>,
    /// EOF or a network error: nothing more can be read or written.
    broken: bool,
    /// The end of the stream was seen while checking for pending input.
    eof: bool,
    common: Arc<Common>,
}

impl Io {
    /// Writes the session's queued replies.
    async fn flush(&mut self) -> io::Result<()> {
        let Io {
            stream,
            session,
            common,
            ..
        } = self;
        if session.output().is_empty() {
            return Ok(());
        }
        let out = session.output();
        let write = async {
            match stream {
                Stream::Plain(s) => s.write_all(out).await,
                Stream::Tls(s) => {
                    s.write_all(out).await?;
                    s.flush().await
                }
                Stream::Other(s) => {
                    s.write_all(out).await?;
                    s.flush().await
                }
                Stream::OtherTls(s) => {
                    s.write_all(out).await?;
                    s.flush().await
                }
                Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
            }
        };
        match tokio::time::timeout(common.limits.command_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        session.clear_output();
        Ok(())
    }

    /// Reads once into the session, until the session's deadline
    /// ([`Session::poll_timeout`]); when it passes, the session queues `421 4.4.2`
    /// ([`Session::handle_timeout`]) and this returns [`ReadOutcome::Timeout`]. The graceful
    /// shutdown signal counts only between messages, the hard one always.
    async fn read(&mut self) -> io::Result<ReadOutcome> {
        let Io {
            stream,
            session,
            tls_buf,
            common,
            eof,
            ..
        } = self;
        let receiving = session.is_receiving_data();
        loop {
            let now = tokio::time::Instant::now();
            // Always some deadline: the session gives none only when it waits for the driver
            // (which does not read then), so this fallback is for a driver bug.
            let deadline = session
                .poll_timeout(now.into_std())
                .map_or(now + session.config().command_timeout, |d| {
                    tokio::time::Instant::from_std(d)
                });
            let read = tokio::time::timeout_at(deadline, read_into(stream, session, tls_buf, *eof));
            let r = tokio::select! {
                biased;
                () = common.hard.cancelled() => return Ok(ReadOutcome::Shutdown),
                () = common.soft.cancelled(), if !receiving => return Ok(ReadOutcome::Shutdown),
                r = read => r,
            };
            return match r {
                Err(_) => {
                    if session.handle_timeout(tokio::time::Instant::now().into_std()) {
                        Ok(ReadOutcome::Timeout)
                    } else if session.poll_timeout(now.into_std()).is_none() {
                        // Only the fallback deadline ran out.
                        session.timeout();
                        Ok(ReadOutcome::Timeout)
                    } else {
                        // Woken before the session's deadline: wait on.
                        continue;
                    }
                }
                Ok(Ok(0)) => Ok(ReadOutcome::Eof),
                Ok(Ok(_)) => Ok(ReadOutcome::Data),
                Ok(Err(e)) => Err(e),
            };
        }
    }

    /// Whether the client sent bytes that were not read yet: on the socket, or decrypted and
    /// buffered by rustls. Never waits. On a stream that is not a socket, polls it once for
    /// plaintext (see the module docs); what comes is dropped, as the session closes when
    /// told input is pending.
    async fn input_pending(&mut self) -> bool {
        match &mut self.stream {
            Stream::Plain(s) => socket_has_input(s),
            Stream::Tls(s) => {
                let (tcp, conn) = s.get_mut();
                matches!(conn.reader().fill_buf(), Ok(b) if !b.is_empty()) || socket_has_input(tcp)
            }
            Stream::Other(s) => poll_has_input(s, &mut self.eof, &mut self.broken).await,
            Stream::OtherTls(s) => poll_has_input(s, &mut self.eof, &mut self.broken).await,
            Stream::Gone => false,
        }
    }

    async fn close(&mut self) {
        // A plain TCP stream needs no shutdown: dropping it closes the socket, which sends the
        // FIN (and saves a syscall per connection). TLS sends its close_notify first; another
        // stream is told too, as it may be buffered.
        let _ = match &mut self.stream {
            Stream::Plain(_) | Stream::Gone => return,
            Stream::Tls(s) => tokio::time::timeout(CLOSE_TIMEOUT, s.shutdown()).await,
            Stream::Other(s) => tokio::time::timeout(CLOSE_TIMEOUT, s.shutdown()).await,
            Stream::OtherTls(s) => tokio::time::timeout(CLOSE_TIMEOUT, s.shutdown()).await,
        };
    }
}

/// Polls `s` once for input without waiting: `true` when bytes came. An end of file or an
/// error is remembered for the next read.
async fn poll_has_input<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    eof: &mut bool,
    broken: &mut bool,
) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let polled =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *s).poll_read(cx, &mut buf))).await;
    match polled {
        Poll::Ready(Ok(())) if !buf.filled().is_empty() => true,
        Poll::Ready(Ok(())) => {
            *eof = true;
            false
        }
        Poll::Ready(Err(e)) => {
            debug!(error = %e, "read failed");
            *broken = true;
            false
        }
        Poll::Pending => false,
    }
}

/// Whether bytes wait on the socket, by a non-blocking peek (tokio sockets are non-blocking;
/// tokio's own readiness may lag behind the kernel's, so it is not asked). End of file and
/// errors count as nothing pending: the next read reports them.
fn socket_has_input(s: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(s).peek(&mut byte), Ok(n) if n > 0)
}

/// Reads once and feeds what was read to the session; 0 means EOF (also when `eof` was seen
/// already).
async fn read_into(
    stream: &mut Stream,
    session: &mut Session,
    tls_buf: &mut Vec<u8>,
    eof: bool,
) -> io::Result<usize> {
    if eof {
        return Ok(0);
    }
    match stream {
        // tokio's `poll_read` takes a read shorter than the buffer as the socket drained (epoll
        // is edge-triggered) and waits for the next readiness at once, where `readable()` and
        // `try_read` would ask the kernel once more and get `EAGAIN`: one system call less
        // per command. The scratch buffer is borrowed only while the read is polled.
        Stream::Plain(s) => {
            let mut shrunk = false;
            std::future::poll_fn(|cx| {
                SCRATCH.with_borrow_mut(|buf| {
                    let mut rb = ReadBuf::new(buf);
                    match Pin::new(&mut *s).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            session.feed(rb.filled());
                            Poll::Ready(Ok(rb.filled().len()))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // About to sleep until the client talks: between commands an
                            // idle session keeps no buffer at all (the reply buffer alone
                            // would be ~150 octets of every idle session after EHLO).
                            if !shrunk && !session.is_receiving_data() {
                                session.shrink_buffers(0);
                                shrunk = true;
                            }
                            Poll::Pending
                        }
                    }
                })
            })
            .await
        }
        Stream::Tls(s) => read_buffered(s.as_mut(), session, tls_buf).await,
        Stream::Other(s) => read_buffered(s, session, tls_buf).await,
        Stream::OtherTls(s) => read_buffered(s.as_mut(), session, tls_buf).await,
        Stream::Gone => Ok(0),
    }
}

/// Reads once into the connection's own buffer and feeds the session.
async fn read_buffered<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    session: &mut Session,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    if buf.len() != TLS_READ_BUF {
        buf.resize(TLS_READ_BUF, 0);
    }
    let n = s.read(buf).await?;
    session.feed(&buf[..n]);
    Ok(n)
}

/// Milliseconds for the log, as a `u64` (a `u128` is no number to every log format).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the main loop does after an event was handled.
enum Next {
    /// The handler took the connection: greet (turning AUTH off unless it is offered).
    Greet {
        auth_offered: bool,
    },
    /// Check these credentials.
    Auth(Credentials),
    Accept,
    Refuse(Refusal),
    /// Refuse a recipient (delayed past the first few, see [`crate::Limits::refused_recipient_delay`]).
    RefuseRcpt(Refusal),
    /// Send this reply (the answer to an extension verb).
    Respond(smtp_proto::Reply),
    Data,
    StartTls,
    Nothing,
}

/// The handler half of a connection.
struct State<H: Handler> {
    handler: Arc<H>,
    info: ConnectionInfo,
    session: Option<H::Session>,
    envelope: Envelope,
    in_transaction: bool,
    started: Instant,
    /// Failed logins in this session.
    auth_failures: usize,
    /// Messages accepted in this session, for the log.
    messages: u32,
    /// When the session began, for the log.
    connected: Instant,
}

impl<H: Handler> State<H> {
    async fn on_event(&mut self, event: Event<'_>) -> Next {
        if let Event::Connect = event {
            return match self.handler.connect(&self.info).await {
                Ok(s) => {
                    let auth_offered = s.auth_offered();
                    self.session = Some(s);
                    Next::Greet { auth_offered }
                }
                Err(r) => {
                    info!(reply = %r, "connection refused");
                    Next::Refuse(r)
                }
            };
        }
        let Some(sh) = self.session.as_mut() else {
            // Only Connect can come before the handler session exists.
            return Next::Nothing;
        };
        match event {
            Event::Hello { domain, extended } => {
                if self.in_transaction {
                    self.in_transaction = false;
                    self.envelope.clear_transaction();
                    sh.reset();
                }
                match sh.hello(domain, extended).await {
                    Ok(()) => {
                        self.envelope.helo.clear();
                        self.envelope.helo.push_str(domain);
                        Next::Accept
                    }
                    Err(r) => {
                        info!(helo = %domain, reply = %r, "refused HELO");
                        Next::Refuse(r)
                    }
                }
            }
            Event::Mail { from, params } => match sh.mail(from, params).await {
                Ok(()) => {
                    self.envelope.from = from.clone();
                    self.envelope.mail_params = params.clone();
                    self.envelope.rcpts.clear();
                    self.in_transaction = true;
                    self.started = Instant::now();
                    Next::Accept
                }
                Err(r) => {
                    info!(from = %from, reply = %r, "refused MAIL");
                    Next::Refuse(r)
                }
            },
            Event::Rcpt { to, params } => match sh.rcpt(to, params).await {
                Ok(()) => {
                    self.envelope.rcpts.push((to.clone(), params.clone()));
                    Next::Accept
                }
                Err(r) => {
                    info!(from = %self.envelope.from, to = %to, reply = %r, "refused RCPT");
                    Next::RefuseRcpt(r)
                }
            },
            Event::DataStart => Next::Data,
            Event::Auth { credentials } => Next::Auth(credentials.clone()),
            Event::Extension { verb, args } => {
                let reply = sh.extension(verb, args).await;
                debug!(%verb, reply = %reply, "extension command");
                Next::Respond(reply)
            }
            Event::Reset => {
                self.abort_transaction();
                Next::Nothing
            }
            Event::StartTls => Next::StartTls,
            // Quit and Closed: the session is closed; the main loop flushes and closes.
            // Body, DataEnd and DataAborted only occur inside a message (see BodyStream).
            _ => Next::Nothing,
        }
    }

    fn abort_transaction(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            self.envelope.clear_transaction();
            if let Some(sh) = self.session.as_mut() {
                sh.reset();
            }
        }
    }
}

/// One connection: its I/O and its handler state.
pub(crate) struct Connection<H: Handler> {
    io: Io,
    state: State<H>,
}

/// Lazily formatted recipient list for the transaction log.
struct Rcpts<'a>(&'a Envelope);

impl fmt::Display for Rcpts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (to, _)) in self.0.rcpts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{to}")?;
        }
        Ok(())
    }
}

impl<H: Handler> Connection<H> {
    /// A connection over `stream` (already encrypted for an implicit-TLS listener).
    pub(crate) fn new(
        handler: Arc<H>,
        common: Arc<Common>,
        stream: Stream,
        info: ConnectionInfo,
    ) -> Self {
        let tls_active = matches!(stream, Stream::Tls(_) | Stream::OtherTls(_));
        let config = common.config_for(tls_active, info.lmtp);
        let mut envelope = Envelope::new(info.peer, info.local);
        envelope.tls = info.tls.clone();
        Self {
            io: Io {
                stream,
                session: Session::with_shared_config(config),
                tls_buf: Vec::new(),
                chunk: Vec::new(),
                deferred: None,
                broken: false,
                eof: false,
                common,
            },
            state: State {
                handler,
                info,
                session: None,
                envelope,
                in_transaction: false,
                started: Instant::now(),
                auth_failures: 0,
                messages: 0,
                connected: Instant::now(),
            },
        }
    }

    /// Runs the session to its end.
    pub(crate) async fn run(&mut self) {
        match &self.state.info.tls {
            Some(t) => {
                info!(tls = %t.summary(), resumed = t.resumed, "connected with TLS")
            }
            None => info!("connected"),
        }
        loop {
            // The session's own refusals (syntax, sequence, parameters, size) and closing
            // replies: no event reports them.
            for r in self.io.session.take_refusals() {
                match &r.command {
                    Some(c) => info!(command = %c, reply = %r.reply, "refused"),
                    None => info!(reply = %r.reply, "closing the connection"),
                }
                if r.dropped > 0 {
                    info!(dropped = r.dropped, "more refusals not logged");
                }
            }
            if let Some(d) = self.io.deferred.take() {
                let next = match d {
                    Deferred::Hello => {
                        let domain = self.io.session.helo().to_owned();
                        let extended = self.io.session.is_extended();
                        let event = Event::Hello {
                            domain: &domain,
                            extended,
                        };
                        Box::pin(self.state.on_event(event)).await
                    }
                    Deferred::StartTls => Next::StartTls,
                };
                if !self.apply(next).await {
                    break;
                }
                continue;
            }
            if self.io.session.output().len() >= OUTPUT_HIGH_WATER {
                if let Err(e) = self.io.flush().await {
                    debug!(error = %e, "write failed");
                    break;
                }
            }
            if let Some(event) = self.io.session.poll_event() {
                if let Event::SyncCheck = event {
                    let pending = self.io.input_pending().await;
                    if pending {
                        debug!("client did not wait for a reply: protocol synchronization error");
                    }
                    self.io.session.input_pending(pending);
                    continue;
                }
                // Boxed: the handler's futures (a policy lookup, an SPF check) live only
                // while a command is decided, not in every idle connection's task.
                let next = Box::pin(self.state.on_event(event)).await;
                if !self.apply(next).await {
                    break;
                }
                continue;
            }
            if self.io.broken {
                break;
            }
            if let Err(e) = self.io.flush().await {
                debug!(error = %e, "write failed");
                break;
            }
            if self.io.session.is_closed() {
                self.io.close().await;
                break;
            }
            self.io.session.shrink_buffers(IDLE_KEEP);
            // The last piece of a message is of no use now; the next message allocates anew.
            self.io.chunk = Vec::new();
            match self.io.read().await {
                Ok(ReadOutcome::Data) => {}
                Ok(ReadOutcome::Eof) => {
                    debug!("client closed the connection");
                    break;
                }
                // The session has queued its `421 4.4.2`.
                Ok(ReadOutcome::Timeout) => debug!("command timeout"),
                Ok(ReadOutcome::Shutdown) => self.io.session.shutdown(),
                Err(e) => {
                    debug!(error = %e, "read failed");
                    break;
                }
            }
        }
        self.state.abort_transaction();
        info!(
            messages = self.state.messages,
            duration_ms = millis(self.state.connected.elapsed()),
            "disconnected"
        );
    }

    /// Carries out what an event asked for; false ends the connection.
    async fn apply(&mut self, next: Next) -> bool {
        match next {
            Next::Greet { auth_offered } => {
                if !auth_offered {
                    self.io.session.disable_auth();
                }
                self.io.session.accept();
            }
            Next::Auth(credentials) => Box::pin(self.auth(credentials)).await,
            Next::Accept => self.io.session.accept(),
            Next::Refuse(r) => self.io.session.refuse(r),
            Next::RefuseRcpt(r) => {
                // A client guessing addresses waits for each answer past the first few.
                let limits = &self.io.common.limits;
                if self.io.session.refused_recipients() >= limits.refused_recipients_undelayed {
                    let delay = limits.refused_recipient_delay;
                    let hard = self.io.common.hard.clone();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = hard.cancelled() => {}
                    }
                }
                self.io.session.refuse(r);
            }
            Next::Respond(r) => self.io.session.respond(r),
            // Boxed: these run rarely (once per message, once per connection) and their
            // state would otherwise enlarge every idle connection's task.
            Next::Data => Box::pin(self.data()).await,
            Next::StartTls => return Box::pin(self.starttls()).await,
            Next::Nothing => {}
        }
        true
    }

    async fn data(&mut self) {
        let Some(sh) = self.state.session.as_mut() else {
            return;
        };
        let mut body = BodyStream {
            io: &mut self.io,
            state: BodyState::Open,
            discard: false,
        };
        let outcome = sh.data(&self.state.envelope, &mut body).await;
        body.drain().await;
        let env = &self.state.envelope;
        let elapsed = millis(self.state.started.elapsed());
        match body.state {
            BodyState::Ended(size) => {
                let (reply, per_recipient) = outcome.into_replies();
                if reply.code() < 300 || per_recipient.iter().any(|r| r.code() < 300) {
                    self.state.messages += 1;
                }
                info!(
                    from = %env.from,
                    rcpts = %Rcpts(env),
                    user = %env.authenticated.as_deref().unwrap_or("-"),
                    size,
                    outcome = %reply,
                    duration_ms = elapsed,
                    "message"
                );
                if per_recipient.is_empty() {
                    self.io.session.respond(reply);
                } else {
                    self.io.session.respond_per_recipient(per_recipient);
                }
                self.state.in_transaction = false;
                self.state.envelope.clear_transaction();
            }
            BodyState::Failed(BodyError::Refused(e)) => {
                info!(
                    from = %env.from,
                    rcpts = %Rcpts(env),
                    outcome = %e.reply(),
                    duration_ms = elapsed,
                    "message refused"
                );
                self.state.abort_transaction();
            }
            BodyState::Failed(e) => {
                info!(
                    from = %env.from,
                    rcpts = %Rcpts(env),
                    outcome = %e,
                    duration_ms = elapsed,
                    "message lost"
                );
                self.state.abort_transaction();
            }
            BodyState::Open => {}
        }
    }

    /// Asks the handler about a login, within the failure limits (see [`crate::auth`]).
    async fn auth(&mut self, credentials: Credentials) {
        let common = Arc::clone(&self.io.common);
        let ip = self.state.info.peer.ip();
        let mechanism = credentials.mechanism();
        let Some(attempt) = common.auth_failures.begin(ip) else {
            info!(user = %credentials.authcid(), %mechanism, "authentication refused: too many failures from this address");
            let text = format!(
                "{} Error: too many failed authentication attempts from your address, try again later",
                common.session_config.hostname
            );
            self.io.session.refuse(LIMIT_REACHED.with_text(text));
            return;
        };
        let Some(sh) = self.state.session.as_mut() else {
            return;
        };
        match sh.authenticate(&credentials).await {
            Ok(identity) => {
                drop(attempt);
                info!(user = %identity, %mechanism, "authenticated");
                self.state.envelope.authenticated = Some(identity);
                self.io.session.accept();
            }
            Err(failure) => {
                let reply = failure.refusal();
                info!(user = %credentials.authcid(), %mechanism, reply = %reply, "authentication failed");
                if reply.is_transient() {
                    // The user database could not answer: nothing was learnt about the
                    // password, so nothing is counted and nothing delayed.
                    drop(attempt);
                    self.io.session.refuse(reply);
                    return;
                }
                attempt.failed();
                self.state.auth_failures = self.state.auth_failures.saturating_add(1);
                let factor = u32::try_from(self.state.auth_failures.min(10)).unwrap_or(10);
                let delay = common.limits.auth_failure_delay.saturating_mul(factor);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = common.hard.cancelled() => {}
                }
                self.io.session.refuse(reply);
            }
        }
    }

    /// Sends `220`, runs the handshake and restarts the session over TLS.
    async fn starttls(&mut self) -> bool {
        self.state.abort_transaction();
        if self.io.flush().await.is_err() {
            return false;
        }
        let Some(tls) = self.io.common.tls.clone() else {
            return false;
        };
        let acceptor = tls.acceptor();
        let limit = self.io.common.limits.command_timeout;
        let (stream, info) = match std::mem::replace(&mut self.io.stream, Stream::Gone) {
            Stream::Plain(tcp) => {
                let Some((s, info)) = handshake(&acceptor, tcp, limit).await else {
                    return false;
                };
                (Stream::Tls(Box::new(s)), info)
            }
            Stream::Other(other) => {
                let Some((s, info)) = handshake(&acceptor, other, limit).await else {
                    return false;
                };
                (Stream::OtherTls(Box::new(s)), info)
            }
            _ => return false,
        };
        info!(tls = %info.summary(), resumed = info.resumed, "STARTTLS: TLS established");
        self.io.stream = stream;
        self.io.session.tls_established();
        self.state.envelope.helo.clear();
        if let Some(sh) = self.state.session.as_mut() {
            sh.tls_started(&info);
        }
        self.state.envelope.tls = Some(info.clone());
        self.state.envelope.authenticated = None;
        self.state.info.tls = Some(info);
        true
    }
}

/// Answers a connection over a limit and closes it.
pub(crate) async fn refuse(mut tcp: TcpStream, refusal: Refusal) {
    let write = async {
        tcp.write_all(&refusal.reply().to_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
}

/// Runs the implicit-TLS handshake; `None` when it fails or times out.
pub(crate) async fn implicit_tls<S: AsyncRead + AsyncWrite + Unpin>(
    common: &Common,
    stream: S,
) -> Option<(TlsStream<S>, TlsInfo)> {
    let tls = common.tls.as_ref()?;
    handshake(&tls.acceptor(), stream, common.limits.command_timeout).await
}

/// Runs a server-side TLS handshake within `limit`; `None` when it fails or times out.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: Duration,
) -> Option<(TlsStream<S>, TlsInfo)> {
    // Boxed: a handshake's state is large and would otherwise be part of every idle
    // connection's task.
    let handshake = Box::pin(tokio::time::timeout(limit, acceptor.accept(stream)));
    match handshake.await {
        Ok(Ok(s)) => {
            let info = tls_info(s.get_ref().1);
            Some((s, info))
        }
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!("TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::socket_has_input;

    /// The peek sees bytes the kernel holds, without consuming them, and nothing at EOF.
    #[tokio::test]
    async fn peek_sees_unread_input_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        assert!(!socket_has_input(&server));
        client.write_all(b"EHLO x\r\n").await.unwrap();
        let mut seen = false;
        for _ in 0..200 {
            if socket_has_input(&server) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen, "bytes written by the client were not seen");
        // Still there: the peek consumed nothing.
        assert!(socket_has_input(&server));
        let mut buf = [0u8; 8];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"EHLO x\r\n");
        assert!(!socket_has_input(&server));
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!socket_has_input(&server), "EOF is not pending input");
    }
}
