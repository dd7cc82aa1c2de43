//! improved-diffusion's hybrid objective and learned-variance sampling against the reference
//! code's own values: `tests/reference/hybrid.safetensors`, written by
//! `tests/reference/make_hybrid_fixtures.py` from `GaussianDiffusion.training_losses`
//! (`LossType.MSE` / `RESCALED_MSE`, `ModelVarType.LEARNED_RANGE`), `p_mean_variance` and
//! `p_sample` (full 1000-step chain and `SpacedDiffusion` respaced to 10 steps) on the
//! `unet_class_sigma` network of `tests/networks.rs` (same weights), for the `linear` and
//! `cosine` schedules.
//!
//! Tolerance: 1e-4, relative to max(1, |reference|) (x̂₀: to max(1, σ_t), see below). Both
//! sides run the network in float32 (its outputs agree to ~2e-6, `tests/networks.rs`), and
//! both compute the loss terms in float32 from float64 schedule arrays; the VLB term divides
//! squared mean errors by variances down to β̃_1 ≈ 5e-5 (linear), which amplifies float32
//! rounding of the means — an absolute 1e-4 on values up to ~10³ (cosine's last step) is not
//! meaningful, a relative one is. Measured: ≤ 1e-6 relative for the loss terms, the means and
//! the samples, ≤ 7.4e-6 for the respaced log-variance.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use memlab::config::choices::{Sampler, SamplerSettings};
use memlab::diffusion::model::{Model, TrainBatch};
use memlab::diffusion::vlb::{Chain, Hybrid};
use memlab::engine::cpu;
use memlab::engine::params::ParamStore;
use memlab::plugins::Registry;
use memlab_e2e::root;
use safetensors::{Dtype, SafeTensors};

const TOL: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    fn load() -> Fixture {
        let bytes = std::fs::read(root().join("tests/reference/hybrid.safetensors"))
            .expect("tests/reference/hybrid.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let data: Vec<f64> = match v.dtype() {
                    Dtype::F32 => v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                    Dtype::I64 => v
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                    d => panic!("{name}: {d:?}"),
                };
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        Fixture { tensors }
    }
    fn get(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
            .1
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).iter().map(|&v| v as f32).collect()
    }
    fn ints(&self, name: &str) -> Vec<usize> {
        self.get(name).iter().map(|&v| v as usize).collect()
    }
    fn labels(&self, name: &str) -> Vec<i64> {
        self.get(name).iter().map(|&v| v as i64).collect()
    }
}

/// The unet_class_sigma network (reference weights) under `schedule`, and its discrete chain.
fn model(schedule: &str) -> (Model, ParamStore, Chain) {
    let io = std::fs::read(root().join("tests/reference/networks/unet_class_sigma.io.safetensors"))
        .unwrap();
    let (_, meta) = SafeTensors::read_metadata(&io).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let reg = Registry::load(&[]).expect("registry");
    let arch = reg
        .architecture(&meta["architecture"], &meta["memlab_params"], 0)
        .expect("the unet plugin is built (cargo build --workspace)");
    let info = arch.info().unwrap();
    assert!(info.learned_variance);
    let schedule = reg.schedule(schedule, "", 0).unwrap();
    let sigmas = schedule
        .discrete_sigmas()
        .unwrap()
        .expect("a discrete schedule");
    // The grid read back from round_sigma is the schedule's: all 1000 of its sampling σ.
    let mut all = schedule.sampling_sigmas(1000).unwrap();
    all.pop();
    all.reverse();
    assert_eq!(sigmas, all);
    let model = Model {
        arch,
        schedule,
        info,
        device: cpu(),
        classes: 5,
        image_shape: [3, 8, 8],
        training_set: None,
        training_len: 0,
    };
    let mut params = ParamStore::new(0);
    memlab::diffusion::train::materialize(&model, &mut params).unwrap();
    let weights = root().join("tests/reference/networks/unet_class_sigma.weights.safetensors");
    memlab::diffusion::weights::load_into(&mut params, &weights, &model.device).unwrap();
    (model, params, Chain::from_sigmas(&sigmas).unwrap())
}

/// Largest |a − b| / max(1, |b|), and a printable summary.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn check(what: &str, ours: &[f64], reference: &[f64]) -> f64 {
    let e = rel_err(ours, reference);
    println!("{what}: max relative error {e:.2e}");
    assert!(
        e <= TOL,
        "{what}: {e:.2e} > {TOL:e}\n ours      {ours:?}\n reference {reference:?}"
    );
    e
}

