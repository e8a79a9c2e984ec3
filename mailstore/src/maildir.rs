//! Maildir: `<root>/<user>/{tmp,new,cur}`, the format of qmail, Postfix's `home_mailbox = Maildir/`,
//! Dovecot, mutt and Python's `mailbox.Maildir`.
//!
//! A mailbox's directories are created on its first delivery. A message gets a name unique on
//! this host and over time, `<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>` (the host
//! name with `/` written as `\057` and `:` as `\072`, as the Maildir convention asks, since `:`
//! starts the flags suffix in `cur/`). It is linked (or written) into `tmp/` under that name,
//! already fsynced, then moved to `new/` with `rename(2)`, and `new/` is fsynced before the
//! delivery returns. Readers only look at `new/` and `cur/`, so they never see a partial file.
//!
//! This crate only delivers: reading, flagging (moving to `cur/` with a `:2,` suffix) and
//! deleting are the mail reader's business, and every Maildir library does them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Result};
use crate::fsutil::{ensure_dir, fsync_dir};
use crate::name::MailboxName;
use crate::pending::{link_or_copy, open_store_root, PendingMessage};
use crate::{DeliveryId, Store};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A tree of Maildir mailboxes under one root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Maildir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    staging: PathBuf,
    host: String,
}

impl Maildir {
    /// Opens (creating if needed) the root, and removes temporary files left in its staging
    /// directory `<root>/.tmp` by crashed processes.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the directories cannot be created.
    pub fn open(root: impl AsRef<Path>) -> Result<Maildir> {
        let (root, staging) = open_store_root(root.as_ref())?;
        Ok(Maildir {
            inner: Arc::new(Inner {
                root,
                staging,
                host: hostname(),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// A mailbox's Maildir (the directory holding `tmp`, `new` and `cur`).
    pub fn mailbox_path(&self, mailbox: &MailboxName) -> PathBuf {
        self.inner.root.join(mailbox.as_str())
    }

    /// A new unique file name.
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            self.inner.host
        )
    }

    fn place(&self, src: &Path, mailbox: &MailboxName) -> Result<String> {
        let dir = self.mailbox_path(mailbox);
        if ensure_dir(&dir)? {
            fsync_dir(&self.inner.root)?;
        }
        let mut created = false;
        for sub in ["tmp", "new", "cur"] {
            created |= ensure_dir(&dir.join(sub))?;
        }
        if created {
            fsync_dir(&dir)?;
        }
        let name = self.unique_name();
        let tmp = dir.join("tmp").join(&name);
        link_or_copy(src, &tmp, &dir.join("tmp"))?;
        let new = dir.join("new").join(&name);
        if let Err(e) = fs::rename(&tmp, &new) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename", new)(e));
        }
        Ok(name)
    }
}

impl Store for Maildir {
    fn begin(&self) -> Result<PendingMessage> {
        PendingMessage::create(&self.inner.staging)
    }

    fn commit(
        &self,
        message: &mut PendingMessage,
        mailboxes: &[MailboxName],
    ) -> Result<Vec<Result<DeliveryId>>> {
        let src = message.seal()?;
        let mut results: Vec<Result<DeliveryId>> = mailboxes
            .iter()
            .map(|m| self.place(src, m).map(DeliveryId::Maildir))
            .collect();
        for (i, mailbox) in mailboxes.iter().enumerate() {
            let first = mailboxes.iter().position(|m| m == mailbox) == Some(i);
            if first && results[i].is_ok() {
                if let Err(e) = fsync_dir(&self.mailbox_path(mailbox).join("new")) {
                    // Every delivery into this mailbox shares the failed fsync.
                    let text = e.to_string();
                    for (j, m) in mailboxes.iter().enumerate() {
                        if m == mailbox && results[j].is_ok() {
                            results[j] = Err(crate::Error::Io {
                                op: "fsync",
                                path: self.mailbox_path(m).join("new"),
                                source: std::io::Error::other(text.clone()),
                            });
                        }
                    }
                }
            }
        }
        Ok(results)
    }
}

/// This host's name, made safe for a Maildir file name.
fn hostname() -> String {
    let raw = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
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
