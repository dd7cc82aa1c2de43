//! The plugin boundary, end to end: discovery, listing, external plugins, ABI mismatches,
//! broken files, duplicates, panics.

use memlab_e2e::*;
use serde_json::Value;

fn rows(stdout: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(stdout)
        .expect("JSON output")
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn builtin_plugins_cover_all_five_kinds() {
    let r = memlab(&["plugins", "--json"], None, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = rows(&r.stdout);
    for (kind, name) in [
        ("dataset", "mondrian"),
        ("dataset", "gaussian-mixture"),
        ("dataset", "random-ink"),
        ("dataset", "cifar10"),
        ("dataset", "mnist"),
        ("dataset", "image-folder"),
        ("schedule", "edm"),
        ("schedule", "vp"),
        ("schedule", "ve"),
        ("schedule", "linear"),
        ("schedule", "cosine"),
        ("conditioning", "none"),
        ("conditioning", "class"),
        ("conditioning", "random"),
        ("conditioning", "unique"),
        ("architecture", "convnet"),
        ("architecture", "mlp"),
        ("architecture", "unet"),
        ("architecture", "ddpmpp"),
        ("architecture", "optimal"),
        ("criterion", "ratio"),
        ("criterion", "l2"),
        ("criterion", "linf"),
        ("criterion", "carlini"),
    ] {
        assert!(
            rows.iter().any(|r| r["kind"] == kind && r["name"] == name),
            "{kind} {name} missing from {rows:?}"
        );
    }
    // Table form names the library and version of each.
    let t = memlab(&["plugins"], None, None);
    assert!(
        t.stdout.contains("memlab-synthetic") && t.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        t.stdout
    );
}

#[test]
fn external_plugin_is_loaded_from_memlab_plugin_path() {
    let dir = fixture_dir();
    let r = memlab(&["plugins", "--json"], Some(&dir), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = rows(&r.stdout);
    let ext = rows
        .iter()
        .find(|r| r["name"] == "external-checker")
        .expect("external dataset listed");
    assert_eq!(ext["library"], "external-plugin");
    assert_eq!(ext["version"], "0.3.1");
    assert!(
        rows.iter()
            .any(|r| r["name"] == "external-panicky" && r["kind"] == "architecture")
    );
    // Built-ins still there.
    assert!(rows.iter().any(|r| r["name"] == "mondrian"));
}

#[test]
fn incompatible_plugin_is_refused_and_the_rest_load() {
    let dir = fixture_dir();
    let bad = fixture_file("bad_abi");
    let r = memlab(&["plugins", "--json"], Some(&dir), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&bad.display().to_string()),
        "names the file: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("does not match"),
        "says why: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("mismatched package"),
        "names the mismatch: {}",
        r.stderr
    );
    let rows = rows(&r.stdout);
    assert!(rows.iter().any(|r| r["name"] == "external-checker"));
    assert!(rows.iter().any(|r| r["name"] == "ratio"));

    let c = memlab(&["plugins", "--check", bad.to_str().unwrap()], None, None);
    assert_eq!(c.code, 1);
    assert!(c.stderr.contains("does not match"), "{}", c.stderr);
}

#[test]
fn a_plugin_built_against_an_older_api_is_refused_by_version() {
    // plugin-api 0.2 changed `ArchInfo`; a library built against 0.1 must not be loaded.
    let dir = fixture_dir();
    let old = fixture_file("old_api");
    let r = memlab(&["plugins", "--json"], Some(&dir), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&old.display().to_string()))
        .unwrap_or_else(|| panic!("names the file: {}", r.stderr));
    assert!(
        line.contains("incompatible memlab-plugin-api version")
            && line.contains(&format!("host uses {}", memlab_plugin_api::API_VERSION))
            && line.contains("(0.1.0;")
            && line.contains("rebuild it"),
        "says which versions: {line}"
    );
    assert!(
        rows(&r.stdout)
            .iter()
            .any(|r| r["name"] == "external-checker")
    );

    let c = memlab(&["plugins", "--check", old.to_str().unwrap()], None, None);
    assert_eq!(c.code, 1);
    assert!(
        c.stderr.contains("incompatible memlab-plugin-api version"),
        "{}",
        c.stderr
    );
}

#[test]
fn check_reports_a_good_library() {
    let lib = fixture_file("external_plugin");
    let c = memlab(&["plugins", "--check", lib.to_str().unwrap()], None, None);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(c.stdout.contains("external-plugin 0.3.1"), "{}", c.stdout);
    assert!(c.stdout.contains("external-checker"), "{}", c.stdout);
}

#[test]
fn missing_and_non_plugin_files_are_reported_with_their_path() {
    let c = memlab(
        &["plugins", "--check", "/definitely/not/here.so"],
        None,
        None,
    );
    assert_eq!(c.code, 1);
    assert!(
        c.stderr.contains("/definitely/not/here.so") && c.stderr.contains("not found"),
        "{}",
        c.stderr
    );

    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join(format!(
        "{}junk{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    std::fs::write(&junk, b"this is not a shared library").unwrap();
    let r = memlab(&["plugins", "--json"], Some(tmp.path()), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&junk.display().to_string()),
        "{}",
        r.stderr
    );
    // Refused by the structural check before the dynamic loader sees it.
    assert!(r.stderr.contains("not an ELF"), "{}", r.stderr);
    assert!(
        rows(&r.stdout).iter().any(|r| r["name"] == "mondrian"),
        "others still load"
    );
}

#[test]
fn duplicate_component_names_are_an_error_naming_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp
        .path()
        .join(plugin_file("memlab_criteria").file_name().unwrap());
    std::fs::copy(plugin_file("memlab_criteria"), &copy).unwrap();
    let r = memlab(&["plugins"], Some(tmp.path()), None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("duplicate criterion `ratio`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&copy.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            &plugin_file("memlab_criteria")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        )
    );
}
