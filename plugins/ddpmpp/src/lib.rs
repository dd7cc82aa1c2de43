//! EDM's `SongUNet` (NVlabs/edm `training/networks.py`): the DDPM++ network by default and, by
//! its options, NCSN++ (Fourier noise embedding with `channel_mult_noise = 2`, residual
//! encoder, resample filter `[1, 3, 3, 1]`) and every other combination the reference offers
//! (`encoder` standard / skip / residual, `decoder` standard / skip, `augment_dim`,
//! `label_dropout`), as DiffMemorize trains it, plus switches that drop individual encoder →
//! decoder skip connections. Fixed as in the reference: one attention head, skip scale √½,
//! GroupNorm eps 1e-6, `adaptive_scale` off, `resample_proj` on.
//!
//! Parameter names follow the reference module paths (`enc.32x32_block0.conv0.weight`,
//! `dec.8x8_in0.qkv.weight`, `map_layer0.weight`, ...) and weights have PyTorch's layouts
//! (linear `[out, in]`, conv `[out, in, kh, kw]`), so a `SongUNet` `state_dict` loads by name.
//! The reference's buffers are memlab buffers (`Ctx::buffer`: loaded and saved by name, never
//! trained): the Fourier frequencies `map_noise.freqs` (drawn from the seed, `N(0, 16²)`, for a
//! fresh model) and, for a filter other than `[1, 1]`, each resampling convolution's
//! `resample_filter`. The `[1, 1]` filter (2×2 box down, nearest-neighbour up) is applied
//! without a buffer; `architecture.init_from` skips the reference's `[1, 1]` buffers.
//! Initialisation follows the reference: Xavier-uniform weights, zero biases, output convs of
//! each block (`conv1`, `proj`, `aux_conv`) scaled by 1e-5 and `qkv` by √0.2.
//!
//! memlab has no augmentation pipeline: with `augment_dim > 0` the `map_augment` weight exists
//! (so checkpoints load) and is fed zeros, as EDM does when sampling without augmentation labels.
//! `label_dropout` zeroes the class input of a sample with that probability in training
//! passes only (the `map_label` bias is still added, as in the reference).

use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::prelude::*;

/// Parameters of `ddpmpp`, as `memlab plugins` documents them.
pub const DDPMPP_PARAMS: &[Param] = &[
    param(
        "channels",
        "int",
        "128",
        "base channel count (model_channels)",
    ),
    param(
        "channel_mult",
        "[int]",
        "[2, 2, 2]",
        "channel multiplier per resolution; one level per entry, each halving the resolution",
    ),
    param(
        "channel_mult_emb",
        "int",
        "4",
        "embedding width as a multiple of channels",
    ),
    param(
        "channel_mult_noise",
        "int",
        "1",
        "noise-embedding width as a multiple of channels (1: DDPM++, 2: NCSN++)",
    ),
    param("num_blocks", "int", "4", "residual blocks per resolution"),
    param(
        "attn_resolutions",
        "[int]",
        "[16]",
        "resolutions whose blocks get self-attention",
    ),
    param(
        "dropout",
        "float",
        "0.13",
        "dropout probability inside blocks",
    ),
    param(
        "embedding",
        "\"positional\" | \"fourier\"",
        "\"positional\"",
        "noise embedding (embedding_type): sinusoidal (DDPM++) or random Fourier features \
         with scale 16 (NCSN++; frequencies are the buffer `map_noise.freqs`)",
    ),
    param(
        "encoder",
        "\"standard\" | \"skip\" | \"residual\"",
        "\"standard\"",
        "encoder_type: DDPM++'s standard; skip adds the downsampled input image at every \
         level (aux_down, aux_skip); residual (NCSN++) a strided-convolution residual path \
         (aux_residual)",
    ),
    param(
        "decoder",
        "\"standard\" | \"skip\"",
        "\"standard\"",
        "decoder_type: standard (output from the last level) or skip (an output conv at every \
         level, upsampled and summed: aux_up, aux_norm, aux_conv)",
    ),
    param(
        "resample_filter",
        "[float]",
        "[1, 1]",
        "1-D taps of the up/downsampling filter, even length (NCSN++: [1, 3, 3, 1]); the 2-D \
         filter is their normalised outer product",
    ),
    param(
        "augment_dim",
        "int",
        "0",
        "augmentation-label width (map_augment); memlab has no augmentation pipeline, so the \
         input is zeros and the weight only makes such checkpoints load",
    ),
    param(
        "label_dropout",
        "float",
        "0",
        "probability of zeroing a sample's class label in training passes (classifier-free \
         guidance training)",
    ),
    param(
        "skips",
        "[bool | 0 | 1]",
        "[]",
        "keep flag per encoder→decoder skip connection in encoder order, \
         levels·(num_blocks + 1) entries (empty: keep all)",
    ),
    param(
        "skip_mode",
        "\"remove\" | \"zero\"",
        "\"remove\"",
        "a dropped skip is removed from the concatenation (fewer parameters) or, as \
         DiffMemorize does, replaced by zeros",
    ),
];

/// The noise-level embedding.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Embedding {
    /// Sinusoidal with frequencies `(1/10⁴)^(i/(half−1))` (DDPM++).
    Positional,
    /// Random Fourier features `2π·f` with the buffer `f ~ N(0, 16²)` (NCSN++).
    Fourier,
}

/// The encoder's auxiliary path (`encoder_type`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Encoder {
    /// No auxiliary path (DDPM++).
    Standard,
    /// The input image, downsampled by the filter, added through a 1×1 conv at every level.
    Skip,
    /// A residual path of strided 3×3 convolutions (NCSN++).
    Residual,
}

