//! Hostile local parts: refused with the typed error, and nothing appears outside the root.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use mailstore::{maildir::Maildir, spool::Spool, Error, MailboxName, NameError, Store};

fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out.sort();
    out
}

#[test]
fn traversal_forms_are_refused_and_create_nothing() {
    let base = tempfile::tempdir().unwrap();
    let spool = Spool::open(base.path().join("spool")).unwrap();
    let maildir = Maildir::open(base.path().join("maildir")).unwrap();
    let before = tree(base.path());
    let long = "a".repeat(65);
    let cases: &[(&str, NameError)] = &[
        ("../x", NameError::InvalidChar('/')),
        ("..", NameError::LeadingDot),
        (".", NameError::LeadingDot),
        ("a/b", NameError::InvalidChar('/')),
        ("/etc/passwd", NameError::InvalidChar('/')),
        ("..\\x", NameError::InvalidChar('\\')),
        ("x\\..\\y", NameError::InvalidChar('\\')),
        (".hidden", NameError::LeadingDot),
        ("a\0b", NameError::InvalidChar('\0')),
        ("%2e%2e", NameError::InvalidChar('%')),
        ("%2e%2e%2fx", NameError::InvalidChar('%')),
        ("a..b", NameError::DoubleDot),
        ("x.", NameError::TrailingDot),
        (&long, NameError::TooLong),
        ("", NameError::Empty),
        ("+x", NameError::Empty),
        ("+../../etc", NameError::Empty),
        ("~root", NameError::InvalidChar('~')),
        ("a\nb", NameError::InvalidChar('\n')),
        ("\u{2215}x", NameError::InvalidChar('\u{2215}')), // division slash
    ];
    for (input, want) in cases {
        let err = MailboxName::from_local_part(input).unwrap_err();
        assert_eq!(&err, want, "input {input:?}");
        // The crate error the daemon sees wraps it, and says it is a name problem (5.1.3).
        let e: Error = err.into();
        assert!(e.is_invalid_name());
        assert_eq!(e.to_string(), format!("invalid mailbox name: {want}"));
    }
    assert_eq!(tree(base.path()), before, "refusals created nothing");

    // Accepted look-alikes land in one plain directory directly under the root.
    for input in ["Bob+../../../etc", "BOB", "bob+%2e%2e"] {
        let name = MailboxName::from_local_part(input).unwrap();
        spool.deliver(&name, b"x").unwrap();
        maildir.deliver(&name, b"x").unwrap();
    }
    for p in tree(base.path()) {
        let rel = p.strip_prefix(base.path()).unwrap();
        let mut parts = rel.components().map(|c| c.as_os_str().to_str().unwrap());
        let top = parts.next().unwrap();
        assert!(top == "spool" || top == "maildir", "{p:?}");
        if let Some(mailbox) = parts.next() {
            assert!(mailbox == "bob" || mailbox == ".tmp", "{p:?}");
        }
    }
    assert_eq!(
        spool.list(&MailboxName::new("bob").unwrap()).unwrap(),
        vec![1, 2, 3]
    );
}
