//! Fallible allocation for buffers sized by user or plugin input: checked arithmetic and
//! `Vec::try_reserve_exact`, so an absurd size ends in an error naming what was being
//! allocated instead of "memory allocation of N bytes failed" and SIGABRT. The run-level
//! estimate that refuses such sizes earlier is [`crate::run::budget`].

use std::fmt;

use anyhow::{Result, anyhow};

/// Images one dataset `fill` call may produce at most, whatever their size.
pub const FILL_CHUNK_IMAGES: usize = 256;

/// Bytes one dataset `fill` call may produce at most (at least one image per call).
pub const FILL_CHUNK_BYTES: usize = 64 << 20;

/// Images per dataset `fill` call for images of `per` values: at most [`FILL_CHUNK_IMAGES`]
/// and [`FILL_CHUNK_BYTES`], at least one.
pub fn fill_chunk(per: usize) -> usize {
    (FILL_CHUNK_BYTES / per.saturating_mul(4).max(1)).clamp(1, FILL_CHUNK_IMAGES)
}

/// A byte count printed in decimal units (`12.3 TB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u128);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["kB", "MB", "GB", "TB", "PB", "EB", "ZB"];
        if self.0 < 1000 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1000.0;
        let mut u = 0;
        while v >= 999.95 && u + 1 < UNITS.len() {
            v /= 1000.0;
            u += 1;
        }
        write!(f, "{v:.1} {}", UNITS[u])
    }
}

/// A vector of `n` copies of `value`, or an error naming `what` when it cannot be allocated.
pub fn try_zeroed<T: Clone>(n: usize, value: T, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for exactly `n` elements, or an error naming `what` when it
/// cannot be allocated (instead of the abort of `Vec::with_capacity`).
pub fn try_with_capacity<T>(n: usize, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        anyhow!(
            "{}: cannot allocate {} ({e})",
            what(),
            Bytes(n as u128 * std::mem::size_of::<T>() as u128)
        )
    })?;
    Ok(v)
}

/// `a × b` as `usize`, or an error naming `what` on overflow.
pub fn mul(a: usize, b: usize, what: impl FnOnce() -> String) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| anyhow!("{}: {a} × {b} values overflow the address space", what()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_chunks_are_bounded_in_images_and_bytes() {
        assert_eq!(fill_chunk(3 * 32 * 32), FILL_CHUNK_IMAGES);
        assert_eq!(fill_chunk(3 * 1024 * 1024), 5);
        assert_eq!(fill_chunk(usize::MAX), 1);
    }

    #[test]
    fn failed_allocations_are_errors() {
        let e = try_with_capacity::<f32>(usize::MAX / 2, || "sample.count".into()).unwrap_err();
        assert!(
            e.to_string().starts_with("sample.count: cannot allocate"),
            "{e}"
        );
        assert!(mul(usize::MAX, 2, || "x".into()).is_err());
        assert_eq!(try_zeroed(3, 1u8, || "y".into()).unwrap(), vec![1, 1, 1]);
    }
}
