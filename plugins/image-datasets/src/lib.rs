//! Real image datasets, read from their usual on-disk formats with no download step.
//!
//! - `cifar10`: CIFAR-10 from the python or binary batches, or their `.tar.gz` archives.
//! - `mnist`: MNIST from IDX files, plain or gzipped.
//! - `image-folder`: one sub-folder of PNG/JPEG images per class, resized to a square.
//!
//! `cifar10` and `mnist` also declare their published files ([`Plugin::dataset_files`]), which
//! is all `memlab data fetch cifar10|mnist` knows about them: URLs, md5 digests, how to point
//! the dataset at them, and (CIFAR-10) the class-folder layout a local JPEG/PNG copy must have.
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
use memlab_plugin_api::{ClassFolders, DataFiles, Published};

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
    p.dataset_files(
        "cifar10",
        DataFiles {
            about: "CIFAR-10 python archive (cifar-10-python.tar.gz, ~163 MiB) from the \
                    University of Toronto",
            files: &[Published {
                name: "cifar-10-python.tar.gz",
                url: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                md5: "c58f30108f718f92721af3b95e74349a",
            }],
            usage: "The cifar10 dataset reads the .tar.gz archive as it is, or the extracted \
                    cifar-10-batches-py directory: set its `path` to the directory holding \
                    either (or to the archive or extracted directory itself).",
            class_folders: Some(ClassFolders {
                dir: "cifar10-jpeg",
                classes: &cifar::CLASSES,
                splits: &[("train", 5000), ("test", 1000)],
            }),
        },
    );
    p.dataset_files(
        "mnist",
        DataFiles {
            about: "MNIST, the four gzipped IDX files (train/t10k images and labels, ~11 MiB)",
            files: &[
                Published {
                    name: "train-images-idx3-ubyte.gz",
                    url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                    md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                },
                Published {
                    name: "train-labels-idx1-ubyte.gz",
                    url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                    md5: "d53e105ee54ea40749a09fcbcd1e9432",
                },
                Published {
                    name: "t10k-images-idx3-ubyte.gz",
                    url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                    md5: "9fb629c4189551a2d022fa330f9573f3",
                },
                Published {
                    name: "t10k-labels-idx1-ubyte.gz",
                    url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                    md5: "ec29112dd5afa0611ce80d1b7f02629c",
                },
            ],
            usage: "The mnist dataset reads a directory of these IDX files, gzipped or not \
                    (gunzipped names drop the .gz): set its `path` to that directory (with only \
                    the t10k files, read the test split: params.split = \"test\").",
            class_folders: None,
        },
    );
    p.dataset(
        "image-folder",
        "Class folders of PNG/JPEG images, centre-cropped and resized to a square",
        folder::PARAMS,
        folder::load,
    );
}

export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;

    /// The declarations pass plugin-api's checks (file names, URLs, md5s, layout) and say
    /// what `memlab data fetch` needs.
    #[test]
    fn declared_files_are_well_formed() {
        let mut p = Plugin::new("memlab-image-datasets", "0");
        register(&mut p);
        let files = p.files();
        let names: Vec<&str> = files.iter().map(|f| f.dataset.as_str()).collect();
        assert_eq!(names, ["cifar10", "mnist"]);
        let layout = files[0].class_folders.as_ref().unwrap();
        assert_eq!(layout.classes.len(), 10);
        assert_eq!(layout.classes[0].as_str(), "airplane");
        assert_eq!(files[1].files.len(), 4);
        for f in files.iter().flat_map(|d| d.files.iter()) {
            assert!(f.url.ends_with(f.name.as_str()), "{}", f.url);
        }
    }
}
