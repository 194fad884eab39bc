//! What a run leaves behind: the [`RoundRecord`] of every closed round (of which memory keeps
//! only the [`RoundBrief`]) and the run's [`Summary`], with each node's account
//! ([`NodeSummary`], [`NodeSpending`]).
//!
//! The round logic ([`crate::rounds`]) fills these; the store commits the records and the server
//! hands the summary back. This module depends on no other part of the coordinator.

use std::collections::BTreeMap;

use fd_protocol::{PrivacyReceipt, SoftLabels};
use serde::{Deserialize, Serialize};

/// Why a round closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClosedBy {
    /// Every node asked answered or left.
    AllAnswered,
    /// The deadline passed.
    Deadline,
}

/// Everything about a closed round worth keeping: what the store commits, and the summary logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round.
    pub round: u32,
    /// Public records asked.
    pub query_ids: Vec<u32>,
    /// Nodes asked.
    pub asked: Vec<String>,
    /// Nodes whose contribution was accepted (sorted).
    pub accepted: Vec<String>,
    /// Whether the round was aggregated: at least `quorum` contributions were accepted and the
    /// strategy produced an aggregate from them.
    pub aggregated: bool,
    /// Why it closed.
    pub closed_by: ClosedBy,
    /// Each accepted node's share of the aggregate.
    pub weights: BTreeMap<String, f64>,
    /// Reputations after the round (strategies that keep them).
    pub reputations: BTreeMap<String, f64>,
    /// The privacy receipts of the accepted contributions.
    pub receipts: BTreeMap<String, PrivacyReceipt>,
    /// The round's aggregate (skipped in the summary file: the store keeps it).
    #[serde(skip)]
    pub aggregate: Option<SoftLabels>,
    /// Bytes received from and sent to each node over the whole run, as the round closed: a
    /// restarted coordinator carries its counters on from the last committed round.
    #[serde(default)]
    pub bytes: BTreeMap<String, [u64; 2]>,
    /// Seconds the federation had run (across restarts) when the round closed.
    #[serde(default)]
    pub wall_seconds: f64,
}

/// One line of the summary's round log: what the coordinator keeps in memory of a closed round.
///
/// The full [`RoundRecord`] (who was asked and accepted, weights, receipts, the aggregate) is
/// committed to the store and then dropped: held for every round, it grew the coordinator by the
/// size of an aggregate per round and by the node list several times over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundBrief {
    /// The round.
    pub round: u32,
    /// Nodes asked.
    pub asked: u32,
    /// Contributions accepted.
    pub accepted: u32,
    /// Whether the round was aggregated into the target.
    pub aggregated: bool,
    /// Why it closed.
    pub closed_by: ClosedBy,
}

impl RoundBrief {
    /// The brief of `record`.
    pub fn of(record: &RoundRecord) -> RoundBrief {
        RoundBrief {
            round: record.round,
            asked: record.asked.len() as u32,
            accepted: record.accepted.len() as u32,
            aggregated: record.aggregated,
            closed_by: record.closed_by,
        }
    }
}

/// What a node contributed, for the summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node identity from its certificate.
    pub node: String,
    /// Contributions accepted.
    pub contributions: u32,
    /// Bytes received from it.
    pub bytes_up: u64,
    /// Bytes sent to it.
    pub bytes_down: u64,
    /// Whether it was still present at the end.
    pub finished: bool,
    /// Why it left early, if it did.
    pub left: Option<String>,
    /// Its privacy spending, from the latest receipt it sent.
    pub privacy: Option<NodeSpending>,
    /// Its share of the aggregate in the last round it was accepted in.
    pub weight: Option<f64>,
    /// Its reputation after the last round (strategies that keep one).
    pub reputation: Option<f64>,
    /// Contributions refused (late, duplicate, malformed).
    pub refused: u32,
}

/// A node's cumulative privacy spending, as its latest receipt states it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeSpending {
    /// Mechanism named in the receipt.
    pub mechanism: String,
    /// Privacy unit named in the receipt.
    pub unit: String,
    /// Releases (receipts) received.
    pub releases: u32,
    /// Cumulative zCDP cost.
    pub rho_total: f64,
    /// Cumulative epsilon at `delta`.
    pub epsilon_total: f64,
    /// The delta of `epsilon_total`.
    pub delta: f64,
    /// Secure aggregation: the cumulative epsilon from the node's own noise shares alone (if
    /// every other node colluded with the coordinator); `epsilon_total` is then the sums'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_epsilon_total: Option<f64>,
}

/// The coordinator's account of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Federation name.
    pub federation: String,
    /// Aggregation strategy.
    pub aggregator: String,
    /// Rounds completed.
    pub rounds: u32,
    /// Why the federation ended before its planned rounds, if it did.
    pub ended_early: Option<String>,
    /// Contributions accepted in each round.
    pub accepted_per_round: Vec<u32>,
    /// Every round in brief: nodes asked, contributions accepted, aggregated or not, why it
    /// closed. The full records (who, weights, reputations, receipts) are in the state store.
    pub round_log: Vec<RoundBrief>,
    /// Public records in the final target.
    pub target_records: usize,
    /// Per-node accounts, by name.
    pub nodes: Vec<NodeSummary>,
    /// Bytes received from all nodes.
    pub bytes_up: u64,
    /// Bytes sent to all nodes.
    pub bytes_down: u64,
    /// Wall time from start to the end of the last round.
    pub wall_seconds: f64,
    /// The final target (not serialised into the summary file).
    #[serde(skip)]
    pub target: SoftLabels,
}
