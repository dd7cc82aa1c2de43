//! `linf`: the nearest training image (in L∞) is within an absolute largest-value difference.
//!
//! Distances are max |x̂ − x| over all values of images in [−1, 1] (so in [0, 2]); a uint8
//! difference of k levels is k/127.5 here.

use memlab_plugin_api::prelude::*;

use crate::threshold;

/// Parameters of `linf`.
pub const PARAMS: &[Param] = &[param(
    "threshold",
    "float",
    "",
    "largest L-infinity d1 counted as a replicate (exclusive), in [-1, 1] units (0..2)",
)];

/// Replicate iff d₁ < threshold with d₁ the L∞ distance to the L∞-nearest training image.
/// Score: d₁.
pub struct Linf {
    threshold: f64,
}

impl Linf {
    /// Parses the required `threshold`.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Linf> {
        Ok(Linf {
            threshold: threshold::parse(params)?,
        })
    }
}

impl Criterion for Linf {
    fn distance(&self) -> Distance {
        Distance::Linf
    }
    fn neighbours(&self) -> usize {
        1
    }
    fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        threshold::judge(self.threshold, d, flags, scores);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_largest_differences_below_the_threshold() {
        // 8 uint8 levels: 8/127.5.
        let c = Linf::from_params(&Params::from_toml("threshold = 0.0627").unwrap(), 0).unwrap();
        assert_eq!((c.distance(), c.neighbours()), (Distance::Linf, 1));
        // Sample (0.1, −0.5) vs nearest (0.15, −0.45): max(|−0.05|, |−0.05|) = 0.05.
        // Sample (1, −1) vs (0.8, −1): 0.2.
        let d = [0.05f32, 0.2, 7.0 / 127.5, 8.0 / 127.5];
        let (mut f, mut s) = ([false; 4], [0f32; 4]);
        c.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [true, false, true, false]);
        assert_eq!(s, d);
    }

    #[test]
    fn threshold_is_required() {
        assert!(Linf::from_params(&Params::default(), 0).is_err());
        assert!(Linf::from_params(&Params::from_toml("threshold = 0.0").unwrap(), 0).is_err());
    }
}
