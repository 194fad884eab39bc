//! Nearest-neighbour teachers: a teacher votes for the label of its shard's record nearest to
//! the query, or abstains when that record lies farther than the radius. Nothing to train.

use candle_core::Tensor;

use super::{DISTANCE_BLOCK, TeacherEnsemble};
use crate::distill::ModelError;

impl TeacherEnsemble {
    /// For nearest-neighbour teachers: calls `vote(t, q, class)` for every teacher `t` that
    /// does not abstain on query row `q` of `x` `[m, inputs]`, with the label of the record of
    /// its shard closest to the query (abstaining: farther than the radius).
    ///
    /// Distances are computed for `block` queries at a time ([`Self::query_block`] keeps
    /// memory near [`DISTANCE_BLOCK`] values however many records and queries there are).
    pub(super) fn nearest_votes(
        &self,
        x: &Tensor,
        block: usize,
        mut vote: impl FnMut(usize, usize, u32),
    ) -> Result<(), ModelError> {
        self.nearest_records(x, block, |t, q, _, class| vote(t, q, class))
    }

    /// [`Self::nearest_votes`] with every teacher voting on at most `cap` queries of `x`: the
    /// ones its shard's nearest record is closest to (ties to the lower query), among those it
    /// would vote on. Replacing one record then changes at most `cap` one-hot votes into
    /// `cap` others, whatever the number of queries: L2 sensitivity `sqrt(2 cap)`.
    pub(super) fn capped_nearest_votes(
        &self,
        x: &Tensor,
        block: usize,
        cap: usize,
        mut vote: impl FnMut(usize, usize, u32),
    ) -> Result<(), ModelError> {
        // Per teacher, its best `cap` (squared distance, query, class), unordered.
        let mut best: Vec<Vec<(f32, usize, u32)>> = vec![Vec::new(); self.shards.len()];
        self.nearest_records(x, block, |t, q, d2, class| {
            let kept = &mut best[t];
            if kept.len() < cap {
                kept.push((d2, q, class));
                return;
            }
            // The worst kept: largest distance, then largest query.
            let worst = (0..kept.len()).max_by(|&a, &b| {
                (kept[a].0, kept[a].1)
                    .partial_cmp(&(kept[b].0, kept[b].1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if let Some(w) = worst
                && (d2, q) < (kept[w].0, kept[w].1)
            {
                kept[w] = (d2, q, class);
            }
        })?;
        for (t, kept) in best.into_iter().enumerate() {
            for (_, q, class) in kept {
                vote(t, q, class);
            }
        }
        Ok(())
    }

    /// Calls `found(t, q, d2, class)` for every teacher `t` whose shard's nearest record to
    /// query row `q` lies within the radius (squared distance `d2`, label `class`).
    fn nearest_records(
        &self,
        x: &Tensor,
        block: usize,
        mut found: impl FnMut(usize, usize, f32, u32),
    ) -> Result<(), ModelError> {
        let limit = self.config.radius.map_or(f32::INFINITY, |r| (r * r) as f32);
        let m = x.dims2()?.0;
        let labels: Vec<u32> = self.y.to_vec1()?;
        let r2 = self.x.sqr()?.sum_keepdim(1)?.t()?;
        let block = block.max(1);
        let mut first = 0;
        while first < m {
            let len = block.min(m - first);
            let xb = x.narrow(0, first, len)?;
            // Squared distances |q|^2 + |r|^2 - 2 q.r for the block's queries: [len, n].
            let q2 = xb.sqr()?.sum_keepdim(1)?;
            let d: Vec<Vec<f32>> = xb
                .matmul(&self.x.t()?)?
                .affine(-2.0, 0.0)?
                .broadcast_add(&q2)?
                .broadcast_add(&r2)?
                .to_vec2()?;
            for (t, shard) in self.shards.iter().enumerate() {
                for (offset, row) in d.iter().enumerate() {
                    // Shards are stored in shuffled order; ties go to the lower position.
                    let mut best = (f32::INFINITY, u32::MAX);
                    for &r in shard {
                        let v = row[r as usize];
                        if v < best.0 || (v == best.0 && r < best.1) {
                            best = (v, r);
                        }
                    }
                    if best.0 <= limit
                        && let Some(&class) = labels.get(best.1 as usize)
                    {
                        found(t, first + offset, best.0, class);
                    }
                }
            }
            first += len;
        }
        Ok(())
    }

    /// Queries per block of distances: [`DISTANCE_BLOCK`] over the number of records.
    pub(super) fn query_block(&self) -> usize {
        DISTANCE_BLOCK / self.y.elem_count().max(1)
    }
}
