//! Hostile-client behaviour of the connection driver over real TCP on loopback.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use server_support::{pki, server_name, start, start_plain, tls_connector, Client, WAIT};
use smtp_proto::session::SessionConfig;
use smtp_proto::Refusal;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, Server, SessionHandler, TlsConfig,
};
use tokio::sync::Semaphore;

/// A handler whose `hello("stop")` waits until the test adds a permit to `gate`.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
}

struct GatedSession {
    gate: Arc<Semaphore>,
}

impl Handler for Gated {
    type Session = GatedSession;
    async fn connect(&self, _: &ConnectionInfo) -> Result<GatedSession, Refusal> {
        Ok(GatedSession {
            gate: Arc::clone(&self.gate),
        })
    }
}

impl SessionHandler for GatedSession {
    async fn hello(&mut self, domain: &str, _extended: bool) -> Result<(), Refusal> {
        if domain == "stop" {
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(())
    }

    async fn data(&mut self, _: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        while let Ok(Some(_)) = body.chunk().await {}
        DataOutcome::accepted("Stored")
    }
}

/// A client pipelining cheap commands with long replies (EHLO: 8 octets in, ~150 out) must
/// not make the server queue all their replies before writing any: replies are written once
/// a bounded amount is queued, so a client that does not read holds little server memory.
#[tokio::test]
async fn pipelined_flood_replies_are_written_before_the_whole_batch_is_processed() {
    let gate = Arc::new(Semaphore::new(0));
    // The client pipelines where RFC 2920 forbids it (behind EHLO), so the policy that refuses
    // that is off: the output bound matters to any client that pipelines and does not read.
    let mut config = SessionConfig::new("mx.test");
    config.forbid_unauth_pipelining = false;
    let bound = Server::builder(Gated {
        gate: Arc::clone(&gate),
    })
    .session_config(config)
    .listen("127.0.0.1:0".parse().unwrap())
    .bind()
    .await
    .unwrap();
    let addr = bound.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async {
        let _ = rx.await;
    }));

    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    // 1000 EHLOs (8 KB in one write, ~150 KB of replies), then one the handler holds.
    let mut batch = "EHLO a\r\n".repeat(1000);
    batch.push_str("EHLO stop\r\n");
    c.send(&batch).await;
    // While the server waits in the handler, replies to the earlier EHLOs must have come.
    let first = c.try_reply(Duration::from_secs(3)).await;
    assert!(
        first
            .as_deref()
            .is_some_and(|r| r.starts_with("250-mx.test greets a\n")),
        "no reply while the handler waits: {first:?}"
    );
    gate.add_permits(1);
    for _ in 1..1000 {
        assert!(c.reply().await.starts_with("250-mx.test greets a\n"));
    }
    assert!(c.reply().await.starts_with("250-mx.test greets stop\n"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    c.expect_closed().await;
    tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// EHLO and RSET between BDAT chunks abort the message: the handler learns it (reset), the
/// EHLO is answered once and by the handler's decision, and the next transaction works.
#[tokio::test]
async fn ehlo_and_rset_between_bdat_chunks_abort_the_message() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    // EHLO ends a pipelining group: its reply is awaited.
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nabc")
        .await;
    for _ in 0..2 {
        c.reply().await;
    }
    assert_eq!(c.reply().await, "250 2.0.0 3 octets received");
    let ehlo = c.cmd("EHLO again").await;
    assert!(ehlo.starts_with("250-mx.test greets again\n"), "{ehlo}");
    c.send("BDAT 2 LAST\r\nxy").await;
    assert_eq!(c.reply().await, "503 5.5.1 Need MAIL command");
    c.send("MAIL FROM:<c@example.net>\r\nRCPT TO:<d@example.org>\r\nBDAT 2\r\nxyRSET\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "250 2.0.0 2 octets received");
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    c.send("MAIL FROM:<e@example.net>\r\nRCPT TO:<f@example.org>\r\nBDAT 4 LAST\r\nkept")
        .await;
    c.reply().await;
    c.reply().await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    c.expect_closed().await;
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, b"kept");
    assert_eq!(msgs[0].envelope.helo, "again");
    let ev = srv.rec.events();
    let hellos = ev.iter().filter(|e| e.starts_with("hello")).count();
    assert_eq!(hellos, 2, "{ev:?}");
    let resets = ev.iter().filter(|e| *e == "reset").count();
    assert_eq!(resets, 2, "{ev:?}");
}

/// STARTTLS between BDAT chunks aborts the message, and what the client pipelined behind it
/// in the clear is not acted on after the handshake.
#[tokio::test]
async fn starttls_between_bdat_chunks_aborts_and_drops_pipelined_plaintext() {
    let p = pki("bdat-starttls");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    // EHLO ends a pipelining group: its reply is awaited.
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nabc")
        .await;
    for _ in 0..2 {
        c.reply().await;
    }
    assert_eq!(c.reply().await, "250 2.0.0 3 octets received");
    c.send("STARTTLS\r\nEHLO evil\r\nMAIL FROM:<evil@example.net>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), c.into_inner())
        .await
        .unwrap();
    let mut c = Client::new(tls);
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "503 5.5.1 Send EHLO or HELO first"
    );
    // (A chunk may follow BDAT only once this TLS session's EHLO allowed pipelining.)
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    c.send("BDAT 2 LAST\r\nxy").await;
    assert_eq!(c.reply().await, "503 5.5.1 Need MAIL command");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    let ev = srv.rec.events();
    assert!(!ev.iter().any(|e| e.contains("evil")), "{ev:?}");
    assert!(ev.contains(&"reset".to_owned()), "{ev:?}");
    assert!(ev.contains(&"tls TLSv1.3".to_owned()), "{ev:?}");
    assert!(srv.rec.messages().is_empty());
}
