//! The queue runner: delivers queued mail to remote domains, retries, bounces.
//!
//! A message just accepted is handed to it directly ([`Handoff::hand_off`], after the queue
//! file is durable: the file stays the record, the hand-off only saves a scan), and it scans
//! the queue at start, when the earliest known entry falls due, when an operator asks
//! (`wake`), when hand-offs were dropped (more than [`HANDOFF_MAX`] waiting, or every entry
//! slot taken) and at least once a minute, so nothing a crash or a restart left behind is
//! missed. It claims each due entry (so two runners, even in two processes, never send the same
//! entry at once), groups its pending recipients by domain and hands each group to
//! [`Deliverer::deliver`]. Outcomes are recorded durably per recipient, so a crash never makes a
//! delivered recipient get the message twice from the queue (only a crash between the peer's
//! `250` and the record can, which SMTP accepts: duplicates rather than loss).
//!
//! Retries: after a transient failure the entry waits 1m, 5m, 15m, 30m, 1h, 2h, then every 4h
//! (all multiplied by `--retry-base` / 1m, a hidden option for tests). When the entry is older
//! than `--queue-lifetime` after a failed attempt, its remaining recipients fail with status
//! 4.4.7 ("delivery time expired"). Failed recipients get an RFC 3464 bounce, sent to the
//! envelope sender, never to the null sender: a local sender's is delivered into its mailbox
//! after each attempt that had failures; a remote sender's is queued once per message, when
//! no recipient is pending any more (until then failures are recorded as
//! [`RcptState::Refused`]). A bounce that cannot be stored leaves its recipients `Refused`,
//! and the entry is tried again for the report alone.
//!
//! Operators: the queue tool (`smtp-server queue`, see `cmd::queue`) changes entries only
//! under their claims, moves held entries out of the runner's sight (`held/`), and asks for a
//! scan through the queue's `wake` file, which the runner polls every second.
//!
//! Local recipients in the queue (`--lmtp`, see `main`: local mail is queued, its recipients
//! as `mailbox@first-domain`) form one group of their own, [`LOCAL`], handed to the LMTP
//! server in one transaction; its per-recipient replies are outcomes like any next hop's
//! (delivered, retried, bounced). Without `--lmtp` (an entry queued before it was turned off)
//! they are stored in their mailboxes here.
//!
//! The loop guard: the deliverer's address filter refuses every address one of our own
//! listeners accepts on (see [`crate::policy::Policy::is_own_socket`]); when no address is
//! left, the recipients fail with `5.4.6`, and no connection to ourselves is ever made.

use crate::metrics;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mailstore::queue::{Queue, QueueEntry, QueueId, RcptState};
use mailstore::{MailboxName, Store};
use smtp_client::connection::{Envelope, Recipient};
use smtp_client::deliver::{Deliverer, DeliveryReport, Failure as CFailure, RcptOutcome};
use smtp_client::lmtp::Lmtp;
use smtp_client::Message;
use smtp_proto::address::{ForwardPath, MailboxBuf, ReversePath};
use tokio::sync::OwnedSemaphorePermit as EntryPermit;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn, Instrument};

use crate::bounce::{Failure, Report, Returned};
use crate::headers::{self, HeaderScanner};
use crate::policy::Policy;

/// The group of an entry's recipients in local domains: delivered by LMTP, or stored here.
/// (Not a domain name: no domain starts with NUL.)
pub const LOCAL: &str = "\0local";

/// The most entries worked on at once (each is a cheap task; the connections they make are
/// limited by [`Slots`]). Each claimed entry holds a descriptor (its directory, locked), so the
/// daemon lowers this to a quarter of its descriptor limit (see `main`).
pub const MAX_ENTRIES: usize = 4096;

/// Delivery slots: a global limit on connections at once, and one per destination domain, so
/// that slow or silent next hops of one domain (they may each hold a slot for the RFC 5321
/// timeouts, up to 10 minutes after the final dot) cannot take the slots every other
/// destination needs. A destination's slot is taken before a global one, so deliveries that
/// wait for their domain hold nothing others need.
pub struct Slots {
    global: Arc<Semaphore>,
    per_destination: usize,
    /// The semaphore of each destination, and the map's size at which idle ones are swept.
    destinations: Mutex<(HashMap<String, Arc<Semaphore>>, usize)>,
}

/// A held delivery slot (both permits).
pub struct Slot {
    _destination: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Slots {
    /// `global` deliveries at once, at most `per_destination` of them to one domain.
    pub fn new(global: usize, per_destination: usize) -> Slots {
        Slots {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_destination: per_destination.max(1),
            destinations: Mutex::new((HashMap::new(), 64)),
        }
    }

    /// Waits for a slot for `destination` (a lower-case domain).
    pub async fn acquire(&self, destination: &str) -> Option<Slot> {
        let sem = {
            let mut guard = self.destinations.lock().expect("not poisoned");
            let (map, sweep_at) = &mut *guard;
            // Forget idle destinations (nobody holds or waits for their semaphore), once the
            // map has doubled since the last sweep: amortised O(1) per delivery.
            let limit = self.per_destination;
            if map.len() >= *sweep_at {
                map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < limit);
                *sweep_at = (map.len() * 2).max(64);
            }
            map.entry(destination.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        let destination = sem.acquire_owned().await.ok()?;
        let global = self.global.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _destination: destination,
            _global: global,
        })
    }
}

/// The most hand-offs waiting for the runner; beyond, they are dropped and the runner scans
/// the queue instead (the entries are on disk either way).
pub const HANDOFF_MAX: usize = 65_536;

/// How the daemon tells the runner about new work: entries just enqueued (by id), or a
/// request to scan the queue.
#[derive(Debug, Default)]
pub struct Handoff {
    notify: Notify,
    state: Mutex<HandoffState>,
}

#[derive(Debug, Default)]
struct HandoffState {
    ids: Vec<QueueId>,
    /// A scan is wanted (hand-offs were dropped).
    scan: bool,
    /// Entries could not be started (every entry slot taken): a scan once an attempt ends.
    backlog: bool,
    /// The earliest next attempt an attempt recorded since the last scan.
    due: Option<SystemTime>,
}

impl Handoff {
    /// A new, durably enqueued entry: the runner starts it without scanning the queue.
    pub fn hand_off(&self, id: QueueId) {
        {
            let mut st = self.state.lock().expect("not poisoned");
            if st.ids.len() < HANDOFF_MAX {
                st.ids.push(id);
            } else {
                st.scan = true;
            }
        }
        self.notify.notify_one();
    }

