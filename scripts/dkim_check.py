#!/usr/bin/env python3
"""Check the daemon's DKIM signatures with an implementation no one here wrote: dkimpy.

Usage: scripts/dkim_check.py [path/to/smtp-server]   (default target/debug/smtp-server)
Needs `pip install dkimpy pynacl aiosmtpd` (pynacl for Ed25519, RFC 8463).

1. `smtp-server dkim-keygen` makes an RSA-2048 key (selector `rsa`) and an Ed25519 key
   (selector `ed`) for example.test; each printed TXT record must parse as a DKIM key record
   (v=DKIM1, k=, p=) with dkimpy's own tag parser.
2. The daemon runs on a free 127.0.0.1 port with both keys, relaying through --relay-host to an
   aiosmtpd sink on loopback; its --dns-server is 127.0.0.1:1 (nothing there: no lookups leave
   the machine).
3. smtplib sends, from the loopback listener: a plain message, one with dot-leading lines, an
   8-bit body (BODY=8BITMIME), one with a 2000-octet line, one already carrying a foreign
   DKIM-Signature, and one From: a domain without a key.
4. Each message the sink got is verified with dkimpy, whose dnsfunc answers from the records
   keygen printed (and nothing else): the two signatures of ours pass (rsa-sha256 and
   ed25519-sha256), the foreign one does not, the unkeyed domain's message has no signature.
Exits non-zero on the first mismatch.
"""
import os, signal, smtplib, socket, subprocess, sys, tempfile, time

import dkim
import dkim.util
from aiosmtpd.controller import Controller
import aiosmtpd.smtp

