//! Runs whole sessions of `benches/session.rs` N times, with the MAIL/RCPT fast path on or
//! off, for counting instructions with callgrind (steadier than wall-clock time on a shared
//! machine). `benches/README.md` has the commands.
//!
//! Usage: `session_instructions <fast|general> <plain|dsn|tiny> <iterations>`; prints the
//! messages accepted and a rough time per session (use criterion for time).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::Ordering;

use smtp_benches::{run_session, session_rounds};
use smtp_proto::session::SessionConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let workload = args.next().unwrap_or_default();
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let (fast, rounds) = match (mode.as_str(), workload.as_str()) {
        (m @ ("fast" | "general"), w @ ("plain" | "dsn" | "tiny")) => (
            m == "fast",
            match w {
                "plain" => session_rounds(10, 5, 1024, false),
                "dsn" => session_rounds(10, 5, 1024, true),
                _ => session_rounds(10, 5, 0, false),
            },
        ),
        _ => {
            eprintln!("usage: session_instructions <fast|general> <plain|dsn|tiny> <iterations>");
            std::process::exit(2);
        }
    };
    smtp_proto::command::FAST_PATH.store(fast, Ordering::Relaxed);
    let mut config = SessionConfig::new("mx.example.org");
    config.dsn = true;
    let started = std::time::Instant::now();
    let mut total = 0;
    for _ in 0..iters {
        total += run_session(black_box(&rounds), &config);
    }
    let per = started.elapsed().as_nanos() as f64 / iters.max(1) as f64;
    println!("{mode} {workload}: {total} messages, {per:.0} ns/session");
}
