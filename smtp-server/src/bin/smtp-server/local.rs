//! Storing an incoming message: held in memory or, when longer, streamed to temporary files
//! as it arrives (one for the local mailboxes, one for the queue when some recipients are
//! remote), then committed to every local mailbox and enqueued, all durably, before the `250`.
//!
//! The local copy starts with `Return-Path:` and `Received:`; the queued copy with `Received:`
//! only (the final destination adds `Return-Path:`). The message itself passes through a
//! [`HeaderFilter`] on the way to both: its own `Return-Path:` fields are dropped and, for mail
//! our users submit, a missing `Date:` and `Message-ID:` added (see [`crate::headers`]).
//! The filter also drops `Authentication-Results:` fields claiming our host name. For mail
//! our users send, the queued copy is DKIM-signed after the last chunk and before
//! the commit (see [`crate::dkim`]).
//!
//! A message is held in memory while it is at most [`HOLD_IN_MEMORY`] octets (and all the
//! sessions together hold at most [`HOLD_TOTAL`]): its files are made, written and committed
//! at the end, in the one blocking task of [`Incoming::commit`], so receiving the usual
//! message costs the runtime's threads no file system call and the message is written once.
//! For mail whose sender is checked ([`crate::inbound_auth`]) or that is signed, the copies
//! are begun without their prefixes: the held message is checked and signed in memory, and
//! written after the prefixes (with the `Authentication-Results:` field, after the
//! signatures). A longer message is spilled to the files as it grows (opening them then);
//! when checked or signed it is read back for that ([`Incoming::read_for_verify`]) and the
//! local prefix put in front of the local copy, which copies it once more on disk, while the
//! queued copy's front (the signatures, the trace) is written into the queue entry ahead of
//! the one copy of the message the entry needs anyway. Otherwise its queued copy
//! is written straight into its queue entry's file ([`Queue::begin_entry`]: the header first,
//! the body's size filled in at the commit), not into a temporary file copied into the queue
//! at the end: written once, one file made instead of two. Either copy is invisible
//! until committed, and a temporary file is removed when its [`Incoming`] is dropped, so a
//! failure at any point leaves nothing half-written.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mailstore::queue::{PendingEntry, Queue, QueueEntry, QueueId};
use mailstore::{DeliveryId, MailboxName, PendingMessage, Store};

use crate::headers::{HeaderFilter, Missing};
use crate::{dkim, inbound_auth};

/// The longest message held in memory instead of being written as it arrives (see the module
/// doc).
pub const HOLD_IN_MEMORY: usize = 128 * 1024;

/// The most octets all messages being received hold in memory together; past it, messages
/// are written to their files as they arrive.
pub const HOLD_TOTAL: usize = 64 << 20;

/// Octets held by all [`Held`] buffers.
static HELD_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// Room left for what the header filter adds to a message (`Date:`, `Message-ID:`) when
/// [`Incoming::would_open`] judges whether the next chunk still fits in memory.
const FILTER_SLACK: usize = 4096;

/// A message held in memory, its buffer's capacity counted in [`HELD_TOTAL`] while it lives.
#[derive(Debug, Default)]
struct Held(Vec<u8>, /* octets counted in HELD_TOTAL */ usize);

impl Held {
    /// Appends `bytes` if this message and all of them together stay within their bounds.
    fn try_extend(&mut self, bytes: &[u8]) -> bool {
        let needed = self.0.len() + bytes.len();
        if needed > HOLD_IN_MEMORY {
            return false;
        }
        let cap = self.0.capacity();
        let grow = if needed > cap {
            // What `Vec` grows to: at least double, capped at the bound.
            needed.max(cap * 2).min(HOLD_IN_MEMORY) - cap
        } else {
            0
        };
        if grow > 0 {
            let before = HELD_TOTAL.fetch_add(grow, Ordering::Relaxed);
            if before + grow > HOLD_TOTAL {
                HELD_TOTAL.fetch_sub(grow, Ordering::Relaxed);
                return false;
            }
            self.1 += grow;
            self.0.reserve_exact(cap + grow - self.0.len());
        }
        self.0.extend_from_slice(bytes);
        true
    }

