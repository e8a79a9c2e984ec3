//! End-to-end: the queue tool (`smtp-server queue ...`, the built binary) on the queue of a
//! running daemon with deferred, held and expired entries.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use daemon_util::{queued, raw_peer, spool_messages, wait_until, Daemon, Net, PeerBehaviour, BIN};
use serde_json::Value;

/// Runs `smtp-server queue -d <spool> ARGS`: (exit code, stdout, stderr).
fn tool(spool: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("queue")
        .arg("-d")
        .arg(spool)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn list_json(spool: &Path) -> Vec<Value> {
    let (code, out, err) = tool(spool, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["entries"].as_array().unwrap().clone()
}

fn entry(spool: &Path, id: &str) -> Option<Value> {
    list_json(spool).into_iter().find(|e| e["id"] == id)
}

/// Sends one message from `from` to `to` through the daemon; returns its queue id.
fn send(d: &Daemon, from: &str, to: &str, subject: &str) -> String {
    let msg =
        format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nThe body of {subject}.\r\n");
    let r = d.connect().send(from, &[to], &msg);
    assert_eq!(r.0, 250, "{r:?}");
    r.1.rsplit(' ').next().unwrap().to_owned()
}

/// Waits until entry `id` has had `n` attempts (and is not being delivered).
fn wait_attempts(d: &Daemon, id: &str, n: u64) {
    assert!(
        wait_until(Duration::from_secs(30), || entry(&d.spool, id)
            .is_some_and(|e| e["attempts"] == n)),
        "{id} never had {n} attempts: {}",
        d.log()
    );
}

fn mailbox(spool: &Path, user: &str) -> Vec<String> {
    spool_messages(spool, user)
        .into_iter()
        .map(|(_, m)| String::from_utf8_lossy(&m).into_owned())
        .collect()
}

/// Moves an entry's arrival `days` back (the entry is idle: its next attempt is an hour
/// away), replacing its file atomically as the queue does (the header of a one-file entry,
/// or the `envelope` of an entry directory from the previous version).
fn age_entry(spool: &Path, id: &str, days: u64) {
    let entries = spool.join(".queue").join("entries");
    let path = entries.join(id);
    let then = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * 86_400;
    let age = |header: &str| -> String {
        header
            .lines()
            .map(|l| {
                if l.starts_with("created ") {
                    format!("created {then}.000000000\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    if path.is_dir() {
        let text = std::fs::read_to_string(path.join("envelope")).unwrap();
        std::fs::write(path.join(".tmp.test"), age(&text)).unwrap();
        std::fs::rename(path.join(".tmp.test"), path.join("envelope")).unwrap();
        return;
    }
    let bytes = std::fs::read(&path).unwrap();
    let end = bytes.windows(5).position(|w| w == b"\nend\n").unwrap() + 5;
    let mut new = age(std::str::from_utf8(&bytes[..end]).unwrap()).into_bytes();
    new.extend_from_slice(&bytes[end..]);
    let tmp = spool.join(".queue").join("tmp").join("aged.test");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

#[test]
fn queue_tool_on_a_live_queue() {
    // remote.test (the peer) answers 451 to the first three messages, then accepts;
    // tempfail.test (127.0.0.3) defers every recipient, for ever, with a terminal escape in
    // its reply (which the tool must not print raw).
    let net = Net::start(
        PeerBehaviour {
            fail_first: 3,
            ..Default::default()
        },
        false,
    );
    raw_peer(
        ([127, 0, 0, 3], net.peer_port).into(),
        "451 4.3.0 try again\x1b[2J later\r\n",
        None,
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    // Retries an hour apart: whatever is tried again within seconds was flushed.
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1h",
        ],
    );

    // An empty queue.
    let (code, out, _) = tool(&spool, &["list"]);
    assert_eq!((code, out.as_str()), (0, "Mail queue is empty\n"));
    assert!(list_json(&spool).is_empty());

    let one = send(&d, "alice@example.test", "dave@remote.test", "one");
    let two = send(&d, "alice@example.test", "erin@remote.test", "two");
    let held = send(&d, "alice@example.test", "frank@remote.test", "held");
    let old = send(&d, "alice@example.test", "gina@tempfail.test", "old");
    for id in [&one, &two, &held, &old] {
        wait_attempts(&d, id, 1);
    }
    assert_eq!(*net.attempts.lock().unwrap(), 3);
    assert!(net.got().is_empty());

    // hold; and the arrival of `old` six days back: past the daemon's 5-day lifetime.
    let (code, out, err) = tool(&spool, &["hold", &held]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("{held}: on hold").as_str()),
        "{err}"
    );
    age_entry(&spool, &old, 6);

    // list: every entry, its recipients with state and last reply, the held one as held.
    let (code, out, _) = tool(&spool, &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("QUEUE ID"), "{out}");
    for id in [&one, &two, &held, &old] {
        assert!(out.contains(id.as_str()), "{out}");
    }
    let block = |id: &str| -> String {
        let start = out.find(id).unwrap();
        out[start..].split("\n\n").next().unwrap().to_owned()
    };
    assert!(block(&one).contains("<alice@example.test>"), "{out}");
    assert!(
        block(&one).contains("pending    dave@remote.test  (451 4.3.0 not now)"),
        "{out}"
    );
    assert!(block(&held).contains("  held  "), "{out}");
    assert!(block(&old).contains("[expired"), "{out}");
    assert!(
        block(&old).contains("gina@tempfail.test  (451 4.3.0 try again\\x1b[2J later)"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(!block(&two).contains("expired"), "{out}");
    assert!(out.contains("-- 4 entries, "), "{out}");
    assert!(
        out.trim_end().ends_with("bytes (1 held, 1 expired)"),
        "{out}"
    );

    // --json: the same, for a script.
    let e = entry(&spool, &one).unwrap();
    assert_eq!(e["state"], "queued");
    assert_eq!(e["sender"], "alice@example.test");
    assert_eq!(e["attempts"], 1);
    assert_eq!(e["expired"], false);
    assert!(e["size"].as_u64().unwrap() > 50);
    assert!(e["next_attempt"].as_str().unwrap().ends_with('Z'));
    assert!(e["age_seconds"].as_u64().unwrap() < 600);
    assert_eq!(e["recipients"][0]["address"], "dave@remote.test");
    assert_eq!(e["recipients"][0]["state"], "pending");
    assert_eq!(e["recipients"][0]["reply"], "451 4.3.0 not now");
    let h = entry(&spool, &held).unwrap();
    assert_eq!(
        (&h["state"], &h["next_attempt"]),
        (&"held".into(), &Value::Null)
    );
    let o = entry(&spool, &old).unwrap();
    assert_eq!(o["expired"], true);
    assert!(o["age_seconds"].as_u64().unwrap() >= 6 * 86_400 - 60);
    assert_eq!(
        o["recipients"][0]["reply"],
        "451 4.3.0 try again\u{1b}[2J later"
    );
    let (_, raw, _) = tool(&spool, &["list", "--json"]);
    assert!(raw.contains("again\\u001b[2J"), "{raw}");

    // show: envelope and headers, not the body.
    let (code, out, _) = tool(&spool, &["show", &one]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("Queue ID:     {one}")), "{out}");
    assert!(out.contains("Sender:       <alice@example.test>"), "{out}");
    assert!(
        out.contains("Recipient:    <dave@remote.test>  pending  (451 4.3.0 not now)"),
        "{out}"
    );
    assert!(out.contains("Attempts:     1"), "{out}");
    assert!(out.contains("\nSubject: one\n"), "{out}");
    assert!(out.contains("Received: from client.test"), "{out}");
    assert!(!out.contains("The body of"), "{out}");
    let (code, out, _) = tool(&spool, &["show", &held, "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "held");
    assert!(v["headers"].as_str().unwrap().contains("Subject: held\r\n"));
    assert!(!v["headers"].as_str().unwrap().contains("The body"));

    // Unknown ids: exit 1, one line on stderr; a wrong directory: exit 2.
    let (code, out, err) = tool(&spool, &["show", "1.2.3"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(tool(&spool, &["delete", "1.2.3"]).0, 1);
    assert_eq!(tool(&spool, &["release", &one]).0, 1, "not on hold");
    let (code, _, err) = tool(&dir.path().join("nothing"), &["list"]);
    assert_eq!(code, 2);
    assert!(err.contains("no queue there"), "{err}");

    // flush ID: the running daemon delivers it within seconds, not in an hour.
    let t = Instant::now();
    let (code, out, _) = tool(&spool, &["flush", &one]);
    assert_eq!((code, out.trim()), (0, format!("{one}: due now").as_str()));
    assert!(
        wait_until(Duration::from_secs(30), || net
            .got()
            .iter()
            .any(|g| g.rcpts == ["<dave@remote.test>"])),
        "{}",
        d.log()
    );
    // "Within seconds": generous bounds for a loaded machine, far below the hour of
    // --retry-base that a missed flush would take.
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(30), || entry(&spool, &one).is_none()));

    // flush (all): `two` is delivered, `old` is tried, deferred, and returned as expired;
    // the held entry is not attempted, though it was due.
    let (code, out, _) = tool(&spool, &["flush"]);
    assert_eq!(code, 0);
    assert!(!out.contains(held.as_str()), "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || net
            .got()
            .iter()
            .any(|g| g.rcpts == ["<erin@remote.test>"])),
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || mailbox(&spool, "alice")
            .iter()
            .any(|m| m.contains("gina@tempfail.test"))),
        "{}",
        d.log()
    );
    let b = mailbox(&spool, "alice");
    assert_eq!(b.len(), 1, "{b:#?}");
    assert!(b[0].contains("Status: 4.4.7"), "{}", b[0]);
    // The log says when a deferred entry is tried next, and says expiry as expiry.
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains(": deferred queue_id=")
            && l.contains(" next_attempt=20")
            && l.contains(" expires=20")),
        "{log}"
    );
    assert!(
        log.contains("expired: delivery time is over, returning to the sender"),
        "{log}"
    );
    assert!(entry(&spool, &old).is_none());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!net.got().iter().any(|g| g.rcpts == ["<frank@remote.test>"]));
    assert_eq!(entry(&spool, &held).unwrap()["attempts"], 1);
    // flush ID of a held entry: left on hold, exit 1.
    assert_eq!(tool(&spool, &["flush", &held]).0, 1);

    // release: due now, delivered within seconds.
    let (code, out, _) = tool(&spool, &["release", &held]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("{held}: released, due now").as_str())
    );
    assert!(
        wait_until(Duration::from_secs(30), || net
            .got()
            .iter()
            .any(|g| g.rcpts == ["<frank@remote.test>"])),
        "{}",
        d.log()
    );

    // bounce: the sender gets a report now, the entry goes. Three recipients with long local
    // parts: each one's diagnostic still has the reason it was deferred for.
    let long: Vec<String> = ["hank", "hans", "hugo"]
        .iter()
        .map(|n| format!("{n}{}@tempfail.test", "x".repeat(200)))
        .collect();
    let to: Vec<&str> = long.iter().map(String::as_str).collect();
    let r = d.connect().send(
        "alice@example.test",
        &to,
        "From: alice@example.test\r\nSubject: back\r\n\r\nback\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    let back = r.1.rsplit(' ').next().unwrap().to_owned();
    wait_attempts(&d, &back, 1);
    let (code, out, _) = tool(&spool, &["bounce", &back]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || mailbox(&spool, "alice").len()
            == 2),
        "{}",
        d.log()
    );
    let b = mailbox(&spool, "alice").pop().unwrap();
    let unfolded = b.replace("\r\n ", " ").replace("\r\n\t", " ");
    for a in &long {
        assert!(
            unfolded.contains(&format!("Final-Recipient: rfc822; {a}")),
            "{b}"
        );
    }
    assert_eq!(b.matches("Status: 5.0.0").count(), 3, "{b}");
    assert_eq!(
        unfolded
            .matches(
                "returned to the sender by the mail administrator; last error: 451 4.3.0 try again"
            )
            .count(),
        // Each recipient's in the notification and in its Diagnostic-Code.
        6,
        "{b}"
    );
    // Its own reason, not the entry's summary naming the others.
    assert!(!unfolded.contains("(for "), "{b}");
    assert!(b.contains("Subject: back"), "{b}");
    assert!(wait_until(Duration::from_secs(30), || entry(&spool, &back).is_none()));

    // bounce of a message from the null sender: no report to anyone, the entry goes.
    let mut c = d.connect();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<ivan@tempfail.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let r = c.cmd("Subject: from nobody\r\n\r\nx\r\n.");
    assert_eq!(r.0, 250, "{r:?}");
    let null = r.1.rsplit(' ').next().unwrap().to_owned();
    wait_attempts(&d, &null, 1);
    assert_eq!(tool(&spool, &["bounce", &null]).0, 0);
    assert!(wait_until(Duration::from_secs(30), || entry(&spool, &null).is_none()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mailbox(&spool, "alice").len(), 2);
    assert!(
        d.log()
            .contains("no bounce: the failed message has the null sender"),
        "{}",
        d.log()
    );

    // delete ID, then delete --all (held entries included); nothing is sent or bounced.
    let a = send(&d, "alice@example.test", "judy@tempfail.test", "a");
    let b = send(&d, "alice@example.test", "kim@tempfail.test", "b");
    let c = send(&d, "alice@example.test", "lee@tempfail.test", "c");
    for id in [&a, &b, &c] {
        wait_attempts(&d, id, 1);
    }
    assert_eq!(tool(&spool, &["hold", &c]).0, 0);
    let (code, out, _) = tool(&spool, &["delete", &a, "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"], "delete");
    assert_eq!(v["entries"][0]["result"], "done");
    assert!(entry(&spool, &a).is_none());
    let (code, out, _) = tool(&spool, &["delete", "--all"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{b}: deleted")), "{out}");
    assert!(out.contains(&format!("{c}: deleted")), "{out}");
    assert_eq!(tool(&spool, &["list"]).1, "Mail queue is empty\n");
    assert_eq!(queued(&spool), 0);
    assert_eq!(mailbox(&spool, "alice").len(), 2);
    // Each change is in the running daemon's log, as Postfix's postsuper logs its removals.
    let uid = rustix::process::getuid().as_raw();
    for (action, id, result) in [
        ("hold", &c, "\"on hold\""),
        ("delete", &a, "deleted"),
        ("delete", &b, "deleted"),
        ("delete", &c, "deleted"),
    ] {
        let want = format!("queue tool: action={action} queue_id={id} result={result} uid={uid}");
        assert!(
            wait_until(Duration::from_secs(10), || d.log().contains(&want)),
            "{want}\n{}",
            d.log()
        );
    }
}

#[test]
fn an_entry_being_delivered_is_not_changed() {
    // mx.slow.test (127.0.0.2) takes the message and never answers the final dot: the
    // daemon holds the entry's claim for the whole data timeout.
    let net = Net::start(PeerBehaviour::default(), false);
    let dots = raw_peer(
        ([127, 0, 0, 2], net.peer_port).into(),
        "250 ok\r\n",
        None,
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let id = send(&d, "alice@example.test", "x@slow.test", "stuck");
    assert!(wait_until(Duration::from_secs(20), || dots
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1));
    for action in ["delete", "hold", "flush", "bounce"] {
        let (code, out, err) = tool(&spool, &[action, &id]);
        assert_eq!(code, 75, "{action}: {out} {err}");
        assert!(err.contains("being delivered now, try again"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // In bulk: delete --all leaves it and says so (75); flush counts it as being tried.
    let (code, _, err) = tool(&spool, &["delete", "--all"]);
    assert_eq!(code, 75, "{err}");
    assert_eq!(tool(&spool, &["flush"]).0, 0);
    // Nothing changed: still there, not on hold, still the one attempt under way, and the
    // listing says so.
    let e = entry(&spool, &id).unwrap();
    assert_eq!(
        (&e["state"], &e["attempts"]),
        (&"delivering".into(), &0.into())
    );
    assert_eq!(queued(&spool), 1);
    let (code, out, _) = tool(&spool, &["list"]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with(id.as_str())).unwrap();
    assert!(
        row.contains("  being delivered now  <alice@example.test>"),
        "{out}"
    );
}

#[test]
fn the_tool_run_as_root_keeps_the_queue_readable_for_a_daemon_that_is_not() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // A daemon running as `nobody` (as the contrib unit runs it as `smtpd`), the tool as
    // root (`sudo smtp-server queue ...`). Root only.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root || Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIPPED: needs root and setpriv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("mail");
    std::fs::create_dir(&spool).unwrap();
    let chown = Command::new("chown")
        .args(["nobody:", &spool.display().to_string()])
        .status()
        .unwrap();
    assert!(chown.success());
    let port = daemon_util::free_port();
    let log = dir.path().join("log");
    std::fs::write(&log, "").unwrap();
    std::os::unix::fs::chown(&log, Some(65534), None).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=65534", "--clear-groups", BIN])
            .args(["-d", &spool.display().to_string(), "-s", "example.test"])
            .args([
                "--hostname",
                "mx.example.test",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--no-public", "--dns-server", "127.0.0.1:1"])
            // Nothing listens there: every attempt is deferred, retried within seconds.
            .args(["--relay-host", "127.0.0.1:1", "--retry-base", "1s"])
            .args(["--log-file", &log.display().to_string()])
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let mut c = daemon_util::Smtp::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let r = c.send(
        "alice@example.test",
        &["far@remote.test"],
        "Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    let id = r.1.rsplit(' ').next().unwrap().to_owned();
    let attempts = |spool: &Path| entry(spool, &id).map_or(0, |e| e["attempts"].as_u64().unwrap());
    assert!(wait_until(Duration::from_secs(20), || attempts(&spool) >= 1));
    // Rewritten by the tool as root: hold, release.
    assert_eq!(tool(&spool, &["hold", &id]).0, 0);
    let (code, out, err) = tool(&spool, &["release", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let after = attempts(&spool);
    // Every file the tool wrote belongs to the queue's owner, not to root.
    for sub in ["entries", ""] {
        for f in std::fs::read_dir(spool.join(".queue").join(sub)).unwrap() {
            let f = f.unwrap();
            let m = f.metadata().unwrap();
            assert_eq!(
                m.uid(),
                65534,
                "{} is owned by {}",
                f.path().display(),
                m.uid()
            );
        }
    }
    // And the daemon goes on trying it.
    assert!(
        wait_until(Duration::from_secs(20), || attempts(&spool) > after),
        "not tried after the release: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn damaged_entries_are_reported_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    for d in ["entries", "held", "tmp", "trash", "corrupt"] {
        std::fs::create_dir_all(spool.join(".queue").join(d)).unwrap();
    }
    let id = "1796358099.000000001.1.1";
    std::fs::write(spool.join(".queue/entries").join(id), "garbage\n").unwrap();
    let (code, out, err) = tool(&spool, &["list"]);
    assert_eq!(code, 0, "{err}");
    // Moved aside (as the daemon would), and said so: on stderr now, in every list after.
    assert!(spool.join(".queue/corrupt").join(id).exists());
    assert!(
        err.starts_with("ERROR corrupt queue entry moved aside queue_id=1796358099.000000001.1.1 "),
        "{err}"
    );
    let corrupt = spool.join(".queue/corrupt").display().to_string();
    assert_eq!(
        out,
        format!(
            "Mail queue is empty\n-- 1 damaged entry set aside in {corrupt} (not delivered; the log says why)\n"
        )
    );
    let (_, out, err) = tool(&spool, &["list"]);
    assert!(err.is_empty(), "{err}");
    let note =
        format!("-- 1 damaged entry set aside in {corrupt} (not delivered; the log says why)\n");
    assert!(out.ends_with(&note), "{out}");
}
