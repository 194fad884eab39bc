//! Encoding and decoding one contribution of 1,000 queries x 10 classes, against a plain copy
//! of the frame's bytes.
//!
//! `cargo bench -p fd-protocol --bench codec`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fd_protocol::codec::{decode_frame, encode_frame};
use fd_protocol::{Contribution, DEFAULT_MAX_FRAME_LEN, Message, SoftLabels};

/// A round's answer at the scale the issue names: 1,000 queried records x 10 classes.
const QUERIES: usize = 1_000;
const CLASSES: usize = 10;

fn contribution() -> Message {
    let probs = (0..QUERIES * CLASSES)
        .map(|i| {
            if i % CLASSES == (i / CLASSES) % CLASSES {
                0.91
            } else {
                0.01
            }
        })
        .collect();
    Message::Contribution(Contribution {
        round: 3,
        labels: SoftLabels {
            classes: CLASSES as u16,
            query_ids: (0..QUERIES as u32).collect(),
            probs,
        },
        receipt: None,
    })
}

fn codec(c: &mut Criterion) {
    let message = contribution();
    let frame = encode_frame(&message, DEFAULT_MAX_FRAME_LEN).expect("fits");
    let mut group = c.benchmark_group("contribution 1000 x 10");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("plain copy", |b| b.iter(|| black_box(frame.to_vec())));
    group.bench_function("encode", |b| {
        b.iter(|| encode_frame(black_box(&message), DEFAULT_MAX_FRAME_LEN))
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
