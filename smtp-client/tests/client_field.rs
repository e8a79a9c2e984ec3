//! Field readiness: what a misbehaving peer can do to a delivery, seen from the caller (the
//! report) and from the peer (what it received). Raw peers on 127.0.0.1 (tokio listeners
//! following a script), the scriptable server of `common`, a loopback DNS server.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client_config, test_pki, test_pki_with, Behaviour, TestServer};
use smtp_client::testdns::TestDns;
use smtp_client::text::is_unsafe_char;
use smtp_client::tls::TlsError;
use smtp_client::{
    ClientConfig, ClientError, Connection, Deliverer, Envelope, RcptOutcome, Resolver, Timeouts,
    TlsPolicy,
};
use smtp_proto::reply::ReplyErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const MESSAGE: &[u8] = b"Subject: field\r\n\r\nbody\r\n";

/// Much longer than any bound a test waits for.
const LONG: Duration = Duration::from_secs(120);

/// A generous bound for something that should take milliseconds.
const PROMPT: Duration = Duration::from_secs(5);

fn envelope(rcpts: &[String]) -> Envelope {
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    common::envelope("<alice@client.test>", &rcpts)
}

fn rcpts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("<r{i}@remote.test>")).collect()
}

/// A deliverer sending everything to `addr` (an IP smarthost: no DNS query is made; the
/// resolver points at a loopback test server anyway).
async fn deliverer_to(addr: SocketAddr, config: ClientConfig) -> (Deliverer, TestDns) {
    let dns = TestDns::builder().start().await.unwrap();
    let resolver =
        Resolver::with_nameserver_timeout(dns.addr(), Duration::from_secs(2), 1).unwrap();
    let deliverer =
        Deliverer::new(resolver, config).with_smarthost(addr.ip().to_string(), addr.port());
    (deliverer, dns)
}

/// How a raw peer answers.
#[derive(Clone)]
struct Script {
    ehlo: &'static str,
    /// The reply to RCPT number `i` (0-based), whole, with CRLFs.
    rcpt: fn(usize) -> Vec<u8>,
    /// The reply to MAIL, whole.
    mail: Vec<u8>,
    dot: &'static str,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            ehlo: "250 raw.test\r\n",
            rcpt: |_| b"250 2.1.5 ok\r\n".to_vec(),
            mail: b"250 2.1.0 ok\r\n".to_vec(),
            dot: "250 2.0.0 queued\r\n",
        }
    }
}

/// A peer on 127.0.0.1 that answers each command line by `script` (no PIPELINING) and, to
/// QUIT, says nothing and keeps the connection open. Every command verb is sent on `seen`.
async fn raw_peer(script: Script) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut read = BufReader::new(read);
                write.write_all(b"220 raw.test ESMTP\r\n").await.unwrap();
                let mut rcpt = 0;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb =
                        String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
                    let _ = tx.send(verb.clone());
                    let answer: Vec<u8> = match verb.as_str() {
                        "EHLO" | "HELO" => script.ehlo.into(),
                        "MAIL" => script.mail.clone(),
                        "RCPT" => {
                            rcpt += 1;
                            (script.rcpt)(rcpt - 1)
                        }
                        "DATA" => {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            loop {
                                line.clear();
                                if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == b".\r\n" {
                                    break;
                                }
                            }
                            let _ = tx.send(".".into());
                            script.dot.into()
                        }
                        "QUIT" => {
                            // Never answer, never close (until the test ends).
                            std::future::pending::<()>().await;
                            return;
                        }
                        _ => b"250 ok\r\n".to_vec(),
                    };
                    if write.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Waits (boundedly) until the peer reports `verb`; the verbs seen before it.
async fn wait_for(seen: &mut mpsc::UnboundedReceiver<String>, verb: &str) -> Vec<String> {
    let mut before = Vec::new();
    tokio::time::timeout(PROMPT, async {
        while let Some(v) = seen.recv().await {
            if v == verb {
                return;
            }
            before.push(v);
        }
        panic!("peer gone before {verb}");
    })
    .await
    .unwrap_or_else(|_| panic!("{verb} not sent within {PROMPT:?}; seen {before:?}"));
    before
}

