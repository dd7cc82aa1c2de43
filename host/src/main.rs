//! The `memlab` command line.

fn main() {
    std::process::exit(memlab::cli::main());
}
