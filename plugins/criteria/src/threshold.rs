//! The absolute threshold shared by `l2` and `linf`.

use memlab_plugin_api::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct ThresholdParams {
    threshold: f64,
}

/// Parses the required `threshold`, a positive finite distance.
pub fn parse(params: &Params) -> PResult<f64> {
    let p: ThresholdParams = params.parse()?;
    if !(p.threshold.is_finite() && p.threshold > 0.0) {
        return Err(format!(
            "threshold must be a positive distance, got {}",
            p.threshold
        ));
    }
    Ok(p.threshold)
}

/// Flags `d₁ < threshold` (one distance per sample) and scores each sample with d₁.
pub fn judge(threshold: f64, d: &[f32], flags: &mut [bool], scores: &mut [f32]) {
    for ((f, s), &d1) in flags.iter_mut().zip(scores.iter_mut()).zip(d) {
        *s = d1;
        *f = (d1 as f64) < threshold;
    }
}
