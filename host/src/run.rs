//! `memlab run`: one configuration from data to replication numbers, in a run directory that
//! holds everything a reader needs to trust (and reproduce) the numbers.
//!
//! ```text
//! runs/<name>/
//!   config.toml          the resolved configuration (after --set overrides)
//!   plugins.lock         libraries used: name, version, plugin-api version, path, sha256
//!   metrics.jsonl        one line per training step
//!   snapshots/           snapshot-<step>.safetensors (params, EMA, Adam state)
//!   samples.npy          generated images, float32 NCHW in [-1, 1]
//!   sample_labels.npy    their labels (int64)
//!   samples.png          grid of the samples
//!   nearest.png          each sample (top) above its nearest training image (bottom)
//!   replication.json     every number of the evaluation
//!   summary.md           the same, readable
//!   evals/<samples>-<h>/ each `memlab eval`: evaluation.json, summary.md, nearest.png
//!   .memlab.lock         held (flock) by the process that owns the directory
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Tensor, TensorData};
use memlab_plugin_api::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::data::{TrainingSet, derive_seed, stream};
use crate::engine::device;
use crate::engine::params::ParamStore;
use crate::engine::rank::to_dispatch;
use crate::eval::{Evaluation, evaluate};
use crate::lock::DirLock;
use crate::model::Model;
use crate::output::{write_atomic, write_grid, write_npy_f32, write_npy_i64};
use crate::plugins::Registry;
use crate::sampler::{SamplerSettings, sample};
use crate::train;

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

/// Loads, overrides and validates a config and loads the plugins it needs.
pub fn prepare(file: &Path, sets: &[String], extra_dirs: &[PathBuf]) -> Result<(Config, Registry)> {
    let text = crate::config::read_text(file)?;
    if crate::config::is_study(&text) {
        return Err(ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            message: "this is a study config ([sweep], [study] or [emm]): run it with \
                      `memlab study` (or `memlab emm`), or a single cell with `memlab study --cell I`"
                .into(),
        }
        .into());
    }
    let mut cfg = Config::parse_with(&text, file, sets)?;
    cfg.resolve_plugin_dirs(file)?;
    let mut dirs = extra_dirs.to_vec();
    dirs.extend(cfg.plugins.dirs.iter().cloned());
    let reg = Registry::load(&dirs)?;
    for f in reg.failures() {
        log::warn!("skipped plugin library {}: {}", f.path.display(), f.reason);
    }
    cfg.validate(file, &reg)?;
    Ok((cfg, reg))
}

/// Generated images (clamped to [−1, 1]) and how many values the clamp changed by more than
/// 1e-3: a model that is far off the data range shows up here instead of in silently clamped
/// images.
pub struct Generated {
    /// `count × C × H × W` values in [−1, 1].
    pub images: Vec<f32>,
    /// Values that were outside [−1.001, 1.001] before clamping.
    pub clamped: usize,
}

/// Generates `count` samples with `params`, in batches, seeded by `seed`; sampling that
/// produces non-finite values stops with the step and σ named.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Model,
    params: &mut ParamStore,
    sampler: SamplerSettings,
    sigmas: &[f64],
    labels: &[i64],
    batch: usize,
    seed: u64,
    show_progress: bool,
) -> Result<Generated> {
    let [c, h, w] = model.image_shape;
    let count = labels.len();
    let per = c * h * w;
    let mut out = crate::budget::try_with_capacity(count.saturating_mul(per), || {
        format!("sample.count = {count}: the samples")
    })?;
    let mut clamped = 0;
    let total_evals = (count.div_ceil(batch) * sampler.kind.evaluations(sigmas.len() - 1)) as u64;
    let bar = if show_progress {
        crate::progress::bar(
            total_evals,
            "{prefix}sample [{bar:30}] {pos}/{len} denoiser calls  eta {eta}",
        )
    } else {
        None
    };
    for (bi, start) in (0..count).step_by(batch).enumerate() {
        let n = batch.min(count - start);
        let mut g = SplitMix64::for_index(derive_seed(seed, stream::SAMPLE), bi as u64);
        let init: Vec<f32> = (0..n * per)
            .map(|_| (g.normal() * sigmas[0]) as f32)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(init, [n, c, h, w]), &model.device);
        let lab = &labels[start..start + n];
        let mut denoise = |x: Tensor<4>, s: f64| {
            let r = model.denoise(params, x, &vec![s; n], Some(lab));
            if let Some(b) = &bar {
                b.inc(1);
            }
            r
        };
        let dev = model.device.clone();
        let mut noise = |like: &Tensor<4>| {
            let v: Vec<f32> = (0..like.shape().num_elements())
                .map(|_| g.normal() as f32)
                .collect();
            Tensor::<4>::from_data(TensorData::new(v, like.dims()), &dev)
        };
        let y = sample(sampler, sigmas, x, &mut denoise, &mut noise, &mut |_| ())?;
        let v = y
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        clamped += v.iter().filter(|x| x.abs() > 1.001).count();
        out.extend(v.iter().map(|x| x.clamp(-1.0, 1.0)));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Generated {
        images: out,
        clamped,
    })
}

