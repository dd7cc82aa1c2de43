//! GroupNorm with a per-channel affine, forward and backward, one pass per (image, group).
//!
//! For group `g` of image `n` with elements `x_i` (its `C/G` channels × all pixels):
//! `μ = mean x`, `r = 1/√(var x + ε)` (biased variance, as PyTorch), `x̂ = (x − μ)·r`,
//! `y = γ_c·x̂ + β_c`. Backward with `ĝ = dy·γ_c`:
//! `dx = r·(ĝ − mean ĝ − x̂·mean(ĝ·x̂))`, `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy`.
//! Statistics are recomputed in the backward pass (one cheap pass) instead of stored.

use super::act::{dot, sum};
use super::cpu::wide;
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
    let glen = sh.group_len();
    assert_eq!(x.len(), sh.n * sh.groups * glen);
    // SAFETY: `forward_group` writes every element of its group (cpg channels of s values).
    unsafe {
        par_fill(sh.n * sh.groups, glen, 8, 0, |_, idx, yg| {
            wide(|| {
                forward_group(
                    sh,
                    idx,
                    &x[idx * glen..(idx + 1) * glen],
                    gamma,
                    beta,
                    eps,
                    yg,
                )
            })
        })
    }
}

/// One (image, group) of [`forward`]: group `idx` of the flattened `[n, groups]`.
#[inline(always)]
fn forward_group(
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
            y.write(x * a + b);
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
    let glen = sh.group_len();
    let cpg = sh.c / sh.groups;
    let s = sh.s;
    let mut dx = vec![0.0f32; x.len()];
    // Per (image, channel) sums of dy·x̂ and dy, reduced over images in order afterwards.
    let mut per = vec![0.0f32; sh.n * sh.c * 2];
    {
        let per_ptr = SendPtr(per.as_mut_ptr());
        par_items(&mut dx, glen, 8, 0, |_, idx, dxg| {
            wide(|| {
                let (n, g) = (idx / sh.groups, idx % sh.groups);
                let xg = &x[idx * glen..(idx + 1) * glen];
                let dyg = &dy[idx * glen..(idx + 1) * glen];
                let (mean, r) = stats(xg, eps);
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
            })
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
