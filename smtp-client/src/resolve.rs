//! Finding the hosts that receive mail for a domain: MX lookup (RFC 5321 §5.1, RFC 7505).
//!
//! [`Resolver::resolve`] turns a domain into the list of mail hosts to try, in order, each
//! with its addresses:
//!
//! - MX records sorted by preference, lowest first; hosts of equal preference shuffled anew on
//!   every call, so load spreads across them.
//! - No MX record (the name exists but has no MX): the domain itself is the only host
//!   ("implicit MX"), preference 0.
//! - A null MX (`MX 0 .`, RFC 7505): the domain accepts no mail, [`ResolveError::NullMx`].
//! - `NXDOMAIN`: [`ResolveError::NoSuchDomain`].
//! - `SERVFAIL`, `REFUSED`, a timeout or any other failure to get an answer:
//!   [`ResolveError::Temporary`]; try again later.
//! - Each host is looked up for A and AAAA records (or only one of them, see [`AddressOrder`])
//!   and its addresses ordered by the [`AddressOrder`] (default [`AddressOrder::Any`]: the
//!   families alternate, which one first is chosen at random; see [`AddressPreference`]). A
//!   host without addresses is left out.
//!   When no host has an address the result is an error: temporary if any lookup failed
//!   temporarily, otherwise (every host `NXDOMAIN` or without A/AAAA records) the permanent
//!   [`ResolveError::NoAddresses`].
//!
//! [`ResolveError::is_permanent`] tells a queue whether to bounce or retry.
//!
//! Names are looked up as fully qualified names (a final dot is added), so the `search` and
//! `domain` lines of `/etc/resolv.conf` never add suffixes. A name given with a final dot or in
//! upper case is the same name; an internationalized name is looked up in its ASCII (punycode)
//! form. `/etc/hosts` is never consulted.
//!
//! # Address literals
//!
//! A domain written as an address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`, names its
//! host directly: [`Resolver::resolve`] returns that one address without any DNS query, as one
//! host named by the literal. [`resolve_literal`] does the same parsing for callers that want
//! to handle literals themselves.
//!
//! # Choosing the name server
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use smtp_client::resolve::{AddressOrder, Resolver};
//!
//! // The system's name servers, from /etc/resolv.conf.
//! let system = Resolver::system()?;
//!
//! // One given name server (UDP, and TCP for long answers), for example a local cache or a
//! // test server; IPv4 addresses only, for a network without an IPv6 route.
//! let resolver = Resolver::with_nameserver("127.0.0.1:5353".parse()?)?
//!     .with_address_order(AddressOrder::Ipv4Only);
//! for host in resolver.resolve("example.com").await? {
//!     println!("{} (preference {}): {:?}", host.name, host.preference, host.addrs);
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use tokio::task::JoinSet;
use tracing::debug;

/// The time [`Resolver::with_nameserver`] waits for one answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times [`Resolver::with_nameserver`] sends a query before giving up.
pub const DEFAULT_ATTEMPTS: usize = 2;

/// Which address families to use for a host, and which first.
///
/// Within one family, addresses keep the order the name server gave. The default is
/// [`Any`](Self::Any), as Postfix's `smtp_address_preference = any`: see
/// [`AddressPreference`] for why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressOrder {
    /// Both families, alternating (one of each in turn), the family tried first chosen at
    /// random for every lookup. An outage of one family costs one attempt per host, and the
    /// load spreads over both. The default.
    #[default]
    Any,
    /// IPv6 addresses, then IPv4 addresses (RFC 6724's preference).
    Ipv6First,
    /// IPv4 addresses, then IPv6 addresses.
    Ipv4First,
    /// IPv4 addresses only; no AAAA query is made. For networks without an IPv6 route.
    Ipv4Only,
    /// IPv6 addresses only; no A query is made.
    Ipv6Only,
}

