//! The numbered spool: the default mailbox store, and a valid MH folder.
//!
//! # Layout
//!
//! ```text
//! <root>/.tmp/                  messages being received (see PendingMessage)
//! <root>/<user>/1               message 1, exactly the bytes delivered
//! <root>/<user>/1.status        its IMAP flags
//! <root>/<user>/2 ...
//! <root>/<user>/.highwater.<n>  the high-water marker: an empty file whose name is the
//!                               highest number ever given out in this mailbox
//! <root>/<user>/.mh_sequences   MH sequences: new mail is in `unseen` (see crate::mh)
//! <root>/<user>/.mh_sequences.spare  the previous sequences; the next ones are written into it
//!                               and the two names exchanged (no inode made or freed per delivery)
//! <root>/<user>/.recent         template status file for new messages (see below)
//! <root>/<user>/.next           (older versions only; still read) the lowest number allowed next
//! ```
//!
//! Messages are numbered in order of arrival, starting at 1. Numbers are never reused, whoever
//! deletes a message (this crate, mutt, `rm`) and across restarts, so they serve as IMAP UIDs.
//! Gaps are possible (deleted messages, and a number burnt by a delivery that crashed half-way).
//!
//! A status file holds the message's flags separated by single spaces and ended by one newline,
//! e.g. `\Seen \Answered` + LF; no flags is a lone LF. A new message's status is exactly the 8
//! bytes `\Recent` + LF ([`NEW_STATUS`]). The status files are the record of a message's state;
//! `.mh_sequences` is kept in step with them for MH readers (mutt, nmh, Claws Mail, Python's
//! `mailbox.MH`), which do not read `.status` files (they skip every name that is not a number).
//!
//! # Delivering
//!
//! 1. The message is written to a temporary file in `<root>/.tmp/` and fsynced, outside any lock.
//! 2. Under the mailbox's directory lock ([`crate::lock`]), the next number `n` is chosen
//!    (below); the high-water marker is renamed to `.highwater.<n>` (a rename: no file data to
//!    write or sync) and `.mh_sequences` replaced by the old sequences with `n` added to
//!    `unseen` (written into `.mh_sequences.spare`, which then trades names with `.mh_sequences`
//!    in one `renameat2(RENAME_EXCHANGE)`: a reader that opens it sees the old or the new (one
//!    still reading the previous file when the next delivery rewrites it can see that), and
//!    no inode is made or freed per delivery; not fsynced: it is for MH readers, the status
//!    files are the record). Then `<n>.status` is made as a hard link to the durable
//!    template `.recent` (its content is always `\Recent` + LF, so no data needs writing or
//!    syncing), and the message is hard-linked as `<n>`. The status appears first: readers list
//!    messages by their number files, so no reader ever sees a message without its status,
//!    and, since the file was complete before it got its name, never a partial message.
//! 3. The lock is released and the mailbox directory fsynced; only then does `deliver` return.
//!    Deliveries into one mailbox share that fsync when they overlap (an fsync that began
//!    after a delivery's links covers it), and on a journaling file system deliveries into
//!    different mailboxes share the journal commit. Before the first delivery that a process
//!    places in a mailbox, the root is fsynced too, whether this delivery made the mailbox or
//!    found it (its maker, another thread or process, may not have synced the root yet): a
//!    message is never acknowledged in a directory whose own name could still be lost.
//!
//! Deliveries into one mailbox that threads of one process start at the same time are placed
//! together: the first to find no batch running takes the lock and does step 2 for all that
//! are waiting (one marker move to the highest number, one `.mh_sequences` rewrite, then each
//! status and message linked in order), while the others wait for their numbers; each then
//! makes its links durable as in step 3 (the first fsync covers the batch). Other processes
//! are excluded by the lock as before. This cuts the work under the lock to about five system
//! calls per message and the lock holds to one per batch.
//!
//! The marker's rename and the links are operations on one directory, in that order, made
//! durable by that one fsync: on a journaling file system that commits metadata operations in
//! order (ext4, XFS), a message name that survives a crash has its marker with it. One window
//! remains: between the links and that fsync a reader can already see message `n`; if a power
//! failure then loses both (the delivery had not returned, its sender got no `250` and sends
//! it again), `n` is given to the next message, so a reader that saw the lost one in those
//! milliseconds sees another message under its number. Reserving numbers in blocks (the
//! marker moved ahead and fsynced once per block, inside the lock) would close it, at the cost
//! of gaps after every restart; not done. (An earlier
//! design fsynced a `.highwater` file, the sequences and the directory inside the lock: three
//! fsyncs in a row per delivery, serialised per mailbox, a quarter of the throughput.)
//!
//! Flag changes replace the status file with a new one (temporary file, fsync, rename), so the
//! shared template is never written through: programs other than this crate must not modify
//! status files in place either. They also update `unseen` (no `\Seen`), `flagged`
//! (`\Flagged`) and `replied` (`\Answered`) in `.mh_sequences`; a deletion removes the number
//! from every sequence. Other MH programs that change `.mh_sequences` should not run while mail
//! is delivered: they lock the file, this crate locks the directory and replaces the file.
//!
//! # Choosing the next number
//!
//! `n = max(marker, .highwater, .next - 1, highest number present) + 1` (the last two written by
//! older versions, still read), then past any number still
//! taken (a message, or a status whose message never arrived). The highest number present is
//! found by one scan of the directory the first time a process delivers into a mailbox (that
//! scan also removes leftovers of crashed processes: temporary files, and statuses whose message
//! never arrived) or when the marker is not the one this process set (another process
//! delivered, or a mailbox from an older version). Since the marker is on record with `n`, a deletion by any program, a restart, or a
//! crash at any point never gives a number out twice: after a crash between the record and the links the
//! number is burnt (a gap). Arithmetic is checked: a mailbox whose marker reached
//! `u64::MAX` takes no more mail ([`Error::Exhausted`], a `451` for the sender) rather than
//! wrapping to `0` (a name readers skip). Numbers given out by other programs that do not keep
//! the marker (nmh's `inc`) are only protected once this crate has seen them.
//!
//! # Links
//!
//! The mailbox directory is opened relative to the root's descriptor with `O_NOFOLLOW`, and
//! every file in it relative to the mailbox's descriptor (see `at.rs`): a symbolic link planted
//! as the mailbox, or as the marker, `.highwater`, `.mh_sequences`, `.recent`, a message or a status, is
//! refused with [`Error::UnsafePath`]. A status is only linked to a template this process made
//! (known by device and inode; another file at `.recent`, such as a hard link to a file outside
//! the spool, is replaced, never linked to), and the new link is checked to be that inode.
//!
//! # Bounded reads
//!
//! A mailbox's user (and, with group-writable modes, its group) can put any file under the
//! spool's names: a huge or sparse `.mh_sequences`, or a hard link to a file only the daemon
//! may read as `.next`. So no file of the spool's is read without a bound
//! ([`COUNTER_MAX`] = 64 octets for `.highwater` and `.next`, [`SEQUENCES_MAX`] = 1 MiB for
//! `.mh_sequences`, [`STATUS_MAX`] = 64 KiB for a status): the size is checked with `fstat`
//! first, so a 2 GiB sparse file costs one system call, not 2 GiB of memory, and at most the
//! bound plus one octet is ever read. A file over its bound is [`Error::Corrupt`] naming the
//! path and the size (a `451` for the delivery, and a log line for the operator), and the
//! content of a file that does not parse is never quoted in an error (the log would show a
//! linked file's secret). 1 MiB of `.mh_sequences` holds some 100 000 scattered numbers (or
//! any number of ranges); a mailbox past that takes no mail until an operator or the user
//! shrinks the file (nmh's `mark`), as for any other corrupt file. `.mh_sequences` is read
//! before anything changes (a delivery spends no number, a flag change or deletion does
//! nothing when it cannot be read). Messages themselves are never read by a delivery;
//! [`Spool::read`] reads one whole.
//!
//! # Crashes
//!
//! A crash at any instant leaves only complete messages with their statuses, plus leftovers
//! that are invisible to readers and removed later. A delivery that did not return may or may
//! not be there after a power failure; its sender got no `250` and will send it again.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::FileType;
use rustix::io::Errno;

