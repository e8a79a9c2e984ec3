//! End-to-end: the command line, configuration errors, signals, crash recovery.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::process::Command;
use std::time::Duration;

use daemon_util::{spool_messages, wait_until, Daemon, Net, PeerBehaviour, BIN};

#[test]
fn help_lists_every_option_with_defaults() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--spool-dir",
        "--domain",
        "--hostname",
        "--local-listen",
        "--public-listen",
        "--no-public",
        "--tls-cert",
        "--tls-key",
        "--tls-listen",
        "--format",
        "--queue-dir",
        "--users",
        "--relay-host",
        "--relay-password-file",
        "--dns-server",
        "--remote-port",
        "--max-message-size",
        "--max-recipients",
        "--queue-lifetime",
        "--log-level",
        "--log-file",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
    for default in [
        "/var/spool/mail/",
        "127.0.0.1:25",
        "0.0.0.0:25",
        "26214400",
        "[default: 100]",
        "[default: 5d]",
        "[default: info]",
        "<spool-dir>/.queue",
        "alias",
        "sasl_passwd",
    ] {
        assert!(
            help.contains(default),
            "{default} missing from --help:\n{help}"
        );
    }
    for short in ["-d,", "-s,", "-l,", "-p,", "-f,", "-q,", "-u,"] {
        assert!(help.contains(short), "{short}");
    }
}

#[test]
fn bad_option_is_explained() {
    let out = Command::new(BIN).arg("--no-such-option").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("unexpected argument '--no-such-option'"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--format", "mbox"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("possible values: spool, maildir"));
}

fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_configuration_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let spool = dir.path().join("mail");
    let port = daemon_util::free_port().to_string();
    let l = format!("127.0.0.1:{port}");
    // The spool is a file.
    let err = one_line_error(&["-d", file.to_str().unwrap(), "-l", &l, "--no-public"]);
    assert!(err.starts_with("smtp-server: --spool-dir: "), "{err}");
    // Unreadable certificate.
    let err = one_line_error(&[
        "-d",
        spool.to_str().unwrap(),
        "-l",
        &l,
        "--no-public",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(
        err.starts_with("smtp-server: --tls-cert/--tls-key: "),
        "{err}"
    );
    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let err = one_line_error(&[
        "-d",
        spool.to_str().unwrap(),
        "-l",
        &busy_addr,
        "--no-public",
    ]);
    assert!(
        err.starts_with(&format!(
            "smtp-server: --local-listen: cannot listen on {busy_addr}"
        )),
        "{err}"
    );
    // A bad users file names the line.
    let users = dir.path().join("users");
    std::fs::write(&users, "alice\nbad/name\n").unwrap();
    let err = one_line_error(&[
        "-d",
        spool.to_str().unwrap(),
        "-l",
        &l,
        "--no-public",
        "-u",
        users.to_str().unwrap(),
    ]);
    assert!(
        err.starts_with("smtp-server: --users: ") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn sigterm_exits_0() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&dir.path().join("mail"), net.dns.addr(), &[]);
    let st = d.terminate();
    assert_eq!(st.code(), Some(0), "{}", d.log());
    assert!(d.log().contains("smtp-server stopped"));
}

/// Every file under the queue directory with its size, and each envelope's text.
fn queue_listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            let mut line = format!("{} {}", p.display(), m.len());
            if p.file_name().is_some_and(|n| n == "envelope") {
                line.push_str(&format!(
                    ": {:?}",
                    std::fs::read_to_string(&p).unwrap_or_default()
                ));
            }
            out.push(line);
        }
    }
    out
}

