//! The `memlab` command line.

/// mimalloc keeps freed pages for reuse: with glibc's allocator the large, short-lived tensors
/// of each training step are returned to the kernel and re-faulted (zeroed) on the next step,
/// which cost ~16% of a UNet training step in `perf` (kernel `clear_page_erms`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(memlab::cli::main());
}
