//! The federation coordinator (`fd-coordinator`).
//!
//! The coordinator never sees data. It admits nodes whose certificates the federation CA signed
//! (`fd-certs`), opens rounds that name public records to label, validates the soft labels the
//! nodes (`fd-client`) send back, aggregates them into the global distillation target and sends
//! that target out again. Messages are those of `fd-protocol`.
//!
//! [`config`] reads `federation.toml`; [`aggregate`] combines contributions; [`rounds`] is the
//! round logic as a state machine without I/O; [`server`] runs the QUIC endpoint around it;
//! [`store`] keeps the state in SQLite so a restarted coordinator carries on.

#![warn(missing_docs)]

pub mod aggregate;
pub mod config;
pub mod rounds;
pub mod server;
pub mod store;

pub use config::FederationConfig;
pub use server::{CoordinatorError, Summary, bind, run, serve};
