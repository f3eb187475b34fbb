//! Protobuf encode/decode of what crosses the wire: the `ChatMessage` the
//! server pushes (both stacks) and the `Request` envelope an AMQP client
//! publishes for a send, at text sizes from a chat line to 64 KiB (above
//! the server's default 4 KiB limit, to show how the cost scales).

use std::hint::black_box;
use std::time::Duration;

use chat_bench::fixtures::{chat_message, send_envelope, size_label};
use chat_core::Message;
use chat_proto::v1 as pb;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;

const SIZES: [usize; 4] = [64, 1024, 4096, 64 * 1024];

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    g
}

fn chat_message_codec(c: &mut Criterion) {
    let mut g = group(c, "proto_chat_message");
    for size in SIZES {
        let msg = chat_message(size);
        let bytes = msg.encode_to_vec();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let label = size_label(size);
        g.bench_with_input(BenchmarkId::new("encode", &label), &msg, |b, msg| {
            let mut buf = Vec::with_capacity(bytes.len());
            b.iter(|| {
                buf.clear();
                black_box(msg).encode(&mut buf).expect("capacity is enough");
                black_box(&buf);
            });
        });
        g.bench_with_input(BenchmarkId::new("decode", &label), &bytes, |b, bytes| {
            b.iter(|| pb::ChatMessage::decode(black_box(bytes.as_slice())).expect("valid"));
        });
        // What a client does with each delivery: decode, then validate into
        // the domain type (UUID parse, client ID checks).
        g.bench_with_input(
            BenchmarkId::new("decode_and_validate", &label),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let m = pb::ChatMessage::decode(black_box(bytes.as_slice())).expect("valid");
                    Message::from_proto(m).expect("valid message")
                });
            },
        );
    }
    g.finish();
}

fn request_codec(c: &mut Criterion) {
    let mut g = group(c, "proto_send_request");
    for size in SIZES {
        let req = send_envelope(size);
        let bytes = req.encode_to_vec();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let label = size_label(size);
        g.bench_with_input(BenchmarkId::new("encode", &label), &req, |b, req| {
            b.iter(|| black_box(req).encode_to_vec());
        });
        g.bench_with_input(BenchmarkId::new("decode", &label), &bytes, |b, bytes| {
            b.iter(|| pb::Request::decode(black_box(bytes.as_slice())).expect("valid"));
        });
    }
    g.finish();
}

criterion_group!(benches, chat_message_codec, request_codec);
criterion_main!(benches);
