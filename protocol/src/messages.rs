//! Message types exchanged between nodes and the coordinator.

use serde::{Deserialize, Serialize};

/// Every message of protocol version [`crate::PROTOCOL_VERSION`].
///
/// A session is: node sends [`Message::Hello`]; coordinator answers [`Message::Welcome`] or
/// [`Message::Reject`]; then, for each round, the coordinator sends [`Message::RoundOpen`], the
/// node answers [`Message::Contribution`] and the coordinator sends [`Message::RoundClosed`];
/// finally [`Message::Finished`]. Either side may send [`Message::Error`] and close. A
/// contribution the coordinator cannot accept is answered with [`Message::Refused`], and the
/// session goes on.
///
/// In a secure-aggregation round ([`RoundOpen::secure`] set) the node answers with
/// [`Message::KeyAdvert`] instead of a contribution, and the round runs the four steps of
/// pairwise-masking secure aggregation (Bonawitz et al., CCS 2017): the coordinator relays the
/// [`Message::Roster`] of signed adverts, the nodes send [`Message::KeyShares`] and get their
/// [`Message::Inbox`], then send [`Message::Masked`] vectors, and the survivors answer
/// [`Message::Unmask`] with [`Message::Unmasked`]. The coordinator learns only the sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Node -> coordinator: what the node is ready to do.
    Hello(Hello),
    /// Coordinator -> node: admitted; the node is known by the name in its certificate.
    Welcome(Welcome),
    /// Coordinator -> node: not admitted, with the reason.
    Reject {
        /// Why the node was refused, for a person to read.
        reason: String,
    },
    /// Coordinator -> node: a round starts.
    RoundOpen(RoundOpen),
    /// Node -> coordinator: the node's soft labels for the round's queries.
    Contribution(Contribution),
    /// Coordinator -> node: the round is aggregated.
    RoundClosed(RoundClosed),
    /// Coordinator -> node: the federation is over; the final target is attached.
    Finished {
        /// Rounds completed.
        rounds: u32,
        /// The final global distillation target.
        target: SoftLabels,
    },
    /// Either side: something went wrong; the sender closes after this.
    Error {
        /// What went wrong, for a person to read.
        message: String,
    },
    /// Node -> coordinator: the node stops contributing (for example its privacy budget is
    /// spent) but the federation should carry on without it.
    Leave {
        /// Why the node leaves.
        reason: String,
    },
    /// Coordinator -> node: one contribution was not accepted (late, duplicate, malformed, ...);
    /// the node stays in the federation and is asked again next round.
    Refused {
        /// The round the refused contribution named.
        round: u32,
        /// What was wrong, for a person to read.
        reason: String,
    },
    /// Node -> coordinator (secure round, step 1): the node's public keys for the round,
    /// signed with its certificate's key, and the certificate, for the other nodes to check.
    KeyAdvert {
        /// The round.
        round: u32,
        /// The signed keys.
        advert: fd_secagg::KeyAdvert,
        /// The node's certificate (DER), which the other nodes verify against the federation
        /// CA before they trust the advert's signature.
        certificate: Vec<u8>,
    },
    /// Coordinator -> node (secure round, step 2): every advert that arrived, with its
    /// certificate, sorted by node number.
    Roster {
        /// The round.
        round: u32,
        /// The adverts.
        adverts: Vec<SignedAdvert>,
    },
    /// Node -> coordinator (step 2): this node's shares of its secrets, one encrypted bundle for
    /// each node of the roster.
    KeyShares {
        /// The round.
        round: u32,
        /// The encrypted shares.
        shares: Vec<fd_secagg::EncryptedShares>,
    },
    /// Coordinator -> node (step 3): the shares other nodes encrypted for this node.
    Inbox {
        /// The round.
        round: u32,
        /// The encrypted shares addressed to this node.
        shares: Vec<fd_secagg::EncryptedShares>,
    },
    /// Node -> coordinator (step 3): the node's noisy vote counts, masked.
    Masked(Masked),
    /// Coordinator -> node (step 4): the nodes whose masked vectors arrived.
    Unmask {
        /// The round.
        round: u32,
        /// The survivors' numbers.
        survivors: Vec<u32>,
    },
    /// Node -> coordinator (step 4): the shares the node reveals to unmask the sum.
    Unmasked {
        /// The round.
        round: u32,
        /// The revealed shares.
        response: fd_secagg::UnmaskResponse,
    },
}

