//! The host side of the tensor API: [`Executor`] executes a plugin's ops on burn tensors.
//!
//! It is an eager executor, not a graph: each op runs when the plugin calls it (burn's autodiff
//! records what training needs). An `Executor` lives for one forward pass. It owns a table of
//! rank-erased tensors addressed by [`TensorId`], lifts parameters from the [`ParamStore`] (as autodiff leaves when training),
//! and records the first error an op raises: ops never panic across the plugin boundary; a
//! failed op returns `TensorId::INVALID`, ops on invalid ids return `INVALID` silently, and
//! [`Executor::finish`] reports the first error with the op and the shapes involved.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::std_types::{ROption, RSlice, RStr, RVec};
use anyhow::{Result, anyhow, bail};
use burn::tensor::activation;
use burn::tensor::module as fmod;
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, DispatchTensor, Int, Tensor, TensorData};
use indexmap::IndexMap;
use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::adapter::panic_message;
use memlab_plugin_api::ffi::{
    BinaryOp, Conv2dOptions, HostOps, HostOps_TO, HostOpsDyn, Init, ReduceOp, ScalarOp, TensorId,
    UnaryOp,
};
use memlab_plugin_api::shape::{self, Meta, broadcast_shape};
use memlab_plugin_api::table::TensorTable;

use super::kernels;
use super::params::{ParamStore, read_f32};
use super::rank::{by_rank, dims_array, to_dispatch, to_dispatch_int};

/// A tensor the host holds for a plugin: the burn tensor behind one [`TensorId`], with its shape.
#[derive(Clone)]
pub struct HostTensor {
    /// The tensor.
    pub t: DispatchTensor,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Integer (labels, indices) rather than float.
    pub int: bool,
}

impl HostTensor {
    fn float(t: DispatchTensor, shape: Vec<usize>) -> HostTensor {
        HostTensor {
            t,
            shape,
            int: false,
        }
    }
    fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// A GroupNorm (with scale and shift) whose output is computed on first use. When that use is
/// SiLU (every residual block: `GroupNorm → SiLU → conv`), the two run as one fused op
/// ([`kernels::group_norm_silu`]: the same bits, one pass, and the normalised tensor is never
/// written); any other use computes the GroupNorm then. The plugin cannot tell: its id holds
/// a placeholder of the output's shape, and every path that reads a tensor's values
/// ([`Executor::slot`], the inputs of every op) computes deferred ones first.
#[derive(Clone)]
struct DeferredNorm {
    /// `x`, `gamma`, `beta`.
    inputs: Vec<HostTensor>,
    groups: usize,
    eps: f64,
}

impl DeferredNorm {
    /// The GroupNorm, followed by SiLU in the same op when `silu`.
    fn compute(&self, silu: bool) -> Result<HostTensor> {
        affine_group_norm(&self.inputs, self.groups, self.eps, silu)
    }
}

/// GroupNorm of `s[0]` with scale `s[1]` and shift `s[2]` (then SiLU when `silu`) on the
/// kernels.
fn affine_group_norm(s: &[HostTensor], groups: usize, eps: f64, silu: bool) -> Result<HostTensor> {
    let (x, g, b) = (&s[0], &s[1], &s[2]);
    let t = by_rank!(x.rank(), D => kernels::group_norm_with(float_tensor::<D>(x), float_tensor::<1>(g), float_tensor::<1>(b), groups, eps, silu).into_dispatch())?;
    Ok(HostTensor::float(t, x.shape.clone()))
}

/// Whether GroupNorm is deferred for fusion (`MEMLAB_FUSE=off` computes every GroupNorm at
/// once, for A/B measurements; the results are the same bits either way).
fn fuse_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !std::env::var("MEMLAB_FUSE").is_ok_and(|v| v == "off" || v == "0"))
}

/// Execution mode of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Autodiff recording, dropout active.
    Train,
    /// No autodiff, dropout off.
    Eval,
}

/// One forward pass's worth of host-side state.
pub struct Executor<'p> {
    device: Device,
    mode: Mode,
    params: RefCell<&'p mut ParamStore>,
    /// Per-pass cache of parameter leaves, so a parameter used twice is one autodiff leaf.
    leaves: RefCell<IndexMap<String, DispatchTensor>>,
    /// The buffers used in this pass (never gradient leaves).
    buffers: RefCell<IndexMap<String, DispatchTensor>>,
    slab: RefCell<TensorTable<HostTensor>>,
    /// Ids whose slab entry is a placeholder for a GroupNorm not computed yet.
    deferred: RefCell<std::collections::HashMap<TensorId, DeferredNorm>>,
    error: RefCell<Option<String>>,
    rng: RefCell<SplitMix64>,
    training_set: Option<TensorId>,
    ops_run: Cell<u64>,
}

