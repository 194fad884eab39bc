//! Loading a node's data: the private labelled CSV and the public reference CSV.
//!
//! Features are numeric columns. The private file has one more column, the label, named in the
//! node's config; the public file has the same feature columns (any order) and no label. Every
//! error names the file, the line and the column.
//!
//! Standardisation statistics come from the *public* set only: they are identical on every
//! node, and they reveal nothing about private records (so they cost no privacy).

mod tensors;

pub use tensors::{Labelled, device, matrix};

use std::path::{Path, PathBuf};

use rand::{Rng, seq::SliceRandom};

/// What went wrong reading a data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CSV structure is broken (for example a row with a different number of fields).
    #[error("{file}: line {line}: {message}")]
    Csv {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A field is not a finite number.
    #[error("{file}: line {line}, column '{column}': '{value}' is not a finite number")]
    NotANumber {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Column name.
        column: String,
        /// The text found.
        value: String,
    },
    /// A label is not a class index in `0..classes`.
    #[error(
        "{file}: line {line}, column '{column}': label '{value}' is not a class index in 0..{classes}"
    )]
    BadLabel {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Label column name.
        column: String,
        /// The text found.
        value: String,
        /// Number of classes.
        classes: usize,
    },
    /// The header lacks a required column or has one too many.
    #[error("{file}: header: {message}")]
    Header {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file has no data rows.
    #[error("{file}: no data rows")]
    Empty {
        /// The file.
        file: PathBuf,
    },
}

/// A table of numeric features, row-major, with optional class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Feature column names, in order.
    pub columns: Vec<String>,
    /// Row-major features: `rows() * columns.len()` values.
    pub features: Vec<f32>,
    /// One label per row (private data), or empty (public data).
    pub labels: Vec<u32>,
}

impl Table {
    /// A fingerprint of the records (SHA-256, hex): the column names and the multiset of
    /// `(features, label)` rows, so the same data in another row order or another file has the
    /// same fingerprint and any changed, added or removed record gives another. The privacy
    /// ledger is bound to it.
    pub fn fingerprint(&self) -> String {
        use ring::digest::{Context, SHA256, digest};
        let w = self.width().max(1);
        let mut rows: Vec<[u8; 32]> = (0..self.rows())
            .map(|i| {
                let mut row = Context::new(&SHA256);
                for v in &self.features[i * w..(i + 1) * w] {
                    row.update(&v.to_le_bytes());
                }
                if let Some(label) = self.labels.get(i) {
                    row.update(&label.to_le_bytes());
                }
                let mut out = [0u8; 32];
                out.copy_from_slice(row.finish().as_ref());
                out
            })
            .collect();
        rows.sort_unstable();
        let mut all = Context::new(&SHA256);
        all.update(b"fd-client private data v1\0");
        for c in &self.columns {
            all.update(digest(&SHA256, c.as_bytes()).as_ref());
        }
        all.update(&(rows.len() as u64).to_le_bytes());
        for r in &rows {
            all.update(r);
        }
        all.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Number of feature columns.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.features.len().checked_div(self.width()).unwrap_or(0)
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.width();
        &self.features[i * w..(i + 1) * w]
    }

