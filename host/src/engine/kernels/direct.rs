//! Direct "same" convolution on x86-64 with AVX2 + FMA: every output value is accumulated in a
//! register over all input channels and kernel taps, with no im2col matrix and no GEMM calls.
//!
//! Why: the GEMM-per-tap path ([`super::conv::forward_taps`]) runs 9 GEMMs with `K = C_in`
//! (32–128 in the UNets) per image and layer, so each output tile is loaded and stored 9 times
//! and both operands are packed 9 times; at batch 32 that left memlab's forward ≈ 1.4× PyTorch's
//! oneDNN convolutions (BENCHMARKS.md). Here a register tile of up to 6 output channels × 16
//! output pixels (12 AVX registers) is loaded once with the bias, receives `C_in · kh · kw`
//! broadcast-weight × input-vector FMAs, and is stored once, straight into the NCHW output.
//!
//! Layout. The image is copied into zero-padded planes (`hp × wp` per channel, plus slack so
//! that an 8-wide load starting anywhere in the last row stays inside the buffer); output pixel
//! `(o, j)` of tap `(ki, kj)` reads padded element `(o + ki)·wp + j + kj` of each plane. The
//! pixels of the output are cut into *segments* of 8 along a row (the last one of a row
//! shorter when `w` is not a multiple of 8); a tile is two segments (the two halves of 16
//! pixels of a row, or two rows of a narrow image), so an 8×8 image wastes nothing. The
//! weights of a block of output channels are packed as `[c_in][tap][channel]`, so that each
//! step broadcasts consecutive floats.
//!
//! The input gradient of a "same" convolution is the same convolution of `dy` with the kernel
//! flipped and transposed ([`super::conv::backward_input`]), so it runs [`image`] too; the
//! weight gradient has its own kernel ([`weight_grad_image`]: output × input channel tiles of
//! one tap, summed over the pixels in 8 lanes).
//!
//! Sums run in a fixed order (input channel, then tap, each with one rounding per FMA) for any
//! thread count: deterministic, but in another order than the GEMM path and burn's op, so the
//! results differ from those at the rounding level. Other CPUs (no AVX2/FMA, other
//! architectures) keep the GEMM path. `MEMLAB_CONV_DIRECT=off` switches this kernel off, for
//! A/B measurements and cross-checks.

use super::conv::ConvShape;
use std::mem::MaybeUninit;

/// Output channels per register tile.
const MR: usize = 6;
/// Pixels per segment (one AVX register of f32).
pub const LANES: usize = 8;
/// Floats of slack after the padded planes: an 8-wide load may start at the last padded pixel.
pub const SLACK: usize = LANES;

/// Whether this CPU runs the direct kernel (and it is not switched off).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("MEMLAB_CONV_DIRECT").is_ok_and(|v| v == "off" || v == "0");
        !off && super::cpu::avx2_fma()
    })
}

/// One run of up to 8 output pixels along a row: where its first pixel reads the padded
/// image (tap (0, 0)), where it writes the output, and how many pixels it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    src: usize,
    dst: usize,
    len: usize,
}

/// The segments of an `h × w` output whose padded rows are `wp` wide, in row order.
fn segments(h: usize, w: usize, wp: usize) -> Vec<Segment> {
    let mut out = Vec::with_capacity(h * w.div_ceil(LANES));
    for o in 0..h {
        for j in (0..w).step_by(LANES) {
            out.push(Segment {
                src: o * wp + j,
                dst: o * w + j,
                len: LANES.min(w - j),
            });
        }
    }
    out
}

/// Splits `c_out` channels into blocks of at most [`MR`], as even as possible (32 → 6, 6, 5,
/// 5, 5, 5 rather than 6, 6, 6, 6, 6, 2: a 2-channel tile has 4 accumulators and spends most
/// of its time loading). Returns `(first channel, width)` per block.
fn blocks(c_out: usize) -> Vec<(usize, usize)> {
    even_blocks(c_out, MR)
}

/// Convolution weights `[c_out, c_in, kh, kw]` repacked per block of output channels
/// ([`blocks`]) as `[c_in][tap][channel of the block]`.
pub struct PackedWeights {
    data: Vec<f32>,
    blocks: Vec<(usize, usize)>,
    per_channel: usize,
}

impl PackedWeights {
    /// Packs `weight` (`c_out × c_in·taps`, row-major).
    pub fn new(weight: &[f32], c_out: usize, c_in: usize, taps: usize) -> PackedWeights {
        let per_channel = c_in * taps;
        debug_assert_eq!(weight.len(), c_out * per_channel);
        let mut data = vec![0.0; weight.len()];
        let blocks = blocks(c_out);
        for &(b0, mr) in &blocks {
            let block = &mut data[b0 * per_channel..(b0 + mr) * per_channel];
            for m in 0..mr {
                let row = &weight[(b0 + m) * per_channel..][..per_channel];
                for (i, v) in row.iter().enumerate() {
                    // i = ci·taps + t, the same order as the block's [c_in][tap] steps.
                    block[i * mr + m] = *v;
                }
            }
        }
        PackedWeights {
            data,
            blocks,
            per_channel,
        }
    }

