//! The node's configuration file (`node.toml`).
//!
//! Relative paths in the file are resolved against the file's own directory, so a config and its
//! certificates can move together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::distill::{Temperature, TrainConfig};
pub use crate::privacy::release::ReleaseRows;
use crate::privacy::teachers::{TeacherKind, Votes};

/// A config that could not be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The config file (or `<flags>` when built from the command line alone).
    pub file: String,
    /// What is wrong and where.
    pub message: String,
}

/// Everything a node needs to join a federation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Coordinator address, e.g. `"127.0.0.1:4433"`.
    pub coordinator: SocketAddr,
    /// Name on the coordinator's certificate (default `"localhost"`).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by `fd-certs issue`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Private labelled records (CSV with a header). They never leave the node.
    pub private_csv: PathBuf,
    /// Public reference records (CSV, same feature columns, no label).
    pub public_csv: PathBuf,
    /// Name of the label column in the private CSV.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Number of classes; labels are integers `0..classes`.
    pub classes: usize,
    /// Fraction of private records held out to measure accuracy (default 0.2).
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// Where the student and the report are written.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Seed for the holdout split, weight initialisation and batches.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How long the first join keeps retrying a coordinator it cannot reach, in seconds, with
    /// the same back-off as reconnects (default 60; 0: give up at once). A coordinator that
    /// refuses the node is not retried.
    #[serde(default = "default_join_retry")]
    pub join_retry_secs: u64,
    /// Training schedule and student architecture.
    #[serde(default)]
    pub training: TrainConfig,
    /// Differential privacy of the labels this node releases.
    #[serde(default)]
    pub privacy: PrivacyConfig,
}

/// How the node labels public records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyMode {
    /// Non-private baseline: the student's own probabilities leave the node without noise.
    #[default]
    None,
    /// Record-level differential privacy by subsample-and-aggregate: teachers on disjoint
    /// shards, their summed probabilities released with Gaussian noise (zCDP).
    Shards,
}

