//! Generating images: a sampler run batch by batch over the denoiser, seeded per batch, with
//! the initial noise and every stochastic step drawn from `(seed, batch)` so any batch can be
//! regenerated alone.

use anyhow::{Result, anyhow};
use burn::tensor::{Tensor, TensorData};
use memlab_plugin_api::SplitMix64;

use crate::config::choices::SamplerSettings;
use crate::data::{derive_seed, stream};
use crate::diffusion::model::Model;
use crate::diffusion::sampler::sample;
use crate::engine::params::ParamStore;

/// Generated images (clamped to [−1, 1]) and how many values the clamp changed by more than
/// 1e-3: a model that is far off the data range shows up here instead of in silently clamped
/// images.
pub struct Generated {
    /// `count × C × H × W` values in [−1, 1].
    pub images: Vec<f32>,
    /// Values that were outside [−1.001, 1.001] before clamping.
    pub clamped: usize,
}

/// What to generate: one image per label, by `sampler` down `sigmas`, `batch` images at a
/// time, every batch seeded from `seed` and its index.
#[derive(Debug, Clone, Copy)]
pub struct Generation<'a> {
    /// The update rule and its settings.
    pub sampler: SamplerSettings,
    /// Use the network's learned variance (DDPM ancestral after a hybrid-loss run).
    pub learned_variance: bool,
    /// Decreasing σ sequence ending at 0.
    pub sigmas: &'a [f64],
    /// One label per image (0 for unconditional models).
    pub labels: &'a [i64],
    /// Images per batch.
    pub batch: usize,
    /// The sampling seed.
    pub seed: u64,
    /// Draw a progress bar.
    pub show_progress: bool,
}

/// Generates one image per label of `g` with `params`; sampling that produces non-finite
/// values stops with the step and σ named.
pub fn generate(model: &Model, params: &mut ParamStore, g: Generation<'_>) -> Result<Generated> {
    let Generation {
        sampler,
        learned_variance,
        sigmas,
        labels,
        batch,
        seed,
        show_progress,
    } = g;
    let [c, h, w] = model.image_shape;
    let count = labels.len();
    let per = c * h * w;
    let mut out = crate::io::alloc::try_with_capacity(count.saturating_mul(per), || {
        format!("sample.count = {count}: the samples")
    })?;
    let mut clamped = 0;
    let total_evals = (count.div_ceil(batch) * sampler.kind.evaluations(sigmas.len() - 1)) as u64;
    let bar = if show_progress {
        crate::io::progress::bar(
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
        let dev = model.device.clone();
        let mut noise = |like: &Tensor<4>| {
            let v: Vec<f32> = (0..like.shape().num_elements())
                .map(|_| g.normal() as f32)
                .collect();
            Tensor::<4>::from_data(TensorData::new(v, like.dims()), &dev)
        };
        let y = if learned_variance {
            let mut denoise = |x: Tensor<4>, s: f64| {
                let r = model.denoise_with_variance(params, x, &vec![s; n], Some(lab));
                if let Some(b) = &bar {
                    b.inc(1);
                }
                r
            };
            crate::diffusion::sampler::sample_learned_variance(
                sampler,
                sigmas,
                x,
                &mut denoise,
                &mut noise,
                &mut |_| (),
            )?
        } else {
            let mut denoise = |x: Tensor<4>, s: f64| {
                let r = model.denoise(params, x, &vec![s; n], Some(lab));
                if let Some(b) = &bar {
                    b.inc(1);
                }
                r
            };
            sample(sampler, sigmas, x, &mut denoise, &mut noise, &mut |_| ())?
        };
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
