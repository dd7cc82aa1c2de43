//! Declaring what a plugin library provides, and exporting it to the host.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, Tuple2};

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
    /// The documented parameters: also the source of their defaults (see [`Params::fill`]).
    docs: Vec<Param>,
    make: Maker,
    /// A criterion's [`FfiCriterionExt`] part (plugin-api 0.3.0).
    make_ext: Option<ExtMaker>,
}

/// The components one plugin library provides. Build it in the function you pass to
/// [`crate::export_plugin!`].
pub struct Plugin {
    name: String,
    version: String,
    entries: Vec<Entry>,
    files: Vec<DatasetFiles>,
}

/// The published files of a dataset, declared with [`Plugin::dataset_files`] so that `memlab
/// data fetch NAME` can download them (or import a local copy) without the host knowing the
/// dataset.
#[derive(Debug, Clone, Copy)]
pub struct DataFiles<'a> {
    /// One line about the files (what, from where, how large), shown in `memlab data fetch
    /// --help`-style listings.
    pub about: &'a str,
    /// The published files.
    pub files: &'a [Published<'a>],
    /// How to point the dataset's parameters at the files once they are in place (printed
    /// after a fetch and in the by-hand instructions when there is no internet).
    pub usage: &'a str,
    /// A copy as images in class folders that `--from` accepts too, if the dataset has one.
    pub class_folders: Option<ClassFolders<'a>>,
}

/// One published file: its name (on the server and on disk), URL and md5.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    /// File name, e.g. `cifar-10-python.tar.gz`.
    pub name: &'a str,
    /// Download URL (`https://` or `http://`).
    pub url: &'a str,
    /// Lower-case hex md5 of the whole file (32 digits).
    pub md5: &'a str,
}

/// A dataset's class-folder layout (`<split>/<class>/<image>`): the class names in label order
/// and each split's images per class; imported into `DEST/<dir>/<split>.tar`.
#[derive(Debug, Clone, Copy)]
pub struct ClassFolders<'a> {
    /// Sub-folder of the destination, e.g. `cifar10-jpeg`.
    pub dir: &'a str,
    /// Class folder names in label order.
    pub classes: &'a [&'a str],
    /// `(split, images per class)`, e.g. `[("train", 5000), ("test", 1000)]`.
    pub splits: &'a [(&'a str, u64)],
}

