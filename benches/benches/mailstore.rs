//! Delivery rate of the `mailstore` stores, with fsync, against the raw cost of making one file
//! durable (write + fsync + rename + directory fsync) on the same file system.
//!
//! `cargo bench -p smtp-benches --bench mailstore`. The temporary directories are made under
//! `$MAILSTORE_BENCH_DIR` if set (to measure a particular disk), else under `target/`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mailstore::{maildir::Maildir, spool::Spool, MailboxName, Store};

const THREADS: u64 = 8;

fn bench_root() -> PathBuf {
    let base = std::env::var_os("MAILSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/mailstore-bench")
        });
    fs::create_dir_all(&base).expect("bench directory");
    base
}

/// A new empty directory for one benchmark.
fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench directory");
    dir
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: bench@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    m.resize(size, b'x');
    m
}

/// The floor: what any durable delivery must do at least.
fn raw_deliver(dir: &Path, dir_handle: &File, n: u64, body: &[u8]) {
    let tmp = dir.join(format!("tmp.{n}"));
    let mut f = File::create(&tmp).expect("create");
    f.write_all(body).expect("write");
    f.sync_all().expect("fsync");
    fs::rename(&tmp, dir.join(n.to_string())).expect("rename");
    dir_handle.sync_all().expect("dir fsync");
}

fn mailboxes(n: usize) -> Vec<MailboxName> {
    (0..n)
        .map(|i| MailboxName::new(&format!("user{i}")).expect("valid name"))
        .collect()
}

/// Runs `iters` deliveries spread over `THREADS` threads; returns the wall time.
fn concurrently(iters: u64, work: impl Fn(u64) + Send + Sync + 'static) -> Duration {
    let work = Arc::new(work);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (work, counter) = (work.clone(), counter.clone());
            thread::spawn(move || loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= iters {
                    break;
                }
                work(i);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

fn deliveries(c: &mut Criterion) {
    let root = bench_root();
    for size in [1024usize, 100 * 1024] {
        let body = Arc::new(message(size));
        let mut g = c.benchmark_group(format!("mailstore/{}KB", size / 1024));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(1));

        let dir = fresh_dir(&root, &format!("raw-{size}"));
        let handle = File::open(&dir).expect("open dir");
        let mut n = 0u64;
        g.bench_function("raw write+fsync+rename+dirfsync", |b| {
            b.iter(|| {
                n += 1;
                raw_deliver(&dir, &handle, n, &body)
            })
        });

        let dir = fresh_dir(&root, &format!("spool-{size}"));
        let spool = Spool::open(&dir).expect("spool");
        let one = mailboxes(1);
        g.bench_function("spool, one mailbox", |b| {
            b.iter(|| spool.deliver(&one[0], &body).expect("deliver"))
        });

        let hundred = mailboxes(100);
        let mut i = 0;
        g.bench_function("spool, 100 mailboxes", |b| {
            b.iter(|| {
                i += 1;
                spool.deliver(&hundred[i % 100], &body).expect("deliver")
            })
        });

        let dir = fresh_dir(&root, &format!("maildir-{size}"));
        let maildir = Maildir::open(&dir).expect("maildir");
        g.bench_function("maildir, one mailbox", |b| {
            b.iter(|| maildir.deliver(&one[0], &body).expect("deliver"))
        });

        // Under concurrency: time per message with 8 threads delivering at once.
        let dir = fresh_dir(&root, &format!("raw8-{size}"));
        let raw_dir = dir.clone();
        let seq = Arc::new(AtomicU64::new(0));
        g.bench_function("raw, 8 threads", |b| {
            b.iter_custom(|iters| {
                let (dir, body, seq) = (raw_dir.clone(), body.clone(), seq.clone());
                concurrently(iters, move |_| {
                    let handle = File::open(&dir).expect("open dir");
                    raw_deliver(&dir, &handle, seq.fetch_add(1, Ordering::Relaxed), &body)
                })
            })
        });
        g.bench_function("spool, one mailbox, 8 threads", |b| {
            b.iter_custom(|iters| {
                let (spool, body, one) = (spool.clone(), body.clone(), one.clone());
                concurrently(iters, move |_| {
                    spool.deliver(&one[0], &body).expect("deliver");
                })
            })
        });
        g.bench_function("spool, 100 mailboxes, 8 threads", |b| {
            b.iter_custom(|iters| {
                let (spool, body, hundred) = (spool.clone(), body.clone(), hundred.clone());
                concurrently(iters, move |i| {
                    spool
                        .deliver(&hundred[(i % 100) as usize], &body)
                        .expect("deliver");
                })
            })
        });
        g.finish();
    }
}

/// One message to ten mailboxes: written once and hard-linked, against ten separate deliveries.
fn fan_out(c: &mut Criterion) {
    let root = bench_root();
    let ten = mailboxes(10);
    let mut g = c.benchmark_group("mailstore/10 recipients");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for size in [1024usize, 100 * 1024] {
        let body = message(size);
        let dir = fresh_dir(&root, &format!("fanout-{size}"));
        let spool = Spool::open(&dir).expect("spool");
        g.bench_with_input(
            BenchmarkId::new("deliver_many (one write, links)", size),
            &body,
            |b, body| b.iter(|| spool.deliver_many(&ten, body).expect("deliver")),
        );
        g.bench_with_input(
            BenchmarkId::new("deliver x10 (a copy each)", size),
            &body,
            |b, body| {
                b.iter(|| {
                    for m in &ten {
                        spool.deliver(m, body).expect("deliver");
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, deliveries, fan_out);
criterion_main!(benches);
