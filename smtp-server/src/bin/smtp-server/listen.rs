//! Which sockets to bind for the configured listeners, and which policy a connection gets.
//!
//! On Linux a socket on a specific address and a wildcard socket cannot both listen on one
//! port (`127.0.0.1:25` beside `0.0.0.0:25` is `EADDRINUSE`), yet that is exactly the default:
//! the loopback listener on `127.0.0.1:25` and `[::1]:25`, the public one on `0.0.0.0:25` and
//! `[::]:25`. So a listener on a specific address whose port a wildcard listener of the same
//! family also uses is not bound on its own: the wildcard socket accepts its connections, and
//! each connection gets the policy of the listener whose address it arrived on (its local
//! address), else that of the wildcard listener. A connection from the network can only arrive
//! on a network interface's address (Linux drops packets for 127.0.0.0/8 from other
//! interfaces), so the relay right of the loopback listener stays with the machine's own
//! programs. Listeners on distinct ports, or on distinct specific addresses, are bound as
//! they are.
//!
//! A specific address may share a wildcard's socket only when both speak the same way
//! (plain/STARTTLS or implicit TLS); otherwise the configuration is refused, naming both.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::policy::canonical_ip;

/// The kind of a listener: what its clients may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Clients may relay to any address (`--local-listen`).
    Loopback,
    /// Local delivery only (`--public-listen`).
    Public,
    /// Implicit TLS (`--tls-listen`, RFC 8314 submission): AUTH offered; authenticated
    /// clients relay, others may not send at all (`530 5.7.0`), from wherever they connect
    /// (local programs that do not log in use the loopback listener), as Postfix's
    /// submission services with `smtpd_client_restrictions = permit_sasl_authenticated,
    /// reject`.
    Tls,
    /// Submission with STARTTLS (`--submission-listen`, RFC 6409, port 587): as [`Kind::Tls`],
    /// with AUTH offered once STARTTLS is done.
    Submission,
}

impl Kind {
    /// The listener name given to the server library (and written in its logs).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Loopback => "loopback",
            Kind::Public => "public",
            Kind::Tls => "tls",
            Kind::Submission => "submission",
        }
    }

    /// The kind a listener name stands for.
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Loopback, Kind::Public, Kind::Tls, Kind::Submission]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Whether clients speak TLS from the first byte.
    pub fn implicit_tls(self) -> bool {
        self == Kind::Tls
    }

    /// The option a listener of this kind comes from, for error messages.
    pub fn option(self) -> &'static str {
        match self {
            Kind::Loopback => "--local-listen",
            Kind::Public => "--public-listen",
            Kind::Tls => "--tls-listen",
            Kind::Submission => "--submission-listen",
        }
    }

    /// Whether clients log in here (AUTH offered, and needed to send unless on loopback).
    pub fn is_submission(self) -> bool {
        matches!(self, Kind::Tls | Kind::Submission)
    }
}

/// One configured listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Configured {
    /// What its clients may do.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// The sockets to bind and how to classify the connections they accept.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The sockets to bind, each with the kind of the listener it was configured for.
    pub sockets: Vec<Configured>,
    /// Specific addresses served by a wildcard socket of the same port, with their kind.
    pub shared: Vec<(Configured, SocketAddr)>,
    by_addr: HashMap<SocketAddr, Kind>,
}

impl Plan {
    /// Plans the sockets for `listeners`, or says why they cannot all be served.
    pub fn new(listeners: &[Configured]) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let mut seen: Vec<Configured> = Vec::new();
        for l in listeners {
            let addr = SocketAddr::new(canonical_ip(l.addr.ip()), l.addr.port());
            match seen.iter().find(|s| s.addr == addr) {
                Some(s) if s.kind == l.kind => continue,
                Some(s) => {
                    return Err(format!(
                        "{addr} is given as both {} and {}",
                        s.kind.option(),
                        l.kind.option()
                    ))
                }
                None => seen.push(Configured { kind: l.kind, addr }),
            }
        }
        for l in &seen {
            plan.by_addr.insert(l.addr, l.kind);
            if l.addr.ip().is_unspecified() {
                plan.sockets.push(*l);
                continue;
            }
            let wildcard = seen.iter().find(|w| {
                w.addr.ip().is_unspecified()
                    && w.addr.port() == l.addr.port()
                    && w.addr.is_ipv4() == l.addr.is_ipv4()
            });
            match wildcard {
                None => plan.sockets.push(*l),
                Some(w) if w.kind.implicit_tls() != l.kind.implicit_tls() => {
                    return Err(format!(
                        "{} ({}) and {} ({}) share a port, but only one of them is implicit TLS",
                        l.addr,
                        l.kind.option(),
                        w.addr,
                        w.kind.option()
                    ))
                }
                Some(w) => plan.shared.push((*l, w.addr)),
            }
        }
        Ok(plan)
    }

    /// The kind of a connection accepted by the socket of listener `listener`, arriving on
    /// the local address `local`.
    pub fn classify(&self, listener: Kind, local: SocketAddr) -> Kind {
        let local = SocketAddr::new(canonical_ip(local.ip()), local.port());
        self.by_addr.get(&local).copied().unwrap_or(listener)
    }
}

