//! The daemon as it ships, on a host with a network interface: the systemd unit's command line
//! (default listeners on port 25) started inside a network namespace that has a veth interface
//! to a second namespace, the "Internet" side. Both policies must be served: relaying from the
//! host's own loopback addresses, local delivery only from the network. Then the same command
//! line with the submission options of DAEMON.md: a laptop on the network logs in on 587 and
//! 465 (IPv4 and IPv6) and may relay, and may not send before it logged in.
//!
//! Needs root and `ip` (iproute2), as CI has; elsewhere the test says it is skipped and passes.
//! The client is Python's smtplib, run inside the namespaces with `ip netns exec`.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daemon_util::wait_until;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../contrib/smtp-server.service"
);

/// Two namespaces joined by a veth pair: `host` (10.77.0.1, fd77::1) runs the daemon, `peer`
/// (10.77.0.2, fd77::2) is a client on the network. Removed on drop.
struct Netns {
    host: String,
    peer: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Netns {
    fn new() -> Option<Netns> {
        let id = std::process::id();
        let n = Netns {
            host: format!("smtpt{id}h"),
            peer: format!("smtpt{id}p"),
        };
        let (h, p) = (n.host.as_str(), n.peer.as_str());
        // Name resolution inside the host namespace goes to its own loopback, where nothing
        // answers (`ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf):
        // the daemon never reaches the machine's real resolver.
        let etc = Path::new("/etc/netns").join(h);
        std::fs::create_dir_all(&etc).ok()?;
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").ok()?;
        let ok = ip(&["netns", "add", h])
            && ip(&["netns", "add", p])
            && ip(&[
                "link", "add", "vh", "netns", h, "type", "veth", "peer", "name", "vp", "netns", p,
            ])
            && ip(&["-n", h, "addr", "add", "10.77.0.1/24", "dev", "vh"])
            && ip(&["-n", p, "addr", "add", "10.77.0.2/24", "dev", "vp"])
            && ip(&["-n", h, "addr", "add", "fd77::1/64", "dev", "vh", "nodad"])
            && ip(&["-n", p, "addr", "add", "fd77::2/64", "dev", "vp", "nodad"])
            && ip(&["-n", h, "link", "set", "vh", "up"])
            && ip(&["-n", p, "link", "set", "vp", "up"])
            && ip(&["-n", h, "link", "set", "lo", "up"])
            && ip(&["-n", p, "link", "set", "lo", "up"]);
        ok.then_some(n)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.host]);
        ip(&["netns", "del", &self.peer]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.host));
    }
}

/// The unit's `ExecStart=` command line, continuation lines joined.
fn exec_start() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let mut line = String::new();
    let mut inside = false;
    for l in unit.lines() {
        if let Some(rest) = l.strip_prefix("ExecStart=") {
            inside = true;
            line.push_str(rest);
        } else if inside {
            line.push(' ');
            line.push_str(l);
        } else {
            continue;
        }
        if line.ends_with('\\') {
            line.pop();
        } else {
            break;
        }
    }
    line.split_whitespace().map(str::to_owned).collect()
}

