//! What a node sends for a round's queries: its student's probabilities (non-private baseline),
//! or the differentially private sum of its teacher ensemble's votes.
//!
//! In private mode the order of operations is fixed by [`crate::privacy::private_release`]:
//! price the release with OpenDP's map, charge the ledger durably, and only then draw the noise.
//! The session sends the labels only after this module returns them.

use fd_protocol::{PrivacyReceipt, SoftLabels};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::distill::Learner;
use crate::distill::ModelError;
use crate::distill::target::{balance_classes, sharpen_private_target};
use crate::privacy::distributed::{DistributedPlan, secure_release, share_sigma_for};
use crate::privacy::plan::{Plan, PlanInput, plan, release_rho_target, release_sigma, wanted_snr};
use crate::privacy::teachers::{TeacherEnsemble, Votes};
use crate::privacy::{
    Budget, MECHANISM, NON_PRIVATE, PRIVACY_UNIT, PrivacyError, PrivacyLedger, Projection,
    private_release,
};

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

/// How noisy vote sums become the probability rows a private node releases (post-processing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseRows {
    /// Affine in the votes with one scale for all rows (`privacy::Projection::vote_mass`).
    #[default]
    VoteMass,
    /// Clamped and renormalised row by row.
    Normalised,
}

/// What a node answers a round with: the result of labelling its queries.
#[derive(Debug)]
pub enum Answer {
    /// Labels to send, with their receipt in private mode.
    Release(SoftLabels, Option<PrivacyReceipt>),
    /// The budget cannot pay for this release: nothing was drawn, nothing may be sent.
    BudgetSpent(String),
    /// The planner predicts the release would be noise (below `privacy.min_snr`), so the
    /// node declines to spend: nothing was drawn or charged, nothing may be sent.
    Declined(String),
    /// A secure-aggregation release: the node's integer vote counts plus its noise share (one
    /// per query and class, row-major), to be masked before they leave.
    Secure {
        /// The noisy counts.
        counts: Vec<i64>,
        /// Teachers voting (public, from the record count).
        teachers: u32,
        /// The receipt: the sum's guarantee and the floor.
        receipt: Option<PrivacyReceipt>,
    },
}

/// What a node needs to know of a secure-aggregation round to price its noise share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureTerms {
    /// Nodes asked in the round.
    pub roster: usize,
    /// The fewest survivors the node helps to unmask.
    pub min_survivors: usize,
    /// Colluders the node assumes (its own setting, not the coordinator's word).
    pub colluders: usize,
}

/// Mechanism name of secure-aggregation releases.
pub const SECURE_MECHANISM: &str = "subsample-and-aggregate+distributed-discrete-gaussian(secagg)";

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
    /// With [`ReleaseRows::Normalised`], the post-processing floor in noise standard
    /// deviations: released rows are `max(v - clamp_floor * sigma, 0)`, renormalised.
    pub clamp_floor: f64,
    /// Soft or hard teacher votes.
    pub votes: Votes,
    /// How noisy vote sums become released rows.
    pub rows: ReleaseRows,
    /// Whether the student's target goes through [`balance_classes`] first.
    pub balance: bool,
    /// Below this predicted signal-to-noise ratio the node declines to release anything
    /// (`privacy.min_snr`); `None`: it always releases.
    pub min_snr: Option<f64>,
    /// Below this predicted ratio the node's student does not trust the target and keeps the
    /// local-only student (`privacy.trust_snr`).
    pub trust_snr: f64,
    /// The plan, made before the first release.
    pub plan: Option<Plan>,
    /// The last release, kept so that a round asked again (after a lost contribution or a
    /// coordinator restart) gets the same labels back: re-sending a release is
    /// post-processing and costs nothing, where drawing fresh noise would be charged again.
    pub last_release: Option<(u32, SoftLabels, Option<PrivacyReceipt>)>,
    /// Secure releases only: each teacher votes on at most this many of a release's queries
    /// (`privacy.votes_per_teacher`), so the release's sensitivity is that of this many
    /// queries however many it answers. `None`: every teacher votes on every query.
    pub votes_per_teacher: Option<usize>,
}