/// The decoder's output path (`decoder_type`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Decoder {
    /// One output conv after the last level.
    Standard,
    /// An output conv per level, upsampled and summed.
    Skip,
}

/// What happens to a dropped skip connection.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum SkipMode {
    /// The concatenation is left out and the decoder block's input shrinks accordingly.
    Remove,
    /// Zeros of the same shape are concatenated instead (DiffMemorize's implementation:
    /// parameter count unchanged).
    Zero,
}

/// One skip flag: `true`/`false` or DiffMemorize's `1`/`0`.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", untagged)]
enum SkipFlag {
    Bool(bool),
    Int(i64),
}

/// Parsed parameters; their defaults are [`DDPMPP_PARAMS`]' (filled in by the host).
#[derive(Deserialize, Debug, Clone)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct RawParams {
    channels: usize,
    channel_mult: Vec<usize>,
    channel_mult_emb: usize,
    channel_mult_noise: usize,
    num_blocks: usize,
    attn_resolutions: Vec<usize>,
    dropout: f64,
    embedding: Embedding,
    encoder: Encoder,
    decoder: Decoder,
    resample_filter: Vec<f64>,
    augment_dim: usize,
    label_dropout: f64,
    skips: Vec<SkipFlag>,
    skip_mode: SkipMode,
}

/// Scale applied after every residual and attention sum (`skip_scale` = √½).
const SKIP_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// GroupNorm epsilon of the DDPM++ blocks and output norm.
const GN_EPS: f64 = 1e-6;
/// Weight scale of the zero-ish output convolutions (`init_zero`).
const INIT_ZERO: f64 = 1e-5;
/// Standard deviation of the Fourier-feature frequencies.
const FOURIER_SCALE: f64 = 16.0;

/// The SongUNet.
#[derive(Debug, Clone)]
pub struct Ddpmpp {
    channels: usize,
    channel_mult: Vec<usize>,
    channel_mult_emb: usize,
    channel_mult_noise: usize,
    num_blocks: usize,
    attn_resolutions: Vec<usize>,
    dropout: f64,
    embedding: Embedding,
    encoder: Encoder,
    decoder: Decoder,
    filter: Filter,
    augment_dim: usize,
    label_dropout: f64,
    /// Keep flag per skip connection, encoder order (always `levels·(num_blocks+1)` long).
    skips: Vec<bool>,
    skip_mode: SkipMode,
    /// Positional: the embedding frequencies. Fourier: the initial value of the buffer
    /// `map_noise.freqs` (2π not included). `channels·channel_mult_noise/2` values.
    freqs: Vec<f32>,
}

impl Ddpmpp {
    /// Builds the network from its parameter table; `seed` draws the Fourier frequencies.
    pub fn from_params(params: &Params, seed: u64) -> PResult<Ddpmpp> {
        let p: RawParams = params.parse()?;
        if p.channels < 4 || !p.channels.is_multiple_of(2) {
            return Err(format!(
                "channels must be an even number ≥ 4, got {}",
                p.channels
            ));
        }
        if p.channel_mult.is_empty() || p.channel_mult.contains(&0) {
            return Err(format!(
                "channel_mult must be a non-empty list of positive integers, got {:?}",
                p.channel_mult
            ));
        }
        if p.channel_mult_emb == 0 {
            return Err("channel_mult_emb must be positive".into());
        }
        if p.channel_mult_noise == 0 {
            return Err("channel_mult_noise must be positive".into());
        }
        if p.num_blocks == 0 {
            return Err("num_blocks must be at least 1".into());
        }
        if !(0.0..1.0).contains(&p.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", p.dropout));
        }
        if !(0.0..1.0).contains(&p.label_dropout) {
            return Err(format!(
                "label_dropout must be in [0, 1), got {}",
                p.label_dropout
            ));
        }
        let filter = Filter::new(p.resample_filter)?;
        let n_skips = p.channel_mult.len() * (p.num_blocks + 1);
        let skips = if p.skips.is_empty() {
            vec![true; n_skips]
        } else {
            if p.skips.len() != n_skips {
                return Err(format!(
                    "skips has {} entries but this network has {n_skips} skip connections \
                     ({} levels × (num_blocks {} + 1)); give one flag per connection or none",
                    p.skips.len(),
                    p.channel_mult.len(),
                    p.num_blocks
                ));
            }
            p.skips
                .iter()
                .map(|f| match *f {
                    SkipFlag::Bool(b) => Ok(b),
                    SkipFlag::Int(0) => Ok(false),
                    SkipFlag::Int(1) => Ok(true),
                    SkipFlag::Int(i) => {
                        Err(format!("skip flags must be 0, 1 or booleans, got {i}"))
                    }
                })
                .collect::<PResult<Vec<bool>>>()?
        };
        let half = p.channels * p.channel_mult_noise / 2;
        let freqs: Vec<f32> = match p.embedding {
            Embedding::Positional => (0..half)
                .map(|i| (1e-4f64).powf(i as f64 / (half - 1) as f64) as f32)
                .collect(),
            Embedding::Fourier => {
                let mut g = SplitMix64::for_index(seed, 0x0066_6f75_7269_6572);
                (0..half)
                    .map(|_| (FOURIER_SCALE * g.normal()) as f32)
                    .collect()
            }
        };
        Ok(Ddpmpp {
            channels: p.channels,
            channel_mult: p.channel_mult,
            channel_mult_emb: p.channel_mult_emb,
            channel_mult_noise: p.channel_mult_noise,
            num_blocks: p.num_blocks,
            attn_resolutions: p.attn_resolutions,
            dropout: p.dropout,
            embedding: p.embedding,
            encoder: p.encoder,
            decoder: p.decoder,
            filter,
            augment_dim: p.augment_dim,
            label_dropout: p.label_dropout,
            skips,
            skip_mode: p.skip_mode,
            freqs,
        })
    }

