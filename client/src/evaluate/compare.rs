//! How much of its teacher a student keeps, at what size and what speed.
//!
//! The *teacher* a student is compared with:
//! - in private mode, the node's shard ensemble (DESIGN.md "Distillation"): all `k` teachers'
//!   parameters, the time to compute their summed votes, and their hidden activations side by
//!   side as the representation;
//! - in non-private mode, the node's larger local teacher ([`crate::distill::LocalTeacherConfig`]),
//!   the same model feature distillation reads.
//!
//! Speed is *measured*, not estimated: the median wall-clock time of several passes over the
//! public set on the calling thread. It depends on the machine and its load, so it is reported,
//! never asserted.

use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Labelled;
use crate::distill::Learner;
use crate::distill::{ModelError, Student};
use crate::evaluate::metrics::{accuracy, linear_cka, macro_f1};
use crate::privacy::release::Labeller;
use crate::privacy::teachers::{TeacherEnsemble, Votes};

/// Timed passes over the public set per model (after one untimed warm-up pass).
pub const TIMING_REPETITIONS: usize = 15;

/// The model a student is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// The node's larger local teacher (non-private mode).
    LocalTeacher(&'a Student),
    /// The node's shard ensemble (private mode).
    Ensemble(&'a TeacherEnsemble),
}

impl Reference<'_> {
    /// Which teacher, in words.
    pub fn describe(&self) -> String {
        match self {
            Reference::LocalTeacher(t) => format!("local teacher {}", t.config().describe()),
            Reference::Ensemble(e) => format!(
                "shard ensemble of {} teachers {}",
                e.config().teachers,
                e.describe_teacher()
            ),
        }
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        match self {
            Reference::LocalTeacher(t) => t.parameters(),
            Reference::Ensemble(e) => e.parameters(),
        }
    }

    /// The representation compared with the student's.
    pub fn representation(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Reference::LocalTeacher(t) => t.features(x),
            Reference::Ensemble(e) => e.hidden_features(x),
        }
    }

    /// The teacher's predicted classes for `x`.
    fn predict(&self, x: &Tensor) -> Result<Vec<u32>, ModelError> {
        let scores = match self {
            Reference::LocalTeacher(t) => t.forward(x)?,
            Reference::Ensemble(e) => {
                let sums: Vec<f32> = e
                    .vote_sums(x, Votes::Soft)?
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                let rows = x.dims2()?.0;
                Tensor::from_vec(sums, (rows, e.config().classes), x.device())?
            }
        };
        Ok(scores.argmax(candle_core::D::Minus1)?.to_vec1()?)
    }

    /// What the teacher computes when it labels: probabilities (or vote sums) for `x`.
    fn infer(&self, x: &Tensor) -> Result<usize, ModelError> {
        Ok(match self {
            Reference::LocalTeacher(t) => t.probabilities(x)?.len(),
            Reference::Ensemble(e) => e.vote_sums(x, Votes::Soft)?.len(),
        })
    }
}

/// The teacher a node's student is measured against: the shard ensemble in private mode,
/// otherwise the local teacher if there is one.
pub fn reference<'a>(labeller: &'a Labeller, learner: &'a Learner) -> Option<Reference<'a>> {
    match labeller {
        Labeller::Private(p) => Some(Reference::Ensemble(&p.ensemble)),
        Labeller::Student => learner.local_teacher().map(Reference::LocalTeacher),
    }
}

/// A student's quality, size, speed and knowledge retention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudentMetrics {
    /// Accuracy on the held-out set.
    pub accuracy: f64,
    /// Macro-averaged F1 on the held-out set.
    pub macro_f1: f64,
    /// The student's architecture, e.g. `mlp[256]`.
    pub student: String,
    /// The student's trainable parameters.
    pub student_parameters: usize,
    /// The teacher compared with, in words (`None`: no teacher, no comparison).
    pub teacher: Option<String>,
    /// The teacher's trainable parameters.
    pub teacher_parameters: Option<usize>,
    /// Teacher parameters / student parameters.
    pub compression_ratio: Option<f64>,
    /// Measured: median seconds of one student pass over the public set.
    pub student_seconds: f64,
    /// Measured: median seconds of one teacher pass over the public set.
    pub teacher_seconds: Option<f64>,
    /// Measured: teacher time / student time (above 1: the student is faster).
    pub speedup: Option<f64>,
    /// Linear CKA between the student's and the teacher's representations of the public set.
    pub cka: Option<f64>,
    /// The teacher's own held-out accuracy (the ensemble's: arg-max of its summed votes).
    pub teacher_accuracy: Option<f64>,
    /// How the times were measured.
    pub timing: String,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn seconds(f: &mut impl FnMut() -> Result<usize, ModelError>) -> Result<f64, ModelError> {
    let started = Instant::now();
    std::hint::black_box(f()?);
    Ok(started.elapsed().as_secs_f64())
}

