//! Training snapshots: parameters, EMA parameters, Adam state and the step, in one
//! safetensors file (readable from Python with `safetensors.numpy.load_file`), written
//! atomically. The random state needs no saving: every random draw of step `s` comes from a
//! stream derived from `(seed, s)`.
//!
//! Two properties beyond the safetensors format:
//!
//! - **Same content ⇒ same bytes.** memlab writes the file itself instead of calling
//!   `safetensors::serialize`, whose `__metadata__` is a `HashMap` serialised in hash order
//!   (two identical runs gave byte-different files). Here every JSON key — metadata and tensor
//!   names — is written in sorted order and the tensor data follows in the same order.
//! - **Verified on load.** The metadata entry [`CHECKSUM_KEY`] holds a SHA-256 over every
//!   tensor (name, dtype, shape, data, in name order) and every other metadata entry; a file
//!   whose bytes no longer match (zeroed or flipped bytes, truncation, a broken header) fails
//!   to load with a [`Damaged`] error naming the file and what is wrong. SHA-256 rather than a
//!   CRC: it is already a dependency, its cost is negligible next to a training step, and the
//!   byte stream it hashes (see [`CHECKSUM_KEY`]) is easy to reproduce with Python's
//!   `hashlib`. Files from earlier memlab versions have no checksum and load with an
//!   "unverified" warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::diffusion::optim::AdamState;
use crate::engine::params::{Param, ParamStore, read_f32};
use crate::engine::rank::to_dispatch;
use crate::io::output::write_atomic;

/// Metadata key of the content checksum: lower-case hex SHA-256 of a stream of fields, each
/// written as its byte length (u64 little-endian) then its bytes. First, for every other
/// metadata entry in key order: `meta`, key, value; then for every tensor in name order:
/// `tensor`, name, dtype (`F32`), shape (each dimension as u64 little-endian), data.
pub const CHECKSUM_KEY: &str = "memlab_sha256";

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

/// A snapshot file whose content is not what memlab wrote: it does not parse, or its checksum
/// does not match. Returned (inside `anyhow::Error`) by [`Snapshot::load`] and [`verify`];
/// I/O errors (a missing or unreadable file) are not `Damaged`.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {} is damaged: {}",
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for Damaged {}

/// File name of the snapshot after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("snapshot-{step:08}.safetensors")
}

/// Snapshots in `dir`, sorted by step (files set aside by [`set_aside`] are not listed).
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

