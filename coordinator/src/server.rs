//! The coordinator's QUIC server: the thin I/O shell around [`crate::rounds::Rounds`].
//!
//! Tasks: one accepts connections and admits peers (TLS has already checked the certificate
//! against the federation CA; the node's name is taken from that certificate); two per admitted
//! node, one reading its messages and one writing what is queued for it; and the driver, which
//! owns the round state machine, receives everything as [`PeerEvent`]s on one channel, feeds
//! them to it with the time each arrived, commits closed rounds to the store and queues what
//! the state machine asks to send.
//!
//! The driver never waits on a node: each connection has its own writer with a bounded queue
//! ([`SEND_QUEUE`]) and a send deadline (the round timeout). A node that does not take its
//! messages (its QUIC receive window stays full) stalls only its own writer; when the queue
//! fills or a write misses the deadline, the node is closed with [`CLOSE_TOO_SLOW`] and leaves
//! the round like any departed node.
//!
//! Admission is bounded: at most `max_connections` connections are held (more are refused before
//! the handshake), a Hello is read with a 4 KiB limit and a timeout, and a node name holds one
//! connection at a time: a newer one replaces the older (a node reconnecting after a failure the
//! coordinator has not noticed yet must not be locked out), and the older is told why.
//!
//! [`run_until`] stops on a shutdown signal: closed rounds are already committed (each is,
//! before anything announces it), the open round is dropped, and every node is closed with
//! [`close::SHUTDOWN`] so it reconnects to the restarted coordinator.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fd_protocol::{Hello, Message, close};
use fd_transport::{self as transport, TransportError};
use quinn::VarInt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::FederationConfig;
use crate::rounds::{self, After, Input, Rounds, Transmit};
use crate::store::{Store, StoreError};
use crate::summary::{RoundRecord, Summary};

/// How long a peer that passed the TLS handshake has to open its stream and send Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest Hello frame read. A Hello is three numbers (a few dozen bytes); a peer that
/// announces more is refused before anything is allocated for it, so connections that have
/// not said Hello cannot pin the full frame maximum each.
const HELLO_MAX_FRAME_LEN: usize = 4096;
/// How long, in all, the driver waits after the last round for the nodes sent Finished to close
/// their connections, so the last frame is delivered before the endpoint goes away.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the endpoint, once the run is over, waits for Finished and the closes to reach the
/// nodes before it closes regardless.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused peer's connection is held open for it to read the Error or Reject just
/// written to it (see [`Outbound::FinishAndHold`]).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

// QUIC close codes (their meaning, for nodes too, is in `fd_protocol::close`).
const CLOSE_DONE: VarInt = VarInt::from_u32(close::DONE);
const CLOSE_NO_NAME: VarInt = VarInt::from_u32(close::NO_NAME);
const CLOSE_NOT_HELLO: VarInt = VarInt::from_u32(close::NOT_HELLO);
const CLOSE_NO_HELLO: VarInt = VarInt::from_u32(close::NO_HELLO);
const CLOSE_REPLACED: VarInt = VarInt::from_u32(close::REPLACED);
const CLOSE_TOO_SLOW: VarInt = VarInt::from_u32(close::TOO_SLOW);
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(close::SHUTDOWN);
const CLOSE_REFUSED: VarInt = VarInt::from_u32(close::REFUSED);

/// What a replaced connection is told (see [`close::REPLACED`]).
const REPLACED_REASON: &[u8] = b"replaced by a newer connection under the same node name";

/// Messages a node's writer may hold. A round queues a few (RoundClosed, RoundOpen, a Refused
/// or two), so a node this far behind has stopped reading; it is closed rather than let grow.
const SEND_QUEUE: usize = 64;

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] fd_transport::TlsError),
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

