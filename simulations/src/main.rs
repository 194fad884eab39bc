//! `fd-sim`: run a whole federation on this machine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use fd_client::config::{PrivacyConfig, PrivacyMode, ReleaseRows};
use fd_client::distill::{ImageShape, TrainConfig};
use fd_client::privacy::teachers::{TeacherKind, Votes};
use fd_coordinator::aggregate::AggregatorKind;
use fd_sim::datasets::{DatasetKind, SyntheticSpec};
use fd_sim::faults::Attack;
use fd_sim::federation::{self, SimConfig, SimResult};
use fd_sim::plots;
use fd_sim::progress::Reporter;
use fd_sim::report::AggregatorRow;

/// Simulate a federated knowledge-distillation run on one machine.
///
/// Starts the real coordinator and N real clients in this process, talking over loopback QUIC
/// with mutual TLS (certificates from a throw-away CA). The dataset is split into 20% shared
/// test, 20% public reference (labels dropped) and 60% private records spread over the clients by
/// a Dirichlet distribution over labels. Prints per-client local-only and federated test accuracy
/// and the centralised upper bound.
///
/// The data is a built-in dataset (--dataset) or a labelled CSV file of your own (--csv). With
/// --plots, the results are also drawn as charts. On a terminal, progress bars show the rounds
/// (and the runs of a sweep or of repeats); otherwise each round is a plain log line on stderr.
#[derive(Debug, Parser)]
#[command(name = "fd-sim", version)]
struct Args {
    /// Number of clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Number of rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Dirichlet concentration of the label skew across clients (smaller: more skewed).
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Seed of the split, the partition and every model.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs each setting this many times, with seeds --seed, --seed + 1, ... (each a new split,
    /// new models and, with privacy, new noise from the OS), and reports mean and standard
    /// deviation over the repeats, and the worst client's gain over local-only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeats: u32,
    /// Built-in dataset.
    #[arg(long, value_enum, default_value_t = DatasetKind::Digits)]
    dataset: DatasetKind,
    /// Your own labelled data instead of a built-in dataset: a CSV file with a header row, one
    /// record per row, a label column (--label) of class indices 0, 1, 2, ... and every other
    /// column a numeric feature. It gets the same split, partition, baselines and table as the
    /// built-in datasets.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "dataset",
        requires = "label"
    )]
    csv: Option<PathBuf>,
    /// With --csv: the name of the label column.
    #[arg(long, value_name = "COLUMN", requires = "csv")]
    label: Option<String>,
    /// With --csv: every row is an image of HEIGHT x WIDTH pixels, row by row (e.g. 8x8), so
    /// that CNN students (--student cnn or mixed) can be used. HEIGHT x WIDTH must equal the
    /// number of feature columns.
    #[arg(long, value_name = "HxW", requires = "csv", value_parser = parse_image_shape)]
    image_shape: Option<ImageShape>,
    /// Hidden layer widths of the MLP students, comma-separated.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Optimiser steps on private data before the first contribution.
    #[arg(long)]
    local_steps: Option<usize>,
    /// Optimiser steps per round once a target exists [default: 100 on digits, 200
    /// otherwise].
    #[arg(long)]
    steps_per_round: Option<usize>,
    /// Weight of the private cross-entropy in the first round [default: 0.7].
    #[arg(long)]
    alpha_start: Option<f64>,
    /// Weight of the private cross-entropy in the last round [default: 0.3].
    #[arg(long)]
    alpha_end: Option<f64>,
    /// Gaussian jitter on training inputs, in standardised units.
    #[arg(long)]
    input_noise: Option<f64>,
    /// Largest random shift (pixels) of training images (digits only); 0, the default, turns it
    /// off: on 8x8 digits even one pixel costs accuracy.
    #[arg(long)]
    max_shift: Option<usize>,
    /// Rows per mini-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Learning rate (AdamW).
    #[arg(long)]
    lr: Option<f64>,
    /// Distillation temperature [default: 1 for digits, 4 for tabular data], or "auto": each
    /// node searches from T = 1 in steps of 0.5 on a validation split of its own records when
    /// the first target arrives, and reports the curve (clients[i].temperature_search). Private
    /// students (--privacy shards) learn from sharpened targets at temperature 1 whatever this
    /// says.
    #[arg(long)]
    temperature: Option<fd_client::distill::Temperature>,
    /// Students: mlp (dense layers --hidden), cnn (small CNN --cnn-channels, image data only) or
    /// mixed (even clients MLP, odd clients CNN; they interoperate through soft labels only).
    #[arg(long, value_enum, default_value_t = fd_sim::students::StudentMix::Mlp)]
    student: fd_sim::students::StudentMix,
    /// CNN students: output channels of each 3x3 convolution, comma-separated [default: 8,16].
    #[arg(long, value_delimiter = ',')]
    cnn_channels: Option<Vec<usize>>,
    /// CNN students: dense hidden widths after the pooled maps, comma-separated (none by
    /// default; pass an empty string for none).
    #[arg(long, value_delimiter = ',')]
    cnn_hidden: Option<Vec<usize>>,
    /// Dropout after each dense hidden layer of the students while training [default: 0].
    #[arg(long)]
    dropout: Option<f64>,
    /// Shape of the alpha schedule from --alpha-start to --alpha-end over the rounds.
    #[arg(long, value_enum)]
    alpha_schedule: Option<ScheduleArg>,
    /// Temperature in the last round [default: the same as --temperature].
    #[arg(long)]
    temperature_end: Option<f64>,
    /// Shape of the temperature schedule from --temperature to --temperature-end.
    #[arg(long, value_enum)]
    temperature_schedule: Option<ScheduleArg>,
    /// Hidden widths of each client's larger local teacher (the reference for compression
    /// ratio, speed-up and CKA without privacy; with privacy the shard ensemble is) [default:
    /// 512,256].
    #[arg(long, value_delimiter = ',')]
    teacher_hidden: Option<Vec<usize>>,
    /// Train no local teacher (no compression, speed-up or CKA without privacy).
    #[arg(long)]
    no_teacher: bool,
    /// Local-teacher steps on private data before the first round [default: the config's].
    #[arg(long)]
    teacher_local_steps: Option<usize>,
    /// Local-teacher steps per round once a target exists [default: the config's].
    #[arg(long)]
    teacher_steps_per_round: Option<usize>,
    /// Feature distillation: weight of the MSE between a learned projection of the student's
    /// representation and the local teacher's, on public records [default: 0, off].
    #[arg(long)]
    feature_weight: Option<f64>,
    /// Weight of a T^2 KL term from the local teacher's logits on public records [default: 0].
    #[arg(long)]
    teacher_logit_weight: Option<f64>,
    /// Augmentation distillation: the local-teacher terms use perturbed public records
    /// (one-pixel shifts for images, Gaussian jitter for tabular data).
    #[arg(long)]
    augment: bool,
    /// Self-distillation across rounds: weight of a T^2 KL term towards the student's own
    /// snapshot from the previous round [default: 0, off].
    #[arg(long)]
    self_distillation: Option<f64>,
    /// Do no harm: after the federation each client cross-validates a student trained against
    /// the target against one trained alone, holding out this fraction of its private records
    /// and of the target's rows in each fold, and keeps the federated student only if it is
    /// clearly better [default: 0.2 with --privacy shards, off without; 0: off].
    #[arg(long)]
    validation_fraction: Option<f64>,
    /// Mixup of public records: each public row of a batch is mixed with another by a weight
    /// drawn from Beta(a, a), its target by the same weight [default: 0, off].
    #[arg(long, value_name = "A")]
    public_mixup: Option<f64>,
    /// Rows of each step's public batch [default: --batch-size].
    #[arg(long)]
    public_batch_size: Option<usize>,
    /// Optimiser steps of the final distillation after the last round [default: 200 on
    /// digits, --steps-per-round otherwise].
    #[arg(long)]
    final_steps: Option<usize>,
    /// Learning rate in the last round and the final distillation [default: --lr throughout].
    #[arg(long)]
    lr_end: Option<f64>,
    /// Shape of the learning-rate schedule from --lr to --lr-end over the rounds.
    #[arg(long, value_enum)]
    lr_schedule: Option<ScheduleArg>,
    /// Keep the mean of the student's weights at the end of this many last rounds and after
    /// the final distillation [default: 3 on digits, 0 (off) otherwise].
    #[arg(long)]
    average_rounds: Option<usize>,
    /// Weight each public row's distillation term by the target's confidence in it
    /// (always on with --privacy shards).
    #[arg(long)]
    confidence_weighting: bool,
    /// Dynamic distillation: weight each public row by the target's reliability there (its
    /// confidence, its agreement with the local teacher) and its difficulty for the student
    /// ("--dynamic-weighting false" turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    dynamic_weighting: Option<bool>,
    /// Random sub-pixel shifts (bilinear) of up to this many pixels of training images
    /// [default: 0.75 on digits, 0 (off) otherwise; 0 turns them off].
    #[arg(long)]
    subpixel_shift: Option<f64>,
    /// Sharpen (below 1) the target's probabilities as softmax(log p / T') before distilling
    /// [default: unset, as received].
    #[arg(long)]
    target_temperature: Option<f64>,
    /// Synthetic data: private records per client.
    #[arg(long, default_value_t = 1000)]
    records_per_client: usize,
    /// Synthetic data: number of features.
    #[arg(long, default_value_t = 20)]
    features: usize,
    /// Number of classes: of the synthetic data [default: 10], or of --csv data, whose labels
    /// must then all be below it [default for --csv: the largest label + 1].
    #[arg(long)]
    classes: Option<usize>,
    /// Synthetic data: Gaussian components per class.
    #[arg(long, default_value_t = 2)]
    modes: usize,
    /// Synthetic data: records in the public reference set.
    #[arg(long, default_value_t = 500)]
    public_records: usize,
    /// Synthetic data: distance between mixture components, in within-component standard
    /// deviations (smaller is harder).
    #[arg(long, default_value_t = 5.0)]
    separation: f64,
    /// Privacy of released labels: none (non-private baseline) or shards (record-level
    /// differential privacy: subsample-and-aggregate with Gaussian noise, zCDP accounting).
    #[arg(long, value_enum, default_value_t = PrivacyArg::None)]
    privacy: PrivacyArg,
    /// Every client's total epsilon budget (with --privacy shards). A comma-separated list,
    /// e.g. 1,2,4,8,inf, runs a sweep and prints accuracy against epsilon.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    epsilon: Vec<String>,
    /// The delta of the budget.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Teachers per client (disjoint shards); 0 chooses one per record for nearest teachers,
    /// one per 20 records (at most 250) for mlp teachers.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// What each mlp shard teacher adds to a query's sum: soft (its probabilities) or hard
    /// (one vote for its top class) [default: soft]. Nearest teachers always vote one-hot.
    #[arg(long, value_enum)]
    votes: Option<VotesArg>,
    /// What each teacher is (with --privacy shards): nearest (votes for the label of its
    /// shard's record nearest the query, abstains beyond --radius) or mlp (trained on its
    /// shard) [default: nearest].
    #[arg(long, value_enum)]
    shard_teacher: Option<TeacherArg>,
    /// Nearest-neighbour teachers abstain beyond this distance (standardised units)
    /// [default: read off the public set].
    #[arg(long)]
    radius: Option<f64>,
    /// With --secure-aggregation: each nearest teacher votes on at most this many of a round's
    /// queries (its nearest), so a release's sensitivity no longer grows with its queries
    /// (0: no cap).
    #[arg(long, default_value_t = 1)]
    votes_per_teacher: usize,
    /// How noisy vote sums become released rows (with --privacy shards): vote-mass (the
    /// coordinator's mean adds up all nodes' votes) or normalised (row by row) [default:
    /// vote-mass].
    #[arg(long, value_enum)]
    rows: Option<RowsArg>,
    /// Hidden width of each teacher (with --privacy shards) [default: 64].
    #[arg(long)]
    shard_teacher_hidden: Option<usize>,
    /// Teacher steps on private data before the first release (with --privacy shards)
    /// [default: 100].
    #[arg(long)]
    shard_teacher_local_steps: Option<usize>,
    /// Teacher steps per round once a target exists (with --privacy shards) [default: 20].
    #[arg(long)]
    shard_teacher_steps_per_round: Option<usize>,
    /// With --rows normalised: floor of noisy rows, in noise standard deviations (0: plain
    /// clamp).
    #[arg(long)]
    clamp_floor: Option<f64>,
    /// Private students learn from the target as released, without first undoing the class
    /// imbalance of the federation's private data (see `distill::target::balance_classes`).
    #[arg(long)]
    no_balance: bool,
    /// Do no harm by prediction (with --privacy shards): a client whose planner predicts a
    /// signal-to-noise ratio (teachers / classes / sigma) below this keeps the student it would
    /// have trained alone [default: 1.5; 0 always trusts the target].
    #[arg(long)]
    trust_snr: Option<f64>,
    /// Decline to spend (with --privacy shards): a client whose planner predicts a
    /// signal-to-noise ratio below this releases nothing, leaves before its first release and
    /// keeps its local-only student [default: unset, always release].
    #[arg(long)]
    min_snr: Option<f64>,
    /// Public records asked per round [default: all every round without privacy; with privacy
    /// each record at most once, rho x (median client records)^2 / 6250 of them in all,
    /// between one per round and 400, spread over the rounds].
    #[arg(long)]
    queries_per_round: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw charts into this directory (created if missing), each as a PNG and an SVG file:
    /// accuracy-per-round (every client's test accuracy after each round as a faint line, their
    /// mean, the local-only mean and the centralised bound), epsilon-sweep (mean accuracy
    /// against epsilon beside the local-only mean; only with several --epsilon values) and
    /// aggregator-weights (each client's share of the aggregate in each round). The per-round
    /// charts draw one run, named in their subtitle: the first (seed --seed) with --repeats, at
    /// the last epsilon of a sweep, of the last aggregator with --compare-aggregators.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Write the split this run would use (test.csv, public.csv with its true labels, one
    /// client-NN.csv per client) into this directory and exit without running.
    #[arg(long, value_name = "DIR")]
    export_split: Option<PathBuf>,
    /// How the coordinator combines contributions: mean, median, trimmed-mean, confidence
    /// (per-query, from each label's entropy), reputation (per-node, agreement with the
    /// leave-one-out consensus over rounds) or dynamic (confidence x reputation).
    #[arg(long, default_value_t = AggregatorKind::Dynamic)]
    aggregator: AggregatorKind,
    /// Secure aggregation with distributed DP (with --privacy shards): every node masks its
    /// integer vote counts and adds a share of discrete Gaussian noise, so the coordinator sees
    /// only the sum and the noise is paid once per federation. --aggregator does not apply
    /// (nothing per node is visible).
    #[arg(long)]
    secure_aggregation: bool,
    /// With --secure-aggregation: nodes that may collude with the coordinator (the nodes price
    /// their noise shares so that the others' shares still reach the budget).
    #[arg(long, default_value_t = 1)]
    colluders: u32,
    /// With --secure-aggregation: nodes that may drop out after masking; nodes help unmask only
    /// when at least clients - dropouts survive.
    #[arg(long, default_value_t = 2)]
    dropouts: u32,
    /// Run the same federation once per aggregator and print one row per aggregator (and write
    /// them as `aggregators` to the JSON).
    #[arg(long)]
    compare_aggregators: bool,
    /// Fraction of clients that are byzantine: they corrupt every contribution (see --attack).
    /// Accuracy means are taken over the honest clients only.
    #[arg(long, default_value_t = 0.0)]
    byzantine: f64,
    /// How byzantine clients corrupt their labels: random (uniform simplex vectors), flip (each
    /// row's mass moved to the next class) or constant (all mass on class 0).
    #[arg(long, value_enum, default_value_t = Attack::Flip)]
    attack: Attack,
    /// Fraction of clients that vanish mid-round (each in a random round, after training and
    /// before sending) and do not come back.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Fraction of clients that answer every other round (the even ones) after its deadline;
    /// their late contributions are refused with the reason, and they carry on.
    #[arg(long, default_value_t = 0.0)]
    stragglers: f64,
    /// Seconds a straggler holds each contribution [default: 1.5 x the round deadline].
    #[arg(long)]
    straggler_delay: Option<f64>,
    /// The coordinator's round deadline in seconds [default: 600, or 10 with --stragglers].
    #[arg(long)]
    round_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RowsArg {
    /// One scale for all rows: the coordinator's mean adds up the nodes' votes.
    VoteMass,
    /// Each row clamped and renormalised on its own.
    Normalised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TeacherArg {
    /// A small MLP trained on its shard.
    Mlp,
    /// A nearest-neighbour rule over its shard.
    Nearest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VotesArg {
    /// Sum the teachers' probability vectors.
    Soft,
    /// Count the teachers' top classes (PATE's vote histogram).
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScheduleArg {
    /// The start value throughout.
    Constant,
    /// A straight line from start to end.
    Linear,
    /// Half a cosine from start to end.
    Cosine,
}

impl From<ScheduleArg> for fd_client::distill::ScheduleShape {
    fn from(a: ScheduleArg) -> fd_client::distill::ScheduleShape {
        use fd_client::distill::ScheduleShape;
        match a {
            ScheduleArg::Constant => ScheduleShape::Constant,
            ScheduleArg::Linear => ScheduleShape::Linear,
            ScheduleArg::Cosine => ScheduleShape::Cosine,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrivacyArg {
    /// Non-private baseline: students' probabilities leave without noise.
    None,
    /// Teachers on disjoint shards, summed votes with Gaussian noise.
    Shards,
}

/// Parses `--image-shape HxW` (e.g. `8x8`).
fn parse_image_shape(text: &str) -> Result<ImageShape, String> {
    let bad = || format!("'{text}' is not HEIGHTxWIDTH with two whole numbers above 0, e.g. 8x8");
    let (h, w) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let height: usize = h.trim().parse().map_err(|_| bad())?;
    let width: usize = w.trim().parse().map_err(|_| bad())?;
    if height == 0 || width == 0 {
        return Err(bad());
    }
    Ok(ImageShape { height, width })
}

fn parse_epsilon(text: &str) -> anyhow::Result<f64> {
    let e = match text.trim() {
        "inf" | "infinity" => f64::INFINITY,
        t => t
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--epsilon: '{t}' is not a number or inf"))?,
    };
    anyhow::ensure!(e > 0.0, "--epsilon: {e} must be > 0");
    Ok(e)
}

/// Small-batch candle training is fastest single-threaded, and the simulation already runs one
/// client per thread; candle reads `RAYON_NUM_THREADS` on every matrix product.
#[allow(unsafe_code)]
fn single_threaded_kernels() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before the runtime or any other thread exists,
        // so no thread can be reading the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
}

/// Candle allocates a fresh buffer for every tensor operation; glibc's malloc returns buffers
/// near its mmap threshold to the kernel each time, and the page faults cost more system time
/// than the arithmetic.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    single_threaded_kernels();
    let mut reporter = Reporter::new(std::io::stderr().is_terminal());
    init_tracing(&reporter);
    let args = Args::parse();
    let config = build_config(&args)?;
    anyhow::ensure!(
        !(args.compare_aggregators && args.epsilon.len() > 1),
        "--compare-aggregators and an epsilon sweep cannot be combined"
    );
    anyhow::ensure!(
        !(args.compare_aggregators && args.repeats > 1),
        "--compare-aggregators and --repeats cannot be combined"
    );
    if let Some(dir) = &args.export_split {
        let files = fd_sim::federation::export_split(&config, dir)?;
        println!("wrote {} files to {}", files.len(), dir.display());
        return Ok(());
    }
    let epsilons = parse_epsilons(&args.epsilon, config.privacy.mode)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = Outputs {
        json: args.json.as_deref(),
        plots: args.plots.as_deref(),
    };
    if args.compare_aggregators {
        return compare_aggregators(&runtime, config, epsilons[0], out, &mut reporter);
    }
    run_epsilons(
        &runtime,
        config,
        &epsilons,
        args.repeats,
        out,
        &mut reporter,
    )
}

/// Logs to stderr, at the level `RUST_LOG` asks for (by default warnings, and the progress
/// lines that stand in for the bars when stderr is not a terminal), with colour codes only on a
/// terminal, and through `reporter` so that log lines and progress bars do not tear each other.
fn init_tracing(reporter: &Reporter) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("warn,{}=info", fd_sim::progress::TARGET).into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(reporter.log_writer())
        .init();
}

/// Builds the simulation's configuration from the arguments, checking them on the way.
fn build_config(args: &Args) -> anyhow::Result<SimConfig> {
    check_run_args(args)?;
    let mut config = match &args.csv {
        Some(path) => csv_config(args, path)?,
        None => SimConfig::new(args.dataset),
    };
    config.clients = args.clients;
    config.rounds = args.rounds;
    config.beta = args.beta;
    config.seed = args.seed;
    if args.dataset == DatasetKind::Synthetic {
        apply_synthetic_args(args, &mut config.synthetic)?;
    }
    apply_model_args(args, &mut config.training);
    apply_optimisation_args(args, &mut config.training);
    apply_schedule_args(args, &mut config.training);
    apply_student_args(args, &mut config)?;
    config.queries_per_round = args.queries_per_round;
    config.aggregator = args.aggregator;
    config.secure_aggregation = args.secure_aggregation;
    config.colluders = args.colluders;
    config.dropouts = args.dropouts;
    apply_fault_args(args, &mut config)?;
    apply_privacy_args(args, &mut config.privacy);
    config.privacy.colluders = args.colluders;
    config.privacy.votes_per_teacher = args.votes_per_teacher;
    Ok(config)
}

/// Loads the `--csv` file and checks `--image-shape` against its feature columns.
fn csv_config(args: &Args, path: &Path) -> anyhow::Result<SimConfig> {
    let label = args
        .label
        .as_deref()
        .context("--csv needs --label COLUMN: the name of the label column")?;
    let csv = fd_sim::datasets::load_csv(path, label, args.classes)?;
    if let Some(shape) = args.image_shape {
        let pixels = shape.height * shape.width;
        anyhow::ensure!(
            pixels == csv.features,
            "--image-shape {}x{} is {pixels} pixels, but {} has {} feature columns (every column \
             but '{label}'); give a shape whose height x width is {}",
            shape.height,
            shape.width,
            path.display(),
            csv.features,
            csv.features
        );
    }
    Ok(SimConfig::from_csv(csv, args.image_shape))
}

/// Checks the number of clients, the number of rounds and the Dirichlet beta.
fn check_run_args(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        args.beta > 0.0 && args.beta.is_finite(),
        "--beta must be > 0"
    );
    Ok(())
}

/// Checks the synthetic-data arguments and copies them into `spec`.
fn apply_synthetic_args(args: &Args, spec: &mut SyntheticSpec) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.records_per_client >= 1,
        "--records-per-client must be at least 1"
    );
    anyhow::ensure!(args.features >= 1, "--features must be at least 1");
    let classes = args.classes.unwrap_or(10);
    anyhow::ensure!(classes >= 2, "--classes must be at least 2");
    anyhow::ensure!(
        args.public_records >= 1,
        "--public-records must be at least 1"
    );
    anyhow::ensure!(args.separation > 0.0, "--separation must be > 0");
    spec.records_per_client = args.records_per_client;
    spec.features = args.features;
    spec.classes = classes;
    spec.public_records = args.public_records;
    spec.separation = args.separation;
    anyhow::ensure!(args.modes >= 1, "--modes must be at least 1");
    spec.modes = args.modes;
    Ok(())
}

