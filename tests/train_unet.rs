//! A real UNet trains on tiny Mondrian data: the loss falls and samples move towards the
//! training images (closer than fresh draws from the same distribution are).

use memlab::data::TrainingSet;
use memlab::eval::knn::knn;
use memlab::plugins::Registry;
use memlab_e2e::*;
use memlab_plugin_api::ffi::Distance;

const CONFIG: &str = r#"
[run]
name = "unet16"
seed = 3
device = "cpu"

[dataset]
name = "mondrian"
params = { resolution = 16, size = 500 }
size = 16

[architecture]
name = "unet"
params = { channels = 16, channel_mult = [1, 2], res_blocks = 1, attention_resolutions = [8], heads = 1, dropout = 0.0, learn_sigma = false }

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[train]
steps = 300
batch_size = 16
lr = 2e-3
warmup_steps = 20
ema_decay = 0.95

[sample]
count = 32
steps = 12
batch_size = 32
"#;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn unet_learns_the_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("unet16.toml");
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
    let run = tmp.path().join("unet16");

    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let (first, last) = (mean(&losses[..30]), mean(&losses[losses.len() - 30..]));
    assert!(
        last < 0.6 * first,
        "loss fell from {first:.4} to only {last:.4}"
    );

    // Distances to the training set: generated samples vs fresh Mondrian images.
    let reg = Registry::load(&[]).unwrap();
    let mut ds = reg
        .dataset("mondrian", "resolution = 16\nsize = 500", 3)
        .unwrap();
    let cond = reg.conditioning("none", "", 3).unwrap();
    let train = TrainingSet::load(&mut ds, Some(16), 3, &cond).unwrap();
    let fresh_ids: Vec<u64> = (0..500u64)
        .filter(|i| !train.indices.contains(i))
        .take(32)
        .collect();
    let (fresh, _) = ds.fill(&fresh_ids).unwrap();
    let (_, samples) = memlab::io::output::read_npy_f32(&run.join("samples.npy")).unwrap();
    let dev = memlab::engine::cpu();
    let d_s = knn(&samples, &train.images, &[3, 16, 16], 1, Distance::L2, &dev).unwrap();
    let d_f = knn(&fresh, &train.images, &[3, 16, 16], 1, Distance::L2, &dev).unwrap();
    let ds_: Vec<f64> = d_s.dist.iter().map(|&d| d as f64).collect();
    let df_: Vec<f64> = d_f.dist.iter().map(|&d| d as f64).collect();
    let (ms, mf) = (mean(&ds_), mean(&df_));
    let var =
        |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    // "Measurably closer": Welch's t statistic of (fresh − sample) distances above 3.
    let t =
        (mf - ms) / (var(&ds_, ms) / ds_.len() as f64 + var(&df_, mf) / df_.len() as f64).sqrt();
    assert!(
        t > 3.0,
        "samples are {ms:.3} from the training set, fresh draws {mf:.3} (t = {t:.2})"
    );
}
