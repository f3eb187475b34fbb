//! One message A -> server -> B, and a burst of messages, over each stack
//! with real sockets: the gRPC server on a loopback port and the AMQP
//! server on the broker at `AMQP_URL`, both in this process, driven by the
//! real `ChatClient` adapters (`GrpcClient`, `AmqpClient`).
//!
//! * `round_trip/<stack>/<size>`: the sender's `send` until accepted (logged
//!   by the server), then the recipient receiving and acknowledging it.
//! * `burst/<stack>/1000x64B`: 1 000 sends with 256 in flight, until the
//!   recipient has received all of them; throughput in messages per second.
//!
//! Without a broker the AMQP benches are skipped with one line on stderr;
//! the gRPC ones still run. A custom `main` (instead of `criterion_main!`)
//! so that the servers are stopped and the broker namespace deleted after
//! the last bench.

use std::path::Path;
use std::time::Duration;

use chat_amqp::AmqpClient;
use chat_bench::fixtures::{size_label, text};
use chat_bench::stacks::{AmqpStack, GrpcStack, Pair, amqp_url, broker_answers};
use chat_bench::{runtime, time_async};
use chat_core::ChatClient;
use chat_grpc::GrpcClient;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;

const SCRATCH: &str = env!("CARGO_TARGET_TMPDIR");

/// Messages in one burst.
const BURST: usize = 1_000;
/// Text sizes for the round trip: a chat line and the default size limit.
const ROUND_TRIP_SIZES: [usize; 2] = [64, 4096];

fn round_trips<C: ChatClient>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    stack: &str,
    pair: &mut Pair<C>,
) {
    for size in ROUND_TRIP_SIZES {
        let body = text(size);
        g.bench_function(BenchmarkId::new(stack, size_label(size)), |b| {
            b.iter_custom(|iters| time_async(rt, iters, async |_| pair.round_trip(&body).await));
        });
    }
}

fn burst<C: ChatClient>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    stack: &str,
    pair: &mut Pair<C>,
) {
    let body = text(64);
    let id = BenchmarkId::new(stack, format!("{BURST}x64B"));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| time_async(rt, iters, async |_| pair.burst(BURST, &body).await));
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = runtime();
    std::fs::create_dir_all(SCRATCH).expect("cannot create the scratch directory");
    let scratch = Path::new(SCRATCH);

    let grpc = rt.block_on(GrpcStack::start(scratch));
    let mut grpc_pair = rt
        .block_on(Pair::<GrpcClient>::connect(&grpc.config(), "alice", "bob"))
        .expect("cannot connect the gRPC bench clients");

    let url = amqp_url();
    let mut amqp = match rt.block_on(broker_answers(&url)) {
        Ok(()) => {
            let stack = rt.block_on(AmqpStack::start(&url, scratch, &["alice", "bob"]));
            let pair = rt
                .block_on(Pair::<AmqpClient>::connect(&stack.config, "alice", "bob"))
                .expect("cannot connect the AMQP bench clients");
            Some((stack, pair))
        }
        Err(why) => {
            eprintln!(
                "AMQP benches skipped: no broker answers at {} ({why}); start RabbitMQ or set AMQP_URL",
                chat_amqp::redact(&url)
            );
            None
        }
    };

    let mut g = c.benchmark_group("round_trip");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    round_trips(&mut g, &rt, "grpc", &mut grpc_pair);
    if let Some((_, pair)) = &mut amqp {
        round_trips(&mut g, &rt, "amqp", pair);
    }
    g.finish();

    let mut g = c.benchmark_group("burst");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .sample_size(10)
        .throughput(Throughput::Elements(BURST as u64));
    burst(&mut g, &rt, "grpc", &mut grpc_pair);
    if let Some((_, pair)) = &mut amqp {
        burst(&mut g, &rt, "amqp", pair);
    }
    g.finish();

    rt.block_on(async {
        grpc_pair.close().await;
        grpc.stop().await;
        if let Some((stack, pair)) = amqp {
            pair.close().await;
            stack.stop().await;
        }
    });
    c.final_summary();
}
