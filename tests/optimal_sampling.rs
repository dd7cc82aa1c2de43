//! The closed-form optimum sampled with EDM's Heun sampler reproduces training images
//! (DM, training/optim.py): nearly every sample lands on a training image.

use memlab::data::TrainingSet;
use memlab::eval::knn::knn;
use memlab::plugins::Registry;
use memlab_e2e::*;
use memlab_plugin_api::ffi::Distance;

const CONFIG: &str = r#"
[run]
name = "optimal"
seed = 5
device = "cpu"

[dataset]
name = "mondrian"
params = { resolution = 16, size = 64 }

[architecture]
name = "optimal"

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[sample]
count = 100
sampler = "heun"
steps = 18
batch_size = 50
"#;

#[test]
fn optimal_denoiser_with_heun_reproduces_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("optimal.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
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
    assert!(r.stderr.contains("skipping training"), "{}", r.stderr);

    let reg = Registry::load(&[]).unwrap();
    let mut ds = reg
        .dataset("mondrian", "resolution = 16\nsize = 64", 5)
        .unwrap();
    let cond = reg.conditioning("none", "", 5).unwrap();
    let train = TrainingSet::load(&mut ds, None, 5, &cond).unwrap();
    let dev = memlab::engine::cpu();
    // Typical inter-image distance: median distance of each training image to the others.
    let nn_train = knn(
        &train.images,
        &train.images,
        &[3, 16, 16],
        2,
        Distance::L2,
        &dev,
    )
    .unwrap();
    let mut inter: Vec<f32> = (0..train.len()).map(|i| nn_train.row(i)[1]).collect();
    inter.sort_by(f32::total_cmp);
    let typical = inter[inter.len() / 2];
    let (_, samples) =
        memlab::io::output::read_npy_f32(&tmp.path().join("optimal/samples.npy")).unwrap();
    let nn = knn(&samples, &train.images, &[3, 16, 16], 1, Distance::L2, &dev).unwrap();
    let close = nn.dist.iter().filter(|&&d| d < 0.01 * typical).count();
    assert!(
        close * 100 >= 99 * nn.dist.len(),
        "{close} of {} samples within 1% of the typical inter-image distance {typical:.3}; worst {:?}",
        nn.dist.len(),
        nn.dist.iter().cloned().fold(0f32, f32::max)
    );
    let rep: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("optimal/replication.json")).unwrap(),
    )
    .unwrap();
    let ratio = rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap();
    assert!(ratio >= 0.99, "ratio criterion flags {ratio}");
}

#[test]
fn optimal_with_class_conditioning_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("optimal.toml");
    std::fs::write(
        &cfg,
        format!("{CONFIG}\n[conditioning]\nname = \"random\"\nparams = {{ classes = 2 }}\n"),
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
    assert_eq!(r.code, 2, "a config error: {}", r.stderr);
    for part in [
        cfg.to_str().unwrap(),
        "key `conditioning.name`",
        "conditioning `random`",
        "architecture `optimal`",
        "ignores class labels",
        "`architecture.name`",
    ] {
        assert!(r.stderr.contains(part), "names {part}: {}", r.stderr);
    }
    assert!(
        !tmp.path().join("optimal").exists(),
        "no run directory is created"
    );
}
