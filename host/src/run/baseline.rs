//! `memlab baseline CONFIG --heldout KEY=VALUE…`: the false-positive rate of every criterion.
//!
//! The config's `[dataset]` is the training set, as a run would load it (size, subset,
//! resolution included). The held-out set is the same dataset component with its parameters
//! changed by `--heldout` (e.g. `--heldout path=…/test.tar` for CIFAR-10's test split), taken
//! whole, at the same resolution. Each held-out image is judged like a generated sample by
//! every `[[criteria]]` entry: real images never trained on, so every flag is a false positive.
//!
//! Results go to `OUT/baseline.json` and `OUT/baseline.md` (default `OUT`:
//! `<run.out_dir>/<run.name>`), written atomically; the Markdown table is also printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::config::{ConfigError, SubsetMode};
use crate::eval::Evaluation;

/// What `memlab baseline` measured.
#[derive(Debug, Serialize)]
pub struct BaselineRecord {
    /// The config file.
    pub config: PathBuf,
    /// `--set` overrides applied to it.
    pub sets: Vec<String>,
    /// `--heldout` overrides of `dataset.params` that give the held-out set.
    pub heldout: Vec<String>,
    /// Image shape `[c, h, w]`.
    pub shape: [usize; 3],
    /// Criteria as configured: (name, parameters as inline TOML).
    pub criteria: Vec<(String, String)>,
    /// Seconds to load both sets (decoding, or the image cache).
    pub load_seconds: f64,
    /// Seconds for the k-NN searches and the judging.
    pub eval_seconds: f64,
    /// Held-out images judged against the training set.
    pub evaluation: Evaluation,
}

/// Where results were written, and what they say.
pub struct Baseline {
    /// `baseline.json`.
    pub json: PathBuf,
    /// `baseline.md`.
    pub markdown_file: PathBuf,
    /// The Markdown report (also in `markdown_file`).
    pub markdown: String,
    /// The record.
    pub record: BaselineRecord,
}

/// Runs the baseline: see the module docs.
pub fn run(
    file: &Path,
    sets: &[String],
    heldout: &[String],
    extra_dirs: &[PathBuf],
    out: Option<&Path>,
) -> Result<Baseline> {
    if heldout.is_empty() {
        bail!(
            "give the held-out set with --heldout KEY=VALUE (keys of dataset.params, e.g. \
             --heldout path=../shared/data/cifar10-jpeg/test.tar)"
        );
    }
    let (cfg, reg) = crate::run::prepare(file, sets, extra_dirs)?;
    let Some(name) = cfg.dataset.name.clone() else {
        return Err(ConfigError {
            file: file.to_path_buf(),
            key: "dataset".into(),
            message: "memlab baseline needs a single dataset (`dataset.name`), not a mixture"
                .into(),
        }
        .into());
    };
    let mut held = cfg.dataset.clone();
    crate::config::apply_overrides(&mut held.params, heldout, file)?;
    if held.params == cfg.dataset.params {
        bail!(
            "--heldout {} leaves dataset.params unchanged: the held-out set would be the \
             training set",
            heldout.join(" ")
        );
    }
    held.size = None;
    held.subset = SubsetMode::First;
    held.heldout = 0;
    let dev = crate::engine::device::select(cfg.run.device)?;
    let seed = cfg.run.seed;
    let cond = reg.conditioning(
        &cfg.conditioning.name,
        &cfg.conditioning.params_toml(),
        seed,
    )?;
    let criteria = crate::run::evaluate::build_criteria(&cfg, &reg, seed)?;
    let t = Instant::now();
    let train = crate::data::load(&reg, &cfg.dataset, seed, &cond)?.train;
    let test = crate::data::load(&reg, &held, seed, &cond)
        .map_err(|e| anyhow!("the held-out set ({name} with --heldout {heldout:?}): {e:#}"))?
        .train;
    let load_seconds = t.elapsed().as_secs_f64();
    if test.shape != train.shape {
        bail!(
            "held-out images are {:?} but training images are {:?}",
            test.shape,
            train.shape
        );
    }
    log::info!(
        "baseline: {} held-out images against {} training images of {:?}",
        test.labels.len(),
        train.labels.len(),
        train.shape
    );
    let t = Instant::now();
    let evaluation = crate::eval::evaluate(
        &test.images,
        &test.labels,
        &test.class_names,
        &train.images,
        train.shape,
        &criteria,
        &dev,
    )?;
    let eval_seconds = t.elapsed().as_secs_f64();
    let record = BaselineRecord {
        config: file.to_path_buf(),
        sets: sets.to_vec(),
        heldout: heldout.to_vec(),
        shape: train.shape,
        criteria: cfg
            .criteria
            .iter()
            .map(|c| (c.name.clone(), inline(&c.params)))
            .collect(),
        load_seconds,
        eval_seconds,
        evaluation,
    };
    let markdown = markdown(&record);
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.run.out_dir.join(&cfg.run.name));
    let json = dir.join("baseline.json");
    let markdown_file = dir.join("baseline.md");
    crate::io::output::write_atomic(&json, serde_json::to_string_pretty(&record)?.as_bytes())?;
    crate::io::output::write_atomic(&markdown_file, markdown.as_bytes())?;
    Ok(Baseline {
        json,
        markdown_file,
        markdown,
        record,
    })
}

/// `{ a = 1, b = 2 }`, or `{}`.
fn inline(t: &toml::Table) -> String {
    let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    if parts.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", parts.join(", "))
    }
}

/// The report: one row per criterion, then each criterion's rate per held-out class.
pub fn markdown(r: &BaselineRecord) -> String {
    let e = &r.evaluation;
    let [c, h, w] = r.shape;
    let mut s = format!(
        "False-positive rate of each criterion: {} held-out images judged against {} training \
         images ({c}×{h}×{w}); config {}, held-out set: --heldout {}.\n\
         Mean L2 distance to the nearest training image: {:.3} ([−1, 1] scale; {:.2} per pixel \
         on the 0–255 scale). Load {:.1} s, k-NN and judging {:.1} s.\n\n\
         | criterion | params | flagged | false-positive rate |\n|---|---|---:|---:|\n",
        e.samples,
        e.training_images,
        r.config.display(),
        r.heldout.join(" "),
        e.mean_nn_l2,
        e.mean_nn_l2_per_pixel_u8,
        r.load_seconds,
        r.eval_seconds,
    );
    for (cr, (name, params)) in e.criteria.iter().zip(&r.criteria) {
        s.push_str(&format!(
            "| {name} | `{params}` | {} / {} | {:.2} % |\n",
            cr.replicates,
            e.samples,
            100.0 * cr.ratio
        ));
    }
    let classes: Vec<&String> = e
        .criteria
        .first()
        .map(|c| c.per_class.keys().collect())
        .unwrap_or_default();
    if classes.len() > 1 {
        s.push_str("\nPer held-out class (false-positive rate, %):\n\n| class |");
        for (name, _) in &r.criteria {
            s.push_str(&format!(" {name} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(r.criteria.len()));
        s.push('\n');
        for class in classes {
            s.push_str(&format!("| {class} |"));
            for cr in &e.criteria {
                let v = cr.per_class.get(class).map_or(0.0, |c| c.ratio);
                s.push_str(&format!(" {:.2} |", 100.0 * v));
            }
            s.push('\n');
        }
    }
    s
}