    /// The noise embedding kind.
    pub fn embedding(&self) -> Embedding {
        self.embedding
    }

    /// Positional: the embedding frequencies. Fourier: the initial value of the buffer
    /// `map_noise.freqs` (`N(0, 16²)` draws; the features are `sin/cos(2π·f·c_noise)`).
    /// `channels · channel_mult_noise / 2` values.
    pub fn frequencies(&self) -> &[f32] {
        &self.freqs
    }

    /// The noise embedding `[N, noise_channels]`: `[sin(σ·f), cos(σ·f)]` (the reference
    /// computes `[cos, sin]` and then swaps the halves).
    fn noise_embedding<'a>(&self, ctx: &Ctx<'a>, noise: &Tensor<'a>) -> Tensor<'a> {
        let n = noise.dim(0);
        let half = self.freqs.len();
        let f = match self.embedding {
            Embedding::Positional => ctx.constant(&self.freqs, &[1, half]),
            Embedding::Fourier => {
                let buf = ctx.scope("map_noise").buffer("freqs", &self.freqs, &[half]);
                (buf * (2.0 * std::f64::consts::PI)).reshape_to(&[1, half])
            }
        };
        let args = noise.reshape_to(&[n, 1]) * &f;
        ctx.concat(&[&args.sin(), &args.cos()], 1)
    }
}

/// The up/downsampling filter: the normalised outer product of 1-D taps (`resample_filter`).
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    taps: Vec<f64>,
}

impl Filter {
    fn new(taps: Vec<f64>) -> PResult<Filter> {
        let sum: f64 = taps.iter().sum();
        if taps.len() < 2
            || !taps.len().is_multiple_of(2)
            || taps.iter().any(|t| !t.is_finite())
            || sum == 0.0
        {
            return Err(format!(
                "resample_filter must be an even number (≥ 2) of finite taps with a non-zero \
                 sum (odd lengths do not upsample to twice the size in the reference either), \
                 got {taps:?}"
            ));
        }
        Ok(Filter { taps })
    }

    /// `[1, 1]` (or any constant pair): 2×2 box down, nearest-neighbour up, no buffer.
    fn is_box(&self) -> bool {
        self.taps.len() == 2 && self.taps[0] == self.taps[1]
    }

    fn len(&self) -> usize {
        self.taps.len()
    }

    /// The padding of the resampling convolutions, `(k − 1) / 2`.
    fn pad(&self) -> usize {
        (self.len() - 1) / 2
    }

    /// The 2-D filter `f ⊗ f / (Σf)²`, row-major `[k, k]`, computed in float32 as the
    /// reference does.
    fn values(&self) -> Vec<f32> {
        let t: Vec<f32> = self.taps.iter().map(|&v| v as f32).collect();
        let s: f32 = t.iter().sum();
        let s2 = s * s;
        t.iter()
            .flat_map(|a| t.iter().map(move |b| a * b / s2))
            .collect()
    }

    /// The filter as the buffer `resample_filter` `[1, 1, k, k]` of the convolution `ctx`.
    fn buffer<'a>(&self, ctx: &Ctx<'a>) -> Tensor<'a> {
        let k = self.len();
        ctx.buffer("resample_filter", &self.values(), &[1, 1, k, k])
    }

    /// Depthwise filtering with stride 2 and zero padding `pad` (downsampling).
    fn down<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>, pad: usize) -> Tensor<'a> {
        if self.is_box() && pad == 0 {
            return x.avg_pool2d(2, 2);
        }
        let [n, c, h, w] = x.dims::<4>();
        let f = self.buffer(ctx);
        let opts = Conv2dOptions {
            stride: [2, 2],
            padding: [pad, pad],
            ..Conv2dOptions::default()
        };
        let y = x.reshape_to(&[n * c, 1, h, w]).conv2d(&f, None, opts);
        let [_, _, ho, wo] = y.dims::<4>();
        y.reshape_to(&[n, c, ho, wo])
    }

    /// The reference's transposed depthwise convolution with `4·f`, stride 2 and padding
    /// `(k − 1) / 2` (upsampling to twice the size): zeros interleaved after every pixel,
    /// then a convolution with the flipped filter.
    fn up<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>) -> Tensor<'a> {
        if self.is_box() {
            return x.upsample_nearest2d(2);
        }
        let [n, c, h, w] = x.dims::<4>();
        let k = self.len();
        let m = n * c;
        // Interleave zeros: z[2i, 2j] = x[i, j], zero elsewhere.
        let x4 = x.reshape_to(&[m, h, w, 1]);
        let z = ctx.concat(&[&x4, &ctx.full(&[m, h, w, 1], 0.0)], 3);
        let z = z.reshape_to(&[m, h, 1, 2 * w]);
        let z = ctx.concat(&[&z, &ctx.full(&[m, h, 1, 2 * w], 0.0)], 2);
        let z = z.reshape_to(&[m, 1, 2 * h, 2 * w]);
        // Flip the filter in both dimensions.
        let f = self.buffer(ctx) * 4.0;
        let rev = |t: &Tensor<'a>, d: usize| -> Tensor<'a> {
            let parts: Vec<Tensor<'a>> = (0..k).rev().map(|i| t.slice(d, i, i + 1)).collect();
            let refs: Vec<&Tensor<'a>> = parts.iter().collect();
            ctx.concat(&refs, d)
        };
        let g = rev(&rev(&f, 2), 3);
        let p = k - 1 - self.pad();
        let opts = Conv2dOptions {
            padding: [p, p],
            ..Conv2dOptions::default()
        };
        let y = z.conv2d(&g, None, opts);
        let y = y.slice(2, 0, 2 * h).slice(3, 0, 2 * w);
        y.reshape_to(&[n, c, 2 * h, 2 * w])
    }
}

