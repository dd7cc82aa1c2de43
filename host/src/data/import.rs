//! Local import: what `memlab data fetch NAME --from PATH [--dest DIR]` runs on a machine
//! without internet access, from archives the user already has. What is accepted comes from
//! the dataset plugin's declaration ([`DatasetSpec`]), not from the host:
//!
//! - the published files (for the shipped datasets `cifar-10-python.tar.gz`, the four MNIST
//!   `*-ubyte.gz`), given as a file or as a directory holding them; each is verified against
//!   its published md5 while it is copied into `dest` under its official name;
//! - when the dataset declares a class-folder layout (CIFAR-10: its ten classes, 5,000 training
//!   and 1,000 test images per class), images in class folders: a plain `.tar` of them (one
//!   top-level folder such as `train/` is looked through), a directory of them, or a directory
//!   holding `<split>.tar` or `<split>/` per split. The layout must be exactly the declared
//!   classes with one split's count of images each. A `.tar` is copied as it is, a directory is
//!   packed into a tar (sorted entries, fixed times and modes); either lands in
//!   `dest/<layout dir>/<split>.tar` (`cifar10-jpeg/train.tar`), beside a `SHA256SUMS` file for
//!   them, and the `image-folder` dataset plugin reads it as it is.
//!
//! Every source is inspected before anything is copied, and every file is written to a
//! temporary file beside its target and renamed into place once complete and verified: an
//! error leaves no partial file under a real name. The source is only ever read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::data::fetch::{ClassFolderLayout, DatasetSpec, OfficialFile};

/// What an import put in place.
#[derive(Debug)]
pub struct Imported {
    /// Files now in `dest`, in a fixed order (`SHA256SUMS` last when written).
    pub files: Vec<PathBuf>,
    /// How to point a config at them (printed by the CLI).
    pub note: String,
}

