//! The server over real TCP on loopback: transactions, pipelining, error replies, limits,
//! shutdown, binding; and its timeouts over in-memory pipes on tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::net::SocketAddr;
use std::time::Duration;

use server_support::{has_ipv6, start, start_plain, Client, InMemory, WAIT};
use smtp_server::{Error, Limits, Server};

const EHLO_PLAIN: &str = "250-mx.test greets client.example\n250-PIPELINING\n250-SIZE 26214400\n\
250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SMTPUTF8\n250 CHUNKING";

async fn transaction(addr: SocketAddr) {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    assert_eq!(c.cmd("EHLO client.example").await, EHLO_PLAIN);
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.net>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    c.expect_closed().await;
}

#[tokio::test]
async fn full_transaction_over_ipv4_and_ipv6() {
    let mut listens = vec!["127.0.0.1:0".parse::<SocketAddr>().unwrap()];
    if has_ipv6() {
        listens.push("[::1]:0".parse().unwrap());
    } else {
        eprintln!("note: no IPv6 loopback here; IPv6 part skipped");
    }
    let l2 = listens.clone();
    let srv = start(move |mut b| {
        for a in l2 {
            b = b.listen(a);
        }
        b
    })
    .await;
    for addr in &srv.addrs {
        transaction(*addr).await;
    }
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), srv.addrs.len());
    for (m, addr) in msgs.iter().zip(&srv.addrs) {
        assert_eq!(m.body, b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
        assert_eq!(m.envelope.helo, "client.example");
        assert_eq!(m.envelope.from.to_string(), "<alice@example.net>");
        assert_eq!(m.envelope.rcpts.len(), 1);
        assert_eq!(m.envelope.rcpts[0].0.to_string(), "<bob@example.org>");
        assert_eq!(m.envelope.local, *addr);
        assert_eq!(m.envelope.peer.ip(), addr.ip());
        assert!(m.envelope.tls.is_none());
    }
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    // EHLO ends a group (RFC 2920): the client waits for its reply, then pipelines.
    assert_eq!(c.cmd("EHLO client.example").await, EHLO_PLAIN);
    c.send(
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<one@example.org>\r\n\
         RCPT TO:<bad@example.org>\r\nRCPT TO:<two@example.org>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "550 5.1.1 No such user");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    // The message, the next transaction and QUIT in one write.
    c.send("first\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("second\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.reply().await, "221 2.0.0 mx.test closing connection");
    c.expect_closed().await;
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    let rcpts: Vec<String> = msgs[0]
        .envelope
        .rcpts
        .iter()
        .map(|r| r.0.to_string())
        .collect();
    assert_eq!(rcpts, ["<one@example.org>", "<two@example.org>"]);
    assert_eq!(msgs[1].envelope.from.to_string(), "<>");
    assert_eq!(msgs[1].envelope.rcpts[0].0.to_string(), "<Postmaster>");
    assert_eq!(msgs[1].body, b"second\r\n");
}

#[tokio::test]
async fn error_replies() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    // (command, expected reply code and enhanced code)
    let table = [
        ("MAIL FROM:<a@example.net>", "503 5.5.1"),
        ("EHLO client.example", "250-mx.test"),
        ("FROB", "500 5.5.1"),
        ("EXPN staff", "502 5.5.1"),
        ("RCPT TO:<b@example.org>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("MAIL FROM:<a@example.net> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<blocked@example.net>", "550 5.7.1"),
        ("MAIL FROM:<a@example.net>", "250 2.1.0"),
        ("MAIL FROM:<a@example.net>", "503 5.5.1"),
        ("RCPT TO:<bad@example.org>", "550 5.1.1"),
        ("DATA", "554 5.5.1"),
        ("RSET", "250 2.0.0"),
        ("NOOP", "250 2.0.0"),
        ("VRFY bob", "252 2.5.0"),
        ("HELP", "214 2.0.0"),
        ("STARTTLS", "502 5.5.1"),
    ];
    for (cmd, want) in table {
        let got = c.cmd(cmd).await;
        assert!(got.starts_with(want), "{cmd}: got {got:?}, want {want}");
    }
    // Past the default 2048 (Postfix's line_length_limit).
    let long = format!("NOOP {}", "x".repeat(2100));
    assert!(c.cmd(&long).await.starts_with("500 5.5."));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // The refused MAIL and the RSET of an open transaction reached the handler.
    let ev = srv.rec.events();
    assert!(ev.contains(&"mail <blocked@example.net>".to_owned()));
    assert!(ev.contains(&"reset".to_owned()), "{ev:?}");
}

