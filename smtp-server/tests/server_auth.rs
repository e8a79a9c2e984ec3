//! SMTP AUTH over real TCP and TLS: lettre as the client (PLAIN and LOGIN over STARTTLS),
//! raw sessions for the refusals, implicit TLS, and the brute-force limits.
#![allow(clippy::unwrap_used)]

mod server_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use server_support::{pki, server_name, start, tls_connector, Client, Pki, Running};
use smtp_proto::sasl::encode_base64;
use smtp_server::{Limits, TlsConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PLAIN_OK: &str = "AGFsaWNlQGV4YW1wbGUub3JnAHMzY3JldA=="; // \0alice@example.org\0s3cret

fn plain(user: &str, pass: &str) -> String {
    encode_base64(format!("\0{user}\0{pass}").as_bytes())
}

fn message() -> Message {
    Message::builder()
        .from("Alice <alice@example.org>".parse::<Mailbox>().unwrap())
        .to("Bob <bob@example.net>".parse::<Mailbox>().unwrap())
        .subject("submitted")
        .body(String::from("Hello.\r\n"))
        .unwrap()
}

/// A server offering PLAIN and LOGIN after TLS, with `limits`, on a plain listener (STARTTLS),
/// an implicit-TLS one and a plain one named `noauth`.
async fn server(p: &Pki, limits: Limits) -> Running {
    let tls = TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
    start(move |b| {
        b.listen("127.0.0.1:0".parse().unwrap())
            .implicit_tls_listen("127.0.0.1:0".parse().unwrap())
            .listen_named("noauth", "127.0.0.1:0".parse().unwrap())
            .tls(tls)
            .limits(limits)
            .auth([smtp_server::Mechanism::Plain, smtp_server::Mechanism::Login])
    })
    .await
}

fn fast_limits() -> Limits {
    let mut l = Limits::default();
    l.auth_failure_delay = Duration::from_millis(1);
    l
}

fn lettre(port: u16, p: &Pki, mech: Mechanism, pass: &str) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_der(p.ca_der.to_vec()).unwrap())
        .build_rustls()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(params))
        .hello_name(ClientId::Domain("laptop.test".into()))
        .credentials(Credentials::new("alice@example.org".into(), pass.into()))
        .authentication(vec![mech])
        .build()
}

/// A raw client after STARTTLS and the second EHLO; returns it with that EHLO reply.
async fn starttls(addr: SocketAddr, p: &Pki, from: &str) -> (Client<TlsStream<TcpStream>>, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut c = Client::new(sock.connect(addr).await.unwrap());
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.cmd("EHLO laptop.test").await;
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), c.into_inner())
        .await
        .unwrap();
    let mut c = Client::new(tls);
    let ehlo = c.cmd("EHLO laptop.test").await;
    (c, ehlo)
}

#[tokio::test]
async fn lettre_logs_in_with_plain_and_login_over_starttls() {
    let p = pki("auth");
    let srv = server(&p, fast_limits()).await;
    let port = srv.addr().port();
    for mech in [Mechanism::Plain, Mechanism::Login] {
        lettre(port, &p, mech, "s3cret")
            .send(message())
            .await
            .unwrap();
    }
    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert_eq!(m.envelope.authenticated.as_deref(), Some("alice"));
        assert!(m.envelope.tls.is_some());
    }
    let events = srv.rec.events();
    assert!(
        events.contains(&"auth PLAIN alice@example.org".to_owned()),
        "{events:?}"
    );
    assert!(
        events.contains(&"auth LOGIN alice@example.org".to_owned()),
        "{events:?}"
    );

    let err = lettre(port, &p, Mechanism::Plain, "wrong")
        .send(message())
        .await
        .unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("535"),
        "{err}"
    );
    assert_eq!(srv.rec.messages().len(), 2);
}

#[tokio::test]
async fn replies_over_tcp_and_tls() {
    let p = pki("auth");
    let srv = server(&p, fast_limits()).await;
    // Plain: not advertised, 538 when tried, credentials never looked at.
    let mut c = Client::connect(srv.addrs[0]).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO laptop.test").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert!(!srv.rec.events().iter().any(|e| e.starts_with("auth")));

    let (mut c, ehlo) = starttls(srv.addrs[0], &p, "127.0.0.1").await;
    assert!(ehlo.ends_with("\n250 AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("down@example.org", "x")))
            .await,
        "454 4.7.0 Temporary authentication failure"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("*").await, "501 5.7.0 Authentication cancelled");
    assert_eq!(c.cmd("AUTH PLAIN").await, "334"); // "334 " trimmed
    assert_eq!(c.cmd("%%%").await, "501 5.5.2 Cannot decode response");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "503 5.5.1 Already authenticated"
    );
    assert!(c
        .cmd("MAIL FROM:<alice@example.org> AUTH=<>")
        .await
        .starts_with("250 "));
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "503 5.5.1 Already authenticated"
    );

    // Implicit TLS: offered at once.
    let tcp = TcpStream::connect(srv.addrs[1]).await.unwrap();
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    c.reply().await;
    let ehlo = c.cmd("EHLO laptop.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice@example.org", "bad")))
            .await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "235 2.7.0 Authentication successful"
    );

    // A listener whose handler says no AUTH: not offered even over TLS.
    let (mut c, ehlo) = starttls(srv.addrs[2], &p, "127.0.0.1").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_OK}")).await,
        "502 5.5.1 AUTH not available"
    );
}

