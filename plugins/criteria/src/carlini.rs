//! `carlini`: Carlini et al. (2023)'s relative L2 distance for CIFAR-10 extraction,
//! ℓ = d₁ / (α · mean of the n nearest distances), replicate iff ℓ < threshold.
//!
//! The n nearest include the nearest itself (d₁ … dₙ, ascending). ℓ is a ratio of L2
//! distances, so it does not depend on the pixel scale. The paper fixes α = 0.5 and n = 50;
//! the spec gives no cut-off δ, so the default threshold is 1: a sample replicates when its
//! nearest training image is closer than α = ½ of its mean distance to the n nearest. The
//! k-NN search must find n neighbours, so the training set needs at least n images.

use memlab_plugin_api::prelude::*;

/// Parameters of `carlini`.
pub const PARAMS: &[Param] = &[
    param(
        "alpha",
        "float",
        "0.5",
        "α, the scale of the mean neighbour distance",
    ),
    param(
        "n",
        "int",
        "50",
        "neighbours whose mean distance normalises d1 (the nearest included)",
    ),
    param(
        "threshold",
        "float",
        "1.0",
        "largest ℓ counted as a replicate (exclusive)",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct CarliniParams {
    alpha: f64,
    n: usize,
    threshold: f64,
}

/// Replicate iff ℓ = d₁ / (α · mean(d₁..dₙ)) < threshold. Score: ℓ.
pub struct Carlini {
    alpha: f64,
    n: usize,
    threshold: f64,
}

impl Carlini {
    /// Parses α > 0, n ≥ 1 and threshold > 0.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Carlini> {
        let p: CarliniParams = params.parse()?;
        if !(p.alpha.is_finite() && p.alpha > 0.0) {
            return Err(format!("alpha must be positive, got {}", p.alpha));
        }
        if p.n == 0 {
            return Err("n must be at least 1".into());
        }
        if !(p.threshold.is_finite() && p.threshold > 0.0) {
            return Err(format!("threshold must be positive, got {}", p.threshold));
        }
        Ok(Carlini {
            alpha: p.alpha,
            n: p.n,
            threshold: p.threshold,
        })
    }

    /// ℓ for one sample's ascending distances d₁..dₙ. When all n are 0 (the sample equals n
    /// identical training images) d₁ equals the mean and ℓ is taken as 1/α, its value
    /// whenever d₁ = mean: such a sample copies no image uniquely.
    pub fn ell(&self, d: &[f32]) -> f64 {
        let mean = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
        if mean > 0.0 {
            d[0] as f64 / (self.alpha * mean)
        } else {
            1.0 / self.alpha
        }
    }
}

impl Criterion for Carlini {
    fn distance(&self) -> Distance {
        Distance::L2
    }
    fn neighbours(&self) -> usize {
        self.n
    }
    fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        for ((f, s), row) in flags
            .iter_mut()
            .zip(scores.iter_mut())
            .zip(d.chunks_exact(self.n))
        {
            let l = self.ell(row);
            *s = l as f32;
            *f = l < self.threshold;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(toml: &str) -> PResult<Carlini> {
        Carlini::from_params(&Params::with_defaults(toml, PARAMS).unwrap(), 0)
    }

    #[test]
    fn defaults_follow_the_paper() {
        let c = make("").unwrap();
        assert_eq!((c.distance(), c.neighbours()), (Distance::L2, 50));
        // d₁ = 1, the other 49 at 4: mean = (1 + 196)/50 = 3.94, ℓ = 1/(0.5·3.94) = 0.5076.
        let mut d = vec![4.0f32; 100];
        d[0] = 1.0;
        // Second sample: d₁ = 3, others 4: mean = 199/50 = 3.98, ℓ = 3/1.99 = 1.5075.
        d[50] = 3.0;
        let (mut f, mut s) = ([false; 2], [0f32; 2]);
        c.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [true, false]);
        assert!((s[0] - 1.0 / 1.97).abs() < 1e-6, "{}", s[0]);
        assert!((s[1] - 3.0 / 1.99).abs() < 1e-6, "{}", s[1]);
    }

    #[test]
    fn hand_computed_small_n() {
        let c = make("n = 4\nalpha = 0.5\nthreshold = 0.5").unwrap();
        assert_eq!(c.neighbours(), 4);
        // Distances 1, 2, 3, 6: mean 3, ℓ = 1/(0.5·3) = 2/3.
        // Distances 0.5, 3, 4, 4.5: mean 3, ℓ = 0.5/1.5 = 1/3.
        // All zero: ℓ = 1/α = 2.
        let d = [1.0, 2.0, 3.0, 6.0, 0.5, 3.0, 4.0, 4.5, 0.0, 0.0, 0.0, 0.0];
        let (mut f, mut s) = ([false; 3], [0f32; 3]);
        c.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [false, true, false]);
        assert!((s[0] - 2.0 / 3.0).abs() < 1e-6);
        assert!((s[1] - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(s[2], 2.0);
        // An exact copy of a single training image: ℓ = 0.
        assert_eq!(c.ell(&[0.0, 1.0, 2.0, 3.0]), 0.0);
    }

    #[test]
    fn scale_free() {
        let c = make("n = 3").unwrap();
        let a = c.ell(&[1.0, 2.0, 4.0]);
        let b = c.ell(&[127.5, 255.0, 510.0]);
        assert!((a - b).abs() < 1e-12);
        // mean 7/3, ℓ = 1/(0.5·7/3) = 6/7.
        assert!((a - 6.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_params() {
        assert!(make("n = 0").is_err());
        assert!(make("alpha = 0.0").is_err());
        assert!(make("threshold = -1.0").is_err());
        assert!(make("k = 5").is_err());
    }
}
