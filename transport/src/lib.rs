//! The federation's mutual-TLS QUIC transport (`fd-transport`).
//!
//! Every byte between a node (`fd-client`) and the coordinator (`fd-coordinator`) travels over
//! QUIC (quinn) with TLS 1.3, and both ends prove who they are with certificates signed by the
//! federation's own CA (made by `fd-certs`). [`tls`] turns those certificates into quinn
//! configurations that require a valid node certificate and reads the node's name back off a
//! connection, so a node's identity is the name in its certificate, never anything it claims
//! in a message; [`framed`] moves [`fd_protocol::Message`]s over QUIC streams as the
//! length-prefixed frames of [`fd_protocol::codec`], refusing oversized frames before
//! allocating; [`endpoint`] opens the endpoints, with a stateless-reset secret that outlives a
//! coordinator restart.

#![warn(missing_docs)]

pub mod endpoint;
mod error;
pub mod framed;
pub mod tls;

pub use endpoint::{
    RESET_SECRET_LEN, SOCKET_BUFFER, bare_client_endpoint, client_endpoint, new_reset_secret,
    server_endpoint, server_endpoint_with_reset_secret,
};
pub use error::TlsError;
pub use framed::{TransportError, read_message, write_message};
pub use tls::{
    PeerNode, PeerVerifier, TlsIdentity, client_config, node_name, peer_name, server_config,
    server_config_with_crl,
};
