//! Datasets: the built-in ones, and a user's labelled CSV file ([`load_csv`]). Nothing is
//! downloaded: digits and breast cancer ship inside `smartcore`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
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
    /// Generated class-conditional Gaussian mixtures, as large as asked (see `SyntheticSpec`).
    Synthetic,
    /// A labelled CSV file (`fd-sim --csv`, see [`load_csv`]); not a `--dataset` choice.
    #[value(skip)]
    Csv,
}

/// Loads a built-in dataset; `None` for [`DatasetKind::Synthetic`], which is generated per
/// client by [`synthetic`], and for [`DatasetKind::Csv`], which [`load_csv`] reads.
pub fn load(kind: DatasetKind) -> Option<Dataset> {
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
        DatasetKind::Synthetic | DatasetKind::Csv => return None,
    };
    let labels: Vec<u32> = labels;
    let width = raw.len() / labels.len().max(1);
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let columns = (0..width).map(|j| format!("f{j}")).collect();
    Some(Dataset {
        name: name.into(),
        table: Table {
            columns,
            features: raw,
            labels,
        },
        classes,
        images,
    })
}

/// Most classes a CSV file may have: the protocol carries the class count as a 16-bit number.
pub const MAX_CSV_CLASSES: usize = u16::MAX as usize;

/// A user's labelled CSV file, as `fd-sim --csv` loads it: where it came from (what the JSON
/// reports) and its records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CsvData {
    /// The file.
    pub path: PathBuf,
    /// The label column.
    pub label_column: String,
    /// Number of classes (given, or the largest label + 1).
    pub classes: usize,
    /// Records read.
    pub records: usize,
    /// Feature columns (every column but the label).
    pub features: usize,
    /// The records, features then labels (not written to the JSON).
    #[serde(skip)]
    pub dataset: Arc<Dataset>,
}

/// Reads a labelled CSV file with the client's reader (`fd_client::data::read_labelled_csv`),
/// so a bad file is reported by file, line and column: every column but `label_column` must be
/// numeric, and labels must be class indices. With `classes` `None`, the number of classes is
/// the largest label + 1 (labels must then be below [`MAX_CSV_CLASSES`]).
pub fn load_csv(
    path: &Path,
    label_column: &str,
    classes: Option<usize>,
) -> anyhow::Result<CsvData> {
    if let Some(c) = classes {
        anyhow::ensure!(
            (2..=MAX_CSV_CLASSES).contains(&c),
            "--classes {c}: a classifier needs between 2 and {MAX_CSV_CLASSES} classes"
        );
    }
    let bound = classes.unwrap_or(MAX_CSV_CLASSES);
    let table =
        fd_client::data::read_labelled_csv(path, label_column, bound).with_context(|| {
            format!("reading the labelled data (--csv, label column '{label_column}')")
        })?;
    let largest = table.labels.iter().copied().max().unwrap_or(0) as usize;
    let classes = classes.unwrap_or(largest + 1);
    anyhow::ensure!(
        classes >= 2,
        "{}: column '{label_column}' holds only class 0; a classifier needs at least two classes",
        path.display()
    );
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(CsvData {
        path: path.to_path_buf(),
        label_column: label_column.to_owned(),
        classes,
        records: table.rows(),
        features: table.width(),
        dataset: Arc::new(Dataset {
            name,
            table,
            classes,
            images: false,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn synthetic_has_requested_shape_and_skew() {
        let spec = SyntheticSpec {
            records_per_client: 500,
            features: 5,
            classes: 4,
            test_records: 40,
            public_records: 20,
            ..SyntheticSpec::default()
        };
        let s = synthetic(&spec, 3, 0.1, &mut StdRng::seed_from_u64(1));
        assert_eq!(s.clients.len(), 3);
        assert!(s.clients.iter().all(|t| t.rows() == 500 && t.width() == 5));
        assert_eq!(
            (s.test.rows(), s.public.rows(), s.public_labels.len()),
            (40, 20, 20)
        );
        assert!(s.public.labels.is_empty());
        // Balanced test set: 10 of each of 4 classes.
        assert!((0..4).all(|k| s.test.labels.iter().filter(|&&y| y == k).count() == 10));
        // beta = 0.1 concentrates each client on few classes: its largest class holds most of
        // its records (IID would give about a quarter).
        for t in &s.clients {
            let top = (0..4)
                .map(|k| t.labels.iter().filter(|&&y| y == k).count())
                .max()
                .unwrap();
            assert!(top > 250, "largest class has {top} of 500");
        }
    }

    #[test]
    fn builtin_datasets_have_their_documented_shapes() {
        // Shapes from the datasets' documentation (UCI): digits 1797 x 64, 10 classes;
        // breast cancer 569 x 30, 2 classes.
        let d = load(DatasetKind::Digits).unwrap();
        assert_eq!((d.table.rows(), d.table.width(), d.classes), (1797, 64, 10));
        let b = load(DatasetKind::BreastCancer).unwrap();
        assert!(load(DatasetKind::Synthetic).is_none());
        assert_eq!((b.table.rows(), b.table.width(), b.classes), (569, 30, 2));
    }

    #[test]
    fn a_csv_file_gives_its_features_and_infers_the_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, "a,y,b\n0.5,0,1\n1.5,2,2\n2.5,1,3\n").unwrap();
        let csv = load_csv(&path, "y", None).unwrap();
        // Labels 0, 2 and 1: three classes; columns a and b are the features.
        assert_eq!((csv.classes, csv.records, csv.features), (3, 3, 2));
        assert_eq!(csv.dataset.table.columns, ["a", "b"]);
        assert_eq!(csv.dataset.table.features, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(csv.dataset.name, "data.csv");
        // Given, the class count bounds the labels: label 2 on line 3 is out of 0..2.
        let err = format!("{:#}", load_csv(&path, "y", Some(2)).unwrap_err());
        assert!(err.contains("line 3") && err.contains("'y'"), "{err}");
        assert!(load_csv(&path, "y", Some(1)).is_err());
    }

    #[test]
    fn a_csv_file_of_one_class_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.csv");
        std::fs::write(&path, "x,label\n1,0\n2,0\n").unwrap();
        let err = load_csv(&path, "label", None).unwrap_err().to_string();
        assert!(err.contains("only class 0"), "{err}");
    }
}

/// Shape of the synthetic non-IID dataset: class-conditional Gaussian mixtures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SyntheticSpec {
    /// Private records per client.
    pub records_per_client: usize,
    /// Features.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Mixture components per class.
    pub modes: usize,
    /// Typical distance between component centres, in units of the within-component standard
    /// deviation (1): smaller is harder.
    pub separation: f64,
    /// Records in the shared test set (class-balanced).
    pub test_records: usize,
    /// Records in the public reference set (class-balanced).
    pub public_records: usize,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            records_per_client: 1000,
            features: 20,
            classes: 10,
            modes: 2,
            separation: 5.0,
            test_records: 2000,
            public_records: 500,
        }
    }
}

