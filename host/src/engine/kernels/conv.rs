//! 2-D convolution (NCHW, one group) as im2col + GEMM per image, forward and backward.
//!
//! For image `b` with `col_b = im2col(x_b)` (`K × P`, `K = C_in·kh·kw`, `P = OH·OW`):
//!
//! - forward: `y_b = W · col_b + bias` (`W` is `C_out × K`);
//! - input gradient: `dx_b = col2im(Wᵀ · dy_b)`;
//! - weight gradient: `dW = Σ_b dy_b · col_bᵀ`; bias gradient: `Σ_b Σ_p dy_b`.
//!
//! A 1×1 convolution with stride 1 and no padding skips im2col (`col_b` is `x_b`). A "same"
//! convolution (stride 1, output as large as the input: the UNets' 3×3 convolutions) skips it too:
//! each kernel tap is a shifted view of a zero-padded copy of the image, one GEMM per tap
//! ([`forward_taps`]; the input gradient is the same convolution of `dy` with the kernel flipped
//! and transposed; `backward_weight_taps`). On CPUs with AVX2 + FMA the "same" convolutions run
//! the direct kernel of [`super::direct`] instead of GEMMs. Images run in parallel, each GEMM on
//! one thread; the weight gradient sums per-chunk partials in chunk order.

use super::gemm::{Mat, par_fill, par_items, sgemm, threads, zeros};
use super::{direct, winograd};

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
/// UNets' 3×3 convolutions): then every kernel tap is a shifted view of a zero-padded copy of
/// the image, and forward, input gradient and weight gradient run as one GEMM per tap on those
/// views ([`forward_taps`]), with no im2col matrix (9× the image) to build and pack.
fn same(s: &ConvShape) -> bool {
    s.stride == [1, 1] && s.dil == [1, 1] && s.oh() == s.h && s.ow() == s.w
}

/// Whether forward and input gradient run as [`forward_taps`]: "same" convolutions except
/// 1×1 ones, which are one plain GEMM per image unless [`direct_pointwise`] applies.
fn by_taps(s: &ConvShape) -> bool {
    same(s) && (!s.pointwise() || direct_pointwise(s))
}

/// Whether a 1×1 convolution runs [`direct::pointwise`] (on AVX2 + FMA CPUs).
fn direct_pointwise(s: &ConvShape) -> bool {
    s.pointwise() && direct::available()
}

