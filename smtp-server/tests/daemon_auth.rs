//! `smtp-server passwd` makes lines Dovecot accepts; the daemon checks `--passwd-file` at
//! startup. (The passwd-file and Dovecot client themselves are tested in the binary's
//! `auth` module, against a real Dovecot.)
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-server");

fn passwd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program may refuse its arguments and exit before it reads: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn doveadm() -> Option<&'static str> {
    ["/usr/bin/doveadm", "/usr/local/bin/doveadm"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// `doveadm pw -t HASH -p PASSWORD`, with an empty configuration (never the system's).
fn doveadm_accepts(doveadm: &str, hash: &str, password: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dovecot.conf");
    std::fs::write(&conf, "").unwrap();
    let out = Command::new(doveadm)
        .arg("-c")
        .arg(&conf)
        .args(["pw", "-t", hash, "-p", password])
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn passwd_lines_are_accepted_by_doveadm() {
    let doveadm = doveadm();
    if doveadm.is_none() {
        println!(
            "SKIPPED the doveadm checks of passwd_lines_are_accepted_by_doveadm: doveadm is \
             not installed (apt-get install dovecot-core); only the format is checked"
        );
    }
    for (scheme, prefix) in [
        (None, "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
        (Some("ARGON2ID"), "{ARGON2ID}$argon2id$"),
        (Some("BLF-CRYPT"), "{BLF-CRYPT}$2y$12$"),
        (Some("sha512-crypt"), "{SHA512-CRYPT}$6$"),
        (Some("SHA256-CRYPT"), "{SHA256-CRYPT}$5$"),
    ] {
        let mut args = vec!["Alice@Example.ORG"];
        if let Some(s) = scheme {
            args.extend(["--scheme", s]);
        }
        // The first line of standard input is the password; CRLF is a line end too.
        let out = passwd(&args, "pässwörd 1\r\nnot this\n".as_bytes());
        assert!(out.status.success(), "{scheme:?}: {:?}", out);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let line = stdout.trim_end();
        let hash = line
            .strip_prefix("alice@example.org:")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(hash.starts_with(prefix), "{scheme:?}: {hash}");
        if let Some(d) = doveadm {
            assert!(doveadm_accepts(d, hash, "pässwörd 1"), "{hash}");
            assert!(!doveadm_accepts(d, hash, "pässwörd 2"), "{hash}");
        }
    }
}

#[test]
fn passwd_refuses_what_cannot_be_a_login() {
    for (args, stdin, why) in [
        (&["alice"][..], &b""[..], "empty password"),
        (&["alice"][..], &b"\n"[..], "empty password"),
        (&["alice"][..], &b"a\0b\n"[..], "NUL"),
        (&["a:b"][..], &b"x\n"[..], "not a usable login name"),
        (&["a\tb"][..], &b"x\n"[..], "not a usable login name"),
        (
            &["alice", "--scheme", "MD5"][..],
            &b"x\n"[..],
            "invalid value 'MD5'",
        ),
    ] {
        let out = passwd(args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let long = vec![b'x'; 2000];
    let out = passwd(&["alice"], &long);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_broken_passwd_file_stops_the_daemon_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        "# users\nalice@example.org:{PLAIN}x\nbob@example.org:{MD5}$1$abc\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("-d")
        .arg(dir.path().join("mail"))
        .args(["-l", "127.0.0.1:1", "--no-public", "--passwd-file"])
        .arg(&users)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "smtp-server: --passwd-file: {}:3: ",
            users.display()
        )),
        "{err}"
    );
    assert!(err.contains("unsupported password scheme {MD5}"), "{err}");
    // The two sources exclude each other.
    let out = Command::new(BIN)
        .args(["--passwd-file", "a", "--auth-dovecot", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot be used with"));
}
