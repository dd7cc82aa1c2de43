//! The typed layer over [`HostOps`]: a [`Ctx`] with a parameter-name scope and a [`Tensor`]
//! handle with methods and operators, so a plugin's `forward` reads like ordinary model code.
//!
//! ```
//! use memlab_plugin_api::prelude::*;
//! use memlab_plugin_api::testing::inspect;
//!
//! struct Net;
//! impl Architecture for Net {
//!     fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
//!         let [n, c, h, w] = inp.x.dims::<4>();
//!         // Parameters are named by scope: `conv_in.weight`, `conv_in.bias`.
//!         let y = Conv2d::new(c, 8, 3).padding(1).forward(&ctx.scope("conv_in"), &inp.x);
//!         let y = (y.silu() * 2.0 + 1.0).mean_dim(1, true); // [n, 1, h, w]
//!         let gain = ctx.scope("out").param("gain", &[1], Init::ONES);
//!         Ok(&inp.x + &(y * gain).reshape_to(&[n, 1, h, w]))
//!     }
//! }
//!
//! // The shape-only host runs `forward` without data: shapes and parameters.
//! let s = inspect(&Net, [2, 3, 8, 8], 0).unwrap();
//! assert_eq!(s.output, vec![2, 3, 8, 8]);
//! assert_eq!(s.param("conv_in.weight"), Some(&[8, 3, 3, 3][..]));
//! assert_eq!(s.param("out.gain"), Some(&[1][..]));
//! ```
//!
//! Handles release their host tensor on drop and `clone()` is cheap (shared storage).

use std::ops::{Add, Div, Mul, Neg, Sub};

use abi_stable::std_types::{RNone, ROption, RSome};

use crate::ffi::{BinaryOp, Conv2dOptions, HostOps, Init, ReduceOp, ScalarOp, TensorId, UnaryOp};

/// The forward-pass context: the host ops plus the current parameter-name scope.
pub struct Ctx<'a> {
    ops: &'a dyn HostOps,
    prefix: String,
    /// Parameters requested through this context (and its child scopes) are shared weights.
    shared: bool,
}

impl<'a> Ctx<'a> {
    /// Wraps the host ops object at the root scope.
    pub fn new(ops: &'a dyn HostOps) -> Ctx<'a> {
        Ctx {
            ops,
            prefix: String::new(),
            shared: false,
        }
    }

    /// A child scope: parameters created through it are named `<scope>.<child>.<name>`.
    pub fn scope(&self, child: impl std::fmt::Display) -> Ctx<'a> {
        let prefix = if self.prefix.is_empty() {
            child.to_string()
        } else {
            format!("{}.{}", self.prefix, child)
        };
        Ctx {
            ops: self.ops,
            prefix,
            shared: self.shared,
        }
    }