    /// Each block's starting accumulator values: its channels' `bias` (zeros without one).
    fn inits(&self, bias: Option<&[f32]>) -> Vec<[f32; MR]> {
        self.blocks
            .iter()
            .map(|&(b0, mr)| {
                let mut init = [0.0f32; MR];
                if let Some(bias) = bias {
                    init[..mr].copy_from_slice(&bias[b0..b0 + mr]);
                }
                init
            })
            .collect()
    }

    /// The packed weights of the block starting at output channel `b0` with `mr` channels.
    fn block(&self, b0: usize, mr: usize) -> &[f32] {
        &self.data[b0 * self.per_channel..(b0 + mr) * self.per_channel]
    }
}

/// One image of a "same" convolution: `xp` is the zero-padded image (`c_in` planes of
/// `hp·wp`, then [`SLACK`] floats), `y` the image's output `[c_out, h, w]`: every element is
/// written.
///
/// # Panics
/// If the buffers are shorter than the geometry needs, or [`available`] is false.
pub fn image(
    s: &ConvShape,
    hp: usize,
    wp: usize,
    xp: &[f32],
    packed: &PackedWeights,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    assert!(
        available(),
        "direct convolution called on a CPU without AVX2/FMA"
    );
    let plane = hp * wp;
    assert_eq!(y.len(), s.c_out * s.h * s.w);
    assert_eq!(hp, s.h + s.kh - 1);
    assert_eq!(wp, s.w + s.kw - 1);
    let taps: Vec<usize> = (0..s.kh)
        .flat_map(|ki| (0..s.kw).map(move |kj| ki * wp + kj))
        .collect();
    let segs = segments(s.h, s.w, wp);
    // The furthest any 8-wide load reaches: the last segment's last tap in the last plane
    // (within the [`SLACK`] of a padded image).
    let reach = segs.last().map_or(0, |g| g.src) + taps.last().copied().unwrap_or(0) + LANES;
    assert!(xp.len() >= (s.c_in.max(1) - 1) * plane + reach);
    let p = s.h * s.w;
    let inits = packed.inits(bias);
    // Input channels are summed in chunks of ≤ CI_CHUNK: a tile's input rows for one chunk
    // (chunk × kh rows × ≤ 3 cache lines) and the chunk's weights fit L1 together, so the
    // tiles that follow (the rest of the row, then the next row) find most of their input
    // lines there (measured single-threaded at 32×32: 64 → 32 channels 80 → 86 GFLOP/s,
    // 64 → 64 80 → 90). Later chunks
    // continue from the partial sums stored by the previous one: the same sums in the same
    // order, so chunking does not change a bit.
    let chunks = if s.w >= CHUNK_MIN_WIDTH && taps.len() > 1 {
        even_blocks(s.c_in, CI_CHUNK)
    } else {
        vec![(0, s.c_in)]
    };
    let taps_n = taps.len();
    let run = |y: &mut [MaybeUninit<f32>],
               bi: usize,
               ci: (usize, usize),
               a: Segment,
               b: Option<Segment>| {
        let (b0, mr) = packed.blocks[bi];
        let (ci0, cn) = ci;
        let w = &packed.block(b0, mr)[ci0 * taps_n * mr..(ci0 + cn) * taps_n * mr];
        let x = &xp[ci0 * plane..];
        let out = &mut y[b0 * p..(b0 + mr) * p];
        let init = (ci0 == 0).then_some(&inits[bi]);
        // SAFETY: AVX2/FMA checked above (`available`); every load of a segment reads
        // x[ci·plane + src + tap .. + 8] for ci < cn, and src + tap + 8 ≤ `reach` (segments
        // and taps are in increasing order), asserted to lie inside xp for the last plane;
        // stores (and the loads of partial sums, written by the previous chunk) are bounded
        // by `len` inside the c_out block of `y`.
        unsafe { tile_for(mr, x, plane, cn, &taps, w, init, out, p, a, b) }
    };
    // Block-outer: the block's packed weights (≤ 6·CI_CHUNK·taps floats per chunk) stay in
    // L1 while the image streams from L2. (Pair-outer, keeping a pair's input rows in L1 and
    // streaming the weights instead, measured 10–30% slower; so did tiles going down the
    // columns instead of along the rows, 64 → 64 channels at 32×32 87 → 69 GFLOP/s.) A padded
    // image larger than the L2
    // budget is cut into bands of rows, each run block-outer, so that its rows stay in L2
    // across the blocks instead of streaming from L3 once per block.
    let per_row = segs.len() / s.h.max(1);
    let pairs: Vec<&[Segment]> = segs.chunks(2).collect();
    let per_band = band_pairs(s, wp, per_row);
    for band in pairs.chunks(per_band) {
        for bi in 0..packed.blocks.len() {
            for &ci in &chunks {
                for pair in band {
                    run(y, bi, ci, pair[0], pair.get(1).copied());
                }
            }
        }
    }
}

