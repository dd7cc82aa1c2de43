//! Real image datasets, read from their usual on-disk formats with no download step.
//!
//! - `cifar10`: CIFAR-10 from the python or binary batches, or their `.tar.gz` archives.
//! - `mnist`: MNIST from IDX files, plain or gzipped.
//! - `image-folder`: one sub-folder of PNG/JPEG images per class, resized to a square.
//!
//! Each loads its images into memory at construction as 8-bit values; `fill` maps them to
//! [−1, 1] with y = x / 127.5 − 1. Labels are class indices into the reported class names.

mod cache;
mod cifar;
mod folder;
mod mnist;
mod pickle;
mod store;

use memlab_plugin_api::prelude::*;

pub use store::ImageStore;

fn register(p: &mut Plugin) {
    p.dataset(
        "cifar10",
        "CIFAR-10: 32×32 RGB, ten classes (python or binary batches, or their .tar.gz)",
        cifar::PARAMS,
        cifar::load,
    );
    p.dataset(
        "mnist",
        "MNIST: 28×28 grey-scale digits from IDX files (optionally gzipped)",
        mnist::PARAMS,
        mnist::load,
    );
    p.dataset(
        "image-folder",
        "Class folders of PNG/JPEG images, centre-cropped and resized to a square",
        folder::PARAMS,
        folder::load,
    );
}

export_plugin!(register);
