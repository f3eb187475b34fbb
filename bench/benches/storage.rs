//! The server's durable record: `log.txt` lines, appends per durability
//! setting, and replay at start.
//!
//! * `log_line`: formatting and parsing one line (pure CPU).
//! * `log_append_os` / `log_append_fsync`: a send through `ChatServer`
//!   until it is durable, which is the journal's whole path (queue, one
//!   `write` per batch, by the waiting task with `os` or by the journal
//!   thread with `fsync`, publish, answer).
//!   `one_send` has one request in flight, so it is the latency of a lone
//!   send; `group_commit_256` has 256 in flight, so they share writes (and
//!   fsyncs) the way they do under load.
//! * `log_replay`: reading a data directory back. `parse` is
//!   `journal::replay` (read and parse both files); `open` is
//!   `ChatServer::open` (parse plus rebuilding histories, mailboxes and the
//!   by-ID index). Replay reads the same files whatever the durability
//!   setting was, so it is measured once.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use chat_bench::fixtures::{
    count_label, creds, open_server, principal, register_clients, send_command, send_messages,
    size_label, text,
};
use chat_bench::{runtime, time_async};
use chat_core::journal::{self, Durability};
use chat_core::log_line;
use chat_core::{ChatServer, ClientId, Message, MessageId};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::try_join_all;

const SCRATCH: &str = env!("CARGO_TARGET_TMPDIR");

/// Sends in flight for the group-commit case.
const GROUP: usize = 256;

fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all(SCRATCH).expect("cannot create the scratch directory");
    tempfile::tempdir_in(SCRATCH).expect("cannot create a data directory")
}

fn log_line_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_line");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for size in [64, 1024, 4096] {
        let m = Message {
            id: MessageId::generate(),
            from: ClientId::parse("alice").expect("valid"),
            to: ClientId::parse("bob").expect("valid"),
            text: text(size),
            timestamp_ms: 1_795_772_199_123,
            seq: 0,
        };
        let mut line = String::new();
        log_line::write_line(&mut line, &m);
        g.throughput(Throughput::Bytes(line.len() as u64));
        let label = size_label(size);
        g.bench_with_input(BenchmarkId::new("format", &label), &m, |b, m| {
            let mut out = String::with_capacity(line.len());
            b.iter(|| {
                out.clear();
                log_line::write_line(&mut out, black_box(m));
                black_box(&out);
            });
        });
        let parsed_line = line.trim_end_matches('\n').to_owned();
        g.bench_with_input(BenchmarkId::new("parse", &label), &parsed_line, |b, l| {
            b.iter(|| log_line::parse_line(black_box(l)).expect("valid line"));
        });
    }
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let rt = runtime();
    for (name, durability) in [
        ("log_append_os", Durability::Os),
        ("log_append_fsync", Durability::Fsync),
    ] {
        let dir = scratch();
        let server = open_server(dir.path(), durability);
        rt.block_on(async {
            server
                .register(&creds("alice"), "alice")
                .await
                .expect("register");
            server
                .register(&creds("bob"), "bob")
                .await
                .expect("register");
        });
        let alice = principal(&server, "alice");
        let body = text(64);
        let mut g = c.benchmark_group(name);
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .sample_size(20);
        g.throughput(Throughput::Elements(1));
        g.bench_function("one_send_64B", |b| {
            b.iter_custom(|iters| {
                time_async(&rt, iters, |_| async {
                    server
                        .send(&alice, send_command("alice", "bob", &body))
                        .await
                        .expect("accepted");
                })
            });
        });
        g.throughput(Throughput::Elements(GROUP as u64));
        g.bench_function(format!("group_commit_{GROUP}x64B"), |b| {
            b.iter_custom(|iters| {
                time_async(&rt, iters, |_| async {
                    try_join_all(
                        (0..GROUP)
                            .map(|_| server.send(&alice, send_command("alice", "bob", &body))),
                    )
                    .await
                    .expect("accepted");
                })
            });
        });
        g.finish();
    }
}

/// A data directory with `n` 64-byte messages from alice to bob.
fn data_dir_with(rt: &tokio::runtime::Runtime, n: usize) -> tempfile::TempDir {
    let dir = scratch();
    let server = open_server(dir.path(), Durability::Os);
    rt.block_on(async {
        register_clients(&server, 2).await;
        send_messages(&server, "c0", "c1", n, 64).await;
    });
    dir
}

fn log_replay(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("log_replay");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10);
    for n in [1_000, 10_000, 100_000] {
        let dir = data_dir_with(&rt, n);
        let path = dir.path();
        g.throughput(Throughput::Elements(n as u64));
        let label = count_label(n);
        g.bench_with_input(BenchmarkId::new("parse", &label), path, |b, path| {
            b.iter(|| journal::replay(black_box(path)).expect("replays"));
        });
        g.bench_with_input(BenchmarkId::new("open", &label), path, |b, path| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let server = open_at(path);
                    total += start.elapsed();
                    drop(server); // outside the timed region
                }
                total
            });
        });
    }
    g.finish();
}

fn open_at(path: &Path) -> ChatServer {
    open_server(black_box(path), Durability::Os)
}

criterion_group!(benches, log_line_codec, log_append, log_replay);
criterion_main!(benches);