    /// A new table of the given rows, in the given order.
    pub fn select(&self, rows: &[usize]) -> Table {
        Table {
            columns: self.columns.clone(),
            features: rows
                .iter()
                .flat_map(|&i| self.row(i).iter().copied())
                .collect(),
            labels: if self.labels.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&i| self.labels[i]).collect()
            },
        }
    }

    /// The same rows with the columns in the order of `columns`; an error names a missing one.
    pub fn reorder(&self, columns: &[String], file: &Path) -> Result<Table, DataError> {
        let mut sources = Vec::with_capacity(columns.len());
        for name in columns {
            let i =
                self.columns
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| DataError::Header {
                        file: file.to_path_buf(),
                        message: format!("missing feature column '{name}'"),
                    })?;
            sources.push(i);
        }
        let features = (0..self.rows())
            .flat_map(|r| sources.iter().map(move |&i| self.row(r)[i]))
            .collect();
        Ok(Table {
            columns: columns.to_vec(),
            features,
            labels: self.labels.clone(),
        })
    }

    /// Splits off a random `fraction` of the rows as a held-out set: `(train, holdout)`.
    /// At least one row stays in each part when there are two or more rows.
    pub fn split_holdout(&self, fraction: f64, rng: &mut impl Rng) -> (Table, Table) {
        let n = self.rows();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut held = ((n as f64) * fraction).round() as usize;
        if n >= 2 {
            held = held.clamp(1, n - 1);
        }
        let (hold, train) = order.split_at(held.min(n));
        (self.select(train), self.select(hold))
    }
}

/// Standardised features are clipped to `[-STANDARD_CLIP, STANDARD_CLIP]`: ten public
/// standard deviations, far past any ordinary record, so no single private record (the CSV
/// reader accepts any finite value, f32::MAX included) can push a model into overflow. The
/// bound is public, fixed before any data is seen.
pub const STANDARD_CLIP: f32 = 10.0;

/// Per-column affine standardisation `(x - mean) / std`, fitted on the public set, then
/// clipped to [`STANDARD_CLIP`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardiser {
    /// Column means.
    pub mean: Vec<f32>,
    /// Column standard deviations (1 where a column is constant).
    pub std: Vec<f32>,
}

