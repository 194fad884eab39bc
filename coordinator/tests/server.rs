//! The real QUIC server with hand-driven nodes: a node that sends an oversized frame, a bad
//! contribution or half a frame is told what was wrong, and the other nodes finish the round
//! unaffected; a node name holds one connection; the connection limit, and a shutdown.

use std::net::SocketAddr;

use fd_certs::pki::Ca;
use fd_coordinator::aggregate::AggregationConfig;
use fd_coordinator::{CoordinatorError, FederationConfig, Summary};
use fd_protocol::{Contribution, DEFAULT_MAX_FRAME_LEN, Hello, Message, SoftLabels};
use fd_transport::tls::{TlsIdentity, client_config, server_config};
use fd_transport::{client_endpoint, read_message, server_endpoint, write_message};

struct Node {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Node {
    /// Connects as `name` and says Hello; the node must be welcomed.
    async fn join(ca: &Ca, name: &str, addr: SocketAddr) -> Node {
        let (node, answer) = Node::connect(ca, name, addr, 2).await;
        assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
        node
    }

    /// Connects as `name` with a fresh certificate, says Hello predicting `classes` classes,
    /// and returns the coordinator's answer.
    async fn connect(ca: &Ca, name: &str, addr: SocketAddr, classes: u16) -> (Node, Message) {
        let mut node = connect_quietly(ca, name, addr, 2, classes).await;
        let answer = node.read().await;
        (node, answer)
    }

