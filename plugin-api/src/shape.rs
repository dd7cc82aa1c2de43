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

// Parameter-request rules (one forward pass may request each name once, unless shared), with
// the messages both hosts report.

/// A second plain request for parameter `name` within one forward pass.
pub fn reused_param(name: &str) -> String {
    format!(
        "parameter `{name}` is requested a second time in one forward pass, which would share \
         its weights silently: give the layers distinct scopes, or declare the sharing with \
         `ctx.shared_param(..)` / a `ctx.shared()` scope"
    )
}

/// A second request for buffer `name` within one forward pass.
pub fn reused_buffer(name: &str) -> String {
    format!(
        "buffer `{name}` is requested a second time in one forward pass; keep the first \
         tensor (clone it) instead"
    )
}

/// A buffer's name requested as a parameter.
pub fn param_is_buffer(name: &str) -> String {
    format!("`{name}` is a buffer (not trained) but is requested as a parameter")
}

/// A parameter's name requested as a buffer.
pub fn buffer_is_param(name: &str) -> String {
    format!("`{name}` is a parameter but is requested as a buffer")
}
