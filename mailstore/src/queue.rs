//! The durable outbound queue: mail for remote domains, kept until delivered or bounced.
//!
//! # Layout
//!
//! ```text
//! <dir>/tmp/<id>          an entry being written (or its next version), or a PendingMessage
//! <dir>/entries/<id>      an entry: one file, its header (the envelope) then the body
//! <dir>/entries/<id>/     an entry of version 1: a directory with `body` and
//!                         `envelope` (still read, claimed, updated and delivered)
//! <dir>/held/<id>         an entry put on hold by an operator: as in entries/, never due
//! <dir>/trash/<id>/       a finished entry of version 1 being removed
//! <dir>/corrupt/<id>      entries that could not be read, moved aside for an operator
//! <dir>/wake              present when an operator asked the runner to look again now
//! <dir>/notes             what operators' tools did, for the runner's log (see below)
//! ```
//!
//! An entry (version 3) is one file: its header (see [`QueueEntry::encode`]), with
//! `mailstore-queue 3` as its first line and `body-size <octets>` as its last field before
//! `end`, then the message exactly as received. The body starts at
//! [`Claim::body_offset`]; [`Queue::read_body`] and [`Claim::body`] return it positioned
//! there. A file whose length is not the header's plus `body-size` (cut short by a crash of
//! the machine, say) is corrupt and moved aside.
//!
//! # Versions
//!
//! - Version 3 (written now): the envelope is typed ([`Envelope`], shared with the server
//!   library and the client) and stored as its text form, SMTP command lines: one `MAIL FROM:`
//!   line, then a `RCPT TO:` line and a `state` line per recipient (see
//!   [`smtp_proto::envelope`]), read back with the SMTP parser.
//! - Version 2 (one file, as version 3) and version 1 (a directory per entry, with `body` and
//!   `envelope`), written by daemons before version 3, are still read, claimed, updated and
//!   delivered: their envelope is text fields (`sender`, `rcpt`, `notify`, `orcpt`, `ret`,
//!   `envid`; see [`QueueEntry::encode_v1`]) parsed into the typed values as the entry is read.
//!   A version 2 entry is rewritten as version 3 at its first update; a version 1 entry stays
//!   a directory with a version 1 `envelope` until it is finished: nothing converts it.
//! - A field that does not parse (a sender, a recipient, a DSN parameter) makes the entry
//!   corrupt, as any damage does: it is moved to `corrupt/` and logged, never delivered with
//!   another sender (the null sender would silence its bounces) or without a recipient.
//! - A daemon before version 3 reading a version 3 entry finds an unknown first line and
//!   refuses it as corrupt (moved aside, not misread); a newer version is refused here the
//!   same way.
//!
//! # Hold and wake
//!
//! An entry on hold ([`Claim::hold`]) is moved, whole, from `entries/` to `held/` (as
//! Postfix's hold queue): [`list`](Queue::list), [`due`](Queue::due) and
//! [`claim`](Queue::claim) only look in `entries/`, so a runner never sees a held entry, and
//! a runner built before `held/` existed ignores it the same way. [`release`](Claim::release)
//! moves it back. Both moves are made under the
//! entry's claim, so they never race a delivery.
//!
//! [`wake`](Queue::wake) leaves the file `wake` in the queue's directory, and a runner that
//! polls [`take_wake`](Queue::take_wake) (the daemon does, every second) scans the queue at
//! once instead of sleeping until its next due time: that is how a separate process (the
//! queue tool's `flush`) reaches a running daemon without a signal or a pid file.
//!
//! [`note`](Queue::note) appends a line to `notes` and [`take_notes`](Queue::take_notes)
//! reads and empties it, both under the file's `flock`: so what an operator's tool changed
//! reaches the log of the daemon that runs the queue, wherever that log goes (as Postfix's
//! `postsuper` logs its removals). The file is bounded ([`NOTES_MAX`]): when no runner reads
//! it, notes beyond that are refused, never the change they describe.
//!
//! # Durability
//!
//! [`Queue::enqueue`] writes the whole entry into `tmp/<id>`, renames it into `entries/`
//! (never over anything), fsyncs the file and fsyncs `entries/`: two fsyncs, and the entry is
//! locked from its creation until both are done, so no runner claims it before it is durable.
//! When `enqueue` returns the entry survives a crash, and the SMTP server may answer `250`. (The
//! rename comes before the file's fsync because on journaling file systems that one fsync then
//! commits the name as well, and the directory's fsync costs next to nothing; a machine crash
//! before both are done may leave the file cut short, which its `body-size` shows: it is moved to
//! `corrupt/`, and it was never acknowledged.)
//!
//! A message too long to hold in memory can be written straight into its entry as it arrives
//! ([`Queue::begin_entry`], a [`PendingEntry`]): the header goes first with a 20-digit
//! placeholder for `body-size`, the body after it; the commit writes the size in place, fsyncs
//! the file, locks it, links it into `entries/` by its descriptor (it has no name before, where
//! the file system has `O_TMPFILE`) and fsyncs `entries/`. The same two fsyncs, the same lock,
//! and the body written once instead of into a temporary file and then copied.
//!
//! A change to an entry (a recorded outcome, a new attempt time) writes a new version of the
//! whole file in `tmp/` (the body copied by offset), locks it, fsyncs it, renames it over the
//! old one and fsyncs the directory: a crash leaves the old or the new version, never a mix.
//! Changes are off the hot path: a message delivered at its first attempt to one destination
//! is never rewritten. A finished entry is unlinked without an fsync: a crash right after
//! may bring it back, and it is delivered once more (at least once, never lost). (A version 1
//! entry is changed by replacing its `envelope` file the same way, and finished by a rename to
//! `trash/` and a removal.)
//!
//! # Claims
//!
//! A worker [`claim`](Queue::claim)s an entry before delivering it. The claim is an exclusive
//! `flock` on the entry's file (or, for version 1, its directory), held by the [`Claim`] value:
//! a second claim, from another thread or another process, gets `None` until the first is
//! dropped. A new version of the file is locked before it takes the entry's name, and a claim
//! checks that the file it locked still has the name, so the claim carries over to each new
//! version. Nothing about a claim is written to disk, so when a process dies its claims vanish
//! with its descriptors, and the entries are due again at once (the "recovery" of claimed
//! entries needs no work).
//!
//! # Times
//!
//! The queue never reads the clock for its decisions: callers pass `now` and the next attempt
//! time (a [`SystemTime`], since entries outlive the process), so tests control time.
//!
//! # The envelope file
//!
//! A small line-based, versioned text format (see [`QueueEntry::encode`]): it is easy to read
//! with `cat` when a delivery is stuck, and needs no serialisation library. The envelope's
//! lines are SMTP commands as they would be sent; other values are percent-escaped (`%`,
//! control characters), so each field is one line.
//!
//! Every header is decoded again before it is written, and one whose envelope would not read
//! back as the same envelope (a local part past [`STORED_LIMITS`], built by hand with
//! `Mailbox::new`), or has no recipient, is refused with an [`Error::Io`] of kind `InvalidInput`: nothing is
//! written, so nothing is acknowledged that a runner would later find unreadable.
//!
//! It is at most [`ENVELOPE_MAX`] (16 MiB) long: an entry that would encode larger is refused
//! before anything is written, and a larger file (damage, or something planted) is corrupt
//! without being read (see [`ENVELOPE_MAX`]). A decoding error quotes at most a short escaped
//! excerpt of the line at fault (the error is logged when the entry is moved aside).
//!
//! # Recording outcomes
//!
//! Each change rewrites the entry (new file, fsync, rename, directory fsync).
//! [`Claim::record`] does that per recipient; [`Claim::record_many`] records any number of
//! recipients with one rewrite, all or nothing, and is what a delivery to many recipients of
//! one entry should use (100 recipients: one rewrite and two fsyncs instead of 100 and 200).

use std::fmt;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtp_proto::address::{parse_mailbox_with, ForwardPath, ReversePath};
use smtp_proto::envelope::STORED_LIMITS;
use smtp_proto::param::{Notify, Orcpt, RcptParams, Ret, XText};

use crate::at::{fstat, Dir, Meta, Node, Perms};
use crate::error::{io_err, Error, Result};
use crate::fsutil;
use crate::lock::try_lock;
use crate::pending::{clean_staging, link_or_copy, link_unnamed, PendingMessage};

const MAGIC: &str = "mailstore-queue 1";
const MAGIC2: &str = "mailstore-queue 2";
const MAGIC3: &str = "mailstore-queue 3";
/// The header of a version 2 entry ends with this line.
const END2: &[u8] = b"\nend\n";
const BODY: &str = "body";
const ENVELOPE: &str = "envelope";

/// The largest envelope file the queue writes or reads: 16 MiB. The daemon's envelopes are a
/// few hundred octets per recipient (an address, DSN parameters, a state with at most one
/// reply), so this is room for tens of thousands of recipients with long replies, and still
/// a bound on what one read of a damaged or planted file may allocate. A larger file is
/// [`Error::Corrupt`] (the entry is moved to `corrupt/`); an entry that would encode larger is
/// refused before anything is written ([`Error::Io`], the stored entry unchanged).
pub const ENVELOPE_MAX: u64 = 16 << 20;

/// The largest the operators' `notes` file grows while nothing reads it (see the module doc).
pub const NOTES_MAX: u64 = 1 << 20;

const NOTES: &str = "notes";

/// The name of a queue entry: made by the queue, unique, safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(String);

impl QueueId {
    fn generate() -> Result<QueueId> {
        fsutil::unique().map(QueueId)
    }

    /// The id as text (as shown in logs and in `250 ... queued as <id>`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for QueueId {
    type Err = Error;

    /// Accepts what [`Display`](fmt::Display) printed: 1 to 64 of ASCII letters, digits, `.`,
    /// `-` and `_`, not starting with a dot.
    fn from_str(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if ok {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(Error::InvalidQueueId(s.to_owned()))
        }
    }
}

/// Which of the queue's directories an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Place {
    /// `entries/`: waiting for its next attempt (the runner's).
    Active,
    /// `held/`: on hold, never attempted until released.
    Held,
}

/// What [`Queue::try_claim`] found. (Not boxed: it lives for one call, and the claim is
/// taken out of it at once.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum TryClaim {
    /// The entry, claimed.
    Claimed(Claim),
    /// Another worker (thread or process) holds its claim: a delivery is under way.
    Busy,
    /// No such entry (never was, finished, or moved aside as corrupt).
    Gone,
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RcptState {
    /// Not delivered yet (never tried, or a temporary failure).
    Pending,
    /// Accepted by the next hop.
    Delivered,
    /// Refused for good; `reply` is the last reply (e.g. `550 5.1.1 no such user`), for the
    /// bounce.
    Failed {
        /// The reply that made it fail.
        reply: String,
    },
    /// Refused for good, and not yet reported to the sender: the report waits until no
    /// recipient of the entry is pending, so that one bounce reports them all (see the
    /// daemon's bounce policy). The fields are what the report says of it.
    Refused {
        /// The reply that made it fail (or the local reason).
        reply: String,
        /// The RFC 3463 status to report, when not the one in `reply` (`4.4.7` for expiry).
        status: Option<String>,
        /// The host that gave the reply, when a remote one did.
        remote_mta: Option<String>,
    },
}

impl RcptState {
    /// True once the recipient needs no more delivery attempts (delivered, failed, refused).
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptState::Pending)
    }
}

/// The envelope of a queued message, and its recipients: the protocol crate's typed values,
/// the same the server library produced and the client sends (see
/// [`smtp_proto::envelope`]). Each recipient's delivery state is kept beside it, in the
/// [`QueueEntry`].
pub use smtp_proto::envelope::{Envelope, Recipient};

/// Everything stored about an entry besides its body.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Sender, recipients, DSN parameters.
    pub envelope: Envelope,
    /// The state of each recipient, by index (see [`state`](Self::state)). Shorter than the
    /// recipients when some were added to the envelope after the entry was made: those are
    /// pending.
    states: Vec<RcptState>,
    /// When it was enqueued.
    pub created: SystemTime,
    /// Delivery attempts so far (incremented by [`Claim::reschedule`]).
    pub attempts: u32,
    /// Not due before this time.
    pub next_attempt: SystemTime,
    /// The last temporary error, if any.
    pub last_error: Option<String>,
}

impl PartialEq for QueueEntry {
    /// Equal entries have equal fields and recipients in equal states (a state not recorded
    /// is pending).
    fn eq(&self, o: &Self) -> bool {
        self.envelope == o.envelope
            && (0..self.envelope.rcpts.len()).all(|i| self.state(i) == o.state(i))
            && self.created == o.created
            && self.attempts == o.attempts
            && self.next_attempt == o.next_attempt
            && self.last_error == o.last_error
    }
}

impl Eq for QueueEntry {}

/// The state of a recipient that has none recorded.
static PENDING: RcptState = RcptState::Pending;

impl QueueEntry {
    /// A fresh entry: created and due at `now`, no attempts yet.
    pub fn new(envelope: Envelope, now: SystemTime) -> QueueEntry {
        QueueEntry {
            states: vec![RcptState::Pending; envelope.rcpts.len()],
            envelope,
            created: now,
            attempts: 0,
            next_attempt: now,
            last_error: None,
        }
    }

    /// The state of recipient `i` of [`envelope`](Self::envelope)`.rcpts` (pending when none
    /// is recorded, or past the end).
    pub fn state(&self, i: usize) -> &RcptState {
        self.states.get(i).unwrap_or(&PENDING)
    }