/// The burn float tensor of rank `D` behind `s`.
fn float_tensor<const D: usize>(s: &HostTensor) -> Tensor<D> {
    Tensor::<D>::from_dispatch(s.t.clone())
}

/// The burn integer vector behind `s` (labels).
fn int_vector(s: &HostTensor) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_dispatch(s.t.clone())
}

/// Reshapes a float tensor of any rank to `shape` (any rank).
pub fn reshape_dyn(s: &HostTensor, shape: &[usize]) -> Result<HostTensor> {
    let n_in: usize = s.shape.iter().product();
    let n_out: usize = shape.iter().product();
    if n_in != n_out {
        bail!(
            "cannot reshape {:?} ({n_in} elements) to {shape:?} ({n_out} elements)",
            s.shape
        );
    }
    if s.shape == shape {
        return Ok(s.clone());
    }
    let t = by_rank!(s.rank(), DI => {
        let x = Tensor::<DI>::from_dispatch(s.t.clone());
        by_rank!(shape.len(), DO => x.reshape(dims_array::<DO>(shape)).into_dispatch())?
    })?;
    Ok(HostTensor {
        t,
        shape: shape.to_vec(),
        int: s.int,
    })
}

impl<'p> Executor<'p> {
    /// A forward pass on `device` (autodiff is enabled on it for [`Mode::Train`]) using and
    /// extending `params`; dropout masks come from `seed`.
    pub fn new(device: &Device, mode: Mode, params: &'p mut ParamStore, seed: u64) -> Executor<'p> {
        let device = match mode {
            Mode::Train => device.clone().autodiff(),
            Mode::Eval => device.clone().inner(),
        };
        Executor {
            device,
            mode,
            params: RefCell::new(params),
            leaves: RefCell::new(IndexMap::new()),
            buffers: RefCell::new(IndexMap::new()),
            slab: RefCell::new(TensorTable::default()),
            deferred: RefCell::new(std::collections::HashMap::new()),
            error: RefCell::new(None),
            rng: RefCell::new(SplitMix64::for_index(seed, 0x64726f70)),
            training_set: None,
            ops_run: Cell::new(0),
        }
    }

    /// The device ops run on (autodiff-enabled in training mode).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The ops object to hand to a plugin.
    pub fn ops(&self) -> HostOpsDyn<'_> {
        HostOps_TO::from_ptr(self, abi_stable::sabi_trait::TD_Opaque)
    }

    /// Inserts a host tensor and returns its id.
    pub fn insert(&self, slot: HostTensor) -> TensorId {
        self.slab.borrow_mut().insert(slot)
    }

    /// Inserts float data.
    pub fn insert_data(&self, data: Vec<f32>, shape: &[usize]) -> Result<TensorId> {
        let t = to_dispatch(TensorData::new(data, shape.to_vec()), &self.device)?;
        Ok(self.insert(HostTensor::float(t, shape.to_vec())))
    }

    /// Inserts integer data.
    pub fn insert_int(&self, data: Vec<i64>, shape: &[usize]) -> Result<TensorId> {
        let t = to_dispatch_int(TensorData::new(data, shape.to_vec()), &self.device)?;
        Ok(self.insert(HostTensor {
            t,
            shape: shape.to_vec(),
            int: true,
        }))
    }

    /// Makes `data` (e.g. the training set) available through `HostOps::training_set`.
    pub fn set_training_set(&mut self, slot: HostTensor) {
        let id = self.insert(slot);
        self.training_set = Some(id);
    }

    /// A copy of a live tensor.
    pub fn slot(&self, id: TensorId) -> Result<HostTensor> {
        self.materialize(id);
        self.slab
            .borrow()
            .get(id)
            .cloned()
            .ok_or_else(|| anyhow!("tensor id {} is not live", id.0))
    }

    /// Number of live tensors (for leak checks in tests).
    pub fn live_tensors(&self) -> usize {
        self.slab.borrow().live()
    }

    /// Number of tensor ops executed so far in this pass (for dispatch-overhead accounting).
    pub fn ops_run(&self) -> u64 {
        self.ops_run.get()
    }