/// The `[privacy]` table of the node config.
///
/// The privacy unit is **one record of this node's private data, under replace-one
/// adjacency**: what leaves the node is differentially private with respect to replacing one
/// record by another, against everyone outside the node, the coordinator included. Adding or
/// removing a record is not covered: the node's record count is public (Hello sends it, and
/// the number of teachers and the vote-mass scale depend on it). A person with `r` records
/// here is protected as `r` replacements, at roughly `r^2` times the per-record rho.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// `"none"` (non-private baseline) or `"shards"` (differentially private).
    pub mode: PrivacyMode,
    /// Total epsilon this node may spend over the whole run (`inf`: no limit and no noise).
    pub epsilon: f64,
    /// The delta at which `epsilon` is measured.
    pub delta: f64,
    /// Number of teachers (disjoint shards of the private records); 0 chooses one per record
    /// for `"nearest"` teachers and one per 20 records, between 1 and 250, for `"mlp"` ones.
    pub shards: usize,
    /// Noise standard deviation per release. Unset: chosen so the coordinator's planned
    /// queries exactly use the budget.
    pub sigma: Option<f64>,
    /// The privacy ledger (SQLite); default next to the private data file
    /// (`<private_csv>.privacy-ledger.sqlite`), so the budget stays with the data. It is bound
    /// to the data's fingerprint and refuses other data.
    /// Keep it: it remembers what was spent across restarts.
    pub ledger: Option<PathBuf>,
    /// Hidden width of each teacher (`shard_teacher = "mlp"` only).
    pub teacher_hidden: usize,
    /// Teacher steps on private data before the first release (`"mlp"` teachers only).
    pub teacher_local_steps: usize,
    /// Teacher steps per round once a target exists (`"mlp"` teachers only).
    pub teacher_steps_per_round: usize,
    /// Rows of its shard each teacher sees per step (`"mlp"` teachers only).
    pub teacher_batch_size: usize,
    /// With `rows = "normalised"` only: values of each noisy row are lowered by this many noise
    /// standard deviations and clamped at 0 before renormalising (0: plain clamp). Costs no
    /// privacy.
    pub clamp_floor: f64,
    /// What each `"mlp"` teacher puts in a query's sum: `"soft"` (its probability vector) or
    /// `"hard"` (one vote for its top class). Same sensitivity either way. Nearest-neighbour
    /// teachers always vote one-hot (or abstain).
    pub votes: Votes,
    /// What each shard's teacher is (not the `[training.teacher]` local teacher): `"nearest"` (votes for the label of its shard's record nearest
    /// to the query, or abstains if that is beyond `radius`) or `"mlp"` (a small network
    /// trained on its shard and distilled from the global target).
    pub shard_teacher: TeacherKind,
    /// Nearest-neighbour teachers abstain when their nearest record is farther than this from
    /// the query (standardised feature units). Unset: read off the public set (the median
    /// distance from a public record to its `public records / (2 x classes)`-th nearest
    /// public neighbour), which costs no privacy.
    pub radius: Option<f64>,
    /// How noisy vote sums become released rows: `"vote-mass"` (rows keep how many teachers
    /// voted, so the coordinator's mean adds up all nodes' votes) or `"normalised"` (each row
    /// clamped at `clamp_floor` noise deviations and renormalised on its own).
    pub rows: ReleaseRows,
    /// Undo the class imbalance of the federation's private data in the target before the
    /// student learns from it (`rows = "vote-mass"` only; see
    /// `distill::target::balance_classes`). Post-processing: costs no privacy.
    pub balance_classes: bool,
    /// Decline to spend: before its first release the node predicts the signal-to-noise ratio
    /// of its vote sums from public facts (`fd-client plan`); below this it releases nothing,
    /// spends nothing, leaves the federation and keeps its local-only student. Unset: always
    /// release.
    pub min_snr: Option<f64>,
    /// Below this predicted signal-to-noise ratio the node's student does not trust the
    /// federation's target: the node still contributes, but keeps the student it would have
    /// trained alone (0: always trust). See `privacy::plan::DEFAULT_TRUST_SNR`. With a fixed
    /// `sigma` no plan is made and the target is always trusted.
    pub trust_snr: f64,
    /// Secure aggregation: how many other nodes this node assumes may collude with the
    /// coordinator. It prices its noise share so that the shares of the survivors beyond them
    /// reach the budget, and refuses a round whose terms (threshold, fewest survivors) would
    /// not hold against that many.
    pub colluders: u32,
    /// Secure aggregation, nearest-neighbour teachers: each teacher votes on at most this many
    /// of a round's queries (the ones nearest its record), so one record moves at most this
    /// many votes and the release's sensitivity is `sqrt(2 x votes_per_teacher)` however many
    /// queries it answers: a coordinator can ask many records a round for the same noise.
    /// 0: every teacher votes on every query within the radius.
    pub votes_per_teacher: usize,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            mode: PrivacyMode::None,
            epsilon: 2.0,
            delta: 1e-5,
            shards: 0,
            sigma: None,
            ledger: None,
            teacher_hidden: 64,
            teacher_local_steps: 100,
            teacher_steps_per_round: 20,
            teacher_batch_size: 16,
            clamp_floor: 1.0,
            votes: Votes::Soft,
            shard_teacher: TeacherKind::Nearest,
            radius: None,
            rows: ReleaseRows::VoteMass,
            balance_classes: true,
            min_snr: None,
            trust_snr: crate::privacy::plan::DEFAULT_TRUST_SNR,
            colluders: 1,
            votes_per_teacher: 1,
        }
    }
}

impl PrivacyConfig {
    /// The cap on each teacher's votes in a secure release: `votes_per_teacher` for nearest
    /// teachers (`None` for 0), `None` for MLP teachers, which vote on every query.
    pub fn vote_cap(&self) -> Option<usize> {
        (self.shard_teacher == TeacherKind::Nearest && self.votes_per_teacher > 0)
            .then_some(self.votes_per_teacher)
    }

