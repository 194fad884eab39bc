//! Built-in datasets. Nothing is downloaded: digits and breast cancer ship inside `smartcore`.

use fd_client::data::Table;

/// A labelled dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name, for reports.
    pub name: String,
    /// Features and labels.
    pub table: Table,
    /// Number of classes.
    pub classes: usize,
    /// Whether rows are images (changes the default distillation temperature).
    pub images: bool,
}

/// Which built-in dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// 1797 8x8 images of handwritten digits, 10 classes (UCI optdigits test set).
    Digits,
    /// 569 tumours with 30 features, 2 classes (Wisconsin diagnostic breast cancer).
    BreastCancer,
}

/// Loads a built-in dataset.
pub fn load(kind: DatasetKind) -> Dataset {
    let (name, raw, labels, images) = match kind {
        DatasetKind::Digits => {
            let raw = smartcore::dataset::digits::load_dataset();
            let labels = raw.target.iter().map(|&y| y.round() as u32).collect();
            ("digits", raw.data, labels, true)
        }
        DatasetKind::BreastCancer => {
            let raw = smartcore::dataset::breast_cancer::load_dataset();
            ("breast-cancer", raw.data, raw.target, false)
        }
    };
    let labels: Vec<u32> = labels;
    let width = raw.len() / labels.len().max(1);
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let columns = (0..width).map(|j| format!("f{j}")).collect();
    Dataset {
        name: name.into(),
        table: Table {
            columns,
            features: raw,
            labels,
        },
        classes,
        images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_datasets_have_their_documented_shapes() {
        // Shapes from the datasets' documentation (UCI): digits 1797 x 64, 10 classes;
        // breast cancer 569 x 30, 2 classes.
        let d = load(DatasetKind::Digits);
        assert_eq!((d.table.rows(), d.table.width(), d.classes), (1797, 64, 10));
        let b = load(DatasetKind::BreastCancer);
        assert_eq!((b.table.rows(), b.table.width(), b.classes), (569, 30, 2));
    }
}