/// Opens the QUIC endpoint described by `config` (TLS files, listen address). With a state
/// directory, its stateless-reset key comes from the stored secret (see [`Store::reset_secret`]).
pub fn bind(config: &FederationConfig) -> Result<quinn::Endpoint, CoordinatorError> {
    let tls = fd_transport::tls::TlsIdentity::load(&config.ca, &config.cert, &config.key)?;
    let crl = match &config.crl {
        Some(path) => Some((
            std::fs::read_to_string(path).map_err(|e| fd_transport::TlsError::Crl {
                origin: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            })?,
            path.display().to_string(),
        )),
        None => None,
    };
    let server = fd_transport::tls::server_config_with_crl(
        &tls,
        crl.as_ref()
            .map(|(pem, origin)| (pem.as_str(), origin.as_str())),
    )?;
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

/// What the accepting and reading tasks tell the driver (the state machine's own output is
/// [`rounds::Event`]). `conn` tells a node's current connection from an old one it replaced by
/// reconnecting.
enum PeerEvent {
    Arrived(Box<Arrival>),
    Message {
        node: String,
        conn: u64,
        message: Message,
        bytes: u64,
        /// When the frame was read: deadlines are judged by arrival, not by when the driver
        /// got round to it.
        at: Instant,
    },
    Gone {
        node: String,
        conn: u64,
        reason: String,
        misbehaved: bool,
    },
}

/// An admitted (or arriving) node's connection and the queue of its writer ([`write_loop`]).
struct Peer {
    conn: u64,
    connection: quinn::Connection,
    outbox: mpsc::Sender<Outbound>,
}

/// What a node's writer is asked to do.
enum Outbound {
    /// Write one encoded frame (shared by every node a broadcast goes to).
    Frame(Arc<[u8]>),
    /// Finish the stream (after Finished); the driver waits for the node to close.
    Finish,
    /// Finish the stream and keep the connection until the node has read it (after an Error
    /// or a Reject), for [`READ_TIMEOUT`] at most; then close it with [`CLOSE_REFUSED`].
    FinishAndHold,
}

/// Runs the federation on an already-open endpoint (the simulator binds port 0 and passes it).
pub async fn run(
    config: FederationConfig,
    endpoint: quinn::Endpoint,
) -> Result<Summary, CoordinatorError> {
    run_until(config, endpoint, std::future::pending()).await
}

/// Like [`run`], until `shutdown` completes (fd-coordinator passes SIGTERM or Ctrl-C): then the
/// open round is dropped, every node is closed with [`close::SHUTDOWN`], and the summary so far
/// comes back with `ended_early` saying so. Closed rounds are in the store already.
pub async fn run_until(
    config: FederationConfig,
    endpoint: quinn::Endpoint,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, CoordinatorError> {
    let (events, mut inbox) = mpsc::channel::<PeerEvent>(1024);
    let accepting = Arc::new(AtomicBool::new(true));
    let accept_task = tokio::spawn(accept_loop(
        endpoint.clone(),
        events.clone(),
        config.max_connections,
        accepting.clone(),
    ));
    let aggregator = config.aggregation.build();
    let (rounds, store) = match &config.state_dir {
        Some(dir) => {
            let store = Store::open(dir, &config)?;
            if let Ok(addr) = endpoint.local_addr() {
                store.record_listen(addr)?;
            }
            store.record_daemon()?;
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
        config,
        events,
        next_conn: 0,
        io: Io {
            store,
            peers: BTreeMap::new(),
            arriving: None,
            finishing: Vec::new(),
            max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
            encoded: None,
            accepting: accepting.clone(),
        },
        rounds,
    };
    let result = driver.drive(&mut inbox, shutdown).await;
    if let Some(store) = &driver.io.store
        && let Err(e) = store.clear_daemon()
    {
        warn!("cannot clear the daemon's record in the state: {e}");
    }
    accept_task.abort();
    // Let Finished and closes reach the nodes, but never hang on a silent one.
    let _ = tokio::time::timeout(IDLE_TIMEOUT, endpoint.wait_idle()).await;
    endpoint.close(CLOSE_DONE, b"federation over");
    result
}

/// Connections that passed TLS and are saying Hello, by node name, each with its admission
/// number: a newer one under a name replaces the older ([`close::REPLACED`]).
type Hellos = Arc<Mutex<HashMap<String, (u64, quinn::Connection)>>>;

/// Accepts connections while fewer than `max_connections` are open, and refuses the rest before
/// any handshake work (a refused node retries); refuses every one once `accepting` is cleared.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    events: mpsc::Sender<PeerEvent>,
    max_connections: usize,
    accepting: Arc<AtomicBool>,
) {
    let hellos = Hellos::default();
    let mut admitted = 0u64;
    let mut refused = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        if !accepting.load(Ordering::Relaxed) {
            incoming.refuse();
            continue;
        }
        if endpoint.open_connections() >= max_connections {
            refused += 1;
            // A line at the 1st, 2nd, 4th, 8th... refusal: a flood does not flood the log.
            if refused.is_power_of_two() {
                warn!(%remote, max_connections, refused, "connection refused: limit reached");
            }
            incoming.refuse();
            continue;
        }
        // Accepted here, not in the task, so the count above includes it at once.
        match incoming.accept() {
            Ok(connecting) => {
                admitted += 1;
                let admit = admit(remote, connecting, admitted, hellos.clone(), events.clone());
                tokio::spawn(admit);
            }
            Err(e) => warn!(%remote, "refused connection: {e}"),
        }
    }
}

/// Completes the handshake and reads Hello. Refusals here are logged and the peer dropped;
/// nothing reaches the driver from a peer that failed TLS.
async fn admit(
    remote: std::net::SocketAddr,
    connecting: quinn::Connecting,
    number: u64,
    hellos: Hellos,
    events: mpsc::Sender<PeerEvent>,
) {
    let connection = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            warn!(%remote, "refused connection: {e}");
            return;
        }
    };
    let name = match fd_transport::tls::node_name(&connection) {
        Ok(n) => n,
        Err(e) => {
            warn!(%remote, "refused: no usable node name in the certificate: {e}");
            connection.close(CLOSE_NO_NAME, b"no node name in certificate");
            return;
        }
    };
    let older = lock(&hellos).insert(name.clone(), (number, connection.clone()));
    if let Some((_, older)) = older {
        warn!(node = %name, %remote, older = %older.remote_address(),
            "a newer connection under the same name replaces one still saying Hello");
        older.close(CLOSE_REPLACED, REPLACED_REASON);
    }
    admit_hello(remote, name.clone(), connection, events).await;
    let mut hellos = lock(&hellos);
    if hellos.get(&name).is_some_and(|(n, _)| *n == number) {
        hellos.remove(&name);
    }
}

