//! `l2`: the nearest training image is within an absolute L2 distance.
//!
//! Distances are Euclidean over all C·H·W values of images in [−1, 1], so a threshold
//! depends on the image size: a uniform per-value difference r gives d = r·√(C·H·W). Gu et
//! al.'s "KNN distance" is the L2 distance of uint8 images divided by √(C·H·W); multiply it by
//! √(C·H·W)/127.5 to get this scale (e.g. 1.0 there is 0.434 here at 32×32×3).

use memlab_plugin_api::prelude::*;

use crate::threshold;

/// Parameters of `l2`.
pub const PARAMS: &[Param] = &[param(
    "threshold",
    "float",
    "",
    "largest d1 counted as a replicate (exclusive), L2 over the image in [-1, 1] units",
)];

/// Replicate iff d₁ < threshold with d₁ the L2 distance to the nearest training image.
/// Score: d₁.
pub struct L2 {
    threshold: f64,
}

impl L2 {
    /// Parses the required `threshold`.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<L2> {
        Ok(L2 {
            threshold: threshold::parse(params)?,
        })
    }
}

impl Criterion for L2 {
    fn distance(&self) -> Distance {
        Distance::L2
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
    fn flags_distances_below_the_threshold() {
        let c = L2::from_params(&Params::from_toml("threshold = 2.5").unwrap(), 0).unwrap();
        assert_eq!((c.distance(), c.neighbours()), (Distance::L2, 1));
        // A 3-value image at distance √(0.5² + 1² + 2²) = √5.25 ≈ 2.291 passes; 2.5 itself
        // does not (strict).
        let d = [5.25f32.sqrt(), 2.5, 0.0, 7.0];
        let (mut f, mut s) = ([false; 4], [0f32; 4]);
        c.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [true, false, true, false]);
        assert_eq!(s, d);
    }

    #[test]
    fn threshold_is_required_and_positive() {
        let e = L2::from_params(&Params::default(), 0).err().unwrap();
        assert!(e.contains("threshold"), "{e}");
        assert!(L2::from_params(&Params::from_toml("threshold = -1.0").unwrap(), 0).is_err());
        assert!(L2::from_params(&Params::from_toml("treshold = 1.0").unwrap(), 0).is_err());
    }
}
