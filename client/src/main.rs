//! `fd-client`: a hospital or bank node joining a federation.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use fd_client::config::{NodeConfig, PrivacyConfig, PrivacyMode};
use fd_client::distill::{Architecture, TrainConfig};

/// Join a federated knowledge-distillation run as one node.
///
/// The node trains a small student on its private CSV, labels the public reference records the
/// coordinator asks about, and distils from the global target. Only soft labels on public records
/// leave the node; the private records, features and weights never do. At the end it writes
/// `model.safetensors`, `model.json` and `report.json` into the output directory; the report
/// compares the student with its teacher (accuracy, macro-F1, compression ratio, measured
/// speed-up, CKA).
///
/// Settings come from a TOML file (`--config node.toml`, see the README for an example); any
/// flag below overrides the file. Without a file, the flags marked "required" must be given.
///
/// `fd-client predict` and `fd-client evaluate` use a student a run wrote.
#[derive(Debug, Parser)]
#[command(name = "fd-client", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Predict a class and per-class probabilities for every row of a CSV.
    Predict {
        /// Model directory written by a run (model.safetensors + model.json).
        #[arg(long)]
        model: PathBuf,
        /// CSV with the model's feature columns (any order) and no label.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the predictions (CSV: predicted, p0, p1, ...).
        #[arg(long)]
        output: PathBuf,
    },
    /// Predict, from public facts alone and without joining, what this node's private releases
    /// will be worth: the noise on every vote sum, the largest vote sum it can release, their
    /// signal-to-noise ratio (teachers / classes / sigma), a warning when the noise will swamp
    /// its votes, and what epsilon or query count would reach `privacy.trust_snr`. A joining
    /// node logs the same plan before its first release.
    Plan {
        /// Node config file (TOML); its private CSV gives the record count.
        #[arg(long)]
        config: PathBuf,
        /// Labels the coordinator will ask of the node over the run (its Welcome's
        /// planned_queries: queries_per_round x rounds) [default: 20, one a round for the
        /// default 20 rounds].
        #[arg(long, default_value_t = 20)]
        planned_queries: u64,
        /// Queries the coordinator asks per round.
        #[arg(long, default_value_t = 1)]
        queries_per_round: usize,
        /// Plan for this many private records instead of the CSV's.
        #[arg(long)]
        records: Option<usize>,
    },
    /// Print accuracy and macro-F1 of a model on a labelled CSV.
    Evaluate {
        /// Model directory written by a run.
        #[arg(long)]
        model: PathBuf,
        /// CSV with the model's feature columns and its label column.
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Node config file (TOML). Relative paths inside it are relative to the file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Coordinator address, e.g. 127.0.0.1:4433 (required without --config).
    #[arg(long)]
    coordinator: Option<SocketAddr>,
    /// Name on the coordinator's certificate [default: localhost].
    #[arg(long)]
    server_name: Option<String>,
    /// Federation CA certificate, PEM (required without --config).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate from `fd-certs issue`, PEM (required without --config).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key, PEM (required without --config).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Private labelled records, CSV with a header (required without --config).
    #[arg(long)]
    private_csv: Option<PathBuf>,
    /// Public reference records, CSV with the same feature columns and no label (required
    /// without --config).
    #[arg(long)]
    public_csv: Option<PathBuf>,
    /// Label column of the private CSV [default: label].
    #[arg(long)]
    label_column: Option<String>,
    /// Number of classes; labels are integers 0..classes (required without --config).
    #[arg(long)]
    classes: Option<usize>,
    /// Where the student and report.json go [default: fd-node-out].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Seed for the holdout split, initialisation and batches [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Distillation temperature [default: 2 with image data (`[training] image`), else 4].
    /// A private node's student (`[privacy] mode = "shards"`) learns from sharpened targets
    /// at temperature 1 whatever this says.
    #[arg(long)]
    temperature: Option<fd_client::distill::Temperature>,
    /// The student's architecture: `mlp` (dense layers, `[training] hidden`) or `cnn` (a small
    /// CNN, `[training.cnn]`; needs image data). Nodes of one federation may differ: only soft
    /// labels are exchanged [default: mlp].
    #[arg(long, value_parser = parse_architecture)]
    student: Option<Architecture>,
    /// Privacy of released labels: `none` (non-private baseline) or `shards` (record-level
    /// differential privacy: teachers on disjoint shards, Gaussian noise) [default: none].
    #[arg(long, value_parser = parse_mode)]
    privacy: Option<PrivacyMode>,
    /// Total epsilon budget of this node over the run, per record of its private data
    /// [default: 2].
    #[arg(long)]
    epsilon: Option<f64>,
    /// The delta of the budget [default: 1e-5].
    #[arg(long)]
    delta: Option<f64>,
    /// How long the first join keeps retrying an unreachable coordinator, in seconds
    /// [default: 60; 0: give up at once].
    #[arg(long)]
    join_retry_secs: Option<u64>,
    /// Fraction of the private records held out to measure the student [default: 0.2]. A
    /// small node's held-out set is small (20 records measure accuracy to about +-0.1), so
    /// its reported accuracy is noisy.
    #[arg(long)]
    holdout_fraction: Option<f64>,
    /// Any config key, as KEY=VALUE with a dotted key and a TOML value, e.g. `--set
    /// training.local_steps=500 --set privacy.mode='"shards"'` (a bare word is read as a
    /// string: `--set privacy.mode=shards`). Repeatable; applied after the file and the other
    /// flags. `--print-config` lists every key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Overwrite the output directory even if it holds a finished run (its report.json). Without
    /// it such a run is refused before anything is written; an interrupted run (no report)
    /// resumes either way.
    #[arg(long)]
    force: bool,
    /// Print a complete node config, every key at its default with a comment, and exit.
    #[arg(long)]
    print_config: bool,
    /// Also write the log to this file (appended; plain text, no colour codes).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<PrivacyMode, String> {
    match s {
        "none" => Ok(PrivacyMode::None),
        "shards" => Ok(PrivacyMode::Shards),
        other => Err(format!(
            "'{other}' is not a privacy mode; use none or shards"
        )),
    }
}

