//! End-to-end DKIM signing: keys made by `smtp-server dkim-keygen`, messages relayed from the
//! loopback listener to a peer, and what the peer got checked by mail-auth's verifier against
//! the published record, served by a DNS server on loopback.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use daemon_util::{dkim_keygen as keygen, wait_until, Daemon, Net, PeerBehaviour, BIN};
use smtp_client::testdns::TestDns;

fn authenticator(addr: SocketAddr) -> mail_auth::MessageAuthenticator {
    let resolver = smtp_client::Resolver::with_nameserver(addr).unwrap();
    mail_auth::MessageAuthenticator(resolver.hickory().clone())
}

/// mail-auth's results for each signature of `message`.
fn verify(net: &Net, dns: SocketAddr, message: &[u8]) -> Vec<mail_auth::DkimResult> {
    net.rt.block_on(async {
        let parsed = mail_auth::AuthenticatedMessage::parse(message).unwrap();
        authenticator(dns)
            .verify_dkim(&parsed)
            .await
            .into_iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

/// The tags of the first (our) DKIM-Signature of `message`.
fn our_tags(message: &str) -> std::collections::HashMap<String, String> {
    assert!(message.starts_with("DKIM-Signature: "), "{message}");
    let mut field = String::new();
    for (i, line) in message.split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        field.push_str(line);
    }
    let field: String = field["DKIM-Signature:".len()..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    field
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Sends one message, with BODY=8BITMIME when asked.
fn send(d: &Daemon, from: &str, message: &[u8], eight_bit: bool) {
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let mail = if eight_bit {
        format!("MAIL FROM:<{from}> BODY=8BITMIME")
    } else {
        format!("MAIL FROM:<{from}>")
    };
    assert_eq!(c.cmd(&mail).0, 250);
    assert_eq!(c.cmd("RCPT TO:<dave@remote.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let mut data = Vec::new();
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.extend_from_slice(b".\r\n");
    c.send_raw(&data);
    let r = c.reply();
    assert_eq!(r.0, 250, "{r:?}");
    let _ = c.cmd("QUIT");
}

#[test]
fn relayed_mail_is_signed_once_and_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = keygen(keys.path(), "ed", "ed25519");
    assert!(record.starts_with("v=DKIM1; k=ed25519; p="), "{record}");
    let net = Net::start(PeerBehaviour::default(), false);
    let dns = net
        .rt
        .block_on(
            TestDns::builder()
                .txt("ed._domainkey.example.test", &record)
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let spec = format!("example.test:ed:{}", key.display());
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--dkim-key",
            &spec,
        ],
    );
    let long = "x".repeat(2000);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "plain",
            b"From: Alice <alice@example.test>\r\nTo: dave@remote.test\r\nSubject: plain\r\n\r\nHello.\r\n".to_vec(),
            false,
        ),
        (
            "dots",
            b"From: alice@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n".to_vec(),
            false,
        ),
        (
            "eightbit",
            "From: alice@example.test\r\nSubject: eightbit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e, d\u{e9}j\u{e0} vu \u{2603}\r\n"
                .as_bytes()
                .to_vec(),
            true,
        ),
        (
            "long",
            format!("From: alice@example.test\r\nSubject: long\r\n\r\n{long}\r\nshort\r\n").into_bytes(),
            false,
        ),
        (
            // Longer than what is held in memory (128 KiB): signed from its temporary file.
            "big",
            format!(
                "From: alice@example.test\r\nSubject: big\r\n\r\n{}",
                "A line of a message longer than the part held in memory.\r\n".repeat(5000)
            )
            .into_bytes(),
            false,
        ),
        (
            "presigned",
            b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=elsewhere.test; s=x;\r\n\th=from:subject; bh=AAAA; b=AAAA\r\nFrom: alice@example.test\r\nSubject: presigned\r\n\r\nForwarded.\r\n".to_vec(),
            false,
        ),
        (
            "otherdomain",
            b"From: alice@other.test\r\nSubject: otherdomain\r\n\r\nNo key for this one.\r\n".to_vec(),
            false,
        ),
    ];
    for (_, msg, eight) in &cases {
        send(&d, "alice@example.test", msg, *eight);
    }
    assert!(
        wait_until(Duration::from_secs(30), || net.got().len() == cases.len()),
        "{}",
        d.log()
    );
    let got = net.got();
    for (name, _, _) in &cases {
        let g = got
            .iter()
            .find(|g| String::from_utf8_lossy(&g.body).contains(&format!("Subject: {name}\r\n")))
            .unwrap_or_else(|| panic!("{name} not delivered"));
        let body = String::from_utf8_lossy(&g.body).into_owned();
        let ours = body.matches("DKIM-Signature:").count() - usize::from(*name == "presigned");
        if *name == "otherdomain" {
            assert_eq!(ours, 0, "{body}");
            assert!(body.starts_with("Received: "), "{body}");
            continue;
        }
        assert_eq!(ours, 1, "{name}: {body}");
        let t = our_tags(&body);
        assert_eq!(t["d"], "example.test", "{name}");
        assert_eq!(t["s"], "ed", "{name}");
        assert_eq!(t["a"], "ed25519-sha256", "{name}");
        assert_eq!(t["c"], "relaxed/relaxed", "{name}");
        let h: Vec<String> = t["h"].split(':').map(str::to_ascii_lowercase).collect();
        assert_eq!(
            h.iter().filter(|n| *n == "from").count(),
            2,
            "{name}: {h:?}"
        );
        // Our Received: and Message-ID:/Date: additions are what was signed.
        assert!(body.contains("\r\nReceived: from client.test"), "{body}");
        assert!(h.contains(&"message-id".to_owned()), "{h:?}");
        let results = verify(&net, dns.addr(), &g.body);
        let passes = results
            .iter()
            .filter(|r| **r == mail_auth::DkimResult::Pass)
            .count();
        assert_eq!(passes, 1, "{name}: {results:?}\n{body}");
        if *name == "presigned" {
            assert_eq!(results.len(), 2, "{results:?}");
        }
        if *name == "long" {
            assert!(body.contains(&long), "the long line arrives whole");
        }
        if *name == "dots" {
            assert!(
                body.contains("\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"),
                "{body}"
            );
        }
    }
    let log = d.log();
    assert!(
        log.contains("not DKIM-signed: no --dkim-key for the From: domain"),
        "{log}"
    );
}

#[test]
fn a_retry_sends_the_same_signed_bytes() {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = keygen(keys.path(), "rsa", "rsa");
    assert!(record.starts_with("v=DKIM1; k=rsa; p="), "{record}");
    let net = Net::start(
        PeerBehaviour {
            fail_first: 1,
            ..Default::default()
        },
        false,
    );
    let dns = net
        .rt
        .block_on(
            TestDns::builder()
                .txt("rsa._domainkey.example.test", &record)
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let spec = format!("example.test:rsa:{}", key.display());
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1s",
            "--dkim-key",
            &spec,
        ],
    );
    send(
        &d,
        "alice@example.test",
        b"From: alice@example.test\r\nTo: dave@remote.test\r\nSubject: retried\r\n\r\nTwice.\r\n",
        false,
    );
    assert!(
        wait_until(Duration::from_secs(40), || net.got().len() == 1),
        "{}",
        d.log()
    );
    let bodies = net.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], bodies[1], "the retry sends the same bytes");
    let t = our_tags(&String::from_utf8_lossy(&bodies[1]));
    assert_eq!(t["a"], "rsa-sha256");
    assert_eq!(
        verify(&net, dns.addr(), &bodies[1]),
        [mail_auth::DkimResult::Pass]
    );
}

