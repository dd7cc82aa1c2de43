//! Laying out and drawing a [`BarChart`]: width from the bar count, rotated group labels when
//! they collide, legend rows.

use super::*;

pub(super) const GROUP_LABEL_SIZE: f64 = 14.0;
pub(super) const VALUE_SIZE: f64 = 12.0;
pub(super) const LEGEND_ROW: u32 = 24;
/// Longest (rotated) group label, in pixels; longer ones are cut with "…".
pub(super) const MAX_ROTATED_LABEL: u32 = 200;

/// Sizes and texts of a bar chart, worked out before drawing.
pub(super) struct BarLayout {
    pub(super) width: u32,
    pub(super) height: u32,
    /// Distinct bar labels in first-seen order; index = palette colour.
    pub(super) labels: Vec<String>,
    /// Legend rows: `(label index, x offset)` per entry.
    pub(super) legend_rows: Vec<Vec<(usize, i32)>>,
    /// Group labels as drawn (possibly truncated).
    pub(super) group_labels: Vec<String>,
    pub(super) rotate: bool,
    pub(super) x_area: u32,
    pub(super) y_area: u32,
    pub(super) y_range: (f64, f64),
    pub(super) y_ticks: Vec<f64>,
    pub(super) y_step: f64,
    pub(super) y_sci: bool,
    pub(super) has_data: bool,
}

impl BarLayout {
    pub(super) fn new(chart: &BarChart) -> Result<Self> {
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
pub(super) fn truncate_to(text: &str, max_px: u32) -> Result<String> {
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

pub(super) fn draw_bar_chart(buf: &mut [u8], chart: &BarChart, layout: &BarLayout) -> Result<()> {
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
