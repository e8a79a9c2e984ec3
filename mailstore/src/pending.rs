//! A message being received, before it is committed to mailboxes or the queue.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::io::Errno;

use crate::at::{fstat, unsafe_path, Dir, Perms};
use crate::error::{io_err, Error, Result};
use crate::fsutil;
use crate::lock::try_lock;

/// A message being written, held in a temporary file of the store's staging directory (on the
/// same file system as the mailboxes, so committing it is a hard link, not a copy).
///
/// Made by [`Store::begin`](crate::Store::begin) or [`Queue::begin`](crate::queue::Queue::begin);
/// write the message into it ([`Write`]), then commit it with
/// [`Store::commit`](crate::Store::commit) (to any number of mailboxes, in one or several calls)
/// and/or [`Queue::enqueue_pending`](crate::queue::Queue::enqueue_pending). The first commit
/// fsyncs the file once; every mailbox then gets a hard link to the same inode, so a 50 MB
/// message is neither kept in memory nor copied per recipient. After the first commit the
/// message is sealed: further writes fail (they would change delivered mail).
///
/// The file has no name where the file system allows it (`O_TMPFILE`: ext4, XFS, Btrfs, tmpfs):
/// committing gives it its first name in a mailbox, and a message that is never committed, or
/// whose process crashed, leaves nothing behind (on ext4 without a journal a power failure can
/// leave such an inode allocated until the next `fsck`, which frees it). Elsewhere it is a named
/// temporary file: dropping it removes the temporary name; committed copies stay. A named file
/// left behind by a crashed process is removed when a store is next opened (the live owner
/// holds an `flock` on it, which is how a leftover is told from a message still being
/// written).
#[derive(Debug)]
pub struct PendingMessage {
    file: BufWriter<File>,
    dir: Arc<Dir>,
    /// The temporary name in `dir`; `None` for a file without one (`O_TMPFILE`).
    name: Option<String>,
    /// Device and inode of the file: every name it gets is checked to be this file.
    id: (u64, u64),
    len: u64,
    state: State,
    /// Mode and ownership, for the file [`prepend`](Self::prepend) makes.
    perms: Perms,
}

/// Reads a [`PendingMessage`] from its first byte, by offset (made by
/// [`PendingMessage::reader`]).
#[derive(Debug)]
pub struct PendingReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for PendingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

/// A sealed [`PendingMessage`], as the stores link it into place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Staged<'a> {
    pub dir: &'a Dir,
    /// `None`: the file has no name yet, it is linked by its descriptor.
    pub name: Option<&'a str>,
    pub file: &'a File,
    pub id: (u64, u64),
}

/// A [`Staged`] that owns what it refers to (a duplicate of the file's descriptor, shared by
/// its clones), to hand to another thread that commits it (the spool's combined deliveries).
#[derive(Debug, Clone)]
pub(crate) struct OwnedStaged {
    dir: Arc<Dir>,
    name: Option<String>,
    file: Arc<File>,
    id: (u64, u64),
}

impl OwnedStaged {
    /// The same file, borrowed.
    pub fn staged(&self) -> Staged<'_> {
        Staged {
            dir: &self.dir,
            name: self.name.as_deref(),
            file: &self.file,
            id: self.id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writing,
    /// Read-only and flushed, not yet fsynced (see `seal_unsynced`).
    Flushed,
    Sealed,
    Broken,
}

impl PendingMessage {
    /// Creates the file in `staging` with the mode and ownership the message will have in its
    /// mailboxes (the staging directory itself is private).
    pub(crate) fn create(staging: &Arc<Dir>, perms: &Perms) -> Result<PendingMessage> {
        Self::create_in(staging, perms, false)
    }

    /// As [`create`](Self::create); with `named`, a named file even where the file system
    /// could make one without a name.
    pub(crate) fn create_in(
        staging: &Arc<Dir>,
        perms: &Perms,
        named: bool,
    ) -> Result<PendingMessage> {
        let unnamed = if named || named_only() {
            None
        } else {
            staging.create_unnamed(perms)?
        };
        let (file, name) = match unnamed {
            Some(file) => (file, None),
            None => {
                let name = fsutil::unique()?;
                let file = staging.create(&name, perms)?;
                // Held until drop: tells `clean_staging` in other processes that this file is
                // alive.
                try_lock(&file).map_err(io_err("flock", staging.join(&name)))?;
                (file, Some(name))
            }
        };
        let id = fstat(&file, staging.path())?.id();
        Ok(PendingMessage {
            file: BufWriter::with_capacity(64 * 1024, file),
            dir: staging.clone(),
            name,
            id,
            len: 0,
            state: State::Writing,
            perms: *perms,
        })
    }

