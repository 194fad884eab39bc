//! A report table of the digits students against the node's local teacher: parameters,
//! multiply-adds per record, inference time per record over a public set of digits size, the
//! speed-up over the teacher, and one training step (batch 32).
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p fd-client --bench models` (one thread, as fd-sim
//! measures the speed-up).
//!
//! Student and teacher passes alternate, so a slow spell of a shared machine hits both; the
//! speed-up is the median of the per-pass ratios, times are medians.

use std::time::Instant;

use candle_core::Tensor;
use candle_nn::{Optimizer, ParamsAdamW};
use fd_client::distill::{FusedAdamW, Student, StudentConfig, device};
use rand::{SeedableRng, rngs::StdRng};

mod common;
use common::{BATCH, CLASSES, PIXELS, PUBLIC, models, random};

/// The allocator the binaries use (see fd-sim's `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Alternating passes per model (after one warm-up pass each).
const PASSES: usize = 41;
/// Timed training steps per model (after ten warm-up steps).
const STEPS: usize = 101;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn seconds(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// Median seconds of one training step (forward, cross-entropy, backward, fused AdamW).
fn train_step(config: &StudentConfig, x: &Tensor, y: &Tensor) -> f64 {
    let net = Student::new(config.clone(), 1).expect("a model");
    let mut optimiser = FusedAdamW::new(net.vars(), ParamsAdamW::default()).expect("adamw");
    let mut step = || {
        let logits = net.forward(x).expect("forward");
        let loss = candle_nn::loss::cross_entropy(&logits, y).expect("loss");
        optimiser.backward_step(&loss).expect("step");
    };
    for _ in 0..10 {
        step();
    }
    median((0..STEPS).map(|_| seconds(&mut step)).collect())
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let public = random(PUBLIC, &mut rng);
    let x = random(BATCH, &mut rng);
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % CLASSES as u32).collect();
    let y = Tensor::new(labels.as_slice(), &device()).expect("labels");

    let teacher = Student::new(common::teacher(), 1).expect("the teacher");
    let infer = |net: &Student| {
        seconds(|| {
            net.probabilities(&public).expect("probabilities");
        })
    };
    println!(
        "{PUBLIC} records of {PIXELS} pixels, {} thread(s); times are medians, speed-up the median \
         of {PASSES} alternating passes' ratios\n",
        candle_core::utils::get_num_threads()
    );
    println!(
        "| model | parameters | multiply-adds / record | inference µs / record | speed-up over \
         the teacher | train step, batch {BATCH} (µs) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, config) in models() {
        let net = Student::new(config.clone(), 1).expect("a model");
        infer(&net);
        infer(&teacher);
        let (mut times, mut ratios) = (Vec::new(), Vec::new());
        for _ in 0..PASSES {
            let s = infer(&net);
            let t = infer(&teacher);
            times.push(s);
            ratios.push(t / s);
        }
        println!(
            "| {name} | {} | {} | {:.2} | {:.2} | {:.0} |",
            net.parameters(),
            config.multiply_adds(),
            median(times) / PUBLIC as f64 * 1e6,
            median(ratios),
            train_step(&config, &x, &y) * 1e6,
        );
    }
}