/// Whether a connection of `kind`, to `local` from `peer`, may relay. A loopback listener
/// relays; an implicit-TLS listener relays when the connection is to a loopback address. In
/// both cases, when the local address is a loopback address the peer must be one too: a host
/// that can send packets for 127.0.0.1 into this machine (`route_localnet`, as some container
/// networking sets) must not get the relay right. A loopback listener on a non-loopback
/// address (`-l 10.0.0.5:25`, for a LAN) relays for whoever reaches it: the operator's choice.
pub fn may_relay(kind: Kind, local: SocketAddr, peer: SocketAddr) -> bool {
    let local_lo = canonical_ip(local.ip()).is_loopback();
    let peer_lo = canonical_ip(peer.ip()).is_loopback();
    match kind {
        Kind::Loopback => !local_lo || peer_lo,
        // Relaying there follows from logging in (see the handler), never from the address.
        Kind::Tls | Kind::Submission => false,
        Kind::Public => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(kind: Kind, a: &str) -> Configured {
        Configured {
            kind,
            addr: a.parse().unwrap(),
        }
    }

    #[test]
    fn the_defaults_share_the_wildcard_sockets() {
        let plan = Plan::new(&[
            c(Kind::Loopback, "127.0.0.1:25"),
            c(Kind::Loopback, "[::1]:25"),
            c(Kind::Public, "0.0.0.0:25"),
            c(Kind::Public, "[::]:25"),
        ])
        .unwrap();
        assert_eq!(
            plan.sockets,
            [c(Kind::Public, "0.0.0.0:25"), c(Kind::Public, "[::]:25")]
        );
        let k = |a: &str| plan.classify(Kind::Public, a.parse().unwrap());
        assert_eq!(k("127.0.0.1:25"), Kind::Loopback);
        assert_eq!(k("[::1]:25"), Kind::Loopback);
        assert_eq!(k("[::ffff:127.0.0.1]:25"), Kind::Loopback);
        assert_eq!(k("192.0.2.10:25"), Kind::Public);
        assert_eq!(k("[2001:db8::10]:25"), Kind::Public);
        // Another loopback address than the configured one is not the loopback listener.
        assert_eq!(k("127.0.0.2:25"), Kind::Public);
    }

    #[test]
    fn distinct_ports_and_addresses_are_bound_as_given() {
        let ls = [
            c(Kind::Loopback, "127.0.0.1:2525"),
            c(Kind::Public, "0.0.0.0:2527"),
            c(Kind::Public, "[::]:2525"),
            c(Kind::Tls, "192.0.2.1:465"),
            c(Kind::Loopback, "127.0.0.1:2525"),
        ];
        let plan = Plan::new(&ls).unwrap();
        assert_eq!(plan.sockets, ls[..4]);
        assert!(plan.shared.is_empty());
        assert_eq!(
            plan.classify(Kind::Loopback, "127.0.0.1:2525".parse().unwrap()),
            Kind::Loopback
        );
    }

    #[test]
    fn relay_rights_need_a_loopback_peer_on_loopback() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(may_relay(
            Kind::Loopback,
            a("127.0.0.1:25"),
            a("127.0.0.1:5000")
        ));
        assert!(may_relay(Kind::Loopback, a("[::1]:25"), a("[::1]:5000")));
        assert!(may_relay(
            Kind::Loopback,
            a("[::ffff:127.0.0.1]:25"),
            a("[::ffff:127.0.0.1]:5000")
        ));
        // A packet for 127.0.0.1 from the network (route_localnet): no relay.
        assert!(!may_relay(
            Kind::Loopback,
            a("127.0.0.1:25"),
            a("192.0.2.7:5000")
        ));
        assert!(!may_relay(
            Kind::Tls,
            a("127.0.0.1:465"),
            a("192.0.2.7:5000")
        ));
        // Submission listeners: only logging in gives the right to relay.
        assert!(!may_relay(
            Kind::Tls,
            a("127.0.0.1:465"),
            a("127.0.0.1:5000")
        ));
        assert!(!may_relay(
            Kind::Submission,
            a("[::1]:587"),
            a("[::1]:5000")
        ));
        assert!(!may_relay(
            Kind::Tls,
            a("192.0.2.1:465"),
            a("192.0.2.7:5000")
        ));
        // A loopback listener the operator put on a LAN address.
        assert!(may_relay(
            Kind::Loopback,
            a("10.0.0.5:25"),
            a("10.0.0.9:5000")
        ));
        assert!(!may_relay(
            Kind::Public,
            a("127.0.0.1:25"),
            a("127.0.0.1:5000")
        ));
    }

    #[test]
    fn conflicts_are_refused() {
        let e = Plan::new(&[
            c(Kind::Loopback, "127.0.0.1:25"),
            c(Kind::Public, "127.0.0.1:25"),
        ])
        .unwrap_err();
        assert!(
            e.contains("--local-listen") && e.contains("--public-listen"),
            "{e}"
        );
        let e = Plan::new(&[
            c(Kind::Tls, "127.0.0.1:465"),
            c(Kind::Public, "0.0.0.0:465"),
        ])
        .unwrap_err();
        assert!(e.contains("implicit TLS"), "{e}");
    }
}
