//! `Deliverer` against a real DNS server (`testdns`) and real SMTP servers on loopback
//! addresses 127.0.0.x and ::1, all on one port.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{client_config, reply, Behaviour, TestServer};
use smtp_client::testdns::TestDns;
use smtp_client::{
    AddressOrder, AddressPreference, Deliverer, DeliveryError, Envelope, RcptOutcome, ResolveError,
    Resolver, TlsPolicy,
};

const MESSAGE: &[u8] = b"Subject: relay\r\n\r\nbody\r\n";

fn envelope(rcpts: &[&str]) -> Envelope {
    common::envelope("<alice@client.test>", rcpts)
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn deliverer(dns: &TestDns, port: u16) -> Deliverer {
    let resolver = Resolver::with_nameserver_timeout(dns.addr(), Duration::from_secs(2), 1)
        .unwrap()
        .with_address_order(AddressOrder::Ipv6First);
    Deliverer::new(resolver, client_config(TlsPolicy::OpportunisticUnverified)).with_port(port)
}

/// A name server for example.test with two MX hosts: mx1 (preference 10) at `mx1`, mx2
/// (20) at `mx2`.
async fn two_mx(mx1: Ipv4Addr, mx2: Ipv4Addr) -> TestDns {
    TestDns::builder()
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 20, "mx2.example.test")
        .a("mx1.example.test", mx1)
        .a("mx2.example.test", mx2)
        .start()
        .await
        .unwrap()
}

/// A port free on 127.0.0.1, and servers on other loopback addresses with the same port.
async fn servers(behaviours: Vec<(IpAddr, Behaviour)>) -> (u16, Vec<TestServer>) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut started = Vec::new();
        let mut ok = true;
        for (ip, b) in &behaviours {
            let addr = SocketAddr::new(*ip, port);
            if std::net::TcpListener::bind(addr).is_err() {
                ok = false;
                break;
            }
            started.push(TestServer::start(addr, b.clone()).await);
        }
        if ok {
            return (port, started);
        }
    }
    panic!("no common free port");
}

#[tokio::test]
async fn walks_mx_hosts_in_preference_order_past_refused_and_421() {
    // mx1 (pref 10) is 127.0.0.2 with nothing listening; mx2 (20) greets 421; mx3 (30) has
    // ::1 refusing and 127.0.0.4 working.
    let dns = TestDns::builder()
        .mx("example.test", 30, "mx3.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 20, "mx2.example.test")
        .a("mx1.example.test", v4(2))
        .a("mx2.example.test", v4(3))
        .aaaa("mx3.example.test", Ipv6Addr::LOCALHOST)
        .a("mx3.example.test", v4(4))
        .start()
        .await
        .unwrap();
    let busy = Behaviour {
        greeting: Some(reply(421, Some((4, 3, 2)), "mx2 too busy")),
        ..Behaviour::default()
    };
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(3)), busy),
        (IpAddr::V4(v4(4)), Behaviour::default()),
    ])
    .await;
    let report = deliverer(&dns, port)
        .deliver("example.test", &envelope(&["<bob@example.test>"]), MESSAGE)
        .await;
    let tried: Vec<(String, SocketAddr)> = report
        .attempts
        .iter()
        .map(|a| (a.host.clone(), a.addr))
        .collect();
    assert_eq!(
        tried,
        [
            (
                "mx1.example.test".into(),
                SocketAddr::new(v4(2).into(), port)
            ),
            (
                "mx2.example.test".into(),
                SocketAddr::new(v4(3).into(), port)
            ),
            (
                "mx3.example.test".into(),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)
            ),
            (
                "mx3.example.test".into(),
                SocketAddr::new(v4(4).into(), port)
            ),
        ]
    );
    assert!(report.attempts[0]
        .error
        .as_ref()
        .unwrap()
        .contains("cannot connect"));
    assert!(report.attempts[1].error.as_ref().unwrap().contains("421"));
    assert!(report.attempts[3].error.is_none());
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(
        report.delivered_via,
        Some((
            "mx3.example.test".into(),
            SocketAddr::new(v4(4).into(), port)
        ))
    );
    assert_eq!(srv[0].connections(), 1);
    assert_eq!(srv[1].messages()[0].body, MESSAGE);
}

