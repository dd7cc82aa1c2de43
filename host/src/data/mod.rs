//! The training set in host memory: drawn from a dataset component, subset, labelled by the
//! conditioning scheme, and served in seeded batches.

pub mod fetch;
pub mod import;

use std::collections::HashMap;

use anyhow::{Result, bail};
use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::ffi::DataSummary;

use crate::config::{DatasetSection, SubsetMode};
use crate::io::alloc;
use crate::plugins::{ConditioningHandle, DatasetHandle, Registry};

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
    /// Held-out selection.
    pub const HELDOUT: u64 = 8;
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
            choose_range(info.len, n as usize, derive_seed(seed, stream::SUBSET))?
        };
        indices.sort_unstable();
        let per = info.channels * info.height * info.width;
        let what = || format!("{}: {n} training images", dataset.label());
        let mut images = alloc::try_with_capacity(alloc::mul(n as usize, per, what)?, what)?;
        let mut labels = alloc::try_with_capacity(n as usize, what)?;
        for chunk in indices.chunks(alloc::fill_chunk(per)) {
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

    /// Names of the labels samples are generated with (per-class results): the dataset's class
    /// names when the conditioning passes the true labels through, `label k` for other labellings
    /// (random labels are not the dataset's classes), none beyond 10 labels (per-label results
    /// of unique or many random labels would only be noise).
    pub fn sample_class_names(&self) -> Vec<String> {
        let k = self.cond_classes as usize;
        if k == self.class_names.len() && self.cond_labels == self.labels {
            self.class_names.clone()
        } else if k <= 10 {
            (0..k).map(|i| format!("label {i}")).collect()
        } else {
            Vec::new()
        }
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

/// The first `k` of a seeded shuffle (partial Fisher–Yates) of the virtual pool
/// `at(0), …, at(n − 1)`, in O(k) time and memory: only displaced positions are stored, so
/// drawing 8 images of a dataset of 10¹² allocates 8 entries, not 10¹². Draws exactly what a
/// Fisher–Yates over the materialised pool draws (same random calls, same swaps).
fn choose_virtual(n: u64, k: usize, seed: u64, at: impl Fn(u64) -> u64) -> Result<Vec<u64>> {
    let mut g = SplitMix64(seed);
    let k = (k as u64).min(n);
    let mut out = alloc::try_with_capacity(k as usize, || format!("a subset of {k} images"))?;
    // Position → value, for positions whose value is no longer `at(position)`.
    let mut moved: HashMap<u64, u64> = HashMap::new();
    for i in 0..k {
        let j = i + g.below(n - i);
        let vi = moved.remove(&i).unwrap_or_else(|| at(i));
        let vj = if j == i {
            vi
        } else {
            moved.get(&j).copied().unwrap_or_else(|| at(j))
        };
        // Swap: position i (never visited again) holds vj, position j holds vi.
        if j != i {
            moved.insert(j, vi);
        }
        out.push(vj);
    }
    Ok(out)
}

/// The first `k` of a seeded shuffle of `0..n` (see [`choose_virtual`]).
fn choose_range(n: u64, k: usize, seed: u64) -> Result<Vec<u64>> {
    choose_virtual(n, k, seed, |i| i)
}

/// The `j`-th (0-based) integer of `0..` not in `taken` (sorted, distinct), in O(log |taken|).
fn nth_free(taken: &[u64], j: u64) -> u64 {
    // Before taken[q] lie taken[q] − q free integers, nondecreasing in q: the answer is j plus
    // the number of taken integers with taken[q] − q ≤ j.
    let (mut lo, mut hi) = (0usize, taken.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if taken[mid] - mid as u64 <= j {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    j + lo as u64
}

/// Box-average downsampling of NCHW images by an integer `factor` (factor 1 returns the
/// images as they are, without a copy: a training set can be gigabytes).
pub fn downsample(
    images: Vec<f32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    factor: usize,
) -> Vec<f32> {
    if factor == 1 {
        return images;
    }
    let (oh, ow) = (h / factor, w / factor);
    let inv = 1.0 / (factor * factor) as f32;
    let mut out = vec![0f32; n * c * oh * ow];
    for plane in 0..n * c {
        let src = &images[plane * h * w..(plane + 1) * h * w];
        let dst = &mut out[plane * oh * ow..(plane + 1) * oh * ow];
        for y in 0..oh {
            for x in 0..ow {
                let mut acc = 0f32;
                for dy in 0..factor {
                    for dx in 0..factor {
                        acc += src[(y * factor + dy) * w + x * factor + dx];
                    }
                }
                dst[y * ow + x] = acc * inv;
            }
        }
    }
    out
}

/// One dataset component feeding the training set (a mixture has several, one per class).
pub struct Source {
    /// The component.
    pub handle: DatasetHandle,
    /// Native image shape `[c, h, w]`.
    pub native: [usize; 3],
}

/// The training set plus what evaluation needs about where it came from.
pub struct LoadedData {
    /// The training set (at the configured resolution).
    pub train: TrainingSet,
    /// Held-out images of the same distribution (same resolution), when asked for.
    pub heldout: Option<Vec<f32>>,
    /// Sources: one for a single dataset, one per class for a mixture.
    pub sources: Vec<Source>,
    /// Whether classes are mixture parts (class i came from `sources[i]`).
    pub mixture: bool,
}

impl LoadedData {
    /// Rule-validity scores of `images` whose classes are `labels`, when every source involved
    /// scores validity and images are at the sources' native resolution; `None` otherwise.
    pub fn validity(&mut self, images: &[f32], labels: &[i64]) -> Result<Option<Vec<f32>>> {
        let per = self.train.image_len();
        let shape = self.train.shape;
        let mut out = vec![f32::NAN; labels.len()];
        for (si, src) in self.sources.iter_mut().enumerate() {
            if src.native != shape || !src.handle.has_validity() {
                return Ok(None);
            }
            let idx: Vec<usize> = (0..labels.len())
                .filter(|&i| !self.mixture || labels[i] == si as i64)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let mut buf = Vec::with_capacity(idx.len() * per);
            for &i in &idx {
                buf.extend_from_slice(&images[i * per..(i + 1) * per]);
            }
            let scores = src.handle.validity(&buf)?;
            for (k, &i) in idx.iter().enumerate() {
                out[i] = scores[k];
            }
        }
        Ok(Some(out))
    }
}

/// Builds the training set (and held-out set) a `[dataset]` section describes.
pub fn load(
    reg: &Registry,
    section: &DatasetSection,
    seed: u64,
    cond: &ConditioningHandle,
) -> Result<LoadedData> {
    let mut sources = Vec::new();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut all_indices = Vec::new();
    let mut class_names = Vec::new();
    let mut heldout_native = None;
    let mut shape: Option<[usize; 3]> = None;
    let mixture = section.name.is_none();
    let parts: Vec<(String, toml::Table, Option<u64>, Option<String>)> = match &section.name {
        Some(n) => vec![(n.clone(), section.params.clone(), section.size, None)],
        None => section
            .parts
            .iter()
            // A part with size 0 is left out (a sweep over a part's size can include "none").
            .filter(|p| p.size != Some(0))
            .map(|p| (p.name.clone(), p.params.clone(), p.size, p.label.clone()))
            .collect(),
    };
    for (pi, (name, params, size, label)) in parts.into_iter().enumerate() {
        let params_txt = toml::to_string(&params)?;
        let mut h = reg.dataset(
            &name,
            &params_txt,
            seed ^ (pi as u64).wrapping_mul(0x9E37_79B9),
        )?;
        let info = h.info()?;
        let native = [info.channels, info.height, info.width];
        if let Some(s) = shape
            && s[0] != native[0]
        {
            bail!(
                "{}: {} channels, but earlier parts have {}",
                h.label(),
                native[0],
                s[0]
            );
        }
        let n = size.unwrap_or(info.len);
        if n > info.len {
            bail!(
                "{}: asked for {n} images but the dataset holds {}",
                h.label(),
                info.len
            );
        }
        let part_seed = derive_seed(seed, stream::SUBSET) ^ pi as u64;
        let idx: Vec<u64> = match section.subset {
            SubsetMode::Random => {
                let mut v = choose_range(info.len, n as usize, part_seed)?;
                v.sort_unstable();
                v
            }
            SubsetMode::First => (0..n).collect(),
            SubsetMode::PerClass => per_class(&mut h, n, info.class_names.len().max(1))?,
        };
        let per = native.iter().product::<usize>();
        let what = || format!("{}: {} training images", h.label(), idx.len());
        let (mut im, mut lb) = (
            alloc::try_with_capacity(alloc::mul(idx.len(), per, what)?, what)?,
            alloc::try_with_capacity(idx.len(), what)?,
        );
        for chunk in idx.chunks(alloc::fill_chunk(per)) {
            let (a, b) = h.fill(chunk)?;
            im.extend_from_slice(&a);
            lb.extend_from_slice(&b);
        }
        if section.heldout > 0 {
            // The pool is every index outside the training set, in ascending order; it is
            // addressed, not materialised (O(held-out) memory whatever the dataset's length).
            let mut taken = idx.clone();
            taken.sort_unstable();
            taken.dedup();
            let free = info.len - taken.len() as u64;
            if free < section.heldout {
                bail!(
                    "dataset.heldout = {} but only {free} images of {} are outside the training set",
                    section.heldout,
                    h.label()
                );
            }
            let mut hi = choose_virtual(
                free,
                section.heldout as usize,
                derive_seed(seed, stream::HELDOUT),
                |j| nth_free(&taken, j),
            )?;
            hi.sort_unstable();
            let mut buf = Vec::new();
            for chunk in hi.chunks(alloc::fill_chunk(per)) {
                buf.extend_from_slice(&h.fill(chunk)?.0);
            }
            heldout_native = Some(buf);
        }
        if mixture {
            class_names.push(label.unwrap_or_else(|| name.clone()));
            lb.iter_mut().for_each(|l| *l = pi as i64);
        } else {
            class_names = if info.class_names.is_empty() {
                vec!["0".to_string()]
            } else {
                info.class_names.iter().map(|s| s.to_string()).collect()
            };
        }
        shape.get_or_insert(native);
        let target = resize_target(native, section.resolution, h.label())?;
        let f = native[1] / target[1];
        let (c, hh, ww) = (native[0], native[1], native[2]);
        let part = downsample(im, idx.len(), c, hh, ww, f);
        if images.is_empty() {
            images = part;
        } else {
            images.extend_from_slice(&part);
        }
        if let Some(hn) = heldout_native.take() {
            let n = hn.len() / (c * hh * ww);
            heldout_native = Some(downsample(hn, n, c, hh, ww, f));
        }
        if let Some(s) = shape
            && resize_target(s, section.resolution, h.label())? != target
        {
            bail!(
                "{}: images of {:?} do not match the other parts' {:?}",
                h.label(),
                native,
                s
            );
        }
        labels.extend(lb);
        all_indices.extend(idx);
        sources.push(Source { handle: h, native });
    }
    let native = shape.expect("at least one part");
    let label = sources[0].handle.label().to_string();
    let final_shape = resize_target(native, section.resolution, &label)?;
    let summary = DataSummary {
        len: labels.len() as u64,
        classes: class_names.len() as u32,
    };
    let ids: Vec<u64> = (0..labels.len() as u64).collect();
    let cond_labels = cond.train_labels(summary, &labels, &ids)?;
    let cond_classes = cond.classes(summary)?;
    Ok(LoadedData {
        train: TrainingSet {
            images,
            labels,
            cond_labels,
            indices: all_indices,
            shape: final_shape,
            class_names,
            cond_classes,
        },
        heldout: heldout_native,
        sources,
        mixture,
    })
}

fn resize_target(native: [usize; 3], resolution: Option<usize>, label: &str) -> Result<[usize; 3]> {
    match resolution {
        None => Ok(native),
        Some(r) => {
            if native[1] != native[2] || r > native[1] || !native[1].is_multiple_of(r) {
                bail!(
                    "dataset.resolution = {r}: {label} has {}×{} images; the resolution must divide \
                     the side of square images (box-average downsampling)",
                    native[1],
                    native[2]
                );
            }
            Ok([native[0], r, r])
        }
    }
}

/// The first `n / classes` indices of each class in dataset order (the remainder goes to the
/// first classes), as DM draws its subsets.
fn per_class(h: &mut DatasetHandle, n: u64, classes: usize) -> Result<Vec<u64>> {
    let len = h.info()?.len;
    let base = n as usize / classes;
    let mut quota: Vec<usize> = (0..classes)
        .map(|c| base + usize::from(c < n as usize % classes))
        .collect();
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0u64;
    let chunk_len = alloc::fill_chunk(elements_per_image(h)?) as u64;
    while out.len() < n as usize && start < len {
        let end = (start + chunk_len).min(len);
        let chunk: Vec<u64> = (start..end).collect();
        let (_, lb) = h.fill(&chunk)?;
        for (i, l) in chunk.iter().zip(lb) {
            let q = &mut quota[l as usize];
            if *q > 0 {
                *q -= 1;
                out.push(*i);
            }
        }
        start = end;
    }
    if out.len() < n as usize {
        bail!(
            "{}: not enough images per class for a per-class subset of {n}",
            h.label()
        );
    }
    out.sort_unstable();
    Ok(out)
}

/// Values per image of a dataset.
fn elements_per_image(h: &mut DatasetHandle) -> Result<usize> {
    let i = h.info()?;
    Ok(i.channels.saturating_mul(i.height).saturating_mul(i.width))
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

    /// The materialised partial Fisher–Yates the virtual draw must reproduce exactly.
    fn choose_dense(mut pool: Vec<u64>, k: usize, seed: u64) -> Vec<u64> {
        let mut g = SplitMix64(seed);
        let n = pool.len();
        for i in 0..k.min(n) {
            let j = i + g.below((n - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k.min(n));
        pool
    }

    #[test]
    fn virtual_draws_match_the_materialised_shuffle() {
        for (n, k, seed) in [
            (10u64, 10usize, 1u64),
            (100, 7, 2),
            (1000, 999, 3),
            (5, 9, 4),
        ] {
            let dense = choose_dense((0..n).collect(), k, seed);
            assert_eq!(choose_range(n, k, seed).unwrap(), dense, "n={n} k={k}");
        }
        // A pool with holes (the held-out draw) addressed through `nth_free`.
        let taken = vec![0u64, 3, 4, 9, 15];
        let pool: Vec<u64> = (0..20).filter(|i| !taken.contains(i)).collect();
        for (j, &p) in pool.iter().enumerate() {
            assert_eq!(nth_free(&taken, j as u64), p);
        }
        let virt = choose_virtual(pool.len() as u64, 6, 9, |j| nth_free(&taken, j)).unwrap();
        assert_eq!(virt, choose_dense(pool, 6, 9));
    }

    #[test]
    fn drawing_from_a_huge_range_is_o_drawn() {
        let v = choose_range(1_000_000_000_000, 8, 5).unwrap();
        assert_eq!(v.len(), 8);
        assert!(v.iter().all(|&i| i < 1_000_000_000_000));
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(100, 3);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
        assert_ne!(permutation(100, 3), permutation(100, 4));
    }
}
