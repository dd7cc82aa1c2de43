#![allow(non_local_definitions)]
//! The stable ABI: every type and trait that crosses the host ↔ plugin boundary.
//!
//! Plugin authors rarely touch this module directly: implement the ordinary Rust traits in
//! [`crate::component`] and register them with [`crate::export_plugin!`]; the adapters in
//! [`crate::adapter`] turn them into these FFI-safe objects. The host consumes these types.
//!
//! Every `#[sabi_trait]` here marks its last method with `#[sabi(last_prefix_field)]`. abi_stable
//! 0.11 accepts a library with more trailing methods or fields than the host expects, but refuses
//! one with fewer, so a host can never append to a type an older library already has: within a
//! minor version, additions go into a new root module under its own symbol ([`ExtMod`], 0.3.0),
//! which older libraries simply lack.

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec, Tuple2},
};

/// The five kinds of component a plugin can provide.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    /// Training images and labels ([`crate::Dataset`]).
    Dataset = 0,
    /// A noise formulation in σ-space ([`crate::NoiseSchedule`]).
    Schedule = 1,
    /// A labelling scheme ([`crate::Conditioning`]).
    Conditioning = 2,
    /// A denoiser network or closed-form denoiser ([`crate::Architecture`]).
    Architecture = 3,
    /// A replication criterion ([`crate::Criterion`]).
    Criterion = 4,
}

impl ComponentKind {
    /// All kinds, in display order.
    pub const ALL: [ComponentKind; 5] = [
        ComponentKind::Dataset,
        ComponentKind::Schedule,
        ComponentKind::Conditioning,
        ComponentKind::Architecture,
        ComponentKind::Criterion,
    ];

    /// The lower-case name used in configs and tables (`dataset`, `schedule`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Dataset => "dataset",
            ComponentKind::Schedule => "schedule",
            ComponentKind::Conditioning => "conditioning",
            ComponentKind::Architecture => "architecture",
            ComponentKind::Criterion => "criterion",
        }
    }

    /// Parses [`ComponentKind::as_str`] back.
    pub fn parse(s: &str) -> Option<ComponentKind> {
        ComponentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Documentation of one parameter a component accepts in its config table.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ParamDoc {
    /// Key in the TOML table.
    pub name: RString,
    /// Human-readable type, e.g. `int`, `float`, `[int]`, `"positional" | "fourier"`.
    pub ty: RString,
    /// Default value as TOML text; empty when the parameter is required.
    pub default: RString,
    /// One line saying what it does.
    pub doc: RString,
}

/// What a library says about one component it provides.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ComponentInfo {
    /// Which trait the component implements.
    pub kind: ComponentKind,
    /// Name used in configs; unique per kind across all loaded libraries.
    pub name: RString,
    /// One-line description.
    pub description: RString,
    /// Accepted parameters.
    pub params: RVec<ParamDoc>,
}

/// One published file of a dataset: what `memlab data fetch` downloads and verifies.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PublishedFile {
    /// File name, both on the server and on disk.
    pub name: RString,
    /// Where it is downloaded from.
    pub url: RString,
    /// Lower-case hex md5 of the whole file, as published.
    pub md5: RString,
}

/// A copy of a dataset as images in class folders (`<split>/<class>/<image>`), which `memlab
/// data fetch NAME --from PATH` accepts besides the published files, checks against this layout
/// and packs into `DEST/<dir>/<split>.tar` for the `image-folder` dataset.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ClassFolderLayout {
    /// Sub-folder of the destination that receives the split tars (e.g. `cifar10-jpeg`).
    pub dir: RString,
    /// The class folder names, in label order.
    pub classes: RVec<RString>,
    /// Each split's name and number of images per class (e.g. `train` 5,000, `test` 1,000).
    pub splits: RVec<Tuple2<RString, u64>>,
}

