//! End-to-end: local delivery through the built daemon.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::time::Duration;

use daemon_util::{queued, spool_messages, wait_until, Daemon, Net, PeerBehaviour, Smtp};
use lettre::{Message, SmtpTransport, Transport};

fn lettre_send(port: u16, to: &[&str]) {
    let mut b = Message::builder()
        .from("Alice <alice@example.test>".parse().unwrap())
        .subject("Hello from lettre");
    for t in to {
        b = b.to(t.parse().unwrap());
    }
    let msg = b
        .body("Hi both,\r\n.leading dot line\r\nbye\r\n".to_string())
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let resp = mailer.send(&msg).unwrap();
    assert!(resp.is_positive());
}

fn check_headers(msg: &[u8], rcpt_for: Option<&str>) {
    let text = String::from_utf8_lossy(msg);
    assert!(
        text.starts_with("Return-Path: <alice@example.test>\r\nReceived: from "),
        "{text}"
    );
    assert!(
        text.contains("\r\n\tby mx.example.test with ESMTP id "),
        "{text}"
    );
    if let Some(r) = rcpt_for {
        assert!(text.contains(&format!("\r\n\tfor <{r}>;")), "{text}");
    }
    assert!(text.contains("Subject: Hello from lettre\r\n"));
    // Dot-stuffing was undone: the line starts with one dot.
    assert!(text.contains("\r\n.leading dot line\r\nbye\r\n"), "{text}");
}

#[test]
fn two_local_users_spool() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &[]);
    lettre_send(d.port, &["bob@example.test", "Carol+list@EXAMPLE.test"]);
    for user in ["bob", "carol"] {
        let msgs = spool_messages(&spool, user);
        assert_eq!(msgs.len(), 1, "{user}");
        assert_eq!(msgs[0].0, 1);
        check_headers(&msgs[0].1, None);
        assert_eq!(
            std::fs::read(spool.join(user).join("1.status")).unwrap(),
            b"\\Recent\n"
        );
    }
    // A second message gets number 2, with `for <...>` since it has one recipient.
    lettre_send(d.port, &["bob@example.test"]);
    let msgs = spool_messages(&spool, "bob");
    assert_eq!(msgs.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
    check_headers(&msgs[1].1, Some("bob@example.test"));
}

