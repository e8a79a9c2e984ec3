//! Inbound sender authentication end to end: the built daemon with a public listener on
//! loopback, its `--dns-server` a DNS server on loopback serving SPF, DKIM and DMARC TXT
//! records (smtp-client's test DNS; nothing reaches the system resolver), messages signed here
//! with mail-auth's signer, and the `Authentication-Results:` field of the stored message and
//! the SMTP replies checked.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use daemon_util::{wait_until, Daemon};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use smtp_client::testdns::{Fault, TestDns, TestDnsBuilder};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// An Ed25519 signing key and its DNS record (`v=DKIM1; k=ed25519; p=...`).
struct Key {
    der: Vec<u8>,
    record: String,
}

impl Key {
    fn new() -> Key {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
        let p = base64::engine::general_purpose::STANDARD.encode(public);
        Key {
            der,
            record: format!("v=DKIM1; k=ed25519; p={p}"),
        }
    }

    /// `message` with a DKIM-Signature of `d=domain; s=selector` in front (relaxed/relaxed,
    /// expiring `expire` seconds from now when given).
    fn sign(&self, domain: &str, selector: &str, message: &str, expire: Option<u64>) -> String {
        self.sign_fields(
            domain,
            selector,
            message,
            expire,
            &["From", "To", "Subject"],
        )
    }

