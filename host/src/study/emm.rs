//! Effective model memorization (DM): the largest training-set size whose memorization ratio
//! stays at or above 1 − ε. A coarse grid of sizes is run in ascending order until the ratio
//! first drops below the threshold; the bracket is then narrowed by bisection. Each size is an
//! ordinary study cell, so finished runs are reused and an interrupted search resumes. With a
//! `[sweep]`, one search runs per cell of the sweep (e.g. EMM per resolution).
//!
//! The search assumes the ratio falls with the size (as it does in both papers); the report
//! lists every evaluated size so a non-monotone curve is visible.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::exec::{self, Outcome};
use super::{Cell, Study, describe, short_key, value_label};
use crate::config::ConfigError;
use crate::io::output::write_atomic;
use crate::plot::{Bar, BarChart, LineChart, Series, bar_chart, line_chart};

/// `[emm]`: the search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmmSection {
    /// The size key (default `dataset.size`; e.g. `dataset.parts.0.size` for a mixture).
    pub key: String,
    /// Coarse grid of sizes, ascending; the search never goes beyond the last.
    pub sizes: Vec<u64>,
    /// ε: a size is memorized when its ratio is ≥ 1 − ε.
    pub epsilon: f64,
    /// Bisection steps between the last memorized and the first generalizing grid size.
    pub bisections: u32,
    /// Sizes tried by bisection are rounded to a multiple of this (e.g. the number of classes
    /// for per-class subsets).
    pub multiple_of: u64,
    /// Criterion whose ratio decides (default: the first `[[criteria]]`).
    pub criterion: Option<String>,
}

impl Default for EmmSection {
    fn default() -> Self {
        EmmSection {
            key: "dataset.size".into(),
            sizes: vec![500, 1000, 2000, 4000, 8000, 16000],
            epsilon: 0.1,
            bisections: 3,
            multiple_of: 1,
            criterion: None,
        }
    }
}

impl EmmSection {
    /// Checks the values (errors name `file` and the key).
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, m: &str| ConfigError {
            file: file.to_path_buf(),
            key: format!("emm.{key}"),
            message: m.to_string(),
        };
        if self.sizes.is_empty() || self.sizes.contains(&0) {
            return Err(err("sizes", "needs at least one size, all ≥ 1"));
        }
        if self.sizes.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err("sizes", "must be strictly ascending"));
        }
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(err("epsilon", "must be in (0, 1)"));
        }
        if self.multiple_of == 0 {
            return Err(err("multiple_of", "must be ≥ 1"));
        }
        Ok(())
    }
}

/// How a search ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// EMM lies in [lower, upper).
    Bracketed,
    /// Every grid size is memorized: EMM ≥ the configured maximum (the search stopped there).
    AtMaximum,
    /// Even the smallest grid size is not memorized: EMM < that size.
    BelowMinimum,
}

/// One evaluated size.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Training-set size.
    pub size: u64,
    /// Memorization ratio (highest over snapshots when `sample.every_snapshot`).
    pub ratio: f64,
    /// Cell directory.
    pub cell: String,
}

/// The result of one search.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// The sweep values this search ran under (empty without a sweep).
    pub group: Vec<(String, String)>,
    /// How it ended.
    pub status: Status,
    /// Largest size found memorized (the EMM estimate), if any.
    pub emm: Option<u64>,
    /// Largest memorized size and its ratio.
    pub lower: Option<Point>,
    /// Smallest generalizing size above it and its ratio.
    pub upper: Option<Point>,
    /// Every size evaluated, ascending.
    pub points: Vec<Point>,
    /// One sentence.
    pub message: String,
}

/// Runs (or resumes) every search of a study; writes `emm.json`, `emm.md`, `emm.png` and the
/// study report of all evaluated cells into `dir`.
pub fn search_all(
    study: &Study,
    dir: &Path,
    extra_dirs: &[PathBuf],
    jobs: usize,
) -> Result<Vec<Search>> {
    let e = study.emm.clone().unwrap_or_default();
    e.check(&study.file)?;
    // A sweep over the size itself belongs to `memlab study`; the search ignores that axis, so
    // one config serves both.
    let mut study = study.clone();
    if let Some(a) = study.axes.iter().find(|a| a.keys.contains(&e.key))
        && a.keys.len() > 1
    {
        bail!(
            "{}: `{}` is the EMM size key but is zipped with {:?} in [sweep]; unzip it",
            study.file.display(),
            e.key,
            a.keys
        );
    }
    study.axes.retain(|a| !a.keys.contains(&e.key));
    let study = &study;
    let criterion = match &e.criterion {
        Some(c) => c.clone(),
        None => study
            .cell_with(0, study.values(0))?
            .config
            .criteria
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| anyhow!("no criteria"))?,
    };
    let ctx = SearchCtx {
        study,
        e: &e,
        criterion: &criterion,
        dir,
        extra_dirs,
        jobs,
    };
    let mut all_cells: Vec<Cell> = Vec::new();
    let mut searches = Vec::new();
    for g in 0..study.len() {
        let group = study.values(g);
        let s = search(&ctx, &group, &mut all_cells)?;
        log::info!("EMM{}: {}", group_suffix(&group), s.message);
        searches.push(s);
    }
    write_outputs(study, &e, &criterion, dir, &all_cells, &searches)?;
    Ok(searches)
}

