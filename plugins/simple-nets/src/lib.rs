//! Small denoisers written through the plugin-api typed layer.
//!
//! - `convnet`: a residual conv net with a sinusoidal noise embedding (and a class embedding
//!   when the model is conditional). Tiny, for tests and quick experiments.
//! - `mlp`: a residual MLP on flattened images, for tiny images (8×8, 16×16) and
//!   closed-form comparisons.

use memlab_plugin_api::prelude::*;

/// Parameter documentation of the `convnet` architecture.
pub const CONVNET_PARAMS: &[Param] = &[
    param("channels", "int", "32", "feature channels"),
    param("blocks", "int", "2", "residual blocks"),
    param(
        "dropout",
        "float",
        "0.0",
        "dropout probability inside residual blocks",
    ),
];

/// A residual conv net: conv_in → `blocks` × [`ResBlock`] → GroupNorm → SiLU → zero-initialised
/// conv_out, conditioned on a sinusoidal noise embedding (and a class embedding).
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct ConvNet {
    /// Feature channels.
    pub channels: usize,
    /// Residual blocks.
    pub blocks: usize,
    /// Dropout probability inside residual blocks.
    pub dropout: f64,
}

impl ConvNet {
    /// Parses and validates the parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<ConvNet> {
        let c: ConvNet = params.parse()?;
        if c.channels == 0 || !c.channels.is_multiple_of(2) {
            return Err(format!(
                "channels must be a positive even number, got {}",
                c.channels
            ));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", c.dropout));
        }
        Ok(c)
    }
}

impl Architecture for ConvNet {
    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        let [_, c, _, _] = inp.x.dims::<4>();
        let ch = self.channels;
        let emb_dim = 4 * ch;
        let t = timestep_embedding(ctx, &inp.noise, ch);
        let t = Linear::new(ch, emb_dim)
            .forward(&ctx.scope("time.0"), &t)
            .silu();
        let mut emb = Linear::new(emb_dim, emb_dim).forward(&ctx.scope("time.1"), &t);
        if let (Some(labels), true) = (&inp.labels, inp.classes > 0) {
            let table = ctx.param(
                "label_emb",
                &[inp.classes as usize, emb_dim],
                Init::normal(0.0, 1.0),
            );
            emb = emb + table.embedding(labels);
        }
        let mut h = Conv2d::new(c, ch, 3)
            .same()
            .forward(&ctx.scope("conv_in"), &inp.x);
        for i in 0..self.blocks {
            h = ResBlock::new(ch, ch, emb_dim)
                .dropout(self.dropout)
                .forward(&ctx.scope(format!("block{i}")), &h, Some(&emb));
        }
        let h = GroupNorm::gn32(ch)
            .forward(&ctx.scope("out_norm"), &h)
            .silu();
        Ok(Conv2d::new(ch, c, 3)
            .same()
            .zero_init()
            .forward(&ctx.scope("conv_out"), &h))
    }
}

/// Parameter documentation of the `mlp` architecture.
pub const MLP_PARAMS: &[Param] = &[
    param("hidden", "int", "256", "width of the hidden layers (even)"),
    param("blocks", "int", "3", "residual blocks"),
    param(
        "dropout",
        "float",
        "0.0",
        "dropout probability inside residual blocks",
    ),
];

/// A residual MLP denoiser on flattened images.
///
/// `x` `[N, C, H, W]` → flatten → Linear(C·H·W, hidden) → `blocks` × residual block →
/// LayerNorm → SiLU → zero-initialised Linear(hidden, C·H·W) → reshape to `[N, C, H, W]`.
/// A residual block is `h + fc2(dropout(SiLU(fc1(SiLU(LN(h))) + emb_proj(emb))))` with a
/// zero-initialised `fc2`. The embedding is sinusoidal(noise, hidden) → Linear → SiLU →
/// Linear, plus a learned class embedding `[classes, hidden]` when the model is conditional;
/// each block sees it through its own `emb_proj` after a SiLU.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
pub struct Mlp {
    /// Hidden width.
    pub hidden: usize,
    /// Residual blocks.
    pub blocks: usize,
    /// Dropout probability inside residual blocks.
    pub dropout: f64,
}

impl Mlp {
    /// Parses and validates the parameters.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Mlp> {
        let m: Mlp = params.parse()?;
        if m.hidden == 0 || !m.hidden.is_multiple_of(2) {
            return Err(format!(
                "hidden must be a positive even number, got {}",
                m.hidden
            ));
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", m.dropout));
        }
        Ok(m)
    }

    /// Number of parameters for images of `image_len` = C·H·W values and `classes` classes.
    pub fn num_params(&self, image_len: usize, classes: usize) -> usize {
        let h = self.hidden;
        let lin = |i: usize, o: usize| Linear::new(i, o).num_params();
        let block = 2 * h + 3 * lin(h, h);
        lin(image_len, h)
            + 2 * lin(h, h)
            + classes * h
            + self.blocks * block
            + 2 * h
            + lin(h, image_len)
    }
}

