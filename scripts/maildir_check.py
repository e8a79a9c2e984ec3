#!/usr/bin/env python3
"""Check a Maildir written by mailstore with a reader nobody here wrote: Python's mailbox.Maildir.

Usage: maildir_check.py ROOT USER N

Opens ROOT/USER as a Maildir, and checks that it holds exactly N messages, each with parsed
From, To, Subject and Message-ID headers and a non-empty body, and that Message-IDs are unique.
Exits 0 and prints "ok: N messages" on success; prints what is wrong and exits 1 otherwise.
"""
import mailbox
import os
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    root, user, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
    path = os.path.join(root, user)
    for sub in ("tmp", "new", "cur"):
        if not os.path.isdir(os.path.join(path, sub)):
            print(f"missing {sub}/ in {path}")
            return 1
    box = mailbox.Maildir(path, factory=None, create=False)
    problems = []
    ids = set()
    count = 0
    for key, msg in box.iteritems():
        count += 1
        for header in ("From", "To", "Subject", "Message-ID"):
            if msg[header] is None:
                problems.append(f"{key}: no {header} header")
        if msg.get_subdir() != "new":
            problems.append(f"{key}: in {msg.get_subdir()}/, expected new/")
        if not msg.get_payload():
            problems.append(f"{key}: empty body")
        mid = msg["Message-ID"]
        if mid in ids:
            problems.append(f"{key}: duplicate Message-ID {mid}")
        ids.add(mid)
    if count != want:
        problems.append(f"expected {want} messages, mailbox.Maildir sees {count}")
    if os.listdir(os.path.join(path, "tmp")):
        problems.append("tmp/ is not empty")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"ok: {count} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
