//! `{{name}}`: a memlab noise-schedule plugin (scaffolded by `memlab new schedule`).
//!
//! A noise formulation in σ-space, as EDM tabulates it (x_σ = y + σ·n): how training draws
//! σ, the preconditioning c_skip, c_out, c_in, c_noise around the network, the loss weight,
//! and the σ sequence the samplers step through. This one draws ln σ uniformly in
//! [ln σ_min, ln σ_max], preconditions as EDM does and samples on a geometric σ grid.

use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[
    param("sigma_min", "float", "0.002", "smallest σ"),
    param("sigma_max", "float", "80", "largest σ"),
    param(
        "sigma_data",
        "float",
        "0.5",
        "σ_data, the data standard deviation",
    ),
];

params! {
    /// The schedule's parameters: the config's `[schedule] params` table.
    #[derive(Debug)]
    struct Schedule {
        /// Smallest σ (training and sampling).
        sigma_min: f64,
        /// Largest σ.
        sigma_max: f64,
        /// Standard deviation of the data, for the preconditioning.
        sigma_data: f64,
    }
}

impl Schedule {
    /// Parses and checks the parameters.
    fn from_params(params: &Params, _seed: u64) -> PResult<Schedule> {
        let s: Schedule = params.parse()?;
        if !(s.sigma_min > 0.0 && s.sigma_min < s.sigma_max && s.sigma_max.is_finite()) {
            return Err(format!(
                "need 0 < sigma_min < sigma_max, got {} and {}",
                s.sigma_min, s.sigma_max
            ));
        }
        if !(s.sigma_data > 0.0 && s.sigma_data.is_finite()) {
            return Err(format!("sigma_data must be positive, got {}", s.sigma_data));
        }
        Ok(s)
    }
}

impl NoiseSchedule for Schedule {
    /// The host draws the random numbers (one uniform and one normal per sample, from the
    /// run's seed and the step), so training stays deterministic and resumable.
    fn training_sigmas(&self, uniform: &[f64], _normal: &[f64], out: &mut [f64]) -> PResult<()> {
        let (lo, hi) = (self.sigma_min.ln(), self.sigma_max.ln());
        for (o, u) in out.iter_mut().zip(uniform) {
            *o = (lo + u * (hi - lo)).exp();
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

    /// σ_max, …, σ_min geometrically spaced (`steps` values), then 0.
    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>> {
        if steps == 0 {
            return Err("need at least one sampling step".into());
        }
        let ratio = self.sigma_min / self.sigma_max;
        let last = (steps - 1).max(1) as f64;
        let mut sigmas: Vec<f64> = (0..steps)
            .map(|i| self.sigma_max * ratio.powf(i as f64 / last))
            .collect();
        sigmas.push(0.0);
        Ok(sigmas)
    }
}

fn register(p: &mut Plugin) {
    p.schedule(
        "{{name}}",
        "Log-uniform training σ, EDM preconditioning, geometric sampling σ",
        PARAMS,
        Schedule::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(toml: &str) -> PResult<Schedule> {
        Schedule::from_params(&Params::with_defaults(toml, PARAMS)?, 0)
    }

    #[test]
    fn sampling_sigmas_decrease_to_zero() {
        let s = schedule("").unwrap();
        let sigmas = s.sampling_sigmas(5).unwrap();
        assert_eq!(sigmas.len(), 6);
        assert_eq!(sigmas[0], 80.0);
        assert!((sigmas[4] - 0.002).abs() < 1e-12);
        assert_eq!(sigmas[5], 0.0);
        assert!(sigmas.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn training_sigmas_stay_in_range_and_precond_is_identity_at_zero() {
        let s = schedule("sigma_min = 0.01\nsigma_max = 10.0").unwrap();
        let mut out = [0.0; 3];
        s.training_sigmas(&[0.0, 0.5, 0.999], &[0.0; 3], &mut out)
            .unwrap();
        assert!(out.iter().all(|&x| (0.01..=10.0).contains(&x)), "{out:?}");
        assert!((out[1] - 0.316_227_766).abs() < 1e-6); // the geometric mean
        let p = s.precond(0.0);
        assert_eq!((p.c_skip, p.c_out), (1.0, 0.0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(schedule("sigma_min = 5.0\nsigma_max = 1.0").is_err());
        assert!(schedule("sigma_data = 0.0").is_err());
        assert!(
            schedule("rho = 7.0")
                .unwrap_err()
                .contains("unknown field `rho`")
        );
    }
}
