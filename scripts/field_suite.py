#!/usr/bin/env python3
"""Field suite: security and interop cases against the built smtp-server daemon.

Usage: scripts/field_suite.py BIN [--family F ...] [--list] [--case NAME ...]

Every case starts its own daemon (free loopback ports: a loopback listener on 127.0.0.1 that
may relay, a public listener on 127.0.0.2 that must not, `-s example.test --hostname
mx.example.test`, a temporary spool) with `--dns-server` pointed at a dnsmasq on loopback (MX
records of test domains) or at the closed port 127.0.0.1:1. Next hops are scripted Python
servers, Postfix's smtp-sink or a private Postfix instance, all on 127.0.0.0/8. Nothing here
talks to a non-loopback address or the system resolver. Python 3.11 standard library only; the
real peers (swaks, curl, msmtp, dnsmasq, Postfix, Dovecot, mutt, openssl) come from `.ci/run`.

Output: one line per case (`ok family/case` or `FAIL family/case: why`), a count per family,
exit status 1 when any case failed.
"""
import argparse, base64, mailbox, os, pty, re, select, shutil, signal, smtplib, socket, ssl, struct
import subprocess, sys, tempfile, threading, time, traceback

BIN = None
CASES = []  # (family, name, function)
FAMILIES = ["smuggling", "starttls", "relay", "filesystem", "limits", "hostile", "trace",
            "bounces", "interop", "submission", "ops"]
CASE_TIMEOUT = 60
SHARED = {}  # per run: certificate paths


class Fail(Exception):
    pass


def case(family):
    def register(f):
        CASES.append((family, f.__name__.replace("_", "-"), f))
        return f
    return register


def check(cond, why):
    if not cond:
        raise Fail(why)


def expect(reply, code, enh=None):
    c, text = reply
    if c != code or (enh is not None and not text.startswith(enh)):
        raise Fail(f"expected {code} {enh or ''}, got {c} {text!r}")