    /// An attempt ended; the entry is due again at `due` if it stays queued.
    fn done(&self, due: Option<SystemTime>) {
        {
            let mut st = self.state.lock().expect("not poisoned");
            if let Some(d) = due {
                st.due = Some(st.due.map_or(d, |e| e.min(d)));
            }
            if std::mem::take(&mut st.backlog) {
                st.scan = true;
            }
        }
        self.notify.notify_one();
    }
}

/// The longest the runner goes without scanning the queue, however busy hand-offs keep it.
const SCAN_EVERY: Duration = Duration::from_secs(60);

/// How often the runner looks for the queue's `wake` file (see [`Relay::woken`]): a flush
/// from the queue tool is seen within this time, at the cost of one `unlink` a second.
pub const WAKE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bodies up to this size are read into memory when their entry is claimed (one read on the
/// blocking pool); larger ones are streamed from the queue file.
const SMALL_BODY: u64 = 256 * 1024;

/// The most of a message's beginning kept in memory (for a bounce's copy of the headers); the
/// body itself is streamed from the queue file when sent.
const HEAD_MAX: usize = 64 * 1024;

/// Reads a stored message's header section, scanning it (`Message-ID:` present?) and keeping
/// at most its first [`HEAD_MAX`] octets; reading stops where the header section ends, so
/// only a message with headers longer than that is read further (and not kept).
fn read_head(mut body: impl Read) -> std::io::Result<(Vec<u8>, HeaderScanner)> {
    let mut scan = HeaderScanner::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !scan.done() {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        scan.feed(&buf[..n]);
        let keep = n.min(HEAD_MAX.saturating_sub(head.len()));
        head.extend_from_slice(&buf[..keep]);
    }
    Ok((head, scan))
}

/// The queue runner's shared state.
pub struct Relay {
    /// The queue.
    pub queue: Queue,
    /// Local mailboxes, for bounces to local senders.
    pub store: Arc<dyn Store>,
    /// Who is local.
    pub policy: Arc<Policy>,
    /// The SMTP client side.
    pub deliverer: Deliverer,
    /// Our name.
    pub hostname: String,
    /// Give up after this long.
    pub lifetime: Duration,
    /// The first retry delay.
    pub retry_base: Duration,
    /// Wakes the runner (entries just enqueued, scans).
    pub notify: Arc<Handoff>,
    /// Connection slots, globally and per destination.
    pub slots: Slots,
    /// The most entries claimed at once (at most [`MAX_ENTRIES`]).
    pub max_entries: usize,
    inflight: Mutex<HashSet<QueueId>>,
    /// The next attempt time an attempt just recorded (taken by [`process`](Self::process)).
    next_attempt: Mutex<HashMap<QueueId, SystemTime>>,
    /// Entries whose last attempt could not be read or recorded (an I/O error, a full disk):
    /// not tried again before `until`, and the outcomes not yet on disk are kept here, so a
    /// recipient the peer accepted is not sent the message again on every pass.
    held: Mutex<HashMap<QueueId, Held>>,
    /// Where local recipients go (`--lmtp`); `None`: into `store`.
    lmtp: Option<Lmtp>,
}

/// An entry held back after a storage error.
#[derive(Debug, Default)]
struct Held {
    until: Option<SystemTime>,
    failures: u32,
    unsaved: Vec<(usize, RcptState)>,
}

/// `t + d`, or the latest time representable when that overflows (a huge `--queue-lifetime`
/// means "never", not a panic).
pub fn add_saturating(t: SystemTime, mut d: Duration) -> SystemTime {
    loop {
        if let Some(x) = t.checked_add(d) {
            return x;
        }
        d /= 2;
    }
}

/// The delay before retry number `attempts` (1-based).
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    const STEPS: [u32; 7] = [1, 5, 15, 30, 60, 120, 240];
    let i = (attempts.max(1) as usize - 1).min(STEPS.len() - 1);
    base.saturating_mul(STEPS[i])
}

