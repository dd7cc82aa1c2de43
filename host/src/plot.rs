//! Figures for study reports: line charts (a metric against an x value, optionally on a log
//! x axis, with an optional threshold line) and grouped bar charts, written as PNG files.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate, registered once
//! with plotters' `ab_glyph` text renderer), so no system font libraries are needed and figures
//! look the same on every machine. Pixels are rendered into an in-memory RGB buffer, encoded
//! with the `png` crate, written to a temporary file next to the target and renamed over it, so
//! a reader never sees a half-written image.
//!
//! Bad input never panics: NaN or infinite values (and x <= 0 on a log axis) are skipped,
//! degenerate ranges are padded, and a chart with nothing to plot says "no data".

use std::ffi::OsString;
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

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
    write_png(path, &buf, w, h)
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
    write_png(path, &buf, w, h)
}

/// Encodes `rgb` as PNG and puts it at `path` through a temp file in the same directory.
fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write {}: not a file path", path.display()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Number formatting and ticks

/// `v` with 3 significant digits (integers below 10⁴ in full), scientific outside
/// [1e-3, 1e4): `0.923`, `500`, `2048`, `1.6e4`, `2.5e-5`.
fn fmt_sig(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a < 1e-12 {
        return "0".to_string();
    }
    if !(1e-3..1e4).contains(&a) {
        let s = format!("{v:.2e}");
        return match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m)),
            None => s,
        };
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A tick label on a linear axis whose ticks are `step` apart.
fn fmt_tick(v: f64, step: f64, sci: bool) -> String {
    if v.abs() < step * 1e-6 {
        return "0".to_string();
    }
    if sci {
        return fmt_sig(v);
    }
    let decimals = (-step.log10() - 1e-9).ceil().clamp(0.0, 12.0) as usize;
    format!("{v:.decimals$}")
}

/// Whether a linear axis with these ticks needs scientific labels.
fn needs_sci(ticks: &[f64], step: f64) -> bool {
    let max = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    max >= 1e5 || step < 1e-3
}