/// What a dataset component declares about its data on disk, for `memlab data fetch`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct DatasetFiles {
    /// The dataset component's name (`memlab data fetch NAME`).
    pub dataset: RString,
    /// One line about the files (what, from where, how large), for help texts.
    pub about: RString,
    /// The published files, downloaded and verified by md5.
    pub files: RVec<PublishedFile>,
    /// How to point the dataset's parameters at the files once they are in place.
    pub usage: RString,
    /// A class-folder copy the host can import too, if the dataset has one.
    pub class_folders: ROption<ClassFolderLayout>,
}

/// What a library says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginManifest {
    /// Library name, e.g. `memlab-synthetic`.
    pub name: RString,
    /// Library version (its crate version).
    pub version: RString,
    /// Version of `memlab-plugin-api` the library was built against.
    pub api_version: RString,
    /// Components the library provides.
    pub components: RVec<ComponentInfo>,
}

// ---------------------------------------------------------------------------------------------
// Host tensor API
// ---------------------------------------------------------------------------------------------

/// Opaque handle of a tensor that lives in the host's engine.
///
/// Ids are only meaningful inside the forward pass that produced them. An id of `u64::MAX`
/// ([`TensorId::INVALID`]) is returned by an op that failed; the host remembers the first
/// failure and reports it when the forward pass returns.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId(pub u64);

impl TensorId {
    /// The id a failed op returns.
    pub const INVALID: TensorId = TensorId(u64::MAX);
}

/// How a parameter is initialised. `a` and `b` mean different things per kind.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Init {
    /// The distribution.
    pub kind: InitKind,
    /// First argument (see [`InitKind`]).
    pub a: f64,
    /// Second argument (see [`InitKind`]).
    pub b: f64,
}

/// Distributions for [`Init`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// Every value `a`.
    Constant = 0,
    /// Uniform on `[a, b)`.
    Uniform = 1,
    /// Normal with mean `a`, standard deviation `b`.
    Normal = 2,
}

impl Init {
    /// All zeros.
    pub const ZEROS: Init = Init::constant(0.0);
    /// All ones.
    pub const ONES: Init = Init::constant(1.0);

    /// Every value `v`.
    pub const fn constant(v: f64) -> Init {
        Init {
            kind: InitKind::Constant,
            a: v,
            b: 0.0,
        }
    }
    /// Uniform on `[lo, hi)`.
    pub const fn uniform(lo: f64, hi: f64) -> Init {
        Init {
            kind: InitKind::Uniform,
            a: lo,
            b: hi,
        }
    }
    /// Normal with mean `mean` and standard deviation `std`.
    pub const fn normal(mean: f64, std: f64) -> Init {
        Init {
            kind: InitKind::Normal,
            a: mean,
            b: std,
        }
    }
    /// PyTorch's default for `Linear`/`Conv2d` weights and biases: U(±1/√fan_in).
    pub fn torch_default(fan_in: usize) -> Init {
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        Init::uniform(-bound, bound)
    }
    /// Xavier/Glorot uniform scaled by `gain`: U(±gain·√(6/(fan_in+fan_out))).
    pub fn xavier_uniform(fan_in: usize, fan_out: usize, gain: f64) -> Init {
        let bound = gain * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
        Init::uniform(-bound, bound)
    }
}

/// Element-wise unary ops.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg = 0,
    Exp = 1,
    Log = 2,
    Sqrt = 3,
    Sin = 4,
    Cos = 5,
    Tanh = 6,
    Sigmoid = 7,
    Relu = 8,
    Silu = 9,
    Gelu = 10,
    Abs = 11,
    Square = 12,
    Recip = 13,
}

impl UnaryOp {
    /// Lower-case name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Abs => "abs",
            UnaryOp::Square => "square",
            UnaryOp::Recip => "recip",
        }
    }
}

