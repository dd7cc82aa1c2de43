//! The run's record: [`RunReport`] (the type of `replication.json`, written by runs and read
//! back by studies and the EMM search), the writers of `replication.json` and `summary.md`
//! ([`write_results`]), `plugins.lock` ([`write_lock`]) and `nearest.png`, and the markdown of
//! an evaluation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::TrainingSet;
use crate::eval::Evaluation;
use crate::io::output::{write_atomic, write_grid};
use crate::plugins::Registry;

/// What a finished run reports: `replication.json`, written and read back (by studies and the
/// EMM search) through this one type.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// The run directory.
    pub dir: PathBuf,
    /// Steps trained (0 for parameter-free denoisers).
    pub steps: u64,
    /// Step the run resumed from.
    pub resumed_from: u64,
    /// Replication results.
    pub evaluation: Evaluation,
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Wall-clock seconds of sampling (all evaluated snapshots).
    pub sample_seconds: f64,
    /// Training step of the weights the samples and `evaluation` come from (with
    /// `sample.every_snapshot`, the snapshot with the highest ratio).
    pub snapshot: u64,
    /// Every sampled snapshot's ratios (one entry unless `sample.every_snapshot`).
    pub snapshots: Vec<SnapshotResult>,
}

impl RunReport {
    /// Reads a `replication.json`: `None` when it does not exist (the run has not finished), an
    /// error naming the file when it cannot be read or does not hold a run record (a damaged
    /// file is not reported as a run that never finished; a record missing a field says which).
    pub fn read(path: &Path) -> Result<Option<RunReport>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a memlab run record", path.display()))
    }
}

/// The ratios of one sampled snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotResult {
    /// Training step.
    pub step: u64,
    /// Memorization ratio per criterion, in `[[criteria]]` order.
    pub ratios: Vec<(String, f64)>,
    /// Mean nearest-neighbour L2 distance.
    pub mean_nn_l2: f64,
    /// Fraction of sampled values outside [−1, 1] before clamping (far from 0 means the model
    /// is off the data range and the clamped images say little). Absent in records written
    /// before it existed.
    #[serde(default)]
    pub clamped_fraction: f64,
}