    /// Whether private students balance the target's classes before learning from it:
    /// `balance_classes` is on, the node is private, and rows are vote mass (normalised rows
    /// have lost the vote counts that balancing reads).
    pub fn balances_classes(&self) -> bool {
        self.mode == PrivacyMode::Shards
            && self.balance_classes
            && self.rows == ReleaseRows::VoteMass
    }

    /// Teachers for `records` private records: `shards`, or with 0 the default for the
    /// teacher kind (`privacy::teachers::default_shards`).
    pub fn teachers(&self, records: usize) -> usize {
        match self.shards {
            0 => crate::privacy::teachers::default_shards(records, self.shard_teacher),
            k => k,
        }
    }

    /// Whether a private node releases its summed votes without noise (an infinite budget and
    /// no fixed sigma): then there is nothing to account and no ledger is kept.
    pub fn noiseless(&self) -> bool {
        self.epsilon.is_infinite() && self.sigma.is_none()
    }

    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == PrivacyMode::None {
            return Ok(());
        }
        crate::privacy::Budget {
            epsilon: self.epsilon,
            delta: self.delta,
        }
        .validate()
        .map_err(|e| format!("privacy: {e}"))?;
        if let Some(s) = self.sigma
            && !(s > 0.0 && s.is_finite())
        {
            return Err(format!("privacy.sigma must be > 0, got {s}"));
        }
        if let Some(s) = self.min_snr
            && !(s >= 0.0 && s.is_finite())
        {
            return Err(format!(
                "privacy.min_snr must be a finite number >= 0, got {s}"
            ));
        }
        if !(self.trust_snr >= 0.0 && self.trust_snr.is_finite()) {
            return Err(format!(
                "privacy.trust_snr must be a finite number >= 0, got {}",
                self.trust_snr
            ));
        }
        if self.teacher_hidden == 0 || self.teacher_batch_size == 0 {
            return Err("privacy.teacher_hidden and privacy.teacher_batch_size must be > 0".into());
        }

        if let Some(r) = self.radius
            && !(r > 0.0 && r.is_finite())
        {
            return Err(format!("privacy.radius must be > 0, got {r}"));
        }
        if !(self.clamp_floor >= 0.0 && self.clamp_floor.is_finite()) {
            return Err(format!(
                "privacy.clamp_floor must be >= 0, got {}",
                self.clamp_floor
            ));
        }
        Ok(())
    }
}

/// The default distillation temperature for image data (tabular data: 4, `TrainConfig`'s).
pub const IMAGE_TEMPERATURE: f64 = 2.0;

/// Whether the TOML text sets `[training] key` explicitly.
fn sets_training_key(text: &str, key: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("training")?.as_table().map(|t| t.contains_key(key)))
        .unwrap_or(false)
}

fn default_server_name() -> String {
    "localhost".into()
}
fn default_label_column() -> String {
    "label".into()
}
fn default_holdout() -> f64 {
    0.2
}
fn default_output_dir() -> PathBuf {
    PathBuf::from("fd-node-out")
}
fn default_seed() -> u64 {
    1
}

fn default_join_retry() -> u64 {
    DEFAULT_JOIN_RETRY_SECS
}

/// How long a node's first join retries by default, in seconds.
pub const DEFAULT_JOIN_RETRY_SECS: u64 = 60;

/// The longest first-join retry accepted, in seconds (a day): beyond it a wait is a
/// misconfiguration, and it keeps every deadline far from overflowing the clock.
pub const MAX_JOIN_RETRY_SECS: u64 = 86_400;

/// `config` with each `KEY=VALUE` of `settings` applied (`--set`; see [`fd_cli::settings`]).
pub fn apply_settings(config: &NodeConfig, settings: &[String]) -> Result<NodeConfig, String> {
    fd_cli::settings::apply(config, settings)
}

