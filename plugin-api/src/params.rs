//! Component parameters: the component's TOML table, parsed into a typed struct.
//!
//! Declare the struct with [`params!`](crate::params!), which derives serde's `Deserialize`
//! through this crate's re-export (plugins need no serde dependency of their own) and refuses
//! unknown keys, so a misspelled key is an error listing the valid ones. Defaults are written
//! once, in the parameter list the component is registered with ([`Param`]): the host fills
//! them in ([`Params::fill`]) before the constructor parses the table, so the struct carries no
//! `#[serde(default)]` and no `Default` impl, and the documentation cannot disagree with the
//! code.
//!
//! ```
//! use memlab_plugin_api::prelude::*;
//!
//! params! {
//!     /// Parameters of my component.
//!     #[derive(Debug)]
//!     struct MyParams {
//!         size: usize,
//!     }
//! }
//! const MY_PARAMS: &[Param] = &[param("size", "int", "16", "image side")];
//!
//! let p: MyParams = Params::with_defaults("", MY_PARAMS).unwrap().parse().unwrap();
//! assert_eq!(p.size, 16);
//! let p: MyParams = Params::with_defaults("size = 32", MY_PARAMS).unwrap().parse().unwrap();
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
/// use memlab_plugin_api::{Param, Params, param};
///
/// memlab_plugin_api::params! {
///     /// Width of the network.
///     #[derive(Debug, Clone)]
///     pub struct Width {
///         /// Hidden channels.
///         pub channels: usize,
///     }
/// }
/// /// The one place the default is written (registered with the component).
/// const WIDTH: &[Param] = &[param("channels", "int", "32", "hidden channels")];
/// let p = Params::with_defaults("", WIDTH).unwrap();
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

    /// Adds the documented default of every parameter of `docs` the table does not set. The
    /// host calls this with the component's registered parameter list before the constructor
    /// sees the table, so that list is the one place a default is written: the struct needs no
    /// `#[serde(default)]` and no `Default` impl, and `memlab plugins` shows exactly the values
    /// used. A parameter documented with an empty default is required (serde reports it as a
    /// missing field); a default in parentheses, such as `(all ten)` or `(unset)`, describes
    /// what leaving an optional parameter out means (the field is an `Option`) and is not
    /// filled in; any other default that is not a TOML value is an error naming it.
    ///
    /// ```
    /// use memlab_plugin_api::prelude::*;
    ///
    /// params! {
    ///     #[derive(Debug)]
    ///     struct Size {
    ///         side: usize,
    ///         name: String,
    ///     }
    /// }
    /// const DOCS: &[Param] = &[
    ///     param("side", "int", "16", "image side"),
    ///     param("name", "string", "", "a name (required)"),
    /// ];
    /// let p: Size = Params::from_toml("name = \"a\"").unwrap().fill(DOCS).unwrap().parse().unwrap();
    /// assert_eq!(p.side, 16);
    /// let e = Params::from_toml("").unwrap().fill(DOCS).unwrap().parse::<Size>().unwrap_err();
    /// assert!(e.contains("missing field `name`"), "{e}");
    /// ```
    pub fn fill(mut self, docs: &[Param]) -> Result<Params, String> {
        for d in docs {
            if d.default.is_empty() || d.default.starts_with('(') || self.table.contains_key(d.name)
            {
                continue;
            }
            let v: toml::Table = toml::from_str(&format!("v = {}", d.default)).map_err(|e| {
                format!(
                    "parameter `{}`: its documented default `{}` is not a TOML value ({})",
                    d.name,
                    d.default,
                    e.to_string().trim()
                )
            })?;
            let v = v.get("v").cloned().expect("parsed `v = ..`");
            self.table.insert(d.name.to_string(), v);
        }
        Ok(self)
    }

    /// The parameters `text` sets plus the documented defaults of `docs` (what a constructor
    /// receives from the host; for tests that call a constructor directly).
    pub fn with_defaults(text: &str, docs: &[Param]) -> Result<Params, String> {
        Params::from_toml(text)?.fill(docs)
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
    /// Default as TOML text (the value used when the key is absent: [`Params::fill`]), `""`
    /// when required, or a description in parentheses (`"(all ten)"`) for an optional
    /// parameter whose absence the component interprets (an `Option` field).
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
