//! Aggregation of one round at federation scale: 1,000 nodes x 1,000 queries x 10 classes
//! (40 MB of soft labels), for each strategy, against a plain copy of the same bytes.
//!
//! `cargo bench -p fd-coordinator --bench aggregate`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fd_coordinator::aggregate::{AggregationConfig, AggregatorKind, Input};
use fd_protocol::SoftLabels;

/// The scale: a thousand nodes answering a thousand queries over ten classes.
const NODES: usize = 1_000;
const QUERIES: usize = 1_000;
const CLASSES: usize = 10;

/// Soft labels that differ per node: a peaked row whose peak depends on node and query, from
/// a fixed integer mix (no randomness, so every run aggregates the same bytes).
fn labels(node: usize) -> SoftLabels {
    let mut probs = Vec::with_capacity(QUERIES * CLASSES);
    for q in 0..QUERIES {
        let peak = (q * 7 + node * 13) % CLASSES;
        let sharp = 0.5 + ((q + node) % 5) as f32 * 0.1;
        let rest = (1.0 - sharp) / (CLASSES - 1) as f32;
        probs.extend((0..CLASSES).map(|c| if c == peak { sharp } else { rest }));
    }
    SoftLabels {
        classes: CLASSES as u16,
        query_ids: (0..QUERIES as u32).collect(),
        probs,
    }
}

fn aggregate(c: &mut Criterion) {
    let names: Vec<String> = (0..NODES).map(|i| format!("node-{i:05}")).collect();
    let all: Vec<SoftLabels> = (0..NODES).map(labels).collect();
    let inputs: Vec<Input<'_>> = names
        .iter()
        .zip(&all)
        .map(|(node, labels)| Input { node, labels })
        .collect();
    let bytes = (NODES * QUERIES * CLASSES * 4) as u64;
    let mut group = c.benchmark_group("aggregate 1000 nodes x 1000 queries x 10 classes");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    // The floor: reading every input once and writing it elsewhere.
    group.bench_function("plain copy", |b| {
        b.iter(|| {
            let copied: Vec<Vec<f32>> = all.iter().map(|l| l.probs.clone()).collect();
            black_box(copied)
        })
    });
    for kind in AggregatorKind::ALL {
        let config = AggregationConfig {
            strategy: kind,
            ..AggregationConfig::default()
        };
        group.bench_function(kind.name(), |b| {
            // A fresh aggregator per iteration: reputations start from the same state.
            b.iter_batched(
                || config.build(),
                |mut aggregator| black_box(aggregator.aggregate(&inputs)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
