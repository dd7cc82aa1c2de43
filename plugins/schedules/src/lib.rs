//! Noise formulations in σ-space (Karras et al. 2022, "EDM", Table 1).
//!
//! A formulation says how training noise levels are drawn, how the network is preconditioned
//! (D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)), how the loss is weighted and which σ
//! sequence sampling walks down. The host's samplers and training loss use only these.

mod edm;

use memlab_plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.schedule(
        "edm",
        "EDM (Karras et al. 2022): σ_d-preconditioning, log-normal training σ, ρ-spaced sampling σ",
        edm::PARAMS,
        edm::Edm::from_params,
    );
}

export_plugin!(register);
