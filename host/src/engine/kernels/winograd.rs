//! Winograd F(2×2, 3×3) convolution (Lavin & Gray 2016) for "same" 3×3 convolutions on x86-64
//! with AVX2 + FMA: 16 multiplications per 2×2 output tile and channel pair instead of 36.
//!
//! Why: the direct kernel ([`super::direct`]) runs at this machine's FMA peak (≈ 90 GFLOP/s
//! per core), and so does oneDNN's AVX2 convolution in PyTorch; on the same arithmetic the two
//! can only tie. With 2.25× fewer multiplications, the 3×3 convolutions, ≈ 70% of a UNet
//! forward pass, take ≈ 0.6 of the direct kernel's time here (`memlab bench kernels`).
//!
//! For each 4×4 input patch `d` (stride 2, zero-padded) and kernel `g`:
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, a 2×2 output tile, with
//! `Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]]`, `G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]`,
//! `Aᵀ = [[1,1,1,0],[0,1,−1,−1]]`. Summed over input channels, the element-wise product becomes
//! 16 independent matrix products per block of tiles, `M_ξ = U_ξ · V_ξ` (`C_out × C_in` times
//! `C_in × tiles`), which run on the direct kernel's register tile ([`super::direct::panel`]).
//!
//! Per image: the zero-padded input is split into even and odd columns (so that the four
//! columns of 8 neighbouring tiles are four contiguous 8-wide loads), then each block of
//! [`TB`] tiles is transformed (`V`), multiplied (`M`) and transformed back into the output,
//! all in per-thread scratch that stays in L2. Sums run in a fixed order for any thread
//! count; the results differ from the direct kernel's at the rounding level (the transforms
//! add and subtract before multiplying: relative errors of a few 10⁻⁷ on the UNets' data,
//! checked against burn's op in `tests.rs`). `MEMLAB_CONV_WINOGRAD=off` switches it off.

use super::conv::ConvShape;
use super::direct::{self, PackedWeights};
use std::mem::MaybeUninit;

/// Lanes of an AVX register of f32.
const LANES: usize = 8;
/// Tiles per block: the columns of the 16 products.
const TB: usize = 32;
/// Row stride of the per-block buffers `V` and `M` (8 floats of slack for the last group).
const LD: usize = TB + LANES;
/// Fewest input and output channels, and narrowest image, for which the transforms pay off
/// (elsewhere the direct kernel runs). The input transform's share of the work falls with
/// the output channels, the output transform's with the input channels, and images narrower
/// than 16 leave tile rows shorter than a vector. Measured forward alone, 2 threads, batch 32
/// (`memlab bench kernels`, direct → Winograd): 64 → 64 channels at 16×16 3.6 → 2.5 ms;
/// 32 → 32 at 32×32 3.7 → 3.6 (even); 64 → 64 at 8×8 1.0 → 1.0 (even, slower in the UNet).
const MIN_C_IN: usize = 32;
const MIN_C_OUT: usize = 16;
const MIN_WIDTH: usize = 16;

/// Whether the convolution `s` runs here: 3×3, stride 1, padding 1, no dilation, at least
/// [`MIN_C_IN`] input and [`MIN_C_OUT`] output channels, at least [`MIN_WIDTH`] pixels wide,
/// on a CPU with AVX2 + FMA (and not switched off).
pub fn applies(s: &ConvShape) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| {
        !std::env::var("MEMLAB_CONV_WINOGRAD").is_ok_and(|v| v == "off" || v == "0")
    });
    on && supported(s) && s.c_in >= MIN_C_IN && s.c_out >= MIN_C_OUT && s.w >= MIN_WIDTH
}

/// Whether [`image`] can compute `s` at all: 3×3, stride 1, padding 1, no dilation, on a CPU
/// with AVX2 + FMA.
fn supported(s: &ConvShape) -> bool {
    direct::available()
        && (s.kh, s.kw) == (3, 3)
        && s.stride == [1, 1]
        && s.pad == [1, 1]
        && s.dil == [1, 1]
}

/// The 16 transformed kernels `U_ξ = (G g Gᵀ)_ξ`, each a `c_out × c_in` matrix packed for
/// [`direct::panel`].
pub struct Filters {
    per_xi: Vec<PackedWeights>,
}

