//! Conditioning schemes: how training images are labelled and which labels are sampled.
//!
//! - `none`: unconditional.

use memlab_plugin_api::prelude::*;

/// Unconditional generation: no labels reach the model.
pub struct NoConditioning;

impl Conditioning for NoConditioning {
    fn classes(&self, _data: DataSummary) -> u32 {
        0
    }
    fn train_labels(
        &self,
        _d: DataSummary,
        _labels: &[i64],
        _ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()> {
        out.fill(0);
        Ok(())
    }
    fn sample_labels(&self, _d: DataSummary, _seed: u64, out: &mut [i64]) -> PResult<()> {
        out.fill(0);
        Ok(())
    }
}

fn register(p: &mut Plugin) {
    p.conditioning(
        "none",
        "Unconditional: the model sees no labels",
        &[],
        |params, _| {
            params.expect_empty()?;
            Ok(NoConditioning)
        },
    );
}

export_plugin!(register);
