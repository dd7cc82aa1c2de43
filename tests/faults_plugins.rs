//! Fault injection at the plugin boundary: damaged library files on the plugin path (cut inside
//! a loaded segment, cut after it, a zeroed header, corrupted relocations that crash the
//! dynamic loader) must never take a command down. Each is reported with its path and reason,
//! the exit status is a normal one (not a signal), and the other libraries still load.

use std::path::{Path, PathBuf};

use memlab_e2e::*;

/// A fresh copy of a built plugin library in `dir`, under `name`.
fn copy_plugin(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(plugin_file("memlab_criteria"), &dst).unwrap();
    dst
}

fn lib_name(stem: &str) -> String {
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Asserts the process exited normally with `code` (a signal gives no code: -1 in [`Run`]).
fn assert_exit(r: &Run, code: i32) {
    assert_eq!(
        r.code, code,
        "expected exit status {code}, not a crash\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
}

/// Built-in components still listed (their libraries loaded beside the damaged one).
fn assert_builtins_listed(r: &Run) {
    for name in ["mondrian", "edm", "convnet", "ratio"] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} missing:\n{}",
            r.stdout
        );
    }
}

#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little"
))]
mod elf {
    //! Where to damage an ELF library, read with the `object` crate.
    use object::Endianness;
    use object::elf::{FileHeader64, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

    /// File range `(start, end)` of the last non-empty `PT_LOAD` segment.
    pub fn last_load_segment(bytes: &[u8]) -> (u64, u64) {
        let h = FileHeader64::<Endianness>::parse(bytes).unwrap();
        let e = h.endian().unwrap();
        h.program_headers(e, bytes)
            .unwrap()
            .iter()
            .filter(|p| p.p_type(e) == PT_LOAD && p.p_filesz(e) > 0)
            .map(|p| {
                let (o, s) = p.file_range(e);
                (o, o + s)
            })
            .max_by_key(|&(_, end)| end)
            .unwrap()
    }

    /// Points every dynamic relocation (`.rela.dyn`, 24-byte `Elf64_Rela`) at an unmapped
    /// address, so the dynamic loader faults while relocating: damage no header check can see.
    pub fn corrupt_relocations(bytes: &mut [u8]) {
        let (off, size) = {
            let h = FileHeader64::<Endianness>::parse(&*bytes).unwrap();
            let e = h.endian().unwrap();
            let sections = h.sections(e, &*bytes).unwrap();
            let (_, rela) = sections
                .section_by_name(e, b".rela.dyn")
                .expect("a .rela.dyn section");
            (rela.sh_offset(e) as usize, rela.sh_size(e) as usize)
        };
        assert!(size >= 24, "no dynamic relocations to corrupt");
        for r in bytes[off..off + size].chunks_exact_mut(24) {
            r[..8].copy_from_slice(&0x7fff_ffff_0000u64.to_le_bytes());
        }
    }
}

#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little"
))]
#[test]
fn a_library_cut_inside_a_loaded_segment_is_reported_and_the_rest_load() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = copy_plugin(tmp.path(), &lib_name("cut_copy"));
    let bytes = std::fs::read(&lib).unwrap();
    let (start, end) = elf::last_load_segment(&bytes);
    let cut = (start + end) / 2;
    std::fs::write(&lib, &bytes[..cut as usize]).unwrap();
    let reason = format!("needs bytes up to {end}, the file has {cut}");

    // Every command that loads the plugin path survives and names the file and the reason.
    let list = memlab(
        &["plugins", "--plugin-dir", tmp.path().to_str().unwrap()],
        None,
        None,
    );
    assert_exit(&list, 0);
    let warning = list
        .stderr
        .lines()
        .find(|l| l.contains(&lib.display().to_string()))
        .unwrap_or_else(|| panic!("names the file:\n{}", list.stderr));
    assert!(
        warning.contains("truncated: loaded segment") && warning.contains(&reason),
        "{warning}"
    );
    assert_builtins_listed(&list);

    // The same library on MEMLAB_PLUGIN_PATH.
    let env = memlab(&["plugins"], Some(tmp.path()), None);
    assert_exit(&env, 0);
    assert!(env.stderr.contains(&reason), "{}", env.stderr);
    assert_builtins_listed(&env);

    // `--check` with the full path, and with the bare file name from its directory.
    let full = memlab(&["plugins", "--check", lib.to_str().unwrap()], None, None);
    assert_exit(&full, 1);
    assert!(
        full.stderr.contains(&lib.display().to_string()) && full.stderr.contains(&reason),
        "{}",
        full.stderr
    );
    let bare_name = lib.file_name().unwrap().to_str().unwrap();
    let bare = memlab(&["plugins", "--check", bare_name], None, Some(tmp.path()));
    assert_exit(&bare, 1);
    assert!(
        bare.stderr.contains(bare_name) && bare.stderr.contains(&reason),
        "{}",
        bare.stderr
    );

    // A config check and a short run with the damaged copy beside the good libraries.
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        r#"
[run]
name = "faulty-plugin-dir"
seed = 3
device = "cpu"

