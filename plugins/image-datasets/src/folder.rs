//! ImageNet-style class folders: `path/<class>/**/<image>.{png,jpg,jpeg}`, as a directory or
//! as a `.tar` (optionally gzipped) holding that tree (one top-level folder such as `train/` is
//! looked through, so the CIFAR-10 JPEG copy's `train.tar` reads as it is).
//!
//! Classes are the sub-folders of `path` (hidden ones skipped), sorted by name; the images of
//! a class are its PNG and JPEG files at any depth, sorted by relative path (other files are
//! ignored). Every image is decoded at construction, converted to RGB (`channels = 3`, alpha
//! dropped) or grey-scale (`channels = 1`, Rec. 709 luma), centre-cropped to a square and
//! resized to `resolution`² — by area averaging when shrinking (each output pixel is the mean
//! of the source area it covers) and bilinear interpolation when enlarging — then rounded to
//! 8 bits, as EDM's `dataset_tool` stores its images.
//!
//! Decoded images are cached (see [`crate::cache`]): 50,000 CIFAR-10 JPEGs take ~12 s to decode
//! on two cores and ~0.2 s to read back.

use std::path::{Path, PathBuf};

use memlab_plugin_api::prelude::*;

use std::io::Read;

use crate::store::{ImageStore, class_order, gunzip, is_gzip, listing, read_file};

pub const PARAMS: &[Param] = &[
    param(
        "path",
        "string",
        "",
        "directory with one sub-folder of PNG/JPEG images per class, or a .tar(.gz) of one",
    ),
    param(
        "resolution",
        "int",
        "",
        "height and width images are cropped and resized to",
    ),
    param("channels", "int", "3", "3 for RGB, 1 for grey-scale"),
    param(
        "classes",
        "[string]",
        "(all folders)",
        "class folders to keep, relabelled 0..k in this order",
    ),
];

#[derive(Deserialize, Debug)]
#[serde(crate = "memlab_plugin_api::serde", deny_unknown_fields)]
struct FolderParams {
    path: String,
    resolution: usize,
    channels: usize,
    classes: Option<Vec<String>>,
}

/// Builds the dataset from its parameters.
pub fn load(params: &Params, _seed: u64) -> PResult<ImageStore> {
    let p: FolderParams = params.parse()?;
    if p.resolution == 0 {
        return Err("resolution must be at least 1".into());
    }
    if p.channels != 1 && p.channels != 3 {
        return Err(format!(
            "channels must be 1 (grey-scale) or 3 (RGB), got {}",
            p.channels
        ));
    }
    let root = Path::new(&p.path);
    let source = if root.is_dir() {
        Source::Dir(root.to_path_buf())
    } else if root.is_file() {
        Source::Tar(root.to_path_buf())
    } else {
        return Err(format!(
            "image folder {} does not exist (expected a directory of class folders or a .tar \
             of one)",
            root.display()
        ));
    };
    // The cache key: what is read (every image's name, size and modification time, or the
    // archive's), how it is decoded, and this reader's version.
    let mut key = format!(
        "image-folder v1\n{}\nchannels {} resolution {}\nclasses {:?}\n",
        root.canonicalize()
            .unwrap_or_else(|_| root.to_path_buf())
            .display(),
        p.channels,
        p.resolution,
        p.classes
    );
    let listed = match &source {
        Source::Dir(d) => {
            let l = dir_entries(d)?;
            for f in &l.1 {
                key.push_str(&format!("{}\t{}\t{}", f.class, f.rel, f.stamp));
            }
            Some(l)
        }
        Source::Tar(t) => {
            key.push_str(&crate::cache::stamp(t)?);
            None
        }
    };
    let (channels, res) = (p.channels, p.resolution);
    let (chosen, labels, pixels) = crate::cache::cached(&key, channels * res * res, || {
        let (all, entries) = match listed {
            Some(l) => l,
            None => match &source {
                Source::Tar(t) => tar_entries(t)?,
                Source::Dir(d) => dir_entries(d)?,
            },
        };
        let chosen: Vec<String> = match &p.classes {
            None => all.clone(),
            Some(wanted) => {
                class_order(&all, wanted)?;
                wanted.clone()
            }
        };
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (label, class) in chosen.iter().enumerate() {
            let mut found: Vec<&Entry> = entries.iter().filter(|e| &e.class == class).collect();
            if found.is_empty() {
                return Err(format!(
                    "class folder `{class}` of {} holds no PNG or JPEG images",
                    root.display()
                ));
            }
            found.sort_by(|a, b| a.rel.cmp(&b.rel));
            labels.extend(std::iter::repeat_n(label as i64, found.len()));
            files.extend(found);
        }
        let pixels = decode_all(&files, channels, res)?;
        Ok((chosen, labels, pixels))
    })?;
    ImageStore::new(channels, res, res, pixels, labels, chosen)
}

