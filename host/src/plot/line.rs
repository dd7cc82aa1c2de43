//! Drawing a [`LineChart`]: axes, lines with markers, threshold line and a legend placed where
//! it covers the fewest points.

use super::*;

pub(super) fn draw_line_chart(buf: &mut [u8], size: (u32, u32), chart: &LineChart) -> Result<()> {
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

pub(super) const LEGEND_MARGIN: u32 = 10;
pub(super) const LEGEND_KEY: u32 = 28;

/// The legend corner: upper right, unless another corner's legend box would cover fewer of
/// the `covered` pixels (absolute backend coordinates).
pub(super) fn legend_position<CT: CoordTranslate>(
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
