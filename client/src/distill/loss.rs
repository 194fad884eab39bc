//! The distillation loss, exactly as the field writes it:
//! `L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`.

use candle_core::{D, Tensor};

use crate::distill::student::ModelError;

/// The distillation term `T^2 * KL(softmax(log p / T) || softmax(s / T))`, averaged over rows.
///
/// `teacher_probs` are probability vectors (the global target); tempering them as
/// `softmax(log p / T)` equals `softmax(t / T)` for any logits `t` with `softmax(t) = p`, so this
/// is exactly the field's `KL(softmax(t/T) || softmax(s/T))`.
pub fn distillation_term(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temperature: f64,
) -> Result<Tensor, ModelError> {
    Ok(distillation_rows(student_logits, teacher_probs, temperature)?.mean_all()?)
}

/// The per-row terms `T^2 * KL(...)` of [`distillation_term`], shape `[n]`.
pub fn distillation_rows(
    student_logits: &Tensor,
    teacher_probs: &Tensor,
    temperature: f64,
) -> Result<Tensor, ModelError> {
    let log_teacher = temper_log(teacher_probs, temperature)?;
    let teacher = log_teacher.exp()?;
    let log_student = candle_nn::ops::log_softmax(&(student_logits / temperature)?, D::Minus1)?;
    let kl = (teacher * (log_teacher - log_student)?)?.sum(D::Minus1)?;
    Ok((kl * (temperature * temperature))?)
}

/// Confidence of each probability row: `1 - H(p) / ln(classes)`, in `[0, 1]` (0 for a uniform
/// row, 1 for a one-hot row). Shape `[n]`.
pub fn row_confidence(probs: &Tensor) -> Result<Tensor, ModelError> {
    let classes = probs.dims2()?.1.max(2);
    let p = probs.clamp(1e-7f32, 1f32)?;
    let entropy = (p.log()? * &p)?.sum(D::Minus1)?.neg()?;
    Ok((1.0 - (entropy / (classes as f64).ln())?)?.clamp(0f32, 1f32)?)
}

/// `log softmax(log p / T)` of probability rows, with `p` floored at 1e-7 so zeros stay finite.
fn temper_log(probs: &Tensor, temperature: f64) -> Result<Tensor, ModelError> {
    let logp = probs.clamp(1e-7f32, 1f32)?.log()?;
    Ok(candle_nn::ops::log_softmax(
        &(logp / temperature)?,
        D::Minus1,
    )?)
}

