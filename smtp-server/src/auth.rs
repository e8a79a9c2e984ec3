//! SMTP AUTH on the server: what a handler answers, and the limits on failed attempts.
//!
//! The session ([`smtp_proto::session`]) runs the SASL exchange; the server hands the
//! client's [`Credentials`] to [`crate::SessionHandler::authenticate`], which checks them and
//! answers with the authenticated identity or an [`AuthFailure`]. Around that the server
//! enforces, for every handler:
//!
//! - a delay before each failure reply, growing with the failures of the session
//!   ([`crate::Limits::auth_failure_delay`] times their number, at most ten times it), as
//!   Postfix's `smtpd_error_sleep_time`, so one connection cannot guess at line rate;
//! - [`crate::Limits::max_auth_failures`] failures per session, then `421 4.7.0` and the
//!   connection closes;
//! - [`crate::Limits::max_auth_failures_per_ip`] failures per client address (IPv6: per
//!   /64) within [`crate::Limits::auth_failure_window`]: past that, further AUTH attempts
//!   from the address get `421 4.7.0` at once, without their credentials being looked at,
//!   until the window has passed. The table is bounded
//!   ([`AUTH_FAILURE_TABLE`] addresses), so a flood of addresses cannot grow memory.
//!
//! Mail over a session that did not authenticate is the handler's business (the daemon
//! answers `530 5.7.0` on its submission listeners).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smtp_proto::{EnhancedCode, Reply};

pub use smtp_proto::sasl::{Credentials, Mechanism, Secret};

/// Most client addresses the failure table tracks at once.
pub const AUTH_FAILURE_TABLE: usize = 65_536;

/// Why a login was refused; each is one reply. It cannot hold a positive reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// Wrong user or password: `535 5.7.8 Authentication credentials invalid`.
    Invalid,
    /// The user database could not be asked: `454 4.7.0 Temporary authentication failure`.
    Temporary,
    /// The mechanism is not allowed for this user or connection:
    /// `534 5.7.9 Authentication mechanism is too weak`.
    TooWeak,
}

impl AuthFailure {
    /// The reply the client gets.
    pub fn reply(&self) -> Reply {
        let (code, e, text) = match self {
            AuthFailure::Invalid => (535, (5, 7, 8), "Authentication credentials invalid"),
            AuthFailure::Temporary => (454, (4, 7, 0), "Temporary authentication failure"),
            AuthFailure::TooWeak => (534, (5, 7, 9), "Authentication mechanism is too weak"),
        };
        fixed(code, e, text)
    }
}

/// A reply of the server's own with a fixed, valid code and text.
pub(crate) fn fixed(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, EnhancedCode::new(e.0, e.1, e.2), text)
        .or_else(|_| Reply::new(code, None, ""))
        .unwrap_or_else(|_| Reply::ok())
}

/// Failed logins per client address, within a window.
#[derive(Debug)]
pub(crate) struct FailureTable {
    max: Option<usize>,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, (usize, Instant)>>,
}

impl FailureTable {
    pub(crate) fn new(max: Option<usize>, window: Duration) -> Self {
        FailureTable {
            max,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (usize, Instant)>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `ip` has used up its failures.
    pub(crate) fn blocked(&self, ip: IpAddr) -> bool {
        let Some(max) = self.max else {
            return false;
        };
        let key = key(ip);
        let mut t = self.lock();
        match t.get(&key) {
            Some(&(_, since)) if since.elapsed() >= self.window => {
                t.remove(&key);
                false
            }
            Some(&(n, _)) => n >= max,
            None => false,
        }
    }

    /// Counts a failure from `ip`.
    pub(crate) fn record(&self, ip: IpAddr) {
        if self.max.is_none() {
            return;
        }
        let key = key(ip);
        let now = Instant::now();
        let mut t = self.lock();
        if t.len() >= AUTH_FAILURE_TABLE && !t.contains_key(&key) {
            let window = self.window;
            t.retain(|_, (_, since)| now.duration_since(*since) < window);
            if t.len() >= AUTH_FAILURE_TABLE {
                // Full of live entries: forget the oldest rather than grow.
                if let Some(oldest) = t.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    t.remove(&oldest);
                }
            }
        }
        let e = t.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }
}

/// The address failures are counted under: IPv4 (mapped or not) as itself, IPv6 by its /64,
/// which one host usually owns whole.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_blocks_after_max_and_forgets_after_window() {
        let t = FailureTable::new(Some(3), Duration::from_millis(200));
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..3 {
            assert!(!t.blocked(ip));
            t.record(ip);
        }
        assert!(t.blocked(ip));
        // The same host over IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(ip);
        assert!(t.blocked(mapped));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!t.blocked(ip));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = FailureTable::new(Some(1), Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 16]));
        t.record(a);
        assert!(t.blocked(b));
        assert!(!t.blocked(c));
    }

    #[test]
    fn table_is_bounded() {
        let t = FailureTable::new(Some(1), Duration::from_secs(60));
        for i in 0..(AUTH_FAILURE_TABLE as u32 + 10) {
            t.record(IpAddr::from(i.to_be_bytes()));
        }
        assert!(t.lock().len() <= AUTH_FAILURE_TABLE);
    }

    #[test]
    fn failure_replies() {
        assert_eq!(
            AuthFailure::Invalid.reply().to_string(),
            "535 5.7.8 Authentication credentials invalid"
        );
        assert_eq!(AuthFailure::Temporary.reply().code(), 454);
    }
}
