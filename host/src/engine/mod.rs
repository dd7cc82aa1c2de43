//! The shared engine: burn tensors behind the plugin tensor API, parameters, autodiff.
//!
//! - [`device`]: run-time device choice (`auto`/`cpu`/`cuda`).
//! - [`graph`]: one forward pass executing a plugin's ops ([`executor::Executor`]).
//! - [`kernels`]: CPU kernels for convolution, GroupNorm and SiLU (burn backend extension).
//! - [`params`]: named parameters ([`params::ParamStore`]).
//! - [`profile`]: wall time per op (`MEMLAB_OP_PROFILE=1`).

pub mod device;
pub mod executor;
pub mod kernels;
pub mod params;
pub mod profile;
pub mod rank;

use anyhow::{Result, anyhow};
use burn::tensor::{Device, DispatchTensor, Tensor};
use indexmap::IndexMap;
use memlab_plugin_api::ffi::{ForwardArgs, HostOps};

use crate::plugins::ArchitectureHandle;
use executor::{Executor, HostTensor};
use rank::by_rank;

/// Calls an architecture's `forward` through the ABI on `graph` and returns its output,
/// reporting plugin errors and failed host ops with the component's name.
pub fn forward(
    arch: &ArchitectureHandle,
    graph: &Executor<'_>,
    args: ForwardArgs,
) -> Result<HostTensor> {
    let out = arch.forward(graph.ops(), args);
    match out {
        Ok(id) => {
            let res = graph
                .finish(id)
                .map_err(|e| anyhow!("{} forward pass: {e}", arch.label()));
            graph.release(id);
            res
        }
        Err(e) => {
            // Prefer the host's op error: it names the op and shapes.
            match graph.error() {
                Some(op) => Err(anyhow!("{} forward pass: {op}", arch.label())),
                None => Err(e),
            }
        }
    }
}

/// Backpropagates a scalar `loss` (shape `[1]`) and returns each used parameter's gradient on
/// the inner device, by name.
pub fn gradients(
    graph: &Executor<'_>,
    loss: &HostTensor,
) -> Result<IndexMap<String, DispatchTensor>> {
    if loss.shape.iter().product::<usize>() != 1 {
        anyhow::bail!("loss must be a single value, got shape {:?}", loss.shape);
    }
    let grads =
        by_rank!(loss.shape.len(), D => Tensor::<D>::from_dispatch(loss.t.clone()).backward())?;
    let mut out = IndexMap::new();
    for (name, leaf) in graph.leaves() {
        let g = by_rank!(rank_of(&leaf), D => Tensor::<D>::from_dispatch(leaf.clone())
            .grad(&grads)
            .map(|g| g.into_dispatch()))?;
        if let Some(g) = g {
            out.insert(name, g);
        }
    }
    Ok(out)
}

/// Rank of a rank-erased tensor.
pub fn rank_of(t: &DispatchTensor) -> usize {
    use burn::backend::TensorMetadata;
    t.shape().num_dims()
}

/// The default CPU device.
pub fn cpu() -> Device {
    Device::flex()
}
