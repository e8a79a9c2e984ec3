//! Links planted in a store (by a mailbox's user, a reader with write access, an attacker): the
//! store refuses to deliver through a symbolic link, never writes through or links to a file
//! it did not make, and says which path is wrong.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;

use mailstore::queue::{Envelope, Queue, QueueEntry};
use mailstore::{maildir::Maildir, spool::Spool, Error, MailboxName, Store};

fn alice() -> MailboxName {
    MailboxName::new("alice").unwrap()
}

/// Everything under `dir`, recursively, as relative paths (to show nothing was written there).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The error is the "refused path" kind, temporary for SMTP, and its text names `path`.
fn assert_refused(err: &Error, path: &Path) {
    assert!(matches!(err, Error::UnsafePath { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(!err.is_invalid_name());
    let text = err.to_string();
    assert!(
        text.contains(&*path.to_string_lossy()),
        "{text:?} should name {}",
        path.display()
    );
}

#[test]
fn spool_refuses_a_symlinked_mailbox() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    symlink(outside.path(), root.path().join("alice")).unwrap();

    let err = spool.deliver(&alice(), b"Subject: x\n\nhi\n").unwrap_err();
    assert_refused(&err, &root.path().join("alice"));
    assert_eq!(tree(outside.path()), Vec::<String>::new());
    // Readers do not follow it either.
    assert_refused(
        &spool.list(&alice()).unwrap_err(),
        &root.path().join("alice"),
    );
    assert!(matches!(
        spool.read(&alice(), 1),
        Err(Error::UnsafePath { .. })
    ));
    // Nothing is left in staging.
    assert_eq!(tree(&root.path().join(".tmp")), Vec::<String>::new());
}

#[test]
fn maildir_refuses_symlinked_mailbox_tmp_new_and_cur() {
    for planted in ["", "tmp", "new", "cur"] {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let md = Maildir::open(root.path()).unwrap();
        let mbox = root.path().join("alice");
        let link = if planted.is_empty() {
            mbox.clone()
        } else {
            fs::create_dir(&mbox).unwrap();
            for sub in ["tmp", "new", "cur"] {
                if sub != planted {
                    fs::create_dir(mbox.join(sub)).unwrap();
                }
            }
            mbox.join(planted)
        };
        symlink(outside.path(), &link).unwrap();
        let err = md.deliver(&alice(), b"Subject: x\n\nhi\n").unwrap_err();
        assert_refused(&err, &link);
        assert_eq!(tree(outside.path()), Vec::<String>::new(), "{planted}");
        if !planted.is_empty() {
            for sub in ["tmp", "new", "cur"] {
                if sub != planted {
                    assert_eq!(tree(&mbox.join(sub)), Vec::<String>::new());
                }
            }
        }
    }
}

#[test]
fn spool_refuses_symlinked_own_files() {
    // The high-water marker (`.highwater.1` after one delivery), and an older version's
    // `.highwater` file, read when there is no marker.
    for planted in [".recent", ".highwater.1", ".mh_sequences", ".highwater"] {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"root:x:0:0::/root:/bin/sh\n").unwrap();
        let spool = Spool::open(root.path()).unwrap();
        spool.deliver(&alice(), b"one").unwrap();
        let mbox = root.path().join("alice");
        if planted == ".highwater" {
            fs::remove_file(mbox.join(".highwater.1")).unwrap();
        } else {
            fs::remove_file(mbox.join(planted)).unwrap();
        }
        symlink(&victim, mbox.join(planted)).unwrap();
        // The same process, and a fresh one (a restarted daemon).
        for s in [spool.clone(), Spool::open(root.path()).unwrap()] {
            let err = s.deliver(&alice(), b"two").unwrap_err();
            assert_refused(&err, &mbox.join(planted));
        }
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n",
            "{planted}"
        );
        assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
        assert_eq!(tree(outside.path()), vec!["victim".to_string()]);
        assert_eq!(spool.list(&alice()).unwrap(), vec![1]);
        // The planted link is still there for the operator to look at.
        assert!(mbox
            .join(planted)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn spool_never_links_to_a_planted_template_or_writes_through_a_status() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let mbox = root.path().join("alice");
    // A file outside the mailbox (same file system, so it can be hard-linked), with exactly
    // the content a template has.
    let victim = root.path().join("victim");
    fs::write(&victim, b"\\Recent\n").unwrap();
    fs::remove_file(mbox.join(".recent")).unwrap();
    fs::hard_link(&victim, mbox.join(".recent")).unwrap();
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 2);

    for s in [spool.clone(), Spool::open(root.path()).unwrap()] {
        s.deliver(&alice(), b"more").unwrap();
    }
    assert_eq!(spool.list(&alice()).unwrap(), vec![1, 2, 3]);
    let victim_ino = fs::metadata(&victim).unwrap().ino();
    for n in 1..=3 {
        let st = fs::metadata(mbox.join(format!("{n}.status"))).unwrap();
        assert_ne!(
            st.ino(),
            victim_ino,
            "{n}.status is linked to the planted file"
        );
    }
    // The planted name was replaced (renamed over), the file itself is untouched.
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
    assert_eq!(fs::read(&victim).unwrap(), b"\\Recent\n");

    // A status hard-linked to an outside file: a flag change replaces the name.
    fs::remove_file(mbox.join("2.status")).unwrap();
    fs::hard_link(&victim, mbox.join("2.status")).unwrap();
    spool.set_flags(&alice(), 2, &["\\Seen"]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"\\Recent\n");
    assert_eq!(fs::read(mbox.join("2.status")).unwrap(), b"\\Seen\n");
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
}

#[test]
fn spool_skips_and_refuses_a_planted_message_link() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let victim = root.path().join("victim");
    fs::write(&victim, b"secret").unwrap();
    let mbox = root.path().join("alice");
    symlink(&victim, mbox.join("2")).unwrap();
    symlink(&victim, mbox.join("2.status")).unwrap();
    // Number 2 is taken (by the link): the delivery gets 3, nothing is written to the victim.
    assert_eq!(
        spool.deliver(&alice(), b"three").unwrap(),
        mailstore::DeliveryId::Spool(3)
    );
    assert_eq!(fs::read(&victim).unwrap(), b"secret");
    assert_refused(&spool.read(&alice(), 2).unwrap_err(), &mbox.join("2"));
    assert_refused(
        &spool.flags(&alice(), 2).unwrap_err(),
        &mbox.join("2.status"),
    );
    assert!(matches!(
        spool.set_flags(&alice(), 2, &["\\Seen"]),
        Err(Error::UnsafePath { .. })
    ));
    assert_eq!(fs::read(&victim).unwrap(), b"secret");
}

