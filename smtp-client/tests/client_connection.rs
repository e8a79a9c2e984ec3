//! `Connection` against a real SMTP server on loopback (see `common`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{client_config, envelope, reply, test_pki, Behaviour, TestServer};
use smtp_client::tls::{CertificateProblem, TlsError};
use smtp_client::{ClientError, Connection, RcptResult, TlsPolicy};

const MESSAGE: &[u8] = b"Subject: test\r\n\r\nHello.\r\n.leading dot\r\n";

#[tokio::test]
async fn sends_with_pipelining_in_one_write_and_reports_per_recipient() {
    let server = TestServer::local(Behaviour::default().rcpt(
        "nobody@mx.test",
        reply(550, Some((5, 1, 1)), "No such user"),
    ))
    .await;
    let config = client_config(TlsPolicy::None);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(conn.has("PIPELINING"));
    assert_eq!(conn.greeting().code(), 220);
    let env = envelope(
        "<alice@client.test>",
        &["<bob@mx.test>", "<nobody@mx.test>", "<carol@mx.test>"],
    );
    let result = conn.send(&env, MESSAGE).await.unwrap();
    assert_eq!(result.accepted(), 2);
    assert!(matches!(&result.rcpts[0], RcptResult::Accepted(r) if r.code() == 250));
    match &result.rcpts[1] {
        RcptResult::Rejected(r) => {
            assert_eq!(r.code(), 550);
            assert_eq!(r.enhanced().unwrap().to_string(), "5.1.1");
        }
        other => panic!("{other:?}"),
    }
    assert!(result.rcpts[2].is_accepted());
    assert!(!conn.outcome_unknown());
    conn.quit().await.unwrap();

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].from, "<alice@client.test>");
    assert_eq!(messages[0].rcpts, ["bob@mx.test", "carol@mx.test"]);
    assert_eq!(messages[0].body, MESSAGE);
    assert_eq!(messages[0].mail_params, "");

    // RFC 2920: MAIL, the RCPTs and DATA arrived in one read.
    let reads = server.reads();
    let pipelined = "MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@mx.test>\r\n\
                     RCPT TO:<nobody@mx.test>\r\nRCPT TO:<carol@mx.test>\r\nDATA\r\n";
    assert!(
        reads.iter().any(|r| r == pipelined.as_bytes()),
        "{:?}",
        reads
            .iter()
            .map(|r| String::from_utf8_lossy(r))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn without_pipelining_commands_go_one_by_one() {
    let server = TestServer::local(Behaviour {
        pipelining: false,
        ..Behaviour::default()
    })
    .await;
    let config = client_config(TlsPolicy::None);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    let env = envelope("<a@client.test>", &["<b@mx.test>", "<c@mx.test>"]);
    let result = conn.send(&env, MESSAGE).await.unwrap();
    assert_eq!(result.accepted(), 2);
    conn.quit().await.unwrap();
    let reads: Vec<String> = server
        .reads()
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert!(
        reads.contains(&"MAIL FROM:<a@client.test>\r\n".to_owned()),
        "{reads:?}"
    );
    assert!(
        reads.contains(&"RCPT TO:<b@mx.test>\r\n".to_owned()),
        "{reads:?}"
    );
    assert!(
        reads.contains(&"RCPT TO:<c@mx.test>\r\n".to_owned()),
        "{reads:?}"
    );
    assert!(reads.contains(&"DATA\r\n".to_owned()), "{reads:?}");
}

#[tokio::test]
async fn no_accepted_recipient_means_no_message() {
    for pipelining in [true, false] {
        let server = TestServer::local(Behaviour {
            pipelining,
            ..Behaviour::default()
                .rcpt("x@mx.test", reply(550, Some((5, 1, 1)), "No"))
                .rcpt("y@mx.test", reply(450, Some((4, 2, 0)), "Later"))
        })
        .await;
        let config = client_config(TlsPolicy::None);
        let mut conn = Connection::connect(server.addr, "mx.test", &config)
            .await
            .unwrap();
        let env = envelope("<a@client.test>", &["<x@mx.test>", "<y@mx.test>"]);
        let result = conn.send(&env, MESSAGE).await.unwrap();
        assert_eq!(result.accepted(), 0);
        assert_eq!(result.rcpts[0].reply().code(), 550);
        assert_eq!(result.rcpts[1].reply().code(), 450);
        // The connection is still usable: a second message goes through (after RSET).
        let env = envelope("<a@client.test>", &["<z@mx.test>"]);
        let result = conn.send(&env, MESSAGE).await.unwrap();
        assert_eq!(result.accepted(), 1, "pipelining {pipelining}");
        conn.quit().await.unwrap();
        assert_eq!(server.messages().len(), 1);
        assert!(server.reads().iter().any(|r| r.starts_with(b"RSET\r\n")));
    }
}

#[tokio::test]
async fn data_failure_applies_to_every_accepted_recipient() {
    let server = TestServer::local(Behaviour {
        data_reply: Some(reply(552, Some((5, 3, 4)), "Message too big for me")),
        ..Behaviour::default().rcpt("x@mx.test", reply(550, Some((5, 1, 1)), "No"))
    })
    .await;
    let config = client_config(TlsPolicy::None);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    let env = envelope("<a@client.test>", &["<b@mx.test>", "<x@mx.test>"]);
    let result = conn.send(&env, MESSAGE).await.unwrap();
    assert_eq!(
        result.rcpts[0],
        RcptResult::Rejected(reply(552, Some((5, 3, 4)), "Message too big for me"))
    );
    assert_eq!(result.rcpts[1].reply().code(), 550);
}

#[tokio::test]
async fn mail_refused_is_an_error_with_the_reply() {
    let server = TestServer::local(Behaviour {
        mail_reply: Some(reply(451, Some((4, 7, 1)), "Greylisted")),
        ..Behaviour::default()
    })
    .await;
    let config = client_config(TlsPolicy::None);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    let err = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap_err();
    match &err {
        ClientError::Refused {
            command: "MAIL",
            reply,
        } => assert_eq!(reply.code(), 451),
        other => panic!("{other:?}"),
    }
    assert!(!err.is_permanent());
    // Refused before the data: certainly not taken.
    assert!(!conn.outcome_unknown());
}

#[tokio::test]
async fn greeting_421_is_an_error_carrying_the_reply() {
    let server = TestServer::local(Behaviour {
        greeting: Some(reply(421, Some((4, 3, 2)), "mx.test busy")),
        ..Behaviour::default()
    })
    .await;
    let err = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap_err();
    match err {
        ClientError::Greeting(r) => assert_eq!(r.code(), 421),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo() {
    let server = TestServer::local(Behaviour {
        refuse_ehlo: Some(reply(502, Some((5, 5, 1)), "EHLO not implemented")),
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap();
    assert!(conn.ehlo().is_none());
    assert!(!conn.has("PIPELINING"));
    let result = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap();
    assert_eq!(result.accepted(), 1);
    let helos = server.log.lock().unwrap().helos.clone();
    assert_eq!(
        helos,
        [
            ("client.test".to_owned(), true),
            ("client.test".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn size_8bitmime_and_smtputf8_are_declared_when_offered() {
    let server = TestServer::local(Behaviour {
        size: Some(1_000_000),
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap();
    let message = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    conn.send(
        &envelope("<jos\u{e9}@client.test>", &["<b@mx.test>"]),
        message,
    )
    .await
    .unwrap();
    let got = &server.messages()[0];
    assert_eq!(
        got.mail_params,
        format!("SIZE={} BODY=8BITMIME SMTPUTF8", message.len())
    );
    assert_eq!(got.body, message);
}

#[tokio::test]
async fn refuses_before_sending_what_the_server_cannot_take() {
    let server = TestServer::local(Behaviour {
        size: Some(100),
        eight_bit_mime: false,
        smtputf8: false,
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap();
    let ascii = envelope("<a@client.test>", &["<b@mx.test>"]);
    let err = conn.send(&ascii, &[b'x'; 200]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::TooLarge {
                size: 202,
                limit: 100
            }
        ),
        "{err:?}"
    );
    assert!(err.is_permanent());
    assert_eq!(err.enhanced_code().to_string(), "5.3.4");

    let err = conn
        .send(&ascii, "caf\u{e9}\r\n".as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Needs8BitMime), "{err:?}");
    assert_eq!(err.enhanced_code().to_string(), "5.6.3");

    let utf8 = envelope("<a@client.test>", &["<b\u{fc}cher@mx.test>"]);
    let err = conn.send(&utf8, b"hi\r\n").await.unwrap_err();
    assert!(matches!(err, ClientError::NeedsSmtpUtf8), "{err:?}");
    assert_eq!(err.enhanced_code().to_string(), "5.6.7");

    // Nothing of the refused messages reached the server, and the connection still works.
    assert!(!server.reads().iter().any(|r| r.starts_with(b"MAIL")));
    let result = conn.send(&ascii, b"small\r\n").await.unwrap();
    assert_eq!(result.accepted(), 1);
    conn.quit().await.unwrap();
}

#[tokio::test]
async fn opportunistic_tls_encrypts_with_an_unverifiable_certificate() {
    let pki = test_pki(&["mx.test"]);
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server),
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(
        server.addr,
        "mx.test",
        &client_config(TlsPolicy::OpportunisticUnverified),
    )
    .await
    .unwrap();
    assert!(conn.is_tls());
    let info = conn.tls_info().unwrap();
    assert!(!info.verified, "{info}");
    assert!(info.protocol.starts_with("TLSv1."), "{info}");
    assert!(
        !conn.has("STARTTLS"),
        "the EHLO after the handshake is the one kept"
    );
    conn.send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap();
    conn.quit().await.unwrap();
    let messages = server.messages();
    assert!(messages[0].tls);
    // The transaction was not visible on the wire in clear text.
    assert!(!server.reads().iter().any(|r| r.starts_with(b"MAIL")) || messages[0].tls);
}

#[tokio::test]
async fn require_verified_fails_on_an_unknown_ca_and_succeeds_with_it() {
    let pki = test_pki(&["mx.test"]);
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server.clone()),
        ..Behaviour::default()
    })
    .await;
    let err = Connection::connect(
        server.addr,
        "mx.test",
        &client_config(TlsPolicy::RequireVerified),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Tls(TlsError::CertificateInvalid {
                problem: CertificateProblem::UnknownIssuer,
                ..
            })
        ),
        "{err:?}"
    );

    let config = client_config(TlsPolicy::RequireVerified).with_root(pki.ca.clone());
    let conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(conn.tls_info().unwrap().verified);
    conn.quit().await.unwrap();

    // Right CA, wrong name.
    let err = Connection::connect(server.addr, "other.test", &config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(TlsError::NameMismatch { ref name, ref presented })
            if name == "other.test" && presented == &["mx.test"]),
        "{err:?}"
    );

    // Opportunistic with the CA known: verified too.
    let config = client_config(TlsPolicy::OpportunisticUnverified).with_root(pki.ca);
    let conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(conn.tls_info().unwrap().verified);
}

#[tokio::test]
async fn require_verified_fails_without_starttls_and_none_never_uses_it() {
    let plain = TestServer::local(Behaviour::default()).await;
    let err = Connection::connect(
        plain.addr,
        "mx.test",
        &client_config(TlsPolicy::RequireVerified),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::StartTlsNotOffered), "{err:?}");

    let pki = test_pki(&["mx.test"]);
    let tls = TestServer::local(Behaviour {
        tls: Some(pki.server),
        ..Behaviour::default()
    })
    .await;
    let conn = Connection::connect(tls.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap();
    assert!(!conn.is_tls());
    assert!(conn.has("STARTTLS"));
}

#[tokio::test]
async fn bytes_injected_after_starttls_220_are_discarded() {
    let pki = test_pki(&["mx.test"]);
    // A man in the middle appends a fake EHLO reply and a fake MAIL reply in clear text.
    let injected = b"250-evil.test\r\n250 PIPELINING\r\n554 5.7.1 injected\r\n".to_vec();
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server),
        inject_after_starttls: injected.clone(),
        size: Some(5000),
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(
        server.addr,
        "mx.test",
        &client_config(TlsPolicy::OpportunisticUnverified),
    )
    .await
    .unwrap();
    assert!(conn.is_tls());
    // The real EHLO reply (read inside TLS) is the one in use, not the injected one.
    assert_eq!(conn.ehlo().unwrap().domain, "mx.test");
    assert_eq!(conn.ehlo().unwrap().size(), Some(5000));
    assert_eq!(conn.discarded_after_starttls(), injected.len());
    let result = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap();
    assert_eq!(result.accepted(), 1);
}

#[tokio::test]
async fn malformed_reply_is_an_error_with_the_raw_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    });
    let err = Connection::connect(addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap_err();
    match &err {
        ClientError::MalformedReply(e) => assert_eq!(e.line(), "HTTP/1.1 400 Bad Request"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("HTTP/1.1 400 Bad Request"));
}

#[tokio::test]
async fn greeting_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        drop(s);
    });
    let mut config = client_config(TlsPolicy::None);
    config.timeouts.greeting = std::time::Duration::from_millis(200);
    let err = Connection::connect(addr, "mx.test", &config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { stage: "greeting" }),
        "{err:?}"
    );
    hold.abort();
}

