//! 2-D convolution (NCHW, one group) as im2col + GEMM per image, forward and backward.
//!
//! For image `b` with `col_b = im2col(x_b)` (`K × P`, `K = C_in·kh·kw`, `P = OH·OW`):
//!
//! - forward: `y_b = W · col_b + bias` (`W` is `C_out × K`);
//! - input gradient: `dx_b = col2im(Wᵀ · dy_b)`;
//! - weight gradient: `dW = Σ_b dy_b · col_bᵀ`; bias gradient: `Σ_b Σ_p dy_b`.
//!
//! A 1×1 convolution with stride 1 and no padding skips im2col (`col_b` is `x_b`). Images run in
//! parallel, each GEMM on one thread; the weight gradient sums per-chunk partials in chunk order.

use super::gemm::{Mat, par_items, sgemm, threads, zeros};

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Zero padding (h, w).
    pub pad: [usize; 2],
    /// Dilation (h, w).
    pub dil: [usize; 2],
}

impl ConvShape {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad[0] - self.dil[0] * (self.kh - 1) - 1) / self.stride[0] + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad[1] - self.dil[1] * (self.kw - 1) - 1) / self.stride[1] + 1
    }
    /// Output pixels per channel.
    pub fn p(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Rows of im2col: `C_in·kh·kw`.
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }
    /// Images per rayon task: enough tasks for every core, never more than 4 images each.
    fn chunk(&self) -> usize {
        self.n.div_ceil(threads() * 2).clamp(1, 4)
    }
}

