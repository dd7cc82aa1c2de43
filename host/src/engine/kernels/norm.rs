//! GroupNorm with a per-channel affine, forward and backward, one pass per (image, group).
//!
//! For group `g` of image `n` with elements `x_i` (its `C/G` channels × all pixels):
//! `μ = mean x`, `r = 1/√(var x + ε)` (biased variance, as PyTorch), `x̂ = (x − μ)·r`,
//! `y = γ_c·x̂ + β_c`. Backward with `ĝ = dy·γ_c`:
//! `dx = r·(ĝ − mean ĝ − x̂·mean(ĝ·x̂))`, `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy`.
//! Statistics are recomputed in the backward pass (one cheap pass) instead of stored.

use super::act::{dot, sigmoid, sum};
use super::cpu::wide_fn;
use super::gemm::{par_fill, par_items};
use std::mem::MaybeUninit;

/// Geometry: `n` images, `c` channels, `s` elements per channel, `groups` groups.
#[derive(Debug, Clone, Copy)]
pub struct NormShape {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Elements per channel (product of the spatial dims).
    pub s: usize,
    /// Groups (divides `c`).
    pub groups: usize,
}

impl NormShape {
    fn group_len(&self) -> usize {
        self.c / self.groups * self.s
    }
}

#[inline(always)]
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let len = x.len() as f32;
    let mean = sum(x) / len;
    // Two passes over data in cache: the centred sum of squares does not cancel.
    let mut acc = [0.0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut ss = acc.iter().sum::<f32>();
    for v in it.remainder() {
        ss += (v - mean) * (v - mean);
    }
    let var = ss / len;
    (mean, (1.0 / (var as f64 + eps).sqrt()) as f32)
}

/// `y = γ·normalise(x) + β` over `[n, c, s]` data.
pub fn forward(sh: &NormShape, x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    forward_with::<false>(sh, x, gamma, beta, eps)
}

/// `silu(γ·normalise(x) + β)` in the same single pass (GroupNorm followed by SiLU, as in every
/// residual block of the UNets): one write of the output instead of a GroupNorm output that
/// SiLU reads back.
pub fn forward_silu(sh: &NormShape, x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    forward_with::<true>(sh, x, gamma, beta, eps)
}