/// Runs an SMTP conversation with smtplib inside namespace `ns`: EHLO, then each command
/// (`DATA:<message>` sends a message), QUIT. Returns each reply as (code, text).
fn smtp(ns: &str, addr: &str, cmds: &[&str]) -> Vec<(u16, String)> {
    const SCRIPT: &str = r#"
import json, smtplib, sys
s = smtplib.SMTP(sys.argv[1], 25, local_hostname="client.test", timeout=10)
out = [list(s.ehlo())]
for c in sys.argv[2:]:
    out.append(list(s.data(c[5:].encode()) if c.startswith("DATA:") else s.docmd(c)))
s.quit()
print(json.dumps([[c, m.decode()] for c, m in out]))
"#;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", SCRIPT, addr])
        .args(cmds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib in {ns} to {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(u16, String)> = parse_replies(&String::from_utf8_lossy(&out.stdout));
    v
}

/// Parses the script's `[[code, "text"], ...]` (texts without quotes or backslashes, as our
/// replies are).
fn parse_replies(s: &str) -> Vec<(u16, String)> {
    s.trim()
        .trim_start_matches("[[")
        .trim_end_matches("]]")
        .split("], [")
        .map(|pair| {
            let (code, text) = pair.split_once(", ").unwrap();
            (code.parse().unwrap(), text.trim_matches('"').to_owned())
        })
        .collect()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_units_command_line_serves_both_policies_on_a_host_with_an_interface() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if !root || !ip(&["netns", "list"]) {
        eprintln!("SKIPPED: needs root and iproute2 (CI has both)");
        return;
    }
    // A machine that is root but may not make namespaces (a container without
    // CAP_SYS_ADMIN) cannot run this test: say so loudly rather than fail the suite.
    let Some(ns) = Netns::new() else {
        eprintln!("SKIPPED: cannot create network namespaces with a veth pair here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let ck = rcgen::generate_simple_self_signed(vec!["mail.example.org".into()]).unwrap();
    let cert = dir.path().join("fullchain.pem");
    let key = dir.path().join("privkey.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    // The unit's command line, with only the file paths moved into the test's directory.
    let mut args = exec_start();
    assert_eq!(args[0], "/usr/local/bin/smtp-server");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("-l") || a.starts_with("-p") || a.contains("listen")),
        "the unit is meant to use the default listeners: {args:?}"
    );
    args[0] = env!("CARGO_BIN_EXE_smtp-server").to_owned();
    let replace = |args: &mut Vec<String>, opt: &str, by: &Path| {
        let i = args.iter().position(|a| a == opt).unwrap();
        args[i + 1] = by.display().to_string();
    };
    replace(&mut args, "--spool-dir", &spool);
    replace(&mut args, "--tls-cert", &cert);
    replace(&mut args, "--tls-key", &key);
    let log: PathBuf = dir.path().join("stderr.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.host])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Running(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || {
            read_log().contains("smtp-server started")
                || daemon.0.try_wait().ok().flatten().is_some()
        }),
        "{}",
        read_log()
    );
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon exited: {}",
        read_log()
    );

    let msg = "DATA:From: x@client.test\r\nSubject: hello\r\n\r\nfrom the network\r\n";
    // From the network, over IPv4 and IPv6: local delivery yes, relaying no.
    for addr in ["10.77.0.1", "fd77::1"] {
        let r = smtp(
            &ns.peer,
            addr,
            &[
                "MAIL FROM:<x@client.test>",
                "RCPT TO:<bob@elsewhere.example>",
                "RCPT TO:<alice@example.org>",
                msg,
            ],
        );
        assert_eq!(r[0].0, 250, "{addr}: {r:?}");
        assert!(r[0].1.contains("STARTTLS"), "{addr}: {r:?}");
        assert_eq!(r[2].0, 554, "{addr}: {r:?}");
        assert!(r[2].1.starts_with("5.7.1 "), "{addr}: {r:?}");
        assert_eq!(r[3].0, 250, "{addr}: {r:?}");
        assert_eq!(r[4].0, 250, "{addr}: {r:?}");
    }
    // On the host itself, its loopback addresses relay; its network address does not.
    for addr in ["127.0.0.1", "::1"] {
        let r = smtp(
            &ns.host,
            addr,
            &[
                "MAIL FROM:<root@example.org>",
                "RCPT TO:<bob@elsewhere.example>",
                "RSET",
            ],
        );
        assert_eq!(r[2].0, 250, "{addr}: {r:?}");
    }
    let r = smtp(
        &ns.host,
        "10.77.0.1",
        &[
            "MAIL FROM:<root@example.org>",
            "RCPT TO:<bob@elsewhere.example>",
        ],
    );
    assert_eq!(r[2].0, 554, "{r:?}");

    // Both messages from the network are in alice's mailbox.
    let got = daemon_util::spool_messages(&spool, "alice");
    assert_eq!(got.len(), 2, "{}", read_log());
    assert!(got
        .iter()
        .all(|(_, m)| m.ends_with(b"\r\n\r\nfrom the network\r\n")));

    // The default 50 sessions per client count an IPv6 client by its /64: 25 sessions from
    // each of two addresses of fd77::/64 are all it gets, an IPv4 client is counted apart.
    assert!(ip(&[
        "-n",
        &ns.peer,
        "addr",
        "add",
        "fd77::10/64",
        "dev",
        "vp",
        "nodad"
    ]));
    const HOLD: &str = r#"
