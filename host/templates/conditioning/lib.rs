//! `{{name}}`: a memlab conditioning plugin (scaffolded by `memlab new conditioning`).
//!
//! A conditioning scheme decides which class label each training image carries and which
//! labels the model is asked to generate; the architecture embeds the labels. This one gives
//! training image `i` (its index in the training set) the label `i mod classes`, and samples
//! labels uniformly from the run's sampling seed.

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[param("classes", "int", "4", "number of label classes")];

params! {
    /// The scheme's parameters: the config's `[conditioning] params` table.
    #[derive(Debug)]
    struct Modulo {
        /// Number of classes the model sees.
        classes: u32,
    }
}

impl Modulo {
    /// Parses and checks the parameters.
    fn from_params(params: &Params, _seed: u64) -> PResult<Modulo> {
        let m: Modulo = params.parse()?;
        if m.classes == 0 {
            return Err("classes must be at least 1".into());
        }
        Ok(m)
    }
}

impl Conditioning for Modulo {
    /// 0 would mean unconditional: the architecture then gets no labels.
    fn classes(&self, _data: DataSummary) -> u32 {
        self.classes
    }

    /// `ids` are training-set indices, stable across batches and resumes: a label that depends
    /// only on them (and the seed) stays the same for the whole run.
    fn train_labels(
        &self,
        _data: DataSummary,
        _dataset_labels: &[i64],
        ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()> {
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = (id % self.classes as u64) as i64;
        }
        Ok(())
    }

    /// Label of sample `i` from the stream `(seed, i)`: the same seed gives the same labels.
    fn sample_labels(&self, _data: DataSummary, seed: u64, out: &mut [i64]) -> PResult<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = SplitMix64::for_index(seed, i as u64).below(self.classes as u64) as i64;
        }
        Ok(())
    }
}

fn register(p: &mut Plugin) {
    p.conditioning(
        "{{name}}",
        "Label i mod C for training image i; samples uniform over the C classes",
        PARAMS,
        Modulo::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: DataSummary = DataSummary {
        len: 10,
        classes: 1,
    };

    #[test]
    fn labels_follow_the_index_and_the_seed() {
        let m =
            Modulo::from_params(&Params::with_defaults("classes = 3", PARAMS).unwrap(), 0).unwrap();
        assert_eq!(m.classes(DATA), 3);
        let mut out = [0i64; 4];
        m.train_labels(DATA, &[0; 4], &[0, 1, 5, 9], &mut out)
            .unwrap();
        assert_eq!(out, [0, 1, 2, 0]);
        let (mut a, mut b) = ([0i64; 32], [0i64; 32]);
        m.sample_labels(DATA, 7, &mut a).unwrap();
        m.sample_labels(DATA, 7, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|&l| (0..3).contains(&l)));
    }

    #[test]
    fn zero_classes_is_refused() {
        let e = Modulo::from_params(&Params::with_defaults("classes = 0", PARAMS).unwrap(), 0);
        assert!(e.is_err());
    }
}