/// Imports the dataset `ds` from the local file or directory `from` into `dest` (created if
/// missing). Errors say what was found at `from` and what is accepted.
pub fn import(ds: &DatasetSpec, from: &Path, dest: &Path) -> Result<Imported> {
    if !from.exists() {
        bail!("{} does not exist ({})", from.display(), accepted(ds));
    }
    let plan = plan(ds, from)?;
    std::fs::create_dir_all(dest)
        .with_context(|| format!("cannot create destination directory {}", dest.display()))?;
    match plan {
        Plan::Official(list) => {
            let mut files = Vec::new();
            for (src, f) in list {
                files.push(copy_official(&src, f, dest)?);
            }
            let mut note = format!("{}\ndestination: {}", ds.usage, dest.display());
            let missing: Vec<&str> = ds
                .files
                .iter()
                .filter(|f| !dest.join(&f.name).is_file())
                .map(|f| f.name.as_str())
                .collect();
            if !missing.is_empty() {
                note.push_str(&format!(
                    "\nnot present in {} (a split that needs them will not load): {}",
                    dest.display(),
                    missing.join(", ")
                ));
            }
            Ok(Imported { files, note })
        }
        Plan::Splits(layout, list) => {
            let dir = dest.join(&layout.dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut sums = BTreeMap::new();
            let mut files = Vec::new();
            for (split, src) in list {
                let target = dir.join(format!("{split}.tar"));
                let digest = match &src {
                    SplitSource::Tar(t) => copy_atomic(t, &target, |_| Ok(()), Sha256::new())?,
                    SplitSource::Dir(d, images) => pack_atomic(d, images, &split, &target)?,
                };
                sums.insert(split.clone(), digest);
                files.push(target);
            }
            // Splits imported earlier stay listed.
            for (split, _) in &layout.splits {
                let t = dir.join(format!("{split}.tar"));
                if !sums.contains_key(split) && t.is_file() {
                    let mut f =
                        File::open(&t).with_context(|| format!("cannot read {}", t.display()))?;
                    sums.insert(split.clone(), hash_reader(&mut f, Sha256::new(), &t)?);
                }
            }
            let text: String = sums
                .iter()
                .map(|(s, h)| format!("{h}  {s}.tar\n"))
                .collect();
            let sums_path = dir.join("SHA256SUMS");
            crate::io::output::write_atomic(&sums_path, text.as_bytes())?;
            files.push(sums_path);
            let mut note = String::from(
                "the image-folder dataset plugin reads these tars as they are; in a config \
                 (relative paths resolve from the working directory):",
            );
            for split in sums.keys() {
                note.push_str(&format!(
                    "\n\n# the {split} split\n[dataset]\nname = \"image-folder\"\nparams = {{ path = {:?}, resolution = 32 }}",
                    dir.join(format!("{split}.tar")).display().to_string()
                ));
            }
            Ok(Imported { files, note })
        }
    }
}

/// What `--from` accepts for `ds`, for error messages.
fn accepted(ds: &DatasetSpec) -> String {
    let names: Vec<&str> = ds.files.iter().map(|f| f.name.as_str()).collect();
    let mut s = format!(
        "accepted: the official file(s) {} (or a directory holding them)",
        names.join(", ")
    );
    if let Some(l) = &ds.class_folders {
        let sizes: Vec<String> = l.splits.iter().map(|(s, n)| format!("{n} ({s})")).collect();
        s.push_str(&format!(
            ", or {} images in class folders — a .tar of them, a directory of them, or a \
             directory holding {} — with exactly the classes {} and {} PNG/JPEG images each",
            ds.name,
            l.splits
                .iter()
                .map(|(s, _)| format!("{s}.tar or {s}/"))
                .collect::<Vec<_>>()
                .join(", "),
            l.classes.join(" "),
            sizes.join(" or ")
        ));
    }
    s
}

/// What will be copied.
enum Plan<'a> {
    /// Official files: (source, declared file).
    Official(Vec<(PathBuf, &'a OfficialFile)>),
    /// Class-folder splits of the layout: (split name, source).
    Splits(&'a ClassFolderLayout, Vec<(String, SplitSource)>),
}

enum SplitSource {
    Tar(PathBuf),
    /// A directory of class folders and its images (class, path), sorted.
    Dir(PathBuf, Vec<(String, PathBuf)>),
}

/// Inspects `from` and decides what to copy; nothing is written.
fn plan<'a>(ds: &'a DatasetSpec, from: &Path) -> Result<Plan<'a>> {
    let dataset = &ds.name;
    let layout = ds.class_folders.as_ref();
    let by_name = |name: &str| ds.files.iter().find(|f| f.name == name);
    if from.is_file() {
        let name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(f) = by_name(&name) {
            return Ok(Plan::Official(vec![(from.to_path_buf(), f)]));
        }
        if let Some(l) = layout
            && is_tar(from)?
        {
            let split = tar_split(from, l)?;
            return Ok(Plan::Splits(
                l,
                vec![(split, SplitSource::Tar(from.to_path_buf()))],
            ));
        }
        bail!(
            "{} is neither an official {dataset} file (by name) nor {}; {}",
            from.display(),
            if layout.is_some() {
                "a tar archive"
            } else {
                "a directory"
            },
            accepted(ds)
        );
    }
    let entries = list_dir(from)?;
    let found: Vec<(PathBuf, &OfficialFile)> = ds
        .files
        .iter()
        .filter(|f| from.join(&f.name).is_file())
        .map(|f| (from.join(&f.name), f))
        .collect();
    if !found.is_empty() {
        return Ok(Plan::Official(found));
    }
    if let Some(l) = layout {
        let mut list = Vec::new();
        for (split, _) in &l.splits {
            let t = from.join(format!("{split}.tar"));
            let d = from.join(split);
            if t.is_file() {
                let got = tar_split(&t, l)?;
                if got != *split {
                    bail!(
                        "{} holds the {got} split's image count, not the {split} split's",
                        t.display()
                    );
                }
                list.push((split.clone(), SplitSource::Tar(t)));
            } else if d.is_dir() && !class_dirs(&d)?.is_empty() {
                let (got, images) = dir_split(&d, l)?;
                if got != *split {
                    bail!(
                        "{} holds the {got} split's image count, not the {split} split's",
                        d.display()
                    );
                }
                list.push((split.clone(), SplitSource::Dir(d, images)));
            }
        }
        if !list.is_empty() {
            return Ok(Plan::Splits(l, list));
        }
        if class_dirs(from)?.iter().any(|c| l.classes.contains(c)) {
            let (split, images) = dir_split(from, l)?;
            return Ok(Plan::Splits(
                l,
                vec![(split, SplitSource::Dir(from.to_path_buf(), images))],
            ));
        }
    }
    bail!(
        "nothing to import from the directory {}: it holds {}; {}",
        from.display(),
        if entries.is_empty() {
            "nothing".to_string()
        } else {
            entries.join(", ")
        },
        accepted(ds)
    )
}

/// Sorted names in `dir` (directories with a trailing `/`), at most 20 then a count.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let slash = if e.path().is_dir() { "/" } else { "" };
        names.push(format!("{}{slash}", e.file_name().to_string_lossy()));
    }
    names.sort();
    if names.len() > 20 {
        let more = names.len() - 20;
        names.truncate(20);
        names.push(format!("… and {more} more"));
    }
    Ok(names)
}

