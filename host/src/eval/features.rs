//! Feature spaces of criteria that ask for them ([`memlab_plugin_api::Needs::FEATURES`]): the
//! criterion's embedding network, written with the plugin tensor API, run by the host without
//! autodiff over samples and training images in fixed batches.
//!
//! Parameters are created by name on the first batch and initialised from the criterion's
//! `embedding_seed` and each name ([`crate::engine::params::init_values`], as an
//! architecture's are from the run's seed), then frozen: later batches use the same network.
//! Batches have a fixed size, so the features (and the exact k-NN on them) do not depend on
//! how many images there are or on the thread count.

use anyhow::{Result, anyhow, bail};
use burn::tensor::Device;

use crate::engine::executor::{Executor, Mode};
use crate::engine::params::{ParamStore, read_f32};
use crate::plugins::CriterionHandle;

/// Images per embedding batch.
pub const BATCH: usize = 256;

/// Features of `images` (NCHW, `shape` = `[C, H, W]`) under the embedding network of
/// `criterion`, whose parameters `store` holds (created on the first call, frozen after it).
/// Returns `(features, dimension)`, `images.len() / (C·H·W)` rows of `dimension` values.
/// `what` names the images in the progress bar ("samples", "training images").
pub fn embed(
    criterion: &CriterionHandle,
    store: &mut ParamStore,
    images: &[f32],
    shape: [usize; 3],
    device: &Device,
    what: &str,
) -> Result<(Vec<f32>, usize)> {
    let per: usize = shape.iter().product();
    if per == 0 || !images.len().is_multiple_of(per) {
        bail!("{what}: not a whole number of {shape:?} images");
    }
    let n = images.len() / per;
    let bar = crate::io::progress::bar(
        n as u64,
        &format!("{{prefix}}embedding {what} [{{bar:30}}] {{pos}}/{{len}} ({{elapsed}})"),
    );
    let mut out: Vec<f32> = Vec::new();
    let mut dim = 0usize;
    for (b, chunk) in images.chunks(BATCH * per).enumerate() {
        let rows = chunk.len() / per;
        let exec = Executor::new(device, Mode::Eval, store, 0);
        let x = exec.insert_data(chunk.to_vec(), &[rows, shape[0], shape[1], shape[2]])?;
        let res = criterion.embed(exec.ops(), x);
        use memlab_plugin_api::ffi::HostOps;
        exec.release(x);
        let id = match res {
            Ok(id) => id,
            Err(e) => {
                return Err(match exec.error() {
                    Some(op) => anyhow!("{} embedding network: {op}", criterion.label()),
                    None => e,
                });
            }
        };
        let feat = exec
            .finish(id)
            .map_err(|e| anyhow!("{} embedding network: {e}", criterion.label()))?;
        exec.release(id);
        if feat.int || feat.shape.len() != 2 || feat.shape[0] != rows || feat.shape[1] == 0 {
            bail!(
                "{}: the embedding network must return features [N, D] for N images; for \
                 {rows} images of {shape:?} it returned {:?}{}",
                criterion.label(),
                feat.shape,
                if feat.int { " integers" } else { "" }
            );
        }
        if b == 0 {
            dim = feat.shape[1];
            let total = crate::io::alloc::mul(n, dim, || format!("{what}: features"))?;
            out = crate::io::alloc::try_with_capacity(total, || format!("{what}: features"))?;
        } else if feat.shape[1] != dim {
            bail!(
                "{}: the embedding network returned {} features per image after {dim}",
                criterion.label(),
                feat.shape[1]
            );
        }
        let values = read_f32(&feat.t, 2)?;
        if let Some(p) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: the embedding of image {} of the {what} holds a non-finite value",
                criterion.label(),
                b * BATCH + p / dim
            );
        }
        out.extend_from_slice(&values);
        drop(exec);
        store.freeze();
        if let Some(bar) = &bar {
            bar.inc(rows as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok((out, dim))
}