fn parse_architecture(s: &str) -> Result<Architecture, String> {
    match s {
        "mlp" => Ok(Architecture::Mlp),
        "cnn" => Ok(Architecture::Cnn),
        other => Err(format!(
            "'{other}' is not a student architecture; use mlp or cnn"
        )),
    }
}

fn config_from(args: Args) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => {
            let mut missing = Vec::new();
            if args.coordinator.is_none() {
                missing.push("--coordinator");
            }
            if args.ca.is_none() {
                missing.push("--ca");
            }
            if args.cert.is_none() {
                missing.push("--cert");
            }
            if args.key.is_none() {
                missing.push("--key");
            }
            if args.private_csv.is_none() {
                missing.push("--private-csv");
            }
            if args.public_csv.is_none() {
                missing.push("--public-csv");
            }
            if args.classes.is_none() {
                missing.push("--classes");
            }
            if !missing.is_empty() {
                bail!(
                    "without --config these flags are required: {}",
                    missing.join(", ")
                );
            }
            NodeConfig {
                coordinator: args.coordinator.context("--coordinator")?,
                server_name: "localhost".into(),
                ca: args.ca.clone().context("--ca")?,
                cert: args.cert.clone().context("--cert")?,
                key: args.key.clone().context("--key")?,
                private_csv: args.private_csv.clone().context("--private-csv")?,
                public_csv: args.public_csv.clone().context("--public-csv")?,
                label_column: "label".into(),
                classes: args.classes.context("--classes")?,
                holdout_fraction: 0.2,
                output_dir: "fd-node-out".into(),
                seed: 1,
                join_retry_secs: fd_client::config::DEFAULT_JOIN_RETRY_SECS,
                training: TrainConfig::default(),
                privacy: PrivacyConfig::default(),
            }
        }
    };
    if let Some(v) = args.coordinator {
        config.coordinator = v;
    }
    if let Some(v) = args.server_name {
        config.server_name = v;
    }
    if let Some(v) = args.join_retry_secs {
        config.join_retry_secs = v;
    }
    if let Some(v) = args.ca {
        config.ca = v;
    }
    if let Some(v) = args.cert {
        config.cert = v;
    }
    if let Some(v) = args.key {
        config.key = v;
    }
    if let Some(v) = args.private_csv {
        config.private_csv = v;
    }
    if let Some(v) = args.public_csv {
        config.public_csv = v;
    }
    if let Some(v) = args.label_column {
        config.label_column = v;
    }
    if let Some(v) = args.classes {
        config.classes = v;
    }
    if let Some(v) = args.output_dir {
        config.output_dir = v;
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    if let Some(v) = args.temperature {
        config.training.temperature = v;
    }
    if let Some(v) = args.student {
        config.training.architecture = v;
    }
    if let Some(v) = args.privacy {
        config.privacy.mode = v;
    }
    if let Some(v) = args.epsilon {
        config.privacy.epsilon = v;
    }
    if let Some(v) = args.delta {
        config.privacy.delta = v;
    }
    if let Some(v) = args.holdout_fraction {
        config.holdout_fraction = v;
    }
    let config = fd_client::config::apply_settings(&config, &args.set)
        .map_err(|m| anyhow::anyhow!("--set: {m}"))?;
    config
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid settings: {m}"))?;
    Ok(config)
}

/// Candle allocates a buffer per tensor op; see fd-sim's allocator note.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fd_cli::logging::init(cli.run.log_file.as_deref())?;
    if cli.run.print_config {
        print!("{}", fd_client::config::REFERENCE);
        return Ok(());
    }
    match cli.command {
        Some(Command::Predict {
            model,
            input,
            output,
        }) => {
            let rows = fd_client::predict::predict_csv(&model, &input, &output)?;
            println!("{rows} predictions written to {}", output.display());
            return Ok(());
        }
        Some(Command::Evaluate { model, input }) => {
            let (rows, accuracy, macro_f1) = fd_client::predict::evaluate_csv(&model, &input)?;
            println!("rows {rows} | accuracy {accuracy:.4} | macro-F1 {macro_f1:.4}");
            return Ok(());
        }
        Some(Command::Plan {
            config,
            planned_queries,
            queries_per_round,
            records,
        }) => {
            let config = NodeConfig::load(&config)?;
            let plan =
                fd_client::node::plan_node(&config, records, planned_queries, queries_per_round)?;
            print!("{}", plan.describe());
            return Ok(());
        }
        None => {}
    }
    let force = cli.run.force;
    let config = config_from(cli.run)?;
    tracing::info!(coordinator = %config.coordinator, privacy = ?config.privacy.mode, "starting node");
    let report = fd_client::node::run_node(&config, force).await?;
    println!(
        "node {}: {} rounds, held-out accuracy {:.4}, report in {}",
        report.node,
        report.rounds,
        report.accuracy,
        config.output_dir.join("report.json").display()
    );
    Ok(())
}
