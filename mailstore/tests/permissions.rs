//! Who can read the mail: modes and ownership of what the stores create (StoreOptions).
//!
//! Tests run as root in CI, and root can read anything, so modes and owners are checked with
//! `stat`, not by trying to read.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use mailstore::{maildir::Maildir, spool::Spool, MailboxName, Store, StoreOptions};

fn alice() -> MailboxName {
    MailboxName::new("alice").unwrap()
}

/// (mode without the file type, uid, gid), links not followed.
fn st(p: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// Our uid and gid, and whether we are root (who may give files to anyone).
fn whoami(dir: &Path) -> (u32, u32, bool) {
    let probe = dir.join("probe");
    fs::write(&probe, b"").unwrap();
    let m = fs::metadata(&probe).unwrap();
    fs::remove_file(&probe).unwrap();
    (m.uid(), m.gid(), m.uid() == 0)
}

#[test]
fn default_modes_are_unchanged_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let (uid, _, _) = whoami(root.path());
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"x").unwrap();
    let mbox = root.path().join("alice");
    assert_eq!(st(&mbox).0, 0o700);
    assert_eq!(st(&mbox).1, uid);
    for f in ["1", "1.status", ".mh_sequences", ".highwater.1", ".recent"] {
        assert_eq!(st(&mbox.join(f)).0, 0o600, "{f}");
    }
    let md_root = tempfile::tempdir().unwrap();
    let md = Maildir::open(md_root.path()).unwrap();
    let mailstore::DeliveryId::Maildir(name) = md.deliver(&alice(), b"x").unwrap() else {
        panic!()
    };
    let m = md_root.path().join("alice");
    for d in ["", "tmp", "new", "cur"] {
        assert_eq!(st(&m.join(d)).0, 0o700, "{d}");
    }
    assert_eq!(st(&m.join("new").join(name)).0, 0o600);
}

#[test]
fn mode_and_group_for_readers_under_another_uid() {
    let root = tempfile::tempdir().unwrap();
    let (uid, my_gid, is_root) = whoami(root.path());
    // As root, any group and owner (what a daemon started as root may be told); otherwise our
    // own group, the only one certainly allowed.
    let (gid, owner) = if is_root {
        (4242, Some(4343))
    } else {
        (my_gid, None)
    };
    let mut options = StoreOptions::new().mode(0o2770).group(gid);
    if let Some(o) = owner {
        options = options.owner(o);
    }
    let want_uid = owner.unwrap_or(uid);

    // A spool like /var/spool/mail: the root belongs to the operator and is left alone.
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o2775)).unwrap();
    let spool = Spool::open_with(root.path(), &options).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    spool.deliver(&alice(), b"two").unwrap();
    spool.set_flags(&alice(), 1, &["\\Seen"]).unwrap();
    assert_eq!(st(root.path()).0, 0o2775);
    let mbox = root.path().join("alice");
    assert_eq!(st(&mbox), (0o2770, want_uid, gid));
    for f in [
        "1",
        "1.status",
        "2",
        "2.status",
        ".mh_sequences",
        ".highwater.2",
        ".recent",
    ] {
        assert_eq!(st(&mbox.join(f)), (0o660, want_uid, gid), "{f}");
    }
    // Staging stays private.
    assert_eq!(st(&root.path().join(".tmp")).0, 0o700);

    // A mailbox directory made by the operator keeps its mode and owner.
    let bob = root.path().join("bob");
    fs::create_dir(&bob).unwrap();
    fs::set_permissions(&bob, fs::Permissions::from_mode(0o750)).unwrap();
    let before = st(&bob);
    spool
        .deliver(&MailboxName::new("bob").unwrap(), b"x")
        .unwrap();
    assert_eq!(st(&bob), before);
    assert_eq!(st(&bob.join("1")), (0o660, want_uid, gid));

    // Maildir: every directory and the message.
    let md_root = tempfile::tempdir().unwrap();
    let md = Maildir::open_with(md_root.path(), &options.mode(0o750)).unwrap();
    let mailstore::DeliveryId::Maildir(name) = md.deliver(&alice(), b"x").unwrap() else {
        panic!()
    };
    let m = md_root.path().join("alice");
    for d in ["", "tmp", "new", "cur"] {
        assert_eq!(st(&m.join(d)), (0o750, want_uid, gid), "{d}");
    }
    assert_eq!(st(&m.join("new").join(name)), (0o640, want_uid, gid));
}

#[test]
fn invalid_ids_are_refused() {
    let root = tempfile::tempdir().unwrap();
    assert!(matches!(
        Spool::open_with(root.path(), &StoreOptions::new().group(u32::MAX)),
        Err(mailstore::Error::InvalidOption(_))
    ));
}
