//! Run configuration: the TOML file that describes a run (or, with `[sweep]`/`[emm]`, a study's
//! base run), parsed and validated.
//!
//! Every error names the file, the key (dotted path) and the problem. Component parameters
//! are validated by the plugin that owns them (it is constructed with them), so a misspelled
//! parameter is reported by the plugin's own serde schema.

use std::fmt;
use std::path::{Path, PathBuf};

use memlab_plugin_api::ffi::{ArchInfo, Component, ComponentKind, DataSummary};
use serde::{Deserialize, Serialize};

pub mod choices;

use crate::plugins::{ArchitectureHandle, ConditioningHandle, Registry};
use choices::{Churn, DeviceChoice, Sampler, SamplerSettings};

/// Most sampling steps a config may ask for. Samplers allocate σ schedules of `steps + 1`
/// values and run at least one network evaluation per step and batch; DDPM's 1000 steps are
/// the longest schedule in use, so 10⁵ leaves two orders of magnitude of room while refusing
/// 10⁹ (an 8 GB schedule and years of sampling).
pub const MAX_SAMPLE_STEPS: usize = 100_000;

/// A configuration error: file, key and cause. `memlab` exits with code 2 on these.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Dotted key path (`architecture.params`), or empty when the file as a whole is at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A reference to a plugin component with its parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// Component name, as listed by `memlab plugins`.
    pub name: String,
    /// The component's parameters, passed to the plugin as a TOML table.
    #[serde(default)]
    pub params: toml::Table,
    /// `[architecture]` only: a safetensors file of weights (a PyTorch `state_dict` with the
    /// architecture's parameter names) that training starts from instead of the seeded
    /// initialisation. Relative paths are resolved from the config file's folder. Left out of
    /// the serialised config when absent, so existing run directories keep their hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl ComponentRef {
    /// A component with no parameters.
    pub fn named(name: &str) -> ComponentRef {
        ComponentRef {
            name: name.to_string(),
            params: toml::Table::new(),
            init_from: None,
        }
    }
    /// The parameters as TOML text.
    pub fn params_toml(&self) -> String {
        toml::to_string(&self.params).unwrap_or_default()
    }
}

/// `[run]`: identity and reproducibility of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run name (the run directory's name).
    pub name: String,
    /// Master seed: data order, noise, initialisation, sampling all derive from it.
    pub seed: u64,
    /// `auto`, `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// Parent directory of run directories (relative to the working directory).
    pub out_dir: PathBuf,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "run".into(),
            seed: 0,
            device: DeviceChoice::Auto,
            out_dir: "runs".into(),
        }
    }
}

/// `[plugins]`: extra plugin directories (relative to the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Directories searched before `MEMLAB_PLUGIN_PATH` and the executable's directory.
    pub dirs: Vec<PathBuf>,
}

/// How a training subset is drawn from a dataset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SubsetMode {
    /// A seeded random subset (Yoon et al.).
    #[default]
    Random,
    /// The first `size` images in dataset order.
    First,
    /// The first `size / classes` images of each class, in dataset order (DM).
    PerClass,
}

/// One part of a mixture dataset: a dataset component with its own size; each part is one
/// class of the mixture (e.g. 2k Mondrian + 6k Gaussian-mixture dummies).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetPart {
    /// Dataset component.
    pub name: String,
    /// Its parameters.
    #[serde(default)]
    pub params: toml::Table,
    /// Images taken from it (default: all; 0 leaves the part out of the mixture).
    #[serde(default)]
    pub size: Option<u64>,
    /// Class name of this part (default: the component name).
    #[serde(default)]
    pub label: Option<String>,
}

/// `[dataset]`: the training data — one dataset component (`name`, `params`), or a mixture
/// (`[[dataset.parts]]`), with subset, resolution and held-out options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Dataset component (omit when using `parts`).
    #[serde(default)]
    pub name: Option<String>,
    /// Its parameters.
    #[serde(default)]
    pub params: toml::Table,
    /// Number of training images to use (default: the whole dataset).
    #[serde(default)]
    pub size: Option<u64>,
    /// How the subset is drawn: `random` (default), `first`, `per-class`.
    #[serde(default)]
    pub subset: SubsetMode,
    /// Downsample images to this side length (box average; must divide the native size).
    #[serde(default)]
    pub resolution: Option<usize>,
    /// Held-out images of the same distribution (not in the training set), for a
    /// generalization baseline in the evaluation. Single-dataset configs only.
    #[serde(default)]
    pub heldout: u64,
    /// Mixture parts, each its own class.
    #[serde(default)]
    pub parts: Vec<DatasetPart>,
}

