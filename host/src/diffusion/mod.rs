//! The diffusion model and its training: EDM's preconditioned denoiser around the plugins
//! ([`model`]), σ-space samplers ([`sampler`]), the training loop ([`train`]) with its optimiser
//! ([`optim`]), snapshots ([`snapshot`]) and reference weights ([`weights`]).

pub mod generate;
pub mod model;
pub mod optim;
pub mod sampler;
pub mod snapshot;
pub mod train;
pub mod weights;
