//! One privacy-ledger charge: the budget check, the insert and the durable commit (an fsync of
//! the SQLite file) that must finish before noisy labels may leave the node.
//!
//! `cargo bench -p fd-client --bench ledger`

use criterion::{Criterion, criterion_group, criterion_main};
use fd_client::privacy::{Budget, Charge, PrivacyLedger, release_rho, release_sensitivity};

/// A round's release at the scale of the other benches: 1,000 queries x 10 classes.
const QUERIES: usize = 1_000;
const CLASSES: usize = 10;
/// Noise large enough that thousands of charges fit a finite budget: the bench measures the
/// charge, not a refusal.
const SIGMA: f64 = 1_000.0;

fn ledger(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let budget = Budget {
        epsilon: f64::INFINITY,
        delta: 1e-5,
    };
    let mut ledger =
        PrivacyLedger::open(&dir.path().join("ledger.sqlite"), budget, "data").expect("ledger");
    let sensitivity = release_sensitivity(QUERIES);
    let rho = release_rho(QUERIES * CLASSES, sensitivity, SIGMA).expect("rho");
    let mut round = 0u32;
    c.bench_function("ledger charge (durable commit)", |b| {
        b.iter(|| {
            round += 1;
            ledger
                .charge(Charge {
                    round,
                    queries: QUERIES as u32,
                    sigma: SIGMA,
                    sensitivity,
                    rho,
                    floor_rho: None,
                })
                .expect("charged")
        })
    });
}

criterion_group! {
    name = benches;
    // Every iteration is an fsync: a small sample keeps the run short.
    config = Criterion::default().sample_size(20);
    targets = ledger
}
criterion_main!(benches);
