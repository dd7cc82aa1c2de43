//! What the CPU running the kernels can do, and a way to compile a loop for it.
//!
//! memlab is built for baseline x86-64 (SSE2), so auto-vectorised loops use 4 lanes. [`wide`]
//! runs a closure inside a function compiled with AVX2 and FMA when the CPU has them, so the
//! same source vectorises 8 lanes wide. Without explicit `mul_add`, Rust never contracts
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

/// Runs `f`, compiled for AVX2 + FMA when [`avx2_fma`] (the closure is inlined into a function
/// with those target features), as it is otherwise.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has the features `run` is compiled for.
        return unsafe { run(f) };
    }
    f()
}
