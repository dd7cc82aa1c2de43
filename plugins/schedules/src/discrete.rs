//! Discrete DDPM schedules (improved-diffusion, Nichol & Dhariwal 2021) in σ-space.
//!
//! A schedule of T betas β_0..β_{T−1} gives ᾱ_t = Π_{s≤t}(1 − β_s) and the σ-space noise
//! levels σ_t = √((1 − ᾱ_t)/ᾱ_t), since x_t = √ᾱ_t·(y + σ_t·n). The ε-prediction network then
//! reads D(x; σ) = x − σ·ε̂(x/√(σ²+1); t), i.e. c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), and
//! is conditioned on the timestep t (rescaled to t·1000/T by default, as improved-diffusion's
//! `rescale_timesteps`). The `linear` and `cosine` components build their betas and share
//! this type.

use memlab_plugin_api::prelude::*;

/// Parameters shared by the discrete schedules.
pub const PARAMS: &[Param] = &[
    param(
        "steps",
        "int",
        "1000",
        "T, the number of diffusion timesteps (improved-diffusion uses 4000 with cosine)",
    ),
    param(
        "rescale_timesteps",
        "bool",
        "true",
        "feed the network t·1000/T (improved-diffusion's default); false feeds the raw t",
    ),
];

/// Parsed [`PARAMS`].
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct DiscreteParams {
    /// T, the number of timesteps.
    pub steps: usize,
    /// Whether c_noise is t·1000/T (true) or t (false).
    pub rescale_timesteps: bool,
}

impl DiscreteParams {
    /// Parses and checks the parameter table (T ≥ 1).
    pub fn parse(params: &Params) -> PResult<DiscreteParams> {
        let p: DiscreteParams = params.parse()?;
        if p.steps == 0 {
            return Err("steps (T) must be at least 1".into());
        }
        Ok(p)
    }
}

/// ᾱ_t = Π_{s≤t}(1 − β_s), accumulated in order like `numpy.cumprod`.
pub fn alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// σ-space noise level of a step with cumulative ᾱ: √((1 − ᾱ)/ᾱ).
pub fn sigma_of_alpha_bar(alpha_bar: f64) -> f64 {
    ((1.0 - alpha_bar) / alpha_bar).sqrt()
}

/// The timesteps improved-diffusion's `space_timesteps(T, [count])` keeps, ascending:
/// round(i·(T−1)/(count−1)) for i in 0..count (Python's round, ties to even, with the stride
/// accumulated by repeated addition as there), so both t = 0 and t = T−1 are kept. With
/// `count = 1` the stride is 1 and only t = 0 is kept, as in improved-diffusion.
pub fn space_timesteps(num_timesteps: usize, count: usize) -> PResult<Vec<usize>> {
    if count == 0 {
        return Err("need at least one timestep".into());
    }
    if count > num_timesteps {
        return Err(format!(
            "cannot respace {num_timesteps} timesteps into {count} steps: at most {num_timesteps}"
        ));
    }
    let stride = if count > 1 {
        (num_timesteps - 1) as f64 / (count - 1) as f64
    } else {
        1.0
    };
    let mut cur = 0.0f64;
    let mut taken = Vec::with_capacity(count);
    for _ in 0..count {
        taken.push(cur.round_ties_even() as usize);
        cur += stride;
    }
    // improved-diffusion collects them in a set; with stride ≥ 1 they are already distinct.
    taken.sort_unstable();
    taken.dedup();
    if taken.len() != count {
        return Err(format!(
            "respacing {num_timesteps} timesteps into {count} produced duplicates"
        ));
    }
    Ok(taken)
}

/// Betas of the respaced process over ascending `timesteps`:
/// β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}, with ᾱ_{t_{−1}} = 1 (improved-diffusion's `SpacedDiffusion`).
pub fn respaced_betas(alphas_cumprod: &[f64], timesteps: &[usize]) -> Vec<f64> {
    let mut last = 1.0;
    timesteps
        .iter()
        .map(|&t| {
            let a = alphas_cumprod[t];
            let b = 1.0 - a / last;
            last = a;
            b
        })
        .collect()
}

