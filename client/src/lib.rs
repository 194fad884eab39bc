//! A federation node (`fd-client`).
//!
//! A node holds labelled records it may not share. It trains a small *student* model on them,
//! labels the public reference records the coordinator (`fd-coordinator`) asks about, sends those
//! soft labels (and nothing else) over mutual-TLS QUIC (`fd-certs`), and distils from the global
//! target the coordinator aggregates. The student stays on the node: it is the node's product.
//!
//! Layers, from the bottom: [`data`] (CSV, standardisation), [`model`] (the candle students, MLP
//! or CNN, and the distillation loss), [`train`] (the learner, its schedules and the local
//! teacher), [`compression`] (how much of its teacher a student keeps), [`session`] (the
//! protocol loop) and [`node`] (a whole run from a [`config::NodeConfig`]).

#![warn(missing_docs)]

pub mod compression;
pub mod config;
pub mod data;
pub mod ensemble;
pub mod labeller;
pub mod metrics;
pub mod model;
pub mod node;
pub mod privacy;
pub mod session;
pub mod train;
