#!/usr/bin/env python3
"""Drive the built smtp-server daemon with Python's smtplib, as CI does.

Usage: scripts/daemon_smtplib.py [path/to/smtp-server]   (default target/debug/smtp-server)
Starts the daemon on a free loopback port with a temporary spool, delivers to two local users
(spool, then Maildir), checks the files and headers, checks that relaying from the public
listener is refused, and stops the daemon with SIGTERM (exit code 0 expected).
"""
import os, signal, smtplib, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/smtp-server"

def free_port(host="127.0.0.1"):
    s = socket.socket(); s.bind((host, 0)); p = s.getsockname()[1]; s.close(); return p

def start(spool, fmt, extra=()):
    port = free_port()
    # --dns-server points at a closed port: no test may use the system resolver.
    args = [BIN, "-d", spool, "-s", "example.test", "--hostname", "mx.example.test",
            "-l", f"127.0.0.1:{port}", "--dns-server", f"127.0.0.1:{free_port()}",
            "-f", fmt, *extra]
    p = subprocess.Popen(args, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); return p, port
        except OSError:
            time.sleep(0.05)
    p.kill(); sys.exit("daemon did not start: " + p.stderr.read().decode())

def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, "exit code after SIGTERM"

def check(fmt):
    with tempfile.TemporaryDirectory() as d:
        spool = os.path.join(d, "mail")
        pub = free_port("127.0.0.2")
        p, port = start(spool, fmt, ["-p", f"127.0.0.2:{pub}"])
        with smtplib.SMTP("127.0.0.1", port) as s:
            refused = s.sendmail("alice@example.test", ["bob@example.test", "Carol+x@EXAMPLE.TEST"],
                                 "Subject: smtplib\r\n\r\nhello\r\n")
            assert refused == {}, refused
        with smtplib.SMTP("127.0.0.2", pub) as s:
            s.ehlo(); s.mail("x@evil.test")
            code, msg = s.rcpt("victim@elsewhere.test")
            assert code == 554 and msg.startswith(b"5.7.1"), (code, msg)
        stop(p)
        for user in ("bob", "carol"):
            if fmt == "spool":
                data = open(os.path.join(spool, user, "1"), "rb").read()
                assert open(os.path.join(spool, user, "1.status"), "rb").read() == b"\\Recent\n"
            else:
                new = os.path.join(spool, user, "new")
                files = os.listdir(new); assert len(files) == 1, files
                data = open(os.path.join(new, files[0]), "rb").read()
            assert data.startswith(b"Return-Path: <alice@example.test>\r\nReceived: from "), data
            assert b"by mx.example.test with ESMTP id" in data and data.endswith(b"\r\n\r\nhello\r\n"), data
    print(f"ok: {fmt}")

for fmt in ("spool", "maildir"):
    check(fmt)