/// A discrete DDPM schedule in σ-space (ε-prediction, as improved-diffusion).
#[derive(Debug, Clone)]
pub struct Discrete {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// σ_t, strictly increasing in t.
    sigmas: Vec<f64>,
    rescale_timesteps: bool,
}

impl Discrete {
    /// Builds the schedule from its betas, each in (0, 1).
    pub fn from_betas(betas: Vec<f64>, rescale_timesteps: bool) -> PResult<Discrete> {
        if betas.is_empty() {
            return Err("a discrete schedule needs at least one beta".into());
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(format!(
                "beta_{i} = {b} is outside (0, 1); use more timesteps (larger `steps`)"
            ));
        }
        let alphas_cumprod = alphas_cumprod(&betas);
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&a| sigma_of_alpha_bar(a))
            .collect();
        if let Some(s) = sigmas.iter().find(|s| !s.is_finite()) {
            return Err(format!(
                "σ = {s} is not finite: ᾱ underflowed, use fewer timesteps"
            ));
        }
        Ok(Discrete {
            betas,
            alphas_cumprod,
            sigmas,
            rescale_timesteps,
        })
    }

    /// T, the number of timesteps.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for t in 0..T.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_t for t in 0..T.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// σ_t for t in 0..T, increasing.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Timestep whose σ_t is nearest to `sigma` (the lower one on a tie, like EDM's
    /// `round_sigma` argmin).
    pub fn timestep(&self, sigma: f64) -> usize {
        let s = &self.sigmas;
        let i = s.partition_point(|&x| x < sigma);
        if i == 0 {
            0
        } else if i == s.len() {
            s.len() - 1
        } else if sigma - s[i - 1] <= s[i] - sigma {
            i - 1
        } else {
            i
        }
    }

    /// The network's timestep input for t: t·1000/T when rescaling, else t.
    pub fn timestep_input(&self, t: usize) -> f64 {
        if self.rescale_timesteps {
            t as f64 * 1000.0 / self.steps() as f64
        } else {
            t as f64
        }
    }

    /// Ascending timesteps kept for `count` sampling steps ([`space_timesteps`]).
    pub fn respaced_timesteps(&self, count: usize) -> PResult<Vec<usize>> {
        space_timesteps(self.steps(), count)
    }

    /// Betas of the process respaced to `count` steps ([`respaced_betas`]), ascending in t.
    pub fn respaced_betas(&self, count: usize) -> PResult<Vec<f64>> {
        let ts = self.respaced_timesteps(count)?;
        Ok(respaced_betas(&self.alphas_cumprod, &ts))
    }
}

impl NoiseSchedule for Discrete {
    /// t = ⌊u·T⌋ (uniform over 0..T), σ = σ_t.
    fn training_sigmas(&self, uniform: &[f64], _normal: &[f64], out: &mut [f64]) -> PResult<()> {
        if uniform.len() != out.len() {
            return Err(format!(
                "{} uniform draws for {} σ",
                uniform.len(),
                out.len()
            ));
        }
        let n = self.steps();
        for (o, &u) in out.iter_mut().zip(uniform) {
            if !(0.0..=1.0).contains(&u) {
                return Err(format!("uniform draw {u} is outside [0, 1]"));
            }
            let t = ((u * n as f64).floor() as usize).min(n - 1);
            *o = self.sigmas[t];
        }
        Ok(())
    }