fn training_losses(schedule: &str) {
    let f = Fixture::load();
    let (model, mut params, chain) = model(schedule);
    let p = format!("{schedule}.train");
    let ts = f.ints(&format!("{p}.t"));
    let sigma: Vec<f64> = ts.iter().map(|&t| chain.sigmas[t]).collect();
    let labels = f.labels(&format!("{p}.labels"));
    let (mse, vb) = model
        .hybrid_terms(
            &mut params,
            &chain,
            f.f32(&format!("{p}.x_start")),
            f.f32(&format!("{p}.noise")),
            &sigma,
            Some(&labels),
        )
        .unwrap();
    check(&format!("{schedule} mse"), &mse, f.get(&format!("{p}.mse")));
    check(&format!("{schedule} vb"), &vb, f.get(&format!("{p}.vb")));
    let loss: Vec<f64> = mse.iter().zip(&vb).map(|(m, v)| m + v).collect();
    check(
        &format!("{schedule} loss"),
        &loss,
        f.get(&format!("{p}.loss")),
    );
    // RESCALED_MSE: vb × T/1000, i.e. λ·T with λ = 0.001 (T = 1000 here).
    let scale = 0.001 * chain.len() as f64;
    let rescaled: Vec<f64> = mse.iter().zip(&vb).map(|(m, v)| m + scale * v).collect();
    check(
        &format!("{schedule} loss (RESCALED_MSE)"),
        &rescaled,
        f.get(&format!("{p}.loss_rescaled")),
    );
}

#[test]
fn training_losses_match_improved_diffusion_linear() {
    training_losses("linear");
}

#[test]
fn training_losses_match_improved_diffusion_cosine() {
    training_losses("cosine");
}

fn tensor(v: &[f64], n: usize) -> Tensor<4> {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::<4>::from_data(TensorData::new(data, [n, 3, 8, 8]), &cpu())
}

