//! Drawing a prepared chart with plotters, onto an SVG string or an RGB buffer encoded as PNG.
//!
//! The same [`draw`] serves both formats. It keeps the SVG countable: plotters writes every
//! path as a `<polyline>`, its axis lines and tick marks included, so the axes are drawn
//! transparent (plotters then writes nothing for them) and the frame is a rectangle; dashes are
//! drawn as separate `<line>` segments by [`Dashed`]. Each series is then one `<polyline>`.

use std::sync::OnceLock;

use plotters::backend::{BitMapBackend, SVGBackend};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::{Circle, Drawable, PathElement, PointCollection, Rectangle};
use plotters::prelude::{
    Cartesian2d, ChartBuilder, ChartContext, DrawingArea, DrawingBackend, IntoDrawingArea,
    IntoLogRange,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{
    Color, FontStyle, IntoFont, RGBColor, ShapeStyle, TRANSPARENT, TextStyle, WHITE,
};
use plotters_backend::{BackendCoord, DrawingErrorKind};

use crate::layout::{InfinitySlot, Prepared, PreparedSeries};
use crate::{HEIGHT, LineChart, PlotError, SeriesStyle, WIDTH};

/// Height of the band at the top that holds the title and nothing else.
pub(crate) const TITLE_BAND: u32 = 40;
/// Height of the band under it for the subtitle, when there is one.
const SUBTITLE_BAND: u32 = 26;
/// The family every text is drawn in: the embedded font is registered under this name.
const FONT: &str = "sans-serif";
/// Font sizes (plotters' units: about 1.24 x the SVG font size).
const TITLE_SIZE: f64 = 26.0;
const SUBTITLE_SIZE: f64 = 18.0;
const LABEL_SIZE: f64 = 17.0;
const AXIS_SIZE: f64 = 19.0;
/// The smallest size a title or subtitle is shrunk to before it is shortened instead.
const SMALLEST: f64 = 14.0;
/// Legend: length of a series' sample line, row height and margins.
const SWATCH: i32 = 34;
const LEGEND_ROW: i32 = 26;
const LEGEND_MARGIN: i32 = 12;
/// Main series get a dot at every point when they have at most this many.
const MAX_DOTS: usize = 60;

/// Registers DejaVu Sans as [`FONT`], once per process. Plotters' `ab_glyph` backend measures
/// and rasterises text only with fonts registered this way; it never looks at the system.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// Draws `p` as an SVG document.
pub(crate) fn svg(chart: &LineChart, p: &Prepared) -> Result<String, PlotError> {
    register_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, chart, p)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
            .map_err(|message| draw_error(chart, message))?;
    }
    Ok(out)
}

/// Draws `p` as PNG bytes.
pub(crate) fn png(chart: &LineChart, p: &Prepared) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let mut pixels = vec![255u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, chart, p)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
            .map_err(|message| draw_error(chart, message))?;
    }
    let encode_error = |e: png::EncodingError| PlotError::Encode {
        title: chart.title.clone(),
        message: e.to_string(),
    };
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(encode_error)?;
    writer.write_image_data(&pixels).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(bytes)
}

fn draw_error(chart: &LineChart, message: String) -> PlotError {
    PlotError::Draw {
        title: chart.title.clone(),
        message,
    }
}

/// Renderer errors as text (they are generic over the backend).
fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

