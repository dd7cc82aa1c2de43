//! Which labels to generate with: the `sample` / `sample_class` parameters every labelled
//! scheme shares.

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

/// Parameter docs of the sampling choice.
pub const PARAMS: &[Param] = &[
    param(
        "sample",
        "\"uniform\" | \"class\"",
        "(\"uniform\", or \"class\" when sample_class is set)",
        "labels to generate with: uniform over the classes (seeded), or only `sample_class`",
    ),
    param(
        "sample_class",
        "int",
        "(unset)",
        "the one label to generate with (implies sample = \"class\")",
    ),
];

/// The `sample` parameter.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum SampleMode {
    /// Uniform over all classes.
    Uniform,
    /// One class only.
    Class,
}

/// Which labels `sample_labels` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Each label uniform in `0..classes`, independently per sample position, from the seed.
    Uniform,
    /// Every label is this class.
    Class(u64),
}

/// Salt separating sampling streams from the training-label streams of the same seed.
const SAMPLE_SALT: u64 = 0x5A3F_1E0B_C8D2_7A61;

impl Sample {
    /// Resolves `sample` and `sample_class`: `sample_class` alone means `"class"`, and
    /// `sample = "class"` needs `sample_class`.
    pub fn new(mode: Option<SampleMode>, class: Option<u64>) -> PResult<Sample> {
        match (mode, class) {
            (None | Some(SampleMode::Uniform), None) => Ok(Sample::Uniform),
            (None | Some(SampleMode::Class), Some(k)) => Ok(Sample::Class(k)),
            (Some(SampleMode::Uniform), Some(_)) => {
                Err("sample_class is set but sample = \"uniform\"; drop one of them".into())
            }
            (Some(SampleMode::Class), None) => {
                Err("sample = \"class\" needs sample_class = <label>".into())
            }
        }
    }

    /// Fills `out` with labels among `classes` (`what` names them in errors): a fixed class
    /// must be below `classes`; uniform labels come from `SplitMix64::for_index(seed', i)` for
    /// sample position `i`, so a prefix of `out` does not depend on its length.
    pub fn fill(&self, classes: u64, what: &str, seed: u64, out: &mut [i64]) -> PResult<()> {
        if classes == 0 {
            return Err(format!("no {what} to sample labels from"));
        }
        match *self {
            Sample::Class(k) => {
                if k >= classes {
                    return Err(format!(
                        "sample_class = {k} is out of range: there are {classes} {what} (0..{classes})"
                    ));
                }
                out.fill(k as i64);
            }
            Sample::Uniform => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = SplitMix64::for_index(seed ^ SAMPLE_SALT, i as u64).below(classes) as i64;
                }
            }
        }
        Ok(())
    }
}

/// Checks that the label buffers of `train_labels` have one entry per sample.
pub fn check_lengths(dataset_labels: &[i64], ids: &[u64], out: &[i64]) -> PResult<()> {
    if dataset_labels.len() != out.len() || ids.len() != out.len() {
        return Err(format!(
            "train_labels got {} dataset labels and {} ids for {} outputs",
            dataset_labels.len(),
            ids.len(),
            out.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_and_class_resolve() {
        assert_eq!(Sample::new(None, None).unwrap(), Sample::Uniform);
        assert_eq!(Sample::new(None, Some(3)).unwrap(), Sample::Class(3));
        assert_eq!(
            Sample::new(Some(SampleMode::Class), Some(0)).unwrap(),
            Sample::Class(0)
        );
        assert!(Sample::new(Some(SampleMode::Uniform), Some(1)).is_err());
        assert!(Sample::new(Some(SampleMode::Class), None).is_err());
    }

    #[test]
    fn uniform_labels_are_uniform_and_seeded() {
        let mut a = vec![0i64; 50_000];
        Sample::Uniform.fill(5, "classes", 7, &mut a).unwrap();
        let mut counts = [0usize; 5];
        for &l in &a {
            counts[l as usize] += 1;
        }
        // Expected 10 000 each, standard deviation ≈ 89.
        assert!(
            counts.iter().all(|&c| c.abs_diff(10_000) < 500),
            "{counts:?}"
        );
        // Same seed: same labels, and a shorter request is a prefix.
        let mut b = vec![0i64; 100];
        Sample::Uniform.fill(5, "classes", 7, &mut b).unwrap();
        assert_eq!(&a[..100], &b[..]);
        // Another seed: different labels.
        Sample::Uniform.fill(5, "classes", 8, &mut b).unwrap();
        let same = a[..100].iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 40, "{same}");
    }

    #[test]
    fn fixed_class_is_checked() {
        let mut out = [9i64; 4];
        Sample::Class(2).fill(3, "classes", 0, &mut out).unwrap();
        assert_eq!(out, [2; 4]);
        let e = Sample::Class(3)
            .fill(3, "classes", 0, &mut out)
            .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(Sample::Uniform.fill(0, "classes", 0, &mut out).is_err());
    }
}
