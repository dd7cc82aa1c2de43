//! Studies: one question, many runs. A study config is a run config plus a `[sweep]` table
//! (dotted key → list of values) and an optional `[study]` table; the sweep expands into a
//! grid of *cells*, each an ordinary run in its own directory.
//!
//! ```toml
//! [study]
//! name = "width-vs-size"                  # directory under out_dir (default: the file stem)
//! description = "One paragraph for report.md."
//! x = "dataset.size"                      # numeric axis of the line figures (optional)
//! zip = [["dataset.size", "train.steps"]] # keys that vary together (equal-length lists)
//!
//! [sweep]
//! "dataset.size" = [16, 32, 64]
//! "architecture.params.channels" = [16, 32]
//! "conditioning" = [{ name = "none" }, { name = "class" }]   # whole tables are values too
//! "dataset.parts.1.size" = [0, 200]       # numeric segments index arrays
//! ```
//!
//! Axes are ordered by key (TOML tables are sorted), the last axis varying fastest. A cell's
//! directory is named from its swept values and the hash of everything that determines its
//! trained weights, so a study resumed after an edit never mixes results of different configs.
//!
//! ```text
//! studies/<name>/
//!   study.toml        the study config as run (after --set)
//!   study.json        the expanded grid: every cell's index, name and swept values
//!   cells/<cell>/     one run directory per cell (see `memlab run`), plus cell.json when done
//!   results.csv/.json one row per cell
//!   report.md/.html   table and figures
//!   *.png             figures
//!   slurm.sh          with --slurm: one array task per cell
//! ```

pub mod emm;
pub mod exec;
pub mod report;
pub mod results;
pub mod slurm;

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, set_key};

/// `[study]`: naming, figure axes and cluster settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StudySection {
    /// Study directory name (default: the config file's stem).
    pub name: Option<String>,
    /// One paragraph shown at the top of the report.
    pub description: String,
    /// Parent directory of study directories (default `studies`, relative to the working
    /// directory).
    pub out_dir: Option<PathBuf>,
    /// The numeric swept key plotted on the x axis (default: `dataset.size` when swept, else
    /// the first numeric axis).
    pub x: Option<String>,
    /// Axis title for `x` in the figures (default: the key itself).
    pub x_label: Option<String>,
    /// Groups of swept keys that vary together instead of forming a product.
    pub zip: Vec<Vec<String>>,
    /// `[study.slurm]`: settings of the exported Slurm array job.
    pub slurm: slurm::SlurmSection,
}

/// One axis of the grid: one key, or several zipped keys, and their values.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The keys (one unless zipped).
    pub keys: Vec<String>,
    /// `values[i][k]`: the value of `keys[k]` at position `i`.
    pub values: Vec<Vec<toml::Value>>,
}

/// One expanded cell: a complete run config.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Position in the grid (row-major over the axes).
    pub index: usize,
    /// Directory name under `cells/`.
    pub name: String,
    /// The swept keys and their values in this cell.
    pub values: Vec<(String, toml::Value)>,
    /// The resolved config.
    pub config: Config,
    /// The study file it comes from (named in errors).
    pub file: PathBuf,
}

/// A parsed study config.
#[derive(Debug, Clone)]
pub struct Study {
    /// The study file.
    pub file: PathBuf,
    /// `[study]`.
    pub section: StudySection,
    /// `[emm]`, when present.
    pub emm: Option<emm::EmmSection>,
    /// The config without `[study]`, `[sweep]` and `[emm]`: what every cell starts from.
    pub base: toml::Table,
    /// The grid's axes.
    pub axes: Vec<Axis>,
    /// The study TOML as run (after `--set` overrides).
    pub text: String,
    /// The study file's own text (error messages give its line numbers).
    pub source: String,
    /// Keys changed by `--set`.
    pub overridden: Vec<String>,
}

