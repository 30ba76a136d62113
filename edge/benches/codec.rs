//! Criterion micro benchmarks of the WebSocket core's hot paths, from 16 B to 64 KiB:
//! frame parsing (with in-place unmasking and hand-off as `Bytes`), unmasking alone, UTF-8
//! validation and frame encoding as the server does it (header + payload gathered for TLS).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use wssedge_proto::ws::{
    apply_mask, frame, Event, MessageKind, OpCode, Payload, Session, SessionLimits, Utf8Validator,
};

mod common;
use common::{client_frame, text, MASK};

const SIZES: [usize; 5] = [16, 128, 1024, 16 * 1024, 64 * 1024];

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for size in SIZES {
        let wire = client_frame(OpCode::Binary, &vec![0x5a; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &wire, |b, wire| {
            let mut session = Session::new(SessionLimits::default());
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    session.receive(&mut buf);
                    match session.poll_event() {
                        Some(Event::Message(m)) => m.payload,
                        other => panic!("expected a message, got {other:?}"),
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in SIZES {
        let mut buf = vec![0x5a; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| apply_mask(std::hint::black_box(&mut buf), MASK, 1))
        });
    }
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in SIZES {
        let input = text(size);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            let mut v = Utf8Validator::new();
            b.iter(|| {
                v.feed(std::hint::black_box(input)).expect("valid text");
                v.finish().expect("complete text")
            })
        });
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in SIZES {
        let payload = Bytes::from(vec![0x5a; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut session = Session::new(SessionLimits::default());
            let mut staging = Vec::with_capacity(size + frame::MAX_HEADER_LEN);
            b.iter(|| {
                staging.clear();
                session.send(MessageKind::Binary, Payload::Single(payload.clone()));
                let f = session.poll_transmit().expect("a frame");
                f.append_to(&mut staging);
                staging.len()
            })
        });
    }
}

criterion_group!(benches, parse, unmask, utf8, encode);
criterion_main!(benches);
