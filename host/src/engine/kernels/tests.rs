//! Every kernel against burn's own op on the same data: values, gradients of every input, and
//! run-to-run bit identity; plus central finite differences of the hand-written backward passes.

use burn::backend::ops::ConvOptions;
use burn::tensor::activation;
use burn::tensor::module as fmod;
use burn::tensor::{Device, Tensor, TensorData};

use super::{avg_pool2d, conv2d, group_norm, group_norm_generic, group_norm_silu, silu, softmax};
use memlab_plugin_api::SplitMix64;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<D> {
    let mut g = SplitMix64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (g.normal() * scale) as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), &dev())
}

fn vals<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Max |a − b| relative to max |b| (plus a small absolute floor).
fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err} vs scale {scale} (tolerance {tol})"
    );
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
}

struct ConvCase {
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    dil: usize,
    bias: bool,
}

fn check_conv(c: &ConvCase) {
    let opts = ConvOptions::new([c.stride; 2], [c.pad; 2], [c.dil; 2], 1);
    let x = rand(c.x, 1, 1.0).require_grad();
    let w = rand(c.w, 2, 0.3).require_grad();
    let b = c.bias.then(|| rand([c.w[0]], 3, 1.0).require_grad());
    let ours = conv2d(x.clone(), w.clone(), b.clone(), opts.clone());
    let theirs = fmod::conv2d(x.clone(), w.clone(), b.clone(), opts.clone());
    assert_eq!(ours.dims(), theirs.dims());
    let what = format!(
        "conv x{:?} w{:?} s{} p{} d{}",
        c.x, c.w, c.stride, c.pad, c.dil
    );
    close(
        &format!("{what} forward"),
        &vals(&ours),
        &vals(&theirs),
        1e-5,
    );
    let r = rand(ours.dims(), 4, 1.0);
    let g1 = (ours * r.clone()).sum().backward();
    let g2 = (theirs * r).sum().backward();
    for (name, t) in [("dx", &x), ("dw", &w)] {
        let (a, b) = (t.grad(&g1).unwrap(), t.grad(&g2).unwrap());
        close(&format!("{what} {name}"), &vals(&a), &vals(&b), 1e-5);
    }
    if let Some(bias) = &b {
        let (a, bb) = (bias.grad(&g1).unwrap(), bias.grad(&g2).unwrap());
        close(&format!("{what} db"), &vals(&a), &vals(&bb), 1e-5);
    }
}

