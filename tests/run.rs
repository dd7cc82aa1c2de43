//! `memlab run` end to end on tiny data: the run directory, resume after a kill, determinism.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use memlab_e2e::*;

fn tiny_config(dir: &Path, name: &str, steps: u64, snapshot_every: u64) -> std::path::PathBuf {
    let text = format!(
        r#"
[run]
name = "{name}"
seed = 11
device = "cpu"

[dataset]
name = "mondrian"
params = {{ resolution = 8, size = 16 }}

[architecture]
name = "convnet"
params = {{ channels = 8, blocks = 1, dropout = 0.1 }}

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[train]
steps = {steps}
batch_size = 4
lr = 1e-3
grad_clip = 1.0
warmup_steps = 5
ema_decay = 0.9
snapshot_every = {snapshot_every}

[sample]
count = 8
steps = 4
batch_size = 8
"#
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn snapshot_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(snapshot_path(run, step)).unwrap()
}

fn snapshot_path(run: &Path, step: u64) -> std::path::PathBuf {
    run.join("snapshots")
        .join(format!("snapshot-{step:08}.safetensors"))
}

/// Every tensor of a snapshot (parameters, EMA, Adam moments) and its step, by name (to say
/// which tensor differs when two snapshot files do).
fn snapshot_tensors(
    run: &Path,
    step: u64,
) -> (u64, u64, std::collections::BTreeMap<String, Vec<f32>>) {
    use memlab::engine::params::read_f32;
    let s = memlab::diffusion::snapshot::Snapshot::load(
        &snapshot_path(run, step),
        &memlab::engine::cpu(),
    )
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (n, p) in s.params.iter() {
        out.insert(format!("params/{n}"), s.params.read(n).unwrap());
        let _ = p;
    }
    if let Some(e) = &s.ema {
        for (n, _) in e.iter() {
            out.insert(format!("ema/{n}"), e.read(n).unwrap());
        }
    }
    for (prefix, map) in [("m", &s.adam.m), ("v", &s.adam.v)] {
        for (n, t) in map {
            let r = s.params.get(n).unwrap().shape.len();
            out.insert(format!("adam_{prefix}/{n}"), read_f32(t, r).unwrap());
        }
    }
    (s.step, s.adam.t, out)
}

fn assert_same_snapshot(a: &Path, b: &Path, step: u64) {
    let (sa, ta, xa) = snapshot_tensors(a, step);
    let (sb, tb, xb) = snapshot_tensors(b, step);
    assert_eq!((sa, ta), (sb, tb));
    assert_eq!(xa.keys().collect::<Vec<_>>(), xb.keys().collect::<Vec<_>>());
    for (k, v) in &xa {
        let w = &xb[k];
        let same = v.iter().zip(w).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "tensor {k} differs between the runs");
    }
}

#[test]
fn run_directory_holds_provenance_samples_and_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "prov", 6, 3);
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("runs").to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let run = tmp.path().join("runs/prov");
    for f in [
        "config.toml",
        "plugins.lock",
        "metrics.jsonl",
        "samples.npy",
        "sample_labels.npy",
        "samples.png",
        "nearest.png",
        "replication.json",
        "summary.md",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("plugins.lock")).unwrap()).unwrap();
    let libs = lock["libraries"].as_array().unwrap();
    assert!(
        libs.iter()
            .any(|l| l["name"] == "memlab-synthetic" && l["sha256"].as_str().unwrap().len() == 64)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    let (shape, data) = memlab::io::output::read_npy_f32(&run.join("samples.npy")).unwrap();
    assert_eq!(shape, vec![8, 3, 8, 8]);
    assert!(data.iter().all(|v| (-1.0..=1.0).contains(v)));
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("replication.json")).unwrap()).unwrap();
    assert_eq!(rep["evaluation"]["samples"], 8);
    assert_eq!(rep["steps"], 6);
    // The resolved config parses back to the same run.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("name = \"prov\""));
    assert!(snapshot_bytes(&run, 3).len() > 1000 && snapshot_bytes(&run, 6).len() > 1000);
}