    /// Whether `len` more octets would fit, as [`try_extend`](Self::try_extend) would find.
    fn fits(&self, len: usize) -> bool {
        let needed = self.0.len() + len + FILTER_SLACK;
        needed <= HOLD_IN_MEMORY
            && (needed <= self.0.capacity()
                || HELD_TOTAL.load(Ordering::Relaxed) + needed.max(self.0.capacity() * 2)
                    <= HOLD_TOTAL)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD_TOTAL.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The files of a message not yet opened: where, and what they begin with.
struct ToOpen {
    store: Arc<dyn Store>,
    queue: Queue,
    local_prefix: Option<String>,
    queue_prefix: Option<String>,
    /// The queued copy may be written straight into its queue entry's file (nothing is put
    /// in front of it at the commit).
    direct: bool,
}

impl std::fmt::Debug for ToOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToOpen")
            .field("local", &self.local_prefix.is_some())
            .field("queued", &self.queue_prefix.is_some())
            .finish_non_exhaustive()
    }
}

/// A message being received.
#[derive(Debug)]
pub struct Incoming {
    /// The filtered message, while it is held in memory.
    held: Option<Held>,
    /// The files, until they are opened (see [`Incoming::open`]).
    to_open: Option<ToOpen>,
    local: Option<PendingMessage>,
    /// The queued copy's file, once the message no longer fits in memory.
    queued: Option<QueuedFile>,
    /// The queue entry, when some recipients are remote.
    entry: Option<QueueEntry>,
    filter: HeaderFilter,
    /// The filtered chunk, reused.
    out: Vec<u8>,
    size: u64,
    /// The header filter has written its last bytes (see [`finish`](Incoming::finish)).
    finished: bool,
}

/// Where the queued copy of a message too long for memory is written.
#[derive(Debug)]
enum QueuedFile {
    /// A temporary file, copied into the queue entry at the commit, with whatever goes in
    /// front of it (signatures, trace) written ahead of it there.
    Temporary(PendingMessage),
    /// The queue entry's own file, written as the message arrives and published at the
    /// commit (see [`Queue::begin_entry`]); nothing can be put in front of it.
    Entry(PendingEntry),
}

impl QueuedFile {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            QueuedFile::Temporary(m) => m.write_all(bytes),
            QueuedFile::Entry(e) => e.write_all(bytes),
        }
    }

    /// The octets of the message written so far (the entry's header not counted).
    fn len(&self) -> u64 {
        match self {
            QueuedFile::Temporary(m) => m.len(),
            QueuedFile::Entry(e) => e.len(),
        }
    }

    /// The temporary file, to read back or put a front on.
    fn temporary(&mut self) -> Option<&mut PendingMessage> {
        match self {
            QueuedFile::Temporary(m) => Some(m),
            QueuedFile::Entry(_) => None,
        }
    }
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Stored {
    /// How many mailboxes got the message.
    pub mailboxes: usize,
    /// Where each copy is, for the log: `alice/3` (spool number), `alice/new/NAME` (Maildir).
    pub places: Vec<String>,
    /// The queue entry, when some recipients are remote.
    pub queue_id: Option<QueueId>,
    /// Whether the queued copy was signed, and how (when keys were given).
    pub signed: Option<dkim::Outcome>,
}