    /// The recipients, each with its state, in order.
    pub fn recipients(&self) -> impl Iterator<Item = (&Recipient, &RcptState)> + '_ {
        self.envelope
            .rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| (r, self.state(i)))
    }

    /// Sets the state of recipient `i` in this value (not on disk: see [`Claim::record`]).
    ///
    /// # Errors
    /// [`Error::NoSuchRecipient`] when `i` is past the end of the recipients.
    pub fn set_state(&mut self, i: usize, state: RcptState) -> Result<()> {
        if i >= self.envelope.rcpts.len() {
            return Err(Error::NoSuchRecipient(i));
        }
        if self.states.len() <= i {
            self.states.resize(i + 1, RcptState::Pending);
        }
        self.states[i] = state;
        Ok(())
    }

    /// The header of a version 3 entry (one file: this header, then the body). One field per
    /// line, `key value`:
    ///
    /// ```text
    /// mailstore-queue 3
    /// created 1700000000.000000000        seconds.nanoseconds since the Unix epoch
    /// attempts 2
    /// next-attempt 1700000900.000000000
    /// last-error 421 4.7.0 try later     (optional; percent-escaped)
    /// MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159
    /// RCPT TO:<bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net
    /// state pending                      (percent-escaped) `delivered`, `failed <reply>`,
    ///                                    or `refused <status> <remote-mta> <reply>`
    /// body-size 1234
    /// end
    /// ```
    ///
    /// The `MAIL` line and each `RCPT` line (each followed by that recipient's `state`) are
    /// the envelope's text form, version 1 ([`smtp_proto::envelope`]): SMTP command lines,
    /// as they are, not escaped (the typed values cannot hold a control character), parsed
    /// back with the SMTP parser. Other values are percent-escaped (`%`, control characters), so
    /// each field is one line. Times before 1970 are written as the epoch.
    pub fn encode(&self, body_size: u64) -> String {
        let mut out = String::with_capacity(256);
        header_fields(self, &mut out, MAGIC3);
        let _ = write!(out, "{}", self.envelope.mail_command());
        for (r, state) in self.recipients() {
            let _ = write!(out, "{}", r.rcpt_command());
            field(&mut out, "state", &state_text(state));
        }
        // The command lines end in CRLF; the entry's lines in LF.
        let mut out = out.replace("\r\n", "\n");
        let _ = writeln!(out, "body-size {body_size}");
        out.push_str("end\n");
        out
    }

    /// Parses what [`encode`](Self::encode) wrote: the entry and the body size. Strict: an
    /// unknown key, a missing or repeated field, a `MAIL` line that is not the first of the
    /// envelope, a recipient without a state, a sender or recipient that does not parse,
    /// anything after `end`, or no `end` are errors.
    ///
    /// # Errors
    /// The reason, as text (the caller adds the path).
    pub fn decode(text: &str) -> std::result::Result<(QueueEntry, u64), String> {
        let mut lines = text.split_inclusive('\n');
        if lines.next() != Some(&format!("{MAGIC3}\n")) {
            return Err("not a version 3 queue entry".into());
        }
        let mut h = Header::default();
        let mut env: Option<Envelope> = None;
        let mut states: Vec<RcptState> = Vec::new();
        let mut size = None;
        each_field(lines, |line, key, value| {
            if size.is_some() {
                return Err(format!("{} after body-size", excerpt(key)));
            }
            match key {
                "MAIL" => {
                    if env.is_some() || h.created.is_none() {
                        return Err("MAIL line out of place".into());
                    }
                    let e = smtp_proto::envelope::parse_mail_line(line)
                        .map_err(|e| format!("bad sender {}: {e}", excerpt(line)))?;
                    env = Some(e);
                }
                "RCPT" => {
                    let e = env.as_mut().ok_or("RCPT before MAIL")?;
                    if states.len() != e.rcpts.len() {
                        return Err("recipient without state".into());
                    }
                    let r = Recipient::parse_line(line)
                        .map_err(|err| format!("bad recipient {}: {err}", excerpt(line)))?;
                    e.rcpts.push(r);
                }
                "state" => match &env {
                    Some(e) if states.len() + 1 == e.rcpts.len() => {
                        states.push(decode_state(&unescape(value)?)?);
                    }
                    _ => return Err("state outside a recipient".into()),
                },
                "body-size" => {
                    size = Some(value.parse::<u64>().map_err(|_| "bad body-size")?);
                }
                _ if env.is_none() => h.field(key, unescape(value)?)?,
                _ => return Err(format!("{} after the envelope", excerpt(key))),
            }
            Ok(())
        })?;
        let envelope = env.ok_or("no MAIL line")?;
        if states.len() != envelope.rcpts.len() {
            return Err("recipient without state".into());
        }
        let size = size.ok_or("no body-size")?;
        Ok((h.entry(envelope, states)?, size))
    }

    /// The envelope file of a version 1 entry (a directory with `envelope` and `body`). One
    /// field per line, `key value`, values percent-escaped; the envelope as text (the form the
    /// queue stored before it held typed values):
    ///
    /// ```text
    /// mailstore-queue 1
    /// created 1700000000.000000000
    /// attempts 2
    /// next-attempt 1700000900.000000000
    /// last-error 421 4.7.0 try later     (optional)
    /// sender alice@example.org           (empty value: the null sender)
    /// ret HDRS                           (optional)
    /// envid QQ314159                     (optional; decoded, not xtext)
    /// rcpt bob@example.net               (`postmaster` for <Postmaster>) then:
    /// notify FAILURE,DELAY               (optional)
    /// orcpt rfc822;bob@example.net       (optional; the address decoded, not xtext)
    /// state pending                      as in version 3
    /// end
    /// ```
    ///
    /// Written only to update a version 1 entry in its own layout (and by
    /// [`Queue::enqueue_v1`], for tests of old entries).
    pub fn encode_v1(&self) -> String {
        let mut out = String::with_capacity(256);
        header_fields(self, &mut out, MAGIC);
        let env = &self.envelope;
        let sender = match &env.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        field(&mut out, "sender", &sender);
        if let Some(ret) = &env.ret {
            field(&mut out, "ret", ret.as_str());
        }
        if let Some(envid) = &env.envid {
            field(&mut out, "envid", &envid.decode());
        }
        for (r, state) in self.recipients() {
            let address = match &r.path {
                ForwardPath::Postmaster => "postmaster".to_owned(),
                ForwardPath::Mailbox(m) => m.to_string(),
            };
            field(&mut out, "rcpt", &address);
            if let Some(n) = &r.notify {
                field(&mut out, "notify", &n.to_string());
            }
            if let Some(o) = &r.orcpt {
                field(
                    &mut out,
                    "orcpt",
                    &format!("{};{}", o.addr_type(), o.addr().decode()),
                );
            }
            field(&mut out, "state", &state_text(state));
        }
        out.push_str("end\n");
        out
    }

    /// Parses what [`encode_v1`](Self::encode_v1) (or a daemon before version 3) wrote, and
    /// the envelope's text into typed values. Strict as [`decode`](Self::decode): a sender,
    /// recipient, `RET`, `NOTIFY` or `ORCPT` that does not parse is an error (the entry is
    /// corrupt, never delivered with another sender or recipient).
    ///
    /// # Errors
    /// The reason, as text (the caller adds the path).
    pub fn decode_v1(text: &str) -> std::result::Result<QueueEntry, String> {
        let mut lines = text.split_inclusive('\n');
        if lines.next() != Some(&format!("{MAGIC}\n")) {
            return Err("not a version 1 queue envelope".into());
        }
        let mut h = Header::default();
        let mut sender = None;
        let mut ret = None;
        let mut envid = None;
        let mut recipients: Vec<(Recipient, RcptState)> = Vec::new();
        let mut state_seen = true;
        each_field(lines, |_line, key, value| {
            let value = unescape(value)?;
            match key {
                "sender" => {
                    dup(&sender, key)?;
                    sender = Some(legacy_sender(&value)?);
                }
                "ret" => {
                    dup(&ret, key)?;
                    ret = Some(match value.as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Hdrs,
                        v => return Err(format!("bad ret {}", excerpt(v))),
                    });
                }
                "envid" => {
                    dup(&envid, key)?;
                    envid = Some(XText::encode(&value));
                }
                "rcpt" => {
                    if !state_seen {
                        return Err("recipient without state".into());
                    }
                    state_seen = false;
                    recipients.push((
                        Recipient::new(legacy_recipient(&value)?),
                        RcptState::Pending,
                    ));
                }
                "notify" | "orcpt" | "state" => {
                    let (r, state) = match recipients.last_mut() {
                        Some(r) if !state_seen => r,
                        _ => return Err(format!("{key} outside a recipient")),
                    };
                    match key {
                        "notify" => {
                            dup(&r.notify, key)?;
                            r.notify = Some(legacy_notify(&value)?);
                        }
                        "orcpt" => {
                            dup(&r.orcpt, key)?;
                            r.orcpt = Some(legacy_orcpt(&value)?);
                        }
                        _ => {
                            *state = decode_state(&value)?;
                            state_seen = true;
                        }
                    }
                }
                _ => h.field(key, value)?,
            }
            Ok(())
        })?;
        if !state_seen {
            return Err("recipient without state".into());
        }
        let (rcpts, states): (Vec<Recipient>, Vec<RcptState>) = recipients.into_iter().unzip();
        let mut envelope = Envelope::with_recipients(sender.ok_or("no sender")?, rcpts);
        envelope.ret = ret;
        envelope.envid = envid;
        h.entry(envelope, states)
    }

    /// Parses the header of a version 2 entry (written by daemons before version 3: the
    /// version 1 text with `mailstore-queue 2` as its first line and `body-size <octets>` as
    /// its last field before `end`): the entry and the body size.
    fn decode_v2(text: &str) -> std::result::Result<(QueueEntry, u64), String> {
        let rest = text
            .strip_prefix(MAGIC2)
            .ok_or("not a version 2 queue entry")?;
        let fields = rest
            .strip_suffix("end\n")
            .ok_or("no end line (truncated)")?;
        let (fields, size) = fields
            .strip_suffix('\n')
            .and_then(|f| f.rsplit_once('\n'))
            .ok_or("no body-size")?;
        let size = size
            .strip_prefix("body-size ")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("bad body-size")?;
        let entry = QueueEntry::decode_v1(&format!("{MAGIC}{fields}\nend\n"))?;
        Ok((entry, size))
    }

    /// The header of a one-file entry, whichever version it is (2 or 3).
    fn decode_file(text: &str) -> std::result::Result<(QueueEntry, u64), String> {
        if text.starts_with(&format!("{MAGIC2}\n")) {
            QueueEntry::decode_v2(text)
        } else if text.starts_with(&format!("{MAGIC3}\n")) {
            QueueEntry::decode(text)
        } else {
            Err(format!(
                "not a queue entry of a known version: {}",
                excerpt(text.lines().next().unwrap_or_default())
            ))
        }
    }
}

/// One `key value` line, the value percent-escaped.
/// Whether `e` is a refusal to open for want of permission (owner, mode, or an LSM).
fn is_permission(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push(' ');
    escape_into(out, value);
    out.push('\n');
}

/// The magic line and the fields every version has before the envelope.
fn header_fields(e: &QueueEntry, out: &mut String, magic: &str) {
    out.push_str(magic);
    out.push('\n');
    field(out, "created", &time_text(e.created));
    field(out, "attempts", &e.attempts.to_string());
    field(out, "next-attempt", &time_text(e.next_attempt));
    if let Some(err) = &e.last_error {
        field(out, "last-error", err);
    }
}

/// The fields every version has before the envelope, as they are read.
#[derive(Default)]
struct Header {
    created: Option<SystemTime>,
    attempts: Option<u32>,
    next_attempt: Option<SystemTime>,
    last_error: Option<String>,
}

impl Header {
    fn field(&mut self, key: &str, value: String) -> std::result::Result<(), String> {
        match key {
            "created" => {
                dup(&self.created, key)?;
                self.created = Some(parse_time(&value)?);
            }
            "attempts" => {
                dup(&self.attempts, key)?;
                self.attempts = Some(value.parse::<u32>().map_err(|_| "bad attempts")?);
            }
            "next-attempt" => {
                dup(&self.next_attempt, key)?;
                self.next_attempt = Some(parse_time(&value)?);
            }
            "last-error" => {
                dup(&self.last_error, key)?;
                self.last_error = Some(value);
            }
            _ => return Err(format!("unknown key {}", excerpt(key))),
        }
        Ok(())
    }

    fn entry(
        self,
        envelope: Envelope,
        states: Vec<RcptState>,
    ) -> std::result::Result<QueueEntry, String> {
        Ok(QueueEntry {
            envelope,
            states,
            created: self.created.ok_or("no created")?,
            attempts: self.attempts.ok_or("no attempts")?,
            next_attempt: self.next_attempt.ok_or("no next-attempt")?,
            last_error: self.last_error,
        })
    }
}

/// The text of a state line.
fn state_text(state: &RcptState) -> String {
    match state {
        RcptState::Pending => "pending".into(),
        RcptState::Delivered => "delivered".into(),
        RcptState::Failed { reply } => format!("failed {reply}"),
        // `refused <status> <remote-mta> <reply>`, `-` for an absent field (neither a status
        // nor a host name has spaces or is `-`).
        RcptState::Refused {
            reply,
            status,
            remote_mta,
        } => format!(
            "refused {} {} {reply}",
            status.as_deref().unwrap_or("-"),
            remote_mta.as_deref().unwrap_or("-")
        ),
    }
}

