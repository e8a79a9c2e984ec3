//! The TLS policies against real TLS on loopback, with certificates made at test time: the
//! verified default, a private CA, a wrong name, no STARTTLS, implicit TLS, opportunistic
//! unverified TLS, connecting by host name through the test DNS server, session resumption.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::{test_pki, Behaviour, TestServer};
use smtp_client::testdns::TestDns;
use smtp_client::{
    AddressOrder, CertificateProblem, ClientConfig, ClientError, Connection, Envelope,
    ResolveError, Resolver, Timeouts, TlsError, TlsPolicy,
};

const MESSAGE: &[u8] = b"Subject: tls\r\n\r\nsecret\r\n";

/// `ClientConfig::new` as a user writes it (the default TLS policy), with short timeouts.
fn default_config() -> ClientConfig {
    ClientConfig::new("client.test").with_timeouts(Timeouts::all(Duration::from_secs(10)))
}

fn envelope() -> Envelope {
    common::envelope("<a@client.test>", &["<b@mx.test>"])
}

async fn starttls_server(names: &[&str]) -> (TestServer, common::TestPki) {
    let pki = test_pki(names);
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server.clone()),
        ..Behaviour::default()
    })
    .await;
    (server, pki)
}

/// Everything the server read (in clear text, or decrypted), across connections.
fn clear_text(server: &TestServer) -> Vec<u8> {
    server.reads().concat()
}

