//! Who may read the mail: modes and ownership of what a mailbox store creates.
//!
//! By default a store makes mailbox directories `0700` and message files `0600`, owned by the
//! user the process runs as: only that user (and root) can read the mail. A mail reader running
//! as someone else (Dovecot under its own uid, or a user's own mutt) needs more:
//!
//! ```
//! use mailstore::{spool::Spool, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // Directories rwxrws--- (set-group-id, so everything below stays in the group), files
//! // rw-rw----, all in group 8 ("mail" on Debian):
//! let options = StoreOptions::new().mode(0o2770).group(8);
//! # let options = StoreOptions::new().mode(0o2770);
//! let spool = Spool::open_with(dir.path(), &options)?;
//! # Ok(()) }
//! ```
//!
//! What the options apply to: every mailbox directory the store creates (`<root>/<user>`, and a
//! Maildir's `tmp`, `new`, `cur`), and every file it creates in a mailbox (messages, statuses,
//! `.mh_sequences`, `.highwater`, the status template). Modes are set exactly with `fchmod`
//! after creation (the umask does not apply). Directories and files that already exist are left
//! as they are: the operator's choice. The staging directory `<root>/.tmp` stays `0700` (partial
//! messages are private); messages get their final mode and group when they are created there,
//! so a delivery never changes a file's mode after it is visible.
//!
//! Ownership is changed (`fchown`, on the new file's own descriptor, never by path) only when
//! asked: a group (the process must be a member, or root), and an owner (root only). One
//! message delivered to several mailboxes is one file with several names, so it has one owner
//! and one group.

use crate::at::Perms;
use crate::error::{Error, Result};

/// Modes and ownership for what a mailbox store creates (see the [module docs](self)).
///
/// The default, [`StoreOptions::new`], is what the stores always did: directories `0700`,
/// files `0600`, owner and group left to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    dir_mode: u32,
    file_mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::new()
    }
}

impl StoreOptions {
    /// Directories `0700`, files `0600`, no ownership change.
    pub const fn new() -> StoreOptions {
        StoreOptions {
            dir_mode: 0o700,
            file_mode: 0o600,
            owner: None,
            group: None,
        }
    }

    /// Sets the directory mode and derives the file mode from it: the same read and write
    /// bits, no execute, set-id or sticky bits (`0o2770` gives files `0o660`, `0o750` gives
    /// `0o640`). Only the low 12 bits are used.
    pub const fn mode(self, dir_mode: u32) -> StoreOptions {
        StoreOptions {
            dir_mode: dir_mode & 0o7777,
            file_mode: dir_mode & 0o666,
            ..self
        }
    }

    /// Sets the mode of new mailbox directories (low 12 bits: permissions, set-group-id,
    /// sticky), leaving the file mode as it is.
    pub const fn dir_mode(self, mode: u32) -> StoreOptions {
        StoreOptions {
            dir_mode: mode & 0o7777,
            ..self
        }
    }

    /// Sets the mode of new files in mailboxes (read and write bits only: mail is never
    /// executable).
    pub const fn file_mode(self, mode: u32) -> StoreOptions {
        StoreOptions {
            file_mode: mode & 0o666,
            ..self
        }
    }

    /// Gives new mailbox directories and files to this group (a numeric gid).
    pub const fn group(self, gid: u32) -> StoreOptions {
        StoreOptions {
            group: Some(gid),
            ..self
        }
    }

    /// Gives new mailbox directories and files to this user (a numeric uid; needs root).
    pub const fn owner(self, uid: u32) -> StoreOptions {
        StoreOptions {
            owner: Some(uid),
            ..self
        }
    }

    /// The mode of new mailbox directories.
    pub const fn get_dir_mode(&self) -> u32 {
        self.dir_mode
    }

    /// The mode of new files in mailboxes.
    pub const fn get_file_mode(&self) -> u32 {
        self.file_mode
    }

    /// The group given to new directories and files, if any.
    pub const fn get_group(&self) -> Option<u32> {
        self.group
    }

    /// The owner given to new directories and files, if any.
    pub const fn get_owner(&self) -> Option<u32> {
        self.owner
    }

    /// Checks the values and turns them into what the stores apply.
    pub(crate) fn perms(&self) -> Result<Perms> {
        if self.owner == Some(u32::MAX) || self.group == Some(u32::MAX) {
            return Err(Error::InvalidOption(
                "uid and gid 4294967295 (-1) mean \"no change\" to chown; leave them unset".into(),
            ));
        }
        Ok(Perms {
            dir_mode: self.dir_mode,
            file_mode: self.file_mode,
            owner: self.owner,
            group: self.group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_file_modes() {
        assert_eq!(StoreOptions::new().get_file_mode(), 0o600);
        assert_eq!(StoreOptions::new().mode(0o2770).get_file_mode(), 0o660);
        assert_eq!(StoreOptions::new().mode(0o2770).get_dir_mode(), 0o2770);
        assert_eq!(StoreOptions::new().mode(0o750).get_file_mode(), 0o640);
        assert_eq!(StoreOptions::new().mode(0o4755).get_file_mode(), 0o644);
        assert_eq!(
            StoreOptions::new()
                .mode(0o755)
                .file_mode(0o7777)
                .get_file_mode(),
            0o666
        );
        assert!(StoreOptions::new().group(u32::MAX).perms().is_err());
        assert_eq!(StoreOptions::default(), StoreOptions::new());
    }
}
