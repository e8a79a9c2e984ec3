#!/usr/bin/env python3
"""Log in with the workspace's `send` example to Python's aiosmtpd (SMTP AUTH), as CI does.

Usage: scripts/aiosmtpd_auth_check.py [path/to/send]   (default target/debug/examples/send)
Needs `pip install aiosmtpd` and the `openssl` command (a self-signed certificate is made for
each run in a temporary directory). Starts aiosmtpd on free 127.0.0.1 ports with STARTTLS and
an authenticator that accepts alice / s3cret and records every login attempt, then runs
`send --host 127.0.0.1:PORT --auth-user alice` (password in SMTP_PASSWORD) and checks:
  1. PLAIN (aiosmtpd offers PLAIN and LOGIN, only after STARTTLS): exit 0, the message arrived
     over TLS after a PLAIN login as alice;
  2. LOGIN (the server offers only LOGIN): the same, with LOGIN;
  3. a wrong password: aiosmtpd answers 535, the recipient is deferred (exit 75) with the
     535 5.7.8 reply in the output, nothing delivered;
  4. a server without STARTTLS that offers AUTH in clear text: the client refuses to log in
     before sending anything (exit 75, "not encrypted"), the authenticator is never called.
Exits non-zero on the first mismatch.
"""
import logging, os, socket, ssl, subprocess, sys, tempfile

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SEND = sys.argv[1] if len(sys.argv) > 1 else "target/debug/examples/send"
MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: auth check\r\n\r\nhi\r\n"


class Recorder:
    """Records each message and whether it came over TLS and after which login."""

    def __init__(self):
        self.messages = []
        self.logins = []  # (mechanism, login, accepted)

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == b"alice" and auth_data.password == b"s3cret")
        login = auth_data.login if isinstance(auth_data, LoginPassword) else None
        self.logins.append((mechanism, login, ok))
        # handled=False: aiosmtpd sends its own 535 5.7.8 on failure.
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"tls": session.ssl is not None,
                              "authenticated": session.authenticated,
                              "rcpt_tos": list(envelope.rcpt_tos),
                              "content": envelope.original_content})
        return "250 2.0.0 Stored"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def expect(cond, what, *context):
    if not cond:
        sys.exit("aiosmtpd_auth_check: FAILED: " + what + "\n" + "\n".join(map(str, context)))


def send(port, message_file, password):
    args = [SEND, "--host", f"127.0.0.1:{port}", "--helo", "client.example.test",
            "--from", "alice@example.test", "--to", "bob@example.test", "--file", message_file,
            "--auth-user", "alice",
            # --dns-server at a closed port: nothing here may use the system resolver.
            "--dns-server", f"127.0.0.1:{free_port()}"]
    env = dict(os.environ, SMTP_PASSWORD=password)
    p = subprocess.run(args, capture_output=True, timeout=60, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def server(handler, tls_context, **kw):
    port = free_port()
    c = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mx.example.test",
                   tls_context=tls_context, authenticator=handler.authenticator, **kw)
    c.start()
    return c, port


def main():
    if not os.access(SEND, os.X_OK):
        sys.exit(f"aiosmtpd_auth_check: {SEND} is not an executable (cargo build --example send)")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=mx.example.test", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        message_file = os.path.join(tmp, "message.eml")
        with open(message_file, "wb") as f:
            f.write(MESSAGE)

        # 1 and 2: PLAIN when offered, LOGIN when it is all the server offers.
        for mechanism, exclude in (("PLAIN", []), ("LOGIN", ["PLAIN"])):
            h = Recorder()
            c, port = server(h, context, auth_require_tls=True, auth_exclude_mechanism=exclude)
            try:
                code, out, err = send(port, message_file, "s3cret")
            finally:
                c.stop()
            expect(code == 0, f"{mechanism}: exit code {code}, expected 0", out, err)
            expect(out.startswith("<bob@example.test>: delivered via 127.0.0.1 [127.0.0.1:")
                   and ", TLS: 250 2.0.0 Stored" in out, f"{mechanism}: delivered line", out)
            expect(h.logins == [(mechanism, b"alice", True)], f"{mechanism}: logins", h.logins)
            expect(len(h.messages) == 1, f"{mechanism}: one message", h.messages)
            m = h.messages[0]
            expect(m["tls"] and m["authenticated"], f"{mechanism}: over TLS, logged in", m)
            expect(m["content"] == MESSAGE, f"{mechanism}: content", repr(m["content"]))
            print(f"ok: {mechanism} login after STARTTLS, message delivered")

        # 3. A wrong password: 535, deferred.
        h = Recorder()
        c, port = server(h, context, auth_require_tls=True)
        try:
            code, out, err = send(port, message_file, "wrong")
        finally:
            c.stop()
        expect(code == 75, f"bad password: exit code {code}, expected 75", out, err)
        expect("deferred (4.7.8)" in out and "login refused: 535 5.7.8" in out,
               "bad password: deferred with the 535 reply", out)
        expect(h.logins == [("PLAIN", b"alice", False)], "bad password: logins", h.logins)
        expect(h.messages == [], "bad password: nothing delivered", h.messages)
        print("ok: 535 for a wrong password, deferred (exit 75)")

        # 4. No STARTTLS, AUTH offered in clear text: refused before sending.
        h = Recorder()
        c, port = server(h, None, auth_require_tls=False)
        try:
            code, out, err = send(port, message_file, "s3cret")
        finally:
            c.stop()
        expect(code == 75, f"no TLS: exit code {code}, expected 75", out, err)
        expect("not encrypted" in out, "no TLS: the reason", out)
        expect(h.logins == [], "no TLS: the password reached the server", h.logins)
        expect(h.messages == [], "no TLS: nothing delivered", h.messages)
        print("ok: no TLS, no login attempted, deferred (exit 75)")


main()