    /// The first error any op raised, if one did.
    pub fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    /// Checks the pass's error state and returns the output tensor `id`.
    pub fn finish(&self, id: TensorId) -> Result<HostTensor> {
        if let Some(e) = self.error() {
            bail!("{e}");
        }
        self.slot(id)
    }

    /// The autodiff leaves of the parameters used in this pass, by name.
    pub fn leaves(&self) -> IndexMap<String, DispatchTensor> {
        self.leaves.borrow().clone()
    }

    fn record(&self, msg: String) {
        let mut e = self.error.borrow_mut();
        if e.is_none() {
            *e = Some(msg);
        }
    }

    fn shapes(&self, ids: &[TensorId]) -> String {
        let slab = self.slab.borrow();
        let v: Vec<String> = ids
            .iter()
            .map(|id| match slab.get(*id) {
                Some(s) => format!("{:?}{}", s.shape, if s.int { " int" } else { "" }),
                None => "<invalid>".to_string(),
            })
            .collect();
        v.join(", ")
    }

    /// Counts an op and says whether it may run (no earlier error in this pass).
    fn begin_op(&self) -> bool {
        self.ops_run.set(self.ops_run.get() + 1);
        self.error.borrow().is_none()
    }

    /// Runs one op: skips it after an earlier error or on invalid inputs, catches panics, and
    /// records failures with the op name and input shapes.
    fn run(
        &self,
        op: &str,
        inputs: &[TensorId],
        f: impl FnOnce(&[HostTensor]) -> Result<HostTensor>,
    ) -> TensorId {
        if !self.begin_op() {
            return TensorId::INVALID;
        }
        for id in inputs {
            self.materialize(*id);
        }
        let slots: Option<Vec<HostTensor>> = {
            let slab = self.slab.borrow();
            inputs.iter().map(|id| slab.get(*id).cloned()).collect()
        };
        let Some(slots) = slots else {
            self.record(format!(
                "op `{op}` got an invalid or released tensor id ({})",
                self.shapes(inputs)
            ));
            return TensorId::INVALID;
        };
        match self.compute(op, &slots, f) {
            Some(s) => self.insert(s),
            None => TensorId::INVALID,
        }
    }

    /// Runs `f` on `slots` (catching panics, timing it for [`super::profile`]); records a
    /// failure, naming `op` and the input shapes, and returns `None` then.
    fn compute(
        &self,
        op: &str,
        slots: &[HostTensor],
        f: impl FnOnce(&[HostTensor]) -> Result<HostTensor>,
    ) -> Option<HostTensor> {
        let timer = super::profile::enabled().then(std::time::Instant::now);
        let result = catch_unwind(AssertUnwindSafe(|| f(slots)));
        let shapes = || {
            let v: Vec<String> = slots
                .iter()
                .map(|s| format!("{:?}{}", s.shape, if s.int { " int" } else { "" }))
                .collect();
            v.join(", ")
        };
        if let Some(t0) = timer {
            // Parameter requests carry their name after the op: one row for all of them.
            let name = op.split(" `").next().unwrap_or(op);
            let v: Vec<String> = slots.iter().map(|s| format!("{:?}", s.shape)).collect();
            super::profile::record(name, v.join(" "), t0.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                self.record(format!("op `{op}` on [{}]: {e}", shapes()));
                None
            }
            Err(p) => {
                self.record(format!(
                    "op `{op}` on [{}] failed in the backend: {}",
                    shapes(),
                    panic_message(&*p)
                ));
                None
            }
        }
    }

    /// Computes the deferred GroupNorm behind `id`, if there is one, into its slab entry (a
    /// failure records the error and releases `id`).
    fn materialize(&self, id: TensorId) {
        let Some(d) = self.deferred.borrow_mut().remove(&id) else {
            return;
        };
        match self.compute("group_norm", &d.inputs, |_| d.compute(false)) {
            Some(t) => {
                if let Some(slot) = self.slab.borrow_mut().get_mut(id) {
                    *slot = t;
                }
            }
            None => {
                self.slab.borrow_mut().remove(id);
            }
        }
    }