impl Architecture for Mlp {
    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        if inp.x.rank() != 4 {
            return Err(format!(
                "the MLP needs an [N, C, H, W] input, got shape {:?}",
                inp.x.shape()
            ));
        }
        let [n, c, height, width] = inp.x.dims::<4>();
        let d = c * height * width;
        let h_dim = self.hidden;
        let t = timestep_embedding(ctx, &inp.noise, h_dim);
        let t = Linear::new(h_dim, h_dim)
            .forward(&ctx.scope("time.0"), &t)
            .silu();
        let mut emb = Linear::new(h_dim, h_dim).forward(&ctx.scope("time.1"), &t);
        if inp.classes > 0 {
            let labels = inp.labels.as_ref().ok_or_else(|| {
                format!(
                    "the model is conditional ({} classes) but no labels were given",
                    inp.classes
                )
            })?;
            let table = ctx.param(
                "label_emb",
                &[inp.classes as usize, h_dim],
                Init::normal(0.0, 1.0),
            );
            emb = emb + table.embedding(labels);
        }
        let emb = emb.silu();
        let mut h = Linear::new(d, h_dim).forward(&ctx.scope("fc_in"), &inp.x.reshape_to(&[n, d]));
        for i in 0..self.blocks {
            let b = ctx.scope(format!("block{i}"));
            let z = LayerNorm::new(h_dim).forward(&b.scope("norm"), &h).silu();
            let z = Linear::new(h_dim, h_dim).forward(&b.scope("fc1"), &z)
                + Linear::new(h_dim, h_dim).forward(&b.scope("emb"), &emb);
            let z = z.silu().dropout(self.dropout);
            let z = Linear::new(h_dim, h_dim)
                .zero_init()
                .forward(&b.scope("fc2"), &z);
            h = h + z;
        }
        let h = LayerNorm::new(h_dim)
            .forward(&ctx.scope("out_norm"), &h)
            .silu();
        let out = Linear::new(h_dim, d)
            .zero_init()
            .forward(&ctx.scope("fc_out"), &h);
        Ok(out.reshape_to(&[n, c, height, width]))
    }
}

fn register(p: &mut Plugin) {
    p.architecture(
        "convnet",
        "Small residual conv net with noise (and class) embedding",
        CONVNET_PARAMS,
        ConvNet::from_params,
    );
    p.architecture(
        "mlp",
        "Residual MLP on flattened images with noise (and class) embedding, for tiny images",
        MLP_PARAMS,
        Mlp::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::inspect;

    fn mlp(toml: &str) -> PResult<Mlp> {
        Mlp::from_params(&Params::with_defaults(toml, MLP_PARAMS)?, 0)
    }

    #[test]
    fn mlp_shape_and_parameter_count() {
        let net = mlp("hidden = 64\nblocks = 2").unwrap();
        let s = inspect(&net, [5, 3, 8, 8], 0).unwrap();
        assert_eq!(s.output, vec![5, 3, 8, 8]);
        // fc_in 192·64+64, time 2·(64·64+64), blocks 2·(2·64 + 3·(64·64+64)),
        // out_norm 2·64, fc_out 64·192+192.
        let expected = 12_352 + 8_320 + 2 * (128 + 12_480) + 128 + 12_480;
        assert_eq!(expected, 58_496);
        assert_eq!(s.total, expected);
        assert_eq!(net.num_params(192, 0), expected);
        assert_eq!(s.param("fc_in.weight"), Some(&[64, 192][..]));
        assert_eq!(s.param("block1.fc2.weight"), Some(&[64, 64][..]));

        let cond = inspect(&net, [5, 3, 8, 8], 10).unwrap();
        assert_eq!(cond.total, expected + 10 * 64);
        assert_eq!(net.num_params(192, 10), cond.total);
        assert_eq!(cond.output, vec![5, 3, 8, 8]);
    }

    #[test]
    fn mlp_defaults_and_errors() {
        let d = mlp("").unwrap();
        assert_eq!((d.hidden, d.blocks), (256, 3));
        let s = inspect(&d, [2, 1, 16, 16], 0).unwrap();
        assert_eq!(s.total, d.num_params(256, 0));
        assert_eq!(s.output, vec![2, 1, 16, 16]);
        assert!(mlp("hidden = 7").unwrap_err().contains("positive even"));
        assert!(mlp("dropout = 1.0").unwrap_err().contains("[0, 1)"));
        assert!(
            mlp("depth = 2")
                .unwrap_err()
                .contains("unknown field `depth`")
        );
    }

    #[test]
    fn convnet_default_size() {
        let net =
            ConvNet::from_params(&Params::with_defaults("", CONVNET_PARAMS).unwrap(), 0).unwrap();
        let s = inspect(&net, [2, 3, 8, 8], 0).unwrap();
        assert_eq!(s.output, vec![2, 3, 8, 8]);
        // time MLP 32→128→128, conv_in 3→32, two 32→32 ResBlocks (embedding 128 → 32),
        // GroupNorm(32) and conv_out 32→3.
        let block = 64 + (9 * 32 * 32 + 32) + (128 * 32 + 32) + 64 + (9 * 32 * 32 + 32);
        let expected = (32 * 128 + 128)
            + (128 * 128 + 128)
            + (27 * 32 + 32)
            + 2 * block
            + 64
            + (9 * 32 * 3 + 3);
        assert_eq!(expected, 68_067);
        assert_eq!(s.total, expected);
    }
}
