//! How good can a private target be? Labels the synthetic public set (fd-sim's default split of
//! `--dataset synthetic --clients 10 --records-per-client 5000`, seed 1) with nearest-neighbour
//! teacher ensembles, adds each node's Gaussian noise for an epsilon-2 budget spread over the
//! released records, averages the nodes' vote-mass rows as the coordinator's mean does, and
//! prints the arg-max accuracy of the target before and after `distill::target::balance_classes`.
//! Nothing is trained, so a line takes a second: a quick way to compare teacher rules.
//!
//! ```sh
//! cargo run --release -p fd-sim --example dp_target -- [QUERIES] [SHARD_SIZES] [RADII]
//! cargo run --release -p fd-sim --example dp_target -- 400 1,20 4.5,4.75,5
//! ```
//!
//! The noise here comes from `rand_distr` (a measurement, not a release); node releases draw
//! theirs from OpenDP.

use fd_client::data::Standardiser;
use fd_client::data::matrix;
use fd_client::distill::device;
use fd_client::distill::target::balance_classes;
use fd_client::privacy::teachers::{EnsembleConfig, TeacherEnsemble, TeacherKind, Votes};
use fd_client::privacy::{Budget, Projection, rho_for};
use fd_protocol::SoftLabels;
use fd_sim::datasets::{self, SyntheticSpec};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

/// A comma-separated list of numbers, or `default` when the argument is absent.
fn list<T: std::str::FromStr + Clone>(
    arg: Option<&String>,
    default: &[T],
) -> anyhow::Result<Vec<T>> {
    match arg {
        None => Ok(default.to_vec()),
        Some(s) => s
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("cannot read {v:?} in {s:?} as a number"))
            })
            .collect(),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let queries = list(args.first(), &[400usize])?[0];
    let shard_sizes = list(args.get(1), &[1usize, 20])?;
    let radii = list(args.get(2), &[4.5f32, 4.75, 5.0])?;
    let spec = SyntheticSpec {
        records_per_client: 5000,
        ..SyntheticSpec::default()
    };
    let split = datasets::synthetic(&spec, 10, 0.5, &mut StdRng::seed_from_u64(1));
    let standardiser = Standardiser::fit(&split.public);
    let (w, c) = (split.public.width(), spec.classes);
    let public = standardiser.apply(&split.public);
    let m = queries.clamp(1, split.public.rows());
    let rho = rho_for(Budget {
        epsilon: 2.0,
        delta: 1e-5,
    })?;
    // Sensitivity sqrt(2) per record: rho = m / sigma^2 for the whole release.
    let sigma = (m as f64 / rho).sqrt();
    println!("{m} public records released, rho {rho:.5}, sigma {sigma:.2} per vote sum");
    let public = matrix(public, w)?;
    let nodes: Vec<(candle_core::Tensor, candle_core::Tensor, usize)> = split
        .clients
        .iter()
        .map(|t| -> anyhow::Result<_> {
            let x = matrix(standardiser.apply(t), w)?;
            let y = candle_core::Tensor::new(t.labels.as_slice(), &device())?;
            Ok((x, y, t.rows()))
        })
        .collect::<anyhow::Result<_>>()?;
    let noise = Normal::new(0.0, sigma)?;
    let accuracy = |t: &SoftLabels| {
        (0..m)
            .filter(|&q| t.top_class(q) as u32 == split.public_labels[q])
            .count() as f64
            / m as f64
    };
    let as_target = |v: Vec<f32>| SoftLabels {
        classes: c as u16,
        query_ids: (0..m as u32).collect(),
        probs: v,
    };
    for &size in &shard_sizes {
        for &r in &radii {
            // Every node's noiseless vote sums, from the ensemble nodes build.
            let votes: Vec<Vec<f64>> = nodes
                .iter()
                .map(|(x, y, n)| -> anyhow::Result<Vec<f64>> {
                    let config = EnsembleConfig {
                        kind: TeacherKind::Nearest,
                        teachers: (n / size).max(1),
                        radius: Some(f64::from(r)),
                        hidden: 0,
                        inputs: w,
                        classes: c,
                        learning_rate: 0.0,
                        batch_size: 1,
                        temperature: 1.0,
                        seed: 3,
                    };
                    let e = TeacherEnsemble::new(config, x.clone(), y.clone())?;
                    Ok(e.vote_sums(&public.narrow(0, 0, m)?, Votes::Hard)?)
                })
                .collect::<anyhow::Result<_>>()?;
            let clean: Vec<f32> = (0..m * c)
                .map(|i| votes.iter().map(|v| v[i]).sum::<f64>() as f32)
                .collect();
            let clean = as_target(clean);
            let reps = 5;
            let (mut raw, mut balanced) = (0.0, 0.0);
            let mut rng = StdRng::seed_from_u64(7);
            for _ in 0..reps {
                let rows: Vec<Vec<f32>> = votes
                    .iter()
                    .zip(&nodes)
                    .map(|(v, (_, _, n))| {
                        let noisy: Vec<f64> =
                            v.iter().map(|x| x + noise.sample(&mut rng)).collect();
                        Projection::vote_mass((n / size).max(1), c, sigma).apply(&noisy, c)
                    })
                    .collect();
                let mean = as_target(
                    (0..m * c)
                        .map(|i| rows.iter().map(|r| r[i]).sum::<f32>() / rows.len() as f32)
                        .collect(),
                );
                raw += accuracy(&mean) / reps as f64;
                balanced += accuracy(&balance_classes(&mean)) / reps as f64;
            }
            let mass = clean.probs.iter().map(|&v| f64::from(v)).sum::<f64>() / m as f64;
            println!(
                "{size:>3} records per teacher, radius {r:<5}: noiseless {:.3} (balanced {:.3}) | \
                 noisy {raw:.3} (balanced {balanced:.3}) | votes per query {mass:.0}",
                accuracy(&clean),
                accuracy(&balance_classes(&clean)),
            );
        }
    }
    Ok(())
}
