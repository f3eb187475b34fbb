//! loadgen's own cost per message: building the probe text, reading it back
//! at the recipient and the exact accounting (flow bitsets, latency sample).
//! This is what loadgen adds on top of the client libraries it drives; the
//! figure shows that the instrument stays far below the per-message cost of
//! either chat (tens of µs of server time, see `round_trip` and loadgen's
//! CPU columns).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loadgen::probe::{self, Probe};
use loadgen::record::{ReceiverLog, SenderLog, Window};

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("loadgen_per_message");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    let window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };
    let mut sender = SenderLog::new(0);
    let mut receiver = ReceiverLog::new(1);
    let mut intended = 0u64;
    g.bench_function("send_and_receive_64B", |b| {
        b.iter(|| {
            let n = sender.next_number(1);
            intended += 1_000;
            let text = probe::encode(
                "lgbench01",
                Probe {
                    sender: 0,
                    n,
                    intended_ns: intended,
                },
                64,
            );
            sender.accepted(1, n, Duration::from_micros(300), true, true);
            let p = probe::decode("lgbench01", black_box(&text)).expect("a probe");
            black_box(receiver.shown(p, intended + 500_000, window));
        })
    });
    g.finish();
}

criterion_group!(benches, per_message);
criterion_main!(benches);
