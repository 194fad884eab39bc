//! The federation's round logic as a state machine without I/O and without a clock.
//!
//! In the manner of `quinn-proto`: the driver (in [`crate::server`]) feeds it what happened with
//! [`Rounds::handle`] and [`Rounds::handle_timeout`], each with the current `now`, and drains what
//! to do with [`Rounds::poll_transmit`] (messages to send), [`Rounds::poll_event`] (rounds to
//! persist, the end) and [`Rounds::poll_timeout`] (when to wake it next). Tests drive it with
//! virtual time.
//!
//! A round opens by sending [`RoundOpen`] to every present node and closes when every node asked
//! has answered or left, or at its deadline, whichever comes first. It is aggregated only if at
//! least `quorum` contributions were accepted; otherwise the target stays as it was. A silent
//! node therefore costs at most one deadline and never stalls the federation. Nodes may join
//! late (they are asked from the round under way) and leave at any time; a node that reconnects
//! under the same certificate name replaces its old connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fd_protocol::{
    Contribution, Hello, Message, PrivacyReceipt, RoundClosed, RoundOpen, SoftLabels, Welcome,
};
use tracing::{info, warn};

use crate::aggregate::{Aggregator, Input as AggregateInput, Target};
use crate::config::FederationConfig;
use crate::secure::{Advance, SecureRound, Sum};
use crate::summary::{NodeSpending, NodeSummary, RoundBrief, Summary};

// The records of closed rounds live with the summary that logs them; they stay reachable here,
// where the state machine emits them.
pub use crate::summary::{ClosedBy, RoundRecord};

/// Something that happened to the federation, as the driver saw it.
#[derive(Debug, Clone)]
pub enum Input {
    /// A peer passed the TLS handshake (its certificate names it `node`) and sent Hello.
    ///
    /// The first transmit for `node` that follows is always its Welcome or Reject: the driver
    /// relies on that to admit the new connection (replacing an older one of the node) or to
    /// turn away only the new one.
    Arrived {
        /// Name from the node's certificate.
        node: String,
        /// Its Hello.
        hello: Hello,
        /// Bytes of the Hello frame.
        bytes: u64,
    },
    /// An admitted node sent a message.
    Received {
        /// The node.
        node: String,
        /// The message.
        message: Message,
        /// Bytes of the frame.
        bytes: u64,
    },
    /// A node's connection ended, or a message could not be read from or written to it.
    Gone {
        /// The node.
        node: String,
        /// Why, for the log.
        reason: String,
        /// Whether the node sent something unreadable (an oversized or malformed frame): it is
        /// then told so before its connection closes.
        misbehaved: bool,
    },
}

/// What to do after sending a [`Transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep the node's connection.
    Continue,
    /// Finish the node's stream and forget the connection.
    Close,
}

/// A message for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// The recipient.
    pub node: String,
    /// The message; `None` only closes. Shared: a message sent to every node (RoundOpen with
    /// its target, RoundClosed, Finished) is one allocation, and the driver encodes it once.
    pub message: Option<Arc<Message>>,
    /// What to do with the connection afterwards.
    pub after: After,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A round closed; persist it before sending anything that follows.
    RoundClosed(Box<RoundRecord>),
    /// Fewer than `quorum` nodes joined before the join deadline.
    JoinTimedOut {
        /// Nodes present.
        joined: usize,
        /// Nodes expected.
        expected: usize,
    },
    /// The federation is over (planned rounds done, or every node left).
    Finished,
}

/// Late nodes named in the deadline warning; the rest are counted.
const LATE_NAMED: usize = 10;

/// Where a federation left off, as the store restores it after a restart.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Rounds already closed and committed.
    pub rounds_done: u32,
    /// The target aggregated so far.
    pub target: SoftLabels,
    /// Reputations after the last committed round.
    pub reputations: BTreeMap<String, f64>,
    /// The committed rounds, oldest first.
    pub records: Vec<RoundRecord>,
}

enum Phase {
    Joining { deadline: Instant },
    Open(OpenRound),
    Done,
}

struct OpenRound {
    round: u32,
    query_ids: Vec<u32>,
    deadline: Instant,
    asked: BTreeSet<String>,
    accepted: BTreeMap<String, Contribution>,
    /// Asked and neither accepted nor gone: the round is complete when this is empty (a count
    /// kept as it changes; checking every asked node on every contribution was quadratic).
    waiting: BTreeSet<String>,
    /// A secure-aggregation round's relay (its `deadline` is the current step's).
    secure: Option<Box<SecureRound>>,
    /// A secure round's outcome once decoded (or lost, with the reason).
    secure_sum: Option<Result<Sum, String>>,
}

/// The coordinator's round logic. See the module documentation.
pub struct Rounds {
    config: FederationConfig,
    aggregator: Box<dyn Aggregator>,
    phase: Phase,
    next_round: u32,
    target: Target,
    present: BTreeSet<String>,
    /// Every node admitted in this run (and, after a restart, every node a committed round
    /// asked): what `max_nodes` counts.
    members: BTreeSet<String>,
    nodes: BTreeMap<String, NodeSummary>,
    /// Closed rounds in brief; their full records go out as [`Event::RoundClosed`] (to the
    /// store) and are not kept, so memory stays flat however many rounds run.
    log: Vec<RoundBrief>,
    ended_early: Option<String>,
    /// When this process started the federation, and the seconds it had run before (in
    /// earlier processes, from the last committed round).
    started: Instant,
    wall_before: f64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Names this coordinator run in secure rounds: every node signs it into its key adverts.
    secure_context: [u8; 32],
}

