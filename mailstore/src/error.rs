//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::name::NameError;

/// Everything that can go wrong in this crate.
///
/// Mapping to SMTP replies, as the daemon does it: [`Error::InvalidName`] is a permanent error
/// about the address (`550 5.1.3` after RCPT, `553 5.1.3` where the syntax is at fault); every
/// other variant is a local, temporary failure (`451 4.3.0`), because the message may be
/// accepted once an operator fixes the disk ([`Error::is_transient`]). Two of them need the
/// operator: [`Error::UnsafePath`] (a link planted in a mailbox; the message names the path, for
/// the log) and [`Error::Exhausted`] (a mailbox's message numbers are used up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A mailbox name (the local part of an address) breaks the rules of [`crate::name`].
    #[error("invalid mailbox name: {0}")]
    InvalidName(#[from] NameError),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"create"`, `"fsync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file written by this crate does not parse (a queue envelope, a `.next` file, a
    /// status), or is larger than such a file may be (every read is bounded: see
    /// `Dir::try_read_bounded`; the reason then gives its size and the limit).
    ///
    /// The reason never quotes the file's content, beyond a short escaped excerpt of a queue
    /// envelope (the queue's own private file): a file in a mailbox may be a hard link,
    /// planted by the mailbox's user, to a file only the daemon may read, and this error is
    /// logged.
    #[error("corrupt file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The message (by number) does not exist in the mailbox.
    #[error("no message {number} in mailbox {mailbox}")]
    NoSuchMessage {
        /// The mailbox.
        mailbox: String,
        /// The message number that was asked for.
        number: u64,
    },
    /// An IMAP flag that cannot be stored: empty, or containing white space or control
    /// characters.
    #[error("invalid flag {0:?}")]
    InvalidFlag(String),
    /// A queue id that this crate cannot have made (it would not be safe as a file name).
    #[error("invalid queue id {0:?}")]
    InvalidQueueId(String),
    /// A recipient index past the end of the entry's recipient list.
    #[error("no recipient number {0} in this queue entry")]
    NoSuchRecipient(usize),
    /// Something the store did not make is where it was about to read or write: a symbolic
    /// link (to a mailbox directory, a Maildir's `tmp/` or `new/`, a spool's own files), or a
    /// file where a directory belongs, or a file replaced while it was being linked. Nothing
    /// was written through it. Temporary for SMTP (`451`): an operator must look at `path`.
    #[error("refusing to use {path}: it {reason} (not made by this store)")]
    UnsafePath {
        /// The path refused.
        path: PathBuf,
        /// What is wrong with it, e.g. `"is a symbolic link"`.
        reason: &'static str,
    },
    /// A number space is used up: a mailbox whose message numbers reached `u64::MAX` (numbers
    /// are never reused, so it takes no more mail), or a process-wide name counter. Temporary
    /// for SMTP (`451`), like a full disk: an operator must renumber or move the mailbox.
    #[error("{what} exhausted at {path}")]
    Exhausted {
        /// What ran out, e.g. `"message numbers"`.
        what: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
    },
    /// A [`crate::StoreOptions`] value that cannot be applied (e.g. a uid or gid of `-1`).
    #[error("invalid store option: {0}")]
    InvalidOption(String),
    /// A [`crate::PendingMessage`] was written to after it was committed, or committed after a
    /// failed write.
    #[error("message already committed or broken by an earlier write error")]
    MessageSealed,
}

impl Error {
    /// A copy of this error, for each of several deliveries one failure stopped (the OS error
    /// is kept by kind and text).
    pub(crate) fn copy(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::Corrupt { path, reason } => Error::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::UnsafePath { path, reason } => Error::UnsafePath {
                path: path.clone(),
                reason,
            },
            Error::Exhausted { what, path } => Error::Exhausted {
                what,
                path: path.clone(),
            },
            other => {
                debug_assert!(false, "Error::copy of {other:?}");
                Error::Io {
                    op: "deliver",
                    path: PathBuf::new(),
                    source: io::Error::other(other.to_string()),
                }
            }
        }
    }

    /// True for [`Error::InvalidName`]: a permanent, per-recipient error.
    pub fn is_invalid_name(&self) -> bool {
        matches!(self, Error::InvalidName(_))
    }

    /// True for errors that are local and temporary from a client's point of view: everything
    /// but [`Error::InvalidName`]. An SMTP server answers them with `451 4.3.0` (the message
    /// may be accepted later), never with a `5xx`.
    pub fn is_transient(&self) -> bool {
        !self.is_invalid_name()
    }
}

/// Short for `std::result::Result<T, mailstore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a closure that wraps an `io::Error` with the operation and the path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: impl Into<PathBuf> + 'a,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.into(),
        source,
    }
}
