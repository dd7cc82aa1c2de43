//! SiLU forward and backward, and the vectorisable `exp` and sums they and the norms use.
//!
//! burn-flex computes `silu(x)` as `x · sigmoid(x)` with a scalar `exp` per element on one core
//! and records three autodiff nodes; here it is one pass forward and one backward, split into
//! fixed 16 Ki-element blocks across threads.

use super::cpu::wide_fn;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel block of element-wise kernels.
const BLOCK: usize = 16 * 1024;

/// `eˣ` to ~2 ulp for |x| < 87 (0 below −87, e⁸⁸ above 88), written so that loops over it auto-vectorise: round-to-nearest
/// by the 1.5·2²³ trick, Cody–Waite reduction, a degree-6 polynomial, and 2ⁿ assembled from the
/// float's bits (a float→int `as` cast here would block vectorisation).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let under = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on |r| ≤ ln2/2 (Taylor to r⁶, relative error < 2e-7).
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(k.wrapping_add(127) << 23);
    // Below −87 the result underflows (to a subnormal, flushed to 0 here) rather than
    // stopping at e⁻⁸⁷: a softmax over a row with −∞ entries gives them exactly 0.
    if under { 0.0 } else { p * scale }
}

/// `1 / (1 + e⁻ˣ)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sum with eight partial accumulators (vectorises; the order is fixed for a given length).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = xs.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for v in it.remainder() {
        s += v;
    }
    s
}

/// `Σ a·b` with eight partial accumulators.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `x · σ(x)`.
pub fn silu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(y, x)| silu_block(y, x));
    // SAFETY: the blocks cover all x.len() elements, each written once above.
    unsafe { y.set_len(x.len()) };
    y
}

wide_fn! {
    fn silu_block(y: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(x * sigmoid(x));
        }
    }
}

/// `dy · σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len());
    let mut dx = Vec::with_capacity(x.len());
    dx.spare_capacity_mut()
        .par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK).zip(dy.par_chunks(BLOCK)))
        .for_each(|(dx, (x, dy))| silu_backward_block(dx, x, dy));
    // SAFETY: the blocks cover all x.len() elements, each written once above.
    unsafe { dx.set_len(x.len()) };
    dx
}

wide_fn! {
    fn silu_backward_block(dx: &mut [MaybeUninit<f32>], x: &[f32], dy: &[f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let s = sigmoid(x);
            dx.write(g * s * (1.0 + x * (1.0 - s)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_float_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn sums_match_f64() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.7).sin()).collect();
        let w: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.3).cos()).collect();
        let s: f64 = v.iter().map(|&x| x as f64).sum();
        let d: f64 = v.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((sum(&v) as f64 - s).abs() < 1e-4);
        assert!((dot(&v, &w) as f64 - d).abs() < 1e-4);
    }
}
