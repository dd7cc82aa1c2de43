//! `class`: the dataset's true labels.

use memlab_plugin_api::prelude::*;

use crate::sample::{Sample, SampleMode, check_lengths};

/// Conditions on the dataset's own labels; the model sees the dataset's classes.
#[derive(Debug, Clone)]
pub struct TrueClass {
    sample: Sample,
}

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct ClassParams {
    sample: Option<SampleMode>,
    sample_class: Option<u64>,
}

impl TrueClass {
    /// Parses the sampling choice ([`crate::sample::PARAMS`]).
    pub fn from_params(params: &Params, _seed: u64) -> PResult<TrueClass> {
        let p: ClassParams = params.parse()?;
        Ok(TrueClass {
            sample: Sample::new(p.sample, p.sample_class)?,
        })
    }
}

impl Conditioning for TrueClass {
    fn classes(&self, data: DataSummary) -> u32 {
        data.classes
    }

    /// The dataset label itself.
    fn train_labels(
        &self,
        _data: DataSummary,
        dataset_labels: &[i64],
        ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()> {
        check_lengths(dataset_labels, ids, out)?;
        out.copy_from_slice(dataset_labels);
        Ok(())
    }

    fn sample_labels(&self, data: DataSummary, seed: u64, out: &mut [i64]) -> PResult<()> {
        self.sample
            .fill(data.classes as u64, "dataset classes", seed, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: DataSummary = DataSummary { len: 6, classes: 3 };

    fn make(toml: &str) -> PResult<TrueClass> {
        TrueClass::from_params(
            &Params::with_defaults(toml, crate::sample::PARAMS).unwrap(),
            0,
        )
    }

    #[test]
    fn passes_dataset_labels_through() {
        let c = make("").unwrap();
        assert_eq!(c.classes(DATA), 3);
        let mut out = [0i64; 4];
        c.train_labels(DATA, &[2, 0, 1, 2], &[5, 3, 0, 1], &mut out)
            .unwrap();
        assert_eq!(out, [2, 0, 1, 2]);
        assert!(
            c.train_labels(DATA, &[1, 2], &[0, 1, 2, 3], &mut out)
                .is_err()
        );
    }

    #[test]
    fn samples_uniform_or_one_class() {
        let mut out = vec![0i64; 3000];
        make("").unwrap().sample_labels(DATA, 1, &mut out).unwrap();
        for k in 0..3 {
            let n = out.iter().filter(|&&l| l == k).count();
            assert!(n.abs_diff(1000) < 150, "class {k}: {n}");
        }
        make("sample_class = 1")
            .unwrap()
            .sample_labels(DATA, 1, &mut out)
            .unwrap();
        assert!(out.iter().all(|&l| l == 1));
        let c = make("sample = \"class\"\nsample_class = 3").unwrap();
        assert!(c.sample_labels(DATA, 1, &mut out).is_err());
    }

    #[test]
    fn rejects_bad_params() {
        assert!(make("sample = \"balanced\"").is_err());
        assert!(make("sample = \"class\"").is_err());
        assert!(make("sample_class = -1").is_err());
        assert!(make("classes = 3").is_err());
    }
}
