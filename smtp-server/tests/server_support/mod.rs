//! Shared by the `server_*` tests: a recording handler, a running server, a raw client and a
//! test PKI made with rcgen.
#![allow(clippy::unwrap_used, dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::address::{ForwardPath, ReversePath};
use smtp_proto::param::{MailParams, RcptParams};
use smtp_proto::Refusal;
use smtp_server::{
    AuthFailure, BodyStream, BoundServer, ConnectionInfo, Credentials, DataOutcome, Envelope,
    Handler, Listener, Server, ServerBuilder, SessionHandler, TlsInfo,
};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream,
};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A message the handler received.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Log {
    events: Vec<String>,
    messages: Vec<Received>,
}

/// Records what happens. Policy: connections on a listener named `refuse` get `554 5.7.1`,
/// on one named `slow` they are accepted after 300 ms (as a server that looks things up);
/// MAIL from `blocked@...` gets `550 5.7.1`; RCPT to `bad...` gets `550 5.1.1`; a message for
/// `early@...` is refused with `554 5.6.0` before its content is read.
#[derive(Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().events.clone()
    }
    pub fn messages(&self) -> Vec<Received> {
        self.log.lock().unwrap().messages.clone()
    }
    fn push(&self, e: String) {
        self.log.lock().unwrap().events.push(e);
    }
}

pub struct RecorderSession {
    rec: Recorder,
    listener: Arc<str>,
}

fn reply(code: u16, enh: &str, text: &str) -> Refusal {
    Refusal::new(code, enh.parse().ok(), text).unwrap()
}

impl Handler for Recorder {
    type Session = RecorderSession;

    async fn connect(&self, info: &ConnectionInfo) -> Result<RecorderSession, Refusal> {
        self.push(format!(
            "connect {} tls={}",
            info.listener,
            info.tls.as_ref().map_or("no", |t| t.protocol.as_str())
        ));
        if &*info.listener == "refuse" {
            return Err(reply(554, "5.7.1", "No SMTP service here"));
        }
        if &*info.listener == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(RecorderSession {
            rec: self.clone(),
            listener: Arc::clone(&info.listener),
        })
    }
}

impl SessionHandler for RecorderSession {
    async fn hello(&mut self, domain: &str, extended: bool) -> Result<(), Refusal> {
        self.rec.push(format!("hello {domain} {extended}"));
        Ok(())
    }

    /// No AUTH on a listener named `noauth`.
    fn auth_offered(&self) -> bool {
        &*self.listener != "noauth"
    }

    /// One user, `alice@example.org` with password `s3cret`, logged in as `alice`; the user
    /// `down@example.org` finds the user database unreachable.
    async fn authenticate(&mut self, c: &Credentials) -> Result<String, AuthFailure> {
        self.rec
            .push(format!("auth {} {}", c.mechanism(), c.authcid()));
        match (c.authcid(), c.secret().expose()) {
            ("alice@example.org", b"s3cret") => Ok("alice".into()),
            ("down@example.org", _) => Err(AuthFailure::Temporary),
            _ => Err(AuthFailure::Invalid),
        }
    }

    fn tls_started(&mut self, info: &TlsInfo) {
        self.rec.push(format!("tls {}", info.protocol));
    }

    async fn mail(&mut self, from: &ReversePath, _params: &MailParams) -> Result<(), Refusal> {
        self.rec.push(format!("mail {from}"));
        if from.to_string().starts_with("<blocked@") {
            return Err(reply(550, "5.7.1", "Sender blocked"));
        }
        Ok(())
    }

    async fn rcpt(&mut self, to: &ForwardPath, _params: &RcptParams) -> Result<(), Refusal> {
        self.rec.push(format!("rcpt {to}"));
        if to.to_string().starts_with("<bad") {
            return Err(reply(550, "5.1.1", "No such user"));
        }
        Ok(())
    }

    async fn data(&mut self, envelope: &Envelope, body: &mut BodyStream<'_>) -> DataOutcome {
        if envelope
            .rcpts
            .iter()
            .any(|(to, _)| to.to_string().starts_with("<early@"))
        {
            self.rec.push("refused early".into());
            return DataOutcome::rejected("Refused without reading");
        }
        // Read as an AsyncRead (`BodyStream::reader`), as a user would with tokio::io::copy;
        // the daemon's tests cover `chunk`.
        let mut content = Vec::new();
        if let Err(e) = tokio::io::copy(&mut body.reader(), &mut content).await {
            // The BodyError inside the io::Error says what happened.
            let inner = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<smtp_server::BodyError>())
                .map_or_else(|| format!("not a BodyError: {e}"), ToString::to_string);
            self.rec.push(format!("lost {inner}"));
            return DataOutcome::accepted("ignored");
        }
        self.rec.push(format!("message {} octets", content.len()));
        self.rec.log.lock().unwrap().messages.push(Received {
            envelope: envelope.clone(),
            body: content,
        });
        DataOutcome::accepted("Stored")
    }

    fn reset(&mut self) {
        self.rec.push("reset".into());
    }
}