/// Copies the student architecture and local-teacher arguments that were given into `t`.
fn apply_model_args(args: &Args, t: &mut TrainConfig) {
    if let Some(v) = &args.hidden {
        t.hidden.clone_from(v);
    }
    if let Some(v) = &args.cnn_channels {
        t.cnn.channels.clone_from(v);
    }
    if let Some(v) = &args.cnn_hidden {
        t.cnn.hidden.clone_from(v);
    }
    if let Some(v) = &args.teacher_hidden {
        t.teacher.hidden.clone_from(v);
    }
    t.teacher.enabled = !args.no_teacher;
    if let Some(v) = args.teacher_local_steps {
        t.teacher.local_steps = v;
    }
    if let Some(v) = args.teacher_steps_per_round {
        t.teacher.steps_per_round = v;
    }
    if let Some(v) = args.feature_weight {
        t.teacher.feature_weight = v;
    }
    if let Some(v) = args.teacher_logit_weight {
        t.teacher.logit_weight = v;
    }
    t.teacher.augment = args.augment;
}

/// Copies the optimiser, batching, augmentation and regularisation arguments that were given
/// into `t`.
fn apply_optimisation_args(args: &Args, t: &mut TrainConfig) {
    if let Some(v) = args.local_steps {
        t.local_steps = v;
    }
    if let Some(v) = args.steps_per_round {
        t.steps_per_round = v;
    }
    if let Some(v) = args.lr {
        t.learning_rate = v;
    }
    if let Some(v) = args.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = args.input_noise {
        t.input_noise = v;
    }
    if let Some(v) = args.max_shift {
        t.max_shift = v;
    }
    if let Some(v) = args.weight_decay {
        t.weight_decay = v;
    }
    if let Some(v) = args.dropout {
        t.dropout = v;
    }
}