/// A synthetic federation's data: every client draws its records from the same class-conditional
/// mixtures, but with its own class proportions from Dirichlet(`beta`) (the non-IID knob:
/// small `beta`, few classes per client). Test and public sets are class-balanced.
pub fn synthetic(
    spec: &SyntheticSpec,
    clients: usize,
    beta: f64,
    rng: &mut impl rand::Rng,
) -> crate::partition::Split {
    use rand::RngExt;
    use rand_distr::{Distribution, Gamma, StandardNormal};
    let (f, c, modes) = (spec.features, spec.classes.max(2), spec.modes.max(1));
    // Centres ~ N(0, s^2 / (2f) I), so two independent centres a, b have E|a - b|^2 = s^2:
    // they sit about `separation` within-component standard deviations apart.
    let scale = spec.separation / (2.0 * f as f64).sqrt();
    let centres: Vec<Vec<f64>> = (0..c * modes)
        .map(|_| {
            (0..f)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    z * scale
                })
                .collect()
        })
        .collect();
    let columns: Vec<String> = (0..f).map(|j| format!("x{j}")).collect();
    let draw = |labels: &[u32], rng: &mut dyn rand::Rng| -> Table {
        let mut features = Vec::with_capacity(labels.len() * f);
        for &y in labels {
            let m = rng.random_range(0..modes);
            let centre = &centres[y as usize * modes + m];
            for value in centre {
                let z: f64 = StandardNormal.sample(rng);
                features.push((value + z) as f32);
            }
        }
        Table {
            columns: columns.clone(),
            features,
            labels: labels.to_vec(),
        }
    };
    let balanced = |n: usize| -> Vec<u32> { (0..n).map(|i| (i % c) as u32).collect() };
    let test = draw(&balanced(spec.test_records), rng);
    let mut public = draw(&balanced(spec.public_records), rng);
    let public_labels = std::mem::take(&mut public.labels);
    let gamma = Gamma::new(beta, 1.0).ok();
    let mut tables = Vec::with_capacity(clients);
    for _ in 0..clients {
        let weights: Vec<f64> = (0..c)
            .map(|_| gamma.as_ref().map_or(1.0, |g| g.sample(rng)))
            .collect();
        let total: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let labels: Vec<u32> = (0..spec.records_per_client)
            .map(|_| {
                let mut u = rng.random::<f64>() * total;
                let mut k = 0;
                while k + 1 < c && u >= weights[k] {
                    u -= weights[k];
                    k += 1;
                }
                k as u32
            })
            .collect();
        tables.push(draw(&labels, rng));
    }
    crate::partition::Split {
        test,
        public,
        public_labels,
        clients: tables,
    }
}