/// Input channels per chunk of [`image`]'s sums.
const CI_CHUNK: usize = 32;
/// Narrowest image whose sums are chunked (1×1 convolutions never are: a tile reads one line
/// per input channel, and chunks would only add partial-sum traffic to short sums). Below
/// it a tile covers whole rows, so the next
/// tile (the next rows) reuses the input lines anyway, and chunks only add their partial-sum
/// traffic (measured single-threaded, 64 → 64 channels: 32×32 80 → 85 GFLOP/s with chunks of
/// 32; 16×16 93 → 88 and 8×8 (128 → 64) 98 → 80 without this limit).
const CHUNK_MIN_WIDTH: usize = 4 * LANES;

/// A small GEMM on the register tile: `out[m·ld + j] = Σ_ci w[ci][m] · v[ci·ld + j]` for
/// every output channel `m` of `packed` (`c_out × c_in`, one tap) and columns `j < cols`, with
/// `cols` a multiple of 16 and `ld ≥ cols` the row stride of both `v` and `out`; every one of
/// those output elements is written. (The Winograd convolution's 16 products per tile block.)
///
/// # Panics
/// If the buffers are shorter than that, or [`available`] is false.
pub(super) fn panel(
    v: &[f32],
    ld: usize,
    c_in: usize,
    packed: &PackedWeights,
    out: &mut [MaybeUninit<f32>],
    cols: usize,
) {
    assert!(
        available(),
        "direct convolution called on a CPU without AVX2/FMA"
    );
    let c_out = packed.blocks.last().map_or(0, |&(b0, mr)| b0 + mr);
    assert_eq!(packed.per_channel, c_in);
    assert!(cols.is_multiple_of(2 * LANES) && cols <= ld);
    assert!(v.len() >= c_in.saturating_sub(1) * ld + cols);
    assert!(out.len() >= c_out * ld);
    let zero = [0.0f32; MR];
    for &(b0, mr) in &packed.blocks {
        let w = packed.block(b0, mr);
        let out = &mut out[b0 * ld..(b0 + mr) * ld];
        for j in (0..cols).step_by(2 * LANES) {
            let a = Segment {
                src: j,
                dst: j,
                len: LANES,
            };
            let b = Some(Segment {
                src: j + LANES,
                dst: j + LANES,
                len: LANES,
            });
            // SAFETY: AVX2/FMA checked above; loads read v[ci·ld + j .. j + 16] with
            // j + 16 ≤ cols (asserted inside v), stores out[m·ld + j .. j + 16] for m < mr.
            unsafe { tile_for(mr, v, ld, c_in, &[0], w, Some(&zero), out, ld, a, b) }
        }
    }
}

/// Floats of input per band of [`pointwise`] (16 KiB: half of L1).
const POINTWISE_BAND: usize = 4096;

/// Scratch floats [`pointwise`] needs for `c_in` input channels.
pub fn pointwise_scratch(c_in: usize) -> usize {
    let (_, stride) = pointwise_band(c_in);
    c_in * stride
}

/// Pixels per band of [`pointwise`] (a multiple of 16, 16..=256) and the scratch row stride.
fn pointwise_band(c_in: usize) -> (usize, usize) {
    let px = (POINTWISE_BAND / c_in.max(1) / (2 * LANES) * (2 * LANES)).clamp(2 * LANES, 256);
    (px, px + LANES)
}