    /// c_noise is the (rescaled) timestep of the nearest σ_t.
    fn precond(&self, sigma: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: -sigma,
            c_in: 1.0 / (sigma * sigma + 1.0).sqrt(),
            c_noise: self.timestep_input(self.timestep(sigma)),
        }
    }

    /// 1/σ²: the σ-space loss λ‖D − y‖² then equals the ε-MSE ‖ε̂ − ε‖².
    fn loss_weight(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma)
    }

    /// σ at the respaced timesteps, descending from t = T−1, then 0.
    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>> {
        let ts = self.respaced_timesteps(steps)?;
        let mut s: Vec<f64> = ts.iter().rev().map(|&t| self.sigmas[t]).collect();
        s.push(0.0);
        Ok(s)
    }

    fn round_sigma(&self, sigma: f64) -> f64 {
        self.sigmas[self.timestep(sigma)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_improved_diffusion() {
        // space_timesteps(1000, [10]): stride 111, both ends kept.
        assert_eq!(
            space_timesteps(1000, 10).unwrap(),
            [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
        );
        // space_timesteps(4000, [100]): stride 3999/99 = 40.39..., rounded.
        let ts = space_timesteps(4000, 100).unwrap();
        assert_eq!(ts.len(), 100);
        assert_eq!(&ts[..4], &[0, 40, 81, 121]);
        assert_eq!(ts[99], 3999);
        // Python rounds half to even: space_timesteps(6, [3]) strides 2.5 -> 0, 2 (2.5), 5.
        assert_eq!(space_timesteps(6, 3).unwrap(), [0, 2, 5]);
        assert_eq!(space_timesteps(8, 8).unwrap(), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(space_timesteps(8, 1).unwrap(), [0]);
        assert!(space_timesteps(8, 9).is_err());
        assert!(space_timesteps(8, 0).is_err());
    }

    #[test]
    fn respaced_betas_follow_alpha_bar_ratios() {
        let betas = [0.1, 0.2, 0.3, 0.4, 0.5];
        // ᾱ = 0.9, 0.72, 0.504, 0.3024, 0.1512
        let ac = alphas_cumprod(&betas);
        let expect_ac = [0.9, 0.72, 0.504, 0.3024, 0.1512];
        for (a, e) in ac.iter().zip(expect_ac) {
            assert!((a - e).abs() < 1e-12);
        }
        let b = respaced_betas(&ac, &[0, 2, 4]);
        assert!((b[0] - 0.1).abs() < 1e-12);
        assert!((b[1] - (1.0 - 0.504 / 0.9)).abs() < 1e-12);
        assert!((b[2] - (1.0 - 0.1512 / 0.504)).abs() < 1e-12);
        // Keeping every step gives back the original betas.
        let all = respaced_betas(&ac, &[0, 1, 2, 3, 4]);
        for (x, y) in all.iter().zip(betas) {
            assert!((x - y).abs() < 1e-12);
        }
        // The method respaces with space_timesteps: 5 into 3 keeps 0, 2, 4.
        let d = Discrete::from_betas(betas.to_vec(), true).unwrap();
        assert_eq!(d.respaced_betas(3).unwrap(), b);
    }

    #[test]
    fn nearest_timestep_and_rounding() {
        let d = Discrete::from_betas(vec![0.1, 0.2, 0.3, 0.4, 0.5], false).unwrap();
        let s = d.sigmas().to_vec();
        // σ_0 = √(0.1/0.9) = 1/3.
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.timestep(0.0), 0);
        assert_eq!(d.timestep(1e9), 4);
        assert_eq!(d.timestep(s[2]), 2);
        assert_eq!(d.timestep(s[2] + 0.4 * (s[3] - s[2])), 2);
        assert_eq!(d.timestep(s[2] + 0.6 * (s[3] - s[2])), 3);
        assert_eq!(d.round_sigma(s[1] * 1.01), s[1]);
        // Raw timesteps when not rescaled.
        assert_eq!(d.precond(s[3]).c_noise, 3.0);
    }

    #[test]
    fn rejects_bad_betas() {
        assert!(Discrete::from_betas(vec![0.1, 1.0], true).is_err());
        assert!(Discrete::from_betas(vec![0.0, 0.1], true).is_err());
        assert!(Discrete::from_betas(vec![], true).is_err());
    }
}
