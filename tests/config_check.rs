//! `memlab config check`: good configs pass; bad ones name the file, the key and the cause,
//! with exit code 2.

use std::path::Path;

use memlab_e2e::*;

const GOOD: &str = r#"
[run]
name = "check-me"
seed = 1

[dataset]
name = "mondrian"
params = { resolution = 16, size = 64 }

[architecture]
name = "convnet"
params = { channels = 16 }

[schedule]
name = "edm"

[[criteria]]
name = "ratio"
params = { threshold = 0.3333 }

[train]
steps = 10
batch_size = 8
"#;

fn check(text: &str) -> (Run, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("study.toml");
    std::fs::write(&file, text).unwrap();
    let r = memlab(&["config", "check", file.to_str().unwrap()], None, None);
    (r, file, dir)
}

fn assert_error(r: &Run, file: &Path, key: &str, cause: &str) {
    assert_eq!(
        r.code, 2,
        "exit code 2; stdout {} stderr {}",
        r.stdout, r.stderr
    );
    let f = file.display().to_string();
    assert!(r.stderr.contains(&f), "names the file {f}: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!("key `{key}`")),
        "names the key {key}: {}",
        r.stderr
    );
    assert!(r.stderr.contains(cause), "says `{cause}`: {}", r.stderr);
}

#[test]
fn a_good_config_passes() {
    let (r, _, _d) = check(GOOD);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(": ok"), "{}", r.stdout);
}

#[test]
fn a_misspelled_key_is_named() {
    let (r, f, _d) = check(&GOOD.replace("batch_size = 8", "bach_size = 8"));
    assert_error(&r, &f, "train.bach_size", "unknown field `bach_size`");
    assert!(
        r.stderr.contains("batch_size"),
        "lists valid keys: {}",
        r.stderr
    );
}

#[test]
fn a_missing_plugin_is_named() {
    let (r, f, _d) = check(&GOOD.replace("name = \"convnet\"", "name = \"unet9\""));
    assert_error(&r, &f, "architecture.name", "no architecture named `unet9`");
    assert!(
        r.stderr.contains("convnet"),
        "lists what is available: {}",
        r.stderr
    );
}

#[test]
fn every_missing_component_is_reported_in_one_run() {
    let text = GOOD
        .replace("name = \"convnet\"", "name = \"unet9\"")
        .replace("name = \"edm\"", "name = \"edm2\"")
        .replace("name = \"ratio\"", "name = \"ratoi\"")
        .replace("resolution = 16", "resolutoin = 16");
    let (r, f, _d) = check(&text);
    assert_error(&r, &f, "dataset.params", "unknown field `resolutoin`");
    assert_error(&r, &f, "architecture.name", "no architecture named `unet9`");
    assert_error(&r, &f, "schedule.name", "no schedule named `edm2`");
    assert_error(&r, &f, "criteria[0].name", "no criterion named `ratoi`");
    assert_eq!(r.stderr.matches("error: ").count(), 4, "{}", r.stderr);
}

#[test]
fn bad_plugin_params_are_reported_by_the_plugin() {
    let (r, f, _d) = check(&GOOD.replace("resolution = 16", "resolutoin = 16"));
    assert_error(&r, &f, "dataset.params", "unknown field `resolutoin`");
    assert!(
        r.stderr.contains("memlab-synthetic"),
        "names the plugin: {}",
        r.stderr
    );

    let (r, f, _d) = check(&GOOD.replace("threshold = 0.3333", "threshold = 3.0"));
    assert_error(&r, &f, "criteria[0].params", "threshold must be in (0, 1]");
}

#[test]
fn a_bad_host_value_is_named() {
    let (r, f, _d) = check(&GOOD.replace("batch_size = 8", "batch_size = 0"));
    assert_error(&r, &f, "train.batch_size", "at least 1");
}

#[test]
fn invalid_toml_is_reported_with_its_line() {
    let (r, f, _d) = check(&GOOD.replace("seed = 1", "seed = = 1"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&f.display().to_string()) && r.stderr.contains("line 4"),
        "{}",
        r.stderr
    );
}