// ---- 8: the outcome is known at the 250, not after QUIT ----

#[tokio::test]
async fn report_returns_at_the_final_reply_when_quit_is_never_answered() {
    let (addr, mut seen) = raw_peer(Script::default()).await;
    // QUIT (a command) may take LONG; the report must not wait for it.
    let config =
        client_config(TlsPolicy::OpportunisticUnverified).with_timeouts(Timeouts::all(LONG));
    let (deliverer, _dns) = deliverer_to(addr, config).await;
    let report = tokio::time::timeout(
        PROMPT,
        deliverer.deliver("remote.test", &envelope(&rcpts(2)), MESSAGE),
    )
    .await
    .expect("the report waited for the answer to QUIT");
    assert!(report.all_delivered(), "{report:?}");
    // The session is still ended politely, from the background.
    let before = wait_for(&mut seen, "QUIT").await;
    assert_eq!(before, ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "."]);
}

#[tokio::test]
async fn report_returns_at_once_when_every_recipient_is_refused_and_quit_stalls() {
    let script = Script {
        rcpt: |_| b"550 5.1.1 no such user\r\n".to_vec(),
        ..Script::default()
    };
    let (addr, mut seen) = raw_peer(script).await;
    let config =
        client_config(TlsPolicy::OpportunisticUnverified).with_timeouts(Timeouts::all(LONG));
    let (deliverer, _dns) = deliverer_to(addr, config).await;
    let report = tokio::time::timeout(
        PROMPT,
        deliverer.deliver("remote.test", &envelope(&rcpts(1)), MESSAGE),
    )
    .await
    .expect("the report waited for the answer to QUIT");
    assert!(
        matches!(&report.rcpts[0].1, RcptOutcome::Permanent(f) if f.enhanced.to_string() == "5.1.1")
    );
    let before = wait_for(&mut seen, "QUIT").await;
    assert_eq!(before, ["EHLO", "MAIL", "RCPT"]);

    // And a sender refused with 5yz: the same.
    let script = Script {
        mail: b"553 5.7.1 sender refused\r\n".to_vec(),
        ..Script::default()
    };
    let (addr, mut seen) = raw_peer(script).await;
    let config =
        client_config(TlsPolicy::OpportunisticUnverified).with_timeouts(Timeouts::all(LONG));
    let (deliverer, _dns) = deliverer_to(addr, config).await;
    let report = tokio::time::timeout(
        PROMPT,
        deliverer.deliver("remote.test", &envelope(&rcpts(1)), MESSAGE),
    )
    .await
    .expect("the report waited for the answer to QUIT");
    assert!(matches!(&report.rcpts[0].1, RcptOutcome::Permanent(_)));
    wait_for(&mut seen, "QUIT").await;
}

#[tokio::test]
async fn a_bad_greeting_returns_at_once_and_quit_goes_in_the_background() {
    // A 554 greeting is answered with QUIT (RFC 5321 §3.1), in the background: the peer that
    // never answers it costs nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        tcp.write_all(b"554 5.7.1 go away\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf).await.unwrap();
        tx.send(buf[..n].to_vec()).unwrap();
        std::future::pending::<()>().await;
    });
    let config =
        client_config(TlsPolicy::OpportunisticUnverified).with_timeouts(Timeouts::all(LONG));
    let err = tokio::time::timeout(PROMPT, Connection::connect(addr, "raw.test", &config))
        .await
        .expect("connect waited for the answer to QUIT")
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Greeting(ref r) if r.code() == 554),
        "{err}"
    );
    let quit = tokio::time::timeout(PROMPT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quit, b"QUIT\r\n");
}

// ---- 5: what a peer's long or hostile reply can make the client keep ----

