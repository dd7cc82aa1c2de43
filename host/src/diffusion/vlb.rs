//! improved-diffusion's learned variance (Nichol & Dhariwal 2021): the variational-bound term
//! L_vlb of the hybrid objective and the `LEARNED_RANGE` variance used by ancestral sampling.
//!
//! **Where the discrete chain comes from.** The host derives it from σ-space alone, through
//! the schedule's existing `round_sigma` ("nearest σ the formulation supports"): for a
//! discrete schedule its values are exactly the grid σ_0 < … < σ_{T−1}, so
//! [`crate::plugins::grid::discrete_grid`] enumerates them (from the top, each next one found
//! by bisecting on the f64 bit patterns where the rounding changes: ≤ 64 calls per timestep,
//! ~10 ms for T = 4000, once per run); a continuous schedule rounds to the identity and has no
//! grid. Everything else follows from σ:
//! ᾱ_t = 1/(1 + σ_t²), β_t = 1 − ᾱ_t/ᾱ_{t−1} = (σ_t² − σ_{t−1}²)/(1 + σ_t²) (σ_{−1} = 0),
//! the posterior variance β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) and mean coefficient
//! coef1_t = β_t√ᾱ_{t−1}/(1 − ᾱ_t), written in σ so that no small quantity is a difference of
//! two numbers near 1 (f64; the reference's own arrays agree to ~1e-13 relative). The same
//! construction over a subset of the grid is improved-diffusion's respacing (`respace.py`:
//! β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}), so one [`Chain`] serves training (the full grid) and
//! sampling (the sampler's σ sequence).
//!
//! Why not a new plugin-ABI method returning the grid: tried first, as a defaulted
//! `FfiSchedule` method appended after its `last_prefix_field`. abi_stable then refused every
//! plugin library built before it at load time, a conditioning-only one included ("too many
//! fields Expected: 8 Found: 7"): the layout check lets an implementation's prefix vtable have
//! *more* methods than the host's, not fewer, and `FfiSchedule`'s vtable is part of the
//! `Component` type that every library's `PluginMod::create` returns. It would have broken
//! every existing plugin-api 0.2 build.
//! `round_sigma` already carries the grid, so nothing has to cross the boundary.
//!
//! **The VLB term** (`GaussianDiffusion._vb_terms_bpd` on `training_losses`' frozen output):
//! with x̂₀ = D(x; σ_t) (for ε-prediction, improved-diffusion's `pred_xstart` *is* the σ-space
//! denoiser), the model's mean differs from the true posterior mean by coef1_t·(x̂₀ − y) in
//! x_t-space, and the model's log-variance is `LEARNED_RANGE`'s
//! log Σ = f·log β_t + (1 − f)·log β̃_t (f = (v + 1)/2, v the variance channels, β̃_0 replaced
//! by β̃_1 as the reference's `posterior_log_variance_clipped`). For t > 0 the term is
//! KL(q(x_{t−1}|x_t, x₀) ‖ p(x_{t−1}|x_t)) (`normal_kl`), for t = 0 the decoder's
//! discretized Gaussian NLL of y (`discretized_gaussian_log_likelihood`, 256 bins); either is
//! averaged over pixels and divided by ln 2 (bits per dimension). x̂₀ is detached: the VLB
//! trains the variance only ("stop-gradient on the mean").

use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData};

/// What `train.loss = "hybrid"` trains with: the schedule's full chain and the VLB term's
/// weight λ·T (λ = `train.vlb_weight`), so that the one-timestep term estimates λ·L_vlb.
#[derive(Debug, Clone, PartialEq)]
pub struct Hybrid {
    /// The schedule's chain (its whole σ grid).
    pub chain: Chain,
    /// λ·T: with λ = 0.001 the VLB term × T/1000 (`LossType.RESCALED_MSE`).
    pub vlb_scale: f64,
}

impl Hybrid {
    /// The objective over the discrete grid `sigmas` with λ = `vlb_weight`.
    pub fn new(sigmas: &[f64], vlb_weight: f64) -> Result<Hybrid> {
        let chain = Chain::from_sigmas(sigmas)?;
        let vlb_scale = vlb_weight * chain.len() as f64;
        Ok(Hybrid { chain, vlb_scale })
    }
}