#[test]
fn two_local_users_maildir() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &["--format", "maildir"]);
    lettre_send(d.port, &["bob@example.test", "carol@example.test"]);
    for user in ["bob", "carol"] {
        let new: Vec<_> = std::fs::read_dir(spool.join(user).join("new"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(new.len(), 1, "{user}");
        check_headers(&std::fs::read(new[0].path()).unwrap(), None);
        assert!(spool.join(user).join("cur").is_dir());
        assert_eq!(
            std::fs::read_dir(spool.join(user).join("tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}

#[test]
fn fifty_clients_one_mailbox() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &[]);
    let port = d.port;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Smtp::connect(([127, 0, 0, 1], port).into());
                let body = format!(
                    "Subject: n{i}\r\n\r\n{}\r\n",
                    format!("line {i}\r\n").repeat(200)
                );
                let r = c.send("alice@example.test", &["bob@example.test"], &body);
                assert_eq!(r.0, 250, "{r:?}");
                c.cmd("QUIT");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let msgs = spool_messages(&spool, "bob");
    assert_eq!(
        msgs.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<u64>>()
    );
    let mut seen = std::collections::HashSet::new();
    for (n, m) in &msgs {
        let text = String::from_utf8(m.clone()).unwrap();
        let i: usize = text
            .split("Subject: n")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            text.ends_with(&format!(
                "\r\n\r\n{}\r\n",
                format!("line {i}\r\n").repeat(200)
            )),
            "message {n}"
        );
        assert!(seen.insert(i));
        assert_eq!(
            std::fs::read(spool.join("bob").join(format!("{n}.status"))).unwrap(),
            b"\\Recent\n"
        );
    }
}

#[test]
fn recipient_checks_and_hop_limit() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let users = dir.path().join("users");
    std::fs::write(&users, "# test users\nbob\nteam: bob, carol\ncarol\n").unwrap();
    let d = Daemon::start(&spool, net.dns.addr(), &["-u", users.to_str().unwrap()]);
    let mut c = d.connect();
    assert_eq!(c.greeting.0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").0, 250);
    let r = c.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550);
    assert!(r.1.starts_with("5.1.1 "), "{r:?}");
    let r = c.cmd("RCPT TO:<\"../etc\"@example.test>");
    assert_eq!(r.0, 550);
    assert!(r.1.starts_with("5.1.3 "), "{r:?}");
    // Postmaster is always accepted, with and without a domain.
    assert_eq!(c.cmd("RCPT TO:<postmaster>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<team@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let r = c.cmd("Subject: to the team\r\n\r\nhello\r\n.");
    assert_eq!(r.0, 250, "{r:?}");
    assert_eq!(spool_messages(&spool, "bob").len(), 1);
    assert_eq!(spool_messages(&spool, "carol").len(), 1);
    assert_eq!(spool_messages(&spool, "postmaster").len(), 1);

    // 100 Received headers: a loop.
    let mut c = d.connect();
    let msg = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(100)
        + "Subject: loop\r\n\r\nx\r\n";
    let r = c.send("alice@example.test", &["bob@example.test"], &msg);
    assert_eq!(r.0, 554, "{r:?}");
    assert!(r.1.starts_with("5.4.6 "), "{r:?}");
    // 99 are fine.
    let msg = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(99)
        + "Subject: ok\r\n\r\nx\r\n";
    let r = c.send("alice@example.test", &["bob@example.test"], &msg);
    assert_eq!(r.0, 250, "{r:?}");
    assert_eq!(spool_messages(&spool, "bob").len(), 2);
    // A text line over 1000 octets is accepted and stored unchanged.
    let long = "<p>".to_owned() + &"x".repeat(3000) + "</p>";
    let msg = format!("Subject: long line\r\n\r\n{long}\r\n");
    let r = c.send("alice@example.test", &["bob@example.test"], &msg);
    assert_eq!(r.0, 250, "{r:?}");
    let stored = spool_messages(&spool, "bob");
    assert_eq!(stored.len(), 3);
    // (After the header section, where the Date: and Message-ID: it lacked were added.)
    assert!(stored[2]
        .1
        .ends_with(format!("\r\n\r\n{long}\r\n").as_bytes()));
    // Nothing half-written is left in the staging directory.
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_dir(
        spool.join(".tmp")
    )
    .unwrap()
    .count()
        == 0));
}

#[test]
fn public_listener_refuses_relay() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let (d, [public]) = Daemon::start_ports(&spool, net.dns.addr(), |[p]| {
        daemon_util::strings(&["-p", &format!("127.0.0.2:{p}")])
    });
    let mut c = Smtp::connect(([127, 0, 0, 2], public).into());
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<spammer@evil.test>").0, 250);
    for rcpt in [
        "victim@remote.test",
        "x@[127.0.0.9]",
        "bob@example.test.evil.test",
        "bob%example.test@remote.test",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(r.0, 554, "{rcpt}: {r:?}");
        assert!(
            r.1.starts_with("5.7.1 ") && r.1.contains("Relay access denied"),
            "{r:?}"
        );
    }
    // Local recipients are fine, also as an address literal of the listener.
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<carol@[127.0.0.2]>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: hi\r\n\r\nlocal\r\n.").0, 250);
    assert_eq!(spool_messages(&spool, "bob").len(), 1);
    assert_eq!(spool_messages(&spool, "carol").len(), 1);
    // Nothing was queued and the peer never saw a connection.
    std::thread::sleep(Duration::from_millis(300));
    assert!(net.got().is_empty());
    assert_eq!(queued(&spool), 0);
    drop(d);
}

/// `--mailbox-mode`/`--mailbox-group` reach the files; a planted symlink and an exhausted
/// mailbox get a 4xx for the message and a log line naming the path, and nothing is written
/// outside the spool.
#[test]
fn mailbox_options_and_refused_mailboxes() {
    use std::os::unix::fs::MetadataExt;
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    std::fs::create_dir(&spool).unwrap();
    // Root (as in CI) may use any group; others their own.
    let me = std::fs::metadata(&spool).unwrap();
    let gid = if me.uid() == 0 { 4242 } else { me.gid() };
    let uid = if me.uid() == 0 { 4343 } else { me.uid() };
    let (gid_text, uid_text) = (gid.to_string(), uid.to_string());
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--mailbox-mode",
            "2770",
            "--mailbox-group",
            &gid_text,
            "--mailbox-owner",
            &uid_text,
        ],
    );
    let mut c = d.connect();
    let msg = "Subject: hi\r\n\r\nhello\r\n";
    assert_eq!(c.send("a@example.test", &["bob@example.test"], msg).0, 250);
    let mode = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(mode(&spool.join("bob")), (0o2770, uid, gid));
    assert_eq!(mode(&spool.join("bob/1")), (0o660, uid, gid));
    assert_eq!(mode(&spool.join("bob/1.status")), (0o660, uid, gid));

    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), spool.join("eve")).unwrap();
    let mut c = d.connect();
    let (code, text) = c.send("a@example.test", &["eve@example.test"], msg);
    assert_eq!(code, 451, "{text}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    let eve = spool.join("eve").display().to_string();
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains(&eve)),
        "{}",
        d.log()
    );

    // bob's numbers used up: the high-water marker (an empty file named by the number) at
    // u64::MAX.
    let bob = spool.join("bob");
    for e in std::fs::read_dir(&bob).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with(".highwater.") {
            std::fs::remove_file(bob.join(name)).unwrap();
        }
    }
    std::fs::write(bob.join(format!(".highwater.{}", u64::MAX)), b"").unwrap();
    let mut c = d.connect();
    assert_eq!(c.send("a@example.test", &["bob@example.test"], msg).0, 451);
    assert_eq!(spool_messages(&spool, "bob").len(), 1);
}

