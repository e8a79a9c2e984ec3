//! Inbound sender authentication: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489, as
//! `mail-auth` implements it) and ARC (RFC 8617) verdicts on mail from the public listener,
//! recorded in one `Authentication-Results:` field (RFC 8601). The checks are `mail-auth`'s;
//! this module only decides when they run, bounds them, and writes and uses the results.
//!
//! Which mail: sessions on the public listener (`--public-listen`: mail from other servers,
//! which may only go to local recipients). Not the loopback listener (our own programs, which
//! relay), nor the submission listeners (users who logged in): their mail is ours, and is
//! DKIM-signed instead (see [`crate::dkim`]). `--no-email-auth` turns the checks off.
//!
//! When:
//! - SPF at `MAIL FROM`, where the client's address, the HELO name and the sender are known:
//!   the HELO identity and the MAIL FROM identity (for the null sender, `postmaster@` the HELO
//!   name, RFC 7208 §2.4), both at once. With `--spf-reject` a MAIL FROM result of `fail` is
//!   refused there with `550 5.7.23` (RFC 7372); `softfail`, `neutral`, `none`, `permerror`
//!   and `temperror` are accepted and recorded.
//! - DKIM, ARC and DMARC at the end of DATA, before the reply: over the message held in
//!   memory (up to [`crate::local::HOLD_IN_MEMORY`]), or read back from its temporary file. With `--dmarc-reject` a DMARC
//!   `fail` whose policy is `p=reject` (after `sp=`/`np=`/`t=y`, as mail-auth applies them) is
//!   refused with `550 5.7.1`; `p=quarantine` and `p=none` failures are accepted with
//!   `dmarc=fail` and the policy in the field (`policy.dmarc=quarantine`), for a filter or a
//!   Sieve rule to act on.
//!
//! Temporary DNS failures never refuse mail: a lookup that fails (`SERVFAIL`, no answer) or
//! does not finish within `--email-auth-timeout` (default 5 s, for the SPF checks together,
//! then for DKIM and ARC together, then for DMARC) gives `temperror` for that check and the
//! message is accepted (as Postfix's policyd-spf and OpenDMARC do by default): a `451` would
//! delay legitimate mail whenever the sender's DNS is flaky. A hostile name server can hold a
//! session for at most three timeouts. RFC 7208's limit of 10 DNS-querying terms is
//! mail-auth's (over it: `permerror`). Its limit of two void lookups (§4.6.4: answers with no
//! records or NXDOMAIN; the third gives `permerror`) mail-auth 0.13 lacks, so it is counted
//! here, around mail-auth's evaluation rather than in a second SPF implementation: see
//! [`VoidLookups`] for how (`exists:` names are looked up a second time when they could
//! decide it).
//!
//! Cached: the parsed TXT records (SPF, DKIM keys, DMARC policies) and the address, MX and PTR
//! answers, for their DNS TTL, in caches of [`CACHE_ENTRIES`] entries each (beyond that,
//! expired entries are dropped, then the whole cache), besides the resolver's own cache. The
//! resolver is the relay's (`--dns-server`, or the system's).
//!
//! CPU: verifying a signature costs mail-auth the names in its `h=` times the message's
//! fields (each name is looked up by a scan of the fields), on the session's thread, before
//! `b=` is even checked. So at most [`MAX_SIGNATURES`] signatures are verified, each listing
//! at most [`MAX_SIGNED_FIELDS`] names and costing at most [`MAX_FIELD_LOOKUPS`] comparisons;
//! the others are recorded as `dkim=policy (not verified: why)` and count as permanent errors
//! for DMARC (an unchecked signature cannot pass). An ARC chain with an
//! ARC-Message-Signature past those bounds, or of more than 50 sets, is `arc=fail (not
//! verified: why)`. Before, one message listing 100,000 names in `h=` held a runtime thread
//! for 15 s.
//!
//! Memory: mail-auth verifies a DKIM body hash over the message in memory, so a message
//! larger than `--email-auth-max-size` (default 10 MiB) is not read whole: only its header
//! section (at most [`MAX_HEADER_SECTION`]) is, each of its signatures is recorded as
//! `dkim=policy` with a comment saying why, DMARC sees them as temporary errors (so such a
//! message never fails DMARC for want of a checked signature: it passes by SPF alignment or
//! is `temperror`), and ARC is not checked. A header section longer than 1 MiB gets
//! `dkim=policy` alone, with no DMARC verdict. All sessions together hold at most
//! [`MEMORY_BUDGET`] (256 MiB, or four messages of the maximum size if that is more) for the
//! checks: a session whose message does not fit waits for others to finish.
//!
//! The field, with our `--hostname` as authserv-id, goes above our `Received:` (and below
//! `Return-Path:` in a mailbox), so it is with the trace fields (RFC 8601 §5):
//!
//! ```text
//! Return-Path: <alice@example.org>
//! Authentication-Results: mx.example.net;
//!         dkim=pass header.d=example.org header.s=s2026 header.b=AbCdEf12;
//!         spf=pass (mx.example.net: domain of postmaster@mail.example.org designates
//!           192.0.2.1 as permitted sender) smtp.helo=mail.example.org;
//!         spf=pass (...) smtp.mailfrom=alice@example.org;
//!         dmarc=pass header.from=example.org policy.dmarc=reject
//! Received: from mail.example.org ([192.0.2.1]) by mx.example.net ...
//! ```
//!
//! Incoming `Authentication-Results:` fields claiming our authserv-id are removed on every
//! listener (see [`crate::headers::HeaderFilter`]), whether or not the checks run.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, MessageAuthenticator, Parameters, RecordSet, ResolverCache, SpfOutput,
    SpfResult, Txt, MX,
};

/// The longest header section read from a message too large to verify whole (as for signing).
pub const MAX_HEADER_SECTION: usize = crate::dkim::MAX_HEADER_SECTION;

/// Entries in each of the DNS caches.
pub const CACHE_ENTRIES: usize = 4096;

/// The most message octets held in memory for the checks by all sessions together (or four
/// messages of `--email-auth-max-size`, if more); a session waits for its share.
pub const MEMORY_BUDGET: u64 = 256 * 1024 * 1024;

/// The unit in which the memory budget is shared out.
const MEMORY_UNIT: u64 = 64 * 1024;