    /// [`Key::sign`] with `h=` listing `fields`.
    fn sign_fields(
        &self,
        domain: &str,
        selector: &str,
        message: &str,
        expire: Option<u64>,
        fields: &[&str],
    ) -> String {
        let key = Ed25519Key::from_pkcs8_der(&self.der).unwrap();
        let mut signer = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(fields.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        if let Some(x) = expire {
            signer = signer.expiration(x);
        }
        let sig = signer.sign(message.as_bytes()).unwrap();
        format!("{}{message}", sig.to_header())
    }
}

/// The SPF and DMARC records every test uses (the client is always 127.0.0.1, its HELO
/// name `client.test`).
fn zone() -> TestDnsBuilder {
    let mut b = TestDns::builder()
        .txt("client.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all")
        .txt("neutral.test", "v=spf1 ?all")
        .a("none.test", [192, 0, 2, 1].into())
        .servfail("temp.test")
        // An include whose target publishes no SPF record is a permanent error (§5.2).
        .txt("perm.test", "v=spf1 include:none.test ip4:127.0.0.1 -all")
        .txt("include.test", "v=spf1 include:_spf.provider.test -all")
        .txt("_spf.provider.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("redirect.test", "v=spf1 redirect=_spf.provider.test")
        .txt("redirect-fail.test", "v=spf1 redirect=fail.test");
    // The void-lookup limit (RFC 7208 §4.6.4): two lookups with no records (NXDOMAIN or an
    // empty answer) are allowed, a third is a permerror, counted across includes and for the
    // MX hosts' addresses too, and `exists:` names with no address (A or AAAA).
    b = b
        .txt("twovoid.test", "v=spf1 a:nx1.twovoid.test mx:nx2.twovoid.test ip4:127.0.0.1 -all")
        .txt("txtonly.threevoid.test", "not an address")
        .txt(
            "threevoid.test",
            "v=spf1 a:nx1.threevoid.test a:txtonly.threevoid.test mx:nx3.threevoid.test ip4:127.0.0.1 -all",
        )
        .txt(
            "voidinclude.test",
            "v=spf1 a:nx1.voidinclude.test include:_i.voidinclude.test ip4:127.0.0.1 -all",
        )
        .txt("_i.voidinclude.test", "v=spf1 a:nx2.voidinclude.test a:nx3.voidinclude.test -all")
        .txt("mxvoid.test", "v=spf1 mx ip4:127.0.0.1 -all")
        .mx("mxvoid.test", 10, "h1.mxvoid.test")
        .mx("mxvoid.test", 20, "h2.mxvoid.test")
        .mx("mxvoid.test", 30, "h3.mxvoid.test")
        .txt(
            "existsvoid.test",
            "v=spf1 exists:nx1.existsvoid.test exists:nx2.existsvoid.test exists:nx3.existsvoid.test ip4:127.0.0.1 -all",
        )
        // Two voids, then a name that exists (by a macro of the client's address): no limit
        // reached.
        .txt(
            "existsok.test",
            "v=spf1 exists:nx1.existsok.test exists:nx2.existsok.test exists:%{i}.ok.existsok.test -all",
        )
        // A name with only an AAAA record does not exist for `exists:` (RFC 7208 §5.7: an A
        // lookup, whatever the client's address family): a void lookup too.
        .txt(
            "existsv6.test",
            "v=spf1 exists:nx1.existsv6.test exists:v6.existsok.test ip4:127.0.0.1 -all",
        )
        .txt(
            "existsv6void.test",
            "v=spf1 exists:nx1.existsv6.test exists:nx2.existsv6.test exists:v6.existsok.test ip4:127.0.0.1 -all",
        )
        .txt("existsv6fail.test", "v=spf1 exists:v6.existsok.test -all")
        .aaaa("v6.existsok.test", std::net::Ipv6Addr::LOCALHOST)
        .a("127.0.0.1.ok.existsok.test", [127, 0, 0, 2].into())
        // Voids of `a`, `exists:` and `exists:` in an include, together.
        .txt(
            "existsmix.test",
            "v=spf1 a:nx1.existsmix.test include:_i.existsmix.test ip4:127.0.0.1 -all",
        )
        .txt("_i.existsmix.test", "v=spf1 exists:nx2.existsmix.test exists:nx3.existsmix.test -all")
        // A name that matches, after two voids, with `-`: a fail, not a limit.
        .txt(
            "existsfail.test",
            "v=spf1 exists:nx1.existsfail.test exists:nx2.existsfail.test -exists:%{i}.ok.existsok.test +all",
        );
    // One SPF record per name (RFC 7208 §4.5): two are a permerror whichever comes first,
    // also at an include; a TXT record that only starts like one does not count.
    b = b
        .txt("twospf.test", "v=spf1 -all")
        .txt("twospf.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("twospf2.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("twospf2.test", "V=SPF1 -all")
        .txt("twospfinclude.test", "v=spf1 include:twospf.test -all")
        .txt("onespf.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("onespf.test", "v=spf10 -all")
        .txt("onespf.test", "google-site-verification=abc");
    // The 10-lookup limit (RFC 7208 §4.6.4): ten includes are allowed, eleven are not.
    for (name, n) in [("ten.test", 10), ("eleven.test", 11)] {
        let mut rec = "v=spf1".to_owned();
        for i in 1..=n {
            rec.push_str(&format!(" include:l{i}.{name}"));
            b = b.txt(&format!("l{i}.{name}"), "v=spf1 ip4:192.0.2.1 -all");
        }
        rec.push_str(" ip4:127.0.0.1 -all");
        b = b.txt(name, &rec);
    }
    b
}

/// The daemon with a public listener on a free loopback port; returns it and that port.
fn start(spool: &Path, dns: SocketAddr, extra: &[&str]) -> (Daemon, u16) {
    let (d, [port]) = Daemon::start_ports(spool, dns, |[p]| {
        let listen = format!("127.0.0.1:{p}");
        let mut args = vec!["-p", listen.as_str()];
        if !extra.contains(&"--email-auth-timeout") {
            args.extend(["--email-auth-timeout", "2s"]);
        }
        args.extend_from_slice(extra);
        daemon_util::strings(&args)
    });
    (d, port)
}

/// A blocking SMTP client for one transaction on the public listener.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert_eq!(c.reply().0, 220);
        c
    }

    /// The reply: code and its lines (without the code), joined by `\n`.
    fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            assert!(line.len() >= 4, "short reply line {line:?}");
            text.push_str(line[4..].trim_end());
            text.push('\n');
            if line.as_bytes()[3] == b' ' {
                return (line[..3].parse().unwrap(), text.trim_end().to_owned());
            }
        }
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

/// What a transaction got: the reply to MAIL, and to the final dot when MAIL was accepted.
struct Sent {
    mail: (u16, String),
    data: Option<(u16, String)>,
}

/// EHLO client.test, MAIL FROM:<from>, RCPT TO:<bob@example.test>, DATA with `message`.
fn send(port: u16, from: &str, message: &str) -> Sent {
    send_as(port, "client.test", from, message)
}

/// [`send`] with another EHLO name.
fn send_as(port: u16, helo: &str, from: &str, message: &str) -> Sent {
    let mut c = Client::connect(port);
    assert_eq!(c.cmd(&format!("EHLO {helo}")).0, 250);
    let mail = c.cmd(&format!("MAIL FROM:<{from}>"));
    if mail.0 != 250 {
        return Sent { mail, data: None };
    }
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let mut data = String::new();
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
    }
    data.push_str(".\r\n");
    c.w.write_all(data.as_bytes()).unwrap();
    let data = Some(c.reply());
    c.cmd("QUIT");
    Sent { mail, data }
}

/// Sends `message` and returns the stored copy (the newest in bob's mailbox).
fn deliver(d: &Daemon, port: u16, from: &str, message: &str) -> String {
    let before = d.spool_messages("bob").len();
    let sent = send(port, from, message);
    assert_eq!(sent.mail.0, 250, "MAIL: {:?}", sent.mail);
    let data = sent.data.unwrap();
    assert_eq!(data.0, 250, "DATA: {data:?}");
    let all = d.spool_messages("bob");
    assert_eq!(all.len(), before + 1);
    String::from_utf8(all.last().unwrap().1.clone()).unwrap()
}

/// Every `Authentication-Results:` field of the header section, unfolded (CRLF removed,
/// white space runs made one space).
fn auth_results(message: &str) -> Vec<String> {
    let header = message.split("\r\n\r\n").next().unwrap();
    let mut fields: Vec<String> = Vec::new();
    for line in header.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(f) = fields.last_mut() {
                f.push_str(line);
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields
        .into_iter()
        .filter(|f| {
            f.to_ascii_lowercase()
                .starts_with("authentication-results:")
        })
        .map(|f| f.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Our field: exactly one, first after Return-Path:, directly above our Received:.
fn ours(message: &str) -> String {
    assert!(message.starts_with("Return-Path: "), "{message}");
    let second = message.split("\r\n").nth(1).unwrap();
    assert!(
        second.starts_with("Authentication-Results: mx.example.test;"),
        "{message}"
    );
    let after = &message[message.find("Authentication-Results:").unwrap()..];
    let end = after
        .find("\r\nReceived: from client.test ([127.0.0.1])")
        .unwrap_or_else(|| panic!("our Received: does not follow: {message}"));
    assert!(!after[..end].contains("\r\nReceived:"));
    let all = auth_results(message);
    let mine: Vec<_> = all
        .iter()
        .filter(|f| f.starts_with("Authentication-Results: mx.example.test;"))
        .collect();
    assert_eq!(mine.len(), 1, "{all:?}");
    mine[0].clone()
}

fn plain(from_header: &str) -> String {
    format!("From: {from_header}\r\nTo: bob@example.test\r\nSubject: test\r\n\r\nHello.\r\n")
}

#[test]
fn spf_results_for_mail_from_and_helo() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &[]);
    let cases = [
        ("alice@pass.test", "pass (mx.example.test: domain of alice@pass.test designates 127.0.0.1 as permitted sender)"),
        ("alice@fail.test", "fail (mx.example.test: domain of alice@fail.test does not designate 127.0.0.1 as permitted sender)"),
        ("alice@soft.test", "softfail (mx.example.test: domain of alice@soft.test reports soft fail for 127.0.0.1)"),
        ("alice@neutral.test", "neutral (mx.example.test: domain of alice@neutral.test reports neutral for 127.0.0.1)"),
        ("alice@none.test", "none (mx.example.test: no SPF records found for alice@none.test)"),
        ("alice@nxdomain.test", "none (mx.example.test: no SPF records found for alice@nxdomain.test)"),
        ("alice@temp.test", "temperror (mx.example.test: temporary dns error validating alice@temp.test)"),
        ("alice@perm.test", "permerror (mx.example.test: unable to verify SPF record for alice@perm.test)"),
        ("alice@include.test", "pass (mx.example.test: domain of alice@include.test designates 127.0.0.1 as permitted sender)"),
        ("alice@redirect.test", "pass (mx.example.test: domain of alice@redirect.test designates 127.0.0.1 as permitted sender)"),
        ("alice@redirect-fail.test", "fail (mx.example.test: domain of alice@redirect-fail.test does not designate 127.0.0.1 as permitted sender)"),
        ("alice@ten.test", "pass (mx.example.test: domain of alice@ten.test designates 127.0.0.1 as permitted sender)"),
        ("alice@eleven.test", "permerror (mx.example.test: unable to verify SPF record for alice@eleven.test)"),
        ("alice@twovoid.test", "pass (mx.example.test: domain of alice@twovoid.test designates 127.0.0.1 as permitted sender)"),
        ("alice@threevoid.test", "permerror (mx.example.test: unable to verify SPF record for alice@threevoid.test)"),
        ("alice@voidinclude.test", "permerror (mx.example.test: unable to verify SPF record for alice@voidinclude.test)"),
        ("alice@mxvoid.test", "permerror (mx.example.test: unable to verify SPF record for alice@mxvoid.test)"),
        ("alice@existsvoid.test", "permerror (mx.example.test: unable to verify SPF record for alice@existsvoid.test)"),
        ("alice@existsok.test", "pass (mx.example.test: domain of alice@existsok.test designates 127.0.0.1 as permitted sender)"),
        ("alice@twospf.test", "permerror (mx.example.test: unable to verify SPF record for alice@twospf.test)"),
        ("alice@twospf2.test", "permerror (mx.example.test: unable to verify SPF record for alice@twospf2.test)"),
        ("alice@twospfinclude.test", "permerror (mx.example.test: unable to verify SPF record for alice@twospfinclude.test)"),
        ("alice@onespf.test", "pass (mx.example.test: domain of alice@onespf.test designates 127.0.0.1 as permitted sender)"),
        ("alice@existsv6.test", "pass (mx.example.test: domain of alice@existsv6.test designates 127.0.0.1 as permitted sender)"),
        ("alice@existsv6void.test", "permerror (mx.example.test: unable to verify SPF record for alice@existsv6void.test)"),
        ("alice@existsv6fail.test", "fail (mx.example.test: domain of alice@existsv6fail.test does not designate 127.0.0.1 as permitted sender)"),
        ("alice@existsmix.test", "permerror (mx.example.test: unable to verify SPF record for alice@existsmix.test)"),
        ("alice@existsfail.test", "fail (mx.example.test: domain of alice@existsfail.test does not designate 127.0.0.1 as permitted sender)"),
    ];
    for (from, want) in cases {
        let stored = deliver(&d, port, from, &plain(from));
        let field = ours(&stored);
        let spf = format!("spf={want} smtp.mailfrom={from}");
        assert!(field.contains(&spf), "{from}: want {spf}\n in {field}");
        assert!(
            field.contains(
                "spf=pass (mx.example.test: domain of postmaster@client.test designates 127.0.0.1 as permitted sender) smtp.helo=client.test"
            ),
            "{field}"
        );
    }
    // The null sender: the MAIL FROM identity is postmaster@ the HELO name.
    let stored = deliver(&d, port, "", &plain("mailer-daemon@client.test"));
    assert!(ours(&stored).contains(
        "spf=pass (mx.example.test: domain of postmaster@client.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=\"<>\""
    ));
    // A HELO name that is not a domain (an address literal; text with a comment) is not
    // checked (RFC 7208 §4.3: none) and is written quoted, as RFC 8601 wants a value that is
    // not a token; so is the null sender's `<>`.
    for (helo, quoted) in [
        ("[127.0.0.1]", "\"[127.0.0.1]\""),
        ("evil.test(x", "\"evil.test(x\""),
    ] {
        let before = d.spool_messages("bob").len();
        let sent = send_as(port, helo, "", &plain("mailer-daemon@client.test"));
        assert_eq!(sent.data.unwrap().0, 250);
        let all = d.spool_messages("bob");
        assert_eq!(all.len(), before + 1);
        let stored = String::from_utf8(all.last().unwrap().1.clone()).unwrap();
        let field = auth_results(&stored)
            .into_iter()
            .find(|f| f.starts_with("Authentication-Results: mx.example.test;"))
            .unwrap();
        assert!(field.contains(&format!(") smtp.helo={quoted};")), "{field}");
        assert!(field.contains("spf=none ("), "{field}");
        assert!(field.contains(") smtp.mailfrom=\"<>\""), "{field}");
        assert!(!field.contains("spf=permerror"), "{field}");
    }
    // The verdicts are on the message's log line of the daemon.
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains("spf=\"fail\"")
            || d.log().contains("spf=fail")),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("sender authentication") && l.contains("alice@pass.test"))
        .unwrap_or_else(|| panic!("{log}"));
    for kv in [
        "spf=pass",
        "spf_helo=pass",
        "dkim=none",
        "dmarc=none",
        "action=accept",
    ] {
        assert!(line.contains(kv), "{kv} in {line}");
    }
    assert!(
        !line.contains("Pass") && !line.contains("SpfOutput"),
        "{line}"
    );
    // And on the message's `message accepted` line.
    let accepted = log
        .lines()
        .find(|l| l.contains("message accepted") && l.contains("alice@pass.test"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        accepted.contains(" spf=pass dkim=none dmarc=none"),
        "{accepted}"
    );
}

#[test]
fn spf_reject_refuses_fail_at_mail_from_only() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &["--spf-reject"]);
    let sent = send(port, "alice@fail.test", &plain("alice@fail.test"));
    assert_eq!(
        sent.mail,
        (
            550,
            "5.7.23 <alice@fail.test>: Sender address rejected: SPF fail: fail.test does not designate 127.0.0.1 as permitted sender".to_owned()
        )
    );
    let sent = send(port, "x@redirect-fail.test", &plain("x@redirect-fail.test"));
    assert_eq!(sent.mail.0, 550, "{:?}", sent.mail);
    assert!(sent.mail.1.starts_with("5.7.23 "), "{:?}", sent.mail);
    // Everything else is accepted, temporary and permanent errors included.
    for from in [
        "a@pass.test",
        "a@soft.test",
        "a@neutral.test",
        "a@none.test",
        "a@temp.test",
        "a@perm.test",
        "a@eleven.test",
    ] {
        let stored = deliver(&d, port, from, &plain(from));
        ours(&stored);
    }
    // The loopback listener (our own programs) is not checked.
    let mut c = d.connect();
    let (code, text) = c.send(
        "alice@fail.test",
        &["bob@example.test"],
        &plain("alice@fail.test"),
    );
    assert_eq!(code, 250, "{text}");
    let last = d.spool_messages("bob").pop().unwrap().1;
    assert!(auth_results(&String::from_utf8(last).unwrap()).is_empty());
}