/// Up- or downsampling of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    None,
    Down,
    Up,
    /// Downsampling after the convolution (`fused_resample`, only `aux_residual` uses it).
    FusedDown,
}

/// Reference `GroupNorm`: `min(32, C/4)` groups, eps 1e-6.
fn group_norm<'a>(ctx: &Ctx<'a>, x: &Tensor<'a>, channels: usize) -> Tensor<'a> {
    let groups = (channels / 4).clamp(1, 32);
    if !channels.is_multiple_of(groups) {
        ctx.fail(&format!(
            "GroupNorm `{}`: {channels} channels do not split into min(32, {channels}/4) = \
             {groups} groups; choose channels/channel_mult so every block width does",
            ctx.path("")
        ));
    }
    GroupNorm::new(groups, channels).eps(GN_EPS).forward(ctx, x)
}

/// Reference `Conv2d` without resampling: Xavier-uniform weight scaled by `gain`, zero bias,
/// "same" padding.
fn conv<'a>(
    ctx: &Ctx<'a>,
    x: &Tensor<'a>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    gain: f64,
) -> Tensor<'a> {
    let k2 = kernel * kernel;
    let w = ctx.param(
        "weight",
        &[c_out, c_in, kernel, kernel],
        Init::xavier_uniform(c_in * k2, c_out * k2, gain),
    );
    let b = ctx.param("bias", &[c_out], Init::ZEROS);
    let opts = Conv2dOptions {
        padding: [kernel / 2, kernel / 2],
        ..Conv2dOptions::default()
    };
    x.conv2d(&w, Some(&b), opts)
}

/// Reference `Conv2d` with resampling (`up`/`down`, `fused_resample` for downsampling) and
/// weight gain 1 (all of SongUNet's resampling convolutions have it).
fn conv_resample<'a>(
    ctx: &Ctx<'a>,
    filter: &Filter,
    resample: Resample,
    x: &Tensor<'a>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
) -> Tensor<'a> {
    let gain = 1.0;
    match resample {
        Resample::None => conv(ctx, x, c_in, c_out, kernel, gain),
        Resample::Down => conv(
            ctx,
            &filter.down(ctx, x, filter.pad()),
            c_in,
            c_out,
            kernel,
            gain,
        ),
        Resample::Up => conv(ctx, &filter.up(ctx, x), c_in, c_out, kernel, gain),
        Resample::FusedDown => {
            // conv(x, w, padding = w_pad + f_pad), the filter with stride 2, then the bias.
            let k2 = kernel * kernel;
            let w = ctx.param(
                "weight",
                &[c_out, c_in, kernel, kernel],
                Init::xavier_uniform(c_in * k2, c_out * k2, gain),
            );
            let b = ctx.param("bias", &[c_out], Init::ZEROS);
            let pad = kernel / 2 + filter.pad();
            let opts = Conv2dOptions {
                padding: [pad, pad],
                ..Conv2dOptions::default()
            };
            let y = filter.down(ctx, &x.conv2d(&w, None, opts), 0);
            y + b.reshape_to(&[1, c_out, 1, 1])
        }
    }
}

/// One `UNetBlock` with SongUNet settings (`adaptive_scale` off, one attention head,
/// `resample_proj` on).
#[derive(Debug, Clone, Copy)]
struct Block<'f> {
    c_in: usize,
    c_out: usize,
    emb: usize,
    resample: Resample,
    attention: bool,
    dropout: f64,
    filter: &'f Filter,
}

impl Block<'_> {
    fn forward<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>, emb: &Tensor<'a>) -> Tensor<'a> {
        let (c_in, c_out) = (self.c_in, self.c_out);
        let h = group_norm(&ctx.scope("norm0"), x, c_in).silu();
        let h = conv_resample(
            &ctx.scope("conv0"),
            self.filter,
            self.resample,
            &h,
            c_in,
            c_out,
            3,
        );
        let n = emb.dim(0);
        let params =
            linear(&ctx.scope("affine"), emb, self.emb, c_out).reshape_to(&[n, c_out, 1, 1]);
        let h = group_norm(&ctx.scope("norm1"), &(h + params), c_out)
            .silu()
            .dropout(self.dropout);
        let h = conv(&ctx.scope("conv1"), &h, c_out, c_out, 3, INIT_ZERO);
        let skip = if c_in != c_out || self.resample != Resample::None {
            conv_resample(
                &ctx.scope("skip"),
                self.filter,
                self.resample,
                x,
                c_in,
                c_out,
                1,
            )
        } else {
            x.clone()
        };
        let x = (h + skip) * SKIP_SCALE;
        if !self.attention {
            return x;
        }
        let [n, c, hh, ww] = x.dims::<4>();
        let hw = hh * ww;
        let qkv = conv(
            &ctx.scope("qkv"),
            &group_norm(&ctx.scope("norm2"), &x, c),
            c,
            3 * c,
            1,
            0.2f64.sqrt(),
        );
        // The reference reshapes [N, 3C, H, W] to [N, C, 3, HW]: q, k, v interleave per channel.
        let qkv = qkv.reshape_to(&[n, c, 3, hw]);
        let part = |i: usize| qkv.slice(2, i, i + 1).reshape_to(&[n, c, hw]);
        let (q, k, v) = (part(0), part(1), part(2));
        // w[n, q, k] = softmax_k(Σ_c q[c, q]·k[c, k] / √C)
        let w = (q.transpose(1, 2).matmul(&k) * (1.0 / (c as f64).sqrt())).softmax(2);
        // a[n, c, q] = Σ_k w[q, k]·v[c, k]
        let a = v.matmul(&w.transpose(1, 2)).reshape_to(&[n, c, hh, ww]);
        let a = conv(&ctx.scope("proj"), &a, c, c, 1, INIT_ZERO);
        (a + x) * SKIP_SCALE
    }
}

