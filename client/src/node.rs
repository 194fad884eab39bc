//! A whole node run from its config: load the data, build the node ([`crate::build`]), take
//! part in the federation ([`crate::federation`]), save the student and the report.

use rand::{SeedableRng, rngs::StdRng};

use crate::NodeError;
use crate::build::NodeBuilder;
use crate::config::{NodeConfig, PrivacyMode};
use crate::data;
use crate::evaluate::{NodeReport, measure, reference, write_json};
use crate::federation::run_session;

/// Where a node keeps its privacy ledger unless configured: next to its private data file
/// (`hospital.csv` -> `hospital.csv.privacy-ledger.sqlite`), so the budget stays with the data
/// whatever output directory a run uses.
pub fn default_ledger(private_csv: &std::path::Path) -> std::path::PathBuf {
    let mut name = private_csv.file_name().unwrap_or_default().to_os_string();
    name.push(".privacy-ledger.sqlite");
    private_csv.with_file_name(name)
}

/// Held-out accuracy of a student trained on `learner`'s private records alone, with the
/// federated student's step budget.
fn local_only_accuracy(
    learner: &crate::distill::Learner,
    holdout: &crate::data::Labelled,
) -> Result<f64, NodeError> {
    if holdout.is_empty() {
        return Ok(0.0);
    }
    Ok(learner.local_only()?.accuracy(holdout)?)
}

/// The privacy plan of a node (see [`crate::privacy::plan`]) without joining: its record count
/// is its private CSV's training split (or `records` if given, to plan for another size), its
/// teacher count follows from the config, and `planned_queries` (over the run) and
/// `queries_per_round` stand for what the coordinator's Welcome would say.
pub fn plan_node(
    config: &NodeConfig,
    records: Option<usize>,
    planned_queries: u64,
    queries_per_round: usize,
) -> Result<crate::privacy::plan::Plan, NodeError> {
    if config.privacy.mode == PrivacyMode::None {
        return Err(NodeError::Mismatch(
            "privacy.mode is \"none\": a non-private node releases its student's labels \
             without noise, so there is nothing to plan; set [privacy] mode = \"shards\""
                .into(),
        ));
    }
    let records = match records {
        Some(n) => n,
        None => training_split(config)?.1.rows(),
    };
    let budget = crate::privacy::Budget {
        epsilon: config.privacy.epsilon,
        delta: config.privacy.delta,
    };
    budget.validate_for(records)?;
    let teachers = config.privacy.teachers(records);
    let wanted = crate::privacy::plan::wanted_snr(config.privacy.min_snr, config.privacy.trust_snr);
    Ok(crate::privacy::plan::plan(
        crate::privacy::plan::PlanInput {
            records,
            teachers,
            classes: config.classes,
            budget,
            planned_queries,
            queries_per_release: queries_per_round,
        },
        wanted,
    )?)
}

/// The node's private CSV, and the same records split into training and held-out ones (by the
/// config's fraction and seed); an error if no training record is left.
fn training_split(
    config: &NodeConfig,
) -> Result<(data::Table, data::Table, data::Table), NodeError> {
    let private =
        data::read_labelled_csv(&config.private_csv, &config.label_column, config.classes)?;
    let (train, holdout) = private.split_holdout(
        config.holdout_fraction,
        &mut StdRng::seed_from_u64(config.seed),
    );
    if train.rows() == 0 {
        return Err(NodeError::Mismatch(format!(
            "{}: no training records left after holding out {}",
            config.private_csv.display(),
            config.holdout_fraction
        )));
    }
    Ok((private, train, holdout))
}

/// Refuses, before anything is read or written, to run into an output directory whose
/// `report.json` says a run finished there (a report is written only at the end of a run):
/// the new run would replace its model and report. An interrupted run leaves no report, so
/// running again resumes with the coordinator. `force` skips the check.
pub fn check_output_dir(config: &NodeConfig, force: bool) -> Result<(), NodeError> {
    let report = config.output_dir.join("report.json");
    if force || !report.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let summary = match (value.get("rounds"), value.get("accuracy")) {
        (Some(rounds), Some(acc)) => format!(
            "{rounds} rounds, held-out accuracy {:.4}, report.json",
            acc.as_f64().unwrap_or(f64::NAN)
        ),
        _ => "report.json".to_owned(),
    };
    Err(NodeError::Finished {
        dir: config.output_dir.clone(),
        summary,
    })
}

