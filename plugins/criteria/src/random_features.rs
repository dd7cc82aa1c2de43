//! `random-features`: the ratio test d₁/d₂ < threshold in the feature space of a small random
//! convolutional network, instead of pixel space ([`Needs::FEATURES`]).
//!
//! Untrained convolutional networks are a classic baseline embedding (random features keep
//! local structure and are invariant to nothing learned, so no training data leaks into the
//! judge); replication detectors in the literature use trained ones (SSCD in Somepalli et al.
//! 2023), which plug into the same door with `embed` and weights of their own. The network,
//! written with the plugin tensor API:
//!
//! ```text
//! conv1: 3×3, C → width, stride 1, padding 1, ReLU
//! conv2: 3×3, width → width, stride 2, padding 1, ReLU
//! average pooling to a g × g grid (g = the largest divisor of ⌈H/2⌉ and of ⌈W/2⌉ up to `grid`)
//! flatten to width·g² features, divided by their L2 norm
//! ```
//!
//! Its parameters (`conv1.weight`, `conv1.bias`, `conv2.…`, PyTorch's default initialisation)
//! are drawn by the host from `seed` and their names, so the same `seed` is the same network in
//! every run; with `weights = "file.safetensors"` the host loads trained ones over them instead
//! (every parameter by name and shape, `[out, in, 3, 3]` weights). The host embeds the samples and every training image (batches of 256), searches
//! the two nearest exactly with L2 between the unit-norm features (√(2 − 2·cos), so the ratio
//! is a cosine-distance ratio), and this criterion flags d₁/d₂ < `threshold` (0/0, two training
//! images with identical features, counts as 1). Score: d₁/d₂.
//!
//! Cost beyond `ratio`: one forward pass of the network per sample and per training image
//! (about 2·9·width·(C + width/4)·H·W multiply-adds each), the features in memory (width·g²
//! floats per image), and a second exact k-NN over them. Measured (release build, 2 shared
//! cores): 1,000 samples of 3×32×32 against 10,000 training images take 12.1 s with the
//! defaults (512 features, ≈ 0.9 ms per embedded image) against 1.9 s for `ratio`, 29.7 s with
//! `width = 64`; the features take 22 MB (45 MB at `width = 64`).

use memlab_plugin_api::nn::largest_divisor_at_most;
use memlab_plugin_api::prelude::*;

/// Parameters of `random-features`.
pub const PARAMS: &[Param] = &[
    param("width", "int", "32", "channels of both convolutions"),
    param(
        "grid",
        "int",
        "4",
        "largest side of the pooled feature grid (features = width · grid²)",
    ),
    param(
        "threshold",
        "float",
        "0.3333333333333333",
        "largest d1/d2 in feature space counted as a replicate (exclusive; 1/3)",
    ),
    param(
        "seed",
        "int",
        "0",
        "seed of the random network's parameters (independent of the run's seed)",
    ),
    param(
        "weights",
        "string",
        "(none)",
        "safetensors file with trained conv1/conv2 weights and biases instead of random ones",
    ),
];

params! {
    /// The config's `[[criteria]] params` table for `random-features` (defaults from
    /// [`PARAMS`], filled in by the host).
    #[derive(Debug)]
    struct RandomFeaturesParams {
        width: usize,
        grid: usize,
        threshold: f64,
        seed: u64,
        weights: Option<String>,
    }
}

/// The random-feature ratio criterion (see the module documentation).
#[derive(Debug)]
pub struct RandomFeatures {
    width: usize,
    grid: usize,
    threshold: f64,
    seed: u64,
    weights: Option<String>,
}

impl RandomFeatures {
    /// Parses and checks the parameters: `width ≥ 1`, `grid ≥ 1`, `threshold` in (0, 1].
    pub fn from_params(params: &Params, _seed: u64) -> PResult<RandomFeatures> {
        let p: RandomFeaturesParams = params.parse()?;
        if p.width == 0 || p.grid == 0 {
            return Err(format!(
                "width and grid must be at least 1, got {} and {}",
                p.width, p.grid
            ));
        }
        if !(p.threshold > 0.0 && p.threshold <= 1.0) {
            return Err(format!("threshold must be in (0, 1], got {}", p.threshold));
        }
        Ok(RandomFeatures {
            width: p.width,
            grid: p.grid,
            threshold: p.threshold,
            seed: p.seed,
            weights: p.weights,
        })
    }
}

