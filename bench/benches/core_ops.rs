//! `ChatServer` operations on the hot path, at 10, 1 000 and 100 000
//! clients (or messages), without any transport in front.
//!
//! * `register/new_id`: a new ID joins a server that has N clients (the
//!   bench's own IDs add to N as it runs); includes the journal append of
//!   the registration, which is when `register` answers.
//! * `register/resume`: an existing, offline ID registers again (lookup
//!   only, nothing written).
//! * `send/route`: a 64-byte message between two of N registered clients:
//!   validation, dedup index, seq assignment, journal append (durability
//!   `os`), then history and the recipient's mailbox.
//! * `history`: the sent messages of a client who sent N (what the History
//!   request returns).
//! * `list`: every client of N with its online status.
//!
//! The populated servers are built once, through the server's own API.

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use chat_bench::fixtures::{
    client_name, count_label, creds, open_server, principal, register_clients, send_command,
    send_messages, text,
};
use chat_bench::{runtime, time_async};
use chat_core::ChatServer;
use chat_core::journal::Durability;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SCRATCH: &str = env!("CARGO_TARGET_TMPDIR");
const SCALES: [usize; 3] = [10, 1_000, 100_000];

struct Populated {
    n: usize,
    server: ChatServer,
    _dir: tempfile::TempDir,
}

fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all(SCRATCH).expect("cannot create the scratch directory");
    tempfile::tempdir_in(SCRATCH).expect("cannot create a data directory")
}

/// A server with `n` registered clients `c0..c{n}`.
fn with_clients(rt: &tokio::runtime::Runtime, n: usize) -> Populated {
    let dir = scratch();
    let server = open_server(dir.path(), Durability::Os);
    rt.block_on(register_clients(&server, n));
    Populated {
        n,
        server,
        _dir: dir,
    }
}

/// A server where `c0` has sent `n` 64-byte messages to `c1`.
fn with_history(rt: &tokio::runtime::Runtime, n: usize) -> Populated {
    let dir = scratch();
    let server = open_server(dir.path(), Durability::Os);
    rt.block_on(async {
        register_clients(&server, 2).await;
        send_messages(&server, "c0", "c1", n, 64).await;
    });
    Populated {
        n,
        server,
        _dir: dir,
    }
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
}

fn core_ops(c: &mut Criterion) {
    let rt = runtime();
    let populated: Vec<Populated> = SCALES.iter().map(|&n| with_clients(&rt, n)).collect();

    // `list` and `send` first: `register/new_id` adds clients.
    let mut g = c.benchmark_group("list");
    configure(&mut g);
    for p in &populated {
        g.throughput(Throughput::Elements(p.n as u64));
        g.bench_function(BenchmarkId::new("clients", count_label(p.n)), |b| {
            b.iter(|| black_box(p.server.list()));
        });
    }
    g.finish();
    let mut g = c.benchmark_group("send");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    let body = text(64);
    for p in &populated {
        let names: Vec<String> = (0..p.n).map(client_name).collect();
        g.bench_function(BenchmarkId::new("route", count_label(p.n)), |b| {
            b.iter_custom(|iters| {
                time_async(&rt, iters, |i| {
                    let from = &names[i as usize % p.n];
                    let to = &names[(i as usize + 1) % p.n];
                    let request = send_command(from, to, &body);
                    let server = &p.server;
                    async move {
                        // Authenticated per request, as the adapters do.
                        let p = principal(server, from);
                        server.send(&p, request).await.expect("accepted");
                    }
                })
            });
        });
    }
    g.finish();

    let mut g = c.benchmark_group("register");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    for p in &populated {
        let label = count_label(p.n);
        let next = Cell::new(0u64);
        g.bench_function(BenchmarkId::new("new_id", &label), |b| {
            b.iter_custom(|iters| {
                time_async(&rt, iters, |_| {
                    let id = format!("new{}", next.get());
                    next.set(next.get() + 1);
                    let server = &p.server;
                    async move {
                        let (_, created) =
                            server.register(&creds(&id), &id).await.expect("registers");
                        assert!(created);
                    }
                })
            });
        });
        let existing = client_name(p.n / 2);
        g.bench_function(BenchmarkId::new("resume", &label), |b| {
            b.iter_custom(|iters| {
                time_async(&rt, iters, |_| async {
                    let (_, created) = p
                        .server
                        .register(&creds(&existing), &existing)
                        .await
                        .expect("resumes");
                    assert!(!created);
                })
            });
        });
    }
    g.finish();

    drop(populated);

    let mut g = c.benchmark_group("history");
    configure(&mut g);
    for n in SCALES {
        let p = with_history(&rt, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("messages", count_label(n)), |b| {
            let me = principal(&p.server, "c0");
            b.iter(|| black_box(rt.block_on(p.server.history(&me, "c0")).expect("valid ID")));
        });
    }
    g.finish();
}

criterion_group!(benches, core_ops);
criterion_main!(benches);