#[tokio::test]
async fn long_replies_are_kept_bounded_and_escaped_per_recipient() {
    // Every RCPT gets a 900-line 452 whose first line carries the recipient's number and
    // control characters (ESC, NUL, a bidi override, a C1 control, a line separator).
    let script = Script {
        rcpt: |i| {
            let mut reply =
                format!("452-4.5.3 r{i} full\x1b[31m\0red\u{202e}\u{85}\u{2028}\r\n").into_bytes();
            for j in 1..899 {
                reply.extend_from_slice(format!("452-4.5.3 padding line {j}\r\n").as_bytes());
            }
            reply.extend_from_slice(b"452 4.5.3 end\r\n");
            reply
        },
        ..Script::default()
    };
    let (addr, mut seen) = raw_peer(script).await;
    let config = client_config(TlsPolicy::OpportunisticUnverified);
    let (deliverer, _dns) = deliverer_to(addr, config).await;
    let n = 30;
    let report = deliverer
        .deliver("remote.test", &envelope(&rcpts(n)), MESSAGE)
        .await;
    assert_eq!(report.rcpts.len(), n);
    for (i, (_, outcome)) in report.rcpts.iter().enumerate() {
        let RcptOutcome::Transient(f) = outcome else {
            panic!("{outcome:?}");
        };
        let reply = f.reply.as_ref().unwrap();
        assert_eq!(reply.code(), 452);
        // Kept: at most 10 lines and 2 KiB of text, the first line as received (raw).
        assert!(reply.line_count() <= 10, "{}", reply.line_count());
        let text: usize = reply.lines().map(str::len).sum();
        assert!(
            text <= 2048 + smtp_client::codec::TRUNCATED_MARK.len(),
            "{text}"
        );
        assert_eq!(
            reply.lines().next().unwrap(),
            format!("r{i} full\x1b[31m\0red\u{202e}\u{85}\u{2028}")
        );
        // The text for logs and bounces: one line, nothing raw, the recipient's own reply.
        assert!(!f.text.chars().any(is_unsafe_char), "{:?}", f.text);
        assert!(
            f.text.starts_with(&format!(
                "452 4.5.3 r{i} full\\u{{1b}}[31m\\u{{0}}red\\u{{202e}}\\u{{85}}\\u{{2028}} padding line 1"
            )),
            "{}",
            f.text
        );
        assert!(f.text.len() < 3000, "{}", f.text.len());
    }
    // The whole of every reply was read: the session stayed in step to the end.
    let before = wait_for(&mut seen, "QUIT").await;
    assert_eq!(before.iter().filter(|v| *v == "RCPT").count(), n);
}

#[tokio::test]
async fn endless_continuation_lines_end_in_an_error() {
    // MAIL is answered with continuation lines that never end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (read, mut write) = tcp.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"220 raw.test\r\n").await.unwrap();
        let mut line = Vec::new();
        loop {
            line.clear();
            if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with(b"MAIL") {
                let flood = b"250-and more and more and more and more and more\r\n".repeat(100);
                // Until the client hangs up.
                while write.write_all(&flood).await.is_ok() {}
                return;
            }
            write.write_all(b"250 raw.test\r\n").await.unwrap();
        }
    });
    let config = client_config(TlsPolicy::None).with_timeouts(Timeouts::all(LONG));
    let mut conn = Connection::connect(addr, "raw.test", &config)
        .await
        .unwrap();
    let err = tokio::time::timeout(PROMPT, conn.send(&envelope(&rcpts(1)), MESSAGE))
        .await
        .expect("an endless reply was read without end")
        .unwrap_err();
    match err {
        ClientError::MalformedReply(ref e) => assert_eq!(e.kind(), ReplyErrorKind::ReplyTooLong),
        ref other => panic!("{other}"),
    }
    assert!(!err.to_string().contains('\n'));
}

// ---- 12: opportunistic TLS that fails is retried in clear text ----

/// A server on 127.0.0.1 that offers STARTTLS and breaks it as `behaviour` says.
async fn broken_tls_servers() -> Vec<(&'static str, TestServer)> {
    let pki = test_pki(&["mx.test"]);
    let mut servers = Vec::new();
    for (name, break_tls) in [
        (
            "garbage after 220",
            Some(b"this is not a TLS record\r\n".to_vec()),
        ),
        ("closed after 220", Some(Vec::new())),
    ] {
        let behaviour = Behaviour {
            tls: Some(pki.server.clone()),
            break_tls,
            ..Behaviour::default()
        };
        servers.push((name, TestServer::local(behaviour).await));
    }
    // A real TLS failure: the server demands a client certificate the client does not have
    // (with TLS 1.3 the alert arrives after the client's side of the handshake is done).
    let demanding = Behaviour {
        tls: Some(test_pki_with(&["mx.test"], true).server),
        ..Behaviour::default()
    };
    servers.push((
        "client certificate required",
        TestServer::local(demanding).await,
    ));
    servers
}