/// Tensor ⊙ scalar ops.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarOp {
    /// `x + s`
    Add = 0,
    /// `x * s`
    Mul = 1,
    /// `x ^ s`
    Pow = 2,
    /// `s - x`
    RSub = 3,
    /// `s / x`
    RDiv = 4,
    /// `max(x, s)`
    Max = 5,
    /// `min(x, s)`
    Min = 6,
}

/// Tensor ⊙ tensor ops with NumPy broadcasting.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Max = 4,
    Min = 5,
}

impl BinaryOp {
    /// Lower-case name, as error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
        }
    }
}

/// Reductions over one dimension.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ReduceOp {
    Sum = 0,
    Mean = 1,
    Max = 2,
    Min = 3,
    /// Biased variance (divides by n), as normalisation layers use.
    Var = 4,
}

/// Options of [`HostOps::conv2d`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width).
    pub padding: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// The host's tensor engine as seen from a plugin's `forward`.
///
/// Every op takes and returns opaque [`TensorId`]s; the host executes it on its backend
/// (CPU or CUDA) and records it for autodiff when training. Ops never panic across the
/// boundary: a bad call (wrong shapes, unknown id) returns [`TensorId::INVALID`], later ops on
/// it do the same, and the host reports the first error, naming the op and the shapes, when
/// `forward` returns. Use the typed layer ([`crate::Tensor`], [`crate::nn`]) rather than
/// calling these methods directly.
#[sabi_trait]
pub trait HostOps {
    /// A trainable parameter, created with `init` the first time `name` is seen and looked up
    /// afterwards (in later forward passes). Names are hierarchical paths
    /// (`down.0.conv1.weight`). Requesting the same name twice in one forward pass is an
    /// error unless the later requests go through [`HostOps::shared_param`].
    fn param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> TensorId;
    /// A constant tensor from row-major data.
    fn constant(&self, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId;
    /// A constant integer tensor (labels, indices) from row-major data.
    fn constant_int(&self, data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> TensorId;
    /// A tensor filled with `value`.
    fn full(&self, shape: RSlice<'_, usize>, value: f64) -> TensorId;
    /// Copies a tensor handle (cheap: storage is shared).
    fn retain(&self, x: TensorId) -> TensorId;
    /// Releases a handle. The typed layer calls this on drop.
    fn release(&self, x: TensorId);
    /// Rank of `x` (0 for an invalid id).
    fn rank(&self, x: TensorId) -> usize;
    /// Size of dimension `dim` of `x` (0 when out of range or invalid).
    fn dim(&self, x: TensorId, dim: usize) -> usize;
    /// Element-wise unary op.
    fn unary(&self, op: UnaryOp, x: TensorId) -> TensorId;
    /// Tensor ⊙ scalar.
    fn scalar(&self, op: ScalarOp, x: TensorId, s: f64) -> TensorId;
    /// Tensor ⊙ tensor with NumPy broadcasting.
    fn binary(&self, op: BinaryOp, a: TensorId, b: TensorId) -> TensorId;
    /// Clamps every value into `[lo, hi]`.
    fn clamp(&self, x: TensorId, lo: f64, hi: f64) -> TensorId;
    /// Reshape; one entry may be `-1`.
    fn reshape(&self, x: TensorId, shape: RSlice<'_, i64>) -> TensorId;
    /// Permutes dimensions.
    fn permute(&self, x: TensorId, axes: RSlice<'_, usize>) -> TensorId;
    /// Concatenates along `dim`.
    fn concat(&self, xs: RSlice<'_, TensorId>, dim: usize) -> TensorId;
    /// Elements `start..end` along `dim`.
    fn slice(&self, x: TensorId, dim: usize, start: usize, end: usize) -> TensorId;
    /// Reduction over `dim`, keeping it with size 1 when `keepdim`.
    fn reduce(&self, op: ReduceOp, x: TensorId, dim: usize, keepdim: bool) -> TensorId;
    /// Batched matrix product over the last two dimensions (leading dims broadcast).
    fn matmul(&self, a: TensorId, b: TensorId) -> TensorId;
    /// Softmax over `dim`.
    fn softmax(&self, x: TensorId, dim: usize) -> TensorId;
    /// `x @ w + b` over the last dimension; `w` is `[in, out]`, `b` is `[out]`.
    fn linear(&self, x: TensorId, w: TensorId, b: ROption<TensorId>) -> TensorId;
    /// 2-D convolution of NCHW `x` with `w` `[out, in/groups, kh, kw]` and optional bias `[out]`.
    fn conv2d(
        &self,
        x: TensorId,
        w: TensorId,
        b: ROption<TensorId>,
        opts: Conv2dOptions,
    ) -> TensorId;
    /// Group normalisation of NC… `x` over `groups` channel groups, with optional per-channel
    /// affine `gamma`, `beta` of shape `[C]`.
    fn group_norm(
        &self,
        x: TensorId,
        groups: usize,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f64,
    ) -> TensorId;
    /// Layer normalisation over the last dimension with optional affine `[D]` parameters.
    fn layer_norm(
        &self,
        x: TensorId,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f64,
    ) -> TensorId;
    /// Inverted dropout with drop probability `p`; identity when not training.
    fn dropout(&self, x: TensorId, p: f64) -> TensorId;
    /// Average pooling of NCHW `x` with a square `kernel` and `stride`.
    fn avg_pool2d(&self, x: TensorId, kernel: usize, stride: usize) -> TensorId;
    /// Nearest-neighbour upsampling of NCHW `x` by an integer `factor`.
    fn upsample_nearest2d(&self, x: TensorId, factor: usize) -> TensorId;
    /// Rows of `table` `[V, D]` picked by the integer tensor `ids` `[N]` → `[N, D]`.
    fn embedding(&self, table: TensorId, ids: TensorId) -> TensorId;
    /// Whether this forward pass is a training step (dropout active, autodiff recording).
    fn training(&self) -> bool;
    /// The training set as a `[N, C, H, W]` constant, if the architecture asked for it
    /// ([`crate::ArchInfo::needs_training_set`]); `INVALID` otherwise.
    fn training_set(&self) -> TensorId;
    /// Reads a tensor back as row-major `f32` (slow; for tests and debugging).
    fn read(&self, x: TensorId) -> RVec<f32>;
    /// Raises an error from plugin code; the host reports it after `forward` returns.
    #[sabi(last_prefix_field)]
    fn fail(&self, message: RStr<'_>);
    // Added in 0.3.0, a minor release: `HostOps` changed, so libraries built against 0.2 are
    // refused by version and must be rebuilt.
    /// A named non-trainable tensor (PyTorch's `register_buffer`), created from the row-major
    /// `data` the first time `name` is seen and looked up afterwards: saved in snapshots and
    /// loaded from checkpoints (`init_from`) like a parameter, but never optimised and not
    /// counted as a parameter. Names share the parameters' namespace; like a parameter, a
    /// buffer may be requested once per forward pass.
    fn buffer(&self, name: RStr<'_>, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId;
    /// Like [`HostOps::param`], but the plugin declares that it uses this parameter more than
    /// once in one forward pass (shared weights). A second [`HostOps::param`] request for a
    /// name already used in the same pass is an error naming the parameter.
    fn shared_param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> TensorId;
}

/// The host ops object as passed to a plugin.
pub type HostOpsDyn<'a> = HostOps_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>;

// ---------------------------------------------------------------------------------------------
// Component interfaces
// ---------------------------------------------------------------------------------------------

/// Shape and size of a dataset.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of images.
    pub len: u64,
    /// Names of the classes (empty: a single unnamed class 0).
    pub class_names: RVec<RString>,
}

/// FFI form of [`crate::Dataset`].
#[sabi_trait]
pub trait FfiDataset: Send + Sync {
    /// Shape and size.
    fn info(&self) -> RResult<DatasetInfo, RString>;
    /// Writes images `indices` into `images` (`len(indices)·C·H·W`, NCHW, values in [−1, 1])
    /// and their class labels into `labels`.
    fn fill(
        &self,
        indices: RSlice<'_, u64>,
        images: RSliceMut<'_, f32>,
        labels: RSliceMut<'_, i64>,
    ) -> RResult<(), RString>;
    /// Whether [`FfiDataset::validity`] is implemented.
    fn has_validity(&self) -> bool;
    /// Scores in [0, 1] of how well each image obeys the distribution's rules.
    #[sabi(last_prefix_field)]
    fn validity(&self, images: RSlice<'_, f32>, scores: RSliceMut<'_, f32>)
    -> RResult<(), RString>;
}

/// EDM preconditioning coefficients at one noise level.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Precond {
    /// Weight of the skip connection.
    pub c_skip: f64,
    /// Scale of the network output.
    pub c_out: f64,
    /// Scale of the network input.
    pub c_in: f64,
    /// Noise-level conditioning fed to the network.
    pub c_noise: f64,
}

/// FFI form of [`crate::NoiseSchedule`].
#[sabi_trait]
pub trait FfiSchedule: Send + Sync {
    /// Maps per-sample random numbers (`uniform` on (0,1), `normal` standard) to training σ.
    fn training_sigmas(
        &self,
        uniform: RSlice<'_, f64>,
        normal: RSlice<'_, f64>,
        out: RSliceMut<'_, f64>,
    ) -> RResult<(), RString>;
    /// Preconditioning at σ.
    fn precond(&self, sigma: f64) -> RResult<Precond, RString>;
    /// Loss weight λ(σ).
    fn loss_weight(&self, sigma: f64) -> RResult<f64, RString>;
    /// Decreasing σ sequence for `steps` sampling steps, ending with 0 (length `steps + 1`).
    fn sampling_sigmas(&self, steps: usize) -> RResult<RVec<f64>, RString>;
    /// Nearest σ the formulation supports (identity for continuous ones).
    #[sabi(last_prefix_field)]
    fn round_sigma(&self, sigma: f64) -> RResult<f64, RString>;
}

/// What the conditioning scheme sees of the training data.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSummary {
    /// Number of training images.
    pub len: u64,
    /// Number of dataset classes (1 when unlabelled).
    pub classes: u32,
}

/// FFI form of [`crate::Conditioning`].
#[sabi_trait]
pub trait FfiConditioning: Send + Sync {
    /// Number of label classes the model is conditioned on; 0 means unconditional.
    fn classes(&self, data: DataSummary) -> RResult<u32, RString>;
    /// Training label of each sample from its dataset label and its index in the training set.
    fn train_labels(
        &self,
        data: DataSummary,
        dataset_labels: RSlice<'_, i64>,
        ids: RSlice<'_, u64>,
        out: RSliceMut<'_, i64>,
    ) -> RResult<(), RString>;
    /// Labels to generate `out.len()` samples with, drawn with `seed`.
    #[sabi(last_prefix_field)]
    fn sample_labels(
        &self,
        data: DataSummary,
        seed: u64,
        out: RSliceMut<'_, i64>,
    ) -> RResult<(), RString>;
}

/// What an architecture declares about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchInfo {
    /// The host must provide the training set via [`HostOps::training_set`].
    pub needs_training_set: bool,
    /// `forward` returns the denoised image D(x; σ) directly, with no preconditioning: the
    /// host then passes the raw noisy image and σ itself (not c_noise).
    pub outputs_denoised: bool,
    /// No trainable parameters: the host skips training.
    pub parameter_free: bool,
    /// improved-diffusion's `learn_sigma`: `forward` returns 2·C channels, the first C the
    /// usual output and the last C the variance interpolation v ∈ [−1, 1]
    /// (log Σ = v'·log β + (1 − v')·log β̃ with v' = (v + 1)/2). Only meaningful with discrete
    /// DDPM schedules: the hybrid loss (`[train] loss = "hybrid"`) trains them and DDPM
    /// ancestral sampling uses them (`[sample] variance`, by default after a hybrid run);
    /// otherwise the host drops the extra channels.
    pub learned_variance: bool,
    /// `forward` ignores `labels` and `classes`: its output is the same whatever the labels.
    /// The host then refuses a class-conditional config (`[conditioning]` giving classes), whose
    /// samples would be identical to the unconditional run's, and reports no per-class results.
    /// Default `false`: the architecture may use labels when the model is conditional.
    pub ignores_labels: bool,
}

/// Inputs of one forward pass.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct ForwardArgs {
    /// Network input `[N, C, H, W]` (already scaled by c_in unless `outputs_denoised`).
    pub x: TensorId,
    /// Noise conditioning `[N]` (c_noise, or σ when `outputs_denoised`).
    pub noise: TensorId,
    /// Integer class labels `[N]`, when the model is conditional.
    pub labels: ROption<TensorId>,
    /// Number of label classes (0 when unconditional).
    pub classes: u32,
}

/// FFI form of [`crate::Architecture`].
#[sabi_trait]
pub trait FfiArchitecture: Send + Sync {
    /// Declarations.
    fn info(&self) -> RResult<ArchInfo, RString>;
    /// One forward pass through the host ops.
    #[sabi(last_prefix_field)]
    fn forward(&self, ops: HostOpsDyn<'_>, args: ForwardArgs) -> RResult<TensorId, RString>;
}

/// Distance a criterion is judged on.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// Euclidean distance in pixel space ([−1, 1] scale).
    L2 = 0,
    /// Largest absolute pixel difference.
    Linf = 1,
}

/// What a criterion needs from the k-NN engine.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriterionInfo {
    /// Distance to search with.
    pub distance: Distance,
    /// Neighbours per sample (sorted ascending) the criterion needs.
    pub neighbours: usize,
}

/// What a criterion asks the host for beyond its k nearest distances (plugin-api 0.3.0), as
/// bit flags: combine with `|`.
///
/// ```
/// use memlab_plugin_api::Needs;
///
/// let n = Needs::IMAGES | Needs::FEATURES;
/// assert!(n.contains(Needs::IMAGES) && n.contains(Needs::FEATURES));
/// assert!(!Needs::DISTANCES.contains(Needs::IMAGES));
/// assert_eq!(Needs::default(), Needs::DISTANCES);
/// assert_eq!(n.to_string(), "images and features");
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Needs(pub u32);

impl Needs {
    /// Only the k nearest pixel-space distances (every criterion before plugin-api 0.3.0).
    pub const DISTANCES: Needs = Needs(0);
    /// The sample and its k nearest training images (pixels in [−1, 1], NCHW), besides the
    /// distances: for patch-wise, SSIM-like or per-region criteria.
    pub const IMAGES: Needs = Needs(1);
    /// Search in the feature space of the criterion's embedding network
    /// ([`crate::Criterion::embed`]) instead of pixel space: the k nearest training images and
    /// their distances are those of the embeddings.
    pub const FEATURES: Needs = Needs(2);
    /// Every bit this version of plugin-api knows; a host refuses a criterion asking for others.
    pub const KNOWN: Needs = Needs(3);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Needs) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::fmt::Display for Needs {
    /// `distances`, `images`, `features` or `images and features` (unknown bits in hex).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.contains(Needs::IMAGES) {
            parts.push("images".to_string());
        }
        if self.contains(Needs::FEATURES) {
            parts.push("features".to_string());
        }
        let unknown = self.0 & !Needs::KNOWN.0;
        if unknown != 0 {
            parts.push(format!("unknown inputs {unknown:#x}"));
        }
        if parts.is_empty() {
            f.write_str("distances")
        } else {
            f.write_str(&parts.join(" and "))
        }
    }
}

