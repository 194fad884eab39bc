//! The tables fd-sim prints.

use std::fmt::Write;

use crate::federation::{ClientResult, SimResult};

/// Renders the per-client table and the summary lines.
pub fn table(r: &SimResult) -> String {
    let mut s = String::new();
    let private = r.clients.iter().any(|c| c.epsilon_spent.is_some());
    write_header(&mut s, r, private);
    for c in &r.clients {
        write_client_row(&mut s, c, private);
    }
    write_mean_row(&mut s, r);
    write_teacher_line(&mut s, r);
    write_footer(&mut s, r);
    s
}

/// Writes the run's description, its privacy statement and the column headings.
fn write_header(s: &mut String, r: &SimResult, private: bool) {
    let _ = writeln!(
        s,
        "dataset {} | {} clients | {} rounds | Dirichlet beta {} | seed {}",
        r.dataset,
        r.clients.len(),
        r.config.rounds,
        r.config.beta,
        r.config.seed
    );
    let _ = writeln!(
        s,
        "privacy: {} (unit: {})",
        r.privacy.statement, r.privacy.unit
    );
    let _ = write!(
        s,
        "{:<12} {:>8} {:>12} {:>12}",
        "client", "records", "local-only", "federated"
    );
    let _ = write!(
        s,
        " {:>8} {:<16} {:>8} {:>8} {:>8} {:>6}",
        "macro-F1", "student", "params", "compr.", "speed-up", "CKA"
    );
    if private {
        let _ = write!(s, " {:>9} {:>9} {:>8}", "teachers", "sigma", "epsilon");
    }
    let _ = writeln!(s);
}

/// Writes one client's row: accuracies, student metrics, privacy columns and notes.
fn write_client_row(s: &mut String, c: &ClientResult, private: bool) {
    let _ = write!(
        s,
        "{:<12} {:>8} {:>12.4} {:>12.4}",
        c.node, c.records, c.local_only_acc, c.federated_acc
    );
    let _ = write!(
        s,
        " {:>8.4} {:<16} {:>8} {:>8} {:>8} {:>6}",
        c.metrics.macro_f1,
        c.metrics.student,
        c.metrics.student_parameters,
        opt(c.metrics.compression_ratio, 2),
        opt(c.metrics.speedup, 2),
        opt(c.metrics.cka, 3)
    );
    if private {
        write_privacy_columns(s, c);
    }
    write_client_notes(s, c);
    let _ = writeln!(s);
}

/// Formats `v` with `digits` decimals, or `-` when there is none.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

/// Writes a client's teachers, noise sigma and epsilon spent.
fn write_privacy_columns(s: &mut String, c: &ClientResult) {
    let _ = write!(
        s,
        " {:>9} {:>9.2} {:>8.4}",
        c.teachers.unwrap_or(0),
        c.sigma.unwrap_or(f64::NAN),
        c.epsilon_spent.unwrap_or(f64::NAN)
    );
    if let Some(floor) = c.floor_epsilon_spent {
        let _ = write!(s, "  floor epsilon {floor:.4}");
    }
}

/// Writes a client's aggregation weight, fault and early leaving, where there are any.
fn write_client_notes(s: &mut String, c: &ClientResult) {
    if let Some(w) = c.weight {
        let _ = write!(s, "  weight {w:.4}");
    }
    if let Some(fault) = &c.fault {
        let _ = write!(s, "  [{fault}]");
    }
    if let Some(why) = &c.left {
        let _ = write!(s, "  (left early: {why})");
    }
}

/// Writes the row of total records and mean accuracies.
fn write_mean_row(s: &mut String, r: &SimResult) {
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>12.4} {:>12.4}",
        "mean",
        r.clients.iter().map(|c| c.records).sum::<usize>(),
        r.local_only_mean_acc,
        r.federated_mean_acc
    );
}

/// Writes the local teacher and its mean test accuracy, if the clients trained one.
fn write_teacher_line(s: &mut String, r: &SimResult) {
    let mut teachers: Vec<&str> = r
        .clients
        .iter()
        .filter_map(|c| c.metrics.teacher.as_deref())
        .collect();
    teachers.dedup();
    let Some(&first) = teachers.first() else {
        return;
    };
    let teacher = if teachers.len() == 1 {
        first
    } else {
        "per client (clients[i].teacher in the JSON)"
    };
    let accs: Vec<f64> = r
        .clients
        .iter()
        .filter_map(|c| c.metrics.teacher_accuracy)
        .collect();
    let _ = writeln!(
        s,
        "teacher: {teacher}, mean test accuracy {:.4} (compr. = teacher / student parameters; \
         speed-up measured: teacher / student wall-clock over the public set, median of {} \
         alternating passes; CKA: linear, student vs teacher representation of the public set)",
        accs.iter().sum::<f64>() / accs.len().max(1) as f64,
        fd_client::evaluate::compare::TIMING_REPETITIONS
    );
}