impl Relay {
    /// A runner.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        queue: Queue,
        store: Arc<dyn Store>,
        policy: Arc<Policy>,
        deliverer: Deliverer,
        hostname: String,
        lifetime: Duration,
        retry_base: Duration,
        notify: Arc<Handoff>,
        slots: Slots,
        max_entries: usize,
    ) -> Relay {
        Relay {
            queue,
            store,
            policy,
            deliverer,
            hostname,
            lifetime,
            retry_base,
            notify,
            slots,
            max_entries: max_entries.clamp(1, MAX_ENTRIES),
            inflight: Mutex::new(HashSet::new()),
            next_attempt: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            lmtp: None,
        }
    }

    /// Local recipients are given to this LMTP server (`--lmtp`); `None`: stored here.
    pub fn with_lmtp(mut self, lmtp: Option<Lmtp>) -> Relay {
        self.lmtp = lmtp;
        self
    }

    /// Runs until `shutdown` resolves. Deliveries in flight are dropped then (their claims
    /// released, their entries due again at the next start).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let permits = Arc::new(Semaphore::new(self.max_entries));
        let mut tasks = tokio::task::JoinSet::new();
        let mut scan = true;
        let mut next_due: Option<SystemTime> = None;
        let mut last_scan = tokio::time::Instant::now();
        let mut wake_poll = last_scan + WAKE_POLL;
        loop {
            if scan {
                scan = false;
                last_scan = tokio::time::Instant::now();
                next_due = self.scan(&permits, &mut tasks).await;
            }
            let (ids, due) = {
                let mut st = self.notify.state.lock().expect("not poisoned");
                scan |= std::mem::take(&mut st.scan);
                (std::mem::take(&mut st.ids), st.due.take())
            };
            if let Some(d) = due {
                next_due = Some(next_due.map_or(d, |n| n.min(d)));
            }
            for id in ids {
                if self.inflight.lock().expect("not poisoned").contains(&id) {
                    continue;
                }
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => self.start(id, permit, &mut tasks),
                    // At the cap: a scan finds it once a slot is free.
                    Err(_) => {
                        self.notify.state.lock().expect("not poisoned").backlog = true;
                    }
                }
            }
            while tasks.try_join_next().is_some() {}
            if scan {
                continue;
            }
            // An entry that fell due while this pass ran (its time is already past) is due
            // now, not in a minute: a past time is a zero wait. Deadlines, not delays: a
            // stream of hand-offs wakes this loop all the time and must not keep pushing the
            // next scan (or the look at the wake file) away.
            let wait = next_due
                .map(|d| {
                    d.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(SCAN_EVERY)
                .clamp(Duration::from_millis(50), SCAN_EVERY);
            let scan_at = (tokio::time::Instant::now() + wait).min(last_scan + SCAN_EVERY);
            tokio::select! {
                () = &mut shutdown => break,
                () = self.notify.notify.notified() => {}
                () = tokio::time::sleep_until(scan_at) => scan = true,
                () = tokio::time::sleep_until(wake_poll) => {
                    wake_poll = tokio::time::Instant::now() + WAKE_POLL;
                    scan |= self.woken().await;
                }
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Starts an attempt at `id`.
    fn start(
        self: &Arc<Self>,
        id: QueueId,
        permit: EntryPermit,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        self.inflight
            .lock()
            .expect("not poisoned")
            .insert(id.clone());
        let me = self.clone();
        // Every line of the attempt, the client library's and the bounce's included, carries
        // the queue id in its span.
        let span = tracing::info_span!("queue", queue_id = %id);
        tasks.spawn(
            async move {
                let due = me.process(&id).await;
                me.inflight.lock().expect("not poisoned").remove(&id);
                drop(permit);
                me.notify.done(due);
            }
            .instrument(span),
        );
    }

    /// Lists the queue and starts every due entry not in flight (up to the cap; the rest
    /// waits for the next scan, which a finished attempt asks for). Returns the earliest time
    /// an entry not started is due.
    async fn scan(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Option<SystemTime> {
        let now = SystemTime::now();
        let list = {
            let q = self.queue.clone();
            tokio::task::spawn_blocking(move || q.list()).await
        };
        let mut next_due: Option<SystemTime> = None;
        match list {
            Ok(Ok(entries)) => {
                {
                    let mut held = self.held.lock().expect("not poisoned");
                    held.retain(|id, _| entries.iter().any(|(e, _)| e == id));
                }
                for (id, entry) in entries {
                    let held_until = self
                        .held
                        .lock()
                        .expect("not poisoned")
                        .get(&id)
                        .and_then(|h| h.until);
                    let due = held_until.map_or(entry.next_attempt, |h| h.max(entry.next_attempt));
                    if due > now {
                        next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        continue;
                    }
                    if self.inflight.lock().expect("not poisoned").contains(&id) {
                        continue;
                    }
                    // At the cap, the rest waits for the next pass (a finished task asks
                    // for one).
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        self.notify.state.lock().expect("not poisoned").backlog = true;
                        break;
                    };
                    self.start(id, permit, tasks);
                }
            }
            Ok(Err(e)) => error!(error = %e, "cannot list the queue"),
            Err(e) => error!(error = %e, "queue listing task failed"),
        }
        next_due
    }

    /// True when another process (the queue tool's `flush`, `release`, `bounce`) has asked
    /// for a scan now: the queue's `wake` file, looked at every [`WAKE_POLL`].
    async fn woken(&self) -> bool {
        let q = self.queue.clone();
        let taken = tokio::task::spawn_blocking(move || (q.take_wake(), q.take_notes())).await;
        let Ok((woken, notes)) = taken else {
            return false;
        };
        // What the queue tool changed, in this daemon's log (as Postfix's postsuper logs).
        for note in notes {
            info!("queue tool: {note}");
        }
        if woken {
            // Entries the tool made due may be in the 1 s hold of a claim it held.
            self.held
                .lock()
                .expect("not poisoned")
                .retain(|_, h| h.failures > 0 || !h.unsaved.is_empty());
            return true;
        }
        false
    }

    /// Holds `id` back after a storage error (growing delays, as for delivery retries),
    /// keeping `unsaved` outcomes for the next attempt.
    fn hold(&self, id: &QueueId, unsaved: Vec<(usize, RcptState)>) {
        let mut held = self.held.lock().expect("not poisoned");
        let h = held.entry(id.clone()).or_default();
        h.failures = h.failures.saturating_add(1);
        h.until = Some(add_saturating(
            SystemTime::now(),
            backoff(self.retry_base, h.failures),
        ));
        h.unsaved = unsaved;
    }

    /// One attempt at one entry. Returns when it is due again, if it stays queued.
    async fn process(&self, id: &QueueId) -> Option<SystemTime> {
        self.attempt(id).await;
        self.held
            .lock()
            .expect("not poisoned")
            .get(id)
            .and_then(|h| h.until)
            .or_else(|| self.next_attempt.lock().expect("not poisoned").remove(id))
    }

    async fn attempt(&self, id: &QueueId) {
        // Outcomes of an earlier attempt that could not be recorded.
        let carried: Vec<(usize, RcptState)> = self
            .held
            .lock()
            .expect("not poisoned")
            .get_mut(id)
            .map(|h| std::mem::take(&mut h.unsaved))
            .unwrap_or_default();
        let q = self.queue.clone();
        let id2 = id.clone();
        let claimed = tokio::task::spawn_blocking(move || {
            let claim = q.claim(&id2)?;
            // The body must be there and readable (a regular file, no link): an entry whose
            // body is not is held back, not tried. A small one is read now, so that sending
            // it (to each host tried) does no file I/O on the runtime's threads.
            let mut small = None;
            if let Some(c) = &claim {
                let mut f = c.body()?;
                let len = f
                    .metadata()
                    .map_err(|e| mailstore::Error::Io {
                        op: "stat",
                        path: c.body_path(),
                        source: e,
                    })?
                    .len()
                    .saturating_sub(c.body_offset());
                if len <= SMALL_BODY {
                    let mut b = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                    f.read_to_end(&mut b).map_err(|e| mailstore::Error::Io {
                        op: "read",
                        path: c.body_path(),
                        source: e,
                    })?;
                    small = Some(b);
                }
            }
            Ok::<_, mailstore::Error>(claim.map(|c| (c, small)))
        })
        .await;
        let (claim, small) = match claimed {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => {
                // Another runner (another process) holds it, or it is gone: not looked at
                // again for a second, so that this runner does not spin on it.
                self.restore_unsaved(id, carried);
                let mut held = self.held.lock().expect("not poisoned");
                let h = held.entry(id.clone()).or_default();
                h.until = Some(add_saturating(SystemTime::now(), Duration::from_secs(1)));
                return;
            }
            Ok(Err(e)) => {
                error!(queue_id = %id, error = %e, "cannot claim queue entry");
                self.hold(id, carried);
                return;
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "claim task failed");
                self.hold(id, carried);
                return;
            }
        };
        let entry = claim.entry().clone();
        // Nothing is sent before the stored body, which is streamed from the queue file: a
        // missing Message-ID: was added at submission, below the trace fields (see headers).
        let prefix: Vec<u8> = Vec::new();
        let body_path = claim.body_path();
        let body_offset = claim.body_offset();

        // The envelope is typed from the queue on (an entry whose stored sender or recipient
        // does not parse is corrupt and never gets here): sent as it was received.
        // Pending recipients grouped by domain (lower case), keeping their indexes.
        let mut groups: BTreeMap<String, Vec<(usize, Recipient)>> = BTreeMap::new();
        // A carried `Refused` (its report not yet stored) keeps what the report says of it.
        let mut results: Vec<(usize, RcptState, Option<Failure>)> = carried
            .into_iter()
            .filter(|(i, _)| *i < entry.envelope.rcpts.len())
            .map(|(i, s)| {
                let f = match &s {
                    RcptState::Refused {
                        reply,
                        status,
                        remote_mta,
                    } => Some(failure(
                        &entry.envelope.rcpts[i],
                        reply.clone(),
                        remote_mta.clone(),
                        status.clone(),
                    )),
                    _ => None,
                };
                (i, s, f)
            })
            .collect();
        for (i, (r, state)) in entry.recipients().enumerate() {
            if *state != RcptState::Pending || results.iter().any(|(j, _, _)| *j == i) {
                continue;
            }
            groups
                .entry(self.domain_of(&r.path))
                .or_default()
                .push((i, r.clone()));
        }

        // (recipient address, or "" for the entry as a whole; why it is deferred).
        let mut transient: Vec<(String, String)> = Vec::new();
        // Delivered recipients are recorded as soon as their domain's delivery reports them
        // (at the peer's 250, before its QUIT): a crash after that does not send them the
        // message again, and a slow domain does not delay the record of a fast one.
        let claim_cell = Mutex::new(claim);
        let recorded_early: Mutex<HashSet<usize>> = Mutex::new(HashSet::new());
        // The domains of one entry are delivered at the same time: a slow one does not hold
        // the others back.
        // With one destination the outcomes are recorded with the rest right after it
        // answered (nothing else to wait for): one envelope update instead of two.
        let single = groups.len() == 1;
        let deliveries = groups.into_iter().map(|(domain, rcpts)| {
            let env = entry
                .envelope
                .for_recipients(rcpts.iter().map(|(_, r)| r.clone()).collect());
            let (prefix, body_path, small) = (&prefix, &body_path, &small);
            let (claim_cell, recorded_early) = (&claim_cell, &recorded_early);
            async move {
                let slot = self.slots.acquire(&domain).await;
                let message = match small {
                    Some(b) => Message::bytes(b),
                    None => Message::file_from(prefix, body_path, body_offset),
                };
                let report = match (domain == LOCAL, &self.lmtp) {
                    (true, Some(lmtp)) => lmtp.deliver_message(&env, &message).await,
                    (true, None) => {
                        self.store_here(&env, small.as_deref(), body_path, body_offset)
                            .await
                    }
                    (false, _) => {
                        self.deliverer
                            .deliver_message(&domain, &env, &message)
                            .await
                    }
                };
                drop(slot);
                let delivered: Vec<usize> = rcpts
                    .iter()
                    .zip(report.rcpts.iter())
                    .filter(|(_, (_, o))| matches!(o, RcptOutcome::Delivered(_)))
                    .map(|((i, _), _)| *i)
                    .collect();
                if !delivered.is_empty() && !single {
                    tokio::task::block_in_place(|| {
                        let mut claim = claim_cell.lock().expect("not poisoned");
                        let mut early = recorded_early.lock().expect("not poisoned");
                        // One save for the domain's recipients.
                        match claim
                            .record_many(delivered.iter().map(|&i| (i, RcptState::Delivered)))
                        {
                            Ok(()) => early.extend(delivered),
                            // Recorded again with the rest at the end of the attempt.
                            Err(e) => {
                                error!(queue_id = %claim.id(), error = %e, "cannot record delivery")
                            }
                        }
                    });
                }
                (domain, rcpts, report)
            }
        });
        for (domain, rcpts, report) in futures_util::future::join_all(deliveries).await {
            let destination = self.destination(&domain);
            let via = report.delivered_via.as_ref().map(|(h, _)| h.clone());
            // For the log: host[address]:port (the LMTP socket's path as it is), and the
            // TLS protocol and cipher or "none".
            let via_addr = report.delivered_via.as_ref().map_or_else(
                || "-".to_owned(),
                |(h, a)| {
                    // The LMTP server's address as given (`unix:PATH`, `inet:IP:PORT`).
                    if a.port() == 0 || destination == "lmtp" {
                        h.clone()
                    } else {
                        format!("{h}[{}]:{}", a.ip(), a.port())
                    }
                },
            );
            let tls_text = report
                .tls_info
                .as_ref()
                .map_or_else(|| "none".to_owned(), smtp_client::TlsInfo::summary);
            if report.delivered_via.is_some() && domain != LOCAL {
                metrics::m().outbound(destination, report.tls);
            }
            for ((i, _), (path, outcome)) in rcpts.iter().zip(report.rcpts.iter()) {
                let r = &entry.envelope.rcpts[*i];
                match outcome {
                    RcptOutcome::Delivered(reply) => {
                        info!(queue_id = %id, to = %path, via = %via_addr, tls = %tls_text,
                              reply = %smtp_client::SafeReply(reply), "delivered");
                        results.push((*i, RcptState::Delivered, None));
                        metrics::m().deliveries(destination, "delivered", 1);
                    }
                    RcptOutcome::Permanent(f) => {
                        metrics::m().deliveries(destination, "bounced", 1);
                        let diag = diagnostic(f);
                        warn!(queue_id = %id, to = %path, via = %via_addr, tls = %tls_text,
                              error = %diag, "delivery failed permanently");
                        let status = f.enhanced.to_string();
                        results.push((
                            *i,
                            RcptState::Failed {
                                reply: diag.clone(),
                            },
                            Some(failure(r, diag, via.clone(), Some(status))),
                        ));
                    }
                    RcptOutcome::Transient(f) => {
                        metrics::m().deliveries(destination, "deferred", 1);
                        let diag = diagnostic(f);
                        info!(queue_id = %id, to = %path, via = %via_addr, tls = %tls_text,
                              error = %diag, "delivery deferred");
                        transient.push((address_text(&r.path), diag));
                    }
                }
            }
        }

        let now = SystemTime::now();
        let deadline = add_saturating(entry.created, self.lifetime);
        let expired = deadline <= now;
        let mut still_pending = false;
        for (i, (r, state)) in entry.recipients().enumerate() {
            if *state != RcptState::Pending || results.iter().any(|(j, _, _)| *j == i) {
                continue;
            }
            if expired {
                let address = address_text(&r.path);
                let last = transient
                    .iter()
                    .find(|(a, _)| *a == address)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_else(|| "no delivery attempt succeeded".into());
                let diag = format!(
                    "delivery time expired after {}: {last}",
                    crate::config::format_duration(self.lifetime)
                );
                warn!(queue_id = %id, to = %r.path, lifetime = %crate::config::format_duration(self.lifetime),
                      last_error = %last, "expired: delivery time is over, returning to the sender");
                // Failed for good, as a 5yz is.
                metrics::m().deliveries(self.destination(&self.domain_of(&r.path)), "bounced", 1);
                results.push((
                    i,
                    RcptState::Failed {
                        reply: diag.clone(),
                    },
                    Some(failure(r, diag, None, Some("4.4.7".into()))),
                ));
            } else {
                still_pending = true;
            }
        }

        // Who hears of failures, and when (the bounce module's policy): a local sender at
        // each attempt that has failures; a remote one (every forged sender of mail from the
        // network is one) once per message, when no recipient is pending any more. Until a
        // report that names it is stored, a failed recipient is `Refused` (an earlier
        // attempt's, a report that could not be stored); once it is, `Failed`.
        for (_, state, f) in results.iter_mut() {
            if let Some(f) = f {
                *state = RcptState::Refused {
                    reply: f.diagnostic.clone(),
                    status: f.status.clone(),
                    remote_mta: f.remote_mta.clone(),
                };
            }
        }
        let report_now = !still_pending || self.is_local_sender(&entry.envelope.from);
        let mut retry_report = false;
        if report_now {
            let mut failures: Vec<Failure> =
                results.iter().filter_map(|(_, _, f)| f.clone()).collect();
            let mut reported: Vec<usize> = results
                .iter()
                .filter(|(_, _, f)| f.is_some())
                .map(|(i, _, _)| *i)
                .collect();
            for (i, (r, state)) in entry.recipients().enumerate() {
                if let RcptState::Refused {
                    reply,
                    status,
                    remote_mta,
                } = state
                {
                    if !results.iter().any(|(j, _, _)| *j == i) {
                        failures.push(failure(
                            r,
                            reply.clone(),
                            remote_mta.clone(),
                            status.clone(),
                        ));
                        reported.push(i);
                    }
                }
            }
            // Bounce first, then record: a crash in between sends a second bounce, never
            // none. A bounce that cannot be stored now (a full disk, a broken mailbox) leaves
            // its recipients `Refused`, and the entry is tried again for the report alone.
            if !failures.is_empty() {
                // The message's beginning, for the bounce: read only now, so that entries
                // waiting for a delivery slot hold no copy of it.
                let head = {
                    let claim = claim_cell.lock().expect("not poisoned");
                    claim
                        .body()
                        .and_then(|b| {
                            read_head(b).map_err(|e| mailstore::Error::Io {
                                op: "read",
                                path: claim.body_path(),
                                source: e,
                            })
                        })
                        .map(|(h, _)| h)
                };
                let head = match head {
                    Ok(h) => h,
                    Err(e) => {
                        error!(queue_id = %id, error = %e, "cannot read the message for its bounce");
                        Vec::new()
                    }
                };
                match self.bounce(&entry, &head, failures).await {
                    Ok(()) => {
                        for (i, (r, state)) in entry.recipients().enumerate() {
                            // Returned by `queue bounce`: failed for good now, counted once
                            // (the report is made; it is recorded below).
                            if matches!(state, RcptState::Refused { reply, .. }
                                if reply.starts_with(crate::cmd::queue::RETURNED))
                                && reported.contains(&i)
                            {
                                let to = self.destination(&self.domain_of(&r.path));
                                metrics::m().deliveries(to, "bounced", 1);
                            }
                        }
                        for i in reported {
                            let reply = match entry.state(i) {
                                RcptState::Refused { reply, .. } => reply.clone(),
                                _ => results
                                    .iter()
                                    .find(|(j, _, _)| *j == i)
                                    .and_then(|(_, _, f)| f.as_ref())
                                    .map(|f| f.diagnostic.clone())
                                    .unwrap_or_default(),
                            };
                            results.retain(|(j, _, _)| *j != i);
                            results.push((i, RcptState::Failed { reply }, None));
                        }
                    }
                    Err(e) => {
                        retry_report = true;
                        transient.push((String::new(), format!("bounce not sent: {e}")));
                    }
                }
            }
        }
        let finishing = !still_pending && !retry_report;
        let still_pending = !finishing;
        let mut claim = claim_cell.into_inner().expect("not poisoned");
        let early = recorded_early.into_inner().expect("not poisoned");
        let outcomes: Vec<(usize, RcptState)> = results
            .into_iter()
            .filter(|(i, _, _)| !early.contains(i))
            .map(|(i, s, _)| (i, s))
            .collect();
        let next = (!finishing && still_pending).then(|| {
            let next = add_saturating(
                now,
                backoff(self.retry_base, entry.attempts.saturating_add(1)),
            );
            // Not past the deadline, unless it has passed (a bounce to retry).
            if deadline > now {
                next.min(deadline)
            } else {
                next
            }
        });
        let recorded = tokio::task::block_in_place(|| {
            if finishing {
                // Every recipient is done and reported: the entry goes, its states with it.
                return claim.finish();
            }
            claim.record_many(outcomes.iter().cloned())?;
            match next {
                Some(next) => claim.reschedule(next, summarize(&transient)),
                None => claim.finish(),
            }
        });
        match recorded {
            Ok(()) => {
                self.held.lock().expect("not poisoned").remove(id);
                if let Some(next) = next {
                    self.next_attempt
                        .lock()
                        .expect("not poisoned")
                        .insert(id.clone(), next);
                    info!(queue_id = %id, attempts = entry.attempts.saturating_add(1),
                          next_attempt = %utc(next), expires = %utc(deadline), "deferred");
                } else {
                    // As Postfix's "removed": the message's last line in the queue.
                    info!(queue_id = %id, "removed: every recipient done");
                }
            }
            Err(e) => {
                // The entry on disk is unchanged (or partly updated): it is due again, so
                // without a hold every pass would deliver it again at once (a full disk would
                // turn the queue into a duplicate generator).
                error!(queue_id = %id, error = %e, "cannot update queue entry");
                self.hold(id, outcomes);
            }
        }
    }

    /// True when a bounce to `sender` would be delivered here (a local mailbox), not sent
    /// through the queue.
    fn is_local_sender(&self, sender: &ReversePath) -> bool {
        let ReversePath::Mailbox(m) = sender else {
            return false;
        };
        match self.policy.route(&ForwardPath::Mailbox(m.clone()), true) {
            Ok(d) => !d.local.is_empty() && d.remote.is_empty(),
            Err(_) => false,
        }
    }

    /// Puts back outcomes taken for an attempt that did not happen (another worker held the
    /// entry).
    fn restore_unsaved(&self, id: &QueueId, carried: Vec<(usize, RcptState)>) {
        if carried.is_empty() {
            return;
        }
        if let Some(h) = self.held.lock().expect("not poisoned").get_mut(id) {
            h.unsaved = carried;
        }
    }

    /// The delivery group of a recipient: its domain, lower case, or [`LOCAL`] for a local
    /// domain (and `<Postmaster>`).
    fn domain_of(&self, path: &ForwardPath) -> String {
        match path {
            ForwardPath::Mailbox(m) if !self.policy.is_local_domain(m.domain()) => {
                m.domain().to_string().to_ascii_lowercase()
            }
            // `<Postmaster>` without a domain is ours.
            _ => LOCAL.to_owned(),
        }
    }

    /// The metrics' `destination` of a delivery group.
    fn destination(&self, domain: &str) -> &'static str {
        match (domain == LOCAL, &self.lmtp) {
            (true, Some(_)) => "lmtp",
            (true, None) => "local",
            (false, _) if self.deliverer.smarthost().is_some() => "smarthost",
            (false, _) => "mx",
        }
    }

    /// Sends a bounce for `failures` to the entry's sender: into the local mailbox when the
    /// sender is local, else through the queue. Never to the null sender. `head` is the
    /// message's beginning (at least its header section, up to [`HEAD_MAX`] octets).
    ///
    /// `Err` only for a failure worth retrying (storage); a sender that cannot get mail here
    /// (unknown local user, bad address) is logged and the bounce dropped.
    async fn bounce(
        &self,
        entry: &QueueEntry,
        head: &[u8],
        failures: Vec<Failure>,
    ) -> Result<(), String> {
        let ReversePath::Mailbox(to) = &entry.envelope.from else {
            warn!(
                failed = failures.len(),
                "no bounce: the failed message has the null sender <> (RFC 5321 6.1)"
            );
            return Ok(());
        };
        // A bounce that stays here returns the header section (bounded), one that leaves this
        // host only a few identifying fields (see bounce: backscatter).
        let stays_here = self
            .policy
            .route(&ForwardPath::Mailbox(to.clone()), true)
            .is_ok_and(|d| d.remote.is_empty());
        let now = SystemTime::now();
        // The report is text: the addresses as they are written in it.
        let sender = to.to_string();
        let to_log = format!("<{sender}>");
        let envid = entry.envelope.envid.as_ref().map(|e| e.decode());
        let message = Report {
            hostname: &self.hostname,
            sender: &sender,
            envid: envid.as_deref(),
            arrival: entry.created,
            failures: &failures,
            original: headers::header_section(head, HEAD_MAX),
            returned: if stays_here {
                Returned::Headers
            } else {
                Returned::Minimal
            },
            now,
        }
        .to_message();
        match self.send_generated(to, message).await {
            Ok(sent) => {
                let bounce_queue_id = sent
                    .queue_id
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ToString::to_string);
                info!(to = %to_log, failed = failures.len(), %bounce_queue_id,
                      stored = %if sent.places.is_empty() { "-".to_owned() } else { sent.places.join(",") },
                      "bounce sent");
                Ok(())
            }
            Err(Unsent::Undeliverable(e)) => {
                error!(to = %to_log, error = %e, "bounce dropped: the sender cannot get mail");
                Ok(())
            }
            Err(Unsent::Storage(e)) => {
                error!(to = %to_log, error = %e, "cannot store bounce; will try again");
                Err(e)
            }
        }
    }

    /// Stores the queued message in the mailboxes of `env`'s recipients (local addresses
    /// queued for LMTP, when `--lmtp` is no longer given), with `Return-Path:` in front, as
    /// a report like a next hop's: stored, refused (no such user now: permanent) or not
    /// stored (a storage error: retried).
    /// The message is `small` when it was read at the claim, else the file at `body_path`
    /// from `body_offset` on.
    async fn store_here(
        &self,
        env: &Envelope,
        small: Option<&[u8]>,
        body_path: &std::path::Path,
        body_offset: u64,
    ) -> DeliveryReport {
        let sender = match &env.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        let routes: Vec<Result<Vec<MailboxName>, String>> = env
            .rcpts
            .iter()
            .map(|r| match self.policy.route(&r.path, false) {
                Ok(d) => Ok(d.local),
                Err(e) => Err(format!("{e:?}")),
            })
            .collect();
        let mut all: Vec<MailboxName> = routes.iter().flatten().flatten().cloned().collect();
        crate::local::dedup(&mut all);
        let store = self.store.clone();
        let path = body_path.to_owned();
        let small = small.map(<[u8]>::to_vec);
        let mailboxes = all.clone();
        let stored = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let mut m = store.begin().map_err(|e| e.to_string())?;
            m.write_all(headers::return_path(&sender).as_bytes())
                .map_err(|e| e.to_string())?;
            match small {
                Some(b) => m.write_all(&b).map_err(|e| e.to_string())?,
                None => {
                    let mut body = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    body.seek(std::io::SeekFrom::Start(body_offset))
                        .and_then(|_| std::io::copy(&mut body, &mut m))
                        .map_err(|e| e.to_string())?;
                }
            }
            let results = store
                .commit(&mut m, &mailboxes)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                results
                    .into_iter()
                    .map(|r| r.err().map(|e| e.to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let failure = |class: u8, subject: u16, detail: u16, text: String| CFailure {
            reply: None,
            enhanced: smtp_proto::reply::EnhancedCode::new(class, subject, detail)
                .unwrap_or_else(|| smtp_proto::reply::EnhancedCode::new(4, 0, 0).expect("valid")),
            text,
        };
        let stored_reply = smtp_proto::reply::Reply::new(
            250,
            smtp_proto::reply::EnhancedCode::new(2, 0, 0),
            "stored here",
        )
        .expect("a valid reply");
        let rcpts = env
            .rcpts
            .iter()
            .zip(routes)
            .map(|(r, route)| {
                let outcome = match (&route, &stored) {
                    (Err(why), _) => RcptOutcome::Permanent(failure(
                        5,
                        1,
                        1,
                        format!("not a local mailbox now: {why}"),
                    )),
                    (Ok(_), Err(e)) => {
                        RcptOutcome::Transient(failure(4, 3, 0, format!("cannot store: {e}")))
                    }
                    (Ok(mbs), Ok(results)) => {
                        let err = mbs.iter().find_map(|mb| {
                            all.iter()
                                .position(|x| x == mb)
                                .and_then(|i| results.get(i).cloned().flatten())
                        });
                        match err {
                            Some(e) => RcptOutcome::Transient(failure(
                                4,
                                3,
                                0,
                                format!("cannot store: {e}"),
                            )),
                            None => RcptOutcome::Delivered(stored_reply.clone()),
                        }
                    }
                };
                (r.path.clone(), outcome)
            })
            .collect();
        DeliveryReport {
            rcpts,
            ..DeliveryReport::new(LOCAL)
        }
    }

    /// Sends a message made here (a bounce), from `<>`, to `to`.
    async fn send_generated(&self, to: &MailboxBuf, message: Vec<u8>) -> Result<Sent, Unsent> {
        let dest = self
            .policy
            .route(&ForwardPath::Mailbox(to.clone()), true)
            .map_err(|e| Unsent::Undeliverable(format!("{e:?}")))?;
        let id = headers::unique_id();
        let received = headers::local_received(&self.hostname, &id, SystemTime::now());
        let mut dest = dest;
        if self.lmtp.is_some() {
            // Local mailboxes are the LMTP server's: queued for it, as incoming mail is.
            let local = std::mem::take(&mut dest.local);
            for mb in &local {
                let address = self.policy.lmtp_address(mb).ok_or_else(|| {
                    Unsent::Undeliverable(format!("no LMTP address for {mb}: no local domain"))
                })?;
                dest.remote.push(address);
            }
        }
        let mut mailboxes: Vec<MailboxName> = dest.local;
        crate::local::dedup(&mut mailboxes);
        let mut sent = Sent::default();
        for mb in mailboxes {
            let mut m = headers::return_path("").into_bytes();
            m.extend_from_slice(received.as_bytes());
            m.extend_from_slice(&message);
            let place = crate::local::deliver_bytes(self.store.clone(), mb, m)
                .await
                .map_err(Unsent::Storage)?;
            sent.places.push(place);
        }
        if !dest.remote.is_empty() {
            let entry = QueueEntry::new(
                Envelope::new(
                    ReversePath::Null,
                    dest.remote.into_iter().map(ForwardPath::Mailbox).collect(),
                ),
                SystemTime::now(),
            );
            let mut m = received.into_bytes();
            m.extend_from_slice(&message);
            let q = self.queue.clone();
            let id = tokio::task::spawn_blocking(move || q.enqueue(&entry, &m))
                .await
                .map_err(|e| Unsent::Storage(e.to_string()))?
                .map_err(|e| Unsent::Storage(e.to_string()))?;
            self.notify.hand_off(id.clone());
            sent.queue_id = Some(id);
        }
        Ok(sent)
    }
}

/// Where a generated message went, for the log.
#[derive(Default)]
struct Sent {
    /// The local copies (see [`crate::local::place`]).
    places: Vec<String>,
    /// Its queue entry, when it goes elsewhere.
    queue_id: Option<QueueId>,
}

/// Why a generated message was not sent.
enum Unsent {
    /// The recipient cannot get mail here (bad address, unknown local user): do not retry.
    Undeliverable(String),
    /// Storing it failed (local mailbox or queue): worth retrying.
    Storage(String),
}

/// An address as the log, the queue's last error and a bounce write it: `bob@example.net`, or
/// `postmaster`.
fn address_text(path: &ForwardPath) -> String {
    match path {
        ForwardPath::Postmaster => "postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

fn failure(
    r: &Recipient,
    diagnostic: String,
    remote_mta: Option<String>,
    status: Option<String>,
) -> Failure {
    Failure {
        recipient: address_text(&r.path),
        orcpt: r
            .orcpt
            .as_ref()
            .map(|o| format!("{};{}", o.addr_type(), o.addr().decode())),
        diagnostic,
        remote_mta,
        status,
    }
}

/// The most of an entry's last error kept in the queue entry.
pub const LAST_ERROR_MAX: usize = 2048;

/// The reply as one bounded line when a server gave one (its first lines, at most
/// `bounce::DIAG_MAX` octets: what the queue records, the log and the bounce show; a next
/// hop's reply may be hundreds of lines, for each of 100 recipients), else the error text.
/// Control characters stay as the peer sent them here: the queue file %-escapes them, the
/// log escapes every line (`logsafe`), the bounce its diagnostic (RFC 6533 notation).
fn diagnostic(f: &smtp_client::deliver::Failure) -> String {
    match &f.reply {
        Some(r) => {
            let code = r.code();
            let enh = r.enhanced().map(|e| format!(" {e}")).unwrap_or_default();
            crate::bounce::summarize_reply(&format!("{code}{enh}"), r.lines())
        }
        None => crate::headers::truncate_str(&f.text, crate::bounce::DIAG_MAX).to_owned(),
    }
}

/// The deferral reasons of one attempt as the entry's last error: each distinct reason once,
/// then the first few recipients it applies to, at most [`LAST_ERROR_MAX`] octets. The
/// reason comes first so that a shortened copy (a `queue bounce` diagnostic is cut at
/// [`crate::bounce::DIAG_MAX`]) keeps it however long the addresses are.
fn summarize(transient: &[(String, String)]) -> String {
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (addr, why) in transient {
        match reasons.iter_mut().find(|(w, _)| *w == why.as_str()) {
            Some((_, addrs)) => addrs.push(addr),
            None => reasons.push((why, vec![addr.as_str()])),
        }
    }
    // Reasons for no recipient in particular (a bounce that was not sent) last, so that
    // `queue show` can read each recipient's reason back (`reply_for` in cmd/queue.rs).
    reasons.sort_by_key(|(_, addrs)| addrs.iter().all(|a| a.is_empty()));
    let parts: Vec<String> = reasons
        .into_iter()
        .map(|(why, addrs)| {
            let named: Vec<&str> = addrs.iter().copied().filter(|a| !a.is_empty()).collect();
            match named.len() {
                0 => why.to_owned(),
                n if n <= 3 => format!("{why} (for {})", named.join(", ")),
                n => format!("{why} (for {} and {} more)", named[..3].join(", "), n - 3),
            }
        })
        .collect();
    crate::headers::truncate_str(&parts.join("; "), LAST_ERROR_MAX).to_owned()
}

/// A time as RFC 3339 UTC (`2026-12-01T13:04:05Z`) for log lines; `never` past what the
/// calendar can show (a huge `--queue-lifetime` saturates far beyond the year 9999, and
/// `OffsetDateTime::from(SystemTime)` would panic there).
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "never".to_owned())
}

#[cfg(test)]
mod utc_tests {
    use super::*;

    #[test]
    fn far_future_times_do_not_panic() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::MAX / 4);
        assert_eq!(utc(far), "never");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn what_is_kept_of_failures_is_bounded() {
        // A 900-line reply keeps its first lines, within DIAG_MAX.
        let text: Vec<String> = (0..900)
            .map(|i| format!("line {i} of a long reply"))
            .collect();
        let reply =
            smtp_proto::Reply::new(452, smtp_proto::EnhancedCode::new(4, 5, 3), text.join("\n"))
                .unwrap();
        let f = smtp_client::deliver::Failure {
            reply: Some(reply),
            text: String::new(),
            enhanced: smtp_proto::EnhancedCode::new(4, 5, 3).unwrap(),
        };
        let d = diagnostic(&f);
        assert!(
            d.starts_with("452 4.5.3 line 0 of a long reply line 1 "),
            "{d}"
        );
        assert!(d.len() <= crate::bounce::DIAG_MAX, "{}", d.len());
        assert!(d.ends_with(" [895 more lines]"), "{d}");
        // One reason for 100 recipients is written once.
        let t: Vec<(String, String)> = (0..100)
            .map(|i| (format!("r{i}@remote.test"), d.clone()))
            .collect();
        let s = summarize(&t);
        assert!(s.starts_with("452 4.5.3 line 0 of a long reply"), "{s}");
        assert!(
            s.ends_with(" (for r0@remote.test, r1@remote.test, r2@remote.test and 97 more)"),
            "{s}"
        );
        // Long addresses never push the reason out of a bounce's shortened diagnostic.
        let long = |c: char| format!("{}@remote.test", c.to_string().repeat(255));
        let t: Vec<(String, String)> = ['a', 'b', 'c']
            .iter()
            .map(|&c| (long(c), "451 4.3.0 try again later".to_owned()))
            .collect();
        let s = summarize(&t);
        assert!(s.starts_with("451 4.3.0 try again later (for aaa"), "{s}");
        assert_eq!(
            summarize(&[(String::new(), "421 4.4.2 timeout".into())]),
            "421 4.4.2 timeout"
        );
        assert_eq!(
            summarize(&[
                ("x@r.test".into(), "451 a".into()),
                ("y@r.test".into(), "452 b".into()),
                ("z@r.test".into(), "451 a".into()),
            ]),
            "451 a (for x@r.test, z@r.test); 452 b (for y@r.test)"
        );
        assert!(s.len() <= LAST_ERROR_MAX);
        // Distinct reasons each once, bounded in all.
        let t: Vec<(String, String)> = (0..100)
            .map(|i| (format!("r{i}@remote.test"), format!("{i} {d}")))
            .collect();
        assert!(summarize(&t).len() <= LAST_ERROR_MAX);
    }

    #[test]
    fn backoff_grows_then_caps() {
        let m = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9).map(|a| backoff(m, a).as_secs() / 60).collect();
        assert_eq!(got, [1, 5, 15, 30, 60, 120, 240, 240, 240]);
    }

    /// A reader that fails when read past `limit`: proves the body is never read.
    struct Limited<'a>(&'a [u8], usize);

    impl Read for Limited<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 == 0 {
                return Err(std::io::Error::other("read past the header section"));
            }
            let n = buf.len().min(self.0.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 -= n;
            Ok(n)
        }
    }

    #[test]
    fn read_head_stops_at_the_header_section() {
        let mut message = b"Received: x\r\nMessage-ID: <a@b>\r\n\r\n".to_vec();
        let headers = message.len();
        message.extend(std::iter::repeat_n(b'x', 1 << 20));
        // Reads come in 5-octet pieces, so the reader stops within 5 octets of the end.
        struct Small<'a>(Limited<'a>);
        impl Read for Small<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(5);
                self.0.read(&mut buf[..n])
            }
        }
        let (head, scan) = read_head(Small(Limited(&message, headers + 5))).unwrap();
        assert!(scan.has_message_id);
        assert_eq!(scan.received, 1);
        assert_eq!(
            headers::header_section(&head, HEAD_MAX),
            &message[..headers]
        );

        // Headers only (no empty line): all of it, and no Message-ID.
        let (head, scan) = read_head(&b"Subject: s\r\n"[..]).unwrap();
        assert!(!scan.has_message_id);
        assert_eq!(head, b"Subject: s\r\n");
    }

    #[test]
    fn read_head_keeps_at_most_head_max() {
        let mut message = Vec::new();
        while message.len() < 3 * HEAD_MAX {
            message.extend_from_slice(b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        message.extend_from_slice(b"Message-ID: <late@b>\r\n\r\nbody\r\n");
        let (head, scan) = read_head(&message[..]).unwrap();
        assert_eq!(head.len(), HEAD_MAX);
        assert_eq!(head, &message[..HEAD_MAX]);
        // The scan still saw the whole header section.
        assert!(scan.has_message_id);
    }
}
