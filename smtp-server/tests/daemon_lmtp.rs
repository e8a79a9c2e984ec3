//! End-to-end: `--lmtp` against a real Dovecot LMTP server (dovecot-lmtpd) started here in a
//! temporary directory; the messages read back with `doveadm fetch`. Each recipient gets
//! Dovecot's own verdict: delivered, retried (a full mailbox: 452 4.2.2), bounced (unknown
//! user: 550 5.1.1); mail waits in the queue while Dovecot is down.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daemon_util::{wait_until, Daemon, Net, PeerBehaviour, BIN};

const DOVECOT: &str = "/usr/sbin/dovecot";
const DOVEADM: &str = "/usr/bin/doveadm";

/// A Dovecot serving LMTP on a Unix-domain socket in `dir`, Maildirs under `dir/mail`.
struct Dovecot {
    dir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Dovecot {
    fn users(dir: &Path, bob_quota: bool) -> String {
        let (uid, gid) = ids();
        // A limit in both cases: without one, Maildir++ goes on with the limit it last wrote
        // to `maildirsize`.
        let bob_extra = if bob_quota {
            "userdb_quota_rule=*:storage=1"
        } else {
            "userdb_quota_rule=*:storage=100M"
        };
        let mail = dir.join("mail");
        format!(
            "alice:{{PLAIN}}x:{uid}:{gid}::{m}/alice::\n\
             bob:{{PLAIN}}x:{uid}:{gid}::{m}/bob::{bob_extra}\n\
             carol:{{PLAIN}}x:{uid}:{gid}::{m}/carol::\n",
            m = mail.display()
        )
    }

    fn configure(dir: &Path) {
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (uid, gid) = ids();
        std::os::unix::fs::chown(dir.join("mail"), Some(uid), Some(gid)).unwrap();
        std::fs::write(dir.join("users"), Dovecot::users(dir, true)).unwrap();
        let (user, group) = if is_root() {
            ("nobody".to_owned(), nogroup())
        } else {
            let name = std::env::var("USER").unwrap_or_else(|_| "nobody".into());
            (name.clone(), name)
        };
        let conf = format!(
            "protocols = lmtp
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_location = maildir:~/Maildir
auth_username_format = %Ln
lmtp_hdr_delivery_address = final
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  unix_listener {d}/lmtp {{
    mode = 0666
  }}
}}
",
            d = dir.display()
        );
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
    }

    fn start(dir: &Path) -> Dovecot {
        let _ = std::fs::remove_dir_all(dir.join("run"));
        let _ = std::fs::remove_file(dir.join("lmtp"));
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let d = Dovecot {
            dir: dir.to_owned(),
            child: Some(child),
        };
        assert!(
            // Not the file's existence: it appears at bind(), before Dovecot listens.
            wait_until(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(d.socket()).is_ok()
            }),
            "dovecot did not start: {}",
            d.log()
        );
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("lmtp")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// The messages in `user`'s INBOX, whole, as `doveadm fetch` prints them.
    fn fetch(&self, user: &str) -> Vec<String> {
        let out = Command::new(DOVEADM)
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .args(["fetch", "-u", user, "text", "mailbox", "INBOX", "all"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "doveadm fetch -u {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // One `text:` block per message (each starts on a line of its own).
        let text = format!("\n{text}");
        text.split("\ntext:\n")
            .skip(1)
            .map(|m| format!("text:\n{}", m.trim_end_matches(['\n', '\u{c}'])))
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{pid}")])
                .status();
            let _ = child.wait();
            // The master removes its sockets when it exits; wait for that.
            wait_until(Duration::from_secs(10), || !self.socket().exists());
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ids() -> (u32, u32) {
    if is_root() {
        (65534, 65534)
    } else {
        let id = |flag: &str| {
            let o = Command::new("id").arg(flag).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    }
}

fn nogroup() -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    ["nogroup", "nobody"]
        .into_iter()
        .find(|g| groups.lines().any(|l| l.starts_with(&format!("{g}:"))))
        .unwrap_or("nogroup")
        .to_owned()
}

fn tool(spool: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("queue")
        .arg("-d")
        .arg(spool)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn local_mail_goes_to_dovecot_by_lmtp_with_a_verdict_per_recipient() {
    if !Path::new(DOVECOT).exists() || !Path::new(DOVEADM).exists() {
        println!(
            "SKIPPED local_mail_goes_to_dovecot_by_lmtp_with_a_verdict_per_recipient: dovecot \
             is not installed (apt-get install dovecot-core dovecot-lmtpd)"
        );
        return;
    }
    if !Path::new("/usr/lib/dovecot/lmtp").exists() {
        println!(
            "SKIPPED local_mail_goes_to_dovecot_by_lmtp_with_a_verdict_per_recipient: \
             dovecot-lmtpd is not installed (apt-get install dovecot-lmtpd)"
        );
        return;
    }
    let net = Net::start(PeerBehaviour::default(), false);
    let tmp = tempfile::tempdir().unwrap();
    let dovedir = tmp.path().join("dovecot");
    std::fs::create_dir(&dovedir).unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Dovecot::configure(&dovedir);
    let mut dovecot = Dovecot::start(&dovedir);
    let spool = tmp.path().join("spool");
    let lmtp = format!("unix:{}", dovecot.socket().display());
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--lmtp", &lmtp, "--retry-base", "1s"],
    );

    // Alice gets it; Bob's mailbox is full (a 4yz: retried); Dovecot knows no "nobody" (a
    // 5yz: bounced to the sender, Carol, whose bounce goes by LMTP too).
    let body = "x".repeat(3000);
    let msg = format!(
        "From: carol@example.test\r\nTo: alice@example.test\r\nSubject: by LMTP\r\n\r\n\
         First line.\r\n.A line with a leading dot.\r\n{body}\r\n"
    );
    let r = d.connect().send(
        "carol@example.test",
        &[
            "Alice@example.test",
            "bob@example.test",
            "nobody@example.test",
        ],
        &msg,
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(r.1.contains("queued as"), "{r:?}");

    assert!(
        wait_until(Duration::from_secs(30), || dovecot.fetch("alice").len()
            == 1),
        "alice got nothing: {}\n{}",
        d.log(),
        dovecot.log()
    );
    let alice = dovecot.fetch("alice").remove(0);
    // Dovecot's trace fields on top, then ours, then the message as sent (dot unstuffed).
    assert!(
        alice.contains("Return-Path: <carol@example.test>"),
        "{alice}"
    );
    assert!(alice.contains("by mx.example.test"), "{alice}");
    assert!(alice.contains("Subject: by LMTP\n"), "{alice}");
    assert!(
        alice.contains(&format!(
            "\n\nFirst line.\n.A line with a leading dot.\n{body}"
        )),
        "{alice}"
    );
    assert_eq!(alice.matches("Return-Path:").count(), 1, "{alice}");

    // The bounce for nobody reaches carol through Dovecot.
    assert!(
        wait_until(Duration::from_secs(30), || dovecot.fetch("carol").len()
            == 1),
        "carol got no bounce: {}",
        d.log()
    );
    let bounce = dovecot.fetch("carol").remove(0);
    assert!(bounce.contains("Return-Path: <>"), "{bounce}");
    assert!(bounce.contains("nobody@example.test"), "{bounce}");
    assert!(bounce.contains("550 5.1.1"), "{bounce}");
    assert!(
        !bounce.contains("bob@example.test>: 452"),
        "bob is not failed: {bounce}"
    );

    // Bob is deferred with Dovecot's reply, and still queued.
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("delivery deferred")
            && l.contains("bob@example.test")
            && l.contains("452 4.2.2")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("delivered")
            && l.contains("alice@example.test")
            && l.contains(&format!("via={lmtp}"))),
        "{log}"
    );
    let listing = tool(&spool, &["list"]);
    assert!(listing.contains("pending    bob@example.test"), "{listing}");
    assert!(
        listing.contains("delivered  alice@example.test"),
        "{listing}"
    );
    // Nothing was written to the spool.
    assert!(!spool.join("alice").exists());

    // Room in Bob's mailbox: the next retry delivers.
    std::fs::write(dovedir.join("users"), Dovecot::users(&dovedir, false)).unwrap();
    // Flushed until it goes (a flush while an attempt runs leaves the entry to its backoff).
    assert!(
        (0..60).any(|_| {
            tool(&spool, &["flush"]);
            std::thread::sleep(Duration::from_millis(500));
            dovecot.fetch("bob").len() == 1
        }),
        "bob never got it: {}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !tool(&spool, &["list"])
            .contains("pending")),
        "{}",
        tool(&spool, &["list"])
    );

    // Dovecot down: the message waits in the queue, and goes when it is back.
    dovecot.stop();
    let r = d.connect().send(
        "someone@remote.test",
        &["alice@example.test"],
        "Subject: while down\r\n\r\nwaits\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(30), || d.log().lines().any(|l| l
            .contains("delivery deferred")
            && l.contains("alice@example.test"))),
        "{}",
        d.log()
    );
    let dovecot = Dovecot::start(&dovedir);
    assert!(
        (0..60).any(|_| {
            tool(&spool, &["flush"]);
            std::thread::sleep(Duration::from_millis(500));
            dovecot.fetch("alice").len() == 2
        }),
        "the queued message never reached Dovecot: {:?}\n{}",
        dovecot.fetch("alice"),
        d.log()
    );
    assert!(dovecot.fetch("alice")[1].contains("Subject: while down"));
}

