//! Typed, checked wrappers over the FFI component objects. Every error names the component
//! and its plugin; outputs are validated (lengths, ranges) before the engine trusts them.

use abi_stable::std_types::{RResult, RString};
use anyhow::{Result, anyhow, bail};
use memlab_plugin_api::ffi::*;

fn ok<T>(label: &str, r: RResult<T, RString>) -> Result<T> {
    r.into_result().map_err(|e| {
        // Plugin errors from the adapters already name the component; add it otherwise.
        if e.as_str().contains(label) || e.as_str().contains("(plugin ") {
            anyhow!("{e}")
        } else {
            anyhow!("{label}: {e}")
        }
    })
}

/// A dataset component.
pub struct DatasetHandle {
    inner: DatasetBox,
    label: String,
    info: Option<DatasetInfo>,
}

impl DatasetHandle {
    pub(crate) fn new(inner: DatasetBox, label: String) -> Self {
        DatasetHandle {
            inner,
            label,
            info: None,
        }
    }
    /// "dataset `name` (plugin lib)".
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Shape, size and classes (validated).
    pub fn info(&mut self) -> Result<DatasetInfo> {
        if let Some(i) = &self.info {
            return Ok(i.clone());
        }
        let i = ok(&self.label, self.inner.info())?;
        if i.channels == 0 || i.height == 0 || i.width == 0 {
            bail!(
                "{}: invalid image shape {}×{}×{}",
                self.label,
                i.channels,
                i.height,
                i.width
            );
        }
        self.info = Some(i.clone());
        Ok(i)
    }
    /// Images and labels of `indices`, checked for range and finiteness.
    pub fn fill(&mut self, indices: &[u64]) -> Result<(Vec<f32>, Vec<i64>)> {
        let info = self.info()?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= info.len) {
            bail!(
                "{}: index {bad} out of range (dataset has {} images)",
                self.label,
                info.len
            );
        }
        let what = || format!("{}: {} images", self.label, indices.len());
        let per = crate::io::alloc::mul(info.channels, info.height, what)?;
        let per = crate::io::alloc::mul(per, info.width, what)?;
        let mut images = crate::io::alloc::try_zeroed(
            crate::io::alloc::mul(indices.len(), per, what)?,
            f32::NAN,
            what,
        )?;
        let mut labels = crate::io::alloc::try_zeroed(indices.len(), 0i64, what)?;
        ok(
            &self.label,
            self.inner.fill(
                indices.into(),
                images.as_mut_slice().into(),
                labels.as_mut_slice().into(),
            ),
        )?;
        if let Some(p) = images
            .iter()
            .position(|v| !v.is_finite() || v.abs() > 1.0 + 1e-4)
        {
            bail!(
                "{}: image {} has value {} at offset {}; images must be finite and in [-1, 1]",
                self.label,
                indices[p / per],
                images[p],
                p % per
            );
        }
        let classes = info.class_names.len().max(1) as i64;
        if let Some(&l) = labels.iter().find(|&&l| l < 0 || l >= classes) {
            bail!("{}: label {l} outside 0..{classes}", self.label);
        }
        Ok((images, labels))
    }
    /// Whether the dataset scores rule validity.
    pub fn has_validity(&self) -> bool {
        self.inner.has_validity()
    }
    /// Rule-validity scores of NCHW images.
    pub fn validity(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        let info = self.info()?;
        let per = info.channels * info.height * info.width;
        if !images.len().is_multiple_of(per) {
            bail!(
                "{}: validity input is not a whole number of images",
                self.label
            );
        }
        let mut scores = vec![f32::NAN; images.len() / per];
        ok(
            &self.label,
            self.inner
                .validity(images.into(), scores.as_mut_slice().into()),
        )?;
        Ok(scores)
    }
}

/// A noise-schedule component.
pub struct ScheduleHandle {
    inner: ScheduleBox,
    label: String,
}