#[tokio::test]
async fn refused_connection_gets_the_handlers_reply() {
    let srv = start(|b| b.listen_named("refuse", "127.0.0.1:0".parse().unwrap())).await;
    let mut c = Client::connect(srv.addr()).await;
    assert_eq!(c.reply().await, "554 5.7.1 No SMTP service here");
    c.expect_closed().await;
    assert_eq!(srv.rec.events(), ["connect refuse tls=no"]);
}

#[tokio::test]
async fn error_budget_disconnects_with_421() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_errors = 3;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    // One at a time: before EHLO nothing may be pipelined.
    assert!(c.cmd("FOO").await.starts_with("500 5.5.1"));
    assert!(c.cmd("BAR").await.starts_with("500 5.5.1"));
    c.send("BAZ\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.1"));
    assert!(c.reply().await.starts_with("421 4.7.0 mx.test"));
    c.expect_closed().await;
}

#[tokio::test]
async fn message_size_limit() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_message_size = Some(100);
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    assert!(c.cmd("EHLO c").await.contains("250-SIZE 100\n"));
    // Declared too big: refused at MAIL.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net> SIZE=101").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // Undeclared and too big: refused after the end marker; the handler learns it.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.org>").await,
        "250 2.1.5 Recipient OK"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    for _ in 0..10 {
        c.send("0123456789012345678901234567890123456789\r\n").await;
    }
    c.send(".\r\n").await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 message size exceeds the limit of 100 octets"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(srv.rec.messages().is_empty());
    let ev = srv.rec.events();
    assert!(
        ev.iter().any(|e| e.starts_with("lost message refused")),
        "{ev:?}"
    );
    assert!(ev.contains(&"reset".to_owned()));
}

#[tokio::test]
async fn recipient_limit() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_recipients = 2;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<1@example.org>\r\nRCPT TO:<2@example.org>\r\nRCPT TO:<3@example.org>\r\n").await;
    c.reply().await;
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "452 4.5.3 Too many recipients");
}

#[tokio::test]
async fn connection_limits_overall_and_per_ip() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_connections_per_ip = Some(2);
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut a = Client::connect(srv.addr()).await;
    assert!(a.reply().await.starts_with("220"));
    let mut b = Client::connect(srv.addr()).await;
    assert!(b.reply().await.starts_with("220"));
    let mut c = Client::connect(srv.addr()).await;
    assert_eq!(
        c.reply().await,
        "421 4.7.0 mx.test Too many connections from your address, try again later"
    );
    c.expect_closed().await;
    // After one leaves, a new one is welcome.
    assert!(a.cmd("QUIT").await.starts_with("221"));
    a.expect_closed().await;
    let mut d = Client::connect(srv.addr()).await;
    assert!(d.reply().await.starts_with("220"));
    drop((b, d));

    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_connections = Some(1);
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut a = Client::connect(srv.addr()).await;
    assert!(a.reply().await.starts_with("220"));
    let mut b = Client::connect(srv.addr()).await;
    assert_eq!(
        b.reply().await,
        "421 4.7.0 mx.test Too many connections, try again later"
    );
    b.expect_closed().await;
    // The refused connection never reached the handler.
    assert_eq!(srv.rec.events().len(), 1);
}

#[tokio::test]
async fn loopback_clients_may_be_exempt_from_the_per_ip_limit() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_connections_per_ip = Some(1);
        l.max_connections = Some(3);
        l.per_ip_exempt_loopback = true;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(srv.addr()).await;
        assert!(c.reply().await.starts_with("220"));
        clients.push(c);
    }
    // The overall limit still applies.
    let mut d = Client::connect(srv.addr()).await;
    assert_eq!(
        d.reply().await,
        "421 4.7.0 mx.test Too many connections, try again later"
    );
}

const TIMEOUT_421: &str = "421 4.4.2 mx.test Timeout exceeded, closing connection";

/// Longer than any timeout here: a read that must see the server's own timeout.
const PATIENT: Duration = Duration::from_secs(3600);

