//! Exact L2 nearest neighbours of images, certified with a lower-bounding projection (CPU).
//!
//! For any orthonormal projection `P`, `‖P(x − y)‖ ≤ ‖x − y‖`. Natural images keep most of
//! their energy in coarse structure, so `P` = "decorrelate the colours, then take block means"
//! (luminance over 2×2 blocks, the two colour differences over 8×8 blocks: 288 of the 3,072
//! values of a 32×32 RGB image; other channel counts: every channel over 2×2) bounds every
//! distance from below at a tenth of the arithmetic. The search:
//!
//! 1. screens every (sample, training image) pair with `‖Px‖² + ‖Py‖² − 2·Px·Py` (blocked f32
//!    GEMMs, as the plain search does at full size) and keeps each sample's `keep` smallest;
//! 2. computes exact f64 distances of those candidates in increasing bound order, stopping
//!    when the next bound exceeds the k-th best exact distance;
//! 3. **certifies** the sample if the smallest bound outside the kept list also exceeds it:
//!    then no other training image can be among the k nearest, and the answer is exact.
//!
//! Every bound is lowered by a rigorous allowance for f32 rounding (projection, GEMM, norms:
//! [`Allowance`]), so certification is a proof, not a heuristic. Samples that cannot be
//! certified (far from every training image, e.g. noise) are returned as `None` for the
//! caller's full-size search; on the CIFAR-10 (JPEG copy) test split against its training
//! split, ~98% of samples are certified and the search costs about a sixth of the full one
//! (BENCHMARKS.md).

use std::cmp::Ordering;

use anyhow::Result;
use memlab_plugin_api::ffi::Distance;
use rayon::prelude::*;

use crate::engine::kernels::act::dot;
use crate::engine::kernels::gemm::{Mat, sgemm};
use crate::eval::exact::{exact, norm};

/// The finest block side of any projection row (every row's side is a multiple of it).
const BASE: usize = 2;
/// Samples per screening block (one single-threaded GEMM row block; blocks run in parallel).
const SAMPLES_PER_BLOCK: usize = 256;
/// Training images per screening GEMM.
const TRAIN_PER_GEMM: usize = 1024;

/// An orthonormal projection of `[c, h, w]` images onto colour-decorrelated block means.
#[derive(Debug, Clone)]
pub struct Projection {
    shape: [usize; 3],
    /// Per output channel: weights over the input channels (orthonormal rows) and block side.
    rows: Vec<(Vec<f64>, usize)>,
    len: usize,
}

impl Projection {
    /// The projection for images of `shape`, if it saves at least ¾ of the arithmetic.
    pub fn for_images(shape: [usize; 3]) -> Option<Projection> {
        let [c, h, w] = shape;
        let rows: Vec<(Vec<f64>, usize)> = if c == 3 {
            // Luminance and two colour differences: orthonormal rows.
            let (a, b, d) = (3f64.sqrt(), 2f64.sqrt(), 6f64.sqrt());
            vec![
                (vec![1.0 / a, 1.0 / a, 1.0 / a], BASE),
                (vec![1.0 / b, -1.0 / b, 0.0], 4 * BASE),
                (vec![1.0 / d, 1.0 / d, -2.0 / d], 4 * BASE),
            ]
        } else {
            (0..c)
                .map(|i| ((0..c).map(|j| f64::from(u8::from(i == j))).collect(), BASE))
                .collect()
        };
        let len = rows
            .iter()
            .map(|(_, p)| h.div_ceil(*p) * w.div_ceil(*p))
            .sum();
        (len > 0 && len * 4 <= c * h * w).then_some(Projection { shape, rows, len })
    }

    /// Values per projected image.
    pub fn projected_len(&self) -> usize {
        self.len
    }