/// A bounded cache of DNS answers, each kept until the time mail-auth gives (its TTL).
pub struct Cache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K, V> Cache<K, V> {
    fn new(capacity: usize) -> Self {
        Cache {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Cache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.lock();
        match map.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let now = Instant::now();
        if valid_until <= now {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

/// The void lookups (RFC 7208 §4.6.4) that make an SPF check a `permerror`: more than two.
pub const VOID_LOOKUP_LIMIT: u32 = 2;

/// Counts the void lookups of one SPF check through the caches mail-auth asks before each
/// DNS query ([`Counting`]): for the address, MX and PTR lookups of `a`, `mx`, `ptr` (and the
/// MX hosts' addresses) mail-auth first asks the cache, on a miss queries DNS, and inserts
/// the answer only when it has records: NXDOMAIN and an empty answer come back as errors and
/// are never inserted. So a lookup that missed the cache and was not inserted before the next
/// one began (or the check ended) was void, as is an empty answer found in the cache. The
/// evaluation is sequential, so one pending lookup at a time is enough.
///
/// `exists:` asks the A cache, then the AAAA cache, for one name (no other term asks both for
/// one name: `a` and `mx` ask the family of the client's address) and never inserts what it
/// finds, so its outcome is not seen in the caches. Those names are kept
/// ([`VoidLookups::unseen`]) and, when they could take the check over the limit, looked up
/// again after it ([`Verifier`]'s resolver answers from its own cache what had records):
/// evaluation is left to right, so once three void lookups happened at all, the check was a
/// `permerror` whatever came after. TXT lookups (`include:`, `redirect=`) are not counted:
/// an empty one ends the check with `permerror` or `none` anyway. Other DNS errors end the
/// check with `temperror` at once, which the count never overrides.
#[derive(Default)]
pub struct VoidLookups(Mutex<VoidState>);

#[derive(Default)]
struct VoidState {
    voids: u32,
    /// The lookup under way: the cache it missed and its key's hash.
    pending: Option<(Lookup, u64)>,
    /// The names `exists:` looked up without an answer in the caches, in order (at most
    /// [`MAX_UNSEEN`]: the 10-term limit keeps a check below that).
    unseen: Vec<String>,
}

/// The most `exists:` names one check keeps.
const MAX_UNSEEN: usize = 16;

/// Which cache a lookup went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A records.
    Ipv4,
    /// AAAA records.
    Ipv6,
    /// MX records.
    Mx,
    /// PTR records.
    Ptr,
}

fn key_hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl VoidLookups {
    fn state(&self) -> std::sync::MutexGuard<'_, VoidState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A lookup of `kind` for `hash` began; `cached` is what the cache had (and whether that
    /// answer is empty); `name` gives the key's name (for `exists:`).
    fn began(
        &self,
        kind: Lookup,
        hash: u64,
        cached: Option<bool>,
        name: impl FnOnce() -> Option<String>,
    ) {
        let mut s = self.state();
        match s.pending.take() {
            // `exists:` asks the A cache, then the AAAA cache, for one name, and inserts
            // nothing: its outcome is looked up again later (see above). An answer in the
            // AAAA cache, even an empty one, is a match for mail-auth.
            Some((Lookup::Ipv4, h)) if kind == Lookup::Ipv6 && h == hash => {
                if cached.is_none() && s.unseen.len() < MAX_UNSEEN {
                    if let Some(name) = name() {
                        s.unseen.push(name);
                    }
                }
                return;
            }
            // The previous lookup was never inserted: no records.
            Some(_) => s.voids += 1,
            None => {}
        }
        match cached {
            Some(empty) => s.voids += u32::from(empty),
            None => s.pending = Some((kind, hash)),
        }
    }

    /// A lookup's answer, with records or not, went into the cache.
    fn answered(&self, kind: Lookup, hash: u64, empty: bool) {
        let mut s = self.state();
        if s.pending == Some((kind, hash)) {
            s.pending = None;
        }
        s.voids += u32::from(empty);
    }

    /// The void lookups of the check seen in the caches, once it ended.
    pub fn count(&self) -> u32 {
        let s = self.state();
        s.voids + u32::from(s.pending.is_some())
    }

    /// The names `exists:` looked up whose outcome the caches did not show, in order.
    pub fn unseen(&self) -> Vec<String> {
        self.state().unseen.clone()
    }
}

/// What a key feeds its hasher. For a `str` that is its UTF-8 bytes and one `0xff` (which
/// keeps `("ab", "c")` and `("a", "bc")` apart); the caches' `get` is generic over the key's
/// borrowed form, and this is how the name of a lookup is read from it
/// (`key_name_reads_a_str_back` checks it against the standard library in use).
struct KeyBytes(Vec<u8>);

impl std::hash::Hasher for KeyBytes {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// The name a cache key that is a `str` (or `Box<str>`) hashes, if it is one.
fn key_name<Q: Hash + ?Sized>(key: &Q) -> Option<String> {
    let mut h = KeyBytes(Vec::new());
    key.hash(&mut h);
    let mut bytes = h.0;
    (bytes.pop() == Some(0xff))
        .then(|| String::from_utf8(bytes).ok())
        .flatten()
}

/// A cache that tells [`VoidLookups`] what mail-auth asked of it and stored in it.
pub struct Counting<'a, C> {
    cache: &'a C,
    voids: &'a VoidLookups,
    kind: Lookup,
}

impl<'a, C> Counting<'a, C> {
    fn new(cache: &'a C, (voids, kind): (&'a VoidLookups, Lookup)) -> Self {
        Counting { cache, voids, kind }
    }
}

impl<K: Hash + Eq, T: Clone> ResolverCache<K, RecordSet<T>>
    for Counting<'_, Cache<K, RecordSet<T>>>
{
    fn get<Q>(&self, name: &Q) -> Option<RecordSet<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let v = self.cache.get(name);
        self.voids.began(
            self.kind,
            key_hash(name),
            v.as_ref().map(|v| v.rrset.is_empty()),
            || key_name(name),
        );
        v
    }

    fn remove<Q>(&self, name: &Q) -> Option<RecordSet<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.remove(name)
    }

    fn insert(&self, key: K, value: RecordSet<T>, valid_until: Instant) {
        self.voids
            .answered(self.kind, key_hash(key.borrow()), value.rrset.is_empty());
        self.cache.insert(key, value, valid_until);
    }
}

/// The TXT cache of an SPF check, recording the names mail-auth looked up (the checked
/// domain, each `include:` and `redirect=`), for the one-record rule (RFC 7208 §4.5).
pub struct Recording<'a, C> {
    cache: &'a C,
    names: Mutex<Vec<String>>,
}

/// The most names one check records (the 10-term limit keeps a check below it).
const MAX_RECORDED: usize = 16;

