//! The coordinator's side of a secure-aggregation round, without I/O and without a clock.
//!
//! The coordinator relays: the nodes' signed key adverts (as the [`Message::Roster`]), their
//! encrypted shares (each node's [`Message::Inbox`]), and the list of survivors
//! ([`Message::Unmask`]). It then rebuilds the survivors' sum with `fd_secagg::aggregate` and
//! learns nothing else: it never holds a node's votes, only masked vectors that look uniform
//! one by one, and the sum. Steps move on when every node expected has answered, or when the
//! round's machine ([`crate::rounds`]) calls [`SecureRound::advance`] at a step's deadline. A
//! step left with fewer nodes than the sum needs loses the round: the target stays as it was.

use std::collections::{BTreeMap, BTreeSet};

use fd_protocol::{Masked, Message, PrivacyReceipt, SecureRound as Terms, SignedAdvert};
use fd_secagg::{EncryptedShares, RoundConfig, UnmaskResponse};

/// Where a secure round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for key adverts.
    Advertise,
    /// Roster sent; waiting for encrypted shares.
    Share,
    /// Inboxes sent; waiting for masked vectors.
    Mask,
    /// Survivors named; waiting for their unmasking shares.
    Unmask,
}

impl Step {
    /// What the nodes are asked for at this step, for logs.
    pub fn waiting_for(self) -> &'static str {
        match self {
            Step::Advertise => "key adverts",
            Step::Share => "key shares",
            Step::Mask => "masked vectors",
            Step::Unmask => "unmasking shares",
        }
    }
}

/// The survivors' decoded sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Sum {
    /// Per query and class (row-major): the survivors' vote counts plus their noise shares.
    pub counts: Vec<i64>,
    /// The survivors, by name.
    pub survivors: Vec<String>,
    /// Teachers voting, over the survivors.
    pub teachers: u64,
    /// Standard deviation of the sum's noise: the root of the survivors' share variances.
    pub sigma: f64,
    /// The survivors' receipts.
    pub receipts: BTreeMap<String, PrivacyReceipt>,
}

/// What [`SecureRound::advance`] leads to.
#[derive(Debug)]
pub enum Advance {
    /// The next step: send these messages.
    Next(Vec<(String, Message)>),
    /// The round is lost, for this reason.
    Lost(String),
    /// The sum is decoded.
    Done(Sum),
}

/// One secure round at the coordinator.
#[derive(Debug)]
pub struct SecureRound {
    config: RoundConfig,
    round: u32,
    ids: BTreeMap<String, u32>,
    names: BTreeMap<u32, String>,
    step: Step,
    /// Nodes (by number) expected at this step and not yet heard from.
    pending: BTreeSet<u32>,
    adverts: BTreeMap<u32, SignedAdvert>,
    shares: BTreeMap<u32, Vec<EncryptedShares>>,
    masked: BTreeMap<u32, Masked>,
    responses: BTreeMap<u32, UnmaskResponse>,
}