/// Copies the alpha, temperature and self-distillation arguments that were given into `t`.
fn apply_schedule_args(args: &Args, t: &mut TrainConfig) {
    if let Some(v) = args.alpha_start {
        t.alpha_start = v;
    }
    if let Some(v) = args.alpha_end {
        t.alpha_end = v;
    }
    if let Some(v) = args.alpha_schedule {
        t.alpha_schedule = v.into();
    }
    if let Some(v) = args.temperature {
        t.temperature = v;
    }
    if let Some(v) = args.temperature_end {
        t.temperature_end = Some(v);
    }
    if let Some(v) = args.temperature_schedule {
        t.temperature_schedule = v.into();
    }
    if let Some(v) = args.validation_fraction {
        t.validation_fraction = Some(v);
    }
    if let Some(v) = args.self_distillation {
        t.self_distillation = v;
    }
    if let Some(v) = args.public_mixup {
        t.public_mixup = v;
    }
    if let Some(v) = args.public_batch_size {
        t.public_batch_size = Some(v);
    }
    if let Some(v) = args.final_steps {
        t.final_steps = Some(v);
    }
    if let Some(v) = args.lr_end {
        t.learning_rate_end = Some(v);
    }
    if let Some(v) = args.lr_schedule {
        t.learning_rate_schedule = v.into();
    }
    if let Some(v) = args.average_rounds {
        t.average_rounds = v;
    }
    if let Some(v) = args.subpixel_shift {
        t.subpixel_shift = v;
    }
    if let Some(v) = args.target_temperature {
        t.target_temperature = Some(v);
    }
    if args.confidence_weighting {
        t.confidence_weighting = true;
    }
    if let Some(v) = args.dynamic_weighting {
        t.dynamic_weighting = v;
    }
}