impl Incoming {
    /// A message for the local mailboxes (its copy begins with `local_prefix`, the trace
    /// headers), for the queue (`queue_prefix`), or both; `missing` are the fields to add to
    /// the message when it lacks them; `authserv_id` is our host name, whose
    /// `Authentication-Results:` fields are dropped from the message. No file is made yet
    /// (see the module doc). `entry` is the queue entry for the remote recipients, which
    /// [`commit`](Self::commit) enqueues the queued copy with. Unless `trace_at_commit` (a
    /// [`Trace`] will be given to the commit), a message too long for memory is written
    /// straight into that entry's file ([`Queue::begin_entry`]) instead of a temporary file
    /// copied into the queue at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        store: Arc<dyn Store>,
        queue: Queue,
        local_prefix: Option<String>,
        queue_prefix: Option<String>,
        entry: Option<QueueEntry>,
        trace_at_commit: bool,
        missing: Option<Missing>,
        authserv_id: &str,
    ) -> Incoming {
        Incoming {
            held: Some(Held::default()),
            to_open: Some(ToOpen {
                store,
                queue,
                local_prefix,
                queue_prefix,
                direct: !trace_at_commit,
            }),
            local: None,
            queued: None,
            entry,
            filter: HeaderFilter::new(missing).drop_auth_results_of(authserv_id),
            out: Vec::new(),
            size: 0,
            finished: false,
        }
    }

    /// Makes the temporary files and writes their prefixes, once. It blocks.
    fn open(&mut self) -> std::io::Result<()> {
        let Some(to) = self.to_open.take() else {
            return Ok(());
        };
        let open = |p: mailstore::Result<PendingMessage>, prefix: &str| {
            let mut m = p.map_err(std::io::Error::other)?;
            m.write_all(prefix.as_bytes())?;
            Ok::<_, std::io::Error>(m)
        };
        if let Some(p) = &to.local_prefix {
            self.local = Some(open(to.store.begin(), p)?);
        }
        match (&to.queue_prefix, self.entry.as_ref().filter(|_| to.direct)) {
            (Some(p), Some(entry)) => {
                let mut e = to.queue.begin_entry(entry).map_err(std::io::Error::other)?;
                e.write_all(p.as_bytes())?;
                self.queued = Some(QueuedFile::Entry(e));
            }
            (Some(p), None) => {
                self.queued = Some(QueuedFile::Temporary(open(to.queue.begin(), p)?));
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// True when writing `len` more octets might make the files (a blocking call): the
    /// message, or all that sessions hold, may no longer fit in memory. It errs on the side of
    /// true.
    pub fn would_open(&self, len: usize) -> bool {
        self.to_open.is_some() && self.held.as_ref().is_none_or(|h| !h.fits(len))
    }

    /// Appends a chunk of the message (as received, after dot-unstuffing), through the
    /// header filter.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.size += chunk.len() as u64;
        if self.filter.in_body() {
            return self.write_out(chunk);
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.filter.feed(chunk, &mut out);
        let r = self.write_out(&out);
        self.out = out;
        r
    }

    /// Opens the files, writes what is held in memory to them, and stops holding.
    fn spill(&mut self) -> std::io::Result<()> {
        self.open()?;
        if let Some(held) = self.held.take() {
            self.write_files(&held.0)?;
        }
        Ok(())
    }

    fn write_out(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(held) = &mut self.held {
            if held.try_extend(bytes) {
                return Ok(());
            }
            self.spill()?;
        }
        self.write_files(bytes)
    }

    fn write_files(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(m) = &mut self.local {
            m.write_all(bytes)?;
        }
        if let Some(q) = &mut self.queued {
            q.write_all(bytes)?;
        }
        Ok(())
    }

    /// The `Received:` fields counted in the message's own header section.
    pub fn received_count(&self) -> usize {
        self.filter.received
    }

    /// The end of the message: a message that was all header section gets its missing fields
    /// now. Done once; [`sign`](Self::sign) and [`commit`](Self::commit) call it.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut tail = Vec::new();
        self.filter.finish(&mut tail);
        if tail.is_empty() {
            Ok(())
        } else {
            self.write_out(&tail)
        }
    }

    /// The size of the message written so far (the local copy's, or the queued one's).
    pub fn size(&self) -> u64 {
        let written = match (&self.local, &self.queued) {
            (Some(m), _) => m.len(),
            (None, Some(q)) => q.len(),
            (None, None) => 0,
        };
        written + self.held.as_ref().map_or(0, |h| h.0.len() as u64)
    }

    /// Reads the message back for the sender checks (see [`crate::inbound_auth`]): whole when it
    /// is at most `max_size` octets, else only its header section. Call it after the last chunk;
    /// it blocks (the file is read).
    ///
    /// # Errors
    /// Reading the temporary file failed; the message must not be committed then.
    pub fn read_for_verify(&mut self, max_size: u64) -> std::io::Result<inbound_auth::Body<'_>> {
        self.finish()?;
        let size = self.size();
        if size > max_size {
            self.spill()?;
        }
        if let Some(held) = &self.held {
            return Ok(inbound_auth::Body::Whole(Cow::Borrowed(&held.0)));
        }
        let queued_entry = matches!(self.queued, Some(QueuedFile::Entry(_)));
        let Some(m) =
            (self.local.as_mut()).or(self.queued.as_mut().and_then(QueuedFile::temporary))
        else {
            if queued_entry {
                // `begin` was told no check was to read the message.
                return Err(std::io::Error::other(
                    "the message was written straight into its queue entry, not to be read back",
                ));
            }
            return Ok(inbound_auth::Body::Whole(Cow::Borrowed(&[])));
        };
        let mut r = m.reader()?;
        if size <= max_size {
            let mut all = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            r.read_to_end(&mut all)?;
            return Ok(inbound_auth::Body::Whole(Cow::Owned(all)));
        }
        let limit = inbound_auth::MAX_HEADER_SECTION;
        let mut head = Vec::new();
        (&mut r).take(limit as u64 + 4).read_to_end(&mut head)?;
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .filter(|&e| e <= limit);
        Ok(inbound_auth::Body::TooLarge {
            header: end.map(|e| {
                head.truncate(e);
                head
            }),
            size,
        })
    }

    /// Commits: the local copy to `mailboxes` (duplicates removed), then the queued copy with
    /// the entry given to [`begin`](Self::begin). With `trace`, the copies were begun without their trace prefixes (see the
    /// module doc), which are put in front first, the queued copy DKIM-signed with the
    /// trace's keys ([`trace_fronts`] for a message held in memory, [`trace_spilled`] for one
    /// written to its files). A message held in memory is queued from there (the queue
    /// entry's file is its only file). All the blocking file system work (and the signing)
    /// runs in one task on tokio's blocking pool.
    ///
    /// Errors are already phrased for the log; the caller answers `451 4.3.0` (or `552` for
    /// [`dkim::SignError::HeaderTooLong`]). When some mailbox fails while others succeeded,
    /// the whole message is refused (the client sends it again, so the successful mailboxes
    /// may get a second copy: duplicated mail is better than lost mail).
    pub async fn commit(
        mut self,
        store: Arc<dyn Store>,
        queue: Queue,
        mut mailboxes: Vec<MailboxName>,
        trace: Option<Trace>,
    ) -> Result<Stored, CommitError> {
        tokio::task::spawn_blocking(move || {
            let cannot = |e| CommitError::Store(format!("cannot store message: {e}"));
            self.finish().map_err(cannot)?;
            let mut stored = Stored::default();
            // A message still in memory: the local copy is written once after its prefix, the
            // queued copy enqueued from memory (its one file is the queue entry's).
            let mut queued_bytes = None;
            // For a spilled message with a trace: what goes in front of its queued copy.
            let mut queued_front_spilled: Option<String> = None;
            if let Some(held) = self.held.take() {
                let queue_prefix = self.to_open.as_mut().and_then(|t| t.queue_prefix.take());
                self.open().map_err(cannot)?;
                let wants_queue = queue_prefix.is_some();
                let (local_front, queued_front) = match trace {
                    Some(t) => {
                        let (outcome, front) =
                            trace_fronts(&held.0, wants_queue, &t).map_err(CommitError::Sign)?;
                        stored.signed = outcome;
                        (t.local, front)
                    }
                    None => (String::new(), queue_prefix.unwrap_or_default()),
                };
                if let Some(m) = &mut self.local {
                    m.write_all(local_front.as_bytes())
                        .and_then(|()| m.write_all(&held.0))
                        .map_err(cannot)?;
                }
                if wants_queue {
                    let mut all = Vec::with_capacity(queued_front.len() + held.0.len());
                    all.extend_from_slice(queued_front.as_bytes());
                    all.extend_from_slice(&held.0);
                    queued_bytes = Some(all);
                }
            } else {
                self.open().map_err(cannot)?;
                if trace.is_some() && matches!(self.queued, Some(QueuedFile::Entry(_))) {
                    // `begin` was told no front was to be added.
                    return Err(CommitError::Store(
                        "cannot store message: its queue entry was written without its trace"
                            .into(),
                    ));
                }
                if let Some(t) = trace {
                    let queued = self.queued.as_mut().and_then(QueuedFile::temporary);
                    let (signed, front) =
                        trace_spilled(&mut self.local, queued, t).map_err(CommitError::Sign)?;
                    stored.signed = signed;
                    queued_front_spilled = front;
                }
            }
            let Incoming {
                local,
                queued,
                entry,
                ..
            } = self;
            if let Some(mut m) = local {
                dedup(&mut mailboxes);
                if !mailboxes.is_empty() {
                    let results = store
                        .commit(&mut m, &mailboxes)
                        .map_err(|e| CommitError::Store(e.to_string()))?;
                    for (mb, r) in mailboxes.iter().zip(results) {
                        match r {
                            Ok(id) => {
                                stored.mailboxes += 1;
                                stored.places.push(place(mb, &id));
                            }
                            Err(e) => return Err(CommitError::Store(format!("mailbox {mb}: {e}"))),
                        }
                    }
                }
            }
            if let Some(entry) = entry {
                let id = match (queued_bytes, queued) {
                    (Some(bytes), _) => Some(queue.enqueue(&entry, &bytes)),
                    (None, Some(QueuedFile::Temporary(mut m))) => {
                        let front = queued_front_spilled.as_deref().unwrap_or("");
                        Some(queue.enqueue_pending_after(&entry, front.as_bytes(), &mut m))
                    }
                    // Written as it arrived, with this entry.
                    (None, Some(QueuedFile::Entry(e))) => Some(e.commit()),
                    (None, None) => None,
                };
                if let Some(id) = id {
                    stored.queue_id =
                        Some(id.map_err(|e| CommitError::Store(format!("queue: {e}")))?);
                }
            }
            Ok(stored)
        })
        .await
        .map_err(|e| CommitError::Store(format!("storage task failed: {e}")))?
    }
}