/// Writes the centralised bound, the target's accuracy, the rounds and the traffic.
fn write_footer(s: &mut String, r: &SimResult) {
    let _ = writeln!(
        s,
        "centralised upper bound (all private records): {:.4}",
        r.centralized_acc
    );
    let _ = write!(
        s,
        "final target accuracy on the public records: {:.4}",
        r.target_acc
    );
    let _ = match r.balanced_target_acc {
        Some(b) => writeln!(
            s,
            " ({b:.4} after class balancing, which private students apply first)"
        ),
        None => writeln!(s),
    };
    let _ = writeln!(
        s,
        "aggregator {} | rounds completed {} of {} | accepted per round {:?}",
        r.aggregator, r.rounds_completed, r.config.rounds, r.accepted_per_round
    );
    let _ = writeln!(
        s,
        "test records {} | public records {} | bytes up {} | bytes down {} | wall {:.1} s",
        r.test_records, r.public_records, r.bytes_up, r.bytes_down, r.wall_seconds
    );
}

/// One row of an epsilon sweep: the mean (and, over repeats, the sample standard deviation)
/// of each figure over the runs at one epsilon.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepRow {
    /// The budget (`None`: infinite, no noise).
    pub epsilon: Option<f64>,
    /// Runs averaged.
    pub repeats: usize,
    /// Mean federated test accuracy (mean over runs of the honest clients' mean).
    pub federated_mean_acc: f64,
    /// Its standard deviation over the runs (`None` for one run).
    pub federated_sd: Option<f64>,
    /// Mean local-only test accuracy.
    pub local_only_mean_acc: f64,
    /// Its standard deviation over the runs.
    pub local_only_sd: Option<f64>,
    /// The smallest `federated_acc - local_only_acc` of any honest client in any run: below 0,
    /// some node ended worse than alone.
    pub worst_gain: f64,
    /// Honest client-runs whose federated accuracy fell more than 0.5 points below their
    /// local-only accuracy.
    pub harmed: usize,
    /// Largest epsilon any client spent.
    pub max_epsilon_spent: Option<f64>,
    /// With secure aggregation: the largest floor epsilon (a node's own noise alone) spent.
    pub max_floor_epsilon_spent: Option<f64>,
    /// Noise standard deviation of the first client's releases (last run).
    pub sigma: Option<f64>,
    /// Every honest client of every run: what `worst_gain` and `harmed` are made of.
    pub client_runs: Vec<ClientRun>,
}

/// One honest client in one run of a sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientRun {
    /// The run's seed.
    pub seed: u64,
    /// The node.
    pub node: String,
    /// Its private records.
    pub records: usize,
    /// Its local-only test accuracy.
    pub local_only_acc: f64,
    /// Its federated test accuracy.
    pub federated_acc: f64,
    /// The student it kept, if a do-no-harm rule chose.
    pub kept: Option<String>,
    /// The do-no-harm check's test statistic on the private records, if it made one.
    pub z: Option<f64>,
    /// Its test statistic on the target's rows.
    pub target_z: Option<f64>,
}

/// Mean and sample standard deviation (`None` for fewer than two values).
pub fn mean_sd(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let sd = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// Federated minus local-only accuracy of every honest client of `r`.
fn gains(r: &SimResult) -> impl Iterator<Item = f64> + '_ {
    r.clients
        .iter()
        .filter(|c| !c.byzantine)
        .map(|c| c.federated_acc - c.local_only_acc)
}

impl SweepRow {
    /// The row of the runs `results` at `epsilon`.
    pub fn from_results(epsilon: f64, results: &[SimResult]) -> SweepRow {
        let fed: Vec<f64> = results.iter().map(|r| r.federated_mean_acc).collect();
        let local: Vec<f64> = results.iter().map(|r| r.local_only_mean_acc).collect();
        let (federated_mean_acc, federated_sd) = mean_sd(&fed);
        let (local_only_mean_acc, local_only_sd) = mean_sd(&local);
        let all_gains: Vec<f64> = results.iter().flat_map(gains).collect();
        SweepRow {
            epsilon: epsilon.is_finite().then_some(epsilon),
            repeats: results.len(),
            federated_mean_acc,
            federated_sd,
            local_only_mean_acc,
            local_only_sd,
            worst_gain: all_gains.iter().copied().fold(f64::INFINITY, f64::min),
            harmed: all_gains.iter().filter(|&&g| g < -0.005).count(),
            max_epsilon_spent: results
                .iter()
                .flat_map(|r| r.clients.iter().filter_map(|c| c.epsilon_spent))
                .reduce(f64::max),
            max_floor_epsilon_spent: results
                .iter()
                .flat_map(|r| r.clients.iter().filter_map(|c| c.floor_epsilon_spent))
                .reduce(f64::max),
            sigma: results
                .last()
                .and_then(|r| r.clients.first())
                .and_then(|c| c.sigma),
            client_runs: results
                .iter()
                .flat_map(|r| {
                    r.clients
                        .iter()
                        .filter(|c| !c.byzantine)
                        .map(|c| ClientRun {
                            seed: r.config.seed,
                            node: c.node.clone(),
                            records: c.records,
                            local_only_acc: c.local_only_acc,
                            federated_acc: c.federated_acc,
                            kept: c.kept.clone(),
                            z: c.harm_check.as_ref().map(|h| h.z),
                            target_z: c.harm_check.as_ref().map(|h| h.target_z),
                        })
                })
                .collect(),
        }
    }
}

