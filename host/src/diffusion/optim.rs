//! Adam / AdamW over a [`ParamStore`], gradient clipping and EMA — on device tensors.

use anyhow::{Result, anyhow};
use burn::tensor::{DispatchTensor, Tensor};
use indexmap::IndexMap;

use crate::engine::params::ParamStore;
use crate::engine::rank::by_rank;

/// Adam(W) hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// Learning rate (after warm-up).
    pub lr: f64,
    /// β₁, β₂.
    pub betas: [f64; 2],
    /// ε.
    pub eps: f64,
    /// Weight decay; 0 is plain Adam.
    pub weight_decay: f64,
    /// `true`: L2 added to the gradient (`g + wd·p`, torch.optim.Adam's `weight_decay`, which
    /// DM uses); `false`: decoupled (AdamW, `p ← p − lr·wd·p`).
    pub coupled: bool,
}

/// Adam moments of every parameter, by name.
#[derive(Clone, Default)]
pub struct AdamState {
    /// Steps taken.
    pub t: u64,
    /// First moments.
    pub m: IndexMap<String, DispatchTensor>,
    /// Second moments.
    pub v: IndexMap<String, DispatchTensor>,
}

fn rank(t: &DispatchTensor) -> usize {
    crate::engine::rank_of(t)
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &IndexMap<String, DispatchTensor>) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.values() {
        let s = by_rank!(rank(g), D => {
            let t = Tensor::<D>::from_dispatch(g.clone());
            (t.clone() * t).sum().into_data().convert::<f64>().try_to_vec::<f64>()
        })?
        .map_err(|e| anyhow!("{e:?}"))?[0];
        sq += s;
    }
    Ok(sq.sqrt())
}

/// Scales every gradient by `s`.
pub fn scale_grads(grads: &mut IndexMap<String, DispatchTensor>, s: f64) -> Result<()> {
    for g in grads.values_mut() {
        *g = by_rank!(rank(g), D => Tensor::<D>::from_dispatch(g.clone()).mul_scalar(s).into_dispatch())?;
    }
    Ok(())
}

/// One Adam(W) step at learning rate `lr` (already warmed up) on every parameter that has a
/// gradient. Bias-corrected moments; weight decay decoupled (`p ← p − lr·wd·p`) or, with
/// `cfg.coupled`, added to the gradient as L2.
pub fn adam_step(
    params: &mut ParamStore,
    state: &mut AdamState,
    grads: &IndexMap<String, DispatchTensor>,
    cfg: &AdamConfig,
    lr: f64,
) -> Result<()> {
    state.t += 1;
    let t = state.t as i32;
    let [b1, b2] = cfg.betas;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        let Some(g) = grads.get(&name) else { continue };
        let p = params.get(&name).expect("listed").value.clone();
        let r = rank(&p);
        let (np, nm, nv) = by_rank!(r, D => {
            let g = Tensor::<D>::from_dispatch(g.clone());
            let p = Tensor::<D>::from_dispatch(p.clone());
            let m = match state.m.get(&name) {
                Some(m) => Tensor::<D>::from_dispatch(m.clone()),
                None => g.zeros_like(),
            };
            let v = match state.v.get(&name) {
                Some(v) => Tensor::<D>::from_dispatch(v.clone()),
                None => g.zeros_like(),
            };
            let scalars = crate::engine::kernels::optim::AdamScalars {
                lr,
                b1,
                b2,
                bc1,
                bc2,
                eps: cfg.eps,
                wd: cfg.weight_decay,
                coupled: cfg.coupled,
            };
            if let Some((p, m, v)) = crate::engine::kernels::adam(p.clone(), g.clone(), m.clone(), v.clone(), &scalars) {
                (p.into_dispatch(), m.into_dispatch(), v.into_dispatch())
            } else {
            let g = if cfg.coupled && cfg.weight_decay > 0.0 {
                g + p.clone().mul_scalar(cfg.weight_decay)
            } else {
                g
            };
            let m = m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            let v = v.mul_scalar(b2) + (g.clone() * g).mul_scalar(1.0 - b2);
            let update = m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt().add_scalar(cfg.eps));
            let mut p = p;
            if cfg.weight_decay > 0.0 && !cfg.coupled {
                p = p.clone() - p.mul_scalar(lr * cfg.weight_decay);
            }
            let p = p - update.mul_scalar(lr);
            (p.into_dispatch(), m.into_dispatch(), v.into_dispatch())
            }
        })?;
        params.set(&name, np)?;
        state.m.insert(name.clone(), nm);
        state.v.insert(name, nv);
    }
    Ok(())
}

/// `ema ← decay·ema + (1 − decay)·params` for every parameter (creating missing ones as copies).
/// Buffers are copied: they are not trained, and averaging a constant in float32 would let it
/// drift by rounding.
pub fn ema_update(ema: &mut ParamStore, params: &ParamStore, decay: f64) -> Result<()> {
    for (name, p) in params.iter() {
        if params.is_buffer(name) {
            ema.insert(name, p.clone());
            ema.mark_buffer(name);
            continue;
        }
        match ema.get(name) {
            None => ema.insert(name, p.clone()),
            Some(e) => {
                let v = by_rank!(p.shape.len(), D => {
                    let e = Tensor::<D>::from_dispatch(e.value.clone());
                    let q = Tensor::<D>::from_dispatch(p.value.clone());
                    (e.mul_scalar(decay) + q.mul_scalar(1.0 - decay)).into_dispatch()
                })?;
                ema.set(name, v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// One step from p = 1 with gradient 0.5, wd = 0.1, lr = 0.01: the bias-corrected update
    /// is g/|g| = 1 either way, so AdamW gives 1 − 0.01·0.1 − 0.01 = 0.989 and Adam with L2
    /// (gradient 0.5 + 0.1) gives 1 − 0.01 = 0.99.
    #[test]
    fn decoupled_and_l2_weight_decay() {
        let dev = Device::flex();
        for (coupled, want) in [(false, 0.989), (true, 0.99)] {
            let mut store = ParamStore::new(0);
            let one =
                crate::engine::rank::to_dispatch(TensorData::new(vec![1.0f32], [1]), &dev).unwrap();
            store.insert(
                "w",
                crate::engine::params::Param {
                    shape: vec![1],
                    value: one,
                },
            );
            let mut grads = IndexMap::new();
            grads.insert(
                "w".to_string(),
                crate::engine::rank::to_dispatch(TensorData::new(vec![0.5f32], [1]), &dev).unwrap(),
            );
            let cfg = AdamConfig {
                lr: 0.01,
                betas: [0.9, 0.999],
                eps: 1e-12,
                weight_decay: 0.1,
                coupled,
            };
            adam_step(&mut store, &mut AdamState::default(), &grads, &cfg, 0.01).unwrap();
            let v = Tensor::<1>::from_dispatch(store.get("w").unwrap().value.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()[0];
            assert!((v as f64 - want).abs() < 1e-6, "coupled = {coupled}: {v}");
        }
    }
}
