//! The improved-diffusion UNet (Nichol & Dhariwal, openai/improved-diffusion `unet.py`,
//! `UNetModel`) as a memlab architecture named `unet`.
//!
//! Layout, for `channel_mult` of length L and `res_blocks` = R:
//!
//! - time embedding: sinusoidal(c_noise, C) → Linear(C, 4C) → SiLU → Linear(4C, 4C), plus a
//!   learned class embedding `[classes, 4C]` when the model is conditional;
//! - input blocks: a 3×3 conv to C channels, then per level R residual blocks to `mult·C`
//!   channels (each followed by self-attention when the level's resolution is listed in
//!   `attention_resolutions`) and, except at the last level, a downsampling (3×3 stride-2
//!   conv, or 2×2 average pooling without `conv_resample`);
//! - middle: residual block, attention, residual block;
//! - output blocks: per level in reverse, R + 1 residual blocks on the concatenation with the
//!   matching skip activation (optional attention as above) and, except at level 0, a
//!   nearest ×2 upsampling (followed by a 3×3 conv with `conv_resample`);
//! - out: GroupNorm → SiLU → zero-initialised 3×3 conv to C_img (2·C_img with `learn_sigma`).
//!
//! The time embedding reads `inputs.noise`, i.e. the schedule's c_noise (for the discrete
//! DDPM schedules the timestep rescaled to [0, 1000), as improved-diffusion's
//! `rescale_timesteps`). With `learn_sigma` the last C_img output channels are the variance
//! interpolation v and [`ArchInfo::learned_variance`] is set. `attention_resolutions` lists
//! feature-map sizes, as the reference's command-line flag does (it converts them to
//! downsampling factors for the configured image size); they are checked against the actual
//! input size on the first forward pass.
//!
//! Residual blocks are [`ResBlock`] (GN → SiLU → conv, embedding projection added or as
//! scale/shift of the second norm, GN → SiLU → dropout → zero-initialised conv, 1×1 skip when
//! the width changes); attention is [`SpatialAttention`] (GN, 1×1 qkv, zero-initialised 1×1
//! output projection). GroupNorm uses 32 groups (the largest divisor of the width up to 32
//! for narrow layers, where the reference would fail), and the output conv takes the actual
//! width of the last decoder level (the reference assumes `channel_mult[0] = 1`).
//!
//! Parameter names and layouts are the reference `state_dict`'s
//! (`input_blocks.1.0.in_layers.2.weight`, `time_embed.0.weight` `[4C, C]`, attention
//! `qkv.weight` `[3C, C, 1]`, ...), so a `UNetModel` checkpoint loads through
//! `architecture.init_from`; `tests/networks.rs` compares the output with the reference's own
//! on shared weights.
//!
//! Parameter counts equal the reference's: at 32×32×3 with `learn_sigma`, 13,161,926 /
//! 52,546,438 / 209,983,238 for C = 64 / 128 / 256 (the papers' 13.16M / 52.55M / 209.98M).

use memlab_plugin_api::prelude::*;

/// Parameter documentation of the `unet` architecture.
pub const UNET_PARAMS: &[Param] = &[
    param(
        "channels",
        "int",
        "128",
        "base width C (model_channels); the time embedding is 4·C wide",
    ),
    param(
        "channel_mult",
        "[int]",
        "[1, 2, 2, 2]",
        "width multiplier per resolution level; the input is halved between levels",
    ),
    param(
        "res_blocks",
        "int",
        "3",
        "residual blocks per level (num_res_blocks); decoder levels get one more",
    ),
    param(
        "attention_resolutions",
        "[int]",
        "[16, 8]",
        "feature-map sizes (e.g. 16 = 16×16) whose blocks get self-attention; must occur for the input size",
    ),
    param(
        "heads",
        "int",
        "4",
        "attention heads (must divide the width of every attention layer)",
    ),
    param(
        "dropout",
        "float",
        "0.3",
        "dropout in residual blocks (0.3 for CIFAR-10 in improved-diffusion and Yoon et al.; the reference code's default is 0)",
    ),
    param(
        "scale_shift",
        "bool",
        "true",
        "use_scale_shift_norm: the embedding scales and shifts the second norm of each block instead of being added",
    ),
    param(
        "learn_sigma",
        "bool",
        "true",
        "also output the variance interpolation v (2·C_img output channels; for discrete DDPM schedules)",
    ),
    param(
        "conv_resample",
        "bool",
        "true",
        "learned 3×3 convolutions when down- and upsampling (else average pooling / plain nearest upsampling)",
    ),
];