/// Stand-in CIFAR-10 files in the binary format (one record per class per batch) under
/// `dir/data/cifar10`, where the paper configs expect `memlab data fetch cifar10` to put the
/// real ones: `config check` constructs every dataset, so it needs files to read.
fn fake_cifar(dir: &std::path::Path) {
    let d = dir.join("data/cifar10");
    std::fs::create_dir_all(&d).unwrap();
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        let mut bytes = Vec::new();
        for label in 0..10u8 {
            bytes.push(label);
            bytes.extend((0..3072u32).map(|i| (i * 7 + label as u32) as u8));
        }
        std::fs::write(d.join(format!("{name}.bin")), bytes).unwrap();
    }
}

#[test]
fn every_shipped_config_passes() {
    let dir = root().join("configs");
    let tmp = tempfile::tempdir().unwrap();
    fake_cifar(tmp.path());
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            // Configs on the shared real data name it relative to the repository root, where
            // they are documented to run from; the others run beside the stand-in files.
            let real = std::fs::read_to_string(&p)
                .unwrap()
                .contains("\"../shared/data/");
            if real {
                assert!(
                    root().join("../shared/data").is_dir(),
                    "{} reads ../shared/data, expected beside the repository",
                    p.display()
                );
            }
            let cwd = if real {
                root()
            } else {
                tmp.path().to_path_buf()
            };
            let r = memlab(&["config", "check", p.to_str().unwrap()], None, Some(&cwd));
            assert_eq!(r.code, 0, "{}: {}", p.display(), r.stderr);
            n += 1;
        }
    }
    // quickstart, the examples, and both papers' experiments in cpu and paper sizes.
    assert!(n >= 8, "configs/ holds {n} configs");
}

#[test]
fn an_architecture_that_ignores_labels_refuses_class_conditioning() {
    let optimal = GOOD.replace(
        "name = \"convnet\"\nparams = { channels = 16 }",
        "name = \"optimal\"",
    );
    let (r, f, _d) = check(&format!("{optimal}\n[conditioning]\nname = \"class\"\n"));
    assert_error(&r, &f, "conditioning.name", "ignores class labels");
    for part in [
        "conditioning `class` (plugin memlab-conditioning)",
        "architecture `optimal` (plugin memlab-optimal)",
        "`architecture.name`",
    ] {
        assert!(r.stderr.contains(part), "names {part}: {}", r.stderr);
    }
    // Unconditional, the same architecture is fine.
    let (ok, _, _d) = check(&format!("{optimal}\n[conditioning]\nname = \"none\"\n"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // A network that embeds labels accepts class conditioning.
    let (ok, _, _d) = check(&format!("{GOOD}\n[conditioning]\nname = \"class\"\n"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

#[test]
fn every_problem_of_a_study_is_reported_in_one_run() {
    let study = GOOD
        .replace(
            "[run]\nname = \"check-me\"",
            "[study]\nname = \"check-me\"\n[run]",
        )
        .replace("name = \"edm\"", "name = \"edm2\"")
        .replace("name = \"ratio\"", "name = \"ratoi\"")
        + r#"
[conditioning]
name = "class"

[sweep]
"architecture" = [{ name = "convnet" }, { name = "optimal" }, { name = "unet9" }]
"#;
    let (r, f, _d) = check(&study);
    // In every cell, reported once with the count of the others.
    assert_error(&r, &f, "schedule.name", "no schedule named `edm2`");
    assert_error(&r, &f, "criteria[0].name", "no criterion named `ratoi`");
    assert!(
        r.stderr
            .contains("(in cell 0: architecture = { name = \"convnet\" }, and in 2 other cells)"),
        "{}",
        r.stderr
    );
    // Only in their cells.
    assert_error(&r, &f, "conditioning.name", "ignores class labels");
    assert!(r.stderr.contains("in cell 1: architecture"), "{}", r.stderr);
    assert_error(&r, &f, "architecture.name", "no architecture named `unet9`");
    assert!(r.stderr.contains("in cell 2: architecture"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("error: ").count(), 4, "{}", r.stderr);
}
