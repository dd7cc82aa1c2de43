//! `unique`: every training image is its own class (Gu et al.: unique labels).

use memlab_plugin_api::prelude::*;

use crate::sample::{Sample, SampleMode, check_lengths};

/// Unique labels: training image `id` gets label `id`, so there are as many classes as
/// training images. Sampling draws uniformly over the training images (or one of them).
#[derive(Debug, Clone)]
pub struct UniqueLabels {
    sample: Sample,
}

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct UniqueParams {
    sample: Option<SampleMode>,
    sample_class: Option<u64>,
}

impl UniqueLabels {
    /// Parses the sampling choice ([`crate::sample::PARAMS`]; classes are training images).
    pub fn from_params(params: &Params, _seed: u64) -> PResult<UniqueLabels> {
        let p: UniqueParams = params.parse()?;
        Ok(UniqueLabels {
            sample: Sample::new(p.sample, p.sample_class)?,
        })
    }
}

/// Training images beyond this many cannot each have a `u32` class.
fn check_size(data: DataSummary) -> PResult<()> {
    if data.len > u32::MAX as u64 {
        return Err(format!(
            "unique labels need at most {} training images, got {}",
            u32::MAX,
            data.len
        ));
    }
    Ok(())
}

impl Conditioning for UniqueLabels {
    /// The training-set size (saturating at `u32::MAX`, which `train_labels` then refuses).
    fn classes(&self, data: DataSummary) -> u32 {
        u32::try_from(data.len).unwrap_or(u32::MAX)
    }

    fn train_labels(
        &self,
        data: DataSummary,
        dataset_labels: &[i64],
        ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()> {
        check_size(data)?;
        check_lengths(dataset_labels, ids, out)?;
        for (o, &id) in out.iter_mut().zip(ids) {
            if id >= data.len {
                return Err(format!(
                    "training index {id} is outside the training set (0..{})",
                    data.len
                ));
            }
            *o = id as i64;
        }
        Ok(())
    }

    fn sample_labels(&self, data: DataSummary, seed: u64, out: &mut [i64]) -> PResult<()> {
        check_size(data)?;
        self.sample.fill(data.len, "training images", seed, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: DataSummary = DataSummary { len: 5, classes: 2 };

    fn make(toml: &str) -> PResult<UniqueLabels> {
        UniqueLabels::from_params(
            &Params::with_defaults(toml, crate::sample::PARAMS).unwrap(),
            0,
        )
    }

    #[test]
    fn label_is_the_training_index() {
        let u = make("").unwrap();
        assert_eq!(u.classes(DATA), 5);
        let mut out = [0i64; 3];
        u.train_labels(DATA, &[1, 1, 0], &[4, 0, 2], &mut out)
            .unwrap();
        assert_eq!(out, [4, 0, 2]);
        assert!(u.train_labels(DATA, &[0; 3], &[5, 0, 1], &mut out).is_err());
    }

    #[test]
    fn samples_uniform_over_training_images() {
        let mut out = vec![0i64; 5000];
        make("").unwrap().sample_labels(DATA, 2, &mut out).unwrap();
        for k in 0..5 {
            let n = out.iter().filter(|&&l| l == k).count();
            // Binomial(5000, 0.2): mean 1000, standard deviation ≈ 28.
            assert!(n.abs_diff(1000) < 150, "image {k}: {n}");
        }
        make("sample_class = 4")
            .unwrap()
            .sample_labels(DATA, 2, &mut out)
            .unwrap();
        assert!(out.iter().all(|&l| l == 4));
        let u = make("sample_class = 5").unwrap();
        assert!(u.sample_labels(DATA, 2, &mut out).is_err());
    }

    #[test]
    fn huge_training_sets_are_refused() {
        let u = make("").unwrap();
        let big = DataSummary {
            len: 1 << 33,
            classes: 1,
        };
        assert_eq!(u.classes(big), u32::MAX);
        let mut out = [0i64; 1];
        assert!(u.train_labels(big, &[0], &[0], &mut out).is_err());
        assert!(make("sample = \"any\"").is_err());
    }
}