use crate::at::{errno, fstat, unsafe_path, Dir, GroupSync, GroupSyncs, Perms};
use crate::error::{io_err, Error, Result};
use crate::mh::Sequences;
use crate::name::MailboxName;
use crate::options::StoreOptions;
use crate::pending::{
    check_link, link_or_copy, open_store_root, OwnedStaged, PendingMessage, Staged,
};
use crate::{DeliveryId, Store};

/// The exact content of a new message's status file.
pub const NEW_STATUS: &[u8] = b"\\Recent\n";

/// An older version's high-water file (a number and a newline); still read.
const HIGHWATER: &str = ".highwater";
/// The high-water marker: an empty file named `.highwater.<n>`, whose name holds the number.
const MARK_PREFIX: &str = ".highwater.";
const NEXT: &str = ".next";
const RECENT: &str = ".recent";
const SEQUENCES: &str = ".mh_sequences";
/// The previous `.mh_sequences`, written with the next one and exchanged with it.
const SEQUENCES_SPARE: &str = ".mh_sequences.spare";
const TMP_PREFIX: &str = ".tmp.";
const UNSEEN: &str = "unseen";

/// The most octets read of `.highwater` or `.next` (a number of at most 20 digits and a newline).
pub const COUNTER_MAX: u64 = 64;
/// The most octets read of `.mh_sequences` (room for some 100 000 scattered unseen messages).
pub const SEQUENCES_MAX: u64 = 1 << 20;
/// The most octets read of a `<n>.status` file (its flags, one line).
pub const STATUS_MAX: u64 = 64 << 10;

/// A numbered spool rooted at a directory. Cheap to clone; clones share their state.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: Dir,
    staging: Arc<Dir>,
    perms: Perms,
    /// What this process knows about each mailbox it delivered into.
    known: Mutex<HashMap<MailboxName, Known>>,
    /// Group commit of the mailbox directories' fsyncs.
    syncs: GroupSyncs,
    /// Group commit of the root's fsyncs (the mailboxes' names).
    root_sync: GroupSync,
    /// Concurrent deliveries into each mailbox, placed together.
    combiners: Mutex<HashMap<MailboxName, Arc<Combiner>>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// Leftovers removed and the highest number taken into account (once per process).
    recovered: bool,
    /// Device and inode of the `.recent` template this process made.
    template: Option<(u64, u64)>,
    /// The number in the high-water marker's name, as this process last set or saw it.
    mark: Option<u64>,
}

impl Spool {
    /// Opens (creating if needed) a spool at `root`, and removes temporary files left in its
    /// staging directory by crashed processes. Mailboxes are created on first delivery, with
    /// the default [`StoreOptions`] (`0700` directories, `0600` files).
    ///
    /// # Errors
    /// [`Error::Io`] if the directories cannot be created.
    pub fn open(root: impl AsRef<Path>) -> Result<Spool> {
        Spool::open_with(root, &StoreOptions::new())
    }

