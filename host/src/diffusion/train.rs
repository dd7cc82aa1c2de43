//! The training loop: seeded batches and noise, Adam(W) with warm-up and clipping, EMA,
//! atomic snapshots, exact resume, a NaN guard, a progress bar and `metrics.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};
use memlab_plugin_api::SplitMix64;
use serde::Serialize;

use crate::config::TrainSection;
use crate::data::{TrainingSet, derive_seed, stream};
use crate::diffusion::model::{Model, TrainBatch};
use crate::diffusion::optim::{
    AdamConfig, AdamState, adam_step, ema_update, global_norm, scale_grads,
};
use crate::diffusion::snapshot::{self, Snapshot};
use crate::engine::params::ParamStore;
use crate::io::output::write_atomic;

/// What training produced.
pub struct Trained {
    /// Final parameters.
    pub params: ParamStore,
    /// Final EMA parameters (when EMA is on).
    pub ema: Option<ParamStore>,
    /// Steps completed.
    pub steps: u64,
    /// Step training resumed from (0 for a fresh run).
    pub resumed_from: u64,
    /// Snapshot files written or found, by step.
    pub snapshots: Vec<(u64, PathBuf)>,
}

/// One line of `metrics.jsonl`.
#[derive(Serialize, serde::Deserialize)]
pub struct MetricLine {
    /// Step (1-based: the number of optimiser steps done).
    pub step: u64,
    /// Loss of the step's batch: the weighted denoising loss, or with `train.loss = "hybrid"`
    /// the hybrid objective (ε-MSE + λ·T·VLB term).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
}

/// Draws per-sample uniform/normal numbers for σ and per-pixel noise for step `step`.
pub fn step_noise(seed: u64, step: u64, n: usize, per: usize) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let mut g = SplitMix64::for_index(derive_seed(seed, stream::NOISE), step);
    let uniform: Vec<f64> = (0..n)
        .map(|_| g.next_f64().clamp(1e-12, 1.0 - 1e-12))
        .collect();
    let normal: Vec<f64> = (0..n).map(|_| g.normal()).collect();
    let noise: Vec<f32> = (0..n * per).map(|_| g.normal() as f32).collect();
    (uniform, normal, noise)
}

/// Creates the model's parameters with one inference forward pass (deterministic: each
/// parameter's initial values depend only on the seed and its name).
pub fn materialize(model: &Model, params: &mut ParamStore) -> Result<()> {
    let [c, h, w] = model.image_shape;
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![0f32; c * h * w], [1, c, h, w]),
        &model.device,
    );
    let labels = (model.classes > 0).then_some(vec![0i64]);
    model.denoise(params, x, &[1.0], labels.as_deref())?;
    params.freeze();
    Ok(())
}

/// Refuses a snapshot whose parameters are not the ones `model` creates (names and shapes):
/// one written by an earlier version of the architecture plugin (renamed layers, another
/// weight layout), which would otherwise fail halfway through a forward pass.
pub fn check_snapshot_params(model: &Model, loaded: &ParamStore, path: &Path) -> Result<()> {
    let mut fresh = ParamStore::new(0);
    materialize(model, &mut fresh)?;
    let want: std::collections::BTreeMap<&String, &Vec<usize>> =
        fresh.iter().map(|(n, p)| (n, &p.shape)).collect();
    let have: std::collections::BTreeMap<&String, &Vec<usize>> =
        loaded.iter().map(|(n, p)| (n, &p.shape)).collect();
    if want == have {
        return Ok(());
    }
    let list = |v: Vec<String>| {
        let more = v.len().saturating_sub(4);
        let mut s = v.into_iter().take(4).collect::<Vec<_>>().join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    };
    let missing: Vec<String> = want
        .keys()
        .filter(|k| !have.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let unexpected: Vec<String> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let reshaped: Vec<String> = want
        .iter()
        .filter(|(k, s)| have.get(*k).is_some_and(|h| h != *s))
        .map(|(k, s)| format!("{k} (model {s:?}, snapshot {:?})", have[k]))
        .collect();
    bail!(
        "{} does not hold this model's parameters (written by an earlier version of {}?): \
         missing {}; unexpected {}; other shape {}. It cannot be resumed or sampled: use another \
         run name to train anew",
        path.display(),
        model.arch.label(),
        if missing.is_empty() {
            "none".into()
        } else {
            list(missing)
        },
        if unexpected.is_empty() {
            "none".into()
        } else {
            list(unexpected)
        },
        if reshaped.is_empty() {
            "none".into()
        } else {
            list(reshaped)
        },
    )
}

fn read_metrics(path: &Path, upto: u64) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<MetricLine>(l).is_ok_and(|m| m.step <= upto))
        .map(String::from)
        .collect()
}