/// One image of a 1×1 convolution (`x`: `c_in` planes of `p` pixels; `y`: `c_out` planes):
/// every element of `y` is written.
///
/// The tile of [`image`] with a single tap, over bands of pixels copied to `scratch`
/// ([`pointwise_scratch`] floats) with a row stride of `band + 8`: read in place, every input
/// channel of a 32×32 image starts 4 KiB after the previous one, so the `C_in` lines a tile
/// reads all fall into one L1 set and evict each other (measured: 44 GFLOP/s single-threaded
/// for 64 → 32 channels, against ≈ 90 for a 3×3 convolution). All output blocks then run
/// over the band while it sits in L1.
///
/// # Panics
/// If the buffers do not match the geometry, or [`available`] is false.
pub fn pointwise(
    c_in: usize,
    p: usize,
    x: &[f32],
    packed: &PackedWeights,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
    scratch: &mut [f32],
) {
    assert!(
        available(),
        "direct convolution called on a CPU without AVX2/FMA"
    );
    let c_out = packed.blocks.last().map_or(0, |&(b0, mr)| b0 + mr);
    assert_eq!(x.len(), c_in * p);
    assert_eq!(y.len(), c_out * p);
    assert_eq!(packed.per_channel, c_in);
    let (band, stride) = pointwise_band(c_in);
    assert!(scratch.len() >= c_in * stride);
    let inits = packed.inits(bias);
    let mut segs = Vec::with_capacity(band / LANES);
    for p0 in (0..p).step_by(band) {
        let len = band.min(p - p0);
        for ci in 0..c_in {
            scratch[ci * stride..][..len].copy_from_slice(&x[ci * p + p0..][..len]);
        }
        segs.clear();
        segs.extend((0..len).step_by(LANES).map(|j| Segment {
            src: j,
            dst: p0 + j,
            len: LANES.min(len - j),
        }));
        for (bi, &(b0, mr)) in packed.blocks.iter().enumerate() {
            let w = packed.block(b0, mr);
            let out = &mut y[b0 * p..(b0 + mr) * p];
            let init = Some(&inits[bi]);
            for pair in segs.chunks(2) {
                let (a, b) = (pair[0], pair.get(1).copied());
                // SAFETY: AVX2/FMA checked above; a segment's 8-wide load reads
                // scratch[ci·stride + src .. + 8] with src + 8 ≤ band + 8 = stride (lanes past
                // `len` read stale scratch and are never stored); stores are bounded by `len`
                // inside the block's planes of `y`.
                unsafe { tile_for(mr, scratch, stride, c_in, &[0], w, init, out, p, a, b) }
            }
        }
    }
}

/// Bytes of padded input one band may span (about half of a 512 KiB L2, leaving room for
/// the output rows and the weights).
const BAND_BYTES: usize = 192 * 1024;

/// Segment pairs per band of [`image`]: all of them when the padded image fits
/// [`BAND_BYTES`], otherwise as many output rows as fit with their `kh − 1` halo rows (at
/// least one row).
fn band_pairs(s: &ConvShape, wp: usize, segs_per_row: usize) -> usize {
    let row_bytes = s.c_in * wp * std::mem::size_of::<f32>();
    let total = (s.h * segs_per_row).div_ceil(2).max(1);
    if row_bytes * (s.h + s.kh - 1) <= BAND_BYTES {
        return total;
    }
    let rows = (BAND_BYTES / row_bytes.max(1))
        .saturating_sub(s.kh - 1)
        .max(1);
    (rows * segs_per_row).div_ceil(2).clamp(1, total)
}

/// `M` output channels × two segments: `acc[m][v] = init[m] + Σ_ci Σ_t w[ci][t][m] ·
/// xp[ci·plane + seg_v.src + taps[t] ..]`, stored at `out[m·p + seg_v.dst ..][..len]`.
///
/// # Safety
/// AVX2 and FMA must be available; the buffers must hold every segment as [`image`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize>(
    xp: &[f32],
    plane: usize,
    c_in: usize,
    taps: &[usize],
    w: &[f32],
    init: Option<&[f32; MR]>,
    out: &mut [MaybeUninit<f32>],
    p: usize,
    a: Segment,
    b: Option<Segment>,
) {
    use std::arch::x86_64::*;
    let b_seg = b.unwrap_or(Segment { len: 0, ..a });
    // Plain indexing over constant ranges throughout: iterators over `acc` (or arrays of its
    // values) can stop LLVM from keeping the accumulators in registers, and then every FMA
    // is followed by a store to the stack (measured: 3× slower).
    // The branches of loading and storing partial rows stay outside the loops that touch
    // `acc` (through `tmp`), so that those loops unroll and `acc` lives in registers.
    let mut tmp = [[[0.0f32; LANES]; 2]; M];
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    if let Some(init) = init {
        #[allow(clippy::needless_range_loop)]
        for m in 0..M {
            let v = _mm256_set1_ps(init[m]);
            acc[m] = [v, v];
        }
    } else {
        for (m, t) in tmp.iter_mut().enumerate() {
            // SAFETY: the previous chunk stored these values.
            unsafe {
                load(out, m * p, a, &mut t[0]);
                load(out, m * p, b_seg, &mut t[1]);
            }
        }
        #[allow(clippy::needless_range_loop)]
        for m in 0..M {
            // SAFETY: `tmp` rows hold 8 floats.
            unsafe {
                acc[m] = [
                    _mm256_loadu_ps(tmp[m][0].as_ptr()),
                    _mm256_loadu_ps(tmp[m][1].as_ptr()),
                ];
            }
        }
    }
    let x = xp.as_ptr();
    let mut wp = w.as_ptr();
    debug_assert_eq!(w.len(), M * c_in * taps.len());
    for ci in 0..c_in {
        // SAFETY (all pointer arithmetic below): within xp and w by the caller's contract.
        let (xa, xb) = unsafe { (x.add(ci * plane + a.src), x.add(ci * plane + b_seg.src)) };
        for &t in taps {
            let (va, vb) = unsafe { (_mm256_loadu_ps(xa.add(t)), _mm256_loadu_ps(xb.add(t))) };
            #[allow(clippy::needless_range_loop)]
            for m in 0..M {
                let k = unsafe { _mm256_broadcast_ss(&*wp.add(m)) };
                acc[m][0] = _mm256_fmadd_ps(k, va, acc[m][0]);
                acc[m][1] = _mm256_fmadd_ps(k, vb, acc[m][1]);
            }
            wp = unsafe { wp.add(M) };
        }
    }
    #[allow(clippy::needless_range_loop)]
    for m in 0..M {
        // SAFETY: `tmp` rows hold 8 floats.
        unsafe {
            _mm256_storeu_ps(tmp[m][0].as_mut_ptr(), acc[m][0]);
            _mm256_storeu_ps(tmp[m][1].as_mut_ptr(), acc[m][1]);
        }
    }
    for (m, t) in tmp.iter().enumerate() {
        store(out, m * p, a, &t[0]);
        store(out, m * p, b_seg, &t[1]);
    }
}

