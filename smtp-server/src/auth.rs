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
//!   until the window has passed. An attempt being checked counts as a failure until it is
//!   decided, so many connections at once cannot all slip in before the first failure is
//!   counted. The table is bounded ([`AUTH_FAILURE_TABLE`] addresses, the oldest idle entry
//!   forgotten first), so a flood of addresses cannot grow memory.
//! - Only refusals of the credentials count (a permanent failure, `535`): a temporary one
//!   (`454`, the user database is down) is answered at once and counts nowhere, so an outage
//!   locks no one out.
//!
//! Everyone behind one address shares its count: an office NAT, an IPv6 /64, and every local
//! program on 127.0.0.1 (a webmail on the same machine). One guesser there blocks AUTH for all
//! of them for the window; logins that do not fail never count.
//!
//! Mail over a session that did not authenticate is the handler's business (the daemon
//! answers `530 5.7.0` on its submission listeners).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smtp_proto::{EnhancedCode, Refusal, Reply};

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
    pub fn refusal(&self) -> Refusal {
        match self {
            AuthFailure::Invalid => Refusal::fixed(
                535,
                Some(EnhancedCode::fixed(5, 7, 8)),
                "Authentication credentials invalid",
            ),
            AuthFailure::Temporary => Refusal::fixed(
                454,
                Some(EnhancedCode::fixed(4, 7, 0)),
                "Temporary authentication failure",
            ),
            AuthFailure::TooWeak => Refusal::fixed(
                534,
                Some(EnhancedCode::fixed(5, 7, 9)),
                "Authentication mechanism is too weak",
            ),
        }
    }

    /// The reply the client gets, as a [`Reply`].
    pub fn reply(&self) -> Reply {
        self.refusal().into_reply()
    }
}

/// `421 4.7.0`, the server's refusal when a client has used up a limit; give it a text with
/// [`Refusal::with_text`].
pub(crate) const LIMIT_REACHED: Refusal =
    Refusal::fixed(421, Some(EnhancedCode::fixed(4, 7, 0)), "Too many");

/// Failed logins per client address, within a window, and the attempts under way.
#[derive(Debug)]
pub(crate) struct FailureTable {
    max: Option<usize>,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: usize,
    /// Start of the window the failures count in.
    since: Instant,
    /// Attempts being checked now (each may fail).
    in_flight: usize,
}

/// An attempt reserved with [`FailureTable::begin`]; counts as a possible failure until it
/// ends. Dropping it without [`Attempt::failed`] means it did not fail.
pub(crate) struct Attempt<'a> {
    table: &'a FailureTable,
    key: Option<IpAddr>,
}

impl Attempt<'_> {
    /// The credentials were refused: count a failure.
    pub(crate) fn failed(mut self) {
        if let Some(key) = self.key.take() {
            self.table.end(key, true);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.end(key, false);
        }
    }
}

impl FailureTable {
    pub(crate) fn new(max: Option<usize>, window: Duration) -> Self {
        FailureTable {
            max,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reserves an attempt from `ip`, or `None` when its failures so far plus the attempts
    /// under way reach the limit: checking the reservation and taking it are one step, so
    /// concurrent attempts cannot all slip in before the first failure is counted.
    pub(crate) fn begin(&self, ip: IpAddr) -> Option<Attempt<'_>> {
        let Some(max) = self.max else {
            return Some(Attempt {
                table: self,
                key: None,
            });
        };
        let key = key(ip);
        let now = Instant::now();
        let mut t = self.lock();
        if t.len() >= AUTH_FAILURE_TABLE && !t.contains_key(&key) {
            let window = self.window;
            t.retain(|_, e| e.in_flight > 0 || now.duration_since(e.since) < window);
            if t.len() >= AUTH_FAILURE_TABLE {
                // Full of live entries: forget the oldest idle one rather than grow.
                let oldest = t
                    .iter()
                    .filter(|(_, e)| e.in_flight == 0)
                    .min_by_key(|(_, e)| e.since)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => {
                        t.remove(&k);
                    }
                    None => return None,
                }
            }
        }
        let e = t.entry(key).or_insert(Entry {
            failures: 0,
            since: now,
            in_flight: 0,
        });
        if now.duration_since(e.since) >= self.window {
            e.failures = 0;
            e.since = now;
        }
        if e.failures.saturating_add(e.in_flight) >= max {
            return None;
        }
        e.in_flight += 1;
        Some(Attempt {
            table: self,
            key: Some(key),
        })
    }

    fn end(&self, key: IpAddr, failed: bool) {
        let mut t = self.lock();
        let Some(e) = t.get_mut(&key) else {
            return;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        if failed {
            if e.failures == 0 {
                e.since = Instant::now();
            }
            e.failures = e.failures.saturating_add(1);
        }
        if e.failures == 0 && e.in_flight == 0 {
            t.remove(&key);
        }
    }
}

/// The address a client is counted under, for AUTH failures and for
/// [`crate::Limits::max_connections_per_ip`]: IPv4 (mapped or not) as itself, IPv6 by its
/// /64, which one host usually owns whole (a client with a /64 has 2^64 addresses to
/// connect from).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
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

    fn fail(t: &FailureTable, ip: IpAddr) {
        t.begin(ip).expect("not blocked").failed();
    }

    #[test]
    fn table_blocks_after_max_and_forgets_after_window() {
        let t = FailureTable::new(Some(3), Duration::from_millis(200));
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..3 {
            fail(&t, ip);
        }
        assert!(t.begin(ip).is_none());
        // The same host over IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(ip);
        assert!(t.begin(mapped).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.begin(ip).is_some());
    }

    #[test]
    fn attempts_under_way_count_and_successes_do_not() {
        let t = FailureTable::new(Some(3), Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let held: Vec<_> = (0..3).map(|_| t.begin(ip).expect("free")).collect();
        assert!(t.begin(ip).is_none(), "a fourth concurrent attempt got in");
        drop(held); // none failed
        for _ in 0..10 {
            drop(t.begin(ip).expect("successes are not counted"));
        }
        assert!(t.lock().is_empty());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = FailureTable::new(Some(1), Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 16]));
        fail(&t, a);
        assert!(t.begin(b).is_none());
        assert!(t.begin(c).is_some());
    }

    #[test]
    fn table_is_bounded() {
        let t = FailureTable::new(Some(1), Duration::from_secs(60));
        for i in 0..(AUTH_FAILURE_TABLE as u32 + 10) {
            fail(&t, IpAddr::from(i.to_be_bytes()));
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