/// Which address family outbound connections try first, when a host has both (Postfix's
/// `smtp_address_preference`): the everyday knob over [`AddressOrder`], which it sets
/// ([`Resolver::with_address_preference`], [`Deliverer::with_address_preference`]).
///
/// The default is [`Any`](Self::Any), as Postfix's since 3.0: the address families alternate,
/// so when one is broken on the way to a host (an IPv6 route that blackholes, a peer that
/// refuses mail from IPv6 senders without reverse DNS) the other is tried next, and mail still
/// gets through. [`Ipv6`](Self::Ipv6) always pays for such an outage first; [`Ipv4`](Self::Ipv4)
/// is the choice for a sender whose IPv6 address is not (yet) trusted by receivers. A network
/// without an IPv6 route at all is better served by [`AddressOrder::Ipv4Only`], which skips
/// the AAAA queries.
///
/// Parsed from and shown as `ipv6`, `ipv4`, `any` (case-insensitive), Postfix's names.
///
/// [`Deliverer::with_address_preference`]: crate::Deliverer::with_address_preference
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddressPreference {
    /// IPv6 addresses first, then IPv4 ([`AddressOrder::Ipv6First`]).
    Ipv6,
    /// IPv4 addresses first, then IPv6 ([`AddressOrder::Ipv4First`]).
    Ipv4,
    /// Alternating, the first family at random ([`AddressOrder::Any`]). The default.
    #[default]
    Any,
}

impl From<AddressPreference> for AddressOrder {
    fn from(preference: AddressPreference) -> Self {
        match preference {
            AddressPreference::Ipv6 => Self::Ipv6First,
            AddressPreference::Ipv4 => Self::Ipv4First,
            AddressPreference::Any => Self::Any,
        }
    }
}

impl fmt::Display for AddressPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv6 => "ipv6",
            Self::Ipv4 => "ipv4",
            Self::Any => "any",
        })
    }
}

/// The text is not `ipv4`, `ipv6` or `any`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown address preference {0:?}: expected ipv4, ipv6 or any")]
pub struct ParseAddressPreferenceError(pub String);

impl std::str::FromStr for AddressPreference {
    type Err = ParseAddressPreferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ipv6" => Ok(Self::Ipv6),
            "ipv4" => Ok(Self::Ipv4),
            "any" => Ok(Self::Any),
            _ => Err(ParseAddressPreferenceError(s.to_owned())),
        }
    }
}

impl AddressOrder {
    fn wants_v4(self) -> bool {
        self != Self::Ipv6Only
    }

    fn wants_v6(self) -> bool {
        self != Self::Ipv4Only
    }
}

/// One host that receives mail for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The host name in lower case ASCII without the final dot (`mx1.example.com`); for an
    /// implicit MX the domain itself, for an address literal the literal as given.
    pub name: String,
    /// The MX preference: lower is tried first. 0 for an implicit MX or an address literal.
    pub preference: u16,
    /// The host's addresses, in the order to try them (see [`AddressOrder`]). Never empty in
    /// a result of [`Resolver::resolve`].
    pub addrs: Vec<IpAddr>,
}

/// Why a domain's mail hosts could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The domain does not exist (`NXDOMAIN`). Permanent.
    #[error("domain {domain} does not exist (NXDOMAIN)")]
    NoSuchDomain {
        /// The domain, as looked up (lower case, no final dot).
        domain: String,
    },
    /// The domain publishes a null MX (RFC 7505): it accepts no mail. Permanent.
    #[error("domain {domain} accepts no mail (null MX, RFC 7505)")]
    NullMx {
        /// The domain, as looked up (lower case, no final dot).
        domain: String,
    },
    /// None of the domain's mail hosts has an address: every one is `NXDOMAIN` or has no A/AAAA
    /// records (of the families the [`AddressOrder`] allows), and no lookup failed temporarily.
    /// Permanent.
    #[error("no mail host of {domain} has an address")]
    NoAddresses {
        /// The domain, as looked up (lower case, no final dot).
        domain: String,
    },
    /// The text is not a domain name or address literal that can be looked up. Permanent.
    #[error("cannot look up {domain:?}: {reason}")]
    InvalidDomain {
        /// The text as given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer could not be had now: `SERVFAIL`, `REFUSED`, a timeout, a network error.
    /// The text says which lookup failed and how. Try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

impl ResolveError {
    /// Whether trying again later cannot help: the message should bounce.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Temporary(_))
    }
}

