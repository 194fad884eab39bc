//! The coordinator's QUIC server: admission, the round loop, and the end of the federation.
//!
//! Tasks: one accepts connections and admits peers (TLS has already checked the certificate
//! against the federation CA; the node's name is taken from that certificate); one per admitted
//! node reads its messages; and the driver, which owns all round state, receives everything as
//! [`Event`]s on one channel, so no state is shared between tasks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fd_certs::transport::{self, TransportError};
use fd_protocol::{Hello, Message, RoundClosed, RoundOpen, SoftLabels, Welcome};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::aggregate::{self, Target};
use crate::config::FederationConfig;

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] fd_certs::CertError),
    /// The endpoint could not be opened.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Too few nodes joined in time.
    #[error("only {joined} of {expected} nodes joined within {secs} s")]
    JoinTimeout {
        /// Nodes that joined.
        joined: usize,
        /// Nodes expected.
        expected: usize,
        /// The join timeout.
        secs: u64,
    },
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
}

/// The coordinator's account of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Federation name.
    pub federation: String,
    /// Rounds completed.
    pub rounds: u32,
    /// Why the federation ended before its planned rounds, if it did.
    pub ended_early: Option<String>,
    /// Contributions accepted in each round.
    pub accepted_per_round: Vec<u32>,
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

/// Opens the QUIC endpoint described by `config` (TLS files, listen address).
pub fn bind(config: &FederationConfig) -> Result<quinn::Endpoint, CoordinatorError> {
    let tls = fd_certs::tls::TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
    let server = fd_certs::tls::server_config(&tls)?;
    Ok(transport::server_endpoint(config.listen, server)?)
}

/// Opens the endpoint described by `config` and runs the federation to its end.
pub async fn serve(config: FederationConfig) -> Result<Summary, CoordinatorError> {
    let endpoint = bind(&config)?;
    run(config, endpoint).await
}

/// A peer whose certificate checked out and whose Hello arrived.
struct Arrival {
    name: String,
    hello: Hello,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    bytes: u64,
}

enum Event {
    Arrived(Box<Arrival>),
    Message {
        node: String,
        message: Message,
        bytes: u64,
    },
    Gone {
        node: String,
        reason: String,
    },
}

struct Peer {
    connection: quinn::Connection,
    send: quinn::SendStream,
    summary: NodeSummary,
}

/// Runs the federation on an already-open endpoint (the simulator binds port 0 and passes it).
pub async fn run(
    config: FederationConfig,
    endpoint: quinn::Endpoint,
) -> Result<Summary, CoordinatorError> {
    let (events, mut inbox) = mpsc::channel::<Event>(1024);
    let accept_task = tokio::spawn(accept_loop(endpoint.clone(), events.clone()));
    let mut driver = Driver {
        config,
        events,
        peers: BTreeMap::new(),
        started: Instant::now(),
        max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
    };
    let result = driver.drive(&mut inbox).await;
    accept_task.abort();
    // Let Finished and closes reach the nodes, but never hang on a silent one.
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    endpoint.close(0u32.into(), b"federation over");
    result
}

async fn accept_loop(endpoint: quinn::Endpoint, events: mpsc::Sender<Event>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(admit(incoming, events.clone()));
    }
}

/// Completes the handshake and reads Hello. Refusals here are logged and the peer dropped;
/// nothing reaches the driver from a peer that failed TLS.
async fn admit(incoming: quinn::Incoming, events: mpsc::Sender<Event>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            warn!(%remote, "refused connection: {e}");
            return;
        }
    };
    let name = match fd_certs::tls::peer_name(&connection) {
        Ok(n) => n,
        Err(e) => {
            warn!(%remote, "refused: no usable node name in the certificate: {e}");
            connection.close(1u32.into(), b"no node name in certificate");
            return;
        }
    };
    let hello = async {
        let (send, mut recv) = connection.accept_bi().await.map_err(TransportError::from)?;
        let read = transport::read_message(&mut recv, fd_protocol::DEFAULT_MAX_FRAME_LEN).await?;
        Ok::<_, TransportError>((send, recv, read))
    };
    match tokio::time::timeout(Duration::from_secs(30), hello).await {
        Ok(Ok((send, recv, Some((Message::Hello(hello), bytes))))) => {
            let arrival = Arrival {
                name,
                hello,
                connection,
                send,
                recv,
                bytes: bytes as u64,
            };
            let _ = events.send(Event::Arrived(Box::new(arrival))).await;
        }
        Ok(Ok((_, _, other))) => {
            let got = other.map_or("nothing", |(m, _)| m.kind());
            warn!(%remote, node = %name, "refused: expected Hello, got {got}");
            connection.close(2u32.into(), b"expected Hello");
        }
        Ok(Err(e)) => warn!(%remote, node = %name, "refused: {e}"),
        Err(_) => {
            warn!(%remote, node = %name, "refused: no Hello within 30 s");
            connection.close(3u32.into(), b"no Hello");
        }
    }
}

