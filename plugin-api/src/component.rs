//! The five component traits a plugin author implements: plain Rust, no ABI types.
//!
//! Register implementations with [`crate::Plugin`] and export them with
//! [`crate::export_plugin!`]; the adapters make them FFI-safe and catch panics.

use crate::ffi::{ArchInfo, CriterionInfo, CriterionNeeds, DataSummary, Distance, Needs, Precond};
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

/// What a criterion judges a chunk of samples on when it asks for more than distances
/// ([`Criterion::needs`]): the distances, the neighbours' training-set positions and, with
/// [`Needs::IMAGES`], the pixels of each sample and of its neighbours.
///
/// ```
/// use memlab_plugin_api::Judging;
///
/// // Two 1×1×2 samples with one neighbour each.
/// let j = Judging {
///     distances: &[0.0, 1.0],
///     neighbours: 1,
///     ids: &[7, 3],
///     shape: [1, 1, 2],
///     samples: &[0.5, 0.5, -1.0, 1.0],
///     neighbour_images: &[0.5, 0.5, 0.0, 1.0],
/// };
/// assert_eq!(j.len(), 2);
/// assert_eq!(j.image_len(), 2);
/// assert_eq!(j.sample(1), &[-1.0, 1.0]);
/// assert_eq!(j.neighbour(1, 0), &[0.0, 1.0]);
/// assert_eq!((j.distances_of(1), j.ids_of(1)), (&[1.0f32][..], &[3u64][..]));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Judging<'a> {
    /// Ascending distances, `neighbours` per sample, row-major: in pixel space, or in the
    /// embedding's feature space with [`Needs::FEATURES`]; the metric is
    /// [`Criterion::distance`] either way.
    pub distances: &'a [f32],
    /// Neighbours per sample (k = [`Criterion::neighbours`], fewer if the training set is smaller).
    pub neighbours: usize,
    /// Training-set positions of the neighbours, like `distances`.
    pub ids: &'a [u64],
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// The samples, NCHW in [−1, 1] (empty unless [`Needs::IMAGES`]).
    pub samples: &'a [f32],
    /// The neighbours' images, `neighbours` per sample in the order of `distances`
    /// (empty unless [`Needs::IMAGES`]).
    pub neighbour_images: &'a [f32],
}

impl<'a> Judging<'a> {
    /// Number of samples in this chunk.
    pub fn len(&self) -> usize {
        self.distances.len() / self.neighbours.max(1)
    }
    /// Whether the chunk holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Distances of sample `i`, ascending.
    pub fn distances_of(&self, i: usize) -> &'a [f32] {
        &self.distances[i * self.neighbours..(i + 1) * self.neighbours]
    }
    /// Training-set positions of sample `i`'s neighbours.
    pub fn ids_of(&self, i: usize) -> &'a [u64] {
        &self.ids[i * self.neighbours..(i + 1) * self.neighbours]
    }
    /// Pixels of sample `i` (requires [`Needs::IMAGES`]).
    pub fn sample(&self, i: usize) -> &'a [f32] {
        let d = self.image_len();
        &self.samples[i * d..(i + 1) * d]
    }
    /// Pixels of the `j`-th nearest training image of sample `i` (requires [`Needs::IMAGES`]).
    pub fn neighbour(&self, i: usize, j: usize) -> &'a [f32] {
        let d = self.image_len();
        let at = (i * self.neighbours + j) * d;
        &self.neighbour_images[at..at + d]
    }
}

