//! fd-sim's charts (`--plots DIR`), drawn with `fd-plot`: accuracy per round, accuracy against
//! epsilon, and each client's aggregation weight per round, each as PNG and SVG.
//!
//! The per-round charts draw one run, which the caller names (`run`: its seed, and which of
//! several runs it is); the sweep chart draws the mean of every run at each epsilon. A chart the
//! results cannot make (no sweep, no weight recorded) is not drawn, and [`write_charts`] says
//! why.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fd_plot::{LineChart, Series};

use crate::federation::SimResult;
use crate::report::SweepRow;

/// File stem of the accuracy-per-round chart.
pub const ACCURACY_PER_ROUND: &str = "accuracy-per-round";
/// File stem of the accuracy-against-epsilon chart.
pub const EPSILON_SWEEP: &str = "epsilon-sweep";
/// File stem of the aggregation-weights chart.
pub const AGGREGATOR_WEIGHTS: &str = "aggregator-weights";

/// File stem of the temperature-search chart (with `--temperature auto`).
pub const TEMPERATURE_SEARCH: &str = "temperature-search";

/// A chart to write, or why it cannot be drawn.
pub type Chart = Result<LineChart, String>;

/// What [`write_charts`] did with one chart.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The chart, written to these files.
    Files(Vec<PathBuf>),
    /// The chart was not drawn, for this reason.
    Skipped {
        /// The chart's file stem.
        name: String,
        /// Why not.
        why: String,
    },
}

/// The dataset, clients, aggregator and privacy of a run, for a subtitle.
fn setting(r: &SimResult) -> String {
    let privacy = match (r.privacy.mode.as_str(), r.privacy.epsilon) {
        ("none", _) => "no privacy".to_owned(),
        (_, Some(e)) => format!("epsilon {e}"),
        (_, None) => "epsilon inf".to_owned(),
    };
    format!(
        "{}, {} clients, aggregator {}, {privacy}",
        r.dataset,
        r.clients.len(),
        r.aggregator
    )
}

/// A flat line at `y` from round 1 to round `rounds`.
fn flat(y: f64, rounds: usize) -> Vec<(f64, f64)> {
    vec![(1.0, y), (rounds as f64, y)]
}

/// Test accuracy after each round: every honest client as a faint line, their mean as the main
/// line, and the local-only mean and the centralised bound as reference lines.
pub fn accuracy_per_round(r: &SimResult, run: &str) -> Chart {
    let rounds = r.rounds.len();
    if rounds == 0 || r.clients.iter().all(|c| c.round_acc.is_empty()) {
        return Err("no client finished a round".into());
    }
    let honest: Vec<_> = r.clients.iter().filter(|c| !c.byzantine).collect();
    let byzantine = r.clients.len() - honest.len();
    let each = if byzantine == 0 {
        "each client".to_owned()
    } else {
        format!("each honest client ({byzantine} byzantine left out)")
    };
    let mut series: Vec<Series> = honest
        .iter()
        .map(|c| Series::faint(each.as_str(), by_round(c.round_acc.iter().copied())))
        .collect();
    series.push(Series::main(
        "federated mean",
        by_round(r.rounds.iter().copied()),
    ));
    series.push(Series::reference(
        "local-only mean",
        flat(r.local_only_mean_acc, rounds),
    ));
    series.push(Series::reference(
        "centralised",
        flat(r.centralized_acc, rounds),
    ));
    Ok(LineChart {
        title: "Test accuracy after each round".into(),
        subtitle: format!(
            "{}; {run}; final federated mean {:.4}",
            setting(r),
            r.federated_mean_acc
        ),
        x_label: "round".into(),
        y_label: "test accuracy".into(),
        series,
        x_integers: true,
        y_include: Some((0.0, 1.0)),
        ..LineChart::default()
    })
}

/// `(round, value)` points, rounds counted from 1.
fn by_round(values: impl Iterator<Item = f64>) -> Vec<(f64, f64)> {
    values
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64, v))
        .collect()
}

/// Each client's share of the aggregate in each round it was weighed in.
pub fn aggregator_weights(r: &SimResult, run: &str) -> Chart {
    if r.clients
        .iter()
        .all(|c| c.round_weight.iter().all(Option::is_none))
    {
        return Err("the coordinator recorded no weight (no round was aggregated)".into());
    }
    let series = r
        .clients
        .iter()
        .map(|c| {
            let name = match &c.fault {
                Some(f) => format!("{} ({f})", c.node),
                None => c.node.clone(),
            };
            let points = c
                .round_weight
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|w| ((i + 1) as f64, w)))
                .collect();
            Series::main(name, points)
        })
        .collect();
    Ok(LineChart {
        title: "Each client's share of the aggregate".into(),
        subtitle: format!(
            "{}; {run}; a dot in each round a client was weighed in",
            setting(r)
        ),
        x_label: "round".into(),
        y_label: "aggregation weight".into(),
        series,
        x_integers: true,
        // From 0 to at least twice an equal share: equal weights sit halfway up.
        y_include: Some((0.0, (2.0 / r.clients.len().max(1) as f64).min(1.0))),
        ..LineChart::default()
    })
}

