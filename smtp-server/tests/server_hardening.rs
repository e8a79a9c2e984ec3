//! Field-readiness over real TCP on loopback: bare LF and CR in command lines, unauthorised
//! pipelining (RFC 2920, as Postfix's `smtpd_forbid_unauth_pipelining`), talking before the
//! greeting, recipients past the limit (refused, then counted as errors past the overshoot
//! allowance) and malformed parameter values. Each test checks the
//! replies on the wire, whether the connection closes, and what the handler received.
#![allow(clippy::unwrap_used)]

mod server_support;

use server_support::{pki, server_name, start, start_plain, tls_connector, Client, Recorder};
use smtp_proto::session::SessionConfig;
use smtp_server::{Limits, TlsConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SYNC: &str = "554 5.5.0 Error: SMTP protocol synchronization";
const BARE_LF: &str = "550 5.5.2 mx.test Error: bare <LF> received";
const BARE_CR: &str = "550 5.5.2 mx.test Error: bare <CR> received";

/// Events after the connect, without the `connect` line.
fn after_connect(rec: &Recorder) -> Vec<String> {
    rec.events()
        .into_iter()
        .filter(|e| !e.starts_with("connect"))
        .collect()
}

/// The case: `EHLO a\nMAIL FROM:<x@ext.example>\r\n` got `500 5.5.2`, then the MAIL
/// ran as a second command.
#[tokio::test]
async fn bare_lf_in_a_command_closes_and_nothing_runs() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.send("EHLO a\nMAIL FROM:<x@ext.example>\r\n").await;
    assert_eq!(c.reply().await, BARE_LF);
    c.expect_closed().await;
    assert!(after_connect(&srv.rec).is_empty(), "{:?}", srv.rec.events());
}

/// In a transaction, between BDAT chunks, and with a bare CR.
#[tokio::test]
async fn bare_lf_and_cr_in_later_states() {
    let srv = start_plain().await;
    let cases: &[(&str, &str)] = &[
        (
            "RCPT TO:<a@example.org>\nRCPT TO:<x@ext.example>\r\n",
            BARE_LF,
        ),
        ("NOOP\rRCPT TO:<x@ext.example>\r\n", BARE_CR),
        ("BDAT 2 LAST\nxy", BARE_LF),
    ];
    for (line, want) in cases {
        let mut c = Client::connect(srv.addr()).await;
        c.reply().await;
        assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
        c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nabc")
            .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send(line).await;
        assert_eq!(c.reply().await, *want, "{line:?}");
        c.expect_closed().await;
    }
    let ev = srv.rec.events();
    assert!(!ev.iter().any(|e| e.contains("x@ext.example")), "{ev:?}");
    assert!(srv.rec.messages().is_empty());
    // Each aborted transaction reached the handler as a reset.
    assert_eq!(ev.iter().filter(|e| *e == "reset").count(), 3, "{ev:?}");
}

/// After STARTTLS, inside TLS.
#[tokio::test]
async fn bare_lf_after_starttls() {
    let p = pki("bare-lf");
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let s = tls_connector(&p.ca_der)
        .connect(server_name(), c.into_inner())
        .await
        .unwrap();
    let mut c = Client::new(s);
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
    c.send("MAIL FROM:<a@example.net>\nRCPT TO:<x@ext.example>\r\n")
        .await;
    assert_eq!(c.reply().await, BARE_LF);
    c.expect_closed().await;
    let ev = after_connect(&srv.rec);
    assert_eq!(ev, ["hello c true", "tls TLSv1.3", "hello c true"]);
}

/// Commands pipelined behind EHLO: none runs, the connection closes.
#[tokio::test]
async fn pipelining_behind_ehlo_is_refused_unexecuted() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.send("EHLO a\r\nMAIL FROM:<x@ext.example>\r\n").await;
    assert_eq!(c.reply().await, SYNC);
    c.expect_closed().await;
    assert!(after_connect(&srv.rec).is_empty(), "{:?}", srv.rec.events());
}