def wait_for(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def unix_listening(path):
    """Whether a Unix socket at `path` takes connections. Not os.path.exists: the file
    appears at bind(), before the server listens (a connect in between is refused)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def need(*progs):
    for p in progs:
        if not shutil.which(p):
            raise Fail(f"{p} is not installed (.ci/run installs it)")


# C0 controls except TAB/LF/CR, DEL, C1, line/paragraph separators, bidi controls, BOM.
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c"
                    "\u202a-\u202e\u2066-\u2069\ufeff]")


def unsafe_chars(text):
    return sorted(set(UNSAFE.findall(text)))


# ---------------------------------------------------------------------------------------------
# Context: temp dir and processes of one case, cleaned up afterwards.

class Ctx:
    def __init__(self, family, name):
        self.dir = tempfile.mkdtemp(prefix=f"fs-{family}-{name}-")
        os.chmod(self.dir, 0o755)  # Postfix and dnsmasq read files below it
        self.cleanups = []

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def on_cleanup(self, f):
        self.cleanups.append(f)

    def close(self, keep=False):
        for f in reversed(self.cleanups):
            try:
                f()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"  (cleanup: {e})", file=sys.stderr)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def popen(self, args, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)

        def stop():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.on_cleanup(stop)
        return p


def run(args, timeout=30, check_rc=True, **kw):
    r = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        raise Fail(f"{args[0]} exited {r.returncode}: {(r.stderr or r.stdout)[-600:]!r}")
    return r


# ---------------------------------------------------------------------------------------------
# DNS: dnsmasq on loopback.

def dns_query(port, name, qtype=1, timeout=1.0):
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        return s.recv(4096)
    finally:
        s.close()


class Dns:
    """dnsmasq answering for *.test from a temporary configuration, logging every query."""

    def __init__(self, ctx, mx=(), hosts=()):
        """mx: (domain, host, preference); hosts: (name, address)."""
        need("dnsmasq")
        self.log = ctx.path("dns.log")
        conf = ctx.path("dnsmasq.conf")
        lines = ["no-resolv", "no-hosts", "local=/test/", "log-queries",
                 f"log-facility={self.log}"]
        lines += [f"mx-host={d},{h},{p}" for d, h, p in mx]
        lines += [f"host-record={n},{a}" for n, a in hosts]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        for attempt in range(5):  # a free port can be taken by someone else before we bind it
            self.port = free_port("127.0.0.1", socket.SOCK_DGRAM)
            self.proc = ctx.popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                                   f"--port={self.port}", "--listen-address=127.0.0.1",
                                   "--bind-interfaces", "--pid-file=", "--user=root"],
                                  stderr=subprocess.PIPE)

            def up():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    dns_query(self.port, "probe.test", timeout=0.2)
                    return True
                except OSError:
                    return False
            r = wait_for(up, 10)
            if r is True:
                return
            err = self.proc.stderr.read().decode()[-400:] if r == "exited" else "no answer"
            if "in use" not in err:
                break
        raise Fail(f"dnsmasq did not start: {err}")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def queries(self):
        try:
            with open(self.log, errors="replace") as f:
                return re.findall(r"query\[\w+\] (\S+) from", f.read())
        except FileNotFoundError:
            return []


# ---------------------------------------------------------------------------------------------
# The daemon.

class Daemon:
    def __init__(self, ctx, dns=None, public=True, fmt="spool", extra=(), log_level="debug",
                 tls=False, users=None, spool=None, port=None, pub=None):
        self.ctx = ctx
        self.spool = spool or ctx.path("mail")
        for attempt in range(5):
            try:
                self._start(ctx, dns, public, fmt, extra, log_level, tls, users, port, pub)
                return
            except Fail as e:
                if "in use" not in str(e) or port or attempt == 4:
                    raise

    def _start(self, ctx, dns, public, fmt, extra, log_level, tls, users, port, pub):
        self.port = port or free_port("127.0.0.1")
        self.pub = (pub or free_port("127.0.0.2")) if public else None
        self.logfile = ctx.path("daemon.log")
        args = [BIN, "-d", self.spool, "-s", "example.test", "--hostname", "mx.example.test",
                "-l", f"127.0.0.1:{self.port}", "--dns-server", dns.addr if dns else "127.0.0.1:1",
                "-f", fmt, "--log-level", log_level, "--log-file", self.logfile]
        args += ["-p", f"127.0.0.2:{self.pub}"] if public else ["--no-public"]
        if tls:
            cert, key = certificate()
            args += ["--tls-cert", cert, "--tls-key", key]
        if users is not None:
            uf = ctx.path("users")
            with open(uf, "w") as f:
                f.write(users)
            args += ["-u", uf]
        args += list(extra)
        self.args = args
        self.proc = ctx.popen(args, stderr=subprocess.PIPE)
        if not getattr(self, "_cleanup", False):
            ctx.on_cleanup(self.stop)
            self._cleanup = True

        def up():
            if self.proc.poll() is not None:
                raise Fail("daemon exited at start: " + self.proc.stderr.read().decode()[-600:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if self.pub:
                    socket.create_connection(("127.0.0.2", self.pub), timeout=1).close()
                return True
            except OSError:
                return False
        check(wait_for(up, 20, 0.05), "daemon did not start listening")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def client(self, public=False, timeout=10):
        if public:
            return Client("127.0.0.2", self.pub, timeout)
        return Client("127.0.0.1", self.port, timeout)

    def smtplib(self, public=False):
        if public:
            return smtplib.SMTP("127.0.0.2", self.pub, local_hostname="client.test", timeout=15)
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=15)

    def queue_entries(self):
        d = os.path.join(self.spool, ".queue", "entries")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def queue_bytes(self):
        total = 0
        for root, _, files in os.walk(os.path.join(self.spool, ".queue")):
            for f in files:
                total += os.lstat(os.path.join(root, f)).st_size
        return total

    def messages(self, user):
        """The messages of a mailbox (numbered spool or Maildir new/+cur/), oldest first."""
        d = os.path.join(self.spool, user)
        if os.path.isdir(os.path.join(d, "new")) or os.path.isdir(os.path.join(d, "cur")):
            out = []
            for sub in ("new", "cur"):
                p = os.path.join(d, sub)
                for n in sorted(os.listdir(p)) if os.path.isdir(p) else []:
                    out.append(read(os.path.join(p, n)))
            return out
        if not os.path.isdir(d):
            return []
        nums = sorted(int(n) for n in os.listdir(d) if n.isdigit())
        return [read(os.path.join(d, str(n))) for n in nums]

    def all_messages(self):
        out = {}
        if os.path.isdir(self.spool):
            for u in os.listdir(self.spool):
                if not u.startswith(".") and os.path.isdir(os.path.join(self.spool, u)):
                    m = self.messages(u)
                    if m:
                        out[u] = m
        return out

    def bounces(self, user="alice"):
        return [m for m in self.messages(user) if b"multipart/report" in m]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def certificate():
    if "cert" not in SHARED:
        need("openssl")
        d = SHARED["dir"]
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
             "-subj", "/CN=mx.example.test", "-addext", "subjectAltName=DNS:mx.example.test"])
        SHARED["cert"] = (cert, key)
    return SHARED["cert"]


# ---------------------------------------------------------------------------------------------
# A raw SMTP client that shows every reply.

class Client:
    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.greeting = None

    def greet(self):
        self.greeting = self.reply()
        return self.greeting

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _line(self):
        while b"\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self):
        """(code, text of all lines joined by \\n) or (None, '') at EOF / timeout."""
        lines = []
        try:
            while True:
                line = self._line()
                if line is None:
                    return (None, "\n".join(lines))
                lines.append(line[4:])
                if len(line) < 4 or line[3] != "-":
                    try:
                        return (int(line[:3]), "\n".join(lines))
                    except ValueError:
                        raise Fail(f"bad reply line {line!r}")
        except (socket.timeout, ConnectionResetError):
            return (None, "\n".join(lines))

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def ehlo(self, name="client.test"):
        self.greet()
        r = self.cmd(f"EHLO {name}")
        expect(r, 250)
        return r

    def closed(self, timeout=5):
        """True when the server closes the connection (what it still sends is discarded)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
                self.buf += d
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def submit(d, sender, rcpts, body, public=False):
    """Sends one message with the raw client; returns the reply to the final dot."""
    c = d.client(public)
    c.ehlo()
    expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(body)
    r = c.reply()
    c.cmd("QUIT")
    c.close()
    return r


MSG = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: field suite\r\n\r\nhello\r\n.\r\n"


# ---------------------------------------------------------------------------------------------
# A scripted next hop.

class Peer:
    """An SMTP receiver on host:port recording each message's raw DATA bytes.

    rcpt(addr) -> reply bytes or None (250); after_dot: reply bytes, or None to go silent;
    starttls: None (not offered) or "fail" (offered, 220, then the handshake is broken)."""

    def __init__(self, ctx, host="127.0.0.1", port=None, rcpt=None, after_dot=b"250 2.0.0 Ok\r\n",
                 starttls=None, chunking=False):
        self.host, self.port = host, port or free_port(host)
        self.rcpt, self.after_dot, self.starttls, self.chunking = rcpt, after_dot, starttls, chunking
        self.got, self.sessions, self.tls_attempts = [], 0, 0
        # RCPT commands read, over all sessions (a relay may send several messages, or
        # several attempts, on one session: its connection cache).
        self.rcpt_commands = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((self.host, self.port))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        ctx.on_cleanup(self.stop)

    def stop(self):
        self.stopping.set()
        self.ls.close()

    def messages(self):
        with self.lock:
            return list(self.got)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.sessions += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(30)
        buf = b""

        def line():
            nonlocal buf
            while b"\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return None
                buf += d
            ln, buf = buf.split(b"\n", 1)
            return ln

        try:
            s.sendall(b"220 peer.test ESMTP\r\n")
            mail, rcpts = None, []
            while True:
                ln = line()
                if ln is None:
                    return
                verb = ln[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    ext = [b"PIPELINING", b"8BITMIME", b"SMTPUTF8"]
                    if self.chunking:
                        ext.append(b"CHUNKING")
                    if self.starttls:
                        ext.append(b"STARTTLS")
                    s.sendall(b"250-peer.test\r\n" + b"".join(
                        (b"250-" if i < len(ext) - 1 else b"250 ") + e + b"\r\n"
                        for i, e in enumerate(ext)))
                elif verb == b"STAR" and self.starttls == "fail":
                    with self.lock:
                        self.tls_attempts += 1
                    s.sendall(b"220 2.0.0 go ahead\r\n")
                    time.sleep(0.2)
                    s.sendall(b"this is not TLS\r\n")
                    return
                elif verb == b"MAIL":
                    mail, rcpts = ln[10:].strip().decode("utf-8", "replace"), []
                    s.sendall(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    with self.lock:
                        self.rcpt_commands += 1
                    addr = ln[8:].strip().decode("utf-8", "replace")
                    addr = addr.split(">")[0].lstrip("<")
                    r = self.rcpt(addr) if self.rcpt else None
                    if r is None:
                        rcpts.append(addr)
                        r = b"250 2.1.5 Ok\r\n"
                    s.sendall(r)
                elif verb == b"DATA":
                    if not rcpts:
                        s.sendall(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    s.sendall(b"354 go\r\n")
                    data = buf
                    while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
                        d = s.recv(65536)
                        if not d:
                            return
                        data += d
                    buf = b""
                    with self.lock:
                        self.got.append({"mail": mail, "rcpts": rcpts, "data": data})
                    if self.after_dot is None:
                        while not self.stopping.wait(0.5):
                            pass
                        return
                    s.sendall(self.after_dot)
                elif verb == b"QUIT":
                    s.sendall(b"221 2.0.0 bye\r\n")
                    return
                elif verb in (b"RSET", b"NOOP"):
                    s.sendall(b"250 2.0.0 Ok\r\n")
                else:
                    s.sendall(b"502 5.5.1 not here\r\n")
        except OSError:
            pass
        finally:
            s.close()


def bare_cr_lf(data):
    """Offsets of CR not followed by LF and of LF not preceded by CR."""
    bad = [i for i, b in enumerate(data) if b == 13 and data[i + 1:i + 2] != b"\n"]
    bad += [i for i, b in enumerate(data) if b == 10 and (i == 0 or data[i - 1] != 13)]
    return bad


def relay_setup(ctx, domains=("remote.test",), peer_kw=None, daemon_kw=None, peer_host="127.0.0.1"):
    """A Python next hop for `domains` through dnsmasq MX records, and a daemon using them."""
    peer = Peer(ctx, host=peer_host, **(peer_kw or {}))
    mx = [(dom, f"mx.{dom}", 10) for dom in domains]
    hosts = [(f"mx.{dom}", peer_host) for dom in domains]
    dns = Dns(ctx, mx=mx, hosts=hosts)
    kw = dict(daemon_kw or {})
    extra = ["--remote-port", str(peer.port), "--retry-base", "1s"] + list(kw.pop("extra", ()))
    d = Daemon(ctx, dns=dns, extra=extra, **kw)
    return d, peer, dns


# =============================================================================================
# smuggling

SMUGGLE_ENDINGS = {"lf-dot-lf": "\n.\n", "crlf-dot-lf": "\r\n.\n", "lf-dot-crlf": "\n.\r\n",
                   "cr-dot-cr": "\r.\r", "crlf-dot-cr": "\r\n.\r"}


def smuggle(d, ending, rcpt, evil):
    """A message to `rcpt` with a false end of data then a smuggled transaction to `evil`;
    returns the replies the server sent (up to the QUIT)."""
    c = d.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send("Subject: first\r\n\r\nfirst message" + ending +
           f"MAIL FROM:<alice@example.test>\r\nRCPT TO:<{evil}>\r\nDATA\r\n"
           "Subject: smuggled\r\n\r\nsmuggled message\r\n.\r\nQUIT\r\n")
    replies = []
    while True:
        r = c.reply()
        if r[0] is None:
            break
        replies.append(r)
        if r[0] == 221:
            break
    c.close()
    return replies


def smuggling_local(ending):
    def f(ctx):
        d = Daemon(ctx)
        replies = smuggle(d, ending, "bob@example.test", "eve@example.test")
        check(not d.messages("eve"), f"smuggled recipient got mail; replies {replies}")
        total = sum(len(v) for v in d.all_messages().values())
        check(total <= 1, f"{total} messages stored")
        check(not [r for r in replies if r[0] == 354], f"smuggled DATA was executed: {replies}")
        expect(replies[0], 550, "5.5.2")
    return f


def smuggling_relay(ending):
    """Relayed: the Python next hop records the raw bytes of each DATA."""
    def f(ctx):
        d, peer, _ = relay_setup(ctx)
        replies = smuggle(d, ending, "bob@remote.test", "eve@remote.test")
        # Then a clean message, so that the next hop is known to receive what goes out.
        expect(submit(d, "alice@example.test", ["bob@remote.test"],
                      "Subject: control\r\n\r\nclean\r\n.\r\n"), 250)
        check(wait_for(lambda: any(b"Subject: control" in m["data"] for m in peer.messages()), 15),
              f"the clean message never reached the next hop: {d.log()[-400:]}")
        wait_for(lambda: not d.queue_entries(), 10)
        time.sleep(0.5)
        got = peer.messages()
        check(len(got) <= 2, f"the next hop got {len(got)} messages; replies {replies}")
        for m in got:
            check("eve@remote.test" not in m["rcpts"] and b"smuggled message" not in m["data"],
                  f"smuggled message reached the next hop: {m}")
            check(not bare_cr_lf(m["data"]), f"bare CR/LF passed on: {m['data'][-200:]!r}")
        check(not d.queue_entries(), f"still queued: {d.queue_entries()}")
    return f


@case("smuggling")
def relayed_to_smtp_sink(ctx):
    """Postfix's smtp-sink as the next hop: its dump shows every envelope it was given."""
    need("smtp-sink")
    sink_port = free_port()
    dump = ctx.path("sink")
    os.mkdir(dump)
    os.chmod(dump, 0o777)
    ctx.popen(["smtp-sink", "-u", "nobody", "-d", os.path.join(dump, "%M."),
               f"127.0.0.1:{sink_port}", "100"])
    check(wait_for(lambda: _connects("127.0.0.1", sink_port), 10), "smtp-sink did not start")
    dns = Dns(ctx, mx=[("remote.test", "mx.remote.test", 10)],
              hosts=[("mx.remote.test", "127.0.0.1")])
    d = Daemon(ctx, dns=dns, extra=["--remote-port", str(sink_port), "--retry-base", "1s"])
    for ending in SMUGGLE_ENDINGS.values():
        smuggle(d, ending, "bob@remote.test", "eve@remote.test")
    expect(submit(d, "alice@example.test", ["bob@remote.test"],
                  "Subject: control\r\n\r\nclean\r\n.\r\n"), 250)
    check(wait_for(lambda: any(b"Subject: control" in read(os.path.join(dump, n))
                               for n in os.listdir(dump)), 15),
          f"the clean message never reached smtp-sink: {d.log()[-400:]}")
    wait_for(lambda: not d.queue_entries(), 10)
    time.sleep(0.5)
    dumps = [read(os.path.join(dump, n)) for n in os.listdir(dump)]
    check(len(dumps) <= 1 + len(SMUGGLE_ENDINGS), f"{len(dumps)} messages at smtp-sink")
    for m in dumps:
        check(b"X-Rcpt-Args: <eve@remote.test>" not in m and b"smuggled message" not in m,
              f"smuggled message at smtp-sink: {m[:400]!r}")


def _connects(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


for _n, _e in SMUGGLE_ENDINGS.items():
    _f = smuggling_local(_e)
    _f.__name__ = f"local_{_n}"
    case("smuggling")(_f)
for _n, _e in SMUGGLE_ENDINGS.items():
    _f = smuggling_relay(_e)
    _f.__name__ = f"relayed_{_n}"
    case("smuggling")(_f)


def bare_in_data(body):
    def f(ctx):
        d = Daemon(ctx)
        r = submit(d, "alice@example.test", ["bob@example.test"], body)
        expect(r, 550, "5.5.2")
        check(not d.all_messages(), "a message was stored")
    return f


for _n, _b in [("bare_lf_in_data", "Subject: x\r\n\r\none\ntwo\r\n.\r\n"),
               ("bare_cr_in_data", "Subject: x\r\n\r\none\rtwo\r\n.\r\n")]:
    _f = bare_in_data(_b)
    _f.__name__ = _n
    case("smuggling")(_f)


@case("smuggling")
def bdat_bare_lf_not_relayed_raw(ctx):
    """BDAT content is binary; relayed to a next hop without CHUNKING it must not go out with
    its bare LF / bare CR / lone dot line (a smuggling vector at the next hop)."""
    d, peer, _ = relay_setup(ctx)
    c = d.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    expect(c.cmd("RCPT TO:<bob@remote.test>"), 250)
    chunk = (b"Subject: bdat\r\n\r\nline one\n.\nMAIL FROM:<alice@example.test>\n"
             b"RCPT TO:<eve@remote.test>\nDATA\nsmuggled\r.\rend\r\n")
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = c.reply()
    c.close()
    if r[0] == 250:
        check(wait_for(lambda: peer.messages() or None, 15), "relayed message never arrived")
        for m in peer.messages():
            check("eve@remote.test" not in m["rcpts"], "smuggled recipient reached the next hop")
            check(not bare_cr_lf(m["data"]), f"bare CR/LF sent onward: {m['data']!r}")
    else:
        check(r[0] and 500 <= r[0] < 600, f"unexpected reply {r}")
    time.sleep(1)
    check(len(peer.messages()) <= 1, f"{len(peer.messages())} messages at the next hop")


@case("smuggling")
def malformed_bdat_chunk_is_never_read_as_commands(ctx):
    """A BDAT line that does not parse gives no chunk size: its chunk (here commands that
    would relay to eve) must not be executed. 521 5.5.4 and the connection closes, as
    Postfix; nothing is stored or relayed."""
    d, peer, _ = relay_setup(ctx)
    chunk = (b"RSET\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<eve@remote.test>\r\n"
             b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n")
    for line in (b"BDAT x", b"BDAT 10 FIRST", b"BDAT 99999999999999999999", b"BDAT 5 LAST junk",
                 b"BDAT\t117 LAST", b"BDAT 117 LAST" + b" " * 2100):
        c = d.client()
        c.ehlo()
        expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
        c.send(line + b"\r\n" + chunk)
        expect(c.reply(), 521, "5.5.4")
        check(c.closed(5), f"{line!r}: connection not closed")
    time.sleep(1)
    check(not peer.messages(), f"{len(peer.messages())} messages at the next hop")
    check(not d.all_messages(), "a message was stored")


# =============================================================================================
# STARTTLS

def tls_wrap(c):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")


@case("starttls")
def pipelined_commands_after_starttls_are_not_executed(ctx):
    d = Daemon(ctx, tls=True)
    c = d.client()
    c.ehlo()
    c.send("STARTTLS\r\nMAIL FROM:<injected@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
    r = c.reply()
    if r[0] != 220:
        check(r[0] is None or r[0] >= 500, f"odd reply to STARTTLS {r}")
        return  # dropped or refused: nothing was injected
    # Any data already buffered before the handshake would be plaintext the server injected.
    check(c.buf == b"", f"plaintext after 220: {c.buf!r}")
    try:
        tls_wrap(c)
    except (ssl.SSLError, OSError):
        return  # the server dropped the connection: acceptable
    c.sock.settimeout(1.5)
    r = c.reply()
    check(r[0] is None, f"the server answered pipelined plaintext commands after TLS: {r}")
    c.sock.settimeout(10)
    expect(c.cmd("EHLO client.test"), 250)
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250, "2.1.0")  # not 503: no MAIL was run
    r = c.cmd("DATA")  # and no RCPT either: 503 or (RFC 2920) 554 "no valid recipients"
    check(r[0] in (503, 554) and r[1].startswith("5.5.1"), f"DATA after the new MAIL: {r}")


@case("starttls")
def second_starttls_is_refused(ctx):
    d = Daemon(ctx, tls=True)
    c = d.client()
    c.ehlo()
    expect(c.cmd("STARTTLS"), 220)
    tls_wrap(c)
    r = c.cmd("EHLO client.test")
    expect(r, 250)
    check("STARTTLS" not in r[1].split("\n"), f"STARTTLS offered again: {r}")
    expect(c.cmd("STARTTLS"), 503, "5.5.1")
    expect(c.cmd("NOOP"), 250)


@case("starttls")
def starttls_not_offered_without_certificate(ctx):
    d = Daemon(ctx)
    c = d.client()
    r = c.ehlo()
    check("STARTTLS" not in r[1].split("\n"), f"STARTTLS offered: {r}")
    expect(c.cmd("STARTTLS"), 502, "5.5.1")


@case("starttls")
def swaks_tls_delivers_and_received_says_tls(ctx):
    need("swaks")
    d = Daemon(ctx, tls=True)
    run(["swaks", "--server", f"127.0.0.1:{d.port}", "--tls", "--helo", "client.test",
         "--from", "alice@example.test", "--to", "bob@example.test",
         "--header", "Subject: swaks tls", "--body", "over tls", "--timeout", "15"])
    m = d.messages("bob")
    check(len(m) == 1, f"bob has {len(m)} messages")
    received = m[0].split(b"\r\n\r\n")[0]
    check(re.search(rb"Received: from client\.test [^\r]*\r\n\t\(using TLSv1\.[23] with cipher "
                    rb"[A-Z0-9_-]+ \(\d+/\d+ bits\)\)\r\n\tby mx\.example\.test with ESMTPS ",
                    received), f"Received does not say TLS: {received[:300]!r}")


@case("starttls")
def smtplib_starttls_on_public_listener(ctx):
    d = Daemon(ctx, tls=True)
    with d.smtplib(public=True) as s:
        s.starttls(context=_noverify())
        s.ehlo("client.test")
        check(s.sendmail("x@elsewhere.test", ["bob@example.test"], "Subject: t\r\n\r\nhi\r\n") == {},
              "refused")
        code, msg = s.rcpt("victim@remote.test") if s.mail("x@elsewhere.test")[0] == 250 else (0, b"")
        check(code == 554 and msg.startswith(b"5.7.1"), f"relay over TLS from public: {code} {msg}")
    m = d.messages("bob")
    check(len(m) == 1 and b" with ESMTPS " in m[0], "no TLS delivery to bob")


def _noverify():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


# =============================================================================================
# relay control and loops

def public_rcpt(ctx, rcpt, want, enh=None, stored_as=None):
    dns = Dns(ctx, mx=[("remote.test", "mx.remote.test", 10)],
              hosts=[("mx.remote.test", "127.0.0.1")])
    d = Daemon(ctx, dns=dns)
    c = d.client(public=True)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<attacker@evil.test>"), 250)
    r = c.cmd(f"RCPT TO:{rcpt}")
    if r[0] == 250:
        expect(c.cmd("DATA"), 354)
        c.send("Subject: relay probe\r\n\r\nprobe\r\n.\r\n")
        c.reply()
    c.cmd("QUIT")
    c.close()
    time.sleep(0.5)
    check(not d.queue_entries(), f"queued for relay: {d.queue_entries()} (reply {r})")
    bad = [q for q in dns.queries() if "remote.test" in q or "192.0.2.1" in q]
    check(not bad, f"DNS queries for the remote target: {bad} (reply {r})")
    if isinstance(want, int):
        expect(r, want, enh)
    else:
        check(r[0] in want, f"expected one of {want}, got {r}")
    if stored_as:
        check(len(d.messages(stored_as)) == 1, f"not delivered locally to {stored_as}: {r}")


def relay_case(name, rcpt, want, enh=None, stored_as=None):
    def f(ctx):
        public_rcpt(ctx, rcpt, want, enh, stored_as)
    f.__name__ = name
    case("relay")(f)


relay_case("public_remote_recipient", "<bob@remote.test>", 554, "5.7.1")
relay_case("public_percent_hack", "<bob%remote.test@example.test>", (550, 501, 554))
relay_case("public_source_route", "<@example.test:bob@remote.test>", 554, "5.7.1")
relay_case("public_quoted_at", '<"bob@remote.test"@example.test>', (550, 501, 554))
relay_case("public_double_at", "<bob@remote.test@example.test>", (501, 550, 554))
relay_case("public_foreign_literal", "<bob@[192.0.2.1]>", 554, "5.7.1")
relay_case("public_trailing_dot_local", "<bob@example.test.>", (250, 501, 550))
relay_case("public_upper_case_local", "<bob@EXAMPLE.TEST>", 250, "2.1.5", stored_as="bob")
relay_case("public_own_literal_is_local", "<bob@[127.0.0.2]>", 250, "2.1.5", stored_as="bob")
relay_case("public_remote_trailing_dot", "<bob@remote.test.>", (501, 554))


def mx_loop(address, via_public=False):
    def f(ctx):
        dns = Dns(ctx, mx=[("loop.test", "mx.loop.test", 10)], hosts=[("mx.loop.test", address)])
        # Ports chosen first, so that --remote-port is one of the daemon's own listeners.
        port, pub = free_port("127.0.0.1"), free_port("127.0.0.2")
        target = pub if via_public else port
        d = Daemon(ctx, dns=dns, port=port, pub=pub,
                   extra=["--remote-port", str(target), "--retry-base", "1s"])
        expect(submit(d, "alice@example.test", ["x@loop.test"], MSG), 250)
        b = wait_for(lambda: d.bounces(), 20)
        check(b, f"no bounce; log tail: {d.log()[-800:]}")
        check(re.search(rb"Final-Recipient: rfc822; x@loop\.test\r\nAction: failed\r\nStatus: 5\.4\.6\r\n",
                        b[0]), f"bounce without Status: 5.4.6: {b[0][-900:]!r}")
        n = d.log().count("message accepted")
        check(n == 1, f"{n} 'message accepted' log lines: the daemon talked to itself")
    return f


for _n, _a in [("127_0_0_1", "127.0.0.1"), ("0_0_0_0", "0.0.0.0"), ("ipv6_unspecified", "::"),
               ("v4mapped_unspecified", "::ffff:0.0.0.0"), ("127_0_0_2", "127.0.0.2"),
               ("ipv6_loopback", "::1"), ("v4mapped_loopback", "::ffff:127.0.0.1")]:
    _f = mx_loop(_a)
    _f.__name__ = f"mx_loop_{_n}"
    case("relay")(_f)
_f = mx_loop("127.0.0.2", via_public=True)
_f.__name__ = "mx_loop_public_listener"
case("relay")(_f)


# =============================================================================================
# filesystem

def outside_changes(before, after):
    """What changed outside the spool. A file outside that only lost a link (same size and
    mtime) is unchanged: the store removed or replaced a planted hard link in its own
    directory, which writes nothing outside; a link gained means the store linked to it."""
    b, a = dict((p, rest) for p, *rest in before), dict((p, rest) for p, *rest in after)
    for p in list(a):
        if p in b and a[p][0] == b[p][0] and a[p][2] == b[p][2] and a[p][1] < b[p][1]:
            a[p] = b[p]
    out = [f"new {p}" for p in a if p not in b]
    out += [f"changed {p} (size, links {b[p][:2]} -> {a[p][:2]}"
            f"{', entries created or removed' if b[p][:2] == a[p][:2] else ''})"
            for p in a if p in b and a[p] != b[p]]
    out += [f"removed {p}" for p in b if p not in a]
    return "; ".join(out)


def snapshot_outside(ctx, spool):
    """Every path under the case's directory outside the spool (and the logs)."""
    out = set()
    for root, dirs, files in os.walk(ctx.dir):
        for n in dirs + files:
            p = os.path.join(root, n)
            if p == spool or p.startswith(spool + os.sep) or n in ("daemon.log", "dns.log"):
                continue
            st = os.lstat(p)
            out.add((p, st.st_size, st.st_nlink, st.st_mtime_ns))
    return out


def bad_name(name, rcpt, want, enh):
    def f(ctx):
        d = Daemon(ctx)
        before = snapshot_outside(ctx, d.spool)
        c = d.client()
        c.ehlo()
        expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
        c.send(b"RCPT TO:" + rcpt + b"\r\n")
        r = c.reply()
        c.close()
        expect(r, want, enh)
        check(snapshot_outside(ctx, d.spool) == before, "something was written outside the spool")
        check(not d.all_messages(), "a message was stored")
    f.__name__ = name
    case("filesystem")(f)


bad_name("mailbox_dotdot", b'<"../../etc"@example.test>', 550, "5.1.3")
bad_name("mailbox_dotdot_only", b'<".."@example.test>', 550, "5.1.3")
bad_name("mailbox_slash", b'<"a/b"@example.test>', 550, "5.1.3")
bad_name("mailbox_leading_dot", b'<".profile"@example.test>', 550, "5.1.3")
bad_name("mailbox_nul", b"<a\x00b@example.test>", 501, "5.1.3")
# 65 octets parse (senders' SRS and VERP addresses are longer: see the limits family) but no
# mailbox name is longer than 64.
bad_name("mailbox_overlong", b"<" + b"a" * 65 + b"@example.test>", 550, "5.1.3")
bad_name("mailbox_quoted_overlong", b'<"' + b"a" * 300 + b'"@example.test>', 501, "5.1.3")


def unchanged_outside(before, after):
    """`after` equals `before` but for files that only lost a link (same size and mtime): the
    store removed or replaced a planted hard link in its own directory, writing nothing
    outside."""
    b = {p: rest for p, *rest in before}
    norm = set()
    for p, size, nlink, mtime in after:
        if p in b and b[p][0] == size and b[p][2] == mtime and nlink < b[p][1]:
            nlink = b[p][1]
        norm.add((p, size, nlink, mtime))
    return norm == before


def planted(name, fmt, plant, refuse=True):
    """`plant(spool, outside)` prepares a trap; nothing may be written outside the spool, and
    with `refuse` (a symbolic link) delivery to alice must get a 4xx and a log line naming the
    path. A planted hard link (`refuse=False`) cannot be told from the store's own file by its
    name: the store must never write through it or link to it (it replaces it), and the
    message is delivered."""
    def f(ctx):
        outside = ctx.path("outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "victim"), "w") as v:
            v.write("victim\n")
        d = Daemon(ctx, fmt=fmt)
        path = plant(d.spool, outside)
        before = snapshot_outside(ctx, d.spool)
        r = submit(d, "bob@example.test", ["alice@example.test"], MSG)
        after = snapshot_outside(ctx, d.spool)
        check(unchanged_outside(before, after),
              f"outside the spool: {outside_changes(before, after)} (reply {r})")
        victim = os.stat(os.path.join(outside, "victim"))
        check(open(os.path.join(outside, "victim")).read() == "victim\n", "victim changed")
        if not refuse:
            expect(r, 250)
            box = os.path.join(d.spool, "alice")
            for n in ("1", "1.status", ".recent"):
                st = os.lstat(os.path.join(box, n))
                check((st.st_dev, st.st_ino) != (victim.st_dev, victim.st_ino),
                      f"{n} is the planted file")
            check(open(os.path.join(box, "1.status"), "rb").read() == b"\\Recent\n",
                  "1.status is not \\Recent")
            return
        check(r[0] is not None and 400 <= r[0] < 500, f"expected a 4xx, got {r}")
        check(path in d.log() or os.path.basename(path) in d.log(),
              f"no log line names {path}")
    f.__name__ = name
    case("filesystem")(f)


def _mkuser(spool, user="alice"):
    os.makedirs(os.path.join(spool, user), exist_ok=True)
    return os.path.join(spool, user)


def plant_mailbox_symlink(spool, outside):
    p = os.path.join(spool, "alice")
    os.symlink(outside, p)
    return p


def plant_maildir_new(spool, outside):
    u = _mkuser(spool)
    for s in ("tmp", "cur"):
        os.mkdir(os.path.join(u, s))
    os.symlink(outside, os.path.join(u, "new"))
    return os.path.join(u, "new")


def plant_maildir_tmp(spool, outside):
    u = _mkuser(spool)
    for s in ("new", "cur"):
        os.mkdir(os.path.join(u, s))
    os.symlink(outside, os.path.join(u, "tmp"))
    return os.path.join(u, "tmp")


def plant_recent_hardlink(spool, outside):
    u = _mkuser(spool)
    os.link(os.path.join(outside, "victim"), os.path.join(u, ".recent"))
    return os.path.join(u, ".recent")


def plant_recent_symlink(spool, outside):
    u = _mkuser(spool)
    os.symlink(os.path.join(outside, "victim"), os.path.join(u, ".recent"))
    return os.path.join(u, ".recent")


def plant_next_status_hardlink(spool, outside):
    u = _mkuser(spool)
    os.link(os.path.join(outside, "victim"), os.path.join(u, "1.status"))
    return os.path.join(u, "1.status")


def plant_staging_symlink(spool, outside):
    staging = os.path.join(spool, ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.symlink(outside, staging)
    return staging


planted("symlinked_mailbox_dir", "spool", plant_mailbox_symlink)
planted("symlinked_maildir_dir", "maildir", plant_mailbox_symlink)
planted("symlinked_maildir_new", "maildir", plant_maildir_new)
planted("symlinked_maildir_tmp", "maildir", plant_maildir_tmp)
planted("hardlinked_status_template", "spool", plant_recent_hardlink, refuse=False)
planted("symlinked_status_template", "spool", plant_recent_symlink)
planted("hardlinked_status_file", "spool", plant_next_status_hardlink, refuse=False)
planted("symlinked_staging_dir", "spool", plant_staging_symlink)


# =============================================================================================
# limits and floods

@case("limits")
def recipients_past_the_limit_do_not_lose_the_first_100(ctx):
    # 120 recipients: the first 100 are accepted, the other 20 get 452 4.5.3 (the client
    # sends them again later), and the message is delivered; the session is not cut off.
    d = Daemon(ctx)
    rcpts = [f"u{i}@example.test" for i in range(120)]
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=20) as c:
        refused = c.sendmail("alice@example.test", rcpts, b"Subject: many\r\n\r\nhi\r\n")
    check(sorted(refused) == sorted(rcpts[100:]), f"refused: {sorted(refused)[:5]}...")
    check(all(v[0] == 452 and v[1].startswith(b"4.5.3") for v in refused.values()),
          f"{list(refused.values())[:1]}")
    check(len(d.messages("u0")) == 1 and len(d.messages("u99")) == 1, "not delivered")
    check(not os.path.exists(os.path.join(d.spool, "u100")), "u100 got it")


@case("limits")
def command_line_too_long(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    # Longer than 2048 octets (Postfix's line_length_limit; MAIL and RCPT parameters may
    # lengthen RFC 5321's 512).
    expect(c.cmd("NOOP " + "x" * 2100), 500, "5.5.2")
    expect(c.cmd("MAIL FROM:<" + "a" * 2100 + "@example.test>"), 500, "5.5.2")
    # A 255-octet local part at a long domain, with the parameters a relay adds: accepted.
    sender = "a" * 255 + "@" + ".".join(["d" * 60] * 4)
    expect(c.cmd(f"MAIL FROM:<{sender}> SIZE=12345 BODY=8BITMIME"), 250, "2.1.0")
    expect(c.cmd("RSET"), 250)
    expect(c.cmd("NOOP"), 250, "2.0.0")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)  # the long MAIL was not run


@case("limits")
def huge_command_line_is_not_buffered(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    try:
        c.send("NOOP " + "x" * 2_000_000 + "\r\n")
    except OSError:
        return  # the server closed on us: fine
    r = c.reply()
    check(r[0] in (500, 421, None), f"reply {r}")
    if r[0] == 500:
        expect(c.cmd("NOOP"), 250)


@case("limits")
def long_text_line_stored_unchanged(ctx):
    # DAEMON.md: text lines over 1000 octets are accepted and stored unchanged.
    d = Daemon(ctx)
    long = "y" * 1500
    expect(submit(d, "alice@example.test", ["bob@example.test"],
                  f"Subject: long\r\n\r\n{long}\r\n.\r\n"), 250)
    m = d.messages("bob")
    check(len(m) == 1 and m[0].endswith(f"\r\n\r\n{long}\r\n".encode()), "long line changed")


@case("limits")
def recipient_101_is_refused(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    for i in range(100):
        expect(c.cmd(f"RCPT TO:<u{i}@example.test>"), 250)
    expect(c.cmd("RCPT TO:<u100@example.test>"), 452, "4.5.3")
    expect(c.cmd("DATA"), 354)
    c.send("Subject: many\r\n\r\nx\r\n.\r\n")
    expect(c.reply(), 250)
    check(not d.messages("u100") and len(d.messages("u99")) == 1, "wrong recipients stored")


@case("limits")
def size_param_over_limit(ctx):
    d = Daemon(ctx, extra=["--max-message-size", "10000"])
    c = d.client()
    r = c.ehlo()
    check("SIZE 10000" in r[1].split("\n"), f"SIZE not advertised: {r}")
    expect(c.cmd("MAIL FROM:<alice@example.test> SIZE=10001"), 552, "5.3.4")
    expect(c.cmd("MAIL FROM:<alice@example.test> SIZE=10000"), 250)


@case("limits")
def long_srs_and_verp_senders_are_accepted(ctx):
    # RFC 5321 says 64 octets for a local part, but forwarded mail rewritten with SRS and the
    # bounce addresses of lists and bulk senders (VERP: the recipient inside) are longer, and
    # Postfix takes them: refusing them loses real mail. Up to 255 octets are accepted; 256
    # get 501 5.1.7 and a message to a 65-octet local mailbox 550 5.1.3 (no such name).
    d = Daemon(ctx, extra=["--max-message-size", "10000"])
    srs = "SRS0=HHHH=TT=" + "lists.sub.example.org" + "=" + "firstname.lastname-with-a-long-tag"
    verp = "bounces+1234567-abcd-" + "someone.with.a.long.name=example.org" + "-" + "x" * 20
    for local in (srs, verp, "a" * 255):
        check(len(local) > 64, local)
        c = d.client()
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{local}@forwarder.example>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send("Subject: forwarded\r\n\r\nx\r\n.\r\n")
        expect(c.reply(), 250)
        c.close()
    msgs = d.messages("bob")
    check(len(msgs) == 3, f"{len(msgs)} messages")
    check(any(f"Return-Path: <{srs}@forwarder.example>".encode() in m for m in msgs), "no SRS Return-Path")
    c = d.client()
    c.ehlo()
    expect(c.cmd(f"MAIL FROM:<{'a' * 256}@forwarder.example>"), 501, "5.1.7")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    expect(c.cmd(f"RCPT TO:<{'b' * 65}@example.test>"), 550, "5.1.3")


@case("limits")
def guessing_recipients_is_cut_off_after_20(ctx):
    # A directory harvest on the public listener: unknown users (550 5.1.1) and relay
    # attempts (554 5.7.1) count; past the 10th each refusal waits a second (Postfix's
    # smtpd_soft_error_limit and smtpd_error_sleep_time), the 20th is followed by 421 4.7.0
    # and the close (smtpd_hard_error_limit). A client that delivers between its refusals is
    # never cut off.
    users = "alice\nbob\n"
    d = Daemon(ctx, users=users)
    c = d.client(public=True)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@remote.example>"), 250)
    t = time.monotonic()
    for i in range(10):
        expect(c.cmd(f"RCPT TO:<user{i}@example.test>"), 550, "5.1.1")
    fast = time.monotonic() - t
    t = time.monotonic()
    for i in range(10, 19):
        expect(c.cmd(f"RCPT TO:<user{i}@example.test>"), 550, "5.1.1")
    slow = time.monotonic() - t
    check(slow >= 9 and fast < slow, f"ten refusals in {fast:.1f}s, nine more in {slow:.1f}s")
    r = c.cmd("RCPT TO:<x@elsewhere.example>")
    expect(r, 554, "5.7.1")
    expect(c.reply(), 421, "4.7.0")
    check(c.closed(5), "connection not closed after 421")
    c = d.client(public=True)
    c.ehlo()
    for _ in range(3):
        expect(c.cmd("MAIL FROM:<a@remote.example>"), 250)
        for i in range(12):
            expect(c.cmd(f"RCPT TO:<user{i}@example.test>"), 550, "5.1.1")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send("Subject: x\r\n\r\nhi\r\n.\r\n")
        expect(c.reply(), 250)
    expect(c.cmd("QUIT"), 221)
    check(len(d.messages("bob")) == 3, f"{len(d.messages('bob'))} messages")


@case("limits")
def size_param_not_a_number(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<alice@example.test> SIZE=abc"), 501, "5.5.4")


@case("limits")
def message_over_size_limit(ctx):
    d = Daemon(ctx, extra=["--max-message-size", "10000"])
    r = submit(d, "alice@example.test", ["bob@example.test"],
               "Subject: big\r\n\r\n" + ("z" * 78 + "\r\n") * 200 + ".\r\n")
    expect(r, 552, "5.3.4")
    check(not d.all_messages(), "the message was stored")
    tmp = os.path.join(d.spool, ".tmp")
    left = os.listdir(tmp) if os.path.isdir(tmp) else []
    check(not left, f"staging leftovers {left}")


@case("limits")
def many_errors_close_with_421(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    for i in range(30):
        r = c.cmd("BOGUS")
        if r[0] != 500:
            break
    check(r[0] == 421 or (r[0] is None and i > 0), f"after {i} errors: {r}")
    check(i <= 20, f"{i} errors before closing")
    check(c.closed(5), "connection still open after 421")


@case("limits")
def bare_lf_in_command_line(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.greet()
    c.send("EHLO a\nMAIL FROM:<x@ext.example>\r\n")
    r = c.reply()
    check(r[0] is not None and 500 <= r[0] < 600, f"expected a 5xx, got {r}")
    c.sock.settimeout(1)
    rest = c.reply()
    check(rest[0] is None, f"the part after the bare LF was answered: {rest}")
    check(c.closed(5), "connection not closed")


@case("limits")
def bare_lf_in_command_after_ehlo(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    c.send("NOOP a\nMAIL FROM:<x@ext.example>\r\n")
    r = c.reply()
    check(r[0] is not None and 500 <= r[0] < 600, f"expected a 5xx, got {r}")
    c.sock.settimeout(1)
    rest = c.reply()
    check(rest[0] is None, f"the part after the bare LF was executed: {rest}")
    check(c.closed(5), "connection not closed")


@case("limits")
def input_before_greeting(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.send("EHLO early.test\r\n")  # before reading the 220
    r = c.reply()
    if r[0] == 220:
        r = c.reply()
    expect(r, 554, "5.5.0")
    check(c.closed(5), "connection not closed")


@case("limits")
def pipelining_before_ehlo_reply(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.greet()
    c.send("EHLO client.test\r\nMAIL FROM:<alice@example.test>\r\n")
    r = c.reply()
    if r[0] == 250:
        r = c.reply()
    expect(r, 554, "5.5.0")


@case("limits")
def content_before_354(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    c.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
           "Subject: early\r\n\r\nbody\r\n.\r\n")
    replies = [c.reply() for _ in range(4)]
    check(not d.all_messages(), f"stored; replies {replies}")
    check(any(r[0] == 554 and r[1].startswith("5.5.0") for r in replies),
          f"no 554 5.5.0: {replies}")


@case("limits")
def slowloris_does_not_block_others(ctx):
    d = Daemon(ctx)
    slow = d.client()
    slow.greet()
    stop = threading.Event()

    def drip():
        for b in b"EHLO slow-client-dripping-one-byte-per-second.test\r\n":
            if stop.wait(1):
                return
            try:
                slow.send(bytes([b]))
            except OSError:
                return
    t = threading.Thread(target=drip, daemon=True)
    t.start()
    time.sleep(2)
    t0 = time.monotonic()
    for i in range(3):
        expect(submit(d, "alice@example.test", ["bob@example.test"], MSG), 250)
    took = time.monotonic() - t0
    stop.set()
    slow.close()
    check(took < 5, f"3 deliveries took {took:.1f}s beside a slow client")
    check(len(d.messages("bob")) == 3, "not all stored")


@case("limits")
def many_connections_from_loopback(ctx):
    d = Daemon(ctx)
    conns = []
    for _ in range(60):
        c = d.client()
        conns.append(c)
    greetings = [c.greet()[0] for c in conns]
    check(all(g == 220 for g in greetings), f"greetings {set(greetings)}")
    expect(submit(d, "alice@example.test", ["bob@example.test"], MSG), 250)
    for c in conns:
        c.close()


# =============================================================================================
# hostile next hop

EVIL_REPLY = ("550-5.1.1 nul\x00 esc\x1b[31mred bel\x07\r\n"
              "550 5.1.1 ls\u2028fake log line rlo\u202eabc\r\n")


@case("hostile")
def control_characters_in_replies_not_logged_raw(ctx):
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: EVIL_REPLY.encode()})
    expect(submit(d, "alice@example.test", ["bob@remote.test"], MSG), 250)
    check(wait_for(lambda: d.bounces(), 20), f"no bounce; log {d.log()[-600:]}")
    log = d.log()
    check("delivery failed permanently" in log, "no failure logged")
    bad = unsafe_chars(log)
    check(not bad, f"raw control characters in the log: {bad!r}")


@case("hostile")
def control_characters_in_replies_not_in_bounce_raw(ctx):
    # The bounce quotes the reply for people (text/plain) and programs (Diagnostic-Code):
    # NUL/ESC/BEL, line separators and bidi overrides must not reach a mail reader as they are.
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: EVIL_REPLY.encode()})
    expect(submit(d, "alice@example.test", ["bob@remote.test"], MSG), 250)
    b = wait_for(lambda: d.bounces(), 20)
    check(b, f"no bounce; log {d.log()[-600:]}")
    bad = unsafe_chars(b[0].decode("utf-8", "replace"))
    check(not bad, f"raw control characters in the bounce: {bad!r}")


def long_reply(code, enh, lines):
    return b"".join(b"%d-%s line %d of a very long reply from a hostile host\r\n" % (code, enh, i)
                    for i in range(lines - 1)) + b"%d %s end\r\n" % (code, enh)


@case("hostile")
def huge_452_reply_keeps_queue_and_log_small(ctx):
    r452 = long_reply(452, b"4.2.2", 900)
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: r452},
                             daemon_kw={"log_level": "info"})
    rcpts = [f"u{i}@remote.test" for i in range(100)]
    expect(submit(d, "alice@example.test", rcpts, MSG), 250)
    check(wait_for(lambda: peer.sessions >= 1 and "delivery deferred" in d.log(), 20),
          "no deferral logged")
    time.sleep(3)  # a retry or two with --retry-base 1s
    q, n = d.queue_bytes(), len(d.log().encode())
    check(q < 64 * 1024 and n < 256 * 1024,
          f"queue holds {q} bytes (limit 64 KiB), log is {n} bytes (limit 256 KiB) "
          f"after {peer.sessions} sessions")


@case("hostile")
def huge_550_reply_keeps_bounce_small(ctx):
    r550 = long_reply(550, b"5.1.1", 900)
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: r550})
    rcpts = [f"u{i}@remote.test" for i in range(20)]
    expect(submit(d, "alice@example.test", rcpts, MSG), 250)
    b = wait_for(lambda: d.bounces(), 20)
    check(b, "no bounce")
    check(len(b) == 1, f"{len(b)} bounces")
    check(len(b[0]) < 64 * 1024, f"bounce is {len(b[0])} bytes")
    longest = max(len(ln) for ln in b[0].split(b"\r\n"))
    check(longest <= 998, f"a bounce line is {longest} octets")


@case("hostile")
def silent_next_hop_does_not_block_healthy_host(ctx):
    slow = Peer(ctx, host="127.0.0.3", after_dot=None)
    good = Peer(ctx, host="127.0.0.4", port=slow.port)
    dns = Dns(ctx, mx=[("slow.test", "mx.slow.test", 10), ("good.test", "mx.good.test", 10)],
              hosts=[("mx.slow.test", "127.0.0.3"), ("mx.good.test", "127.0.0.4")])
    d = Daemon(ctx, dns=dns, extra=["--remote-port", str(slow.port), "--retry-base", "1s"])
    for i in range(3):
        expect(submit(d, "alice@example.test", [f"s{i}@slow.test"], MSG), 250)
    check(wait_for(lambda: len(slow.messages()) >= 1, 10), "the silent host got nothing")
    expect(submit(d, "alice@example.test", ["g@good.test"], MSG), 250)
    check(wait_for(lambda: good.messages(), 10), "mail to the healthy host held back")


@case("hostile")
def failed_starttls_falls_back_to_plaintext(ctx):
    d, peer, _ = relay_setup(ctx, peer_kw={"starttls": "fail"})
    expect(submit(d, "alice@example.test", ["bob@remote.test"], MSG), 250)
    got = wait_for(lambda: peer.messages(), 20)
    check(got, f"not delivered after {peer.tls_attempts} failed handshakes; "
               f"queued {d.queue_entries()}, bounces {len(d.bounces())}")


@case("hostile")
def next_hop_banner_with_controls(ctx):
    # An evil 4xx greeting: deferred, log clean.
    class Evil(Peer):
        def _serve(self, s):
            try:
                s.sendall("421-4.3.2 \x1b]0;owned\x07\r\n421 4.3.2 bye\u202e\x00\r\n".encode())
                time.sleep(0.2)
            finally:
                s.close()
    peer = Evil(ctx)
    dns = Dns(ctx, mx=[("remote.test", "mx.remote.test", 10)], hosts=[("mx.remote.test", "127.0.0.1")])
    d = Daemon(ctx, dns=dns, extra=["--remote-port", str(peer.port), "--retry-base", "1s"])
    expect(submit(d, "alice@example.test", ["bob@remote.test"], MSG), 250)
    check(wait_for(lambda: "delivery deferred" in d.log(), 15), "no deferral logged")
    check(not unsafe_chars(d.log()), f"raw controls in the log: {unsafe_chars(d.log())!r}")
    check(d.queue_entries(), "entry left the queue after a 421")


# =============================================================================================
# trace headers

def header_block(m):
    return m.split(b"\r\n\r\n", 1)[0]


def header_names(m):
    return [ln.split(b":", 1)[0].lower() for ln in header_block(m).split(b"\r\n")
            if ln and ln[:1] not in (b" ", b"\t")]


@case("trace")
def leading_white_space_never_continues_our_received(ctx):
    # Content whose first line starts with white space would fold into our Received: field
    # (a forged clause and date). It must start the body instead.
    d = Daemon(ctx)
    forged = " (authenticated as admin) by trusted.host; Mon, 1 Jan 1990 00:00:00 +0000"
    r = submit(d, "x@outside.test", ["bob@example.test"],
               forged + "\r\nSubject: hi\r\n\r\nbody\r\n.\r\n", public=True)
    expect(r, 250)
    m = d.messages("bob")[0]
    head, _, body = m.partition(b"\r\n\r\n")
    check(b"1990" not in head and b"trusted.host" not in head, f"folded into our header: {head!r}")
    check(body.startswith(forged.encode()), f"body: {body[:120]!r}")


@case("trace")
def exactly_one_return_path(ctx):
    d = Daemon(ctx)
    expect(submit(d, "alice@example.test", ["bob@example.test"],
                  "Return-Path: <forged@evil.test>\r\nSubject: rp\r\n\r\nx\r\n.\r\n"), 250)
    m = d.messages("bob")[0]
    names = header_names(m)
    check(names.count(b"return-path") == 1, f"{names.count(b'return-path')} Return-Path headers")
    check(m.startswith(b"Return-Path: <alice@example.test>\r\nReceived: "), f"top: {m[:120]!r}")
    check(b"forged@evil.test" not in m, "the forged Return-Path was kept")


@case("trace")
def received_first_with_details(ctx):
    d = Daemon(ctx)
    expect(submit(d, "alice@example.test", ["bob@example.test"], MSG), 250)
    m = d.messages("bob")[0]
    check(re.match(rb"Return-Path: <alice@example\.test>\r\nReceived: from client\.test "
                   rb"\(\[?127\.0\.0\.1\]?\)\r\n\tby mx\.example\.test with ESMTP id \S+",
                   m), f"trace block: {m[:250]!r}")
    check(re.search(rb"for <bob@example\.test>;", header_block(m)), "no `for <rcpt>`")


@case("trace")
def message_id_and_date_added_below_trace(ctx):
    d = Daemon(ctx)
    expect(submit(d, "alice@example.test", ["bob@example.test"],
                  "From: alice@example.test\r\nSubject: bare\r\n\r\nx\r\n.\r\n"), 250)
    m = d.messages("bob")[0]
    names = header_names(m)
    check(b"message-id" in names and b"date" in names, f"headers: {names}")
    last_trace = max(i for i, n in enumerate(names) if n in (b"return-path", b"received"))
    check(names.index(b"message-id") > last_trace and names.index(b"date") > last_trace,
          f"not below the trace block: {names}")


@case("trace")
def message_id_added_when_relayed(ctx):
    d, peer, _ = relay_setup(ctx)
    expect(submit(d, "alice@example.test", ["bob@remote.test"],
                  "From: alice@example.test\r\nSubject: bare\r\n\r\nx\r\n.\r\n"), 250)
    got = wait_for(lambda: peer.messages(), 15)
    check(got, "not relayed")
    names = header_names(got[0]["data"])
    check(names.count(b"message-id") == 1, f"headers at the next hop: {names}")
    check(names[0] == b"received" and b"return-path" not in names, f"trace: {names}")


@case("trace")
def with_utf8smtp(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<jörg@example.test> SMTPUTF8"), 250)
    expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send("Subject: utf8\r\n\r\nx\r\n.\r\n")
    expect(c.reply(), 250)
    m = d.messages("bob")[0]
    check(re.search(rb"\tby mx\.example\.test with UTF8SMTP ", m), f"Received: {m[:250]!r}")


@case("trace")
def hostile_ehlo_name_not_in_headers_raw(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.greet()
    r = c.cmd("EHLO evil\x1b[2J\x07\u202e.test")
    if r[0] != 250:
        check(r[0] and r[0] >= 500, f"odd reply {r}")
        r = c.cmd("EHLO client.test")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(MSG)
    expect(c.reply(), 250)
    m = d.messages("bob")[0]
    bad = unsafe_chars(header_block(m)[:400].decode("utf-8", "replace"))
    check(not bad, f"raw controls in the trace headers: {bad!r}")
    check(not unsafe_chars(d.log()), f"raw controls in the log: {unsafe_chars(d.log())!r}")


@case("trace")
def hostile_smtputf8_sender_not_in_headers_raw(ctx):
    d = Daemon(ctx)
    c = d.client()
    c.ehlo()
    r = c.cmd("MAIL FROM:<ev\u202eil\u2028x@example.test> SMTPUTF8")
    if r[0] != 250:
        check(r[0] >= 500, f"odd reply {r}")
        return  # refused outright: nothing reaches the headers
    expect(c.cmd("RCPT TO:<bob@example.test>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(MSG)
    expect(c.reply(), 250)
    m = d.messages("bob")[0]
    trace = b"\r\n".join(header_block(m).split(b"\r\n")[:4]).decode("utf-8", "replace")
    check(not unsafe_chars(trace), f"raw controls in the trace headers: {unsafe_chars(trace)!r}")


# =============================================================================================
# bounces

@case("bounces")
def bounce_is_rfc3464_to_envelope_sender(ctx):
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: b"550 5.1.1 no such user\r\n"})
    expect(submit(d, "alice@example.test", ["nobody@remote.test"],
                  "From: someone-else@example.test\r\nSubject: will bounce\r\n\r\nbody\r\n.\r\n"), 250)
    b = wait_for(lambda: d.bounces(), 20)
    check(b, f"no bounce; log {d.log()[-500:]}")
    m = b[0]
    hb = header_block(m)
    check(re.search(rb"Content-Type: multipart/report; report-type=delivery-status;", hb),
          f"not multipart/report: {hb!r}")
    check(b"\r\nTo: <alice@example.test>\r\n" in hb, "not addressed to the envelope sender")
    check(m.startswith(b"Return-Path: <>\r\n"), f"bounce not from <>: {m[:60]!r}")
    check(b"Content-Type: message/delivery-status" in m, "no delivery-status part")
    check(re.search(rb"Final-Recipient: rfc822; nobody@remote\.test\r\nAction: failed\r\n"
                    rb"Status: 5\.1\.1\r\n", m), "no per-recipient block")
    check(b"Content-Type: text/rfc822-headers" in m and b"Subject: will bounce" in m,
          "original headers missing")
    check(b"\r\n\r\nbody\r\n" not in m.split(b"text/rfc822-headers", 1)[-1], "body returned")
    check(not d.messages("someone-else"), "bounce went to the From: address")
    check(wait_for(lambda: not d.queue_entries(), 5), "entry still queued")


@case("bounces")
def null_sender_never_bounced(ctx):
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: b"550 5.1.1 no such user\r\n"})
    expect(submit(d, "", ["nobody@remote.test"], MSG), 250)
    check(wait_for(lambda: "delivery failed permanently" in d.log(), 20), "no failure")
    check(wait_for(lambda: not d.queue_entries(), 5), f"still queued {d.queue_entries()}")
    time.sleep(1)
    check(not d.all_messages(), f"something delivered: {list(d.all_messages())}")
    check(len(peer.messages()) == 0, "a bounce went out to the next hop")


@case("bounces")
def bounce_total_bounded(ctx):
    # ~160 KB of headers and 1.5 MB of body: the bounce carries at most the daemon's 64 KiB of
    # original headers (HEAD_MAX) plus its own parts, never the body.
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: b"550 5.1.1 no\r\n"})
    many = "".join(f"X-Filler-{i}: {'f' * 70}\r\n" for i in range(2000))
    body = "b" * 76 + "\r\n"
    expect(submit(d, "alice@example.test", ["nobody@remote.test"],
                  f"{many}Subject: big\r\n\r\n{body * 20000}.\r\n"), 250)
    b = wait_for(lambda: d.bounces(), 20)
    check(b, "no bounce")
    check(len(b[0]) < 72 * 1024, f"bounce is {len(b[0])} bytes")
    check(b"b" * 76 not in b[0], "the body was returned")


@case("bounces")
def bounce_lines_at_most_998(ctx):
    d, peer, _ = relay_setup(ctx, peer_kw={"rcpt": lambda a: b"550 5.1.1 no\r\n"})
    expect(submit(d, "alice@example.test", ["nobody@remote.test"],
                  "X-Long: " + "h" * 5000 + "\r\nSubject: long header\r\n\r\nx\r\n.\r\n"), 250)
    b = wait_for(lambda: d.bounces(), 20)
    check(b, "no bounce")
    longest = max(len(ln) for ln in b[0].split(b"\r\n"))
    check(longest <= 998, f"a bounce line is {longest} octets")


@case("bounces")
def backscatter_through_alias(ctx):
    victim = Peer(ctx, host="127.0.0.5")
    target = Peer(ctx, host="127.0.0.6", port=victim.port,
                  rcpt=lambda a: b"550 5.1.1 no such user\r\n")
    dns = Dns(ctx, mx=[("victim.test", "mx.victim.test", 10), ("remote.test", "mx.remote.test", 10)],
              hosts=[("mx.victim.test", "127.0.0.5"), ("mx.remote.test", "127.0.0.6")])
    d = Daemon(ctx, dns=dns, users="alice\ncarol: carol@remote.test\n",
               extra=["--remote-port", str(victim.port), "--retry-base", "1s"])
    headers = "".join(f"X-Attack-{i}: {'a' * 100}\r\n" for i in range(500))  # ~55 KB
    for i in range(3):
        expect(submit(d, "victim@victim.test", ["carol@example.test"],
                      f"{headers}Subject: spam {i}\r\n\r\nspam\r\n.\r\n", public=True), 250)
    wait_for(lambda: not d.queue_entries() and len(victim.messages()) >= 3, 20)
    time.sleep(1)
    got = victim.messages()
    check(len(got) <= 3, f"{len(got)} bounces for 3 messages")
    for m in got:
        check(len(m["data"]) < 16 * 1024, f"a bounce of {len(m['data'])} bytes reached the victim")
        check(b"X-Attack-499" not in m["data"], "the attacker's headers were sent back")


@case("bounces")
def unknown_user_refused_at_rcpt_not_bounced(ctx):
    d = Daemon(ctx, users="alice\n")
    c = d.client(public=True)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<victim@victim.test>"), 250)
    expect(c.cmd("RCPT TO:<nosuch@example.test>"), 550, "5.1.1")
    c.close()
    time.sleep(0.5)
    check(not d.queue_entries(), "a bounce was queued")


# =============================================================================================
# interop

def swaks(d, *extra, to="bob@example.test"):
    need("swaks")
    return run(["swaks", "--server", f"127.0.0.1:{d.port}", "--helo", "client.test",
                "--from", "alice@example.test", "--to", to, "--timeout", "15", *extra])


@case("interop")
def swaks_plain(ctx):
    d = Daemon(ctx)
    swaks(d, "--header", "Subject: swaks plain", "--body", "plain body")
    m = d.messages("bob")
    check(len(m) == 1 and b"Subject: swaks plain" in m[0] and b"plain body" in m[0],
          f"bob: {m!r}")
    check(b" with ESMTP " in m[0], "Received does not say ESMTP")


@case("interop")
def swaks_tls(ctx):
    d = Daemon(ctx, tls=True)
    out = swaks(d, "--tls", "--header", "Subject: swaks tls").stdout.decode(errors="replace")
    check("STARTTLS" in out, "swaks did not use STARTTLS")
    m = d.messages("bob")
    check(len(m) == 1 and b" with ESMTPS " in m[0], f"bob: {m[:1]!r}")


@case("interop")
def swaks_pipelining_many_recipients(ctx):
    d = Daemon(ctx)
    swaks(d, "--pipeline", to="bob@example.test,carol@example.test,dave@example.test")
    for u in ("bob", "carol", "dave"):
        check(len(d.messages(u)) == 1, f"{u} has {len(d.messages(u))} messages")


@case("interop")
def curl_upload(ctx):
    need("curl")
    d = Daemon(ctx)
    msg = ctx.path("msg.txt")
    with open(msg, "wb") as f:
        f.write(b"From: alice@example.test\r\nSubject: curl\r\n\r\n.leading dot\r\ncurl body\r\n")
    run(["curl", "-sS", "--max-time", "20", f"smtp://127.0.0.1:{d.port}/client.test",
         "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test",
         "--upload-file", msg])
    m = d.messages("bob")
    check(len(m) == 1 and m[0].endswith(b"\r\n\r\n.leading dot\r\ncurl body\r\n"),
          f"bob: {m[:1]!r}")


def implicit_tls_daemon(ctx):
    """A daemon with an implicit-TLS submission listener (port 465 style) on 127.0.0.1 and
    the user alice@example.test (password ALICE_PW); clients must log in there."""
    tport = free_port("127.0.0.1")
    d = Daemon(ctx, tls=True, extra=["--tls-listen", f"127.0.0.1:{tport}",
                                     "--passwd-file", passwd_file(ctx)])
    return d, tport


ALICE_PW = "correct horse battery"


def passwd_file(ctx, users=(("alice@example.test", ALICE_PW),)):
    """A --passwd-file made with `smtp-server passwd` (ARGON2ID), one line per user."""
    path = ctx.path("passwd")
    with open(path, "w") as f:
        for user, pw in users:
            out = run([BIN, "passwd", user], input=(pw + "\n").encode()).stdout.decode()
            check(out.startswith(f"{user}:{{ARGON2ID}}$argon2id$"), f"passwd printed {out!r}")
            f.write(out)
    return path


def submission_daemon(ctx, dns=None, extra=(), users=None):
    """A daemon with a STARTTLS submission listener (587 style) and an implicit-TLS one (465
    style) on 127.0.0.1, the user alice@example.test; returns it with both ports."""
    sub, tls = free_port("127.0.0.1"), free_port("127.0.0.1")
    d = Daemon(ctx, dns=dns, tls=True, users=users,
               extra=["--submission-listen", f"127.0.0.1:{sub}", "--tls-listen", f"127.0.0.1:{tls}",
                      "--passwd-file", passwd_file(ctx)] + list(extra))
    return d, sub, tls


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain_ir(user, pw):
    return b64(f"\0{user}\0{pw}")


def starttls_client(port, host="127.0.0.1", source=None):
    """A raw client on the submission port after STARTTLS and the second EHLO."""
    c = Client(host, port) if source is None else _client_from(source, host, port)
    r = c.ehlo()
    check("AUTH" not in r[1], f"AUTH offered before STARTTLS: {r}")
    expect(c.cmd("STARTTLS"), 220)
    tls_wrap(c)
    expect(c.cmd("EHLO client.test"), 250)
    return c


def _client_from(source, host, port):
    c = Client.__new__(Client)
    c.sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    c.sock.settimeout(10)
    c.buf = b""
    c.greeting = None
    return c


def swaks_out(args):
    """swaks's transcript (it exits non-zero when the server refuses)."""
    return run(["swaks"] + args + ["--timeout", "15"], check_rc=False).stdout.decode(errors="replace")


def check_tls_delivery(d, user, body):
    m = d.messages(user)
    check(len(m) == 1, f"{user} has {len(m)} messages: {d.log()[-800:]}")
    check(body in m[0].split(b"\r\n\r\n", 1)[1], f"{user}: {m[0][-200:]!r}")
    check(b"(using TLSv1." in m[0].split(b"\r\n\r\n")[0], f"Received says no TLS: {m[0][:400]!r}")


@case("interop")
def swaks_implicit_tls(ctx):
    need("swaks")
    d, tport = implicit_tls_daemon(ctx)
    run(["swaks", "--server", f"127.0.0.1:{tport}", "--tlsc", "--helo", "client.test",
         "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", ALICE_PW,
         "--from", "alice@example.test", "--to", "bob@example.test",
         "--header", "Subject: swaks tlsc", "--body", "implicit tls", "--timeout", "15"])
    check_tls_delivery(d, "bob", b"implicit tls\r\n")


@case("interop")
def curl_smtps(ctx):
    need("curl")
    d, tport = implicit_tls_daemon(ctx)
    msg = ctx.path("msg.txt")
    with open(msg, "wb") as f:
        f.write(b"From: alice@example.test\r\nSubject: curl smtps\r\n\r\nsmtps body\r\n")
    run(["curl", "-sS", "--insecure", "--max-time", "20", f"smtps://127.0.0.1:{tport}/client.test",
         "--user", f"alice@example.test:{ALICE_PW}",
         "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test",
         "--upload-file", msg])
    check_tls_delivery(d, "bob", b"smtps body\r\n")


@case("interop")
def smtplib_smtp_ssl(ctx):
    d, tport = implicit_tls_daemon(ctx)
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", tport, local_hostname="client.test", context=tls,
                          timeout=15) as c:
        c.login("alice@example.test", ALICE_PW)
        refused = c.sendmail("alice@example.test", ["bob@example.test"],
                             b"Subject: smtp_ssl\r\n\r\nssl body\r\n")
        check(refused == {}, f"refused {refused}")
    check_tls_delivery(d, "bob", b"ssl body\r\n")


@case("interop")
def msmtp_implicit_tls(ctx):
    need("msmtp")
    d, tport = implicit_tls_daemon(ctx)
    conf = ctx.path("msmtprc")
    with open(conf, "w") as f:
        f.write(f"defaults\nsyslog off\nlogfile {ctx.path('msmtp.log')}\n"
                f"account test\nhost 127.0.0.1\nport {tport}\nfrom alice@example.test\n"
                f"auth on\nuser alice@example.test\npassword {ALICE_PW}\n"
                "tls on\ntls_starttls off\ntls_certcheck off\n"
                "domain client.test\ntimeout 15\naccount default : test\n")
    os.chmod(conf, 0o600)
    run(["msmtp", "-C", conf, "-a", "test", "bob@example.test"],
        input=b"Subject: msmtp tls\nFrom: alice@example.test\n\nmsmtp tls body\n")
    check_tls_delivery(d, "bob", b"msmtp tls body\r\n")


@case("interop")
def msmtp_send(ctx):
    need("msmtp")
    d = Daemon(ctx)
    conf = ctx.path("msmtprc")
    with open(conf, "w") as f:
        f.write(f"defaults\nsyslog off\nlogfile {ctx.path('msmtp.log')}\n"
                f"account test\nhost 127.0.0.1\nport {d.port}\nfrom alice@example.test\n"
                "auth off\ntls off\ndomain client.test\ntimeout 15\naccount default : test\n")
    os.chmod(conf, 0o600)
    run(["msmtp", "-C", conf, "-a", "test", "bob@example.test"],
        input=b"Subject: msmtp\nFrom: alice@example.test\n\nmsmtp body\n")
    m = d.messages("bob")
    check(len(m) == 1 and b"Subject: msmtp\r\n" in m[0] and m[0].endswith(b"msmtp body\r\n"),
          f"bob: {m[:1]!r}")


@case("interop")
def python_smtplib(ctx):
    d = Daemon(ctx, public=True)
    with d.smtplib() as s:
        refused = s.sendmail("alice@example.test", ["bob@example.test", "Carol+x@EXAMPLE.TEST"],
                             "Subject: smtplib\r\n\r\nhello\r\n")
        check(refused == {}, f"refused {refused}")
    with d.smtplib(public=True) as s:
        s.ehlo()
        s.mail("x@evil.test")
        code, msg = s.rcpt("victim@elsewhere.test")
        check(code == 554 and msg.startswith(b"5.7.1"), f"{code} {msg}")
    for u in ("bob", "carol"):
        check(len(d.messages(u)) == 1, f"{u}: {len(d.messages(u))}")


def _deliver_two(d):
    for i in (1, 2):
        expect(submit(d, "bob@example.test", ["alice@example.test"],
                      f"From: bob@example.test\r\nSubject: mh test {i}\r\nMessage-ID: <mh{i}@t>\r\n"
                      f"\r\nbody {i}\r\n.\r\n"), 250)


@case("interop")
def python_mailbox_mh(ctx):
    d = Daemon(ctx)
    _deliver_two(d)
    path = os.path.join(d.spool, "alice")
    check(os.path.exists(os.path.join(path, ".mh_sequences")), "no .mh_sequences in the mailbox")
    box = mailbox.MH(path, create=False)
    subjects = sorted(m["Subject"] for m in box)
    check(subjects == ["mh test 1", "mh test 2"], f"mailbox.MH read {subjects}")
    seqs = box.get_sequences()
    check(sorted(seqs.get("unseen", [])) == [1, 2], f"sequences {seqs} (no .mh_sequences?)")


@case("interop")
def mutt_reads_spool_as_mh(ctx):
    need("mutt")
    d = Daemon(ctx)
    _deliver_two(d)
    out = ctx.path("copied.mbox")
    muttrc = ctx.path("muttrc")
    with open(muttrc, "w") as f:
        f.write("set mbox_type=mbox\nset confirmappend=no\nset confirmcreate=no\nset quit=yes\n"
                "set sort=date\nset move=no\nset mark_old=no\nset beep=no\n"
                f"set folder={ctx.dir}\nset spoolfile=/dev/null\n")
    os.mkdir(ctx.path("Mail"))
    keys = f"<tag-pattern>~A<enter><tag-prefix><copy-message>{out}<enter><quit>"
    env = dict(os.environ, TERM="vt100", HOME=ctx.dir, MAIL="/dev/null")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe("mutt", ["mutt", "-n", "-F", muttrc, "-R", "-f",
                            os.path.join(d.spool, "alice"), "-e", f"push '{keys}'"], env)
    screen = b""
    end = time.monotonic() + 20
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                screen += chunk
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                break
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = screen.decode("utf-8", "replace")
    check(os.path.exists(out), "mutt copied nothing: " +
          re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", " ", text)[-300:])
    mb = read(out)
    n = mb.count(b"Subject: mh test ")
    check(n == 2 and mb.startswith(b"From "), f"mutt copied {n} messages: {mb[:300]!r}")


@case("interop")
def dovecot_reads_maildir(ctx):
    need("doveadm")
    d = Daemon(ctx, fmt="maildir")
    _deliver_two(d)
    run_dir = ctx.path("dovecot-run")
    os.mkdir(run_dir)
    os.chmod(run_dir, 0o755)
    conf = ctx.path("dovecot.conf")
    with open(conf, "w") as f:
        f.write(f"base_dir = {run_dir}\nstate_dir = {run_dir}\n"
                f"log_path = {ctx.path('dovecot.log')}\nssl = no\nprotocols =\n"
                "first_valid_uid = 0\nfirst_valid_gid = 0\n"
                f"mail_location = maildir:{d.spool}/%u\n"
                f"userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d.spool}/%u\n}}\n"
                "passdb {\n  driver = static\n  args = nopassword=y\n}\n")
    # Dovecot refuses uid 0: the mailbox is handed to nobody, as a real mail user's would be.
    for root, dirs, files in os.walk(os.path.join(d.spool, "alice")):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.chown(n, 65534, 65534)
    # doveadm looks users up through the auth service: a private dovecot with no listeners.
    master = ctx.popen(["dovecot", "-F", "-c", conf], stderr=subprocess.PIPE)
    sock = os.path.join(run_dir, "auth-userdb")

    def up():
        if master.poll() is not None:
            raise Fail("dovecot exited: " + master.stderr.read().decode(errors="replace")[-500:])
        return unix_listening(sock)
    check(wait_for(up, 15), "dovecot's auth-userdb socket did not appear")
    r = run(["doveadm", "-c", conf, "fetch", "-u", "alice", "hdr.subject", "mailbox", "INBOX", "all"],
            check_rc=False)
    out = r.stdout.decode(errors="replace")
    check(r.returncode == 0 and out.count("mh test") == 2,
          f"doveadm fetch: {out!r} {r.stderr[-300:]!r}")
    r = run(["doveadm", "-c", conf, "search", "-u", "alice", "mailbox", "INBOX", "unseen"])
    n = len([ln for ln in r.stdout.decode().splitlines() if ln.strip()])
    check(n == 2, f"{n} unseen messages by doveadm search")
    r = run(["doveadm", "-c", conf, "fetch", "-u", "alice", "body", "mailbox", "INBOX", "all"])
    check(b"body 1" in r.stdout and b"body 2" in r.stdout, f"bodies: {r.stdout[:300]!r}")


class Postfix:
    """A private Postfix instance on 127.0.0.1:PORT: its own config and queue directories,
    virtual Maildir delivery for remote.test, everything else relayed to `relayhost`."""

    def __init__(self, ctx, relayhost):
        need("postfix", "postconf")
        self.ctx = ctx
        self.port = free_port()
        self.conf = ctx.path("pf-conf")
        self.queue = ctx.path("pf-queue")
        self.data = ctx.path("pf-data")
        self.vmail = ctx.path("pf-vmail")
        for p in (self.conf, self.queue, self.data, self.vmail):
            os.mkdir(p)
        shutil.chown(self.data, "postfix")
        os.chown(self.vmail, 65534, 65534)
        # Compiled-in defaults (-d) of a configuration of our own: the system's main.cf, if
        # any, is neither read nor needed.
        open(os.path.join(self.conf, "main.cf"), "w").close()
        daemon_dir = run(["postconf", "-c", self.conf, "-d", "-h", "daemon_directory"]).stdout.decode().strip()
        meta = run(["postconf", "-c", self.conf, "-d", "-h", "meta_directory"],
                   check_rc=False).stdout.decode().strip()
        main = {
            "compatibility_level": "3.6", "queue_directory": self.queue,
            "data_directory": self.data, "daemon_directory": daemon_dir,
            "mail_owner": "postfix", "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4",
            "myhostname": "pf.example.test", "mydomain": "example.test", "myorigin": "pf.example.test",
            "mydestination": "", "mynetworks": "127.0.0.0/8", "relayhost": relayhost,
            "smtp_dns_support_level": "disabled", "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native", "lmtp_host_lookup": "native",
            "virtual_mailbox_domains": "remote.test", "virtual_mailbox_base": self.vmail,
            "virtual_mailbox_maps": "static:box/", "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534", "virtual_minimum_uid": "100",
            "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
            "maillog_file": ctx.path("postfix.log"), "maillog_file_prefixes": ctx.dir,
            "biff": "no", "smtputf8_enable": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtp_tls_security_level": "none", "smtpd_tls_security_level": "none",
            "shlib_directory": "no", "import_environment": "MAIL_CONFIG MAIL_DEBUG",
            "queue_run_delay": "1s", "minimal_backoff_time": "2s", "maximal_backoff_time": "4s",
        }
        if meta:
            main["meta_directory"] = self.conf
            for f in ("postfix-files",):
                src = os.path.join(meta, f)
                if os.path.exists(src):
                    shutil.copy(src, self.conf)
            for f in os.listdir(meta):
                if f.startswith("postfix-files"):
                    src = os.path.join(meta, f)
                    if os.path.isdir(src):
                        shutil.copytree(src, os.path.join(self.conf, f))
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in main.items()))
        services = [
            (f"127.0.0.1:{self.port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("local", "unix", "-", "n", "n", "-", "-", "local"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("".join("  ".join(s) + "\n" for s in services))
        self.env = dict(os.environ, MAIL_CONFIG=self.conf)
        r = run(["postfix", "-c", self.conf, "start"], timeout=60, check_rc=False, env=self.env)
        if r.returncode != 0:
            raise Fail(f"postfix start: {r.stderr.decode(errors='replace')[-500:]} "
                       f"{self.log()[-500:]}")
        ctx.on_cleanup(self.stop)
        check(wait_for(lambda: _connects("127.0.0.1", self.port), 20),
              f"postfix smtpd not listening: {self.log()[-500:]}")

    def stop(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True, timeout=60,
                       env=self.env)

    def log(self):
        try:
            with open(self.ctx.path("postfix.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def delivered(self):
        out = []
        for sub in ("new", "cur"):
            p = os.path.join(self.vmail, "box", sub)
            if os.path.isdir(p):
                out += [read(os.path.join(p, n)) for n in sorted(os.listdir(p))]
        return out


@case("interop")
def postfix_as_next_hop(ctx):
    pf = Postfix(ctx, relayhost="[127.0.0.1]:1")
    d = Daemon(ctx, extra=["--relay-host", f"127.0.0.1:{pf.port}", "--retry-base", "1s"])
    expect(submit(d, "alice@example.test", ["bob@remote.test"],
                  "From: alice@example.test\r\nSubject: to postfix\r\n\r\n..dot\r\nbody\r\n.\r\n"), 250)
    got = wait_for(pf.delivered, 30)
    check(got, f"postfix did not deliver; our log {d.log()[-400:]} postfix {pf.log()[-600:]}")
    m = got[0]
    check(b"Subject: to postfix" in m and m.replace(b"\r\n", b"\n").endswith(b"\n\n.dot\nbody\n"),
          f"postfix got {m[-200:]!r}")
    check(b"by mx.example.test with ESMTP" in m and b"Message-ID:" in m.replace(b"Message-Id", b"Message-ID"),
          f"trace at postfix {m[:600]!r}")
    check(wait_for(lambda: not d.queue_entries(), 5), "our queue not drained")


@case("interop")
def postfix_relays_into_us(ctx):
    port = free_port()
    pf = Postfix(ctx, relayhost=f"[127.0.0.1]:{port}")
    d = Daemon(ctx, port=port)
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test", timeout=20) as s:
        s.sendmail("carol@pf.example.test", ["alice@example.test"],
                   "From: carol@pf.example.test\r\nSubject: via postfix\r\n\r\nthrough postfix\r\n")
    # Postfix's own sendmail(1) with the private configuration (postdrop, pickup, qmgr, smtp).
    run(["sendmail", "-C", pf.conf, "-f", "dave@pf.example.test", "alice@example.test"],
        input=b"Subject: via sendmail\n\nsendmail body\n", env=pf.env)
    got = wait_for(lambda: len(d.messages("alice")) >= 2 and d.messages("alice"), 40)
    check(got, f"nothing arrived; postfix log {pf.log()[-800:]}")
    subjects = sorted(re.search(rb"Subject: ([^\r]*)", m).group(1).decode() for m in got)
    check(subjects == ["via postfix", "via sendmail"], f"alice got {subjects}")
    m = [m for m in got if b"via postfix" in m][0]
    check(re.match(rb"Return-Path: <carol@pf\.example\.test>\r\nReceived: from pf\.example\.test ", m),
          f"top: {m[:200]!r}")


# =============================================================================================
# the runner

# =============================================================================================
# submission: SMTP AUTH on 587 (STARTTLS) and 465 (implicit TLS) with real clients

def check_submitted(d, user, body, n=1):
    m = d.messages(user)
    check(len(m) == n, f"{user} has {len(m)} messages, want {n}: {d.log()[-800:]}")
    head = m[-1].split(b"\r\n\r\n")[0]
    check(b" with ESMTPSA id " in head, f"Received does not say ESMTPSA: {head[:500]!r}")
    check(body in m[-1], f"{user}: {m[-1][-200:]!r}")


@case("submission")
def swaks_plain_and_login_over_starttls_and_tls(ctx):
    need("swaks")
    d, sub, tls = submission_daemon(ctx)
    n = 0
    for port, mode in ((sub, "--tls"), (tls, "--tlsc")):
        for mech in ("PLAIN", "LOGIN"):
            out = swaks_out(["--server", f"127.0.0.1:{port}", mode, "--auth", mech,
                             "--auth-user", "alice@example.test", "--auth-password", ALICE_PW,
                             "--from", "alice@example.test", "--to", "bob@example.test",
                             "--body", f"via {mech} {mode}"])
            check("235 2.7.0 Authentication successful" in out, f"{mech} {mode}: {out[-800:]}")
            n += 1
            check_submitted(d, "bob", f"via {mech} {mode}".encode(), n)
    check("authenticated user=alice@example.test mechanism=LOGIN" in d.log(), d.log()[-600:])


@case("submission")
def curl_user_over_starttls(ctx):
    need("curl")
    d, sub, _ = submission_daemon(ctx)
    msg = ctx.path("msg.txt")
    with open(msg, "wb") as f:
        f.write(b"From: alice@example.test\r\nSubject: curl auth\r\n\r\ncurl auth body\r\n")
    run(["curl", "-sS", "--ssl-reqd", "--insecure", "--max-time", "20",
         f"smtp://127.0.0.1:{sub}/client.test", "--user", f"alice@example.test:{ALICE_PW}",
         "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test",
         "--upload-file", msg])
    check_submitted(d, "bob", b"curl auth body\r\n")
    r = run(["curl", "-sS", "--ssl-reqd", "--insecure", "--max-time", "20",
             f"smtp://127.0.0.1:{sub}/client.test", "--user", "alice@example.test:wrong",
             "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test",
             "--upload-file", msg], check_rc=False)
    check(r.returncode != 0, "curl with a wrong password succeeded")
    check(len(d.messages("bob")) == 1, "a message arrived with a wrong password")


@case("submission")
def smtplib_starttls_login(ctx):
    d, sub, _ = submission_daemon(ctx)
    tls = _noverify()
    with smtplib.SMTP("127.0.0.1", sub, local_hostname="client.test", timeout=15) as c:
        c.ehlo()
        check(not c.has_extn("auth"), "AUTH advertised before STARTTLS")
        c.starttls(context=tls)
        c.ehlo()
        check(c.has_extn("auth") and "PLAIN" in c.esmtp_features["auth"].upper(),
              f"features {c.esmtp_features}")
        try:
            c.login("alice@example.test", "wrong")
            raise Fail("a wrong password was accepted")
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535 and e.smtp_error.startswith(b"5.7.8"), f"{e}")
        c.login("alice@example.test", ALICE_PW)
        refused = c.sendmail("alice@example.test", ["bob@example.test"],
                             b"Subject: smtplib login\r\n\r\nsmtplib login body\r\n")
        check(refused == {}, f"refused {refused}")
    check_submitted(d, "bob", b"smtplib login body\r\n")


@case("submission")
def msmtp_auth_on_starttls(ctx):
    need("msmtp")
    d, sub, _ = submission_daemon(ctx)
    conf = ctx.path("msmtprc")
    with open(conf, "w") as f:
        f.write(f"defaults\nsyslog off\nlogfile {ctx.path('msmtp.log')}\n"
                f"account test\nhost 127.0.0.1\nport {sub}\nfrom alice@example.test\n"
                f"auth on\nuser alice@example.test\npassword {ALICE_PW}\n"
                "tls on\ntls_starttls on\ntls_certcheck off\n"
                "domain client.test\ntimeout 15\naccount default : test\n")
    os.chmod(conf, 0o600)
    run(["msmtp", "-C", conf, "-a", "test", "bob@example.test"],
        input=b"Subject: msmtp auth\nFrom: alice@example.test\n\nmsmtp auth body\n")
    check_submitted(d, "bob", b"msmtp auth body\r\n")


@case("submission")
def replies_before_and_after_login(ctx):
    d, sub, tls = submission_daemon(ctx, users="alice\nbob\ncarol\nteam: alice, bob\n")
    # Plain text: no AUTH, 538 when tried, 530 for MAIL.
    c = Client("127.0.0.1", sub)
    r = c.ehlo()
    check("AUTH" not in r[1] and "STARTTLS" in r[1], f"EHLO {r}")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 538, "5.7.11")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 530, "5.7.0")
    c.close()
    c = starttls_client(sub)
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 530, "5.7.0")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', 'wrong')}"), 535, "5.7.8")
    expect(c.cmd("AUTH LOGIN"), 334)
    expect(c.cmd("*"), 501, "5.7.0")
    expect(c.cmd("AUTH PLAIN"), 334)
    expect(c.cmd("not base64!"), 501, "5.5.2")
    expect(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 235, "2.7.0")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 503, "5.5.1")
    expect(c.cmd("MAIL FROM:<carol@example.test>"), 553, "5.7.1")
    expect(c.cmd("MAIL FROM:<alice@elsewhere.test>"), 553, "5.7.1")
    expect(c.cmd("MAIL FROM:<team@example.test>"), 250)
    expect(c.cmd("AUTH LOGIN"), 503, "5.5.1")
    expect(c.cmd("RSET"), 250)
    expect(c.cmd("MAIL FROM:<Alice+lists@EXAMPLE.test>"), 250)
    c.close()
    # Implicit TLS: AUTH at once.
    c = Client("127.0.0.1", tls)
    tls_wrap(c)
    r = c.ehlo()
    check("AUTH PLAIN LOGIN" in r[1], f"EHLO on 465: {r}")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 530, "5.7.0")
    c.close()
    # The port-25 listeners never offer AUTH, even over TLS.
    c = Client("127.0.0.2", d.pub)
    c.ehlo()
    expect(c.cmd("STARTTLS"), 220)
    tls_wrap(c)
    r = c.cmd("EHLO client.test")
    check("AUTH" not in r[1], f"AUTH on the public listener: {r}")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 502, "5.5.1")
    c.close()


