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

// ---------------------------------------------------------------------------------------------
// Op rules: one function per tensor op, over the shapes (and integer flags) of its inputs in
// the op's argument order. The host's executor checks every op with these before running it on
// burn, and the shape-only host (`testing::ShapeOps`) runs nothing but these, so a model that
// passes the shape-only tests is accepted by the host and vice versa.

use abi_stable::std_types::ROption;

use crate::ffi::{Conv2dOptions, TensorId};

/// The inputs of `linear` / `conv2d` in the order their rules read them: `[x, w]`, then the
/// bias when there is one. Both hosts gather an op's inputs with this.
pub fn with_bias(x: TensorId, w: TensorId, b: ROption<TensorId>) -> Vec<TensorId> {
    let mut ids = vec![x, w];
    ids.extend(b.into_option());
    ids
}

/// The inputs of `group_norm` / `layer_norm` in the order their rules read them: `x`, then
/// the gain and the shift that are present.
pub fn affine_ids(x: TensorId, gamma: ROption<TensorId>, beta: ROption<TensorId>) -> Vec<TensorId> {
    let mut ids = vec![x];
    ids.extend(gamma.into_option());
    ids.extend(beta.into_option());
    ids
}

/// What the rules see of a tensor: its shape and whether it holds integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Integer (labels, indices) rather than float.
    pub int: bool,
}