    /// Reads back what was written so far, from the first byte: for a signature computed over
    /// the finished message (DKIM). Buffered bytes are flushed first.
    ///
    /// # Errors
    /// The flush's error; the message is unusable then, as after a failed write.
    pub fn reader(&mut self) -> io::Result<PendingReader<'_>> {
        if self.state == State::Writing {
            if let Err(e) = self.file.flush() {
                self.state = State::Broken;
                return Err(e);
            }
        }
        Ok(PendingReader {
            file: self.file.get_ref(),
            pos: 0,
        })
    }

    /// Puts `prefix` in front of what was written so far (a header field computed over the
    /// message, such as `DKIM-Signature:`). A file cannot grow at its start, so the content is
    /// copied once, by offset, into a new temporary file beside this one, which then takes its
    /// place (the old one is removed). Writing may go on afterwards.
    ///
    /// # Errors
    /// [`Error::MessageSealed`] once the message was committed (it would change delivered
    /// mail) or after a failed write; [`Error::Io`] if the copy fails (this message is left as
    /// it was).
    pub fn prepend(&mut self, prefix: &[u8]) -> Result<()> {
        if self.state != State::Writing {
            return Err(Error::MessageSealed);
        }
        let mut new = PendingMessage::create(&self.dir, &self.perms)?;
        let path = new.path();
        let r = (|| {
            self.file.flush()?;
            new.write_all(prefix)?;
            copy_from(self.file.get_ref(), &mut new)
        })();
        r.map_err(io_err("copy", path))?;
        *self = new;
        Ok(())
    }

    /// For error messages: the temporary name, or the staging directory for a file without one.
    fn path(&self) -> PathBuf {
        match &self.name {
            Some(name) => self.dir.join(name),
            None => self.dir.path().to_path_buf(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and fsyncs the file (once), and returns where it is. From then on it is
    /// read-only.
    pub(crate) fn seal(&mut self) -> Result<Staged<'_>> {
        match self.state {
            State::Sealed => return Ok(self.staged()),
            State::Broken => return Err(Error::MessageSealed),
            State::Writing | State::Flushed => {}
        }
        let r = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all());
        if let Err(e) = r {
            self.state = State::Broken;
            return Err(io_err("fsync", self.path())(e));
        }
        self.state = State::Sealed;
        Ok(self.staged())
    }

    /// Flushes the file, without an fsync, and returns it and its length: for a commit that
    /// copies the message into a file of its own and fsyncs that (the queue). From then on it
    /// is read-only, as after [`seal`](Self::seal), which still fsyncs it when a later commit
    /// links it.
    pub(crate) fn seal_unsynced(&mut self) -> Result<(&File, u64)> {
        match self.state {
            State::Sealed | State::Flushed => {}
            State::Broken => return Err(Error::MessageSealed),
            State::Writing => {
                if let Err(e) = self.file.flush() {
                    self.state = State::Broken;
                    return Err(io_err("write", self.path())(e));
                }
                self.state = State::Flushed;
            }
        }
        Ok((self.file.get_ref(), self.len))
    }

    /// As [`seal`](Self::seal), owning a duplicate of the descriptor.
    pub(crate) fn seal_owned(&mut self) -> Result<OwnedStaged> {
        self.seal()?;
        let file = self
            .file
            .get_ref()
            .try_clone()
            .map_err(io_err("dup", self.path()))?;
        Ok(OwnedStaged {
            dir: self.dir.clone(),
            name: self.name.clone(),
            file: Arc::new(file),
            id: self.id,
        })
    }

    fn staged(&self) -> Staged<'_> {
        Staged {
            dir: &self.dir,
            name: self.name.as_deref(),
            file: self.file.get_ref(),
            id: self.id,
        }
    }
}