    /// A parameter request. `leaves` holds every parameter this pass has used, so a name in
    /// it was requested before in this pass: allowed only when the plugin declared sharing.
    fn param_impl(
        &self,
        name: &str,
        shape: &[usize],
        init: Init,
        shared: bool,
    ) -> Result<HostTensor> {
        if self.buffers.borrow().contains_key(name) {
            bail!("{}", memlab_plugin_api::shape::param_is_buffer(name));
        }
        if let Some(t) = self.leaves.borrow().get(name) {
            if !shared {
                bail!("{}", memlab_plugin_api::shape::reused_param(name));
            }
            let params = self.params.borrow();
            let stored = params
                .get(name)
                .map(|p| p.shape.clone())
                .unwrap_or_default();
            if stored != shape {
                bail!("parameter `{name}` has shape {stored:?} but is requested with {shape:?}");
            }
            return Ok(HostTensor::float(t.clone(), shape.to_vec()));
        }
        let value = self.params.borrow_mut().get_or_create(
            name,
            shape,
            init,
            &self.device.clone().inner(),
        )?;
        let t = match self.mode {
            Mode::Train => by_rank!(shape.len(), D => Tensor::<D>::from_dispatch(value)
                .autodiff()
                .require_grad()
                .into_dispatch())?,
            Mode::Eval => value,
        };
        // A stored shape may differ from the request only if get_or_create failed above.
        self.leaves.borrow_mut().insert(name.to_string(), t.clone());
        Ok(HostTensor::float(t, shape.to_vec()))
    }

    /// A buffer request: the stored value (created from `data` if new), never a gradient
    /// leaf; once per pass.
    fn buffer_impl(&self, name: &str, data: &[f32], shape: &[usize]) -> Result<HostTensor> {
        if self.leaves.borrow().contains_key(name) {
            bail!("{}", memlab_plugin_api::shape::buffer_is_param(name));
        }
        if self.buffers.borrow().contains_key(name) {
            bail!("{}", memlab_plugin_api::shape::reused_buffer(name));
        }
        let value = self.params.borrow_mut().get_or_create_buffer(
            name,
            data,
            shape,
            &self.device.clone().inner(),
        )?;
        let t = match self.mode {
            Mode::Train => {
                by_rank!(shape.len(), D => Tensor::<D>::from_dispatch(value).autodiff().into_dispatch())?
            }
            Mode::Eval => value,
        };
        self.buffers
            .borrow_mut()
            .insert(name.to_string(), t.clone());
        Ok(HostTensor::float(t, shape.to_vec()))
    }
}

/// What the shape rules see of the inputs.
fn metas(s: &[HostTensor]) -> Vec<Meta> {
    s.iter()
        .map(|x| Meta {
            shape: x.shape.clone(),
            int: x.int,
        })
        .collect()
}

/// An op's output shape by the shared rules ([`memlab_plugin_api::shape`]), or their error.
/// Every op checks its inputs with this before running on burn, so the host accepts exactly
/// what the shape-only host (`memlab_plugin_api::testing::ShapeOps`) accepts.
fn check(rule: shape::Rule) -> Result<Vec<usize>> {
    rule.map(|m| m.shape).map_err(|e| anyhow!(e))
}

fn unary_impl(op: UnaryOp, s: &HostTensor) -> Result<HostTensor> {
    let t = by_rank!(s.rank(), D => {
        let x = float_tensor::<D>(s);
        let y = match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.log(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => activation::sigmoid(x),
            UnaryOp::Relu => activation::relu(x),
            UnaryOp::Silu => kernels::silu(x),
            UnaryOp::Gelu => activation::gelu(x),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Square => x.clone() * x,
            UnaryOp::Recip => x.recip(),
        };
        y.into_dispatch()
    })?;
    Ok(HostTensor::float(t, s.shape.clone()))
}

fn scalar_impl(op: ScalarOp, s: &HostTensor, v: f64) -> Result<HostTensor> {
    let t = by_rank!(s.rank(), D => {
        let x = float_tensor::<D>(s);
        let y = match op {
            ScalarOp::Add => x.add_scalar(v),
            ScalarOp::Mul => x.mul_scalar(v),
            ScalarOp::Pow => x.powf_scalar(v),
            ScalarOp::RSub => x.neg().add_scalar(v),
            ScalarOp::RDiv => x.recip().mul_scalar(v),
            ScalarOp::Max => x.clamp_min(v),
            ScalarOp::Min => x.clamp_max(v),
        };
        y.into_dispatch()
    })?;
    Ok(HostTensor::float(t, s.shape.clone()))
}

