//! `ratio`: d₁/d₂ < threshold (Yoon et al.; Gu et al.; after Carlini et al.), default 1/3.

use memlab_plugin_api::prelude::*;

/// The ratio criterion: a sample replicates its nearest training image when that image is
/// much closer than the second nearest, d₁/d₂ < threshold. Score: d₁/d₂.
pub struct Ratio {
    threshold: f64,
}

/// Parameters of `ratio`.
pub const PARAMS: &[Param] = &[param(
    "threshold",
    "float",
    "0.3333333333333333",
    "largest d1/d2 counted as a replicate (exclusive); the default is exactly 1/3 (this decimal is the nearest f64)",
)];

#[derive(Deserialize)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct RatioParams {
    threshold: f64,
}

impl Ratio {
    /// Parses `threshold` in (0, 1] (default exactly 1/3).
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Ratio> {
        let p: RatioParams = params.parse()?;
        if !(p.threshold > 0.0 && p.threshold <= 1.0) {
            return Err(format!("threshold must be in (0, 1], got {}", p.threshold));
        }
        Ok(Ratio {
            threshold: p.threshold,
        })
    }
}

/// d₁/d₂, with 0/0 (two exact duplicates in the training set) counted as 1: such a sample is
/// equally close to two images and replicates neither uniquely.
pub fn ratio(d1: f32, d2: f32) -> f32 {
    if d2 > 0.0 { d1 / d2 } else { 1.0 }
}

impl Criterion for Ratio {
    fn distance(&self) -> Distance {
        Distance::L2
    }
    fn neighbours(&self) -> usize {
        2
    }
    fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        for (i, (f, s)) in flags.iter_mut().zip(scores.iter_mut()).enumerate() {
            let r = ratio(d[2 * i], d[2 * i + 1]);
            *s = r;
            *f = (r as f64) < self.threshold;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_ratio() {
        let r = Ratio::from_params(&Params::with_defaults("", PARAMS).unwrap(), 0).unwrap();
        let d = [1.0, 4.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0];
        let (mut f, mut s) = ([false; 4], [0f32; 4]);
        r.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [true, false, false, true]);
        assert_eq!(s, [0.25, 0.5, 1.0, 0.0]);
    }

    #[test]
    fn the_documented_default_is_exactly_one_third() {
        let r = Ratio::from_params(&Params::with_defaults("", PARAMS).unwrap(), 0).unwrap();
        assert_eq!(r.threshold, 1.0 / 3.0);
    }

    #[test]
    fn threshold_is_checked() {
        assert!(Ratio::from_params(&Params::from_toml("threshold = 2.0").unwrap(), 0).is_err());
    }
}
