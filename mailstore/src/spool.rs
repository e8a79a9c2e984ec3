//! The numbered spool: the default mailbox store.
//!
//! # Layout
//!
//! ```text
//! <root>/.tmp/              messages being received (see PendingMessage)
//! <root>/<user>/1           message 1, exactly the bytes delivered
//! <root>/<user>/1.status    its IMAP flags
//! <root>/<user>/2 ...
//! <root>/<user>/.next       (only after a deletion) the lowest number that may be used next
//! <root>/<user>/.recent     template status file for new messages (see below)
//! ```
//!
//! Messages are numbered in order of arrival, starting at 1. Numbers are never reused, also
//! after the newest message is deleted, so they serve as IMAP UIDs. Gaps are possible (deleted
//! messages, and a number burnt by a delivery that crashed half-way).
//!
//! A status file holds the message's flags separated by single spaces and ended by one newline,
//! e.g. `\Seen \Answered` + LF; no flags is a lone LF. A new message's status is exactly the 8
//! bytes `\Recent` + LF ([`NEW_STATUS`]).
//!
//! # Delivering
//!
//! 1. The message is written to a temporary file in `<root>/.tmp/` and fsynced, outside any lock.
//! 2. Under the mailbox's directory lock ([`crate::lock`]): the next number `n` is chosen;
//!    `<n>.status` is made as a hard link to the durable template `.recent` (its content is
//!    always `\Recent` + LF, so no data needs writing or syncing); then the message is
//!    hard-linked as `<n>`. The status appears first: readers list messages by their number
//!    files, so no reader ever sees a message without its status, and, since the file was
//!    complete before it got its name, never a partial message.
//! 3. The lock is released and the mailbox directory fsynced; only then does `deliver` return.
//!    Concurrent deliveries fsync concurrently, and the file system commits them together (group
//!    commit), so throughput under concurrency exceeds one delivery per fsync.
//!
//! Flag changes replace the status file with a new one (temporary file, fsync, rename), so the
//! shared template is never written through: programs other than this crate must not modify
//! status files in place either.
//!
//! # Choosing the next number
//!
//! Writing a counter file on every delivery would cost one more fsync per message, so the
//! counter is only written when it matters: on deletion. Invariant: every number at or above the
//! value in `.next` (1 if absent) that was ever used still exists, as one contiguous run. A
//! delivery takes the first free number at or above `max(.next, this process's cached next)`;
//! a deletion of a message at or above `.next` first durably raises `.next` past the end of that
//! run. A process that does not know a mailbox yet scans it once (that scan also removes
//! leftovers of crashed processes: temporary files, and statuses whose message never arrived).
//!
//! # Crashes
//!
//! A crash at any instant leaves only complete messages with their statuses, plus leftovers
//! that are invisible to readers and removed later. A delivery that did not return may or may
//! not be there after a power failure; its sender got no `250` and will send it again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{io_err, Error, Result};
use crate::fsutil::{ensure_dir, fsync_dir, is_errno, replace_file};
use crate::lock::with_locked_dir;
use crate::name::MailboxName;
use crate::pending::{link_or_copy, open_store_root, PendingMessage};
use crate::{DeliveryId, Store};

/// The exact content of a new message's status file.
pub const NEW_STATUS: &[u8] = b"\\Recent\n";

const NEXT: &str = ".next";
const RECENT: &str = ".recent";
const TMP_PREFIX: &str = ".tmp.";

/// A numbered spool rooted at a directory. Cheap to clone; clones share their state.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    staging: PathBuf,
    /// Per mailbox, one past the number this process last assigned (a hint; see module docs).
    next: Mutex<HashMap<MailboxName, u64>>,
}