impl std::ops::BitOr for Needs {
    type Output = Needs;
    fn bitor(self, rhs: Needs) -> Needs {
        Needs(self.0 | rhs.0)
    }
}

/// A criterion's requests as the host reads them ([`FfiCriterionExt::needs`], plugin-api 0.3.0).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CriterionNeeds {
    /// What the criterion judges on besides distances.
    pub needs: Needs,
    /// Seed of the embedding network's parameter initialisation (with [`Needs::FEATURES`]):
    /// each parameter is drawn from (seed, its name), as an architecture's are from the run's seed.
    pub embedding_seed: u64,
}

/// Everything a criterion judges a chunk of samples on ([`FfiCriterionExt::judge_with`]).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct JudgeArgs<'a> {
    /// Ascending distances, `neighbours` per sample, row-major (pixel or feature space).
    pub distances: RSlice<'a, f32>,
    /// Neighbours per sample (k).
    pub neighbours: usize,
    /// Training-set positions of the neighbours, like `distances`.
    pub ids: RSlice<'a, u64>,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// The samples, NCHW (empty unless [`Needs::IMAGES`]).
    pub samples: RSlice<'a, f32>,
    /// The neighbours' images, `neighbours` per sample in the order of `distances`
    /// (empty unless [`Needs::IMAGES`]).
    pub neighbour_images: RSlice<'a, f32>,
}

