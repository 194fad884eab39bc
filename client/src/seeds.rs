//! The random streams a node derives from its one configured seed.
//!
//! Every model and batch stream of a node is seeded from `seed` (the node config's, or the
//! simulator's per-client seed) mixed with a constant of its own, so that adding or removing
//! one stream (a local teacher, say) leaves every other stream as it was, and two streams
//! never share their draws. The constants are arbitrary but fixed: changing one changes
//! every run's numbers.

/// One of a node's random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The student's initial weights: the seed itself.
    StudentWeights,
    /// The student's batches (and its dropout and jitter).
    StudentBatches,
    /// The local teacher's initial weights; also the shard teachers' weights, drawn from the
    /// ensemble's own seed ([`Stream::ShardTeachers`]).
    TeacherWeights,
    /// The local teacher's batches.
    TeacherBatches,
    /// The shard ensemble's seed: shard assignment and, through [`Stream::TeacherWeights`],
    /// its teachers' weights.
    ShardTeachers,
    /// How the do-no-harm check deals the private records into folds.
    Validation,
    /// How the do-no-harm check deals the target's rows into folds.
    TargetValidation,
    /// The student's public batches (and their jitter) for the distillation terms: a stream of
    /// its own, so that a student trained against a target draws exactly the private batches
    /// of the local-only student (the two then differ by what the target teaches, not by luck).
    PublicBatches,
    /// The local teacher's public batches, likewise.
    TeacherPublicBatches,
}

impl Stream {
    /// The seed of this stream for a node seeded with `seed`.
    pub fn seed(self, seed: u64) -> u64 {
        seed ^ match self {
            Stream::StudentWeights => 0,
            Stream::StudentBatches => 0x5eed,
            Stream::TeacherWeights => 0x7eac_4e25,
            Stream::TeacherBatches => 0x7eac,
            Stream::ShardTeachers => 0x5a4d,
            Stream::Validation => 0x7a11,
            Stream::TargetValidation => 0x7a11_9ab1,
            Stream::PublicBatches => 0x9ab1,
            Stream::TeacherPublicBatches => 0x7eac_9ab1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_from_each_other_and_follow_the_seed() {
        let all = [
            Stream::StudentWeights,
            Stream::StudentBatches,
            Stream::TeacherWeights,
            Stream::TeacherBatches,
            Stream::ShardTeachers,
            Stream::Validation,
            Stream::TargetValidation,
            Stream::PublicBatches,
            Stream::TeacherPublicBatches,
        ];
        for seed in [0u64, 1, 42, u64::MAX] {
            let seeds: std::collections::BTreeSet<u64> = all.iter().map(|s| s.seed(seed)).collect();
            assert_eq!(seeds.len(), all.len(), "seed {seed}: two streams collide");
        }
        assert_ne!(
            Stream::StudentBatches.seed(1),
            Stream::StudentBatches.seed(2)
        );
    }
}
