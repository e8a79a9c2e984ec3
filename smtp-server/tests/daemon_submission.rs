//! Submission end to end: the daemon with `--submission-listen` and `--tls-listen`, a
//! passwd-file made by `smtp-server passwd`, lettre as the mail client; authenticated mail is
//! relayed to a remote MX (the test DNS on loopback), unauthenticated mail is refused.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon_util::{free_port, wait_until, Daemon, Net, PeerBehaviour, BIN};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// `smtp-server passwd USER` with the password on standard input: the line it prints.
fn passwd_line(user: &str, password: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    net: Net,
    d: Daemon,
    submission: u16,
    smtps: u16,
}

fn setup() -> Setup {
    setup_with(|_| Vec::new())
}

/// [`setup`] with more daemon options, made in the test's directory by `extra`.
fn setup_with(extra: impl FnOnce(&std::path::Path) -> Vec<String>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let more = extra(dir.path());
    let net = Net::start(PeerBehaviour::default(), true);
    let (cert, key) = daemon_util::tls_files(dir.path(), "mx.example.test");
    let passwd = dir.path().join("passwd");
    let users = dir.path().join("users");
    std::fs::write(
        &passwd,
        passwd_line("alice@example.test", "correct horse") + &passwd_line("bob", "battery"),
    )
    .unwrap();
    std::fs::write(&users, "alice\nbob\nteam: alice, bob\ncarol\n").unwrap();
    let peer_port = net.peer_port.to_string();
    let (d, [submission, smtps]) =
        Daemon::start_ports(&dir.path().join("mail"), net.dns.addr(), |[sub, tls]| {
            let (sub, tls) = (format!("127.0.0.1:{sub}"), format!("127.0.0.1:{tls}"));
            let mut args = vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
                "--submission-listen",
                &sub,
                "--tls-listen",
                &tls,
                "--passwd-file",
                passwd.to_str().unwrap(),
                "-u",
                users.to_str().unwrap(),
                "--remote-port",
                &peer_port,
            ];
            args.extend(more.iter().map(String::as_str));
            daemon_util::strings(&args)
        });
    Setup {
        _dir: dir,
        net,
        d,
        submission,
        smtps,
    }
}

fn client(
    port: u16,
    implicit: bool,
    login: Option<(&str, &str)>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = TlsParameters::builder("mx.example.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(if implicit {
            Tls::Wrapper(params)
        } else {
            Tls::Required(params)
        })
        .hello_name(ClientId::Domain("laptop.test".into()))
        .timeout(Some(Duration::from_secs(20)));
    if let Some((u, p)) = login {
        b = b
            .credentials(Credentials::new(u.into(), p.into()))
            .authentication(vec![Mechanism::Plain]);
    }
    b.build()
}

fn envelope(from: &str, to: &str) -> Envelope {
    Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap()
}

const RAW: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: from the laptop\r\n\r\nHello.\r\n";

fn status(e: &lettre::transport::smtp::Error) -> String {
    e.status()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
}