/// Looks up mail hosts. Cheap to clone; clones share the name server connections and cache.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    order: AddressOrder,
    /// Where the name servers came from, for [`Resolver::hickory_with_options`].
    source: Source,
}

/// How a [`Resolver`] was configured.
#[derive(Clone, Copy, Debug)]
enum Source {
    System,
    Nameserver {
        addr: SocketAddr,
        timeout: Duration,
        attempts: usize,
    },
    /// A hickory resolver given by the caller: its configuration is not known.
    Given,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Uses the system's name servers and options (`/etc/resolv.conf` on Unix).
    ///
    /// # Errors
    ///
    /// The system configuration cannot be read or parsed.
    pub fn system() -> io::Result<Self> {
        let inner = Self::build(Source::System, |_| {})?;
        Ok(Self {
            source: Source::System,
            ..Self::from_hickory(inner)
        })
    }

    /// A hickory resolver for `source`, its options changed by `change`.
    fn build(source: Source, change: impl FnOnce(&mut ResolverOpts)) -> io::Result<TokioResolver> {
        let mut builder =
            match source {
                Source::System => TokioResolver::builder_tokio().map_err(io::Error::other)?,
                Source::Nameserver {
                    addr,
                    timeout,
                    attempts,
                } => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                    let config = ResolverConfig::from_name_servers(vec![server]);
                    let mut options = ResolverOpts::default();
                    options.timeout = timeout;
                    options.attempts = attempts.max(1);
                    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                        .with_options(options)
                }
                Source::Given => return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the resolver was given as a hickory resolver: its configuration is not known",
                )),
            };
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        change(builder.options_mut());
        builder.build().map_err(io::Error::other)
    }

    /// Another hickory resolver with the same name servers and options, but for what
    /// `change` changes, and a cache of its own: for lookups that need other options (the
    /// daemon's SPF checks want `exists:` to ask for A records only, RFC 7208 §5.7, so it sets
    /// `ip_strategy` to `Ipv4Only`).
    ///
    /// # Errors
    ///
    /// The resolver was made by [`from_hickory`](Self::from_hickory) (its configuration is
    /// not known), or cannot be set up again (the system configuration changed).
    pub fn hickory_with_options(
        &self,
        change: impl FnOnce(&mut ResolverOpts),
    ) -> io::Result<TokioResolver> {
        Self::build(self.source, change)
    }

    /// Uses the one name server at `addr` (over UDP, and TCP when an answer is too long), with
    /// [`DEFAULT_TIMEOUT`] and [`DEFAULT_ATTEMPTS`].
    ///
    /// # Errors
    ///
    /// The resolver cannot be set up (not expected for a plain UDP/TCP server).
    pub fn with_nameserver(addr: SocketAddr) -> io::Result<Self> {
        Self::with_nameserver_timeout(addr, DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS)
    }

    /// Like [`with_nameserver`](Self::with_nameserver), waiting `timeout` for each answer and
    /// sending each query up to `attempts` times (at least once).
    ///
    /// # Errors
    ///
    /// The resolver cannot be set up (not expected for a plain UDP/TCP server).
    pub fn with_nameserver_timeout(
        addr: SocketAddr,
        timeout: Duration,
        attempts: usize,
    ) -> io::Result<Self> {
        let source = Source::Nameserver {
            addr,
            timeout,
            attempts,
        };
        let inner = Self::build(source, |_| {})?;
        Ok(Self {
            source,
            ..Self::from_hickory(inner)
        })
    }

    /// Wraps a hickory resolver configured by the caller (DNS over TLS, several servers, ...).
    pub fn from_hickory(resolver: TokioResolver) -> Self {
        Self {
            inner: resolver,
            order: AddressOrder::default(),
            source: Source::Given,
        }
    }

    /// The hickory resolver inside, for other lookups with the same name servers, options and
    /// cache (the daemon's SPF, DKIM and DMARC checks).
    pub fn hickory(&self) -> &TokioResolver {
        &self.inner
    }

    /// Sets which address families to use and in which order.
    #[must_use]
    pub fn with_address_order(mut self, order: AddressOrder) -> Self {
        self.order = order;
        self
    }

    /// Sets which address family is tried first for hosts that have both; the same as
    /// [`with_address_order`](Self::with_address_order) with the matching order (so it
    /// replaces an `Ipv4Only`/`Ipv6Only` order too).
    #[must_use]
    pub fn with_address_preference(self, preference: AddressPreference) -> Self {
        self.with_address_order(preference.into())
    }

    /// The address order in use.
    pub fn address_order(&self) -> AddressOrder {
        self.order
    }

    /// Finds the mail hosts for `domain`, in the order to try them, each with its addresses.
    /// See the [module documentation](self) for the rules.
    ///
    /// # Errors
    ///
    /// A [`ResolveError`]; [`ResolveError::is_permanent`] says whether to retry later.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<MxHost>, ResolveError> {
        if let Some(literal) = resolve_literal(domain) {
            return literal.map(|ip| {
                vec![MxHost {
                    name: domain.to_owned(),
                    preference: 0,
                    addrs: vec![ip],
                }]
            });
        }
        let name = to_fqdn(domain)?;
        let shown = display(&name);

        let exchanges = match self.inner.mx_lookup(name.clone()).await {
            Ok(lookup) => mx_records(&lookup),
            Err(e) if e.is_nx_domain() => return Err(ResolveError::NoSuchDomain { domain: shown }),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(temporary(&shown, "MX", &e)),
        };

        if exchanges.is_empty() {
            // RFC 5321 §5.1: no MX, so the domain itself is the host.
            return match self.host_addrs(name).await {
                HostAddrs::Found(addrs) => Ok(vec![MxHost {
                    name: shown,
                    preference: 0,
                    addrs,
                }]),
                HostAddrs::NoSuchHost => Err(ResolveError::NoSuchDomain { domain: shown }),
                HostAddrs::NoData => Err(ResolveError::NoAddresses { domain: shown }),
                HostAddrs::Temporary(why) => Err(ResolveError::Temporary(why)),
            };
        }
        if exchanges.iter().all(|(_, exchange)| exchange.is_root()) {
            return Err(ResolveError::NullMx { domain: shown });
        }

        let ordered = order_exchanges(exchanges, &shown);
        let mut lookups = JoinSet::new();
        for (index, (_, exchange)) in ordered.iter().enumerate() {
            let this = self.clone();
            let exchange = exchange.clone();
            lookups.spawn(async move { (index, this.host_addrs(exchange).await) });
        }
        let mut found: Vec<Option<HostAddrs>> = ordered.iter().map(|_| None).collect();
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((index, addrs)) => found[index] = Some(addrs),
                Err(e) => {
                    return Err(ResolveError::Temporary(format!(
                        "address lookup for a mail host of {shown} did not finish: {e}"
                    )))
                }
            }
        }

        let mut hosts = Vec::with_capacity(ordered.len());
        let mut transient = Vec::new();
        for ((preference, exchange), addrs) in ordered.into_iter().zip(found) {
            let host = display(&exchange);
            match addrs {
                Some(HostAddrs::Found(addrs)) => hosts.push(MxHost {
                    name: host,
                    preference,
                    addrs,
                }),
                Some(HostAddrs::Temporary(why)) => {
                    debug!(domain = %shown, %host, %why, "skipping MX host: lookup failed");
                    transient.push(why);
                }
                Some(HostAddrs::NoSuchHost | HostAddrs::NoData) | None => {
                    debug!(domain = %shown, %host, "skipping MX host: no addresses");
                }
            }
        }
        if !hosts.is_empty() {
            Ok(hosts)
        } else if !transient.is_empty() {
            Err(ResolveError::Temporary(format!(
                "no mail host of {shown} has an address yet: {}",
                transient.join("; ")
            )))
        } else {
            Err(ResolveError::NoAddresses { domain: shown })
        }
    }

    /// Finds the addresses of one host (for example a smarthost), ordered by the
    /// [`AddressOrder`], without MX lookup. An IP address (`192.0.2.1`, `2001:db8::1`) or an
    /// address literal (`[192.0.2.1]`) is returned as it is.
    ///
    /// # Errors
    ///
    /// [`ResolveError::NoSuchDomain`] for `NXDOMAIN`, [`ResolveError::NoAddresses`] when the
    /// name has no address records, [`ResolveError::Temporary`] when a lookup failed and no
    /// address was found, [`ResolveError::InvalidDomain`] for text that is no host name.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(literal) = resolve_literal(host) {
            return literal.map(|ip| vec![ip]);
        }
        let name = to_fqdn(host)?;
        match self.host_addrs(name.clone()).await {
            HostAddrs::Found(addrs) => Ok(addrs),
            HostAddrs::NoSuchHost => Err(ResolveError::NoSuchDomain {
                domain: display(&name),
            }),
            HostAddrs::NoData => Err(ResolveError::NoAddresses {
                domain: display(&name),
            }),
            HostAddrs::Temporary(why) => Err(ResolveError::Temporary(why)),
        }
    }

    /// Looks up the A and/or AAAA records of `name` as the address order asks, both at once.
    async fn host_addrs(&self, name: Name) -> HostAddrs {
        let v4 = async {
            if self.order.wants_v4() {
                Some(self.inner.ipv4_lookup(name.clone()).await)
            } else {
                None
            }
        };
        let v6 = async {
            if self.order.wants_v6() {
                Some(self.inner.ipv6_lookup(name.clone()).await)
            } else {
                None
            }
        };
        let (v4, v6) = tokio::join!(v4, v6);
        let shown = display(&name);
        let v4 = v4.map(|result| Family::from_lookup(result, &shown, "A"));
        let v6 = v6.map(|result| Family::from_lookup(result, &shown, "AAAA"));
        let (first, second) = match self.order {
            AddressOrder::Ipv6First | AddressOrder::Ipv6Only => (v6, v4),
            AddressOrder::Ipv4First | AddressOrder::Ipv4Only => (v4, v6),
            AddressOrder::Any if rand::random::<bool>() => (v6, v4),
            AddressOrder::Any => (v4, v6),
        };
        let mut found = combine(first.into_iter().chain(second));
        if let (AddressOrder::Any, HostAddrs::Found(addrs)) = (self.order, &mut found) {
            alternate_families(addrs);
        }
        found
    }
}