/// Whether `path` is a POSIX tar (the `ustar` magic at offset 257).
fn is_tar(path: &Path) -> Result<bool> {
    let mut head = [0u8; 262];
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", path.display()))),
        }
    }
    Ok(n == head.len() && &head[257..262] == b"ustar")
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e))
}

/// Images per class folder of a tar (hidden entries and non-images skipped; one top-level
/// folder shared by every image is looked through), then the split this layout is.
fn tar_split(path: &Path, layout: &ClassFolderLayout) -> Result<String> {
    let what = path.display().to_string();
    let bad = |e: std::io::Error| anyhow!("{what} is not a readable tar archive: {e}");
    let f = File::open(path).with_context(|| format!("cannot read {what}"))?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut images: Vec<Vec<String>> = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let parts: Vec<String> = entry
            .path()
            .map_err(bad)?
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.iter().any(|p| p.starts_with('.')) || !parts.last().is_some_and(|n| is_image(n)) {
            continue;
        }
        images.push(parts);
    }
    let skip = match images.first() {
        Some(first) => {
            let top = &first[0];
            usize::from(images.iter().all(|p| p.len() >= 3 && &p[0] == top))
        }
        None => 0,
    };
    let mut counts = BTreeMap::new();
    let mut loose = 0;
    for p in &images {
        if p.len() < skip + 2 {
            loose += 1;
        } else {
            *counts.entry(p[skip].clone()).or_insert(0usize) += 1;
        }
    }
    check_layout(&what, &counts, loose, layout)
}

/// Sorted, non-hidden sub-folders of `dir`.
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

