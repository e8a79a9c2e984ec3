//! The client side of Dovecot's authentication protocol (version 1), as Postfix's
//! `smtpd_sasl_type = dovecot` speaks it to an `auth-client` listener.
//!
//! ```text
//! C: VERSION  1  2              (fields are separated by TAB, lines end with LF)
//! C: CPID  <our pid>
//! S: VERSION  1  2
//! S: MECH  PLAIN  plaintext     (one line per mechanism)
//! S: SPID  <pid>    S: CUID  <n>    S: COOKIE  <hex>
//! S: DONE
//! C: AUTH  <id>  PLAIN  service=smtp  nologin  lip=..  rip=..  [secured]  resp=<base64>
//! S: OK  <id>  user=<name> ...      or    FAIL  <id>  [temp]  [reason=..] ...
//! ```
//!
//! The login and password travel inside `resp` (PLAIN: `\0login\0password`, base64), so no
//! client-supplied byte reaches a TAB-separated field unencoded; a login with a control
//! character or NUL is refused before anything is sent. Values in replies use Dovecot's
//! TAB-escaping (`\x01` followed by `0`, `1`, `t`, `r`, `n`/`l`) and are unescaped; the
//! returned `user=` is the canonical name (Dovecot has applied `auth_username_format`).
//!
//! `nologin` says that this is a password check, not an IMAP login (Dovecot does not look
//! up the userdb); `secured` tells Dovecot the connection is encrypted, which its
//! `disable_plaintext_auth` (`auth_allow_cleartext` in 2.4) requires for PLAIN. Dovecot's
//! own penalty for failures (`auth_failure_delay`, anvil) applies, keyed on `rip`.
//!
//! Connections are kept and reused, one request at a time each, with increasing ids; at most
//! [`MAX_IDLE`] idle ones are kept. A reused connection that turns out closed (Dovecot was
//! restarted) is replaced once. Connecting and each reply have [`TIMEOUT`]; an expired one,
//! a refused connection, a `FAIL` with `temp` or a reply that does not parse is
//! [`Temporary`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use smtp_proto::sasl::{encode_base64, Secret};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::{canonical_login, Client, Temporary, Verdict};

/// How long to wait for the connection, the handshake, and each reply.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse.
pub const MAX_IDLE: usize = 8;
/// Longest line accepted from Dovecot (its own limit is 16 KiB).
const MAX_LINE: usize = 65_536;

