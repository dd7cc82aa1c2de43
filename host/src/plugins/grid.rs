//! A discrete schedule's σ grid, read back from its `round_sigma` (see
//! [`crate::diffusion::vlb`] for what it is for and why it is not a plugin-ABI method).

use anyhow::{Result, bail};

/// Most timesteps [`discrete_grid`] enumerates (a guard against a schedule whose `round_sigma`
/// is not a step function).
pub const MAX_TIMESTEPS: usize = 1 << 20;

/// The grid σ_0 < … < σ_{T−1} of a discrete schedule from its `round_sigma`, or `None` when
/// the schedule is continuous (`round_sigma` is the identity).
///
/// `round` must be a non-decreasing step function whose values are its fixed points (what
/// "nearest supported σ" means); anything else is an error naming what failed.
pub fn discrete_grid(round: &mut dyn FnMut(f64) -> Result<f64>) -> Result<Option<Vec<f64>>> {
    // Continuous: two generic probes are their own rounding.
    let probes = [0.7310585786300049, 1.234567890123457];
    let mut identity = true;
    for p in probes {
        identity &= round(p)? == p;
    }
    if identity {
        return Ok(None);
    }
    let low = f64::MIN_POSITIVE;
    let mut top = round(f64::MAX)?;
    let bottom = round(low)?;
    let check = |s: f64| -> Result<()> {
        if !(s.is_finite() && s > 0.0) {
            bail!("round_sigma returned {s}, not a positive finite σ");
        }
        Ok(())
    };
    check(top)?;
    check(bottom)?;
    let mut grid = vec![top];
    while top > bottom {
        if grid.len() > MAX_TIMESTEPS {
            bail!("round_sigma has more than {MAX_TIMESTEPS} values: not a discrete schedule");
        }
        if round(top)? != top {
            bail!("round_sigma({top}) is not {top}: its values must round to themselves");
        }
        // Invariant: round(lo) < top ≤ round(hi); positive f64 order = bit-pattern order.
        let (mut lo, mut hi) = (low.to_bits(), top.to_bits());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if round(f64::from_bits(mid))? < top {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let next = round(f64::from_bits(lo))?;
        check(next)?;
        if next >= top {
            bail!("round_sigma is not non-decreasing near σ = {top}");
        }
        grid.push(next);
        top = next;
    }
    grid.reverse();
    Ok(Some(grid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_read_back_from_round_sigma() {
        let grid: Vec<f64> = (0..300).map(|i| 0.01 * 1.03f64.powi(i)).collect();
        let g = grid.clone();
        // Nearest grid value, the lower one on a tie (the discrete schedules' rounding).
        let mut nearest = |s: f64| -> Result<f64> {
            let i = g.partition_point(|&x| x < s);
            Ok(if i == 0 {
                g[0]
            } else if i == g.len() {
                g[g.len() - 1]
            } else if s - g[i - 1] <= g[i] - s {
                g[i - 1]
            } else {
                g[i]
            })
        };
        assert_eq!(discrete_grid(&mut nearest).unwrap().unwrap(), grid);
        // Continuous: the identity.
        assert_eq!(discrete_grid(&mut |s| Ok(s)).unwrap(), None);
        // A single-valued rounding is a one-step grid.
        assert_eq!(discrete_grid(&mut |_| Ok(2.5)).unwrap().unwrap(), vec![2.5]);
        // Clamping to a range is continuous inside it.
        assert_eq!(
            discrete_grid(&mut |s: f64| Ok(s.clamp(0.002, 80.0))).unwrap(),
            None
        );
        // Not a rounding: refused, not enumerated forever.
        let e = discrete_grid(&mut |s: f64| Ok(s.sqrt())).unwrap_err();
        assert!(e.to_string().contains("round to themselves"), "{e}");
    }
}