/// Images of a directory of class folders (any depth, sorted), and the split it is.
fn dir_split(dir: &Path, layout: &ClassFolderLayout) -> Result<(String, Vec<(String, PathBuf)>)> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut es: Vec<_> = std::fs::read_dir(d)
            .with_context(|| format!("cannot read {}", d.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", d.display()))?;
        es.sort_by_key(|e| e.file_name());
        for e in es {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image(&name) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut counts = BTreeMap::new();
    let mut images = Vec::new();
    for class in class_dirs(dir)? {
        let mut found = Vec::new();
        walk(&dir.join(&class), &mut found)?;
        counts.insert(class.clone(), found.len());
        images.extend(found.into_iter().map(|p| (class.clone(), p)));
    }
    let loose = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file() && is_image(&e.file_name().to_string_lossy()))
        .count();
    let split = check_layout(&dir.display().to_string(), &counts, loose, layout)?;
    Ok((split, images))
}

/// Checks images-per-class `counts` (plus `loose` images outside any class folder) against
/// the declared layout and returns the split whose per-class count they match.
fn check_layout(
    what: &str,
    counts: &BTreeMap<String, usize>,
    loose: usize,
    layout: &ClassFolderLayout,
) -> Result<String> {
    let expected = || {
        let sizes: Vec<String> = layout
            .splits
            .iter()
            .map(|(s, n)| format!("{n} ({s})"))
            .collect();
        format!(
            "expected exactly the {} class folders ({}) with {} images each",
            layout.classes.len(),
            layout.classes.join(" "),
            sizes.join(" or ")
        )
    };
    let found = || {
        if counts.is_empty() {
            "no class folders with images".to_string()
        } else {
            let v: Vec<String> = counts.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            format!("{} class folder(s) — {}", counts.len(), v.join(", "))
        }
    };
    if loose > 0 {
        bail!(
            "{what}: {loose} image(s) outside any class folder; found {}; {}",
            found(),
            expected()
        );
    }
    let names: Vec<&str> = counts.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = layout.classes.iter().map(String::as_str).collect();
    want.sort_unstable();
    if names != want {
        bail!("{what}: found {}; {}", found(), expected());
    }
    let n = counts.values().next().copied().unwrap_or(0);
    match layout.splits.iter().find(|(_, per)| *per == n) {
        Some((split, _)) if counts.values().all(|&c| c == n) => Ok(split.clone()),
        _ => bail!("{what}: found {}; {}", found(), expected()),
    }
}

/// Copies the official file `src` into `dest` under its official name, verifying its md5.
fn copy_official(src: &Path, f: &OfficialFile, dest: &Path) -> Result<PathBuf> {
    let target = dest.join(&f.name);
    copy_atomic(
        src,
        &target,
        |actual| {
            if actual.eq_ignore_ascii_case(&f.md5) {
                Ok(())
            } else {
                Err(anyhow!(
                    "{} is not the official {}: expected md5 {}, got {actual} (nothing was copied)",
                    src.display(),
                    f.name,
                    f.md5
                ))
            }
        },
        Md5::new(),
    )?;
    Ok(target)
}

/// Whether `a` and `b` are the same file on disk.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copies `src` to `target` through a temporary file beside it, hashing with `hasher`;
/// `verify` sees the hex digest and may refuse it (the temporary file is then removed).
/// Returns the digest. A target that is the source itself is only hashed and verified.
fn copy_atomic<H: Digest + Write>(
    src: &Path,
    target: &Path,
    verify: impl FnOnce(&str) -> Result<()>,
    hasher: H,
) -> Result<String> {
    let mut input = File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    if same_file(src, target) {
        let digest = hash_reader(&mut input, hasher, src)?;
        verify(&digest)?;
        return Ok(digest);
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = crate::io::output::temp_builder()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let mut out = Tee {
        file: tmp.as_file_mut(),
        hasher,
    };
    std::io::copy(&mut input, &mut out)
        .with_context(|| format!("cannot copy {} to {}", src.display(), dir.display()))?;
    let digest = hex(out.hasher.finalize().as_slice());
    verify(&digest)?;
    persist(tmp, target)?;
    Ok(digest)
}

/// Packs `images` (class, file) of the directory `root` into a tar at `target` (through a
/// temporary file), as `split/<class>/<path below the class folder>`, with fixed mode and
/// time so the same images give the same bytes. Returns the tar's sha256.
fn pack_atomic(
    root: &Path,
    images: &[(String, PathBuf)],
    split: &str,
    target: &Path,
) -> Result<String> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = crate::io::output::temp_builder()
        .prefix(&format!(".{split}.tar."))
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file_mut()));
        for (class, path) in images {
            let rel = path
                .strip_prefix(root.join(class))
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(
                    &mut header,
                    format!("{split}/{class}/{rel}"),
                    bytes.as_slice(),
                )
                .with_context(|| format!("cannot add {} to the tar", path.display()))?;
        }
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .with_context(|| format!("cannot write the tar in {}", dir.display()))?;
    }
    let mut f = File::open(tmp.path()).context("cannot read back the packed tar")?;
    let digest = hash_reader(&mut f, Sha256::new(), tmp.path())?;
    persist(tmp, target)?;
    Ok(digest)
}

fn persist(tmp: tempfile::NamedTempFile, target: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot flush the copy for {}", target.display()))?;
    tmp.persist(target)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| format!("cannot move the copy into place as {}", target.display()))?;
    Ok(())
}

/// Writes to a file and a hasher at once.
struct Tee<'a, H> {
    file: &'a mut File,
    hasher: H,
}

