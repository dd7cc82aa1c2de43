//! Fault injection: mistakes a user makes must never falsify a result, lose one, or pass
//! silently (issue 10). One test per class of fault:
//! - re-evaluation never changes a run's record;
//! - non-finite or out-of-range samples are refused (or reported), never scored;
//! - a run directory has one owner, and a refused command changes nothing on disk;
//! - config errors point at the user's own lines, and meaningless values are refused.
//!
//! Damaged plugin libraries, damaged snapshots and huge sizes have their own files
//! (`faults_plugins.rs`, `faults_files.rs`, `faults_sizes.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memlab_e2e::*;

fn config_text(name: &str, extra: &str) -> String {
    format!(
        r#"# A tiny run for fault tests.
[run]
name = "{name}"
seed = 3
device = "cpu"

[dataset]
name = "mondrian"
params = {{ resolution = 8, size = 16 }}

[architecture]
name = "convnet"
params = {{ channels = 8, blocks = 1 }}

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[train]
steps = 4
batch_size = 4
lr = 1e-3
snapshot_every = 2

[sample]
count = 8
steps = 4
batch_size = 8
{extra}"#
    )
}

fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, config_text(name, extra)).unwrap();
    p
}

/// Every file under `dir` (relative path → bytes), for "nothing changed" checks.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn run_ok(cfg: &Path, out: &Path, sets: &[&str]) -> Run {
    let r = memlab_run(cfg, out, sets);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

fn results_dir(stdout: &str) -> PathBuf {
    PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("results: "))
            .unwrap_or_else(|| panic!("no results line in {stdout}")),
    )
}

