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
    // The new file, as the first, is the owner's and the group's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "{mode:o}");
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
    c.cmd("QUIT");
    assert!(wait_until(Duration::from_secs(30), || {
        let log = d.log();
        log.contains("delivered queue_id=") && log.contains("disconnected messages=1 ")
    }));
    let stored = d.spool_messages("bob");
    let message = String::from_utf8(stored[0].1.clone()).unwrap();
    let received_id = message
        .split(" id ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_owned();
    let log = d.log();
    let line = |needle: &str| line_with(&log, needle);
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
             tls=TLSv1.3/TLS_"
        )),
        "{delivered}"
    );
    assert!(delivered.contains(" reply=\"250 "), "{delivered}");
    // Every line of the attempt is in the entry's span, and its last line says it is gone.
    assert!(
        delivered.contains(&format!("queue{{queue_id={queue_id}}}: ")),
        "{delivered}"
    );
    let removed = line("removed: every recipient done");
    assert!(
        removed.contains(&format!("queue_id={queue_id}")),
        "{removed}"
    );
    // The session's first and last lines.
    assert!(
        log.contains("}: smtp_server::connection: connected\n"),
        "{log}"
    );
    // (The daemon's start was waited for with a connection of its own: messages=0.)
    line("disconnected messages=1 duration_ms=");
    assert!(!log.contains("Some("), "Rust Debug in the log: {log}");
}

/// Refusals are logged with the reply the client got, and values with spaces are quoted so
/// that `key=value` pairs split back.
#[test]
fn refusals_are_logged_with_their_reply() {
    let net = daemon_util::Net::start(daemon_util::PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "bob\n").unwrap();
    let (d, [public_port]) = Daemon::start_ports(&spool, net.dns.addr(), |[p]| {
        daemon_util::strings(&[
            "--max-message-size",
            "2000",
            "--users",
            users.to_str().unwrap(),
            "-p",
            &format!("127.0.0.2:{p}"),
            "--no-email-auth",
        ])
    });
    let public = format!("127.0.0.2:{public_port}");
    let mut c = d.connect();
    c.cmd("EHLO client.test");
    // The session's own refusals (the size announced, a syntax error) are logged too.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test> SIZE=999999").0, 552);
    assert_eq!(c.cmd("MAIL FROM:alice").0, 501);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<nobody@example.test>").0, 550);
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(3000)).as_bytes());
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    c.cmd("QUIT");
    // The public listener refuses relaying.
    let mut p = daemon_util::Smtp::connect(public.parse().unwrap());
    p.cmd("EHLO client.test");
    p.cmd("MAIL FROM:<x@elsewhere.test>");
    assert_eq!(p.cmd("RCPT TO:<y@remote.test>").0, 554);
    p.cmd("QUIT");
    assert!(wait_until(Duration::from_secs(10), || d
        .log()
        .matches("disconnected")
        .count()
        >= 2));
    let log = d.log();
    let line = |needle: &str| line_with(&log, needle);
    let unknown = line("refused RCPT from=<alice@example.test> to=<nobody@example.test>");
    assert!(
        unknown.ends_with(
            "reply=\"550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown\""
        ),
        "{unknown}"
    );
    let big = line("message refused");
    assert!(
        big.contains("rcpts=<bob@example.test> outcome=\"552 5.3.4 "),
        "{big}"
    );
    let relay = line("refused RCPT from=<x@elsewhere.test> to=<y@remote.test>");
    assert!(
        relay.contains("reply=\"554 5.7.1 <y@remote.test>: Relay access denied\""),
        "{relay}"
    );
    assert!(relay.contains("listener=public"), "{relay}");
    assert!(!log.contains("message lost"), "{log}");
    let size = line("refused command=MAIL reply=\"552 5.3.4 ");
    assert!(size.contains("session{id="), "{size}");
    line("refused command=MAIL reply=\"501 ");
}

/// `--syslog SOCKET`: one datagram per line, `<PRI>Mmm dd hh:mm:ss smtp-server[PID]: ...`
/// with facility mail and the line's severity, as a syslog daemon on `/dev/log` reads them.
#[test]
fn syslog_gets_one_datagram_per_line_with_facility_mail() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let spool = dir.path().join("mail");
    let port = daemon_util::free_port();
    let mut child = Command::new(daemon_util::BIN)
        .args([
            "-d",
            spool.to_str().unwrap(),
            "-s",
            "example.test",
            "--hostname",
        ])
        .args([
            "mx.example.test",
            "--no-public",
            "-l",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--dns-server",
            "127.0.0.1:1",
            "--syslog",
            sock_path.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    // Until the startup line, then a message and its lines.
    let mut sent = false;
    while !got.iter().any(|l: &String| l.contains("stored as bob/1")) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = child.kill();
                panic!("no more datagrams ({e}): {got:#?}");
            }
        };
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if !sent && got.iter().any(|l| l.contains("smtp-server started")) {
            sent = true;
            let mut c = daemon_util::Smtp::connect(([127, 0, 0, 1], port).into());
            let (code, text) = c.send(
                "alice@example.test",
                &["bob@example.test"],
                "Subject: x\r\n\r\nx\r\n",
            );
            assert_eq!(code, 250, "{text}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let shape = regex_like(pid);
    for line in &got {
        assert!(shape(line), "not syslog's form: {line:?}");
        assert!(!line.ends_with('\n'), "{line:?}");
    }
    // mail.info = 2 * 8 + 6.
    let stored = got.iter().find(|l| l.contains("stored as bob/1")).unwrap();
    assert!(stored.starts_with("<22>"), "{stored}");
    // No second time stamp: syslog's is the one; one space after the tag.
    assert!(!stored.contains("Z  INFO"), "{stored}");
    assert!(
        stored.contains(&format!("smtp-server[{pid}]: INFO ")),
        "{stored}"
    );
}

/// Checks `<PRI>Mmm dd hh:mm:ss smtp-server[PID]: ` at the start of a line.
fn regex_like(pid: u32) -> impl Fn(&str) -> bool {
    move |line: &str| {
        let Some(rest) = line.strip_prefix('<') else {
            return false;
        };
        let Some((pri, rest)) = rest.split_once('>') else {
            return false;
        };
        let pri_ok = pri.parse::<u8>().is_ok_and(|p| p >> 3 == 2);
        // "Dec  1 15:00:00 " is 16 bytes.
        let stamp = rest.get(..16).unwrap_or("");
        let stamp_ok = stamp.as_bytes().get(3) == Some(&b' ')
            && stamp.as_bytes().get(9) == Some(&b':')
            && stamp.ends_with(' ');
        let tag = format!("smtp-server[{pid}]: ");
        pri_ok && stamp_ok && rest.get(16..).is_some_and(|r| r.starts_with(&tag))
    }
}

/// The first line of `log` containing `needle` (the test fails without one).
fn line_with(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}: {log}"))
        .to_owned()
}