/// Decides whether a generated sample replicates a training image: from the k nearest
/// distances (the default), or, by overriding [`Criterion::needs`], from the images themselves
/// or from distances in a feature space the criterion defines.
///
/// A distances-only criterion implements `distance`, `neighbours` and `judge`. One that asks
/// for more returns [`Needs::IMAGES`] and/or [`Needs::FEATURES`] from `needs` and implements
/// `judge_with` (and `embed` for features):
///
/// ```
/// use memlab_plugin_api::prelude::*;
///
/// /// Replicate iff the nearest training image matches the sample to within `tol` in every pixel.
/// struct Exact { tol: f32 }
///
/// impl Criterion for Exact {
///     fn distance(&self) -> Distance { Distance::L2 }
///     fn neighbours(&self) -> usize { 1 }
///     fn needs(&self) -> Needs { Needs::IMAGES }
///     fn judge_with(&self, j: &Judging<'_>, flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
///         for i in 0..j.len() {
///             let worst = j.sample(i).iter().zip(j.neighbour(i, 0))
///                 .map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
///             scores[i] = worst;
///             flags[i] = worst <= self.tol;
///         }
///         Ok(())
///     }
/// }
///
/// let c = Exact { tol: 0.01 };
/// let j = Judging { distances: &[0.0, 2.0], neighbours: 1, ids: &[0, 1], shape: [1, 1, 2],
///     samples: &[0.5, 0.5, 1.0, 1.0], neighbour_images: &[0.5, 0.5, -1.0, 1.0] };
/// let (mut flags, mut scores) = ([false; 2], [0f32; 2]);
/// c.judge_with(&j, &mut flags, &mut scores).unwrap();
/// assert_eq!(flags, [true, false]);
/// // A host too old to provide images calls `judge`, which refuses with an explanation.
/// let e = c.judge(&[0.0, 2.0], &mut flags, &mut scores).unwrap_err();
/// assert!(e.contains("judges on images") && e.contains("plugin-api"), "{e}");
/// ```
pub trait Criterion: Send + Sync + 'static {
    /// Distance to search with: between images in pixel space, or between embeddings with
    /// [`Needs::FEATURES`].
    fn distance(&self) -> Distance;
    /// Neighbours per sample the criterion needs (sorted ascending).
    fn neighbours(&self) -> usize;
    /// Flag and score for each sample; `distances` holds `neighbours()` ascending distances per
    /// sample, row-major. Required for a distances-only criterion; the default refuses (a
    /// criterion that asks for more implements [`Criterion::judge_with`] instead).
    fn judge(&self, distances: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
        let _ = (distances, flags, scores);
        Err(format!(
            "this criterion judges on {} beyond distances, which this host does not provide: \
             it needs memlab with plugin-api {} or later",
            self.needs(),
            crate::API_VERSION
        ))
    }
    /// What the criterion needs beyond the k nearest pixel distances. Default
    /// [`Needs::DISTANCES`].
    fn needs(&self) -> Needs {
        Needs::DISTANCES
    }
    /// Judges one chunk of samples (the host may split the samples into several chunks: flags
    /// and scores must be per-sample functions). Called instead of `judge` when `needs` asks
    /// for more than distances; the default passes the distances to [`Criterion::judge`].
    fn judge_with(
        &self,
        judging: &Judging<'_>,
        flags: &mut [bool],
        scores: &mut [f32],
    ) -> PResult<()> {
        self.judge(judging.distances, flags, scores)
    }
    /// The embedding network (with [`Needs::FEATURES`]): maps images `x` (`[N, C, H, W]`, in
    /// [−1, 1]) to features `[N, D]`, written with the same typed layer as an architecture's
    /// `forward`. The host runs it without autodiff, in batches, on the samples and on every
    /// training image, and searches the k nearest exactly in feature space with
    /// [`Criterion::distance`] (L2-normalise the output here for a cosine distance: L2 between
    /// unit vectors is √(2 − 2·cos)). Parameters are created by name and initialised by the
    /// host from [`Criterion::embedding_seed`] and each name, so a random-feature network is
    /// the same in every run.
    fn embed<'a>(&self, ctx: &'a Ctx<'a>, x: &Tensor<'a>) -> PResult<Tensor<'a>> {
        let _ = (ctx, x);
        Err("this criterion asks for features but defines no embedding network (`embed`)".into())
    }
    /// Seed of the embedding network's parameters (default 0). Fixed by the criterion, not the
    /// run, so the same criterion parameters give the same network in every run of a study.
    fn embedding_seed(&self) -> u64 {
        0
    }
    /// Trained weights for the embedding network (default `None`: the seeded initialisation):
    /// a safetensors file, as the user wrote its path (relative to the working directory), with
    /// every parameter of the network by name and shape and nothing else, as
    /// `[architecture] init_from` loads an architecture's. The host loads it over the seeded
    /// parameters after creating them, and names every missing, unexpected or mis-shaped tensor.
    fn embedding_weights(&self) -> Option<String> {
        None
    }
}

pub(crate) fn criterion_info(c: &dyn Criterion) -> CriterionInfo {
    CriterionInfo {
        distance: c.distance(),
        neighbours: c.neighbours(),
    }
}

pub(crate) fn criterion_needs(c: &dyn Criterion) -> CriterionNeeds {
    CriterionNeeds {
        needs: c.needs(),
        embedding_seed: c.embedding_seed(),
    }
}