/// A discrete diffusion chain over ascending noise levels (the full grid or a respacing).
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// σ_t, strictly increasing.
    pub sigmas: Vec<f64>,
    /// ᾱ_t = 1/(1 + σ_t²).
    pub alphas_cumprod: Vec<f64>,
    /// β_t.
    pub betas: Vec<f64>,
    /// β̃_t (0 at t = 0).
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with t = 0 taking β̃_1 (improved-diffusion's `posterior_log_variance_clipped`).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// β_t·√ᾱ_{t−1}/(1 − ᾱ_t): the weight of x̂₀ in the posterior mean.
    pub posterior_mean_coef1: Vec<f64>,
}

impl Chain {
    /// The chain over `sigmas` (ascending, positive, at least two: the clipped log-variance at
    /// t = 0 borrows β̃_1).
    pub fn from_sigmas(sigmas: &[f64]) -> Result<Chain> {
        if sigmas.len() < 2 {
            bail!(
                "a learned-variance chain needs at least 2 timesteps, got {}",
                sigmas.len()
            );
        }
        if sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || sigmas.windows(2).any(|w| w[1] <= w[0])
        {
            bail!("the σ of a discrete chain must be positive, finite and strictly increasing");
        }
        let n = sigmas.len();
        let (mut ac, mut betas, mut pv, mut coef1) = (vec![], vec![], vec![], vec![]);
        for t in 0..n {
            let s2 = sigmas[t] * sigmas[t];
            let p2 = if t == 0 {
                0.0
            } else {
                sigmas[t - 1] * sigmas[t - 1]
            };
            let a = 1.0 / (1.0 + s2);
            let a_prev = 1.0 / (1.0 + p2);
            // β = 1 − ᾱ/ᾱ_prev; 1 − ᾱ = σ²/(1 + σ²).
            let beta = (s2 - p2) / (1.0 + s2);
            let one_minus_a = s2 / (1.0 + s2);
            let one_minus_a_prev = p2 / (1.0 + p2);
            ac.push(a);
            betas.push(beta);
            pv.push(beta * one_minus_a_prev / one_minus_a);
            coef1.push(beta * a_prev.sqrt() / one_minus_a);
        }
        let mut clipped: Vec<f64> = pv.iter().map(|v| v.ln()).collect();
        clipped[0] = pv[1].ln();
        Ok(Chain {
            sigmas: sigmas.to_vec(),
            alphas_cumprod: ac,
            betas,
            posterior_variance: pv,
            posterior_log_variance_clipped: clipped,
            posterior_mean_coef1: coef1,
        })
    }

    /// T, the number of timesteps.
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    /// Never: a chain has at least two timesteps.
    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// The timestep whose σ_t is `sigma` (to 1e-9 relative): an error for a σ off the grid.
    pub fn timestep(&self, sigma: f64) -> Result<usize> {
        let s = &self.sigmas;
        let i = s.partition_point(|&x| x < sigma);
        for j in [i.saturating_sub(1), i.min(s.len() - 1)] {
            if (s[j] - sigma).abs() <= 1e-9 * s[j] {
                return Ok(j);
            }
        }
        bail!("σ = {sigma} is not on the schedule's discrete grid")
    }

    /// (min, max) of `LEARNED_RANGE` at t: (log β̃_t clipped, log β_t).
    pub fn log_variance_range(&self, t: usize) -> (f64, f64) {
        (self.posterior_log_variance_clipped[t], self.betas[t].ln())
    }
}

/// Per-sample columns `[n, 1, 1, 1]` on the device of `like`.
fn column(v: &[f64], like: &Tensor<4>) -> Tensor<4> {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::<4>::from_data(TensorData::new(data, [v.len(), 1, 1, 1]), &like.device())
}

/// `LEARNED_RANGE`'s log Σ (x_t-space) from the variance channels `v` `[n, c, h, w]`, at
/// timestep `ts[i]` of `chain` for sample i.
pub fn learned_log_variance(chain: &Chain, ts: &[usize], v: Tensor<4>) -> Tensor<4> {
    let (min, max): (Vec<f64>, Vec<f64>) = ts.iter().map(|&t| chain.log_variance_range(t)).unzip();
    let min = column(&min, &v);
    let max = column(&max, &v);
    let frac = v.add_scalar(1.0).mul_scalar(0.5);
    frac.clone() * max + (frac.neg().add_scalar(1.0)) * min
}