/// The map of connections saying Hello; a panic elsewhere while it was held leaves it usable.
fn lock(hellos: &Hellos) -> std::sync::MutexGuard<'_, HashMap<String, (u64, quinn::Connection)>> {
    hellos
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the Hello of `connection` (named `name` by its certificate) and hands the peer to the
/// driver, or closes it with the reason.
async fn admit_hello(
    remote: std::net::SocketAddr,
    name: String,
    connection: quinn::Connection,
    events: mpsc::Sender<PeerEvent>,
) {
    let hello = async {
        let (send, mut recv) = connection.accept_bi().await.map_err(TransportError::from)?;
        let read = transport::read_message(&mut recv, HELLO_MAX_FRAME_LEN).await?;
        Ok::<_, TransportError>((send, recv, read))
    };
    match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
        Ok(Ok((send, recv, Some((Message::Hello(hello), bytes))))) => {
            let arrival = Arrival {
                name,
                hello,
                connection,
                send,
                recv,
                bytes: bytes as u64,
            };
            let _ = events.send(PeerEvent::Arrived(Box::new(arrival))).await;
        }
        Ok(Ok((_, _, other))) => {
            let got = other.map_or("nothing", |(m, _)| m.kind());
            warn!(%remote, node = %name, "refused: expected Hello, got {got}");
            connection.close(CLOSE_NOT_HELLO, b"expected Hello");
        }
        // Replaced by a newer connection under the same name (logged there).
        Ok(Err(_)) if connection.close_reason().is_some() => {}
        Ok(Err(e)) => {
            warn!(%remote, node = %name, "refused before Hello: {e}");
            connection.close(CLOSE_NOT_HELLO, b"expected a Hello frame");
        }
        Err(_) => {
            let secs = HELLO_TIMEOUT.as_secs();
            warn!(%remote, node = %name, "refused: no Hello within {secs} s");
            connection.close(CLOSE_NO_HELLO, b"no Hello");
        }
    }
}

