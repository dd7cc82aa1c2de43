//! Rendered examples and edge cases of the charts (decoded back and inspected).

use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bar::LEGEND_ROW;

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
    // The parent is a regular file, so no directory can be made there.
    let dir = temp_dir("errors");
    std::fs::write(dir.join("file"), b"").unwrap();
    let path = dir.join("file").join("x.png");
    let err = line_chart(&path, &LineChart::default()).unwrap_err();
    assert!(format!("{err:#}").contains(&path.display().to_string()));
    let err = bar_chart(&path, &BarChart::default()).unwrap_err();
    assert!(format!("{err:#}").contains(&path.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
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