impl Criterion for RandomFeatures {
    fn distance(&self) -> Distance {
        Distance::L2
    }

    fn neighbours(&self) -> usize {
        2
    }

    fn needs(&self) -> Needs {
        Needs::FEATURES
    }

    fn embedding_seed(&self) -> u64 {
        self.seed
    }

    fn embedding_weights(&self) -> Option<String> {
        self.weights.clone()
    }

    fn embed<'a>(&self, ctx: &'a Ctx<'a>, x: &Tensor<'a>) -> PResult<Tensor<'a>> {
        let [_, c, _, _] = x.dims::<4>();
        let w = self.width;
        let h = Conv2d::new(c, w, 3)
            .same()
            .forward(&ctx.scope("conv1"), x)
            .relu();
        let h = Conv2d::new(w, w, 3)
            .stride(2)
            .padding(1)
            .forward(&ctx.scope("conv2"), &h)
            .relu();
        let [n, _, hh, hw] = h.dims::<4>();
        // Average pooling to a g × g grid: square windows need the same factor both ways.
        let g = largest_divisor_at_most(hh, self.grid).min(largest_divisor_at_most(hw, self.grid));
        let (ky, kx) = (hh / g, hw / g);
        let pooled = if ky == kx {
            h.avg_pool2d(ky, ky)
        } else {
            // Non-square images: pool rows and columns separately via reshapes.
            h.reshape_to(&[n, w, g, ky, g, kx])
                .mean_dim(5, false)
                .mean_dim(3, false)
        };
        let f = pooled.flatten_from(1);
        let norm = (f.square().sum_dim(1, true) + 1e-12).sqrt();
        Ok(f / norm)
    }

    fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        for (i, (f, s)) in flags.iter_mut().zip(scores.iter_mut()).enumerate() {
            let r = crate::ratio::ratio(d[2 * i], d[2 * i + 1]);
            *s = r;
            *f = (r as f64) < self.threshold;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::inspect_embedding;

    fn rf(toml: &str) -> RandomFeatures {
        RandomFeatures::from_params(&Params::with_defaults(toml, PARAMS).unwrap(), 0).unwrap()
    }

    #[test]
    fn network_shapes_and_parameters() {
        let c = rf("width = 8");
        // 32×32 → conv2 (stride 2) 16×16 → pooled 4×4: 8·16 features.
        let s = inspect_embedding(&c, [5, 3, 32, 32]).unwrap();
        assert_eq!(s.output, vec![5, 8 * 16]);
        assert_eq!(s.total, (8 * 3 * 9 + 8) + (8 * 8 * 9 + 8));
        assert_eq!(s.param("conv2.weight"), Some(&[8, 8, 3, 3][..]));
        // 28×28 (MNIST) → 14×14: the grid falls back to 2×2 (largest divisor of 14 up to 4).
        let s = inspect_embedding(&c, [2, 1, 28, 28]).unwrap();
        assert_eq!(s.output, vec![2, 8 * 4]);
        // Non-square 8×16 → 4×8: grid 4 both ways, windows 1×2.
        let s = inspect_embedding(&c, [2, 1, 8, 16]).unwrap();
        assert_eq!(s.output, vec![2, 8 * 16]);
    }

    #[test]
    fn ratio_in_feature_space() {
        let c = rf("threshold = 0.5");
        assert_eq!(
            (c.needs(), c.neighbours(), c.embedding_seed()),
            (Needs::FEATURES, 2, 0)
        );
        let d = [0.0, 0.4, 0.3, 0.4, 0.0, 0.0];
        let (mut f, mut s) = ([false; 3], [0f32; 3]);
        c.judge(&d, &mut f, &mut s).unwrap();
        assert_eq!(f, [true, false, false]);
        assert_eq!(s, [0.0, 0.75, 1.0]);
        assert_eq!(rf("seed = 7").embedding_seed(), 7);
    }

    #[test]
    fn parameters_are_checked() {
        let parse =
            |t: &str| RandomFeatures::from_params(&Params::with_defaults(t, PARAMS).unwrap(), 0);
        assert!(parse("width = 0").is_err());
        assert!(parse("grid = 0").is_err());
        assert!(parse("threshold = 1.5").is_err());
        assert!(parse("depth = 2").unwrap_err().contains("unknown field"));
    }
}
