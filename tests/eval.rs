//! Replication evaluation end to end: the ratio criterion on hand-built and random cases, the
//! optimum (which copies) vs fresh draws (which do not), and re-evaluation without retraining.

use std::path::Path;

use memlab::eval::evaluate;
use memlab::plugins::Registry;
use memlab_e2e::*;
use memlab_plugin_api::SplitMix64;

fn ratio_criterion(reg: &Registry) -> Vec<(String, memlab::plugins::CriterionHandle)> {
    vec![("ratio".into(), reg.criterion("ratio", "", 0).unwrap())]
}

#[test]
fn ratio_criterion_on_hand_built_cases() {
    let reg = Registry::load(&[]).unwrap();
    let dim = 4;
    // Training images: a, b, and a duplicated pair c, c.
    let a = [1.0f32, 0.0, 0.0, 0.0];
    let b = [0.0f32, 1.0, 0.0, 0.0];
    let c = [0.0f32, 0.0, 1.0, 1.0];
    let train: Vec<f32> = [a, b, c, c].concat();
    let midway: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
    let near_a: Vec<f32> = a.iter().map(|x| x + 0.01).collect();
    let samples: Vec<f32> = [a.to_vec(), midway, c.to_vec(), near_a].concat();
    let ev = evaluate(
        &samples,
        &[0; 4],
        &["0".into()],
        &train,
        [1, 1, dim],
        &ratio_criterion(&reg),
        &memlab::engine::cpu(),
    )
    .unwrap();
    let r = &ev.criteria[0];
    // exact copy: d1 = 0 → replicate; midway: d1 = d2 → not; copy of a duplicated training
    // image: d1 = d2 = 0 → equally close to two images → not; tiny perturbation → replicate.
    assert_eq!(r.flags, vec![true, false, false, true]);
    assert_eq!(r.scores[0], 0.0);
    assert!((r.scores[1] - 1.0).abs() < 1e-6);
    assert_eq!(r.distinct_replicated, 1, "both replicates copy image a");
}

#[test]
fn ratio_criterion_matches_brute_force_on_random_data() {
    let reg = Registry::load(&[]).unwrap();
    let mut g = SplitMix64(17);
    let dim = 32;
    let n = 200;
    let train: Vec<f32> = (0..n * dim)
        .map(|_| (g.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    // Half the samples are noisy copies of training images, half fresh points.
    let mut samples = Vec::new();
    for i in 0..100 {
        if i % 2 == 0 {
            let j = g.below(n as u64) as usize;
            let s = 0.05 * (i as f32 / 100.0) * 10.0;
            samples.extend(
                train[j * dim..(j + 1) * dim]
                    .iter()
                    .map(|v| v + s * (g.next_f64() as f32 - 0.5)),
            );
        } else {
            samples.extend((0..dim).map(|_| (g.next_f64() * 2.0 - 1.0) as f32));
        }
    }
    let ev = evaluate(
        &samples,
        &[0; 100],
        &["0".into()],
        &train,
        [1, 1, dim],
        &ratio_criterion(&reg),
        &memlab::engine::cpu(),
    )
    .unwrap();
    let mut expect = 0;
    for s in samples.chunks(dim) {
        let mut d: Vec<f64> = train
            .chunks(dim)
            .map(|t| {
                t.iter()
                    .zip(s)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        d.sort_by(f64::total_cmp);
        if d[0] / d[1] < 1.0 / 3.0 {
            expect += 1;
        }
    }
    assert_eq!(ev.criteria[0].replicates, expect);
    assert!(
        expect > 20 && expect < 80,
        "a mix of replicates and non-replicates: {expect}"
    );
}

const OPTIMAL: &str = r#"
[run]
name = "opt100"
seed = 2
device = "cpu"

[dataset]
name = "mondrian"
params = { resolution = 8, size = 100 }

[architecture]
name = "optimal"

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[sample]
count = 100
steps = 18
batch_size = 100
"#;

#[test]
fn optimum_copies_fresh_draws_do_not_and_criteria_change_without_retraining() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("opt.toml");
    std::fs::write(&cfg, OPTIMAL).unwrap();
    let out = tmp.path().join("runs");
    let r = memlab(
        &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("opt100");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("replication.json")).unwrap()).unwrap();
    let ratio = rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap();
    assert!(ratio >= 0.99, "optimal denoiser memorization ratio {ratio}");

    // Fresh Mondrian draws (images 100..199 of the same seeded stream) evaluated as samples.
    let reg = Registry::load(&[]).unwrap();
    let mut ds = reg
        .dataset("mondrian", "resolution = 8\nsize = 300", 2)
        .unwrap();
    let ids: Vec<u64> = (100..200).collect();
    let (fresh, _) = ds.fill(&ids).unwrap();
    let fresh_path = tmp.path().join("fresh.npy");
    memlab::io::output::write_npy_f32(&fresh_path, &[100, 3, 8, 8], &fresh).unwrap();
    let e = memlab(
        &[
            "eval",
            run.to_str().unwrap(),
            "--samples",
            fresh_path.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    let dir = e
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .expect("results line");
    assert!(dir.contains("evals/fresh-"), "{dir}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(dir).join("evaluation.json")).unwrap())
            .unwrap();
    let fresh_ratio = rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap();
    assert!(
        fresh_ratio <= 0.02,
        "fresh draws flagged as replicates: {fresh_ratio}"
    );

    // Another criterion through `memlab eval --set`: the same fresh draws, judged by an
    // absolute L2 threshold larger than any distance here, are all "replicates".
    let e = memlab(
        &[
            "eval",
            run.to_str().unwrap(),
            "--samples",
            fresh_path.to_str().unwrap(),
            "--out",
            tmp.path().join("l2").to_str().unwrap(),
            "--set",
            "criteria=[{name = \"l2\", params = { threshold = 1000.0 }}]",
        ],
        None,
        None,
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("l2/evaluation.json")).unwrap())
            .unwrap();
    assert_eq!(rep["evaluation"]["criteria"][0]["name"], "l2");
    assert_eq!(
        rep["evaluation"]["criteria"][0]["ratio"].as_f64().unwrap(),
        1.0
    );
}

#[test]
fn changing_criteria_in_the_config_does_not_retrain() {
    let tmp = tempfile::tempdir().unwrap();
    let text = r#"
[run]
name = "crit"
device = "cpu"
[dataset]
name = "mondrian"
params = { resolution = 8, size = 16 }
[architecture]
name = "convnet"
params = { channels = 8, blocks = 1 }
[schedule]
name = "edm"
[[criteria]]
name = "ratio"
[train]
steps = 4
batch_size = 4
snapshot_every = 2
[sample]
count = 8
steps = 3
"#;
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("o");
    let r = memlab(
        &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let metrics_before = std::fs::read_to_string(out.join("crit/metrics.jsonl")).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "name = \"ratio\"",
            "name = \"linf\"\nparams = { threshold = 0.5 }",
        ),
    )
    .unwrap();
    let r = memlab(
        &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("resuming from"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("train step"),
        "no training step ran: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("crit/metrics.jsonl")).unwrap(),
        metrics_before
    );
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("crit/replication.json")).unwrap()).unwrap();
    assert_eq!(rep["evaluation"]["criteria"][0]["name"], "linf");
}
