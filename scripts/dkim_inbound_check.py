#!/usr/bin/env python3
"""The reverse of dkim_check.py: messages signed by dkimpy (an implementation no one here wrote)
verify as dkim=pass through the daemon's inbound path.

Usage: scripts/dkim_inbound_check.py [path/to/smtp-server]   (default target/debug/smtp-server)
Needs `pip install dkimpy pynacl` (pynacl for Ed25519, RFC 8463), openssl (the RSA key) and
dnsmasq (the DNS server on loopback).

1. An RSA-2048 key (openssl) and an Ed25519 key (pynacl) for sender.test, selectors `rsa` and
   `ed`; their DKIM records, and a DMARC p=reject policy for sender.test, are served by a
   dnsmasq on a free 127.0.0.1 port that answers only from its configuration (no-resolv: no
   query leaves the machine).
2. The daemon runs with a public listener on a free 127.0.0.1 port and that dnsmasq as its
   --dns-server, with --dmarc-reject.
3. smtplib sends, to the public listener, each message signed by dkimpy with each key and with
   relaxed/relaxed and simple/simple canonicalisation: a plain message, one with dot-leading
   lines, an 8-bit body (BODY=8BITMIME), one with a 2000-octet line, one with folded and
   oddly spaced header fields. The envelope sender is in another domain (bounces.test, no
   SPF record), so DMARC can pass only by the DKIM signature's alignment.
4. Each stored message must carry one Authentication-Results: field of ours with dkim=pass
   for the signature (header.d=sender.test or header.i=@sender.test, and the selector) and
   dmarc=pass. A message whose body
   was changed after signing must not say dkim=pass, and is refused by DMARC (550 5.7.1).
Exits non-zero on the first mismatch.
"""
import base64, os, signal, smtplib, socket, subprocess, sys, tempfile, time

import dkim
import nacl.signing

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/smtp-server"


