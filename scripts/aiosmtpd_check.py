#!/usr/bin/env python3
"""Deliver with the workspace's `send` example to Python's aiosmtpd, as CI does.

Usage: scripts/aiosmtpd_check.py [path/to/send]   (default target/debug/examples/send)
Needs `pip install aiosmtpd`. Starts aiosmtpd on a free 127.0.0.1 port with a handler that
records each message (envelope as JSON, content as bytes) in a temporary directory, then runs
`send --host 127.0.0.1:PORT` three times and checks what aiosmtpd received and what `send`
printed and returned:
  1. two recipients, a body with dot-leading lines and 8-bit text: both delivered, exit 0,
     the envelope and the content byte for byte (with SIZE= and BODY=8BITMIME on MAIL);
  2. the handler answers 550 5.1.1 to one recipient: exit 1, that recipient bounced with the
     reply, the other delivered, the message recorded for the accepted one only;
  3. the handler answers 450 4.2.1 to every recipient: exit 75, both deferred, nothing recorded.
Exits non-zero on the first mismatch.
"""
import json, logging, os, socket, subprocess, sys, tempfile

from aiosmtpd.controller import Controller

SEND = sys.argv[1] if len(sys.argv) > 1 else "target/debug/examples/send"

# CRLF line ends only, so the bytes must arrive exactly as written. Lines starting with a dot
# (a lone one would end the message if the client did not dot-stuff), and 8-bit UTF-8 text.
MESSAGE = (
    b"From: alice@example.test\r\n"
    b"To: bob@example.test, carol@example.test\r\n"
    b"Subject: aiosmtpd check\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e\r\n"
    b". \r\n"
    b"last line\r\n"
)


class Recorder:
    """Refuses recipients whose local part is in `refuse` (address -> reply), records the rest."""

    def __init__(self, directory):
        self.directory = directory
        self.refuse = {}
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        for prefix, reply in self.refuse.items():
            if address.startswith(prefix):
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, str(self.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"helo": session.host_name, "mail_from": envelope.mail_from,
                       "mail_options": envelope.mail_options, "rcpt_tos": envelope.rcpt_tos}, f)
        return "250 2.0.0 Stored"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def recorded(directory):
    out = []
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".json")):
        base = os.path.join(directory, name[:-5])
        with open(base + ".json") as f:
            env = json.load(f)
        with open(base + ".eml", "rb") as f:
            out.append((env, f.read()))
    return out


def send(port, message_file, *rcpts):
    args = [SEND, "--host", f"127.0.0.1:{port}", "--helo", "client.example.test",
            "--from", "alice@example.test", "--file", message_file]
    for r in rcpts:
        args += ["--to", r]
    # --dns-server at a closed port: nothing here may use the system resolver.
    args += ["--dns-server", f"127.0.0.1:{free_port()}"]
    p = subprocess.run(args, capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def expect(cond, what, *context):
    if not cond:
        sys.exit("aiosmtpd_check: FAILED: " + what + "\n" + "\n".join(map(str, context)))


def main():
    if not os.access(SEND, os.X_OK):
        sys.exit(f"aiosmtpd_check: {SEND} is not an executable (cargo build --example send)")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "received")
        os.mkdir(store)
        message_file = os.path.join(tmp, "message.eml")
        with open(message_file, "wb") as f:
            f.write(MESSAGE)
        handler = Recorder(store)
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port,
                                server_hostname="mx.example.test")
        controller.start()
        try:
            # 1. Two recipients, both accepted.
            code, out, err = send(port, message_file, "bob@example.test", "carol@example.test")
            expect(code == 0, f"exit code {code}, expected 0", out, err)
            lines = out.splitlines()
            expect(len(lines) == 2 and all(": delivered via 127.0.0.1 [127.0.0.1:" in l
                                           and l.endswith("clear text: 250 2.0.0 Stored")
                                           for l in lines), "delivered lines", out)
            expect(lines[0].startswith("<bob@example.test>: ")
                   and lines[1].startswith("<carol@example.test>: "), "recipient order", out)
            msgs = recorded(store)
            expect(len(msgs) == 1, f"{len(msgs)} messages recorded, expected 1", msgs)
            env, content = msgs[0]
            expect(env["helo"] == "client.example.test", "EHLO name", env)
            expect(env["mail_from"] == "alice@example.test", "MAIL FROM", env)
            expect(env["rcpt_tos"] == ["bob@example.test", "carol@example.test"], "RCPT TO", env)
            expect(sorted(env["mail_options"]) == sorted([f"SIZE={len(MESSAGE)}", "BODY=8BITMIME"]),
                   "MAIL parameters", env)
            expect(content == MESSAGE, "content differs", repr(content), repr(MESSAGE))
            print("ok: two recipients, content byte-identical")

            # 2. One recipient refused with 550.
            handler.refuse = {"nobody@": "550 5.1.1 No such user here"}
            code, out, err = send(port, message_file, "bob@example.test", "nobody@example.test")
            expect(code == 1, f"exit code {code}, expected 1", out, err)
            lines = out.splitlines()
            expect(len(lines) == 2, "two result lines", out)
            expect(lines[0].startswith("<bob@example.test>: delivered via ")
                   and lines[0].endswith(": 250 2.0.0 Stored"), "bob delivered", out)
            expect(lines[1].startswith("<nobody@example.test>: bounced (5.1.1) via ")
                   and lines[1].endswith(": 550 5.1.1 No such user here"), "nobody bounced", out)
            msgs = recorded(store)
            expect(len(msgs) == 2, f"{len(msgs)} messages recorded, expected 2", msgs)
            env, content = msgs[1]
            expect(env["rcpt_tos"] == ["bob@example.test"], "RCPT TO with a refusal", env)
            expect(content == MESSAGE, "content differs (second message)", repr(content))
            print("ok: 550 for one recipient, exit 1")

            # 3. Every recipient refused for now.
            handler.refuse = {"": "450 4.2.1 Mailbox busy, try later"}
            code, out, err = send(port, message_file, "bob@example.test", "carol@example.test")
            expect(code == 75, f"exit code {code}, expected 75", out, err)
            lines = out.splitlines()
            expect(len(lines) == 2 and all(": deferred (4.2.1) via " in l
                                           and l.endswith(": 450 4.2.1 Mailbox busy, try later")
                                           for l in lines), "deferred lines", out)
            expect(len(recorded(store)) == 2, "a message was recorded with no recipient")
            print("ok: 450 for every recipient, exit 75")
        finally:
            controller.stop()


main()
