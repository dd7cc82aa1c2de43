//! Exact k-nearest neighbours of generated samples among training images.
//!
//! L2 images on the CPU: the certified search of [`crate::eval::bound`] (exact by proof, about
//! a sixth of the arithmetic on CIFAR-10), with the search below for what it leaves open.
//!
//! L2 otherwise: candidates are screened with an f32 GEMM on the engine's device
//! (‖x−y‖² = ‖x‖² + ‖y‖² − 2x·y, chunked over samples and training images so memory stays
//! bounded), then the best `k + MARGIN` candidates of each sample are re-ranked with distances
//! recomputed exactly in f64 on the host. GEMM rounding can only reorder candidates whose
//! squared distances differ by less than its error (~1e-4 of ‖x‖² here), far inside the margin,
//! so the reported neighbours and distances are exact. L∞: computed directly, chunked.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use memlab_plugin_api::ffi::Distance;

use crate::eval::bound::{self, Effort, Projection};
use crate::eval::exact::exact;

/// Extra GEMM candidates re-ranked exactly per sample.
pub const MARGIN: usize = 16;

/// Nearest training images of each sample, ascending.
#[derive(Debug, Clone)]
pub struct Neighbours {
    /// Neighbours per sample.
    pub k: usize,
    /// Distances, `m × k` row-major.
    pub dist: Vec<f32>,
    /// Training-set positions, `m × k` row-major.
    pub idx: Vec<u32>,
}

impl Neighbours {
    /// Distances of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.dist[i * self.k..(i + 1) * self.k]
    }
}

/// k nearest of each of the `samples` among `train`: items of shape `item` (`[c, h, w]` for
/// images, `[d]` for feature vectors), flattened row-major.
///
/// L2 on the CPU: images go through the certified search of [`bound`] first (exact by proof,
/// a fraction of the arithmetic); the samples it cannot certify, and all feature vectors, go
/// through [`knn_cpu_l2`]. Other devices and L∞: [`knn_chunked`].
pub fn knn(
    samples: &[f32],
    train: &[f32],
    item: &[usize],
    k: usize,
    distance: Distance,
    device: &Device,
) -> Result<Neighbours> {
    let dim: usize = item.iter().product();
    if distance == Distance::L2
        && *device == Device::flex()
        && !crate::engine::kernels::generic_only()
    {
        if let &[c, h, w] = item
            && bound_enabled()
            && let Some(p) = Projection::for_images([c, h, w])
        {
            return knn_bounded(samples, train, &p, k, bound_effort(k));
        }
        return knn_cpu_l2(samples, train, dim, k, 256, 1024);
    }
    let nc = 16_000_000usize.checked_div(dim).unwrap_or(1);
    let chunks = Chunks {
        train: nc,
        samples: 512,
    };
    knn_chunked(samples, train, dim, k, distance, device, chunks)
}

/// `MEMLAB_KNN_BOUND=off` skips the certified search (the same neighbours, found by screening
/// every pair at full size): for benchmarks and for cross-checking a result.
fn bound_enabled() -> bool {
    std::env::var_os("MEMLAB_KNN_BOUND").is_none_or(|v| v != "off")
}