/// Trains `model` on `data` in `run_dir` (snapshots under `run_dir/snapshots`, metrics in
/// `run_dir/metrics.jsonl`), resuming from the newest snapshot written with the same config.
/// A fresh run starts from the weights in `init_from` when given (see [`crate::diffusion::weights`]).
pub fn train(
    model: &Model,
    data: &TrainingSet,
    cfg: &TrainSection,
    seed: u64,
    run_dir: &Path,
    config_hash: &str,
    init_from: Option<&Path>,
) -> Result<Trained> {
    let snap_dir = run_dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir)
        .with_context(|| format!("creating {}", snap_dir.display()))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let Resume {
        from: resumed,
        mut snapshots,
    } = newest_intact(&snap_dir, &model.device)?;
    // The snapshot the divergence guard names: one that verified (the one resumed from) or one
    // this process wrote, never an unchecked file.
    let mut last_good: Option<PathBuf> = resumed.as_ref().map(|(_, p)| p.clone());
    let (mut params, mut ema, mut adam, start) = match resumed {
        Some((s, path)) => {
            if s.config_hash != config_hash {
                bail!(
                    "{} holds snapshots of a different configuration; use another run name (or \
                     delete the directory) to start over",
                    run_dir.display()
                );
            }
            check_snapshot_params(model, &s.params, &path)?;
            log::info!("resuming from {} (step {})", path.display(), s.step);
            (s.params, s.ema, s.adam, s.step)
        }
        None => {
            let mut p = ParamStore::new(derive_seed(seed, stream::INIT));
            materialize(model, &mut p)?;
            if let Some(file) = init_from {
                crate::diffusion::weights::load_into(&mut p, file, &model.device)?;
                log::info!("starting from the weights in {}", file.display());
            }
            let e = (cfg.ema_beta() > 0.0).then(|| p.clone());
            (p, e, AdamState::default(), 0)
        }
    };
    // Metrics after the snapshot we resume from were produced by the lost tail of the run.
    let metrics = read_metrics(&metrics_path, start);
    write_atomic(
        &metrics_path,
        metrics
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_bytes(),
    )?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)?;

    let adam_cfg = AdamConfig {
        lr: cfg.lr,
        betas: cfg.betas,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
        coupled: cfg.weight_decay_mode == crate::config::WeightDecayMode::L2,
    };
    let per = data.image_len();
    // The hybrid objective's discrete chain (the schedule's full σ grid) and λ·T.
    let hybrid = match cfg.loss {
        crate::config::Loss::Simple => None,
        crate::config::Loss::Hybrid => {
            let Some(grid) = model.schedule.discrete_sigmas()? else {
                bail!(
                    "train.loss = \"hybrid\": {} is not a discrete schedule",
                    model.schedule.label()
                );
            };
            Some(crate::diffusion::vlb::Hybrid::new(&grid, cfg.vlb_weight())?)
        }
    };
    let t0 = Instant::now();
    let total = cfg.total_steps(data.len());
    let bar = progress_bar(total, start);
    for step in start..total {
        let ids = data.batch_ids(seed, step, cfg.batch_size);
        let y = data.gather(&ids);
        let (uniform, normal, noise) = step_noise(seed, step, ids.len(), per);
        let sigma = model.schedule.training_sigmas(&uniform, &normal)?;
        let labels: Option<Vec<i64>> =
            (model.classes > 0).then(|| ids.iter().map(|&i| data.cond_labels[i]).collect());
        let dropout_seed =
            SplitMix64::for_index(derive_seed(seed, stream::DROPOUT), step).next_u64();
        let batch = TrainBatch {
            y,
            noise,
            sigma: &sigma,
            labels: labels.as_deref(),
            dropout_seed,
        };
        let (loss, mut grads) = match &hybrid {
            None => model.loss_and_grads(&mut params, batch)?,
            Some(hybrid) => model.hybrid_loss_and_grads(&mut params, hybrid, batch)?,
        };
        let norm = global_norm(&grads)?;
        if !loss.is_finite() || !norm.is_finite() {
            let last = last_good
                .as_ref()
                .map_or("none yet".to_string(), |p| p.display().to_string());
            bail!(
                "training diverged at step {}: loss = {loss}, gradient norm = {norm}. The last good \
                 snapshot is {last}; lower train.lr or set train.grad_clip",
                step + 1
            );
        }
        if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            scale_grads(&mut grads, cfg.grad_clip / norm)?;
        }
        let lr = if cfg.warmup_steps > 0 {
            cfg.lr * ((step + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
        } else {
            cfg.lr
        };
        adam_step(&mut params, &mut adam, &grads, &adam_cfg, lr)?;
        if let Some(e) = ema.as_mut() {
            ema_update(e, &params, cfg.ema_beta())?;
        }
        let done = step + 1;
        let line = serde_json::to_string(&MetricLine {
            step: done,
            loss,
            lr,
            grad_norm: norm,
            elapsed_s: t0.elapsed().as_secs_f64(),
        })?;
        writeln!(metrics_file, "{line}")?;
        report(&bar, done, total, loss, start, &t0);
        let due = cfg.snapshot_every > 0 && done.is_multiple_of(cfg.snapshot_every);
        if due || done == total {
            let path = snap_dir.join(snapshot::file_name(done));
            Snapshot {
                step: done,
                params: params.clone(),
                ema: ema.clone(),
                adam: adam.clone(),
                config_hash: config_hash.to_string(),
            }
            .save(&path)?;
            last_good = Some(path.clone());
            snapshots.push((done, path));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    metrics_file.flush()?;
    Ok(Trained {
        params,
        ema,
        steps: total.max(start),
        resumed_from: start,
        snapshots,
    })
}

/// Where training resumes: the newest snapshot that verified and its file (none: step 0),
/// and the snapshot files still listed.
struct Resume {
    from: Option<(Snapshot, PathBuf)>,
    snapshots: Vec<(u64, PathBuf)>,
}

/// The newest snapshot in `snap_dir` that verifies, with its path, and the snapshot files left
/// listed (those newer than it are damaged and set aside).
///
/// A damaged newest snapshot is not an error: it is renamed to `*.damaged` (kept, never
/// deleted), a warning names it and the reason, and the previous one is tried. When none
/// verifies, training starts from step 0 after a warning saying so. Restarting is safe rather
/// than a silent loss: training is bit-exact deterministic, so it reproduces the lost steps,
/// and refusing would leave a study cell failed with nothing for the user to do but delete
/// files by hand. Read errors (permissions, I/O) are not damage and stop the run.
fn newest_intact(snap_dir: &Path, device: &burn::tensor::Device) -> Result<Resume> {
    let mut listed = snapshot::list(snap_dir);
    let mut set_aside = 0;
    while let Some((_, path)) = listed.last().cloned() {
        match Snapshot::load(&path, device) {
            Ok(s) => {
                return Ok(Resume {
                    from: Some((s, path)),
                    snapshots: listed,
                });
            }
            Err(e) => {
                let Some(d) = e.downcast_ref::<snapshot::Damaged>() else {
                    return Err(e);
                };
                let aside = snapshot::set_aside(&path)?;
                set_aside += 1;
                listed.pop();
                let next = listed
                    .last()
                    .map_or("no earlier snapshot".to_string(), |(_, p)| {
                        format!("trying the previous one, {}", p.display())
                    });
                log::warn!(
                    "{d}. Moved it to {} (kept for inspection); {next}",
                    aside.display()
                );
            }
        }
    }
    if set_aside > 0 {
        log::warn!(
            "no snapshot in {} verified ({set_aside} damaged, set aside): training starts again \
             from step 0 (deterministic, so it reproduces the lost steps)",
            snap_dir.display()
        );
    }
    Ok(Resume {
        from: None,
        snapshots: listed,
    })
}

fn progress_bar(total: u64, start: u64) -> Option<indicatif::ProgressBar> {
    let b = crate::io::progress::bar(
        total,
        "{prefix}train [{bar:30}] {pos}/{len} steps  {per_sec}  loss {msg}  eta {eta}",
    )?;
    b.set_position(start);
    Some(b)
}

fn report(
    bar: &Option<indicatif::ProgressBar>,
    done: u64,
    total: u64,
    loss: f64,
    start: u64,
    t0: &Instant,
) {
    match bar {
        Some(b) => {
            b.set_position(done);
            b.set_message(format!("{loss:.4}"));
        }
        None => {
            let every = (total / 20).max(1);
            if done.is_multiple_of(every) || done == total {
                let rate = (done - start) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                let eta = (total - done) as f64 / rate.max(1e-9);
                log::info!(
                    "train step {done}/{total}  loss {loss:.4}  {rate:.2} steps/s  eta {eta:.0}s"
                );
            }
        }
    }
}
