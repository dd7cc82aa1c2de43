//! The training set in host memory: drawn from a dataset component, subset, labelled by the
//! conditioning scheme, and served in seeded batches.

use anyhow::{Result, bail};
use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::ffi::DataSummary;

use crate::plugins::{ConditioningHandle, DatasetHandle};

/// Random-stream purposes, so every random quantity of a run has its own stream.
pub mod stream {
    /// Subset selection.
    pub const SUBSET: u64 = 1;
    /// Data order.
    pub const ORDER: u64 = 2;
    /// Training noise and σ.
    pub const NOISE: u64 = 3;
    /// Dropout masks.
    pub const DROPOUT: u64 = 4;
    /// Sampling.
    pub const SAMPLE: u64 = 5;
    /// Parameter initialisation.
    pub const INIT: u64 = 6;
    /// Conditioning labels.
    pub const LABELS: u64 = 7;
}

/// A seed for `(seed, purpose)`: independent streams per purpose.
pub fn derive_seed(seed: u64, purpose: u64) -> u64 {
    SplitMix64::for_index(seed, purpose).next_u64()
}

/// Images, dataset labels and conditioning labels of the training set.
pub struct TrainingSet {
    /// `[n, c, h, w]` row-major, values in [−1, 1].
    pub images: Vec<f32>,
    /// Dataset class of each image.
    pub labels: Vec<i64>,
    /// Label the model is conditioned on (conditioning scheme), per image.
    pub cond_labels: Vec<i64>,
    /// Dataset indices the images came from.
    pub indices: Vec<u64>,
    /// Image shape `[c, h, w]`.
    pub shape: [usize; 3],
    /// Dataset class names.
    pub class_names: Vec<String>,
    /// Classes the model is conditioned on (0 = unconditional).
    pub cond_classes: u32,
}

impl TrainingSet {
    /// Loads `size` images (all when `None`) from `dataset`: a seeded random subset, in
    /// ascending index order, then labels them with `cond`.
    pub fn load(
        dataset: &mut DatasetHandle,
        size: Option<u64>,
        seed: u64,
        cond: &ConditioningHandle,
    ) -> Result<TrainingSet> {
        let info = dataset.info()?;
        let n = size.unwrap_or(info.len);
        if n > info.len {
            bail!(
                "{}: asked for {n} images but the dataset holds {}",
                dataset.label(),
                info.len
            );
        }
        let mut indices: Vec<u64> = if n == info.len {
            (0..n).collect()
        } else {
            // Partial Fisher–Yates over the index range.
            let mut g = SplitMix64(derive_seed(seed, stream::SUBSET));
            let mut all: Vec<u64> = (0..info.len).collect();
            for i in 0..n as usize {
                let j = i + g.below(info.len - i as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(n as usize);
            all
        };
        indices.sort_unstable();
        let mut images = Vec::with_capacity(n as usize * info.channels * info.height * info.width);
        let mut labels = Vec::with_capacity(n as usize);
        for chunk in indices.chunks(256) {
            let (im, lb) = dataset.fill(chunk)?;
            images.extend_from_slice(&im);
            labels.extend_from_slice(&lb);
        }
        let class_names: Vec<String> = if info.class_names.is_empty() {
            vec!["0".to_string()]
        } else {
            info.class_names.iter().map(|s| s.to_string()).collect()
        };
        let summary = DataSummary {
            len: n,
            classes: class_names.len() as u32,
        };
        let ids: Vec<u64> = (0..n).collect();
        let cond_labels = cond.train_labels(summary, &labels, &ids)?;
        let cond_classes = cond.classes(summary)?;
        Ok(TrainingSet {
            images,
            labels,
            cond_labels,
            indices,
            shape: [info.channels, info.height, info.width],
            class_names,
            cond_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// What the conditioning scheme sees.
    pub fn summary(&self) -> DataSummary {
        DataSummary {
            len: self.len() as u64,
            classes: self.class_names.len() as u32,
        }
    }

    /// Training-set positions of the images in optimisation step `step` (0-based) with
    /// `batch` images per step: epochs are seeded permutations, so the order depends only on
    /// (seed, step) and a resumed run sees the same batches.
    pub fn batch_ids(&self, seed: u64, step: u64, batch: usize) -> Vec<usize> {
        let n = self.len();
        let mut out = Vec::with_capacity(batch);
        let mut pos = step as usize * batch;
        while out.len() < batch {
            let epoch = pos / n;
            let perm = permutation(
                n,
                derive_seed(seed, stream::ORDER)
                    ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let start = pos % n;
            let take = (batch - out.len()).min(n - start);
            out.extend_from_slice(&perm[start..start + take]);
            pos += take;
        }
        out
    }

    /// Copies images `ids` into one NCHW buffer.
    pub fn gather(&self, ids: &[usize]) -> Vec<f32> {
        let per = self.image_len();
        let mut out = Vec::with_capacity(ids.len() * per);
        for &i in ids {
            out.extend_from_slice(&self.images[i * per..(i + 1) * per]);
        }
        out
    }
}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut g = SplitMix64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = g.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(100, 3);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
        assert_ne!(permutation(100, 3), permutation(100, 4));
    }
}
