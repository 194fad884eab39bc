//! The numeric search behind the calibrations in [`privacy`](super): find, to the last float,
//! where a monotone predicate on positive `f64`s changes, and answer on the side the caller
//! names (the side where its privacy constraint holds).
//!
//! [`rho_for`](super::rho_for) uses it for the largest `rho` within an epsilon budget and
//! [`sigma_for_rho`](super::sigma_for_rho) for the smallest noise `sigma` within a `rho`
//! target. Their predicates evaluate OpenDP's maps, never a closed form; this module only
//! decides where to evaluate them.

use super::PrivacyError;

/// Where the search starts bracketing: doubling or halving from here reaches every binade of
/// the positive finite floats.
const START: f64 = 1.0;

/// Which neighbour of the boundary [`boundary`] returns: the caller picks the side on which
/// its privacy constraint holds (the conservative side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The largest float at which `above` is false (a `rho` that is not yet too much).
    Below,
    /// The smallest float at which `above` is true (a `sigma` that is already affordable).
    Above,
}

/// What [`boundary`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Boundary {
    /// The requested neighbour: a float on the requested [`Side`] whose adjacent float on the
    /// other side is on the other side of the boundary.
    At(f64),
    /// `above` was true at every power of two from 1 down to the smallest positive subnormal:
    /// the boundary is at 0.
    Zero,
    /// `above` was false at every power of two from 1 up to the largest finite one (2^1023):
    /// there is no finite boundary.
    Infinity,
}

/// Finds the boundary of a monotone predicate over the positive finite `f64`s: `above(x)` is
/// false below the boundary and true above it. Returns the float next to the boundary on
/// `side`.
///
/// First brackets the boundary by doubling or halving from 1 (powers of two only, so at most
/// about 1100 evaluations), then bisects the bracket on bit patterns ([`bisect`], at most 64
/// more), ending on adjacent floats `lo < hi` with `above(lo) == false` and `above(hi) ==
/// true`; returns `lo` for [`Side::Below`] and `hi` for [`Side::Above`]. Neither `0` nor
/// `+inf` is ever passed to `above`: reaching either while bracketing ends the search with
/// [`Boundary::Zero`] or [`Boundary::Infinity`], and the caller decides what that means. An
/// error from `above` stops the search and is returned as is.
pub(super) fn boundary(
    mut above: impl FnMut(f64) -> Result<bool, PrivacyError>,
    side: Side,
) -> Result<Boundary, PrivacyError> {
    // The bracket keeps `above(lo) == false` and `above(hi) == true`.
    let (mut lo, mut hi) = (START, START);
    if above(hi)? {
        loop {
            lo /= 2.0;
            if lo == 0.0 {
                return Ok(Boundary::Zero);
            }
            if !above(lo)? {
                break;
            }
            hi = lo;
        }
    } else {
        loop {
            hi *= 2.0;
            if !hi.is_finite() {
                return Ok(Boundary::Infinity);
            }
            if above(hi)? {
                break;
            }
            lo = hi;
        }
    }
    let (lo, hi) = bisect(lo, hi, above)?;
    Ok(Boundary::At(match side {
        Side::Below => lo,
        Side::Above => hi,
    }))
}

/// Bisection on the bit patterns of non-negative finite `f64`s (which order like their
/// values): given `lo < hi` with `pred(lo) == false` and `pred(hi) == true`, returns adjacent
/// floats `(lo, hi)` that still satisfy that invariant. At most 64 evaluations of `pred`.
///
/// The invariant is kept at every step, so the ends are right even if `pred` is not perfectly
/// monotone at the scale of an ulp.
fn bisect(
    lo: f64,
    hi: f64,
    mut pred: impl FnMut(f64) -> Result<bool, PrivacyError>,
) -> Result<(f64, f64), PrivacyError> {
    let (mut lo_bits, mut hi_bits) = (lo.to_bits(), hi.to_bits());
    while hi_bits - lo_bits > 1 {
        let mid_bits = lo_bits + (hi_bits - lo_bits) / 2;
        if pred(f64::from_bits(mid_bits))? {
            hi_bits = mid_bits;
        } else {
            lo_bits = mid_bits;
        }
    }
    Ok((f64::from_bits(lo_bits), f64::from_bits(hi_bits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::SQRT_2;

    #[test]
    fn privacy_search_boundary_finds_the_last_float() {
        // x.mul_add(x, -2.0) rounds the exact x*x - 2 once, so its sign is exact: this
        // predicate is exactly x > sqrt(2).
        let over_sqrt_2 = |x: f64| Ok(x.mul_add(x, -2.0) > 0.0);
        // sqrt(2) = 1.41421356237309504880... SQRT_2, the f64 nearest to it, is
        // 1.41421356237309514547... (above it), and the float one ulp below is
        // 1.41421356237309492343... (below it); both expansions are the exact decimal values
        // of those bit patterns. So the largest float with x*x <= 2 is one ulp below SQRT_2,
        // and the smallest float with x*x > 2 is SQRT_2 itself.
        let below_sqrt_2 = f64::from_bits(SQRT_2.to_bits() - 1);
        assert_eq!(
            boundary(over_sqrt_2, Side::Below).expect("search"),
            Boundary::At(below_sqrt_2)
        );
        assert_eq!(
            boundary(over_sqrt_2, Side::Above).expect("search"),
            Boundary::At(SQRT_2)
        );
        // A boundary exactly at the start, and one far below it (1e-300 is itself a float).
        assert_eq!(
            boundary(|x| Ok(x > 1.0), Side::Below).expect("search"),
            Boundary::At(1.0)
        );
        assert_eq!(
            boundary(|x| Ok(x >= 1e-300), Side::Above).expect("search"),
            Boundary::At(1e-300)
        );
        // No boundary among the positive finite floats: 0 and +inf are never evaluated.
        let positive_finite = |x: f64| {
            assert!(x > 0.0 && x.is_finite(), "evaluated at {x}");
            Ok(true)
        };
        assert_eq!(
            boundary(positive_finite, Side::Above).expect("search"),
            Boundary::Zero
        );
        assert_eq!(
            boundary(|_| Ok(false), Side::Below).expect("search"),
            Boundary::Infinity
        );
        // An error from the predicate is returned as is.
        let failing = |_| {
            Err(PrivacyError::NoSolution {
                what: "test",
                detail: String::new(),
            })
        };
        assert!(matches!(
            boundary(failing, Side::Below),
            Err(PrivacyError::NoSolution { what: "test", .. })
        ));
    }
}
