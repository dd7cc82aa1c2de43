//! Fault injection, huge sizes: a config (or a plugin parameter) asking for 10⁹ samples, a
//! batch of 10⁹, 10⁹ sampling steps, a network 10⁹ wide, 10¹² images or a 10⁵-pixel side is
//! refused before anything is allocated, with an error that names the key and the estimate,
//! an exit code (never a signal: no SIGABRT from a failed allocation) and no run directory.
//! Drawing 8 images from a generated dataset of 10¹² runs normally.

use std::path::{Path, PathBuf};
use std::process::Command;

use memlab_e2e::*;

fn tiny_config(dir: &Path) -> PathBuf {
    let text = r#"
[run]
name = "huge"
seed = 3
device = "cpu"

[dataset]
name = "mondrian"
params = { resolution = 8, size = 32 }
size = 8

[architecture]
name = "convnet"
params = { channels = 8, blocks = 1 }

[schedule]
name = "edm"

[train]
steps = 2
batch_size = 4
ema_decay = 0.9

[sample]
count = 4
steps = 2
batch_size = 4
"#;
    let p = dir.join("huge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `memlab run` on the tiny config with `sets` overrides and a fixed memory figure, so
/// the outcome does not depend on the machine running the test.
fn run_with(dir: &Path, sets: &[&str], limit: &str) -> (Option<i32>, String, PathBuf) {
    let cfg = tiny_config(dir);
    let out = dir.join("runs");
    let mut cmd = Command::new(memlab_bin());
    cmd.arg("run").arg(&cfg).arg("--out").arg(&out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.env("MEMLAB_PLUGIN_PATH", profile_dir())
        .env("MEMLAB_MEMORY_LIMIT", limit)
        .env_remove("RUST_BACKTRACE");
    let o = cmd.output().expect("running memlab");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        out.join("huge"),
    )
}

/// Asserts a clean refusal: exit `code`, every needle in stderr, no abort or panic, no run
/// directory.
fn assert_refused(sets: &[&str], code: i32, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, run_dir) = run_with(dir.path(), sets, "8G");
    assert_eq!(
        status,
        Some(code),
        "{sets:?}: expected exit {code} (None = killed by a signal)\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "{sets:?}: stderr lacks `{n}`:\n{stderr}"
        );
    }
    for bad in ["memory allocation of", "panicked", "capacity overflow"] {
        assert!(
            !stderr.contains(bad),
            "{sets:?}: `{bad}` in stderr:\n{stderr}"
        );
    }
    assert!(
        !run_dir.exists(),
        "{sets:?}: refused, yet {} was created",
        run_dir.display()
    );
}

#[test]
fn huge_sample_count_is_refused_with_the_estimate() {
    assert_refused(
        &["sample.count=1000000000"],
        1,
        &[
            "sample.count = 1000000000 needs",
            "TB for the samples (3×8×8 f32 each",
            "8.0 GB available (MEMLAB_MEMORY_LIMIT)",
        ],
    );
}

#[test]
fn huge_training_batch_is_refused() {
    assert_refused(
        &["train.batch_size=1000000000"],
        1,
        &[
            "train.batch_size = 1000000000",
            "a training step's activations",
        ],
    );
}

#[test]
fn huge_sampling_steps_are_a_config_error() {
    assert_refused(
        &["sample.steps=1000000000"],
        2,
        &["key `sample.steps`", "more than the 100000"],
    );
}

#[test]
fn huge_network_width_is_refused_before_any_parameter_exists() {
    // 10⁹ channels: refused by the shape-only pass (the time embedding bounds its table).
    assert_refused(
        &["architecture.params.channels=1000000000"],
        1,
        &[
            "architecture.params: architecture `convnet`",
            "shape-only forward pass",
        ],
    );
    // 1.6·10⁷ channels: shapes are fine, the parameter estimate is not.
    assert_refused(
        &["architecture.params.channels=16000000"],
        1,
        &[
            "architecture.params (architecture `convnet`",
            // Named in the breakdown (the headline is the largest buffer, which may be the
            // activations: the shape-only pass also counts weight-sized intermediates).
            "PB  architecture.params (architecture `convnet` (plugin memlab-simple-nets)): \
             10752001152000003 parameters × 5 copies",
        ],
    );
}

#[test]
fn width_whose_arithmetic_overflows_is_an_error() {
    // 4·10¹⁸ channels: the plugin's own size arithmetic overflows usize.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, run_dir) = run_with(
        dir.path(),
        &["architecture.params.channels=4000000000000000000"],
        "8G",
    );
    assert!(matches!(status, Some(1 | 2)), "{status:?}\n{stderr}");
    assert!(stderr.contains("architecture"), "{stderr}");
    assert!(!stderr.contains("memory allocation of"), "{stderr}");
    assert!(!run_dir.exists());
}

#[test]
fn huge_image_resolution_is_refused() {
    assert_refused(
        &["dataset.params.resolution=100000"],
        1,
        &["dataset.params (3×100000×100000 images)", "TB"],
    );
}

#[test]
fn loading_all_of_a_huge_generated_dataset_is_refused() {
    assert_refused(
        &[
            "dataset.params.size=1000000000000",
            "dataset.size=1000000000000",
        ],
        1,
        &[
            "dataset.size = 1000000000000",
            "the training images of dataset `mondrian`",
        ],
    );
}

#[test]
fn huge_plugin_owned_buffer_is_a_plugin_error() {
    // Gaussian-mixture dummies hold their mode images in memory: 10⁹ modes are refused by the
    // plugin, at validation, naming its parameter.
    assert_refused(
        &[
            "dataset.name=gaussian-mixture",
            "dataset.params.modes=1000000000",
        ],
        2,
        &["key `dataset.params`", "modes = 1000000000"],
    );
}

#[test]
fn a_run_that_cannot_fit_the_memory_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, run_dir) = run_with(dir.path(), &[], "100K");
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("100.0 kB available (MEMLAB_MEMORY_LIMIT)"),
        "{stderr}"
    );
    assert!(!run_dir.exists());
    let (status, stderr, _) = run_with(dir.path(), &[], "lots");
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("MEMLAB_MEMORY_LIMIT = `lots`"), "{stderr}");
}

#[test]
fn eight_images_from_a_dataset_of_a_trillion_run_normally() {
    // Subset and held-out draws are O(drawn); a sampling batch larger than the sample count is
    // only as large as the count.
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr, run_dir) = run_with(
        dir.path(),
        &[
            "dataset.params.size=1000000000000",
            "dataset.heldout=4",
            "sample.batch_size=1000000000",
        ],
        "8G",
    );
    assert_eq!(status, Some(0), "{stderr}");
    assert!(run_dir.join("samples.npy").exists(), "{stderr}");
    let cfg = std::fs::read_to_string(run_dir.join("replication.json")).unwrap();
    assert!(cfg.contains("heldout"), "{cfg}");
}
