//! DATA codec throughput on a realistic 1 MB message: text lines of about 76 characters, some
//! starting with a dot (so dot-stuffing is exercised), decoded from 8 KiB and 64 KiB chunks as a
//! server reads them, and encoded as a client sends them.
//!
//! Run: `cargo bench -p smtp-benches --bench data`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smtp_proto::data::{encode_data, DataDecoder, DataStatus};
use std::hint::black_box;

/// A ~1 MB message body with CRLF line endings.
fn message() -> Vec<u8> {
    let mut body = Vec::with_capacity(1 << 20);
    body.extend_from_slice(
        b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n\
          From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n\
          Subject: quarterly report\r\nMessage-ID: <1234@example.org>\r\n\r\n",
    );
    let words: Vec<&str> = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
                            tempor incididunt ut labore et dolore magna"
        .split_whitespace()
        .collect();
    let mut n = 0usize;
    while body.len() < 1 << 20 {
        let mut line = String::new();
        // Every 40th line starts with a dot, as quoted signatures and `..` paths do.
        if n.is_multiple_of(40) {
            line.push('.');
        }
        while line.len() < 70 {
            line.push_str(words[(n * 7 + line.len()) % words.len()]);
            line.push(' ');
        }
        line.truncate(76);
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\r\n");
        n += 1;
    }
    body
}

fn decode_all(wire: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    let mut dec = DataDecoder::new();
    let mut fed = 0;
    for piece in wire.chunks(chunk) {
        match dec.decode(piece, out) {
            DataStatus::NeedMore => fed += piece.len(),
            DataStatus::End { consumed, result } => {
                assert!(result.is_ok());
                return fed + consumed;
            }
        }
    }
    panic!("no end marker");
}

fn bench_data(c: &mut Criterion) {
    let body = message();
    let mut wire = Vec::new();
    encode_data(&body, &mut wire);

    let mut group = c.benchmark_group("data_decode");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    for chunk in [8 * 1024, 64 * 1024] {
        let mut out = Vec::with_capacity(wire.len());
        assert_eq!(decode_all(&wire, chunk, &mut out), wire.len());
        assert_eq!(out, body);
        group.bench_with_input(BenchmarkId::from_parameter(chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                out.clear();
                black_box(decode_all(black_box(&wire), chunk, &mut out))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("data_encode");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(wire.len());
    group.bench_function("1MB", |b| {
        b.iter(|| {
            out.clear();
            encode_data(black_box(&body), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_data);
criterion_main!(benches);