[dataset]
name = "mondrian"
params = { resolution = 8, size = 8 }

[architecture]
name = "convnet"
params = { channels = 8, blocks = 1 }

[schedule]
name = "edm"

[[criteria]]
name = "ratio"

[train]
steps = 2
batch_size = 4

[sample]
count = 4
steps = 2
batch_size = 4
"#,
    )
    .unwrap();
    let dir_arg = tmp.path().to_str().unwrap();
    let check = memlab(
        &[
            "config",
            "check",
            cfg.to_str().unwrap(),
            "--plugin-dir",
            dir_arg,
        ],
        None,
        None,
    );
    assert_exit(&check, 0);
    assert!(
        check.stderr.contains(&lib.display().to_string()) && check.stderr.contains(&reason),
        "{}",
        check.stderr
    );
    let out = tmp.path().join("runs");
    let run = memlab(
        &[
            "run",
            cfg.to_str().unwrap(),
            "--plugin-dir",
            dir_arg,
            "--out",
            out.to_str().unwrap(),
        ],
        None,
        None,
    );
    assert_exit(&run, 0);
    assert!(run.stderr.contains(&reason), "{}", run.stderr);
    assert!(run.stdout.contains("memorization ratio"), "{}", run.stdout);
}

#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little"
))]
#[test]
fn other_damage_is_reported_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // Cut at 60% of its length (past the segments of a debug build: the section headers are lost).
    let short = copy_plugin(tmp.path(), &lib_name("sixty_percent"));
    let bytes = std::fs::read(&short).unwrap();
    std::fs::write(&short, &bytes[..bytes.len() * 6 / 10]).unwrap();
    // A zeroed ELF header.
    let zeroed = copy_plugin(tmp.path(), &lib_name("zeroed_header"));
    let mut z = bytes.clone();
    z[..64].fill(0);
    std::fs::write(&zeroed, &z).unwrap();
    // An empty file.
    let empty = tmp.path().join(lib_name("empty"));
    std::fs::write(&empty, b"").unwrap();

    let r = memlab(&["plugins"], Some(tmp.path()), None);
    assert_exit(&r, 0);
    let line_for = |p: &Path| {
        r.stderr
            .lines()
            .find(|l| l.contains(&p.display().to_string()))
            .unwrap_or_else(|| panic!("{} not reported:\n{}", p.display(), r.stderr))
            .to_string()
    };
    assert!(line_for(&short).contains("truncated"), "{}", r.stderr);
    assert!(line_for(&zeroed).contains("not an ELF"), "{}", r.stderr);
    assert!(line_for(&empty).contains("empty"), "{}", r.stderr);
    assert_builtins_listed(&r);
}

/// Damage the header checks cannot see crashes the dynamic loader: the probe process takes the
/// crash and the host reports it, naming the signal.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little"
))]
#[test]
fn a_library_that_crashes_the_loader_is_reported_with_the_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = copy_plugin(tmp.path(), &lib_name("wild_relocations"));
    let mut bytes = std::fs::read(&lib).unwrap();
    elf::corrupt_relocations(&mut bytes);
    std::fs::write(&lib, &bytes).unwrap();

    let r = memlab(&["plugins"], Some(tmp.path()), None);
    assert_exit(&r, 0);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&lib.display().to_string()))
        .unwrap_or_else(|| panic!("names the file:\n{}", r.stderr));
    assert!(line.contains("crashed the probe process (signal"), "{line}");
    assert_builtins_listed(&r);

    let c = memlab(&["plugins", "--check", lib.to_str().unwrap()], None, None);
    assert_exit(&c, 1);
    assert!(
        c.stderr.contains("crashed the probe process"),
        "{}",
        c.stderr
    );
}

#[test]
fn check_with_a_bare_name_means_the_file_in_the_current_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // A name the system library path has: it must not be found there.
    let system = format!(
        "{}c{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let r = memlab(&["plugins", "--check", &system], None, Some(tmp.path()));
    assert_exit(&r, 1);
    let here = tmp.path().canonicalize().unwrap().join(&system);
    assert!(
        r.stderr.contains("no such file")
            && (r.stderr.contains(&here.display().to_string())
                || r.stderr
                    .contains(&tmp.path().join(&system).display().to_string())),
        "{}",
        r.stderr
    );

    // A good library by bare name loads from the current directory.
    let name = lib_name("memlab_criteria");
    copy_plugin(tmp.path(), &name);
    let ok = memlab(&["plugins", "--check", &name], None, Some(tmp.path()));
    assert_exit(&ok, 0);
    assert!(ok.stdout.contains("ok — memlab-criteria"), "{}", ok.stdout);
}
