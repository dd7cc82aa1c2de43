//! A study's table: one row per cell, read back from the cells' `replication.json`, written
//! as `results.csv` (for pandas) and `results.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::exec::Manifest;
use crate::io::output::write_atomic;
use crate::run::RunReport;

/// One criterion's numbers in a row.
#[derive(Debug, Clone, Serialize)]
pub struct CriterionNumbers {
    /// Memorization ratio (at the reported snapshot).
    pub ratio: f64,
    /// Samples flagged.
    pub replicates: u64,
    /// Distinct training images replicated.
    pub distinct_replicated: u64,
    /// Their fraction of the training set.
    pub distinct_fraction: f64,
    /// Ratio per sample class (when there is more than one class).
    pub per_class: BTreeMap<String, f64>,
}

/// Where a cell stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellStatus {
    /// Finished: `cell.json` and a readable `replication.json`.
    Finished,
    /// Its last attempt failed (`error.txt`).
    Failed,
    /// Its `replication.json` exists but cannot be read or parsed (`error` names the file and
    /// the parse error).
    Corrupt,
    /// Not run yet (or interrupted before it finished).
    Missing,
}

impl CellStatus {
    /// `finished`, `failed`, `corrupt` or `missing`.
    pub fn name(self) -> &'static str {
        match self {
            CellStatus::Finished => "finished",
            CellStatus::Failed => "failed",
            CellStatus::Corrupt => "corrupt",
            CellStatus::Missing => "missing",
        }
    }
}

impl std::fmt::Display for CellStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One cell's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Grid index.
    pub index: usize,
    /// Cell directory name.
    pub cell: String,
    /// Where the cell stands.
    pub status: CellStatus,
    /// Swept key → short label.
    pub labels: BTreeMap<String, String>,
    /// Swept key → value.
    pub values: BTreeMap<String, Value>,
    /// Criterion name → numbers.
    pub criteria: BTreeMap<String, CriterionNumbers>,
    /// Mean nearest-neighbour L2 distance ([−1, 1] scale).
    pub mean_nn_l2: Option<f64>,
    /// DM's per-pixel uint8 "KNN distance".
    pub mean_nn_l2_u8: Option<f64>,
    /// Mean rule validity of the samples (synthetic datasets).
    pub validity: Option<f64>,
    /// Training images.
    pub training_images: Option<u64>,
    /// Steps trained.
    pub steps: Option<u64>,
    /// Snapshot the numbers come from.
    pub snapshot: Option<u64>,
    /// First criterion's ratio at every evaluated snapshot.
    pub snapshot_ratios: Vec<(u64, f64)>,
    /// Training seconds.
    pub train_seconds: Option<f64>,
    /// Sampling + evaluation seconds.
    pub sample_seconds: Option<f64>,
    /// The error of a failed cell, or what is wrong with a corrupt one.
    pub error: Option<String>,
}

impl Row {
    /// A swept value as a number, when it is one.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(Value::as_f64)
    }

    /// The ratio of `criterion`, when finished.
    pub fn ratio(&self, criterion: &str) -> Option<f64> {
        self.criteria.get(criterion).map(|c| c.ratio)
    }
}