/// improved-diffusion's `approx_standard_normal_cdf`.
fn approx_cdf(x: Tensor<4>) -> Tensor<4> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.powi_scalar(3).mul_scalar(0.044715)).mul_scalar(k);
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// improved-diffusion's `discretized_gaussian_log_likelihood` (nats, per pixel): the
/// probability of the 1/127.5-wide bin of `y` (the edge bins open-ended) under
/// N(mean, e^{2·log_scale}).
pub fn discretized_gaussian_log_likelihood(
    y: Tensor<4>,
    mean: Tensor<4>,
    log_scale: Tensor<4>,
) -> Tensor<4> {
    let centered = y.clone() - mean;
    let inv_stdv = log_scale.neg().exp();
    let cdf_plus = approx_cdf(inv_stdv.clone() * centered.clone().add_scalar(1.0 / 255.0));
    let cdf_min = approx_cdf(inv_stdv * centered.sub_scalar(1.0 / 255.0));
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let low = y.clone().lower_elem(-0.999);
    let high = y.greater_elem(0.999);
    log_delta
        .mask_where(high, log_one_minus_cdf_min)
        .mask_where(low, log_cdf_plus)
}

/// The VLB term per sample `[n]`, in bits per dimension: KL for t > 0, decoder NLL for t = 0.
///
/// `y` are the clean images, `err` = x̂₀ − y (detach it for the hybrid loss: the VLB then
/// trains only the variance), `v` the variance channels, `ts` each sample's timestep in
/// `chain`.
pub fn vb_terms(
    chain: &Chain,
    ts: &[usize],
    y: Tensor<4>,
    err: Tensor<4>,
    v: Tensor<4>,
) -> Tensor<1> {
    let n = ts.len();
    let log_var = learned_log_variance(chain, ts, v);
    let true_log_var: Vec<f64> = ts
        .iter()
        .map(|&t| chain.posterior_log_variance_clipped[t])
        .collect();
    let coef1: Vec<f64> = ts.iter().map(|&t| chain.posterior_mean_coef1[t]).collect();
    let lv1 = column(&true_log_var, &y);
    let mean_diff = err.clone() * column(&coef1, &y);
    // normal_kl(true_mean, true_logvar, model_mean, model_logvar)
    let kl = (log_var.clone() - lv1.clone()
        + (lv1 - log_var.clone()).exp()
        + mean_diff.powi_scalar(2) * log_var.clone().neg().exp())
    .sub_scalar(1.0)
    .mul_scalar(0.5);
    let mut per_pixel = kl;
    if ts.contains(&0) {
        // At t = 0 the posterior mean is x̂₀ itself (coef1_0 = 1, coef2_0 = 0).
        let mean = y.clone() + err;
        let nll = discretized_gaussian_log_likelihood(y, mean, log_var.mul_scalar(0.5)).neg();
        let first: Vec<f64> = ts.iter().map(|&t| f64::from(u8::from(t == 0))).collect();
        let m = column(&first, &per_pixel);
        per_pixel = per_pixel * m.clone().neg().add_scalar(1.0) + nll * m;
    }
    per_pixel
        .mean_dims(&[1, 2, 3])
        .reshape([n])
        .div_scalar(std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_matches_the_betas_it_came_from() {
        // improved-diffusion's arrays for betas 0.1..0.5, computed from the betas directly.
        let betas = [0.1f64, 0.2, 0.3, 0.4, 0.5];
        let mut ac = vec![];
        let mut a = 1.0;
        for b in betas {
            a *= 1.0 - b;
            ac.push(a);
        }
        let sigmas: Vec<f64> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let c = Chain::from_sigmas(&sigmas).unwrap();
        for t in 0..5 {
            let prev = if t == 0 { 1.0 } else { ac[t - 1] };
            assert!((c.betas[t] - betas[t]).abs() < 1e-12, "β_{t}");
            assert!((c.alphas_cumprod[t] - ac[t]).abs() < 1e-12);
            let pv = betas[t] * (1.0 - prev) / (1.0 - ac[t]);
            assert!((c.posterior_variance[t] - pv).abs() < 1e-12);
            let c1 = betas[t] * prev.sqrt() / (1.0 - ac[t]);
            assert!((c.posterior_mean_coef1[t] - c1).abs() < 1e-12);
        }
        assert_eq!(c.posterior_variance[0], 0.0);
        assert_eq!(
            c.posterior_log_variance_clipped[0],
            c.posterior_variance[1].ln()
        );
        assert_eq!(c.timestep(sigmas[3]).unwrap(), 3);
        assert!(c.timestep(sigmas[3] * 1.01).is_err());
        assert!(Chain::from_sigmas(&sigmas[..1]).is_err());
    }
}
