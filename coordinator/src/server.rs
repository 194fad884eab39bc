//! The coordinator's QUIC server: the thin I/O shell around [`crate::rounds::Rounds`].
//!
//! Tasks: one accepts connections and admits peers (TLS has already checked the certificate
//! against the federation CA; the node's name is taken from that certificate); one per admitted
//! node reads its messages; and the driver, which owns the round state machine, receives
//! everything as [`Event`]s on one channel, feeds them to it with the current time, commits
//! closed rounds to the store and sends what the state machine asks for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fd_certs::transport::{self, TransportError};
use fd_protocol::{Hello, Message, SoftLabels};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::FederationConfig;
use crate::rounds::{self, After, Input, RoundRecord, Rounds};
use crate::store::Store;

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] fd_certs::CertError),
    /// The endpoint could not be opened.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The state database failed; the coordinator stops rather than run on without it.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Too few nodes (fewer than the quorum) joined in time.
    #[error("only {joined} of {expected} nodes joined within {secs} s (quorum not reached)")]
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
    /// Every round: who was asked and accepted, each node's weight, reputations, receipts.
    pub round_log: Vec<RoundRecord>,
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

/// Opens the QUIC endpoint described by `config` (TLS files, listen address). With a state
/// directory, its stateless-reset key comes from the stored secret (see [`Store::reset_secret`]).
pub fn bind(config: &FederationConfig) -> Result<quinn::Endpoint, CoordinatorError> {
    let tls = fd_certs::tls::TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
    let server = fd_certs::tls::server_config(&tls)?;
    match &config.state_dir {
        Some(dir) => {
            let secret = Store::open(dir, config)?.reset_secret()?;
            Ok(transport::server_endpoint_with_reset_secret(
                config.listen,
                server,
                &secret,
            )?)
        }
        None => Ok(transport::server_endpoint(config.listen, server)?),
    }
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

/// What the tasks tell the driver. `conn` tells a node's current connection from an old one it
/// replaced by reconnecting.
enum Event {
    Arrived(Box<Arrival>),
    Message {
        node: String,
        conn: u64,
        message: Message,
        bytes: u64,
    },
    Gone {
        node: String,
        conn: u64,
        reason: String,
        misbehaved: bool,
    },
}

struct Peer {
    conn: u64,
    connection: quinn::Connection,
    send: quinn::SendStream,
}

/// Runs the federation on an already-open endpoint (the simulator binds port 0 and passes it).
pub async fn run(
    config: FederationConfig,
    endpoint: quinn::Endpoint,
) -> Result<Summary, CoordinatorError> {
    let (events, mut inbox) = mpsc::channel::<Event>(1024);
    let accept_task = tokio::spawn(accept_loop(endpoint.clone(), events.clone()));
    let aggregator = config.aggregation.build();
    let (rounds, store) = match &config.state_dir {
        Some(dir) => {
            let store = Store::open(dir, &config)?;
            if let Ok(addr) = endpoint.local_addr() {
                store.record_listen(addr)?;
            }
            let resume = store.load(config.classes)?;
            if resume.rounds_done > 0 {
                info!(
                    rounds_done = resume.rounds_done,
                    target = resume.target.len(),
                    state = %dir.display(),
                    "resuming after the last committed round"
                );
            }
            let rounds = Rounds::resume(config.clone(), aggregator, Instant::now(), resume);
            (rounds, Some(store))
        }
        None => (
            Rounds::new(config.clone(), aggregator, Instant::now()),
            None,
        ),
    };
    let mut driver = Driver {
        store,
        config,
        events,
        peers: BTreeMap::new(),
        next_conn: 0,
        finishing: Vec::new(),
        max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
        rounds,
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

/// Forwards one node's messages to the driver until its stream ends.
async fn read_loop(
    node: String,
    conn: u64,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<Event>,
    max_frame_len: usize,
) {
    let (reason, misbehaved) = loop {
        match transport::read_message(&mut recv, max_frame_len).await {
            Ok(Some((message, bytes))) => {
                let event = Event::Message {
                    node: node.clone(),
                    conn,
                    message,
                    bytes: bytes as u64,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Ok(None) => break ("closed its stream".to_owned(), false),
            // A frame we refuse to read (too large, malformed, wrong version) is the node's
            // fault and it is told so; a lost connection is not.
            Err(TransportError::Codec(e)) => {
                break (
                    format!("message refused, closing the connection: {e}"),
                    true,
                );
            }
            Err(e) => break (e.to_string(), false),
        }
    };
    let _ = events
        .send(Event::Gone {
            node,
            conn,
            reason,
            misbehaved,
        })
        .await;
}

struct Driver {
    /// Where closed rounds are committed (none: in memory only).
    store: Option<Store>,
    config: FederationConfig,
    events: mpsc::Sender<Event>,
    peers: BTreeMap<String, Peer>,
    next_conn: u64,
    /// Connections sent Finished, whose close we wait for at the end.
    finishing: Vec<quinn::Connection>,
    max_frame_len: usize,
    rounds: Rounds,
}

impl Driver {
    async fn drive(
        &mut self,
        inbox: &mut mpsc::Receiver<Event>,
    ) -> Result<Summary, CoordinatorError> {
        let started = Instant::now();
        info!(expected = self.config.nodes, "waiting for nodes");
        loop {
            // Events first: a closed round is committed before anything announcing it leaves.
            let mut finished = false;
            while let Some(event) = self.rounds.poll_event() {
                match event {
                    rounds::Event::RoundClosed(record) => {
                        if let Some(store) = &mut self.store {
                            store.commit(&record)?;
                        }
                    }
                    rounds::Event::JoinTimedOut { joined, expected } => {
                        return Err(CoordinatorError::JoinTimeout {
                            joined,
                            expected,
                            secs: self.config.join_timeout_secs,
                        });
                    }
                    rounds::Event::Finished => finished = true,
                }
            }
            self.flush().await;
            if finished || self.rounds.is_done() {
                break;
            }
            let timeout = self.rounds.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = inbox.recv() => e,
                () = sleep => None,
            };
            let now = Instant::now();
            match event {
                Some(Event::Arrived(a)) => self.arrive(now, *a),
                Some(Event::Message {
                    node,
                    conn,
                    message,
                    bytes,
                }) => {
                    if self.is_current(&node, conn) {
                        self.rounds.handle(
                            now,
                            Input::Received {
                                node,
                                message,
                                bytes,
                            },
                        );
                    }
                }
                Some(Event::Gone {
                    node,
                    conn,
                    reason,
                    misbehaved,
                }) => {
                    if self.is_current(&node, conn) {
                        self.rounds.handle(
                            now,
                            Input::Gone {
                                node,
                                reason,
                                misbehaved,
                            },
                        );
                    }
                }
                None => self.rounds.handle_timeout(now),
            }
        }
        let wall_seconds = started.elapsed().as_secs_f64();
        // Wait (up to 30 s in all) for each node to close after Finished, so the last frame is
        // delivered before the endpoint goes away.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for connection in &self.finishing {
            let _ = tokio::time::timeout_at(deadline, connection.closed()).await;
        }
        let mut summary = self.rounds.summary_now();
        summary.wall_seconds = wall_seconds;
        Ok(summary)
    }

    fn is_current(&self, node: &str, conn: u64) -> bool {
        self.peers.get(node).is_some_and(|p| p.conn == conn)
    }

    /// Sends everything the state machine queued; a node that cannot be written to is gone.
    async fn flush(&mut self) {
        while let Some(t) = self.rounds.poll_transmit() {
            let Some(peer) = self.peers.get_mut(&t.node) else {
                continue;
            };
            if let Some(message) = &t.message {
                match transport::write_message(&mut peer.send, message, self.max_frame_len).await {
                    Ok(n) => self.rounds.record_sent(&t.node, n as u64),
                    Err(e) => {
                        let reason = format!("cannot send {}: {e}", message.kind());
                        self.peers.remove(&t.node);
                        self.rounds.handle(
                            Instant::now(),
                            Input::Gone {
                                node: t.node,
                                reason,
                                misbehaved: false,
                            },
                        );
                        continue;
                    }
                }
            }
            if t.after == After::Close
                && let Some(mut peer) = self.peers.remove(&t.node)
            {
                let _ = peer.send.finish();
                if matches!(t.message, Some(Message::Finished { .. })) {
                    self.finishing.push(peer.connection);
                } else {
                    // Dropping the last handle would close the connection at once and could
                    // discard the Error or Reject just written: hold it until the node has read
                    // the stream or gone, for a few seconds at most.
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), peer.send.stopped()).await;
                        drop(peer.connection);
                    });
                }
            }
        }
    }

    /// Registers a newcomer's connection (replacing an older one of the same node) and hands
    /// its Hello to the state machine, which welcomes or rejects it.
    fn arrive(&mut self, now: Instant, arrival: Arrival) {
        let Arrival {
            name,
            hello,
            connection,
            send,
            recv,
            bytes,
        } = arrival;
        self.next_conn += 1;
        let conn = self.next_conn;
        info!(node = %name, remote = %connection.remote_address(), "hello");
        tokio::spawn(read_loop(
            name.clone(),
            conn,
            recv,
            self.events.clone(),
            self.max_frame_len,
        ));
        if let Some(old) = self.peers.insert(
            name.clone(),
            Peer {
                conn,
                connection,
                send,
            },
        ) {
            old.connection
                .close(4u32.into(), b"replaced by a newer connection");
        }
        self.rounds.handle(
            now,
            Input::Arrived {
                node: name,
                hello,
                bytes,
            },
        );
    }
}