    /// As [`open`](Self::open), with the modes and ownership of new mailboxes and messages
    /// given by `options`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`], or as [`open`](Self::open).
    pub fn open_with(root: impl AsRef<Path>, options: &StoreOptions) -> Result<Spool> {
        let perms = options.perms()?;
        let (root, staging) = open_store_root(root.as_ref())?;
        Ok(Spool {
            inner: Arc::new(Inner {
                root,
                staging,
                perms,
                known: Mutex::new(HashMap::new()),
                syncs: GroupSyncs::default(),
                root_sync: GroupSync::default(),
                combiners: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        self.inner.root.path()
    }

    /// The directory of a mailbox (which may not exist yet).
    pub fn mailbox_path(&self, mailbox: &MailboxName) -> PathBuf {
        self.inner.root.join(mailbox.as_str())
    }

    fn mailbox(&self, mailbox: &MailboxName) -> Result<Option<Dir>> {
        self.inner.root.try_open_dir(mailbox.as_str())
    }

    /// The message numbers in a mailbox, ascending. A mailbox that never got mail is empty.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read, [`Error::UnsafePath`] if the mailbox is
    /// a symbolic link.
    pub fn list(&self, mailbox: &MailboxName) -> Result<Vec<u64>> {
        let Some(dir) = self.mailbox(mailbox)? else {
            return Ok(Vec::new());
        };
        let mut numbers: Vec<u64> = dir
            .names()?
            .iter()
            .filter_map(|n| n.to_str().and_then(parse_number))
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Opens message `number` for reading. The file stays readable even if the message is
    /// deleted meanwhile.
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], [`Error::UnsafePath`] (a link or a special file), or
    /// [`Error::Io`].
    pub fn open_message(&self, mailbox: &MailboxName, number: u64) -> Result<File> {
        let dir = self
            .mailbox(mailbox)?
            .ok_or_else(|| no_such(mailbox, number))?;
        dir.try_open_file(&number.to_string())?
            .ok_or_else(|| no_such(mailbox, number))
    }

    /// Reads message `number` into memory, however large it is (a message is not bounded
    /// like the spool's own files): to read mail from mailboxes whose users may plant files,
    /// stream it from [`open_message`](Self::open_message) instead.
    ///
    /// # Errors
    /// As [`open_message`](Self::open_message).
    pub fn read(&self, mailbox: &MailboxName, number: u64) -> Result<Vec<u8>> {
        let mut file = self.open_message(mailbox, number)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err(
            "read",
            self.mailbox_path(mailbox).join(number.to_string()),
        ))?;
        Ok(buf)
    }

    /// The flags of message `number`, as stored (e.g. `["\\Recent"]` for a new message).
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], [`Error::Corrupt`] if the status is not UTF-8,
    /// [`Error::UnsafePath`], or [`Error::Io`].
    pub fn flags(&self, mailbox: &MailboxName, number: u64) -> Result<Vec<String>> {
        let dir = self
            .mailbox(mailbox)?
            .ok_or_else(|| no_such(mailbox, number))?;
        let name = status_name(number);
        let bytes = dir
            .try_read_bounded(&name, STATUS_MAX)?
            .ok_or_else(|| no_such(mailbox, number))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Corrupt {
            path: dir.join(&name),
            reason: "status file is not UTF-8".into(),
        })?;
        Ok(text.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// Replaces the flags of message `number` (atomically: readers see the old or the new
    /// status), durably, and updates `.mh_sequences` to match (`unseen`, `flagged`,
    /// `replied`).
    ///
    /// # Errors
    /// [`Error::InvalidFlag`] for an empty flag or one with white space or control characters,
    /// [`Error::NoSuchMessage`], [`Error::UnsafePath`], or [`Error::Io`].
    pub fn set_flags<S: AsRef<str>>(
        &self,
        mailbox: &MailboxName,
        number: u64,
        flags: &[S],
    ) -> Result<()> {
        let mut content = String::new();
        for flag in flags {
            let flag = flag.as_ref();
            if flag.is_empty() || flag.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidFlag(flag.to_owned()));
            }
            if !content.is_empty() {
                content.push(' ');
            }
            content.push_str(flag);
        }
        content.push('\n');
        if content.len() as u64 > STATUS_MAX {
            // Never write a status that `flags` would refuse to read.
            return Err(Error::InvalidFlag(format!(
                "{} flags, {} octets: more than a status holds ({STATUS_MAX})",
                flags.len(),
                content.len()
            )));
        }
        let has = |f: &str| flags.iter().any(|x| x.as_ref().eq_ignore_ascii_case(f));
        let (seen, flagged, answered) = (has("\\Seen"), has("\\Flagged"), has("\\Answered"));
        let perms = &self.inner.perms;
        let dir = self.locked(mailbox, number)?;
        // Read first: a `.mh_sequences` that cannot be read fails the call before any change.
        let seq = read_sequences(&dir)?;
        dir.replace(&status_name(number), content.as_bytes(), perms)?;
        if let Some(mut seq) = seq {
            seq.set(UNSEEN, number, !seen);
            seq.set("flagged", number, flagged);
            seq.set("replied", number, answered);
            write_sequences(&dir, &seq, perms)?;
        }
        dir.unlock();
        self.inner.syncs.sync_now(&dir)
    }

    /// Deletes message `number` and its status, durably, and takes it out of `.mh_sequences`.
    /// Its number is never used again.
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], [`Error::Corrupt`] for a bad `.highwater`, [`Error::Io`].
    pub fn delete(&self, mailbox: &MailboxName, number: u64) -> Result<()> {
        let perms = &self.inner.perms;
        let dir = self.locked(mailbox, number)?;
        let seq = read_sequences(&dir)?;
        // The marker may be behind for a mailbox of an older version, or one another program
        // added to: put it on record first (durably) that `number` and all before were used.
        // The marker this process set, still there and past `number`, needs no scan.
        let known = self.known(mailbox);
        let on_record = match known.mark {
            Some(m) if known.recovered && m >= number => mark_present(&dir, m)?,
            _ => false,
        };
        if !on_record {
            let found = recover(&dir)?;
            if found.mark.unwrap_or(0) < number {
                set_mark(&dir, found.mark, found.last.max(number), perms)?;
                self.inner.syncs.sync_now(&dir)?;
            }
        }
        dir.remove_file(&number.to_string())?;
        dir.remove_file(&status_name(number))?;
        if let Some(mut seq) = seq {
            seq.remove_everywhere(number);
            write_sequences(&dir, &seq, perms)?;
        }
        dir.unlock();
        self.inner.syncs.sync_now(&dir)
    }