impl<'a, C> Recording<'a, C> {
    fn new(cache: &'a C) -> Self {
        Recording {
            cache,
            names: Mutex::new(Vec::new()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl<V: Clone> ResolverCache<Box<str>, V> for Recording<'_, Cache<Box<str>, V>> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(n) = key_name(name) {
            let mut names = self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if names.len() < MAX_RECORDED && !names.contains(&n) {
                names.push(n);
            }
        }
        self.cache.get(name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.remove(name)
    }

    fn insert(&self, key: Box<str>, value: V, valid_until: Instant) {
        self.cache.insert(key, value, valid_until);
    }
}

/// Whether a TXT record's text is an SPF record: `v=spf1` (any case) alone or before a space
/// (RFC 7208 §4.5).
fn is_spf_record(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// Whether the DMARC record text `text` (`v=DMARC1; ...`) applies its policy to a sample
/// only: `pct=` below 100 (RFC 7489 §6.3; historic in RFC 9989, which mail-auth follows and
/// so ignores it).
fn dmarc_sampled(text: &str) -> bool {
    let mut tags = text.split(';').map(str::trim);
    let is_dmarc = tags
        .next()
        .is_some_and(|v| v.replace(' ', "").eq_ignore_ascii_case("v=DMARC1"));
    is_dmarc
        && tags.any(|t| {
            t.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("pct")
                    && v.trim().parse::<u32>().is_ok_and(|n| n < 100)
            })
        })
}

/// The options (`--spf-reject`, `--dmarc-reject`, `--email-auth-max-size`,
/// `--email-auth-timeout`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Refuse a MAIL FROM whose SPF result is `fail`.
    pub spf_reject: bool,
    /// Refuse a DMARC failure whose policy is `p=reject`.
    pub dmarc_reject: bool,
    /// The largest message whose signatures are verified.
    pub max_size: u64,
    /// The time each group of checks may take.
    pub timeout: Duration,
}

/// The checks, shared by every session.
pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    settings: Settings,
    /// Shares of [`MEMORY_BUDGET`], in [`MEMORY_UNIT`]s.
    memory: tokio::sync::Semaphore,
    memory_units: u32,
    txt: Cache<Box<str>, Txt>,
    mx: Cache<Box<str>, RecordSet<MX>>,
    ipv4: Cache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: Cache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: Cache<IpAddr, RecordSet<Box<str>>>,
}

type Params<'x, P> = Parameters<
    'x,
    P,
    Cache<Box<str>, Txt>,
    Cache<Box<str>, RecordSet<MX>>,
    Cache<Box<str>, RecordSet<Ipv4Addr>>,
    Cache<Box<str>, RecordSet<Ipv6Addr>>,
    Cache<IpAddr, RecordSet<Box<str>>>,
>;

/// The SPF verdicts of a transaction, from its MAIL FROM.
#[derive(Debug, Clone)]
pub struct Spf {
    ip: IpAddr,
    helo: String,
    /// The MAIL FROM address, empty for the null sender.
    sender: String,
    helo_result: SpfOutput,
    mail_from_result: SpfOutput,
}

impl Spf {
    /// The MAIL FROM identity's result.
    pub fn result(&self) -> SpfResult {
        self.mail_from_result.result()
    }

    /// The domain whose policy gave the MAIL FROM result.
    pub fn domain(&self) -> &str {
        self.mail_from_result.domain()
    }

    /// The HELO identity's result.
    pub fn helo_result(&self) -> SpfResult {
        self.helo_result.result()
    }
}

/// The message as read back for the checks.
#[derive(Debug)]
pub enum Body<'a> {
    /// The whole message.
    Whole(std::borrow::Cow<'a, [u8]>),
    /// Over `--email-auth-max-size`: its header section (with the empty line after it), or
    /// `None` when that is longer than [`MAX_HEADER_SECTION`].
    TooLarge {
        /// The header section.
        header: Option<Vec<u8>>,
        /// The message's size.
        size: u64,
    },
}

/// What the checks of a message found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The `Authentication-Results:` field, folded, ending in CRLF.
    pub field: String,
    /// Why the message is refused (`--dmarc-reject`), for a `550 5.7.1` reply.
    pub reject: Option<String>,
    /// The DKIM results, one keyword per signature (`pass`, `fail,pass`), `none` without any.
    pub dkim: String,
    /// The DMARC result keyword.
    pub dmarc: &'static str,
    /// The policy of the From: domain (`none`, `quarantine`, `reject`), `-` without a record.
    pub dmarc_policy: &'static str,
    /// The From: domain DMARC was checked for, `-` when none.
    pub from_domain: String,
    /// The ARC result keyword, `-` when the message has no ARC set (or was not checked).
    pub arc: &'static str,
}

