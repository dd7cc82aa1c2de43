//! `{{name}}`: a memlab criterion that looks beyond distances (scaffolded by
//! `memlab new criterion --images`).
//!
//! A criterion may ask the host for more than the k nearest pixel distances (`needs`):
//! with `Needs::FEATURES` the host runs the criterion's embedding network (`embed`, written with
//! the same tensor API as an architecture's `forward`) over the samples and every training
//! image, and finds the nearest neighbours exactly in that feature space; with `Needs::IMAGES`
//! it also hands over the pixels of each sample and of its neighbours. This one does both: a
//! sample replicates when, in the feature space of a small random convolutional network, its
//! nearest training image is much closer than the second (d₁/d₂ < threshold) and that image
//! also matches it pixel by pixel (mean absolute difference below a tolerance).

use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[
    param(
        "threshold",
        "float",
        "0.5",
        "largest feature-space d1 / d2 counted as a replicate",
    ),
    param(
        "tolerance",
        "float",
        "0.1",
        "largest mean absolute pixel difference to the nearest image",
    ),
    param(
        "seed",
        "int",
        "0",
        "seed of the embedding network's random parameters",
    ),
];

params! {
    /// The criterion's parameters: one `[[criteria]] params` table.
    #[derive(Debug)]
    struct FeatureCheck {
        /// Replicate only if d₁ / d₂ < threshold in feature space.
        threshold: f32,
        /// ... and the mean |pixel difference| to the nearest image < tolerance.
        tolerance: f32,
        /// Seed of the network's parameters (the same seed is the same network in every run).
        seed: u64,
    }
}

impl FeatureCheck {
    /// Parses and checks the parameters.
    fn from_params(params: &Params, _seed: u64) -> PResult<FeatureCheck> {
        let c: FeatureCheck = params.parse()?;
        if !(c.threshold > 0.0 && c.threshold <= 1.0) {
            return Err(format!("threshold must be in (0, 1], got {}", c.threshold));
        }
        if !(c.tolerance > 0.0 && c.tolerance.is_finite()) {
            return Err(format!("tolerance must be positive, got {}", c.tolerance));
        }
        Ok(c)
    }
}

impl Criterion for FeatureCheck {
    /// The metric of the search, here between features (L2 between unit vectors).
    fn distance(&self) -> Distance {
        Distance::L2
    }

    fn neighbours(&self) -> usize {
        2
    }

    /// Neighbours in feature space, and their pixels.
    fn needs(&self) -> Needs {
        Needs::FEATURES | Needs::IMAGES
    }

    /// The host initialises `conv.weight` and `conv.bias` from this seed and their names.
    fn embedding_seed(&self) -> u64 {
        self.seed
    }

    /// Images `[N, C, H, W]` in [−1, 1] → unit-norm features `[N, 16·(H/4)·(W/4)]`. The host
    /// runs this in batches, without autodiff, on its device.
    fn embed<'a>(&self, ctx: &'a Ctx<'a>, x: &Tensor<'a>) -> PResult<Tensor<'a>> {
        let [_, c, h, w] = x.dims::<4>();
        if h % 4 != 0 || w % 4 != 0 {
            return Err(format!("image sides must be multiples of 4, got {h}×{w}"));
        }
        let f = Conv2d::new(c, 16, 3)
            .same()
            .forward(&ctx.scope("conv"), x)
            .relu()
            .avg_pool2d(4, 4)
            .flatten_from(1);
        let norm = (f.square().sum_dim(1, true) + 1e-12).sqrt();
        Ok(f / norm)
    }

    /// Called with a chunk of samples: feature-space distances, ascending, and the pixels of
    /// each sample and of its neighbours in that order. The score is what the results report
    /// per sample (here the feature ratio; lower means more replicated).
    fn judge_with(&self, j: &Judging<'_>, flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        for i in 0..j.len() {
            let d = j.distances_of(i);
            // Two training images with the same features: it copies neither uniquely.
            let ratio = if d[1] > 0.0 { d[0] / d[1] } else { 1.0 };
            let (sample, nearest) = (j.sample(i), j.neighbour(i, 0));
            let diff = sample
                .iter()
                .zip(nearest)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / sample.len() as f32;
            scores[i] = ratio;
            flags[i] = ratio < self.threshold && diff < self.tolerance;
        }
        Ok(())
    }
}

fn register(p: &mut Plugin) {
    p.criterion(
        "{{name}}",
        "Replicate iff d1/d2 < threshold in a random conv net's features and the pixels match",
        PARAMS,
        FeatureCheck::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::inspect_embedding;

    fn criterion(toml: &str) -> PResult<FeatureCheck> {
        FeatureCheck::from_params(&Params::with_defaults(toml, PARAMS)?, 0)
    }

    /// The shape-only host runs `embed`: the feature shape and every parameter.
    #[test]
    fn embedding_shape_and_parameters() {
        let c = criterion("").unwrap();
        let s = inspect_embedding(&c, [5, 3, 8, 8]).unwrap();
        assert_eq!(s.output, vec![5, 16 * 2 * 2]);
        assert_eq!(s.total, 16 * 3 * 9 + 16);
        assert!(inspect_embedding(&c, [1, 3, 6, 6]).is_err());
    }

    /// Hand-made chunk: two 1×2×2 samples with two neighbours each.
    #[test]
    fn flags_close_features_with_matching_pixels() {
        let c = criterion("threshold = 0.5\ntolerance = 0.1").unwrap();
        let j = Judging {
            distances: &[0.0, 0.8, 0.1, 0.9],
            neighbours: 2,
            ids: &[4, 7, 2, 4],
            shape: [1, 2, 2],
            samples: &[0.5, 0.5, 0.5, 0.5, -1.0, 1.0, -1.0, 1.0],
            neighbour_images: &[
                0.5, 0.5, 0.5, 0.52, // sample 0's nearest: pixels match
                0.0, 0.0, 0.0, 0.0, //
                1.0, -1.0, 1.0, -1.0, // sample 1's nearest: features close, pixels not
                0.0, 0.0, 0.0, 0.0,
            ],
        };
        let (mut flags, mut scores) = ([false; 2], [0f32; 2]);
        c.judge_with(&j, &mut flags, &mut scores).unwrap();
        assert_eq!(flags, [true, false]);
        assert!((scores[1] - 0.1 / 0.9).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(criterion("threshold = 0.0").is_err());
        assert!(criterion("tolerance = -1.0").is_err());
        assert!(criterion("k = 3").unwrap_err().contains("unknown field"));
    }
}
