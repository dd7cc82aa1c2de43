//! Number formatting, tick placement and axis ranges of the charts.

use super::*;

/// `v` with 3 significant digits (integers below 10⁴ in full), scientific outside
/// [1e-3, 1e4): `0.923`, `500`, `2048`, `1.6e4`, `2.5e-5`.
pub(super) fn fmt_sig(v: f64) -> String {
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

pub(super) fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A tick label on a linear axis whose ticks are `step` apart.
pub(super) fn fmt_tick(v: f64, step: f64, sci: bool) -> String {
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
pub(super) fn needs_sci(ticks: &[f64], step: f64) -> bool {
    let max = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    max >= 1e5 || step < 1e-3
}

/// A 1-2-5 step giving at most about `max_ticks` ticks over `span`.
pub(super) fn nice_step(span: f64, max_ticks: usize) -> f64 {
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
pub(super) fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> (Vec<f64>, f64) {
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
pub(super) fn thin_ticks(
    ticks: &[f64],
    labels: &[String],
    lo: f64,
    hi: f64,
    axis_px: f64,
) -> Vec<f64> {
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
pub(super) fn log_ticks(data_x: &[f64], lo: f64, hi: f64, axis_px: f64) -> Vec<f64> {
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
pub(super) fn pad_range(lo: f64, hi: f64, frac: f64, zero_pad: f64) -> (f64, f64) {
    if hi - lo > 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = (lo.abs() * 0.1).max(zero_pad);
        (lo - pad, hi + pad)
    }
}

pub(super) fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
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
pub(super) fn looks_like_fraction(lo: f64, hi: f64) -> bool {
    lo >= 0.0 && (0.2..=1.2).contains(&hi)
}

/// A usable explicit range, if given (reversed bounds are swapped, equal ones padded).
pub(super) fn valid_range(range: Option<(f64, f64)>) -> Option<(f64, f64)> {
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
pub(super) fn clip_segment(
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
pub(super) struct TickAxis {
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

pub(super) fn axis(lo: f64, hi: f64, ticks: Vec<f64>) -> TickAxis {
    TickAxis { lo, hi, ticks }
}

/// Writes "no data" in the middle of `area`.
pub(super) fn draw_no_data<CT: CoordTranslate>(
    area: &DrawingArea<BitMapBackend, CT>,
) -> Result<()> {
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
