//! CIFAR-10 (Krizhevsky 2009): 32×32 RGB images in ten classes.
//!
//! `path` may be a directory holding the python batches (`data_batch_1` … `data_batch_5`,
//! `test_batch`, as in `cifar-10-batches-py`) or the binary ones (`data_batch_1.bin` …,
//! `test_batch.bin`, as in `cifar-10-batches-bin`: records of 1 label byte + 3072 bytes of R, G,
//! B planes), a directory holding one of those two folders or their original archive, or the
//! archive itself (`cifar-10-python.tar.gz` / `cifar-10-binary.tar.gz`, read in memory without
//! extracting). The whole split is loaded at construction.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use memlab_plugin_api::prelude::*;

use crate::pickle::{self, Value};
use crate::store::{ImageStore, Split, class_order, listing, read_file};

/// The ten CIFAR-10 class names, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Bytes of one image: 3 planes of 32×32.
const IMAGE_BYTES: usize = 3 * 32 * 32;

pub const PARAMS: &[Param] = &[
    param(
        "path",
        "string",
        "",
        "directory of python or binary batches, a folder holding one, or the .tar.gz archive",
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
        "class names to keep (e.g. [\"automobile\"]), relabelled 0..k in this order",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct CifarParams {
    path: String,
    split: Split,
    classes: Option<Vec<String>>,
}

/// Batch file names of a split, without the `.bin` of the binary format.
fn batch_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}")).collect(),
        Split::Test => vec!["test_batch".into()],
    }
}

/// The two on-disk formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Python,
    Binary,
}

impl Format {
    fn file_name(self, batch: &str) -> String {
        match self {
            Format::Python => batch.to_string(),
            Format::Binary => format!("{batch}.bin"),
        }
    }
}

/// One batch file's contents, with a name for errors.
struct RawBatch {
    what: String,
    format: Format,
    bytes: Vec<u8>,
}

/// Builds the dataset from its parameters.
pub fn load(params: &Params, _seed: u64) -> PResult<ImageStore> {
    let p: CifarParams = params.parse()?;
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    if let Some(wanted) = &p.classes {
        class_order(&names, wanted)?;
    }
    let raw = find_batches(Path::new(&p.path), p.split)?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for b in raw {
        let (px, lb) = match b.format {
            Format::Python => parse_python(&b.bytes, &b.what)?,
            Format::Binary => parse_binary(&b.bytes, &b.what)?,
        };
        pixels.extend_from_slice(&px);
        labels.extend_from_slice(&lb);
    }
    ImageStore::new(3, 32, 32, pixels, labels, names)?.select(p.classes.as_deref())
}

/// Locates and reads the batch files of `split` under `path`.
fn find_batches(path: &Path, split: Split) -> PResult<Vec<RawBatch>> {
    let batches = batch_names(split);
    if path.is_file() {
        return read_archive(path, &batches);
    }
    if !path.is_dir() {
        return Err(format!("CIFAR-10 path {} does not exist", path.display()));
    }
    let dirs = [
        path.to_path_buf(),
        path.join("cifar-10-batches-py"),
        path.join("cifar-10-batches-bin"),
    ];
    for dir in &dirs {
        for format in [Format::Python, Format::Binary] {
            let files: Vec<PathBuf> = batches
                .iter()
                .map(|b| dir.join(format.file_name(b)))
                .collect();
            if files.iter().all(|f| f.is_file()) {
                return files
                    .into_iter()
                    .map(|f| {
                        Ok(RawBatch {
                            what: f.display().to_string(),
                            format,
                            bytes: read_file(&f)?,
                        })
                    })
                    .collect();
            }
        }
    }
    for archive in ["cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"] {
        let a = path.join(archive);
        if a.is_file() {
            return read_archive(&a, &batches);
        }
    }
    // Nothing complete: say what is missing from the format that is partly there.
    let mut missing = String::new();
    for dir in &dirs {
        for format in [Format::Python, Format::Binary] {
            let (have, lack): (Vec<String>, Vec<String>) = batches
                .iter()
                .map(|b| format.file_name(b))
                .partition(|f| dir.join(f).is_file());
            if !have.is_empty() && missing.is_empty() {
                missing = format!(" (missing {} in {})", lack.join(", "), dir.display());
            }
        }
    }
    Err(format!(
        "no complete CIFAR-10 {} split in {}{missing}: expected {} (python batches) or \
         the same names with `.bin` (binary batches), a cifar-10-batches-py / \
         cifar-10-batches-bin folder, or cifar-10-python.tar.gz / cifar-10-binary.tar.gz; \
         the directory holds: {}",
        split.name(),
        path.display(),
        batches.join(", "),
        listing(path)
    ))
}

