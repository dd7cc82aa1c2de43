//! Finding and loading plugin libraries.
//!
//! Each library is loaded with `lib_header_from_path(path)?.init_root_module::<PluginModRef>()`
//! (not `RootModule::load_from_file`, which caches one module per root-module type and would
//! return the first plugin for every later one). abi_stable checks the plugin-api version and
//! the layout of every type reachable from the root module; a mismatch is refused with its
//! reason. Libraries are never unloaded.
//!
//! Before any of that, the file is checked structurally ([`super::validate`]) and, from the
//! `memlab` command, loaded once in a child process ([`super::probe`]), so that a damaged library
//! is reported with its path and reason instead of crashing the host.

use std::path::{Path, PathBuf};

use abi_stable::library::{AbiHeaderRef, LibraryError, RawLibrary, lib_header_from_path};
use anyhow::{Context, Result};
use memlab_plugin_api::ffi::{EXT_SYMBOL, ExtModRef, PluginManifest, PluginModRef};
use sha2::{Digest, Sha256};

/// Environment variable with extra plugin directories (`:`-separated on Unix, `;` on Windows).
pub const PLUGIN_PATH_ENV: &str = "MEMLAB_PLUGIN_PATH";

/// A library that loaded.
pub struct LoadedLibrary {
    /// Where it was found.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// What it says about itself.
    pub manifest: PluginManifest,
    /// Its root module.
    pub module: PluginModRef,
    /// Its second root module (plugin-api 0.3.0: criteria asking for images or features);
    /// `None` for a library without one, whose criteria are distances-only.
    pub ext: Option<ExtModRef>,
}

/// A library that did not load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// The reason, in words.
    pub reason: String,
}

/// Whether `path` looks like a dynamic library on this platform.
pub fn is_dylib(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    ext == std::env::consts::DLL_EXTENSION
}

/// Plugin directories in search order: `extra` (e.g. `[plugins] dirs` of a config), then
/// `MEMLAB_PLUGIN_PATH`, then the directory of the running executable. Duplicates removed.
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(v) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        // `cargo test` runs test binaries from target/<profile>/deps, which holds a second copy
        // of every cdylib: use the profile directory, where cargo places the plugin libraries.
        match dir.parent() {
            Some(up) if dir.file_name().is_some_and(|n| n == "deps") => dirs.push(up.to_path_buf()),
            _ => dirs.push(dir.to_path_buf()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.into_iter()
        .filter(|d| seen.insert(d.canonicalize().unwrap_or_else(|_| d.clone())))
        .collect()
}

/// Library files in `dirs` (sorted per directory; missing directories are skipped).
pub fn discover(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_dylib(p))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// SHA-256 of a file, hex-encoded.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn explain(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { .. } => format!("cannot open the library: {e}"),
        LibraryError::GetSymbolError { .. } => {
            "not a memlab plugin: it exports no abi_stable root module (was it built with \
             memlab_plugin_api::export_plugin!?)"
                .to_string()
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => format!(
            "built against an incompatible memlab-plugin-api version ({actual_version}; host \
             uses {}): rebuild it against plugin-api {}",
            memlab_plugin_api::API_VERSION,
            memlab_plugin_api::API_VERSION
        ),
        LibraryError::AbiInstability(_) => {
            let full = e.to_string();
            if std::env::var_os("MEMLAB_ABI_DETAILS").is_some() {
                log::info!("full ABI comparison:\n{full}");
            }
            format!(
                "its plugin interface does not match this host's (it was built against an \
                 incompatible memlab-plugin-api; rebuild it against plugin-api {}): {} \
                 [set MEMLAB_ABI_DETAILS=1 for the full layout comparison]",
                memlab_plugin_api::API_VERSION,
                summarize_abi_error(&full)
            )
        }
        LibraryError::RootModule { .. } => format!("its root module failed to initialise: {e}"),
        _ => e.to_string(),
    }
}

/// Loads one library, checking its ABI, and reads its manifest.
///
/// The file is read and checked by [`super::validate::check_library_image`] before it is
/// mapped, so a truncated or damaged file is a [`LoadFailure`], not a crash. It is opened by its
/// absolute path: a bare file name (`libfoo.so`) means that file in the current directory, never
/// a search of the system library path (`dlopen` searches only names without a `/`).
pub fn load(path: &Path) -> Result<LoadedLibrary, LoadFailure> {
    let fail = |reason: String| LoadFailure {
        path: path.to_path_buf(),
        reason,
    };
    let abs =
        std::path::absolute(path).map_err(|e| fail(format!("cannot resolve the path: {e}")))?;
    if !abs.exists() {
        return Err(fail(format!(
            "file not found (no such file: {})",
            abs.display()
        )));
    }
    if !abs.is_file() {
        return Err(fail(format!("not a regular file: {}", abs.display())));
    }
    let bytes = std::fs::read(&abs).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    super::validate::check_library_image(&bytes).map_err(fail)?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    drop(bytes);
    let header = lib_header_from_path(&abs).map_err(|e| fail(explain(&e)))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| fail(explain(&e)))?;
    let manifest = (module.manifest())()
        .into_result()
        .map_err(|e| fail(format!("manifest: {e}")))?;
    let ext = load_ext(&abs).map_err(|e| fail(format!("its extension module: {e}")))?;
    Ok(LoadedLibrary {
        path: path.to_path_buf(),
        sha256,
        manifest,
        module,
        ext,
    })
}

/// The library's [`ExtModRef`], exported under [`EXT_SYMBOL`] by plugin-api 0.3.0 and later, with
/// the same version and layout checks as the main root module; `None` when the library has no
/// such symbol. The library is already open (and never unloaded), so this
/// only looks the symbol up.
fn load_ext(abs: &Path) -> std::result::Result<Option<ExtModRef>, String> {
    let raw = RawLibrary::load_at(abs).map_err(|e| format!("cannot open the library: {e}"))?;
    // SAFETY: the symbol, when present, is the `LibHeader` static `export_plugin!` writes, read as
    // abi_stable's own loader reads its root-module header; the library is never unloaded.
    let header: Option<AbiHeaderRef> = unsafe { raw.get::<AbiHeaderRef>(EXT_SYMBOL) }
        .ok()
        .map(|h| *h);
    std::mem::forget(raw);
    let Some(header) = header else {
        return Ok(None);
    };
    let lib = header.upgrade().map_err(|e| explain(&e))?;
    lib.init_root_module::<ExtModRef>()
        .map(Some)
        .map_err(|e| explain(&e))
}

/// Condenses abi_stable's multi-page layout comparison to its verdicts ("mismatched package:
/// expected memlab-plugin-api, found bad-abi").
fn summarize_abi_error(full: &str) -> String {
    let mut verdicts = Vec::new();
    let mut lines = full.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(rest) = l.trim().strip_prefix("Error:") {
            let mut v = rest.trim().to_string();
            while let Some(next) = lines.peek() {
                let t = next.trim();
                if t.is_empty() || t.starts_with("Error:") {
                    break;
                }
                v.push(' ');
                v.push_str(t);
                lines.next();
            }
            if !verdicts.contains(&v) {
                verdicts.push(v);
            }
        }
    }
    if verdicts.is_empty() {
        "layouts differ".to_string()
    } else {
        verdicts.join("; ")
    }
}
