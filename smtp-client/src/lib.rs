//! An async SMTP client over [`smtp_proto`]: EHLO, STARTTLS, PIPELINING and per-recipient
//! results ([`Connection`]); MX resolution with hickory-resolver ([`Resolver`]); delivery to a
//! domain across its mail hosts and their addresses ([`Deliverer`]).
//!
//! # Sending through one server
//!
//! ```
//! # async fn run(addr: std::net::SocketAddr, private_ca: smtp_client::CertificateDer<'static>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use smtp_client::{ClientConfig, Connection, Envelope, RcptResult};
//! use smtp_proto::address::{parse_forward_path, parse_reverse_path};
//!
//! // The default: STARTTLS required, the certificate verified for "mx.example.net" against
//! // Mozilla's roots and, here, a private CA.
//! let config = ClientConfig::new("client.example.org").with_root(private_ca);
//! let mut conn = Connection::connect(addr, "mx.example.net", &config).await?;
//! assert!(conn.tls_info().is_some_and(|tls| tls.verified));
//! let envelope = Envelope::new(
//!     parse_reverse_path("<alice@example.org>")?.into_owned(),
//!     vec![parse_forward_path("<bob@example.net>")?.into_owned()],
//! );
//! let result = conn.send(&envelope, b"Subject: hi\r\n\r\nHello Bob.\r\n").await?;
//! for rcpt in &result.rcpts {
//!     match rcpt {
//!         RcptResult::Accepted(reply) => println!("accepted: {reply}"),
//!         RcptResult::Rejected(reply) => println!("refused: {reply}"),
//!     }
//! }
//! conn.quit().await?;
//! # Ok(())
//! # }
//! # // Run it against a one-shot server that offers STARTTLS with a certificate made here and
//! # // accepts everything, so the example is tested.
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! #     use std::sync::Arc;
//! #     use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
//! #     use tokio_rustls::rustls;
//! #     async fn script<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, steps: &[(&[u8], &[u8])]) {
//! #         let mut seen = Vec::new();
//! #         let mut buf = [0u8; 4096];
//! #         for (wait_for, answer) in steps {
//! #             while !seen.windows(wait_for.len()).any(|w| w == *wait_for) {
//! #                 let n = s.read(&mut buf).await.unwrap();
//! #                 assert!(n > 0);
//! #                 seen.extend_from_slice(&buf[..n]);
//! #             }
//! #             seen.clear();
//! #             s.write_all(answer).await.unwrap();
//! #             s.flush().await.unwrap();
//! #         }
//! #     }
//! #     let _ = rustls::crypto::ring::default_provider().install_default();
//! #     let made = rcgen::generate_simple_self_signed(vec!["mx.example.net".to_owned()]).unwrap();
//! #     let cert = made.cert.der().clone();
//! #     let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
//! #     let tls = rustls::ServerConfig::builder()
//! #         .with_no_client_auth()
//! #         .with_single_cert(vec![cert.clone()], key)
//! #         .unwrap();
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let addr = listener.local_addr().unwrap();
//! #     let server = tokio::spawn(async move {
//! #         let (mut s, _) = listener.accept().await.unwrap();
//! #         s.write_all(b"220 mx.example.net ESMTP\r\n").await.unwrap();
//! #         script(&mut s, &[
//! #             (b"EHLO", b"250-mx.example.net\r\n250 STARTTLS\r\n"),
//! #             (b"STARTTLS\r\n", b"220 2.0.0 go ahead\r\n"),
//! #         ]).await;
//! #         let mut s = tokio_rustls::TlsAcceptor::from(Arc::new(tls)).accept(s).await.unwrap();
//! #         script(&mut s, &[
//! #             (b"EHLO", b"250-mx.example.net\r\n250 PIPELINING\r\n"),
//! #             (b"DATA\r\n", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"),
//! #             (b"\r\n.\r\n", b"250 2.0.0 queued\r\n"),
//! #             (b"QUIT\r\n", b"221 2.0.0 bye\r\n"),
//! #         ]).await;
//! #     });
//! #     run(addr, cert).await.unwrap();
//! #     server.await.unwrap();
//! # }
//! ```
//!
//! [`Connection::connect_host`] connects by host name (`"smtp.example.org"`, port 587),
//! resolving it with a [`Resolver`] and checking the certificate against that name;
//! [`TlsPolicy::Implicit`] is TLS from the first byte (port 465).
//!
//! # Delivering to a domain
//!
//! ```no_run
//! # async fn run(envelope: smtp_client::Envelope, message: &[u8]) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use smtp_client::{ClientConfig, Deliverer, RcptOutcome, Resolver, TlsPolicy};
//!
//! // Between MX hosts most certificates cannot be verified: encrypt whenever offered,
//! // whatever the certificate (Postfix's `may`), and say so.
//! let config =
//!     ClientConfig::new("mail.example.org").with_tls(TlsPolicy::OpportunisticUnverified);
//! let deliverer = Deliverer::new(Resolver::system()?, config)
//!     // Never connect to ourselves (a mail loop).
//!     .with_address_filter(Arc::new(|addr| !addr.ip().is_unspecified()));
//! let report = deliverer.deliver("example.net", &envelope, message).await;
//! for (rcpt, outcome) in &report.rcpts {
//!     match outcome {
//!         RcptOutcome::Delivered(reply) => println!("{rcpt}: delivered ({reply})"),
//!         RcptOutcome::Transient(why) => println!("{rcpt}: retry later ({why})"),
//!         RcptOutcome::Permanent(why) => println!("{rcpt}: bounce ({} {why})", why.enhanced),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Decisions
//!
//! - TLS ([`tls`]): by default STARTTLS is required and the certificate verified for the
//!   host name given ([`TlsPolicy::RequireVerified`]); [`TlsPolicy::Implicit`] for port 465;
//!   relaying to MX hosts chooses [`TlsPolicy::OpportunisticUnverified`] explicitly
//!   (Postfix's `may`: STARTTLS whenever offered, any certificate). The rustls
//!   configuration is built once per [`ClientConfig`] (shared by its clones), so sessions
//!   resume. Failures are a structured [`TlsError`]. Bytes a server sends after its `220` to
//!   STARTTLS are discarded and counted ([`Connection::discarded_after_starttls`]).
//! - EHLO is refused with 5yz → HELO, and then no extension is used.
//! - SMTP AUTH ([`auth`]): with [`ClientConfig::with_credentials`] every connection logs in
//!   after STARTTLS, PLAIN before LOGIN, with the capabilities of the EHLO inside TLS. The
//!   password goes only over TLS unless [`Credentials::allow_plaintext_auth`] says otherwise;
//!   a failed login is [`ClientError::Auth`], transient (a queue defers, as Postfix does).
//! - A message with 8-bit octets needs 8BITMIME and a non-ASCII address needs SMTPUTF8;
//!   without them the message is refused before anything is sent (no downgrade), as is a
//!   message over the server's SIZE.
//! - Message data is sent with DATA (not BDAT), dot-stuffed, with every bare CR or LF turned
//!   into CRLF (so nothing that could smuggle a second message reaches the server). Lines are
//!   not rewrapped: a line over 998 octets is sent as it is, for the server to judge.
//! - A message can be a file ([`Message::file`], for [`Connection::send_message`] and
//!   [`Deliverer::deliver_message`]): it is read twice per transaction, once to measure it for
//!   `SIZE=` and `BODY=8BITMIME`, once to send it in 64 KiB chunks, never whole in memory.
//! - DSN parameters (NOTIFY, ORCPT, RET, ENVID) are sent only to servers that offer DSN.
//! - Timeouts are RFC 5321 §4.5.3.2's, configurable in [`Timeouts`].
//! - [`Deliverer`] returns its report as soon as the server has answered the message data:
//!   QUIT is sent from a spawned task that gets at most [`QUIT_GRACE`] (10 s) for the QUIT,
//!   its `221` and the close (TLS `close_notify` and its flush) together, then drops the
//!   socket ([`Connection::quit_in_background`]), so a peer that stalls after its `250`
//!   (even one that stops reading) holds neither the caller, nor the window in which a crash
//!   would re-send the message, nor the task and its socket for longer than that.
//! - Opportunistic unverified TLS that fails (handshake error or timeout, a connection closed or garbage
//!   after the `220` to STARTTLS, the EHLO inside TLS unanswered) makes [`Deliverer`] retry the
//!   same address once in clear text, as Postfix's `may` level does; the report says so
//!   ([`DeliveryReport::tls_fallback`]). Never under [`TlsPolicy::RequireVerified`].
//! - Address order: [`AddressPreference`] `ipv6` / `ipv4` / `any`, default `any` as in
//!   Postfix (the families alternate, the first at random), for MX hosts, an implicit MX and a
//!   smarthost by name ([`Deliverer::with_address_preference`]).
//! - Replies a peer sends are read and validated whole but at most 64 KiB / 1000 lines (more is
//!   an error), in linear time ([`codec::ReplyDecoder`]); of each, at most 10 lines and 2 KiB
//!   of text are kept ([`codec::bound_reply`]), except the EHLO reply, parsed whole into
//!   capabilities.
//! - Peer text is kept raw in [`Reply`] values but escaped in
//!   everything meant for people: [`Failure::text`], [`Attempt::error`], errors' `Display`,
//!   log lines. [`escape_controls`] and [`SafeReply`] do it for callers ([`text`]).
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod connection;
pub mod deliver;
pub mod error;
pub mod lmtp;
pub mod message;
pub mod resolve;
pub mod text;
pub mod tls;

