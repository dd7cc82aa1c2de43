"""NumPy reference for the k-NN benchmark: exact top-2 L2 neighbours of the CIFAR-10 (JPEG copy)
test images among its training images, the same computation `memlab eval` screens with
(‖x‖² + ‖y‖² − 2·x·yᵀ in float32 GEMMs, chunked), timed without loading.

Usage: python3 bench/numpy_knn.py EXTRACTED_DIR [--threads 2] [--out memlab_samples.npy]
EXTRACTED_DIR holds train/<class>/*.jpg and test/<class>/*.jpg (bench/knn.sh extracts them).
Images are scaled to [-1, 1] as memlab does. Writes the test images as a float32 .npy of shape
[N, 3, 32, 32] for `memlab eval --samples`, and prints JSON. Needs `pip install numpy pillow`.
"""
import argparse
import json
import os
import sys
import time


def load(folder):
    import numpy as np
    from PIL import Image

    classes = sorted(d for d in os.listdir(folder) if not d.startswith("."))
    out = []
    for c in classes:
        files = sorted(f for f in os.listdir(os.path.join(folder, c)) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        for f in files:
            img = np.asarray(Image.open(os.path.join(folder, c, f)).convert("RGB"), dtype=np.float32)
            out.append(img.transpose(2, 0, 1))
    x = np.stack(out) / 127.5 - 1.0
    return x.reshape(len(out), -1).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    import numpy as np

    t0 = time.perf_counter()
    train, test = load(os.path.join(a.root, "train")), load(os.path.join(a.root, "test"))
    load_s = time.perf_counter() - t0
    if a.out:
        np.save(a.out, test.reshape(-1, 3, 32, 32))
    t0 = time.perf_counter()
    yn = (train.astype(np.float64) ** 2).sum(1).astype(np.float32)
    best = np.empty((len(test), 2), dtype=np.int64)
    for s in range(0, len(test), 1000):
        x = test[s:s + 1000]
        d2 = (x ** 2).sum(1)[:, None] + yn[None, :] - 2.0 * (x @ train.T)
        part = np.argpartition(d2, 2, axis=1)[:, :2]
        order = np.take_along_axis(d2, part, 1).argsort(1)
        best[s:s + 1000] = np.take_along_axis(part, order, 1)
    knn_s = time.perf_counter() - t0
    d = np.sqrt(((test[:, None, :].astype(np.float64) - train[best].astype(np.float64)) ** 2).sum(-1))
    ratio = float((d[:, 0] / d[:, 1] < 1 / 3).mean())
    np.save(os.path.join(a.root, "numpy_top2.npy"), best)
    print(json.dumps({"numpy": np.__version__, "threads": a.threads, "train": len(train), "samples": len(test),
                      "load_s": load_s, "top2_s": knn_s, "ratio_criterion": ratio}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
