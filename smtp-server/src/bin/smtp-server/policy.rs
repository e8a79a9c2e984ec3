//! Who is local, who may relay, and where local mail goes (users file and aliases).
//!
//! A recipient is local when its domain is one of the `--domain`s (compared without ASCII
//! case, a final dot ignored), when it is an address literal naming one of this machine's own
//! addresses that a listener accepts connections on, or when it is the bare `<postmaster>`.
//! Its mailbox is the local part mapped by [`MailboxName::from_local_part`] (the `+detail`
//! dropped, ASCII folded to lower case). With a users file, only its users and aliases are
//! accepted (and `postmaster`, always); aliases are expanded once (an alias target that is
//! itself an alias is not expanded again, so alias loops are impossible).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;

use mailstore::MailboxName;
use smtp_proto::address::{Domain, ForwardPath, Mailbox, MailboxBuf};

/// Where one accepted recipient's copies go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Destinations {
    /// Local mailboxes.
    pub local: Vec<MailboxName>,
    /// Remote addresses (to be queued for relay).
    pub remote: Vec<MailboxBuf>,
}

/// Why a recipient is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptRefusal {
    /// A local address whose local part cannot be a mailbox name (`550 5.1.3`).
    BadMailbox(String),
    /// A local address not in the users file (`550 5.1.1`).
    UnknownUser,
    /// A remote address on a listener that does not relay (`554 5.7.1`).
    RelayDenied,
}

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    User,
    Alias(Vec<Target>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Local(MailboxName),
    Remote(MailboxBuf),
}

/// The parsed users file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    entries: HashMap<MailboxName, Entry>,
}

/// An error in the users file: line number and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl Users {
    /// Reads and parses a users file.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Users::parse(&text).map_err(|e| e.to_string())
    }

    /// Parses the format documented in `--help`.
    pub fn parse(text: &str) -> Result<Users, UsersError> {
        let mut entries = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| UsersError {
                line: i + 1,
                reason,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (name, entry) = match line.split_once(':') {
                None => (line, Entry::User),
                Some((name, targets)) => {
                    let mut list = Vec::new();
                    for t in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if t.contains('@') {
                            // The lengths RCPT TO accepts (a forwarding target may be an
                            // address with a long local part).
                            let server = smtp_server::Limits::default();
                            let limits = smtp_proto::command::Limits::RFC5321
                                .with_max_local_part(server.max_local_part)
                                .with_max_path(server.max_path);
                            let m = smtp_proto::address::parse_mailbox_with(t, &limits)
                                .map_err(|e| err(format!("bad address {t:?}: {}", e.message())))?;
                            list.push(Target::Remote(m.into_owned()));
                        } else {
                            let m = MailboxName::from_local_part(t)
                                .map_err(|e| err(format!("bad user name {t:?}: {e}")))?;
                            list.push(Target::Local(m));
                        }
                    }
                    if list.is_empty() {
                        return Err(err(format!("alias {:?} has no target", name.trim())));
                    }
                    (name.trim(), Entry::Alias(list))
                }
            };
            let key = MailboxName::from_local_part(name)
                .map_err(|e| err(format!("bad user name {name:?}: {e}")))?;
            if entries.insert(key, entry).is_some() {
                return Err(err(format!("{name:?} is listed twice")));
            }
        }
        Ok(Users { entries })
    }
}

/// The daemon's recipient policy.
#[derive(Debug, Clone)]
pub struct Policy {
    domains: Vec<String>,
    /// Addresses the listeners are bound to (wildcards included).
    listen: Vec<SocketAddr>,
    users: Option<Users>,
}

