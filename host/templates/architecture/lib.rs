//! `{{name}}`: a memlab architecture plugin (scaffolded by `memlab new architecture`).
//!
//! A denoiser network F written against the host's tensor API: every operation runs in the
//! host's backend (CPU or CUDA, with autodiff when training), and parameters are created by
//! name on first use, so `forward` is the whole model definition. The host wraps F in the
//! schedule's preconditioning, D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise), and owns the
//! parameters, their initialisation (from the run's seed and each parameter's name), the
//! optimiser, the EMA and the snapshots.

use memlab_plugin_api::prelude::*;

/// Parameter documentation, shown by `memlab plugins --params`, and the one place defaults
/// are written (TOML text): the host fills them in before `from_params` sees the table.
const PARAMS: &[Param] = &[param("channels", "int", "32", "hidden channels")];

params! {
    /// The model's parameters: the config's `[architecture] params` table. `params!` derives
    /// serde's `Deserialize` and refuses unknown keys (a typo is an error naming the valid ones).
    #[derive(Debug)]
    struct Model {
        /// Hidden channels.
        channels: usize,
    }
}

impl Model {
    /// Parses and checks the parameters. Errors are plain messages; the host adds the config
    /// file, the key and the component's name.
    fn from_params(params: &Params, _seed: u64) -> PResult<Model> {
        let m: Model = params.parse()?;
        if m.channels == 0 {
            return Err("channels must be at least 1".into());
        }
        Ok(m)
    }
}

impl Architecture for Model {
    /// What the host may rely on (`ArchInfo`). This network embeds the labels of a conditional
    /// model (below), so it does not declare `ignores_labels`, and it is a trained network F that
    /// the host preconditions, so the other declarations keep their defaults too. A closed-form
    /// denoiser would set `outputs_denoised`, `parameter_free` or `needs_training_set`; one that
    /// never reads `inp.labels` sets `ignores_labels`, and the host then refuses class conditioning.
    fn info(&self) -> ArchInfo {
        ArchInfo {
            ignores_labels: false,
            ..ArchInfo::default()
        }
    }

    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        let [n, c, _, _] = inp.x.dims::<4>();
        let ch = self.channels;
        // The noise level ([n]) as sinusoidal features, projected to one bias per channel.
        let t = timestep_embedding(ctx, &inp.noise, ch);
        let mut emb = Linear::new(ch, ch).forward(&ctx.scope("emb"), &t);
        // A conditional model (the conditioning plugin says how many classes) adds a learned
        // embedding of each sample's label.
        if let (Some(labels), true) = (&inp.labels, inp.classes > 0) {
            let table = ctx.param(
                "label_emb",
                &[inp.classes as usize, ch],
                Init::normal(0.0, 1.0),
            );
            emb = emb + table.embedding(labels);
        }
        // Parameter names follow the scopes: `conv_in.weight`, `conv_in.bias`, ...
        let h = Conv2d::new(c, ch, 3)
            .same()
            .forward(&ctx.scope("conv_in"), &inp.x);
        let h = (h + emb.reshape_to(&[n, ch, 1, 1])).silu();
        let h = Conv2d::new(ch, ch, 3)
            .same()
            .forward(&ctx.scope("conv_mid"), &h)
            .silu();
        // Zero-initialised output: the untrained model predicts D = c_skip·x.
        Ok(Conv2d::new(ch, c, 3)
            .same()
            .zero_init()
            .forward(&ctx.scope("conv_out"), &h))
    }
}

fn register(p: &mut Plugin) {
    p.architecture(
        "{{name}}",
        "Three 3x3 convolutions with a noise (and class) embedding",
        PARAMS,
        Model::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::testing::inspect;

    fn model(toml: &str) -> PResult<Model> {
        Model::from_params(&Params::with_defaults(toml, PARAMS)?, 0)
    }

    /// The shape-only host runs `forward` without tensor data: output shape, every parameter
    /// and the total count, in microseconds.
    #[test]
    fn parameter_count_and_output_shape() {
        let net = model("channels = 8").unwrap();
        let s = inspect(&net, [2, 3, 16, 16], 0).unwrap();
        assert_eq!(s.output, vec![2, 3, 16, 16]);
        let expected = (8 * 8 + 8) // emb
            + (8 * 3 * 9 + 8) // conv_in
            + (8 * 8 * 9 + 8) // conv_mid
            + (3 * 8 * 9 + 3); // conv_out
        assert_eq!(s.total, expected);
        assert_eq!(s.param("conv_in.weight"), Some(&[8, 3, 3, 3][..]));
        // Conditional on 10 classes: one 8-wide embedding per class more.
        let cond = inspect(&net, [2, 3, 16, 16], 10).unwrap();
        assert_eq!(cond.total, expected + 10 * 8);
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(model("").unwrap().channels, 32);
        assert!(model("channels = 0").unwrap_err().contains("at least 1"));
        let typo = model("chanels = 8").unwrap_err();
        assert!(typo.contains("unknown field `chanels`"), "{typo}");
    }
}