/// RFC 8601's keyword for an SPF result.
pub fn spf_keyword(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_keyword(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_keyword(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// The most DKIM signatures verified in one message (those aligned with an author domain
/// first, see [`split_costly`]); the others are recorded as `dkim=policy` and count for DMARC
/// as permanent errors (a signature not checked cannot pass). Each costs DNS lookups and
/// hashing.
pub const MAX_SIGNATURES: usize = 8;

/// The most header field names one DKIM or ARC signature's `h=` may list to be verified (RFC
/// 6376 sets no limit; real signers list about 10 to 40, oversigned names twice).
pub const MAX_SIGNED_FIELDS: usize = 128;

/// The most field comparisons verifying one signature may take: mail-auth finds each name in
/// `h=` by a scan of the message's fields from the end, so the cost is the `h=` names times
/// the fields. Over it (a message of 100,000 fields and a signature of 100 names), the
/// signature is not verified, as above.
pub const MAX_FIELD_LOOKUPS: usize = 4_000_000;

/// Why a signature listing `names` header fields, over a message of `fields` fields, is not
/// verified; `None` when it is within the bounds above.
fn too_costly(names: usize, fields: usize) -> Option<String> {
    if names > MAX_SIGNED_FIELDS {
        Some(format!(
            "{names} signed header fields, at most {MAX_SIGNED_FIELDS} are verified"
        ))
    } else if names.saturating_mul(fields) > MAX_FIELD_LOOKUPS {
        Some(format!(
            "{names} signed header fields over {fields} fields, too costly to verify"
        ))
    } else {
        None
    }
}

/// Takes the DKIM signatures out of `msg` that are not verified (past [`MAX_SIGNATURES`], or
/// [`too_costly`]), each with the reason, and says why ARC is not verified, if it is not (an
/// ARC-Message-Signature too costly, or more sets than RFC 8617 §5.1.1.1's 50).
///
/// Past [`MAX_SIGNATURES`], signatures whose `d=` is aligned with an author domain (relaxed:
/// one a subdomain of the other) are the ones verified first: each hop adds its signature on
/// top, and the author's, at the bottom, is the one DMARC needs.
fn split_costly<'x>(
    msg: &mut AuthenticatedMessage<'x>,
    authors: &[String],
) -> (
    Vec<(
        mail_auth::common::headers::Header<'x, mail_auth::dkim::Signature>,
        String,
    )>,
    Option<String>,
) {
    let fields = msg.headers.len();
    let all = std::mem::take(&mut msg.dkim_headers);
    let aligned = |d: &str| {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        authors.iter().any(|a| {
            let a = a.trim_end_matches('.').to_ascii_lowercase();
            a == d || a.ends_with(&format!(".{d}")) || d.ends_with(&format!(".{a}"))
        })
    };
    // Which are verified: within the cost bounds, aligned ones first, at most MAX_SIGNATURES.
    let mut chosen = vec![false; all.len()];
    let mut n = 0;
    for pass_aligned in [true, false] {
        for (i, h) in all.iter().enumerate() {
            if n < MAX_SIGNATURES
                && !chosen[i]
                && aligned(&h.header.d) == pass_aligned
                && too_costly(h.header.h.len(), fields).is_none()
            {
                chosen[i] = true;
                n += 1;
            }
        }
    }
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for (h, chosen) in all.into_iter().zip(chosen) {
        if chosen {
            kept.push(h);
        } else {
            let why = too_costly(h.header.h.len(), fields).unwrap_or_else(|| {
                format!("more than {MAX_SIGNATURES} signatures, {MAX_SIGNATURES} are verified")
            });
            skipped.push((h, why));
        }
    }
    msg.dkim_headers = kept;
    let arc = if msg.ams_headers.len() > 50 || msg.as_headers.len() > 50 {
        Some("more than 50 ARC sets".to_owned())
    } else {
        msg.ams_headers
            .iter()
            .find_map(|h| too_costly(h.header.h.len(), fields))
    };
    (skipped, arc)
}

/// The most author (From:) domains whose DMARC policies are checked; a message naming more is
/// a `permerror` (and refused with `--dmarc-reject`).
pub const MAX_AUTHOR_DOMAINS: usize = 4;

/// The author domains of a message, which DMARC checks (RFC 7489 §3.1.1, §6.6.1).
#[derive(Debug, PartialEq, Eq)]
enum Authors {
    /// No From: address at all.
    None,
    /// A field that does not follow the RFC 5322 grammar, an address without a domain name
    /// a lookup can use (a literal, a label IDNA refuses), or too many domains: why.
    Malformed(String),
    /// The distinct domains, lowercase, without a final dot, in order.
    Domains(Vec<String>),
}

impl Authors {
    /// From the values of the message's `From:` fields, read strictly
    /// ([`crate::from_field`]): a field that does not follow RFC 5322 is `Malformed`, as
    /// lenient parsers (mail-auth's among them) read such fields differently and a forger
    /// picks the reading that escapes the check.
    fn of(values: &[&[u8]]) -> Authors {
        let mut domains: Vec<String> = Vec::new();
        for value in values {
            let list = match crate::from_field::mailboxes(value) {
                Ok(list) => list,
                Err(why) => return Authors::Malformed(why.to_owned()),
            };
            for m in list {
                if !m.has_domain_name() {
                    return Authors::Malformed(format!(
                        "From: address without a domain name: {}",
                        pvalue_text(&m.address())
                    ));
                }
                if !domains.contains(&m.domain) {
                    domains.push(m.domain);
                }
            }
        }
        match domains.len() {
            0 => Authors::None,
            n if n > MAX_AUTHOR_DOMAINS => Authors::Malformed(format!(
                "{n} From: domains, more than {MAX_AUTHOR_DOMAINS} are not checked"
            )),
            _ => Authors::Domains(domains),
        }
    }
}

/// One DMARC result as mail-auth writes it (`;` CRLF TAB `dmarc=...`), the policy only
/// when a record was found (a `policy.dmarc=none` of a domain without one would read as a
/// published `p=none`).
fn dmarc_entry(d: &DmarcOutput) -> String {
    let text = AuthenticationResults::new("")
        .with_dmarc_result(d)
        .to_string();
    match d.dmarc_record() {
        Some(_) => text,
        None => text
            .strip_suffix(" policy.dmarc=none")
            .map_or(text.clone(), str::to_owned),
    }
}

/// Text from a message for an RFC 8601 comment: printable ASCII without parentheses or
/// backslashes, at most 64 characters.
fn pvalue_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\'))
        .take(64)
        .collect()
}

fn timed_out() -> mail_auth::Error {
    mail_auth::Error::Dns(DnsError::Resolver("timed out".into()))
}

impl Verifier {
    /// Checks with `resolver` (the relay's), writing `hostname` as the authserv-id.
    pub fn new(
        resolver: mail_auth::hickory_resolver::TokioResolver,
        hostname: String,
        settings: Settings,
    ) -> Verifier {
        let units = (MEMORY_BUDGET.max(settings.max_size.saturating_mul(4)) / MEMORY_UNIT)
            .clamp(1, u64::from(u32::MAX >> 4));
        let memory_units = u32::try_from(units).unwrap_or(u32::MAX >> 4);
        Verifier {
            auth: MessageAuthenticator(resolver),
            hostname,
            settings,
            memory: tokio::sync::Semaphore::new(memory_units as usize),
            memory_units,
            txt: Cache::new(CACHE_ENTRIES),
            mx: Cache::new(CACHE_ENTRIES),
            ipv4: Cache::new(CACHE_ENTRIES),
            ipv6: Cache::new(CACHE_ENTRIES),
            ptr: Cache::new(CACHE_ENTRIES),
        }
    }

    /// Waits until a message of `size` octets may be held in memory for the checks; the
    /// permit is released when dropped.
    pub async fn memory_for(&self, size: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let held = if size > self.settings.max_size {
            MAX_HEADER_SECTION as u64
        } else {
            size
        };
        let units = u32::try_from(held.div_ceil(MEMORY_UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.memory_units);
        self.memory.acquire_many(units).await.ok()
    }

    /// The options in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The TXT records of `name` (each one's strings joined), through the resolver (and its
    /// cache); `None` when the lookup fails (NXDOMAIN and an empty answer are `Some([])`).
    async fn txt_strings(&self, name: &str) -> Option<Vec<String>> {
        use mail_auth::hickory_resolver::proto::rr::RData;
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        match self.auth.0.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Some(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Some(Vec::new()),
            Err(_) => None,
        }
    }

    /// Whether the DMARC record that applies to `domain` (its own, else the nearest parent's,
    /// as the tree walk finds it) has `pct=` below 100: see [`dmarc_sampled`].
    async fn dmarc_record_sampled(&self, domain: &str) -> bool {
        let mut name = domain;
        for _ in 0..8 {
            let Some(records) = self.txt_strings(&format!("_dmarc.{name}")).await else {
                return false;
            };
            let dmarc: Vec<&String> = records
                .iter()
                .filter(|r| {
                    let r = r.trim_start().as_bytes();
                    r.len() >= 8 && r[..8].eq_ignore_ascii_case(b"v=DMARC1")
                })
                .collect();
            if !dmarc.is_empty() {
                return matches!(dmarc.as_slice(), [one] if dmarc_sampled(one));
            }
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => name = parent,
                _ => return false,
            }
        }
        false
    }

    fn params<'x, P>(&'x self, p: P) -> Params<'x, P> {
        Parameters::new(p)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    /// SPF for the HELO and MAIL FROM identities of a client at `ip` (`sender` empty for the
    /// null sender), within the timeout (then `temperror`).
    pub async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> Spf {
        let host = self.hostname.as_str();
        let sender_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_owned();
        let helo_check = async {
            if is_multi_label_domain(helo) {
                self.bounded_spf(SpfParameters::verify_ehlo(ip, helo, host), helo)
                    .await
            } else {
                SpfOutput::new(helo.to_owned()).with_result(SpfResult::None)
            }
        };
        let (helo_result, mail_from_result) = if sender.is_empty() {
            // The MAIL FROM identity of the null sender is the HELO name (RFC 7208 §2.4).
            let r = helo_check.await;
            (r.clone(), r)
        } else {
            let from_check = self.bounded_spf(
                SpfParameters::verify_mail_from(ip, helo, host, sender),
                &sender_domain,
            );
            tokio::join!(helo_check, from_check)
        };
        Spf {
            ip,
            helo: helo.to_owned(),
            sender: sender.to_owned(),
            helo_result,
            mail_from_result,
        }
    }

    /// One SPF check within the timeout (then `temperror` for `domain`), with RFC 7208's
    /// void-lookup limit (see [`VoidLookups`]).
    async fn bounded_spf(&self, params: SpfParameters<'_>, domain: &str) -> SpfOutput {
        let voids = VoidLookups::default();
        let counting = |kind| (&voids, kind);
        let (mx, ipv4, ipv6, ptr) = (
            Counting::new(&self.mx, counting(Lookup::Mx)),
            Counting::new(&self.ipv4, counting(Lookup::Ipv4)),
            Counting::new(&self.ipv6, counting(Lookup::Ipv6)),
            Counting::new(&self.ptr, counting(Lookup::Ptr)),
        );
        let txt = Recording::new(&self.txt);
        let params = Parameters::new(params)
            .with_txt_cache(&txt)
            .with_mx_cache(&mx)
            .with_ipv4_cache(&ipv4)
            .with_ipv6_cache(&ipv6)
            .with_ptr_cache(&ptr);
        let check = async {
            let out = self.auth.verify_spf(params).await;
            let mut n = voids.count();
            let unseen = voids.unseen();
            if out.result() != SpfResult::TempError
                && n <= VOID_LOOKUP_LIMIT
                && n as usize + unseen.len() > VOID_LOOKUP_LIMIT as usize
            {
                for name in unseen {
                    let none = None::<&Cache<Box<str>, RecordSet<Ipv4Addr>>>;
                    let none6 = None::<&Cache<Box<str>, RecordSet<Ipv6Addr>>>;
                    // A failure now, after mail-auth's own lookup of it succeeded, is not
                    // counted either way.
                    if let Ok(false) = self.auth.exists(name.as_str(), none, none6).await {
                        n += 1;
                        if n > VOID_LOOKUP_LIMIT {
                            break;
                        }
                    }
                }
            }
            // One SPF record per name (RFC 7208 §4.5): mail-auth takes the first that parses,
            // so a name with two gives whichever the DNS server listed first. Any name the
            // check read with two makes it a permerror (mostly from the resolver's cache).
            // (Not when the void lookups already make it one.)
            let mut two = None;
            if n <= VOID_LOOKUP_LIMIT
                && !matches!(out.result(), SpfResult::TempError | SpfResult::PermError)
            {
                for name in txt.names() {
                    let records = self.txt_strings(&name).await.unwrap_or_default();
                    if records.iter().filter(|r| is_spf_record(r)).count() > 1 {
                        two = Some(name);
                        break;
                    }
                }
            }
            (out, n, two)
        };
        let (out, n, two) = tokio::time::timeout(self.settings.timeout, check)
            .await
            .unwrap_or_else(|_| {
                let out = SpfOutput::new(domain.to_owned()).with_result(SpfResult::TempError);
                (out, 0, None)
            });
        if let Some(name) = two {
            tracing::debug!(%domain, %name, "SPF: more than one SPF record (RFC 7208 4.5): permerror");
            return SpfOutput::new(domain.to_owned()).with_result(SpfResult::PermError);
        }
        if n > VOID_LOOKUP_LIMIT && out.result() != SpfResult::TempError {
            // Evaluation is left to right: once the third void lookup happened the result
            // was permerror, whatever mail-auth went on to find.
            tracing::debug!(%domain, void_lookups = n, "SPF: over the void-lookup limit (RFC 7208 4.6.4): permerror");
            return SpfOutput::new(domain.to_owned()).with_result(SpfResult::PermError);
        }
        out
    }

    /// DKIM, ARC and DMARC for `body`, with the transaction's SPF verdicts, and the field
    /// recording them all.
    pub async fn message(&self, spf: &Spf, body: &Body<'_>) -> Verdict {
        let limit = self.settings.timeout;
        let (bytes, too_large) = match body {
            Body::Whole(b) => (b.as_ref(), None),
            Body::TooLarge {
                header: Some(h),
                size,
            } => (h.as_slice(), Some(*size)),
            Body::TooLarge { header: None, size } => {
                return self.unverified(
                    spf,
                    &format!("header section longer than {MAX_HEADER_SECTION} octets, not verified ({size} octets)"),
                );
            }
        };
        let parsed = tokio::task::block_in_place(|| AuthenticatedMessage::parse(bytes));
        let Some(mut msg) = parsed else {
            // No header section (the message began with its body): nothing signed, no From:.
            let ar = AuthenticationResults::new(&self.hostname);
            let after = format!("{};\r\n\tdmarc=none (no From: field)", self.spf_text(spf));
            return Verdict {
                field: self.field(&ar, ";\r\n\tdkim=none", &after),
                reject: None,
                dkim: "none".into(),
                dmarc: "none",
                dmarc_policy: "-",
                from_domain: "-".into(),
                arc: "-",
            };
        };
        // Signatures whose verification would cost more than its bounds are not verified:
        // mail-auth's work grows with the names in h= times the fields, on this thread.
        let authors = Authors::of(&crate::from_field::from_values(msg.headers.iter().copied()));
        let author_domains = match &authors {
            Authors::Domains(d) => d.as_slice(),
            _ => &[],
        };
        let (skipped, arc_skipped) = split_costly(&mut msg, author_domains);
        let signature_errors = |e: fn() -> mail_auth::Error| -> Vec<DkimOutput<'_>> {
            msg.dkim_headers
                .iter()
                .map(|h| DkimOutput::temp_err(e()).with_signature(&h.header))
                .collect()
        };
        // ARC fields that do not parse are a chain too (one that fails, RFC 8617 §5.2).
        let has_arc = !msg.ams_headers.is_empty()
            || !msg.as_headers.is_empty()
            || !msg.aar_headers.is_empty()
            || msg.has_arc_errors;
        let (dkim, arc) = if too_large.is_some() {
            // Not verified: temporary errors for DMARC, `policy` in the field (below).
            (
                signature_errors(|| mail_auth::Error::Io("message too large to verify".into())),
                None,
            )
        } else {
            let dkim = tokio::time::timeout(limit, self.auth.verify_dkim(self.params(&msg)));
            let arc = async {
                if let Some(why) = arc_skipped.as_ref().filter(|_| has_arc) {
                    tracing::debug!(reason = %why, "ARC not verified");
                    Some(
                        ArcOutput::default().with_result(DkimResult::Fail(mail_auth::Error::Io(
                            format!("not verified: {why}"),
                        ))),
                    )
                } else if has_arc {
                    Some(
                        tokio::time::timeout(limit, self.auth.verify_arc(self.params(&msg)))
                            .await
                            .unwrap_or_else(|_| {
                                ArcOutput::default().with_result(DkimResult::TempError(timed_out()))
                            }),
                    )
                } else {
                    None
                }
            };
            let (dkim, arc) = tokio::join!(dkim, arc);
            (dkim.unwrap_or_else(|_| signature_errors(timed_out)), arc)
        };
        // What DMARC sees: the signatures checked, and those not checked as permanent errors
        // (they cannot pass).
        let mut dkim = dkim;
        dkim.extend(skipped.iter().map(|(h, why)| {
            DkimOutput::perm_err(mail_auth::Error::Io(why.clone())).with_signature(&h.header)
        }));
        // The RFC 5321.MailFrom domain, the HELO name for the null sender (RFC 7489 §3.1.2).
        let mail_from_domain = spf
            .sender
            .rsplit_once('@')
            .map_or(spf.helo.as_str(), |(_, d)| d);
        let dmarcs: Vec<DmarcOutput> = match &authors {
            Authors::Domains(domains) => {
                // One check per author domain (RFC 7489 §6.6.1), each seeing only its own
                // From: domain (mail-auth exempts a message of several).
                let ones: Vec<AuthenticatedMessage<'_>> = domains
                    .iter()
                    .map(|d| {
                        let mut one = msg.clone();
                        one.from = vec![format!("@{d}")];
                        one
                    })
                    .collect();
                let checks = ones.iter().map(|one| {
                    self.auth.verify_dmarc(self.params(DmarcParameters::new(
                        one,
                        &dkim,
                        mail_from_domain,
                        &spf.mail_from_result,
                    )))
                });
                tokio::time::timeout(limit, futures_util::future::join_all(checks))
                    .await
                    .unwrap_or_else(|_| {
                        domains
                            .iter()
                            .map(|d| {
                                DmarcOutput::new(d.clone())
                                    .with_spf_result(DmarcResult::TempError(timed_out()))
                                    .with_dkim_result(DmarcResult::TempError(timed_out()))
                            })
                            .collect()
                    })
            }
            _ => Vec::new(),
        };

        let mut ar = AuthenticationResults::new(&self.hostname);
        let mut ours = String::new();
        if let Some(size) = too_large {
            for h in &msg.dkim_headers {
                let _ = write!(
                    ours,
                    ";\r\n\tdkim=policy (message too large to verify: {size} octets, limit {}) header.d={} header.s={}",
                    self.settings.max_size,
                    quoted_pvalue(&h.header.d),
                    quoted_pvalue(&h.header.s)
                );
            }
            if msg.dkim_headers.is_empty() && skipped.is_empty() {
                ours.push_str(";\r\n\tdkim=none");
            }
        } else if dkim.is_empty() {
            ours.push_str(";\r\n\tdkim=none");
        } else {
            for d in &dkim[..dkim.len() - skipped.len()] {
                ours.push_str(&self.dkim_entry(d));
            }
        }
        for (h, why) in &skipped {
            let _ = write!(
                ours,
                ";\r\n\tdkim=policy (not verified: {why}) header.d={} header.s={}",
                quoted_pvalue(&h.header.d),
                quoted_pvalue(&h.header.s)
            );
        }
        // RFC 8617 §4.4 knows none, pass and fail: an ARC set mail-auth calls neutral (a
        // changed body), a permanent or a temporary error is a chain that did not validate.
        let arc = arc.map(|a| match a.result() {
            DkimResult::Neutral(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => {
                let e = e.clone();
                a.with_result(DkimResult::Fail(e))
            }
            // ARC fields that make no set (an ARC-Authentication-Results: alone) are not "no
            // chain" either: a fail (RFC 8617 §5.2).
            DkimResult::None => a.with_result(DkimResult::Fail(mail_auth::Error::Arc(
                mail_auth::arc::ArcError::BrokenChain,
            ))),
            _ => a,
        });
        match (&arc, &arc_skipped) {
            // Written here: mail-auth would say no more than "i/o error".
            (Some(_), Some(why)) => {
                let _ = write!(
                    ours,
                    ";\r\n\tarc=fail (not verified: {why}) smtp.remote-ip={}",
                    spf.ip
                );
            }
            (Some(arc), None) => ar = ar.with_arc_result(arc, spf.ip),
            (None, _) => {}
        }
        let mut after = self.spf_text(spf);
        let mut reject = None;
        match &authors {
            Authors::Domains(_) => {
                for d in &dmarcs {
                    after.push_str(&dmarc_entry(d));
                }
                // The strictest: any author domain whose p=reject failed refuses the message,
                // unless its record samples (pct= below 100: not enforced by refusing, see
                // `dmarc_sampled`); each failing domain is asked, so a sampling one does not
                // shield the next.
                // (Those lookups are the resolver's cached answers of the checks just made;
                // together they get one timeout, after which, as when one fails, the policy
                // the check found is enforced: a domain whose name server stalls the second
                // look must not shield the others.)
                let failing = dmarcs.iter().filter(|d| {
                    matches!(d.result(), DmarcResult::Fail(_)) && d.policy() == Policy::Reject
                });
                let enforced = async {
                    for d in failing.clone() {
                        if !self.dmarc_record_sampled(d.domain()).await {
                            return Some(d);
                        }
                    }
                    None
                };
                let failed = if self.settings.dmarc_reject {
                    tokio::time::timeout(limit, enforced)
                        .await
                        .unwrap_or_else(|_| failing.clone().next())
                } else {
                    None
                };
                if let Some(d) = failed {
                    reject = Some(format!(
                        "Unauthenticated email from {} is not accepted due to its domain's DMARC policy (p=reject)",
                        pvalue(d.domain())
                    ));
                }
            }
            Authors::None => after.push_str(";\r\n\tdmarc=none (no From: address)"),
            Authors::Malformed(why) => {
                let _ = write!(after, ";\r\n\tdmarc=permerror ({why})");
                if self.settings.dmarc_reject {
                    reject = Some(format!(
                        "The From: field cannot be checked for DMARC: {why} (RFC 5322)"
                    ));
                }
            }
        }
        // For the log: the strictest result, its policy, and the domains.
        let rank = |r: &DmarcResult| match r {
            DmarcResult::Fail(_) => 0,
            DmarcResult::TempError(_) => 1,
            DmarcResult::PermError(_) => 2,
            DmarcResult::None => 3,
            DmarcResult::Pass => 4,
        };
        let strictest = dmarcs.iter().min_by_key(|d| rank(&d.result()));
        let dmarc_keyword_of = match (&authors, strictest) {
            (Authors::Malformed(_), _) => "permerror",
            (_, Some(d)) => dmarc_keyword(&d.result()),
            (_, None) => "none",
        };
        let dmarc_policy = match strictest {
            Some(d) if d.dmarc_record().is_some() => match d.policy() {
                Policy::Reject => "reject",
                Policy::Quarantine => "quarantine",
                Policy::None | Policy::Unspecified => "none",
            },
            _ => "-",
        };
        let from_domain = match &authors {
            Authors::Domains(list) => list.join(","),
            _ => "-".to_owned(),
        };
        let dkim_summary = if dkim.is_empty() {
            "none".to_owned()
        } else {
            let verified = dkim.len() - skipped.len();
            dkim.iter()
                .enumerate()
                .map(|(i, o)| {
                    if too_large.is_some() || i >= verified {
                        "policy"
                    } else {
                        dkim_keyword(o.result())
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        Verdict {
            field: self.field(&ar, &ours, &after),
            reject,
            dkim: dkim_summary,
            dmarc: dmarc_keyword_of,
            dmarc_policy,
            from_domain,
            arc: arc.as_ref().map_or("-", |a| dkim_keyword(a.result())),
        }
    }

    /// What `add` writes into a field of ours, without its authserv-id: the results (each
    /// `;` CRLF TAB ...) with mail-auth's comments, which name our host.
    fn part<'x>(
        &'x self,
        add: impl FnOnce(AuthenticationResults<'x>) -> AuthenticationResults<'x>,
    ) -> String {
        let host = self.hostname.as_str();
        let text = add(AuthenticationResults::new(host)).to_string();
        text.strip_prefix(host).map_or(text.clone(), str::to_owned)
    }

    /// One DKIM result (`;` CRLF TAB `dkim=...`): the result and its comment as mail-auth
    /// writes them, then the signature's tags as RFC 8601 pvalues. mail-auth copies `d=`,
    /// `s=` and `i=` bare, and a sender may put tspecials in them (`s=a,b`, `d=a<b>.test`)
    /// that make the field unreadable; here a value that is not a plain token (or, for
    /// `header.i`, a plain address) is quoted.
    fn dkim_entry(&self, d: &DkimOutput<'_>) -> String {
        let mut entry = self.part(|ar| ar.with_dkim_result(d, ""));
        if let Some(at) = entry.find(" header.") {
            entry.truncate(at);
        }
        if let Some(sig) = d.signature() {
            if sig.i.is_empty() {
                let _ = write!(entry, " header.d={}", quoted_pvalue(&sig.d));
            } else {
                let _ = write!(entry, " header.i={}", address_pvalue(&sig.i));
            }
            let _ = write!(entry, " header.s={}", quoted_pvalue(&sig.s));
            if let Some(prefix) = sig.b.get(..6) {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(prefix);
                let _ = write!(entry, " header.b={}", quoted_pvalue(&b));
            }
        }
        entry
    }

    /// The two SPF results (`;` CRLF TAB `spf=...` each), as mail-auth writes them but for
    /// the `smtp.helo=` and null-sender `smtp.mailfrom=` values, which it leaves unquoted
    /// (`<>`, `[192.0.2.1]`) or strips of what a token cannot hold: they are written as RFC
    /// 8601 pvalues here (a token, else a quoted string).
    fn spf_text(&self, spf: &Spf) -> String {
        // The HELO name in mail-auth's comments: ASCII, as it must be (anything else `?`).
        let helo_ascii: String = spf
            .helo
            .chars()
            .map(|c| if c.is_ascii() { c } else { '?' })
            .collect();
        let helo = self.part(|ar| ar.with_spf_ehlo_result(&spf.helo_result, spf.ip, &helo_ascii));
        let mut text = with_value(&helo, " smtp.helo=", &quoted_pvalue(&spf.helo));
        let from = self.part(|ar| {
            ar.with_spf_mailfrom_result(&spf.mail_from_result, spf.ip, &spf.sender, &helo_ascii)
        });
        let sender = if spf.sender.is_empty() {
            "\"<>\"".to_owned()
        } else {
            address_pvalue(&spf.sender)
        };
        text.push_str(&with_value(&from, " smtp.mailfrom=", &sender));
        text
    }

    /// The verdict of a message whose DKIM signatures could not be read at all (its header
    /// section is too long).
    fn unverified(&self, spf: &Spf, why: &str) -> Verdict {
        let ar = AuthenticationResults::new(&self.hostname);
        let ours = format!(";\r\n\tdkim=policy ({why})");
        Verdict {
            field: self.field(&ar, &ours, &self.spf_text(spf)),
            reject: None,
            dkim: "policy".into(),
            dmarc: "-",
            dmarc_policy: "-",
            from_domain: "-".into(),
            arc: "-",
        }
    }

    /// `Authentication-Results: ` + our authserv-id + `before` + mail-auth's parts + `after`
    /// (each part starting with `;` and a folding CRLF TAB).
    fn field(&self, ar: &AuthenticationResults<'_>, before: &str, after: &str) -> String {
        let text = ar.to_string();
        let theirs = text.strip_prefix(self.hostname.as_str()).unwrap_or("");
        let mut field = format!(
            "Authentication-Results: {}{before}{theirs}{after}",
            self.hostname
        );
        if before.is_empty() && theirs.is_empty() && after.is_empty() {
            field.push_str("; none");
        }
        field.push_str("\r\n");
        field
    }
}

/// `text` with what follows the last `key` replaced by `value`.
fn with_value(text: &str, key: &str, value: &str) -> String {
    match text.rfind(key) {
        Some(at) => format!("{}{key}{value}", &text[..at]),
        None => text.to_owned(),
    }
}

/// A value from the client (a HELO name, a signature's tag) as an RFC 8601 pvalue: bare
/// when it is an RFC 2045 token, else a quoted string (`"` and `\` escaped, control
/// characters dropped, other than ASCII written `?`).
fn quoted_pvalue(s: &str) -> String {
    // RFC 2045's token: printable ASCII but for the tspecials.
    let token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    if token {
        return s.to_owned();
    }
    let mut q = String::from("\"");
    // ASCII only: mail readers and parsers (Python's authres) refuse UTF-8 in the field,
    // and the header section it goes into may be all ASCII.
    let ascii = s.chars().map(|c| if c.is_ascii() { c } else { '?' });
    for c in ascii.filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// An address as an RFC 8601 pvalue: bare as `local-part@domain-name` when the local part
/// is a dot-atom and the domain a plain host name, else a quoted string (an address
/// literal's brackets, a quoted local part, tspecials).
fn address_pvalue(address: &str) -> String {
    let bare = address.rsplit_once('@').is_some_and(|(local, domain)| {
        let atom_ok = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii() && crate::from_field::atext(b))
        };
        (local.is_empty() || local.split('.').all(atom_ok))
            && !domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    });
    if bare {
        address.to_owned()
    } else {
        quoted_pvalue(address)
    }
}

/// Whether `name` is a multi-label domain name (RFC 7208 §4.3: a HELO identity that is not,
/// such as an address literal, gets `none` without a lookup).
///
/// The labels as [`crate::from_field::is_host_name`] wants them: ASCII (a HELO name is in
/// A-labels, RFC 6531 §3.7.1), the top one not numeric (RFC 7208 §7.1 `toplabel`: `1.2` and
/// `192.0.2.1` are not names).
fn is_multi_label_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.contains('.') && crate::from_field::is_host_name(name)
}

/// A domain for a reply text: only the characters a domain name has, so nothing from the
/// message can change the reply.
fn pvalue(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn void_lookups_are_lookups_that_were_never_answered_with_records() {
        let v = VoidLookups::default();
        // a:nx1 (missed, never inserted), a:host (inserted), then mx:nx2 (missed) at the end.
        let no = || None;
        v.began(Lookup::Ipv4, 1, None, no);
        v.began(Lookup::Ipv4, 2, None, no);
        v.answered(Lookup::Ipv4, 2, false);
        v.began(Lookup::Mx, 3, None, no);
        assert_eq!(v.count(), 2);
        // A cached empty answer is void too; a cached answer with records is not (and mx:nx2,
        // ended by the next lookup, still counts once).
        v.began(Lookup::Ipv4, 4, Some(true), no);
        v.began(Lookup::Ipv4, 5, Some(false), no);
        assert_eq!(v.count(), 3);
        assert!(v.unseen().is_empty());
        // exists: the A cache then the AAAA cache for one name, nothing inserted: its name is
        // kept for a later look, unless an answer was in the AAAA cache.
        let e = VoidLookups::default();
        let name = |n: &str| Some(n.to_owned());
        e.began(Lookup::Ipv4, 9, None, || name("nx.example"));
        e.began(Lookup::Ipv6, 9, None, || name("nx.example"));
        e.began(Lookup::Ipv4, 10, None, || name("v6.example"));
        e.began(Lookup::Ipv6, 10, Some(false), || name("v6.example"));
        assert_eq!(e.count(), 0);
        assert_eq!(e.unseen(), ["nx.example"]);
        // An empty answer inserted counts once.
        let i = VoidLookups::default();
        i.began(Lookup::Ptr, 7, None, no);
        i.answered(Lookup::Ptr, 7, true);
        assert_eq!(i.count(), 1);
    }

    #[test]
    fn record_texts_are_read_as_the_rfcs_say() {
        assert!(is_spf_record("v=spf1 -all") && is_spf_record("V=SPF1") && is_spf_record("v=spf1"));
        assert!(
            !is_spf_record("v=spf10 -all") && !is_spf_record("v=spf") && !is_spf_record(" v=spf1")
        );
        assert!(dmarc_sampled("v=DMARC1; p=reject; pct=0"));
        assert!(dmarc_sampled("v = DMARC1;p=reject;PCT = 99"));
        assert!(!dmarc_sampled("v=DMARC1; p=reject; pct=100"));
        assert!(!dmarc_sampled("v=DMARC1; p=reject; pct=x"));
        assert!(!dmarc_sampled("v=DMARC1; p=reject"));
        assert!(!dmarc_sampled("v=spf1 pct=0"));
    }

    #[test]
    fn author_domains_are_every_from_address_domain() {
        let of = |v: &[&str]| Authors::of(&v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        assert_eq!(of(&[]), Authors::None);
        assert_eq!(of(&[" undisclosed:;"]), Authors::None);
        assert_eq!(
            of(&[" a@x.test, b@X.test.", " c@y.test"]),
            Authors::Domains(vec!["x.test".into(), "y.test".into()])
        );
        assert_eq!(
            of(&[" ceo@(hidden)bank.test"]),
            Authors::Domains(vec!["bank.test".into()])
        );
        for bad in [
            "ceo@",
            " b@fail.test <>",
            "a@[127.0.0.1]",
            "a@x..test",
            "nodomain",
            "",
        ] {
            assert!(matches!(of(&[bad]), Authors::Malformed(_)), "{bad}");
        }
        let five = "a@1.test, a@2.test, a@3.test, a@4.test, a@5.test";
        assert!(matches!(of(&[five]), Authors::Malformed(w) if w.starts_with("5 From: domains")));
        assert!(
            matches!(of(&["a@1.test, a@2.test, a@3.test, a@4.test"]), Authors::Domains(d) if d.len() == 4)
        );
    }

    #[test]
    fn values_from_outside_are_written_as_pvalues() {
        assert_eq!(quoted_pvalue("mail.example.org"), "mail.example.org");
        assert_eq!(quoted_pvalue("[192.0.2.1]"), "\"[192.0.2.1]\"");
        assert_eq!(quoted_pvalue("a,b"), "\"a,b\"");
        assert_eq!(quoted_pvalue("q\"\\x"), "\"q\\\"\\\\x\"");
        assert_eq!(quoted_pvalue("s\u{e9}l"), "\"s?l\"");
        assert_eq!(quoted_pvalue(""), "\"\"");
        assert_eq!(address_pvalue("a.b+c@x.example"), "a.b+c@x.example");
        assert_eq!(address_pvalue("u@[127.0.0.1]"), "\"u@[127.0.0.1]\"");
        assert_eq!(
            address_pvalue("\"a b\"@x.example"),
            "\"\\\"a b\\\"@x.example\""
        );
        assert!(!is_multi_label_domain("f\u{fc}.test"));
        assert!(!is_multi_label_domain("1.2") && !is_multi_label_domain("-a.test"));
        assert!(is_multi_label_domain("mail.example.org."));
    }

    #[test]
    fn key_name_reads_a_str_back() {
        assert_eq!(
            key_name("nx1.example.test").as_deref(),
            Some("nx1.example.test")
        );
        let boxed: Box<str> = "a.b".into();
        assert_eq!(key_name(&boxed).as_deref(), Some("a.b"));
        assert_eq!(key_name(""), Some(String::new()));
        // Not a name: an address key, or bytes without the terminator.
        let ip: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(key_name(&ip), None);
        assert_eq!(key_name(&7u32), None);
    }

    #[test]
    fn the_cache_keeps_entries_until_their_time_and_stays_bounded() {
        let c: Cache<Box<str>, u32> = Cache::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        c.insert("a".into(), 1, later);
        assert_eq!(c.get("a"), Some(1));
        // TTL 0 (what the test DNS serves): not kept.
        c.insert("b".into(), 2, Instant::now());
        assert_eq!(c.get("b"), None);
        c.insert("c".into(), 3, Instant::now() + Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get("c"), None, "expired");
        for (i, k) in ["d", "e", "f", "g", "h"].into_iter().enumerate() {
            c.insert(k.into(), i as u32, later);
            assert!(c.lock().len() <= 3);
        }
        assert_eq!(c.get("h"), Some(4));
        assert_eq!(c.remove("h"), Some(4));
        assert_eq!(c.get("h"), None);
    }

    #[test]
    fn keywords_are_rfc_8601s() {
        assert_eq!(spf_keyword(SpfResult::SoftFail), "softfail");
        assert_eq!(spf_keyword(SpfResult::TempError), "temperror");
        assert_eq!(dkim_keyword(&DkimResult::Neutral(timed_out())), "neutral");
        assert_eq!(
            dmarc_keyword(&DmarcResult::PermError(timed_out())),
            "permerror"
        );
        assert_eq!(pvalue("a.b-c_d;\r\n x=y"), "a.b-c_dxy");
    }
}
