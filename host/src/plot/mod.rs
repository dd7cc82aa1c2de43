//! Figures for study reports: line charts (a metric against an x value, optionally on a log
//! x axis, with an optional threshold line) and grouped bar charts, written as PNG files.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate, registered once
//! with plotters' `ab_glyph` text renderer), so no system font libraries are needed and figures
//! look the same on every machine. Pixels are rendered into an in-memory RGB buffer, encoded
//! and written with [`crate::io::output::write_png`] (a temporary file renamed over the target),
//! so a reader never sees a half-written image.
//!
//! Files: this one (the chart types and the two entry points), `format.rs` (numbers, ticks,
//! ranges), `line.rs` and `bar.rs` (drawing), `tests.rs` (rendered examples, edge cases).
//!
//! Bad input never panics: NaN or infinite values (and x <= 0 on a log axis) are skipped,
//! degenerate ranges are padded, and a chart with nothing to plot says "no data".

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

mod bar;
mod format;
mod line;
#[cfg(test)]
mod tests;

use bar::{BarLayout, draw_bar_chart};
use format::*;
use line::draw_line_chart;

/// One line of a [`LineChart`]: its legend label and its `(x, y)` points, joined in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Legend text; an empty label leaves the series out of the legend.
    pub label: String,
    /// Data points; non-finite values are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A line chart (800×500 px): one coloured line with circle markers per series, and a legend
/// in the upper right (or another corner if that one would cover fewer data points).
#[derive(Debug, Clone, Copy, Default)]
pub struct LineChart<'a> {
    /// Caption above the plot.
    pub title: &'a str,
    /// Description under the x axis.
    pub x_label: &'a str,
    /// Description beside the y axis.
    pub y_label: &'a str,
    /// The lines, coloured from a fixed palette in order.
    pub series: &'a [Series],
    /// Logarithmic x axis (points with x <= 0 are skipped).
    pub log_x: bool,
    /// Fixed y range `(low, high)`; `None` picks `(0, 1.05)` when the data (and `hline`) look
    /// like a fraction (min >= 0, 0.2 <= max <= 1.2; above 1, `max·1.05`), else the data
    /// range padded by 5%. Anything outside the range is clipped.
    pub y_range: Option<(f64, f64)>,
    /// A dashed grey horizontal line at `y`, with its legend label (e.g. a threshold).
    pub hline: Option<(f64, &'a str)>,
}

/// One bar of a [`BarChart`] group; bars with the same label share a colour across groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bar {
    /// Legend text (one legend entry per distinct label, shown if there are several).
    pub label: String,
    /// Bar height; a non-finite value draws no bar, only "n/a".
    pub value: f64,
}

/// A grouped bar chart, `max(800, 60·bars + 150)` px wide (at most 12 000) and 500 px high,
/// plus room for legend rows and rotated group labels when needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BarChart<'a> {
    /// Caption above the plot.
    pub title: &'a str,
    /// Description beside the y axis.
    pub y_label: &'a str,
    /// `(group label on the x axis, bars of that group)`, drawn left to right.
    pub groups: &'a [(String, Vec<Bar>)],
    /// Fixed y range `(low, high)`; `None` picks `(0, 1.1)` when the values look like a
    /// fraction (as for [`LineChart::y_range`]), else the data range, including 0, padded by
    /// 10%. Bars are clipped to the range.
    pub y_range: Option<(f64, f64)>,
}

const FONT: &str = "sans-serif";
const TITLE_SIZE: f64 = 22.0;
const TICK_SIZE: f64 = 14.0;
const DESC_SIZE: f64 = 16.0;
const LINE_SIZE: (u32, u32) = (800, 500);
const BAR_HEIGHT: u32 = 500;
/// Widest bar chart we render; wider requests get narrower bars instead.
const BAR_MAX_WIDTH: u32 = 12_000;
const MARGIN: u32 = 15;

/// Tableau-10 colours, with its grey swapped for black so that it cannot be confused with
/// the grey of [`LineChart::hline`].
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(0, 0, 0),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const HLINE_COLOR: RGBColor = RGBColor(120, 120, 120);

fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

static FONT_INIT: Once = Once::new();

/// Registers the embedded DejaVu Sans as plotters' "sans-serif" font, once per process.
fn ensure_font() {
    FONT_INIT.call_once(|| {
        // The embedded font is known to parse; if it ever did not, drawing text would fail
        // with a font error, which the chart functions report.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// Width and height of `text` in pixels at `size`.
fn text_size(text: &str, size: f64) -> Result<(u32, u32)> {
    Ok((FONT, size).into_font().box_size(text)?)
}

/// Writes a line chart to `path` as an 800×500 PNG, atomically (temp file + rename).
pub fn line_chart(path: &Path, chart: &LineChart) -> Result<()> {
    ensure_font();
    let (w, h) = LINE_SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    draw_line_chart(&mut buf, (w, h), chart)
        .with_context(|| format!("cannot draw line chart {}", path.display()))?;
    crate::io::output::write_png(path, &buf, w as usize, h as usize, 1)
        .with_context(|| format!("cannot write chart {}", path.display()))
}

/// Writes a grouped bar chart to `path` as a PNG, atomically (temp file + rename).
pub fn bar_chart(path: &Path, chart: &BarChart) -> Result<()> {
    ensure_font();
    let layout = BarLayout::new(chart)
        .with_context(|| format!("cannot lay out bar chart {}", path.display()))?;
    let (w, h) = (layout.width, layout.height);
    let mut buf = vec![255u8; (w as usize) * (h as usize) * 3];
    draw_bar_chart(&mut buf, chart, &layout)
        .with_context(|| format!("cannot draw bar chart {}", path.display()))?;
    crate::io::output::write_png(path, &buf, w as usize, h as usize, 1)
        .with_context(|| format!("cannot write chart {}", path.display()))
}
