//! MX resolution against a real DNS server on loopback (`smtp_client::testdns`).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smtp_client::resolve::{AddressOrder, MxHost, ResolveError, Resolver};
use smtp_client::testdns::{Fault, RecordType, TestDns};

const V4_1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const V4_2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const V6_1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn resolver(dns: &TestDns) -> Resolver {
    Resolver::with_nameserver_timeout(dns.addr(), Duration::from_secs(2), 1).unwrap()
}

fn names(hosts: &[MxHost]) -> Vec<&str> {
    hosts.iter().map(|h| h.name.as_str()).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn mx_hosts_come_in_preference_order_with_their_addresses() {
    let dns = TestDns::builder()
        .mx("example.test", 30, "c.example.test")
        .mx("example.test", 10, "a.example.test")
        .mx("example.test", 20, "b.example.test")
        .a("a.example.test", V4_1)
        .a("b.example.test", V4_2)
        .aaaa("c.example.test", V6_1)
        .start()
        .await
        .unwrap();
    let hosts = resolver(&dns).resolve("example.test").await.unwrap();
    assert_eq!(
        hosts,
        vec![
            MxHost {
                name: "a.example.test".into(),
                preference: 10,
                addrs: vec![IpAddr::V4(V4_1)],
            },
            MxHost {
                name: "b.example.test".into(),
                preference: 20,
                addrs: vec![IpAddr::V4(V4_2)],
            },
            MxHost {
                name: "c.example.test".into(),
                preference: 30,
                addrs: vec![IpAddr::V6(V6_1)],
            },
        ]
    );
}

#[tokio::test]
async fn equal_preferences_are_shuffled_on_each_resolution() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "a.example.test")
        .mx("example.test", 10, "b.example.test")
        .mx("example.test", 20, "backup.example.test")
        .a("a.example.test", V4_1)
        .a("b.example.test", V4_2)
        .a("backup.example.test", Ipv4Addr::new(192, 0, 2, 3))
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns);
    let mut orders = HashSet::new();
    for _ in 0..50 {
        let hosts = resolver.resolve("example.test").await.unwrap();
        let names = names(&hosts);
        assert_eq!(names.len(), 3);
        assert_eq!(names[2], "backup.example.test", "{names:?}");
        orders.insert(names[..2].join(","));
    }
    // Both orders of the two preference-10 hosts: a 2^-49 chance of a false failure.
    assert_eq!(
        orders,
        HashSet::from([
            "a.example.test,b.example.test".to_owned(),
            "b.example.test,a.example.test".to_owned()
        ])
    );
}

#[tokio::test]
async fn a_domain_without_mx_is_its_own_mail_host() {
    let dns = TestDns::builder()
        .a("nomx.test", V4_1)
        .aaaa("nomx.test", V6_1)
        .start()
        .await
        .unwrap();
    let hosts = resolver(&dns)
        .with_address_order(AddressOrder::Ipv6First)
        .resolve("nomx.test")
        .await
        .unwrap();
    assert_eq!(
        hosts,
        vec![MxHost {
            name: "nomx.test".into(),
            preference: 0,
            addrs: vec![IpAddr::V6(V6_1), IpAddr::V4(V4_1)],
        }]
    );
    let asked: Vec<RecordType> = dns.queries().into_iter().map(|(_, t)| t).collect();
    assert_eq!(asked[0], RecordType::MX);
    assert!(asked.contains(&RecordType::A) && asked.contains(&RecordType::AAAA));
}

#[tokio::test]
async fn a_domain_without_mx_or_addresses_is_a_permanent_failure() {
    // "example.test" exists (it has a descendant) but has no MX, A or AAAA record.
    let dns = TestDns::builder()
        .a("www.example.test", V4_1)
        .start()
        .await
        .unwrap();
    let err = resolver(&dns).resolve("example.test").await.unwrap_err();
    assert_eq!(
        err,
        ResolveError::NoAddresses {
            domain: "example.test".into()
        }
    );
    assert!(err.is_permanent());
}

