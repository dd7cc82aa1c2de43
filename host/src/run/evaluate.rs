//! Evaluation glue shared by `memlab run`, `memlab eval` and `memlab baseline`: the config's
//! criteria as components, and the full evaluation of a set of samples (criteria, held-out
//! baseline, rule validity) against a loaded training set. Also `memlab eval` itself
//! ([`eval_dir`]), which re-judges a finished run into `RUN_DIR/evals/…`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::config::Config;
use crate::data::TrainingSet;
use crate::engine::device;
use crate::eval::{Evaluation, evaluate};
use crate::io::output::write_atomic;
use crate::plugins::Registry;

use super::prepare;
use super::record::{evaluation_md, write_nearest_png};

/// Every `[[criteria]]` component of a config, with its name.
pub fn build_criteria(
    cfg: &Config,
    reg: &Registry,
    seed: u64,
) -> Result<Vec<(String, crate::plugins::CriterionHandle)>> {
    cfg.criteria
        .iter()
        .map(|c| {
            Ok((
                c.name.clone(),
                reg.criterion(&c.name, &c.params_toml(), seed)?,
            ))
        })
        .collect()
}

/// Replication evaluation of `samples` against the loaded training data: every criterion,
/// the held-out baseline and rule validity when available.
pub fn evaluate_full(
    loaded: &mut crate::data::LoadedData,
    criteria: &[(String, crate::plugins::CriterionHandle)],
    samples: &[f32],
    labels: &[i64],
    dev: &burn::tensor::Device,
) -> Result<Evaluation> {
    let dim = loaded.train.image_len();
    let data = &loaded.train;
    let names = data.sample_class_names();
    let shape = data.shape;
    let mut evaluation = evaluate(samples, labels, &names, &data.images, shape, criteria, dev)?;
    if let Some(ho) = &loaded.heldout {
        evaluation.heldout = Some(crate::eval::heldout_baseline(
            ho,
            &loaded.train.images,
            samples,
            shape,
            criteria,
            dev,
        )?);
    }
    // The training-set ceiling of validity, on up to 256 training images (scoring is per image).
    let k = loaded.train.len().min(256);
    let train_labels = loaded.train.labels[..k].to_vec();
    let train_images = loaded.train.images[..k * dim].to_vec();
    // A mixture's rules are chosen by the sample's label: only meaningful for true labels.
    let labels_are_classes = loaded.train.sample_class_names() == loaded.train.class_names;
    if (!loaded.mixture || labels_are_classes)
        && let (Some(vs), Some(vt)) = (
            loaded.validity(samples, labels)?,
            loaded.validity(&train_images, &train_labels)?,
        )
    {
        evaluation.validity = Some(crate::eval::validity_summary(&vs, labels, &vt, &names));
    }
    Ok(evaluation)
}

/// Which images an evaluation judged.
#[derive(Debug, Clone, Serialize)]
pub struct JudgedSamples {
    /// `"the run's samples"` or `"a samples file"`.
    pub source: String,
    /// The `.npy` file read.
    pub path: PathBuf,
    /// SHA-256 of that file, hex.
    pub sha256: String,
    /// Images judged.
    pub count: usize,
}

/// `evaluation.json`: the record of one `memlab eval`, kept apart from the run's own
/// `replication.json`.
#[derive(Debug, Serialize)]
pub struct EvalRecord {
    /// Where the results are.
    pub dir: PathBuf,
    /// The run whose training set (and, by default, samples) was used.
    pub run_dir: PathBuf,
    /// The images judged.
    pub samples: JudgedSamples,
    /// The criteria applied, with their parameters (after `--set`).
    pub criteria: Vec<crate::config::ComponentRef>,
    /// The `--set` overrides applied to the run's config.
    pub overrides: Vec<String>,
    /// What the screening of the samples noticed (e.g. images that look like [0, 1]).
    pub warnings: Vec<String>,
    /// The numbers.
    pub evaluation: Evaluation,
}

