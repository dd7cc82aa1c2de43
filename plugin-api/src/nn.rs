//! Reusable layers over the typed tensor layer.
//!
//! Each layer is a small config value (`Conv2d::new(3, 64, 3).padding(1)`) whose `forward`
//! takes the [`Ctx`] scope its parameters live in. Parameter shapes follow the usual
//! conventions of PyTorch (conv weights `[out, in/groups, kh, kw]`, linear weights `[out, in]`), so
//! a PyTorch `state_dict` loads by name and shape, and
//! initialisations follow PyTorch's defaults unless a layer says otherwise, so parameter counts
//! and init statistics match reference PyTorch code.

use crate::ffi::{Conv2dOptions, Init, TensorId};
use crate::tensor::{Ctx, Tensor};

/// Fully connected layer `y = x·Wᵀ + b` over the last dimension (`W` is `[d_out, d_in]`, as
/// PyTorch's `nn.Linear`).
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Whether to add a bias.
    pub bias: bool,
    /// Weight init override (default: PyTorch's U(±1/√d_in)).
    pub init: Option<Init>,
}

impl Linear {
    /// `d_in → d_out` with bias.
    pub fn new(d_in: usize, d_out: usize) -> Linear {
        Linear {
            d_in,
            d_out,
            bias: true,
            init: None,
        }
    }
    /// Without bias.
    pub fn no_bias(mut self) -> Linear {
        self.bias = false;
        self
    }
    /// Zero-initialised weight and bias (for output layers).
    pub fn zero_init(mut self) -> Linear {
        self.init = Some(Init::ZEROS);
        self
    }
    /// Custom weight init.
    pub fn with_init(mut self, init: Init) -> Linear {
        self.init = Some(init);
        self
    }
    /// Applies the layer; parameters are `weight` and `bias` in `ctx`'s scope.
    pub fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        let default = Init::torch_default(self.d_in);
        let w = ctx.param(
            "weight",
            &[self.d_out, self.d_in],
            self.init.unwrap_or(default),
        );
        let b = self.bias.then(|| {
            let bi = if self.init == Some(Init::ZEROS) {
                Init::ZEROS
            } else {
                default
            };
            ctx.param("bias", &[self.d_out], bi)
        });
        let y = x.linear(&w.transpose(0, 1), b.as_ref());
        ctx.wrap(y.into_id())
    }
    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.d_in * self.d_out + if self.bias { self.d_out } else { 0 }
    }
}

/// 2-D convolution over NCHW tensors.
#[derive(Debug, Clone, Copy)]
pub struct Conv2d {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride, padding, dilation, groups.
    pub opts: Conv2dOptions,
    /// Whether to add a bias.
    pub bias: bool,
    /// Weight init override (default: PyTorch's U(±1/√fan_in)).
    pub init: Option<Init>,
}

impl Conv2d {
    /// `c_in → c_out` with a `kernel × kernel` kernel, stride 1, no padding, bias.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Conv2d {
        Conv2d {
            c_in,
            c_out,
            kernel,
            opts: Conv2dOptions::default(),
            bias: true,
            init: None,
        }
    }
    /// Zero padding on both sides.
    pub fn padding(mut self, p: usize) -> Conv2d {
        self.opts.padding = [p, p];
        self
    }
    /// "Same" padding for odd kernels: `kernel / 2`.
    pub fn same(self) -> Conv2d {
        let k = self.kernel;
        self.padding(k / 2)
    }
    /// Stride.
    pub fn stride(mut self, s: usize) -> Conv2d {
        self.opts.stride = [s, s];
        self
    }
    /// Grouped convolution.
    pub fn groups(mut self, g: usize) -> Conv2d {
        self.opts.groups = g;
        self
    }
    /// Without bias.
    pub fn no_bias(mut self) -> Conv2d {
        self.bias = false;
        self
    }
    /// Zero-initialised weight and bias (improved-diffusion's `zero_module`).
    pub fn zero_init(mut self) -> Conv2d {
        self.init = Some(Init::ZEROS);
        self
    }
    /// Custom weight init.
    pub fn with_init(mut self, init: Init) -> Conv2d {
        self.init = Some(init);
        self
    }
    fn fan_in(&self) -> usize {
        self.c_in / self.opts.groups.max(1) * self.kernel * self.kernel
    }
    /// Applies the layer; parameters are `weight` and `bias` in `ctx`'s scope.
    pub fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        let default = Init::torch_default(self.fan_in());
        let shape = [
            self.c_out,
            self.c_in / self.opts.groups.max(1),
            self.kernel,
            self.kernel,
        ];
        let w = ctx.param("weight", &shape, self.init.unwrap_or(default));
        let b = self.bias.then(|| {
            let bi = if self.init == Some(Init::ZEROS) {
                Init::ZEROS
            } else {
                default
            };
            ctx.param("bias", &[self.c_out], bi)
        });
        let y = x.conv2d(&w, b.as_ref(), self.opts);
        ctx.wrap(y.into_id())
    }
    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.c_out * self.fan_in() + if self.bias { self.c_out } else { 0 }
    }
}

