//! Command parsing throughput on a realistic mix (one transaction with EHLO, MAIL FROM with
//! SIZE and BODY, several RCPT with NOTIFY, DATA, RSET, NOOP, QUIT), through this crate's
//! `parse_command` and through Stalwart's `smtp-proto` (crates.io) on the same bytes.
//!
//! Run: `cargo bench -p smtp-benches --bench commands`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtp_proto::command::{parse_command, Limits};
use stalwart_smtp_proto::Request;

use smtp_benches::{MIX, MIX_LINES as LINES};

/// Parses every line of `MIX` with ours; returns the number of commands.
fn ours(input: &[u8], limits: &Limits) -> usize {
    let mut rest = input;
    let mut n = 0;
    while let Ok(Some((cmd, used))) = parse_command(rest, limits) {
        black_box(&cmd);
        rest = &rest[used..];
        n += 1;
    }
    n
}

/// Parses every line of `MIX` with Stalwart's parser; returns the number of commands.
fn stalwart(input: &[u8]) -> usize {
    let mut it = input.iter();
    let mut n = 0;
    while it.len() > 0 {
        match Request::parse(&mut it) {
            Ok(req) => {
                black_box(&req);
                n += 1;
            }
            Err(_) => break,
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    // Both parsers must accept every line, or the comparison means nothing.
    assert_eq!(ours(MIX, &limits), LINES);
    assert_eq!(stalwart(MIX), LINES);

    let mut g = c.benchmark_group("command_mix");
    g.throughput(Throughput::Bytes(MIX.len() as u64));
    g.bench_function("smtp-proto (ours)", |b| {
        b.iter(|| ours(black_box(MIX), &limits))
    });
    g.bench_function("stalwart smtp-proto 0.2", |b| {
        b.iter(|| stalwart(black_box(MIX)))
    });
    g.finish();

    // Per-command view of the most common, most complex line.
    let mail = b"MAIL FROM:<alice.sender@example.org> SIZE=123456 BODY=8BITMIME\r\n";
    let mut g = c.benchmark_group("mail_from");
    g.throughput(Throughput::Bytes(mail.len() as u64));
    g.bench_function("smtp-proto (ours)", |b| {
        b.iter(|| ours(black_box(mail), &limits))
    });
    g.bench_function("stalwart smtp-proto 0.2", |b| {
        b.iter(|| stalwart(black_box(mail)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