impl Spool {
    /// Opens (creating if needed) a spool at `root`, and removes temporary files left in its
    /// staging directory by crashed processes. Mailboxes are created on first delivery.
    ///
    /// # Errors
    /// [`Error::Io`] if the directories cannot be created.
    pub fn open(root: impl AsRef<Path>) -> Result<Spool> {
        let (root, staging) = open_store_root(root.as_ref())?;
        Ok(Spool {
            inner: Arc::new(Inner {
                root,
                staging,
                next: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory of a mailbox (which may not exist yet).
    pub fn mailbox_path(&self, mailbox: &MailboxName) -> PathBuf {
        self.inner.root.join(mailbox.as_str())
    }

    /// The message numbers in a mailbox, ascending. A mailbox that never got mail is empty.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read.
    pub fn list(&self, mailbox: &MailboxName) -> Result<Vec<u64>> {
        let dir = self.mailbox_path(mailbox);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("readdir", dir)(e)),
        };
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("readdir", &dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_number) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Opens message `number` for reading. The file stays readable even if the message is
    /// deleted meanwhile.
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], or [`Error::Io`].
    pub fn open_message(&self, mailbox: &MailboxName, number: u64) -> Result<File> {
        let path = self.mailbox_path(mailbox).join(number.to_string());
        File::open(&path).map_err(|e| not_found(e, mailbox, number, "open", &path))
    }

    /// Reads message `number` into memory.
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], or [`Error::Io`].
    pub fn read(&self, mailbox: &MailboxName, number: u64) -> Result<Vec<u8>> {
        let mut file = self.open_message(mailbox, number)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(io_err("read", self.mailbox_path(mailbox)))?;
        Ok(buf)
    }

    /// The flags of message `number`, as stored (e.g. `["\\Recent"]` for a new message).
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], [`Error::Corrupt`] if the status is not UTF-8, or
    /// [`Error::Io`].
    pub fn flags(&self, mailbox: &MailboxName, number: u64) -> Result<Vec<String>> {
        let path = self.mailbox_path(mailbox).join(format!("{number}.status"));
        let bytes = fs::read(&path).map_err(|e| not_found(e, mailbox, number, "read", &path))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Corrupt {
            path,
            reason: "status file is not UTF-8".into(),
        })?;
        Ok(text.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// Replaces the flags of message `number` (atomically: readers see the old or the new
    /// status), durably.
    ///
    /// # Errors
    /// [`Error::InvalidFlag`] for an empty flag or one with white space or control characters,
    /// [`Error::NoSuchMessage`], or [`Error::Io`].
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
        let dir = self.mailbox_path(mailbox);
        with_locked_dir(&dir, || {
            self.require(&dir, mailbox, number)?;
            replace_file(&dir, &format!("{number}.status"), content.as_bytes())
        })
        .map_err(|e| missing_mailbox(e, mailbox, number))?;
        fsync_dir(&dir)
    }

    /// Deletes message `number` and its status, durably. Its number is never used again.
    ///
    /// # Errors
    /// [`Error::NoSuchMessage`], [`Error::Corrupt`] for a bad `.next`, or [`Error::Io`].
    pub fn delete(&self, mailbox: &MailboxName, number: u64) -> Result<()> {
        let dir = self.mailbox_path(mailbox);
        with_locked_dir(&dir, || {
            self.require(&dir, mailbox, number)?;
            let floor = read_floor(&dir)?;
            if number >= floor {
                // Keep the invariant: everything at or above `.next` is one run of existing
                // messages. Raise `.next` past the end of the run before breaking it.
                let mut end = number + 1;
                while used(&dir, end) {
                    end += 1;
                }
                replace_file(&dir, NEXT, format!("{end}\n").as_bytes())?;
                fsync_dir(&dir)?;
            }
            let msg = dir.join(number.to_string());
            fs::remove_file(&msg).map_err(io_err("unlink", &msg))?;
            let status = dir.join(format!("{number}.status"));
            match fs::remove_file(&status) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("unlink", status)(e)),
                _ => Ok(()),
            }
        })
        .map_err(|e| missing_mailbox(e, mailbox, number))?;
        fsync_dir(&dir)
    }

    fn require(&self, dir: &Path, mailbox: &MailboxName, number: u64) -> Result<()> {
        let path = dir.join(number.to_string());
        fs::symlink_metadata(&path)
            .map(drop)
            .map_err(|e| not_found(e, mailbox, number, "stat", &path))
    }

    /// Under the mailbox lock: links the status and the message into place; returns the number.
    fn place(&self, src: &Path, mailbox: &MailboxName, dir: &Path) -> Result<u64> {
        let floor = read_floor(dir)?;
        let cached = self
            .inner
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(mailbox)
            .copied();
        let mut n = match cached {
            Some(c) => c.max(floor),
            None => floor.max(recover(dir)? + 1),
        };
        while used(dir, n) {
            n += 1;
        }
        link_status(dir, n)?;
        if let Err(e) = link_or_copy(src, &dir.join(n.to_string()), dir) {
            let _ = fs::remove_file(dir.join(format!("{n}.status")));
            return Err(e);
        }
        let mut cache = self
            .inner
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = cache.entry(mailbox.clone()).or_insert(0);
        *entry = (*entry).max(n + 1);
        Ok(n)
    }
}