/// What is wrong with a receipt, if anything: every number must be finite and in range.
fn receipt_defect(r: &fd_protocol::PrivacyReceipt) -> Option<String> {
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
    None
}

/// Forwards one node's messages to the driver until its stream ends.
async fn read_loop(
    node: String,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<Event>,
    max_frame_len: usize,
) {
    let reason = loop {
        match transport::read_message(&mut recv, max_frame_len).await {
            Ok(Some((message, bytes))) => {
                let event = Event::Message {
                    node: node.clone(),
                    message,
                    bytes: bytes as u64,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Ok(None) => break "closed its stream".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = events.send(Event::Gone { node, reason }).await;
}

struct Driver {
    config: FederationConfig,
    events: mpsc::Sender<Event>,
    peers: BTreeMap<String, Peer>,
    started: Instant,
    max_frame_len: usize,
}

impl Driver {
    async fn drive(
        &mut self,
        inbox: &mut mpsc::Receiver<Event>,
    ) -> Result<Summary, CoordinatorError> {
        self.join(inbox).await?;
        self.started = Instant::now();
        let mut target = Target::new(self.config.classes);
        let mut accepted_per_round = Vec::new();
        let mut summary_nodes: BTreeMap<String, NodeSummary> = BTreeMap::new();
        let mut ended_early = None;
        for round in 0..self.config.rounds {
            let accepted = self
                .round(round, &mut target, inbox, &mut summary_nodes)
                .await;
            accepted_per_round.push(accepted);
            if self.peers.is_empty() {
                // Every node left (budgets spent, or gone): the federation ends here, with the
                // rounds it completed. This is the design's "until budgets run out".
                let why = format!("every node left by the end of round {round}");
                warn!("{why}; ending the federation early");
                ended_early = Some(why);
                break;
            }
        }
        let rounds_done = accepted_per_round.len() as u32;
        let final_labels = target.to_labels();
        let finished = Message::Finished {
            rounds: rounds_done,
            target: final_labels.clone(),
        };
        for name in self.peer_names() {
            if self.send(&name, &finished).await
                && let Some(peer) = self.peers.get_mut(&name)
            {
                peer.summary.finished = true;
                let _ = peer.send.finish();
            }
        }
        let wall_seconds = self.started.elapsed().as_secs_f64();
        // Wait (up to 30 s in all) for each node to close after Finished, so the last frame is
        // delivered before the endpoint goes away.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for peer in self.peers.values() {
            let _ = tokio::time::timeout_at(deadline, peer.connection.closed()).await;
        }
        for (name, peer) in std::mem::take(&mut self.peers) {
            summary_nodes.insert(name, peer.summary);
        }
        let nodes: Vec<NodeSummary> = summary_nodes.into_values().collect();
        Ok(Summary {
            federation: self.config.name.clone(),
            rounds: rounds_done,
            ended_early,
            accepted_per_round,
            target_records: final_labels.len(),
            bytes_up: nodes.iter().map(|n| n.bytes_up).sum(),
            bytes_down: nodes.iter().map(|n| n.bytes_down).sum(),
            nodes,
            wall_seconds,
            target: final_labels,
        })
    }

    fn peer_names(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    /// Sends to one node; on failure the node is dropped and `false` returned.
    async fn send(&mut self, node: &str, message: &Message) -> bool {
        let Some(peer) = self.peers.get_mut(node) else {
            return false;
        };
        match transport::write_message(&mut peer.send, message, self.max_frame_len).await {
            Ok(n) => {
                peer.summary.bytes_down += n as u64;
                true
            }
            Err(e) => {
                warn!(node, "dropping node: cannot send {}: {e}", message.kind());
                self.peers.remove(node);
                false
            }
        }
    }

    /// Tells a node why it is refused and closes its connection.
    async fn refuse(&mut self, node: &str, why: String) {
        warn!(node, "{why}");
        self.send(node, &Message::Error { message: why }).await;
        if let Some(mut peer) = self.peers.remove(node) {
            let _ = peer.send.finish();
        }
    }

    /// Admits or rejects a newcomer. Returns whether it was admitted.
    async fn arrive(&mut self, arrival: Arrival, open: bool) -> bool {
        let Arrival {
            name,
            hello,
            connection,
            mut send,
            recv,
            bytes,
        } = arrival;
        let reject = if !open {
            Some("the federation has already started".to_owned())
        } else if self.peers.contains_key(&name) {
            Some(format!("a node named '{name}' is already connected"))
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
            warn!(node = %name, "rejected: {reason}");
            let _ = transport::write_message(
                &mut send,
                &Message::Reject { reason },
                self.max_frame_len,
            )
            .await;
            let _ = send.finish();
            return false;
        }
        let welcome = Message::Welcome(Welcome {
            node: name.clone(),
            federation: self.config.name.clone(),
            rounds: self.config.rounds,
            require_privacy: self.config.require_privacy,
            planned_queries: self.config.planned_queries(),
        });
        let sent = match transport::write_message(&mut send, &welcome, self.max_frame_len).await {
            Ok(n) => n as u64,
            Err(e) => {
                warn!(node = %name, "lost before Welcome: {e}");
                return false;
            }
        };
        info!(
            node = %name,
            remote = %connection.remote_address(),
            private_records = hello.private_records,
            "admitted"
        );
        tokio::spawn(read_loop(
            name.clone(),
            recv,
            self.events.clone(),
            self.max_frame_len,
        ));
        self.peers.insert(
            name.clone(),
            Peer {
                connection,
                send,
                summary: NodeSummary {
                    node: name,
                    bytes_up: bytes,
                    bytes_down: sent,
                    ..NodeSummary::default()
                },
            },
        );
        true
    }

    async fn join(&mut self, inbox: &mut mpsc::Receiver<Event>) -> Result<(), CoordinatorError> {
        let expected = self.config.nodes;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.join_timeout_secs);
        info!(expected, "waiting for nodes");
        while self.peers.len() < expected {
            let event = tokio::select! {
                e = inbox.recv() => e,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match event {
                Some(Event::Arrived(a)) => {
                    self.arrive(*a, true).await;
                }
                Some(Event::Gone { node, reason }) => {
                    warn!(node, "left before the start: {reason}");
                    self.peers.remove(&node);
                }
                Some(Event::Message { node, message, .. }) => match message {
                    Message::Leave { reason } => {
                        info!(node, "left before the start: {reason}");
                        self.peers.remove(&node);
                    }
                    other => {
                        let why = format!("unexpected {} before round 0", other.kind());
                        self.refuse(&node, why).await;
                    }
                },
                None => {
                    return Err(CoordinatorError::JoinTimeout {
                        joined: self.peers.len(),
                        expected,
                        secs: self.config.join_timeout_secs,
                    });
                }
            }
        }
        info!(nodes = self.peers.len(), "all nodes joined; starting");
        Ok(())
    }

    async fn round(
        &mut self,
        round: u32,
        target: &mut Target,
        inbox: &mut mpsc::Receiver<Event>,
        departed: &mut BTreeMap<String, NodeSummary>,
    ) -> u32 {
        let query_ids = self.config.queries(round);
        let open = Message::RoundOpen(RoundOpen {
            round,
            rounds: self.config.rounds,
            query_ids: query_ids.clone(),
            target: target.to_labels(),
        });
        let mut asked = BTreeMap::new();
        for name in self.peer_names() {
            if self.send(&name, &open).await {
                asked.insert(name, None::<SoftLabels>);
            }
        }
        let asked_count = asked.len() as u32;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.config.round_timeout_secs);
        while asked.values().any(Option::is_none) {
            let event = tokio::select! {
                e = inbox.recv() => e,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match event {
                Some(Event::Arrived(a)) => {
                    self.arrive(*a, false).await;
                }
                Some(Event::Gone { node, reason }) => {
                    if let Some(peer) = self.peers.remove(&node) {
                        warn!(node, round, "node left: {reason}");
                        departed.insert(node.clone(), peer.summary);
                    }
                    asked.remove(&node);
                }
                Some(Event::Message {
                    node,
                    message,
                    bytes,
                }) => {
                    if let Some(peer) = self.peers.get_mut(&node) {
                        peer.summary.bytes_up += bytes;
                    }
                    if let Message::Leave { reason } = &message {
                        info!(node, round, "node left the federation: {reason}");
                        asked.remove(&node);
                        if let Some(mut peer) = self.peers.remove(&node) {
                            peer.summary.left = Some(reason.clone());
                            let _ = peer.send.finish();
                            departed.insert(node.clone(), peer.summary);
                        }
                        continue;
                    }
                    let verdict = match (&message, asked.get(&node)) {
                        (Message::Contribution(c), Some(None)) => {
                            if c.round != round {
                                Err(format!(
                                    "contribution for round {} during round {round}",
                                    c.round
                                ))
                            } else if self.config.require_privacy && c.receipt.is_none() {
                                Err(format!(
                                    "round {round}: contribution refused: this federation requires \
                                     differential privacy and the contribution has no privacy receipt"
                                ))
                            } else if let Some(bad) = c.receipt.as_ref().and_then(receipt_defect) {
                                Err(format!(
                                    "round {round}: contribution refused: receipt {bad}"
                                ))
                            } else {
                                c.labels
                                    .check_queries(&query_ids)
                                    .and_then(|()| c.labels.validate(self.config.classes as usize))
                                    .map_err(|e| {
                                        format!("round {round}: contribution refused: {e}")
                                    })
                            }
                        }
                        (Message::Contribution(_), Some(Some(_))) => {
                            Err(format!("round {round}: duplicate contribution"))
                        }
                        (other, _) => Err(format!("unexpected {} in round {round}", other.kind())),
                    };
                    match (verdict, message) {
                        (Ok(()), Message::Contribution(c)) => {
                            if let Some(peer) = self.peers.get_mut(&node) {
                                peer.summary.contributions += 1;
                                if let Some(r) = &c.receipt {
                                    info!(
                                        node,
                                        round,
                                        rho = r.rho,
                                        sigma = r.sigma,
                                        epsilon_total = r.epsilon_total,
                                        delta = r.delta,
                                        "privacy receipt"
                                    );
                                    let releases =
                                        peer.summary.privacy.as_ref().map_or(0, |p| p.releases);
                                    peer.summary.privacy = Some(NodeSpending {
                                        mechanism: r.mechanism.clone(),
                                        unit: r.unit.clone(),
                                        releases: releases + 1,
                                        rho_total: r.rho_total,
                                        epsilon_total: r.epsilon_total,
                                        delta: r.delta,
                                    });
                                }
                            }
                            asked.insert(node, Some(c.labels));
                        }
                        (Err(why), _) => {
                            asked.remove(&node);
                            if let Some(peer) = self.peers.get(&node) {
                                departed.insert(node.clone(), peer.summary.clone());
                            }
                            self.refuse(&node, why).await;
                        }
                        (Ok(()), _) => {}
                    }
                }
                None => {
                    let late: Vec<&String> = asked
                        .iter()
                        .filter(|(_, v)| v.is_none())
                        .map(|(k, _)| k)
                        .collect();
                    warn!(
                        round,
                        ?late,
                        "round deadline passed; closing with what arrived"
                    );
                    break;
                }
            }
        }
        // BTreeMap order: contributions are combined sorted by node name (reproducible sums).
        let labels: Vec<&SoftLabels> = asked.values().flatten().collect();
        let accepted = labels.len() as u32;
        if let Some(agg) = aggregate::mean(&labels) {
            target.update(&agg);
        }
        info!(
            round,
            accepted,
            asked = asked_count,
            target = target.len(),
            "round closed"
        );
        let closed = Message::RoundClosed(RoundClosed {
            round,
            accepted,
            asked: asked_count,
        });
        for name in self.peer_names() {
            self.send(&name, &closed).await;
        }
        accepted
    }
}