fn binary_impl(op: BinaryOp, a: &HostTensor, b: &HostTensor) -> Result<HostTensor> {
    let out = broadcast_shape(&a.shape, &b.shape)
        .ok_or_else(|| anyhow!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape))?;
    let r = out.len();
    let lift = |s: &HostTensor| -> Result<HostTensor> {
        if s.rank() == r {
            return Ok(s.clone());
        }
        let mut shape = vec![1; r - s.rank()];
        shape.extend_from_slice(&s.shape);
        reshape_dyn(s, &shape)
    };
    let (a, b) = (lift(a)?, lift(b)?);
    let t = by_rank!(r, D => {
        let (x, y) = (float_tensor::<D>(&a), float_tensor::<D>(&b));
        let z = match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Max => {
                let (x, y) = (x.expand(dims_array::<D>(&out)), y.expand(dims_array::<D>(&out)));
                x.max_pair(y)
            }
            BinaryOp::Min => {
                let (x, y) = (x.expand(dims_array::<D>(&out)), y.expand(dims_array::<D>(&out)));
                x.min_pair(y)
            }
        };
        z.into_dispatch()
    })?;
    Ok(HostTensor::float(t, out))
}

/// `reduce` on a checked input (see [`shape::reduce`]).
fn reduce_impl(op: ReduceOp, s: &HostTensor, dim: usize, keepdim: bool) -> Result<HostTensor> {
    let t = by_rank!(s.rank(), D => {
        let x = float_tensor::<D>(s);
        let y = match op {
            ReduceOp::Sum => x.sum_dim(dim),
            ReduceOp::Mean => x.mean_dim(dim),
            ReduceOp::Max => x.max_dim(dim),
            ReduceOp::Min => x.min_dim(dim),
            ReduceOp::Var => x.var_bias(dim),
        };
        y.into_dispatch()
    })?;
    let mut shape = s.shape.clone();
    shape[dim] = 1;
    let kept = HostTensor::float(t, shape.clone());
    if keepdim || s.rank() == 1 {
        return Ok(kept);
    }
    shape.remove(dim);
    reshape_dyn(&kept, &shape)
}

/// Normalises `x` over groups of channels (`groups` divides `C`: checked by `group_norm`).
fn norm_groups(x: &HostTensor, groups: usize, eps: f64) -> Result<HostTensor> {
    // [N, C, ...] → [N, G, C/G·rest]; normalise over the last dim.
    let n = x.shape[0];
    let grouped = reshape_dyn(
        x,
        &[n, groups, x.shape[1..].iter().product::<usize>() / groups],
    )?;
    let g = float_tensor::<3>(&grouped);
    let mean = g.clone().mean_dim(2);
    let centered = g - mean;
    let var = (centered.clone() * centered.clone()).mean_dim(2);
    let y = centered / var.add_scalar(eps).sqrt();
    reshape_dyn(
        &HostTensor::float(y.into_dispatch(), grouped.shape.clone()),
        &x.shape,
    )
}