/// A daemon (loopback listener `port`) whose DNS has `key` at `ed._domainkey.signed.test`
/// and `v=DMARC1; p=reject` for signed.test, started with `extra` options; the DNS server
/// and the spool live as long as it.
struct SignedTest {
    daemon: Daemon,
    port: u16,
    _dir: tempfile::TempDir,
    _dns: TestDns,
    _rt: tokio::runtime::Runtime,
}

fn signed_test(key: &Key, extra: &[&str]) -> SignedTest {
    let rt = runtime();
    let dns = rt
        .block_on(
            zone()
                .txt("ed._domainkey.signed.test", &key.record)
                .txt("_dmarc.signed.test", "v=DMARC1; p=reject")
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = start(&dir.path().join("mail"), dns.addr(), extra);
    SignedTest {
        daemon,
        port,
        _dir: dir,
        _dns: dns,
        _rt: rt,
    }
}

#[test]
fn dkim_pass_and_each_kind_of_failure() {
    let key = Key::new();
    let other = Key::new();
    let s = signed_test(&key, &[]);
    let (d, port) = (&s.daemon, s.port);
    let msg = plain("news@signed.test");
    // Expiring in a second: by the time it arrives, x= is past.
    let expired = key.sign("signed.test", "ed", &msg, Some(1));
    let good = key.sign("signed.test", "ed", &msg, None);
    let field = ours(&deliver(d, port, "bounce@soft.test", &good));
    assert!(
        field.contains("dkim=pass header.d=signed.test header.s=ed header.b="),
        "{field}"
    );
    assert!(
        field.contains("dmarc=pass header.from=signed.test policy.dmarc=reject"),
        "{field}"
    );
    // mail-auth reports a body hash mismatch as neutral, as Gmail does; it is no pass for
    // DMARC either way.
    let body_changed = good.replace("Hello.", "Hello, changed.");
    let field = ours(&deliver(d, port, "bounce@soft.test", &body_changed));
    assert!(
        field.contains("dkim=neutral (body hash did not verify) header.d=signed.test header.s=ed"),
        "{field}"
    );
    assert!(field.contains("dmarc=fail"), "{field}");
    let header_changed = good.replace("Subject: test", "Subject: changed");
    let field = ours(&deliver(d, port, "bounce@soft.test", &header_changed));
    assert!(
        field.contains("dkim=fail (verification failed) header.d=signed.test header.s=ed"),
        "{field}"
    );
    let wrong_key = other.sign("signed.test", "ed", &msg, None);
    let field = ours(&deliver(d, port, "bounce@soft.test", &wrong_key));
    assert!(
        field.contains("dkim=fail (verification failed) header.d=signed.test header.s=ed"),
        "{field}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let field = ours(&deliver(d, port, "bounce@soft.test", &expired));
    assert!(
        field.contains("dkim=neutral (signature error) header.d=signed.test header.s=ed"),
        "{field}"
    );
    // A selector with no record.
    let missing = key.sign("signed.test", "nokey", &msg, None);
    let field = ours(&deliver(d, port, "bounce@soft.test", &missing));
    assert!(field.contains("dkim=permerror"), "{field}");
    // Two signatures: each is reported.
    let both = key.sign("signed.test", "ed", &wrong_key, None);
    let field = ours(&deliver(d, port, "bounce@soft.test", &both));
    assert_eq!(field.matches("dkim=").count(), 2, "{field}");
    assert!(
        field.contains("dkim=pass") && field.contains("dkim=fail"),
        "{field}"
    );
    assert!(field.contains("dmarc=pass"), "{field}");
}

#[test]
fn dmarc_alignment_and_policies() {
    let rt = runtime();
    let key = Key::new();
    let dns = rt
        .block_on(
            zone()
                .txt("ed._domainkey.signed.test", &key.record)
                .txt("_dmarc.signed.test", "v=DMARC1; p=reject")
                .txt("_dmarc.pass.test", "v=DMARC1; p=reject")
                .txt("_dmarc.rejecting.test", "v=DMARC1; p=reject")
                .txt("_dmarc.quarantining.test", "v=DMARC1; p=quarantine")
                .txt("_dmarc.watching.test", "v=DMARC1; p=none")
                .txt("_dmarc.sampling.test", "v=DMARC1; p=reject; pct=0")
                .txt(
                    "_dmarc.halfway.test",
                    "v=DMARC1; p=reject; pct = 50; rua=mailto:r@halfway.test",
                )
                .txt("_dmarc.whole.test", "v=DMARC1; p=reject; pct=100")
                .servfail("_dmarc.flaky.test")
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &[]);
    let dir2 = tempfile::tempdir().unwrap();
    let (strict, strict_port) = start(&dir2.path().join("mail"), dns.addr(), &["--dmarc-reject"]);

    // Pass by SPF alignment: MAIL FROM and From: in pass.test, no signature.
    let field = ours(&deliver(
        &d,
        port,
        "alice@pass.test",
        &plain("alice@pass.test"),
    ));
    assert!(field.contains("dkim=none"), "{field}");
    assert!(
        field.contains("dmarc=pass header.from=pass.test policy.dmarc=reject"),
        "{field}"
    );
    // Pass by DKIM alignment: the envelope is another domain's (softfail), d=signed.test.
    let signed = key.sign("signed.test", "ed", &plain("news@signed.test"), None);
    for (dd, p) in [(&d, port), (&strict, strict_port)] {
        let field = ours(&deliver(dd, p, "bounce@soft.test", &signed));
        assert!(
            field.contains("dmarc=pass header.from=signed.test policy.dmarc=reject"),
            "{field}"
        );
    }
    // Fail with p=reject: refused only with --dmarc-reject.
    let forged = plain("ceo@rejecting.test");
    let field = ours(&deliver(&d, port, "x@soft.test", &forged));
    assert!(
        field.contains(
            "dmarc=fail (policy not aligned) header.from=rejecting.test policy.dmarc=reject"
        ),
        "{field}"
    );
    let sent = send(strict_port, "x@soft.test", &forged);
    assert_eq!(sent.mail.0, 250);
    assert_eq!(
        sent.data.unwrap(),
        (
            550,
            "5.7.1 Unauthenticated email from rejecting.test is not accepted due to its domain's DMARC policy (p=reject)".to_owned()
        )
    );
    // Every author domain is checked (RFC 7489 §6.6.1), the strictest applies: a second
    // address or field of another domain, a final dot, or a comment that hides the domain
    // from the parser do not get a p=reject domain's forgery in.
    let second_field = forged.replacen("\r\n", "\r\nFrom: x@soft.test\r\n", 1);
    let variants = [
        (plain("ceo@rejecting.test, x@soft.test"), "rejecting.test"),
        (
            plain("x@soft.test, \"CEO\" <ceo@REJECTING.test>"),
            "rejecting.test",
        ),
        (second_field, "rejecting.test"),
        (plain("ceo@rejecting.test."), "rejecting.test"),
        (plain("ceo@(comment)rejecting.test"), "rejecting.test"),
        (plain("ceo (c) @ Rejecting . test"), "rejecting.test"),
        // A sampling domain (pct=0, never refused itself) first does not shield the next.
        (
            plain("a@sampling.test, ceo@rejecting.test"),
            "rejecting.test",
        ),
    ];
    for (m, domain) in &variants {
        let sent = send(strict_port, "x@soft.test", m);
        let data = sent.data.unwrap();
        assert_eq!(data.0, 550, "{m}");
        assert!(
            data.1.contains(&format!("from {domain} is not")),
            "{data:?}"
        );
    }
    let field = ours(&deliver(&d, port, "x@soft.test", &variants[0].0));
    assert!(
        field.contains(
            "dmarc=fail (policy not aligned) header.from=rejecting.test policy.dmarc=reject;"
        ) && field.contains("dmarc=none header.from=soft.test"),
        "{field}"
    );
    assert_eq!(field.matches("policy.dmarc=").count(), 1, "{field}");
    // Fields that are not RFC 5322 (read differently by different parsers, or with no
    // address a reader could check): refused whole with the option, permerror without.
    for (hidden, why) in [
        (
            "ceo@[127.0.0.1]",
            "From: address without a domain name: ceo@[127.0.0.1]",
        ),
        (
            "b@rejecting.test <a@soft.test>",
            "From: has more after an address",
        ),
        (
            "b@rejecting.test<a@soft.test>",
            "From: has more after an address",
        ),
        (
            "Bob <ceo@rejecting.test> <a@soft.test>",
            "From: has more after an address",
        ),
        ("ceo@rejecting.test <>", "From: has more after an address"),
        (
            "a@soft.test, ceo@rejecting.test <>",
            "From: has more after an address",
        ),
        (
            "=?utf-8?q?ceo=40rejecting.test?=",
            "From: has an address without @",
        ),
        ("", "From: is empty"),
        // Under a p=reject domain, labels a lookup cannot use (IDNA refuses the first; a
        // leading hyphen; 64 octets): a reader shows rejecting.test.
        (
            "a@x\u{661}.rejecting.test",
            "From: address without a domain name",
        ),
        ("a@-x.rejecting.test", "From: address without a domain name"),
        (
            "a@xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.rejecting.test",
            "From: address without a domain name",
        ),
    ] {
        let sent = send(strict_port, "x@soft.test", &plain(hidden));
        let data = sent.data.unwrap();
        assert_eq!(data.0, 550, "{hidden}: {data:?}");
        let want = format!("5.7.1 The From: field cannot be checked for DMARC: {why}");
        assert!(data.1.starts_with(&want), "{hidden}: {data:?}");
        let field = ours(&deliver(&d, port, "x@soft.test", &plain(hidden)));
        assert!(
            field.contains(&format!("dmarc=permerror ({why}")),
            "{field}"
        );
    }
    // pct= below 100 (RFC 7489 §6.3, historic in RFC 9989) is never enforced by refusing;
    // pct=100 is, as is a subdomain under it.
    for (from, code) in [
        ("a@sampling.test", 250),
        ("a@halfway.test", 250),
        ("a@sub.halfway.test", 250),
        ("a@whole.test", 550),
        ("a@sub.whole.test", 550),
    ] {
        let data = send(strict_port, "x@soft.test", &plain(from)).data.unwrap();
        assert_eq!(data.0, code, "{from}: {data:?}");
    }
    // More author domains than are checked: refused with the option, recorded without.
    let many = plain("a@d1.test, b@d2.test, c@d3.test, d@d4.test, e@rejecting.test");
    let data = send(strict_port, "x@soft.test", &many).data.unwrap();
    assert_eq!(data.0, 550, "{data:?}");
    let field = ours(&deliver(&d, port, "x@soft.test", &many));
    assert!(
        field.contains("dmarc=permerror (5 From: domains, more than 4 are not checked)"),
        "{field}"
    );
    // An aligned SPF pass in the envelope is not enough when From: is another domain's,
    // and a signature of another domain does not align either.
    let unaligned = key.sign("signed.test", "ed", &forged, None);
    let sent = send(strict_port, "x@pass.test", &unaligned);
    assert_eq!(sent.data.unwrap().0, 550);
    // p=quarantine and p=none: accepted with the failure recorded, with or without the option.
    for (dd, p) in [(&d, port), (&strict, strict_port)] {
        let field = ours(&deliver(
            dd,
            p,
            "x@soft.test",
            &plain("a@quarantining.test"),
        ));
        assert!(
            field.contains("dmarc=fail (policy not aligned) header.from=quarantining.test policy.dmarc=quarantine"),
            "{field}"
        );
        let field = ours(&deliver(dd, p, "x@soft.test", &plain("a@watching.test")));
        assert!(
            field.contains(
                "dmarc=fail (policy not aligned) header.from=watching.test policy.dmarc=none"
            ),
            "{field}"
        );
        // No record: none.
        let field = ours(&deliver(dd, p, "x@soft.test", &plain("a@norecord.test")));
        assert!(
            field.contains("dmarc=none header.from=norecord.test"),
            "{field}"
        );
        // No record, no policy: `policy.dmarc=none` would read as a published p=none.
        assert!(!field.contains("policy.dmarc"), "{field}");
        // SERVFAIL for the policy: temperror, accepted even with --dmarc-reject.
        let field = ours(&deliver(dd, p, "x@soft.test", &plain("a@flaky.test")));
        assert!(field.contains("dmarc=temperror"), "{field}");
        assert!(!field.contains("policy.dmarc"), "{field}");
    }
    let log = strict.log();
    assert!(
        log.lines().any(|l| l.contains("sender authentication")
            && l.contains("dmarc=fail")
            && l.contains("dmarc_policy=reject")
            && l.contains("action=reject")),
        "{log}"
    );
}

#[test]
fn forged_results_with_our_authserv_id_are_removed() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &[]);
    let msg = "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test;\r\n\
               \tdmarc=pass header.from=bank.test\r\n\
               Authentication-Results: MX.Example.Test.; spf=pass\r\n\
               Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=a@other.test\r\n\
               From: security@bank.test\r\nSubject: please log in\r\n\r\nClick.\r\n";
    let stored = deliver(&d, port, "alice@fail.test", msg);
    let field = ours(&stored);
    assert!(
        field.contains("dkim=none") && !field.contains("header.d=bank.test"),
        "{field}"
    );
    let all = auth_results(&stored);
    assert_eq!(
        all,
        [
            field.clone(),
            "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=a@other.test"
                .to_owned()
        ]
    );
    // The loopback listener drops them too (no field of ours is added there).
    let mut c = d.connect();
    assert_eq!(c.send("alice@pass.test", &["bob@example.test"], msg).0, 250);
    let last = String::from_utf8(d.spool_messages("bob").pop().unwrap().1).unwrap();
    assert_eq!(
        auth_results(&last),
        ["Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=a@other.test"]
    );
}

