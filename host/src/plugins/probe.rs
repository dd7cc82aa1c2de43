//! Loading plugin libraries first in a child process, where a crash cannot take the host down.
//!
//! [`super::validate`] catches truncated and structurally damaged files before they are mapped,
//! but not every damage is structural: zeroed relocations or a corrupted initialiser crash the
//! process inside `dlopen` or the manifest call just the same. So the `memlab` command, before
//! loading anything itself, re-runs its own executable as `memlab __probe-plugins FILE...`,
//! which loads the files in order and prints one verdict line per file as soon as it has it.
//! When the child dies (a signal, or an exit without a verdict), the file it was loading is
//! reported as crashed, with the signal, and a new child continues with the files after it.
//! The host then loads only the files the child loaded cleanly, and takes the child's reasons
//! for the others.
//!
//! **Cost and choice.** All files go to one child, so a command pays one process start and a
//! second load of each library, not one process per library. Measured for `memlab plugins` with
//! the nine built-in libraries (debug build, on a busy 2-core machine): about 0.18 s without the
//! probe and 0.39 s with it, i.e. plugin loading costs about twice as much, ~0.2 s per command.
//! Next to any command that trains (seconds to hours) that is negligible, and it buys the
//! stronger guarantee that *no* damage of a library, structural or not, can kill the host; so
//! the CLI probes on every command ([`enable`]), and `MEMLAB_PLUGIN_PROBE=0` turns it off
//! (structural validation still runs). Library users (tests that build a [`super::Registry`]
//! in-process) are not the `memlab` executable and so do not probe unless they call [`enable`]
//! with a path to one.
//!
//! A library that loads in the child loads the same way in the host, unless the file is replaced
//! in between; the probe does not guard against that race, nor against a library whose loading
//! hangs.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use super::loader::{self, LoadFailure};

/// Environment variable: `0` disables the probe process (structural validation still runs).
pub const PROBE_ENV: &str = "MEMLAB_PLUGIN_PROBE";

/// The hidden `memlab` subcommand the probe runs (see [`serve`]).
pub const PROBE_COMMAND: &str = "__probe-plugins";

/// Prefix of the child's verdict lines, so that anything a plugin prints is not mistaken for one.
const VERDICT_PREFIX: &str = "memlab-probe-verdict ";

static PROBE_EXE: OnceLock<PathBuf> = OnceLock::new();

/// One verdict of the child: the file's index in its argument list and the failure, if any.
#[derive(serde::Serialize, serde::Deserialize)]
struct Verdict {
    index: usize,
    error: Option<String>,
}

/// Makes [`super::Registry`] probe libraries through `exe`, a `memlab` executable (which
/// understands [`PROBE_COMMAND`]), unless `MEMLAB_PLUGIN_PROBE=0`. The first call wins.
pub fn enable(exe: PathBuf) {
    if std::env::var_os(PROBE_ENV).is_some_and(|v| v == "0") {
        return;
    }
    let _ = PROBE_EXE.set(exe);
}

/// Whether [`probe`] runs a child process.
pub fn enabled() -> bool {
    PROBE_EXE.get().is_some()
}

/// Loads `files` in child processes. Returns one entry per file: `None` when it loaded cleanly
/// there, `Some(failure)` when it must not be loaded (its reason, or the crash it caused). Returns
/// `None` as a whole when probing is off or the child could not be started (logged); the caller
/// then loads in-process, behind the structural validation only.
pub fn probe(files: &[PathBuf]) -> Option<Vec<Option<LoadFailure>>> {
    let exe = PROBE_EXE.get()?;
    if files.is_empty() {
        return Some(Vec::new());
    }
    let mut verdicts: Vec<Option<Option<LoadFailure>>> = vec![None; files.len()];
    let mut start = 0;
    while start < files.len() {
        let rest = &files[start..];
        let output = Command::new(exe)
            .arg(PROBE_COMMAND)
            .arg("--")
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // The child's messages (e.g. MEMLAB_ABI_DETAILS) go straight to the user.
            .stderr(Stdio::inherit())
            .output();
        let output = match output {
            Ok(o) => o,
            Err(e) => {
                log::warn!(
                    "cannot start the plugin probe process {} ({e}); loading plugins in-process",
                    exe.display()
                );
                return None;
            }
        };
        for line in BufReader::new(&output.stdout[..]).lines() {
            let Ok(line) = line else { break };
            let Some(json) = line.strip_prefix(VERDICT_PREFIX) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Verdict>(json) else {
                continue;
            };
            if let Some(slot) = verdicts.get_mut(start + v.index) {
                *slot = Some(v.error.map(|reason| LoadFailure {
                    path: files[start + v.index].clone(),
                    reason,
                }));
            }
        }
        // The first file without a verdict is the one the child was loading when it ended.
        match (start..files.len()).find(|&i| verdicts[i].is_none()) {
            None => {
                if !output.status.success() {
                    log::debug!(
                        "plugin probe process ended with {} after loading every library",
                        describe(output.status)
                    );
                }
                break;
            }
            Some(culprit) => {
                verdicts[culprit] = Some(Some(LoadFailure {
                    path: files[culprit].clone(),
                    reason: crash_reason(output.status),
                }));
                start = culprit + 1;
            }
        }
    }
    Some(
        verdicts
            .into_iter()
            .map(|v| v.expect("every file has a verdict"))
            .collect(),
    )
}

/// The child side ([`PROBE_COMMAND`]): loads each file in turn and prints its verdict line,
/// flushed before the next file is touched, so a crash leaves every earlier verdict behind.
/// Returns the exit code (0; failures are verdicts, not errors).
pub fn serve(files: &[PathBuf]) -> i32 {
    let mut out = std::io::stdout().lock();
    for (index, f) in files.iter().enumerate() {
        let error = loader::load(f).err().map(|e| e.reason);
        let line = serde_json::to_string(&Verdict { index, error }).expect("plain struct");
        if writeln!(out, "{VERDICT_PREFIX}{line}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return crate::EXIT_FAILURE;
        }
    }
    0
}

fn crash_reason(status: ExitStatus) -> String {
    if status.success() {
        // Should not happen: the child reports every file before exiting normally.
        return "the probe process exited without reporting on it (was the memlab executable \
                replaced?)"
            .into();
    }
    format!(
        "loading it crashed the probe process ({}); the library is damaged (an interrupted \
         copy?) or faulty, so memlab did not load it",
        describe(status)
    )
}

/// "signal 7, SIGBUS" or "exit status 3".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return match signal_name(sig) {
                Some(name) => format!("signal {sig}, {name}"),
                None => format!("signal {sig}"),
            };
        }
    }
    match status.code() {
        Some(c) => format!("exit status {c}"),
        None => status.to_string(),
    }
}

/// Names of the signals a damaged library raises (numbers as on Linux; SIGBUS differs on BSDs).
#[cfg(unix)]
fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        #[cfg(target_os = "linux")]
        7 => "SIGBUS",
        #[cfg(not(target_os = "linux"))]
        10 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        #[cfg(target_os = "linux")]
        31 => "SIGSYS",
        _ => return None,
    })
}
