//! Directory descriptors: how the stores touch the file system without following planted links.
//!
//! Every file and directory below a store's root is reached relative to an open directory
//! descriptor ([`Dir`]), one path component at a time, with `O_NOFOLLOW` on the last (and only)
//! component: `openat`, `mkdirat`, `linkat`, `renameat`, `unlinkat`, `fstatat`. So a symbolic
//! link planted in a mailbox (the mailbox directory itself, a Maildir's `tmp/` or `new/`, a
//! spool's `.recent`, `.highwater` or `.mh_sequences`) is never followed: the operation fails
//! with [`Error::UnsafePath`], naming the path, and the daemon answers `451` for the message.
//! The store's root (and a queue's directory) is the exception: it comes from the operator's
//! configuration, and `/var/spool/mail` is often a link to `/var/mail`, so it is opened by path,
//! following links, once, when the store is opened.
//!
//! Hard links cannot be refused by `O_NOFOLLOW`, so the stores never open an existing file for
//! writing: every write goes to a file just created with `O_CREAT | O_EXCL` (which also refuses
//! a symbolic link in its place), which is then renamed over the old name. The one exception is
//! the spare of [`Dir::replace_reusing`] (the spool's `.mh_sequences`, rewritten on every
//! delivery), written only after `fstat` of the opened descriptor shows a regular file with a
//! single link and the store's owner and mode. A `chmod` or `chown`
//! is only ever applied through the descriptor of such a new file. A hard link is only made from
//! a file the store created itself (a staged message, its own status template), and the new
//! name is checked to be that very inode (device and inode number) before anything refers to
//! it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, FlockOperation, Gid, Mode, OFlags, Uid, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::fsutil::unique;

/// Modes and ownership applied to what a store creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Perms {
    pub dir_mode: u32,
    pub file_mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl Perms {
    /// Owner only: staging directories, the queue, and the default for mailboxes.
    pub const PRIVATE: Perms = Perms {
        dir_mode: 0o700,
        file_mode: 0o600,
        owner: None,
        group: None,
    };

    fn apply(&self, fd: BorrowedFd<'_>, mode: u32, path: &Path) -> Result<()> {
        if self.owner.is_some() || self.group.is_some() {
            rustix::fs::fchown(
                fd,
                self.owner.map(Uid::from_raw),
                self.group.map(Gid::from_raw),
            )
            .map_err(errno("chown", path))?;
        }
        // After chown (which may clear set-id bits), and exactly: the umask does not apply.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(errno("chmod", path))
    }
}

/// What a `stat` tells the stores.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub file_type: FileType,
    pub mtime: SystemTime,
    /// Size in octets (`st_size`; a sparse file's apparent size).
    pub size: u64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        let secs = u64::try_from(st.st_mtime).unwrap_or(0);
        Meta {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            file_type: FileType::from_raw_mode(st.st_mode as _),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .unwrap_or(UNIX_EPOCH),
        }
    }

    /// Device and inode: which file this is.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn is_file(&self) -> bool {
        self.file_type == FileType::RegularFile
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Directory
    }
}

/// `fstat` of an open file.
pub(crate) fn fstat(fd: impl AsFd, path: &Path) -> Result<Meta> {
    rustix::fs::fstat(fd)
        .map(|st| Meta::from_stat(&st))
        .map_err(errno("stat", path))
}

/// Wraps an errno with the operation and the path.
pub(crate) fn errno<'a>(
    op: &'static str,
    path: impl Into<PathBuf> + 'a,
) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| Error::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}

/// What [`Dir::try_open_node`] found.
#[derive(Debug)]
pub(crate) enum Node {
    /// A directory.
    Dir(Dir),
    /// A regular file (opened read-only) and its `fstat`.
    File(File, Meta),
}

/// An open directory and the path it was reached by (for error messages and logs only: no
/// operation uses the path).
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

