//! The VP formulation (Song et al. 2021) as EDM tabulates it (Karras et al. 2022, Table 1).

use memlab_plugin_api::prelude::*;

/// Parameters of `vp`.
pub const PARAMS: &[Param] = &[
    param("beta_d", "float", "19.9", "β_d, the linear growth of β(t)"),
    param("beta_min", "float", "0.1", "β_min, β(0)"),
    param(
        "m",
        "int",
        "1000",
        "M: c_noise = (M − 1)·t(σ), the timestep scale of DDPM-style networks",
    ),
    param("epsilon_t", "float", "1e-5", "ε_t: training t ~ U(ε_t, 1)"),
    param(
        "epsilon_s",
        "float",
        "1e-3",
        "ε_s: sampling t runs from 1 down to ε_s",
    ),
    param(
        "sampling",
        "\"vp\" | \"karras\"",
        "\"vp\"",
        "sampling σ steps: the VP time discretization (t from 1 to ε_s) or EDM's ρ = 7 spacing on [0.002, 80], as DiffMemorize's evaluation uses",
    ),
];

/// How `vp` spaces its sampling σ's.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Sampling {
    /// t uniform from 1 down to ε_s, σ = σ(t) (EDM's VP sampler).
    #[default]
    Vp,
    /// EDM's σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, σ ∈ [0.002, 80], ρ = 7.
    Karras,
}

/// VP: σ(t) = √(exp(½β_d t² + β_min t) − 1); c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1),
/// c_noise = (M − 1)·t(σ); λ(σ) = 1/σ².
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct Vp {
    /// β_d.
    pub beta_d: f64,
    /// β_min.
    pub beta_min: f64,
    /// M.
    pub m: u32,
    /// ε_t, the smallest training t.
    pub epsilon_t: f64,
    /// ε_s, the last sampling t.
    pub epsilon_s: f64,
    /// Sampling σ spacing.
    pub sampling: Sampling,
}

impl Vp {
    /// Parses and checks the parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Vp> {
        let v: Vp = params.parse()?;
        if !(v.beta_d.is_finite() && v.beta_d > 0.0) {
            return Err(format!("beta_d must be positive, got {}", v.beta_d));
        }
        if !(v.beta_min.is_finite() && v.beta_min >= 0.0) {
            return Err(format!("beta_min must be ≥ 0, got {}", v.beta_min));
        }
        if v.m == 0 {
            return Err("m (M) must be at least 1".into());
        }
        for (name, e) in [("epsilon_t", v.epsilon_t), ("epsilon_s", v.epsilon_s)] {
            if !(e > 0.0 && e < 1.0) {
                return Err(format!("{name} must be in (0, 1), got {e}"));
            }
        }
        Ok(v)
    }

    /// σ(t) = √(exp(½β_d t² + β_min t) − 1).
    pub fn sigma(&self, t: f64) -> f64 {
        (0.5 * self.beta_d * t * t + self.beta_min * t)
            .exp_m1()
            .sqrt()
    }

    /// t(σ), the inverse of [`Vp::sigma`]: (√(β_min² + 2β_d·ln(σ² + 1)) − β_min)/β_d.
    pub fn sigma_inv(&self, sigma: f64) -> f64 {
        let b = self.beta_min;
        ((b * b + 2.0 * self.beta_d * (sigma * sigma).ln_1p()).sqrt() - b) / self.beta_d
    }
}

impl NoiseSchedule for Vp {
    /// t = ε_t + u·(1 − ε_t), σ = σ(t): increasing in u.
    fn training_sigmas(&self, uniform: &[f64], _normal: &[f64], out: &mut [f64]) -> PResult<()> {
        for (o, &u) in out.iter_mut().zip(uniform) {
            *o = self.sigma(self.epsilon_t + u * (1.0 - self.epsilon_t));
        }
        Ok(())
    }

