//! A scriptable SMTP server on loopback for the client tests, driven by smtp-proto's sans-IO
//! `Session` (the workspace's server library is written separately).
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use smtp_client::{ClientConfig, Timeouts};
use smtp_proto::ehlo::{Capability, EhloReply};
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::session::{Event, Session, SessionConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A reply from its parts; panics on bad test data.
pub fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
    let enhanced = enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d).unwrap());
    Reply::new(code, enhanced, text).unwrap()
}

/// An envelope from `from` to `rcpts` (addresses in angle brackets); panics on bad test data.
pub fn envelope(from: &str, rcpts: &[&str]) -> smtp_client::Envelope {
    use smtp_proto::address::{parse_forward_path, parse_reverse_path};
    smtp_client::Envelope::new(
        parse_reverse_path(from).unwrap().into_owned(),
        rcpts
            .iter()
            .map(|r| parse_forward_path(r).unwrap().into_owned())
            .collect(),
    )
}

/// `<alice@client.test>` to the one recipient `to` (an address in angle brackets).
pub fn envelope_to(to: &str) -> smtp_client::Envelope {
    envelope("<alice@client.test>", &[to])
}

/// A client configuration for tests: short timeouts, TLS as given.
pub fn client_config(tls: smtp_client::TlsPolicy) -> ClientConfig {
    ClientConfig::new("client.test")
        .with_tls(tls)
        .with_timeouts(Timeouts::all(Duration::from_secs(10)))
}

/// How a test server behaves.
#[derive(Clone)]
pub struct Behaviour {
    /// Greeting other than 220 (the session closes after it).
    pub greeting: Option<Reply>,
    /// Refuse EHLO with this reply (HELO is then accepted).
    pub refuse_ehlo: Option<Reply>,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bytes written right after the 220 to STARTTLS, before the handshake.
    pub inject_after_starttls: Vec<u8>,
    /// Reply to MAIL.
    pub mail_reply: Option<Reply>,
    /// Replies to RCPT by address (`local@domain`, lower case).
    pub rcpt_replies: HashMap<String, Reply>,
    /// Reply to the end of data.
    pub data_reply: Option<Reply>,
    /// Close the connection without a reply when the message data is complete.
    pub drop_at_data_end: bool,
    /// Instead of the TLS handshake after the 220 to STARTTLS: write these bytes (none, or
    /// garbage) and close. STARTTLS is offered only when `tls` is set.
    pub break_tls: Option<Vec<u8>>,
    /// Implicit TLS (port 465): the handshake with `tls` first, before the greeting; no
    /// STARTTLS.
    pub implicit_tls: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            greeting: None,
            refuse_ehlo: None,
            pipelining: true,
            size: None,
            eight_bit_mime: true,
            smtputf8: true,
            dsn: false,
            tls: None,
            inject_after_starttls: Vec::new(),
            mail_reply: None,
            rcpt_replies: HashMap::new(),
            data_reply: None,
            drop_at_data_end: false,
            break_tls: None,
            implicit_tls: false,
        }
    }
}

impl Behaviour {
    pub fn rcpt(mut self, addr: &str, reply: Reply) -> Self {
        self.rcpt_replies.insert(addr.to_ascii_lowercase(), reply);
        self
    }
}

