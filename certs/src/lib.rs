//! The federation's PKI (`fd-certs`).
//!
//! Every byte between a node (`fd-client`) and the coordinator (`fd-coordinator`) travels over
//! mutual-TLS QUIC (`fd-transport`), and both ends prove who they are with certificates signed
//! by the federation's own CA. [`pki`] makes that CA and issues node and coordinator
//! certificates; the `fd-certs` binary wraps it for operators. This crate only makes and reads
//! certificates: it has no network code.

#![warn(missing_docs)]

mod error;
pub mod pki;

pub use error::CertError;
pub use pki::{Ca, Identity, init_ca_dir, issue_to_dir, revoke_in_dir};