fn forward_with<const SILU: bool>(
    sh: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> Vec<f32> {
    let glen = sh.group_len();
    assert_eq!(x.len(), sh.n * sh.groups * glen);
    // SAFETY: `forward_group` writes every element of its group (cpg channels of s values).
    unsafe {
        par_fill(sh.n * sh.groups, glen, 8, 0, |_, idx, yg| {
            forward_group::<SILU>(
                sh,
                idx,
                &x[idx * glen..(idx + 1) * glen],
                gamma,
                beta,
                eps,
                yg,
            )
        })
    }
}

wide_fn! {
    /// One (image, group) of [`forward`] (with SiLU applied when `SILU`): group `idx` of the
    /// flattened `[n, groups]`.
    fn forward_group<const SILU: bool>(
        sh: &NormShape,
        idx: usize,
        xg: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
        yg: &mut [MaybeUninit<f32>],
    ) {
        let cpg = sh.c / sh.groups;
        let g = idx % sh.groups;
        let (mean, r) = stats(xg, eps);
        for ch in 0..cpg {
            let c = g * cpg + ch;
            let (a, b) = (gamma[c] * r, beta[c] - gamma[c] * r * mean);
            let (xs, ys) = (
                &xg[ch * sh.s..(ch + 1) * sh.s],
                &mut yg[ch * sh.s..(ch + 1) * sh.s],
            );
            for (y, &x) in ys.iter_mut().zip(xs) {
                let z = x * a + b;
                y.write(if SILU { z * sigmoid(z) } else { z });
            }
        }
    }
}

/// Gradients `(dx, dγ, dβ)` of [`forward`] for output gradient `dy`.
pub fn backward(
    sh: &NormShape,
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    backward_with(sh, x, gamma, None, dy, eps)
}

/// Gradients `(dx, dγ, dβ)` of [`forward_silu`] for output gradient `dy`: the GroupNorm
/// output `z` is recomputed per group (with `β`), `dy·silu'(z)` formed in a per-thread
/// scratch buffer, and the GroupNorm backward pass run on that.
pub fn backward_silu(
    sh: &NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dy: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    backward_with(sh, x, gamma, Some(beta), dy, eps)
}

fn backward_with(
    sh: &NormShape,
    x: &[f32],
    gamma: &[f32],
    silu_beta: Option<&[f32]>,
    dy: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let glen = sh.group_len();
    let mut dx = vec![0.0f32; x.len()];
    // Per (image, channel) sums of dy·x̂ and dy, reduced over images in order afterwards.
    let mut per = vec![0.0f32; sh.n * sh.c * 2];
    let scratch = if silu_beta.is_some() { glen } else { 0 };
    {
        let per_ptr = SendPtr(per.as_mut_ptr());
        par_items(&mut dx, glen, 8, scratch, |buf, idx, dxg| {
            backward_group(sh, idx, x, gamma, silu_beta, dy, eps, buf, dxg, per_ptr)
        });
    }
    let (mut dgamma, mut dbeta) = (vec![0.0f32; sh.c], vec![0.0f32; sh.c]);
    for img in per.chunks(2 * sh.c) {
        for c in 0..sh.c {
            dgamma[c] += img[2 * c];
            dbeta[c] += img[2 * c + 1];
        }
    }
    (dx, dgamma, dbeta)
}

wide_fn! {
    /// One (image, group) of [`backward_with`]: writes the group's `dx` and its channels' sums
    /// of `dy·x̂` and `dy` at `per`.
    #[allow(clippy::too_many_arguments)]
    fn backward_group(
        sh: &NormShape,
        idx: usize,
        x: &[f32],
        gamma: &[f32],
        silu_beta: Option<&[f32]>,
        dy: &[f32],
        eps: f64,
        buf: &mut [f32],
        dxg: &mut [f32],
        per_ptr: SendPtr,
    ) {
        let glen = sh.group_len();
        let cpg = sh.c / sh.groups;
        let s = sh.s;
        let (n, g) = (idx / sh.groups, idx % sh.groups);
        let xg = &x[idx * glen..(idx + 1) * glen];
        let (mean, r) = stats(xg, eps);
        let dyg = match silu_beta {
            None => &dy[idx * glen..(idx + 1) * glen],
            Some(beta) => {
                // dz = dy·σ(z)·(1 + z·(1 − σ(z))) with z = γ·x̂ + β, as the forward.
                let dz = &mut buf[..glen];
                for ch in 0..cpg {
                    let c = g * cpg + ch;
                    let (a, b) = (gamma[c] * r, beta[c] - gamma[c] * r * mean);
                    let xs = &xg[ch * s..(ch + 1) * s];
                    let ds = &dy[idx * glen + ch * s..][..s];
                    for ((o, &xv), &d) in dz[ch * s..(ch + 1) * s].iter_mut().zip(xs).zip(ds) {
                        let z = xv * a + b;
                        let sg = sigmoid(z);
                        *o = d * sg * (1.0 + z * (1.0 - sg));
                    }
                }
                &*dz
            }
        };
        // Σ ĝ and Σ ĝ·x̂ over the group, from per-channel Σ dy and Σ dy·x.
        let (mut sg, mut sgx) = (0.0f32, 0.0f32);
        for ch in 0..cpg {
            let c = g * cpg + ch;
            let (xs, ds) = (&xg[ch * s..(ch + 1) * s], &dyg[ch * s..(ch + 1) * s]);
            let sdy = sum(ds);
            let sdyx = dot(ds, xs);
            let sdy_xhat = (sdyx - mean * sdy) * r;
            // SAFETY: each (n, c) pair belongs to exactly one group task.
            unsafe {
                *per_ptr.at(2 * (n * sh.c + c)) = sdy_xhat;
                *per_ptr.at(2 * (n * sh.c + c) + 1) = sdy;
            }
            sg += gamma[c] * sdy;
            sgx += gamma[c] * sdy_xhat;
        }
        let len = glen as f32;
        let (mg, mgx) = (sg / len, sgx / len);
        for ch in 0..cpg {
            let c = g * cpg + ch;
            let (xs, ds) = (&xg[ch * s..(ch + 1) * s], &dyg[ch * s..(ch + 1) * s]);
            let out = &mut dxg[ch * s..(ch + 1) * s];
            // dx = r·(γ·dy − mg − x̂·mgx) = A·dy + B·x + C
            let a = r * gamma[c];
            let b = -r * r * mgx;
            let k = r * (r * mgx * mean - mg);
            for ((o, &d), &xv) in out.iter_mut().zip(ds).zip(xs) {
                *o = a * d + b * xv + k;
            }
        }
    }
}

/// A raw pointer that rayon tasks may share when each writes disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes, see `backward`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// # Safety
    /// `i` must be in bounds and written by one task only.
    unsafe fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}