#[tokio::test]
async fn opportunistic_tls_failure_is_retried_in_clear_text() {
    for (name, server) in broken_tls_servers().await {
        let (deliverer, _dns) = deliverer_to(
            server.addr,
            client_config(TlsPolicy::OpportunisticUnverified),
        )
        .await;
        let report = deliverer
            .deliver("remote.test", &envelope(&rcpts(1)), MESSAGE)
            .await;
        assert!(report.all_delivered(), "{name}: {report:?}");
        assert!(!report.tls, "{name}");
        let why = report
            .tls_fallback
            .as_ref()
            .unwrap_or_else(|| panic!("{name}"));
        let expected = match name {
            // The peer closes right after its garbage: which the client sees first varies.
            "garbage after 220" => matches!(
                why,
                TlsError::HandshakeFailed { .. } | TlsError::PeerClosed { .. }
            ),
            "closed after 220" => matches!(why, TlsError::PeerClosed { .. }),
            // TLS 1.3: the alert comes with the reply to the EHLO inside TLS.
            _ => {
                matches!(why, TlsError::HandshakeFailed { detail } if detail.contains("Certificate"))
            }
        };
        assert!(expected, "{name}: {why:?}");
        // Two attempts at the same address: TLS failed, then clear text carried it.
        assert_eq!(report.attempts.len(), 2, "{name}: {:?}", report.attempts);
        assert!(report.attempts.iter().all(|a| a.addr == server.addr));
        let first = report.attempts[0].error.as_deref().unwrap();
        assert!(
            first.contains("TLS") && first.contains("retrying without TLS"),
            "{name}: {first}"
        );
        assert!(report.attempts[1].error.is_none());
        // What the peer received: the message, in clear text, on the second connection.
        let messages = server.messages();
        assert_eq!(messages.len(), 1, "{name}");
        assert!(!messages[0].tls, "{name}");
        assert_eq!(messages[0].body, MESSAGE, "{name}");
        assert_eq!(server.connections(), 2, "{name}");
    }
}

#[tokio::test]
async fn required_tls_failure_is_never_retried_in_clear_text() {
    for (name, server) in broken_tls_servers().await {
        let pki_root = test_pki(&["mx.test"]).ca;
        let config = client_config(TlsPolicy::RequireVerified).with_root(pki_root);
        let (deliverer, _dns) = deliverer_to(server.addr, config).await;
        let report = deliverer
            .deliver("remote.test", &envelope(&rcpts(1)), MESSAGE)
            .await;
        assert!(
            matches!(&report.rcpts[0].1, RcptOutcome::Transient(_)),
            "{name}: {report:?}"
        );
        assert!(report.tls_fallback.is_none());
        assert_eq!(report.attempts.len(), 1, "{name}: {:?}", report.attempts);
        assert!(server.messages().is_empty(), "{name}");
        assert_eq!(server.connections(), 1, "{name}");
        // Nothing of the transaction went out in clear text.
        let clear: Vec<u8> = server.reads().concat();
        assert!(!clear.windows(4).any(|w| w == b"MAIL"), "{name}");
    }
}

#[tokio::test]
async fn a_working_opportunistic_tls_session_does_not_fall_back() {
    let pki = test_pki(&["mx.test"]);
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server.clone()),
        ..Behaviour::default()
    })
    .await;
    let (deliverer, _dns) = deliverer_to(
        server.addr,
        client_config(TlsPolicy::OpportunisticUnverified),
    )
    .await;
    let report = deliverer
        .deliver("remote.test", &envelope(&rcpts(1)), MESSAGE)
        .await;
    assert!(report.all_delivered());
    assert!(report.tls);
    assert!(report.tls_fallback.is_none());
    assert_eq!(report.attempts.len(), 1);
    assert!(server.messages()[0].tls);
}
