//! Command parsing throughput on a realistic mix (one transaction with EHLO, MAIL FROM with
//! SIZE and BODY, several RCPT with NOTIFY, DATA, RSET, NOOP, QUIT), through this crate's
//! `parse_command` and through Stalwart's `smtp-proto` (crates.io) on the same bytes.
//!
//! Run: `cargo bench -p smtp-benches --bench commands`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::Ordering;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtp_proto::command::{Limits, FAST_PATH};

use smtp_benches::{parse_ours, parse_stalwart, MIX, MIX_LINES as LINES};

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    // Both parsers must accept every line, or the comparison means nothing.
    assert_eq!(parse_ours(MIX, &limits), LINES);
    assert_eq!(parse_stalwart(MIX), LINES);

    let mut g = c.benchmark_group("command_mix");
    g.throughput(Throughput::Bytes(MIX.len() as u64));
    g.bench_function("smtp-proto (ours)", |b| {
        b.iter(|| parse_ours(black_box(MIX), &limits))
    });
    g.bench_function("stalwart smtp-proto 0.2", |b| {
        b.iter(|| parse_stalwart(black_box(MIX)))
    });
    g.finish();

    // The MAIL/RCPT fast path on and off, per line and on the mix.
    let rcpt = b"RCPT TO:<carol.jones@mail.example.net> NOTIFY=SUCCESS,FAILURE\r\n";
    for (name, input) in [
        ("mix", MIX),
        (
            "mail",
            &b"MAIL FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME\r\n"[..],
        ),
        ("rcpt", &rcpt[..]),
    ] {
        let mut g = c.benchmark_group(format!("fast_path_{name}"));
        g.throughput(Throughput::Bytes(input.len() as u64));
        for fast in [true, false] {
            FAST_PATH.store(fast, Ordering::Relaxed);
            let label = if fast { "fast path" } else { "general only" };
            g.bench_function(label, |b| b.iter(|| parse_ours(black_box(input), &limits)));
        }
        FAST_PATH.store(true, Ordering::Relaxed);
        g.finish();
    }

    // Per-command view of the most common, most complex line.
    let mail = b"MAIL FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME\r\n";
    let mut g = c.benchmark_group("mail_from");
    g.throughput(Throughput::Bytes(mail.len() as u64));
    g.bench_function("smtp-proto (ours)", |b| {
        b.iter(|| parse_ours(black_box(mail), &limits))
    });
    g.bench_function("stalwart smtp-proto 0.2", |b| {
        b.iter(|| parse_stalwart(black_box(mail)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
