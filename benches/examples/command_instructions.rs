//! Runs the command mix of `benches/commands.rs` N times through one parser, for counting
//! instructions with callgrind (steadier than wall-clock time on a shared machine):
//!
//! ```text
//! cargo build --release -p smtp-benches --example command_instructions
//! scripts/count_instructions.sh      # runs it under valgrind for N and 2N, prints the difference / N
//! ```
//!
//! Usage: `command_instructions <ours|ours-general|stalwart> <iterations>` (`ours-general`:
//! ours with the MAIL/RCPT fast path off); prints the commands parsed and the
//! time per mix (only a rough figure; use criterion for time).
#![allow(missing_docs)]

use std::hint::black_box;

use smtp_benches::{parse_ours, parse_stalwart, MIX};
use smtp_proto::command::Limits;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let limits = Limits::default();
    if which == "ours-general" {
        smtp_proto::command::FAST_PATH.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    let started = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..iters {
        total += match which.as_str() {
            "ours" | "ours-general" => parse_ours(black_box(MIX), &limits),
            "stalwart" => parse_stalwart(black_box(MIX)),
            _ => {
                eprintln!("usage: command_instructions <ours|ours-general|stalwart> <iterations>");
                std::process::exit(2);
            }
        };
    }
    let per_mix = started.elapsed().as_nanos() as f64 / iters.max(1) as f64;
    println!("{which}: {total} commands, {per_mix:.1} ns/mix");
}