/// Parsed `unet` parameters (see [`UNET_PARAMS`]).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct UNet {
    /// Base width C.
    pub channels: usize,
    /// Width multiplier per level.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per encoder level.
    pub res_blocks: usize,
    /// Feature-map sizes with self-attention.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads.
    pub heads: usize,
    /// Dropout probability inside residual blocks.
    pub dropout: f64,
    /// Scale-shift normalisation.
    pub scale_shift: bool,
    /// Output the learned-variance channels too.
    pub learn_sigma: bool,
    /// Learned convolutions for resampling.
    pub conv_resample: bool,
}

impl UNet {
    /// Parses and validates the parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<UNet> {
        let u: UNet = params.parse()?;
        u.validate()?;
        Ok(u)
    }

    /// Checks everything that does not depend on the input size.
    pub fn validate(&self) -> PResult<()> {
        if self.channels == 0 {
            return Err("channels must be positive".into());
        }
        if self.channel_mult.is_empty() {
            return Err("channel_mult must be non-empty".into());
        }
        if self.channel_mult.contains(&0) {
            return Err(format!(
                "channel_mult entries must be positive, got {:?}",
                self.channel_mult
            ));
        }
        if self.attention_resolutions.contains(&0) {
            return Err(format!(
                "attention_resolutions entries must be positive, got {:?}",
                self.attention_resolutions
            ));
        }
        if self.heads == 0 {
            return Err("heads must be positive".into());
        }
        // The middle block always has attention, at the deepest width.
        let deepest = self.channels * self.channel_mult[self.channel_mult.len() - 1];
        if !deepest.is_multiple_of(self.heads) {
            return Err(format!(
                "heads ({}) must divide the middle block's width {deepest}",
                self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Feature-map sizes of the levels for a `size`×`size` input, after checking that the
    /// input can be halved between every pair of levels and that every attention resolution
    /// occurs and has a width divisible by `heads`.
    pub fn level_sizes(&self, height: usize, width: usize) -> PResult<Vec<usize>> {
        if height != width {
            return Err(format!(
                "the UNet needs square inputs, got {height}×{width}"
            ));
        }
        let levels = self.channel_mult.len();
        let factor = 1usize << (levels - 1);
        if height == 0 || !height.is_multiple_of(factor) {
            return Err(format!(
                "a {height}×{width} input cannot be halved {} times (channel_mult has {levels} \
                 levels); use a size divisible by {factor}",
                levels - 1
            ));
        }
        let sizes: Vec<usize> = (0..levels).map(|l| height >> l).collect();
        for &r in &self.attention_resolutions {
            let Some(level) = sizes.iter().position(|&s| s == r) else {
                let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
                return Err(format!(
                    "attention resolution {r} never occurs for a {height}×{width} input (the \
                     UNet works at {})",
                    list.join(", ")
                ));
            };
            let ch = self.channels * self.channel_mult[level];
            if !ch.is_multiple_of(self.heads) {
                return Err(format!(
                    "heads ({}) must divide the width {ch} of the attention layers at resolution \
                     {r}",
                    self.heads
                ));
            }
        }
        Ok(sizes)
    }

    fn res_block(&self, c_in: usize, c_out: usize) -> ResBlock {
        ResBlock::new(c_in, c_out, 4 * self.channels)
            .dropout(self.dropout)
            .scale_shift(self.scale_shift)
    }

    fn attention(&self, channels: usize) -> SpatialAttention {
        SpatialAttention::new(channels, self.heads)
    }

    fn downsample<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>, channels: usize) -> Tensor<'a> {
        if self.conv_resample {
            Conv2d::new(channels, channels, 3)
                .stride(2)
                .padding(1)
                .forward(&ctx.scope("op"), x)
        } else {
            x.avg_pool2d(2, 2)
        }
    }

    fn upsample<'a>(&self, ctx: &Ctx<'a>, x: &Tensor<'a>, channels: usize) -> Tensor<'a> {
        let x = x.upsample_nearest2d(2);
        if self.conv_resample {
            Conv2d::new(channels, channels, 3)
                .same()
                .forward(&ctx.scope("conv"), &x)
        } else {
            x
        }
    }
}

impl Architecture for UNet {
    fn info(&self) -> ArchInfo {
        ArchInfo {
            learned_variance: self.learn_sigma,
            ..ArchInfo::default()
        }
    }

    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        if inp.x.rank() != 4 {
            return Err(format!(
                "the UNet needs an [N, C, H, W] input, got shape {:?}",
                inp.x.shape()
            ));
        }
        let [_, c_img, height, width] = inp.x.dims::<4>();
        let sizes = self.level_sizes(height, width)?;
        let attn_at = |level: usize| self.attention_resolutions.contains(&sizes[level]);
        let base = self.channels;
        let emb_dim = 4 * base;

        // Time (and class) embedding.
        let t = timestep_embedding(ctx, &inp.noise, base);
        let t = Linear::new(base, emb_dim)
            .forward(&ctx.scope("time_embed.0"), &t)
            .silu();
        let mut emb = Linear::new(emb_dim, emb_dim).forward(&ctx.scope("time_embed.2"), &t);
        if inp.classes > 0 {
            let labels = inp.labels.as_ref().ok_or_else(|| {
                format!(
                    "the model is conditional ({} classes) but no labels were given",
                    inp.classes
                )
            })?;
            let table = ctx.param(
                "label_emb.weight",
                &[inp.classes as usize, emb_dim],
                Init::normal(0.0, 1.0),
            );
            emb = emb + table.embedding(labels);
        }

        // Encoder.
        let mut h = Conv2d::new(c_img, base, 3)
            .same()
            .forward(&ctx.scope("input_blocks.0.0"), &inp.x);
        let mut skips = vec![(h.clone(), base)];
        let mut ch = base;
        let last = self.channel_mult.len() - 1;
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.res_blocks {
                let block = ctx.scope(format!("input_blocks.{}", skips.len()));
                let out = mult * base;
                h = self
                    .res_block(ch, out)
                    .forward(&block.scope(0), &h, Some(&emb));
                ch = out;
                if attn_at(level) {
                    h = self.attention(ch).forward(&block.scope(1), &h);
                }
                skips.push((h.clone(), ch));
            }
            if level != last {
                let block = ctx.scope(format!("input_blocks.{}.0", skips.len()));
                h = self.downsample(&block, &h, ch);
                skips.push((h.clone(), ch));
            }
        }

        // Middle.
        let mid = ctx.scope("middle_block");
        h = self
            .res_block(ch, ch)
            .forward(&mid.scope(0), &h, Some(&emb));
        h = self.attention(ch).forward(&mid.scope(1), &h);
        h = self
            .res_block(ch, ch)
            .forward(&mid.scope(2), &h, Some(&emb));

        // Decoder.
        let mut index = 0;
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            for i in 0..=self.res_blocks {
                let (skip, skip_ch) = skips.pop().expect("one skip per decoder block");
                let block = ctx.scope(format!("output_blocks.{index}"));
                index += 1;
                let out = mult * base;
                let cat = ctx.concat(&[&h, &skip], 1);
                h = self
                    .res_block(ch + skip_ch, out)
                    .forward(&block.scope(0), &cat, Some(&emb));
                ch = out;
                let mut j = 1;
                if attn_at(level) {
                    h = self.attention(ch).forward(&block.scope(j), &h);
                    j += 1;
                }
                if level > 0 && i == self.res_blocks {
                    h = self.upsample(&block.scope(j), &h, ch);
                }
            }
        }

        // Output.
        let c_out = if self.learn_sigma { 2 * c_img } else { c_img };
        let h = GroupNorm::gn32(ch).forward(&ctx.scope("out.0"), &h).silu();
        Ok(Conv2d::new(ch, c_out, 3)
            .same()
            .zero_init()
            .forward(&ctx.scope("out.2"), &h))
    }
}

