//! `fd-coordinator status`: the state of a federation read from its state directory, without
//! the daemon and without writing (safe while it runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::store::{Store, StoreError};

/// A federation as its state directory shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Federation name.
    pub federation: String,
    /// Planned rounds.
    pub rounds_planned: u32,
    /// Rounds closed and committed.
    pub rounds_done: u32,
    /// Whether the run is over (its planned rounds done, or every node left).
    pub finished: bool,
    /// The pid of the daemon serving this state right now, if one is (Linux: read from
    /// `/proc`); none for a stopped or finished run.
    pub daemon_pid: Option<u32>,
    /// Why it ended before its planned rounds, if it did.
    pub ended_early: Option<String>,
    /// The aggregation strategy.
    pub aggregator: String,
    /// Seconds the federation has run, across restarts (as of the last committed round, or
    /// the end).
    pub wall_seconds: f64,
    /// Every node that contributed or was asked, by name.
    pub nodes: Vec<NodeStatus>,
    /// Every committed round.
    pub rounds: Vec<RoundStatus>,
}

/// One node's account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    /// Name from its certificate.
    pub node: String,
    /// Contributions accepted.
    pub contributions: u32,
    /// The last round whose contribution was accepted.
    pub last_round: Option<u32>,
    /// Its share of the aggregate in that round.
    pub weight: Option<f64>,
    /// Epsilon spent (at `delta`) as its latest privacy receipt says; none for a non-private
    /// node.
    pub epsilon_spent: Option<f64>,
    /// The delta of `epsilon_spent`.
    pub delta: Option<f64>,
    /// Bytes received from it.
    pub bytes_up: u64,
    /// Bytes sent to it.
    pub bytes_down: u64,
}

/// One committed round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundStatus {
    /// The round.
    pub round: u32,
    /// Nodes asked.
    pub asked: u32,
    /// Contributions accepted.
    pub accepted: u32,
    /// Whether it changed the target.
    pub aggregated: bool,
    /// Each accepted node's share of the aggregate.
    pub weights: BTreeMap<String, f64>,
}

/// Reads the federation in `dir` (its `state_dir`).
pub fn read(dir: &Path) -> Result<Status, StoreError> {
    let store = Store::open_read_only(dir)?;
    let terms = store.terms()?;
    let classes: u16 = terms
        .get("classes")
        .and_then(|c| c.parse().ok())
        .unwrap_or(2);
    let resume = store.load(classes)?;
    let finished = store.finished()?;
    let daemon_pid = store.live_daemon()?;
    let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let entry = |node: &str| -> NodeStatus {
        NodeStatus {
            node: node.to_owned(),
            contributions: 0,
            last_round: None,
            weight: None,
            epsilon_spent: None,
            delta: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    };
    let mut rounds = Vec::new();
    for record in &resume.records {
        for node in &record.asked {
            nodes
                .entry(node.clone())
                .or_insert_with(|| entry(node.as_str()));
        }
        for node in &record.accepted {
            let n = nodes
                .entry(node.clone())
                .or_insert_with(|| entry(node.as_str()));
            n.contributions += 1;
            n.last_round = Some(record.round);
            n.weight = record.weights.get(node).copied();
            if let Some(r) = record.receipts.get(node) {
                n.epsilon_spent = Some(r.epsilon_total);
                n.delta = Some(r.delta);
            }
        }
        rounds.push(RoundStatus {
            round: record.round,
            asked: record.asked.len() as u32,
            accepted: record.accepted.len() as u32,
            aggregated: record.aggregated,
            weights: record.weights.clone(),
        });
    }
    // Byte counters: the final summary's if the run is over, else the last committed round's.
    let bytes: BTreeMap<String, [u64; 2]> = match &finished {
        Some(summary) => summary
            .nodes
            .iter()
            .map(|n| (n.node.clone(), [n.bytes_up, n.bytes_down]))
            .collect(),
        None => resume
            .records
            .last()
            .map(|r| r.bytes.clone())
            .unwrap_or_default(),
    };
    for (node, [up, down]) in bytes {
        let n = nodes.entry(node.clone()).or_insert_with(|| entry(&node));
        n.bytes_up = up;
        n.bytes_down = down;
    }
    let wall_seconds = match &finished {
        Some(s) => s.wall_seconds,
        None => resume.records.last().map_or(0.0, |r| r.wall_seconds),
    };
    Ok(Status {
        federation: terms.get("name").cloned().unwrap_or_default(),
        rounds_planned: terms
            .get("rounds")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        rounds_done: resume.rounds_done,
        finished: finished.is_some(),
        daemon_pid,
        ended_early: finished.and_then(|s| s.ended_early),
        aggregator: terms
            .get("aggregation.strategy")
            .cloned()
            .unwrap_or_default(),
        wall_seconds,
        nodes: nodes.into_values().collect(),
        rounds,
    })
}

/// The status as text for a person: the federation, where it stands, one line per node.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let state = if s.finished {
        match &s.ended_early {
            Some(why) => format!("finished early ({why})"),
            None => "finished".to_owned(),
        }
    } else {
        match s.daemon_pid {
            Some(pid) => format!("running (fd-coordinator pid {pid})"),
            None => "stopped before its end (a restart on this state continues)".to_owned(),
        }
    };
    let _ = writeln!(
        out,
        "federation '{}': {} of {} rounds committed; {state}",
        s.federation, s.rounds_done, s.rounds_planned
    );
    let _ = writeln!(
        out,
        "aggregator {}, {:.1} s of federation time",
        s.aggregator, s.wall_seconds
    );
    let _ = writeln!(
        out,
        "{:<24} {:>13} {:>10} {:>8} {:>9} {:>12} {:>12}",
        "node", "contributions", "last round", "weight", "epsilon", "bytes up", "bytes down"
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<24} {:>13} {:>10} {:>8} {:>9} {:>12} {:>12}",
            n.node,
            n.contributions,
            n.last_round.map_or("-".to_owned(), |r| r.to_string()),
            n.weight.map_or("-".to_owned(), |w| format!("{w:.4}")),
            n.epsilon_spent
                .map_or("-".to_owned(), |e| format!("{e:.3}")),
            n.bytes_up,
            n.bytes_down
        );
    }
    out
}
