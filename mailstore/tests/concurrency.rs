//! Many writers into one mailbox (threads and processes), and processes killed mid-write.
//!
//! Child processes are this test executable run again with `MAILSTORE_CHILD` set, selecting
//! the ignored test `child`, which does the child's work.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mailstore::queue::{Envelope, Queue, QueueEntry, RcptState};
use mailstore::{spool::Spool, DeliveryId, MailboxName, Store};

const PER_WRITER: usize = 200;

/// A message that says who sent it and which it is, padded so that writes are not trivial,
/// and ended by a trailer that a partial file lacks.
fn message(writer: &str, seq: usize) -> Vec<u8> {
    let pad = "x".repeat(100 + (seq * 37) % 3000);
    format!("From: {writer}@example.org\nX-Seq: {seq}\n\n{pad}\nEND {writer} {seq}\n").into_bytes()
}

/// Checks a message is complete and returns (writer, seq).
fn parse(bytes: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(bytes).unwrap();
    let writer = text
        .strip_prefix("From: ")
        .and_then(|t| t.split('@').next())
        .unwrap_or_else(|| panic!("no From line in {text:?}"))
        .to_owned();
    let seq: usize = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("X-Seq: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        bytes,
        message(&writer, seq),
        "message is partial or altered"
    );
    (writer, seq)
}