#[test]
fn same_seed_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "det", 5, 0);
    for out in ["a", "b"] {
        let r = memlab(
            &[
                "run",
                cfg.to_str().unwrap(),
                "--out",
                tmp.path().join(out).to_str().unwrap(),
            ],
            None,
            None,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let a = std::fs::read(tmp.path().join("a/det/samples.npy")).unwrap();
    let b = std::fs::read(tmp.path().join("b/det/samples.npy")).unwrap();
    assert!(a == b, "same seed, same backend: identical samples");
    assert_same_snapshot(&tmp.path().join("a/det"), &tmp.path().join("b/det"), 5);
    // ARCHITECTURE.md: same seed ⇒ same bytes, snapshot files included.
    assert!(
        snapshot_bytes(&tmp.path().join("a/det"), 5)
            == snapshot_bytes(&tmp.path().join("b/det"), 5),
        "identical runs wrote byte-different snapshot files"
    );
}

/// A run killed (SIGKILL) after a snapshot and restarted ends with exactly the parameters,
/// EMA and optimiser state of an uninterrupted run.
#[test]
fn resume_after_kill_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 300;
    let cfg = tiny_config(tmp.path(), "resume", steps, 20);
    let full = tmp.path().join("full");
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            full.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    let killed = tmp.path().join("killed");
    let mut child = Command::new(memlab_bin())
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            killed.to_str().unwrap(),
        ])
        .env_remove("MEMLAB_PLUGIN_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = killed
        .join("resume/snapshots")
        .join(format!("snapshot-{:08}.safetensors", 20));
    let t0 = Instant::now();
    while !first.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no snapshot appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let snaps_at_kill = std::fs::read_dir(killed.join("resume/snapshots"))
        .unwrap()
        .count();
    assert!(
        !killed
            .join("resume/snapshots")
            .join(format!("snapshot-{steps:08}.safetensors"))
            .exists(),
        "killed before the end ({snaps_at_kill} snapshots)"
    );

    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            killed.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    // Final parameters, EMA and Adam state are bit-for-bit those of the uninterrupted run.
    assert_same_snapshot(&full.join("resume"), &killed.join("resume"), steps);
    assert!(
        snapshot_bytes(&full.join("resume"), steps)
            == snapshot_bytes(&killed.join("resume"), steps),
        "final snapshot files differ in bytes"
    );
    let m = std::fs::read_to_string(killed.join("resume/metrics.jsonl")).unwrap();
    let steps_logged: Vec<u64> = m
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps_logged,
        (1..=steps).collect::<Vec<_>>(),
        "metrics have each step once"
    );
    assert!(
        std::fs::read(full.join("resume/samples.npy")).unwrap()
            == std::fs::read(killed.join("resume/samples.npy")).unwrap(),
        "samples identical"
    );
}

#[test]
fn overrides_and_a_changed_config_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "ovr", 3, 0);
    let out = tmp.path().join("o");
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=2",
            "--set",
            "sample.count=4",
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ovr/replication.json")).unwrap()).unwrap();
    assert_eq!(rep["steps"], 2);
    assert_eq!(rep["evaluation"]["samples"], 4);
    // Same run name, different config: refuse to mix snapshots.
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.lr=0.5",
        ],
        None,
        None,
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("different training configuration"),
        "{}",
        r.stderr
    );
    // A bad override is a config error naming the key.
    let r = memlab(
        &["run", cfg.to_str().unwrap(), "--set", "train.stepz=2"],
        None,
        None,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("stepz"), "{}", r.stderr);
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "nan", 40, 2);
    let out = tmp.path().join("o");
    // An absurd learning rate blows the weights up within a few steps.
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.lr=1e30",
            "--set",
            "train.grad_clip=0.0",
            "--set",
            "train.warmup_steps=0",
        ],
        None,
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("training diverged at step"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("last good snapshot"), "{}", r.stderr);
    let snaps: Vec<_> = std::fs::read_dir(out.join("nan/snapshots"))
        .unwrap()
        .collect();
    assert!(
        !snaps.is_empty() || r.stderr.contains("none yet"),
        "{}",
        r.stderr
    );
}

#[test]
fn samples_can_come_from_a_chosen_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "snap", 6, 3);
    let out = tmp.path().join("o");
    let r = memlab(
        &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = std::fs::read(out.join("snap/samples.npy")).unwrap();
    // Re-sampling a finished run from an earlier snapshot reuses its training.
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "sample.snapshot=3",
        ],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    let out2 = out.clone();
    let early = std::fs::read(out2.join("snap/samples.npy")).unwrap();
    assert!(
        early != last,
        "samples from step 3 differ from the final ones"
    );
    let r = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("o3").to_str().unwrap(),
            "--set",
            "sample.snapshot=4",
        ],
        None,
        None,
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("sample.snapshot = 4"), "{}", r.stderr);
}