impl Standardiser {
    /// Fits means and standard deviations on `table`.
    pub fn fit(table: &Table) -> Standardiser {
        let (n, w) = (table.rows().max(1) as f64, table.width());
        let mut mean = vec![0f64; w];
        let mut sq = vec![0f64; w];
        for i in 0..table.rows() {
            for (j, &v) in table.row(i).iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = (s / n - m * m).max(0.0);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        Standardiser {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Fits one mean and one standard deviation over every value (for images, where a pixel's
    /// meaning must not depend on its position, so that shifted images stay comparable).
    pub fn fit_global(table: &Table) -> Standardiser {
        let values = &table.features;
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        Standardiser {
            mean: vec![mean as f32; table.width()],
            std: vec![std; table.width()],
        }
    }

    /// Applies the standardisation to a table's features, returning row-major values clipped
    /// to [`STANDARD_CLIP`].
    pub fn apply(&self, table: &Table) -> Vec<f32> {
        let w = table.width();
        table
            .features
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                ((v - self.mean[k % w]) / self.std[k % w]).clamp(-STANDARD_CLIP, STANDARD_CLIP)
            })
            .collect()
    }
}

/// Reads a labelled CSV: every column but `label_column` is a numeric feature; labels must be
/// integers in `0..classes`.
pub fn read_labelled_csv(
    path: &Path,
    label_column: &str,
    classes: usize,
) -> Result<Table, DataError> {
    read_csv(path, Some((label_column, classes)), None)
}

/// Reads an unlabelled CSV whose columns must be exactly `columns` (in any order); the result
/// has its columns in the order of `columns`. A column named `ignore` (the label column, in a
/// public file that still carries its labels or a file given to `predict`) is skipped.
pub fn read_public_csv(
    path: &Path,
    columns: &[String],
    ignore: Option<&str>,
) -> Result<Table, DataError> {
    read_csv(path, None, Some((columns, ignore)))
}

/// SHA-256 of a file's bytes, as `sha256sum` computes it.
pub fn file_sha256(path: &Path) -> Result<[u8; 32], DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

/// The 1-based line of the record that starts at byte `offset` of `file`, counted from the
/// newlines before it. The csv crate's own line count is one too low after CRLF line ends
/// (files from Excel, Windows and Python's csv module): it ends a record at the `\r` and
/// starts the next at the `\n`, so line ends at the offset are skipped before counting. Only
/// errors ask, so the file is read again here rather than held while parsing; if it cannot
/// be, the csv crate's `fallback` stands.
fn line_at(file: &Path, offset: u64, fallback: u64) -> u64 {
    let Ok(bytes) = std::fs::read(file) else {
        return fallback;
    };
    let mut end = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    while end < bytes.len() && matches!(bytes[end], b'\r' | b'\n') {
        end += 1;
    }
    1 + bytes[..end].iter().filter(|&&b| b == b'\n').count() as u64
}

fn read_csv(
    path: &Path,
    label: Option<(&str, usize)>,
    expected_columns: Option<(&[String], Option<&str>)>,
) -> Result<Table, DataError> {
    let file = path.to_path_buf();
    let csv_error = |e: csv::Error| csv_error(&file, e);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(csv_error)?;
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_owned)
        .collect();
    let header_error = |message: String| DataError::Header {
        file: file.clone(),
        message,
    };
    if let Some(dup) = header
        .iter()
        .enumerate()
        .find(|(i, h)| header[..*i].contains(h))
        .map(|(_, h)| h)
    {
        return Err(header_error(format!("column '{dup}' appears twice")));
    }
    let label_index = match label {
        Some((name, _)) => Some(header.iter().position(|h| h == name).ok_or_else(|| {
            header_error(format!(
                "no label column '{name}' (columns: {})",
                header.join(", ")
            ))
        })?),
        None => None,
    };
    // For each output feature column, the index of the input field that feeds it.
    let (columns, sources): (Vec<String>, Vec<usize>) = match expected_columns {
        Some((expected, ignore)) => {
            if let Some(extra) = header
                .iter()
                .find(|h| !expected.contains(h) && Some(h.as_str()) != ignore)
            {
                let ignored = ignore
                    .map(|l| format!("; a label column '{l}' would be ignored"))
                    .unwrap_or_default();
                return Err(header_error(format!(
                    "unexpected column '{extra}' (expected exactly the feature columns {}{ignored})",
                    expected.join(", ")
                )));
            }
            let mut sources = Vec::with_capacity(expected.len());
            for name in expected {
                let i = header
                    .iter()
                    .position(|h| h == name)
                    .ok_or_else(|| header_error(format!("missing feature column '{name}'")))?;
                sources.push(i);
            }
            (expected.to_vec(), sources)
        }
        None => header
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != label_index)
            .map(|(i, h)| (h.clone(), i))
            .unzip(),
    };
    if columns.is_empty() {
        return Err(header_error("no feature columns".into()));
    }

    let mut features = Vec::new();
    let mut labels = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = || {
            record
                .position()
                .map_or(0, |p| line_at(&file, p.byte(), p.line()))
        };
        for (name, &src) in columns.iter().zip(&sources) {
            let text = &record[src];
            match text.parse::<f32>() {
                Ok(v) if v.is_finite() => features.push(v),
                _ => {
                    return Err(DataError::NotANumber {
                        line: line(),
                        file,
                        column: name.clone(),
                        value: text.to_owned(),
                    });
                }
            }
        }
        if let (Some(i), Some((name, classes))) = (label_index, label) {
            let text = &record[i];
            match text.parse::<f64>() {
                Ok(v) if v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes => {
                    labels.push(v as u32)
                }
                _ => {
                    return Err(DataError::BadLabel {
                        line: line(),
                        file,
                        column: name.to_owned(),
                        value: text.to_owned(),
                        classes,
                    });
                }
            }
        }
    }
    if features.is_empty() {
        return Err(DataError::Empty { file });
    }
    Ok(Table {
        columns,
        features,
        labels,
    })
}