@case("submission")
def authenticated_mail_is_relayed_unauthenticated_is_not(ctx):
    need("dnsmasq")
    peer = Peer(ctx)
    dns = Dns(ctx, mx=[("remote.test", "mx.remote.test", 10)], hosts=[("mx.remote.test", "127.0.0.1")])
    d, sub, _ = submission_daemon(ctx, dns=dns, extra=["--remote-port", str(peer.port)])
    # From the network without a login: refused on the public listener and the submission one.
    c = Client("127.0.0.2", d.pub)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 250)
    expect(c.cmd("RCPT TO:<dave@remote.test>"), 554, "5.7.1")
    c.close()
    out = swaks_out(["--server", f"127.0.0.1:{sub}", "--tls", "--from", "alice@example.test",
                     "--to", "dave@remote.test"])
    check("530 5.7.0" in out, out[-600:])
    check(not wait_for(lambda: peer.messages(), 1.5), "relayed without a login")
    out = swaks_out(["--server", f"127.0.0.1:{sub}", "--tls", "--auth", "PLAIN",
                     "--auth-user", "alice@example.test", "--auth-password", ALICE_PW,
                     "--from", "alice@example.test", "--to", "dave@remote.test",
                     # No Date: or Message-ID: (swaks adds both to its own template).
                     "--data", "From: alice@example.test\nSubject: relayed after login\n\nto the world\n"])
    check("250 2.0.0 Ok: queued as" in out, out[-600:])
    check(wait_for(lambda: peer.messages(), 20), f"not relayed: {d.log()[-800:]}")
    got = peer.messages()[0]["data"]
    check(b"to the world" in got and b" with ESMTPSA id " in got, f"{got[:600]!r}")
    check(b"\r\nMessage-ID: <" in got and b"\r\nDate: " in got, f"no Message-ID/Date: {got[:600]!r}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@case("submission")
def fifty_wrong_passwords_are_slowed_and_cut_off(ctx):
    d, sub, _ = submission_daemon(ctx)
    rss0 = rss_kib(d.proc.pid)
    bad = f"AUTH PLAIN {plain_ir('alice@example.test', 'guess')}"
    looked_at = cut_off = tries = 0
    t0 = time.monotonic()
    slow_seen = False
    while tries < 50:
        c = starttls_client(sub)
        while tries < 50:
            tries += 1
            t = time.monotonic()
            code, text = c.cmd(bad)
            if code == 535:
                looked_at += 1
                slow_seen |= time.monotonic() - t >= 0.9
                if looked_at % 3 == 0:
                    code, text = c.reply()
                    check(code == 421 and text.startswith("4.7.0"), f"after 3 failures: {code} {text}")
                    check(c.closed(), "still open after 421")
                    break
            else:
                check(code == 421 and "from your address" in text, f"attempt {tries}: {code} {text}")
                cut_off += 1
                check(c.closed(), "still open after 421")
                break
        c.close()
        # Meanwhile the daemon answers other clients at once.
        t = time.monotonic()
        other = Client("127.0.0.1", d.port)
        other.ehlo()
        check(time.monotonic() - t < 2, "the loopback listener was slow during the attack")
        other.close()
    check(looked_at == 10, f"{looked_at} passwords were checked, want 10")
    check(cut_off > 0 and slow_seen, f"cut off {cut_off}, slowed {slow_seen}")
    check(time.monotonic() - t0 > 10, "ten failures took less than ten seconds")
    # The right password from the same address is refused too; another address logs in.
    c = starttls_client(sub)
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 421, "4.7.0")
    c.close()
    c = starttls_client(sub, source="127.0.0.5")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', ALICE_PW)}"), 235, "2.7.0")
    c.close()
    check(rss_kib(d.proc.pid) - rss0 < 32 * 1024, f"RSS grew from {rss0} to {rss_kib(d.proc.pid)} KiB")