/// The post-processing of a release's noisy sums (noise `sigma`; 0 when noiseless).
fn projection(
    rows: ReleaseRows,
    teachers: usize,
    clamp_floor: f64,
    classes: usize,
    sigma: f64,
) -> Projection {
    match rows {
        ReleaseRows::VoteMass => Projection::vote_mass(teachers, classes, sigma),
        ReleaseRows::Normalised => Projection {
            floor: clamp_floor * sigma,
            full_mass: None,
        },
    }
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
            Labeller::Student => NON_PRIVATE.to_owned(),
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

    /// The private labeller, if the node runs one.
    pub fn private(&self) -> Option<&PrivateLabeller> {
        match self {
            Labeller::Private(p) => Some(p),
            Labeller::Student => None,
        }
    }

    /// The privacy unit of this labeller's releases: [`PRIVACY_UNIT`] when they are noised
    /// and accounted, otherwise `"none"`. The one place this rule is written.
    pub fn unit(&self) -> &'static str {
        match self.private() {
            Some(p) if p.ledger.is_some() => PRIVACY_UNIT,
            _ => "none",
        }
    }

    /// The target the node's student learns from: the global target itself, or for a
    /// private node its sharpened arg-max ([`sharpen_private_target`]).
    pub fn student_target(&self, target: &SoftLabels) -> SoftLabels {
        match self {
            Labeller::Student => target.clone(),
            Labeller::Private(p) if p.balance => sharpen_private_target(&balance_classes(target)),
            Labeller::Private(_) => sharpen_private_target(target),
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

    /// The floor epsilon of secure-aggregation releases (what holds from this node's own noise
    /// alone), if it made any.
    pub fn floor_spent(&self) -> Result<Option<f64>, PrivacyError> {
        match self.private().and_then(|p| p.ledger.as_ref()) {
            Some(l) => l.floor_epsilon_spent(),
            None => Ok(None),
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
    ) -> Result<Answer, LabelError> {
        let p = match self {
            Labeller::Student => return Ok(Answer::Release(learner.label(query_ids)?, None)),
            Labeller::Private(p) => p,
        };
        if let Some((r, labels, receipt)) = &p.last_release
            && *r == round
            && labels.query_ids == query_ids
        {
            info!(
                round,
                "round asked again: re-sending its release, already paid for"
            );
            return Ok(Answer::Release(labels.clone(), receipt.clone()));
        }
        let labels = p.release(learner, round, rounds, query_ids, planned_queries)?;
        if let Answer::Release(l, receipt) = &labels {
            p.last_release = Some((round, l.clone(), receipt.clone()));
        }
        Ok(labels)
    }
}

impl Labeller {
    /// Trains the teachers for this round and releases their integer vote counts for
    /// `query_ids` (hard votes, each teacher on at most `votes_per_teacher` of them) with this
    /// node's discrete Gaussian share of the noise of a securely aggregated sum, scaled so that
    /// the honest survivors' shares spend the budget evenly over the planned queries.
    pub fn label_secure_round(
        &mut self,
        learner: &Learner,
        round: u32,
        rounds: u32,
        query_ids: &[u32],
        planned_queries: u64,
        terms: SecureTerms,
    ) -> Result<Answer, LabelError> {
        let Labeller::Private(p) = self else {
            return Err(LabelError::Privacy(PrivacyError::Distributed(
                "secure aggregation needs integer vote counts: set [privacy] mode = \"shards\""
                    .into(),
            )));
        };
        // Every round draws fresh noise, charged, even for a round asked again (after a
        // coordinator restart): the same noisy counts masked into two sums over different
        // survivors would let the coordinator subtract one sum from the other and see one
        // node's counts under its own share of the noise alone.
        let m = query_ids.len();
        // Votes each teacher may cast in this release: what one record can move.
        let cap = p.votes_per_teacher.map(|k| k.clamp(1, m.max(1)));
        let sums = p.train_and_vote(learner, round, rounds, query_ids, Votes::Hard, cap)?;
        let per_teacher = cap.unwrap_or(m);
        // Hard votes are counts; `as` cannot lose anything below 2^53.
        let counts: Vec<i64> = sums.iter().map(|v| v.round() as i64).collect();
        let teachers = p.ensemble.config().teachers as u32;
        let Some(ledger) = p.ledger.as_mut() else {
            return Ok(Answer::Secure {
                counts,
                teachers,
                receipt: None,
            });
        };
        let plan = DistributedPlan {
            nodes: terms.roster,
            colluders: terms.colluders,
            dropouts: terms.roster.saturating_sub(terms.min_survivors),
        };
        // Priced every round: the roster (so the honest shares) can change as nodes come and go.
        let share_sigma = match p.fixed_sigma {
            Some(s) => s,
            None => {
                let rho = release_rho_target(p.budget, planned_queries, m)?;
                let s = share_sigma_for(&plan, counts.len(), per_teacher, rho)?;
                info!(
                    share_sigma = s,
                    honest = plan.honest()?,
                    epsilon = p.budget.epsilon,
                    planned_queries,
                    "noise share chosen: the honest survivors' shares spend the budget's rho \
                     evenly over the planned queries"
                );
                s
            }
        };
        p.sigma = Some(share_sigma);
        match secure_release(ledger, round, &counts, m, per_teacher, &plan, share_sigma) {
            Ok((noisy, r)) => {
                info!(
                    round,
                    rho = r.rho,
                    epsilon_total = r.epsilon_total,
                    floor_epsilon_total = r.floor_epsilon_total,
                    "secure release charged to the ledger"
                );
                Ok(Answer::Secure {
                    counts: noisy,
                    teachers,
                    receipt: Some(receipt(SECURE_MECHANISM, &r)),
                })
            }
            Err(e @ PrivacyError::BudgetExceeded { .. }) => Ok(Answer::BudgetSpent(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

impl PrivateLabeller {
    /// Trains the teachers (as [`Self::release`]) and returns their summed votes, or with
    /// `cap` their integer counts with each teacher voting on at most `cap` queries.
    fn train_and_vote(
        &mut self,
        learner: &Learner,
        round: u32,
        rounds: u32,
        query_ids: &[u32],
        votes: Votes,
        cap: Option<usize>,
    ) -> Result<Vec<f64>, LabelError> {
        let target = learner.target();
        let (steps, alpha) = match &target {
            None => (self.local_steps, 1.0),
            Some(_) => (self.steps_per_round, learner.config().alpha(round, rounds)),
        };
        self.ensemble
            .train(steps, alpha, target.as_ref().map(|(x, y)| (x, y)))?;
        let rows = learner.public_rows(query_ids)?;
        Ok(match cap {
            Some(cap) => self.ensemble.capped_vote_counts(&rows, cap)?,
            None => self.ensemble.vote_sums(&rows, votes)?,
        })
    }

    /// Trains the teachers and makes a new (charged) release for `query_ids`.
    fn release(
        &mut self,
        learner: &Learner,
        round: u32,
        rounds: u32,
        query_ids: &[u32],
        planned_queries: u64,
    ) -> Result<Answer, LabelError> {
        let votes = self.votes;
        let sums = self.train_and_vote(learner, round, rounds, query_ids, votes, None)?;
        let p = self;
        let classes = p.ensemble.config().classes;
        let m = query_ids.len();
        let (rows_kind, teachers, clamp_floor) =
            (p.rows, p.ensemble.config().teachers, p.clamp_floor);
        let Some(ledger) = p.ledger.as_mut() else {
            // Infinite budget: no noise, nothing to account.
            let probs =
                projection(rows_kind, teachers, clamp_floor, classes, 0.0).apply(&sums, classes);
            return Ok(Answer::Release(
                soft_labels(query_ids, classes, probs),
                None,
            ));
        };
        if p.plan.is_none() && p.fixed_sigma.is_none() {
            let made = plan(
                PlanInput {
                    records: p.ensemble.records(),
                    teachers,
                    classes,
                    budget: p.budget,
                    planned_queries,
                    queries_per_release: m,
                },
                wanted_snr(p.min_snr, p.trust_snr),
            )?;
            let text = made.summary();
            if made.swamped || made.snr < p.trust_snr {
                warn!(planned_queries, "privacy plan: {text}");
            } else {
                info!(planned_queries, "privacy plan: {text}");
            }
            p.plan = Some(made);
        }
        // Every round asks again: a declined node has left, but a round replayed after a
        // reconnect must not slip through.
        if let (Some(plan), Some(min)) = (&p.plan, p.min_snr)
            && plan.snr < min
        {
            return Ok(Answer::Declined(format!(
                "the planned releases would have signal-to-noise {:.2}, below privacy.min_snr \
                 = {min}; nothing was spent",
                plan.snr
            )));
        }
        let sigma = match (p.sigma, p.fixed_sigma) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                let s = release_sigma(p.budget, classes, planned_queries, m)?;
                info!(
                    sigma = s,
                    epsilon = p.budget.epsilon,
                    delta = p.budget.delta,
                    planned_queries,
                    teachers = p.ensemble.config().teachers,
                    "noise chosen: the budget's rho spread evenly over the planned queries"
                );
                s
            }
        };
        p.sigma = Some(sigma);
        let projection = projection(rows_kind, teachers, clamp_floor, classes, sigma);
        match private_release(ledger, round, &sums, classes, sigma, &projection) {
            Ok((probs, r)) => {
                let receipt = receipt(MECHANISM, &r);
                info!(
                    round,
                    rho = r.rho,
                    epsilon_total = r.epsilon_total,
                    delta = r.delta,
                    "release charged to the ledger"
                );
                Ok(Answer::Release(
                    soft_labels(query_ids, classes, probs),
                    Some(receipt),
                ))
            }
            Err(e @ PrivacyError::BudgetExceeded { .. }) => Ok(Answer::BudgetSpent(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

/// The wire receipt of a charge the ledger made, for a release by `mechanism`.
fn receipt(mechanism: &str, r: &crate::privacy::Receipt) -> PrivacyReceipt {
    PrivacyReceipt {
        mechanism: mechanism.into(),
        unit: PRIVACY_UNIT.into(),
        sigma: r.sigma,
        sensitivity: r.sensitivity,
        rho: r.rho,
        rho_total: r.rho_total,
        epsilon_total: r.epsilon_total,
        delta: r.delta,
        floor_epsilon_total: r.floor_epsilon_total,
    }
}

fn soft_labels(query_ids: &[u32], classes: usize, probs: Vec<f32>) -> SoftLabels {
    SoftLabels {
        classes: classes as u16,
        query_ids: query_ids.to_vec(),
        probs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 records on a line, two classes, four nearest-neighbour teachers, 10 public rows, a
    /// budget of epsilon 10, and a ledger in a temporary directory.
    fn fixture(
        fixed_sigma: Option<f64>,
        min_snr: Option<f64>,
    ) -> (Learner, Labeller, tempfile::TempDir) {
        use crate::data::{Labelled, matrix};
        use crate::distill::{LocalTeacherConfig, TrainConfig};
        use crate::privacy::teachers::{EnsembleConfig, TeacherKind};
        let xs: Vec<f32> = (0..40).flat_map(|i| [i as f32 / 10.0, 0.0]).collect();
        let ys: Vec<u32> = (0..40).map(|i| u32::from(i >= 20)).collect();
        let data = Labelled::new(xs.clone(), 2, ys).unwrap();
        let public = matrix(xs[..20].to_vec(), 2).unwrap();
        let training = TrainConfig {
            hidden: vec![4],
            teacher: LocalTeacherConfig {
                enabled: false,
                ..LocalTeacherConfig::default()
            },
            ..TrainConfig::default()
        };
        let learner = Learner::new(training, 2, data.clone(), public).unwrap();
        let ensemble = TeacherEnsemble::new(
            EnsembleConfig {
                kind: TeacherKind::Nearest,
                radius: None,
                teachers: 4,
                hidden: 4,
                inputs: 2,
                classes: 2,
                learning_rate: 0.01,
                batch_size: 4,
                temperature: 1.0,
                seed: 1,
            },
            data.x.clone(),
            data.y.clone(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            epsilon: 10.0,
            delta: 1e-5,
        };
        let labeller = Labeller::Private(Box::new(PrivateLabeller {
            ensemble,
            ledger: Some(
                PrivacyLedger::open(&dir.path().join("l.sqlite"), budget, "data").unwrap(),
            ),
            budget,
            fixed_sigma,
            local_steps: 0,
            steps_per_round: 0,
            sigma: None,
            clamp_floor: 1.0,
            votes: Votes::Soft,
            rows: ReleaseRows::VoteMass,
            balance: true,
            min_snr,
            trust_snr: 0.0,
            plan: None,
            last_release: None,
            votes_per_teacher: None,
        }));
        (learner, labeller, dir)
    }

    fn charges(l: &Labeller) -> usize {
        match l {
            Labeller::Private(p) => p.ledger.as_ref().unwrap().charges().unwrap().len(),
            Labeller::Student => 0,
        }
    }

    /// With `min_snr` above what the planner predicts, the node declines before its first
    /// release: nothing is charged and the plan is kept for its report; below, it releases.
    #[test]
    fn a_node_below_min_snr_declines_without_spending() {
        // Four teachers, two classes: the mean class share is 2 votes against sigma of about
        // 4.1 (epsilon 10, 9 planned queries, 3 a release; `plan::release_sigma`), ratio 0.49.
        let (learner, mut labeller, _dir) = fixture(None, Some(1.0));
        let answer = labeller.label_round(&learner, 0, 3, &[0, 1, 2], 9).unwrap();
        assert!(
            matches!(&answer, Answer::Declined(why) if why.contains("min_snr")),
            "{answer:?}"
        );
        assert_eq!(charges(&labeller), 0);
        let plan = labeller.private().unwrap().plan.clone().unwrap();
        assert!(plan.snr < 1.0 && plan.sigma > 0.0, "{plan:?}");
        let (learner, mut labeller, _dir) = fixture(None, Some(plan.snr * 0.5));
        let answer = labeller.label_round(&learner, 0, 3, &[0, 1, 2], 9).unwrap();
        assert!(matches!(answer, Answer::Release(..)), "{answer:?}");
        assert_eq!(charges(&labeller), 1);
    }

    /// A round asked twice gets the same labels and is charged once; a new round is charged.
    #[test]
    fn a_round_asked_again_is_resent_not_charged_again() {
        // Sensitivity sqrt(2 * 3 queries): rho = 6 / (2 * 25) = 0.12 per release. The textbook
        // bound rho + 2 sqrt(rho ln(1 / delta)) gives epsilon <= 2.5 after one and <= 3.6
        // after two, well inside the budget of 10.
        let (learner, mut labeller, _dir) = fixture(Some(5.0), None);
        let release = |l: &mut Labeller, round| match l
            .label_round(&learner, round, 3, &[0, 1, 2], 9)
            .unwrap()
        {
            Answer::Release(labels, receipt) => (labels, receipt.unwrap()),
            other => panic!("{other:?}"),
        };
        let (first, receipt) = release(&mut labeller, 0);
        let (again, receipt_again) = release(&mut labeller, 0);
        assert_eq!(first, again);
        assert_eq!(receipt.rho_total, receipt_again.rho_total);
        assert_eq!(charges(&labeller), 1);
        let (_, next) = release(&mut labeller, 1);
        assert_eq!(charges(&labeller), 2);
        assert!(next.rho_total > receipt.rho_total);
    }
}
