//! A saved student on a CSV file: predictions, or accuracy and macro-F1 against labels.

use std::path::Path;

use crate::NodeError;
use crate::data::{self, matrix};
use crate::distill::{ModelError, Student};
use crate::evaluate::metrics::{accuracy, macro_f1};

/// Predicts every row of `input` (the model's feature columns, any order; its label column, if
/// there, is ignored) with the
/// student saved in `model_dir`, and writes `output`: a `predicted` class and one probability
/// column per class. Returns the number of rows.
pub fn predict_csv(model_dir: &Path, input: &Path, output: &Path) -> Result<usize, NodeError> {
    let (student, card) = Student::load(model_dir)?;
    let table = data::read_public_csv(input, &card.columns, Some(&card.label_column))?;
    let x = matrix(card.standardiser.apply(&table), table.width()).map_err(ModelError::from)?;
    let probs = student.probabilities(&x)?;
    let classes = card.student.classes;
    let out = |source| NodeError::Output {
        path: output.to_path_buf(),
        source,
    };
    let mut text = String::from("predicted");
    for c in 0..classes {
        text.push_str(&format!(",p{c}"));
    }
    text.push('\n');
    for row in probs.chunks(classes) {
        text.push_str(&fd_protocol::arg_max(row.iter().copied()).to_string());
        for p in row {
            text.push_str(&format!(",{p:.6}"));
        }
        text.push('\n');
    }
    std::fs::write(output, text).map_err(out)?;
    Ok(table.rows())
}

/// Accuracy and macro-F1 of the student saved in `model_dir` on a labelled CSV (the model's
/// feature columns plus its label column).
pub fn evaluate_csv(model_dir: &Path, input: &Path) -> Result<(usize, f64, f64), NodeError> {
    let (student, card) = Student::load(model_dir)?;
    let table = data::read_labelled_csv(input, &card.label_column, card.student.classes)?
        .reorder(&card.columns, input)?;
    let x = matrix(card.standardiser.apply(&table), table.width()).map_err(ModelError::from)?;
    let predicted: Vec<u32> = student
        .forward(&x)?
        .argmax(candle_core::D::Minus1)
        .map_err(ModelError::from)?
        .to_vec1()
        .map_err(ModelError::from)?;
    Ok((
        table.rows(),
        accuracy(&predicted, &table.labels),
        macro_f1(&predicted, &table.labels),
    ))
}
