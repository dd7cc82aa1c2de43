//! Adam(W) in one pass over a parameter, its gradient and both moments (burn composes it from
//! ~12 single-threaded element-wise ops per tensor).

use rayon::prelude::*;

/// The scalars of one Adam(W) step (bias corrections already computed for this step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub b1: f64,
    /// β₂.
    pub b2: f64,
    /// `1 − β₁ᵗ`.
    pub bc1: f64,
    /// `1 − β₂ᵗ`.
    pub bc2: f64,
    /// ε.
    pub eps: f64,
    /// Weight decay.
    pub wd: f64,
    /// Weight decay as L2 on the gradient (Adam) rather than decoupled (AdamW).
    pub coupled: bool,
}

impl AdamScalars {
    /// Packed for the extension op (which takes plain numbers).
    pub fn to_array(&self) -> [f64; 8] {
        [
            self.lr,
            self.b1,
            self.b2,
            self.bc1,
            self.bc2,
            self.eps,
            self.wd,
            if self.coupled { 1.0 } else { 0.0 },
        ]
    }
    /// Inverse of [`to_array`](Self::to_array).
    pub fn from_array(a: [f64; 8]) -> AdamScalars {
        AdamScalars {
            lr: a[0],
            b1: a[1],
            b2: a[2],
            bc1: a[3],
            bc2: a[4],
            eps: a[5],
            wd: a[6],
            coupled: a[7] != 0.0,
        }
    }
}

/// Updates `p`, `m`, `v` in place:
/// `g' = g + wd·p` (coupled), `m ← β₁m + (1−β₁)g'`, `v ← β₂v + (1−β₂)g'²`,
/// `p ← p·(1 − lr·wd)` (decoupled), `p ← p − lr·(m/bc₁)/(√(v/bc₂) + ε)`.
pub fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    const BLOCK: usize = 32 * 1024;
    let (b1, b2) = (s.b1 as f32, s.b2 as f32);
    let (c1, c2) = ((1.0 - s.b1) as f32, (1.0 - s.b2) as f32);
    let (ibc1, ibc2) = ((1.0 / s.bc1) as f32, (1.0 / s.bc2) as f32);
    let (lr, eps) = (s.lr as f32, s.eps as f32);
    let l2 = if s.coupled { s.wd as f32 } else { 0.0 };
    let shrink = if s.coupled {
        1.0
    } else {
        (1.0 - s.lr * s.wd) as f32
    };
    p.par_chunks_mut(BLOCK)
        .zip(g.par_chunks(BLOCK))
        .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g + l2 * *p;
                *m = b1 * *m + c1 * g;
                *v = b2 * *v + c2 * g * g;
                *p = *p * shrink - lr * (*m * ibc1) / ((*v * ibc2).sqrt() + eps);
            }
        });
}
