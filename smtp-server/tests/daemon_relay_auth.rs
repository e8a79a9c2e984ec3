//! End-to-end: the daemon logs in to its `--relay-host` with the credentials of
//! `--relay-password-file`, over STARTTLS with a certificate made at test time. The relay host
//! is a scripted SMTP peer on loopback that checks the PLAIN login itself (the workspace's
//! server has no AUTH yet) and records what it receives.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daemon_util::{queued, wait_until, Daemon, BIN};
use smtp_client::testdns::TestDns;
use smtp_server::smtp_proto::sasl::{decode_base64, encode_base64};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

const MSG: &str =
    "From: alice@example.test\r\nTo: dave@remote.test\r\nSubject: via relay\r\n\r\nHello.\r\n";

/// What the relay host saw: every line (and whether it came inside TLS), the messages.
#[derive(Default)]
struct Seen {
    lines: Vec<(bool, String)>,
    messages: Vec<String>,
}

struct Relay {
    rt: tokio::runtime::Runtime,
    dns: TestDns,
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Relay {
    /// A relay host on 127.0.0.1 that accepts `alice` / `s3cret` by PLAIN, offering AUTH only
    /// inside TLS (or, without `starttls`, in clear text and no STARTTLS at all).
    fn start(starttls: bool) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dns = rt.block_on(TestDns::builder().start()).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ck = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        rt.spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = tcp.write_all(b"220 relay.test ESMTP\r\n").await;
                    if talk(&mut tcp, false, starttls, &s).await {
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            talk(&mut tls, true, starttls, &s).await;
                        }
                    }
                });
            }
        });
        Relay {
            rt,
            dns,
            addr,
            seen,
        }
    }

    fn lines(&self) -> Vec<(bool, String)> {
        self.seen.lock().unwrap().lines.clone()
    }

    fn messages(&self) -> Vec<String> {
        self.seen.lock().unwrap().messages.clone()
    }

    fn saw(&self, prefix: &str) -> bool {
        self.lines().iter().any(|(_, l)| l.starts_with(prefix))
    }
}

/// Answers lines until the connection ends (false) or STARTTLS was accepted (true).
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    tls: bool,
    starttls: bool,
    seen: &Mutex<Seen>,
) -> bool {
    let mut data: Option<String> = None;
    let mut authenticated = false;
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8];
            match s.read(&mut b).await {
                Ok(1) => line.push(b[0]),
                _ => return false,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(body) = &mut data {
            if line == ".\r\n" {
                let body = data.take().unwrap_or_default();
                seen.lock().unwrap().messages.push(body);
                let _ = s.write_all(b"250 2.0.0 queued\r\n").await;
            } else {
                body.push_str(&line);
            }
            continue;
        }
        seen.lock().unwrap().lines.push((tls, line.clone()));
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut r = String::from("250-relay.test\r\n");
            if starttls && !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            if tls || !starttls {
                r.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            r.push_str("250 8BITMIME\r\n");
            r
        } else if upper.starts_with("STARTTLS") {
            let _ = s.write_all(b"220 2.0.0 ready\r\n").await;
            return true;
        } else if upper.starts_with("AUTH PLAIN ") {
            // The base64 is case-sensitive: taken from the line as sent.
            match decode_base64(&line.as_bytes()["AUTH PLAIN ".len()..line.len() - 2]) {
                Some(m) if m == b"\0alice\0s3cret" => {
                    authenticated = true;
                    "235 2.7.0 Authentication successful\r\n".into()
                }
                _ => "535 5.7.8 Authentication credentials invalid\r\n".into(),
            }
        } else if upper.starts_with("MAIL") && !authenticated {
            "530 5.7.0 Authentication required\r\n".into()
        } else if upper.starts_with("DATA") {
            data = Some(String::new());
            "354 go ahead\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = s.write_all(b"221 2.0.0 bye\r\n").await;
            return false;
        } else {
            "250 2.0.0 ok\r\n".into()
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return false;
        }
    }
}

