//! `memlab bench`: measurements that belong in `BENCHMARKS.md`, never in timed tests.

use std::hint::black_box;
use std::time::{Duration, Instant};

use abi_stable::std_types::RNone;
use anyhow::Result;
use memlab_plugin_api::ffi::{BinaryOp, ForwardArgs};
use memlab_plugin_api::{Ctx, SplitMix64};
use serde::Serialize;

use crate::engine::graph::{Graph, Mode};
use crate::engine::params::ParamStore;
use crate::engine::{self, cpu};
use crate::plugins::Registry;

/// Results of `memlab bench dispatch`.
#[derive(Debug, Serialize)]
pub struct DispatchReport {
    /// ns per plugin→host call that does no tensor work (`dim`).
    pub vtable_call_ns: f64,
    /// ns per element-wise add of two 1-element tensors through the host API.
    pub api_add_ns: f64,
    /// ns per the same add done directly on burn tensors.
    pub burn_add_ns: f64,
    /// `api_add_ns - burn_add_ns`: what the ABI + bookkeeping add per op.
    pub overhead_per_op_ns: f64,
    /// Architecture measured.
    pub arch: String,
    /// Tensor ops per training step (forward + loss).
    pub ops_per_step: u64,
    /// Median forward+backward time of one training step, ms.
    pub step_ms: f64,
    /// `ops_per_step × overhead_per_op / step`, percent.
    pub overhead_percent: f64,
}

fn time_per_iter(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters.min(1000) / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters
}

/// Measures the per-op cost of the plugin boundary and relates it to one training step of
/// architecture `arch` (with `params`) on a `batch`×3×`res`×`res` input.
pub fn dispatch(
    reg: &Registry,
    arch: &str,
    params: &str,
    batch: usize,
    res: usize,
    steps: usize,
) -> Result<DispatchReport> {
    let device = cpu();
    let mut store = ParamStore::new(0);
    let graph = Graph::new(&device, Mode::Eval, &mut store, 0);
    let a = graph.insert_data(vec![1.0], &[1])?;
    let b = graph.insert_data(vec![2.0], &[1])?;
    let ops = graph.ops();
    let n = 200_000;
    let vt = time_per_iter(n, || {
        black_box(ops.dim(black_box(a), 0));
    });
    let api = time_per_iter(n / 4, || {
        let c = ops.binary(BinaryOp::Add, a, b);
        ops.release(black_box(c));
    });
    let (sa, sb) = (graph.slot(a)?, graph.slot(b)?);
    let burn = time_per_iter(n / 4, || {
        let x = burn::tensor::Tensor::<1>::from_dispatch(sa.t.clone());
        let y = burn::tensor::Tensor::<1>::from_dispatch(sb.t.clone());
        black_box((x + y).into_dispatch());
    });
    drop(ops);
    drop(graph);

    let arch_h = reg.architecture(arch, params, 0)?;
    let mut g = SplitMix64(1);
    let x: Vec<f32> = (0..batch * 3 * res * res)
        .map(|_| g.normal() as f32)
        .collect();
    let noise: Vec<f32> = (0..batch).map(|_| g.normal() as f32).collect();
    let mut store = ParamStore::new(0);
    let mut times = Vec::new();
    let mut ops_per_step = 0;
    for _ in 0..steps + 1 {
        let t = Instant::now();
        let graph = Graph::new(&device, Mode::Train, &mut store, 0);
        let xi = graph.insert_data(x.clone(), &[batch, 3, res, res])?;
        let ni = graph.insert_data(noise.clone(), &[batch])?;
        let out = engine::forward(
            &arch_h,
            &graph,
            ForwardArgs {
                x: xi,
                noise: ni,
                labels: RNone,
                classes: 0,
            },
        )?;
        let loss_id = {
            let ops = graph.ops();
            let ctx = Ctx::new(&ops);
            let o = ctx.wrap(graph.insert(out));
            (o - &ctx.wrap(ops.retain(xi))).square().mean().into_id()
        };
        let loss = graph.finish(loss_id)?;
        let grads = engine::gradients(&graph, &loss)?;
        black_box(grads);
        ops_per_step = graph.ops_run();
        times.push(t.elapsed());
    }
    times.remove(0); // warm-up (parameter creation)
    times.sort();
    let step = times[times.len() / 2];
    let overhead = api.as_secs_f64() - burn.as_secs_f64();
    Ok(DispatchReport {
        vtable_call_ns: vt.as_secs_f64() * 1e9,
        api_add_ns: api.as_secs_f64() * 1e9,
        burn_add_ns: burn.as_secs_f64() * 1e9,
        overhead_per_op_ns: overhead * 1e9,
        arch: format!("{arch} ({})", params.replace('\n', ", ")),
        ops_per_step,
        step_ms: step.as_secs_f64() * 1e3,
        overhead_percent: 100.0 * ops_per_step as f64 * overhead.max(0.0) / step.as_secs_f64(),
    })
}