impl NodeConfig {
    /// Reads and validates a TOML config; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            message: e.to_string(),
        })?;
        // The default temperature depends on the data kind (DESIGN.md): 2 for images, 4 (the
        // struct default) for tabular data. Only a file that leaves it unset gets the image one.
        if config.training.image.is_some() && !sets_training_key(&text, "temperature") {
            config.training.temperature = Temperature::Fixed(IMAGE_TEMPERATURE);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.ca,
            &mut config.cert,
            &mut config.key,
            &mut config.private_csv,
            &mut config.public_csv,
            &mut config.output_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = config.privacy.ledger.as_mut()
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        config
            .validate()
            .map_err(|message| ConfigError { file, message })?;
        Ok(config)
    }

    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.classes < 2 {
            return Err(format!("classes must be >= 2, got {}", self.classes));
        }
        if self.classes > u16::MAX as usize {
            return Err(format!(
                "classes must be <= {}, got {}",
                u16::MAX,
                self.classes
            ));
        }
        if self.join_retry_secs > MAX_JOIN_RETRY_SECS {
            return Err(format!(
                "join_retry_secs must be at most {MAX_JOIN_RETRY_SECS} (a day), got {}",
                self.join_retry_secs
            ));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return Err(format!(
                "holdout_fraction must be in [0, 1), got {}",
                self.holdout_fraction
            ));
        }
        self.training.validate()?;
        self.privacy.validate()
    }
}

/// A complete node config with every key at its default, commented (`fd-client --print-config`).
/// The required keys hold placeholders; optional keys without a default are commented out.
/// Tests check that it parses to the defaults and names every key the config has.
pub const REFERENCE: &str = r#"# fd-client node config: every key, at its default. Paths are relative to this file.
coordinator = "127.0.0.1:4433"   # required: the coordinator's UDP address
server_name = "localhost"        # a name in the coordinator's certificate (fd-certs issue --san)
ca = "ca.pem"                    # required: the federation CA certificate (PEM)
cert = "node.pem"                # required: this node's certificate (fd-certs issue --name)
key = "node.key"                 # required: this node's private key (PEM)
private_csv = "private.csv"      # required: numeric features + the label column; never leaves the node
public_csv = "public.csv"        # required: the federation's public file (same features; a label column is ignored)
label_column = "label"           # the label column of private_csv (integers 0..classes)
classes = 10                     # required: number of classes
holdout_fraction = 0.2           # private records held out to measure the student (small: noisy)
output_dir = "fd-node-out"       # model.safetensors, model.json, report.json (a finished run is kept: --force)
seed = 1                         # holdout split, initialisation, batches
join_retry_secs = 60             # how long the first join retries an unreachable coordinator (0: once)

[training]
architecture = "mlp"             # "mlp" (hidden) or "cnn" ([training.cnn]; needs image)
hidden = [256]                   # the MLP student's hidden widths
dropout = 0.0                    # after each dense hidden layer, while training
learning_rate = 0.001            # AdamW
weight_decay = 0.0001            # AdamW
batch_size = 64
local_steps = 300                # steps on private records before the first contribution
steps_per_round = 200            # steps per round once a target exists
temperature = 4.0                # 2 by default when image is set; "auto": search on own records
# temperature_end = 2.0          # the last round's temperature (temperature_schedule)
temperature_schedule = "constant" # "constant", "linear" or "cosine"
alpha_start = 0.7                # weight of the private cross-entropy in the first round...
alpha_end = 0.3                  # ...and in the last
alpha_schedule = "linear"        # "constant", "linear" or "cosine"
input_noise = 0.5                # Gaussian jitter on training inputs (standardised units)
max_shift = 0                    # random image shifts in pixels (image data)
confidence_weighting = false     # weight target rows by their confidence
dynamic_weighting = false        # weight public rows by target reliability and difficulty
seed = 1                         # overridden by the top-level seed
self_distillation = 0.0          # pull towards the previous round's own student (0: off)
# image = { height = 8, width = 8 }  # image data: pixels row-major
# validation_fraction = 0.2      # do-no-harm check folds: 0.2 for private nodes, off otherwise; 0: off
public_mixup = 0.0               # mixup of public rows and their targets, Beta(a, a) (0: off)
# public_batch_size = 64         # public rows a step (default: batch_size)
# final_steps = 200              # steps of the final distillation (default: steps_per_round)
# learning_rate_end = 0.0005     # the last round's learning rate (learning_rate_schedule)
learning_rate_schedule = "linear" # "constant", "linear" or "cosine"
average_rounds = 0               # keep the mean weights of the last rounds' students (0: off)
subpixel_shift = 0.0             # random sub-pixel image shifts, bilinear (image data; 0: off)
# target_temperature = 1.0       # sharpen (< 1) or soften (> 1) the target before distilling