/// Where Dovecot's auth service listens: a unix socket (the usual
/// `/var/spool/postfix/private/auth` or `/run/dovecot/auth-client`) or, written
/// `inet:HOST:PORT`, a TCP `inet_listener` of `service auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// `HOST:PORT` over TCP.
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(rest) = s.strip_prefix("inet:") {
            let (host, port) = crate::config::parse_host_port(rest)?;
            if !rest.contains(':') || port == 0 {
                return Err(format!("{s:?}: inet: needs HOST:PORT"));
            }
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Ok(Endpoint::Tcp(format!("{host}:{port}")))
        } else if s.is_empty() {
            Err("empty socket path".to_owned())
        } else {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "inet:{a}"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One handshaken connection.
struct Conn {
    io: BufReader<Box<dyn Io>>,
    next_id: u32,
}

/// The auth service: where it is and the idle connections to it.
pub(super) struct DovecotAuth {
    endpoint: Endpoint,
    idle: Mutex<Vec<Conn>>,
}

/// A failure with a connection: drop it.
enum Broken {
    /// Before anything was answered (a write failed, EOF before the reply): a fresh
    /// connection may be tried.
    Closed(String),
    /// Anything else.
    Other(String),
}

impl DovecotAuth {
    pub(super) fn new(endpoint: Endpoint) -> DovecotAuth {
        DovecotAuth {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("Dovecot auth service {}", self.endpoint)
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    pub(super) async fn verify(
        &self,
        login: &str,
        password: &Secret,
        client: &Client,
    ) -> Result<Verdict, Temporary> {
        // PLAIN cannot carry a NUL in either; a control character is no one's login.
        if canonical_login(login).is_none() || password.expose().contains(&0) {
            return Ok(Verdict::Invalid);
        }
        let mut plain = Vec::with_capacity(login.len() + password.expose().len() + 2);
        plain.push(0);
        plain.extend_from_slice(login.as_bytes());
        plain.push(0);
        plain.extend_from_slice(password.expose());
        // Both wiped when dropped.
        let plain = Secret::new(plain);
        let resp = Secret::new(encode_base64(plain.expose()).into_bytes());

        if let Some(mut conn) = self.take_idle() {
            match self.exchange(&mut conn, &resp, client).await {
                Ok(v) => {
                    self.put_idle(conn);
                    return Ok(v);
                }
                // Dovecot restarted or closed an idle connection: try a new one.
                Err(Broken::Closed(_)) => {}
                Err(Broken::Other(why)) => return Err(Temporary(why)),
            }
        }
        let mut conn = self.connect().await.map_err(Temporary)?;
        match self.exchange(&mut conn, &resp, client).await {
            Ok(v) => {
                self.put_idle(conn);
                Ok(v)
            }
            Err(Broken::Closed(why) | Broken::Other(why)) => Err(Temporary(why)),
        }
    }

    /// Connects and does the handshake, within [`TIMEOUT`].
    async fn connect(&self) -> Result<Conn, String> {
        let what = &self.endpoint;
        let fut = async {
            let io: Box<dyn Io> = match what {
                Endpoint::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                Endpoint::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a.as_str()).await?),
            };
            Ok::<_, std::io::Error>(io)
        };
        let io = tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| format!("dovecot auth {what}: connect timed out"))?
            .map_err(|e| format!("dovecot auth {what}: connect: {e}"))?;
        let mut conn = Conn {
            io: BufReader::new(io),
            next_id: 1,
        };
        tokio::time::timeout(TIMEOUT, handshake(&mut conn))
            .await
            .map_err(|_| format!("dovecot auth {what}: handshake timed out"))?
            .map_err(|e| format!("dovecot auth {what}: handshake: {e}"))?;
        Ok(conn)
    }

    /// One AUTH request and its reply.
    async fn exchange(
        &self,
        conn: &mut Conn,
        resp: &Secret,
        client: &Client,
    ) -> Result<Verdict, Broken> {
        let what = &self.endpoint;
        let id = conn.next_id;
        conn.next_id = conn.next_id.wrapping_add(1).max(1);
        let mut line = format!(
            "AUTH\t{id}\tPLAIN\tservice=smtp\tnologin\tlip={}\trip={}\tlport={}\trport={}",
            client.local.ip(),
            client.peer.ip(),
            client.local.port(),
            client.peer.port()
        );
        if client.secured {
            line.push_str("\tsecured");
        }
        line.push_str("\tresp=");
        let mut request = line.into_bytes();
        request.extend_from_slice(resp.expose());
        request.push(b'\n');
        // Wiped when dropped, as the password in it.
        let request = Secret::new(request);
        conn.io
            .get_mut()
            .write_all(request.expose())
            .await
            .map_err(|e| Broken::Closed(format!("dovecot auth {what}: write: {e}")))?;
        let reply = match tokio::time::timeout(TIMEOUT, read_line(&mut conn.io)).await {
            Err(_) => {
                return Err(Broken::Other(format!(
                    "dovecot auth {what}: no reply in {}s",
                    TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(Broken::Other(format!("dovecot auth {what}: read: {e}"))),
            Ok(Ok(None)) => {
                return Err(Broken::Closed(format!(
                    "dovecot auth {what}: connection closed"
                )))
            }
            Ok(Ok(Some(l))) => l,
        };
        parse_reply(&reply, id).map_err(|e| Broken::Other(format!("dovecot auth {what}: {e}")))
    }
}

/// Sends our handshake and reads the server's up to `DONE`.
async fn handshake(conn: &mut Conn) -> Result<(), String> {
    let hello = format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id());
    conn.io
        .get_mut()
        .write_all(hello.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut version = false;
    let mut plain = false;
    loop {
        let Some(line) = read_line(&mut conn.io).await.map_err(|e| e.to_string())? else {
            return Err("connection closed".to_owned());
        };
        let mut f = line.split('\t');
        match f.next().unwrap_or_default() {
            "VERSION" => {
                if f.next() != Some("1") {
                    return Err(format!("unsupported protocol version in {line:?}"));
                }
                version = true;
            }
            "MECH" => plain |= f.next().is_some_and(|m| m.eq_ignore_ascii_case("PLAIN")),
            "DONE" => break,
            // SPID, CUID, COOKIE: for a master process, not for us; unknown ones are ignored
            // as the protocol asks.
            _ => {}
        }
    }
    if !version {
        return Err("no VERSION before DONE".to_owned());
    }
    if !plain {
        return Err("the service does not offer PLAIN (auth_mechanisms)".to_owned());
    }
    Ok(())
}

/// One LF-terminated line without the LF (and a CR before it); `None` at a clean EOF.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"));
        }
    }
}

/// Dovecot's TAB-unescaping of one value.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n' | 'l') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The verdict in the reply `line` to request `id`.
fn parse_reply(line: &str, id: u32) -> Result<Verdict, String> {
    let mut f = line.split('\t');
    let cmd = f.next().unwrap_or_default();
    let rid = f.next();
    if !matches!(cmd, "OK" | "FAIL" | "CONT") || rid != Some(id.to_string().as_str()) {
        return Err(format!(
            "unexpected reply to request {id}: {:?}",
            first(line)
        ));
    }
    let params: Vec<(&str, String)> = f
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k, unescape(v))
        })
        .collect();
    let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| v);
    match cmd {
        "OK" => {
            let user = get("user").cloned().ok_or("OK without user=")?.to_owned();
            // The name goes into logs and Received: headers.
            if canonical_login(&user).is_none() {
                return Err(format!("OK with an unusable user name {user:?}"));
            }
            // The password is right but the passdb says the user may not log in (its
            // `nologin` field; Dovecot passes it on rather than failing, for a proxy to act
            // on). Here that is a refusal.
            if get("nologin").is_some() {
                return Ok(Verdict::Invalid);
            }
            Ok(Verdict::Ok { user })
        }
        "FAIL" => {
            let temp = get("temp").is_some() || get("code").is_some_and(|c| c == "temp_fail");
            if temp {
                let reason = get("reason").map_or("no reason given", String::as_str);
                Err(format!("temporary failure: {reason}"))
            } else {
                Ok(Verdict::Invalid)
            }
        }
        // PLAIN with its initial response is one step: a challenge means a confused server.
        _ => Err("CONT to a PLAIN request with its response".to_owned()),
    }
}

