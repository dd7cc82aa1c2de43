//! Size budget: what a configuration needs, estimated before anything is allocated.
//!
//! Sizes come from the user (`sample.count`, `train.batch_size`, `sample.steps`, dataset
//! sizes) and from plugins (image shapes, dataset lengths, parameter shapes). Allocating from
//! them blindly ends, for absurd values, in "memory allocation of N bytes failed" and SIGABRT,
//! which no error handling can catch. So a run is checked in two layers:
//!
//! 1. [`preflight`], before the run directory exists: the datasets report their shapes and
//!    lengths, the architecture runs one shape-only forward pass
//!    ([`memlab_plugin_api::testing::ShapeOps`], no tensor data) that reports its parameter
//!    shapes and activation sizes, and every large buffer of the run is estimated with `u128`
//!    arithmetic (an overflow is itself a "cannot fit"). The total is compared with the memory
//!    available ([`available`]) and a run that cannot fit is refused with every key involved
//!    and its share in human units.
//! 2. Allocations sized by user or plugin input use [`try_zeroed`](crate::io::alloc::try_zeroed) /
//!    [`try_with_capacity`](crate::io::alloc::try_with_capacity)
//!    (`Vec::try_reserve_exact` after checked arithmetic), so an estimate that was too low
//!    still ends in an error, not an abort.
//!
//! The estimate is deliberately rough: it is there to refuse what is out of reach by orders of
//! magnitude, not to predict peak memory. Measured on CPU, it is above the peak resident size
//! by 1.2–1.7× (quickstart: 277 MB estimated, 167 MB peak; a UNet-128 at 32×32 with batch 8:
//! 4.3 GB estimated, 3.6 GB peak), so a refused run would not have fit either. Values that make no
//! sense whatever the memory (`sample.steps` above
//! [`crate::config::MAX_SAMPLE_STEPS`]) are refused by the config check itself.

use anyhow::{Result, anyhow, bail};
use memlab_plugin_api::ffi::DataSummary;
use memlab_plugin_api::testing::elements;

use crate::config::Config;
use crate::engine::device;
use crate::io::alloc::Bytes;
use crate::plugins::Registry;

/// The bytes no machine can hold: 2⁴⁷ (128 TiB), the user address space of x86-64 and
/// AArch64 with 4-level page tables. Used when the available memory is unknown.
pub const ADDRESS_SPACE: u128 = 1 << 47;

/// Environment variable that replaces the detected available memory: bytes, optionally with a
/// decimal suffix `K`, `M`, `G`, `T` (`8G`, `512M`). For tests, and for machines shared with
/// other jobs.
pub const MEMORY_LIMIT_ENV: &str = "MEMLAB_MEMORY_LIMIT";

/// Memory the run may use, and where the figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    /// Bytes.
    pub bytes: u128,
    /// Where the figure comes from, for the error message.
    pub source: String,
}

/// Parses a [`MEMORY_LIMIT_ENV`] value: bytes with an optional `K`/`M`/`G`/`T` suffix
/// (decimal, an optional trailing `B`).
pub fn parse_size(s: &str) -> Option<u128> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K') => (&t[..i], 1_000u128),
        (i, 'M') => (&t[..i], 1_000_000),
        (i, 'G') => (&t[..i], 1_000_000_000),
        (i, 'T') => (&t[..i], 1_000_000_000_000),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u128)
}

/// The memory a run may use: [`MEMORY_LIMIT_ENV`] when set, otherwise `MemAvailable` of
/// `/proc/meminfo` (Linux); `None` elsewhere. An unparsable override is an error rather than
/// silently ignored.
pub fn available() -> Result<Option<Available>> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) {
        let bytes = parse_size(&v).ok_or_else(|| {
            anyhow!("{MEMORY_LIMIT_ENV} = `{v}`: expected bytes, optionally with K, M, G or T")
        })?;
        return Ok(Some(Available {
            bytes,
            source: MEMORY_LIMIT_ENV.to_string(),
        }));
    }
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u128>().ok())
        .map(|kb| Available {
            bytes: kb * 1024,
            source: "MemAvailable in /proc/meminfo".into(),
        }))
}

/// Where a buffer lives: host memory, or the compute device's (the same on CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Host memory.
    Host,
    /// Device memory (host memory when the device is the CPU).
    Device,
}