impl Policy {
    /// A policy for these (lower-case) domains, listener addresses and users.
    ///
    /// Alias targets written as full addresses in one of our own domains (`postmaster:
    /// root@example.org`) become local mailboxes: relaying them would send our own mail to
    /// our MX, which the loop guard refuses (the mail bounced).
    pub fn new(domains: Vec<String>, listen: Vec<SocketAddr>, users: Option<Users>) -> Policy {
        let mut policy = Policy {
            domains,
            listen,
            users: None,
        };
        policy.users = users.map(|mut u| {
            for entry in u.entries.values_mut() {
                if let Entry::Alias(targets) = entry {
                    for t in targets.iter_mut() {
                        if let Target::Remote(a) = t {
                            if let Some(m) = policy.own_mailbox(a) {
                                *t = Target::Local(m);
                            }
                        }
                    }
                }
            }
            u
        });
        policy
    }

    /// The local mailbox of an address in one of our own domains.
    fn own_mailbox(&self, m: &MailboxBuf) -> Option<MailboxName> {
        if !self.is_local_domain(m.domain()) {
            return None;
        }
        MailboxName::from_local_part(&m.local_part()).ok()
    }

    /// True when mail for this domain is delivered here.
    pub fn is_local_domain<S: AsRef<str>>(&self, domain: &Domain<S>) -> bool {
        match domain {
            Domain::Name(n) => {
                let n = n.as_ref().trim_end_matches('.');
                self.domains.iter().any(|d| d.eq_ignore_ascii_case(n))
            }
            Domain::Ipv4(a) => self.is_own_ip((*a).into()),
            Domain::Ipv6(a) => self.is_own_ip((*a).into()),
        }
    }