/// Where the class folders are.
enum Source {
    Dir(PathBuf),
    Tar(PathBuf),
}

/// One image: its class folder, its path below the class folder, how to read it.
struct Entry {
    class: String,
    rel: String,
    data: Blob,
    /// Size and modification time (files), for the cache key.
    stamp: String,
}

enum Blob {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Entry {
    fn describe(&self) -> String {
        match &self.data {
            Blob::File(p) => p.display().to_string(),
            Blob::Bytes(_) => format!("{}/{} in the archive", self.class, self.rel),
        }
    }
}

/// Class names and images of a directory of class folders.
fn dir_entries(root: &Path) -> PResult<(Vec<String>, Vec<Entry>)> {
    let all = class_dirs(root)?;
    if all.is_empty() {
        return Err(format!(
            "no class folders in {}: expected one sub-folder of PNG/JPEG images per class; it \
             holds: {}",
            root.display(),
            listing(root)
        ));
    }
    let mut entries = Vec::new();
    for class in &all {
        let dir = root.join(class);
        let mut found = Vec::new();
        collect_images(&dir, &mut found)?;
        for f in found {
            let rel = f
                .strip_prefix(&dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            entries.push(Entry {
                class: class.clone(),
                rel,
                stamp: crate::cache::stamp(&f)?,
                data: Blob::File(f),
            });
        }
    }
    Ok((all, entries))
}

/// Class names and images of a `.tar` (or `.tar.gz`) of class folders, read in one pass.
fn tar_entries(path: &Path) -> PResult<(Vec<String>, Vec<Entry>)> {
    let bytes = read_file(path)?;
    let what = path.display().to_string();
    let bytes = if is_gzip(&bytes) {
        gunzip(&bytes, &what)?
    } else {
        bytes
    };
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut images: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let corrupt =
        |e: std::io::Error| format!("{what} is not a readable tar archive of class folders: {e}");
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(corrupt)?.into_owned();
        let parts: Vec<String> = name
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.iter().any(|p| p.starts_with('.')) || !is_image(&name) {
            continue;
        }
        let mut data = Vec::with_capacity(entry.header().size().unwrap_or(0) as usize);
        entry.read_to_end(&mut data).map_err(corrupt)?;
        images.push((parts, data));
    }
    if images.is_empty() {
        return Err(format!("{what} holds no PNG or JPEG images"));
    }
    // One top-level folder shared by every image (`train/<class>/…`) is looked through.
    let first = images[0].0[0].clone();
    let skip = usize::from(images.iter().all(|(p, _)| p.len() >= 3 && p[0] == first));
    let mut classes = std::collections::BTreeSet::new();
    let mut entries = Vec::with_capacity(images.len());
    for (parts, data) in images {
        if parts.len() < skip + 2 {
            return Err(format!(
                "{what}: {} is not inside a class folder (expected <class>/<image> entries)",
                parts.join("/")
            ));
        }
        classes.insert(parts[skip].clone());
        entries.push(Entry {
            class: parts[skip].clone(),
            rel: parts[skip + 1..].join("/"),
            stamp: String::new(),
            data: Blob::Bytes(data),
        });
    }
    Ok((classes.into_iter().collect(), entries))
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn read_dir(dir: &Path) -> PResult<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        if !hidden(&entry.file_name()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted names of the non-hidden sub-folders of `root`.
fn class_dirs(root: &Path) -> PResult<Vec<String>> {
    let mut names = Vec::new();
    for p in read_dir(root)? {
        if p.is_dir() {
            let name = p.file_name().unwrap_or_default();
            let name = name
                .to_str()
                .ok_or_else(|| format!("class folder name {} is not UTF-8", p.display()))?;
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Appends the PNG/JPEG files under `dir` (recursively) to `out`.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> PResult<()> {
    for p in read_dir(dir)? {
        if p.is_dir() {
            collect_images(&p, out)?;
        } else if p.is_file() && is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Decodes and resizes every image, in parallel, into one CHW byte buffer in order.
fn decode_all(files: &[&Entry], channels: usize, res: usize) -> PResult<Vec<u8>> {
    let per = channels * res * res;
    let mut pixels = vec![0u8; files.len() * per];
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let results: Vec<PResult<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .zip(pixels.chunks_mut(chunk * per))
            .map(|(fs, out)| {
                s.spawn(move || {
                    for (f, o) in fs.iter().zip(out.chunks_mut(per)) {
                        let img = match &f.data {
                            Blob::File(p) => load_image(p, channels, res)?,
                            Blob::Bytes(b) => decode_bytes(b, channels, res)
                                .map_err(|e| format!("{}: {e}", f.describe()))?,
                        };
                        o.copy_from_slice(&img);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("an image decoder thread panicked".into()))
            })
            .collect()
    });
    // Chunks are in order, so the first error is the first failing image's.
    results.into_iter().collect::<PResult<Vec<()>>>()?;
    Ok(pixels)
}

/// Decodes an image held in memory (format guessed from its bytes) to CHW bytes.
fn decode_bytes(bytes: &[u8], channels: usize, res: usize) -> PResult<Vec<u8>> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(to_chw(img, channels, res))
}

fn to_chw(img: image::DynamicImage, channels: usize, res: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let interleaved = if channels == 3 {
        img.into_rgb8().into_raw()
    } else {
        img.into_luma8().into_raw()
    };
    square_resize(&interleaved, w, h, channels, res)
}

/// Decodes one image and returns it as `channels × res × res` bytes (CHW).
pub fn load_image(path: &Path, channels: usize, res: usize) -> PResult<Vec<u8>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{}: cannot decode image: {e}", path.display()))?;
    Ok(to_chw(img, channels, res))
}

/// Centre-crops an interleaved `w × h × channels` image to a square and resizes it to
/// `res × res`, returning CHW bytes.
pub fn square_resize(src: &[u8], w: usize, h: usize, channels: usize, res: usize) -> Vec<u8> {
    let side = w.min(h);
    let (x0, y0) = ((w - side) / 2, (h - side) / 2);
    let wx = axis_weights(side, res);
    let wy = axis_weights(side, res);
    let mut out = vec![0u8; channels * res * res];
    let mut rows = vec![0f32; side * res];
    for c in 0..channels {
        // Horizontal pass over the cropped rows: rows[y][ox].
        for y in 0..side {
            let line = &src[((y0 + y) * w + x0) * channels..];
            for (ox, taps) in wx.iter().enumerate() {
                rows[y * res + ox] = taps
                    .iter()
                    .map(|&(i, t)| line[i * channels + c] as f32 * t)
                    .sum();
            }
        }
        // Vertical pass.
        for (oy, taps) in wy.iter().enumerate() {
            for ox in 0..res {
                let v: f32 = taps.iter().map(|&(i, t)| rows[i * res + ox] * t).sum();
                out[(c * res + oy) * res + ox] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// For each of `out_len` output pixels, the source pixels and weights (summing to 1) that
/// resample an axis of `in_len` pixels: area coverage when shrinking, linear interpolation
/// between pixel centres when enlarging.
fn axis_weights(in_len: usize, out_len: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = in_len as f64 / out_len as f64;
    (0..out_len)
        .map(|o| {
            if in_len >= out_len {
                let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut taps = Vec::new();
                let mut i = lo.floor() as usize;
                while (i as f64) < hi && i < in_len {
                    let cover = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                    if cover > 1e-9 {
                        taps.push((i, (cover / scale) as f32));
                    }
                    i += 1;
                }
                taps
            } else {
                let c = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (in_len - 1) as f64);
                let i = c.floor() as usize;
                let f = c - i as f64;
                if f < 1e-9 || i + 1 >= in_len {
                    vec![(i, 1.0)]
                } else {
                    vec![(i, (1.0 - f) as f32), (i + 1, f as f32)]
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, extra: &str) -> PResult<ImageStore> {
        let toml = format!("path = {:?}\n{extra}", dir.display().to_string());
        load(&Params::with_defaults(&toml, super::PARAMS).unwrap(), 0)
    }

    fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
            .save(path)
            .unwrap();
    }

    #[test]
    fn area_weights_average_exactly() {
        // 4 → 2: pairs; 3 → 2: thirds with a shared middle pixel; weights sum to 1.
        assert_eq!(
            axis_weights(4, 2),
            vec![vec![(0, 0.5), (1, 0.5)], vec![(2, 0.5), (3, 0.5)]]
        );
        let w = axis_weights(3, 2);
        assert_eq!(w[0].len(), 2);
        assert!((w[0][0].1 - 2.0 / 3.0).abs() < 1e-6 && (w[0][1].1 - 1.0 / 3.0).abs() < 1e-6);
        for (i, o) in [(7, 3), (32, 32), (5, 9), (100, 7)] {
            for taps in axis_weights(i, o) {
                let s: f32 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}→{o}: {taps:?}");
                assert!(taps.iter().all(|t| t.0 < i));
            }
        }
        // 2 → 4 enlarges bilinearly: 0, 0.25·a + 0.75·b ...
        let up = axis_weights(2, 4);
        assert_eq!(up[0], vec![(0, 1.0)]);
        assert_eq!(up[1], vec![(0, 0.75), (1, 0.25)]);
    }

    #[test]
    fn resize_averages_blocks_and_crops_centre() {
        // 6×4 RGB image: a 4×4 centre (columns 1..5) of 2×2 blocks, border columns 250.
        let (w, h) = (6, 4);
        let mut src = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let v = if x == 0 || x == 5 {
                    250
                } else {
                    ((x - 1) / 2 * 40 + y / 2 * 100 + (x + y) % 2 * 10) as u8
                };
                for c in 0..3 {
                    src[(y * w + x) * 3 + c] = v + c as u8;
                }
            }
        }
        let out = square_resize(&src, w, h, 3, 2);
        // Block (0,0) holds 0, 10, 10, 0 → 5; block (1,0): 45; block (0,1): 105; (1,1): 145.
        assert_eq!(&out[..4], &[5, 45, 105, 145]);
        assert_eq!(&out[4..8], &[6, 46, 106, 146]);
        // Same size is the identity (after the crop).
        let same = square_resize(&src, w, h, 3, 4);
        assert_eq!(same[0], src[3]);
    }

    #[test]
    fn reads_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Class "cat": two 8×8 images; "ant": one 16×8 image (cropped); "dog/nested": one JPEG.
        save_rgb(&root.join("cat/b.png"), 8, 8, |_, _| [200, 100, 0]);
        save_rgb(&root.join("cat/a.png"), 8, 8, |x, _| {
            if x < 4 { [0, 0, 0] } else { [255, 255, 255] }
        });
        save_rgb(&root.join("ant/x.PNG"), 16, 8, |x, _| {
            if (4..12).contains(&x) {
                [10, 20, 30]
            } else {
                [250, 250, 250]
            }
        });
        save_rgb(&root.join("dog/nested/z.jpg"), 8, 8, |_, _| [128, 128, 128]);
        std::fs::write(root.join("cat/notes.txt"), "not an image").unwrap();
        std::fs::write(root.join("README"), "top-level file").unwrap();
        std::fs::create_dir_all(root.join(".cache/x")).unwrap();

        let ds = open(root, "resolution = 4").unwrap();
        let s = ds.shape().unwrap();
        assert_eq!((s.channels, s.height, s.width, s.len), (3, 4, 4, 4));
        assert_eq!(s.class_names, vec!["ant", "cat", "dog"]);
        assert_eq!(ds.labels(), &[0, 1, 1, 2]);
        // ant: centre crop keeps only the uniform middle.
        assert!(ds.image(0)[..16].iter().all(|&v| v == 10));
        assert!(ds.image(0)[32..].iter().all(|&v| v == 30));
        // cat/a.png (sorted first): left half black, right half white, in every channel.
        let a = ds.image(1);
        assert_eq!(&a[..4], &[0, 0, 255, 255]);
        assert_eq!(&a[16..20], &[0, 0, 255, 255]);
        assert!(ds.image(2)[..16].iter().all(|&v| v == 200));
        // The JPEG decodes to (about) mid grey.
        assert!(
            ds.image(3).iter().all(|&v| v.abs_diff(128) <= 2),
            "{:?}",
            ds.image(3)
        );

        let mut img = vec![0f32; 48];
        let mut lab = [0i64];
        ds.fill(&[1], &mut img, &mut lab).unwrap();
        assert_eq!((img[0], img[3], lab[0]), (-1.0, 1.0, 1));

        let grey = open(root, "resolution = 2\nchannels = 1\nclasses = [\"cat\"]").unwrap();
        let s = grey.shape().unwrap();
        assert_eq!(
            (s.channels, s.len, s.class_names),
            (1, 2, vec!["cat".to_string()])
        );
        assert_eq!(grey.image(0), &[0, 255, 0, 255]);
        // Rec. 709 luma of (200, 100, 0).
        assert!(grey.image(1)[0].abs_diff(114) <= 2, "{:?}", grey.image(1));

        // Upscaling a 2×2 checker to 4×4 stays within range and keeps the corners.
        let up = tempfile::tempdir().unwrap();
        save_rgb(&up.path().join("k/c.png"), 2, 2, |x, y| {
            if (x + y) % 2 == 0 { [0; 3] } else { [200; 3] }
        });
        let big = open(up.path(), "resolution = 4\nchannels = 1").unwrap();
        let b = big.image(0);
        assert_eq!((b[0], b[3], b[12], b[15]), (0, 200, 200, 0));
        assert_eq!(b[1], 50);
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = open(root, "resolution = 4").unwrap_err();
        assert!(e.contains("no class folders"), "{e}");
        save_rgb(&root.join("cat/a.png"), 4, 4, |_, _| [1, 2, 3]);
        std::fs::create_dir_all(root.join("dog")).unwrap();
        std::fs::write(root.join("dog/readme.txt"), "x").unwrap();
        let e = open(root, "resolution = 4").unwrap_err();
        assert!(e.contains("dog") && e.contains("no PNG or JPEG"), "{e}");
        std::fs::write(root.join("dog/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = open(root, "resolution = 4").unwrap_err();
        assert!(e.contains("broken.png: cannot decode"), "{e}");
        let e = open(root, "resolution = 4\nclasses = [\"bird\"]").unwrap_err();
        assert!(
            e.contains("unknown class `bird`") && e.contains("cat, dog"),
            "{e}"
        );
        assert!(open(root, "resolution = 4\nclasses = [\"cat\"]").is_ok());
        let e = open(root, "").unwrap_err();
        assert!(e.contains("missing field `resolution`"), "{e}");
        let e = open(root, "resolution = 4\nchannels = 2").unwrap_err();
        assert!(e.contains("channels must be 1"), "{e}");
        let e = open(&root.join("nope"), "resolution = 4").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    /// Appends `dir` (a tree of class folders) to a tar under `prefix`.
    fn tar_of(dir: &Path, prefix: &str, gz: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(prefix, dir).unwrap();
        let raw = b.into_inner().unwrap();
        if !gz {
            return raw;
        }
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_tar_of_class_folders_reads_like_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("imgs");
        save_rgb(&root.join("cat/a.png"), 4, 4, |x, y| {
            [10 * x as u8, 20 * y as u8, 7]
        });
        save_rgb(&root.join("cat/sub/b.png"), 4, 4, |_, _| [200, 100, 0]);
        save_rgb(&root.join("dog/c.png"), 4, 4, |x, _| [0, 30 * x as u8, 90]);
        std::fs::write(root.join("dog/notes.txt"), "ignored").unwrap();
        let want = open(&root, "resolution = 4").unwrap();
        for (prefix, gz, name) in [
            ("train", false, "a.tar"),
            ("", false, "b.tar"),
            ("x", true, "c.tar.gz"),
        ] {
            let t = tmp.path().join(name);
            std::fs::write(&t, tar_of(&root, prefix, gz)).unwrap();
            let got = open(&t, "resolution = 4").unwrap();
            assert_eq!(got.labels(), want.labels(), "{name}");
            for i in 0..want.len() {
                assert_eq!(got.image(i), want.image(i), "{name} image {i}");
            }
            let dogs = open(&t, "resolution = 4\nclasses = [\"dog\"]").unwrap();
            assert_eq!(dogs.len(), 1);
        }
        // Images outside class folders, and a file that is no tar.
        let flat = tmp.path().join("flat");
        save_rgb(&flat.join("a.png"), 2, 2, |_, _| [1, 2, 3]);
        let t = tmp.path().join("flat.tar");
        std::fs::write(&t, tar_of(&flat, "", false)).unwrap();
        let e = open(&t, "resolution = 2").unwrap_err();
        assert!(e.contains("not inside a class folder"), "{e}");
        let junk = tmp.path().join("junk.tar");
        std::fs::write(&junk, vec![7u8; 2000]).unwrap();
        let e = open(&junk, "resolution = 2").unwrap_err();
        assert!(e.contains("junk.tar"), "{e}");
    }
}
