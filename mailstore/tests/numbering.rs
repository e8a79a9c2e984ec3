//! Spool numbers: never reused (whoever deletes, across restarts and crashes), never wrapped.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use mailstore::{spool::Spool, DeliveryId, Error, MailboxName, Store};

fn alice() -> MailboxName {
    MailboxName::new("alice").unwrap()
}

/// The high-water marker's number: the one file named `.highwater.<n>`.
fn mark(dir: &Path) -> u64 {
    let marks: Vec<u64> = names(dir)
        .iter()
        .filter_map(|n| n.strip_prefix(".highwater.")?.parse().ok())
        .collect();
    assert_eq!(marks.len(), 1, "{:?}", names(dir));
    marks[0]
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_counter_at_u64_max_is_an_error_not_message_zero() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let mbox = root.path().join("alice");
    // The counter near its end, as many deliveries would leave it.
    fs::rename(
        mbox.join(".highwater.1"),
        mbox.join(format!(".highwater.{}", u64::MAX - 1)),
    )
    .unwrap();

    assert_eq!(
        spool.deliver(&alice(), b"last").unwrap(),
        DeliveryId::Spool(u64::MAX)
    );
    for s in [spool.clone(), Spool::open(root.path()).unwrap()] {
        let err = s.deliver(&alice(), b"one too many").unwrap_err();
        assert!(matches!(err, Error::Exhausted { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(
            err.to_string()
                .contains(&*mbox.join(".highwater").to_string_lossy()),
            "{err}"
        );
    }
    // What a reader sees: both acknowledged messages, no message 0, nothing half-made.
    assert_eq!(spool.list(&alice()).unwrap(), vec![1, u64::MAX]);
    assert_eq!(spool.read(&alice(), u64::MAX).unwrap(), b"last");
    let files = names(&mbox);
    assert!(
        !files.iter().any(|f| f == "0" || f.starts_with("0.")),
        "{files:?}"
    );
    assert_eq!(
        fs::read_to_string(mbox.join(".mh_sequences")).unwrap(),
        format!("unseen: 1 {}\n", u64::MAX)
    );
    assert_eq!(mark(&mbox), u64::MAX);
}

#[test]
fn a_message_named_u64_max_without_a_highwater_exhausts_too() {
    // As another program (or an older version) may have left it.
    let root = tempfile::tempdir().unwrap();
    let mbox = root.path().join("alice");
    fs::create_dir_all(&mbox).unwrap();
    fs::write(mbox.join(u64::MAX.to_string()), b"x").unwrap();
    let spool = Spool::open(root.path()).unwrap();
    assert!(matches!(
        spool.deliver(&alice(), b"y"),
        Err(Error::Exhausted { .. })
    ));
    assert_eq!(spool.list(&alice()).unwrap(), vec![u64::MAX]);
}

#[test]
fn numbers_deleted_by_another_program_are_not_reused_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let mbox = root.path().join("alice");
    {
        let spool = Spool::open(root.path()).unwrap();
        for i in 1..=3 {
            assert_eq!(spool.deliver(&alice(), b"m").unwrap(), DeliveryId::Spool(i));
        }
    }
    // mutt deletes the newest message: it unlinks the message and its status.
    fs::remove_file(mbox.join("3")).unwrap();
    fs::remove_file(mbox.join("3.status")).unwrap();
    // The daemon restarts.
    let spool = Spool::open(root.path()).unwrap();
    assert_eq!(
        spool.deliver(&alice(), b"new").unwrap(),
        DeliveryId::Spool(4)
    );
    // The same without a restart, and with every message gone.
    for n in [1, 2, 4] {
        fs::remove_file(mbox.join(n.to_string())).unwrap();
        fs::remove_file(mbox.join(format!("{n}.status"))).unwrap();
    }
    assert_eq!(
        spool.deliver(&alice(), b"new").unwrap(),
        DeliveryId::Spool(5)
    );
    assert_eq!(
        Spool::open(root.path())
            .unwrap()
            .deliver(&alice(), b"new")
            .unwrap(),
        DeliveryId::Spool(6)
    );
    assert_eq!(spool.list(&alice()).unwrap(), vec![5, 6]);
    assert_eq!(mark(&mbox), 6);
    // The sequences never name a number that now belongs to a different message: the old
    // 3 and 4 are not reused, so a reader's stale `unseen: 3-4` cannot mark new mail.
    assert_eq!(
        fs::read_to_string(mbox.join(".mh_sequences")).unwrap(),
        "unseen: 1-6\n"
    );
}

#[test]
fn crash_leftovers_never_give_a_number_twice() {
    let root = tempfile::tempdir().unwrap();
    let mbox = root.path().join("alice");
    // A crash after the marker was raised to 5 but before message 5 was linked (4 was the
    // last acknowledged, then deleted by a reader); and an older version's `.highwater` file
    // that says 3, which the marker supersedes.
    fs::create_dir_all(&mbox).unwrap();
    for n in 1..=3 {
        fs::write(mbox.join(n.to_string()), b"m").unwrap();
        fs::write(mbox.join(format!("{n}.status")), b"\\Recent\n").unwrap();
    }
    fs::write(mbox.join(".highwater.5"), b"").unwrap();
    fs::write(mbox.join(".highwater"), b"3\n").unwrap();
    fs::write(mbox.join(".tmp.1.2.3.4"), b"half a sequences file").unwrap();
    let spool = Spool::open(root.path()).unwrap();
    assert_eq!(
        spool.deliver(&alice(), b"six").unwrap(),
        DeliveryId::Spool(6)
    );
    assert!(!mbox.join(".tmp.1.2.3.4").exists());
    assert_eq!(mark(&mbox), 6);
    assert!(!mbox.join(".highwater").exists());

    // A mailbox from an older version: `.next` (written on deletion) and no `.highwater`.
    let old = root.path().join("bob");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("1"), b"m").unwrap();
    fs::write(old.join("1.status"), b"\\Recent\n").unwrap();
    fs::write(old.join(".next"), b"7\n").unwrap();
    let bob = MailboxName::new("bob").unwrap();
    assert_eq!(spool.deliver(&bob, b"x").unwrap(), DeliveryId::Spool(7));

    // An older mailbox without either file: deleting its newest message through the store
    // puts the number on record first.
    let carol = MailboxName::new("carol").unwrap();
    let c = root.path().join("carol");
    fs::create_dir_all(&c).unwrap();
    for n in 1..=5 {
        fs::write(c.join(n.to_string()), b"m").unwrap();
        fs::write(c.join(format!("{n}.status")), b"\\Recent\n").unwrap();
    }
    Spool::open(root.path()).unwrap().delete(&carol, 5).unwrap();
    assert_eq!(mark(&c), 5);
    assert_eq!(
        Spool::open(root.path())
            .unwrap()
            .deliver(&carol, b"x")
            .unwrap(),
        DeliveryId::Spool(6)
    );
}