impl DatasetSection {
    /// Every dataset component used, with its config key.
    pub fn components(&self) -> Vec<(String, ComponentRef)> {
        match &self.name {
            Some(n) => vec![(
                "dataset".into(),
                ComponentRef {
                    name: n.clone(),
                    params: self.params.clone(),
                    init_from: None,
                },
            )],
            None => self
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        format!("dataset.parts[{i}]"),
                        ComponentRef {
                            name: p.name.clone(),
                            params: p.params.clone(),
                            init_from: None,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Optimiser steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Adam β₁, β₂.
    pub betas: [f64; 2],
    /// Weight decay; 0 gives Adam.
    pub weight_decay: f64,
    /// How `weight_decay` acts: `decoupled` (AdamW) or `l2` (added to the gradient, as
    /// torch.optim.Adam's `weight_decay`, which DM uses). Left out of the resolved config
    /// (and so of the training hash) when default, so existing runs keep their identity.
    #[serde(skip_serializing_if = "WeightDecayMode::is_default")]
    pub weight_decay_mode: WeightDecayMode,
    /// Linear learning-rate warm-up, in steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0: off).
    pub grad_clip: f64,
    /// EMA decay per step (0: no EMA).
    pub ema_decay: f64,
    /// EDM-style EMA half-life in thousands of images; when > 0 it replaces `ema_decay` with
    /// 0.5^(batch_size / (1000 · ema_halflife_kimg)) per step.
    pub ema_halflife_kimg: f64,
    /// Training length in thousands of images (EDM's `duration`); when > 0 it replaces `steps`
    /// with ⌈1000 · duration_kimg / batch_size⌉.
    pub duration_kimg: f64,
    /// Training length in passes over the training set; when > 0 it replaces `steps` (and
    /// `duration_kimg`) with ⌈epochs · |D| / batch_size⌉.
    pub epochs: u64,
    /// Snapshot every this many steps (0: only at the end).
    pub snapshot_every: u64,
}

impl TrainSection {
    /// Optimiser steps to run on a training set of `n` images: `steps`, or `epochs` passes
    /// over the data, or `duration_kimg` thousand images.
    pub fn total_steps(&self, n: usize) -> u64 {
        if self.epochs > 0 {
            (self.epochs.saturating_mul(n as u64)).div_ceil(self.batch_size.max(1) as u64)
        } else if self.duration_kimg > 0.0 {
            (self.duration_kimg * 1000.0 / self.batch_size.max(1) as f64).ceil() as u64
        } else {
            self.steps
        }
    }

    /// EMA decay per step (`ema_decay`, or the half-life converted); 0 means no EMA.
    pub fn ema_beta(&self) -> f64 {
        if self.ema_halflife_kimg > 0.0 {
            0.5f64.powf(self.batch_size as f64 / (self.ema_halflife_kimg * 1000.0))
        } else {
            self.ema_decay
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            steps: 1000,
            batch_size: 32,
            lr: 1e-4,
            betas: [0.9, 0.999],
            weight_decay: 0.0,
            weight_decay_mode: WeightDecayMode::Decoupled,
            warmup_steps: 0,
            grad_clip: 0.0,
            ema_decay: 0.999,
            ema_halflife_kimg: 0.0,
            duration_kimg: 0.0,
            epochs: 0,
            snapshot_every: 0,
        }
    }
}

/// How weight decay enters the Adam step.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WeightDecayMode {
    /// AdamW: `p ← p − lr·wd·p`, independent of the gradient scale.
    #[default]
    Decoupled,
    /// L2 in the gradient: `g ← g + wd·p` before the moments (torch.optim.Adam, DM).
    L2,
}

impl WeightDecayMode {
    fn is_default(&self) -> bool {
        *self == WeightDecayMode::Decoupled
    }
}

/// `[sample]`: generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// Number of images to generate.
    pub count: usize,
    /// Sampler: `heun`, `euler`, `ddpm`, `ddim`.
    pub sampler: Sampler,
    /// Sampling steps.
    pub steps: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Use EMA weights (when trained with EMA).
    pub ema: bool,
    /// Sample from the snapshot after this many steps instead of the final weights.
    pub snapshot: Option<u64>,
    /// Sample and evaluate every snapshot and report the one with the highest ratio of the
    /// first criterion — DM's protocol for the memorization ratio of a training run (DM skips
    /// its first snapshot, the untrained one at step 0, which memlab does not write).
    pub every_snapshot: bool,
    /// EDM's `S_churn` (heun, euler): total stochasticity, 0 = deterministic.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_churn: f64,
    /// EDM's `S_min`: churn only at σ ≥ s_min.
    #[serde(skip_serializing_if = "is_zero")]
    pub s_min: f64,
    /// EDM's `S_max`: churn only at σ ≤ s_max (default: no bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_max: Option<f64>,
    /// EDM's `S_noise`: scale of the churn noise.
    #[serde(skip_serializing_if = "is_one")]
    pub s_noise: f64,
    /// Clamp the denoised estimate to [−1, 1] at every step (default: yes for `ddpm`/`ddim`,
    /// as improved-diffusion's sampling loops; no for `heun`/`euler`, as EDM's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_denoised: Option<bool>,
}

// The sampler extras are left out of the resolved config when default, so run directories
// written before they existed keep byte-identical config.toml files.
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

impl SampleSection {
    /// The sampler with its churn and clipping.
    pub fn settings(&self) -> SamplerSettings {
        SamplerSettings {
            kind: self.sampler,
            churn: Churn {
                s_churn: self.s_churn,
                s_min: self.s_min,
                s_max: self.s_max.unwrap_or(f64::INFINITY),
                s_noise: self.s_noise,
            },
            clip_denoised: self
                .clip_denoised
                .unwrap_or(self.sampler.clips_by_default()),
        }
    }
}

impl Default for SampleSection {
    fn default() -> Self {
        SampleSection {
            count: 64,
            sampler: Sampler::Heun,
            steps: 18,
            batch_size: 64,
            ema: true,
            snapshot: None,
            every_snapshot: false,
            s_churn: 0.0,
            s_min: 0.0,
            s_max: None,
            s_noise: 1.0,
            clip_denoised: None,
        }
    }
}

/// A whole study/run configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[run]`
    #[serde(default)]
    pub run: RunSection,
    /// `[plugins]`
    #[serde(default)]
    pub plugins: PluginsSection,
    /// `[dataset]`
    pub dataset: DatasetSection,
    /// `[architecture]`
    pub architecture: ComponentRef,
    /// `[schedule]`
    pub schedule: ComponentRef,
    /// `[conditioning]` (default `none`)
    #[serde(default = "default_conditioning")]
    pub conditioning: ComponentRef,
    /// `[[criteria]]` (default: `ratio`)
    #[serde(default = "default_criteria")]
    pub criteria: Vec<ComponentRef>,
    /// `[train]`
    #[serde(default)]
    pub train: TrainSection,
    /// `[sample]`
    #[serde(default)]
    pub sample: SampleSection,
}

