//! Declaring what a plugin library provides, and exporting it to the host.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};

use crate::adapter::{
    ArchitectureAdapter, ConditioningAdapter, CriterionAdapter, CriterionExtAdapter,
    DatasetAdapter, ScheduleAdapter, guard,
};
use crate::component::{Architecture, Conditioning, Criterion, Dataset, NoiseSchedule, PResult};
use crate::ffi::*;
use crate::params::{Param, Params};

type Maker = Box<dyn Fn(&Params, u64) -> PResult<Component> + Send + Sync>;
type ExtMaker = Box<dyn Fn(&Params, u64) -> PResult<CriterionExtBox> + Send + Sync>;

struct Entry {
    info: ComponentInfo,
    make: Maker,
    /// A criterion's [`FfiCriterionExt`] part (plugin-api 0.2.1).
    make_ext: Option<ExtMaker>,
}

/// The components one plugin library provides. Build it in the function you pass to
/// [`crate::export_plugin!`].
pub struct Plugin {
    name: String,
    version: String,
    entries: Vec<Entry>,
}

impl Plugin {
    /// An empty plugin named `name` at `version` (the export macro passes the crate's).
    pub fn new(name: &str, version: &str) -> Plugin {
        Plugin {
            name: name.to_string(),
            version: version.to_string(),
            entries: Vec::new(),
        }
    }

    /// Library name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn push(
        &mut self,
        kind: ComponentKind,
        name: &str,
        description: &str,
        params: &[Param],
        make: Maker,
    ) {
        self.entries.push(Entry {
            info: ComponentInfo {
                kind,
                name: name.into(),
                description: description.into(),
                params: params.iter().map(|p| p.to_ffi()).collect(),
            },
            make,
            make_ext: None,
        });
    }

    fn who(&self, kind: ComponentKind, name: &str) -> String {
        format!("{kind} `{name}` (plugin {})", self.name)
    }

    /// Registers a dataset built by `make(params, seed)`.
    pub fn dataset<T: Dataset>(
        &mut self,
        name: &str,
        description: &str,
        params: &[Param],
        make: fn(&Params, u64) -> PResult<T>,
    ) -> &mut Self {
        let who = self.who(ComponentKind::Dataset, name);
        let maker: Maker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = DatasetAdapter {
                who: who.clone(),
                inner,
            };
            Ok(Component::Dataset(FfiDataset_TO::from_value(a, TD_Opaque)))
        });
        self.push(ComponentKind::Dataset, name, description, params, maker);
        self
    }

    /// Registers a noise schedule.
    pub fn schedule<T: NoiseSchedule>(
        &mut self,
        name: &str,
        description: &str,
        params: &[Param],
        make: fn(&Params, u64) -> PResult<T>,
    ) -> &mut Self {
        let who = self.who(ComponentKind::Schedule, name);
        let maker: Maker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = ScheduleAdapter {
                who: who.clone(),
                inner,
            };
            Ok(Component::Schedule(FfiSchedule_TO::from_value(
                a, TD_Opaque,
            )))
        });
        self.push(ComponentKind::Schedule, name, description, params, maker);
        self
    }

    /// Registers a conditioning scheme.
    pub fn conditioning<T: Conditioning>(
        &mut self,
        name: &str,
        description: &str,
        params: &[Param],
        make: fn(&Params, u64) -> PResult<T>,
    ) -> &mut Self {
        let who = self.who(ComponentKind::Conditioning, name);
        let maker: Maker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = ConditioningAdapter {
                who: who.clone(),
                inner,
            };
            Ok(Component::Conditioning(FfiConditioning_TO::from_value(
                a, TD_Opaque,
            )))
        });
        self.push(
            ComponentKind::Conditioning,
            name,
            description,
            params,
            maker,
        );
        self
    }

    /// Registers an architecture.
    pub fn architecture<T: Architecture>(
        &mut self,
        name: &str,
        description: &str,
        params: &[Param],
        make: fn(&Params, u64) -> PResult<T>,
    ) -> &mut Self {
        let who = self.who(ComponentKind::Architecture, name);
        let maker: Maker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = ArchitectureAdapter {
                who: who.clone(),
                inner,
            };
            Ok(Component::Architecture(FfiArchitecture_TO::from_value(
                a, TD_Opaque,
            )))
        });
        self.push(
            ComponentKind::Architecture,
            name,
            description,
            params,
            maker,
        );
        self
    }

    /// Registers a replication criterion.
    pub fn criterion<T: Criterion>(
        &mut self,
        name: &str,
        description: &str,
        params: &[Param],
        make: fn(&Params, u64) -> PResult<T>,
    ) -> &mut Self {
        let who = self.who(ComponentKind::Criterion, name);
        let maker: Maker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = CriterionAdapter {
                who: who.clone(),
                inner,
            };
            Ok(Component::Criterion(FfiCriterion_TO::from_value(
                a, TD_Opaque,
            )))
        });
        self.push(ComponentKind::Criterion, name, description, params, maker);
        let who = self.who(ComponentKind::Criterion, name);
        let ext: ExtMaker = Box::new(move |p, s| {
            let inner = make(p, s)?;
            let a = CriterionExtAdapter {
                who: who.clone(),
                inner,
            };
            Ok(FfiCriterionExt_TO::from_value(a, TD_Opaque))
        });
        if let Some(e) = self.entries.last_mut() {
            e.make_ext = Some(ext);
        }
        self
    }

    /// The manifest the host reads.
    pub fn manifest(&self) -> PluginManifest {
        PluginManifest {
            name: self.name.as_str().into(),
            version: self.version.as_str().into(),
            api_version: crate::API_VERSION.into(),
            components: self.entries.iter().map(|e| e.info.clone()).collect(),
        }
    }

    /// Constructs a component (the host calls this through the root module).
    pub fn create(
        &self,
        kind: ComponentKind,
        name: &str,
        params: &str,
        seed: u64,
    ) -> PResult<Component> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.info.kind == kind && e.info.name.as_str() == name)
            .ok_or_else(|| format!("plugin {} has no {kind} named `{name}`", self.name))?;
        let params =
            Params::from_toml(params).map_err(|e| format!("{}: {e}", self.who(kind, name)))?;
        (entry.make)(&params, seed).map_err(|e| format!("{}: {e}", self.who(kind, name)))
    }

    /// Constructs the [`FfiCriterionExt`] part of criterion `name` (the host calls this through
    /// the library's [`ExtMod`], besides [`Plugin::create`]).
    pub fn create_criterion_ext(
        &self,
        name: &str,
        params: &str,
        seed: u64,
    ) -> PResult<CriterionExtBox> {
        let kind = ComponentKind::Criterion;
        let make = self
            .entries
            .iter()
            .find(|e| e.info.kind == kind && e.info.name.as_str() == name)
            .and_then(|e| e.make_ext.as_ref())
            .ok_or_else(|| format!("plugin {} has no {kind} named `{name}`", self.name))?;
        let params =
            Params::from_toml(params).map_err(|e| format!("{}: {e}", self.who(kind, name)))?;
        make(&params, seed).map_err(|e| format!("{}: {e}", self.who(kind, name)))
    }
}