# aiosmtpd refuses lines over RFC 5321's 1000 octets (500); the daemon passes them on, as
# Postfix does, and the 2000-octet case is here to be signed and verified, so the sink takes them.
aiosmtpd.smtp.SMTP.line_length_limit = 4096

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/smtp-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(msg):
    print(f"dkim_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def keygen(tmp, selector, algorithm):
    key = os.path.join(tmp, f"{selector}.pem")
    out = subprocess.run(
        [BIN, "dkim-keygen", "--domain", "example.test", "--selector", selector,
         "--key-out", key, "--algorithm", algorithm],
        capture_output=True, text=True, check=True).stdout
    lines = [l for l in out.splitlines() if l and not l.startswith(";")]
    if len(lines) != 1:
        fail(f"keygen printed {out!r}")
    name, _, rest = lines[0].partition(" IN TXT ")
    if name != f"{selector}._domainkey.example.test.":
        fail(f"record name {name!r}")
    text = "".join(rest.split('"')[1::2])
    tags = dkim.util.parse_tag_value(text.encode())
    want_k = b"rsa" if algorithm == "rsa" else b"ed25519"
    if tags.get(b"v") != b"DKIM1" or tags.get(b"k") != want_k or not tags.get(b"p"):
        fail(f"record does not parse as a DKIM key: {text!r}")
    return key, name, text.encode()


class Sink:
    def __init__(self):
        self.got = []

    async def handle_DATA(self, server, session, envelope):
        self.got.append(envelope.original_content or envelope.content)
        return "250 OK"


MESSAGES = {
    "plain": b"From: Alice <alice@example.test>\r\nTo: dave@remote.test\r\nSubject: plain\r\n\r\nHello.\r\n",
    "dots": b"From: alice@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\n. \r\nend\r\n",
    "eightbit": ("From: alice@example.test\r\nSubject: eightbit\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                 "Gr\u00fc\u00dfe, d\u00e9j\u00e0 vu \u2603\r\n").encode(),
    "long": b"From: alice@example.test\r\nSubject: long\r\n\r\n" + b"y" * 2000 + b"\r\nshort\r\n",
    # Longer than the 128 KiB held in memory: signed from the daemon's temporary file.
    "big": b"From: alice@example.test\r\nSubject: big\r\n\r\n" + b"A line of a big message.\r\n" * 12000,
    "presigned": (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=elsewhere.test; s=x;\r\n"
                  b"\th=from:subject; bh=AAAA; b=AAAA\r\n"
                  b"From: alice@example.test\r\nSubject: presigned\r\n\r\nForwarded.\r\n"),
    "otherdomain": b"From: alice@other.test\r\nSubject: otherdomain\r\n\r\nNo key.\r\n",
}


def main():
    tmp = tempfile.mkdtemp(prefix="dkim_check.")
    records = {}
    keys = []
    for selector, algorithm in (("rsa", "rsa"), ("ed", "ed25519")):
        key, name, text = keygen(tmp, selector, algorithm)
        records[name.encode()] = text
        keys += ["--dkim-key", f"example.test:{selector}:{key}"]

    def dnsfunc(name, timeout=5):
        # Only the records keygen printed; never a real resolver.
        return records.get(name if name.endswith(b".") else name + b".")

    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    port = free_port()
    log = os.path.join(tmp, "daemon.log")
    daemon = subprocess.Popen(
        [BIN, "-d", os.path.join(tmp, "mail"), "-s", "example.test", "--hostname", "mx.example.test",
         "-l", f"127.0.0.1:{port}", "--no-public", "--dns-server", "127.0.0.1:1",
         "--relay-host", f"127.0.0.1:{sink_port}", "--log-file", log, "--log-level", "debug"] + keys,
        stdin=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if daemon.poll() is not None:
                    fail(f"daemon exited: {daemon.returncode}")
                time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            for name, msg in MESSAGES.items():
                opts = ["BODY=8BITMIME"] if name == "eightbit" else []
                s.sendmail("alice@example.test", ["dave@remote.test"], msg, mail_options=opts)
        deadline = time.time() + 60
        while len(sink.got) < len(MESSAGES) and time.time() < deadline:
            time.sleep(0.1)
        if len(sink.got) != len(MESSAGES):
            fail(f"the sink got {len(sink.got)} of {len(MESSAGES)} messages; log:\n" + open(log).read())
        checked = 0
        for name, original in MESSAGES.items():
            got = [m for m in sink.got if f"Subject: {name}\r\n".encode() in m]
            if len(got) != 1:
                fail(f"{name}: received {len(got)} times")
            m = got[0]
            if original.split(b"\r\n\r\n", 1)[1] not in m:
                fail(f"{name}: body changed on the way: {m!r}")
            d = dkim.DKIM(m, minkey=1024)
            sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
            ours = [i for i, v in enumerate(sigs) if b"d=example.test" in v.replace(b" ", b"")]
            if name == "otherdomain":
                if sigs:
                    fail(f"{name}: signed although other.test has no key")
                continue
            if len(ours) != 2:
                fail(f"{name}: {len(ours)} signatures of ours, want 2 (rsa, ed): {m[:600]!r}")
            algorithms = set()
            for i in ours:
                if not dkim.DKIM(m, minkey=1024).verify(idx=i, dnsfunc=dnsfunc):
                    fail(f"{name}: dkimpy says signature {i} does not verify: {m[:800]!r}")
                tags = dkim.util.parse_tag_value(sigs[i])
                algorithms.add(tags[b"a"])
                if tags[b"c"] != b"relaxed/relaxed":
                    fail(f"{name}: c={tags[b'c']!r}")
                if [h.strip().lower() for h in tags[b"h"].split(b":")].count(b"from") != 2:
                    fail(f"{name}: From not oversigned: h={tags[b'h']!r}")
                checked += 1
            if algorithms != {b"rsa-sha256", b"ed25519-sha256"}:
                fail(f"{name}: algorithms {algorithms}")
            foreign = [i for i in range(len(sigs)) if i not in ours]
            for i in foreign:
                if dkim.DKIM(m).verify(idx=i, dnsfunc=dnsfunc):
                    fail(f"{name}: the foreign signature verified?")
        print(f"dkim_check: {checked} signatures verified by dkimpy "
              f"(rsa-sha256 and ed25519-sha256 over {len(MESSAGES) - 1} messages)")
        print(f"dkim_check: {len(MESSAGES)} passed, 0 failed")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        controller.stop()


if __name__ == "__main__":
    main()
