#!/usr/bin/env bash
# Exact k-NN at CIFAR-10 scale, end to end: `memlab eval` of the 10,000 CIFAR-10 (JPEG copy) test
# images against the 50,000 training images (decoding, k-NN, criteria, report; peak memory from
# /usr/bin/time), beside a NumPy brute force of the same top-2 search (bench/numpy_knn.py).
# Usage: bash bench/knn.sh [DATA_DIR]   (default ../shared/data/cifar10-jpeg; needs the release
# build and `pip install numpy pillow`). Scratch files go to ${KNN_SCRATCH:-/tmp/memlab-knn}.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10-jpeg}
S=${KNN_SCRATCH:-/tmp/memlab-knn}
mkdir -p "$S"
[ -d "$S/train" ] || tar -xf "$DATA/train.tar" -C "$S"
[ -d "$S/test" ] || tar -xf "$DATA/test.tar" -C "$S"
PY=${PYTHON:-python3}
"$PY" bench/numpy_knn.py "$S" --out "$S/test.npy" | tee "$S/numpy.json"
RUN="$S/run"
mkdir -p "$RUN"
cat > "$RUN/config.toml" <<TOML
[run]
name = "knn-bench"
seed = 0
device = "cpu"

[dataset]
name = "image-folder"
params = { path = "$S/train", resolution = 32 }

[architecture]
name = "optimal"

[schedule]
name = "edm"

[conditioning]
name = "none"

[[criteria]]
name = "ratio"
params = { threshold = 0.3333333333333333 }
TOML
rm -rf "$S/eval"   # scratch: the previous benchmark's evaluation
/usr/bin/time -v target/release/memlab eval "$RUN" --samples "$S/test.npy" --out "$S/eval" 2> "$S/time.txt" >/dev/null || { cat "$S/time.txt"; exit 1; }
grep -E "Elapsed|Maximum resident" "$S/time.txt"
