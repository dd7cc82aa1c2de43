//! Replication evaluation: nearest training images of every sample, each criterion's flags,
//! and the numbers papers report (memorization ratio, mean d₁, distinct training images
//! replicated, per class).

pub mod bound;
pub mod exact;
pub mod features;
pub mod knn;

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use burn::tensor::Device;
use memlab_plugin_api::ffi::{Distance, Needs};
use serde::{Deserialize, Serialize};

use crate::engine::params::ParamStore;
use crate::eval::knn::{Neighbours, knn};
use crate::plugins::CriterionHandle;

/// Results of one criterion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriterionResult {
    /// Criterion label (`criterion `ratio` (plugin …)`) and config name.
    pub name: String,
    /// Fraction of samples flagged as replicates.
    pub ratio: f64,
    /// Number flagged.
    pub replicates: usize,
    /// Distinct training images replicated at least once.
    pub distinct_replicated: usize,
    /// `distinct_replicated / training images`.
    pub distinct_fraction: f64,
    /// Per sample-label class: (samples, ratio).
    pub per_class: BTreeMap<String, ClassResult>,
    /// Per-sample flags.
    #[serde(skip)]
    pub flags: Vec<bool>,
    /// Per-sample scores.
    #[serde(skip)]
    pub scores: Vec<f32>,
}

/// One class's share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassResult {
    /// Samples generated for the class.
    pub samples: usize,
    /// Fraction of them flagged.
    pub ratio: f64,
}

/// Whole evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// Training images searched.
    pub training_images: usize,
    /// Mean L2 distance to the nearest training image ([−1, 1] pixel scale).
    pub mean_nn_l2: f64,
    /// Mean of d₁/√(C·H·W)·127.5, DM's "KNN distance" on the uint8 scale per pixel.
    pub mean_nn_l2_per_pixel_u8: f64,
    /// Each criterion.
    pub criteria: Vec<CriterionResult>,
    /// Held-out generalization baseline (when `dataset.heldout` > 0).
    pub heldout: Option<HeldoutBaseline>,
    /// Rule validity of samples (synthetic datasets at native resolution).
    pub validity: Option<Validity>,
    /// Nearest training image of every sample (L2).
    #[serde(skip)]
    pub nearest: Vec<u32>,
}

/// Screens images about to be judged (`per` values each, expected in [−1, 1] like the
/// training images `train`): non-finite values and values outside [−1, 1] are refused (the
/// error says where and how to convert); all-non-negative images beside training images that
/// reach −1 are a warning (likely [0, 1] images). Returns the warnings.
pub fn screen_samples(samples: &[f32], per: usize, train: &[f32]) -> Result<Vec<String>, String> {
    let bad = samples.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        let first = samples.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(format!(
            "{bad} non-finite value(s) (NaN or ±inf), the first in image {} of {}: a sampler \
             that diverged? Non-finite images cannot be judged",
            first / per.max(1),
            samples.len() / per.max(1)
        ));
    }
    let (lo, hi) = min_max(samples);
    // Tolerance for images written at lower precision and rounded, e.g. float16 → float32.
    const TOL: f32 = 1e-3;
    if lo < -1.0 - TOL || hi > 1.0 + TOL {
        let hint = if lo >= 0.0 && hi <= 255.0 {
            " — these look like [0, 255] images: convert with x / 127.5 − 1"
        } else {
            ""
        };
        return Err(format!(
            "values span [{lo}, {hi}], outside [−1, 1], the range memlab's images (and \
             distances) use{hint}"
        ));
    }
    let mut warnings = Vec::new();
    let (train_lo, _) = min_max(train);
    if lo >= 0.0 && train_lo < -0.5 {
        warnings.push(format!(
            "every sample value is ≥ 0 while the training images reach {train_lo:.2}: if these \
             are [0, 1] images, convert with 2x − 1 (distances, and so ratios, depend on it)"
        ));
    }
    Ok(warnings)
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Samples judged per call of a criterion that asks for images or features, at most: flags
/// and scores are per-sample functions, so chunks only bound the memory of the neighbour
/// images handed over (also capped at [`CHUNK_VALUES`] values).
pub const CHUNK: usize = 256;
/// Most neighbour-image values handed to a criterion in one call (64 Mi values, 256 MiB).
pub const CHUNK_VALUES: usize = 1 << 26;