/// Reorders `addrs` so the families alternate, starting with the first address's family; each
/// family keeps its order, and the longer one's surplus comes last.
fn alternate_families(addrs: &mut Vec<IpAddr>) {
    let Some(first) = addrs.first().map(IpAddr::is_ipv4) else {
        return;
    };
    let (leading, other): (Vec<IpAddr>, Vec<IpAddr>) =
        addrs.iter().partition(|a| a.is_ipv4() == first);
    let mut leading = leading.into_iter();
    let mut other = other.into_iter();
    let mut out = Vec::with_capacity(addrs.len());
    loop {
        match (leading.next(), other.next()) {
            (None, None) => break,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
    *addrs = out;
}

/// The outcome of one A or AAAA query.
enum Family {
    Addrs(Vec<IpAddr>),
    NxDomain,
    NoData,
    Temporary(String),
}

impl Family {
    fn from_lookup(result: Result<Lookup, NetError>, host: &str, kind: &str) -> Self {
        match result {
            Ok(lookup) => {
                let addrs: Vec<IpAddr> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    })
                    .collect();
                if addrs.is_empty() {
                    Self::NoData
                } else {
                    Self::Addrs(addrs)
                }
            }
            Err(e) if e.is_nx_domain() => Self::NxDomain,
            Err(e) if e.is_no_records_found() => Self::NoData,
            Err(e) => Self::Temporary(temporary_text(host, kind, &e)),
        }
    }
}

