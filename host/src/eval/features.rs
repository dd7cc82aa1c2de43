//! Feature spaces of criteria that ask for them ([`memlab_plugin_api::Needs::FEATURES`]): the
//! criterion's embedding network, written with the plugin tensor API, run by the host without
//! autodiff over samples and training images in fixed batches.
//!
//! Parameters are created by name on the first batch and initialised from the criterion's
//! `embedding_seed` and each name ([`crate::engine::params::init_values`], as an
//! architecture's are from the run's seed), then frozen: later batches use the same network.
//! A criterion that names a weights file (`embedding_weights`) has them overwritten from it by
//! name before any image is embedded (see [`crate::eval::feature_neighbours`]).
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

#[cfg(test)]
mod tests {
    use memlab_plugin_api::ffi::{Component, ComponentKind};
    use memlab_plugin_api::prelude::*;

    use super::*;
    use crate::eval::{Images, evaluate, feature_neighbours};

    /// A feature criterion whose `embed` is chosen by `mode`.
    struct Probe {
        mode: u8,
    }

    impl Criterion for Probe {
        fn distance(&self) -> Distance {
            Distance::L2
        }
        fn neighbours(&self) -> usize {
            2
        }
        fn needs(&self) -> Needs {
            if self.mode == 9 {
                Needs(8)
            } else {
                Needs::FEATURES
            }
        }
        fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
            for (i, (f, s)) in flags.iter_mut().zip(scores.iter_mut()).enumerate() {
                *s = d[2 * i];
                *f = d[2 * i] < 1e-3;
            }
            Ok(())
        }
        fn embed<'a>(&self, ctx: &'a Ctx<'a>, x: &Tensor<'a>) -> PResult<Tensor<'a>> {
            let h = Conv2d::new(1, 4, 3).same().forward(&ctx.scope("conv"), x);
            match self.mode {
                0 => Ok(h.flatten_from(1)),
                1 => Ok(h),
                2 => Ok(h.reshape_to(&[7, 3])),
                _ => Err("boom".into()),
            }
        }
    }

    /// The criterion as the host gets it from a library: its `FfiCriterion` and, built from the
    /// same constructor, its `FfiCriterionExt` part.
    fn handle(mode: u8) -> CriterionHandle {
        fn m0(_: &Params, _: u64) -> PResult<Probe> {
            Ok(Probe { mode: 0 })
        }
        fn m1(_: &Params, _: u64) -> PResult<Probe> {
            Ok(Probe { mode: 1 })
        }
        fn m2(_: &Params, _: u64) -> PResult<Probe> {
            Ok(Probe { mode: 2 })
        }
        fn m3(_: &Params, _: u64) -> PResult<Probe> {
            Ok(Probe { mode: 3 })
        }
        fn m9(_: &Params, _: u64) -> PResult<Probe> {
            Ok(Probe { mode: 9 })
        }
        let make = [m0, m1, m2, m3, m9][(mode as usize).min(4)];
        let mut p = Plugin::new("test-plugin", "0.0.0");
        p.criterion("probe", "test", &[], make);
        let base = match p.create(ComponentKind::Criterion, "probe", "", 0).unwrap() {
            Component::Criterion(c) => c,
            _ => unreachable!("a criterion"),
        };
        let ext = p.create_criterion_ext("probe", "", 0).unwrap();
        CriterionHandle::new(
            base,
            Some(ext),
            "criterion `probe` (plugin test-plugin)".into(),
        )
    }

    fn images() -> (Vec<f32>, Vec<f32>) {
        let mut g = memlab_plugin_api::SplitMix64(3);
        let train: Vec<f32> = (0..5 * 16)
            .map(|_| g.next_f64() as f32 * 2.0 - 1.0)
            .collect();
        let samples = [&train[16..32], &train[48..64]].concat();
        (samples, train)
    }

    #[test]
    fn features_are_exact_neighbours_and_the_same_bytes_for_the_same_seed() {
        let c = handle(0);
        let (samples, train) = images();
        let imgs = Images {
            samples: &samples,
            train: &train,
            shape: [1, 4, 4],
        };
        let dev = crate::engine::cpu();
        let a = feature_neighbours(&c, 5, imgs, 2, Distance::L2, &dev).unwrap();
        // Copies of training images 1 and 3 have them as feature-space nearest, at 0.
        assert_eq!((a.idx[0], a.idx[2]), (1, 3));
        assert_eq!((a.dist[0], a.dist[2]), (0.0, 0.0));
        let b = feature_neighbours(&c, 5, imgs, 2, Distance::L2, &dev).unwrap();
        assert_eq!(a.dist, b.dist);
        let other = feature_neighbours(&c, 6, imgs, 2, Distance::L2, &dev).unwrap();
        assert_ne!(a.dist[1], other.dist[1], "another seed, another network");
        // Batches of 256 images: 600 images embed to the same features as one at a time.
        let many: Vec<f32> = (0..600)
            .flat_map(|i| train[(i % 5) * 16..(i % 5 + 1) * 16].to_vec())
            .collect();
        let mut store = ParamStore::new(5);
        let (f, d) = embed(&c, &mut store, &many, [1, 4, 4], &dev, "images").unwrap();
        assert_eq!((f.len(), d), (600 * 64, 64));
        assert_eq!(f[..64], f[5 * 64..6 * 64]);
        assert_eq!(f[..64], f[595 * 64..596 * 64]);
    }

    #[test]
    fn embedding_mistakes_name_the_criterion() {
        let (samples, train) = images();
        let dev = crate::engine::cpu();
        let run = |mode: u8| {
            let c = handle(mode);
            let crit = vec![("probe".to_string(), c)];
            evaluate(&samples, &[0, 0], &[], &train, [1, 4, 4], &crit, &dev)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(run(0).is_empty(), "{}", run(0));
        let e = run(1);
        assert!(
            e.contains("criterion `probe` (plugin test-plugin)") && e.contains("[N, D]"),
            "{e}"
        );
        let e = run(2);
        assert!(
            e.contains("criterion `probe`") && e.contains("reshape"),
            "{e}"
        );
        let e = run(3);
        assert!(e.contains("criterion `probe`") && e.contains("boom"), "{e}");
        let e = run(9);
        assert!(
            e.contains("criterion `probe`") && e.contains("does not know"),
            "{e}"
        );
    }
}
