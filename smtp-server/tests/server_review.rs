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

/// What the builder writes into replies is checked when the server is built: a host name
/// with a line break (which would add `250-STARTTLS` to the EHLO reply), an empty one, a
/// capability that is not one EHLO line, one the session offers from its own settings, an
/// extension verb that is not a word: each an `Error::Config`, nothing served. A valid
/// extension is offered on its own line, once.
#[tokio::test]
async fn builder_refuses_what_would_change_the_reply_lines() {
    use smtp_proto::ehlo::Capability;
    use smtp_proto::session::ConfigError;
    let gated = || Gated {
        gate: Arc::new(Semaphore::new(0)),
    };
    let refused: Vec<(smtp_server::ServerBuilder<Gated>, ConfigError)> = vec![
        (
            Server::builder(gated()).hostname("mx.test\r\n250-STARTTLS"),
            ConfigError::Hostname("mx.test\r\n250-STARTTLS".into()),
        ),
        (
            Server::builder(gated()).hostname(""),
            ConfigError::Hostname(String::new()),
        ),
        (
            Server::builder(gated()).hostname("mx test"),
            ConfigError::Hostname("mx test".into()),
        ),
        (
            Server::builder(gated()).extension("XFOO", Some(Capability::StartTls)),
            ConfigError::ReservedCapability("STARTTLS".into()),
        ),
        (
            Server::builder(gated())
                .extension("XFOO", Some(Capability::Auth(vec!["PLAIN".into()]))),
            ConfigError::ReservedCapability("AUTH".into()),
        ),
        (
            Server::builder(gated()).extension(
                "XFOO",
                Some(Capability::Other("size".into(), vec!["1".into()])),
            ),
            ConfigError::ReservedCapability("SIZE".into()),
        ),
        (
            Server::builder(gated()).extension(
                "XFOO",
                Some(Capability::Other("XFOO\r\n250-STARTTLS".into(), vec![])),
            ),
            ConfigError::Capability("XFOO\r\n250-STARTTLS".into()),
        ),
        (
            Server::builder(gated()).extension(
                "XFOO",
                Some(Capability::Other("XFOO".into(), vec!["a b".into()])),
            ),
            ConfigError::Capability("XFOO a b".into()),
        ),
        (
            Server::builder(gated()).extension("X FOO", None),
            ConfigError::Verb("X FOO".into()),
        ),
    ];
    for (builder, want) in refused {
        match builder.build() {
            Err(smtp_server::Error::Config(got)) => assert_eq!(got, want),
            Err(e) => panic!("{want:?}: {e}"),
            Ok(_) => panic!("{want:?}: built"),
        }
    }
    // The same shapes, valid: served, and the EHLO reply has exactly the lines meant.
    let (greeting, ehlo) =
        greeting_and_ehlo(Server::builder(gated()).hostname("mx.test").extension(
            "XFOO",
            Some(Capability::Other("XFOO".into(), vec!["a=b".into()])),
        ))
        .await;
    assert_eq!(greeting, "220 mx.test ESMTP ready");
    assert_eq!(
        ehlo.lines()
            .filter(|l| *l == "250-XFOO a=b" || *l == "250 XFOO a=b")
            .count(),
        1,
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
}

/// Serves `b` on a loopback port, and returns the greeting and the reply to `EHLO a` a
/// client gets there; the server is shut down again.
async fn greeting_and_ehlo(b: smtp_server::ServerBuilder<Gated>) -> (String, String) {
    let bound = b
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
    let greeting = c.reply().await;
    let ehlo = c.cmd("EHLO a").await;
    tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (greeting, ehlo)
}

/// `hostname`, `auth` and `extension` hold whichever way round `session_config` is called.
#[tokio::test]
async fn builder_calls_hold_in_any_order() {
    use smtp_proto::ehlo::Capability;
    let gated = || Gated {
        gate: Arc::new(Semaphore::new(0)),
    };
    let mut config = SessionConfig::new("from-config.test");
    config.auth_requires_tls = false;
    // Given both ways, XFOO is still offered once (counted below).
    config.extension_verbs.push("xfoo".into());
    config
        .extra_capabilities
        .push(Capability::Other("XFOO".into(), vec![]));
    let cap = || Some(Capability::Other("XFOO".into(), vec![]));
    let before = Server::builder(gated())
        .hostname("mx.test")
        .auth([smtp_server::Mechanism::Plain])
        .extension("XFOO", cap())
        .session_config(config.clone());
    let after = Server::builder(gated())
        .session_config(config.clone())
        .hostname("mx.test")
        .auth([smtp_server::Mechanism::Plain])
        .extension("XFOO", cap());
    for b in [before, after] {
        let (greeting, ehlo) = greeting_and_ehlo(b).await;
        assert_eq!(greeting, "220 mx.test ESMTP ready");
        assert!(ehlo.starts_with("250-mx.test greets a\n"), "{ehlo}");
        assert!(
            ehlo.contains("250-AUTH PLAIN\n") || ehlo.ends_with("250 AUTH PLAIN"),
            "{ehlo}"
        );
        assert!(
            ehlo.contains("250-XFOO\n") || ehlo.ends_with("250 XFOO"),
            "{ehlo}"
        );
        assert_eq!(ehlo.matches("XFOO").count(), 1, "{ehlo}");
    }
    // Without the builder's calls the configuration's own values are used.
    let (greeting, _) = greeting_and_ehlo(Server::builder(gated()).session_config(config)).await;
    assert_eq!(greeting, "220 from-config.test ESMTP ready");
}