/// The trace prefixes for [`Incoming::commit`] of copies begun without them, and the keys
/// to sign the queued copy with.
pub struct Trace {
    /// In front of the local copy.
    pub local: String,
    /// In front of the queued copy (and signed with it).
    pub queued: String,
    /// Sign the queued copy (see [`crate::dkim`]).
    pub keys: Option<Arc<dkim::Keys>>,
    /// For a logged-in submitter's message: the `From:` addresses it may be signed for
    /// ([`dkim::sign`]).
    pub from_allowed: Option<Arc<dkim::FromAllowed>>,
}

/// Why [`Incoming::commit`] failed.
#[derive(Debug)]
pub enum CommitError {
    /// Signing failed (or the header section is too long to sign).
    Sign(dkim::SignError),
    /// Storing failed.
    Store(String),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Sign(e) => e.fmt(f),
            CommitError::Store(e) => f.write_str(e),
        }
    }
}

/// For a message `held` in memory: the front of its queued copy (its signatures, when the
/// trace has keys and the message is queued, then the trace's queued prefix) and the signing's
/// outcome. The local copy's front is the trace's local prefix.
///
/// # Errors
/// As [`dkim::sign`].
fn trace_fronts(
    held: &[u8],
    queued: bool,
    trace: &Trace,
) -> Result<(Option<dkim::Outcome>, String), dkim::SignError> {
    let prefix = trace.queued.as_bytes();
    let outcome = match trace.keys.as_ref().filter(|_| queued) {
        Some(keys) => Some(dkim::sign(
            keys,
            trace.from_allowed.as_deref(),
            prefix.chain(held),
        )?),
        None => None,
    };
    let front = queued_front(&outcome, trace);
    Ok((outcome, front))
}