/// The addresses of one host, or why there are none.
enum HostAddrs {
    Found(Vec<IpAddr>),
    /// Every query said `NXDOMAIN`.
    NoSuchHost,
    /// The name exists (or some query said so) but has no address records.
    NoData,
    Temporary(String),
}

/// Joins the per-family outcomes, in order. Addresses win over failures: a host whose AAAA
/// query failed but which has A records is usable.
fn combine(families: impl Iterator<Item = Family>) -> HostAddrs {
    let mut addrs = Vec::new();
    let mut transient = Vec::new();
    let mut all_nx = true;
    for family in families {
        match family {
            Family::Addrs(found) => {
                all_nx = false;
                addrs.extend(found);
            }
            Family::NxDomain => {}
            Family::NoData => all_nx = false,
            Family::Temporary(why) => {
                all_nx = false;
                transient.push(why);
            }
        }
    }
    if !addrs.is_empty() {
        HostAddrs::Found(addrs)
    } else if !transient.is_empty() {
        HostAddrs::Temporary(transient.join("; "))
    } else if all_nx {
        HostAddrs::NoSuchHost
    } else {
        HostAddrs::NoData
    }
}

fn mx_records(lookup: &Lookup) -> Vec<(u16, Name)> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_lowercase())),
            _ => None,
        })
        .collect()
}