    /// The same scope, with every parameter requested through it (and its child scopes,
    /// including [`crate::nn`] layers) declared as shared weights: the way to use a layer's
    /// weights more than once in one forward pass. Without it, a second request for a
    /// parameter name in the same pass is an error (weights are never shared by accident).
    pub fn shared(&self) -> Ctx<'a> {
        Ctx {
            ops: self.ops,
            prefix: self.prefix.clone(),
            shared: true,
        }
    }

    /// Full name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A trainable parameter named `name` in this scope. Each name may be requested once per
    /// forward pass; to use the same weights twice, request them through [`Ctx::shared_param`]
    /// or a [`Ctx::shared`] scope (or keep the returned tensor and clone it).
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Tensor<'a> {
        if self.shared {
            return self.shared_param(name, shape, init);
        }
        let path = self.path(name);
        self.wrap(self.ops.param(path.as_str().into(), shape.into(), init))
    }

    /// A trainable parameter that this forward pass uses more than once on purpose (shared
    /// weights): unlike [`Ctx::param`], asking for it again in the same pass is not an error.
    pub fn shared_param(&self, name: &str, shape: &[usize], init: Init) -> Tensor<'a> {
        let path = self.path(name);
        self.wrap(
            self.ops
                .shared_param(path.as_str().into(), shape.into(), init),
        )
    }

    /// A named non-trainable tensor (a *buffer*, PyTorch's `register_buffer`) in this scope,
    /// with the row-major `data` as its initial value: stored, snapshotted and loaded from a
    /// checkpoint by name like a parameter, but never optimised and not counted as one (e.g.
    /// EDM's Fourier-embedding frequencies `map_noise.freqs`). Once per forward pass.
    pub fn buffer(&self, name: &str, data: &[f32], shape: &[usize]) -> Tensor<'a> {
        let path = self.path(name);
        self.wrap(
            self.ops
                .buffer(path.as_str().into(), data.into(), shape.into()),
        )
    }

    /// A constant from row-major data.
    pub fn constant(&self, data: &[f32], shape: &[usize]) -> Tensor<'a> {
        self.wrap(self.ops.constant(data.into(), shape.into()))
    }

    /// An integer constant (labels, indices).
    pub fn constant_int(&self, data: &[i64], shape: &[usize]) -> Tensor<'a> {
        self.wrap(self.ops.constant_int(data.into(), shape.into()))
    }

    /// A tensor filled with `value`.
    pub fn full(&self, shape: &[usize], value: f64) -> Tensor<'a> {
        self.wrap(self.ops.full(shape.into(), value))
    }

    /// Concatenates along `dim`.
    pub fn concat(&self, xs: &[&Tensor<'a>], dim: usize) -> Tensor<'a> {
        let ids: Vec<TensorId> = xs.iter().map(|t| t.id).collect();
        self.wrap(self.ops.concat(ids.as_slice().into(), dim))
    }

    /// Whether this is a training forward pass.
    pub fn training(&self) -> bool {
        self.ops.training()
    }

    /// The training set `[N, C, H, W]`, for architectures that declared they need it.
    pub fn training_set(&self) -> Option<Tensor<'a>> {
        let id = self.ops.training_set();
        (id != TensorId::INVALID).then(|| self.wrap(id))
    }

    /// Reports an error; the host fails the forward pass with this message.
    pub fn fail(&self, message: &str) {
        self.ops.fail(message.into());
    }

    /// Adopts a raw id returned by the host (the handle will release it).
    pub fn wrap(&self, id: TensorId) -> Tensor<'a> {
        Tensor { ops: self.ops, id }
    }

    /// The raw ops object.
    pub fn ops(&self) -> &'a dyn HostOps {
        self.ops
    }
}

/// A handle to a tensor in the host engine. Dropping it releases the host tensor.
pub struct Tensor<'a> {
    ops: &'a dyn HostOps,
    id: TensorId,
}

impl Clone for Tensor<'_> {
    fn clone(&self) -> Self {
        Tensor {
            ops: self.ops,
            id: self.ops.retain(self.id),
        }
    }
}

impl Drop for Tensor<'_> {
    fn drop(&mut self) {
        self.ops.release(self.id);
    }
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, shape {:?})", self.id, self.shape())
    }
}

fn opt(t: Option<&Tensor<'_>>) -> ROption<TensorId> {
    match t {
        Some(t) => RSome(t.id),
        None => RNone,
    }
}

