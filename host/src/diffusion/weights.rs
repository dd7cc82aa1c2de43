//! Starting from given weights (`architecture.init_from`): a PyTorch `state_dict` saved as
//! safetensors, loaded into the materialised parameters by name.
//!
//! Every parameter of the model must be in the file with the same shape, and every tensor in
//! the file must be a parameter of the model; otherwise the error lists every missing,
//! unexpected and mis-shaped tensor at once. Tensors may be F32, F64 or BF16 (converted to f32).
//! Two reference conventions are accepted: names that all start with `model.` (EDM's
//! preconditioning wrappers hold the network as `self.model`) lose that prefix, and EDM's
//! `*.resample_filter` buffers that the model does not have are skipped when they hold the
//! `[1, 1]` filter (which `ddpmpp` applies without a buffer) and refused otherwise. Buffers the
//! model has (`Ctx::buffer`: `ddpmpp`'s other filters, its Fourier `map_noise.freqs`) load by
//! name like parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::engine::params::ParamStore;
use crate::engine::rank::to_dispatch;

/// Reads `path` and overwrites every parameter of `params` (already materialised) with the
/// tensor of the same name.
pub fn load_into(params: &mut ParamStore, path: &Path, device: &Device) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("init_from: reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("init_from: {} is not safetensors: {e}", path.display()))?;
    let mut names: Vec<&str> = st.names();
    names.sort();
    let strip = !names.is_empty() && names.iter().all(|n| n.starts_with("model."));
    let mut file: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut unreadable: BTreeSet<&str> = BTreeSet::new();
    for full in names {
        let name = if strip { &full["model.".len()..] } else { full };
        let view = st
            .tensor(full)
            .map_err(|e| anyhow::anyhow!("init_from: tensor `{full}`: {e}"))?;
        let vals: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            d => {
                problems.push(format!(
                    "`{full}` has dtype {d:?} (F32, F64 and BF16 are read; save it with .float())"
                ));
                unreadable.insert(name);
                continue;
            }
        };
        if name.ends_with(".resample_filter") && params.get(name).is_none() {
            let box_filter = view.shape() == [1, 1, 2, 2] && vals.iter().all(|&v| v == 0.25);
            if !box_filter {
                problems.push(format!(
                    "`{full}` is a resample filter of shape {:?} other than EDM's [1, 1], \
                     but the model has no such buffer (set the architecture's \
                     resample_filter to the checkpoint's)",
                    view.shape()
                ));
            }
            continue;
        }
        file.insert(name.to_string(), (view.shape().to_vec(), vals));
    }
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, p) in params.iter() {
        if unreadable.contains(name.as_str()) {
            continue;
        }
        match file.get(name) {
            None => missing.push(format!("`{name}` {:?}", p.shape)),
            Some((shape, _)) if *shape != p.shape => misshaped.push(format!(
                "`{name}`: the file has {shape:?}, the model needs {:?}",
                p.shape
            )),
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = file
        .iter()
        .filter(|(n, _)| params.get(n).is_none())
        .map(|(n, (s, _))| format!("`{n}` {s:?}"))
        .collect();
    let mut report = Vec::new();
    for (what, list) in [
        ("missing from the file", &missing),
        ("unexpected (not parameters of the model)", &unexpected),
        ("mis-shaped", &misshaped),
        ("unreadable", &problems),
    ] {
        if !list.is_empty() {
            report.push(format!(
                "{} {what}:\n    {}",
                list.len(),
                list.join("\n    ")
            ));
        }
    }
    if !report.is_empty() {
        bail!(
            "init_from: {} does not match the model's {} parameters:\n  {}",
            path.display(),
            params.len(),
            report.join("\n  ")
        );
    }
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        let (shape, vals) = file.remove(&name).expect("checked above");
        let value = to_dispatch(TensorData::new(vals, shape), device)?;
        params.set(&name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlab_plugin_api::ffi::Init;
    use safetensors::tensor::TensorView;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn store() -> (ParamStore, Device) {
        let dev = crate::engine::cpu();
        let mut p = ParamStore::new(1);
        p.get_or_create("a.weight", &[2, 3], Init::ZEROS, &dev)
            .unwrap();
        p.get_or_create("a.bias", &[2], Init::ZEROS, &dev).unwrap();
        p.get_or_create("b.weight", &[4], Init::ZEROS, &dev)
            .unwrap();
        (p, dev)
    }

    #[test]
    fn a_mismatched_file_names_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write(
            &path,
            &[
                ("a.weight", Dtype::F32, vec![3, 2], f32s(&[0.0; 6])),
                ("a.bias", Dtype::F16, vec![2], vec![0; 4]),
                ("c.weight", Dtype::F32, vec![1], f32s(&[1.0])),
                ("d", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
            ],
        );
        let (mut p, dev) = store();
        let e = format!("{:#}", load_into(&mut p, &path, &dev).unwrap_err());
        for needle in [
            "does not match the model's 3 parameters",
            "1 missing from the file:\n    `b.weight` [4]",
            "2 unexpected (not parameters of the model):\n    `c.weight` [1]\n    `d` [2]",
            "1 mis-shaped:\n    `a.weight`: the file has [3, 2], the model needs [2, 3]",
            "`a.bias` has dtype F16",
        ] {
            assert!(e.contains(needle), "{needle:?} not in:\n{e}");
        }
        // Nothing was overwritten.
        assert_eq!(p.read("b.weight").unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn a_matching_file_loads_by_name_in_any_float_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let f64s: Vec<u8> = [0.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [1.5f32, -3.0, 0.25, 8.0]
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        // EDM-style: every name under `model.`, plus a [1, 1] resample-filter buffer.
        write(
            &path,
            &[
                (
                    "model.a.weight",
                    Dtype::F32,
                    vec![2, 3],
                    f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                ),
                ("model.a.bias", Dtype::F64, vec![2], f64s),
                ("model.b.weight", Dtype::BF16, vec![4], bf16s),
                (
                    "model.b.resample_filter",
                    Dtype::F32,
                    vec![1, 1, 2, 2],
                    f32s(&[0.25; 4]),
                ),
            ],
        );
        let (mut p, dev) = store();
        load_into(&mut p, &path, &dev).unwrap();
        assert_eq!(
            p.read("a.weight").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(p.read("a.bias").unwrap(), vec![0.5, -2.0]);
        assert_eq!(p.read("b.weight").unwrap(), vec![1.5, -3.0, 0.25, 8.0]);
        // Another resample filter is refused.
        write(
            &path,
            &[
                ("a.weight", Dtype::F32, vec![2, 3], f32s(&[0.0; 6])),
                ("a.bias", Dtype::F32, vec![2], f32s(&[0.0; 2])),
                ("b.weight", Dtype::F32, vec![4], f32s(&[0.0; 4])),
                (
                    "b.resample_filter",
                    Dtype::F32,
                    vec![1, 1, 4, 4],
                    f32s(&[0.0625; 16]),
                ),
            ],
        );
        let e = format!("{:#}", load_into(&mut p, &path, &dev).unwrap_err());
        assert!(
            e.contains("`b.resample_filter` is a resample filter of shape [1, 1, 4, 4]"),
            "{e}"
        );
    }
}
