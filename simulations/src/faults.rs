//! Adversaries and failures injected into simulated clients.
//!
//! Each simulated client may be given a [`ClientFault`]; it becomes the client's
//! [`ContributionHook`], which sees every contribution on its way out. Byzantine clients rewrite
//! their labels ([`Attack`]); stragglers hold them past the round deadline; dropping clients
//! vanish mid-round. The production client knows only the hook trait: the attacks live here.

use std::time::Duration;

use fd_client::federation::{ContributionHook, Outgoing};
use fd_protocol::SoftLabels;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;

/// How a byzantine client corrupts its soft labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Every row replaced by a random point of the simplex (uniform: normalised exponentials).
    Random,
    /// Label flipping: each row's mass moves to the next class (`p'[c] = p[c-1 mod C]`), so the
    /// node is as confident as an honest one, about the wrong class.
    Flip,
    /// All mass on class 0 for every query.
    Constant,
}

impl Attack {
    /// Applies the attack to every row.
    pub fn corrupt(self, labels: &mut SoftLabels, rng: &mut StdRng) {
        let c = labels.classes as usize;
        if c == 0 {
            return;
        }
        for row in labels.probs.chunks_mut(c) {
            match self {
                Attack::Random => {
                    for v in row.iter_mut() {
                        // -ln(U) with U in (0, 1]: exponential draws; normalised they are
                        // uniform on the simplex (Dirichlet(1, ..., 1)).
                        let u: f64 = 1.0 - rng.random::<f64>();
                        *v = (-u.ln()) as f32;
                    }
                    let sum: f32 = row.iter().sum();
                    if sum > 0.0 {
                        row.iter_mut().for_each(|v| *v /= sum);
                    } else {
                        row.iter_mut().for_each(|v| *v = 1.0 / c as f32);
                    }
                }
                Attack::Flip => row.rotate_right(1),
                Attack::Constant => {
                    row.iter_mut().for_each(|v| *v = 0.0);
                    row[0] = 1.0;
                }
            }
        }
    }
}

/// What is wrong with one simulated client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientFault {
    /// Sends corrupted labels every round.
    Byzantine(Attack),
    /// Holds every other contribution (those of even rounds) this long, past the round
    /// deadline. Late every round, a straggler would fall further behind each round (its delay
    /// exceeds the round's length) until the federation ended without it; late every other
    /// round, it catches up in between, as a slow but live node does.
    Straggler(Duration),
    /// Vanishes in this round, after training, before sending.
    Drops {
        /// The round it vanishes in.
        round: u32,
    },
}

/// A [`ClientFault`] as a session hook.
pub struct FaultHook {
    fault: ClientFault,
    rng: StdRng,
}

impl FaultHook {
    /// The hook for `fault`, with its own seeded randomness.
    pub fn new(fault: ClientFault, seed: u64) -> FaultHook {
        FaultHook {
            fault,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl ContributionHook for FaultHook {
    fn outgoing(&mut self, round: u32, labels: &mut SoftLabels) -> Outgoing {
        match self.fault {
            ClientFault::Byzantine(attack) => {
                attack.corrupt(labels, &mut self.rng);
                Outgoing::Send
            }
            ClientFault::Straggler(delay) if round.is_multiple_of(2) => Outgoing::Delay(delay),
            ClientFault::Straggler(_) => Outgoing::Send,
            ClientFault::Drops { round: r } if r == round => Outgoing::Vanish,
            ClientFault::Drops { .. } => Outgoing::Send,
        }
    }
}

/// Which clients are faulty, and how.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// One entry per client.
    pub faults: Vec<Option<ClientFault>>,
}

/// Settings of the faults to inject.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultConfig {
    /// Fraction of clients that are byzantine.
    pub byzantine: f64,
    /// How they attack.
    pub attack: Attack,
    /// Fraction of clients that vanish mid-round (each in a random round).
    pub drop_rate: f64,
    /// Fraction of clients that answer every other round after its deadline.
    pub stragglers: f64,
    /// How long stragglers hold their contributions.
    pub straggler_delay_secs: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            byzantine: 0.0,
            attack: Attack::Flip,
            drop_rate: 0.0,
            stragglers: 0.0,
            straggler_delay_secs: 0.0,
        }
    }
}

impl FaultConfig {
    /// Checks the fractions; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("--byzantine", self.byzantine),
            ("--drop-rate", self.drop_rate),
            ("--stragglers", self.stragglers),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be a fraction in [0, 1], got {v}"));
            }
        }
        if self.byzantine + self.drop_rate + self.stragglers > 1.0 {
            return Err("--byzantine, --drop-rate and --stragglers together exceed 1".into());
        }
        Ok(())
    }

    /// Picks the faulty clients: `round(fraction * clients)` of each kind, disjoint, chosen by
    /// a seeded shuffle (independent of the data split's randomness).
    pub fn plan(&self, clients: usize, rounds: u32, seed: u64) -> FaultPlan {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17_5eed);
        let mut order: Vec<usize> = (0..clients).collect();
        order.shuffle(&mut rng);
        let count = |f: f64| (f * clients as f64).round() as usize;
        let mut faults = vec![None; clients];
        let mut next = order.into_iter();
        for i in next.by_ref().take(count(self.byzantine)) {
            faults[i] = Some(ClientFault::Byzantine(self.attack));
        }
        for i in next.by_ref().take(count(self.drop_rate)) {
            faults[i] = Some(ClientFault::Drops {
                round: rng.random_range(0..rounds.max(1)),
            });
        }
        for i in next.by_ref().take(count(self.stragglers)) {
            faults[i] = Some(ClientFault::Straggler(Duration::from_secs_f64(
                self.straggler_delay_secs,
            )));
        }
        FaultPlan { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: &[f32]) -> SoftLabels {
        SoftLabels {
            classes: p.len() as u16,
            query_ids: vec![7],
            probs: p.to_vec(),
        }
    }

    #[test]
    fn attacks_stay_on_the_simplex_and_do_what_they_say() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut l = row(&[0.7, 0.2, 0.1]);
        Attack::Flip.corrupt(&mut l, &mut rng);
        assert_eq!(l.probs, [0.1, 0.7, 0.2]);
        Attack::Constant.corrupt(&mut l, &mut rng);
        assert_eq!(l.probs, [1.0, 0.0, 0.0]);
        Attack::Random.corrupt(&mut l, &mut rng);
        assert_eq!(l.validate(3), Ok(()));
        assert_ne!(l.probs, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn the_plan_picks_disjoint_clients_in_the_asked_proportions() {
        let config = FaultConfig {
            byzantine: 0.3,
            drop_rate: 0.2,
            stragglers: 0.1,
            straggler_delay_secs: 2.0,
            ..FaultConfig::default()
        };
        let plan = config.plan(10, 5, 1);
        let kinds =
            |f: fn(&ClientFault) -> bool| plan.faults.iter().flatten().filter(|x| f(x)).count();
        assert_eq!(kinds(|f| matches!(f, ClientFault::Byzantine(_))), 3);
        assert_eq!(kinds(|f| matches!(f, ClientFault::Drops { .. })), 2);
        assert_eq!(kinds(|f| matches!(f, ClientFault::Straggler(_))), 1);
        assert!(plan.faults.iter().flatten().all(|f| match f {
            ClientFault::Drops { round } => *round < 5,
            _ => true,
        }));
        // The same seed gives the same plan.
        assert_eq!(config.plan(10, 5, 1).faults, plan.faults);
        let bad = FaultConfig {
            drop_rate: 1.5,
            ..FaultConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("--drop-rate"));
    }
}
