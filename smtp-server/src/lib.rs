//! An async SMTP server library: tokio and rustls around the sans-IO session of
//! [`smtp_proto::session`].
//!
//! You write a [`Handler`] (accept or refuse a connection, make a per-connection
//! [`SessionHandler`]) whose hooks decide EHLO, MAIL, each RCPT and the message; the library
//! does the rest: listeners on IPv4 and IPv6, the protocol (PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING/BDAT, STARTTLS), TLS (STARTTLS and implicit TLS,
//! certificates from PEM files, reloadable), limits, timeouts, logs and graceful shutdown.
//!
//! ```no_run
//! use smtp_server::{
//!     BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, Server, SessionHandler,
//! };
//! use smtp_proto::Refusal;
//!
//! struct Counter;
//! struct CounterSession;
//!
//! impl Handler for Counter {
//!     type Session = CounterSession;
//!     async fn connect(&self, info: &ConnectionInfo) -> Result<CounterSession, Refusal> {
//!         println!("connection from {}", info.peer);
//!         Ok(CounterSession)
//!     }
//! }
//!
//! impl SessionHandler for CounterSession {
//!     async fn data(&mut self, env: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
//!         let mut size = 0;
//!         loop {
//!             match body.chunk().await {
//!                 Ok(Some(piece)) => size += piece.len(),
//!                 Ok(None) => break,
//!                 // The message is lost and the client was told; nothing to store.
//!                 Err(_) => return DataOutcome::temporary_failure("lost"),
//!             }
//!         }
//!         println!("{} octets from {} for {} recipients", size, env.from, env.rcpts.len());
//!         DataOutcome::accepted("Message accepted")
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     Server::builder(Counter)
//!         .hostname("mx.example.org")
//!         .listen("127.0.0.1:2525".parse().unwrap())
//!         .listen("[::1]:2525".parse().unwrap())
//!         .build()?
//!         .serve(async { tokio::signal::ctrl_c().await.ok(); })
//!         .await
//! }
//! ```
//!
//! # How a connection runs
//! One task per connection runs one loop over its [`smtp_proto::session::Session`]: poll an
//! event, ask the handler, tell the session; when the session needs input, write its queued
//! replies in one go (so pipelined commands cost one write) and read until the session's
//! deadline.
//!
//! - Timeouts: [`Limits::command_timeout`] (default 5 minutes) and, inside a message (DATA,
//!   and from the first BDAT chunk to the last), [`Limits::data_timeout`] (default 3
//!   minutes) become the session's
//!   [`SessionConfig::command_timeout`](smtp_proto::session::SessionConfig::command_timeout)
//!   and [`data_timeout`](smtp_proto::session::SessionConfig::data_timeout); the session says
//!   by when the client must send more
//!   ([`Session::poll_timeout`](smtp_proto::session::Session::poll_timeout)), and the driver
//!   sleeps until then on tokio's clock. Each read restarts the clock, and the time the
//!   handler takes does not count: the clock starts when the reply has been written. A
//!   client that stays silent gets `421 4.4.2 <host> Timeout exceeded, closing connection`
//!   and the connection closes; inside a message the handler's [`BodyStream`] then fails
//!   with [`BodyError::Timeout`]. Writes and the TLS handshake are bounded by
//!   [`Limits::command_timeout`] too. Because the clock is tokio's, tests can run the
//!   timeouts on paused time (`#[tokio::test(start_paused = true)]`) over
//!   [`Server::serve_stream`].
//! - [`Server::serve_stream`] runs a session on any byte stream (`AsyncRead + AsyncWrite`):
//!   an in-memory [`tokio::io::duplex`] pipe in tests, a transport of your own. STARTTLS runs
//!   over that stream; connection count limits and the shutdown of [`BoundServer::serve`] do
//!   not apply to it.
//!
//! - Connections over [`Limits::max_connections`] or [`Limits::max_connections_per_ip`] get
//!   `421 4.7.0` and are closed before any handler hook runs.
//! - A command line with a bare LF or CR gets `550 5.5.2 <host> Error: bare <LF> received`
//!   and the connection closes; nothing of that line runs (see [`smtp_proto::session`]).
//! - Unauthorised pipelining (talking before the greeting, pipelining before EHLO or after
//!   HELO, anything behind EHLO, HELO, DATA, VRFY, EXPN, TURN, QUIT or NOOP, message content
//!   before the `354`) gets `554 5.5.0 Error: SMTP protocol synchronization` and the
//!   connection closes, as Postfix's default `smtpd_forbid_unauth_pipelining = yes`. Besides
//!   what it has read, the server looks at the socket without waiting (a `recv` with
//!   `MSG_PEEK`) when the greeting is due and after such commands (on a stream of
//!   [`Server::serve_stream`], which cannot be peeked at, it polls the stream once instead). Turn it off with
//!   [`smtp_proto::session::SessionConfig::forbid_unauth_pipelining`] through
//!   [`ServerBuilder::session_config`].
//! - After `220 Ready to start TLS` whatever the client pipelined behind STARTTLS is dropped
//!   unread, the session starts over (EHLO again) and [`SessionHandler::tls_started`] learns
//!   the protocol and cipher.
//! - Shutdown (the future given to [`BoundServer::serve`]): listeners close, idle sessions get
//!   `421 4.3.2` at once, sessions receiving a message have [`Limits::shutdown_grace`] to
//!   finish it.
//!
//! # SMTP AUTH
//! [`ServerBuilder::auth`] offers mechanisms (PLAIN and LOGIN, [`Mechanism`]), by default
//! only on encrypted connections (before TLS, `AUTH` gets `538 5.7.11` and is not
//! advertised). The session runs the SASL exchange (`334` challenges, `*` to cancel, base64
//! errors, `503` for a second AUTH); the handler only checks the decoded [`Credentials`],
//! whose secret never shows in `Debug`:
//!
//! ```no_run
//! use smtp_server::{AuthFailure, Credentials, Mechanism, SessionHandler};
//! # use smtp_server::{BodyStream, DataOutcome, Envelope};
//! # struct Submission { user: Option<String> }
//! # fn password_matches(_: &str, _: &[u8]) -> bool { true }
//!
//! impl SessionHandler for Submission {
//!     async fn authenticate(&mut self, c: &Credentials) -> Result<String, AuthFailure> {
//!         let (login, secret) = (c.authcid().to_owned(), c.secret().clone());
//!         // Password hashes are slow on purpose: off the async workers.
//!         let ok = tokio::task::spawn_blocking(move || password_matches(&login, secret.expose()))
//!             .await
//!             .map_err(|_| AuthFailure::Temporary)?;
//!         if !ok {
//!             return Err(AuthFailure::Invalid); // 535 5.7.8, after the failure delay
//!         }
//!         self.user = Some(c.authcid().to_owned());
//!         Ok(c.authcid().to_owned()) // 235 2.7.0; Envelope::authenticated from now on
//!     }
//! #   async fn data(&mut self, _: &Envelope, _: &mut BodyStream<'_>) -> DataOutcome {
//! #       DataOutcome::accepted("ok")
//! #   }
//! }
//! # let _ = Mechanism::Plain;
//! ```
//!
//! Whether a session may then send is the handler's decision (a submission service answers
//! `530 5.7.0` in [`SessionHandler::mail`] until it logged in, and refuses senders that are
//! not the user's). The library limits guessing for every handler: failure replies are
//! delayed, [`Limits::max_auth_failures`] per session end it with `421 4.7.0`, and
//! [`Limits::max_auth_failures_per_ip`] per address (IPv6: per /64) block AUTH from it for
//! [`Limits::auth_failure_window`]; see [`auth`]. [`SessionHandler::auth_offered`] turns
//! AUTH off per connection (a port-25 listener).
//!
//! # Logs
//! With [`tracing`]: one span `session` per connection with `id`, `peer` and `listener`; one
//! `info` event per transaction (`from`, `rcpts`, `user`, `size`, `outcome`, `duration_ms`),
//! one per login (`authenticated` or `authentication failed`, with the login name and
//! mechanism, never the secret); connection details at `debug`.
#![forbid(unsafe_code)]

pub mod auth;
mod config;
mod connection;
pub mod handler;
mod listener;
mod server;
pub mod tls;

pub use auth::{AuthFailure, Credentials, Mechanism, Secret};
pub use config::Limits;
pub use handler::{
    BodyError, BodyReader, BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler,
    SessionHandler, TlsInfo,
};
pub use listener::Listener;
pub use server::{machine_hostname, BoundServer, Error, Server, ServerBuilder};
pub use tls::{TlsConfig, TlsError};

/// The protocol crate, re-exported so handlers name the same types (replies, addresses).
pub use smtp_proto;
/// The reply types a handler returns, re-exported from [`smtp_proto`].
pub use smtp_proto::{EnhancedCode, Refusal, Reply};
