//! Maildir: `<root>/<user>/{tmp,new,cur}`, the format of qmail, Postfix's `home_mailbox = Maildir/`,
//! Dovecot, mutt and Python's `mailbox.Maildir`.
//!
//! A mailbox's directories are created on its first delivery. A message gets a name unique on
//! this host and over time, `<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>` (the host
//! name with `/` written as `\057` and `:` as `\072`, as the Maildir convention asks, since `:`
//! starts the flags suffix in `cur/`). The message is already written and fsynced when it gets
//! that name, and `new/` is fsynced before the delivery returns; readers only look at `new/`
//! and `cur/`, so they never see a partial file. A message file that has no name yet
//! (`O_TMPFILE`, see [`PendingMessage`]) is linked straight into `new/` by its descriptor
//! (`linkat(2)` never replaces a file and the link appears whole), which leaves `tmp/`
//! untouched; otherwise the message is linked (or copied) into `tmp/` and moved to `new/`
//! with `rename(2)`, as the Maildir convention has it.
//!
//! The three directories are made when missing (all three on the first delivery); when
//! `new/` exists, `tmp/` and `cur/` are only checked with a `stat` each (a link or a file
//! there fails the delivery, as at `new/`). Before a process's first delivery into a mailbox,
//! the root and the mailbox directory are fsynced, whether it made them or found them (their
//! maker may not have synced them yet), so the names leading to a message are durable before
//! it is acknowledged; later deliveries pay nothing for that.
//!
//! Every directory is opened relative to its parent's descriptor with `O_NOFOLLOW` (see
//! `at.rs`): a mailbox, `tmp/`, `new/` or `cur/` that is a symbolic link is refused with
//! [`crate::Error::UnsafePath`] and nothing is written through it.
//! New directories and files get the modes and ownership of the store's [`StoreOptions`].
//!
//! This crate only delivers: reading, flagging (moving to `cur/` with a `:2,` suffix) and
//! deleting are the mail reader's business, and every Maildir library does them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::at::{Dir, GroupSync, GroupSyncs, Perms};
use crate::error::{Error, Result};
use crate::fsutil::bump;
use crate::name::MailboxName;
use crate::options::StoreOptions;
use crate::pending::{
    copy_to, link_or_copy, link_unnamed, open_store_root, PendingMessage, Staged,
};
use crate::{DeliveryId, Store};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A tree of Maildir mailboxes under one root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Maildir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: Dir,
    staging: Arc<Dir>,
    perms: Perms,
    host: String,
    /// Group commit of the mailbox and `new/` directories' fsyncs.
    syncs: GroupSyncs,
    /// Group commit of the root's fsyncs (the mailboxes' names).
    root_sync: GroupSync,
}

impl Maildir {
    /// Opens (creating if needed) the root, and removes temporary files left in its staging
    /// directory `<root>/.tmp` by crashed processes.
    ///
    /// Mailboxes get the default [`StoreOptions`] (`0700` directories, `0600` files).
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the directories cannot be created.
    pub fn open(root: impl AsRef<Path>) -> Result<Maildir> {
        Maildir::open_with(root, &StoreOptions::new())
    }

