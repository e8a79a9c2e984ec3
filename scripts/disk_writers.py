#!/usr/bin/env python3
"""What the disk itself does: N threads each writing 1 KB files durably, as a mail store must
(write, fsync, rename into place, fsync the directory), in a fresh directory under --dir.

    python3 scripts/disk_writers.py --threads 1,10,50 --count 2000 [--dir /tmp] [--size 1024]

Prints files per second per thread count. This is the ceiling the issue's "disk's ten-writer
figure" names; scripts/local_race.sh prints it beside the compare.py races, in one run.
"""
import argparse
import os
import shutil
import tempfile
import threading
import time


def run(base, threads, count, size):
    d = tempfile.mkdtemp(prefix="disk-", dir=base)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    data = b"x" * size
    per = count // threads

    def writer(t):
        for i in range(per):
            p = f"{d}/{t}.{i}"
            f = os.open(p + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(f, data)
            os.fsync(f)
            os.close(f)
            os.rename(p + ".tmp", p)
            os.fsync(fd)

    ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = per * threads / (time.perf_counter() - start)
    os.close(fd)
    shutil.rmtree(d, ignore_errors=True)
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,10,50")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    a = ap.parse_args()
    print("threads  files/s (write+fsync+rename+dir fsync)")
    for n in (int(x) for x in a.threads.split(",")):
        print(f"{n:7d}  {run(a.dir, n, a.count, a.size):8.0f}")


if __name__ == "__main__":
    main()