/// A 1-2-5 step giving at most about `max_ticks` ticks over `span`.
fn nice_step(span: f64, max_ticks: usize) -> f64 {
    let raw = span / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Ticks at multiples of a nice step inside `[lo, hi]`, and the step.
fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> (Vec<f64>, f64) {
    let step = nice_step(hi - lo, max_ticks);
    if !(step.is_finite() && step > 0.0) {
        return (vec![lo], 1.0);
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    if last.saturating_sub(first) > 1000 {
        // Precision trouble (a range far narrower than its magnitude): just the ends.
        return (vec![lo, hi], step);
    }
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// Keeps ticks (sorted, in axis units) whose labels do not overlap on an axis of
/// `axis_px` pixels spanning `lo..hi`.
fn thin_ticks(ticks: &[f64], labels: &[String], lo: f64, hi: f64, axis_px: f64) -> Vec<f64> {
    let px = |v: f64| (v - lo) / (hi - lo) * axis_px;
    let width = |s: &str| text_size(s, TICK_SIZE).map_or(8.0 * s.len() as f64, |(w, _)| w as f64);
    let mut kept: Vec<(f64, f64)> = Vec::new();
    for (&t, label) in ticks.iter().zip(labels) {
        let w = width(label);
        match kept.last() {
            Some(&(lt, lw)) if px(t) - px(lt) < (lw + w) / 2.0 + 12.0 => {}
            _ => kept.push((t, w)),
        }
    }
    kept.into_iter().map(|(t, _)| t).collect()
}

/// Log-axis ticks (in log10 units) inside `[lo, hi]`: the data's own x values when there are
/// few, else 1-2-5 per decade; thinned so labels do not overlap.
fn log_ticks(data_x: &[f64], lo: f64, hi: f64, axis_px: f64) -> Vec<f64> {
    let mut xs: Vec<f64> = data_x.to_vec();
    xs.sort_by(f64::total_cmp);
    xs.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let candidates = if !xs.is_empty() && xs.len() <= 15 {
        xs
    } else {
        let mut out = Vec::new();
        for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
            for m in [1.0f64, 2.0, 5.0] {
                let v = k as f64 + m.log10();
                if v >= lo - 1e-9 && v <= hi + 1e-9 {
                    out.push(v);
                }
            }
        }
        let decades: Vec<f64> = out.iter().copied().filter(|v| v.fract() == 0.0).collect();
        if out.len() > 12 && decades.len() >= 2 {
            decades
        } else {
            out
        }
    };
    let labels: Vec<String> = candidates.iter().map(|v| fmt_sig(10f64.powf(*v))).collect();
    thin_ticks(&candidates, &labels, lo, hi, axis_px)
}

/// `(lo, hi)` padded by `frac` of the span, or by a fixed amount when the span is zero.
fn pad_range(lo: f64, hi: f64, frac: f64, zero_pad: f64) -> (f64, f64) {
    if hi - lo > 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = (lo.abs() * 0.1).max(zero_pad);
        (lo - pad, hi + pad)
    }
}

fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Whether data spanning `lo..hi` looks like a fraction in [0, 1] (e.g. a memorized ratio),
/// to be shown on a full 0–1 axis. Small values (a loss of 1e-3, say) are not: a 0–1 axis
/// would flatten them.
fn looks_like_fraction(lo: f64, hi: f64) -> bool {
    lo >= 0.0 && (0.2..=1.2).contains(&hi)
}

/// A usable explicit range, if given (reversed bounds are swapped, equal ones padded).
fn valid_range(range: Option<(f64, f64)>) -> Option<(f64, f64)> {
    let (lo, hi) = range?;
    if !(lo.is_finite() && hi.is_finite()) {
        return None;
    }
    Some(if lo < hi {
        (lo, hi)
    } else if lo > hi {
        (hi, lo)
    } else {
        pad_range(lo, hi, 0.0, 0.5)
    })
}

/// Liang–Barsky: the part of segment `a`–`b` inside the rectangle, if any.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - x0),
        (dx, x1 - a.0),
        (-dy, a.1 - y0),
        (dy, y1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// A linear f64 axis over `lo..hi` with exactly the given tick positions (no light mesh).
#[derive(Clone)]
struct TickAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value - self.lo) / (self.hi - self.lo);
        let len = f64::from(limit.1 - limit.0);
        // `as` saturates huge values and maps NaN to 0; callers clip before drawing.
        limit.0 + (len * t + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn axis(lo: f64, hi: f64, ticks: Vec<f64>) -> TickAxis {
    TickAxis { lo, hi, ticks }
}

/// Writes "no data" in the middle of `area`.
fn draw_no_data<CT: CoordTranslate>(area: &DrawingArea<BitMapBackend, CT>) -> Result<()> {
    let (xr, yr) = area.get_pixel_range();
    let (w, h) = ((xr.end - xr.start) as u32, (yr.end - yr.start) as u32);
    // `draw_text` on a Cartesian area takes data coordinates; go through a shifted area.
    let shifted: DrawingArea<BitMapBackend, Shift> = area.strip_coord_spec();
    shifted.draw_text(
        "no data",
        &font(20.0)
            .color(&RGBColor(110, 110, 110))
            .pos(Pos::new(HPos::Center, VPos::Center)),
        ((w / 2) as i32, (h / 2) as i32),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Line chart

fn draw_line_chart(buf: &mut [u8], size: (u32, u32), chart: &LineChart) -> Result<()> {
    let prepared: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || *x > 0.0))
                .map(|&(x, y)| if chart.log_x { (x.log10(), y) } else { (x, y) })
                .collect()
        })
        .collect();
    let all = || prepared.iter().flatten();
    let has_data = all().next().is_some();
    let hline = chart.hline.filter(|(y, _)| y.is_finite());

    // x range (in log10 units on a log axis).
    let (x_lo, x_hi) = match min_max(all().map(|p| p.0)) {
        Some((lo, hi)) if chart.log_x => pad_range(lo, hi, 0.04, 0.5),
        Some((lo, hi)) => pad_range(lo, hi, 0.03, 0.5),
        None => (0.0, 1.0),
    };
    // y range.
    let (y_lo, y_hi) = valid_range(chart.y_range).unwrap_or_else(|| {
        let ys = all().map(|p| p.1).chain(hline.map(|h| h.0));
        match min_max(ys) {
            None => (0.0, 1.05),
            Some((lo, hi)) if looks_like_fraction(lo, hi) => (0.0, hi.max(1.0) * 1.05),
            Some((lo, hi)) => {
                let (a, b) = pad_range(lo, hi, 0.05, 0.5);
                // Padding alone never takes non-negative data below zero.
                (if lo >= 0.0 { a.max(0.0) } else { a }, b)
            }
        }
    });

    let (y_ticks, y_step) = linear_ticks(y_lo, y_hi, 8);
    let y_sci = needs_sci(&y_ticks, y_step);
    let y_fmt = |v: &f64| fmt_tick(*v, y_step, y_sci);
    let y_label_w = y_ticks
        .iter()
        .map(|t| text_size(&y_fmt(t), TICK_SIZE).map(|s| s.0))
        .try_fold(0, |m, w| w.map(|w| m.max(w)))?;
    let y_area = y_label_w + 12 + if chart.y_label.is_empty() { 0 } else { 28 };
    let x_axis_px = f64::from(size.0.saturating_sub(2 * MARGIN + y_area).max(1));

    let (x_ticks, x_step) = if chart.log_x {
        let xs: Vec<f64> = all().map(|p| p.0).collect();
        (log_ticks(&xs, x_lo, x_hi, x_axis_px), 0.0)
    } else {
        linear_ticks(x_lo, x_hi, 10)
    };
    let x_sci = !chart.log_x && needs_sci(&x_ticks, x_step);
    let x_fmt = |v: &f64| {
        if chart.log_x {
            fmt_sig(10f64.powf(*v))
        } else {
            fmt_tick(*v, x_step, x_sci)
        }
    };

    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    if !chart.title.is_empty() {
        builder.caption(chart.title, font(TITLE_SIZE));
    }
    let mut cc = builder
        .margin(MARGIN)
        .x_label_area_size(if chart.x_label.is_empty() { 30 } else { 52 })
        .y_label_area_size(y_area)
        .build_cartesian_2d(axis(x_lo, x_hi, x_ticks), axis(y_lo, y_hi, y_ticks))?;
    cc.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(DESC_SIZE))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()?;

    let xr = (x_lo, x_hi);
    let yr = (y_lo, y_hi);
    let inside = |p: &(f64, f64)| p.0 >= x_lo && p.0 <= x_hi && p.1 >= y_lo && p.1 <= y_hi;
    // Pixels the data covers, to keep the legend off them.
    let mut covered: Vec<Px> = Vec::new();
    let mut cover_segment = |a: (f64, f64), b: (f64, f64), cc: &LineContext| {
        let (pa, pb) = (cc.backend_coord(&a), cc.backend_coord(&b));
        let len = (pa.0 - pb.0).abs().max((pa.1 - pb.1).abs());
        let n = (len / 4).max(1);
        for k in 0..=n {
            let t = f64::from(k) / f64::from(n);
            let lerp = |u: i32, v: i32| u + (f64::from(v - u) * t).round() as i32;
            covered.push((lerp(pa.0, pb.0), lerp(pa.1, pb.1)));
        }
    };
    let mut labels: Vec<String> = Vec::new();
    for (i, (series, pts)) in chart.series.iter().zip(&prepared).enumerate() {
        let color = palette(i);
        let style = color.stroke_width(2);
        let segments: Vec<_> = pts
            .windows(2)
            .filter_map(|w| clip_segment(w[0], w[1], xr, yr))
            .collect();
        for &(a, b) in &segments {
            cover_segment(a, b, &cc);
        }
        let markers: Vec<(f64, f64)> = pts.iter().copied().filter(|p| inside(p)).collect();
        for p in &markers {
            cover_segment(*p, *p, &cc);
        }
        let ann = cc.draw_series(
            segments
                .into_iter()
                .map(|(a, b)| PathElement::new(vec![a, b], style)),
        )?;
        if !series.label.is_empty() {
            labels.push(series.label.clone());
            ann.label(series.label.as_str()).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (18, 0)], style)
                    + Circle::new((9, 0), 3, color.filled())
            });
        }
        cc.draw_series(
            markers
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    if let Some((y, label)) = hline {
        let style = HLINE_COLOR.stroke_width(2);
        let line = if y >= y_lo && y <= y_hi {
            cover_segment((x_lo, y), (x_hi, y), &cc);
            vec![(x_lo, y), (x_hi, y)]
        } else {
            vec![]
        };
        let ann = cc.draw_series(DashedLineSeries::new(line, 8, 5, style))?;
        if !label.is_empty() {
            labels.push(label.to_string());
            ann.label(label).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (6, 0)], style)
                    + PathElement::new(vec![(12, 0), (18, 0)], style)
            });
        }
    }
    if !labels.is_empty() {
        let position = legend_position(cc.plotting_area(), &labels, &covered)?;
        cc.configure_series_labels()
            .position(position)
            .margin(LEGEND_MARGIN)
            .legend_area_size(LEGEND_KEY)
            .label_font(font(TICK_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    if !has_data {
        draw_no_data(cc.plotting_area())?;
    }
    root.present()?;
    Ok(())
}

/// A pixel position on the bitmap.
type Px = (i32, i32);

type LineContext<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<TickAxis, TickAxis>>;

const LEGEND_MARGIN: u32 = 10;
const LEGEND_KEY: u32 = 28;

/// The legend corner: upper right, unless another corner's legend box would cover fewer of
/// the `covered` pixels (absolute backend coordinates).
fn legend_position<CT: CoordTranslate>(
    area: &DrawingArea<BitMapBackend, CT>,
    labels: &[String],
    covered: &[Px],
) -> Result<SeriesLabelPosition> {
    // The same box plotters computes when it draws the legend.
    let style = font(TICK_SIZE);
    let mut text = MultiLineText::<Px, &str>::new((0, 0), &style);
    for label in labels {
        text.push_line(label.as_str());
    }
    let (w, h) = text.estimate_dimension()?;
    let (w, h) = (
        w + (LEGEND_KEY + 2 * LEGEND_MARGIN) as i32,
        h + 2 * LEGEND_MARGIN as i32,
    );
    let (xr, yr) = area.get_pixel_range();
    let candidates = [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerLeft,
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for position in candidates {
        let right = matches!(
            position,
            SeriesLabelPosition::UpperRight | SeriesLabelPosition::LowerRight
        );
        let upper = matches!(
            position,
            SeriesLabelPosition::UpperRight | SeriesLabelPosition::UpperLeft
        );
        let x0 = if right { xr.end - w - 5 } else { xr.start + 5 };
        let y0 = if upper { yr.start + 5 } else { yr.end - h - 5 };
        // A little slack around the box: markers have a radius.
        let hits = covered
            .iter()
            .filter(|(x, y)| *x >= x0 - 4 && *x <= x0 + w + 4 && *y >= y0 - 4 && *y <= y0 + h + 4)
            .count();
        if hits < best.0 {
            best = (hits, position);
        }
    }
    Ok(best.1)
}

// ---------------------------------------------------------------------------------------------
// Bar chart

const GROUP_LABEL_SIZE: f64 = 14.0;
const VALUE_SIZE: f64 = 12.0;
const LEGEND_ROW: u32 = 24;
/// Longest (rotated) group label, in pixels; longer ones are cut with "…".
const MAX_ROTATED_LABEL: u32 = 200;

/// Sizes and texts of a bar chart, worked out before drawing.
struct BarLayout {
    width: u32,
    height: u32,
    /// Distinct bar labels in first-seen order; index = palette colour.
    labels: Vec<String>,
    /// Legend rows: `(label index, x offset)` per entry.
    legend_rows: Vec<Vec<(usize, i32)>>,
    /// Group labels as drawn (possibly truncated).
    group_labels: Vec<String>,
    rotate: bool,
    x_area: u32,
    y_area: u32,
    y_range: (f64, f64),
    y_ticks: Vec<f64>,
    y_step: f64,
    y_sci: bool,
    has_data: bool,
}

impl BarLayout {
    fn new(chart: &BarChart) -> Result<Self> {
        let n_groups = chart.groups.len();
        let n_bars: usize = chart.groups.iter().map(|(_, bars)| bars.len()).sum();
        let width = (60 * n_bars as u64 + 150).clamp(800, u64::from(BAR_MAX_WIDTH)) as u32;

        let mut labels: Vec<String> = Vec::new();
        for (_, bars) in chart.groups {
            for bar in bars {
                if !labels.contains(&bar.label) {
                    labels.push(bar.label.clone());
                }
            }
        }
        // Legend entries in rows that fit the width.
        let mut legend_rows: Vec<Vec<(usize, i32)>> = Vec::new();
        if labels.len() > 1 {
            let avail = (width - 2 * MARGIN) as i32;
            let mut row: Vec<(usize, i32)> = Vec::new();
            let mut x = 0i32;
            for (i, label) in labels.iter().enumerate() {
                let item = 14 + 6 + text_size(label, TICK_SIZE)?.0 as i32 + 22;
                if x + item > avail && !row.is_empty() {
                    legend_rows.push(std::mem::take(&mut row));
                    x = 0;
                }
                row.push((i, x));
                x += item;
            }
            legend_rows.push(row);
        }

        let values = || {
            chart
                .groups
                .iter()
                .flat_map(|(_, bars)| bars.iter().map(|b| b.value))
        };
        let data = min_max(values());
        let y_range = valid_range(chart.y_range).unwrap_or(match data {
            None => (0.0, 1.1),
            Some((lo, hi)) if looks_like_fraction(lo, hi) => (0.0, hi.max(1.0) * 1.1),
            Some((lo, hi)) => {
                let (lo, hi) = (lo.min(0.0), hi.max(0.0));
                let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
                let lo = if lo < 0.0 { lo - 0.1 * span } else { lo };
                (lo, hi + 0.1 * span)
            }
        });
        let (y_ticks, y_step) = linear_ticks(y_range.0, y_range.1, 8);
        let y_sci = needs_sci(&y_ticks, y_step);
        let y_label_w = y_ticks
            .iter()
            .map(|t| text_size(&fmt_tick(*t, y_step, y_sci), TICK_SIZE).map(|s| s.0))
            .try_fold(0, |m, w| w.map(|w| m.max(w)))?;
        let y_area = y_label_w + 12 + if chart.y_label.is_empty() { 0 } else { 28 };

        // Group labels: horizontal if they all fit their slots, else rotated and cut.
        let slot_px = f64::from(width.saturating_sub(2 * MARGIN + y_area)) / n_groups.max(1) as f64;
        let mut widest = 0;
        for (name, _) in chart.groups {
            widest = widest.max(text_size(name, GROUP_LABEL_SIZE)?.0);
        }
        let rotate = f64::from(widest) > slot_px - 8.0;
        let group_labels = chart
            .groups
            .iter()
            .map(|(name, _)| {
                if rotate {
                    truncate_to(name, MAX_ROTATED_LABEL)
                } else {
                    Ok(name.clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let x_area = if rotate {
            let mut longest = 0;
            for label in &group_labels {
                longest = longest.max(text_size(label, GROUP_LABEL_SIZE)?.0);
            }
            longest + 16
        } else {
            34
        };
        let legend_h = legend_rows.len() as u32 * LEGEND_ROW;
        let height = BAR_HEIGHT + legend_h + x_area.saturating_sub(34);
        Ok(Self {
            width,
            height,
            labels,
            legend_rows,
            group_labels,
            rotate,
            x_area,
            y_area,
            y_range,
            y_ticks,
            y_step,
            y_sci,
            has_data: data.is_some(),
        })
    }
}

/// `text` cut (with "…") to at most `max_px` pixels wide.
fn truncate_to(text: &str, max_px: u32) -> Result<String> {
    if text_size(text, GROUP_LABEL_SIZE)?.0 <= max_px {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let mut n = chars.len();
    while n > 1 {
        n -= 1;
        let cut: String = chars[..n].iter().collect::<String>() + "…";
        if text_size(&cut, GROUP_LABEL_SIZE)?.0 <= max_px {
            return Ok(cut);
        }
    }
    Ok("…".to_string())
}

fn draw_bar_chart(buf: &mut [u8], chart: &BarChart, layout: &BarLayout) -> Result<()> {
    let root = BitMapBackend::with_buffer(buf, (layout.width, layout.height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = root.margin(MARGIN / 2, 0, 0, 0);
    let body = if chart.title.is_empty() {
        top
    } else {
        top.titled(chart.title, font(TITLE_SIZE))?
    };
    let legend_h = layout.legend_rows.len() as u32 * LEGEND_ROW;
    let (legend_area, plot_area) = body.split_vertically(legend_h);

    // Legend: rows of colour swatch + label, centred.
    let avail = (layout.width - 2 * MARGIN) as i32;
    for (r, row) in layout.legend_rows.iter().enumerate() {
        let row_w = match row.last() {
            Some(&(i, x)) => x + 20 + text_size(&layout.labels[i], TICK_SIZE)?.0 as i32,
            None => 0,
        };
        let x0 = MARGIN as i32 + (avail - row_w).max(0) / 2;
        let yc = (r as u32 * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        for &(i, x) in row {
            let x = x0 + x;
            legend_area.draw(&Rectangle::new(
                [(x, yc - 7), (x + 14, yc + 7)],
                palette(i).filled(),
            ))?;
            legend_area.draw_text(
                &layout.labels[i],
                &font(TICK_SIZE).pos(Pos::new(HPos::Left, VPos::Center)),
                (x + 20, yc),
            )?;
        }
    }

    let n_groups = chart.groups.len().max(1);
    let (y_lo, y_hi) = layout.y_range;
    let mut cc = ChartBuilder::on(&plot_area)
        .margin(MARGIN)
        .x_label_area_size(layout.x_area)
        .y_label_area_size(layout.y_area)
        .build_cartesian_2d(
            axis(0.0, n_groups as f64, Vec::new()),
            axis(y_lo, y_hi, layout.y_ticks.clone()),
        )?;
    let y_fmt = |v: &f64| fmt_tick(*v, layout.y_step, layout.y_sci);
    cc.configure_mesh()
        .disable_x_mesh()
        .y_desc(chart.y_label)
        .y_label_formatter(&y_fmt)
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(DESC_SIZE))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()?;

    let clamp = |v: f64| v.clamp(y_lo, y_hi);
    let base = clamp(0.0);
    for (g, (_, bars)) in chart.groups.iter().enumerate() {
        let slot = 0.8 / bars.len().max(1) as f64;
        for (b, bar) in bars.iter().enumerate() {
            let x0 = g as f64 + 0.1 + (b as f64 + 0.06) * slot;
            let x1 = g as f64 + 0.1 + (b as f64 + 0.94) * slot;
            let xc = (x0 + x1) / 2.0;
            let bar_px = (cc.backend_coord(&(x1, base)).0 - cc.backend_coord(&(x0, base)).0) as u32;
            if !bar.value.is_finite() {
                let (px, py) = cc.backend_coord(&(xc, base));
                root.draw_text(
                    "n/a",
                    &font(VALUE_SIZE).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    (px, py - 3),
                )?;
                continue;
            }
            let color = palette(
                layout
                    .labels
                    .iter()
                    .position(|l| *l == bar.label)
                    .unwrap_or(0),
            );
            let top = clamp(bar.value);
            cc.draw_series(std::iter::once(Rectangle::new(
                [(x0, base), (x1, top)],
                color.filled(),
            )))?;
            let text = fmt_sig(bar.value);
            let mut size = VALUE_SIZE;
            while size > 8.0 && text_size(&text, size)?.0 > bar_px + 6 {
                size -= 1.0;
            }
            let (px, py) = cc.backend_coord(&(xc, top));
            let (v_pos, dy) = if bar.value >= 0.0 {
                (VPos::Bottom, -3)
            } else {
                (VPos::Top, 3)
            };
            root.draw_text(
                &text,
                &font(size).pos(Pos::new(HPos::Center, v_pos)),
                (px, py + dy),
            )?;
        }
    }

    // Group labels under the x axis.
    for (g, label) in layout.group_labels.iter().enumerate() {
        let (px, py) = cc.backend_coord(&(g as f64 + 0.5, y_lo));
        let style = if layout.rotate {
            font(GROUP_LABEL_SIZE)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center))
        } else {
            font(GROUP_LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Top))
        };
        root.draw_text(label, &style, (px, py + 8))?;
    }
    if !layout.has_data {
        draw_no_data(cc.plotting_area())?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memlab-plot-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Decodes an RGB PNG: `(width, height, pixels)`.
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn has_color(pixels: &[u8], c: RGBColor) -> bool {
        pixels.chunks_exact(3).any(|p| p == [c.0, c.1, c.2])
    }

    fn not_uniform(pixels: &[u8]) -> bool {
        pixels.chunks_exact(3).any(|p| p != &pixels[..3])
    }

    fn series(label: &str, points: &[(f64, f64)]) -> Series {
        Series {
            label: label.to_string(),
            points: points.to_vec(),
        }
    }

    fn example_line_series() -> Vec<Series> {
        let xs = [500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0];
        vec![
            series(
                "ddpm++ (EMA)",
                &xs.map(|x: f64| (x, 1.0 - 0.35 * (x / 500.0).log2() / 5.0)),
            ),
            series(
                "unet",
                &xs.map(|x: f64| (x, 0.97 - 0.18 * (x / 500.0).log2())),
            ),
            series("optimal denoiser", &xs.map(|x| (x, 1.0))),
        ]
    }

    fn example_bar_groups() -> Vec<(String, Vec<Bar>)> {
        ["cifar10 n=1000", "cifar10 n=4000", "celeba n=1000"]
            .iter()
            .enumerate()
            .map(|(g, name)| {
                let bars = [("ddpm++", 0.923), ("unet", 0.61), ("optimal", 1.0)]
                    .iter()
                    .map(|(label, v)| Bar {
                        label: label.to_string(),
                        value: v * (1.0 - 0.2 * g as f64),
                    })
                    .collect();
                (name.to_string(), bars)
            })
            .collect()
    }

    #[test]
    fn line_chart_png() {
        let dir = temp_dir("line");
        let path = dir.join("line.png");
        let series = example_line_series();
        line_chart(
            &path,
            &LineChart {
                title: "Memorization vs. training set size",
                x_label: "training images",
                y_label: "memorized fraction",
                series: &series,
                log_x: true,
                y_range: None,
                hline: Some((0.95, "EMM threshold 1−ε")),
            },
        )
        .unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), (800, 500));
        assert!(not_uniform(&px));
        for i in 0..series.len() {
            assert!(has_color(&px, palette(i)), "colour {i} missing");
        }
        // No temp files left behind.
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bar_chart_png() {
        let dir = temp_dir("bar");
        let path = dir.join("bar.png");
        let groups = example_bar_groups();
        bar_chart(
            &path,
            &BarChart {
                title: "Memorized fraction",
                y_label: "fraction",
                groups: &groups,
                y_range: None,
            },
        )
        .unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!((w, h), (800, 500 + LEGEND_ROW));
        assert!(not_uniform(&px));
        for i in 0..3 {
            assert!(has_color(&px, palette(i)), "colour {i} missing");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bar_chart_grows_with_bars_and_rotates_labels() {
        let dir = temp_dir("bar-wide");
        let path = dir.join("wide.png");
        let groups: Vec<(String, Vec<Bar>)> = (0..20)
            .map(|g| {
                let bars = (0..2)
                    .map(|b| Bar {
                        label: format!("model {b}"),
                        value: (g * 3 + b) as f64 * 1.7,
                    })
                    .collect();
                (format!("a rather long group label number {g}"), bars)
            })
            .collect();
        bar_chart(
            &path,
            &BarChart {
                title: "Many groups",
                y_label: "loss",
                groups: &groups,
                y_range: None,
            },
        )
        .unwrap();
        let (w, h, px) = decode(&path);
        assert_eq!(w, 60 * 40 + 150);
        assert!(h > 500);
        assert!(has_color(&px, palette(0)) && has_color(&px, palette(1)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_chart_edge_cases() {
        let dir = temp_dir("line-edge");
        /// `(log_x, series, y_range)`
        type Case = (bool, Vec<Series>, Option<(f64, f64)>);
        let cases: Vec<Case> = vec![
            (false, vec![], None),
            (true, vec![], None),
            (false, vec![series("empty", &[])], None),
            (
                false,
                vec![series("nan", &[(f64::NAN, 1.0), (2.0, f64::NAN)])],
                None,
            ),
            (false, vec![series("one", &[(3.0, 7.0)])], None),
            (true, vec![series("one", &[(1000.0, 0.5)])], None),
            (
                true,
                vec![series("zero", &[(0.0, 0.1), (-5.0, 0.2), (10.0, 0.3)])],
                None,
            ),
            (true, vec![series("only zero", &[(0.0, 0.1)])], None),
            (
                false,
                vec![series("same x", &[(2.0, 1.0), (2.0, 3.0)])],
                None,
            ),
            (
                false,
                vec![series("same y", &[(1.0, 5.0), (2.0, 5.0)])],
                None,
            ),
            (
                false,
                vec![series("inf", &[(1.0, f64::INFINITY), (2.0, 1.0)])],
                None,
            ),
            (
                false,
                vec![series("clipped", &[(0.0, -1.0), (1.0, 2.0), (2.0, 0.5)])],
                Some((0.0, 1.0)),
            ),
            (
                false,
                vec![series("bad range", &[(0.0, 1.0)])],
                Some((1.0, 1.0)),
            ),
            (
                false,
                vec![series("nan range", &[(0.0, 1.0)])],
                Some((f64::NAN, 1.0)),
            ),
            (
                false,
                vec![series("tiny", &[(1e-7, 2e-9), (3e-7, 5e-9)])],
                None,
            ),
            (
                false,
                vec![series("huge", &[(1e6, 2e9), (3e6, -5e9)])],
                None,
            ),
            (
                false,
                vec![series("extreme", &[(-1e308, 1e308), (1e308, -1e308)])],
                None,
            ),
            (
                true,
                vec![series("extreme log", &[(1e-300, 1.0), (1e300, 2.0)])],
                None,
            ),
            (
                false,
                vec![series("narrow", &[(0.0, 1.0)])],
                Some((1e20, 1e20 + 1e5)),
            ),
            (
                false,
                (0..14)
                    .map(|i| series(&format!("s{i}"), &[(0.0, i as f64), (1.0, 1.0)]))
                    .collect(),
                None,
            ),
        ];
        for (i, (log_x, series, y_range)) in cases.iter().enumerate() {
            let path = dir.join(format!("case{i}.png"));
            line_chart(
                &path,
                &LineChart {
                    title: "edge",
                    series,
                    log_x: *log_x,
                    y_range: *y_range,
                    hline: Some((f64::NAN, "nan line")),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("case {i}: {e:#}"));
            let (w, h, px) = decode(&path);
            assert_eq!((w, h), (800, 500));
            assert!(not_uniform(&px));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bar_chart_edge_cases() {
        let dir = temp_dir("bar-edge");
        let bar = |label: &str, value: f64| Bar {
            label: label.to_string(),
            value,
        };
        let cases: Vec<Vec<(String, Vec<Bar>)>> = vec![
            vec![],
            vec![("empty".to_string(), vec![])],
            vec![("nan".to_string(), vec![bar("a", f64::NAN)])],
            vec![("mixed".to_string(), vec![bar("a", f64::NAN), bar("b", 2.0)])],
            vec![("neg".to_string(), vec![bar("a", -3.0), bar("b", 2.0)])],
            vec![("zero".to_string(), vec![bar("a", 0.0)])],
            vec![(String::new(), vec![bar("", 1e-6)])],
        ];
        for (i, groups) in cases.iter().enumerate() {
            let path = dir.join(format!("case{i}.png"));
            bar_chart(
                &path,
                &BarChart {
                    groups,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("case {i}: {e:#}"));
            let (_, _, px) = decode(&path);
            assert!(not_uniform(&px));
        }
        let groups = example_bar_groups();
        bar_chart(
            &dir.join("ranged.png"),
            &BarChart {
                groups: &groups,
                y_range: Some((0.5, 0.8)),
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_path() {
        let path = std::env::temp_dir()
            .join("memlab-plot-no-such-dir-7d1f")
            .join("x.png");
        let err = line_chart(&path, &LineChart::default()).unwrap_err();
        assert!(format!("{err:#}").contains(&path.display().to_string()));
        let err = bar_chart(&path, &BarChart::default()).unwrap_err();
        assert!(format!("{err:#}").contains(&path.display().to_string()));
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_sig(500.0), "500");
        assert_eq!(fmt_sig(1000.0), "1000");
        assert_eq!(fmt_sig(2048.0), "2048");
        assert_eq!(fmt_sig(16000.0), "1.6e4");
        assert_eq!(fmt_sig(16384.0), "1.64e4");
        assert_eq!(fmt_sig(0.92345), "0.923");
        assert_eq!(fmt_sig(1.0), "1");
        assert_eq!(fmt_sig(2.5e-5), "2.5e-5");
        assert_eq!(fmt_sig(0.0), "0");
        assert_eq!(fmt_sig(f64::NAN), "n/a");
        assert_eq!(fmt_tick(0.30000000000000004, 0.1, false), "0.3");
        assert_eq!(fmt_tick(1.0, 0.2, false), "1.0");
        assert_eq!(fmt_tick(40.0, 20.0, false), "40");
        assert_eq!(fmt_tick(1e-17, 0.1, false), "0");
    }

    #[test]
    fn log_ticks_use_data_values() {
        let xs: Vec<f64> = [500.0f64, 1000.0, 2000.0, 16000.0]
            .iter()
            .map(|x| x.log10())
            .collect();
        let (lo, hi) = pad_range(xs[0], xs[3], 0.04, 0.5);
        let labels: Vec<String> = log_ticks(&xs, lo, hi, 700.0)
            .iter()
            .map(|v| fmt_sig(10f64.powf(*v)))
            .collect();
        assert_eq!(labels, ["500", "1000", "2000", "1.6e4"]);
    }

    #[test]
    fn clipping() {
        let r = (0.0, 1.0);
        assert_eq!(
            clip_segment((0.5, -1.0), (0.5, 2.0), r, r),
            Some(((0.5, 0.0), (0.5, 1.0)))
        );
        assert_eq!(clip_segment((2.0, 2.0), (3.0, 3.0), r, r), None);
    }

    /// Renders example figures for a visual check into `$PLOT_EXAMPLES_DIR`
    /// (default: `<temp dir>/memlab-plot-examples`). Run with `--ignored`.
    #[test]
    #[ignore]
    fn render_examples() {
        let dir = std::env::var_os("PLOT_EXAMPLES_DIR").map_or_else(
            || std::env::temp_dir().join("memlab-plot-examples"),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.as_path();
        let examples = example_line_series();
        line_chart(
            &dir.join("line.png"),
            &LineChart {
                title: "Memorization vs. training set size",
                x_label: "training images",
                y_label: "memorized fraction",
                series: &examples,
                log_x: true,
                y_range: None,
                hline: Some((0.95, "EMM threshold 1−ε")),
            },
        )
        .unwrap();
        let groups = example_bar_groups();
        bar_chart(
            &dir.join("bar.png"),
            &BarChart {
                title: "Memorized fraction",
                y_label: "fraction",
                groups: &groups,
                y_range: None,
            },
        )
        .unwrap();
        // Extra figures for the visual check of layouts and edge cases.
        let loss: Vec<Series> = (0..3)
            .map(|k| {
                let pts: Vec<(f64, f64)> = (0..=40)
                    .map(|e| {
                        let e = f64::from(e) * 250.0;
                        (
                            e,
                            2.5e-3 * (1.0 + f64::from(k)) * (-e / 4000.0).exp() + 1e-4,
                        )
                    })
                    .collect();
                series(&format!("lr = {}e-4", 1 + k), &pts)
            })
            .collect();
        line_chart(
            &dir.join("line_linear.png"),
            &LineChart {
                title: "Training loss",
                x_label: "step",
                y_label: "loss",
                series: &loss,
                ..Default::default()
            },
        )
        .unwrap();
        line_chart(
            &dir.join("line_empty.png"),
            &LineChart {
                title: "Nothing yet",
                x_label: "x",
                y_label: "y",
                series: &[series("empty", &[])],
                log_x: true,
                hline: Some((0.95, "threshold")),
                ..Default::default()
            },
        )
        .unwrap();
        let wide: Vec<(String, Vec<Bar>)> = (0..20)
            .map(|g| {
                let bars = (0..2)
                    .map(|b| Bar {
                        label: format!("model {b}"),
                        value: if g == 3 {
                            f64::NAN
                        } else {
                            (g * 3 + b) as f64 * 1.7 - 10.0
                        },
                    })
                    .collect();
                (format!("dataset-{g} with a rather long name"), bars)
            })
            .collect();
        bar_chart(
            &dir.join("bar_wide.png"),
            &BarChart {
                title: "Many groups",
                y_label: "score",
                groups: &wide,
                y_range: None,
            },
        )
        .unwrap();
    }
}
