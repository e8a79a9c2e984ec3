//! The workspace's client against the workspace's server library, both for real on loopback:
//! per-recipient results, PIPELINING seen on the wire, STARTTLS (opportunistic and verified),
//! message bytes arriving as sent, SIZE, connection reuse, and `Deliverer` over a test DNS.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use server_support::{pki, start, Pki, Running};
use smtp_client::testdns::TestDns;
use smtp_client::{
    CertificateProblem, ClientConfig, ClientError, Connection, Deliverer, Envelope, RcptOutcome,
    RcptResult, Resolver, Timeouts, TlsError, TlsPolicy,
};
use smtp_proto::address::{parse_forward_path, parse_reverse_path};
use smtp_proto::Reply;
use smtp_server::{Limits, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::CertificateDer;

fn config(tls: TlsPolicy) -> ClientConfig {
    ClientConfig::new("client.test")
        .with_tls(tls)
        .with_timeouts(Timeouts::all(Duration::from_secs(10)))
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        parse_reverse_path(from).unwrap().into_owned(),
        to.iter()
            .map(|t| parse_forward_path(t).unwrap().into_owned())
            .collect(),
    )
}

fn rcpts_of(received: &server_support::Received) -> Vec<String> {
    received
        .envelope
        .rcpts
        .iter()
        .map(|(to, _)| to.to_string())
        .collect()
}

fn tls_config(p: &Pki) -> TlsConfig {
    TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap()
}

async fn start_tls(p: &Pki) -> Running {
    let tls = tls_config(p);
    start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await
}

/// A transparent TCP relay in front of the server that records every read it makes of the
/// client's bytes, so a test can see how the client's commands were grouped into writes.
struct Tap {
    addr: SocketAddr,
    reads: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Tap {
    async fn start(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&reads);
        let task = tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(upstream).await.unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let down = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                log.lock().unwrap().push(buf[..n].to_vec());
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
            let _ = down.await;
        });
        Tap { addr, reads, task }
    }

    /// Waits for both sides to close, then returns the client's reads as text.
    async fn finish(self) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the relay finished")
            .unwrap();
        self.reads
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

/// The body exercising the encoder: lines starting with dots (one a lone dot, which would
/// end the message unstuffed), bare LF and bare CR line ends, 8-bit octets, no final line break.
const AWKWARD_BODY: &[u8] = b"Subject: awkward\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nbare LF\nbare CR\rcaf\xc3\xa9 \xff\xfe raw\r\n. \r\nlast line without break";

/// What the server must hand to the handler for [`AWKWARD_BODY`]: line ends as CRLF, a CRLF
/// added at the end, dots as written.
const AWKWARD_RECEIVED: &[u8] = b"Subject: awkward\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nbare LF\r\nbare CR\r\ncaf\xc3\xa9 \xff\xfe raw\r\n. \r\nlast line without break\r\n";

