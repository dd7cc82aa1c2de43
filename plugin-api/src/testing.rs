//! Shape-only execution of an architecture, for tests and parameter counting.
//!
//! [`ShapeOps`] implements [`HostOps`] without any tensor data: every op computes its output
//! shape with the same rules as the real host (NumPy broadcasting, convolution arithmetic,
//! batched matmul, reshape with one `-1`, ...), records the first error the way the host does
//! (later ops and ops on [`TensorId::INVALID`] return `INVALID`), and records every parameter a
//! forward pass creates. A 200M-parameter model can thus be inspected in microseconds and
//! without memory.
//!
//! ```
//! use memlab_plugin_api::prelude::*;
//! use memlab_plugin_api::testing::inspect;
//!
//! struct OneConv;
//! impl Architecture for OneConv {
//!     fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
//!         Ok(Conv2d::new(3, 3, 3).same().forward(&ctx.scope("conv"), &inp.x))
//!     }
//! }
//!
//! let s = inspect(&OneConv, [2, 3, 32, 32], 0).unwrap();
//! assert_eq!(s.total, 3 * 3 * 3 * 3 + 3);
//! assert_eq!(s.output, vec![2, 3, 32, 32]);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, ROption, RSlice, RSome, RStr, RVec};

use crate::adapter::guard;
use crate::component::{Architecture, Inputs, PResult};
use crate::ffi::{
    ArchitectureBox, BinaryOp, Conv2dOptions, ForwardArgs, HostOps, HostOps_TO, HostOpsDyn, Init,
    ReduceOp, ScalarOp, TensorId, UnaryOp,
};
use crate::shape::{self, Meta, Rule, affine_ids, with_bias};
pub use crate::shape::{broadcast_shape, resolve_shape};
use crate::table::TensorTable;
use crate::tensor::Ctx;

/// Highest tensor rank the host supports (the host also refuses rank 0).
pub const MAX_RANK: usize = 6;

type OpResult = Rule;

#[derive(Default)]
struct State {
    tensors: TensorTable<Meta>,
    params: Vec<(String, Vec<usize>)>,
    index: HashMap<String, usize>,
    buffers: Vec<(String, Vec<usize>)>,
    buffer_index: HashMap<String, usize>,
    error: Option<String>,
    ops_run: u64,
    /// Elements of every tensor an op produced (u128: huge models must not overflow).
    created: u128,
    /// Elements of the largest tensor an op produced.
    largest: u128,
}