@case("submission")
def parallel_guesses_get_no_more_than_ten(ctx):
    """40 connections from one address send a wrong password at the same moment: no more
    than ten passwords are checked (an attempt under way counts), the rest get 421."""
    d, sub, _ = submission_daemon(ctx)
    clients = [starttls_client(sub) for _ in range(40)]
    bad = f"AUTH PLAIN {plain_ir('alice@example.test', 'guess')}\r\n".encode()
    for c in clients:
        c.send(bad)
    codes = [c.reply()[0] for c in clients]
    for c in clients:
        c.close()
    checked = codes.count(535)
    check(checked <= 10 and codes.count(421) == 40 - checked, f"replies {sorted(codes)}")
    check(d.log().count("authentication failed") == checked, d.log()[-800:])


@case("submission")
def locked_deleted_and_broken_passwd_files_let_no_one_in(ctx):
    d, sub, _ = submission_daemon(ctx)
    path = ctx.path("passwd")
    good = open(path).read()
    def login(pw=ALICE_PW):
        c = starttls_client(sub)
        r = c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', pw)}")
        c.close()
        return r
    expect(login(), 235)
    def replace(text):
        tmp = path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
    user, hsh = good.strip().split(":", 1)
    replace(f"{user}:!{hsh}\n")           # locked as passwd -l does
    expect(login(), 535, "5.7.8")
    expect(login("!" + ALICE_PW), 535, "5.7.8")
    replace(f"{user}:{{PLAIN}}\n")        # a scheme with nothing after it
    expect(login(""), 535, "5.7.8")
    replace(good + "bob:{NOSUCH}x\n")     # a line in error: fails closed
    expect(login(), 454, "4.7.0")
    os.unlink(path)                        # deleted: fails closed
    expect(login(), 454, "4.7.0")
    check("passwd-file unusable" in d.log(), d.log()[-600:])
    replace(good)
    expect(login(), 235)