    /// As [`open`](Self::open), with the modes and ownership of new mailbox directories and
    /// messages given by `options`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidOption`], or as [`open`](Self::open).
    pub fn open_with(root: impl AsRef<Path>, options: &StoreOptions) -> Result<Maildir> {
        let perms = options.perms()?;
        let (root, staging) = open_store_root(root.as_ref())?;
        Ok(Maildir {
            inner: Arc::new(Inner {
                root,
                staging,
                perms,
                host: hostname(),
                syncs: GroupSyncs::default(),
                root_sync: GroupSync::default(),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.inner.root.path()
    }

    /// A mailbox's Maildir (the directory holding `tmp`, `new` and `cur`).
    pub fn mailbox_path(&self, mailbox: &MailboxName) -> PathBuf {
        self.inner.root.join(mailbox.as_str())
    }

    /// A new unique file name.
    fn unique_name(&self, new: &Dir) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let q = bump(&COUNTER).ok_or_else(|| Error::Exhausted {
            what: "Maildir name counter",
            path: new.path().to_path_buf(),
        })?;
        Ok(format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            q,
            self.inner.host
        ))
    }

    /// Opens the mailbox's `new/`, making the whole Maildir (`tmp`, `new`, `cur`) first when
    /// `new/` is missing, and makes the names of the mailbox and of `new/` durable (once per
    /// directory: see [`GroupSync::sync_name`]); returns `new/`, its group commit and the
    /// mailbox directory.
    fn open_new(&self, mailbox: &MailboxName) -> Result<(Dir, Arc<GroupSync>, Dir)> {
        let (inner, perms) = (&self.inner, &self.inner.perms);
        let (dir, _) = inner.root.ensure_dir(mailbox.as_str(), perms)?;
        let (new, made_sub) = match dir.try_open_dir("new")? {
            Some(new) => {
                // `tmp/` and `cur/` are only looked at (one `stat` each, no link followed): a
                // planted link or file there is refused as at `new/`, a missing one made again.
                let mut made = false;
                for sub in ["tmp", "cur"] {
                    if !dir.has_dir(sub)? {
                        made |= dir.ensure_dir(sub, perms)?.1;
                    }
                }
                (new, made)
            }
            None => {
                let (_tmp, c1) = dir.ensure_dir("tmp", perms)?;
                let (new, c2) = dir.ensure_dir("new", perms)?;
                let (_cur, c3) = dir.ensure_dir("cur", perms)?;
                (new, c1 || c2 || c3)
            }
        };
        let group = inner.syncs.of(&new)?;
        if made_sub || !group.is_named() {
            let dir_group = inner.syncs.of(&dir)?;
            dir_group.sync_name(&inner.root, &inner.root_sync)?;
            // Counted before `new/`'s name, so that one fsync covers both.
            let made = made_sub.then(|| dir_group.changed());
            group.sync_name(&dir, &dir_group)?;
            if let Some(ticket) = made {
                dir_group.sync(&dir, ticket)?;
            }
        }
        Ok((new, group, dir))
    }

    /// Puts the message into `new/` (see the module doc); returns its name, `new/` and the
    /// group commit of `new/`.
    fn place(
        &self,
        src: Staged<'_>,
        mailbox: &MailboxName,
    ) -> Result<(String, Dir, Arc<GroupSync>)> {
        let perms = &self.inner.perms;
        let (new, group, dir) = self.open_new(mailbox)?;
        let name = self.unique_name(&new)?;
        if link_unnamed(src, &new, &name)? {
            return Ok((name, new, group));
        }
        let (tmp, created) = dir.ensure_dir("tmp", perms)?;
        if created {
            self.inner.syncs.sync_now(&dir)?;
        }
        if src.name.is_some() {
            link_or_copy(src, &tmp, &name, perms)?;
        } else {
            // Links by descriptor were refused just now: copy.
            copy_to(src, &tmp, &name, perms)?;
        }
        if let Err(e) = tmp.rename(&name, &new, &name) {
            let _ = tmp.remove_file(&name);
            return Err(e);
        }
        Ok((name, new, group))
    }
}

impl Store for Maildir {
    fn begin(&self) -> Result<PendingMessage> {
        PendingMessage::create(&self.inner.staging, &self.inner.perms)
    }

    fn commit(
        &self,
        message: &mut PendingMessage,
        mailboxes: &[MailboxName],
    ) -> Result<Vec<Result<DeliveryId>>> {
        let src = message.seal()?;
        let mut results: Vec<Result<DeliveryId>> = Vec::with_capacity(mailboxes.len());
        let mut to_sync: Vec<(&MailboxName, Dir, Arc<GroupSync>, u64)> = Vec::new();
        for mailbox in mailboxes {
            match self.place(src, mailbox) {
                Ok((name, new, group)) => {
                    let ticket = group.changed();
                    crate::at::add_to_sync(&mut to_sync, mailbox, new, group, ticket);
                    results.push(Ok(DeliveryId::Maildir(name)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        crate::at::sync_shared(mailboxes, &mut results, to_sync);
        Ok(results)
    }
}

/// This host's name, made safe for a Maildir file name. At most 1 KiB of each file is read
/// (a host name has at most 255 octets): nothing is read without a bound.
fn hostname() -> String {
    use std::io::Read;
    let read = |p: &&str| {
        let mut s = String::new();
        fs::File::open(p)
            .and_then(|f| f.take(1024).read_to_string(&mut s))
            .ok()
            .map(|_| s)
    };
    let raw = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(read)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    sanitize_host(&raw)
}

fn sanitize_host(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            c if c.is_control() || c.is_whitespace() => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_is_sanitized() {
        assert_eq!(sanitize_host("a/b:c d"), "a\\057b\\072c_d");
        assert_eq!(sanitize_host("mx.example.org"), "mx.example.org");
    }

    #[test]
    fn a_maildir_another_process_made_has_its_names_synced_before_the_ack() {
        use crate::at::tests::syncs_of;
        let tmp = tempfile::tempdir().unwrap();
        let (maker, finder) = (
            Maildir::open(tmp.path()).unwrap(),
            Maildir::open(tmp.path()).unwrap(),
        );
        let bob = MailboxName::new("bob").unwrap();
        let box_dir = tmp.path().join("bob");
        let counts = || (syncs_of(tmp.path()), syncs_of(&box_dir));
        let (root0, box0) = counts();
        maker.deliver(&bob, b"one").unwrap();
        maker.deliver(&bob, b"two").unwrap();
        assert_eq!(counts(), (root0 + 1, box0 + 1), "made once, synced once");
        finder.deliver(&bob, b"three").unwrap();
        finder.deliver(&bob, b"four").unwrap();
        assert_eq!(counts(), (root0 + 2, box0 + 2), "found once, synced once");
        // `cur/` removed by a reader: made again, and the mailbox synced for it.
        fs::remove_dir(box_dir.join("cur")).unwrap();
        finder.deliver(&bob, b"five").unwrap();
        assert_eq!(counts(), (root0 + 2, box0 + 3));
        assert!(box_dir.join("cur").is_dir());
        assert_eq!(fs::read_dir(box_dir.join("new")).unwrap().count(), 5);
    }

    #[test]
    fn delivers_into_new() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path()).unwrap();
        let bob = MailboxName::new("bob").unwrap();
        let DeliveryId::Maildir(name) = md.deliver(&bob, b"Subject: x\n\nbody\n").unwrap() else {
            panic!("a Maildir gives file names");
        };
        let p = dir.path().join("bob");
        assert_eq!(
            fs::read(p.join("new").join(&name)).unwrap(),
            b"Subject: x\n\nbody\n"
        );
        assert_eq!(fs::read_dir(p.join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(p.join("cur")).unwrap().count(), 0);
        assert!(name.contains(&format!("P{}Q", std::process::id())));
        let second = md.deliver(&bob, b"x").unwrap();
        assert_ne!(second, DeliveryId::Maildir(name));
    }
}