fn csv_error(file: &Path, e: csv::Error) -> DataError {
    let line = e
        .position()
        .map_or(0, |p| line_at(file, p.byte(), p.line()));
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io {
            file: file.to_path_buf(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DataError::Csv {
            file: file.to_path_buf(),
            line,
            message: format!("{len} fields, but the header has {expected_len}"),
        },
        other => DataError::Csv {
            file: file.to_path_buf(),
            line,
            message: format!("{other:?}"),
        },
    }
}

/// Writes a table as CSV (features, then the label column when the table has labels).
pub fn write_csv(path: &Path, table: &Table, label_column: &str) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    let mut header = table.columns.clone();
    if !table.labels.is_empty() {
        header.push(label_column.to_owned());
    }
    w.write_record(&header)?;
    for i in 0..table.rows() {
        let mut rec: Vec<String> = table.row(i).iter().map(f32::to_string).collect();
        if !table.labels.is_empty() {
            rec.push(table.labels[i].to_string());
        }
        w.write_record(&rec)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn labelled_and_public_files_load_and_align_columns() {
        let dir = tempfile::tempdir().unwrap();
        let private = write(dir.path(), "p.csv", "a,y,b\n1,0,2\n3,1,4\n");
        let t = read_labelled_csv(&private, "y", 2).unwrap();
        assert_eq!(t.columns, ["a", "b"]);
        assert_eq!(t.features, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.labels, [0, 1]);
        // Public columns in another order come back in the private order.
        let public = write(dir.path(), "q.csv", "b,a\n20,10\n");
        let q = read_public_csv(&public, &t.columns, None).unwrap();
        assert_eq!(q.features, [10.0, 20.0]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "bad.csv", "a,y\n1,0\nx,1\n");
        let msg = read_labelled_csv(&bad, "y", 2).unwrap_err().to_string();
        assert!(
            msg.contains("bad.csv") && msg.contains("line 3") && msg.contains("'a'"),
            "{msg}"
        );

        let label = write(dir.path(), "label.csv", "a,y\n1,7\n");
        let msg = read_labelled_csv(&label, "y", 2).unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("'7'"), "{msg}");

        let short = write(dir.path(), "short.csv", "a,y\n1,0\n2\n");
        let msg = read_labelled_csv(&short, "y", 2).unwrap_err().to_string();
        assert!(msg.contains("line 3"), "{msg}");

        let nolabel = write(dir.path(), "nolabel.csv", "a,b\n1,0\n");
        assert!(matches!(
            read_labelled_csv(&nolabel, "y", 2),
            Err(DataError::Header { .. })
        ));

        let extra = write(dir.path(), "extra.csv", "a,z\n1,0\n");
        let msg = read_public_csv(&extra, &["a".into()], None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'z'"), "{msg}");

        let inf = write(dir.path(), "inf.csv", "a\ninf\n");
        assert!(read_public_csv(&inf, &["a".into()], None).is_err());

        let missing = dir.path().join("missing.csv");
        let msg = read_public_csv(&missing, &["a".into()], None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing.csv"), "{msg}");
    }

    #[test]
    fn crlf_files_report_the_same_lines_as_lf_files() {
        // The same three faults as above, with Windows line ends: the csv crate alone reports
        // each one line too low after a CRLF.
        let dir = tempfile::tempdir().unwrap();
        for (name, text, line) in [
            ("nan.csv", "a,y\r\n1,0\r\n2,1\r\nx,1\r\n", "line 4"),
            ("label.csv", "a,y\r\n1,0\r\n1,7\r\n", "line 3"),
            ("short.csv", "a,y\r\n1,0\r\n1,1\r\n2\r\n", "line 4"),
        ] {
            let path = write(dir.path(), name, text);
            let msg = read_labelled_csv(&path, "y", 2).unwrap_err().to_string();
            assert!(msg.contains(line), "{name}: {msg}");
            let lf = write(
                dir.path(),
                &format!("lf-{name}"),
                &text.replace("\r\n", "\n"),
            );
            let msg = read_labelled_csv(&lf, "y", 2).unwrap_err().to_string();
            assert!(msg.contains(line), "lf-{name}: {msg}");
        }
    }

    #[test]
    fn a_label_column_in_a_public_file_is_ignored_and_other_extras_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let public = write(dir.path(), "q.csv", "b,label,a\n20,3,10\n");
        let cols = ["a".to_owned(), "b".to_owned()];
        let q = read_public_csv(&public, &cols, Some("label")).unwrap();
        assert_eq!(q.features, [10.0, 20.0]);
        assert!(q.labels.is_empty());
        // Without naming it, the label column is an unexpected column, and the message lists
        // the columns it expected.
        let msg = read_public_csv(&public, &cols, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'label'") && msg.contains("a, b"), "{msg}");
    }

    #[test]
    fn standardiser_centres_and_scales_and_keeps_constant_columns_finite() {
        let t = Table {
            columns: vec!["a".into(), "c".into()],
            features: vec![1.0, 5.0, 3.0, 5.0],
            labels: vec![],
        };
        let s = Standardiser::fit(&t);
        // Column a: mean 2, population std 1; column c is constant, so std falls back to 1.
        assert_eq!(s.mean, [2.0, 5.0]);
        assert_eq!(s.std, [1.0, 1.0]);
        assert_eq!(s.apply(&t), [-1.0, 0.0, 1.0, 0.0]);
    }

    /// The audit's extreme record: f32::MAX (finite, so the CSV reader takes it) standardised
    /// by a deviation below 1 overflowed to infinity; it is clipped to the public bound.
    #[test]
    fn an_extreme_record_is_clipped_to_the_public_bound() {
        let public = Table {
            columns: vec!["a".into()],
            features: vec![0.0, 0.5, 1.0],
            labels: vec![],
        };
        let s = Standardiser::fit(&public);
        assert!(s.std[0] < 1.0);
        let private = Table {
            columns: vec!["a".into()],
            features: vec![f32::MAX, -f32::MAX, 0.5],
            labels: vec![0, 1, 0],
        };
        assert_eq!(s.apply(&private), [STANDARD_CLIP, -STANDARD_CLIP, 0.0]);
    }

    #[test]
    fn global_standardiser_uses_one_mean_and_std() {
        let t = Table {
            columns: vec!["a".into(), "b".into()],
            features: vec![0.0, 2.0, 4.0, 6.0],
            labels: vec![],
        };
        let s = Standardiser::fit_global(&t);
        // Mean 3, population variance (9 + 1 + 1 + 9) / 4 = 5.
        assert_eq!(s.mean, [3.0, 3.0]);
        assert!((s.std[0] - 5f32.sqrt()).abs() < 1e-6 && s.std[0] == s.std[1]);
    }

    #[test]
    fn the_fingerprint_ignores_row_order_and_sees_any_changed_record() {
        let t = Table {
            columns: vec!["a".into(), "b".into()],
            features: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            labels: vec![0, 1, 0],
        };
        let shuffled = Table {
            features: vec![5.0, 6.0, 1.0, 2.0, 3.0, 4.0],
            labels: vec![0, 0, 1],
            ..t.clone()
        };
        assert_eq!(t.fingerprint(), shuffled.fingerprint());
        assert_eq!(t.fingerprint().len(), 64);
        let mut changed = t.clone();
        changed.features[3] = 4.5;
        let mut relabelled = t.clone();
        relabelled.labels[2] = 1;
        let fewer = t.select(&[0, 1]);
        for other in [changed, relabelled, fewer] {
            assert_ne!(t.fingerprint(), other.fingerprint());
        }
    }

    #[test]
    fn holdout_split_partitions_rows() {
        let t = Table {
            columns: vec!["a".into()],
            features: (0..10).map(|v| v as f32).collect(),
            labels: (0..10).collect(),
        };
        let (train, hold) = t.split_holdout(0.2, &mut StdRng::seed_from_u64(1));
        assert_eq!((train.rows(), hold.rows()), (8, 2));
        let mut all: Vec<u32> = train.labels.iter().chain(&hold.labels).copied().collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