pub use auth::{AuthError, CancelReason, Credentials, InvalidCredentials};
pub use connection::{
    ClientConfig, Connection, Envelope, RcptResult, Recipient, Timeouts, TransactionResult,
    QUIT_GRACE,
};
pub use deliver::{
    AddressFilter, Attempt, Deliverer, DeliveryError, DeliveryReport, Failure, RcptOutcome,
};
pub use error::ClientError;
pub use message::{Message, MessageInfo};
pub use resolve::{
    AddressOrder, AddressPreference, MxHost, ParseAddressPreferenceError, ResolveError, Resolver,
};
pub use text::{escape_controls, SafeReply};
pub use tls::{CertificateProblem, TlsError, TlsInfo, TlsPolicy};

/// The protocol crate, re-exported so callers name the same types this API takes and returns
/// (addresses, replies, parameters) without depending on a matching version themselves.
pub use smtp_proto;
/// The protocol types this crate's API takes and returns, at the crate root: envelopes are
/// built from [`ReversePath`] and [`ForwardPath`] (parse them with [`parse_reverse_path`] and
/// [`parse_forward_path`]), outcomes carry [`Reply`] and [`EnhancedCode`].
pub use smtp_proto::address::{
    parse_forward_path, parse_mailbox, parse_reverse_path, ForwardPath, Mailbox, ReversePath,
};
pub use smtp_proto::param::{Notify, Orcpt, Ret, XText};
pub use smtp_proto::reply::{EnhancedCode, Reply};
/// The certificate type [`ClientConfig::with_root`] takes (from `rustls-pki-types`).
pub use tokio_rustls::rustls::pki_types::CertificateDer;

#[cfg(feature = "test-dns")]
pub mod testdns;