/// One message as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub mail_params: String,
    /// Recipients the server accepted.
    pub rcpts: Vec<String>,
    /// The content, dot-stuffing removed.
    pub body: Vec<u8>,
    pub tls: bool,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Connections accepted.
    pub connections: usize,
    /// Each read's bytes (clear text, or decrypted), in order, across connections.
    pub reads: Vec<Vec<u8>>,
    /// Messages accepted.
    pub messages: Vec<Received>,
    /// Commands (verbs) in order, e.g. "EHLO", "MAIL", "RSET".
    pub helos: Vec<(String, bool)>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts a server on `bind` (port 0 for any).
    pub async fn start(bind: SocketAddr, behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                shared.lock().unwrap().connections += 1;
                let behaviour = behaviour.clone();
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    serve(tcp, behaviour, log).await;
                });
            }
        });
        TestServer { addr, log, task }
    }

    /// Starts a server on 127.0.0.1, any port.
    pub async fn local(behaviour: Behaviour) -> TestServer {
        Self::start("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    pub fn messages(&self) -> Vec<Received> {
        self.log.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    pub fn reads(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().reads.clone()
    }
}

enum Outcome {
    Closed,
    StartTls,
}

/// Transaction state collected from events.
#[derive(Default)]
struct Txn {
    from: String,
    params: String,
    rcpts: Vec<String>,
    body: Vec<u8>,
}

async fn serve(tcp: TcpStream, behaviour: Behaviour, log: Arc<Mutex<Log>>) {
    let mut config = SessionConfig::new("mx.test");
    config.starttls = behaviour.tls.is_some();
    config.smtputf8 = behaviour.smtputf8;
    config.dsn = behaviour.dsn;
    config.max_message_size = behaviour.size;
    config.chunking = false;
    if behaviour.implicit_tls {
        config.starttls = false;
        config.tls_active = true;
        let mut session = Session::new(config);
        let acceptor = tokio_rustls::TlsAcceptor::from(behaviour.tls.clone().unwrap());
        let Ok(mut tls) = acceptor.accept(tcp).await else {
            return;
        };
        drive(&mut tls, &mut session, &behaviour, &log).await;
        return;
    }
    let mut session = Session::new(config);
    let mut tcp = tcp;
    match drive(&mut tcp, &mut session, &behaviour, &log).await {
        Outcome::Closed => {}
        Outcome::StartTls if behaviour.break_tls.is_some() => {
            let garbage = behaviour.break_tls.clone().unwrap_or_default();
            let _ = tcp.write_all(&garbage).await;
            let _ = tcp.shutdown().await;
        }
        Outcome::StartTls => {
            let tls_config = behaviour.tls.clone().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            session.tls_established();
            drive(&mut tls, &mut session, &behaviour, &log).await;
        }
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    behaviour: &Behaviour,
    log: &Arc<Mutex<Log>>,
) -> Outcome {
    let mut txn = Txn::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut starttls = false;
        let mut drop_now = false;
        loop {
            let tls = session.is_tls();
            let Some(event) = session.poll_event() else {
                break;
            };
            match event {
                Event::Connect => match &behaviour.greeting {
                    Some(r) => session.respond(r.clone()),
                    None => session.accept(),
                },
                Event::Hello { extended, domain } => {
                    log.lock()
                        .unwrap()
                        .helos
                        .push((domain.to_owned(), extended));
                    if let (true, Some(r)) = (extended, &behaviour.refuse_ehlo) {
                        session.respond(r.clone());
                    } else if extended {
                        session.respond(ehlo_reply(behaviour, tls));
                    } else {
                        session.accept();
                    }
                }
                Event::Mail { from, params } => {
                    txn = Txn {
                        from: from.to_string(),
                        params: params.to_string(),
                        ..Txn::default()
                    };
                    match &behaviour.mail_reply {
                        Some(r) => session.respond(r.clone()),
                        None => session.accept(),
                    }
                }
                Event::Rcpt { to, .. } => {
                    let key = to.to_string();
                    let key = key
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_ascii_lowercase();
                    match behaviour.rcpt_replies.get(&key) {
                        Some(r) => {
                            let r = r.clone();
                            session.respond(r);
                        }
                        None => {
                            txn.rcpts.push(key);
                            session.accept();
                        }
                    }
                }
                Event::DataStart => txn.body.clear(),
                Event::Body(chunk) => txn.body.extend_from_slice(chunk),
                Event::DataEnd { .. } => {
                    if behaviour.drop_at_data_end {
                        drop_now = true;
                        break;
                    }
                    match &behaviour.data_reply {
                        Some(r) => session.respond(r.clone()),
                        None => {
                            log.lock().unwrap().messages.push(Received {
                                from: std::mem::take(&mut txn.from),
                                mail_params: std::mem::take(&mut txn.params),
                                rcpts: std::mem::take(&mut txn.rcpts),
                                body: std::mem::take(&mut txn.body),
                                tls,
                            });
                            session.accept();
                        }
                    }
                }
                Event::StartTls => starttls = true,
                // Unauthorised pipelining is refused on what was read, as Postfix 3.9 does;
                // unread input is not looked for.
                Event::SyncCheck => session.accept(),
                _ => {}
            }
        }
        if drop_now {
            return Outcome::Closed;
        }
        let mut out = session.output().to_vec();
        session.clear_output();
        if starttls {
            // In the same write as the 220, so the client has both in one read, as a man in
            // the middle would arrange it.
            out.extend_from_slice(&behaviour.inject_after_starttls);
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return Outcome::Closed;
        }
        if starttls {
            let _ = stream.flush().await;
            return Outcome::StartTls;
        }
        if session.is_closed() {
            let _ = stream.shutdown().await;
            return Outcome::Closed;
        }
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(n) => n,
        };
        log.lock().unwrap().reads.push(buf[..n].to_vec());
        session.feed(&buf[..n]);
    }
}

fn ehlo_reply(b: &Behaviour, tls: bool) -> Reply {
    let mut e = EhloReply::new("mx.test", "greets you");
    if b.pipelining {
        e = e.with(Capability::Pipelining);
    }
    if let Some(n) = b.size {
        e = e.with(Capability::Size(Some(n)));
    }
    if b.eight_bit_mime {
        e = e.with(Capability::EightBitMime);
    }
    if b.smtputf8 {
        e = e.with(Capability::SmtpUtf8);
    }
    if b.dsn {
        e = e.with(Capability::Dsn);
    }
    e = e.with(Capability::EnhancedStatusCodes);
    if b.tls.is_some() && !tls && !b.implicit_tls {
        e = e.with(Capability::StartTls);
    }
    e.to_reply()
}

/// A test CA and a server certificate it signed for `names`.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki(names: &[&str]) -> TestPki {
    test_pki_with(names, false)
}

/// [`test_pki`]; with `require_client_cert`, a server that demands a client certificate
/// signed by the test CA (which this client never sends: the handshake fails).
pub fn test_pki_with(names: &[&str], require_client_cert: bool) -> TestPki {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "smtp-client test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).unwrap();
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params
        .extended_key_usages
        .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let builder = rustls::ServerConfig::builder();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let server = builder
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
        .unwrap();
    TestPki {
        ca: ca_cert.der().clone(),
        server: Arc::new(server),
    }
}