fn register(p: &mut Plugin) {
    p.architecture(
        "unet",
        "improved-diffusion UNet (Nichol & Dhariwal): residual blocks, attention at chosen resolutions, optional learned variance",
        UNET_PARAMS,
        UNet::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::inspect;

    fn unet(toml: &str) -> PResult<UNet> {
        UNet::from_params(&Params::with_defaults(toml, super::UNET_PARAMS)?, 0)
    }

    /// Reference parameter counts of improved-diffusion's CIFAR-10 UNet (32×32×3, channel_mult
    /// (1,2,2,2), 3 res blocks, attention at 16 and 8, 4 heads, scale-shift norm, learn_sigma:
    /// 6 output channels): 13.16M / 52.55M / 209.98M for C = 64 / 128 / 256.
    #[test]
    fn cifar10_parameter_counts_match_the_reference() {
        for (c, exact, millions) in [
            (64, 13_161_926, 13.16),
            (128, 52_546_438, 52.55),
            (256, 209_983_238, 209.98),
        ] {
            let net = unet(&format!("channels = {c}")).unwrap();
            assert!(net.info().learned_variance);
            let s = inspect(&net, [2, 3, 32, 32], 0).unwrap();
            assert_eq!(s.output, vec![2, 6, 32, 32], "C = {c}");
            assert_eq!(s.total, exact, "C = {c}");
            let rounded = (s.total as f64 / 1e4).round() / 100.0;
            assert_eq!(rounded, millions, "C = {c}");
        }
    }

    #[test]
    fn class_embedding_adds_classes_times_4c() {
        for c in [64, 128] {
            let net = unet(&format!("channels = {c}")).unwrap();
            let u = inspect(&net, [2, 3, 32, 32], 0).unwrap();
            let k = inspect(&net, [2, 3, 32, 32], 10).unwrap();
            assert_eq!(k.total - u.total, 10 * 4 * c);
            assert_eq!(k.param("label_emb.weight"), Some(&[10, 4 * c][..]));
            assert_eq!(u.param("label_emb.weight"), None);
        }
    }

    #[test]
    fn block_structure_follows_the_reference() {
        let net = unet("channels = 64").unwrap();
        let s = inspect(&net, [1, 3, 32, 32], 0).unwrap();
        // 1 input conv + 4 levels × 3 blocks + 3 downsamples = 16 input blocks (0..=15);
        // 4 levels × 4 = 16 output blocks.
        assert!(s.param("input_blocks.15.0.in_layers.2.weight").is_some());
        assert!(s.param("input_blocks.16.0.in_layers.2.weight").is_none());
        assert!(s.param("output_blocks.15.0.in_layers.2.weight").is_some());
        assert!(s.param("output_blocks.16.0.in_layers.2.weight").is_none());
        // Downsampling convs at input blocks 4, 8, 12; attention at 16×16 and 8×8 only.
        assert_eq!(
            s.param("input_blocks.4.0.op.weight"),
            Some(&[64, 64, 3, 3][..])
        );
        assert!(s.param("input_blocks.5.1.qkv.weight").is_some());
        assert!(s.param("input_blocks.9.1.qkv.weight").is_some());
        assert!(s.param("input_blocks.1.1.qkv.weight").is_none());
        assert!(s.param("input_blocks.13.1.qkv.weight").is_none());
        // The first decoder block sees 128 + 128 channels; the last one 64 + 64.
        assert_eq!(
            s.param("output_blocks.0.0.in_layers.2.weight"),
            Some(&[128, 256, 3, 3][..])
        );
        assert_eq!(
            s.param("output_blocks.15.0.skip_connection.weight"),
            Some(&[64, 128, 1, 1][..])
        );
        // Upsampling at the end of decoder levels 3, 2, 1, after the attention where present.
        assert!(s.param("output_blocks.3.1.conv.weight").is_some());
        assert!(s.param("output_blocks.7.2.conv.weight").is_some());
        assert!(s.param("output_blocks.11.2.conv.weight").is_some());
        assert!(s.param("output_blocks.15.1.conv.weight").is_none());
        // Scale-shift: the embedding projection is 2·C_out wide.
        assert_eq!(
            s.param("middle_block.0.emb_layers.1.weight"),
            Some(&[256, 256][..])
        );
        assert_eq!(s.param("out.2.weight"), Some(&[6, 64, 3, 3][..]));
    }

    #[test]
    fn small_config_end_to_end_shapes() {
        let net = unet(
            "channels = 32\nchannel_mult = [1, 2]\nres_blocks = 1\nattention_resolutions = [4]\n\
             heads = 2\nlearn_sigma = false\nscale_shift = false\nconv_resample = false\n\
             dropout = 0.0",
        )
        .unwrap();
        assert!(!net.info().learned_variance);
        let s = inspect(&net, [3, 1, 8, 8], 5).unwrap();
        assert_eq!(s.output, vec![3, 1, 8, 8]);
        // No resampling convs; attention only at 4×4 (level 1 and the middle).
        assert!(!s.params.iter().any(|(n, _)| n.ends_with("op.weight")));
        assert!(s.param("input_blocks.3.1.qkv.weight").is_some());
        assert!(s.param("input_blocks.1.1.qkv.weight").is_none());
        // Without scale-shift the embedding projection is C_out wide.
        assert_eq!(
            s.param("input_blocks.1.0.emb_layers.1.weight"),
            Some(&[32, 128][..])
        );
        // Hand count: time MLP, label table, then each block.
        let rb = |ci: usize, co: usize| {
            2 * ci
                + ci * co * 9
                + co
                + 128 * co
                + co
                + 2 * co
                + co * co * 9
                + co
                + if ci != co { ci * co + co } else { 0 }
        };
        let at = |c: usize| 2 * c + 3 * c * c + 3 * c + c * c + c;
        let expected = (32 * 128 + 128) + (128 * 128 + 128) // time MLP
            + 5 * 128 // label table
            + (9 * 32 + 32) // input conv
            + rb(32, 32) // level 0 (then average pooling)
            + rb(32, 64) + at(64) // level 1, 4×4
            + rb(64, 64) + at(64) + rb(64, 64) // middle
            + rb(64 + 64, 64) + at(64) + rb(64 + 32, 64) + at(64) // decoder level 1
            + rb(64 + 32, 32) + rb(32 + 32, 32) // decoder level 0
            + (2 * 32 + 32 * 9 + 1); // out norm and conv
        assert_eq!(s.total, expected);
        // An input that cannot be halved between the levels is refused.
        let e = inspect(&net, [1, 1, 7, 7], 0).unwrap_err();
        assert!(e.contains("cannot be halved 1 times"), "{e}");
    }

    #[test]
    fn invalid_configurations_are_explained() {
        let e = unet("channel_mult = []").unwrap_err();
        assert_eq!(e, "channel_mult must be non-empty");
        let e = unet("heads = 3").unwrap_err();
        assert!(e.contains("heads (3) must divide"), "{e}");
        let e = unet("dropout = 1.5").unwrap_err();
        assert!(e.contains("dropout must be in [0, 1)"), "{e}");
        let e = unet("width = 3").unwrap_err();
        assert!(e.contains("unknown field `width`"), "{e}");
        let net = unet("channels = 32\nattention_resolutions = [12]").unwrap();
        let e = inspect(&net, [1, 3, 32, 32], 0).unwrap_err();
        assert_eq!(
            e,
            "attention resolution 12 never occurs for a 32×32 input (the UNet works at 32, 16, 8, 4)"
        );
        let e = inspect(&net, [1, 3, 32, 16], 0).unwrap_err();
        assert!(e.contains("square inputs"), "{e}");
        let e = inspect(&unet("").unwrap(), [1, 3, 8, 8], 0).unwrap_err();
        assert!(e.contains("attention resolution 16 never occurs"), "{e}");
    }

    #[test]
    fn defaults_are_the_cifar10_reference() {
        let d = unet("").unwrap();
        assert_eq!(
            (d.channels, d.channel_mult.clone(), d.res_blocks),
            (128, vec![1, 2, 2, 2], 3)
        );
        assert_eq!(d.attention_resolutions, vec![16, 8]);
        assert_eq!((d.heads, d.dropout), (4, 0.3));
        assert!(d.scale_shift && d.learn_sigma && d.conv_resample);
    }
}