#[tokio::test]
async fn per_recipient_outcomes_are_final_for_the_transaction() {
    let dns = two_mx(v4(5), v4(6)).await;
    let first = Behaviour::default()
        .rcpt(
            "gone@example.test",
            reply(550, Some((5, 1, 1)), "No such user"),
        )
        .rcpt(
            "full@example.test",
            reply(452, Some((4, 2, 2)), "Mailbox full"),
        );
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(5)), first),
        (IpAddr::V4(v4(6)), Behaviour::default()),
    ])
    .await;
    let env = envelope(&[
        "<ok@example.test>",
        "<gone@example.test>",
        "<full@example.test>",
    ]);
    let report = deliverer(&dns, port)
        .deliver("example.test", &env, MESSAGE)
        .await;
    let outcomes: Vec<&RcptOutcome> = report.rcpts.iter().map(|(_, o)| o).collect();
    assert!(matches!(outcomes[0], RcptOutcome::Delivered(r) if r.code() == 250));
    match outcomes[1] {
        RcptOutcome::Permanent(f) => {
            assert_eq!(f.reply.as_ref().unwrap().code(), 550);
            assert_eq!(f.enhanced.to_string(), "5.1.1");
            assert!(f.text.contains("No such user"));
        }
        other => panic!("{other:?}"),
    }
    match outcomes[2] {
        RcptOutcome::Transient(f) => assert_eq!(f.enhanced.to_string(), "4.2.2"),
        other => panic!("{other:?}"),
    }
    assert!(!outcomes[2].is_final());
    // The transient recipient is left for the queue, not tried at mx2 now.
    assert_eq!(srv[1].connections(), 0);
    assert_eq!(srv[0].messages()[0].rcpts, ["ok@example.test"]);
}

#[tokio::test]
async fn mail_4xx_moves_on_and_mail_5xx_is_permanent() {
    let dns = two_mx(v4(7), v4(8)).await;
    let greylist = Behaviour {
        mail_reply: Some(reply(451, Some((4, 7, 1)), "Greylisted")),
        ..Behaviour::default()
    };
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(7)), greylist),
        (IpAddr::V4(v4(8)), Behaviour::default()),
    ])
    .await;
    let report = deliverer(&dns, port)
        .deliver("example.test", &envelope(&["<b@example.test>"]), MESSAGE)
        .await;
    assert!(report.all_delivered());
    assert_eq!(srv[1].messages().len(), 1);

    let refuse = Behaviour {
        mail_reply: Some(reply(550, Some((5, 7, 1)), "Sender refused")),
        ..Behaviour::default()
    };
    let dns = two_mx(v4(9), v4(10)).await;
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(9)), refuse),
        (IpAddr::V4(v4(10)), Behaviour::default()),
    ])
    .await;
    let report = deliverer(&dns, port)
        .deliver(
            "example.test",
            &envelope(&["<b@example.test>", "<c@example.test>"]),
            MESSAGE,
        )
        .await;
    for (_, outcome) in &report.rcpts {
        assert!(
            matches!(outcome, RcptOutcome::Permanent(f) if f.enhanced.to_string() == "5.7.1"),
            "{outcome:?}"
        );
    }
    assert_eq!(srv[1].connections(), 0);
}

#[tokio::test]
async fn all_hosts_unreachable_is_transient_for_everyone() {
    let dns = TestDns::builder()
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", v4(11))
        .start()
        .await
        .unwrap();
    let (port, _srv) = servers(vec![]).await;
    let report = deliverer(&dns, port)
        .deliver("example.test", &envelope(&["<b@example.test>"]), MESSAGE)
        .await;
    match &report.rcpts[0].1 {
        RcptOutcome::Transient(f) => {
            assert!(f.text.contains("cannot connect"), "{f}");
            assert_eq!(f.enhanced.to_string(), "4.4.1");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        report.error,
        Some(DeliveryError::NoHostReached { .. })
    ));
}

#[tokio::test]
async fn address_filter_excluding_everything_is_a_loop() {
    let dns = two_mx(v4(12), v4(13)).await;
    let (port, srv) = servers(vec![(IpAddr::V4(v4(13)), Behaviour::default())]).await;
    let mine: Arc<dyn Fn(SocketAddr) -> bool + Send + Sync> = Arc::new(|addr: SocketAddr| {
        addr.ip() != IpAddr::V4(v4(12)) && addr.ip() != IpAddr::V4(v4(13))
    });
    let report = deliverer(&dns, port)
        .with_address_filter(mine)
        .deliver("example.test", &envelope(&["<b@example.test>"]), MESSAGE)
        .await;
    assert!(
        matches!(report.error, Some(DeliveryError::Loop { .. })),
        "{report:?}"
    );
    match &report.rcpts[0].1 {
        RcptOutcome::Permanent(f) => assert_eq!(f.enhanced.to_string(), "5.4.6"),
        other => panic!("{other:?}"),
    }
    assert!(report.attempts.is_empty());
    assert_eq!(srv[0].connections(), 0);

    // Excluding only the first host: the second is used.
    let only_first: Arc<dyn Fn(SocketAddr) -> bool + Send + Sync> =
        Arc::new(|addr: SocketAddr| addr.ip() != IpAddr::V4(v4(12)));
    let report = deliverer(&dns, port)
        .with_address_filter(only_first)
        .deliver("example.test", &envelope(&["<b@example.test>"]), MESSAGE)
        .await;
    assert!(report.all_delivered());
    assert_eq!(report.attempts.len(), 1);
}