/// The rows `which` of `x` (items of `dim` values), contiguous.
fn gather(x: &[f32], dim: usize, which: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(which.len() * dim);
    for &i in which {
        out.extend_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    out
}

/// The certified search's first round for `k` neighbours: `max(256, 16·k)` screened candidates
/// and at most `max(256, 8·k)` exact distances per sample (on the CIFAR-10 test split against
/// its training split this proves nearly every sample at k = 2; see [`bound`] and
/// BENCHMARKS.md); the second round has 16 times both.
pub fn bound_effort(k: usize) -> Effort {
    Effort {
        keep: 256usize.max(k.saturating_mul(16)),
        max_exact: 256usize.max(k.saturating_mul(8)),
    }
}

/// The certified search of [`bound`], then [`knn_cpu_l2`] for the samples it left open.
pub fn knn_bounded(
    samples: &[f32],
    train: &[f32],
    p: &Projection,
    k: usize,
    effort: Effort,
) -> Result<Neighbours> {
    let dim = p.image_len();
    let (m, _, _) = check(samples, train, dim, k)?;
    // A second, wider round for the samples the first could not prove, when they are few (a
    // data set the bound separates well); then the full-size search for what is still open.
    let projected = bound::Projected::new(train, p);
    let mut found = bound::search(samples, &projected, k, effort)?;
    let mut exact_distances = found.exact_distances;
    let first: Vec<usize> = (0..m).filter(|&i| found.found[i].is_none()).collect();
    let second = !first.is_empty() && first.len() * 4 <= m;
    if second {
        let xs = gather(samples, dim, &first);
        let wider = Effort {
            keep: effort.keep.saturating_mul(16),
            max_exact: effort.max_exact.saturating_mul(16),
        };
        let wide = bound::search(&xs, &projected, k, wider)?;
        exact_distances += wide.exact_distances;
        for (&i, f) in first.iter().zip(wide.found) {
            found.found[i] = f;
        }
    }
    let open: Vec<usize> = (0..m).filter(|&i| found.found[i].is_none()).collect();
    log::info!(
        "k-NN: {} of {m} samples certified by the projection bound ({} in the second round; \
         {exact_distances} exact distances); {} searched at full size",
        m - open.len(),
        if second { first.len() - open.len() } else { 0 },
        open.len()
    );
    let rest = if open.is_empty() {
        None
    } else {
        Some(knn_cpu_l2(
            &gather(samples, dim, &open),
            train,
            dim,
            k,
            256,
            1024,
        )?)
    };
    let mut dist = Vec::with_capacity(m * k);
    let mut idx = Vec::with_capacity(m * k);
    let mut next_open = 0;
    for (i, f) in found.found.into_iter().enumerate() {
        match f {
            Some(best) => {
                for (d, j) in best {
                    dist.push(d as f32);
                    idx.push(j);
                }
            }
            None => {
                let r = rest.as_ref().expect("open samples were searched");
                debug_assert_eq!(open[next_open], i);
                dist.extend_from_slice(r.row(next_open));
                idx.extend_from_slice(&r.idx[next_open * k..(next_open + 1) * k]);
                next_open += 1;
            }
        }
    }
    Ok(Neighbours { k, dist, idx })
}

/// A sample's best candidates so far, ascending by (screening distance, index).
struct Best {
    keep: usize,
    list: Vec<(f32, u32)>,
}

impl Best {
    /// The value a candidate must beat to enter (∞ until the list is full).
    #[inline]
    fn bound(&self) -> f32 {
        if self.list.len() < self.keep {
            f32::INFINITY
        } else {
            self.list[self.keep - 1].0
        }
    }
    #[inline]
    fn offer(&mut self, d: f32, j: u32) {
        // Candidates arrive in increasing index order, so a tie with the bound keeps the
        // earlier index, as the (distance, index) order of the exact re-ranking does.
        let pos = self.list.partition_point(|&(v, _)| v <= d);
        self.list.insert(pos, (d, j));
        self.list.truncate(self.keep);
    }
}

/// L2 k-NN on the CPU: screening distances `‖x‖² + ‖y‖² − 2x·y` from single-threaded GEMMs on
/// fixed blocks of `ms` samples × `nc` training images, blocks of samples in parallel, each
/// keeping its best `k + MARGIN` candidates with one comparison per pair; then the exact f64
/// re-ranking of [`knn_chunked`]. Block sizes never depend on the thread count, so results are
/// the same on any number of cores.
pub fn knn_cpu_l2(
    samples: &[f32],
    train: &[f32],
    dim: usize,
    k: usize,
    ms: usize,
    nc: usize,
) -> Result<Neighbours> {
    use crate::engine::kernels::act::dot;
    use crate::engine::kernels::gemm::{Mat, sgemm};
    use rayon::prelude::*;
    let (m, n, keep) = check(samples, train, dim, k)?;
    let (ms, nc) = (ms.max(1), nc.clamp(1, n));
    let yn: Vec<f32> = train.par_chunks(dim).map(|y| dot(y, y)).collect();
    let mut best: Vec<Best> = (0..m)
        .map(|_| Best {
            keep,
            list: Vec::with_capacity(keep + 1),
        })
        .collect();
    best.par_chunks_mut(ms).enumerate().for_each(|(b, rows)| {
        let s0 = b * ms;
        let xs = &samples[s0 * dim..(s0 + rows.len()) * dim];
        let xn: Vec<f32> = xs.chunks(dim).map(|x| dot(x, x)).collect();
        let mut dots = vec![0.0f32; rows.len() * nc];
        for t0 in (0..n).step_by(nc) {
            let cols = nc.min(n - t0);
            // SAFETY: dots is rows×cols (row stride cols); xs is rows×dim row-major; the
            // training block is read transposed (dim×cols).
            unsafe {
                sgemm(
                    rows.len(),
                    cols,
                    dim,
                    dots.as_mut_ptr(),
                    Mat::rows(cols),
                    false,
                    xs.as_ptr(),
                    Mat::rows(dim),
                    train[t0 * dim..].as_ptr(),
                    Mat::cols(dim),
                )
            };
            for (r, best) in rows.iter_mut().enumerate() {
                let mut bound = best.bound();
                let row = &dots[r * cols..(r + 1) * cols];
                for (c, (&d, &y2)) in row.iter().zip(&yn[t0..t0 + cols]).enumerate() {
                    let v = xn[r] + y2 - 2.0 * d;
                    if v < bound {
                        best.offer(v, (t0 + c) as u32);
                        bound = best.bound();
                    }
                }
            }
        }
    });
    let cand: Vec<Vec<(f32, u32)>> = best.into_iter().map(|b| b.list).collect();
    Ok(rerank(samples, train, dim, k, Distance::L2, &cand))
}

/// Validates the inputs; returns (samples, training images, candidates kept per sample).
fn check(samples: &[f32], train: &[f32], dim: usize, k: usize) -> Result<(usize, usize, usize)> {
    if dim == 0 || !samples.len().is_multiple_of(dim) || !train.len().is_multiple_of(dim) {
        bail!("k-NN inputs are not whole images of {dim} values");
    }
    let (m, n) = (samples.len() / dim, train.len() / dim);
    if k == 0 || k > n {
        bail!("asked for {k} neighbours among {n} training images");
    }
    Ok((m, n, (k + MARGIN).min(n)))
}

/// The exact step: each sample's screened candidates re-ranked by distances recomputed in f64,
/// ties broken by training index; the first `k` are the answer.
fn rerank(
    samples: &[f32],
    train: &[f32],
    dim: usize,
    k: usize,
    distance: Distance,
    cand: &[Vec<(f32, u32)>],
) -> Neighbours {
    let mut dist = Vec::with_capacity(cand.len() * k);
    let mut idx = Vec::with_capacity(cand.len() * k);
    for (i, list) in cand.iter().enumerate() {
        let a = &samples[i * dim..(i + 1) * dim];
        let mut exact_list: Vec<(f64, u32)> = list
            .iter()
            .map(|&(_, j)| {
                let y = &train[j as usize * dim..(j as usize + 1) * dim];
                (exact(a, y, distance), j)
            })
            .collect();
        exact_list.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
        for &(d, j) in exact_list.iter().take(k) {
            dist.push(d as f32);
            idx.push(j);
        }
    }
    Neighbours { k, dist, idx }
}

/// Block sizes of [`knn_chunked`].
#[derive(Debug, Clone, Copy)]
pub struct Chunks {
    /// Training images per device upload.
    pub train: usize,
    /// Samples per distance block.
    pub samples: usize,
}

/// [`knn`] with explicit block sizes.
pub fn knn_chunked(
    samples: &[f32],
    train: &[f32],
    dim: usize,
    k: usize,
    distance: Distance,
    device: &Device,
    chunks: Chunks,
) -> Result<Neighbours> {
    let (nc, ms) = (chunks.train, chunks.samples);
    let (m, n, keep) = check(samples, train, dim, k)?;
    // Training images are the outer loop, so each is uploaded to the device once: chunks of
    // ≤ 16M values (64 MiB); samples go in blocks of `ms`, so a distance block is ms × nc.
    let nc = nc.clamp(1, n);
    let ms = ms.clamp(1, m.max(1));
    let mut cand: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(keep * 2); m];
    for t0 in (0..n).step_by(nc) {
        let t1 = (t0 + nc).min(n);
        let cols = t1 - t0;
        let (y, yn) = match distance {
            Distance::L2 => {
                let y = Tensor::<2>::from_data(
                    TensorData::new(train[t0 * dim..t1 * dim].to_vec(), [cols, dim]),
                    device,
                );
                let yn = y.clone().powi_scalar(2).sum_dim(1).reshape([1, cols]);
                (Some(y.transpose()), Some(yn))
            }
            Distance::Linf => (None, None),
        };
        for s0 in (0..m).step_by(ms) {
            let s1 = (s0 + ms).min(m);
            let rows = s1 - s0;
            let d2: Vec<f32> = match (&y, &yn) {
                (Some(yt), Some(yn)) => {
                    let x = Tensor::<2>::from_data(
                        TensorData::new(samples[s0 * dim..s1 * dim].to_vec(), [rows, dim]),
                        device,
                    );
                    let xn = x.clone().powi_scalar(2).sum_dim(1);
                    let dot = x.matmul(yt.clone());
                    (xn + yn.clone() - dot.mul_scalar(2.0))
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?
                }
                _ => {
                    // Exact L∞ (a max is order-free): 16 sample rows per task on the thread
                    // pool, training images in tiles of 32 so a tile stays in cache while
                    // the task's rows pass over it.
                    use rayon::prelude::*;
                    const ROWS: usize = 16;
                    const TILE: usize = 32;
                    let mut out = vec![0f32; rows * cols];
                    out.par_chunks_mut(ROWS * cols)
                        .enumerate()
                        .for_each(|(g, block)| {
                            let r0 = s0 + g * ROWS;
                            let nr = block.len() / cols;
                            for c0 in (0..cols).step_by(TILE) {
                                let c1 = (c0 + TILE).min(cols);
                                for r in 0..nr {
                                    let a = &samples[(r0 + r) * dim..(r0 + r + 1) * dim];
                                    for c in c0..c1 {
                                        let b = &train[(t0 + c) * dim..(t0 + c + 1) * dim];
                                        block[r * cols + c] = linf(a, b);
                                    }
                                }
                            }
                        });
                    out
                }
            };
            for r in 0..rows {
                let list = &mut cand[s0 + r];
                list.extend(
                    d2[r * cols..(r + 1) * cols]
                        .iter()
                        .enumerate()
                        .map(|(c, &v)| (v, (t0 + c) as u32)),
                );
                if list.len() > keep {
                    list.select_nth_unstable_by(keep - 1, |a, b| {
                        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
                    });
                    list.truncate(keep);
                }
            }
        }
    }
    Ok(rerank(samples, train, dim, k, distance, &cand))
}