#[tokio::test]
async fn null_mx_is_a_permanent_failure() {
    let dns = TestDns::builder()
        .null_mx("nullmx.test")
        .a("nullmx.test", V4_1)
        .start()
        .await
        .unwrap();
    let err = resolver(&dns).resolve("nullmx.test").await.unwrap_err();
    assert_eq!(
        err,
        ResolveError::NullMx {
            domain: "nullmx.test".into()
        }
    );
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        "domain nullmx.test accepts no mail (null MX, RFC 7505)"
    );
    // The A record is not used as an implicit MX.
    assert_eq!(dns.queries(), vec![("nullmx.test".into(), RecordType::MX)]);
}

#[tokio::test]
async fn a_null_mx_beside_real_mx_records_is_ignored() {
    let dns = TestDns::builder()
        .null_mx("mixed.test")
        .mx("mixed.test", 10, "mx.mixed.test")
        .a("mx.mixed.test", V4_1)
        .start()
        .await
        .unwrap();
    let hosts = resolver(&dns).resolve("mixed.test").await.unwrap();
    assert_eq!(names(&hosts), ["mx.mixed.test"]);
}

#[tokio::test]
async fn nxdomain_is_a_permanent_failure() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx.example.test")
        .start()
        .await
        .unwrap();
    let err = resolver(&dns).resolve("nosuch.test").await.unwrap_err();
    assert_eq!(
        err,
        ResolveError::NoSuchDomain {
            domain: "nosuch.test".into()
        }
    );
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        "domain nosuch.test does not exist (NXDOMAIN)"
    );
}

#[tokio::test]
async fn servfail_and_refused_are_temporary_failures() {
    let dns = TestDns::builder()
        .mx("broken.test", 10, "mx.broken.test")
        .servfail("broken.test")
        .refused("refused.test")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns);
    for domain in ["broken.test", "refused.test"] {
        let err = resolver.resolve(domain).await.unwrap_err();
        assert!(matches!(err, ResolveError::Temporary(_)), "{domain}: {err}");
        assert!(!err.is_permanent());
        assert!(err.to_string().contains(domain), "{err}");
    }
}

#[tokio::test]
async fn a_silent_name_server_is_a_temporary_failure_within_the_timeout() {
    // Bound but never read: queries vanish. Nothing listens on TCP at that port.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = silent.local_addr().unwrap();
    let resolver = Resolver::with_nameserver_timeout(addr, Duration::from_millis(300), 2).unwrap();
    let start = Instant::now();
    let err = resolver.resolve("example.test").await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, ResolveError::Temporary(_)), "{err}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn a_query_left_unanswered_is_a_temporary_failure() {
    let dns = TestDns::builder()
        .mx("slow.test", 10, "mx.slow.test")
        .no_answer("slow.test")
        .start()
        .await
        .unwrap();
    let resolver =
        Resolver::with_nameserver_timeout(dns.addr(), Duration::from_millis(300), 1).unwrap();
    let err = resolver.resolve("slow.test").await.unwrap_err();
    assert!(matches!(err, ResolveError::Temporary(_)), "{err}");
}

#[tokio::test]
async fn addresses_follow_the_address_order() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", V4_1)
        .a("mx.example.test", V4_2)
        .aaaa("mx.example.test", V6_1)
        .start()
        .await
        .unwrap();
    let (a1, a2, b) = (IpAddr::V4(V4_1), IpAddr::V4(V4_2), IpAddr::V6(V6_1));
    let cases = [
        (AddressOrder::Ipv6First, vec![b, a1, a2]),
        (AddressOrder::Ipv4First, vec![a1, a2, b]),
        (AddressOrder::Ipv4Only, vec![a1, a2]),
        (AddressOrder::Ipv6Only, vec![b]),
    ];
    for (order, expected) in cases {
        let resolver = resolver(&dns).with_address_order(order);
        assert_eq!(resolver.address_order(), order);
        let hosts = resolver.resolve("example.test").await.unwrap();
        assert_eq!(hosts[0].addrs, expected, "{order:?}");
    }

    // The default, `Any`: the families alternate, each in its own order, and either may come
    // first (chosen at random per lookup; 40 lookups miss one order with odds 2^-39).
    let resolver = resolver(&dns);
    assert_eq!(resolver.address_order(), AddressOrder::Any);
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let hosts = resolver.resolve("example.test").await.unwrap();
        let addrs = hosts[0].addrs.clone();
        assert!(addrs == [b, a1, a2] || addrs == [a1, b, a2], "{addrs:?}");
        seen.insert(addrs);
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn ipv4_only_sends_no_aaaa_query() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", V4_1)
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns).with_address_order(AddressOrder::Ipv4Only);
    resolver.resolve("example.test").await.unwrap();
    assert_eq!(
        dns.queries(),
        vec![
            ("example.test".into(), RecordType::MX),
            ("mx.example.test".into(), RecordType::A),
        ]
    );
}