fn group_suffix(group: &[(String, toml::Value)]) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!(" ({})", describe(group))
    }
}

fn round_to(x: u64, m: u64) -> u64 {
    (x + m / 2) / m * m
}

/// What every search of one `memlab emm` shares.
struct SearchCtx<'a> {
    study: &'a Study,
    e: &'a EmmSection,
    criterion: &'a str,
    dir: &'a Path,
    extra_dirs: &'a [PathBuf],
    jobs: usize,
}

/// One search: the sizes of `group`'s cells from the coarse grid, then bisection, each size a
/// cell appended to `all_cells` (shared by all groups, so the manifest lists every cell).
fn search(
    ctx: &SearchCtx,
    group: &[(String, toml::Value)],
    all_cells: &mut Vec<Cell>,
) -> Result<Search> {
    let SearchCtx {
        study,
        e,
        criterion,
        dir,
        extra_dirs,
        jobs,
    } = *ctx;
    let threshold = 1.0 - e.epsilon;
    let mut points: Vec<Point> = Vec::new();
    // Evaluates sizes (in parallel when jobs > 1); returns their ratios.
    let mut eval = |sizes: &[u64], all_cells: &mut Vec<Cell>| -> Result<Vec<f64>> {
        let cells: Vec<Cell> = sizes
            .iter()
            .map(|&n| {
                let mut v = group.to_vec();
                v.push((e.key.clone(), toml::Value::Integer(n as i64)));
                study.cell_with(all_cells.len(), v)
            })
            .collect::<Result<_, _>>()?;
        for c in &cells {
            if !all_cells.iter().any(|a| a.name == c.name) {
                let mut c = c.clone();
                c.index = all_cells.len();
                all_cells.push(c);
            }
        }
        exec::write_manifest(study, dir, &exec::manifest(study, all_cells))?;
        let outcomes = exec::run_cells(&cells, dir, extra_dirs, jobs)?;
        let mut ratios = Vec::new();
        for ((c, o), &n) in cells.iter().zip(&outcomes).zip(sizes) {
            if let Outcome::Failed(msg) = o {
                bail!("EMM search: the run at {} = {n} failed: {msg}", e.key);
            }
            let r = cell_ratio(dir, c, criterion)?;
            log::info!(
                "{} = {n}: memorization ratio {:.2}% ({criterion})",
                e.key,
                100.0 * r
            );
            points.push(Point {
                size: n,
                ratio: r,
                cell: c.name.clone(),
            });
            ratios.push(r);
        }
        Ok(ratios)
    };
    // Coarse grid, ascending, `jobs` sizes at a time, until the ratio first drops.
    let (mut lo, mut hi): (Option<u64>, Option<u64>) = (None, None);
    'grid: for chunk in e.sizes.chunks(jobs.max(1)) {
        let ratios = eval(chunk, all_cells)?;
        for (&n, &r) in chunk.iter().zip(&ratios) {
            if r >= threshold {
                lo = Some(n);
            } else {
                hi = Some(n);
                break 'grid;
            }
        }
    }
    // Bisection inside [lo, hi).
    if let (Some(mut l), Some(mut h)) = (lo, hi) {
        for _ in 0..e.bisections {
            let mid = round_to((l + h) / 2, e.multiple_of);
            if mid <= l || mid >= h {
                break;
            }
            if eval(&[mid], all_cells)?[0] >= threshold {
                l = mid;
            } else {
                h = mid;
            }
        }
        lo = Some(l);
        hi = Some(h);
    }
    points.sort_by_key(|p| p.size);
    points.dedup_by_key(|p| p.size);
    let find = |n: Option<u64>| n.and_then(|n| points.iter().find(|p| p.size == n).cloned());
    let (lower, upper) = (find(lo), find(hi));
    let max = *e.sizes.last().expect("checked");
    let pct = |p: &Option<Point>| p.as_ref().map_or(0.0, |p| 100.0 * p.ratio);
    let (status, message) = match (lo, hi) {
        (Some(l), None) => (
            Status::AtMaximum,
            format!(
                "every size up to the configured maximum {max} is memorized (ratio {:.1}% ≥ {:.0}% at {l}); \
                 the search stopped there: EMM ≥ {max}. Add larger sizes to [emm] sizes to go further.",
                pct(&lower),
                100.0 * threshold
            ),
        ),
        (None, Some(h)) => (
            Status::BelowMinimum,
            format!(
                "even the smallest size {h} is not memorized (ratio {:.1}% < {:.0}%): EMM < {h}. \
                 Add smaller sizes to [emm] sizes.",
                pct(&upper),
                100.0 * threshold
            ),
        ),
        (Some(l), Some(h)) => (
            Status::Bracketed,
            format!(
                "EMM is between {l} (ratio {:.1}% ≥ {:.0}%) and {h} (ratio {:.1}%): EMM ≈ {l}",
                pct(&lower),
                100.0 * threshold,
                pct(&upper)
            ),
        ),
        (None, None) => bail!("EMM search evaluated no size"),
    };
    Ok(Search {
        group: group
            .iter()
            .map(|(k, v)| (k.clone(), value_label(v)))
            .collect(),
        status,
        emm: lo,
        lower,
        upper,
        points,
        message,
    })
}

