//! `none`: unconditional generation.

use memlab_plugin_api::prelude::*;

/// Unconditional generation: no labels reach the model.
pub struct NoConditioning;

impl NoConditioning {
    /// Takes no parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<NoConditioning> {
        params.expect_empty()?;
        Ok(NoConditioning)
    }
}

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