/// Sorts MX records by preference and shuffles each run of equal preference. Drops null MX
/// records mixed with real ones (RFC 7505 §3 forbids the mix) and repeated host names (keeping
/// the most preferred).
fn order_exchanges(mut exchanges: Vec<(u16, Name)>, domain: &str) -> Vec<(u16, Name)> {
    let before = exchanges.len();
    exchanges.retain(|(_, exchange)| !exchange.is_root());
    if exchanges.len() != before {
        debug!(%domain, "ignoring null MX records published alongside other MX records");
    }
    exchanges.sort_by_key(|(preference, _)| *preference);
    let mut seen = std::collections::HashSet::new();
    exchanges.retain(|(_, exchange)| seen.insert(exchange.clone()));

    let mut rng = rand::rng();
    let mut start = 0;
    while start < exchanges.len() {
        let preference = exchanges[start].0;
        let end = exchanges[start..]
            .iter()
            .position(|(p, _)| *p != preference)
            .map_or(exchanges.len(), |offset| start + offset);
        exchanges[start..end].shuffle(&mut rng);
        start = end;
    }
    exchanges
}

/// Parses an address literal (RFC 5321 §4.1.3): `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
///
/// Returns `None` when `domain` does not start with `[` (it is a domain name to look up), and
/// an error for a bracketed text that is no IPv4 or IPv6 literal (including the general
/// `[tag:content]` form, which names no address this client can reach).
pub fn resolve_literal(domain: &str) -> Option<Result<IpAddr, ResolveError>> {
    let inner = domain.strip_prefix('[')?;
    let invalid = |reason: &str| ResolveError::InvalidDomain {
        domain: domain.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(inner) = inner.strip_suffix(']') else {
        return Some(Err(invalid("address literal without the closing ']'")));
    };
    let v6 = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
        .and_then(|_| inner.get(5..));
    let parsed = match v6 {
        Some(text) => text
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| invalid("not an IPv6 address")),
        None => inner
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| invalid("not an IPv4 address (IPv6 needs the 'IPv6:' tag)")),
    };
    Some(parsed)
}

