//! `{{name}}`: a memlab dataset plugin (scaffolded by `memlab new dataset`).
//!
//! A dataset says what its images look like (channels, size, count, class names) and writes
//! any images the host asks for, by index, as float32 NCHW in [−1, 1]. This one draws stripe
//! images: even indices horizontal stripes (class 0), odd indices vertical ones (class 1), each
//! with a period and phase drawn from the stream `(seed, index)`. Because the rule is known,
//! it also scores how well any image obeys it (`validity`), so generated samples can be judged
//! without a feature network.

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[
    param("resolution", "int", "16", "image height and width"),
    param("size", "int", "1000", "number of images"),
];

params! {
    /// The dataset's parameters: the config's `[dataset] params` table.
    #[derive(Debug)]
    struct StripesParams {
        /// Image side in pixels.
        resolution: usize,
        /// Number of images.
        size: u64,
    }
}

/// Stripe images of one size; `seed` is the run's.
struct Stripes {
    res: usize,
    size: u64,
    seed: u64,
}

impl Stripes {
    /// Parses and checks the parameters.
    fn from_params(params: &Params, seed: u64) -> PResult<Stripes> {
        let p: StripesParams = params.parse()?;
        if p.resolution < 2 || p.size == 0 {
            return Err(format!(
                "need resolution >= 2 and size >= 1, got {} and {}",
                p.resolution, p.size
            ));
        }
        Ok(Stripes {
            res: p.resolution,
            size: p.size,
            seed,
        })
    }

    /// Writes image `index` (one channel, `res × res`) into `out`; returns its class.
    fn draw(&self, index: u64, out: &mut [f32]) -> i64 {
        // Everything about image `index` comes from its own stream: the same index gives the
        // same image in any batch, order or process.
        let mut g = SplitMix64::for_index(self.seed, index);
        let period = 2 + g.below(3) as usize;
        let phase = g.below(period as u64) as usize;
        let vertical = index % 2 == 1;
        for (p, v) in out.iter_mut().enumerate() {
            let (y, x) = (p / self.res, p % self.res);
            let along = if vertical { x } else { y };
            *v = if (along + phase) % period < period / 2 + 1 {
                1.0
            } else {
                -1.0
            };
        }
        vertical as i64
    }
}

impl Dataset for Stripes {
    fn shape(&self) -> PResult<DatasetShape> {
        Ok(DatasetShape {
            channels: 1,
            height: self.res,
            width: self.res,
            len: self.size,
            class_names: vec!["horizontal".into(), "vertical".into()],
        })
    }

    fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()> {
        let per = self.res * self.res;
        for ((&i, image), label) in indices.iter().zip(images.chunks_mut(per)).zip(labels) {
            if i >= self.size {
                return Err(format!("index {i} out of range (size {})", self.size));
            }
            *label = self.draw(i, image);
        }
        Ok(())
    }

    /// 1 when every row or every column is constant (a stripe image), less otherwise: the
    /// larger of the fractions of constant rows and of constant columns.
    fn validity(&self, images: &[f32], scores: &mut [f32]) -> Option<PResult<()>> {
        let r = self.res;
        for (image, score) in images.chunks(r * r).zip(scores.iter_mut()) {
            let rows = (0..r)
                .filter(|&y| constant((0..r).map(|x| image[y * r + x])))
                .count();
            let cols = (0..r)
                .filter(|&x| constant((0..r).map(|y| image[y * r + x])))
                .count();
            *score = rows.max(cols) as f32 / r as f32;
        }
        Some(Ok(()))
    }
}

/// Whether every value of a line is within 0.25 of its first.
fn constant(mut line: impl Iterator<Item = f32>) -> bool {
    let first = line.next().unwrap_or(0.0);
    line.all(|v| (v - first).abs() < 0.25)
}

fn register(p: &mut Plugin) {
    p.dataset(
        "{{name}}",
        "Horizontal (class 0) and vertical (class 1) stripes with random period and phase",
        PARAMS,
        Stripes::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    fn stripes(toml: &str) -> Stripes {
        Stripes::from_params(&Params::with_defaults(toml, PARAMS).unwrap(), 3).unwrap()
    }

    #[test]
    fn images_depend_only_on_their_index() {
        let d = stripes("resolution = 8\nsize = 10");
        let per = d.shape().unwrap().image_len();
        let (mut batch, mut labels) = (vec![0f32; 3 * per], vec![0i64; 3]);
        d.fill(&[5, 0, 5], &mut batch, &mut labels).unwrap();
        let (mut one, mut label) = (vec![0f32; per], vec![0i64; 1]);
        d.fill(&[5], &mut one, &mut label).unwrap();
        assert_eq!(batch[..per], one[..]);
        assert_eq!(batch[2 * per..], one[..]);
        assert_eq!(labels, [1, 0, 1]);
        assert!(batch.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn own_images_are_valid_and_noise_is_not() {
        let d = stripes("resolution = 8\nsize = 10");
        let mut images = vec![0f32; 2 * 64];
        d.fill(&[2, 3], &mut images, &mut [0; 2]).unwrap();
        images.extend((0..64).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }));
        let mut scores = [0f32; 3];
        d.validity(&images, &mut scores).unwrap().unwrap();
        assert_eq!(scores[..2], [1.0, 1.0]);
        assert!(scores[2] < 1.0, "{scores:?}");
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let d = stripes("size = 4");
        let e = d.fill(&[4], &mut vec![0f32; 256], &mut [0]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }
}