/// Number of elements of `shape` in `u128`, saturating (a product of three or more 64-bit
/// dimensions can exceed even `u128`).
pub fn elements(shape: &[usize]) -> u128 {
    shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

impl State {
    fn record(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }
}

/// A [`HostOps`] implementation that tracks shapes only (see the [module docs](self)).
///
/// Hand it to a forward pass with [`ShapeOps::ops`], then read [`ShapeOps::params`],
/// [`ShapeOps::error`] and [`ShapeOps::shape`].
#[derive(Default)]
pub struct ShapeOps {
    state: RefCell<State>,
    training: bool,
}

impl ShapeOps {
    /// An empty evaluation-mode pass (`training()` returns false).
    pub fn new() -> ShapeOps {
        ShapeOps::default()
    }

    /// Sets what [`HostOps::training`] reports.
    pub fn with_training(mut self, training: bool) -> ShapeOps {
        self.training = training;
        self
    }

    /// The ABI object to pass to plugin code (`Ctx::new(&shape_ops.ops())`).
    pub fn ops(&self) -> HostOpsDyn<'_> {
        HostOps_TO::from_ptr(self, TD_Opaque)
    }

    /// A data-less input tensor of `shape` (integer when `int`), e.g. the network input.
    pub fn input(&self, shape: &[usize], int: bool) -> TensorId {
        self.run("input", &[], |_| {
            Ok(Meta {
                shape: shape.to_vec(),
                int,
            })
        })
    }

    /// Shape of a live tensor; `None` for an invalid or released id.
    pub fn shape(&self, id: TensorId) -> Option<Vec<usize>> {
        self.state.borrow().tensors.get(id).map(|m| m.shape.clone())
    }

    /// The first error an op raised (or the plugin reported), if any.
    pub fn error(&self) -> Option<String> {
        self.state.borrow().error.clone()
    }

    /// Every parameter requested so far, with its shape, in creation order.
    pub fn params(&self) -> Vec<(String, Vec<usize>)> {
        self.state.borrow().params.clone()
    }

    /// Number of scalar parameters requested so far (saturating at `usize::MAX`; see
    /// [`ShapeOps::param_elements`] for the exact count).
    pub fn num_params(&self) -> usize {
        usize::try_from(self.param_elements()).unwrap_or(usize::MAX)
    }

    /// Number of scalar parameters requested so far, exactly (saturating at `u128::MAX`).
    pub fn param_elements(&self) -> u128 {
        self.state
            .borrow()
            .params
            .iter()
            .fold(0u128, |acc, (_, s)| acc.saturating_add(elements(s)))
    }

    /// Elements of every tensor the ops produced so far (inputs and the parameters used
    /// included): what a training pass that keeps every intermediate for backward would hold,
    /// a rough upper bound.
    pub fn activation_elements(&self) -> u128 {
        self.state.borrow().created
    }

    /// Elements of the largest tensor an op produced so far.
    pub fn largest_tensor(&self) -> u128 {
        self.state.borrow().largest
    }

    /// Number of live tensor handles (for leak checks).
    pub fn live_tensors(&self) -> usize {
        self.state.borrow().tensors.live()
    }

    /// Number of ops called so far (including skipped ones).
    pub fn ops_run(&self) -> u64 {
        self.state.borrow().ops_run
    }

    fn shapes(&self, ids: &[TensorId]) -> String {
        let st = self.state.borrow();
        let v: Vec<String> = ids
            .iter()
            .map(|id| match st.tensors.get(*id) {
                Some(m) => format!("{:?}{}", m.shape, if m.int { " int" } else { "" }),
                None => "<invalid>".to_string(),
            })
            .collect();
        v.join(", ")
    }

    /// Runs one op like the host does: skipped after an earlier error, an error on invalid
    /// inputs, the op's own error recorded with its name and input shapes.
    fn run(&self, op: &str, inputs: &[TensorId], f: impl FnOnce(&[Meta]) -> OpResult) -> TensorId {
        let metas: Option<Vec<Meta>> = {
            let mut st = self.state.borrow_mut();
            st.ops_run += 1;
            if st.error.is_some() {
                return TensorId::INVALID;
            }
            inputs
                .iter()
                .map(|id| st.tensors.get(*id).cloned())
                .collect()
        };
        let Some(metas) = metas else {
            let msg = format!(
                "op `{op}` got an invalid or released tensor id ({})",
                self.shapes(inputs)
            );
            self.state.borrow_mut().record(msg);
            return TensorId::INVALID;
        };
        // Shape arithmetic on absurd sizes may overflow; a panic must not unwind into the
        // plugin's `extern "C"` frames (that aborts), so it becomes this op's error.
        let res = catch_unwind(AssertUnwindSafe(|| f(&metas)))
            .unwrap_or_else(|_| Err("shape arithmetic overflowed".to_string()))
            .and_then(|m| {
                if m.rank() == 0 || m.rank() > MAX_RANK {
                    Err(format!(
                        "tensors of rank {} are not supported (ranks 1..={MAX_RANK})",
                        m.rank()
                    ))
                } else {
                    Ok(m)
                }
            });
        match res {
            Ok(m) => {
                let mut st = self.state.borrow_mut();
                // A retained handle aliases its tensor: no new memory.
                if op != "retain" {
                    let n = elements(&m.shape);
                    st.created = st.created.saturating_add(n);
                    st.largest = st.largest.max(n);
                }
                st.tensors.insert(m)
            }
            Err(e) => {
                let msg = format!("op `{op}` on [{}]: {e}", self.shapes(inputs));
                self.state.borrow_mut().record(msg);
                TensorId::INVALID
            }
        }
    }

    /// A parameter request; one [`ShapeOps`] is one forward pass, so a name seen before was
    /// used earlier in this pass, which only a `shared` request may do.
    fn param_impl(&self, name: &str, shape: &[usize], shared: bool) -> OpResult {
        let mut st = self.state.borrow_mut();
        if st.buffer_index.contains_key(name) {
            return Err(crate::shape::param_is_buffer(name));
        }
        if let Some(&i) = st.index.get(name) {
            let stored = &st.params[i].1;
            if stored != shape {
                return Err(format!(
                    "parameter `{name}` was created with shape {stored:?} but is now requested \
                     with shape {shape:?}"
                ));
            }
            if !shared {
                return Err(crate::shape::reused_param(name));
            }
            return Ok(Meta::float(shape.to_vec()));
        }
        if shape.is_empty() || shape.contains(&0) {
            return Err(format!("parameter `{name}` has invalid shape {shape:?}"));
        }
        let i = st.params.len();
        st.params.push((name.to_string(), shape.to_vec()));
        st.index.insert(name.to_string(), i);
        Ok(Meta::float(shape.to_vec()))
    }

    fn buffer_impl(&self, name: &str, len: usize, shape: &[usize]) -> OpResult {
        let mut st = self.state.borrow_mut();
        if st.index.contains_key(name) {
            return Err(crate::shape::buffer_is_param(name));
        }
        if st.buffer_index.contains_key(name) {
            return Err(crate::shape::reused_buffer(name));
        }
        if shape.is_empty() || shape.contains(&0) {
            return Err(format!("buffer `{name}` has invalid shape {shape:?}"));
        }
        if elements(shape) != len as u128 {
            return Err(format!("buffer `{name}`: {len} values for shape {shape:?}"));
        }
        let i = st.buffers.len();
        st.buffers.push((name.to_string(), shape.to_vec()));
        st.buffer_index.insert(name.to_string(), i);
        Ok(Meta::float(shape.to_vec()))
    }

    /// Every buffer ([`HostOps::buffer`]) requested so far, with its shape, in creation order.
    pub fn buffers(&self) -> Vec<(String, Vec<usize>)> {
        self.state.borrow().buffers.clone()
    }
}

