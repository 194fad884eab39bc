//! Federation PKI and the mutual-TLS QUIC transport built on it.
//!
//! Every byte between a node (`fd-client`) and the coordinator (`fd-coordinator`) travels over
//! QUIC (quinn) with TLS 1.3, and both ends prove who they are with certificates signed by the
//! federation's own CA. [`pki`] makes that CA and issues node and coordinator certificates (the
//! `fd-certs` binary wraps it for operators); [`tls`] turns them into quinn configurations that
//! require a valid node certificate and reads the node's name back off a connection, so a
//! node's identity is the name in its certificate, never anything it claims in a message;
//! [`transport`] moves [`fd_protocol::Message`]s over QUIC streams as the length-prefixed frames
//! of [`fd_protocol::codec`], refusing oversized frames before allocating.

#![warn(missing_docs)]

mod error;
pub mod pki;
pub mod tls;
pub mod transport;

pub use error::CertError;
pub use pki::{Ca, Identity, init_ca_dir, issue_to_dir};
pub use tls::{TlsIdentity, client_config, peer_name, server_config};
pub use transport::{
    TransportError, client_endpoint, read_message, server_endpoint, write_message,
};