/// max |a − b| over 16 independent lanes (vectorised by the compiler), then the tail; the
/// same value as a sequential fold for finite inputs.
fn linf(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            let d = (x[i] - y[i]).abs();
            if d > acc[i] {
                acc[i] = d;
            }
        }
    }
    let mut m = acc.iter().copied().fold(0.0, f32::max);
    for (p, q) in ra.iter().zip(rb) {
        m = m.max((p - q).abs());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::SplitMix64;

    fn brute(samples: &[f32], train: &[f32], dim: usize, k: usize, d: Distance) -> Vec<(f64, u32)> {
        let n = train.len() / dim;
        let mut out = Vec::new();
        for a in samples.chunks(dim) {
            let mut all: Vec<(f64, u32)> = (0..n)
                .map(|j| (exact(a, &train[j * dim..(j + 1) * dim], d), j as u32))
                .collect();
            all.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
            out.extend(all.into_iter().take(k));
        }
        out
    }

    #[test]
    fn matches_brute_force_including_near_duplicates() {
        let mut g = SplitMix64(5);
        let dim = 48;
        let train: Vec<f32> = (0..300 * dim)
            .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        // Samples: exact copies, tiny perturbations of training images, and fresh points.
        let mut samples = Vec::new();
        for i in 0..20 {
            let j = (i * 13) % 300;
            let eps = if i % 2 == 0 { 0.0 } else { 1e-4 };
            samples.extend(train[j * dim..(j + 1) * dim].iter().map(|v| v + eps as f32));
        }
        samples.extend((0..20 * dim).map(|_| (g.next_f64() * 2.0 - 1.0) as f32));
        for (d, nc, ms) in [
            (Distance::L2, 1 << 20, 512),
            (Distance::Linf, 1 << 20, 512),
            (Distance::L2, 37, 7),
            (Distance::Linf, 37, 7),
        ] {
            let got = knn_chunked(
                &samples,
                &train,
                dim,
                3,
                d,
                &Device::flex(),
                Chunks {
                    train: nc,
                    samples: ms,
                },
            )
            .unwrap();
            let want = brute(&samples, &train, dim, 3, d);
            if d == Distance::L2 {
                // The CPU kernel with blocks that do not divide the data, and the default.
                let cpu = knn_cpu_l2(&samples, &train, dim, 3, ms.min(9), nc.min(41)).unwrap();
                assert_eq!(cpu.idx, got.idx);
                assert_eq!(cpu.dist, got.dist);
                assert_eq!(
                    knn(&samples, &train, &[dim], 3, d, &Device::flex())
                        .unwrap()
                        .idx,
                    got.idx
                );
            }
            for (i, (dv, j)) in want.iter().enumerate() {
                assert_eq!(got.idx[i], *j, "{d:?} row {}", i / 3);
                assert!(
                    (got.dist[i] as f64 - dv).abs() <= 1e-6 * dv.max(1.0),
                    "{d:?}: {} vs {dv}",
                    got.dist[i]
                );
            }
        }
    }

    #[test]
    fn the_certified_search_is_exact_and_leaves_open_what_it_cannot_prove() {
        let shape = [3, 8, 8];
        let dim = 192;
        let mut train = bound::smooth_images(300, shape, 11);
        // Exact duplicates in the training set: ties must go to the smaller index.
        let dup = train[5 * dim..6 * dim].to_vec();
        train[40 * dim..41 * dim].copy_from_slice(&dup);
        let mut samples = Vec::new();
        for i in 0..12 {
            let j = (i * 17) % 300;
            let eps = [0.0f32, 1e-4, 0.05][i % 3];
            samples.extend(train[j * dim..(j + 1) * dim].iter().map(|v| v + eps));
        }
        samples.extend(bound::smooth_images(12, shape, 12));
        samples.extend(dup.iter());
        let mut g = SplitMix64(3);
        samples.extend((0..6 * dim).map(|_| (g.next_f64() * 2.0 - 1.0) as f32));
        let m = samples.len() / dim;
        let p = Projection::for_images(shape).unwrap();
        for k in [1, 3] {
            let want = brute(&samples, &train, dim, k, Distance::L2);
            for (keep, max_exact) in [(4, 64), (16, 64), (300, 300), (300, 5)] {
                let effort = Effort { keep, max_exact };
                let got = knn_bounded(&samples, &train, &p, k, effort).unwrap();
                for (i, (dv, j)) in want.iter().enumerate() {
                    assert_eq!(got.idx[i], *j, "k {k} keep {keep} row {}", i / k);
                    assert_eq!(got.dist[i], *dv as f32, "k {k} keep {keep} row {}", i / k);
                }
                let projected = bound::Projected::new(&train, &p);
                let c = bound::search(&samples, &projected, k, effort).unwrap();
                let open = c.found.iter().filter(|f| f.is_none()).count();
                if max_exact == 5 {
                    assert!(open > 0, "k {k}: noise needs more than 5 exact distances");
                } else if keep == 300 {
                    assert_eq!(open, 0, "every image screened: everything is proven");
                } else if keep == 16 {
                    assert!(open > 0 && open < m, "k {k}: {open} of {m} open");
                }
            }
        }
        // The dispatcher takes the certified path for images and agrees with the plain one.
        let a = knn(&samples, &train, &shape, 2, Distance::L2, &Device::flex()).unwrap();
        let b = knn_cpu_l2(&samples, &train, dim, 2, 256, 1024).unwrap();
        assert_eq!(a.idx, b.idx);
        assert_eq!(a.dist, b.dist);
    }
}