/// Results of `memlab bench train`.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    /// Architecture and parameters.
    pub arch: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Training batch size.
    pub batch: usize,
    /// Median seconds per training step (forward, backward, Adam update).
    pub train_step_s: f64,
    /// All timed steps, seconds.
    pub train_steps_s: Vec<f64>,
    /// Forward batch size.
    pub forward_batch: usize,
    /// Median seconds per inference forward pass.
    pub forward_s: f64,
    /// CPU threads available to the engine.
    pub threads: usize,
}

/// Times training steps and inference forward passes of `arch` under the EDM formulation on
/// `res`×`res`×3 images.
#[allow(clippy::too_many_arguments)]
pub fn train(
    reg: &Registry,
    arch: &str,
    params: &str,
    batch: usize,
    res: usize,
    steps: usize,
    forward_batch: usize,
    forward_reps: usize,
) -> Result<TrainReport> {
    use crate::model::Model;
    use crate::optim::{AdamConfig, AdamState, adam_step};
    let device = cpu();
    let arch_h = reg.architecture(arch, params, 0)?;
    let info = arch_h.info()?;
    let model = Model {
        arch: arch_h,
        schedule: reg.schedule("edm", "", 0)?,
        info,
        device: device.clone(),
        classes: 0,
        image_shape: [3, res, res],
        training_set: None,
        training_len: 0,
    };
    let mut store = ParamStore::new(0);
    crate::train::materialize(&model, &mut store)?;
    let mut adam = AdamState::default();
    let cfg = AdamConfig {
        lr: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
        coupled: false,
    };
    let mut g = SplitMix64(1);
    let per = 3 * res * res;
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        let y: Vec<f32> = (0..batch * per)
            .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        let n: Vec<f32> = (0..batch * per).map(|_| g.normal() as f32).collect();
        let sigma: Vec<f64> = (0..batch)
            .map(|_| (-1.2 + 1.2 * g.normal()).exp())
            .collect();
        let t = Instant::now();
        let (_, grads) = model.loss_and_grads(&mut store, y, n, &sigma, None, i as u64)?;
        adam_step(&mut store, &mut adam, &grads, &cfg, 1e-4)?;
        black_box(&store);
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut fwd = Vec::new();
    for _ in 0..forward_reps {
        let x: Vec<f32> = (0..forward_batch * per)
            .map(|_| g.normal() as f32)
            .collect();
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(x, [forward_batch, 3, res, res]),
            &device,
        );
        let t = Instant::now();
        let out = model.denoise(&mut store, x, &vec![1.0; forward_batch], None)?;
        black_box(out.into_data());
        fwd.push(t.elapsed().as_secs_f64());
    }
    fwd.sort_by(f64::total_cmp);
    Ok(TrainReport {
        arch: format!("{arch} ({})", params.replace('\n', ", ")),
        parameters: store.num_scalars(),
        batch,
        train_step_s: sorted[sorted.len() / 2],
        train_steps_s: times,
        forward_batch,
        forward_s: fwd.get(fwd.len() / 2).copied().unwrap_or(f64::NAN),
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}