/// Reads every cell of `manifest` under `dir/cells`.
pub fn collect(dir: &Path, manifest: &Manifest) -> Vec<Row> {
    manifest
        .cells
        .iter()
        .map(|c| {
            let cdir = dir.join("cells").join(&c.name);
            let mut row = Row {
                index: c.index,
                cell: c.name.clone(),
                status: CellStatus::Missing,
                labels: c
                    .values
                    .iter()
                    .map(|v| (v.key.clone(), v.label.clone()))
                    .collect(),
                values: c
                    .values
                    .iter()
                    .map(|v| (v.key.clone(), v.value.clone()))
                    .collect(),
                criteria: BTreeMap::new(),
                mean_nn_l2: None,
                mean_nn_l2_u8: None,
                validity: None,
                training_images: None,
                steps: None,
                snapshot: None,
                snapshot_ratios: Vec::new(),
                train_seconds: None,
                sample_seconds: None,
                error: std::fs::read_to_string(cdir.join("error.txt")).ok(),
            };
            if row.error.is_some() {
                row.status = CellStatus::Failed;
            }
            let done = cdir.join("cell.json").exists();
            let rep_path = cdir.join("replication.json");
            let rep = match RunReport::read(&rep_path) {
                Ok(r) => r,
                Err(e) => {
                    row.status = CellStatus::Corrupt;
                    let earlier = row.error.take().map(|f| format!(" (earlier failure: {f})"));
                    row.error = Some(format!("{e:#}{}", earlier.unwrap_or_default()));
                    None
                }
            };
            if let (true, Some(r)) = (done, rep) {
                row.status = CellStatus::Finished;
                let e = &r.evaluation;
                for cr in &e.criteria {
                    let per_class = if cr.per_class.len() > 1 {
                        cr.per_class
                            .iter()
                            .map(|(k, v)| (k.clone(), v.ratio))
                            .collect()
                    } else {
                        BTreeMap::new()
                    };
                    row.criteria.insert(
                        cr.name.clone(),
                        CriterionNumbers {
                            ratio: cr.ratio,
                            replicates: cr.replicates as u64,
                            distinct_replicated: cr.distinct_replicated as u64,
                            distinct_fraction: cr.distinct_fraction,
                            per_class,
                        },
                    );
                }
                row.mean_nn_l2 = Some(e.mean_nn_l2);
                row.mean_nn_l2_u8 = Some(e.mean_nn_l2_per_pixel_u8);
                row.validity = e.validity.as_ref().map(|v| v.samples_mean);
                row.training_images = Some(e.training_images as u64);
                row.steps = Some(r.steps);
                row.snapshot = Some(r.snapshot);
                row.snapshot_ratios = r
                    .snapshots
                    .iter()
                    .filter_map(|s| Some((s.step, s.ratios.first()?.1)))
                    .collect();
                // Wall time of all training, across resumes (a re-evaluation trains nothing).
                row.train_seconds =
                    training_seconds(&cdir.join("metrics.jsonl")).or(Some(r.train_seconds));
                row.sample_seconds = Some(r.sample_seconds);
            }
            row
        })
        .collect()
}

/// Total training wall time from `metrics.jsonl`: `elapsed_s` restarts at each resume, so the
/// last value of every segment is summed.
fn training_seconds(metrics: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    let (mut total, mut last) = (0.0, 0.0);
    for line in text.lines() {
        let Some(e) = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["elapsed_s"].as_f64())
        else {
            continue;
        };
        if e < last {
            total += last;
        }
        last = e;
    }
    Some(total + last)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// `results.csv`: swept keys (numbers as numbers, other values as labels), then per criterion