/// A node's key advert as the coordinator relays it: with the certificate that vouches for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedAdvert {
    /// The signed keys.
    pub advert: fd_secagg::KeyAdvert,
    /// The node's certificate (DER).
    pub certificate: Vec<u8>,
}

/// What a secure-aggregation round needs beyond [`RoundOpen`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureRound {
    /// Names the federation run; signed into every key advert and mixed into every derived key.
    pub context: [u8; 32],
    /// This node's number in the round's roster (1 to `roster`).
    pub node: u32,
    /// Nodes asked this round.
    pub roster: u32,
    /// Shares that rebuild a node's secrets (more than half the roster).
    pub threshold: u32,
    /// The fewest survivors a node helps to unmask (`roster - dropouts`).
    pub min_survivors: u32,
}

/// A node's masked contribution to a secure round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Masked {
    /// The round.
    pub round: u32,
    /// The masked vector: per query and class, the node's vote count plus its noise share,
    /// modulo 2^32, plus masks that cancel only in the sum.
    pub masked: fd_secagg::MaskedInput,
    /// Teachers whose votes the node counts (public: it follows from the declared record
    /// count), so the coordinator knows the sum's vote mass.
    pub teachers: u32,
    /// The privacy guarantees of this release.
    pub receipt: Option<PrivacyReceipt>,
}

impl Message {
    /// Short name of the variant, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Reject { .. } => "Reject",
            Message::RoundOpen(_) => "RoundOpen",
            Message::Contribution(_) => "Contribution",
            Message::RoundClosed(_) => "RoundClosed",
            Message::Finished { .. } => "Finished",
            Message::Error { .. } => "Error",
            Message::Leave { .. } => "Leave",
            Message::Refused { .. } => "Refused",
            Message::KeyAdvert { .. } => "KeyAdvert",
            Message::Roster { .. } => "Roster",
            Message::KeyShares { .. } => "KeyShares",
            Message::Inbox { .. } => "Inbox",
            Message::Masked(_) => "Masked",
            Message::Unmask { .. } => "Unmask",
            Message::Unmasked { .. } => "Unmasked",
        }
    }
}

/// The node's opening message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Number of records in the node's copy of the public reference set.
    pub public_records: u32,
    /// Number of classes the node's model predicts.
    pub classes: u16,
    /// Records in the node's private training split (declared; used for reporting only).
    pub private_records: u32,
    /// SHA-256 of the node's public CSV file, byte for byte (what `sha256sum` prints), so a
    /// coordinator that names the public set refuses a node holding another file of the same
    /// length. `None` from nodes without a file (the simulator's in-memory nodes).
    pub public_sha256: Option<[u8; 32]>,
    /// Whether the node releases differentially private labels (every contribution with a
    /// receipt): a federation that requires privacy refuses a node that does not at once,
    /// instead of asking it for a round it will never answer.
    pub private: bool,
}

/// The coordinator's admission message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The node's identity, taken from its certificate.
    pub node: String,
    /// Name of the federation.
    pub federation: String,
    /// Planned number of rounds.
    pub rounds: u32,
    /// Whether every contribution must carry a differential-privacy receipt.
    pub require_privacy: bool,
    /// Public-record labels the coordinator plans to ask of each node over the whole run (the
    /// sum of the query counts of all rounds), so a node can spread its privacy budget.
    pub planned_queries: u64,
}

/// A round starts: label these public records, and distil from the target so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundOpen {
    /// Round number, from 0.
    pub round: u32,
    /// Planned number of rounds.
    pub rounds: u32,
    /// Public records (row indices) to label this round.
    pub query_ids: Vec<u32>,
    /// Global distillation target aggregated in earlier rounds (empty in round 0).
    pub target: SoftLabels,
    /// Set when the round runs secure aggregation: the node then answers with
    /// [`Message::KeyAdvert`], not a [`Contribution`].
    pub secure: Option<SecureRound>,
}