fn values(t: Tensor<4>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// `p_mean_variance` / `p_sample` (`clip_denoised=True`) on `prefix` = `full` (the 1000-step
/// chain) or `respaced` (`space_timesteps(1000, "10")`, memlab's `sampling_sigmas(10)`).
fn p_sample(schedule: &str, prefix: &str) {
    let f = Fixture::load();
    let (model, mut params, full) = model(schedule);
    // memlab's σ sequence for the chain: all of the grid, or the respaced sampling σ.
    let chain = if prefix == "full" {
        full
    } else {
        let mut s = model.schedule.sampling_sigmas(10).unwrap();
        s.pop();
        s.reverse();
        Chain::from_sigmas(&s).unwrap()
    };
    let p = format!("{schedule}.{prefix}");
    let ts = f.ints(&format!("{p}.t"));
    let n = ts.len();
    let per = 3 * 8 * 8;
    let labels = f.labels(&format!("{p}.labels"));
    let sigma: Vec<f64> = ts.iter().map(|&t| chain.sigmas[t]).collect();
    // x_t-space → σ-space: x_σ = x_t·√(1 + σ²).
    let x_t = f.get(&format!("{p}.x"));
    let x: Vec<f64> = x_t
        .chunks(per)
        .zip(&sigma)
        .flat_map(|(xi, s)| xi.iter().map(move |v| v * (1.0 + s * s).sqrt()))
        .collect();
    let (d, v) = model
        .denoise_with_variance(&mut params, tensor(&x, n), &sigma, Some(&labels))
        .unwrap();
    let v = v.expect("variance channels");
    // x̂₀ = x_σ − σ·ε̂: a float32 difference in ε̂ (~2e-6 between the two networks) comes out
    // σ_t times larger (157 at linear t = 999), on both sides; compared on ε̂'s scale, i.e.
    // relative to max(1, σ_t, |x̂₀|).
    let ours = values(d.clamp(-1.0, 1.0));
    let reference = f.get(&format!("{p}.pred_xstart"));
    let e = ours
        .iter()
        .zip(reference)
        .enumerate()
        .map(|(j, (a, b))| (a - b).abs() / b.abs().max(1.0).max(sigma[j / per]))
        .fold(0.0, f64::max);
    println!("{schedule} {prefix} pred_xstart: max error relative to max(1, σ_t) {e:.2e}");
    assert!(e <= TOL, "{schedule} {prefix} pred_xstart: {e:.2e}");
    check(
        &format!("{schedule} {prefix} log_variance"),
        &values(memlab::diffusion::vlb::learned_log_variance(&chain, &ts, v)),
        f.get(&format!("{p}.log_variance")),
    );
    // One ancestral step per example, through the sampler: the chain from σ_t down to σ_0
    // (the same β', β̃' at t as the whole chain), stopped at the second denoiser call, whose
    // input is the step's result. Zero noise gives the mean.
    let z_all = f.get(&format!("{p}.noise"));
    for (what, key) in [("mean", "mean"), ("sample", "sample")] {
        let mut ours = Vec::new();
        for i in 0..n {
            let t = ts[i];
            let mut seq: Vec<f64> = chain.sigmas[..=t].iter().rev().copied().collect();
            seq.push(0.0);
            let z = &z_all[i * per..(i + 1) * per];
            let mut seen: Option<Vec<f64>> = None;
            let mut calls = 0;
            let mut denoise = |x: Tensor<4>, s: f64| {
                calls += 1;
                if calls == 2 {
                    seen = Some(values(x));
                    anyhow::bail!("stop");
                }
                let (d, v) =
                    model.denoise_with_variance(&mut params, x, &[s], Some(&labels[i..=i]))?;
                Ok((d, v))
            };
            let mut noise = |like: &Tensor<4>| {
                if what == "mean" {
                    like.zeros_like()
                } else {
                    tensor(z, 1)
                }
            };
            let start = tensor(&x[i * per..(i + 1) * per], 1);
            let r = memlab::diffusion::sampler::sample_learned_variance(
                SamplerSettings::plain(Sampler::Ddpm),
                &seq,
                start,
                &mut denoise,
                &mut noise,
                &mut |_| (),
            );
            let out_sigma = if t == 0 { 0.0 } else { chain.sigmas[t - 1] };
            let x_next = match seen {
                Some(v) => v,
                None => values(r.unwrap()),
            };
            let scale = 1.0 / (1.0 + out_sigma * out_sigma).sqrt();
            ours.extend(x_next.iter().map(|v| v * scale));
        }
        check(
            &format!("{schedule} {prefix} {what}"),
            &ours,
            f.get(&format!("{p}.{key}")),
        );
    }
}

#[test]
fn p_sample_matches_improved_diffusion_linear() {
    p_sample("linear", "full");
    p_sample("linear", "respaced");
}

#[test]
fn p_sample_matches_improved_diffusion_cosine() {
    p_sample("cosine", "full");
    p_sample("cosine", "respaced");
}

/// The VLB term trains only the variance (stop-gradient on the mean, as `training_losses`'
/// `frozen_out`): on the output convolution, the rows producing ε̂ get the same gradient with
/// and without the VLB term, the rows producing v get none from the MSE alone. The hybrid
/// value is mean(mse + λ·T·vb).
#[test]
fn the_vlb_term_trains_only_the_variance_channels() {
    let f = Fixture::load();
    let (model, mut params, chain) = model("linear");
    let p = "linear.train";
    let ts = f.ints(&format!("{p}.t"));
    let sigma: Vec<f64> = ts.iter().map(|&t| chain.sigmas[t]).collect();
    let labels = f.labels(&format!("{p}.labels"));
    let y = f.f32(&format!("{p}.x_start"));
    let noise = f.f32(&format!("{p}.noise"));
    let grads = |scale: f64, params: &mut ParamStore| {
        let (loss, g) = model
            .hybrid_loss_and_grads(
                params,
                &Hybrid {
                    chain: chain.clone(),
                    vlb_scale: scale,
                },
                TrainBatch {
                    y: y.clone(),
                    noise: noise.clone(),
                    sigma: &sigma,
                    labels: Some(&labels),
                    dropout_seed: 0,
                },
            )
            .unwrap();
        let w = memlab::engine::params::read_f32(&g["out.2.weight"], 4).unwrap();
        (loss, w)
    };
    let (l0, g0) = grads(0.0, &mut params);
    let (l1, g1) = grads(1.0, &mut params);
    // Reference value of mean(mse + vb) with T = 1000, λ = 0.001.
    let reference = f.get(&format!("{p}.loss_rescaled"));
    let expect = reference.iter().sum::<f64>() / reference.len() as f64;
    assert!((l1 - expect).abs() <= TOL * expect, "{l1} vs {expect}");
    let mse = f.get(&format!("{p}.mse"));
    let expect0 = mse.iter().sum::<f64>() / mse.len() as f64;
    assert!((l0 - expect0).abs() <= TOL * expect0, "{l0} vs {expect0}");
    let half = g0.len() / 2; // rows 0..3 (ε̂) then 3..6 (v) of [6, ch, 3, 3]
    assert_eq!(
        &g0[..half],
        &g1[..half],
        "the VLB term moved the mean's weights"
    );
    assert!(g0[half..].iter().all(|&v| v == 0.0), "the MSE reached v");
    assert!(
        g1[half..].iter().any(|&v| v != 0.0),
        "the VLB term did not reach v"
    );
}

/// `train.loss = "hybrid"` end to end: a tiny learned-variance UNet trains a few steps under
/// the linear schedule and samples with the learned variance (respaced DDPM).
#[test]
fn a_hybrid_run_trains_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("hybrid.toml");
    std::fs::write(
        &cfg,
        r#"
[run]
name = "hybrid"
seed = 1
device = "cpu"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 64 }
size = 8
[architecture]
name = "unet"
params = { channels = 16, channel_mult = [1], res_blocks = 1, attention_resolutions = [], heads = 1, dropout = 0.0, learn_sigma = true }
[schedule]
name = "linear"
[[criteria]]
name = "ratio"
[train]
steps = 6
batch_size = 8
lr = 1e-3
loss = "hybrid"
snapshot_every = 3
[sample]
count = 4
sampler = "ddpm"
steps = 5
batch_size = 4
"#,
    )
    .unwrap();
    let r = memlab_e2e::memlab_run(&cfg, tmp.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = tmp.path().join("hybrid");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("loss = \"hybrid\""), "{resolved}");
    // Resume: without the last snapshot the run continues from step 3 and writes the same
    // bytes (the hybrid objective adds no state beyond the step's seeded draws).
    let last = run.join("snapshots/snapshot-00000006.safetensors");
    let snap = std::fs::read(&last).unwrap();
    let samples = std::fs::read(run.join("samples.npy")).unwrap();
    std::fs::remove_file(&last).unwrap();
    let r = memlab_e2e::memlab_run(&cfg, tmp.path(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&last).unwrap(),
        snap,
        "resumed snapshot differs"
    );
    assert_eq!(std::fs::read(run.join("samples.npy")).unwrap(), samples);
}

