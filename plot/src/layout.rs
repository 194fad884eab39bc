//! What a chart will draw, worked out before any drawing: which points are kept and where,
//! the axis ranges, the slot for `x = +inf`, the colours and the legend entries.

use crate::{LineChart, PlotError, SeriesStyle};

/// An RGB colour.
pub(crate) type Rgb = (u8, u8, u8);

/// Colours of the main and reference series, in the order they appear (Tableau 10, readable
/// on white and told apart by most colour-blind readers).
const PALETTE: [Rgb; 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colour of faint series.
pub(crate) const FAINT: Rgb = (120, 120, 120);

/// Share of the finite x range between the last finite x and the slot of `x = +inf`.
const INFINITY_GAP: f64 = 0.2;
/// Share of each axis range left empty on either side.
const PAD: f64 = 0.04;

/// One series, ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreparedSeries {
    /// The kept points, `x = +inf` moved to the infinity slot.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub style: SeriesStyle,
    /// Its colour.
    pub colour: Rgb,
    /// Its legend entry (the name, with a note on left-out points), or `None` when an earlier
    /// series of the same name already has the entry.
    pub legend: Option<String>,
}

/// Where `x = +inf` is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct InfinitySlot {
    /// The x coordinate it is drawn at.
    pub x: f64,
    /// Where the axis breaks, between the largest finite x and the slot.
    pub break_x: f64,
    /// The largest finite x: tick labels beyond it are left out.
    pub last_finite: f64,
}

/// A chart, ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    /// The series, in the chart's order.
    pub series: Vec<PreparedSeries>,
    /// The x axis range.
    pub x: (f64, f64),
    /// The y axis range.
    pub y: (f64, f64),
    /// The slot of `x = +inf`, when a series has such a point.
    pub infinity: Option<InfinitySlot>,
}

/// Why a point is left out.
#[derive(Debug, Default, Clone, Copy)]
struct LeftOut {
    not_finite: usize,
    not_positive: usize,
}

impl LeftOut {
    fn note(self) -> String {
        let mut parts = Vec::new();
        if self.not_finite > 0 {
            parts.push(format!("{} not finite", self.not_finite));
        }
        if self.not_positive > 0 {
            parts.push(format!("{} with x <= 0 on a log axis", self.not_positive));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" (left out: {})", parts.join(", "))
        }
    }
}

/// Works out what `chart` draws.
pub(crate) fn prepare(chart: &LineChart) -> Result<Prepared, PlotError> {
    if let Some((low, high)) = chart.y_include
        && !(low.is_finite() && high.is_finite() && low < high)
    {
        return Err(PlotError::BadRange {
            title: chart.title.clone(),
            low,
            high,
        });
    }
    let mut kept = Vec::with_capacity(chart.series.len());
    let mut notes = Vec::with_capacity(chart.series.len());
    for s in &chart.series {
        let mut left = LeftOut::default();
        let mut points = Vec::with_capacity(s.points.len());
        for &(x, y) in &s.points {
            if !y.is_finite() || x.is_nan() || x == f64::NEG_INFINITY {
                left.not_finite += 1;
            } else if chart.x_log && x <= 0.0 {
                left.not_positive += 1;
            } else {
                points.push((x, y));
            }
        }
        kept.push(points);
        notes.push(left.note());
    }
    let all = || kept.iter().flatten();
    if all().next().is_none() {
        return Err(PlotError::NoData {
            title: chart.title.clone(),
        });
    }
    let finite_x = min_max(all().map(|p| p.0).filter(|x| x.is_finite()));
    let has_infinity = all().any(|p| p.0 == f64::INFINITY);
    // Only infinite x values: one made-up finite unit keeps the axis well defined.
    let (x_low, x_high) = widen(finite_x.unwrap_or((1.0, 1.0)), chart.x_log);
    let infinity = has_infinity.then(|| infinity_slot(x_low, x_high, chart.x_log));
    let x_end = infinity.map_or(x_high, |s| s.x);
    let x = pad((x_low, x_end), chart.x_log);

    let mut y_values: Vec<f64> = all().map(|p| p.1).collect();
    if let Some((low, high)) = chart.y_include {
        y_values.extend([low, high]);
    }
    let y = min_max(y_values.into_iter()).map_or((0.0, 1.0), |r| widen(r, false));
    let y = pad(y, false);

    let mut colours = PALETTE.iter().cycle();
    let mut named = Vec::new();
    let series = chart
        .series
        .iter()
        .zip(kept)
        .zip(notes)
        .map(|((s, points), note)| {
            let colour = match s.style {
                SeriesStyle::Faint => FAINT,
                SeriesStyle::Main | SeriesStyle::Reference => {
                    *colours.next().unwrap_or(&PALETTE[0])
                }
            };
            let first = !named.contains(&&s.name);
            named.push(&s.name);
            let points = points
                .into_iter()
                .map(|(px, py)| match infinity {
                    Some(slot) if px == f64::INFINITY => (slot.x, py),
                    _ => (px, py),
                })
                .collect();
            PreparedSeries {
                points,
                style: s.style,
                colour,
                // A note on left-out points makes its own entry even for a shared name.
                legend: (first || !note.is_empty()).then(|| format!("{}{note}", s.name)),
            }
        })
        .collect();
    Ok(Prepared {
        series,
        x,
        y,
        infinity,
    })
}

