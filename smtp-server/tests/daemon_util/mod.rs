//! Helpers for the daemon's end-to-end tests: start the built binary, talk SMTP to it, run a
//! DNS server and a receiving SMTP peer on loopback.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_client::testdns::TestDns;
use smtp_server::smtp_proto::address::{ForwardPath, ReversePath};
use smtp_server::smtp_proto::param::RcptParams;
use smtp_server::smtp_proto::{EnhancedCode, Refusal};
use smtp_server::{
    BodyError, BodyStream, ConnectionInfo, DataOutcome, Envelope, Handler, SessionHandler,
    TlsConfig,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_smtp-server");

/// A self-signed certificate for `name` and its key, written as `cert.pem` and `key.pem` in
/// `dir`; returns their paths.
pub fn tls_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Owned options from string slices (for [`Daemon::start_ports`]'s option makers).
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub spool: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl Daemon {
    /// Starts the daemon with a loopback listener on a free port, spool `spool`, local domain
    /// `example.test`, host name `mx.example.test`, the given DNS server, and `extra` options.
    pub fn start(spool: &Path, dns: SocketAddr, extra: &[&str]) -> Daemon {
        Daemon::start_ports(spool, dns, |[]| strings(extra)).0
    }

    /// As [`Daemon::start`], with `N` more free ports for the test's other listeners: `extra`
    /// makes the options from them. Returns the daemon and those ports.
    ///
    /// A port is free when chosen but not held: another test may take it before the daemon
    /// binds it. Then the daemon says so and exits, and new ports are tried (all of them, so
    /// the options `extra` made from a lost one are made again).
    pub fn start_ports<const N: usize>(
        spool: &Path,
        dns: SocketAddr,
        extra: impl Fn([u16; N]) -> Vec<String>,
    ) -> (Daemon, [u16; N]) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let more: [u16; N] = std::array::from_fn(|_| free_port());
            let log = spool.with_extension(format!("log{port}"));
            let mut args: Vec<String> = vec![
                "-d".into(),
                spool.display().to_string(),
                "-s".into(),
                "example.test".into(),
                "--hostname".into(),
                "mx.example.test".into(),
                "-l".into(),
                format!("127.0.0.1:{port}"),
                "--dns-server".into(),
                dns.to_string(),
                "--log-level".into(),
                "debug".into(),
                "--log-file".into(),
                log.display().to_string(),
            ];
            let extra = extra(more);
            if !extra.iter().any(|a| a == "-p" || a == "--public-listen") {
                args.push("--no-public".into());
            }
            args.extend(extra);
            let lost = |e: &str| {
                e.contains("cannot listen on")
                    && e.contains("in use")
                    && std::iter::once(port)
                        .chain(more)
                        .any(|p| e.contains(&format!(":{p}: ")))
            };
            match Daemon::try_spawn(spool, port, log, args) {
                Ok(d) => return (d, more),
                Err(e) if lost(&e) => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free ports for the daemon in 5 tries; the last: {last}");
    }

    /// Starts again with the same arguments (after a crash or a stop).
    pub fn restart(&self) -> Daemon {
        Daemon::spawn(&self.spool, self.port, self.log.clone(), self.args.clone())
    }

    fn spawn(spool: &Path, port: u16, log: PathBuf, args: Vec<String>) -> Daemon {
        Daemon::try_spawn(spool, port, log, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon and waits until it has said in its log that it started (each start
    /// adds that line, a restart included) and its port answers: a listener another test
    /// put on the port does not count. A daemon that exited is the error, with its stderr.
    fn try_spawn(
        spool: &Path,
        port: u16,
        log: PathBuf,
        args: Vec<String>,
    ) -> Result<Daemon, String> {
        const STARTED: &str = "smtp-server started";
        let before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(STARTED)
            .count();
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            spool: spool.to_path_buf(),
            port,
            log,
            args,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(_)) = d.child.try_wait() {
                return true;
            }
            d.log().matches(STARTED).count() > before
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Ok(Some(st)) = d.child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(d.child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Err(format!("daemon exited at start ({st}): {err}"));
        }
        assert!(ready, "daemon did not start listening");
        Ok(d)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "daemon did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw SMTP connection to the loopback listener.
    pub fn connect(&self) -> Smtp {
        Smtp::connect(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// The files of a spool mailbox, sorted by number (`1`, `2`, ...), without statuses.
    pub fn spool_messages(&self, user: &str) -> Vec<(u64, Vec<u8>)> {
        spool_messages(&self.spool, user)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many entries the daemon's outbound queue (`<spool>/.queue`) holds.
#[allow(dead_code)] // not every test file uses it
pub fn queued(spool: &Path) -> usize {
    std::fs::read_dir(spool.join(".queue").join("entries"))
        .expect("the daemon creates its queue at start")
        .count()
}

/// The numbered messages of a spool mailbox.
pub fn spool_messages(spool: &Path, user: &str) -> Vec<(u64, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(spool.join(user)) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, Vec<u8>)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .map(|n| {
            (
                n,
                std::fs::read(spool.join(user).join(n.to_string())).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A minimal blocking SMTP client that shows every reply.
pub struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
    pub greeting: (u16, String),
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Smtp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            greeting: (0, String::new()),
        };
        c.greeting = c.reply();
        c
    }

    /// Reads one (multi-line) reply: code and the text of all lines.
    pub fn reply(&mut self) -> (u16, String) {
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

    /// Reads to the end of the stream: what the server sent before it closed.
    #[allow(dead_code)] // not every test file uses it
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.r, &mut rest).unwrap();
        rest
    }

    /// Sends one command line, returns the reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// Writes raw bytes (a message already dot-stuffed, say); read the reply with
    /// [`reply`](Self::reply).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// EHLO, MAIL, each RCPT (which must be accepted), DATA, the message (dot-stuffed here);
    /// returns the reply to the final dot.
    pub fn send(&mut self, from: &str, rcpts: &[&str], message: &str) -> (u16, String) {
        assert_eq!(self.cmd("EHLO client.test").0, 250);
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        for r in rcpts {
            let rep = self.cmd(&format!("RCPT TO:<{r}>"));
            assert_eq!(rep.0, 250, "RCPT {r}: {rep:?}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        let mut data = String::new();
        for line in message.split_inclusive("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
        }
        data.push_str(".\r\n");
        self.w.write_all(data.as_bytes()).unwrap();
        self.reply()
    }
}

/// What the peer received.
#[derive(Debug, Clone)]
pub struct Got {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The transaction as received (with its DSN parameters when the peer offers DSN).
    pub envelope: smtp_server::smtp_proto::envelope::Envelope,
    pub body: Vec<u8>,
    pub tls: bool,
}

/// How the peer answers.
#[derive(Debug, Clone, Default)]
pub struct PeerBehaviour {
    /// Refuse these recipients (local parts) at RCPT with `550 5.1.1`.
    pub refuse: Vec<String>,
    /// Answer `451 4.3.0` to the message this many times before accepting.
    pub fail_first: usize,
    /// Wait this long after the final dot before answering it (a slow next hop); the
    /// message counts as received (`got`) once the wait is over, answered or not.
    pub delay: Duration,
    /// Offer DSN (RFC 3461), so that NOTIFY, ORCPT, RET and ENVID are sent.
    pub dsn: bool,
}

/// A receiving SMTP server on loopback (the smtp-server library itself), optionally offering
/// STARTTLS with a self-signed certificate, plus a DNS server whose MX for `remote.test` (and
/// `loop.test`) points at 127.0.0.1; both run on a background runtime.
pub struct Net {
    pub rt: tokio::runtime::Runtime,
    pub dns: TestDns,
    pub peer_port: u16,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub attempts: Arc<Mutex<usize>>,
    /// Every message body the peer read, refused ones too, in order.
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Net {
    pub fn start(behaviour: PeerBehaviour, tls: bool) -> Net {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dns = rt
            .block_on(
                TestDns::builder()
                    .mx("remote.test", 10, "mx.remote.test")
                    .a("mx.remote.test", [127, 0, 0, 1].into())
                    .mx("loop.test", 10, "mx.loop.test")
                    .a("mx.loop.test", [127, 0, 0, 1].into())
                    // Other spellings of "this host" (the loop guard's cases).
                    .mx("zero.test", 10, "mx.zero.test")
                    .a("mx.zero.test", [0, 0, 0, 0].into())
                    .mx("v6zero.test", 10, "mx.v6zero.test")
                    .aaaa("mx.v6zero.test", std::net::Ipv6Addr::UNSPECIFIED)
                    .mx("mapped.test", 10, "mx.mapped.test")
                    .aaaa("mx.mapped.test", "::ffff:0.0.0.0".parse().unwrap())
                    // A host that goes silent (see daemon_relay's head-of-line test).
                    .mx("slow.test", 10, "mx.slow.test")
                    .a("mx.slow.test", [127, 0, 0, 2].into())
                    // Both families; only 127.0.0.1 has the peer.
                    .mx("dual.test", 10, "mx.dual.test")
                    .a("mx.dual.test", [127, 0, 0, 1].into())
                    .aaaa("mx.dual.test", std::net::Ipv6Addr::LOCALHOST)
                    // A host that defers every recipient (127.0.0.3, the peer's port).
                    .mx("tempfail.test", 10, "mx.tempfail.test")
                    .a("mx.tempfail.test", [127, 0, 0, 3].into())
                    .mx("range.test", 10, "mx.range.test")
                    .a("mx.range.test", [127, 0, 0, 2].into())
                    .aaaa("mx.range.test", std::net::Ipv6Addr::LOCALHOST)
                    .start(),
            )
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let dsn = behaviour.dsn;
        let handler = Peer {
            b: Arc::new(behaviour),
            got: got.clone(),
            attempts: attempts.clone(),
            bodies: bodies.clone(),
        };
        let mut builder = smtp_server::Server::builder(handler)
            .hostname("mx.remote.test")
            .listen("127.0.0.1:0".parse().unwrap());
        if dsn {
            let mut session =
                smtp_server::smtp_proto::session::SessionConfig::new("mx.remote.test");
            session.dsn = true;
            builder = builder.session_config(session);
        }
        if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["mx.remote.test".into()]).unwrap();
            let cfg = TlsConfig::from_pem(
                ck.cert.pem().as_bytes(),
                ck.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap();
            builder = builder.tls(cfg);
        }
        let bound = rt.block_on(builder.bind()).unwrap();
        let peer_port = bound.local_addrs()[0].port();
        rt.spawn(bound.serve(std::future::pending()));
        Net {
            rt,
            dns,
            peer_port,
            got,
            attempts,
            bodies,
        }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

struct Peer {
    b: Arc<PeerBehaviour>,
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<Mutex<usize>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

struct PeerSession {
    b: Arc<PeerBehaviour>,
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<Mutex<usize>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Handler for Peer {
    type Session = PeerSession;
    async fn connect(&self, _: &ConnectionInfo) -> Result<PeerSession, Refusal> {
        Ok(PeerSession {
            b: self.b.clone(),
            got: self.got.clone(),
            attempts: self.attempts.clone(),
            bodies: self.bodies.clone(),
        })
    }
}

impl SessionHandler for PeerSession {
    async fn rcpt(&mut self, to: &ForwardPath, _: &RcptParams) -> Result<(), Refusal> {
        if let ForwardPath::Mailbox(m) = to {
            if self.b.refuse.iter().any(|r| *r == m.local_part()) {
                return Err(Refusal::fixed(
                    550,
                    Some(EnhancedCode::fixed(5, 1, 1)),
                    "no such user here",
                ));
            }
        }
        Ok(())
    }

    async fn data(&mut self, env: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        let mut data = Vec::new();
        let mut complete = true;
        loop {
            match body.chunk().await {
                Ok(Some(c)) => data.extend_from_slice(c),
                Ok(None) => break,
                // The client went away before the final dot: nothing was received.
                Err(BodyError::Disconnected | BodyError::Io(_)) => {
                    complete = false;
                    break;
                }
                // Refused by the library (a line too long, say): kept, as the tests of
                // what a next hop receives look at it.
                Err(_) => break,
            }
        }
        self.bodies.lock().unwrap().push(data.clone());
        if !complete {
            return DataOutcome::temporary_failure("message not received");
        }
        if !self.b.delay.is_zero() {
            tokio::time::sleep(self.b.delay).await;
        }
        let n = {
            let mut a = self.attempts.lock().unwrap();
            *a += 1;
            *a
        };
        if n <= self.b.fail_first {
            return DataOutcome::temporary_failure("not now");
        }
        let from = match &env.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        self.got.lock().unwrap().push(Got {
            from,
            rcpts: env.rcpts.iter().map(|(r, _)| r.to_string()).collect(),
            envelope: env.transaction(),
            body: data,
            tls: env.tls.is_some(),
        });
        DataOutcome::accepted("queued")
    }
}

/// A scripted next hop on `addr` (a raw socket, for replies no SMTP library would send):
/// greets, answers every command with `reply` (raw bytes, CRLFs included: it may be a
/// multi-line reply with anything in it), `354` to DATA, and to the final dot `dot_reply`, or
/// nothing at all when `None` (silent, the connection left open); with `then_silent`, nothing
/// more after the dot's reply (QUIT unanswered). Counts the final dots read.
pub fn raw_peer(
    addr: SocketAddr,
    reply: &str,
    dot_reply: Option<&str>,
    then_silent: bool,
) -> Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dots = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(addr).unwrap();
    let (d, reply, dot_reply) = (dots.clone(), reply.to_owned(), dot_reply.map(str::to_owned));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut w) = conn else { continue };
            let (d, reply, dot_reply) = (d.clone(), reply.clone(), dot_reply.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(w.try_clone().unwrap());
                let _ = w.write_all(b"220 peer.test ESMTP\r\n");
                let mut line = String::new();
                let mut in_data = false;
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            d.fetch_add(1, Ordering::SeqCst);
                            match &dot_reply {
                                Some(t) => {
                                    let _ = w.write_all(t.as_bytes());
                                    if then_silent {
                                        std::thread::sleep(Duration::from_secs(3600));
                                    }
                                }
                                // Silent from here on; the connection stays open.
                                None => std::thread::sleep(Duration::from_secs(3600)),
                            }
                        }
                    } else if line.to_ascii_uppercase().starts_with("DATA") {
                        in_data = true;
                        let _ = w.write_all(b"354 go ahead\r\n");
                    } else if line.to_ascii_uppercase().starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    } else if line.to_ascii_uppercase().starts_with("EHLO")
                        || line.to_ascii_uppercase().starts_with("MAIL")
                    {
                        let _ = w.write_all(b"250 ok\r\n");
                    } else {
                        let _ = w.write_all(reply.as_bytes());
                    }
                    line.clear();
                }
            });
        }
    });
    dots
}

/// Runs `dkim-keygen` for example.test (the key written as `SELECTOR.pem` in `dir`, mode
/// 0600) and returns its path and the TXT record's text (the quoted strings of its zone-file
/// line, joined).
pub fn dkim_keygen(
    dir: &std::path::Path,
    selector: &str,
    algorithm: &str,
) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{selector}.pem"));
    let out = Command::new(BIN)
        .args([
            "dkim-keygen",
            "--domain",
            "example.test",
            "--selector",
            selector,
        ])
        .arg("--key-out")
        .arg(&key)
        .args(["--algorithm", algorithm])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| !l.starts_with(';'))
        .unwrap_or_else(|| panic!("no record in {text}"));
    assert!(
        line.starts_with(&format!("{selector}._domainkey.example.test. IN TXT \"")),
        "{line}"
    );
    let record: String = line.split('"').skip(1).step_by(2).collect();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    (key, record)
}