/// Reads the batches of a split from a `.tar.gz` (or plain `.tar`) archive, in memory.
fn read_archive(archive: &Path, batches: &[String]) -> PResult<Vec<RawBatch>> {
    let shown = archive.display();
    let mut file = File::open(archive).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    drop(file);
    let file =
        BufReader::new(File::open(archive).map_err(|e| format!("cannot open {shown}: {e}"))?);
    let reader: Box<dyn Read> = if n == 2 && crate::store::is_gzip(&magic) {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| format!("{shown}: not a readable tar archive: {e}"))?;
    let mut found: HashMap<String, RawBatch> = HashMap::new();
    let mut seen = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            format!("{shown}: not a readable .tar.gz / .tar archive of CIFAR-10 batches: {e}")
        })?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let inner = entry
            .path()
            .map_err(|e| format!("{shown}: bad entry name: {e}"))?
            .into_owned();
        let Some(name) = inner
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        seen.push(inner.display().to_string());
        let (batch, format) = match name.strip_suffix(".bin") {
            Some(b) => (b.to_string(), Format::Binary),
            None => (name.clone(), Format::Python),
        };
        if !batches.contains(&batch) {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{shown}: cannot read {}: {e}", inner.display()))?;
        found.insert(
            batch,
            RawBatch {
                what: format!("{shown}:{}", inner.display()),
                format,
                bytes,
            },
        );
        if batches.iter().all(|b| found.contains_key(b)) {
            break;
        }
    }
    let missing: Vec<&str> = batches
        .iter()
        .filter(|b| !found.contains_key(*b))
        .map(|s| s.as_str())
        .collect();
    if !missing.is_empty() {
        seen.truncate(12);
        return Err(format!(
            "{shown}: archive lacks CIFAR-10 batch(es) {} (python or .bin); it holds: {}",
            missing.join(", "),
            if seen.is_empty() {
                "no files".to_string()
            } else {
                seen.join(", ")
            }
        ));
    }
    Ok(batches
        .iter()
        .map(|b| found.remove(b).expect("checked above"))
        .collect())
}

/// Parses a binary batch: records of 1 label byte + 3072 pixel bytes.
fn parse_binary(bytes: &[u8], what: &str) -> PResult<(Vec<u8>, Vec<i64>)> {
    let rec = IMAGE_BYTES + 1;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(format!(
            "{what}: {} bytes is not a whole number of {rec}-byte records (1 label byte + \
             {IMAGE_BYTES} pixel bytes)",
            bytes.len()
        ));
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        if r[0] >= 10 {
            return Err(format!(
                "{what}: record {i} has label {}, expected 0..9 (CIFAR-100 binary records have \
                 two label bytes and are not supported)",
                r[0]
            ));
        }
        labels.push(r[0] as i64);
        pixels.extend_from_slice(&r[1..]);
    }
    Ok((pixels, labels))
}