#[tokio::test]
async fn dns_failures_map_to_permanent_or_transient() {
    let dns = TestDns::builder()
        .null_mx("nullmx.test")
        .a("exists.test", v4(1))
        .servfail("broken.test")
        .start()
        .await
        .unwrap();
    let d = deliverer(&dns, 2525);
    let env = envelope(&["<b@x.test>"]);

    let report = d.deliver("nullmx.test", &env, MESSAGE).await;
    assert!(matches!(
        report.error,
        Some(DeliveryError::Resolve(ResolveError::NullMx { .. }))
    ));
    assert!(
        matches!(&report.rcpts[0].1, RcptOutcome::Permanent(f) if f.enhanced.to_string() == "5.1.10")
    );

    let report = d.deliver("nxdomain.test", &env, MESSAGE).await;
    assert!(matches!(
        report.error,
        Some(DeliveryError::Resolve(ResolveError::NoSuchDomain { .. }))
    ));
    assert!(
        matches!(&report.rcpts[0].1, RcptOutcome::Permanent(f) if f.enhanced.to_string() == "5.1.2")
    );

    let report = d.deliver("broken.test", &env, MESSAGE).await;
    assert!(matches!(
        report.error,
        Some(DeliveryError::Resolve(ResolveError::Temporary(_)))
    ));
    assert!(
        matches!(&report.rcpts[0].1, RcptOutcome::Transient(f) if f.enhanced.to_string() == "4.4.3")
    );
    assert!(report.attempts.is_empty());
}

#[tokio::test]
async fn implicit_mx_and_smarthost() {
    let dns = TestDns::builder()
        .a("implicit.test", v4(14))
        .a("relay.test", v4(15))
        .mx("elsewhere.test", 10, "mx.elsewhere.test")
        .a("mx.elsewhere.test", v4(16))
        .start()
        .await
        .unwrap();
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(14)), Behaviour::default()),
        (IpAddr::V4(v4(15)), Behaviour::default()),
    ])
    .await;
    let report = deliverer(&dns, port)
        .deliver("implicit.test", &envelope(&["<b@implicit.test>"]), MESSAGE)
        .await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(srv[0].messages().len(), 1);

    // A smarthost replaces the MX lookup: elsewhere.test's MX is never contacted.
    let report = deliverer(&dns, 1)
        .with_smarthost("relay.test", port)
        .deliver(
            "elsewhere.test",
            &envelope(&["<b@elsewhere.test>"]),
            MESSAGE,
        )
        .await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(srv[1].messages().len(), 1);
    assert!(!dns
        .queries()
        .iter()
        .any(|(name, _)| name == "elsewhere.test"));

    // An IP literal smarthost needs no DNS at all.
    let report = deliverer(&dns, 1)
        .with_smarthost(v4(15).to_string(), port)
        .deliver(
            "elsewhere.test",
            &envelope(&["<c@elsewhere.test>"]),
            MESSAGE,
        )
        .await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(srv[1].messages().len(), 2);
}

/// A deliverer with the resolver's default address order, then `preference` if given.
fn deliverer_preferring(
    dns: &TestDns,
    port: u16,
    preference: Option<AddressPreference>,
) -> Deliverer {
    let resolver =
        Resolver::with_nameserver_timeout(dns.addr(), Duration::from_secs(2), 1).unwrap();
    let d =
        Deliverer::new(resolver, client_config(TlsPolicy::OpportunisticUnverified)).with_port(port);
    match preference {
        Some(p) => d.with_address_preference(p),
        None => d,
    }
}

