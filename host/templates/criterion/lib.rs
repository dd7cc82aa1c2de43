//! `{{name}}`: a memlab replication-criterion plugin (scaffolded by `memlab new criterion`).
//!
//! A criterion decides from nearest-neighbour distances whether a generated sample copies a
//! training image. It says which distance the host's exact k-NN search uses and how many
//! neighbours it needs; the host finds them and calls `judge` with each sample's distances,
//! ascending. This one compares the nearest distance d₁ with the mean of the k nearest: a
//! replicate is much closer to one training image than to the others.

use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[
    param("k", "int", "3", "neighbours in the mean (at least 2)"),
    param(
        "threshold",
        "float",
        "0.5",
        "largest d1 / mean(d1..dk) counted as a replicate",
    ),
];

params! {
    /// The criterion's parameters: one `[[criteria]] params` table.
    #[derive(Debug)]
    struct MeanGap {
        /// Neighbours averaged.
        k: usize,
        /// Replicate iff d₁ / mean(d₁..d_k) < threshold.
        threshold: f32,
    }
}

impl MeanGap {
    /// Parses and checks the parameters.
    fn from_params(params: &Params, _seed: u64) -> PResult<MeanGap> {
        let m: MeanGap = params.parse()?;
        if m.k < 2 {
            return Err(format!("k must be at least 2, got {}", m.k));
        }
        if !(m.threshold > 0.0 && m.threshold <= 1.0) {
            return Err(format!("threshold must be in (0, 1], got {}", m.threshold));
        }
        Ok(m)
    }
}

impl Criterion for MeanGap {
    fn distance(&self) -> Distance {
        Distance::L2
    }

    fn neighbours(&self) -> usize {
        self.k
    }

    /// `distances` holds `k` ascending distances per sample, row-major. The score is what the
    /// results report per sample (here the ratio; lower means more replicated).
    fn judge(&self, distances: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        let rows = distances.chunks(self.k);
        for ((d, flag), score) in rows.zip(flags.iter_mut()).zip(scores.iter_mut()) {
            let mean = d.iter().sum::<f32>() / self.k as f32;
            // All k at distance 0: an exact copy of several identical training images.
            *score = if mean > 0.0 { d[0] / mean } else { 0.0 };
            *flag = *score < self.threshold;
        }
        Ok(())
    }
}

fn register(p: &mut Plugin) {
    p.criterion(
        "{{name}}",
        "Replicate iff d1 / mean of the k nearest < threshold",
        PARAMS,
        MeanGap::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_samples_much_closer_to_one_image() {
        let c = MeanGap::from_params(&Params::with_defaults("k = 2", PARAMS).unwrap(), 0).unwrap();
        assert_eq!((c.distance(), c.neighbours()), (Distance::L2, 2));
        // Rows: (0.1, 1.9) → 0.1; (1, 1) → 1; (0, 0) → 0 (exact copy).
        let d = [0.1, 1.9, 1.0, 1.0, 0.0, 0.0];
        let (mut flags, mut scores) = ([false; 3], [0f32; 3]);
        c.judge(&d, &mut flags, &mut scores).unwrap();
        assert_eq!(flags, [true, false, true]);
        assert!((scores[0] - 0.1).abs() < 1e-6 && scores[1] == 1.0 && scores[2] == 0.0);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let parse = |t: &str| MeanGap::from_params(&Params::with_defaults(t, PARAMS).unwrap(), 0);
        assert!(parse("k = 1").is_err());
        assert!(parse("threshold = 0.0").is_err());
        assert!(parse("n = 3").is_err());
    }
}
