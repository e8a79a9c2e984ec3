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
            ":2: hostname: duplicate key",
        ),
        ("[listen]\nport = 25\n", ":1: listen: not an option"),
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

/// Runs the binary with `args`: exit status, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_file_error_names_file_line_and_key_for_the_daemon_check_config_and_the_queue_tool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    mailstore::queue::Queue::open(spool.join(".queue")).unwrap();
    let conf = dir.path().join("t.toml");
    let c = conf.to_str().unwrap();
    let head = format!("spool-dir = {spool:?}\n");
    for (body, want) in [
        (
            "bogus = 1\n",
            "2: bogus: not an option of the daemon (see smtp-server --help)",
        ),
        (
            "max-recipients = \"ten\"\n",
            "2: max-recipients: \"ten\": invalid digit found in string",
        ),
        (
            "max-recipients = 10.5\n",
            "2: max-recipients: 10.5: not a whole number",
        ),
        (
            "queue-lifetime = \"5 days\"\n",
            "2: queue-lifetime: \"5 days\": unknown unit ' ' (use s, m, h, d or w)",
        ),
        (
            "hostname = \"a.test\"\nhostname = \"b.test\"\n",
            "3: hostname: duplicate key",
        ),
        (
            "[server]\nport = 25\n",
            "2: server: not an option of the daemon (see smtp-server --help)",
        ),
        (
            "local-listen = []\n",
            "2: local-listen: an empty list; remove the key for the default",
        ),
        (
            "domain = []\n",
            "2: domain: an empty list; remove the key for the default",
        ),
        (
            "mailbox-mode = 2770\n",
            "2: mailbox-mode: 2770: a decimal number; write the mode in octal: 0o2770 or \"2770\"",
        ),
        (
            "passwd-file = \"p\"\nauth-dovecot = \"/run/a\"\n",
            "3: auth-dovecot: cannot be used with passwd-file (line 2)",
        ),
        (
            "log-file = \"/tmp/l\"\nsyslog = true\n",
            "3: syslog: cannot be used with log-file (line 2)",
        ),
    ] {
        std::fs::write(&conf, format!("{head}{body}")).unwrap();
        let want = format!("--config: {c}:{want}\n");
        for (args, prefix) in [
            (&["--config", c][..], "smtp-server: "),
            (&["check-config", "--config", c][..], "smtp-server: "),
            (&["queue", "--config", c, "list"][..], "smtp-server queue: "),
        ] {
            let (code, _, err) = run(args);
            assert_eq!(code, Some(2), "{body:?} {args:?}");
            assert_eq!(err, format!("{prefix}{want}"), "{body:?} {args:?}");
        }
    }
    // Entries only the daemon needs are fine for the queue tool, and it reads queue-lifetime
    // as the daemon does (a number is seconds, as on the command line).
    std::fs::write(
        &conf,
        format!("{head}hostname = \"a.test\"\nno-public = true\nsyslog = true\nqueue-lifetime = 86400\n"),
    )
    .unwrap();
    let (code, out, err) = run(&["queue", "--config", c, "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Mail queue is empty"), "{out}");
    // A file entry needing an option nobody gave.
    std::fs::write(&conf, format!("{head}tls-listen = [\"127.0.0.1:1\"]\n")).unwrap();
    for sub in [&[][..], &["check-config"][..]] {
        let (code, _, err) = run(&[sub, &["--config", c]].concat());
        assert_eq!(code, Some(2));
        assert_eq!(
            err,
            format!(
                "smtp-server: --config: {c}:2: tls-listen: needs tls-cert and tls-key (in the file or on the command line)\n"
            )
        );
    }
}