    /// Values per image before projection.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// `out = P·x`, summed in f64 and rounded once to f32: 2×2 block sums per channel in one
    /// pass over the image, then each output row's blocks summed from them.
    fn apply(&self, x: &[f32], out: &mut [f32], sums: &mut Vec<f64>) {
        let [c, h, w] = self.shape;
        let (bh, bw) = (h.div_ceil(BASE), w.div_ceil(BASE));
        sums.clear();
        sums.resize(c * bh * bw, 0.0);
        for ch in 0..c {
            let plane = &x[ch * h * w..(ch + 1) * h * w];
            let s = &mut sums[ch * bh * bw..(ch + 1) * bh * bw];
            for i in 0..h {
                let row = &mut s[(i / BASE) * bw..(i / BASE + 1) * bw];
                for (j, &v) in plane[i * w..(i + 1) * w].iter().enumerate() {
                    row[j / BASE] += v as f64;
                }
            }
        }
        let mut o = 0;
        for (weights, p) in &self.rows {
            let q = p / BASE;
            for bi in (0..bh).step_by(q) {
                for bj in (0..bw).step_by(q) {
                    let (hi, wj) = ((bi + q).min(bh), (bj + q).min(bw));
                    let mut t = 0.0f64;
                    for (ch, &wt) in weights.iter().enumerate() {
                        if wt == 0.0 {
                            continue;
                        }
                        let s = &sums[ch * bh * bw..(ch + 1) * bh * bw];
                        let mut u = 0.0f64;
                        for i in bi..hi {
                            u += s[i * bw + bj..i * bw + wj].iter().sum::<f64>();
                        }
                        t += wt * u;
                    }
                    // Pixels in the block (edge blocks are smaller).
                    let rows = (hi * BASE).min(h) - bi * BASE;
                    let cols = (wj * BASE).min(w) - bj * BASE;
                    out[o] = (t / ((rows * cols) as f64).sqrt()) as f32;
                    o += 1;
                }
            }
        }
    }

    /// Every image of `images` projected, `n × len` row-major.
    fn apply_all(&self, images: &[f32]) -> Vec<f32> {
        let dim = self.image_len();
        let mut out = vec![0.0f32; images.len() / dim * self.len];
        out.par_chunks_mut(self.len)
            .zip(images.par_chunks(dim))
            .for_each_init(Vec::new, |sums, (o, x)| self.apply(x, o, sums));
        out
    }
}

/// The rounding allowance that turns a computed screening value into a proven lower bound.
///
/// With `a = ‖x‖`, `b = ‖y‖` (full images) and `r` projected values, the computed projections
/// are within `u·a`, `u·b` of the true ones (one f32 rounding each, `u = 2⁻²⁴`), and the
/// computed `v = fl(‖p̃x‖² + ‖p̃y‖² − 2·p̃x·p̃y)` is within `(γ_r + 3u)·(a + b)²` of
/// `‖p̃x − p̃y‖²` (any summation order, FMA or not). Hence
/// `‖x − y‖ ≥ ‖P(x − y)‖ ≥ √max(v − E·(a+b)², 0) − 2u·(a + b)` with `E = 1.5·(r + 8)·u`
/// (the factor covers γ's denominator and the norms' own rounding with room to spare).
#[derive(Debug, Clone, Copy)]
struct Allowance {
    e: f64,
}

const U: f64 = f32::EPSILON as f64 / 2.0;

impl Allowance {
    fn new(r: usize) -> Allowance {
        Allowance {
            e: 1.5 * (r as f64 + 8.0) * U,
        }
    }
    /// A proven lower bound on `‖x − y‖` from the screening value `v`, the norms of `x` and `y`.
    /// Decreasing in `b`, increasing in `v`. The final factor leaves room for the f64 rounding
    /// of the exact distances it is compared with.
    #[inline]
    fn lower(self, v: f32, a: f64, b: f64) -> f64 {
        let s = (a + b) * (a + b);
        let root = (v as f64 - self.e * s).max(0.0).sqrt();
        (root - 2.0 * U * (a + b)).max(0.0) * (1.0 - 1e-9)
    }
}

/// A screened candidate, ordered by (screening value, training index).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand(f32, u32);

impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The `keep` smallest candidates offered: a buffer of up to `2·keep` cut back to `keep` by a
/// selection when full (amortised O(1) per offer; a heap costs O(log keep) per replacement).
/// Every candidate not kept is ≥ the largest kept one.
struct TopK {
    keep: usize,
    buf: Vec<Cand>,
    /// Candidates must be below this to matter (the `keep`-th smallest after a cut).
    bound: Option<Cand>,
}

impl TopK {
    fn new(keep: usize) -> TopK {
        TopK {
            keep,
            buf: Vec::with_capacity(2 * keep),
            bound: None,
        }
    }
    #[inline]
    fn offer(&mut self, c: Cand) {
        if self.bound.is_none_or(|b| c < b) {
            self.buf.push(c);
            if self.buf.len() == 2 * self.keep {
                self.cut();
            }
        }
    }
    fn cut(&mut self) {
        if self.buf.len() > self.keep {
            self.buf.select_nth_unstable(self.keep - 1);
            self.buf.truncate(self.keep);
            self.bound = Some(self.buf[self.keep - 1]);
        }
    }
    /// The kept candidates, ascending.
    fn finish(mut self) -> Vec<Cand> {
        self.cut();
        self.buf.sort_unstable();
        self.buf
    }
}

