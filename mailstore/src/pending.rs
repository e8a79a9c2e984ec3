//! A message being received, before it is committed to mailboxes or the queue.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, create_new, ensure_dir, fsync_dir, is_errno};
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
/// Dropping it removes the temporary name; committed copies stay. A file left behind by a crashed
/// process is removed when a store is next opened (the live owner holds an `flock` on it, which
/// is how a leftover is told from a message still being written).
#[derive(Debug)]
pub struct PendingMessage {
    file: BufWriter<File>,
    path: PathBuf,
    len: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writing,
    Sealed,
    Broken,
}

impl PendingMessage {
    pub(crate) fn create(staging: &Path) -> Result<PendingMessage> {
        let path = staging.join(fsutil::unique());
        let file = create_new(&path)?;
        // Held until drop: tells `clean_staging` in other processes that this file is alive.
        try_lock(&file).map_err(io_err("flock", &path))?;
        Ok(PendingMessage {
            file: BufWriter::with_capacity(64 * 1024, file),
            path,
            len: 0,
            state: State::Writing,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and fsyncs the file (once), and returns its path. From then on it is read-only.
    pub(crate) fn seal(&mut self) -> Result<&Path> {
        match self.state {
            State::Sealed => return Ok(&self.path),
            State::Broken => return Err(Error::MessageSealed),
            State::Writing => {}
        }
        let r = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all());
        if let Err(e) = r {
            self.state = State::Broken;
            return Err(io_err("fsync", &self.path)(e));
        }
        self.state = State::Sealed;
        Ok(&self.path)
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
        let _ = fs::remove_file(&self.path);
    }
}

/// Puts the sealed file `src` at `dest` (which must not exist): a hard link when the file system
/// allows it, else a copy written under a temporary name in `tmp_dir`, fsynced and renamed. The
/// caller fsyncs `dest`'s directory.
pub(crate) fn link_or_copy(src: &Path, dest: &Path, tmp_dir: &Path) -> Result<()> {
    use rustix::io::Errno;
    match fs::hard_link(src, dest) {
        Ok(()) => return Ok(()),
        // Another file system, too many links, or links refused: copy instead.
        Err(e)
            if is_errno(&e, Errno::XDEV)
                || is_errno(&e, Errno::MLINK)
                || is_errno(&e, Errno::PERM) => {}
        Err(e) => return Err(io_err("link", dest)(e)),
    }
    let tmp = tmp_dir.join(format!(".tmp.{}", fsutil::unique()));
    let r = (|| {
        let mut from = File::open(src).map_err(io_err("open", src))?;
        let mut to = create_new(&tmp)?;
        io::copy(&mut from, &mut to).map_err(io_err("copy", &tmp))?;
        to.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("rename", dest))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Removes what crashed processes left in a staging directory: entries nobody holds a lock on
/// and that were last modified more than a few seconds ago (a live writer takes its lock right
/// after creating the file; the age check closes that tiny window). Errors are logged, not
/// returned: a leftover never stops a store from opening.
pub(crate) fn clean_staging(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < Duration::from_secs(5) {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !matches!(try_lock(&file), Ok(true)) {
            continue;
        }
        let r = if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => tracing::info!(path = %path.display(), "removed leftover temporary file"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover")
            }
        }
    }
}

/// Name of the staging directory, under a store's root, where messages are received before
/// they are committed (a dot name: never a valid mailbox).
const STAGING: &str = ".tmp";

/// Opens a mailbox store's root: creates it and its staging directory if needed (fsyncing the
/// root when the staging directory is new), removes what crashed processes left in staging,
/// and returns `(root, staging)`.
pub(crate) fn open_store_root(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = root.to_path_buf();
    fs::create_dir_all(&root).map_err(io_err("mkdir", &root))?;
    let staging = root.join(STAGING);
    if ensure_dir(&staging)? {
        fsync_dir(&root)?;
    }
    clean_staging(&staging);
    Ok((root, staging))
}
