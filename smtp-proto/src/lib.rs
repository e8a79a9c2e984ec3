//! A sans-IO SMTP core: parsers and encoders for commands, replies, addresses, ESMTP
//! parameters and the DATA section, and the server-side session state machine.
//!
//! Nothing here does I/O, reads a clock or spawns a task: you feed bytes in and take bytes
//! out, so the same code runs under tokio (`smtp-server`, `smtp-client`), blocking
//! `std::net`, a fuzzer or a test with no sockets at all. Parsing never panics on any input;
//! partial input means "read more", never an error.
//!
//! The loop a server writes around a [`session::Session`]:
//!
//! ```
//! use smtp_proto::session::{Event, Session, SessionConfig};
//! use smtp_proto::Reply;
//!
//! let mut session = Session::new(SessionConfig::new("mx.example.org"));
//! // Bytes as they arrive from the client, which waits for the greeting, the EHLO reply and
//! // the 354 (RFC 2920) and pipelines the rest.
//! let reads: [&[u8]; 4] = [
//!     b"",
//!     b"EHLO client.example.net\r\n",
//!     b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n",
//!     b"Hi Bob\r\n.\r\nQUIT\r\n",
//! ];
//! let mut sent = Vec::new();
//! for read in reads {
//!     session.feed(read);
//!     while let Some(event) = session.poll_event() {
//!         match event {
//!             Event::Rcpt { to, .. } if to.to_string().contains("nobody") => {
//!                 session.respond(Reply::new(550, "5.1.1".parse().ok(), "No such user").unwrap());
//!             }
//!             Event::Body(chunk) => println!("{} bytes of message", chunk.len()),
//!             // Including Event::SyncCheck: a server with a socket looks there for unread
//!             // input first (see the session docs, "Pipelining").
//!             e if e.needs_decision() => session.accept(),
//!             _ => {}
//!         }
//!     }
//!     // Flush once per read: pipelined replies leave in one write.
//!     sent.extend_from_slice(session.output());
//!     session.clear_output();
//! }
//! let sent = String::from_utf8(sent).unwrap();
//! assert!(sent.contains("250 2.1.5 Recipient OK\r\n550 5.1.1 No such user\r\n354 "));
//! assert!(sent.ends_with("250 2.0.0 Message accepted\r\n221 2.0.0 mx.example.org closing connection\r\n"));
//! ```
//!
//! The pieces, each usable alone:
//! - [`command`]: [`command::parse_command`] turns a line into a [`command::Command`] (and
//!   [`command::Command::encode`] turns it back, for clients); errors say which reply applies.
//! - [`address`]: RFC 5321 §4.1.2 paths and mailboxes (quoted local parts, address literals,
//!   `<>`, `<postmaster>`, source routes, UTF-8), borrowed for parsing and owned for storing.
//! - [`param`]: typed ESMTP parameters (SIZE, BODY, SMTPUTF8, AUTH, DSN's RET/ENVID/NOTIFY/ORCPT).
//! - [`reply`]: [`Reply`] with RFC 3463 enhanced codes, its encoder and the incremental
//!   client-side parser [`parse_reply`].
//! - [`ehlo`]: the EHLO reply's capabilities, both ways.
//! - [`data`]: the DATA codec: dot-stuffing, the `CRLF.CRLF` end marker, bare CR/LF policy
//!   (SMTP smuggling), line and size limits.
//! - [`session`]: the server session state machine.
//! - [`envelope`]: the [`Envelope`] (sender, recipients, DSN parameters) that server, client
//!   and queue share, with its text form (SMTP command lines), and [`TlsInfo`].
#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod envelope;
pub mod param;
pub mod reply;
pub mod sasl;
pub mod session;

pub use address::{
    parse_mailbox, Domain, DomainName, ForwardPath, Mailbox, MailboxBuf, ReversePath,
};
pub use command::{parse_command, Command, CommandError, CommandErrorKind};
pub use data::{
    encode_data, BareLineEnding, DataConfig, DataDecoder, DataEncoder, DataError, DataStatus,
};
pub use ehlo::{parse_ehlo, Capability, EhloError, EhloReply};
pub use envelope::{Envelope, EnvelopeError, Recipient, TlsInfo};
pub use reply::{parse_reply, EnhancedCode, Refusal, Reply, ReplyError, Severity};
