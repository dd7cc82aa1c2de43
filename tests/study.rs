//! `memlab study`, `memlab report`, `memlab emm` and the Slurm export, end to end on tiny
//! data: a 2×2 sweep with its table and figures, resume after a kill, `--cell`, the Slurm
//! script, and EMM searches on the optimal denoiser and on a small trained UNet.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use memlab_e2e::*;

/// A 2×2 study: two dataset sizes × two MLP widths, `steps` training steps per cell.
fn sweep_config(dir: &Path, steps: u64) -> PathBuf {
    let text = format!(
        r#"
[study]
name = "grid"
description = "2x2 test sweep"

[run]
seed = 5
device = "cpu"

[dataset]
name = "mondrian"
params = {{ resolution = 8, size = 64 }}
size = 4

[architecture]
name = "mlp"
params = {{ hidden = 32, blocks = 1 }}

[schedule]
name = "edm"

[train]
steps = {steps}
batch_size = 4
lr = 1e-3
snapshot_every = {third}

[sample]
count = 16
steps = 6
batch_size = 16
every_snapshot = true

[sweep]
"dataset.size" = [4, 8]
"architecture.params.hidden" = [32, 64]
"#,
        third = steps / 3
    );
    let p = dir.join("grid.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn cell_dirs(study: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(study.join("cells"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn done_cells(study: &Path) -> Vec<PathBuf> {
    cell_dirs(study)
        .into_iter()
        .filter(|d| d.join("cell.json").exists())
        .collect()
}

fn png_size(p: &Path) -> (u32, u32) {
    let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let r = d.read_info().unwrap();
    (r.info().width, r.info().height)
}

fn csv_rows(p: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn sweep_runs_reports_and_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough per cell that the kill lands mid-study.
    let cfg = sweep_config(tmp.path(), 1200);
    let study = tmp.path().join("studies/grid");
    let mut child = Command::new(memlab_bin())
        .args(["study", cfg.to_str().unwrap(), "--jobs", "1"])
        .current_dir(tmp.path())
        .env_remove("MEMLAB_PLUGIN_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while done_cells(&study).len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "two cells did not finish in 5 minutes"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the study ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = done_cells(&study);
    assert!(
        (2..4).contains(&finished.len()),
        "killed with {} finished cells",
        finished.len()
    );
    let before: Vec<(PathBuf, Vec<u8>, Vec<u8>)> = finished
        .iter()
        .map(|d| {
            (
                d.clone(),
                std::fs::read(d.join("cell.json")).unwrap(),
                std::fs::read(d.join("replication.json")).unwrap(),
            )
        })
        .collect();

    let r = memlab(&["study", cfg.to_str().unwrap()], None, Some(tmp.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "4 cells, {} already finished, {} to run",
            finished.len(),
            4 - finished.len()
        )),
        "{}",
        r.stderr
    );
    // Finished cells were not touched; the rest ran.
    for (d, cell, rep) in &before {
        assert_eq!(&std::fs::read(d.join("cell.json")).unwrap(), cell);
        assert_eq!(&std::fs::read(d.join("replication.json")).unwrap(), rep);
    }
    assert_eq!(done_cells(&study).len(), 4);

    // The table: a header and 4 finished rows whose numbers are the cells' own.
    let rows = csv_rows(&study.join("results.csv"));
    assert_eq!(rows.len(), 5, "{rows:?}");
    let h = &rows[0];
    let col = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {h:?}"))
    };
    let (size, hidden, ratio, status, cell) = (
        col("dataset.size"),
        col("architecture.params.hidden"),
        col("ratio_ratio"),
        col("status"),
        col("cell"),
    );
    let mut grid: Vec<(String, String)> = Vec::new();
    for row in &rows[1..] {
        assert_eq!(row[status], "finished");
        grid.push((row[hidden].clone(), row[size].clone()));
        let rep: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                study
                    .join("cells")
                    .join(&row[cell])
                    .join("replication.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let want = rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap();
        assert_eq!(row[ratio].parse::<f64>().unwrap(), want);
        assert_eq!(
            rep["evaluation"]["training_images"]
                .as_u64()
                .unwrap()
                .to_string(),
            row[size]
        );
    }
    grid.sort();
    assert_eq!(
        grid,
        [("32", "4"), ("32", "8"), ("64", "4"), ("64", "8")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Figures and reports.
    for f in ["ratio-ratio.png", "nn-distance.png", "ratio-vs-step.png"] {
        let (w, h) = png_size(&study.join(f));
        assert!(w >= 400 && h >= 300, "{f}: {w}×{h}");
    }
    let html = std::fs::read_to_string(study.join("report.html")).unwrap();
    assert!(html.contains("<img src=\"ratio-ratio.png\""), "{html}");
    assert_eq!(html.matches("/nearest.png\"").count(), 4);
    let md = std::fs::read_to_string(study.join("report.md")).unwrap();
    assert!(md.contains("4 cells (4 finished)"), "{md}");

    // `memlab report` regenerates the same table from the cells.
    let csv = std::fs::read_to_string(study.join("results.csv")).unwrap();
    std::fs::remove_file(study.join("results.csv")).unwrap();
    let r = memlab(&["report", study.to_str().unwrap()], None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(study.join("results.csv")).unwrap(),
        csv
    );

    // Fault injection: a finished cell's replication.json cut short. The report names the cell
    // `corrupt` with the file and the parse error (not `missing`); the next study run redoes it.
    let victim = &before[0].0;
    let rep_path = victim.join("replication.json");
    let good: serde_json::Value = serde_json::from_slice(&before[0].2).unwrap();
    std::fs::write(&rep_path, &before[0].2[..before[0].2.len() / 2]).unwrap();
    let r = memlab(&["report", study.to_str().unwrap()], None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("3 of 4 cells finished"), "{}", r.stdout);
    let shown = rep_path.display().to_string();
    assert!(
        r.stderr.contains("is corrupt") && r.stderr.contains(&shown),
        "{}",
        r.stderr
    );
    let md = std::fs::read_to_string(study.join("report.md")).unwrap();
    assert!(md.contains("is corrupt") && md.contains(&shown), "{md}");
    assert!(md.contains("EOF while parsing"), "{md}");
    assert_eq!(
        csv_rows(&study.join("results.csv"))
            .iter()
            .filter(|r| r[status] == "corrupt")
            .count(),
        1
    );
    let r = memlab(&["study", cfg.to_str().unwrap()], None, Some(tmp.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("4 cells, 3 already finished, 1 to run"),
        "{}",
        r.stderr
    );
    let redone: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rep_path).unwrap()).unwrap();
    assert_eq!(redone["evaluation"], good["evaluation"]);
}

#[test]
fn slurm_script_and_single_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sweep_config(tmp.path(), 20);
    let study = tmp.path().join("studies/grid");
    let r = memlab(
        &["study", cfg.to_str().unwrap(), "--slurm"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = study.join("slurm.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --array=0-3\n"), "{text}");
    assert!(text.contains("--cell \"$SLURM_ARRAY_TASK_ID\""), "{text}");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(done_cells(&study).is_empty(), "--slurm must not run cells");

    // The script itself, as array task 2, runs exactly cell 2.
    let out = Command::new("bash")
        .arg(&script)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env_remove("MEMLAB_PLUGIN_PATH")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(study.join("study.json")).unwrap()).unwrap();
    let name = |i: usize| manifest["cells"][i]["name"].as_str().unwrap().to_string();
    assert_eq!(done_cells(&study), vec![study.join("cells").join(name(2))]);
    let cell: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(study.join("cells").join(name(2)).join("cell.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cell["index"], 2);

    // `--cell 0` directly, then `memlab report` merges what exists.
    let r = memlab(
        &["study", cfg.to_str().unwrap(), "--cell", "0"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(done_cells(&study).len(), 2);
    let r = memlab(&["report", study.to_str().unwrap()], None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = csv_rows(&study.join("results.csv"));
    let status: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert_eq!(status, ["finished", "missing", "finished", "missing"]);
    // A cell that does not exist is refused with the grid's size.
    let r = memlab(
        &["study", cfg.to_str().unwrap(), "--cell", "4"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("there is no cell 4: the study has 4"),
        "{}",
        r.stderr
    );
}

fn emm_result(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("emm.json")).unwrap()).unwrap()
}

#[test]
fn emm_on_the_optimal_denoiser_stops_at_the_maximum() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("opt.toml");
    std::fs::write(
        &cfg,
        r#"
[study]
name = "opt"
[run]
device = "cpu"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 200 }
[architecture]
name = "optimal"
[schedule]
name = "edm"
[sample]
count = 32
steps = 18
batch_size = 32
[emm]
sizes = [4, 16, 64]
# A sweep over the size key is for `memlab study`; the search ignores it.
[sweep]
"dataset.size" = [4, 16]
"#,
    )
    .unwrap();
    let r = memlab(&["emm", cfg.to_str().unwrap()], None, Some(tmp.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("every size up to the configured maximum 64 is memorized")
            && r.stdout.contains("EMM ≥ 64"),
        "{}",
        r.stdout
    );
    let e = emm_result(&tmp.path().join("studies/opt-emm"));
    assert_eq!(e[0]["status"], "at-maximum");
    assert_eq!(e[0]["emm"], 64);
    let sizes: Vec<u64> = e[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4, 16, 64]);
    for p in e[0]["points"].as_array().unwrap() {
        assert!(p["ratio"].as_f64().unwrap() >= 0.9, "{p}");
    }
    assert!(tmp.path().join("studies/opt-emm/emm.png").exists());
}

#[test]
fn emm_on_a_small_unet_brackets_consistently_with_its_ratios() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("unet.toml");
    std::fs::write(
        &cfg,
        r#"
[study]
name = "unet"
[run]
seed = 3
device = "cpu"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 200 }
[architecture]
name = "unet"
params = { channels = 16, channel_mult = [1, 2], res_blocks = 1, attention_resolutions = [], heads = 1, dropout = 0.0, learn_sigma = false }
[schedule]
name = "edm"
[train]
steps = 1200
batch_size = 8
lr = 2e-3
warmup_steps = 20
ema_decay = 0.95
snapshot_every = 400
[sample]
count = 32
steps = 10
batch_size = 32
every_snapshot = true
[emm]
sizes = [2, 64]
epsilon = 0.1
bisections = 1
"#,
    )
    .unwrap();
    let r = memlab(
        &["emm", cfg.to_str().unwrap(), "--jobs", "2"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = tmp.path().join("studies/unet-emm");
    let e = &emm_result(&dir)[0];
    let points = e["points"].as_array().unwrap();
    // Every reported ratio is the best snapshot's ratio in that size's own run.
    for p in points {
        let rep: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                dir.join("cells")
                    .join(p["cell"].as_str().unwrap())
                    .join("replication.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let best = rep["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["ratios"][0][1].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(p["ratio"].as_f64().unwrap(), best, "{p}");
        assert_eq!(rep["evaluation"]["training_images"], p["size"]);
    }
    // 2 images are memorized and 64 are not by this model, so the search brackets; the
    // bracket agrees with the ratios: lower ≥ 1 − ε > upper, with nothing evaluated between.
    assert_eq!(e["status"], "bracketed", "{e}");
    let (lo, hi) = (&e["lower"], &e["upper"]);
    assert!(
        lo["ratio"].as_f64().unwrap() >= 0.9 && hi["ratio"].as_f64().unwrap() < 0.9,
        "{e}"
    );
    let (l, h) = (lo["size"].as_u64().unwrap(), hi["size"].as_u64().unwrap());
    assert!(l < h);
    assert_eq!(e["emm"].as_u64().unwrap(), l);
    assert!(points.iter().all(|p| {
        let s = p["size"].as_u64().unwrap();
        s <= l || s >= h
    }));
    assert_eq!(points.len(), 3, "grid of 2 plus one bisection: {e}");
    assert!(
        r.stdout.contains(&format!("EMM is between {l}")),
        "{}",
        r.stdout
    );
    // Re-running reuses every finished run.
    let r2 = memlab(&["emm", cfg.to_str().unwrap()], None, Some(tmp.path()));
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(!r2.stderr.contains("train step"), "{}", r2.stderr);
    assert_eq!(emm_result(&dir)[0]["emm"], e["emm"]);
}

/// The exported array job on a real Slurm cluster: `tests/slurm/start.sh` starts a single-node
/// one (`.ci/run` does, and sets `MEMLAB_SLURM=1` when it came up). Without it the test says so
/// and passes; with `MEMLAB_SLURM=1` a missing or broken cluster fails it.
#[test]
fn slurm_array_job_runs_every_cell_on_a_real_cluster() {
    if std::env::var("MEMLAB_SLURM").as_deref() != Ok("1") {
        eprintln!("skipped: set MEMLAB_SLURM=1 after tests/slurm/start.sh to run against Slurm");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sweep_config(tmp.path(), 30);
    // Resources of the array tasks come from [study.slurm].
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[run]",
        "[study.slurm]\ncpus_per_task = 1\ntime = \"00:10:00\"\nmax_parallel = 2\n\n[run]",
    );
    std::fs::write(&cfg, text).unwrap();
    let study = tmp.path().join("studies/grid");
    let r = memlab(
        &["study", cfg.to_str().unwrap(), "--slurm"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let script = study.join("slurm.sh");
    assert!(
        std::fs::read_to_string(&script)
            .unwrap()
            .contains("#SBATCH --array=0-3%2\n")
    );
    let out = Command::new("sbatch")
        .arg("--wait")
        .arg(&script)
        .env_remove("MEMLAB_PLUGIN_PATH")
        .output()
        .expect("sbatch");
    assert!(
        out.status.success(),
        "sbatch --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // One task per cell, each wrote its own log and finished its own cell.
    let logs = std::fs::read_dir(study.join("slurm")).unwrap().count();
    assert_eq!(logs, 4, "one log per array task");
    assert_eq!(done_cells(&study).len(), 4);
    let r = memlab(&["report", study.to_str().unwrap()], None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = csv_rows(&study.join("results.csv"));
    assert_eq!(rows.len(), 5);
    assert!(rows[1..].iter().all(|r| r[2] == "finished"), "{rows:?}");
}
