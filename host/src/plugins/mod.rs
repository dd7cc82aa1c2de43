//! Plugin discovery, the component registry, and typed handles over the FFI objects.

pub mod grid;
pub mod handles;
pub mod loader;
pub mod probe;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use memlab_plugin_api::ffi::{Component, ComponentInfo, ComponentKind};
use serde::Serialize;

pub use handles::*;
pub use loader::{LoadFailure, LoadedLibrary};

/// Every loaded library and the components they provide, by (kind, name).
pub struct Registry {
    libraries: Vec<LoadedLibrary>,
    failures: Vec<LoadFailure>,
    index: BTreeMap<(ComponentKind, String), usize>,
}

/// One row of `memlab plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentRow {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Library name.
    pub library: String,
    /// Library version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Parameters: (name, type, default, doc).
    pub params: Vec<ParamRow>,
    /// Library file.
    pub path: PathBuf,
}

/// One documented parameter.
#[derive(Debug, Clone, Serialize)]
pub struct ParamRow {
    /// Key.
    pub name: String,
    /// Type.
    pub ty: String,
    /// Default (TOML), empty when required.
    pub default: String,
    /// Doc line.
    pub doc: String,
}

/// Provenance of one loaded library, for `plugins.lock`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LockEntry {
    /// Library name.
    pub name: String,
    /// Library version.
    pub version: String,
    /// plugin-api version it was built against.
    pub api_version: String,
    /// File it was loaded from.
    pub path: String,
    /// SHA-256 of that file.
    pub sha256: String,
}

impl Registry {
    /// Loads every library in [`loader::search_dirs`]`(extra_dirs)`. Libraries that fail are
    /// kept in [`Registry::failures`]; the others load. Two libraries providing the same
    /// (kind, name) is an error naming both files.
    pub fn load(extra_dirs: &[PathBuf]) -> Result<Registry> {
        let dirs = loader::search_dirs(extra_dirs);
        Registry::from_files(&loader::discover(&dirs))
    }

    /// Loads exactly these files. When [`probe`] is enabled (the `memlab` command), they are
    /// first loaded in a child process and only those that loaded cleanly there are loaded here;
    /// the others, crashes included, become [`Registry::failures`].
    pub fn from_files(files: &[PathBuf]) -> Result<Registry> {
        let mut reg = Registry {
            libraries: Vec::new(),
            failures: Vec::new(),
            index: BTreeMap::new(),
        };
        let verdicts = probe::probe(files);
        for (i, f) in files.iter().enumerate() {
            if let Some(fail) = verdicts.as_ref().and_then(|v| v[i].clone()) {
                reg.failures.push(fail);
                continue;
            }
            match loader::load(f) {
                Ok(lib) => reg.add(lib)?,
                Err(fail) => reg.failures.push(fail),
            }
        }
        Ok(reg)
    }

    fn add(&mut self, lib: LoadedLibrary) -> Result<()> {
        let idx = self.libraries.len();
        for c in lib.manifest.components.iter() {
            let key = (c.kind, c.name.to_string());
            if let Some(&other) = self.index.get(&key) {
                bail!(
                    "duplicate {} `{}`: provided by both {} and {}; remove one of them from the \
                     plugin directories",
                    c.kind,
                    c.name,
                    self.libraries[other].path.display(),
                    lib.path.display()
                );
            }
            self.index.insert(key, idx);
        }
        self.libraries.push(lib);
        Ok(())
    }

    /// Libraries that loaded.
    pub fn libraries(&self) -> &[LoadedLibrary] {
        &self.libraries
    }

    /// The files every dataset declares for `memlab data fetch`, from the libraries that declare
    /// any (through their `ExtMod`: a library without one has none and
    /// declare none). A
    /// library whose declaration fails (its registration panicked) is skipped with a warning
    /// naming it; a dataset declared by two libraries is taken from the first, as components
    /// are.
    pub fn dataset_files(&self) -> Vec<memlab_plugin_api::ffi::DatasetFiles> {
        let mut out: Vec<memlab_plugin_api::ffi::DatasetFiles> = Vec::new();
        for lib in &self.libraries {
            let Some(ext) = &lib.ext else {
                continue;
            };
            let list = ext.downloads();
            match list().into_result() {
                Ok(files) => {
                    for f in files {
                        let owner = self.library_of(ComponentKind::Dataset, f.dataset.as_str());
                        let ours = owner.is_some_and(|o| o.path == lib.path);
                        if ours && !out.iter().any(|o| o.dataset == f.dataset) {
                            out.push(f);
                        }
                    }
                }
                Err(e) => log::warn!("{}: cannot list its dataset files: {e}", lib.path.display()),
            }
        }
        out
    }

    /// Libraries that failed to load, with reasons.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }

    /// All components, sorted by kind then name.
    pub fn rows(&self) -> Vec<ComponentRow> {
        self.index
            .iter()
            .map(|((kind, name), &i)| {
                let lib = &self.libraries[i];
                let info = self.info(*kind, name).expect("indexed");
                ComponentRow {
                    kind: kind.to_string(),
                    name: name.clone(),
                    library: lib.manifest.name.to_string(),
                    version: lib.manifest.version.to_string(),
                    description: info.description.to_string(),
                    params: info
                        .params
                        .iter()
                        .map(|p| ParamRow {
                            name: p.name.to_string(),
                            ty: p.ty.to_string(),
                            default: p.default.to_string(),
                            doc: p.doc.to_string(),
                        })
                        .collect(),
                    path: lib.path.clone(),
                }
            })
            .collect()
    }