#[tokio::test]
async fn plain_transaction_with_a_refused_recipient_is_pipelined() {
    let srv = start(|b| b.listen("127.0.0.1:0".parse().unwrap())).await;
    let tap = Tap::start(srv.addr()).await;

    let mut conn = Connection::connect(
        tap.addr,
        "mx.test",
        &config(TlsPolicy::OpportunisticUnverified),
    )
    .await
    .unwrap();
    assert_eq!(conn.greeting().code(), 220);
    assert!(!conn.is_tls(), "no TLS configured on the server");
    for ext in ["PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES"] {
        assert!(conn.has(ext), "server does not offer {ext}");
    }
    let env = envelope(
        "<alice@example.net>",
        &[
            "<bob@example.org>",
            "<bad@example.org>",
            "<carol@example.org>",
        ],
    );
    let result = conn.send(&env, AWKWARD_BODY).await.unwrap();
    conn.quit().await.unwrap();
    let reads = tap.finish().await;

    // What the client reports, per recipient, with enhanced codes.
    assert_eq!(result.mail.code(), 250);
    assert_eq!(result.mail.enhanced().unwrap().to_string(), "2.1.0");
    let codes: Vec<(u16, String)> = result
        .rcpt_replies
        .iter()
        .map(|r| (r.code(), r.enhanced().unwrap().to_string()))
        .collect();
    assert_eq!(
        codes,
        [
            (250, "2.1.5".to_owned()),
            (550, "5.1.1".to_owned()),
            (250, "2.1.5".to_owned())
        ]
    );
    let data = result.data.clone().unwrap();
    assert_eq!(data.to_string(), "250 2.0.0 Stored");
    assert_eq!(result.accepted(), 2);
    assert_eq!(result.rcpts[0], RcptResult::Accepted(data.clone()));
    match &result.rcpts[1] {
        RcptResult::Rejected(r) => assert_eq!(r.to_string(), "550 5.1.1 No such user"),
        other => panic!("bad@ should be refused: {other:?}"),
    }
    assert_eq!(result.rcpts[2], RcptResult::Accepted(data));

    // What the handler got: the envelope without the refused recipient, the bytes as sent.
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.envelope.helo, "client.test");
    assert_eq!(m.envelope.from.to_string(), "<alice@example.net>");
    assert_eq!(rcpts_of(m), ["<bob@example.org>", "<carol@example.org>"]);
    assert_eq!(
        m.envelope.mail_params.size,
        Some(AWKWARD_RECEIVED.len() as u64),
        "SIZE= declared by the client is the size the server received"
    );
    assert_eq!(
        m.envelope.mail_params.body,
        Some(smtp_proto::param::Body::EightBitMime)
    );
    assert_eq!(
        m.body,
        AWKWARD_RECEIVED,
        "received:\n{}",
        String::from_utf8_lossy(&m.body)
    );

    // PIPELINING on the wire: MAIL, every RCPT and DATA reached the server in one read.
    let batch = reads
        .iter()
        .find(|r| r.starts_with("MAIL FROM:"))
        .unwrap_or_else(|| panic!("no read starting with MAIL: {reads:?}"));
    assert_eq!(
        batch,
        &format!(
            "MAIL FROM:<alice@example.net> SIZE={} BODY=8BITMIME\r\n\
             RCPT TO:<bob@example.org>\r\nRCPT TO:<bad@example.org>\r\n\
             RCPT TO:<carol@example.org>\r\nDATA\r\n",
            AWKWARD_RECEIVED.len()
        )
    );
    // And the content went out dot-stuffed.
    let all: String = reads.concat();
    assert!(
        all.contains("\r\n..leading dot\r\n...two dots\r\n..\r\n"),
        "{all:?}"
    );
    assert!(all.contains("\r\n.. \r\nlast line without break\r\n.\r\nQUIT\r\n"));
}

