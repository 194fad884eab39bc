//! The federation's configuration file (`federation.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregationConfig;

/// A config that could not be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The config file (or `<flags>`).
    pub file: String,
    /// What is wrong and where.
    pub message: String,
}

/// How the federation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Federation name, shown to nodes.
    #[serde(default = "default_name")]
    pub name: String,
    /// UDP address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Federation CA certificate (PEM); only nodes it signed are admitted.
    pub ca: PathBuf,
    /// The coordinator's certificate (PEM), from `fd-certs issue --server`.
    pub cert: PathBuf,
    /// The coordinator's private key (PEM).
    pub key: PathBuf,
    /// Number of nodes to wait for before round 0.
    pub nodes: usize,
    /// Number of rounds.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// The public reference set's CSV file, which every node must hold byte for byte: its
    /// SHA-256 becomes `public_sha256` and its row count `public_records` (each must agree if
    /// also given). The coordinator reads nothing else from it.
    #[serde(default)]
    pub public_csv: Option<PathBuf>,
    /// SHA-256 (hex, as `sha256sum` prints it) of the public CSV file; nodes whose file differs
    /// are refused at admission with both values. None (and no `public_csv`): not checked.
    #[serde(default)]
    pub public_sha256: Option<String>,
    /// Records in the public reference set (every node must hold the same set); read from
    /// `public_csv` when it is given.
    #[serde(default)]
    pub public_records: u32,
    /// Number of classes.
    pub classes: u16,
    /// Public records queried per round; 0 means all of them every round.
    #[serde(default)]
    pub queries_per_round: u32,
    /// Seconds to wait for `nodes` nodes to join.
    #[serde(default = "default_join_timeout")]
    pub join_timeout_secs: u64,
    /// Seconds a round waits for contributions before closing with what it has.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: u64,
    /// Refuse contributions that carry no differential-privacy receipt.
    #[serde(default)]
    pub require_privacy: bool,
    /// Where to write the run summary (JSON); none by default.
    #[serde(default)]
    pub summary_json: Option<PathBuf>,
    /// Fewest accepted contributions for a round to be aggregated (a round below it closes
    /// without changing the target); also the fewest nodes to start with once the join
    /// deadline has passed.
    #[serde(default = "default_quorum")]
    pub quorum: usize,
    /// How contributions are combined (`[aggregation]`).
    #[serde(default)]
    pub aggregation: AggregationConfig,
    /// Directory of the coordinator's state database; none keeps state in memory only (the
    /// simulator), so a restart begins again from round 0.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Most connections held at once, admitted or still saying Hello; a connection attempt
    /// beyond it is refused at once (the node retries). Must be at least `nodes`: the default
    /// holds 10,000 nodes with room for reconnects overlapping their old connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Names (from their certificates) of the only nodes admitted; empty: any node holding a
    /// certificate from the federation CA.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Most distinct nodes admitted over the run (a node that reconnects counts once); none:
    /// no limit. `nodes` is how many to wait for before round 0, not a limit.
    #[serde(default)]
    pub max_nodes: Option<usize>,
    /// Certificate revocation list (PEM, from `fd-certs revoke`): the node certificates it
    /// names are refused in the TLS handshake. Read at start.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// The longest join or round timeout accepted, in seconds (30 days): beyond it a wait is a
/// misconfiguration, and every deadline stays far from overflowing the clock.
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

