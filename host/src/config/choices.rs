//! The closed choices a config makes (device, sampler and its settings), as enums the config
//! parser fills and the engine and samplers consume. They live here, below every module that
//! acts on them, so the configuration depends on nothing above it.

use serde::{Deserialize, Serialize};

/// Which device a run uses, as written in configs (`device = "auto" | "cpu" | "cuda"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// burn's `flex` CPU backend.
    Cpu,
    /// CUDA device 0 (`--features cuda`).
    Cuda,
}

/// Which sampler (`[sample] sampler` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// EDM Heun (2nd order), with optional churn.
    Heun,
    /// Euler (1st order ODE), with optional churn.
    Euler,
    /// DDIM (η = 0): the Euler update on the schedule's σ.
    Ddim,
    /// DDPM ancestral.
    Ddpm,
}

impl Sampler {
    /// Denoiser evaluations for `steps` steps.
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            Sampler::Heun => 2 * steps - 1,
            _ => steps,
        }
    }

    /// The config name (`heun`, `euler`, `ddim`, `ddpm`).
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Heun => "heun",
            Sampler::Euler => "euler",
            Sampler::Ddim => "ddim",
            Sampler::Ddpm => "ddpm",
        }
    }

    /// Whether D is clamped to [−1, 1] unless the config says otherwise: yes for the
    /// improved-diffusion samplers (`ddpm`, `ddim`), whose loops clip by default; no for EDM's.
    pub fn clips_by_default(self) -> bool {
        matches!(self, Sampler::Ddpm | Sampler::Ddim)
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// EDM's stochasticity ("churn"): `S_churn`, `S_min`, `S_max`, `S_noise` of `edm_sampler`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Total churn S_churn (0: deterministic); γ = min(S_churn / N, √2 − 1) per step.
    pub s_churn: f64,
    /// Churn only for σ ≥ S_min.
    pub s_min: f64,
    /// Churn only for σ ≤ S_max.
    pub s_max: f64,
    /// Scale of the added noise, S_noise (slightly above 1 offsets detail loss).
    pub s_noise: f64,
}

impl Churn {
    /// No churn: the deterministic sampler.
    pub const NONE: Churn = Churn {
        s_churn: 0.0,
        s_min: 0.0,
        s_max: f64::INFINITY,
        s_noise: 1.0,
    };
}

/// Everything that defines a sampler run besides the σ sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSettings {
    /// The update rule.
    pub kind: Sampler,
    /// Churn (Heun and Euler only).
    pub churn: Churn,
    /// Clamp D to [−1, 1] before use.
    pub clip_denoised: bool,
}

impl SamplerSettings {
    /// `kind` with no churn and its default clipping.
    pub fn plain(kind: Sampler) -> SamplerSettings {
        SamplerSettings {
            kind,
            churn: Churn::NONE,
            clip_denoised: kind.clips_by_default(),
        }
    }
}
