//! An in-process DNS server on loopback, for tests (cargo feature `test-dns`, off by default).
//!
//! [`TestDns`] answers authoritatively from a set of records given through [`TestDnsBuilder`],
//! over UDP and TCP on the same `127.0.0.1` port. Names with no records are `NXDOMAIN`; names
//! that exist (or have descendants) but hold no record of the queried type get an empty
//! `NOERROR` answer; a name can be made to fail with `SERVFAIL`, `REFUSED` or no answer at all.
//! A `CNAME` is followed inside the record set, as an authoritative server would, and the chain
//! is put in the answer.
//!
//! Every record is served with TTL 0, and negative answers carry an SOA whose minimum is 0, so a
//! resolver caches nothing between queries.
//!
//! Another crate's tests use it with
//! `smtp-client = { path = "../smtp-client", features = ["test-dns"] }` under
//! `[dev-dependencies]`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use smtp_client::resolve::Resolver;
//! use smtp_client::testdns::TestDns;
//!
//! let dns = TestDns::builder()
//!     .mx("example.test", 10, "mx.example.test")
//!     .a("mx.example.test", [127, 0, 0, 1].into())
//!     .start()
//!     .await?;
//! let resolver = Resolver::with_nameserver(dns.addr())?;
//! let hosts = resolver.resolve("example.test").await.expect("the zone has an MX");
//! assert_eq!(hosts[0].name, "mx.example.test");
//! # Ok(())
//! # }
//! ```
//!
//! The server stops when the [`TestDns`] is dropped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::iter;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

pub use hickory_server::proto::rr::RecordType;

/// How many times [`TestDnsBuilder::start`] looks for a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 50;

/// The longest CNAME chain the server follows before giving up (a loop in the test data).
const MAX_CNAME_CHAIN: usize = 8;

/// A failure the server produces for a name instead of answering from its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with response code `SERVFAIL` (2).
    ServFail,
    /// Answer with response code `REFUSED` (5).
    Refused,
    /// Send nothing: the client sees a timeout.
    NoAnswer,
}

/// Collects the records and faults a [`TestDns`] serves. Made by [`TestDns::builder`].
///
/// Names are given as text, with or without the final dot, in any case.
///
/// # Panics
///
/// The record methods panic on a name that is not a valid domain name: the test data is wrong.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct TestDnsBuilder {
    records: Vec<Record>,
    faults: HashMap<(LowerName, Option<RecordType>), Fault>,
}

impl TestDnsBuilder {
    /// Adds an MX record: `domain` accepts mail at `exchange` with this preference.
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        let rdata = RData::MX(MX::new(preference, name(exchange)));
        self.records
            .push(Record::from_rdata(name(domain), 0, rdata));
        self
    }

    /// Adds the null MX of RFC 7505 (`0 .`): `domain` accepts no mail.
    pub fn null_mx(self, domain: &str) -> Self {
        self.mx(domain, 0, ".")
    }

    /// Adds an A record.
    pub fn a(mut self, host: &str, addr: Ipv4Addr) -> Self {
        let record = Record::from_rdata(name(host), 0, RData::A(A(addr)));
        self.records.push(record);
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, host: &str, addr: Ipv6Addr) -> Self {
        let record = Record::from_rdata(name(host), 0, RData::AAAA(AAAA(addr)));
        self.records.push(record);
        self
    }

    /// Adds a CNAME record: `alias` is another name for `target`.
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        let record = Record::from_rdata(name(alias), 0, RData::CNAME(CNAME(name(target))));
        self.records.push(record);
        self
    }

    /// Adds a TXT record holding `text` (a DKIM key, SPF or DMARC record). Text longer than a
    /// DNS character-string (255 octets) is split into several, as a zone file would hold a
    /// 2048-bit DKIM key; readers join them again (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    pub fn txt(mut self, domain: &str, text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(255);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            parts.push(rest[..cut].to_owned());
            rest = &rest[cut..];
        }
        let record = Record::from_rdata(name(domain), 0, RData::TXT(TXT::new(parts)));
        self.records.push(record);
        self
    }

    /// Adds any record, for types the other methods do not cover.
    pub fn record(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    /// Makes every query for `name` (exactly this name, any type) fail with `fault`.
    pub fn fault(self, name: &str, fault: Fault) -> Self {
        self.fault_inner(name, None, fault)
    }

    /// Makes queries for `name` of type `record_type` fail with `fault`; other types are
    /// answered normally. Overrides [`fault`](Self::fault) for that type.
    pub fn fault_for_type(self, name: &str, record_type: RecordType, fault: Fault) -> Self {
        self.fault_inner(name, Some(record_type), fault)
    }

    /// Shorthand for `fault(name, Fault::ServFail)`.
    pub fn servfail(self, name: &str) -> Self {
        self.fault(name, Fault::ServFail)
    }

    /// Shorthand for `fault(name, Fault::Refused)`.
    pub fn refused(self, name: &str) -> Self {
        self.fault(name, Fault::Refused)
    }

    /// Shorthand for `fault(name, Fault::NoAnswer)`.
    pub fn no_answer(self, name: &str) -> Self {
        self.fault(name, Fault::NoAnswer)
    }

    fn fault_inner(mut self, host: &str, record_type: Option<RecordType>, fault: Fault) -> Self {
        self.faults
            .insert((LowerName::new(&name(host)), record_type), fault);
        self
    }

    /// Binds UDP and TCP on the same port of `127.0.0.1` and starts serving in a task on the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// An I/O error when no port could be bound for both protocols.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub async fn start(self) -> io::Result<TestDns> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;

        let mut by_name: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let mut existing = HashSet::new();
        for record in self.records {
            let owner = LowerName::new(&record.name);
            // Every ancestor of an owner name exists too (an "empty non-terminal"): querying
            // it gives NOERROR with no data, not NXDOMAIN.
            let mut ancestor = owner.clone();
            while !ancestor.is_root() && existing.insert(ancestor.clone()) {
                ancestor = ancestor.base_name();
            }
            by_name.entry(owner).or_default().push(record);
        }

        let zone = Arc::new(Zone {
            records: by_name,
            existing,
            faults: self.faults,
            log: Mutex::new(Vec::new()),
        });
        let mut server = Server::new(Handler(Arc::clone(&zone)));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        Ok(TestDns { addr, zone, server })
    }
}

