//! A Maildir written by this crate, read by Python's standard `mailbox.Maildir`
//! (`scripts/maildir_check.py`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use mailstore::{maildir::Maildir, MailboxName, Store};

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: carol@example.net\r\n\
         Subject: message {i}\r\nMessage-ID: <{i}.test@example.org>\r\n\r\nBody of message {i}.\r\n"
    )
    .into_bytes()
}

#[test]
fn python_mailbox_reads_our_maildir() {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("SKIPPED: python3 is not installed, cannot run scripts/maildir_check.py");
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/maildir_check.py");
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open(dir.path()).unwrap();
    let carol = MailboxName::from_local_part("Carol+tag").unwrap();
    let dave = MailboxName::from_local_part("dave").unwrap();
    for i in 0..20 {
        md.deliver(&carol, &message(i)).unwrap();
    }
    // Five more, each linked into both mailboxes.
    for i in 20..25 {
        let r = md
            .deliver_many(&[carol.clone(), dave.clone()], &message(i))
            .unwrap();
        assert!(r.iter().all(Result::is_ok));
    }
    let run = |user: &str, n: usize| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(user)
            .arg(n.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout)
    };
    assert_eq!(run("carol", 25), (true, "ok: 25 messages\n".to_string()));
    assert_eq!(run("dave", 5), (true, "ok: 5 messages\n".to_string()));
    // The script can fail: a wrong count is reported.
    let (ok, out) = run("dave", 6);
    assert!(!ok);
    assert!(
        out.contains("expected 6 messages, mailbox.Maildir sees 5"),
        "{out}"
    );
}