#[test]
fn a_bad_key_stops_the_daemon_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key\n").unwrap();
    for spec in [
        format!("example.test:s:{}", bad.display()),
        format!(
            "example.test:s:{}",
            dir.path().join("missing.pem").display()
        ),
    ] {
        let out = Command::new(BIN)
            .arg("-d")
            .arg(dir.path().join("mail"))
            .args([
                "-l",
                "127.0.0.1:1",
                "--no-public",
                "--dns-server",
                "127.0.0.1:1",
            ])
            .args(["--dkim-key", &spec])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("smtp-server: --dkim-key: "), "{err}");
    }
}

/// `smtp-server dns-records --domain example.test --hostname mx.example.test` and `more`.
fn dns_records(more: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([
            "dns-records",
            "--domain",
            "example.test",
            "--hostname",
            "mx.example.test",
        ])
        .args(more)
        .output()
        .unwrap()
}

#[test]
fn dns_records_prints_spf_dmarc_and_dkim() {
    let keys = tempfile::tempdir().unwrap();
    let (key, record) = keygen(keys.path(), "ed", "ed25519");
    // keygen never overwrites a key.
    let again = Command::new(BIN)
        .args([
            "dkim-keygen",
            "--domain",
            "example.test",
            "--selector",
            "ed",
            "--key-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let out = dns_records(&["--dkim-key", &format!("example.test:ed:{}", key.display())]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let records: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
    assert_eq!(
        records,
        [
            "example.test. IN TXT \"v=spf1 a:mx.example.test -all\"",
            "_dmarc.example.test. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@example.test; adkim=r; aspf=r\"",
            &format!("ed._domainkey.example.test. IN TXT \"{record}\""),
        ]
    );
    // Reports to another domain: the record that domain publishes to agree (RFC 7489 §7.1);
    // a key of another domain is said to be that domain's.
    let other = format!("other.test:ed:{}", key.display());
    let out = dns_records(&["--report-to", "dmarc@reports.test", "--dkim-key", &other]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\nexample.test._report._dmarc.reports.test. IN TXT \"v=DMARC1\"\n"),
        "{text}"
    );
    assert!(
        text.contains("; Note: this key is other.test's, not example.test's"),
        "{text}"
    );
    // What would break the record or smuggle tags into it is refused.
    for bad in [
        "x@other.test,y@third.test",
        "x@other.test;ruf=mailto:z@evil.test",
        "\"a b\"@other.test",
        "x!10m@other.test",
        "x@[127.0.0.1]",
        "x@other..test",
        "x@-other.test",
        "x",
        "a#frag@other.test",
        "a?to=x%40evil.test@other.test",
        "a%2C@other.test",
        "a/b@other.test",
        "a@1.2.3.4",
        "a@example.123",
        "a@under_score.test",
    ] {
        let out = dns_records(&["--report-to", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--report-to") && err.contains("not a plain address"),
            "{err}"
        );
    }
    let out = dns_records(&["--report-to", "mailto:DMARC@Reports.Test"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("rua=mailto:DMARC@reports.test;"), "{text}");
}