#[tokio::test]
async fn mx_hosts_without_addresses_are_skipped() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "gone.example.test") // NXDOMAIN
        .mx("example.test", 20, "v6.example.test") // only AAAA, unusable with Ipv4Only
        .mx("example.test", 30, "flaky.example.test") // SERVFAIL
        .mx("example.test", 40, "good.example.test")
        .aaaa("v6.example.test", V6_1)
        .a("flaky.example.test", V4_1)
        .servfail("flaky.example.test")
        .a("good.example.test", V4_2)
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns).with_address_order(AddressOrder::Ipv4Only);
    let hosts = resolver.resolve("example.test").await.unwrap();
    assert_eq!(names(&hosts), ["good.example.test"]);
    assert_eq!(hosts[0].preference, 40);
}

#[tokio::test]
async fn when_no_mx_host_has_an_address_the_cause_decides() {
    let dns = TestDns::builder()
        // Every host NXDOMAIN or without addresses: permanent.
        .mx("dead.test", 10, "gone.dead.test")
        .mx("dead.test", 20, "empty.dead.test")
        .mx("empty.dead.test", 10, "elsewhere.test")
        // One host NXDOMAIN, one SERVFAIL: temporary.
        .mx("sick.test", 10, "gone.sick.test")
        .mx("sick.test", 20, "flaky.sick.test")
        .servfail("flaky.sick.test")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns);
    let err = resolver.resolve("dead.test").await.unwrap_err();
    assert_eq!(
        err,
        ResolveError::NoAddresses {
            domain: "dead.test".into()
        }
    );
    assert!(err.is_permanent());

    let err = resolver.resolve("sick.test").await.unwrap_err();
    assert!(matches!(err, ResolveError::Temporary(_)), "{err}");
    assert!(err.to_string().contains("flaky.sick.test"), "{err}");
}

#[tokio::test]
async fn a_failing_aaaa_query_does_not_hide_the_a_records() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", V4_1)
        .fault_for_type("mx.example.test", RecordType::AAAA, Fault::ServFail)
        .start()
        .await
        .unwrap();
    let hosts = resolver(&dns).resolve("example.test").await.unwrap();
    assert_eq!(hosts[0].addrs, [IpAddr::V4(V4_1)]);
}

#[tokio::test]
async fn implicit_mx_with_a_failing_address_lookup_is_temporary() {
    let dns = TestDns::builder()
        .a("nomx.test", V4_1)
        .fault_for_type("nomx.test", RecordType::A, Fault::ServFail)
        .fault_for_type("nomx.test", RecordType::AAAA, Fault::ServFail)
        .start()
        .await
        .unwrap();
    let err = resolver(&dns).resolve("nomx.test").await.unwrap_err();
    assert!(matches!(err, ResolveError::Temporary(_)), "{err}");
}

#[tokio::test]
async fn cnames_are_followed_for_mx_targets_and_domains() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "alias.example.test")
        .cname("alias.example.test", "real.example.test")
        .a("real.example.test", V4_1)
        .cname("other.test", "example.test")
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns).with_address_order(AddressOrder::Ipv4Only);
    let hosts = resolver.resolve("example.test").await.unwrap();
    assert_eq!(names(&hosts), ["alias.example.test"]);
    assert_eq!(hosts[0].addrs, [IpAddr::V4(V4_1)]);

    let hosts = resolver.resolve("other.test").await.unwrap();
    assert_eq!(names(&hosts), ["alias.example.test"]);
}