impl HostOps for ShapeOps {
    fn param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, _init: Init) -> TensorId {
        let name = name.as_str();
        self.run(&format!("param `{name}`"), &[], |_| {
            self.param_impl(name, &shape, false)
        })
    }

    fn shared_param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, _init: Init) -> TensorId {
        let name = name.as_str();
        self.run(&format!("shared_param `{name}`"), &[], |_| {
            self.param_impl(name, &shape, true)
        })
    }

    fn buffer(&self, name: RStr<'_>, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId {
        let name = name.as_str();
        self.run(&format!("buffer `{name}`"), &[], |_| {
            self.buffer_impl(name, data.len(), &shape)
        })
    }

    fn constant(&self, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId {
        self.run("constant", &[], |_| {
            shape::constant(data.len(), &shape, false)
        })
    }

    fn constant_int(&self, data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> TensorId {
        self.run("constant_int", &[], |_| {
            shape::constant(data.len(), &shape, true)
        })
    }

    fn full(&self, shape: RSlice<'_, usize>, _value: f64) -> TensorId {
        self.run("full", &[], |_| Ok(Meta::float(shape.to_vec())))
    }

    fn retain(&self, x: TensorId) -> TensorId {
        self.run("retain", &[x], |s| Ok(s[0].clone()))
    }

    fn release(&self, x: TensorId) {
        self.state.borrow_mut().tensors.remove(x);
    }

    fn rank(&self, x: TensorId) -> usize {
        self.state.borrow().tensors.get(x).map_or(0, |m| m.rank())
    }

    fn dim(&self, x: TensorId, dim: usize) -> usize {
        self.state
            .borrow()
            .tensors
            .get(x)
            .and_then(|m| m.shape.get(dim).copied())
            .unwrap_or(0)
    }

    fn unary(&self, op: UnaryOp, x: TensorId) -> TensorId {
        self.run(op.name(), &[x], |s| shape::elementwise("unary", s))
    }

    fn scalar(&self, _op: ScalarOp, x: TensorId, _s: f64) -> TensorId {
        self.run("scalar", &[x], |s| shape::elementwise("scalar", s))
    }

    fn binary(&self, op: BinaryOp, a: TensorId, b: TensorId) -> TensorId {
        self.run(op.name(), &[a, b], shape::binary)
    }

    fn clamp(&self, x: TensorId, _lo: f64, _hi: f64) -> TensorId {
        self.run("clamp", &[x], |s| shape::elementwise("clamp", s))
    }

    fn reshape(&self, x: TensorId, spec: RSlice<'_, i64>) -> TensorId {
        self.run("reshape", &[x], |s| shape::reshape(s, &spec))
    }

    fn permute(&self, x: TensorId, axes: RSlice<'_, usize>) -> TensorId {
        self.run("permute", &[x], |s| shape::permute(s, &axes))
    }

    fn concat(&self, xs: RSlice<'_, TensorId>, dim: usize) -> TensorId {
        self.run("concat", &xs, |s| shape::concat(s, dim))
    }

    fn slice(&self, x: TensorId, dim: usize, start: usize, end: usize) -> TensorId {
        self.run("slice", &[x], |s| shape::slice(s, dim, start, end))
    }

    fn reduce(&self, _op: ReduceOp, x: TensorId, dim: usize, keepdim: bool) -> TensorId {
        self.run("reduce", &[x], |s| shape::reduce(s, dim, keepdim))
    }

    fn matmul(&self, a: TensorId, b: TensorId) -> TensorId {
        self.run("matmul", &[a, b], shape::matmul)
    }

    fn softmax(&self, x: TensorId, dim: usize) -> TensorId {
        self.run("softmax", &[x], |s| shape::softmax(s, dim))
    }

    fn linear(&self, x: TensorId, w: TensorId, b: ROption<TensorId>) -> TensorId {
        self.run("linear", &with_bias(x, w, b), shape::linear)
    }

    fn conv2d(&self, x: TensorId, w: TensorId, b: ROption<TensorId>, o: Conv2dOptions) -> TensorId {
        self.run("conv2d", &with_bias(x, w, b), |s| shape::conv2d(s, &o))
    }

    fn group_norm(
        &self,
        x: TensorId,
        groups: usize,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        _eps: f64,
    ) -> TensorId {
        self.run("group_norm", &affine_ids(x, gamma, beta), |s| {
            shape::group_norm(s, groups)
        })
    }

    fn layer_norm(
        &self,
        x: TensorId,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        _eps: f64,
    ) -> TensorId {
        self.run("layer_norm", &affine_ids(x, gamma, beta), shape::layer_norm)
    }

    fn dropout(&self, x: TensorId, p: f64) -> TensorId {
        self.run("dropout", &[x], |s| shape::dropout(s, p))
    }

    fn avg_pool2d(&self, x: TensorId, kernel: usize, stride: usize) -> TensorId {
        self.run("avg_pool2d", &[x], |s| shape::avg_pool2d(s, kernel, stride))
    }

    fn upsample_nearest2d(&self, x: TensorId, factor: usize) -> TensorId {
        self.run("upsample_nearest2d", &[x], |s| {
            shape::upsample_nearest2d(s, factor)
        })
    }

    fn embedding(&self, table: TensorId, ids: TensorId) -> TensorId {
        self.run("embedding", &[table, ids], shape::embedding)
    }

    fn training(&self) -> bool {
        self.training
    }

    fn training_set(&self) -> TensorId {
        TensorId::INVALID
    }

    fn read(&self, _x: TensorId) -> RVec<f32> {
        RVec::new()
    }

    fn fail(&self, message: RStr<'_>) {
        self.state
            .borrow_mut()
            .record(format!("plugin reported: {message}"));
    }
}

/// What one shape-only forward pass revealed about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    /// Every parameter with its shape, in creation order.
    pub params: Vec<(String, Vec<usize>)>,
    /// Total number of scalar parameters (saturating at `usize::MAX`; buffers not included).
    pub total: usize,
    /// Every buffer ([`crate::Ctx::buffer`]) with its shape, in creation order.
    pub buffers: Vec<(String, Vec<usize>)>,
    /// Shape of the forward pass's output.
    pub output: Vec<usize>,
    /// Elements of every tensor the pass produced (see [`ShapeOps::activation_elements`]).
    pub activations: u128,
    /// Elements of the largest tensor the pass produced.
    pub largest: u128,
}

