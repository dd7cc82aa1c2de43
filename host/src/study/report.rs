//! A study's report: `results.csv`/`.json`, figures (PNG), `report.md` and a static
//! `report.html` that shows the table and the figures together. Everything is regenerated
//! from the cell directories, so `memlab report` also merges cells run elsewhere (Slurm).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use super::exec::Manifest;
use super::results::{self, CellStatus, Row};
use crate::io::output::write_atomic;
use crate::plot::{Bar, BarChart, LineChart, Series, bar_chart, line_chart};

/// What `report` produced.
#[derive(Debug)]
pub struct Report {
    /// Rows (one per cell).
    pub rows: Vec<Row>,
    /// Figure files, relative to the study directory.
    pub figures: Vec<String>,
}

/// Reads `study.json` of a study directory.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join("study.json");
    let t = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{} is not a study directory (no study.json; `memlab study CONFIG` creates it)",
            dir.display()
        )
    })?;
    serde_json::from_str(&t)
        .with_context(|| format!("{}: not a memlab study manifest", p.display()))
}

/// The numeric key the line figures put on the x axis: `[study] x`, else `dataset.size` (or
/// any `*.size`) when swept, else the first key whose values are all numbers (≥ 2 distinct).
pub fn x_key(m: &Manifest, rows: &[Row]) -> Option<String> {
    let numeric = |k: &str| {
        let mut v: Vec<f64> = rows.iter().filter_map(|r| r.number(k)).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        rows.iter().all(|r| r.number(k).is_some()) && v.len() >= 2
    };
    if let Some(x) = &m.x {
        return Some(x.clone());
    }
    if m.keys.iter().any(|k| k == "dataset.size") && numeric("dataset.size") {
        return Some("dataset.size".into());
    }
    m.keys
        .iter()
        .find(|k| k.ends_with(".size") && numeric(k))
        .or_else(|| m.keys.iter().find(|k| numeric(k)))
        .cloned()
}

/// Legend label of a row: its swept values other than `x`.
fn series_label(r: &Row, keys: &[String], x: Option<&str>) -> String {
    let parts: Vec<String> = keys
        .iter()
        .filter(|k| Some(k.as_str()) != x)
        .map(|k| {
            format!(
                "{}={}",
                super::short_key(k),
                r.labels.get(k).cloned().unwrap_or_default()
            )
        })
        .collect();
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(", ")
    }
}