fn cfg_err(file: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Flattens a `[sweep]` table into (dotted key, values): arrays are axes, tables recurse.
fn flatten(
    prefix: &str,
    t: &toml::Table,
    file: &Path,
    out: &mut Vec<(String, Vec<toml::Value>)>,
) -> Result<(), ConfigError> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Array(a) => {
                if a.is_empty() {
                    return Err(cfg_err(
                        file,
                        &format!("sweep.{key}"),
                        "an axis needs at least one value",
                    ));
                }
                out.push((key, a.clone()));
            }
            toml::Value::Table(t) => flatten(&key, t, file, out)?,
            _ => {
                return Err(cfg_err(
                    file,
                    &format!("sweep.{key}"),
                    "a sweep axis is a list of values, e.g. `\"dataset.size\" = [100, 200]`",
                ));
            }
        }
    }
    Ok(())
}

impl Study {
    /// Whether a config text has a `[sweep]`, `[study]` or `[emm]` table (i.e. is a study).
    pub fn is_study(text: &str) -> bool {
        crate::config::is_study(text)
    }

    /// Reads a study file and applies `--set` overrides (to any key, `study.*` and
    /// `sweep.*` included).
    pub fn load(file: &Path, sets: &[String]) -> Result<Study, ConfigError> {
        let source = crate::config::read_text(file)?;
        let mut doc = crate::config::parse_doc(&source, file)?;
        let overridden = crate::config::apply_overrides(&mut doc, sets, file)?;
        Study::from_doc(doc, file, &source, overridden)
    }

    /// Parses a study from TOML text (`file` names it in errors).
    pub fn parse(text: &str, file: &Path) -> Result<Study, ConfigError> {
        let doc = crate::config::parse_doc(text, file)?;
        Study::from_doc(doc, file, text, Vec::new())
    }

    /// Builds a study from the parsed document of `file` (whose own text is `source`), after
    /// the `--set` overrides of the keys in `overridden`.
    fn from_doc(
        mut base: toml::Table,
        file: &Path,
        source: &str,
        overridden: Vec<String>,
    ) -> Result<Study, ConfigError> {
        let text = if overridden.is_empty() {
            source.to_string()
        } else {
            toml::to_string(&base).expect("a TOML table serialises")
        };
        let section: StudySection = match base.remove("study") {
            Some(v) => v.try_into().map_err(|e: toml::de::Error| {
                cfg_err(file, "study", e.message().trim().to_string())
            })?,
            None => StudySection::default(),
        };
        let emm = match base.remove("emm") {
            Some(v) => Some(v.try_into().map_err(|e: toml::de::Error| {
                cfg_err(file, "emm", e.message().trim().to_string())
            })?),
            None => None,
        };
        let mut flat = Vec::new();
        match base.remove("sweep") {
            Some(toml::Value::Table(t)) => flatten("", &t, file, &mut flat)?,
            Some(_) => {
                return Err(cfg_err(
                    file,
                    "sweep",
                    "must be a table of `key = [values]`",
                ));
            }
            None => {}
        }
        // Zipped groups first (in the order given), then the remaining keys (sorted).
        let mut axes = Vec::new();
        let mut used = std::collections::BTreeSet::new();
        for group in &section.zip {
            let mut keys = Vec::new();
            let mut cols: Vec<Vec<toml::Value>> = Vec::new();
            for k in group {
                let (_, vals) = flat.iter().find(|(fk, _)| fk == k).ok_or_else(|| {
                    cfg_err(file, "study.zip", format!("`{k}` is not a key of [sweep]"))
                })?;
                if !used.insert(k.clone()) {
                    return Err(cfg_err(file, "study.zip", format!("`{k}` is zipped twice")));
                }
                if let Some(first) = cols.first()
                    && first.len() != vals.len()
                {
                    return Err(cfg_err(
                        file,
                        "study.zip",
                        format!(
                            "zipped keys need lists of equal length: `{}` has {}, `{k}` has {}",
                            keys[0],
                            first.len(),
                            vals.len()
                        ),
                    ));
                }
                keys.push(k.clone());
                cols.push(vals.clone());
            }
            if keys.is_empty() {
                continue;
            }
            let n = cols[0].len();
            let values = (0..n)
                .map(|i| cols.iter().map(|c| c[i].clone()).collect())
                .collect();
            axes.push(Axis { keys, values });
        }
        for (k, vals) in &flat {
            if !used.contains(k) {
                axes.push(Axis {
                    keys: vec![k.clone()],
                    values: vals.iter().map(|v| vec![v.clone()]).collect(),
                });
            }
        }
        let study = Study {
            file: file.to_path_buf(),
            section,
            emm,
            base,
            axes,
            text,
            source: source.to_string(),
            overridden,
        };
        if let Some(x) = &study.section.x
            && !study.keys().contains(x)
            && study.emm.as_ref().is_none_or(|e| &e.key != x)
        {
            return Err(cfg_err(
                file,
                "study.x",
                format!("`{x}` is not a key of [sweep]"),
            ));
        }
        Ok(study)
    }

