//! One simulated federation: the real coordinator and N real clients in one process, talking
//! over loopback QUIC with mutual TLS, plus the local-only and centralised baselines.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use fd_certs::pki::Ca;
use fd_certs::tls::TlsIdentity;
use fd_client::compression::{StudentMetrics, measure, reference};
use fd_client::config::{PrivacyConfig, PrivacyMode};
use fd_client::node::{build_labeller, prepare, private_part, student_training};
use fd_client::privacy::{MECHANISM, PRIVACY_UNIT};
use fd_client::session::{ContributionHook, SessionPlan, run_session_with_hook};
use fd_client::train::{ImageShape, Learner, TrainConfig, train_local_only};
use fd_coordinator::FederationConfig;
use fd_coordinator::aggregate::{AggregationConfig, AggregatorKind};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::datasets::{self, DatasetKind, SyntheticSpec};
use crate::faults::{ClientFault, FaultConfig, FaultHook};
use crate::partition;
pub use crate::students::StudentMix;

/// What to simulate.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    /// Built-in dataset.
    pub dataset: DatasetKind,
    /// Number of clients.
    pub clients: usize,
    /// Number of rounds.
    pub rounds: u32,
    /// Dirichlet concentration of the label skew (smaller: more skewed).
    pub beta: f64,
    /// Seed of the split, the partition and every model.
    pub seed: u64,
    /// Fraction of records in the shared test set.
    pub test_fraction: f64,
    /// Fraction of records in the public reference set.
    pub public_fraction: f64,
    /// How every client trains (its seed is offset per client).
    pub training: TrainConfig,
    /// Which student each client trains (overrides `training.architecture` per client).
    pub students: StudentMix,
    /// Shape of the synthetic dataset (used with `--dataset synthetic`).
    pub synthetic: SyntheticSpec,
    /// Every client's privacy settings (mode, budget, shards).
    pub privacy: PrivacyConfig,
    /// Public records asked per round; `None`: all of them every round without privacy, and
    /// with privacy [`private_queries`] records in all, each once, spread over the rounds: a
    /// record labelled once stays in the target for free, while every release costs budget
    /// and the noise grows with the square root of the records released.
    pub queries_per_round: Option<u32>,
    /// How the coordinator aggregates.
    pub aggregator: AggregatorKind,
    /// Byzantine, dropping and straggling clients.
    pub faults: FaultConfig,
    /// The coordinator's round deadline in seconds; `None`: 600, or 10 with stragglers.
    pub round_timeout_secs: Option<u64>,
}

/// Most public records a private run releases by default. Measured on the synthetic data (10
/// nodes of 5000 records, epsilon 2, one teacher per record, class-balanced targets, one run
/// each): releasing 100, 200, 300, 400 and 500 records gave federated accuracies of 0.791,
/// 0.813, 0.825, 0.832 and 0.825.
pub const DP_QUERIES: usize = 400;

/// Records-squared per unit of rho behind one released record in [`private_queries`].
pub const RECORDS_SQUARED_PER_QUERY: f64 = 6250.0;

/// Public records a private run releases by default (each once, over the whole run).
///
/// A release of `m` records spends the budget's `rho` as noise `sigma = sqrt(m / rho)` on
/// every vote sum, while a node's votes for a query grow with its record count `n`: the
/// signal-to-noise ratio goes as `n * sqrt(rho / m)`, so keeping it fixed means
/// `m ~ rho * n^2`. The constant makes the synthetic run (median `n` = 5000, epsilon 2,
/// `rho` = 0.108) release the [`DP_QUERIES`] that worked best there; on digits (median
/// `n` about 110) it gives the floor of one record per round, and releasing 20, 100 and 359
/// records there (epsilon 2) gave 0.680, 0.619 and 0.533: with a hundred records a node's
/// votes hardly clear the noise, and each extra record released only adds noise.
///
/// `m` is clamped to `[rounds, min(public_rows, DP_QUERIES)]`; with no noise (`rho`
/// infinite) it is the upper end. Record counts are public under replace-one adjacency, and
/// `rho` is the budget's, so the plan reveals nothing private.
pub fn private_queries(public_rows: usize, rounds: u32, median_records: usize, rho: f64) -> u32 {
    let most = public_rows.clamp(1, DP_QUERIES) as f64;
    let fewest = f64::from(rounds.max(1)).min(most);
    let wanted = rho * (median_records as f64).powi(2) / RECORDS_SQUARED_PER_QUERY;
    let m = if wanted.is_nan() {
        most
    } else {
        wanted.clamp(fewest, most)
    };
    m.round() as u32
}

