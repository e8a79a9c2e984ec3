#!/usr/bin/env python3
"""Resident memory of an SMTP server holding N idle sessions (after EHLO), on loopback.

Usage: idle_sessions.py --pid PID [--host 127.0.0.1] [--port 2525] [--sessions 10000]
                        [--sources 4]

Opens N connections, reads each greeting, sends EHLO and reads the reply, then reports the
server's VmRSS from /proc/PID/status before and with all sessions open, and checks that a
sample of the sessions still answers NOOP. Exits non-zero if a session fails.

The clients are spread over --sources loopback source addresses (127.0.0.1, 127.0.0.2, ...;
one address has ~28,000 ephemeral ports towards one server port) and, when one process may
not hold them all, over several client processes: each raises its soft open-files limit to
the hard one and holds at most that many sockets less a margin. The server needs a limit
above N too (`ulimit -Hn`; the daemon raises its soft limit to the hard one, and needs
`--max-connections 0` or a value above N). Loopback only.
"""
import argparse, multiprocessing, resource, socket, sys, time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_reply(sock, buf):
    """Reads until a complete final reply line; returns it."""
    while True:
        lines = buf[0].split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                buf[0] = b"\r\n".join(lines[i + 1:])
                return line
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed")
        buf[0] += data


def client(conn, host, port, first, count, sources):
    """Opens `count` sessions (numbered from `first`), reports, holds them until told."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    try:
        for i in range(first, first + count):
            src = f"127.0.0.{1 + i % sources}" if host.startswith("127.") else None
            s = socket.create_connection((host, port), timeout=60,
                                         source_address=(src, 0) if src else None)
            buf = [b""]
            g = read_reply(s, buf)
            if not g.startswith(b"220"):
                raise RuntimeError(f"session {i}: greeting {g!r}")
            s.sendall(b"EHLO idle.test\r\n")
            r = read_reply(s, buf)
            if not r.startswith(b"250"):
                raise RuntimeError(f"session {i}: EHLO reply {r!r}")
            socks.append(s)
    except Exception as e:  # reported to the parent, which fails the run
        conn.send(f"error: {e}")
        return
    conn.send("ready")
    conn.recv()  # "check"
    try:
        for s in socks[:: max(1, len(socks) // 20)]:
            s.sendall(b"NOOP\r\n")
            r = read_reply(s, [b""])
            if not r.startswith(b"250"):
                raise RuntimeError(f"NOOP answered {r!r}")
    except Exception as e:
        conn.send(f"error: a session did not answer NOOP: {e}")
    else:
        conn.send("ok")
    conn.recv()  # "close"
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--sources", type=int, default=4)
    a = ap.parse_args()
    if a.sessions < 1 or not 1 <= a.sources <= 254:
        sys.exit("--sessions must be at least 1 and --sources between 1 and 254")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_proc = max(1, min(50_000, hard - 200))
    procs = -(-a.sessions // per_proc)
    before = rss_kb(a.pid)
    t0 = time.time()
    workers = []
    for p in range(procs):
        first = p * per_proc
        count = min(per_proc, a.sessions - first)
        parent, child = multiprocessing.Pipe()
        w = multiprocessing.Process(target=client,
                                    args=(child, a.host, a.port, first, count, a.sources))
        w.start()
        child.close()  # so that a child that dies is seen as the end of its pipe
        workers.append((w, parent))

    def answers():
        # Each worker's next message; one that died says so instead of hanging the run.
        got = []
        for w, c in workers:
            try:
                got.append(c.recv())
            except EOFError:
                w.join()
                got.append(f"error: a client process died (exit code {w.exitcode})")
        return got

    failed = [m for m in answers() if m != "ready"]
    if failed:
        for w, _ in workers:
            w.kill()
        sys.exit(failed[0])
    time.sleep(1)
    after = rss_kb(a.pid)
    setup = time.time() - t0
    for _, c in workers:
        c.send("check")
    failed = [m for m in answers() if m != "ok"]
    print(f"sessions={a.sessions} client_processes={procs} sources={a.sources} "
          f"setup_s={setup:.1f} rss_before_kB={before} rss_with_sessions_kB={after} "
          f"per_session_B={(after - before) * 1024 // a.sessions}")
    for w, c in workers:
        try:
            c.send("close")
        except OSError:
            pass
        w.join()
    if failed:
        sys.exit(failed[0])


if __name__ == "__main__":
    main()
