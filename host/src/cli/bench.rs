//! `memlab bench`: measurements that belong in `BENCHMARKS.md`, never in timed tests.

use std::hint::black_box;
use std::time::{Duration, Instant};

use abi_stable::std_types::RNone;
use anyhow::Result;
use memlab_plugin_api::ffi::{BinaryOp, ForwardArgs};
use memlab_plugin_api::{Ctx, SplitMix64};
use serde::Serialize;

use crate::engine::executor::{Executor, Mode};
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
    let graph = Executor::new(&device, Mode::Eval, &mut store, 0);
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
        let graph = Executor::new(&device, Mode::Train, &mut store, 0);
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
    /// Every timed forward pass at `forward_batch`, seconds.
    pub forward_all_s: Vec<f64>,
    /// Median seconds per inference forward pass at the training batch size.
    pub forward_small_s: f64,
    /// Images in the sampling measurement (0: not measured).
    pub sample_batch: usize,
    /// Heun steps (EDM σ schedule, ρ = 7, σ ∈ [0.002, 80]): 2·steps − 1 evaluations.
    pub sample_steps: usize,
    /// Seconds for the whole sampling run.
    pub sample_s: f64,
    /// Sampling throughput, images per second.
    pub sample_images_per_s: f64,
    /// CPU threads available to the engine.
    pub threads: usize,
}

/// What `memlab bench train` measures (its command-line arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainBench {
    /// Architecture component.
    #[arg(long, default_value = "unet")]
    pub arch: String,
    /// Its parameters (TOML).
    #[arg(
        long,
        default_value = "channels = 32\nchannel_mult = [1, 2, 2]\nres_blocks = 2\nattention_resolutions = [8]\nheads = 4\ndropout = 0.0\nscale_shift = false\nlearn_sigma = false"
    )]
    pub params: String,
    /// Training batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 32)]
    pub res: usize,
    /// Timed training steps (the median is reported).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    pub forward_batch: usize,
    /// Timed forward passes, at `forward_batch` and again at `batch`.
    #[arg(long, default_value_t = 8)]
    pub forward_reps: usize,
    /// Images sampled with Heun for the throughput measurement (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub sample_batch: usize,
    /// Heun steps of that measurement (2·steps − 1 network evaluations).
    #[arg(long, default_value_t = 18)]
    pub sample_steps: usize,
}