/// The privacy of a simulation's releases, as the JSON reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PrivacySummary {
    /// `"none"` or `"shards"`.
    pub mode: String,
    /// The privacy unit: `"record"` (one record of one node's private data) or `"none"`.
    pub unit: String,
    /// Every node's epsilon budget (`None`: no limit).
    pub epsilon: Option<f64>,
    /// The budget's delta.
    pub delta: Option<f64>,
    /// The mechanism.
    pub mechanism: String,
    /// A sentence for people.
    pub statement: String,
}

impl SimConfig {
    /// The issue's default setup for a dataset: 10 clients, 20 rounds, Dirichlet(0.5),
    /// 20% test, 20% public, 60% private.
    pub fn new(dataset: DatasetKind) -> SimConfig {
        let images = dataset == DatasetKind::Digits;
        SimConfig {
            dataset,
            clients: 10,
            rounds: 20,
            beta: 0.5,
            seed: 1,
            test_fraction: 0.2,
            public_fraction: 0.2,
            training: TrainConfig {
                temperature: if images { 2.0 } else { 4.0 },
                image: images.then_some(ImageShape {
                    height: 8,
                    width: 8,
                }),
                ..TrainConfig::default()
            },
            students: StudentMix::Mlp,
            synthetic: SyntheticSpec::default(),
            privacy: PrivacyConfig::default(),
            queries_per_round: None,
            aggregator: AggregatorKind::default(),
            faults: FaultConfig::default(),
            round_timeout_secs: None,
        }
    }
}

/// One client's results.
#[derive(Debug, Clone, Serialize)]
pub struct ClientResult {
    /// Node name (from its certificate).
    pub node: String,
    /// Private records.
    pub records: usize,
    /// Test accuracy of a student trained on its private records alone.
    pub local_only_acc: f64,
    /// Test accuracy of its student after the federation.
    pub federated_acc: f64,
    /// Test accuracy after each round.
    pub round_acc: Vec<f64>,
    /// Its student against its teacher (shard ensemble in private mode, the local teacher
    /// otherwise): macro-F1 on the test set, architecture, parameters, compression ratio,
    /// measured speed-up (median of several passes over the public set, one client at a time
    /// after the federation) and CKA. Flattened: `clients[i].compression_ratio` and so on.
    #[serde(flatten)]
    pub metrics: StudentMetrics,
    /// Rounds it contributed labels to.
    pub contributions: u32,
    /// Epsilon this client spent (private mode with a finite budget).
    pub epsilon_spent: Option<f64>,
    /// Noise standard deviation per release (private mode).
    pub sigma: Option<f64>,
    /// Teachers in its ensemble (private mode).
    pub teachers: Option<usize>,
    /// Why it stopped contributing early, if it did.
    pub left: Option<String>,
    /// Whether it was a byzantine client (its accuracy is left out of the means).
    pub byzantine: bool,
    /// The fault injected into it, if any (e.g. `byzantine flip`, `straggler`, `drops in round 4`).
    pub fault: Option<String>,
    /// Its share of the aggregate in the last round the coordinator accepted it in.
    pub weight: Option<f64>,
    /// Its reputation at the coordinator after the last round (reputation-keeping strategies).
    pub reputation: Option<f64>,
    /// Contributions the coordinator refused (late, duplicate, malformed).
    pub refused: u32,
}