/// One line for one run of a repeated setting.
pub fn repeat_line(epsilon: f64, seed: u64, r: &SimResult) -> String {
    let worst = gains(r).fold(f64::INFINITY, f64::min);
    format!(
        "epsilon {epsilon} seed {seed}: federated {:.4}, local-only {:.4}, worst client's gain \
         over local-only {worst:+.4}",
        r.federated_mean_acc, r.local_only_mean_acc
    )
}

/// Renders accuracy against epsilon (mean +- sd over repeats).
pub fn sweep_table(rows: &[SweepRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8} {:>10} {:>18} {:>18} {:>11} {:>7} {:>14}",
        "epsilon", "sigma", "federated", "local-only", "worst gain", "harmed", "max eps spent"
    );
    let pm = |mean: f64, sd: Option<f64>| match sd {
        Some(sd) => format!("{mean:.4} +- {sd:.4}"),
        None => format!("{mean:.4}"),
    };
    for r in rows {
        let eps = r.epsilon.map_or("inf".to_owned(), |e| format!("{e}"));
        let mut spent = r
            .max_epsilon_spent
            .map_or("-".to_owned(), |e| format!("{e:.4}"));
        if let Some(floor) = r.max_floor_epsilon_spent {
            spent = format!("{spent} (floor {floor:.2})");
        }
        let sigma = r.sigma.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "{:>8} {:>10} {:>18} {:>18} {:>+11.4} {:>7} {:>14}",
            eps,
            sigma,
            pm(r.federated_mean_acc, r.federated_sd),
            pm(r.local_only_mean_acc, r.local_only_sd),
            r.worst_gain,
            r.harmed,
            spent
        );
    }
    s
}

/// One row of an aggregator comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AggregatorRow {
    /// The strategy.
    pub aggregator: String,
    /// Mean federated test accuracy of the honest clients.
    pub federated_mean_acc: f64,
    /// Accuracy of the final target's arg-max on the public records.
    pub target_acc: f64,
    /// Mean final weight of the honest clients.
    pub honest_mean_weight: Option<f64>,
    /// Mean final weight of the byzantine clients.
    pub byzantine_mean_weight: Option<f64>,
    /// Rounds completed.
    pub rounds_completed: u32,
    /// Wall time of the federation.
    pub wall_seconds: f64,
}

impl AggregatorRow {
    /// The row of one run.
    pub fn from_result(r: &SimResult) -> AggregatorRow {
        AggregatorRow {
            aggregator: r.aggregator.clone(),
            federated_mean_acc: r.federated_mean_acc,
            target_acc: r.target_acc,
            honest_mean_weight: r.honest_mean_weight,
            byzantine_mean_weight: r.byzantine_mean_weight,
            rounds_completed: r.rounds_completed,
            wall_seconds: r.wall_seconds,
        }
    }
}

/// Renders one row per aggregator.
pub fn aggregator_table(rows: &[AggregatorRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>10} {:>10} {:>13} {:>16} {:>7} {:>8}",
        "aggregator",
        "federated",
        "target",
        "honest weight",
        "byzantine weight",
        "rounds",
        "wall s"
    );
    let weight = |w: Option<f64>| w.map_or("-".to_owned(), |w| format!("{w:.4}"));
    for r in rows {
        let _ = writeln!(
            s,
            "{:<14} {:>10.4} {:>10.4} {:>13} {:>16} {:>7} {:>8.1}",
            r.aggregator,
            r.federated_mean_acc,
            r.target_acc,
            weight(r.honest_mean_weight),
            weight(r.byzantine_mean_weight),
            r.rounds_completed,
            r.wall_seconds
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_standard_deviation() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, 32 / 7 = 4.571...
        let (mean, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, 5.0);
        assert!((sd.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[0.5]), (0.5, None));
    }
}