/// A node's answer to [`RoundOpen`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The round this answers.
    pub round: u32,
    /// One probability vector per queried record, in the order of the round's query ids.
    pub labels: SoftLabels,
    /// The differential-privacy guarantee of this release; `None` in non-private mode.
    pub receipt: Option<PrivacyReceipt>,
}

/// Proof of what a release cost in privacy, as the node's accountant charged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReceipt {
    /// Mechanism name, e.g. `"subsample-and-aggregate+gaussian"`.
    pub mechanism: String,
    /// Privacy unit, e.g. `"record"`.
    pub unit: String,
    /// Standard deviation of the Gaussian noise.
    pub sigma: f64,
    /// L2 sensitivity of the released vector.
    pub sensitivity: f64,
    /// zCDP cost of this release.
    pub rho: f64,
    /// Cumulative zCDP cost of all the node's releases so far, this one included.
    pub rho_total: f64,
    /// Cumulative epsilon at `delta`.
    pub epsilon_total: f64,
    /// The delta at which `epsilon_total` holds.
    pub delta: f64,
    /// Secure aggregation only: the cumulative epsilon (at `delta`) that holds from this node's
    /// own noise share alone, if every other node colludes with the coordinator. `rho` and
    /// `epsilon_total` are then the guarantee of the sum, under the federation's assumption
    /// on colluders and dropouts.
    pub floor_epsilon_total: Option<f64>,
}

/// The coordinator's summary of a closed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundClosed {
    /// The round that closed.
    pub round: u32,
    /// Contributions accepted into the aggregate.
    pub accepted: u32,
    /// Nodes that were asked.
    pub asked: u32,
}

/// Soft labels for a set of public records: `probs` holds `query_ids.len() * classes` values,
/// row-major, one probability vector per query.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SoftLabels {
    /// Number of classes (row width).
    pub classes: u16,
    /// Public record indices, one per row.
    pub query_ids: Vec<u32>,
    /// Row-major probabilities.
    pub probs: Vec<f32>,
}

/// Why a set of soft labels is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    /// `probs` does not hold `query_ids.len() * classes` values.
    #[error(
        "shape mismatch: {queries} queries x {classes} classes needs {expected} values, got {got}"
    )]
    Shape {
        /// Number of query ids.
        queries: usize,
        /// Declared classes.
        classes: usize,
        /// Expected number of values.
        expected: usize,
        /// Actual number of values.
        got: usize,
    },
    /// The declared number of classes is not the federation's.
    #[error("expected {expected} classes, got {got}")]
    Classes {
        /// The federation's classes.
        expected: usize,
        /// Declared classes.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("query {query}: value {index} is not finite")]
    NonFinite {
        /// Query id of the offending row.
        query: u32,
        /// Class index within the row.
        index: usize,
    },
    /// A row is not a probability vector (a value outside [0, 1] or a sum far from 1).
    #[error("query {query}: not a probability vector (min {min}, sum {sum})")]
    OffSimplex {
        /// Query id of the offending row.
        query: u32,
        /// Smallest value in the row.
        min: f32,
        /// Row sum.
        sum: f32,
    },
    /// The query ids differ from those the round asked for.
    #[error("query ids differ from those asked (first difference at position {position})")]
    QueryIds {
        /// Position of the first difference (or the shorter length).
        position: usize,
    },
}

/// Tolerance on a row's sum and on values below zero for [`SoftLabels::validate`].
pub const SIMPLEX_TOLERANCE: f32 = 1e-3;