impl<'a> Tensor<'a> {
    fn wrap(&self, id: TensorId) -> Tensor<'a> {
        Tensor { ops: self.ops, id }
    }

    /// The raw id (still owned by this handle).
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Gives up ownership of the raw id (the caller must release it or hand it to the host).
    pub fn into_id(self) -> TensorId {
        let id = self.id;
        std::mem::forget(self);
        id
    }

    /// Whether an earlier op failed to produce this tensor.
    pub fn is_invalid(&self) -> bool {
        self.id == TensorId::INVALID
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.ops.rank(self.id)
    }

    /// Size of dimension `d`.
    pub fn dim(&self, d: usize) -> usize {
        self.ops.dim(self.id, d)
    }

    /// Full shape.
    pub fn shape(&self) -> Vec<usize> {
        (0..self.rank()).map(|d| self.dim(d)).collect()
    }

    /// Shape as a fixed-size array; reports an error (and returns zeros) on a rank mismatch.
    pub fn dims<const N: usize>(&self) -> [usize; N] {
        let mut out = [0; N];
        if self.rank() != N {
            if !self.is_invalid() {
                let msg = format!("expected a rank-{N} tensor, got shape {:?}", self.shape());
                self.ops.fail(msg.as_str().into());
            }
            return out;
        }
        for (d, o) in out.iter_mut().enumerate() {
            *o = self.dim(d);
        }
        out
    }

    fn unary(&self, op: UnaryOp) -> Tensor<'a> {
        self.wrap(self.ops.unary(op, self.id))
    }
    fn scalar(&self, op: ScalarOp, s: f64) -> Tensor<'a> {
        self.wrap(self.ops.scalar(op, self.id, s))
    }
    fn binary(&self, op: BinaryOp, other: &Tensor<'_>) -> Tensor<'a> {
        self.wrap(self.ops.binary(op, self.id, other.id))
    }

    /// e^x
    pub fn exp(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Exp)
    }
    /// ln x
    pub fn log(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Log)
    }
    /// √x
    pub fn sqrt(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Sqrt)
    }
    /// sin x
    pub fn sin(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Sin)
    }
    /// cos x
    pub fn cos(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Cos)
    }
    /// tanh x
    pub fn tanh(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Tanh)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// max(x, 0)
    pub fn relu(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Relu)
    }
    /// x·sigmoid(x)
    pub fn silu(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Silu)
    }
    /// GELU (erf form).
    pub fn gelu(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Gelu)
    }
    /// |x|
    pub fn abs(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Abs)
    }
    /// x²
    pub fn square(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Square)
    }
    /// 1/x
    pub fn recip(&self) -> Tensor<'a> {
        self.unary(UnaryOp::Recip)
    }
    /// x^p
    pub fn powf(&self, p: f64) -> Tensor<'a> {
        self.scalar(ScalarOp::Pow, p)
    }
    /// max(x, s)
    pub fn max_scalar(&self, s: f64) -> Tensor<'a> {
        self.scalar(ScalarOp::Max, s)
    }
    /// min(x, s)
    pub fn min_scalar(&self, s: f64) -> Tensor<'a> {
        self.scalar(ScalarOp::Min, s)
    }
    /// Element-wise maximum with broadcasting.
    pub fn maximum(&self, other: &Tensor<'_>) -> Tensor<'a> {
        self.binary(BinaryOp::Max, other)
    }
    /// Element-wise minimum with broadcasting.
    pub fn minimum(&self, other: &Tensor<'_>) -> Tensor<'a> {
        self.binary(BinaryOp::Min, other)
    }
    /// Clamps into `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Tensor<'a> {
        self.wrap(self.ops.clamp(self.id, lo, hi))
    }
    /// Reshape; one entry may be `-1`.
    pub fn reshape(&self, shape: &[i64]) -> Tensor<'a> {
        self.wrap(self.ops.reshape(self.id, shape.into()))
    }
    /// Reshape to explicit sizes.
    pub fn reshape_to(&self, shape: &[usize]) -> Tensor<'a> {
        let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.reshape(&s)
    }
    /// Inserts a size-1 dimension at `d`.
    pub fn unsqueeze(&self, d: usize) -> Tensor<'a> {
        let mut s: Vec<usize> = self.shape();
        s.insert(d.min(s.len()), 1);
        self.reshape_to(&s)
    }
    /// Flattens dimensions `from..` into one.
    pub fn flatten_from(&self, from: usize) -> Tensor<'a> {
        let s = self.shape();
        let mut new: Vec<i64> = s[..from.min(s.len())].iter().map(|&d| d as i64).collect();
        new.push(-1);
        self.reshape(&new)
    }
    /// Permutes dimensions.
    pub fn permute(&self, axes: &[usize]) -> Tensor<'a> {
        self.wrap(self.ops.permute(self.id, axes.into()))
    }
    /// Swaps dimensions `a` and `b`.
    pub fn transpose(&self, a: usize, b: usize) -> Tensor<'a> {
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        if a < axes.len() && b < axes.len() {
            axes.swap(a, b);
        }
        self.permute(&axes)
    }
    /// Elements `start..end` along `dim`.
    pub fn slice(&self, dim: usize, start: usize, end: usize) -> Tensor<'a> {
        self.wrap(self.ops.slice(self.id, dim, start, end))
    }
    /// Splits into `n` equal chunks along `dim`.
    pub fn chunk(&self, n: usize, dim: usize) -> Vec<Tensor<'a>> {
        let size = self.dim(dim) / n.max(1);
        (0..n)
            .map(|i| self.slice(dim, i * size, (i + 1) * size))
            .collect()
    }
    fn reduce(&self, op: ReduceOp, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.wrap(self.ops.reduce(op, self.id, dim, keepdim))
    }
    /// Sum over `dim`.
    pub fn sum_dim(&self, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.reduce(ReduceOp::Sum, dim, keepdim)
    }
    /// Mean over `dim`.
    pub fn mean_dim(&self, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.reduce(ReduceOp::Mean, dim, keepdim)
    }
    /// Maximum over `dim`.
    pub fn max_dim(&self, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.reduce(ReduceOp::Max, dim, keepdim)
    }
    /// Minimum over `dim`.
    pub fn min_dim(&self, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.reduce(ReduceOp::Min, dim, keepdim)
    }
    /// Biased variance over `dim`.
    pub fn var_dim(&self, dim: usize, keepdim: bool) -> Tensor<'a> {
        self.reduce(ReduceOp::Var, dim, keepdim)
    }
    /// Sum of all elements, as a `[1]` tensor.
    pub fn sum(&self) -> Tensor<'a> {
        self.reshape(&[-1]).sum_dim(0, true)
    }
    /// Mean of all elements, as a `[1]` tensor.
    pub fn mean(&self) -> Tensor<'a> {
        self.reshape(&[-1]).mean_dim(0, true)
    }
    /// Batched matrix product.
    pub fn matmul(&self, other: &Tensor<'_>) -> Tensor<'a> {
        self.wrap(self.ops.matmul(self.id, other.id))
    }
    /// Softmax over `dim`.
    pub fn softmax(&self, dim: usize) -> Tensor<'a> {
        self.wrap(self.ops.softmax(self.id, dim))
    }
    /// `self @ w + b` over the last dimension (`w` is `[in, out]`).
    pub fn linear(&self, w: &Tensor<'_>, b: Option<&Tensor<'_>>) -> Tensor<'a> {
        self.wrap(self.ops.linear(self.id, w.id, opt(b)))
    }
    /// 2-D convolution (see [`HostOps::conv2d`]).
    pub fn conv2d(
        &self,
        w: &Tensor<'_>,
        b: Option<&Tensor<'_>>,
        opts: Conv2dOptions,
    ) -> Tensor<'a> {
        self.wrap(self.ops.conv2d(self.id, w.id, opt(b), opts))
    }
    /// Group normalisation (see [`HostOps::group_norm`]).
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: Option<&Tensor<'_>>,
        beta: Option<&Tensor<'_>>,
        eps: f64,
    ) -> Tensor<'a> {
        self.wrap(
            self.ops
                .group_norm(self.id, groups, opt(gamma), opt(beta), eps),
        )
    }
    /// Layer normalisation over the last dimension.
    pub fn layer_norm(
        &self,
        gamma: Option<&Tensor<'_>>,
        beta: Option<&Tensor<'_>>,
        eps: f64,
    ) -> Tensor<'a> {
        self.wrap(self.ops.layer_norm(self.id, opt(gamma), opt(beta), eps))
    }
    /// Dropout with drop probability `p` (identity outside training).
    pub fn dropout(&self, p: f64) -> Tensor<'a> {
        if p <= 0.0 {
            return self.clone();
        }
        self.wrap(self.ops.dropout(self.id, p))
    }
    /// Average pooling (square kernel).
    pub fn avg_pool2d(&self, kernel: usize, stride: usize) -> Tensor<'a> {
        self.wrap(self.ops.avg_pool2d(self.id, kernel, stride))
    }
    /// Nearest-neighbour upsampling by `factor`.
    pub fn upsample_nearest2d(&self, factor: usize) -> Tensor<'a> {
        self.wrap(self.ops.upsample_nearest2d(self.id, factor))
    }
    /// Rows of `self` (`[V, D]`) picked by integer `ids` (`[N]`).
    pub fn embedding(&self, ids: &Tensor<'_>) -> Tensor<'a> {
        self.wrap(self.ops.embedding(self.id, ids.id))
    }
    /// Reads the values back (row-major).
    pub fn to_vec(&self) -> Vec<f32> {
        self.ops.read(self.id).into_vec()
    }
}