    /// Opens and locks a mailbox in which message `number` must exist.
    fn locked(&self, mailbox: &MailboxName, number: u64) -> Result<Dir> {
        let dir = self
            .mailbox(mailbox)?
            .ok_or_else(|| no_such(mailbox, number))?;
        dir.lock()?;
        match dir.stat(&number.to_string())? {
            Some(m) if m.is_file() => Ok(dir),
            Some(_) => Err(unsafe_path(
                dir.join(&number.to_string()),
                "is not a regular file",
            )),
            None => Err(no_such(mailbox, number)),
        }
    }

    fn known(&self, mailbox: &MailboxName) -> Known {
        self.inner
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(mailbox)
            .copied()
            .unwrap_or_default()
    }

    fn remember(&self, mailbox: &MailboxName, known: Known) {
        self.inner
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mailbox.clone(), known);
    }

    /// Under the mailbox lock: numbers the messages of `srcs` (in order), records the highest
    /// number, adds them to the sequences, and links each status and message into place; the
    /// number of each, or why it failed. A failure before the links fails them all (nothing
    /// was linked; at most numbers were burnt).
    fn place(&self, srcs: &[Staged<'_>], mailbox: &MailboxName, dir: &Dir) -> Vec<Result<u64>> {
        let perms = &self.inner.perms;
        let mut known = self.known(mailbox);
        let numbered = self.number(srcs.len(), mailbox, dir, &mut known);
        self.remember(mailbox, known);
        let numbers = match numbered {
            Ok(numbers) => numbers,
            Err(e) => return srcs.iter().map(|_| Err(e.copy())).collect(),
        };
        srcs.iter()
            .zip(numbers)
            .map(|(src, n)| {
                let linked = link_status(dir, n, &mut known, perms);
                self.remember(mailbox, known);
                linked?;
                if let Err(e) = link_or_copy(*src, dir, &n.to_string(), perms) {
                    let _ = dir.remove_file(&status_name(n));
                    return Err(e);
                }
                Ok(n)
            })
            .collect()
    }

    /// Under the mailbox lock: the next `count` free numbers, on record (the marker moved to
    /// the last, `.mh_sequences` updated) before any can be seen.
    fn number(
        &self,
        count: usize,
        mailbox: &MailboxName,
        dir: &Dir,
        known: &mut Known,
    ) -> Result<Vec<u64>> {
        let perms = &self.inner.perms;
        // The marker this process set last still there: nobody else delivered since, and it
        // is at least every number given out. Else one scan of the directory.
        let still = match known.mark {
            Some(m) if known.recovered => mark_present(dir, m)?,
            _ => false,
        };
        let mut last = if still {
            known.mark.unwrap_or(0)
        } else {
            let found = recover(dir)?;
            known.recovered = true;
            known.mark = found.mark;
            self.remember(mailbox, *known);
            found.last
        };
        let mut numbers = Vec::with_capacity(count);
        for _ in 0..count {
            last = next_free(dir, last)?;
            numbers.push(last);
        }
        // Refuse a planted `.recent` before a number is spent on this delivery.
        ensure_template(dir, known, perms)?;
        // Before a number is spent: a `.mh_sequences` that cannot be read (a link, an I/O
        // error) fails the delivery with nothing changed; one too large is left alone.
        let seq = read_sequences(dir)?;
        // On record before the numbers can be seen: the marker is renamed to the last (metadata
        // only), before the links, and made durable with them by the one directory fsync that
        // follows the lock.
        set_mark(dir, known.mark, last, perms)?;
        known.mark = Some(last);
        self.remember(mailbox, *known);
        if let Some(mut seq) = seq {
            for &n in &numbers {
                seq.set(UNSEEN, n, true);
            }
            write_sequences(dir, &seq, perms)?;
        }
        Ok(numbers)
    }

    /// Delivers `src` into `mailbox` together with the deliveries into it that other threads
    /// of this process start meanwhile: one of them (the first to find no batch running)
    /// takes the mailbox lock and places the whole batch at once, while the others wait for
    /// their numbers (see the module doc). Returns the number, the mailbox directory and
    /// its group commit with the ticket to sync for.
    fn deliver_combined(&self, src: OwnedStaged, mailbox: &MailboxName) -> Result<Placed> {
        let combiner = self.combiner(mailbox);
        let mut state = combiner.lock();
        let me = state.next;
        state.next = state.next.wrapping_add(1);
        state.waiting.push((me, src));
        loop {
            if let Some(i) = state.done.iter().position(|(id, _)| *id == me) {
                return state.done.swap_remove(i).1;
            }
            if !state.busy {
                state.busy = true;
                let batch = std::mem::take(&mut state.waiting);
                let mut lead = Lead {
                    combiner: &combiner,
                    others: batch
                        .iter()
                        .map(|(id, _)| *id)
                        .filter(|id| *id != me)
                        .collect(),
                    armed: true,
                };
                drop(state);
                let results = self.place_batch(batch, mailbox);
                lead.armed = false;
                state = combiner.lock();
                state.busy = false;
                state.done.extend(results);
                combiner.ready.notify_all();
                continue;
            }
            state = combiner
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Opens and locks the mailbox and places `batch` (see [`Spool::place`]).
    fn place_batch(
        &self,
        batch: Vec<(u64, OwnedStaged)>,
        mailbox: &MailboxName,
    ) -> Vec<(u64, Result<Placed>)> {
        let inner = &self.inner;
        let opened: Result<(Arc<Dir>, Arc<GroupSync>)> = (|| {
            let (dir, _) = inner.root.ensure_dir(mailbox.as_str(), &inner.perms)?;
            let group = inner.syncs.of(&dir)?;
            // Made here or found (its maker may not have synced the root yet).
            group.sync_name(&inner.root, &inner.root_sync)?;
            // A descriptor of its own for each batch: its flock excludes every other.
            dir.lock()?;
            Ok((Arc::new(dir), group))
        })();
        let (dir, group) = match opened {
            Ok(v) => v,
            Err(e) => {
                return batch
                    .into_iter()
                    .map(|(id, _)| (id, Err(e.copy())))
                    .collect()
            }
        };
        let srcs: Vec<Staged<'_>> = batch.iter().map(|(_, s)| s.staged()).collect();
        let numbers = self.place(&srcs, mailbox, &dir);
        dir.unlock();
        // Counted once all are linked: one fsync covers the batch.
        let ticket = group.changed();
        batch
            .iter()
            .zip(numbers)
            .map(|((id, _), n)| {
                let placed = n.map(|n| Placed {
                    number: n,
                    dir: dir.clone(),
                    group: group.clone(),
                    ticket,
                });
                (*id, placed)
            })
            .collect()
    }

    fn combiner(&self, mailbox: &MailboxName) -> Arc<Combiner> {
        let mut map = self
            .inner
            .combiners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= COMBINERS_KEPT && !map.contains_key(mailbox) {
            map.retain(|_, c| Arc::strong_count(c) > 1);
        }
        map.entry(mailbox.clone()).or_default().clone()
    }
}

/// The batch a thread is placing: should that thread unwind instead of finishing, its drop
/// ends the batch with an error for each other delivery in it, so that no other thread waits
/// forever (messages of the batch already linked are then reported as failed: their senders
/// send them again, and those mailboxes get them twice).
struct Lead<'a> {
    combiner: &'a Combiner,
    /// The other deliveries in the batch.
    others: Vec<u64>,
    /// Until the batch's results are in hand.
    armed: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.combiner.lock();
        state.busy = false;
        for &id in &self.others {
            state.done.push((
                id,
                Err(Error::Io {
                    op: "deliver",
                    path: PathBuf::new(),
                    source: std::io::Error::other("the delivering thread panicked"),
                }),
            ));
        }
        self.combiner.ready.notify_all();
    }
}

