//! Framed [`Message`]s on QUIC streams.
//!
//! A frame is what [`fd_protocol::codec`] makes: a 4-byte length prefix and a payload. Reading
//! checks the announced length against the caller's maximum *before* allocating, so a hostile
//! peer cannot make us reserve memory by lying in the prefix; everything about the bytes
//! themselves is the codec's business.

use std::io;
use std::net::SocketAddr;

use fd_protocol::Message;
use fd_protocol::codec::{LEN_PREFIX, decode_payload, encode_frame, payload_len};
use quinn::ReadExactError;

/// Why a message could not be sent or received, or an endpoint not opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The frame could not be encoded, or the bytes received are not a valid frame (too large,
    /// wrong protocol version, malformed).
    #[error(transparent)]
    Codec(#[from] fd_protocol::CodecError),
    /// Reading from the stream failed (the connection was lost, or the peer reset the stream).
    #[error("cannot read from the peer: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing to the stream failed (the connection was lost, or the peer stopped the stream).
    #[error("cannot write to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error(
        "the peer's stream ended in the middle of a frame ({got} of {expected} bytes of the \
         {part}); the peer closed its side early or crashed"
    )]
    Truncated {
        /// "length prefix" or "payload".
        part: &'static str,
        /// Bytes the frame needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The UDP socket of an endpoint could not be opened.
    #[error(
        "cannot open a QUIC endpoint on UDP {addr}: {source}; is the address in use or not local?"
    )]
    Io {
        /// The address the socket was to be bound to.
        addr: SocketAddr,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The operating system's random generator failed (making a stateless-reset secret).
    #[error("the system random generator failed")]
    Random,
    /// A connection could not be established or was lost.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A connection could not even be started (bad server name, no client configuration...).
    #[error("cannot start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The stream had already been finished or reset locally.
    #[error("the stream is already closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
}

/// Encodes `msg` and writes the whole frame to `send`; returns the bytes written (length
/// prefix included).
pub async fn write_message(
    send: &mut quinn::SendStream,
    msg: &Message,
    max_frame_len: usize,
) -> Result<usize, TransportError> {
    let frame = encode_frame(msg, max_frame_len)?;
    send.write_all(&frame).await?;
    Ok(frame.len())
}