fn name(text: &str) -> Name {
    let mut name = Name::from_ascii(text)
        .unwrap_or_else(|e| panic!("test DNS data: {text:?} is not a domain name: {e}"));
    name.set_fqdn(true);
    name
}

/// Binds a UDP socket on an ephemeral port of 127.0.0.1, then TCP on the same port; another
/// process may hold that TCP port, so it retries with a new UDP port.
async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

/// A DNS server on loopback serving fixed test data. Stops when dropped.
///
/// Made with [`TestDns::builder`]; see the [module documentation](self).
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Zone>,
    // Owns the server's tasks: dropping it aborts them and closes the sockets.
    server: Server<Handler>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns").field("addr", &self.addr).finish()
    }
}

impl TestDns {
    /// Starts describing the records to serve.
    pub fn builder() -> TestDnsBuilder {
        TestDnsBuilder::default()
    }

    /// The address the server answers on, for UDP and TCP alike.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The queries received so far, oldest first, as (name without the final dot, in lower
    /// case; type). Faulted queries are included.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.zone
            .log
            .lock()
            .map(|log| log.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Dropping `server` aborts its tasks anyway; cancelling first lets a task that is
        // running right now stop at its next await.
        self.server.shutdown_token().cancel();
    }
}

/// The data behind a [`TestDns`], shared with its request handler.
#[derive(Debug)]
struct Zone {
    records: HashMap<LowerName, Vec<Record>>,
    /// Owner names and all their ancestors.
    existing: HashSet<LowerName>,
    faults: HashMap<(LowerName, Option<RecordType>), Fault>,
    log: Mutex<Vec<(String, RecordType)>>,
}

/// What the server does with one query.
enum Outcome {
    Fault(Fault),
    Answer {
        code: ResponseCode,
        /// The records, and the CNAMEs that led to them.
        answers: Vec<Record>,
        /// The name at the end of the CNAME chain has no record of the queried type.
        negative: bool,
    },
}

impl Zone {
    fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Outcome {
        let fault = self
            .faults
            .get(&(qname.clone(), Some(qtype)))
            .or_else(|| self.faults.get(&(qname.clone(), None)));
        if let Some(&fault) = fault {
            return Outcome::Fault(fault);
        }

        let mut answers = Vec::new();
        let mut current = qname.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let here = self.records.get(&current).map(Vec::as_slice).unwrap_or(&[]);
            let matching: Vec<&Record> = here
                .iter()
                .filter(|r| r.record_type() == qtype || qtype == RecordType::ANY)
                .collect();
            if !matching.is_empty() {
                answers.extend(matching.into_iter().cloned());
                return Outcome::Answer {
                    code: ResponseCode::NoError,
                    answers,
                    negative: false,
                };
            }
            let cname = here.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(target)) => Some((r, LowerName::new(target))),
                _ => None,
            });
            match cname {
                Some((record, target)) => {
                    answers.push(record.clone());
                    current = target;
                }
                None => break,
            }
        }
        let code = if self.existing.contains(&current) {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        Outcome::Answer {
            code,
            answers,
            negative: true,
        }
    }
}

struct Handler(Arc<Zone>);

/// The SOA put in the authority section of negative answers: owned by the root so that it is an
/// ancestor of every name, with a minimum (negative TTL) of 0 so nothing is cached.
fn negative_soa() -> Record {
    let soa = SOA::new(
        name("ns.test"),
        name("hostmaster.test"),
        1,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(Name::root(), 0, RData::SOA(soa))
}

fn response_info(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let builder = MessageResponseBuilder::from_message_request(request);

        let Some(query) = request.queries.queries().first() else {
            metadata.response_code = ResponseCode::FormErr;
            let response = builder.build_no_records(metadata);
            return response_handle
                .send_response(response)
                .await
                .unwrap_or_else(|_| response_info(metadata));
        };
        let qname = query.name();
        let qtype = query.query_type();
        if let Ok(mut log) = self.0.log.lock() {
            let text = Name::from(qname).to_ascii();
            let text = text.strip_suffix('.').unwrap_or(&text).to_owned();
            log.push((text, qtype));
        }

        let (code, answers, negative) = match self.0.lookup(qname, qtype) {
            Outcome::Fault(Fault::NoAnswer) => {
                metadata.response_code = ResponseCode::ServFail;
                return response_info(metadata);
            }
            Outcome::Fault(Fault::ServFail) => (ResponseCode::ServFail, Vec::new(), false),
            Outcome::Fault(Fault::Refused) => (ResponseCode::Refused, Vec::new(), false),
            Outcome::Answer {
                code,
                answers,
                negative,
            } => (code, answers, negative),
        };
        metadata.response_code = code;
        let soa = negative.then(negative_soa);
        let response = builder.build(
            metadata,
            answers.iter(),
            iter::empty(),
            soa.iter(),
            iter::empty(),
        );
        response_handle
            .send_response(response)
            .await
            .unwrap_or_else(|_| response_info(metadata))
    }
}
