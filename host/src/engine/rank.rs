//! Dynamic-rank helpers. burn's `Tensor<D>` carries its rank in the type; plugins work with
//! dynamic shapes. We store rank-erased `DispatchTensor`s and pick the rank per op.

use anyhow::Result;
use burn::tensor::{Device, DispatchTensor, Int, Tensor, TensorData};

/// Highest rank the host tensor API supports.
pub const MAX_RANK: usize = 6;

/// Runs `$body` with `$D` bound to the const rank `$r` (1..=6); evaluates to
/// `anyhow::Result<_>`.
macro_rules! by_rank {
    ($r:expr, $D:ident => $body:expr) => {{
        match $r {
            1 => {
                const $D: usize = 1;
                Ok($body)
            }
            2 => {
                const $D: usize = 2;
                Ok($body)
            }
            3 => {
                const $D: usize = 3;
                Ok($body)
            }
            4 => {
                const $D: usize = 4;
                Ok($body)
            }
            5 => {
                const $D: usize = 5;
                Ok($body)
            }
            6 => {
                const $D: usize = 6;
                Ok($body)
            }
            r => Err(anyhow::anyhow!(
                "tensors of rank {r} are not supported (ranks 1..={})",
                $crate::engine::rank::MAX_RANK
            )),
        }
    }};
}
pub(crate) use by_rank;

/// Uploads float data to `device`.
pub fn to_dispatch(data: TensorData, device: &Device) -> Result<DispatchTensor> {
    let rank = data.shape().len();
    by_rank!(rank, D => Tensor::<D>::from_data(data, device).into_dispatch())
}

/// Uploads integer data to `device`.
pub fn to_dispatch_int(data: TensorData, device: &Device) -> Result<DispatchTensor> {
    let rank = data.shape().len();
    by_rank!(rank, D => Tensor::<D, Int>::from_data(data, device).into_dispatch())
}

/// Converts a slice of dims into a fixed-size array (caller guarantees the length).
pub fn dims_array<const D: usize>(s: &[usize]) -> [usize; D] {
    let mut a = [0usize; D];
    a.copy_from_slice(&s[..D]);
    a
}
