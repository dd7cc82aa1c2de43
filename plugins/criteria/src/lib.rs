//! Replication criteria: decide from nearest-neighbour distances whether a generated sample
//! copies a training image.
//!
//! Distances come from the host's exact k-NN search over the training set, on images in
//! [−1, 1]: L2 over all C·H·W values, or L∞.
//!
//! - `ratio`: d₁/d₂ < threshold (Yoon et al.; Gu et al.; after Carlini et al.), default 1/3.
//! - `l2`: d₁ < threshold, absolute L2 distance.
//! - `linf`: d₁ < threshold, absolute L∞ distance.
//! - `carlini`: d₁/(α·mean of the n nearest) < threshold (Carlini et al. 2023).
//!
//! Criteria that ask the host for more than distances ([`Needs`]):
//!
//! - `patch`: patch-wise L2 on the nearest training images' pixels (after Somepalli et al.
//!   2023's region-level copying): replicate iff at least `min_fraction` of the patches are
//!   much closer (patch ratio < threshold) to the same training image than to any other.
//! - `random-features`: d₁/d₂ < threshold in the feature space of a small random convolutional
//!   network (unit-norm features, so a cosine-distance ratio), whose parameters the host draws
//!   from the criterion's `seed`.

pub mod carlini;
pub mod l2;
pub mod linf;
pub mod patch;
pub mod random_features;
pub mod ratio;
mod threshold;

pub use ratio::ratio;

use memlab_plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.criterion(
        "ratio",
        "Replicate iff d1/d2 < threshold (nearest vs second-nearest training image)",
        ratio::PARAMS,
        ratio::Ratio::from_params,
    );
    p.criterion(
        "l2",
        "Replicate iff the nearest training image is within an L2 distance threshold",
        l2::PARAMS,
        l2::L2::from_params,
    );
    p.criterion(
        "linf",
        "Replicate iff the L-infinity-nearest training image is within a threshold",
        linf::PARAMS,
        linf::Linf::from_params,
    );
    p.criterion(
        "carlini",
        "Carlini et al.: replicate iff d1 / (alpha * mean of the n nearest) < threshold",
        carlini::PARAMS,
        carlini::Carlini::from_params,
    );
    p.criterion(
        "patch",
        "Patch-wise L2: replicate iff most patches are much closer to one training image's than to any other's",
        patch::PARAMS,
        patch::Patch::from_params,
    );
    p.criterion(
        "random-features",
        "Replicate iff d1/d2 < threshold in the feature space of a small random conv net",
        random_features::PARAMS,
        random_features::RandomFeatures::from_params,
    );
}

export_plugin!(register);
