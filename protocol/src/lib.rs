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
mod projection;

pub use codec::{CodecError, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use messages::{
    Contribution, Hello, LabelError, Masked, Message, PrivacyReceipt, RoundClosed, RoundOpen,
    SecureRound, SignedAdvert, SoftLabels, Welcome, arg_max,
};
pub use projection::Projection;

/// ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"fd/1";

/// Lower-case hex of a SHA-256 digest, as `sha256sum` prints it.
pub fn sha256_hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case) into a SHA-256 digest.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
