//! The five component traits a plugin author implements: plain Rust, no ABI types.
//!
//! Register implementations with [`crate::Plugin`] and export them with
//! [`crate::export_plugin!`]; the adapters make them FFI-safe and catch panics.

use crate::ffi::{ArchInfo, CriterionInfo, DataSummary, Distance, Precond};
use crate::tensor::{Ctx, Tensor};

/// Result type of plugin methods: errors are plain messages. Say what was wrong and what was
/// expected; the host adds the plugin and component name.
pub type PResult<T> = Result<T, String>;

/// Shape, size and class names of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetShape {
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of images.
    pub len: u64,
    /// Class names; empty for a single unnamed class 0.
    pub class_names: Vec<String>,
}

impl DatasetShape {
    /// Values per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// A source of training images with labels.
///
/// Images are float32 NCHW in [−1, 1]. `fill` must be deterministic per index (the same
/// index gives the same image on every call, whatever the batch), so the host can subset,
/// shuffle and resume freely.
pub trait Dataset: Send + Sync + 'static {
    /// Shape and size.
    fn shape(&self) -> PResult<DatasetShape>;
    /// Writes images `indices` into `images` (length `indices.len()·C·H·W`) and their class
    /// labels into `labels`.
    fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()>;
    /// Scores in [0, 1]: how well each image (NCHW, concatenated) obeys this distribution's
    /// rules, so generalization can be measured without a feature network. `None` when the
    /// dataset has no such rules (real data).
    fn validity(&self, images: &[f32], scores: &mut [f32]) -> Option<PResult<()>> {
        let _ = (images, scores);
        None
    }
}

/// A noise formulation in σ-space, as EDM tabulates it: x_σ = y + σ·n.
pub trait NoiseSchedule: Send + Sync + 'static {
    /// Training σ for each sample from its random numbers (`uniform` on (0,1) and standard
    /// `normal`, one each per sample); write into `out`.
    fn training_sigmas(&self, uniform: &[f64], normal: &[f64], out: &mut [f64]) -> PResult<()>;
    /// Preconditioning c_skip, c_out, c_in, c_noise at σ.
    fn precond(&self, sigma: f64) -> Precond;
    /// Loss weight λ(σ).
    fn loss_weight(&self, sigma: f64) -> f64;
    /// Decreasing σ sequence for `steps` sampling steps, ending with 0 (`steps + 1` values).
    fn sampling_sigmas(&self, steps: usize) -> PResult<Vec<f64>>;
    /// Nearest σ the formulation supports (discrete schedules round; default identity). For a
    /// discrete schedule the values it returns are its grid σ_0 < … < σ_{T−1}: the host reads
    /// the grid back from them for improved-diffusion's hybrid loss and learned variance.
    fn round_sigma(&self, sigma: f64) -> f64 {
        sigma
    }
}

/// How training images are labelled and which labels are sampled.
pub trait Conditioning: Send + Sync + 'static {
    /// Number of label classes the model sees; 0 means unconditional.
    fn classes(&self, data: DataSummary) -> u32;
    /// Label of each training sample from its dataset label and training-set index `ids`.
    fn train_labels(
        &self,
        data: DataSummary,
        dataset_labels: &[i64],
        ids: &[u64],
        out: &mut [i64],
    ) -> PResult<()>;
    /// Labels for `out.len()` samples, drawn deterministically from `seed`.
    fn sample_labels(&self, data: DataSummary, seed: u64, out: &mut [i64]) -> PResult<()>;
}

/// Inputs of [`Architecture::forward`], as typed tensors.
pub struct Inputs<'a> {
    /// Network input `[N, C, H, W]` (scaled by c_in unless the architecture outputs D directly).
    pub x: Tensor<'a>,
    /// Noise conditioning `[N]`: c_noise, or σ itself for `outputs_denoised` architectures.
    pub noise: Tensor<'a>,
    /// Integer class labels `[N]` when conditional.
    pub labels: Option<Tensor<'a>>,
    /// Number of classes (0 when unconditional).
    pub classes: u32,
}

/// A denoiser, written against the host tensor API through [`Ctx`].
///
/// Parameters are created by name on first use (`ctx.param(..)` or the [`crate::nn`] layers),
/// so `forward` is the whole model definition.
pub trait Architecture: Send + Sync + 'static {
    /// Declarations (closed-form, needs the training set, ignores labels, ...). Default: a
    /// trainable network F, free to use the labels of a conditional model, whose output the
    /// host preconditions as D = c_skip·x + c_out·F(c_in·x, c_noise).
    fn info(&self) -> ArchInfo {
        ArchInfo::default()
    }
    /// One forward pass. Returns a tensor shaped like `inputs.x`.
    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inputs: Inputs<'a>) -> PResult<Tensor<'a>>;
}

/// Decides from neighbour distances whether a generated sample replicates a training image.
pub trait Criterion: Send + Sync + 'static {
    /// Distance to search with.
    fn distance(&self) -> Distance;
    /// Neighbours per sample the criterion needs (sorted ascending).
    fn neighbours(&self) -> usize;
    /// Flag and score for each sample; `distances` holds `neighbours()` ascending distances per
    /// sample, row-major.
    fn judge(&self, distances: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()>;
}

pub(crate) fn criterion_info(c: &dyn Criterion) -> CriterionInfo {
    CriterionInfo {
        distance: c.distance(),
        neighbours: c.neighbours(),
    }
}