/// Group normalisation with a per-channel affine transform (`weight` = 1, `bias` = 0 at init).
#[derive(Debug, Clone, Copy)]
pub struct GroupNorm {
    /// Number of groups.
    pub groups: usize,
    /// Channels.
    pub channels: usize,
    /// Numerical epsilon.
    pub eps: f64,
}

impl GroupNorm {
    /// `groups` groups over `channels` channels, eps 1e-5 (PyTorch's default).
    pub fn new(groups: usize, channels: usize) -> GroupNorm {
        GroupNorm {
            groups,
            channels,
            eps: 1e-5,
        }
    }
    /// improved-diffusion's `normalization(ch)`: 32 groups (fewer when `ch` is smaller).
    pub fn gn32(channels: usize) -> GroupNorm {
        GroupNorm::new(largest_divisor_at_most(channels, 32), channels)
    }
    /// Epsilon.
    pub fn eps(mut self, eps: f64) -> GroupNorm {
        self.eps = eps;
        self
    }
    /// Applies the layer; parameters are `weight` and `bias` in `ctx`'s scope.
    pub fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        let g = ctx.param("weight", &[self.channels], Init::ONES);
        let b = ctx.param("bias", &[self.channels], Init::ZEROS);
        let y = x.group_norm(self.groups, Some(&g), Some(&b), self.eps);
        ctx.wrap(y.into_id())
    }
}

/// The largest divisor of `n` that is at most `max` (for group counts of narrow layers).
pub fn largest_divisor_at_most(n: usize, max: usize) -> usize {
    (1..=max.min(n).max(1))
        .rev()
        .find(|g| n.is_multiple_of(*g))
        .unwrap_or(1)
}

/// Layer normalisation over the last dimension with affine parameters.
#[derive(Debug, Clone, Copy)]
pub struct LayerNorm {
    /// Size of the last dimension.
    pub dim: usize,
    /// Numerical epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// Over `dim` features, eps 1e-5.
    pub fn new(dim: usize) -> LayerNorm {
        LayerNorm { dim, eps: 1e-5 }
    }
    /// Applies the layer; parameters are `weight` and `bias` in `ctx`'s scope.
    pub fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        let g = ctx.param("weight", &[self.dim], Init::ONES);
        let b = ctx.param("bias", &[self.dim], Init::ZEROS);
        let y = x.layer_norm(Some(&g), Some(&b), self.eps);
        ctx.wrap(y.into_id())
    }
}

/// Multi-head self-attention over the spatial positions of an NCHW tensor, with a residual
/// connection: `x + proj(attn(norm(x)))`, as in improved-diffusion's `AttentionBlock`
/// (`norm`, `qkv` 1×1, `proj_out` 1×1 zero-initialised; `qkv` and `proj_out` are 1-D
/// convolutions there, so their weights are `[out, in, 1]`). Channels of `qkv` are split per
/// head into `[q, k, v]`, and `q·k` is scaled by `1/√(C/heads)`, as in the reference.
#[derive(Debug, Clone, Copy)]
pub struct SpatialAttention {
    /// Channels.
    pub channels: usize,
    /// Heads (must divide `channels`).
    pub heads: usize,
}

