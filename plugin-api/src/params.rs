//! Component parameters: the component's TOML table, parsed into a typed struct.
//!
//! Declare the struct with [`params!`](crate::params!), which derives serde's `Deserialize`
//! through this crate's re-export (plugins need no serde dependency of their own) and refuses
//! unknown keys, so a misspelled key is an error listing the valid ones:
//!
//! ```
//! use memlab_plugin_api::prelude::*;
//!
//! params! {
//!     /// Parameters of my component.
//!     #[derive(Debug)]
//!     struct MyParams {
//!         #[serde(default = "default_size")]
//!         size: usize,
//!     }
//! }
//! fn default_size() -> usize { 16 }
//!
//! let p: MyParams = Params::from_toml("size = 32").unwrap().parse().unwrap();
//! assert_eq!(p.size, 32);
//! let err = Params::from_toml("sise = 32").unwrap().parse::<MyParams>().unwrap_err();
//! assert!(err.contains("unknown field `sise`"), "{err}");
//! ```
//!
//! Without the macro, write what it writes:
//! `#[derive(Deserialize)] #[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]`.

use serde::de::DeserializeOwned;

/// Declares a component's parameter struct: adds `#[derive(Deserialize)]` (serde, through
/// this crate's re-export) and `#[serde(deny_unknown_fields)]`.
///
/// Field and container attributes (`#[serde(default)]`, `#[serde(rename = ..)]`, other
/// derives, doc comments) are written as usual inside the macro; only `deny_unknown_fields`
/// must not be repeated. The expansion names the crate `memlab_plugin_api`, so the dependency
/// must not be renamed in `Cargo.toml`.
///
/// ```
/// memlab_plugin_api::params! {
///     /// Width of the network.
///     #[derive(Debug, Clone)]
///     #[serde(default)]
///     pub struct Width {
///         /// Hidden channels.
///         pub channels: usize,
///     }
/// }
/// impl Default for Width {
///     fn default() -> Self { Width { channels: 32 } }
/// }
/// let p = memlab_plugin_api::Params::from_toml("").unwrap();
/// assert_eq!(p.parse::<Width>().unwrap().channels, 32);
/// ```
#[macro_export]
macro_rules! params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident $($body:tt)*) => {
        #[derive($crate::serde::Deserialize)]
        #[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
        $(#[$meta])*
        $vis struct $name $($body)*
    };
}

use crate::ffi::ParamDoc;

/// A component's parameter table.
#[derive(Debug, Clone, Default)]
pub struct Params {
    table: toml::Table,
}

impl Params {
    /// Parses TOML text (the host passes the component's table re-serialised).
    pub fn from_toml(text: &str) -> Result<Params, String> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| format!("parameters are not valid TOML: {e}"))?;
        Ok(Params { table })
    }

    /// The raw table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// Deserialises into `T`. Use `#[serde(deny_unknown_fields)]` on `T` so misspelled keys
    /// are reported (with the list of valid keys) instead of silently ignored.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(toml::Value::Table(self.table.clone())).map_err(|e| {
            let msg = e.to_string();
            msg.trim().to_string()
        })
    }

    /// Fails unless the table is empty (for components without parameters).
    pub fn expect_empty(&self) -> Result<(), String> {
        match self.table.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!(
                "unknown parameter `{k}`: this component takes no parameters"
            )),
        }
    }
}

/// Documentation of one parameter, for `memlab plugins` and config checking.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Key.
    pub name: &'static str,
    /// Type, as a reader would write it (`int`, `float`, `[int]`, `"a" | "b"`).
    pub ty: &'static str,
    /// Default as TOML text, or `""` when required.
    pub default: &'static str,
    /// One line.
    pub doc: &'static str,
}

/// Shorthand constructor for [`Param`].
pub const fn param(
    name: &'static str,
    ty: &'static str,
    default: &'static str,
    doc: &'static str,
) -> Param {
    Param {
        name,
        ty,
        default,
        doc,
    }
}

impl Param {
    pub(crate) fn to_ffi(self) -> ParamDoc {
        ParamDoc {
            name: self.name.into(),
            ty: self.ty.into(),
            default: self.default.into(),
            doc: self.doc.into(),
        }
    }
}
