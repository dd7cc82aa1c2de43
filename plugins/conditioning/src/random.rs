//! `random`: each training image gets a random label, fixed by the seed and its index
//! (Gu et al., "On Memorization in Diffusion Models": random C-class labels).

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

use crate::sample::{Sample, SampleMode, check_lengths};

/// Default number of random classes (DM's CIFAR-10 "random labels (10)" setting).
pub const DEFAULT_CLASSES: u32 = 10;

/// Random labels: training image `id` is labelled `SplitMix64::for_index(seed, id).below(C)`,
/// whatever its dataset label, so the labelling is fixed per (seed, id) and independent of
/// batching.
#[derive(Debug, Clone)]
pub struct RandomLabels {
    classes: u32,
    seed: u64,
    sample: Sample,
}

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct RandomParams {
    classes: u32,
    sample: Option<SampleMode>,
    sample_class: Option<u64>,
}

impl RandomLabels {
    /// Parses `classes` (≥ 1) and the sampling choice; `seed` fixes the labelling.
    pub fn from_params(params: &Params, seed: u64) -> PResult<RandomLabels> {
        let p: RandomParams = params.parse()?;
        if p.classes == 0 {
            return Err("classes must be at least 1".into());
        }
        let sample = Sample::new(p.sample, p.sample_class)?;
        if let Sample::Class(k) = sample
            && k >= p.classes as u64
        {
            return Err(format!(
                "sample_class = {k} is out of range for classes = {} (0..{})",
                p.classes, p.classes
            ));
        }
        Ok(RandomLabels {
            classes: p.classes,
            seed,
            sample,
        })
    }

    /// The label of training image `id`.
    pub fn label(&self, id: u64) -> i64 {
        SplitMix64::for_index(self.seed, id).below(self.classes as u64) as i64
    }
}

impl Conditioning for RandomLabels {
    fn classes(&self, _data: DataSummary) -> u32 {
        self.classes
    }

    fn train_labels(
        &self,
        _data: DataSummary,
        dataset_labels: &[i64],
        ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()> {
        check_lengths(dataset_labels, ids, out)?;
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = self.label(id);
        }
        Ok(())
    }

    fn sample_labels(&self, _data: DataSummary, seed: u64, out: &mut [i64]) -> PResult<()> {
        self.sample
            .fill(self.classes as u64, "random classes", seed, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: DataSummary = DataSummary {
        len: 100_000,
        classes: 1,
    };

    fn make(toml: &str, seed: u64) -> PResult<RandomLabels> {
        RandomLabels::from_params(
            &Params::with_defaults(toml, crate::RANDOM_PARAMS).unwrap(),
            seed,
        )
    }

    fn labels(r: &RandomLabels, ids: &[u64]) -> Vec<i64> {
        let mut out = vec![0i64; ids.len()];
        r.train_labels(DATA, &vec![0; ids.len()], ids, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn labels_are_roughly_uniform() {
        let r = make("", 3).unwrap();
        assert_eq!(r.classes(DATA), 10);
        let ids: Vec<u64> = (0..100_000).collect();
        let mut counts = [0usize; 10];
        for l in labels(&r, &ids) {
            counts[l as usize] += 1;
        }
        // Binomial(100 000, 0.1): mean 10 000, standard deviation ≈ 95.
        assert!(
            counts.iter().all(|&c| c.abs_diff(10_000) < 500),
            "{counts:?}"
        );
    }

    #[test]
    fn labels_are_fixed_per_seed_and_id() {
        let r = make("classes = 50", 11).unwrap();
        let a = labels(&r, &[0, 1, 2, 3, 4, 5, 6, 7]);
        // Another order, another batch, another instance: the same label per id.
        let b = labels(&make("classes = 50", 11).unwrap(), &[7, 3, 0]);
        assert_eq!(b, [a[7], a[3], a[0]]);
        // The documented stream: SplitMix64::for_index(seed, id) below C.
        assert_eq!(a[5], SplitMix64::for_index(11, 5).below(50) as i64);
        // Dataset labels are ignored.
        let mut out = [0i64; 2];
        r.train_labels(DATA, &[9, 9], &[0, 1], &mut out).unwrap();
        assert_eq!(out, [a[0], a[1]]);
    }

    #[test]
    fn different_seeds_give_different_labels() {
        let ids: Vec<u64> = (0..1000).collect();
        let a = labels(&make("classes = 10", 1).unwrap(), &ids);
        let b = labels(&make("classes = 10", 2).unwrap(), &ids);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Independent labellings agree on ≈ 1/10 of the images.
        assert!((50..200).contains(&same), "{same}");
    }

    #[test]
    fn sampling_and_params() {
        let mut out = vec![0i64; 2000];
        make("classes = 4", 0)
            .unwrap()
            .sample_labels(DATA, 5, &mut out)
            .unwrap();
        assert!(out.iter().all(|&l| (0..4).contains(&l)));
        assert!((0..4).all(|k| out.contains(&k)));
        make("classes = 4\nsample_class = 3", 0)
            .unwrap()
            .sample_labels(DATA, 5, &mut out)
            .unwrap();
        assert!(out.iter().all(|&l| l == 3));
        assert!(make("classes = 4\nsample_class = 4", 0).is_err());
        assert!(make("classes = 0", 0).is_err());
        assert!(make("class = 4", 0).is_err());
        // One class: every image shares label 0.
        assert_eq!(
            labels(&make("classes = 1", 0).unwrap(), &[0, 1, 2]),
            [0, 0, 0]
        );
    }
}