/// Runs a whole configuration. `root` overrides `run.out_dir` when given.
///
/// Everything that can be checked is checked before the first write (components, data, and
/// whether an existing run directory holds snapshots of another training configuration); the
/// run directory is locked for the whole run, so a second process on it is refused.
pub fn run(cfg: &Config, reg: &Registry, root: Option<&Path>) -> Result<RunReport> {
    run_in(cfg, reg, root, None)
}

/// [`run`] with the run directory already locked by the caller (a study cell).
pub fn run_locked(
    cfg: &Config,
    reg: &Registry,
    root: Option<&Path>,
    lock: &DirLock,
) -> Result<RunReport> {
    run_in(cfg, reg, root, Some(lock))
}

/// The run directory of `cfg`: `root` (or `run.out_dir`) / `run.name`.
pub fn run_dir(cfg: &Config, root: Option<&Path>) -> PathBuf {
    root.map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.run.out_dir.clone())
        .join(&cfg.run.name)
}

/// Refuses to reuse `dir` when it holds snapshots trained under another configuration (seed,
/// data, architecture, schedule, conditioning or training settings). Reads only.
fn check_reusable(dir: &Path, cfg: &Config) -> Result<()> {
    if crate::snapshot::list(&dir.join("snapshots")).is_empty() {
        return Ok(());
    }
    let old = dir.join("config.toml");
    let old_cfg = crate::config::read_text(&old)
        .and_then(|t| Config::parse(&t, &old))
        .map_err(|e| {
            anyhow!(
                "{} holds snapshots, but its config.toml cannot be read ({e}), so memlab cannot \
                 tell which configuration they belong to; use another run name",
                dir.display()
            )
        })?;
    if old_cfg.training_hash() != cfg.training_hash() {
        let mut changed = Vec::new();
        let pairs: [(&str, bool); 6] = [
            ("run.seed", old_cfg.run.seed != cfg.run.seed),
            ("dataset", old_cfg.dataset != cfg.dataset),
            ("architecture", old_cfg.architecture != cfg.architecture),
            ("schedule", old_cfg.schedule != cfg.schedule),
            ("conditioning", old_cfg.conditioning != cfg.conditioning),
            ("train", old_cfg.train != cfg.train),
        ];
        for (k, differs) in pairs {
            if differs {
                changed.push(k);
            }
        }
        bail!(
            "{} holds snapshots of a different training configuration ({} changed); use another \
             run name (or delete the directory) to start over. Nothing was written.",
            dir.display(),
            if changed.is_empty() {
                "settings".to_string()
            } else {
                changed.join(", ")
            }
        );
    }
    Ok(())
}

