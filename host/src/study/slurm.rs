//! Export of a study as a Slurm array job: one array task per cell, each running
//! `memlab study CONFIG --cell $SLURM_ARRAY_TASK_ID` with the same binary and config; after
//! the array, `memlab report STUDY_DIR` merges the cells.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// `[study.slurm]`: resources of each array task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSection {
    /// Partition (`--partition`), if any.
    pub partition: Option<String>,
    /// Wall-clock limit per task (`--time`).
    pub time: String,
    /// CPU cores per task.
    pub cpus_per_task: u32,
    /// Memory per task (`--mem`, e.g. `"16G"`).
    pub mem: Option<String>,
    /// GPUs per task (`--gres=gpu:N`; 0 for CPU-only tasks).
    pub gpus: u32,
    /// At most this many tasks at once (`%K` of `--array`; 0: no limit).
    pub max_parallel: u32,
    /// Extra `#SBATCH` lines, e.g. `["--account=lab", "--qos=long"]`.
    pub extra: Vec<String>,
}

impl Default for SlurmSection {
    fn default() -> Self {
        SlurmSection {
            partition: None,
            time: "24:00:00".into(),
            cpus_per_task: 2,
            mem: None,
            gpus: 0,
            max_parallel: 0,
            extra: Vec::new(),
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What the array tasks run.
pub struct Job<'a> {
    /// Study name (job name).
    pub name: &'a str,
    /// Number of cells (array tasks `0..cells`).
    pub cells: usize,
    /// The memlab binary (absolute).
    pub binary: &'a Path,
    /// The study config (absolute).
    pub config: &'a Path,
    /// The study directory (absolute).
    pub study_dir: &'a Path,
    /// `--plugin-dir` arguments (absolute).
    pub plugin_dirs: &'a [PathBuf],
    /// `--set` overrides given to `memlab study`.
    pub sets: &'a [String],
    /// The working directory the tasks start in (relative paths in the config resolve there).
    pub workdir: &'a Path,
    /// Resources.
    pub slurm: &'a SlurmSection,
}

/// The array script.
pub fn script(job: &Job) -> String {
    let mut s = String::new();
    let n = job.cells;
    let limit = if job.slurm.max_parallel > 0 {
        format!("%{}", job.slurm.max_parallel)
    } else {
        String::new()
    };
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# memlab study `{}`: {n} cells, one array task each.",
        job.name
    );
    let _ = writeln!(
        s,
        "# Submit: sbatch {}",
        job.study_dir.join("slurm.sh").display()
    );
    let _ = writeln!(
        s,
        "# Then, when every task has finished: {} report {}",
        job.binary.display(),
        job.study_dir.display()
    );
    let _ = writeln!(s, "#SBATCH --job-name=memlab-{}", job.name);
    let _ = writeln!(s, "#SBATCH --array=0-{}{limit}", n.saturating_sub(1));
    let _ = writeln!(
        s,
        "#SBATCH --output={}/slurm/%A_%a.out",
        job.study_dir.display()
    );
    let _ = writeln!(s, "#SBATCH --chdir={}", job.workdir.display());
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    let _ = writeln!(
        s,
        "#SBATCH --cpus-per-task={}",
        job.slurm.cpus_per_task.max(1)
    );
    let _ = writeln!(s, "#SBATCH --time={}", job.slurm.time);
    if let Some(p) = &job.slurm.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    if let Some(m) = &job.slurm.mem {
        let _ = writeln!(s, "#SBATCH --mem={m}");
    }
    if job.slurm.gpus > 0 {
        let _ = writeln!(s, "#SBATCH --gres=gpu:{}", job.slurm.gpus);
    }
    for e in &job.slurm.extra {
        let _ = writeln!(s, "#SBATCH {e}");
    }
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(
        s,
        "export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\""
    );
    let mut cmd = vec![quote(&job.binary.display().to_string())];
    for d in job.plugin_dirs {
        cmd.push("--plugin-dir".into());
        cmd.push(quote(&d.display().to_string()));
    }
    cmd.push("study".into());
    cmd.push(quote(&job.config.display().to_string()));
    cmd.push("--out".into());
    cmd.push(quote(
        &job.study_dir
            .parent()
            .unwrap_or(Path::new("."))
            .display()
            .to_string(),
    ));
    for st in job.sets {
        cmd.push("--set".into());
        cmd.push(quote(st));
    }
    cmd.push("--cell".into());
    cmd.push("\"$SLURM_ARRAY_TASK_ID\"".into());
    let _ = writeln!(s, "exec {}", cmd.join(" "));
    s
}

/// Writes `slurm.sh` (executable) into the study directory.
pub fn write(job: &Job) -> Result<PathBuf> {
    let path = job.study_dir.join("slurm.sh");
    std::fs::create_dir_all(job.study_dir.join("slurm"))?;
    crate::io::output::write_atomic(&path, script(job).as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path)
}
