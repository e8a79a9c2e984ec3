//! Session throughput: a [`smtp_proto::session::Session`] driven through whole pipelined
//! sessions (EHLO; per message MAIL with SIZE/BODY, several RCPT, DATA in one group, then the
//! content; QUIT), with the MAIL/RCPT fast path of `parse_command` on and off in the same run.
//!
//! Run: `cargo bench -p smtp-benches --bench session -- --measurement-time 3`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::Ordering;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtp_proto::session::SessionConfig;

use smtp_benches::{run_session, session_rounds};

const TRANSACTIONS: usize = 10;

fn bench(c: &mut Criterion) {
    let mut config = SessionConfig::new("mx.example.org");
    config.dsn = true;
    for (name, recipients, body, dsn) in [
        ("plain_5rcpt_1k", 5, 1024, false),
        ("dsn_5rcpt_1k", 5, 1024, true),
        ("plain_5rcpt_tiny", 5, 0, false),
    ] {
        let rounds = session_rounds(TRANSACTIONS, recipients, body, dsn);
        let bytes: usize = rounds.iter().map(Vec::len).sum();
        let mut g = c.benchmark_group(format!("session_{name}"));
        g.throughput(Throughput::Elements(TRANSACTIONS as u64));
        for fast in [true, false] {
            smtp_proto::command::FAST_PATH.store(fast, Ordering::Relaxed);
            assert_eq!(run_session(&rounds, &config), TRANSACTIONS);
            let label = if fast { "fast path" } else { "general only" };
            g.bench_function(label, |b| {
                b.iter(|| run_session(black_box(&rounds), &config))
            });
        }
        g.finish();
        eprintln!("{name}: {bytes} bytes per session of {TRANSACTIONS} messages");
    }
    smtp_proto::command::FAST_PATH.store(true, Ordering::Relaxed);
}

criterion_group!(benches, bench);
criterion_main!(benches);
