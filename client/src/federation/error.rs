//! Why a node's session failed.

use std::net::SocketAddr;

use fd_transport::{TlsError, TransportError};

use crate::distill::ModelError;
use crate::privacy::release::LabelError;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TLS material could not be turned into a QUIC config.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC connection could not be set up.
    #[error("cannot connect to the coordinator at {addr}: {message}")]
    Connect {
        /// Coordinator address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The coordinator closed the connection before welcoming this node; usually its
    /// certificate was refused (signed by another CA, expired, revoked, or not a node
    /// certificate).
    #[error(
        "not admitted by the coordinator at {addr}: {message} (is this node's certificate issued \
         by the federation CA, and not revoked? The coordinator's log says which)"
    )]
    NotAdmitted {
        /// Coordinator address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The coordinator refused this node.
    #[error("rejected by the coordinator: {0}")]
    Rejected(String),
    /// The coordinator closed this connection because a newer one under the same node name
    /// replaced it. Reconnecting would evict that one in turn, so the node stops.
    #[error(
        "the coordinator closed this node's connection: {0} (another fd-client is using this \
         node's certificate; stop one of them)"
    )]
    Replaced(String),
    /// The coordinator reported an error.
    #[error("the coordinator reported an error: {0}")]
    Coordinator(String),
    /// A message could not be sent or received.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The coordinator sent something out of place.
    #[error("protocol violation by the coordinator: {0}")]
    Protocol(String),
    /// The blocking thread that trains and labels died (a panic in candle or the teachers).
    #[error("the training thread failed: {0}")]
    Worker(String),
    /// Training failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// Labelling (teachers or the privacy machinery) failed.
    #[error("labelling: {0}")]
    Label(#[from] LabelError),
    /// This node cannot take part on the federation's terms.
    #[error("{0}")]
    Terms(String),
}
