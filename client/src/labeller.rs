//! What a node sends for a round's queries: its student's probabilities (non-private baseline),
//! or the differentially private sum of its teacher ensemble's votes.
//!
//! In private mode the order of operations is fixed by [`crate::privacy::private_release`]:
//! price the release with OpenDP's map, charge the ledger durably, and only then draw the noise.
//! The session sends the labels only after this module returns them.

use fd_protocol::{PrivacyReceipt, SoftLabels};
use tracing::info;

use crate::ensemble::TeacherEnsemble;
use crate::model::ModelError;
use crate::privacy::{
    self, Budget, MECHANISM, PRIVACY_UNIT, PrivacyError, PrivacyLedger, private_release,
    release_sensitivity, rho_for, sigma_for_rho,
};
use crate::train::Learner;

/// Why labelling failed.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The privacy machinery failed (other than an exhausted budget, which is an outcome).
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

/// The result of labelling a round's queries.
#[derive(Debug)]
pub enum Labels {
    /// Labels to send, with their receipt in private mode.
    Release(SoftLabels, Option<PrivacyReceipt>),
    /// The budget cannot pay for this release: nothing was drawn, nothing may be sent.
    BudgetSpent(String),
}

/// The teacher ensemble and everything that prices its releases.
#[derive(Debug)]
pub struct PrivateLabeller {
    /// The teachers.
    pub ensemble: TeacherEnsemble,
    /// The ledger; `None` when the budget is infinite (no noise, nothing to account).
    pub ledger: Option<PrivacyLedger>,
    /// The node's budget.
    pub budget: Budget,
    /// Fixed noise per release, or `None` to derive it from the budget and the plan.
    pub fixed_sigma: Option<f64>,
    /// Teacher steps before the first release.
    pub local_steps: usize,
    /// Teacher steps per round once a target exists.
    pub steps_per_round: usize,
    /// Noise in use (set at the first release).
    pub sigma: Option<f64>,
    /// Post-processing floor, in noise standard deviations: released rows are
    /// `max(v - clamp_floor * sigma, 0)`, renormalised.
    pub clamp_floor: f64,
}

/// How a node labels public records.
#[derive(Debug)]
pub enum Labeller {
    /// Non-private: the student's own probabilities.
    Student,
    /// Subsample-and-aggregate with Gaussian noise.
    Private(Box<PrivateLabeller>),
}

impl Labeller {
    /// The privacy statement for logs and reports.
    pub fn statement(&self) -> String {
        match self {
            Labeller::Student => crate::node::NON_PRIVATE.to_owned(),
            Labeller::Private(p) if p.budget.epsilon.is_infinite() && p.fixed_sigma.is_none() => {
                format!(
                    "none (epsilon = inf: {} teachers' summed votes released without noise)",
                    p.ensemble.config().teachers
                )
            }
            Labeller::Private(p) => format!(
                "({}, {})-differential privacy per {PRIVACY_UNIT} of this node's private data \
                 ({MECHANISM}, {} teachers)",
                p.budget.epsilon,
                p.budget.delta,
                p.ensemble.config().teachers
            ),
        }
    }

    /// Epsilon and zCDP rho spent so far, if private.
    pub fn spent(&self) -> Result<Option<(f64, f64)>, PrivacyError> {
        match self {
            Labeller::Private(p) => match &p.ledger {
                Some(l) => Ok(Some((l.epsilon_spent()?, l.rho_spent()?))),
                None => Ok(None),
            },
            Labeller::Student => Ok(None),
        }
    }

    /// Trains the teachers for this round (private mode) and labels `query_ids`.
    ///
    /// `planned_queries` is the coordinator's plan for the whole run (from Welcome); with no
    /// fixed sigma, the noise is set so that the planned releases spend exactly the budget.
    pub fn label_round(
        &mut self,
        learner: &Learner,
        round: u32,
        rounds: u32,
        query_ids: &[u32],
        planned_queries: u64,
    ) -> Result<Labels, LabelError> {
        let p = match self {
            Labeller::Student => return Ok(Labels::Release(learner.label(query_ids)?, None)),
            Labeller::Private(p) => p,
        };
        let target = learner.target();
        let (steps, alpha) = match &target {
            None => (p.local_steps, 1.0),
            Some(_) => (p.steps_per_round, learner.config().alpha(round, rounds)),
        };
        p.ensemble
            .train(steps, alpha, target.as_ref().map(|(x, y)| (x, y)))?;
        let rows = learner.public_rows(query_ids)?;
        let sums = p.ensemble.vote_sums(&rows)?;
        let classes = p.ensemble.config().classes;
        let m = query_ids.len();
        let Some(ledger) = p.ledger.as_mut() else {
            // Infinite budget: normalise the votes, no noise, nothing to account.
            let probs = privacy::to_simplex(&sums, classes, 0.0);
            return Ok(Labels::Release(
                soft_labels(query_ids, classes, probs),
                None,
            ));
        };
        let sigma = match (p.sigma, p.fixed_sigma) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                let rho_total = rho_for(p.budget)?;
                let planned = planned_queries.max(m as u64) as f64;
                // A hair under the even share, so that float rounding in the sum of the planned
                // releases can never push the last one over the budget.
                let rho_release = rho_total * m as f64 / planned * (1.0 - 1e-9);
                let s = sigma_for_rho(m * classes, release_sensitivity(m), rho_release)?;
                info!(
                    sigma = s,
                    epsilon = p.budget.epsilon,
                    delta = p.budget.delta,
                    rho_total,
                    planned_queries,
                    teachers = p.ensemble.config().teachers,
                    "noise chosen: the budget's rho spread evenly over the planned queries"
                );
                s
            }
        };
        p.sigma = Some(sigma);
        let floor = p.clamp_floor * sigma;
        match private_release(ledger, round, &sums, classes, sigma, floor) {
            Ok((probs, r)) => {
                let receipt = PrivacyReceipt {
                    mechanism: MECHANISM.into(),
                    unit: PRIVACY_UNIT.into(),
                    sigma: r.sigma,
                    sensitivity: r.sensitivity,
                    rho: r.rho,
                    rho_total: r.rho_total,
                    epsilon_total: r.epsilon_total,
                    delta: r.delta,
                };
                info!(
                    round,
                    rho = r.rho,
                    epsilon_total = r.epsilon_total,
                    delta = r.delta,
                    "release charged to the ledger"
                );
                Ok(Labels::Release(
                    soft_labels(query_ids, classes, probs),
                    Some(receipt),
                ))
            }
            Err(e @ PrivacyError::BudgetExceeded { .. }) => Ok(Labels::BudgetSpent(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

fn soft_labels(query_ids: &[u32], classes: usize, probs: Vec<f32>) -> SoftLabels {
    SoftLabels {
        classes: classes as u16,
        query_ids: query_ids.to_vec(),
        probs,
    }
}