/// The whole simulation's results (written as JSON by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Dataset name.
    pub dataset: String,
    /// Privacy of the released labels.
    pub privacy: PrivacySummary,
    /// The setup.
    pub config: SimConfig,
    /// Test accuracy of one student trained on all clients' private records.
    pub centralized_acc: f64,
    /// Mean over clients of the local-only accuracy.
    pub local_only_mean_acc: f64,
    /// Mean over honest (non-byzantine) clients of the federated accuracy.
    pub federated_mean_acc: f64,
    /// The coordinator's aggregation strategy.
    pub aggregator: String,
    /// Rounds the coordinator completed.
    pub rounds_completed: u32,
    /// Contributions accepted in each round.
    pub accepted_per_round: Vec<u32>,
    /// Mean final weight of the honest clients the coordinator weighed.
    pub honest_mean_weight: Option<f64>,
    /// Mean final weight of the byzantine clients.
    pub byzantine_mean_weight: Option<f64>,
    /// Mean federated test accuracy after each round.
    pub rounds: Vec<f64>,
    /// Accuracy of the final global target's arg-max on the public records' true labels
    /// (a diagnostic only the simulator can compute).
    pub target_acc: f64,
    /// The same after `labeller::balance_classes`, which private students apply before they
    /// learn from the target (`None` when they do not).
    pub balanced_target_acc: Option<f64>,
    /// Per-client results.
    pub clients: Vec<ClientResult>,
    /// Records in the shared test set.
    pub test_records: usize,
    /// Records in the public set.
    pub public_records: usize,
    /// Bytes all clients sent to the coordinator (frames, as counted by the coordinator).
    pub bytes_up: u64,
    /// Bytes the coordinator sent to all clients.
    pub bytes_down: u64,
    /// Wall time of the federation (connections, rounds, final distillation).
    pub wall_seconds: f64,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Runs the federation and the baselines.