/// Times training steps and inference forward passes of `spec.arch` under the EDM formulation on
/// `res`×`res`×3 images.
pub fn train(reg: &Registry, spec: &TrainBench) -> Result<TrainReport> {
    use crate::diffusion::model::Model;
    use crate::diffusion::optim::{AdamConfig, AdamState, adam_step};
    let TrainBench {
        arch,
        params,
        batch,
        res,
        steps,
        forward_batch,
        forward_reps,
        sample_batch,
        sample_steps,
    } = spec.clone();
    let device = cpu();
    let arch_h = reg.architecture(&arch, &params, 0)?;
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
    crate::diffusion::train::materialize(&model, &mut store)?;
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
        let batch = crate::diffusion::model::TrainBatch {
            y,
            noise: n,
            sigma: &sigma,
            labels: None,
            dropout_seed: i as u64,
        };
        let (_, grads) = model.loss_and_grads(&mut store, batch)?;
        adam_step(&mut store, &mut adam, &grads, &cfg, 1e-4)?;
        black_box(&store);
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut forward = |fb: usize, reps: usize| -> Result<Vec<f64>> {
        let mut fwd = Vec::new();
        for _ in 0..reps {
            let x: Vec<f32> = (0..fb * per).map(|_| g.normal() as f32).collect();
            let x = burn::tensor::Tensor::<4>::from_data(
                burn::tensor::TensorData::new(x, [fb, 3, res, res]),
                &device,
            );
            let t = Instant::now();
            let out = model.denoise(&mut store, x, &vec![1.0; fb], None)?;
            black_box(out.into_data());
            fwd.push(t.elapsed().as_secs_f64());
        }
        Ok(fwd)
    };
    // MEMLAB_OP_PROFILE=1: a per-op table of each forward measurement, on stderr.
    let profiled = |what: &str, passes: usize| {
        let rows = crate::engine::profile::take();
        if crate::engine::profile::enabled() && what != "training" {
            eprintln!(
                "op profile, {what} (per pass):\n{}",
                crate::engine::profile::table(&rows, passes)
            );
        }
    };
    profiled("training", steps + 1);
    let fwd = forward(forward_batch, forward_reps)?;
    profiled(&format!("forward at batch {forward_batch}"), forward_reps);
    let mut small = forward(batch, forward_reps)?;
    profiled(&format!("forward at batch {batch}"), forward_reps);
    let forward_all_s = fwd.clone();
    let mut fwd = fwd;
    fwd.sort_by(f64::total_cmp);
    small.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let mut sample_s = f64::NAN;
    if sample_batch > 0 && sample_steps > 0 {
        // EDM's σ steps (Karras et al. 2022, eq. 5) and Heun sampler, as `edm_sampler`.
        let (smin, smax, rho) = (0.002f64, 80.0f64, 7.0f64);
        let n = sample_steps;
        let mut sigmas: Vec<f64> = (0..n)
            .map(|i| {
                let f = if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                (smax.powf(1.0 / rho) + f * (smin.powf(1.0 / rho) - smax.powf(1.0 / rho))).powf(rho)
            })
            .collect();
        sigmas.push(0.0);
        let x: Vec<f32> = (0..sample_batch * per)
            .map(|_| (g.normal() * smax) as f32)
            .collect();
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(x, [sample_batch, 3, res, res]),
            &device,
        );
        let t = Instant::now();
        let out = crate::diffusion::sampler::sample(
            crate::config::choices::SamplerSettings::plain(crate::config::choices::Sampler::Heun),
            &sigmas,
            x,
            &mut |x, s| model.denoise(&mut store, x, &vec![s; sample_batch], None),
            &mut |like| like.zeros_like(),
            &mut |_| {},
        )?;
        black_box(out.into_data());
        sample_s = t.elapsed().as_secs_f64();
    }
    Ok(TrainReport {
        arch: format!("{arch} ({})", params.replace('\n', ", ")),
        parameters: store.num_scalars(),
        batch,
        train_step_s: sorted[sorted.len() / 2],
        train_steps_s: times,
        forward_batch,
        forward_s: median(&fwd),
        forward_all_s,
        forward_small_s: median(&small),
        sample_batch,
        sample_steps,
        sample_s,
        sample_images_per_s: sample_batch as f64 / sample_s,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

/// One row of `memlab bench kernels`: an op at one shape, memlab's kernel against burn's op.
#[derive(Debug, Serialize)]
pub struct KernelRow {
    /// Op and shape.
    pub op: String,
    /// Median ms of memlab's kernel, forward + backward.
    pub memlab_ms: f64,
    /// Median ms of burn's generic op, forward + backward.
    pub burn_ms: f64,
    /// Median ms of memlab's kernel, forward only (no autodiff), and its rate in GFLOP/s
    /// (convolutions only).
    pub forward: Option<(f64, f64)>,
}

/// Times forward + backward of each hand-written kernel against burn's own op on the
/// benchmark UNet's shapes (`reps` repetitions, medians).
pub fn kernels(reps: usize) -> Result<Vec<KernelRow>> {
    use crate::engine::kernels as k;
    use burn::tensor::module as fmod;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Tensor, TensorData, activation};
    let dev = Device::flex().autodiff();
    let plain = Device::flex();
    let mut g = SplitMix64(3);
    let mut rand = |shape: &[usize]| -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|_| g.normal() as f32)
            .collect()
    };
    fn t4(v: Vec<f32>, s: [usize; 4], d: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, s), d)
    }
    fn t1(v: Vec<f32>, n: usize, d: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v, [n]), d)
    }
    let median = |f: &mut dyn FnMut()| {
        f();
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let mut rows = Vec::new();
    for (n, c, hw, kk, stride) in [
        (32, 32, 32, 3, 1),
        (32, 64, 16, 3, 1),
        (32, 64, 8, 3, 1),
        (32, 64, 16, 1, 1),
        (32, 64, 16, 3, 2),
    ] {
        let xs = [n, c, hw, hw];
        let (x, w, b) = (rand(&xs), rand(&[c, c, kk, kk]), rand(&[c]));
        let pad = kk / 2;
        let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let run = |fast: bool| {
            let xt = t4(x.clone(), xs, &dev).require_grad();
            let wt = t4(w.clone(), [c, c, kk, kk], &dev).require_grad();
            let bt = t1(b.clone(), c, &dev).require_grad();
            let y = if fast {
                k::conv2d(xt.clone(), wt.clone(), Some(bt.clone()), opts.clone())
            } else {
                fmod::conv2d(xt.clone(), wt.clone(), Some(bt.clone()), opts.clone())
            };
            let grads = y.sum().backward();
            black_box((xt.grad(&grads), wt.grad(&grads), bt.grad(&grads)));
        };
        let (xp, wp, bp) = (
            t4(x.clone(), xs, &plain),
            t4(w.clone(), [c, c, kk, kk], &plain),
            t1(b.clone(), c, &plain),
        );
        let fwd_ms = median(&mut || {
            let y = k::conv2d(xp.clone(), wp.clone(), Some(bp.clone()), opts.clone());
            black_box(y.into_data());
        });
        let out = hw / stride;
        let flop = 2.0 * (n * c * c * kk * kk * out * out) as f64;
        rows.push(KernelRow {
            op: format!("conv {kk}x{kk}/s{stride} {c}->{c} ch, {n}x{hw}x{hw}"),
            memlab_ms: median(&mut || run(true)),
            burn_ms: median(&mut || run(false)),
            forward: Some((fwd_ms, flop / fwd_ms / 1e6)),
        });
    }
    let xs = [32, 64, 16, 16];
    let x = rand(&xs);
    let (ga, be) = (rand(&[64]), rand(&[64]));
    let run = |fast: bool| {
        let xt = t4(x.clone(), xs, &dev).require_grad();
        let gt = t1(ga.clone(), 64, &dev).require_grad();
        let bt = t1(be.clone(), 64, &dev).require_grad();
        let y = if fast {
            // What the executor runs for GroupNorm → SiLU (`group_norm_silu`, one pass).
            k::group_norm_silu(xt.clone(), gt.clone(), bt.clone(), 32, 1e-5)
        } else {
            activation::silu(k::group_norm_generic(
                xt.clone(),
                gt.clone(),
                bt.clone(),
                32,
                1e-5,
            ))
        };
        let grads = y.sum().backward();
        black_box((xt.grad(&grads), gt.grad(&grads), bt.grad(&grads)));
    };
    rows.push(KernelRow {
        op: "GroupNorm(32)+SiLU, 32x64x16x16".into(),
        memlab_ms: median(&mut || run(true)),
        burn_ms: median(&mut || run(false)),
        forward: None,
    });
    // The attention weights of the benchmark UNet's 8×8 level (4 heads).
    let ss = [32, 4, 64, 64];
    let sx = rand(&ss);
    let run = |fast: bool| {
        let xt = Tensor::<4>::from_data(TensorData::new(sx.clone(), ss), &dev).require_grad();
        let y = if fast {
            k::softmax(xt.clone(), 3)
        } else {
            activation::softmax(xt.clone(), 3)
        };
        let grads = (y.clone() * y).sum().backward();
        black_box(xt.grad(&grads));
    };
    rows.push(KernelRow {
        op: "softmax (last dim), 32x4x64x64".into(),
        memlab_ms: median(&mut || run(true)),
        burn_ms: median(&mut || run(false)),
        forward: None,
    });
    Ok(rows)
}
