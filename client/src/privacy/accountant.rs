//! The node's `(epsilon, delta)` budget and the conversions between zCDP's `rho` and
//! `epsilon`, all through OpenDP.
//!
//! # How `epsilon_for` uses OpenDP
//!
//! OpenDP converts a zCDP measurement to approximate DP with two combinators:
//! `make_zCDP_to_approxDP`, whose map turns the measurement's `rho` into a privacy profile
//! with `ZeroConcentratedDivergence::convert` (Canonne, Kamath & Steinke 2020, `cdp_delta`,
//! conservatively rounded), and `make_fix_delta`, whose map reads the smallest `epsilon` at a
//! given `delta` off that profile with `SmoothedMaxDivergence::fix_delta`. A ledger holds a
//! total `rho` rather than a measurement, so [`epsilon_for`] calls exactly those two public
//! trait methods on the `rho` itself: it is the composition of the two combinators' maps,
//! with no measurement (and no invented function) in between. A unit test in
//! `mechanism.rs` checks that the result equals the full combinator chain applied to a real
//! Gaussian measurement.

use opendp::{
    combinators::{ConcentratedMeasure, FixDeltaMeasure},
    error::ErrorVariant,
    measures::{SmoothedMaxDivergence, ZeroConcentratedDivergence},
};

use super::PrivacyError;
use super::search::{self, Boundary, Side};

/// A node's total privacy budget, as `(epsilon, delta)`-differential privacy per
/// [`PRIVACY_UNIT`](super::PRIVACY_UNIT).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Total epsilon the node may spend; `> 0`, and `+inf` means no limit.
    pub epsilon: f64,
    /// The delta at which epsilon is measured; `0 < delta < 1` (typically well below
    /// 1 / number of records).
    pub delta: f64,
}

impl Budget {
    /// Checks that `epsilon > 0` (it may be `+inf`: no limit) and `0 < delta < 1`.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        let problem = if self.epsilon.is_nan() || self.epsilon <= 0.0 {
            "epsilon must be > 0"
        } else if !(self.delta > 0.0 && self.delta < 1.0) {
            "delta must be strictly between 0 and 1"
        } else {
            return Ok(());
        };
        Err(PrivacyError::InvalidBudget {
            epsilon: self.epsilon,
            delta: self.delta,
            problem,
        })
    }
}

impl Budget {
    /// [`Budget::validate`], and for a finite budget `delta < 1 / records`: a larger delta
    /// admits mechanisms that publish a record outright.
    pub fn validate_for(&self, records: usize) -> Result<(), PrivacyError> {
        self.validate()?;
        let bound = 1.0 / records.max(1) as f64;
        if self.epsilon.is_finite() && self.delta >= bound {
            return Err(PrivacyError::DeltaTooLarge {
                delta: self.delta,
                records,
                bound,
            });
        }
        Ok(())
    }
}

/// Checks a `delta` used to read an epsilon: `0 < delta < 1`.
fn check_delta(delta: f64, location: &'static str) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidParameter {
            what: "delta",
            value: delta,
            location,
            expected: "0 < delta < 1",
        })
    }
}