/// A fresh context for this run's secure rounds: SHA-256 of the federation's name and 16
/// random bytes, so nothing of one run's rounds can be replayed into another's.
fn secure_context(name: &str) -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; 16];
    // Without system randomness the context is the name's alone; rounds still differ by number.
    let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"fd secure aggregation context v1\0");
    ctx.update(name.as_bytes());
    ctx.update(&nonce);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Rounds {
    /// A new federation; it waits for nodes until `now + join_timeout_secs`.
    pub fn new(config: FederationConfig, aggregator: Box<dyn Aggregator>, now: Instant) -> Rounds {
        Rounds::resume(config, aggregator, now, Resume::default())
    }

    /// A federation that continues after `resume.rounds_done` committed rounds.
    pub fn resume(
        config: FederationConfig,
        mut aggregator: Box<dyn Aggregator>,
        now: Instant,
        resume: Resume,
    ) -> Rounds {
        let mut target = Target::new(config.classes);
        target.update(&resume.target);
        aggregator.restore(resume.reputations);
        let mut nodes: BTreeMap<String, NodeSummary> = BTreeMap::new();
        for record in &resume.records {
            for node in &record.accepted {
                let s = nodes.entry(node.clone()).or_insert_with(|| NodeSummary {
                    node: node.clone(),
                    ..NodeSummary::default()
                });
                s.contributions += 1;
                s.weight = record.weights.get(node).copied();
                if let Some(r) = record.receipts.get(node) {
                    note_receipt(s, r);
                }
            }
        }
        // Counters carry on from the last committed round.
        let mut wall_before = 0.0;
        if let Some(last) = resume.records.last() {
            wall_before = last.wall_seconds;
            for (node, [up, down]) in &last.bytes {
                let s = nodes.entry(node.clone()).or_insert_with(|| NodeSummary {
                    node: node.clone(),
                    ..NodeSummary::default()
                });
                s.bytes_up = *up;
                s.bytes_down = *down;
            }
        }
        Rounds {
            started: now,
            wall_before,
            phase: Phase::Joining {
                deadline: now + Duration::from_secs(config.join_timeout_secs),
            },
            next_round: resume.rounds_done,
            target,
            aggregator,
            present: BTreeSet::new(),
            members: resume
                .records
                .iter()
                .flat_map(|r| r.asked.iter().cloned())
                .collect(),
            nodes,
            log: resume.records.iter().map(RoundBrief::of).collect(),
            ended_early: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            secure_context: secure_context(&config.name),
            config,
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Arrived { node, hello, bytes } => self.arrive(now, node, hello, bytes),
            Input::Received {
                node,
                message,
                bytes,
            } => {
                if !self.present.contains(&node) {
                    return;
                }
                self.summary(&node).bytes_up += bytes;
                self.receive(now, node, message);
            }
            Input::Gone {
                node,
                reason,
                misbehaved,
            } => {
                if !self.present.contains(&node) {
                    return;
                }
                warn!(node, "node gone: {reason}");
                if misbehaved {
                    self.send(&node, Message::Error { message: reason }, After::Close);
                }
                self.depart(now, &node);
            }
        }
    }

    /// Lets deadlines pass.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Joining { deadline } if now >= *deadline => {
                if self.present.len() >= self.config.quorum.max(1) {
                    info!(
                        joined = self.present.len(),
                        expected = self.config.nodes,
                        "join deadline passed with a quorum; starting"
                    );
                    self.open_round(now);
                } else {
                    self.events.push_back(Event::JoinTimedOut {
                        joined: self.present.len(),
                        expected: self.config.nodes,
                    });
                    self.phase = Phase::Done;
                }
            }
            Phase::Open(open) if now >= open.deadline && open.secure.is_some() => {
                if let Some(secure) = &open.secure {
                    warn!(
                        round = open.round,
                        late = secure.pending(),
                        "secure round: step deadline passed waiting for {}",
                        secure.step().waiting_for()
                    );
                }
                self.advance_secure(now);
            }
            Phase::Open(open) if now >= open.deadline => {
                // The first few by name: with thousands of nodes the full list drowns the log.
                let some: Vec<&String> = open.waiting.iter().take(LATE_NAMED).collect();
                warn!(
                    round = open.round,
                    late = open.waiting.len(),
                    first = ?some,
                    "round deadline passed"
                );
                self.close_round(now, ClosedBy::Deadline);
            }
            _ => {}
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the driver, if any. Drain these before transmits: a round's record
    /// must be committed before the messages that announce it leave.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Rounds::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Joining { deadline } => Some(*deadline),
            Phase::Open(open) => Some(open.deadline),
            Phase::Done => None,
        }
    }

    /// Whether the federation is over.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Nodes currently connected.
    pub fn present(&self) -> impl Iterator<Item = &String> {
        self.present.iter()
    }

    /// Counts bytes the driver sent to `node`.
    /// Only admitted nodes are counted: a node refused at admission is not one of the
    /// federation's, and its Reject is not its traffic.
    pub fn record_sent(&mut self, node: &str, bytes: u64) {
        if !self.members.contains(node) {
            return;
        }
        self.summary(node).bytes_down += bytes;
    }

    /// Seconds the federation has run at `now`, across restarts.
    pub fn wall_seconds_at(&self, now: Instant) -> f64 {
        self.wall_before + now.saturating_duration_since(self.started).as_secs_f64()
    }

    /// The run so far, with its wall time at `now` (across restarts).
    pub fn summary_at(&self, now: Instant) -> Summary {
        Summary {
            wall_seconds: self.wall_seconds_at(now),
            ..self.summary_now()
        }
    }

    /// The run so far, without wall time (see [`Rounds::summary_at`]).
    pub fn summary_now(&self) -> Summary {
        let labels = self.target.to_labels();
        let nodes: Vec<NodeSummary> = self.nodes.values().cloned().collect();
        Summary {
            federation: self.config.name.clone(),
            aggregator: if self.config.aggregation.secure {
                "secure-sum (the survivors' noisy votes, summed under masks)".to_owned()
            } else {
                self.aggregator.kind().to_string()
            },
            rounds: self.log.len() as u32,
            ended_early: self.ended_early.clone(),
            accepted_per_round: self.log.iter().map(|r| r.accepted).collect(),
            round_log: self.log.clone(),
            target_records: labels.len(),
            bytes_up: nodes.iter().map(|n| n.bytes_up).sum(),
            bytes_down: nodes.iter().map(|n| n.bytes_down).sum(),
            nodes,
            wall_seconds: 0.0,
            target: labels,
        }
    }

    fn summary(&mut self, node: &str) -> &mut NodeSummary {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeSummary {
                node: node.to_owned(),
                ..NodeSummary::default()
            })
    }

    fn send(&mut self, node: &str, message: Message, after: After) {
        self.send_shared(node, Arc::new(message), after);
    }

    fn send_shared(&mut self, node: &str, message: Arc<Message>, after: After) {
        self.transmits.push_back(Transmit {
            node: node.to_owned(),
            message: Some(message),
            after,
        });
    }

    /// Why `node` (saying `hello`) may not join, if it may not. Membership first (the allow-list
    /// and `max_nodes`), then what the node holds and does (its public file, its privacy, its
    /// classes): each refusal names both sides.
    fn refusal(&self, node: &str, hello: &Hello) -> Option<String> {
        let config = &self.config;
        if matches!(self.phase, Phase::Done) {
            return Some("the federation is over".to_owned());
        }
        if !config.allow.is_empty() && !config.allow.iter().any(|n| n == node) {
            return Some(format!(
                "node '{node}' is not on this federation's allow-list; ask the operator to add it"
            ));
        }
        if let Some(max) = config.max_nodes
            && !self.members.contains(node)
            && self.members.len() >= max
        {
            return Some(format!(
                "the federation is full: {} nodes admitted, max_nodes = {max}",
                self.members.len()
            ));
        }
        if let Some(expected) = config.public_fingerprint() {
            match hello.public_sha256 {
                Some(got) if got == expected => {}
                Some(got) => {
                    return Some(format!(
                        "public set mismatch: the node's public file has SHA-256 {}, the \
                         federation's has {}; every node must hold the operator's file byte \
                         for byte",
                        fd_protocol::sha256_hex(got),
                        fd_protocol::sha256_hex(expected)
                    ));
                }
                None => {
                    return Some(format!(
                        "the node did not say which public file it holds; the federation's has \
                         SHA-256 {}",
                        fd_protocol::sha256_hex(expected)
                    ));
                }
            }
        }
        if config.require_privacy && !hello.private {
            return Some(
                "this federation requires differential privacy and the node releases its \
                 labels without noise; set [privacy] mode = \"shards\" in the node's config"
                    .to_owned(),
            );
        }
        None
    }

    fn arrive(&mut self, now: Instant, node: String, hello: Hello, bytes: u64) {
        let reject = if let Some(why) = self.refusal(&node, &hello) {
            Some(why)
        } else if hello.public_records != self.config.public_records {
            Some(format!(
                "public set mismatch: node has {} records, federation uses {}",
                hello.public_records, self.config.public_records
            ))
        } else if hello.classes != self.config.classes {
            Some(format!(
                "class mismatch: node predicts {} classes, federation uses {}",
                hello.classes, self.config.classes
            ))
        } else {
            None
        };
        if let Some(reason) = reject {
            warn!(node, "rejected: {reason}");
            self.send(&node, Message::Reject { reason }, After::Close);
            return;
        }
        if self.present.contains(&node) {
            // The certificate proves who it is: the new connection replaces the old one (the
            // driver drops it on this Welcome). Its progress in the open round is kept.
            info!(node, "reconnected");
        } else {
            info!(node, private_records = hello.private_records, "admitted");
        }
        self.present.insert(node.clone());
        self.members.insert(node.clone());
        let s = self.summary(&node);
        s.bytes_up += bytes;
        s.finished = false;
        s.left = None;
        self.send(
            &node,
            Message::Welcome(Welcome {
                node: node.clone(),
                federation: self.config.name.clone(),
                rounds: self.config.rounds,
                require_privacy: self.config.require_privacy,
                planned_queries: self.config.planned_queries(),
            }),
            After::Continue,
        );
        match &mut self.phase {
            Phase::Joining { .. } => {
                if self.present.len() >= self.config.nodes {
                    info!(nodes = self.present.len(), "all nodes joined; starting");
                    self.open_round(now);
                }
            }
            Phase::Open(open) => {
                // Late joiners and reconnecting nodes are asked for the round under way,
                // unless they already answered it. A secure round's roster is fixed when it
                // opens: they wait for the next one (a reconnecting node dropped out of it).
                if let Some(secure) = &mut open.secure {
                    secure.gone(&node);
                } else if !open.accepted.contains_key(&node) {
                    open.asked.insert(node.clone());
                    open.waiting.insert(node.clone());
                    let message = self.round_open_message();
                    self.send(&node, message, After::Continue);
                }
            }
            Phase::Done => {}
        }
    }

    fn round_open_message(&self) -> Message {
        let (round, query_ids) = match &self.phase {
            Phase::Open(open) => (open.round, open.query_ids.clone()),
            _ => (self.next_round, self.config.queries(self.next_round)),
        };
        Message::RoundOpen(RoundOpen {
            round,
            rounds: self.config.rounds,
            query_ids,
            target: self.target.to_labels(),
            secure: None,
        })
    }

    fn open_round(&mut self, now: Instant) {
        if self.next_round >= self.config.rounds {
            self.finish();
            return;
        }
        let round = self.next_round;
        let query_ids = self.config.queries(round);
        let mut secure = None;
        let mut secure_sum = None;
        if self.config.aggregation.secure {
            match SecureRound::new(
                self.secure_context,
                round,
                query_ids.len() * usize::from(self.config.classes),
                &self.present,
                self.config.aggregation.colluders,
                self.config.aggregation.dropouts,
            ) {
                Ok(s) => secure = Some(Box::new(s)),
                Err(why) => {
                    warn!(
                        round,
                        present = self.present.len(),
                        "secure round lost before it opened: {why}"
                    );
                    secure_sum = Some(Err(why));
                }
            }
        }
        let lost = secure_sum.is_some();
        self.phase = Phase::Open(OpenRound {
            round,
            query_ids,
            deadline: now + Duration::from_secs(self.config.round_timeout_secs),
            asked: self.present.clone(),
            accepted: BTreeMap::new(),
            waiting: self.present.clone(),
            secure,
            secure_sum,
        });
        if lost {
            // Too few nodes for the secure terms: nobody is asked; the round closes unaggregated.
            return self.close_round(now, ClosedBy::AllAnswered);
        }
        let message = self.round_open_message();
        match &self.phase {
            Phase::Open(OpenRound {
                secure: Some(secure),
                ..
            }) => {
                let Message::RoundOpen(open) = message else {
                    unreachable!("round_open_message is a RoundOpen")
                };
                let each: Vec<(String, Message)> = self
                    .present
                    .iter()
                    .map(|node| {
                        let mut open = open.clone();
                        open.secure = secure.terms(node);
                        (node.clone(), Message::RoundOpen(open))
                    })
                    .collect();
                for (node, message) in each {
                    self.send(&node, message, After::Continue);
                }
            }
            _ => {
                let message = Arc::new(message);
                for node in self.present.clone() {
                    self.send_shared(&node, message.clone(), After::Continue);
                }
            }
        }
        info!(
            round,
            asked = self.present.len(),
            "round {} of {} opened",
            round + 1,
            self.config.rounds
        );
    }

    fn receive(&mut self, now: Instant, node: String, message: Message) {
        match message {
            Message::Leave { reason } => {
                info!(node, "node left the federation: {reason}");
                self.summary(&node).left = Some(reason);
                self.transmits.push_back(Transmit {
                    node: node.clone(),
                    message: None,
                    after: After::Close,
                });
                self.depart(now, &node);
            }
            m @ (Message::KeyAdvert { .. }
            | Message::KeyShares { .. }
            | Message::Masked(_)
            | Message::Unmasked { .. }) => {
                let round = match &m {
                    Message::KeyAdvert { round, .. }
                    | Message::KeyShares { round, .. }
                    | Message::Unmasked { round, .. } => *round,
                    Message::Masked(masked) => masked.round,
                    _ => unreachable!("matched above"),
                };
                let checked = match &m {
                    Message::Masked(masked) => self.check_receipt(round, masked.receipt.as_ref()),
                    _ => Ok(()),
                };
                let taken = checked.and_then(|()| match &mut self.phase {
                    Phase::Open(OpenRound {
                        secure: Some(secure),
                        ..
                    }) => secure.receive(&node, m),
                    _ => Err(format!("round {round} is not an open secure round")),
                });
                match taken {
                    Ok(()) => self.advance_if_complete(now),
                    Err(reason) => {
                        warn!(node, "secure-round message refused: {reason}");
                        self.summary(&node).refused += 1;
                        self.send(&node, Message::Refused { round, reason }, After::Continue);
                    }
                }
            }
            Message::Contribution(c) => match self.check(&node, &c) {
                Ok(()) => {
                    if let Phase::Open(open) = &mut self.phase {
                        open.waiting.remove(&node);
                        open.accepted.insert(node, c);
                    }
                    self.close_if_complete(now);
                }
                Err(reason) => {
                    warn!(node, "contribution refused: {reason}");
                    self.summary(&node).refused += 1;
                    self.send(
                        &node,
                        Message::Refused {
                            round: c.round,
                            reason,
                        },
                        After::Continue,
                    );
                }
            },
            other => {
                let why = format!(
                    "unexpected {} from a node: after Hello nodes send only Contribution, Leave \
                     and the secure-round messages (KeyAdvert, KeyShares, Masked, Unmasked)",
                    other.kind()
                );
                warn!(node, "{why}");
                self.send(&node, Message::Error { message: why }, After::Close);
                self.depart(now, &node);
            }
        }
    }

    /// Whether a contribution can be accepted; the error says why not, for the node to read.
    fn check(&self, node: &str, c: &Contribution) -> Result<(), String> {
        let Phase::Open(open) = &self.phase else {
            return Err(format!(
                "contribution for round {}: no round is open",
                c.round
            ));
        };
        let round = open.round;
        if c.round < round {
            return Err(format!(
                "late: round {} has closed (round {round} is open)",
                c.round
            ));
        }
        if c.round > round {
            return Err(format!(
                "round {} is not open (round {round} is open)",
                c.round
            ));
        }
        if open.accepted.contains_key(node) {
            return Err(format!(
                "duplicate: a contribution of this node to round {round} was already accepted \
                 (one per node per round)"
            ));
        }
        if !open.asked.contains(node) {
            return Err(format!("this node was not asked in round {round}"));
        }
        if open.secure.is_some() {
            return Err(format!(
                "round {round} runs secure aggregation: contributions travel masked"
            ));
        }
        self.check_receipt(round, c.receipt.as_ref())?;
        c.labels
            .check_queries(&open.query_ids)
            .and_then(|()| c.labels.validate(self.config.classes as usize))
            .map_err(|e| format!("round {round}: {e}"))
    }

    /// A receipt required by the federation and well-formed, if any.
    fn check_receipt(&self, round: u32, receipt: Option<&PrivacyReceipt>) -> Result<(), String> {
        if self.config.require_privacy && receipt.is_none() {
            return Err(format!(
                "round {round}: this federation requires differential privacy and the \
                 contribution has no privacy receipt"
            ));
        }
        if let Some(bad) = receipt.and_then(receipt_defect) {
            return Err(format!("round {round}: the privacy receipt {bad}"));
        }
        Ok(())
    }

    fn depart(&mut self, now: Instant, node: &str) {
        self.present.remove(node);
        if let Phase::Open(open) = &mut self.phase {
            if let Some(secure) = &mut open.secure {
                // A secure round keeps its roster: the node counts as dropped from it.
                secure.gone(node);
                return self.advance_if_complete(now);
            }
            open.asked.remove(node);
            open.waiting.remove(node);
        }
        self.close_if_complete(now);
    }

    fn close_if_complete(&mut self, now: Instant) {
        if let Phase::Open(open) = &self.phase
            && open.waiting.is_empty()
        {
            self.close_round(now, ClosedBy::AllAnswered);
        }
    }

    /// A secure round's step is complete when nobody it waits for is left.
    fn advance_if_complete(&mut self, now: Instant) {
        if let Phase::Open(OpenRound {
            secure: Some(secure),
            ..
        }) = &self.phase
            && secure.pending() == 0
        {
            self.advance_secure(now);
        }
    }

    /// Moves a secure round to its next step, or closes it (decoded or lost).
    fn advance_secure(&mut self, now: Instant) {
        let timeout = Duration::from_secs(self.config.round_timeout_secs);
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let Some(secure) = open.secure.as_mut() else {
            return;
        };
        let round = open.round;
        match secure.advance() {
            Advance::Next(messages) => {
                open.deadline = now + timeout;
                for (node, message) in messages {
                    self.send(&node, message, After::Continue);
                }
            }
            Advance::Lost(why) => {
                warn!(
                    round,
                    "secure round lost: {why}; the target stays as it was"
                );
                open.secure_sum = Some(Err(why));
                self.close_round(now, ClosedBy::Deadline);
            }
            Advance::Done(sum) => {
                open.secure_sum = Some(Ok(sum));
                self.close_round(now, ClosedBy::AllAnswered);
            }
        }
    }

    fn close_round(&mut self, now: Instant, closed_by: ClosedBy) {
        let Phase::Open(open) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let round = open.round;
        let mut accepted: Vec<String> = open.accepted.keys().cloned().collect();
        let mut weights = BTreeMap::new();
        let mut aggregate = None;
        let mut receipts = BTreeMap::new();
        let secure_mode = open.secure.is_some() || open.secure_sum.is_some();
        if let Some(Ok(sum)) = &open.secure_sum {
            accepted = sum.survivors.clone();
            receipts = sum.receipts.clone();
        }
        let quorate = accepted.len() >= self.config.quorum.max(1);
        if secure_mode {
            if let (true, Some(Ok(sum))) = (quorate, &open.secure_sum) {
                let classes = usize::from(self.config.classes);
                let counts: Vec<f64> = sum.counts.iter().map(|&v| v as f64).collect();
                let projection =
                    fd_protocol::Projection::vote_mass(sum.teachers as usize, classes, sum.sigma);
                let labels = SoftLabels {
                    classes: self.config.classes,
                    query_ids: open.query_ids.clone(),
                    probs: projection.apply(&counts, classes),
                };
                self.target.update(&labels);
                info!(
                    round,
                    survivors = accepted.len(),
                    teachers = sum.teachers,
                    sigma = sum.sigma,
                    "secure round: the survivors' sum decoded"
                );
                aggregate = Some(labels);
            }
        } else if quorate {
            // BTreeMap order: contributions are combined sorted by node (reproducible sums).
            let inputs: Vec<AggregateInput<'_>> = open
                .accepted
                .iter()
                .map(|(node, c)| AggregateInput {
                    node,
                    labels: &c.labels,
                })
                .collect();
            if let Some(a) = self.aggregator.aggregate(&inputs) {
                self.target.update(&a.labels);
                weights = a.weights;
                aggregate = Some(a.labels);
            } else {
                warn!(
                    round,
                    accepted = accepted.len(),
                    "the aggregator produced nothing: the target stays as it was"
                );
            }
        } else {
            warn!(
                round,
                accepted = accepted.len(),
                quorum = self.config.quorum,
                "round below quorum: not aggregated, the target stays as it was"
            );
        }
        // A secure round's survivors (its `accepted` holds no plain contributions).
        if let Some(Ok(sum)) = &open.secure_sum {
            for node in &sum.survivors {
                let s = self.summary(node);
                s.contributions += 1;
                if let Some(r) = sum.receipts.get(node) {
                    note_receipt(s, r);
                }
            }
        }
        for (node, c) in &open.accepted {
            let weight = weights.get(node).copied();
            let s = self.summary(node);
            s.contributions += 1;
            s.weight = weight;
            if let Some(r) = &c.receipt {
                note_receipt(s, r);
                receipts.insert(node.clone(), r.clone());
            }
        }
        let reputations = self.aggregator.reputations();
        for (node, r) in &reputations {
            if let Some(s) = self.nodes.get_mut(node) {
                s.reputation = Some(*r);
            }
        }
        info!(
            round,
            accepted = accepted.len(),
            asked = open.asked.len(),
            ?closed_by,
            target = self.target.len(),
            weights = ?weights,
            "round closed"
        );
        let record = RoundRecord {
            round,
            query_ids: open.query_ids,
            asked: open.asked.iter().cloned().collect(),
            accepted,
            // From the outcome, not the quorum: a record must never claim an aggregate that
            // the target does not hold.
            aggregated: aggregate.is_some(),
            closed_by,
            weights,
            reputations,
            receipts,
            aggregate,
            bytes: self
                .nodes
                .values()
                .map(|n| (n.node.clone(), [n.bytes_up, n.bytes_down]))
                .collect(),
            wall_seconds: self.wall_seconds_at(now),
        };
        let closed = Message::RoundClosed(RoundClosed {
            round,
            accepted: record.accepted.len() as u32,
            asked: record.asked.len() as u32,
        });
        self.log.push(RoundBrief::of(&record));
        self.events.push_back(Event::RoundClosed(Box::new(record)));
        let closed = Arc::new(closed);
        for node in self.present.clone() {
            self.send_shared(&node, closed.clone(), After::Continue);
        }
        self.next_round = round + 1;
        if self.next_round >= self.config.rounds {
            self.finish();
        } else if self.present.is_empty() {
            let why = format!("every node left by the end of round {round}");
            warn!("{why}; ending the federation early");
            self.ended_early = Some(why);
            self.finish();
        } else {
            self.open_round(now);
        }
    }

    fn finish(&mut self) {
        let message = Arc::new(Message::Finished {
            rounds: self.log.len() as u32,
            target: self.target.to_labels(),
        });
        for node in self.present.clone() {
            self.summary(&node).finished = true;
            self.send_shared(&node, message.clone(), After::Close);
        }
        self.phase = Phase::Done;
        self.events.push_back(Event::Finished);
    }
}