/// Reads one frame from `recv`; returns the message and the bytes it took (length prefix
/// included), or `Ok(None)` if the stream finished cleanly before a new frame began.
///
/// The payload buffer is allocated only after the announced length has passed
/// `max_frame_len`; an oversized prefix is an error and nothing more is read.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    max_frame_len: usize,
) -> Result<Option<(Message, usize)>, TransportError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(TransportError::Truncated {
                part: "length prefix",
                expected: LEN_PREFIX,
                got,
            });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = payload_len(prefix, max_frame_len)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(TransportError::Truncated {
                part: "payload",
                expected: len,
                got,
            });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let msg = decode_payload(&payload)?;
    Ok(Some((msg, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{client_endpoint, server_endpoint};
    use crate::tls::{TlsIdentity, client_config, peer_name, server_config};
    use fd_certs::pki::Ca;
    use fd_protocol::{DEFAULT_MAX_FRAME_LEN, Hello};
    use rustls_pki_types::pem::PemObject;
    use std::time::Duration;
    use tokio::time::timeout;

    /// Upper bound on any one step of these loopback tests, so a bug fails them instead of
    /// hanging them. A loopback handshake takes milliseconds.
    const STEP: Duration = Duration::from_secs(5);

    fn hello() -> Message {
        Message::Hello(Hello {
            public_records: 1000,
            classes: 10,
            private_records: 500,
            public_sha256: None,
            private: false,
        })
    }

    fn identity(ca: &Ca, id: &fd_certs::pki::Identity) -> TlsIdentity {
        TlsIdentity {
            ca_pem: ca.cert_pem(),
            cert_pem: id.cert_pem.clone(),
            key_pem: id.key_pem.clone(),
        }
    }

    /// A coordinator endpoint on 127.0.0.1:0 with a certificate for "localhost", and a node
    /// endpoint whose certificate is issued by `node_ca` but which trusts `ca`.
    fn endpoints(ca: &Ca, node_ca: &Ca) -> (quinn::Endpoint, quinn::Endpoint) {
        let server_id = ca
            .issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])
            .expect("server cert");
        let node_id = node_ca.issue_node("hospital-a").expect("node cert");
        let server = server_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            server_config(&identity(ca, &server_id)).expect("server config"),
        )
        .expect("server endpoint");
        let node_tls = TlsIdentity {
            ca_pem: ca.cert_pem(),
            ..identity(node_ca, &node_id)
        };
        let client = client_endpoint(client_config(&node_tls).expect("client config"))
            .expect("client endpoint");
        (server, client)
    }

    async fn connect(client: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
        let connecting = client.connect(addr, "localhost").expect("connect starts");
        timeout(STEP, connecting)
            .await
            .expect("handshake in time")
            .expect("handshake")
    }

    #[tokio::test]
    async fn loopback_exchange_names_the_node() {
        let ca = Ca::generate("test").expect("CA");
        let (server, client) = endpoints(&ca, &ca);
        let addr = server.local_addr().expect("server addr");

        let coordinator = tokio::spawn(async move {
            let incoming = server.accept().await.expect("endpoint open");
            let conn = incoming.await.expect("server handshake");
            let name = peer_name(&conn).expect("peer name");
            let alpn = conn.handshake_data().and_then(|d| {
                d.downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()
                    .and_then(|d| d.protocol)
            });
            let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
            let first = read_message(&mut recv, DEFAULT_MAX_FRAME_LEN)
                .await
                .expect("read");
            let after = read_message(&mut recv, DEFAULT_MAX_FRAME_LEN)
                .await
                .expect("clean end");
            // Answer, so the node knows the coordinator got everything before it closes.
            write_message(&mut send, &hello(), DEFAULT_MAX_FRAME_LEN)
                .await
                .expect("reply");
            send.finish().expect("finish");
            let _ = send.stopped().await;
            (name, alpn, first, after)
        });

        let conn = connect(&client, addr).await;
        // The node sees the coordinator's certificate too (a server certificate, first DNS SAN).
        assert_eq!(peer_name(&conn).expect("server name"), "localhost");
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        let written = write_message(&mut send, &hello(), DEFAULT_MAX_FRAME_LEN)
            .await
            .expect("write");
        send.finish().expect("finish");
        let reply = timeout(STEP, read_message(&mut recv, DEFAULT_MAX_FRAME_LEN))
            .await
            .expect("reply in time")
            .expect("reply");
        assert_eq!(reply.map(|(m, _)| m), Some(hello()));

        let (name, alpn, first, after) = timeout(STEP, coordinator)
            .await
            .expect("coordinator in time")
            .expect("coordinator task");
        assert_eq!(name, "hospital-a");
        assert_eq!(alpn.as_deref(), Some(fd_protocol::ALPN));
        let (msg, read) = first.expect("a message, not end of stream");
        assert_eq!(msg, hello());
        assert_eq!(read, written);
        assert!(after.is_none(), "finished stream must read as Ok(None)");
    }

    #[tokio::test]
    async fn node_with_a_foreign_certificate_is_refused() {
        let ca = Ca::generate("federation").expect("CA");
        let rogue = Ca::generate("rogue").expect("rogue CA");
        // The node trusts the real CA (so it accepts the coordinator), but its own certificate
        // comes from the rogue CA.
        let (server, client) = endpoints(&ca, &rogue);
        let addr = server.local_addr().expect("server addr");

        let coordinator = tokio::spawn(async move {
            let incoming = server.accept().await.expect("endpoint open");
            incoming.await
        });

        // With TLS 1.3 the node may finish its side of the handshake before the coordinator has
        // checked the node's certificate, so connect() itself may succeed: what must fail is
        // any exchange on the connection.
        let exchange = async {
            let conn = client.connect(addr, "localhost")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_message(&mut send, &hello(), DEFAULT_MAX_FRAME_LEN).await?;
            read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await
        };
        let outcome: Result<_, TransportError> = timeout(STEP, exchange)
            .await
            .expect("node gives up in time");
        assert!(outcome.is_err(), "exchange succeeded: {outcome:?}");

        let accepted = timeout(STEP, coordinator)
            .await
            .expect("coordinator in time")
            .expect("coordinator task");
        match accepted {
            Err(quinn::ConnectionError::TransportError(e)) => {
                // A TLS alert: QUIC carries them as CRYPTO_ERROR codes 0x100-0x1ff.
                let code = u64::from(e.code);
                assert!((0x100..0x200).contains(&code), "not a TLS alert: {e}");
            }
            other => panic!("coordinator accepted a rogue node: {other:?}"),
        }
    }

    /// The coordinator's verdict on one incoming connection, within [`STEP`].
    async fn verdict(server: quinn::Endpoint) -> Result<quinn::Connection, quinn::ConnectionError> {
        let incoming = timeout(STEP, server.accept())
            .await
            .expect("a connection attempt in time")
            .expect("endpoint open");
        timeout(STEP, incoming)
            .await
            .expect("handshake ends in time")
    }

    #[tokio::test]
    async fn node_without_a_certificate_is_refused() {
        let ca = Ca::generate("federation").expect("CA");
        let (server, _) = endpoints(&ca, &ca);
        let addr = server.local_addr().expect("server addr");
        let coordinator = tokio::spawn(verdict(server));

        // A well-behaved TLS client that trusts the CA but has no certificate to present.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .expect("CA PEM");
        roots.add(ca_der).expect("root");
        let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![fd_protocol::ALPN.to_vec()];
        let cfg = quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS"),
        ));
        let client = client_endpoint(cfg).expect("client endpoint");
        let exchange = async {
            let conn = client.connect(addr, "localhost")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_message(&mut send, &hello(), DEFAULT_MAX_FRAME_LEN).await?;
            read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await
        };
        let outcome: Result<_, TransportError> = timeout(STEP, exchange)
            .await
            .expect("node gives up in time");
        assert!(outcome.is_err(), "exchange succeeded: {outcome:?}");
        let accepted = coordinator.await.expect("coordinator task");
        assert!(accepted.is_err(), "coordinator accepted an anonymous node");
    }

    #[tokio::test]
    async fn node_certificate_cannot_serve_as_the_coordinator() {
        let ca = Ca::generate("federation").expect("CA");
        // A node that tries to pose as the coordinator with its own (client-only) certificate.
        let impostor = ca.issue_node("localhost").expect("node cert");
        // Our own server_config refuses it at start...
        let err = server_config(&identity(&ca, &impostor)).expect_err("refused at start");
        assert!(matches!(err, crate::TlsError::WrongUsage { .. }), "{err}");
        // ...and a node refuses an impostor that built its configuration by other means.
        let server = server_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            crate::tls::unchecked_server_config(&identity(&ca, &impostor))
                .expect("impostor's config"),
        )
        .expect("server endpoint");
        let addr = server.local_addr().expect("server addr");
        let _coordinator = tokio::spawn(verdict(server));

        let node = ca.issue_node("hospital-a").expect("node cert");
        let client = client_endpoint(client_config(&identity(&ca, &node)).expect("client config"))
            .expect("client endpoint");
        let connecting = client.connect(addr, "localhost").expect("connect starts");
        let result = timeout(STEP, connecting)
            .await
            .expect("handshake ends in time");
        match result {
            // rustls refuses it for its extended key usage (clientAuth only), not by accident.
            Err(quinn::ConnectionError::TransportError(e)) => {
                assert!(
                    e.reason.contains("usage"),
                    "refused for another reason: {e}"
                );
            }
            other => panic!("node trusted a client-only certificate as the server: {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_before_reading_on() {
        let ca = Ca::generate("test").expect("CA");
        let (server, client) = endpoints(&ca, &ca);
        let addr = server.local_addr().expect("server addr");
        // A small maximum; the prefix below announces one byte more.
        let max = 1024;

        let coordinator = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("endpoint open")
                .await
                .expect("handshake");
            let (_send, mut recv) = conn.accept_bi().await.expect("stream");
            let result = read_message(&mut recv, max).await;
            (result, conn)
        });

        let conn = connect(&client, addr).await;
        let (mut send, _recv) = conn.open_bi().await.expect("open stream");
        // Only the prefix is sent and the stream stays open: if read_message tried to read the
        // payload it would wait for ever, and the timeout below would fail the test.
        let prefix = u32::try_from(max + 1).expect("small").to_be_bytes();
        send.write_all(&prefix).await.expect("write prefix");

        let (result, _conn) = timeout(STEP, coordinator)
            .await
            .expect("read_message returned without waiting for a payload")
            .expect("coordinator task");
        match result {
            Err(TransportError::Codec(fd_protocol::CodecError::FrameTooLarge { len, max: m })) => {
                assert_eq!((len, m), (max + 1, max));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stream_ending_mid_frame_is_an_error() {
        let ca = Ca::generate("test").expect("CA");
        let (server, client) = endpoints(&ca, &ca);
        let addr = server.local_addr().expect("server addr");

        let coordinator = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("endpoint open")
                .await
                .expect("handshake");
            let (_send, mut recv) = conn.accept_bi().await.expect("stream");
            let result = read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await;
            (result, conn)
        });

        let conn = connect(&client, addr).await;
        let (mut send, _recv) = conn.open_bi().await.expect("open stream");
        let frame = encode_frame(&hello(), DEFAULT_MAX_FRAME_LEN).expect("encode");
        // Everything but the last byte, then a clean finish.
        send.write_all(&frame[..frame.len() - 1])
            .await
            .expect("write");
        send.finish().expect("finish");

        let (result, _conn) = timeout(STEP, coordinator)
            .await
            .expect("coordinator in time")
            .expect("coordinator task");
        match result {
            Err(TransportError::Truncated {
                part: "payload",
                expected,
                got,
            }) => assert_eq!(got + 1, expected),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}
