//! `fd-sim --plots DIR` as a user runs it: the built binary writes the three charts as valid PNG
//! and SVG files with one line per series, says why a chart it cannot draw is missing, and,
//! off a terminal, reports progress as plain log lines.

use std::path::Path;
use std::process::{Command, Output};

/// Few clients, rounds and steps, no local teacher: about a second a run.
const FAST: &[&str] = &[
    "--clients",
    "3",
    "--rounds",
    "3",
    "--local-steps",
    "30",
    "--steps-per-round",
    "10",
    "--no-teacher",
];

/// Runs the built fd-sim with `FAST` and `args`; fails the test with its output unless it
/// succeeds.
fn fd_sim(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fd-sim"))
        .args(FAST)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("starting fd-sim");
    assert!(
        out.status.success(),
        "fd-sim {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Checks that `path` is a PNG of the charts' size.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The eight-byte PNG signature (PNG specification, section 5.2).
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let info = reader.info();
    assert_eq!(
        (info.width, info.height),
        (fd_plot::WIDTH, fd_plot::HEIGHT),
        "{}",
        path.display()
    );
}

/// Checks that `path` is well-formed SVG; returns its number of series (fd-plot draws each
/// series as exactly one `<polyline>` and nothing else as one) and its texts.
fn svg(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not well-formed: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let named = |name: &'static str| {
        doc.descendants()
            .filter(move |n| n.tag_name().name() == name)
    };
    let texts = named("text")
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    (named("polyline").count(), texts)
}

fn svg_series(path: &Path) -> usize {
    svg(path).0
}

#[test]
fn a_sweep_writes_all_three_charts_as_png_and_svg_with_one_line_per_series() {
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let json = dir.path().join("run.json");
    let out = fd_sim(&[
        "--privacy",
        "shards",
        "--epsilon",
        "2,inf",
        "--plots",
        plots.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    for name in ["accuracy-per-round", "epsilon-sweep", "aggregator-weights"] {
        assert_png(&plots.join(format!("{name}.png")));
    }
    // Three clients, all honest: one faint line each, the federated mean, the local-only mean
    // and the centralised bound.
    assert_eq!(svg_series(&plots.join("accuracy-per-round.svg")), 3 + 3);
    // Federated mean and local-only mean against epsilon.
    assert_eq!(svg_series(&plots.join("epsilon-sweep.svg")), 2);
    // One line per client.
    assert_eq!(svg_series(&plots.join("aggregator-weights.svg")), 3);
    let (_, texts) = svg(&plots.join("epsilon-sweep.svg"));
    assert!(
        texts.iter().any(|t| t == "inf"),
        "epsilon inf is labelled: {texts:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("chart written to").count(), 3, "{stdout}");

    // The weights the chart draws are in the JSON: every round aggregated all three clients,
    // and their shares of each round's aggregate add up to one.
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let clients = value["clients"].as_array().unwrap();
    for round in 0..3 {
        let total: f64 = clients
            .iter()
            .map(|c| c["round_weight"][round].as_f64().expect("a weight"))
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "round {round}: {total}");
    }
}

#[test]
fn a_single_run_skips_the_sweep_chart_says_why_and_logs_plain_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = fd_sim(&["--plots", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("chart epsilon-sweep not drawn: one epsilon ran"),
        "{stdout}"
    );
    assert!(!dir.path().join("epsilon-sweep.png").exists());
    assert!(!dir.path().join("epsilon-sweep.svg").exists());
    assert_eq!(
        svg_series(&dir.path().join("accuracy-per-round.svg")),
        3 + 3
    );
    assert_png(&dir.path().join("aggregator-weights.png"));

    // stderr is a pipe here, not a terminal: no bars and no colour codes, one line per round.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\x1b'), "escape codes in {stderr}");
    for round in 1..=3 {
        let line = format!("round {round}/3");
        assert_eq!(stderr.matches(&line).count(), 1, "{line} in {stderr}");
    }
}
