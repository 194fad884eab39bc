//! The federation coordinator (`fd-coordinator`).
//!
//! The coordinator never sees data. It admits nodes whose certificates the federation CA signed
//! (`fd-certs`), opens rounds that name public records to label, validates the soft labels the
//! nodes (`fd-client`) send back, aggregates them into the global distillation target and sends
//! that target out again. Messages are those of `fd-protocol`.
//!
//! The modules, from the pure logic to the I/O shell:
//!
//! - [`config`] reads `federation.toml`;
//! - [`aggregate`] combines contributions: the [`aggregate::Aggregator`] trait, one submodule per
//!   strategy, and the global [`aggregate::Target`];
//! - [`summary`] holds what a run leaves behind: each closed round's record and the run's
//!   [`Summary`] with the per-node accounts;
//! - [`secure`] is a secure-aggregation round's relay and decoding, which `rounds` drives;
//! - [`rounds`] is the round logic as a state machine without I/O, which fills them;
//! - [`store`] keeps the state in SQLite so a restarted coordinator carries on;
//! - [`server`] runs the QUIC endpoint around the state machine and the store.
//!
//! Dependencies point one way: `rounds` uses `aggregate`, `config` and `summary`; `store` uses
//! `rounds` and `summary`; only `server` uses `store`, and nothing uses `server`.

#![warn(missing_docs)]

pub mod aggregate;
pub mod config;
pub mod rounds;
pub mod secure;
pub mod server;
pub mod status;
pub mod store;
pub mod summary;

pub use config::FederationConfig;
pub use server::{CoordinatorError, bind, run, run_until, serve};
pub use summary::Summary;