impl ModelSummary {
    /// Shape of the parameter `name`, if the model has it.
    pub fn param(&self, name: &str) -> Option<&[usize]> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
    }

    /// Shape of the buffer `name`, if the model has it.
    pub fn buffer(&self, name: &str) -> Option<&[usize]> {
        self.buffers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
    }

    /// Number of scalars in parameters whose name starts with `prefix`.
    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        self.params
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The input ids of one inspection pass.
struct InspectInputs {
    x: TensorId,
    noise: TensorId,
    labels: Option<TensorId>,
}

fn make_inputs(ops: &ShapeOps, x_shape: [usize; 4], classes: u32) -> InspectInputs {
    let n = x_shape[0];
    InspectInputs {
        x: ops.input(&x_shape, false),
        noise: ops.input(&[n], false),
        labels: (classes > 0).then(|| ops.input(&[n], true)),
    }
}

fn summarize(ops: &ShapeOps, out: PResult<TensorId>) -> PResult<ModelSummary> {
    // Like the host, prefer the op error: it names the op and the shapes.
    if let Some(e) = ops.error() {
        return Err(e);
    }
    let out = out?;
    let output = ops
        .shape(out)
        .ok_or_else(|| "forward returned an invalid tensor id".to_string())?;
    ops.release(out);
    Ok(ModelSummary {
        params: ops.params(),
        total: ops.num_params(),
        buffers: ops.buffers(),
        output,
        activations: ops.activation_elements(),
        largest: ops.largest_tensor(),
    })
}