[training.cnn]                   # with architecture = "cnn"
channels = [8, 16]               # 3x3 convolutions, a 2x2 max-pool between them
kernel = 3
hidden = []

[training.teacher]               # a larger local teacher; it never leaves the node
enabled = true
hidden = [512, 256]
local_steps = 200
steps_per_round = 20
feature_weight = 0.0             # feature distillation from it (MSE through a projection)
logit_weight = 0.0               # distil its logits on public records
augment = false                  # ...on perturbed public records

[privacy]
mode = "none"                    # "none": no noise; "shards": record-level differential privacy
epsilon = 2.0                    # the node's total budget over the run
delta = 0.00001                  # must be below 1 / records
shards = 0                       # teachers; 0 = one per record (nearest), one per 20 records up to 250 (mlp)
shard_teacher = "nearest"        # "nearest" or "mlp"
teacher_hidden = 64              # mlp shard teachers: hidden width
teacher_local_steps = 100        # mlp shard teachers: steps before the first release
teacher_steps_per_round = 20     # mlp shard teachers: steps per round
teacher_batch_size = 16          # mlp shard teachers: batch size
clamp_floor = 1.0
votes = "soft"                   # mlp shard teachers: "soft" or "hard" votes
rows = "vote-mass"               # "vote-mass" or "normalised"
balance_classes = true           # undo the federation's class imbalance in the target (free)
trust_snr = 1.5                  # below this predicted signal-to-noise the node keeps its local-only student
colluders = 1                    # secure aggregation: other nodes assumed to collude with the coordinator
votes_per_teacher = 1            # secure, nearest teachers: queries each teacher votes on a round (0: all)
# min_snr = 1.0                  # below this it releases nothing and leaves (fd-client plan)
# sigma = 10.0                   # fixed noise; default: spread the budget over the planned queries
# radius = 4.5                   # nearest teachers abstain beyond it; default: read off the public set
# ledger = "ledger.sqlite"       # default: next to private_csv (<file>.privacy-ledger.sqlite)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The config `REFERENCE` stands for: its placeholders and every default.
    fn reference_default() -> NodeConfig {
        NodeConfig {
            coordinator: "127.0.0.1:4433".parse().expect("address"),
            server_name: default_server_name(),
            ca: "ca.pem".into(),
            cert: "node.pem".into(),
            key: "node.key".into(),
            private_csv: "private.csv".into(),
            public_csv: "public.csv".into(),
            label_column: default_label_column(),
            classes: 10,
            holdout_fraction: default_holdout(),
            output_dir: default_output_dir(),
            seed: default_seed(),
            join_retry_secs: DEFAULT_JOIN_RETRY_SECS,
            training: TrainConfig::default(),
            privacy: PrivacyConfig::default(),
        }
    }

    #[test]
    fn the_printed_reference_config_is_the_defaults_and_names_every_key() {
        let parsed: NodeConfig = toml::from_str(REFERENCE).expect("reference parses");
        assert_eq!(parsed, reference_default());
        // Every key the config serialises (Options that are set included) is in the text,
        // set or commented out, under its own name.
        let mut full = reference_default();
        full.training.temperature_end = Some(2.0);
        full.training.validation_fraction = Some(0.2);
        full.training.public_batch_size = Some(64);
        full.training.final_steps = Some(200);
        full.training.learning_rate_end = Some(0.0005);
        full.training.target_temperature = Some(1.0);
        full.training.image = Some(crate::distill::ImageShape {
            height: 8,
            width: 8,
        });
        full.privacy.sigma = Some(1.0);
        full.privacy.ledger = Some("l".into());
        full.privacy.radius = Some(1.0);
        full.privacy.min_snr = Some(1.0);
        let keys = fd_cli::reference::leaf_keys(&toml::Table::try_from(&full).expect("serialises"));
        assert!(keys.len() > 50, "{keys:?}");
        for key in keys {
            assert!(
                fd_cli::reference::names(REFERENCE, &key),
                "--print-config does not name {key}"
            );
        }
        // The commented-out keys are real: uncommented, the text still parses, and sets them.
        let uncommented = fd_cli::reference::uncommented(REFERENCE);
        let all: NodeConfig = toml::from_str(&uncommented).expect("uncommented parses");
        assert_eq!(all.privacy.min_snr, Some(1.0));
        assert_eq!(all.privacy.ledger, Some("ledger.sqlite".into()));
        assert!(all.training.image.is_some() && all.training.temperature_end.is_some());
    }

    #[test]
    fn settings_reach_nested_keys_and_refuse_unknown_ones_by_name() {
        let base = reference_default();
        let set = |s: &[&str]| {
            apply_settings(&base, &s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let c = set(&[
            "training.local_steps=500",
            "privacy.mode=shards",
            "training.hidden=[64, 32]",
            "holdout_fraction = 0.3",
        ])
        .expect("applies");
        assert_eq!(c.training.local_steps, 500);
        assert_eq!(c.privacy.mode, PrivacyMode::Shards);
        assert_eq!(c.training.hidden, [64, 32]);
        assert_eq!(c.holdout_fraction, 0.3);
        let msg = set(&["training.local_stepz=5"]).expect_err("unknown key");
        assert!(msg.contains("local_stepz"), "{msg}");
        let msg = set(&["training.local_steps=many"]).expect_err("wrong type");
        assert!(msg.contains("local_steps"), "{msg}");
        assert!(set(&["no-equals-sign"]).is_err());
        assert!(
            set(&["seed.x=1"])
                .expect_err("not a table")
                .contains("seed")
        );
    }

    /// The keys a node config cannot do without, classes aside.
    const REQUIRED: &str = "coordinator = \"127.0.0.1:4433\"\nca = \"a\"\ncert = \"b\"\n\
                            key = \"c\"\nprivate_csv = \"d\"\npublic_csv = \"e\"\n";

    /// Balancing reads vote counts: only private nodes with vote-mass rows do it, and the
    /// setting turns it off.
    #[test]
    fn only_private_vote_mass_nodes_balance_classes() {
        let private = PrivacyConfig {
            mode: PrivacyMode::Shards,
            ..PrivacyConfig::default()
        };
        assert!(private.balances_classes());
        assert!(!PrivacyConfig::default().balances_classes(), "mode none");
        let normalised = PrivacyConfig {
            rows: ReleaseRows::Normalised,
            ..private.clone()
        };
        assert!(!normalised.balances_classes());
        let off = PrivacyConfig {
            balance_classes: false,
            ..private
        };
        assert!(!off.balances_classes());
    }

    #[test]
    fn relative_paths_follow_the_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "coordinator = \"127.0.0.1:4433\"\nca = \"ca.pem\"\ncert = \"/abs/a.pem\"\n\
             key = \"a.key\"\nprivate_csv = \"p.csv\"\npublic_csv = \"q.csv\"\nclasses = 3\n\
             [training]\ntemperature = 2.0\n",
        )
        .unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.ca, dir.path().join("ca.pem"));
        assert_eq!(c.cert, PathBuf::from("/abs/a.pem"));
        assert_eq!(c.label_column, "label");
        assert_eq!(c.training.temperature, Temperature::Fixed(2.0));
        assert_eq!(c.training.alpha_start, 0.7);
        assert_eq!(c.privacy.mode, PrivacyMode::None);
    }

    #[test]
    fn image_data_defaults_to_temperature_two_unless_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let base = format!("{REQUIRED}classes = 10\n[training]\n");
        std::fs::write(
            &path,
            format!("{base}image = {{ height = 8, width = 8 }}\n"),
        )
        .unwrap();
        assert_eq!(
            NodeConfig::load(&path).unwrap().training.temperature,
            Temperature::Fixed(2.0)
        );
        std::fs::write(
            &path,
            format!("{base}image = {{ height = 8, width = 8 }}\ntemperature = 3.0\n"),
        )
        .unwrap();
        assert_eq!(
            NodeConfig::load(&path).unwrap().training.temperature,
            Temperature::Fixed(3.0)
        );
        // Tabular data keeps 4.
        std::fs::write(&path, &base).unwrap();
        assert_eq!(
            NodeConfig::load(&path).unwrap().training.temperature,
            Temperature::Fixed(4.0)
        );
        // A CNN student without image data is refused, naming the field.
        std::fs::write(&path, format!("{base}architecture = \"cnn\"\n")).unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("architecture"), "{msg}");
    }

    #[test]
    fn join_retry_defaults_to_a_minute_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let base = format!("{REQUIRED}classes = 2\n");
        std::fs::write(&path, &base).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().join_retry_secs, 60);
        std::fs::write(&path, format!("{base}join_retry_secs = 0\n")).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().join_retry_secs, 0);
        // A wait past a day is refused, naming the field (it would also overflow deadlines).
        std::fs::write(&path, format!("{base}join_retry_secs = 100000\n")).unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("join_retry_secs"), "{msg}");
    }

    #[test]
    fn snr_thresholds_are_validated_by_name() {
        let private = |min_snr, trust_snr| PrivacyConfig {
            mode: PrivacyMode::Shards,
            min_snr,
            trust_snr,
            ..PrivacyConfig::default()
        };
        assert!(private(Some(1.0), 1.5).validate().is_ok());
        let err = private(Some(-1.0), 1.5).validate().unwrap_err();
        assert!(err.contains("privacy.min_snr"), "{err}");
        let err = private(None, f64::NAN).validate().unwrap_err();
        assert!(err.contains("privacy.trust_snr"), "{err}");
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, include_str!("../../examples/node.toml")).unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.training.teacher.hidden, vec![512, 256]);
        assert_eq!(
            c.training.alpha_schedule,
            crate::distill::ScheduleShape::Linear
        );
    }

    #[test]
    fn privacy_table_is_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let base = format!("{REQUIRED}classes = 3\n");
        std::fs::write(
            &path,
            format!("{base}[privacy]\nmode = \"shards\"\nepsilon = 4.0\nledger = \"l.db\"\n"),
        )
        .unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.privacy.mode, PrivacyMode::Shards);
        assert_eq!(c.privacy.epsilon, 4.0);
        assert_eq!(c.privacy.ledger, Some(dir.path().join("l.db")));
        std::fs::write(
            &path,
            format!("{base}[privacy]\nmode = \"shards\"\ndelta = 2.0\n"),
        )
        .unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("delta"), "{msg}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "coordinator = \"nowhere\"\n").unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("node.toml") && msg.contains("coordinator"),
            "{msg}"
        );

        std::fs::write(
            &path,
            "coordinator = \"127.0.0.1:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n\
             private_csv = \"d\"\npublic_csv = \"e\"\nclasses = 1\n",
        )
        .unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("classes"), "{msg}");

        std::fs::write(&path, "bogus = 1\n").unwrap();
        let msg = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("bogus"), "{msg}");
    }
}