const CHECK_BASE: &str = r#"
[run]
name = "check-hybrid"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 64 }
[architecture]
name = "unet"
params = { channels = 16, channel_mult = [1], res_blocks = 1, attention_resolutions = [], heads = 1, learn_sigma = LEARN }
[schedule]
name = "SCHEDULE"
[[criteria]]
name = "ratio"
[train]
steps = 2
batch_size = 4
TRAIN
[sample]
sampler = "SAMPLER"
SAMPLE
"#;

/// `memlab config check` on the base config with the placeholders replaced: (exit code, stderr).
fn config_check(
    learn: &str,
    schedule: &str,
    train: &str,
    sampler: &str,
    sample: &str,
) -> (i32, String) {
    let text = CHECK_BASE
        .replace("LEARN", learn)
        .replace("SCHEDULE", schedule)
        .replace("TRAIN", train)
        .replace("SAMPLER", sampler)
        .replace("SAMPLE\n", &format!("{sample}\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, text).unwrap();
    let r = memlab_e2e::memlab(&["config", "check", file.to_str().unwrap()], None, None);
    (r.code, r.stderr)
}

#[test]
fn hybrid_loss_and_learned_variance_config_errors_name_the_keys() {
    let hybrid = "loss = \"hybrid\"";
    // The good cases.
    for (learn, sched, train, sampler, sample) in [
        ("true", "cosine", hybrid, "ddpm", ""),
        (
            "true",
            "linear",
            "loss = \"hybrid\"\nvlb_weight = 0.01",
            "ddpm",
            "",
        ),
        ("true", "linear", "", "ddpm", "variance = \"learned\""),
        ("false", "edm", "", "heun", "variance = \"fixed\""),
    ] {
        let (code, err) = config_check(learn, sched, train, sampler, sample);
        assert_eq!(code, 0, "{learn} {sched} {train} {sample}: {err}");
    }
    for (learn, sched, train, sampler, sample, key, cause) in [
        (
            "false",
            "linear",
            hybrid,
            "ddpm",
            "",
            "train.loss",
            "learn_sigma = true",
        ),
        (
            "true",
            "edm",
            hybrid,
            "heun",
            "",
            "train.loss",
            "is continuous",
        ),
        (
            "true",
            "linear",
            "vlb_weight = 0.01",
            "ddpm",
            "",
            "train.vlb_weight",
            "the loss is \"simple\"",
        ),
        (
            "true",
            "linear",
            "loss = \"hybrid\"\nvlb_weight = -1.0",
            "ddpm",
            "",
            "train.vlb_weight",
            "> 0",
        ),
        (
            "true",
            "linear",
            "loss = \"vlb\"",
            "ddpm",
            "",
            "train.loss",
            "unknown variant",
        ),
        (
            "true",
            "linear",
            hybrid,
            "heun",
            "variance = \"learned\"",
            "sample.variance",
            "ddpm",
        ),
        (
            "false",
            "linear",
            "",
            "ddpm",
            "variance = \"learned\"",
            "sample.variance",
            "outputs none",
        ),
        (
            "true",
            "vp",
            "",
            "ddpm",
            "variance = \"learned\"",
            "sample.variance",
            "is continuous",
        ),
    ] {
        let (code, err) = config_check(learn, sched, train, sampler, sample);
        assert_eq!(code, 2, "{key}: {err}");
        assert!(err.contains(&format!("key `{key}`")), "names {key}: {err}");
        assert!(err.contains(cause), "says {cause}: {err}");
    }
}
