//! Files planted in a mailbox by its user (huge, sparse, or hard links to files only the
//! daemon may read) cannot exhaust the daemon's memory, and their content never reaches an
//! error message (which the daemon logs).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use mailstore::queue::{Envelope, Queue, QueueEntry, ENVELOPE_MAX};
use mailstore::spool::{Spool, SEQUENCES_MAX};
use mailstore::{Error, MailboxName, Store};

const SECRET: &str = "root:$6$s3cr3tHASHs3cr3t:19000:0:99999:7:::";

fn alice() -> MailboxName {
    MailboxName::new("alice").unwrap()
}

/// A sparse file of `len` octets at `path` (no disk space, no time).
fn sparse(path: &Path, len: u64) {
    let _ = fs::remove_file(path);
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The error is `Corrupt`, temporary for SMTP (a 4xx), short, and names `path`.
fn assert_bounded(err: &Error, path: &Path) -> String {
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.len() < 400, "error text is {} octets", text.len());
    assert!(
        text.contains(&*path.to_string_lossy()),
        "{text:?} should name {}",
        path.display()
    );
    text
}

/// The spool's files of an older version's mailbox: the marker removed, so `.next` and
/// `.highwater` are read again.
fn remove_marker(mbox: &Path) {
    for e in fs::read_dir(mbox).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".highwater.")
        {
            fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn huge_sparse_mh_sequences_is_left_alone_and_mail_still_delivered() {
    // A 2 GiB (sparse) `.mh_sequences`, planted or grown: it is never read (no memory, no
    // time), never rewritten, and the mailbox keeps taking mail and flag changes (the status
    // files are the record).
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"Subject: 1\n\none\n").unwrap();
    let seq = root.path().join("alice/.mh_sequences");
    sparse(&seq, 2 << 30);

    let started = Instant::now();
    assert_eq!(
        spool.deliver(&alice(), b"Subject: 2\n\ntwo\n").unwrap(),
        mailstore::DeliveryId::Spool(2)
    );
    spool.set_flags(&alice(), 1, &["\\Seen"]).unwrap();
    spool.delete(&alice(), 2).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(spool.list(&alice()).unwrap(), vec![1]);
    assert_eq!(spool.flags(&alice(), 1).unwrap(), vec!["\\Seen"]);
    assert_eq!(fs::metadata(&seq).unwrap().len(), 2 << 30);

    // At the bound it is read and kept up to date; one octet past it, left alone.
    fs::remove_file(&seq).unwrap();
    fs::write(&seq, vec![b'\n'; usize::try_from(SEQUENCES_MAX).unwrap()]).unwrap();
    assert_eq!(
        spool.deliver(&alice(), b"Subject: 3\n\nthree\n").unwrap(),
        mailstore::DeliveryId::Spool(3)
    );
    assert_eq!(fs::read_to_string(&seq).unwrap(), "unseen: 3\n");
    let big = vec![b'\n'; usize::try_from(SEQUENCES_MAX + 1).unwrap()];
    fs::write(&seq, &big).unwrap();
    spool.deliver(&alice(), b"x").unwrap();
    assert_eq!(fs::read(&seq).unwrap(), big);
}

#[test]
fn secret_in_next_is_not_in_the_error() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let mbox = root.path().join("alice");
    remove_marker(&mbox);
    let next = mbox.join(".next");
    fs::write(&next, format!("{SECRET}\n")).unwrap();
    // A fresh process, so the mailbox is scanned and `.next` read.
    let fresh = Spool::open(root.path()).unwrap();
    let text = assert_bounded(&fresh.deliver(&alice(), b"two").unwrap_err(), &next);
    assert!(
        !text.contains("s3cr3t") && !text.contains("root:"),
        "{text}"
    );

    // The same as a hard link to a file outside the mailbox that the daemon can read.
    let outside = root.path().join("shadow");
    fs::write(&outside, format!("{SECRET}\n")).unwrap();
    fs::remove_file(&next).unwrap();
    fs::hard_link(&outside, &next).unwrap();
    let text = assert_bounded(&fresh.deliver(&alice(), b"two").unwrap_err(), &next);
    assert!(!text.contains("s3cr3t"), "{text}");

    // A short line that is not a number is not quoted either.
    fs::remove_file(&next).unwrap();
    fs::write(&next, b"hunter2\n").unwrap();
    let text = assert_bounded(&fresh.deliver(&alice(), b"two").unwrap_err(), &next);
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(fresh.list(&alice()).unwrap(), vec![1]);
}