/// ratio / replicates / distinct replicated (and per-class ratios), then distances, validity,
/// steps and times.
pub fn to_csv(manifest: &Manifest, rows: &[Row]) -> String {
    let classes: BTreeMap<String, Vec<String>> = manifest
        .criteria
        .iter()
        .map(|c| {
            let mut ks: Vec<String> = rows
                .iter()
                .filter_map(|r| r.criteria.get(c))
                .flat_map(|n| n.per_class.keys().cloned())
                .collect();
            ks.sort();
            ks.dedup();
            (c.clone(), ks)
        })
        .collect();
    let mut head: Vec<String> = vec!["index".into(), "cell".into(), "status".into()];
    head.extend(manifest.keys.iter().cloned());
    for c in &manifest.criteria {
        head.push(format!("ratio_{c}"));
        head.push(format!("replicates_{c}"));
        head.push(format!("distinct_replicated_{c}"));
        head.push(format!("distinct_fraction_{c}"));
        for k in &classes[c] {
            head.push(format!("ratio_{c}_class_{k}"));
        }
    }
    head.extend(
        [
            "mean_nn_l2",
            "mean_nn_l2_u8",
            "validity",
            "training_images",
            "steps",
            "snapshot",
            "train_seconds",
            "sample_seconds",
        ]
        .map(String::from),
    );
    let mut out = head
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        let mut f: Vec<String> = vec![r.index.to_string(), r.cell.clone(), r.status.to_string()];
        for k in &manifest.keys {
            f.push(match r.values.get(k) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => r.labels.get(k).cloned().unwrap_or_default(),
            });
        }
        for c in &manifest.criteria {
            let n = r.criteria.get(c);
            f.push(opt(n.map(|n| n.ratio)));
            f.push(n.map(|n| n.replicates.to_string()).unwrap_or_default());
            f.push(
                n.map(|n| n.distinct_replicated.to_string())
                    .unwrap_or_default(),
            );
            f.push(opt(n.map(|n| n.distinct_fraction)));
            for k in &classes[c] {
                f.push(opt(n.and_then(|n| n.per_class.get(k).copied())));
            }
        }
        f.push(opt(r.mean_nn_l2));
        f.push(opt(r.mean_nn_l2_u8));
        f.push(opt(r.validity));
        f.push(r.training_images.map(|v| v.to_string()).unwrap_or_default());
        f.push(r.steps.map(|v| v.to_string()).unwrap_or_default());
        f.push(r.snapshot.map(|v| v.to_string()).unwrap_or_default());
        f.push(opt(r.train_seconds));
        f.push(opt(r.sample_seconds));
        out.push_str(&f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Writes `results.csv` and `results.json` into `dir`.
pub fn write(dir: &Path, manifest: &Manifest, rows: &[Row]) -> Result<()> {
    write_atomic(&dir.join("results.csv"), to_csv(manifest, rows).as_bytes())
        .with_context(|| format!("writing {}", dir.join("results.csv").display()))?;
    #[derive(Serialize)]
    struct Out<'a> {
        study: &'a str,
        keys: &'a [String],
        criteria: &'a [String],
        rows: &'a [Row],
    }
    let out = Out {
        study: &manifest.name,
        keys: &manifest.keys,
        criteria: &manifest.criteria,
        rows,
    };
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::exec::{ManifestCell, SweptValue};
    use super::*;

    /// A finished cell with a damaged `replication.json` is `corrupt`, with the file and the
    /// parse error; it is not shown as `missing`, and its neighbours are unaffected.
    #[test]
    fn a_corrupt_replication_json_is_reported_with_its_path_and_error() {
        let d = tempfile::tempdir().unwrap();
        let cells: Vec<ManifestCell> = ["good", "corrupt", "notrun"]
            .iter()
            .enumerate()
            .map(|(i, n)| ManifestCell {
                index: i,
                name: n.to_string(),
                values: vec![SweptValue {
                    key: "train.lr".into(),
                    value: serde_json::json!(i),
                    label: i.to_string(),
                }],
            })
            .collect();
        let m = Manifest {
            name: "s".into(),
            description: String::new(),
            file: "s.toml".into(),
            keys: vec!["train.lr".into()],
            x: None,
            x_label: None,
            zip: Vec::new(),
            criteria: vec!["ratio".into()],
            cells,
        };
        let rep = r#"{"dir": "x", "steps": 6, "resumed_from": 0, "snapshot": 6,
            "train_seconds": 1.0, "sample_seconds": 0.5, "snapshots": [],
            "evaluation": {"samples": 8, "training_images": 4, "mean_nn_l2": 0.1,
              "mean_nn_l2_per_pixel_u8": 1.0, "heldout": null, "validity": null,
              "criteria": [{"name": "ratio", "ratio": 0.25, "replicates": 2,
                "distinct_replicated": 1, "distinct_fraction": 0.5, "per_class": {}}]}}"#;
        for (cell, text) in [("good", rep), ("corrupt", &rep[..40])] {
            let c = d.path().join("cells").join(cell);
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join("cell.json"), "{}").unwrap();
            std::fs::write(c.join("replication.json"), text).unwrap();
        }
        let rows = collect(d.path(), &m);
        let status: Vec<&str> = rows.iter().map(|r| r.status.name()).collect();
        assert_eq!(status, ["finished", "corrupt", "missing"]);
        assert_eq!(rows[0].ratio("ratio"), Some(0.25));
        let e = rows[1].error.as_deref().unwrap();
        let file = d.path().join("cells/corrupt/replication.json");
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("EOF while parsing"), "{e}");
        assert!(rows[2].error.is_none());
        assert!(to_csv(&m, &rows).contains(",corrupt,"));
        assert!(RunReport::read(&file).is_err());
        // A record whose field was renamed or lost is corrupt, naming the field (never an empty
        // column).
        let renamed = d.path().join("renamed.json");
        std::fs::write(&renamed, rep.replace("\"snapshot\": 6", "\"snap\": 6")).unwrap();
        let e = format!("{:#}", RunReport::read(&renamed).unwrap_err());
        assert!(e.contains("missing field `snapshot`"), "{e}");
        assert!(
            RunReport::read(&d.path().join("nope.json"))
                .unwrap()
                .is_none()
        );
    }
}
