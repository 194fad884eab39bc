//! Post-processing of noisy vote counts into probability rows, shared by the nodes (which
//! post-process their own releases) and the coordinator (which post-processes the sum of a
//! secure-aggregation round). Post-processing costs no privacy.

/// Post-processing (free under DP) of noisy vote sums into probability rows.
///
/// Each value of a row of width `classes` is first lowered by `floor` and clamped at 0
/// (`max(v - floor, 0)`). A floor of about one noise standard deviation removes most entries
/// that are noise alone, so averaging many nodes' rows is not swamped by the clamped noise of
/// classes no teacher voted for. Then:
///
/// - with `full_mass = None` the row is renormalised to sum 1 (every node's row counts the
///   same at the coordinator, however many of its teachers voted);
/// - with `full_mass = Some(k)` (the number of teachers) the row is divided by `k` (by its sum
///   if that is larger) and the mass left over, `1 - sum / k`, is spread evenly over the
///   classes. A node whose teachers mostly abstained then sends a nearly uniform row, so the
///   coordinator's mean weighs each node by how many of its teachers voted: the arg-max of
///   the mean is the arg-max of the summed votes of all nodes.
///
/// A row whose clamped sum is zero or not finite becomes uniform. A trailing partial row is
/// treated on its own. `classes == 0` gives an empty vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Subtracted from every value before clamping at 0.
    pub floor: f64,
    /// The vote mass of a row where every teacher voted, or `None` to renormalise every row.
    pub full_mass: Option<f64>,
}

impl Projection {
    /// Plain clamp at 0 and renormalise.
    pub const PLAIN: Projection = Projection {
        floor: 0.0,
        full_mass: None,
    };

    /// The vote-mass projection for a release by `teachers` teachers with noise `sigma`.
    ///
    /// Every value is raised by `B = 4 sigma` (so that clamping at 0 almost never bites: a
    /// Gaussian is below `-4 sigma` with probability 3e-5) and rows are divided by the fixed
    /// `F = teachers + classes * B + 3 sigma sqrt(classes)`, which exceeds a row's raised sum
    /// unless its noise sum is above 3 of its standard deviations. For every other row, the
    /// released value of class `j` is `(n_j + c_row) / F`, where `n_j` is the noisy vote sum
    /// and `c_row` does not depend on `j`. The coordinator's mean of such rows is therefore,
    /// class by class, the summed noisy votes of all nodes (over their `F`s) plus a constant
    /// per row: its arg-max is the arg-max of the votes summed over nodes, whose noise grows
    /// only with the square root of the number of nodes while the votes grow linearly.
    /// Renormalising rows one by one instead would give a node with two teachers voting the
    /// same weight as one with two hundred.
    pub fn vote_mass(teachers: usize, classes: usize, sigma: f64) -> Projection {
        let b = 4.0 * sigma;
        let c = classes as f64;
        Projection {
            floor: -b,
            full_mass: Some(teachers as f64 + c * b + 3.0 * sigma * c.sqrt()),
        }
    }

    /// Applies the projection to `noisy` rows of width `classes`.
    pub fn apply(&self, noisy: &[f64], classes: usize) -> Vec<f32> {
        if classes == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(noisy.len());
        for row in noisy.chunks(classes) {
            // `f64::max` maps NaN to the other operand, so NaN clamps to 0 as well.
            let clamped: Vec<f64> = row.iter().map(|v| (v - self.floor).max(0.0)).collect();
            let sum: f64 = clamped.iter().sum();
            let uniform = 1.0 / row.len() as f64;
            if !(sum > 0.0 && sum.is_finite()) {
                out.extend(std::iter::repeat_n(uniform as f32, row.len()));
                continue;
            }
            let scale = match self.full_mass {
                Some(full) if full.is_finite() && full > 0.0 => sum.max(full),
                _ => sum,
            };
            let rest = (1.0 - sum / scale).max(0.0) * uniform;
            out.extend(clamped.iter().map(|v| (v / scale + rest) as f32));
        }
        out
    }
}