/// `col (K × P) = im2col(x_b)`.
fn im2col(s: &ConvShape, x: &[f32], col: &mut [f32]) {
    let (oh, ow, p) = (s.oh(), s.ow(), s.p());
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

/// `dx_b += col2im(dcol)` (dx_b zeroed by the caller).
fn col2im(s: &ConvShape, dcol: &[f32], dx: &mut [f32]) {
    let (oh, ow, p) = (s.oh(), s.ow(), s.p());
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
    if by_taps(s) {
        return forward_taps(s, x, weight, bias);
    }
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

/// Layout of a zero-padded copy of one image for [`same`] convolutions: `c_in` planes of
/// `hp × wp` plus `kw` slack zeros, so that tap `(ki, kj)` is the strided view starting at
/// `ki·wp + kj` with `h·wp` columns (columns `j ≥ w` of each output row are discarded), and
/// [`direct::SLACK`] more for the direct kernel's 8-wide loads.
struct Padded {
    hp: usize,
    wp: usize,
    len: usize,
}

fn padded(s: &ConvShape) -> Padded {
    let (hp, wp) = (s.h + 2 * s.pad[0], s.w + 2 * s.pad[1]);
    Padded {
        hp,
        wp,
        len: s.c_in * hp * wp + s.kw + direct::SLACK,
    }
}

/// Writes the zero-padded copy of image `x` into `out` (every element once: no separate
/// zeroing pass).
fn pad_image(s: &ConvShape, pd: &Padded, x: &[f32], out: &mut [f32]) {
    let (top, left) = (s.pad[0], s.pad[1]);
    let planes = &mut out[..s.c_in * pd.hp * pd.wp];
    for (c, plane) in planes.chunks_exact_mut(pd.hp * pd.wp).enumerate() {
        for (r, row) in plane.chunks_exact_mut(pd.wp).enumerate() {
            if r < top || r >= top + s.h {
                row.fill(0.0);
                continue;
            }
            let src = &x[(c * s.h + r - top) * s.w..][..s.w];
            row[..left].fill(0.0);
            row[left..left + s.w].copy_from_slice(src);
            row[left + s.w..].fill(0.0);
        }
    }
    out[s.c_in * pd.hp * pd.wp..].fill(0.0);
}

/// Forward of a `same` convolution as one GEMM per kernel tap over shifted views of a padded
/// copy of the image (no im2col matrix): `ŷ += W[:, :, ki, kj] · view(ki·wp + kj)`.
pub fn forward_taps(s: &ConvShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let pd = padded(s);
    let p = s.p();
    let pp = s.h * pd.wp;
    let (img, k) = (s.c_in * s.h * s.w, s.k());
    let taps = s.kh * s.kw;
    if direct_pointwise(s) {
        let packed = direct::PackedWeights::new(weight, s.c_out, s.c_in, 1);
        let scratch = direct::pointwise_scratch(s.c_in);
        // SAFETY: `direct::pointwise` writes every output element of the image.
        return unsafe {
            par_fill(s.n, s.c_out * p, s.chunk(), scratch, |buf, b, yb| {
                let xb = &x[b * img..(b + 1) * img];
                direct::pointwise(s.c_in, p, xb, &packed, bias, yb, buf);
            })
        };
    }
    if winograd::applies(s) {
        let filters = winograd::Filters::new(weight, s.c_out, s.c_in);
        // SAFETY: `winograd::image` writes every output element of the image.
        return unsafe {
            par_fill(
                s.n,
                s.c_out * p,
                s.chunk(),
                winograd::scratch_len(s),
                |buf, b, yb| {
                    winograd::image(s, &x[b * img..(b + 1) * img], &filters, bias, yb, buf);
                },
            )
        };
    }
    if direct::available() {
        let packed = direct::PackedWeights::new(weight, s.c_out, s.c_in, taps);
        // SAFETY: `direct::image` writes every output element of the image.
        return unsafe {
            par_fill(s.n, s.c_out * p, s.chunk(), pd.len, |xp, b, yb| {
                pad_image(s, &pd, &x[b * img..(b + 1) * img], xp);
                direct::image(s, pd.hp, pd.wp, xp, &packed, bias, yb);
            })
        };
    }
    let mut y = zeros(s.n * s.c_out * p);
    par_items(
        &mut y,
        s.c_out * p,
        s.chunk(),
        pd.len + s.c_out * pp,
        |buf, b, yb| {
            let (xp, yp) = buf.split_at_mut(pd.len);
            pad_image(s, &pd, &x[b * img..(b + 1) * img], xp);
            match bias {
                Some(bias) => {
                    for (row, v) in yp.chunks_mut(pp).zip(bias) {
                        row.fill(*v);
                    }
                }
                None => yp.fill(0.0),
            }
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let t = ki * s.kw + kj;
                    // SAFETY: yp is c_out×pp; the weight tap is c_out×c_in with strides (k, taps);
                    // the view is c_in×pp with strides (hp·wp, 1) starting at ki·wp + kj, inside
                    // xp thanks to the kw slack.
                    unsafe {
                        sgemm(
                            s.c_out,
                            pp,
                            s.c_in,
                            yp.as_mut_ptr(),
                            Mat::rows(pp),
                            true,
                            weight[t..].as_ptr(),
                            Mat {
                                rs: k as isize,
                                cs: taps as isize,
                            },
                            xp[ki * pd.wp + kj..].as_ptr(),
                            Mat {
                                rs: (pd.hp * pd.wp) as isize,
                                cs: 1,
                            },
                        )
                    };
                }
            }
            for c in 0..s.c_out {
                for o in 0..s.h {
                    yb[(c * s.h + o) * s.w..][..s.w]
                        .copy_from_slice(&yp[c * pp + o * pd.wp..][..s.w]);
                }
            }
        },
    );
    y
}