/// Parses a python batch: a pickled dict with `b'data'` (uint8 N×3072) and `b'labels'`.
fn parse_python(bytes: &[u8], what: &str) -> PResult<(Vec<u8>, Vec<i64>)> {
    let v = pickle::load(bytes).map_err(|e| format!("{what}: not a CIFAR-10 python batch: {e}"))?;
    if !matches!(v, Value::Dict(_)) {
        return Err(format!(
            "{what}: the pickle holds a {}, expected a dict with b'data' and b'labels'",
            v.kind()
        ));
    }
    let keys = v.keys().join(", ");
    let data = v
        .get("data")
        .ok_or_else(|| format!("{what}: the batch has no b'data' (keys: {keys})"))?;
    let Value::Array(arr) = data else {
        return Err(format!(
            "{what}: b'data' is a {}, expected a numpy uint8 array",
            data.kind()
        ));
    };
    let arr = arr.borrow();
    let pixels = arr.as_u8().map_err(|e| format!("{what}: b'data': {e}"))?;
    let n = match arr.shape[..] {
        [n, IMAGE_BYTES] => n,
        _ => {
            return Err(format!(
                "{what}: b'data' has shape {:?}, expected (N, {IMAGE_BYTES})",
                arr.shape
            ));
        }
    };
    let labels = match v.get("labels") {
        Some(Value::List(l)) => l
            .borrow()
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(format!("{what}: b'labels' holds a {}", other.kind())),
            })
            .collect::<PResult<Vec<i64>>>()?,
        Some(Value::Array(a)) => a
            .borrow()
            .to_i64()
            .map_err(|e| format!("{what}: b'labels': {e}"))?,
        Some(other) => {
            return Err(format!(
                "{what}: b'labels' is a {}, expected a list of ints",
                other.kind()
            ));
        }
        None if v.get("fine_labels").is_some() => {
            return Err(format!(
                "{what}: this is a CIFAR-100 batch (b'fine_labels'); only CIFAR-10 is supported"
            ));
        }
        None => return Err(format!("{what}: the batch has no b'labels' (keys: {keys})")),
    };
    if labels.len() != n {
        return Err(format!("{what}: {} labels for {n} images", labels.len()));
    }
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| !(0..10).contains(*l))
    {
        return Err(format!("{what}: image {i} has label {l}, expected 0..9"));
    }
    Ok((pixels.to_vec(), labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Pixel `k` of image `i` in the pickle fixtures.
    fn fixture_pixel(i: usize, k: usize) -> u8 {
        ((k * 7 + i * 50) % 256) as u8
    }

    fn open(path: &Path, extra: &str) -> PResult<ImageStore> {
        let toml = format!("path = {:?}\n{extra}", path.display().to_string());
        load(&Params::with_defaults(&toml, super::PARAMS).unwrap(), 0)
    }

    /// A binary batch of `labels.len()` records; pixel k of record r is `(r·31 + k + seed) % 256`.
    fn binary_batch(labels: &[u8], seed: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (r, &l) in labels.iter().enumerate() {
            out.push(l);
            out.extend((0..IMAGE_BYTES).map(|k| ((r * 31 + k + seed) % 256) as u8));
        }
        out
    }

    fn write_binary_dir(dir: &Path) {
        for i in 1..=5 {
            let labels = [(i as u8) % 10, (2 * i as u8 + 1) % 10];
            std::fs::write(
                dir.join(format!("data_batch_{i}.bin")),
                binary_batch(&labels, i),
            )
            .unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), binary_batch(&[9, 1, 1], 100)).unwrap();
    }

    fn pixels_of(ds: &ImageStore, i: u64) -> (Vec<f32>, i64) {
        let mut img = vec![0f32; IMAGE_BYTES];
        let mut lab = [0i64];
        ds.fill(&[i], &mut img, &mut lab).unwrap();
        (img, lab[0])
    }

    #[test]
    fn reads_binary_batches() {
        let dir = tempfile::tempdir().unwrap();
        write_binary_dir(dir.path());
        let ds = open(dir.path(), "").unwrap();
        let s = ds.shape().unwrap();
        assert_eq!((s.channels, s.height, s.width, s.len), (3, 32, 32, 10));
        assert_eq!(s.class_names, CLASSES.map(String::from).to_vec());
        assert_eq!(ds.labels(), &[1, 3, 2, 5, 3, 7, 4, 9, 5, 1]);
        // Image 3 is record 1 of batch 2: pixel k = (31 + k + 2) % 256, planes R, G, B.
        let (img, label) = pixels_of(&ds, 3);
        assert_eq!(label, 5);
        for k in [0, 1, 1024, 3071] {
            let want = ((31 + k + 2) % 256) as f32 / 127.5 - 1.0;
            assert!((img[k] - want).abs() < 1e-6, "{k}");
        }
        let test = open(dir.path(), "split = \"test\"").unwrap();
        assert_eq!(test.labels(), &[9, 1, 1]);
        assert_eq!(test.image(2)[0], (2 * 31 + 100) as u8);
    }

    #[test]
    fn reads_python_batches_of_every_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let p2 = fixture("cifar_p2.pickle");
        for i in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{i}")), &p2).unwrap();
        }
        std::fs::write(dir.path().join("test_batch"), fixture("cifar_p5.pickle")).unwrap();
        let ds = open(dir.path(), "").unwrap();
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.labels()[..4], [3, 8, 3, 8]);
        for k in 0..IMAGE_BYTES {
            assert_eq!(ds.image(0)[k], fixture_pixel(0, k));
            assert_eq!(ds.image(9)[k], fixture_pixel(1, k));
        }
        let test = open(dir.path(), "split = \"test\"").unwrap();
        assert_eq!(test.labels(), &[9]);
        assert!((0..IMAGE_BYTES).all(|k| test.image(0)[k] == fixture_pixel(0, k)));
        // Protocol 4 and the Python 2 layout of the original files.
        let (px, lb) = parse_python(&fixture("cifar_p4.pickle"), "p4").unwrap();
        assert_eq!(lb, vec![9]);
        assert!((0..IMAGE_BYTES).all(|k| px[k] == fixture_pixel(0, k)));
        let data: Vec<u8> = (0..3 * IMAGE_BYTES).map(|i| (i * 13 % 256) as u8).collect();
        let py2 = crate::pickle::tests::py2_batch(3, &data, &[0, 6, 2]);
        let (px, lb) = parse_python(&py2, "py2").unwrap();
        assert_eq!((px, lb), (data, vec![0, 6, 2]));
    }

    fn tar_gz(path: &Path, files: &[(String, Vec<u8>)]) {
        let gz =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }

    #[test]
    fn reads_archives_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let p2 = fixture("cifar_p2.pickle");
        let mut files = vec![(
            "cifar-10-batches-py/readme.html".to_string(),
            b"hi".to_vec(),
        )];
        files.push((
            "cifar-10-batches-py/test_batch".into(),
            fixture("cifar_p4.pickle"),
        ));
        for i in 1..=5 {
            files.push((format!("cifar-10-batches-py/data_batch_{i}"), p2.clone()));
        }
        let py = dir.path().join("cifar-10-python.tar.gz");
        tar_gz(&py, &files);
        let ds = open(&py, "").unwrap();
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.image(1)[5], fixture_pixel(1, 5));
        assert_eq!(open(&py, "split = \"test\"").unwrap().labels(), &[9]);

        let bin_dir = tempfile::tempdir().unwrap();
        write_binary_dir(bin_dir.path());
        let files: Vec<(String, Vec<u8>)> = ["data_batch_1", "data_batch_2", "data_batch_3"]
            .iter()
            .chain(&["data_batch_4", "data_batch_5", "test_batch"])
            .map(|b| {
                let name = format!("{b}.bin");
                (
                    format!("cifar-10-batches-bin/{name}"),
                    std::fs::read(bin_dir.path().join(&name)).unwrap(),
                )
            })
            .collect();
        let holder = tempfile::tempdir().unwrap();
        tar_gz(&holder.path().join("cifar-10-binary.tar.gz"), &files);
        // A directory holding the archive works too.
        let ds = open(holder.path(), "").unwrap();
        let from_dir = open(bin_dir.path(), "").unwrap();
        assert_eq!(ds.labels(), from_dir.labels());
        assert_eq!(ds.image(7), from_dir.image(7));

        // An archive missing a batch names it.
        let short = dir.path().join("short.tar.gz");
        tar_gz(&short, &files[..4]);
        let e = open(&short, "").unwrap_err();
        assert!(
            e.contains("short.tar.gz") && e.contains("data_batch_5"),
            "{e}"
        );
        let junk = dir.path().join("junk.tar.gz");
        std::fs::write(&junk, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        assert!(open(&junk, "").unwrap_err().contains("junk.tar.gz"));
    }

    #[test]
    fn class_selection_relabels() {
        let dir = tempfile::tempdir().unwrap();
        write_binary_dir(dir.path());
        // Labels are [1, 3, 2, 5, 3, 7, 4, 9, 5, 1].
        let ds = open(dir.path(), "classes = [\"automobile\"]").unwrap();
        assert_eq!(ds.labels(), &[0, 0]);
        assert_eq!(ds.shape().unwrap().class_names, vec!["automobile"]);
        let all = open(dir.path(), "").unwrap();
        assert_eq!(ds.image(1), all.image(9));
        let ds = open(dir.path(), "classes = [\"truck\", \"cat\"]").unwrap();
        assert_eq!(ds.labels(), &[1, 1, 0]);
        let e = open(dir.path(), "classes = [\"car\"]").unwrap_err();
        assert!(
            e.contains("unknown class `car`") && e.contains("automobile"),
            "{e}"
        );
        let e = open(dir.path(), "classes = [\"airplane\"]").unwrap_err();
        assert!(e.contains("no images"), "{e}");
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_binary_dir(dir.path());
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(e.contains("missing data_batch_3.bin"), "{e}");
        // Test split still complete.
        assert!(open(dir.path(), "split = \"test\"").is_ok());

        std::fs::write(dir.path().join("data_batch_3.bin"), vec![0u8; 3073 * 2 + 5]).unwrap();
        let e = open(dir.path(), "").unwrap_err();
        assert!(
            e.contains("data_batch_3.bin") && e.contains("3073-byte records"),
            "{e}"
        );
        let mut bad = binary_batch(&[0, 12], 0);
        bad.truncate(3073 * 2);
        std::fs::write(dir.path().join("data_batch_3.bin"), bad).unwrap();
        assert!(open(dir.path(), "").unwrap_err().contains("label 12"));

        let py = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            std::fs::write(py.path().join(format!("data_batch_{i}")), b"not a pickle").unwrap();
        }
        let e = open(py.path(), "").unwrap_err();
        assert!(
            e.contains("data_batch_1: not a CIFAR-10 python batch"),
            "{e}"
        );
        // A pickled dict of the wrong kind (CIFAR-100 style keys).
        let c100 = b"\x80\x02}q\x00(X\x0b\x00\x00\x00fine_labels]X\x04\x00\x00\x00data]u.";
        let e = parse_python(c100, "f").unwrap_err();
        assert!(e.contains("b'data' is a list"), "{e}");
        let e = parse_python(b"\x80\x02]q\x00.", "f").unwrap_err();
        assert!(e.contains("holds a list"), "{e}");

        let e = open(&dir.path().join("nope"), "").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = open(empty.path(), "").unwrap_err();
        assert!(
            e.contains("no complete CIFAR-10 train split") && e.contains("(empty)"),
            "{e}"
        );
        let e = open(empty.path(), "split = \"val\"").unwrap_err();
        assert!(e.contains("unknown variant `val`"), "{e}");
        let e = load(
            &Params::with_defaults("split = \"test\"", super::PARAMS).unwrap(),
            0,
        )
        .unwrap_err();
        assert!(e.contains("missing field `path`"), "{e}");
    }

    #[test]
    fn fill_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        write_binary_dir(dir.path());
        let ds = open(dir.path(), "").unwrap();
        let mut a = vec![0f32; 3 * IMAGE_BYTES];
        let mut b = vec![0f32; 3 * IMAGE_BYTES];
        let (mut la, mut lb) = (vec![0i64; 3], vec![0i64; 3]);
        ds.fill(&[4, 0, 4], &mut a, &mut la).unwrap();
        ds.fill(&[4, 0, 4], &mut b, &mut lb).unwrap();
        assert_eq!((a.clone(), la.clone()), (b, lb));
        assert_eq!(a[..IMAGE_BYTES], a[2 * IMAGE_BYTES..]);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
