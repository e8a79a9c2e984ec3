//! The numbered spool is an MH folder: `.mh_sequences` in MH's own format, read by Python's
//! standard `mailbox.MH` as it is.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use mailstore::{spool::Spool, DeliveryId, MailboxName, Store};

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Sender {i} <s{i}@example.org>\nTo: carol@example.net\nSubject: message {i}\n\
         Message-ID: <{i}.mh@example.org>\n\nBody {i}.\n"
    )
    .into_bytes()
}

/// Reads a folder with Python's `mailbox.MH` and prints, one per line: the keys, the
/// sequences, and per message its subject and its own sequences.
const READER: &str = r#"
import mailbox, sys
mh = mailbox.MH(sys.argv[1], create=False)
keys = sorted(mh.keys())
print("keys", keys)
print("sequences", sorted(mh.get_sequences().items()))
for k in keys:
    m = mh.get_message(k)
    print(k, m["Subject"], m.get_sequences())
"#;

fn python_reads(folder: &Path) -> Option<String> {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("SKIPPED: python3 is not installed");
        return None;
    }
    let out = Command::new("python3")
        .args(["-c", READER])
        .arg(folder)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn python_mailbox_mh_reads_the_spool_and_its_sequences() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let carol = MailboxName::new("carol").unwrap();
    for i in 1..=5 {
        spool.deliver(&carol, &message(i)).unwrap();
    }
    let folder = root.path().join("carol");
    assert_eq!(
        fs::read(folder.join(".mh_sequences")).unwrap(),
        b"unseen: 1-5\n"
    );
    spool.set_flags(&carol, 2, &["\\Seen"]).unwrap();
    spool
        .set_flags(&carol, 4, &["\\Seen", "\\Flagged"])
        .unwrap();
    spool.set_flags(&carol, 5, &["\\Answered"]).unwrap();
    spool.delete(&carol, 3).unwrap();
    assert_eq!(
        fs::read(folder.join(".mh_sequences")).unwrap(),
        b"unseen: 1 5\nflagged: 4\nreplied: 5\n"
    );
    // The status files stay the record.
    assert_eq!(
        fs::read(folder.join("4.status")).unwrap(),
        b"\\Seen \\Flagged\n"
    );

    let Some(out) = python_reads(&folder) else {
        return;
    };
    assert_eq!(
        out,
        "keys [1, 2, 4, 5]\n\
         sequences [('flagged', [4]), ('replied', [5]), ('unseen', [1, 5])]\n\
         1 message 1 ['unseen']\n\
         2 message 2 []\n\
         4 message 4 ['flagged']\n\
         5 message 5 ['unseen', 'replied']\n"
    );

    // Python adds a message itself (highest number + 1) and marks it; the store's next
    // delivery goes after it and keeps Python's sequence lines.
    let added = Command::new("python3")
        .args([
            "-c",
            "import mailbox,sys\nmh=mailbox.MH(sys.argv[1],create=False)\n\
             msg=mailbox.MHMessage('Subject: from python\\n\\nhi\\n')\nmsg.add_sequence('unseen')\n\
             print(mh.add(msg))",
        ])
        .arg(&folder)
        .output()
        .unwrap();
    assert!(added.status.success());
    assert_eq!(String::from_utf8_lossy(&added.stdout), "6\n");
    assert_eq!(
        spool.deliver(&carol, &message(7)).unwrap(),
        DeliveryId::Spool(7)
    );
    let seq = fs::read_to_string(folder.join(".mh_sequences")).unwrap();
    assert!(seq.lines().any(|l| l == "unseen: 1 5-7"), "{seq:?}");
    let out = python_reads(&folder).unwrap();
    assert!(out.starts_with("keys [1, 2, 4, 5, 6, 7]\n"), "{out}");
    assert!(out.contains("7 message 7 ['unseen']\n"), "{out}");
}

#[test]
fn a_folder_with_all_mail_read_is_still_a_folder() {
    // mutt takes a directory for an MH folder only if it has `.mh_sequences`.
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let dave = MailboxName::new("dave").unwrap();
    spool.deliver(&dave, &message(1)).unwrap();
    spool.set_flags(&dave, 1, &["\\Seen"]).unwrap();
    let folder = root.path().join("dave");
    assert_eq!(fs::read(folder.join(".mh_sequences")).unwrap(), b"");
    if let Some(out) = python_reads(&folder) {
        assert_eq!(out, "keys [1]\nsequences []\n1 message 1 []\n");
    }
}

#[test]
fn sequences_are_rewritten_without_new_inodes() {
    use std::os::unix::fs::MetadataExt;
    // Each delivery writes the new sequences into `.mh_sequences.spare` and exchanges the two
    // names: the same two inodes serve every delivery (none made or freed per message), and a
    // reader always finds a whole file.
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let bob = MailboxName::new("bob").unwrap();
    let folder = root.path().join("bob");
    let inodes = |folder: &Path| {
        let mut v = [".mh_sequences", ".mh_sequences.spare"]
            .map(|n| fs::metadata(folder.join(n)).unwrap().ino());
        v.sort_unstable();
        v
    };
    spool.deliver(&bob, &message(1)).unwrap();
    spool.deliver(&bob, &message(2)).unwrap();
    let pair = inodes(&folder);
    for i in 3..=6 {
        let before = fs::metadata(folder.join(".mh_sequences")).unwrap().ino();
        spool.deliver(&bob, &message(i)).unwrap();
        assert_eq!(inodes(&folder), pair);
        assert_ne!(
            fs::metadata(folder.join(".mh_sequences")).unwrap().ino(),
            before
        );
        assert_eq!(
            fs::read_to_string(folder.join(".mh_sequences")).unwrap(),
            format!("unseen: 1-{i}\n")
        );
    }
    // Flag changes go the same way; the spare holds the sequences before the change.
    spool.set_flags(&bob, 2, &["\\Seen"]).unwrap();
    assert_eq!(inodes(&folder), pair);
    assert_eq!(
        fs::read_to_string(folder.join(".mh_sequences")).unwrap(),
        "unseen: 1 3-6\n"
    );
    assert_eq!(
        fs::read_to_string(folder.join(".mh_sequences.spare")).unwrap(),
        "unseen: 1-6\n"
    );
    // Python's mailbox.MH still reads it.
    if let Some(out) = python_reads(&folder) {
        assert!(out.contains("unseen"), "{out}");
    }
}