    /// The study's name.
    pub fn name(&self) -> String {
        self.section.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "study".into())
        })
    }

    /// The study directory under `root` (default: `[study] out_dir`, else `studies`).
    pub fn dir(&self, root: Option<&Path>) -> PathBuf {
        root.map(Path::to_path_buf)
            .or_else(|| self.section.out_dir.clone())
            .unwrap_or_else(|| PathBuf::from("studies"))
            .join(self.name())
    }

    /// The directory of the study's EMM search: the study directory's name plus `-emm`, so a
    /// study and its search can share a config without sharing a manifest.
    pub fn emm_dir(&self, root: Option<&Path>) -> PathBuf {
        let d = self.dir(root);
        d.with_file_name(format!("{}-emm", self.name()))
    }

    /// Every swept key, axis by axis.
    pub fn keys(&self) -> Vec<String> {
        self.axes
            .iter()
            .flat_map(|a| a.keys.iter().cloned())
            .collect()
    }

    /// Number of cells (1 without a sweep).
    pub fn len(&self) -> usize {
        self.axes.iter().map(|a| a.values.len()).product()
    }

    /// Whether the grid is empty (never: a study without axes has one cell).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The swept values of cell `index`.
    pub fn values(&self, index: usize) -> Vec<(String, toml::Value)> {
        let mut out = Vec::new();
        let mut rest = index;
        let mut picks = vec![0; self.axes.len()];
        for (ai, a) in self.axes.iter().enumerate().rev() {
            picks[ai] = rest % a.values.len();
            rest /= a.values.len();
        }
        for (a, &p) in self.axes.iter().zip(&picks) {
            for (k, v) in a.keys.iter().zip(&a.values[p]) {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    /// Builds a cell from explicit values (grid values, plus e.g. the EMM search's size).
    pub fn cell_with(
        &self,
        index: usize,
        values: Vec<(String, toml::Value)>,
    ) -> Result<Cell, ConfigError> {
        let mut doc = self.base.clone();
        for (k, v) in &values {
            set_key(&mut doc, k, v.clone())
                .map_err(|m| cfg_err(&self.file, &format!("sweep.{k}"), m))?;
        }
        let overridden: Vec<(String, String)> = values
            .iter()
            .map(|(k, _)| (k.clone(), "a swept value".to_string()))
            .chain(
                self.overridden
                    .iter()
                    .map(|k| (k.clone(), "set by --set".to_string())),
            )
            .collect();
        let origin = crate::config::Origin {
            file: &self.file,
            text: &self.source,
            overridden: &overridden,
        };
        let mut config = Config::from_doc(&doc, &origin).map_err(|mut e| {
            e.message = format!("{} (in the cell {})", e.message, describe(&values));
            e
        })?;
        config.check_values(&self.file).map_err(|mut e| {
            e.message = format!("{} (in the cell {})", e.message, describe(&values));
            e
        })?;
        config.resolve_plugin_dirs(&self.file)?;
        let name = cell_name(&values, &config);
        config.run.name = name.clone();
        Ok(Cell {
            index,
            name,
            values,
            config,
            file: self.file.clone(),
        })
    }

    /// Cell `index` of the grid.
    pub fn cell(&self, index: usize) -> Result<Cell, ConfigError> {
        if index >= self.len() {
            return Err(cfg_err(
                &self.file,
                "",
                format!(
                    "there is no cell {index}: the study has {} (0..{})",
                    self.len(),
                    self.len()
                ),
            ));
        }
        self.cell_with(index, self.values(index))
    }

    /// Every cell of the grid.
    pub fn cells(&self) -> Result<Vec<Cell>, ConfigError> {
        (0..self.len()).map(|i| self.cell(i)).collect()
    }

    /// Checks every cell against the loaded plugins (each component is constructed with its
    /// parameters); returns the first of [`Study::errors`].
    pub fn validate(
        &self,
        cells: &[Cell],
        reg: &crate::plugins::Registry,
    ) -> Result<(), ConfigError> {
        match self.errors(cells, reg).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem of every cell, so one `memlab config check` reports them all: its first
    /// bad host value ([`Config::check_values`]) and every component that is not loaded, refuses
    /// its parameters or contradicts a declaration ([`Config::component_errors`]). Each error
    /// names the study file, the key and the cell; one that recurs in several cells (a missing
    /// plugin of the base config) is reported once, with its first cell and how many others.
    pub fn errors(&self, cells: &[Cell], reg: &crate::plugins::Registry) -> Vec<ConfigError> {
        let mut found: Vec<(ConfigError, &Cell, usize)> = Vec::new();
        for c in cells {
            let mut errors: Vec<ConfigError> = c
                .config
                .check_values(&self.file)
                .err()
                .into_iter()
                .collect();
            errors.extend(c.config.component_errors(&self.file, reg));
            for e in errors {
                match found
                    .iter_mut()
                    .find(|(f, _, _)| f.key == e.key && f.message == e.message)
                {
                    Some((_, _, others)) => *others += 1,
                    None => found.push((e, c, 0)),
                }
            }
        }
        found
            .into_iter()
            .map(|(mut e, c, others)| {
                let more = match others {
                    0 => String::new(),
                    1 => ", and in 1 other cell".to_string(),
                    n => format!(", and in {n} other cells"),
                };
                e.message = format!(
                    "{} (in cell {}: {}{more})",
                    e.message,
                    c.index,
                    describe(&c.values)
                );
                e
            })
            .collect()
    }
}

/// `key = value, …` for messages.
pub fn describe(values: &[(String, toml::Value)]) -> String {
    if values.is_empty() {
        return "(no swept values)".into();
    }
    values
        .iter()
        .map(|(k, v)| format!("{k} = {}", v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Short name of a swept key for directory names and legends: its last segment that is not
/// an index, `params` or `name` (`architecture.params.channels` → `channels`,
/// `architecture.name` → `architecture`).
pub fn short_key(key: &str) -> String {
    key.split('.')
        .rfind(|s| s.parse::<usize>().is_err() && *s != "params" && *s != "name")
        .unwrap_or(key)
        .to_string()
}

/// A value as a short label: scalars as written, component tables by their `name` (plus a
/// hash of their params), anything else by hash.
pub fn value_label(v: &toml::Value) -> String {
    let hash = |v: &toml::Value| {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(v.to_string().as_bytes());
        format!("{:02x}{:02x}{:02x}", h[0], h[1], h[2])
    };
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Table(t) => match t.get("name").and_then(|n| n.as_str()) {
            Some(n) => match t.get("params").and_then(|p| p.as_table()) {
                Some(p) if !p.is_empty() => {
                    let inner: Vec<String> = p
                        .iter()
                        .map(|(k, v)| format!("{k}={}", value_label(v)))
                        .collect();
                    format!("{n}({})", inner.join(","))
                }
                _ => n.to_string(),
            },
            None => format!("#{}", hash(v)),
        },
        toml::Value::Array(a)
            if a.len() <= 12 && a.iter().all(|x| !x.is_table() && !x.is_array()) =>
        {
            let inner: Vec<String> = a.iter().map(value_label).collect();
            format!("[{}]", inner.join(","))
        }
        other => format!("#{}", hash(other)),
    }
}

fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

/// A cell's directory name: `key=value` pairs of its swept values, then the first 8 hex digits
/// of its training hash.
pub fn cell_name(values: &[(String, toml::Value)], config: &Config) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in values {
        // Zipped keys often repeat (`size=8` for every part of a mixture): once is enough, the
        // hash below tells the cells apart anyway.
        let p = slug(&format!("{}={}", short_key(k), value_label(v)));
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    if parts.is_empty() {
        parts.push("base".into());
    }
    let mut s = parts.join("_");
    if s.len() > 96 {
        s.truncate(96);
    }
    format!("{s}-{}", &config.training_hash()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataset]
name = "mondrian"
size = 8
[architecture]
name = "mlp"
[schedule]
name = "edm"
"#;

    fn study(extra: &str) -> Result<Study, ConfigError> {
        Study::parse(&format!("{BASE}\n{extra}"), Path::new("s.toml"))
    }

    #[test]
    fn grid_is_row_major_with_last_axis_fastest() {
        let s =
            study("[sweep]\n\"dataset.size\" = [8, 16]\n\"train.lr\" = [0.1, 0.2, 0.3]\n").unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s.keys(), ["dataset.size", "train.lr"]);
        let v = s.values(4);
        assert_eq!(v[0].1.as_integer(), Some(16));
        assert_eq!(v[1].1.as_float(), Some(0.2));
        let c = s.cell(4).unwrap();
        assert_eq!(c.config.dataset.size, Some(16));
        assert_eq!(c.config.train.lr, 0.2);
        assert!(c.name.starts_with("size=16_lr=0.2-"), "{}", c.name);
        // Deterministic names, distinct per cell.
        let names: std::collections::BTreeSet<String> =
            s.cells().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 6);
        assert_eq!(s.cell(4).unwrap().name, c.name);
    }

    #[test]
    fn nested_tables_and_zip() {
        let s = study(
            "[study]\nzip = [[\"dataset.size\", \"train.steps\"]]\n[sweep]\ndataset.size = [8, 16]\ntrain.steps = [10, 20]\n\"architecture.params.hidden\" = [32, 64]\n",
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        let c = s.cell(3).unwrap();
        assert_eq!(
            (c.config.dataset.size, c.config.train.steps),
            (Some(16), 20)
        );
        assert_eq!(
            c.config.architecture.params["hidden"].as_integer(),
            Some(64)
        );
        let bad = study(
            "[study]\nzip = [[\"dataset.size\", \"train.steps\"]]\n[sweep]\ndataset.size = [8, 16]\ntrain.steps = [10]\n",
        );
        let e = bad.unwrap_err();
        assert_eq!(e.key, "study.zip");
        assert!(e.message.contains("equal length"), "{}", e.message);
    }

    #[test]
    fn tables_as_values_and_bad_cells_name_the_cell() {
        let s = study("[sweep]\nconditioning = [{ name = \"none\" }, { name = \"random\", params = { classes = 4 } }]\n").unwrap();
        let c = s.cell(1).unwrap();
        assert_eq!(c.config.conditioning.name, "random");
        assert!(
            c.name.starts_with("conditioning=random_classes=4"),
            "{}",
            c.name
        );
        let bad = study("[sweep]\n\"train.batch_size\" = [4, 0]\n").unwrap();
        assert!(bad.cell(0).is_ok());
        let e = bad.cell(1).unwrap_err();
        assert!(e.message.contains("train.batch_size = 0"), "{e}");
        assert!(
            study("[sweep]\n\"dataset.size\" = 8\n")
                .unwrap_err()
                .message
                .contains("list of values")
        );
        assert!(
            study("[sweep]\n\"dataset.parts.x.size\" = [8]\n")
                .unwrap()
                .cell(0)
                .is_err()
        );
    }

    #[test]
    fn array_index_keys() {
        let text = r#"
[[dataset.parts]]
name = "mondrian"
size = 8
[[dataset.parts]]
name = "gaussian-mixture"
size = 8
[architecture]
name = "mlp"
[schedule]
name = "edm"
[sweep]
"dataset.parts.1.size" = [0, 16]
"#;
        let s = Study::parse(text, Path::new("m.toml")).unwrap();
        assert_eq!(s.cell(0).unwrap().config.dataset.parts[1].size, Some(0));
        assert_eq!(s.cell(1).unwrap().config.dataset.parts[1].size, Some(16));
        let e = Study::parse(&text.replace("parts.1", "parts.2"), Path::new("m.toml"))
            .unwrap()
            .cell(0)
            .unwrap_err();
        assert!(e.message.contains("out of range"), "{e}");
    }

    #[test]
    fn no_sweep_is_one_cell() {
        let s = study("").unwrap();
        assert_eq!(s.len(), 1);
        assert!(s.cell(0).unwrap().name.starts_with("base-"));
        assert!(s.cell(1).is_err());
    }
}