import socket, sys
held, codes = [], []
for spec in sys.argv[1:]:
    src, dst, n = spec.split(",")
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    for _ in range(int(n)):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10)
        s.bind((src, 0))
        s.connect((dst, 25))
        codes.append(s.makefile("rb").readline()[:3].decode())
        held.append(s)
print(" ".join(codes))
"#;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.peer, "python3", "-c", HOLD])
        .args([
            "fd77::2,fd77::1,25",
            "fd77::10,fd77::1,25",
            "fd77::10,fd77::1,1",
        ])
        .args(["10.77.0.2,10.77.0.1,1"])
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    let want = format!("{}421 220", "220 ".repeat(50));
    assert_eq!(
        codes.trim(),
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);

    // The same command line with the submission options DAEMON.md gives ("Submission: sending
    // from a laptop"): a laptop on the network logs in on 587 (STARTTLS) and 465, over IPv4
    // and IPv6, and may then relay; before logging in it may not send.
    let passwd = dir.path().join("passwd");
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-server"))
        .args(["passwd", "alice@example.org"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"laptop pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    std::fs::write(&passwd, out.stdout).unwrap();
    args.extend(submission_options());
    replace(&mut args, "--passwd-file", &passwd);
    std::fs::write(&log, "").unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.host])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Running(child);
    assert!(
        wait_until(Duration::from_secs(20), || {
            read_log().contains("smtp-server started")
                || daemon.0.try_wait().ok().flatten().is_some()
        }),
        "{}",
        read_log()
    );
    for addr in ["10.77.0.1", "fd77::1"] {
        for (port, mode) in [("587", "starttls"), ("465", "ssl")] {
            let r = submit(&ns.peer, addr, port, mode);
            let want = [
                (530, "5.7.0 Authentication required"),
                (535, "5.7.8 Authentication credentials invalid"),
                (235, "2.7.0 Authentication successful"),
                (250, "2.1.0 Sender OK"),
                (250, "2.1.5 Recipient OK"),
            ];
            let got: Vec<(u16, &str)> = r.iter().map(|(c, t)| (*c, t.as_str())).collect();
            assert_eq!(got, want, "{addr}:{port}: {}", read_log());
        }
    }
    drop(daemon);
}

/// The submission options the unit's comment tells an admin to add (lines `#   --...`).
fn submission_options() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let opts: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   --"))
        .flat_map(|l| {
            format!("--{l}")
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(opts.contains(&"--submission-listen".to_owned()), "{opts:?}");
    opts
}

/// A laptop in namespace `ns` submitting to `addr:port` (`starttls` or `ssl`) with smtplib:
/// MAIL before logging in, a wrong password, the right one, then MAIL and a remote RCPT.
fn submit(ns: &str, addr: &str, port: &str, mode: &str) -> Vec<(u16, String)> {
    const SCRIPT: &str = r#"
import json, smtplib, ssl, sys
addr, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tls = ssl._create_unverified_context()
if mode == "ssl":
    s = smtplib.SMTP_SSL(addr, port, local_hostname="laptop.test", context=tls, timeout=10)
else:
    s = smtplib.SMTP(addr, port, local_hostname="laptop.test", timeout=10)
    s.starttls(context=tls)
s.ehlo()
out = [list(s.docmd("MAIL FROM:<alice@example.org>"))]
s.docmd("RSET")
try:
    s.login("alice@example.org", "wrong")
except smtplib.SMTPAuthenticationError as e:
    out.append([e.smtp_code, e.smtp_error])
s.login("alice@example.org", "laptop pw")
out.append([235, b"2.7.0 Authentication successful"])
out.append(list(s.docmd("MAIL FROM:<alice@example.org>")))
out.append(list(s.docmd("RCPT TO:<bob@elsewhere.example>")))
s.docmd("RSET")
s.quit()
print(json.dumps([[c, m.decode()] for c, m in out]))
"#;
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "python3", "-c", SCRIPT, addr, port, mode,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib in {ns} to {addr}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_replies(&String::from_utf8_lossy(&out.stdout))
}
