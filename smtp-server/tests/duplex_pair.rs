//! The workspace's client against the server library in one process, over in-memory pipes
//! (`tokio::io::duplex`, served with `Server::serve_stream`, the client made with
//! `Connection::from_stream`) on tokio's paused clock: no sockets, no wall-clock waits.
//! Pipelining as seen on the wire, STARTTLS with a certificate made at test time, and the
//! command and data timeouts to the millisecond.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use server_support::{pki, InMemory, MEMORY_LISTENER, MEMORY_PEER};
use smtp_client::{ClientConfig, Connection, Envelope, RcptResult, TlsPolicy};
use smtp_proto::address::{parse_forward_path, parse_reverse_path};
use smtp_server::{Limits, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

const TIMEOUT_421: &[u8] = b"421 4.4.2 mx.test Timeout exceeded, closing connection\r\n";

fn config(tls: TlsPolicy) -> ClientConfig {
    ClientConfig::new("client.test").with_tls(tls)
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        parse_reverse_path(from).unwrap().into_owned(),
        to.iter()
            .map(|t| parse_forward_path(t).unwrap().into_owned())
            .collect(),
    )
}

/// Pieces of the server's output with the time each arrived.
type Timed = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// A relay between the client and an in-memory connection that records each read it makes
/// of the client's bytes (so a test sees how commands were grouped into writes) and each
/// piece of the server's with the paused clock's time it arrived.
#[derive(Clone, Default)]
struct Tap {
    from_client: Arc<Mutex<Vec<Vec<u8>>>>,
    from_server: Timed,
}

impl Tap {
    /// A connection to `srv` through a new tap; returns the client's end.
    fn connect(srv: &InMemory) -> (DuplexStream, Tap) {
        let tap = Tap::default();
        let (client, relay) = tokio::io::duplex(64 * 1024);
        let (mut from_client, mut to_client) = tokio::io::split(relay);
        let (mut from_server, mut to_server) = tokio::io::split(srv.pipe());
        let log = tap.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from_client.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                log.from_client.lock().unwrap().push(buf[..n].to_vec());
                if to_server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown().await;
        });
        let log = tap.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from_server.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let piece = buf[..n].to_vec();
                log.from_server
                    .lock()
                    .unwrap()
                    .push((Instant::now(), piece));
                if to_client.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown().await;
        });
        (client, tap)
    }

    fn client_reads(&self) -> Vec<String> {
        let reads = self.from_client.lock().unwrap();
        reads
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    /// The last piece the server sent, and when.
    fn last_from_server(&self) -> (Instant, Vec<u8>) {
        self.from_server.lock().unwrap().last().cloned().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_transaction() {
    let srv = InMemory::new(|b| b);
    let (pipe, tap) = Tap::connect(&srv);
    let peer = MEMORY_PEER.parse().unwrap();
    let mut conn = Connection::from_stream(pipe, peer, "mx.test", &config(TlsPolicy::None))
        .await
        .unwrap();
    assert_eq!(conn.greeting().to_string(), "220 mx.test ESMTP ready");
    assert!(conn.has("PIPELINING") && conn.has("CHUNKING"));
    assert!(!conn.has("STARTTLS"), "no TLS configured");
    assert_eq!(conn.peer_addr(), peer);
    let env = envelope(
        "<alice@example.net>",
        &[
            "<bob@example.org>",
            "<bad@example.org>",
            "<carol@example.org>",
        ],
    );
    let body = b"Subject: pipelined\r\n\r\n.leading dot\r\nbody\r\n";
    let result = conn.send(&env, body).await.unwrap();
    conn.quit().await.unwrap();

    // The client's view: 250s, and the refused recipient's own reply.
    assert_eq!(result.mail.to_string(), "250 2.1.0 Sender OK");
    let rcpts: Vec<String> = result.rcpt_replies.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        rcpts,
        [
            "250 2.1.5 Recipient OK",
            "550 5.1.1 No such user",
            "250 2.1.5 Recipient OK"
        ]
    );
    let data = result.data.clone().unwrap();
    assert_eq!(data.to_string(), "250 2.0.0 Stored");
    assert_eq!(result.rcpts[0], RcptResult::Accepted(data.clone()));
    assert!(!result.rcpts[1].is_accepted());
    assert_eq!(result.rcpts[2], RcptResult::Accepted(data));

    // The handler's view: the envelope without the refused recipient, the body as sent.
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.envelope.helo, "client.test");
    assert_eq!(m.envelope.from.to_string(), "<alice@example.net>");
    let to: Vec<String> = m
        .envelope
        .rcpts
        .iter()
        .map(|(t, _)| t.to_string())
        .collect();
    assert_eq!(to, ["<bob@example.org>", "<carol@example.org>"]);
    assert_eq!(m.envelope.peer, peer);
    assert!(m.envelope.tls.is_none());
    assert_eq!(m.body, body);
    let ev = srv.rec.events();
    assert_eq!(ev[0], format!("connect {MEMORY_LISTENER} tls=no"));

    // The wire: MAIL, every RCPT and DATA in one write of the client's, which the server
    // took without a synchronization error.
    let reads = tap.client_reads();
    let batch = reads
        .iter()
        .find(|r| r.starts_with("MAIL FROM:"))
        .unwrap_or_else(|| panic!("no MAIL write: {reads:?}"));
    assert_eq!(batch.matches("RCPT TO:").count(), 3, "{reads:?}");
    assert!(batch.ends_with("DATA\r\n"), "{reads:?}");
}

