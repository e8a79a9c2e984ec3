//! End-to-end: relaying through the built daemon to a peer found by MX lookup.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::time::Duration;

use daemon_util::{queued, spool_messages, wait_until, Daemon, Net, PeerBehaviour};

const MSG: &str =
    "From: alice@example.test\r\nTo: dave@remote.test\r\nSubject: relayed\r\n\r\nHello remote.\r\n";

fn bounces(d: &Daemon) -> Vec<String> {
    d.spool_messages("alice")
        .into_iter()
        .map(|(_, m)| String::from_utf8(m).unwrap())
        .collect()
}

#[test]
fn relays_with_starttls_and_mixed_recipients() {
    let net = Net::start(PeerBehaviour::default(), true);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    let r = c.send(
        "alice@example.test",
        &["dave@remote.test", "bob@example.test"],
        MSG,
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(r.1.contains("queued as"), "{r:?}");
    // The local copy is there already.
    assert_eq!(spool_messages(&spool, "bob").len(), 1);
    assert!(
        wait_until(Duration::from_secs(20), || !net.got().is_empty()),
        "{}",
        d.log()
    );
    let got = net.got();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert!(g.tls, "STARTTLS was offered and must be used");
    assert_eq!(g.from, "alice@example.test");
    assert_eq!(g.rcpts, ["<dave@remote.test>"]);
    let body = String::from_utf8(g.body.clone()).unwrap();
    // Our Received header is on top; a Message-ID and a Date were added (the message had
    // neither) at the end of the header section, below the trace fields.
    assert!(
        body.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test with ESMTP id "
        ),
        "{body}"
    );
    assert!(!body.contains("Return-Path:"), "{body}");
    assert!(body.contains("Subject: relayed\r\nMessage-ID: <"), "{body}");
    assert!(body.ends_with(" +0000\r\n\r\nHello remote.\r\n"), "{body}");
    // The queue is empty afterwards.
    assert!(wait_until(Duration::from_secs(5), || queued(&spool) == 0));
}

#[test]
fn transient_failure_is_retried_from_the_queue() {
    let net = Net::start(
        PeerBehaviour {
            fail_first: 1,
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1s",
        ],
    );
    let mut c = d.connect();
    assert_eq!(
        c.send("alice@example.test", &["dave@remote.test"], MSG).0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(30), || !net.got().is_empty()),
        "{}",
        d.log()
    );
    assert_eq!(*net.attempts.lock().unwrap(), 2);
    assert_eq!(net.got().len(), 1);
    assert!(bounces(&d).is_empty());
}