/// kill -9 while clients send local and remote mail; after a restart every message that got a
/// 250 is in a mailbox or delivered from the queue, and nothing else appears.
#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let net = Net::start(PeerBehaviour::default(), false);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    // The peer is unreachable at first (wrong port): relayed mail stays in the queue.
    let dead_port = daemon_util::free_port().to_string();
    let mut d = Daemon::start(
        &spool,
        net.dns.addr(),
        &["--remote-port", &dead_port, "--retry-base", "1s"],
    );
    let port = d.port;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, bool)>::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let n = t * 1000 + i;
                    let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    drop(s);
                    let res = std::panic::catch_unwind(|| {
                        let mut c = daemon_util::Smtp::connect(([127, 0, 0, 1], port).into());
                        let remote = n % 2 == 0;
                        let to = if remote {
                            "dave@remote.test"
                        } else {
                            "bob@example.test"
                        };
                        let body =
                            format!("Subject: m{n}\r\n\r\n{}", "payload line\r\n".repeat(500));
                        (c.send("alice@example.test", &[to], &body), remote)
                    });
                    match res {
                        Ok(((250, _), remote)) => acked.lock().unwrap().push((n, remote)),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(30), || acked
        .lock()
        .unwrap()
        .len()
        >= 40));
    d.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Restart, now delivering to the peer.
    let mut args = d.args.clone();
    let i = args.iter().position(|a| a == "--remote-port").unwrap();
    args[i + 1] = net.peer_port.to_string();
    d.args = args;
    let d2 = d.restart();
    let subject = |m: &[u8]| -> usize {
        let t = String::from_utf8_lossy(m);
        t.split("Subject: m")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Wait for every acknowledged remote message (counting is not enough: a message queued
    // but killed before its 250 may be delivered too, and counts).
    let remote_acked: Vec<usize> = acked.iter().filter(|a| a.1).map(|a| a.0).collect();
    let all_arrived = || {
        let got: Vec<usize> = net.got().iter().map(|g| subject(&g.body)).collect();
        remote_acked.iter().all(|n| got.contains(n))
    };
    assert!(
        wait_until(Duration::from_secs(60), all_arrived),
        "missing {:?}\nqueue: {:#?}\n{}",
        {
            let got: Vec<usize> = net.got().iter().map(|g| subject(&g.body)).collect();
            remote_acked
                .iter()
                .filter(|n| !got.contains(n))
                .collect::<Vec<_>>()
        },
        queue_listing(&spool.join(".queue")),
        d2.log()
    );
    let local: Vec<usize> = spool_messages(&spool, "bob")
        .iter()
        .map(|(_, m)| subject(m))
        .collect();
    let remote: Vec<usize> = net.got().iter().map(|g| subject(&g.body)).collect();
    for (n, is_remote) in &acked {
        if *is_remote {
            assert!(remote.contains(n), "acknowledged remote message {n} lost");
        } else {
            assert!(local.contains(n), "acknowledged local message {n} lost");
        }
    }
    // Everything stored is complete (a message not acknowledged may be there, but whole).
    let full = "payload line\r\n".repeat(500);
    for (_, m) in spool_messages(&spool, "bob") {
        let m = String::from_utf8(m).unwrap();
        assert!(m.ends_with(&full) || m.ends_with("after\r\n"), "{m}");
    }
    for g in net.got() {
        assert!(String::from_utf8(g.body).unwrap().ends_with(&full));
    }
    // Every status file has its message (leftovers of the crash are cleaned when the mailbox
    // is next delivered to).
    let mut c = d2.connect();
    assert_eq!(
        c.send(
            "alice@example.test",
            &["bob@example.test"],
            "Subject: m99999\r\n\r\nafter\r\n"
        )
        .0,
        250
    );
    for e in std::fs::read_dir(spool.join("bob")).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if let Some(n) = name.strip_suffix(".status") {
            assert!(
                spool.join("bob").join(n).exists(),
                "status without message: {name}"
            );
        }
    }
    drop(d2);
}

/// The first line the daemon started by `cmd` (listening on 127.0.0.1:`port`) sends; the
/// daemon is stopped after it. Panics when it does not start.
fn greeting_of(mut cmd: Command, port: u16) -> String {
    let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut greeting = String::new();
    let up = wait_until(Duration::from_secs(20), || {
        let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return child.try_wait().unwrap().is_some();
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut greeting).unwrap();
        true
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(up && !greeting.is_empty(), "the daemon did not start");
    greeting
}

#[test]
fn a_hostname_with_a_trailing_dot_is_greeted_without_it() {
    // `--hostname mx.dot.test.` is accepted (as a DNS name may be written); the daemon
    // starts and greets as `mx.dot.test` (a trailing dot is not SMTP's Domain syntax).
    let dir = tempfile::tempdir().unwrap();
    let port = daemon_util::free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["-d", &dir.path().join("mail").display().to_string()])
        .args(["-s", "example.test", "--hostname", "mx.dot.test."])
        .args(["-l", &format!("127.0.0.1:{port}"), "--no-public"])
        .args(["--dns-server", "127.0.0.1:1"]);
    assert_eq!(greeting_of(cmd, port), "220 mx.dot.test ESMTP ready\r\n");
}

#[test]
fn without_hostname_the_machine_name_is_used_when_smtp_can_carry_it() {
    // The machine's name set in a UTS namespace of the test's own (root only).
    let unshare = |name: &str, args: &[&str]| {
        // Straight into the kernel: hostname(1) refuses names like `my_host`.
        let script = "printf %s \"$0\" > /proc/sys/kernel/hostname && exec \"$@\"";
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "--", "sh", "-c", script, name, BIN])
            .args(args);
        cmd
    };
    if !unshare("probe.test", &["--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("SKIPPED: no UTS namespace here (needs root and unshare)");
        return;
    }
    for (machine, greeted) in [
        ("mx.machine.test", "mx.machine.test"),
        // A trailing dot is dropped; a name SMTP cannot carry gives `localhost`, and the
        // daemon still starts.
        ("mx.machine.test.", "mx.machine.test"),
        ("my_host", "localhost"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let port = daemon_util::free_port();
        let spool = dir.path().join("mail").display().to_string();
        let listen = format!("127.0.0.1:{port}");
        let args = [
            "-d",
            &spool,
            "-s",
            "example.test",
            "-l",
            &listen,
            "--no-public",
        ];
        let mut cmd = unshare(machine, &args);
        cmd.args(["--dns-server", "127.0.0.1:1"]);
        assert_eq!(
            greeting_of(cmd, port),
            format!("220 {greeted} ESMTP ready\r\n"),
            "machine name {machine:?}"
        );
    }
}