@case("submission")
def plain_authorization_identity_is_compared_as_logins_are(ctx):
    # PLAIN's authzid (RFC 4616) may name the login itself, in any case (logins are compared
    # in lower case): 235; naming another user, or what cannot be a login: 535 5.7.8, the
    # password never checked.
    d, sub, _ = submission_daemon(ctx)
    def login(authzid, user="alice@example.test", pw=ALICE_PW):
        c = starttls_client(sub)
        r = c.cmd("AUTH PLAIN " + b64("\0".join((authzid, user, pw))))
        c.close()
        return r
    for authzid, user in (("alice@example.test", "alice@example.test"),
                          ("Alice@Example.TEST", "alice@example.test"),
                          ("alice@example.test", "ALICE@example.test"),
                          ("ALICE@EXAMPLE.TEST", "Alice@example.test"),
                          ("", "alice@example.test")):
        expect(login(authzid, user), 235, "2.7.0")
    for authzid in ("bob@example.test", "alice@example.test ", "alice", "ali:ce@example.test"):
        expect(login(authzid), 535, "5.7.8")
    check("authorization identity differs" in d.log(), d.log()[-600:])


@case("submission")
def passwd_entries_are_dovecot_compatible(ctx):
    need("doveadm")
    path = passwd_file(ctx, users=(("alice@example.test", ALICE_PW),))
    line = open(path).read().strip()
    scheme_hash = line.split(":", 1)[1]
    r = run(["doveadm", "pw", "-t", scheme_hash, "-p", ALICE_PW], check_rc=False)
    check(r.returncode == 0 and b"verified" in (r.stdout + r.stderr), f"doveadm: {r.stdout!r} {r.stderr!r}")
    r = run(["doveadm", "pw", "-t", scheme_hash, "-p", "wrong"], check_rc=False)
    check(r.returncode != 0, "doveadm verified a wrong password")
    # And a hash Dovecot made logs in here.
    for scheme in ("SHA512-CRYPT", "BLF-CRYPT"):
        h = run(["doveadm", "pw", "-s", scheme, "-p", "dove pw"]).stdout.decode().strip()
        f = ctx.path(f"passwd-{scheme}")
        with open(f, "w") as out:
            out.write(f"alice@example.test:{h}\n")
        sub = free_port("127.0.0.1")
        d = Daemon(ctx, tls=True, public=False, extra=["--submission-listen", f"127.0.0.1:{sub}",
                                                       "--passwd-file", f])
        c = starttls_client(sub)
        expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', 'dove pw')}"), 235, "2.7.0")
        c.close()
        d.stop()