def fail(msg):
    print(f"dkim_inbound_check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(f, seconds):
    end = time.time() + seconds
    while time.time() < end:
        r = f()
        if r:
            return r
        time.sleep(0.05)
    return f()


def rsa_key(tmp):
    pem = os.path.join(tmp, "rsa.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", pem], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", pem, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return open(pem, "rb").read(), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed_key():
    sk = nacl.signing.SigningKey.generate()
    # dkimpy takes an Ed25519 private key as the base64 of its 32-octet seed.
    private = base64.b64encode(bytes(sk))
    public = base64.b64encode(bytes(sk.verify_key)).decode()
    return private, f"v=DKIM1; k=ed25519; p={public}"


def txt_record(name, text):
    """A dnsmasq txt-record line: the text in character-strings of at most 255 octets."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)]
    return f"txt-record={name}," + ",".join(f'"{p}"' for p in parts)


def start_dns(tmp, records):
    conf = os.path.join(tmp, "dnsmasq.conf")
    with open(conf, "w") as f:
        f.write("no-resolv\nno-hosts\nlocal=/test/\n")
        for name, text in records:
            f.write(txt_record(name, text) + "\n")
    for _ in range(5):  # the port can be taken by someone else before dnsmasq binds it
        port = free_port(socket.SOCK_DGRAM)
        proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                                 f"--port={port}", "--listen-address=127.0.0.1",
                                 "--bind-interfaces", "--pid-file=", "--user=root"],
                                stderr=subprocess.PIPE)
        time.sleep(0.3)
        if proc.poll() is None:
            return proc, port
        err = proc.stderr.read().decode()
        if "in use" not in err:
            fail(f"dnsmasq did not start: {err}")
    fail("dnsmasq: no free port")


BODIES = {
    "plain": b"Hello.\r\n",
    "dots": b".leading dot\r\n..two\r\n.\r\n. \r\nend\r\n",
    "eightbit": "Gr\u00fc\u00dfe, d\u00e9j\u00e0 vu \u2603\r\n".encode(),
    "longline": b"x" * 2000 + b"\r\n",
    "folded": b"trailing spaces   \r\n\r\n\r\n",
}


def message(name):
    head = (f"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n"
            f"Subject:   {name}\r\n  folded part\r\n").encode()
    if name == "eightbit":
        head += b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    return head + b"\r\n" + BODIES[name]


def stored(spool, n):
    path = os.path.join(spool, "bob", str(n))
    ok = wait_for(lambda: os.path.exists(path), 10)
    if not ok:
        fail(f"message {n} not stored")
    return open(path, "rb").read()


def our_results(m):
    """Our Authentication-Results: field, unfolded."""
    head = m.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    ours = [" ".join(f.split()) for f in fields
            if f.lower().startswith("authentication-results: mx.example.test;")]
    if len(ours) != 1:
        fail(f"{len(ours)} Authentication-Results fields of ours in {head!r}")
    return ours[0]


def main():
    tmp = tempfile.mkdtemp(prefix="dkim_inbound_check.")
    os.chmod(tmp, 0o755)  # dnsmasq reads its configuration below it
    rsa_private, rsa_record = rsa_key(tmp)
    ed_private, ed_record = ed_key()
    dns, dns_port = start_dns(tmp, [
        ("rsa._domainkey.sender.test", rsa_record),
        ("ed._domainkey.sender.test", ed_record),
        ("_dmarc.sender.test", "v=DMARC1; p=reject"),
    ])
    spool = os.path.join(tmp, "mail")
    port = free_port()
    log = os.path.join(tmp, "daemon.log")
    daemon = subprocess.Popen(
        [BIN, "-d", spool, "-s", "example.test", "--hostname", "mx.example.test",
         "-l", f"127.0.0.1:{free_port()}", "-p", f"127.0.0.1:{port}",
         "--dns-server", f"127.0.0.1:{dns_port}", "--dmarc-reject",
         "--log-file", log, "--log-level", "debug"],
        stdin=subprocess.DEVNULL)
    try:
        def up():
            if daemon.poll() is not None:
                fail(f"daemon exited: {daemon.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        if not wait_for(up, 20):
            fail("daemon did not start")
        n = 0
        passed = 0
        keys = ((b"rsa", rsa_private, b"rsa-sha256"), (b"ed", ed_private, b"ed25519-sha256"))
        for selector, private, algorithm in keys:
            for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple")):
                for name in BODIES:
                    msg = message(name)
                    sig = dkim.sign(msg, selector, b"sender.test", private, canonicalize=canon,
                                    signature_algorithm=algorithm,
                                    include_headers=[b"from", b"to", b"subject"])
                    signed = sig + msg
                    opts = ["BODY=8BITMIME"] if name == "eightbit" else []
                    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                                      timeout=30) as s:
                        s.sendmail("list@bounces.test", ["bob@example.test"], signed,
                                   mail_options=opts)
                    n += 1
                    m = stored(spool, n)
                    if BODIES[name] not in m:
                        fail(f"{name}: body changed on the way")
                    field = our_results(m)
                    what = f"{selector.decode()} {b'/'.join(canon).decode()} {name}"
                    # dkimpy writes i=@sender.test, which mail-auth reports as header.i.
                    want = [f"dkim=pass header.{t} header.s={selector.decode()} "
                            for t in ("d=sender.test", "i=@sender.test")]
                    if not any(w in field for w in want):
                        fail(f"{what}: want {want!r} in {field!r}\nlog:\n" + open(log).read()[-3000:])
                    if "dmarc=pass header.from=sender.test policy.dmarc=reject" not in field:
                        fail(f"{what}: no dmarc=pass in {field!r}")
                    passed += 1
        # Changed after signing: no pass, and p=reject refuses it with --dmarc-reject.
        msg = message("plain")
        signed = dkim.sign(msg, b"ed", b"sender.test", ed_private,
                           canonicalize=(b"relaxed", b"relaxed"),
                           signature_algorithm=b"ed25519-sha256") + msg
        tampered = signed.replace(b"Hello.", b"Hello, changed.")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
            try:
                s.sendmail("list@bounces.test", ["bob@example.test"], tampered)
                fail("a tampered message was accepted despite p=reject and --dmarc-reject")
            except smtplib.SMTPDataError as e:
                if e.smtp_code != 550 or not e.smtp_error.startswith(b"5.7.1 "):
                    fail(f"tampered message: {e.smtp_code} {e.smtp_error!r}")
        print(f"dkim_inbound_check: {passed} dkimpy signatures (rsa-sha256, ed25519-sha256; "
              "relaxed and simple) verified as dkim=pass and dmarc=pass; a tampered one refused")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        dns.terminate()
        dns.wait()


if __name__ == "__main__":
    main()
