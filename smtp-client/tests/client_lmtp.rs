//! LMTP (RFC 2033) through `Lmtp`, against a scripted LMTP server on a Unix-domain socket and
//! on loopback TCP: one verdict per recipient after the data. (The daemon's test runs it
//! against a real Dovecot.)
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use smtp_client::lmtp::{Lmtp, LmtpTarget};
use smtp_client::{ClientConfig, Envelope, Message, RcptOutcome, TlsPolicy};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// What the server saw.
#[derive(Default, Debug)]
struct Seen {
    lines: Vec<String>,
    data: Vec<u8>,
}

/// Serves one LMTP session: `greeting`, then LHLO, MAIL, RCPT (refusing `nobody@`), DATA
/// and, after the data, `after_data` (one reply per accepted recipient).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    greeting: &str,
    after_data: Vec<&str>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut s = BufReader::new(s);
    s.get_mut().write_all(greeting.as_bytes()).await.unwrap();
    if !greeting.starts_with("220") {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await.unwrap() == 0 {
            return;
        }
        seen.lock().unwrap().lines.push(line.trim_end().to_owned());
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("LHLO ") {
            "250-lmtp.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n".into()
        } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "500 5.5.1 LMTP here: LHLO please\r\n".into()
        } else if upper.starts_with("MAIL") {
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("RCPT") {
            if upper.contains("NOBODY@") {
                "550 5.1.1 <nobody@example.org> User doesn't exist\r\n".into()
            } else {
                "250 2.1.5 OK\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            s.get_mut().write_all(b"354 OK\r\n").await.unwrap();
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                s.read_until(b'\n', &mut l).await.unwrap();
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
            }
            seen.lock().unwrap().data = data;
            after_data.iter().map(|r| format!("{r}\r\n")).collect()
        } else if upper.starts_with("QUIT") {
            let _ = s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "500 5.5.2 ?\r\n".into()
        };
        s.get_mut().write_all(reply.as_bytes()).await.unwrap();
    }
}

fn envelope(rcpts: &[&str]) -> Envelope {
    common::envelope("<sender@remote.test>", rcpts)
}

fn config() -> ClientConfig {
    ClientConfig::new("mx.example.org").with_tls(TlsPolicy::None)
}

async fn unix_server(
    dir: &Path,
    greeting: &'static str,
    after_data: Vec<&'static str>,
) -> (LmtpTarget, Arc<Mutex<Seen>>) {
    let path = dir.join("lmtp");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve(s, greeting, after_data, s2).await;
    });
    (LmtpTarget::Unix(path), seen)
}

#[tokio::test]
async fn each_recipient_gets_its_own_verdict_after_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (target, seen) = unix_server(
        dir.path(),
        "220 lmtp.test LMTP ready\r\n",
        vec![
            "250 2.0.0 <alice@example.org> Saved",
            "452 4.2.2 <bob@example.org> Quota exceeded (mailbox for user is full)",
            "552 5.2.2 <carol@example.org> Mailbox is over quota for good",
        ],
    )
    .await;
    let lmtp = Lmtp::new(target.clone(), config());
    let env = envelope(&[
        "<alice@example.org>",
        "<nobody@example.org>",
        "<bob@example.org>",
        "<carol@example.org>",
    ]);
    let message = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n";
    let report = lmtp.deliver_message(&env, &Message::bytes(message)).await;
    let outcomes: Vec<String> = report
        .rcpts
        .iter()
        .map(|(p, o)| match o {
            RcptOutcome::Delivered(r) => format!("{p} delivered {}", r.code()),
            RcptOutcome::Transient(f) => format!("{p} transient {} {}", f.enhanced, f.text),
            RcptOutcome::Permanent(f) => format!("{p} permanent {} {}", f.enhanced, f.text),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "<alice@example.org> delivered 250",
            "<nobody@example.org> permanent 5.1.1 550 5.1.1 <nobody@example.org> User doesn't exist",
            "<bob@example.org> transient 4.2.2 452 4.2.2 <bob@example.org> Quota exceeded (mailbox for user is full)",
            "<carol@example.org> permanent 5.2.2 552 5.2.2 <carol@example.org> Mailbox is over quota for good",
        ]
    );
    assert_eq!(report.delivered_via.as_ref().unwrap().0, target.to_string());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.lines[0], "LHLO mx.example.org");
    assert_eq!(seen.lines[1], "MAIL FROM:<sender@remote.test>");
    // Dot-stuffed on the wire.
    assert_eq!(seen.data, b"Subject: hi\r\n\r\n..dot\r\nbody\r\n");
}

#[tokio::test]
async fn a_refusing_greeting_defers_every_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = unix_server(dir.path(), "554 5.3.2 not today\r\n", vec![]).await;
    let report = Lmtp::new(target, config())
        .deliver_message(
            &envelope(&["<alice@example.org>"]),
            &Message::bytes(b"\r\n"),
        )
        .await;
    match &report.rcpts[0].1 {
        RcptOutcome::Transient(f) => assert_eq!(f.enhanced.class(), 4, "{f:?}"),
        other => panic!("{other:?}"),
    }
    assert!(report.delivered_via.is_none());
}

#[tokio::test]
async fn no_server_defers_every_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let target = LmtpTarget::Unix(dir.path().join("absent"));
    let report = Lmtp::new(target, config())
        .deliver_message(
            &envelope(&["<alice@example.org>", "<bob@example.org>"]),
            &Message::bytes(b"\r\n"),
        )
        .await;
    assert_eq!(report.rcpts.len(), 2);
    assert!(report
        .rcpts
        .iter()
        .all(|(_, o)| matches!(o, RcptOutcome::Transient(_))));
    assert!(
        report.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("connect"),
        "{report:?}"
    );
}

#[tokio::test]
async fn over_tcp_on_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve(
            s,
            "220 lmtp.test LMTP ready\r\n",
            vec![
                "250 2.0.0 <a@example.org> Saved",
                "250 2.0.0 <b@example.org> Saved",
            ],
            s2,
        )
        .await;
    });
    let target: LmtpTarget = format!("inet:{addr}").parse().unwrap();
    let report = Lmtp::new(target, config())
        .deliver_message(
            &envelope(&["<a@example.org>", "<b@example.org>"]),
            &Message::bytes(b"Subject: x\r\n\r\nx\r\n"),
        )
        .await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.delivered_via.unwrap().1, addr);
}