fn default_conditioning() -> ComponentRef {
    ComponentRef::named("none")
}

fn default_criteria() -> Vec<ComponentRef> {
    vec![ComponentRef::named("ratio")]
}

/// Finds the dotted key at a byte offset of a TOML document: the enclosing `[table]` header
/// plus the key on that line.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    for l in before[..line_start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Reads a config file; a failure names the file.
pub fn read_text(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })
}

/// Sets a dotted key (`train.lr`, `dataset.parts.1.size`) in a TOML document: missing
/// tables are created, numeric segments index arrays (which must already hold that element).
pub fn set_key(doc: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    fn set(
        v: &mut toml::Value,
        parts: &[&str],
        value: toml::Value,
        key: &str,
    ) -> Result<(), String> {
        let (head, rest) = (parts[0], &parts[1..]);
        let slot: &mut toml::Value = match v {
            toml::Value::Table(t) => {
                if rest.is_empty() {
                    t.insert(head.to_string(), value);
                    return Ok(());
                }
                t.entry(head.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => {
                let i: usize = head
                    .parse()
                    .map_err(|_| format!("`{head}` in `{key}` indexes an array: use a number"))?;
                let len = a.len();
                let e = a.get_mut(i).ok_or_else(|| {
                    format!("`{key}`: index {i} is out of range (the array has {len} elements)")
                })?;
                if rest.is_empty() {
                    *e = value;
                    return Ok(());
                }
                e
            }
            _ => {
                return Err(format!(
                    "`{key}`: `{head}` is inside a value that is not a table"
                ));
            }
        };
        set(slot, rest, value, key)
    }
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key"));
    }
    let mut root = toml::Value::Table(std::mem::take(doc));
    let r = set(&mut root, &parts, value, key);
    if let toml::Value::Table(t) = root {
        *doc = t;
    }
    r
}

/// A TOML error located in `text`: the key at the error's span, the line and column, and for
/// a repeated key or table the line where it was first defined.
fn located(text: &str, file: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            message,
        };
    };
    let key = key_at(text, span.start);
    let (l, c) = line_col(text, span.start);
    let message = if message == "duplicate key" && !key.is_empty() {
        let first = key_lines(text, &key).into_iter().find(|&f| f < l);
        let what = if text[span.start.min(text.len())..].starts_with('[')
            || text[..span.start.min(text.len())].trim_end().ends_with('[')
        {
            format!("the table `[{key}]`")
        } else {
            format!("`{key}`")
        };
        match first {
            Some(f) => format!("{what} is defined twice, on line {f} and on line {l}"),
            None => format!("{what} is defined twice (line {l}, column {c})"),
        }
    } else {
        format!("{message} (line {l}, column {c})")
    };
    ConfigError {
        file: file.to_path_buf(),
        key,
        message,
    }
}

