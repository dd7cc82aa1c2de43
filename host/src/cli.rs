//! Command-line interface (`clap`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::plugins::{ComponentRow, Registry};
use crate::{EXIT_FAILURE, EXIT_USAGE};

/// memlab: memorization studies of diffusion models, one TOML file per study.
#[derive(Parser, Debug)]
#[command(name = "memlab", version, about, long_about = None)]
pub struct Cli {
    /// Extra plugin directory (repeatable; searched before MEMLAB_PLUGIN_PATH and the
    /// executable's directory).
    #[arg(long = "plugin-dir", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List every loaded component (kind, name, library, version, description).
    Plugins {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also list each component's parameters.
        #[arg(long)]
        params: bool,
        /// Load only this library file and report on it.
        #[arg(long, value_name = "PATH")]
        check: Option<PathBuf>,
    },
    /// Train, sample and evaluate one configuration (resumes an interrupted run).
    Run {
        /// The config file.
        config: PathBuf,
        /// Override a config value: `--set train.steps=100` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Parent directory of the run directory (default: the config's `run.out_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-evaluate a run's samples (or other images) with its criteria or new ones, without retraining.
    Eval {
        /// The run directory.
        run_dir: PathBuf,
        /// Evaluate these images (`.npy`, float32 NCHW in [-1, 1]) instead of the run's samples.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Override config values, e.g. `--set 'criteria=[{name="l2", params={threshold=2.0}}]'`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Where to write results.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Datasets: download the official archives (needs internet).
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataAction,
    },
    /// Benchmarks (results go in BENCHMARKS.md; never run as timed tests).
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Work with study configs.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
}

/// `memlab bench` targets.
#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Training-step and forward-pass time of an architecture (compare with bench/torch_unet.py).
    Train {
        /// Architecture component.
        #[arg(long, default_value = "unet")]
        arch: String,
        /// Its parameters (TOML).
        #[arg(
            long,
            default_value = "channels = 32\nchannel_mult = [1, 2, 2]\nres_blocks = 2\nattention_resolutions = [8]\nheads = 4\ndropout = 0.0\nscale_shift = false\nlearn_sigma = false"
        )]
        params: String,
        /// Training batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Image side.
        #[arg(long, default_value_t = 32)]
        res: usize,
        /// Timed training steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Inference batch size.
        #[arg(long, default_value_t = 256)]
        forward_batch: usize,
        /// Timed forward passes.
        #[arg(long, default_value_t = 2)]
        forward_reps: usize,
    },
    /// Per-op cost of the plugin tensor API and its share of a training step.
    Dispatch {
        /// Architecture component.
        #[arg(long, default_value = "convnet")]
        arch: String,
        /// Its parameters (TOML).
        #[arg(long, default_value = "channels = 32\nblocks = 2")]
        params: String,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Image side.
        #[arg(long, default_value_t = 32)]
        res: usize,
        /// Timed training steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `memlab data` actions.
#[derive(Subcommand, Debug)]
pub enum DataAction {
    /// Download and verify a dataset's official files: `cifar10` or `mnist`.
    Fetch {
        /// Dataset name.
        name: String,
        /// Destination directory (default: data/<name>).
        #[arg(long)]
        dest: Option<PathBuf>,
    },
}

/// `memlab config` actions.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Parse a config and validate it against the loaded plugins (exit code 2 on errors).
    Check {
        /// Config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .try_init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {ce}");
                EXIT_USAGE
            } else {
                eprintln!("error: {e:#}");
                EXIT_FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plugins {
            json,
            params,
            check: Some(path),
        } => check_library(&path, json, params),
        Command::Plugins {
            json,
            params,
            check: None,
        } => {
            let reg = Registry::load(&cli.plugin_dirs)?;
            report_failures(&reg);
            print_rows(&reg.rows(), json, params)?;
            Ok(0)
        }
        Command::Run { config, sets, out } => {
            let (cfg, reg) = crate::run::prepare(&config, &sets, &cli.plugin_dirs)?;
            let r = crate::run::run(&cfg, &reg, out.as_deref())?;
            println!("run directory: {}", r.dir.display());
            for c in &r.evaluation.criteria {
                println!(
                    "{}: memorization ratio {:.2}% ({} of {} samples), {} distinct training images replicated",
                    c.name,
                    100.0 * c.ratio,
                    c.replicates,
                    r.evaluation.samples,
                    c.distinct_replicated
                );
            }
            println!(
                "mean nearest-neighbour L2 distance: {:.4}",
                r.evaluation.mean_nn_l2
            );
            Ok(0)
        }
        Command::Eval {
            run_dir,
            samples,
            sets,
            out,
        } => {
            let r = crate::run::eval_dir(
                &run_dir,
                &sets,
                &cli.plugin_dirs,
                samples.as_deref(),
                out.as_deref(),
            )?;
            println!("results: {}", r.dir.display());
            for c in &r.evaluation.criteria {
                println!(
                    "{}: memorization ratio {:.2}% ({} of {} samples), {} distinct training images replicated",
                    c.name,
                    100.0 * c.ratio,
                    c.replicates,
                    r.evaluation.samples,
                    c.distinct_replicated
                );
            }
            Ok(0)
        }
        Command::Data {
            action: DataAction::Fetch { name, dest },
        } => {
            if !crate::fetch::datasets().iter().any(|(n, _)| *n == name) {
                let known: Vec<&str> = crate::fetch::datasets().iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "error: unknown dataset `{name}`; memlab can fetch: {}",
                    known.join(", ")
                );
                return Ok(EXIT_USAGE);
            }
            let dest = dest.unwrap_or_else(|| PathBuf::from("data").join(&name));
            let files = crate::fetch::fetch(&name, &dest)?;
            for f in &files {
                println!("{}", f.display());
            }
            println!("set the {name} dataset's `path` to {}", dest.display());
            Ok(0)
        }
        Command::Bench {
            what:
                BenchWhat::Train {
                    arch,
                    params,
                    batch,
                    res,
                    steps,
                    forward_batch,
                    forward_reps,
                },
        } => {
            let reg = Registry::load(&cli.plugin_dirs)?;
            report_failures(&reg);
            let r = crate::bench::train(
                &reg,
                &arch,
                &params,
                batch,
                res,
                steps,
                forward_batch,
                forward_reps,
            )?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
        Command::Bench {
            what:
                BenchWhat::Dispatch {
                    arch,
                    params,
                    batch,
                    res,
                    steps,
                    json,
                },
        } => {
            let reg = Registry::load(&cli.plugin_dirs)?;
            report_failures(&reg);
            let r = crate::bench::dispatch(&reg, &arch, &params, batch, res, steps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "plugin->host call (no tensor work): {:8.1} ns",
                    r.vtable_call_ns
                );
                println!(
                    "add via host tensor API:            {:8.1} ns",
                    r.api_add_ns
                );
                println!(
                    "add directly on burn tensors:       {:8.1} ns",
                    r.burn_add_ns
                );
                println!(
                    "overhead per op:                    {:8.1} ns",
                    r.overhead_per_op_ns
                );
                println!(
                    "training step of {} ({batch}x3x{res}x{res}): {:.1} ms, {} ops -> dispatch overhead {:.3}% of the step",
                    r.arch, r.step_ms, r.ops_per_step, r.overhead_percent
                );
            }
            Ok(0)
        }
        Command::Config {
            action: ConfigAction::Check { files },
        } => {
            let mut code = 0;
            for file in files {
                match check_config(&file, &cli.plugin_dirs) {
                    Ok(()) => println!("{}: ok", file.display()),
                    Err(e) => {
                        if let Some(ce) = e.downcast_ref::<ConfigError>() {
                            eprintln!("error: {ce}");
                            code = EXIT_USAGE;
                        } else {
                            return Err(e);
                        }
                    }
                }
            }
            Ok(code)
        }
    }
}