#[tokio::test]
async fn address_preference_picks_the_family_that_gets_the_mail() {
    // dual.test has no MX (implicit MX) and an address of each family; both accept mail.
    let dns = TestDns::builder()
        .a("dual.test", v4(40))
        .aaaa("dual.test", Ipv6Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(40)), Behaviour::default()),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), Behaviour::default()),
    ])
    .await;
    for (preference, via, expected) in [
        (AddressPreference::Ipv4, IpAddr::V4(v4(40)), [1, 0]),
        (
            AddressPreference::Ipv6,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            [1, 1],
        ),
    ] {
        let d = deliverer_preferring(&dns, port, Some(preference));
        assert_eq!(d.address_order(), AddressOrder::from(preference));
        let report = d
            .deliver("dual.test", &envelope(&["<b@dual.test>"]), MESSAGE)
            .await;
        assert!(report.all_delivered(), "{report:?}");
        assert_eq!(report.attempts.len(), 1, "{preference}");
        assert_eq!(
            report.delivered_via,
            Some(("dual.test".into(), SocketAddr::new(via, port)))
        );
        // The other family was never contacted.
        assert_eq!([srv[0].messages().len(), srv[1].messages().len()], expected);
        assert_eq!([srv[0].connections(), srv[1].connections()], expected);
    }

    // A smarthost given by name follows the preference too.
    let report = deliverer_preferring(&dns, 1, Some(AddressPreference::Ipv4))
        .with_smarthost("dual.test", port)
        .deliver(
            "elsewhere.test",
            &envelope(&["<c@elsewhere.test>"]),
            MESSAGE,
        )
        .await;
    assert_eq!(report.delivered_via.unwrap().1.ip(), IpAddr::V4(v4(40)));
}

#[tokio::test]
async fn connection_attempts_follow_the_address_preference() {
    // mx.pref.test has two IPv4 addresses and one IPv6 address, all greeting 421: every
    // address is tried, in the preference's order, and each server sees one connection.
    let dns = TestDns::builder()
        .mx("pref.test", 10, "mx.pref.test")
        .a("mx.pref.test", v4(41))
        .a("mx.pref.test", v4(42))
        .aaaa("mx.pref.test", Ipv6Addr::LOCALHOST)
        .start()
        .await
        .unwrap();
    let busy = Behaviour {
        greeting: Some(reply(421, Some((4, 3, 2)), "busy")),
        ..Behaviour::default()
    };
    let (a, b, six) = (
        IpAddr::V4(v4(41)),
        IpAddr::V4(v4(42)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    );
    let (port, srv) = servers(vec![(a, busy.clone()), (b, busy.clone()), (six, busy)]).await;
    let tried = |d: Deliverer| async move {
        let report = d
            .deliver("pref.test", &envelope(&["<b@pref.test>"]), MESSAGE)
            .await;
        assert!(matches!(&report.rcpts[0].1, RcptOutcome::Transient(_)));
        report
            .attempts
            .iter()
            .map(|t| t.addr.ip())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tried(deliverer_preferring(
            &dns,
            port,
            Some(AddressPreference::Ipv4)
        ))
        .await,
        [a, b, six]
    );
    assert_eq!(
        tried(deliverer_preferring(
            &dns,
            port,
            Some(AddressPreference::Ipv6)
        ))
        .await,
        [six, a, b]
    );
    // The default (`any`): the families alternate, whichever comes first.
    let d = deliverer_preferring(&dns, port, None);
    assert_eq!(d.address_order(), AddressOrder::Any);
    let order = tried(d).await;
    assert!(order == [six, a, b] || order == [a, six, b], "{order:?}");
    let accepted: Vec<usize> = srv.iter().map(TestServer::connections).collect();
    assert_eq!(accepted, [3, 3, 3]);
}

#[tokio::test]
async fn a_host_lost_after_the_whole_message_is_not_followed_by_the_next() {
    // mx1 reads the message to its end marker and closes without a verdict: it may have the
    // message. mx2 is not sent it now (a duplicate); every recipient is deferred.
    let dns = two_mx(v4(17), v4(18)).await;
    let lost = Behaviour {
        drop_at_data_end: true,
        ..Behaviour::default()
    };
    let (port, srv) = servers(vec![
        (IpAddr::V4(v4(17)), lost),
        (IpAddr::V4(v4(18)), Behaviour::default()),
    ])
    .await;
    let report = deliverer(&dns, port)
        .deliver(
            "example.test",
            &envelope(&["<b@example.test>", "<c@example.test>"]),
            MESSAGE,
        )
        .await;
    assert_eq!(report.rcpts.len(), 2);
    for (_, outcome) in &report.rcpts {
        assert!(matches!(outcome, RcptOutcome::Transient(_)), "{outcome:?}");
    }
    assert!(
        matches!(&report.error, Some(DeliveryError::OutcomeUnknown { host, .. }) if host == "mx1.example.test"),
        "{:?}",
        report.error
    );
    assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    assert_eq!(srv[1].connections(), 0);
    // (A host lost before the data is followed by the next: see
    // mail_4xx_moves_on_and_mail_5xx_is_permanent.)
}