/// The default timeouts (5 minutes for a command, 3 inside a message) on tokio's paused
/// clock: each elapses in no wall-clock time, and to the millisecond.
#[tokio::test(start_paused = true)]
async fn command_and_data_timeouts() {
    let limits = Limits::default();
    let (command, data) = (limits.command_timeout, limits.data_timeout);
    assert_eq!(
        (command, data),
        (Duration::from_secs(300), Duration::from_secs(180))
    );
    let srv = InMemory::new(|b| b.limits(limits));
    let mut c = srv.connect();
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    let t = tokio::time::Instant::now();
    assert_eq!(c.try_reply(PATIENT).await.unwrap(), TIMEOUT_421);
    let waited = t.elapsed();
    assert!(
        waited >= command && waited < command + Duration::from_secs(1),
        "{waited:?}"
    );
    c.expect_closed().await;

    // Each command restarts the clock.
    let mut c = srv.connect();
    c.reply().await;
    tokio::time::sleep(command - Duration::from_secs(1)).await;
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    tokio::time::sleep(command - Duration::from_secs(1)).await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    let t = tokio::time::Instant::now();
    assert_eq!(c.try_reply(PATIENT).await.unwrap(), TIMEOUT_421);
    assert!(t.elapsed() >= command && t.elapsed() < command + Duration::from_secs(1));

    // Inside DATA the data timeout applies (shorter than the command timeout by default),
    // counted from the last piece of content.
    let mut c = srv.connect();
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    for _ in 0..2 {
        c.reply().await;
    }
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: slow\r\n").await;
    tokio::time::sleep(data - Duration::from_secs(1)).await;
    c.send("still here\r\n").await;
    let t = tokio::time::Instant::now();
    assert_eq!(c.try_reply(PATIENT).await.unwrap(), TIMEOUT_421);
    let waited = t.elapsed();
    assert!(
        waited >= data && waited < data + Duration::from_secs(1),
        "{waited:?}"
    );
    c.expect_closed().await;
    let ev = srv.rec.events();
    assert!(ev.contains(&"lost data timeout".to_owned()), "{ev:?}");
    assert!(srv.rec.messages().is_empty());
}

/// Between BDAT chunks the data timeout applies too; after the last one, the command timeout.
#[tokio::test(start_paused = true)]
async fn bdat_timeouts() {
    let mut limits = Limits::default();
    limits.command_timeout = Duration::from_secs(60);
    limits.data_timeout = Duration::from_secs(120);
    let srv = InMemory::new(|b| b.limits(limits));
    let mut c = srv.connect();
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 4\r\nab\r\n")
        .await;
    for _ in 0..2 {
        c.reply().await;
    }
    assert_eq!(c.reply().await, "250 2.0.0 4 octets received");
    // Longer than the command timeout, shorter than the data timeout.
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(c.cmd("BDAT 0 LAST").await, "250 2.0.0 Stored");
    let t = tokio::time::Instant::now();
    assert_eq!(c.try_reply(PATIENT).await.unwrap(), TIMEOUT_421);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "{waited:?}"
    );
    assert_eq!(srv.rec.messages()[0].body, b"ab\r\n");
}

/// The time a handler takes is not the client's: the deadline starts when the reply is out.
#[tokio::test(start_paused = true)]
async fn a_slow_handler_does_not_shorten_the_clients_time() {
    let mut limits = Limits::default();
    limits.command_timeout = Duration::from_secs(1);
    // The `slow` listener's handler takes 300 ms to accept; the in-memory one does not, so
    // the pause comes from the auth failure delay instead: 5 s, longer than the timeout.
    limits.auth_failure_delay = Duration::from_secs(5);
    let srv = InMemory::new(|b| {
        let mut config = smtp_proto::session::SessionConfig::new("mx.test");
        config.auth_requires_tls = false;
        b.limits(limits)
            .session_config(config)
            .auth([smtp_server::Mechanism::Plain])
    });
    let mut c = srv.connect();
    c.reply().await;
    assert!(c.cmd("EHLO c").await.contains("AUTH PLAIN"));
    // "\0alice@example.org\0wrong"
    let t = tokio::time::Instant::now();
    assert_eq!(
        c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert!(t.elapsed() >= Duration::from_secs(5));
    let t = tokio::time::Instant::now();
    assert_eq!(c.try_reply(PATIENT).await.unwrap(), TIMEOUT_421);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn bdat_chunks() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 9\r\nSubject: BDAT 8 LAST\r\nx\r\n\r\n.\r\n").await;
    c.reply().await;
    c.reply().await;
    assert_eq!(c.reply().await, "250 2.0.0 9 octets received");
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(srv.rec.messages()[0].body, b"Subject: x\r\n\r\n.\r\n");
}

#[tokio::test]
async fn handler_refusing_before_reading_gets_its_reply_after_the_content() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<early@example.org>\r\nDATA\r\n")
        .await;
    for _ in 0..2 {
        c.reply().await;
    }
    assert!(c.reply().await.starts_with("354"));
    let mut body = String::new();
    for i in 0..2000 {
        body.push_str(&format!("line {i} of a message nobody reads\r\n"));
    }
    body.push_str(".\r\nNOOP\r\n");
    c.send(&body).await;
    assert_eq!(c.reply().await, "554 5.6.0 Refused without reading");
    assert_eq!(c.reply().await, "250 2.0.0 OK");
}