/// One estimated buffer of a run.
#[derive(Debug, Clone)]
pub struct Need {
    /// The config keys (with their values) that decide its size.
    pub keys: String,
    /// What it is, including the per-item size.
    pub what: String,
    /// Bytes; `None` when the product overflows `u128`.
    pub bytes: Option<u128>,
    /// Where it lives.
    pub place: Place,
}

/// The estimated buffers of a run.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    /// Every buffer, in the order added.
    pub needs: Vec<Need>,
}

impl Estimate {
    /// Adds a buffer of `factors` multiplied together (checked).
    pub fn add(
        &mut self,
        place: Place,
        keys: impl Into<String>,
        what: impl Into<String>,
        factors: &[u128],
    ) {
        let bytes = factors.iter().try_fold(1u128, |a, &f| a.checked_mul(f));
        self.needs.push(Need {
            keys: keys.into(),
            what: what.into(),
            bytes,
            place,
        });
    }

    /// Total bytes of the buffers in `places`; `None` on overflow.
    pub fn total(&self, places: &[Place]) -> Option<u128> {
        self.needs
            .iter()
            .filter(|n| places.contains(&n.place))
            .try_fold(0u128, |a, n| a.checked_add(n.bytes?))
    }

    /// Refuses the run when a buffer cannot be counted, when the host buffers (all buffers on
    /// a CPU device) exceed `avail`, or, without a figure, when any total exceeds the address
    /// space. `accelerator`: device buffers live in accelerator memory, which is not measured;
    /// they are held only to the address-space bound.
    pub fn check(&self, avail: Option<&Available>, accelerator: bool) -> Result<()> {
        let host_places: &[Place] = if accelerator {
            &[Place::Host]
        } else {
            &[Place::Host, Place::Device]
        };
        if let Some(n) = self.needs.iter().find(|n| n.bytes.is_none()) {
            bail!(
                "{} cannot fit: {} would take more bytes than can be counted (the size \
                 overflows 128-bit arithmetic)",
                n.keys,
                n.what
            );
        }
        let host = self.total(host_places);
        let device = self.total(&[Place::Device]);
        let (limit, source) = match avail {
            Some(a) => (
                a.bytes,
                format!(
                    "this machine has {} available ({})",
                    Bytes(a.bytes),
                    a.source
                ),
            ),
            None => (
                ADDRESS_SPACE,
                format!("no machine can address more than {}", Bytes(ADDRESS_SPACE)),
            ),
        };
        let over_host = host.is_none_or(|h| h > limit);
        let over_device = accelerator && device.is_none_or(|d| d > ADDRESS_SPACE);
        if !(over_host || over_device) {
            return Ok(());
        }
        let (places, total, limit_text) = if over_host {
            (host_places, host, source)
        } else {
            (
                &[Place::Device][..],
                device,
                format!("no device can address more than {}", Bytes(ADDRESS_SPACE)),
            )
        };
        let mut parts: Vec<&Need> = self
            .needs
            .iter()
            .filter(|n| places.contains(&n.place))
            .collect();
        parts.sort_by_key(|n| std::cmp::Reverse(n.bytes));
        let top = parts[0];
        let total = total.map_or("more bytes than can be counted".into(), |t| {
            Bytes(t).to_string()
        });
        let mut msg = format!(
            "{} needs {} for {}; the run needs an estimated {total} in all and {limit_text}. \
             Estimate by buffer:",
            top.keys,
            Bytes(top.bytes.unwrap_or(u128::MAX)),
            top.what
        );
        for n in parts.iter().filter(|n| n.bytes.unwrap_or(0) > 0) {
            msg.push_str(&format!(
                "\n  {:>9}  {}: {}",
                Bytes(n.bytes.unwrap_or(u128::MAX)).to_string(),
                n.keys,
                n.what
            ));
        }
        Err(anyhow!(msg))
    }
}

/// Estimates what `cfg` needs and refuses it, naming the keys, when it cannot fit (see the
/// [module docs](self)). Constructs the dataset, conditioning and architecture components
/// once more (cheap: datasets produce images lazily) and allocates nothing sized by the config.
pub fn preflight(cfg: &Config, reg: &Registry) -> Result<()> {
    let est = estimate(cfg, reg)?;
    let avail = available()?;
    let accelerator = device::is_accelerator(cfg.run.device);
    est.check(avail.as_ref(), accelerator)?;
    if let Some(total) = est.total(&[Place::Host, Place::Device]) {
        log::info!(
            "memory estimate: {}{}",
            Bytes(total),
            avail.map_or(String::new(), |a| format!(
                " of {} available",
                Bytes(a.bytes)
            ))
        );
    }
    Ok(())
}

