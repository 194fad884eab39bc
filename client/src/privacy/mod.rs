//! Differential privacy for the soft labels a node sends (DESIGN.md, "Privacy").
//!
//! # Guarantee
//!
//! The privacy unit is [`PRIVACY_UNIT`]: one record of one node's private data, under
//! replace-one adjacency. A node splits its private records into `k` disjoint teachers; one
//! record therefore changes at most one teacher. For each public query record the node sums
//! the `k` teachers' votes (subsample-and-aggregate; a vote is a point of `{v >= 0, sum v <= 1}`:
//! a probability vector, a one-hot vector, or zero when a teacher abstains), adds Gaussian
//! noise to the sums with OpenDP's `make_gaussian` (zero-concentrated DP), and post-processes
//! the noisy sums into rows the coordinator can average ([`mechanism::Projection`]; by default
//! the vote-mass projection, which keeps how many teachers voted). Post-processing costs no
//! privacy. The node's record count is public (replace-one adjacency, not add/remove).
//!
//! Per release the node is `rho`-zCDP, where `rho` is read from the privacy map of the very
//! OpenDP measurement that draws the noise, at `d_in` = [`release_sensitivity`]. Releases
//! compose by adding their `rho`s (OpenDP's `CompositionMeasure` for
//! `ZeroConcentratedDivergence`, rounding up). The total is reported as `(epsilon, delta)`-DP
//! through OpenDP's zCDP -> approximate-DP conversion ([`epsilon_for`]).
//!
//! # What lives where
//!
//! - [`mechanism`]: sensitivity, the Gaussian release and its cost, calibration, and the
//!   post-processing of the noisy sums.
//! - [`accountant`]: the `(epsilon, delta)` budget and the conversions between `rho` and
//!   `epsilon`.
//! - [`ledger`]: the durable, per-node SQLite record of every charge; it refuses a release that
//!   would exceed the budget.
//! - [`plan`]: what a node's releases will be worth, from public facts, before it spends.
//! - [`private_release`]: one round's release, in the only safe order (cost from the map,
//!   durable charge, then noise).
//! - [`release`]: what a node sends for a round's queries (its [`release::Labeller`]).
//! - [`teachers`]: the shard ensemble whose votes are released.
//!
//! # Rules (STYLE.md, "OpenDP")
//!
//! Noise comes only from OpenDP's samplers; privacy arithmetic comes only from OpenDP's maps
//! and its conservatively rounded arithmetic; every rounding goes toward more privacy loss.
//! Everything here is synchronous: OpenDP's `Measurement` is not `Send`.
//!
//! Note on randomness: the workspace builds `opendp` without its default `use-openssl`
//! feature, so OpenDP's samplers take their random bytes from `rand` 0.7's `thread_rng` (a
//! ChaCha-based generator seeded from the OS) rather than from OpenSSL's `RAND_priv_bytes`.
//! OpenDP documents that configuration as not vetted for production.

pub mod accountant;
pub mod distributed;
pub mod ledger;
pub mod mechanism;
pub mod plan;
pub mod release;
mod search;
pub mod teachers;

use std::path::PathBuf;

pub use accountant::{Budget, epsilon_for, rho_for};
pub use ledger::{Charge, PrivacyLedger, Receipt, rho_charged_at};
pub use mechanism::{
    Projection, gaussian_release, private_release, release_rho, release_sensitivity, sigma_for_rho,
    to_simplex,
};

/// The unit of privacy: one record of one node's private data (replace-one adjacency).
pub const PRIVACY_UNIT: &str = "record";

/// Privacy statement of a non-private node: labels leave without noise.
pub const NON_PRIVATE: &str =
    "none (non-private baseline: soft labels leave the node without noise)";

/// The mechanism a node runs on its soft labels, as reported in logs and receipts.
pub const MECHANISM: &str = "subsample-and-aggregate+gaussian(zCDP)";

