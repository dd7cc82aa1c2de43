//! Single-threaded f32 GEMM over strided matrices (the `gemm` crate, the one burn-flex uses),
//! and the fixed-chunk parallel loop every kernel here runs on.
//!
//! Kernels parallelise over images (rayon) and keep each GEMM on one thread: nesting gemm's
//! own parallelism inside rayon tasks oversubscribes the cores. Chunking never depends on the
//! thread count, so every reduction sums in the same order on any machine of one CPU family.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A strided matrix view: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// Row stride, in elements.
    pub rs: isize,
    /// Column stride, in elements.
    pub cs: isize,
}

impl Mat {
    /// Row-major with `cols` columns.
    pub const fn rows(cols: usize) -> Mat {
        Mat {
            rs: cols as isize,
            cs: 1,
        }
    }
    /// Column-major with `rows` rows (a row-major matrix read transposed).
    pub const fn cols(rows: usize) -> Mat {
        Mat {
            rs: 1,
            cs: rows as isize,
        }
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` on the calling thread.
///
/// # Safety
/// Every pointer must address a matrix of the given shape and strides, `dst` must not alias
/// `lhs` or `rhs`, and no other thread may write `dst` meanwhile.
// BLAS's sgemm signature (shape, then each matrix's pointer and strides), which kernel code
// is read against; a struct per operand would hide the strides at the call sites.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    d: Mat,
    accumulate: bool,
    lhs: *const f32,
    l: Mat,
    rhs: *const f32,
    r: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst by the caller's contract.
                    unsafe { *dst.offset(i as isize * d.rs + j as isize * d.cs) = 0.0 };
                }
            }
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            d.cs,
            d.rs,
            accumulate,
            lhs,
            l.cs,
            l.rs,
            rhs,
            r.cs,
            r.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Runs `f(scratch, index, item_slice)` over `data` split into items of `item` elements,
/// `chunk` items per rayon task. `scratch` is a per-thread buffer of `scratch_len` floats that
/// lives as long as the thread (im2col tiles are reused across calls instead of being
/// allocated, page-faulted and zeroed every time); its contents on entry are arbitrary.
pub fn par_items<T: Send>(
    data: &mut [T],
    item: usize,
    chunk: usize,
    scratch_len: usize,
    f: impl Fn(&mut [f32], usize, &mut [T]) + Sync + Send,
) {
    if item == 0 || data.is_empty() {
        return;
    }
    let chunk = chunk.max(1);
    data.par_chunks_mut(item * chunk)
        .enumerate()
        .for_each(|(c, block)| {
            with_scratch(scratch_len, |s| {
                for (i, one) in block.chunks_mut(item).enumerate() {
                    f(s, c * chunk + i, one);
                }
            })
        });
}

/// Like [`par_items`], over a new buffer of `items · item` floats that `f` fills: each item
/// reaches `f` as uninitialised memory (no zeroing pass over outputs the kernel overwrites
/// anyway; that pass cost ≈ 5% of a UNet forward).
///
/// # Safety
/// `f` must write every element of the item it is given, and must not read one it has not
/// written.
pub unsafe fn par_fill(
    items: usize,
    item: usize,
    chunk: usize,
    scratch_len: usize,
    f: impl Fn(&mut [f32], usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let n = items * item;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    par_items(
        &mut v.spare_capacity_mut()[..n],
        item,
        chunk,
        scratch_len,
        f,
    );
    // SAFETY: every element was written (the caller's contract); a panic above leaves len 0.
    unsafe { v.set_len(n) };
    v
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with this thread's scratch buffer grown to at least `len` floats.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered (a nested rayon task on this thread): use a private buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Number of rayon threads (for choosing chunk sizes that keep every core busy; results never
/// depend on it).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// A zeroed output buffer of `n` floats. Kernels could leave it uninitialised (they overwrite
/// it), but zeroing is cheap next to their GEMMs and keeps them free of uninitialised memory.
pub fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn sgemm_matches_naive_in_every_orientation() {
        let (m, n, k) = (7, 5, 11);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b);
        // a and b transposed copies, so each operand can be read either way.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for (lhs, l) in [(&a, Mat::rows(k)), (&at, Mat::cols(m))] {
            for (rhs, r) in [(&b, Mat::rows(n)), (&bt, Mat::cols(k))] {
                for (d, tr) in [(Mat::rows(n), false), (Mat::cols(m), true)] {
                    let mut c = vec![1.0f32; m * n];
                    unsafe {
                        sgemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            d,
                            false,
                            lhs.as_ptr(),
                            l,
                            rhs.as_ptr(),
                            r,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let got = if tr { c[j * m + i] } else { c[i * n + j] };
                            assert!((got - want[i * n + j]).abs() < 1e-5);
                        }
                    }
                }
            }
        }
        // accumulate adds onto dst
        let mut c = vec![1.0f32; m * n];
        unsafe {
            sgemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                Mat::rows(n),
                true,
                a.as_ptr(),
                Mat::rows(k),
                b.as_ptr(),
                Mat::rows(n),
            )
        };
        for (g, w) in c.iter().zip(&want) {
            assert!((g - (w + 1.0)).abs() < 1e-5);
        }
    }
}