/// Every command that must end a group, with more behind it; and message content sent before
/// the 354.
#[tokio::test]
async fn input_behind_group_ending_commands_is_refused() {
    let srv = start_plain().await;
    for cmd in [
        "DATA",
        "NOOP",
        "VRFY bob",
        "EXPN staff",
        "QUIT",
        "TURN",
        "EHLO again",
        "HELO again",
    ] {
        let mut c = Client::connect(srv.addr()).await;
        c.reply().await;
        assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
        c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
            .await;
        c.reply().await;
        c.reply().await;
        c.send(&format!("{cmd}\r\nSubject: smuggled\r\n\r\nhi\r\n.\r\n"))
            .await;
        assert_eq!(c.reply().await, SYNC, "{cmd}");
        c.expect_closed().await;
    }
    let ev = srv.rec.events();
    assert!(
        !ev.iter()
            .any(|e| e.contains("again") || e.starts_with("message")),
        "{ev:?}"
    );
    assert!(srv.rec.messages().is_empty());
}

/// No pipelining after HELO; one command per round trip is fine.
#[tokio::test]
async fn no_pipelining_after_helo() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    assert_eq!(c.cmd("HELO c").await, "250 mx.test");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "250 2.1.0 Sender OK"
    );
    c.send("RCPT TO:<b@example.org>\r\nRCPT TO:<x@ext.example>\r\n")
        .await;
    assert_eq!(c.reply().await, SYNC);
    c.expect_closed().await;
    assert_eq!(
        after_connect(&srv.rec),
        ["hello c false", "mail <a@example.net>", "reset"]
    );
}

/// What RFC 2920 allows still works in one write: MAIL, RCPTs and DATA, then the content,
/// the next transaction's BDAT chunks and QUIT behind the end of the message.
#[tokio::test]
async fn allowed_pipelining_is_served() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("RSET\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad@example.org>\r\nDATA\r\n").await;
    for want in [
        "250 2.0.0 OK",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "550 5.1.1 No such user",
    ] {
        assert_eq!(c.reply().await, want);
    }
    assert!(c.reply().await.starts_with("354"));
    c.send("one\r\n.\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\ntwoBDAT 0 LAST\r\nQUIT\r\n").await;
    for want in [
        "250 2.0.0 Stored",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.0.0 3 octets received",
        "250 2.0.0 Stored",
        "221 2.0.0 mx.test closing connection",
    ] {
        assert_eq!(c.reply().await, want);
    }
    c.expect_closed().await;
    let bodies: Vec<Vec<u8>> = srv.rec.messages().into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, [b"one\r\n".to_vec(), b"two".to_vec()]);
}

/// Input still on the socket (not read with the DATA line) counts too: the EHLO is awaited,
/// then one write puts DATA exactly at the end of what the server reads at once (16 KiB) and
/// the content behind it.
#[tokio::test]
async fn content_not_yet_read_behind_data_is_refused() {
    let srv = start_plain().await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let mut batch = String::from("MAIL FROM:<a@example.net>\r\n");
    // `RCPT TO:<r@example.org>`, padded with (ignored) trailing spaces to `len` octets.
    let rcpt = |len: usize| format!("RCPT TO:<r@example.org>{}\r\n", " ".repeat(len - 25));
    let room = |b: &String| 16 * 1024 - b.len() - "DATA\r\n".len();
    while room(&batch) > 800 {
        batch.push_str(&rcpt(400));
    }
    let last = room(&batch);
    batch.push_str(&rcpt(last / 2));
    batch.push_str(&rcpt(last - last / 2));
    batch.push_str("DATA\r\n");
    assert_eq!(batch.len(), 16 * 1024);
    batch.push_str(&"Subject: early\r\n".repeat(100));
    c.send(&batch).await;
    let n = batch.matches("RCPT").count();
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    for _ in 0..n {
        assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    }
    assert_eq!(c.reply().await, SYNC);
    c.expect_closed().await;
    assert!(!srv
        .rec
        .events()
        .iter()
        .any(|e| e.starts_with("message") || e.starts_with("lost")));
}