/// The 1-based lines of `text` whose [`key_at`] is `key`, in order.
fn key_lines(text: &str, key: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && key_at(text, offset) == key {
            out.push(i + 1);
        }
        offset += line.len();
    }
    out
}

/// Whether a config text has a `[sweep]`, `[study]` or `[emm]` table: a study, run by
/// `memlab study`/`memlab emm`, not `memlab run`. (Here, not in `study`, so that `run` does not
/// depend on `study`: config → run → study is the one direction.)
pub fn is_study(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .map(|t| t.contains_key("sweep") || t.contains_key("emm") || t.contains_key("study"))
        .unwrap_or(false)
}

/// Parses TOML text into a document; a syntax error names the file, the line and the column.
pub fn parse_doc(text: &str, file: &Path) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| located(text, file, &e))
}

/// Applies `key=value` overrides (dotted keys, TOML values; bare words are strings) to a
/// config document. Returns the keys it set, so errors in them are attributed to `--set`.
pub fn apply_overrides(
    doc: &mut toml::Table,
    sets: &[String],
    file: &Path,
) -> Result<Vec<String>, ConfigError> {
    let mut keys = Vec::new();
    for s in sets {
        let err = |m: String| ConfigError {
            file: file.to_path_buf(),
            key: s.clone(),
            message: m,
        };
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| err("--set expects key=value".into()))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
            .map(|mut t| t.remove("v").expect("v"))
            .unwrap_or_else(|_| toml::Value::String(value.trim().to_string()));
        set_key(doc, key.trim(), value).map_err(err)?;
        keys.push(key.trim().to_string());
    }
    Ok(keys)
}

/// Where a config document came from, for error messages: the file, its own text, and the
/// keys whose values were put there by something else (`--set`, a study cell).
pub struct Origin<'a> {
    /// The file named in errors.
    pub file: &'a Path,
    /// The file's text as written (line numbers refer to it).
    pub text: &'a str,
    /// Keys set from elsewhere, each with a phrase saying where (`"set by --set"`).
    pub overridden: &'a [(String, String)],
}

impl Origin<'_> {
    /// Re-targets an error found in the re-serialised document `doc_text` at the user's own
    /// file: a key the user wrote gets its line in the file; an overridden key says so; a line
    /// number of the internal re-serialisation is never shown.
    fn relocate(&self, doc_text: &str, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return ConfigError {
                file: self.file.to_path_buf(),
                key: String::new(),
                message,
            };
        };
        let key = key_at(doc_text, span.start);
        let related = |(o, _): &&(String, String)| {
            *o == key || key.starts_with(&format!("{o}.")) || o.starts_with(&format!("{key}."))
        };
        if let Some((_, by)) = self.overridden.iter().find(related) {
            return ConfigError {
                file: self.file.to_path_buf(),
                message: format!("{message} ({by})"),
                key,
            };
        }
        // The n-th occurrence of the key in the re-serialisation is the n-th in the file (arrays
        // keep their order); an inline table in the file shows up as its parent key.
        let nth = key_lines(&doc_text[..span.start.min(doc_text.len())], &key).len();
        let mut k = key.as_str();
        loop {
            let lines = key_lines(self.text, k);
            if let Some(l) = lines.get(nth.saturating_sub(1)).or(lines.first()) {
                return ConfigError {
                    file: self.file.to_path_buf(),
                    message: format!("{message} (line {l})"),
                    key,
                };
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => break,
            }
        }
        ConfigError {
            file: self.file.to_path_buf(),
            message,
            key,
        }
    }
}

