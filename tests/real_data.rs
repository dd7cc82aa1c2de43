//! Real images through every data path (issue 13): the CIFAR-10 JPEG copy read straight from
//! its `.tar` (class filter, counts, pixels), exact k-NN against the real 50,000-image training
//! set, a tiny training run on real images, and MNIST (class filter, 28×28, the UNet).
//!
//! The data is the read-only copy in `../shared/data` (see its README; `MEMLAB_SHARED_DATA`
//! overrides the location). CI has it; without it these tests fail and say where it is expected.
//! Numbers from this copy are "CIFAR-10 (JPEG copy)": it is not bit-identical to the official
//! batches.

use std::io::Read;
use std::path::PathBuf;

use memlab::plugins::Registry;
use memlab_e2e::*;

fn shared() -> PathBuf {
    let dir = std::env::var_os("MEMLAB_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        dir.join("cifar10-jpeg/train.tar").is_file() && dir.join("mnist").is_dir(),
        "the shared real-data copy is expected at {} (cifar10-jpeg/train.tar, test.tar, \
         mnist/t10k-*): check out the repository beside `shared/`, or set MEMLAB_SHARED_DATA",
        dir.display()
    );
    dir
}

fn cifar(split: &str) -> String {
    shared()
        .join(format!("cifar10-jpeg/{split}.tar"))
        .display()
        .to_string()
}

/// Pixels of the `n`-th (by sorted name) JPEG of `class` in the tar, decoded independently of
/// the plugin, as [-1, 1] CHW floats.
fn reference_image(tar_path: &str, class: &str, n: usize) -> Vec<f32> {
    let mut bytes = Vec::new();
    std::fs::File::open(tar_path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut ar = tar::Archive::new(bytes.as_slice());
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p.contains(&format!("/{class}/")) && p.ends_with(".jpg") {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            found.push((p, b));
        }
    }
    found.sort();
    let img = image::load_from_memory(&found[n].1).unwrap().into_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!((w, h), (32, 32));
    let mut out = vec![0f32; 3 * 32 * 32];
    for (x, y, px) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * 32 + y as usize) * 32 + x as usize] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

#[test]
fn cifar10_jpeg_tar_reads_with_a_class_filter_and_exact_pixels() {
    let reg = Registry::load(&[]).unwrap();
    let test = cifar("test");
    let mut ds = reg
        .dataset(
            "image-folder",
            &format!("path = {test:?}\nresolution = 32\nclasses = [\"ship\", \"cat\"]"),
            0,
        )
        .unwrap();
    let shape = ds.info().unwrap();
    assert_eq!(shape.len, 2000, "1,000 test images per class");
    assert_eq!(shape.class_names.to_vec(), ["ship", "cat"]);
    assert_eq!((shape.channels, shape.height, shape.width), (3, 32, 32));
    // Images are ordered by class (in the order asked), then by name.
    let ids = [0u64, 999, 1000, 1007];
    let (images, labels) = ds.fill(&ids).unwrap();
    assert_eq!(labels, [0, 0, 1, 1]);
    let per = 3 * 32 * 32;
    for (k, (class, n)) in [("ship", 0), ("ship", 999), ("cat", 0), ("cat", 7)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            &images[k * per..(k + 1) * per],
            reference_image(&test, class, n).as_slice(),
            "{class} #{n}"
        );
    }
    // Every class of the training archive, 5,000 each, and a second load (from the decoded
    // cache) gives the same bytes.
    let train = cifar("train");
    let mut full = reg
        .dataset(
            "image-folder",
            &format!("path = {train:?}\nresolution = 32"),
            0,
        )
        .unwrap();
    let s = full.info().unwrap();
    assert_eq!(s.len, 50_000);
    assert_eq!(
        s.class_names.to_vec(),
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck"
        ]
    );
    let mut again = reg
        .dataset(
            "image-folder",
            &format!("path = {train:?}\nresolution = 32"),
            0,
        )
        .unwrap();
    let pick: Vec<u64> = (0..50_000).step_by(4999).collect();
    let (a, la) = full.fill(&pick).unwrap();
    let (b, lb) = again.fill(&pick).unwrap();
    assert_eq!(la, (0..=10).map(|i| i * 4999 / 5000).collect::<Vec<i64>>());
    assert!(a == b && la == lb);
}

/// Exact k-NN on real data: 16 test images against all 50,000 training images, against a
/// brute force in f64.
#[test]
fn knn_against_the_real_training_set_is_exact() {
    let reg = Registry::load(&[]).unwrap();
    let load = |split: &str| {
        let mut ds = reg
            .dataset(
                "image-folder",
                &format!("path = {:?}\nresolution = 32", cifar(split)),
                0,
            )
            .unwrap();
        let n = ds.info().unwrap().len;
        (ds, n)
    };
    let (mut train_ds, n) = load("train");
    let ids: Vec<u64> = (0..n).collect();
    let (train, _) = train_ds.fill(&ids).unwrap();
    let (mut test_ds, _) = load("test");
    let picks: Vec<u64> = (0..16).map(|i| i * 613).collect();
    let (samples, _) = test_ds.fill(&picks).unwrap();
    let dim = 3 * 32 * 32;
    let nb = memlab::eval::knn::knn(
        &samples,
        &train,
        &[3, 32, 32],
        2,
        memlab_plugin_api::ffi::Distance::L2,
        &memlab::engine::cpu(),
    )
    .unwrap();
    for (i, s) in samples.chunks(dim).enumerate() {
        let mut best = [(f64::INFINITY, 0usize); 2];
        for (j, t) in train.chunks(dim).enumerate() {
            let d: f64 = s
                .iter()
                .zip(t)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            if d < best[1].0 {
                best[1] = (d, j);
                if best[1].0 < best[0].0 {
                    best.swap(0, 1);
                }
            }
        }
        for (r, (d, j)) in best.iter().enumerate() {
            assert_eq!(nb.idx[i * 2 + r] as usize, *j, "sample {i} rank {r}");
            assert!((nb.dist[i * 2 + r] as f64 - d).abs() < 1e-4 * d.max(1.0));
        }
    }
}

