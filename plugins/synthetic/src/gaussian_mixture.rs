//! The Gaussian-mixture dummies (GM) of Yoon et al.
//!
//! `modes` fixed images (default 100) with i.i.d. U[0, 1] pixels are drawn from the seed. A
//! sample picks a mode uniformly, adds i.i.d. N(0, std²) per value (default std 0.5), clips to
//! [0, 1] and is mapped to [−1, 1]. Sample `i` is generated from the stream `(seed, i)`; the
//! modes come from a separate stream derived from the seed, so they are the same whatever
//! samples are drawn.

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
    param("modes", "int", "100", "number of fixed mode images"),
    param(
        "std",
        "float",
        "0.5",
        "standard deviation of the per-value Gaussian noise, on the [0, 1] scale",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct GmParams {
    resolution: usize,
    channels: usize,
    size: u64,
    modes: usize,
    std: f64,
}

/// Values within this distance of 0 or 1 ([0, 1] scale) count as clipped.
const BOUND_TOL: f64 = 0.01;

/// Mean and variance of a mode's residual energy and of its count of values at the bounds.
#[derive(Debug, Clone, Copy, Default)]
struct ModeStats {
    energy_mean: f64,
    energy_var: f64,
    bound_mean: f64,
    bound_var: f64,
}

/// Most values (`modes × channels × resolution²`) the mode images may hold: 2³⁰ f32, 4 GiB.
const MAX_MODE_VALUES: usize = 1 << 30;

/// Salt separating the modes' random stream from the samples' streams.
const MODE_SALT: u64 = 0x6D6F_6465_735F_676D;

/// Gaussian-mixture dummies at one shape.
pub struct GaussianMixture {
    res: usize,
    channels: usize,
    size: u64,
    std: f64,
    seed: u64,
    /// Mode images on the [0, 1] scale, `modes × C·H·W`.
    modes: Vec<f32>,
    /// Per mode: mean and variance, under the model, of the two statistics of [`Self::score`].
    stats: Vec<ModeStats>,
}

impl GaussianMixture {
    pub fn from_params(params: &Params, seed: u64) -> PResult<GaussianMixture> {
        let p: GmParams = params.parse()?;
        if p.resolution == 0 {
            return Err("resolution must be at least 1".into());
        }
        if p.channels == 0 {
            return Err("channels must be at least 1".into());
        }
        if p.size == 0 {
            return Err("size must be at least 1".into());
        }
        if p.modes == 0 {
            return Err("modes must be at least 1".into());
        }
        if !(p.std.is_finite() && p.std > 0.0) {
            return Err(format!("std must be a positive number, got {}", p.std));
        }
        // The modes are held in memory (and their statistics computed) at construction: refuse
        // sizes that cannot be, instead of aborting on the allocation.
        let values = p
            .channels
            .checked_mul(p.resolution)
            .and_then(|v| v.checked_mul(p.resolution))
            .and_then(|per| Some((per, per.checked_mul(p.modes)?)))
            .filter(|&(_, all)| all <= MAX_MODE_VALUES);
        let Some((per, all)) = values else {
            return Err(format!(
                "modes = {} of {}×{}×{} values is more than the {} values (4 GiB) the mode \
                 images may take; lower modes, channels or resolution",
                p.modes, p.channels, p.resolution, p.resolution, MAX_MODE_VALUES
            ));
        };
        let mode_seed = SplitMix64(seed ^ MODE_SALT).next_u64();
        let mut modes = Vec::new();
        modes
            .try_reserve_exact(all)
            .map_err(|e| format!("modes = {}: cannot allocate the mode images: {e}", p.modes))?;
        modes.resize(all, 0f32);
        let mut stats = Vec::with_capacity(p.modes);
        for (m, mode) in modes.chunks_exact_mut(per).enumerate() {
            let mut g = SplitMix64::for_index(mode_seed, m as u64);
            let mut st = ModeStats::default();
            for v in mode.iter_mut() {
                *v = g.next_f64() as f32;
                let mu = *v as f64;
                let (m2, m4) = clipped_residual_moments(mu, p.std);
                st.energy_mean += m2;
                st.energy_var += (m4 - m2 * m2).max(0.0);
                let q = norm_cdf((BOUND_TOL - mu) / p.std) + 1.0
                    - norm_cdf((1.0 - BOUND_TOL - mu) / p.std);
                st.bound_mean += q;
                st.bound_var += q * (1.0 - q);
            }
            stats.push(st);
        }
        Ok(GaussianMixture {
            res: p.resolution,
            channels: p.channels,
            size: p.size,
            std: p.std,
            seed,
            modes,
            stats,
        })
    }

    fn per(&self) -> usize {
        self.channels * self.res * self.res
    }

    /// Number of modes.
    pub fn mode_count(&self) -> usize {
        self.stats.len()
    }

    /// Mode `m` on the [0, 1] scale (CHW).
    pub fn mode(&self, m: usize) -> &[f32] {
        let per = self.per();
        &self.modes[m * per..(m + 1) * per]
    }

    /// Writes sample `index` (CHW, [−1, 1]) into `out` and returns the mode it was drawn from.
    pub fn draw(&self, index: u64, out: &mut [f32]) -> usize {
        let mut g = SplitMix64::for_index(self.seed, index);
        let m = g.below(self.mode_count() as u64) as usize;
        for (o, &mu) in out.iter_mut().zip(self.mode(m)) {
            let x = (mu as f64 + self.std * g.normal()).clamp(0.0, 1.0);
            *o = (x * 2.0 - 1.0) as f32;
        }
        m
    }

    /// Rule-validity score of one image in [0, 1]: how well it is explained as mode + noise.
    ///
    /// The image is mapped back to [0, 1] and its nearest mode μ (in L2) found. Two statistics of
    /// the residual are compared with their distribution under the model (clipped N(0, std²)
    /// noise around each mode value, moments in closed form):
    /// - the residual energy `S = Σ (x − μ)²`, giving `z_e = (S − E[S]) / sd(S)`;
    /// - the number `K` of values within 0.01 of the bounds 0 or 1 (clipping puts a large share
    ///   of the values exactly there), giving `z_k = (K − E[K]) / max(sd(K), 1)`.
    ///
    /// The score is `exp(−(z_e² + z_k²) / 32)`: ≈ 0.94 on average for true samples, 0.61 when one
    /// statistic is four standard deviations off, ≈ 0 for images far from every mode (uniform
    /// noise, flat or structured images), blends of samples, and noise-free copies of a mode.
    pub fn score(&self, img: &[f32]) -> f32 {
        let mut best = (f64::INFINITY, 0);
        for m in 0..self.mode_count() {
            let mut s = 0.0f64;
            for (&y, &mu) in img.iter().zip(self.mode(m)) {
                let d = (y as f64 + 1.0) * 0.5 - mu as f64;
                s += d * d;
            }
            if s < best.0 {
                best = (s, m);
            }
        }
        let (s, m) = best;
        let st = self.stats[m];
        let k = img
            .iter()
            .filter(|&&y| {
                let x = (y as f64 + 1.0) * 0.5;
                x <= BOUND_TOL || x >= 1.0 - BOUND_TOL
            })
            .count() as f64;
        let z_e = (s - st.energy_mean) / st.energy_var.sqrt().max(1e-12);
        let z_k = (k - st.bound_mean) / st.bound_var.sqrt().max(1.0);
        (-(z_e * z_e + z_k * z_k) / 32.0).exp() as f32
    }
}

/// Standard normal CDF.
fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal density.
fn norm_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// `(E[r²], E[r⁴])` of the residual `r = clip(μ + ε, 0, 1) − μ`, `ε ~ N(0, s²)`.
fn clipped_residual_moments(mu: f64, s: f64) -> (f64, f64) {
    let (a, b) = (-mu, 1.0 - mu);
    let (al, be) = (a / s, b / s);
    let (ca, cb) = (norm_cdf(al), norm_cdf(be));
    let (pa, pb) = (norm_pdf(al), norm_pdf(be));
    // ∫_α^β z²φ = [Φ] − [zφ];  ∫_α^β z⁴φ = 3[Φ] − [(z³ + 3z)φ].
    let i2 = (cb - ca) - (be * pb - al * pa);
    let i4 = 3.0 * (cb - ca) - ((be.powi(3) + 3.0 * be) * pb - (al.powi(3) + 3.0 * al) * pa);
    let tail_lo = ca;
    let tail_hi = 1.0 - cb;
    let m2 = s * s * i2 + a * a * tail_lo + b * b * tail_hi;
    let m4 = s.powi(4) * i4 + a.powi(4) * tail_lo + b.powi(4) * tail_hi;
    (m2, m4)
}

impl Dataset for GaussianMixture {
    fn shape(&self) -> PResult<DatasetShape> {
        Ok(DatasetShape {
            channels: self.channels,
            height: self.res,
            width: self.res,
            len: self.size,
            class_names: vec!["gaussian-mixture".into()],
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

    fn make(extra: &str) -> GaussianMixture {
        GaussianMixture::from_params(&Params::with_defaults(extra, super::PARAMS).unwrap(), 11)
            .unwrap()
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207_050_285_1).abs() < 1e-7);
        assert!((erfc(-0.5) - 1.520_499_877_813_047).abs() < 1e-7);
        assert!((norm_cdf(1.96) - 0.975_002_104_851_780).abs() < 1e-7);
    }

    #[test]
    fn clipped_moments_match_simulation() {
        let mut g = SplitMix64(3);
        for &(mu, s) in &[(0.5, 0.5), (0.1, 0.5), (0.9, 0.2), (0.5, 0.01)] {
            let n = 200_000;
            let (mut m2, mut m4) = (0.0, 0.0);
            for _ in 0..n {
                let r: f64 = (mu + s * g.normal()).clamp(0.0, 1.0) - mu;
                m2 += r * r;
                m4 += r.powi(4);
            }
            let (e2, e4) = clipped_residual_moments(mu, s);
            let (m2, m4) = (m2 / n as f64, m4 / n as f64);
            assert!((m2 / e2 - 1.0).abs() < 0.02, "{mu} {s}: {m2} vs {e2}");
            assert!((m4 / e4 - 1.0).abs() < 0.05, "{mu} {s}: {m4} vs {e4}");
        }
    }

    #[test]
    fn modes_are_uniform_and_all_used() {
        let gm = make("resolution = 8\nsize = 5000");
        assert_eq!(gm.mode_count(), 100);
        let all = &gm.modes;
        let n = all.len() as f64;
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = all.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.005, "{var}");
        assert!(all.iter().all(|v| (0.0..1.0).contains(v)));

        let mut counts = [0usize; 100];
        let mut img = vec![0f32; 192];
        for i in 0..5000 {
            counts[gm.draw(i, &mut img)] += 1;
        }
        // 50 expected per mode; every mode used, none wildly over- or under-represented.
        assert!(counts.iter().all(|&c| (20..=85).contains(&c)), "{counts:?}");
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 50.0).powi(2) / 50.0)
            .sum();
        assert!(chi2 < 160.0, "chi² {chi2} with 99 dof");
    }

    #[test]
    fn mode_count_param() {
        let gm = make("resolution = 4\nmodes = 3");
        let mut img = vec![0f32; 48];
        let used: std::collections::BTreeSet<usize> =
            (0..200).map(|i| gm.draw(i, &mut img)).collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn noise_statistics_account_for_clipping() {
        // Residual energy per value matches the clipped-noise closed form; with a small std the
        // residuals of mid-range mode values are plain N(0, std²).
        for (std, tol) in [(0.5, 0.01), (0.05, 0.02)] {
            let gm = make(&format!("resolution = 8\nstd = {std}"));
            let mut img = vec![0f32; 192];
            let (mut got, mut want, mut n) = (0.0, 0.0, 0usize);
            let (mut mid_sq, mut mid_n) = (0.0, 0usize);
            let mut clipped = 0usize;
            for i in 0..400 {
                let m = gm.draw(i, &mut img);
                assert!(img.iter().all(|v| (-1.0..=1.0).contains(v)));
                for (&y, &mu) in img.iter().zip(gm.mode(m)) {
                    let x = (y as f64 + 1.0) / 2.0;
                    let r = x - mu as f64;
                    got += r * r;
                    want += clipped_residual_moments(mu as f64, std).0;
                    n += 1;
                    if x == 0.0 || x == 1.0 {
                        clipped += 1;
                    }
                    if (0.3..0.7).contains(&mu) {
                        mid_sq += r * r;
                        mid_n += 1;
                    }
                }
            }
            let (got, want) = (got / n as f64, want / n as f64);
            assert!((got / want - 1.0).abs() < tol, "std {std}: {got} vs {want}");
            if std < 0.1 {
                let s = (mid_sq / mid_n as f64).sqrt();
                assert!((s / std - 1.0).abs() < 0.03, "{s}");
            } else {
                // Heavy clipping at std 0.5: P(clip) = E_μ[Φ(−μ/σ) + Φ((μ−1)/σ)] ≈ 0.390.
                let frac = clipped as f64 / n as f64;
                assert!((frac - 0.390).abs() < 0.02, "{frac}");
            }
        }
    }

    #[test]
    fn deterministic_per_index() {
        let gm = make("resolution = 4");
        let (mut a, mut b, mut c) = (vec![0f32; 48], vec![0f32; 48], vec![0f32; 48]);
        gm.draw(9, &mut a);
        gm.draw(9, &mut b);
        gm.draw(10, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Same seed → same modes and samples in a fresh instance; another seed differs.
        let again = make("resolution = 4");
        let mut d = vec![0f32; 48];
        again.draw(9, &mut d);
        assert_eq!(a, d);
        let other = GaussianMixture::from_params(
            &Params::with_defaults("resolution = 4", super::PARAMS).unwrap(),
            12,
        )
        .unwrap();
        assert_ne!(other.mode(0), gm.mode(0));
        // fill agrees with draw and labels everything 0.
        let mut imgs = vec![0f32; 96];
        let mut labels = vec![7i64; 2];
        gm.fill(&[10, 9], &mut imgs, &mut labels).unwrap();
        assert_eq!(&imgs[..48], &c[..]);
        assert_eq!(&imgs[48..], &a[..]);
        assert_eq!(labels, vec![0, 0]);
        assert!(
            gm.fill(&[1 << 40], &mut imgs[..48], &mut labels[..1])
                .is_err()
        );
    }

    #[test]
    fn validity_separates_samples_from_others() {
        let gm = make("resolution = 16");
        let per = 3 * 256;
        let mut img = vec![0f32; per];
        let mut own = Vec::new();
        for i in 0..20 {
            gm.draw(i, &mut img);
            own.push(gm.score(&img));
        }
        let mean = own.iter().sum::<f32>() / own.len() as f32;
        assert!(mean > 0.85, "{own:?}");
        assert!(own.iter().all(|&s| s > 0.4), "{own:?}");

        let mut g = SplitMix64(5);
        let noise: Vec<f32> = (0..per)
            .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        assert!(gm.score(&noise) < 0.01, "{}", gm.score(&noise));
        assert!(gm.score(&vec![0.2; per]) < 0.01);
        // A Mondrian-like image: four flat quadrants.
        let flat: Vec<f32> = (0..per)
            .map(|k| if (k % 256) < 128 { 0.6 } else { -0.4 })
            .collect();
        assert!(gm.score(&flat) < 0.01);
        // A noise-free mode and a blend of two samples are not samples either.
        let mode: Vec<f32> = gm.mode(4).iter().map(|&v| v * 2.0 - 1.0).collect();
        assert!(gm.score(&mode) < 0.01);
        let mut other = vec![0f32; per];
        let m0 = gm.draw(0, &mut img);
        let mut j = 1;
        while gm.draw(j, &mut other) == m0 {
            j += 1;
        }
        let blend: Vec<f32> = img.iter().zip(&other).map(|(a, b)| (a + b) / 2.0).collect();
        assert!(gm.score(&blend) < 0.05, "{}", gm.score(&blend));

        let mut scores = vec![0f32; 2];
        let mut both = noise.clone();
        gm.draw(3, &mut img);
        both.extend_from_slice(&img);
        gm.validity(&both, &mut scores).unwrap().unwrap();
        assert!(scores[0] < 0.01 && scores[1] > 0.4, "{scores:?}");
        assert!(gm.validity(&[], &mut []).unwrap().is_ok());
    }

    #[test]
    fn rejects_bad_params() {
        let e = GaussianMixture::from_params(
            &Params::with_defaults("mode = 3", super::PARAMS).unwrap(),
            0,
        )
        .err()
        .unwrap();
        assert!(e.contains("unknown field `mode`"), "{e}");
        for bad in [
            "std = 0.0",
            "modes = 0",
            "channels = 0",
            "size = 0",
            "resolution = 0",
        ] {
            assert!(
                GaussianMixture::from_params(
                    &Params::with_defaults(bad, super::PARAMS).unwrap(),
                    0
                )
                .is_err(),
                "{bad}"
            );
        }
    }
}
