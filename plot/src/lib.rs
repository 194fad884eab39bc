//! Line charts written as PNG or SVG files.
//!
//! The simulator (`fd-sim --plots`) draws its accuracy, epsilon-sweep and aggregation-weight
//! charts with this crate, and the coordinator can draw a live run the same way: a chart is a
//! plain [`LineChart`] of named [`Series`] of `(x, y)` points, with no knowledge of federations,
//! and [`write()`] picks the format from the file name.
//!
//! Drawing is done by `plotters`. No system font is needed, for either format: PNG text is
//! rasterised from DejaVu Sans, which the `dejavu` crate embeds (plotters' `ab_glyph` feature
//! draws with a font registered from memory; its default `ttf` feature would look fonts up
//! through font-kit and fontconfig on the machine). SVG text is written as `<text>` elements
//! that name the generic `sans-serif` family, so a viewer uses any font it has; the embedded
//! font only measures text for the layout.
//!
//! What a chart does with awkward data is fixed here rather than left to the caller:
//!
//! - `x = +inf` (an unlimited privacy budget, say) is drawn at a slot to the right of the
//!   finite x values, past a dashed break line, and labelled `inf` under the axis;
//! - any other non-finite coordinate, and `x <= 0` on a logarithmic axis, is left out, and the
//!   series' legend entry says how many points were left out and why;
//! - a chart with no point left to draw is an error ([`PlotError::NoData`]), not an empty image.
//!
//! In SVG output every series is exactly one `<polyline>` element and nothing else is (the frame
//! is a `<rect>`, grid lines and dashes are `<line>`s), so a reader of the file, or a test, can
//! count the series.

#![warn(missing_docs)]

mod draw;
mod layout;

use std::path::{Path, PathBuf};

/// Width of every chart, in pixels (SVG: user units).
pub const WIDTH: u32 = 1100;
/// Height of every chart, in pixels (SVG: user units).
pub const HEIGHT: u32 = 640;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    /// A thick coloured line with a dot at each point: what the chart is about.
    Main,
    /// A thin, pale grey line: one of many similar series (each client, say) behind the main
    /// ones. Faint series sharing a name share one legend entry.
    Faint,
    /// A coloured dashed line over a pale solid one: a baseline to compare with.
    Reference,
}

/// One named line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry. Series with the same name share one legend entry.
    pub name: String,
    /// The points, joined in this order. Non-finite coordinates are handled as the crate
    /// documentation says.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub style: SeriesStyle,
}

impl Series {
    /// A series drawn in `style`.
    pub fn new(name: impl Into<String>, style: SeriesStyle, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            style,
        }
    }

    /// A [`SeriesStyle::Main`] series.
    pub fn main(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series::new(name, SeriesStyle::Main, points)
    }

    /// A [`SeriesStyle::Faint`] series.
    pub fn faint(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series::new(name, SeriesStyle::Faint, points)
    }

    /// A [`SeriesStyle::Reference`] series.
    pub fn reference(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series::new(name, SeriesStyle::Reference, points)
    }
}

/// A chart of lines against one x axis and one y axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineChart {
    /// The title, on top. A title too long for the width is drawn smaller, then shortened.
    pub title: String,
    /// A smaller line under the title (what the data is, how it was made); may be empty. Fitted
    /// to the width like the title.
    pub subtitle: String,
    /// The x axis' description.
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// The lines. Faint series are drawn first, then main series, then references on top
    /// (dashed, so what lies under them shows through).
    pub series: Vec<Series>,
    /// A logarithmic x axis (for privacy budgets, say); points with `x <= 0` are left out.
    pub x_log: bool,
    /// The x values are whole numbers (rounds, say): only whole numbers are labelled.
    pub x_integers: bool,
    /// A y range the axis covers whatever the data (`(0.0, 1.0)` for accuracies, say); data
    /// outside it widens the axis, so no point is ever clipped. `None`: the data's range.
    pub y_include: Option<(f64, f64)>,
}

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file name ends in neither `.png` nor `.svg`.
    #[error("{path}: cannot tell the image format: the file name must end in .png or .svg")]
    UnsupportedExtension {
        /// The path asked for.
        path: PathBuf,
    },
    /// No series has a point that can be drawn.
    #[error("chart '{title}': nothing to draw (no series has a point with finite coordinates)")]
    NoData {
        /// The chart's title.
        title: String,
    },
    /// `y_include` is not a finite range with its low end below its high end.
    #[error("chart '{title}': y_include {low}..{high} must be finite with {low} < {high}")]
    BadRange {
        /// The chart's title.
        title: String,
        /// The low end given.
        low: f64,
        /// The high end given.
        high: f64,
    },
    /// The embedded font could not be registered with the renderer.
    #[error("the embedded DejaVu Sans font could not be loaded")]
    Font,
    /// The renderer failed.
    #[error("chart '{title}': drawing failed: {message}")]
    Draw {
        /// The chart's title.
        title: String,
        /// The renderer's message.
        message: String,
    },
    /// The PNG encoder failed.
    #[error("chart '{title}': encoding PNG: {message}")]
    Encode {
        /// The chart's title.
        title: String,
        /// The encoder's message.
        message: String,
    },
    /// The file could not be written.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An image format [`write()`] can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A PNG bitmap of [`WIDTH`] x [`HEIGHT`] pixels.
    Png,
    /// An SVG document of the same size.
    Svg,
}