/// Reference `Linear` (weight `[d_out, d_in]`) with its zero bias.
fn linear<'a>(ctx: &Ctx<'a>, x: &Tensor<'a>, d_in: usize, d_out: usize) -> Tensor<'a> {
    let w = ctx.param(
        "weight",
        &[d_out, d_in],
        Init::xavier_uniform(d_in, d_out, 1.0),
    );
    let b = ctx.param("bias", &[d_out], Init::ZEROS);
    x.linear(&w.transpose(0, 1), Some(&b))
}

impl Architecture for Ddpmpp {
    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        let [n, c_img, h, w] = inp.x.dims::<4>();
        let levels = self.channel_mult.len();
        let factor = 1usize << (levels - 1);
        if h != w || h == 0 || !h.is_multiple_of(factor) {
            return Err(format!(
                "ddpmpp needs square images whose side is divisible by 2^(levels − 1) = \
                 {factor}; got {h}×{w}"
            ));
        }
        if inp.noise.shape() != [n] {
            return Err(format!(
                "noise must have shape [{n}], got {:?}",
                inp.noise.shape()
            ));
        }
        let mc = self.channels;
        let emb_ch = mc * self.channel_mult_emb;
        let noise_ch = mc * self.channel_mult_noise;
        let filter = &self.filter;

        // Mapping network.
        let mut emb = self.noise_embedding(ctx, &inp.noise);
        if let (Some(labels), true) = (&inp.labels, inp.classes > 0) {
            // map_label(one_hot · √classes): a column of the weight, scaled, plus the bias.
            let k = inp.classes as usize;
            let lc = ctx.scope("map_label");
            let weight = lc.param(
                "weight",
                &[noise_ch, k],
                Init::xavier_uniform(k, noise_ch, 1.0),
            );
            let bias = lc.param("bias", &[noise_ch], Init::ZEROS);
            let table = weight.transpose(0, 1);
            let mut class = table.embedding(labels) * (k as f64).sqrt();
            if self.label_dropout > 0.0 && ctx.training() {
                // Keep mask: inverted dropout of ones is 0 or 1/(1 − p) ≥ 1; clamped to 0/1.
                let keep = ctx
                    .full(&[n, 1], 1.0)
                    .dropout(self.label_dropout)
                    .clamp(0.0, 1.0);
                class = class * keep;
            }
            emb = emb + class + bias;
        }
        if self.augment_dim > 0 {
            // map_augment (no bias) of the augmentation labels, which memlab does not have.
            let d = self.augment_dim;
            let weight = ctx.scope("map_augment").param(
                "weight",
                &[noise_ch, d],
                Init::xavier_uniform(d, noise_ch, 1.0),
            );
            let zeros = ctx.full(&[n, d], 0.0);
            emb = emb + zeros.linear(&weight.transpose(0, 1), None);
        }
        let emb = linear(&ctx.scope("map_layer0"), &emb, noise_ch, emb_ch).silu();
        let emb = linear(&ctx.scope("map_layer1"), &emb, emb_ch, emb_ch).silu();

        let block = |c_in, c_out, resample, attention| Block {
            c_in,
            c_out,
            emb: emb_ch,
            resample,
            attention,
            dropout: self.dropout,
            filter,
        };

        // Encoder: every module's output is a skip connection (encoder order); the auxiliary
        // paths replace the last one.
        let enc = ctx.scope("enc");
        let mut skips: Vec<(Tensor<'a>, usize)> = Vec::new();
        let mut x = inp.x.clone();
        let mut aux = inp.x.clone();
        let mut caux = c_img;
        let mut cout = c_img;
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let res = h >> level;
            if level == 0 {
                x = conv(
                    &enc.scope(format!("{res}x{res}_conv")),
                    &x,
                    cout,
                    mc,
                    3,
                    1.0,
                );
                cout = mc;
                skips.push((x.clone(), cout));
            } else {
                x = block(cout, cout, Resample::Down, false).forward(
                    &enc.scope(format!("{res}x{res}_down")),
                    &x,
                    &emb,
                );
                match self.encoder {
                    Encoder::Standard => {}
                    Encoder::Skip => {
                        let sc = enc.scope(format!("{res}x{res}_aux_down"));
                        aux = filter.down(&sc, &aux, filter.pad());
                        let a = conv(
                            &enc.scope(format!("{res}x{res}_aux_skip")),
                            &aux,
                            caux,
                            cout,
                            1,
                            1.0,
                        );
                        x = x + a;
                    }
                    Encoder::Residual => {
                        let a = conv_resample(
                            &enc.scope(format!("{res}x{res}_aux_residual")),
                            filter,
                            Resample::FusedDown,
                            &aux,
                            caux,
                            cout,
                            3,
                        );
                        x = (x + a) * SKIP_SCALE;
                        aux = x.clone();
                        caux = cout;
                    }
                }
                skips.push((x.clone(), cout));
            }
            for idx in 0..self.num_blocks {
                let cin = cout;
                cout = mc * mult;
                let attn = self.attn_resolutions.contains(&res);
                x = block(cin, cout, Resample::None, attn).forward(
                    &enc.scope(format!("{res}x{res}_block{idx}")),
                    &x,
                    &emb,
                );
                skips.push((x.clone(), cout));
            }
        }

