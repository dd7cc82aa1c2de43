//! The closed-form empirical optimum denoiser (DiffMemorize `training/optim.py`):
//!
//! D(x; σ) = Σᵢ softmaxᵢ(−‖x − yᵢ‖² / (2σ²)) · yᵢ
//!
//! over every training image yᵢ. Unconditional (class labels are ignored), parameter-free, and
//! it returns D directly: the host passes the raw noisy image and σ itself.
//!
//! The sum runs over the training set in chunks with a streaming log-sum-exp (running maximum,
//! normaliser and weighted sum per query), so memory is `O(batch · chunk)` beyond the training
//! set itself, and the result is stable from σ → 0 (the nearest training image) to σ → ∞ (the
//! training-set mean).

use memlab_plugin_api::prelude::*;

/// Parameters of `optimal`.
pub const OPTIMAL_PARAMS: &[Param] = &[param(
    "chunk",
    "int",
    "1024",
    "training images per chunk of the streaming softmax (bounds memory, not the result)",
)];

/// σ is floored at this value, so σ = 0 gives the nearest training image instead of NaN
/// (1/(2σ²) stays finite in f32).
const SIGMA_FLOOR: f64 = 1e-12;

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct RawParams {
    chunk: usize,
}

/// The empirical optimum denoiser.
#[derive(Debug, Clone, Copy)]
pub struct Optimal {
    chunk: usize,
}

impl Optimal {
    /// Builds it from its parameter table.
    pub fn from_params(params: &Params, _seed: u64) -> PResult<Optimal> {
        let p: RawParams = params.parse()?;
        if p.chunk == 0 {
            return Err("chunk must be at least 1".into());
        }
        Ok(Optimal { chunk: p.chunk })
    }
}

/// Running state of the streaming softmax for a batch of queries.
struct Stream<'a> {
    /// Largest logit so far `[N, 1]`.
    max: Tensor<'a>,
    /// Σ exp(logit − max) `[N, 1]`.
    norm: Tensor<'a>,
    /// Σ exp(logit − max) · y `[N, D]`.
    acc: Tensor<'a>,
}

impl Architecture for Optimal {
    fn info(&self) -> ArchInfo {
        ArchInfo {
            needs_training_set: true,
            outputs_denoised: true,
            parameter_free: true,
            learned_variance: false,
            ignores_labels: true,
        }
    }

    fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
        let train = ctx
            .training_set()
            .ok_or("the host provided no training set (the optimum declares needs_training_set)")?;
        let [n, c, h, w] = inp.x.dims::<4>();
        let tshape = train.shape();
        if tshape.len() != 4 || tshape[1..] != [c, h, w] {
            return Err(format!(
                "training set has shape {tshape:?} but the input is [{n}, {c}, {h}, {w}]: \
                 images must have the same C×H×W"
            ));
        }
        let m = tshape[0];
        if m == 0 {
            return Err("the training set is empty".into());
        }
        if inp.noise.shape() != [n] {
            return Err(format!(
                "σ must have shape [{n}], got {:?}",
                inp.noise.shape()
            ));
        }
        let d = c * h * w;
        let x = inp.x.reshape_to(&[n, d]);
        let ys = train.reshape_to(&[m, d]);
        // −1/(2σ²) per query, [N, 1].
        let coef = inp
            .noise
            .reshape_to(&[n, 1])
            .max_scalar(SIGMA_FLOOR)
            .square()
            .recip()
            * -0.5;
        let xx = x.square().sum_dim(1, true);

        let mut state: Option<Stream<'a>> = None;
        let mut start = 0;
        while start < m {
            let end = (start + self.chunk).min(m);
            let y = ys.slice(0, start, end);
            let yy = y.square().sum_dim(1, false).reshape_to(&[1, end - start]);
            // ‖x − y‖² = ‖x‖² − 2x·y + ‖y‖², clamped at 0 against rounding.
            let dist = (&xx + &yy - x.matmul(&y.transpose(0, 1)) * 2.0).max_scalar(0.0);
            let logits = dist * &coef;
            let chunk_max = logits.max_dim(1, true);
            state = Some(match state {
                None => {
                    let p = (&logits - &chunk_max).exp();
                    Stream {
                        norm: p.sum_dim(1, true),
                        acc: p.matmul(&y),
                        max: chunk_max,
                    }
                }
                Some(s) => {
                    let new_max = s.max.maximum(&chunk_max);
                    let rescale = (&s.max - &new_max).exp();
                    let p = (&logits - &new_max).exp();
                    Stream {
                        norm: s.norm * &rescale + p.sum_dim(1, true),
                        acc: s.acc * &rescale + p.matmul(&y),
                        max: new_max,
                    }
                }
            });
            start = end;
        }
        let s = state.expect("at least one chunk");
        Ok((s.acc / s.norm).reshape_to(&[n, c, h, w]))
    }
}

fn register(p: &mut Plugin) {
    p.architecture(
        "optimal",
        "Closed-form empirical optimum denoiser over the training set (DiffMemorize)",
        OPTIMAL_PARAMS,
        Optimal::from_params,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_a_parameter_free_denoiser_that_needs_the_training_set() {
        let o = Optimal::from_params(
            &Params::with_defaults("", super::OPTIMAL_PARAMS).unwrap(),
            0,
        )
        .unwrap();
        assert_eq!(o.chunk, 1024);
        let i = o.info();
        assert!(i.needs_training_set && i.outputs_denoised && i.parameter_free && i.ignores_labels);
        assert!(!i.learned_variance);
    }

    #[test]
    fn refuses_bad_parameters() {
        let e = Optimal::from_params(
            &Params::with_defaults("chunk = 0", super::OPTIMAL_PARAMS).unwrap(),
            0,
        )
        .unwrap_err();
        assert!(e.contains("chunk"), "{e}");
        let e = Optimal::from_params(
            &Params::with_defaults("chunks = 3", super::OPTIMAL_PARAMS).unwrap(),
            0,
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn without_a_training_set_forward_fails_clearly() {
        // The shape-only mock provides no training set.
        let o = Optimal::from_params(
            &Params::with_defaults("", super::OPTIMAL_PARAMS).unwrap(),
            0,
        )
        .unwrap();
        let e = memlab_plugin_api::testing::inspect(&o, [2, 3, 8, 8], 0).unwrap_err();
        assert!(e.contains("no training set"), "{e}");
    }
}
