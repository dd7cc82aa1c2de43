//! `memlab new`: one plugin of each kind is scaffolded into a temporary folder, built there
//! (outside the workspace, offline, one shared target directory so plugin-api compiles once),
//! unit-tested, checked with `memlab plugins --check` and run with its `example.toml`. PLUGINS.md
//! shows exactly these files, so its examples compile whenever this test passes.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use memlab_e2e::*;

const KINDS: [&str; 5] = [
    "architecture",
    "schedule",
    "conditioning",
    "dataset",
    "criterion",
];

/// Runs cargo `args` on the crate in `dir`, offline, into the shared target directory.
fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .args(["--offline", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(root().join("target").join("scaffold"))
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every template: one per kind, and `memlab new criterion --images` (named `my-image-criterion`).
fn templates() -> Vec<(&'static str, String, bool)> {
    let mut v: Vec<_> = KINDS
        .iter()
        .map(|k| (*k, format!("my-{k}"), false))
        .collect();
    v.push(("criterion", "my-image-criterion".into(), true));
    v
}

#[test]
fn every_kind_scaffolds_builds_loads_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let libs = root().join("target").join("scaffold").join("debug");
    for (kind, name, images) in templates() {
        let start = Instant::now();
        let dir = tmp.path().join(&name);
        let mut args = vec!["new", kind, &name, "--dir", dir.to_str().unwrap()];
        if images {
            args.push("--images");
        }
        let r = memlab(&args, None, None);
        assert_eq!(r.code, 0, "memlab new {kind}: {}", r.stderr);
        for f in [
            "Cargo.toml",
            "src/lib.rs",
            "example.toml",
            "README.md",
            ".gitignore",
        ] {
            assert!(dir.join(f).is_file(), "{kind}: {f} missing");
        }
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let lib = memlab::cli::scaffold::library_file(&name);
        for cmd in [
            "cargo build".to_string(),
            format!("memlab plugins --check target/debug/{lib}"),
            "memlab run example.toml --plugin-dir target/debug".to_string(),
        ] {
            assert!(readme.contains(&cmd), "{kind}: README lacks `{cmd}`");
        }

        cargo(&dir, &["test"]);
        cargo(&dir, &["build"]);
        let file = libs.join(&lib);
        let check = memlab(&["plugins", "--check", file.to_str().unwrap()], None, None);
        assert_eq!(check.code, 0, "{kind}: {}", check.stderr);
        assert!(
            check.stdout.contains(&format!("{kind}  {name}")),
            "{kind}: {}",
            check.stdout
        );

        let run = memlab(
            &[
                "run",
                "example.toml",
                "--plugin-dir",
                libs.to_str().unwrap(),
            ],
            None,
            Some(&dir),
        );
        assert_eq!(run.code, 0, "{kind} run: {}\n{}", run.stdout, run.stderr);
        let lock = std::fs::read_to_string(dir.join("runs").join(&name).join("plugins.lock"))
            .expect("plugins.lock");
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        let used = lock["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name.as_str() && c["library"] == name.as_str());
        assert!(used, "{kind}: the run did not use {name}: {lock}");
        let rep: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("runs").join(&name).join("replication.json"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(rep["steps"], 10, "{kind}");
        eprintln!("{kind}: {:.1} s", start.elapsed().as_secs_f64());
    }
}

#[test]
fn mistakes_are_named_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let r = memlab(&["new", "foo", "bar"], None, Some(tmp.path()));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(
            "unknown kind `foo` (architecture, schedule, conditioning, dataset, criterion)"
        ),
        "{}",
        r.stderr
    );
    let r = memlab(&["new", "dataset", "my data"], None, Some(tmp.path()));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("invalid plugin name `my data`"),
        "{}",
        r.stderr
    );

    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let r = memlab(
        &["new", "criterion", "c", "--dir", busy.to_str().unwrap()],
        None,
        None,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("refusing to overwrite"), "{}", r.stderr);
    assert!(r.stderr.contains(busy.to_str().unwrap()), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // Depending by version instead of by path.
    let r = memlab(
        &["new", "schedule", "s", "--api-version", "0.1"],
        None,
        Some(tmp.path()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let manifest = std::fs::read_to_string(tmp.path().join("s/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("memlab-plugin-api = \"0.1\""),
        "{manifest}"
    );
}

/// Every ```rust block of PLUGINS.md is one of the files `memlab new` writes (and the test
/// above builds), byte for byte, and every kind has its block.
#[test]
fn plugins_md_examples_are_the_scaffold_templates() {
    let doc = std::fs::read_to_string(root().join("PLUGINS.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(i) = rest.find("```rust\n") {
        let body = &rest[i + "```rust\n".len()..];
        let end = body.find("\n```").expect("unterminated ```rust block");
        blocks.push(format!("{}\n", &body[..end]));
        rest = &body[end..];
    }
    let api = memlab::cli::scaffold::ApiDependency::Version("0.1".into());
    let mut expected = Vec::new();
    for (kind, name, images) in templates() {
        let k = memlab::cli::scaffold::parse_kind(kind).unwrap();
        let t = memlab::cli::scaffold::Template::new(k, images).unwrap();
        let files = memlab::cli::scaffold::render(t, &name, &api);
        let lib = files.iter().find(|(p, _)| *p == "src/lib.rs").unwrap();
        assert!(
            blocks.contains(&lib.1),
            "PLUGINS.md lacks the {kind} example {name} (host/templates/{kind}{}/lib.rs rendered \
             as `memlab new {kind} {name}{}` writes it)",
            if images { "-images" } else { "" },
            if images { " --images" } else { "" },
        );
        expected.push(lib.1.clone());
    }
    for (i, b) in blocks.iter().enumerate() {
        assert!(
            expected.contains(b),
            "```rust block {} of PLUGINS.md is not a scaffold template; such code is not \
             compiled by any test (use ```text, or change the template):\n{b}",
            i + 1
        );
    }
}