/// Weight gradient of a [`same`] convolution: the direct kernel
/// ([`direct::weight_grad_image`]) where it runs, else one GEMM per tap and image:
/// `dW[:, :, ki, kj] += dŷ · view(ki·wp + kj)ᵀ`, with `dŷ` the output gradient laid out on the
/// padded width (zeros in the discarded columns, so they contribute nothing).
fn backward_weight_taps(s: &ConvShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let pd = padded(s);
    let (p, pp) = (s.p(), s.h * pd.wp);
    let (img, k, taps) = (s.c_in * s.h * s.w, s.k(), s.kh * s.kw);
    let chunk = s.chunk();
    let chunks = s.n.div_ceil(chunk);
    let wlen = s.c_out * k;
    let mut partial = zeros(chunks * wlen);
    if direct::available() {
        par_items(&mut partial, wlen, 1, pd.len, |xp, c, dw| {
            for b in c * chunk..((c + 1) * chunk).min(s.n) {
                pad_image(s, &pd, &x[b * img..(b + 1) * img], xp);
                let dyb = &dy[b * s.c_out * p..(b + 1) * s.c_out * p];
                direct::weight_grad_image(s, pd.hp, pd.wp, xp, dyb, dw);
            }
        });
        return sum_partials(partial, wlen);
    }
    par_items(
        &mut partial,
        wlen,
        1,
        pd.len + s.c_out * pp,
        |buf, c, dw| {
            let (xp, dyp) = buf.split_at_mut(pd.len);
            dyp.fill(0.0);
            for (i, b) in (c * chunk..((c + 1) * chunk).min(s.n)).enumerate() {
                pad_image(s, &pd, &x[b * img..(b + 1) * img], xp);
                let dyb = &dy[b * s.c_out * p..(b + 1) * s.c_out * p];
                for co in 0..s.c_out {
                    for o in 0..s.h {
                        dyp[co * pp + o * pd.wp..][..s.w]
                            .copy_from_slice(&dyb[(co * s.h + o) * s.w..][..s.w]);
                    }
                }
                for ki in 0..s.kh {
                    for kj in 0..s.kw {
                        let t = ki * s.kw + kj;
                        // SAFETY: the dW tap is c_out×c_in with strides (k, taps) inside dw; dyp is
                        // c_out×pp; the view is read transposed (pp×c_in, strides (1, hp·wp)).
                        unsafe {
                            sgemm(
                                s.c_out,
                                s.c_in,
                                pp,
                                dw[t..].as_mut_ptr(),
                                Mat {
                                    rs: k as isize,
                                    cs: taps as isize,
                                },
                                i > 0,
                                dyp.as_ptr(),
                                Mat::rows(pp),
                                xp[ki * pd.wp + kj..].as_ptr(),
                                Mat {
                                    rs: 1,
                                    cs: (pd.hp * pd.wp) as isize,
                                },
                            )
                        };
                    }
                }
            }
        },
    );
    sum_partials(partial, wlen)
}

/// Input gradient `[n, c_in, h, w]` from the output gradient `dy` `[n, c_out, oh, ow]`.
pub fn backward_input(s: &ConvShape, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    if by_taps(s) {
        // The input gradient of a "same" convolution is the "same" convolution of dy with the
        // kernel flipped in space and transposed in channels (odd kernels: the padding stays).
        let (kh, kw) = (s.kh, s.kw);
        let mut flipped = zeros(weight.len());
        for co in 0..s.c_out {
            for ci in 0..s.c_in {
                for ki in 0..kh {
                    for kj in 0..kw {
                        flipped[((ci * s.c_out + co) * kh + kh - 1 - ki) * kw + kw - 1 - kj] =
                            weight[((co * s.c_in + ci) * kh + ki) * kw + kj];
                    }
                }
            }
        }
        let t = ConvShape {
            c_in: s.c_out,
            c_out: s.c_in,
            ..*s
        };
        return forward_taps(&t, dy, &flipped, None);
    }
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
    if same(s) && !s.pointwise() {
        return backward_weight_taps(s, x, dy);
    }
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
    sum_partials(partial, wlen)
}

/// Adds the `wlen`-long partial sums stored one after another, in order, into the first.
fn sum_partials(mut partial: Vec<f32>, wlen: usize) -> Vec<f32> {
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
