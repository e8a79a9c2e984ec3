#!/usr/bin/env python3
"""Resident memory of an SMTP server holding N idle sessions (after EHLO), on loopback.

Usage: idle_sessions.py --pid PID [--host 127.0.0.1] [--port 2525] [--sessions 10000]

Opens N connections (raising the soft open-files limit as needed), reads each greeting, sends
EHLO and reads the reply, then reports the server's VmRSS from /proc/PID/status before and
with all sessions open. Exits non-zero if a session fails. Loopback only.
"""
import argparse, resource, selectors, socket, sys, time


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--sessions", type=int, default=10000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.sessions + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    before = rss_kb(a.pid)
    socks = []
    t0 = time.time()
    for i in range(a.sessions):
        s = socket.create_connection((a.host, a.port), timeout=30)
        buf = [b""]
        g = read_reply(s, buf)
        if not g.startswith(b"220"):
            sys.exit(f"session {i}: greeting {g!r}")
        s.sendall(b"EHLO idle.test\r\n")
        r = read_reply(s, buf)
        if not r.startswith(b"250"):
            sys.exit(f"session {i}: EHLO reply {r!r}")
        socks.append(s)
    time.sleep(1)
    after = rss_kb(a.pid)
    print(f"sessions={a.sessions} setup_s={time.time() - t0:.1f} rss_before_kB={before} "
          f"rss_with_sessions_kB={after} per_session_B={(after - before) * 1024 // a.sessions}")
    # Every session is still alive.
    for s in socks[:: max(1, a.sessions // 100)]:
        s.sendall(b"NOOP\r\n")
        if not read_reply(s, [b""]).startswith(b"250"):
            sys.exit("a session did not answer NOOP")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