#[doc(hidden)]
pub fn __criterion_ext(
    lib: &str,
    get: fn() -> &'static Plugin,
    name: RStr<'_>,
    params: RStr<'_>,
    seed: u64,
) -> RResult<CriterionExtBox, RString> {
    let who = format!("criterion `{name}` (plugin {lib}) constructor");
    guard(&who, || {
        get().create_criterion_ext(name.as_str(), params.as_str(), seed)
    })
}

#[doc(hidden)]
pub fn __manifest(lib: &str, get: fn() -> &'static Plugin) -> RResult<PluginManifest, RString> {
    guard(
        &format!("plugin {lib} (building its component list)"),
        || Ok(get().manifest()),
    )
}

#[doc(hidden)]
pub fn __create(
    lib: &str,
    get: fn() -> &'static Plugin,
    kind: ComponentKind,
    name: RStr<'_>,
    params: RStr<'_>,
    seed: u64,
) -> RResult<Component, RString> {
    let who = format!("{kind} `{name}` (plugin {lib}) constructor");
    guard(&who, || {
        get().create(kind, name.as_str(), params.as_str(), seed)
    })
}

/// Exports a plugin library. Pass a function `fn(&mut Plugin)` that registers components.
///
/// ```
/// use memlab_plugin_api::ffi::ComponentKind;
/// use memlab_plugin_api::prelude::*;
///
/// /// Every image constant at `value`.
/// struct Flat {
///     value: f32,
/// }
/// impl Dataset for Flat {
///     fn shape(&self) -> PResult<DatasetShape> {
///         Ok(DatasetShape { channels: 1, height: 4, width: 4, len: 10, class_names: vec![] })
///     }
///     fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()> {
///         images.fill(self.value);
///         labels.fill(0);
///         Ok(())
///     }
/// }
///
/// params! {
///     struct FlatParams {
///         value: f32,
///     }
/// }
///
/// fn register(p: &mut Plugin) {
///     p.dataset(
///         "flat",
///         "Constant images",
///         &[param("value", "float", "", "the value, in [-1, 1]")],
///         |params, _seed| {
///             let p: FlatParams = params.parse()?;
///             Ok(Flat { value: p.value })
///         },
///     );
/// }
/// memlab_plugin_api::export_plugin!(register);
///
/// // What the host sees (it calls the same through the exported root module):
/// let mut plugin = Plugin::new("flat-plugin", "0.1.0");
/// register(&mut plugin);
/// assert_eq!(plugin.manifest().components[0].name.as_str(), "flat");
/// assert!(plugin.create(ComponentKind::Dataset, "flat", "value = 0.5", 0).is_ok());
/// let err = plugin.create(ComponentKind::Dataset, "flat", "valeu = 0.5", 0).err().unwrap();
/// assert!(err.contains("dataset `flat` (plugin flat-plugin)"), "{err}");
/// assert!(err.contains("unknown field `valeu`"), "{err}");
/// ```
///
/// The crate must be a `cdylib`. The plugin's name and version are its crate's.
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        #[doc(hidden)]
        fn __memlab_plugin() -> &'static $crate::Plugin {
            static PLUGIN: ::std::sync::OnceLock<$crate::Plugin> = ::std::sync::OnceLock::new();
            PLUGIN.get_or_init(|| {
                let mut p = $crate::Plugin::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
                $register(&mut p);
                p
            })
        }

        #[doc(hidden)]
        extern "C" fn __memlab_manifest() -> $crate::abi_stable::std_types::RResult<
            $crate::ffi::PluginManifest,
            $crate::abi_stable::std_types::RString,
        > {
            $crate::plugin::__manifest(env!("CARGO_PKG_NAME"), __memlab_plugin)
        }

        #[doc(hidden)]
        extern "C" fn __memlab_create(
            kind: $crate::ffi::ComponentKind,
            name: $crate::abi_stable::std_types::RStr<'_>,
            params: $crate::abi_stable::std_types::RStr<'_>,
            seed: u64,
        ) -> $crate::abi_stable::std_types::RResult<
            $crate::ffi::Component,
            $crate::abi_stable::std_types::RString,
        > {
            $crate::plugin::__create(env!("CARGO_PKG_NAME"), __memlab_plugin, kind, name, params, seed)
        }

        #[doc(hidden)]
        fn __memlab_root_module() -> $crate::ffi::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::ffi::PluginMod { manifest: __memlab_manifest, create: __memlab_create }
                .leak_into_prefix()
        }

        /// The abi_stable library header the host looks up (what `#[export_root_module]`
        /// generates; written out so plugins need no direct abi_stable dependency).
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __MEMLAB_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__memlab_root_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::ffi::PluginModRef>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };

        #[doc(hidden)]
        extern "C" fn __memlab_criterion_ext(
            name: $crate::abi_stable::std_types::RStr<'_>,
            params: $crate::abi_stable::std_types::RStr<'_>,
            seed: u64,
        ) -> $crate::abi_stable::std_types::RResult<
            $crate::ffi::CriterionExtBox,
            $crate::abi_stable::std_types::RString,
        > {
            $crate::plugin::__criterion_ext(env!("CARGO_PKG_NAME"), __memlab_plugin, name, params, seed)
        }

        #[doc(hidden)]
        fn __memlab_ext_module() -> $crate::ffi::ExtModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::ffi::ExtMod { criterion_ext: __memlab_criterion_ext }.leak_into_prefix()
        }

        /// The second root module (plugin-api 0.2.1; [`$crate::ffi::ExtMod`]), under its own
        /// symbol ([`$crate::ffi::EXT_SYMBOL`]) so that libraries without it still load.
        #[doc(hidden)]
        #[unsafe(export_name = "memlab_plugin_ext_header")]
        pub static __MEMLAB_EXT_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__memlab_ext_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::ffi::ExtModRef>(
                    erased,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