/// The full loss `alpha * CE(y, s) + (1 - alpha) * T^2 * KL(...)`, where the cross-entropy is
/// on a batch of private records and the distillation term on a batch of public records.
/// With `row_weights`, each public row's term is scaled by its weight (see [`row_confidence`]).
pub fn distillation_loss(
    private_logits: &Tensor,
    private_labels: &Tensor,
    public_logits: &Tensor,
    target_probs: &Tensor,
    alpha: f64,
    temperature: f64,
    row_weights: Option<&Tensor>,
) -> Result<Tensor, ModelError> {
    let ce = candle_nn::loss::cross_entropy(private_logits, private_labels)?;
    let rows = distillation_rows(public_logits, target_probs, temperature)?;
    let kd = match row_weights {
        Some(w) => (rows * w)?.mean_all()?,
        None => rows.mean_all()?,
    };
    Ok(((ce * alpha)? + (kd * (1.0 - alpha))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::device;

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn distillation_term_matches_a_hand_computed_kl() {
        // One row, T = 2. Student logits s = [1, 0]; teacher probs p = [0.8, 0.2].
        // Tempered teacher: softmax(ln p / 2) = [sqrt .8, sqrt .2] / (sqrt .8 + sqrt .2)
        //   = [2/3, 1/3] (since sqrt(.8) = 2 sqrt(.2)).
        // Tempered student: softmax([0.5, 0]) = [0.622459, 0.377541] (e^.5 / (1 + e^.5)).
        // KL = 2/3 ln((2/3)/0.622459) + 1/3 ln((1/3)/0.377541) = 0.0042295,
        // times T^2 = 4: 0.0169179. (Computed with Python's math module.)
        let s = Tensor::new(&[[1f32, 0.0]], &device()).unwrap();
        let p = Tensor::new(&[[0.8f32, 0.2]], &device()).unwrap();
        let v = scalar(&distillation_term(&s, &p, 2.0).unwrap());
        assert!((v - 0.0169179).abs() < 1e-5, "{v}");
    }

    #[test]
    fn full_loss_matches_an_independent_implementation() {
        // Two rows, three classes, T = 3, alpha = 0.4. The teacher's probabilities are
        // softmax(teacher logits); the tempered teacher is then softmax(t / T).
        // Reference, plain Python 3 (math only, log-sum-exp by hand):
        //   ce   = mean(-log_softmax(private_logits)[label])      = 1.3310694761052082
        //   kl   = mean(sum(pt * (log pt - log_softmax(s / T))))    = 0.04577473239445417
        //          with pt = softmax(t / T)
        //   loss = 0.4 * ce + 0.6 * 9 * kl                          = 0.7796113453721358
        let d = device();
        let private_logits = Tensor::new(&[[2f32, -1.0, 0.5], [0.1, 0.2, -0.3]], &d).unwrap();
        let labels = Tensor::new(&[2u32, 1], &d).unwrap();
        let public_logits = Tensor::new(&[[1.5f32, 0.0, -1.0], [-0.5, 2.0, 0.3]], &d).unwrap();
        let teacher_logits = Tensor::new(&[[3f32, 1.0, -2.0], [0.0, 1.0, 1.5]], &d).unwrap();
        let teacher = candle_nn::ops::softmax_last_dim(&teacher_logits).unwrap();
        let kd = scalar(&distillation_term(&public_logits, &teacher, 3.0).unwrap());
        assert!((kd - 9.0 * 0.04577473239445417).abs() < 1e-5, "{kd}");
        let l = scalar(
            &distillation_loss(
                &private_logits,
                &labels,
                &public_logits,
                &teacher,
                0.4,
                3.0,
                None,
            )
            .unwrap(),
        );
        assert!((l - 0.7796113453721358).abs() < 1e-5, "{l}");
    }

    #[test]
    fn distillation_term_is_zero_when_student_matches_teacher() {
        let s = Tensor::new(&[[2f32, -1.0, 0.5]], &device()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        assert!(scalar(&distillation_term(&s, &p, 4.0).unwrap()).abs() < 1e-5);
    }

    #[test]
    fn loss_mixes_the_two_terms_by_alpha() {
        let s = Tensor::new(&[[1f32, 0.0]], &device()).unwrap();
        let y = Tensor::new(&[0u32], &device()).unwrap();
        let p = Tensor::new(&[[0.8f32, 0.2]], &device()).unwrap();
        // CE of [1, 0] against class 0 = ln(1 + e^-1) = 0.313262; KD term = 0.0169179 (above).
        let l = scalar(&distillation_loss(&s, &y, &s, &p, 0.7, 2.0, None).unwrap());
        let expected = 0.7 * 0.313262 + 0.3 * 0.0169179;
        assert!((l - expected).abs() < 1e-5, "{l} vs {expected}");
    }

    #[test]
    fn confidence_is_zero_for_uniform_and_one_for_one_hot_rows() {
        let p = Tensor::new(
            &[
                [0.25f32, 0.25, 0.25, 0.25],
                [1.0, 0.0, 0.0, 0.0],
                [0.5, 0.5, 0.0, 0.0],
            ],
            &device(),
        )
        .unwrap();
        let c: Vec<f32> = row_confidence(&p).unwrap().to_vec1().unwrap();
        assert!(c[0].abs() < 1e-5 && (c[1] - 1.0).abs() < 1e-4);
        // Two equal classes of four: H = ln 2, so 1 - ln 2 / ln 4 = 0.5.
        assert!((c[2] - 0.5).abs() < 1e-4, "{}", c[2]);
    }
}