#[tokio::test(start_paused = true)]
async fn starttls_then_a_transaction() {
    let p = pki("duplex");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let srv = InMemory::new(move |b| b.tls(tls));
    let client = config(TlsPolicy::RequireVerified).with_root(p.ca_der.clone());
    let peer = MEMORY_PEER.parse().unwrap();
    let mut conn = Connection::from_stream(srv.pipe(), peer, "localhost", &client)
        .await
        .unwrap();
    let info = conn.tls_info().cloned().expect("STARTTLS was used");
    assert!(info.verified, "{info}");
    assert_eq!(info.protocol, "TLSv1.3");
    assert!(!conn.has("STARTTLS"), "STARTTLS offered again after TLS");
    assert_eq!(conn.discarded_after_starttls(), 0);
    let result = conn
        .send(
            &envelope("<alice@example.net>", &["<bob@example.org>"]),
            b"Subject: secret\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    conn.quit().await.unwrap();
    assert_eq!(result.accepted(), 1);

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    let tls = msgs[0]
        .envelope
        .tls
        .as_ref()
        .expect("message came over TLS");
    assert_eq!(tls.protocol, "TLSv1.3");
    assert_eq!(tls.cipher, info.cipher);
    assert_eq!(msgs[0].body, b"Subject: secret\r\n\r\nhi\r\n");
    let ev = srv.rec.events();
    let hellos: Vec<&String> = ev.iter().filter(|e| e.starts_with("hello")).collect();
    assert_eq!(
        hellos,
        ["hello client.test true", "hello client.test true"],
        "EHLO before and after STARTTLS: {ev:?}"
    );
    assert!(ev.contains(&"tls TLSv1.3".to_owned()), "{ev:?}");
}

#[tokio::test(start_paused = true)]
async fn silent_client_gets_421_after_the_command_timeout() {
    let limits = Limits::default();
    let timeout = limits.command_timeout;
    let srv = InMemory::new(|b| b.limits(limits));
    let (pipe, tap) = Tap::connect(&srv);
    let mut conn = Connection::from_stream(
        pipe,
        MEMORY_PEER.parse().unwrap(),
        "mx.test",
        &config(TlsPolicy::None),
    )
    .await
    .unwrap();
    // The EHLO reply is in: the client says nothing more.
    let silent_since = Instant::now();
    tokio::time::sleep(timeout * 2).await;
    let (at, bytes) = tap.last_from_server();
    assert_eq!(bytes, TIMEOUT_421, "{:?}", String::from_utf8_lossy(&bytes));
    let waited = at - silent_since;
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    // The client learns it at its next command.
    match conn.noop().await {
        Ok(reply) => assert_eq!(
            reply.to_string(),
            "421 4.4.2 mx.test Timeout exceeded, closing connection"
        ),
        Err(e) => panic!("the 421 should be read before the end of the stream: {e}"),
    }
}

/// A client that stops in the middle of the message content gets the data timeout, counted
/// from its last byte (shorter than the command timeout here, so it is the one that applies).
/// A raw client: smtp-client sends a message in one go (and reads message files on blocking
/// threads, which stop tokio's paused clock from advancing), so it cannot be made to stall.
#[tokio::test(start_paused = true)]
async fn stalled_message_content_gets_the_data_timeout() {
    let mut limits = Limits::default();
    limits.data_timeout = Duration::from_secs(30);
    let timeout = limits.data_timeout;
    let srv = InMemory::new(|b| b.limits(limits));
    let mut c = srv.connect();
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    c.cmd("EHLO client.test").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: slow\r\n").await;
    tokio::time::sleep(timeout - Duration::from_secs(1)).await;
    c.send("still here\r\n").await;
    let t = Instant::now();
    let reply = c.try_reply(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(format!("{reply}\r\n").as_bytes(), TIMEOUT_421);
    let waited = t.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    c.expect_closed().await;
    assert!(srv.rec.events().contains(&"lost data timeout".to_owned()));
    assert!(srv.rec.messages().is_empty());
}

/// STARTTLS, then silence inside TLS: the command timeout applies there too. (Through the
/// tap, which sees only ciphertext, for the time the server's last record came.)
#[tokio::test(start_paused = true)]
async fn timeout_after_starttls() {
    let p = pki("duplex-timeout");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let limits = Limits::default();
    let timeout = limits.command_timeout;
    let srv = InMemory::new(move |b| b.tls(tls).limits(limits));
    let (pipe, tap) = Tap::connect(&srv);
    let client = config(TlsPolicy::RequireVerified).with_root(p.ca_der.clone());
    let mut conn =
        Connection::from_stream(pipe, MEMORY_PEER.parse().unwrap(), "localhost", &client)
            .await
            .unwrap();
    assert!(conn.is_tls());
    let silent_since = Instant::now();
    tokio::time::sleep(timeout * 2).await;
    let (at, _) = tap.last_from_server();
    let waited = at - silent_since;
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    let r = conn.noop().await;
    assert_eq!(
        r.map(|reply| reply.to_string()).map_err(|e| e.to_string()),
        Ok("421 4.4.2 mx.test Timeout exceeded, closing connection".to_owned())
    );
}

/// The pipelining check works on a stream that cannot be peeked at: a client that talks
/// before the greeting is caught by the driver's one poll of the stream (the session itself
/// was fed nothing yet).
#[tokio::test(start_paused = true)]
async fn talking_before_the_greeting_over_a_pipe_gets_554() {
    let srv = InMemory::new(|b| b);
    let mut c = srv.connect();
    // Written before the server's task first runs.
    c.send("EHLO early.test\r\n").await;
    assert_eq!(
        c.reply().await,
        "554 5.5.0 Error: SMTP protocol synchronization"
    );
    c.expect_closed().await;
    assert!(
        !srv.rec.events().iter().any(|e| e.starts_with("hello")),
        "{:?}",
        srv.rec.events()
    );
}

/// An implicit-TLS listener given to `serve_stream`: the handshake runs over the pipe before
/// the greeting, and the handler sees the TLS parameters at connect.
#[tokio::test(start_paused = true)]
async fn implicit_tls_over_a_pipe() {
    let p = pki("duplex-implicit");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let srv = InMemory::new(move |b| b.tls(tls));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let listener =
        smtp_server::Listener::named("smtps", "127.0.0.1:465".parse().unwrap()).implicit_tls();
    tokio::spawn(
        srv.server
            .serve_stream(server, &listener, MEMORY_PEER.parse().unwrap()),
    );
    let tls = server_support::tls_connector(&p.ca_der)
        .connect(server_support::server_name(), client)
        .await
        .unwrap();
    let mut c = server_support::Client::new(tls);
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    assert_eq!(srv.rec.events()[0], "connect smtps tls=TLSv1.3");
}