fn default_name() -> String {
    "federation".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4433))
}
fn default_rounds() -> u32 {
    20
}
fn default_join_timeout() -> u64 {
    600
}
fn default_round_timeout() -> u64 {
    600
}
fn default_quorum() -> usize {
    1
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// Default [`FederationConfig::max_connections`]: 10,000 nodes and a fifth more for
/// reconnects that overlap the connection they replace.
pub const DEFAULT_MAX_CONNECTIONS: usize = 12_000;

/// The largest `max_connections` accepted: each connection costs a few tens of KiB even idle,
/// so beyond a million the limit protects nothing.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// `config` with each `KEY=VALUE` of `settings` applied (`--set`; see [`fd_cli::settings`]).
pub fn apply_settings(
    config: &FederationConfig,
    settings: &[String],
) -> Result<FederationConfig, String> {
    fd_cli::settings::apply(config, settings)
}

/// A complete federation config with every key at its default, commented
/// (`fd-coordinator --print-config`). Required keys hold placeholders; optional keys without a
/// default are commented out. Tests check that it parses to the defaults and names every key.
pub const REFERENCE: &str = r#"# fd-coordinator federation config: every key, at its default. Paths are relative to this file.
name = "federation"              # shown to nodes
listen = "127.0.0.1:4433"        # UDP address; "0.0.0.0:4433" to serve other machines (open the firewall)
ca = "ca.pem"                    # required: the federation CA certificate (fd-certs init)
cert = "coordinator.pem"         # required: fd-certs issue --server (its --san must match the nodes' server_name)
key = "coordinator.key"          # required
nodes = 3                        # required: nodes to wait for before round 0 (a start, not a limit: see max_nodes)
rounds = 20
# public_csv = "public.csv"      # the public file every node holds; sets public_sha256 and public_records
# public_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # or its SHA-256 alone
public_records = 359             # required unless public_csv: rows of the public file
classes = 10                     # required
queries_per_round = 0            # public records asked per round; 0: all of them (no privacy)
join_timeout_secs = 600          # wait this long for `nodes`; then start with a quorum, or stop
round_timeout_secs = 600         # a round closes with what it has after this
require_privacy = false          # refuse nodes and contributions without a DP receipt
# summary_json = "summary.json"  # the run summary (JSON)
quorum = 1                       # fewest accepted contributions for a round to be aggregated
# state_dir = "state"            # SQLite state: a restart continues; `fd-coordinator status` reads it
max_connections = 12000          # connections held at once (>= nodes); more are refused and retry
allow = []                       # names of the only nodes admitted; empty: any certificate of the CA
# max_nodes = 10                 # most distinct nodes admitted over the run
# crl = "crl.pem"                # revocation list from fd-certs revoke; read at start

[aggregation]
strategy = "dynamic"             # mean | median | trimmed-mean | confidence | reputation | dynamic
trim = 0.2                       # trimmed-mean: fraction cut from each end
reputation_rate = 0.5            # weight of the newest round in the reputation average
sharpen = 1.0                    # (0, 1]: aggregate p^(1/sharpen), renormalised; 1 = off
secure = false                   # secure aggregation: see only the sum of the nodes' noisy votes
colluders = 1                    # secure: nodes that may collude with the coordinator
dropouts = 2                     # secure: nodes that may vanish after masking
"#;

impl FederationConfig {
    /// Reads and validates a TOML config; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<FederationConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config: FederationConfig = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.ca, &mut config.cert, &mut config.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = config.summary_json.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        for p in [
            &mut config.state_dir,
            &mut config.public_csv,
            &mut config.crl,
        ] {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        config
            .resolve_public()
            .and_then(|()| config.validate())
            .map_err(|message| ConfigError { file, message })?;
        Ok(config)
    }

    /// Reads `public_csv`, if named: its SHA-256 and its row count (records after the header
    /// line; quoted fields may span lines) fill `public_sha256` and `public_records`, which
    /// must agree with any value the config gives.
    pub fn resolve_public(&mut self) -> Result<(), String> {
        let Some(path) = &self.public_csv else {
            return Ok(());
        };
        let bytes = std::fs::read(path)
            .map_err(|e| format!("public_csv {}: cannot read: {e}", path.display()))?;
        let sha = fd_protocol::sha256_hex(ring::digest::digest(&ring::digest::SHA256, &bytes));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(&bytes[..]);
        let mut rows: u32 = 0;
        for record in reader.records() {
            record.map_err(|e| format!("public_csv {}: {e}", path.display()))?;
            rows = rows.checked_add(1).ok_or("public_csv: too many rows")?;
        }
        if let Some(given) = &self.public_sha256
            && !given.eq_ignore_ascii_case(&sha)
        {
            return Err(format!(
                "public_sha256 ({given}) is not the SHA-256 of public_csv {} ({sha})",
                path.display()
            ));
        }
        if self.public_records != 0 && self.public_records != rows {
            return Err(format!(
                "public_records ({}) differs from the {rows} rows of public_csv {}; leave \
                 public_records out to read it from the file",
                self.public_records,
                path.display()
            ));
        }
        self.public_sha256 = Some(sha);
        self.public_records = rows;
        Ok(())
    }

    /// The public file's SHA-256 as bytes, if the federation names one.
    pub fn public_fingerprint(&self) -> Option<[u8; 32]> {
        self.public_sha256
            .as_deref()
            .and_then(fd_protocol::parse_sha256_hex)
    }

    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("nodes must be >= 1".into());
        }
        if self.rounds == 0 {
            return Err("rounds must be >= 1".into());
        }
        if self.public_records == 0 {
            return Err(
                "public_records must be >= 1 (or name the file: public_csv = \"public.csv\")"
                    .into(),
            );
        }
        if let Some(sha) = &self.public_sha256
            && fd_protocol::parse_sha256_hex(sha).is_none()
        {
            return Err(format!(
                "public_sha256 must be 64 hex digits (sha256sum's output), got '{sha}'"
            ));
        }
        if let Some(bad) = self
            .allow
            .iter()
            .find(|n| fd_certs::pki::validate_name(n).is_err())
        {
            return Err(format!(
                "allow: '{bad}' is not a node name (1-64 of A-Z a-z 0-9 . _ -)"
            ));
        }
        if let Some(max) = self.max_nodes
            && max < self.nodes
        {
            return Err(format!(
                "max_nodes ({max}) is below nodes ({}), so round 0 could never start",
                self.nodes
            ));
        }
        if !self.allow.is_empty() && self.allow.len() < self.nodes {
            return Err(format!(
                "allow names {} nodes, fewer than nodes ({}), so round 0 could never start",
                self.allow.len(),
                self.nodes
            ));
        }
        if self.classes < 2 {
            return Err(format!("classes must be >= 2, got {}", self.classes));
        }
        if self.queries_per_round > self.public_records {
            return Err(format!(
                "queries_per_round ({}) exceeds public_records ({})",
                self.queries_per_round, self.public_records
            ));
        }
        for (field, secs) in [
            ("join_timeout_secs", self.join_timeout_secs),
            ("round_timeout_secs", self.round_timeout_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                return Err(format!(
                    "{field} must be between 1 and {MAX_TIMEOUT_SECS} (30 days), got {secs}"
                ));
            }
        }
        if self.quorum == 0 || self.quorum > self.nodes {
            return Err(format!(
                "quorum must be between 1 and nodes ({}), got {}",
                self.nodes, self.quorum
            ));
        }
        if !(self.nodes..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(format!(
                "max_connections must be between nodes ({}) and {MAX_CONNECTIONS}, got {}",
                self.nodes, self.max_connections
            ));
        }
        self.aggregation.validate()?;
        self.aggregation.validate_secure(self.nodes)?;
        self.check_round_open_fits()
    }

    /// Checks that the largest message the coordinator sends, a RoundOpen asking this many
    /// queries with a target over every public record, fits in a frame
    /// ([`fd_protocol::DEFAULT_MAX_FRAME_LEN`]); otherwise the run would fail in the round
    /// whose target first outgrew it.
    fn check_round_open_fits(&self) -> Result<(), String> {
        let max = fd_protocol::DEFAULT_MAX_FRAME_LEN;
        let too_big = |bytes: String| {
            Err(format!(
                "public_records ({}) x classes ({}) makes a RoundOpen of {bytes} bytes, over the \
                 frame limit of {max} bytes; use fewer public records",
                self.public_records, self.classes
            ))
        };
        // Four bytes per probability alone: refuse without building a message that large.
        let probs = self.public_records as u64 * u64::from(self.classes);
        if probs.saturating_mul(4) > max as u64 {
            return too_big(format!("more than {}", probs.saturating_mul(4)));
        }
        let all: Vec<u32> = (0..self.public_records).collect();
        let open = fd_protocol::Message::RoundOpen(fd_protocol::RoundOpen {
            round: self.rounds.saturating_sub(1),
            rounds: self.rounds,
            query_ids: self.queries(0),
            target: fd_protocol::SoftLabels {
                classes: self.classes,
                query_ids: all,
                probs: vec![1.0 / f32::from(self.classes); probs as usize],
            },
            secure: self.aggregation.secure.then_some(fd_protocol::SecureRound {
                context: [0; 32],
                node: 1,
                roster: self.nodes as u32,
                threshold: self.nodes as u32,
                min_survivors: self.nodes as u32,
            }),
        });
        match fd_protocol::codec::encode_frame(&open, usize::MAX) {
            Ok(frame) if frame.len() <= max => Ok(()),
            Ok(frame) => too_big(frame.len().to_string()),
            Err(e) => Err(format!("cannot encode a RoundOpen of this size: {e}")),
        }
    }

    /// Checks that the summary file can be written (its directory exists and takes a file),
    /// so that a run is not lost to a typo in the path only once it has finished.
    pub fn check_outputs(&self) -> Result<(), String> {
        let Some(path) = &self.summary_json else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let probe = dir.join(format!(".fd-summary-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                format!(
                    "summary_json {}: cannot write into {}: {e}",
                    path.display(),
                    dir.display()
                )
            })
    }

    /// Labels asked of each node over the whole run: the sum of every round's query count.
    pub fn planned_queries(&self) -> u64 {
        let per_round = if self.queries_per_round == 0 {
            self.public_records
        } else {
            self.queries_per_round
        };
        per_round as u64 * self.rounds as u64
    }

    /// The public records queried in `round`: a window that slides over the public set, so
    /// every record is labelled before any is asked twice.
    pub fn queries(&self, round: u32) -> Vec<u32> {
        let m = self.public_records;
        let q = if self.queries_per_round == 0 {
            m
        } else {
            self.queries_per_round
        };
        let start = (round as u64 * q as u64 % m as u64) as u32;
        (0..q)
            .map(|i| ((start as u64 + i as u64) % m as u64) as u32)
            .collect()
    }
}