        // Decoder: consumes the skips last-in first-out.
        let dec = ctx.scope("dec");
        let mut out: Option<Tensor<'a>> = None;
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            let res = h >> level;
            if level == levels - 1 {
                x = block(cout, cout, Resample::None, true).forward(
                    &dec.scope(format!("{res}x{res}_in0")),
                    &x,
                    &emb,
                );
                x = block(cout, cout, Resample::None, false).forward(
                    &dec.scope(format!("{res}x{res}_in1")),
                    &x,
                    &emb,
                );
            } else {
                x = block(cout, cout, Resample::Up, false).forward(
                    &dec.scope(format!("{res}x{res}_up")),
                    &x,
                    &emb,
                );
            }
            for idx in 0..=self.num_blocks {
                let (s, s_ch) = skips.pop().expect("one skip per decoder block");
                let keep = self.skips[skips.len()];
                let cin = match (keep, self.skip_mode) {
                    (true, _) => {
                        x = ctx.concat(&[&x, &s], 1);
                        cout + s_ch
                    }
                    (false, SkipMode::Zero) => {
                        x = ctx.concat(&[&x, &ctx.full(&s.shape(), 0.0)], 1);
                        cout + s_ch
                    }
                    (false, SkipMode::Remove) => cout,
                };
                cout = mc * mult;
                let attn = idx == self.num_blocks && self.attn_resolutions.contains(&res);
                x = block(cin, cout, Resample::None, attn).forward(
                    &dec.scope(format!("{res}x{res}_block{idx}")),
                    &x,
                    &emb,
                );
            }
            if self.decoder == Decoder::Skip || level == 0 {
                if let Some(prev) = out.take() {
                    // Only the skip decoder has outputs from lower levels.
                    out = Some(filter.up(&dec.scope(format!("{res}x{res}_aux_up")), &prev));
                }
                let hn = group_norm(&dec.scope(format!("{res}x{res}_aux_norm")), &x, cout).silu();
                let y = conv(
                    &dec.scope(format!("{res}x{res}_aux_conv")),
                    &hn,
                    cout,
                    c_img,
                    3,
                    INIT_ZERO,
                );
                out = Some(match out.take() {
                    Some(a) => y + a,
                    None => y,
                });
            }
        }
        Ok(out.expect("level 0 produces the output"))
    }
}