impl Filters {
    /// Transforms `weight` (`[c_out, c_in, 3, 3]`), in f64 with one rounding per value.
    pub fn new(weight: &[f32], c_out: usize, c_in: usize) -> Filters {
        assert_eq!(weight.len(), c_out * c_in * 9);
        let mut u = vec![vec![0.0f32; c_out * c_in]; 16];
        for (k, g) in weight.chunks_exact(9).enumerate() {
            let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            // G·g: 4 rows of 3.
            let mut gg = [[0.0f64; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                gg[0][c] = g0;
                gg[1][c] = 0.5 * (g0 + g1 + g2);
                gg[2][c] = 0.5 * (g0 - g1 + g2);
                gg[3][c] = g2;
            }
            for (i, row) in gg.iter().enumerate() {
                let (r0, r1, r2) = (row[0], row[1], row[2]);
                let t = [r0, 0.5 * (r0 + r1 + r2), 0.5 * (r0 - r1 + r2), r2];
                for (j, v) in t.iter().enumerate() {
                    u[i * 4 + j][k] = *v as f32;
                }
            }
        }
        Filters {
            per_xi: u
                .iter()
                .map(|m| PackedWeights::new(m, c_out, c_in, 1))
                .collect(),
        }
    }
}

/// Tiles per column and row of an `h × w` output.
fn tiles(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// Floats in one even- or odd-column plane row (with slack for 8-wide loads).
fn half_row(tw: usize) -> usize {
    tw + 1 + LANES
}

/// Scratch floats [`image`] needs for geometry `s`.
pub fn scratch_len(s: &ConvShape) -> usize {
    let (th, tw) = tiles(s.h, s.w);
    2 * s.c_in * (2 * th + 2) * half_row(tw) + 16 * s.c_in * LD + 16 * s.c_out * LD
}

/// One image: `x` is `[c_in, h, w]`, `y` the output `[c_out, h, w]` (every element written),
/// `scratch` at least [`scratch_len`] floats (contents on entry do not matter).
///
/// # Panics
/// If the buffers do not match the geometry, or the convolution is not 3×3 with stride 1 and
/// padding 1 on an AVX2 + FMA CPU.
pub fn image(
    s: &ConvShape,
    x: &[f32],
    filters: &Filters,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
    scratch: &mut [f32],
) {
    assert!(supported(s), "Winograd convolution called for {s:?}");
    let (h, w, c_in, c_out) = (s.h, s.w, s.c_in, s.c_out);
    assert_eq!(x.len(), c_in * h * w);
    assert_eq!(y.len(), c_out * h * w);
    let (th, tw) = tiles(h, w);
    let (rows, hr) = (2 * th + 2, half_row(tw));
    let plane = rows * hr;
    let (halves, rest) = scratch[..scratch_len(s)].split_at_mut(2 * c_in * plane);
    let (v, m) = rest.split_at_mut(16 * c_in * LD);
    deinterleave(s, x, halves, rows, hr);
    let (even, odd) = halves.split_at(c_in * plane);
    let n_tiles = th * tw;
    let zero = vec![0.0f32; c_out];
    let bias = bias.unwrap_or(&zero);
    for t0 in (0..n_tiles).step_by(TB) {
        let nt = TB.min(n_tiles - t0);
        let cols = nt.next_multiple_of(2 * LANES);
        // SAFETY (both transforms): AVX2 checked by `applies`; every 8-wide load and store is
        // inside its buffer, as their comments say.
        unsafe { input_transform(even, odd, plane, hr, c_in, tw, t0, nt, v) };
        // Columns past the block's tiles are multiplied too (16 at a time): keep them zero.
        for row in v.chunks_exact_mut(LD) {
            row[nt..cols].fill(0.0);
        }
        let m_uninit: &mut [MaybeUninit<f32>] =
            // SAFETY: f32 and MaybeUninit<f32> have the same layout; `panel` only writes.
            unsafe { &mut *(m as *mut [f32] as *mut [MaybeUninit<f32>]) };
        for (xi, u) in filters.per_xi.iter().enumerate() {
            direct::panel(
                &v[xi * c_in * LD..(xi + 1) * c_in * LD],
                LD,
                c_in,
                u,
                &mut m_uninit[xi * c_out * LD..(xi + 1) * c_out * LD],
                cols,
            );
        }
        unsafe { output_transform(m, c_out, h, w, tw, t0, nt, bias, y) };
    }
}

/// Splits the zero-padded image (one zero row and column before, and after up to the tile
/// grid's end) into even and odd padded columns: `halves[0]` then `halves[1]`, each
/// `c_in × rows × hr`, with zeros in the slack.
fn deinterleave(s: &ConvShape, x: &[f32], halves: &mut [f32], rows: usize, hr: usize) {
    let (h, w) = (s.h, s.w);
    let plane = rows * hr;
    let (even, odd) = halves.split_at_mut(s.c_in * plane);
    for ci in 0..s.c_in {
        for pr in 0..rows {
            let (e, o) = (
                &mut even[ci * plane + pr * hr..][..hr],
                &mut odd[ci * plane + pr * hr..][..hr],
            );
            if pr == 0 || pr > h {
                e.fill(0.0);
                o.fill(0.0);
                continue;
            }
            let row = &x[(ci * h + pr - 1) * w..][..w];
            // Padded column pc holds input column pc − 1: even pc = 2j is column 2j − 1,
            // odd pc = 2j + 1 is column 2j.
            e[0] = 0.0;
            for (j, pair) in row.chunks(2).enumerate() {
                o[j] = pair[0];
                if let Some(&v) = pair.get(1) {
                    e[j + 1] = v;
                }
            }
            e[w / 2 + 1..].fill(0.0);
            o[w.div_ceil(2)..].fill(0.0);
        }
    }
}

/// `V[ξ][ci][t − t0] = (Bᵀ d B)_ξ` for tiles `t0 .. t0 + nt`, 8 neighbouring tiles of a tile
/// row at a time (a group that runs past the row's end or the block writes lanes that the
/// next group or the zeroed columns overwrite).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    even: &[f32],
    odd: &[f32],
    plane: usize,
    hr: usize,
    c_in: usize,
    tw: usize,
    t0: usize,
    nt: usize,
    v: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(v.len() >= 16 * c_in * LD);
    assert!(even.len() >= c_in * plane && odd.len() >= c_in * plane);
    let xi_stride = c_in * LD;
    let mut t = t0;
    while t < t0 + nt {
        let (ty, tx) = (t / tw, t % tw);
        let col = t - t0;
        assert!((2 * ty + 3) * hr + tx + LANES < plane && col + LANES <= LD);
        for ci in 0..c_in {
            // Rows 2·ty .. 2·ty + 3 of the padded image; loads reach tx + 1 + 8 ≤ tw + 8 < hr
            // (asserted above with the plane's size).
            let base = ci * plane + 2 * ty * hr + tx;
            // SAFETY: inside even/odd by the asserts.
            let (e, o) = unsafe { (even.as_ptr().add(base), odd.as_ptr().add(base)) };
            // Column c of patch row r for the 8 tiles (even, odd, even + 1, odd + 1).
            // SAFETY: r·hr + c/2 + 8 ≤ 3·hr + 9 stays inside the plane (asserted).
            let d = |r: usize, c: usize| unsafe {
                let p = if c.is_multiple_of(2) { e } else { o };
                _mm256_loadu_ps(p.add(r * hr + c / 2))
            };
            // V[ξ][ci][col ..], ξ = 4·i + j: one store pointer stepping by a ξ stride.
            // SAFETY: ξ·c_in·LD + ci·LD + col + 8 ≤ 16·c_in·LD (asserted).
            let mut dst = unsafe { v.as_mut_ptr().add(ci * LD + col) };
            // One row i of Bᵀ·d at a time (rows of Bᵀ: d0 − d2, d1 + d2, d2 − d1, d1 − d3),
            // then ·B: 12 live registers, no spills (loads are re-issued from L1 instead).
            for i in 0..4 {
                let row = |c: usize| match i {
                    0 => _mm256_sub_ps(d(0, c), d(2, c)),
                    1 => _mm256_add_ps(d(1, c), d(2, c)),
                    2 => _mm256_sub_ps(d(2, c), d(1, c)),
                    _ => _mm256_sub_ps(d(1, c), d(3, c)),
                };
                let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                let out = [
                    _mm256_sub_ps(a0, a2),
                    _mm256_add_ps(a1, a2),
                    _mm256_sub_ps(a2, a1),
                    _mm256_sub_ps(a1, a3),
                ];
                for o in out {
                    // SAFETY: see `dst`.
                    unsafe {
                        _mm256_storeu_ps(dst, o);
                        dst = dst.wrapping_add(xi_stride);
                    }
                }
            }
        }
        t += LANES.min(tw - tx).min(t0 + nt - t);
    }
}

/// `y` of tiles `t0 .. t0 + nt` from `M`: `Aᵀ M A + bias` per output channel, 8 tiles of a
/// tile row at a time, writing only the pixels inside the image (each exactly once).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    m: &[f32],
    c_out: usize,
    h: usize,
    w: usize,
    tw: usize,
    t0: usize,
    nt: usize,
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    assert!(m.len() >= 16 * c_out * LD && bias.len() >= c_out);
    let mut t = t0;
    while t < t0 + nt {
        let (ty, tx) = (t / tw, t % tw);
        let run = LANES.min(tw - tx).min(t0 + nt - t);
        let col = t - t0;
        assert!(col + LANES <= LD);
        // Output pixels of this group's rows: columns 2·tx .. 2·tx + 2·run, within w.
        let px = (2 * run).min(w - 2 * tx);
        for co in 0..c_out {
            // SAFETY: reads M[ξ][co][col .. col + 8] with col + 8 ≤ LD (asserted).
            let src = unsafe { m.as_ptr().add(co * LD + col) };
            let mv = |xi: usize| unsafe { _mm256_loadu_ps(src.add(xi * c_out * LD)) };
            // Aᵀ·M (rows 0 + 1 + 2 and 1 − 2 − 3), one column c at a time.
            let mut s = [[_mm256_setzero_ps(); 4]; 2];
            #[allow(clippy::needless_range_loop)]
            for c in 0..4 {
                let (m0, m1, m2, m3) = (mv(c), mv(4 + c), mv(8 + c), mv(12 + c));
                s[0][c] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                s[1][c] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
            }
            let b = _mm256_set1_ps(bias[co]);
            for (i, si) in s.iter().enumerate() {
                let row = 2 * ty + i;
                if row >= h {
                    break;
                }
                let left = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(si[0], si[1]), si[2]), b);
                let right = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(si[1], si[2]), si[3]), b);
                // Interleave: pixel 2k is left[k], pixel 2k + 1 is right[k].
                let lo = _mm256_unpacklo_ps(left, right);
                let hi = _mm256_unpackhi_ps(left, right);
                let first = _mm256_permute2f128_ps(lo, hi, 0x20);
                let second = _mm256_permute2f128_ps(lo, hi, 0x31);
                let dst = &mut y[(co * h + row) * w + 2 * tx..][..px];
                if px == 2 * LANES {
                    // SAFETY: `dst` holds 16 floats.
                    unsafe {
                        let p = dst.as_mut_ptr().cast::<f32>();
                        _mm256_storeu_ps(p, first);
                        _mm256_storeu_ps(p.add(LANES), second);
                    }
                } else {
                    let mut tmp = [0.0f32; 2 * LANES];
                    // SAFETY: `tmp` holds 16 floats.
                    unsafe {
                        _mm256_storeu_ps(tmp.as_mut_ptr(), first);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(LANES), second);
                    }
                    for (d, v) in dst.iter_mut().zip(tmp) {
                        d.write(v);
                    }
                }
            }
        }
        t += run;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    _: &[f32],
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("the Winograd convolution is x86-64 only (`applies` is false elsewhere)")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &[f32],
    _: &mut [MaybeUninit<f32>],
) {
    unreachable!("the Winograd convolution is x86-64 only (`applies` is false elsewhere)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(c_in: usize, c_out: usize, h: usize, w: usize) -> ConvShape {
        ConvShape {
            n: 1,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1, 1],
            dil: [1, 1],
        }
    }

    #[test]
    fn image_matches_the_definition() {
        if !direct::available() {
            return;
        }
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        // Even and odd sides (partial tiles), a tile row narrower than 8 tiles, blocks that
        // start mid-row (tw = 9, 13), several blocks, channel counts off the 6-wide tile.
        for (c_in, c_out, h, w) in [
            (16, 6, 8, 8),
            (17, 13, 7, 9),
            (16, 3, 5, 26),
            (20, 7, 13, 17),
            (16, 32, 16, 16),
            (18, 5, 1, 1),
        ] {
            let s = shape(c_in, c_out, h, w);
            let x: Vec<f32> = (0..c_in * h * w).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..c_out * c_in * 9).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rnd()).collect();
            let filters = Filters::new(&wt, c_out, c_in);
            let mut scratch = vec![f32::NAN; scratch_len(&s)];
            let mut y = vec![MaybeUninit::new(f32::NAN); c_out * h * w];
            image(&s, &x, &filters, Some(&bias), &mut y, &mut scratch);
            for co in 0..c_out {
                for i in 0..h {
                    for j in 0..w {
                        let mut want = bias[co] as f64;
                        for ci in 0..c_in {
                            for ki in 0..3 {
                                for kj in 0..3 {
                                    let (r, c) =
                                        ((i + ki).wrapping_sub(1), (j + kj).wrapping_sub(1));
                                    if r < h && c < w {
                                        want += wt[((co * c_in + ci) * 3 + ki) * 3 + kj] as f64
                                            * x[(ci * h + r) * w + c] as f64;
                                    }
                                }
                            }
                        }
                        // SAFETY: every element is written (NaN would fail below).
                        let got = unsafe { y[(co * h + i) * w + j].assume_init() } as f64;
                        assert!(
                            (got - want).abs() < 1e-5 * (1.0 + want.abs()) * (c_in as f64).sqrt(),
                            "{c_in}→{c_out} {h}×{w} at ({co}, {i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
