//! Helpers shared by the benchmarks in `benches/`.
//!
//! The benches measure the very code that users run (the same
//! `ChatServer`, the same `ChatClient` adapters, the same files on disk),
//! so the setup is real too: a data directory on the machine's disk, a
//! server bound to a loopback socket, a broker namespace of its own. That
//! setup is written once here so that each bench file only says *what* it
//! times, and so that setup stays cheap (concurrent requests share the
//! journal's group commit) and outside the timed regions.
//!
//! * [`fixtures`]: texts, requests, servers on disk, pre-populated state.
//! * [`stacks`]: each transport's server started in-process, a sender and a
//!   joined recipient, and the two timed operations (one round trip, one
//!   burst).

pub mod fixtures;
pub mod stacks;

use std::time::{Duration, Instant};

/// A multi-threaded runtime with two workers (the machine has two cores):
/// server tasks and clients run on it as they would in two processes.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime")
}

/// Runs `op` `iters` times back to back on `rt` and returns the time it
/// took; for criterion's `iter_custom`, so that one `block_on` covers a
/// whole sample instead of adding its own cost to every iteration.
pub fn time_async<F>(rt: &tokio::runtime::Runtime, iters: u64, mut op: F) -> Duration
where
    F: AsyncFnMut(u64),
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            op(i).await;
        }
        start.elapsed()
    })
}
