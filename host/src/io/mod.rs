//! Files and the terminal: atomic writes, `.npy` and PNG ([`output`]), progress bars
//! ([`progress`]), run-directory locks ([`lock`]) and fallible allocation ([`alloc`]).
//! Nothing here knows about diffusion; every other module may use it.

pub mod alloc;
pub mod lock;
pub mod output;
pub mod progress;