/// The `key value` lines of an entry after its first line, up to its `end` line: each is
/// given to `field` with the whole line; a line without a space, an unterminated last line,
/// anything after `end` and a missing `end` are errors (what every version shares).
fn each_field<'a>(
    lines: impl Iterator<Item = &'a str>,
    mut field: impl FnMut(&'a str, &'a str, &'a str) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut ended = false;
    for raw in lines {
        if ended {
            return Err("data after end".into());
        }
        let line = raw
            .strip_suffix('\n')
            .ok_or("last line is not terminated (truncated)")?;
        if line == "end" {
            ended = true;
            continue;
        }
        let (key, value) = line
            .split_once(' ')
            .ok_or(format!("bad line {}", excerpt(line)))?;
        field(line, key, value)?;
    }
    if ended {
        Ok(())
    } else {
        Err("no end line (truncated)".into())
    }
}

fn decode_state(v: &str) -> std::result::Result<RcptState, String> {
    Ok(match v {
        "pending" => RcptState::Pending,
        "delivered" => RcptState::Delivered,
        v => {
            if let Some(reply) = v.strip_prefix("failed ") {
                RcptState::Failed {
                    reply: reply.to_owned(),
                }
            } else if let Some(rest) = v.strip_prefix("refused ") {
                decode_refused(rest).ok_or_else(|| format!("bad state {}", excerpt(v)))?
            } else {
                return Err(format!("bad state {}", excerpt(v)));
            }
        }
    })
}

/// A version 1 or 2 `sender` value: empty for `<>`, else a mailbox without angle brackets.
fn legacy_sender(v: &str) -> std::result::Result<ReversePath, String> {
    if v.is_empty() {
        return Ok(ReversePath::Null);
    }
    parse_mailbox_with(v, &STORED_LIMITS)
        .map(|m| ReversePath::Mailbox(m.into_owned()))
        .map_err(|e| format!("bad sender {}: {}", excerpt(v), e.message()))
}

/// A version 1 or 2 `rcpt` value: a mailbox without angle brackets, or `postmaster`.
fn legacy_recipient(v: &str) -> std::result::Result<ForwardPath, String> {
    if v.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    parse_mailbox_with(v, &STORED_LIMITS)
        .map(|m| ForwardPath::Mailbox(m.into_owned()))
        .map_err(|e| format!("bad recipient {}: {}", excerpt(v), e.message()))
}

/// A version 1 or 2 `notify` value: `NEVER` or a comma list, as `NOTIFY=` takes it.
fn legacy_notify(v: &str) -> std::result::Result<Notify, String> {
    let bad = || format!("bad notify {}", excerpt(v));
    if v.is_empty() || v.contains(|c: char| c.is_whitespace()) {
        return Err(bad());
    }
    match RcptParams::parse(&format!("NOTIFY={v}")) {
        Ok(RcptParams {
            notify: Some(n),
            orcpt: None,
            other,
        }) if other.is_empty() => Ok(n),
        _ => Err(bad()),
    }
}

/// A version 1 or 2 `orcpt` value: `type;address`, the address decoded (not xtext).
fn legacy_orcpt(v: &str) -> std::result::Result<Orcpt, String> {
    v.split_once(';')
        .and_then(|(t, a)| Orcpt::new(t.to_owned(), XText::encode(a)).ok())
        .ok_or_else(|| format!("bad orcpt {}", excerpt(v)))
}

fn dup<T>(field: &Option<T>, key: &str) -> std::result::Result<(), String> {
    match field {
        Some(_) => Err(format!("duplicate {key}")),
        None => Ok(()),
    }
}

/// `<status> <remote-mta> <reply>` of a `refused` state.
fn decode_refused(rest: &str) -> Option<RcptState> {
    let mut parts = rest.splitn(3, ' ');
    let field = |f: &str| (f != "-" && !f.is_empty()).then(|| f.to_owned());
    let status = field(parts.next()?);
    let remote_mta = field(parts.next()?);
    let reply = parts.next()?.to_owned();
    Some(RcptState::Refused {
        reply,
        status,
        remote_mta,
    })
}

/// The most characters of the envelope's content that a decoding error quotes.
const EXCERPT_CHARS: usize = 40;

/// What a decoding error quotes of the content: its first [`EXCERPT_CHARS`] characters,
/// escaped (`{:?}`), with `...` after the quote if there was more. The errors end up in the
/// log; a whole field (a remote server's reply, say) has no place there.
fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}...")
    } else {
        format!("{head:?}")
    }
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == '%' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

fn unescape(value: &str) -> std::result::Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad % escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escape is not UTF-8".into())
}

