//! Training snapshots: parameters, EMA parameters, Adam state and the step, in one
//! safetensors file (readable from Python with `safetensors.numpy.load_file`), written
//! atomically. The random state needs no saving: every random draw of step `s` comes from a
//! stream derived from `(seed, s)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::engine::params::{Param, ParamStore, read_f32};
use crate::engine::rank::to_dispatch;
use crate::optim::AdamState;
use crate::output::write_atomic;

/// Everything needed to continue training exactly.
pub struct Snapshot {
    /// Optimiser steps completed.
    pub step: u64,
    /// Parameters.
    pub params: ParamStore,
    /// EMA parameters (when EMA is on).
    pub ema: Option<ParamStore>,
    /// Adam moments.
    pub adam: AdamState,
    /// Hash of the resolved config that produced it.
    pub config_hash: String,
}

/// File name of the snapshot after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("snapshot-{step:08}.safetensors")
}

/// Snapshots in `dir`, sorted by step.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name
                .strip_prefix("snapshot-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Snapshot {
    /// Writes the snapshot to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut add_store = |prefix: &str, store: &ParamStore| -> Result<()> {
            for (name, p) in store.iter() {
                let v = read_f32(&p.value, p.shape.len())?;
                blobs.push((format!("{prefix}/{name}"), p.shape.clone(), f32_bytes(&v)));
            }
            Ok(())
        };
        add_store("params", &self.params)?;
        if let Some(e) = &self.ema {
            add_store("ema", e)?;
        }
        for (prefix, map) in [("adam_m", &self.adam.m), ("adam_v", &self.adam.v)] {
            for (name, t) in map {
                let shape = self
                    .params
                    .get(name)
                    .map(|p| p.shape.clone())
                    .ok_or_else(|| anyhow!("moment of unknown parameter {name}"))?;
                let v = read_f32(t, shape.len())?;
                blobs.push((format!("{prefix}/{name}"), shape, f32_bytes(&v)));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = blobs
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        let mut meta = HashMap::new();
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("adam_t".to_string(), self.adam.t.to_string());
        meta.insert("init_seed".to_string(), self.params.seed().to_string());
        meta.insert("config_hash".to_string(), self.config_hash.clone());
        meta.insert(
            "memlab_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let bytes = safetensors::serialize(views, Some(meta))?;
        write_atomic(path, &bytes)
    }

    /// Reads a snapshot onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Snapshot> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading snapshot {}", path.display()))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        let get = |k: &str| -> Result<String> {
            meta.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("snapshot {} lacks metadata `{k}`", path.display()))
        };
        let step: u64 = get("step")?.parse()?;
        let adam_t: u64 = get("adam_t")?.parse()?;
        let init_seed: u64 = get("init_seed")?.parse()?;
        let st = SafeTensors::deserialize(&bytes)?;
        let mut params = ParamStore::new(init_seed);
        let mut ema: Option<ParamStore> = None;
        let mut adam = AdamState {
            t: adam_t,
            ..Default::default()
        };
        // Keep the parameter order of the file's writer (sorted by safetensors): sort names so
        // loading is deterministic.
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        for full in names {
            let view = st.tensor(&full)?;
            if view.dtype() != Dtype::F32 {
                bail!("{}: tensor {full} is not f32", path.display());
            }
            let shape = view.shape().to_vec();
            let vals: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let t = to_dispatch(TensorData::new(vals, shape.clone()), device)?;
            let (prefix, name) = full
                .split_once('/')
                .ok_or_else(|| anyhow!("bad tensor name {full}"))?;
            match prefix {
                "params" => params.insert(name, Param { shape, value: t }),
                "ema" => ema
                    .get_or_insert_with(|| ParamStore::new(init_seed))
                    .insert(name, Param { shape, value: t }),
                "adam_m" => {
                    adam.m.insert(name.to_string(), t);
                }
                "adam_v" => {
                    adam.v.insert(name.to_string(), t);
                }
                _ => bail!("{}: unexpected tensor {full}", path.display()),
            }
        }
        params.freeze();
        if let Some(e) = ema.as_mut() {
            e.freeze();
        }
        Ok(Snapshot {
            step,
            params,
            ema,
            adam,
            config_hash: get("config_hash")?,
        })
    }
}