/// [`tile`] for a block of `mr` output channels (1..=6).
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile_for(
    mr: usize,
    xp: &[f32],
    plane: usize,
    c_in: usize,
    taps: &[usize],
    w: &[f32],
    init: Option<&[f32; MR]>,
    out: &mut [MaybeUninit<f32>],
    p: usize,
    a: Segment,
    b: Option<Segment>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match mr {
            6 => tile::<6>(xp, plane, c_in, taps, w, init, out, p, a, b),
            5 => tile::<5>(xp, plane, c_in, taps, w, init, out, p, a, b),
            4 => tile::<4>(xp, plane, c_in, taps, w, init, out, p, a, b),
            3 => tile::<3>(xp, plane, c_in, taps, w, init, out, p, a, b),
            2 => tile::<2>(xp, plane, c_in, taps, w, init, out, p, a, b),
            _ => tile::<1>(xp, plane, c_in, taps, w, init, out, p, a, b),
        }
    }
}

/// Writes the first `seg.len` values of `v` at `out[base + seg.dst ..]`.
#[inline(always)]
fn store(out: &mut [MaybeUninit<f32>], base: usize, seg: Segment, v: &[f32; LANES]) {
    let dst = &mut out[base + seg.dst..][..seg.len];
    if let Ok(d) = <&mut [MaybeUninit<f32>; LANES]>::try_from(&mut *dst) {
        // One vector move for a full segment.
        *d = v.map(MaybeUninit::new);
        return;
    }
    for (d, t) in dst.iter_mut().zip(v) {
        d.write(*t);
    }
}

