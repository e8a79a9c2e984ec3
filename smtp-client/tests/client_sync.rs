//! Servers whose replies are out of step with the commands: a `250` to DATA itself, a reply
//! before the message was sent or while it was being written, a second reply to one command.
//! None of them may make the client count a message delivered whose end the server never
//! answered; each leaves the connection unusable. Raw peers on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::client_config;
use smtp_client::{ClientError, Connection, Envelope, TlsPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn envelope() -> Envelope {
    common::envelope_to("<bob@remote.test>")
}

/// How the peer answers DATA and the end of the message.
#[derive(Clone, Copy)]
struct Lies {
    /// The greeting, whole.
    greeting: &'static [u8],
    /// `PIPELINING` in the EHLO reply.
    pipelining: bool,
    /// Written in one go as the answer to DATA (instead of `354`).
    data: &'static [u8],
    /// Written as soon as any body line arrives (before the end marker), once.
    during_body: &'static [u8],
    /// Written after the end marker.
    dot: &'static [u8],
}

const HONEST: Lies = Lies {
    greeting: b"220 liar.test ESMTP\r\n",
    pipelining: false,
    data: b"354 go ahead\r\n",
    during_body: b"",
    dot: b"250 2.0.0 queued\r\n",
};

/// A peer on 127.0.0.1 answering by `lies`; every line it receives (commands and message
/// lines) is sent on the channel, so a test sees whether the message was written.
async fn peer(lies: Lies) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut read = BufReader::new(read);
                let _ = write.write_all(lies.greeting).await;
                let mut in_data = false;
                let mut told = false;
                let mut line = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = tx.send(line.trim_end().to_owned());
                    let answer: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            lies.dot
                        } else if !told && !lies.during_body.is_empty() {
                            told = true;
                            lies.during_body
                        } else {
                            b""
                        }
                    } else {
                        match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                            Some("EHLO") if lies.pipelining => {
                                b"250-liar.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                            }
                            Some("EHLO") => b"250-liar.test\r\n250 8BITMIME\r\n",
                            Some("DATA") => {
                                in_data = lies.data.starts_with(b"354");
                                lies.data
                            }
                            Some("QUIT") => b"221 bye\r\n",
                            _ => b"250 ok\r\n",
                        }
                    };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                    if in_data && !answer.is_empty() && answer == lies.during_body {
                        // Read nothing more for a while: a client whose message is larger
                        // than the socket buffers can hold is then blocked in its write
                        // while the lie reaches it, whatever the scheduling.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_reply_before_ehlo_is_not_the_ehlo_reply() {
    // A 250 behind the greeting would be taken for the EHLO reply (its capabilities, no
    // STARTTLS): the connection fails instead.
    let (addr, mut rx) = peer(Lies {
        greeting: b"220 liar.test ESMTP\r\n250 2.0.0 unsolicited\r\n",
        ..HONEST
    })
    .await;
    let config = client_config(TlsPolicy::None);
    let err = Connection::connect(addr, "liar.test", &config)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::OutOfStep { stage: "EHLO", .. }),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!seen(&mut rx).iter().any(|l| l.starts_with("EHLO")));
}

async fn connect(addr: SocketAddr) -> Connection {
    let config = client_config(TlsPolicy::None);
    Connection::connect(addr, "liar.test", &config)
        .await
        .unwrap()
}

/// The lines the peer has received so far.
fn seen(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(l) = rx.try_recv() {
        v.push(l);
    }
    v
}

