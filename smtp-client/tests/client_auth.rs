//! SMTP AUTH from the client side, against a scripted peer on loopback that records every
//! line it receives (decrypted after STARTTLS, with a real TLS handshake and a certificate made
//! at test time): the exact bytes on the wire, the refusals before anything is sent, and the
//! typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_client::{
    AuthError, CancelReason, ClientConfig, ClientError, Connection, Credentials, Deliverer,
    Envelope, RcptOutcome, Resolver, Timeouts, TlsPolicy,
};
use smtp_proto::sasl::{encode_base64, Mechanism};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// How the peer behaves.
#[derive(Clone, Default)]
struct Script {
    /// Offer STARTTLS (with a fresh self-signed certificate).
    starttls: bool,
    /// The AUTH mechanisms in the EHLO reply before TLS and inside TLS (`None`: no AUTH line).
    auth_before_tls: Option<&'static str>,
    auth_in_tls: Option<&'static str>,
    /// The replies, in order, to the AUTH command and to each line the client sends after it
    /// until a reply that is not 334 (raw, without CRLF).
    auth_replies: Vec<&'static str>,
}

/// What the peer received: each line, and whether it came inside TLS.
type Lines = Arc<Mutex<Vec<(bool, String)>>>;

struct Peer {
    addr: SocketAddr,
    lines: Lines,
    connections: Arc<Mutex<usize>>,
}

impl Peer {
    fn lines(&self) -> Vec<(bool, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines from the first AUTH on, and whether each was encrypted.
    fn auth_lines(&self) -> Vec<(bool, String)> {
        let lines = self.lines();
        let start = lines
            .iter()
            .position(|(_, l)| l.starts_with("AUTH"))
            .unwrap_or(lines.len());
        lines[start..]
            .iter()
            .take_while(|(_, l)| !l.starts_with("MAIL") && !l.starts_with("QUIT"))
            .cloned()
            .collect()
    }

    fn saw(&self, prefix: &str) -> bool {
        self.lines().iter().any(|(_, l)| l.starts_with(prefix))
    }
}

fn tls_acceptor() -> TlsAcceptor {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

async fn start(script: Script) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: Lines = Arc::default();
    let connections = Arc::new(Mutex::new(0));
    let (l, c) = (lines.clone(), connections.clone());
    let acceptor = tls_acceptor();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            *c.lock().unwrap() += 1;
            let (script, lines, acceptor) = (script.clone(), l.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _ = tcp.write_all(b"220 mx.test ESMTP\r\n").await;
                let mut auth = script.auth_replies.clone().into_iter();
                if talk(&mut tcp, false, &script, &lines, &mut auth).await {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    talk(&mut tls, true, &script, &lines, &mut auth).await;
                }
            });
        }
    });
    Peer {
        addr,
        lines,
        connections,
    }
}

/// Answers lines until the connection ends (false) or STARTTLS was accepted (true).
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    tls: bool,
    script: &Script,
    lines: &Lines,
    auth: &mut std::vec::IntoIter<&'static str>,
) -> bool {
    let mut in_auth = false;
    let mut in_data = false;
    loop {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8];
            match s.read(&mut b).await {
                Ok(1) => line.push(b[0]),
                _ => return false,
            }
            if line.ends_with(b"\r\n") {
                break;
            }
        }
        let line = String::from_utf8(line).unwrap();
        lines.lock().unwrap().push((tls, line.clone()));
        let upper = line.to_ascii_uppercase();
        let answer = if in_data {
            if line == ".\r\n" {
                in_data = false;
                "250 2.0.0 queued".to_owned()
            } else {
                continue;
            }
        } else if in_auth || upper.starts_with("AUTH") {
            let reply = auth.next().unwrap_or("503 5.5.1 no more script");
            in_auth = reply.starts_with("334");
            reply.to_owned()
        } else if upper.starts_with("EHLO") {
            let mut r = "250-mx.test\r\n250-PIPELINING\r\n".to_owned();
            if script.starttls && !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            if let Some(m) = if tls {
                script.auth_in_tls
            } else {
                script.auth_before_tls
            } {
                r.push_str(&format!("250-AUTH {m}\r\n"));
            }
            r.push_str("250 8BITMIME");
            r
        } else if upper.starts_with("STARTTLS") {
            let _ = s.write_all(b"220 2.0.0 go ahead\r\n").await;
            return true;
        } else if upper.starts_with("DATA") {
            in_data = true;
            "354 go ahead".to_owned()
        } else if upper.starts_with("QUIT") {
            let _ = s.write_all(b"221 2.0.0 bye\r\n").await;
            return false;
        } else {
            "250 2.0.0 ok".to_owned()
        };
        if s.write_all(format!("{answer}\r\n").as_bytes())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// The scripted peer's certificate is self-signed: STARTTLS without verification.
