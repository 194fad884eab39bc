//! The wire language of the federation.
//!
//! Every byte that crosses between a node (`fd-client`) and the coordinator (`fd-coordinator`)
//! is one [`Message`], encoded by the [`codec`] module into a length-prefixed frame. This crate
//! does no I/O and knows nothing of tokio or quinn: the transport (`fd-transport`) reads frames
//! off QUIC streams and hands the bytes here. Decoding is bounded (the length prefix is checked
//! against a maximum before anything is allocated) and never panics on hostile input.
//!
//! Only privatised soft labels travel: a [`Contribution`] holds one probability vector per
//! queried public record, never features, gradients or weights.

#![warn(missing_docs)]

pub mod close;
pub mod codec;
mod messages;

pub use codec::{CodecError, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use messages::{
    Contribution, Hello, LabelError, Message, PrivacyReceipt, RoundClosed, RoundOpen, SoftLabels,
    Welcome, arg_max,
};

/// ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"fd/1";