    async fn read(&mut self) -> Message {
        read_message(&mut self.recv, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap()
            .expect("a message")
            .0
    }

    async fn contribute(&mut self, probs: Vec<f32>) {
        let c = Message::Contribution(Contribution {
            round: 0,
            labels: SoftLabels {
                classes: 2,
                query_ids: vec![0, 1],
                probs,
            },
            receipt: None,
        });
        write_message(&mut self.send, &c, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
    }

    async fn finish(mut self) {
        let _ = self.send.finish();
        self.connection.close(0u32.into(), b"done");
    }
}

/// Starts a one-round coordinator over 2 public records and 2 classes, waiting for `nodes`.
fn start(
    ca: &Ca,
    nodes: usize,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Summary, CoordinatorError>>,
) {
    start_with(ca, |c| FederationConfig { nodes, ..c })
}

/// Starts a coordinator whose config `adjust` makes from the one-round default of [`start`].
fn start_with(
    ca: &Ca,
    adjust: impl FnOnce(FederationConfig) -> FederationConfig,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Summary, CoordinatorError>>,
) {
    start_until(ca, adjust, std::future::pending())
}

/// [`start_with`], stopping when `shutdown` completes.
fn start_until(
    ca: &Ca,
    adjust: impl FnOnce(FederationConfig) -> FederationConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Summary, CoordinatorError>>,
) {
    let server = ca
        .issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let tls = TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
    };
    let endpoint = server_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        server_config(&tls).unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let config = FederationConfig {
        name: "t".into(),
        listen: addr,
        ca: "<memory>".into(),
        cert: "<memory>".into(),
        key: "<memory>".into(),
        nodes: 1,
        rounds: 1,
        public_records: 2,
        classes: 2,
        queries_per_round: 0,
        join_timeout_secs: 60,
        round_timeout_secs: 60,
        require_privacy: false,
        summary_json: None,
        quorum: 1,
        aggregation: AggregationConfig::default(),
        state_dir: None,
        max_connections: fd_coordinator::config::DEFAULT_MAX_CONNECTIONS,
        public_csv: None,
        public_sha256: None,
        allow: Vec::new(),
        max_nodes: None,
        crl: None,
    };
    let config = adjust(config);
    config.validate().unwrap();
    let run = fd_coordinator::run_until(config, endpoint, shutdown);
    (addr, tokio::spawn(run))
}

/// A client endpoint holding a fresh node certificate for `name`.
fn node_endpoint(ca: &Ca, name: &str) -> quinn::Endpoint {
    let id = ca.issue_node(name).unwrap();
    let tls = TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: id.cert_pem,
        key_pem: id.key_pem,
    };
    client_endpoint(client_config(&tls).unwrap()).unwrap()
}

/// Connects as `name` and expects the coordinator to refuse the connection before the
/// handshake (QUIC's CONNECTION_REFUSED).
async fn assert_refused(ca: &Ca, name: &str, addr: SocketAddr) {
    let endpoint = node_endpoint(ca, name);
    let attempt = endpoint.connect(addr, "localhost").unwrap();
    match tokio::time::timeout(CLOSE_WAIT, attempt)
        .await
        .expect("answered in time")
    {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Connects as `name` with a fresh node certificate and opens the stream; says nothing.
async fn open(ca: &Ca, name: &str, addr: SocketAddr) -> Node {
    let endpoint = node_endpoint(ca, name);
    let connection = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (send, recv) = connection.open_bi().await.unwrap();
    Node {
        _endpoint: endpoint,
        connection,
        send,
        recv,
    }
}

/// Connects as `name` and says Hello for `public` records of `classes` classes; reads nothing.
async fn connect_quietly(ca: &Ca, name: &str, addr: SocketAddr, public: u32, classes: u16) -> Node {
    let mut node = open(ca, name, addr).await;
    let hello = Message::Hello(Hello {
        public_records: public,
        classes,
        private_records: 5,
        public_sha256: None,
        private: false,
    });
    write_message(&mut node.send, &hello, DEFAULT_MAX_FRAME_LEN)
        .await
        .unwrap();
    node
}

/// A peer with a valid certificate that announces a 32 MiB frame instead of Hello is closed
/// at once, with a reason, before the coordinator reads (or allocates) any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_first_frame_is_refused_before_hello() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 1);
    let mut greedy = open(&ca, "greedy", addr).await;
    greedy
        .send
        .write_all(&(DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes())
        .await
        .unwrap();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        greedy.connection.closed(),
    )
    .await
    .expect("closed before the Hello timeout");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(2));
            assert!(!close.reason.is_empty(), "a reason is given");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    coordinator.abort();
}

/// An honest node: answers every RoundOpen with a uniform contribution until Finished.
async fn play_honestly(mut node: Node, classes: u16) {
    loop {
        match node.read().await {
            Message::RoundOpen(open) => {
                let c = Message::Contribution(Contribution {
                    round: open.round,
                    labels: SoftLabels {
                        classes,
                        probs: vec![
                            1.0 / f32::from(classes);
                            open.query_ids.len() * usize::from(classes)
                        ],
                        query_ids: open.query_ids,
                    },
                    receipt: None,
                });
                write_message(&mut node.send, &c, DEFAULT_MAX_FRAME_LEN)
                    .await
                    .unwrap();
            }
            Message::Finished { .. } => break,
            _ => {}
        }
    }
    node.finish().await;
}

/// A node that joins and then never reads: once its QUIC receive window is full (the target
/// of 20,000 records x 10 classes is 800 KB a RoundOpen), writes to it block. Its own writer
/// waits out the send deadline and drops it; the driver and the honest nodes never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_reads_freezes_nothing() {
    let ca = Ca::generate("server-test").unwrap();
    let (public, classes) = (20_000u32, 10u16);
    let (addr, coordinator) = start_with(&ca, |c| FederationConfig {
        nodes: 3,
        rounds: 4,
        public_records: public,
        classes,
        round_timeout_secs: 3,
        ..c
    });
    let deaf = connect_quietly(&ca, "deaf", addr, public, classes).await;
    let mut honest = Vec::new();
    for name in ["honest-a", "honest-b"] {
        let node = connect_quietly(&ca, name, addr, public, classes).await;
        honest.push(tokio::spawn(play_honestly(node, classes)));
    }
    // Four rounds of at most 3 s each, and the final wait for closes: a frozen driver would
    // hold on as long as the deaf node does, that is past this bound.
    let summary = tokio::time::timeout(std::time::Duration::from_secs(60), coordinator)
        .await
        .expect("the federation finished in time")
        .unwrap()
        .unwrap();
    for h in honest {
        h.await.unwrap();
    }
    assert_eq!(summary.rounds, 4);
    // Every honest contribution counted in every round.
    assert_eq!(summary.accepted_per_round, [2, 2, 2, 2]);
    drop(deaf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_node_is_told_why_and_the_others_finish() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 3);
    let mut a = Node::join(&ca, "node-a", addr).await;
    let mut b = Node::join(&ca, "node-b", addr).await;
    let mut c = Node::join(&ca, "node-c", addr).await;
    for n in [&mut a, &mut b, &mut c] {
        assert!(matches!(n.read().await, Message::RoundOpen(_)));
    }