impl Meta {
    /// A float tensor of `shape`.
    pub fn float(shape: Vec<usize>) -> Meta {
        Meta { shape, int: false }
    }
    /// Its rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// An op's output, or why its inputs are refused.
pub type Rule = Result<Meta, String>;

/// Refuses integer inputs.
pub fn float_only(op: &str, s: &[Meta]) -> Result<(), String> {
    if s.iter().any(|m| m.int) {
        return Err(format!("`{op}` needs float tensors, got an integer tensor"));
    }
    Ok(())
}

/// `constant` / `constant_int`: `values` numbers for `shape`.
pub fn constant(values: usize, shape: &[usize], int: bool) -> Rule {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if n != values {
        return Err(format!("{values} values for shape {shape:?}"));
    }
    Ok(Meta {
        shape: shape.to_vec(),
        int,
    })
}

/// Element-wise float ops with one input (`unary`, `scalar`, `clamp`, `softmax` minus its dim).
pub fn elementwise(op: &str, s: &[Meta]) -> Rule {
    float_only(op, s)?;
    Ok(Meta::float(s[0].shape.clone()))
}

/// `binary`: NumPy broadcasting of two float tensors.
pub fn binary(s: &[Meta]) -> Rule {
    float_only("binary", s)?;
    broadcast_shape(&s[0].shape, &s[1].shape)
        .map(Meta::float)
        .ok_or_else(|| {
            format!(
                "shapes {:?} and {:?} do not broadcast",
                s[0].shape, s[1].shape
            )
        })
}

/// `reshape` with at most one `-1` (integer tensors stay integer).
pub fn reshape(s: &[Meta], spec: &[i64]) -> Rule {
    Ok(Meta {
        shape: resolve_shape(&s[0].shape, spec)?,
        int: s[0].int,
    })
}

/// `permute`: `axes` must be a permutation of the dimensions (float tensors).
pub fn permute(s: &[Meta], axes: &[usize]) -> Rule {
    float_only("permute", s)?;
    let r = s[0].rank();
    let mut seen = vec![false; r];
    if axes.len() != r
        || axes
            .iter()
            .any(|&a| a >= r || std::mem::replace(&mut seen[a], true))
    {
        return Err(format!("axes {axes:?} are not a permutation of 0..{r}"));
    }
    Ok(Meta::float(axes.iter().map(|&a| s[0].shape[a]).collect()))
}

/// `concat` of float tensors along `dim`: equal ranks and equal sizes elsewhere.
pub fn concat(s: &[Meta], dim: usize) -> Rule {
    float_only("concat", s)?;
    let first = s.first().ok_or("nothing to concatenate")?;
    let r = first.rank();
    if dim >= r {
        return Err(format!("dimension {dim} out of range for rank {r}"));
    }
    let mut shape = first.shape.clone();
    shape[dim] = 0;
    for x in s {
        if x.rank() != r || (0..r).any(|d| d != dim && x.shape[d] != first.shape[d]) {
            return Err(format!("shapes differ outside dimension {dim}"));
        }
        shape[dim] += x.shape[dim];
    }
    Ok(Meta::float(shape))
}

/// `slice` `start..end` of `dim` of a float tensor (non-empty, in bounds).
pub fn slice(s: &[Meta], dim: usize, start: usize, end: usize) -> Rule {
    float_only("slice", s)?;
    let r = s[0].rank();
    if dim >= r || start >= end || end > s[0].shape[dim] {
        return Err(format!(
            "range {start}..{end} of dimension {dim} is out of bounds"
        ));
    }
    let mut shape = s[0].shape.clone();
    shape[dim] = end - start;
    Ok(Meta::float(shape))
}

/// `reduce` over `dim` (a rank-1 input keeps its dimension as 1).
pub fn reduce(s: &[Meta], dim: usize, keepdim: bool) -> Rule {
    float_only("reduce", s)?;
    let r = s[0].rank();
    if dim >= r {
        return Err(format!("dimension {dim} out of range for rank {r}"));
    }
    let mut shape = s[0].shape.clone();
    if keepdim || r == 1 {
        shape[dim] = 1;
    } else {
        shape.remove(dim);
    }
    Ok(Meta::float(shape))
}

/// `matmul`: `[.., m, k] · [.., k, n]` with broadcast batch dimensions.
pub fn matmul(s: &[Meta]) -> Rule {
    float_only("matmul", s)?;
    let (x, y) = (&s[0], &s[1]);
    if x.rank() < 2 || y.rank() < 2 {
        return Err("matmul needs rank ≥ 2".into());
    }
    let (m, k1) = (x.shape[x.rank() - 2], x.shape[x.rank() - 1]);
    let (k2, n) = (y.shape[y.rank() - 2], y.shape[y.rank() - 1]);
    if k1 != k2 {
        return Err(format!("inner dimensions differ: {k1} vs {k2}"));
    }
    let mut shape = broadcast_shape(&x.shape[..x.rank() - 2], &y.shape[..y.rank() - 2])
        .ok_or("batch dimensions do not broadcast")?;
    shape.extend([m, n]);
    Ok(Meta::float(shape))
}

/// `softmax` over `dim`.
pub fn softmax(s: &[Meta], dim: usize) -> Rule {
    if dim >= s[0].rank() {
        return Err(format!("dimension {dim} out of range"));
    }
    elementwise("softmax", s)
}

/// `linear`: `x [.., in]`, weight `[in, out]`, optional bias `[out]`.
pub fn linear(s: &[Meta]) -> Rule {
    float_only("linear", s)?;
    let (x, w) = (&s[0], &s[1]);
    if w.rank() != 2 || x.shape.last() != Some(&w.shape[0]) {
        return Err("input's last dimension must equal the weight's first ([in, out])".into());
    }
    if let Some(b) = s.get(2)
        && b.shape != [w.shape[1]]
    {
        return Err(format!("bias must have shape [{}]", w.shape[1]));
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank checked") = w.shape[1];
    Ok(Meta::float(shape))
}

/// `conv2d`: NCHW input, `[out, in/groups, kh, kw]` weight, optional bias `[out]`.
pub fn conv2d(s: &[Meta], o: &Conv2dOptions) -> Rule {
    float_only("conv2d", s)?;
    let (x, w) = (&s[0], &s[1]);
    if x.rank() != 4 || w.rank() != 4 {
        return Err("conv2d needs NCHW input and a rank-4 weight".into());
    }
    let g = o.groups.max(1);
    if x.shape[1] != w.shape[1] * g || !w.shape[0].is_multiple_of(g) {
        return Err(format!(
            "input has {} channels; weight expects {}×{g} groups",
            x.shape[1], w.shape[1]
        ));
    }
    if let Some(b) = s.get(2)
        && b.shape != [w.shape[0]]
    {
        return Err(format!("bias must have shape [{}]", w.shape[0]));
    }
    let out_hw = |i: usize| -> Result<usize, String> {
        if w.shape[2 + i] == 0 {
            return Err("kernel of size 0".into());
        }
        let eff = o.dilation[i] * (w.shape[2 + i] - 1) + 1;
        let padded = x.shape[2 + i] + 2 * o.padding[i];
        if padded < eff || o.stride[i] == 0 {
            return Err("kernel larger than padded input".into());
        }
        Ok((padded - eff) / o.stride[i] + 1)
    };
    let (oh, ow) = (out_hw(0)?, out_hw(1)?);
    Ok(Meta::float(vec![x.shape[0], w.shape[0], oh, ow]))
}

/// `group_norm`: `[N, C, ..]` with C divisible by `groups`, affine parameters `[C]`.
pub fn group_norm(s: &[Meta], groups: usize) -> Rule {
    float_only("group_norm", s)?;
    let x = &s[0];
    if x.rank() < 2 {
        return Err("group_norm needs [N, C, ...]".into());
    }
    let c = x.shape[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(format!("{c} channels cannot be split into {groups} groups"));
    }
    if s[1..].iter().any(|p| p.shape != [c]) {
        return Err(format!("affine parameters must have shape [{c}]"));
    }
    Ok(Meta::float(x.shape.clone()))
}

/// `layer_norm` over the last dimension D, affine parameters `[D]`.
pub fn layer_norm(s: &[Meta]) -> Rule {
    float_only("layer_norm", s)?;
    let x = &s[0];
    let d = *x.shape.last().ok_or("empty shape")?;
    if s[1..].iter().any(|p| p.shape != [d]) {
        return Err(format!("affine parameters must have shape [{d}]"));
    }
    Ok(Meta::float(x.shape.clone()))
}

/// `dropout` with probability `p` in [0, 1).
pub fn dropout(s: &[Meta], p: f64) -> Rule {
    if !(0.0..1.0).contains(&p) {
        return Err(format!("dropout probability {p} outside [0, 1)"));
    }
    elementwise("dropout", s)
}

/// `avg_pool2d`: NCHW input at least `kernel` large, positive kernel and stride.
pub fn avg_pool2d(s: &[Meta], kernel: usize, stride: usize) -> Rule {
    float_only("avg_pool2d", s)?;
    let x = &s[0];
    if x.rank() != 4 || kernel == 0 || stride == 0 || x.shape[2] < kernel || x.shape[3] < kernel {
        return Err(format!(
            "avg_pool2d(kernel {kernel}, stride {stride}) needs NCHW input at least that large"
        ));
    }
    let oh = (x.shape[2] - kernel) / stride + 1;
    let ow = (x.shape[3] - kernel) / stride + 1;
    Ok(Meta::float(vec![x.shape[0], x.shape[1], oh, ow]))
}

/// `upsample_nearest2d` by a positive integer `factor`.
pub fn upsample_nearest2d(s: &[Meta], factor: usize) -> Rule {
    float_only("upsample_nearest2d", s)?;
    let x = &s[0];
    if x.rank() != 4 || factor == 0 {
        return Err("upsample needs NCHW input and a positive factor".into());
    }
    let up = |d: usize| {
        d.checked_mul(factor)
            .ok_or_else(|| format!("upsampling {d} by {factor} overflows"))
    };
    Ok(Meta::float(vec![
        x.shape[0],
        x.shape[1],
        up(x.shape[2])?,
        up(x.shape[3])?,
    ]))
}

/// `embedding`: a float `[V, D]` table looked up with integer `[N]` ids.
pub fn embedding(s: &[Meta]) -> Rule {
    let (t, i) = (&s[0], &s[1]);
    if t.rank() != 2 || t.int || !i.int || i.rank() != 1 {
        return Err("embedding needs a float [V, D] table and integer [N] ids".into());
    }
    Ok(Meta::float(vec![i.shape[0], t.shape[1]]))
}