/// Checks that the student mix suits the data, sets it and validates the training settings.
fn apply_student_args(args: &Args, config: &mut SimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.student == fd_sim::students::StudentMix::Mlp || config.training.image.is_some(),
        "--student {} needs image data: use --dataset digits, or --csv with --image-shape",
        format!("{:?}", args.student).to_lowercase()
    );
    config.students = args.student;
    config
        .training
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid training settings: {m}"))?;
    Ok(())
}

/// Copies the byzantine, dropout and straggler arguments into `config` and validates them.
fn apply_fault_args(args: &Args, config: &mut SimConfig) -> anyhow::Result<()> {
    config.faults.byzantine = args.byzantine;
    config.faults.attack = args.attack;
    config.faults.drop_rate = args.drop_rate;
    config.faults.stragglers = args.stragglers;
    if let Some(v) = args.straggler_delay {
        anyhow::ensure!(
            v > 0.0 && v.is_finite(),
            "--straggler-delay must be > 0 seconds"
        );
        config.faults.straggler_delay_secs = v;
    }
    if let Some(v) = args.round_timeout {
        anyhow::ensure!(v >= 1, "--round-timeout must be at least 1 second");
        config.round_timeout_secs = Some(v);
    }
    config
        .faults
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid fault settings: {m}"))?;
    Ok(())
}