impl Config {
    /// Parses a config from text; `file` is used in error messages and to resolve relative
    /// plugin directories.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| located(text, file, &e))
    }

    /// Parses a config from a document that may hold values from elsewhere (`--set`, a study
    /// cell); errors point at the lines of `origin.text` or name the override.
    pub fn from_doc(doc: &toml::Table, origin: &Origin<'_>) -> Result<Config, ConfigError> {
        let text = toml::to_string(doc).expect("a TOML table serialises");
        toml::from_str::<Config>(&text).map_err(|e| origin.relocate(&text, &e))
    }

    /// Parses the text of `file` and applies `--set` overrides; errors name the file and the
    /// line the user wrote, or the override at fault.
    pub fn parse_with(text: &str, file: &Path, sets: &[String]) -> Result<Config, ConfigError> {
        let mut doc = parse_doc(text, file)?;
        if sets.is_empty() {
            return Config::parse(text, file);
        }
        let overridden: Vec<(String, String)> = apply_overrides(&mut doc, sets, file)?
            .into_iter()
            .map(|k| (k, "set by --set".to_string()))
            .collect();
        Config::from_doc(
            &doc,
            &Origin {
                file,
                text,
                overridden: &overridden,
            },
        )
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        let mut cfg = Config::parse(&text, path)?;
        cfg.resolve_plugin_dirs(path)?;
        Ok(cfg)
    }

    /// Makes relative `[plugins] dirs` relative to the config file's directory; a directory
    /// that does not exist is an error (a typo would otherwise load fewer plugins silently).
    /// Also resolves a relative `architecture.init_from` from the same folder, checks that the
    /// file exists and makes the path absolute.
    pub fn resolve_plugin_dirs(&mut self, file: &Path) -> Result<(), ConfigError> {
        let base = file.parent().unwrap_or(Path::new("."));
        if let Some(p) = &mut self.architecture.init_from {
            if p.is_relative() {
                *p = base.join(&*p);
            }
            if !p.is_file() {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    key: "architecture.init_from".into(),
                    message: format!(
                        "{} is not a file (relative paths are resolved from the config file's \
                         folder)",
                        p.display()
                    ),
                });
            }
            // Absolute, so the run's recorded config (and its training hash) does not depend
            // on the directory memlab was started from.
            if let Ok(abs) = p.canonicalize() {
                *p = abs;
            }
        }
        for d in &mut self.plugins.dirs {
            if d.is_relative() {
                *d = base.join(&*d);
            }
            if !d.is_dir() {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    key: "plugins.dirs".into(),
                    message: format!(
                        "{} is not a directory (relative entries are resolved from the \
                         config file's folder)",
                        d.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Hash of everything that determines the trained weights (seed, dataset, architecture,
    /// schedule, conditioning, training); sampling and evaluation settings are excluded, so a
    /// finished run can be re-sampled or re-evaluated without retraining.
    pub fn training_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        #[derive(Serialize)]
        struct Training<'a> {
            seed: u64,
            dataset: &'a DatasetSection,
            architecture: &'a ComponentRef,
            schedule: &'a ComponentRef,
            conditioning: &'a ComponentRef,
            train: &'a TrainSection,
        }
        let t = Training {
            seed: self.run.seed,
            dataset: &self.dataset,
            architecture: &self.architecture,
            schedule: &self.schedule,
            conditioning: &self.conditioning,
            train: &self.train,
        };
        format!(
            "{:x}",
            Sha256::digest(toml::to_string(&t).unwrap_or_default().as_bytes())
        )
    }

    /// The config as TOML (the resolved config written into run directories).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Host-side checks that need no plugins.
    pub fn check_values(&self, file: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            message,
        };
        for (key, _, c) in self.components() {
            if key != "architecture" && c.init_from.is_some() {
                return Err(err(
                    &format!("{key}.init_from"),
                    "init_from is only read in [architecture] (weights to start from)".into(),
                ));
            }
        }
        // The run directory is `out_dir/name`: the name must stay one folder inside it.
        let name = &self.run.name;
        if name.trim().is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0'])
        {
            return Err(err(
                "run.name",
                format!(
                    "`{name}` is not a folder name: it must be non-empty and contain no `/` or \
                     `\\` (the run directory is run.out_dir/run.name)"
                ),
            ));
        }
        if self.train.batch_size == 0 {
            return Err(err("train.batch_size", "must be at least 1".into()));
        }
        if !(self.train.lr > 0.0 && self.train.lr.is_finite()) {
            return Err(err(
                "train.lr",
                format!("must be a positive number, got {}", self.train.lr),
            ));
        }
        if self.train.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(err("train.betas", "each must be in [0, 1)".into()));
        }
        // `!(v >= 0)` also refuses NaN, which TOML can spell (`nan`).
        for (key, v) in [
            ("train.ema_halflife_kimg", self.train.ema_halflife_kimg),
            ("train.duration_kimg", self.train.duration_kimg),
            ("train.weight_decay", self.train.weight_decay),
            ("train.grad_clip", self.train.grad_clip),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(err(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        if !(0.0..1.0).contains(&self.train.ema_decay) {
            return Err(err("train.ema_decay", "must be in [0, 1)".into()));
        }
        let sm = &self.sample;
        if !(sm.s_churn >= 0.0 && sm.s_churn.is_finite()) {
            return Err(err("sample.s_churn", "must be a finite number ≥ 0".into()));
        }
        if !(sm.s_noise > 0.0 && sm.s_noise.is_finite()) {
            return Err(err("sample.s_noise", "must be a finite number > 0".into()));
        }
        if !(sm.s_min >= 0.0 && sm.s_min <= sm.s_max.unwrap_or(f64::INFINITY)) {
            return Err(err(
                "sample.s_min",
                "must be ≥ 0 and at most sample.s_max".into(),
            ));
        }
        if sm.s_churn > 0.0 && matches!(sm.sampler, Sampler::Ddpm | Sampler::Ddim) {
            return Err(err(
                "sample.s_churn",
                format!(
                    "churn applies to the heun and euler samplers, not {}",
                    sm.sampler
                ),
            ));
        }
        for (key, v) in [
            ("sample.count", self.sample.count),
            ("sample.steps", self.sample.steps),
            ("sample.batch_size", self.sample.batch_size),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1".into()));
            }
        }
        if self.sample.every_snapshot && self.sample.snapshot.is_some() {
            return Err(err(
                "sample.every_snapshot",
                "give either `snapshot` (one snapshot) or `every_snapshot = true`, not both".into(),
            ));
        }
        if self.criteria.is_empty() {
            return Err(err(
                "criteria",
                "at least one replication criterion is needed".into(),
            ));
        }
        if self.dataset.size == Some(0) {
            return Err(err("dataset.size", "must be at least 1".into()));
        }
        match (&self.dataset.name, self.dataset.parts.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    "dataset",
                    "give either `name` (one dataset) or `parts` (a mixture), not both".into(),
                ));
            }
            (None, true) => {
                return Err(err(
                    "dataset",
                    "missing `name` (or `[[dataset.parts]]` for a mixture)".into(),
                ));
            }
            (None, false) => {
                if !self.dataset.params.is_empty() || self.dataset.size.is_some() {
                    return Err(err(
                        "dataset",
                        "with `parts`, give `params` and `size` per part".into(),
                    ));
                }
                if self.dataset.parts.iter().all(|p| p.size == Some(0)) {
                    return Err(err(
                        "dataset.parts",
                        "every part has size 0 (a part with size 0 is left out of the mixture)"
                            .into(),
                    ));
                }
                if self.dataset.heldout > 0 {
                    return Err(err(
                        "dataset.heldout",
                        "held-out baselines need a single dataset, not a mixture".into(),
                    ));
                }
                if self.dataset.subset == SubsetMode::PerClass {
                    return Err(err(
                        "dataset.subset",
                        "per-class subsets apply to a single dataset".into(),
                    ));
                }
            }
            (Some(_), true) => {}
        }
        if self.dataset.resolution == Some(0) {
            return Err(err("dataset.resolution", "must be at least 1".into()));
        }
        if self.sample.steps > MAX_SAMPLE_STEPS {
            return Err(err(
                "sample.steps",
                format!(
                    "{} sampling steps is more than the {MAX_SAMPLE_STEPS} memlab accepts (each \
                     step is at least one network evaluation per batch; the σ schedule alone \
                     would take {})",
                    self.sample.steps,
                    crate::io::alloc::Bytes((self.sample.steps as u128 + 1) * 8)
                ),
            ));
        }
        Ok(())
    }

    /// Every component reference with its config key.
    pub fn components(&self) -> Vec<(String, ComponentKind, ComponentRef)> {
        let mut v: Vec<(String, ComponentKind, ComponentRef)> = self
            .dataset
            .components()
            .into_iter()
            .map(|(k, c)| (k, ComponentKind::Dataset, c))
            .collect();
        v.push((
            "architecture".into(),
            ComponentKind::Architecture,
            self.architecture.clone(),
        ));
        v.push((
            "schedule".into(),
            ComponentKind::Schedule,
            self.schedule.clone(),
        ));
        v.push((
            "conditioning".into(),
            ComponentKind::Conditioning,
            self.conditioning.clone(),
        ));
        for (i, c) in self.criteria.iter().enumerate() {
            v.push((
                format!("criteria[{i}]"),
                ComponentKind::Criterion,
                c.clone(),
            ));
        }
        v
    }

    /// Full validation against the loaded plugins: every component exists and accepts its
    /// parameters (each is constructed once), and the config agrees with what the architecture
    /// declares (a label-ignoring architecture is never class-conditional). Returns the first
    /// problem; see [`Config::component_errors`] for all of them.
    pub fn validate(&self, file: &Path, registry: &Registry) -> Result<(), ConfigError> {
        self.check_values(file)?;
        match self.component_errors(file, registry).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every component that is not loaded (`KEY.name`) or refuses its parameters
    /// (`KEY.params`), in config order, then every declaration of the architecture the rest of
    /// the config contradicts ([`labels_contradiction`]), so one check reports them all.
    pub fn component_errors(&self, file: &Path, registry: &Registry) -> Vec<ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: file.to_path_buf(),
            key,
            message,
        };
        let mut errors = Vec::new();
        let mut arch = None;
        let mut cond = None;
        for (key, kind, c) in self.components() {
            if registry.info(kind, &c.name).is_none() {
                errors.push(err(
                    format!("{key}.name"),
                    registry.unknown(kind, &c.name).to_string(),
                ));
                continue;
            }
            match registry.create(kind, &c.name, &c.params_toml(), self.run.seed) {
                Err(e) => errors.push(err(format!("{key}.params"), format!("{e:#}"))),
                Ok((Component::Architecture(a), label)) => {
                    arch = Some(ArchitectureHandle::new(a, label));
                }
                Ok((Component::Conditioning(c), label)) => {
                    cond = Some(ConditioningHandle::new(c, label));
                }
                Ok(_) => {}
            }
        }
        let (Some(arch), Some(cond)) = (arch, cond) else {
            return errors;
        };
        let info = match arch.info() {
            Ok(info) => info,
            Err(e) => {
                errors.push(err("architecture.name".into(), format!("{e:#}")));
                return errors;
            }
        };
        // Whether the conditioning gives classes at all, asked for a nominal labelled training
        // set (the real one is only read at run start, which checks again with it).
        let nominal = DataSummary { len: 2, classes: 2 };
        if let Ok(classes) = cond.classes(nominal)
            && let Some(m) = labels_contradiction(&arch, &info, &cond, classes)
        {
            errors.push(err("conditioning.name".into(), m));
        }
        errors
    }
}