/// A tiny training run on real images (one CIFAR-10 class, downsampled to 8×8) and a small
/// UNet run on MNIST at 28×28 with a class filter.
#[test]
fn tiny_runs_on_real_cifar10_and_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let cifar_cfg = format!(
        r#"
[run]
name = "cars"
device = "cpu"
[dataset]
name = "image-folder"
params = {{ path = {:?}, resolution = 32, classes = ["automobile"] }}
size = 16
resolution = 8
[architecture]
name = "convnet"
params = {{ channels = 8, blocks = 1 }}
[schedule]
name = "edm"
[train]
steps = 3
batch_size = 4
[sample]
count = 4
steps = 3
"#,
        cifar("test")
    );
    let mnist_cfg = format!(
        r#"
[run]
name = "digits"
device = "cpu"
[dataset]
name = "mnist"
params = {{ path = {:?}, split = "test", classes = ["3", "8"] }}
size = 8
[architecture]
name = "unet"
params = {{ channels = 8, channel_mult = [1, 2], res_blocks = 1, attention_resolutions = [], learn_sigma = false }}
[schedule]
name = "edm"
[conditioning]
name = "class"
[train]
steps = 2
batch_size = 4
[sample]
count = 4
steps = 2
"#,
        shared().join("mnist").display().to_string()
    );
    for (name, text, shape) in [
        ("cars", cifar_cfg, [4, 3, 8, 8]),
        ("digits", mnist_cfg, [4, 1, 28, 28]),
    ] {
        let cfg = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let r = memlab(
            &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
            None,
            None,
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let (s, v) = memlab::io::output::read_npy_f32(&out.join(name).join("samples.npy")).unwrap();
        assert_eq!(s, shape, "{name}");
        assert!(v.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
        let rep: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(name).join("replication.json")).unwrap(),
        )
        .unwrap();
        let ratio = rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ratio));
    }
    // MNIST's class filter: the digits' own labels, relabelled in the order asked.
    let reg = Registry::load(&[]).unwrap();
    let mut ds = reg
        .dataset(
            "mnist",
            &format!(
                "path = {:?}\nsplit = \"test\"\nclasses = [\"8\", \"3\"]",
                shared().join("mnist").display().to_string()
            ),
            0,
        )
        .unwrap();
    let s = ds.info().unwrap();
    assert_eq!(s.class_names.to_vec(), ["8", "3"]);
    // The official test split holds 974 eights and 1,010 threes.
    assert_eq!(s.len, 974 + 1010);
}

/// `memlab data fetch cifar10 --from <shared>/cifar10-jpeg`: both tars are copied byte for byte
/// into DEST/cifar10-jpeg/ with a SHA256SUMS matching the shared README; the MNIST test files
/// are md5-verified copies. The source is left as it was.
#[test]
fn data_fetch_from_the_shared_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("cifar10");
    let from = shared().join("cifar10-jpeg");
    let r = memlab(
        &[
            "data",
            "fetch",
            "cifar10",
            "--from",
            from.to_str().unwrap(),
            "--dest",
            dest.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("name = \"image-folder\""), "{}", r.stdout);
    let dir = dest.join("cifar10-jpeg");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        "4d3f5584bfe0a58112f8208f07dc99f96810f1c7cbb1a3a01fbc8bcca879d27e  test.tar\n\
         7a6ca90c4be3f975a4288cb27397b1b68dbb206b78705202043e0a7e610a0cf4  train.tar\n"
    );
    for split in ["train", "test"] {
        use sha2::Digest;
        let copy = std::fs::read(dir.join(format!("{split}.tar"))).unwrap();
        let want = format!("{:x}", sha2::Sha256::digest(&copy));
        assert!(sums.contains(&format!("{want}  {split}.tar")), "{split}");
        let orig = std::fs::metadata(from.join(format!("{split}.tar"))).unwrap();
        assert_eq!(orig.len(), copy.len() as u64, "{split}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["SHA256SUMS", "test.tar", "train.tar"],
        "no leftovers"
    );

    let mdest = tmp.path().join("mnist");
    let r = memlab(
        &[
            "data",
            "fetch",
            "mnist",
            "--from",
            shared().join("mnist").to_str().unwrap(),
            "--dest",
            mdest.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(mdest.join("t10k-images-idx3-ubyte.gz").is_file());
    assert!(r.stdout.contains("split = \"test\""), "{}", r.stdout);
    // A wrong source is refused with what was found and what is accepted.
    let r = memlab(
        &[
            "data",
            "fetch",
            "mnist",
            "--from",
            from.to_str().unwrap(),
            "--dest",
            tmp.path().join("x").to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("train.tar") && r.stderr.contains("accepted"),
        "{}",
        r.stderr
    );
}
