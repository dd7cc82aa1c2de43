//! The VE formulation (Song et al. 2021) as EDM tabulates it (Karras et al. 2022, Table 1).

use memlab_plugin_api::prelude::*;

/// Parameters of `ve`.
pub const PARAMS: &[Param] = &[
    param(
        "sigma_min",
        "float",
        "0.02",
        "smallest training and sampling σ",
    ),
    param(
        "sigma_max",
        "float",
        "100",
        "largest training and sampling σ",
    ),
];

/// VE: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2); training σ log-uniform on
/// [σ_min, σ_max]; λ(σ) = 1/σ²; sampling σ geometric from σ_max to σ_min.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct Ve {
    /// σ_min.
    pub sigma_min: f64,
    /// σ_max.
    pub sigma_max: f64,
}

impl Ve {
    /// Parses and checks 0 < σ_min < σ_max.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Ve> {
        let v: Ve = params.parse()?;
        if !(v.sigma_min > 0.0 && v.sigma_max > v.sigma_min && v.sigma_max.is_finite()) {
            return Err(format!(
                "need 0 < sigma_min < sigma_max, got {} and {}",
                v.sigma_min, v.sigma_max
            ));
        }
        Ok(v)
    }
}

impl NoiseSchedule for Ve {
    /// σ = σ_min·(σ_max/σ_min)^u.
    fn training_sigmas(&self, uniform: &[f64], _normal: &[f64], out: &mut [f64]) -> PResult<()> {
        let r = self.sigma_max / self.sigma_min;
        for (o, &u) in out.iter_mut().zip(uniform) {
            *o = self.sigma_min * r.powf(u);
        }
        Ok(())
    }

    fn precond(&self, sigma: f64) -> Precond {
        Precond {
            c_skip: 1.0,
            c_out: sigma,
            c_in: 1.0,
            c_noise: (0.5 * sigma).ln(),
        }
    }

    fn loss_weight(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma)
    }

    /// EDM's VE discretization: σ_i = √(σ_max²·(σ_min²/σ_max²)^{i/(N−1)}), then 0.
    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>> {
        if steps == 0 {
            return Err("need at least one sampling step".into());
        }
        let (hi, lo) = (
            self.sigma_max * self.sigma_max,
            self.sigma_min * self.sigma_min,
        );
        let mut s: Vec<f64> = (0..steps)
            .map(|i| {
                let f = if steps == 1 {
                    0.0
                } else {
                    i as f64 / (steps - 1) as f64
                };
                (hi * (lo / hi).powf(f)).sqrt()
            })
            .collect();
        s.push(0.0);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ve() -> Ve {
        Ve::from_params(&Params::with_defaults("", super::PARAMS).unwrap(), 0).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn precond_matches_table_1() {
        let v = ve();
        let p = v.precond(3.0);
        assert_eq!((p.c_skip, p.c_out, p.c_in), (1.0, 3.0, 1.0));
        assert!(close(p.c_noise, 1.5f64.ln(), 1e-12));
        assert!(close(v.loss_weight(3.0), 1.0 / 9.0, 1e-12));
        // λ·c_out² = 1: the loss is an unweighted noise-prediction MSE.
        assert!(close(v.loss_weight(3.0) * p.c_out * p.c_out, 1.0, 1e-12));
    }

    #[test]
    fn training_sigma_is_log_uniform() {
        let v = ve();
        let mut out = [0.0; 3];
        v.training_sigmas(&[0.0, 0.5, 1.0], &[0.0; 3], &mut out)
            .unwrap();
        assert!(close(out[0], 0.02, 1e-12));
        // Geometric mean of 0.02 and 100.
        assert!(close(out[1], (0.02f64 * 100.0).sqrt(), 1e-12));
        assert!(close(out[2], 100.0, 1e-12));
    }

    #[test]
    fn sampling_is_geometric() {
        let s = ve().sampling_sigmas(10).unwrap();
        assert_eq!(s.len(), 11);
        assert!(close(s[0], 100.0, 1e-12));
        assert!(close(s[9], 0.02, 1e-12));
        assert_eq!(s[10], 0.0);
        // σ_i = σ_max·(σ_min/σ_max)^{i/(N−1)}.
        assert!(close(
            s[3],
            100.0 * (0.02f64 / 100.0).powf(3.0 / 9.0),
            1e-12
        ));
        assert!(s.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(
            Ve::from_params(
                &Params::with_defaults("sigma_min = 200.0", super::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
        assert!(
            Ve::from_params(
                &Params::with_defaults("sigma_min = 0.0", super::PARAMS).unwrap(),
                0
            )
            .is_err()
        );
    }
}
