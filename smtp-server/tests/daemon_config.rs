//! `--config FILE` and `check-config`: the daemon run from a TOML file, the command line
//! overriding it, errors naming the key and line, and the annotated example in contrib/.
#![allow(clippy::unwrap_used)]

mod daemon_util;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use daemon_util::{free_port, spool_messages, wait_until, Smtp, BIN};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/smtp-server.toml");

#[test]
fn the_daemon_runs_from_a_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let port = free_port();
    let conf = dir.path().join("smtp-server.toml");
    std::fs::write(
        &conf,
        format!(
            "spool-dir = {spool:?}\ndomain = [\"example.test\", \"other.test\"]\n\
             hostname = \"from-file.example.test\"\nlocal-listen = [\"127.0.0.1:{port}\"]\n\
             no-public = true\ndns-server = \"127.0.0.1:1\"\nmax-recipients = 2\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            conf.to_str().unwrap(),
            "--hostname",
            "from-cli.example.test",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(
        addr
    )
    .is_ok()));
    let mut c = Smtp::connect(addr);
    assert!(
        c.greeting.1.starts_with("from-cli.example.test "),
        "{:?}",
        c.greeting
    );
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@other.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<carol@example.test>").0, 250);
    // max-recipients = 2 from the file.
    assert_eq!(c.cmd("RCPT TO:<dave@example.test>").0, 452);
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: x\r\n\r\nx\r\n.").0, 250);
    assert_eq!(spool_messages(&spool, "bob").len(), 1);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn errors_name_the_key_and_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "domain = \"a.test\"\n\nspool_dir = \"x\"\n",
            ":3: spool_dir: not an option",
        ),
        ("hostname = [\"a\", \"b\"]\n", ":1: hostname: a list"),
        ("no-public = 1\n", ":1: no-public: expected true or false"),
        (
            "hostname = \"a.test\"\nhostname = \"b.test\"\n",
            "duplicate key",
        ),
        ("[listen]\nport = 25\n", "listen: not an option"),
    ] {
        let conf = dir.path().join("bad.toml");
        std::fs::write(&conf, text).unwrap();
        for sub in [&[][..], &["check-config"][..]] {
            let out = Command::new(BIN)
                .args(sub)
                .args(["--config", conf.to_str().unwrap()])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("bad.toml") && err.contains(want),
                "{text:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}

#[test]
fn check_config_on_the_annotated_example() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = daemon_util::tls_files(dir.path(), "mail.example.org");
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "alice@example.org:{PLAIN}x\n").unwrap();
    // The example as shipped, with only its files moved into the test's directory.
    let out = Command::new(BIN)
        .args(["check-config", "--config", EXAMPLE])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .args(["--passwd-file", passwd.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "domain = [\"example.org\"]  # from the file",
        "hostname = \"mail.example.org\"  # from the file",
        "submission-listen = [\"0.0.0.0:587\", \"[::]:587\"]  # from the file",
        "max-recipients = 100  # from the file",
        "remote-port = 25  # default",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("# from the command line"), "{text}");
    // The printed configuration is itself a valid file: feed it back.
    let again = dir.path().join("again.toml");
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
        .collect();
    std::fs::write(&again, body).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A problem in what the file names (the certificate) is found without starting anything.
    let out = Command::new(BIN)
        .args(["check-config", "--config", EXAMPLE])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--passwd-file")
            || String::from_utf8_lossy(&out.stderr).contains("--tls-cert")
    );
}

#[test]
fn the_queue_tool_finds_the_queue_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    std::fs::create_dir_all(spool.join(".queue")).unwrap();
    mailstore::queue::Queue::open(spool.join(".queue")).unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(&conf, format!("spool-dir = {spool:?}\n")).unwrap();
    let out = Command::new(BIN)
        .args(["queue", "--config", conf.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Mail queue is empty"));
}