fn font(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// Title, subtitle, plot and legend.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &LineChart,
    p: &Prepared,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(text)?;
    let centre = Pos::new(HPos::Center, VPos::Center);
    let middle = WIDTH as i32 / 2;
    let (title, size) = fit(root, &chart.title, TITLE_SIZE)?;
    root.draw_text(
        &title,
        &font(size).pos(centre),
        (middle, TITLE_BAND as i32 / 2),
    )
    .map_err(text)?;
    let mut header = TITLE_BAND;
    if !chart.subtitle.is_empty() {
        let (subtitle, size) = fit(root, &chart.subtitle, SUBTITLE_SIZE)?;
        root.draw_text(
            &subtitle,
            &font(size).color(&RGBColor(70, 70, 70)).pos(centre),
            (middle, (TITLE_BAND + SUBTITLE_BAND / 2) as i32),
        )
        .map_err(text)?;
        header += SUBTITLE_BAND;
    }
    let (_, body) = root.split_vertically(header);
    let legend = legend_entries(root, p)?;
    let (plot, legend_area) = body.split_horizontally(WIDTH - legend.width);

    let mut builder = ChartBuilder::on(&plot);
    builder
        .margin(14)
        .x_label_area_size(62)
        .y_label_area_size(80);
    if chart.x_log {
        let ctx = builder
            .build_cartesian_2d((p.x.0..p.x.1).log_scale(), p.y.0..p.y.1)
            .map_err(text)?;
        plot_body(ctx, root, chart, p)?;
    } else {
        let ctx = builder
            .build_cartesian_2d(p.x.0..p.x.1, p.y.0..p.y.1)
            .map_err(text)?;
        plot_body(ctx, root, chart, p)?;
    }
    draw_legend(&legend_area, &legend.rows)
}

/// `line` and a font size at which it fits the width of the chart: `size`, or smaller down to
/// [`SMALLEST`], and below that the line shortened with an ellipsis.
fn fit<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    line: &str,
    size: f64,
) -> Result<(String, f64), String> {
    let room = WIDTH - 2 * LEGEND_MARGIN as u32;
    let width = |t: &str, size: f64| -> Result<u32, String> {
        root.estimate_text_size(t, &font(size))
            .map(|(w, _)| w)
            .map_err(text)
    };
    let mut size = size;
    while size > SMALLEST && width(line, size)? > room {
        size -= 1.0;
    }
    let mut t = line.to_owned();
    while width(&t, size)? > room && t.chars().count() > 4 {
        let keep = t.chars().count() - 2;
        t = t.chars().take(keep).collect::<String>() + "…";
    }
    Ok((t, size))
}