    // a announces a frame one byte over the limit.
    let too_long = (DEFAULT_MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    a.send.write_all(&too_long).await.unwrap();
    match a.read().await {
        Message::Error { message } => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("expected Error, got {other:?}"),
    }

    // b sends a NaN, is told, and answers properly.
    b.contribute(vec![f32::NAN, 1.0, 0.5, 0.5]).await;
    match b.read().await {
        Message::Refused { round, reason } => {
            assert_eq!(round, 0);
            assert!(reason.contains("not finite"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    b.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    c.contribute(vec![0.0, 1.0, 0.5, 0.5]).await;
    for n in [&mut b, &mut c] {
        match n.read().await {
            Message::RoundClosed(closed) => {
                // a was gone by then: two asked, two accepted.
                assert_eq!((closed.accepted, closed.asked), (2, 2));
            }
            other => panic!("expected RoundClosed, got {other:?}"),
        }
        assert!(matches!(n.read().await, Message::Finished { .. }));
    }
    b.finish().await;
    c.finish().await;
    a.finish().await;
    let summary = coordinator.await.unwrap().unwrap();
    assert_eq!(summary.accepted_per_round, [2]);
    let b_summary = summary.nodes.iter().find(|n| n.node == "node-b").unwrap();
    assert_eq!((b_summary.contributions, b_summary.refused), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reconnect_leaves_the_nodes_connection_in_place() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 2);
    let mut a = Node::join(&ca, "node-a", addr).await;
    let mut b = Node::join(&ca, "node-b", addr).await;
    for n in [&mut a, &mut b] {
        assert!(matches!(n.read().await, Message::RoundOpen(_)));
    }

    // A second connection under a's name predicts 3 classes where the federation uses 2.
    let (stray, answer) = Node::connect(&ca, "node-a", addr, 3).await;
    match answer {
        Message::Reject { reason } => assert!(reason.contains("class mismatch"), "{reason}"),
        other => panic!("expected Reject, got {other:?}"),
    }

    // a's first connection is still the one counted: its answer and b's complete the round.
    a.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    b.contribute(vec![0.0, 1.0, 0.5, 0.5]).await;
    for n in [&mut a, &mut b] {
        match n.read().await {
            Message::RoundClosed(closed) => assert_eq!((closed.accepted, closed.asked), (2, 2)),
            other => panic!("expected RoundClosed, got {other:?}"),
        }
        assert!(matches!(n.read().await, Message::Finished { .. }));
    }
    a.finish().await;
    b.finish().await;
    stray.finish().await;
    let summary = coordinator.await.unwrap().unwrap();
    assert_eq!(summary.accepted_per_round, [2]);
}

/// How long a test waits for the coordinator to close a connection; it closes within
/// milliseconds on loopback.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The application close code `node`'s connection ends with (panics on any other ending).
async fn close_code(node: &Node) -> (u32, String) {
    let closed = tokio::time::timeout(CLOSE_WAIT, node.connection.closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner() as u32,
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// A node that reconnects before the coordinator noticed its old connection die takes its
/// place at once (it must not be locked out), and the old connection is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_under_a_name_replaces_the_older_which_is_told_why() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 2);
    let mut old = Node::join(&ca, "node-a", addr).await;
    let mut b = Node::join(&ca, "node-b", addr).await;
    for n in [&mut old, &mut b] {
        assert!(matches!(n.read().await, Message::RoundOpen(_)));
    }
    let mut new = Node::join(&ca, "node-a", addr).await;
    let (code, reason) = close_code(&old).await;
    assert_eq!(code, fd_protocol::close::REPLACED);
    assert!(reason.contains("same node name"), "{reason}");
    // The newcomer is asked the open round and its answer counts as node-a's.
    assert!(matches!(new.read().await, Message::RoundOpen(_)));
    new.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    b.contribute(vec![0.0, 1.0, 0.5, 0.5]).await;
    for n in [&mut new, &mut b] {
        match n.read().await {
            Message::RoundClosed(closed) => assert_eq!((closed.accepted, closed.asked), (2, 2)),
            other => panic!("expected RoundClosed, got {other:?}"),
        }
        assert!(matches!(n.read().await, Message::Finished { .. }));
    }
    new.finish().await;
    b.finish().await;
    let summary = coordinator.await.unwrap().unwrap();
    assert_eq!(summary.accepted_per_round, [2]);
}

/// With `max_connections` held, the next attempt is refused before any handshake work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_before_the_handshake() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start_with(&ca, |c| FederationConfig {
        nodes: 1,
        max_connections: 1,
        ..c
    });
    let mut a = Node::join(&ca, "node-a", addr).await;
    assert!(matches!(a.read().await, Message::RoundOpen(_)));
    assert_refused(&ca, "node-b", addr).await;
    a.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    assert!(matches!(a.read().await, Message::RoundClosed(_)));
    assert!(matches!(a.read().await, Message::Finished { .. }));
    a.finish().await;
    assert_eq!(coordinator.await.unwrap().unwrap().rounds, 1);
}

/// A shutdown signal mid-round closes every node with the code that tells it to reconnect,
/// and the summary says the run stopped early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_tells_every_node_to_reconnect_later() {
    let ca = Ca::generate("server-test").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, coordinator) =
        start_until(&ca, |c| FederationConfig { nodes: 2, ..c }, async move {
            let _ = stopped.await;
        });
    let mut a = Node::join(&ca, "node-a", addr).await;
    let mut b = Node::join(&ca, "node-b", addr).await;
    for n in [&mut a, &mut b] {
        assert!(matches!(n.read().await, Message::RoundOpen(_)));
    }
    stop.send(()).unwrap();
    for n in [&a, &b] {
        let (code, _) = close_code(n).await;
        assert_eq!(code, fd_protocol::close::SHUTDOWN);
        assert!(fd_protocol::close::reconnect_helps(code.into()));
    }
    let summary = coordinator.await.unwrap().unwrap();
    assert_eq!(
        summary.rounds, 0,
        "the open round is dropped, not half-counted"
    );
    let why = summary.ended_early.expect("ended early");
    assert!(why.contains("shut down"), "{why}");
}

/// A node whose stream ends in the middle of a frame broke the framing: it is told so, then
/// closed (it was counted as a lost connection and left open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_mid_frame_is_told_so_and_closed() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 2);
    let mut a = Node::join(&ca, "node-a", addr).await;
    let mut b = Node::join(&ca, "node-b", addr).await;
    for n in [&mut a, &mut b] {
        assert!(matches!(n.read().await, Message::RoundOpen(_)));
    }
    // A prefix announcing 100 bytes, 10 of them, and the end of the stream.
    a.send.write_all(&100u32.to_be_bytes()).await.unwrap();
    a.send.write_all(&[0u8; 10]).await.unwrap();
    a.send.finish().unwrap();
    match a.read().await {
        Message::Error { message } => assert!(message.contains("middle of a frame"), "{message}"),
        other => panic!("expected Error, got {other:?}"),
    }
    let (code, _) = close_code(&a).await;
    assert_eq!(code, fd_protocol::close::REFUSED);
    // b alone is left; its answer closes the round.
    b.contribute(vec![0.0, 1.0, 0.5, 0.5]).await;
    match b.read().await {
        Message::RoundClosed(closed) => assert_eq!((closed.accepted, closed.asked), (1, 1)),
        other => panic!("expected RoundClosed, got {other:?}"),
    }
    assert!(matches!(b.read().await, Message::Finished { .. }));
    b.finish().await;
    assert_eq!(coordinator.await.unwrap().unwrap().accepted_per_round, [1]);
}