/// What the certified search found for each sample: its `k` nearest training images
/// (exact f64 distance, index; ascending by distance, then index), or `None` where the bound
/// could not prove them and the full-size search must decide.
pub struct Certified {
    /// Per sample.
    pub found: Vec<Option<Vec<(f64, u32)>>>,
    /// Exact distances computed.
    pub exact_distances: u64,
}

/// How far the certified search goes per sample.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// Screened candidates kept (at least `k`).
    pub keep: usize,
    /// Exact distances computed before giving the sample up to the full-size search (which
    /// costs about as much as 2,500 exact distances per sample at CIFAR-10 scale): samples the
    /// bound cannot separate — noise, far from every training image — stop here cheaply.
    pub max_exact: usize,
}

/// The training side of the search, computed once for every round: the images, their
/// projections and squared projected norms (f32), and their norms (f64) with the largest.
pub struct Projected<'a> {
    train: &'a [f32],
    p: &'a Projection,
    pt: Vec<f32>,
    ptn: Vec<f32>,
    yn: Vec<f64>,
    ymax: f64,
}

impl<'a> Projected<'a> {
    /// Projects `train` (`[c, h, w]` images, flattened) with `p`.
    pub fn new(train: &'a [f32], p: &'a Projection) -> Projected<'a> {
        let pt = p.apply_all(train);
        let ptn: Vec<f32> = pt
            .par_chunks(p.projected_len())
            .map(|y| dot(y, y))
            .collect();
        let yn: Vec<f64> = train.par_chunks(p.image_len()).map(norm).collect();
        let ymax = yn.iter().copied().fold(0.0, f64::max);
        Projected {
            train,
            p,
            pt,
            ptn,
            yn,
            ymax,
        }
    }
}

/// The certified search of `samples` (`[c, h, w]` images, flattened) among the training
/// images of `t`.
pub fn search(samples: &[f32], t: &Projected<'_>, k: usize, effort: Effort) -> Result<Certified> {
    let (train, p) = (t.train, t.p);
    let (pt, ptn, yn, ymax) = (&t.pt, &t.ptn, &t.yn, t.ymax);
    let keep = effort.keep;
    let dim = p.image_len();
    let (m, n) = (samples.len() / dim, train.len() / dim);
    let keep = keep.max(k).min(n);
    let r = p.projected_len();
    let allow = Allowance::new(r);
    let nc = TRAIN_PER_GEMM.min(n);
    let mut found: Vec<Option<Vec<(f64, u32)>>> = vec![None; m];
    let mut counts: Vec<u64> = vec![0; m.div_ceil(SAMPLES_PER_BLOCK)];
    found
        .par_chunks_mut(SAMPLES_PER_BLOCK)
        .zip(counts.par_iter_mut())
        .enumerate()
        .for_each(|(b, (out, count))| {
            let s0 = b * SAMPLES_PER_BLOCK;
            let rows = out.len();
            let xs = &samples[s0 * dim..(s0 + rows) * dim];
            let px = p.apply_all(xs);
            let pxn: Vec<f32> = px.chunks(r).map(|x| dot(x, x)).collect();
            let mut tops: Vec<TopK> = (0..rows).map(|_| TopK::new(keep)).collect();
            let mut dots = vec![0.0f32; rows * nc];
            for t0 in (0..n).step_by(nc) {
                let cols = nc.min(n - t0);
                // SAFETY: dots is rows×cols (row stride cols); px is rows×r row-major; the
                // projected training block is read transposed (r×cols).
                unsafe {
                    sgemm(
                        rows,
                        cols,
                        r,
                        dots.as_mut_ptr(),
                        Mat::rows(cols),
                        false,
                        px.as_ptr(),
                        Mat::rows(r),
                        pt[t0 * r..].as_ptr(),
                        Mat::cols(r),
                    )
                };
                for (i, top) in tops.iter_mut().enumerate() {
                    let row = &dots[i * cols..(i + 1) * cols];
                    for (c, (&d, &y2)) in row.iter().zip(&ptn[t0..t0 + cols]).enumerate() {
                        top.offer(Cand(pxn[i] + y2 - 2.0 * d, (t0 + c) as u32));
                    }
                }
            }
            for (i, (top, slot)) in tops.into_iter().zip(out.iter_mut()).enumerate() {
                let x = &xs[i * dim..(i + 1) * dim];
                let a = norm(x);
                let list = top.finish();
                let outside = (n > keep).then(|| list[keep - 1].0);
                let mut best: Vec<(f64, u32)> = Vec::with_capacity(k + 1);
                let mut given_up = false;
                let mut done = 0usize;
                for Cand(v, j) in list {
                    let kth = (best.len() == k).then(|| best[k - 1].0);
                    if let Some(kth) = kth {
                        // Sorted by v, and the bound grows with v: nothing later can enter.
                        if allow.lower(v, a, ymax) > kth {
                            break;
                        }
                        if allow.lower(v, a, yn[j as usize]) > kth {
                            continue;
                        }
                    }
                    // Giving up is always safe (the full-size search decides), so it may be
                    // heuristic: at the cap, or when even the bound of everything outside the
                    // list is well below the k-th distance found so far (noise-like samples:
                    // the k-th distance would have to fall by over 10% to certify).
                    let hopeless = done >= (2 * k).max(8)
                        && outside.is_some_and(|v| allow.lower(v, a, ymax) <= 0.9 * best[k - 1].0);
                    if done == effort.max_exact.max(k) || hopeless {
                        given_up = true;
                        break;
                    }
                    let y = &train[j as usize * dim..(j as usize + 1) * dim];
                    let d = exact(x, y, Distance::L2);
                    done += 1;
                    *count += 1;
                    let pos = best.partition_point(|&(bd, bj)| (bd, bj) < (d, j));
                    if pos < k {
                        best.insert(pos, (d, j));
                        best.truncate(k);
                    }
                }
                // Every image outside the list screened at ≥ `outside`.
                let proven = !given_up
                    && match outside {
                        None => true,
                        Some(v) => allow.lower(v, a, ymax) > best[k - 1].0,
                    };
                *slot = proven.then_some(best);
            }
        });
    Ok(Certified {
        found,
        exact_distances: counts.iter().sum(),
    })
}

