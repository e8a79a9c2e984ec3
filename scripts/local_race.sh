#!/bin/sh
# Durable local delivery against Postfix, spool and Maildir, with the disk's own figure before
# and after, in one run (issue 13). Run from the repository root after
# `cargo build --release -p smtp-server`; needs postfix (smtp-source) and ../shared/bench.
#   scripts/local_race.sh [SESSIONS] [COUNT] [REPS]
set -e
S=${1:-1,10,50}; N=${2:-2000}; R=${3:-1}
BIN=${BIN:-target/release/smtp-server}
C=../shared/bench/compare.py
OURS="$BIN -d {dir}/mail -s example.test -l 127.0.0.1:{port} --no-public --dns-server 127.0.0.1:1"
echo "== the disk (before)"; python3 scripts/disk_writers.py --threads "$S" --count "$N"
echo "== spool"; python3 $C --peer postfix --count-dir '{dir}/mail/bench' --ours "$OURS" --sessions "$S" --count "$N" --reps "$R" | tail -4
echo "== maildir"; python3 $C --peer postfix --count-dir '{dir}/mail/bench/new' --ours "$OURS -f maildir" --sessions "$S" --count "$N" --reps "$R" | tail -4
echo "== the disk (after)"; python3 scripts/disk_writers.py --threads "$S" --count "$N"