/// What goes in front of the queued copy: the signature fields of a signing outcome (none
/// when not signed), then the trace's queued prefix.
fn queued_front(outcome: &Option<dkim::Outcome>, trace: &Trace) -> String {
    match outcome {
        Some(dkim::Outcome::Signed { fields, .. }) => format!("{fields}{}", trace.queued),
        _ => trace.queued.clone(),
    }
}

/// For a message already written to its files: reads the queued copy back to sign it when
/// the trace has keys, puts the trace's local prefix in front of the local copy (which copies
/// it once on disk), and returns the outcome and what goes in front of the queued copy (the
/// signatures first), which the queue entry is written with (the one copy of the queued
/// message). It blocks.
///
/// # Errors
/// As [`dkim::sign`], or [`dkim::SignError::Io`] when reading or writing fails; the message
/// must not be committed then.
fn trace_spilled(
    local: &mut Option<PendingMessage>,
    queued: Option<&mut PendingMessage>,
    trace: Trace,
) -> Result<(Option<dkim::Outcome>, Option<String>), dkim::SignError> {
    let io = dkim::SignError::Io;
    let prefix = trace.queued.as_bytes();
    let has_queued = queued.is_some();
    let outcome = match (queued, &trace.keys) {
        (Some(m), Some(keys)) => Some(dkim::sign(
            keys,
            trace.from_allowed.as_deref(),
            prefix.chain(m.reader().map_err(io)?),
        )?),
        _ => None,
    };
    let store = |e: mailstore::Error| dkim::SignError::Io(std::io::Error::other(e));
    if let Some(m) = local {
        m.prepend(trace.local.as_bytes()).map_err(store)?;
    }
    // The queued copy's front goes in front in the queue entry itself (one copy, not two).
    let front = has_queued.then(|| queued_front(&outcome, &trace));
    Ok((outcome, front))
}