pub async fn run(config: &SimConfig) -> anyhow::Result<SimResult> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let (name, classes, split) = match datasets::load(config.dataset) {
        Some(data) => {
            let split = partition::split(
                &data.table,
                data.classes,
                config.clients,
                config.beta,
                config.test_fraction,
                config.public_fraction,
                &mut rng,
            );
            (data.name, data.classes, split)
        }
        None => {
            let spec = &config.synthetic;
            let split = datasets::synthetic(spec, config.clients, config.beta, &mut rng);
            ("synthetic".to_owned(), spec.classes, split)
        }
    };

    let private = config.privacy.mode == PrivacyMode::Shards && config.privacy.epsilon.is_finite();

    // Certificates for everyone, in memory: a throw-away federation CA.
    let ca = Ca::generate("fd-sim")?;
    let server = ca.issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])?;
    let server_tls = TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
    };
    let endpoint = fd_certs::transport::server_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        fd_certs::tls::server_config(&server_tls)?,
    )?;
    let addr = endpoint.local_addr()?;
    let queries_per_round = match (config.queries_per_round, config.privacy.mode) {
        (Some(q), _) => q,
        (None, PrivacyMode::None) => 0,
        (None, PrivacyMode::Shards) => {
            let mut sizes: Vec<usize> = split.clients.iter().map(|t| t.rows()).collect();
            sizes.sort_unstable();
            let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
            let rho = fd_client::privacy::rho_for(fd_client::privacy::Budget {
                epsilon: config.privacy.epsilon,
                delta: config.privacy.delta,
            })
            .map_err(|e| anyhow::anyhow!("privacy budget: {e}"))?;
            private_queries(split.public.rows(), config.rounds, median, rho)
                .div_ceil(config.rounds.max(1))
        }
    };
    let federation = FederationConfig {
        name: format!("fd-sim-{name}"),
        listen: addr,
        ca: "<in memory>".into(),
        cert: "<in memory>".into(),
        key: "<in memory>".into(),
        nodes: config.clients,
        rounds: config.rounds,
        public_records: split.public.rows() as u32,
        classes: classes as u16,
        queries_per_round,
        join_timeout_secs: 120,
        round_timeout_secs: config.round_timeout_secs.unwrap_or(
            if config.faults.stragglers > 0.0 {
                10
            } else {
                600
            },
        ),
        require_privacy: private,
        summary_json: None,
        quorum: 1,
        aggregation: AggregationConfig {
            strategy: config.aggregator,
            ..AggregationConfig::default()
        },
        state_dir: None,
    };
    config
        .faults
        .validate()
        .map_err(|m| anyhow::anyhow!("fault injection: {m}"))?;
    let mut faults = config.faults;
    if faults.straggler_delay_secs <= 0.0 {
        // Late enough to miss every deadline, soon enough to be back for the next round.
        faults.straggler_delay_secs = federation.round_timeout_secs as f64 * 1.5;
    }
    let fault_plan = faults.plan(config.clients, config.rounds, config.seed);
    federation
        .validate()
        .map_err(|m| anyhow::anyhow!("simulated federation: {m}"))?;

    let ledgers = tempfile::tempdir().context("temporary directory for privacy ledgers")?;
    let started = Instant::now();
    let coordinator = tokio::spawn(fd_coordinator::run(federation, endpoint));
    let mut sessions = Vec::new();
    let mut tests = Vec::new();
    for (i, private) in split.clients.iter().enumerate() {
        let name = format!("client-{i:02}");
        let id = ca.issue_node(&name)?;
        let prepared = prepare(
            private,
            &split.test,
            &split.public,
            classes,
            "label",
            &config.training,
        )?;
        tests.push(prepared.holdout.clone());
        let training = TrainConfig {
            seed: config.seed.wrapping_mul(1000).wrapping_add(i as u64),
            architecture: config.students.architecture(i),
            ..student_training(&config.training, config.privacy.mode)
        };
        let labeller = build_labeller(
            &config.privacy,
            &prepared.train,
            &prepared.public,
            classes,
            &training,
            &ledgers.path().join(format!("{name}.sqlite")),
        )?;
        let learner = Learner::new(training, classes, prepared.train, prepared.public)?;
        let plan = SessionPlan {
            coordinator: addr,
            server_name: "localhost".into(),
            tls: TlsIdentity {
                ca_pem: ca.cert_pem(),
                cert_pem: id.cert_pem,
                key_pem: id.key_pem,
            },
            private_records: private.rows() as u32,
            holdout: prepared.holdout,
            max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
        };
        let fault = fault_plan.faults.get(i).copied().flatten();
        let hook = fault.map(|f| {
            Box::new(FaultHook::new(f, config.seed.wrapping_add(i as u64)))
                as Box<dyn ContributionHook>
        });
        sessions.push(tokio::spawn(run_session_with_hook(
            plan, learner, labeller, hook,
        )));
    }
    let mut outcomes = Vec::new();
    for (i, s) in sessions.into_iter().enumerate() {
        outcomes.push(
            s.await
                .context("client task panicked")?
                .with_context(|| format!("client-{i:02}"))?,
        );
    }
    let summary = coordinator.await.context("coordinator task panicked")??;
    let wall_seconds = started.elapsed().as_secs_f64();

    // Students against their teachers, one client at a time and before the baselines start,
    // so the measured inference times do not compete with other work of this process.
    let mut metrics = Vec::new();
    for (o, test) in outcomes.iter().zip(&tests) {
        let learner = &o.learner;
        metrics.push(measure(
            learner.student(),
            reference(&o.labeller, learner),
            test,
            learner.public(),
        )?);
    }

    // Baselines, each on its own blocking thread: local-only per client, and centralised.
    let steps =
        config.training.local_steps + config.rounds as usize * config.training.steps_per_round;
    let mut baselines = Vec::new();
    for (i, private) in split.clients.iter().enumerate() {
        baselines.push(baseline(
            config,
            private,
            &split,
            classes,
            steps,
            config.seed.wrapping_mul(1000).wrapping_add(i as u64),
            config.students.architecture(i),
        )?);
    }
    let all_private = fd_client::data::Table {
        columns: split.public.columns.clone(),
        features: split
            .clients
            .iter()
            .flat_map(|t| t.features.iter().copied())
            .collect(),
        labels: split
            .clients
            .iter()
            .flat_map(|t| t.labels.iter().copied())
            .collect(),
    };
    // The centralised bound uses the configured architecture of client 0.
    let centralised = baseline(
        config,
        &all_private,
        &split,
        classes,
        steps,
        config.seed,
        config.students.architecture(0),
    )?;
    let mut local = Vec::new();
    for b in baselines {
        local.push(b.await??);
    }
    let centralized_acc = centralised.await??;

    // A ledger that cannot be read is an error, not a missing number.
    let spent = outcomes
        .iter()
        .map(|o| o.labeller.spent())
        .collect::<Result<Vec<_>, _>>()
        .context("reading a client's privacy ledger")?;
    let clients: Vec<ClientResult> = outcomes
        .iter()
        .zip(&split.clients)
        .zip(local)
        .zip(spent)
        .zip(&fault_plan.faults)
        .map(
            |((((o, private), local_only_acc), spent), fault)| ClientResult {
                byzantine: matches!(fault, Some(ClientFault::Byzantine(_))),
                fault: fault.map(|f| match f {
                    ClientFault::Byzantine(a) => format!("byzantine {a:?}").to_lowercase(),
                    ClientFault::Straggler(_) => "straggler".into(),
                    ClientFault::Drops { round } => format!("drops in round {round}"),
                }),
                weight: summary
                    .nodes
                    .iter()
                    .find(|n| n.node == o.node)
                    .and_then(|n| n.weight),
                reputation: summary
                    .nodes
                    .iter()
                    .find(|n| n.node == o.node)
                    .and_then(|n| n.reputation),
                refused: summary
                    .nodes
                    .iter()
                    .find(|n| n.node == o.node)
                    .map_or(0, |n| n.refused),
                epsilon_spent: spent.map(|(e, _)| e),
                sigma: private_part(&o.labeller).and_then(|p| p.sigma),
                teachers: private_part(&o.labeller).map(|p| p.ensemble.config().teachers),
                left: o.left.clone(),
                contributions: o.rounds,
                node: o.node.clone(),
                records: private.rows(),
                local_only_acc,
                federated_acc: o.final_accuracy,
                round_acc: o.round_accuracy.clone(),
                metrics: StudentMetrics::default(),
            },
        )
        .collect();
    let mut clients = clients;
    for (client, measured) in clients.iter_mut().zip(metrics) {
        client.metrics = measured;
    }
    let rounds = (0..config.rounds as usize)
        .map(|r| {
            mean(
                clients
                    .iter()
                    .filter(|c| !c.byzantine)
                    .filter_map(|c| c.round_acc.get(r).copied()),
            )
        })
        .collect();
    let mean_weight = |byzantine: bool| {
        let w: Vec<f64> = clients
            .iter()
            .filter(|c| c.byzantine == byzantine)
            .filter_map(|c| c.weight)
            .collect();
        (!w.is_empty()).then(|| mean(w.into_iter()))
    };
    let arg_max_acc = |target: &fd_protocol::SoftLabels| {
        mean((0..target.len()).map(|i| {
            let row = target.row(i);
            let best = (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            f64::from(u8::from(
                best as u32 == split.public_labels[target.query_ids[i] as usize],
            ))
        }))
    };
    let target_acc = arg_max_acc(&summary.target);
    let balanced_target_acc = config
        .privacy
        .balances_classes()
        .then(|| arg_max_acc(&fd_client::labeller::balance_classes(&summary.target)));
    Ok(SimResult {
        target_acc,
        balanced_target_acc,
        dataset: name,
        privacy: privacy_summary(config, outcomes.first().map(|o| o.labeller.statement())),
        config: config.clone(),
        centralized_acc,
        local_only_mean_acc: mean(
            clients
                .iter()
                .filter(|c| !c.byzantine)
                .map(|c| c.local_only_acc),
        ),
        federated_mean_acc: mean(
            clients
                .iter()
                .filter(|c| !c.byzantine)
                .map(|c| c.federated_acc),
        ),
        aggregator: summary.aggregator.clone(),
        rounds_completed: summary.rounds,
        accepted_per_round: summary.accepted_per_round.clone(),
        honest_mean_weight: mean_weight(false),
        byzantine_mean_weight: mean_weight(true),
        rounds,
        test_records: split.test.rows(),
        public_records: split.public.rows(),
        bytes_up: summary.bytes_up,
        bytes_down: summary.bytes_down,
        wall_seconds,
        clients,
    })
}