/// Mail queued for an LMTP server that is then dropped from the configuration is stored in
/// the spool by the next daemon, with its `Return-Path:`; a recipient no longer known gets a
/// bounce, not a retry.
#[test]
fn queued_lmtp_mail_is_stored_here_when_lmtp_is_turned_off() {
    let net = Net::start(PeerBehaviour::default(), false);
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let users = tmp.path().join("users");
    std::fs::write(&users, "alice\nbob\n").unwrap();
    let dead = format!("unix:{}", tmp.path().join("no-such-socket").display());
    let users_arg = users.display().to_string();
    let mut d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--lmtp", &dead, "--users", &users_arg],
    );
    let r = d.connect().send(
        "alice@example.test",
        &["bob@example.test", "alice@example.test"],
        "Subject: later\r\n\r\nstored here\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(30), || d
            .log()
            .contains("cannot connect to /")),
        "{}",
        d.log()
    );
    assert!(!spool.join("bob").exists());
    d.terminate();

    // bob left meanwhile.
    std::fs::write(&users, "alice\n").unwrap();
    let mut args = d.args.clone();
    let i = args.iter().position(|a| a == "--lmtp").unwrap();
    args.drain(i..i + 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let port = daemon_util::free_port().to_string();
    let mut args = args.clone();
    let l = args.iter().position(|a| *a == "-l").unwrap();
    let listen = format!("127.0.0.1:{port}");
    args[l + 1] = &listen;
    let child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = scopeguard(child);
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(&listen).is_ok()
    }));
    tool(&spool, &["flush"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let m = daemon_util::spool_messages(&spool, "alice");
            m.len() == 2
        }),
        "alice: {:?}\n{}",
        daemon_util::spool_messages(&spool, "alice").len(),
        d.log()
    );
    let mut got: Vec<String> = daemon_util::spool_messages(&spool, "alice")
        .into_iter()
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect();
    got.sort();
    // The message itself, and the bounce for bob.
    let message = got.iter().find(|m| m.contains("stored here")).unwrap();
    assert!(
        message.starts_with("Return-Path: <alice@example.test>\r\nReceived: "),
        "{message}"
    );
    let bounce = got
        .iter()
        .find(|m| m.contains("bob@example.test") && !m.contains("stored here\r\n."))
        .unwrap();
    assert!(bounce.starts_with("Return-Path: <>\r\n"), "{bounce}");
    assert!(bounce.contains("5.1.1"), "{bounce}");
    assert!(!spool.join("bob").exists());
    let _ = child.0.kill();
    let _ = child.0.wait();
}

/// Kills the child when dropped (a failed assertion leaves no daemon behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: Child) -> Guard {
    Guard(c)
}
