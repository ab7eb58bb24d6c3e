//! Fan-out cost per delivery: encode the message once into its final WebSocket frame and push
//! the shared `Bytes` into N subscriber queues, against encoding it once per subscriber.
//!
//! Run: `cargo bench -p firetower-gateway --bench fanout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use firetower_gateway::{Payload, QueueLimits, SendQueue, ServerFrame, Wire};

fn queues(n: usize) -> Vec<SendQueue> {
    let limits = QueueLimits {
        messages: 1_024,
        bytes: 1 << 20,
        drops_before_disconnect: u32::MAX,
        grace: Duration::from_secs(3600),
    };
    (0..n).map(|_| SendQueue::new(limits)).collect()
}

fn message() -> ServerFrame {
    ServerFrame::Message {
        topic: Arc::from("live.stream.42.chat"),
        payload: Payload::Json(Bytes::from_static(
            br#"{"user":"someone","text":"hello everybody, what a goal!","likes":12}"#,
        )),
        term: 3,
        seq: 123_456,
        position: None,
    }
}

fn fanout(c: &mut Criterion) {
    let frame = message();
    let mut group = c.benchmark_group("fanout");
    for n in [100usize, 1_000, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode_once", n), &n, |b, &n| {
            b.iter_batched(
                || queues(n),
                |qs| {
                    let now = Instant::now();
                    let bytes = Wire::WsJson.encode(&frame);
                    for q in &qs {
                        q.push_message(bytes.clone(), now);
                    }
                    qs
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("encode_per_subscriber", n), &n, |b, &n| {
            b.iter_batched(
                || queues(n),
                |qs| {
                    let now = Instant::now();
                    for q in &qs {
                        q.push_message(Wire::WsJson.encode(&frame), now);
                    }
                    qs
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let frame = message();
    let mut group = c.benchmark_group("encode");
    for wire in Wire::ALL {
        group.bench_function(format!("{wire:?}"), |b| b.iter(|| wire.encode(&frame)));
    }
    group.finish();
}

criterion_group!(benches, fanout, encode);
criterion_main!(benches);