fn entry() -> QueueEntry {
    QueueEntry::new(
        Envelope::parse("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n").unwrap(),
        std::time::SystemTime::UNIX_EPOCH,
    )
}

#[test]
fn queue_refuses_symlinked_directories_and_entries() {
    for planted in ["tmp", "entries", "trash", "corrupt"] {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        Queue::open(dir.path()).unwrap();
        fs::remove_dir(dir.path().join(planted)).unwrap();
        symlink(outside.path(), dir.path().join(planted)).unwrap();
        let err = Queue::open(dir.path()).unwrap_err();
        assert_refused(&err, &dir.path().join(planted));
        assert_eq!(tree(outside.path()), Vec::<String>::new());
    }

    // An entry that is a link to a directory outside: moved aside, never read or claimed.
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    // The previous version's layout (a directory with `body`), which an old queue holds.
    let good = q.enqueue_v1(&entry(), b"body").unwrap();
    let fake = format!("{}x", good.as_str());
    fs::write(outside.path().join("envelope"), entry().encode_v1()).unwrap();
    fs::write(outside.path().join("body"), b"not ours").unwrap();
    symlink(outside.path(), dir.path().join("entries").join(&fake)).unwrap();
    let fake_id: mailstore::queue::QueueId = fake.parse().unwrap();
    assert!(q.claim(&fake_id).unwrap().is_none());
    assert!(dir
        .path()
        .join("corrupt")
        .join(&fake)
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    let ids: Vec<_> = q.list().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![good.clone()]);
    // A body replaced by a link to an outside file is not read through.
    let body = dir.path().join("entries").join(good.as_str()).join("body");
    fs::remove_file(&body).unwrap();
    symlink(outside.path().join("body"), &body).unwrap();
    let claim = q.claim(&good).unwrap().unwrap();
    assert_refused(&claim.body().unwrap_err(), &body);
    assert!(matches!(q.read_body(&good), Err(Error::UnsafePath { .. })));
    // A claim finishes without touching the outside directory.
    claim.finish().unwrap();
    assert_eq!(
        tree(outside.path()),
        vec!["body".to_string(), "envelope".to_string()]
    );

    // A version 2 entry (one file) replaced by a link to a file outside: moved aside,
    // never read or claimed.
    let v2 = q.enqueue(&entry(), b"body").unwrap();
    let path = dir.path().join("entries").join(v2.as_str());
    fs::copy(&path, outside.path().join("entry")).unwrap();
    fs::remove_file(&path).unwrap();
    symlink(outside.path().join("entry"), &path).unwrap();
    assert!(matches!(q.read_body(&v2), Err(Error::UnsafePath { .. })));
    assert!(q.claim(&v2).unwrap().is_none());
    assert!(dir
        .path()
        .join("corrupt")
        .join(v2.as_str())
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn spool_never_writes_through_a_planted_sequences_spare() {
    // `.mh_sequences.spare` is written in place and exchanged with `.mh_sequences`: whatever a
    // mailbox's user puts there (a hard link to another file, a symbolic link, a file with
    // other modes) is removed and replaced, never written through.
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("victim");
    fs::write(&victim, b"secret\n").unwrap();
    let spool = Spool::open(root.path()).unwrap();
    spool.deliver(&alice(), b"one").unwrap();
    let mbox = root.path().join("alice");
    let spare = mbox.join(".mh_sequences.spare");
    let plants: [(&str, &dyn Fn()); 4] = [
        ("hard link", &|| fs::hard_link(&victim, &spare).unwrap()),
        ("symbolic link", &|| symlink(&victim, &spare).unwrap()),
        ("other mode", &|| {
            fs::write(&spare, b"x").unwrap();
            fs::set_permissions(&spare, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }),
        ("hard link as the sequences", &|| {
            fs::remove_file(mbox.join(".mh_sequences")).unwrap();
            fs::hard_link(&victim, mbox.join(".mh_sequences")).unwrap();
        }),
    ];
    let mut n = 1;
    for (what, plant) in plants {
        let _ = fs::remove_file(&spare);
        plant();
        for s in [spool.clone(), Spool::open(root.path()).unwrap()] {
            s.deliver(&alice(), b"more").unwrap();
            n += 1;
        }
        assert_eq!(fs::read(&victim).unwrap(), b"secret\n", "{what}");
        assert_eq!(
            tree(root.path())
                .iter()
                .filter(|p| !p.starts_with("alice") && *p != ".tmp")
                .collect::<Vec<_>>(),
            vec!["victim"],
            "{what}"
        );
        let seq = fs::read_to_string(mbox.join(".mh_sequences")).unwrap();
        if what == "hard link as the sequences" {
            // The planted file's lines are kept as MH keeps lines it does not know, and only
            // the two messages since are unseen.
            assert_eq!(seq, format!("secret\nunseen: {}-{n}\n", n - 1), "{what}");
        } else {
            assert_eq!(seq, format!("unseen: 1-{n}\n"), "{what}");
        }
        let st = fs::symlink_metadata(&spare).unwrap();
        assert!(st.is_file(), "{what}");
        assert_eq!(st.nlink(), 1, "{what}");
        assert_eq!(st.mode() & 0o7777, 0o600, "{what}");
    }
    // The victim is back to its one name.
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
}