#[test]
fn temporary_dns_failures_never_give_a_5xx() {
    let rt = runtime();
    let key = Key::new();
    let dns = rt
        .block_on(
            zone()
                .fault("silent.test", Fault::NoAnswer)
                .fault("_dmarc.silent.test", Fault::NoAnswer)
                .fault("ed._domainkey.silent.test", Fault::NoAnswer)
                .servfail("ed._domainkey.temp.test")
                .servfail("_dmarc.temp.test")
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(
        &dir.path().join("mail"),
        dns.addr(),
        &[
            "--spf-reject",
            "--dmarc-reject",
            "--email-auth-timeout",
            "1s",
        ],
    );
    // SERVFAIL for SPF, the DKIM key and the DMARC policy.
    let signed = key.sign("temp.test", "ed", &plain("a@temp.test"), None);
    let field = ours(&deliver(&d, port, "a@temp.test", &signed));
    assert!(field.contains("spf=temperror"), "{field}");
    assert!(field.contains("dkim=temperror"), "{field}");
    assert!(field.contains("dmarc=temperror"), "{field}");
    // No answer at all: each check gives up after --email-auth-timeout.
    let signed = key.sign("silent.test", "ed", &plain("a@silent.test"), None);
    let started = std::time::Instant::now();
    let field = ours(&deliver(&d, port, "a@silent.test", &signed));
    let took = started.elapsed();
    assert!(field.contains("spf=temperror"), "{field}");
    assert!(field.contains("dkim=temperror"), "{field}");
    assert!(field.contains("dmarc=temperror"), "{field}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn arc_sets_are_verified() {
    let rt = runtime();
    let author = Key::new();
    let forwarder = Key::new();
    let dns = rt
        .block_on(
            zone()
                .txt("ed._domainkey.signed.test", &author.record)
                .txt("arc._domainkey.forwarder.test", &forwarder.record)
                .start(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &[]);
    let signed = author.sign("signed.test", "ed", &plain("news@signed.test"), None);
    // The forwarder's ARC set over the message as it got it.
    let sealed = {
        let parsed = mail_auth::AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
        let results = mail_auth::AuthenticationResults::new("mx.forwarder.test");
        let arc = mail_auth::ArcOutput::default();
        let key = Ed25519Key::from_pkcs8_der(&forwarder.der).unwrap();
        let set = mail_auth::arc::ArcSealer::from_key(key)
            .domain("forwarder.test")
            .selector("arc")
            .headers(["From", "To", "Subject", "DKIM-Signature"])
            .seal(&parsed, &results, &arc)
            .unwrap();
        format!("{}{signed}", set.to_header())
    };
    let stored = deliver(&d, port, "list@forwarder.test", &sealed);
    let field = ours(&stored);
    assert!(
        field.contains("arc=pass smtp.remote-ip=127.0.0.1"),
        "{field}\n{stored}"
    );
    // A set whose seal no longer matches (a header it covers changed).
    let broken = sealed.replace("Subject: test", "Subject: edited");
    let field = ours(&deliver(&d, port, "list@forwarder.test", &broken));
    assert!(field.contains("arc=fail"), "{field}");
    // A changed body (mail-auth: neutral) is a fail too: RFC 8617 has none, pass, fail.
    let body_changed = sealed.replace("Hello.", "Hello, edited.");
    assert_ne!(body_changed, sealed);
    let field = ours(&deliver(&d, port, "list@forwarder.test", &body_changed));
    assert!(
        field.contains("arc=fail (body hash did not verify)"),
        "{field}"
    );
    // ARC fields that make no set (an ARC-Authentication-Results: alone): fail, not none.
    let lone = format!("ARC-Authentication-Results: i=1; other.test; spf=pass\r\n{signed}");
    let field = ours(&deliver(&d, port, "list@forwarder.test", &lone));
    assert!(field.contains("arc=fail"), "{field}");
    // Without ARC fields, no arc= result.
    let field = ours(&deliver(&d, port, "list@forwarder.test", &signed));
    assert!(!field.contains("; arc="), "{field}");
    // An ARC-Message-Signature listing more names than are verified: not verified, a fail.
    let costly = {
        let parsed = mail_auth::AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
        let results = mail_auth::AuthenticationResults::new("mx.forwarder.test");
        let key = Ed25519Key::from_pkcs8_der(&forwarder.der).unwrap();
        let names: Vec<String> = std::iter::once("From".to_owned())
            .chain((1..200).map(|i| format!("X-Name-{i}")))
            .collect();
        let set = mail_auth::arc::ArcSealer::from_key(key)
            .domain("forwarder.test")
            .selector("arc")
            .headers(names.iter().map(String::as_str))
            .seal(&parsed, &results, &mail_auth::ArcOutput::default())
            .unwrap();
        format!("{}{signed}", set.to_header())
    };
    let field = ours(&deliver(&d, port, "list@forwarder.test", &costly));
    assert!(
        field.contains("arc=fail (not verified: 200 signed header fields, at most 128 are verified) smtp.remote-ip=127.0.0.1; spf="),
        "{field}"
    );
}

#[test]
fn signatures_too_costly_to_verify_are_not_verified() {
    // mail-auth's work for one signature grows with the names in h= times the message's
    // fields, on the session's thread: a signature listing 100,000 names took 15 s of CPU
    // (b= need not even be valid). Such signatures get dkim=policy and cannot pass DMARC.
    let key = Key::new();
    let s = signed_test(&key, &[]);
    let (d, port) = (&s.daemon, s.port);
    let msg = plain("news@signed.test");
    let names = |n: usize| -> Vec<String> {
        std::iter::once("From".to_owned())
            .chain((1..n).map(|i| format!("X-Name-{i}")))
            .collect()
    };
    let sign = |n: usize, message: &str| {
        let names = names(n);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        key.sign_fields("signed.test", "ed", message, None, &names)
    };
    // 128 names (the most verified; signing absent fields is allowed): a pass.
    let field = ours(&deliver(d, port, "bounce@soft.test", &sign(128, &msg)));
    assert!(field.contains("dkim=pass header.d=signed.test"), "{field}");
    assert!(field.contains("dmarc=pass"), "{field}");
    // 129 names, and 100,000: not verified.
    for n in [129, 100_000] {
        let field = ours(&deliver(d, port, "bounce@soft.test", &sign(n, &msg)));
        assert!(
            field.contains(&format!(
                "dkim=policy (not verified: {n} signed header fields, at most 128 are verified) header.d=signed.test header.s=ed"
            )),
            "{field}"
        );
        assert!(field.contains("dmarc=fail"), "{field}");
        assert_eq!(field.matches("dkim=").count(), 1, "{field}");
    }
    // 100 names over a message of 50,000 fields: too costly as well.
    let mut many = String::new();
    for i in 0..50_000 {
        many.push_str(&format!("X-F: {i}\r\n"));
    }
    let field = ours(&deliver(
        d,
        port,
        "bounce@soft.test",
        &sign(100, &(many + &msg)),
    ));
    assert!(
        field.contains("dkim=policy (not verified: 100 signed header fields over 50"),
        "{field}"
    );
    // Nine signatures: eight are verified, the ninth is not.
    let mut nine = msg.clone();
    for _ in 0..9 {
        nine = key.sign("signed.test", "ed", &nine, None);
    }
    let field = ours(&deliver(d, port, "bounce@soft.test", &nine));
    assert_eq!(field.matches("dkim=pass").count(), 8, "{field}");
    assert!(
        field.contains("dkim=policy (not verified: more than 8 signatures, 8 are verified)"),
        "{field}"
    );
    assert!(field.contains("dmarc=pass"), "{field}");
    // The author's signature at the bottom, nine hops' above it: the author's (aligned with
    // From:) is among those verified, and DMARC passes.
    let mut hops = key.sign("signed.test", "ed", &msg, None);
    for i in 0..9 {
        hops = key.sign(&format!("hop{i}.test"), "ed", &hops, None);
    }
    let field = ours(&deliver(d, port, "bounce@soft.test", &hops));
    assert_eq!(field.matches("dkim=pass").count(), 1, "{field}");
    assert!(field.contains("dkim=pass header.d=signed.test"), "{field}");
    assert_eq!(field.matches("dkim=policy").count(), 2, "{field}");
    assert!(field.contains("dmarc=pass"), "{field}");
}

#[test]
fn a_message_over_the_size_limit_is_not_dkim_verified_nor_dmarc_rejected() {
    let key = Key::new();
    let s = signed_test(&key, &["--dmarc-reject", "--email-auth-max-size", "2000"]);
    let (d, port) = (&s.daemon, s.port);
    let mut big = plain("news@signed.test");
    for _ in 0..100 {
        big.push_str("0123456789012345678901234567890123456789\r\n");
    }
    let signed = key.sign("signed.test", "ed", &big, None);
    let stored = deliver(d, port, "bounce@soft.test", &signed);
    let field = ours(&stored);
    assert!(
        field.contains("dkim=policy (message too large to verify: "),
        "{field}"
    );
    assert!(
        field.contains("limit 2000) header.d=signed.test header.s=ed"),
        "{field}"
    );
    assert!(field.contains("dmarc=temperror"), "{field}");
    // The same message under the limit passes.
    let small = key.sign("signed.test", "ed", &plain("news@signed.test"), None);
    let field = ours(&deliver(d, port, "bounce@soft.test", &small));
    assert!(field.contains("dkim=pass"), "{field}");
}

#[test]
fn messages_held_in_memory_and_written_as_they_come_are_both_checked() {
    let key = Key::new();
    let s = signed_test(&key, &["--dmarc-reject"]);
    let (d, port) = (&s.daemon, s.port);
    // Around the 128 KiB held in memory: below, just over, and well over (written to the
    // file as it comes, read back, the prefix put in front).
    for lines in [10usize, 3100, 20_000] {
        let mut msg = plain("news@signed.test");
        for i in 0..lines {
            msg.push_str(&format!("line {i:06} 0123456789012345678901234567890\r\n"));
        }
        let signed = key.sign("signed.test", "ed", &msg, None);
        let stored = deliver(d, port, "bounce@soft.test", &signed);
        let field = ours(&stored);
        assert!(field.contains("dkim=pass"), "{lines}: {field}");
        assert!(field.contains("dmarc=pass"), "{lines}: {field}");
        assert!(
            stored.ends_with(&signed),
            "{lines}: the message is stored as sent"
        );
        // And a changed copy is refused at the end of DATA, leaving nothing behind.
        let before = d.spool_messages("bob").len();
        let sent = send(
            port,
            "bounce@soft.test",
            &signed.replace("line 000005", "line 00000X"),
        );
        assert_eq!(sent.data.unwrap().0, 550, "{lines}");
        assert_eq!(d.spool_messages("bob").len(), before);
    }
}

#[test]
fn no_email_auth_turns_the_checks_off() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &["--no-email-auth"]);
    let msg = "Authentication-Results: mx.example.test; dkim=pass\r\n\
               From: a@fail.test\r\nSubject: s\r\n\r\nx\r\n";
    let stored = deliver(&d, port, "a@fail.test", msg);
    assert!(auth_results(&stored).is_empty(), "{stored}");
    assert!(stored.starts_with("Return-Path: <a@fail.test>\r\nReceived: from client.test"));
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());
}

