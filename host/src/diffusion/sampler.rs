//! Samplers as pure functions over a σ sequence and one denoiser D(x; σ), k-diffusion style.
//!
//! All work in σ-space (x_σ = y + σ·n), so one implementation serves every formulation:
//! - `euler`: first-order probability-flow ODE steps, dx/dσ = (x − D(x; σ))/σ. Over a DDPM
//!   schedule's respaced σ this *is* DDIM with η = 0 (Song et al. 2021; Karras et al. 2022 §3),
//!   so `ddim` is the same update (improved-diffusion's `ddim_sample_loop`, η = 0).
//! - `heun`: EDM's `edm_sampler` (Karras et al. 2022, Algorithm 2): optional churn (the noise
//!   level raised from σ to σ̂ = σ(1 + γ) by fresh noise, γ = min(S_churn/N, √2 − 1) for
//!   σ in [S_min, S_max]), an Euler step from σ̂ and a trapezoidal correction, except on the
//!   last step to σ = 0 (N steps → 2N − 1 evaluations). Churn 0 is Algorithm 1.
//! - `ddpm`: ancestral sampling. From σ to σ' the DDPM posterior in σ-space is
//!   N(D + (σ'²/σ²)(x − D), σ'²(σ² − σ'²)/σ²), which equals improved-diffusion's
//!   `p_sample` with the fixed-small variance β̃ on the same (respaced) timesteps.
//!
//! `clip_denoised` clamps D to [−1, 1] before it is used, as improved-diffusion's loops do by
//! default (`clip_denoised=True`); EDM's sampler does not clip. `tests/samplers.rs` checks
//! every sampler against the reference implementations' own trajectories.

use anyhow::{Result, bail};
use burn::tensor::Tensor;

use crate::config::choices::{Churn, Sampler, SamplerSettings};