/// `a×b×c` of an image shape.
fn shape_text(s: [usize; 3]) -> String {
    format!("{}×{}×{}", s[0], s[1], s[2])
}

/// The buffers a run of `cfg` allocates, estimated from the plugins' declarations.
pub fn estimate(cfg: &Config, reg: &Registry) -> Result<Estimate> {
    let seed = cfg.run.seed;
    let mut e = Estimate::default();
    const F32: u128 = 4;

    // The training set: images loaded in chunks, downsampled, kept (counted twice: the loaded
    // native images and the kept ones coexist while a part is processed).
    let mut n_total: u128 = 0;
    let mut shape: Option<[usize; 3]> = None;
    let mut classes = 0u32;
    let sizes: Vec<Option<u64>> = match &cfg.dataset.name {
        Some(_) => vec![cfg.dataset.size],
        None => cfg.dataset.parts.iter().map(|p| p.size).collect(),
    };
    for ((key, c), size) in cfg.dataset.components().into_iter().zip(sizes) {
        if size == Some(0) {
            continue;
        }
        let mut h = reg.dataset(&c.name, &c.params_toml(), seed)?;
        let info = h.info()?;
        let native = [info.channels, info.height, info.width];
        // More than the dataset holds is reported by the loader; estimate what can be drawn.
        let n = size.unwrap_or(info.len).min(info.len) as u128;
        let size_key = match (&cfg.dataset.name, size) {
            (Some(_), Some(s)) => format!("dataset.size = {s}"),
            (None, Some(s)) => format!("{key}.size = {s}"),
            (_, None) => format!("{key}.params (all {} images)", info.len),
        };
        e.add(
            Place::Host,
            format!("{size_key}, {key}.params ({} images)", shape_text(native)),
            format!(
                "the training images of {} ({} f32 each, loaded and kept)",
                h.label(),
                shape_text(native)
            ),
            &[n, elements(&native), F32, 2],
        );
        if cfg.dataset.heldout > 0 {
            e.add(
                Place::Host,
                format!("dataset.heldout = {}", cfg.dataset.heldout),
                format!("held-out images ({} f32 each)", shape_text(native)),
                &[cfg.dataset.heldout as u128, elements(&native), F32, 2],
            );
        }
        n_total += n;
        classes = if cfg.dataset.name.is_some() {
            info.class_names.len().max(1) as u32
        } else {
            classes + 1
        };
        shape.get_or_insert(match cfg.dataset.resolution {
            Some(r) => [native[0], r, r],
            None => native,
        });
    }
    let Some(shape) = shape else {
        return Ok(e);
    };
    let per = elements(&shape);
    let [c, h, w] = shape;

    // Generated samples (host): the images, their labels, the PNG grid (up to 8× upscaled
    // RGB bytes per value), and per-sample evaluation results.
    let count = cfg.sample.count as u128;
    let grid_scale = (64 / h.max(1)).clamp(1, 8) as u128;
    e.add(
        Place::Host,
        format!("sample.count = {}", cfg.sample.count),
        format!(
            "the samples ({} f32 each, with labels, evaluation and the samples.png grid)",
            shape_text(shape)
        ),
        &[count, per * (F32 + grid_scale * grid_scale) + 64],
    );
    let sample_batch = cfg.sample.batch_size.min(cfg.sample.count).max(1) as u128;
    e.add(
        Place::Device,
        format!("sample.batch_size = {}", cfg.sample.batch_size),
        format!(
            "the sampler's images of one batch ({} f32 each)",
            shape_text(shape)
        ),
        &[sample_batch, per, F32, 6],
    );
    let train_batch = cfg.train.batch_size as u128;
    e.add(
        Place::Device,
        format!("train.batch_size = {}", cfg.train.batch_size),
        format!(
            "a training batch's images, noise and targets ({} f32 each)",
            shape_text(shape)
        ),
        &[train_batch, per, F32, 4],
    );

    // The network: parameter shapes and activation sizes from one shape-only pass.
    let cond = reg.conditioning(
        &cfg.conditioning.name,
        &cfg.conditioning.params_toml(),
        seed,
    )?;
    let summary = DataSummary {
        len: n_total.min(u64::MAX as u128) as u64,
        classes,
    };
    let cond_classes = cond.classes(summary)?;
    let arch = reg.architecture(
        &cfg.architecture.name,
        &cfg.architecture.params_toml(),
        seed,
    )?;
    let info = arch.info()?;
    if info.needs_training_set {
        e.add(
            Place::Device,
            "dataset.size",
            format!("the training set as one tensor for {}", arch.label()),
            &[n_total, per, F32],
        );
        return Ok(e);
    }
    // The shape-only pass applies the host's own shape rules (`memlab_plugin_api::shape`),
    // so its failure is the one the first real pass would report, only before anything is
    // allocated. (An architecture that reads tensor values would get empty data here; none of
    // the bundled ones does.)
    let s = arch.inspect([1, c, h, w], cond_classes).map_err(|err| {
        anyhow!(
            "architecture.params: {err:#} (in a shape-only forward pass on one {} image, run \
             to estimate the model's size before allocating it)",
            shape_text(shape)
        )
    })?;
    let params = s
        .params
        .iter()
        .fold(0u128, |a, (_, sh)| a.saturating_add(elements(sh)));
    let arch_key = format!("architecture.params ({})", arch.label());
    if info.parameter_free {
        e.add(
            Place::Device,
            arch_key.clone(),
            format!("{params} parameters (f32)"),
            &[params, F32],
        );
    } else {
        let ema = u128::from(cfg.train.ema_beta() > 0.0);
        e.add(
            Place::Host,
            arch_key.clone(),
            format!(
                "{params} parameters × {} copies in f32 (weights, gradients, two Adam moments{})",
                4 + ema,
                if ema == 1 { ", EMA" } else { "" }
            ),
            &[params, 4 + ema, F32],
        );
        e.add(
            Place::Device,
            format!("train.batch_size = {}, {arch_key}", cfg.train.batch_size),
            format!(
                "a training step's activations ({} values per image, kept for backward)",
                s.activations
            ),
            &[train_batch, s.activations, F32],
        );
    }
    // Inference frees intermediates as it goes: a few of the largest tensors are live at once.
    let live = s.activations.min(s.largest.saturating_mul(8));
    e.add(
        Place::Device,
        format!("sample.batch_size = {}, {arch_key}", cfg.sample.batch_size),
        format!("a sampling batch's activations (about {live} values per image)"),
        &[sample_batch, live, F32],
    );
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_in_decimal_units() {
        assert_eq!(Bytes(999).to_string(), "999 B");
        assert_eq!(Bytes(12_300_000_000_000).to_string(), "12.3 TB");
        assert_eq!(Bytes(22_100_000_000).to_string(), "22.1 GB");
        assert_eq!(Bytes(999_999).to_string(), "1.0 MB");
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2_000_000_000));
        assert_eq!(parse_size("1.5 gb"), Some(1_500_000_000));
        assert_eq!(parse_size("512M"), Some(512_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn refusal_names_the_largest_key_and_overflow_is_cannot_fit() {
        let mut e = Estimate::default();
        e.add(
            Place::Host,
            "sample.count = 1000000000",
            "the samples",
            &[1_000_000_000, 3072, 4],
        );
        e.add(
            Place::Host,
            "train.batch_size = 4",
            "a batch",
            &[4, 3072, 4],
        );
        let avail = Available {
            bytes: 22_100_000_000,
            source: "test".into(),
        };
        let msg = e.check(Some(&avail), false).unwrap_err().to_string();
        assert!(
            msg.starts_with("sample.count = 1000000000 needs 12.3 TB for the samples"),
            "{msg}"
        );
        assert!(msg.contains("22.1 GB available"), "{msg}");
        assert!(msg.contains("train.batch_size = 4"), "{msg}");
        // Fits without the huge buffer.
        e.needs.remove(0);
        e.check(Some(&avail), false).unwrap();
        // Accelerator: device buffers are held only to the address space.
        e.add(Place::Device, "k", "big", &[1 << 40]);
        e.check(Some(&avail), true).unwrap();
        assert!(e.check(Some(&avail), false).is_err());
        e.add(Place::Device, "w", "absurd", &[u128::MAX, 2]);
        let msg = e.check(None, true).unwrap_err().to_string();
        assert!(msg.starts_with("w cannot fit"), "{msg}");
    }
}
