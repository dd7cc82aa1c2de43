//! The parameter store: every trainable tensor of a model, by hierarchical name, and its
//! buffers (named non-trainable tensors, e.g. EDM's Fourier frequencies).
//!
//! Values live on the inner (non-autodiff) device. A training forward pass lifts each used
//! parameter to an autodiff leaf once per pass; gradients are read back by name. Buffers are
//! stored, snapshotted and loaded by name like parameters, but never get a gradient (so the
//! optimiser, which steps only what has one, leaves them alone), are copied rather than
//! averaged by the EMA, and are not counted by [`ParamStore::num_scalars`].

use anyhow::{Result, bail};
use burn::tensor::{Device, DispatchTensor, Tensor, TensorData};
use indexmap::IndexMap;
use memlab_plugin_api::SplitMix64;
use memlab_plugin_api::ffi::{Init, InitKind};

use super::rank::{by_rank, to_dispatch};

/// One named parameter.
#[derive(Clone)]
pub struct Param {
    /// Shape.
    pub shape: Vec<usize>,
    /// Value on the inner device.
    pub value: DispatchTensor,
}

/// Named parameters of one model, in creation order.
#[derive(Clone)]
pub struct ParamStore {
    seed: u64,
    params: IndexMap<String, Param>,
    /// Names in `params` that are buffers (marked when a forward pass requests them as such;
    /// a store read back from a snapshot learns them in its first pass).
    buffers: std::collections::BTreeSet<String>,
    frozen: bool,
}

/// Stable 64-bit hash (FNV-1a) of a parameter name: init streams depend on names, not order.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Samples `n` values of `init` from the stream `(seed, name)`; an error (not an abort) when
/// `n` values cannot be allocated.
pub fn init_values(init: Init, n: usize, seed: u64, name: &str) -> Result<Vec<f32>> {
    let mut rng = SplitMix64::for_index(seed, name_hash(name));
    let mut v = crate::io::alloc::try_with_capacity(n, || format!("parameter `{name}`"))?;
    match init.kind {
        InitKind::Constant => v.resize(n, init.a as f32),
        InitKind::Uniform => {
            v.extend((0..n).map(|_| (init.a + (init.b - init.a) * rng.next_f64()) as f32))
        }
        InitKind::Normal => v.extend((0..n).map(|_| (init.a + init.b * rng.normal()) as f32)),
    }
    Ok(v)
}

impl ParamStore {
    /// An empty store whose initialisations are drawn from `seed`.
    pub fn new(seed: u64) -> ParamStore {
        ParamStore {
            seed,
            params: IndexMap::new(),
            buffers: std::collections::BTreeSet::new(),
            frozen: false,
        }
    }

    /// After freezing, asking for an unknown parameter is an error (a model must create all
    /// its parameters in its first forward pass; later passes may not add new ones).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Whether the store is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Looks up `name`, creating it with `init` if new. Errors on a shape mismatch.
    pub fn get_or_create(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        device: &Device,
    ) -> Result<DispatchTensor> {
        if self.buffers.contains(name) {
            bail!("{}", memlab_plugin_api::shape::param_is_buffer(name));
        }
        if let Some(p) = self.params.get(name) {
            if p.shape != shape {
                bail!(
                    "parameter `{name}` was created with shape {:?} but is now requested with \
                     shape {shape:?}",
                    p.shape
                );
            }
            return Ok(p.value.clone());
        }
        if self.frozen {
            bail!("parameter `{name}` is new, but the model's parameters were already fixed");
        }
        if shape.is_empty() || shape.contains(&0) {
            bail!("parameter `{name}` has invalid shape {shape:?}");
        }
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow::anyhow!("parameter `{name}` of shape {shape:?} is too large"))?;
        let data = TensorData::new(init_values(init, n, self.seed, name)?, shape.to_vec());
        let value = to_dispatch(data, device)?;
        self.params.insert(
            name.to_string(),
            Param {
                shape: shape.to_vec(),
                value: value.clone(),
            },
        );
        Ok(value)
    }

    /// Looks up the buffer `name`, creating it from `data` if new (a stored value, e.g. one
    /// loaded from a checkpoint, wins over `data`), and marks it as a buffer. Errors on a
    /// shape mismatch or a name that is a parameter.
    pub fn get_or_create_buffer(
        &mut self,
        name: &str,
        data: &[f32],
        shape: &[usize],
        device: &Device,
    ) -> Result<DispatchTensor> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow::anyhow!("buffer `{name}` of shape {shape:?} is too large"))?;
        if shape.is_empty() || shape.contains(&0) {
            bail!("buffer `{name}` has invalid shape {shape:?}");
        }
        if n != data.len() {
            bail!("buffer `{name}`: {} values for shape {shape:?}", data.len());
        }
        if let Some(p) = self.params.get(name) {
            if p.shape != shape {
                bail!(
                    "buffer `{name}` was created with shape {:?} but is now requested with \
                     shape {shape:?}",
                    p.shape
                );
            }
            self.buffers.insert(name.to_string());
            return Ok(p.value.clone());
        }
        if self.frozen {
            bail!("buffer `{name}` is new, but the model's parameters were already fixed");
        }
        let value = to_dispatch(TensorData::new(data.to_vec(), shape.to_vec()), device)?;
        self.params.insert(
            name.to_string(),
            Param {
                shape: shape.to_vec(),
                value: value.clone(),
            },
        );
        self.buffers.insert(name.to_string());
        Ok(value)
    }

    /// Whether `name` is a buffer (not trained).
    pub fn is_buffer(&self, name: &str) -> bool {
        self.buffers.contains(name)
    }

    /// Marks `name` as a buffer (e.g. in an EMA copy of a store).
    pub fn mark_buffer(&mut self, name: &str) {
        self.buffers.insert(name.to_string());
    }

    /// Number of scalar parameters (buffers not included).
    pub fn num_scalars(&self) -> usize {
        self.params
            .iter()
            .filter(|(n, _)| !self.buffers.contains(*n))
            .map(|(_, p)| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Number of named tensors.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Iterates `(name, param)` in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Param)> {
        self.params.iter()
    }

    /// A parameter by name.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.get(name)
    }

    /// Inserts (or replaces) a parameter as is.
    pub fn insert(&mut self, name: &str, p: Param) {
        self.params.insert(name.to_string(), p);
    }

    /// The seed parameter initialisations are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Replaces a parameter's value (same shape).
    pub fn set(&mut self, name: &str, value: DispatchTensor) -> Result<()> {
        match self.params.get_mut(name) {
            Some(p) => {
                p.value = value;
                Ok(())
            }
            None => bail!("no parameter named `{name}`"),
        }
    }

    /// Reads a parameter's values (row-major).
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        let p = self
            .params
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no parameter `{name}`"))?;
        read_f32(&p.value, p.shape.len())
    }

    /// Overwrites a parameter from row-major values.
    pub fn write(&mut self, name: &str, values: Vec<f32>, device: &Device) -> Result<()> {
        let shape = self
            .params
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no parameter `{name}`"))?
            .shape
            .clone();
        let value = to_dispatch(TensorData::new(values, shape), device)?;
        self.set(name, value)
    }
}

/// Reads any float tensor back as `f32` values.
pub fn read_f32(t: &DispatchTensor, rank: usize) -> Result<Vec<f32>> {
    let data = by_rank!(rank, D => Tensor::<D>::from_dispatch(t.clone()).into_data())?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read tensor: {e:?}"))
}
