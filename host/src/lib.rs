//! # memlab host
//!
//! The runtime behind the `memlab` command: it loads plugin libraries through the stable ABI
//! ([`plugins`]), parses and validates study configs ([`config`]), and runs every component
//! over one shared engine on burn ([`engine`]).
//!
//! See `ARCHITECTURE.md` at the repository root for the five-minute tour.

pub mod cli;
pub mod config;
pub mod data;
pub mod diffusion;
pub mod engine;
pub mod eval;
pub mod io;
pub mod plot;
pub mod plugins;
pub mod run;
pub mod study;

#[cfg(test)]
mod layering;

/// Exit code for bad user input (config errors, unknown plugins, bad parameters).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for other failures.
pub const EXIT_FAILURE: i32 = 1;
