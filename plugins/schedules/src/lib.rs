//! Noise formulations in σ-space (Karras et al. 2022, "EDM", Table 1).
//!
//! A formulation says how training noise levels are drawn, how the network is preconditioned
//! (D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)), how the loss is weighted and which σ
//! sequence sampling walks down. The host's samplers and training loss use only these.
//!
//! - `edm`, `vp`, `ve`: the three columns of EDM's Table 1.
//! - `linear`, `cosine`: improved-diffusion's discrete DDPM schedules with ε-prediction,
//!   mapped to σ-space ([`discrete`]).

pub mod cosine;
pub mod discrete;
pub mod edm;
pub mod linear;
pub mod ve;
pub mod vp;

use memlab_plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.schedule(
        "edm",
        "EDM (Karras et al. 2022): σ_d-preconditioning, log-normal training σ, ρ-spaced sampling σ",
        edm::PARAMS,
        edm::Edm::from_params,
    );
    p.schedule(
        "vp",
        "VP (EDM Table 1): σ(t) = √(exp(½β_d t² + β_min t) − 1), ε-prediction, c_noise = (M−1)·t",
        vp::PARAMS,
        vp::Vp::from_params,
    );
    p.schedule(
        "ve",
        "VE (EDM Table 1): log-uniform training σ on [σ_min, σ_max], c_noise = ln(σ/2)",
        ve::PARAMS,
        ve::Ve::from_params,
    );
    p.schedule(
        "linear",
        "improved-diffusion linear DDPM betas over T steps, ε-prediction in σ-space, respaced sampling",
        discrete::PARAMS,
        linear::from_params,
    );
    p.schedule(
        "cosine",
        "improved-diffusion cosine DDPM betas over T steps, ε-prediction in σ-space, respaced sampling",
        discrete::PARAMS,
        cosine::from_params,
    );
}

export_plugin!(register);