/// A message placed in a mailbox by [`Spool::deliver_combined`], not yet durable.
struct Placed {
    number: u64,
    dir: Arc<Dir>,
    group: Arc<GroupSync>,
    ticket: u64,
}

/// Above this many mailboxes, the combiners no delivery is using are forgotten.
const COMBINERS_KEPT: usize = 4096;

/// The deliveries into one mailbox waiting to be placed together.
#[derive(Default)]
struct Combiner {
    state: Mutex<CombinerState>,
    ready: std::sync::Condvar,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Combiner {
    fn lock(&self) -> std::sync::MutexGuard<'_, CombinerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct CombinerState {
    /// A batch is being placed.
    busy: bool,
    /// The next delivery's id.
    next: u64,
    /// Deliveries waiting for the next batch.
    waiting: Vec<(u64, OwnedStaged)>,
    /// Results of finished batches, by delivery id, until their owners take them.
    done: Vec<(u64, Result<Placed>)>,
}

impl Store for Spool {
    fn begin(&self) -> Result<PendingMessage> {
        PendingMessage::create(&self.inner.staging, &self.inner.perms)
    }

    fn commit(
        &self,
        message: &mut PendingMessage,
        mailboxes: &[MailboxName],
    ) -> Result<Vec<Result<DeliveryId>>> {
        let mut results: Vec<Result<DeliveryId>> = Vec::with_capacity(mailboxes.len());
        let mut to_sync: Vec<(&MailboxName, Arc<Dir>, Arc<GroupSync>, u64)> = Vec::new();
        // Sealed (fsynced) once, before anything is placed; each mailbox's delivery shares it.
        let staged = message.seal_owned()?;
        for mailbox in mailboxes {
            match self.deliver_combined(staged.clone(), mailbox) {
                Ok(p) => {
                    crate::at::add_to_sync(&mut to_sync, mailbox, p.dir, p.group, p.ticket);
                    results.push(Ok(DeliveryId::Spool(p.number)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // One fsync per distinct directory, after all the links, shared with the deliveries
        // into the same mailbox that run at the same time.
        crate::at::sync_shared(mailboxes, &mut results, to_sync);
        Ok(results)
    }
}

fn status_name(n: u64) -> String {
    format!("{n}.status")
}

/// `1`, `2`, ...: decimal, no sign, no leading zero.
fn parse_number(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Whether number `n` is taken in `dir`: by a message, or by a status (a delivery that crashed
/// between its two links; the number is skipped rather than reused).
fn used(dir: &Dir, n: u64) -> Result<bool> {
    Ok(dir.stat(&n.to_string())?.is_some() || dir.stat(&status_name(n))?.is_some())
}

/// The first number after `last` that nothing uses.
fn next_free(dir: &Dir, last: u64) -> Result<u64> {
    let exhausted = || Error::Exhausted {
        what: "message numbers",
        path: dir.join(&mark_name(last)),
    };
    let mut n = last.checked_add(1).ok_or_else(exhausted)?;
    while used(dir, n)? {
        n = n.checked_add(1).ok_or_else(exhausted)?;
    }
    Ok(n)
}

/// A file holding one decimal number and a newline; `None` if it does not exist. At most
/// [`COUNTER_MAX`] octets are read, and an error never quotes the content: the file may be a
/// hard link, planted by the mailbox's user, to a file only the daemon may read.
fn read_number(dir: &Dir, name: &str) -> Result<Option<u64>> {
    let Some(bytes) = dir.try_read_bounded(name, COUNTER_MAX)? else {
        return Ok(None);
    };
    let digits = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    match std::str::from_utf8(digits).ok().and_then(parse_number) {
        Some(n) => Ok(Some(n)),
        None => Err(Error::Corrupt {
            path: dir.join(name),
            reason: format!(
                "expected a decimal number and a newline, found {} octets that are not one",
                bytes.len()
            ),
        }),
    }
}

/// The highest number on record as used: `.highwater`, or one below an older version's
/// `.next`. `None` if neither file exists.
fn read_counters(dir: &Dir) -> Result<Option<u64>> {
    let high = read_number(dir, HIGHWATER)?;
    let below_next = read_number(dir, NEXT)?.map(|n| n - 1);
    Ok(high.max(below_next))
}

/// What one scan of a mailbox found.
struct Found {
    /// The highest number on record or present: the marker, an older version's `.highwater`
    /// or `.next`, the highest message.
    last: u64,
    /// The marker's number, if there is one.
    mark: Option<u64>,
}

/// Under the lock: removes leftovers of crashed processes (temporary files, statuses whose
/// message never arrived, extra markers) and returns the highest number on record or present.
fn recover(dir: &Dir) -> Result<Found> {
    let mut max = read_counters(dir)?.unwrap_or(0);
    let mut messages = Vec::new();
    let mut statuses = Vec::new();
    let mut marks = Vec::new();
    for name in dir.names()? {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) {
            if matches!(dir.stat(name)?, Some(m) if !m.is_dir()) {
                tracing::info!(path = %dir.join(name).display(), "removing leftover temporary file");
                let _ = dir.remove_file(name);
            }
        } else if let Some(n) = parse_mark(name) {
            if !mark_present(dir, n)? {
                continue;
            }
            max = max.max(n);
            marks.push(n);
        } else if let Some(n) = parse_number(name) {
            max = max.max(n);
            messages.push(n);
        } else if let Some(n) = name.strip_suffix(".status").and_then(parse_number) {
            statuses.push(n);
        }
    }
    messages.sort_unstable();
    for n in statuses {
        if messages.binary_search(&n).is_err() {
            tracing::info!(mailbox = %dir.path().display(), number = n, "removing orphan status");
            let _ = dir.remove_file(&status_name(n));
        }
    }
    // One marker: the highest (a crash between making one and removing another leaves two).
    marks.sort_unstable();
    let mark = marks.pop();
    for m in marks {
        let _ = dir.remove_file(&mark_name(m));
    }
    // An older version's `.highwater` file goes once a marker says as much.
    if let (Some(m), Some(h)) = (mark, read_number(dir, HIGHWATER)?) {
        if h <= m {
            let _ = dir.remove_file(HIGHWATER);
        }
    }
    Ok(Found { last: max, mark })
}

fn mark_name(n: u64) -> String {
    format!("{MARK_PREFIX}{n}")
}

fn parse_mark(name: &str) -> Option<u64> {
    name.strip_prefix(MARK_PREFIX).and_then(parse_number)
}

/// True when the marker for `m` exists; anything but a regular file there is refused.
fn mark_present(dir: &Dir, m: u64) -> Result<bool> {
    match dir.stat(&mark_name(m))? {
        None => Ok(false),
        Some(meta) if meta.is_file() => Ok(true),
        Some(_) => Err(unsafe_path(
            dir.join(&mark_name(m)),
            "is not a regular file",
        )),
    }
}

/// Moves the marker from `old` (or makes one) to `n`. A rename, so no file data needs syncing
/// and there is always exactly one marker; a new one is an empty file with the store's modes.
/// The first marker replaces an older version's `.highwater` file.
fn set_mark(dir: &Dir, old: Option<u64>, n: u64, perms: &Perms) -> Result<()> {
    if old == Some(n) {
        return Ok(());
    }
    if let Some(old) = old {
        match rustix::fs::renameat(dir, mark_name(old).as_str(), dir, mark_name(n).as_str()) {
            Ok(()) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(errno("rename", dir.join(&mark_name(n)))(e)),
        }
    }
    match dir.create(&mark_name(n), perms) {
        Ok(_) => {}
        Err(e) if !matches!(dir.stat(&mark_name(n))?, Some(m) if m.is_file()) => return Err(e),
        Err(_) => {}
    }
    if let Some(old) = old {
        let _ = dir.remove_file(&mark_name(old));
    }
    let _ = dir.remove_file(HIGHWATER);
    Ok(())
}

/// Reads `.mh_sequences` (at most [`SEQUENCES_MAX`] octets); empty if there is none; `None`
/// when it is larger: it is then left as it is (logged), and mail is still delivered and
/// flags still changed, since the status files are the record (a mailbox must not stop
/// taking mail because its MH sequences grew; an operator can shrink or remove the file).
fn read_sequences(dir: &Dir) -> Result<Option<Sequences>> {
    match dir.try_read_bounded(SEQUENCES, SEQUENCES_MAX) {
        Ok(current) => Ok(Some(Sequences::parse(&current.unwrap_or_default()))),
        Err(e @ Error::Corrupt { .. }) => {
            tracing::warn!(error = %e, "not updating the MH sequences");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Rewrites `.mh_sequences` as `seq` (written into `.mh_sequences.spare`, the two names then
/// exchanged: [`Dir::replace_reusing`]). Not fsynced: it is kept for MH readers, the status
/// files are the record, and the directory fsync that follows every change makes the
/// exchange durable; after a power failure it may lack the last changes, hold an earlier
/// version cut short, or be empty, which loses MH-only state: `unseen` (messages look read),
/// `flagged`/`replied` as an MH reader set them, nmh's `cur` and user sequences. The status files keep each message's flags as this crate knows
/// them.
fn write_sequences(dir: &Dir, seq: &Sequences, perms: &Perms) -> Result<()> {
    let bytes = seq.encode();
    if bytes.len() as u64 > SEQUENCES_MAX {
        // Never write what would not be read back.
        tracing::warn!(path = %dir.join(SEQUENCES).display(), size = bytes.len(),
                       "MH sequences too large; not updated");
        return Ok(());
    }
    dir.replace_reusing(SEQUENCES, SEQUENCES_SPARE, &bytes, perms)
}

/// Makes a new `.recent` template (a new inode, durable) and returns its identity.
fn make_template(dir: &Dir, perms: &Perms) -> Result<(u64, u64)> {
    use std::io::Write;
    let tmp = format!("{TMP_PREFIX}{}", crate::fsutil::unique()?);
    let r = (|| {
        let mut f = dir.create(&tmp, perms)?;
        f.write_all(NEW_STATUS)
            .map_err(io_err("write", dir.join(&tmp)))?;
        f.sync_all().map_err(io_err("fsync", dir.join(&tmp)))?;
        let id = fstat(&f, &dir.join(&tmp))?.id();
        dir.rename(&tmp, dir, RECENT)?;
        Ok(id)
    })();
    if r.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    r
}

/// Makes sure `.recent` is a template this process made (making one if not); a symbolic link
/// there is refused.
fn ensure_template(dir: &Dir, known: &mut Known, perms: &Perms) -> Result<()> {
    match dir.stat(RECENT)? {
        Some(m) if m.file_type == FileType::Symlink => {
            Err(unsafe_path(dir.join(RECENT), "is a symbolic link"))
        }
        Some(m) if known.template == Some(m.id()) && m.is_file() => Ok(()),
        _ => {
            known.template = Some(make_template(dir, perms)?);
            Ok(())
        }
    }
}

/// Makes `<n>.status` a link to this process's `.recent` template, making a new template when
/// there is none of ours (first delivery, another process replaced it, someone planted a file)
/// or it has reached the file system's link limit. A symbolic link at `.recent` is refused.
fn link_status(dir: &Dir, n: u64, known: &mut Known, perms: &Perms) -> Result<()> {
    let status = status_name(n);
    for _ in 0..2 {
        let current = dir.stat(RECENT)?;
        if matches!(current, Some(m) if m.file_type == FileType::Symlink) {
            return Err(unsafe_path(dir.join(RECENT), "is a symbolic link"));
        }
        let ours = match (known.template, current) {
            (Some(id), Some(m)) if m.id() == id && m.is_file() => Some(id),
            _ => None,
        };
        if let Some(id) = ours {
            match dir.link(RECENT, dir, &status) {
                Ok(()) => return check_link(dir, &status, id),
                Err(Errno::MLINK) => {}
                // No hard links here: write the status itself.
                Err(Errno::PERM) => return dir.replace(&status, NEW_STATUS, perms),
                Err(e) => return Err(errno("link", dir.join(&status))(e)),
            }
        }
        known.template = Some(make_template(dir, perms)?);
    }
    dir.replace(&status, NEW_STATUS, perms)
}

fn no_such(mailbox: &MailboxName, number: u64) -> Error {
    Error::NoSuchMessage {
        mailbox: mailbox.to_string(),
        number,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;

    fn name(s: &str) -> MailboxName {
        MailboxName::new(s).unwrap()
    }

    #[test]
    fn a_mailbox_another_process_made_has_its_name_synced_before_the_ack() {
        use crate::at::tests::syncs_of;
        let tmp = tempfile::tempdir().unwrap();
        let (maker, finder) = (
            Spool::open(tmp.path()).unwrap(),
            Spool::open(tmp.path()).unwrap(),
        );
        let root_syncs = || syncs_of(tmp.path());
        let before = root_syncs();
        maker.deliver(&name("bob"), b"one").unwrap();
        assert_eq!(root_syncs(), before + 1, "the maker syncs the root");
        maker.deliver(&name("bob"), b"two").unwrap();
        assert_eq!(root_syncs(), before + 1);
        // A second process finds `bob` made by the first, whose root fsync it cannot know of.
        finder.deliver(&name("bob"), b"three").unwrap();
        assert_eq!(root_syncs(), before + 2, "the finder syncs the root once");
        finder.deliver(&name("bob"), b"four").unwrap();
        assert_eq!(root_syncs(), before + 2);
        assert_eq!(maker.list(&name("bob")).unwrap(), vec![1, 2, 3, 4]);
        // Removed and made again by someone else (ext4 reuses inode numbers at once): the
        // finder knows nothing of the new directory's name, and syncs the root again.
        fs::remove_dir_all(tmp.path().join("bob")).unwrap();
        fs::create_dir(tmp.path().join("bob")).unwrap();
        finder.deliver(&name("bob"), b"five").unwrap();
        assert_eq!(root_syncs(), before + 3);
        assert_eq!(maker.list(&name("bob")).unwrap(), vec![1]);
    }

    /// Runs `f(t)` on `threads` threads released together; their results in thread order.
    fn at_once<T: Send + 'static>(
        threads: usize,
        f: impl Fn(usize) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let f = Arc::new(f);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, f) = (barrier.clone(), f.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    f(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn a_failure_before_the_links_fails_every_delivery_of_the_batch() {
        // A corrupt counter stops the numbering: every delivery waiting in the batch gets the
        // error (each its own copy), none is linked, and the mailbox takes mail again once
        // the file is mended.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let inbox = name("inbox");
        fs::create_dir(dir.path().join("inbox")).unwrap();
        fs::write(dir.path().join("inbox/.next"), b"not a number\n").unwrap();
        let (s, i) = (spool.clone(), inbox.clone());
        for r in at_once(8, move |_| s.deliver(&i, b"Subject: x\n\n")) {
            let err = r.unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains(".next"), "{err}");
        }
        assert_eq!(spool.list(&inbox).unwrap(), Vec::<u64>::new());
        fs::remove_file(dir.path().join("inbox/.next")).unwrap();
        assert_eq!(spool.deliver(&inbox, b"ok").unwrap(), DeliveryId::Spool(1));
    }

    #[test]
    fn concurrent_deliveries_are_placed_together_and_all_numbered() {
        // Threads delivering into one mailbox at once are placed in batches by one of them
        // (one lock hold, one marker move, one sequences write per batch): every message gets
        // its own number, its own bytes and its status, and all are unseen.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let inbox = name("inbox");
        let (threads, each) = (16, 20);
        let (s, i) = (spool.clone(), inbox.clone());
        let mut got: Vec<(u64, String)> = at_once(threads, move |t| {
            (0..each)
                .map(|k| {
                    let body = format!("Subject: {t}.{k}\n\n");
                    match s.deliver(&i, body.as_bytes()).unwrap() {
                        DeliveryId::Spool(n) => (n, body),
                        other => panic!("{other:?}"),
                    }
                })
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        got.sort();
        let total = (threads * each) as u64;
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        for (n, body) in &got {
            assert_eq!(spool.read(&inbox, *n).unwrap(), body.as_bytes());
            assert_eq!(
                spool.flags(&inbox, *n).unwrap(),
                vec!["\\Recent".to_string()]
            );
        }
        assert_eq!(
            fs::read_to_string(dir.path().join("inbox/.mh_sequences")).unwrap(),
            format!("unseen: 1-{total}\n")
        );
        assert!(dir
            .path()
            .join(format!("inbox/.highwater.{total}"))
            .exists());
    }

    #[test]
    fn deliver_list_flags_delete() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = name("alice");
        assert_eq!(spool.list(&a).unwrap(), Vec::<u64>::new());
        for i in 1..=3u64 {
            let id = spool.deliver(&a, format!("msg {i}\n").as_bytes()).unwrap();
            assert_eq!(id, DeliveryId::Spool(i));
        }
        assert_eq!(spool.list(&a).unwrap(), vec![1, 2, 3]);
        let mbox = dir.path().join("alice");
        assert_eq!(fs::read(mbox.join("2")).unwrap(), b"msg 2\n");
        assert_eq!(fs::read(mbox.join("2.status")).unwrap(), b"\\Recent\n");
        spool.set_flags(&a, 2, &["\\Seen", "\\Answered"]).unwrap();
        assert_eq!(
            fs::read(mbox.join("2.status")).unwrap(),
            b"\\Seen \\Answered\n"
        );
        // The other statuses did not change with it (they shared the template).
        assert_eq!(fs::read(mbox.join("1.status")).unwrap(), b"\\Recent\n");
        assert_eq!(spool.flags(&a, 2).unwrap(), vec!["\\Seen", "\\Answered"]);
        spool.set_flags::<&str>(&a, 1, &[]).unwrap();
        assert_eq!(fs::read(mbox.join("1.status")).unwrap(), b"\n");
        assert!(matches!(
            spool.set_flags(&a, 1, &["a b"]),
            Err(Error::InvalidFlag(_))
        ));
        assert!(matches!(
            spool.set_flags(&a, 9, &["x"]),
            Err(Error::NoSuchMessage { number: 9, .. })
        ));
        spool.delete(&a, 3).unwrap();
        assert!(!mbox.join("3.status").exists());
        assert_eq!(spool.list(&a).unwrap(), vec![1, 2]);
        // Number 3 is not reused, by this process or a fresh one.
        assert_eq!(spool.deliver(&a, b"x").unwrap(), DeliveryId::Spool(4));
        let again = Spool::open(dir.path()).unwrap();
        assert_eq!(again.deliver(&a, b"y").unwrap(), DeliveryId::Spool(5));
        spool.delete(&a, 5).unwrap();
        spool.delete(&a, 4).unwrap();
        assert_eq!(
            Spool::open(dir.path()).unwrap().deliver(&a, b"z").unwrap(),
            DeliveryId::Spool(6)
        );
        assert!(matches!(
            spool.delete(&a, 5),
            Err(Error::NoSuchMessage { number: 5, .. })
        ));
        assert!(matches!(
            spool.read(&name("nobody"), 1),
            Err(Error::NoSuchMessage { .. })
        ));
        assert!(matches!(
            spool.delete(&name("nobody"), 1),
            Err(Error::NoSuchMessage { .. })
        ));
        // No temporary files remain.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join(".tmp")).unwrap().collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn deleting_in_the_middle_then_the_end_never_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = name("a");
        let s1 = Spool::open(dir.path()).unwrap();
        let s2 = Spool::open(dir.path()).unwrap(); // stands for another process
        for _ in 0..5 {
            s1.deliver(&a, b"m").unwrap();
        }
        s2.delete(&a, 3).unwrap();
        s2.delete(&a, 5).unwrap();
        // s1's cache says 6; s2 deleted 5 but .next is 6: fine either way.
        assert_eq!(s1.deliver(&a, b"m").unwrap(), DeliveryId::Spool(6));
        s2.delete(&a, 6).unwrap();
        assert_eq!(s2.deliver(&a, b"m").unwrap(), DeliveryId::Spool(7));
        assert_eq!(s1.deliver(&a, b"m").unwrap(), DeliveryId::Spool(8));
        assert_eq!(s1.list(&a).unwrap(), vec![1, 2, 4, 7, 8]);
    }

    #[test]
    fn recovery_removes_leftovers_and_skips_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let a = name("a");
        let spool = Spool::open(dir.path()).unwrap();
        spool.deliver(&a, b"one").unwrap();
        let mbox = dir.path().join("a");
        // As a crash would leave them: a temp file, and a status whose message never came.
        fs::write(mbox.join(".tmp.123.456"), b"partial").unwrap();
        fs::write(mbox.join("2.status"), NEW_STATUS).unwrap();
        assert_eq!(spool.list(&a).unwrap(), vec![1]);
        let fresh = Spool::open(dir.path()).unwrap();
        assert_eq!(fresh.deliver(&a, b"two").unwrap(), DeliveryId::Spool(2));
        assert!(!mbox.join(".tmp.123.456").exists());
        assert_eq!(fresh.read(&a, 2).unwrap(), b"two");
        assert_eq!(fresh.flags(&a, 2).unwrap(), vec!["\\Recent"]);
    }

    #[test]
    fn corrupt_next_is_an_error_not_a_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let a = name("a");
        let spool = Spool::open(dir.path()).unwrap();
        spool.deliver(&a, b"one").unwrap();
        // An older version's counter, corrupt, and no marker (so it must be read).
        fs::remove_file(dir.path().join("a/.highwater.1")).unwrap();
        fs::write(dir.path().join("a/.next"), b"garbage").unwrap();
        assert!(matches!(
            spool.deliver(&a, b"two"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn pending_message_is_sealed_after_commit() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut p = spool.begin().unwrap();
        p.write_all(b"hello").unwrap();
        let r = spool
            .commit(&mut p, &[name("a"), name("b"), name("a")])
            .unwrap();
        let ids: Vec<_> = r.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            ids,
            vec![
                DeliveryId::Spool(1),
                DeliveryId::Spool(1),
                DeliveryId::Spool(2)
            ]
        );
        assert!(p.write_all(b"more").is_err());
        drop(p);
        assert_eq!(spool.read(&name("a"), 2).unwrap(), b"hello");
        assert_eq!(spool.read(&name("b"), 1).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
    }
}