impl Write for PendingMessage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.state != State::Writing {
            return Err(io::Error::other(Error::MessageSealed));
        }
        match self.file.write(buf) {
            Ok(n) => {
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.state = State::Broken;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.state == State::Writing {
            self.file.flush()
        } else {
            Ok(())
        }
    }
}

impl Drop for PendingMessage {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = self.dir.remove_file(name);
        }
    }
}

/// Puts the sealed file `src` at `dest` in `dir` (which must not exist): a hard link when the
/// file system allows it, else a copy written under a temporary name in `dir`, fsynced and
/// renamed. A link by name is checked to be `src`'s own inode (so a staged name swapped for a
/// link to something else is never published); a file without a name is linked by its
/// descriptor, which cannot be swapped. The caller fsyncs `dir`.
pub(crate) fn link_or_copy(src: Staged<'_>, dir: &Dir, dest: &str, perms: &Perms) -> Result<()> {
    if let Some(name) = src.name {
        match src.dir.link(name, dir, dest) {
            Ok(()) => return check_link(dir, dest, src.id),
            Err(e) if can_copy_instead(e, false) => {}
            Err(e) => return Err(crate::at::errno("link", dir.join(dest))(e)),
        }
    } else if link_unnamed(src, dir, dest)? {
        return Ok(());
    }
    copy_to(src, dir, dest, perms)
}

/// Links a sealed file that has no name (`O_TMPFILE`) to `dest` in `dir` by its descriptor:
/// `false` when the file system cannot (the caller copies it instead). Such a file is
/// complete and cannot be swapped by anyone, so its first name may be one readers see (a
/// Maildir's `new/`); a named file goes through [`link_or_copy`], which checks what it linked.
pub(crate) fn link_unnamed(src: Staged<'_>, dir: &Dir, dest: &str) -> Result<bool> {
    if src.name.is_some() || no_descriptor_links() {
        return Ok(false);
    }
    match crate::at::link_file(src.file, dir, dest) {
        Ok(()) => Ok(true),
        Err(e) if can_copy_instead(e, true) => Ok(false),
        Err(e) => Err(crate::at::errno("link", dir.join(dest))(e)),
    }
}

/// Whether a failed link may be replaced by a copy: another file system, too many links, or
/// links refused; for a descriptor link, also refused both ways (no `CAP_DAC_READ_SEARCH`, no
/// `/proc`).
fn can_copy_instead(e: Errno, by_descriptor: bool) -> bool {
    matches!(e, Errno::XDEV | Errno::MLINK | Errno::PERM)
        || (by_descriptor && matches!(e, Errno::NOENT | Errno::ACCESS))
}

/// The copy of [`link_or_copy`]: written under a temporary name in `dir`, fsynced and renamed
/// to `dest` (never over an existing file).
pub(crate) fn copy_to(src: Staged<'_>, dir: &Dir, dest: &str, perms: &Perms) -> Result<()> {
    let tmp = format!(".tmp.{}", fsutil::unique()?);
    let r = (|| {
        let mut to = dir.create(&tmp, perms)?;
        copy_from(src.file, &mut to).map_err(io_err("copy", dir.join(&tmp)))?;
        to.sync_all().map_err(io_err("fsync", dir.join(&tmp)))?;
        // Never over a file that appeared at `dest` meanwhile (another program's message):
        // RENAME_NOREPLACE, or where the file system lacks it, a link (which never replaces).
        match rustix::fs::renameat_with(
            dir,
            tmp.as_str(),
            dir,
            dest,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL | Errno::NOSYS) => {
                let linked = dir
                    .link(&tmp, dir, dest)
                    .map_err(crate::at::errno("link", dir.join(dest)));
                let _ = dir.remove_file(&tmp);
                linked
            }
            Err(e) => Err(crate::at::errno("rename", dir.join(dest))(e)),
        }
    })();
    if r.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    r
}

