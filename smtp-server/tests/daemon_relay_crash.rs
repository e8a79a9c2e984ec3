//! Durability of the relay path with every throughput optimisation on (connection cache,
//! hand-off to the runner, one-file queue entries): kill -9 while the relay is in the middle
//! of a batch to a slow next hop, restart, and every message that got a `250` reaches the
//! next hop at least once.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daemon_util::{queued, wait_until, Daemon, Net, PeerBehaviour};

/// The `Subject: r<n>` of a message the peer got.
fn number(body: &[u8]) -> Option<usize> {
    let t = String::from_utf8_lossy(body);
    t.split("Subject: r")
        .nth(1)?
        .split("\r\n")
        .next()?
        .parse()
        .ok()
}

#[test]
fn kill_9_mid_batch_to_a_slow_next_hop_loses_nothing_acknowledged() {
    // The next hop takes 400 ms to answer each final dot: deliveries pile up in flight.
    let net = Net::start(
        PeerBehaviour {
            delay: Duration::from_millis(400),
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let mut d = Daemon::start(
        &spool,
        net.dns.addr(),
        &[
            "--remote-port",
            &net.peer_port.to_string(),
            "--retry-base",
            "1s",
            "--destination-concurrency",
            "4",
        ],
    );
    let port = d.port;
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    // Four clients, each sending on one session until the daemon dies under it.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let _ = std::panic::catch_unwind(|| {
                    let mut c = daemon_util::Smtp::connect(([127, 0, 0, 1], port).into());
                    for i in 0..30 {
                        let n = t * 1000 + i;
                        let body = format!("Subject: r{n}\r\n\r\n{}", "line\r\n".repeat(50));
                        let r = c.send("alice@example.test", &["dave@remote.test"], &body);
                        if r.0 != 250 {
                            return;
                        }
                        acked.lock().unwrap().push(n);
                        c.cmd("RSET");
                    }
                });
            })
        })
        .collect();
    // Mid-batch: the peer has some, many more are acknowledged and queued or in flight.
    assert!(
        wait_until(Duration::from_secs(30), || net.got().len() >= 4
            && acked.lock().unwrap().len() >= net.got().len() + 20),
        "{}",
        d.log()
    );
    d.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    let before_restart = net.got().len();
    assert!(
        before_restart < acked.len(),
        "the kill came after the batch: {before_restart} of {}",
        acked.len()
    );
    assert!(queued(&spool) > 0, "nothing left in the queue at the kill");

    let d2 = d.restart();
    let missing = || {
        let got: HashSet<usize> = net.got().iter().filter_map(|g| number(&g.body)).collect();
        acked
            .iter()
            .copied()
            .filter(|n| !got.contains(n))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(60), || missing().is_empty()),
        "acknowledged but never delivered: {:?} (of {})\n{}",
        missing(),
        acked.len(),
        d2.log()
    );
    // And the queue drains: nothing is stuck (what was not acknowledged may be delivered too).
    assert!(
        wait_until(Duration::from_secs(30), || queued(&spool) == 0),
        "{}",
        d2.log()
    );
    // Nothing arrived that nobody sent, and every message arrived whole.
    for g in net.got() {
        let n = number(&g.body).unwrap_or_else(|| {
            panic!(
                "not a numbered message: {:?} from {} to {:?}\n{}",
                String::from_utf8_lossy(&g.body),
                g.from,
                g.rcpts,
                d2.log()
            )
        });
        assert!(n % 1000 < 30, "{n}");
        let body = String::from_utf8(g.body.clone()).unwrap();
        assert!(body.ends_with(&"line\r\n".repeat(50)), "{body}");
    }
}

/// Entries the previous version queued (a directory per entry, `body` and `envelope`) are
/// delivered by this one, beside new one-file entries.
#[test]
fn entries_queued_by_the_previous_version_are_delivered() {
    use mailstore::queue::{Envelope, Queue, QueueEntry};
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    {
        let q = Queue::open(spool.join(".queue")).unwrap();
        for n in 0..3 {
            let entry = QueueEntry::new(
                Envelope::parse("MAIL FROM:<alice@example.test>\r\nRCPT TO:<dave@remote.test>\r\n")
                    .unwrap(),
                std::time::SystemTime::now(),
            );
            let body = format!("Subject: r{n}\r\nMessage-ID: <{n}@old>\r\n\r\nold\r\n");
            let id = q.enqueue_v1(&entry, body.as_bytes()).unwrap();
            assert!(spool.join(".queue/entries").join(id.as_str()).is_dir());
        }
    }
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    let mut c = d.connect();
    let body = "Subject: r3\r\n\r\nnew\r\n";
    assert_eq!(
        c.send("alice@example.test", &["dave@remote.test"], body).0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(30), || net.got().len() == 4),
        "{}",
        d.log()
    );
    let mut got: Vec<usize> = net.got().iter().filter_map(|g| number(&g.body)).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);
    for g in net.got() {
        let b = String::from_utf8(g.body).unwrap();
        assert!(b.ends_with("old\r\n") || b.ends_with("new\r\n"), "{b}");
    }
    assert!(wait_until(Duration::from_secs(30), || queued(&spool) == 0));
}

/// A steady stream of new messages (each handed to the runner at once) does not keep the
/// runner from seeing an operator's `queue flush` of an entry that waits for its retry.
#[test]
fn a_flush_is_seen_while_new_mail_streams_through() {
    // The first message is deferred (451), every later one accepted.
    let net = Net::start(
        PeerBehaviour {
            fail_first: 1,
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
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
    let mut c = d.connect();
    let first = "Subject: r0\r\n\r\nwaits for its retry\r\n";
    let r = c.send("alice@example.test", &["dave@remote.test"], first);
    assert_eq!(r.0, 250, "{r:?}");
    let id = r.1.rsplit(' ').next().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || d.log().contains("deferred")),
        "{}",
        d.log()
    );
    // New mail every 20 ms, for the rest of the test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = d.port;
    let streamer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 2000 {
                // A session per message (a long session meets the per-session limits); a
                // failed one is only load that did not happen (the machine may be busy).
                let _ = std::panic::catch_unwind(|| {
                    let mut c = daemon_util::Smtp::connect(([127, 0, 0, 1], port).into());
                    let body = format!("Subject: r{n}\r\n\r\nstream\r\n");
                    c.send("alice@example.test", &["dave@remote.test"], &body);
                    c.cmd("QUIT");
                });
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let out = std::process::Command::new(daemon_util::BIN)
        .args(["queue", "-d", &spool.display().to_string(), "flush", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let first_arrived = || net.got().iter().any(|g| number(&g.body) == Some(0));
    let ok = wait_until(Duration::from_secs(30), first_arrived);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    streamer.join().unwrap();
    assert!(ok, "the flushed entry was not tried\n{}", d.log());
}
