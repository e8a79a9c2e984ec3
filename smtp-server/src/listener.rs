//! Listen addresses and how they are bound.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// One address to listen on, with a name (given to the handler in
/// [`crate::ConnectionInfo::listener`] and written in the logs) and whether clients speak TLS
/// from the first byte (implicit TLS, port 465 style) or may use STARTTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listener {
    /// The listener's name.
    pub name: Arc<str>,
    /// The address; port 0 picks a free port (see [`crate::BoundServer::local_addrs`]).
    pub addr: SocketAddr,
    /// Implicit TLS: the handshake runs before the greeting.
    pub implicit_tls: bool,
    /// Speak LMTP (RFC 2033) instead of SMTP: see
    /// [`SessionConfig::lmtp`](smtp_proto::session::SessionConfig::lmtp) and
    /// [`crate::DataOutcome::per_recipient`].
    pub lmtp: bool,
}

impl Listener {
    /// A plain listener named after its address.
    pub fn new(addr: SocketAddr) -> Self {
        Self::named(addr.to_string(), addr)
    }

    /// A plain listener with a name.
    pub fn named(name: impl Into<Arc<str>>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr,
            implicit_tls: false,
            lmtp: false,
        }
    }

    /// The same listener with implicit TLS.
    #[must_use]
    pub fn implicit_tls(mut self) -> Self {
        self.implicit_tls = true;
        self
    }

    /// The same listener speaking LMTP (RFC 2033).
    #[must_use]
    pub fn lmtp(mut self) -> Self {
        self.lmtp = true;
        self
    }
}

/// Binds a listening socket. An IPv6 socket is v6-only, so `0.0.0.0:25` and `[::]:25` can
/// both be bound; `SO_REUSEADDR` lets a restarted server bind while old connections linger.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    tokio::net::TcpListener::from_std(socket.into())
}