/// Runs one shape-only forward pass of `arch` on an input of `x_shape` (`[N, C, H, W]`), with
/// integer labels `[N]` when `classes > 0`, through the ABI ops object, and reports the
/// parameters it created and its output shape. Errors are reported as the host would
/// (the first failing op, with its input shapes), as is a panic in `forward`.
pub fn inspect(
    arch: &dyn Architecture,
    x_shape: [usize; 4],
    classes: u32,
) -> PResult<ModelSummary> {
    let shape_ops = ShapeOps::new();
    let ins = make_inputs(&shape_ops, x_shape, classes);
    let out = {
        let ops = shape_ops.ops();
        let ops_ref: &HostOpsDyn<'_> = &ops;
        guard("architecture", || {
            let ctx = Ctx::new(ops_ref);
            let inputs = Inputs {
                x: ctx.wrap(ins.x),
                noise: ctx.wrap(ins.noise),
                labels: ins.labels.map(|l| ctx.wrap(l)),
                classes,
            };
            let out = arch.forward(&ctx, inputs)?;
            Ok(out.into_id())
        })
        .into_result()
        .map_err(|e| e.into_string())
    };
    summarize(&shape_ops, out)
}

/// Runs a criterion's embedding network ([`crate::Criterion::embed`]) shape-only on images of
/// `x_shape` (`[N, C, H, W]`): the feature shape (`summary.output`, `[N, D]`), the parameters
/// and their count, as the host would create them, without tensor data.
///
/// ```
/// use memlab_plugin_api::prelude::*;
/// use memlab_plugin_api::testing::inspect_embedding;
///
/// struct Pooled;
/// impl Criterion for Pooled {
///     fn distance(&self) -> Distance { Distance::L2 }
///     fn neighbours(&self) -> usize { 2 }
///     fn needs(&self) -> Needs { Needs::FEATURES }
///     fn judge(&self, _d: &[f32], _f: &mut [bool], _s: &mut [f32]) -> PResult<()> { Ok(()) }
///     fn embed<'a>(&self, ctx: &'a Ctx<'a>, x: &Tensor<'a>) -> PResult<Tensor<'a>> {
///         let h = Conv2d::new(3, 4, 3).same().forward(&ctx.scope("conv"), x).relu();
///         Ok(h.avg_pool2d(8, 8).flatten_from(1))
///     }
/// }
/// let s = inspect_embedding(&Pooled, [5, 3, 8, 8]).unwrap();
/// assert_eq!(s.output, vec![5, 4]);
/// assert_eq!(s.total, 4 * 3 * 9 + 4);
/// ```
pub fn inspect_embedding(
    criterion: &dyn crate::component::Criterion,
    x_shape: [usize; 4],
) -> PResult<ModelSummary> {
    let shape_ops = ShapeOps::new();
    let x = shape_ops.input(&x_shape, false);
    let out = {
        let ops = shape_ops.ops();
        let ops_ref: &HostOpsDyn<'_> = &ops;
        guard("criterion", || {
            let ctx = Ctx::new(ops_ref);
            let x = ctx.wrap(x);
            let out = criterion.embed(&ctx, &x)?;
            Ok(out.into_id())
        })
        .into_result()
        .map_err(|e| e.into_string())
    };
    summarize(&shape_ops, out)
}