/// Evaluates `samples` (`m` images of `shape` = `[C, H, W]`) against `train` with every
/// criterion; `labels` gives each sample's class for per-class results. Non-finite samples
/// are refused.
///
/// Distances-only criteria share one exact k-NN search per distance. A criterion asking for
/// features gets its own: its embedding network runs over the samples and the training
/// images, and the k nearest are searched exactly in feature space. A criterion asking for
/// images is judged in chunks of samples, each with its neighbours' pixels.
pub fn evaluate(
    samples: &[f32],
    sample_labels: &[i64],
    class_names: &[String],
    train: &[f32],
    shape: [usize; 3],
    criteria: &[(String, CriterionHandle)],
    device: &Device,
) -> Result<Evaluation> {
    let dim: usize = shape.iter().product();
    if dim == 0 {
        anyhow::bail!("images of shape {shape:?} hold no values");
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "image {} of the samples holds a non-finite value: it cannot be judged",
            i / dim.max(1)
        );
    }
    let m = samples.len() / dim;
    let n = train.len() / dim;
    // Every criterion's declarations, read once (errors name the criterion).
    let mut decl = Vec::with_capacity(criteria.len());
    for (_, c) in criteria {
        decl.push((c.info()?, c.needs()?));
    }
    // One pixel-space search per distance, with the most neighbours any criterion needs (at
    // least 1).
    let mut need: BTreeMap<u8, (Distance, usize)> = BTreeMap::new();
    need.insert(Distance::L2 as u8, (Distance::L2, 1));
    for (i, cn) in &decl {
        if cn.needs.contains(Needs::FEATURES) {
            continue;
        }
        let e = need.entry(i.distance as u8).or_insert((i.distance, 0));
        e.1 = e.1.max(i.neighbours).min(n);
    }
    let mut found: BTreeMap<u8, Neighbours> = BTreeMap::new();
    for (key, (d, k)) in &need {
        log::info!("k-NN: {m} samples × {n} training images, {d:?}, k = {k}");
        let t = std::time::Instant::now();
        found.insert(*key, knn(samples, train, &shape, *k, *d, device)?);
        log::info!("k-NN ({d:?}) took {:.2} s", t.elapsed().as_secs_f64());
    }
    let l2 = &found[&(Distance::L2 as u8)];
    let mean_nn: f64 = (0..m).map(|i| l2.row(i)[0] as f64).sum::<f64>() / m.max(1) as f64;
    let nearest: Vec<u32> = (0..m).map(|i| l2.idx[i * l2.k]).collect();
    let mut results = Vec::new();
    for ((name, c), (info, cn)) in criteria.iter().zip(&decl) {
        let k = info.neighbours.min(n);
        let own;
        let nb = if cn.needs.contains(Needs::FEATURES) {
            let images = Images {
                samples,
                train,
                shape,
            };
            own = feature_neighbours(c, cn.embedding_seed, images, k, info.distance, device)?;
            &own
        } else {
            &found[&(info.distance as u8)]
        };
        let (flags, scores) = if cn.needs == Needs::DISTANCES {
            let mut d = Vec::with_capacity(m * k);
            for i in 0..m {
                d.extend_from_slice(&nb.row(i)[..k]);
            }
            c.judge(&d, k)?
        } else {
            judge_in_chunks(c, cn.needs, nb, k, samples, train, shape)?
        };
        let reps = flags.iter().filter(|f| **f).count();
        let distinct: HashSet<u32> = flags
            .iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .map(|(i, _)| nb.idx[i * nb.k])
            .collect();
        let mut per_class = BTreeMap::new();
        for (ci, cname) in class_names.iter().enumerate() {
            let idx: Vec<usize> = (0..m)
                .filter(|&i| sample_labels.get(i) == Some(&(ci as i64)))
                .collect();
            if idx.is_empty() {
                continue;
            }
            let r = idx.iter().filter(|&&i| flags[i]).count();
            per_class.insert(
                cname.clone(),
                ClassResult {
                    samples: idx.len(),
                    ratio: r as f64 / idx.len() as f64,
                },
            );
        }
        results.push(CriterionResult {
            name: name.clone(),
            ratio: reps as f64 / m.max(1) as f64,
            replicates: reps,
            distinct_replicated: distinct.len(),
            distinct_fraction: distinct.len() as f64 / n.max(1) as f64,
            per_class,
            flags,
            scores,
        });
    }
    Ok(Evaluation {
        samples: m,
        training_images: n,
        mean_nn_l2: mean_nn,
        mean_nn_l2_per_pixel_u8: mean_nn / (dim as f64).sqrt() * 127.5,
        criteria: results,
        heldout: None,
        validity: None,
        nearest,
    })
}