fn check_config(file: &std::path::Path, dirs: &[PathBuf]) -> Result<()> {
    let cfg = Config::load(file)?;
    let mut all = dirs.to_vec();
    all.extend(cfg.plugins.dirs.iter().cloned());
    let reg = Registry::load(&all)?;
    report_failures(&reg);
    cfg.validate(file, &reg)?;
    Ok(())
}

fn report_failures(reg: &Registry) {
    for f in reg.failures() {
        eprintln!(
            "warning: skipped plugin library {}: {}",
            f.path.display(),
            f.reason
        );
    }
}

fn check_library(path: &std::path::Path, json: bool, params: bool) -> Result<i32> {
    match crate::plugins::check_file(path) {
        Ok(lib) => {
            let reg = Registry::from_files(std::slice::from_ref(&lib.path))?;
            if !json {
                println!(
                    "{}: ok — {} {} (plugin-api {}), {} component(s), sha256 {}",
                    path.display(),
                    lib.manifest.name,
                    lib.manifest.version,
                    lib.manifest.api_version,
                    lib.manifest.components.len(),
                    &lib.sha256[..16]
                );
            }
            print_rows(&reg.rows(), json, params)?;
            Ok(0)
        }
        Err(f) => {
            eprintln!("error: {}: {}", f.path.display(), f.reason);
            Ok(EXIT_FAILURE)
        }
    }
}

fn print_rows(rows: &[ComponentRow], json: bool, params: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no plugins found (searched --plugin-dir, MEMLAB_PLUGIN_PATH and the executable's directory)"
        )?;
        return Ok(());
    }
    let headers = ["KIND", "NAME", "LIBRARY", "VERSION", "DESCRIPTION"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.kind.clone(),
                r.name.clone(),
                r.library.clone(),
                r.version.clone(),
                r.description.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |out: &mut dyn Write, c: [&str; 5]| -> std::io::Result<()> {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    line(&mut out, headers)?;
    for (c, r) in cells.iter().zip(rows) {
        line(&mut out, [&c[0], &c[1], &c[2], &c[3], &c[4]])?;
        if params {
            for p in &r.params {
                let default = if p.default.is_empty() {
                    "required".to_string()
                } else {
                    format!("= {}", p.default)
                };
                writeln!(out, "      {} ({}, {}): {}", p.name, p.ty, default, p.doc)?;
            }
        }
    }
    Ok(())
}