#[test]
fn conv_matches_burn_values_and_gradients() {
    let cases = [
        // the UNet's 3×3 "same" conv, with and without bias
        ConvCase {
            x: [3, 5, 9, 7],
            w: [6, 5, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: true,
        },
        ConvCase {
            x: [2, 4, 8, 8],
            w: [3, 4, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: false,
        },
        // 1×1 (skip connections, attention projections)
        ConvCase {
            x: [3, 6, 5, 5],
            w: [4, 6, 1, 1],
            stride: 1,
            pad: 0,
            dil: 1,
            bias: true,
        },
        // stride-2 downsampling, odd size
        ConvCase {
            x: [2, 3, 9, 9],
            w: [5, 3, 3, 3],
            stride: 2,
            pad: 1,
            dil: 1,
            bias: true,
        },
        // no padding, dilation 2, a batch larger than a task chunk
        ConvCase {
            x: [9, 2, 11, 10],
            w: [3, 2, 3, 3],
            stride: 1,
            pad: 0,
            dil: 2,
            bias: true,
        },
        // even kernel, stride 2, large padding
        ConvCase {
            x: [1, 2, 6, 6],
            w: [2, 2, 4, 4],
            stride: 2,
            pad: 3,
            dil: 1,
            bias: false,
        },
        // "same" convolutions on images smaller than the kernel, and a 5×5 one
        ConvCase {
            x: [2, 3, 1, 1],
            w: [2, 3, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: true,
        },
        ConvCase {
            x: [2, 2, 2, 3],
            w: [3, 2, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: false,
        },
        ConvCase {
            x: [3, 2, 6, 4],
            w: [2, 2, 5, 5],
            stride: 1,
            pad: 2,
            dil: 1,
            bias: true,
        },
        // the direct kernel's edges: 13 output channels (blocks of 5, 4, 4), rows of 17 and
        // 28 pixels (partial 8-wide segments), an odd number of segments per image
        ConvCase {
            x: [3, 7, 5, 17],
            w: [13, 7, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: true,
        },
        ConvCase {
            x: [2, 9, 3, 28],
            w: [32, 9, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: false,
        },
        // 1×1 over several bands of pixels (48, 48 and a partial 3) and 3×3 rows wide enough
        // to sum the 40 input channels in two chunks, with partial segments
        ConvCase {
            x: [2, 70, 9, 11],
            w: [13, 70, 1, 1],
            stride: 1,
            pad: 0,
            dil: 1,
            bias: true,
        },
        ConvCase {
            x: [2, 40, 3, 33],
            w: [7, 40, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: true,
        },
        // Winograd F(2×2, 3×3): forward only (the input gradient has 16 input channels),
        // then forward and input gradient, with partial tiles (odd height, width 17)
        ConvCase {
            x: [2, 40, 5, 17],
            w: [16, 40, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: true,
        },
        ConvCase {
            x: [2, 32, 4, 16],
            w: [32, 32, 3, 3],
            stride: 1,
            pad: 1,
            dil: 1,
            bias: false,
        },
        // strided 1×1 (no im2col shortcut)
        ConvCase {
            x: [2, 3, 7, 7],
            w: [2, 3, 1, 1],
            stride: 2,
            pad: 0,
            dil: 1,
            bias: true,
        },
    ];
    for c in &cases {
        check_conv(c);
    }
}

#[test]
fn group_norm_matches_burn_values_and_gradients() {
    for (shape, groups) in [([4, 8, 5, 3], 4), ([2, 6, 4, 4], 6), ([3, 4, 7, 1], 1)] {
        let x = rand(shape, 5, 2.0).add_scalar(0.7).require_grad();
        let gamma = rand([shape[1]], 6, 1.0).require_grad();
        let beta = rand([shape[1]], 7, 1.0).require_grad();
        let ours = group_norm(x.clone(), gamma.clone(), beta.clone(), groups, 1e-5);
        let theirs = group_norm_generic(x.clone(), gamma.clone(), beta.clone(), groups, 1e-5);
        let what = format!("group_norm {shape:?}/{groups}");
        close(
            &format!("{what} forward"),
            &vals(&ours),
            &vals(&theirs),
            1e-5,
        );
        let r = rand(shape, 8, 1.0);
        let g1 = (ours * r.clone()).sum().backward();
        let g2 = (theirs * r).sum().backward();
        close(
            &format!("{what} dx"),
            &vals(&x.grad(&g1).unwrap()),
            &vals(&x.grad(&g2).unwrap()),
            1e-4,
        );
        close(
            &format!("{what} dgamma"),
            &vals(&gamma.grad(&g1).unwrap()),
            &vals(&gamma.grad(&g2).unwrap()),
            1e-5,
        );
        close(
            &format!("{what} dbeta"),
            &vals(&beta.grad(&g1).unwrap()),
            &vals(&beta.grad(&g2).unwrap()),
            1e-5,
        );
    }
}

#[test]
fn fused_group_norm_silu_is_the_two_kernels_bit_for_bit() {
    for (shape, groups) in [([4, 8, 5, 3], 4), ([3, 4, 7, 1], 1)] {
        let x = rand(shape, 15, 2.0).add_scalar(0.7).require_grad();
        let gamma = rand([shape[1]], 16, 1.0).require_grad();
        let beta = rand([shape[1]], 17, 1.0).require_grad();
        let fused = group_norm_silu(x.clone(), gamma.clone(), beta.clone(), groups, 1e-5);
        let two = silu(group_norm(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            groups,
            1e-5,
        ));
        let burn = activation::silu(group_norm_generic(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            groups,
            1e-5,
        ));
        assert_eq!(vals(&fused), vals(&two), "forward {shape:?}");
        close("fused vs burn", &vals(&fused), &vals(&burn), 1e-5);
        let r = rand(shape, 18, 1.0);
        let g1 = (fused * r.clone()).sum().backward();
        let g2 = (two * r).sum().backward();
        let dx = (x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
        assert_eq!(vals(&dx.0), vals(&dx.1), "dx {shape:?}");
        for (what, t) in [("dgamma", &gamma), ("dbeta", &beta)] {
            let (a, b) = (t.grad(&g1).unwrap(), t.grad(&g2).unwrap());
            assert_eq!(vals(&a), vals(&b), "{what} {shape:?}");
        }
    }
}

#[test]
fn silu_matches_burn_values_and_gradients() {
    // Larger than one parallel block, values spanning the saturated tails.
    let x = rand([3, 7, 41, 29], 9, 6.0).require_grad();
    let ours = silu(x.clone());
    let theirs = activation::silu(x.clone());
    close("silu forward", &vals(&ours), &vals(&theirs), 1e-6);
    let r = rand([3, 7, 41, 29], 10, 1.0);
    let g1 = (ours * r.clone()).sum().backward();
    let g2 = (theirs * r).sum().backward();
    close(
        "silu dx",
        &vals(&x.grad(&g1).unwrap()),
        &vals(&x.grad(&g2).unwrap()),
        1e-6,
    );
}

#[test]
fn avg_pool_matches_burn_values_and_gradients() {
    use burn::tensor::ops::AvgPoolOptions;
    // 2×2 and 3×3 windows that tile the image (the kernel), and an overlapping 3×3 with
    // stride 2 (burn's op behind the same function).
    for (shape, k, stride) in [
        ([3, 5, 8, 6], 2, 2),
        ([2, 3, 9, 6], 3, 3),
        ([2, 2, 7, 7], 3, 2),
    ] {
        let x = rand(shape, 31, 1.0).require_grad();
        let ours = avg_pool2d(x.clone(), k, stride);
        let opts = AvgPoolOptions::new([k, k]).with_stride([stride, stride]);
        let theirs = fmod::avg_pool2d(x.clone(), opts);
        close("avg_pool forward", &vals(&ours), &vals(&theirs), 1e-6);
        let r = rand(ours.dims(), 32, 1.0);
        let g1 = (ours * r.clone()).sum().backward();
        let g2 = (theirs * r).sum().backward();
        close(
            "avg_pool dx",
            &vals(&x.grad(&g1).unwrap()),
            &vals(&x.grad(&g2).unwrap()),
            1e-6,
        );
    }
}

#[test]
fn softmax_matches_burn_values_and_gradients() {
    // Attention-shaped weights (rows of 64) and an odd row length; values up to ±24 so that
    // the maximum's subtraction matters.
    for shape in [[2, 4, 64, 64], [3, 5, 7, 13]] {
        let x = rand(shape, 11, 8.0).require_grad();
        let ours = softmax(x.clone(), 3);
        let theirs = activation::softmax(x.clone(), 3);
        close("softmax forward", &vals(&ours), &vals(&theirs), 1e-6);
        let r = rand(shape, 12, 1.0);
        let g1 = (ours.clone() * r.clone()).sum().backward();
        let g2 = (theirs * r).sum().backward();
        close(
            "softmax dx",
            &vals(&x.grad(&g1).unwrap()),
            &vals(&x.grad(&g2).unwrap()),
            1e-5,
        );
        // Same input, same bits.
        assert_eq!(vals(&ours), vals(&softmax(x.clone(), 3)));
    }
    // Not the last dimension: burn's op, same values.
    let x = rand([2, 3, 5, 4], 13, 2.0);
    close(
        "softmax dim 1",
        &vals(&softmax(x.clone(), 1)),
        &vals(&activation::softmax(x, 1)),
        0.0,
    );
}

/// Central differences of `f` at `x` along a few coordinates, against autodiff.
fn finite_difference(f: impl Fn(Tensor<4>) -> Tensor<4>, x: Tensor<4>, r: &Tensor<4>) {
    let x = x.require_grad();
    let g = (f(x.clone()) * r.clone()).sum().backward();
    let analytic = vals(&x.grad(&g).unwrap());
    let base = vals(&x);
    let shape = x.dims();
    let h = 1e-2f32;
    for i in (0..base.len()).step_by(base.len() / 7 + 1) {
        let eval = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            let t = Tensor::<4>::from_data(TensorData::new(v, shape), &Device::flex());
            let y = f(t) * Tensor::from_data(r.clone().into_data(), &Device::flex());
            y.sum().into_scalar::<f32>() as f64
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * h as f64);
        let a = analytic[i] as f64;
        assert!(
            (numeric - a).abs() <= 2e-2 * (1.0 + a.abs()),
            "coordinate {i}: finite difference {numeric} vs backward {a}"
        );
    }
}

#[test]
fn backward_passes_agree_with_finite_differences() {
    let w = rand([3, 2, 3, 3], 11, 0.5);
    let b = rand([3], 12, 1.0);
    let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let x = rand([2, 2, 5, 5], 13, 1.0);
    let r = rand([2, 3, 5, 5], 14, 1.0);
    finite_difference(
        |x| {
            let d = x.device();
            conv2d(
                x,
                Tensor::from_data(w.clone().into_data(), &d),
                Some(Tensor::from_data(b.clone().into_data(), &d)),
                opts.clone(),
            )
        },
        x,
        &r,
    );
    let gamma = rand([4], 15, 1.0);
    let beta = rand([4], 16, 1.0);
    let x = rand([2, 4, 3, 3], 17, 1.0);
    let r = rand([2, 4, 3, 3], 18, 1.0);
    finite_difference(
        |x| {
            let d = x.device();
            silu(group_norm(
                x,
                Tensor::from_data(gamma.clone().into_data(), &d),
                Tensor::from_data(beta.clone().into_data(), &d),
                2,
                1e-5,
            ))
        },
        x,
        &r,
    );
}

#[test]
fn kernels_are_bitwise_deterministic() {
    // Every kernel on one graph: a 3×3 convolution with 32 → 20 channels (Winograd forward
    // on AVX2 CPUs, the direct kernel for its gradients), a 1×1 one (the pixel-band tile), GroupNorm + SiLU
    // fused and apart, softmax.
    let run = || {
        let x = rand([3, 32, 9, 16], 19, 1.0).require_grad();
        let w = rand([20, 32, 3, 3], 20, 0.3).require_grad();
        let w1 = rand([5, 20, 1, 1], 23, 0.3);
        let gamma = rand([5], 21, 1.0);
        let beta = rand([5], 22, 1.0);
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let one = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let h = conv2d(conv2d(x.clone(), w.clone(), None, opts), w1, None, one);
        let a = silu(group_norm(h.clone(), gamma.clone(), beta.clone(), 5, 1e-5));
        let b = group_norm_silu(h, gamma, beta, 5, 1e-5);
        let y = softmax(a + b, 3);
        let g = (y.clone() * rand([3, 5, 9, 16], 24, 1.0)).sum().backward();
        (
            vals(&y),
            vals(&x.grad(&g).unwrap()),
            vals(&w.grad(&g).unwrap()),
        )
    };
    let (a, b) = (run(), run());
    let bits = |v: &Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.0), bits(&b.0));
    assert_eq!(bits(&a.1), bits(&b.1));
    assert_eq!(bits(&a.2), bits(&b.2));
}

#[test]
fn kernels_work_without_autodiff() {
    let d = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32; 2 * 2 * 4 * 4], [2, 2, 4, 4]),
        &d,
    );
    let w = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32; 3 * 2 * 3 * 3], [3, 2, 3, 3]),
        &d,
    );
    let y = conv2d(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
    let v = vals(&y);
    // an interior pixel sees 2 channels × 9 taps × 0.5; a corner 2 × 4 × 0.5
    assert_eq!(v[5], 9.0);
    assert_eq!(v[0], 4.0);
}

#[test]
fn fused_adam_matches_the_update_rule_in_f64() {
    use super::optim::{AdamScalars, adam};
    let mut g = SplitMix64(23);
    let n = 70_001; // more than two parallel blocks, not a multiple of one
    let mut p: Vec<f32> = (0..n).map(|_| g.normal() as f32).collect();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut pr, mut mr, mut vr): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        p.iter().map(|&x| x as f64).collect(),
        vec![0.0; n],
        vec![0.0; n],
    );
    for (t, coupled) in [(1, false), (2, true), (3, false)] {
        let grad: Vec<f32> = (0..n).map(|_| g.normal() as f32).collect();
        let s = AdamScalars {
            lr: 1e-3,
            b1: 0.9,
            b2: 0.999,
            bc1: 1.0 - 0.9f64.powi(t),
            bc2: 1.0 - 0.999f64.powi(t),
            eps: 1e-8,
            wd: 0.01,
            coupled,
        };
        adam(&mut p, &grad, &mut m, &mut v, &s);
        for i in 0..n {
            let gi = grad[i] as f64 + if coupled { s.wd * pr[i] } else { 0.0 };
            mr[i] = s.b1 * mr[i] + (1.0 - s.b1) * gi;
            vr[i] = s.b2 * vr[i] + (1.0 - s.b2) * gi * gi;
            let shrink = if coupled { 1.0 } else { 1.0 - s.lr * s.wd };
            pr[i] = pr[i] * shrink - s.lr * (mr[i] / s.bc1) / ((vr[i] / s.bc2).sqrt() + s.eps);
        }
    }
    let err = p
        .iter()
        .zip(&pr)
        .fold(0.0f64, |e, (&a, &b)| e.max((a as f64 - b).abs()));
    assert!(err < 1e-6, "max |p − p_ref| = {err}");
}