#[tokio::test]
async fn connection_reused_for_two_messages() {
    let srv = start(|b| b.listen("127.0.0.1:0".parse().unwrap())).await;
    let mut conn = Connection::connect(srv.addr(), "mx.test", &config(TlsPolicy::None))
        .await
        .unwrap();
    let first = conn
        .send(
            &envelope("<alice@example.net>", &["<bob@example.org>"]),
            b"Subject: one\r\n\r\nfirst\r\n",
        )
        .await
        .unwrap();
    let second = conn
        .send(
            &envelope("<>", &["<carol@example.org>", "<dave@example.org>"]),
            b"Subject: two\r\n\r\nsecond\r\n",
        )
        .await
        .unwrap();
    assert_eq!(conn.noop().await.unwrap().code(), 250);
    conn.quit().await.unwrap();
    assert_eq!(first.accepted(), 1);
    assert_eq!(second.accepted(), 2);

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].envelope.from.to_string(), "<alice@example.net>");
    assert_eq!(rcpts_of(&msgs[0]), ["<bob@example.org>"]);
    assert_eq!(msgs[0].body, b"Subject: one\r\n\r\nfirst\r\n");
    assert_eq!(msgs[1].envelope.from.to_string(), "<>");
    assert_eq!(
        rcpts_of(&msgs[1]),
        ["<carol@example.org>", "<dave@example.org>"]
    );
    assert_eq!(msgs[1].body, b"Subject: two\r\n\r\nsecond\r\n");
    // One connection, one EHLO: the second message followed an RSET on the same session.
    let events = srv.rec.events();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("connect")).count(),
        1
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("hello")).count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn starttls_opportunistic_with_the_test_certificate() {
    let p = pki("interop");
    let srv = start_tls(&p).await;
    let mut conn = Connection::connect(
        srv.addr(),
        "localhost",
        &config(TlsPolicy::OpportunisticUnverified),
    )
    .await
    .unwrap();
    let info = conn.tls_info().cloned().expect("STARTTLS was used");
    assert!(
        !info.verified,
        "the test CA is not trusted by this client: {info}"
    );
    assert!(!conn.has("STARTTLS"), "STARTTLS offered again after TLS");
    assert_eq!(conn.discarded_after_starttls(), 0);
    let result = conn
        .send(
            &envelope(
                "<alice@example.net>",
                &["<bob@example.org>", "<bad@example.org>"],
            ),
            AWKWARD_BODY,
        )
        .await
        .unwrap();
    conn.quit().await.unwrap();
    assert!(result.rcpts[0].is_accepted());
    assert_eq!(result.rcpts[1].reply().code(), 550);

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    let tls = msgs[0]
        .envelope
        .tls
        .as_ref()
        .expect("message came over TLS");
    assert_eq!(tls.protocol, "TLSv1.3");
    assert_eq!(rcpts_of(&msgs[0]), ["<bob@example.org>"]);
    assert_eq!(msgs[0].body, AWKWARD_RECEIVED);
    let events = srv.rec.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("hello"))
            .collect::<Vec<_>>(),
        ["hello client.test true", "hello client.test true"],
        "EHLO before and after STARTTLS: {events:?}"
    );
    assert!(events.contains(&"tls TLSv1.3".to_owned()), "{events:?}");
}

#[tokio::test]
async fn starttls_require_verified_with_the_test_ca() {
    let p = pki("verified");
    let srv = start_tls(&p).await;

    let good = config(TlsPolicy::RequireVerified).with_root(p.ca_der.clone());
    let mut conn = Connection::connect(srv.addr(), "localhost", &good)
        .await
        .unwrap();
    assert!(conn.tls_info().unwrap().verified);
    let result = conn
        .send(
            &envelope("<alice@example.net>", &["<bob@example.org>"]),
            b"Subject: verified\r\n\r\nhello\r\n",
        )
        .await
        .unwrap();
    conn.quit().await.unwrap();
    assert_eq!(result.accepted(), 1);

    // Without the CA, or for a name the certificate does not cover: no session, no message.
    let untrusted = config(TlsPolicy::RequireVerified);
    let err = Connection::connect(srv.addr(), "localhost", &untrusted)
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
    let err = Connection::connect(srv.addr(), "mx.elsewhere.test", &good)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(TlsError::NameMismatch { .. })),
        "{err:?}"
    );

    // A server without STARTTLS cannot meet the policy.
    let plain = start(|b| b.listen("127.0.0.1:0".parse().unwrap())).await;
    let err = Connection::connect(plain.addr(), "localhost", &good)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::StartTlsNotOffered), "{err:?}");

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].envelope.tls.is_some());
    assert_eq!(msgs[0].body, b"Subject: verified\r\n\r\nhello\r\n");
    assert!(plain.rec.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_to_the_servers_implicit_tls_listener_verifies_and_resumes() {
    let p = pki("implicit");
    let tls = tls_config(&p);
    let srv = start(move |b| {
        b.implicit_tls_listen("127.0.0.1:0".parse().unwrap())
            .tls(tls)
    })
    .await;
    // Port 465 style, by default verified; the certificate is for "localhost".
    let client = config(TlsPolicy::Implicit).with_root(p.ca_der.clone());
    let mut resumed = Vec::new();
    for i in 0..2 {
        let mut conn = Connection::connect(srv.addr(), "localhost", &client)
            .await
            .unwrap();
        let info = conn.tls_info().unwrap().clone();
        assert!(info.verified, "{info}");
        assert!(!conn.has("STARTTLS"));
        resumed.push(info.resumed);
        let result = conn
            .send(
                &envelope("<alice@example.net>", &["<bob@example.org>"]),
                format!("Subject: implicit {i}\r\n\r\nhello\r\n").as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(result.accepted(), 1);
        conn.quit().await.unwrap();
    }
    // The second connection with the same configuration resumed the first's TLS session.
    assert_eq!(resumed, [false, true]);
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.envelope.tls.is_some()));
    // The server's side of the same sessions, in the same type: resumed the second time; no
    // client certificate, so nothing verified.
    let server_side: Vec<(bool, bool)> = msgs
        .iter()
        .map(|m| {
            let t = m.envelope.tls.as_ref().unwrap();
            (t.resumed, t.verified)
        })
        .collect();
    assert_eq!(server_side, [(false, false), (true, false)]);
    // One EHLO per session: no STARTTLS inside implicit TLS.
    let hellos = srv
        .rec
        .events()
        .into_iter()
        .filter(|e| e.starts_with("hello"))
        .count();
    assert_eq!(hellos, 2);

    // Without the CA: refused before any SMTP.
    let err = Connection::connect(srv.addr(), "localhost", &config(TlsPolicy::Implicit))
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
    assert_eq!(srv.rec.messages().len(), 2);
}

