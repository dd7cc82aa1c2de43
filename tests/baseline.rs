//! `memlab baseline`: held-out images judged against the training set by every criterion.

use std::path::Path;

use memlab_e2e::*;

/// Writes `n` noise PNGs (8×8 RGB, seeded) into `dir/<class>/`.
fn noise_images(dir: &Path, class: &str, n: usize, seed: u32) {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        let mut s = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(i as u32 * 97 + 1);
        let img = image::RgbImage::from_fn(8, 8, |_, _| {
            let mut px = [0u8; 3];
            for v in &mut px {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                *v = (s >> 24) as u8;
            }
            image::Rgb(px)
        });
        img.save(d.join(format!("{i:02}.png"))).unwrap();
    }
}

#[test]
fn baseline_flags_only_the_copied_held_out_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test) = (tmp.path().join("train"), tmp.path().join("test"));
    for (k, class) in ["a", "b"].iter().enumerate() {
        noise_images(&train, class, 6, 10 + k as u32);
        noise_images(&test, class, 5, 20 + k as u32);
    }
    // One held-out image is a copy of a training image: the only true replicate.
    std::fs::copy(train.join("b/03.png"), test.join("b/04.png")).unwrap();
    let cfg = tmp.path().join("baseline.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "bl"
device = "cpu"
[dataset]
name = "image-folder"
params = {{ path = {:?}, resolution = 8 }}
[architecture]
name = "convnet"
params = {{ channels = 8, blocks = 1 }}
[schedule]
name = "edm"
[[criteria]]
name = "ratio"
[[criteria]]
name = "l2"
params = {{ threshold = 0.01 }}
"#,
            train.display().to_string()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let heldout = format!("path={}", test.display());
    let r = memlab(
        &[
            "baseline",
            cfg.to_str().unwrap(),
            "--heldout",
            &heldout,
            "--out",
            out.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("| ratio |"), "{}", r.stdout);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("baseline.json")).unwrap()).unwrap();
    let ev = &rec["evaluation"];
    assert_eq!(ev["samples"], 10);
    assert_eq!(ev["training_images"], 12);
    for c in 0..2 {
        assert_eq!(ev["criteria"][c]["replicates"], 1, "{}", ev["criteria"][c]);
        assert_eq!(ev["criteria"][c]["per_class"]["b"]["ratio"], 0.2);
        assert_eq!(ev["criteria"][c]["per_class"]["a"]["ratio"], 0.0);
    }
    let md = std::fs::read_to_string(out.join("baseline.md")).unwrap();
    assert!(md.contains("10.00 %") && md.contains("| b |"), "{md}");

    // The held-out set must differ from the training set, and be given at all.
    let same = format!("path={}", train.display());
    let r = memlab(
        &["baseline", cfg.to_str().unwrap(), "--heldout", &same],
        None,
        None,
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("would be the training set"),
        "{}",
        r.stderr
    );
    let r = memlab(&["baseline", cfg.to_str().unwrap()], None, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--heldout"), "{}", r.stderr);
}