    /// True when `ip` is an address some listener accepts connections on.
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.listen.iter().any(|l| {
            if l.ip().is_unspecified() {
                l.is_ipv4() == ip.is_ipv4() && is_local_interface(ip)
            } else {
                l.ip() == ip
            }
        })
    }

    /// True when a connection to `addr` would (or might) reach one of our own listeners: the
    /// loop guard, applied to every address the relay would connect to.
    ///
    /// The address is compared in every spelling that reaches the same socket: an IPv4-mapped
    /// IPv6 address is its IPv4 address; the unspecified addresses (`0.0.0.0`, `::`,
    /// `::ffff:0.0.0.0`) connect to this host's loopback interface on Linux, so they count as
    /// loopback; a listener on any loopback address or on the wildcard is taken to answer on
    /// the whole loopback range of both families (`127.0.0.0/8`, `::1`); a wildcard listener
    /// answers on every address of this machine (found by binding to it). Only the port must
    /// match: a next hop on another port of this machine is not us.
    pub fn is_own_socket(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        let loopbackish = ip.is_loopback() || ip.is_unspecified();
        self.listen.iter().any(|l| {
            if l.port() != addr.port() {
                return false;
            }
            let lip = canonical_ip(l.ip());
            if lip.is_unspecified() {
                loopbackish || is_local_interface(ip)
            } else if lip.is_loopback() {
                loopbackish
            } else {
                lip == ip
            }
        })
    }

    /// Decides where a recipient goes, given whether the listener relays.
    pub fn route<S: AsRef<str>>(
        &self,
        to: &ForwardPath<S>,
        relay: bool,
    ) -> Result<Destinations, RcptRefusal> {
        let mailbox = match to {
            ForwardPath::Postmaster => return Ok(self.postmaster()),
            ForwardPath::Mailbox(m) => m,
        };
        if self.is_local_domain(mailbox.domain()) {
            return self.local_checked(mailbox);
        }
        if relay {
            Ok(Destinations {
                local: Vec::new(),
                remote: vec![mailbox.to_buf()],
            })
        } else {
            Err(RcptRefusal::RelayDenied)
        }
    }

    fn local_checked<S: AsRef<str>>(
        &self,
        mailbox: &Mailbox<S>,
    ) -> Result<Destinations, RcptRefusal> {
        let name = MailboxName::from_local_part(&mailbox.local_part())
            .map_err(|e| RcptRefusal::BadMailbox(e.to_string()))?;
        if name.as_str() == "postmaster" {
            return Ok(self.postmaster());
        }
        match &self.users {
            None => Ok(Destinations {
                local: vec![name],
                remote: Vec::new(),
            }),
            Some(users) => match users.entries.get(&name) {
                None => Err(RcptRefusal::UnknownUser),
                Some(Entry::User) => Ok(Destinations {
                    local: vec![name],
                    remote: Vec::new(),
                }),
                Some(Entry::Alias(targets)) => Ok(expand(targets)),
            },
        }
    }

    /// Whether a user logged in as `login` may use `sender` as the envelope sender (Postfix's
    /// `reject_sender_login_mismatch`). A login is a mailbox name (`alice`) or an address
    /// (`alice@example.org`). It owns:
    /// - the login itself, when it is an address (compared with the domain's case ignored
    ///   and the local part as given, so a login in a remote domain owns just that address);
    /// - when the login is a bare name or an address in one of our domains: that mailbox in
    ///   every local domain, `+detail` forms included (`alice+lists@example.org`), mapped as
    ///   recipients are ([`MailboxName::from_local_part`]);
    /// - every alias of the users file with that mailbox among its targets (`team: alice,
    ///   bob` lets both send as `team@<local domain>`).
    ///
    /// Nothing else: another user's address and any other remote address are refused.
    pub fn sender_owned_by<S: AsRef<str>>(&self, sender: &Mailbox<S>, login: &str) -> bool {
        let own_mailbox = match smtp_proto::address::parse_mailbox(login) {
            Ok(l) => {
                if l.local_part() == sender.local_part() && same_domain(l.domain(), sender.domain())
                {
                    return true;
                }
                if !self.is_local_domain(l.domain()) {
                    return false;
                }
                MailboxName::from_local_part(&l.local_part()).ok()
            }
            Err(_) => MailboxName::from_local_part(login).ok(),
        };
        let Some(own) = own_mailbox else {
            return false;
        };
        if !self.is_local_domain(sender.domain()) {
            return false;
        }
        let Ok(name) = MailboxName::from_local_part(&sender.local_part()) else {
            return false;
        };
        if name == own {
            return true;
        }
        match self.users.as_ref().and_then(|u| u.entries.get(&name)) {
            Some(Entry::Alias(targets)) => targets
                .iter()
                .any(|t| matches!(t, Target::Local(m) if *m == own)),
            _ => false,
        }
    }

    /// `postmaster` (always accepted): its alias if it has one, else its own mailbox.
    /// The address a local mailbox is given to an LMTP server by (`--lmtp`): the mailbox
    /// name at the first local domain. Mailboxes are one namespace across our domains (the
    /// local part decides, see [`MailboxName::from_local_part`]), so one domain names them.
    /// `None` when there is no local domain, or the first is not a domain name (the
    /// daemon always has one: the host name by default).
    pub fn lmtp_address(&self, mailbox: &MailboxName) -> Option<MailboxBuf> {
        let d = Domain::name(self.domains.first()?.clone()).ok()?;
        Mailbox::new(mailbox.to_string(), d).ok()
    }

    fn postmaster(&self) -> Destinations {
        let name = MailboxName::new("postmaster").expect("a valid constant name");
        if let Some(Entry::Alias(t)) = self.users.as_ref().and_then(|u| u.entries.get(&name)) {
            return expand(t);
        }
        Destinations {
            local: vec![name],
            remote: Vec::new(),
        }
    }
}

/// Two domains are the same name (ASCII case and a final dot ignored) or the same literal.
fn same_domain<A: AsRef<str>, B: AsRef<str>>(a: &Domain<A>, b: &Domain<B>) -> bool {
    match (a, b) {
        (Domain::Name(x), Domain::Name(y)) => x
            .as_ref()
            .trim_end_matches('.')
            .eq_ignore_ascii_case(y.as_ref().trim_end_matches('.')),
        (Domain::Ipv4(x), Domain::Ipv4(y)) => x == y,
        (Domain::Ipv6(x), Domain::Ipv6(y)) => x == y,
        _ => false,
    }
}