impl SpatialAttention {
    /// `heads` heads over `channels` channels.
    pub fn new(channels: usize, heads: usize) -> SpatialAttention {
        SpatialAttention { channels, heads }
    }
    /// Applies the block; parameters live under `norm`, `qkv`, `proj_out` in `ctx`'s scope.
    pub fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        let [n, c, h, w] = x.dims::<4>();
        let heads = self.heads.max(1);
        if c != self.channels || c % heads != 0 {
            ctx.fail(&format!(
                "SpatialAttention({}, heads {}) got {c} channels",
                self.channels, self.heads
            ));
        }
        let dh = c / heads;
        let hn = GroupNorm::gn32(c).forward(&ctx.scope("norm"), x);
        let qkv = conv1x1(&ctx.scope("qkv"), &hn, c, 3 * c, false);
        // [n, 3c, h, w] → [n, heads, 3·dh, hw]
        let qkv = qkv.reshape_to(&[n, heads, 3 * dh, h * w]);
        let q = qkv.slice(2, 0, dh);
        let k = qkv.slice(2, dh, 2 * dh);
        let v = qkv.slice(2, 2 * dh, 3 * dh);
        let scale = 1.0 / (dh as f64).sqrt();
        // weights [n, heads, hw(query), hw(key)]. The scale multiplies the product (contiguous,
        // 4·hw/dh times larger) rather than the transposed slice of q: a strided scalar op
        // walks element by element and cost more than the product itself.
        let weights = (q.transpose(2, 3).matmul(&k) * scale).softmax(3);
        // out [n, heads, dh, hw] = v · weightsᵀ
        let out = v.matmul(&weights.transpose(2, 3)).reshape_to(&[n, c, h, w]);
        let out = conv1x1(&ctx.scope("proj_out"), &out, c, c, true);
        let y = x + &out;
        ctx.wrap(y.into_id())
    }
}

/// A 1×1 convolution whose weight is stored `[c_out, c_in, 1]` (PyTorch's `Conv1d` layout)
/// with PyTorch's default init (or zeros).
fn conv1x1<'a>(ctx: &Ctx<'a>, x: &Tensor<'a>, c_in: usize, c_out: usize, zero: bool) -> Tensor<'a> {
    let (wi, bi) = if zero {
        (Init::ZEROS, Init::ZEROS)
    } else {
        (Init::torch_default(c_in), Init::torch_default(c_in))
    };
    let w = ctx.param("weight", &[c_out, c_in, 1], wi);
    let b = ctx.param("bias", &[c_out], bi);
    x.conv2d(
        &w.reshape_to(&[c_out, c_in, 1, 1]),
        Some(&b),
        Conv2dOptions::default(),
    )
}

/// improved-diffusion's residual block: GN → SiLU → conv3×3, plus a projection of the
/// embedding (added, or as scale and shift of the second norm), GN → SiLU → dropout →
/// conv3×3 (zero-initialised), and a 1×1 skip when the channel count changes. Parameters carry
/// the reference's module paths: `in_layers.0` (norm), `in_layers.2` (conv), `emb_layers.1`,
/// `out_layers.0` (norm), `out_layers.3` (conv), `skip_connection`.
#[derive(Debug, Clone, Copy)]
pub struct ResBlock {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Embedding width (0: no embedding input).
    pub emb: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// FiLM-style scale-shift of the second normalisation (improved-diffusion's
    /// `use_scale_shift_norm`).
    pub scale_shift: bool,
}

