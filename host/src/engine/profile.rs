//! Wall time per host op, for finding where a network's forward pass goes.
//!
//! Off unless `MEMLAB_OP_PROFILE=1`; then [`super::executor::Executor`] times every op a plugin
//! calls (with its input shapes) and `memlab bench train` prints a table per measurement
//! ([`table`]). Ops run eagerly on the CPU backend, so an op's time is its kernel's time; under
//! autodiff the backward pass is not included.

use std::collections::HashMap;
use std::sync::Mutex;

/// Whether ops are timed (`MEMLAB_OP_PROFILE` set to anything but `0`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MEMLAB_OP_PROFILE").is_some_and(|v| v != "0"))
}

/// Accumulated time of one op on one input geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// Op name as the executor reports it (`conv2d`, `group_norm`, …).
    pub op: String,
    /// Input shapes.
    pub shapes: String,
    /// Calls.
    pub calls: u64,
    /// Total seconds.
    pub secs: f64,
}

/// Calls and seconds per (op, input shapes).
type Times = HashMap<(String, String), (u64, f64)>;

static TIMES: Mutex<Option<Times>> = Mutex::new(None);

/// Adds one call of `op` on `shapes` that took `secs`.
pub fn record(op: &str, shapes: String, secs: f64) {
    let mut g = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    let e = g
        .get_or_insert_with(HashMap::new)
        .entry((op.to_string(), shapes))
        .or_insert((0, 0.0));
    e.0 += 1;
    e.1 += secs;
}

/// Everything recorded since the last call, slowest first, and clears it.
pub fn take() -> Vec<OpTime> {
    let mut g = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<OpTime> = g
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|((op, shapes), (calls, secs))| OpTime {
            op,
            shapes,
            calls,
            secs,
        })
        .collect();
    rows.sort_by(|a, b| b.secs.total_cmp(&a.secs).then(a.op.cmp(&b.op)));
    rows
}

/// A text table of `rows` (per pass: `passes` divides the times), with per-op totals first.
pub fn table(rows: &[OpTime], passes: usize) -> String {
    use std::fmt::Write;
    let passes = passes.max(1) as f64;
    let total: f64 = rows.iter().map(|r| r.secs).sum();
    let mut by_op: HashMap<&str, (u64, f64)> = HashMap::new();
    for r in rows {
        let e = by_op.entry(&r.op).or_default();
        e.0 += r.calls;
        e.1 += r.secs;
    }
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    let mut s = format!("{:>9}  {:>6}  {:>6}  op\n", "ms/pass", "%", "calls");
    for (op, (calls, secs)) in &ops {
        let _ = writeln!(
            s,
            "{:>9.2}  {:>5.1}%  {:>6}  {op}",
            secs / passes * 1e3,
            100.0 * secs / total.max(f64::MIN_POSITIVE),
            *calls as f64 / passes
        );
    }
    let _ = writeln!(
        s,
        "{:>9.2}  100.0%          all ops\n",
        total / passes * 1e3
    );
    let _ = writeln!(
        s,
        "{:>9}  {:>6}  {:>6}  op on input shapes",
        "ms/pass", "%", "calls"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>9.3}  {:>5.1}%  {:>6}  {} {}",
            r.secs / passes * 1e3,
            100.0 * r.secs / total.max(f64::MIN_POSITIVE),
            r.calls as f64 / passes,
            r.op,
            r.shapes
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sums_per_op_and_per_geometry() {
        let _ = take();
        record("conv2d", "[1, 2]".into(), 0.5);
        record("conv2d", "[1, 2]".into(), 0.25);
        record("conv2d", "[3]".into(), 0.25);
        record("add", "[3]".into(), 1.0);
        let rows = take();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].op.as_str(), rows[0].secs), ("add", 1.0));
        let conv = rows.iter().find(|r| r.shapes == "[1, 2]").unwrap();
        assert_eq!((conv.calls, conv.secs), (2, 0.75));
        let t = table(&rows, 2);
        // Per op and per pass: conv2d 1.0 s over 2 passes = 500 ms, 50% of 2 s, 1.5 calls.
        assert!(t.contains("   500.00   50.0%     1.5  conv2d"), "{t}");
        assert!(take().is_empty());
    }
}