#[test]
fn permanent_failure_bounces_to_local_sender() {
    let net = Net::start(
        PeerBehaviour {
            refuse: vec!["nobody".into()],
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    let r = c.send(
        "alice@example.test",
        &["nobody@remote.test", "dave@remote.test"],
        MSG,
    );
    assert_eq!(r.0, 250);
    assert!(
        wait_until(Duration::from_secs(20), || !bounces(&d).is_empty()),
        "{}",
        d.log()
    );
    let b = &bounces(&d)[0];
    assert!(b.starts_with("Return-Path: <>\r\n"), "{b}");
    assert!(
        b.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{b}"
    );
    assert!(
        b.contains(
            "Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{b}"
    );
    assert!(
        b.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"),
        "{b}"
    );
    assert!(b.contains("Content-Type: text/rfc822-headers"), "{b}");
    assert!(b.contains("Subject: relayed\r\n"), "{b}");
    assert!(
        !b.contains("dave@remote.test\r\nAction"),
        "only the failed recipient is reported"
    );
    // The other recipient got it.
    assert_eq!(net.got().len(), 1);
    assert_eq!(net.got()[0].rcpts, ["<dave@remote.test>"]);
}

#[test]
fn mx_pointing_at_ourselves_is_a_loop() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    // The remote port is our own listener's port; the MX hosts of these domains resolve to
    // this host in different spellings: 127.0.0.1; 0.0.0.0; `::`; `::ffff:0.0.0.0`; another
    // loopback address (127.0.0.2) and ::1 (a v6 loopback, where we listen on v4 loopback
    // only: refused all the same).
    let (d, [port]) = Daemon::start_ports(&spool, net.dns.addr(), |[p]| {
        daemon_util::strings(&[
            "-l",
            &format!("127.0.0.1:{p}"),
            "--remote-port",
            &p.to_string(),
        ])
    });
    let domains = [
        "loop.test",
        "zero.test",
        "v6zero.test",
        "mapped.test",
        "range.test",
    ];
    let mut c = daemon_util::Smtp::connect(([127, 0, 0, 1], port).into());
    for dom in domains {
        let to = format!("x@{dom}");
        assert_eq!(c.send("alice@example.test", &[&to], MSG).0, 250, "{dom}");
    }
    assert!(
        wait_until(Duration::from_secs(30), || bounces(&d).len()
            == domains.len()),
        "{}",
        d.log()
    );
    let all = bounces(&d).join("\n");
    for dom in domains {
        assert!(
            all.contains(&format!(
                "Final-Recipient: rfc822; x@{dom}\r\nAction: failed\r\nStatus: 5.4.6\r\n"
            )),
            "{dom}: {all}"
        );
    }
    // Never connected to itself: only our own client's messages are in the log.
    let log = d.log();
    assert!(log.contains("address refused by the filter"), "{log}");
    assert_eq!(
        log.matches("message accepted").count(),
        domains.len(),
        "{log}"
    );
}

#[test]
fn null_sender_failure_is_not_bounced() {
    let net = Net::start(
        PeerBehaviour {
            refuse: vec!["nobody".into()],
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    assert_eq!(c.send("", &["nobody@remote.test"], MSG).0, 250);
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("no bounce: the failed message has the null sender")),
        "{}",
        d.log()
    );
    assert!(wait_until(Duration::from_secs(5), || queued(&spool) == 0));
}

#[test]
fn huge_queue_lifetime_still_retries() {
    // A lifetime past the end of SystemTime means "never expire", not a panic in the runner
    // (which left the entry claimed in memory and never tried again).
    let net = Net::start(
        PeerBehaviour {
            fail_first: 1,
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1s",
            "--queue-lifetime",
            "18446744073709551615",
        ],
    );
    let mut c = d.connect();
    assert_eq!(
        c.send("alice@example.test", &["dave@remote.test"], MSG).0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(30), || !net.got().is_empty()),
        "{}",
        d.log()
    );
    assert_eq!(*net.attempts.lock().unwrap(), 2);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[test]
fn unreadable_entry_is_not_retried_in_a_tight_loop() {
    // An entry whose body cannot be read (here: a directory) stays in the queue; each pass
    // used to claim it again at once, forever (the same holds for an entry whose outcome
    // cannot be recorded, e.g. on a full disk, which was then delivered again on every pass).
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let entry = spool
        .join(".queue")
        .join("entries")
        .join("1700000000.000000000.1.0");
    std::fs::create_dir_all(entry.join("body")).unwrap();
    std::fs::write(
        entry.join("envelope"),
        "mailstore-queue 1\ncreated 1700000000.000000000\nattempts 0\n\
         next-attempt 1700000000.000000000\nsender alice@example.test\n\
         rcpt dave@remote.test\nstate pending\nend\n",
    )
    .unwrap();
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1m",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .contains("cannot claim queue entry")));
    std::thread::sleep(Duration::from_secs(2));
    let log = d.log();
    assert_eq!(log.matches("cannot claim queue entry").count(), 1, "{log}");
    assert!(entry.join("envelope").exists());
    assert!(net.got().is_empty());
}

#[test]
fn bounce_that_cannot_be_stored_is_retried() {
    let net = Net::start(
        PeerBehaviour {
            refuse: vec!["nobody".into()],
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    std::fs::create_dir_all(&spool).unwrap();
    // alice's mailbox cannot be written: a plain file where its directory should be.
    std::fs::write(spool.join("alice"), "in the way").unwrap();
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1s",
        ],
    );
    let mut c = d.connect();
    assert_eq!(
        c.send("alice@example.test", &["nobody@remote.test"], MSG).0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(20), || d.log().contains("ERROR")
            && d.log().contains("bounce")),
        "{}",
        d.log()
    );
    // The entry stays queued until the bounce is stored.
    assert_eq!(queued(&spool), 1);
    std::fs::remove_file(spool.join("alice")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || bounces(&d).len() == 1),
        "{}",
        d.log()
    );
    assert!(bounces(&d)[0].contains("Final-Recipient: rfc822; nobody@remote.test\r\n"));
    assert!(wait_until(Duration::from_secs(5), || queued(&spool) == 0));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bounces(&d).len(), 1, "one bounce, not one per retry");
}

#[test]
fn repeated_remote_recipient_is_sent_once() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    let r = c.send(
        "alice@example.test",
        &["dave@remote.test", "dave@remote.test"],
        MSG,
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || !net.got().is_empty()),
        "{}",
        d.log()
    );
    assert_eq!(net.got()[0].rcpts, ["<dave@remote.test>"]);
}

