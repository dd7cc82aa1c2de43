//! Running a study's cells: a pool of worker threads fed through a crossbeam channel on CPU
//! (`--jobs N`), one cell at a time on a GPU. Finished cells (a `cell.json` whose config hash
//! matches) are skipped; an interrupted cell resumes from its last snapshot, as `memlab run`
//! does. A failing cell is recorded in its `error.txt` and does not stop the others.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Cell, Study, describe, value_label};
use crate::io::output::write_atomic;
use crate::plugins::Registry;

/// `study.json`: the expanded grid, written before any cell runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Study name.
    pub name: String,
    /// `[study] description`.
    pub description: String,
    /// The study file it was expanded from.
    pub file: PathBuf,
    /// Swept keys, axis by axis.
    pub keys: Vec<String>,
    /// The x axis of the line figures, if any.
    pub x: Option<String>,
    /// Its title in the figures.
    #[serde(default)]
    pub x_label: Option<String>,
    /// Groups of keys that vary together (`[study] zip`).
    #[serde(default)]
    pub zip: Vec<Vec<String>>,
    /// The criteria of the cells, in `[[criteria]]` order.
    pub criteria: Vec<String>,
    /// Every cell.
    pub cells: Vec<ManifestCell>,
}

/// One cell in `study.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestCell {
    /// Grid index (`--cell`).
    pub index: usize,
    /// Directory under `cells/`.
    pub name: String,
    /// Swept key → value (as JSON) and its short label.
    pub values: Vec<SweptValue>,
}

/// One swept value of a cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweptValue {
    /// Dotted key.
    pub key: String,
    /// The value.
    pub value: serde_json::Value,
    /// Short label for tables and legends.
    pub label: String,
}

/// `cells/<cell>/cell.json`: written when a cell has finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellDone {
    /// Grid index.
    pub index: usize,
    /// sha256 of the cell's resolved config; a different config re-runs the cell.
    pub config_sha256: String,
    /// Wall-clock seconds of this (last) execution.
    pub seconds: f64,
}

/// How a cell ended in this invocation.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Already finished with the same config.
    Skipped,
    /// Ran to the end.
    Finished,
    /// Failed with this error.
    Failed(String),
}

/// sha256 of a cell's resolved config.
pub fn config_sha(cell: &Cell) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(cell.config.to_toml().as_bytes()))
}

/// The directory of a cell.
pub fn cell_dir(study_dir: &Path, cell: &Cell) -> PathBuf {
    study_dir.join("cells").join(&cell.name)
}