impl SecureRound {
    /// A round over `roster` (numbered 1.. in name order) asking `len` values of each, with
    /// `colluders` and `dropouts` tolerated. The threshold is the least above `(n + c) / 2`;
    /// the fewest survivors `n - t`, raised to the threshold if fewer nodes came than planned.
    /// `Err` when the roster is too small (or too large) for the terms: the round is lost.
    pub fn new(
        context: [u8; 32],
        round: u32,
        len: usize,
        roster: &BTreeSet<String>,
        colluders: u32,
        dropouts: u32,
    ) -> Result<SecureRound, String> {
        let n = roster.len();
        if n > 255 {
            return Err(format!(
                "{n} nodes present; secure aggregation takes at most 255"
            ));
        }
        let c = colluders as usize;
        let threshold = (n + c) / 2 + 1;
        let min_survivors = n.saturating_sub(dropouts as usize).max(threshold);
        if min_survivors > n || min_survivors <= c || threshold < 2 {
            return Err(format!(
                "{n} nodes present cannot protect a sum against {c} colluders (the threshold \
                 would be {threshold}, the fewest survivors {min_survivors})"
            ));
        }
        let ids: BTreeMap<String, u32> = roster
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32 + 1))
            .collect();
        let names = ids.iter().map(|(name, &id)| (id, name.clone())).collect();
        Ok(SecureRound {
            config: RoundConfig {
                context,
                round: u64::from(round),
                len,
                threshold,
                min_survivors,
            },
            round,
            pending: ids.values().copied().collect(),
            ids,
            names,
            step: Step::Advertise,
            adverts: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked: BTreeMap::new(),
            responses: BTreeMap::new(),
        })
    }

    /// The step under way.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Nodes expected at this step and not yet heard from.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The terms to send `node` with its RoundOpen.
    pub fn terms(&self, node: &str) -> Option<Terms> {
        Some(Terms {
            context: self.config.context,
            node: *self.ids.get(node)?,
            roster: self.ids.len() as u32,
            threshold: self.config.threshold as u32,
            min_survivors: self.config.min_survivors as u32,
        })
    }

    /// `node` is gone: it is no longer waited for (it drops out of the round).
    pub fn gone(&mut self, node: &str) {
        if let Some(id) = self.ids.get(node) {
            self.pending.remove(id);
        }
    }

    /// Takes in one secure-round message from `node`; `Err` says why it is refused.
    pub fn receive(&mut self, node: &str, message: Message) -> Result<(), String> {
        let Some(&id) = self.ids.get(node) else {
            return Err(format!("this node is not in round {}'s roster", self.round));
        };
        let (round, want) = match &message {
            Message::KeyAdvert { round, .. } => (*round, Step::Advertise),
            Message::KeyShares { round, .. } => (*round, Step::Share),
            Message::Masked(m) => (m.round, Step::Mask),
            Message::Unmasked { round, .. } => (*round, Step::Unmask),
            other => return Err(format!("{} is not a secure-round message", other.kind())),
        };
        if round != self.round {
            return Err(format!(
                "{} for round {round}, but round {} is open",
                message.kind(),
                self.round
            ));
        }
        if want != self.step || !self.pending.contains(&id) {
            return Err(format!(
                "{} out of turn: the round waits for {} (late, repeated, or from a node that \
                 missed a step)",
                message.kind(),
                self.step.waiting_for()
            ));
        }
        match message {
            Message::KeyAdvert {
                advert,
                certificate,
                ..
            } => {
                if advert.node != id {
                    return Err(format!(
                        "key advert for node {}, this node is {id}",
                        advert.node
                    ));
                }
                self.adverts.insert(
                    id,
                    SignedAdvert {
                        advert,
                        certificate,
                    },
                );
            }
            Message::KeyShares { shares, .. } => {
                let to: BTreeSet<u32> = shares.iter().map(|s| s.to).collect();
                let all_from_it = shares.iter().all(|s| s.from == id);
                let advertised: BTreeSet<u32> = self.adverts.keys().copied().collect();
                if !all_from_it || to != advertised || shares.len() != advertised.len() {
                    return Err(
                        "key shares must come from this node, one for each advertised node".into(),
                    );
                }
                self.shares.insert(id, shares);
            }
            Message::Masked(m) => {
                if m.masked.node != id || m.masked.values.len() != self.config.len {
                    return Err(format!(
                        "masked vector of node {} with {} values; expected node {id} with {}",
                        m.masked.node,
                        m.masked.values.len(),
                        self.config.len
                    ));
                }
                if m.teachers == 0 {
                    return Err("a masked vector must count at least one teacher".into());
                }
                self.masked.insert(id, m);
            }
            Message::Unmasked { response, .. } => {
                if response.node != id {
                    return Err(format!(
                        "unmasking shares of node {}, this node is {id}",
                        response.node
                    ));
                }
                self.responses.insert(id, response);
            }
            _ => unreachable!("filtered above"),
        }
        self.pending.remove(&id);
        Ok(())
    }

    /// The fewest nodes every step needs.
    fn need(&self) -> usize {
        self.config.threshold.max(self.config.min_survivors)
    }

    fn short(&self, have: usize) -> Option<String> {
        (have < self.need()).then(|| {
            format!(
                "only {have} nodes sent {}; the sum needs {}",
                self.step.waiting_for(),
                self.need()
            )
        })
    }

    /// Moves to the next step with whoever answered this one (every node expected did, or the
    /// step's deadline passed).
    pub fn advance(&mut self) -> Advance {
        match self.step {
            Step::Advertise => {
                if let Some(why) = self.short(self.adverts.len()) {
                    return Advance::Lost(why);
                }
                let adverts: Vec<SignedAdvert> = self.adverts.values().cloned().collect();
                self.step = Step::Share;
                self.pending = self.adverts.keys().copied().collect();
                Advance::Next(self.to_each(&self.pending, |_| Message::Roster {
                    round: self.round,
                    adverts: adverts.clone(),
                }))
            }
            Step::Share => {
                if let Some(why) = self.short(self.shares.len()) {
                    return Advance::Lost(why);
                }
                self.step = Step::Mask;
                self.pending = self.shares.keys().copied().collect();
                Advance::Next(self.to_each(&self.pending, |to| {
                    Message::Inbox {
                        round: self.round,
                        shares: self
                            .shares
                            .values()
                            .flatten()
                            .filter(|s| s.to == to)
                            .cloned()
                            .collect(),
                    }
                }))
            }
            Step::Mask => {
                if let Some(why) = self.short(self.masked.len()) {
                    return Advance::Lost(why);
                }
                let survivors: Vec<u32> = self.masked.keys().copied().collect();
                self.step = Step::Unmask;
                self.pending = self.masked.keys().copied().collect();
                Advance::Next(self.to_each(&self.pending, |_| Message::Unmask {
                    round: self.round,
                    survivors: survivors.clone(),
                }))
            }
            Step::Unmask => self.decode(),
        }
    }

    fn to_each(
        &self,
        ids: &BTreeSet<u32>,
        message: impl Fn(u32) -> Message,
    ) -> Vec<(String, Message)> {
        ids.iter()
            .map(|id| (self.names[id].clone(), message(*id)))
            .collect()
    }

    fn decode(&mut self) -> Advance {
        let adverts: Vec<fd_secagg::KeyAdvert> =
            self.adverts.values().map(|a| a.advert.clone()).collect();
        let shared: Vec<u32> = self.shares.keys().copied().collect();
        let masked: Vec<fd_secagg::MaskedInput> =
            self.masked.values().map(|m| m.masked.clone()).collect();
        let responses: Vec<UnmaskResponse> = self.responses.values().cloned().collect();
        let sum = match fd_secagg::aggregate(&self.config, &adverts, &shared, &masked, &responses) {
            Ok(sum) => sum,
            Err(e) => return Advance::Lost(format!("the sum could not be unmasked: {e}")),
        };
        let mut receipts = BTreeMap::new();
        let mut variance = 0.0;
        for (id, m) in &self.masked {
            if let Some(r) = &m.receipt {
                variance += r.sigma * r.sigma;
                receipts.insert(self.names[id].clone(), r.clone());
            }
        }
        let counts: Vec<i64> = sum.into_iter().map(fd_secagg::centred).collect();
        let teachers = self.masked.values().map(|m| u64::from(m.teachers)).sum();
        let sigma = variance.sqrt();
        if let Some(why) = out_of_range(&counts, teachers, sigma) {
            return Advance::Lost(why);
        }
        Advance::Done(Sum {
            counts,
            survivors: self
                .masked
                .keys()
                .map(|id| self.names[id].clone())
                .collect(),
            teachers,
            sigma,
            receipts,
        })
    }
}