#[test]
fn silent_next_hops_do_not_hold_back_other_destinations() {
    use std::sync::atomic::Ordering;
    let net = Net::start(PeerBehaviour::default(), false);
    // mx.slow.test is 127.0.0.2, on the same port as the healthy peer on 127.0.0.1.
    let dots = daemon_util::raw_peer(
        ([127, 0, 0, 2], net.peer_port).into(),
        "250 ok\r\n",
        None,
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    // More messages to the silent domain than its concurrency limit (20 by default) and than
    // the old global limit (16).
    for _ in 0..25 {
        assert_eq!(c.send("alice@example.test", &["x@slow.test"], MSG).0, 250);
    }
    assert!(
        wait_until(Duration::from_secs(30), || dots.load(Ordering::SeqCst)
            >= 20),
        "{}",
        d.log()
    );
    // Mail to a healthy host goes out while all of slow.test's slots are held.
    assert_eq!(
        c.send("alice@example.test", &["dave@remote.test"], MSG).0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(30), || net.got().len() == 1),
        "{}",
        d.log()
    );
    // slow.test never had more than its 20 deliveries at once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dots.load(Ordering::SeqCst), 20);
}
#[test]
fn delivery_is_recorded_at_the_250_not_after_quit() {
    let net = Net::start(PeerBehaviour::default(), false);
    // mx.slow.test accepts the message with 250 and then never answers QUIT.
    let dots = daemon_util::raw_peer(
        ([127, 0, 0, 2], net.peer_port).into(),
        "250 ok\r\n",
        Some("250 2.0.0 accepted\r\n"),
        true,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let mut d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    assert_eq!(c.send("alice@example.test", &["x@slow.test"], MSG).0, 250);
    // The entry is finished while the peer still owes the reply to QUIT (whose timeout is
    // minutes).
    assert!(
        wait_until(Duration::from_secs(20), || queued(&spool) == 0),
        "{}",
        d.log()
    );
    assert_eq!(dots.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A crash now does not send it again.
    d.kill9();
    let d2 = d.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        dots.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{}",
        d2.log()
    );
}

#[test]
fn address_preference_orders_the_families() {
    let net = Net::start(PeerBehaviour::default(), false);
    for (pref, v6_first) in [("ipv4", false), ("ipv6", true)] {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("mail");
        let d = Daemon::start(
            &spool,
            net.dns.addr(),
            &[
                "--remote-port",
                &net.peer_port.to_string(),
                "--address-preference",
                pref,
            ],
        );
        let before = net.got().len();
        let mut c = d.connect();
        assert_eq!(c.send("alice@example.test", &["x@dual.test"], MSG).0, 250);
        assert!(
            wait_until(Duration::from_secs(20), || net.got().len() == before + 1),
            "{pref}: {}",
            d.log()
        );
        // Nothing listens on [::1] at the peer's port: trying it first shows as a failed
        // attempt before the delivery to 127.0.0.1.
        let log = d.log();
        let tried_v6 = log.contains(&format!("[::1]:{}", net.peer_port));
        assert_eq!(tried_v6, v6_first, "{pref}: {log}");
    }
}

/// A daemon relaying to `net`'s hosts, with `users` as its users file (next to the spool) and
/// a public listener on 127.0.0.2, and a client connected to that public listener.
fn with_public_alias(
    net: &Net,
    spool: &std::path::Path,
    users: &str,
    extra: &[&str],
) -> (Daemon, daemon_util::Smtp) {
    let users_file = spool.with_extension("users");
    std::fs::write(&users_file, users).unwrap();
    let port = net.peer_port.to_string();
    let (d, [public]) = Daemon::start_ports(spool, net.dns.addr(), |[p]| {
        let listen = format!("127.0.0.2:{p}");
        let mut args = vec![
            "--remote-port",
            &port,
            "-u",
            users_file.to_str().unwrap(),
            "-p",
            &listen,
        ];
        args.extend_from_slice(extra);
        daemon_util::strings(&args)
    });
    let c = daemon_util::Smtp::connect(([127, 0, 0, 2], public).into());
    (d, c)
}

#[test]
fn mail_from_the_network_forwarded_onward_gets_a_message_id_only() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let (d, mut c) = with_public_alias(&net, &spool, "alice\nfwd: alice, dave@remote.test\n", &[]);
    let msg = "From: x@outside.test\r\nSubject: fwd\r\n\r\nHello.\r\n";
    assert_eq!(c.send("x@outside.test", &["fwd@example.test"], msg).0, 250);
    assert!(
        wait_until(Duration::from_secs(20), || net.got().len() == 1),
        "{}",
        d.log()
    );
    let body = String::from_utf8(net.got()[0].body.clone()).unwrap();
    // Relayed mail gets a Message-ID (DESIGN); mail from the network gets no Date.
    assert!(body.contains("Subject: fwd\r\nMessage-ID: <"), "{body}");
    assert!(!body.contains("\r\nDate:"), "{body}");
    // The local copy is the same message.
    let local = String::from_utf8(spool_messages(&spool, "alice")[0].1.clone()).unwrap();
    assert!(local.contains("Subject: fwd\r\nMessage-ID: <"), "{local}");
}