/// Everything that can go wrong while pricing, charging or drawing a private release.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// A privacy budget is unusable: `epsilon` must be > 0 (`+inf` means no limit) and
    /// `delta` must lie strictly between 0 and 1.
    #[error(
        "invalid privacy budget (epsilon = {epsilon}, delta = {delta}): {problem}; \
         set [privacy] epsilon > 0 (or inf for no limit) and 0 < delta < 1 in the node config"
    )]
    InvalidBudget {
        /// The configured epsilon.
        epsilon: f64,
        /// The configured delta.
        delta: f64,
        /// Which rule the budget breaks.
        problem: &'static str,
    },

    /// `delta` is not below `1 / records`: at that delta a mechanism may publish one record
    /// outright and still meet the definition, so the guarantee says nothing.
    #[error(
        "delta = {delta} is not below 1 / {records} (the node's private records): at that \
         delta a release may reveal a whole record; set [privacy] delta below {bound:e} \
         (1e-5 or 1 / (10 x records) are common choices)"
    )]
    DeltaTooLarge {
        /// The configured delta.
        delta: f64,
        /// The node's private records.
        records: usize,
        /// `1 / records`.
        bound: f64,
    },

    /// A numeric argument to a privacy function is out of its allowed range (for example a
    /// negative or NaN `rho`, a zero `sigma`, a non-finite sensitivity).
    #[error("invalid {what} = {value} in {location}: expected {expected}")]
    InvalidParameter {
        /// The parameter's name.
        what: &'static str,
        /// The rejected value.
        value: f64,
        /// The function that rejected it.
        location: &'static str,
        /// What a valid value looks like.
        expected: &'static str,
    },

    /// The data handed to a release has the wrong shape: it must be a non-empty row-major
    /// `queries x classes` matrix with `classes > 0`.
    #[error(
        "cannot release {len} values as rows of {classes} classes in {location}: \
         pass a non-empty row-major queries x classes matrix (len a multiple of classes > 0)"
    )]
    InvalidShape {
        /// Number of values passed.
        len: usize,
        /// Row width passed.
        classes: usize,
        /// The function that rejected it.
        location: &'static str,
    },

    /// An input value is NaN or infinite; the mechanism's guarantee only covers finite
    /// inputs, so nothing is released.
    #[error(
        "value #{index} ({value}) to release is not finite in {location}: \
         the teacher probability sums must be finite; check the teachers' outputs"
    )]
    NonFiniteInput {
        /// Position of the first offending value.
        index: usize,
        /// The offending value.
        value: f64,
        /// The function that rejected it.
        location: &'static str,
    },

    /// OpenDP refused to build a measurement, evaluate a privacy map, or draw noise.
    #[error(
        "OpenDP failed while {action}: {message}; the parameters are outside what OpenDP can \
         account for safely, so nothing was released"
    )]
    OpenDp {
        /// What we asked OpenDP to do.
        action: &'static str,
        /// OpenDP's error variant and message.
        message: String,
    },

    /// Secure aggregation's distributed noise cannot be set up as configured (no honest node
    /// left in the sum, a noise share too small for the analysis, a count out of range).
    #[error("secure aggregation noise: {0}")]
    Distributed(String),

    /// A bisection over OpenDP's maps could not bracket its target (the parameters are so
    /// extreme that no finite answer exists in `f64`).
    #[error(
        "could not find {what} by bisection over OpenDP's privacy map: {detail}; \
         choose less extreme parameters"
    )]
    NoSolution {
        /// What was being searched for.
        what: &'static str,
        /// Why the search gave up.
        detail: String,
    },

    /// The release would push the node's total privacy loss over its budget. Nothing was
    /// charged and nothing may be sent; the node must stop answering queries.
    #[error(
        "privacy budget exhausted: spent epsilon {spent_epsilon}, this release would bring it \
         to {would_be_epsilon} > budget {budget_epsilon}; the release was refused and nothing \
         was sent (raise the budget in the node config only if the data owner agrees)"
    )]
    BudgetExceeded {
        /// Epsilon already spent (before this release), at the budget's delta.
        spent_epsilon: f64,
        /// Epsilon the node would have spent had this release been charged.
        would_be_epsilon: f64,
        /// The budget's epsilon.
        budget_epsilon: f64,
    },

    /// The ledger file was created with a different budget than the one now configured.
    /// Budgets are fixed for a ledger's life so that changing the config cannot silently
    /// reset or relax the accounting.
    #[error(
        "privacy ledger {path} was created with budget (epsilon {stored_epsilon}, delta \
         {stored_delta}) but the config now says (epsilon {configured_epsilon}, delta \
         {configured_delta}); restore the original budget in the config (a new ledger file \
         would forget the privacy already spent)"
    )]
    BudgetMismatch {
        /// The ledger file.
        path: PathBuf,
        /// Epsilon stored in the ledger.
        stored_epsilon: f64,
        /// Delta stored in the ledger.
        stored_delta: f64,
        /// Epsilon in the configuration.
        configured_epsilon: f64,
        /// Delta in the configuration.
        configured_delta: f64,
    },

    /// The ledger file accounts for other private data than the node now holds (their
    /// fingerprints differ): its spending does not cover these records, and starting this
    /// data afresh in it would mix two accounts.
    #[error(
        "privacy ledger {path} accounts for other private data (fingerprint {stored}) than \
         this node's (fingerprint {data}); use the ledger kept for this data (by default next \
         to the private file), or, if the data changed on purpose, a new ledger file: the \
         budget then starts afresh for data whose old version was already released"
    )]
    LedgerForOtherData {
        /// The ledger file.
        path: PathBuf,
        /// The fingerprint stored in the ledger.
        stored: String,
        /// The fingerprint of the node's private data now.
        data: String,
    },

    /// A noiseless run (`epsilon = inf` without a fixed sigma) was started over a ledger that
    /// has already charged private releases of this data: its labels would release the same
    /// records again, exactly.
    #[error(
        "privacy ledger {path} has already charged rho {rho} for private releases of this \
         data; a noiseless run (epsilon = inf) over it would release the same records without \
         noise. Keep the finite budget, or point [privacy] ledger elsewhere only for data that \
         has never been released"
    )]
    NoiselessOverSpent {
        /// The ledger file.
        path: PathBuf,
        /// The rho it has charged.
        rho: f64,
    },

    /// SQLite failed while reading or writing the ledger.
    #[error(
        "privacy ledger {path}: SQLite failed to {action}: {source}; check that the file is \
         writable, not on a full disk and not locked by another node process"
    )]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },

    /// The ledger file holds something this code did not write (an unknown schema version, a
    /// negative or NaN `rho`, an out-of-range integer).
    #[error(
        "privacy ledger {path} is corrupt or from another version: {detail}; keep the file for \
         audit and do not release anything until it is repaired"
    )]
    CorruptLedger {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

impl PrivacyError {
    /// Wraps an OpenDP error, keeping its variant and its message (OpenDP's `Display` shows
    /// only the variant).
    pub(crate) fn opendp(action: &'static str, error: opendp::error::Error) -> PrivacyError {
        let message = match &error.message {
            Some(message) => format!("{:?}: {message}", error.variant),
            None => format!("{:?}", error.variant),
        };
        PrivacyError::OpenDp { action, message }
    }
}
