//! Hostile input that reaches the daemon's log: a next hop's reply text and SMTPUTF8
//! addresses with controls, separators and bidirectional overrides. The log file must hold no
//! raw control character and no line that text from the network began.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::time::Duration;

use daemon_util::{wait_until, Daemon, Net, PeerBehaviour};

const MSG: &str = "From: alice@example.test\r\nSubject: x\r\n\r\nHello.\r\n";

/// Bytes that must never be in a log line: C0 controls but the line ends, DEL, C1 controls,
/// line/paragraph separators, bidi controls.
fn raw_unsafe(log: &str) -> Vec<char> {
    log.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
        })
        .collect()
}

#[test]
fn a_next_hops_reply_is_escaped_in_the_log() {
    let net = Net::start(PeerBehaviour::default(), false);
    // mx.slow.test is 127.0.0.2: a next hop whose RCPT reply is two lines of hostile text.
    let evil = "550-5.1.1 nul\0 esc\x1b]0;owned\x07 bell del\x7f c1\u{85}\r\n\
                550 5.1.1 sep\u{2028}2026-12-01T00:00:00Z  INFO forged line\u{202e}txet\r\n";
    daemon_util::raw_peer(([127, 0, 0, 2], net.peer_port).into(), evil, None, false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    assert_eq!(c.send("alice@example.test", &["x@slow.test"], MSG).0, 250);
    assert!(
        wait_until(Duration::from_secs(20), || !d
            .spool_messages("alice")
            .is_empty()),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(log.contains("delivery failed permanently"), "{log}");
    assert_eq!(raw_unsafe(&log), Vec::<char>::new(), "{log}");
    // The forged text is inside an escaped field, not a line of its own.
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "{log}"
    );
    assert!(log.contains("\\u{2028}2026-12-01T00:00:00Z"), "{log}");
}

#[test]
fn smtputf8_addresses_are_escaped_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, "127.0.0.1:1".parse().unwrap(), &[]);
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let from = "MAIL FROM:<\u{202e}moc.knab\u{2066}x\u{2028}y\u{85}z@example.test> SMTPUTF8";
    let r = c.cmd(from);
    assert_eq!(r.0, 250, "{r:?}");
    assert_eq!(c.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let r = c.cmd("Subject: x\r\n\r\nhi\r\n.");
    assert_eq!(r.0, 250, "{r:?}");
    let _ = c.cmd("QUIT");
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .contains("\\u{202e}moc.knab")));
    let log = d.log();
    assert_eq!(raw_unsafe(&log), Vec::<char>::new(), "{log}");
}

/// The total size of the files under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

#[test]
fn a_900_line_reply_to_100_recipients_is_not_kept_100_times() {
    let net = Net::start(PeerBehaviour::default(), false);
    let mut huge = String::new();
    for i in 0..899 {
        huge.push_str(&format!(
            "452-4.5.3 line {i} of a reply meant to fill the queue\r\n"
        ));
    }
    huge.push_str("452 4.5.3 the end\r\n");
    daemon_util::raw_peer(([127, 0, 0, 2], net.peer_port).into(), &huge, None, false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let rcpts: Vec<String> = (0..100).map(|i| format!("r{i}@slow.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let queue = spool.join(".queue");
    let before = du(&queue);
    let mut c = d.connect();
    assert_eq!(c.send("alice@example.test", &rcpts, MSG).0, 250);
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("delivery deferred")
            && d.log().matches("delivery deferred").count() == 100),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let grown = du(&queue) - before;
    assert!(grown < 32 * 1024, "the queue grew by {grown} octets");
    let log = d.log();
    assert!(log.len() < 128 * 1024, "log of {} octets", log.len());
    assert!(log.contains("452 4.5.3 line 0 of a reply"), "{log}");
    assert!(!log.contains("line 500 of a reply"));
}

/// A session greeted with `220` within 5 s (a closed one may be counted for a moment).
fn greeted_soon(d: &Daemon) -> daemon_util::Smtp {
    let mut greeted = None;
    assert!(wait_until(Duration::from_secs(5), || {
        let c = d.connect();
        let ok = c.greeting.0 == 220;
        greeted = ok.then_some(c);
        ok
    }));
    greeted.unwrap()
}

/// `--max-connections`: sessions past it are answered `421 4.7.0` and closed, a freed place is
/// taken again, and a limit the open file limit cannot hold is warned about at start.
#[test]
fn connections_past_max_connections_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = Daemon::start(
        &spool,
        "127.0.0.1:1".parse().unwrap(),
        &["--max-connections", "2"],
    );
    let mut first = d.connect();
    assert_eq!(first.greeting.0, 220, "{:?}", first.greeting);
    // The start-up probe's connection may still be counted for a moment.
    let mut second = greeted_soon(&d);
    let mut third = d.connect();
    assert_eq!(
        third.greeting,
        (
            421,
            "4.7.0 mx.example.test Too many connections, try again later".to_owned()
        )
    );
    // Closed after the 421.
    assert_eq!(third.rest(), "");
    assert_eq!(first.cmd("QUIT").0, 221);
    drop(first);
    assert_eq!(greeted_soon(&d).cmd("EHLO c.test").0, 250);
    assert_eq!(second.cmd("NOOP").0, 250);
    assert!(!d.log().contains("open file limit"), "{}", d.log());
    drop(d);

    // No limit at all: more than the open file limit can hold, said at start.
    let d = Daemon::start(
        &dir.path().join("spool2"),
        "127.0.0.1:1".parse().unwrap(),
        &["--max-connections", "0"],
    );
    assert!(wait_until(Duration::from_secs(5), || d.log().contains(
        "--max-connections allows more sessions than the open file limit"
    )));
}