fn password_file(dir: &Path, relay: SocketAddr, password: &str, mode: u32) -> String {
    let path = dir.join("sasl_passwd");
    std::fs::write(
        &path,
        format!(
            "# the relay host\n[127.0.0.1]:{} alice:{password}\nother.example u:p\n",
            relay.port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

fn start_daemon(relay: &Relay, spool: &Path, file: &str) -> Daemon {
    Daemon::start(
        spool,
        relay.dns.addr(),
        &[
            "--relay-host",
            &relay.addr.to_string(),
            "--relay-password-file",
            file,
        ],
    )
}

#[test]
fn logs_in_after_starttls_and_delivers() {
    let relay = Relay::start(true);
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), relay.addr, "s3cret", 0o600);
    let spool = dir.path().join("mail");
    let d = start_daemon(&relay, &spool, &file);
    let r = d
        .connect()
        .send("alice@example.test", &["dave@remote.test"], MSG);
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || !relay.messages().is_empty()),
        "{}",
        d.log()
    );
    assert!(relay.messages()[0].contains("Hello.\r\n"));
    let want = format!("AUTH PLAIN {}\r\n", encode_base64(b"\0alice\0s3cret"));
    let lines = relay.lines();
    let auth = lines.iter().position(|(_, l)| *l == want).unwrap();
    let mail = lines
        .iter()
        .position(|(_, l)| l.starts_with("MAIL"))
        .unwrap();
    assert!(lines[auth].0, "AUTH inside TLS");
    assert!(auth < mail);
    assert!(wait_until(Duration::from_secs(5), || queued(&spool) == 0));
    assert!(
        d.log().contains("deliveries to the relay host log in"),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("s3cret"), "the password is in the log");
}

#[test]
fn a_refused_login_defers_and_keeps_the_message() {
    let relay = Relay::start(true);
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), relay.addr, "wrong", 0o640);
    let spool = dir.path().join("mail");
    let d = start_daemon(&relay, &spool, &file);
    let r = d
        .connect()
        .send("alice@example.test", &["dave@remote.test"], MSG);
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("delivery deferred")),
        "{}",
        d.log()
    );
    assert!(relay.saw("AUTH PLAIN "));
    assert!(!relay.saw("MAIL"));
    assert!(relay.messages().is_empty());
    assert_eq!(queued(&spool), 1, "the message stays queued");
    let log = d.log();
    assert!(
        log.contains("authentication failed") && log.contains("535 5.7.8"),
        "{log}"
    );
    assert!(log.contains("group may read"), "{log}");
    assert!(!log.contains("wrong"), "the password is in the log: {log}");
    // No bounce: a failed login is not the recipient's fault.
    assert!(d.spool_messages("alice").is_empty());
}

#[test]
fn without_starttls_the_password_is_never_sent() {
    let relay = Relay::start(false);
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), relay.addr, "s3cret", 0o600);
    let spool = dir.path().join("mail");
    let d = start_daemon(&relay, &spool, &file);
    let r = d
        .connect()
        .send("alice@example.test", &["dave@remote.test"], MSG);
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(20), || d
            .log()
            .contains("delivery deferred")),
        "{}",
        d.log()
    );
    assert!(!relay.saw("AUTH"), "{:?}", relay.lines());
    assert!(relay.messages().is_empty());
    assert_eq!(queued(&spool), 1);
    assert!(d.log().contains("not encrypted"), "{}", d.log());
}

#[test]
fn a_password_file_others_can_read_stops_the_daemon() {
    let relay = Relay::start(true);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    for (mode, contents) in [(0o644, None), (0o600, Some("[127.0.0.1]:25 no-colon\n"))] {
        let file = password_file(dir.path(), relay.addr, "s3cret", mode);
        if let Some(c) = contents {
            std::fs::write(&file, c).unwrap();
        }
        let out = Command::new(BIN)
            .args(["-d", &spool.display().to_string(), "-s", "example.test"])
            .args(["-l", "127.0.0.1:0", "--no-public"])
            .args(["--dns-server", &relay.dns.addr().to_string()])
            .args(["--relay-host", &relay.addr.to_string()])
            .args(["--relay-password-file", &file])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--relay-password-file"), "{err}");
        if contents.is_none() {
            assert!(err.contains("chmod 600"), "{err}");
        } else {
            assert!(err.contains("line 1"), "{err}");
        }
    }
    drop(relay.rt);
}