fn privacy_summary(config: &SimConfig, statement: Option<String>) -> PrivacySummary {
    let p = &config.privacy;
    let statement = statement.unwrap_or_else(|| fd_client::node::NON_PRIVATE.into());
    match p.mode {
        PrivacyMode::None => PrivacySummary {
            mode: "none".into(),
            unit: "none".into(),
            epsilon: None,
            delta: None,
            mechanism: "none (non-private baseline)".into(),
            statement,
        },
        PrivacyMode::Shards => PrivacySummary {
            mode: "shards".into(),
            unit: if p.epsilon.is_finite() {
                PRIVACY_UNIT
            } else {
                "none"
            }
            .into(),
            epsilon: p.epsilon.is_finite().then_some(p.epsilon),
            delta: Some(p.delta),
            mechanism: MECHANISM.into(),
            statement,
        },
    }
}

/// Starts training a student on `private` alone; resolves to its test accuracy.
fn baseline(
    config: &SimConfig,
    private: &fd_client::data::Table,
    split: &partition::Split,
    classes: usize,
    steps: usize,
    seed: u64,
    architecture: fd_client::train::Architecture,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<f64>>> {
    let prepared = prepare(
        private,
        &split.test,
        &split.public,
        classes,
        "label",
        &config.training,
    )?;
    let training = TrainConfig {
        seed,
        architecture,
        ..config.training.clone()
    };
    Ok(tokio::task::spawn_blocking(move || {
        let learner = train_local_only(&training, classes, prepared.train, prepared.public, steps)?;
        Ok(learner.accuracy(&prepared.holdout)?)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_queries_grow_with_rho_times_records_squared_within_their_bounds() {
        // rho 0.108 (epsilon 2, delta 1e-5) and 5000 records: 0.108 x 25e6 / 6250 = 432,
        // capped at DP_QUERIES (400).
        assert_eq!(private_queries(500, 20, 5000, 0.108), 400);
        // A public set smaller than the cap caps it.
        assert_eq!(private_queries(300, 20, 5000, 0.108), 300);
        // 2000 records: 0.108 x 4e6 / 6250 = 69.12, rounded.
        assert_eq!(private_queries(500, 20, 2000, 0.108), 69);
        // Digits-sized nodes (110 records): 0.21 wanted, raised to one per round.
        assert_eq!(private_queries(359, 20, 110, 0.108), 20);
        // No noise: as many as the cap allows.
        assert_eq!(private_queries(359, 20, 110, f64::INFINITY), 359);
        // More rounds than public records: every record once, no more.
        assert_eq!(private_queries(10, 20, 110, 0.108), 10);
    }
}