impl Store for Spool {
    fn begin(&self) -> Result<PendingMessage> {
        PendingMessage::create(&self.inner.staging)
    }

    fn commit(
        &self,
        message: &mut PendingMessage,
        mailboxes: &[MailboxName],
    ) -> Result<Vec<Result<DeliveryId>>> {
        let src = message.seal()?;
        let mut results: Vec<Result<DeliveryId>> = Vec::with_capacity(mailboxes.len());
        for mailbox in mailboxes {
            let dir = self.mailbox_path(mailbox);
            let r = (|| {
                if ensure_dir(&dir)? {
                    fsync_dir(&self.inner.root)?;
                }
                with_locked_dir(&dir, || self.place(src, mailbox, &dir))
            })();
            results.push(r.map(DeliveryId::Spool));
        }
        // One fsync per distinct directory, after all the links: they share the commit.
        let mut synced: Vec<(&MailboxName, Result<()>)> = Vec::new();
        for (mailbox, result) in mailboxes.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            let outcome = match synced.iter().find(|(m, _)| *m == mailbox) {
                Some((_, r)) => r.as_ref().err().map(|e| e.to_string()),
                None => {
                    let r = fsync_dir(&self.mailbox_path(mailbox));
                    let msg = r.as_ref().err().map(|e| e.to_string());
                    synced.push((mailbox, r));
                    msg
                }
            };
            if let Some(msg) = outcome {
                *result = Err(Error::Io {
                    op: "fsync",
                    path: self.mailbox_path(mailbox),
                    source: io::Error::other(msg),
                });
            }
        }
        Ok(results)
    }
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
fn used(dir: &Path, n: u64) -> bool {
    let name = n.to_string();
    fs::symlink_metadata(dir.join(&name)).is_ok()
        || fs::symlink_metadata(dir.join(name + ".status")).is_ok()
}

fn read_floor(dir: &Path) -> Result<u64> {
    let path = dir.join(NEXT);
    match fs::read_to_string(&path) {
        Ok(s) => match s.trim_end_matches('\n').parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::Corrupt {
                path,
                reason: format!("expected a decimal number, found {s:?}"),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(1),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Under the lock, the first time this process touches a mailbox: removes leftovers of crashed
/// processes and returns the highest message number present (0 if none).
fn recover(dir: &Path) -> Result<u64> {
    let mut max = 0;
    let mut messages = Vec::new();
    let mut statuses = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("readdir", dir))? {
        let entry = entry.map_err(io_err("readdir", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) {
            tracing::info!(path = %entry.path().display(), "removing leftover temporary file");
            let _ = fs::remove_file(entry.path());
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
            tracing::info!(mailbox = %dir.display(), number = n, "removing orphan status");
            let _ = fs::remove_file(dir.join(format!("{n}.status")));
        }
    }
    Ok(max)
}

/// Makes `<n>.status` a link to the `.recent` template, creating or renewing the template when
/// it is missing or has reached the file system's link limit.
fn link_status(dir: &Path, n: u64) -> Result<()> {
    let template = dir.join(RECENT);
    let status = dir.join(format!("{n}.status"));
    match fs::hard_link(&template, &status) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound || is_errno(&e, rustix::io::Errno::MLINK) => {
        }
        Err(e) if is_errno(&e, rustix::io::Errno::PERM) => {
            // No hard links here: write the status itself.
            return replace_file(dir, &format!("{n}.status"), NEW_STATUS);
        }
        Err(e) => return Err(io_err("link", status)(e)),
    }
    replace_file(dir, RECENT, NEW_STATUS)?;
    fs::hard_link(&template, &status).map_err(io_err("link", status))
}

fn not_found(
    e: io::Error,
    mailbox: &MailboxName,
    number: u64,
    op: &'static str,
    path: &Path,
) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NoSuchMessage {
            mailbox: mailbox.to_string(),
            number,
        }
    } else {
        io_err(op, path)(e)
    }
}

/// The lock on a mailbox that does not exist fails with ENOENT: that is "no such message".
fn missing_mailbox(e: Error, mailbox: &MailboxName, number: u64) -> Error {
    match e {
        Error::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
            Error::NoSuchMessage {
                mailbox: mailbox.to_string(),
                number,
            }
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn name(s: &str) -> MailboxName {
        MailboxName::new(s).unwrap()
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