#[tokio::test]
async fn the_default_requires_starttls_and_refuses_an_unknown_issuer_sending_nothing_after() {
    assert_eq!(default_config().tls, TlsPolicy::RequireVerified);
    let (server, _pki) = starttls_server(&["mx.test"]).await;
    let err = Connection::connect(server.addr, "mx.test", &default_config())
        .await
        .unwrap_err();
    match &err {
        ClientError::Tls(TlsError::CertificateInvalid { name, problem, .. }) => {
            assert_eq!(name, "mx.test");
            assert_eq!(*problem, CertificateProblem::UnknownIssuer);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.enhanced_code().to_string(), "4.7.5");
    assert!(!err.is_permanent());
    // EHLO and STARTTLS, then nothing: no command reached the server inside or outside TLS.
    let text = String::from_utf8(clear_text(&server)).unwrap();
    assert!(text.ends_with("STARTTLS\r\n"), "{text:?}");
    assert_eq!(server.log.lock().unwrap().helos.len(), 1);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn the_default_verifies_with_the_ca_as_an_extra_root() {
    let (server, pki) = starttls_server(&["mx.test"]).await;
    let config = default_config().with_root(pki.ca);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    let info = conn.tls_info().unwrap().clone();
    assert!(info.verified, "{info}");
    assert!(!info.resumed, "{info}");
    conn.send(&envelope(), MESSAGE).await.unwrap();
    conn.quit().await.unwrap();
    let messages = server.messages();
    assert!(messages[0].tls);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_name_mismatch() {
    let (server, pki) = starttls_server(&["mx.test"]).await;
    let config = default_config().with_root(pki.ca);
    let err = Connection::connect(server.addr, "smtp.elsewhere.test", &config)
        .await
        .unwrap_err();
    match &err {
        ClientError::Tls(TlsError::NameMismatch { name, presented }) => {
            assert_eq!(name, "smtp.elsewhere.test");
            assert_eq!(presented, &["mx.test"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("smtp.elsewhere.test"), "{err}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn the_default_refuses_a_server_without_starttls() {
    let server = TestServer::local(Behaviour::default()).await;
    let err = Connection::connect(server.addr, "mx.test", &default_config())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::StartTlsNotOffered), "{err:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // EHLO, perhaps QUIT, nothing else in clear text.
    let text = String::from_utf8(clear_text(&server)).unwrap();
    assert!(!text.contains("MAIL"), "{text:?}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_handshakes_before_the_greeting_and_verifies() {
    let pki = test_pki(&["mx.test"]);
    let server = TestServer::local(Behaviour {
        tls: Some(pki.server.clone()),
        implicit_tls: true,
        ..Behaviour::default()
    })
    .await;
    let config = default_config()
        .with_tls(TlsPolicy::Implicit)
        .with_root(pki.ca.clone());
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(conn.tls_info().unwrap().verified);
    assert!(conn.greeting().code() == 220);
    assert!(!conn.has("STARTTLS"));
    conn.send(&envelope(), MESSAGE).await.unwrap();
    conn.quit().await.unwrap();
    let messages = server.messages();
    assert!(messages[0].tls);
    assert_eq!(messages[0].body, MESSAGE);
    // One EHLO: no STARTTLS inside implicit TLS.
    assert_eq!(server.log.lock().unwrap().helos.len(), 1);

    // Without the CA: refused.
    let untrusted = default_config().with_tls(TlsPolicy::Implicit);
    let err = Connection::connect(server.addr, "mx.test", &untrusted)
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
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn implicit_tls_to_a_clear_text_server_fails_in_the_handshake() {
    let server = TestServer::local(Behaviour::default()).await;
    let config = default_config().with_tls(TlsPolicy::Implicit);
    let err = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap_err();
    // The server's `220` greeting is no TLS record.
    assert!(
        matches!(err, ClientError::Tls(TlsError::HandshakeFailed { .. })),
        "{err:?}"
    );
    // The server read the ClientHello as a command line; no EHLO ever came.
    assert!(server.log.lock().unwrap().helos.is_empty());
}

#[tokio::test]
async fn opportunistic_unverified_encrypts_with_a_self_signed_certificate() {
    let (server, _pki) = starttls_server(&["mx.test"]).await;
    let config = default_config().with_tls(TlsPolicy::OpportunisticUnverified);
    let mut conn = Connection::connect(server.addr, "mx.test", &config)
        .await
        .unwrap();
    let info = conn.tls_info().unwrap();
    assert!(!info.verified, "{info}");
    conn.send(&envelope(), MESSAGE).await.unwrap();
    conn.quit().await.unwrap();
    assert!(server.messages()[0].tls);

    // And to a server without STARTTLS it sends in clear text.
    let plain = TestServer::local(Behaviour::default()).await;
    let mut conn = Connection::connect(plain.addr, "mx.test", &config)
        .await
        .unwrap();
    assert!(!conn.is_tls());
    conn.send(&envelope(), MESSAGE).await.unwrap();
    conn.quit().await.unwrap();
    assert!(!plain.messages()[0].tls);
}

#[tokio::test]
async fn a_second_connection_with_the_same_config_resumes_the_tls_session() {
    let (server, pki) = starttls_server(&["mx.test"]).await;
    let config = default_config().with_root(pki.ca.clone());
    for policy in [
        TlsPolicy::RequireVerified,
        TlsPolicy::OpportunisticUnverified,
    ] {
        let config = config.clone().with_tls(policy);
        let mut resumed = Vec::new();
        for _ in 0..3 {
            let mut conn = Connection::connect(server.addr, "mx.test", &config)
                .await
                .unwrap();
            conn.send(&envelope(), MESSAGE).await.unwrap();
            let info = conn.tls_info().unwrap();
            assert!(info.verified, "{policy:?}: {info}");
            resumed.push(info.resumed);
            conn.quit().await.unwrap();
        }
        assert_eq!(resumed, [false, true, true], "{policy:?}");
    }
    // A clone shares the cache; a new configuration starts afresh.
    let conn = Connection::connect(server.addr, "mx.test", &config.clone())
        .await
        .unwrap();
    assert!(conn.tls_info().unwrap().resumed);
    conn.quit().await.unwrap();
    let fresh = default_config().with_root(pki.ca);
    let conn = Connection::connect(server.addr, "mx.test", &fresh)
        .await
        .unwrap();
    assert!(!conn.tls_info().unwrap().resumed);
    conn.quit().await.unwrap();
}

/// A port free on every address given, and a server on each of `listening`.
async fn same_port(
    all: &[IpAddr],
    listening: &[IpAddr],
    behaviour: &Behaviour,
) -> (u16, Vec<TestServer>) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if !all
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok())
        {
            continue;
        }
        let mut servers = Vec::new();
        for ip in listening {
            servers.push(TestServer::start(SocketAddr::new(*ip, port), behaviour.clone()).await);
        }
        return (port, servers);
    }
    panic!("no common free port");
}

async fn dns_for_smtp_test() -> TestDns {
    TestDns::builder()
        .a("smtp.test", Ipv4Addr::LOCALHOST)
        .aaaa("smtp.test", Ipv6Addr::LOCALHOST)
        .start()
        .await
        .unwrap()
}

fn resolver(dns: &TestDns, order: AddressOrder) -> Resolver {
    Resolver::with_nameserver_timeout(dns.addr(), Duration::from_secs(2), 1)
        .unwrap()
        .with_address_order(order)
}

#[tokio::test]
async fn connect_by_host_name_tries_the_next_address_and_verifies_the_name() {
    let dns = dns_for_smtp_test().await;
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    // The certificate names the host, not the address.
    let pki = test_pki(&["smtp.test"]);
    let behaviour = Behaviour {
        tls: Some(pki.server.clone()),
        ..Behaviour::default()
    };
    let config = default_config().with_root(pki.ca.clone());
    for (order, listening, expect) in [
        // ::1 first, refused; then 127.0.0.1.
        (AddressOrder::Ipv6First, v4, v4),
        // 127.0.0.1 first, refused; then ::1.
        (AddressOrder::Ipv4First, v6, v6),
    ] {
        let (port, servers) = same_port(&[v4, v6], &[listening], &behaviour).await;
        let mut conn = Connection::connect_host(&resolver(&dns, order), "smtp.test", port, &config)
            .await
            .unwrap_or_else(|e| panic!("{order:?}: {e}"));
        assert_eq!(conn.peer_addr(), SocketAddr::new(expect, port));
        assert!(conn.tls_info().unwrap().verified);
        conn.send(&envelope(), MESSAGE).await.unwrap();
        conn.quit().await.unwrap();
        assert_eq!(servers[0].messages().len(), 1);
    }
    // A final dot and upper case are the same host.
    let (port, _servers) = same_port(&[v4, v6], &[v4, v6], &behaviour).await;
    let conn = Connection::connect_host(
        &resolver(&dns, AddressOrder::Any),
        "SMTP.test.",
        port,
        &config,
    )
    .await
    .unwrap();
    assert!(conn.tls_info().unwrap().verified);
    conn.quit().await.unwrap();
}

#[tokio::test]
async fn connect_by_host_name_fails_when_no_address_accepts() {
    let dns = dns_for_smtp_test().await;
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let (port, _none) = same_port(&[v4, v6], &[], &Behaviour::default()).await;
    let err = Connection::connect_host(
        &resolver(&dns, AddressOrder::Ipv6First),
        "smtp.test",
        port,
        &default_config(),
    )
    .await
    .unwrap_err();
    // The last address's error.
    match err {
        ClientError::Connect { addr, .. } => assert_eq!(addr, SocketAddr::new(v4, port)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connect_by_host_name_checks_the_name_and_reports_dns_errors() {
    let dns = TestDns::builder()
        .a("smtp.test", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns, AddressOrder::Any);
    for bad in [
        "smtp.test\r\nRSET",
        "smtp test",
        "",
        "smtp..test",
        "[300.1.1.1]",
    ] {
        let err = Connection::connect_host(&resolver, bad, 25, &default_config())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Resolve(ResolveError::InvalidDomain { .. })
            ),
            "{bad:?}: {err:?}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());

    let err = Connection::connect_host(&resolver, "nowhere.test", 25, &default_config())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Resolve(ResolveError::NoSuchDomain { .. })),
        "{err:?}"
    );
    assert!(err.is_permanent());
    assert_eq!(err.enhanced_code().to_string(), "5.1.2");
}

#[tokio::test]
async fn a_deliverer_resumes_tls_sessions_across_deliveries() {
    let (server, _pki) = starttls_server(&["mx.test"]).await;
    let dns = TestDns::builder()
        .mx("remote.test", 10, "mx.remote.test")
        .a("mx.remote.test", Ipv4Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    // As the daemon relays to MX hosts: opportunistic, unverified, by name.
    let config = default_config().with_tls(TlsPolicy::OpportunisticUnverified);
    let deliverer = smtp_client::Deliverer::new(resolver(&dns, AddressOrder::Ipv4Only), config)
        .with_port(server.addr.port());
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let report = deliverer.deliver("remote.test", &envelope(), MESSAGE).await;
        assert!(report.all_delivered(), "{report:?}");
        let info = report.tls_info.unwrap();
        assert!(!info.verified);
        resumed.push(info.resumed);
    }
    assert_eq!(resumed, [false, true]);
    assert!(server.messages().iter().all(|m| m.tls));
}
