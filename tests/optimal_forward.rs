//! The `optimal` closed-form denoiser and the `ddpmpp` network through the host engine and the
//! ABI: the optimum against a double-precision reference and its limits (σ → 0: nearest
//! training image, σ → ∞: training-set mean), chunking invariance, and a real DDPM++ forward
//! and backward pass.

use abi_stable::std_types::{RNone, RSome};
use memlab::engine::executor::{Executor, Mode};
use memlab::engine::params::{ParamStore, read_f32};
use memlab::engine::{self, cpu};
use memlab::plugins::{ArchitectureHandle, Registry};
use memlab_plugin_api::ffi::{ForwardArgs, HostOps};
use memlab_plugin_api::{Ctx, SplitMix64};

fn registry() -> Registry {
    Registry::load(&[]).expect("registry")
}

fn optimal(params: &str) -> ArchitectureHandle {
    registry()
        .architecture("optimal", params, 0)
        .expect("the optimal plugin is built (cargo build --workspace)")
}

/// Image shape used by the optimum tests.
const C: usize = 3;
const H: usize = 4;
const W: usize = 4;
const D: usize = C * H * W;

fn uniform_images(n: usize, seed: u64) -> Vec<f32> {
    let mut g = SplitMix64(seed);
    (0..n * D)
        .map(|_| (2.0 * g.next_f64() - 1.0) as f32)
        .collect()
}

/// Runs the denoiser on queries `x` (`[N, C, H, W]`) with per-query `sigma` against `train`.
fn denoise(arch: &ArchitectureHandle, train: &[f32], x: &[f32], sigma: &[f32]) -> Vec<f32> {
    try_denoise(arch, train, [C, H, W], x, [C, H, W], sigma).unwrap()
}

fn try_denoise(
    arch: &ArchitectureHandle,
    train: &[f32],
    train_chw: [usize; 3],
    x: &[f32],
    x_chw: [usize; 3],
    sigma: &[f32],
) -> anyhow::Result<Vec<f32>> {
    let m = train.len() / train_chw.iter().product::<usize>();
    let n = sigma.len();
    let mut store = ParamStore::new(0);
    let mut graph = Executor::new(&cpu(), Mode::Eval, &mut store, 0);
    let [tc, th, tw] = train_chw;
    let tid = graph.insert_data(train.to_vec(), &[m, tc, th, tw])?;
    let slot = graph.slot(tid)?;
    graph.release(tid);
    graph.set_training_set(slot);
    let [xc, xh, xw] = x_chw;
    let xi = graph.insert_data(x.to_vec(), &[n, xc, xh, xw])?;
    let ni = graph.insert_data(sigma.to_vec(), &[n])?;
    let args = ForwardArgs {
        x: xi,
        noise: ni,
        labels: RNone,
        classes: 0,
    };
    let out = engine::forward(arch, &graph, args);
    graph.release(xi);
    graph.release(ni);
    let out = out?;
    assert_eq!(
        graph.live_tensors(),
        1,
        "only the training set is still live: the plugin released its tensors"
    );
    assert_eq!(out.shape, vec![n, xc, xh, xw]);
    read_f32(&out.t, 4)
}

/// D(x; σ) in double precision, straight from the definition (softmax over all images).
fn reference(train: &[f32], x: &[f32], sigma: &[f32]) -> Vec<f32> {
    let m = train.len() / D;
    let mut out = Vec::with_capacity(x.len());
    for (q, &s) in x.chunks(D).zip(sigma) {
        let logits: Vec<f64> = train
            .chunks(D)
            .map(|y| {
                let d2: f64 = q
                    .iter()
                    .zip(y)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum();
                -d2 / (2.0 * (s as f64).powi(2))
            })
            .collect();
        let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let wts: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
        let z: f64 = wts.iter().sum();
        for j in 0..D {
            let v: f64 = (0..m).map(|i| wts[i] * train[i * D + j] as f64).sum();
            out.push((v / z) as f32);
        }
    }
    out
}