/// After `linkat`: `name` in `dir` must be the inode `id`, else it is removed again and the
/// delivery refused (someone replaced the source between our check and the link).
pub(crate) fn check_link(dir: &Dir, name: &str, id: (u64, u64)) -> Result<()> {
    match dir.stat(name)? {
        Some(m) if m.id() == id && m.is_file() => Ok(()),
        _ => {
            let _ = dir.remove_file(name);
            Err(unsafe_path(
                dir.join(name),
                "was linked to a file the store did not make",
            ))
        }
    }
}

/// Copies a whole file by offset (the source's file position is not used).
pub(crate) fn copy_from(from: &File, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = from.read_at(&mut buf, off)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        off = off.saturating_add(n as u64);
    }
}

/// Removes what crashed processes left in a staging directory: entries nobody holds a lock on
/// and that were last modified more than a few seconds ago (a live writer takes its lock right
/// after creating the file; the age check closes that tiny window). Errors are logged, not
/// returned: a leftover never stops a store from opening.
pub(crate) fn clean_staging(dir: &Dir) {
    let Ok(names) = dir.names() else {
        return;
    };
    let now = SystemTime::now();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let Ok(Some(meta)) = dir.stat(name) else {
            continue;
        };
        let age = now.duration_since(meta.mtime).unwrap_or_default();
        if age < Duration::from_secs(5) {
            continue;
        }
        let locked = if meta.is_dir() {
            matches!(dir.try_open_dir(name), Ok(Some(d)) if matches!(try_lock(&d), Ok(true)))
        } else if meta.is_file() {
            matches!(dir.try_open_file(name), Ok(Some(f)) if matches!(try_lock(&f), Ok(true)))
        } else {
            true // a link or a special file: nobody's live message
        };
        if !locked {
            continue;
        }
        match dir.remove_tree(name) {
            Ok(()) => {
                tracing::info!(path = %dir.join(name).display(), "removed leftover temporary file")
            }
            Err(e) => {
                tracing::warn!(path = %dir.join(name).display(), error = %e, "cannot remove leftover")
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests of the named staging files (file systems without `O_TMPFILE`) set this.
    pub(crate) static NAMED_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests of a system where no file is linked by its descriptor (no `/proc`, no
    /// `CAP_DAC_READ_SEARCH`) set this.
    pub(crate) static NO_DESCRIPTOR_LINKS: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn no_descriptor_links() -> bool {
    NO_DESCRIPTOR_LINKS.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn no_descriptor_links() -> bool {
    false
}

#[cfg(test)]
fn named_only() -> bool {
    NAMED_ONLY.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn named_only() -> bool {
    false
}

/// Name of the staging directory, under a store's root, where messages are received before
/// they are committed (a dot name: never a valid mailbox).
const STAGING: &str = ".tmp";

/// Opens a mailbox store's root: creates it and its staging directory if needed (and fsyncs
/// the root), removes what crashed processes left in staging,
/// and returns `(root, staging)`. The root is opened by its path (links followed: it is the
/// operator's); the staging directory is not followed if it is a link.
pub(crate) fn open_store_root(root: &Path) -> Result<(Dir, Arc<Dir>)> {
    let root = Dir::create_root(root)?;
    let (staging, _) = root.ensure_dir(STAGING, &Perms::PRIVATE)?;
    // Also when found: an earlier run may have made it and stopped before this fsync.
    root.sync()?;
    clean_staging(&staging);
    Ok((root, Arc::new(staging)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::{Read, Write};

    use crate::queue::{Envelope, Queue, QueueEntry};

    /// What the spool's staging directory holds, and the mailbox `m`'s message files.
    fn staged_and_delivered(root: &std::path::Path) -> (usize, Vec<Vec<u8>>) {
        let staged = std::fs::read_dir(root.join(".tmp")).unwrap().count();
        let mut messages: Vec<_> = std::fs::read_dir(root.join("m"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_else(|_| Vec::new());
        messages.retain(|p: &std::path::PathBuf| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !name.starts_with('.') && !name.ends_with(".status")
        });
        messages.sort();
        (
            staged,
            messages.iter().map(|p| std::fs::read(p).unwrap()).collect(),
        )
    }

    #[test]
    fn staged_files_have_no_name_where_the_file_system_allows_it() {
        use crate::{spool::Spool, MailboxName, Store};
        for named in [false, true] {
            super::NAMED_ONLY.with(|n| n.set(named));
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            let m = MailboxName::new("m").unwrap();
            let mut kept = spool.begin().unwrap();
            kept.write_all(b"Subject: kept\r\n\r\nbody\r\n").unwrap();
            let mut dropped = spool.begin().unwrap();
            dropped.write_all(b"Subject: dropped\r\n\r\n").unwrap();
            // A named file each (tmpfs, ext4, XFS and Btrfs all have O_TMPFILE), or none.
            assert_eq!(
                staged_and_delivered(dir.path()).0,
                if named { 2 } else { 0 }
            );
            drop(dropped);
            let ids = spool.commit(&mut kept, &[m.clone(), m.clone()]).unwrap();
            assert!(ids.iter().all(Result::is_ok), "{ids:?}");
            // Two mailbox names for the one inode.
            let (staged, messages) = staged_and_delivered(dir.path());
            assert_eq!(staged, usize::from(named));
            assert_eq!(messages, vec![b"Subject: kept\r\n\r\nbody\r\n".to_vec(); 2]);
            drop(kept);
            assert_eq!(staged_and_delivered(dir.path()).0, 0);
            assert_eq!(spool.list(&m).unwrap(), vec![1, 2]);
        }
        super::NAMED_ONLY.with(|n| n.set(false));
    }

    #[test]
    fn maildir_links_a_nameless_file_straight_into_new() {
        use crate::{maildir::Maildir, MailboxName, Store};
        // Where descriptor links are refused (no `CAP_DAC_READ_SEARCH`, no `/proc`), a
        // nameless file is copied through `tmp/` like a named one.
        let probe = tempfile::tempdir().unwrap();
        let probe = crate::at::Dir::create_root(probe.path()).unwrap();
        let links = match probe.create_unnamed(&crate::at::Perms::PRIVATE).unwrap() {
            Some(f) => crate::at::link_file(&f, &probe, "linked").is_ok(),
            None => false,
        };
        if !links {
            eprintln!("descriptor links are refused here: the direct link into new/ is not tested");
        }
        for named in [false, true] {
            super::NAMED_ONLY.with(|n| n.set(named));
            let dir = tempfile::tempdir().unwrap();
            let md = Maildir::open(dir.path()).unwrap();
            let m = MailboxName::new("m").unwrap();
            md.deliver(&m, b"first").unwrap();
            let mbox = dir.path().join("m");
            // A nameless file does not pass through `tmp/` (no name made and removed there:
            // its modification time stays), a named one does.
            let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
            let tmp = std::fs::File::open(mbox.join("tmp")).unwrap();
            tmp.set_modified(past).unwrap();
            md.deliver(&m, b"second").unwrap();
            let touched = tmp.metadata().unwrap().modified().unwrap() != past;
            assert_eq!(touched, named || !links);
            let mut got: Vec<Vec<u8>> = std::fs::read_dir(mbox.join("new"))
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect();
            got.sort();
            assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
            if named {
                assert_eq!(std::fs::read_dir(mbox.join("tmp")).unwrap().count(), 0);
            }
            assert_eq!(
                std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
                0
            );
        }
        super::NAMED_ONLY.with(|n| n.set(false));
    }

    #[test]
    fn read_back_and_prepend_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path().join("q")).unwrap();
        let mut m = queue.begin().unwrap();
        m.write_all(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let mut back = Vec::new();
        m.reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, b"Subject: x\r\n\r\nbody\r\n");
        m.prepend(b"Sig: 1\r\n").unwrap();
        m.write_all(b"more\r\n").unwrap();
        assert_eq!(m.len(), 34);
        let entry = QueueEntry::new(
            Envelope::parse("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n").unwrap(),
            std::time::SystemTime::now(),
        );
        let id = queue.enqueue_pending(&entry, &mut m).unwrap();
        let mut body = Vec::new();
        queue
            .read_body(&id)
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, b"Sig: 1\r\nSubject: x\r\n\r\nbody\r\nmore\r\n");
        // Sealed by the commit: no more changes.
        assert!(m.prepend(b"late\r\n").is_err());
        drop(m);
        // Only the committed copy is left (the first temporary file went with the prepend).
        let left: Vec<_> = std::fs::read_dir(dir.path().join("q/tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
