#!/bin/sh
# The local race at 10 sessions after the file system has been quiet (no file removed for
# QUIET seconds, so ext4 without a journal has no recently freed inode to scan past), then
# three repetitions at once (each after the harness's removal of the run before). See
# benches/README.md. Run from the repository root after `cargo build --release -p smtp-server`;
# needs postfix (smtp-source) and ../shared/bench. Do nothing else on the machine meanwhile.
#   [BIN=...] [QUIET=150] scripts/quiet_race.sh
set -e
BIN=${BIN:-target/release/smtp-server}; QUIET=${QUIET:-150}
C=../shared/bench/compare.py
OURS="$BIN -d {dir}/mail -s example.test -l 127.0.0.1:{port} --no-public --dns-server 127.0.0.1:1"
for fmt in spool maildir; do
  if [ $fmt = spool ]; then CD='{dir}/mail/bench'; X=""; else CD='{dir}/mail/bench/new'; X=" -f maildir"; fi
  echo "== $fmt after ${QUIET}s quiet"; sleep "$QUIET"
  python3 $C --peer postfix --count-dir "$CD" --ours "$OURS$X" --sessions 10 --count 2000 --reps 1 | tail -2
  echo "== $fmt at once after (3 reps)"
  python3 $C --peer postfix --count-dir "$CD" --ours "$OURS$X" --sessions 10 --count 2000 --reps 3 | tail -2
done
