//! CPU kernels for the hot ops of diffusion networks, added to burn through its backend
//! extension point (`#[backend_extension]`), with burn's generic ops kept for every other
//! backend.
//!
//! burn 0.22's `flex` backend computes a convolution's input gradient as a transposed
//! convolution and its weight gradient as a GEMM with n = kh·kw (the worst shape), GroupNorm
//! as ~8 single-threaded element-wise ops (more in backward) and SiLU as `x·sigmoid(x)` with a
//! scalar `exp`; together ~80% of a UNet training step (`../BENCHMARKS.md`). [`FastOps`] adds
//! one op each — convolution, GroupNorm, SiLU — with a forward kernel on [`Flex`] tensors
//! ([`conv`], [`norm`], [`act`]) and a hand-written backward recorded on burn's autodiff graph
//! ([`autodiff`]), plus a one-pass Adam(W) update ([`optim`]).
//!
//! The public functions here ([`conv2d`], [`group_norm`], [`group_norm_silu`], [`silu`],
//! [`softmax`], [`avg_pool2d`], [`adam`]) take and return ordinary
//! burn tensors: on a Flex device (with or without autodiff) and f32 data they run these
//! kernels; anywhere else (CUDA, other dtypes, grouped convolutions) they run burn's own ops,
//! so no backend loses an operation. Every kernel is checked against burn's op (values and
//! gradients) in `tests.rs`.

pub mod act;
pub mod autodiff;
pub mod conv;
pub mod cpu;
pub mod direct;
pub mod gemm;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod softmax;
#[cfg(test)]
mod tests;
pub mod winograd;

use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};

/// The Flex backend's tensor primitive.
pub type FlexTensor = FloatTensor<Flex>;
use burn::tensor::activation;
use burn::tensor::module as fmod;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// The ops memlab adds to burn. Implemented for [`Flex`] (kernels) and `Autodiff<Flex, C>`
/// (backward passes); the macro routes `Dispatch` tensors to them.
#[backend_extension(Flex, Autodiff)]
pub trait FastOps: Backend {
    /// 2-D convolution with bias, NCHW, one group, symmetric padding.
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// [`fast_conv2d`](FastOps::fast_conv2d) without bias. (Two ops rather than an `Option`:
    /// burn 0.22's extension macro does not unwrap optional tensor inputs.)
    fn fast_conv2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
    /// GroupNorm over `[N, C, ...]` with per-channel scale and shift, followed by SiLU in the
    /// same pass when `silu`.
    fn fast_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self>;
    /// `x · sigmoid(x)`.
    fn fast_silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last dimension.
    fn fast_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Average pooling of NCHW `x` over `k × k` windows with stride `k` (`H`, `W` multiples
    /// of `k`).
    fn fast_avg_pool(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self>;
    /// One Adam(W) update of a parameter `p` with gradient `g` and moments `m`, `v` in a single
    /// pass; returns the new `(p, m, v)`. Never recorded for autodiff.
    fn fast_adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        hyper: [f64; 8],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Contiguous f32 view of a Flex tensor (copies only when the layout is strided).
pub(crate) fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

/// A Flex tensor owning `data` with `shape`.
pub(crate) fn flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    use burn::backend::TensorMetadata;
    t.shape().to_vec()
}

/// The convolution geometry of `x` and `weight` under `options`.
pub(crate) fn conv_shape(x: &FlexTensor, w: &FlexTensor, o: &ConvOptions<2>) -> conv::ConvShape {
    let (xs, ws) = (dims(x), dims(w));
    conv::ConvShape {
        n: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        kh: ws[2],
        kw: ws[3],
        stride: o.stride,
        pad: o.padding_begin(),
        dil: o.dilation,
    }
}

/// The norm geometry of `x` (`[N, C, ...]`) in `groups` groups.
pub(crate) fn norm_shape(x: &FlexTensor, groups: usize) -> norm::NormShape {
    let xs = dims(x);
    norm::NormShape {
        n: xs[0],
        c: xs[1],
        s: xs[2..].iter().product(),
        groups,
    }
}

/// The convolution kernel on Flex tensors.
pub(crate) fn conv_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let s = conv_shape(x, weight, options);
    let b = bias.map(f32s);
    let y = conv::forward(&s, &f32s(x), &f32s(weight), b.as_deref());
    flex(y, vec![s.n, s.c_out, s.oh(), s.ow()])
}

impl FastOps for Flex {
    fn fast_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        conv_forward(&x, &weight, Some(&bias), &options)
    }

    fn fast_conv2d_nobias(
        x: FlexTensor,
        weight: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        conv_forward(&x, &weight, None, &options)
    }

    fn fast_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FlexTensor {
        let s = norm_shape(&x, groups);
        let (x_, g, b) = (f32s(&x), f32s(&gamma), f32s(&beta));
        let y = if silu {
            norm::forward_silu(&s, &x_, &g, &b, eps)
        } else {
            norm::forward(&s, &x_, &g, &b, eps)
        };
        flex(y, dims(&x))
    }

    fn fast_silu(x: FlexTensor) -> FlexTensor {
        flex(act::silu_forward(&f32s(&x)), dims(&x))
    }

    fn fast_avg_pool(x: FlexTensor, k: usize) -> FlexTensor {
        let d = dims(&x);
        let y = pool::forward(&f32s(&x), d[0] * d[1], d[2], d[3], k);
        flex(y, vec![d[0], d[1], d[2] / k, d[3] / k])
    }

