//! Local mail storage for the daemon: a numbered spool (the default), Maildir, and the durable
//! outbound queue.
//!
//! * [`spool::Spool`]: `<root>/<user>/<n>` with `<n>.status` beside it; numbers are IMAP UIDs.
//! * [`maildir::Maildir`]: `<root>/<user>/{tmp,new,cur}`, readable by any Maildir reader.
//! * [`queue::Queue`]: mail waiting for remote delivery, with per-recipient state.
//! * [`name::MailboxName`]: the only way to name a mailbox; validated before any path is built.
//!
//! Both mailbox stores implement [`Store`]. [`StoreOptions`] (with `Spool::open_with`,
//! `Maildir::open_with`) sets the modes and group of what they create, for readers running as
//! other users.
//!
//! Nothing below a store's root is reached through a symbolic link, and nothing is ever written
//! through a link the store did not make: paths are opened one component at a time relative to
//! directory descriptors with `O_NOFOLLOW`, files are only written when just created with
//! `O_EXCL`, and hard links are only made from the store's own files (see the `at` module's
//! source, and [`Error::UnsafePath`]). Numbers and counters use checked arithmetic: one that
//! would wrap is [`Error::Exhausted`] instead. Every delivery and enqueue is durable when
//! it returns: file fsynced, renamed or linked into place, directory fsynced. So a `250` may be
//! sent as soon as the call returns `Ok`.
//!
//! # From async code
//! The API is synchronous. The one pattern for an async server (the daemon's, and the
//! `store` example's in `examples/`): [`Store::begin`] when the content starts, write each
//! piece into the [`PendingMessage`] as it arrives (a copy into its buffer and, every 64 KiB,
//! a write to the page cache: no fsync, as short as a socket write, fine on a runtime
//! worker), then run [`Store::commit`] / [`queue::Queue::enqueue_pending`], which fsync the
//! file and the directories (milliseconds to tens of milliseconds on a disk), off the
//! workers: `tokio::task::spawn_blocking(move || store.commit(&mut pending, &names))` (the
//! stores are cheap to clone, a `PendingMessage` is `Send`), or `block_in_place` on a
//! multi-threaded runtime. Answer `250` only after that returns `Ok`.
//!
//! ```
//! use std::io::Write;
//! use mailstore::{name::MailboxName, spool::Spool, Store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let spool = Spool::open(dir.path())?;
//! let alice = MailboxName::from_local_part("Alice+lists")?; // the mailbox "alice"
//!
//! // One message in memory, one mailbox:
//! spool.deliver(&alice, b"Subject: hello\r\n\r\nHi Alice!\r\n")?;
//!
//! // A message streamed to disk as it arrives, then committed to several mailboxes at once
//! // (one fsync of the data, one hard link per mailbox):
//! let bob = MailboxName::from_local_part("bob")?;
//! let mut pending = spool.begin()?;
//! pending.write_all(b"Subject: to both\r\n\r\nHello.\r\n")?;
//! let results = spool.commit(&mut pending, &[alice.clone(), bob.clone()])?;
//! assert!(results.iter().all(|r| r.is_ok()));
//!
//! assert_eq!(spool.list(&alice)?, vec![1, 2]);
//! assert_eq!(spool.flags(&alice, 1)?, vec!["\\Recent".to_string()]);
//! assert_eq!(spool.read(&bob, 1)?, b"Subject: to both\r\n\r\nHello.\r\n");
//! # Ok(()) }
//! ```

mod at;
pub mod error;
mod fsutil;
pub mod lock;
pub mod maildir;
mod mh;
pub mod name;
pub mod options;
mod pending;
pub mod queue;
pub mod spool;

use std::io::Write;

pub use error::{Error, Result};

/// The most directory descriptors a store ([`spool::Spool`], [`maildir::Maildir`]) opened now
/// keeps open beyond those its running deliveries use: each directory it remembers between
/// deliveries (whether its name in its parent is known durable, so that the next delivery
/// there needs no fsync of the parent) holds one, so that its inode number cannot go to
/// another directory meanwhile. An eighth of the soft limit on open files, between 64 and
/// 4096: raise the limit before opening the store, and count these when dividing it.
pub fn directories_kept_open() -> usize {
    at::kept_open()
}
pub use name::{MailboxName, NameError};
pub use options::StoreOptions;
pub use pending::{PendingMessage, PendingReader};

use crate::error::io_err;

/// Where a message was delivered: the message's name in its mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryId {
    /// Its number in a [`spool::Spool`] mailbox (also its IMAP UID).
    Spool(u64),
    /// Its file name in the mailbox's `new/` directory of a [`maildir::Maildir`].
    Maildir(String),
}

/// A mailbox store: what the daemon delivers local mail into.
///
/// Deliveries are durable when they return `Ok` and serialised per mailbox (also across
/// processes), so any number of threads may share one store (it is cheap to clone, too).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Starts a message that will be written piece by piece (e.g. while DATA arrives), into a
    /// temporary file on the store's file system.
    ///
    /// # Errors
    /// [`Error::Io`] if the temporary file cannot be created.
    fn begin(&self) -> Result<PendingMessage>;

    /// Delivers the message to each of `mailboxes`, in order. The data is fsynced once and
    /// hard-linked into each mailbox (copied if links are impossible); every mailbox's directory
    /// is fsynced before this returns.
    ///
    /// Each entry of `mailboxes` gets its own delivery: remove duplicates first if one copy is
    /// wanted (`alice` and `alice+news` are the same mailbox). The message may be committed again
    /// (more mailboxes) or enqueued afterwards; it can no longer be written to.
    ///
    /// # Errors
    /// The outer error if the message cannot be made durable (nothing was delivered); otherwise
    /// one result per mailbox, in the order given, since one full disk or broken directory
    /// should not fail the others.
    fn commit(
        &self,
        message: &mut PendingMessage,
        mailboxes: &[MailboxName],
    ) -> Result<Vec<Result<DeliveryId>>>;

    /// Delivers a message held in memory to one mailbox.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    fn deliver(&self, mailbox: &MailboxName, message: &[u8]) -> Result<DeliveryId> {
        self.deliver_many(std::slice::from_ref(mailbox), message)?
            .pop()
            .unwrap_or(Err(Error::MessageSealed))
    }

    /// Delivers a message held in memory to several mailboxes (written once, linked into each).
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    fn deliver_many(
        &self,
        mailboxes: &[MailboxName],
        message: &[u8],
    ) -> Result<Vec<Result<DeliveryId>>> {
        let mut pending = self.begin()?;
        let path = std::path::PathBuf::from("(pending message)");
        pending.write_all(message).map_err(io_err("write", path))?;
        self.commit(&mut pending, mailboxes)
    }
}
