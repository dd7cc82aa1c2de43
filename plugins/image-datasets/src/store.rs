//! What the readers share: an in-memory store of 8-bit images, class selection, file helpers.

use std::io::Read;
use std::path::Path;

use memlab_plugin_api::prelude::*;

/// Which part of a dataset to load.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(crate = "memlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Split {
    /// The training images.
    #[default]
    Train,
    /// The test images.
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// 8-bit images held in memory (CHW per image, concatenated) with their labels.
#[derive(Debug, Clone)]
pub struct ImageStore {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    labels: Vec<i64>,
    class_names: Vec<String>,
}

impl ImageStore {
    /// A store of `labels.len()` images of `channels × height × width` bytes each; labels must
    /// lie in `0..class_names.len()`.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Vec<i64>,
        class_names: Vec<String>,
    ) -> PResult<ImageStore> {
        let per = channels * height * width;
        if per == 0 {
            return Err(format!("empty image shape {channels}×{height}×{width}"));
        }
        if pixels.len() != labels.len() * per {
            return Err(format!(
                "{} pixel bytes is not {} images of {per}",
                pixels.len(),
                labels.len()
            ));
        }
        if labels.is_empty() {
            return Err("the dataset holds no images".into());
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= class_names.len())
        {
            return Err(format!(
                "label {l} outside 0..{} (classes: {})",
                class_names.len(),
                class_names.join(", ")
            ));
        }
        Ok(ImageStore {
            channels,
            height,
            width,
            pixels,
            labels,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the store is empty (never, once constructed).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Raw bytes of image `i` (CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Labels of all images.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Keeps only the images of classes `wanted` (names, in the new label order), relabelled
    /// `0..wanted.len()`; `None` keeps everything.
    pub fn select(self, wanted: Option<&[String]>) -> PResult<ImageStore> {
        let Some(wanted) = wanted else {
            return Ok(self);
        };
        let order = class_order(&self.class_names, wanted)?;
        let mut remap = vec![None; self.class_names.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = Some(new as i64);
        }
        let per = self.channels * self.height * self.width;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(new) = remap[l as usize] {
                pixels.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
                labels.push(new);
            }
        }
        if labels.is_empty() {
            return Err(format!(
                "no images of the selected classes ({})",
                wanted.join(", ")
            ));
        }
        ImageStore::new(
            self.channels,
            self.height,
            self.width,
            pixels,
            labels,
            wanted.to_vec(),
        )
    }
}

/// Indices into `all` of the classes named in `wanted`, in that order. Errors name the unknown
/// class and list the valid ones; duplicates and an empty list are refused.
pub fn class_order(all: &[String], wanted: &[String]) -> PResult<Vec<usize>> {
    if wanted.is_empty() {
        return Err(format!(
            "`classes` is empty; leave it out to keep all classes ({})",
            all.join(", ")
        ));
    }
    let mut order = Vec::with_capacity(wanted.len());
    for w in wanted {
        let Some(i) = all.iter().position(|n| n == w) else {
            return Err(format!(
                "unknown class `{w}` in `classes`; valid classes: {}",
                all.join(", ")
            ));
        };
        if order.contains(&i) {
            return Err(format!("class `{w}` is listed twice in `classes`"));
        }
        order.push(i);
    }
    Ok(order)
}

impl Dataset for ImageStore {
    fn shape(&self) -> PResult<DatasetShape> {
        Ok(DatasetShape {
            channels: self.channels,
            height: self.height,
            width: self.width,
            len: self.labels.len() as u64,
            class_names: self.class_names.clone(),
        })
    }

    fn fill(&self, indices: &[u64], images: &mut [f32], labels: &mut [i64]) -> PResult<()> {
        let per = self.channels * self.height * self.width;
        if images.len() != indices.len() * per || labels.len() != indices.len() {
            return Err(format!(
                "buffers sized for {} images expected",
                indices.len()
            ));
        }
        for (k, &i) in indices.iter().enumerate() {
            if i >= self.labels.len() as u64 {
                return Err(format!(
                    "index {i} out of range ({} images)",
                    self.labels.len()
                ));
            }
            let src = self.image(i as usize);
            for (d, &s) in images[k * per..(k + 1) * per].iter_mut().zip(src) {
                *d = s as f32 / 127.5 - 1.0;
            }
            labels[k] = self.labels[i as usize];
        }
        Ok(())
    }
}

/// Whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip data (all members); `what` names the source in errors.
pub fn gunzip(bytes: &[u8], what: &str) -> PResult<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("{what}: corrupt gzip data: {e}"))?;
    Ok(out)
}

/// Reads a whole file, with an error naming it.
pub fn read_file(path: &Path) -> PResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Names of the entries of directory `dir`, sorted (for error messages).
pub fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return "(unreadable)".into(),
    };
    names.sort();
    if names.is_empty() {
        return "(empty)".into();
    }
    if names.len() > 12 {
        let more = names.len() - 12;
        names.truncate(12);
        names.push(format!("… {more} more"));
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn store() -> ImageStore {
        // Three 1×1×2 images: labels 0, 1, 2.
        ImageStore::new(
            1,
            1,
            2,
            vec![0, 255, 10, 20, 30, 40],
            vec![0, 1, 2],
            names(&["a", "b", "c"]),
        )
        .unwrap()
    }

    #[test]
    fn fill_maps_bytes_to_unit_range() {
        let s = store();
        let mut img = vec![0f32; 4];
        let mut lab = vec![0i64; 2];
        s.fill(&[0, 2], &mut img, &mut lab).unwrap();
        assert_eq!(img[0], -1.0);
        assert_eq!(img[1], 1.0);
        assert!((img[2] - (30.0 / 127.5 - 1.0)).abs() < 1e-7);
        assert_eq!(lab, vec![0, 2]);
        let e = s.fill(&[3], &mut img[..2], &mut lab[..1]).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(s.fill(&[0], &mut img, &mut lab).is_err());
    }

    #[test]
    fn select_relabels_in_given_order() {
        let s = store().select(Some(&names(&["c", "a"]))).unwrap();
        assert_eq!(s.labels(), &[1, 0]);
        assert_eq!(s.image(0), &[0, 255]);
        assert_eq!(s.image(1), &[30, 40]);
        assert_eq!(s.shape().unwrap().class_names, names(&["c", "a"]));
        let e = store().select(Some(&names(&["car"]))).unwrap_err();
        assert!(
            e.contains("unknown class `car`") && e.contains("a, b, c"),
            "{e}"
        );
        assert!(store().select(Some(&names(&["a", "a"]))).is_err());
        assert!(store().select(Some(&[])).is_err());
    }

    #[test]
    fn new_checks_sizes_and_labels() {
        assert!(ImageStore::new(1, 1, 2, vec![0; 5], vec![0, 0, 0], names(&["x"])).is_err());
        let e = ImageStore::new(1, 1, 1, vec![0], vec![3], names(&["x"])).unwrap_err();
        assert!(e.contains("label 3"), "{e}");
        assert!(ImageStore::new(1, 1, 1, vec![], vec![], names(&["x"])).is_err());
    }

    #[test]
    fn gzip_round_trip() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert!(is_gzip(&gz));
        assert_eq!(gunzip(&gz, "x").unwrap(), b"hello");
        let e = gunzip(&gz[..gz.len() - 6], "file.gz").unwrap_err();
        assert!(e.contains("file.gz: corrupt gzip"), "{e}");
    }
}