impl ResBlock {
    /// A block `c_in → c_out` conditioned on an `emb`-wide embedding.
    pub fn new(c_in: usize, c_out: usize, emb: usize) -> ResBlock {
        ResBlock {
            c_in,
            c_out,
            emb,
            dropout: 0.0,
            scale_shift: false,
        }
    }
    /// Dropout probability.
    pub fn dropout(mut self, p: f64) -> ResBlock {
        self.dropout = p;
        self
    }
    /// Use scale-shift normalisation.
    pub fn scale_shift(mut self, on: bool) -> ResBlock {
        self.scale_shift = on;
        self
    }
    /// Applies the block to `x` `[N, c_in, H, W]` with embedding `emb` `[N, emb]`.
    pub fn forward<'a>(
        &self,
        ctx: &Ctx<'a>,
        x: &Tensor<'a>,
        emb: Option<&Tensor<'a>>,
    ) -> Tensor<'a> {
        let h = GroupNorm::gn32(self.c_in)
            .forward(&ctx.scope("in_layers.0"), x)
            .silu();
        let mut h = Conv2d::new(self.c_in, self.c_out, 3)
            .same()
            .forward(&ctx.scope("in_layers.2"), &h);
        let out_norm = GroupNorm::gn32(self.c_out);
        let h2 = match emb {
            Some(e) if self.emb > 0 => {
                let width = if self.scale_shift {
                    2 * self.c_out
                } else {
                    self.c_out
                };
                let e = Linear::new(self.emb, width).forward(&ctx.scope("emb_layers.1"), &e.silu());
                let [n, _] = e.dims::<2>();
                let e = e.reshape_to(&[n, width, 1, 1]);
                if self.scale_shift {
                    let scale = e.slice(1, 0, self.c_out);
                    let shift = e.slice(1, self.c_out, 2 * self.c_out);
                    let hn = out_norm.forward(&ctx.scope("out_layers.0"), &h);
                    (hn * (scale + 1.0)) + shift
                } else {
                    h = h + e;
                    out_norm.forward(&ctx.scope("out_layers.0"), &h)
                }
            }
            _ => out_norm.forward(&ctx.scope("out_layers.0"), &h),
        };
        let h2 = h2.silu().dropout(self.dropout);
        let h2 = Conv2d::new(self.c_out, self.c_out, 3)
            .same()
            .zero_init()
            .forward(&ctx.scope("out_layers.3"), &h2);
        let y = if self.c_in == self.c_out {
            x + &h2
        } else {
            Conv2d::new(self.c_in, self.c_out, 1).forward(&ctx.scope("skip_connection"), x) + h2
        };
        ctx.wrap(y.into_id())
    }
}

/// Most frequencies [`timestep_embedding_with_period`] builds (2²⁴, a 64 MB table); wider
/// embeddings fail the pass with an error.
pub const MAX_EMBEDDING_HALF: usize = 1 << 24;

/// Sinusoidal embedding of a `[N]` noise-level tensor into `[N, dim]` with the usual maximum
/// period of 10,000 (improved-diffusion's and EDM's default); see
/// [`timestep_embedding_with_period`] for another period.
///
/// ```
/// use memlab_plugin_api::prelude::*;
/// use memlab_plugin_api::testing::inspect;
///
/// struct Embed;
/// impl Architecture for Embed {
///     fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
///         let [n, c, h, w] = inp.x.dims::<4>();
///         let emb = timestep_embedding(ctx, &inp.noise, 16); // [n, 16]
///         let bias = Linear::new(16, c).forward(&ctx.scope("emb_layers.1"), &emb.silu());
///         Ok(&inp.x + &bias.reshape_to(&[n, c, 1, 1]))
///     }
/// }
/// let s = inspect(&Embed, [2, 3, 8, 8], 0).unwrap();
/// assert_eq!(s.total, 16 * 3 + 3);
/// ```
pub fn timestep_embedding<'a>(ctx: &Ctx<'a>, t: &Tensor<'a>, dim: usize) -> Tensor<'a> {
    timestep_embedding_with_period(ctx, t, dim, 10_000.0)
}

/// Sinusoidal embedding of a `[N]` noise-level tensor into `[N, dim]`
/// (improved-diffusion's `timestep_embedding`: `[cos(t·f), sin(t·f)]`,
/// `f_i = max_period^(−i/half)`, `half = dim / 2`; an odd `dim` gets a trailing zero column).
pub fn timestep_embedding_with_period<'a>(
    ctx: &Ctx<'a>,
    t: &Tensor<'a>,
    dim: usize,
    max_period: f64,
) -> Tensor<'a> {
    let half = dim / 2;
    // The frequency table is plugin-side data: bound it rather than abort on its allocation.
    if half > MAX_EMBEDDING_HALF {
        ctx.fail(&format!(
            "timestep_embedding of dim {dim}: at most {} channels are supported",
            2 * MAX_EMBEDDING_HALF + 1
        ));
        return ctx.wrap(TensorId::INVALID);
    }
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(max_period.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = ctx.constant(&freqs, &[1, half]);
    let n = t.dim(0);
    let args = t.reshape_to(&[n, 1]) * &freqs;
    let mut emb = ctx.concat(&[&args.cos(), &args.sin()], 1);
    if dim % 2 == 1 {
        emb = ctx.concat(&[&emb, &ctx.full(&[n, 1], 0.0)], 1);
    }
    emb
}