fn headers(m: &[u8]) -> String {
    let text = String::from_utf8_lossy(m);
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

#[test]
fn authenticated_mail_is_relayed_and_the_rest_refused() {
    let s = setup();
    let rt = &s.net.rt;
    // Logged in on 587 (STARTTLS): relayed to the remote MX.
    let c = client(
        s.submission,
        false,
        Some(("alice@example.test", "correct horse")),
    );
    rt.block_on(c.send_raw(&envelope("alice@example.test", "bob@remote.test"), RAW))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || !s.net.got().is_empty()),
        "not relayed: {}",
        s.d.log()
    );
    let got = s.net.got();
    assert_eq!(got[0].from, "alice@example.test");
    assert_eq!(got[0].rcpts, ["<bob@remote.test>"]);
    let h = headers(&got[0].body);
    assert!(h.contains("by mx.example.test with ESMTPSA id "), "{h}");
    // Our own user's message gets the Date: and Message-ID: it lacked.
    assert!(h.contains("\r\nDate: "), "{h}");
    assert!(h.contains("\r\nMessage-ID: <"), "{h}");
    let log = s.d.log();
    assert!(
        log.contains("authenticated user=alice@example.test mechanism=PLAIN"),
        "{log}"
    );

    // Not logged in: MAIL is refused on both submission listeners, even for local mail.
    for (port, implicit) in [(s.submission, false), (s.smtps, true)] {
        let e = rt
            .block_on(
                client(port, implicit, None)
                    .send_raw(&envelope("alice@example.test", "bob@example.test"), RAW),
            )
            .unwrap_err();
        assert_eq!(status(&e), "530", "{e}");
    }
    // Wrong password.
    let e = rt
        .block_on(
            client(s.smtps, true, Some(("alice@example.test", "wrong")))
                .send_raw(&envelope("alice@example.test", "bob@remote.test"), RAW),
        )
        .unwrap_err();
    assert_eq!(status(&e), "535", "{e}");
    // Someone else's address, or a remote one: 553 5.7.1.
    for from in ["carol@example.test", "alice@gmail.test"] {
        let e = rt
            .block_on(
                client(s.smtps, true, Some(("alice@example.test", "correct horse")))
                    .send_raw(&envelope(from, "bob@remote.test"), RAW),
            )
            .unwrap_err();
        assert_eq!(status(&e), "553", "{from}: {e}");
    }
    // An alias of the user, and the bare login `bob` for bob@ (over 465), delivered locally.
    let c = client(s.smtps, true, Some(("alice@example.test", "correct horse")));
    rt.block_on(c.send_raw(&envelope("team@example.test", "carol@example.test"), RAW))
        .unwrap();
    let c = client(s.smtps, true, Some(("bob", "battery")));
    rt.block_on(c.send_raw(&envelope("bob+x@example.test", "carol@example.test"), RAW))
        .unwrap();
    let carol = s.d.spool_messages("carol");
    assert_eq!(carol.len(), 2);
    assert!(headers(&carol[0].1).contains("Return-Path: <team@example.test>"));
    assert_eq!(s.net.got().len(), 1, "nothing else was relayed");
}

#[test]
fn submission_needs_a_user_database() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = daemon_util::tls_files(dir.path(), "mx.example.test");
    let out = Command::new(BIN)
        .args(["-d", dir.path().join("mail").to_str().unwrap()])
        .args(["-l", &format!("127.0.0.1:{}", free_port()), "--no-public"])
        .args(["--dns-server", "127.0.0.1:1"])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .args(["--submission-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--submission-listen") && err.contains("--passwd-file"),
        "{err}"
    );
}

/// A logged-in user's mail is signed only for a `From:` address the login may send as (its
/// envelope rule): a user cannot get mail signed as someone else of a signed domain.
#[test]
fn only_the_logins_own_from_is_signed() {
    let s = setup_with(|dir| {
        let (key, _) = daemon_util::dkim_keygen(dir, "ed", "ed25519");
        vec![
            "--dkim-key".into(),
            format!("example.test:ed:{}", key.display()),
        ]
    });
    let rt = &s.net.rt;
    let cases: [(&str, &str, &str, bool); 4] = [
        // Their own address, and an alias of theirs (team: alice, bob).
        (
            "alice@example.test",
            "alice@example.test",
            "Alice <alice@example.test>",
            true,
        ),
        (
            "alice@example.test",
            "alice@example.test",
            "Team <team@example.test>",
            true,
        ),
        // Bob's own envelope, alice's From: not signed; nor carol's (no alias of bob's).
        (
            "bob",
            "bob@example.test",
            "Alice <alice@example.test>",
            false,
        ),
        ("bob", "bob@example.test", "carol@EXAMPLE.test", false),
    ];
    for (i, (user, from, header_from, _)) in cases.iter().enumerate() {
        let password = if *user == "bob" {
            "battery"
        } else {
            "correct horse"
        };
        let c = client(s.smtps, true, Some((user, password)));
        let raw = format!(
            "From: {header_from}\r\nTo: dave@remote.test\r\nSubject: case {i}\r\n\r\nHi.\r\n"
        );
        rt.block_on(c.send_raw(&envelope(from, "dave@remote.test"), raw.as_bytes()))
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(20), || s.net.got().len() == cases.len()),
        "{}",
        s.d.log()
    );
    let got = s.net.got();
    for (i, (user, _, header_from, signed)) in cases.iter().enumerate() {
        let g = got
            .iter()
            .find(|g| headers(&g.body).contains(&format!("Subject: case {i}")))
            .unwrap();
        let h = headers(&g.body);
        assert_eq!(
            h.contains("DKIM-Signature: "),
            *signed,
            "{user} as {header_from}: {h}"
        );
    }
    let log = s.d.log();
    assert_eq!(
        log.matches("not DKIM-signed: the From: address is not one the login may send as")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("user=bob"), "{log}");
}