/// The images of one evaluation: samples and training images, NCHW of `shape` = `[C, H, W]`.
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    /// The samples judged.
    pub samples: &'a [f32],
    /// The training images searched.
    pub train: &'a [f32],
    /// `[C, H, W]`.
    pub shape: [usize; 3],
}

/// The exact k nearest training images of every sample in the feature space of `c`'s
/// embedding network (parameters from `seed`), with the criterion's distance.
pub fn feature_neighbours(
    c: &CriterionHandle,
    seed: u64,
    images: Images<'_>,
    k: usize,
    distance: Distance,
    device: &Device,
) -> Result<Neighbours> {
    let Images {
        samples,
        train,
        shape,
    } = images;
    let t = std::time::Instant::now();
    let mut store = ParamStore::new(seed);
    if let Some(path) = c.embedding_weights()? {
        // Create the parameters (one blank image), then overwrite them by name.
        let blank = vec![0f32; shape.iter().product()];
        features::embed(c, &mut store, &blank, shape, device, "one blank image")?;
        crate::diffusion::weights::load_into(&mut store, &path, device)
            .map_err(|e| anyhow::anyhow!("{}: embedding weights: {e:#}", c.label()))?;
        log::info!("{}: embedding weights from {}", c.label(), path.display());
    }
    let (fs, d) = features::embed(c, &mut store, samples, shape, device, "samples")?;
    let (ft, d2) = features::embed(c, &mut store, train, shape, device, "training images")?;
    if d != d2 {
        anyhow::bail!(
            "{}: the embedding network returned {d} features per sample but {d2} per training image",
            c.label()
        );
    }
    log::info!(
        "{}: embedded {} samples and {} training images into {d} features ({} parameters) in {:.2} s",
        c.label(),
        samples.len() / shape.iter().product::<usize>(),
        train.len() / shape.iter().product::<usize>(),
        store.num_scalars(),
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    let nb = knn(&fs, &ft, &[d], k, distance, device)?;
    log::info!(
        "{}: feature-space k-NN ({distance:?}, k = {k}) took {:.2} s",
        c.label(),
        t.elapsed().as_secs_f64()
    );
    Ok(nb)
}

/// Judges every sample with [`CriterionHandle::judge_with`], in chunks of at most [`CHUNK`]
/// samples (and [`CHUNK_VALUES`] neighbour-image values), gathering the neighbours' images
/// when the criterion asks for them.
fn judge_in_chunks(
    c: &CriterionHandle,
    needs: Needs,
    nb: &Neighbours,
    k: usize,
    samples: &[f32],
    train: &[f32],
    shape: [usize; 3],
) -> Result<(Vec<bool>, Vec<f32>)> {
    let dim: usize = shape.iter().product();
    let m = samples.len() / dim;
    let images = needs.contains(Needs::IMAGES);
    let chunk = if images {
        (CHUNK_VALUES / (k * dim).max(1)).clamp(1, CHUNK)
    } else {
        CHUNK
    };
    let (mut flags, mut scores) = (Vec::with_capacity(m), Vec::with_capacity(m));
    let mut gathered: Vec<f32> = Vec::new();
    let mut start = 0;
    while start < m {
        let end = (start + chunk).min(m);
        let mut d = Vec::with_capacity((end - start) * k);
        let mut ids = Vec::with_capacity((end - start) * k);
        for i in start..end {
            d.extend_from_slice(&nb.row(i)[..k]);
            ids.extend(nb.idx[i * nb.k..i * nb.k + k].iter().map(|&j| j as u64));
        }
        let (s, nimg) = if images {
            gathered.clear();
            for &j in &ids {
                let j = j as usize;
                gathered.extend_from_slice(&train[j * dim..(j + 1) * dim]);
            }
            (&samples[start * dim..end * dim], gathered.as_slice())
        } else {
            (&[][..], &[][..])
        };
        let (f, sc) = c.judge_with(&d, k, &ids, shape, s, nimg)?;
        flags.extend(f);
        scores.extend(sc);
        start = end;
    }
    Ok((flags, scores))
}

/// Generalization baseline: held-out images of the training distribution, treated like
/// samples. A criterion that flags held-out images is flagging generalization, not copying.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldoutBaseline {
    /// Held-out images.
    pub images: usize,
    /// Mean L2 distance from a held-out image to its nearest training image.
    pub mean_nn_l2_to_train: f64,
    /// Each criterion's ratio on held-out images (its false-positive rate).
    pub criteria_ratio: Vec<(String, f64)>,
    /// Mean L2 distance from a generated sample to its nearest held-out image.
    pub mean_sample_nn_l2_to_heldout: f64,
}

