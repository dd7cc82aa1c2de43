//! Synthetic datasets of Yoon et al. (2023): procedurally generated images whose rules are
//! known, so replication *and* generalization can be measured without a feature network.
//!
//! - `mondrian`: a random cross on four uniformly coloured quadrants.
//! - `gaussian-mixture`: noisy copies of a fixed set of uniform-noise modes (the "dummies").
//! - `random-ink`: every value an independent fair coin in {−1, 1}.

mod gaussian_mixture;
mod mondrian;
mod random_ink;

use memlab_plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.dataset(
        "mondrian",
        "Mondrian (Yoon et al.): uniform-colour quadrants split by a cross of random pixels",
        mondrian::PARAMS,
        mondrian::Mondrian::from_params,
    );
    p.dataset(
        "gaussian-mixture",
        "Gaussian-mixture dummies (Yoon et al.): a uniform-noise mode plus N(0, std²), clipped",
        gaussian_mixture::PARAMS,
        gaussian_mixture::GaussianMixture::from_params,
    );
    p.dataset(
        "random-ink",
        "Random Ink (Yoon et al.): every value an independent Bernoulli(½) in {−1, 1}",
        random_ink::PARAMS,
        random_ink::RandomInk::from_params,
    );
}

export_plugin!(register);
