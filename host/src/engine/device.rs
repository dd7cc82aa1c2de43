//! Device selection: the only CUDA-specific code in the host.
//!
//! `auto` picks CUDA when the binary was built with `--features cuda` *and* a CUDA driver is
//! present; otherwise the CPU (`flex` backend). Asking for `cuda` explicitly fails with a clear
//! error when it is not compiled in or no driver is found (we probe before creating a context:
//! creating a CUDA context without a GPU panics).

use anyhow::{Result, bail};
use burn::tensor::Device;

use crate::config::choices::DeviceChoice;

/// Whether this binary was built with CUDA support.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// Whether a CUDA driver library can be found on this machine (without creating a context).
pub fn cuda_driver_present() -> bool {
    const CANDIDATES: &[&str] = &["libcuda.so.1", "libcuda.so", "nvcuda.dll"];
    CANDIDATES.iter().any(|name| {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which are designed to
        // be loaded into arbitrary processes; we only check that it exists.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Whether `choice` resolves to a GPU (studies then run their cells one after another).
pub fn is_accelerator(choice: DeviceChoice) -> bool {
    match choice {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => CUDA_COMPILED && cuda_driver_present(),
    }
}

/// Resolves a [`DeviceChoice`] to a burn device (without autodiff).
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Auto => {
            if CUDA_COMPILED && cuda_driver_present() {
                cuda_device()
            } else {
                Ok(Device::flex())
            }
        }
        DeviceChoice::Cuda => {
            if !CUDA_COMPILED {
                bail!(
                    "device = \"cuda\" but this memlab binary was built without CUDA support; \
                     rebuild with `cargo build --release --features cuda` on a machine with the \
                     CUDA toolkit and network access, or use device = \"cpu\""
                );
            }
            if !cuda_driver_present() {
                bail!(
                    "device = \"cuda\" but no CUDA driver (libcuda.so) was found on this machine; \
                     use device = \"cpu\" or \"auto\""
                );
            }
            cuda_device()
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    bail!("CUDA support is not compiled into this binary")
}

/// Human-readable name of a device for logs and provenance.
pub fn describe(device: &Device) -> String {
    format!("{device:?}")
}