/// A server running in the background.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub rec: Recorder,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Fires the shutdown future.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for `serve` to return.
    pub async fn finished(self) -> io::Result<()> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve returned")
            .unwrap()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Builds a server around a fresh [`Recorder`], binds and serves it.
pub async fn start(
    configure: impl FnOnce(ServerBuilder<Recorder>) -> ServerBuilder<Recorder>,
) -> Running {
    let rec = Recorder::default();
    let builder = configure(Server::builder(rec.clone()).hostname("mx.test"));
    let bound: BoundServer<Recorder> = builder.bind().await.unwrap();
    let addrs = bound.local_addrs();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(bound.serve(async {
        let _ = rx.await;
    }));
    Running {
        addrs,
        rec,
        stop: Some(tx),
        task,
    }
}

/// Plain server on 127.0.0.1 with default limits.
pub async fn start_plain() -> Running {
    start(|b| b.listen("127.0.0.1:0".parse().unwrap())).await
}

/// A server without listeners whose connections are in-memory pipes
/// (`Server::serve_stream` over `tokio::io::duplex`): no sockets, so tests can run on
/// tokio's paused clock.
pub struct InMemory {
    pub server: Server<Recorder>,
    pub rec: Recorder,
}

/// What the handler sees as the listener and the client's address of an in-memory
/// connection.
pub const MEMORY_LISTENER: &str = "memory";
pub const MEMORY_PEER: &str = "192.0.2.7:40000";

impl InMemory {
    /// Builds (does not bind) a server around a fresh [`Recorder`].
    pub fn new(configure: impl FnOnce(ServerBuilder<Recorder>) -> ServerBuilder<Recorder>) -> Self {
        let rec = Recorder::default();
        let server = configure(Server::builder(rec.clone()).hostname("mx.test"))
            .build()
            .unwrap();
        Self { server, rec }
    }

    /// A new connection served in the background; returns the client's end of the pipe.
    pub fn pipe(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let listener = Listener::named(MEMORY_LISTENER, "127.0.0.1:25".parse().unwrap());
        tokio::spawn(
            self.server
                .serve_stream(server, &listener, MEMORY_PEER.parse().unwrap()),
        );
        client
    }

    /// A raw client on a new connection.
    pub fn connect(&self) -> Client<DuplexStream> {
        Client::new(self.pipe())
    }
}

/// A raw SMTP client over any stream.
pub struct Client<S> {
    s: BufReader<S>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client::new(s)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Self {
            s: BufReader::new(s),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.s.get_mut().write_all(bytes).await.unwrap();
        self.s.get_mut().flush().await.unwrap();
    }

    /// One reply, its lines joined with `\n`; panics on EOF or after [`WAIT`].
    pub async fn reply(&mut self) -> String {
        self.try_reply(WAIT).await.expect("a reply")
    }

    /// One reply within `wait`, or `None` on EOF or timeout.
    pub async fn try_reply(&mut self, wait: Duration) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(wait, self.s.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) == Some(&b' ') || line.len() == 3;
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    /// Sends `cmd` and returns the reply.
    pub async fn cmd(&mut self, cmd: &str) -> String {
        self.send(&format!("{cmd}\r\n")).await;
        self.reply().await
    }

    /// Asserts the server closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(WAIT, self.s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "connection still open");
        assert!(
            rest.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// The stream, for a TLS upgrade; panics if bytes were buffered (they would be lost).
    pub fn into_inner(self) -> S {
        assert!(self.s.buffer().is_empty(), "bytes after the reply");
        self.s.into_inner()
    }
}

/// A CA and a leaf certificate for `localhost` signed by it.
pub struct Pki {
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf_der: rustls::pki_types::CertificateDer<'static>,
}

pub fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} server"));
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_der: ca_cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        leaf_der: cert.der().clone(),
    }
}

/// A rustls client that trusts `ca` only.
pub fn tls_connector(
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

/// Whether this host has an IPv6 loopback.
pub fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}