impl ScheduleHandle {
    pub(crate) fn new(inner: ScheduleBox, label: String) -> Self {
        ScheduleHandle { inner, label }
    }
    /// "schedule `name` (plugin lib)".
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Training σ per sample from uniform and normal draws.
    pub fn training_sigmas(&self, uniform: &[f64], normal: &[f64]) -> Result<Vec<f64>> {
        if uniform.len() != normal.len() {
            bail!("uniform and normal draws differ in length");
        }
        let mut out = vec![f64::NAN; uniform.len()];
        ok(
            &self.label,
            self.inner
                .training_sigmas(uniform.into(), normal.into(), out.as_mut_slice().into()),
        )?;
        if let Some(s) = out.iter().find(|s| !s.is_finite() || **s <= 0.0) {
            bail!(
                "{}: training σ {s} is not a positive finite number",
                self.label
            );
        }
        Ok(out)
    }
    /// Preconditioning at σ.
    pub fn precond(&self, sigma: f64) -> Result<Precond> {
        ok(&self.label, self.inner.precond(sigma))
    }
    /// Loss weight at σ.
    pub fn loss_weight(&self, sigma: f64) -> Result<f64> {
        ok(&self.label, self.inner.loss_weight(sigma))
    }
    /// Sampling σ sequence for `steps` steps (checked: decreasing, ends at 0).
    pub fn sampling_sigmas(&self, steps: usize) -> Result<Vec<f64>> {
        let s = ok(&self.label, self.inner.sampling_sigmas(steps))?.into_vec();
        if s.len() != steps + 1 || s.last() != Some(&0.0) || s.windows(2).any(|w| w[1] >= w[0]) {
            bail!(
                "{}: sampling σ for {steps} steps must be {} strictly decreasing values ending in 0",
                self.label,
                steps + 1
            );
        }
        Ok(s)
    }
    /// Nearest supported σ.
    pub fn round_sigma(&self, sigma: f64) -> Result<f64> {
        ok(&self.label, self.inner.round_sigma(sigma))
    }
    /// The σ grid σ_0 < … < σ_{T−1} of a discrete schedule, or `None` for a continuous one:
    /// the values `round_sigma` can return, enumerated by [`crate::plugins::grid::discrete_grid`] (no
    /// ABI addition; see there why).
    pub fn discrete_sigmas(&self) -> Result<Option<Vec<f64>>> {
        crate::plugins::grid::discrete_grid(&mut |s| self.round_sigma(s))
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", self.label))
    }
}

/// A conditioning component.
pub struct ConditioningHandle {
    inner: ConditioningBox,
    label: String,
}

impl ConditioningHandle {
    pub(crate) fn new(inner: ConditioningBox, label: String) -> Self {
        ConditioningHandle { inner, label }
    }
    /// "conditioning `name` (plugin lib)".
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Number of classes (0 = unconditional).
    pub fn classes(&self, data: DataSummary) -> Result<u32> {
        ok(&self.label, self.inner.classes(data))
    }
    fn check(&self, data: DataSummary, labels: &[i64]) -> Result<()> {
        let c = self.classes(data)? as i64;
        if c == 0 {
            return Ok(());
        }
        if let Some(l) = labels.iter().find(|&&l| l < 0 || l >= c) {
            bail!("{}: label {l} outside 0..{c}", self.label);
        }
        Ok(())
    }
    /// Training labels of samples `ids` with dataset labels `dataset_labels`.
    pub fn train_labels(
        &self,
        data: DataSummary,
        dataset_labels: &[i64],
        ids: &[u64],
    ) -> Result<Vec<i64>> {
        let mut out = vec![0i64; ids.len()];
        ok(
            &self.label,
            self.inner.train_labels(
                data,
                dataset_labels.into(),
                ids.into(),
                out.as_mut_slice().into(),
            ),
        )?;
        self.check(data, &out)?;
        Ok(out)
    }
    /// Labels for `n` samples.
    pub fn sample_labels(&self, data: DataSummary, seed: u64, n: usize) -> Result<Vec<i64>> {
        let mut out = vec![0i64; n];
        ok(
            &self.label,
            self.inner
                .sample_labels(data, seed, out.as_mut_slice().into()),
        )?;
        self.check(data, &out)?;
        Ok(out)
    }
}

/// An architecture component.
pub struct ArchitectureHandle {
    inner: ArchitectureBox,
    label: String,
}

impl ArchitectureHandle {
    pub(crate) fn new(inner: ArchitectureBox, label: String) -> Self {
        ArchitectureHandle { inner, label }
    }
    /// "architecture `name` (plugin lib)".
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Declarations.
    pub fn info(&self) -> Result<ArchInfo> {
        ok(&self.label, self.inner.info())
    }
    /// One shape-only forward pass on an input of `x_shape` (no tensor data, nothing
    /// allocated by size): parameter shapes and activation sizes, for the size budget.
    pub fn inspect(
        &self,
        x_shape: [usize; 4],
        classes: u32,
    ) -> Result<memlab_plugin_api::testing::ModelSummary> {
        memlab_plugin_api::testing::inspect_ffi(&self.inner, x_shape, classes)
            .map_err(|e| anyhow!("{}: {e}", self.label))
    }
    /// Raw forward call (see [`crate::engine::forward`] for the checked one).
    pub fn forward(&self, ops: HostOpsDyn<'_>, args: ForwardArgs) -> Result<TensorId> {
        ok(&self.label, self.inner.forward(ops, args))
    }
}