/// γ of EDM's churn at σ = `s` for a run of `steps` steps: min(S_churn/N, √2 − 1) inside
/// [S_min, S_max], else 0.
fn gamma(churn: &Churn, s: f64, steps: usize) -> f64 {
    if churn.s_churn > 0.0 && churn.s_min <= s && s <= churn.s_max {
        (churn.s_churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
    } else {
        0.0
    }
}

/// Runs a sampler down `sigmas` (decreasing, ending at 0) from `x` (noise already scaled to
/// `sigmas[0]`). `denoise(x, σ)` is D; `noise(like)` draws standard normal noise shaped like
/// its argument (used by `ddpm` and by churn, in step order). `on_step(i)` is called after
/// each step. A step that produces non-finite values stops the run with the step and σ named.
pub fn sample(
    settings: SamplerSettings,
    sigmas: &[f64],
    mut x: Tensor<4>,
    denoise: &mut dyn FnMut(Tensor<4>, f64) -> Result<Tensor<4>>,
    noise: &mut dyn FnMut(&Tensor<4>) -> Tensor<4>,
    on_step: &mut dyn FnMut(usize),
) -> Result<Tensor<4>> {
    if sigmas.len() < 2 || *sigmas.last().unwrap() != 0.0 {
        bail!("σ sequence must have at least two values and end with 0");
    }
    let SamplerSettings {
        kind,
        churn,
        clip_denoised,
    } = settings;
    if churn.s_churn > 0.0 && matches!(kind, Sampler::Ddpm | Sampler::Ddim) {
        bail!("churn applies to the heun and euler samplers, not {kind}");
    }
    let mut d_of = |x: Tensor<4>, s: f64| -> Result<Tensor<4>> {
        let d = denoise(x, s)?;
        Ok(if clip_denoised { d.clamp(-1.0, 1.0) } else { d })
    };
    let n = sigmas.len() - 1;
    for i in 0..n {
        let (s_cur, s_next) = (sigmas[i], sigmas[i + 1]);
        // Churn: raise the noise level from σ to σ̂ with fresh noise.
        let gamma = gamma(&churn, s_cur, n);
        let s = s_cur + gamma * s_cur;
        if gamma > 0.0 {
            let z = noise(&x);
            x = x + z.mul_scalar((s * s - s_cur * s_cur).sqrt() * churn.s_noise);
        }
        let d = d_of(x.clone(), s)?;
        x = match kind {
            Sampler::Euler | Sampler::Ddim => euler_step(x, d, s, s_next),
            Sampler::Heun => {
                let x_e = euler_step(x.clone(), d.clone(), s, s_next);
                if s_next == 0.0 {
                    x_e
                } else {
                    let d2 = d_of(x_e.clone(), s_next)?;
                    // x̂ + (σ' − σ̂)·½(d_σ̂ + d_σ'), with d_σ = (x − D)/σ.
                    let slope = (x.clone() - d).div_scalar(s) + (x_e - d2).div_scalar(s_next);
                    x + slope.mul_scalar(0.5 * (s_next - s))
                }
            }
            Sampler::Ddpm => {
                if s_next == 0.0 {
                    d
                } else {
                    let ratio = s_next * s_next / (s * s);
                    let std = s_next * ((s * s - s_next * s_next) / (s * s)).sqrt();
                    let z = noise(&x);
                    d.clone() + (x - d).mul_scalar(ratio) + z.mul_scalar(std)
                }
            }
        };
        // The same guard as training's: a sampler that overflows (a σ_max too large for the
        // network, a diverged checkpoint) stops here instead of handing NaN or ±inf images to
        // the evaluation, where they would be scored as if they were images.
        if !x.clone().is_finite().all().into_scalar::<bool>() {
            bail!(
                "sampling diverged: step {} of {n} (σ {s:.4e} → {s_next:.4e}) produced \
                 non-finite values (NaN or ±inf); check the schedule's σ range and the weights",
                i + 1,
            );
        }
        on_step(i);
    }
    Ok(x)
}

fn euler_step(x: Tensor<4>, d: Tensor<4>, s: f64, s_next: f64) -> Tensor<4> {
    // x + (σ' − σ)·(x − D)/σ  =  D + (σ'/σ)(x − D)
    d.clone() + (x - d).mul_scalar(s_next / s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: f32) -> Tensor<4> {
        Tensor::<4>::from_data(TensorData::new(vec![v], [1, 1, 1, 1]), &Device::flex())
    }
    fn val(x: &Tensor<4>) -> f64 {
        x.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
    }

    /// For data concentrated at a single point y, D(x; σ) = y exactly and every deterministic
    /// sampler must land on y.
    #[test]
    fn point_mass_is_recovered_by_every_sampler() {
        let sigmas = [80.0, 10.0, 1.0, 0.1, 0.0];
        for s in [Sampler::Euler, Sampler::Heun, Sampler::Ddim, Sampler::Ddpm] {
            let mut d = |_x: Tensor<4>, _s: f64| Ok(t(0.7));
            let mut nz = |x: &Tensor<4>| x.zeros_like().add_scalar(1.0);
            let out = sample(
                SamplerSettings::plain(s),
                &sigmas,
                t(80.0 * 1.3),
                &mut d,
                &mut nz,
                &mut |_| (),
            )
            .unwrap();
            assert!((val(&out) - 0.7).abs() < 1e-5, "{s:?}: {}", val(&out));
        }
    }

    /// Gaussian data N(0, s_d²): D(x; σ) = x·s_d²/(s_d²+σ²) and the ODE solution from
    /// x(σ₀) is x·√((s_d²+σ²)/(s_d²+σ₀²)). Heun must be far more accurate than Euler.
    #[test]
    fn heun_is_second_order_on_a_gaussian() {
        let sd2 = 0.25f64;
        let sigmas: Vec<f64> = (0..=10)
            .map(|i| 10.0 * (0.9f64).powi(i * 4))
            .chain([0.0])
            .collect();
        let exact = |x0: f64| x0 * (sd2 / (sd2 + sigmas[0] * sigmas[0])).sqrt();
        let mut err = Vec::new();
        for s in [Sampler::Euler, Sampler::Heun] {
            let mut d = |x: Tensor<4>, sig: f64| Ok(x.mul_scalar(sd2 / (sd2 + sig * sig)));
            let mut nz = |x: &Tensor<4>| x.zeros_like();
            let out = sample(
                SamplerSettings::plain(s),
                &sigmas,
                t(20.0),
                &mut d,
                &mut nz,
                &mut |_| (),
            )
            .unwrap();
            err.push((val(&out) - exact(20.0)).abs());
        }
        assert!(err[1] < err[0] / 5.0, "euler {} heun {}", err[0], err[1]);
    }

    /// A denoiser that overflows stops the sampler with the step and σ named.
    #[test]
    fn non_finite_values_stop_sampling_at_their_step() {
        let sigmas = [80.0, 10.0, 1.0, 0.0];
        for s in [Sampler::Euler, Sampler::Heun, Sampler::Ddim, Sampler::Ddpm] {
            let mut d = |x: Tensor<4>, sig: f64| {
                Ok(if sig < 5.0 {
                    x.mul_scalar(f32::INFINITY)
                } else {
                    x
                })
            };
            let mut nz = |x: &Tensor<4>| x.zeros_like();
            // (Clipping would turn ±inf into ±1: the guard is tested without it.)
            let settings = SamplerSettings {
                clip_denoised: false,
                ..SamplerSettings::plain(s)
            };
            let e = sample(settings, &sigmas, t(1.0), &mut d, &mut nz, &mut |_| ())
                .unwrap_err()
                .to_string();
            // Heun's corrector evaluates D at σ = 1 inside step 2; the others on step 3.
            let step = if s == Sampler::Heun { 2 } else { 3 };
            assert!(e.contains(&format!("step {step} of 3")), "{s:?}: {e}");
            assert!(e.contains("non-finite"), "{e}");
        }
    }

    #[test]
    fn ddpm_step_has_posterior_variance() {
        // With D ≡ 0, x = 0 and unit "noise", one ancestral step from σ = 2 to σ' = 1 lands on
        // the posterior standard deviation σ'·√(1 − σ'²/σ²) = √0.75.
        let sigmas = [2.0, 1.0, 0.5, 0.0];
        let mut seen = None;
        let mut d = |x: Tensor<4>, s: f64| {
            if s == 1.0 && seen.is_none() {
                seen = Some(val(&x));
            }
            Ok(x.zeros_like())
        };
        let mut nz = |x: &Tensor<4>| x.zeros_like().add_scalar(1.0);
        sample(
            SamplerSettings::plain(Sampler::Ddpm),
            &sigmas,
            t(0.0),
            &mut d,
            &mut nz,
            &mut |_| (),
        )
        .unwrap();
        assert!((seen.unwrap() - 0.75f64.sqrt()).abs() < 1e-6, "{seen:?}");
    }
}
