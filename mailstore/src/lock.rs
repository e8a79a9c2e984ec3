//! Locking a mailbox directory.
//!
//! Deliveries into one mailbox, from the daemon's threads and from other processes (a second
//! daemon, a local delivery agent), are serialised by an exclusive `flock(2)` on the mailbox
//! directory itself, taken with [`fd_lock`]. Each locker opens the directory anew, so each holds
//! its own open file description, and `flock` excludes every other description: other threads of
//! the same process as well as other processes. The kernel drops the lock when the descriptor is
//! closed, also when the process dies, so a crash never leaves a mailbox locked.
//!
//! The original brief asked for `lockf(3)` on the directory. That cannot work:
//!
//! * `lockf` is a POSIX record lock (`fcntl(F_SETLK)` with `F_WRLCK`), and a write lock needs a
//!   descriptor open for writing. A directory can only be opened read-only (`open` with
//!   `O_WRONLY` or `O_RDWR` on a directory fails with `EISDIR`), so `lockf(fd, F_LOCK, 0)` on it
//!   fails with `EBADF`. One could lock a separate lock file instead, but then:
//! * POSIX record locks belong to the *process*, not to the descriptor: a second thread of the
//!   daemon asking for the same lock is granted it at once (the process already holds it), so
//!   they would not serialise the daemon's own concurrent deliveries at all. Worse, closing *any*
//!   descriptor of that file in the process drops the lock. `flock` has neither problem.
//!
//! `flock` is advisory, like every Unix file lock: it only excludes programs that take it too.
//! Programs that write into a spool directory without this crate must lock the directory the
//! same way (`flock(dirfd, LOCK_EX)`). Over NFS, Linux emulates `flock` with POSIX locks, so
//! keep spools on a local file system.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{io_err, Error};

/// Runs `f` while holding an exclusive `flock` on the directory `dir`.
///
/// This is for programs outside the stores (which lock a mailbox through its descriptor,
/// opened without following links): `dir` is opened by path, following symbolic links.
///
/// Blocks until the lock is free. Readers do not need the lock: every change under it is a
/// sequence of atomic renames and links, so a reader never sees a partial state. Take it to see a
/// mailbox that does not change while you look.
///
/// # Errors
/// [`Error::Io`] if the directory cannot be opened or locked; otherwise whatever `f` returns.
pub fn with_locked_dir<T, E: From<Error>>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let file = File::open(dir).map_err(io_err("open", dir))?;
    let mut lock = fd_lock::RwLock::new(file);
    let guard = lock.write().map_err(io_err("flock", dir))?;
    let out = f();
    drop(guard);
    out
}

/// Tries to take an exclusive `flock` on an open file without blocking. `Ok(false)` if someone
/// else holds it. The lock lasts until `file` (and every descriptor duplicated from it) is
/// closed. Used for queue claims and staging files, whose locks live as long as a value does.
pub(crate) fn try_lock(file: impl std::os::fd::AsFd) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The claim in the module docs: two threads of one process exclude each other.
    #[test]
    fn excludes_threads_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (dir, inside, max_seen) =
                    (dir.path().to_owned(), inside.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        with_locked_dir::<_, Error>(&dir, || {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn try_lock_is_exclusive_per_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = File::open(dir.path()).unwrap();
        let b = File::open(dir.path()).unwrap();
        assert!(try_lock(&a).unwrap());
        assert!(!try_lock(&b).unwrap());
        drop(a);
        assert!(try_lock(&b).unwrap());
    }

    /// The EBADF claim: a directory cannot be opened for writing, which a POSIX write lock needs.
    #[test]
    fn directory_cannot_be_opened_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path())
            .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::ISDIR.raw_os_error())
        );
    }
}