fn time_text(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn parse_time(s: &str) -> std::result::Result<SystemTime, String> {
    let bad = || format!("bad time {}", excerpt(s));
    let (secs, nanos) = s.split_once('.').ok_or_else(bad)?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || nanos.len() != 9 || !digits(nanos) {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = nanos.parse().map_err(|_| bad())?;
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or_else(bad)
}

/// The queue. Cheap to clone; all clones, and other processes opening the same directory, share
/// it safely.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: Dir,
    tmp: Arc<Dir>,
    entries: Dir,
    held: Dir,
    trash: Dir,
    corrupt: Dir,
    /// Group commit of `entries/`: new entries renamed into it share its fsync.
    entries_sync: crate::at::GroupSync,
    /// A file could not be linked by its descriptor here (see [`PendingEntry::commit`]).
    no_descriptor_links: AtomicBool,
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, and recovers from crashes: removes
    /// half-written entries and half-removed ones, and moves entries that cannot be read to
    /// `corrupt/` (logging an error for each). Entries claimed by a dead process are simply
    /// claimable again.
    ///
    /// `dir` itself is opened by its path (links followed: it is the operator's); `tmp/`,
    /// `entries/`, `trash/`, `corrupt/`, each entry and each file in it are opened relative to
    /// their directory's descriptor without following links (see the crate docs).
    ///
    /// # Errors
    /// [`Error::Io`] if the directories cannot be created or listed, [`Error::UnsafePath`] if
    /// one of them is a symbolic link.
    pub fn open(dir: impl AsRef<Path>) -> Result<Queue> {
        let dir = Dir::create_root(dir.as_ref())?;
        let p = &Perms::PRIVATE;
        let (tmp, _) = dir.ensure_dir("tmp", p)?;
        let (entries, _) = dir.ensure_dir("entries", p)?;
        let (trash, _) = dir.ensure_dir("trash", p)?;
        let (corrupt, _) = dir.ensure_dir("corrupt", p)?;
        let (held, _) = dir.ensure_dir("held", p)?;
        // Also when all were found: an earlier run may have made them and stopped before
        // this fsync.
        dir.sync()?;
        let queue = Queue {
            inner: Arc::new(Inner {
                root: dir,
                tmp: Arc::new(tmp),
                entries,
                held,
                trash,
                corrupt,
                entries_sync: crate::at::GroupSync::default(),
                no_descriptor_links: AtomicBool::new(false),
            }),
        };
        clean_staging(&queue.inner.tmp);
        let trash = &queue.inner.trash;
        if let Ok(names) = trash.names() {
            for name in names.iter().filter_map(|n| n.to_str()) {
                let _ = trash.remove_tree(name);
            }
        }
        // Reading every entry moves the unreadable ones aside.
        queue.list()?;
        Ok(queue)
    }

    /// Starts a message to be streamed to disk (in `tmp/`), then given to
    /// [`enqueue_pending`](Self::enqueue_pending).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be created.
    pub fn begin(&self) -> Result<PendingMessage> {
        PendingMessage::create(&self.inner.tmp, &Perms::PRIVATE)
    }

    /// Adds an entry with a body held in memory, durably: when this returns `Ok`, the entry
    /// survives a crash.
    ///
    /// # Errors
    /// [`Error::Io`]; nothing is enqueued then.
    pub fn enqueue(&self, entry: &QueueEntry, body: &[u8]) -> Result<QueueId> {
        self.enqueue_v2(entry, BodySource::Bytes(body))
    }

    /// Adds an entry in the version 1 layout (a directory with `body` and
    /// `envelope`), as [`enqueue`](Self::enqueue) does otherwise: for tests that an old
    /// queue still delivers.
    #[doc(hidden)]
    pub fn enqueue_v1(&self, entry: &QueueEntry, body: &[u8]) -> Result<QueueId> {
        self.enqueue_with(entry, |stage| {
            let mut f = stage.create(BODY, &Perms::PRIVATE)?;
            f.write_all(body)
                .map_err(io_err("write", stage.join(BODY)))?;
            f.sync_all().map_err(io_err("fsync", stage.join(BODY)))
        })
    }

    /// Adds an entry whose body is a [`PendingMessage`] (from this queue's
    /// [`begin`](Self::begin) or a mailbox store's; it is linked, or copied if it lives on
    /// another file system). The message stays usable for more commits.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_pending(
        &self,
        entry: &QueueEntry,
        body: &mut PendingMessage,
    ) -> Result<QueueId> {
        self.enqueue_pending_after(entry, b"", body)
    }

    /// As [`enqueue_pending`](Self::enqueue_pending), with `front` (header fields computed
    /// over the finished message, such as `DKIM-Signature:`) put in front of the message in
    /// the entry: the message is copied once, into the entry, instead of once to add the
    /// front and again to enqueue it.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_pending_after(
        &self,
        entry: &QueueEntry,
        front: &[u8],
        body: &mut PendingMessage,
    ) -> Result<QueueId> {
        let (file, len) = body.seal_unsynced()?;
        self.enqueue_v2(entry, BodySource::File(front, file, len))
    }

    /// [`enqueue_pending`](Self::enqueue_pending) in the version 1 layout (see
    /// [`enqueue_v1`](Self::enqueue_v1)).
    #[doc(hidden)]
    pub fn enqueue_pending_v1(
        &self,
        entry: &QueueEntry,
        body: &mut PendingMessage,
    ) -> Result<QueueId> {
        let src = body.seal()?;
        self.enqueue_with(entry, |stage| {
            link_or_copy(src, stage, BODY, &Perms::PRIVATE)
        })
    }

    /// A version 2 entry: one file, `tmp/<id>`, with the header and the body, written,
    /// renamed to `entries/<id>` (never over anything), fsynced, and `entries/` fsynced: two
    /// fsyncs. The file is locked from its creation until this returns, so no runner claims
    /// it before it is durable.
    fn enqueue_v2(&self, entry: &QueueEntry, body: BodySource<'_>) -> Result<QueueId> {
        let size = match body {
            BodySource::Bytes(b) => u64::try_from(b.len()).unwrap_or(u64::MAX),
            BodySource::File(front, _, len) => {
                len.saturating_add(u64::try_from(front.len()).unwrap_or(u64::MAX))
            }
        };
        self.write_entry(|f, path| {
            let mut head = encode_v2_bounded(entry, size, path)?.into_bytes();
            match body {
                BodySource::Bytes(b) => {
                    head.extend_from_slice(b);
                    f.write_all(&head).map_err(io_err("write", path))
                }
                // Small: one write.
                BodySource::File(front, src, len) if len <= 256 * 1024 => {
                    head.extend_from_slice(front);
                    copy_range(src, 0, &mut head).map_err(io_err("copy", path))?;
                    f.write_all(&head).map_err(io_err("write", path))
                }
                BodySource::File(front, src, _) => {
                    head.extend_from_slice(front);
                    f.write_all(&head).map_err(io_err("write", path))?;
                    copy_range(src, 0, f).map_err(io_err("copy", path))
                }
            }
        })
    }

    /// Makes an entry of a new locked file in `tmp/` that `fill` writes (given the file and
    /// its path, for errors), as [`enqueue_v2`](Self::enqueue_v2) describes; on an error
    /// nothing is left.
    fn write_entry(&self, fill: impl FnOnce(&mut File, &Path) -> Result<()>) -> Result<QueueId> {
        let (id, mut f) = self.create_tmp()?;
        let tmp = &self.inner.tmp;
        if let Err(e) = fill(&mut f, &tmp.join(id.as_str())) {
            let _ = tmp.remove_file(id.as_str());
            return Err(e);
        }
        self.publish(&id, f)?;
        Ok(id)
    }

    /// A new file `tmp/<id>` for an entry, under a fresh id, locked (see
    /// [`enqueue_v2`](Self::enqueue_v2)).
    fn create_tmp(&self) -> Result<(QueueId, File)> {
        let tmp = &self.inner.tmp;
        let (id, f) = loop {
            let id = QueueId::generate()?;
            match tmp.create(id.as_str(), &Perms::PRIVATE) {
                Ok(f) => break (id, f),
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        };
        if let Err(e) = try_lock(&f) {
            let _ = tmp.remove_file(id.as_str());
            return Err(io_err("flock", tmp.join(id.as_str()))(e));
        }
        Ok((id, f))
    }

    /// Makes the complete, locked entry file `tmp/<id>` an entry, durably: renamed into
    /// `entries/` (never over anything), then the file and the directory fsynced. On an error
    /// nothing is left (the file is removed).
    fn publish(&self, id: &QueueId, f: File) -> Result<()> {
        let tmp = &self.inner.tmp;
        // Renamed first, then fsynced: the file's fsync then commits its name too on
        // journaling file systems (ext4, XFS), which makes the directory's fsync nearly free
        // there; both are done before this returns, as POSIX needs. Until then the entry is
        // locked (no runner claims it) and, after a power failure, at worst cut short, which
        // its body-size shows: moved to corrupt/, and it was never acknowledged.
        rename_noreplace(tmp, id.as_str(), &self.inner.entries).inspect_err(|_| {
            let _ = tmp.remove_file(id.as_str());
        })?;
        let ticket = self.inner.entries_sync.changed();
        let entries = &self.inner.entries;
        let durable = f
            .sync_all()
            .map_err(io_err("fsync", entries.join(id.as_str())))
            .and_then(|()| self.inner.entries_sync.sync(entries, ticket));
        if let Err(e) = durable {
            // Not acknowledged: the client sends it again.
            let _ = entries.remove_file(id.as_str());
            return Err(e);
        }
        drop(f);
        Ok(())
    }

    /// Enqueues a copy of `src`, a complete entry file (header and body), as
    /// [`enqueue`](Self::enqueue) does.
    fn enqueue_copy(&self, src: &File) -> Result<QueueId> {
        self.write_entry(|f, path| copy_range(src, 0, f).map_err(io_err("copy", path)))
    }

    /// Starts an entry whose body is written as it arrives, straight into the entry's own
    /// file (see [`PendingEntry`]): for a message too long to hold in memory that is only
    /// queued, it saves writing the body into a [`PendingMessage`] and copying it from there.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be made or the header written (an envelope over
    /// [`ENVELOPE_MAX`] among them); nothing is left then.
    pub fn begin_entry(&self, entry: &QueueEntry) -> Result<PendingEntry> {
        let path = self.inner.tmp.path();
        // The longest size there is, 20 digits: the real one is written over it, padded with
        // zeros to the same width, when the body is complete.
        let header = encode_v2_bounded(entry, u64::MAX, path)?;
        let size_at = header
            .strip_suffix(&format!("{}\nend\n", u64::MAX))
            .map(|h| h.len() as u64)
            .ok_or_else(|| Error::Io {
                op: "write",
                path: path.to_path_buf(),
                source: std::io::Error::other("entry header does not end with its body-size"),
            })?;
        // Named once linking by descriptor failed here: a rename then works where a link
        // would have fallen back to a second copy of the whole file.
        let named = self.inner.no_descriptor_links.load(Ordering::Relaxed);
        let mut file = PendingMessage::create_in(&self.inner.tmp, &Perms::PRIVATE, named)?;
        file.write_all(header.as_bytes())
            .map_err(io_err("write", path))?;
        Ok(PendingEntry {
            queue: self.clone(),
            file,
            size_at,
            header_len: header.len() as u64,
        })
    }

    fn enqueue_with(
        &self,
        entry: &QueueEntry,
        put_body: impl FnOnce(&Dir) -> Result<()>,
    ) -> Result<QueueId> {
        let tmp = &self.inner.tmp;
        let (id, stage) = loop {
            let id = QueueId::generate()?;
            if let (stage, true) = tmp.ensure_dir(id.as_str(), &Perms::PRIVATE)? {
                break (id, stage);
            }
        };
        let r = (|| {
            try_lock(&stage).map_err(io_err("flock", stage.path()))?;
            put_body(&stage)?;
            let text = encode_bounded(entry, &stage.join(ENVELOPE))?;
            let mut f = stage.create(ENVELOPE, &Perms::PRIVATE)?;
            f.write_all(text.as_bytes())
                .map_err(io_err("write", stage.join(ENVELOPE)))?;
            f.sync_all()
                .map_err(io_err("fsync", stage.join(ENVELOPE)))?;
            stage.sync()?;
            tmp.rename(id.as_str(), &self.inner.entries, id.as_str())?;
            self.inner.entries.sync()
        })();
        if let Err(e) = r {
            let _ = tmp.remove_tree(id.as_str());
            return Err(e);
        }
        Ok(id)
    }

    /// All entries, sorted by id (which is by creation time). Unreadable entries are moved to
    /// `corrupt/` (unless claimed: the claimant will find them) and left out.
    ///
    /// # Errors
    /// [`Error::Io`] if `entries/` cannot be listed.
    pub fn list(&self) -> Result<Vec<(QueueId, QueueEntry)>> {
        self.list_in(Place::Active)
    }

    /// The entries on hold (in `held/`), sorted by id; as [`list`](Self::list) otherwise.
    ///
    /// # Errors
    /// [`Error::Io`] if `held/` cannot be listed.
    pub fn list_held(&self) -> Result<Vec<(QueueId, QueueEntry)>> {
        self.list_in(Place::Held)
    }

    fn dir_of(&self, place: Place) -> &Dir {
        match place {
            Place::Active => &self.inner.entries,
            Place::Held => &self.inner.held,
        }
    }

    fn list_in(&self, place: Place) -> Result<Vec<(QueueId, QueueEntry)>> {
        let entries = self.dir_of(place);
        let mut out = Vec::new();
        for name in entries.names()? {
            let Some(id) = name.to_str().and_then(|n| n.parse::<QueueId>().ok()) else {
                tracing::warn!(path = %entries.path().join(&name).display(),
                    "ignoring a stray file in the queue");
                continue;
            };
            match self.read_entry_at(place, &id) {
                Ok(Some(entry)) => out.push((id, entry)),
                Ok(None) => {} // finished meanwhile
                Err(err @ Error::UnsafePath { .. }) => self.quarantine(place, &id, &err),
                Err(err) => {
                    let unclaimed = match entries.try_open_node(id.as_str()) {
                        Ok(Some(Node::Dir(d))) => matches!(try_lock(&d), Ok(true)),
                        Ok(Some(Node::File(f, _))) => matches!(try_lock(&f), Ok(true)),
                        // Being written or delivered, or gone meanwhile.
                        Ok(_) => false,
                        // Not even openable (its owner or mode is wrong: e.g. rewritten by
                        // root for a daemon that runs as another user). Not damaged, so not
                        // moved aside, but never passed over in silence: it is not tried.
                        Err(open) => {
                            let path = entries.path().join(id.as_str());
                            if is_permission(&open) {
                                tracing::error!(queue_id = %id, error = %err, open_error = %open,
                                    path = %path.display(),
                                    "queue entry cannot be read (check its owner and mode); not tried");
                            } else {
                                // Out of descriptors, an I/O error: tried again next scan.
                                tracing::warn!(queue_id = %id, error = %open,
                                    path = %path.display(), "queue entry cannot be opened now");
                            }
                            false
                        }
                    };
                    if unclaimed {
                        self.quarantine(place, &id, &err);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The entries due at `now` (next attempt not after `now`), earliest first. Some may be
    /// claimed by another worker; [`claim`](Self::claim) tells.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub fn due(&self, now: SystemTime) -> Result<Vec<QueueId>> {
        let mut due: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|(_, e)| e.next_attempt <= now)
            .map(|(id, e)| (e.next_attempt, id))
            .collect();
        due.sort();
        Ok(due.into_iter().map(|(_, id)| id).collect())
    }

    /// The entry's current state, or `None` if there is no such entry (any more).
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::UnsafePath`] or [`Error::Io`].
    pub fn entry(&self, id: &QueueId) -> Result<Option<QueueEntry>> {
        self.read_entry_at(Place::Active, id)
    }

    /// The entry's current state and where it is (`entries/` or `held/`), or `None` if there
    /// is no such entry.
    ///
    /// # Errors
    /// As [`entry`](Self::entry).
    pub fn find(&self, id: &QueueId) -> Result<Option<(Place, QueueEntry)>> {
        // Active, held, active again: an entry released or held meanwhile is found.
        for place in [Place::Active, Place::Held, Place::Active] {
            if let Some(e) = self.read_entry_at(place, id)? {
                return Ok(Some((place, e)));
            }
        }
        Ok(None)
    }

    /// Opens the body of an entry wherever it is (active or held).
    ///
    /// # Errors
    /// [`Error::Io`] (not found included), [`Error::UnsafePath`].
    pub fn read_body_any(&self, id: &QueueId) -> Result<File> {
        match self.body_in(Place::Held, id)? {
            Some(f) => Ok(f),
            None => self.read_body(id),
        }
    }

    /// Asks a runner that polls [`take_wake`](Self::take_wake) to scan the queue now (see the
    /// module doc): creates the file `wake` in the queue's directory.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be created.
    pub fn wake(&self) -> Result<()> {
        self.inner
            .root
            .replace_unsynced("wake", b"", &Perms::PRIVATE)
    }

    /// Appends `line` (line breaks become spaces) to the operators' notes, for the runner's
    /// log (see the module doc).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written or is full ([`NOTES_MAX`]).
    pub fn note(&self, line: &str) -> Result<()> {
        let path = self.inner.root.path().join(NOTES);
        let mut f = open_notes(&path)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(crate::at::errno("flock", &path))?;
        let len = f.metadata().map_err(io_err("stat", &path))?.len();
        if len >= NOTES_MAX {
            return Err(Error::Io {
                op: "append",
                path,
                source: std::io::Error::other("full: no queue runner is reading it"),
            });
        }
        let mut text = line.replace(['\r', '\n'], " ");
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(io_err("append", &path))
    }

    /// The operators' notes written since the last call, emptying the file (see the module
    /// doc). Errors count as no notes.
    pub fn take_notes(&self) -> Vec<String> {
        use std::io::Read;
        let path = self.inner.root.path().join(NOTES);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            _ => return Vec::new(),
        }
        let Ok(mut f) = open_notes(&path) else {
            return Vec::new();
        };
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        if (&mut f)
            .take(NOTES_MAX + 4096)
            .read_to_string(&mut text)
            .is_err()
        {
            // Not UTF-8 (the tool writes only UTF-8): drop it rather than stall.
            text.clear();
        }
        let _ = f.set_len(0);
        text.lines().map(str::to_owned).collect()
    }

    /// True (once) after [`wake`](Self::wake): removes the file. Errors count as no request
    /// (the runner scans the queue on its own schedule anyway).
    pub fn take_wake(&self) -> bool {
        matches!(self.inner.root.remove_file("wake"), Ok(true))
    }

    /// Opens the entry's body for reading.
    ///
    /// # Errors
    /// [`Error::Io`] (not found included), [`Error::UnsafePath`].
    pub fn read_body(&self, id: &QueueId) -> Result<File> {
        self.body_in(Place::Active, id)?.ok_or_else(|| Error::Io {
            op: "open",
            path: self.inner.entries.join(id.as_str()),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// Claims an entry for delivery: `Ok(None)` if another worker (thread or process) holds it,
    /// or it is gone (finished), or it was corrupt (moved aside). The claim lasts until the
    /// [`Claim`] is finished, rescheduled or dropped.
    ///
    /// # Errors
    /// [`Error::Io`] for failures other than those.
    pub fn claim(&self, id: &QueueId) -> Result<Option<Claim>> {
        match self.claim_in(Place::Active, id)? {
            TryClaim::Claimed(c) => Ok(Some(c)),
            TryClaim::Busy | TryClaim::Gone => Ok(None),
        }
    }

    /// Claims an entry wherever it is (active or on hold), telling a claim held elsewhere
    /// ([`TryClaim::Busy`]) from a missing entry: for an operator's tool, which changes
    /// entries only under their claim and so never while they are being delivered.
    ///
    /// # Errors
    /// As [`claim`](Self::claim).
    pub fn try_claim(&self, id: &QueueId) -> Result<TryClaim> {
        // Active, held, active again: an entry released or held meanwhile is found.
        for place in [Place::Active, Place::Held, Place::Active] {
            match self.claim_in(place, id)? {
                TryClaim::Gone => {}
                found => return Ok(found),
            }
        }
        Ok(TryClaim::Gone)
    }

    /// True while someone holds the claim of active entry `id` (a delivery is under way):
    /// for a listing, as Postfix's `mailq` marks an entry being delivered. It probes the claim
    /// without reading or changing the entry; a runner that tries to claim the entry in the
    /// same instant finds it busy and looks again later. False for an entry not there or on
    /// hold, and when the probe fails.
    pub fn is_busy(&self, id: &QueueId) -> bool {
        let entries = self.dir_of(Place::Active);
        let probe = |fd: std::os::fd::BorrowedFd<'_>| matches!(try_lock(fd), Ok(false));
        match entries.try_open_node(id.as_str()) {
            Ok(Some(Node::Dir(dir))) => probe(std::os::fd::AsFd::as_fd(&dir)),
            Ok(Some(Node::File(file, _))) => probe(std::os::fd::AsFd::as_fd(&file)),
            _ => false,
        }
    }

    fn claim_in(&self, place: Place, id: &QueueId) -> Result<TryClaim> {
        let entries = self.dir_of(place);
        // A version 2 entry is replaced (a new file renamed over it) when its holder records
        // a change: a lock taken on the old file is no claim, so look again.
        for _ in 0..4 {
            let node = match entries.try_open_node(id.as_str()) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(TryClaim::Gone),
                Err(err @ Error::UnsafePath { .. }) => {
                    self.quarantine(place, id, &err);
                    return Ok(TryClaim::Gone);
                }
                Err(e) => return Err(e),
            };
            let (stored, entry) = match node {
                Node::Dir(dir) => {
                    if !try_lock(&dir).map_err(io_err("flock", dir.path()))? {
                        return Ok(TryClaim::Busy);
                    }
                    // The previous holder may have finished it (moved it away) before we got
                    // the lock.
                    let held = dir.meta()?;
                    match entries.stat(id.as_str())? {
                        Some(m) if m.id() == held.id() => {}
                        _ => return Ok(TryClaim::Gone),
                    }
                    // Leftovers of an envelope update by a holder that crashed.
                    if let Ok(names) = dir.names() {
                        for name in names.iter().filter_map(|n| n.to_str()) {
                            if name.starts_with(".tmp.") {
                                let _ = dir.remove_file(name);
                            }
                        }
                    }
                    match read_entry_in(&dir) {
                        Ok(entry) => (Stored::V1(dir), entry),
                        Err(err) => {
                            self.quarantine(place, id, &err);
                            return Ok(TryClaim::Gone);
                        }
                    }
                }
                Node::File(file, meta) => {
                    let path = entries.join(id.as_str());
                    if !try_lock(&file).map_err(io_err("flock", &path))? {
                        return Ok(TryClaim::Busy);
                    }
                    match entries.stat(id.as_str())? {
                        Some(m) if m.id() == meta.id() => {}
                        Some(_) => continue,
                        None => return Ok(TryClaim::Gone),
                    }
                    match read_v2(&file, &meta, &path) {
                        Ok((entry, body_offset)) => (Stored::V2 { file, body_offset }, entry),
                        Err(err) => {
                            self.quarantine(place, id, &err);
                            return Ok(TryClaim::Gone);
                        }
                    }
                }
            };
            return Ok(TryClaim::Claimed(Claim {
                queue: self.clone(),
                id: id.clone(),
                place,
                stored,
                entry,
                #[cfg(test)]
                saves: 0,
            }));
        }
        Ok(TryClaim::Busy)
    }

    /// Reads and decodes an entry in `place`; `Ok(None)` if its directory is gone.
    fn read_entry_at(&self, place: Place, id: &QueueId) -> Result<Option<QueueEntry>> {
        let entries = self.dir_of(place);
        let r = match entries.try_open_node(id.as_str())? {
            None => return Ok(None),
            Some(Node::Dir(dir)) => read_entry_in(&dir),
            Some(Node::File(f, meta)) => {
                read_v2(&f, &meta, &entries.join(id.as_str())).map(|(e, _)| e)
            }
        };
        match r {
            // Removed while we read it: finished, not corrupt.
            Err(Error::Corrupt { .. }) if entries.stat(id.as_str())?.is_none() => Ok(None),
            r => r.map(Some),
        }
    }

    /// Opens the body of the entry in `place`, positioned at its first octet; `None` if
    /// there is no such entry there.
    fn body_in(&self, place: Place, id: &QueueId) -> Result<Option<File>> {
        let entries = self.dir_of(place);
        match entries.try_open_node(id.as_str())? {
            None => Ok(None),
            Some(Node::Dir(dir)) => dir.open_file(BODY).map(Some),
            Some(Node::File(mut f, meta)) => {
                let path = entries.join(id.as_str());
                let (_, offset) = read_v2(&f, &meta, &path)?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(io_err("seek", &path))?;
                Ok(Some(f))
            }
        }
    }

    /// Moves an unreadable entry to `corrupt/` (the caller holds its lock). Never fails: a
    /// corrupt entry must not stop the queue.
    fn quarantine(&self, place: Place, id: &QueueId, why: &Error) {
        let inner = &self.inner;
        let from = self.dir_of(place);
        let mut to = id.as_str().to_owned();
        if !matches!(inner.corrupt.stat(&to), Ok(None)) {
            to = format!("{id}.{}", fsutil::unique().unwrap_or_default());
        }
        match from.rename(id.as_str(), &inner.corrupt, &to) {
            Ok(()) => {
                let _ = from.sync();
                let _ = inner.corrupt.sync();
                tracing::error!(queue_id = %id, moved_to = %inner.corrupt.join(&to).display(),
                    error = %why, "corrupt queue entry moved aside");
            }
            Err(e) => tracing::error!(queue_id = %id, error = %why, rename_error = %e,
                "corrupt queue entry, and it cannot be moved aside"),
        }
    }
}

/// The envelope's text, refused (an [`Error::Io`] naming `path`) if it is over
/// [`ENVELOPE_MAX`] or does not read back: the queue never writes a file it would not read
/// back.
fn encode_bounded(entry: &QueueEntry, path: &Path) -> Result<String> {
    let text = within_envelope_max(entry.encode_v1(), "envelope", path)?;
    let back = QueueEntry::decode_v1(&text);
    reads_back(back.map(|e| e.envelope), entry, path)?;
    Ok(text)
}

/// The header of a one-file entry (version 3), refused as [`encode_bounded`] refuses an
/// envelope.
fn encode_v2_bounded(entry: &QueueEntry, body_size: u64, path: &Path) -> Result<String> {
    let text = within_envelope_max(entry.encode(body_size), "queue entry header", path)?;
    let back = QueueEntry::decode(&text);
    reads_back(back.map(|(e, _)| e.envelope), entry, path)?;
    Ok(text)
}

/// Whether `back`, the envelope decoded from what is about to be written for `entry`, is
/// `entry`'s and has a recipient: an envelope the types can hold but the stored form cannot (a local part
/// longer than [`STORED_LIMITS`] allows, say, built with `Mailbox::new`) is refused with an
/// [`Error::Io`] of kind `InvalidInput` naming `path` before anything is written, so it is
/// never acknowledged and then found unreadable.
fn reads_back(
    back: std::result::Result<Envelope, String>,
    entry: &QueueEntry,
    path: &Path,
) -> Result<()> {
    let why = match back {
        // Nothing a runner could deliver or bounce: accepted, it would vanish unnoticed.
        Ok(env) if env.rcpts.is_empty() => "has no recipients".to_owned(),
        Ok(env) if env == entry.envelope => return Ok(()),
        Ok(_) => "reads back as a different envelope".to_owned(),
        Err(e) => format!("would not read back: {e}"),
    };
    Err(Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("queue entry refused: its envelope {why}"),
        ),
    })
}

/// `text` (an envelope or header, named `what` in the error) if it is within
/// [`ENVELOPE_MAX`], else an [`Error::Io`] naming `path`.
fn within_envelope_max(text: String, what: &str, path: &Path) -> Result<String> {
    let len = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if len > ENVELOPE_MAX {
        return Err(Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "{what} of {len} octets is over the limit of {ENVELOPE_MAX}"
            )),
        });
    }
    Ok(text)
}

/// A queue entry whose body is being written ([`Queue::begin_entry`]): a file in `tmp/`
/// (without a name where the file system allows it, as a [`PendingMessage`]: a crash leaves
/// nothing) holding the entry's header, with a placeholder for the body's size, then the body
/// written so far ([`Write`], buffered). [`commit`](Self::commit) writes the size in place,
/// fsyncs the file, locks it, gives it its name in `entries/` (a link by its descriptor, or a
/// rename of a named one, never over anything) and fsyncs the directory: a complete, durable
/// entry, which no runner claims before the commit returns. Dropping it uncommitted leaves
/// nothing.
///
/// The size is written as 20 digits, padded with leading zeros (`body-size
/// 00000000000000001234`), which every reader of version 3 entries parses as the number; an
/// entry rewritten later (a recorded outcome) gets the plain form again.
#[derive(Debug)]
pub struct PendingEntry {
    queue: Queue,
    /// The header, then the body.
    file: PendingMessage,
    /// Where the size's 20 digits are.
    size_at: u64,
    header_len: u64,
}

impl PendingEntry {
    /// Body octets written so far.
    pub fn len(&self) -> u64 {
        self.file.len().saturating_sub(self.header_len)
    }

    /// True if no body octet was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the body's size into the header and enqueues the entry, durably: when this
    /// returns `Ok`, the entry survives a crash (see [`Queue::enqueue`]).
    ///
    /// # Errors
    /// [`Error::MessageSealed`] after a failed write; [`Error::Io`]. Nothing is enqueued then.
    pub fn commit(mut self) -> Result<QueueId> {
        let size = format!("{:020}", self.len());
        let inner = &self.queue.inner;
        let (file, _) = self.file.seal_unsynced()?;
        file.write_all_at(size.as_bytes(), self.size_at)
            .map_err(io_err("write", inner.tmp.path()))?;
        let staged = self.file.seal()?;
        // Locked before it has its name in `entries/`, until it is durable: no runner claims
        // it before.
        let locked = try_lock(staged.file).map_err(io_err("flock", inner.tmp.path()))?;
        if !locked {
            return Err(io_err("flock", inner.tmp.path())(std::io::Error::other(
                "the new entry is locked by someone else",
            )));
        }
        let id = match staged.name {
            // A named temporary file (no `O_TMPFILE` here): its name is an id.
            Some(name) => {
                let id = QueueId(name.to_owned());
                rename_noreplace(&inner.tmp, name, &inner.entries)?;
                id
            }
            None => {
                let id = QueueId::generate()?;
                if !link_unnamed(staged, &inner.entries, id.as_str())? {
                    // No link by descriptor here: copied into a file of its own, and the
                    // next entries are named files from the start.
                    inner.no_descriptor_links.store(true, Ordering::Relaxed);
                    return self.queue.enqueue_copy(staged.file);
                }
                id
            }
        };
        let ticket = inner.entries_sync.changed();
        if let Err(e) = inner.entries_sync.sync(&inner.entries, ticket) {
            // Not acknowledged: the client sends it again.
            let _ = inner.entries.remove_file(id.as_str());
            return Err(e);
        }
        Ok(id)
    }
}

impl Write for PendingEntry {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Where [`Queue::enqueue_v2`] takes the body from.
#[derive(Clone, Copy)]
enum BodySource<'a> {
    Bytes(&'a [u8]),
    /// Octets to put first, then a file and its length.
    File(&'a [u8], &'a File, u64),
}

/// Copies `from`, from octet `offset` to its end, by offset (its file position is not used).
fn copy_range(from: &File, mut offset: u64, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read_at(&mut buf, offset) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        offset = offset.saturating_add(n as u64);
    }
}

/// Renames `name` in `from` to the same name in `to`, never over something there:
/// `RENAME_NOREPLACE`, or where the file system lacks it, a link and an unlink.
fn rename_noreplace(from: &Dir, name: &str, to: &Dir) -> Result<()> {
    match rustix::fs::renameat_with(from, name, to, name, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            from.link(name, to, name)
                .map_err(crate::at::errno("link", to.join(name)))?;
            let _ = from.remove_file(name);
            Ok(())
        }
        Err(e) => Err(crate::at::errno("rename", to.join(name))(e)),
    }
}

/// Reads the header of the version 2 entry `file` (`meta` its `fstat`, `path` for errors):
/// the entry and where its body starts. The body must be exactly as long as the header says:
/// a file cut short (or grown) is corrupt.
fn read_v2(file: &File, meta: &Meta, path: &Path) -> Result<(QueueEntry, u64)> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let limit = usize::try_from(ENVELOPE_MAX).unwrap_or(usize::MAX);
    let mut want = 4096usize;
    let mut buf = Vec::new();
    let header_len = loop {
        buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", path)(e)),
            }
        }
        buf.truncate(got);
        if let Some(i) = buf.windows(END2.len()).position(|w| w == END2) {
            break i + END2.len();
        }
        if got < want || want >= limit {
            return Err(corrupt("no end of the header (truncated?)".into()));
        }
        want = want.saturating_mul(8).min(limit);
    };
    let text = std::str::from_utf8(&buf[..header_len])
        .map_err(|_| corrupt("header is not UTF-8".into()))?;
    let (entry, size) = QueueEntry::decode_file(text).map_err(corrupt)?;
    let offset = header_len as u64;
    if meta.size != offset.saturating_add(size) {
        return Err(corrupt(format!(
            "the body is {} octets, the header says {size}",
            meta.size.saturating_sub(offset)
        )));
    }
    Ok((entry, offset))
}

