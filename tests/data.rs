//! Training data as configs compose it: mixtures, per-class subsets, downsampling, held-out
//! baselines, validity — through the real plugins.

use memlab::config::{DatasetPart, DatasetSection, SubsetMode};
use memlab::data::load;
use memlab::plugins::Registry;
use memlab_e2e::*;

fn table(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn write_png(path: &std::path::Path, w: u32, h: u32, rgb: [u8; 3]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..w * h).flat_map(|_| rgb).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

#[test]
fn mixture_parts_become_classes() {
    let reg = Registry::load(&[]).unwrap();
    let cond = reg.conditioning("class", "", 0).unwrap();
    let section = DatasetSection {
        parts: vec![
            DatasetPart {
                name: "mondrian".into(),
                params: table("resolution = 8\nsize = 50"),
                size: Some(20),
                label: None,
            },
            DatasetPart {
                name: "gaussian-mixture".into(),
                params: table("resolution = 8\nsize = 90"),
                size: Some(60),
                label: Some("dummies".into()),
            },
        ],
        ..Default::default()
    };
    let mut d = load(&reg, &section, 4, &cond).unwrap();
    assert_eq!(d.train.len(), 80);
    assert_eq!(
        d.train.class_names,
        vec!["mondrian".to_string(), "dummies".to_string()]
    );
    assert_eq!(d.train.labels.iter().filter(|&&l| l == 0).count(), 20);
    assert_eq!(d.train.labels.iter().filter(|&&l| l == 1).count(), 60);
    assert_eq!(
        d.train.cond_classes, 2,
        "class conditioning sees the mixture's classes"
    );
    // Each part's images obey its own rules; a Mondrian scored as a GM dummy does not.
    let imgs = d.train.images.clone();
    let labels = d.train.labels.clone();
    let v = d
        .validity(&imgs, &labels)
        .unwrap()
        .expect("both parts score validity");
    let mean = |cls: i64| {
        let s: Vec<f32> = v
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == cls)
            .map(|(s, _)| *s)
            .collect();
        s.iter().sum::<f32>() / s.len() as f32
    };
    assert!(mean(0) > 0.9 && mean(1) > 0.5, "{} {}", mean(0), mean(1));
    let swapped: Vec<i64> = labels.iter().map(|l| 1 - l).collect();
    let w = d.validity(&imgs, &swapped).unwrap().unwrap();
    let wm: f32 = w.iter().sum::<f32>() / w.len() as f32;
    assert!(wm < 0.2, "images scored by the other part's rules: {wm}");
}

#[test]
fn per_class_results_name_conditioning_labels_not_dataset_classes() {
    let reg = Registry::load(&[]).unwrap();
    let section = DatasetSection {
        parts: vec![
            DatasetPart {
                name: "mondrian".into(),
                params: table("resolution = 8\nsize = 50"),
                size: Some(10),
                label: None,
            },
            DatasetPart {
                name: "random-ink".into(),
                params: table("resolution = 8\nsize = 50"),
                size: Some(10),
                label: None,
            },
        ],
        ..Default::default()
    };
    let names = |cond: &str, params: &str| {
        let c = reg.conditioning(cond, params, 0).unwrap();
        load(&reg, &section, 4, &c)
            .unwrap()
            .train
            .sample_class_names()
    };
    // True labels pass through: the parts' names.
    assert_eq!(names("class", ""), ["mondrian", "random-ink"]);
    // Random labels are not the dataset's classes, even with as many of them.
    assert_eq!(names("random", "classes = 2"), ["label 0", "label 1"]);
    // Unconditional: no labels, no per-class results.
    assert!(names("none", "").is_empty());
    // Unique labels (20 here): no per-label breakdown beyond 10 labels.
    assert!(names("unique", "").is_empty());
    assert_eq!(names("random", "classes = 10").len(), 10);
}

#[test]
fn per_class_subset_takes_the_first_images_of_each_class() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, colour) in [("cat", [200u8, 10, 10]), ("dog", [10, 10, 200])] {
        std::fs::create_dir_all(tmp.path().join(class)).unwrap();
        for i in 0..5 {
            write_png(
                &tmp.path().join(class).join(format!("{i}.png")),
                4,
                4,
                colour,
            );
        }
    }
    let reg = Registry::load(&[]).unwrap();
    let cond = reg.conditioning("none", "", 0).unwrap();
    let section = DatasetSection {
        name: Some("image-folder".into()),
        params: table(&format!(
            "path = {:?}\nresolution = 4",
            tmp.path().display().to_string()
        )),
        size: Some(4),
        subset: SubsetMode::PerClass,
        ..Default::default()
    };
    let d = load(&reg, &section, 0, &cond).unwrap();
    assert_eq!(d.train.labels.iter().filter(|&&l| l == 0).count(), 2);
    assert_eq!(d.train.labels.iter().filter(|&&l| l == 1).count(), 2);
    assert_eq!(
        d.train.indices,
        vec![0, 1, 5, 6],
        "the first two of each class, in dataset order"
    );
}

#[test]
fn resolution_is_a_box_average_and_heldout_is_disjoint() {
    let reg = Registry::load(&[]).unwrap();
    let cond = reg.conditioning("none", "", 0).unwrap();
    let full = DatasetSection {
        name: Some("mondrian".into()),
        params: table("resolution = 16\nsize = 40"),
        size: Some(10),
        ..Default::default()
    };
    let low = DatasetSection {
        resolution: Some(8),
        heldout: 12,
        ..full.clone()
    };
    let a = load(&reg, &full, 9, &cond).unwrap();
    let b = load(&reg, &low, 9, &cond).unwrap();
    assert_eq!(b.train.shape, [3, 8, 8]);
    assert_eq!(
        a.train.indices, b.train.indices,
        "same subset at both resolutions"
    );
    // Pixel (0, 0) of channel 0 of image 0 is the mean of the 2×2 block.
    let hi = &a.train.images;
    let expect = (hi[0] + hi[1] + hi[16] + hi[17]) / 4.0;
    assert!((b.train.images[0] - expect).abs() < 1e-6);
    let ho = b.heldout.as_ref().unwrap();
    assert_eq!(ho.len(), 12 * 3 * 8 * 8);
    // Held-out images are not training images.
    let per = 3 * 8 * 8;
    for h in ho.chunks(per) {
        assert!(b.train.images.chunks(per).all(|t| t != h));
    }
}

#[test]
fn a_run_reports_the_heldout_baseline_and_validity() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("h.toml");
    std::fs::write(
        &cfg,
        r#"
[run]
name = "h"
device = "cpu"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 100 }
size = 20
heldout = 10
[architecture]
name = "convnet"
params = { channels = 8, blocks = 1 }
[schedule]
name = "edm"
[[criteria]]
name = "ratio"
[[criteria]]
name = "carlini"
params = { n = 5 }
[train]
steps = 3
batch_size = 4
[sample]
count = 6
steps = 3
"#,
    )
    .unwrap();
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("h/replication.json")).unwrap())
            .unwrap();
    let ev = &rep["evaluation"];
    assert_eq!(ev["heldout"]["images"], 10);
    assert_eq!(ev["heldout"]["criteria_ratio"].as_array().unwrap().len(), 2);
    assert!(ev["validity"]["training_mean"].as_f64().unwrap() > 0.9);
    assert_eq!(ev["criteria"].as_array().unwrap().len(), 2);
    let summary = std::fs::read_to_string(tmp.path().join("h/summary.md")).unwrap();
    assert!(
        summary.contains("Held-out baseline") && summary.contains("Rule validity"),
        "{summary}"
    );
}
