//! # memlab-plugin-api
//!
//! The one crate a memlab plugin depends on. A plugin is a `cdylib` that provides components
//! of five kinds — **datasets**, **noise schedules**, **conditioning schemes**,
//! **architectures** and **replication criteria** — which the `memlab` host loads at run time
//! through a stable ABI (`abi_stable`) and runs over its shared training, sampling and
//! evaluation engine.
//!
//! ## Writing a plugin
//!
//! `memlab new <kind> <name>` scaffolds a plugin crate of any kind that builds, loads and runs
//! as it is, and `PLUGINS.md` in the memlab repository walks through one example per kind and
//! the rules (typed layer, determinism, ABI, shipping). By hand, `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "my-plugin"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! memlab-plugin-api = { path = "../memlab/plugin-api" }
//! ```
//!
//! `src/lib.rs` — an architecture (a two-layer conv net) and a criterion:
//!
//! ```
//! use memlab_plugin_api::prelude::*;
//!
//! // Derives serde's `Deserialize` (through this crate) and refuses unknown keys.
//! params! {
//!     struct TinyParams {
//!         #[serde(default = "default_width")]
//!         width: usize,
//!     }
//! }
//! fn default_width() -> usize { 32 }
//!
//! struct Tiny { width: usize }
//!
//! impl Architecture for Tiny {
//!     fn forward<'a>(&self, ctx: &'a Ctx<'a>, inp: Inputs<'a>) -> PResult<Tensor<'a>> {
//!         let [_, c, _, _] = inp.x.dims::<4>();
//!         // Noise conditioning as a per-sample bias: [N] -> [N, 1, 1, 1].
//!         let n = inp.noise.dim(0);
//!         let t = inp.noise.reshape_to(&[n, 1, 1, 1]);
//!         let h = Conv2d::new(c, self.width, 3).same().forward(&ctx.scope("conv1"), &inp.x);
//!         let h = (h + t).silu();
//!         Ok(Conv2d::new(self.width, c, 3).same().zero_init().forward(&ctx.scope("conv2"), &h))
//!     }
//! }
//!
//! struct Nearest { threshold: f32 }
//!
//! impl Criterion for Nearest {
//!     fn distance(&self) -> Distance { Distance::L2 }
//!     fn neighbours(&self) -> usize { 1 }
//!     fn judge(&self, d: &[f32], flags: &mut [bool], scores: &mut [f32]) -> PResult<()> {
//!         for i in 0..flags.len() {
//!             scores[i] = d[i];
//!             flags[i] = d[i] < self.threshold;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn register(p: &mut Plugin) {
//!     p.architecture(
//!         "tiny",
//!         "Two 3x3 convolutions",
//!         &[param("width", "int", "32", "hidden channels")],
//!         |params, _seed| {
//!             let p: TinyParams = params.parse()?;
//!             Ok(Tiny { width: p.width })
//!         },
//!     );
//!     p.criterion("nearest", "d1 below a threshold", &[], |params, _| {
//!         params.expect_empty()?;
//!         Ok(Nearest { threshold: 1.0 })
//!     });
//! }
//!
//! export_plugin!(register);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release` and point the host at the directory holding the
//! library: `MEMLAB_PLUGIN_PATH=target/release memlab plugins`.
//!
//! ## How the pieces fit
//!
//! - [`component`]: the traits you implement — plain Rust, no ABI types.
//! - [`tensor`] and [`nn`]: write `forward` against the host's tensor engine. Tensors are
//!   opaque handles; every FLOP runs in the host's backend (CPU or CUDA), with autodiff when
//!   training. Parameters are created by name on first use.
//! - [`Plugin`] and [`export_plugin!`]: declare components with their parameter docs.
//! - [`Params`] and [`params!`]: parse your component's TOML table into a struct (serde,
//!   unknown keys refused).
//! - [`ffi`]: the stable ABI itself (host side). Errors and panics in your code are caught at
//!   the boundary and reported by the host with your plugin's and component's name.

pub mod adapter;
pub mod component;
pub mod ffi;
pub mod nn;
pub mod params;
pub mod plugin;
pub mod shape;
pub mod table;
pub mod tensor;
pub mod testing;

pub use abi_stable;
pub use serde;
pub use toml;

pub use component::{
    Architecture, Conditioning, Criterion, Dataset, DatasetShape, Inputs, Judging, NoiseSchedule,
    PResult,
};
pub use ffi::{ArchInfo, Conv2dOptions, DataSummary, Distance, Init, Needs, Precond};
pub use params::{Param, Params, param};
pub use plugin::{ClassFolders, DataFiles, Plugin, Published};
pub use tensor::{Ctx, Tensor};

/// Version of this crate; plugins built against a different minor version are refused.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::component::{
        Architecture, Conditioning, Criterion, Dataset, DatasetShape, Inputs, Judging,
        NoiseSchedule, PResult,
    };
    pub use crate::export_plugin;
    pub use crate::ffi::{ArchInfo, Conv2dOptions, DataSummary, Distance, Init, Needs, Precond};
    pub use crate::nn::{
        Conv2d, GroupNorm, LayerNorm, Linear, ResBlock, SpatialAttention, timestep_embedding,
        timestep_embedding_with_period,
    };
    pub use crate::params;
    pub use crate::params::{Param, Params, param};
    pub use crate::plugin::Plugin;
    pub use crate::tensor::{Ctx, Tensor};
    pub use serde::Deserialize;
}

/// Small deterministic RNG (SplitMix64) for plugins that need seeded randomness without an
/// extra dependency: datasets drawing image `i` from `seed`, random labels, etc.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A generator for stream `(seed, index)`: independent streams per index, so item
    /// `index` (an image, a label) gets the same random numbers in any batch or order.
    ///
    /// ```
    /// use memlab_plugin_api::SplitMix64;
    ///
    /// let image_7 = |seed| SplitMix64::for_index(seed, 7).next_f64();
    /// assert_eq!(image_7(42), image_7(42));
    /// assert_ne!(image_7(42), SplitMix64::for_index(42, 8).next_f64());
    /// assert_ne!(image_7(42), image_7(43));
    /// ```
    pub fn for_index(seed: u64, index: u64) -> SplitMix64 {
        let mut g = SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = g.next_u64();
        SplitMix64(a ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform on [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn splitmix_uniform_mean() {
        let mut g = super::SplitMix64::for_index(1, 2);
        let n = 100_000;
        let m: f64 = (0..n).map(|_| g.next_f64()).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.01, "{m}");
    }
}