/// Sends `message` on a fresh connection to a peer lying as `lies`: the error, which must
/// leave the connection unusable, and the lines the peer had received a moment later.
async fn refused_by(lies: Lies, message: &[u8]) -> (ClientError, Vec<String>) {
    let (addr, mut rx) = peer(lies).await;
    let mut conn = connect(addr).await;
    let err = conn.send(&envelope(), message).await.unwrap_err();
    assert!(!conn.is_usable(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    (err, seen(&mut rx))
}

#[tokio::test]
async fn a_250_to_data_itself_is_not_a_delivery() {
    for pipelining in [false, true] {
        let lies = Lies {
            pipelining,
            data: b"250 2.0.0 queued as X\r\n",
            ..HONEST
        };
        let (err, lines) = refused_by(lies, b"Subject: x\r\n\r\nbody\r\n").await;
        assert!(
            matches!(&err, ClientError::Unexpected { command: "DATA", reply } if reply.code() == 250),
            "{err:?}"
        );
        assert!(!err.is_permanent());
        assert!(!lines.iter().any(|l| l == "body"), "{lines:?}");
    }
}

#[tokio::test]
async fn a_reply_before_the_end_of_the_message_is_not_its_answer() {
    // With the 354, in the same write: before any of the message was sent.
    let lies = Lies {
        data: b"354 go\r\n250 2.0.0 queued before the body\r\n",
        ..HONEST
    };
    let (err, lines) = refused_by(lies, b"Subject: x\r\n\r\nbody\r\n").await;
    assert!(
        matches!(err, ClientError::OutOfStep { stage: "the message", octets } if octets > 0),
        "{err:?}"
    );
    assert!(!lines.iter().any(|l| l == "body"));
    // While the message is being written: the 250 sent at its first line. 16 MB, more than
    // the socket buffers hold (Linux's tcp_wmem maximum is 4 MB and the peer's window does
    // not grow while it does not read): the client is still writing when the 250 arrives.
    let lies = Lies {
        during_body: b"250 2.0.0 queued mid-body\r\n",
        ..HONEST
    };
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "a line of the message\r\n".repeat(700_000)
    );
    let (err, lines) = refused_by(lies, big.as_bytes()).await;
    assert!(
        matches!(
            err,
            ClientError::OutOfStep {
                stage: "end of data",
                ..
            }
        ),
        "{err:?}"
    );
    // The end marker was never sent: the server discards the message.
    assert!(!lines.iter().any(|l| l == "."));
}

#[tokio::test]
async fn a_second_reply_to_one_command_stops_the_next_transaction() {
    // The end of message 1 is answered twice. On the same connection, message 2 must not
    // pair that stale 250 with its RSET and every later reply with the wrong command (which
    // ended with the RCPT's 250 taken for the end of a message never sent).
    for pipelining in [false, true] {
        let (addr, mut rx) = peer(Lies {
            pipelining,
            dot: b"250 2.0.0 queued 1\r\n250 2.0.0 queued 1 (again)\r\n",
            ..HONEST
        })
        .await;
        let mut conn = connect(addr).await;
        let first = conn
            .send(&envelope(), b"Subject: 1\r\n\r\none\r\n")
            .await
            .unwrap();
        assert_eq!(first.accepted(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = seen(&mut rx).len();
        let err = conn
            .send(&envelope(), b"Subject: 2\r\n\r\ntwo\r\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::OutOfStep { .. }), "{err:?}");
        assert!(!conn.is_usable());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Nothing of message 2 was sent.
        let after = seen(&mut rx);
        assert!(
            after.is_empty(),
            "sent after the duplicate: {after:?} ({before} before)"
        );
    }
}

#[tokio::test]
async fn an_honest_server_is_unaffected() {
    for pipelining in [false, true] {
        let (addr, mut rx) = peer(Lies {
            pipelining,
            ..HONEST
        })
        .await;
        let mut conn = connect(addr).await;
        for i in 0..3 {
            let r = conn
                .send(
                    &envelope(),
                    format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(r.accepted(), 1);
        }
        assert!(conn.is_usable());
        conn.quit().await.unwrap();
        assert_eq!(seen(&mut rx).iter().filter(|l| *l == "body").count(), 3);
    }
}

#[tokio::test]
async fn a_421_while_the_message_is_written_is_a_refusal_not_out_of_step() {
    // A server shutting down answers 421 when it likes (RFC 5321 §3.8): the message is not
    // delivered (a transient refusal), and the client does not call it a protocol error.
    let (addr, _rx) = peer(Lies {
        during_body: b"421 4.3.2 shutting down\r\n",
        ..HONEST
    })
    .await;
    let mut conn = connect(addr).await;
    let r = conn
        .send(&envelope(), b"Subject: x\r\n\r\nbody\r\nmore\r\n")
        .await
        .unwrap();
    assert_eq!(r.accepted(), 0);
    assert_eq!(r.data.as_ref().unwrap().code(), 421);
}