/// Grid, labels, frame, the infinity slot and the series.
fn plot_body<DB, X>(
    mut ctx: ChartContext<'_, DB, Cartesian2d<X, RangedCoordf64>>,
    root: &DrawingArea<DB, Shift>,
    chart: &LineChart,
    p: &Prepared,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let x_format = |x: &f64| x_tick_label(*x, chart.x_integers, p.infinity);
    let y_format = |y: &f64| number(*y);
    {
        let mut mesh = ctx.configure_mesh();
        mesh.axis_style(TRANSPARENT)
            .bold_line_style(RGBColor(200, 200, 200).stroke_width(1))
            // No minor grid lines: on a log axis they crowd every decade.
            .light_line_style(TRANSPARENT)
            .label_style(font(LABEL_SIZE))
            .axis_desc_style(font(AXIS_SIZE))
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format);
        if chart.x_integers {
            // As many labels as whole numbers in the range (up to 12): plotters then puts
            // them on whole numbers.
            let span = (p.x.1 - p.x.0).floor().max(1.0) as usize;
            mesh.x_labels((span + 1).min(12));
        }
        mesh.draw().map_err(text)?;
    }
    ctx.plotting_area()
        .draw(&Rectangle::new(
            [(p.x.0, p.y.0), (p.x.1, p.y.1)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(text)?;
    if let Some(slot) = p.infinity {
        ctx.plotting_area()
            .draw(&Dashed {
                points: vec![(slot.break_x, p.y.0), (slot.break_x, p.y.1)],
                style: RGBColor(150, 150, 150).stroke_width(1),
                dash: 6.0,
                gap: 5.0,
            })
            .map_err(text)?;
        let (x, y) = ctx.backend_coord(&(slot.x, p.y.0));
        root.draw_text(
            "inf",
            &font(LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Top)),
            // Where plotters puts the other tick labels: a tick mark's length plus a margin.
            (x, y + 10),
        )
        .map_err(text)?;
    }
    // References last: their dashes let a main line under them show through.
    for style in [
        SeriesStyle::Faint,
        SeriesStyle::Main,
        SeriesStyle::Reference,
    ] {
        for s in p.series.iter().filter(|s| s.style == style) {
            draw_series(&ctx, s)?;
        }
    }
    Ok(())
}

/// One series: exactly one path, plus dashes (`<line>`s) or dots (`<circle>`s).
fn draw_series<DB, X>(
    ctx: &ChartContext<'_, DB, Cartesian2d<X, RangedCoordf64>>,
    s: &PreparedSeries,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64>,
{
    let area = ctx.plotting_area();
    let colour = rgb(s.colour);
    match s.style {
        SeriesStyle::Faint => area
            .draw(&PathElement::new(
                s.points.clone(),
                colour.mix(0.45).stroke_width(1),
            ))
            .map_err(text),
        SeriesStyle::Reference => {
            area.draw(&PathElement::new(
                s.points.clone(),
                colour.mix(0.35).stroke_width(1),
            ))
            .map_err(text)?;
            area.draw(&Dashed {
                points: s.points.clone(),
                style: colour.stroke_width(3),
                dash: 10.0,
                gap: 6.0,
            })
            .map_err(text)
        }
        SeriesStyle::Main => {
            area.draw(&PathElement::new(s.points.clone(), colour.stroke_width(3)))
                .map_err(text)?;
            if s.points.len() <= MAX_DOTS {
                for &point in &s.points {
                    area.draw(&Circle::new(point, 4, colour.filled()))
                        .map_err(text)?;
                }
            }
            Ok(())
        }
    }
}

/// A tick label on the x axis: none past the last finite value when there is an infinity slot
/// (those ticks fall into the break), none between whole numbers on a whole-number axis.
fn x_tick_label(x: f64, integers: bool, infinity: Option<InfinitySlot>) -> String {
    let past_finite = infinity.is_some_and(|s| x > s.last_finite * (1.0 + 1e-9));
    let between_integers = integers && (x - x.round()).abs() > 1e-9;
    if past_finite || between_integers {
        String::new()
    } else {
        number(x)
    }
}

/// A short label for `v`: up to four decimals without trailing zeros, scientific notation for
/// very large or very small magnitudes.
pub(crate) fn number(v: f64) -> String {
    let magnitude = v.abs();
    if magnitude < 1e-12 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The legend's rows and the width of its panel.
struct Legend {
    width: u32,
    rows: Vec<LegendRow>,
}

struct LegendRow {
    text: String,
    style: SeriesStyle,
    colour: RGBColor,
}

/// The legend entries, shortened to fit a panel of at most two fifths of the width.
fn legend_entries<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &Prepared,
) -> Result<Legend, String> {
    let style = font(LABEL_SIZE);
    let room = |t: &str| -> Result<u32, String> {
        root.estimate_text_size(t, &style)
            .map(|(w, _)| w)
            .map_err(text)
    };
    let fixed = (2 * LEGEND_MARGIN + SWATCH + 8) as u32;
    let most = WIDTH * 2 / 5;
    let mut widest = 0;
    let mut rows = Vec::new();
    for s in &p.series {
        let Some(full) = &s.legend else { continue };
        let mut t = full.clone();
        // Shorten from the end, a character at a time, until it fits.
        while room(&t)? + fixed > most && t.chars().count() > 4 {
            let keep = t.chars().count() - 2;
            t = t.chars().take(keep).collect::<String>() + "…";
        }
        widest = widest.max(room(&t)?);
        rows.push(LegendRow {
            text: t,
            style: s.style,
            colour: rgb(s.colour),
        });
    }
    Ok(Legend {
        width: (widest + fixed).clamp(150, most),
        rows,
    })
}

/// One row per entry: a sample of the line and its name; rows that do not fit are counted.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[LegendRow],
) -> Result<(), String> {
    let (_, height) = area.dim_in_pixel();
    let fits = ((height as i32 - 2 * LEGEND_MARGIN) / LEGEND_ROW).max(1) as usize;
    let shown = if rows.len() > fits {
        fits - 1
    } else {
        rows.len()
    };
    let label = font(LABEL_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    let x0 = LEGEND_MARGIN;
    let x1 = x0 + SWATCH;
    for (i, row) in rows.iter().take(shown).enumerate() {
        let y = LEGEND_MARGIN + LEGEND_ROW / 2 + i as i32 * LEGEND_ROW;
        match row.style {
            SeriesStyle::Main => {
                area.draw(&Rectangle::new(
                    [(x0, y - 1), (x1, y + 2)],
                    row.colour.filled(),
                ))
                .map_err(text)?;
                area.draw(&Circle::new(((x0 + x1) / 2, y), 4, row.colour.filled()))
                    .map_err(text)?;
            }
            SeriesStyle::Faint => area
                .draw(&Rectangle::new(
                    [(x0, y), (x1, y + 1)],
                    row.colour.mix(0.6).filled(),
                ))
                .map_err(text)?,
            SeriesStyle::Reference => {
                for k in 0..3 {
                    let start = x0 + k * 13;
                    area.draw(&Rectangle::new(
                        [(start, y - 1), (start + 8, y + 2)],
                        row.colour.filled(),
                    ))
                    .map_err(text)?;
                }
            }
        }
        area.draw_text(&row.text, &label, (x1 + 8, y))
            .map_err(text)?;
    }
    if shown < rows.len() {
        let y = LEGEND_MARGIN + LEGEND_ROW / 2 + shown as i32 * LEGEND_ROW;
        area.draw_text(
            &format!("… and {} more", rows.len() - shown),
            &label,
            (x0, y),
        )
        .map_err(text)?;
    }
    Ok(())
}

/// A dashed line drawn as separate straight segments (`draw_line`), so that it adds no path to
/// an SVG document. Dashes follow the line through its corners.
struct Dashed {
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    /// Length of a dash, in pixels.
    dash: f64,
    /// Length of a gap, in pixels.
    gap: f64,
}

impl<'a> PointCollection<'a, (f64, f64)> for &'a Dashed {
    type Point = &'a (f64, f64);
    type IntoIter = &'a [(f64, f64)];
    fn point_iter(self) -> &'a [(f64, f64)] {
        &self.points
    }
}

