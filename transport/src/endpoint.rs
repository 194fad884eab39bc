//! QUIC endpoints: the coordinator's server endpoint (optionally with a stateless-reset secret
//! that survives restarts) and a node's client endpoint.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use crate::framed::TransportError;

/// Opens a QUIC server endpoint on `addr` (port 0 picks a free port; see
/// [`quinn::Endpoint::local_addr`]). Must be called inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    quinn::Endpoint::server(cfg, addr).map_err(|source| TransportError::Io { addr, source })
}

/// Bytes of a stateless-reset secret (see [`server_endpoint_with_reset_secret`]).
pub const RESET_SECRET_LEN: usize = 32;

/// A fresh random stateless-reset secret, from the operating system's generator.
pub fn new_reset_secret() -> Result<[u8; RESET_SECRET_LEN], TransportError> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; RESET_SECRET_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| TransportError::Random)?;
    Ok(secret)
}

/// Like [`server_endpoint`], with a stateless-reset key derived from `secret`. A server that
/// restarts with the same secret (the coordinator keeps it in its state directory) answers
/// packets of connections it lost in the crash with a stateless reset their peers accept, so
/// nodes learn at once that they must reconnect instead of waiting out their idle timeout.
pub fn server_endpoint_with_reset_secret(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
    secret: &[u8],
) -> Result<quinn::Endpoint, TransportError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    // quinn's default connection-ID generator checks IDs with a per-process key and drops,
    // without a reset, packets whose ID it does not recognise: IDs must outlive the process.
    let mut endpoint_config = quinn::EndpointConfig::new(std::sync::Arc::new(key.clone()));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    endpoint_config.cid_generator(move || {
        Box::new(RestartableCids {
            key: key.clone(),
            nonce: started,
            counter: 0,
        }) as Box<dyn quinn::ConnectionIdGenerator>
    });
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| TransportError::Io { addr, source })?;
    let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Io {
        addr,
        source: io::Error::other("no async runtime (call inside tokio)"),
    })?;
    quinn::Endpoint::new(endpoint_config, Some(cfg), socket, runtime)
        .map_err(|source| TransportError::Io { addr, source })
}

/// Connection IDs any instance of the endpoint accepts (quinn's default validation key is
/// per process). Each is 8 bytes of HMAC(secret, start time, counter): unlinkable for
/// observers, and distinct across restarts.
struct RestartableCids {
    key: ring::hmac::Key,
    nonce: u64,
    counter: u64,
}

/// Bytes of a connection ID.
const CID_LEN: usize = 8;

impl quinn::ConnectionIdGenerator for RestartableCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.counter += 1;
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&self.nonce.to_le_bytes());
        input[8..].copy_from_slice(&self.counter.to_le_bytes());
        let tag = ring::hmac::sign(&self.key, &input);
        quinn::ConnectionId::new(&tag.as_ref()[..CID_LEN])
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Opens a QUIC client endpoint on `0.0.0.0:0` (any free IPv4 port) whose connections use
/// `cfg`. Must be called inside a tokio runtime.
pub fn client_endpoint(cfg: quinn::ClientConfig) -> Result<quinn::Endpoint, TransportError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut endpoint =
        quinn::Endpoint::client(addr).map_err(|source| TransportError::Io { addr, source })?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}