/// Renames a damaged snapshot to `<name>.damaged` (`.damaged.1`, … if taken) so that it is
/// neither listed nor overwritten, and kept for inspection; returns the new path.
pub fn set_aside(path: &Path) -> Result<PathBuf> {
    let base = format!("{}.damaged", path.display());
    let mut to = PathBuf::from(&base);
    let mut k = 1;
    while to.exists() {
        to = PathBuf::from(format!("{base}.{k}"));
        k += 1;
    }
    std::fs::rename(path, &to)
        .with_context(|| format!("moving {} to {}", path.display(), to.display()))?;
    Ok(to)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The safetensors name of a dtype (`F32`, …), as written in headers.
fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// SHA-256 over the metadata entries other than [`CHECKSUM_KEY`] and over the tensors, both
/// in sorted name order. Every field is length-prefixed, so no two different contents hash
/// the same byte stream.
fn checksum<'a>(
    meta: &BTreeMap<String, String>,
    tensors: impl IntoIterator<Item = (&'a str, String, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in meta.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        field(b"meta");
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, dtype, shape, data) in tensors {
        field(b"tensor");
        field(name.as_bytes());
        field(dtype.as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|d| (*d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(data);
    }
    format!("{:x}", h.finalize())
}

/// Serialises tensors (`name → (shape, little-endian f32 bytes)`) and metadata to safetensors
/// bytes with a deterministic layout: header keys sorted, data in name order, header padded
/// with spaces to a multiple of 8 bytes (as the format recommends).
fn serialize(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Entry<'a> {
        Meta(&'a BTreeMap<String, String>),
        Tensor {
            dtype: &'static str,
            shape: &'a [usize],
            data_offsets: [usize; 2],
        },
    }
    let mut header: BTreeMap<&str, Entry<'_>> = BTreeMap::new();
    header.insert("__metadata__", Entry::Meta(meta));
    let mut offset = 0;
    for (name, (shape, data)) in tensors {
        if shape.iter().product::<usize>() * 4 != data.len() {
            return Err(anyhow!(
                "tensor {name}: shape {shape:?} does not match {} bytes",
                data.len()
            ));
        }
        header.insert(
            name,
            Entry::Tensor {
                dtype: "F32",
                shape,
                data_offsets: [offset, offset + data.len()],
            },
        );
        offset += data.len();
    }
    let mut head = serde_json::to_vec(&header)?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, data) in tensors.values() {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Parses snapshot bytes and checks their checksum: the tensors and the metadata, or a
/// [`Damaged`] error. A file without a checksum (earlier memlab) passes with a warning.
fn check<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> std::result::Result<(SafeTensors<'a>, BTreeMap<String, String>), Damaged> {
    let damaged = |reason: String| Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| damaged(format!("not a readable safetensors file ({e})")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| damaged(format!("not a readable safetensors file ({e})")))?;
    let meta: BTreeMap<String, String> = metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        let v = st
            .tensor(name)
            .map_err(|e| damaged(format!("tensor {name}: {e}")))?;
        views.push((name, v));
    }
    match meta.get(CHECKSUM_KEY) {
        Some(stored) => {
            let actual = checksum(
                &meta,
                views
                    .iter()
                    .map(|(n, v)| (*n, dtype_name(v.dtype()), v.shape(), v.data())),
            );
            if *stored != actual {
                return Err(damaged(format!(
                    "its content does not match the checksum it was written with (stored \
                     {CHECKSUM_KEY} {stored}, content hashes to {actual})"
                )));
            }
        }
        None => log::warn!(
            "snapshot {} has no checksum (written by an earlier memlab): loading it unverified",
            path.display()
        ),
    }
    Ok((st, meta))
}

/// Checks that the snapshot at `path` is intact (parses, checksum matches) without loading
/// its tensors onto a device. Damage is a [`Damaged`] error; a read failure a plain one.
pub fn verify(path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading snapshot {}", path.display()))?;
    check(path, &bytes)?;
    Ok(())
}

impl Snapshot {
    /// Writes the snapshot to `path` atomically, with its checksum. The bytes depend only on
    /// the content: saving the same state twice gives identical files.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let mut add_store = |prefix: &str, store: &ParamStore| -> Result<()> {
            for (name, p) in store.iter() {
                let v = read_f32(&p.value, p.shape.len())?;
                tensors.insert(format!("{prefix}/{name}"), (p.shape.clone(), f32_bytes(&v)));
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
                tensors.insert(format!("{prefix}/{name}"), (shape, f32_bytes(&v)));
            }
        }
        let mut meta = BTreeMap::new();
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("adam_t".to_string(), self.adam.t.to_string());
        meta.insert("init_seed".to_string(), self.params.seed().to_string());
        meta.insert("config_hash".to_string(), self.config_hash.clone());
        meta.insert(
            "memlab_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let sum = checksum(
            &meta,
            tensors
                .iter()
                .map(|(n, (s, d))| (n.as_str(), "F32".to_string(), s.as_slice(), d.as_slice())),
        );
        meta.insert(CHECKSUM_KEY.to_string(), sum);
        let bytes = serialize(&tensors, &meta)
            .with_context(|| format!("serialising snapshot {}", path.display()))?;
        write_atomic(path, &bytes)
    }

    /// Reads a snapshot onto `device` after verifying it: a damaged file is a [`Damaged`]
    /// error naming it (test with `err.downcast_ref::<Damaged>()`).
    pub fn load(path: &Path, device: &Device) -> Result<Snapshot> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading snapshot {}", path.display()))?;
        let (st, meta) = check(path, &bytes)?;
        let damaged = |reason: String| Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let get = |k: &str| -> std::result::Result<String, Damaged> {
            meta.get(k)
                .cloned()
                .ok_or_else(|| damaged(format!("metadata `{k}` is missing")))
        };
        let number = |k: &str| -> std::result::Result<u64, Damaged> {
            let v = get(k)?;
            v.parse()
                .map_err(|_| damaged(format!("metadata `{k}` = {v:?} is not a number")))
        };
        let step = number("step")?;
        let adam_t = number("adam_t")?;
        let init_seed = number("init_seed")?;
        let config_hash = get("config_hash")?;
        let mut params = ParamStore::new(init_seed);
        let mut ema: Option<ParamStore> = None;
        let mut adam = AdamState {
            t: adam_t,
            ..Default::default()
        };
        // Sort names so loading is deterministic.
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        for full in names {
            let view = st
                .tensor(&full)
                .map_err(|e| damaged(format!("tensor {full}: {e}")))?;
            if view.dtype() != Dtype::F32 {
                return Err(
                    damaged(format!("tensor {full} is {:?}, not F32", view.dtype())).into(),
                );
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
                .ok_or_else(|| damaged(format!("unexpected tensor name {full}")))?;
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
                _ => return Err(damaged(format!("unexpected tensor {full}")).into()),
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
            config_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(vals: Vec<f32>, shape: &[usize]) -> Param {
        let t = to_dispatch(TensorData::new(vals, shape.to_vec()), &crate::engine::cpu()).unwrap();
        Param {
            shape: shape.to_vec(),
            value: t,
        }
    }

    /// A small snapshot; `reversed` inserts the parameters in the opposite order.
    fn snapshot(reversed: bool) -> Snapshot {
        let mut items = vec![
            (
                "a.weight",
                (0..6).map(|i| i as f32 * 0.25).collect::<Vec<_>>(),
                vec![2, 3],
            ),
            ("b.bias", vec![1.0, -2.0, 3.5, 0.0], vec![4]),
        ];
        if reversed {
            items.reverse();
        }
        let mut params = ParamStore::new(7);
        let mut ema = ParamStore::new(7);
        let mut adam = AdamState {
            t: 3,
            ..Default::default()
        };
        for (n, v, s) in &items {
            params.insert(n, param(v.clone(), s));
            ema.insert(n, param(v.iter().map(|x| x * 0.5).collect(), s));
            adam.m.insert(
                n.to_string(),
                param(v.iter().map(|x| x * 0.1).collect(), s).value,
            );
            adam.v.insert(
                n.to_string(),
                param(v.iter().map(|x| x * x).collect(), s).value,
            );
        }
        Snapshot {
            step: 3,
            params,
            ema: Some(ema),
            adam,
            config_hash: "cafe".into(),
        }
    }

    fn damage(e: anyhow::Error) -> Damaged {
        e.downcast_ref::<Damaged>()
            .unwrap_or_else(|| panic!("expected a Damaged error, got {e:#}"))
            .clone()
    }

    #[test]
    fn same_state_same_bytes_and_a_valid_safetensors_file() {
        let d = tempfile::tempdir().unwrap();
        let (p1, p2, p3) = (d.path().join("1"), d.path().join("2"), d.path().join("3"));
        snapshot(false).save(&p1).unwrap();
        snapshot(false).save(&p2).unwrap();
        snapshot(true).save(&p3).unwrap();
        let b = std::fs::read(&p1).unwrap();
        assert!(b == std::fs::read(&p2).unwrap(), "two saves differ");
        assert!(
            b == std::fs::read(&p3).unwrap(),
            "insertion order leaks into the bytes"
        );
        // Readable by the reference implementation, with the checksum in the metadata.
        let st = SafeTensors::deserialize(&b).unwrap();
        assert_eq!(st.len(), 8);
        let (n, meta) = SafeTensors::read_metadata(&b).unwrap();
        assert_eq!(n % 8, 0);
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta[CHECKSUM_KEY].len(), 64);
        assert_eq!(meta["step"], "3");
        let s = Snapshot::load(&p1, &crate::engine::cpu()).unwrap();
        assert_eq!((s.step, s.adam.t, s.config_hash.as_str()), (3, 3, "cafe"));
        assert_eq!(s.params.read("b.bias").unwrap(), vec![1.0, -2.0, 3.5, 0.0]);
        assert_eq!(s.ema.unwrap().read("a.weight").unwrap()[2], 0.25);
        verify(&p1).unwrap();
    }

    #[test]
    fn zeroed_flipped_truncated_or_garbled_files_are_named_as_damaged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("snapshot-00000003.safetensors");
        snapshot(false).save(&p).unwrap();
        let good = std::fs::read(&p).unwrap();
        let mid = good.len() - 40;
        let mut zeroed = good.clone();
        zeroed[mid..mid + 16].fill(0);
        let mut flipped = good.clone();
        flipped[mid] ^= 0x01;
        let truncated = good[..good.len() - 4].to_vec();
        let mut garbled = good.clone();
        garbled[12] = b'#';
        let mut step_edited = good.clone();
        let at = step_edited
            .windows(10)
            .position(|w| w == b"\"step\":\"3\"")
            .unwrap();
        step_edited[at + 8] = b'9';
        for (what, bytes) in [
            ("zeroed", zeroed),
            ("flipped", flipped),
            ("truncated", truncated),
            ("garbled", garbled),
            ("step edited", step_edited),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let e = damage(Snapshot::load(&p, &crate::engine::cpu()).err().unwrap());
            assert_eq!(e.path, p, "{what}");
            assert!(
                e.to_string().contains("snapshot-00000003.safetensors"),
                "{what}: {e}"
            );
            damage(verify(&p).err().unwrap());
        }
        // A missing file is an I/O error, not damage.
        let missing = Snapshot::load(&d.path().join("nope"), &crate::engine::cpu())
            .err()
            .unwrap();
        assert!(missing.downcast_ref::<Damaged>().is_none());
    }

    #[test]
    fn files_without_a_checksum_load_unverified() {
        // The writer of earlier memlab versions: safetensors::serialize, no checksum.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("old.safetensors");
        let data = f32_bytes(&[1.0, 2.0]);
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
        let meta: std::collections::HashMap<String, String> = [
            ("step", "5"),
            ("adam_t", "5"),
            ("init_seed", "1"),
            ("config_hash", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let bytes = safetensors::serialize([("params/w", view)], Some(meta)).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let s = Snapshot::load(&p, &crate::engine::cpu()).unwrap();
        assert_eq!(s.step, 5);
        assert_eq!(s.params.read("w").unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn set_aside_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(file_name(4));
        std::fs::write(&p, b"one").unwrap();
        let a = set_aside(&p).unwrap();
        std::fs::write(&p, b"two").unwrap();
        let b = set_aside(&p).unwrap();
        assert!(a.to_string_lossy().ends_with(".safetensors.damaged"));
        assert!(b.to_string_lossy().ends_with(".safetensors.damaged.1"));
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert!(list(d.path()).is_empty());
    }
}