fn cell_label(r: &Row, keys: &[String]) -> String {
    if keys.is_empty() {
        return r.cell.clone();
    }
    keys.iter()
        .map(|k| {
            format!(
                "{}={}",
                super::short_key(k),
                r.labels.get(k).cloned().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The swept keys that tell the lines of a figure along `x` apart: all but `x` and the keys
/// zipped with it.
fn legend_keys(m: &Manifest, x: &str) -> Vec<String> {
    let with_x: Vec<&String> = m
        .zip
        .iter()
        .filter(|g| g.iter().any(|k| k == x))
        .flatten()
        .collect();
    m.keys
        .iter()
        .filter(|k| !with_x.contains(k))
        .cloned()
        .collect()
}

/// Groups rows into line series along `x`, `value` giving the y of a row.
fn series(
    rows: &[Row],
    keys: &[String],
    x: &str,
    value: impl Fn(&Row) -> Vec<(String, f64)>,
) -> Vec<Series> {
    // Series in the order the sweep lists their values (rows are in grid order).
    let mut by: indexmap::IndexMap<String, Vec<(f64, f64)>> = indexmap::IndexMap::new();
    for r in rows {
        let Some(xv) = r.number(x) else { continue };
        let base = series_label(r, keys, Some(x));
        for (suffix, y) in value(r) {
            let label = if suffix.is_empty() {
                base.clone()
            } else if base == "all" {
                suffix.clone()
            } else {
                format!("{base}, {suffix}")
            };
            by.entry(label).or_default().push((xv, y));
        }
    }
    by.into_iter()
        .map(|(label, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { label, points }
        })
        .collect()
}

fn log_scale(rows: &[Row], x: &str) -> bool {
    let v: Vec<f64> = rows.iter().filter_map(|r| r.number(x)).collect();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    lo > 0.0 && hi / lo >= 4.0
}

/// The finished cells a figure is drawn over, and its numeric x axis if the sweep has one.
struct Over<'a> {
    manifest: &'a Manifest,
    done: &'a [Row],
    x: Option<&'a str>,
}

/// A ratio figure: lines along `over.x` (one per legend value and per label `value` returns),
/// or grouped bars per cell when the sweep has no numeric axis.
fn ratio_figure(
    path: &Path,
    title: &str,
    over: &Over,
    criterion: &str,
    value: impl Fn(&Row) -> Vec<(String, f64)>,
) -> Result<()> {
    let (m, done) = (over.manifest, over.done);
    match over.x {
        Some(x) => {
            let s = series(done, &legend_keys(m, x), x, value);
            line_chart(
                path,
                &LineChart {
                    title,
                    x_label: m.x_label.as_deref().unwrap_or(x),
                    y_label: "memorization ratio",
                    series: &s,
                    log_x: log_scale(done, x),
                    y_range: Some((0.0, 1.05)),
                    hline: None,
                },
            )
        }
        None => {
            let groups: Vec<(String, Vec<Bar>)> = done
                .iter()
                .map(|r| {
                    let bars = value(r)
                        .into_iter()
                        .map(|(label, value)| Bar {
                            label: if label.is_empty() {
                                criterion.to_string()
                            } else {
                                label
                            },
                            value,
                        })
                        .collect();
                    (cell_label(r, &m.keys), bars)
                })
                .collect();
            bar_chart(
                path,
                &BarChart {
                    title,
                    y_label: "memorization ratio",
                    groups: &groups,
                    y_range: Some((0.0, 1.05)),
                },
            )
        }
    }
}

/// Draws every figure of the study into `dir`; returns their file names.
pub fn figures(dir: &Path, m: &Manifest, rows: &[Row]) -> Result<Vec<String>> {
    let done: Vec<Row> = rows
        .iter()
        .filter(|r| r.status == CellStatus::Finished)
        .cloned()
        .collect();
    let mut out = Vec::new();
    let x = x_key(m, &done);
    let over = Over {
        manifest: m,
        done: &done,
        x: x.as_deref(),
    };
    for c in &m.criteria {
        let overall = |r: &Row| -> Vec<(String, f64)> {
            r.ratio(c).map(|v| (String::new(), v)).into_iter().collect()
        };
        let file = format!("ratio-{}.png", slug(c));
        let title = format!("{}: memorization ratio ({c})", m.name);
        ratio_figure(&dir.join(&file), &title, &over, c, overall)?;
        out.push(file);
        // Per-class ratios (class-conditional studies, e.g. Yoon et al. H3).
        if done
            .iter()
            .any(|r| r.criteria.get(c).is_some_and(|n| !n.per_class.is_empty()))
        {
            let per = |r: &Row| -> Vec<(String, f64)> {
                r.criteria
                    .get(c)
                    .map(|n| {
                        n.per_class
                            .iter()
                            .map(|(k, v)| (format!("class {k}"), *v))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let file = format!("ratio-per-class-{}.png", slug(c));
            let title = format!("{}: memorization ratio per class ({c})", m.name);
            ratio_figure(&dir.join(&file), &title, &over, c, per)?;
            out.push(file);
        }
    }
    if let Some(x) = &x {
        let s = series(&done, &legend_keys(m, x), x, |r| {
            r.mean_nn_l2
                .map(|v| (String::new(), v))
                .into_iter()
                .collect()
        });
        let file = "nn-distance.png".to_string();
        line_chart(
            &dir.join(&file),
            &LineChart {
                title: &format!("{}: mean distance to the nearest training image", m.name),
                x_label: m.x_label.as_deref().unwrap_or(x),
                y_label: "mean L2 distance ([-1, 1] pixels)",
                series: &s,
                log_x: log_scale(&done, x),
                y_range: None,
                hline: None,
            },
        )?;
        out.push(file);
    }
    // Ratio over training (when cells evaluated every snapshot).
    if done.iter().any(|r| r.snapshot_ratios.len() > 1) {
        let s: Vec<Series> = done
            .iter()
            .filter(|r| !r.snapshot_ratios.is_empty())
            .map(|r| Series {
                label: cell_label(r, &m.keys),
                points: r
                    .snapshot_ratios
                    .iter()
                    .map(|&(s, v)| (s as f64, v))
                    .collect(),
            })
            .collect();
        let file = "ratio-vs-step.png".to_string();
        line_chart(
            &dir.join(&file),
            &LineChart {
                title: &format!("{}: memorization ratio over training", m.name),
                x_label: "training step",
                y_label: "memorization ratio",
                series: &s,
                log_x: false,
                y_range: Some((0.0, 1.05)),
                hline: None,
            },
        )?;
        out.push(file);
    }
    Ok(out)
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// Table rows as cells of text: header, then one line per row.
fn table(m: &Manifest, rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head: Vec<String> = m.keys.iter().map(|k| super::short_key(k)).collect();
    for c in &m.criteria {
        head.push(format!("ratio ({c})"));
        head.push(format!("distinct ({c})"));
    }
    head.extend(["mean d₁", "validity", "snapshot", "train s", "status"].map(String::from));
    let body = rows
        .iter()
        .map(|r| {
            let mut f: Vec<String> = m
                .keys
                .iter()
                .map(|k| r.labels.get(k).cloned().unwrap_or_default())
                .collect();
            for c in &m.criteria {
                let n = r.criteria.get(c);
                f.push(pct(n.map(|n| n.ratio)));
                f.push(
                    n.map(|n| n.distinct_replicated.to_string())
                        .unwrap_or_else(|| "–".into()),
                );
            }
            f.push(num(r.mean_nn_l2, 3));
            f.push(num(r.validity, 3));
            f.push(
                r.snapshot
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "–".into()),
            );
            f.push(num(r.train_seconds, 0));
            f.push(r.status.to_string());
            f
        })
        .collect();
    (head, body)
}

fn markdown(m: &Manifest, rows: &[Row], figures: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Study: {}\n", m.name);
    if !m.description.is_empty() {
        let _ = writeln!(s, "{}\n", m.description.trim());
    }
    let finished = rows
        .iter()
        .filter(|r| r.status == CellStatus::Finished)
        .count();
    let _ = writeln!(
        s,
        "{} cells ({finished} finished) from `{}`; swept: {}. Full numbers: `results.csv`, `results.json`.\n",
        rows.len(),
        m.file.display(),
        if m.keys.is_empty() {
            "nothing".to_string()
        } else {
            m.keys
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let (head, body) = table(m, rows);
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}|", vec!["---"; head.len()].join("|"));
    for b in &body {
        let _ = writeln!(s, "| {} |", b.join(" | "));
    }
    let _ = writeln!(s);
    for f in figures {
        let _ = writeln!(s, "![{f}]({f})\n");
    }
    let _ = writeln!(s, "## Samples and their nearest training images\n");
    for r in rows.iter().filter(|r| r.status == CellStatus::Finished) {
        let _ = writeln!(
            s,
            "**{}** — {}\n\n![nearest](cells/{}/nearest.png)\n",
            cell_label(r, &m.keys),
            r.cell,
            r.cell
        );
    }
    for r in rows.iter().filter(|r| r.status == CellStatus::Failed) {
        let _ = writeln!(
            s,
            "**{}** failed: {}\n",
            r.cell,
            r.error.clone().unwrap_or_default().trim()
        );
    }
    for r in rows.iter().filter(|r| r.status == CellStatus::Corrupt) {
        let _ = writeln!(
            s,
            "**{}** is corrupt: {}. Running the study again redoes this cell.\n",
            r.cell,
            r.error.clone().unwrap_or_default().trim()
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(m: &Manifest, rows: &[Row], figures: &[String]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title><style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th{{background:#f3f3f3}}img{{max-width:100%;image-rendering:pixelated}}.figs img{{max-width:540px;margin:4px}}\
.cell{{display:inline-block;margin:8px;vertical-align:top}}.failed{{color:#b00}}\
</style></head><body>\n<h1>Study: {0}</h1>\n",
        esc(&m.name)
    );
    if !m.description.is_empty() {
        let _ = writeln!(s, "<p>{}</p>", esc(m.description.trim()));
    }
    let _ = writeln!(
        s,
        "<p>Config <code>{}</code>. Data: <a href=\"results.csv\">results.csv</a>, <a href=\"results.json\">results.json</a>.</p>",
        esc(&m.file.display().to_string())
    );
    let (head, body) = table(m, rows);
    let _ = write!(s, "<table><tr>");
    for h in &head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    let _ = writeln!(s, "</tr>");
    for (b, r) in body.iter().zip(rows) {
        let _ = write!(
            s,
            "<tr{}>",
            if r.status == CellStatus::Failed || r.status == CellStatus::Corrupt {
                " class=\"failed\""
            } else {
                ""
            }
        );
        for f in b {
            let _ = write!(s, "<td>{}</td>", esc(f));
        }
        let _ = writeln!(s, "</tr>");
    }
    let _ = writeln!(s, "</table>");
    for r in rows
        .iter()
        .filter(|r| r.status == CellStatus::Failed || r.status == CellStatus::Corrupt)
    {
        let _ = writeln!(
            s,
            "<p class=\"failed\"><b>{}</b> {}: {}</p>",
            esc(&r.cell),
            esc(r.status.name()),
            esc(r.error.as_deref().unwrap_or_default().trim())
        );
    }
    let _ = writeln!(s, "<div class=\"figs\">");
    for f in figures {
        let _ = writeln!(
            s,
            "<a href=\"{0}\"><img src=\"{0}\" alt=\"{0}\"></a>",
            esc(f)
        );
    }
    let _ = writeln!(
        s,
        "</div>\n<h2>Samples (top) and their nearest training images (bottom)</h2>"
    );
    for r in rows.iter().filter(|r| r.status == CellStatus::Finished) {
        let _ = writeln!(
            s,
            "<div class=\"cell\"><b>{}</b><br><img src=\"cells/{1}/nearest.png\" alt=\"{1}\"></div>",
            esc(&cell_label(r, &m.keys)),
            esc(&r.cell)
        );
    }
    let _ = writeln!(s, "</body></html>");
    s
}

/// Regenerates `results.csv`, `results.json`, the figures, `report.md` and `report.html` of a
/// study directory from its cells.
pub fn report(dir: &Path) -> Result<Report> {
    let m = read_manifest(dir)?;
    let rows = results::collect(dir, &m);
    results::write(dir, &m, &rows)?;
    let figures = figures(dir, &m, &rows)?;
    write_atomic(
        &dir.join("report.md"),
        markdown(&m, &rows, &figures).as_bytes(),
    )?;
    write_atomic(
        &dir.join("report.html"),
        html(&m, &rows, &figures).as_bytes(),
    )?;
    Ok(Report { rows, figures })
}

/// Finds the study directory a path names: the directory itself, or a study file's default
/// directory.
pub fn resolve_dir(path: &Path) -> Result<PathBuf> {
    if path.join("study.json").exists() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() {
        let s = super::Study::load(path, &[])?;
        let d = s.dir(None);
        if d.join("study.json").exists() {
            return Ok(d);
        }
        return Err(anyhow!(
            "{} has not been run yet ({} does not exist)",
            path.display(),
            d.display()
        ));
    }
    Err(anyhow!(
        "{} is not a study directory (no study.json)",
        path.display()
    ))
}