/// FFI form of [`crate::Criterion`]: what every criterion provides, unchanged since
/// plugin-api 0.2.0. What a criterion may ask for beyond distances is a separate object,
/// [`FfiCriterionExt`], reached through the library's second root module ([`ExtMod`]).
#[sabi_trait]
pub trait FfiCriterion: Send + Sync {
    /// Distance and neighbour count.
    fn info(&self) -> RResult<CriterionInfo, RString>;
    /// Judges `flags.len()` samples from their ascending neighbour distances (row-major,
    /// `neighbours` per sample): a replicate flag and a score per sample.
    #[sabi(last_prefix_field)]
    fn judge(
        &self,
        distances: RSlice<'_, f32>,
        neighbours: usize,
        flags: RSliceMut<'_, bool>,
        scores: RSliceMut<'_, f32>,
    ) -> RResult<(), RString>;
}

/// The part of [`crate::Criterion`] added in plugin-api 0.3.0: what the criterion needs beyond
/// distances, its embedding network, and judging with images or features.
///
/// It is not appended to [`FfiCriterion`]: abi_stable 0.11 refuses a library whose vtable has
/// fewer methods than the host's (“too many fields”), so a host with a longer `FfiCriterion`
/// would refuse criteria built before the methods were added. Every library built against 0.3
/// exports [`ExtMod`] under its own symbol; a library without it would be treated as
/// distances-only.
#[sabi_trait]
pub trait FfiCriterionExt: Send + Sync {
    /// What the criterion needs beyond distances.
    fn needs(&self) -> RResult<CriterionNeeds, RString>;
    /// Embeds images `x` (`[N, C, H, W]`) into features `[N, D]` through the host ops.
    fn embed(&self, ops: HostOpsDyn<'_>, x: TensorId) -> RResult<TensorId, RString>;
    /// A safetensors file holding every parameter of the embedding network by name, loaded over
    /// the seeded initialisation; `RNone`: the seeded initialisation is used as it is.
    fn embedding_weights(&self) -> RResult<ROption<RString>, RString>;
    /// Judges a chunk of samples from [`JudgeArgs`].
    #[sabi(last_prefix_field)]
    fn judge_with(
        &self,
        args: JudgeArgs<'_>,
        flags: RSliceMut<'_, bool>,
        scores: RSliceMut<'_, f32>,
    ) -> RResult<(), RString>;
}

/// Boxed FFI dataset.
pub type DatasetBox = FfiDataset_TO<'static, RBox<()>>;
/// Boxed FFI schedule.
pub type ScheduleBox = FfiSchedule_TO<'static, RBox<()>>;
/// Boxed FFI conditioning.
pub type ConditioningBox = FfiConditioning_TO<'static, RBox<()>>;
/// Boxed FFI architecture.
pub type ArchitectureBox = FfiArchitecture_TO<'static, RBox<()>>;
/// Boxed FFI criterion.
pub type CriterionBox = FfiCriterion_TO<'static, RBox<()>>;
/// Boxed FFI criterion extension (plugin-api 0.3.0).
pub type CriterionExtBox = FfiCriterionExt_TO<'static, RBox<()>>;

/// A constructed component of any kind.
#[repr(u8)]
#[derive(StableAbi)]
pub enum Component {
    /// A dataset.
    Dataset(DatasetBox),
    /// A noise schedule.
    Schedule(ScheduleBox),
    /// A conditioning scheme.
    Conditioning(ConditioningBox),
    /// An architecture.
    Architecture(ArchitectureBox),
    /// A replication criterion.
    Criterion(CriterionBox),
}

impl Component {
    /// The kind of this component.
    pub fn kind(&self) -> ComponentKind {
        match self {
            Component::Dataset(_) => ComponentKind::Dataset,
            Component::Schedule(_) => ComponentKind::Schedule,
            Component::Conditioning(_) => ComponentKind::Conditioning,
            Component::Architecture(_) => ComponentKind::Architecture,
            Component::Criterion(_) => ComponentKind::Criterion,
        }
    }
}

/// The root module every plugin library exports. Unchanged since 0.2.0 and never to be appended
/// to: abi_stable 0.11 refuses a library whose prefix type has fewer fields than the host's, so
/// an appended field would lock out every older library. Additions go into [`ExtMod`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Name, version and components of the library.
    pub manifest: extern "C" fn() -> RResult<PluginManifest, RString>,
    /// Constructs component `name` of `kind` from its parameters (a TOML table as text) and
    /// a seed.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(
        kind: ComponentKind,
        name: RStr<'_>,
        params: RStr<'_>,
        seed: u64,
    ) -> RResult<Component, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "memlab_plugin";
    const NAME: &'static str = "memlab plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The library's second root module (plugin-api 0.3.0), exported under the symbol
