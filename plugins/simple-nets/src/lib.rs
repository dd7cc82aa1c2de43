//! Small denoisers written through the plugin-api typed layer.
//!
//! - `convnet`: a residual conv net with a sinusoidal noise embedding (and a class embedding
//!   when the model is conditional). Tiny, for tests and quick experiments.

use memlab_plugin_api::prelude::*;

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

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields, default)]
pub struct ConvNet {
    pub channels: usize,
    pub blocks: usize,
    pub dropout: f64,
}

impl Default for ConvNet {
    fn default() -> Self {
        ConvNet {
            channels: 32,
            blocks: 2,
            dropout: 0.0,
        }
    }
}

impl ConvNet {
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
        let t = timestep_embedding(ctx, &inp.noise, ch, 10_000.0);
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

fn register(p: &mut Plugin) {
    p.architecture(
        "convnet",
        "Small residual conv net with noise (and class) embedding",
        CONVNET_PARAMS,
        ConvNet::from_params,
    );
}

export_plugin!(register);