/// Runs a node from its config: joins, trains, and writes `model.safetensors`, `model.json` and
/// `report.json` into the output directory. Refuses an output directory that holds a finished
/// run unless `force` (see [`check_output_dir`]).
pub async fn run_node(config: &NodeConfig, force: bool) -> Result<NodeReport, NodeError> {
    check_output_dir(config, force)?;
    let (private, train, holdout) = training_split(config)?;
    let public = data::read_public_csv(
        &config.public_csv,
        &private.columns,
        Some(&config.label_column),
    )?;
    let tls = fd_transport::TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
    if config.privacy.mode != PrivacyMode::None {
        std::fs::create_dir_all(&config.output_dir).map_err(|source| NodeError::Output {
            path: config.output_dir.clone(),
            source,
        })?;
    }
    let builder = NodeBuilder {
        classes: config.classes,
        label_column: config.label_column.clone(),
        training: crate::distill::TrainConfig {
            seed: config.seed,
            ..config.training.clone()
        },
        privacy: config.privacy.clone(),
        ledger: config
            .privacy
            .ledger
            .clone()
            .unwrap_or_else(|| default_ledger(&config.private_csv)),
        data_fingerprint: private.fingerprint(),
    };
    let node = builder.build(&train, &holdout, &public)?;
    let mut plan = node.plan(
        config.coordinator,
        &config.server_name,
        tls,
        std::time::Duration::from_secs(config.join_retry_secs),
    );
    plan.public_sha256 = Some(data::file_sha256(&config.public_csv)?);
    let card = node.card;
    let outcome = run_session(plan, node.learner, node.labeller).await?;
    let student = outcome.learner.student();
    student.save(&config.output_dir, &card)?;
    let student_metrics = measure(
        student,
        reference(&outcome.labeller, &outcome.learner),
        &node.holdout,
        outcome.learner.public(),
    )?;
    tracing::info!(
        accuracy = student_metrics.accuracy,
        macro_f1 = student_metrics.macro_f1,
        compression_ratio = student_metrics.compression_ratio,
        speedup = student_metrics.speedup,
        cka = student_metrics.cka,
        teacher = student_metrics.teacher,
        "student against its teacher (speed-up measured)"
    );
    let local_only_acc = local_only_accuracy(&outcome.learner, &node.holdout)?;
    tracing::info!(
        federated = outcome.final_accuracy,
        local_only = local_only_acc,
        "held-out accuracy: the kept student against one trained on this node's records alone"
    );
    let spent = outcome.labeller.spent()?;
    let private_part = outcome.labeller.private();
    let report = NodeReport {
        privacy: outcome.labeller.statement(),
        privacy_unit: outcome.labeller.unit().into(),
        epsilon_spent: spent.map(|(e, _)| e),
        floor_epsilon_spent: outcome.labeller.floor_spent()?,
        rho_spent: spent.map(|(_, r)| r),
        delta: private_part.map(|p| p.budget.delta),
        sigma: private_part.and_then(|p| p.sigma),
        teachers: private_part.map(|p| p.ensemble.config().teachers),
        left: outcome.left.clone(),
        node: outcome.node.clone(),
        private_records: train.rows(),
        holdout_records: holdout.rows(),
        public_records: public.rows(),
        rounds: outcome.rounds,
        round_accuracy: outcome.round_accuracy.clone(),
        accuracy: outcome.final_accuracy,
        local_only_acc,
        harm_check: outcome.learner.harm_check().cloned(),
        target_trust: outcome.learner.target_trust().cloned(),
        temperature_search: outcome.learner.temperature_search().cloned(),
        privacy_plan: private_part.and_then(|p| p.plan.clone()),
        bytes_up: outcome.bytes_up,
        bytes_down: outcome.bytes_down,
        seconds: outcome.seconds,
        student: student.config().clone(),
        student_parameters: student.parameters(),
        student_metrics,
    };
    write_json(&config.output_dir.join("report.json"), &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_is_kept_unless_forced_and_an_interrupted_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config: NodeConfig = toml::from_str(crate::config::REFERENCE).unwrap();
        config.output_dir = dir.path().join("out");
        // No output directory yet, or one without a report (an interrupted run): go on.
        assert!(check_output_dir(&config, false).is_ok());
        std::fs::create_dir_all(&config.output_dir).unwrap();
        std::fs::write(config.output_dir.join("model.json"), "{}").unwrap();
        assert!(check_output_dir(&config, false).is_ok());
        // A report is written only at the end of a run: refused, naming what it holds.
        std::fs::write(
            config.output_dir.join("report.json"),
            r#"{"rounds": 20, "accuracy": 0.9375}"#,
        )
        .unwrap();
        let msg = check_output_dir(&config, false).unwrap_err().to_string();
        assert!(
            msg.contains("20 rounds") && msg.contains("0.9375") && msg.contains("--force"),
            "{msg}"
        );
        assert!(check_output_dir(&config, true).is_ok());
    }
}