/// Why a class-conditional model (`classes` > 0 from `cond`) contradicts an architecture that
/// declares [`ArchInfo::ignores_labels`]: its samples would be the unconditional run's and
/// per-class results would mean nothing. `None` when they agree.
pub fn labels_contradiction(
    arch: &ArchitectureHandle,
    info: &ArchInfo,
    cond: &ConditioningHandle,
    classes: u32,
) -> Option<String> {
    (info.ignores_labels && classes > 0).then(|| {
        format!(
            "{} makes the model class-conditional, but {} declares that it \
             ignores class labels: its samples would be identical to the unconditional run's \
             and per-class results would mean nothing. Set `conditioning.name = \"none\"`, or \
             choose an `architecture.name` that uses labels",
            cond.label(),
            arch.label()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[run]
name = "t"
[dataset]
name = "mondrian"
params = { resolution = 16 }
[architecture]
name = "convnet"
[schedule]
name = "edm"
"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = Config::parse(OK, Path::new("x.toml")).unwrap();
        assert_eq!(c.conditioning.name, "none");
        assert_eq!(c.criteria[0].name, "ratio");
        assert_eq!(c.dataset.params["resolution"].as_integer(), Some(16));
        assert_eq!(c.dataset.subset, SubsetMode::Random);
        c.check_values(Path::new("x.toml")).unwrap();
    }

    #[test]
    fn init_from_is_resolved_hashed_and_architecture_only() {
        let plain = Config::parse(OK, Path::new("x.toml")).unwrap();
        assert!(
            !plain.to_toml().contains("init_from"),
            "absent: not serialised"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.safetensors"), b"").unwrap();
        let file = dir.path().join("x.toml");
        let text = OK.replace(
            "name = \"convnet\"",
            "name = \"convnet\"\ninit_from = \"w.safetensors\"",
        );
        let mut c = Config::parse(&text, &file).unwrap();
        c.resolve_plugin_dirs(&file).unwrap();
        assert_eq!(
            c.architecture.init_from.as_deref(),
            Some(
                dir.path()
                    .join("w.safetensors")
                    .canonicalize()
                    .unwrap()
                    .as_path()
            )
        );
        assert_ne!(c.training_hash(), plain.training_hash());
        c.check_values(&file).unwrap();
        // A missing file is named with its key.
        let mut c = Config::parse(&text.replace("w.safetensors", "no.safetensors"), &file).unwrap();
        let e = c.resolve_plugin_dirs(&file).unwrap_err();
        assert_eq!(e.key, "architecture.init_from", "{e}");
        // Other sections do not take it.
        let text = OK.replace(
            "name = \"edm\"",
            "name = \"edm\"\ninit_from = \"w.safetensors\"",
        );
        let e = Config::parse(&text, Path::new("x.toml"))
            .unwrap()
            .check_values(Path::new("x.toml"))
            .unwrap_err();
        assert_eq!(e.key, "schedule.init_from", "{e}");
    }

    #[test]
    fn misspelled_key_names_file_key_and_line() {
        let text = OK.replace("[schedule]", "[train]\nstpes = 3\n[schedule]");
        let e = Config::parse(&text, Path::new("cfg/x.toml")).unwrap_err();
        assert_eq!(e.key, "train.stpes", "{e}");
        let s = e.to_string();
        assert!(s.starts_with("cfg/x.toml: key `train.stpes`"), "{s}");
        assert!(s.contains("unknown field `stpes`"), "{s}");
        assert!(s.contains("line 10"), "{s}");
    }

    #[test]
    fn bad_value_is_reported() {
        let text = OK.replace("[schedule]", "[sample]\nsampler = \"rk4\"\n[schedule]");
        let e = Config::parse(&text, Path::new("x.toml")).unwrap_err();
        assert_eq!(e.key, "sample.sampler");
        assert!(
            e.message.contains("rk4") && e.message.contains("heun"),
            "{e}"
        );
        let text = OK.replace(
            "[schedule]",
            "[sample]\nsampler = \"ddpm\"\ns_churn = 5\n[schedule]",
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        let e = c.check_values(Path::new("x.toml")).unwrap_err();
        assert_eq!(e.key, "sample.s_churn");
    }

    #[test]
    fn duration_and_half_life_convert_like_edm() {
        let mut t = TrainSection {
            batch_size: 512,
            duration_kimg: 20.0,
            ema_halflife_kimg: 0.5,
            ..Default::default()
        };
        assert_eq!(t.total_steps(100), 40); // ⌈20 000 / 512⌉
        t.epochs = 3;
        assert_eq!(t.total_steps(1000), 6); // ⌈3 · 1000 / 512⌉
        t.epochs = 0;
        assert!((t.ema_beta() - 0.5f64.powf(512.0 / 500.0)).abs() < 1e-12);
        t.duration_kimg = 0.0;
        t.ema_halflife_kimg = 0.0;
        assert_eq!(t.total_steps(100), t.steps);
        assert_eq!(t.ema_beta(), t.ema_decay);
    }

    #[test]
    fn roundtrips_through_toml() {
        let c = Config::parse(OK, Path::new("x.toml")).unwrap();
        let again = Config::parse(&c.to_toml(), Path::new("y.toml")).unwrap();
        assert_eq!(c, again);
    }
}