fn nearest(train: &[f32], q: &[f32]) -> usize {
    let d2 = |y: &[f32]| -> f64 {
        q.iter()
            .zip(y)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum()
    };
    (0..train.len() / D)
        .min_by(|&a, &b| d2(&train[a * D..(a + 1) * D]).total_cmp(&d2(&train[b * D..(b + 1) * D])))
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn optimal_declares_a_parameter_free_denoiser_needing_the_training_set() {
    let info = optimal("").info().unwrap();
    assert!(info.needs_training_set && info.outputs_denoised && info.parameter_free);
    assert!(info.ignores_labels, "the optimum is unconditional");
    assert!(!info.learned_variance);
}

#[test]
fn label_declarations_round_trip_through_the_abi() {
    // Every shipped network embeds the labels of a conditional model; only the optimum ignores
    // them. Read through the loaded libraries, as the host reads them.
    let reg = registry();
    for name in ["convnet", "mlp", "unet", "ddpmpp"] {
        let info = reg.architecture(name, "", 0).unwrap().info().unwrap();
        assert!(!info.ignores_labels, "{name} uses labels");
        assert!(!info.parameter_free && !info.outputs_denoised, "{name}");
    }
    assert!(optimal("").info().unwrap().ignores_labels);
}

#[test]
fn tiny_sigma_gives_the_nearest_training_image() {
    let arch = optimal("");
    let train = uniform_images(10, 1);
    let mut g = SplitMix64(2);
    // Queries: training images 3 and 7 under σ = 0.002 noise, and two random points (their
    // nearest image found by brute force).
    let mut x = Vec::new();
    for k in [3usize, 7] {
        x.extend(
            train[k * D..(k + 1) * D]
                .iter()
                .map(|v| v + 0.002 * g.normal() as f32),
        );
    }
    x.extend(uniform_images(2, 3));
    for sigma in [0.002f32, 0.0] {
        let out = denoise(&arch, &train, &x, &[sigma; 4]);
        for (q, o) in x.chunks(D).zip(out.chunks(D)) {
            let k = nearest(&train, q);
            let y = &train[k * D..(k + 1) * D];
            assert!(o.iter().all(|v| v.is_finite()), "σ = {sigma}: {o:?}");
            assert!(max_abs_diff(o, y) < 1e-6, "σ = {sigma}: not image {k}");
        }
    }
}

#[test]
fn huge_sigma_gives_the_training_set_mean() {
    let arch = optimal("");
    let train = uniform_images(10, 4);
    let mean: Vec<f32> = (0..D)
        .map(|j| (0..10).map(|i| train[i * D + j]).sum::<f32>() / 10.0)
        .collect();
    let x = uniform_images(2, 5);
    let out = denoise(&arch, &train, &x, &[1e4, 1e4]);
    for o in out.chunks(D) {
        assert!(max_abs_diff(o, &mean) < 1e-5);
    }
    // EDM's σ_max = 80: already within 1% of the mean here, and exact against the definition.
    let out = denoise(&arch, &train, &x, &[80.0, 80.0]);
    assert!(max_abs_diff(&out, &reference(&train, &x, &[80.0, 80.0])) < 1e-5);
    for o in out.chunks(D) {
        assert!(max_abs_diff(o, &mean) < 1e-2);
    }
}

#[test]
fn chunked_equals_unchunked_and_matches_the_definition() {
    let train = uniform_images(10, 6);
    // One query per σ, from the nearest-neighbour to the mean regime (per-sample σ).
    let sigma = [0.002f32, 0.3, 2.0, 5.0, 80.0];
    let mut g = SplitMix64(7);
    let x: Vec<f32> = (0..sigma.len())
        .flat_map(|i| {
            let k = (3 * i) % 10;
            train[k * D..(k + 1) * D]
                .iter()
                .map(|v| v + sigma[i].min(1.0) * g.normal() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let whole = denoise(&optimal("chunk = 1024"), &train, &x, &sigma);
    let exact = denoise(&optimal("chunk = 10"), &train, &x, &sigma);
    // 10 images in chunks of 3: the last chunk holds one image.
    let by3 = denoise(&optimal("chunk = 3"), &train, &x, &sigma);
    let by1 = denoise(&optimal("chunk = 1"), &train, &x, &sigma);
    assert!(max_abs_diff(&whole, &exact) < 1e-6);
    assert!(
        max_abs_diff(&by3, &whole) < 1e-5,
        "{}",
        max_abs_diff(&by3, &whole)
    );
    assert!(
        max_abs_diff(&by1, &whole) < 1e-5,
        "{}",
        max_abs_diff(&by1, &whole)
    );
    let r = reference(&train, &x, &sigma);
    assert!(
        max_abs_diff(&whole, &r) < 1e-4,
        "{}",
        max_abs_diff(&whole, &r)
    );
    // The intermediate σ genuinely mix several images (the test is not all limits).
    let mid = &whole[2 * D..3 * D];
    let k = nearest(&train, &x[2 * D..3 * D]);
    assert!(max_abs_diff(mid, &train[k * D..(k + 1) * D]) > 1e-3);
}

#[test]
fn a_query_midway_between_two_images_weighs_them_equally() {
    // Two images plus three far away ones (offset by 4 in every pixel).
    let mut train = uniform_images(5, 8);
    for v in &mut train[2 * D..] {
        *v += 4.0;
    }
    let (y1, y2) = (&train[..D], &train[D..2 * D]);
    let mid: Vec<f32> = y1.iter().zip(y2).map(|(a, b)| 0.5 * (a + b)).collect();
    for chunk in ["chunk = 1", "chunk = 2", ""] {
        let out = denoise(&optimal(chunk), &train, &mid, &[0.5]);
        // out = w·y1 + (1 − w)·y2 (the far images get no weight): recover w.
        let diff: Vec<f32> = y1.iter().zip(y2).map(|(a, b)| a - b).collect();
        let num: f32 = out
            .iter()
            .zip(y2)
            .zip(&diff)
            .map(|((o, b), d)| (o - b) * d)
            .sum();
        let den: f32 = diff.iter().map(|d| d * d).sum();
        let w = num / den;
        assert!((w - 0.5).abs() < 1e-5, "{chunk}: weight {w}");
        assert!(max_abs_diff(&out, &mid) < 1e-5, "{chunk}");
    }
}

#[test]
fn optimal_reports_mismatched_shapes() {
    let train = uniform_images(4, 9);
    let x = vec![0.0; 2 * C * 8 * 8];
    let e = try_denoise(&optimal(""), &train, [C, H, W], &x, [C, 8, 8], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("optimal") && e.contains("same C×H×W"), "{e}");
}

/// A small DDPM++ (Fourier embedding, 3 classes, one dropped skip) runs forward and backward
/// on the real engine: the output has the input's shape, is finite, is the same in training
/// and evaluation mode without dropout, and every parameter gets a gradient.
#[test]
fn ddpmpp_runs_through_the_host() {
    let reg = registry();
    let arch = reg
        .architecture(
            "ddpmpp",
            "channels = 8\nchannel_mult = [1, 2]\nnum_blocks = 1\nattn_resolutions = [4]\n\
             dropout = 0.0\nembedding = \"fourier\"\nskips = [1, 0, 1, 1]",
            5,
        )
        .unwrap();
    let device = cpu();
    let mut store = ParamStore::new(1);
    let mut g = SplitMix64(11);
    let x: Vec<f32> = (0..2 * 3 * 8 * 8).map(|_| g.normal() as f32).collect();
    let run = |store: &mut ParamStore, mode: Mode| {
        let graph = Executor::new(&device, mode, store, 0);
        let xi = graph.insert_data(x.clone(), &[2, 3, 8, 8]).unwrap();
        let ni = graph.insert_data(vec![-0.3, 0.8], &[2]).unwrap();
        let li = graph.insert_int(vec![2, 0], &[2]).unwrap();
        let args = ForwardArgs {
            x: xi,
            noise: ni,
            labels: RSome(li),
            classes: 3,
        };
        let out = engine::forward(&arch, &graph, args).unwrap();
        for id in [xi, ni, li] {
            graph.release(id);
        }
        assert_eq!(graph.live_tensors(), 0);
        let grads = if mode == Mode::Train {
            let loss_id = {
                let ops = graph.ops();
                let ctx = Ctx::new(&ops);
                let o = ctx.wrap(graph.insert(out.clone()));
                o.square().mean().into_id()
            };
            let loss = graph.finish(loss_id).unwrap();
            engine::gradients(&graph, &loss).unwrap().len()
        } else {
            0
        };
        (out.shape.clone(), read_f32(&out.t, 4).unwrap(), grads)
    };
    let (shape, out_t, n_grads) = run(&mut store, Mode::Train);
    assert_eq!(shape, vec![2, 3, 8, 8]);
    assert!(out_t.iter().all(|v| v.is_finite()));
    // The output conv is initialised at 1e-5 scale: small but not zero.
    assert!(out_t.iter().any(|v| *v != 0.0));
    assert!(out_t.iter().all(|v| v.abs() < 1e-2));
    // Every parameter, not the Fourier frequencies (the buffer `map_noise.freqs`).
    assert!(store.is_buffer("map_noise.freqs"));
    assert_eq!(n_grads, store.len() - 1, "gradients reach every parameter");
    // Same count as the reference layout with skip 1 (the second 8×8 one) removed.
    let scalars: usize = store
        .iter()
        .filter(|(n, _)| !store.is_buffer(n))
        .map(|(n, _)| store.read(n).unwrap().len())
        .sum();
    assert_eq!(scalars, 47_651);
    let (_, out_e, _) = run(&mut store, Mode::Eval);
    assert!(max_abs_diff(&out_t, &out_e) < 1e-6);
}