#[tokio::test]
async fn graceful_shutdown_lets_data_finish_and_closes_idle_sessions() {
    let mut srv = start_plain().await;
    let mut idle = Client::connect(srv.addr()).await;
    idle.reply().await;
    assert!(idle.cmd("EHLO idle").await.starts_with("250"));
    let mut busy = Client::connect(srv.addr()).await;
    busy.reply().await;
    busy.cmd("EHLO busy").await;
    busy.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    for _ in 0..2 {
        busy.reply().await;
    }
    assert!(busy.reply().await.starts_with("354"));
    busy.send("Subject: in flight\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    srv.stop();
    assert_eq!(
        idle.reply().await,
        "421 4.3.2 mx.test Service not available, closing transmission channel"
    );
    idle.expect_closed().await;
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(srv.addr()).await.is_err());
    assert!(!srv.is_finished());
    // The message in flight completes, then that session is closed too.
    busy.send("\r\nfinished\r\n.\r\n").await;
    assert_eq!(busy.reply().await, "250 2.0.0 Stored");
    assert!(busy.reply().await.starts_with("421 4.3.2"));
    busy.expect_closed().await;
    let rec = srv.rec.clone();
    srv.finished().await.unwrap();
    assert_eq!(
        rec.messages()[0].body,
        b"Subject: in flight\r\n\r\nfinished\r\n"
    );
}

#[tokio::test]
async fn shutdown_grace_period_ends_slow_messages() {
    let mut srv = start(|b| {
        let mut l = Limits::default();
        l.shutdown_grace = Duration::from_millis(300);
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut busy = Client::connect(srv.addr()).await;
    busy.reply().await;
    busy.cmd("EHLO busy").await;
    busy.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        busy.reply().await;
    }
    busy.send("Subject: never finished\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    srv.stop();
    assert!(busy.reply().await.starts_with("421 4.3.2 mx.test"));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    busy.expect_closed().await;
    let rec = srv.rec.clone();
    srv.finished().await.unwrap();
    assert!(rec
        .events()
        .contains(&"lost server shutting down".to_owned()));
    assert!(rec.messages().is_empty());
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let srv = start_plain().await;
    let addr = srv.addr();
    let err = Server::builder(server_support::Recorder::default())
        .listen(addr)
        .bind()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Bind { addr: a, .. } if a == addr));
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr}: ")),
        "{err}"
    );
    // Without listeners a server can be built (it can serve streams) but not bound.
    let server = Server::builder(server_support::Recorder::default())
        .build()
        .unwrap();
    let err = server.bind().await.unwrap_err();
    assert!(matches!(err, Error::NoListeners));
    let err = Server::builder(server_support::Recorder::default())
        .implicit_tls_listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::TlsRequired(_)));
}

#[tokio::test]
async fn ipv4_and_ipv6_wildcards_share_a_port() {
    if !has_ipv6() {
        eprintln!("note: no IPv6 here; test skipped");
        return;
    }
    // A port free on both families, found by binding the v6 wildcard (v6-only by default off)
    // and letting it go.
    let port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let srv = start(|b| {
        b.listen(SocketAddr::from(([0, 0, 0, 0], port)))
            .listen(format!("[::]:{port}").parse().unwrap())
    })
    .await;
    assert_eq!(srv.addrs.len(), 2);
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut c = Client::connect(addr.parse().unwrap()).await;
        assert!(c.reply().await.starts_with("220 mx.test"));
    }
    let _ = WAIT;
}

#[tokio::test]
async fn refused_recipients_are_slowed_then_cut_off() {
    // As Postfix's smtpd_soft_error_limit / smtpd_error_sleep_time / smtpd_hard_error_limit:
    // the first refusals come at once, each one past them after the delay, and the last is
    // followed by 421 4.7.0.
    let delay = Duration::from_millis(150);
    let srv = start(|b| {
        let mut l = Limits::default();
        l.refused_recipients_undelayed = 3;
        l.refused_recipient_delay = delay;
        l.max_refused_recipients = 6;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    for i in 0..3 {
        let r = c.cmd(&format!("RCPT TO:<bad{i}@mx.test>")).await;
        assert_eq!(r, "550 5.1.1 No such user");
    }
    // An accepted recipient is not delayed and does not count.
    assert_eq!(
        c.cmd("RCPT TO:<ok@mx.test>").await,
        "250 2.1.5 Recipient OK"
    );
    let t = std::time::Instant::now();
    for i in 3..6 {
        let r = c.cmd(&format!("RCPT TO:<bad{i}@mx.test>")).await;
        assert_eq!(r, "550 5.1.1 No such user");
    }
    assert!(t.elapsed() >= delay * 3, "{:?}", t.elapsed());
    assert!(c.reply().await.starts_with("421 4.7.0 mx.test"));
    c.expect_closed().await;
}