#[tokio::test]
async fn case_and_final_dot_do_not_matter() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "MX.Example.Test")
        .a("mx.example.test", V4_1)
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns);
    for domain in ["example.test", "Example.TEST.", "EXAMPLE.test"] {
        let hosts = resolver.resolve(domain).await.unwrap();
        assert_eq!(names(&hosts), ["mx.example.test"], "{domain}");
    }
    // Queried as the fully qualified name: no search suffix ever appended.
    assert!(dns
        .queries()
        .iter()
        .all(|(name, _)| name == "example.test" || name == "mx.example.test"));
}

#[tokio::test]
async fn address_literals_need_no_dns() {
    let dns = TestDns::builder().start().await.unwrap();
    let resolver = resolver(&dns);
    let hosts = resolver.resolve("[192.0.2.7]").await.unwrap();
    assert_eq!(
        hosts,
        vec![MxHost {
            name: "[192.0.2.7]".into(),
            preference: 0,
            addrs: vec![ip("192.0.2.7")],
        }]
    );
    let hosts = resolver.resolve("[IPv6:2001:db8::7]").await.unwrap();
    assert_eq!(hosts[0].addrs, [ip("2001:db8::7")]);
    let err = resolver.resolve("[999.0.0.1]").await.unwrap_err();
    assert!(matches!(err, ResolveError::InvalidDomain { .. }), "{err}");
    assert!(err.is_permanent());
    assert_eq!(dns.queries(), vec![]);
}

#[tokio::test]
async fn invalid_domains_are_refused_without_a_query() {
    let dns = TestDns::builder().start().await.unwrap();
    let resolver = resolver(&dns);
    for domain in ["", ".", "a..test"] {
        let err = resolver.resolve(domain).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::InvalidDomain { .. }),
            "{domain:?}: {err}"
        );
    }
    assert_eq!(dns.queries(), vec![]);
}

#[tokio::test]
async fn resolve_host_finds_addresses_without_mx() {
    let dns = TestDns::builder()
        .mx("relay.test", 10, "elsewhere.test")
        .a("relay.test", V4_1)
        .start()
        .await
        .unwrap();
    let resolver = resolver(&dns).with_address_order(AddressOrder::Ipv4Only);
    assert_eq!(
        resolver.resolve_host("relay.test").await.unwrap(),
        [IpAddr::V4(V4_1)]
    );
    assert_eq!(
        resolver.resolve_host("192.0.2.9").await.unwrap(),
        [ip("192.0.2.9")]
    );
    assert_eq!(
        resolver.resolve_host("[IPv6:::1]").await.unwrap(),
        [ip("::1")]
    );
    assert_eq!(
        resolver.resolve_host("nosuch.test").await.unwrap_err(),
        ResolveError::NoSuchDomain {
            domain: "nosuch.test".into()
        }
    );
    assert_eq!(
        dns.queries(),
        vec![
            ("relay.test".into(), RecordType::A),
            ("nosuch.test".into(), RecordType::A)
        ]
    );
}

#[tokio::test]
async fn the_test_server_answers_over_tcp_on_the_same_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dns = TestDns::builder()
        .a("host.test", V4_1)
        .start()
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(dns.addr()).await.unwrap();
    // A query for host.test A, ID 0x1234, RD set, in DNS-over-TCP framing.
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(b"\x04host\x04test\x00\x00\x01\x00\x01");
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply[..2], [0x12, 0x34], "same ID");
    assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&reply[6..8], [0, 1], "one answer");
    assert_eq!(
        &reply[reply.len() - 4..],
        [192, 0, 2, 1],
        "the A record's address"
    );
}

#[tokio::test]
async fn the_test_server_stops_when_dropped() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", V4_1)
        .start()
        .await
        .unwrap();
    let addr: SocketAddr = dns.addr();
    let resolver = Resolver::with_nameserver_timeout(addr, Duration::from_millis(300), 1).unwrap();
    resolver.resolve("example.test").await.unwrap();
    drop(dns);
    // Let the runtime run the aborted tasks' destructors, which close the sockets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh = Resolver::with_nameserver_timeout(addr, Duration::from_millis(300), 1).unwrap();
    let err = fresh.resolve("example.test").await.unwrap_err();
    assert!(matches!(err, ResolveError::Temporary(_)), "{err}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
