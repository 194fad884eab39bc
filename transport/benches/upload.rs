//! One soft-label upload (a contribution of 1,000 queries x 10 classes) over loopback QUIC with
//! the federation's mutual TLS, against a raw quinn stream carrying the same number of bytes
//! on a connection with the same configuration.
//!
//! Like a node, each side keeps one bidirectional stream (the protocol allows one a
//! connection). Each iteration sends one upload and waits for the receiver's one-byte
//! acknowledgement, so both sides are timed end to end: the framed path encodes the message,
//! writes its frame, reads it back and decodes it; the raw path writes and reads the same
//! number of bytes. The difference is what the protocol costs on top of QUIC itself.
//!
//! `cargo bench -p fd-transport --bench upload`

use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fd_certs::pki::Ca;
use fd_protocol::codec::encode_frame;
use fd_protocol::{Contribution, DEFAULT_MAX_FRAME_LEN, Message, SoftLabels};
use fd_transport::{
    TlsIdentity, client_config, client_endpoint, read_message, server_config, server_endpoint,
    write_message,
};

const QUERIES: usize = 1_000;
const CLASSES: usize = 10;

fn contribution() -> Message {
    let probs = (0..QUERIES * CLASSES)
        .map(|i| {
            if i % CLASSES == (i / CLASSES) % CLASSES {
                0.91
            } else {
                0.01
            }
        })
        .collect();
    Message::Contribution(Contribution {
        round: 3,
        labels: SoftLabels {
            classes: CLASSES as u16,
            query_ids: (0..QUERIES as u32).collect(),
            probs,
        },
        receipt: None,
    })
}

fn identity(ca: &Ca, id: &fd_certs::pki::Identity) -> TlsIdentity {
    TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: id.cert_pem.clone(),
        key_pem: id.key_pem.clone(),
    }
}

/// How the receiving side reads each upload.
#[derive(Clone, Copy)]
enum Read {
    /// One framed message, decoded.
    Framed,
    /// This many bytes, undecoded.
    Raw(usize),
}

/// Serves one connection's stream: reads uploads as `read` says, acknowledging each with a byte.
async fn serve(connection: quinn::Connection, read: Read) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let mut buf = Vec::new();
    loop {
        let ok = match read {
            Read::Framed => matches!(
                read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await,
                Ok(Some((Message::Contribution(_), _)))
            ),
            Read::Raw(len) => {
                buf.resize(len, 0);
                recv.read_exact(&mut buf).await.is_ok()
            }
        };
        if !ok || send.write_all(&[1]).await.is_err() {
            return;
        }
    }
}

/// Waits for the receiver's acknowledgement on `recv`.
async fn acknowledged(recv: &mut quinn::RecvStream) {
    let mut ack = [0u8];
    recv.read_exact(&mut ack).await.expect("acknowledgement");
    assert_eq!(ack, [1], "the receiver read the upload");
}

fn upload(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = Ca::generate("bench").expect("CA");
    let server_id = ca
        .issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])
        .expect("server certificate");
    let node_id = ca.issue_node("hospital-a").expect("node certificate");
    let message = contribution();
    let frame = encode_frame(&message, DEFAULT_MAX_FRAME_LEN).expect("fits");

    // Two connections of the same configuration: the first is read framed, the second raw.
    let (_client, _server, mut connections) = runtime.block_on(async {
        let server = server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            server_config(&identity(&ca, &server_id)).expect("server config"),
        )
        .expect("server endpoint");
        let addr = server.local_addr().expect("server address");
        let client = client_endpoint(client_config(&identity(&ca, &node_id)).expect("client"))
            .expect("client endpoint");
        let mut connections = Vec::new();
        for read in [Read::Framed, Read::Raw(frame.len())] {
            let connecting = client.connect(addr, "localhost").expect("connect");
            let (ours, theirs) = tokio::join!(connecting, async {
                server.accept().await.expect("incoming").await
            });
            tokio::spawn(serve(theirs.expect("server handshake"), read));
            let connection = ours.expect("client handshake");
            let stream = connection.open_bi().await.expect("stream");
            // The endpoints and connections must outlive the benchmark.
            connections.push((connection, stream));
        }
        (client, server, connections)
    });
    let (_raw_connection, (mut raw_send, mut raw_recv)) = connections.pop().expect("raw");
    let (_framed_connection, (mut send, mut recv)) = connections.pop().expect("framed");

    let mut group = c.benchmark_group("upload 1000 x 10 over mTLS QUIC");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("contribution (encode, frame, read, decode)", |b| {
        b.iter(|| {
            runtime.block_on(async {
                write_message(&mut send, &message, DEFAULT_MAX_FRAME_LEN)
                    .await
                    .expect("write");
                acknowledged(&mut recv).await;
            })
        })
    });
    group.bench_function("raw quinn stream, same bytes", |b| {
        b.iter(|| {
            runtime.block_on(async {
                raw_send.write_all(&frame).await.expect("write");
                acknowledged(&mut raw_recv).await;
            })
        })
    });
    group.finish();
}

criterion_group!(benches, upload);
criterion_main!(benches);