    fn fast_softmax(x: FlexTensor) -> FlexTensor {
        let shape = dims(&x);
        let len = shape.last().copied().unwrap_or(1);
        flex(softmax::forward(&f32s(&x), len), shape)
    }

    fn fast_adam(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        hyper: [f64; 8],
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = dims(&p);
        let (mut p, mut m, mut v) = (
            f32s(&p).into_owned(),
            f32s(&m).into_owned(),
            f32s(&v).into_owned(),
        );
        optim::adam(
            &mut p,
            &f32s(&g),
            &mut m,
            &mut v,
            &optim::AdamScalars::from_array(hyper),
        );
        (
            flex(p, shape.clone()),
            flex(m, shape.clone()),
            flex(v, shape),
        )
    }
}

/// Whether `t` lives on the Flex CPU backend (with or without autodiff) as f32: the kernels'
/// domain.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    // Device equality ignores autodiff.
    t.device() == Device::flex() && t.dtype() == DType::F32 && !generic_only()
}

/// `MEMLAB_GENERIC_OPS=1` turns the kernels off (burn's own ops everywhere): for checking a
/// result against the generic path, or reproducing numbers of memlab versions before the
/// kernels bit for bit.
pub fn generic_only() -> bool {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GENERIC.get_or_init(|| std::env::var_os("MEMLAB_GENERIC_OPS").is_some_and(|v| v != "0"))
}

/// Convolution (burn's `conv2d` semantics and shapes): the kernels on Flex for one group,
/// burn's op otherwise.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if on_flex(&x) && on_flex(&weight) && options.groups == 1 && !options.is_asymmetric() {
        let (x, w) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match bias {
            Some(b) => <Dispatch as FastOps>::fast_conv2d(x, w, b.into_dispatch(), options),
            None => <Dispatch as FastOps>::fast_conv2d_nobias(x, w, options),
        })
    } else {
        fmod::conv2d(x, weight, bias, options)
    }
}

/// GroupNorm of `x` (`[N, C, ...]`) with scale `gamma` and shift `beta` (both `[C]`):
/// the kernels on Flex, burn's ops otherwise. `groups` must divide `C`.
pub fn group_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
) -> Tensor<D> {
    group_norm_with(x, gamma, beta, groups, eps, false)
}

/// `silu(group_norm(x, …))` as one op: the fused kernel on Flex (the same bits as the two
/// kernels in sequence, forward and backward), burn's ops otherwise.
pub fn group_norm_silu<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
) -> Tensor<D> {
    group_norm_with(x, gamma, beta, groups, eps, true)
}

/// [`group_norm`], followed by SiLU (as [`group_norm_silu`]) when `silu`.
pub fn group_norm_with<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<D> {
    if on_flex(&x) && on_flex(&gamma) && on_flex(&beta) {
        return Tensor::from_dispatch(<Dispatch as FastOps>::fast_group_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            groups,
            eps,
            silu,
        ));
    }
    let y = group_norm_generic(x, gamma, beta, groups, eps);
    if silu { self::silu(y) } else { y }
}

/// GroupNorm composed of burn ops (any backend).
pub fn group_norm_generic<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f64,
) -> Tensor<D> {
    let shape = x.dims();
    let (n, c) = (shape[0], shape[1]);
    let g = x.reshape([n as i32, groups as i32, -1]);
    let mean = g.clone().mean_dim(2);
    let centred = g - mean;
    let var = centred.clone().square().mean_dim(2);
    let y: Tensor<D> = (centred / var.add_scalar(eps).sqrt()).reshape(shape);
    let mut bshape = [1usize; D];
    bshape[1] = c;
    y * gamma.reshape(bshape) + beta.reshape(bshape)
}

/// One Adam(W) step on a parameter (see [`optim::AdamScalars`]): the fused kernel when every
/// tensor is on Flex without autodiff, `None` otherwise (the caller then uses burn's ops).
pub fn adam<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    scalars: &optim::AdamScalars,
) -> Option<(Tensor<D>, Tensor<D>, Tensor<D>)> {
    let plain = |t: &Tensor<D>| on_flex(t) && !t.device().is_autodiff();
    if !(plain(&p) && plain(&g) && plain(&m) && plain(&v)) {
        return None;
    }
    let (p, m, v) = <Dispatch as FastOps>::fast_adam(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        scalars.to_array(),
    );
    Some((
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    ))
}

/// `x · sigmoid(x)`: the kernel on Flex, burn's op otherwise.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as FastOps>::fast_silu(x.into_dispatch()))
    } else {
        activation::silu(x)
    }
}

/// Average pooling with a square `kernel` and `stride` and no padding (burn's
/// `avg_pool2d`): the kernel on Flex when the windows tile the image (`stride == kernel`,
/// sides multiples of it), burn's op otherwise.
pub fn avg_pool2d(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if on_flex(&x)
        && kernel == stride
        && kernel > 0
        && h.is_multiple_of(kernel)
        && w.is_multiple_of(kernel)
    {
        return Tensor::from_dispatch(<Dispatch as FastOps>::fast_avg_pool(
            x.into_dispatch(),
            kernel,
        ));
    }
    let opts =
        burn::tensor::ops::AvgPoolOptions::new([kernel, kernel]).with_stride([stride, stride]);
    fmod::avg_pool2d(x, opts)
}

/// Softmax over `dim`: the kernel on Flex when `dim` is the last dimension, burn's op
/// otherwise.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if on_flex(&x) && dim + 1 == D {
        Tensor::from_dispatch(<Dispatch as FastOps>::fast_softmax(x.into_dispatch()))
    } else {
        activation::softmax(x, dim)
    }
}