#[test]
fn the_options_work_from_the_configuration_file() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("smtp-server.toml");
    std::fs::write(
        &conf,
        "spf-reject = true\ndmarc-reject = true\nemail-auth-timeout = \"3s\"\n\
         email-auth-max-size = 1048576\n",
    )
    .unwrap();
    let conf = conf.display().to_string();
    let (d, port) = start(&dir.path().join("mail"), dns.addr(), &["--config", &conf]);
    let sent = send(port, "alice@fail.test", &plain("alice@fail.test"));
    assert_eq!(sent.mail.0, 550, "{:?}", sent.mail);
    assert!(sent.mail.1.starts_with("5.7.23 "), "{:?}", sent.mail);
    ours(&deliver(
        &d,
        port,
        "alice@pass.test",
        &plain("alice@pass.test"),
    ));
    // `start` gives --email-auth-timeout 2s on the command line, which wins over the file.
    let log = d.log();
    assert!(
        log.contains("spf_reject=true dmarc_reject=true max_size=1048576 timeout_ms=2000"),
        "{log}"
    );
    // And off from the file.
    let dir2 = tempfile::tempdir().unwrap();
    let conf2 = dir2.path().join("smtp-server.toml");
    std::fs::write(&conf2, "no-email-auth = true\n").unwrap();
    let conf2 = conf2.display().to_string();
    let (d2, port2) = start(&dir2.path().join("mail"), dns.addr(), &["--config", &conf2]);
    let stored = deliver(&d2, port2, "alice@fail.test", &plain("alice@fail.test"));
    assert!(auth_results(&stored).is_empty(), "{stored}");
}