/// The ratio of `criterion` in a finished cell.
pub fn cell_ratio(dir: &Path, cell: &Cell, criterion: &str) -> Result<f64> {
    let p = exec::cell_dir(dir, cell).join("replication.json");
    let v = crate::run::RunReport::read(&p)?
        .ok_or_else(|| anyhow!("{} does not exist", p.display()))?;
    v.evaluation
        .criteria
        .iter()
        .find(|c| c.name == criterion)
        .map(|c| c.ratio)
        .ok_or_else(|| anyhow!("{}: no criterion `{criterion}`", p.display()))
}

fn write_outputs(
    study: &Study,
    e: &EmmSection,
    criterion: &str,
    dir: &Path,
    cells: &[Cell],
    searches: &[Search],
) -> Result<()> {
    let mut m = exec::manifest(study, cells);
    m.keys.push(e.key.clone());
    m.x = Some(e.key.clone());
    exec::write_manifest(study, dir, &m)?;
    super::report::report(dir)?;
    let threshold = 1.0 - e.epsilon;
    let series: Vec<Series> = searches
        .iter()
        .map(|s| Series {
            label: if s.group.is_empty() {
                criterion.to_string()
            } else {
                s.group
                    .iter()
                    .map(|(k, v)| format!("{}={v}", short_key(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            points: s.points.iter().map(|p| (p.size as f64, p.ratio)).collect(),
        })
        .collect();
    let label = format!("1 − ε = {threshold:.2}");
    line_chart(
        &dir.join("emm.png"),
        &LineChart {
            title: &format!(
                "{}: memorization ratio vs {} (EMM search)",
                study.name(),
                e.key
            ),
            x_label: &e.key,
            y_label: &format!("memorization ratio ({criterion})"),
            series: &series,
            log_x: true,
            y_range: Some((0.0, 1.05)),
            hline: Some((threshold, &label)),
        },
    )?;
    if searches.len() > 1 {
        let groups: Vec<(String, Vec<Bar>)> = searches
            .iter()
            .map(|s| {
                (
                    s.group
                        .iter()
                        .map(|(_, v)| v.clone())
                        .collect::<Vec<_>>()
                        .join(" "),
                    vec![Bar {
                        label: "EMM".into(),
                        value: s.emm.map_or(0.0, |v| v as f64),
                    }],
                )
            })
            .collect();
        bar_chart(
            &dir.join("emm-by-group.png"),
            &BarChart {
                title: &format!("{}: EMM (largest memorized size)", study.name()),
                y_label: &e.key,
                groups: &groups,
                y_range: None,
            },
        )?;
    }
    write_atomic(
        &dir.join("emm.json"),
        serde_json::to_string_pretty(searches)?.as_bytes(),
    )?;
    let mut s = String::new();
    let _ = writeln!(s, "# EMM search: {}\n", study.name());
    let _ = writeln!(
        s,
        "EMM_ε = largest `{}` whose `{criterion}` memorization ratio is ≥ 1 − ε = {threshold:.2} (ε = {}). \
         Grid {:?}, then {} bisection step(s) rounded to multiples of {}.\n",
        e.key, e.epsilon, e.sizes, e.bisections, e.multiple_of
    );
    let _ = writeln!(
        s,
        "| group | status | EMM | lower (ratio) | upper (ratio) | sizes evaluated |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for x in searches {
        let g = if x.group.is_empty() {
            "–".to_string()
        } else {
            x.group
                .iter()
                .map(|(k, v)| format!("{}={v}", short_key(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let p = |p: &Option<Point>| {
            p.as_ref().map_or("–".to_string(), |p| {
                format!("{} ({:.1}%)", p.size, 100.0 * p.ratio)
            })
        };
        let emm = match x.status {
            Status::AtMaximum => format!("≥ {}", x.emm.unwrap_or(0)),
            Status::BelowMinimum => format!("< {}", x.upper.as_ref().map_or(0, |p| p.size)),
            Status::Bracketed => format!("{}", x.emm.unwrap_or(0)),
        };
        let pts: Vec<String> = x
            .points
            .iter()
            .map(|p| format!("{}: {:.1}%", p.size, 100.0 * p.ratio))
            .collect();
        let _ = writeln!(
            s,
            "| {g} | {:?} | {emm} | {} | {} | {} |",
            x.status,
            p(&x.lower),
            p(&x.upper),
            pts.join(", ")
        );
    }
    let _ = writeln!(s, "\n![EMM search](emm.png)\n");
    if searches.len() > 1 {
        let _ = writeln!(s, "![EMM by group](emm-by-group.png)\n");
    }
    for x in searches {
        let _ = writeln!(s, "- {}", x.message);
    }
    write_atomic(&dir.join("emm.md"), s.as_bytes())
}