pub(super) fn write_results(
    cfg: &Config,
    report: &RunReport,
    data: &TrainingSet,
    samples: &[f32],
    dir: &Path,
) -> Result<()> {
    write_nearest_png(
        &dir.join("nearest.png"),
        samples,
        data,
        &report.evaluation,
        16,
    )?;
    write_atomic(
        &dir.join("replication.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("summary.md"),
        summary_md(cfg, report, data).as_bytes(),
    )
}

pub(super) fn scale_for(h: usize) -> usize {
    (64 / h.max(1)).clamp(1, 8)
}

pub(super) fn write_lock(dir: &Path, cfg: &Config, reg: &Registry) -> Result<()> {
    #[derive(Serialize)]
    struct Used {
        kind: String,
        name: String,
        library: String,
    }
    #[derive(Serialize)]
    struct Lock {
        memlab_version: &'static str,
        plugin_api_version: &'static str,
        components: Vec<Used>,
        libraries: Vec<crate::plugins::LockEntry>,
    }
    let components = cfg
        .components()
        .into_iter()
        .map(|(_, kind, c)| Used {
            kind: kind.to_string(),
            library: reg
                .library_of(kind, &c.name)
                .map(|l| l.manifest.name.to_string())
                .unwrap_or_default(),
            name: c.name,
        })
        .collect();
    let lock = Lock {
        memlab_version: env!("CARGO_PKG_VERSION"),
        plugin_api_version: memlab_plugin_api::API_VERSION,
        components,
        libraries: reg.lock(),
    };
    write_atomic(
        &dir.join("plugins.lock"),
        serde_json::to_string_pretty(&lock)?.as_bytes(),
    )
}

pub(super) fn write_nearest_png(
    path: &Path,
    samples: &[f32],
    data: &TrainingSet,
    ev: &Evaluation,
    max: usize,
) -> Result<()> {
    let per = data.image_len();
    let [c, h, w] = data.shape;
    let k = ev.samples.min(max);
    let mut imgs = Vec::with_capacity(2 * k * per);
    imgs.extend_from_slice(&samples[..k * per]);
    for i in 0..k {
        let j = ev.nearest[i] as usize;
        imgs.extend_from_slice(&data.images[j * per..(j + 1) * per]);
    }
    write_grid(path, &imgs, [2 * k, c, h, w], k, scale_for(h))
}

pub(super) fn summary_md(cfg: &Config, r: &RunReport, data: &TrainingSet) -> String {
    let mut s = String::new();
    let e = &r.evaluation;
    let _ = writeln!(s, "# {}\n", cfg.run.name);
    let _ = writeln!(
        s,
        "{} × {} under {}, conditioning {}, {} training images ({}), seed {}.\n",
        cfg.architecture.name,
        cfg.dataset
            .name
            .clone()
            .unwrap_or_else(|| data.class_names.join(" + ")),
        cfg.schedule.name,
        cfg.conditioning.name,
        data.len(),
        data.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×"),
        cfg.run.seed
    );
    let _ = writeln!(
        s,
        "Trained {} steps ({:.0} s); {} samples with `{}` in {} steps ({:.0} s).\n",
        r.steps, r.train_seconds, e.samples, cfg.sample.sampler, cfg.sample.steps, r.sample_seconds
    );
    evaluation_md(&mut s, e);
    let _ = writeln!(
        s,
        "![samples](samples.png)\n\n![nearest](nearest.png)\n\nSamples (top row) and their nearest training images (bottom row)."
    );
    s
}

/// The evaluation's tables in markdown: criteria, per class, held-out baseline, validity, and
/// the nearest-neighbour figure.
pub(super) fn evaluation_md(s: &mut String, e: &Evaluation) {
    let _ = writeln!(
        s,
        "| criterion | memorization ratio | replicates | distinct training images replicated |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for c in &e.criteria {
        let _ = writeln!(
            s,
            "| {} | {:.2}% | {} / {} | {} ({:.2}%) |",
            c.name,
            100.0 * c.ratio,
            c.replicates,
            e.samples,
            c.distinct_replicated,
            100.0 * c.distinct_fraction
        );
    }
    let _ = writeln!(
        s,
        "\nMean nearest-neighbour L2 distance: {:.4} ([−1, 1] scale), {:.2} per pixel on the uint8 scale.\n",
        e.mean_nn_l2, e.mean_nn_l2_per_pixel_u8
    );
    for c in &e.criteria {
        if c.per_class.len() > 1 {
            let _ = writeln!(
                s,
                "Per class ({}):\n\n| class | samples | ratio |\n|---|---|---|",
                c.name
            );
            for (k, v) in &c.per_class {
                let _ = writeln!(s, "| {k} | {} | {:.2}% |", v.samples, 100.0 * v.ratio);
            }
            let _ = writeln!(s);
        }
    }
    if let Some(h) = &e.heldout {
        let _ = writeln!(
            s,
            "Held-out baseline ({} images of the training distribution): nearest training image at {:.4} on average; samples are {:.4} from their nearest held-out image.\n",
            h.images, h.mean_nn_l2_to_train, h.mean_sample_nn_l2_to_heldout
        );
        for (name, r) in &h.criteria_ratio {
            let _ = writeln!(
                s,
                "- {name} flags {:.2}% of held-out images (false-positive rate)",
                100.0 * r
            );
        }
        let _ = writeln!(s);
    }
    if let Some(v) = &e.validity {
        let _ = writeln!(
            s,
            "Rule validity: samples {:.3} on average ({:.1}% above 0.5); training images {:.3}.\n",
            v.samples_mean,
            100.0 * v.samples_valid_fraction,
            v.training_mean
        );
    }
}