impl Dir {
    /// Opens a directory by its path, following symbolic links: only for a store's configured
    /// root. Creates it (and its parents) first if it is missing, and then fsyncs the parent
    /// of each directory it made, so the names leading to the store are as durable as what
    /// is stored in it. A root that exists already has its parent fsynced too, where that
    /// parent can be opened: an earlier run may have made it and stopped before its fsync.
    pub fn create_root(path: &Path) -> Result<Dir> {
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
            .collect();
        std::fs::create_dir_all(path).map_err(crate::error::io_err("mkdir", path))?;
        if missing.is_empty() {
            // Where the parent can be opened: the operator may give the daemon a root whose
            // parent it cannot read (and then that name is most likely durable long since).
            match sync_path(parent_of(path)) {
                Err(Error::Io {
                    op: "open", source, ..
                }) if source.kind() == io::ErrorKind::PermissionDenied => {}
                r => r?,
            }
        }
        for made in missing.iter().rev() {
            sync_path(parent_of(made))?;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(errno("open", path))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the subdirectory `name`; a symbolic link or a non-directory there is
    /// [`Error::UnsafePath`].
    pub fn open_dir(&self, name: &str) -> Result<Dir> {
        match self.try_open_dir(name)? {
            Some(d) => Ok(d),
            None => Err(Error::Io {
                op: "open",
                path: self.join(name),
                source: io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// As [`open_dir`](Self::open_dir), `None` if there is nothing by that name.
    pub fn try_open_dir(&self, name: &str) -> Result<Option<Dir>> {
        match rustix::fs::openat(self, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: self.join(name),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err(unsafe_path(self.join(name), "is a symbolic link")),
            Err(Errno::NOTDIR) => Err(unsafe_path(self.join(name), "is not a directory")),
            Err(e) => Err(errno("open", self.join(name))(e)),
        }
    }

    /// Whether the subdirectory `name` exists, by one `stat` (nothing opened, no link
    /// followed): `false` if there is nothing by that name; a symbolic link or a non-directory
    /// there is [`Error::UnsafePath`], as for [`try_open_dir`](Self::try_open_dir).
    pub fn has_dir(&self, name: &str) -> Result<bool> {
        match self.stat(name)? {
            None => Ok(false),
            Some(m) if m.is_dir() => Ok(true),
            Some(m) if m.file_type == FileType::Symlink => {
                Err(unsafe_path(self.join(name), "is a symbolic link"))
            }
            Some(_) => Err(unsafe_path(self.join(name), "is not a directory")),
        }
    }

    /// Opens `name`, a directory or a regular file (for the queue, whose entries are one or
    /// the other); `None` if it does not exist. A symbolic link or anything else is
    /// [`Error::UnsafePath`].
    pub fn try_open_node(&self, name: &str) -> Result<Option<Node>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(self, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(unsafe_path(self.join(name), "is a symbolic link")),
            Err(e) => return Err(errno("open", self.join(name))(e)),
        };
        let meta = fstat(&fd, &self.join(name))?;
        if meta.is_dir() {
            Ok(Some(Node::Dir(Dir {
                fd,
                path: self.join(name),
            })))
        } else if meta.is_file() {
            Ok(Some(Node::File(File::from(fd), meta)))
        } else {
            Err(unsafe_path(
                self.join(name),
                "is not a directory or a regular file",
            ))
        }
    }

    /// Creates the subdirectory `name` with `perms` if it is missing, and opens it. Returns
    /// whether it was created (then the caller fsyncs `self`). An existing directory is used as
    /// it is (its mode and owner are the operator's). It is opened first, so the usual case
    /// (it exists) costs one system call; `mkdir` only when it is missing.
    pub fn ensure_dir(&self, name: &str, perms: &Perms) -> Result<(Dir, bool)> {
        if let Some(dir) = self.try_open_dir(name)? {
            return Ok((dir, false));
        }
        match rustix::fs::mkdirat(self, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let dir = self.open_dir(name)?;
                perms.apply(dir.as_fd(), perms.dir_mode, &dir.path)?;
                Ok((dir, true))
            }
            Err(Errno::EXIST) => Ok((self.open_dir(name)?, false)),
            Err(e) => Err(errno("mkdir", self.join(name))(e)),
        }
    }

    /// Creates the new file `name` (never an existing one, never through a link), readable and
    /// writable, with the file mode and ownership of `perms`.
    pub fn create(&self, name: &str, perms: &Perms) -> Result<File> {
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self, name, flags, Mode::from_raw_mode(0o600))
            .map_err(errno("create", self.join(name)))?;
        perms.apply(fd.as_fd(), perms.file_mode, &self.join(name))?;
        Ok(File::from(fd))
    }

    /// Creates a file in this directory that has no name (`O_TMPFILE`), readable and writable,
    /// with the file mode and ownership of `perms`; `None` where the file system cannot (the
    /// caller then makes a named one). It disappears with its last descriptor unless
    /// [`link_file`] gives it a name. No directory entry is made or removed, so writers in one
    /// directory do not queue for its lock, and a crashed writer leaves nothing to clean up.
    pub fn create_unnamed(&self, perms: &Perms) -> Result<Option<File>> {
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(self, ".", flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => return Ok(None),
            Err(e) => return Err(errno("create", self.path.clone())(e)),
        };
        perms.apply(fd.as_fd(), perms.file_mode, &self.path)?;
        Ok(Some(File::from(fd)))
    }

    /// Opens the existing regular file `name` for reading; `None` if it does not exist. A
    /// symbolic link or anything but a regular file is [`Error::UnsafePath`].
    pub fn try_open_file(&self, name: &str) -> Result<Option<File>> {
        // O_NONBLOCK: a FIFO planted in a mailbox must not block the reader.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(self, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(unsafe_path(self.join(name), "is a symbolic link")),
            Err(e) => return Err(errno("open", self.join(name))(e)),
        };
        if !fstat(&fd, &self.join(name))?.is_file() {
            return Err(unsafe_path(self.join(name), "is not a regular file"));
        }
        Ok(Some(File::from(fd)))
    }

    /// As [`try_open_file`](Self::try_open_file), but a missing file is an `Io` error
    /// (`NotFound`).
    pub fn open_file(&self, name: &str) -> Result<File> {
        self.try_open_file(name)?.ok_or_else(|| Error::Io {
            op: "open",
            path: self.join(name),
            source: io::ErrorKind::NotFound.into(),
        })
    }

    /// Reads the regular file `name`, at most `max` octets of it; `None` if it does not exist.
    ///
    /// Every file a store reads back lives where someone else may write (a mailbox's user
    /// with group write access can plant a huge or sparse `.mh_sequences`, or a hard link to
    /// any file the daemon can read), so no read is unbounded: a file whose size (`fstat`) is
    /// over `max`, or that yields more than `max` octets (it grew while read), is
    /// [`Error::Corrupt`] naming the path and the size, and nothing of it is kept. At most
    /// `max + 1` octets are ever read, and the buffer never grows past that.
    pub fn try_read_bounded(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.try_open_file(name)? else {
            return Ok(None);
        };
        let path = self.join(name);
        let size = fstat(&f, &path)?.size;
        if size > max {
            return Err(too_large(path, Some(size), max));
        }
        // `size` is at most `max` here; the file may still grow, hence `take`.
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        f.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(crate::error::io_err("read", path.clone()))?;
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
            return Err(too_large(path, None, max));
        }
        Ok(Some(buf))
    }

    /// `lstat` of an entry (links not followed); `None` if it does not exist.
    pub fn stat(&self, name: &str) -> Result<Option<Meta>> {
        match rustix::fs::statat(self, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno("stat", self.join(name))(e)),
        }
    }

