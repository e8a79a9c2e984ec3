//! Queue entries written before the envelope was typed (versions 1 and 2: the sender,
//! recipients and DSN parameters as text fields) are delivered with the same sender,
//! recipients, NOTIFY, ORCPT, RET and ENVID; an entry whose stored sender or recipient does
//! not parse is moved to `corrupt/` and logged, never delivered as something else (a sender
//! that does not parse used to become `<>`, which silenced its bounces).
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::path::Path;
use std::time::Duration;

use daemon_util::{queued, wait_until, Daemon, Net, PeerBehaviour};
use smtp_server::smtp_proto::envelope::Envelope;
use smtp_server::smtp_proto::param::{Notify, Ret};

/// The header fields every old entry starts with (due long ago).
const TIMES: &str = "created 1700000000.000000000\nattempts 0\nnext-attempt 1700000000.000000000\n";

/// A version 1 entry: a directory with `envelope` and `body`.
fn write_v1(queue: &Path, id: &str, envelope: &str, body: &str) {
    let dir = queue.join("entries").join(id);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("body"), body).unwrap();
    std::fs::write(
        dir.join("envelope"),
        format!("mailstore-queue 1\n{TIMES}{envelope}end\n"),
    )
    .unwrap();
}

/// A version 2 entry: one file, the header then the body.
fn write_v2(queue: &Path, id: &str, envelope: &str, body: &str) {
    let text = format!(
        "mailstore-queue 2\n{TIMES}{envelope}body-size {}\nend\n{body}",
        body.len()
    );
    std::fs::write(queue.join("entries").join(id), text).unwrap();
}

fn open_queue(spool: &Path) -> std::path::PathBuf {
    let queue = spool.join(".queue");
    drop(mailstore::queue::Queue::open(&queue).unwrap());
    queue
}

/// The message the peer got whose body ends with `tail`.
fn got_with(net: &Net, tail: &str) -> Envelope {
    net.got()
        .into_iter()
        .find(|g| g.body.ends_with(tail.as_bytes()))
        .map(|g| g.envelope)
        .unwrap_or_else(|| panic!("no message ending {tail:?}"))
}

#[test]
fn old_entries_are_delivered_with_their_typed_envelope() {
    let net = Net::start(
        PeerBehaviour {
            dsn: true,
            ..Default::default()
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let queue = open_queue(&spool);
    // Values as daemons before version 3 stored them: addresses without brackets, ENVID and
    // the ORCPT address decoded, NOTIFY as its keyword list.
    write_v1(
        &queue,
        "1700000000.000000000.1.0",
        "sender alice@example.test\nret HDRS\nenvid QQ 3+1\n\
         rcpt dave@remote.test\nnotify FAILURE,DELAY\norcpt rfc822;Dave+x@remote.test\nstate pending\n\
         rcpt erin@remote.test\nstate pending\n",
        "Subject: v1\r\n\r\nversion one\r\n",
    );
    write_v2(
        &queue,
        "1700000000.000000000.2.0",
        "sender \"b b\"@example.test\nret FULL\n\
         rcpt frank@remote.test\nnotify NEVER\norcpt utf-8;frank@remote.test\nstate pending\n\
         rcpt gina@remote.test\nstate delivered\n",
        "Subject: v2\r\n\r\nversion two\r\n",
    );
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    assert!(
        wait_until(Duration::from_secs(30), || net.got().len() == 2),
        "{}",
        d.log()
    );

    let v1 = got_with(&net, "version one\r\n");
    assert_eq!(v1.from.to_string(), "<alice@example.test>");
    assert_eq!(v1.ret, Some(Ret::Hdrs));
    assert_eq!(v1.envid.as_ref().unwrap().decode(), "QQ 3+1");
    assert_eq!(v1.rcpts.len(), 2);
    assert_eq!(v1.rcpts[0].path.to_string(), "<dave@remote.test>");
    assert_eq!(
        v1.rcpts[0].notify,
        Some(Notify {
            success: false,
            failure: true,
            delay: true
        })
    );
    let orcpt = v1.rcpts[0].orcpt.as_ref().unwrap();
    assert_eq!(orcpt.addr_type(), "rfc822");
    assert_eq!(orcpt.addr().decode(), "Dave+x@remote.test");
    assert_eq!(v1.rcpts[1].path.to_string(), "<erin@remote.test>");
    assert_eq!((v1.rcpts[1].notify, &v1.rcpts[1].orcpt), (None, &None));

    let v2 = got_with(&net, "version two\r\n");
    assert_eq!(v2.from.to_string(), "<\"b b\"@example.test>");
    assert_eq!(v2.ret, Some(Ret::Full));
    assert_eq!(v2.envid, None);
    // gina was delivered before: only frank is sent to.
    assert_eq!(v2.rcpts.len(), 1);
    assert_eq!(v2.rcpts[0].path.to_string(), "<frank@remote.test>");
    assert_eq!(v2.rcpts[0].notify, Some(Notify::NEVER));
    assert_eq!(v2.rcpts[0].orcpt.as_ref().unwrap().addr_type(), "utf-8");

    assert!(wait_until(Duration::from_secs(30), || queued(&spool) == 0));
    assert!(!d.log().contains("corrupt"), "{}", d.log());
}

#[test]
fn an_entry_whose_sender_or_recipient_does_not_parse_is_set_aside() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let queue = open_queue(&spool);
    let bad_sender = "1700000000.000000000.3.0";
    let bad_rcpt = "1700000000.000000000.4.0";
    let bad_notify = "1700000000.000000000.5.0";
    write_v2(
        &queue,
        bad_sender,
        "sender alice@@example.test\nrcpt dave@remote.test\nstate pending\n",
        "Subject: bad sender\r\n\r\nbad\r\n",
    );
    write_v1(
        &queue,
        bad_rcpt,
        "sender alice@example.test\nrcpt dave@remote test\nstate pending\n",
        "Subject: bad recipient\r\n\r\nbad\r\n",
    );
    write_v2(
        &queue,
        bad_notify,
        "sender alice@example.test\nrcpt dave@remote.test\nnotify SOMETIMES\nstate pending\n",
        "Subject: bad notify\r\n\r\nbad\r\n",
    );
    let d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &net.peer_port.to_string()],
    );
    // A good message after them: once it is delivered, the runner has seen the bad ones.
    let mut c = d.connect();
    assert_eq!(
        c.send(
            "alice@example.test",
            &["dave@remote.test"],
            "Subject: good\r\n\r\ngood\r\n"
        )
        .0,
        250
    );
    assert!(
        wait_until(Duration::from_secs(30), || !net.got().is_empty()
            && queued(&spool) == 0),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let got = net.got();
    assert_eq!(got.len(), 1, "{}", d.log());
    assert!(got[0].body.ends_with(b"good\r\n"));
    let log = d.log();
    for id in [bad_sender, bad_rcpt, bad_notify] {
        assert!(queue.join("corrupt").join(id).exists(), "{id}: {log}");
        assert!(!queue.join("entries").join(id).exists(), "{id}");
        assert!(
            log.lines()
                .any(|l| l.contains("corrupt queue entry moved aside") && l.contains(id)),
            "{id}: {log}"
        );
    }
    assert!(log.contains("bad sender"), "{log}");
    assert!(log.contains("bad recipient"), "{log}");
    assert!(log.contains("bad notify"), "{log}");
}
