//! The Mondrian distribution.
//!
//! Yoon et al. describe it as "a cross on which the pixels' RGB values are independent and
//! uniform random, and each quadrant shares a same color defined by independent and uniform
//! random RGB values". The paper does not fix the cross's position or thickness; we draw the
//! position uniformly (every quadrant keeps at least one pixel per side) and use a band of
//! `band` pixels (default `resolution / 16`, at least 1). Image `i` is generated from the
//! stream `(seed, i)`, so it is the same whatever batch it is drawn in.

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

pub const PARAMS: &[Param] = &[
    param(
        "resolution",
        "int",
        "32",
        "image height and width in pixels",
    ),
    param("size", "int", "10000", "number of images the dataset holds"),
    param(
        "band",
        "int",
        "(resolution / 16, at least 1)",
        "thickness of the cross's bands in pixels",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct MondrianParams {
    resolution: usize,
    size: u64,
    band: Option<usize>,
}

/// Mondrian images at one resolution.
pub struct Mondrian {
    res: usize,
    band: usize,
    size: u64,
    seed: u64,
}

/// Where the cross of one image lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cross {
    /// First row of the horizontal band.
    pub row: usize,
    /// First column of the vertical band.
    pub col: usize,
}

impl Mondrian {
    pub fn from_params(params: &Params, seed: u64) -> PResult<Mondrian> {
        let p: MondrianParams = params.parse()?;
        let band = p.band.unwrap_or((p.resolution / 16).max(1));
        if p.resolution < band + 2 {
            return Err(format!(
                "resolution {} is too small for a cross of band {band} (needs at least band + 2)",
                p.resolution
            ));
        }
        if band == 0 {
            return Err("band must be at least 1".into());
        }
        if p.size == 0 {
            return Err("size must be at least 1".into());
        }
        Ok(Mondrian {
            res: p.resolution,
            band,
            size: p.size,
            seed,
        })
    }

    /// Writes image `index` (3×res×res, CHW, [−1, 1]) into `out` and returns its cross.
    pub fn draw(&self, index: u64, out: &mut [f32]) -> Cross {
        let (r, b) = (self.res, self.band);
        let mut g = SplitMix64::for_index(self.seed, index);
        // Band start in 1..=r-b-1 so every quadrant has ≥ 1 row/column.
        let row = 1 + g.below((r - b - 1) as u64) as usize;
        let col = 1 + g.below((r - b - 1) as u64) as usize;
        let quad: [[f32; 3]; 4] =
            std::array::from_fn(|_| std::array::from_fn(|_| (g.next_f64() * 2.0 - 1.0) as f32));
        let plane = r * r;
        for y in 0..r {
            for x in 0..r {
                let on_cross = (row..row + b).contains(&y) || (col..col + b).contains(&x);
                for c in 0..3 {
                    out[c * plane + y * r + x] = if on_cross {
                        (g.next_f64() * 2.0 - 1.0) as f32
                    } else {
                        let q = (usize::from(y >= row + b) << 1) | usize::from(x >= col + b);
                        quad[q][c]
                    };
                }
            }
        }
        Cross { row, col }
    }

    /// Rule-validity score of one image in [0, 1].
    ///
    /// We search every cross position for the one that makes the four quadrants most uniform.
    /// `uniformity = clamp(1 − mad / 0.1)`, with `mad` the mean absolute deviation of quadrant
    /// pixels from their quadrant's mean colour ([−1, 1] scale), and
    /// `randomness = clamp(std(cross) / 0.5)`, since uniform pixels on [−1, 1] have std ≈ 0.577.
    /// The score is their product: 1 for a perfect Mondrian, ≈ 0 for noise or flat images.
    pub fn score(&self, img: &[f32]) -> f32 {
        let (r, b) = (self.res, self.band);
        let plane = r * r;
        let mut best = f64::INFINITY;
        let mut best_cross = Cross { row: 1, col: 1 };
        for row in 1..r - b {
            for col in 1..r - b {
                let mut sum = [[0f64; 3]; 4];
                let mut cnt = [0usize; 4];
                for y in 0..r {
                    if (row..row + b).contains(&y) {
                        continue;
                    }
                    for x in 0..r {
                        if (col..col + b).contains(&x) {
                            continue;
                        }
                        let q = (usize::from(y >= row + b) << 1) | usize::from(x >= col + b);
                        cnt[q] += 1;
                        for c in 0..3 {
                            sum[q][c] += img[c * plane + y * r + x] as f64;
                        }
                    }
                }
                let mut mad = 0.0;
                let mut n = 0usize;
                for y in 0..r {
                    if (row..row + b).contains(&y) {
                        continue;
                    }
                    for x in 0..r {
                        if (col..col + b).contains(&x) {
                            continue;
                        }
                        let q = (usize::from(y >= row + b) << 1) | usize::from(x >= col + b);
                        for c in 0..3 {
                            let mean = sum[q][c] / cnt[q].max(1) as f64;
                            mad += (img[c * plane + y * r + x] as f64 - mean).abs();
                            n += 1;
                        }
                    }
                }
                let mad = mad / n.max(1) as f64;
                if mad < best {
                    best = mad;
                    best_cross = Cross { row, col };
                }
            }
        }
        let uniformity = (1.0 - best / 0.1).clamp(0.0, 1.0);
        let mut vals = Vec::new();
        for y in 0..r {
            for x in 0..r {
                let on = (best_cross.row..best_cross.row + b).contains(&y)
                    || (best_cross.col..best_cross.col + b).contains(&x);
                if on {
                    for c in 0..3 {
                        vals.push(img[c * plane + y * r + x] as f64);
                    }
                }
            }
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        let randomness = (std / 0.5).clamp(0.0, 1.0);
        (uniformity * randomness) as f32
    }
}

impl Dataset for Mondrian {
    fn shape(&self) -> PResult<DatasetShape> {
        Ok(DatasetShape {
            channels: 3,
            height: self.res,
            width: self.res,
            len: self.size,
            class_names: vec!["mondrian".into()],
        })
    }

    fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()> {
        let per = 3 * self.res * self.res;
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
        let per = 3 * self.res * self.res;
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

    fn make(res: usize) -> Mondrian {
        Mondrian::from_params(
            &Params::with_defaults(&format!("resolution = {res}\nsize = 100"), super::PARAMS)
                .unwrap(),
            7,
        )
        .unwrap()
    }

    #[test]
    fn quadrants_are_uniform_and_cross_is_random() {
        let m = make(16);
        let mut img = vec![0f32; 3 * 256];
        let cross = m.draw(3, &mut img);
        let px = |c: usize, y: usize, x: usize| img[c * 256 + y * 16 + x];
        // top-left quadrant: rows < cross.row, cols < cross.col — one colour
        for c in 0..3 {
            let v = px(c, 0, 0);
            for y in 0..cross.row {
                for x in 0..cross.col {
                    assert_eq!(px(c, y, x), v);
                }
            }
        }
        // the cross row has many distinct values
        let row: Vec<f32> = (0..16).map(|x| px(0, cross.row, x)).collect();
        let distinct = row
            .iter()
            .filter(|v| row.iter().filter(|w| w == v).count() == 1)
            .count();
        assert!(distinct > 12, "{row:?}");
        assert!(img.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn deterministic_per_index_and_distinct_across_indices() {
        let m = make(8);
        let (mut a, mut b, mut c) = (vec![0f32; 192], vec![0f32; 192], vec![0f32; 192]);
        m.draw(5, &mut a);
        m.draw(5, &mut b);
        m.draw(6, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn pixel_statistics_match_uniform() {
        // Quadrant colours and cross pixels are U(-1, 1): mean 0, variance 1/3.
        let m = make(16);
        let mut all = Vec::new();
        let mut img = vec![0f32; 768];
        for i in 0..100 {
            m.draw(i, &mut img);
            all.extend_from_slice(&img);
        }
        let n = all.len() as f64;
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = all.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.03, "{var}");
    }

    #[test]
    fn validity_separates_mondrian_from_noise() {
        let m = make(16);
        let mut img = vec![0f32; 768];
        m.draw(1, &mut img);
        assert!(m.score(&img) > 0.95, "{}", m.score(&img));
        let mut g = SplitMix64(9);
        let noise: Vec<f32> = (0..768)
            .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        assert!(m.score(&noise) < 0.05, "{}", m.score(&noise));
        assert!(m.score(&vec![0.3; 768]) < 0.05);
    }

    #[test]
    fn rejects_bad_params() {
        let e = Mondrian::from_params(
            &Params::with_defaults("resolutoin = 8", super::PARAMS).unwrap(),
            0,
        )
        .err()
        .unwrap();
        assert!(e.contains("unknown field `resolutoin`"), "{e}");
        assert!(
            Mondrian::from_params(
                &Params::with_defaults("resolution = 2", super::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
    }
}