#[test]
fn mail_relayed_onward_by_an_alias_carries_the_field_too() {
    let rt = runtime();
    let dns = rt.block_on(zone().start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "bob\nteam: bob, carol@remote.test\n").unwrap();
    let users = users.display().to_string();
    let spool = dir.path().join("mail");
    // The relay host refuses connections: the queued copy stays in the queue.
    let (d, port) = start(
        &spool,
        dns.addr(),
        &["-u", &users, "--relay-host", "127.0.0.1:1"],
    );
    let mut c = Client::connect(port);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@pass.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<team@example.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.w.write_all(b"From: alice@pass.test\r\nSubject: team\r\n\r\nHi.\r\n.\r\n")
        .unwrap();
    assert_eq!(c.reply().0, 250);
    let local = String::from_utf8(d.spool_messages("bob").pop().unwrap().1).unwrap();
    let field = ours(&local);
    let entries: Vec<_> = std::fs::read_dir(spool.join(".queue").join("entries"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1);
    // A queue entry is one file (`mailstore-queue 3`): the envelope up to `body-size N` and
    // `end`, then the message.
    let file = String::from_utf8(std::fs::read(entries[0].path()).unwrap()).unwrap();
    assert!(file.starts_with("mailstore-queue 3\n"), "{file}");
    let body_at = file.find("\nend\n").unwrap() + "\nend\n".len();
    let queued = file[body_at..].to_owned();
    assert!(
        queued.starts_with("Authentication-Results: mx.example.test;"),
        "{queued}"
    );
    assert_eq!(auth_results(&queued), [field]);
    assert!(
        queued.contains("\r\nReceived: from client.test ([127.0.0.1])"),
        "{queued}"
    );
    assert!(
        queued.contains("\r\nMessage-ID: <"),
        "relayed onward: gets a Message-ID"
    );
}
