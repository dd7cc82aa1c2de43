//! Distances computed exactly enough to rank by: f64 over the f32 values.

use memlab_plugin_api::ffi::Distance;

/// The distance between two images of equal length, in f64 (L2: squared differences summed in
/// 8 fixed lanes, then the lanes in order and the square root; L∞: the largest absolute
/// difference). Every reported neighbour distance comes from here, whichever search found the
/// neighbour, so all searches agree to the bit.
pub fn exact(a: &[f32], b: &[f32], d: Distance) -> f64 {
    match d {
        Distance::L2 => sum_sq_diff(a, b).sqrt(),
        Distance::Linf => a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .fold(0.0, f64::max),
    }
}

/// Σ (a − b)² in f64, over 8 independent lanes (vectorisable; a fixed order, so the same
/// bits on every machine), then the tail.
fn sum_sq_diff(a: &[f32], b: &[f32]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            let d = x[i] as f64 - y[i] as f64;
            acc[i] += d * d;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for (x, y) in ra.iter().zip(rb) {
        s += (*x as f64 - *y as f64).powi(2);
    }
    s
}

/// ‖a‖₂ in f64.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}