/// Reads and decodes the entry in `dir`.
fn read_entry_in(dir: &Dir) -> Result<QueueEntry> {
    let text = dir
        .try_read_bounded(ENVELOPE, ENVELOPE_MAX)?
        .ok_or_else(|| Error::Corrupt {
            path: dir.join(ENVELOPE),
            reason: "missing envelope".into(),
        })?;
    let corrupt = |reason: String| Error::Corrupt {
        path: dir.join(ENVELOPE),
        reason,
    };
    let text = String::from_utf8(text).map_err(|_| corrupt("not UTF-8".into()))?;
    let entry = QueueEntry::decode_v1(&text).map_err(corrupt)?;
    // Whatever is at `body` is only opened as a regular file, without following a link
    // (`Claim::body`); an entry with something else there stays queued and is held back.
    match dir.stat(BODY)? {
        Some(_) => Ok(entry),
        None => Err(Error::Corrupt {
            path: dir.join(BODY),
            reason: "missing body".into(),
        }),
    }
}

/// A claimed entry on disk: its `flock` is the claim.
#[derive(Debug)]
enum Stored {
    /// Version 1: a directory with `body` and `envelope`.
    V1(Dir),
    /// Version 2 or 3: one file, the header then the body at `body_offset` (rewritten as
    /// version 3).
    V2 { file: File, body_offset: u64 },
}

/// An entry claimed for delivery by this worker. Dropping it releases the claim without
/// changing the entry.
#[derive(Debug)]
pub struct Claim {
    queue: Queue,
    id: QueueId,
    /// Where the entry is (`entries/` or `held/`).
    place: Place,
    /// The entry's directory or file; its `flock` is the claim.
    stored: Stored,
    entry: QueueEntry,
    /// Envelope rewrites by this claim (for the tests of `record_many`).
    #[cfg(test)]
    saves: u32,
}

impl Claim {
    /// The entry's id.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// The entry as stored (updated by [`record`](Self::record)).
    pub fn entry(&self) -> &QueueEntry {
        &self.entry
    }

    /// Where the entry is: active or on hold.
    pub fn place(&self) -> Place {
        self.place
    }

    /// Sets the next attempt time, durably, without counting an attempt (an operator's
    /// "flush": `now`). On hold, the time is kept for after the release.
    ///
    /// # Errors
    /// [`Error::Io`]; the stored entry is unchanged then.
    pub fn set_next_attempt(&mut self, next_attempt: SystemTime) -> Result<()> {
        let old = std::mem::replace(&mut self.entry.next_attempt, next_attempt);
        if let Err(e) = self.save() {
            self.entry.next_attempt = old;
            return Err(e);
        }
        Ok(())
    }

    /// Puts the entry on hold: moves it to `held/`, durably, and releases the claim. An entry
    /// already on hold stays there.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be moved; it stays where it was then.
    pub fn hold(self) -> Result<()> {
        if self.place == Place::Held {
            return Ok(());
        }
        self.move_to(Place::Held)
    }