/// Smooth random images (a plane wave per image, per-channel phase, plus 20% noise): test data
/// with natural images' low-frequency energy.
#[cfg(test)]
pub(crate) fn smooth_images(n: usize, shape: [usize; 3], seed: u64) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut g = memlab_plugin_api::SplitMix64(seed);
    let mut next = || (g.next_f64() * 2.0 - 1.0) as f32;
    let mut out = Vec::with_capacity(n * c * h * w);
    for _ in 0..n {
        let (fa, fb, ph) = (next() * 3.0, next() * 3.0, next() * 3.0);
        for ch in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let (y, x) = (i as f32 / h as f32, j as f32 / w as f32);
                    let base = (fa * y + fb * x + ph - ch as f32).sin();
                    out.push((0.8 * base + 0.2 * next()).clamp(-1.0, 1.0));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_is_orthonormal() {
        for shape in [[3, 16, 16], [1, 28, 28], [3, 12, 10], [2, 8, 8]] {
            let p = Projection::for_images(shape).unwrap();
            let dim: usize = shape.iter().product();
            // Rows of P: project the unit vectors; P·Pᵀ must be the identity.
            let mut cols = vec![0.0f32; dim * p.projected_len()];
            let mut e = vec![0.0f32; dim];
            let mut sums = Vec::new();
            for i in 0..dim {
                e[i] = 1.0;
                p.apply(
                    &e,
                    &mut cols[i * p.projected_len()..(i + 1) * p.projected_len()],
                    &mut sums,
                );
                e[i] = 0.0;
            }
            for a in 0..p.projected_len() {
                for b in 0..p.projected_len() {
                    let s: f64 = (0..dim)
                        .map(|i| {
                            cols[i * p.projected_len() + a] as f64
                                * cols[i * p.projected_len() + b] as f64
                        })
                        .sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-6, "{shape:?} rows {a},{b}: {s}");
                }
            }
        }
        assert!(Projection::for_images([3, 1, 1]).is_none());
        assert_eq!(
            Projection::for_images([3, 32, 32]).unwrap().projected_len(),
            288
        );
    }

    #[test]
    fn bounds_never_exceed_distances() {
        let shape = [3, 16, 16];
        let p = Projection::for_images(shape).unwrap();
        let (xs, ys) = (smooth_images(20, shape, 1), smooth_images(30, shape, 2));
        let dim = 768;
        let allow = Allowance::new(p.projected_len());
        let (px, py) = (p.apply_all(&xs), p.apply_all(&ys));
        for i in 0..20 {
            for j in 0..30 {
                let (x, y) = (&xs[i * dim..][..dim], &ys[j * dim..][..dim]);
                let (a, b) = (
                    &px[i * p.projected_len()..][..p.projected_len()],
                    &py[j * p.projected_len()..][..p.projected_len()],
                );
                let v = dot(a, a) + dot(b, b) - 2.0 * dot(a, b);
                let d = exact(x, y, Distance::L2);
                let lb = allow.lower(v, norm(x), norm(y));
                assert!(lb <= d, "bound {lb} above distance {d}");
                assert!(lb > 0.5 * d, "bound {lb} too loose for distance {d}");
            }
        }
    }
}