/// Class 2: `memlab eval` of a finished run (with and without changed criteria) writes its own
/// folder, says what it judged and with which criteria, and leaves the run's record alone.
#[test]
fn evaluation_never_changes_the_runs_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "ev", "");
    let out = tmp.path().join("runs");
    run_ok(&cfg, &out, &[]);
    let run = out.join("ev");
    let before = tree(&run);

    let e = memlab(&["eval", run.to_str().unwrap()], None, None);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let d1 = results_dir(&e.stdout);
    assert!(d1.starts_with(run.join("evals")), "{}", d1.display());
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d1.join("evaluation.json")).unwrap()).unwrap();
    assert_eq!(rec["samples"]["source"], "the run's samples");
    assert_eq!(
        rec["samples"]["sha256"],
        sha256_hex(&std::fs::read(run.join("samples.npy")).unwrap())
    );
    assert_eq!(rec["criteria"][0]["name"], "ratio");
    // The same samples and criteria give the run's own numbers.
    let own: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("replication.json")).unwrap()).unwrap();
    assert_eq!(
        rec["evaluation"]["criteria"][0]["ratio"],
        own["evaluation"]["criteria"][0]["ratio"]
    );

    let e = memlab(
        &[
            "eval",
            run.to_str().unwrap(),
            "--set",
            "criteria=[{name = \"l2\", params = { threshold = 1000.0 }}]",
        ],
        None,
        None,
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    let d2 = results_dir(&e.stdout);
    assert_ne!(d1, d2, "another criterion gets another folder");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d2.join("evaluation.json")).unwrap()).unwrap();
    assert_eq!(rec["criteria"][0]["name"], "l2");
    assert_eq!(rec["overrides"].as_array().unwrap().len(), 1);

    // Writing into the run directory itself is refused.
    let e = memlab(
        &[
            "eval",
            run.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_ne!(e.code, 0);
    assert!(
        e.stderr.contains("never changes a run's record"),
        "{}",
        e.stderr
    );

    let mut after = tree(&run);
    after.retain(|p, _| !p.starts_with("evals"));
    assert!(before == after, "the run's own files changed");
}

/// Class 3: sampling that overflows stops with the step and σ named; evaluation refuses
/// non-finite and out-of-range images and reports images that look like [0, 1].
#[test]
fn non_finite_and_out_of_range_samples_are_never_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    // σ_max = 1e39 overflows float32 noise at once: the first step sees ±inf.
    let cfg = write_config(tmp.path(), "huge-sigma", "");
    let r = memlab_run(&cfg, &out, &["schedule.params={sigma_max = 1e39}"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("sampling diverged") && r.stderr.contains("step 1 of 4"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("1.0000e39"), "σ named: {}", r.stderr);
    assert!(!out.join("huge-sigma/replication.json").exists());

    // A good run, then foreign sample files.
    let cfg = write_config(tmp.path(), "good", "");
    run_ok(&cfg, &out, &[]);
    let run = out.join("good");
    let (shape, samples) = memlab::io::output::read_npy_f32(&run.join("samples.npy")).unwrap();
    let eval = |name: &str, values: &[f32]| {
        let p = tmp.path().join(format!("{name}.npy"));
        memlab::io::output::write_npy_f32(&p, &shape, values).unwrap();
        memlab(
            &[
                "eval",
                run.to_str().unwrap(),
                "--samples",
                p.to_str().unwrap(),
            ],
            None,
            None,
        )
    };
    let mut nan = samples.clone();
    nan[200] = f32::NAN;
    let e = eval("nan", &nan);
    assert_eq!(e.code, 1, "{}", e.stderr);
    assert!(
        e.stderr.contains("nan.npy") && e.stderr.contains("1 non-finite value"),
        "{}",
        e.stderr
    );
    let u8s: Vec<f32> = samples.iter().map(|v| (v + 1.0) * 127.5).collect();
    let e = eval("u8", &u8s);
    assert_eq!(e.code, 1, "{}", e.stderr);
    assert!(e.stderr.contains("[0, 255]"), "{}", e.stderr);
    let unit: Vec<f32> = samples.iter().map(|v| (v + 1.0) / 2.0).collect();
    let e = eval("unit", &unit);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stderr.contains("[0, 1]"), "warned: {}", e.stderr);
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(results_dir(&e.stdout).join("evaluation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["warnings"].as_array().unwrap().len(), 1, "{rec}");
    assert_eq!(rec["samples"]["source"], "a samples file");
}

/// Class 4: a locked run directory refuses a second process; a refused re-run (changed
/// training config) writes nothing; `run.name` cannot leave the runs folder.
#[test]
fn a_run_directory_has_one_owner_and_refusals_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let cfg = write_config(tmp.path(), "owned", "");
    run_ok(&cfg, &out, &[]);
    let run = out.join("owned");
    let before = tree(&run);

    // Changed training settings on the same name: refused before any write.
    let r = memlab_run(&cfg, &out, &["train.lr=0.01"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("different training configuration") && r.stderr.contains("train"),
        "{}",
        r.stderr
    );
    assert!(tree(&run) == before, "a refused run changed the directory");

    // Another process holds the directory: refused, nothing written.
    let held = memlab::io::lock::DirLock::acquire(&run).unwrap();
    let r = memlab_run(&cfg, &out, &["sample.count=4"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("in use by another memlab process"),
        "{}",
        r.stderr
    );
    let mut now = tree(&run);
    now.remove(Path::new(memlab::io::lock::LOCK_FILE));
    let mut was = before.clone();
    was.remove(Path::new(memlab::io::lock::LOCK_FILE));
    assert!(now == was, "a refused run changed the directory");
    drop(held);
    // Released: a new sampling setting on the same training config re-samples.
    run_ok(&cfg, &out, &["sample.count=4"]);

    for bad in ["../../escaped", "", "a/b", ".."] {
        let r = memlab_run(&cfg, &out, &[&format!("run.name=\"{bad}\"")]);
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("run.name"), "{}", r.stderr);
    }
    assert!(!tmp.path().join("escaped").exists());
    assert!(!out.join("a").exists());
}

/// Class 7: errors point at the lines the user wrote (with and without `--set`), duplicate
/// tables say where both are, and meaningless values or paths are refused by name.
#[test]
fn config_errors_point_at_the_users_lines_and_nothing_passes_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text("lines", "").replace("lr = 1e-3", "lr = \"fast\"");
    let line = text.lines().position(|l| l.starts_with("lr =")).unwrap() + 1;
    let cfg = tmp.path().join("lines.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = tmp.path().join("runs");
    let o = out.to_str().unwrap();
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["run", c, "--out", o],
        vec!["run", c, "--out", o, "--set", "train.steps=3"],
        vec!["config", "check", c],
    ] {
        let r = memlab(&args, None, None);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("train.lr") && r.stderr.contains(&format!("(line {line}")),
            "{args:?} should name line {line}: {}",
            r.stderr
        );
    }
    // An error in an overridden value names the override, not a line.
    let ok = write_config(tmp.path(), "ok", "");
    let r = memlab(
        &[
            "run",
            ok.to_str().unwrap(),
            "--out",
            o,
            "--set",
            "train.lr=fast",
        ],
        None,
        None,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("set by --set"), "{}", r.stderr);

    // Syntax errors and duplicate tables are located.
    let syntax = tmp.path().join("syntax.toml");
    std::fs::write(
        &syntax,
        config_text("s", "").replace("lr = 1e-3", "lr = 1e-3 x"),
    )
    .unwrap();
    let r = memlab(&["run", syntax.to_str().unwrap(), "--out", o], None, None);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!("(line {line}, column")),
        "{}",
        r.stderr
    );
    let dup = tmp.path().join("dup.toml");
    std::fs::write(&dup, config_text("d", "\n[train]\nlr = 1e-4\n")).unwrap();
    let r = memlab(&["run", dup.to_str().unwrap(), "--out", o], None, None);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("`[train]` is defined twice, on line"),
        "{}",
        r.stderr
    );

    // Values and paths that would otherwise pass without a word.
    for (set, key) in [
        ("sample.count=0", "sample.count"),
        ("train.grad_clip=-1.0", "train.grad_clip"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("plugins.dirs=[\"no-such-dir\"]", "plugins.dirs"),
    ] {
        let r = memlab(
            &["run", ok.to_str().unwrap(), "--out", o, "--set", set],
            None,
            None,
        );
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert!(r.stderr.contains(key), "{set}: {}", r.stderr);
    }
    let r = memlab(
        &[
            "--plugin-dir",
            "/no/such/dir",
            "config",
            "check",
            ok.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("/no/such/dir"), "{}", r.stderr);
    let study = tmp.path().join("study.toml");
    std::fs::write(
        &study,
        config_text("st", "\n[sweep]\n\"dataset.size\" = [4, 8]\n"),
    )
    .unwrap();
    let r = memlab(
        &["study", study.to_str().unwrap(), "--jobs", "0"],
        None,
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--jobs"), "{}", r.stderr);
    assert!(!out.exists(), "refused commands wrote nothing");
}