/// Reads the `seg.len` values at `out[base + seg.dst ..]` into the first lanes of `v`.
///
/// # Safety
/// Those values must have been written.
#[inline(always)]
unsafe fn load(out: &[MaybeUninit<f32>], base: usize, seg: Segment, v: &mut [f32; LANES]) {
    let src = &out[base + seg.dst..][..seg.len];
    if let Ok(s) = <&[MaybeUninit<f32>; LANES]>::try_from(src) {
        // SAFETY: written by the previous chunk (the caller's contract).
        *v = s.map(|x| unsafe { x.assume_init() });
        return;
    }
    for (t, s) in v.iter_mut().zip(src) {
        // SAFETY: written by the previous chunk (the caller's contract).
        *t = unsafe { s.assume_init() };
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize>(
    _: &[f32],
    _: usize,
    _: usize,
    _: &[usize],
    _: &[f32],
    _: Option<&[f32; MR]>,
    _: &mut [MaybeUninit<f32>],
    _: usize,
    _: Segment,
    _: Option<Segment>,
) {
    unreachable!("the direct convolution is x86-64 only (`available` is false elsewhere)")
}

/// Output channels × input channels per weight-gradient register tile.
const GRAD_CO: usize = 3;
const GRAD_CI: usize = 3;

/// Splits `n` into blocks of at most `most`, as even as possible: `(first, width)` per block.
fn even_blocks(n: usize, most: usize) -> Vec<(usize, usize)> {
    let nb = n.div_ceil(most).max(1);
    let (base, extra) = (n / nb, n % nb);
    let mut at = 0;
    (0..nb)
        .map(|i| {
            let w = base + usize::from(i < extra);
            at += w;
            (at - w, w)
        })
        .filter(|&(_, w)| w > 0)
        .collect()
}

/// Weight gradient of one image of a "same" convolution, added into `dw`
/// (`[c_out, c_in, kh, kw]`): `dw[co][ci][t] += Σ_pixels dy[co][pixel] · xp[ci][pixel + tap t]`.
/// `xp` is the zero-padded image as for [`image`], `dy` the image's output gradient
/// `[c_out, h, w]`.
///
/// A register tile holds 3 output × 3 input channels of one tap as 8-lane partial sums over the
/// pixels (9 accumulators + 3 `dy` vectors + 1 `x` vector: 13 of the 16 AVX registers; a 4 × 3
/// tile needs 17 and spills; per 8 pixels: 3 + 3 loads, 9 FMAs); the lanes are added in a
/// fixed order at the end of the tile. Replaces nine GEMMs per image with `K = h·w` and tiny
/// `m × n` (the GEMM path's weight gradient, ≈ 70 GFLOP/s here).
///
/// # Panics
/// If the buffers are shorter than the geometry needs, or [`available`] is false.
pub fn weight_grad_image(
    s: &ConvShape,
    hp: usize,
    wp: usize,
    xp: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    assert!(
        available(),
        "direct convolution called on a CPU without AVX2/FMA"
    );
    let plane = hp * wp;
    assert!(xp.len() >= s.c_in * plane + SLACK);
    assert_eq!(dy.len(), s.c_out * s.h * s.w);
    assert_eq!(dw.len(), s.c_out * s.c_in * s.kh * s.kw);
    assert_eq!((hp, wp), (s.h + s.kh - 1, s.w + s.kw - 1));
    let taps: Vec<usize> = (0..s.kh)
        .flat_map(|ki| (0..s.kw).map(move |kj| ki * wp + kj))
        .collect();
    let p = s.h * s.w;
    let cos = even_blocks(s.c_out, GRAD_CO);
    let cis = even_blocks(s.c_in, GRAD_CI);
    let g = GradTile {
        xp,
        dy,
        plane,
        p,
        h: s.h,
        w: s.w,
        wp,
        k: s.c_in * taps.len(),
        ntaps: taps.len(),
    };
    for &(co, m) in &cos {
        for &(ci, n) in &cis {
            for (t, &off) in taps.iter().enumerate() {
                // SAFETY: AVX2/FMA checked above; loads as in `image` (x) and within dy's
                // image (full segments) or masked (partial ones); sums land in dw's tile.
                unsafe {
                    match (m, n) {
                        (3, 3) => grad_tile::<3, 3>(&g, co, ci, t, off, dw),
                        (3, 2) => grad_tile::<3, 2>(&g, co, ci, t, off, dw),
                        (3, 1) => grad_tile::<3, 1>(&g, co, ci, t, off, dw),
                        (2, 3) => grad_tile::<2, 3>(&g, co, ci, t, off, dw),
                        (2, 2) => grad_tile::<2, 2>(&g, co, ci, t, off, dw),
                        (2, 1) => grad_tile::<2, 1>(&g, co, ci, t, off, dw),
                        (1, 3) => grad_tile::<1, 3>(&g, co, ci, t, off, dw),
                        (1, 2) => grad_tile::<1, 2>(&g, co, ci, t, off, dw),
                        _ => grad_tile::<1, 1>(&g, co, ci, t, off, dw),
                    }
                }
            }
        }
    }
}

/// What every weight-gradient tile of one image reads.
struct GradTile<'a> {
    xp: &'a [f32],
    dy: &'a [f32],
    plane: usize,
    p: usize,
    h: usize,
    w: usize,
    wp: usize,
    /// `c_in · taps`: the stride of an output channel in `dw`.
    k: usize,
    ntaps: usize,
}

/// `dw[co + i][ci + j][t] += Σ_segments Σ_lanes dy[co + i][seg] · xp[ci + j][seg.src + off]`.
///
/// # Safety
/// AVX2 and FMA must be available; the geometry as [`weight_grad_image`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_tile<const M: usize, const N: usize>(
    g: &GradTile,
    co: usize,
    ci: usize,
    t: usize,
    off: usize,
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    // Plain indexing over constant ranges keeps the accumulators in registers (see `tile`).
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    let (w, full) = (g.w, g.w / LANES * LANES);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((g.w - full) as i32), lane);
    for o in 0..g.h {
        // Row o of dy (per output channel) and the matching padded row of x shifted by the tap.
        let d = unsafe { g.dy.as_ptr().add(co * g.p + o * w) };
        let x = unsafe { g.xp.as_ptr().add(ci * g.plane + o * g.wp + off) };
        let mut step = |j: usize, masked: bool| {
            let mut dv = [_mm256_setzero_ps(); M];
            #[allow(clippy::needless_range_loop)]
            for i in 0..M {
                let at = unsafe { d.add(i * g.p + j) };
                dv[i] = if masked {
                    // Lanes past the row read 0 (the x lanes they meet are finite: the next
                    // row, or the zero slack).
                    unsafe { _mm256_maskload_ps(at, tail) }
                } else {
                    unsafe { _mm256_loadu_ps(at) }
                };
            }
            #[allow(clippy::needless_range_loop)]
            for jj in 0..N {
                let xv = unsafe { _mm256_loadu_ps(x.add(jj * g.plane + j)) };
                for i in 0..M {
                    acc[i][jj] = _mm256_fmadd_ps(dv[i], xv, acc[i][jj]);
                }
            }
        };
        for j in (0..full).step_by(LANES) {
            step(j, false);
        }
        if full < w {
            step(full, true);
        }
    }
    let mut lanes = [0.0f32; LANES];
    #[allow(clippy::needless_range_loop)]
    for i in 0..M {
        for j in 0..N {
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
            // Fixed pairwise order: ((0+4)+(2+6)) + ((1+5)+(3+7)).
            let sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
                + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
            dw[(co + i) * g.k + (ci + j) * g.ntaps + t] += sum;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_tile<const M: usize, const N: usize>(
    _: &GradTile,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("the direct convolution is x86-64 only (`available` is false elsewhere)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [-0.5, 0.5) from a fixed-seed LCG.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    /// One image of a "same" k×k convolution.
    fn same_shape(c_in: usize, c_out: usize, h: usize, w: usize, k: usize) -> ConvShape {
        ConvShape {
            n: 1,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride: [1, 1],
            pad: [k / 2, k / 2],
            dil: [1, 1],
        }
    }

    /// `x` (`[c_in, h, w]`) zero-padded as the kernels read it, with zero slack.
    fn padded(s: &ConvShape, x: &[f32]) -> Vec<f32> {
        let (hp, wp) = (s.h + s.kh - 1, s.w + s.kw - 1);
        let mut xp = vec![0.0f32; s.c_in * hp * wp + SLACK];
        for c in 0..s.c_in {
            for i in 0..s.h {
                for j in 0..s.w {
                    xp[(c * hp + i + s.pad[0]) * wp + j + s.pad[1]] = x[(c * s.h + i) * s.w + j];
                }
            }
        }
        xp
    }

    /// The input value at padded position `(pi, pj)` of channel `ci`, `None` in the padding.
    fn tap_input(s: &ConvShape, x: &[f32], ci: usize, pi: usize, pj: usize) -> Option<f64> {
        let (i, j) = (pi.checked_sub(s.pad[0])?, pj.checked_sub(s.pad[1])?);
        (i < s.h && j < s.w).then(|| x[(ci * s.h + i) * s.w + j] as f64)
    }

    #[test]
    fn pointwise_matches_the_definition() {
        if !available() {
            return;
        }
        let mut rnd = uniform(5);
        // Several bands with a partial last segment; one band; more channels than a band
        // holds pixels for (the smallest band, 16 pixels).
        for (c_in, c_out, p) in [(70, 13, 99), (3, 6, 5), (300, 2, 40)] {
            let x: Vec<f32> = (0..c_in * p).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..c_out * c_in).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rnd()).collect();
            let packed = PackedWeights::new(&wt, c_out, c_in, 1);
            let mut scratch = vec![f32::NAN; pointwise_scratch(c_in)];
            let mut y = vec![MaybeUninit::new(f32::NAN); c_out * p];
            pointwise(c_in, p, &x, &packed, Some(&bias), &mut y, &mut scratch);
            for co in 0..c_out {
                for j in 0..p {
                    let want = bias[co] as f64
                        + (0..c_in)
                            .map(|ci| wt[co * c_in + ci] as f64 * x[ci * p + j] as f64)
                            .sum::<f64>();
                    // SAFETY: `pointwise` writes every element (NaN would fail below).
                    let got = unsafe { y[co * p + j].assume_init() } as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{c_in}→{c_out}, p {p}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn segments_cover_every_output_pixel_once() {
        for (h, w) in [(8, 8), (3, 5), (4, 28), (2, 17), (1, 1)] {
            let wp = w + 2;
            let segs = segments(h, w, wp);
            let mut seen = vec![0u8; h * w];
            for s in &segs {
                assert!(s.len >= 1 && s.len <= LANES);
                let (o, j) = (s.dst / w, s.dst % w);
                assert_eq!(s.src, o * wp + j);
                assert!(j + s.len <= w, "segment crosses a row");
                for v in &mut seen[s.dst..s.dst + s.len] {
                    *v += 1;
                }
            }
            assert!(seen.iter().all(|&v| v == 1), "{h}×{w}");
        }
    }

    #[test]
    fn packing_puts_a_blocks_channels_side_by_side() {
        let (c_out, c_in, taps) = (8, 2, 3);
        let w: Vec<f32> = (0..c_out * c_in * taps).map(|i| i as f32).collect();
        let p = PackedWeights::new(&w, c_out, c_in, taps);
        assert_eq!(p.blocks, [(0, 4), (4, 4)]);
        let b0 = p.block(0, 4);
        // step (ci = 1, t = 2) of channel 3 of the first block
        assert_eq!(b0[(taps + 2) * 4 + 3], w[3 * c_in * taps + taps + 2]);
        let b1 = p.block(4, 4);
        // step (ci = 0, t = 2) of channel 5 (the second of the second block)
        assert_eq!(b1[2 * 4 + 1], w[5 * c_in * taps + 2]);
    }

    /// `image` against a direct f64 sum of the convolution's definition, over shapes that hit
    /// every block width (1–6 channels), partial segments and odd segment counts.
    #[test]
    fn image_matches_the_definition() {
        if !available() {
            eprintln!("no AVX2/FMA here: the direct kernel is not used on this CPU");
            return;
        }
        let mut rnd = uniform(1);
        for (c_in, c_out, h, w, k) in [
            (3, 1, 4, 8, 3),
            (2, 5, 3, 9, 3),
            (4, 11, 2, 16, 3),
            (5, 7, 7, 5, 3),
            (2, 3, 6, 13, 5),
            (1, 2, 1, 1, 3),
            // Wide enough to sum in chunks of input channels (24, 23, 23), with a partial
            // last segment; then tall enough to be cut into bands of rows as well.
            (70, 7, 3, 36, 3),
            (40, 5, 40, 32, 3),
        ] {
            let s = same_shape(c_in, c_out, h, w, k);
            let (hp, wp) = (h + k - 1, w + k - 1);
            let x: Vec<f32> = (0..c_in * h * w).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..c_out * c_in * k * k).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| rnd()).collect();
            // zero padding, then garbage in the slack (it must never reach the output)
            let mut xp = padded(&s, &x);
            for v in &mut xp[c_in * hp * wp..] {
                *v = f32::NAN;
            }
            let packed = PackedWeights::new(&wt, c_out, c_in, k * k);
            let mut y = vec![MaybeUninit::new(f32::NAN); c_out * h * w];
            image(&s, hp, wp, &xp, &packed, Some(&bias), &mut y);
            for co in 0..c_out {
                for i in 0..h {
                    for j in 0..w {
                        let mut want = bias[co] as f64;
                        for ci in 0..c_in {
                            for ki in 0..k {
                                for kj in 0..k {
                                    if let Some(xv) = tap_input(&s, &x, ci, i + ki, j + kj) {
                                        want +=
                                            wt[((co * c_in + ci) * k + ki) * k + kj] as f64 * xv;
                                    }
                                }
                            }
                        }
                        // SAFETY: `image` writes every element.
                        let got = unsafe { y[(co * h + i) * w + j].assume_init() } as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "c_in {c_in} c_out {c_out} {h}×{w} k {k}: ({co}, {i}, {j}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `weight_grad_image` against a direct f64 sum, on shapes hitting every (3, 3) tile
    /// remainder and partial segments; it adds to what `dw` holds.
    #[test]
    fn weight_gradient_matches_the_definition() {
        if !available() {
            eprintln!("no AVX2/FMA here: the direct kernel is not used on this CPU");
            return;
        }
        let mut rnd = uniform(7);
        for (c_in, c_out, h, w, k) in [
            (3, 4, 4, 8, 3),
            (5, 7, 3, 9, 3),
            (2, 5, 5, 17, 3),
            (7, 2, 6, 13, 5),
            (1, 1, 1, 1, 3),
        ] {
            let s = same_shape(c_in, c_out, h, w, k);
            let (hp, wp) = (h + k - 1, w + k - 1);
            let x: Vec<f32> = (0..c_in * h * w).map(|_| rnd()).collect();
            let dy: Vec<f32> = (0..c_out * h * w).map(|_| rnd()).collect();
            let xp = padded(&s, &x);
            let start: Vec<f32> = (0..c_out * c_in * k * k).map(|_| rnd()).collect();
            let mut dw = start.clone();
            weight_grad_image(&s, hp, wp, &xp, &dy, &mut dw);
            for co in 0..c_out {
                for ci in 0..c_in {
                    for ki in 0..k {
                        for kj in 0..k {
                            let at = ((co * c_in + ci) * k + ki) * k + kj;
                            let mut want = start[at] as f64;
                            for i in 0..h {
                                for j in 0..w {
                                    if let Some(xv) = tap_input(&s, &x, ci, i + ki, j + kj) {
                                        want += dy[(co * h + i) * w + j] as f64 * xv;
                                    }
                                }
                            }
                            assert!(
                                (dw[at] as f64 - want).abs() < 1e-5,
                                "c_in {c_in} c_out {c_out} {h}×{w} k {k}: dw[{co}][{ci}][{ki}][{kj}] {} vs {want}",
                                dw[at]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocks_are_even_and_cover_the_channels() {
        for c in 1..200 {
            let b = blocks(c);
            assert_eq!(b.len(), c.div_ceil(MR));
            assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), c);
            let (lo, hi) = (b.iter().map(|x| x.1).min(), b.iter().map(|x| x.1).max());
            assert!(
                hi.unwrap() <= MR && hi.unwrap() - lo.unwrap() <= 1,
                "{c}: {b:?}"
            );
            assert!(b.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
        assert_eq!(
            blocks(32),
            [(0, 6), (6, 6), (12, 5), (17, 5), (22, 5), (27, 5)]
        );
    }
}
