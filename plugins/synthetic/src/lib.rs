//! Synthetic datasets of Yoon et al. (2023): procedurally generated images whose rules are
//! known, so replication *and* generalization can be measured without a feature network.
//!
//! - `mondrian`: a random cross on four uniformly coloured quadrants.

mod mondrian;

use memlab_plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.dataset(
        "mondrian",
        "Mondrian (Yoon et al.): uniform-colour quadrants split by a cross of random pixels",
        mondrian::PARAMS,
        mondrian::Mondrian::from_params,
    );
}

export_plugin!(register);
