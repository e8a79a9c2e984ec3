//! End-to-end: SIGHUP reloads the TLS certificate (and never kills the daemon); option values
//! that used to be accepted silently (host names, relay host, ports, `--max-message-size 0`);
//! local clients are not held to the per-IP connection limit.
#![allow(clippy::unwrap_used)]

mod daemon_util;
mod server_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use daemon_util::{wait_until, Daemon, Net, PeerBehaviour, BIN};
use server_support::{pki, server_name, tls_connector, Client, Pki};

fn hup(d: &Daemon) {
    let st = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The leaf certificate the daemon presents after STARTTLS on its loopback listener.
async fn peer_leaf(addr: SocketAddr, trust: &Pki) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client::new(tcp);
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("STARTTLS").await.starts_with("220"));
    let tls = tls_connector(&trust.ca_der)
        .connect(server_name(), c.into_inner())
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_running() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let old = pki("old");
    std::fs::write(&cert, &old.cert_pem).unwrap();
    std::fs::write(&key, &old.key_pem).unwrap();
    let mut d = Daemon::start(
        &dir.path().join("mail"),
        net.dns.addr(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], d.port));
    assert_eq!(rt.block_on(peer_leaf(addr, &old)), old.leaf_der.to_vec());

    let new = pki("new");
    std::fs::write(&cert, &new.cert_pem).unwrap();
    std::fs::write(&key, &new.key_pem).unwrap();
    hup(&d);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("TLS certificate and key reloaded")),
        "{}",
        d.log()
    );
    assert!(d.child.try_wait().unwrap().is_none(), "died of SIGHUP");
    assert_eq!(rt.block_on(peer_leaf(addr, &new)), new.leaf_der.to_vec());

    // A broken certificate file: logged, the working certificate stays in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    hup(&d);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("TLS reload failed")),
        "{}",
        d.log()
    );
    assert!(d.child.try_wait().unwrap().is_none(), "died of SIGHUP");
    assert_eq!(rt.block_on(peer_leaf(addr, &new)), new.leaf_der.to_vec());

    // Mail still flows, and SIGTERM still stops it cleanly.
    let mut c = d.connect();
    assert_eq!(
        c.send(
            "a@example.test",
            &["bob@example.test"],
            "Subject: x\r\n\r\nhi\r\n"
        )
        .0,
        250
    );
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
}

#[test]
fn sighup_without_tls_is_ignored() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&dir.path().join("mail"), net.dns.addr(), &[]);
    hup(&d);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .log()
            .contains("SIGHUP: nothing to reload")),
        "{}",
        d.log()
    );
    assert!(d.child.try_wait().unwrap().is_none(), "died of SIGHUP");
    assert_eq!(d.connect().greeting.0, 220);
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
}

/// Values that would give a broken greeting or a relay host that can never work are refused
/// at start (clap's message names the option; exit code 2).
#[test]
fn bad_names_and_ports_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let l = format!("127.0.0.1:{}", daemon_util::free_port());
    let base = ["-d", spool.to_str().unwrap(), "-l", &l, "--no-public"];
    for (opt, value) in [
        ("--hostname", "mail server"),
        ("--hostname", ""),
        ("--domain", ""),
        ("--domain", "example..org"),
        ("-s", "x-.example"),
        ("--relay-host", ":25"),
        ("--relay-host", "smart host:25"),
        ("--relay-host", "smarthost:0"),
        ("--remote-port", "0"),
    ] {
        let out = Command::new(BIN)
            .args(base)
            .args([opt, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{opt} {value:?} was accepted");
        let err = String::from_utf8(out.stderr).unwrap();
        let long = match opt {
            "-s" => "--domain",
            o => o,
        };
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{long}")),
            "{opt} {value:?}: {err}"
        );
    }
}

/// `--max-message-size 0` means no limit (as Postfix's `message_size_limit = 0`), not
/// "refuse every message".
#[test]
fn max_message_size_0_means_no_limit() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("mail"),
        net.dns.addr(),
        &["--max-message-size", "0"],
    );
    let mut c = d.connect();
    let (code, ehlo) = c.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("SIZE 0"), "{ehlo}");
    assert_eq!(c.cmd("RSET").0, 250);
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(1000)
    );
    let rep = c.send("a@example.test", &["bob@example.test"], &body);
    assert_eq!(rep.0, 250, "{rep:?}");
    assert_eq!(d.spool_messages("bob").len(), 1);
}

/// Every local program connects from 127.0.0.1; the per-client-IP limit (50) must not cap
/// the relaying loopback listener (Postfix exempts `$mynetworks` the same way).
#[test]
fn sixty_local_clients_at_once_are_all_greeted() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("mail"), net.dns.addr(), &[]);
    let clients: Vec<_> = (0..60).map(|_| d.connect()).collect();
    for c in &clients {
        assert_eq!(c.greeting.0, 220, "{:?}", c.greeting);
    }
}