#[test]
fn the_command_line_wins_over_conflicting_entries_and_turns_off_file_flags() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.toml");
    let c = conf.to_str().unwrap();
    std::fs::write(
        &conf,
        "spool-dir = \"/srv/mail\"\npasswd-file = \"/nonexistent/passwd\"\nlog-file = \"/tmp/x.log\"\n\
         no-email-auth = true\nno-public = true\nmailbox-mode = 0o2770\n",
    )
    .unwrap();
    let (code, out, err) = run(&[
        "check-config",
        "--config",
        c,
        "--auth-dovecot",
        "/run/dovecot/auth-client",
        "--syslog",
        "--spf-reject",
        "--no-public=false",
    ]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "# passwd-file: not set  # default\n\
         # passwd-file = \"/nonexistent/passwd\"  # from the file, dropped: --auth-dovecot on the command line\n\
         auth-dovecot = \"/run/dovecot/auth-client\"  # from the command line\n",
        "# log-file: not set  # default\n\
         # log-file = \"/tmp/x.log\"  # from the file, dropped: --syslog on the command line\n\
         syslog = \"/dev/log\"  # from the command line\n",
        "no-email-auth = false  # default\n\
         # no-email-auth = true  # from the file, dropped: --spf-reject on the command line\n\
         spf-reject = true  # from the command line\n",
        "\nno-public = false  # from the command line\n",
        "\nmailbox-mode = \"2770\"  # from the file\n",
        "\npublic-listen = [\"0.0.0.0:25\", \"[::]:25\"]  # default\n",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    // `--FLAG=true` is `--FLAG`; and the flag values work without a file too.
    let (code, out, err) = run(&[
        "check-config",
        "-d",
        "/srv/mail",
        "--no-public=true",
        "--dmarc-reject=false",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("\nno-public = true  # from the command line\n"),
        "{out}"
    );
    assert!(
        out.contains("\ndmarc-reject = false  # from the command line\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "\npublic-listen = [\"0.0.0.0:25\", \"[::]:25\"]  # default (unused: no-public)\n"
        ),
        "{out}"
    );
    // An optional-value option takes the same spellings: `--syslog=false` turns off a
    // file's `syslog = true` (and is no socket named "false"), `--syslog=true` is `--syslog`.
    let conf2 = dir.path().join("s.toml");
    std::fs::write(&conf2, "spool-dir = \"/srv/mail\"\nsyslog = true\n").unwrap();
    let c2 = conf2.to_str().unwrap();
    let (code, out, err) = run(&["check-config", "--config", c2, "--syslog=false"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\nsyslog = false"), "{out}");
    assert!(!out.contains("\"false\""), "{out}");
    let (code, out, err) = run(&["check-config", "-d", "/srv/mail", "--syslog=true"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("\nsyslog = \"/dev/log\"  # from the command line\n"),
        "{out}"
    );
    // A number is no socket path.
    std::fs::write(&conf2, "spool-dir = \"/srv/mail\"\nsyslog = 1\n").unwrap();
    let (code, _, err) = run(&["check-config", "--config", c2]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("{c2}:2: syslog: expected true, false or a string")),
        "{err}"
    );
    // Without the command line the file's own conflict is an error (see above); with a
    // command-line option of the same name the file's entry is simply replaced.
    let (code, _, err) = run(&[
        "check-config",
        "--config",
        c,
        "--passwd-file",
        "/nonexistent/p2",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/p2"), "{err}");
}

#[test]
fn check_config_prints_computed_defaults_and_syslog_true() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.toml");
    let c = conf.to_str().unwrap();
    std::fs::write(&conf, "spool-dir = \"/srv/mail\"\nsyslog = true\n").unwrap();
    let (code, out, err) = run(&["check-config", "--config", c]);
    assert_eq!(code, Some(0), "{err}");
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    for line in [
        format!("\nhostname = \"{host}\"  # default (the machine's host name)\n"),
        format!(
            "\ndomain = [\"{}\"]  # default (the host name)\n",
            host.trim_end_matches('.').to_ascii_lowercase()
        ),
        "\nlocal-listen = [\"127.0.0.1:25\", \"[::1]:25\"]  # default\n".to_owned(),
        "\npublic-listen = [\"0.0.0.0:25\", \"[::]:25\"]  # default\n".to_owned(),
        "\nqueue-dir = \"/srv/mail/.queue\"  # default (<spool-dir>/.queue)\n".to_owned(),
        "\nsyslog = \"/dev/log\"  # from the file\n".to_owned(),
        "\n# dns-server: not set (the system's name servers)  # default\n".to_owned(),
    ] {
        assert!(out.contains(&line), "{line} missing:\n{out}");
    }
    assert!(!out.contains("see --help"), "{out}");
    std::fs::write(&conf, "syslog = false\n").unwrap();
    let (code, out, _) = run(&["check-config", "--config", c]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\nsyslog = false  # from the file\n"), "{out}");
    let (_, out, _) = run(&["check-config"]);
    assert!(out.contains("\nsyslog = false  # default\n"), "{out}");
}

#[test]
fn check_config_refuses_what_the_daemon_would_refuse_at_start() {
    // Each of these stops the daemon with exit 2; check-config must say so too, with the
    // same one line, and create nothing.
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("mail");
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let base = ["-s", "example.test", "-l", "127.0.0.1:1", "--no-public"];
    for (extra, want) in [
        (
            vec!["--log-level", "bogus["],
            "smtp-server: --log-level: \"bogus[\": invalid filter directive",
        ),
        (
            vec!["--log-file", "/nonexistent/dir/log"],
            "smtp-server: --log-file: /nonexistent/dir/log: No such file or directory (os error 2)",
        ),
    ] {
        for sub in [&["check-config"][..], &[][..]] {
            let out = Command::new(BIN)
                .args(sub)
                .args(["-d", spool.to_str().unwrap()])
                .args(base)
                .args(&extra)
                .args(["--dns-server", "127.0.0.1:1"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{sub:?} {extra:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim_end(), want, "{sub:?}");
        }
    }
    // A spool below a file: the daemon cannot make it.
    let under_file = file.join("mail");
    let out = Command::new(BIN)
        .args(["check-config", "-d", under_file.to_str().unwrap()])
        .args(base)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "smtp-server: --spool-dir: {}: not a directory",
            file.display()
        )
    );
    // The same for a --queue-dir of its own.
    let out = Command::new(BIN)
        .args(["check-config", "-d", spool.to_str().unwrap()])
        .args(["--queue-dir", under_file.to_str().unwrap()])
        .args(base)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "smtp-server: --queue-dir: {}: not a directory",
            file.display()
        )
    );
    // Nothing was made by the checks.
    assert!(!spool.exists());
    // A spool that does not exist yet below a writable directory is fine.
    let out = Command::new(BIN)
        .args(["check-config", "-d", spool.join("a/b").to_str().unwrap()])
        .args(base)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!spool.exists());
}