/// A node gets the one stream the protocol uses: a second one (or a unidirectional one) is
/// never granted, so the coordinator buffers nothing on streams it does not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_granted_one_stream_only() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 1);
    let mut a = Node::join(&ca, "node-a", addr).await;
    // A grant arrives within a round trip on loopback (microseconds); a second is plenty.
    let wait = std::time::Duration::from_secs(1);
    let bi = tokio::time::timeout(wait, a.connection.open_bi()).await;
    assert!(bi.is_err(), "a second bidirectional stream was granted");
    let uni = tokio::time::timeout(wait, a.connection.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was granted");
    assert!(matches!(a.read().await, Message::RoundOpen(_)));
    a.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    assert!(matches!(a.read().await, Message::RoundClosed(_)));
    assert!(matches!(a.read().await, Message::Finished { .. }));
    a.finish().await;
    assert_eq!(coordinator.await.unwrap().unwrap().rounds, 1);
}

/// Once the rounds are over, a node that connects is refused at once rather than left to time
/// out its handshake while the coordinator waits for the others to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connecting_after_the_last_round_is_refused_at_once() {
    let ca = Ca::generate("server-test").unwrap();
    let (addr, coordinator) = start(&ca, 1);
    let mut a = Node::join(&ca, "node-a", addr).await;
    assert!(matches!(a.read().await, Message::RoundOpen(_)));
    a.contribute(vec![1.0, 0.0, 0.5, 0.5]).await;
    assert!(matches!(a.read().await, Message::RoundClosed(_)));
    assert!(matches!(a.read().await, Message::Finished { .. }));
    // a holds its connection open: the coordinator waits for it to close.
    assert_refused(&ca, "node-late", addr).await;
    a.finish().await;
    assert_eq!(coordinator.await.unwrap().unwrap().rounds, 1);
}