/// The `epsilon` at `delta` of a total zCDP cost `rho`: the map of OpenDP's
/// `make_zCDP_to_approxDP` followed by the map of `make_fix_delta(.., delta)` (see the module
/// docs for how they are applied to a bare `rho`). Both round toward more privacy loss.
///
/// `rho = 0` gives `epsilon = 0`; `rho = +inf` gives `+inf`, and so does a `rho` so large that
/// OpenDP's conversion overflows (see the code; `+inf` is the conservative answer). Errors if
/// `rho` is negative or NaN, or if `delta` is not strictly between 0 and 1.
pub fn epsilon_for(rho: f64, delta: f64) -> Result<f64, PrivacyError> {
    const LOCATION: &str = "privacy::accountant::epsilon_for";
    if rho.is_nan() || rho < 0.0 {
        return Err(PrivacyError::InvalidParameter {
            what: "rho",
            value: rho,
            location: LOCATION,
            expected: "a zCDP cost >= 0",
        });
    }
    check_delta(delta, LOCATION)?;
    // OpenDP rejects -0.0 as negative; it is the same cost as +0.0.
    let rho = if rho == 0.0 { 0.0 } else { rho };
    // make_zCDP_to_approxDP's map: rho -> privacy profile delta(epsilon).
    let profile = <ZeroConcentratedDivergence as ConcentratedMeasure>::convert(rho)
        .map_err(|e| PrivacyError::opendp("converting rho to a privacy profile", e))?;
    // make_fix_delta's map: the smallest epsilon with delta(epsilon) <= delta.
    match SmoothedMaxDivergence.fix_delta(&profile, delta) {
        Ok((epsilon, _)) => Ok(epsilon),
        // For a huge rho (thousands) OpenDP's profile overflows (`inf_exp`) while probing
        // small epsilons, where the true delta is >= 1 anyway. `+inf` is the trivial, always
        // valid bound, i.e. the side of more privacy loss.
        Err(e) if e.variant == ErrorVariant::Overflow => Ok(f64::INFINITY),
        Err(e) => Err(PrivacyError::opendp(
            "reading epsilon off the privacy profile",
            e,
        )),
    }
}

