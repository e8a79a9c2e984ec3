#!/bin/sh
# Instructions per command mix, ours and Stalwart's smtp-proto, counted by callgrind:
# (instructions for 2N mixes - instructions for N mixes) / N, so start-up costs cancel out.
# Needs valgrind (apt-get install -y valgrind).
set -eu
cargo build --release -q -p smtp-benches --example command_instructions
bin=target/release/examples/command_instructions
n=${N:-1000}
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*refs: *\([0-9,]*\).*/\1/p' | tr -d ,
}
for which in ours stalwart; do
    a=$(count "$which" "$n")
    b=$(count "$which" $((2 * n)))
    echo "$which: $(((b - a) / n)) instructions per mix"
done