/// Copies the privacy arguments that were given into `p` (all but the epsilon budget).
fn apply_privacy_args(args: &Args, p: &mut PrivacyConfig) {
    p.mode = match args.privacy {
        PrivacyArg::None => PrivacyMode::None,
        PrivacyArg::Shards => PrivacyMode::Shards,
    };
    p.delta = args.delta;
    p.shards = args.shards;
    if let Some(v) = args.clamp_floor {
        p.clamp_floor = v;
    }
    p.balance_classes = !args.no_balance;
    if let Some(v) = args.trust_snr {
        p.trust_snr = v;
    }
    p.min_snr = args.min_snr;
    if let Some(v) = args.votes {
        p.votes = match v {
            VotesArg::Soft => Votes::Soft,
            VotesArg::Hard => Votes::Hard,
        };
    }
    if let Some(v) = args.shard_teacher {
        p.shard_teacher = match v {
            TeacherArg::Mlp => TeacherKind::Mlp,
            TeacherArg::Nearest => TeacherKind::Nearest,
        };
    }
    if args.radius.is_some() {
        p.radius = args.radius;
    }
    if let Some(v) = args.rows {
        p.rows = match v {
            RowsArg::VoteMass => ReleaseRows::VoteMass,
            RowsArg::Normalised => ReleaseRows::Normalised,
        };
    }
    if let Some(v) = args.shard_teacher_hidden {
        p.teacher_hidden = v;
    }
    if let Some(v) = args.shard_teacher_local_steps {
        p.teacher_local_steps = v;
    }
    if let Some(v) = args.shard_teacher_steps_per_round {
        p.teacher_steps_per_round = v;
    }
}