#[tokio::test]
async fn starttls_sessions_resume_against_the_server_library() {
    let p = pki("resume");
    let srv = start_tls(&p).await;
    let client = config(TlsPolicy::RequireVerified).with_root(p.ca_der.clone());
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let conn = Connection::connect(srv.addr(), "localhost", &client)
            .await
            .unwrap();
        resumed.push(conn.tls_info().unwrap().resumed);
        conn.quit().await.unwrap();
    }
    assert_eq!(resumed, [false, true, true]);
}

#[tokio::test]
async fn size_limit_refused_before_sending_and_boundary_agrees() {
    let srv = start(|b| {
        let mut l = Limits::default();
        l.max_message_size = Some(100);
        b.listen("127.0.0.1:0".parse().unwrap()).limits(l)
    })
    .await;
    let mut conn = Connection::connect(srv.addr(), "mx.test", &config(TlsPolicy::None))
        .await
        .unwrap();
    assert_eq!(conn.ehlo().unwrap().size(), Some(100));
    let env = envelope("<alice@example.net>", &["<bob@example.org>"]);

    // 101 octets on the wire (the bare LF counts as CRLF): refused by the client, nothing sent.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(big.len() + 83, b'x');
    big.push(b'\n');
    assert_eq!(smtp_client::codec::wire_size(&big), 101);
    match conn.send(&env, &big).await {
        Err(ClientError::TooLarge { size, limit }) => assert_eq!((size, limit), (101, 100)),
        other => panic!("expected TooLarge: {other:?}"),
    }
    assert!(
        !srv.rec.events().iter().any(|e| e.starts_with("mail")),
        "MAIL was sent: {:?}",
        srv.rec.events()
    );

    // Exactly 100 octets: the client sends it and the server agrees it fits.
    let mut fits = b"Subject: fits\r\n\r\n".to_vec();
    fits.resize(98, b'y');
    fits.extend_from_slice(b"\r\n");
    assert_eq!(fits.len(), 100);
    let result = conn.send(&env, &fits).await.unwrap();
    conn.quit().await.unwrap();
    assert_eq!(result.data.unwrap().code(), 250);
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, fits);
    assert_eq!(msgs[0].envelope.mail_params.size, Some(100));
}

