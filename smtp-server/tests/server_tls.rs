//! TLS: lettre over plain and STARTTLS, implicit TLS, the STARTTLS injection case and
//! certificate reload. Certificates are made at test time with rcgen.
#![allow(clippy::unwrap_used)]

mod server_support;

use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use server_support::{pki, server_name, start, tls_connector, Client, Pki};
use smtp_server::{TlsConfig, TlsError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn message(subject: &str) -> Message {
    Message::builder()
        .from("Alice <alice@example.net>".parse::<Mailbox>().unwrap())
        .to("Bob <bob@example.org>".parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from(
            "Hello from lettre.\r\n.A line starting with a dot.\r\n",
        ))
        .unwrap()
}

fn tls_config(p: &Pki) -> TlsConfig {
    TlsConfig::from_pem(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn lettre_plain_and_starttls() {
    let p = pki("lettre");
    let tls = tls_config(&p);
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let port = srv.addr().port();

    let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(ClientId::Domain("client.test".into()))
        .build();
    let resp = plain.send(message("plain")).await.unwrap();
    assert_eq!(resp.code().to_string(), "250");

    let params = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_der(p.ca_der.to_vec()).unwrap())
        .build_rustls()
        .unwrap();
    let secure = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(params))
        .hello_name(ClientId::Domain("client.test".into()))
        .build();
    secure.send(message("starttls")).await.unwrap();

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[0].envelope.tls.is_none());
    let text = String::from_utf8_lossy(&msgs[0].body).into_owned();
    assert!(text.contains("Subject: plain\r\n"), "{text}");
    assert!(
        text.contains("\r\n\r\nHello from lettre.\r\n.A line starting with a dot.\r\n"),
        "{text}"
    );
    let tls = msgs[1]
        .envelope
        .tls
        .as_ref()
        .expect("the second message came over TLS");
    assert_eq!(tls.protocol, "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS_"), "{}", tls.cipher);
    assert!(String::from_utf8_lossy(&msgs[1].body).contains("Subject: starttls\r\n"));
    assert!(srv.rec.events().contains(&"tls TLSv1.3".to_owned()));
}

#[tokio::test]
async fn starttls_advertised_until_tls_and_pipelined_injection_is_dropped() {
    let p = pki("inject");
    let tls = tls_config(&p);
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    let mut c = Client::connect(srv.addr()).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("\n250-STARTTLS") || ehlo.ends_with("\n250 STARTTLS"),
        "{ehlo}"
    );
    // STARTTLS with commands injected behind it, in one write.
    c.send("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let tcp = c.into_inner();
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    // The first reply after the handshake is NOOP's; nothing answers the injected commands.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // A new EHLO is required, and STARTTLS is no longer offered.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await,
        "503 5.5.1 Send EHLO or HELO first"
    );
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250-mx.test"));
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 mx.test closing connection");
    let ev = srv.rec.events();
    assert!(!ev.iter().any(|e| e.contains("evil")), "{ev:?}");
    assert_eq!(
        ev,
        [
            "connect 127.0.0.1:".to_owned() + &srv.addr().port().to_string() + " tls=no",
            "hello client.test true".into(),
            "tls TLSv1.3".into(),
            "hello client.test true".into(),
        ]
    );
}

#[tokio::test]
async fn implicit_tls_listener() {
    let p = pki("implicit");
    let tls = tls_config(&p);
    let srv = start(move |b| {
        b.listener(
            smtp_server::Listener::named("smtps", "127.0.0.1:0".parse().unwrap()).implicit_tls(),
        )
        .tls(tls)
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    assert_eq!(c.reply().await, "220 mx.test ESMTP ready");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: over TLS\r\n\r\nsecret\r\n.\r\nQUIT\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 Stored");
    assert!(c.reply().await.starts_with("221"));
    let m = &srv.rec.messages()[0];
    assert_eq!(m.body, b"Subject: over TLS\r\n\r\nsecret\r\n");
    assert_eq!(m.envelope.tls.as_ref().unwrap().protocol, "TLSv1.3");
    assert_eq!(srv.rec.events()[0], "connect smtps tls=TLSv1.3");

    // A client that does not speak TLS gets no SMTP reply (only a TLS alert) and is dropped.
    let mut plain = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    plain.write_all(b"EHLO plain\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !got.windows(3).any(|w| w == b"220" || w == b"250"),
        "{got:?}"
    );
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record");
}

async fn peer_leaf(addr: std::net::SocketAddr, p: &Pki) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client::new(tcp);
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("STARTTLS").await.starts_with("220"));
    let tls = tls_connector(&p.ca_der)
        .connect(server_name(), c.into_inner())
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn certificate_reload_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let old = pki("old");
    std::fs::write(&cert, &old.cert_pem).unwrap();
    std::fs::write(&key, &old.key_pem).unwrap();
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let handle = tls.clone();
    let srv = start(move |b| b.listen("127.0.0.1:0".parse().unwrap()).tls(tls)).await;
    assert_eq!(peer_leaf(srv.addr(), &old).await, old.leaf_der.to_vec());

    let new = pki("new");
    std::fs::write(&cert, &new.cert_pem).unwrap();
    std::fs::write(&key, &new.key_pem).unwrap();
    handle.reload().unwrap();
    assert_eq!(peer_leaf(srv.addr(), &new).await, new.leaf_der.to_vec());

    // A broken file is refused and the working certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(matches!(handle.reload(), Err(TlsError::NoCertificate(_))));
    std::fs::write(&cert, &old.cert_pem).unwrap();
    assert!(
        matches!(handle.reload(), Err(TlsError::Rustls(_))),
        "key and cert differ"
    );
    assert_eq!(peer_leaf(srv.addr(), &new).await, new.leaf_der.to_vec());

    assert!(matches!(
        TlsConfig::from_pem_files(dir.path().join("missing.pem"), &key),
        Err(TlsError::Read { .. })
    ));
    assert!(matches!(tls_config(&new).reload(), Err(TlsError::NoFiles)));
}