#[test]
fn oversized_counters_and_status_are_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let mbox = root.path().join("alice");
    remove_marker(&mbox);
    let high = mbox.join(".highwater");
    sparse(&high, 1 << 40);
    let fresh = Spool::open(root.path()).unwrap();
    let started = Instant::now();
    assert_bounded(&fresh.deliver(&alice(), b"two").unwrap_err(), &high);
    assert!(started.elapsed() < Duration::from_secs(5));
    // 65 octets of digits: over the 64 of a counter.
    fs::remove_file(&high).unwrap();
    fs::write(&high, "1".repeat(65)).unwrap();
    let text = assert_bounded(&fresh.deliver(&alice(), b"two").unwrap_err(), &high);
    assert!(!text.contains("1111"), "{text}");
    fs::remove_file(&high).unwrap();
    assert_eq!(
        fresh.deliver(&alice(), b"two").unwrap(),
        mailstore::DeliveryId::Spool(2)
    );

    // A status replaced by a huge file: flags() refuses it.
    let status = mbox.join("1.status");
    sparse(&status, 1 << 30);
    assert_bounded(&fresh.flags(&alice(), 1).unwrap_err(), &status);
}

fn entry() -> QueueEntry {
    QueueEntry::new(
        Envelope::parse("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n").unwrap(),
        std::time::SystemTime::UNIX_EPOCH,
    )
}

#[test]
fn oversized_queue_envelopes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    // The previous version's layout: its envelope file.
    let id = q.enqueue_v1(&entry(), b"body").unwrap();
    let envelope = dir
        .path()
        .join("entries")
        .join(id.as_str())
        .join("envelope");
    sparse(&envelope, ENVELOPE_MAX + 1);
    let err = q.entry(&id).unwrap_err();
    assert_bounded(&err, &envelope);
    // The claim moves it aside, as any corrupt entry.
    assert!(q.claim(&id).unwrap().is_none());
    assert!(dir.path().join("corrupt").join(id.as_str()).exists());

    // A version 2 entry (one file) whose header never ends within the bound.
    let id = q.enqueue(&entry(), b"body").unwrap();
    let file = dir.path().join("entries").join(id.as_str());
    sparse(&file, ENVELOPE_MAX + 1);
    let err = q.entry(&id).unwrap_err();
    assert_bounded(&err, &file);
    assert!(q.claim(&id).unwrap().is_none());
    assert!(dir.path().join("corrupt").join(id.as_str()).exists());

    // An entry that would encode past the bound is refused before anything is written.
    let mut big = entry();
    big.last_error = Some("x".repeat(usize::try_from(ENVELOPE_MAX).unwrap()));
    assert!(matches!(q.enqueue(&big, b"body"), Err(Error::Io { .. })));
    assert_eq!(q.list().unwrap(), vec![]);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let id = q.enqueue(&entry(), b"body").unwrap();
    let claim = q.claim(&id).unwrap().unwrap();
    let huge = "y".repeat(usize::try_from(ENVELOPE_MAX).unwrap());
    assert!(matches!(
        claim.reschedule(std::time::SystemTime::UNIX_EPOCH, huge),
        Err(Error::Io { .. })
    ));
    assert_eq!(q.entry(&id).unwrap().unwrap(), entry());
}

#[test]
fn a_status_too_large_to_read_back_is_never_written() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let flags: Vec<String> = (0..10_000).map(|i| format!("keyword{i:04}")).collect();
    let err = spool.set_flags(&alice(), 1, &flags).unwrap_err();
    assert!(matches!(err, mailstore::Error::InvalidFlag(_)), "{err:?}");
    assert_eq!(spool.flags(&alice(), 1).unwrap(), vec!["\\Recent"]);
}
