//! Random Ink (RI) of Yoon et al.: every value an independent Bernoulli(½) in {0, 1}, mapped
//! to {−1, 1}. Image `i` is generated from the stream `(seed, i)`.

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

pub const PARAMS: &[Param] = &[
    param(
        "resolution",
        "int",
        "32",
        "image height and width in pixels",
    ),
    param("channels", "int", "3", "channels per image"),
    param("size", "int", "10000", "number of images the dataset holds"),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct InkParams {
    resolution: usize,
    channels: usize,
    size: u64,
}

/// A value within this distance of −1 or 1 counts as binary in [`RandomInk::score`].
pub const BINARY_TOL: f32 = 0.1;

/// Random Ink images at one shape.
pub struct RandomInk {
    res: usize,
    channels: usize,
    size: u64,
    seed: u64,
}

impl RandomInk {
    pub fn from_params(params: &Params, seed: u64) -> PResult<RandomInk> {
        let p: InkParams = params.parse()?;
        if p.resolution == 0 {
            return Err("resolution must be at least 1".into());
        }
        if p.channels == 0 {
            return Err("channels must be at least 1".into());
        }
        if p.size == 0 {
            return Err("size must be at least 1".into());
        }
        Ok(RandomInk {
            res: p.resolution,
            channels: p.channels,
            size: p.size,
            seed,
        })
    }

    fn per(&self) -> usize {
        self.channels * self.res * self.res
    }

    /// Writes image `index` (CHW, values in {−1, 1}) into `out`.
    pub fn draw(&self, index: u64, out: &mut [f32]) {
        let mut g = SplitMix64::for_index(self.seed, index);
        for chunk in out.chunks_mut(64) {
            let bits = g.next_u64();
            for (k, v) in chunk.iter_mut().enumerate() {
                *v = if (bits >> k) & 1 == 1 { 1.0 } else { -1.0 };
            }
        }
    }

    /// Rule-validity score of one image in [0, 1]: the fraction of values within
    /// [`BINARY_TOL`] (0.1, about 13 of 255 levels) of −1 or 1.
    ///
    /// Only binary-ness is scored, not the balance of −1 and 1: under Bernoulli(½) every
    /// binary pattern is equally likely. 1 for Random Ink, ≈ 0.1 for uniform noise on [−1, 1],
    /// 0 for mid-grey or flat-colour images.
    pub fn score(&self, img: &[f32]) -> f32 {
        if img.is_empty() {
            return 0.0;
        }
        let near = img
            .iter()
            .filter(|&&v| (v.abs() - 1.0).abs() <= BINARY_TOL)
            .count();
        near as f32 / img.len() as f32
    }
}

impl Dataset for RandomInk {
    fn shape(&self) -> PResult<DatasetShape> {
        Ok(DatasetShape {
            channels: self.channels,
            height: self.res,
            width: self.res,
            len: self.size,
            class_names: vec!["random-ink".into()],
        })
    }

    fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()> {
        let per = self.per();
        if images.len() != indices.len() * per || labels.len() != indices.len() {
            return Err(format!(
                "buffers sized for {} images expected",
                indices.len()
            ));
        }
        for (k, &i) in indices.iter().enumerate() {
            if i >= self.size {
                return Err(format!("index {i} out of range (size {})", self.size));
            }
            self.draw(i, &mut images[k * per..(k + 1) * per]);
            labels[k] = 0;
        }
        Ok(())
    }

    fn validity(&self, images: &[f32], scores: &mut [f32]) -> Option<PResult<()>> {
        let per = self.per();
        if images.len() != scores.len() * per {
            return Some(Err(format!(
                "{} values is not {} images",
                images.len(),
                scores.len()
            )));
        }
        for (k, s) in scores.iter_mut().enumerate() {
            *s = self.score(&images[k * per..(k + 1) * per]);
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(extra: &str) -> RandomInk {
        RandomInk::from_params(&Params::with_defaults(extra, super::PARAMS).unwrap(), 4).unwrap()
    }

    #[test]
    fn values_are_fair_coin_flips() {
        let ri = make("resolution = 16");
        let per = 3 * 256;
        let mut img = vec![0f32; per];
        let (mut ones, mut n) = (0usize, 0usize);
        // Agreement of neighbouring values: independent fair coins agree half the time.
        let mut agree = 0usize;
        for i in 0..200 {
            ri.draw(i, &mut img);
            assert!(img.iter().all(|&v| v == 1.0 || v == -1.0));
            ones += img.iter().filter(|&&v| v == 1.0).count();
            agree += img.windows(2).filter(|w| w[0] == w[1]).count();
            n += per;
        }
        let p = ones as f64 / n as f64;
        // sd of p is 0.5 / √153600 ≈ 0.0013.
        assert!((p - 0.5).abs() < 0.006, "{p}");
        let a = agree as f64 / (200 * (per - 1)) as f64;
        assert!((a - 0.5).abs() < 0.006, "{a}");
    }

    #[test]
    fn per_position_mean_is_half() {
        // Every position (not just the overall mean) is a fair coin across images.
        let ri = make("resolution = 4\nchannels = 1");
        let mut img = vec![0f32; 16];
        let mut counts = [0usize; 16];
        for i in 0..4000 {
            ri.draw(i, &mut img);
            for (c, &v) in counts.iter_mut().zip(&img) {
                *c += usize::from(v == 1.0);
            }
        }
        // sd per position ≈ 31.6 around 2000.
        assert!(counts.iter().all(|&c| c.abs_diff(2000) < 130), "{counts:?}");
    }

    #[test]
    fn deterministic_per_index() {
        let ri = make("resolution = 8");
        let (mut a, mut b, mut c) = (vec![0f32; 192], vec![0f32; 192], vec![0f32; 192]);
        ri.draw(2, &mut a);
        ri.draw(2, &mut b);
        ri.draw(3, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut imgs = vec![0f32; 384];
        let mut labels = vec![5i64; 2];
        ri.fill(&[3, 2], &mut imgs, &mut labels).unwrap();
        assert_eq!(&imgs[..192], &c[..]);
        assert_eq!(&imgs[192..], &a[..]);
        assert_eq!(labels, vec![0, 0]);
        assert!(
            ri.fill(&[10_000], &mut imgs[..192], &mut labels[..1])
                .is_err()
        );
        assert_eq!(ri.shape().unwrap().image_len(), 192);
    }

    #[test]
    fn validity_separates_ink_from_others() {
        let ri = make("resolution = 16");
        let per = 768;
        let mut img = vec![0f32; per];
        ri.draw(0, &mut img);
        assert_eq!(ri.score(&img), 1.0);
        // Slightly off-binary values (as a model would generate) still count.
        let soft: Vec<f32> = img.iter().map(|v| v * 0.95).collect();
        assert_eq!(ri.score(&soft), 1.0);
        let mut g = SplitMix64(1);
        let noise: Vec<f32> = (0..per)
            .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let s = ri.score(&noise);
        assert!((s - 0.1).abs() < 0.04, "{s}");
        assert_eq!(ri.score(&vec![0.3; per]), 0.0);
        let mut scores = vec![0f32; 2];
        let mut both = img.clone();
        both.extend_from_slice(&noise);
        ri.validity(&both, &mut scores).unwrap().unwrap();
        assert_eq!(scores[0], 1.0);
        assert!(scores[1] < 0.2);
        assert!(ri.validity(&both, &mut scores[..1]).unwrap().is_err());
        assert!(ri.validity(&[], &mut []).unwrap().is_ok());
    }

    #[test]
    fn rejects_bad_params() {
        let e = RandomInk::from_params(
            &Params::with_defaults("colours = 2", super::PARAMS).unwrap(),
            0,
        )
        .err()
        .unwrap();
        assert!(e.contains("unknown field `colours`"), "{e}");
        assert!(
            RandomInk::from_params(
                &Params::with_defaults("channels = 0", super::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
    }
}
