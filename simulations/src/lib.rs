//! Whole-federation simulations on one machine (`fd-sim`).
//!
//! A simulation starts the real coordinator (`fd-coordinator`) and N real clients (`fd-client`)
//! in one process; they talk over loopback QUIC with mutual TLS, with certificates from a
//! throw-away federation CA (`fd-certs`). Data comes from built-in datasets or a user's CSV
//! file ([`datasets`]), split into a shared test set, a public reference set and non-IID
//! private shards ([`partition`]). [`federation`] runs it all and the baselines (local-only and
//! centralised); [`faults`] injects byzantine, dropping and straggling clients. [`report`]
//! prints the tables, [`plots`] draws the charts (with `fd-plot`) and [`progress`] shows how
//! far a run has got.

#![warn(missing_docs)]

pub mod datasets;
pub mod faults;
pub mod federation;
pub mod load;
pub mod partition;
pub mod plots;
pub mod progress;
pub mod report;
pub mod students;