/// A client that talks before the greeting (checked when the greeting is due, here after a
/// handler that takes its time) gets `554 5.5.0`, no greeting, and is disconnected; the
/// handler never sees a command.
#[tokio::test]
async fn client_talking_first_gets_554() {
    let srv = start(|b| b.listen_named("slow", "127.0.0.1:0".parse().unwrap())).await;
    let mut tcp = TcpStream::connect(srv.addr()).await.unwrap();
    tcp.write_all(b"EHLO early.example\r\n").await.unwrap();
    let mut c = Client::new(tcp);
    assert_eq!(c.reply().await, SYNC);
    c.expect_closed().await;
    assert_eq!(srv.rec.events(), ["connect slow tls=no"]);

    // A client that waits is greeted (and not delayed by the check).
    let mut c = Client::connect(srv.addr()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    assert!(c.cmd("EHLO c").await.starts_with("250-mx.test"));
}

/// The policy can be turned off: the old behaviour, pipelining anywhere.
#[tokio::test]
async fn policy_off_serves_unauthorised_pipelining() {
    let mut config = SessionConfig::new("mx.test");
    config.forbid_unauth_pipelining = false;
    let srv = start(move |b| {
        b.session_config(config)
            .listen("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let mut tcp = TcpStream::connect(srv.addr()).await.unwrap();
    tcp.write_all(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut c = Client::new(tcp);
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    assert!(c.reply().await.starts_with("250-mx.test"));
    for _ in 0..3 {
        c.reply().await;
    }
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.reply().await, "221 2.0.0 mx.test closing connection");
    assert_eq!(srv.rec.messages().len(), 1);
    // Bare LF is refused whatever the pipelining policy.
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.send("NOOP\nNOOP\r\n").await;
    assert_eq!(c.reply().await, BARE_LF);
    c.expect_closed().await;
}

/// Recipients past the limit get `452 4.5.3`; past the overshoot allowance each further one
/// counts as an error, and a client that keeps sending them is disconnected with
/// `421 4.7.0` when the error budget is spent.
#[tokio::test]
async fn recipients_past_the_limit_spend_the_error_budget() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_recipients = 1;
        l.max_recipient_overshoot = 2;
        l.max_errors = 3;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.send("MAIL FROM:<a@example.net>\r\n").await;
    c.reply().await;
    for i in 0..10 {
        c.send(&format!("RCPT TO:<r{i}@example.org>\r\n")).await;
    }
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    // 2 within the allowance, then 3 counted: the third spends the budget.
    for _ in 0..5 {
        assert_eq!(c.reply().await, "452 4.5.3 Too many recipients");
    }
    assert_eq!(
        c.reply().await,
        "421 4.7.0 mx.test Too many errors, closing connection"
    );
    c.expect_closed().await;
    let rcpts = srv
        .rec
        .events()
        .iter()
        .filter(|e| e.starts_with("rcpt"))
        .count();
    assert_eq!(rcpts, 1);
}

/// The review's case over a real socket, with the default limits: a client that sends 120
/// recipients before DATA (as Python's `smtplib.sendmail`) gets 100 accepted and 20
/// `452 4.5.3`, and its message is delivered to the 100 instead of the session closing.
#[tokio::test]
async fn recipients_past_the_limit_still_deliver_to_the_first_100() {
    let srv = start(|b| b.listen("127.0.0.1:0".parse().unwrap())).await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let mut batch = String::from("MAIL FROM:<a@example.net>\r\n");
    for i in 0..120 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.org>\r\n"));
    }
    c.send(&batch).await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    for i in 0..120 {
        let want = if i < 100 {
            "250 2.1.5 Recipient OK"
        } else {
            "452 4.5.3 Too many recipients"
        };
        assert_eq!(c.reply().await, want, "recipient {i}");
    }
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: many\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    let messages = srv.rec.messages();
    assert_eq!(messages.len(), 1);
    let rcpts = &messages[0].envelope.rcpts;
    assert_eq!(rcpts.len(), 100);
    assert_eq!(rcpts[99].0.to_string(), "<r99@example.org>");
}

/// `SIZE=abc` and the other malformed values of known parameters are `501 5.5.4`; unknown
/// parameters `555 5.5.4`. The handler sees none of these commands.
#[tokio::test]
async fn malformed_parameter_values_are_501() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_errors = 100;
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    for (cmd, want) in [
        ("MAIL FROM:<a@b.example> SIZE=abc", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> SIZE", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> BODY=9BIT", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> SMTPUTF8=yes", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> RET=ALL", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> ENVID=a+zz", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> AUTH=a+1", "501 5.5.4"),
        ("MAIL FROM:<a@b.example> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<a@b.example> NOTIFY=NEVER", "555 5.5.4"),
        ("MAIL FROM:<a@b.example>", "250 2.1.0"),
        ("RCPT TO:<c@d.example> NOTIFY=SOMETIMES", "501 5.5.4"),
        ("RCPT TO:<c@d.example> ORCPT=c@d.example", "501 5.5.4"),
        ("RCPT TO:<c@d.example> X-FOO", "555 5.5.4"),
    ] {
        let got = c.cmd(cmd).await;
        assert!(got.starts_with(want), "{cmd}: {got}");
    }
    assert_eq!(
        after_connect(&srv.rec),
        ["hello c true", "mail <a@b.example>"]
    );
}
