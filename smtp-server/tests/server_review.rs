//! Hostile-client behaviour of the connection driver over real TCP on loopback.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use server_support::{Client, WAIT};
use smtp_proto::Reply;
use smtp_server::{
    BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, Server, SessionHandler,
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
    async fn connect(&self, _: &ConnectionInfo) -> Result<GatedSession, Reply> {
        Ok(GatedSession {
            gate: Arc::clone(&self.gate),
        })
    }
}

impl SessionHandler for GatedSession {
    async fn hello(&mut self, domain: &str, _extended: bool) -> Result<(), Reply> {
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
    let bound = Server::builder(Gated {
        gate: Arc::clone(&gate),
    })
    .hostname("mx.test")
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