impl Plugin {
    /// An empty plugin named `name` at `version` (the export macro passes the crate's).
    pub fn new(name: &str, version: &str) -> Plugin {
        Plugin {
            name: name.to_string(),
            version: version.to_string(),
            entries: Vec::new(),
            files: Vec::new(),
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
        // A default that `Params::fill` cannot use would only fail when a config omits the
        // key; refuse it when the plugin is loaded instead.
        if let Err(e) = Params::default().fill(params) {
            panic!("{}: {e}", self.who(kind, name));
        }
        self.entries.push(Entry {
            info: ComponentInfo {
                kind,
                name: name.into(),
                description: description.into(),
                params: params.iter().map(|p| p.to_ffi()).collect(),
            },
            docs: params.to_vec(),
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

    /// Declares the published files of the dataset `dataset`, registered before with
    /// [`Plugin::dataset`]: `memlab data fetch DATASET` then downloads them (verifying each md5,
    /// every file written atomically), or imports a local copy with `--from`.
    ///
    /// # Panics
    /// When `dataset` is not a registered dataset, is declared twice, or a file entry is
    /// malformed (a name with a `/`, a URL without `http(s)://`, an md5 that is not 32 hex
    /// digits, a class-folder layout without classes or splits). The host reports the panic as
    /// an error of this plugin naming the problem.
    ///
    /// ```
    /// use memlab_plugin_api::prelude::*;
    /// use memlab_plugin_api::plugin::{DataFiles, Published};
    /// # struct Flat;
    /// # impl Dataset for Flat {
    /// #     fn shape(&self) -> PResult<DatasetShape> {
    /// #         Ok(DatasetShape { channels: 1, height: 4, width: 4, len: 10, class_names: vec![] })
    /// #     }
    /// #     fn fill(&self, _: &[u64], i: &mut [f32], l: &mut [i64]) -> PResult<()> {
    /// #         i.fill(0.0);
    /// #         l.fill(0);
    /// #         Ok(())
    /// #     }
    /// # }
    /// let mut p = Plugin::new("my-data", "0.1.0");
    /// p.dataset("flat", "Constant images", &[], |_, _| Ok(Flat));
    /// p.dataset_files(
    ///     "flat",
    ///     DataFiles {
    ///         about: "the flat images (1 kB)",
    ///         files: &[Published {
    ///             name: "flat.bin",
    ///             url: "https://example.org/flat.bin",
    ///             md5: "0123456789abcdef0123456789abcdef",
    ///         }],
    ///         usage: "set the flat dataset's `path` to the destination directory",
    ///         class_folders: None,
    ///     },
    /// );
    /// assert_eq!(p.files()[0].files[0].name.as_str(), "flat.bin");
    /// ```
    pub fn dataset_files(&mut self, dataset: &str, files: DataFiles<'_>) -> &mut Self {
        let who = format!("plugin {}: files of dataset `{dataset}`", self.name);
        if !self
            .entries
            .iter()
            .any(|e| e.info.kind == ComponentKind::Dataset && e.info.name.as_str() == dataset)
        {
            panic!("{who}: no dataset `{dataset}` is registered (register it first)");
        }
        if self.files.iter().any(|f| f.dataset.as_str() == dataset) {
            panic!("{who}: declared twice");
        }
        if files.files.is_empty() && files.class_folders.is_none() {
            panic!("{who}: no files and no class-folder layout");
        }
        for f in files.files {
            if f.name.is_empty() || f.name.contains(['/', '\\']) || f.name.starts_with('.') {
                panic!("{who}: `{}` is not a plain file name", f.name);
            }
            if !(f.url.starts_with("https://") || f.url.starts_with("http://")) {
                panic!("{who}: the URL of `{}` is not http(s): `{}`", f.name, f.url);
            }
            if f.md5.len() != 32
                || !f
                    .md5
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                panic!(
                    "{who}: the md5 of `{}` is not 32 lower-case hex digits: `{}`",
                    f.name, f.md5
                );
            }
        }
        let class_folders = files.class_folders.map(|c| {
            if c.classes.is_empty()
                || c.splits.is_empty()
                || c.dir.is_empty()
                || c.dir.contains('/')
            {
                panic!("{who}: the class-folder layout needs a folder name, classes and splits");
            }
            ClassFolderLayout {
                dir: c.dir.into(),
                classes: c.classes.iter().map(|&c| c.into()).collect(),
                splits: c.splits.iter().map(|&(n, k)| Tuple2(n.into(), k)).collect(),
            }
        });
        self.files.push(DatasetFiles {
            dataset: dataset.into(),
            about: files.about.into(),
            files: files
                .files
                .iter()
                .map(|f| PublishedFile {
                    name: f.name.into(),
                    url: f.url.into(),
                    md5: f.md5.into(),
                })
                .collect(),
            usage: files.usage.into(),
            class_folders: class_folders.into(),
        });
        self
    }

    /// The dataset files declared with [`Plugin::dataset_files`].
    pub fn files(&self) -> &[DatasetFiles] {
        &self.files
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
        let params = Params::from_toml(params)
            .and_then(|p| p.fill(&entry.docs))
            .map_err(|e| format!("{}: {e}", self.who(kind, name)))?;
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
        let entry = self
            .entries
            .iter()
            .find(|e| e.info.kind == kind && e.info.name.as_str() == name)
            .filter(|e| e.make_ext.is_some())
            .ok_or_else(|| format!("plugin {} has no {kind} named `{name}`", self.name))?;
        // The same parameters `create` builds the criterion from: the documented defaults filled in.
        let params = Params::from_toml(params)
            .and_then(|p| p.fill(&entry.docs))
            .map_err(|e| format!("{}: {e}", self.who(kind, name)))?;
        let make = entry.make_ext.as_ref().expect("filtered");
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
pub fn __downloads(
    lib: &str,
    get: fn() -> &'static Plugin,
) -> RResult<abi_stable::std_types::RVec<DatasetFiles>, RString> {
    guard(&format!("plugin {lib} (listing its dataset files)"), || {
        Ok(get().files().iter().cloned().collect())
    })
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
        extern "C" fn __memlab_downloads() -> $crate::abi_stable::std_types::RResult<
            $crate::abi_stable::std_types::RVec<$crate::ffi::DatasetFiles>,
            $crate::abi_stable::std_types::RString,
        > {
            $crate::plugin::__downloads(env!("CARGO_PKG_NAME"), __memlab_plugin)
        }

        #[doc(hidden)]
        fn __memlab_root_module() -> $crate::ffi::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::ffi::PluginMod {
                manifest: __memlab_manifest,
                create: __memlab_create,
            }
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
            $crate::ffi::ExtMod {
                criterion_ext: __memlab_criterion_ext,
                downloads: __memlab_downloads,
            }
            .leak_into_prefix()
        }

        /// The second root module (plugin-api 0.3.0; [`$crate::ffi::ExtMod`]), under its own
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::DatasetShape;

    struct Empty;
    impl Dataset for Empty {
        fn shape(&self) -> PResult<DatasetShape> {
            Ok(DatasetShape {
                channels: 1,
                height: 1,
                width: 1,
                len: 0,
                class_names: vec![],
            })
        }
        fn fill(&self, _: &[u64], _: &mut [f32], _: &mut [i64]) -> PResult<()> {
            Ok(())
        }
    }

    fn declare(dataset: &str, file: Published<'_>) -> String {
        let r = std::panic::catch_unwind(|| {
            let mut p = Plugin::new("p", "0");
            p.dataset("d", "", &[], |_, _| Ok(Empty));
            p.dataset_files(
                dataset,
                DataFiles {
                    about: "",
                    files: &[file],
                    usage: "",
                    class_folders: None,
                },
            );
        });
        match r {
            Ok(()) => String::new(),
            Err(e) => crate::adapter::panic_message(&*e),
        }
    }

    #[test]
    fn a_default_that_is_not_toml_is_refused_at_registration() {
        let r = std::panic::catch_unwind(|| {
            let mut p = Plugin::new("p", "0");
            p.dataset(
                "d",
                "",
                &[crate::param("size", "int", "sixteen", "image side")],
                |_, _| Ok(Empty),
            );
        });
        let e = crate::adapter::panic_message(&*r.unwrap_err());
        assert!(
            e.contains("dataset `d` (plugin p)") && e.contains("`size`") && e.contains("sixteen"),
            "{e}"
        );
    }

    #[test]
    fn malformed_file_declarations_are_named() {
        let good = Published {
            name: "a.bin",
            url: "https://x/a.bin",
            md5: "0123456789abcdef0123456789abcdef",
        };
        assert_eq!(declare("d", good), "");
        let e = declare("nope", good);
        assert!(e.contains("no dataset `nope` is registered"), "{e}");
        let e = declare(
            "d",
            Published {
                name: "../a",
                ..good
            },
        );
        assert!(e.contains("not a plain file name"), "{e}");
        let e = declare(
            "d",
            Published {
                url: "ftp://x",
                ..good
            },
        );
        assert!(e.contains("not http(s)"), "{e}");
        let e = declare("d", Published { md5: "ABC", ..good });
        assert!(e.contains("32 lower-case hex digits"), "{e}");
    }
}