/// The largest total `rho` whose [`epsilon_for`]`(rho, budget.delta)` is `<= budget.epsilon`.
///
/// Found by bisection on [`epsilon_for`] (so on OpenDP's conversion) over the bit patterns of
/// `f64`, ending on adjacent floats `lo < hi` with `epsilon_for(lo) <= epsilon <
/// epsilon_for(hi)`; returns `lo`, the affordable side. `budget.epsilon = +inf` gives `+inf`.
pub fn rho_for(budget: Budget) -> Result<f64, PrivacyError> {
    budget.validate()?;
    if budget.epsilon == f64::INFINITY {
        return Ok(f64::INFINITY);
    }
    let too_much = |rho: f64| -> Result<bool, PrivacyError> {
        Ok(epsilon_for(rho, budget.delta)? > budget.epsilon)
    };
    // The largest rho that is not too much.
    match search::boundary(too_much, Side::Below)? {
        Boundary::At(rho) => Ok(rho),
        // Even the smallest positive rho is too much; rho = 0 costs epsilon 0 < budget.epsilon.
        Boundary::Zero => Ok(0.0),
        Boundary::Infinity => Err(PrivacyError::NoSolution {
            what: "rho",
            detail: format!(
                "every finite rho stays within epsilon {} at delta {}",
                budget.epsilon, budget.delta
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_must_be_below_one_over_the_record_count() {
        let budget = Budget {
            epsilon: 2.0,
            delta: 1e-2,
        };
        // 1 / 99 > 1e-2 > 1 / 100.
        assert!(budget.validate_for(99).is_ok());
        let err = budget.validate_for(100).unwrap_err();
        assert!(
            matches!(err, PrivacyError::DeltaTooLarge { records: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("below 1e-2"), "{err}");
        // Without a limit nothing is released under a guarantee, so no bound applies.
        let unlimited = Budget {
            epsilon: f64::INFINITY,
            ..budget
        };
        assert!(unlimited.validate_for(100).is_ok());
    }

    #[test]
    fn privacy_budget_validation() {
        assert!(
            Budget {
                epsilon: 1.0,
                delta: 1e-5
            }
            .validate()
            .is_ok()
        );
        assert!(
            Budget {
                epsilon: f64::INFINITY,
                delta: 1e-5
            }
            .validate()
            .is_ok()
        );
        for (epsilon, delta) in [
            (0.0, 1e-5),
            (-1.0, 1e-5),
            (f64::NAN, 1e-5),
            (1.0, 0.0),
            (1.0, 1.0),
            (1.0, f64::NAN),
            (1.0, -1e-5),
        ] {
            assert!(
                matches!(
                    Budget { epsilon, delta }.validate(),
                    Err(PrivacyError::InvalidBudget { .. })
                ),
                "({epsilon}, {delta}) accepted"
            );
        }
    }

    #[test]
    fn privacy_epsilon_for_known_values() {
        // rho = 0 costs nothing.
        assert_eq!(epsilon_for(0.0, 1e-5).expect("eps"), 0.0);
        assert_eq!(epsilon_for(-0.0, 1e-5).expect("eps"), 0.0);
        // Bun & Steinke 2016, Prop 1.3: rho-zCDP implies (rho + 2 sqrt(rho ln(1/delta)), delta)-DP.
        // rho = 0.5, delta = 1e-5: 0.5 + 2 sqrt(0.5 * 11.5129) = 5.2985. OpenDP's conversion
        // (Canonne, Kamath & Steinke 2020) is tighter, so <=; and any conversion is > rho.
        let (rho, delta) = (0.5, 1e-5_f64);
        let bound = rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt();
        let eps = epsilon_for(rho, delta).expect("eps");
        eprintln!("epsilon_for(0.5, 1e-5) = {eps} (Bun-Steinke bound {bound})");
        assert!(eps <= bound && eps > rho, "{eps} vs bound {bound}");
        // The number quoted in the report: rho 0.08 at delta 1e-5.
        let eps_008 = epsilon_for(0.08, 1e-5).expect("eps");
        eprintln!("epsilon_for(0.08, 1e-5) = {eps_008}");
        assert!(eps_008 <= 0.08 + 2.0 * (0.08 * (1e5_f64).ln()).sqrt() && eps_008 > 0.08);
        // More rho, more epsilon; smaller delta, more epsilon.
        assert!(epsilon_for(0.6, 1e-5).expect("eps") > eps);
        assert!(epsilon_for(0.5, 1e-7).expect("eps") > eps);
        assert_eq!(
            epsilon_for(f64::INFINITY, 1e-5).expect("eps"),
            f64::INFINITY
        );
        // rho 1e6 overflows inside OpenDP's profile: reported as the trivial bound +inf.
        assert_eq!(epsilon_for(1e6, 1e-5).expect("eps"), f64::INFINITY);
        // Large but convertible: finite and above rho.
        let big = epsilon_for(1000.0, 1e-5).expect("eps");
        eprintln!("epsilon_for(1000, 1e-5) = {big}");
        assert!(big.is_finite() && big > 1000.0);
        for (rho, delta) in [(-1.0, 1e-5), (f64::NAN, 1e-5), (0.5, 0.0), (0.5, 1.0)] {
            assert!(
                epsilon_for(rho, delta).is_err(),
                "({rho}, {delta}) accepted"
            );
        }
    }

    #[test]
    fn privacy_rho_for_inverts_epsilon_for() {
        for budget in [
            Budget {
                epsilon: 2.0,
                delta: 1e-5,
            },
            Budget {
                epsilon: 0.1,
                delta: 1e-6,
            },
            Budget {
                epsilon: 8.0,
                delta: 1e-3,
            },
        ] {
            let rho = rho_for(budget).expect("rho");
            let eps = epsilon_for(rho, budget.delta).expect("eps");
            eprintln!("rho_for({budget:?}) = {rho}, epsilon_for(that) = {eps}");
            assert!(eps <= budget.epsilon, "{eps} > {}", budget.epsilon);
            // Within 1e-6 relative (from the brief).
            assert!(
                eps >= budget.epsilon * (1.0 - 1e-6),
                "{eps} far below {}",
                budget.epsilon
            );
            // The next float up is over budget: rho is the largest affordable.
            let above = f64::from_bits(rho.to_bits() + 1);
            assert!(epsilon_for(above, budget.delta).expect("eps") > budget.epsilon);
        }
        let unlimited = Budget {
            epsilon: f64::INFINITY,
            delta: 1e-5,
        };
        assert_eq!(rho_for(unlimited).expect("rho"), f64::INFINITY);
        assert!(
            rho_for(Budget {
                epsilon: 0.0,
                delta: 1e-5
            })
            .is_err()
        );
    }
}