fn register(p: &mut Plugin) {
    p.architecture(
        "ddpmpp",
        "EDM's SongUNet (DDPM++ by default, NCSN++ by its options) with switchable skip connections",
        DDPMPP_PARAMS,
        Ddpmpp::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::{ModelSummary, inspect};

    /// `toml` with the documented defaults filled in, as the host does.
    fn params(toml: &str) -> Params {
        Params::with_defaults(toml, DDPMPP_PARAMS).unwrap()
    }

    fn net(toml: &str) -> Ddpmpp {
        Ddpmpp::from_params(&params(toml), 0).unwrap()
    }

    fn summary(toml: &str) -> ModelSummary {
        inspect(&net(toml), [2, 3, 32, 32], 0).unwrap()
    }

    fn count(toml: &str) -> usize {
        summary(toml).total
    }

    #[test]
    fn cifar10_parameter_counts_match_edm() {
        // EDM/DM DDPM++ at 32×32×3: 55.73M with 4 blocks per resolution, 35.13M with 2.
        let s = summary("");
        assert_eq!(s.total, 55_732_739);
        assert_eq!(s.output, vec![2, 3, 32, 32]);
        assert_eq!(count("num_blocks = 2"), 35_125_251);
    }

    #[test]
    fn ncsnpp_and_other_options_match_the_reference_counts() {
        // Counted with NVlabs/edm's SongUNet at 32×32×3, channel_mult [2, 2, 2] (parameters;
        // buffers apart).
        let ncsnpp = "embedding = \"fourier\"\nchannel_mult_noise = 2\nencoder = \"residual\"\n\
                      resample_filter = [1, 3, 3, 1]";
        let s = summary(ncsnpp);
        assert_eq!(s.total, 56_395_523);
        assert_eq!(s.output, vec![2, 3, 32, 32]);
        // Buffers: 128 frequencies and a 4×4 filter per resampling convolution.
        let buffered: usize = s
            .buffers
            .iter()
            .map(|(_, v)| v.iter().product::<usize>())
            .sum();
        assert_eq!(buffered, 288);
        assert_eq!(
            s.buffer("enc.16x16_aux_residual.resample_filter"),
            Some(&[1, 1, 4, 4][..])
        );
        assert_eq!(
            s.buffer("dec.16x16_up.skip.resample_filter"),
            Some(&[1, 1, 4, 4][..])
        );
        assert_eq!(s.param("map_layer0.weight"), Some(&[512, 256][..]));
        assert_eq!(
            s.param("enc.8x8_aux_residual.weight"),
            Some(&[256, 256, 3, 3][..])
        );
        let cond = inspect(
            &net(&format!("{ncsnpp}\naugment_dim = 9")),
            [2, 3, 32, 32],
            10,
        )
        .unwrap();
        assert_eq!(cond.total, 56_400_643);
        assert_eq!(cond.param("map_augment.weight"), Some(&[256, 9][..]));
        assert_eq!(cond.param("map_augment.bias"), None);
        let skip = summary("encoder = \"skip\"\ndecoder = \"skip\"");
        assert_eq!(skip.total, 55_749_641);
        assert!(skip.buffers.is_empty(), "the [1, 1] filter needs no buffer");
        assert_eq!(
            skip.param("enc.8x8_aux_skip.weight"),
            Some(&[256, 3, 1, 1][..])
        );
        assert_eq!(
            skip.param("dec.16x16_aux_conv.weight"),
            Some(&[3, 256, 3, 3][..])
        );
        assert_eq!(skip.param("dec.8x8_aux_norm.weight"), Some(&[256][..]));
    }

    #[test]
    fn defaults_are_edm_ddpmpp() {
        let d: RawParams = params("").parse().unwrap();
        assert_eq!((d.channels, d.channel_mult.clone()), (128, vec![2, 2, 2]));
        assert_eq!(
            (d.channel_mult_emb, d.channel_mult_noise, d.num_blocks),
            (4, 1, 4)
        );
        assert_eq!((d.attn_resolutions.clone(), d.dropout), (vec![16], 0.13));
        assert_eq!(
            (d.embedding, d.encoder, d.decoder),
            (Embedding::Positional, Encoder::Standard, Decoder::Standard)
        );
        assert_eq!(d.resample_filter, vec![1.0, 1.0]);
        assert_eq!((d.augment_dim, d.label_dropout), (0, 0.0));
        assert!(d.skips.is_empty() && d.skip_mode == SkipMode::Remove);
    }

    #[test]
    fn width_sweep_counts_match_diffmemorize_at_two_blocks() {
        // DM's width sweep (78.98M / 140.37M / 219.29M) uses its basic setup, num_blocks = 2.
        assert_eq!(count("num_blocks = 2\nchannels = 192"), 78_984_195);
        assert_eq!(count("num_blocks = 2\nchannels = 256"), 140_374_019);
        assert_eq!(count("num_blocks = 2\nchannels = 320"), 219_294_723);
        // With 4 blocks the same widths are much larger, so the published numbers are not those.
        assert_eq!(count("channels = 192"), 125_329_155);
    }

    #[test]
    fn parameter_shapes_follow_the_reference_layout() {
        let s = summary("num_blocks = 2");
        let shape = |n: &str| s.param(n).map(|v| v.to_vec());
        assert_eq!(shape("map_layer0.weight"), Some(vec![512, 128]));
        assert_eq!(shape("map_layer1.weight"), Some(vec![512, 512]));
        assert_eq!(shape("enc.32x32_conv.weight"), Some(vec![128, 3, 3, 3]));
        assert_eq!(
            shape("enc.32x32_block0.skip.weight"),
            Some(vec![256, 128, 1, 1])
        );
        assert_eq!(shape("enc.32x32_block1.skip.weight"), None);
        assert_eq!(
            shape("enc.16x16_down.skip.weight"),
            Some(vec![256, 256, 1, 1])
        );
        assert_eq!(
            shape("enc.16x16_block0.affine.weight"),
            Some(vec![256, 512])
        );
        assert_eq!(
            shape("dec.8x8_block0.conv0.weight"),
            Some(vec![256, 512, 3, 3])
        );
        assert_eq!(shape("dec.32x32_aux_conv.weight"), Some(vec![3, 256, 3, 3]));
        assert!(s.param("map_label.weight").is_none());
        // Attention: encoder blocks at 16×16, the first decoder block at the lowest
        // resolution, and the last decoder block at 16×16.
        for (name, has) in [
            ("enc.32x32_block0", false),
            ("enc.16x16_block0", true),
            ("enc.16x16_block1", true),
            ("enc.8x8_block0", false),
            ("dec.8x8_in0", true),
            ("dec.8x8_in1", false),
            ("dec.16x16_block0", false),
            ("dec.16x16_block2", true),
            ("dec.32x32_block2", false),
        ] {
            let qkv = s.param(&format!("{name}.qkv.weight")).is_some();
            assert_eq!(qkv, has, "{name}");
        }
        let c = 256;
        assert_eq!(
            s.count_with_prefix("dec.8x8_in0."),
            // norm0, conv0, affine, norm1, conv1, norm2, qkv, proj
            2 * c
                + (9 * c * c + c)
                + (512 * c + c)
                + 2 * c
                + (9 * c * c + c)
                + 2 * c
                + (3 * c * c + 3 * c)
                + (c * c + c)
        );
    }

    #[test]
    fn class_labels_add_a_linear_map() {
        let a = inspect(&net(""), [2, 3, 32, 32], 0).unwrap();
        let b = inspect(&net(""), [2, 3, 32, 32], 10).unwrap();
        assert_eq!(b.total, a.total + 10 * 128 + 128);
        assert_eq!(b.param("map_label.weight"), Some(&[128, 10][..]));
    }

    #[test]
    fn dropping_skips_removes_their_concatenation() {
        let full = summary("num_blocks = 2");
        // Keep only the three 32×32 skips (DM's "skip number 3 at 32×32").
        let kept32 = summary("num_blocks = 2\nskips = [1, 1, 1, 0, 0, 0, 0, 0, 0]");
        assert_eq!(kept32.total, 30_795_267);
        assert!(kept32.total < full.total);
        // Skip 8 (the last 8×8 block) feeds dec.8x8_block0: its input shrinks to 256 and the
        // block no longer needs a 1×1 projection.
        assert_eq!(
            kept32.param("dec.8x8_block0.conv0.weight"),
            Some(&[256, 256, 3, 3][..])
        );
        assert_eq!(kept32.param("dec.8x8_block0.skip.weight"), None);
        assert_eq!(
            kept32.param("dec.32x32_block0.conv0.weight"),
            Some(&[256, 512, 3, 3][..])
        );
        // Every single dropped connection shrinks the model; booleans mean the same as 0/1.
        for k in 0..9 {
            let flags: Vec<&str> = (0..9)
                .map(|i| if i == k { "false" } else { "true" })
                .collect();
            let one = count(&format!("num_blocks = 2\nskips = [{}]", flags.join(", ")));
            assert!(
                one < full.total,
                "dropping skip {k}: {one} vs {}",
                full.total
            );
        }
        let none = count("num_blocks = 2\nskips = [0, 0, 0, 0, 0, 0, 0, 0, 0]");
        assert!(none < kept32.total);
        // DiffMemorize's zero-filled skips keep the parameter count.
        let zero =
            count("num_blocks = 2\nskips = [0, 0, 0, 0, 0, 0, 0, 0, 0]\nskip_mode = \"zero\"");
        assert_eq!(zero, full.total);
    }

    #[test]
    fn fourier_embedding_builds_and_is_seeded() {
        let pos = count("num_blocks = 2");
        let four = count("num_blocks = 2\nembedding = \"fourier\"");
        // The Fourier frequencies are a fixed buffer, not parameters.
        assert_eq!(pos, four);
        let p = params("embedding = \"fourier\"");
        let a = Ddpmpp::from_params(&p, 1).unwrap();
        let b = Ddpmpp::from_params(&p, 1).unwrap();
        let c = Ddpmpp::from_params(&p, 2).unwrap();
        assert_eq!(a.embedding(), Embedding::Fourier);
        assert_eq!(a.frequencies(), b.frequencies());
        assert_ne!(a.frequencies(), c.frequencies());
        assert_eq!(a.frequencies().len(), 64);
        let rms = (a
            .frequencies()
            .iter()
            .map(|f| (*f as f64).powi(2))
            .sum::<f64>()
            / 64.0)
            .sqrt();
        assert!((rms / 16.0 - 1.0).abs() < 0.35, "rms {rms}");
        // They are the reference's buffer `map_noise.freqs`, not a parameter.
        let s = summary("num_blocks = 2\nembedding = \"fourier\"");
        assert_eq!(s.buffer("map_noise.freqs"), Some(&[64][..]));
        assert_eq!(s.param("map_noise.freqs"), None);
        assert!(summary("num_blocks = 2").buffers.is_empty());
        // Positional: (1/10⁴)^(i/(half−1)), endpoint included.
        let pos = net("");
        let f = pos.frequencies();
        assert_eq!(f.len(), 64);
        assert!((f[0] - 1.0).abs() < 1e-7 && (f[63] - 1e-4).abs() < 1e-9);
        assert!((f[1] - 1e-4f32.powf(1.0 / 63.0)).abs() < 1e-6);
    }

    #[test]
    fn other_resolutions_and_widths_work() {
        let s = inspect(
            &net("channels = 16\nchannel_mult = [1, 2]\nnum_blocks = 1\nattn_resolutions = [8]"),
            [3, 1, 16, 16],
            4,
        )
        .unwrap();
        assert_eq!(s.output, vec![3, 1, 16, 16]);
        assert!(s.param("enc.8x8_block0.qkv.weight").is_some());
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let err = |toml: &str| Ddpmpp::from_params(&params(toml), 0).err().unwrap();
        let e = err("num_blocks = 2\nskips = [1, 1]");
        assert!(
            e.contains("skips has 2 entries") && e.contains("9 skip connections"),
            "{e}"
        );
        assert!(err("num_blocks = 1\nskips = [1, 2, 1, 1, 1, 1]").contains("got 2"));
        assert!(err("channels = 7").contains("even"));
        assert!(err("channel_mult = []").contains("channel_mult"));
        assert!(err("dropout = 1.5").contains("dropout"));
        assert!(err("embedding = \"learned\"").contains("unknown variant"));
        assert!(err("encoder = \"fancy\"").contains("unknown variant"));
        assert!(err("resample_filter = [1, 2, 1]").contains("even number"));
        assert!(err("resample_filter = [1, -1]").contains("non-zero"));
        assert!(err("label_dropout = 1").contains("label_dropout"));
        assert!(err("channel_mult_noise = 0").contains("channel_mult_noise"));
        assert!(err("blocks = 2").contains("unknown field"));
        let e = inspect(&net(""), [1, 3, 30, 30], 0).unwrap_err();
        assert!(e.contains("divisible by 2^(levels − 1) = 4"), "{e}");
        let e = inspect(&net(""), [1, 3, 32, 16], 0).unwrap_err();
        assert!(e.contains("square"), "{e}");
    }
}