impl Format {
    /// The format named by the extension of `path` (`.png` or `.svg`, in any case).
    pub fn of_path(path: &Path) -> Result<Format, PlotError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(PlotError::UnsupportedExtension {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Writes `chart` to `path` as PNG or SVG, as the extension of `path` says. The file is only
/// created once the chart has been drawn, so a chart that cannot be drawn leaves no file.
pub fn write(chart: &LineChart, path: &Path) -> Result<(), PlotError> {
    let bytes = match Format::of_path(path)? {
        Format::Png => render_png(chart)?,
        Format::Svg => render_svg(chart)?.into_bytes(),
    };
    std::fs::write(path, bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Draws `chart` as an SVG document.
pub fn render_svg(chart: &LineChart) -> Result<String, PlotError> {
    draw::svg(chart, &layout::prepare(chart)?)
}

/// Draws `chart` as a PNG file's bytes (8-bit RGB).
pub fn render_png(chart: &LineChart) -> Result<Vec<u8>, PlotError> {
    draw::png(chart, &layout::prepare(chart)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small chart with one series of each style and an infinite x.
    fn sample() -> LineChart {
        LineChart {
            title: "accuracy against epsilon".into(),
            subtitle: "three series".into(),
            x_label: "epsilon".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series::main(
                    "federated",
                    vec![(1.0, 0.6), (4.0, 0.7), (f64::INFINITY, 0.9)],
                ),
                Series::faint("each client", vec![(1.0, 0.5), (4.0, 0.55)]),
                Series::faint("each client", vec![(1.0, 0.65), (4.0, 0.6)]),
                Series::reference("local-only", vec![(1.0, 0.6), (f64::INFINITY, 0.6)]),
            ],
            x_log: true,
            ..LineChart::default()
        }
    }

    /// Elements named `name` anywhere in an SVG document, which must parse as XML.
    fn count_svg_elements(svg: &str, name: &str) -> usize {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        doc.descendants()
            .filter(|n| n.tag_name().name() == name)
            .count()
    }

    #[test]
    fn svg_is_well_formed_with_one_polyline_per_series() {
        let chart = sample();
        let svg = render_svg(&chart).unwrap();
        assert_eq!(count_svg_elements(&svg, "polyline"), chart.series.len());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "text")
            .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
            .collect();
        for wanted in ["accuracy against epsilon", "federated", "local-only", "inf"] {
            assert!(
                texts.iter().any(|t| t == wanted),
                "no text '{wanted}' in {texts:?}"
            );
        }
        // The two faint series share one legend entry.
        assert_eq!(texts.iter().filter(|t| *t == "each client").count(), 1);
    }

    #[test]
    fn a_subtitle_too_long_for_the_width_is_shortened_not_cut_off() {
        let mut chart = sample();
        chart.subtitle = "a long description ".repeat(40);
        let svg = render_svg(&chart).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let subtitle = doc
            .descendants()
            .filter_map(|n| n.text())
            .map(str::trim)
            .find(|t| t.starts_with("a long description"))
            .expect("the subtitle");
        // 760 characters do not fit 1100 pixels at any readable size.
        assert!(subtitle.ends_with('…'), "{subtitle}");
        assert!(subtitle.chars().count() < 400, "{}", subtitle.len());
    }

    #[test]
    fn an_empty_series_still_counts_as_one_polyline() {
        let mut chart = sample();
        chart.series.push(Series::main("nothing yet", vec![]));
        let svg = render_svg(&chart).unwrap();
        assert_eq!(count_svg_elements(&svg, "polyline"), chart.series.len());
    }

    #[test]
    fn png_has_the_signature_the_size_and_rasterised_text() {
        let chart = sample();
        let bytes = render_png(&chart).unwrap();
        // The eight-byte PNG signature (PNG specification, section 5.2).
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
        assert_eq!(frame.color_type, png::ColorType::Rgb);
        // The title is the only thing in the top band of the image (see `draw::TITLE_BAND`), so
        // dark pixels there are rasterised glyphs: the embedded font works.
        let row = frame.width as usize * 3;
        let dark = pixels[..row * draw::TITLE_BAND as usize]
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 100, "{dark} dark pixels in the title band");
    }

    #[test]
    fn write_picks_the_format_from_the_extension_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let chart = sample();
        let png_path = dir.path().join("chart.PNG");
        write(&chart, &png_path).unwrap();
        assert!(std::fs::read(&png_path).unwrap().starts_with(b"\x89PNG"));
        let svg_path = dir.path().join("chart.svg");
        write(&chart, &svg_path).unwrap();
        assert!(
            std::fs::read_to_string(&svg_path)
                .unwrap()
                .starts_with("<svg")
        );
        for bad in ["chart.jpg", "chart", "chart.svg.txt"] {
            let path = dir.path().join(bad);
            let err = write(&chart, &path).unwrap_err();
            assert!(
                matches!(err, PlotError::UnsupportedExtension { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(".png or .svg"), "{err}");
            assert!(!path.exists(), "{bad} was created");
        }
    }

    #[test]
    fn a_chart_without_a_finite_point_is_an_error_and_writes_no_file() {
        let chart = LineChart {
            title: "empty".into(),
            series: vec![Series::main("nan", vec![(f64::NAN, 1.0), (1.0, f64::NAN)])],
            ..LineChart::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.svg");
        let err = write(&chart, &path).unwrap_err();
        assert!(matches!(err, PlotError::NoData { .. }), "{err}");
        assert!(!path.exists());
    }
}