fn run_in(
    cfg: &Config,
    reg: &Registry,
    root: Option<&Path>,
    held: Option<&DirLock>,
) -> Result<RunReport> {
    // Refuse what cannot fit before the run directory or any buffer exists.
    crate::budget::preflight(cfg, reg)?;
    let dev = device::select(cfg.run.device)?;
    log::info!("device: {}", device::describe(&dev));
    let dir = run_dir(cfg, root);
    let seed = cfg.run.seed;

    // Components.
    let cond = reg.conditioning(
        &cfg.conditioning.name,
        &cfg.conditioning.params_toml(),
        seed,
    )?;
    let schedule = reg.schedule(&cfg.schedule.name, &cfg.schedule.params_toml(), seed)?;
    let arch = reg.architecture(
        &cfg.architecture.name,
        &cfg.architecture.params_toml(),
        seed,
    )?;
    let criteria = build_criteria(cfg, reg, seed)?;
    let mut loaded = crate::data::load(reg, &cfg.dataset, seed, &cond)?;
    let data = &loaded.train;
    log::info!(
        "training set: {} images of {:?} in {} class(es) from {}",
        data.len(),
        data.shape,
        data.class_names.len(),
        loaded
            .sources
            .iter()
            .map(|s| s.handle.label().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    check_reusable(&dir, cfg)?;

    // The first write: own the directory, check again under the lock, record the config.
    let own_lock;
    let lock = match held {
        Some(l) => l,
        None => {
            own_lock = DirLock::acquire(&dir)?;
            &own_lock
        }
    };
    if lock.dir() != dir {
        bail!(
            "internal: locked {} but the run directory is {}",
            lock.dir().display(),
            dir.display()
        );
    }
    check_reusable(&dir, cfg)?;
    let config_hash = cfg.training_hash();
    write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    write_lock(&dir, cfg, reg)?;

    let info = arch.info()?;
    // `Config::validate` refuses this already; checked again with the real class count.
    if let Some(m) = crate::config::labels_contradiction(&arch, &info, &cond, data.cond_classes) {
        bail!("conditioning.name: {m}");
    }
    let training_set = if info.needs_training_set {
        let [c, h, w] = data.shape;
        Some(to_dispatch(
            TensorData::new(data.images.clone(), [data.len(), c, h, w]),
            &dev,
        )?)
    } else {
        None
    };
    let model = Model {
        arch,
        schedule,
        info,
        device: dev.clone(),
        classes: data.cond_classes,
        image_shape: data.shape,
        training_set,
        training_len: data.len(),
    };

    // Train.
    let t0 = Instant::now();
    let (params, ema, steps, resumed_from) = if model.info.parameter_free {
        if let Some(f) = &cfg.architecture.init_from {
            bail!(
                "architecture.init_from = {}: {} has no parameters to load",
                f.display(),
                model.arch.label()
            );
        }
        log::info!(
            "{} has no parameters: skipping training",
            model.arch.label()
        );
        let mut p = ParamStore::new(0);
        train::materialize(&model, &mut p)?;
        (p, None, 0, 0)
    } else {
        let t = train::train(
            &model,
            data,
            &cfg.train,
            seed,
            &dir,
            &config_hash,
            cfg.architecture.init_from.as_deref(),
        )?;
        (t.params, t.ema, t.steps, t.resumed_from)
    };
    let train_seconds = t0.elapsed().as_secs_f64();

    // Sample.
    let t1 = Instant::now();
    let sampler = cfg.sample.settings();
    let sigmas = model.schedule.sampling_sigmas(cfg.sample.steps)?;
    let labels = cond.sample_labels(
        data.summary(),
        derive_seed(seed, stream::LABELS),
        cfg.sample.count,
    )?;
    // Which weights to sample: the final ones, one chosen snapshot, or every snapshot (DM: the
    // run's memorization ratio is the highest over its snapshots; DM skips its first snapshot,
    // the untrained step-0 one, which memlab never writes).
    let snaps_dir = dir.join("snapshots");
    let targets: Vec<Option<u64>> = if model.info.parameter_free {
        vec![None]
    } else if cfg.sample.every_snapshot {
        let all = crate::snapshot::list(&snaps_dir);
        all.iter().map(|(s, _)| Some(*s)).collect()
    } else {
        vec![cfg.sample.snapshot]
    };
    let [c, h, w] = data.shape;
    let mut per_snapshot = Vec::new();
    let mut best: Option<(f64, u64, Vec<f32>, Evaluation)> = None;
    for target in targets {
        let (p, e) = match target {
            Some(step) => {
                let path = snaps_dir.join(crate::snapshot::file_name(step));
                if !path.exists() {
                    return Err(anyhow!(
                        "sample.snapshot = {step}, but {} does not exist (snapshots are written \
                         every train.snapshot_every steps and at the end)",
                        path.display()
                    ));
                }
                // A chosen snapshot is never replaced by another one behind the user's back:
                // damage is an error that names the file and the snapshots that do verify.
                let s = crate::snapshot::Snapshot::load(&path, &dev).map_err(|e| {
                    if e.downcast_ref::<crate::snapshot::Damaged>().is_none() {
                        return e;
                    }
                    let intact: Vec<String> = crate::snapshot::list(&snaps_dir)
                        .into_iter()
                        .filter(|(s, p)| *s != step && crate::snapshot::verify(p).is_ok())
                        .map(|(s, _)| s.to_string())
                        .collect();
                    let what = if cfg.sample.every_snapshot {
                        "sample.every_snapshot".to_string()
                    } else {
                        format!("sample.snapshot = {step}")
                    };
                    let offer = if intact.is_empty() {
                        "no other snapshot verifies".to_string()
                    } else {
                        format!("snapshots that verify: {}", intact.join(", "))
                    };
                    e.context(format!(
                        "{what}: cannot sample from a damaged snapshot ({offer})"
                    ))
                })?;
                (s.params, s.ema)
            }
            None => (params.clone(), ema.clone()),
        };
        let mut use_params = match (cfg.sample.ema, e) {
            (true, Some(e)) => e,
            _ => p,
        };
        let Generated {
            images: samples,
            clamped,
        } = generate(
            &model,
            &mut use_params,
            sampler,
            &sigmas,
            &labels,
            cfg.sample.batch_size,
            seed,
            true,
        )?;
        let clamped_fraction = clamped as f64 / samples.len().max(1) as f64;
        if clamped_fraction > 0.01 {
            log::warn!(
                "{:.1}% of the sampled values were outside [−1, 1] and were clamped: the model \
                 is far off the data range (undertrained, or a schedule it was not trained for)",
                100.0 * clamped_fraction
            );
        }
        let ev = evaluate_full(&mut loaded, &criteria, &samples, &labels, &dev)?;
        let score = ev.criteria.first().map_or(0.0, |c| c.ratio);
        per_snapshot.push(SnapshotResult {
            step: target.unwrap_or(steps),
            ratios: ev
                .criteria
                .iter()
                .map(|c| (c.name.clone(), c.ratio))
                .collect(),
            mean_nn_l2: ev.mean_nn_l2,
            clamped_fraction,
        });
        if target.is_some() && cfg.sample.every_snapshot {
            log::info!(
                "snapshot {}: memorization ratio {:.2}% ({})",
                target.unwrap_or(steps),
                100.0 * score,
                criteria.first().map_or("", |c| c.0.as_str())
            );
        }
        // Ties keep the earlier snapshot.
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, target.unwrap_or(steps), samples, ev));
        }
    }
    let (_, best_step, samples, evaluation) =
        best.ok_or_else(|| anyhow!("no snapshot to sample"))?;
    let sample_seconds = t1.elapsed().as_secs_f64();
    let m = cfg.sample.count;
    write_npy_f32(&dir.join("samples.npy"), &[m, c, h, w], &samples)?;
    write_npy_i64(&dir.join("sample_labels.npy"), &[m], &labels)?;
    let cols = (m as f64).sqrt().ceil() as usize;
    write_grid(
        &dir.join("samples.png"),
        &samples,
        m,
        c,
        h,
        w,
        cols,
        scale_for(h),
    )?;
    let report = RunReport {
        dir: dir.clone(),
        steps,
        resumed_from,
        evaluation,
        train_seconds,
        sample_seconds,
        snapshot: best_step,
        snapshots: per_snapshot,
    };
    write_results(cfg, &report, &loaded.train, &samples, &dir)?;
    Ok(report)
}

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

fn write_results(
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
    let bytes = std::fs::read(&spath).with_context(|| format!("reading {}", spath.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    drop(bytes);
    let (shape, samples) = crate::output::read_npy_f32(&spath)?;
    let mut loaded = crate::data::load(&reg, &cfg.dataset, seed, &cond)?;
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
        let (_, l) = crate::output::read_npy_i64(&lpath)?;
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
    let evaluation = evaluate_full(&mut loaded, &criteria, &samples, &labels, &dev)?;
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

fn scale_for(h: usize) -> usize {
    (64 / h.max(1)).clamp(1, 8)
}

fn write_lock(dir: &Path, cfg: &Config, reg: &Registry) -> Result<()> {
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

fn write_nearest_png(
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
    write_grid(path, &imgs, 2 * k, c, h, w, k, scale_for(h))
}

fn summary_md(cfg: &Config, r: &RunReport, data: &TrainingSet) -> String {
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
fn evaluation_md(s: &mut String, e: &Evaluation) {
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
