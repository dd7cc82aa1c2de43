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

pub mod baseline;
pub mod budget;
pub mod evaluate;
pub mod record;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::tensor::TensorData;

use crate::config::{Config, ConfigError};
use crate::data::{derive_seed, stream};
use crate::diffusion::generate::{Generated, Generation, generate};
use crate::diffusion::model::Model;
use crate::diffusion::train;
use crate::engine::device;
use crate::engine::params::ParamStore;
use crate::engine::rank::to_dispatch;
use crate::eval::Evaluation;
use crate::io::lock::DirLock;
use crate::io::output::{write_atomic, write_grid, write_npy_f32, write_npy_i64};
use crate::plugins::Registry;
use evaluate::{build_criteria, evaluate_full};
pub use record::{RunReport, SnapshotResult};
use record::{scale_for, write_lock, write_results};

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
    if crate::diffusion::snapshot::list(&dir.join("snapshots")).is_empty() {
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
    crate::run::budget::preflight(cfg, reg)?;
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
    if let Some(m) = crate::config::hybrid_contradiction(&cfg.train, &arch, &info, &schedule) {
        bail!("train.loss: {m}");
    }
    if let Some(m) = crate::config::variance_contradiction(&cfg.sample, &arch, &info, &schedule) {
        bail!("sample.variance: {m}");
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
    let learned_variance = cfg.sample.learned_variance(&cfg.train);
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
        let all = crate::diffusion::snapshot::list(&snaps_dir);
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
                let path = snaps_dir.join(crate::diffusion::snapshot::file_name(step));
                if !path.exists() {
                    return Err(anyhow!(
                        "sample.snapshot = {step}, but {} does not exist (snapshots are written \
                         every train.snapshot_every steps and at the end)",
                        path.display()
                    ));
                }
                // A chosen snapshot is never replaced by another one behind the user's back:
                // damage is an error that names the file and the snapshots that do verify.
                let s = crate::diffusion::snapshot::Snapshot::load(&path, &dev).map_err(|e| {
                    if e.downcast_ref::<crate::diffusion::snapshot::Damaged>()
                        .is_none()
                    {
                        return e;
                    }
                    let intact: Vec<String> = crate::diffusion::snapshot::list(&snaps_dir)
                        .into_iter()
                        .filter(|(s, p)| {
                            *s != step && crate::diffusion::snapshot::verify(p).is_ok()
                        })
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
            Generation {
                sampler,
                learned_variance,
                sigmas: &sigmas,
                labels: &labels,
                batch: cfg.sample.batch_size,
                seed,
                show_progress: true,
            },
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
        [m, c, h, w],
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