/// A CA and a leaf certificate for `names`, signed by it.
fn pki_for(names: &[&str]) -> (CertificateDer<'static>, TlsConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "interop test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let tls = TlsConfig::from_pem(leaf.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    (ca.der().clone(), tls)
}

fn outcome_text(o: &RcptOutcome) -> String {
    match o {
        RcptOutcome::Delivered(r) => format!("delivered {r}"),
        RcptOutcome::Transient(f) => format!("transient {} {f}", f.enhanced),
        RcptOutcome::Permanent(f) => format!("permanent {} {f}", f.enhanced),
    }
}

#[tokio::test]
async fn deliverer_end_to_end_over_test_dns() {
    let (ca, tls) = pki_for(&["mx1.example.org", "mx2.example.org"]);
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let port = srv.addr().port();
    // mx1 (preferred) is 127.0.0.2, where nothing listens on that port; mx2 is the server.
    let dns = TestDns::builder()
        .mx("example.org", 10, "mx1.example.org")
        .mx("example.org", 20, "mx2.example.org")
        .a("mx1.example.org", [127, 0, 0, 2].into())
        .a("mx2.example.org", [127, 0, 0, 1].into())
        .start()
        .await
        .unwrap();
    let resolver = Resolver::with_nameserver(dns.addr()).unwrap();
    let deliverer = Deliverer::new(
        resolver,
        config(TlsPolicy::RequireVerified).with_root(ca.clone()),
    )
    .with_port(port);

    let env = envelope(
        "<alice@example.net>",
        &[
            "<bob@example.org>",
            "<bad@example.org>",
            "<carol@example.org>",
        ],
    );
    let report = deliverer.deliver("example.org", &env, AWKWARD_BODY).await;

    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(
        report.delivered_via,
        Some((
            "mx2.example.org".to_owned(),
            SocketAddr::from(([127, 0, 0, 1], port))
        ))
    );
    assert!(report.tls);
    assert_eq!(report.attempts.len(), 2, "{:?}", report.attempts);
    assert_eq!(report.attempts[0].host, "mx1.example.org");
    assert_eq!(
        report.attempts[0].addr,
        SocketAddr::from(([127, 0, 0, 2], port))
    );
    assert!(report.attempts[0].error.is_some());
    assert_eq!(report.attempts[1].error, None);

    let outcomes: Vec<(String, String)> = report
        .rcpts
        .iter()
        .map(|(r, o)| (r.to_string(), outcome_text(o)))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "<bob@example.org>".to_owned(),
                "delivered 250 2.0.0 Stored".to_owned()
            ),
            (
                "<bad@example.org>".to_owned(),
                "permanent 5.1.1 550 5.1.1 No such user".to_owned()
            ),
            (
                "<carol@example.org>".to_owned(),
                "delivered 250 2.0.0 Stored".to_owned()
            ),
        ]
    );
    assert!(!report.all_delivered());
    match &report.rcpts[1].1 {
        RcptOutcome::Permanent(f) => {
            assert_eq!(f.reply.as_ref().map(Reply::code), Some(550));
        }
        other => panic!("{other:?}"),
    }

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert!(m.envelope.tls.is_some());
    assert_eq!(m.envelope.from.to_string(), "<alice@example.net>");
    assert_eq!(rcpts_of(m), ["<bob@example.org>", "<carol@example.org>"]);
    assert_eq!(m.body, AWKWARD_RECEIVED);

    // The server refusing the whole message: every accepted recipient gets that reply.
    let early = envelope("<alice@example.net>", &["<early@example.org>"]);
    let report = deliverer.deliver("example.org", &early, b"x\r\n").await;
    let (rcpt, outcome) = &report.rcpts[0];
    assert_eq!(rcpt.to_string(), "<early@example.org>");
    assert_eq!(
        outcome_text(outcome),
        "permanent 5.6.0 554 5.6.0 Refused without reading"
    );
    assert_eq!(srv.rec.messages().len(), 1);
}