/// Rule-validity of samples and training images (synthetic datasets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validity {
    /// Mean score of the samples.
    pub samples_mean: f64,
    /// Fraction of samples scoring above 0.5.
    pub samples_valid_fraction: f64,
    /// Mean score of the training images (the ceiling).
    pub training_mean: f64,
    /// Per class: mean sample score.
    pub per_class: BTreeMap<String, f64>,
}

/// Computes the held-out baseline.
pub fn heldout_baseline(
    heldout: &[f32],
    train: &[f32],
    samples: &[f32],
    shape: [usize; 3],
    criteria: &[(String, CriterionHandle)],
    device: &Device,
) -> Result<HeldoutBaseline> {
    let dim: usize = shape.iter().product();
    let zeros = vec![0i64; heldout.len() / dim];
    let ev = evaluate(heldout, &zeros, &[], train, shape, criteria, device)?;
    let to_heldout = knn(samples, heldout, &shape, 1, Distance::L2, device)?;
    let m = to_heldout.dist.len().max(1);
    Ok(HeldoutBaseline {
        images: ev.samples,
        mean_nn_l2_to_train: ev.mean_nn_l2,
        criteria_ratio: ev
            .criteria
            .iter()
            .map(|c| (c.name.clone(), c.ratio))
            .collect(),
        mean_sample_nn_l2_to_heldout: to_heldout.dist.iter().map(|&d| d as f64).sum::<f64>()
            / m as f64,
    })
}

/// Summarises validity scores.
pub fn validity_summary(
    samples: &[f32],
    labels: &[i64],
    training: &[f32],
    class_names: &[String],
) -> Validity {
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let mut per_class = BTreeMap::new();
    for (ci, name) in class_names.iter().enumerate() {
        let s: Vec<f32> = samples
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l == ci as i64)
            .map(|(s, _)| *s)
            .collect();
        if !s.is_empty() {
            per_class.insert(name.clone(), mean(&s));
        }
    }
    Validity {
        samples_mean: mean(samples),
        samples_valid_fraction: samples.iter().filter(|&&s| s > 0.5).count() as f64
            / samples.len().max(1) as f64,
        training_mean: mean(training),
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::screen_samples;

    #[test]
    fn screening_refuses_non_finite_and_out_of_range_and_warns_on_unit_range() {
        let train = [-1.0f32, 0.0, 1.0, 0.5];
        assert_eq!(
            screen_samples(&[-1.0, 0.3, 1.0, 0.0], 2, &train),
            Ok(vec![])
        );
        let e = screen_samples(&[0.0, 0.1, f32::NAN, 0.2], 2, &train).unwrap_err();
        assert!(
            e.contains("1 non-finite") && e.contains("image 1 of 2"),
            "{e}"
        );
        let e = screen_samples(&[0.0, 12.0, 255.0, 3.0], 2, &train).unwrap_err();
        assert!(e.contains("[0, 255]"), "{e}");
        let e = screen_samples(&[-3.0, 0.0], 2, &train).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let w = screen_samples(&[0.0, 0.2, 1.0, 0.9], 2, &train).unwrap();
        assert!(w.len() == 1 && w[0].contains("[0, 1]"), "{w:?}");
        // Training images that are themselves non-negative: no suspicion.
        assert_eq!(screen_samples(&[0.0, 0.2], 2, &[0.0, 1.0]), Ok(vec![]));
    }
}