fn spawn_child(mode: &str, vars: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MAILSTORE_CHILD", mode)
    .stdout(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[test]
#[ignore = "the child side of other tests; does nothing unless MAILSTORE_CHILD is set"]
fn child() {
    let Ok(mode) = env::var("MAILSTORE_CHILD") else {
        return;
    };
    let root = env::var("MAILSTORE_ROOT").unwrap();
    let id = env::var("MAILSTORE_ID").unwrap_or_default();
    let inbox = MailboxName::new("inbox").unwrap();
    match mode.as_str() {
        "deliver" => {
            let spool = Spool::open(&root).unwrap();
            for seq in 0..PER_WRITER {
                spool.deliver(&inbox, &message(&id, seq)).unwrap();
            }
        }
        "crash-loop" => {
            let spool = Spool::open(Path::new(&root).join("spool")).unwrap();
            let queue = Queue::open(Path::new(&root).join("queue")).unwrap();
            for seq in 0.. {
                spool.deliver(&inbox, &message(&id, seq)).unwrap();
                queue
                    .enqueue(&entry(&format!("{id}-{seq}")), &message(&id, seq))
                    .unwrap();
            }
        }
        "hold-claim" => {
            let queue = Queue::open(Path::new(&root).join("queue")).unwrap();
            let qid = id.parse().unwrap();
            // Another test's child, forked while the parent had the new entry open (and
            // locked) and not yet exec'ed, can hold that lock for a moment: look again for a
            // while, as a runner would. A claim never freed still fails the test.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut claim = loop {
                match queue.claim(&qid).unwrap() {
                    Some(c) => break c,
                    None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                    None => panic!("entry {qid} still busy after 5 s"),
                }
            };
            claim.record(0, RcptState::Delivered).unwrap();
            fs::write(Path::new(&root).join("claimed"), b"").unwrap();
            thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn entry(tag: &str) -> QueueEntry {
    QueueEntry::new(
        Envelope::parse(&format!(
            "MAIL FROM:<{tag}@example.org> RET=FULL ENVID={tag}\r\n\
             RCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\n"
        ))
        .unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
}

#[test]
fn eight_threads_and_four_processes_into_one_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let inbox = MailboxName::new("inbox").unwrap();
    let spool = Spool::open(dir.path()).unwrap();

    let children: Vec<Child> = (0..4)
        .map(|p| {
            let id = format!("proc{p}");
            spawn_child(
                "deliver",
                &[("MAILSTORE_ROOT", &root), ("MAILSTORE_ID", &id)],
            )
        })
        .collect();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            // Half share the test's store, half open their own (as separate programs would).
            let spool = if t % 2 == 0 {
                spool.clone()
            } else {
                Spool::open(dir.path()).unwrap()
            };
            let inbox = inbox.clone();
            thread::spawn(move || {
                for seq in 0..PER_WRITER {
                    spool
                        .deliver(&inbox, &message(&format!("thread{t}"), seq))
                        .unwrap();
                }
            })
        })
        .collect();
    // A reader, meanwhile, only ever sees complete messages with their status.
    let reader = {
        let spool = spool.clone();
        let inbox = inbox.clone();
        thread::spawn(move || {
            let mut checked = 0;
            while checked < 3000 {
                let list = spool.list(&inbox).unwrap();
                if list.len() == 12 * PER_WRITER {
                    break;
                }
                for n in list.iter().rev().take(20) {
                    parse(&spool.read(&inbox, *n).unwrap());
                    assert_eq!(spool.flags(&inbox, *n).unwrap(), vec!["\\Recent"]);
                    checked += 1;
                }
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    reader.join().unwrap();

    let total = 12 * PER_WRITER as u64;
    let list = spool.list(&inbox).unwrap();
    assert_eq!(
        list,
        (1..=total).collect::<Vec<_>>(),
        "numbers are exactly 1..N"
    );
    let mut seen = BTreeSet::new();
    for n in &list {
        let (writer, seq) = parse(&spool.read(&inbox, *n).unwrap());
        assert!(seen.insert((writer, seq)), "message delivered twice");
        assert_eq!(
            fs::read(spool.mailbox_path(&inbox).join(format!("{n}.status"))).unwrap(),
            b"\\Recent\n"
        );
    }
    let mut expected = BTreeSet::new();
    for w in (0..4)
        .map(|p| format!("proc{p}"))
        .chain((0..8).map(|t| format!("thread{t}")))
    {
        for seq in 0..PER_WRITER {
            expected.insert((w.clone(), seq));
        }
    }
    assert_eq!(seen, expected);

    // Delete the newest; the next delivery does not reuse its number, in this process or another.
    spool.delete(&inbox, total).unwrap();
    assert_eq!(
        spool.deliver(&inbox, b"after").unwrap(),
        DeliveryId::Spool(total + 1)
    );
    spool.delete(&inbox, total + 1).unwrap();
    let fresh = Spool::open(dir.path()).unwrap();
    assert_eq!(
        fresh.deliver(&inbox, b"again").unwrap(),
        DeliveryId::Spool(total + 2)
    );
    assert_eq!(fresh.list(&inbox).unwrap().len() as u64, total);
}

/// Every visible message is complete and has its status; returns the numbers.
fn check_spool(spool: &Spool, inbox: &MailboxName) -> Vec<u64> {
    let list = spool.list(inbox).unwrap();
    for n in &list {
        parse(&spool.read(inbox, *n).unwrap());
        assert_eq!(spool.flags(inbox, *n).unwrap(), vec!["\\Recent"]);
    }
    list
}

#[test]
fn killed_mid_delivery_leaves_no_partial_message_or_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let inbox = MailboxName::new("inbox").unwrap();
    let mut highest = 0;
    let mut kills_while_writing = 0;
    for round in 0..4u64 {
        let id = format!("round{round}");
        let mut child = spawn_child(
            "crash-loop",
            &[("MAILSTORE_ROOT", &root), ("MAILSTORE_ID", &id)],
        );
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        // Let it get going, reading what it writes meanwhile; then kill it at a varying moment.
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = highest + 20 + round * 7;
        loop {
            let list = check_spool(&spool, &inbox);
            if list.last().copied().unwrap_or(0) >= target || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        thread::sleep(Duration::from_micros(300 * round));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_none() {
            kills_while_writing += 1;
        }

        // Reopened: everything visible is whole, and delivery continues after the highest number.
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let list = check_spool(&spool, &inbox);
        let max = list.last().copied().unwrap();
        assert!(max >= target, "the child made progress");
        let queue = Queue::open(dir.path().join("queue")).unwrap();
        let entries = queue.list().unwrap();
        let mut queued = BTreeSet::new();
        for (qid, e) in &entries {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut queue.read_body(qid).unwrap(), &mut body).unwrap();
            let (writer, seq) = parse(&body);
            assert_eq!(
                e.envelope.from.to_string(),
                format!("<{writer}-{seq}@example.org>")
            );
            assert_eq!(e.envelope.rcpts.len(), 2);
            queued.insert((writer, seq));
        }
        // The child enqueues each message right after delivering it: all but at most the last
        // delivery of each killed child are in the queue, and nothing else is.
        let delivered: BTreeSet<_> = list
            .iter()
            .map(|n| parse(&spool.read(&inbox, *n).unwrap()))
            .collect();
        assert!(queued.is_subset(&delivered));
        assert!(delivered.len() - queued.len() <= round as usize + 1);
        assert_eq!(
            fs::read_dir(dir.path().join("queue/corrupt"))
                .unwrap()
                .count(),
            0
        );
        let DeliveryId::Spool(n) = spool
            .deliver(&inbox, &message("parent", round as usize))
            .unwrap()
        else {
            panic!("spool ids are numbers")
        };
        assert!(n > max, "number {n} reused (max was {max})");
        highest = n;
        queue
            .enqueue(
                &entry(&format!("parent-{round}")),
                &message("parent", round as usize),
            )
            .unwrap();
    }
    assert_eq!(
        kills_while_writing, 4,
        "the child was killed by the signal each time"
    );
}

#[test]
fn claim_excludes_other_processes_and_dies_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let queue = Queue::open(dir.path().join("queue")).unwrap();
    let id = queue.enqueue(&entry("held"), b"body").unwrap();
    let mut child = spawn_child(
        "hold-claim",
        &[("MAILSTORE_ROOT", &root), ("MAILSTORE_ID", id.as_str())],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("claimed").exists() {
        assert!(Instant::now() < deadline, "child never claimed");
        thread::sleep(Duration::from_millis(10));
    }
    let now = SystemTime::now();
    assert_eq!(queue.due(now).unwrap(), vec![id.clone()]);
    assert!(queue.claim(&id).unwrap().is_none(), "claimed by the child");
    child.kill().unwrap();
    child.wait().unwrap();
    // The dead child's claim is gone; what it recorded stays.
    let reopened = Queue::open(dir.path().join("queue")).unwrap();
    let claim = reopened.claim(&id).unwrap().expect("claimable again");
    assert_eq!(*claim.entry().state(0), RcptState::Delivered);
    assert_eq!(*claim.entry().state(1), RcptState::Pending);
    assert_eq!(claim.entry().attempts, 0);
}