/// The reply's command and id, for an error message (never the rest, which may be long).
fn first(line: &str) -> String {
    line.split('\t').take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies() {
        let ok = |u: &str| Ok::<Verdict, String>(Verdict::Ok { user: u.into() });
        for (line, id, want) in [
            ("OK\t1\tuser=alice@example.org", 1, ok("alice@example.org")),
            (
                "OK\t7\tuser=alice@example.org\toriginal_user=Alice@Example.org",
                7,
                ok("alice@example.org"),
            ),
            ("OK\t1\tuser=a\x01tb", 1, Err("OK with an unusable".into())),
            ("OK\t1\tuser=a\x011b", 1, Err("OK with an unusable".into())),
            ("OK\t1\tuser=a\x01:b", 1, Err("OK with an unusable".into())),
            (
                "OK\t4\tuser=carol\tnologin\treason=gone",
                4,
                Ok(Verdict::Invalid),
            ),
            ("FAIL\t2\tuser=bob", 2, Ok(Verdict::Invalid)),
            ("FAIL\t2", 2, Ok(Verdict::Invalid)),
            (
                "FAIL\t3\ttemp\treason=db down",
                3,
                Err("temporary failure: db down".into()),
            ),
            (
                "FAIL\t3\tcode=temp_fail",
                3,
                Err("temporary failure".into()),
            ),
            ("OK\t2\tuser=a", 1, Err("unexpected reply".into())),
            ("CONT\t1\t", 1, Err("CONT".into())),
            ("OK\t1", 1, Err("OK without user=".into())),
            ("", 1, Err("unexpected".into())),
        ] {
            let got = parse_reply(line, id);
            match (&got, &want) {
                (Err(g), Err(w)) => assert!(g.starts_with(w.as_str()), "{line:?}: {g}"),
                _ => assert_eq!(got, want, "{line:?}"),
            }
        }
        assert_eq!(unescape("a\x01tb\x01nc\x011\x010"), "a\tb\nc\x01\0");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            "/run/dovecot/auth-client".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/dovecot/auth-client".into())
        );
        assert_eq!(
            "inet:127.0.0.1:12345".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:12345".into())
        );
        assert_eq!(
            "inet:[::1]:12345".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:12345".into())
        );
        for bad in ["", "inet:", "inet:host", "inet:host:0", "inet:host:x"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
    }
}
