//! `Deliverer::with_connection_cache`: sessions reused per next hop, a dead cached session
//! retried on a fresh one without failing the message, idle sessions ended.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client_config, Behaviour, TestServer};
use smtp_client::{Deliverer, Envelope, RcptOutcome, Resolver, TlsPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn envelope() -> Envelope {
    common::envelope_to("<bob@example.test>")
}

/// A deliverer to the smarthost `addr`; no DNS is asked (an address literal).
fn deliverer(addr: std::net::SocketAddr, idle: Duration) -> Deliverer {
    // A resolver that is never used (the smarthost is an IP address): a closed port.
    let resolver = Resolver::with_nameserver_timeout(
        "127.0.0.1:1".parse().unwrap(),
        Duration::from_millis(200),
        0,
    )
    .unwrap();
    Deliverer::new(resolver, client_config(TlsPolicy::None))
        .with_smarthost(addr.ip().to_string(), addr.port())
        .with_connection_cache(idle)
}

fn delivered(report: &smtp_client::DeliveryReport) -> bool {
    report
        .rcpts
        .iter()
        .all(|(_, o)| matches!(o, RcptOutcome::Delivered(_)))
}

#[tokio::test]
async fn one_session_carries_many_messages() {
    let server = TestServer::local(Behaviour::default()).await;
    let d = deliverer(server.addr, Duration::from_secs(5));
    for i in 0..5 {
        let m = format!("Subject: {i}\r\n\r\nbody\r\n");
        let r = d.deliver("example.test", &envelope(), m.as_bytes()).await;
        assert!(delivered(&r), "{r:?}");
    }
    assert_eq!(server.messages().len(), 5);
    assert_eq!(server.connections(), 1);
    // RSET opens each later pipelined group: one write, no round trip of its own.
    let grouped = server
        .reads()
        .iter()
        .filter(|r| r.starts_with(b"RSET\r\nMAIL FROM:<alice@client.test>"))
        .count();
    assert_eq!(grouped, 4, "{:?}", server.reads());
    // Clones share the cache.
    let r = d
        .clone()
        .deliver("example.test", &envelope(), b"Subject: 5\r\n\r\nx\r\n")
        .await;
    assert!(delivered(&r));
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn idle_sessions_are_ended_after_the_idle_time() {
    let server = TestServer::local(Behaviour::default()).await;
    let d = deliverer(server.addr, Duration::from_millis(200));
    let r = d
        .deliver("example.test", &envelope(), b"Subject: a\r\n\r\nx\r\n")
        .await;
    assert!(delivered(&r));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = d
        .deliver("example.test", &envelope(), b"Subject: b\r\n\r\nx\r\n")
        .await;
    assert!(delivered(&r));
    assert_eq!(server.connections(), 2);
}

/// What a scripted next hop does at the end marker of a message.
#[derive(Clone, Copy)]
enum AtDot {
    /// Answers 250 and goes on.
    Take,
    /// Answers 250 and closes the session, as a server that times idle sessions out early.
    TakeAndClose,
    /// Closes without a verdict: the outcome is unknown to the client.
    Vanish,
}

/// A next hop on loopback: 250 to everything, 354 to DATA, and at the n-th end marker (0
/// for the first, counted over all sessions) what `at_dot(n)` says. Returns its address and
/// its counts of connections and of end markers received.
async fn scripted_hop(
    at_dot: fn(usize) -> AtDot,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, dots) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, d) = (conns.clone(), dots.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 hop.test ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                let mut in_data = false;
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            let action = at_dot(d.fetch_add(1, Ordering::SeqCst));
                            if matches!(action, AtDot::Vanish) {
                                return;
                            }
                            w.write_all(b"250 2.0.0 taken\r\n").await.unwrap();
                            if matches!(action, AtDot::TakeAndClose) {
                                return;
                            }
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        w.write_all(b"354 go\r\n").await.unwrap();
                    } else {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, conns, dots)
}

#[tokio::test]
async fn a_dead_cached_session_does_not_fail_the_message() {
    let (addr, conns, dots) = scripted_hop(|_| AtDot::TakeAndClose).await;
    let d = deliverer(addr, Duration::from_secs(5));
    for i in 0..3 {
        let m = format!("Subject: {i}\r\n\r\nbody\r\n");
        let r = d.deliver("example.test", &envelope(), m.as_bytes()).await;
        assert!(delivered(&r), "message {i}: {r:?}");
        assert_eq!(r.attempts.len(), 1, "{r:?}");
        assert!(r.attempts[0].error.is_none(), "{r:?}");
    }
    assert_eq!(dots.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reused_session_lost_after_the_end_of_data_is_not_sent_again() {
    // The first session takes one message, then reads the second one to its end marker and
    // closes without a verdict: the server may have it. The deliverer must not send it again
    // on a fresh connection (a duplicate); the message is deferred.
    let (addr, conns, dots) =
        scripted_hop(|n| if n == 0 { AtDot::Take } else { AtDot::Vanish }).await;
    let d = deliverer(addr, Duration::from_secs(5));
    let r = d
        .deliver("example.test", &envelope(), b"Subject: 1\r\n\r\nx\r\n")
        .await;
    assert!(delivered(&r), "{r:?}");
    let r = d
        .deliver("example.test", &envelope(), b"Subject: 2\r\n\r\nx\r\n")
        .await;
    assert!(
        matches!(r.rcpts[..], [(_, RcptOutcome::Transient(_))]),
        "{r:?}"
    );
    assert_eq!(r.attempts.len(), 1, "{r:?}");
    let error = r.attempts[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("end of data"), "{error}");
    // Give a wrongful second try the time to happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dots.load(Ordering::SeqCst), 2);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}
