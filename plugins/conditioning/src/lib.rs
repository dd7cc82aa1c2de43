//! Conditioning schemes: how training images are labelled and which labels are sampled.
//!
//! - `none`: unconditional.
//! - `class`: the dataset's true labels.
//! - `random`: C random classes, each training image's label fixed by seed and index.
//! - `unique`: one class per training image.
//!
//! The labelled schemes share `sample` / `sample_class` ([`sample`]): generate with labels
//! uniform over the classes, or with one class only (e.g. the Mondrian class of a mixture).

pub mod class;
pub mod none;
pub mod random;
pub mod sample;
pub mod unique;

use memlab_plugin_api::prelude::*;

/// Parameters of `random`: the class count, then the sampling choice.
const RANDOM_PARAMS: &[Param] = &[
    param("classes", "int", "10", "C, the number of random classes"),
    sample::PARAMS[0],
    sample::PARAMS[1],
];

fn register(p: &mut Plugin) {
    p.conditioning(
        "none",
        "Unconditional: the model sees no labels",
        &[],
        none::NoConditioning::from_params,
    );
    p.conditioning(
        "class",
        "True dataset labels; samples uniform over the classes or one class",
        sample::PARAMS,
        class::TrueClass::from_params,
    );
    p.conditioning(
        "random",
        "Random labels in 0..C, fixed per (seed, training index)",
        RANDOM_PARAMS,
        random::RandomLabels::from_params,
    );
    p.conditioning(
        "unique",
        "Unique labels: each training image is its own class",
        sample::PARAMS,
        unique::UniqueLabels::from_params,
    );
}

export_plugin!(register);
