//! Command-line interface (`clap`).

pub mod bench;
pub mod scaffold;

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
        /// Load only this library file and report on it (a bare name is a file in the
        /// current directory).
        #[arg(long, value_name = "PATH")]
        check: Option<PathBuf>,
    },
    /// Internal: load plugin libraries and print a verdict line for each (the crash-isolating
    /// probe, see `plugins::probe`).
    #[command(name = "__probe-plugins", hide = true)]
    ProbePlugins {
        /// Library files.
        files: Vec<PathBuf>,
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
        /// Evaluate these images (`.npy`, float32 or float64 NCHW in [-1, 1]) instead of the run's samples.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Override config values, e.g. `--set 'criteria=[{name="l2", params={threshold=2.0}}]'`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Where to write results.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// False-positive rate of the criteria: judge real held-out images (the config's dataset
    /// with `--heldout` parameters, e.g. CIFAR-10's test split) against its training set.
    Baseline {
        /// The config: `[dataset]` is the training set, `[[criteria]]` the criteria.
        config: PathBuf,
        /// A `dataset.params` value that turns the training set into the held-out set, e.g.
        /// `--heldout path=../shared/data/cifar10-jpeg/test.tar` (repeatable).
        #[arg(long = "heldout", value_name = "KEY=VALUE", required = true)]
        heldout: Vec<String>,
        /// Override a config value: `--set dataset.resolution=16` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Where to write baseline.json and baseline.md (default: `<run.out_dir>/<run.name>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a study: every cell of its `[sweep]` grid (resuming), then results, figures and report.
    Study(StudyArgs),
    /// Effective model memorization: the largest training-set size still memorized (ratio ≥ 1 − ε).
    Emm {
        /// The study config (with an optional `[emm]` table and `[sweep]`).
        config: PathBuf,
        /// Override a config value, e.g. `--set emm.epsilon=0.2` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Sizes evaluated at once on CPU (at least 1).
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        jobs: usize,
        /// Parent directory of the study directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Regenerate a study's results.csv/json, figures and report.md/html from its cells.
    Report {
        /// The study directory (or its config file).
        study: PathBuf,
    },
    /// Datasets: download the official archives (needs internet), or import local copies.
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
    /// Scaffold a plugin crate that builds, loads and runs: Cargo.toml, src/lib.rs (with a
    /// unit test), example.toml and a README with the commands to build, check and run it.
    New {
        /// architecture, schedule, conditioning, dataset or criterion.
        kind: String,
        /// Component and crate name (ASCII letters, digits, `-`, `_`).
        name: String,
        /// Directory to create (default: ./NAME); refused if it exists and is not empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on this published memlab-plugin-api version instead of a checkout by path.
        #[arg(long, value_name = "VERSION", conflicts_with = "api_path")]
        api_version: Option<String>,
        /// Depend on the memlab-plugin-api crate in this directory (default: the plugin-api of
        /// the checkout this memlab was built from).
        #[arg(long, value_name = "DIR")]
        api_path: Option<PathBuf>,
        /// Criteria only: a criterion that judges on the neighbours' images and on the features
        /// of an embedding network (instead of on distances alone).
        #[arg(long)]
        images: bool,
    },
}

/// `memlab bench` targets.
/// `memlab study` arguments.
#[derive(clap::Args, Debug)]
pub struct StudyArgs {
    /// The study config.
    pub config: PathBuf,
    /// Override a config value before expansion, e.g. `--set train.steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Cells run at once on CPU (worker threads, at least 1); a GPU runs one cell at a time.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub jobs: usize,
    /// Parent directory of the study directory (default: `[study] out_dir`, else `studies`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only this cell (0-based grid index), e.g. from a Slurm array task.
    #[arg(long, conflicts_with = "slurm")]
    pub cell: Option<usize>,
    /// Write a Slurm array script (one task per cell) instead of running.
    #[arg(long)]
    pub slurm: bool,
    /// List the cells and exit.
    #[arg(long, conflicts_with_all = ["slurm", "cell"])]
    pub list: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Training-step and forward-pass time of an architecture (compare with bench/torch_unet.py).
    Train(crate::cli::bench::TrainBench),
    /// Forward + backward time of each hand-written CPU kernel against burn's own op.
    Kernels {
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 11)]
        reps: usize,
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
    /// Download and verify a dataset's published files (those its plugin declares; shipped:
    /// `cifar10`, `mnist`); with `--from`, import them (or, for a dataset with a class-folder
    /// layout such as CIFAR-10, a .tar / folder of class folders) from a local path.
    Fetch {
        /// Dataset name.
        name: String,
        /// Destination directory (default: data/NAME).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Import from this local file or directory instead of downloading (no internet
        /// needed): the official files (md5-verified), or for CIFAR-10 a .tar or directory of
        /// the ten class folders (copied to DEST/cifar10-jpeg/ with a SHA256SUMS file; the
        /// folder name and layout are the dataset plugin's declaration).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
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

/// Parser of counts that must be ≥ 1 (`--jobs`).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        // Lines from a study's worker threads carry the cell they belong to.
        .format(|buf, record| {
            let ts = buf.timestamp_seconds();
            let cell = crate::io::progress::label()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default();
            writeln!(buf, "[{ts} {}{cell}] {}", record.level(), record.args())
        })
        .try_init();
    let cli = Cli::parse();
    // A mistyped --plugin-dir would otherwise load fewer plugins without a word.
    if let Some(d) = cli.plugin_dirs.iter().find(|d| !d.is_dir()) {
        eprintln!("error: --plugin-dir {}: not a directory", d.display());
        return EXIT_USAGE;
    }
    // Every command loads plugins behind a probe process running this executable.
    if let Ok(exe) = std::env::current_exe() {
        crate::plugins::probe::enable(exe);
    }
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
        Command::ProbePlugins { files } => Ok(crate::plugins::probe::serve(&files)),
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
            let r = crate::run::evaluate::eval_dir(
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
        Command::Baseline {
            config,
            heldout,
            sets,
            out,
        } => {
            let b = crate::run::baseline::run(
                &config,
                &sets,
                &heldout,
                &cli.plugin_dirs,
                out.as_deref(),
            )?;
            println!("{}", b.markdown);
            println!(
                "wrote {} and {}",
                b.json.display(),
                b.markdown_file.display()
            );
            Ok(0)
        }
        Command::Study(args) => study_command(&args, &cli.plugin_dirs),
        Command::Emm {
            config,
            sets,
            jobs,
            out,
        } => {
            let study = crate::study::Study::load(&config, &sets)?;
            let cells = study.cells()?;
            let reg = load_for(&cells, &cli.plugin_dirs)?;
            study.validate(&cells, &reg)?;
            let dir = study.emm_dir(out.as_deref());
            let searches = crate::study::emm::search_all(&study, &dir, &cli.plugin_dirs, jobs)?;
            for s in &searches {
                let g = if s.group.is_empty() {
                    String::new()
                } else {
                    let v: Vec<String> = s.group.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("[{}] ", v.join(", "))
                };
                println!("{g}{}", s.message);
            }
            println!("report: {}", dir.join("emm.md").display());
            Ok(0)
        }
        Command::Report { study } => {
            let dir = crate::study::report::resolve_dir(&study)?;
            let r = crate::study::report::report(&dir)?;
            let finished = r
                .rows
                .iter()
                .filter(|r| r.status == crate::study::results::CellStatus::Finished)
                .count();
            for c in r
                .rows
                .iter()
                .filter(|r| r.status == crate::study::results::CellStatus::Corrupt)
            {
                log::warn!(
                    "cell {} is corrupt: {}",
                    c.cell,
                    c.error.as_deref().unwrap_or_default()
                );
            }
            println!(
                "{}: {finished} of {} cells finished; wrote results.csv, results.json, report.md, report.html, {}",
                dir.display(),
                r.rows.len(),
                r.figures.join(", ")
            );
            Ok(0)
        }
        Command::Data {
            action: DataAction::Fetch { name, dest, from },
        } => {
            // What can be fetched, and how, is declared by the dataset plugins.
            let reg = Registry::load(&cli.plugin_dirs)?;
            report_failures(&reg);
            let spec = match crate::data::fetch::lookup(&reg, &name) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let dest = dest.unwrap_or_else(|| PathBuf::from("data").join(&name));
            if let Some(from) = from {
                let done = crate::data::import::import(&spec, &from, &dest)?;
                for f in &done.files {
                    println!("{}", f.display());
                }
                println!("{}", done.note);
                return Ok(0);
            }
            let files = crate::data::fetch::fetch(&spec, &dest)?;
            for f in &files {
                println!("{}", f.display());
            }
            println!("{}\ndestination: {}", spec.usage, dest.display());
            Ok(0)
        }
        Command::Bench {
            what: BenchWhat::Train(spec),
        } => {
            let reg = Registry::load(&cli.plugin_dirs)?;
            report_failures(&reg);
            let r = crate::cli::bench::train(&reg, &spec)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
        Command::Bench {
            what: BenchWhat::Kernels { reps },
        } => {
            println!(
                "{:<40} {:>10} {:>10} {:>7}   {:>14}",
                "op (forward + backward)", "memlab ms", "burn ms", "ratio", "forward alone"
            );
            for r in crate::cli::bench::kernels(reps.max(1))? {
                let fwd = r
                    .forward
                    .map(|(ms, gf)| format!("{ms:.2} ms {gf:.0} GFLOP/s"))
                    .unwrap_or_default();
                println!(
                    "{:<40} {:>10.2} {:>10.2} {:>7.2}   {fwd}",
                    r.op,
                    r.memlab_ms,
                    r.burn_ms,
                    r.memlab_ms / r.burn_ms
                );
            }
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
            let r = crate::cli::bench::dispatch(&reg, &arch, &params, batch, res, steps)?;
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
        Command::New {
            kind,
            name,
            dir,
            api_version,
            api_path,
            images,
        } => new_plugin(
            &kind,
            &name,
            dir,
            api_version.as_deref(),
            api_path.as_deref(),
            images,
        ),
        Command::Config {
            action: ConfigAction::Check { files },
        } => {
            let mut code = 0;
            for file in files {
                match check_config(&file, &cli.plugin_dirs) {
                    Ok(errors) if errors.is_empty() => println!("{}: ok", file.display()),
                    Ok(errors) => {
                        for ce in errors {
                            eprintln!("error: {ce}");
                        }
                        code = EXIT_USAGE;
                    }
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

/// Loads the plugins a study's cells need (`--plugin-dir` plus their `[plugins] dirs`).
fn load_for(cells: &[crate::study::Cell], dirs: &[PathBuf]) -> Result<Registry> {
    let mut all = dirs.to_vec();
    if let Some(c) = cells.first() {
        all.extend(c.config.plugins.dirs.iter().cloned());
    }
    let reg = Registry::load(&all)?;
    report_failures(&reg);
    Ok(reg)
}

fn study_command(args: &StudyArgs, plugin_dirs: &[PathBuf]) -> Result<i32> {
    use crate::study::{Study, exec, report, slurm as sl};
    let StudyArgs {
        config,
        sets,
        jobs,
        out,
        cell,
        slurm,
        list,
    } = args;
    let (jobs, out, cell, slurm, list) = (*jobs, out.as_deref(), *cell, *slurm, *list);
    let study = Study::load(config, sets)?;
    let cells = study.cells()?;
    let dir = study.dir(out);
    if list {
        let mut out = std::io::stdout().lock();
        for c in &cells {
            // A closed pipe (`| head`) just ends the listing.
            let line = format!(
                "{:>4}  {}  {}",
                c.index,
                c.name,
                crate::study::describe(&c.values)
            );
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        return Ok(0);
    }
    let reg = load_for(&cells, plugin_dirs)?;
    study.validate(&cells, &reg)?;
    drop(reg);
    exec::write_manifest(&study, &dir, &exec::manifest(&study, &cells))?;
    if slurm {
        let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let binary = std::env::current_exe()?;
        let dirs: Vec<PathBuf> = plugin_dirs.iter().map(|d| abs(d)).collect();
        let cwd = std::env::current_dir()?;
        let (cfg_abs, dir_abs) = (abs(config), abs(&dir));
        let path = sl::write(&sl::Job {
            name: &study.name(),
            cells: cells.len(),
            binary: &binary,
            config: &cfg_abs,
            study_dir: &dir_abs,
            plugin_dirs: &dirs,
            sets,
            workdir: &cwd,
            slurm: &study.section.slurm,
        })?;
        println!("wrote {} ({} array tasks)", path.display(), cells.len());
        println!("submit:  sbatch {}", path.display());
        println!("then:    {} report {}", binary.display(), dir_abs.display());
        return Ok(0);
    }
    let selected: Vec<crate::study::Cell> = match cell {
        Some(i) => vec![study.cell(i)?],
        None => cells,
    };
    let outcomes = exec::run_cells(&selected, &dir, plugin_dirs, jobs)?;
    let failed: Vec<String> = selected
        .iter()
        .zip(&outcomes)
        .filter_map(|(c, o)| match o {
            exec::Outcome::Failed(e) => Some(format!("cell {} ({}): {e}", c.index, c.name)),
            _ => None,
        })
        .collect();
    if let Some(i) = cell {
        println!(
            "cell {i}: {} -> {}",
            match outcomes[0] {
                exec::Outcome::Skipped => "already finished",
                exec::Outcome::Finished => "finished",
                exec::Outcome::Failed(_) => "FAILED",
            },
            exec::cell_dir(&dir, &selected[0]).display()
        );
    } else {
        let r = report::report(&dir)?;
        println!(
            "study directory: {}\nresults: {} (report.md, report.html, {})",
            dir.display(),
            dir.join("results.csv").display(),
            r.figures.join(", ")
        );
    }
    for f in &failed {
        eprintln!("error: {f}");
    }
    Ok(if failed.is_empty() { 0 } else { EXIT_FAILURE })
}

/// Checks one config file; returns every component problem (not loaded, bad parameters,
/// contradicted declarations) of a run config, and every problem of every cell of a study, at
/// once. Other mistakes (unreadable file, bad TOML, a bad host value of a run config) are the
/// error.
fn check_config(file: &std::path::Path, dirs: &[PathBuf]) -> Result<Vec<ConfigError>> {
    let text = crate::config::read_text(file)?;
    if crate::study::Study::is_study(&text) {
        let study = crate::study::Study::parse(&text, file)?;
        let mut cells = study.cells()?;
        // An EMM search also runs every grid size: check the smallest and the largest.
        if let Some(e) = &study.emm {
            e.check(file)?;
            let mut study = study.clone();
            study.axes.retain(|a| !a.keys.contains(&e.key));
            for g in 0..study.len() {
                for n in [e.sizes[0], *e.sizes.last().expect("checked")] {
                    let mut v = study.values(g);
                    v.push((e.key.clone(), toml::Value::Integer(n as i64)));
                    cells.push(study.cell_with(cells.len(), v)?);
                }
            }
        }
        let reg = load_for(&cells, dirs)?;
        return Ok(study.errors(&cells, &reg));
    }
    let cfg = Config::load(file)?;
    let mut all = dirs.to_vec();
    all.extend(cfg.plugins.dirs.iter().cloned());
    let reg = Registry::load(&all)?;
    report_failures(&reg);
    cfg.check_values(file)?;
    Ok(cfg.component_errors(file, &reg))
}

/// `memlab new`: usage mistakes are reported with exit code 2, I/O failures as errors.
fn new_plugin(
    kind: &str,
    name: &str,
    dir: Option<PathBuf>,
    api_version: Option<&str>,
    api_path: Option<&std::path::Path>,
    images: bool,
) -> Result<i32> {
    use crate::cli::scaffold::{self, ApiDependency, ScaffoldError, Template};
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        Ok(EXIT_USAGE)
    };
    let kind = match scaffold::parse_kind(kind) {
        Ok(k) => k,
        Err(e) => return usage(e),
    };
    let template = match Template::new(kind, images) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if let Err(e) = scaffold::check_name(name) {
        return usage(e);
    }
    let api = match (api_version, api_path) {
        (Some(v), _) => ApiDependency::version(v),
        (None, Some(p)) => ApiDependency::path(p),
        (None, None) => ApiDependency::this_checkout(),
    };
    let api = match api {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match scaffold::scaffold(template, name, &dir, &api) {
        Ok(files) => {
            println!("created the {kind} plugin `{name}` in {}:", dir.display());
            for f in &files {
                println!("  {}", f.display());
            }
            let lib = scaffold::library_file(name);
            println!(
                "next:\n  cd {}\n  cargo build\n  memlab plugins --check target/debug/{lib}\n  \
                 memlab run example.toml --plugin-dir target/debug",
                dir.display()
            );
            Ok(0)
        }
        Err(e) => match e.downcast_ref::<ScaffoldError>() {
            Some(se) => usage(se.to_string()),
            None => Err(e),
        },
    }
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
    match crate::plugins::check_file(path)? {
        Ok(reg) => {
            let lib = &reg.libraries()[0];
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
