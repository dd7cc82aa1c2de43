//! improved-diffusion's `linear` DDPM schedule (Ho et al. 2020, scaled to T steps).

use memlab_plugin_api::prelude::*;

use crate::discrete::{Discrete, DiscreteParams};

/// T linearly spaced betas from 1e-4·(1000/T) to 0.02·(1000/T), like
/// `numpy.linspace(start, end, T)` (last value exactly `end`). Valid (β < 1) only for T > 20.
pub fn betas(steps: usize) -> Vec<f64> {
    let scale = 1000.0 / steps as f64;
    let (start, end) = (scale * 1e-4, scale * 0.02);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f64;
    let mut b: Vec<f64> = (0..steps).map(|i| start + i as f64 * step).collect();
    b[steps - 1] = end;
    b
}

/// Builds the schedule from [`crate::discrete::PARAMS`].
pub fn from_params(params: &Params, _seed: u64) -> PResult<Discrete> {
    let p = DiscreteParams::parse(params)?;
    if p.steps <= 20 {
        return Err(format!(
            "the linear schedule needs steps > 20 (its last beta is 20/steps), got {}",
            p.steps
        ));
    }
    Discrete::from_betas(betas(p.steps), p.rescale_timesteps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn endpoints_scale_with_1000_over_t() {
        let b = betas(1000);
        assert_eq!(b.len(), 1000);
        assert!(close(b[0], 1e-4, 1e-12));
        assert_eq!(b[999], 0.02);
        assert!(close(b[1], 1e-4 + (0.02 - 1e-4) / 999.0, 1e-12));
        let b = betas(4000);
        assert!(close(b[0], 2.5e-5, 1e-12));
        assert!(close(b[3999], 0.005, 1e-12));
        let b = betas(100);
        assert!(close(b[0], 1e-3, 1e-12));
        assert!(close(b[99], 0.2, 1e-12));
    }

    #[test]
    fn sigmas_and_precond() {
        let d = from_params(
            &Params::with_defaults("", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(d.steps(), 1000);
        // ᾱ_0 = 1 − 1e-4, so σ_0 = √(1e-4/0.9999).
        let s0 = (1e-4f64 / 0.9999).sqrt();
        assert!(close(d.sigmas()[0], s0, 1e-12));
        // Reference values (improved-diffusion's numpy schedule, float64).
        assert!(close(d.alphas_cumprod()[500], 0.07779665836502389, 1e-10));
        assert!(close(d.alphas_cumprod()[999], 4.035829765375676e-05, 1e-9));
        assert!(close(d.sigmas()[999], 157.40728081040757, 1e-9));
        let s = d.sigmas()[700];
        let p = d.precond(s);
        assert_eq!(p.c_skip, 1.0);
        assert_eq!(p.c_out, -s);
        assert!(close(p.c_in, 1.0 / (s * s + 1.0).sqrt(), 1e-12));
        // c_in = √ᾱ_t: x_t = √ᾱ_t·(y + σ_t·n).
        assert!(close(p.c_in, d.alphas_cumprod()[700].sqrt(), 1e-12));
        assert_eq!(p.c_noise, 700.0);
        assert!(close(d.loss_weight(s), 1.0 / (s * s), 1e-12));
    }

    #[test]
    fn rescaled_timesteps_and_raw() {
        let d = from_params(
            &Params::with_defaults("steps = 4000", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(d.precond(d.sigmas()[2000]).c_noise, 500.0);
        assert_eq!(d.precond(d.sigmas()[3999]).c_noise, 3999.0 / 4.0);
        let raw = "steps = 4000\nrescale_timesteps = false";
        let d = from_params(
            &Params::with_defaults(raw, crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(d.precond(d.sigmas()[2000]).c_noise, 2000.0);
    }

    #[test]
    fn rejects_too_few_steps() {
        assert!(
            from_params(
                &Params::with_defaults("steps = 20", crate::discrete::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
        assert!(
            from_params(
                &Params::with_defaults("steps = 0", crate::discrete::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
        assert!(
            from_params(
                &Params::with_defaults("step = 10", crate::discrete::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
        assert!(
            from_params(
                &Params::with_defaults("steps = 21", crate::discrete::PARAMS).unwrap(),
                0
            )
            .is_ok()
        );
    }

    #[test]
    fn training_sigmas_cover_the_grid() {
        let d = from_params(
            &Params::with_defaults("", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        let u = [0.0, 0.5, 0.0015, 1.0 - 1e-12];
        let mut out = [0.0; 4];
        d.training_sigmas(&u, &[0.0; 4], &mut out).unwrap();
        let s = d.sigmas();
        assert_eq!(out, [s[0], s[500], s[1], s[999]]);
        assert_eq!(s[0], *s.iter().min_by(|a, b| a.total_cmp(b)).unwrap());
        assert_eq!(s[999], *s.iter().max_by(|a, b| a.total_cmp(b)).unwrap());
    }

    #[test]
    fn respaced_sampling() {
        let d = from_params(
            &Params::with_defaults("", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        let s = d.sampling_sigmas(50).unwrap();
        assert_eq!(s.len(), 51);
        assert_eq!(s[0], d.sigmas()[999]);
        assert_eq!(s[49], d.sigmas()[0]);
        assert_eq!(s[50], 0.0);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        // space_timesteps(1000, [50]) keeps 0, 20, 41, ...: σ_20 is second to last.
        assert_eq!(s[48], d.sigmas()[20]);
        // Respaced betas 1 − ᾱ_{t_i}/ᾱ_{t_(i−1)} (improved-diffusion reference values).
        let b = d.respaced_betas(50).unwrap();
        assert_eq!(b.len(), 50);
        assert!(close(b[0], 9.999999999998899e-05, 1e-9));
        assert!(close(b[1], 0.006165187946595374, 1e-9));
        assert!(close(b[49], 0.32980906609465954, 1e-9));
        // The respaced chain has the same ᾱ at the kept steps: Π(1 − β'_i) = ᾱ_{t_k}.
        let prod: f64 = b.iter().map(|x| 1.0 - x).product();
        assert!(close(prod, d.alphas_cumprod()[999], 1e-9));
        assert!(d.sampling_sigmas(1001).is_err());
    }
}