/// [`EXT_SYMBOL`] by [`crate::export_plugin!`]: additions to the interface that the
/// [`PluginMod`] cannot carry without breaking libraries built against an earlier release of
/// the same minor version. A host looks it up after loading `PluginMod`; a library without it
/// simply has none of these additions. Later versions append fields here (the host copes with their absence) or,
/// when abi_stable's check would refuse older libraries, add another module like this one.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ExtModRef)))]
#[sabi(missing_field(panic))]
pub struct ExtMod {
    /// Constructs the [`FfiCriterionExt`] part of criterion `name` from its parameters and seed
    /// (the same arguments as [`PluginMod::create`]; the host calls both).
    pub criterion_ext: extern "C" fn(
        name: RStr<'_>,
        params: RStr<'_>,
        seed: u64,
    ) -> RResult<CriterionExtBox, RString>,
    /// The published files of the library's datasets, for `memlab data fetch` (a library
    /// without `ExtMod` declares none).
    #[sabi(last_prefix_field)]
    pub downloads: extern "C" fn() -> RResult<RVec<DatasetFiles>, RString>,
}

/// Symbol under which a library exports its [`ExtMod`] header (NUL-terminated).
pub const EXT_SYMBOL: &[u8] = b"memlab_plugin_ext_header\0";

impl RootModule for ExtModRef {
    declare_root_module_statics! {ExtModRef}
    const BASE_NAME: &'static str = "memlab_plugin_ext";
    const NAME: &'static str = "memlab plugin extensions";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
