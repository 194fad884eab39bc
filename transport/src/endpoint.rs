//! QUIC endpoints: the coordinator's server endpoint (optionally with a stateless-reset secret
//! that survives restarts) and a node's client endpoint.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use crate::framed::TransportError;

/// Bytes of UDP receive and send buffer asked of the operating system for every endpoint.
///
/// Its default (about 208 KiB on Linux) overflows when a thousand nodes answer a round at once:
/// the datagrams it drops cost each of those connections a loss-recovery timeout, and rounds
/// took seconds with the CPU idle. The system caps the request at `net.core.rmem_max` and
/// `wmem_max`; a smaller buffer still works, only with more loss under bursts.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers (as large as the system
/// allows).
fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |source| TransportError::Io { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    for (which, result) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = result {
            tracing::debug!(%addr, "cannot enlarge the UDP {which} buffer: {e}");
        }
    }
    socket.bind(&addr.into()).map_err(io)?;
    Ok(socket.into())
}

/// A quinn endpoint on `socket`, inside the current tokio runtime.
fn endpoint_on(
    addr: SocketAddr,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, TransportError> {
    let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Io {
        addr,
        source: io::Error::other("no async runtime (call inside tokio)"),
    })?;
    quinn::Endpoint::new(config, server, socket, runtime)
        .map_err(|source| TransportError::Io { addr, source })
}

/// Opens a QUIC server endpoint on `addr` (port 0 picks a free port; see
/// [`quinn::Endpoint::local_addr`]). Must be called inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = udp_socket(addr)?;
    endpoint_on(addr, quinn::EndpointConfig::default(), Some(cfg), socket)
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
    let socket = udp_socket(addr)?;
    endpoint_on(addr, endpoint_config, Some(cfg), socket)
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
    let mut endpoint = bare_client_endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// A client endpoint on `addr` with no default configuration: each connection names its own
/// (`quinn::Endpoint::connect_with`), as when one process plays many nodes.
pub fn bare_client_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let socket = udp_socket(addr)?;
    endpoint_on(addr, quinn::EndpointConfig::default(), None, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket gets the buffer asked for, up to what the system allows (Linux reports twice
    /// the size it was asked for, its bookkeeping included, and caps the request at rmem_max).
    #[cfg(target_os = "linux")]
    #[test]
    fn endpoint_sockets_get_buffers_as_large_as_the_system_allows() {
        let cap = |file: &str| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse::<usize>().ok())
                .unwrap_or(SOCKET_BUFFER)
        };
        let socket = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0))).expect("socket");
        let socket = socket2::SockRef::from(&socket);
        let recv = socket.recv_buffer_size().expect("SO_RCVBUF");
        let send = socket.send_buffer_size().expect("SO_SNDBUF");
        assert!(
            recv >= SOCKET_BUFFER.min(cap("/proc/sys/net/core/rmem_max")),
            "{recv}"
        );
        assert!(
            send >= SOCKET_BUFFER.min(cap("/proc/sys/net/core/wmem_max")),
            "{send}"
        );
    }
}
