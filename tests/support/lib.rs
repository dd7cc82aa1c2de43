//! Helpers shared by the end-to-end tests: where the built binary and plugins are, building
//! the out-of-workspace fixture plugins, running the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo profile directory the tests were built into (`target/debug`), where the
/// `memlab` binary and the plugin libraries are.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The `memlab` binary. Panics with instructions if it (or the plugins) were not built.
pub fn memlab_bin() -> PathBuf {
    let bin = profile_dir().join(format!("memlab{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists() && plugin_file("memlab_synthetic").exists(),
        "{} or the plugin libraries are missing: run the README's test command \
         (`cargo build --workspace && cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// Path of a built plugin library by crate name with underscores (`memlab_synthetic`).
pub fn plugin_file(crate_name: &str) -> PathBuf {
    profile_dir().join(format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// Builds the fixture plugins in `tests/fixtures` (a separate workspace, as a researcher's
/// own plugin would be) once per test process; returns the directory holding the libraries.
pub fn fixture_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = root().join("target").join("fixtures");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "--manifest-path"])
            .arg(root().join("tests/fixtures/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("running cargo to build the fixture plugins");
        assert!(
            out.status.success(),
            "building fixture plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug")
    })
    .clone()
}

/// A fixture library path (`external_plugin`, `bad_abi`).
pub fn fixture_file(crate_name: &str) -> PathBuf {
    fixture_dir().join(format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// Result of one CLI run.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `memlab ARGS` with `MEMLAB_PLUGIN_PATH` set to `plugin_path` (or unset).
pub fn memlab(args: &[&str], plugin_path: Option<&Path>, cwd: Option<&Path>) -> Run {
    let mut cmd = Command::new(memlab_bin());
    cmd.args(args);
    cmd.env_remove("MEMLAB_PLUGIN_PATH");
    if let Some(p) = plugin_path {
        cmd.env("MEMLAB_PLUGIN_PATH", p);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().expect("running memlab").into()
}

/// Runs `memlab run CONFIG --out OUT [--set S]...` with no extra plugin path.
pub fn memlab_run(cfg: &Path, out: &Path, sets: &[&str]) -> Run {
    let mut args = vec!["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    memlab(&args, None, None)
}