/// Whether a cell has finished with exactly this config and its `replication.json` parses
/// (a corrupt one is redone: training resumes from the final snapshot, so only sampling and
/// evaluation run again).
pub fn is_done(study_dir: &Path, cell: &Cell) -> bool {
    let dir = cell_dir(study_dir, cell);
    std::fs::read_to_string(dir.join("cell.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<CellDone>(&t).ok())
        .is_some_and(|d| {
            d.config_sha256 == config_sha(cell)
                && matches!(
                    crate::run::RunReport::read(&dir.join("replication.json")),
                    Ok(Some(_))
                )
        })
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The manifest of `cells`.
pub fn manifest(study: &Study, cells: &[Cell]) -> Manifest {
    Manifest {
        name: study.name(),
        description: study.section.description.clone(),
        file: study.file.clone(),
        keys: study.keys(),
        x: study.section.x.clone(),
        x_label: study.section.x_label.clone(),
        zip: study.section.zip.clone(),
        criteria: cells
            .first()
            .map(|c| c.config.criteria.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
        cells: cells
            .iter()
            .map(|c| ManifestCell {
                index: c.index,
                name: c.name.clone(),
                values: c
                    .values
                    .iter()
                    .map(|(k, v)| SweptValue {
                        key: k.clone(),
                        value: toml_to_json(v),
                        label: value_label(v),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Creates the study directory with `study.toml` and `study.json`.
pub fn write_manifest(study: &Study, dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir.join("cells"))
        .with_context(|| format!("creating study directory {}", dir.display()))?;
    write_atomic(&dir.join("study.toml"), study.text.as_bytes())?;
    write_atomic(
        &dir.join("study.json"),
        serde_json::to_string_pretty(manifest)?.as_bytes(),
    )
}

/// Runs one cell to the end (resuming it if interrupted) and marks it done.
pub fn run_cell(cell: &Cell, reg: &Registry, study_dir: &Path) -> Result<()> {
    let dir = cell_dir(study_dir, cell);
    // Own the cell before touching it: a second worker or Slurm task on the same cell is
    // refused instead of mixing two runs in one folder.
    let lock = crate::io::lock::DirLock::acquire(&dir)?;
    let _ = std::fs::remove_file(dir.join("cell.json"));
    let t0 = Instant::now();
    crate::run::run_locked(&cell.config, reg, Some(&study_dir.join("cells")), &lock)
        .with_context(|| format!("cell {} ({})", cell.index, describe(&cell.values)))?;
    let done = CellDone {
        index: cell.index,
        config_sha256: config_sha(cell),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let _ = std::fs::remove_file(dir.join("error.txt"));
    write_atomic(
        &dir.join("cell.json"),
        serde_json::to_string_pretty(&done)?.as_bytes(),
    )
}

/// Runs `cells` with `jobs` workers (1 on a GPU); returns each cell's outcome in input order.
/// Every worker loads the plugins itself (`extra_dirs` plus each config's `[plugins] dirs`).
pub fn run_cells(
    cells: &[Cell],
    study_dir: &Path,
    extra_dirs: &[PathBuf],
    jobs: usize,
) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; cells.len()];
    let todo: Vec<usize> = (0..cells.len())
        .filter(|&i| {
            let done = is_done(study_dir, &cells[i]);
            if done {
                outcomes[i] = Some(Outcome::Skipped);
            }
            !done
        })
        .collect();
    let skipped = cells.len() - todo.len();
    let gpu = cells
        .first()
        .is_some_and(|c| crate::engine::device::is_accelerator(c.config.run.device));
    let jobs = if gpu {
        1
    } else {
        jobs.max(1).min(todo.len().max(1))
    };
    log::info!(
        "study: {} cells, {skipped} already finished, {} to run with {jobs} worker(s){}",
        cells.len(),
        todo.len(),
        if gpu {
            " (GPU: one cell at a time)"
        } else {
            ""
        }
    );
    if todo.is_empty() {
        return Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Skipped))
            .collect());
    }
    let bar = crate::io::progress::bar(
        cells.len() as u64,
        "cells [{bar:30}] {pos}/{len} done  {msg}",
    );
    if let Some(b) = &bar {
        b.set_position(skipped as u64);
    }
    let (work_tx, work_rx) = crossbeam_channel::unbounded::<usize>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Outcome)>();
    for &i in &todo {
        work_tx.send(i).expect("channel open");
    }
    drop(work_tx);
    let mut finished = skipped;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            s.spawn(move || {
                while let Ok(i) = rx.recv() {
                    let cell = &cells[i];
                    crate::io::progress::set_label(Some(cell.name.clone()));
                    let r = (|| -> Result<()> {
                        let mut dirs = extra_dirs.to_vec();
                        dirs.extend(cell.config.plugins.dirs.iter().cloned());
                        let reg = Registry::load(&dirs)?;
                        run_cell(cell, &reg, study_dir)
                    })();
                    crate::io::progress::set_label(None);
                    let outcome = match r {
                        Ok(()) => Outcome::Finished,
                        Err(e) => {
                            let msg = format!("{e:#}");
                            let dir = cell_dir(study_dir, cell);
                            let _ = std::fs::create_dir_all(&dir);
                            let _ = write_atomic(&dir.join("error.txt"), msg.as_bytes());
                            Outcome::Failed(msg)
                        }
                    };
                    if tx.send((i, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        while let Ok((i, outcome)) = done_rx.recv() {
            finished += 1;
            let line = match &outcome {
                Outcome::Failed(e) => format!("cell {i} {} FAILED: {e}", cells[i].name),
                _ => format!(
                    "cell {i} {} finished ({finished}/{})",
                    cells[i].name,
                    cells.len()
                ),
            };
            crate::io::progress::println(&line);
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(cells[i].name.clone());
            }
            outcomes[i] = Some(outcome);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("worker stopped".into())))
        .collect())
}