    /// Releases an entry from hold: its next attempt becomes `next_attempt`, and it moves
    /// back to `entries/`, durably (envelope first, so it is never due at its old time). An
    /// entry that is not on hold only gets the new time.
    ///
    /// # Errors
    /// [`Error::Io`]; the entry stays on hold then (perhaps with the new time).
    pub fn release(mut self, next_attempt: SystemTime) -> Result<()> {
        self.set_next_attempt(next_attempt)?;
        if self.place == Place::Active {
            return Ok(());
        }
        self.move_to(Place::Active)
    }

    fn move_to(self, place: Place) -> Result<()> {
        let from = self.queue.dir_of(self.place);
        let to = self.queue.dir_of(place);
        let id = self.id.as_str();
        // Nothing of that name at the destination (ids are unique): never replace an entry.
        if to.stat(id)?.is_some() {
            return Err(Error::Io {
                op: "rename",
                path: to.join(id),
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
        from.rename(id, to, id)?;
        to.sync()?;
        from.sync()
    }

    /// Opens the message body for reading (relative to the claimed entry's descriptor).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::UnsafePath`].
    pub fn body(&self) -> Result<File> {
        match &self.stored {
            Stored::V1(dir) => dir.open_file(BODY),
            Stored::V2 { file, body_offset } => {
                let dir = self.queue.dir_of(self.place);
                let path = dir.join(self.id.as_str());
                let mut f = dir.open_file(self.id.as_str())?;
                // The name is this claim's file (only the holder replaces it).
                if fstat(&f, &path)?.id() != fstat(file, &path)?.id() {
                    return Err(crate::at::unsafe_path(path, "is not the claimed entry"));
                }
                f.seek(SeekFrom::Start(*body_offset))
                    .map_err(io_err("seek", &path))?;
                Ok(f)
            }
        }
    }

    /// Where the body starts in the file at [`body_path`](Self::body_path): 0 for an entry
    /// of version 1 (its own file), the header's length for a version 2 or 3 entry
    /// (header and body in one file).
    pub fn body_offset(&self) -> u64 {
        match &self.stored {
            Stored::V1(_) => 0,
            Stored::V2 { body_offset, .. } => *body_offset,
        }
    }

    /// Where the message body is stored: for a reader that opens it more than once (a
    /// delivery streaming it to several hosts). The file stays there, unchanged, while the
    /// claim is held. Opening by this path follows links in the queue's path; prefer
    /// [`body`](Self::body) when one descriptor will do.
    pub fn body_path(&self) -> PathBuf {
        match &self.stored {
            Stored::V1(dir) => dir.join(BODY),
            Stored::V2 { .. } => self.queue.dir_of(self.place).join(self.id.as_str()),
        }
    }

    /// Records one recipient's outcome, durably (so a delivered recipient is not delivered
    /// again after a crash). One envelope rewrite and two fsyncs per call: to record several
    /// outcomes, [`record_many`](Self::record_many) costs the same as one call.
    ///
    /// # Errors
    /// [`Error::NoSuchRecipient`] or [`Error::Io`]; the stored state is unchanged then.
    pub fn record(&mut self, recipient: usize, state: RcptState) -> Result<()> {
        self.record_many([(recipient, state)])
    }

    /// Records the outcomes of several recipients (by index), durably, with one envelope
    /// rewrite: the same result as calling [`record`](Self::record) for each in order (a
    /// recipient given twice gets the later state), at the cost of one call. An empty
    /// `states` writes nothing.
    ///
    /// All or nothing: every index is checked before anything changes, and if the envelope
    /// cannot be saved, the entry ([`entry`](Self::entry)) is restored as it was before the
    /// call. (On disk the old envelope stays, unless the failure came after its replacement
    /// was renamed into place, at the directory fsync: then the new one may be there.)
    ///
    /// # Errors
    /// [`Error::NoSuchRecipient`] for the first index past the end of the recipients (nothing
    /// recorded, nothing written), or [`Error::Io`].
    pub fn record_many(
        &mut self,
        states: impl IntoIterator<Item = (usize, RcptState)>,
    ) -> Result<()> {
        let states: Vec<(usize, RcptState)> = states.into_iter().collect();
        let count = self.entry.envelope.rcpts.len();
        if let Some(&(bad, _)) = states.iter().find(|(i, _)| *i >= count) {
            return Err(Error::NoSuchRecipient(bad));
        }
        if states.is_empty() {
            return Ok(());
        }
        let before = self.entry.states.clone();
        for (i, state) in states {
            self.entry.set_state(i, state)?;
        }
        if let Err(e) = self.save() {
            self.entry.states = before;
            return Err(e);
        }
        Ok(())
    }

    /// Ends this attempt: counts it, stores the error and the next attempt time, releases the
    /// claim.
    ///
    /// # Errors
    /// [`Error::Io`]; the stored entry is unchanged then (and due as before).
    pub fn reschedule(mut self, next_attempt: SystemTime, error: impl Into<String>) -> Result<()> {
        self.entry.attempts = self.entry.attempts.saturating_add(1);
        self.entry.next_attempt = next_attempt;
        self.entry.last_error = Some(error.into());
        self.save()
    }

    /// Removes the entry (all recipients done, bounces sent). Not waiting for an fsync: a
    /// crash right after may bring the entry back, and it is then delivered once more
    /// (at least once, never lost; a duplicate is what SMTP accepts, RFC 5321 §6.1).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be moved out of `entries/`.
    pub fn finish(self) -> Result<()> {
        let inner = &self.queue.inner;
        let id = self.id.as_str();
        let from = self.queue.dir_of(self.place);
        if let Stored::V2 { .. } = self.stored {
            from.remove_file(id)?;
            return Ok(());
        }
        from.rename(id, &inner.trash, id)?;
        if let Err(e) = inner.trash.remove_tree(id) {
            tracing::warn!(path = %inner.trash.join(id).display(), error = %e,
                "cannot remove finished entry");
        }
        Ok(())
    }

    fn save(&mut self) -> Result<()> {
        #[cfg(test)]
        {
            self.saves += 1;
        }
        let (file, body_offset) = match &self.stored {
            Stored::V1(dir) => {
                let text = encode_bounded(&self.entry, &dir.join(ENVELOPE))?;
                dir.replace(ENVELOPE, text.as_bytes(), &Perms::PRIVATE)?;
                return dir.sync();
            }
            Stored::V2 { file, body_offset } => (file, *body_offset),
        };
        // A new file with the new header and the same body (copied by offset), locked
        // before it takes the entry's name, fsynced, renamed over the old one.
        let dir = self.queue.dir_of(self.place);
        let tmp = &self.queue.inner.tmp;
        let name = fsutil::unique()?;
        let path = tmp.join(&name);
        let size = fstat(file, &path)?.size.saturating_sub(body_offset);
        let header = encode_v2_bounded(&self.entry, size, &path)?;
        let mut new = tmp.create(&name, &Perms::PRIVATE)?;
        let written = (|| {
            try_lock(&new).map_err(io_err("flock", &path))?;
            new.write_all(header.as_bytes())
                .map_err(io_err("write", &path))?;
            copy_range(file, body_offset, &mut new).map_err(io_err("copy", &path))?;
            new.sync_all().map_err(io_err("fsync", &path))?;
            tmp.rename(&name, dir, self.id.as_str())
        })();
        if let Err(e) = written {
            let _ = tmp.remove_file(&name);
            return Err(e);
        }
        // The new file is the entry (and its lock the claim) from here on.
        self.stored = Stored::V2 {
            file: new,
            body_offset: header.len() as u64,
        };
        dir.sync()
    }
}

/// Opens the notes file for appending (made owner-only; never through a symbolic link).
fn open_notes(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_err("open", path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::io::Read;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rcpt(address: &str) -> Recipient {
        Recipient::new(ForwardPath::Mailbox(
            smtp_proto::parse_mailbox(address).unwrap().into_owned(),
        ))
    }

    fn sample() -> QueueEntry {
        let from = smtp_proto::parse_mailbox("alice@example.org").unwrap();
        let carol = rcpt("carol@example.net")
            .with_notify(Notify {
                success: true,
                failure: true,
                delay: false,
            })
            .with_orcpt(Orcpt::new("rfc822".into(), XText::encode("carol@example.net")).unwrap());
        QueueEntry::new(
            Envelope::with_recipients(
                ReversePath::Mailbox(from.into_owned()),
                vec![rcpt("bob@example.net"), carol],
            )
            .with_ret(Ret::Hdrs)
            .with_envid(XText::encode("QQ314159")),
            t(1_700_000_000),
        )
    }

    #[test]
    fn known_encoding() {
        let mut e = sample();
        e.set_state(
            0,
            RcptState::Failed {
                reply: "550 5.1.1 no\r\nsuch 100%".into(),
            },
        )
        .unwrap();
        assert_eq!(
            e.encode(7),
            "mailstore-queue 3\ncreated 1700000000.000000000\nattempts 0\n\
             next-attempt 1700000000.000000000\n\
             MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159\n\
             RCPT TO:<bob@example.net>\nstate failed 550 5.1.1 no%0D%0Asuch 100%25\n\
             RCPT TO:<carol@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carol@example.net\n\
             state pending\nbody-size 7\nend\n"
        );
        assert_eq!(QueueEntry::decode(&e.encode(7)).unwrap(), (e.clone(), 7));
        // The previous versions, as daemons before version 3 wrote them.
        let v1 = "mailstore-queue 1\ncreated 1700000000.000000000\nattempts 0\n\
             next-attempt 1700000000.000000000\nsender alice@example.org\nret HDRS\n\
             envid QQ314159\nrcpt bob@example.net\nstate failed 550 5.1.1 no%0D%0Asuch 100%25\n\
             rcpt carol@example.net\nnotify SUCCESS,FAILURE\norcpt rfc822;carol@example.net\n\
             state pending\nend\n";
        assert_eq!(e.encode_v1(), v1);
        assert_eq!(QueueEntry::decode_v1(v1).unwrap(), e);
        let v2 = v1
            .replace("mailstore-queue 1", "mailstore-queue 2")
            .replace("pending\nend\n", "pending\nbody-size 7\nend\n");
        assert_eq!(QueueEntry::decode_file(&v2).unwrap(), (e, 7));
    }

    #[test]
    fn decode_refuses_damage() {
        let good = sample().encode(7);
        for bad in [
            good[..good.len() - 4].to_string(),  // truncated: no end
            good[..good.len() - 1].to_string(),  // end not terminated
            good.replace("attempts 0\n", ""),    // missing field
            good.replace("state pending\n", ""), // recipient without state
            good.replace("body-size 7\n", ""),
            good.replace("RET=HDRS", "RET=XYZ"),
            good.replace("RET=HDRS", "SIZE=10"),
            good.replace("<alice@example.org>", "<alice@@example.org>"),
            good.replace("<bob@example.net>", "<bob example.net>"),
            good.replace("NOTIFY=SUCCESS,FAILURE", "NOTIFY=SOMETIMES"),
            good.replace("ORCPT=rfc822;", "ORCPT=rfc822"),
            good.replace("MAIL FROM:", "RCPT TO:"),
            good.replacen("state pending", "state h%G1", 1),
            format!("{good}junk\n"),
            good.replace("mailstore-queue 3", "mailstore-queue 4"),
            good.replace("1700000000.000000000", "1700000000"),
            String::new(),
        ] {
            assert!(QueueEntry::decode_file(&bad).is_err(), "{bad:?}");
        }
        let v1 = sample().encode_v1();
        for bad in [
            v1.replace("sender alice@example.org", "sender alice@@example.org"),
            v1.replace("sender alice@example.org", "sender <alice@example.org>"),
            v1.replace("rcpt bob@example.net", "rcpt bob"),
            v1.replace("ret HDRS", "ret SOME"),
            v1.replace("notify SUCCESS,FAILURE", "notify SUCCESS ORCPT=x;y"),
            v1.replace("orcpt rfc822;", "orcpt rfc822:"),
            v1.replace("state pending\n", ""),
            v1.replace("mailstore-queue 1", "mailstore-queue 2"),
        ] {
            assert!(QueueEntry::decode_v1(&bad).is_err(), "{bad:?}");
        }
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    fn state() -> impl Strategy<Value = RcptState> {
        prop_oneof![
            Just(RcptState::Pending),
            Just(RcptState::Delivered),
            any::<String>().prop_map(|reply| RcptState::Failed { reply }),
            (
                any::<String>(),
                proptest::option::of("[0-9]\\.[0-9]{1,3}\\.[0-9]{1,3}"),
                proptest::option::of("[a-z0-9.-]{1,20}[a-z0-9]"),
            )
                .prop_map(|(reply, status, remote_mta)| RcptState::Refused {
                    reply,
                    status,
                    remote_mta,
                }),
        ]
    }

    fn time() -> impl Strategy<Value = SystemTime> {
        (0u64..1 << 40, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
    }

    /// Mailboxes with dot-atom and quoted local parts (the envelope's own proptest in
    /// smtp-proto covers the address syntax; this is about the entry around it).
    fn mailbox() -> impl Strategy<Value = smtp_proto::MailboxBuf> {
        (
            "[a-z0-9.+%-]{1,10}|[ -~]{0,12}|[a-zé中]{1,5}",
            "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}",
        )
            .prop_map(|(l, d)| {
                smtp_proto::Mailbox::new(l, smtp_proto::Domain::name(d).unwrap()).unwrap()
            })
    }

    prop_compose! {
        fn recipient()(m in proptest::option::of(mailbox()),
                       notify in proptest::option::of(any::<(bool, bool, bool)>()),
                       orcpt in proptest::option::of("\\PC{0,20}")) -> Recipient {
            let mut r = Recipient::new(m.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox));
            if let Some((success, failure, delay)) = notify {
                r = r.with_notify(Notify { success, failure, delay });
            }
            if let Some(a) = orcpt {
                r = r.with_orcpt(Orcpt::new("rfc822".into(), XText::encode(&a)).unwrap());
            }
            r
        }
    }

    prop_compose! {
        fn entry()(from in proptest::option::of(mailbox()),
                   recipients in proptest::collection::vec((recipient(), state()), 0..5),
                   ret in proptest::option::of(any::<bool>()), envid in opt_text(),
                   created in time(), attempts in any::<u32>(),
                   next_attempt in time(), last_error in opt_text()) -> QueueEntry {
            let (rcpts, states): (Vec<_>, Vec<_>) = recipients.into_iter().unzip();
            let mut envelope =
                Envelope::with_recipients(from.map_or(ReversePath::Null, ReversePath::Mailbox), rcpts);
            envelope.ret = ret.map(|full| if full { Ret::Full } else { Ret::Hdrs });
            envelope.envid = envid.filter(|e| !e.is_empty()).map(|e| XText::encode(&e));
            QueueEntry { envelope, states, created, attempts, next_attempt, last_error }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(e in entry(), size in any::<u64>()) {
            let text = e.encode(size);
            prop_assert_eq!(QueueEntry::decode(&text).unwrap(), (e.clone(), size));
            // Every field is one line: the file is exactly the lines written.
            prop_assert!(text.lines().all(|l| !l.contains('\r')));
            // The previous version's text of it reads back as the same entry.
            prop_assert_eq!(QueueEntry::decode_v1(&e.encode_v1()).unwrap(), e);
        }

        #[test]
        fn decode_never_panics(s in any::<String>()) {
            let _ = QueueEntry::decode(&s);
            let _ = QueueEntry::decode_v1(&s);
        }
    }

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q
            .enqueue(&sample(), b"Subject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert_eq!(q.due(t(1_699_999_999)).unwrap(), vec![]);
        assert_eq!(q.due(t(1_700_000_000)).unwrap(), vec![id.clone()]);

        let mut claim = q.claim(&id).unwrap().unwrap();
        assert!(
            q.claim(&id).unwrap().is_none(),
            "second claim in the same process"
        );
        let mut body = String::new();
        claim.body().unwrap().read_to_string(&mut body).unwrap();
        assert_eq!(body, "Subject: hi\r\n\r\nbody\r\n");
        let off = usize::try_from(claim.body_offset()).unwrap();
        assert_eq!(
            &std::fs::read(claim.body_path()).unwrap()[off..],
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        claim.record(0, RcptState::Delivered).unwrap();
        assert!(matches!(
            claim.record(5, RcptState::Delivered),
            Err(Error::NoSuchRecipient(5))
        ));
        claim
            .reschedule(t(1_700_000_600), "421 4.7.0 try again later")
            .unwrap();

        let stored = q.entry(&id).unwrap().unwrap();
        assert_eq!(stored.attempts, 1);
        assert_eq!(stored.next_attempt, t(1_700_000_600));
        assert_eq!(
            stored.last_error.as_deref(),
            Some("421 4.7.0 try again later")
        );
        assert_eq!(*stored.state(0), RcptState::Delivered);
        assert_eq!(*stored.state(1), RcptState::Pending);
        assert_eq!(q.due(t(1_700_000_000)).unwrap(), vec![]);
        assert_eq!(q.due(t(1_700_000_600)).unwrap(), vec![id.clone()]);

        // A dropped claim changes nothing and frees the entry.
        drop(q.claim(&id).unwrap().unwrap());
        let claim = q.claim(&id).unwrap().unwrap();
        claim.finish().unwrap();
        assert!(q.claim(&id).unwrap().is_none());
        assert_eq!(q.list().unwrap(), vec![]);
        for sub in ["entries", "tmp", "trash", "corrupt", "held"] {
            assert_eq!(
                fs::read_dir(dir.path().join(sub)).unwrap().count(),
                0,
                "{sub}"
            );
        }
    }

    #[test]
    fn hold_release_and_wake() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue(&sample(), b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let other = q.enqueue(&sample(), b"y").unwrap();

        // A claim held elsewhere is Busy, not Gone; a missing entry is Gone.
        let runner = q.claim(&id).unwrap().unwrap();
        assert!(matches!(q.try_claim(&id).unwrap(), TryClaim::Busy));
        drop(runner);
        let missing: QueueId = "nope".parse().unwrap();
        assert!(matches!(q.try_claim(&missing).unwrap(), TryClaim::Gone));
        assert_eq!(q.find(&missing).unwrap(), None);

        let TryClaim::Claimed(c) = q.try_claim(&id).unwrap() else {
            panic!("claimable")
        };
        assert_eq!(c.place(), Place::Active);
        c.hold().unwrap();
        // Held: not listed, never due, not claimable by a runner; found, claimable by a tool.
        assert_eq!(q.due(t(u32::MAX.into())).unwrap(), vec![other.clone()]);
        assert!(q.claim(&id).unwrap().is_none());
        assert_eq!(q.list_held().unwrap().len(), 1);
        assert_eq!(q.find(&id).unwrap().unwrap().0, Place::Held);
        let mut s = String::new();
        q.read_body_any(&id)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "Subject: x\r\n\r\nbody\r\n");
        let TryClaim::Claimed(mut c) = q.try_claim(&id).unwrap() else {
            panic!("claimable on hold")
        };
        assert_eq!(c.place(), Place::Held);
        c.set_next_attempt(t(1_800_000_000)).unwrap();
        c.release(t(1_700_000_100)).unwrap();
        assert_eq!(q.list_held().unwrap(), vec![]);
        let (place, e) = q.find(&id).unwrap().unwrap();
        assert_eq!(
            (place, e.next_attempt, e.attempts),
            (Place::Active, t(1_700_000_100), 0)
        );
        assert_eq!(
            q.due(t(1_700_000_100)).unwrap(),
            vec![other.clone(), id.clone()]
        );

        // A held entry can be removed.
        let TryClaim::Claimed(c) = q.try_claim(&other).unwrap() else {
            panic!()
        };
        c.hold().unwrap();
        let TryClaim::Claimed(c) = q.try_claim(&other).unwrap() else {
            panic!()
        };
        c.finish().unwrap();
        assert!(matches!(q.try_claim(&other).unwrap(), TryClaim::Gone));

        assert!(!q.take_wake());
        q.wake().unwrap();
        q.wake().unwrap();
        assert!(q.take_wake());
        assert!(!q.take_wake());
    }

    #[test]
    fn notes_are_taken_once_in_order_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        assert!(q.take_notes().is_empty());
        q.note("action=delete queue_id=1").unwrap();
        q.note("two\r\nlines").unwrap();
        assert_eq!(q.take_notes(), ["action=delete queue_id=1", "two  lines"]);
        assert!(q.take_notes().is_empty());
        // Nobody reading: full at NOTES_MAX, and writable again once read.
        let line = "x".repeat(1023);
        let mut refused = false;
        for _ in 0..=(NOTES_MAX / 1024) {
            if q.note(&line).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert_eq!(q.take_notes().len() as u64, NOTES_MAX / 1024);
        q.note("again").unwrap();
        assert_eq!(q.take_notes(), ["again"]);
        // Not through a symbolic link planted in its place.
        let _ = std::fs::remove_file(dir.path().join("notes"));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("notes")).unwrap();
        assert!(q.note("x").is_err());
        assert!(q.take_notes().is_empty());
    }

    #[test]
    fn corrupt_entries_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let good = q.enqueue_v1(&sample(), b"x").unwrap();
        let bad = q.enqueue_v1(&sample(), b"y").unwrap();
        let nobody = q.enqueue_v1(&sample(), b"z").unwrap();
        fs::write(
            dir.path()
                .join("entries")
                .join(bad.as_str())
                .join("envelope"),
            "garbage",
        )
        .unwrap();
        fs::remove_file(
            dir.path()
                .join("entries")
                .join(nobody.as_str())
                .join("body"),
        )
        .unwrap();
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.due(t(2_000_000_000)).unwrap(), vec![good]);
        assert!(dir
            .path()
            .join("corrupt")
            .join(bad.as_str())
            .join("envelope")
            .exists());
        assert!(dir.path().join("corrupt").join(nobody.as_str()).exists());
    }

    /// An old entry whose sender or a recipient does not parse is corrupt: moved aside,
    /// never claimed, never read as another sender (the null one) or without the recipient.
    #[test]
    fn old_entries_with_unparsable_addresses_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let v2 = |e: &QueueEntry, body: &str| {
            e.encode_v1()
                .replacen("mailstore-queue 1", "mailstore-queue 2", 1)
                .replace(
                    "\nend\n",
                    &format!("\nbody-size {}\nend\n{body}", body.len()),
                )
        };
        let good = sample();
        let write = |name: &str, text: String| {
            fs::write(dir.path().join("entries").join(name), text).unwrap();
        };
        write("good2", v2(&good, "x"));
        write(
            "badsender2",
            v2(&good, "x").replace("sender alice@example.org", "sender alice@@example.org"),
        );
        write(
            "badrcpt2",
            v2(&good, "x").replace("rcpt bob@example.net", "rcpt bob@exa mple.net"),
        );
        let v1bad = q.enqueue_v1(&good, b"y").unwrap();
        fs::write(
            dir.path()
                .join("entries")
                .join(v1bad.as_str())
                .join("envelope"),
            good.encode_v1().replace("orcpt rfc822;", "orcpt rfc822"),
        )
        .unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let due: Vec<String> = q
            .due(t(2_000_000_000))
            .unwrap()
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(due, ["good2"]);
        assert_eq!(q.entry(&"good2".parse().unwrap()).unwrap().unwrap(), good);
        for name in ["badsender2", "badrcpt2", v1bad.as_str()] {
            assert!(dir.path().join("corrupt").join(name).exists(), "{name}");
            assert!(q.claim(&name.parse().unwrap()).unwrap().is_none());
        }
    }

    #[test]
    fn corrupt_entry_found_by_claim() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue_v1(&sample(), b"x").unwrap();
        fs::write(
            dir.path()
                .join("entries")
                .join(id.as_str())
                .join("envelope"),
            "mailstore-queue 1\n",
        )
        .unwrap();
        assert!(q.claim(&id).unwrap().is_none());
        assert!(dir.path().join("corrupt").join(id.as_str()).exists());
    }

    #[test]
    fn pending_body_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let mut p = q.begin().unwrap();
        p.write_all(b"streamed").unwrap();
        let a = q.enqueue_pending(&sample(), &mut p).unwrap();
        let b = q.enqueue_pending(&sample(), &mut p).unwrap();
        drop(p);
        assert_ne!(a, b);
        let mut s = String::new();
        q.read_body(&b).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "streamed");
        assert_eq!(a.as_str().parse::<QueueId>().unwrap(), a);
        for bad in ["", "../x", ".x", "a/b", "a\0"] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?}");
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn entry_written_as_it_arrives() {
        entry_written_as_it_arrives_in(false);
        // Where the file system has no `O_TMPFILE`: a named file, renamed into place.
        entry_written_as_it_arrives_in(true);
    }

    fn entry_written_as_it_arrives_in(named: bool) {
        crate::pending::NAMED_ONLY.with(|n| n.set(named));
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        // Chunks below, at and above the 64 KiB buffer.
        let body: Vec<u8> = (0..200_003u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut p = q.begin_entry(&sample()).unwrap();
        for chunk in [&body[..10], &body[10..65_546], &body[65_546..]] {
            p.write_all(chunk).unwrap();
        }
        assert_eq!(p.len(), 200_003);
        // Nothing is an entry before the commit.
        assert!(q.list().unwrap().is_empty());
        let id = p.commit().unwrap();
        let file = fs::read(dir.path().join("entries").join(id.as_str())).unwrap();
        let header = sample()
            .encode(200_003)
            .replace("body-size 200003\n", "body-size 00000000000000200003\n");
        assert_eq!(&file[..header.len()], header.as_bytes());
        assert_eq!(&file[header.len()..], &body[..]);
        let mut read = Vec::new();
        q.read_body(&id).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, body);
        assert_eq!(q.list().unwrap(), vec![(id.clone(), sample())]);
        // A rewrite (an outcome recorded) writes the size plainly, the body unchanged.
        let mut claim = q.claim(&id).unwrap().unwrap();
        claim.record(0, RcptState::Delivered).unwrap();
        drop(claim);
        let file = fs::read(dir.path().join("entries").join(id.as_str())).unwrap();
        let text = String::from_utf8_lossy(&file);
        assert!(text.contains("state delivered\n"), "{text:.400}");
        assert!(text.contains("\nbody-size 200003\nend\n"), "{text:.400}");
        let mut read = Vec::new();
        q.read_body(&id).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, body);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // An empty body is an entry too.
        let empty = q.begin_entry(&sample()).unwrap().commit().unwrap();
        let mut read = Vec::new();
        q.read_body(&empty).unwrap().read_to_end(&mut read).unwrap();
        assert!(read.is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        crate::pending::NAMED_ONLY.with(|n| n.set(false));
    }

    #[test]
    fn entry_not_committed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let mut p = q.begin_entry(&sample()).unwrap();
        p.write_all(&vec![b'x'; 100_000]).unwrap();
        // Live: no name at all (`O_TMPFILE`)...
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        drop(p);
        // ... or, where the file system has none, one that is locked, so another process's
        // clean-up leaves it alone.
        crate::pending::NAMED_ONLY.with(|n| n.set(true));
        let mut p = q.begin_entry(&sample()).unwrap();
        p.write_all(&vec![b'x'; 100_000]).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let other = File::open(&names[0]).unwrap();
        assert!(
            !try_lock(&other).unwrap(),
            "the pending entry is not locked"
        );
        drop(p);
        crate::pending::NAMED_ONLY.with(|n| n.set(false));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(q.list().unwrap().is_empty());
        // A header over the limit: refused before anything is written.
        let mut huge = sample();
        huge.last_error = Some("x".repeat(usize::try_from(ENVELOPE_MAX).unwrap()));
        let err = q.begin_entry(&huge).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// An envelope the types hold but the stored form cannot (a local part or domain past
    /// [`STORED_LIMITS`], built by hand): every way of writing an entry refuses it before
    /// anything is written, so it is never acknowledged and then found unreadable.
    #[test]
    fn envelope_that_would_not_read_back_is_refused() {
        use smtp_proto::address::{Domain, Mailbox};
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let long_local = "a".repeat(STORED_LIMITS.max_local_part + 1);
        let long_label = format!("{}.example", "b".repeat(STORED_LIMITS.max_domain));
        let local = |l: &str| {
            Mailbox::new(
                l.to_owned(),
                Domain::name("example.net".to_owned()).unwrap(),
            )
            .unwrap()
        };
        let long_domain = Mailbox::new("x".to_owned(), Domain::name(long_label).unwrap()).unwrap();
        let mut bad = Vec::new();
        let mut e = sample();
        e.envelope.from = ReversePath::Mailbox(local(&long_local));
        bad.push(e);
        let mut e = sample();
        e.envelope
            .rcpts
            .push(Recipient::new(ForwardPath::Mailbox(local(&long_local))));
        bad.push(e);
        let mut e = sample();
        e.envelope.rcpts[0] = Recipient::new(ForwardPath::Mailbox(long_domain));
        bad.push(e);
        for entry in &bad {
            for err in [
                q.enqueue(entry, b"body\r\n").unwrap_err(),
                q.enqueue_v1(entry, b"body\r\n").unwrap_err(),
                q.begin_entry(entry).map(|_| ()).unwrap_err(),
            ] {
                let Error::Io { source, .. } = &err else {
                    panic!("{err:?}")
                };
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{err}");
                assert!(err.to_string().contains("would not read back"), "{err}");
            }
        }
        // No recipients: nothing to deliver or bounce, refused the same way.
        let mut e = sample();
        e.envelope.rcpts.clear();
        for err in [
            q.enqueue(&e, b"body\r\n").unwrap_err(),
            q.enqueue_v1(&e, b"body\r\n").unwrap_err(),
            q.begin_entry(&e).map(|_| ()).unwrap_err(),
        ] {
            assert!(err.to_string().contains("has no recipients"), "{err}");
        }
        assert!(q.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 0);
        // At the limit it is written and read back.
        let mut e = sample();
        e.envelope.from = ReversePath::Mailbox(local(&"a".repeat(STORED_LIMITS.max_local_part)));
        let id = q.enqueue(&e, b"body\r\n").unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        assert_eq!(q.claim(&id).unwrap().unwrap().entry().envelope, e.envelope);
    }

    /// Entries seen by the hook below, and those of them it could lock.
    static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static UNLOCKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// At the fsync of `entries/`: every entry there must still be locked (not claimable).
    fn all_locked(entries: &Path) {
        for e in fs::read_dir(entries).unwrap() {
            let f = File::open(e.unwrap().path()).unwrap();
            SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if try_lock(&f).unwrap() {
                UNLOCKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn entry_locked_until_durable_and_removed_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let entries = dir.path().join("entries");
        crate::at::tests::on_sync_of(&entries, all_locked);
        let mut ids = Vec::new();
        for named in [false, true] {
            crate::pending::NAMED_ONLY.with(|n| n.set(named));
            let before = crate::at::tests::syncs_of(&entries);
            let mut p = q.begin_entry(&sample()).unwrap();
            p.write_all(b"body\r\n").unwrap();
            ids.push(p.commit().unwrap());
            assert_eq!(crate::at::tests::syncs_of(&entries), before + 1);
            // The hook saw this entry locked (and the one before, released, is claimed
            // below), so it is claimable only once committed.
            assert!(q.claim(ids.last().unwrap()).unwrap().is_some());
        }
        assert!(SEEN.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        // Only the first entry, at the second commit's fsync, was free to lock: each new one
        // was locked at its own.
        assert_eq!(UNLOCKED.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The directory's fsync fails: not enqueued, nothing left.
        crate::at::tests::fail_syncs_of(&entries, true);
        for named in [false, true] {
            crate::pending::NAMED_ONLY.with(|n| n.set(named));
            let mut p = q.begin_entry(&sample()).unwrap();
            p.write_all(b"body\r\n").unwrap();
            assert!(p.commit().is_err());
            assert_eq!(q.list().unwrap().len(), 2);
            assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        }
        crate::at::tests::fail_syncs_of(&entries, false);
        crate::pending::NAMED_ONLY.with(|n| n.set(false));
    }

    #[test]
    fn entry_copied_where_files_cannot_be_linked_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        crate::pending::NO_DESCRIPTOR_LINKS.with(|n| n.set(true));
        let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut ids = Vec::new();
        for round in 0..2 {
            let mut p = q.begin_entry(&sample()).unwrap();
            p.write_all(&body).unwrap();
            // After the first failed link, the next entries are named files from the start.
            let staged = fs::read_dir(dir.path().join("tmp")).unwrap().count();
            assert_eq!(staged, round, "round {round}");
            ids.push(p.commit().unwrap());
        }
        crate::pending::NO_DESCRIPTOR_LINKS.with(|n| n.set(false));
        for id in &ids {
            let mut read = Vec::new();
            q.read_body(id).unwrap().read_to_end(&mut read).unwrap();
            assert_eq!(read, body);
        }
        assert_eq!(q.list().unwrap().len(), 2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn pending_enqueued_after_a_front() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        // Below and above the size copied in one write.
        for len in [10usize, 300 * 1024] {
            let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut p = q.begin().unwrap();
            p.write_all(&body).unwrap();
            let id = q
                .enqueue_pending_after(&sample(), b"DKIM-Signature: x\r\n", &mut p)
                .unwrap();
            let mut read = Vec::new();
            q.read_body(&id).unwrap().read_to_end(&mut read).unwrap();
            let mut want = b"DKIM-Signature: x\r\n".to_vec();
            want.extend_from_slice(&body);
            assert_eq!(read, want, "{len}");
            // The pending message itself is unchanged, still usable.
            let mut again = Vec::new();
            p.reader().unwrap().read_to_end(&mut again).unwrap();
            assert_eq!(again, body);
        }
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        let long = format!("rcpt{}\u{1b}[2J", "x".repeat(5000));
        let good = sample()
            .encode_v1()
            .replace("ret HDRS\n", &format!("{long}\n"));
        let err = QueueEntry::decode_v1(&good).unwrap_err();
        assert!(err.len() < 120, "{err}");
        assert!(!err.contains('\u{1b}'), "{err:?}");
        assert!(err.ends_with("..."), "{err}");
        assert_eq!(excerpt("a\tb"), "\"a\\tb\"");
    }

    fn many(n: usize) -> QueueEntry {
        let mut e = sample();
        e.envelope.rcpts = (0..n).map(|i| rcpt(&format!("r{i}@example.net"))).collect();
        e
    }

    #[test]
    fn record_many_saves_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue(&many(100), b"x").unwrap();
        let mut claim = q.claim(&id).unwrap().unwrap();
        claim.record_many(Vec::new()).unwrap();
        assert_eq!(claim.saves, 0);
        claim
            .record_many((0..100).map(|i| (i, RcptState::Delivered)))
            .unwrap();
        assert_eq!(claim.saves, 1);
        let stored = q.entry(&id).unwrap().unwrap();
        assert_eq!(&stored, claim.entry());
        assert!(stored.recipients().all(|(_, s)| *s == RcptState::Delivered));
        // A bad index anywhere: nothing recorded, nothing written.
        let failed = RcptState::Failed {
            reply: "550 no".into(),
        };
        assert!(matches!(
            claim.record_many([(3, failed.clone()), (100, failed), (7, RcptState::Pending)]),
            Err(Error::NoSuchRecipient(100))
        ));
        assert_eq!(claim.saves, 1);
        assert_eq!(claim.entry(), &stored);
        assert_eq!(q.entry(&id).unwrap().unwrap(), stored);
    }

    #[test]
    fn record_many_restores_the_entry_when_the_save_fails() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue(&many(3), b"x").unwrap();
        let mut claim = q.claim(&id).unwrap().unwrap();
        claim.record(1, RcptState::Delivered).unwrap();
        let before = claim.entry().clone();
        // The queue's tmp/ removed under the claim: no new version can be written.
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let r = claim.record_many([
            (0, RcptState::Delivered),
            (1, RcptState::Pending),
            (1, RcptState::Failed { reply: "x".into() }),
        ]);
        assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
        assert_eq!(claim.entry(), &before);
    }

    fn outcomes() -> impl Strategy<Value = (usize, Vec<(usize, RcptState)>)> {
        (1usize..6).prop_flat_map(|n| {
            // Indices up to n: sometimes one past the end.
            (Just(n), proptest::collection::vec((0..=n, state()), 0..8))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// `record_many` is sequential `record`s with one save, or, with a bad index,
        /// nothing at all.
        #[test]
        fn record_many_equals_sequential_records((n, states) in outcomes()) {
            let dir = tempfile::tempdir().unwrap();
            let q = Queue::open(dir.path()).unwrap();
            let a = q.enqueue(&many(n), b"x").unwrap();
            let b = q.enqueue(&many(n), b"x").unwrap();
            let mut one_by_one = q.claim(&a).unwrap().unwrap();
            let mut at_once = q.claim(&b).unwrap().unwrap();
            let r = at_once.record_many(states.clone());
            if let Some(&(bad, _)) = states.iter().find(|(i, _)| *i >= n) {
                prop_assert!(matches!(r, Err(Error::NoSuchRecipient(i)) if i == bad));
                prop_assert_eq!(at_once.entry(), &many(n));
                prop_assert_eq!(q.entry(&b).unwrap().unwrap(), many(n));
                prop_assert_eq!(at_once.saves, 0);
            } else {
                r.unwrap();
                for (i, s) in &states {
                    one_by_one.record(*i, s.clone()).unwrap();
                }
                prop_assert_eq!(at_once.entry(), one_by_one.entry());
                prop_assert_eq!(
                    fs::read(dir.path().join("entries").join(a.as_str())).unwrap(),
                    fs::read(dir.path().join("entries").join(b.as_str())).unwrap()
                );
                prop_assert_eq!(at_once.saves, u32::from(!states.is_empty()));
            }
        }
    }

    #[test]
    fn version_2_is_one_file_and_damage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue(&sample(), b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let path = dir.path().join("entries").join(id.as_str());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("mailstore-queue 3\ncreated "), "{text}");
        assert!(
            text.ends_with("state pending\nbody-size 20\nend\nSubject: x\r\n\r\nbody\r\n"),
            "{text}"
        );
        assert_eq!(q.entry(&id).unwrap().unwrap(), sample());
        // Cut short, grown, or a header without its end: moved aside.
        let cut = q.enqueue(&sample(), b"0123456789").unwrap();
        let grown = q.enqueue(&sample(), b"0123456789").unwrap();
        let headless = q.enqueue(&sample(), b"0123456789").unwrap();
        let p = |id: &QueueId| dir.path().join("entries").join(id.as_str());
        let full = fs::read(p(&cut)).unwrap();
        fs::write(p(&cut), &full[..full.len() - 1]).unwrap();
        fs::write(p(&grown), [&full[..], b"x"].concat()).unwrap();
        fs::write(p(&headless), &full[..40]).unwrap();
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        for bad in [&cut, &grown, &headless] {
            assert!(dir.path().join("corrupt").join(bad.as_str()).is_file());
        }
    }

    #[test]
    fn version_1_entries_still_work_beside_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let old = q.enqueue_v1(&sample(), b"old body").unwrap();
        let new = q.enqueue(&sample(), b"new body").unwrap();
        assert!(dir.path().join("entries").join(old.as_str()).is_dir());
        assert!(dir.path().join("entries").join(new.as_str()).is_file());
        assert_eq!(q.list().unwrap().len(), 2);
        for (id, want) in [(&old, "old body"), (&new, "new body")] {
            let mut s = String::new();
            q.read_body(id).unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, want);
            let mut c = q.claim(id).unwrap().unwrap();
            c.record(0, RcptState::Delivered).unwrap();
            let mut s = String::new();
            c.body().unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, want, "body unchanged by a record");
            let off = usize::try_from(c.body_offset()).unwrap();
            assert_eq!(&fs::read(c.body_path()).unwrap()[off..], want.as_bytes());
            c.reschedule(t(1_700_000_600), "later").unwrap();
            let e = q.entry(id).unwrap().unwrap();
            assert_eq!(e.attempts, 1);
            assert_eq!(*e.state(0), RcptState::Delivered);
            let TryClaim::Claimed(c) = q.try_claim(id).unwrap() else {
                panic!("claimable")
            };
            c.hold().unwrap();
            let mut s = String::new();
            q.read_body_any(id).unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, want);
            let TryClaim::Claimed(c) = q.try_claim(id).unwrap() else {
                panic!("claimable on hold")
            };
            c.release(t(1_700_000_000)).unwrap();
            q.claim(id).unwrap().unwrap().finish().unwrap();
            assert!(q.entry(id).unwrap().is_none());
        }
        assert_eq!(fs::read_dir(dir.path().join("entries")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_claim_survives_the_replacement_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let id = q.enqueue(&sample(), b"x").unwrap();
        let mut c = q.claim(&id).unwrap().unwrap();
        for i in 0..3 {
            c.record(0, RcptState::Delivered).unwrap();
            // The new file is locked by the claim: nobody else gets it.
            assert!(matches!(q.try_claim(&id).unwrap(), TryClaim::Busy), "{i}");
        }
        drop(c);
        assert!(q.claim(&id).unwrap().is_some());
    }
}