/// The charts of one run `r` (`run` says which, in subtitles) with its `sweep` chart (or why
/// there is none), and the temperature search's when some client searched.
pub fn run_charts(r: &SimResult, run: &str, sweep: Chart) -> Vec<(&'static str, Chart)> {
    let mut charts = vec![
        (ACCURACY_PER_ROUND, accuracy_per_round(r, run)),
        (EPSILON_SWEEP, sweep),
        (AGGREGATOR_WEIGHTS, aggregator_weights(r, run)),
    ];
    if let Some(chart) = temperature_search(r, run) {
        charts.push((TEMPERATURE_SEARCH, chart));
    }
    charts
}

/// With `--temperature auto`: each client's validation loss at each temperature its search
/// tried (the chosen temperature is in the legend). `None` when no client searched, so runs
/// with a fixed temperature do not mention the chart.
pub fn temperature_search(r: &SimResult, run: &str) -> Option<Chart> {
    if r.clients.iter().all(|c| c.temperature_search.is_none()) {
        return None;
    }
    let series: Vec<Series> = r
        .clients
        .iter()
        .filter_map(|c| {
            let search = c.temperature_search.as_ref()?;
            let points: Vec<(f64, f64)> = search
                .curve
                .iter()
                .map(|p| (p.temperature, p.validation_loss))
                .collect();
            (!points.is_empty())
                .then(|| Series::main(format!("{} (T = {})", c.node, search.chosen), points))
        })
        .collect();
    if series.is_empty() {
        return Some(Err(
            "no client held enough records to search for a temperature".into(),
        ));
    }
    Some(Ok(LineChart {
        title: "Temperature search: validation loss by temperature".into(),
        subtitle: format!(
            "{}; {run}; each client's trial students on its own held-out records",
            setting(r)
        ),
        x_label: "temperature".into(),
        y_label: "validation cross-entropy".into(),
        series,
        ..LineChart::default()
    }))
}

/// Mean federated test accuracy against epsilon, with the local-only mean. `r` is any run of
/// the sweep (for the dataset and clients); `seeds` names the runs behind each point.
pub fn epsilon_sweep(rows: &[SweepRow], r: &SimResult, seeds: &str) -> Chart {
    if rows.len() < 2 {
        return Err(
            "one epsilon ran; a sweep needs several, e.g. --privacy shards --epsilon 1,2,inf"
                .into(),
        );
    }
    let at = |value: fn(&SweepRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|row| (row.epsilon.unwrap_or(f64::INFINITY), value(row)))
            .collect()
    };
    let delta = r
        .privacy
        .delta
        .map_or(String::new(), |d| format!(", delta {d}"));
    Ok(LineChart {
        title: "Test accuracy against epsilon".into(),
        subtitle: format!(
            "{}, {} clients{delta}; each point the mean of {seeds}",
            r.dataset,
            r.clients.len()
        ),
        x_label: "epsilon (per record of each node's private data)".into(),
        y_label: "mean test accuracy".into(),
        series: vec![
            Series::main("federated mean", at(|row| row.federated_mean_acc)),
            Series::reference("local-only mean", at(|row| row.local_only_mean_acc)),
        ],
        x_log: true,
        ..LineChart::default()
    })
}

/// Writes each chart that could be drawn into `dir` (created if missing) as `NAME.png` and
/// `NAME.svg`, and reports what it did with each.
pub fn write_charts(dir: &Path, charts: Vec<(&str, Chart)>) -> anyhow::Result<Vec<Written>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut done = Vec::new();
    for (name, chart) in charts {
        match chart {
            Ok(chart) => {
                let mut files = Vec::new();
                for extension in ["png", "svg"] {
                    let path = dir.join(format!("{name}.{extension}"));
                    fd_plot::write(&chart, &path)
                        .with_context(|| format!("drawing the {name} chart"))?;
                    files.push(path);
                }
                done.push(Written::Files(files));
            }
            Err(why) => done.push(Written::Skipped {
                name: name.to_owned(),
                why,
            }),
        }
    }
    Ok(done)
}

/// One line per chart, for the terminal.
pub fn describe(written: &[Written]) -> String {
    let mut s = String::new();
    for w in written {
        match w {
            Written::Files(files) => {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                s.push_str(&format!("chart written to {}\n", names.join(" and ")));
            }
            Written::Skipped { name, why } => {
                s.push_str(&format!("chart {name} not drawn: {why}\n"));
            }
        }
    }
    s
}
