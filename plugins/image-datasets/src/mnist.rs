//! MNIST (LeCun et al. 1998): 28×28 grey-scale digits in IDX files.
//!
//! `path` is a directory holding `train-images-idx3-ubyte` / `train-labels-idx1-ubyte` and
//! `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte`, each optionally gzipped (`.gz`; gzip
//! is also recognised by its magic number) and also accepted with the `.idx3-ubyte` spelling
//! some mirrors use. Any IDX image size is accepted (the header decides); classes are the
//! digits `"0"` … `"9"`. The split is loaded at construction.

use std::path::{Path, PathBuf};

use memlab_plugin_api::prelude::*;

use crate::store::{ImageStore, Split, class_order, gunzip, is_gzip, listing, read_file};

pub const PARAMS: &[Param] = &[
    param(
        "path",
        "string",
        "",
        "directory holding the (optionally gzipped) IDX files",
    ),
    param(
        "split",
        "\"train\" | \"test\"",
        "\"train\"",
        "which split to load",
    ),
    param(
        "classes",
        "[string]",
        "(all ten)",
        "digits to keep (e.g. [\"3\", \"8\"]), relabelled 0..k in this order",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct MnistParams {
    path: String,
    split: Split,
    classes: Option<Vec<String>>,
}

/// Builds the dataset from its parameters.
pub fn load(params: &Params, _seed: u64) -> PResult<ImageStore> {
    let p: MnistParams = params.parse()?;
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    if let Some(wanted) = &p.classes {
        class_order(&names, wanted)?;
    }
    let dir = Path::new(&p.path);
    if !dir.is_dir() {
        return Err(format!("MNIST path {} is not a directory", dir.display()));
    }
    let prefix = match p.split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let img_path = find(dir, prefix, "images", 3)?;
    let lab_path = find(dir, prefix, "labels", 1)?;
    let (dims, pixels) = read_idx(&img_path, 3)?;
    let (ldims, labels) = read_idx(&lab_path, 1)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if ldims[0] != n {
        return Err(format!(
            "{} holds {} labels but {} holds {n} images",
            lab_path.display(),
            ldims[0],
            img_path.display()
        ));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(format!(
            "{}: label {i} is {l}, expected a digit 0..9",
            lab_path.display()
        ));
    }
    let labels = labels.into_iter().map(i64::from).collect();
    ImageStore::new(1, h, w, pixels, labels, names)?.select(p.classes.as_deref())
}

/// The first existing spelling of `{prefix}-{kind}-idx{ndim}-ubyte[.gz]` in `dir`.
fn find(dir: &Path, prefix: &str, kind: &str, ndim: usize) -> PResult<PathBuf> {
    let stems = [
        format!("{prefix}-{kind}-idx{ndim}-ubyte"),
        format!("{prefix}-{kind}.idx{ndim}-ubyte"),
    ];
    for stem in &stems {
        for name in [stem.clone(), format!("{stem}.gz")] {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "MNIST {kind} file not found in {}: expected {} or {}.gz; the directory holds: {}",
        dir.display(),
        stems[0],
        stems[0],
        listing(dir)
    ))
}

/// Reads an IDX file of unsigned bytes with `ndim` dimensions: its dimensions and data.
fn read_idx(path: &Path, ndim: usize) -> PResult<(Vec<usize>, Vec<u8>)> {
    let raw = read_file(path)?;
    let what = path.display().to_string();
    let bytes = if is_gzip(&raw) {
        gunzip(&raw, &what)?
    } else {
        raw
    };
    parse_idx(bytes, ndim, &what)
}

/// Parses IDX data: magic `0 0 0x08 ndim`, `ndim` big-endian u32 sizes, then the bytes.
fn parse_idx(mut bytes: Vec<u8>, ndim: usize, what: &str) -> PResult<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "{what}: corrupt IDX header (expected magic bytes 00 00 08 {ndim:02x}, got {:02x?})",
            &bytes[..bytes.len().min(4)]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "{what}: IDX data type 0x{:02x}, expected 0x08 (unsigned bytes)",
            bytes[2]
        ));
    }
    if bytes[3] as usize != ndim {
        return Err(format!(
            "{what}: IDX file has {} dimensions, expected {ndim}",
            bytes[3]
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format!("{what}: truncated IDX header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("{what}: IDX dimensions {dims:?} overflow"))?;
    let have = bytes.len() - header;
    if have != want {
        return Err(format!(
            "{what}: wrong size: the header says {dims:?} = {want} bytes of data, the file has \
             {have}{}",
            if have < want { " (truncated)" } else { "" }
        ));
    }
    if dims.contains(&0) {
        return Err(format!(
            "{what}: IDX file holds no data (dimensions {dims:?})"
        ));
    }
    bytes.drain(..header);
    Ok((dims, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Pixel k of image i.
    fn px(i: usize, k: usize) -> u8 {
        ((i * 37 + k * 3) % 256) as u8
    }

    /// Writes a split of `labels.len()` 28×28 images.
    fn write_split(dir: &Path, prefix: &str, labels: &[u8], zipped: bool) {
        let n = labels.len();
        let data: Vec<u8> = (0..n)
            .flat_map(|i| (0..784).map(move |k| px(i, k)))
            .collect();
        let images = idx(&[n as u32, 28, 28], &data);
        let labs = idx(&[n as u32], labels);
        let (images, labs, ext) = if zipped {
            (gz(&images), gz(&labs), ".gz")
        } else {
            (images, labs, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), labs).unwrap();
    }

    fn open(dir: &Path, extra: &str) -> PResult<ImageStore> {
        let toml = format!("path = {:?}\n{extra}", dir.display().to_string());
        load(&Params::with_defaults(&toml, super::PARAMS).unwrap(), 0)
    }

    #[test]
    fn reads_plain_and_gzipped_splits() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &[5, 0, 4, 1], false);
        write_split(dir.path(), "t10k", &[7, 2], true);
        let ds = open(dir.path(), "").unwrap();
        let s = ds.shape().unwrap();
        assert_eq!((s.channels, s.height, s.width, s.len), (1, 28, 28, 4));
        assert_eq!(s.class_names[3], "3");
        assert_eq!(ds.labels(), &[5, 0, 4, 1]);
        let mut img = vec![0f32; 2 * 784];
        let mut lab = vec![0i64; 2];
        ds.fill(&[2, 2], &mut img, &mut lab).unwrap();
        assert_eq!(lab, vec![4, 4]);
        for k in [0, 100, 783] {
            assert!((img[k] - (px(2, k) as f32 / 127.5 - 1.0)).abs() < 1e-6);
        }
        assert_eq!(img[..784], img[784..]);
        let test = open(dir.path(), "split = \"test\"").unwrap();
        assert_eq!(test.labels(), &[7, 2]);
        assert_eq!(test.image(1)[10], px(1, 10));
        let sel = open(dir.path(), "classes = [\"4\", \"5\"]").unwrap();
        assert_eq!(sel.labels(), &[1, 0]);
        assert_eq!(sel.image(1), ds.image(2));
        let e = open(dir.path(), "classes = [\"six\"]").unwrap_err();
        assert!(
            e.contains("unknown class `six`") && e.contains("0, 1, 2"),
            "{e}"
        );
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("(empty)"),
            "{e}"
        );
        write_split(dir.path(), "train", &[1, 2, 3], false);
        let labels = dir.path().join("train-labels-idx1-ubyte");

        std::fs::write(&labels, idx(&[2], &[1, 2])).unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(e.contains("2 labels") && e.contains("3 images"), "{e}");

        std::fs::write(&labels, idx(&[3], &[1, 2])).unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(e.contains("train-labels-idx1-ubyte: wrong size") && e.contains("truncated"));

        std::fs::write(&labels, idx(&[3], &[1, 2, 10])).unwrap();
        assert!(open(dir.path(), "").unwrap_err().contains("label 2 is 10"));

        std::fs::write(&labels, b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd").unwrap();
        assert!(open(dir.path(), "").unwrap_err().contains("data type 0x0d"));

        std::fs::write(&labels, b"GIF89a").unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(e.contains("corrupt IDX header"), "{e}");

        std::fs::write(&labels, idx(&[3, 1], &[1, 2, 3])).unwrap();
        assert!(
            open(dir.path(), "")
                .unwrap_err()
                .contains("2 dimensions, expected 1")
        );

        std::fs::write(&labels, &gz(&idx(&[3], &[1, 2, 3]))[..20]).unwrap();
        assert!(open(dir.path(), "").unwrap_err().contains("corrupt gzip"));

        let e = open(&dir.path().join("missing"), "").unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }
}