/// Noise standard deviations an honest sum's count may stray beyond what its votes can reach
/// before the sum is refused: a Gaussian passes 8 of them with probability about 1e-15.
const RANGE_SIGMAS: f64 = 8.0;

/// The one check the coordinator can make on a secure round's input: every count of the sum
/// is the survivors' votes (each teacher votes at most once per query: between 0 and
/// `teachers`) plus noise of deviation `sigma`. A count beyond [`RANGE_SIGMAS`] deviations of
/// that range means some node sent values no honest node could (or the sum wrapped), and the
/// sum is refused rather than let into the target. Says why, or `None`.
fn out_of_range(counts: &[i64], teachers: u64, sigma: f64) -> Option<String> {
    let margin = (RANGE_SIGMAS * sigma).ceil() + 1.0;
    let (low, high) = (-margin, teachers as f64 + margin);
    let (i, &v) = counts
        .iter()
        .enumerate()
        .find(|(_, v)| !(low..=high).contains(&(**v as f64)))?;
    Some(format!(
        "the decoded sum's value {i} is {v}, outside [{low}, {high}] (the survivors' {teachers} \
         teachers' votes and {RANGE_SIGMAS} deviations of noise {sigma:.2}): some node's input \
         was out of range"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("node-{i:02}")).collect()
    }

    #[test]
    fn terms_follow_the_roster_and_too_small_a_roster_loses_the_round() {
        // 10 nodes, c = 1, t = 2: threshold floor(11 / 2) + 1 = 6, fewest survivors 8.
        let r = SecureRound::new([0; 32], 0, 4, &roster(10), 1, 2).unwrap();
        let t = r.terms("node-03").unwrap();
        assert_eq!(
            (t.node, t.roster, t.threshold, t.min_survivors),
            (4, 10, 6, 8)
        );
        // 4 nodes: threshold 3, fewest survivors raised from 2 to 3.
        let r = SecureRound::new([0; 32], 0, 4, &roster(4), 1, 2).unwrap();
        let t = r.terms("node-00").unwrap();
        assert_eq!((t.threshold, t.min_survivors), (3, 3));
        // 1 node cannot hide anything from the coordinator.
        assert!(SecureRound::new([0; 32], 0, 4, &roster(1), 1, 2).is_err());
        assert!(SecureRound::new([0; 32], 0, 4, &roster(256), 1, 2).is_err());
    }

    #[test]
    fn a_sum_no_honest_votes_and_noise_could_reach_is_refused() {
        // 50 teachers, noise 2: honest counts lie within [-17, 67] (8 deviations, rounded up,
        // plus one).
        assert_eq!(out_of_range(&[0, 50, -10, 60], 50, 2.0), None);
        assert!(
            out_of_range(&[0, 68], 50, 2.0)
                .unwrap()
                .contains("value 1 is 68")
        );
        assert!(out_of_range(&[-18, 0], 50, 2.0).is_some());
        // Without noise, only the votes themselves (and one either side).
        assert!(out_of_range(&[0, 52], 50, 0.0).is_some_and(|w| w.contains("out of range")));
        assert_eq!(out_of_range(&[-1, 51], 50, 0.0), None);
    }

    #[test]
    fn messages_out_of_turn_or_from_strangers_are_refused() {
        let mut r = SecureRound::new([0; 32], 3, 4, &roster(3), 1, 0).unwrap();
        let unmask = Message::Unmasked {
            round: 3,
            response: UnmaskResponse {
                node: 1,
                revealed: Vec::new(),
            },
        };
        assert!(
            r.receive("node-00", unmask)
                .unwrap_err()
                .contains("out of turn")
        );
        let advert = |node, round| Message::KeyAdvert {
            round,
            advert: fd_secagg::KeyAdvert {
                node,
                cipher_key: [0; 32],
                mask_key: [0; 32],
                signature: Vec::new(),
            },
            certificate: Vec::new(),
        };
        assert!(r.receive("stranger", advert(1, 3)).is_err());
        assert!(
            r.receive("node-00", advert(1, 2))
                .unwrap_err()
                .contains("round 3 is open")
        );
        assert!(
            r.receive("node-00", advert(2, 3))
                .unwrap_err()
                .contains("this node is 1")
        );
        r.receive("node-00", advert(1, 3)).unwrap();
        assert!(
            r.receive("node-00", advert(1, 3)).is_err(),
            "a repeat is refused"
        );
        assert_eq!(r.pending(), 2);
        // Only one of three advertised by the deadline: below the threshold, the round is lost.
        assert!(matches!(r.advance(), Advance::Lost(_)));
    }
}