    /// Names of the components of `kind`.
    pub fn names(&self, kind: ComponentKind) -> Vec<String> {
        self.index
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The manifest entry of a component.
    pub fn info(&self, kind: ComponentKind, name: &str) -> Option<&ComponentInfo> {
        let i = *self.index.get(&(kind, name.to_string()))?;
        self.libraries[i]
            .manifest
            .components
            .iter()
            .find(|c| c.kind == kind && c.name.as_str() == name)
    }

    /// The library providing a component.
    pub fn library_of(&self, kind: ComponentKind, name: &str) -> Option<&LoadedLibrary> {
        self.index
            .get(&(kind, name.to_string()))
            .map(|&i| &self.libraries[i])
    }

    /// Provenance of every loaded library.
    pub fn lock(&self) -> Vec<LockEntry> {
        self.libraries
            .iter()
            .map(|l| LockEntry {
                name: l.manifest.name.to_string(),
                version: l.manifest.version.to_string(),
                api_version: l.manifest.api_version.to_string(),
                path: l.path.display().to_string(),
                sha256: l.sha256.clone(),
            })
            .collect()
    }

    /// Error for an unknown component, listing what is available.
    pub fn unknown(&self, kind: ComponentKind, name: &str) -> anyhow::Error {
        let names = self.names(kind);
        let avail = if names.is_empty() {
            "none loaded".to_string()
        } else {
            names.join(", ")
        };
        anyhow!("no {kind} named `{name}` is loaded (available: {avail})")
    }

    /// Constructs a component from its parameters (TOML table text) and seed.
    pub fn create(
        &self,
        kind: ComponentKind,
        name: &str,
        params: &str,
        seed: u64,
    ) -> Result<(Component, String)> {
        let lib = self
            .library_of(kind, name)
            .ok_or_else(|| self.unknown(kind, name))?;
        let label = format!("{kind} `{name}` (plugin {})", lib.manifest.name);
        let c = (lib.module.create())(kind, name.into(), params.into(), seed)
            .into_result()
            .map_err(|e| anyhow!("{e}"))?;
        if c.kind() != kind {
            bail!("{label}: the plugin returned a {} instead", c.kind());
        }
        Ok((c, label))
    }

    /// A dataset.
    pub fn dataset(&self, name: &str, params: &str, seed: u64) -> Result<DatasetHandle> {
        match self.create(ComponentKind::Dataset, name, params, seed)? {
            (Component::Dataset(d), label) => Ok(DatasetHandle::new(d, label)),
            _ => unreachable!("kind checked"),
        }
    }

    /// A noise schedule.
    pub fn schedule(&self, name: &str, params: &str, seed: u64) -> Result<ScheduleHandle> {
        match self.create(ComponentKind::Schedule, name, params, seed)? {
            (Component::Schedule(d), label) => Ok(ScheduleHandle::new(d, label)),
            _ => unreachable!("kind checked"),
        }
    }

    /// A conditioning scheme.
    pub fn conditioning(&self, name: &str, params: &str, seed: u64) -> Result<ConditioningHandle> {
        match self.create(ComponentKind::Conditioning, name, params, seed)? {
            (Component::Conditioning(d), label) => Ok(ConditioningHandle::new(d, label)),
            _ => unreachable!("kind checked"),
        }
    }

    /// An architecture.
    pub fn architecture(&self, name: &str, params: &str, seed: u64) -> Result<ArchitectureHandle> {
        match self.create(ComponentKind::Architecture, name, params, seed)? {
            (Component::Architecture(d), label) => Ok(ArchitectureHandle::new(d, label)),
            _ => unreachable!("kind checked"),
        }
    }

    /// A replication criterion, with its [`FfiCriterionExt`] part when its library provides one
    /// (plugin-api 0.3.0 and later; a criterion from an older library is distances-only).
    pub fn criterion(&self, name: &str, params: &str, seed: u64) -> Result<CriterionHandle> {
        match self.create(ComponentKind::Criterion, name, params, seed)? {
            (Component::Criterion(d), label) => {
                let lib = self
                    .library_of(ComponentKind::Criterion, name)
                    .expect("created above");
                let ext = match &lib.ext {
                    Some(ext) => Some(
                        (ext.criterion_ext())(name.into(), params.into(), seed)
                            .into_result()
                            .map_err(|e| anyhow!("{e}"))?,
                    ),
                    None => None,
                };
                Ok(CriterionHandle::new(d, ext, label))
            }
            _ => unreachable!("kind checked"),
        }
    }
}

/// Loads a single library file (through the probe when enabled) and returns the registry of
/// its components, or why it did not load (for `memlab plugins --check`).
pub fn check_file(path: &Path) -> Result<std::result::Result<Registry, LoadFailure>> {
    let reg = Registry::from_files(&[path.to_path_buf()])?;
    Ok(match reg.failures.first() {
        Some(f) => Err(f.clone()),
        None => Ok(reg),
    })
}