/// For output column `o` of kernel tap `k` (0-based), the input index, or `None` in the padding.
#[inline]
fn src(o: usize, k: usize, stride: usize, pad: usize, dil: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// Range of output positions `o` whose source index `o·s + k·d − p` lies in `0..len`.
#[inline]
fn valid(out: usize, k: usize, s: usize, p: usize, d: usize, len: usize) -> (usize, usize) {
    let off = k * d;
    // o·s + off ≥ p  ⇔  o ≥ ceil((p − off)/s)
    let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
    // o·s + off − p ≤ len − 1  ⇔  o ≤ (len − 1 + p − off)/s
    let hi = if len + p > off {
        ((len - 1 + p - off) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Whether the output has the input's size with stride 1 and no dilation ("same" padding, the
/// UNets' 3×3 convolutions): then each im2col row is the input plane shifted by one offset, one
/// contiguous copy plus zeroed borders.
fn same(s: &ConvShape) -> bool {
    s.stride == [1, 1] && s.dil == [1, 1] && s.oh() == s.h && s.ow() == s.w
}

/// For kernel tap `(ki, kj)` of a [`same`] convolution: the shift `(dy, dx)`, the output rows
/// `o0..o1` that read inside the plane, and the element range `[lo, hi)` of the row to copy
/// with the source offset `off = dy·w + dx` (`dst[i] = src[i + off]`).
fn same_tap(s: &ConvShape, ki: usize, kj: usize) -> (isize, usize, usize, usize, usize) {
    let (h, w) = (s.h as isize, s.w as isize);
    let dy = ki as isize - s.pad[0] as isize;
    let dx = kj as isize - s.pad[1] as isize;
    let o0 = (-dy).clamp(0, h) as usize;
    let o1 = (h - dy).clamp(0, h) as usize;
    let off = dy * w + dx;
    let lo = (o0 as isize * w).max(-off).min(o1 as isize * w).max(0) as usize;
    let hi = ((o1 as isize * w).min(h * w - off)).max(lo as isize) as usize;
    (dx, o0, o1, lo, hi)
}

/// Zeroes, in rows `o0..o1` of a [`same`] im2col row, the columns that read across the left
/// (`dx < 0`) or right (`dx > 0`) edge.
#[inline]
fn zero_edge_columns(row: &mut [f32], w: usize, dx: isize, o0: usize, o1: usize) {
    if dx == 0 {
        return;
    }
    let n = dx.unsigned_abs().min(w);
    for o in o0..o1 {
        let r = &mut row[o * w..(o + 1) * w];
        if dx < 0 {
            r[..n].fill(0.0);
        } else {
            r[w - n..].fill(0.0);
        }
    }
}

/// `col (K × P) = im2col(x_b)`.
fn im2col(s: &ConvShape, x: &[f32], col: &mut [f32]) {
    let (oh, ow, p) = (s.oh(), s.ow(), s.p());
    if same(s) {
        let w = s.w;
        for c in 0..s.c_in {
            let plane = &x[c * s.h * w..(c + 1) * s.h * w];
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let row = &mut col[((c * s.kh + ki) * s.kw + kj) * p..][..p];
                    let (dx, o0, o1, lo, hi) = same_tap(s, ki, kj);
                    let off = (ki as isize - s.pad[0] as isize) * w as isize + dx;
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                    if hi > lo {
                        let src = (lo as isize + off) as usize;
                        row[lo..hi].copy_from_slice(&plane[src..src + (hi - lo)]);
                    }
                    zero_edge_columns(row, w, dx, o0, o1);
                }
            }
        }
        return;
    }
    for c in 0..s.c_in {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for ki in 0..s.kh {
            for kj in 0..s.kw {
                let row = &mut col[((c * s.kh + ki) * s.kw + kj) * p..][..p];
                let (j0, j1) = valid(ow, kj, s.stride[1], s.pad[1], s.dil[1], s.w);
                for o in 0..oh {
                    let dst = &mut row[o * ow..(o + 1) * ow];
                    match src(o, ki, s.stride[0], s.pad[0], s.dil[0], s.h) {
                        None => dst.fill(0.0),
                        Some(i) => {
                            let line = &plane[i * s.w..(i + 1) * s.w];
                            dst[..j0].fill(0.0);
                            dst[j1..].fill(0.0);
                            if j0 == j1 {
                                continue;
                            }
                            let first = j0 * s.stride[1] + kj * s.dil[1] - s.pad[1];
                            if s.stride[1] == 1 {
                                dst[j0..j1].copy_from_slice(&line[first..first + (j1 - j0)]);
                            } else {
                                for (t, d) in dst[j0..j1].iter_mut().enumerate() {
                                    *d = line[first + t * s.stride[1]];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dx_b += col2im(dcol)` (dx_b zeroed by the caller; `dcol` is scratch and may be modified).
fn col2im(s: &ConvShape, dcol: &mut [f32], dx: &mut [f32]) {
    let (oh, ow, p) = (s.oh(), s.ow(), s.p());
    if same(s) {
        let w = s.w;
        for c in 0..s.c_in {
            let plane = &mut dx[c * s.h * w..(c + 1) * s.h * w];
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let row = &mut dcol[((c * s.kh + ki) * s.kw + kj) * p..][..p];
                    let (dxs, o0, o1, lo, hi) = same_tap(s, ki, kj);
                    let off = (ki as isize - s.pad[0] as isize) * w as isize + dxs;
                    // Entries that read across an edge have no input pixel: drop them so the
                    // contiguous add below cannot wrap them onto the neighbouring row.
                    zero_edge_columns(row, w, dxs, o0, o1);
                    if hi == lo {
                        continue;
                    }
                    let dst = (lo as isize + off) as usize;
                    for (d, v) in plane[dst..dst + (hi - lo)].iter_mut().zip(&row[lo..hi]) {
                        *d += v;
                    }
                }
            }
        }
        return;
    }
    for c in 0..s.c_in {
        let plane = &mut dx[c * s.h * s.w..(c + 1) * s.h * s.w];
        for ki in 0..s.kh {
            for kj in 0..s.kw {
                let row = &dcol[((c * s.kh + ki) * s.kw + kj) * p..][..p];
                let (j0, j1) = valid(ow, kj, s.stride[1], s.pad[1], s.dil[1], s.w);
                if j0 >= j1 {
                    continue;
                }
                let first = j0 * s.stride[1] + kj * s.dil[1] - s.pad[1];
                for o in 0..oh {
                    let Some(i) = src(o, ki, s.stride[0], s.pad[0], s.dil[0], s.h) else {
                        continue;
                    };
                    let line = &mut plane[i * s.w..(i + 1) * s.w];
                    let from = &row[o * ow + j0..o * ow + j1];
                    if s.stride[1] == 1 {
                        for (d, v) in line[first..first + (j1 - j0)].iter_mut().zip(from) {
                            *d += v;
                        }
                    } else {
                        for (t, v) in from.iter().enumerate() {
                            line[first + t * s.stride[1]] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward: `x` is `[n, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`, `bias` `[c_out]`;
/// returns `[n, c_out, oh, ow]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (k, p) = (s.k(), s.p());
    let img = s.c_in * s.h * s.w;
    let mut y = zeros(s.n * s.c_out * p);
    let pointwise = s.pointwise();
    par_items(
        &mut y,
        s.c_out * p,
        s.chunk(),
        if pointwise { 0 } else { k * p },
        |col, b, yb| {
            let xb = &x[b * img..(b + 1) * img];
            let cols: &[f32] = if pointwise {
                xb
            } else {
                im2col(s, xb, col);
                col
            };
            if let Some(bias) = bias {
                for (row, v) in yb.chunks_mut(p).zip(bias) {
                    row.fill(*v);
                }
            }
            // SAFETY: yb is c_out×p, weight c_out×k, cols k×p, all row-major and disjoint.
            unsafe {
                sgemm(
                    s.c_out,
                    p,
                    k,
                    yb.as_mut_ptr(),
                    Mat::rows(p),
                    bias.is_some(),
                    weight.as_ptr(),
                    Mat::rows(k),
                    cols.as_ptr(),
                    Mat::rows(p),
                )
            };
        },
    );
    y
}

/// Input gradient `[n, c_in, h, w]` from the output gradient `dy` `[n, c_out, oh, ow]`.
pub fn backward_input(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (s.k(), s.p());
    let img = s.c_in * s.h * s.w;
    let mut dx = zeros(s.n * img);
    let pointwise = s.pointwise();
    par_items(
        &mut dx,
        img,
        s.chunk(),
        if pointwise { 0 } else { k * p },
        |dcol, b, dxb| {
            let dyb = &dy[b * s.c_out * p..(b + 1) * s.c_out * p];
            let dst: &mut [f32] = if pointwise { dxb } else { dcol };
            // SAFETY: dst is k×p, weight read transposed (k×c_out), dyb c_out×p.
            unsafe {
                sgemm(
                    k,
                    p,
                    s.c_out,
                    dst.as_mut_ptr(),
                    Mat::rows(p),
                    false,
                    weight.as_ptr(),
                    Mat::cols(k),
                    dyb.as_ptr(),
                    Mat::rows(p),
                )
            };
            if !pointwise {
                dxb.fill(0.0);
                col2im(s, dcol, dxb);
            }
        },
    );
    dx
}

/// Weight gradient `[c_out, c_in, kh, kw]`: per-chunk partial sums over images, added in chunk
/// order.
pub fn backward_weight(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (s.k(), s.p());
    let img = s.c_in * s.h * s.w;
    let chunk = s.chunk();
    let chunks = s.n.div_ceil(chunk);
    let wlen = s.c_out * k;
    let mut partial = zeros(chunks * wlen);
    let pointwise = s.pointwise();
    par_items(
        &mut partial,
        wlen,
        1,
        if pointwise { 0 } else { k * p },
        |col, c, dw| {
            for (i, b) in (c * chunk..((c + 1) * chunk).min(s.n)).enumerate() {
                let xb = &x[b * img..(b + 1) * img];
                let cols: &[f32] = if pointwise {
                    xb
                } else {
                    im2col(s, xb, col);
                    col
                };
                let dyb = &dy[b * s.c_out * p..(b + 1) * s.c_out * p];
                // SAFETY: dw is c_out×k, dyb c_out×p, cols read transposed (p×k).
                unsafe {
                    sgemm(
                        s.c_out,
                        k,
                        p,
                        dw.as_mut_ptr(),
                        Mat::rows(k),
                        i > 0,
                        dyb.as_ptr(),
                        Mat::rows(p),
                        cols.as_ptr(),
                        Mat::cols(p),
                    )
                };
            }
        },
    );
    let (first, rest) = partial.split_at_mut(wlen);
    for part in rest.chunks(wlen) {
        for (a, b) in first.iter_mut().zip(part) {
            *a += b;
        }
    }
    partial.truncate(wlen);
    partial
}

/// Bias gradient `[c_out]`: `dy` summed over images and pixels (images in order).
pub fn backward_bias(s: &ConvShape, dy: &[f32]) -> Vec<f32> {
    let p = s.p();
    let mut db = vec![0.0f32; s.c_out];
    for img in dy.chunks(s.c_out * p) {
        for (d, row) in db.iter_mut().zip(img.chunks(p)) {
            *d += super::act::sum(row);
        }
    }
    db
}