fn note_receipt(s: &mut NodeSummary, r: &PrivacyReceipt) {
    let releases = s.privacy.as_ref().map_or(0, |p| p.releases);
    s.privacy = Some(NodeSpending {
        mechanism: r.mechanism.clone(),
        unit: r.unit.clone(),
        releases: releases + 1,
        rho_total: r.rho_total,
        epsilon_total: r.epsilon_total,
        delta: r.delta,
        floor_epsilon_total: r.floor_epsilon_total,
    });
}

/// What is wrong with a receipt, if anything: every number must be finite and in range.
fn receipt_defect(r: &PrivacyReceipt) -> Option<String> {
    let numbers = [
        r.sigma,
        r.sensitivity,
        r.rho,
        r.rho_total,
        r.epsilon_total,
        r.delta,
    ];
    if numbers.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Some("has a negative or non-finite number".into());
    }
    if r.rho_total < r.rho || !(r.delta > 0.0 && r.delta < 1.0) {
        return Some("is inconsistent (rho_total < rho, or delta outside (0, 1))".into());
    }
    // A share's own floor can only be weaker than the sum's guarantee.
    if let Some(floor) = r.floor_epsilon_total
        && !(floor.is_finite() && floor >= r.epsilon_total)
    {
        return Some(format!(
            "has a floor epsilon {floor} that is not finite or is below the sum's {}",
            r.epsilon_total
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregationConfig, AggregatorKind};

    fn config() -> FederationConfig {
        FederationConfig {
            queries_per_round: 2,
            quorum: 2,
            aggregation: AggregationConfig {
                strategy: AggregatorKind::Mean,
                ..AggregationConfig::default()
            },
            ..crate::config::test_config(3, 2, 4)
        }
    }

    fn hello() -> Hello {
        Hello {
            public_records: 4,
            classes: 2,
            private_records: 10,
            public_sha256: None,
            private: false,
        }
    }

    #[test]
    fn a_resumed_federation_carries_its_byte_counters_and_wall_time_on() {
        let t0 = Instant::now();
        let record = RoundRecord {
            round: 0,
            query_ids: vec![0, 1],
            asked: vec!["a".into()],
            accepted: vec!["a".into()],
            aggregated: false,
            closed_by: ClosedBy::AllAnswered,
            weights: BTreeMap::new(),
            reputations: BTreeMap::new(),
            receipts: BTreeMap::new(),
            aggregate: None,
            bytes: [("a".to_owned(), [500, 900])].into(),
            wall_seconds: 12.0,
        };
        let config = config();
        let aggregator = config.aggregation.build();
        let mut rounds = Rounds::resume(
            config,
            aggregator,
            t0,
            Resume {
                rounds_done: 1,
                records: vec![record],
                ..Resume::default()
            },
        );
        rounds.handle(
            t0,
            Input::Arrived {
                node: "a".into(),
                hello: hello(),
                bytes: 10,
            },
        );
        let summary = rounds.summary_at(t0 + Duration::from_secs(3));
        let a = summary.nodes.iter().find(|n| n.node == "a").expect("a");
        // 500 before the restart and the 10-byte Hello after it.
        assert_eq!(a.bytes_up, 510);
        assert_eq!(a.bytes_down, 900);
        assert_eq!(summary.wall_seconds, 15.0);
        assert!(rounds.members.contains("a"));
    }

    /// The Reject reason each node got, in order, from the transmits so far.
    fn rejections(rounds: &mut Rounds) -> Vec<(String, String)> {
        std::iter::from_fn(|| rounds.poll_transmit())
            .filter_map(|t| match t.message.as_deref() {
                Some(Message::Reject { reason }) => Some((t.node, reason.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn admission_applies_the_allow_list_the_maximum_the_public_file_and_privacy() {
        let t0 = Instant::now();
        let sha = [3u8; 32];
        let config = FederationConfig {
            allow: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            max_nodes: Some(3),
            public_sha256: Some(fd_protocol::sha256_hex(sha)),
            require_privacy: true,
            ..config()
        };
        let aggregator = config.aggregation.build();
        let mut rounds = Rounds::new(config, aggregator, t0);
        let good = Hello {
            public_sha256: Some(sha),
            private: true,
            ..hello()
        };
        let arrive = |rounds: &mut Rounds, node: &str, hello: Hello| {
            rounds.handle(
                t0,
                Input::Arrived {
                    node: node.into(),
                    hello,
                    bytes: 1,
                },
            );
            rejections(rounds)
        };
        let refused = arrive(&mut rounds, "mallory", good.clone());
        assert!(refused[0].1.contains("allow-list"), "{refused:?}");
        let other_file = Hello {
            public_sha256: Some([4u8; 32]),
            ..good.clone()
        };
        let refused = arrive(&mut rounds, "a", other_file);
        let why = &refused[0].1;
        // Both fingerprints, in hex, so the operator can compare them with sha256sum.
        assert!(
            why.contains(&"04".repeat(32)) && why.contains(&"03".repeat(32)),
            "{why}"
        );
        let refused = arrive(
            &mut rounds,
            "a",
            Hello {
                public_sha256: None,
                ..good.clone()
            },
        );
        assert!(refused[0].1.contains("did not say"), "{refused:?}");
        let refused = arrive(
            &mut rounds,
            "a",
            Hello {
                private: false,
                ..good.clone()
            },
        );
        assert!(
            refused[0].1.contains("requires differential privacy"),
            "{refused:?}"
        );
        for node in ["a", "b", "c"] {
            assert!(
                arrive(&mut rounds, node, good.clone()).is_empty(),
                "{node} admitted"
            );
        }
        // The fourth distinct node is over max_nodes = 3; a member reconnecting is not.
        let refused = arrive(&mut rounds, "d", good.clone());
        assert!(refused[0].1.contains("max_nodes = 3"), "{refused:?}");
        assert!(arrive(&mut rounds, "b", good).is_empty(), "b reconnects");
    }

    /// A machine, its virtual clock's origin, and helpers to drive it.
    struct Sim {
        rounds: Rounds,
        t0: Instant,
    }

    impl Sim {
        fn new(config: FederationConfig) -> Sim {
            let t0 = Instant::now();
            let aggregator = config.aggregation.build();
            Sim {
                rounds: Rounds::new(config, aggregator, t0),
                t0,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn join(&mut self, secs: u64, node: &str) {
            let now = self.at(secs);
            self.rounds.handle(
                now,
                Input::Arrived {
                    node: node.into(),
                    hello: hello(),
                    bytes: 10,
                },
            );
        }

        fn contribute(&mut self, secs: u64, node: &str, c: Contribution) {
            let now = self.at(secs);
            self.rounds.handle(
                now,
                Input::Received {
                    node: node.into(),
                    message: Message::Contribution(c),
                    bytes: 100,
                },
            );
        }

        /// Drains the transmits as (node, message kind) pairs.
        fn sent(&mut self) -> Vec<(String, &'static str)> {
            std::iter::from_fn(|| self.rounds.poll_transmit())
                .map(|t| (t.node, t.message.as_deref().map_or("close", Message::kind)))
                .collect()
        }

        /// Drains the transmits, keeping only Refused reasons and Error messages per node.
        fn complaints(&mut self) -> Vec<(String, String)> {
            std::iter::from_fn(|| self.rounds.poll_transmit())
                .filter_map(|t| match t.message.as_deref() {
                    Some(Message::Refused { reason, .. }) => Some((t.node, reason.clone())),
                    Some(Message::Error { message }) => Some((t.node, message.clone())),
                    _ => None,
                })
                .collect()
        }

        fn closed_rounds(&mut self) -> Vec<RoundRecord> {
            std::iter::from_fn(|| self.rounds.poll_event())
                .filter_map(|e| match e {
                    Event::RoundClosed(r) => Some(*r),
                    _ => None,
                })
                .collect()
        }
    }

    /// Round `round` of [`config`] asks queries `[2r mod 4, 2r+1 mod 4]`.
    fn contribution(round: u32, p0: f32) -> Contribution {
        let q = round * 2 % 4;
        Contribution {
            round,
            labels: SoftLabels {
                classes: 2,
                query_ids: vec![q, q + 1],
                probs: vec![p0, 1.0 - p0, p0, 1.0 - p0],
            },
            receipt: None,
        }
    }

    /// The longest timeouts a config may hold make deadlines without overflowing the clock:
    /// the join deadline at start and the round deadline once every node has joined.
    #[test]
    fn the_longest_timeouts_accepted_make_deadlines_without_panicking() {
        let max = crate::config::MAX_TIMEOUT_SECS;
        let config = FederationConfig {
            join_timeout_secs: max,
            round_timeout_secs: max,
            ..config()
        };
        config.validate().unwrap();
        let mut sim = Sim::new(config);
        assert_eq!(sim.rounds.poll_timeout(), Some(sim.at(max)));
        for n in ["a", "b", "c"] {
            sim.join(1, n);
        }
        assert!(sim.sent().contains(&("a".into(), "RoundOpen")));
        assert_eq!(sim.rounds.poll_timeout(), Some(sim.at(1 + max)));
    }

    fn started() -> Sim {
        let mut sim = Sim::new(config());
        for n in ["a", "b", "c"] {
            sim.join(0, n);
        }
        sim
    }

    /// A secure round numbers its roster and sends each node its own terms; a node gone
    /// before advertising leaves too few for the threshold, so the round is lost (recorded,
    /// not aggregated), and the next round runs over the nodes present. Plain contributions
    /// are refused in a secure round.
    #[test]
    fn a_secure_round_below_its_threshold_is_lost_and_the_next_runs_over_who_is_left() {
        let mut config = config();
        config.aggregation.secure = true;
        config.aggregation.colluders = 1;
        config.aggregation.dropouts = 0;
        let mut sim = Sim::new(config);
        for node in ["a", "b", "c"] {
            sim.join(0, node);
        }
        let terms: Vec<(String, u32, u32, u32)> = std::iter::from_fn(|| sim.rounds.poll_transmit())
            .filter_map(|t| match t.message.as_deref() {
                Some(Message::RoundOpen(open)) => open
                    .secure
                    .as_ref()
                    .map(|s| (t.node.clone(), s.node, s.roster, s.threshold)),
                _ => None,
            })
            .collect();
        // 3 nodes and 1 colluder: threshold floor(4 / 2) + 1 = 3.
        assert_eq!(
            terms,
            vec![
                ("a".into(), 1, 3, 3),
                ("b".into(), 2, 3, 3),
                ("c".into(), 3, 3, 3)
            ]
        );
        sim.contribute(1, "a", contribution(0, 0.5));
        assert!(
            sim.complaints()
                .iter()
                .any(|(n, why)| n == "a" && why.contains("travel masked"))
        );
        sim.rounds.handle(
            sim.at(1),
            Input::Gone {
                node: "b".into(),
                reason: "test".into(),
                misbehaved: false,
            },
        );
        for (node, id) in [("a", 1), ("c", 3)] {
            sim.rounds.handle(
                sim.at(2),
                Input::Received {
                    node: node.into(),
                    message: Message::KeyAdvert {
                        round: 0,
                        advert: fd_secagg::KeyAdvert {
                            node: id,
                            cipher_key: [0; 32],
                            mask_key: [0; 32],
                            signature: Vec::new(),
                        },
                        certificate: Vec::new(),
                    },
                    bytes: 100,
                },
            );
        }
        let closed = sim.closed_rounds();
        assert_eq!(closed.len(), 1);
        assert!(!closed[0].aggregated);
        assert!(closed[0].accepted.is_empty());
        // Round 1 opens over a and c: 2 nodes, threshold floor(3 / 2) + 1 = 2.
        let reopened: Vec<(String, u32, u32)> = std::iter::from_fn(|| sim.rounds.poll_transmit())
            .filter_map(|t| match t.message.as_deref() {
                Some(Message::RoundOpen(open)) => open
                    .secure
                    .as_ref()
                    .map(|s| (t.node.clone(), open.round, s.roster)),
                _ => None,
            })
            .collect();
        assert_eq!(reopened, vec![("a".into(), 1, 2), ("c".into(), 1, 2)]);
    }

    #[test]
    fn a_round_closes_when_everyone_answered_and_the_run_finishes() {
        let mut sim = started();
        let sent = sim.sent();
        // Three Welcomes, then round 0 opens once all three have joined.
        assert_eq!(sent.iter().filter(|(_, k)| *k == "Welcome").count(), 3);
        assert_eq!(sent.iter().filter(|(_, k)| *k == "RoundOpen").count(), 3);
        assert_eq!(sim.rounds.poll_timeout(), Some(sim.at(10)));
        for (n, p) in [("a", 1.0), ("b", 0.5), ("c", 0.0)] {
            sim.contribute(1, n, contribution(0, p));
        }
        let records = sim.closed_rounds();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].closed_by, ClosedBy::AllAnswered);
        assert_eq!(records[0].accepted, ["a", "b", "c"]);
        // The mean of 1, 0.5 and 0 on class 0.
        assert_eq!(records[0].aggregate.as_ref().unwrap().probs[0], 0.5);
        // Round 1 opened at t = 1 with its own deadline.
        assert_eq!(sim.rounds.poll_timeout(), Some(sim.at(11)));
        for n in ["a", "b", "c"] {
            sim.contribute(2, n, contribution(1, 1.0));
        }
        let sent = sim.sent();
        assert_eq!(sent.iter().filter(|(_, k)| *k == "Finished").count(), 3);
        assert!(sim.rounds.is_done());
        let summary = sim.rounds.summary_now();
        assert_eq!(summary.rounds, 2);
        assert_eq!(summary.accepted_per_round, [3, 3]);
        // Round 0 labelled queries 0 and 1, round 1 queries 2 and 3.
        assert_eq!(summary.target_records, 4);
        assert!(summary.nodes.iter().all(|n| n.contributions == 2));
    }

    #[test]
    fn a_silent_node_costs_one_deadline_and_its_late_answer_is_refused() {
        let mut sim = started();
        sim.sent();
        sim.contribute(1, "a", contribution(0, 1.0));
        sim.contribute(2, "b", contribution(0, 1.0));
        // c says nothing; nothing happens before the deadline.
        sim.rounds.handle_timeout(sim.at(9));
        assert!(sim.closed_rounds().is_empty());
        sim.rounds.handle_timeout(sim.at(10));
        let records = sim.closed_rounds();
        assert_eq!(records[0].closed_by, ClosedBy::Deadline);
        assert_eq!(records[0].asked, ["a", "b", "c"]);
        assert_eq!(records[0].accepted, ["a", "b"]);
        assert!(records[0].aggregated, "2 accepted meets the quorum of 2");
        sim.sent();
        // c's answer to round 0 arrives during round 1: refused with the reason, c stays.
        sim.contribute(11, "c", contribution(0, 1.0));
        let complaints = sim.complaints();
        assert_eq!(complaints.len(), 1);
        assert_eq!(complaints[0].0, "c");
        assert!(complaints[0].1.contains("late"), "{complaints:?}");
        assert!(sim.rounds.present().any(|n| n == "c"));
        // c answers round 1 on time and counts.
        for n in ["a", "b", "c"] {
            sim.contribute(12, n, contribution(1, 1.0));
        }
        assert_eq!(sim.closed_rounds()[0].accepted.len(), 3);
    }

    #[test]
    fn below_quorum_the_round_closes_without_touching_the_target() {
        let mut sim = started();
        sim.contribute(1, "a", contribution(0, 1.0));
        sim.rounds.handle_timeout(sim.at(10));
        let records = sim.closed_rounds();
        assert!(
            !records[0].aggregated,
            "1 accepted is below the quorum of 2"
        );
        assert!(records[0].aggregate.is_none());
        assert_eq!(sim.rounds.summary_now().target_records, 0);
        // The federation carries on with round 1.
        assert!(
            sim.sent()
                .iter()
                .any(|(n, k)| n == "a" && *k == "RoundOpen")
        );
    }

    /// A strategy that never produces an aggregate.
    struct Abstains;

    impl Aggregator for Abstains {
        fn kind(&self) -> crate::aggregate::AggregatorKind {
            crate::aggregate::AggregatorKind::Mean
        }
        fn aggregate(&mut self, _: &[AggregateInput<'_>]) -> Option<crate::aggregate::Aggregate> {
            None
        }
        fn reputations(&self) -> BTreeMap<String, f64> {
            BTreeMap::new()
        }
        fn restore(&mut self, _: BTreeMap<String, f64>) {}
    }

    #[test]
    fn a_quorate_round_the_aggregator_declines_is_recorded_as_not_aggregated() {
        let t0 = Instant::now();
        let mut sim = Sim {
            rounds: Rounds::new(config(), Box::new(Abstains), t0),
            t0,
        };
        for n in ["a", "b", "c"] {
            sim.join(0, n);
        }
        for n in ["a", "b", "c"] {
            sim.contribute(1, n, contribution(0, 1.0));
        }
        let records = sim.closed_rounds();
        // 3 accepted meets the quorum of 2, but there is no aggregate.
        assert_eq!(records[0].accepted.len(), 3);
        assert!(!records[0].aggregated);
        assert!(records[0].aggregate.is_none());
        assert_eq!(sim.rounds.summary_now().target_records, 0);
    }

    #[test]
    fn each_bad_contribution_is_refused_with_its_reason_and_others_are_unaffected() {
        let mut sim = started();
        sim.sent();
        let mut cases: Vec<(&str, Contribution, &str)> = Vec::new();
        cases.push(("a", contribution(1, 1.0), "not open"));
        let mut unknown = contribution(0, 1.0);
        unknown.labels.query_ids = vec![0, 3];
        cases.push(("a", unknown, "query ids differ"));
        let mut shape = contribution(0, 1.0);
        shape.labels.probs.pop();
        cases.push(("a", shape, "shape"));
        let mut nan = contribution(0, 1.0);
        nan.labels.probs[1] = f32::NAN;
        cases.push(("a", nan, "not finite"));
        let mut off = contribution(0, 1.0);
        off.labels.probs[0] = 0.7;
        cases.push(("a", off, "not a probability vector"));
        for (node, c, _) in &cases {
            sim.contribute(1, node, c.clone());
        }
        let complaints = sim.complaints();
        assert_eq!(complaints.len(), cases.len());
        for ((node, reason), (_, _, expected)) in complaints.iter().zip(&cases) {
            assert_eq!(node, "a");
            assert!(reason.contains(expected), "{reason} lacks {expected}");
        }
        // a may still answer properly; then a duplicate is refused.
        sim.contribute(2, "a", contribution(0, 1.0));
        sim.contribute(2, "a", contribution(0, 1.0));
        let complaints = sim.complaints();
        assert!(complaints[0].1.contains("duplicate"), "{complaints:?}");
        sim.contribute(3, "b", contribution(0, 0.0));
        sim.contribute(3, "c", contribution(0, 0.0));
        let records = sim.closed_rounds();
        assert_eq!(records[0].accepted, ["a", "b", "c"]);
        assert_eq!(sim.rounds.summary_now().nodes[0].refused, 6);
    }

    #[test]
    fn unreadable_input_and_unexpected_messages_close_only_that_node() {
        let mut sim = started();
        sim.sent();
        let now = sim.at(1);
        sim.rounds.handle(
            now,
            Input::Gone {
                node: "a".into(),
                reason: "frame of 99999999 bytes exceeds the maximum".into(),
                misbehaved: true,
            },
        );
        sim.rounds.handle(
            now,
            Input::Received {
                node: "b".into(),
                message: Message::Hello(hello()),
                bytes: 5,
            },
        );
        let complaints = sim.complaints();
        assert_eq!(complaints.len(), 2);
        assert!(complaints[0].0 == "a" && complaints[0].1.contains("exceeds"));
        assert!(complaints[1].0 == "b" && complaints[1].1.contains("unexpected Hello"));
        // c alone is left; its answer completes the round (quorum 2 not met, so no aggregate).
        sim.contribute(2, "c", contribution(0, 1.0));
        let records = sim.closed_rounds();
        assert_eq!(records[0].asked, ["c"]);
        assert_eq!(records[0].closed_by, ClosedBy::AllAnswered);
    }

    #[test]
    fn late_joiners_are_asked_and_a_reconnect_is_not_counted_twice() {
        let mut config = config();
        config.nodes = 2;
        let mut sim = Sim::new(config);
        sim.join(0, "a");
        sim.join(0, "b");
        sim.sent();
        sim.contribute(1, "a", contribution(0, 1.0));
        // c joins during round 0 and is asked for it at once.
        sim.join(2, "c");
        let sent = sim.sent();
        assert_eq!(sent, [("c".into(), "Welcome"), ("c".into(), "RoundOpen")]);
        // a reconnects: welcomed again, but not asked again for the round it answered.
        sim.join(3, "a");
        assert_eq!(sim.sent(), [("a".into(), "Welcome")]);
        sim.contribute(4, "a", contribution(0, 1.0));
        assert!(sim.complaints()[0].1.contains("duplicate"));
        sim.contribute(4, "b", contribution(0, 1.0));
        sim.contribute(5, "c", contribution(0, 1.0));
        let records = sim.closed_rounds();
        assert_eq!(records[0].accepted, ["a", "b", "c"]);
    }

    #[test]
    fn leaving_nodes_do_not_stall_and_the_last_one_out_ends_the_run() {
        let mut config = config();
        config.rounds = 3;
        let mut sim = Sim::new(config);
        for n in ["a", "b", "c"] {
            sim.join(0, n);
        }
        sim.sent();
        let leave = |sim: &mut Sim, node: &str| {
            let now = sim.at(1);
            sim.rounds.handle(
                now,
                Input::Received {
                    node: node.into(),
                    message: Message::Leave {
                        reason: "budget spent".into(),
                    },
                    bytes: 5,
                },
            );
        };
        sim.contribute(1, "a", contribution(0, 1.0));
        sim.contribute(1, "b", contribution(0, 1.0));
        leave(&mut sim, "c");
        assert_eq!(sim.closed_rounds()[0].accepted, ["a", "b"]);
        leave(&mut sim, "a");
        leave(&mut sim, "b");
        let summary = sim.rounds.summary_now();
        assert!(sim.rounds.is_done());
        // Round 1 closed empty when b left, and round 2 of 3 was never opened.
        assert_eq!(summary.rounds, 2);
        assert!(summary.ended_early.unwrap().contains("every node left"));
        assert_eq!(summary.nodes[2].left.as_deref(), Some("budget spent"));
    }

    #[test]
    fn join_deadline_starts_with_a_quorum_or_gives_up() {
        let mut sim = Sim::new(config());
        sim.join(0, "a");
        sim.rounds.handle_timeout(sim.at(30));
        assert!(matches!(
            sim.rounds.poll_event(),
            Some(Event::JoinTimedOut {
                joined: 1,
                expected: 3
            })
        ));
        let mut sim = Sim::new(config());
        sim.join(0, "a");
        sim.join(0, "b");
        sim.sent();
        sim.rounds.handle_timeout(sim.at(30));
        assert_eq!(sim.sent().len(), 2, "round 0 opens for the two present");
    }

    #[test]
    fn resume_continues_from_the_committed_round_with_its_target() {
        let target = SoftLabels {
            classes: 2,
            query_ids: vec![0, 1],
            probs: vec![0.25, 0.75, 1.0, 0.0],
        };
        let config = config();
        let aggregator = config.aggregation.build();
        let t0 = Instant::now();
        let mut rounds = Rounds::resume(
            config,
            aggregator,
            t0,
            Resume {
                rounds_done: 1,
                target: target.clone(),
                ..Resume::default()
            },
        );
        for n in ["a", "b", "c"] {
            rounds.handle(
                t0,
                Input::Arrived {
                    node: n.into(),
                    hello: hello(),
                    bytes: 1,
                },
            );
        }
        let opens: Vec<RoundOpen> = std::iter::from_fn(|| rounds.poll_transmit())
            .filter_map(|t| match t.message.as_deref() {
                Some(Message::RoundOpen(o)) => Some(o.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(opens.len(), 3);
        assert_eq!(opens[0].round, 1);
        assert_eq!(opens[0].target, target);
    }
}