fn expand(targets: &[Target]) -> Destinations {
    let mut d = Destinations::default();
    for t in targets {
        match t {
            Target::Local(m) => d.local.push(m.clone()),
            Target::Remote(a) => d.remote.push(a.clone()),
        }
    }
    d
}

/// `::ffff:a.b.c.d` as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// True when `ip` belongs to this machine: loopback (all of 127.0.0.0/8, ::1), unspecified,
/// or an address a socket can be bound to (which the kernel allows only for local addresses).
pub fn is_local_interface(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use smtp_proto::address::parse_forward_path;

    fn fp(s: &str) -> ForwardPath {
        parse_forward_path(s).unwrap().into_owned()
    }

    fn policy(users: Option<&str>) -> Policy {
        Policy::new(
            vec!["example.org".into(), "mail.test".into()],
            vec![
                "127.0.0.1:2525".parse().unwrap(),
                "[::]:2526".parse().unwrap(),
            ],
            users.map(|u| Users::parse(u).unwrap()),
        )
    }

    #[test]
    fn senders_a_login_owns() {
        let p = policy(Some("alice\nbob\nteam: alice, bob\nfwd: x@else.net\n"));
        let owned = |sender: &str, login: &str| {
            let m = smtp_proto::address::parse_mailbox(sender).unwrap();
            p.sender_owned_by(&m, login)
        };
        for login in ["alice@example.org", "ALICE@Example.ORG", "alice"] {
            for sender in [
                "alice@example.org",
                "Alice@EXAMPLE.org",
                "alice+lists@example.org",
                "alice@mail.test",
                "team@example.org",
            ] {
                assert!(owned(sender, login), "{login} should own {sender}");
            }
            for sender in [
                "bob@example.org",
                "fwd@example.org",
                "alice@gmail.com",
                "postmaster@example.org",
            ] {
                assert!(!owned(sender, login), "{login} must not own {sender}");
            }
        }
        // A login in a remote domain owns just itself.
        assert!(owned("carol@remote.net", "carol@remote.net"));
        assert!(owned("carol@REMOTE.net", "carol@remote.net"));
        assert!(!owned("carol@example.org", "carol@remote.net"));
        assert!(!owned("Carol@remote.net", "carol@remote.net"));
    }

    #[test]
    fn local_and_remote() {
        let p = policy(None);
        let d = p.route(&fp("<Alice+News@EXAMPLE.org>"), false).unwrap();
        assert_eq!(d.local[0].as_str(), "alice");
        assert_eq!(
            p.route(&fp("<bob@other.net>"), false),
            Err(RcptRefusal::RelayDenied)
        );
        assert_eq!(
            p.route(&fp("<bob@other.net>"), true).unwrap().remote[0].to_string(),
            "bob@other.net"
        );
        assert_eq!(
            p.route(&fp("<postmaster>"), false).unwrap().local[0].as_str(),
            "postmaster"
        );
        assert!(matches!(
            p.route(&fp("<\"../x\"@example.org>"), false),
            Err(RcptRefusal::BadMailbox(_))
        ));
        // Address literals of our own listeners are local; others are not.
        assert_eq!(
            p.route(&fp("<carol@[127.0.0.1]>"), false).unwrap().local[0].as_str(),
            "carol"
        );
        assert_eq!(
            p.route(&fp("<carol@[IPv6:::1]>"), false).unwrap().local[0].as_str(),
            "carol"
        );
        // An IPv4-mapped literal is the IPv4 address it maps (here with IPv4 listeners only).
        let v4 = Policy::new(vec![], vec!["127.0.0.1:2525".parse().unwrap()], None);
        assert_eq!(
            v4.route(&fp("<carol@[IPv6:::ffff:127.0.0.1]>"), false)
                .unwrap()
                .local[0]
                .as_str(),
            "carol"
        );
        assert_eq!(
            p.route(&fp("<carol@[192.0.2.7]>"), false),
            Err(RcptRefusal::RelayDenied)
        );
    }

    #[test]
    fn users_file() {
        let p = policy(Some(
            "# users\nalice\nbob # comment\nteam: alice, Bob+x, carol@remote.test\npostmaster: alice\n",
        ));
        assert_eq!(
            p.route(&fp("<alice@example.org>"), false).unwrap().local[0].as_str(),
            "alice"
        );
        assert_eq!(
            p.route(&fp("<dave@example.org>"), false),
            Err(RcptRefusal::UnknownUser)
        );
        let team = p.route(&fp("<team@mail.test>"), false).unwrap();
        assert_eq!(
            team.local.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        assert_eq!(team.remote[0].to_string(), "carol@remote.test");
        assert_eq!(team.remote.len(), 1);
        assert_eq!(
            p.route(&fp("<postmaster>"), false).unwrap().local[0].as_str(),
            "alice"
        );
        assert_eq!(
            p.route(&fp("<PostMaster@example.org>"), false)
                .unwrap()
                .local[0]
                .as_str(),
            "alice"
        );
        // A full address in one of our domains is a local target, not one to relay.
        let p2 = policy(Some(
            "alice\nteam: Alice+x@Example.ORG, carol@remote.test\n",
        ));
        let team = p2.route(&fp("<team@example.org>"), false).unwrap();
        assert_eq!(
            team.local.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["alice"]
        );
        assert_eq!(team.remote[0].to_string(), "carol@remote.test");
        assert_eq!(team.remote.len(), 1);
        let e = Users::parse("alice\n\nx/y\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(Users::parse("a:\n").is_err());
        assert!(Users::parse("a\nA\n").is_err());
        // A forwarding target takes the lengths RCPT TO does: 255 octets of local part.
        let long = format!("fwd: {}@remote.test\n", "a".repeat(255));
        assert!(Users::parse(&long).is_ok());
        let longer = format!("fwd: {}@remote.test\n", "a".repeat(256));
        assert!(Users::parse(&longer).is_err());
    }

    #[test]
    fn loop_guard() {
        let p = policy(None);
        let own = |a: &str| p.is_own_socket(a.parse().unwrap());
        // 127.0.0.1:2525 is a listener: every spelling of a loopback or unspecified address
        // on that port reaches it (or might).
        for a in [
            "127.0.0.1:2525",
            "127.0.0.2:2525",
            "127.255.255.254:2525",
            "0.0.0.0:2525",
            "[::]:2525",
            "[::1]:2525",
            "[::ffff:127.0.0.1]:2525",
            "[::ffff:0.0.0.0]:2525",
            "[::ffff:127.1.2.3]:2525",
        ] {
            assert!(own(a), "{a}");
        }
        // Another port of this machine is not us; nor is another host.
        assert!(!own("127.0.0.1:25"));
        assert!(!own("0.0.0.0:25"));
        assert!(!own("192.0.2.1:2525"));
        assert!(!own("[2001:db8::1]:2525"));
        // The wildcard listener on 2526 takes every local address, of both families.
        for a in [
            "127.0.0.5:2526",
            "[::1]:2526",
            "0.0.0.0:2526",
            "[::]:2526",
            "[::ffff:0.0.0.0]:2526",
        ] {
            assert!(own(a), "{a}");
        }
        assert!(!own("192.0.2.1:2526"));
        // A listener on a specific non-loopback address is reached by that address only.
        let q = Policy::new(vec![], vec!["192.0.2.1:25".parse().unwrap()], None);
        assert!(q.is_own_socket("192.0.2.1:25".parse().unwrap()));
        assert!(q.is_own_socket("[::ffff:192.0.2.1]:25".parse().unwrap()));
        assert!(!q.is_own_socket("192.0.2.2:25".parse().unwrap()));
    }
}
