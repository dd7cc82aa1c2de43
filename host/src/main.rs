//! The `memlab` command line.

/// mimalloc keeps freed pages for reuse: with glibc's allocator the large, short-lived tensors
/// of each training step are returned to the kernel and re-faulted (zeroed) on the next step,
/// which cost ~16% of a UNet training step in `perf` (kernel `clear_page_erms`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (see mimalloc.h); -1 never returns freed pages to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Training allocates and frees the same large activation buffers every step; purging them
    // makes the kernel zero fresh pages each time (~20% of a UNet step). Keep them.
    // SAFETY: called before any other thread exists; mi_option_set is not thread-safe.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    std::process::exit(memlab::cli::main());
}