#[tokio::test]
async fn failure_replies_are_delayed() {
    let p = pki("auth");
    let mut limits = Limits::default();
    limits.auth_failure_delay = Duration::from_millis(300);
    let srv = server(&p, limits).await;
    let (mut c, _) = starttls(srv.addrs[0], &p, "127.0.0.1").await;
    let bad = format!("AUTH PLAIN {}", plain("alice@example.org", "bad"));
    let t = Instant::now();
    assert!(c.cmd(&bad).await.starts_with("535 5.7.8"));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // The second failure waits twice as long.
    let t = Instant::now();
    assert!(c.cmd(&bad).await.starts_with("535 5.7.8"));
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // Success is not delayed... beyond what a round trip takes; it is just answered.
    assert!(c
        .cmd(&format!("AUTH PLAIN {PLAIN_OK}"))
        .await
        .starts_with("235 "));
}

/// 50 wrong passwords from one address: three per session, then 421; after ten in all the
/// address gets 421 at once without its credentials being looked at, even with the right
/// password; another address is not affected and the server goes on serving.
#[tokio::test]
async fn brute_force_is_cut_off_per_session_and_per_address() {
    let p = pki("auth");
    let srv = server(&p, fast_limits()).await;
    let addr = srv.addrs[0];
    let bad = format!("AUTH PLAIN {}", plain("alice@example.org", "guess"));
    let (mut looked_at, mut cut_off, mut sessions) = (0, 0, 0);
    let mut tries = 0;
    while tries < 50 {
        let (mut c, _) = starttls(addr, &p, "127.0.0.1").await;
        sessions += 1;
        loop {
            tries += 1;
            let r = c.cmd(&bad).await;
            if r.starts_with("535 5.7.8") {
                looked_at += 1;
                if let Some(more) = c.try_reply(Duration::from_millis(200)).await {
                    // The session's third failure: 421 follows, and the connection closes.
                    assert_eq!(
                        more,
                        "421 4.7.0 mx.test Error: too many failed authentication attempts"
                    );
                    c.expect_closed().await;
                    break;
                }
            } else {
                assert_eq!(
                    r,
                    "421 4.7.0 mx.test Error: too many failed authentication attempts from your address, try again later"
                );
                cut_off += 1;
                c.expect_closed().await;
                break;
            }
            if tries >= 50 {
                break;
            }
        }
    }
    assert_eq!(
        looked_at, 10,
        "credentials checked {looked_at} times in {sessions} sessions"
    );
    assert!(cut_off > 0);
    let checked = srv
        .rec
        .events()
        .iter()
        .filter(|e| e.starts_with("auth "))
        .count();
    assert_eq!(checked, 10);
    // The right password from the blocked address is refused too...
    let (mut c, _) = starttls(addr, &p, "127.0.0.1").await;
    assert!(c
        .cmd(&format!("AUTH PLAIN {PLAIN_OK}"))
        .await
        .starts_with("421 4.7.0"));
    // ...while another address logs in and sends.
    let (mut c, _) = starttls(addr, &p, "127.0.0.2").await;
    assert!(c
        .cmd(&format!("AUTH PLAIN {PLAIN_OK}"))
        .await
        .starts_with("235 "));
    assert!(c
        .cmd("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("250 "));
}

/// The workspace's own client logs in to the workspace's server: PLAIN (the strongest both
/// have), a typed error for a wrong password, and nothing sent before TLS.
#[tokio::test]
async fn smtp_client_logs_in_to_our_server() {
    use smtp_client::{AuthError, ClientConfig, ClientError, Connection, Envelope, TlsPolicy};
    use smtp_proto::address::{parse_forward_path, parse_reverse_path};

    let p = pki("auth");
    let srv = server(&p, fast_limits()).await;
    let login = |pw: &str| smtp_client::Credentials::new("alice@example.org", pw).unwrap();
    let config = |pw: &str| {
        ClientConfig::new("laptop.test")
            .with_tls(TlsPolicy::RequireVerified)
            .with_root(p.ca_der.clone())
            .with_credentials(login(pw))
    };
    let mut c = Connection::connect(srv.addr(), "localhost", &config("s3cret"))
        .await
        .unwrap();
    assert_eq!(c.authenticated(), Some(smtp_proto::sasl::Mechanism::Plain));
    let env = Envelope::new(
        parse_reverse_path("<alice@example.org>")
            .unwrap()
            .into_owned(),
        vec![parse_forward_path("<bob@example.net>")
            .unwrap()
            .into_owned()],
    );
    let result = c
        .send(&env, b"Subject: from smtp-client\r\n\r\nhi\r\n")
        .await
        .unwrap();
    assert_eq!(result.accepted(), 1, "{result:?}");
    c.quit().await.unwrap();
    assert_eq!(
        srv.rec.messages()[0].envelope.authenticated.as_deref(),
        Some("alice")
    );

    match Connection::connect(srv.addr(), "localhost", &config("wrong")).await {
        Err(ClientError::Auth(AuthError::Rejected { reply, .. })) => {
            assert_eq!(
                reply.to_string(),
                "535 5.7.8 Authentication credentials invalid"
            );
        }
        other => panic!("expected a 535, got {other:?}"),
    }
    // Without TLS the client refuses to send the password at all.
    let plain = ClientConfig::new("laptop.test")
        .with_tls(TlsPolicy::None)
        .with_credentials(login("s3cret"));
    match Connection::connect(srv.addr(), "localhost", &plain).await {
        Err(ClientError::Auth(AuthError::EncryptionRequired)) => {}
        other => panic!("expected EncryptionRequired, got {other:?}"),
    }
    let auths = srv
        .rec
        .events()
        .iter()
        .filter(|e| e.starts_with("auth "))
        .count();
    assert_eq!(
        auths, 2,
        "the plaintext attempt must not reach the server's check"
    );
}