/// Index of the largest of `values`: the first on ties; a NaN never wins; 0 when there is no
/// value or every value is NaN. The one arg-max of the workspace: nodes, the coordinator and
/// the simulator rank classes with it.
pub fn arg_max<T: PartialOrd + Copy>(values: impl IntoIterator<Item = T>) -> usize {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in values.into_iter().enumerate() {
        // `v == v` is false only for NaN.
        #[allow(clippy::eq_op)]
        let comparable = v == v;
        if comparable && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

impl SoftLabels {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.query_ids.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.query_ids.is_empty()
    }

    /// The probability vector of row `i`.
    ///
    /// # Panics
    /// If `i` is out of range or the labels were not validated; callers validate first.
    pub fn row(&self, i: usize) -> &[f32] {
        let c = self.classes as usize;
        &self.probs[i * c..(i + 1) * c]
    }

    /// The class row `i` ranks first ([`arg_max`] of [`SoftLabels::row`]).
    ///
    /// # Panics
    /// As [`SoftLabels::row`].
    pub fn top_class(&self, i: usize) -> usize {
        arg_max(self.row(i).iter().copied())
    }

    /// Checks shape, class count, finiteness and that every row lies on the probability simplex
    /// (within [`SIMPLEX_TOLERANCE`]).
    pub fn validate(&self, classes: usize) -> Result<(), LabelError> {
        let c = self.classes as usize;
        if c != classes {
            return Err(LabelError::Classes {
                expected: classes,
                got: c,
            });
        }
        let expected = self.query_ids.len().saturating_mul(c);
        if self.probs.len() != expected {
            return Err(LabelError::Shape {
                queries: self.query_ids.len(),
                classes: c,
                expected,
                got: self.probs.len(),
            });
        }
        for (r, &query) in self.query_ids.iter().enumerate() {
            let row = self.row(r);
            if let Some(index) = row.iter().position(|v| !v.is_finite()) {
                return Err(LabelError::NonFinite { query, index });
            }
            let sum: f32 = row.iter().sum();
            let min = row.iter().copied().fold(f32::INFINITY, f32::min);
            if min < -SIMPLEX_TOLERANCE
                || row.iter().any(|&v| v > 1.0 + SIMPLEX_TOLERANCE)
                || (sum - 1.0).abs() > SIMPLEX_TOLERANCE
            {
                return Err(LabelError::OffSimplex { query, min, sum });
            }
        }
        Ok(())
    }

    /// Checks that the rows are exactly the queries asked for, in order.
    pub fn check_queries(&self, asked: &[u32]) -> Result<(), LabelError> {
        match self.query_ids.iter().zip(asked).position(|(a, b)| a != b) {
            Some(position) => Err(LabelError::QueryIds { position }),
            None if self.query_ids.len() != asked.len() => Err(LabelError::QueryIds {
                position: self.query_ids.len().min(asked.len()),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_max_takes_the_first_of_ties_and_never_a_nan() {
        assert_eq!(arg_max([0.1f32, 0.7, 0.7, 0.2]), 1);
        assert_eq!(arg_max([f64::NAN, 0.3, 0.5]), 2);
        assert_eq!(arg_max([-2.0f64, f64::NAN, -1.0]), 2);
        assert_eq!(arg_max(Vec::<f32>::new()), 0);
        assert_eq!(arg_max([f32::NAN, f32::NAN]), 0);
    }

    fn labels(rows: &[&[f32]]) -> SoftLabels {
        SoftLabels {
            classes: rows[0].len() as u16,
            query_ids: (0..rows.len() as u32).collect(),
            probs: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn valid_rows_pass() {
        assert_eq!(labels(&[&[0.25, 0.75], &[1.0, 0.0]]).validate(2), Ok(()));
    }

    #[test]
    fn each_defect_is_named() {
        let mut l = labels(&[&[0.5, 0.5]]);
        assert!(matches!(l.validate(3), Err(LabelError::Classes { .. })));
        l.probs.push(0.0);
        assert!(matches!(l.validate(2), Err(LabelError::Shape { .. })));
        let nan = labels(&[&[f32::NAN, 1.0]]);
        assert!(matches!(nan.validate(2), Err(LabelError::NonFinite { .. })));
        let sum = labels(&[&[0.6, 0.6]]);
        assert!(matches!(
            sum.validate(2),
            Err(LabelError::OffSimplex { .. })
        ));
        let neg = labels(&[&[-0.5, 1.5]]);
        assert!(matches!(
            neg.validate(2),
            Err(LabelError::OffSimplex { .. })
        ));
    }

    #[test]
    fn query_ids_must_match_exactly() {
        let l = labels(&[&[0.5, 0.5], &[0.5, 0.5]]);
        assert_eq!(l.check_queries(&[0, 1]), Ok(()));
        assert_eq!(
            l.check_queries(&[0, 2]),
            Err(LabelError::QueryIds { position: 1 })
        );
        assert_eq!(
            l.check_queries(&[0]),
            Err(LabelError::QueryIds { position: 1 })
        );
    }
}
