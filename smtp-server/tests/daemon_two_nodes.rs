//! Two daemons sharing storage, as two nodes behind MX priorities on a shared file system
//! would: separate listeners, one spool (numbered and Maildir) and one queue directory.
//! Concurrent deliveries into the same mailboxes get unique numbers and none is lost; two
//! queue runners on one queue never send an entry twice.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use daemon_util::{spool_messages, wait_until, Daemon, Net, PeerBehaviour};

/// Sends `n` messages to each of `rcpts` through `d`, from several threads; each message's
/// body names the node and its number.
fn flood(d: &Daemon, node: &str, n: usize, rcpts: &'static [&'static str]) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in (t..n).step_by(4) {
                    let mut c = d.connect();
                    let body = format!("Subject: {node} {i}\r\n\r\nfrom {node} number {i}\r\n");
                    let (code, text) = c.send("sender@example.test", rcpts, &body);
                    assert_eq!(code, 250, "{text}");
                }
            });
        }
    });
}

fn maildir_messages(spool: &Path, user: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(spool.join(user).join(sub)) {
            for e in rd {
                out.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
    }
    out
}

fn bodies(messages: &[Vec<u8>]) -> HashSet<String> {
    messages
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            text.rsplit("\r\n\r\n").next().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn two_nodes_share_one_spool_and_one_queue() {
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    // The next hop defers the first 20 messages, so both runners find due retries.
    let net = Net::start(
        PeerBehaviour {
            fail_first: 20,
            ..PeerBehaviour::default()
        },
        false,
    );
    let spool = dir.path().join("mail");
    let peer_port = net.peer_port.to_string();
    let node = |extra: &[&str]| {
        let mut args = vec!["--remote-port", &peer_port, "--retry-base", "1s"];
        args.extend_from_slice(extra);
        Daemon::start(&spool, net.dns.addr(), &args)
    };
    let a = node(&[]);
    let b = node(&[]);
    std::thread::scope(|s| {
        s.spawn(|| flood(&a, "a", N, &["alice@example.test", "bob@example.test"]));
        s.spawn(|| flood(&b, "b", N, &["alice@example.test", "carol@remote.test"]));
    });
    // Local: alice got all 2N with 2N distinct numbers 1..=2N, bob N.
    let alice = spool_messages(&spool, "alice");
    assert_eq!(alice.len(), 2 * N);
    let numbers: HashSet<u64> = alice.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=2 * N as u64).collect());
    let got = bodies(&alice.into_iter().map(|(_, m)| m).collect::<Vec<_>>());
    assert_eq!(got.len(), 2 * N, "a message is missing or doubled");
    assert_eq!(spool_messages(&spool, "bob").len(), N);
    // Remote: every one of node b's N messages reaches the next hop exactly once, whichever
    // runner took it (the first 20 attempts were deferred and retried).
    assert!(
        wait_until(Duration::from_secs(60), || net.got().len() >= N
            && daemon_util::queued(&spool) == 0),
        "relayed {} of {N}, {} queued\n{}\n{}",
        net.got().len(),
        daemon_util::queued(&spool),
        a.log(),
        b.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let relayed = net.got();
    let unique = bodies(&relayed.iter().map(|g| g.body.clone()).collect::<Vec<_>>());
    assert_eq!(relayed.len(), N, "an entry was sent twice");
    assert_eq!(unique.len(), N);
    // Each delivery logged once, by the runner that made it.
    let delivered_by = |d: &Daemon| d.log().matches(": delivered queue_id=").count();
    assert_eq!(
        delivered_by(&a) + delivered_by(&b),
        N,
        "{} + {}",
        delivered_by(&a),
        delivered_by(&b)
    );
}

#[test]
fn two_nodes_share_one_maildir_tree() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let a = Daemon::start(&spool, "127.0.0.1:1".parse().unwrap(), &["-f", "maildir"]);
    let b = Daemon::start(&spool, "127.0.0.1:1".parse().unwrap(), &["-f", "maildir"]);
    std::thread::scope(|s| {
        s.spawn(|| flood(&a, "a", N, &["alice@example.test"]));
        s.spawn(|| flood(&b, "b", N, &["alice@example.test"]));
    });
    let m = maildir_messages(&spool, "alice");
    assert_eq!(m.len(), 2 * N);
    assert_eq!(bodies(&m).len(), 2 * N);
    let names: HashSet<_> = std::fs::read_dir(spool.join("alice/new"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2 * N, "two messages got one name");
}