#[test]
fn a_remote_sender_gets_one_bounce_per_message_when_all_recipients_are_done() {
    let net = Net::start(PeerBehaviour::default(), false);
    // x@slow.test is refused at once (550); y@tempfail.test is deferred until the message
    // expires. A forged remote sender (victim@remote.test, the healthy peer) must get one
    // bounce naming both, not one per attempt.
    daemon_util::raw_peer(
        ([127, 0, 0, 2], net.peer_port).into(),
        "550 5.1.1 no such user\r\n",
        None,
        false,
    );
    daemon_util::raw_peer(
        ([127, 0, 0, 3], net.peer_port).into(),
        "451 4.3.0 try again later\r\n",
        None,
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let (d, mut c) = with_public_alias(
        &net,
        &spool,
        "alice\nfwd: x@slow.test, y@tempfail.test\n",
        &["--retry-base", "1s", "--queue-lifetime", "3s"],
    );
    let msg = "From: victim@remote.test\r\nSubject: forged\r\n\r\nHello.\r\n";
    assert_eq!(
        c.send("victim@remote.test", &["fwd@example.test"], msg).0,
        250
    );
    let bounces = || -> Vec<String> {
        net.got()
            .into_iter()
            .filter(|g| g.from.is_empty())
            .map(|g| String::from_utf8_lossy(&g.body).into_owned())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || !bounces().is_empty()),
        "{}",
        d.log()
    );
    // Well past more retries: still one bounce, and the entry is gone.
    assert!(wait_until(Duration::from_secs(10), || queued(&spool) == 0));
    std::thread::sleep(Duration::from_secs(2));
    let b = bounces();
    assert_eq!(b.len(), 1, "{b:#?}");
    assert_eq!(net.got()[0].rcpts, ["<victim@remote.test>"]);
    assert!(
        b[0].contains("Final-Recipient: rfc822; x@slow.test"),
        "{}",
        b[0]
    );
    assert!(
        b[0].contains("Final-Recipient: rfc822; y@tempfail.test"),
        "{}",
        b[0]
    );
    assert!(b[0].contains("Status: 5.1.1"), "{}", b[0]);
    assert!(b[0].contains("Status: 4.4.7"), "{}", b[0]);
}

/// A message too long to be held in memory is written straight into its queue entry as it
/// arrives (local copy beside it): the next hop and the local mailbox get it whole, and no
/// temporary file is left in the queue or the spool.
#[test]
fn long_message_is_relayed_whole_from_its_queue_entry() {
    let net = Net::start(PeerBehaviour::default(), true);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut text =
        String::from("From: alice@example.test\r\nTo: dave@remote.test\r\nSubject: long\r\n\r\n");
    let mut n = 0;
    while text.len() < 600 * 1024 {
        text.push_str(&format!(
            "line {n:06} of a long message, to be relayed whole\r\n"
        ));
        n += 1;
    }
    let body_part = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    let mut c = d.connect();
    let r = c.send(
        "alice@example.test",
        &["dave@remote.test", "bob@example.test"],
        &text,
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || !net.got().is_empty()),
        "{}",
        d.log()
    );
    let got = net.got();
    assert_eq!(got.len(), 1);
    let relayed = String::from_utf8(got[0].body.clone()).unwrap();
    assert!(
        relayed.starts_with("Received: from client.test"),
        "{:.300}",
        relayed
    );
    assert!(
        relayed.contains("Subject: long\r\nMessage-ID: <"),
        "{:.600}",
        relayed
    );
    assert!(
        relayed.ends_with(&format!("\r\n\r\n{body_part}")),
        "the body changed"
    );
    let local = spool_messages(&spool, "bob");
    assert_eq!(local.len(), 1);
    let local = String::from_utf8(local[0].1.clone()).unwrap();
    assert!(
        local.starts_with("Return-Path: <alice@example.test>\r\n"),
        "{:.300}",
        local
    );
    assert!(
        local.ends_with(&format!("\r\n\r\n{body_part}")),
        "the local copy changed"
    );
    assert!(wait_until(Duration::from_secs(5), || queued(&spool) == 0));
    for staging in [".queue/tmp", ".tmp"] {
        let left: Vec<_> = std::fs::read_dir(spool.join(staging))
            .map(|r| r.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{staging}: {left:?}");
    }
}
