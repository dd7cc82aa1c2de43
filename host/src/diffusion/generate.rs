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
