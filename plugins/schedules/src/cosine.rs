//! improved-diffusion's `cosine` DDPM schedule (Nichol & Dhariwal 2021, eq. 17).

use memlab_plugin_api::prelude::*;

use crate::discrete::{Discrete, DiscreteParams};

/// Largest beta: improved-diffusion clips β_i at 0.999 to avoid the singularity at t = T.
pub const MAX_BETA: f64 = 0.999;

/// ᾱ(τ) = cos²((τ + 0.008)/1.008 · π/2) for τ = t/T in [0, 1].
pub fn alpha_bar(tau: f64) -> f64 {
    ((tau + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
        .cos()
        .powi(2)
}

/// β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999) for i in 0..T.
pub fn betas(steps: usize) -> Vec<f64> {
    let n = steps as f64;
    (0..steps)
        .map(|i| {
            let (t1, t2) = (i as f64 / n, (i + 1) as f64 / n);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(MAX_BETA)
        })
        .collect()
}

/// Builds the schedule from [`crate::discrete::PARAMS`].
pub fn from_params(params: &Params, _seed: u64) -> PResult<Discrete> {
    let p = DiscreteParams::parse(params)?;
    Discrete::from_betas(betas(p.steps), p.rescale_timesteps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn alpha_bar_values() {
        // ᾱ(0) = cos²(0.008/1.008·π/2), ᾱ(1) = cos²(π/2) ≈ 0.
        let a0 = (0.008f64 / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2);
        assert!(close(alpha_bar(0.0), a0, 1e-14));
        assert!(alpha_bar(1.0) < 1e-30);
        let half = (0.508f64 / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2);
        assert!(close(alpha_bar(0.5), half, 1e-14));
    }

    #[test]
    fn betas_and_final_clip() {
        let b = betas(1000);
        assert_eq!(b.len(), 1000);
        let a = |i: f64| alpha_bar(i / 1000.0);
        assert!(close(b[0], 1.0 - a(1.0) / a(0.0), 1e-12));
        assert!(close(b[0], 4.128422482196914e-05, 1e-9));
        assert!(close(b[998], 0.7499993929011166, 1e-9));
        // 1 − ᾱ(1)/ᾱ(0.999) is 1 up to rounding: clipped.
        assert_eq!(b[999], MAX_BETA);
        assert!(b[..999].iter().all(|&x| x < MAX_BETA));
        let b = betas(4000);
        assert!(close(b[0], 9.865818813681315e-06, 1e-9));
        assert_eq!(b[3999], MAX_BETA);
    }

    #[test]
    fn cumulative_alpha_bar_tracks_the_closed_form() {
        let d = from_params(
            &Params::with_defaults("", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        let ac = d.alphas_cumprod();
        // Before the clip Π(1 − β_s) telescopes to ᾱ((t+1)/T)/ᾱ(0).
        for t in [0usize, 10, 499, 900, 998] {
            let expect = alpha_bar((t + 1) as f64 / 1000.0) / alpha_bar(0.0);
            assert!(close(ac[t], expect, 1e-9), "t = {t}: {} vs {expect}", ac[t]);
        }
        assert!(close(ac[500], 0.49228517244880304, 1e-10));
        assert!(close(ac[999], 2.4287669070348567e-09, 1e-6));
        assert!(close(d.sigmas()[999], 20291.169610019886, 1e-6));
        assert!(close(d.sigmas()[0], 0.006425412771142061, 1e-9));
    }

    #[test]
    fn precond_and_weight() {
        let d = from_params(
            &Params::with_defaults("steps = 4000", crate::discrete::PARAMS).unwrap(),
            0,
        )
        .unwrap();
        let s = d.sigmas()[1234];
        let p = d.precond(s);
        assert_eq!((p.c_skip, p.c_out), (1.0, -s));
        assert!(close(p.c_in, 1.0 / (1.0 + s * s).sqrt(), 1e-12));
        assert!(close(p.c_noise, 1234.0 * 1000.0 / 4000.0, 1e-12));
        assert!(close(d.loss_weight(s), 1.0 / (s * s), 1e-12));
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
        assert!(close(b[0], 4.128422482196914e-05, 1e-9));
        assert!(close(b[1], 0.0018445632572497983, 1e-9));
        assert!(close(b[49], 0.9999974991924032, 1e-9));
        // The respaced chain has the same ᾱ at the kept steps: Π(1 − β'_i) = ᾱ_{t_k}.
        let prod: f64 = b.iter().map(|x| 1.0 - x).product();
        assert!(close(prod, d.alphas_cumprod()[999], 1e-9));
        assert!(d.sampling_sigmas(1001).is_err());
    }
}