/// A small federation for unit tests across the crate: port 0 on loopback, 2 classes, every
/// public record each round, quorum 1, 30 s to join, 10 s per round, default aggregation;
/// callers override what they test.
#[cfg(test)]
pub(crate) fn test_config(nodes: usize, rounds: u32, public_records: u32) -> FederationConfig {
    FederationConfig {
        name: "t".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: "ca.pem".into(),
        cert: "c.pem".into(),
        key: "c.key".into(),
        nodes,
        rounds,
        public_records,
        classes: 2,
        queries_per_round: 0,
        join_timeout_secs: 30,
        round_timeout_secs: 10,
        require_privacy: false,
        summary_json: None,
        quorum: 1,
        aggregation: AggregationConfig::default(),
        state_dir: None,
        max_connections: DEFAULT_MAX_CONNECTIONS,
        public_csv: None,
        public_sha256: None,
        allow: Vec::new(),
        max_nodes: None,
        crl: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FederationConfig {
        FederationConfig {
            join_timeout_secs: 1,
            round_timeout_secs: 1,
            ..test_config(3, 4, 5)
        }
    }

    #[test]
    fn timeouts_past_thirty_days_or_zero_are_refused_by_name() {
        for (join, round, field) in [
            (u64::MAX, 1, "join_timeout_secs"),
            (MAX_TIMEOUT_SECS + 1, 1, "join_timeout_secs"),
            (0, 1, "join_timeout_secs"),
            (1, u64::MAX, "round_timeout_secs"),
            (1, 0, "round_timeout_secs"),
        ] {
            let c = FederationConfig {
                join_timeout_secs: join,
                round_timeout_secs: round,
                ..config()
            };
            let msg = c.validate().unwrap_err();
            assert!(msg.starts_with(field), "{join}/{round}: {msg}");
        }
        let longest = FederationConfig {
            join_timeout_secs: MAX_TIMEOUT_SECS,
            round_timeout_secs: MAX_TIMEOUT_SECS,
            ..config()
        };
        assert_eq!(longest.validate(), Ok(()));
    }

    #[test]
    fn a_connection_limit_below_the_nodes_or_absurdly_high_is_refused_by_name() {
        // config() expects 3 nodes.
        for bad in [0, 2, MAX_CONNECTIONS + 1] {
            let c = FederationConfig {
                max_connections: bad,
                ..config()
            };
            let err = c.validate().expect_err("refused");
            assert!(err.starts_with("max_connections must be"), "{bad}: {err}");
        }
        let exact = FederationConfig {
            max_connections: 3,
            ..config()
        };
        assert_eq!(exact.validate(), Ok(()));
    }

    #[test]
    fn a_round_open_that_cannot_fit_a_frame_is_refused_at_start() {
        // 40,000 x 10 probabilities (1.6 MB) fit in 32 MiB.
        let fits = FederationConfig {
            public_records: 40_000,
            classes: 10,
            ..config()
        };
        assert_eq!(fits.validate(), Ok(()));
        // 1,000,000 x 10 f32 probabilities are 40 MB before any header: over 32 MiB.
        let big = FederationConfig {
            public_records: 1_000_000,
            ..fits.clone()
        };
        let msg = big.validate().unwrap_err();
        assert!(msg.contains("public_records (1000000)"), "{msg}");
        assert!(msg.contains("frame limit"), "{msg}");
        // Under the limit by the probabilities alone (4,194,000 x 2 x 4 bytes = 33,552,000 <
        // 33,554,432), over it once the query ids are encoded too (the round asks for every
        // record and the target names each): the encoded size is reported.
        let edge = FederationConfig {
            public_records: 4_194_000,
            classes: 2,
            ..fits
        };
        let msg = edge.validate().unwrap_err();
        let bytes: usize = msg
            .split("RoundOpen of ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exact size in: {msg}"));
        assert!(bytes > fd_protocol::DEFAULT_MAX_FRAME_LEN, "{msg}");
    }

    #[test]
    fn an_unwritable_summary_is_refused_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let ok = FederationConfig {
            summary_json: Some(dir.path().join("summary.json")),
            ..config()
        };
        assert_eq!(ok.check_outputs(), Ok(()));
        assert!(
            !dir.path().join("summary.json").exists(),
            "the check leaves no file"
        );
        let missing = FederationConfig {
            summary_json: Some(dir.path().join("no-such-dir").join("summary.json")),
            ..config()
        };
        let msg = missing.check_outputs().unwrap_err();
        assert!(
            msg.contains("summary_json") && msg.contains("no-such-dir"),
            "{msg}"
        );
    }

    #[test]
    fn the_printed_reference_config_is_the_defaults_and_names_every_key() {
        let parsed: FederationConfig = toml::from_str(REFERENCE).expect("reference parses");
        let expected = FederationConfig {
            name: default_name(),
            listen: default_listen(),
            ca: "ca.pem".into(),
            cert: "coordinator.pem".into(),
            key: "coordinator.key".into(),
            nodes: 3,
            rounds: default_rounds(),
            public_records: 359,
            classes: 10,
            queries_per_round: 0,
            join_timeout_secs: default_join_timeout(),
            round_timeout_secs: default_round_timeout(),
            quorum: default_quorum(),
            ..test_config(3, 1, 1)
        };
        assert_eq!(parsed, expected);
        let mut full = expected.clone();
        full.public_csv = Some("p".into());
        full.public_sha256 = Some("0".repeat(64));
        full.summary_json = Some("s".into());
        full.state_dir = Some("d".into());
        full.max_nodes = Some(3);
        full.crl = Some("c".into());
        full.allow = vec!["a".into()];
        let keys = fd_cli::reference::leaf_keys(&toml::Table::try_from(&full).expect("serialises"));
        assert!(keys.len() > 20, "{keys:?}");
        for key in keys {
            assert!(
                fd_cli::reference::names(REFERENCE, &key),
                "--print-config does not name {key}"
            );
        }
        // Uncommented, the optional keys parse too.
        let uncommented = fd_cli::reference::uncommented(REFERENCE);
        let all: FederationConfig = toml::from_str(&uncommented).expect("uncommented parses");
        assert_eq!(all.max_nodes, Some(10));
        assert!(all.public_sha256.is_some() && all.crl.is_some() && all.state_dir.is_some());
    }

    #[test]
    fn settings_override_nested_keys_and_refuse_unknown_ones() {
        let c = apply_settings(
            &config(),
            &[
                "aggregation.trim=0.1".into(),
                "allow=[\"a\", \"b\"]".into(),
                "require_privacy=true".into(),
            ],
        )
        .expect("applies");
        assert_eq!(c.aggregation.trim, 0.1);
        assert_eq!(c.allow, ["a", "b"]);
        assert!(c.require_privacy);
        let msg = apply_settings(&config(), &["quorumm=2".into()]).expect_err("unknown");
        assert!(msg.contains("quorumm"), "{msg}");
    }

    #[test]
    fn the_public_file_gives_its_fingerprint_and_row_count_and_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public.csv");
        // Three records; the quoted field spans two lines, so lines are not records.
        std::fs::write(&path, "a,b\n1,2\n3,\"4\n\"\n5,6\n").unwrap();
        let mut c = FederationConfig {
            public_csv: Some(path.clone()),
            public_records: 0,
            ..config()
        };
        c.resolve_public().expect("reads");
        assert_eq!(c.public_records, 3);
        // sha256sum of those bytes, computed independently here.
        let expected = fd_protocol::sha256_hex(ring::digest::digest(
            &ring::digest::SHA256,
            &std::fs::read(&path).unwrap(),
        ));
        assert_eq!(c.public_sha256.as_deref(), Some(expected.as_str()));
        assert_eq!(c.validate(), Ok(()));
        let mut wrong_count = FederationConfig {
            public_csv: Some(path.clone()),
            public_records: 4,
            ..config()
        };
        let msg = wrong_count.resolve_public().unwrap_err();
        assert!(
            msg.contains("public_records (4)") && msg.contains("3 rows"),
            "{msg}"
        );
        let mut wrong_sha = FederationConfig {
            public_csv: Some(path),
            public_sha256: Some("ab".repeat(32)),
            ..config()
        };
        let msg = wrong_sha.resolve_public().unwrap_err();
        assert!(
            msg.contains(&"ab".repeat(32)) && msg.contains(&expected),
            "{msg}"
        );
    }

    #[test]
    fn membership_settings_that_could_never_start_are_refused() {
        let c = FederationConfig {
            max_nodes: Some(2),
            ..config()
        };
        assert!(c.validate().unwrap_err().starts_with("max_nodes (2)"));
        let c = FederationConfig {
            allow: vec!["a".into(), "b".into()],
            ..config()
        };
        assert!(c.validate().unwrap_err().starts_with("allow names 2"));
        let c = FederationConfig {
            allow: vec!["a".into(), "b".into(), "no/slash".into()],
            ..config()
        };
        assert!(c.validate().unwrap_err().contains("no/slash"));
    }

    #[test]
    fn queries_cover_all_or_slide() {
        let mut c = config();
        assert_eq!(c.queries(3), [0, 1, 2, 3, 4]);
        c.queries_per_round = 2;
        assert_eq!(c.queries(0), [0, 1]);
        assert_eq!(c.queries(1), [2, 3]);
        assert_eq!(c.queries(2), [4, 0]);
        // 4 rounds of 2 queries.
        assert_eq!(c.planned_queries(), 8);
    }

    #[test]
    fn load_resolves_paths_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("federation.toml");
        std::fs::write(
            &path,
            "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nnodes = 2\npublic_records = 9\nclasses = 3\n",
        )
        .unwrap();
        let c = FederationConfig::load(&path).unwrap();
        assert_eq!(c.ca, dir.path().join("ca.pem"));
        assert_eq!(c.rounds, 20);

        std::fs::write(
            &path,
            "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nnodes = 0\npublic_records = 9\nclasses = 3\n",
        )
        .unwrap();
        let msg = FederationConfig::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("federation.toml") && msg.contains("nodes"),
            "{msg}"
        );
    }

    #[test]
    fn aggregation_and_quorum_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("federation.toml");
        let base = "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nnodes = 4\n\
                    public_records = 9\nclasses = 3\n";
        std::fs::write(
            &path,
            format!(
                "{base}quorum = 3\nstate_dir = \"state\"\n[aggregation]\nstrategy = \"median\"\n"
            ),
        )
        .unwrap();
        let c = FederationConfig::load(&path).unwrap();
        assert_eq!(c.quorum, 3);
        assert_eq!(
            c.aggregation.strategy,
            crate::aggregate::AggregatorKind::Median
        );
        assert_eq!(c.state_dir, Some(dir.path().join("state")));

        std::fs::write(&path, format!("{base}quorum = 5\n")).unwrap();
        let msg = FederationConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("quorum"), "{msg}");

        std::fs::write(&path, format!("{base}[aggregation]\nstrategy = \"avg\"\n")).unwrap();
        let msg = FederationConfig::load(&path).unwrap_err().to_string();
        assert!(msg.contains("strategy") && msg.contains("avg"), "{msg}");
    }
}