/// Parses the `--epsilon` list; more than one value (a sweep) needs `--privacy shards`.
fn parse_epsilons(texts: &[String], mode: PrivacyMode) -> anyhow::Result<Vec<f64>> {
    let epsilons = texts
        .iter()
        .map(|t| parse_epsilon(t))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    anyhow::ensure!(
        epsilons.len() == 1 || mode == PrivacyMode::Shards,
        "an epsilon sweep needs --privacy shards"
    );
    Ok(epsilons)
}

/// Where results go besides the terminal.
#[derive(Debug, Clone, Copy)]
struct Outputs<'a> {
    /// `--json`.
    json: Option<&'a Path>,
    /// `--plots`.
    plots: Option<&'a Path>,
}

/// Runs the federation once, with its progress shown under `label`.
fn run_once(
    runtime: &tokio::runtime::Runtime,
    config: &SimConfig,
    label: &str,
    reporter: &mut Reporter,
) -> anyhow::Result<SimResult> {
    let progress = reporter.run(label, config.rounds);
    let result = runtime.block_on(federation::run_with_progress(config, progress.clone()));
    reporter.run_done(&progress);
    result
}

/// The budget of a run, for labels: `epsilon 2`, `epsilon inf` or `no privacy`.
fn budget(config: &SimConfig) -> String {
    match config.privacy.mode {
        PrivacyMode::None => "no privacy".into(),
        PrivacyMode::Shards => format!("epsilon {}", config.privacy.epsilon),
    }
}