/// A replication-criterion component: the [`FfiCriterion`] every criterion has, and its
/// [`FfiCriterionExt`] part when its library was built against plugin-api 0.3 or later.
pub struct CriterionHandle {
    inner: CriterionBox,
    ext: Option<CriterionExtBox>,
    label: String,
}

impl CriterionHandle {
    pub(crate) fn new(inner: CriterionBox, ext: Option<CriterionExtBox>, label: String) -> Self {
        CriterionHandle { inner, ext, label }
    }
    /// Whether the criterion's library provides the plugin-api 0.3.0 additions (images,
    /// features); a criterion without them is judged on distances.
    pub fn has_ext(&self) -> bool {
        self.ext.is_some()
    }
    fn ext(&self) -> Result<&CriterionExtBox> {
        self.ext.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: its library has no extension module, it judges on distances only",
                self.label
            )
        })
    }
    /// "criterion `name` (plugin lib)".
    pub fn label(&self) -> &str {
        &self.label
    }
    /// Distance and neighbour count.
    pub fn info(&self) -> Result<CriterionInfo> {
        let i = ok(&self.label, self.inner.info())?;
        if i.neighbours == 0 {
            bail!("{}: needs at least one neighbour", self.label);
        }
        Ok(i)
    }
    /// Flags and scores from ascending neighbour distances (`k` per sample, row-major).
    pub fn judge(&self, distances: &[f32], k: usize) -> Result<(Vec<bool>, Vec<f32>)> {
        if k == 0 || !distances.len().is_multiple_of(k) {
            bail!("distances are not a whole number of rows of {k}");
        }
        let m = distances.len() / k;
        let mut flags = vec![false; m];
        let mut scores = vec![f32::NAN; m];
        ok(
            &self.label,
            self.inner.judge(
                distances.into(),
                k,
                flags.as_mut_slice().into(),
                scores.as_mut_slice().into(),
            ),
        )?;
        Ok((flags, scores))
    }
    /// What the criterion needs beyond distances. A criterion built against plugin-api 0.2.0
    /// has no extension part: distances only. Bits this host does not know (a criterion built
    /// against a later plugin-api) are refused.
    pub fn needs(&self) -> Result<CriterionNeeds> {
        let Some(ext) = &self.ext else {
            return Ok(CriterionNeeds::default());
        };
        let n = ok(&self.label, ext.needs())?;
        if !Needs::KNOWN.contains(n.needs) {
            bail!(
                "{}: asks the host for inputs it does not know (needs bits {:#x}; this host \
                 provides images and features, plugin-api {}): update memlab",
                self.label,
                n.needs.0,
                memlab_plugin_api::API_VERSION
            );
        }
        Ok(n)
    }
    /// Raw call of the criterion's embedding network (see [`crate::features::embed`] for the
    /// checked one).
    pub fn embed(&self, ops: HostOpsDyn<'_>, x: TensorId) -> Result<TensorId> {
        ok(&self.label, self.ext()?.embed(ops, x))
    }
    /// The safetensors file the embedding network's parameters are loaded from, if any.
    pub fn embedding_weights(&self) -> Result<Option<std::path::PathBuf>> {
        let w = ok(&self.label, self.ext()?.embedding_weights())?;
        Ok(w.into_option()
            .map(|p| std::path::PathBuf::from(p.as_str())))
    }
    /// Flags and scores of a chunk of samples from distances, neighbour ids and (when asked
    /// for) images; `shape` is `[C, H, W]`.
    pub fn judge_with(
        &self,
        distances: &[f32],
        k: usize,
        ids: &[u64],
        shape: [usize; 3],
        samples: &[f32],
        neighbour_images: &[f32],
    ) -> Result<(Vec<bool>, Vec<f32>)> {
        if k == 0 || !distances.len().is_multiple_of(k) || ids.len() != distances.len() {
            bail!("distances are not a whole number of rows of {k}");
        }
        let m = distances.len() / k;
        let mut flags = vec![false; m];
        let mut scores = vec![f32::NAN; m];
        let args = JudgeArgs {
            distances: distances.into(),
            neighbours: k,
            ids: ids.into(),
            shape,
            samples: samples.into(),
            neighbour_images: neighbour_images.into(),
        };
        ok(
            &self.label,
            self.ext()?.judge_with(
                args,
                flags.as_mut_slice().into(),
                scores.as_mut_slice().into(),
            ),
        )?;
        Ok((flags, scores))
    }
}