/// Fault injection: bytes zeroed in the middle of the newest snapshot. Resuming must not
/// train on (or sample from) the damaged weights: the file is named, set aside (not deleted)
/// and training redoes the steps from the previous snapshot, ending with the same samples and
/// the same snapshot bytes. An explicitly chosen damaged snapshot is an error naming it.
#[test]
fn a_damaged_snapshot_is_named_set_aside_and_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "dmg", 6, 3);
    let out = tmp.path().join("o");
    let args = ["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let r = memlab(&args, None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("dmg");
    let samples = std::fs::read(run.join("samples.npy")).unwrap();
    let good6 = snapshot_bytes(&run, 6);

    let mut bad = good6.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 64].fill(0);
    std::fs::write(snapshot_path(&run, 6), &bad).unwrap();
    let r = memlab(&args, None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("snapshot-00000006.safetensors is damaged"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("resuming from") && r.stderr.contains("snapshot-00000003"),
        "{}",
        r.stderr
    );
    let aside = run.join("snapshots/snapshot-00000006.safetensors.damaged");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bad,
        "damaged file kept as is"
    );
    assert!(
        snapshot_bytes(&run, 6) == good6,
        "retrained snapshot differs"
    );
    assert!(
        std::fs::read(run.join("samples.npy")).unwrap() == samples,
        "samples changed"
    );

    // Sampling from a chosen damaged snapshot: an error naming it, no fallback.
    let mut bad3 = snapshot_bytes(&run, 3);
    let mid = bad3.len() / 2;
    bad3[mid..mid + 64].fill(0);
    std::fs::write(snapshot_path(&run, 3), &bad3).unwrap();
    let mut a = args.to_vec();
    a.extend(["--set", "sample.snapshot=3"]);
    let r = memlab(&a, None, None);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("snapshot-00000003.safetensors is damaged"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("snapshots that verify: 6"),
        "{}",
        r.stderr
    );
    assert!(
        std::fs::read(run.join("samples.npy")).unwrap() == samples,
        "samples were overwritten"
    );
}

/// Output files get the mode the umask allows (`0o666 & !umask`), like any file a program
/// creates, not the owner-only 0o600 of a temporary file: under umask 022 the run directory's
/// files are 0644, under 077 they are 0600.
#[cfg(unix)]
#[test]
fn outputs_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "perm", 3, 3);
    for (umask, want) in [("022", 0o644), ("077", 0o600)] {
        let out = tmp.path().join(format!("u{umask}"));
        let r: Run = Command::new("sh")
            .args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .arg(memlab_bin())
            .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .env_remove("MEMLAB_PLUGIN_PATH")
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{}", r.stderr);
        let run = out.join("perm");
        for f in [
            run.join("config.toml"),
            run.join("samples.npy"),
            run.join("replication.json"),
            run.join("metrics.jsonl"),
            snapshot_path(&run, 3),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "umask {umask}: {} is {mode:o}", f.display());
        }
    }
}

#[test]
fn a_label_using_architecture_with_class_conditioning_reports_per_class_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "labelled", 4, 0);
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\n[conditioning]\nname = \"random\"\nparams = { classes = 2 }\n";
    std::fs::write(&cfg, text).unwrap();
    let check = memlab(&["config", "check", cfg.to_str().unwrap()], None, None);
    assert_eq!(check.code, 0, "{}", check.stderr);
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
    let run = tmp.path().join("labelled");
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(summary.contains("Per class (ratio)"), "{summary}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("replication.json")).unwrap()).unwrap();
    let per_class = rep["evaluation"]["criteria"][0]["per_class"]
        .as_object()
        .unwrap();
    let labels: Vec<&str> = per_class.keys().map(|k| k.as_str()).collect();
    assert_eq!(labels, ["label 0", "label 1"], "{per_class:?}");
}

/// A snapshot whose parameters are not the model's (as written by an earlier version of an
/// architecture whose layers were renamed) is refused with the names, not resumed halfway.
#[test]
fn a_snapshot_from_another_parameter_layout_is_refused_with_the_names() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), "layout", 2, 2);
    let out = tmp.path().join("runs");
    let r = memlab_run(&cfg, &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let path = snapshot_path(&out.join("layout"), 2);
    let dev = memlab::engine::cpu();
    let mut s = memlab::diffusion::snapshot::Snapshot::load(&path, &dev).unwrap();
    fn rename(store: &memlab::engine::params::ParamStore) -> memlab::engine::params::ParamStore {
        let mut out = memlab::engine::params::ParamStore::new(0);
        for (n, p) in store.iter() {
            let n = n.replace("conv_out.weight", "out.conv.weight");
            out.insert(&n, p.clone());
        }
        out
    }
    s.params = rename(&s.params);
    s.ema = s.ema.as_ref().map(rename);
    for moments in [&mut s.adam.m, &mut s.adam.v] {
        *moments = moments
            .drain(..)
            .map(|(n, t)| (n.replace("conv_out.weight", "out.conv.weight"), t))
            .collect();
    }
    s.save(&path).unwrap();
    let r = memlab_run(&cfg, &out, &["sample.count=4"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("does not hold this model's parameters")
            && r.stderr.contains("out.conv.weight"),
        "{}",
        r.stderr
    );
}
