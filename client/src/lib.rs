//! A federation node (`fd-client`).
//!
//! A node holds labelled records it may not share. It trains a small *student* model on them,
//! labels the public reference records the coordinator (`fd-coordinator`) asks about, sends those
//! soft labels (and nothing else) over mutual-TLS QUIC (`fd-transport`), and distils from the
//! global target the coordinator aggregates. The student stays on the node: it is the node's
//! product.
//!
//! The modules, in the order a round uses them:
//! - [`config`]: the node's TOML config; [`data`]: CSV files, standardisation, tensors.
//! - [`build`]: the one way to turn a config and data into a node ([`build::NodeBuilder`]),
//!   used by `fd-client` and `fd-sim` alike.
//! - [`distill`]: the student, its loss and schedules, the local teacher and the learner.
//! - [`privacy`]: the teacher ensemble, the DP release, the accountant and the ledger.
//! - [`federation`]: the node's session as a state machine without I/O, and the driver that
//!   runs it over QUIC.
//! - [`evaluate`]: metrics, the student against its teacher, the node's report.
//! - [`node`]: a whole run from a [`config::NodeConfig`]; [`predict`]: a saved student on a CSV.
//! - [`seeds`]: the named random streams derived from a node's seed.

#![warn(missing_docs)]

pub mod build;
pub mod config;
pub mod data;
pub mod distill;
mod error;
pub mod evaluate;
pub mod federation;
pub mod node;
pub mod predict;
pub mod privacy;
pub mod seeds;
pub use error::NodeError;