macro_rules! bin_ops {
    ($($tr:ident $m:ident $op:ident $sop:expr;)*) => {$(
        impl<'a> $tr<&Tensor<'_>> for &Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, rhs: &Tensor<'_>) -> Tensor<'a> { self.binary(BinaryOp::$op, rhs) }
        }
        impl<'a> $tr<Tensor<'_>> for Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, rhs: Tensor<'_>) -> Tensor<'a> { self.binary(BinaryOp::$op, &rhs) }
        }
        impl<'a> $tr<&Tensor<'_>> for Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, rhs: &Tensor<'_>) -> Tensor<'a> { self.binary(BinaryOp::$op, rhs) }
        }
        impl<'a> $tr<Tensor<'_>> for &Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, rhs: Tensor<'_>) -> Tensor<'a> { self.binary(BinaryOp::$op, &rhs) }
        }
        impl<'a> $tr<f64> for &Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, s: f64) -> Tensor<'a> { let f: fn(&Tensor<'a>, f64) -> Tensor<'a> = $sop; f(self, s) }
        }
        impl<'a> $tr<f64> for Tensor<'a> {
            type Output = Tensor<'a>;
            fn $m(self, s: f64) -> Tensor<'a> { let f: fn(&Tensor<'a>, f64) -> Tensor<'a> = $sop; f(&self, s) }
        }
    )*};
}

bin_ops! {
    Add add Add |t, s| t.scalar(ScalarOp::Add, s);
    Sub sub Sub |t, s| t.scalar(ScalarOp::Add, -s);
    Mul mul Mul |t, s| t.scalar(ScalarOp::Mul, s);
    Div div Div |t, s| t.scalar(ScalarOp::Mul, 1.0 / s);
}

impl<'a> Neg for &Tensor<'a> {
    type Output = Tensor<'a>;
    fn neg(self) -> Tensor<'a> {
        self.unary(UnaryOp::Neg)
    }
}

impl<'a> Neg for Tensor<'a> {
    type Output = Tensor<'a>;
    fn neg(self) -> Tensor<'a> {
        self.unary(UnaryOp::Neg)
    }
}

impl<'a> Tensor<'a> {
    /// `s - self`
    pub fn rsub(&self, s: f64) -> Tensor<'a> {
        self.scalar(ScalarOp::RSub, s)
    }
    /// `s / self`
    pub fn rdiv(&self, s: f64) -> Tensor<'a> {
        self.scalar(ScalarOp::RDiv, s)
    }
}