/// Runs the federation `repeats` times per epsilon (seeds counting up from the configured
/// one), printing each table (one line a run when repeating), then the sweep table (with more
/// than one epsilon or repeat), writing the last result (and the sweep) as JSON and drawing the
/// charts.
fn run_epsilons(
    runtime: &tokio::runtime::Runtime,
    mut config: SimConfig,
    epsilons: &[f64],
    repeats: u32,
    out: Outputs<'_>,
    reporter: &mut Reporter,
) -> anyhow::Result<()> {
    let summary = epsilons.len() > 1 || repeats > 1;
    let first_seed = config.seed;
    let last_seed = first_seed + u64::from(repeats) - 1;
    reporter.start_runs(epsilons.len() as u64 * u64::from(repeats));
    let mut rows = Vec::new();
    let mut last = None;
    // The run the per-round charts draw: the first of the last epsilon.
    let mut drawn = None;
    for &epsilon in epsilons {
        set_epsilon(&mut config, epsilon)?;
        let mut results = Vec::new();
        for r in 0..u64::from(repeats) {
            config.seed = first_seed + r;
            let label = format!("{}, seed {}", budget(&config), config.seed);
            let result = run_once(runtime, &config, &label, reporter)?;
            if repeats == 1 {
                let gap = if summary { "\n" } else { "" };
                reporter.print(&format!("{}{gap}", fd_sim::report::table(&result)));
            } else {
                reporter.print(&format!(
                    "{}\n",
                    fd_sim::report::repeat_line(epsilon, config.seed, &result)
                ));
            }
            results.push(result);
        }
        rows.push(fd_sim::report::SweepRow::from_results(epsilon, &results));
        drawn = results.first().cloned();
        last = results.pop();
    }
    reporter.finish();
    if summary {
        reporter.print(&format!(
            "{}accuracy against epsilon (per record of each node's private data), {repeats} \
             run(s) each, seeds {first_seed}..={last_seed}:\n{}",
            if repeats > 1 { "\n" } else { "" },
            fd_sim::report::sweep_table(&rows)
        ));
    }
    if let (Some(dir), Some(result)) = (out.plots, &drawn) {
        let mut run = format!("seed {}", result.config.seed);
        if repeats > 1 {
            run.push_str(&format!(", the first of {repeats} runs"));
        }
        if epsilons.len() > 1 {
            run.push_str(", the last epsilon of the sweep");
        }
        let seeds = if repeats > 1 {
            format!("{repeats} runs (seeds {first_seed}..={last_seed})")
        } else {
            format!("1 run (seed {first_seed})")
        };
        let sweep = plots::epsilon_sweep(&rows, result, &seeds);
        let charts = plots::run_charts(result, &run, sweep);
        reporter.print(&plots::describe(&plots::write_charts(dir, charts)?));
    }
    if let (Some(path), Some(result)) = (out.json, last) {
        let mut value = serde_json::to_value(&result)?;
        if summary {
            value["sweep"] = serde_json::to_value(&rows)?;
        }
        write_json(path, &value, reporter)?;
    }
    Ok(())
}

