//! Shape rules shared by the host's engine and the shape-only test host, so both agree.

/// NumPy broadcast of two shapes (`None` when they do not broadcast).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if da == db || db == 1 {
                Some(da)
            } else if da == 1 {
                Some(db)
            } else {
                None
            }
        })
        .collect()
}

/// Resolves a reshape target with at most one `-1` against `input`'s element count.
pub fn resolve_shape(input: &[usize], spec: &[i64]) -> Result<Vec<usize>, String> {
    let too_large = || format!("reshape {input:?} to {spec:?}: the element count overflows");
    let product = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n = product(input).ok_or_else(too_large)?;
    let mut unknown = None;
    let mut known = 1usize;
    let mut out = Vec::with_capacity(spec.len());
    for (i, &d) in spec.iter().enumerate() {
        if d == -1 {
            if unknown.replace(i).is_some() {
                return Err(format!("reshape {spec:?}: at most one -1"));
            }
            out.push(0);
        } else if d <= 0 {
            return Err(format!("reshape {spec:?}: sizes must be positive or -1"));
        } else {
            known = known.checked_mul(d as usize).ok_or_else(too_large)?;
            out.push(d as usize);
        }
    }
    if let Some(i) = unknown {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = n / known;
    }
    let n_out = product(&out).ok_or_else(too_large)?;
    if n != n_out {
        return Err(format!(
            "cannot reshape {input:?} ({n} elements) to {out:?} ({n_out} elements)"
        ));
    }
    Ok(out)
}
