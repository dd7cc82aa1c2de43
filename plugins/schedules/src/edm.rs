//! The EDM formulation (Karras et al. 2022, Table 1, column "ours").

use memlab_plugin_api::prelude::*;

/// Parameters of `edm`.
pub const PARAMS: &[Param] = &[
    param(
        "sigma_data",
        "float",
        "0.5",
        "σ_d, the data standard deviation",
    ),
    param("p_mean", "float", "-1.2", "mean of ln σ during training"),
    param(
        "p_std",
        "float",
        "1.2",
        "standard deviation of ln σ during training",
    ),
    param("sigma_min", "float", "0.002", "smallest sampling σ"),
    param("sigma_max", "float", "80", "largest sampling σ"),
    param("rho", "float", "7", "ρ of the sampling σ spacing"),
];

/// EDM: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²),
/// c_noise = ¼ ln σ; ln σ ~ N(P_mean, P_std²); λ = (σ²+σ_d²)/(σσ_d)²; ρ-spaced sampling σ.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct Edm {
    /// σ_d.
    pub sigma_data: f64,
    /// Mean of ln σ in training.
    pub p_mean: f64,
    /// Standard deviation of ln σ in training.
    pub p_std: f64,
    /// Smallest sampling σ.
    pub sigma_min: f64,
    /// Largest sampling σ.
    pub sigma_max: f64,
    /// ρ of the sampling spacing.
    pub rho: f64,
}

/// True for finite numbers > 0 (false for NaN).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl Edm {
    /// Parses and checks the parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Edm> {
        let e: Edm = params.parse()?;
        if !positive(e.sigma_data) {
            return Err(format!("sigma_data must be positive, got {}", e.sigma_data));
        }
        if !positive(e.sigma_min) || !positive(e.sigma_max - e.sigma_min) {
            return Err(format!(
                "need 0 < sigma_min < sigma_max, got {} and {}",
                e.sigma_min, e.sigma_max
            ));
        }
        if !positive(e.rho) || !positive(e.p_std) {
            return Err("rho and p_std must be positive".into());
        }
        Ok(e)
    }
}

impl NoiseSchedule for Edm {
    fn training_sigmas(&self, _uniform: &[f64], normal: &[f64], out: &mut [f64]) -> PResult<()> {
        for (o, n) in out.iter_mut().zip(normal) {
            *o = (self.p_mean + self.p_std * n).exp();
        }
        Ok(())
    }

    fn precond(&self, sigma: f64) -> Precond {
        let sd2 = self.sigma_data * self.sigma_data;
        let s2 = sigma * sigma;
        Precond {
            c_skip: sd2 / (s2 + sd2),
            c_out: sigma * self.sigma_data / (s2 + sd2).sqrt(),
            c_in: 1.0 / (s2 + sd2).sqrt(),
            c_noise: sigma.ln() / 4.0,
        }
    }

    fn loss_weight(&self, sigma: f64) -> f64 {
        let sd = self.sigma_data;
        (sigma * sigma + sd * sd) / (sigma * sd).powi(2)
    }

    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>> {
        if steps == 0 {
            return Err("need at least one sampling step".into());
        }
        Ok(karras_sigmas(
            steps,
            self.sigma_min,
            self.sigma_max,
            self.rho,
        ))
    }
}

/// EDM's sampling σ's: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for
/// i = 0..N−1, then 0.
pub fn karras_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut s: Vec<f64> = (0..steps)
        .map(|i| {
            let t = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (a + t * (b - a)).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edm() -> Edm {
        Edm::from_params(&Params::with_defaults("", super::PARAMS).unwrap(), 0).unwrap()
    }

    #[test]
    fn precond_matches_table_1() {
        let e = edm();
        let s = 1.3;
        let p = e.precond(s);
        assert!((p.c_skip - 0.25 / (1.69 + 0.25)).abs() < 1e-12);
        assert!((p.c_out - 1.3 * 0.5 / (1.94f64).sqrt()).abs() < 1e-12);
        assert!((p.c_in - 1.0 / (1.94f64).sqrt()).abs() < 1e-12);
        assert!((p.c_noise - (1.3f64).ln() / 4.0).abs() < 1e-12);
        // λ(σ)·c_out² = 1: EDM's effective loss weight is uniform.
        assert!((e.loss_weight(s) * p.c_out * p.c_out - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sampling_sigmas_are_karras_spaced() {
        let s = edm().sampling_sigmas(18).unwrap();
        assert_eq!(s.len(), 19);
        assert!((s[0] - 80.0).abs() < 1e-9);
        assert!((s[17] - 0.002).abs() < 1e-12);
        assert_eq!(s[18], 0.0);
        let rho = 7.0f64;
        let i = 5.0;
        let expect = (80f64.powf(1.0 / rho)
            + i / 17.0 * (0.002f64.powf(1.0 / rho) - 80f64.powf(1.0 / rho)))
        .powf(rho);
        assert!((s[5] - expect).abs() < 1e-9);
    }

    #[test]
    fn training_sigma_is_lognormal() {
        let e = edm();
        let normal = [-1.0, 0.0, 2.0];
        let mut out = [0.0; 3];
        e.training_sigmas(&[0.5; 3], &normal, &mut out).unwrap();
        assert!((out[1] - (-1.2f64).exp()).abs() < 1e-12);
        assert!((out[2] - (-1.2f64 + 2.4).exp()).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_params() {
        assert!(
            Edm::from_params(
                &Params::with_defaults("sigma_min = 100.0", super::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
        let e = Edm::from_params(
            &Params::with_defaults("sigmadata = 1.0", super::PARAMS).unwrap(),
            0,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `sigmadata`"), "{e}");
    }
}