/// `memlab eval`: judges a finished run's samples (or any `.npy` of images shaped like the
/// training data) with the run's criteria, or criteria changed by `--set`, without retraining.
///
/// The run's own record (`replication.json`, `summary.md`, …) is never touched: results go to
/// `out`, by default `RUN_DIR/evals/<samples>-<hash>` (the hash covers the samples file, the
/// criteria and the overrides, so two different evaluations never share a folder). An `out`
/// that is a run directory is refused.
pub fn eval_dir(
    run_dir: &Path,
    sets: &[String],
    extra_dirs: &[PathBuf],
    samples_path: Option<&Path>,
    out: Option<&Path>,
) -> Result<EvalRecord> {
    use sha2::{Digest, Sha256};
    let cfg_path = run_dir.join("config.toml");
    if !cfg_path.exists() {
        return Err(anyhow!(
            "{} is not a run directory (no config.toml)",
            run_dir.display()
        ));
    }
    let own = samples_path.is_none();
    let spath = samples_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_dir.join("samples.npy"));
    if own && !spath.exists() {
        return Err(anyhow!(
            "{} has no samples.npy yet (is the run still training?); give --samples FILE",
            run_dir.display()
        ));
    }
    let (cfg, reg) = prepare(&cfg_path, sets, extra_dirs)?;
    let dev = device::select(cfg.run.device)?;
    let seed = cfg.run.seed;
    let cond = reg.conditioning(
        &cfg.conditioning.name,
        &cfg.conditioning.params_toml(),
        seed,
    )?;
    let criteria = build_criteria(&cfg, &reg, seed)?;
    let t = std::time::Instant::now();
    let bytes = std::fs::read(&spath).with_context(|| format!("reading {}", spath.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    drop(bytes);
    let (shape, samples) = crate::io::output::read_npy_f32(&spath)?;
    log::info!("samples read in {:.2} s", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let mut loaded = crate::data::load(&reg, &cfg.dataset, seed, &cond)?;
    log::info!(
        "training set ({} images) loaded in {:.2} s",
        loaded.train.len(),
        t.elapsed().as_secs_f64()
    );
    let [c, h, w] = loaded.train.shape;
    if shape.len() != 4 || shape[1..] != [c, h, w] {
        return Err(anyhow!(
            "{}: images of shape {:?}, but the training data is [N, {c}, {h}, {w}]",
            spath.display(),
            shape
        ));
    }
    let m = shape[0];
    let warnings = crate::eval::screen_samples(&samples, c * h * w, &loaded.train.images)
        .map_err(|e| anyhow!("{}: {e}", spath.display()))?;
    for w in &warnings {
        log::warn!("{}: {w}", spath.display());
    }
    let labels = if own {
        let lpath = run_dir.join("sample_labels.npy");
        let (_, l) = crate::io::output::read_npy_i64(&lpath)?;
        if l.len() != m {
            return Err(anyhow!(
                "{}: {} labels for {m} samples",
                lpath.display(),
                l.len()
            ));
        }
        l
    } else {
        vec![0; m]
    };
    let dest = match out {
        Some(o) => o.to_path_buf(),
        None => {
            let mut h = Sha256::new();
            h.update(sha256.as_bytes());
            for c in &cfg.criteria {
                h.update(c.name.as_bytes());
                h.update(c.params_toml().as_bytes());
            }
            for s in sets {
                h.update(s.as_bytes());
            }
            let stem = spath
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("samples");
            run_dir
                .join("evals")
                .join(format!("{stem}-{}", &format!("{:x}", h.finalize())[..8]))
        }
    };
    if dest.join("config.toml").exists() || dest.join("replication.json").exists() {
        return Err(anyhow!(
            "refusing to write the evaluation into {}: it is a run directory, and an evaluation \
             never changes a run's record; choose another --out",
            dest.display()
        ));
    }
    let t = std::time::Instant::now();
    let evaluation = evaluate_full(&mut loaded, &criteria, &samples, &labels, &dev)?;
    log::info!("evaluated in {:.2} s", t.elapsed().as_secs_f64());
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let record = EvalRecord {
        dir: dest.clone(),
        run_dir: run_dir.to_path_buf(),
        samples: JudgedSamples {
            source: if own {
                "the run's samples".into()
            } else {
                "a samples file".into()
            },
            path: spath.clone(),
            sha256,
            count: m,
        },
        criteria: cfg.criteria.clone(),
        overrides: sets.to_vec(),
        warnings,
        evaluation,
    };
    write_nearest_png(
        &dest.join("nearest.png"),
        &samples,
        &loaded.train,
        &record.evaluation,
        16,
    )?;
    write_atomic(
        &dest.join("evaluation.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    write_atomic(
        &dest.join("summary.md"),
        eval_summary_md(&record, &loaded.train).as_bytes(),
    )?;
    Ok(record)
}

fn eval_summary_md(r: &EvalRecord, data: &TrainingSet) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Evaluation of {}
",
        r.samples.path.display()
    );
    let _ = writeln!(
        s,
        "{} ({} images, sha256 {}) judged against the training set of the run {} ({} images).
",
        r.samples.source,
        r.samples.count,
        r.samples.sha256,
        r.run_dir.display(),
        data.len()
    );
    if !r.overrides.is_empty() {
        let _ = writeln!(
            s,
            "Overrides: `{}`
",
            r.overrides.join("`, `")
        );
    }
    for w in &r.warnings {
        let _ = writeln!(
            s,
            "**Warning:** {w}
"
        );
    }
    evaluation_md(&mut s, &r.evaluation);
    let _ = writeln!(
        s,
        "![nearest](nearest.png)\n\nSamples (top row) and their nearest training images (bottom row)."
    );
    s
}