impl<DB: DrawingBackend> Drawable<DB> for Dashed {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        points: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let points: Vec<BackendCoord> = points.collect();
        let mut on = true;
        let mut left = self.dash;
        for pair in points.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (dx, dy) = (f64::from(b.0 - a.0), f64::from(b.1 - a.1));
            let length = dx.hypot(dy);
            let at = |t: f64| {
                (
                    a.0 + (dx * t / length).round() as i32,
                    a.1 + (dy * t / length).round() as i32,
                )
            };
            let mut t = 0.0;
            while t < length {
                let step = left.min(length - t);
                if on {
                    backend.draw_line(at(t), at(t + step), &self.style)?;
                }
                t += step;
                left -= step;
                if left <= 0.0 {
                    on = !on;
                    left = if on { self.dash } else { self.gap };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(-1e-17), "0");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(0.123456), "0.1235");
        assert_eq!(number(1e7), "1.00e7");
    }

    #[test]
    fn tick_labels_skip_the_break_and_fractions_of_whole_numbers() {
        let slot = InfinitySlot {
            x: 12.0,
            break_x: 10.0,
            last_finite: 8.0,
        };
        assert_eq!(x_tick_label(8.0, false, Some(slot)), "8");
        assert_eq!(x_tick_label(10.0, false, Some(slot)), "");
        assert_eq!(x_tick_label(2.5, true, None), "");
        assert_eq!(x_tick_label(3.0, true, None), "3");
    }
}
