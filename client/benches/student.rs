//! Students against the node's local teacher on the same batch: inference over a public set
//! of digits size (359 records of 8x8 pixels) and one training step (batch 32: forward,
//! cross-entropy, backward, fused AdamW) for the MLP student, the CNN student and the MLP
//! teacher of the default digits run.
//!
//! `cargo bench -p fd-client --bench student`

use candle_core::Tensor;
use candle_nn::{Optimizer, ParamsAdamW};
use criterion::{Criterion, criterion_group, criterion_main};
use fd_client::distill::{ConvLayers, FusedAdamW, Student, StudentConfig, device};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The digits public set of the default split (20% of 1,797 records).
const PUBLIC: usize = 359;
const BATCH: usize = 32;
const PIXELS: usize = 64;
const CLASSES: usize = 10;

/// The allocator the binaries use (see fd-sim's `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn models() -> Vec<(&'static str, StudentConfig)> {
    let mlp = |hidden: Vec<usize>| StudentConfig {
        inputs: PIXELS,
        classes: CLASSES,
        hidden,
        dropout: 0.0,
        conv: None,
    };
    let cnn = |channels: Vec<usize>| StudentConfig {
        conv: Some(ConvLayers {
            height: 8,
            width: 8,
            channels,
            kernel: 3,
        }),
        ..mlp(Vec::new())
    };
    vec![
        ("student mlp[128]", mlp(vec![128])),
        ("student cnn[8,16]", cnn(vec![8, 16])),
        ("student cnn[16,32]", cnn(vec![16, 32])),
        ("teacher mlp[512,256]", mlp(vec![512, 256])),
    ]
}

fn random(rows: usize, rng: &mut StdRng) -> Tensor {
    let values: Vec<f32> = (0..rows * PIXELS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(values, (rows, PIXELS), &device()).expect("a batch")
}

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
