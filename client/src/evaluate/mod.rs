//! How good a node's student is: accuracy and macro-F1, how much of its teacher it keeps
//! (compression ratio, measured speed-up, CKA), and the report a node writes at the end.

pub mod compare;
pub mod metrics;
pub mod report;

pub use compare::{Reference, StudentMetrics, measure, reference};
pub use report::{NodeReport, write_json};