/// Like [`inspect`], for an architecture built by a plugin (the boxed FFI object the host
/// receives), so its size can be reported without allocating its parameters.
pub fn inspect_ffi(
    arch: &ArchitectureBox,
    x_shape: [usize; 4],
    classes: u32,
) -> PResult<ModelSummary> {
    let shape_ops = ShapeOps::new();
    let ins = make_inputs(&shape_ops, x_shape, classes);
    let args = ForwardArgs {
        x: ins.x,
        noise: ins.noise,
        labels: match ins.labels {
            Some(l) => RSome(l),
            None => RNone,
        },
        classes,
    };
    let out = arch
        .forward(shape_ops.ops(), args)
        .into_result()
        .map_err(|e| e.into_string());
    // The adapter retains the inputs it is given; release the originals.
    shape_ops.release(ins.x);
    shape_ops.release(ins.noise);
    if let Some(l) = ins.labels {
        shape_ops.release(l);
    }
    summarize(&shape_ops, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Conv2d, GroupNorm, Linear, ResBlock, SpatialAttention, timestep_embedding};
    use crate::tensor::Tensor;

    /// A small conditional conv net exercising most layers.
    struct Net {
        ch: usize,
        blocks: usize,
    }

    impl Architecture for Net {
        fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
            let [_, c, _, _] = inp.x.dims::<4>();
            let ch = self.ch;
            let t = timestep_embedding(ctx, &inp.noise, ch);
            let mut emb = Linear::new(ch, 4 * ch)
                .forward(&ctx.scope("time"), &t)
                .silu();
            if let Some(l) = &inp.labels {
                let table = ctx.param(
                    "label_emb",
                    &[inp.classes as usize, 4 * ch],
                    Init::normal(0.0, 1.0),
                );
                emb = emb + table.embedding(l);
            }
            let mut h = Conv2d::new(c, ch, 3)
                .same()
                .forward(&ctx.scope("conv_in"), &inp.x);
            for i in 0..self.blocks {
                h = ResBlock::new(ch, ch, 4 * ch).scale_shift(true).forward(
                    &ctx.scope(format!("block{i}")),
                    &h,
                    Some(&emb),
                );
            }
            let h = SpatialAttention::new(ch, 2).forward(&ctx.scope("attn"), &h);
            let h = h.avg_pool2d(2, 2).upsample_nearest2d(2);
            let h = GroupNorm::gn32(ch).forward(&ctx.scope("norm"), &h).silu();
            Ok(Conv2d::new(ch, c, 3)
                .same()
                .zero_init()
                .forward(&ctx.scope("conv_out"), &h))
        }
    }

    fn net_count(c: usize, ch: usize, blocks: usize, classes: usize) -> usize {
        let e = 4 * ch;
        let time = ch * e + e;
        let conv_in = c * ch * 9 + ch;
        // in_layers.0 (norm), in_layers.2 (conv), emb_layers.1 (scale-shift: 2·ch outputs),
        // out_layers.0 (norm), out_layers.3 (conv).
        let block = 2 * ch + (ch * ch * 9 + ch) + (e * 2 * ch + 2 * ch) + 2 * ch + ch * ch * 9 + ch;
        let attn = 2 * ch + (ch * 3 * ch + 3 * ch) + (ch * ch + ch);
        let out = 2 * ch + ch * c * 9 + c;
        time + classes * e + conv_in + blocks * block + attn + out
    }

    #[test]
    fn counts_match_hand_computed() {
        let net = Net { ch: 16, blocks: 2 };
        let s = inspect(&net, [4, 3, 8, 8], 0).unwrap();
        assert_eq!(s.total, net_count(3, 16, 2, 0));
        assert_eq!(s.total, 16_691);
        assert_eq!(s.output, vec![4, 3, 8, 8]);
        assert_eq!(s.param("conv_in.weight"), Some(&[16, 3, 3, 3][..]));
        assert_eq!(s.param("block1.emb_layers.1.weight"), Some(&[32, 64][..]));
        assert_eq!(s.param("label_emb"), None);
        assert_eq!(
            s.count_with_prefix("attn."),
            2 * 16 + 16 * 48 + 48 + 16 * 16 + 16
        );

        let cond = inspect(&net, [4, 3, 8, 8], 10).unwrap();
        assert_eq!(cond.total, s.total + 10 * 64);
        assert_eq!(cond.param("label_emb"), Some(&[10, 64][..]));
    }

    #[test]
    fn reports_shape_errors_like_the_host() {
        // 3 input channels but the net is built for 4: the first conv fails, and the error
        // names the op and the shapes; later ops do not overwrite it.
        struct Bad;
        impl Architecture for Bad {
            fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
                let h = Conv2d::new(4, 8, 3).forward(&ctx.scope("c1"), &inp.x);
                let h = h.reshape(&[7, -1]);
                Ok(h.silu())
            }
        }
        let e = inspect(&Bad, [2, 3, 8, 8], 0).unwrap_err();
        assert_eq!(
            e,
            "op `conv2d` on [[2, 3, 8, 8], [8, 4, 3, 3], [8]]: input has 3 channels; weight \
             expects 4×1 groups"
        );
    }

    #[test]
    fn reports_param_shape_conflicts() {
        struct Twice;
        impl Architecture for Twice {
            fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
                let _a = ctx.param("w", &[3, 4], Init::ZEROS);
                let _b = ctx.shared_param("w", &[3, 4], Init::ONES);
                let _c = ctx.shared_param("w", &[4, 3], Init::ZEROS);
                Ok(inp.x)
            }
        }
        let e = inspect(&Twice, [1, 1, 2, 2], 0).unwrap_err();
        assert!(
            e.contains(
                "parameter `w` was created with shape [3, 4] but is now requested with shape [4, 3]"
            ),
            "{e}"
        );
    }

    #[test]
    fn forward_errors_and_panics_are_reported() {
        struct Fails;
        impl Architecture for Fails {
            fn forward<'a>(&self, ctx: &'a Ctx<'a>, _inp: Inputs<'a>) -> PResult<Tensor<'a>> {
                ctx.fail("width must be even");
                Err("gave up".into())
            }
        }
        assert_eq!(
            inspect(&Fails, [1, 1, 2, 2], 0).unwrap_err(),
            "plugin reported: width must be even"
        );
        struct Panics;
        impl Architecture for Panics {
            fn forward<'a>(&self, _ctx: &'a Ctx<'a>, _inp: Inputs<'a>) -> PResult<Tensor<'a>> {
                panic!("boom")
            }
        }
        let e = inspect(&Panics, [1, 1, 2, 2], 0).unwrap_err();
        assert!(e.contains("panicked: boom"), "{e}");
    }

    #[test]
    fn op_shape_rules() {
        let s = ShapeOps::new();
        let ops = s.ops();
        let ctx = Ctx::new(&ops);
        let a = ctx.wrap(s.input(&[2, 1, 5], false));
        let b = ctx.wrap(s.input(&[3, 1], false));
        assert_eq!((&a + &b).shape(), vec![2, 3, 5]);
        assert_eq!(a.reshape(&[-1, 5]).shape(), vec![2, 5]);
        assert_eq!(a.permute(&[2, 0, 1]).shape(), vec![5, 2, 1]);
        assert_eq!(a.sum_dim(2, false).shape(), vec![2, 1]);
        assert_eq!(a.mean_dim(0, true).shape(), vec![1, 1, 5]);
        assert_eq!(a.reshape(&[-1]).sum_dim(0, false).shape(), vec![1]);
        assert_eq!(ctx.concat(&[&a, &a, &a], 1).shape(), vec![2, 3, 5]);
        assert_eq!(a.slice(2, 1, 4).shape(), vec![2, 1, 3]);
        let m = ctx.wrap(s.input(&[4, 5, 7], false));
        // [2, 1, 5] @ [4, 5, 7]: batch dimensions [2] and [4] do not broadcast.
        assert!(a.matmul(&m).is_invalid());
        assert!(
            s.error()
                .unwrap()
                .contains("batch dimensions do not broadcast")
        );

        let s = ShapeOps::new();
        let ops = s.ops();
        let ctx = Ctx::new(&ops);
        let x = ctx.wrap(s.input(&[2, 8, 9, 9], false));
        let w = ctx.param("w", &[16, 4, 3, 3], Init::ZEROS);
        let opts = Conv2dOptions {
            stride: [2, 2],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 2,
        };
        assert_eq!(x.conv2d(&w, None, opts).shape(), vec![2, 16, 5, 5]);
        assert_eq!(x.avg_pool2d(2, 2).shape(), vec![2, 8, 4, 4]);
        assert_eq!(x.upsample_nearest2d(3).shape(), vec![2, 8, 27, 27]);
        assert_eq!(x.group_norm(4, None, None, 1e-5).shape(), vec![2, 8, 9, 9]);
        let lw = ctx.param("lw", &[9, 3], Init::ZEROS);
        assert_eq!(x.linear(&lw, None).shape(), vec![2, 8, 9, 3]);
        let q = ctx.wrap(s.input(&[6, 2, 4, 3], false));
        let k = ctx.wrap(s.input(&[2, 3, 5], false));
        assert_eq!(q.matmul(&k).shape(), vec![6, 2, 4, 5]);
        let table = ctx.param("table", &[10, 7], Init::ZEROS);
        let ids = ctx.constant_int(&[1, 2, 3], &[3]);
        assert_eq!(table.embedding(&ids).shape(), vec![3, 7]);
        assert_eq!(s.error(), None);
        assert_eq!(s.num_params(), 16 * 4 * 9 + 27 + 70);
        // A float tensor as embedding ids is an error, and everything after it is INVALID.
        let bad = table.embedding(&x.reshape(&[-1]));
        assert!(bad.is_invalid());
        assert!(x.silu().is_invalid());
        assert!(s.error().unwrap().starts_with("op `embedding`"));
    }

    #[test]
    fn handles_are_released() {
        let s = ShapeOps::new();
        {
            let ops = s.ops();
            let ctx = Ctx::new(&ops);
            let x = ctx.wrap(s.input(&[2, 3], false));
            let y = (&x * 2.0 + 1.0).silu();
            let _z = y.clone();
            assert!(s.live_tensors() >= 3);
        }
        assert_eq!(s.live_tensors(), 0);
        assert_eq!(s.error(), None);
    }

    #[test]
    fn rank_limits_match_the_host() {
        let s = ShapeOps::new();
        let ops = s.ops();
        let ctx = Ctx::new(&ops);
        let x = ctx.wrap(s.input(&[2, 3], false));
        assert!(x.reshape(&[1, 1, 1, 1, 1, 2, 3]).is_invalid());
        assert!(
            s.error()
                .unwrap()
                .contains("tensors of rank 7 are not supported")
        );
    }

    #[test]
    fn overflowing_shape_arithmetic_is_an_op_error_not_a_panic() {
        let s = ShapeOps::new();
        let x = s.input(&[usize::MAX / 2, 4], false);
        let ops = s.ops();
        let y = ops.reshape(x, RSlice::from_slice(&[-1]));
        assert_eq!(y, TensorId::INVALID);
        assert!(s.error().unwrap().contains("overflow"), "{:?}", s.error());
        assert_eq!(elements(&[usize::MAX, usize::MAX, 2]), u128::MAX);
        assert_eq!(s.activation_elements(), (usize::MAX / 2) as u128 * 4);
    }

    #[test]
    fn inspect_ffi_matches_inspect() {
        use crate::adapter::ArchitectureAdapter;
        use crate::ffi::FfiArchitecture_TO;
        let boxed: ArchitectureBox = FfiArchitecture_TO::from_value(
            ArchitectureAdapter {
                who: "test".into(),
                inner: Net { ch: 8, blocks: 1 },
            },
            TD_Opaque,
        );
        let a = inspect_ffi(&boxed, [2, 3, 8, 8], 4).unwrap();
        assert!(
            a.activations > 2 * 3 * 8 * 8 && a.largest >= 2 * 8 * 8 * 8,
            "{a:?}"
        );
        let b = inspect(&Net { ch: 8, blocks: 1 }, [2, 3, 8, 8], 4).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.total, net_count(3, 8, 1, 4));
    }

    /// Two layers in one scope: shared by mistake unless declared.
    struct Twice {
        shared: bool,
    }

    impl Architecture for Twice {
        fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
            let [_, c, _, _] = inp.x.dims::<4>();
            let scope = if self.shared {
                ctx.scope("conv").shared()
            } else {
                ctx.scope("conv")
            };
            let h = Conv2d::new(c, c, 3).same().forward(&scope, &inp.x);
            let h = Conv2d::new(c, c, 3).same().forward(&scope, &h);
            let f = ctx.buffer("freqs", &[1.0, 2.0], &[2]);
            Ok(h + f.sum())
        }
    }

    #[test]
    fn a_second_request_in_one_pass_is_an_error_unless_shared() {
        let e = inspect(&Twice { shared: false }, [1, 3, 4, 4], 0).unwrap_err();
        assert!(
            e.contains("parameter `conv.weight` is requested a second time in one forward pass"),
            "{e}"
        );
        let s = inspect(&Twice { shared: true }, [1, 3, 4, 4], 0).unwrap();
        assert_eq!(s.total, 3 * 3 * 9 + 3, "the shared conv counts once");
        assert_eq!(s.buffer("freqs"), Some(&[2][..]));
        assert_eq!(s.param("freqs"), None, "buffers are not parameters");
    }

    #[test]
    fn buffer_requests_follow_the_parameter_rules() {
        let ops = ShapeOps::new();
        {
            let dynops = ops.ops();
            let ctx = Ctx::new(&dynops);
            let _ = ctx.buffer("b", &[1.0, 2.0], &[2]);
            let _ = ctx.buffer("b", &[1.0, 2.0], &[2]);
        }
        let e = ops.error().unwrap();
        assert!(e.contains("buffer `b` is requested a second time"), "{e}");
        let ops = ShapeOps::new();
        {
            let dynops = ops.ops();
            let ctx = Ctx::new(&dynops);
            let _ = ctx.buffer("b", &[1.0, 2.0, 3.0], &[2]);
        }
        assert!(ops.error().unwrap().contains("3 values for shape [2]"));
        let ops = ShapeOps::new();
        {
            let dynops = ops.ops();
            let ctx = Ctx::new(&dynops);
            let _ = ctx.param("p", &[2], Init::ONES);
            let _ = ctx.buffer("p", &[1.0, 2.0], &[2]);
        }
        assert!(ops.error().unwrap().contains("`p` is a parameter"));
    }
}
