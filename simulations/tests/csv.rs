//! `fd-sim --csv FILE --label COLUMN` on a file the test writes: the same split, baselines and
//! table as a built-in dataset, CNN students with `--image-shape`, and clear errors for a
//! missing label column or a shape that does not fit.

use std::path::Path;
use std::process::{Command, Output};

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

/// Few clients, rounds and steps, no local teacher: about a second a run.
const FAST: &[&str] = &[
    "--clients",
    "3",
    "--rounds",
    "3",
    "--local-steps",
    "60",
    "--steps-per-round",
    "20",
    "--no-teacher",
];

/// Writes `rows` records of three Gaussian blobs (unit variance, one per class) in `features`
/// dimensions to `path`, with the label column `species` between the features. Centre `k` sits
/// at 6 on feature `k` and 0 elsewhere, so two centres are 6 x sqrt(2) = 8.5 standard deviations
/// apart: a nearest-centre rule errs on well under 0.1% of the records. Classes take turns, so
/// they are balanced; the split shuffles the rows.
fn write_blobs(path: &Path, rows: usize, features: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut header: Vec<String> = (0..features).map(|j| format!("x{j}")).collect();
    header.insert(1, "species".into());
    let mut text = header.join(",") + "\n";
    for i in 0..rows {
        let class = i % 3;
        let mut fields: Vec<String> = (0..features)
            .map(|j| {
                let centre = if j == class { 6.0 } else { 0.0 };
                let z: f64 = StandardNormal.sample(&mut rng);
                format!("{:.4}", centre + z)
            })
            .collect();
        fields.insert(1, class.to_string());
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Runs the built fd-sim with `FAST` and `args`.
fn fd_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fd-sim"))
        .args(FAST)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("starting fd-sim")
}

/// Fails the test with fd-sim's output unless it succeeded.
fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fd-sim failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The error fd-sim printed; fails the test if it succeeded.
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "fd-sim succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_csv_of_three_blobs_federates_far_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("blobs.csv");
    let json = dir.path().join("run.json");
    write_blobs(&data, 300, 4);
    let stdout = succeeded(&fd_sim(&[
        "--csv",
        data.to_str().unwrap(),
        "--label",
        "species",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert!(stdout.contains("dataset blobs.csv | 3 clients"), "{stdout}");
    assert!(stdout.contains("centralised upper bound"), "{stdout}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(value["config"]["dataset"], "csv");
    // Labels 0, 1, 2: three classes inferred; four feature columns, 300 records.
    assert_eq!(value["config"]["csv"]["classes"], 3);
    assert_eq!(value["config"]["csv"]["features"], 4);
    assert_eq!(value["config"]["csv"]["records"], 300);
    // The built-in datasets' split: 20% test (60 records) and 20% public (60).
    assert_eq!(value["test_records"], 60);
    assert_eq!(value["public_records"], 60);
    // Chance is 1/3 on three balanced classes, and the blobs are almost perfectly separable;
    // 0.8 leaves room for a run of a few dozen steps yet fails a run that learnt little.
    let federated = value["federated_mean_acc"].as_f64().unwrap();
    assert!(federated > 0.8, "federated mean accuracy {federated}");
}

#[test]
fn an_image_shape_lets_cnn_students_learn_from_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images.csv");
    let json = dir.path().join("run.json");
    // 16 features read as 4x4 images.
    write_blobs(&data, 300, 16);
    succeeded(&fd_sim(&[
        "--csv",
        data.to_str().unwrap(),
        "--label",
        "species",
        "--image-shape",
        "4x4",
        "--student",
        "cnn",
        "--json",
        json.to_str().unwrap(),
    ]));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let student = value["clients"][0]["student"].as_str().unwrap();
    assert!(student.starts_with("cnn"), "{student}");
    // As above: chance is 1/3, the blobs are almost separable.
    let federated = value["federated_mean_acc"].as_f64().unwrap();
    assert!(federated > 0.8, "federated mean accuracy {federated}");
}

#[test]
fn a_missing_label_column_is_named_with_the_file_and_the_columns_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("blobs.csv");
    write_blobs(&data, 30, 2);
    let err = failed(&fd_sim(&[
        "--csv",
        data.to_str().unwrap(),
        "--label",
        "label",
    ]));
    assert!(err.contains("no label column 'label'"), "{err}");
    assert!(err.contains("blobs.csv"), "{err}");
    assert!(err.contains("columns: x0, species, x1"), "{err}");
}

#[test]
fn an_image_shape_that_does_not_fit_the_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("blobs.csv");
    write_blobs(&data, 30, 4);
    let path = data.to_str().unwrap();
    let err = failed(&fd_sim(&[
        "--csv",
        path,
        "--label",
        "species",
        "--image-shape",
        "3x3",
    ]));
    assert!(err.contains("--image-shape 3x3 is 9 pixels"), "{err}");
    assert!(err.contains("4 feature columns"), "{err}");
    let err = failed(&fd_sim(&[
        "--csv",
        path,
        "--label",
        "species",
        "--image-shape",
        "4by4",
    ]));
    assert!(err.contains("'4by4' is not HEIGHTxWIDTH"), "{err}");
}

#[test]
fn csv_and_a_built_in_dataset_cannot_both_be_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("blobs.csv");
    write_blobs(&data, 30, 2);
    let err = failed(&fd_sim(&[
        "--csv",
        data.to_str().unwrap(),
        "--label",
        "species",
        "--dataset",
        "digits",
    ]));
    assert!(err.contains("cannot be used with"), "{err}");
}