    fn precond(&self, sigma: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: -sigma,
            c_in: 1.0 / (sigma * sigma + 1.0).sqrt(),
            c_noise: (self.m as f64 - 1.0) * self.sigma_inv(sigma),
        }
    }

    fn loss_weight(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma)
    }

    /// EDM's VP discretization: t_i = 1 + i/(N−1)·(ε_s − 1), σ_i = σ(t_i), then 0.
    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>> {
        if steps == 0 {
            return Err("need at least one sampling step".into());
        }
        if self.sampling == Sampling::Karras {
            return Ok(crate::edm::karras_sigmas(steps, 0.002, 80.0, 7.0));
        }
        let mut s: Vec<f64> = (0..steps)
            .map(|i| {
                let f = if steps == 1 {
                    0.0
                } else {
                    i as f64 / (steps - 1) as f64
                };
                self.sigma(1.0 + f * (self.epsilon_s - 1.0))
            })
            .collect();
        s.push(0.0);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp() -> Vp {
        Vp::from_params(&Params::with_defaults("", super::PARAMS).unwrap(), 0).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn sigma_of_t_and_its_inverse() {
        let v = vp();
        // σ(1) = √(e^{10.05} − 1), σ(0.5) = √(e^{2.4875 + 0.05} − 1).
        assert!(close(v.sigma(1.0), (10.05f64.exp() - 1.0).sqrt(), 1e-12));
        assert!(close(v.sigma(0.5), (2.5375f64.exp() - 1.0).sqrt(), 1e-12));
        assert!(close(v.sigma(1.0), 152.16697028394654, 1e-12));
        for t in [1e-5, 1e-3, 0.1, 0.5, 1.0] {
            assert!(close(v.sigma_inv(v.sigma(t)), t, 1e-9), "t = {t}");
        }
    }

    #[test]
    fn precond_matches_table_1() {
        let v = vp();
        let t = 0.3;
        let s = v.sigma(t);
        let p = v.precond(s);
        assert_eq!((p.c_skip, p.c_out), (1.0, -s));
        assert!(close(p.c_in, 1.0 / (s * s + 1.0).sqrt(), 1e-12));
        assert!(close(p.c_noise, 999.0 * t, 1e-9));
        assert!(close(v.loss_weight(s), 1.0 / (s * s), 1e-12));
    }

    #[test]
    fn training_t_is_uniform_on_eps_1() {
        let v = vp();
        let mut out = [0.0; 3];
        v.training_sigmas(&[0.0, 0.5, 1.0], &[0.0; 3], &mut out)
            .unwrap();
        assert!(close(out[0], v.sigma(1e-5), 1e-12));
        assert!(close(out[1], v.sigma(1e-5 + 0.5 * (1.0 - 1e-5)), 1e-12));
        assert!(close(out[2], v.sigma(1.0), 1e-12));
        // σ(1e-5) = √(exp(½·19.9·1e-10 + 1e-6) − 1).
        assert!(close(out[0], 1.000497626681674e-3, 1e-9));
    }

    #[test]
    fn sampling_follows_edm_vp_discretization() {
        let v = vp();
        let s = v.sampling_sigmas(18).unwrap();
        assert_eq!(s.len(), 19);
        assert!(close(s[0], v.sigma(1.0), 1e-12));
        // σ(ε_s) = √(exp(½·19.9·1e-6 + 1e-4) − 1).
        let last = (0.5f64 * 19.9 * 1e-6 + 1e-4).exp_m1().sqrt();
        assert!(close(s[17], last, 1e-12));
        assert!(close(s[4], v.sigma(1.0 + 4.0 / 17.0 * (1e-3 - 1.0)), 1e-12));
        assert_eq!(s[18], 0.0);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(v.sampling_sigmas(1).unwrap(), [v.sigma(1.0), 0.0]);
        assert!(v.sampling_sigmas(0).is_err());
    }

    #[test]
    fn karras_sampling_matches_edm() {
        let p = Params::with_defaults("sampling = \"karras\"", super::PARAMS).unwrap();
        let v = Vp::from_params(&p, 0).unwrap();
        let want = crate::edm::karras_sigmas(18, 0.002, 80.0, 7.0);
        assert_eq!(v.sampling_sigmas(18).unwrap(), want);
        assert_eq!(want.len(), 19);
        assert!(
            (want[0] - 80.0).abs() < 1e-9 && (want[17] - 0.002).abs() < 1e-12 && want[18] == 0.0
        );
    }

    #[test]
    fn rejects_bad_params() {
        let bad = |t: &str| {
            Vp::from_params(&Params::with_defaults(t, super::PARAMS).unwrap(), 0).is_err()
        };
        assert!(bad("epsilon_t = 0.0"));
        assert!(bad("epsilon_s = 1.5"));
        assert!(bad("beta_d = -1.0"));
        assert!(bad("m = 0"));
        assert!(bad("beta = 1.0"));
    }
}