#[tokio::test]
async fn connection_lost_at_end_of_data_is_a_transient_error() {
    let server = TestServer::local(Behaviour {
        drop_at_data_end: true,
        ..Behaviour::default()
    })
    .await;
    let mut conn = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
        .await
        .unwrap();
    let err = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed {
                stage: "end of data"
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_permanent());
    // The whole message went out: the server may have taken it.
    assert!(conn.outcome_unknown());
    let again = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap_err();
    assert!(matches!(again, ClientError::Broken), "{again:?}");
    // Nothing was sent this time.
    assert!(!conn.outcome_unknown());
}

#[tokio::test]
async fn dsn_parameters_only_when_offered() {
    use smtp_proto::param::{Notify, Ret};
    for dsn in [false, true] {
        let server = TestServer::local(Behaviour {
            dsn,
            ..Behaviour::default()
        })
        .await;
        let mut conn = Connection::connect(server.addr, "mx.test", &client_config(TlsPolicy::None))
            .await
            .unwrap();
        let mut env = envelope("<a@client.test>", &["<b@mx.test>"]);
        env.ret = Some(Ret::Hdrs);
        env.envid = Some(smtp_proto::param::XText::encode("id+1"));
        env.rcpts[0].notify = Some(Notify {
            failure: true,
            ..Notify::default()
        });
        conn.send(&env, MESSAGE).await.unwrap();
        let reads = server.reads();
        let all = String::from_utf8_lossy(&reads.concat()).into_owned();
        if dsn {
            assert!(
                all.contains("MAIL FROM:<a@client.test> RET=HDRS ENVID=id+2B1\r\n"),
                "{all}"
            );
            assert!(
                all.contains("RCPT TO:<b@mx.test> NOTIFY=FAILURE\r\n"),
                "{all}"
            );
        } else {
            assert!(all.contains("MAIL FROM:<a@client.test>\r\n"), "{all}");
            assert!(all.contains("RCPT TO:<b@mx.test>\r\n"), "{all}");
        }
    }
}

