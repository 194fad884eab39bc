//! Students against the node's local teacher on the same batch: inference over a public set
//! of digits size (359 records of 8x8 pixels) and one training step (batch 32: forward,
//! cross-entropy, backward, fused AdamW) for the MLP student, the CNN student and the MLP
//! teacher of the default digits run.
//!
//! `cargo bench -p fd-client --bench student`

use candle_core::Tensor;
use candle_nn::{Optimizer, ParamsAdamW};
use criterion::{Criterion, criterion_group, criterion_main};
use fd_client::distill::{FusedAdamW, Student, device};
use rand::{SeedableRng, rngs::StdRng};

mod common;
use common::{BATCH, CLASSES, PUBLIC, models, random};

/// The allocator the binaries use (see fd-sim's `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn inference(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let public = random(PUBLIC, &mut rng);
    let mut group = c.benchmark_group("inference over 359 records");
    for (name, config) in models() {
        let net = Student::new(config, 1).expect("a model");
        group.bench_function(name, |b| {
            b.iter(|| net.probabilities(&public).expect("probabilities"))
        });
    }
    group.finish();
}

fn training(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let x = random(BATCH, &mut rng);
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % CLASSES as u32).collect();
    let y = Tensor::new(labels.as_slice(), &device()).expect("labels");
    let mut group = c.benchmark_group("train step, batch 32");
    for (name, config) in models() {
        let net = Student::new(config, 1).expect("a model");
        let mut optimiser = FusedAdamW::new(net.vars(), ParamsAdamW::default()).expect("adamw");
        group.bench_function(name, |b| {
            b.iter(|| {
                let logits = net.forward(&x).expect("forward");
                let loss = candle_nn::loss::cross_entropy(&logits, &y).expect("loss");
                optimiser.backward_step(&loss).expect("step");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, inference, training);
criterion_main!(benches);