    /// `stat` of this directory itself.
    pub fn meta(&self) -> Result<Meta> {
        fstat(self, &self.path)
    }

    /// Hard-links `name` here as `to_name` in `to` (a link at `name` itself is linked, not
    /// followed). The raw error is returned: callers decide which errors mean "copy instead".
    pub fn link(&self, name: &str, to: &Dir, to_name: &str) -> std::result::Result<(), Errno> {
        rustix::fs::linkat(self, name, to, to_name, AtFlags::empty())
    }

    /// Renames `name` here to `to_name` in `to`, replacing what is there.
    pub fn rename(&self, name: &str, to: &Dir, to_name: &str) -> Result<()> {
        rustix::fs::renameat(self, name, to, to_name).map_err(errno("rename", to.join(to_name)))
    }

    /// Removes the file (or link) `name`; `false` if there was none.
    pub fn remove_file(&self, name: &str) -> Result<bool> {
        match rustix::fs::unlinkat(self, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(errno("unlink", self.join(name))(e)),
        }
    }

    /// Removes `name` and, if it is a directory, everything in it, without following any link.
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(m) if m.is_dir() => {
                if let Some(sub) = self.try_open_dir(name)? {
                    for entry in sub.names()? {
                        if let Some(entry) = entry.to_str() {
                            sub.remove_tree(entry)?;
                        }
                    }
                }
                match rustix::fs::unlinkat(self, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(errno("rmdir", self.join(name))(e)),
                }
            }
            Some(_) => self.remove_file(name).map(drop),
        }
    }

    /// fsync the directory, so the names created, renamed or removed in it are durable.
    pub fn sync(&self) -> Result<()> {
        #[cfg(test)]
        if tests::record_sync(&self.path) {
            return Err(errno("fsync", &self.path)(Errno::IO));
        }
        rustix::fs::fsync(self).map_err(errno("fsync", &self.path))
    }

    /// The names in the directory, without `.` and `..`.
    pub fn names(&self) -> Result<Vec<OsString>> {
        let mut dir = rustix::fs::Dir::read_from(self).map_err(errno("readdir", &self.path))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(errno("readdir", &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(out)
    }

    /// Writes `bytes` to `name` atomically: a new `.tmp.*` file in this directory, written,
    /// fsynced, renamed over `name`. The caller fsyncs the directory to make the rename durable.
    pub fn replace(&self, name: &str, bytes: &[u8], perms: &Perms) -> Result<()> {
        self.replace_with(name, bytes, perms, true)
    }

    /// As [`Dir::replace`] without the fsync of the new file: for files whose last change
    /// may be lost in a power failure (the rename is still atomic).
    pub fn replace_unsynced(&self, name: &str, bytes: &[u8], perms: &Perms) -> Result<()> {
        self.replace_with(name, bytes, perms, false)
    }

    /// As [`Dir::replace_unsynced`], without making or freeing an inode: `bytes` are written
    /// into `spare` (a file this directory keeps for the purpose), which is then exchanged
    /// with `name` in one `renameat2(RENAME_EXCHANGE)`, so `spare` holds the previous content
    /// and is written again next time. A reader that opens `name` sees the old content or the
    /// new; one that still reads the previous file when the next call writes it (it is the
    /// spare then) can see that change, and after a power failure the file can hold an
    /// earlier version, possibly cut short (the write is in place and not fsynced, and the
    /// flush ext4 does for a rename over a file does not apply to an exchange): only for files
    /// that are not a record of anything. For a file replaced on every delivery: a new inode
    /// per replacement costs the file system an allocation and a free each time (on ext4
    /// without a journal, every later allocation in the group scans past the inodes freed in
    /// the last minutes).
    ///
    /// `spare` is only written when the descriptor opened (`O_NOFOLLOW`, `O_NONBLOCK`) is a
    /// regular file with a single link and the owner and mode `perms` give: a file planted
    /// there (a hard link to another file, someone else's file) is removed and a new one made,
    /// never written through. Where the file system cannot exchange names, the spare is removed
    /// and this is [`Dir::replace_unsynced`].
    pub fn replace_reusing(
        &self,
        name: &str,
        spare: &str,
        bytes: &[u8],
        perms: &Perms,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Set once a file system refused the exchange: the spare is not made again.
        static NO_EXCHANGE: AtomicBool = AtomicBool::new(false);
        if NO_EXCHANGE.load(Ordering::Relaxed) {
            return self.replace_unsynced(name, bytes, perms);
        }
        let file = match self.open_spare(spare, perms)? {
            Some(f) => f,
            None => self.create(spare, perms)?,
        };
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        file.write_all_at(bytes, 0)
            .and_then(|()| file.set_len(len))
            .map_err(crate::error::io_err("write", self.join(spare)))?;
        drop(file);
        match rustix::fs::renameat_with(self, spare, self, name, rustix::fs::RenameFlags::EXCHANGE)
        {
            Ok(()) => Ok(()),
            // No `name` yet: the spare becomes it.
            Err(Errno::NOENT) => self.rename(spare, self, name),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                NO_EXCHANGE.store(true, Ordering::Relaxed);
                let _ = self.remove_file(spare);
                self.replace_unsynced(name, bytes, perms)
            }
            Err(e) => Err(errno("rename", self.join(name))(e)),
        }
    }

    /// The spare of [`Dir::replace_reusing`] opened for writing, if it is safe to write
    /// through: else it is removed and `None` returned.
    fn open_spare(&self, spare: &str, perms: &Perms) -> Result<Option<File>> {
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(self, spare, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::ISDIR) => return Err(unsafe_path(self.join(spare), "is a directory")),
            // Planted: a symbolic link (ELOOP), a socket (ENXIO), a file we may not write.
            Err(Errno::LOOP | Errno::NXIO | Errno::ACCESS | Errno::PERM | Errno::TXTBSY) => {
                self.remove_file(spare)?;
                return Ok(None);
            }
            Err(e) => return Err(errno("open", self.join(spare))(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(errno("stat", self.join(spare)))?;
        let owner = perms
            .owner
            .unwrap_or_else(|| rustix::process::geteuid().as_raw());
        let safe = FileType::from_raw_mode(st.st_mode as _) == FileType::RegularFile
            && st.st_nlink == 1
            && st.st_uid == owner
            && perms.group.is_none_or(|g| st.st_gid == g)
            && (st.st_mode as u32) & 0o7777 == perms.file_mode;
        if safe {
            return Ok(Some(File::from(fd)));
        }
        drop(fd);
        self.remove_file(spare)?;
        Ok(None)
    }

    fn replace_with(&self, name: &str, bytes: &[u8], perms: &Perms, sync: bool) -> Result<()> {
        let tmp = format!(".tmp.{}", unique()?);
        let result = (|| {
            let mut f = self.create(&tmp, perms)?;
            f.write_all(bytes)
                .map_err(crate::error::io_err("write", self.join(&tmp)))?;
            if sync {
                f.sync_all()
                    .map_err(crate::error::io_err("fsync", self.join(&tmp)))?;
            }
            self.rename(&tmp, self, name)
        })();
        if result.is_err() {
            let _ = self.remove_file(&tmp);
        }
        result
    }

    /// Takes an exclusive `flock` on this descriptor, blocking until it is free. Released by
    /// [`unlock`](Self::unlock) or when the descriptor is closed.
    pub fn lock(&self) -> Result<()> {
        rustix::fs::flock(self, FlockOperation::LockExclusive).map_err(errno("flock", &self.path))
    }

    /// Releases the lock taken by [`lock`](Self::lock).
    pub fn unlock(&self) {
        let _ = rustix::fs::flock(self, FlockOperation::Unlock);
    }
}

/// The [`Error::Corrupt`] for a file over its size limit: the path and the sizes, never a
/// byte of the content.
/// `size` is the size `fstat` gave, `None` for a file that grew past `max` while read.
fn too_large(path: PathBuf, size: Option<u64>, max: u64) -> Error {
    let reason = match size {
        Some(size) => format!("is {size} octets, over the limit of {max} for this file; not read"),
        None => format!("grew past the limit of {max} octets for this file while read; not read"),
    };
    Error::Corrupt { path, reason }
}

/// Gives the open file `file` the name `name` in `to` (which must not exist): `linkat` of the
/// descriptor itself (`AT_EMPTY_PATH`, which needs `CAP_DAC_READ_SEARCH`), else of
/// `/proc/self/fd/N`, which the kernel resolves to the same open file. Either way the new name
/// is the descriptor's inode, never something a path could be swapped for.
pub(crate) fn link_file(file: &File, to: &Dir, name: &str) -> std::result::Result<(), Errno> {
    match rustix::fs::linkat(file, "", to, name, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => {
            use std::os::fd::AsRawFd;
            let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(CWD, proc.as_str(), to, name, AtFlags::SYMLINK_FOLLOW)
        }
        r => r,
    }
}

/// The directory holding `path` (`.` for a relative name of one component).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs the directory at `path` (opened by path: only the parents of a store's root).
fn sync_path(path: &Path) -> Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(CWD, path, flags, Mode::empty()).map_err(errno("open", path))?;
    Dir {
        fd,
        path: path.to_path_buf(),
    }
    .sync()
}

/// An [`Error::UnsafePath`].
pub(crate) fn unsafe_path(path: PathBuf, reason: &'static str) -> Error {
    Error::UnsafePath { path, reason }
}

/// Group commit for one directory: names made in it by several threads at once share one
/// fsync. A change is counted ([`GroupSync::changed`]) after it is made; [`GroupSync::sync`]
/// then fsyncs the directory unless an fsync that began after that change has completed, and
/// while one fsync runs the others wait for it (and then usually find themselves covered).
///
/// A failed fsync fails every change it was to cover, then and later: Linux reports a
/// write-back error once per open file, so a second fsync of the same descriptor could
/// succeed without the failed changes being durable.
///
/// A group made by [`GroupSyncs::of`] also remembers whether the directory's own name is
/// known durable in its parent: see [`GroupSync::sync_name`].
#[derive(Debug, Default)]
pub(crate) struct GroupSync {
    /// Changes made so far.
    changed: std::sync::atomic::AtomicU64,
    state: std::sync::Mutex<SyncState>,
    /// A descriptor of the directory, held while the group is remembered, so that no other
    /// directory can get its inode number meanwhile: what the group remembers of its name
    /// is its own. Only groups made by [`GroupSyncs::of`] have one.
    anchor: Option<Dir>,
    /// The parent's ticket for this directory's name, counted once.
    name_ticket: std::sync::OnceLock<u64>,
    /// This directory's name is durable in its parent: a [`GroupSync::sync_name`] completed.
    named: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct SyncState {
    /// How many changes a completed fsync covers.
    synced: u64,
    /// The changes each failed fsync was to cover (first, last), and its error.
    failed: Vec<(u64, u64, Error)>,
}

/// At most this many failed ranges are told apart; beyond, the two oldest are merged (which
/// fails the changes between them too: a message sent again, never one lost).
const FAILED_RANGES: usize = 16;

impl GroupSync {
    /// Counts a change just made in the directory; returns its ticket for [`GroupSync::sync`].
    pub fn changed(&self) -> u64 {
        self.changed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .saturating_add(1)
    }

    /// Makes the name of this group's directory durable in `parent` (whose group commit is
    /// `parent_group`) before anything placed in the directory is acknowledged.
    ///
    /// A directory another thread or process made may have been found before its maker's
    /// fsync of the parent completed (on a file system without a journal nothing else orders
    /// the two), so the first delivery that finds it (or makes it) also makes its name
    /// durable: it counts the name as a change of the parent it has seen and syncs the parent
    /// to it, sharing the fsync with every other such delivery and free when an fsync that
    /// began after it has completed. Once that is done, deliveries that find the directory
    /// pay an atomic load. The name is counted once: if the fsync that was to cover it fails,
    /// every later delivery into the directory fails with that error (a later fsync that
    /// succeeds does not write again what the failed one lost), also after the group is
    /// forgotten (see [`GroupSyncs`]). A group that holds no descriptor of its directory
    /// remembers nothing: every call syncs the parent.
    pub fn sync_name(&self, parent: &Dir, parent_group: &GroupSync) -> Result<()> {
        if self.anchor.is_none() {
            return parent_group.sync(parent, parent_group.changed());
        }
        if self.is_named() {
            return Ok(());
        }
        let ticket = *self.name_ticket.get_or_init(|| parent_group.changed());
        parent_group.sync(parent, ticket)?;
        self.named.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether this directory's name is known durable (a [`GroupSync::sync_name`] completed).
    pub fn is_named(&self) -> bool {
        self.named.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether an fsync of this directory, or of its name, failed (or may have: one running
    /// now counts; its lock is not waited for).
    fn has_failed(&self) -> bool {
        let own = match self.state.try_lock() {
            Ok(state) => !state.failed.is_empty(),
            Err(std::sync::TryLockError::Poisoned(p)) => !p.into_inner().failed.is_empty(),
            Err(std::sync::TryLockError::WouldBlock) => true,
        };
        own || (self.name_ticket.get().is_some() && !self.is_named())
    }

    /// Makes change `ticket` durable: fsyncs `dir` (a descriptor of this directory) unless an
    /// fsync that covers it has completed.
    pub fn sync(&self, dir: &Dir, ticket: u64) -> Result<()> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, error)) = state
            .failed
            .iter()
            .find(|(f, l, _)| (*f..=*l).contains(&ticket))
        {
            return Err(error.copy());
        }
        if state.synced >= ticket {
            return Ok(());
        }
        // Every change counted before the fsync starts is covered by it.
        let upto = self.changed.load(std::sync::atomic::Ordering::SeqCst);
        match dir.sync() {
            Ok(()) => {
                state.synced = upto;
                Ok(())
            }
            Err(e) => {
                let first = state.synced.saturating_add(1);
                state.failed.push((first, upto, e.copy()));
                if state.failed.len() > FAILED_RANGES {
                    let (f, _, _) = state.failed.remove(0);
                    state.failed[0].0 = f;
                }
                // Later fsyncs start from here: what they cover is counted after the failure.
                state.synced = upto;
                Err(e)
            }
        }
    }
}

/// The [`GroupSync`] of each directory a store delivers into, by device and inode. Each
/// remembered group holds a descriptor of its directory, so the inode number cannot go to
/// another directory meanwhile (a mailbox removed and made again gets another number, and
/// its own group), even on file systems that reuse inode numbers at once, as ext4 does.
///
/// Above [`kept_open`] directories, the groups no delivery is using are forgotten and
/// their descriptors closed; of one whose fsync (or its name's) failed, the device and inode
/// are kept, and every later delivery into a directory with them fails (a directory made
/// later that got the same inode number too: a message refused, never one lost).
#[derive(Debug)]
pub(crate) struct GroupSyncs {
    groups: std::sync::Mutex<Groups>,
    /// How many unused groups are kept ([`kept_open`] when the store was opened).
    kept: usize,
}

impl Default for GroupSyncs {
    fn default() -> Self {
        GroupSyncs {
            groups: std::sync::Mutex::default(),
            kept: kept_open(),
        }
    }
}

#[derive(Debug, Default)]
struct Groups {
    live: std::collections::HashMap<(u64, u64), std::sync::Arc<GroupSync>>,
    /// Forgotten directories whose fsync failed: the error to report.
    failed: std::collections::HashMap<(u64, u64), Error>,
}

/// How many directories' groups (each with a descriptor) a store opened now keeps when no
/// delivery uses them: an eighth of the process's soft limit on open files, between 64 and
/// 4096 (4096 under the systemd unit's `LimitNOFILE=65536`; 128 under the usual 1024).
pub(crate) fn kept_open() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let limit = limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    (limit / 8).clamp(64, 4096)
}

impl GroupSyncs {
    /// fsyncs `dir` now, through its group commit (which shares the fsync and remembers a
    /// failure).
    pub fn sync_now(&self, dir: &Dir) -> Result<()> {
        let group = self.of(dir)?;
        group.sync(dir, group.changed())
    }

    /// The group commit of `dir`.
    pub fn of(&self, dir: &Dir) -> Result<std::sync::Arc<GroupSync>> {
        let id = dir.meta()?.id();
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(group) = groups.live.get(&id) {
            return Ok(group.clone());
        }
        if let Some(error) = groups.failed.get(&id) {
            return Err(error.copy());
        }
        if groups.live.len() >= self.kept {
            let Groups { live, failed } = &mut *groups;
            live.retain(|id, g| {
                if std::sync::Arc::strong_count(g) > 1 {
                    return true;
                }
                if g.has_failed() {
                    let path = g
                        .anchor
                        .as_ref()
                        .map(|d| d.path.clone())
                        .unwrap_or_default();
                    let reason = "an earlier fsync of this directory or of its name failed \
                                  (check the disk, then restart)";
                    failed.insert(
                        *id,
                        Error::Io {
                            op: "fsync",
                            path,
                            source: io::Error::other(reason),
                        },
                    );
                }
                false
            });
        }
        let anchor = dir
            .fd
            .try_clone()
            .map_err(crate::error::io_err("dup", dir.path()))?;
        let group = GroupSync {
            anchor: Some(Dir {
                fd: anchor,
                path: dir.path.clone(),
            }),
            ..GroupSync::default()
        };
        let group = std::sync::Arc::new(group);
        groups.live.insert(id, group.clone());
        Ok(group)
    }
}

/// Syncs each directory of `to_sync` once, sharing the fsync with concurrent deliveries into
/// the same directory (each entry: the mailbox, the directory, its group commit and the
/// highest ticket of this call's changes there), and fails every delivery into a mailbox
/// whose fsync failed: its message is not durable, so it must not be acknowledged.
pub(crate) fn sync_shared<T, D: std::borrow::Borrow<Dir>>(
    mailboxes: &[crate::MailboxName],
    results: &mut [Result<T>],
    to_sync: Vec<(&crate::MailboxName, D, std::sync::Arc<GroupSync>, u64)>,
) {
    for (mailbox, dir, group, ticket) in to_sync {
        if let Err(e) = group.sync(dir.borrow(), ticket) {
            for (m, r) in mailboxes.iter().zip(results.iter_mut()) {
                if m == mailbox && r.is_ok() {
                    *r = Err(e.copy());
                }
            }
        }
    }
}

/// Adds a delivery into `mailbox` (placed in `dir`, whose group commit is `group`, as change
/// `ticket`) to what [`sync_shared`] syncs: one entry per mailbox and directory, with the
/// highest ticket (a mailbox named twice whose directory was replaced in between has one
/// entry per directory).
pub(crate) fn add_to_sync<'m, D>(
    to_sync: &mut Vec<(&'m crate::MailboxName, D, std::sync::Arc<GroupSync>, u64)>,
    mailbox: &'m crate::MailboxName,
    dir: D,
    group: std::sync::Arc<GroupSync>,
    ticket: u64,
) {
    let same = |(m, _, g, _): &&mut (&crate::MailboxName, D, std::sync::Arc<GroupSync>, u64)| {
        *m == mailbox && std::sync::Arc::ptr_eq(g, &group)
    };
    match to_sync.iter_mut().find(same) {
        Some(entry) => entry.3 = entry.3.max(ticket),
        None => to_sync.push((mailbox, dir, group, ticket)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every directory fsynced by this process's tests, in order.
    static SYNCED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    /// Directories whose fsync fails (`EIO`) while they are listed.
    static FAILING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

    /// A function run at each fsync of a directory, before it, and that directory.
    type Hook = (PathBuf, fn(&Path));

    /// The hooks set by [`on_sync_of`].
    static HOOKS: std::sync::Mutex<Vec<Hook>> = std::sync::Mutex::new(Vec::new());

    /// Records an fsync of `path`; whether it is to fail.
    pub(crate) fn record_sync(path: &Path) -> bool {
        SYNCED.lock().unwrap().push(path.to_path_buf());
        let hooks: Vec<fn(&Path)> = HOOKS
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, f)| *f)
            .collect();
        for f in hooks {
            f(path);
        }
        FAILING.lock().unwrap().iter().any(|p| p == path)
    }

    /// Runs `f` (given the directory) at each fsync of the directory `path` from now on.
    pub(crate) fn on_sync_of(path: &Path, f: fn(&Path)) {
        HOOKS.lock().unwrap().push((path.to_path_buf(), f));
    }

    /// How many times the directory `path` was fsynced so far (tests run in parallel: each
    /// asks only about paths of its own).
    pub(crate) fn syncs_of(path: &Path) -> usize {
        SYNCED.lock().unwrap().iter().filter(|p| *p == path).count()
    }

    /// Makes the fsyncs of `path` fail (`true`) or work again.
    pub(crate) fn fail_syncs_of(path: &Path, fail: bool) {
        let mut failing = FAILING.lock().unwrap();
        failing.retain(|p| p != path);
        if fail {
            failing.push(path.to_path_buf());
        }
    }

    #[test]
    fn a_new_root_is_named_durably() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a").join("b");
        Dir::create_root(&deep).unwrap();
        assert_eq!(syncs_of(tmp.path()), 1);
        assert_eq!(syncs_of(&tmp.path().join("a")), 1);
        // Found: only the root's own parent, in case an earlier run did not get that far.
        Dir::create_root(&deep).unwrap();
        assert_eq!(syncs_of(tmp.path()), 1);
        assert_eq!(syncs_of(&tmp.path().join("a")), 2);
    }

    #[test]
    fn a_found_directory_is_named_durably_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Dir::create_root(tmp.path()).unwrap();
        let root_group = GroupSync::default();
        let (maker, finder) = (GroupSyncs::default(), GroupSyncs::default());
        let (child, created) = root.ensure_dir("c", &Perms::PRIVATE).unwrap();
        assert!(created);
        let before = syncs_of(tmp.path());
        maker
            .of(&child)
            .unwrap()
            .sync_name(&root, &root_group)
            .unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 1);
        maker
            .of(&child)
            .unwrap()
            .sync_name(&root, &root_group)
            .unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 1, "known durable");
        // Another process's view (its own groups): found, synced once.
        let (found, created) = root.ensure_dir("c", &Perms::PRIVATE).unwrap();
        assert!(!created);
        let other_root = GroupSync::default();
        finder
            .of(&found)
            .unwrap()
            .sync_name(&root, &other_root)
            .unwrap();
        finder
            .of(&found)
            .unwrap()
            .sync_name(&root, &other_root)
            .unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 2);
        // Removed and made again (ext4 often gives it the same inode number): another
        // directory, whose name is synced again.
        drop((child, found));
        std::fs::remove_dir(tmp.path().join("c")).unwrap();
        let (again, created) = root.ensure_dir("c", &Perms::PRIVATE).unwrap();
        assert!(created);
        maker
            .of(&again)
            .unwrap()
            .sync_name(&root, &root_group)
            .unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 3);
    }

    #[test]
    fn a_name_whose_fsync_failed_stays_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Dir::create_root(tmp.path()).unwrap();
        let (root_group, syncs) = (GroupSync::default(), GroupSyncs::default());
        let (child, _) = root.ensure_dir("c", &Perms::PRIVATE).unwrap();
        fail_syncs_of(tmp.path(), true);
        let err = syncs.of(&child).unwrap().sync_name(&root, &root_group);
        fail_syncs_of(tmp.path(), false);
        assert!(err.unwrap_err().to_string().contains("fsync"));
        // The next fsync of the root would succeed, but it would not write again what the
        // failed one lost: the name stays failed, also for a later lookup of its group.
        let before = syncs_of(tmp.path());
        assert!(syncs
            .of(&child)
            .unwrap()
            .sync_name(&root, &root_group)
            .is_err());
        assert_eq!(syncs_of(tmp.path()), before, "no second fsync to trust");
        // A directory made after the failure is counted after it: synced, and fine.
        let (other, _) = root.ensure_dir("d", &Perms::PRIVATE).unwrap();
        syncs
            .of(&other)
            .unwrap()
            .sync_name(&root, &root_group)
            .unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 1);
        // Many more directories, so that unused groups are forgotten: the failed name is
        // still refused, the healthy one is synced again and fine.
        for i in 0..syncs.kept + 8 {
            let (d, _) = root.ensure_dir(&format!("x{i}"), &Perms::PRIVATE).unwrap();
            syncs.of(&d).unwrap();
        }
        let err = syncs.of(&child).unwrap_err().to_string();
        assert!(err.contains("an earlier fsync"), "{err}");
        let again = syncs.of(&other).unwrap();
        again.sync_name(&root, &root_group).unwrap();
        assert_eq!(syncs_of(tmp.path()), before + 2);
    }

    #[test]
    fn failed_ranges_fail_only_their_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::create_root(tmp.path()).unwrap();
        let group = GroupSync::default();
        let t1 = group.changed();
        fail_syncs_of(tmp.path(), true);
        assert!(group.sync(&dir, t1).is_err());
        fail_syncs_of(tmp.path(), false);
        let t2 = group.changed();
        group.sync(&dir, t2).unwrap();
        let t3 = group.changed();
        fail_syncs_of(tmp.path(), true);
        assert!(group.sync(&dir, t3).is_err());
        fail_syncs_of(tmp.path(), false);
        // The change between the two failures was made durable and stays so.
        assert!(group.sync(&dir, t1).is_err());
        group.sync(&dir, t2).unwrap();
        assert!(group.sync(&dir, t3).is_err());
        let t4 = group.changed();
        group.sync(&dir, t4).unwrap();
    }

    #[test]
    fn refuses_links_and_creates_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), tmp.path().join("flink")).unwrap();
        std::fs::write(outside.path().join("f"), b"secret").unwrap();
        let root = Dir::create_root(tmp.path()).unwrap();
        let err = root.open_dir("link").unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&*tmp.path().join("link").to_string_lossy()));
        assert!(matches!(
            root.ensure_dir("link", &Perms::PRIVATE),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            root.try_open_file("flink"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(root.create("flink", &Perms::PRIVATE).is_err());
        root.replace("flink", b"mine", &Perms::PRIVATE).unwrap();
        assert_eq!(std::fs::read(outside.path().join("f")).unwrap(), b"secret");
        assert_eq!(std::fs::read(tmp.path().join("flink")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn bounded_read_checks_size_before_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Dir::create_root(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("exact"), b"12345").unwrap();
        assert_eq!(
            root.try_read_bounded("exact", 5).unwrap().unwrap(),
            b"12345"
        );
        assert_eq!(root.try_read_bounded("missing", 5).unwrap(), None);
        let err = root.try_read_bounded("exact", 4).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&*tmp.path().join("exact").to_string_lossy()));
        assert!(
            text.contains("is 5 octets") && text.contains("limit of 4"),
            "{text}"
        );
        assert!(!text.contains("12345"), "{text}");
        // A sparse file of 1 TiB: refused by its size, nothing read.
        let f = std::fs::File::create(tmp.path().join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        let err = root.try_read_bounded("sparse", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("is 1099511627776 octets"), "{err}");
    }
}
