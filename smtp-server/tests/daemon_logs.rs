//! The log as an admin uses it: `--log-file` reopened on SIGHUP after logrotate moved it
//! away, and `--log-format json` lines that parse, with hostile text escaped.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::process::Command;
use std::time::Duration;

use daemon_util::{wait_until, Daemon};

/// Sends one message from `from` (which then appears in the log's message line).
fn send_from(d: &Daemon, from: &str) {
    let mut c = d.connect();
    let (code, text) = c.send(from, &["bob@example.test"], "Subject: x\r\n\r\nx\r\n");
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").0, 221);
}

fn hup(d: &Daemon) {
    let st = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn log_file_is_reopened_on_sighup_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("mail"),
        "127.0.0.1:1".parse().unwrap(),
        &[],
    );
    send_from(&d, "before-rotation@example.test");
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .contains("before-rotation")));
    // logrotate (without copytruncate): move the file away, then `postrotate` sends SIGHUP.
    let rotated = d.log.with_extension("1");
    std::fs::rename(&d.log, &rotated).unwrap();
    hup(&d);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("SIGHUP: log file reopened")),
        "no new log file"
    );
    send_from(&d, "after-rotation@example.test");
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .contains("after-rotation")));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("before-rotation") && !old.contains("after-rotation"),
        "{old}"
    );
    assert!(!d.log().contains("before-rotation"));
}

#[test]
fn json_lines_parse_and_hostile_text_stays_inside_strings() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("mail"),
        "127.0.0.1:1".parse().unwrap(),
        &["--log-format", "json"],
    );
    let mut c = d.connect();
    // A right-to-left override and a C1 NEXT LINE in the sender.
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a\u{85}b\u{202e}c@example.test> SMTPUTF8")
            .0,
        250
    );
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: x\r\n\r\nx\r\n.").0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .contains("\"message\"")));
    let log = d.log();
    assert!(
        !log.contains('\u{202e}') && !log.contains('\u{85}'),
        "raw controls in the log"
    );
    let mut messages = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "message" {
            messages += 1;
            assert_eq!(
                v["fields"]["from"], "<a\u{85}b\u{202e}c@example.test>",
                "{line}"
            );
            assert_eq!(v["fields"]["user"], "-", "{line}");
        }
    }
    assert_eq!(messages, 1, "{log}");
    assert!(log.contains("a\\u0085b\\u202ec@example.test"), "{log}");
}

/// A message's life in the text log: the library's line with the reply, the daemon's
/// `message accepted` line linking the Received id to the queue id, `stored as mailbox/number`
/// per local copy, and the relay's lines with the same queue id.
#[test]
fn one_message_is_followed_by_its_ids_from_acceptance_to_delivery() {
    // The next hop offers STARTTLS (a self-signed certificate: opportunistic TLS uses it).
    let net = daemon_util::Net::start(daemon_util::PeerBehaviour::default(), true);
    let dir = tempfile::tempdir().unwrap();
    let remote_port = net.peer_port.to_string();
    let d = Daemon::start(
        &dir.path().join("mail"),
        net.dns.addr(),
        &["--remote-port", &remote_port],
    );
    let mut c = d.connect();
    let (code, text) = c.send(
        "alice@example.test",
        &["bob@example.test", "carol@example.test", "x@remote.test"],
        "Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let queue_id = text.rsplit(' ').next().unwrap().to_owned();
    assert!(wait_until(Duration::from_secs(30), || d
        .log()
        .contains("delivered queue_id=")));
    let stored = d.spool_messages("bob");
    let message = String::from_utf8(stored[0].1.clone()).unwrap();
    let received_id = message
        .split(" id ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_owned();
    let log = d.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}: {log}"))
            .to_owned()
    };
    let accepted = line("message accepted");
    assert!(
        accepted.contains(&format!("id={received_id} queue_id={queue_id} ")),
        "{accepted}"
    );
    assert!(accepted.contains("stored=2"), "{accepted}");
    for mailbox in ["bob/1", "carol/1"] {
        let l = line(&format!("stored as {mailbox}"));
        assert!(l.contains(&format!("id={received_id} ")), "{l}");
    }
    let delivered = line("delivered queue_id=");
    assert!(
        delivered.contains(&format!(
            "queue_id={queue_id} to=<x@remote.test> via=mx.remote.test[127.0.0.1]:{remote_port} \
             tls=TLSv1_3/TLS13_"
        )),
        "{delivered}"
    );
    assert!(delivered.contains(" reply=250 "), "{delivered}");
    assert!(!log.contains("Some("), "Rust Debug in the log: {log}");
}
