//! Softmax over the last dimension, forward and backward, one pass per row.
//!
//! burn-flex composes softmax of `max`, `sub`, a scalar `exp`, `sum` and `div` (five full
//! passes and four allocations, single-threaded) and records each for autodiff; in the UNets'
//! attention (`[N, heads, T, T]` weights) that was 4× PyTorch's fused op. Here each row is
//! `y = e^(x − max x) / Σ e^(x − max x)` with the vectorised [`exp`](super::act::exp), and the
//! backward pass is `dx = y·(dy − Σ dy·y)`. Sums run in fixed partial accumulators, so the
//! result does not depend on the thread count.

use super::act::{dot, exp, sum};
use super::cpu::wide_fn;
use super::gemm::par_fill;
use std::mem::MaybeUninit;

/// Rows per parallel task: enough work to amortise a task at the attention's row lengths.
fn rows_per_task(len: usize) -> usize {
    (4096 / len.max(1)).max(1)
}

/// Softmax of each row of `len` values in `x`.
pub fn forward(x: &[f32], len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    assert_eq!(
        x.len() % len,
        0,
        "softmax: {} values in rows of {len}",
        x.len()
    );
    // SAFETY: `forward_row` writes every element of its row.
    unsafe {
        par_fill(x.len() / len, len, rows_per_task(len), 0, |_, r, y| {
            forward_row(&x[r * len..(r + 1) * len], y)
        })
    }
}

wide_fn! {
    fn forward_row(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        let mut m = [f32::NEG_INFINITY; 8];
        let mut it = x.chunks_exact(8);
        for c in &mut it {
            for i in 0..8 {
                m[i] = m[i].max(c[i]);
            }
        }
        let max = it.remainder().iter().fold(
            m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
            |a, &b| a.max(b),
        );
        // A row of −∞ (fully masked) has no maximum to subtract; PyTorch gives NaN there too.
        for (y, &v) in y.iter_mut().zip(x) {
            y.write(exp(v - max));
        }
        // SAFETY: every element of `y` was written just above.
        let e = unsafe { &mut *(y as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let inv = 1.0 / sum(e);
        for v in e.iter_mut() {
            *v *= inv;
        }
    }
}

/// Gradient of [`forward`]: `dx = y·(dy − Σ dy·y)` per row, from the output `y`.
pub fn backward(y: &[f32], dy: &[f32], len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    assert_eq!(y.len(), dy.len());
    assert_eq!(y.len() % len, 0);
    // SAFETY: every element of the row is written.
    unsafe {
        par_fill(y.len() / len, len, rows_per_task(len), 0, |_, r, dx| {
            backward_row(&y[r * len..(r + 1) * len], &dy[r * len..(r + 1) * len], dx)
        })
    }
}

wide_fn! {
    fn backward_row(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        let s = dot(dy, y);
        for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            d.write(y * (g - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], len: usize) -> Vec<f64> {
        x.chunks(len)
            .flat_map(|row| {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / s)
            })
            .collect()
    }

    #[test]
    fn forward_matches_f64_and_rows_sum_to_one() {
        for len in [1, 7, 8, 64, 67] {
            let x: Vec<f32> = (0..len * 13)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let y = forward(&x, len);
            for (a, b) in y.iter().zip(reference(&x, len)) {
                assert!(
                    (*a as f64 - b).abs() < 1e-6 + 2e-6 * b,
                    "{a} vs {b} (len {len})"
                );
            }
            for row in y.chunks(len) {
                assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
            }
        }
        // Large values do not overflow: the maximum is subtracted first.
        let y = forward(&[1000.0, 1000.0, -1000.0], 3);
        assert_eq!(y, vec![0.5, 0.5, 0.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let len = 11;
        let x: Vec<f32> = (0..len * 3)
            .map(|i| (i as f32 * 0.71).sin() * 2.0)
            .collect();
        let dy: Vec<f32> = (0..len * 3).map(|i| (i as f32 * 0.37).cos()).collect();
        let y = forward(&x, len);
        let dx = backward(&y, &dy, len);
        // L = Σ dy·softmax(x); dL/dx_i by central differences in f64.
        let loss = |x: &[f32]| -> f64 {
            let xs: Vec<f32> = x.to_vec();
            reference(&xs, len)
                .iter()
                .zip(&dy)
                .map(|(a, &b)| a * b as f64)
                .sum()
        };
        for i in 0..x.len() {
            let h = 1e-2f32;
            let (mut up, mut dn) = (x.clone(), x.clone());
            up[i] += h;
            dn[i] -= h;
            let fd = (loss(&up) - loss(&dn)) / (2.0 * h as f64);
            assert!((dx[i] as f64 - fd).abs() < 2e-4, "{i}: {} vs {fd}", dx[i]);
        }
    }
}