impl<H: Write> Write for Tee<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn hash_reader<H: Digest + Write>(r: &mut impl Read, mut hasher: H, what: &Path) -> Result<String> {
    std::io::copy(r, &mut hasher).with_context(|| format!("cannot read {}", what.display()))?;
    Ok(hex(hasher.finalize().as_slice()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CIFAR-10's declared classes (test data, as the image-datasets plugin declares them).
    const CIFAR10_CLASSES: [&str; 10] = [
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
    const CLASS_FOLDER_DIR: &str = "cifar10-jpeg";

    /// A dataset declared like the shipped ones, with small split sizes (3 train, 1 test
    /// images per class) for `cifar10`, and MNIST's four files for `mnist`.
    fn spec(name: &str) -> DatasetSpec {
        let file = |n: &str, md5: &str| OfficialFile {
            name: n.into(),
            url: format!("https://example.invalid/{n}"),
            md5: md5.into(),
        };
        match name {
            "cifar10" => DatasetSpec {
                name: "cifar10".into(),
                about: String::new(),
                files: vec![file(
                    "cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a",
                )],
                usage: "set the cifar10 dataset's `path`".into(),
                class_folders: Some(ClassFolderLayout {
                    dir: CLASS_FOLDER_DIR.into(),
                    classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
                    splits: vec![("train".into(), 3), ("test".into(), 1)],
                }),
            },
            _ => DatasetSpec {
                name: "mnist".into(),
                about: String::new(),
                files: vec![
                    file(
                        "train-images-idx3-ubyte.gz",
                        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    ),
                    file(
                        "train-labels-idx1-ubyte.gz",
                        "d53e105ee54ea40749a09fcbcd1e9432",
                    ),
                    file(
                        "t10k-images-idx3-ubyte.gz",
                        "9fb629c4189551a2d022fa330f9573f3",
                    ),
                    file(
                        "t10k-labels-idx1-ubyte.gz",
                        "ec29112dd5afa0611ce80d1b7f02629c",
                    ),
                ],
                usage: "set the mnist dataset's `path`".into(),
                class_folders: None,
            },
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A tree of class folders under `root` with `per` fake JPEGs in each of `classes`.
    fn tree(root: &Path, classes: &[&str], per: usize) {
        for c in classes {
            std::fs::create_dir_all(root.join(c)).unwrap();
            for i in 0..per {
                std::fs::write(root.join(c).join(format!("{i:04}.jpg")), format!("{c}{i}"))
                    .unwrap();
            }
        }
    }

    fn tar_of(root: &Path, prefix: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(prefix, root).unwrap();
        b.into_inner().unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(Sha256::digest(bytes).as_slice())
    }

    #[test]
    fn class_folder_tars_are_copied_with_sha256sums() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        tree(&tmp.path().join("a"), &CIFAR10_CLASSES, 3);
        tree(&tmp.path().join("b"), &CIFAR10_CLASSES, 1);
        std::fs::create_dir_all(&src).unwrap();
        let train = tar_of(&tmp.path().join("a"), "train");
        let test = tar_of(&tmp.path().join("b"), "test");
        std::fs::write(src.join("train.tar"), &train).unwrap();
        std::fs::write(src.join("test.tar"), &test).unwrap();
        let dest = tmp.path().join("dest");
        let got = import(&spec("cifar10"), &src, &dest).unwrap();
        let dir = dest.join(CLASS_FOLDER_DIR);
        assert_eq!(entries(&dir), ["SHA256SUMS", "test.tar", "train.tar"]);
        assert_eq!(std::fs::read(dir.join("train.tar")).unwrap(), train);
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        assert_eq!(
            sums,
            format!("{}  test.tar\n{}  train.tar\n", sha(&test), sha(&train))
        );
        assert_eq!(got.files.len(), 3);
        assert!(got.note.contains("image-folder"), "{}", got.note);
        // One tar alone (named anything) is recognised by its counts; SHA256SUMS keeps both.
        let dest2 = tmp.path().join("dest2");
        import(&spec("cifar10"), &src.join("test.tar"), &dest2).unwrap();
        assert_eq!(
            entries(&dest2.join(CLASS_FOLDER_DIR)),
            ["SHA256SUMS", "test.tar"]
        );
    }

    #[test]
    fn a_folder_of_class_folders_is_packed_reproducibly() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("train");
        tree(&src, &CIFAR10_CLASSES, 3);
        let (d1, d2) = (tmp.path().join("d1"), tmp.path().join("d2"));
        import(&spec("cifar10"), &src, &d1).unwrap();
        import(&spec("cifar10"), &src, &d2).unwrap();
        let t1 = std::fs::read(d1.join(CLASS_FOLDER_DIR).join("train.tar")).unwrap();
        let t2 = std::fs::read(d2.join(CLASS_FOLDER_DIR).join("train.tar")).unwrap();
        assert_eq!(t1, t2);
        let mut ar = tar::Archive::new(t1.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 30);
        assert_eq!(names[0], "train/airplane/0000.jpg");
    }

    #[test]
    fn a_wrong_layout_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        // Nine classes.
        let nine = tmp.path().join("nine");
        tree(&nine, &CIFAR10_CLASSES[..9], 3);
        let t = tmp.path().join("nine.tar");
        std::fs::write(&t, tar_of(&nine, "train")).unwrap();
        let dest = tmp.path().join("dest");
        let e = import(&spec("cifar10"), &t, &dest).unwrap_err().to_string();
        assert!(
            e.contains("nine.tar") && e.contains("9 class folder(s)"),
            "{e}"
        );
        assert!(
            e.contains("truck") && e.contains("3 (train) or 1 (test)"),
            "{e}"
        );
        assert!(!dest.exists(), "nothing created");
        // Uneven counts.
        let uneven = tmp.path().join("uneven");
        tree(&uneven, &CIFAR10_CLASSES, 3);
        std::fs::remove_file(uneven.join("cat/0000.jpg")).unwrap();
        let e = import(&spec("cifar10"), &uneven, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cat: 2"), "{e}");
        // A file that is neither official nor a tar, and a directory with nothing usable.
        let junk = tmp.path().join("junk.bin");
        std::fs::write(&junk, b"hello").unwrap();
        let e = import(&spec("cifar10"), &junk, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("junk.bin") && e.contains("accepted"), "{e}");
        let e = import(&spec("mnist"), &nine, &dest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("airplane/") && e.contains("t10k-images-idx3-ubyte.gz"),
            "{e}"
        );
        let e = import(&spec("cifar10"), &tmp.path().join("nope"), &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!dest.exists(), "nothing created");
    }

    #[test]
    fn an_official_file_with_a_wrong_md5_is_refused_without_a_partial_file() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("cifar-10-python.tar.gz"), b"not the archive").unwrap();
        let dest = tmp.path().join("dest");
        let e = import(&spec("cifar10"), &src, &dest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cifar-10-python.tar.gz") && e.contains("c58f30108f718f92721af3b95e74349a"),
            "{e}"
        );
        assert!(
            e.contains(&hex(Md5::digest(b"not the archive").as_slice())),
            "{e}"
        );
        assert!(entries(&dest).is_empty(), "{:?}", entries(&dest));
        // An existing good file under the target name survives a failed replacement.
        std::fs::write(dest.join("cifar-10-python.tar.gz"), b"keep me").unwrap();
        import(&spec("cifar10"), &src, &dest).unwrap_err();
        assert_eq!(entries(&dest), ["cifar-10-python.tar.gz"]);
        assert_eq!(
            std::fs::read(dest.join("cifar-10-python.tar.gz")).unwrap(),
            b"keep me"
        );
        assert_eq!(
            std::fs::read(src.join("cifar-10-python.tar.gz")).unwrap(),
            b"not the archive",
            "the source is untouched"
        );
    }

    #[test]
    fn official_files_with_the_right_md5_are_copied() {
        // The verification is the declaration's: a declared file whose digest is known.
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("x.gz");
        std::fs::write(&src, b"payload").unwrap();
        let f = &OfficialFile {
            name: "x.gz".into(),
            url: "https://example.invalid/x.gz".into(),
            md5: hex(Md5::digest(b"payload").as_slice()),
        };
        let dest = tmp.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let p = copy_official(&src, f, &dest).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"payload");
        assert_eq!(entries(&dest), ["x.gz"]);
        // Copying a file onto itself leaves it as it is.
        copy_official(&dest.join("x.gz"), f, &dest).unwrap();
        assert_eq!(entries(&dest), ["x.gz"]);
    }
}