fn config() -> ClientConfig {
    ClientConfig::new("client.test")
        .with_tls(TlsPolicy::OpportunisticUnverified)
        .with_timeouts(Timeouts::all(Duration::from_secs(10)))
}

fn alice() -> Credentials {
    Credentials::new("alice", "s3cret").unwrap()
}

fn envelope() -> Envelope {
    common::envelope("<alice@example.org>", &["<bob@example.net>"])
}

fn lines(list: &[&str]) -> Vec<(bool, String)> {
    list.iter().map(|l| (true, format!("{l}\r\n"))).collect()
}

fn auth_error(result: Result<impl std::fmt::Debug, ClientError>) -> AuthError {
    match result {
        Err(ClientError::Auth(e)) => e,
        other => panic!("expected an AUTH error, got {other:?}"),
    }
}

#[tokio::test]
async fn plain_after_starttls_with_the_exact_initial_response_then_mail() {
    let peer = start(Script {
        starttls: true,
        auth_before_tls: None,
        auth_in_tls: Some("LOGIN PLAIN"),
        auth_replies: vec!["235 2.7.0 Authentication successful"],
    })
    .await;
    let config = config().with_credentials(alice());
    let mut conn = Connection::connect(peer.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(conn.is_tls());
    assert_eq!(conn.authenticated(), Some(Mechanism::Plain));
    let result = conn
        .send(&envelope(), b"Subject: hi\r\n\r\nhi\r\n")
        .await
        .unwrap();
    assert_eq!(result.accepted(), 1);
    conn.quit().await.unwrap();
    // base64("\0alice\0s3cret"), inside TLS, then the transaction.
    assert_eq!(
        peer.auth_lines(),
        lines(&["AUTH PLAIN AGFsaWNlAHMzY3JldA=="])
    );
    let all = peer.lines();
    let auth = all.iter().position(|(_, l)| l.starts_with("AUTH")).unwrap();
    let mail = all.iter().position(|(_, l)| l.starts_with("MAIL")).unwrap();
    assert!(auth < mail && all[mail].0);
}

#[tokio::test]
async fn login_answers_both_challenges_in_base64() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("LOGIN"),
        auth_replies: vec!["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 ok"],
        ..Script::default()
    })
    .await;
    let mut conn = Connection::connect(peer.addr, "mx.test", &config())
        .await
        .unwrap();
    assert_eq!(conn.login(&alice()).await.unwrap(), Mechanism::Login);
    assert_eq!(conn.authenticated(), Some(Mechanism::Login));
    conn.quit().await.unwrap();
    assert_eq!(
        peer.auth_lines(),
        lines(&["AUTH LOGIN", "YWxpY2U=", "czNjcmV0"])
    );
}

#[tokio::test]
async fn the_capabilities_after_starttls_decide_the_mechanism() {
    // Before TLS the server claims PLAIN; inside TLS it offers only LOGIN: LOGIN is used.
    let peer = start(Script {
        starttls: true,
        auth_before_tls: Some("PLAIN"),
        auth_in_tls: Some("LOGIN"),
        auth_replies: vec!["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 ok"],
    })
    .await;
    let config = config().with_credentials(alice());
    let conn = Connection::connect(peer.addr, "mx.test", &config)
        .await
        .unwrap();
    assert_eq!(conn.authenticated(), Some(Mechanism::Login));
    assert!(peer
        .lines()
        .iter()
        .all(|(tls, l)| *tls || !l.starts_with("AUTH")));
}