/// A raw TCP peer that answers a whole session, up to the `250` for the message, and then
/// never reads again nor answers QUIT. The QUIT from `quit_in_background` must end within
/// its grace (the command timeout, shorter than `QUIT_GRACE` here): the spawned task closes
/// the socket, which the peer sees as EOF (or a reset) once it reads again.
#[tokio::test]
async fn background_quit_closes_the_socket_of_a_peer_that_stops_reading() {
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let peer = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut()
            .write_all(b"220 mx.test ESMTP\r\n")
            .await
            .unwrap();
        let mut line = String::new();
        let mut in_data = false;
        loop {
            line.clear();
            assert!(
                s.read_line(&mut line).await.unwrap() > 0,
                "client left early"
            );
            let answer: &[u8] = if in_data {
                if line != ".\r\n" {
                    continue;
                }
                in_data = false;
                b"250 2.0.0 Stored\r\n"
            } else if line.starts_with("EHLO") {
                b"250 mx.test\r\n"
            } else if line.starts_with("DATA") {
                in_data = true;
                b"354 Go ahead\r\n"
            } else {
                b"250 2.0.0 OK\r\n"
            };
            s.get_mut().write_all(answer).await.unwrap();
            if answer.starts_with(b"250 2.0.0 Stored") {
                break;
            }
        }
        // From here on, nothing is read (the QUIT stays unread) and nothing answered.
        stopped_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Reading again now: the client must have closed its socket by then.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .map(|r| r.map(|_| rest))
    });
    let mut config = client_config(TlsPolicy::None);
    config.timeouts.command = Duration::from_millis(300);
    let mut conn = Connection::connect(addr, "mx.test", &config).await.unwrap();
    let result = conn
        .send(&envelope("<a@client.test>", &["<b@mx.test>"]), MESSAGE)
        .await
        .unwrap();
    assert_eq!(result.accepted(), 1);
    stopped_rx.await.unwrap();
    conn.quit_in_background();
    let seen = peer.await.unwrap();
    match seen {
        Ok(Ok(rest)) => assert!(rest.starts_with(b"QUIT"), "{rest:?}"),
        // A reset is a close as well.
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the client still holds the socket after its QUIT grace"),
    }
}