/// Sets the epsilon budget and validates the privacy settings.
fn set_epsilon(config: &mut SimConfig, epsilon: f64) -> anyhow::Result<()> {
    config.privacy.epsilon = epsilon;
    config
        .privacy
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid privacy settings: {m}"))
}

/// Writes `value` as pretty-printed JSON to `path` and says so.
fn write_json(path: &Path, value: &serde_json::Value, reporter: &Reporter) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    reporter.print(&format!("results written to {}\n", path.display()));
    Ok(())
}

/// Runs the federation once per aggregator and prints (and writes, and draws) one row per
/// aggregator.
fn compare_aggregators(
    runtime: &tokio::runtime::Runtime,
    mut config: federation::SimConfig,
    epsilon: f64,
    out: Outputs<'_>,
    reporter: &mut Reporter,
) -> anyhow::Result<()> {
    set_epsilon(&mut config, epsilon)?;
    reporter.start_runs(AggregatorKind::ALL.len() as u64);
    let mut rows = Vec::new();
    let mut last = None;
    for kind in AggregatorKind::ALL {
        config.aggregator = kind;
        let label = format!("aggregator {kind}");
        let result = run_once(runtime, &config, &label, reporter)?;
        reporter.print(&format!("{}\n", fd_sim::report::table(&result)));
        rows.push(AggregatorRow::from_result(&result));
        last = Some(result);
    }
    reporter.finish();
    reporter.print(&format!(
        "aggregators compared (accuracy over honest clients):\n{}",
        fd_sim::report::aggregator_table(&rows)
    ));
    if let (Some(dir), Some(result)) = (out.plots, &last) {
        let run = format!(
            "seed {}, the last of the {} aggregators compared",
            result.config.seed,
            rows.len()
        );
        let sweep = Err("--compare-aggregators runs a single epsilon".to_owned());
        let charts = plots::run_charts(result, &run, sweep);
        reporter.print(&plots::describe(&plots::write_charts(dir, charts)?));
    }
    if let (Some(path), Some(result)) = (out.json, last) {
        let mut value = serde_json::to_value(&result)?;
        value["aggregators"] = serde_json::to_value(&rows)?;
        write_json(path, &value, reporter)?;
    }
    Ok(())
}
