//! What the CPU running the kernels can do, and a way to compile a loop for it.
//!
//! memlab is built for baseline x86-64 (SSE2), so auto-vectorised loops use 4 lanes.
//! [`wide_fn!`] defines a function compiled a second time with AVX2 and FMA and runs that copy
//! when the CPU has them, so the same source vectorises 8 lanes wide. Without explicit `mul_add`, Rust never contracts
//! `a·b + c` into an FMA, and the kernels' sums use fixed partial accumulators, so a loop gives
//! the same bits either way; only code written with FMA intrinsics ([`super::direct`]) rounds
//! differently from the portable path.

/// Whether this x86-64 CPU has AVX2 and FMA (always false on other architectures).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Defines a function whose body is compiled twice, as written and for AVX2 + FMA, and which
/// runs the AVX2 + FMA copy when [`avx2_fma`] is true.
///
/// ```text
/// wide_fn! {
///     /// Doc comment.
///     fn scale(y: &mut [f32], a: f32) { for v in y { *v *= a } }
/// }
/// ```
///
/// The body becomes an `#[inline(always)]` function called from a `#[target_feature]` one, so
/// it is always compiled with the features. (A closure passed to a `#[target_feature]`
/// function is inlined into it only when LLVM's cost model agrees: the GroupNorm loops were
/// not, and ran on 4-lane SSE.)
macro_rules! wide_fn {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident $(<const $c:ident: $ct:ty>)? ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?
        $body:block
    ) => {
        $(#[$m])*
        $vis fn $name $(<const $c: $ct>)? ($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<const $c: $ct>)? ($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            if $crate::engine::kernels::cpu::avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx $(<const $c: $ct>)? ($($a: $t),*) $(-> $r)? {
                    body $(::<$c>)? ($($a),*)
                }
                // SAFETY: the CPU has the features `avx` is compiled for.
                return unsafe { avx $(::<$c>)? ($($a),*) };
            }
            body $(::<$c>)? ($($a),*)
        }
    };
}
pub(crate) use wide_fn;