/// A HELO name that is not a domain (CR LF and a command inside, a space, an empty one) is
/// refused before connecting: the server sees no connection at all.
#[tokio::test]
async fn a_helo_name_cannot_smuggle_commands() {
    let server = TestServer::local(Behaviour::default()).await;
    for bad in [
        "client.test\r\nMAIL FROM:<evil@x>",
        "client.test\nRSET",
        "two words",
        "",
        "bad\0name",
        "ünï.example",
    ] {
        let mut config = client_config(TlsPolicy::None);
        config.helo_name = bad.to_owned();
        match Connection::connect(server.addr, "mx.test", &config).await {
            Err(ClientError::InvalidHeloName(n)) => assert_eq!(n, bad),
            other => panic!("{bad:?}: {other:?}"),
        }
        let e = ClientError::InvalidHeloName(bad.to_owned());
        assert!(!e.is_permanent());
        assert_eq!(e.enhanced_code().to_string(), "4.3.5");
    }
    assert_eq!(server.connections(), 0);
    // Domains and address literals are fine.
    for good in ["client.test", "localhost", "[127.0.0.1]", "[IPv6:::1]"] {
        let mut config = client_config(TlsPolicy::None);
        config.helo_name = good.to_owned();
        let conn = Connection::connect(server.addr, "mx.test", &config).await;
        assert!(conn.is_ok(), "{good}: {conn:?}");
        conn.unwrap().quit().await.unwrap();
    }
}