/// The smallest and largest of `values`, if there are any.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((low, high)) => Some((low.min(v), high.max(v))),
    })
}

/// `range`, made wider when it is a single value: by a factor of two either way on a
/// logarithmic axis, otherwise by a tenth of the value's size (at least 0.5) either way.
fn widen((low, high): (f64, f64), log: bool) -> (f64, f64) {
    if low < high {
        (low, high)
    } else if log {
        (low / 2.0, high * 2.0)
    } else {
        let d = (low.abs() * 0.1).max(0.5);
        (low - d, high + d)
    }
}

/// The slot of `x = +inf` right of the finite range `low..high`.
fn infinity_slot(low: f64, high: f64, log: bool) -> InfinitySlot {
    if log {
        let x = high * (high / low).powf(INFINITY_GAP);
        InfinitySlot {
            x,
            break_x: (high * x).sqrt(),
            last_finite: high,
        }
    } else {
        let x = high + (high - low) * INFINITY_GAP;
        InfinitySlot {
            x,
            break_x: (high + x) / 2.0,
            last_finite: high,
        }
    }
}

/// `range` with [`PAD`] of its length (on a logarithmic axis: of its log length) added on
/// either side.
fn pad((low, high): (f64, f64), log: bool) -> (f64, f64) {
    if log {
        let f = (high / low).powf(PAD);
        (low / f, high * f)
    } else {
        let d = (high - low) * PAD;
        (low - d, high + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Series;

    fn chart(series: Vec<Series>, x_log: bool) -> LineChart {
        LineChart {
            title: "t".into(),
            series,
            x_log,
            ..LineChart::default()
        }
    }

    #[test]
    fn infinite_x_goes_to_a_slot_right_of_the_finite_values() {
        let c = chart(
            vec![Series::main(
                "federated",
                vec![(1.0, 0.5), (8.0, 0.6), (f64::INFINITY, 0.9)],
            )],
            true,
        );
        let p = prepare(&c).unwrap();
        let slot = p.infinity.expect("an infinity slot");
        // Log axis from 1 to 8: the slot is 8 x 8^0.2 = 12.13, the break their geometric mean.
        assert!((slot.x - 8.0 * 8f64.powf(0.2)).abs() < 1e-9, "{slot:?}");
        assert!((slot.break_x - (8.0 * slot.x).sqrt()).abs() < 1e-9);
        assert_eq!(slot.last_finite, 8.0);
        assert_eq!(p.series[0].points[2], (slot.x, 0.9));
        assert!(p.x.0 < 1.0 && p.x.1 > slot.x, "{:?}", p.x);
        assert_eq!(p.series[0].legend.as_deref(), Some("federated"));
    }

    #[test]
    fn other_non_finite_points_are_left_out_and_the_legend_says_so() {
        let c = chart(
            vec![Series::main(
                "s",
                vec![
                    (1.0, 0.5),
                    (f64::NAN, 0.5),
                    (2.0, f64::INFINITY),
                    (f64::NEG_INFINITY, 0.1),
                    (0.0, 0.3),
                    (3.0, 0.7),
                ],
            )],
            true,
        );
        let p = prepare(&c).unwrap();
        assert_eq!(p.series[0].points, vec![(1.0, 0.5), (3.0, 0.7)]);
        assert_eq!(
            p.series[0].legend.as_deref(),
            Some("s (left out: 3 not finite, 1 with x <= 0 on a log axis)")
        );
        assert!(p.infinity.is_none());
    }

    #[test]
    fn y_include_widens_the_axis_and_a_bad_one_is_refused() {
        let mut c = chart(vec![Series::main("s", vec![(1.0, 0.5), (2.0, 0.6)])], false);
        c.y_include = Some((0.0, 1.0));
        let p = prepare(&c).unwrap();
        assert!(p.y.0 < 0.0 && p.y.1 > 1.0, "{:?}", p.y);
        c.y_include = Some((1.0, 1.0));
        assert!(matches!(prepare(&c), Err(PlotError::BadRange { .. })));
        c.y_include = Some((0.0, f64::NAN));
        assert!(matches!(prepare(&c), Err(PlotError::BadRange { .. })));
    }

    #[test]
    fn a_single_point_gets_a_usable_range() {
        let p = prepare(&chart(vec![Series::main("s", vec![(3.0, 0.5)])], false)).unwrap();
        assert!(p.x.0 < 3.0 && 3.0 < p.x.1, "{:?}", p.x);
        assert!(p.y.0 < 0.5 && 0.5 < p.y.1, "{:?}", p.y);
    }

    #[test]
    fn colours_skip_faint_series_and_shared_names_share_a_legend_entry() {
        let c = chart(
            vec![
                Series::faint("each client", vec![(1.0, 0.1)]),
                Series::main("mean", vec![(1.0, 0.2)]),
                Series::faint("each client", vec![(1.0, 0.3)]),
                Series::reference("baseline", vec![(1.0, 0.4)]),
            ],
            false,
        );
        let p = prepare(&c).unwrap();
        let colours: Vec<Rgb> = p.series.iter().map(|s| s.colour).collect();
        assert_eq!(colours, vec![FAINT, PALETTE[0], FAINT, PALETTE[1]]);
        let legends: Vec<Option<&str>> = p.series.iter().map(|s| s.legend.as_deref()).collect();
        assert_eq!(
            legends,
            vec![Some("each client"), Some("mean"), None, Some("baseline")]
        );
    }
}