#[tokio::test]
async fn a_challenge_after_the_last_answer_is_cancelled_with_a_star() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("PLAIN"),
        auth_replies: vec!["334 ", "501 5.7.0 cancelled"],
        ..Script::default()
    })
    .await;
    let mut conn = Connection::connect(peer.addr, "mx.test", &config())
        .await
        .unwrap();
    let e = auth_error(conn.login(&alice()).await);
    let AuthError::Cancelled {
        mechanism,
        reason,
        reply,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*mechanism, Mechanism::Plain);
    assert_eq!(*reason, CancelReason::UnexpectedChallenge { round: 2 });
    assert_eq!(reply.code(), 501);
    assert_eq!(
        peer.auth_lines(),
        lines(&["AUTH PLAIN AGFsaWNlAHMzY3JldA==", "*"])
    );
    // The session goes on.
    assert_eq!(conn.noop().await.unwrap().code(), 250);
    assert_eq!(conn.authenticated(), None);
}

#[tokio::test]
async fn a_challenge_that_is_not_base64_is_cancelled() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("LOGIN"),
        auth_replies: vec!["334 Username?!", "501 5.7.0 cancelled"],
        ..Script::default()
    })
    .await;
    let mut conn = Connection::connect(peer.addr, "mx.test", &config())
        .await
        .unwrap();
    let e = auth_error(conn.login(&alice()).await);
    assert!(
        matches!(
            e,
            AuthError::Cancelled {
                reason: CancelReason::MalformedChallenge,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(peer.auth_lines(), lines(&["AUTH LOGIN", "*"]));
}

#[tokio::test]
async fn refusals_are_typed_and_keep_the_reply() {
    for (reply, permanent) in [
        ("535 5.7.8 Authentication credentials invalid", true),
        ("454 4.7.0 Temporary authentication failure", false),
    ] {
        let peer = start(Script {
            starttls: true,
            auth_in_tls: Some("PLAIN LOGIN"),
            auth_replies: vec![reply],
            ..Script::default()
        })
        .await;
        let config = config().with_credentials(alice());
        let err = Connection::connect(peer.addr, "mx.test", &config)
            .await
            .unwrap_err();
        assert!(!err.is_permanent(), "a failed login defers: {err}");
        let code = err.reply().map(|r| r.code());
        let e = auth_error(Err::<(), _>(err));
        match (&e, permanent) {
            (AuthError::Rejected { reply, .. }, true) => {
                assert_eq!(reply.code(), 535);
                assert_eq!(reply.enhanced().unwrap().to_string(), "5.7.8");
            }
            (AuthError::Temporary { reply, .. }, false) => assert_eq!(reply.code(), 454),
            _ => panic!("{e:?}"),
        }
        assert_eq!(code, Some(if permanent { 535 } else { 454 }));
        assert!(e.to_string().contains(&reply[4..]), "{e}");
        // Nothing after the failed AUTH but the goodbye.
        assert!(!peer.saw("MAIL"));
    }
}

#[tokio::test]
async fn without_tls_the_password_is_not_sent() {
    // The server offers AUTH in clear text and no STARTTLS; then STARTTLS offered but the
    // policy says never.
    for (starttls, policy) in [
        (false, TlsPolicy::OpportunisticUnverified),
        (true, TlsPolicy::None),
    ] {
        let peer = start(Script {
            starttls,
            auth_before_tls: Some("PLAIN LOGIN"),
            auth_replies: vec!["235 2.7.0 ok"],
            ..Script::default()
        })
        .await;
        let config = config().with_tls(policy).with_credentials(alice());
        let e = auth_error(Connection::connect(peer.addr, "mx.test", &config).await);
        assert_eq!(e, AuthError::EncryptionRequired);
        // The QUIT goes from a background task; give it a moment, then check that no AUTH
        // (nor anything with the password) reached the peer.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!peer.saw("AUTH"), "{:?}", peer.lines());
        let b64 = encode_base64(b"s3cret");
        assert!(peer
            .lines()
            .iter()
            .all(|(_, l)| !l.contains("s3cret") && !l.contains(&b64)));
    }
}

#[tokio::test]
async fn plaintext_only_when_explicitly_allowed() {
    let peer = start(Script {
        auth_before_tls: Some("PLAIN"),
        auth_replies: vec!["235 2.7.0 ok"],
        ..Script::default()
    })
    .await;
    let config = config().with_credentials(alice().allow_plaintext_auth());
    let conn = Connection::connect(peer.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(!conn.is_tls());
    assert_eq!(conn.authenticated(), Some(Mechanism::Plain));
    assert_eq!(
        peer.auth_lines(),
        vec![(false, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n".to_owned())]
    );
}

#[tokio::test]
async fn no_known_mechanism_or_no_auth_is_not_offered() {
    for offered in [Some("CRAM-MD5 XOAUTH2"), None] {
        let peer = start(Script {
            starttls: true,
            auth_in_tls: offered,
            ..Script::default()
        })
        .await;
        let mut conn = Connection::connect(peer.addr, "mx.test", &config())
            .await
            .unwrap();
        let e = auth_error(conn.login(&alice()).await);
        let want: Vec<String> = offered
            .map(|o| o.split(' ').map(str::to_owned).collect())
            .unwrap_or_default();
        assert_eq!(e, AuthError::NotOffered { offered: want });
        assert!(!peer.saw("AUTH"));
    }
}

#[tokio::test]
async fn a_long_plain_message_waits_for_the_empty_challenge() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("PLAIN"),
        auth_replies: vec!["334 ", "235 2.7.0 ok"],
        ..Script::default()
    })
    .await;
    let password = "p".repeat(600);
    let creds = Credentials::new("alice", password.as_str()).unwrap();
    let mut conn = Connection::connect(peer.addr, "mx.test", &config())
        .await
        .unwrap();
    assert_eq!(conn.login(&creds).await.unwrap(), Mechanism::Plain);
    let message = [&b"\0alice\0"[..], password.as_bytes()].concat();
    assert_eq!(
        peer.auth_lines(),
        lines(&["AUTH PLAIN", &encode_base64(&message)])
    );
}

#[tokio::test]
async fn deliverer_defers_on_535_and_never_falls_back_to_clear_text() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("PLAIN"),
        auth_replies: vec!["535 5.7.8 bad password"],
        ..Script::default()
    })
    .await;
    // A closed port as name server: nothing here may use DNS.
    let dns = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resolver = Resolver::with_nameserver(dns.local_addr().unwrap()).unwrap();
    let deliverer = Deliverer::new(resolver, config().with_credentials(alice()))
        .with_smarthost("127.0.0.1", peer.addr.port());
    let report = deliverer
        .deliver("example.net", &envelope(), b"Subject: x\r\n\r\nx\r\n")
        .await;
    let (_, outcome) = &report.rcpts[0];
    let RcptOutcome::Transient(f) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(f.text.contains("535 5.7.8 bad password"), "{}", f.text);
    assert_eq!(f.enhanced.class(), 4);
    assert!(!peer.saw("MAIL"));

    // STARTTLS offered but the handshake fails: with credentials, no second connection in
    // clear text.
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = broken.local_addr().unwrap().port();
    let accepts = Arc::new(Mutex::new(0));
    let a = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = broken.accept().await {
            *a.lock().unwrap() += 1;
            tokio::spawn(async move {
                let _ = tcp.write_all(b"220 mx.test\r\n").await;
                let mut buf = [0u8; 512];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"250-mx.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
                    .await;
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"220 go ahead\r\nnot TLS at all\r\n").await;
            });
        }
    });
    let deliverer = deliverer.with_smarthost("127.0.0.1", port);
    let report = deliverer
        .deliver("example.net", &envelope(), b"Subject: x\r\n\r\nx\r\n")
        .await;
    assert!(matches!(report.rcpts[0].1, RcptOutcome::Transient(_)));
    assert_eq!(report.tls_fallback, None);
    assert_eq!(*accepts.lock().unwrap(), 1, "{:?}", report.attempts);
    assert_eq!(*peer.connections.lock().unwrap(), 1);
}

/// Credentials without a smarthost are never given to a domain's mail hosts: the MX (here an
/// address literal, so no DNS) is offered AUTH but gets no login, and the message goes.
#[tokio::test]
async fn deliverer_never_logs_in_to_mx_hosts() {
    let peer = start(Script {
        starttls: true,
        auth_in_tls: Some("PLAIN LOGIN"),
        auth_replies: vec!["235 2.7.0 ok"],
        ..Script::default()
    })
    .await;
    let dns = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resolver = Resolver::with_nameserver(dns.local_addr().unwrap()).unwrap();
    let deliverer =
        Deliverer::new(resolver, config().with_credentials(alice())).with_port(peer.addr.port());
    let report = deliverer
        .deliver("[127.0.0.1]", &envelope(), b"Subject: x\r\n\r\nx\r\n")
        .await;
    assert!(peer.saw("MAIL"), "{:?} {:?}", report.attempts, peer.lines());
    assert!(
        !peer.saw("AUTH"),
        "a password went to an MX host: {:?}",
        peer.lines()
    );
}
