//! Ownership of a run directory: one memlab process writes it at a time.
//!
//! The lock is an advisory `flock` on `<dir>/.memlab.lock`, held for as long as the returned
//! [`DirLock`] lives and released by the operating system when the process ends, however it
//! ends (so a killed run never leaves a stale lock behind). The file itself stays: removing it
//! on exit would let a third process lock a fresh file while a second still waits on the old
//! one. It holds the owner's process id and host, for the message another process prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".memlab.lock";

/// An exclusive lock on a directory, released on drop.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    _file: Option<File>,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or fails at once (naming the owner) when another
    /// process holds it. On a filesystem without locks the run goes on with a warning.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default();
                // Best effort: the lock is the flock, the text only informs.
                let _ = file.set_len(0);
                let _ = writeln!(file, "pid {} on {host}", std::process::id());
                Ok(DirLock {
                    dir: dir.to_path_buf(),
                    _file: Some(file),
                })
            }
            Err(TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut owner);
                bail!(
                    "{} is in use by another memlab process ({}); wait for it to finish, or use \
                     another run name",
                    dir.display(),
                    owner.trim()
                )
            }
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                log::warn!(
                    "{}: this filesystem has no file locks; make sure no other memlab process \
                     writes this directory",
                    dir.display()
                );
                Ok(DirLock {
                    dir: dir.to_path_buf(),
                    _file: None,
                })
            }
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        let a = DirLock::acquire(&d).unwrap();
        let e = DirLock::acquire(&d).unwrap_err().to_string();
        assert!(e.contains("in use by another memlab process"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(a);
        DirLock::acquire(&d).unwrap();
    }
}