class Dovecot:
    """A private Dovecot running only its auth service, users from a passwd-file made with
    `doveadm pw`, its auth-client socket in the case's directory. Never the system's config."""

    def __init__(self, ctx, users):
        need("dovecot", "doveadm")
        self.dir = ctx.path("dovecot")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        os.chmod(os.path.dirname(self.dir), 0o755)
        with open(os.path.join(self.dir, "users"), "w") as f:
            for user, pw in users:
                h = run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", pw]).stdout.decode().strip()
                f.write(f"{user}:{h}\n")
        if os.geteuid() == 0:
            import grp
            group = next((g for g in ("nogroup", "nobody") if _has_group(grp, g)), "root")
            user = "nobody"
        else:
            import pwd
            user = group = pwd.getpwuid(os.geteuid()).pw_name
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""protocols =
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
ssl = no
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    path = {self.dir}/auth-client
    mode = 0666
  }}
}}
""")
        self.socket = os.path.join(self.dir, "auth-client")
        self.ctx, self.conf = ctx, conf
        ctx.on_cleanup(self.stop)
        self.start()

    def start(self):
        self.proc = self.ctx.popen(["dovecot", "-F", "-c", self.conf], start_new_session=True,
                                   stderr=subprocess.PIPE)
        check(wait_for(lambda: unix_listening(self.socket), 20),
              f"dovecot did not start: {self.log()[-600:]}")

    def log(self):
        try:
            return open(os.path.join(self.dir, "dovecot.log"), errors="replace").read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _has_group(grp, name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@case("submission")
def users_from_a_real_dovecot(ctx):
    need("swaks")
    dove = Dovecot(ctx, [("alice@example.test", "dovecot pw"), ("bob@example.test", "bob pw")])
    sub = free_port("127.0.0.1")
    d = Daemon(ctx, tls=True, extra=["--submission-listen", f"127.0.0.1:{sub}",
                                     "--auth-dovecot", dove.socket])
    for mech in ("PLAIN", "LOGIN"):
        out = swaks_out(["--server", f"127.0.0.1:{sub}", "--tls", "--auth", mech,
                         "--auth-user", "alice@example.test", "--auth-password", "dovecot pw",
                         "--from", "alice@example.test", "--to", "carol@example.test",
                         "--body", f"checked by dovecot {mech}"])
        check("235 2.7.0" in out, f"{mech}: {out[-600:]} {d.log()[-600:]} {dove.log()[-600:]}")
    check(len(d.messages("carol")) == 2, f"carol: {len(d.messages('carol'))}")
    c = starttls_client(sub)
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', 'wrong')}"), 535, "5.7.8")
    expect(c.cmd(f"AUTH PLAIN {plain_ir('bob@example.test', 'bob pw')}"), 235, "2.7.0")
    expect(c.cmd("MAIL FROM:<alice@example.test>"), 553, "5.7.1")
    c.close()
    # Dovecot down: a temporary failure, never a 535, answered at once, and counted nowhere:
    # twelve of them lock no one out once Dovecot is back.
    dove.stop()
    t = time.monotonic()
    for _ in range(4):
        c = starttls_client(sub)
        for _ in range(3):
            expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', 'dovecot pw')}"), 454, "4.7.0")
        c.close()
    check(time.monotonic() - t < 10, "454s were delayed")
    dove.start()
    c = starttls_client(sub)
    expect(c.cmd(f"AUTH PLAIN {plain_ir('alice@example.test', 'dovecot pw')}"), 235, "2.7.0")
    c.close()


# =============================================================================================
# ops: what an admin does to a running daemon

@case("ops")
def logrotate_with_postrotate_sighup(ctx):
    need("logrotate")
    d = Daemon(ctx)
    expect(submit(d, "before@example.test", ["bob@example.test"], MSG), 250)
    check(wait_for(lambda: "before@example.test" in d.log(), 10), d.log()[-400:])
    conf = ctx.path("logrotate.conf")
    with open(conf, "w") as f:
        f.write(f"""{d.logfile} {{
    rotate 3
    missingok
    nocompress
    postrotate
        kill -HUP {d.proc.pid}
    endscript
}}
""")
    run(["logrotate", "--force", "--state", ctx.path("logrotate.state"), conf])
    rotated = d.logfile + ".1"
    check(os.path.exists(rotated), "logrotate did not rotate")
    check(wait_for(lambda: "log file reopened" in d.log(), 10), f"not reopened: {d.log()!r}")
    expect(submit(d, "after@example.test", ["bob@example.test"], MSG), 250)
    check(wait_for(lambda: "after@example.test" in d.log(), 10), d.log()[-400:])
    old = open(rotated, errors="replace").read()
    check("before@example.test" in old and "after@example.test" not in old, old[-400:])


@case("ops")
def queue_tool_lists_flushes_and_deletes(ctx):
    # A next hop that defers everything, then the admin flushes and finally deletes.
    peer = Peer(ctx, rcpt=lambda addr: b"451 4.3.0 try later\r\n")
    dns = Dns(ctx, mx=[("remote.test", "mx.remote.test", 10)], hosts=[("mx.remote.test", "127.0.0.1")])
    d = Daemon(ctx, dns=dns, extra=["--remote-port", str(peer.port), "--retry-base", "1h"])
    expect(submit(d, "alice@example.test", ["dave@remote.test"], MSG), 250)
    check(wait_for(lambda: "deferred" in d.log(), 20), d.log()[-600:])
    out = run([BIN, "queue", "-d", d.spool, "list"]).stdout.decode()
    check("dave@remote.test" in out and "alice@example.test" in out and "451 4.3.0" in out, out)
    import json
    j = json.loads(run([BIN, "queue", "-d", d.spool, "list", "--json"]).stdout)
    check(len(j["entries"]) == 1, f"{j}")
    qid = j["entries"][0]["id"]
    tried = peer.rcpt_commands
    run([BIN, "queue", "-d", d.spool, "flush", qid])
    check(wait_for(lambda: peer.rcpt_commands > tried, 15), "flush did not make the daemon try")
    check(wait_for(lambda: run([BIN, "queue", "-d", d.spool, "delete", qid], check_rc=False).returncode == 0, 15),
          "delete failed")
    out = run([BIN, "queue", "-d", d.spool, "list"]).stdout.decode()
    check("Mail queue is empty" in out, out)


@case("ops")
def prometheus_scrapes_the_metrics(ctx):
    """A real Prometheus (private config, storage and port) scrapes --metrics-listen; the
    values it stores match a known load."""
    need("prometheus")
    mport = free_port("127.0.0.1")
    d = Daemon(ctx, public=True, extra=["--metrics-listen", f"127.0.0.1:{mport}"])
    for i in range(3):
        expect(submit(d, "alice@example.test", ["bob@example.test"], MSG), 250)
    c = Client("127.0.0.2", d.pub)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<x@client.test>"), 250)
    expect(c.cmd("RCPT TO:<victim@elsewhere.test>"), 554, "5.7.1")
    c.close()
    pport = free_port("127.0.0.1")
    conf = ctx.path("prometheus.yml")
    with open(conf, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: smtp
    static_configs:
      - targets: ["127.0.0.1:{mport}"]
""")
    ctx.popen(["prometheus", f"--config.file={conf}", f"--storage.tsdb.path={ctx.path('tsdb')}",
               f"--web.listen-address=127.0.0.1:{pport}"])
    import json, urllib.parse, urllib.request

    def query(q):
        url = f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                res = json.load(r)["data"]["result"]
        except OSError:
            return None
        return float(res[0]["value"][1]) if res else None
    check(wait_for(lambda: query('up{job="smtp"}') == 1.0, 40), "Prometheus never scraped the daemon")
    check(wait_for(lambda: query('smtp_messages_total{class="2xx",listener="loopback"}') == 3.0, 20),
          f"messages: {query('smtp_messages_total')}")
    check(query('smtp_recipients_refused_total{class="5xx"}') == 1.0,
          f"refused: {query('smtp_recipients_refused_total')}")
    check(query('smtp_deliveries_total{destination="local",outcome="delivered"}') == 3.0,
          f"deliveries: {query('smtp_deliveries_total')}")
    # (the suite's own start-up probe connects too)
    check((query('smtp_connections_total{listener="public"}') or 0) >= 1.0, "connections")
    check(query("smtp_queue_entries") == 0.0, "queue gauge")
    # Anything but GET /metrics is a 404.
    r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{mport}/"])
    check(r.stdout == b"404", f"{r.stdout!r}")


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin", nargs="?", default="target/debug/smtp-server")
    ap.add_argument("--family", action="append", choices=FAMILIES, help="run only this family (repeatable)")
    ap.add_argument("--case", action="append", help="run only this case (family/case or case)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories of failed cases")
    a = ap.parse_args()
    BIN = os.path.abspath(a.bin)
    chosen = [(f, n, fn) for f, n, fn in CASES if (not a.family or f in a.family)
              and (not a.case or n in a.case or f"{f}/{n}" in a.case)]
    if a.list:
        for f, n, _ in chosen:
            print(f"{f}/{n}")
        return 0
    if not os.access(BIN, os.X_OK):
        sys.exit(f"not an executable: {BIN}")
    SHARED["dir"] = tempfile.mkdtemp(prefix="fs-shared-")

    def alarm(*_):
        raise TimeoutError(f"case took longer than {CASE_TIMEOUT}s")
    signal.signal(signal.SIGALRM, alarm)
    results = {}
    failures = []
    t_start = time.monotonic()
    for fam, name, fn in chosen:
        ctx = Ctx(fam, name)
        ok, why = True, ""
        t0 = time.monotonic()
        signal.alarm(CASE_TIMEOUT)
        try:
            fn(ctx)
        except Fail as e:
            ok, why = False, str(e)
        except Exception as e:  # noqa: BLE001 - a crash of a case is its failure
            ok, why = False, f"{type(e).__name__}: {e} at " + \
                " <- ".join(f"{fr.name}:{fr.lineno}" for fr in traceback.extract_tb(e.__traceback__)[-3:])
        finally:
            signal.alarm(0)
            ctx.close(keep=a.keep and not ok)
        why = why.replace("\n", "\\n")
        if len(why) > 700:
            why = why[:700] + "..."
        dt = time.monotonic() - t0
        if ok:
            print(f"ok   {fam}/{name} ({dt:.1f}s)", flush=True)
        else:
            print(f"FAIL {fam}/{name}: {why} ({dt:.1f}s)", flush=True)
            failures.append(f"{fam}/{name}")
        r = results.setdefault(fam, [0, 0])
        r[0 if ok else 1] += 1
    shutil.rmtree(SHARED["dir"], ignore_errors=True)
    print("\nsummary:")
    for fam in FAMILIES:
        if fam in results:
            okn, bad = results[fam]
            print(f"  {fam:<11} {okn + bad:>3} cases  {okn:>3} ok  {bad:>3} failed")
    tot_ok = sum(r[0] for r in results.values())
    tot_bad = sum(r[1] for r in results.values())
    print(f"  {'total':<11} {tot_ok + tot_bad:>3} cases  {tot_ok:>3} ok  {tot_bad:>3} failed"
          f"  ({time.monotonic() - t_start:.0f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