/// Forwards one node's messages to the driver until its stream ends.
async fn read_loop(
    node: String,
    conn: u64,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<PeerEvent>,
    max_frame_len: usize,
) {
    let (reason, misbehaved) = loop {
        match transport::read_message(&mut recv, max_frame_len).await {
            Ok(Some((message, bytes))) => {
                let event = PeerEvent::Message {
                    node: node.clone(),
                    conn,
                    message,
                    bytes: bytes as u64,
                    at: Instant::now(),
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Ok(None) => break ("closed its stream".to_owned(), false),
            // A frame we refuse to read (too large, malformed, wrong version) or a stream the
            // node ended mid-frame is the node's fault and it is told so; a lost connection is
            // not.
            Err(TransportError::Codec(e)) => {
                break (
                    format!("message refused, closing the connection: {e}"),
                    true,
                );
            }
            Err(e @ TransportError::Truncated { .. }) => break (e.to_string(), true),
            Err(e) => break (e.to_string(), false),
        }
    };
    let _ = events
        .send(PeerEvent::Gone {
            node,
            conn,
            reason,
            misbehaved,
        })
        .await;
}

/// Writes one node's queued frames, each within `deadline`; reports the node gone (and closes
/// it, if it was too slow) when a write fails or misses the deadline.
async fn write_loop(
    node: String,
    conn: u64,
    mut send: quinn::SendStream,
    connection: quinn::Connection,
    mut outbox: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<PeerEvent>,
    deadline: Duration,
) {
    while let Some(out) = outbox.recv().await {
        let frame = match out {
            Outbound::Frame(frame) => frame,
            Outbound::Finish => {
                let _ = send.finish();
                return;
            }
            Outbound::FinishAndHold => {
                let _ = send.finish();
                let _ = tokio::time::timeout(READ_TIMEOUT, send.stopped()).await;
                connection.close(CLOSE_REFUSED, b"refused; the last message said why");
                return;
            }
        };
        let reason = match tokio::time::timeout(deadline, send.write_all(&frame)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("cannot send to it: {e}"),
            Err(_) => {
                connection.close(CLOSE_TOO_SLOW, b"did not take its messages in time");
                format!(
                    "did not take its messages within {} s; closed",
                    deadline.as_secs()
                )
            }
        };
        let gone = PeerEvent::Gone {
            node,
            conn,
            reason,
            misbehaved: false,
        };
        let _ = events.send(gone).await;
        return;
    }
}

struct Driver {
    config: FederationConfig,
    events: mpsc::Sender<PeerEvent>,
    next_conn: u64,
    /// The connections and the store: everything [`settle`] acts on.
    io: Io,
    rounds: Rounds,
}

/// The driver's side effects: the store closed rounds are committed to, and the connections
/// messages go out on.
struct Io {
    /// Where closed rounds are committed (none: in memory only).
    store: Option<Store>,
    peers: BTreeMap<String, Peer>,
    /// A connection whose Hello the state machine is deciding on. It joins `peers` (replacing
    /// the node's older connection, if any) only when the node is welcomed: a rejected
    /// reconnect must not cut off the connection the state machine still counts as present.
    arriving: Option<(String, Peer)>,
    /// Connections sent Finished, whose close we wait for at the end.
    finishing: Vec<quinn::Connection>,
    max_frame_len: usize,
    /// The last message encoded and its frame: a broadcast (the same `Arc` to every node) is
    /// encoded once and its frame shared by every writer, not copied per node.
    encoded: Option<(Arc<Message>, Arc<[u8]>)>,
    /// Cleared once the rounds are over: the accept loop then refuses every new connection.
    accepting: Arc<AtomicBool>,
}

impl Io {
    /// The frame of `message`, reusing the last one if it is the same message.
    fn encode(&mut self, message: &Arc<Message>) -> Result<Arc<[u8]>, String> {
        if let Some((last, frame)) = &self.encoded
            && Arc::ptr_eq(last, message)
        {
            return Ok(frame.clone());
        }
        let frame: Arc<[u8]> = fd_protocol::codec::encode_frame(message, self.max_frame_len)
            .map_err(|e| e.to_string())?
            .into();
        self.encoded = Some((message.clone(), frame.clone()));
        Ok(frame)
    }

    /// Queues `frame` for `peer`'s writer; `Err` when the node has stopped taking its
    /// messages (its queue is full: it is closed) or its writer has ended.
    fn enqueue(peer: &Peer, frame: Arc<[u8]>) -> Result<(), String> {
        match peer.outbox.try_send(Outbound::Frame(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                peer.connection
                    .close(CLOSE_TOO_SLOW, b"did not take its messages in time");
                Err(format!(
                    "{SEND_QUEUE} messages wait for it: it does not read them; closed"
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err("its connection is gone (the writer stopped)".into())
            }
        }
    }
}

/// What [`settle`] does with the state machine's output. A trait so that the order of commits
/// and sends can be tested without sockets or a database.
trait Effects {
    /// Persists a closed round.
    fn commit(&mut self, record: &RoundRecord) -> Result<(), StoreError>;
    /// Persists that the federation is over, with its final summary.
    fn mark_finished(&mut self, summary: &Summary) -> Result<(), StoreError>;
    /// The federation is over: refuse new connections from now on, before Finished goes out
    /// (a node that connects after reading it must be refused, not left to time out).
    fn close_admission(&mut self);
    /// Carries out one transmit: `Ok(Some(bytes))` if a message was written, `Ok(None)` if
    /// nothing was (no message, or the node has no connection), `Err(reason)` if the node
    /// cannot be written to and is gone.
    async fn transmit(&mut self, transmit: Transmit) -> Result<Option<u64>, String>;
}

/// How the federation stands once [`settle`] has emptied the state machine's queues.
#[derive(Debug, PartialEq)]
enum Settled {
    /// Rounds go on.
    Running,
    /// The federation is over.
    Finished,
    /// Too few nodes joined in time.
    JoinTimedOut { joined: usize, expected: usize },
}

/// Empties the state machine's queues: commits closed rounds, then sends what it queued, and
/// repeats until neither queue holds anything.
///
/// A node that cannot be written to is gone, and telling the state machine so can close a
/// round (and queue RoundClosed, the next RoundOpen or Finished). That is why such departures
/// are collected and fed only after the batch of sends: the round they close is committed on
/// the next pass before anything announcing it leaves, and a close that ends the federation
/// still has its round committed before the driver stops.
async fn settle(rounds: &mut Rounds, effects: &mut impl Effects) -> Result<Settled, StoreError> {
    let mut finished = false;
    loop {
        while let Some(event) = rounds.poll_event() {
            match event {
                rounds::Event::RoundClosed(record) => effects.commit(&record)?,
                rounds::Event::JoinTimedOut { joined, expected } => {
                    return Ok(Settled::JoinTimedOut { joined, expected });
                }
                rounds::Event::Finished => {
                    effects.close_admission();
                    effects.mark_finished(&rounds.summary_at(Instant::now()))?;
                    finished = true;
                }
            }
        }
        let mut gone = Vec::new();
        while let Some(transmit) = rounds.poll_transmit() {
            let node = transmit.node.clone();
            match effects.transmit(transmit).await {
                Ok(Some(bytes)) => rounds.record_sent(&node, bytes),
                Ok(None) => {}
                Err(reason) => gone.push((node, reason)),
            }
        }
        if gone.is_empty() {
            break;
        }
        let now = Instant::now();
        for (node, reason) in gone {
            rounds.handle(
                now,
                Input::Gone {
                    node,
                    reason,
                    misbehaved: false,
                },
            );
        }
    }
    Ok(if finished || rounds.is_done() {
        Settled::Finished
    } else {
        Settled::Running
    })
}

impl Driver {
    async fn drive(
        &mut self,
        inbox: &mut mpsc::Receiver<PeerEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary, CoordinatorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        info!(expected = self.config.nodes, "waiting for nodes");
        loop {
            match settle(&mut self.rounds, &mut self.io).await? {
                Settled::Running => {}
                Settled::Finished => break,
                Settled::JoinTimedOut { joined, expected } => {
                    return Err(CoordinatorError::JoinTimeout {
                        joined,
                        expected,
                        secs: self.config.join_timeout_secs,
                    });
                }
            }
            let timeout = self.rounds.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            // A shutdown first, then events: one that arrived before a deadline is handled
            // before it fires.
            let event = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(self.shut_down()),
                e = inbox.recv() => e,
                () = sleep => None,
            };
            let now = Instant::now();
            match event {
                Some(PeerEvent::Arrived(a)) => self.arrive(now, *a),
                Some(PeerEvent::Message {
                    node,
                    conn,
                    message,
                    bytes,
                    at,
                }) => {
                    if self.io.is_current(&node, conn) {
                        self.rounds.handle(
                            at,
                            Input::Received {
                                node,
                                message,
                                bytes,
                            },
                        );
                    }
                }
                Some(PeerEvent::Gone {
                    node,
                    conn,
                    reason,
                    misbehaved,
                }) => {
                    if self.io.is_current(&node, conn) {
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
        let wall_seconds = self.rounds.wall_seconds_at(Instant::now());
        // Wait (up to FINISH_TIMEOUT in all) for each node to close after Finished, so the last
        // frame is delivered before the endpoint goes away.
        let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
        for connection in &self.io.finishing {
            let _ = tokio::time::timeout_at(deadline, connection.closed()).await;
        }
        let mut summary = self.rounds.summary_now();
        summary.wall_seconds = wall_seconds;
        Ok(summary)
    }

    /// Stops on a shutdown signal: every connection is closed with [`CLOSE_SHUTDOWN`], and the
    /// summary says where the run stopped. Nothing needs committing: each closed round was
    /// committed before anything announced it, and the open one is asked again after a restart.
    fn shut_down(&mut self) -> Summary {
        let done = self.rounds.summary_now().rounds;
        let why = format!("shut down by a signal after {done} committed rounds");
        match &self.config.state_dir {
            Some(dir) => warn!(
                state = %dir.display(),
                "{why}; a restart on the same state directory continues with round {done}"
            ),
            None => warn!("{why}; there is no state_dir, so a restart begins again from round 0"),
        }
        self.io.close_admission();
        let reason =
            b"the coordinator is shutting down; it continues from its state when restarted";
        let arriving = self.io.arriving.take().map(|(_, p)| p);
        for peer in self.io.peers.values().chain(arriving.as_ref()) {
            peer.connection.close(CLOSE_SHUTDOWN, reason);
        }
        let mut summary = self.rounds.summary_at(Instant::now());
        summary.ended_early = Some(why);
        summary
    }

    /// Holds a newcomer's connection aside and hands its Hello to the state machine, which
    /// welcomes it (the connection then replaces any older one of the same node) or rejects it.
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
            self.io.max_frame_len,
        ));
        let (outbox, queued) = mpsc::channel(SEND_QUEUE);
        tokio::spawn(write_loop(
            name.clone(),
            conn,
            send,
            connection.clone(),
            queued,
            self.events.clone(),
            Duration::from_secs(self.config.round_timeout_secs),
        ));
        let peer = Peer {
            conn,
            connection,
            outbox,
        };
        // The state machine answers this Hello first, with Welcome or Reject, before the driver
        // takes another event; `Io::transmit` then admits or turns away this connection.
        if let Some((_, unanswered)) = self.io.arriving.replace((name.clone(), peer)) {
            unanswered.connection.close(CLOSE_REPLACED, REPLACED_REASON);
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

impl Io {
    fn is_current(&self, node: &str, conn: u64) -> bool {
        self.peers.get(node).is_some_and(|p| p.conn == conn)
    }
}

impl Effects for Io {
    fn close_admission(&mut self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    fn commit(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        if let Some(store) = &mut self.store {
            store.commit(record)?;
            // Only now is the round durable; tests that kill the coordinator wait for this line.
            info!(round = record.round, "round committed");
        }
        Ok(())
    }

    fn mark_finished(&mut self, summary: &Summary) -> Result<(), StoreError> {
        if let Some(store) = &mut self.store {
            store.mark_finished(summary)?;
        }
        Ok(())
    }

    async fn transmit(&mut self, t: Transmit) -> Result<Option<u64>, String> {
        if self
            .arriving
            .as_ref()
            .is_some_and(|(name, _)| *name == t.node)
        {
            match t.message.as_deref() {
                Some(Message::Welcome(_)) => {
                    if let Some((name, peer)) = self.arriving.take() {
                        let remote = peer.connection.remote_address();
                        if let Some(old) = self.peers.insert(name.clone(), peer) {
                            warn!(node = %name, %remote, older = %old.connection.remote_address(),
                                "a newer connection under the same name replaces the node's \
                                 connection");
                            old.connection.close(CLOSE_REPLACED, REPLACED_REASON);
                        }
                    }
                }
                Some(Message::Reject { .. }) => {
                    // Only the new connection is turned away; an older one stays, and so does
                    // the node. A failure to deliver the Reject is no reason to drop it either.
                    let Some((_, peer)) = self.arriving.take() else {
                        return Ok(None);
                    };
                    let sent = t
                        .message
                        .as_ref()
                        .and_then(|m| self.encode(m).ok())
                        .and_then(|frame| {
                            let n = frame.len() as u64;
                            Io::enqueue(&peer, frame).ok().map(|()| n)
                        });
                    let _ = peer.outbox.try_send(Outbound::FinishAndHold);
                    return Ok(sent);
                }
                _ => {}
            }
        }
        if !self.peers.contains_key(&t.node) {
            return Ok(None);
        }
        let mut sent = None;
        if let Some(message) = &t.message {
            let queued = self.encode(message).and_then(|frame| {
                let n = frame.len() as u64;
                match self.peers.get(&t.node) {
                    Some(peer) => Io::enqueue(peer, frame).map(|()| n),
                    None => Err("its connection is gone".into()),
                }
            });
            match queued {
                Ok(n) => sent = Some(n),
                Err(e) => {
                    self.peers.remove(&t.node);
                    return Err(format!("cannot send {}: {e}", message.kind()));
                }
            }
        }
        if t.after == After::Close
            && let Some(peer) = self.peers.remove(&t.node)
        {
            if matches!(t.message.as_deref(), Some(Message::Finished { .. })) {
                let _ = peer.outbox.try_send(Outbound::Finish);
                self.finishing.push(peer.connection);
            } else {
                let _ = peer.outbox.try_send(Outbound::FinishAndHold);
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregationConfig, AggregatorKind};
    use fd_protocol::{Contribution, SoftLabels};

    /// Logs what [`settle`] does, in order; every send to `failing` fails.
    struct Recorder {
        log: Vec<String>,
        failing: &'static str,
    }

    impl Effects for Recorder {
        fn close_admission(&mut self) {}

        fn mark_finished(&mut self, _: &Summary) -> Result<(), StoreError> {
            self.log.push("finished".into());
            Ok(())
        }

        fn commit(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
            self.log.push(format!("commit round {}", record.round));
            Ok(())
        }

        async fn transmit(&mut self, t: Transmit) -> Result<Option<u64>, String> {
            let kind = t.message.as_deref().map_or("close", Message::kind);
            if t.node == self.failing {
                self.log.push(format!("{kind} to {} failed", t.node));
                return Err("connection lost".into());
            }
            self.log.push(format!("{kind} to {}", t.node));
            Ok(Some(1))
        }
    }

    fn config() -> FederationConfig {
        FederationConfig {
            aggregation: AggregationConfig {
                strategy: AggregatorKind::Mean,
                ..AggregationConfig::default()
            },
            ..crate::config::test_config(2, 1, 2)
        }
    }

    fn contribution(round: u32) -> Message {
        Message::Contribution(Contribution {
            round,
            labels: SoftLabels {
                classes: 2,
                // queries_per_round = 0: every round asks all public records.
                query_ids: vec![0, 1],
                probs: vec![1.0, 0.0, 0.0, 1.0],
            },
            receipt: None,
        })
    }

    #[test]
    fn a_broadcast_is_encoded_once_and_its_frame_shared() {
        let mut io = Io {
            store: None,
            peers: BTreeMap::new(),
            arriving: None,
            finishing: Vec::new(),
            max_frame_len: fd_protocol::DEFAULT_MAX_FRAME_LEN,
            encoded: None,
            accepting: Arc::new(AtomicBool::new(true)),
        };
        let open = Arc::new(contribution(0));
        let first = io.encode(&open).unwrap();
        assert!(Arc::ptr_eq(&first, &io.encode(&open.clone()).unwrap()));
        // An equal message in another allocation is another message: encoded afresh.
        let other = io.encode(&Arc::new(contribution(0))).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(first, other);
    }

    #[tokio::test]
    async fn a_failed_send_that_ends_the_run_commits_the_last_round_before_announcing_it() {
        let config = config();
        let aggregator = config.aggregation.build();
        let now = Instant::now();
        let mut rounds = Rounds::new(config, aggregator, now);
        let mut effects = Recorder {
            log: Vec::new(),
            failing: "",
        };
        for node in ["a", "b"] {
            let hello = Hello {
                public_records: 2,
                classes: 2,
                private_records: 5,
                public_sha256: None,
                private: false,
            };
            let arrived = Input::Arrived {
                node: node.into(),
                hello,
                bytes: 1,
            };
            rounds.handle(now, arrived);
        }
        assert_eq!(
            settle(&mut rounds, &mut effects).await.unwrap(),
            Settled::Running
        );
        // b answers round 0; a answers a round that is not open and is to be told so, but its
        // connection is gone: that send fails, a departs, and round 0 (the only one) closes.
        let received = |node: &str, message| Input::Received {
            node: node.into(),
            message,
            bytes: 1,
        };
        rounds.handle(now, received("b", contribution(0)));
        rounds.handle(now, received("a", contribution(1)));
        effects.log.clear();
        effects.failing = "a";
        assert_eq!(
            settle(&mut rounds, &mut effects).await.unwrap(),
            Settled::Finished
        );
        assert_eq!(
            effects.log,
            [
                "Refused to a failed",
                "commit round 0",
                // The end is durable before Finished announces it.
                "finished",
                "RoundClosed to b",
                "Finished to b"
            ]
        );
    }
}