#[test]
fn many_messages_on_one_connection_with_rset_and_noop_between() {
    // A client that reuses its connection (as Postfix's connection cache does) sends RSET
    // before each message, and here a NOOP too: 150 messages are 300 junk commands, past the
    // 100 allowed, but each accepted message starts the count again, so none is refused and
    // the connection is not cut off with `421 4.7.0 Too many errors`.
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &[]);
    let mut c = d.connect();
    for i in 0..150 {
        assert_eq!(c.cmd("RSET"), (250, "2.0.0 OK".into()), "message {i}");
        assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".into()), "message {i}");
        let (code, text) = c.send(
            "alice@example.test",
            &["bob@example.test"],
            &format!("Subject: {i}\r\n\r\nbody\r\n"),
        );
        assert_eq!(code, 250, "message {i}: {text}");
    }
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(spool_messages(&spool, "bob").len(), 150);
}

#[test]
fn bdat_after_helo_is_refused_and_its_chunk_swallowed() {
    // CHUNKING is offered to EHLO only: after HELO a BDAT gets `503 5.5.1 Send EHLO first`
    // whether its chunk came in the same write or the next, and nothing is delivered; after
    // EHLO the same chunk is.
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &[]);
    let chunk = "Subject: chunked\r\n\r\nhi\r\n";
    for split in [false, true] {
        let mut c = d.connect();
        assert_eq!(c.cmd("HELO client.test").0, 250);
        assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
        let line = format!("BDAT {} LAST\r\n", chunk.len());
        if split {
            c.send_raw(line.as_bytes());
            std::thread::sleep(Duration::from_millis(50));
            c.send_raw(chunk.as_bytes());
        } else {
            c.send_raw(format!("{line}{chunk}").as_bytes());
        }
        assert_eq!(
            c.reply(),
            (503, "5.5.1 Send EHLO first".into()),
            "split {split}"
        );
        assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".into()), "split {split}");
        assert_eq!(c.cmd("QUIT").0, 221);
    }
    assert!(spool_messages(&spool, "bob").is_empty());
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
    c.send_raw(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    assert_eq!(c.reply().0, 250);
    let msgs = spool_messages(&spool, "bob");
    assert_eq!(msgs.len(), 1);
    let text = String::from_utf8_lossy(&msgs[0].1);
    assert!(text.contains("\r\nSubject: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhi\r\n"), "{text}");
}

#[test]
fn canonically_equivalent_spellings_reach_one_mailbox() {
    // Decomposed `jörg` (as some clients send it), precomposed `jörg`, and Hangul as
    // conjoining jamo and as the syllable: one directory each, in NFC.
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(&spool, net.dns.addr(), &[]);
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    for to in [
        "jo\u{308}rg",
        "j\u{f6}rg",
        "\u{1112}\u{1161}\u{11ab}",
        "\u{d55c}",
    ] {
        assert_eq!(c.cmd("MAIL FROM:<alice@example.test> SMTPUTF8").0, 250);
        let r = c.cmd(&format!("RCPT TO:<{to}@example.test>"));
        assert_eq!(r.0, 250, "{to:?}: {r:?}");
        assert_eq!(c.cmd("DATA").0, 354);
        c.send_raw(b"Subject: x\r\n\r\nhi\r\n.\r\n");
        assert_eq!(c.reply().0, 250, "{to:?}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, ["j\u{f6}rg", "\u{d55c}"]);
    assert_eq!(spool_messages(&spool, "j\u{f6}rg").len(), 2);
    assert_eq!(spool_messages(&spool, "\u{d55c}").len(), 2);
}

#[test]
fn mail_is_refused_at_mail_from_when_the_spool_lacks_space() {
    // A largest message of 100 TB: its 1.5x is more than any test machine has free, so the
    // transaction is refused before the client sends anything (452 4.3.1, as Postfix's
    // queue_minfree), not at the end of the data. A declared SIZE= past the free space too.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("mail"),
        "127.0.0.1:1".parse().unwrap(),
        &["--max-message-size", "100000000000000"],
    );
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.test>"),
        (452, "4.3.1 Insufficient system storage".to_owned())
    );
    // Temporary: the session goes on.
    assert_eq!(c.cmd("NOOP").0, 250);
    drop(c);
    assert!(d
        .log()
        .contains("sender refused: not enough free space for mail"));
    drop(d);

    let d = Daemon::start(
        &dir.path().join("mail2"),
        "127.0.0.1:1".parse().unwrap(),
        &["--max-message-size", "0"],
    );
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.test> SIZE=99999999999999999"),
        (452, "4.3.1 Insufficient system storage".to_owned())
    );
    // With room, as usual.
    assert_eq!(c.cmd("MAIL FROM:<a@example.test> SIZE=1000").0, 250);
}