/// The name to query: lower case, IDNA (punycode) for non-ASCII, fully qualified.
fn to_fqdn(domain: &str) -> Result<Name, ResolveError> {
    let invalid = |reason: String| ResolveError::InvalidDomain {
        domain: domain.to_owned(),
        reason,
    };
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    if bare.is_empty() {
        return Err(invalid("empty domain".to_owned()));
    }
    if bare.split('.').any(str::is_empty) {
        return Err(invalid("empty label".to_owned()));
    }
    let mut name = Name::from_utf8(bare).map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// `domain` in ASCII (IDNA for a non-ASCII name), lower case, without the final dot: the
/// name a certificate holds.
pub(crate) fn ascii_name(domain: &str) -> Result<String, ResolveError> {
    to_fqdn(domain).map(|name| display(&name))
}

/// A name for people and for [`MxHost::name`]: ASCII, no final dot.
fn display(name: &Name) -> String {
    let text = name.to_ascii();
    match text.strip_suffix('.') {
        Some(bare) if !bare.is_empty() => bare.to_owned(),
        _ => text,
    }
}

fn temporary_text(name: &str, kind: &str, error: &NetError) -> String {
    format!("{kind} lookup for {name}: {error}")
}

fn temporary(name: &str, kind: &str, error: &NetError) -> ResolveError {
    ResolveError::Temporary(temporary_text(name, kind, error))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn address_literals() {
        let cases: &[(&str, Option<Result<IpAddr, ()>>)] = &[
            ("example.com", None),
            ("[192.0.2.1]", Some(Ok("192.0.2.1".parse().unwrap()))),
            (
                "[IPv6:2001:db8::1]",
                Some(Ok("2001:db8::1".parse().unwrap())),
            ),
            ("[ipv6:::1]", Some(Ok("::1".parse().unwrap()))),
            ("[2001:db8::1]", Some(Err(()))),
            ("[IPv6:192.0.2.1]", Some(Err(()))),
            ("[192.0.2.1", Some(Err(()))),
            ("[192.0.2.256]", Some(Err(()))),
            ("[x-tag:anything]", Some(Err(()))),
            ("[]", Some(Err(()))),
        ];
        for (input, expected) in cases {
            let got = resolve_literal(input).map(|r| r.map_err(|_| ()));
            assert_eq!(&got, expected, "{input}");
        }
    }

    #[test]
    fn names_become_lower_case_fqdns() {
        let cases = [
            ("Example.COM", "example.com."),
            ("example.com.", "example.com."),
            ("bücher.example", "xn--bcher-kva.example."),
        ];
        for (input, expected) in cases {
            assert_eq!(to_fqdn(input).unwrap().to_ascii(), expected, "{input}");
        }
        for bad in ["", ".", "a..b", "..", ".example.com"] {
            let err = to_fqdn(bad).unwrap_err();
            assert!(
                matches!(err, ResolveError::InvalidDomain { .. }),
                "{bad}: {err}"
            );
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn alternating_families_keeps_each_familys_order() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut addrs = vec![
            ip("::1"),
            ip("::2"),
            ip("::3"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
        ];
        alternate_families(&mut addrs);
        assert_eq!(
            addrs,
            [
                ip("::1"),
                ip("10.0.0.1"),
                ip("::2"),
                ip("10.0.0.2"),
                ip("::3")
            ]
        );
        let mut addrs = vec![ip("10.0.0.1"), ip("::1")];
        alternate_families(&mut addrs);
        assert_eq!(addrs, [ip("10.0.0.1"), ip("::1")]);
        let mut empty = Vec::new();
        alternate_families(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn address_preference_names() {
        for (text, preference, order) in [
            ("ipv4", AddressPreference::Ipv4, AddressOrder::Ipv4First),
            ("IPv6", AddressPreference::Ipv6, AddressOrder::Ipv6First),
            ("any", AddressPreference::Any, AddressOrder::Any),
        ] {
            assert_eq!(text.parse::<AddressPreference>().unwrap(), preference);
            assert_eq!(preference.to_string(), text.to_ascii_lowercase());
            assert_eq!(AddressOrder::from(preference), order);
        }
        assert!("both".parse::<AddressPreference>().is_err());
        assert_eq!(AddressPreference::default(), AddressPreference::Any);
        assert_eq!(AddressOrder::default(), AddressOrder::Any);
    }

    #[test]
    fn ordering_sorts_and_keeps_groups_together() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let input = vec![
            (20, n("c.test.")),
            (10, n("a.test.")),
            (30, n("d.test.")),
            (10, n("b.test.")),
            (10, n("a.test.")),
            (5, n(".")),
        ];
        let out = order_exchanges(input, "test");
        let prefs: Vec<u16> = out.iter().map(|(p, _)| *p).collect();
        assert_eq!(prefs, [10, 10, 20, 30]);
        let mut first_two: Vec<String> = out[..2].iter().map(|(_, n)| display(n)).collect();
        first_two.sort();
        assert_eq!(first_two, ["a.test", "b.test"]);
        assert_eq!(display(&out[2].1), "c.test");
    }
}