/// Times `student` and `teacher` in alternation, `repetitions` times each after one untimed
/// warm-up call of each, so that changing load on the machine hits both alike. Returns the
/// median student time, the median teacher time and the median of the per-pair ratios
/// teacher / student.
fn interleaved_timing(
    repetitions: usize,
    mut student: impl FnMut() -> Result<usize, ModelError>,
    mut teacher: Option<impl FnMut() -> Result<usize, ModelError>>,
) -> Result<(f64, Option<f64>, Option<f64>), ModelError> {
    seconds(&mut student)?;
    if let Some(t) = teacher.as_mut() {
        seconds(t)?;
    }
    let (mut s_times, mut t_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repetitions.max(1) {
        let s = seconds(&mut student)?;
        s_times.push(s);
        if let Some(t) = teacher.as_mut() {
            let t = seconds(t)?;
            t_times.push(t);
            ratios.push(t / s.max(1e-12));
        }
    }
    let teacher_time = (!t_times.is_empty()).then(|| median(t_times));
    let ratio = (!ratios.is_empty()).then(|| median(ratios));
    Ok((median(s_times), teacher_time, ratio))
}

/// Measures `student` on `holdout` and against `teacher` on the `public` records.
pub fn measure(
    student: &Student,
    teacher: Option<Reference<'_>>,
    holdout: &Labelled,
    public: &Tensor,
) -> Result<StudentMetrics, ModelError> {
    let predicted: Vec<u32> = if holdout.is_empty() {
        Vec::new()
    } else {
        student
            .forward(&holdout.x)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1()?
    };
    let rows = public.dims()[0];
    let (student_seconds, teacher_seconds, speedup) = interleaved_timing(
        TIMING_REPETITIONS,
        || Ok(student.probabilities(public)?.len()),
        teacher.map(|t| move || t.infer(public)),
    )?;
    let cka = match &teacher {
        Some(t) => Some(linear_cka(
            &student.features(public)?,
            &t.representation(public)?,
        )?),
        None => None,
    };
    let teacher_accuracy = match &teacher {
        Some(t) if !holdout.is_empty() => Some(accuracy(&t.predict(&holdout.x)?, &holdout.labels)),
        _ => None,
    };
    let student_parameters = student.parameters();
    Ok(StudentMetrics {
        accuracy: accuracy(&predicted, &holdout.labels),
        macro_f1: macro_f1(&predicted, &holdout.labels),
        student: student.config().describe(),
        student_parameters,
        teacher: teacher.map(|t| t.describe()),
        teacher_parameters: teacher.map(|t| t.parameters()),
        compression_ratio: teacher.map(|t| t.parameters() as f64 / student_parameters as f64),
        student_seconds,
        teacher_seconds,
        speedup,
        cka,
        teacher_accuracy,
        timing: format!(
            "measured: {TIMING_REPETITIONS} alternating passes of student and teacher over the \
             {rows} public records on one thread; median times, speed-up the median of the \
             per-pass ratios"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::matrix;
    use crate::distill::StudentConfig;

    fn mlp(hidden: Vec<usize>, seed: u64) -> Student {
        let config = StudentConfig {
            inputs: 3,
            classes: 2,
            hidden,
            dropout: 0.0,
            conv: None,
        };
        Student::new(config, seed).unwrap()
    }

    #[test]
    fn a_student_measured_against_itself_and_a_bigger_teacher() {
        let public = matrix((0..60).map(|v| (v % 11) as f32 - 5.0).collect(), 3).unwrap();
        let holdout = Labelled::new(vec![1.0, 0.0, -1.0, 0.5, 2.0, -2.0], 3, vec![0, 1]).unwrap();
        let student = mlp(vec![4], 1);
        let same = measure(
            &student,
            Some(Reference::LocalTeacher(&student)),
            &holdout,
            &public,
        )
        .unwrap();
        // The same representation: CKA 1, compression 1.
        assert!((same.cka.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(same.compression_ratio, Some(1.0));
        assert_eq!(same.teacher_accuracy, Some(same.accuracy));

        let teacher = mlp(vec![32, 16], 2);
        let m = measure(
            &student,
            Some(Reference::LocalTeacher(&teacher)),
            &holdout,
            &public,
        )
        .unwrap();
        // mlp[4]: 3*4+4 + 4*2+2 = 26; mlp[32,16]: 3*32+32 + 32*16+16 + 16*2+2 = 690.
        assert_eq!(m.student_parameters, 26);
        assert_eq!(m.teacher_parameters, Some(690));
        assert_eq!(m.compression_ratio, Some(690.0 / 26.0));
        assert_eq!(m.teacher.as_deref(), Some("local teacher mlp[32,16]"));
        let cka = m.cka.unwrap();
        assert!((0.0..=1.0 + 1e-9).contains(&cka), "{cka}");
        // Measured, so only that it was measured.
        assert!(m.speedup.is_some_and(|s| s > 0.0) && m.student_seconds > 0.0);

        let alone = measure(&student, None, &holdout, &public).unwrap();
        assert_eq!(
            (alone.compression_ratio, alone.speedup, alone.cka),
            (None, None, None)
        );
    }
}