impl HostOps for Executor<'_> {
    fn param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> TensorId {
        let name = name.as_str();
        self.run(&format!("param `{name}`"), &[], |_| {
            self.param_impl(name, &shape, init, false)
        })
    }

    fn shared_param(&self, name: RStr<'_>, shape: RSlice<'_, usize>, init: Init) -> TensorId {
        let name = name.as_str();
        self.run(&format!("shared_param `{name}`"), &[], |_| {
            self.param_impl(name, &shape, init, true)
        })
    }

    fn buffer(&self, name: RStr<'_>, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId {
        let name = name.as_str();
        self.run(&format!("buffer `{name}`"), &[], |_| {
            self.buffer_impl(name, &data, &shape)
        })
    }

    fn constant(&self, data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> TensorId {
        self.run("constant", &[], |_| {
            check(shape::constant(data.len(), &shape, false))?;
            let t = to_dispatch(TensorData::new(data.to_vec(), shape.to_vec()), &self.device)?;
            Ok(HostTensor::float(t, shape.to_vec()))
        })
    }

    fn constant_int(&self, data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> TensorId {
        self.run("constant_int", &[], |_| {
            check(shape::constant(data.len(), &shape, true))?;
            let t = to_dispatch_int(TensorData::new(data.to_vec(), shape.to_vec()), &self.device)?;
            Ok(HostTensor {
                t,
                shape: shape.to_vec(),
                int: true,
            })
        })
    }

    fn full(&self, shape: RSlice<'_, usize>, value: f64) -> TensorId {
        self.run("full", &[], |_| {
            let t = by_rank!(shape.len(), D => Tensor::<D>::full(dims_array::<D>(&shape), value, &self.device).into_dispatch())?;
            Ok(HostTensor::float(t, shape.to_vec()))
        })
    }

    fn retain(&self, x: TensorId) -> TensorId {
        let d = self.deferred.borrow().get(&x).cloned();
        let Some(d) = d else {
            return self.run("retain", &[x], |s| Ok(s[0].clone()));
        };
        // A handle on a deferred GroupNorm: the copy is deferred too.
        if !self.begin_op() {
            return TensorId::INVALID;
        }
        let placeholder = self.slab.borrow().get(x).cloned();
        match placeholder {
            Some(p) => {
                let id = self.insert(p);
                self.deferred.borrow_mut().insert(id, d);
                id
            }
            _ => TensorId::INVALID,
        }
    }

    fn release(&self, x: TensorId) {
        if x != TensorId::INVALID {
            self.deferred.borrow_mut().remove(&x);
            self.slab.borrow_mut().remove(x);
        }
    }

    fn rank(&self, x: TensorId) -> usize {
        self.slab.borrow().get(x).map_or(0, |s| s.rank())
    }

    fn dim(&self, x: TensorId, dim: usize) -> usize {
        self.slab
            .borrow()
            .get(x)
            .and_then(|s| s.shape.get(dim).copied())
            .unwrap_or(0)
    }

    fn unary(&self, op: UnaryOp, x: TensorId) -> TensorId {
        if op == UnaryOp::Silu {
            let d = self.deferred.borrow().get(&x).cloned();
            if let Some(d) = d {
                // GroupNorm → SiLU as one op; `x` stays deferred for any other use.
                if !self.begin_op() {
                    return TensorId::INVALID;
                }
                return match self.compute("group_norm+silu", &d.inputs, |_| d.compute(true)) {
                    Some(t) => self.insert(t),
                    None => TensorId::INVALID,
                };
            }
        }
        self.run(op.name(), &[x], |s| {
            check(shape::elementwise("unary", &metas(s)))?;
            unary_impl(op, &s[0])
        })
    }

    fn scalar(&self, op: ScalarOp, x: TensorId, v: f64) -> TensorId {
        self.run("scalar", &[x], |s| {
            check(shape::elementwise("scalar", &metas(s)))?;
            scalar_impl(op, &s[0], v)
        })
    }

    fn binary(&self, op: BinaryOp, a: TensorId, b: TensorId) -> TensorId {
        self.run(op.name(), &[a, b], |s| {
            check(shape::binary(&metas(s)))?;
            binary_impl(op, &s[0], &s[1])
        })
    }

    fn clamp(&self, x: TensorId, lo: f64, hi: f64) -> TensorId {
        self.run("clamp", &[x], |s| {
            check(shape::elementwise("clamp", &metas(s)))?;
            let t =
                by_rank!(s[0].rank(), D => float_tensor::<D>(&s[0]).clamp(lo, hi).into_dispatch())?;
            Ok(HostTensor::float(t, s[0].shape.clone()))
        })
    }

    fn reshape(&self, x: TensorId, shape: RSlice<'_, i64>) -> TensorId {
        self.run("reshape", &[x], |s| {
            let target = check(shape::reshape(&metas(s), &shape))?;
            reshape_dyn(&s[0], &target)
        })
    }

    fn permute(&self, x: TensorId, axes: RSlice<'_, usize>) -> TensorId {
        self.run("permute", &[x], |s| {
            let shape = check(shape::permute(&metas(s), &axes))?;
            let r = s[0].rank();
            let t = by_rank!(r, D => float_tensor::<D>(&s[0]).permute(dims_array::<D>(&axes)).into_dispatch())?;
            Ok(HostTensor::float(t, shape))
        })
    }

    fn concat(&self, xs: RSlice<'_, TensorId>, dim: usize) -> TensorId {
        self.run("concat", &xs, |s| {
            let shape = check(shape::concat(&metas(s), dim))?;
            let r = shape.len();
            let t = by_rank!(r, D => Tensor::cat(s.iter().map(float_tensor::<D>).collect(), dim).into_dispatch())?;
            Ok(HostTensor::float(t, shape))
        })
    }

    fn slice(&self, x: TensorId, dim: usize, start: usize, end: usize) -> TensorId {
        self.run("slice", &[x], |s| {
            let shape = check(shape::slice(&metas(s), dim, start, end))?;
            let t = by_rank!(shape.len(), D => float_tensor::<D>(&s[0]).narrow(dim, start, end - start).into_dispatch())?;
            Ok(HostTensor::float(t, shape))
        })
    }

    fn reduce(&self, op: ReduceOp, x: TensorId, dim: usize, keepdim: bool) -> TensorId {
        self.run("reduce", &[x], |s| {
            check(shape::reduce(&metas(s), dim, keepdim))?;
            reduce_impl(op, &s[0], dim, keepdim)
        })
    }

    fn matmul(&self, a: TensorId, b: TensorId) -> TensorId {
        self.run("matmul", &[a, b], |s| {
            let shape = check(shape::matmul(&metas(s)))?;
            let (x, y) = (&s[0], &s[1]);
            let r = shape.len();
            let lift = |s: &HostTensor| -> Result<HostTensor> {
                let mut shape = vec![1; r - s.rank()];
                shape.extend_from_slice(&s.shape);
                reshape_dyn(s, &shape)
            };
            let (x, y) = (lift(x)?, lift(y)?);
            let t = by_rank!(r, D => float_tensor::<D>(&x).matmul(float_tensor::<D>(&y)).into_dispatch())?;
            Ok(HostTensor::float(t, shape))
        })
    }

    fn softmax(&self, x: TensorId, dim: usize) -> TensorId {
        self.run("softmax", &[x], |s| {
            check(shape::softmax(&metas(s), dim))?;
            let t = by_rank!(s[0].rank(), D => kernels::softmax(float_tensor::<D>(&s[0]), dim).into_dispatch())?;
            Ok(HostTensor::float(t, s[0].shape.clone()))
        })
    }

    fn linear(&self, x: TensorId, w: TensorId, b: ROption<TensorId>) -> TensorId {
        let ids = shape::with_bias(x, w, b);
        self.run("linear", &ids, |s| {
            let shape = check(shape::linear(&metas(s)))?;
            let (x, w) = (&s[0], &s[1]);
            let bias = s.get(2).map(float_tensor::<1>);
            let t = by_rank!(x.rank(), D => fmod::linear(float_tensor::<D>(x), float_tensor::<2>(w), bias).into_dispatch())?;
            Ok(HostTensor::float(t, shape))
        })
    }

    fn conv2d(&self, x: TensorId, w: TensorId, b: ROption<TensorId>, o: Conv2dOptions) -> TensorId {
        let ids = shape::with_bias(x, w, b);
        self.run("conv2d", &ids, |s| {
            let shape = check(shape::conv2d(&metas(s), &o))?;
            let (x, w) = (&s[0], &s[1]);
            let g = o.groups.max(1);
            let bias = s.get(2).map(float_tensor::<1>);
            let opts = ConvOptions::new(o.stride, o.padding, o.dilation, g);
            let t = kernels::conv2d(float_tensor::<4>(x), float_tensor::<4>(w), bias, opts)
                .into_dispatch();
            Ok(HostTensor::float(t, shape))
        })
    }

    fn group_norm(
        &self,
        x: TensorId,
        groups: usize,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f64,
    ) -> TensorId {
        let ids = shape::affine_ids(x, gamma, beta);
        let (has_g, has_b) = (gamma.is_some(), beta.is_some());
        if has_g && has_b && fuse_enabled() {
            // The common case (every shipped network): one kernel with its own backward,
            // deferred to the first use so that a following SiLU fuses with it.
            let inputs = RefCell::new(None);
            let id = self.run("group_norm", &ids, |s| {
                check(shape::group_norm(&metas(s), groups))?;
                *inputs.borrow_mut() = Some(s.to_vec());
                // A placeholder with the output's shape, never read (see `DeferredNorm`).
                Ok(s[0].clone())
            });
            if let Some(inputs) = inputs.into_inner()
                && id != TensorId::INVALID
            {
                let d = DeferredNorm {
                    inputs,
                    groups,
                    eps,
                };
                self.deferred.borrow_mut().insert(id, d);
            }
            return id;
        }
        self.run("group_norm", &ids, |s| {
            check(shape::group_norm(&metas(s), groups))?;
            let x = &s[0];
            let c = x.shape[1];
            if has_g && has_b {
                return affine_group_norm(s, groups, eps, false);
            }
            let y = norm_groups(x, groups, eps)?;
            let mut bshape = vec![1; x.rank()];
            bshape[1] = c;
            let mut y = y;
            let mut k = 1;
            for (present, is_gamma) in [(has_g, true), (has_b, false)] {
                if !present {
                    continue;
                }
                let p = &s[k];
                k += 1;
                let p = reshape_dyn(p, &bshape)?;
                y = binary_impl(
                    if is_gamma {
                        BinaryOp::Mul
                    } else {
                        BinaryOp::Add
                    },
                    &y,
                    &p,
                )?;
            }
            Ok(y)
        })
    }

    fn layer_norm(
        &self,
        x: TensorId,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f64,
    ) -> TensorId {
        let ids = shape::affine_ids(x, gamma, beta);
        let (has_g, has_b) = (gamma.is_some(), beta.is_some());
        self.run("layer_norm", &ids, |s| {
            check(shape::layer_norm(&metas(s)))?;
            let x = &s[0];
            let r = x.rank();
            let t = by_rank!(r, D => {
                let t = float_tensor::<D>(x);
                let mean = t.clone().mean_dim(D - 1);
                let c = t - mean;
                let var = (c.clone() * c.clone()).mean_dim(D - 1);
                (c / var.add_scalar(eps).sqrt()).into_dispatch()
            })?;
            let mut y = HostTensor::float(t, x.shape.clone());
            let mut k = 1;
            for (present, is_gamma) in [(has_g, true), (has_b, false)] {
                if !present {
                    continue;
                }
                y = binary_impl(
                    if is_gamma {
                        BinaryOp::Mul
                    } else {
                        BinaryOp::Add
                    },
                    &y,
                    &s[k],
                )?;
                k += 1;
            }
            Ok(y)
        })
    }

    fn dropout(&self, x: TensorId, p: f64) -> TensorId {
        self.run("dropout", &[x], |s| {
            check(shape::dropout(&metas(s), p))?;
            if self.mode == Mode::Eval || p == 0.0 {
                return Ok(s[0].clone());
            }
            let n: usize = s[0].shape.iter().product();
            let keep = 1.0 - p;
            let scale = (1.0 / keep) as f32;
            let mask: Vec<f32> = {
                let mut rng = self.rng.borrow_mut();
                (0..n)
                    .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
                    .collect()
            };
            let mask = to_dispatch(
                TensorData::new(mask, s[0].shape.clone()),
                &self.device.clone().inner(),
            )?;
            let m = HostTensor::float(mask, s[0].shape.clone());
            binary_impl(BinaryOp::Mul, &s[0], &m)
        })
    }

    fn avg_pool2d(&self, x: TensorId, kernel: usize, stride: usize) -> TensorId {
        self.run("avg_pool2d", &[x], |s| {
            let shape = check(shape::avg_pool2d(&metas(s), kernel, stride))?;
            let t = kernels::avg_pool2d(float_tensor::<4>(&s[0]), kernel, stride).into_dispatch();
            Ok(HostTensor::float(t, shape))
        })
    }

    fn upsample_nearest2d(&self, x: TensorId, factor: usize) -> TensorId {
        self.run("upsample_nearest2d", &[x], |s| {
            let shape = check(shape::upsample_nearest2d(&metas(s), factor))?;
            let opts = InterpolateOptions::new(InterpolateMode::Nearest)
                .with_output_size([shape[2], shape[3]]);
            let t = fmod::interpolate(float_tensor::<4>(&s[0]), opts).into_dispatch();
            Ok(HostTensor::float(t, shape))
        })
    }

    fn embedding(&self, table: TensorId, ids: TensorId) -> TensorId {
        self.run("embedding", &[table, ids], |s| {
            let shape = check(shape::embedding(&metas(s)))?;
            let out = float_tensor::<2>(&s[0])
                .select(0, int_vector(&s[1]))
                .into_dispatch();
            Ok(HostTensor::float(out, shape))
        })
    }

    fn training(&self) -> bool {
        self.mode == Mode::Train
    }

    fn training_set(&self) -> TensorId {
        match self.training_set {
            Some(id) => self.retain(id),
            None => TensorId::INVALID,
        }
    }

    fn read(&self, x: TensorId) -> RVec<f32> {
        let Ok(s) = self.slot(x) else {
            return RVec::new();
        };
        let res = catch_unwind(AssertUnwindSafe(|| {
            if s.int {
                by_rank!(s.rank(), D => Tensor::<D, Int>::from_dispatch(s.t.clone()).into_data())
                    .and_then(|d| {
                        d.convert::<f32>()
                            .try_into_vec::<f32>()
                            .map_err(|e| anyhow!("{e:?}"))
                    })
            } else {
                read_f32(&s.t, s.rank())
            }
        }));
        match res {
            Ok(Ok(v)) => v.into(),
            _ => RVec::new(),
        }
    }

    fn fail(&self, message: RStr<'_>) {
        self.record(format!("plugin reported: {message}"));
    }
}
