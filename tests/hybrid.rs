//! improved-diffusion's hybrid objective and learned-variance sampling against the reference
//! code's own values: `tests/reference/hybrid.safetensors`, written by
//! `tests/reference/make_hybrid_fixtures.py` from `GaussianDiffusion.training_losses`
//! (`LossType.MSE` / `RESCALED_MSE`, `ModelVarType.LEARNED_RANGE`), `p_mean_variance` and
//! `p_sample` (full 1000-step chain and `SpacedDiffusion` respaced to 10 steps) on the
//! `unet_class_sigma` network of `tests/networks.rs` (same weights), for the `linear` and
//! `cosine` schedules.
//!
//! Tolerance: 1e-4, relative to max(1, |reference|). Both sides run the network in float32
//! (its outputs agree to ~2e-6, `tests/networks.rs`), and both compute the loss terms in
//! float32 from float64 schedule arrays; the VLB term divides squared mean errors by variances
//! down to β̃_1 ≈ 5e-5 (linear), which amplifies float32 rounding of the means — an absolute
//! 1e-4 on values up to ~10³ (cosine's last step) is not meaningful, a relative one is.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use memlab::engine::cpu;
use memlab::engine::params::ParamStore;
use memlab::model::Model;
use memlab::plugins::Registry;
use memlab::vlb::Chain;
use memlab_e2e::root;
use safetensors::{Dtype, SafeTensors};

const TOL: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    fn load() -> Fixture {
        let bytes = std::fs::read(root().join("tests/reference/hybrid.safetensors"))
            .expect("tests/reference/hybrid.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let data: Vec<f64> = match v.dtype() {
                    Dtype::F32 => v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                    Dtype::I64 => v
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                    d => panic!("{name}: {d:?}"),
                };
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        Fixture { tensors }
    }
    fn get(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
            .1
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).iter().map(|&v| v as f32).collect()
    }
    fn ints(&self, name: &str) -> Vec<usize> {
        self.get(name).iter().map(|&v| v as usize).collect()
    }
    fn labels(&self, name: &str) -> Vec<i64> {
        self.get(name).iter().map(|&v| v as i64).collect()
    }
    fn n(&self, name: &str) -> usize {
        self.tensors[name].0[0]
    }
}

/// The unet_class_sigma network (reference weights) under `schedule`, and its discrete chain.
fn model(schedule: &str) -> (Model, ParamStore, Chain) {
    let io = std::fs::read(root().join("tests/reference/networks/unet_class_sigma.io.safetensors"))
        .unwrap();
    let (_, meta) = SafeTensors::read_metadata(&io).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let reg = Registry::load(&[]).expect("registry");
    let arch = reg
        .architecture(&meta["architecture"], &meta["memlab_params"], 0)
        .expect("the unet plugin is built (cargo build --workspace)");
    let info = arch.info().unwrap();
    assert!(info.learned_variance);
    let schedule = reg.schedule(schedule, "", 0).unwrap();
    let sigmas = schedule.discrete_sigmas().unwrap().expect("a discrete schedule");
    let model = Model {
        arch,
        schedule,
        info,
        device: cpu(),
        classes: 5,
        image_shape: [3, 8, 8],
        training_set: None,
        training_len: 0,
    };
    let mut params = ParamStore::new(0);
    memlab::train::materialize(&model, &mut params).unwrap();
    let weights = root().join("tests/reference/networks/unet_class_sigma.weights.safetensors");
    memlab::weights::load_into(&mut params, &weights, &model.device).unwrap();
    (model, params, Chain::from_sigmas(&sigmas).unwrap())
}

/// Largest |a − b| / max(1, |b|), and a printable summary.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn check(what: &str, ours: &[f64], reference: &[f64]) -> f64 {
    let e = rel_err(ours, reference);
    println!("{what}: max relative error {e:.2e}");
    assert!(
        e <= TOL,
        "{what}: {e:.2e} > {TOL:e}\n ours      {ours:?}\n reference {reference:?}"
    );
    e
}

fn training_losses(schedule: &str) {
    let f = Fixture::load();
    let (model, mut params, chain) = model(schedule);
    let p = format!("{schedule}.train");
    let ts = f.ints(&format!("{p}.t"));
    let sigma: Vec<f64> = ts.iter().map(|&t| chain.sigmas[t]).collect();
    let labels = f.labels(&format!("{p}.labels"));
    let (mse, vb) = model
        .hybrid_terms(
            &mut params,
            &chain,
            f.f32(&format!("{p}.x_start")),
            f.f32(&format!("{p}.noise")),
            &sigma,
            Some(&labels),
        )
        .unwrap();
    check(&format!("{schedule} mse"), &mse, f.get(&format!("{p}.mse")));
    check(&format!("{schedule} vb"), &vb, f.get(&format!("{p}.vb")));
    let loss: Vec<f64> = mse.iter().zip(&vb).map(|(m, v)| m + v).collect();
    check(&format!("{schedule} loss"), &loss, f.get(&format!("{p}.loss")));
    // RESCALED_MSE: vb × T/1000, i.e. λ·T with λ = 0.001 (T = 1000 here).
    let scale = 0.001 * chain.len() as f64;
    let rescaled: Vec<f64> = mse.iter().zip(&vb).map(|(m, v)| m + scale * v).collect();
    check(
        &format!("{schedule} loss (RESCALED_MSE)"),
        &rescaled,
        f.get(&format!("{p}.loss_rescaled")),
    );
}

#[test]
fn training_losses_match_improved_diffusion_linear() {
    training_losses("linear");
}

#[test]
fn training_losses_match_improved_diffusion_cosine() {
    training_losses("cosine");
}