/// Delivers a message held in memory (a bounce) to one local mailbox, durably; where it is,
/// for the log (see [`place`]).
pub async fn deliver_bytes(
    store: Arc<dyn Store>,
    mailbox: MailboxName,
    message: Vec<u8>,
) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        store
            .deliver(&mailbox, &message)
            .map(|id| place(&mailbox, &id))
    })
    .await
    .map_err(|e| format!("storage task failed: {e}"))?
    .map_err(|e| e.to_string())
}

/// Where a stored copy is, for the log: `alice/3` (spool number), `alice/new/NAME` (Maildir).
pub fn place(mailbox: &MailboxName, id: &DeliveryId) -> String {
    match id {
        DeliveryId::Spool(n) => format!("{mailbox}/{n}"),
        DeliveryId::Maildir(name) => format!("{mailbox}/new/{name}"),
        _ => mailbox.to_string(),
    }
}

/// Removes repeated mailboxes, keeping the first of each (one copy per mailbox).
pub fn dedup(mailboxes: &mut Vec<MailboxName>) {
    let mut seen = std::collections::HashSet::new();
    mailboxes.retain(|m| seen.insert(m.clone()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mailstore::queue::Envelope;
    use mailstore::spool::Spool;

    #[test]
    fn held_messages_are_bounded_and_counted() {
        let mut h = Held::default();
        assert!(h.try_extend(&[b'x'; 1000]));
        assert!(
            h.1 >= 1000 && h.0.capacity() <= h.1,
            "{} {}",
            h.1,
            h.0.capacity()
        );
        assert!(h.try_extend(&vec![b'y'; HOLD_IN_MEMORY - 1000]));
        assert_eq!(h.0.len(), HOLD_IN_MEMORY);
        assert!(h.1 <= HOLD_IN_MEMORY && h.0.capacity() <= h.1);
        // One octet more is refused, and not counted.
        let counted = h.1;
        assert!(!h.try_extend(b"z"));
        assert_eq!(h.1, counted);
        assert!(!h.fits(1));
        assert!(Held::default().fits(1000));
    }

    #[tokio::test]
    async fn local_and_queued_copies() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let queue = Queue::open(dir.path().join(".queue")).unwrap();
        let entry = QueueEntry::new(
            Envelope::parse("MAIL FROM:<a@x>\r\nRCPT TO:<b@remote>\r\n").unwrap(),
            std::time::SystemTime::now(),
        );
        let mut inc = Incoming::begin(
            Arc::new(spool.clone()),
            queue.clone(),
            Some("Return-Path: <a@x>\r\nR: 1\r\n".into()),
            Some("R: 1\r\n".into()),
            Some(entry),
            false,
            None,
            "mx.test",
        );
        inc.write(b"Received: old\r\nSubject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert_eq!(inc.received_count(), 1);
        let alice = MailboxName::new("alice").unwrap();
        let stored = inc
            .commit(
                Arc::new(spool.clone()),
                queue.clone(),
                vec![alice.clone(), alice.clone()],
                None,
            )
            .await
            .unwrap();
        assert_eq!(stored.mailboxes, 1);
        assert_eq!(
            spool.read(&alice, 1).unwrap(),
            b"Return-Path: <a@x>\r\nR: 1\r\nReceived: old\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        let id = stored.queue_id.unwrap();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut queue.read_body(&id).unwrap(), &mut body).unwrap();
        assert_eq!(
            body,
            b"R: 1\r\nReceived: old\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        // Nothing left in the staging directories.
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
            0
        );
    }

    /// A message too long for memory, with recipients here and elsewhere: the queued copy
    /// written straight into its entry or, when a trace was to be given at the commit,
    /// through a temporary file has the same bytes, and neither way leaves a file behind.
    #[tokio::test]
    async fn spilled_message_straight_into_its_queue_entry() {
        let message: Vec<u8> = {
            let mut m = b"Subject: big\r\n\r\n".to_vec();
            while m.len() < 3 * HOLD_IN_MEMORY {
                m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdef\r\n");
            }
            m
        };
        let mut bodies = Vec::new();
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            let queue = Queue::open(dir.path().join(".queue")).unwrap();
            let entry = QueueEntry::new(
                Envelope::parse("MAIL FROM:<a@x>\r\nRCPT TO:<b@remote>\r\n").unwrap(),
                std::time::SystemTime::now(),
            );
            let mut inc = Incoming::begin(
                Arc::new(spool.clone()),
                queue.clone(),
                Some("Return-Path: <a@x>\r\nR: 1\r\n".into()),
                Some("R: 1\r\n".into()),
                Some(entry.clone()),
                !direct,
                None,
                "mx.test",
            );
            for chunk in message.chunks(16 * 1024) {
                inc.write(chunk).unwrap();
            }
            assert!(inc.held.is_none(), "spilled");
            match &inc.queued {
                Some(QueuedFile::Entry(_)) => assert!(direct, "written into the entry"),
                Some(QueuedFile::Temporary(_)) => assert!(!direct, "written to a temporary file"),
                None => panic!("no queued copy"),
            }
            let alice = MailboxName::new("alice").unwrap();
            let stored = inc
                .commit(
                    Arc::new(spool.clone()),
                    queue.clone(),
                    vec![alice.clone()],
                    None,
                )
                .await
                .unwrap();
            let mut local = b"Return-Path: <a@x>\r\nR: 1\r\n".to_vec();
            local.extend_from_slice(&message);
            assert_eq!(spool.read(&alice, 1).unwrap(), local);
            let id = stored.queue_id.unwrap();
            assert_eq!(queue.list().unwrap(), vec![(id.clone(), entry)]);
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut queue.read_body(&id).unwrap(), &mut body).unwrap();
            let mut queued = b"R: 1\r\n".to_vec();
            queued.extend_from_slice(&message);
            assert_eq!(body, queued);
            bodies.push(body);
            for staging in [".tmp", ".queue/tmp"] {
                let left = std::fs::read_dir(dir.path().join(staging)).unwrap().count();
                assert_eq!(left, 0, "{staging}");
            }
        }
        assert_eq!(bodies[0], bodies[1]);
    }
}
